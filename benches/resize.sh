#!/usr/bin/env bash
# The resizable-deploy benchmark (issue "resizable deploy"): the same image deployed with
# `--layout exact` and `--layout fit` to a disk twice the source's size, alternating, several runs
# each, in the same run; and fit to a disk 0.6x the source (from the shrunk copy). Fit must add no
# more than the filesystem tools' own time (the report's `resize_seconds`: e2fsck + resize2fs,
# ntfsresize + ntfsfix, run by fog on loop devices). Last, one fit deploy to the smallest disk the
# image fits (the EFI partition plus each partition's minimum plus 64 MiB), from the shrunk copies.
#
#   sudo benches/resize.sh                        # 8 GiB source, 3 runs per layout
#   sudo BENCH_GIB=2 BENCH_RUNS=1 benches/resize.sh
#
# The source: GPT, 1 EFI FAT32 (100 MiB), 2 ext4 (60% of the disk, ~40% of it files of random
# bytes), 3 NTFS (rest, ~30% files by ntfscp). Captured once (the capture works out the minimum
# sizes: its time is reported). Each deploy goes to a new sparse file, the page cache dropped first.
#
# Environment: BENCH_GIB (source size, default 8), BENCH_RUNS (default 3), FOG (default
# target/release/fog, built if absent), BENCH_DIR (default /var/tmp), BENCH_KEEP=1 keeps the work
# directory. Results: target/bench/resize.json and a table.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
gib=${BENCH_GIB:-8}
runs=${BENCH_RUNS:-3}
fog=${FOG:-$target_dir/release/fog}
parent=${BENCH_DIR:-/var/tmp}
result_json=$target_dir/bench/resize.json
[[ $gib =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_GIB: '$gib' is not a whole number of GiB" >&2; exit 2; }
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS: '$runs' is not a positive count" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "resize bench: needs root (loop devices for the resize tools)" >&2; exit 2; }
for t in sgdisk mkfs.vfat mkfs.ext4 mkfs.ntfs ntfscp resize2fs ntfsresize jq; do
  command -v "$t" > /dev/null || { echo "resize bench: $t is not installed" >&2; exit 2; }
done
[ -x "$fog" ] || (cd "$root" && cargo build --release --locked -q -p fog-cli)

work=$(mktemp -d "$parent/fog-bench-resize.XXXXXX")
cleanup() { [ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT
say() { printf '== %s\n' "$*"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

say "source: ${gib} GiB GPT disk (EFI FAT32, ext4, NTFS)"
src=$work/source.img
mib=$((gib * 1024))
ext_mib=$((mib * 60 / 100))
truncate -s "${gib}G" "$src"
sgdisk -n 1:1M:+100M -t 1:EF00 -n 2:0:+${ext_mib}M -t 2:8300 -n 3:0:0 -t 3:0700 "$src" > /dev/null
part() { partx -g -o "$2" -n "$1" "$src" | tr -d ' '; }
tree=$work/tree
mkdir -p "$tree"
files_mib=$((ext_mib * 40 / 100))
for i in $(seq 1 $((files_mib / 16))); do head -c 16M /dev/urandom > "$tree/f$i.bin"; done
ext=$work/ext.img
truncate -s $(($(part 2 SECTORS) * 512)) "$ext"
mkfs.ext4 -q -F -d "$tree" "$ext"
dd if="$ext" of="$src" bs=1M seek=$(($(part 2 START) / 2048)) conv=notrunc,sparse status=none
rm -rf "$tree" "$ext"
esp=$work/esp.img
truncate -s 100M "$esp"
mkfs.vfat -F 32 "$esp" > /dev/null
dd if="$esp" of="$src" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$esp"
ntfs=$work/ntfs.img
ntfs_bytes=$(($(part 3 SECTORS) * 512))
truncate -s "$ntfs_bytes" "$ntfs"
mkfs.ntfs -q -F -f -p "$(part 3 START)" "$ntfs" 2> /dev/null
for i in $(seq 1 $((ntfs_bytes * 30 / 100 / 16777216))); do
  head -c 16M /dev/urandom > "$work/n.bin"
  ntfscp -q "$ntfs" "$work/n.bin" "/n$i.bin"
done
rm -f "$work/n.bin"
dd if="$ntfs" of="$src" bs=1M seek=$(($(part 3 START) / 2048)) conv=notrunc,sparse status=none
rm -f "$ntfs"

say "capture (with the minimum sizes worked out)"
store=$work/store
drop_caches
"$fog" --json --store "$store" image capture "$src" --name img > "$work/capture.json"
capture_s=$(jq .seconds "$work/capture.json")
shrink_s=$(jq '[.minimum_sizes[].seconds] | add // 0' "$work/capture.json")
data_bytes=$(jq .data_bytes "$work/capture.json")
rm -f "$src" # the deploys read the store only

deploy() { # LAYOUT SIZE_MIB -> report JSON on stdout
  local t=$work/target.img
  rm -f "$t"
  truncate -s "${2}M" "$t"
  drop_caches
  "$fog" --json --store "$store" image deploy img "$t" --layout "$1"
  rm -f "$t"
}

results=()
for r in $(seq 1 "$runs"); do
  for layout in exact fit; do
    say "run $r: $layout to $((mib * 2)) MiB"
    deploy "$layout" $((mib * 2)) > "$work/$layout-$r.json"
    results+=("$(jq -c --arg l "$layout" --argjson r "$r" '{layout: $l, run: $r, target: "2x", seconds, resize_seconds}' "$work/$layout-$r.json")")
  done
done
smallest_mib=$(jq '([.minimum_sizes[].min_len] | add) / 1048576 + 100 + 64 | floor' "$work/capture.json")
say "fit to $smallest_mib MiB (the smallest the image fits, from the shrunk copies)"
deploy fit "$smallest_mib" > "$work/fit-small.json"
results+=("$(jq -c --arg t "$(awk -v s="$smallest_mib" -v m="$mib" 'BEGIN {printf "%.2fx", s / m}')" \
  '{layout: "fit", run: 1, target: $t, seconds, resize_seconds}' "$work/fit-small.json")")

mkdir -p "$(dirname "$result_json")"
printf '%s\n' "${results[@]}" | jq -s --argjson gib "$gib" --argjson capture "$capture_s" --argjson shrink "$shrink_s" \
  --argjson data "$data_bytes" '{source_gib: $gib, data_bytes: $data, capture_seconds: $capture, minimum_sizes_seconds: $shrink, deploys: .}' \
  > "$result_json"
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
exact=$(jq '.deploys[] | select(.layout == "exact") | .seconds' "$result_json" | median)
fit=$(jq '.deploys[] | select(.layout == "fit" and .target == "2x") | .seconds' "$result_json" | median)
tools=$(jq '.deploys[] | select(.layout == "fit" and .target == "2x") | .resize_seconds' "$result_json" | median)
small=$(jq '.deploys[] | select(.target != "2x") | .seconds' "$result_json")
small_tools=$(jq '.deploys[] | select(.target != "2x") | .resize_seconds' "$result_json")
small_ratio=$(jq -r '.deploys[] | select(.target != "2x") | .target' "$result_json")
echo
printf 'source %s GiB, %s MiB of used data; capture %.1f s, of which minimum sizes (shrunk copies) %.1f s\n' \
  "$gib" $((data_bytes >> 20)) "$capture_s" "$shrink_s"
printf '%-26s %10s %14s %16s\n' "deploy (median of $runs)" "seconds" "tools' own s" "fit - exact - tools"
printf '%-26s %10.2f %14s %16s\n' "exact, 2x disk" "$exact" "-" "-"
printf '%-26s %10.2f %14.2f %16.2f\n' "fit, 2x disk" "$fit" "$tools" "$(awk -v f="$fit" -v e="$exact" -v t="$tools" 'BEGIN {print f - e - t}')"
printf '%-26s %10.2f %14.2f %16s\n' "fit, $small_ratio disk (1 run)" "$small" "$small_tools" "-"
jq -r '.minimum_sizes[] | "partition \(.partition) (\(.filesystem)): \(.len / 1048576 | floor) MiB, \(.used_bytes / 1048576 | floor) MiB used, fits in \(.min_len / 1048576 | floor) MiB"' "$work/capture.json"
printf 'fit / exact on the 2x disk: %.2f\n' "$(awk -v f="$fit" -v e="$exact" 'BEGIN {print f / e}')"
echo "results: $result_json"
