#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, concurrency and integration tests (starting or
# installing Postgres for those that need it), then the reports rendered in headless Chromium
# (ops/render-reports.sh), then the schema fuzzer against the API description (ops/fuzz-api.sh,
# four minutes), then the loom models (in their own target directory, so they do
# not evict the main build). Usage: ops/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The Postgres tests need a server on 127.0.0.1:5432; they fail, never skip, without one.
ops/postgres.sh
# The comparison's test (loadtest/tests/compare.rs) starts its own redis-server (and Postgres cluster).
if ! command -v redis-server >/dev/null 2>&1; then
    echo "== installing redis-server (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
fi

# The alert rules are checked with promtool (tests/http/ops.rs).
if ! command -v promtool >/dev/null 2>&1; then
    echo "== installing promtool (Debian package prometheus)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi

# The reports are rendered in headless Chromium (ops/render-reports.sh).
if ! command -v chromium >/dev/null 2>&1; then
    echo "== installing chromium (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
fi

echo "== cargo test (release: the concurrency and property tests want optimised code)"
cargo test --release --workspace

echo "== the drill's and the comparison's reports, rendered in headless Chromium"
ops/render-reports.sh

echo "== the API against its description (schemathesis, every check, the stateful phase included)"
ops/fuzz-api.sh 240

echo "== loom models (RUSTFLAGS=--cfg holdfast_loom)"
RUSTFLAGS="--cfg holdfast_loom" cargo test --release --test loom --target-dir target-loom
