#!/usr/bin/env bash
# Imaging through the `fog` binary as a user runs it: demo, capture, deploy --verify and fsck,
# 4096-byte-sector block devices, exit codes, a capture killed with SIGKILL then gc.
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/fog-e2e.XXXXXX)
pids=()
loops=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for dev in "${loops[@]:-}"; do [ -n "$dev" ] && losetup -d "$dev" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    echo "== e2e failed (exit $rc); logs:"
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 50 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

fog=${FOG:?run through scripts/e2e}
export FOG_STORE=$work/store

echo "== demo"
"$fog" demo --dir "$work/demo" > "$work/demo.log" 2>&1
grep -q "read back and verified" "$work/demo.log"

echo "== CLI capture, deploy --verify, fsck"
mkdir -p "$work/tree/etc"
head -c 3000000 /dev/urandom > "$work/tree/blob"
seq 1 200000 > "$work/tree/etc/numbers"
truncate -s 128M "$work/disk.img"
sfdisk -q "$work/disk.img" <<<$'label: gpt\n,100M,L\n'
truncate -s 100M "$work/part.img"
mkfs.ext4 -q -F -d "$work/tree" "$work/part.img"
dd if="$work/part.img" of="$work/disk.img" bs=1M seek=1 conv=notrunc status=none
"$fog" image capture "$work/disk.img" --name e2e > "$work/capture.log" 2>&1
listing=$("$fog" --json image ls)
grep -q '"name": "e2e"' <<<"$listing"
"$fog" image deploy e2e "$work/out.img" --verify > "$work/deploy.log" 2>&1
dd if="$work/out.img" of="$work/out-part.img" bs=1M skip=1 count=100 status=none
e2fsck -fn "$work/out-part.img" > "$work/fsck.log" 2>&1
cmp <(debugfs -R "cat /blob" "$work/out-part.img" 2>/dev/null) "$work/tree/blob"

echo "== block devices with 4096-byte sectors (loop devices)"
truncate -s 96M "$work/src4k.img" "$work/t4k.img"
truncate -s 128M "$work/t512.img"
src=$(losetup --sector-size 4096 -f --show "$work/src4k.img"); loops+=("$src")
printf 'g\nn\n1\n\n+48M\nw\n' | fdisk "$src" > "$work/fdisk.log" 2>&1 || true
start=$(sfdisk -J "$src" | sed -n 's/.*"start": *\([0-9]*\).*/\1/p' | head -n 1)
[ -n "$start" ] || { echo "no partition on $src"; exit 1; }
truncate -s 40M "$work/p4k.img"
mkfs.ext4 -q -F -b 4096 -d "$work/tree" "$work/p4k.img"
dd if="$work/p4k.img" of="$src" bs=4096 seek="$start" conv=notrunc status=none
"$fog" image capture "$src" --name blk4k > "$work/capture4k.log" 2>&1
grep -q "partition 1 *ext" "$work/capture4k.log"
grep -q '"sector_size": 4096' <("$fog" --json image info blk4k)
t512=$(losetup -f --show "$work/t512.img"); loops+=("$t512")
set +e
"$fog" image deploy blk4k "$t512" > "$work/mismatch.log" 2>&1; rc=$?
set -e
[ "$rc" = 2 ] && grep -q "4096-byte sectors" "$work/mismatch.log"
[ -z "$(tr -d '\0' < "$work/t512.img" | head -c 1)" ] || { echo "a refused deploy wrote to the target"; exit 1; }
t4k=$(losetup --sector-size 4096 -f --show "$work/t4k.img"); loops+=("$t4k")
"$fog" image deploy blk4k "$t4k" --verify > "$work/deploy4k.log" 2>&1
dd if="$t4k" of="$work/out4k-part.img" bs=4096 skip="$start" count=$((40 * 256)) status=none
e2fsck -fn "$work/out4k-part.img" >> "$work/fsck.log" 2>&1
cmp <(debugfs -R "cat /blob" "$work/out4k-part.img" 2>/dev/null) "$work/tree/blob"

echo "== exit codes"
set +e
"$fog" image deploy missing "$work/x.img" 2>/dev/null; rc_missing=$?
"$fog" image capture "$work/nope.img" --name x 2>/dev/null; rc_nofile=$?
set -e
[ "$rc_missing" = 2 ] && [ "$rc_nofile" = 2 ]

echo "== capture killed with SIGKILL, then gc"
chunks_before=$("$fog" --json store stats | sed -n 's/.*"chunks": \([0-9]*\).*/\1/p')
truncate -s 1G "$work/big.img"
head -c 600000000 /dev/urandom | dd of="$work/big.img" conv=notrunc status=none
"$fog" image capture "$work/big.img" --name killed > "$work/killed.log" 2>&1 &
pid=$!; pids+=("$pid")
for _ in $(seq 1 600); do
  [ -n "$(find "$FOG_STORE/tmp" -type f 2>/dev/null | head -n 1)" ] && break
  sleep 0.1
done
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
listing=$("$fog" image ls)
if grep -q killed <<<"$listing"; then echo "a killed capture is visible as an image"; exit 1; fi
"$fog" store gc > "$work/gc.log"
chunks_after=$("$fog" --json store stats | sed -n 's/.*"chunks": \([0-9]*\).*/\1/p')
[ "$chunks_before" = "$chunks_after" ] || { echo "gc left $chunks_after chunks, had $chunks_before"; exit 1; }
[ -z "$(ls -A "$FOG_STORE/tmp")" ]
"$fog" store verify > "$work/verify.log"
echo "== e2e passed"
