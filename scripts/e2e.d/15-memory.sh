#!/usr/bin/env bash
# Bounded memory: a capture's peak memory does not grow with the image. The same capture of
# 1 GiB and of 4 GiB of unique data with --memory-mib 16 (both pass the budget and spill their
# index entries to disk) peak within 16 MiB of each other (a capture's in-flight buffers vary by
# 3-4 MiB from run to run, more under load; before the bound, memory grew by about 12 MiB per GiB,
# so 4 GiB took about 40 MiB more than 1 GiB), and verify and gc of the larger store stay near it.
# A capture killed at random points past its first spills leaves no image, and gc takes the store
# back to empty. (4 GiB, not more: the part needs twice that on disk, beside CI's builds.)
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
# On disk, not tmpfs: 4 GiB of source and as much of store.
work=$(mktemp -d /var/tmp/fog-e2e-memory.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    echo "== e2e failed (exit $rc); free space: $(df -h --output=avail "$work" 2>/dev/null | tail -n 1); logs:"
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

echo "== capture 1 GiB and 4 GiB of unique data with --memory-mib $budget"
declare -A peak
for gib in 1 4; do
  unique "u$gib" "$gib"
  "$fog" --json --memory-mib $budget --store "$work/s$gib" image capture "$work/u$gib.img" --name "u$gib" \
    > "$work/capture-$gib.json" 2> "$work/capture-$gib.log"
  [ "$(field "$work/capture-$gib.json" data_bytes)" = $(($gib << 30)) ]
  peak[$gib]=$(field "$work/capture-$gib.json" peak_memory_bytes)
  echo "   $gib GiB: peak $(mib "${peak[$gib]}") MiB, $(field "$work/capture-$gib.json" chunks) chunks"
  [ "$gib" = 4 ] || rm -rf "$work/u$gib.img" "$work/s$gib"
done
python3 - "${peak[1]}" "${peak[4]}" <<'EOF'
import sys
small, large = (int(a) for a in sys.argv[1:])
growth = (large - small) / small
print(f"   growth from 1 to 4 GiB: {growth:+.1%}")
if small == 0 or large - small > 16 << 20:
    sys.exit(f"capture memory grows with the image: {small} -> {large} bytes")
EOF

echo "== verify and gc of the 4 GiB store within the same bound"
"$fog" --json --memory-mib $budget --store "$work/s4" store verify > "$work/verify.json" 2> "$work/verify.log"
[ "$(field "$work/verify.json" corrupt)" = "[]" ]
"$fog" --memory-mib $budget --store "$work/s4" image rm u4 > "$work/rm.log" 2>&1
"$fog" --json --memory-mib $budget --store "$work/s4" store gc > "$work/gc.json" 2> "$work/gc.log"
for job in verify gc; do
  p=$(field "$work/$job.json" peak_memory_bytes)
  echo "   $job: peak $(mib "$p") MiB"
  [ "$p" -le $((peak[4] * 11 / 10)) ] || { echo "$job peaked at $p bytes, capture at ${peak[4]}"; exit 1; }
done
[ "$(field "$work/gc.json" chunks_kept)" = 0 ]
rm -rf "$work/s4"

echo "== a capture killed at random points past its spills leaves nothing gc cannot reclaim"
store=$work/killed
for attempt in 1 2 3; do
  "$fog" --memory-mib $budget --store "$store" image capture "$work/u4.img" --name killed \
    > "$work/killed-$attempt.log" 2>&1 &
  pid=$!; pids+=("$pid")
  # Past the first spill (a run in the capture's staging directory), then a random moment more.
  for _ in $(seq 1 1200); do
    [ -n "$(find "$store/tmp" -name 'spill-*' 2>/dev/null | head -n 1)" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "capture ended before it spilled"; exit 1; }
    sleep 0.1
  done
  sleep "$(python3 -c 'import random; print(random.uniform(0, 4))')"
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
