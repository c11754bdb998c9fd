#!/usr/bin/env bash
# HTTP benchmark of `holdfast serve` with wrk (Debian package `wrk`): durable reserves on one hot SKU,
# then rejections of a sold-out SKU, each with CONNECTIONS keep-alive connections for SECONDS.
# Usage: benches/wrk/run.sh [SECONDS] [CONNECTIONS]. Loopback only; the data directory is temporary.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${2:-50}
port=${PORT:-18181}
cargo build --release --quiet
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
./target/release/holdfast serve --listen 127.0.0.1:$port --data-dir "$dir" --log warn &
pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
put() { curl -sf -X PUT -H 'content-type: application/json' -d "{\"on_hand\": $2}" http://127.0.0.1:$port/v1/skus/$1 >/dev/null; }
put hot 1000000000
put gone 0
echo "== durable reserves, one hot SKU, $connections connections, ${seconds}s"
WRK_SKU=hot wrk -t2 -c"$connections" -d"${seconds}s" --latency -s benches/wrk/reserve.lua http://127.0.0.1:$port
echo "== sold-out rejections, $connections connections, ${seconds}s"
WRK_SKU=gone wrk -t2 -c"$connections" -d"${seconds}s" --latency -s benches/wrk/reserve.lua http://127.0.0.1:$port
curl -s http://127.0.0.1:$port/metrics | grep -E '^holdfast_wal_(sync_seconds|batch_records)_(sum|count)' || true
