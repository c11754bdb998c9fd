#!/usr/bin/env bash
# Renders the drill's and the comparison's reports in headless Chromium, as a reader's browser
# would: a 2,000-shopper drill against a release server and a short comparison, then each page with
# ops/report-check.js injected. Fails unless every chart the page holds was laid out and drew its
# data with axes and labels, and the page raised no script error. Needs chromium and redis-server
# (Debian packages; ops/test.sh installs them). Usage: ops/render-reports.sh [OUT_DIR]
#   With OUT_DIR, the reports and a screenshot of each (report.png, compare.png) are kept there.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin holdfast -q && cargo build --release -p holdfast-drill -q
work="$(mktemp -d)"
out="${1:-$work/out}"
mkdir -p "$out"
target/release/holdfast serve --listen 127.0.0.1:0 --data-dir "$work/data" --log warn >"$work/server.out" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q "^listening on" "$work/server.out" && break; sleep 0.1; done
addr="$(sed -n 's/^listening on //p' "$work/server.out")"
[ -n "$addr" ] || { echo "the server did not start:" >&2; cat "$work/server.out" >&2; exit 1; }

echo "== a 2,000-shopper drill against $addr"
target/release/holdfast-drill --target "http://$addr" --quiet --users 2000 --units 100 \
    --report "$out/drill" --deadline-secs 120
echo "== a short comparison (holdfast, redis, postgres; hot and sold-out)"
target/release/holdfast-drill compare --seconds 1 --connections 4 --systems holdfast,redis,postgres \
    --workloads hot,sold-out --out "$out/compare" >/dev/null

chrome() {
    timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
        --user-data-dir="$work/profile" "$@"
}
status=0
# Each page with the number of charts it must hold (report_page.rs, compare_page.rs).
for entry in drill/report.html:16 compare/compare.html:5; do
    page="${entry%:*}"
    expected="${entry#*:}"
    copy="$work/$(basename "$page")"
    # The check goes first in <head>, so that it hears any error the page raises (its comment lines
    # dropped: it is put on one line).
    sed "s|<head>|<head><script>$(grep -v '^ *//' ops/report-check.js | tr '\n' ' ' | sed 's/[&|]/\\&/g')</script>|" \
        "$out/$page" >"$copy"
    if ! tail -n 1 "$out/$page" | grep -q '</body></html>$'; then
        echo "  $page does not end with </body></html>" >&2
        status=1
    fi
    verdict="$(chrome --virtual-time-budget=10000 --dump-dom "file://$copy" 2>"$work/chrome.log" \
        | grep -o 'data-check="[^"]*"' | sed 's/^data-check="//; s/"$//; s/&quot;/"/g' || true)"
    echo "== $page: $expected charts; in the browser: ${verdict:-no verdict}"
    if ! python3 - "$expected" "$verdict" <<'PY'
import json, sys
expected, verdict = int(sys.argv[1]), sys.argv[2]
v = json.loads(verdict) if verdict else {}
problems = []
if v.get("charts") != expected:
    problems.append(f"the browser found {v.get('charts')} charts of {expected}")
problems += v.get("bad", []) + [f"script error: {e}" for e in v.get("errors", [])]
for p in problems:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
    then
        status=1
        grep -i "uncaught\|error" "$work/chrome.log" | grep -v "dbus\|gpu\|viz" | head -20 >&2 || true
    fi
    chrome --window-size=1000,2400 --screenshot="$out/$(basename "$page" .html).png" "file://$out/$page" \
        >/dev/null 2>&1
    [ "$(stat -c %s "$out/$(basename "$page" .html).png")" -gt 50000 ] \
        || { echo "  the screenshot of $page is nearly empty" >&2; status=1; }
done
exit "$status"
