#!/usr/bin/env bash
# The master API load benchmark: 10,000 hosts, agent check-ins at a fixed open-loop rate.
#
#   benches/api.sh                                    # SQLite: 10,000 hosts, 1,000 check-ins/s + 250 progress/s, 20 s
#   BENCH_RATE=500 BENCH_DURATION=10 benches/api.sh   # lighter
#   FOG_BENCH_PG_URL=postgres://fog@127.0.0.1/fogbench benches/api.sh   # also on PostgreSQL (an empty database)
#
# Builds `fog` and `api_load` (release), then runs benches/src/bin/api_load.rs, which starts
# `fog master` itself (loopback, a temporary directory), sets the fleet up through the API, sends
# the load and prints the latency table and the targets (p99 of check-ins < 50 ms, the asked rate
# held, no errors, no late sends). There is no peer master: the reference is `GET /api/v1/health`
# on the same axum stack, one request at a time. See benches/README.md.
#
# Environment:
#   BENCH_HOSTS           hosts, each with a deploy task (default 10000)
#   BENCH_RATE            check-ins per second (default 1000)
#   BENCH_PROGRESS_RATE   progress reports per second, on top (default 250)
#   BENCH_DURATION        seconds of load (default 20; at most 3600)
#   BENCH_CONCURRENCY     requests in flight at most (default 512)
#   BENCH_MAX_CLIENTS     the node's slots (default 10000: every first check-in gets one)
#   BENCH_DIR             where api-sqlite.json / api-postgresql.json go (default target/bench)
#   FOG_BENCH_PG_URL      also run on this PostgreSQL database (it must be empty)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
out=${BENCH_DIR:-$target_dir/bench}
mkdir -p "$out"

echo "== building fog and api_load (cargo build --release -p fog-cli -p benches --bin fog --bin api_load)"
(cd "$root" && timeout 3600 "${CARGO:-cargo}" build --release -p fog-cli -p benches --bin fog --bin api_load) > "$out/api-build.log" 2>&1 \
  || { tail -n 20 "$out/api-build.log" >&2; echo "api bench: build failed" >&2; exit 1; }

args=(--fog "$target_dir/release/fog"
      --hosts "${BENCH_HOSTS:-10000}" --rate "${BENCH_RATE:-1000}" --progress-rate "${BENCH_PROGRESS_RATE:-250}"
      --duration "${BENCH_DURATION:-20}" --concurrency "${BENCH_CONCURRENCY:-512}"
      --max-clients "${BENCH_MAX_CLIENTS:-10000}")
pg=${FOG_BENCH_PG_URL:-}
# Each run is bounded: setup at the API's pace, the load for BENCH_DURATION, 10 s of drain.
echo "== SQLite"
FOG_BENCH_PG_URL='' timeout 1800 "$target_dir/release/api_load" "${args[@]}" --json "$out/api-sqlite.json"
if [ -n "$pg" ]; then
  echo "== PostgreSQL"
  FOG_BENCH_PG_URL=$pg timeout 1800 "$target_dir/release/api_load" "${args[@]}" --json "$out/api-postgresql.json"
fi
