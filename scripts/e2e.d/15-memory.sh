#!/usr/bin/env bash
# Bounded memory: a capture's peak memory does not grow with the image. The same capture of
# 1 GiB and of 8 GiB of unique data with --memory-mib 16 (both pass the budget and spill their
# index entries to disk) peak within 16 MiB of each other (a capture's in-flight buffers vary by
# 3-4 MiB from run to run, more under load; before the bound, 8 GiB took about 90 MiB more than
# 1 GiB), and verify
# and gc of the larger store stay near it. A capture killed at random points past its first spills leaves no image, and gc
# takes the store back to empty.
set -euo pipefail
# A failing command names itself and its line (scripts/e2e repeats it at the end).
trap 'echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)"' ERR
cd "$(dirname "$0")/../.."
# On disk, not tmpfs: 8 GiB of source and as much of store.
work=$(mktemp -d /var/tmp/fog-e2e-memory.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    echo "== e2e failed (exit $rc); logs:"
    for f in "$work"/*.log "$work"/*.json; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

fog=${FOG:?run through scripts/e2e}
budget=16

# unique NAME GIB: incompressible bytes, different for each name.
unique() {
  { openssl enc -aes-128-ctr -pass "pass:$1" -nosalt -pbkdf2 -in /dev/zero 2>/dev/null || true; } \
    | head -c "$(($2 << 30))" > "$work/$1.img"
}
field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
mib() { echo $(($1 >> 20)); }

echo "== capture 1 GiB and 8 GiB of unique data with --memory-mib $budget"
declare -A peak
for gib in 1 8; do
  unique "u$gib" "$gib"
  "$fog" --json --memory-mib $budget --store "$work/s$gib" image capture "$work/u$gib.img" --name "u$gib" \
    > "$work/capture-$gib.json" 2> "$work/capture-$gib.log"
  [ "$(field "$work/capture-$gib.json" data_bytes)" = $(($gib << 30)) ]
  peak[$gib]=$(field "$work/capture-$gib.json" peak_memory_bytes)
  echo "   $gib GiB: peak $(mib "${peak[$gib]}") MiB, $(field "$work/capture-$gib.json" chunks) chunks"
  [ "$gib" = 8 ] || rm -rf "$work/u$gib.img" "$work/s$gib"
done
python3 - "${peak[1]}" "${peak[8]}" <<'EOF'
import sys
small, large = (int(a) for a in sys.argv[1:])
growth = (large - small) / small
print(f"   growth from 1 to 8 GiB: {growth:+.1%}")
if small == 0 or large - small > 16 << 20:
    sys.exit(f"capture memory grows with the image: {small} -> {large} bytes")
EOF

echo "== verify and gc of the 8 GiB store within the same bound"
"$fog" --json --memory-mib $budget --store "$work/s8" store verify > "$work/verify.json" 2> "$work/verify.log"
[ "$(field "$work/verify.json" corrupt)" = "[]" ]
"$fog" --memory-mib $budget --store "$work/s8" image rm u8 > "$work/rm.log" 2>&1
"$fog" --json --memory-mib $budget --store "$work/s8" store gc > "$work/gc.json" 2> "$work/gc.log"
for job in verify gc; do
  p=$(field "$work/$job.json" peak_memory_bytes)
  echo "   $job: peak $(mib "$p") MiB"
  [ "$p" -le $((peak[8] * 11 / 10)) ] || { echo "$job peaked at $p bytes, capture at ${peak[8]}"; exit 1; }
done
[ "$(field "$work/gc.json" chunks_kept)" = 0 ]
rm -rf "$work/s8"

echo "== a capture killed at random points past its spills leaves nothing gc cannot reclaim"
store=$work/killed
for attempt in 1 2 3; do
  "$fog" --memory-mib $budget --store "$store" image capture "$work/u8.img" --name killed \
    > "$work/killed-$attempt.log" 2>&1 &
  pid=$!; pids+=("$pid")
  # Past the first spill (a run in the capture's staging directory), then a random moment more.
  for _ in $(seq 1 1200); do
    [ -n "$(find "$store/tmp" -name 'spill-*' 2>/dev/null | head -n 1)" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "capture ended before it spilled"; exit 1; }
    sleep 0.1
  done
  sleep "$(python3 -c 'import random; print(random.uniform(0, 6))')"
  kill -9 "$pid" 2>/dev/null || { echo "capture ended before it was killed"; exit 1; }
  wait "$pid" 2>/dev/null || true
  if "$fog" --store "$store" image ls | grep -q killed; then echo "a killed capture is visible as an image"; exit 1; fi
done
"$fog" --json --memory-mib $budget --store "$store" store gc > "$work/gc-killed.json" 2> "$work/gc-killed.log"
[ "$(field "$work/gc-killed.json" staging_removed)" = 3 ]
"$fog" --json --store "$store" store stats > "$work/stats.json"
[ "$(field "$work/stats.json" chunks)" = 0 ]
left=$(find "$store/tmp" "$store/packs" "$store/index" -mindepth 1)
[ -z "$left" ] || { echo "gc left: $left"; exit 1; }
"$fog" --store "$store" store verify > "$work/verify-killed.log"
echo "== e2e passed"
