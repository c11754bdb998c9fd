#!/usr/bin/env bash
# The Postgres mirror under load: durable reserves with wrk while the mirror applies them; samples
# its lag every second; then its catch-up rate on a backlog built while Postgres was away.
# Usage: benches/wrk/mirror.sh [SECONDS] [CONNECTIONS]. Needs wrk, curl, psql and Postgres on
# 127.0.0.1:5432 (ops/postgres.sh); uses a role and schema of its own, dropped afterwards.
# HOLDFAST_BIN=path runs another build of the server (for comparisons side by side).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-20}
connections=${2:-50}
port=${PORT:-18191}
name=hf_bench_mirror
cargo build --release --quiet
psql_admin() { psql -q -h 127.0.0.1 -U postgres -d test -v ON_ERROR_STOP=1 "$@"; }
psql_admin -c "DROP SCHEMA IF EXISTS $name CASCADE" -c "DROP ROLE IF EXISTS $name" \
    -c "CREATE ROLE $name LOGIN" -c "CREATE SCHEMA $name AUTHORIZATION $name"
url="postgresql://$name@127.0.0.1:5432/test?options=-csearch_path%3D$name"
dir=$(mktemp -d)
cleanup() {
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir" "$dir.log"
    psql_admin -c "ALTER ROLE $name LOGIN" \
        -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '$name'" \
        -c "DROP SCHEMA IF EXISTS $name CASCADE" -c "DROP ROLE IF EXISTS $name" >/dev/null
}
"${HOLDFAST_BIN:-./target/release/holdfast}" serve --listen 127.0.0.1:$port --data-dir "$dir" --log warn --database-url "$url" >/dev/null 2>"$dir.log" &
pid=$!
trap cleanup EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
curl -sf -X PUT -H 'content-type: application/json' -d '{"on_hand": 1000000000}' http://127.0.0.1:$port/v1/skus/hot >/dev/null
metric() { curl -s http://127.0.0.1:$port/metrics | awk -v m="$1" '$1 == m { print $2 }'; }

echo "== sustained: durable reserves with wrk, $connections connections, ${seconds}s; mirror lag each second"
WRK_SKU=hot wrk -t2 -c"$connections" -d"${seconds}s" -s benches/wrk/reserve.lua http://127.0.0.1:$port \
    | grep -E "Requests/sec|p50|201:" &
wrk_pid=$!
max_lag=0
for _ in $(seq "$seconds"); do
    sleep 1
    lag=$(metric holdfast_mirror_lag_seconds); records=$(metric holdfast_mirror_lag_records)
    echo "lag ${lag}s ${records} records"
    max_lag=$(awk -v a="$max_lag" -v b="$lag" 'BEGIN { print (b > a ? b : a) }')
done
wait $wrk_pid
echo "max mirror lag during the load: ${max_lag}s"

echo "== catch-up: a backlog written while Postgres is away, then applied"
psql_admin -c "ALTER ROLE $name NOLOGIN" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '$name'" >/dev/null
WRK_SKU=hot wrk -t2 -c"$connections" -d10s -s benches/wrk/reserve.lua http://127.0.0.1:$port | grep -E "Requests/sec"
backlog=$(metric holdfast_mirror_lag_records)
start_applied=$(metric holdfast_mirror_records_applied)
psql_admin -c "ALTER ROLE $name LOGIN" >/dev/null
# Timed from the mirror's first batch after its reconnect (its retry backoff is not its speed).
while [ "$(metric holdfast_mirror_records_applied)" = "$start_applied" ]; do sleep 0.01; done
started=$(date +%s.%N)
start_applied=$(metric holdfast_mirror_records_applied)
while [ "$(metric holdfast_mirror_lag_records)" != "0" ]; do sleep 0.05; done
took=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { print e - s }')
applied=$(( $(metric holdfast_mirror_records_applied) - start_applied ))
awk -v n="$applied" -v t="$took" -v b="$backlog" \
    'BEGIN { printf "backlog of %d records: %d applied in %.2f s after the first batch = %.0f records/s\n", b, n, t, n / t }'
echo "batches: $(metric holdfast_mirror_batches), records: $(metric holdfast_mirror_records_applied)"
