#!/usr/bin/env bash
# The web front end at fleet size: page times and sizes at 20,000 hosts and 200,000 finished
# tasks (SQLite), then live progress of 500 tasks (reporting every 2 s) to 10 open task pages.
#
#   benches/web.sh                                   # the sizes of issue 12
#   BENCH_HOSTS=2000 BENCH_HISTORY=20000 benches/web.sh   # lighter
#
# Builds `fog` and `web_load` (release), then runs benches/src/bin/web_load.rs, which seeds a data
# directory, starts `fog master` on it (loopback), times a signed-in browser's requests and
# measures the master's CPU with and without the pages open. Goals: p95 under 100 ms and pages
# under 200 KB; the pages' CPU under 10% of one core. There is no peer here: FOG's own UI is PHP
# on a LAMP stack this machine does not run; see benches/README.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
out=${BENCH_DIR:-$target_dir/bench}
mkdir -p "$out"
echo "== building fog and web_load (release)"
(cd "$root" && timeout 3600 "${CARGO:-cargo}" build --release -p fog-cli -p benches --bin fog --bin web_load) > "$out/web-build.log" 2>&1 \
  || { tail -n 20 "$out/web-build.log" >&2; echo "web bench: build failed" >&2; exit 1; }
timeout 1800 "$target_dir/release/web_load" --fog "$target_dir/release/fog" \
  --hosts "${BENCH_HOSTS:-20000}" --history "${BENCH_HISTORY:-200000}" --busy "${BENCH_BUSY:-500}" \
  --pages "${BENCH_PAGES:-10}" --window "${BENCH_WINDOW:-20}" --json "$out/web.json"
