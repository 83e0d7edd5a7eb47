#!/usr/bin/env bash
# The multicast deploy benchmark (issue 14, docs/multicast-design.md §7): `fog multicast send` /
# `fog multicast receive` against udpcast and uftp carrying FOG Project's image (partclone.ext4 |
# zstd -3 -T0) of the same partition, in the same run, between network namespaces on a bridge
# (scripts/lib/mcast-net.sh, namespaces fog81*). Every receiver's port is shaped by tbf so the
# link, not the 2 cores, limits:
#   - "3":    3 receivers, ports at 200 Mbit/s, a BENCH_MIB partition;
#   - "many": BENCH_MANY receivers, ports at 40 Mbit/s, a BENCH_MANY_MIB partition.
# Cases on each network, the tools one after another (their order rotating from case to case):
# clean; r1 losing 1% of its UDP packets (nftables); r2's port at half the rate (tbf).
#
#   sudo benches/multicast.sh                               # 1 GiB / 3 receivers, 256 MiB / 10
#   sudo BENCH_MIB=256 BENCH_MANY=0 benches/multicast.sh    # quick: the 3-receiver network only
#
# The source: a GPT disk with one ext4 partition of BENCH_MIB MiB, ~80% of it files (half random
# bytes, half text from a fixed-seed generator as in the e2e). fog captures the disk into a fresh
# store; the peers' payload is `partclone.ext4 -c | zstd -3 -T0` of the same partition (the
# partition file that `mkfs.ext4 -d` made and that was copied into the disk: the same bytes).
#
# Timed, per session: from the sender's start (receivers already waiting, page cache dropped) to
# the last receiver done, its restore and fsync included:
#   - fog:     `fog multicast send img --receivers N --rate <port Mbit>` on the sender;
#              `fog --json multicast receive DISK` on each receiver (a whole-disk target);
#   - udpcast: `udp-sender --file IMG --min-receivers N --max-bitrate <port rate> --nokbd`;
#              `udp-receiver --nokbd | zstd -dc | partclone.restore -s - -O PART; sync PART`
#              (the restore overlaps the transfer, as in FOG Project);
#   - uftp:    `uftp -R <port kbps> -H <the receivers' ids>`; `uftpd -d -D DIR -F STATUS`, and on
#              each receiver the restore starts when its status file says the file arrived.
#              uftp cannot pipe: transfer time (last file arrived) and transfer+restore are both
#              reported; ratios use transfer+restore.
# udpcast and uftp send at the fixed rate given (neither adapts); fog's rate cap is the same.
# Wire bytes: the sender's eth0 tx_bytes over the session (fog's HTTP fallback included) against
# the stored size (fog: the sender report's payload_bytes; peers: the .pcl.zst). For the loss and
# slow cases, the others' time (every receiver but the lossy or slow one) over the same receivers'
# time in the clean case. Every target is compared with `cmp` (fog: with a unicast `fog image
# deploy`; peers: with the source partition); a mismatch or a failed receiver marks the session
# failed (reported, and the exit status is 1 at the end).
#
# Environment: BENCH_MIB (partition size of the 3-receiver source, default 1024), BENCH_MANY
# (receivers of the second network, default 10; 0 skips it), BENCH_MANY_MIB (its source, default
# 256), BENCH_TIMEOUT (seconds allowed per session, default 600), FOG (default target/release/fog,
# built if absent), BENCH_DIR (parent of the work directory, default /var/tmp), BENCH_KEEP=1 keeps
# the work directory (sources, stores, every session's logs and reports). Results:
# target/bench/multicast.json and a table.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
fog=${FOG:-$target_dir/release/fog}
parent=${BENCH_DIR:-/var/tmp}
mib=${BENCH_MIB:-1024}
many=${BENCH_MANY:-10}
many_mib=${BENCH_MANY_MIB:-256}
limit=${BENCH_TIMEOUT:-600}
rate=200     # Mbit/s of each port, 3 receivers
many_rate=40 # Mbit/s of each port, the many receivers
result_json=$target_dir/bench/multicast.json
[[ $mib =~ ^[0-9]+$ ]] && [ "$mib" -ge 64 ] || { echo "BENCH_MIB: '$mib' must be a whole number of MiB >= 64" >&2; exit 2; }
[[ $many_mib =~ ^[0-9]+$ ]] && [ "$many_mib" -ge 64 ] || { echo "BENCH_MANY_MIB: '$many_mib' must be a whole number of MiB >= 64" >&2; exit 2; }
[[ $many =~ ^[0-9]+$ ]] && { [ "$many" = 0 ] || { [ "$many" -ge 2 ] && [ "$many" -le 200 ]; }; } \
  || { echo "BENCH_MANY: '$many' must be 0 (skip) or 2..200 receivers" >&2; exit 2; }
[[ $limit =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_TIMEOUT: '$limit' is not a positive number of seconds" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "multicast bench: needs root (network namespaces, tc, nftables)" >&2; exit 2; }
missing=()
for t in ip:iproute2 tc:iproute2 nft:nftables sfdisk:fdisk mkfs.ext4:e2fsprogs partclone.ext4:partclone \
  partclone.restore:partclone zstd:zstd udp-sender:udpcast udp-receiver:udpcast uftp:uftp uftpd:uftp \
  jq:jq python3:python3 setsid:util-linux; do
  command -v "${t%%:*}" > /dev/null || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "multicast bench: missing tools; install them with: apt-get install $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')" >&2
  exit 2
fi
MC=fog81
# shellcheck source=../scripts/lib/mcast-net.sh
source "$root/scripts/lib/mcast-net.sh"
if ip netns list | grep -q "^${MC}[bs]\b"; then
  echo "multicast bench: namespaces ${MC}* exist (another run, or one killed hard); remove them with" >&2
  echo "  for n in \$(ip netns list | awk '/^${MC}/ {print \$1}'); do ip netns del \$n; done" >&2
  exit 2
fi
[ -x "$fog" ] || (cd "$root" && cargo build --release --locked -q -p fog-cli)

work=$(mktemp -d "$parent/fog-bench-mcast.XXXXXX")
# A copy of the binary: a rebuild during the run must not change what is measured.
cp "$fog" "$work/fog"
fog_id="$(git -C "$root" rev-parse --short HEAD 2> /dev/null || echo '?') (work tree may differ), binary of $(date -u -r "$fog" +%FT%TZ), sha256 $(sha256sum "$work/fog" | cut -c1-12)"
fog=$work/fog
pids=()  # process groups this script started (each under setsid: pid == pgid)
net_n=0  # receivers of the network that is up
failed=0 # sessions that failed
cleanup() {
  local rc=$? p
  for p in "${pids[@]}"; do kill -- "-$p" 2> /dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
  [ "$net_n" = 0 ] || mcast_net_down "$net_n"
  if [ $rc -ne 0 ] && [ $rc -ne 1 ]; then
    echo "multicast bench: ERROR (exit $rc); the newest logs:" >&2
    find "$work" -name '*.log' -newer "$work/start" -printf '%T@ %p\n' 2> /dev/null | sort -n | tail -n 6 | while read -r _ f; do
      echo "--- $f" >&2
      tr '\r' '\n' < "$f" | tail -n 15 >&2
    done
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
touch "$work/start"
say() { printf '== %s\n' "$*"; }
now() { date +%s.%N; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2> /dev/null || true; }
bench_start=$(now)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# stamp END CMD...: runs CMD, then writes "rc end-time" to END (the receivers' clock).
stamp() {
  local end=$1 rc=0
  shift
  "$@" || rc=$?
  echo "$rc $(date +%s.%N)" > "$end"
  return $rc
}
# restore ZST_OR_- PART PCLOG: zstd -dc | partclone.restore onto a partition file, then its fsync.
restore() {
  zstd -dc -q "$1" | partclone.restore -q -f 1 -s - -O "$2" -L "$3" > /dev/null && sync "$2"
}
# rx_udpcast PART LOG PCLOG (inside a receiver's namespace)
rx_udpcast() {
  udp-receiver --nokbd --interface eth0 2> "$2" | restore - "$1" "$3"
}
# rx_uftp_watch STATUS FILE PART PCLOG END DEADLINE: when uftpd's status file reports the file,
# restores it; END gets "rc end-time arrived-time".
rx_uftp_watch() {
  until grep -q '^RESULT;' "$1" 2> /dev/null; do
    [ "$(date +%s)" -lt "$6" ] || { echo "124 $(date +%s.%N) $(date +%s.%N)" > "$5"; return 1; }
    sleep 0.05
  done
  local arrived rc=0
  arrived=$(date +%s.%N)
  restore "$2" "$3" "$4" || rc=$?
  echo "$rc $(date +%s.%N) $arrived" > "$5"
  return $rc
}
export -f stamp restore rx_udpcast rx_uftp_watch

# make_source NAME MIB SEED: $work/NAME/{part.img (the partition), ref.img (a unicast fog deploy),
# store/ (image "img"), img.pcl.zst, capture.json}.
make_source() {
  local d=$work/$1 size=$2 seed=$3 files
  files=$((size * 40 / 100))
  mkdir -p "$d/tree"
  head -c "${files}M" /dev/urandom > "$d/tree/random.bin"
  python3 - "$d/tree/text.txt" "$files" "$seed" << 'PY'
import random, sys
rng = random.Random(int(sys.argv[3]))
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 9))) for _ in range(5000)]
with open(sys.argv[1], 'w') as out:
    written, limit = 0, int(sys.argv[2]) << 20
    while written < limit:
        line = ' '.join(rng.choice(words) for _ in range(14)) + '\n'
        out.write(line)
        written += len(line)
PY
  truncate -s "${size}M" "$d/part.img"
  mkfs.ext4 -q -F -d "$d/tree" "$d/part.img"
  rm -rf "$d/tree"
  truncate -s "$((size + 2))M" "$d/disk.img"
  sfdisk -q "$d/disk.img" <<< $'label: gpt\n,'"${size}"$'M,L\n'
  dd if="$d/part.img" of="$d/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none
  "$fog" --json --store "$d/store" image capture "$d/disk.img" --name img > "$d/capture.json" 2> "$d/capture.log"
  "$fog" --store "$d/store" image deploy img "$d/ref.img" > "$d/ref.log" 2>&1
  rm -f "$d/disk.img"
  partclone.ext4 -c -q -f 1 -s "$d/part.img" -o - -L "$d/partclone-capture.log" 2> /dev/null | zstd -3 -T0 -q > "$d/img.pcl.zst"
}

# finish_wait DEADLINE ENDFILES... -- PIDS...: until every END file exists and every pid exited;
# 1 when the deadline passed first.
finish_wait() {
  local deadline=$1 f p
  shift
  local ends=() procs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do ends+=("$1"); shift; done
  shift
  procs=("$@")
  while :; do
    local busy=0
    for f in "${ends[@]}"; do [ -s "$f" ] || busy=1; done
    for p in "${procs[@]}"; do kill -0 "$p" 2> /dev/null && busy=1; done
    [ $busy = 1 ] || return 0
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# stop PIDS...: ends these process groups (ours) and reaps them.
stop() {
  local p
  for p in "$@"; do kill -- "-$p" 2> /dev/null || true; done
  for p in "$@"; do wait "$p" 2> /dev/null || true; done
}

# session NET N PORT_MBIT TOOL CASE: one timed session; appends its JSON line to sessions.jsonl.
session() {
  local net=$1 n=$2 mbit=$3 tool=$4 case=$5 i
  local d=$work/$net s=$work/$net/$tool-$case
  local part_bytes stored rx=() daemons=() ends=() sender b0 b1 t0 deadline timed_out=false sender_rc=0
  mkdir -p "$s"
  part_bytes=$(stat -c %s "$d/part.img")
  for i in $(seq 1 "$n"); do
    if [ "$tool" = fog ]; then
      truncate -s "$(stat -c %s "$d/ref.img")" "$s/r$i.img"
    else
      truncate -s "$part_bytes" "$s/r$i.img"
    fi
    ends+=("$s/r$i.end")
  done
  drop_caches
  deadline=$(($(date +%s) + limit))
  for i in $(seq 1 "$n"); do
    case $tool in
      fog)
        setsid ip netns exec "${MC}r$i" bash -o pipefail -c 'stamp "$@"' _ "$s/r$i.end" \
          "$fog" --json multicast receive "$s/r$i.img" --interface eth0 --wait "$limit" \
          > "$s/r$i.json" 2> "$s/r$i.log" &
        rx+=($!)
        ;;
      udpcast)
        setsid ip netns exec "${MC}r$i" bash -o pipefail -c 'stamp "$@"' _ "$s/r$i.end" \
          rx_udpcast "$s/r$i.img" "$s/r$i.log" "$s/r$i.partclone.log" > /dev/null 2> "$s/r$i.err.log" &
        rx+=($!)
        ;;
      uftp)
        mkdir -p "$s/r$i.d"
        setsid ip netns exec "${MC}r$i" uftpd -d -I eth0 -D "$s/r$i.d" -F "$s/r$i.status" > "$s/r$i.log" 2>&1 &
        daemons+=($!)
        setsid bash -o pipefail -c 'rx_uftp_watch "$@"' _ "$s/r$i.status" "$s/r$i.d/img.pcl.zst" "$s/r$i.img" \
          "$s/r$i.partclone.log" "$s/r$i.end" "$deadline" > /dev/null 2> "$s/r$i.err.log" &
        rx+=($!)
        ;;
    esac
  done
  pids+=("${rx[@]}" "${daemons[@]}")
  sleep 1 # receivers listening (uftpd bound, fog and udp-receiver waiting for a sender)
  b0=$(mcast_tx_bytes)
  t0=$(now)
  case $tool in
    fog)
      setsid ip netns exec "${MC}s" "$fog" --json --store "$d/store" multicast send img --interface eth0 \
        --receivers "$n" --max-wait 60 --rate "$mbit" --http-port 7071 > "$s/send.json" 2> "$s/send.log" &
      ;;
    udpcast)
      setsid ip netns exec "${MC}s" udp-sender --file "$d/img.pcl.zst" --min-receivers "$n" --nokbd \
        --interface eth0 --max-bitrate "${mbit}m" > "$s/send.out" 2> "$s/send.log" &
      ;;
    uftp)
      local ids
      ids=$(for i in $(seq 1 "$n"); do printf '0x0A5000%02X,' $((10 + i)); done)
      setsid ip netns exec "${MC}s" uftp -I eth0 -R $((mbit * 1000)) -H "${ids%,}" \
        "$d/img.pcl.zst" > "$s/send.out" 2> "$s/send.log" &
      ;;
  esac
  sender=$!
  pids+=("$sender")
  if ! finish_wait "$deadline" "${ends[@]}" -- "${rx[@]}"; then
    timed_out=true
    echo "   $tool $case: receivers not done after $limit s; stopped" >&2
    stop "${rx[@]}"
  fi
  # The sender gets 60 s more to end on its own (fog computes its report's totals at the end).
  if ! finish_wait "$(($(date +%s) + 60))" -- "$sender"; then
    echo "   $tool $case: the sender did not exit 60 s after the receivers; stopped" >&2
    stop "$sender"
    sender_rc=124
  fi
  [ "$sender_rc" != 0 ] || wait "$sender" 2> /dev/null || sender_rc=$?
  b1=$(mcast_tx_bytes)
  for i in "${rx[@]}"; do wait "$i" 2> /dev/null || true; done
  [ ${#daemons[@]} = 0 ] || stop "${daemons[@]}"
  if [ "$tool" = fog ]; then stored=$(jq '.payload_bytes // 0' "$s/send.json" 2> /dev/null || echo 0); else stored=$(stat -c %s "$d/img.pcl.zst"); fi

  local recs=() rc end arrived same ref
  for i in $(seq 1 "$n"); do
    rc=124 end=null arrived=null
    [ -s "$s/r$i.end" ] && read -r rc end arrived < "$s/r$i.end"
    if [ "$tool" = fog ]; then ref=$d/ref.img; else ref=$d/part.img; fi
    same=false
    [ "$rc" = 0 ] && cmp -s "$s/r$i.img" "$ref" && same=true
    local extra='{}'
    if [ "$tool" = fog ] && jq -e . "$s/r$i.json" > /dev/null 2>&1; then
      extra=$(jq -c '{mode, from_multicast, from_http, naks, queue_drops, packets, deploy_seconds: .deploy.seconds}' "$s/r$i.json")
    fi
    recs+=("$(jq -nc --argjson i "$i" --argjson rc "$rc" --argjson t0 "$t0" --argjson e "${end:-null}" \
      --argjson arrived "${arrived:-null}" --argjson same "$same" --argjson extra "$extra" \
      '{receiver: $i, rc: $rc, same: $same,
        seconds: (if $e == null then null else ($e - $t0) end),
        transfer_seconds: (if $arrived == null then null else ($arrived - $t0) end)} + $extra')")
    rm -rf "$s/r$i.img" "$s/r$i.d"
  done
  local send_report='null'
  if [ "$tool" = fog ] && jq -e . "$s/send.json" > /dev/null 2>&1; then
    send_report=$(jq -c '{payload_bytes, bytes_sent, packets, repairs, objects_resent, http_objects, wait_seconds, send_seconds, receivers}' "$s/send.json")
  fi
  printf '%s\n' "${recs[@]}" | jq -sc --arg net "$net" --arg tool "$tool" --arg case "$case" --argjson n "$n" \
    --argjson mbit "$mbit" --argjson wire $((b1 - b0)) --argjson stored "${stored:-0}" \
    --argjson sender_rc "$sender_rc" --argjson timed_out "$timed_out" --argjson report "$send_report" \
    --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
    '{net: $net, tool: $tool, case: $case, receivers: $n, port_mbit: $mbit, sender_rc: $sender_rc,
      timed_out: $timed_out, ok: ((all(.[]; .rc == 0 and .same)) and $sender_rc == 0 and ($timed_out | not)),
      seconds: (if any(.[]; .seconds == null) then null else ([.[].seconds] | max) end),
      transfer_seconds: (if $tool == "uftp" and all(.[]; .transfer_seconds != null) then ([.[].transfer_seconds] | max) else null end),
      wire_bytes: $wire, stored_bytes: $stored,
      wire_ratio: (if $stored > 0 then $wire / $stored else null end),
      loadavg_1min_after: ($load | tonumber), per_receiver: ., fog_sender: $report}' >> "$work/sessions.jsonl"
  local line
  line=$(tail -n 1 "$work/sessions.jsonl")
  if [ "$(jq .ok <<< "$line")" != true ]; then
    failed=$((failed + 1))
    echo "   FAILED: $(jq -c '{sender_rc, timed_out, receivers: [.per_receiver[] | {receiver, rc, same}]}' <<< "$line")" >&2
  fi
  jq -r '"   \(.tool) \(.case): \(.seconds // "-" | if type == "number" then (. * 100 | round / 100 | tostring) + " s" else . end)"
    + (if .transfer_seconds then " (transfer \(.transfer_seconds * 100 | round / 100) s)" else "" end)
    + ", wire/stored \(.wire_ratio // 0 | . * 1000 | round / 1000)"
    + (if .fog_sender then ", repairs \(.fog_sender.repairs), http objects \(.fog_sender.http_objects), modes \([.per_receiver[].mode] | join(","))" else "" end)' <<< "$line"
  pids=() # all reaped: never signal a pid that may have been reused
  sync
}

# network NAME N PORT_MBIT: the network, the three cases, each tool in turn.
network() {
  local net=$1 n=$2 mbit=$3 r tools case k=0
  say "network $net: a sender and $n receivers, every port at $mbit Mbit/s"
  mcast_net_up "$n"
  net_n=$n
  for r in $(seq 1 "$n"); do mcast_rate "r$r" "$mbit"; done
  for case in clean loss slow; do
    case $case in
      loss) mcast_loss r1 1 ;;
      slow) mcast_rate r2 $((mbit / 2)) ;;
    esac
    tools=(fog udpcast uftp)
    tools=("${tools[@]:k%3}" "${tools[@]:0:k%3}") # the order rotates from case to case
    say "$net, $case: ${tools[*]}"
    for t in "${tools[@]}"; do session "$net" "$n" "$mbit" "$t" "$case"; done
    case $case in
      loss) mcast_noloss r1 ;;
      slow) mcast_rate r2 "$mbit" ;;
    esac
    k=$((k + 1))
  done
  mcast_net_down "$n"
  net_n=0
}

say "source: ${mib} MiB ext4 partition on a GPT disk, ~80% files (half random, half text)"
make_source "3x$rate" "$mib" 81
[ "$many" = 0 ] || {
  say "source for the many receivers: ${many_mib} MiB"
  make_source "${many}x$many_rate" "$many_mib" 82
}
: > "$work/sessions.jsonl"
network "3x$rate" 3 "$rate"
[ "$many" = 0 ] || network "${many}x$many_rate" "$many" "$many_rate"

# Results.
mkdir -p "$(dirname "$result_json")"
bench_end=$(now)
sources=$(for net in "3x$rate" "${many}x$many_rate"; do
  [ -f "$work/$net/capture.json" ] || continue
  jq -c --arg net "$net" --argjson part "$(stat -c %s "$work/$net/part.img")" --argjson pcl "$(stat -c %s "$work/$net/img.pcl.zst")" \
    '{net: $net, partition_bytes: $part, data_bytes: .data_bytes, pcl_zst_bytes: $pcl, capture_seconds: .seconds}' "$work/$net/capture.json"
done | jq -sc .)
jq -s --argjson sources "$sources" --argjson mib "$mib" --argjson many "$many" --argjson many_mib "$many_mib" \
  --argjson rate "$rate" --argjson many_rate "$many_rate" --arg load_start "$load_start" \
  --arg load_end "$(cut -d' ' -f1-3 /proc/loadavg)" --argjson wall "$(awk -v a="$bench_start" -v b="$bench_end" 'BEGIN {print b - a}')" \
  --arg versions "fog $fog_id; $(dpkg-query -W -f '${Package} ${Version}, ' udpcast uftp partclone zstd 2> /dev/null | sed 's/, $//')" '
  def others($case): if $case == "loss" then 1 elif $case == "slow" then 2 else 0 end;
  . as $s
  | {bench_mib: $mib, bench_many: $many, bench_many_mib: $many_mib, port_mbit: {"3": $rate, many: $many_rate},
     loadavg_start: $load_start, loadavg_end: $load_end, wall_seconds: $wall, versions: $versions,
     sources: $sources, sessions: $s,
     summary: [ ($s | reduce .[].net as $n ([]; if any(.[]; . == $n) then . else . + [$n] end))[] as $name
       | $s | map(select(.net == $name)) | . as $net
       | [ .[] | select(.case == "clean") ] as $clean
       | [ "clean", "loss", "slow" ][] as $case
       | ($net | map(select(.case == $case)) | INDEX(.tool)) as $by
       | { net: $net[0].net, case: $case,
           fog: $by.fog.seconds, udpcast: $by.udpcast.seconds,
           uftp_transfer: $by.uftp.transfer_seconds, uftp: $by.uftp.seconds,
           fog_over_udpcast: (if $by.fog.seconds and $by.udpcast.seconds then $by.fog.seconds / $by.udpcast.seconds else null end),
           fog_over_uftp: (if $by.fog.seconds and $by.uftp.seconds then $by.fog.seconds / $by.uftp.seconds else null end),
           wire_ratio: { fog: $by.fog.wire_ratio, udpcast: $by.udpcast.wire_ratio, uftp: $by.uftp.wire_ratio },
           ok: { fog: $by.fog.ok, udpcast: $by.udpcast.ok, uftp: $by.uftp.ok },
           others_over_clean: (if others($case) == 0 then null else
             ([ "fog", "udpcast", "uftp" ] | map(. as $t
               | ([ $by[$t].per_receiver[]? | select(.receiver != others($case)) | .seconds ] | max) as $o
               | ([ $clean[] | select(.tool == $t) | .per_receiver[] | select(.receiver != others($case)) | .seconds ] | max) as $c
               | { key: $t, value: (if $o and $c then $o / $c else null end) }) | from_entries) end) } ] }' \
  "$work/sessions.jsonl" > "$result_json"

echo
jq -r '.sources[] | "source \(.net): \(.partition_bytes / 1048576 | floor) MiB partition, \(.data_bytes / 1048576 | floor) MiB used; stored: partclone+zstd \(.pcl_zst_bytes / 1048576 * 10 | round / 10) MiB"' "$result_json"
jq -r '.sessions[] | select(.tool == "fog" and .case == "clean") | "  fog payload (\(.net)): \(.stored_bytes / 1048576 * 10 | round / 10) MiB"' "$result_json"
f() { jq -r "$1" "$result_json"; }
printf '\n%-11s %8s %10s %13s %11s %12s %9s %20s\n' "net, case" "fog s" "udpcast s" "uftp xfer s" "uftp s" "fog/udpcast" "fog/uftp" "wire/stored f u U"
f '.summary[] | [(.net + " " + .case), .fog, .udpcast, .uftp_transfer, .uftp, .fog_over_udpcast, .fog_over_uftp,
    ([.wire_ratio.fog, .wire_ratio.udpcast, .wire_ratio.uftp] | map(if . then (. * 1000 | round / 1000 | tostring) else "-" end) | join(" "))]
  | map(if . == null then "-" elif type == "number" then (. * 100 | round / 100 | tostring) else . end) | @tsv' |
  while IFS=$'\t' read -r c a b x u r1 r2 w; do printf '%-11s %8s %10s %13s %11s %12s %9s %20s\n' "$c" "$a" "$b" "$x" "$u" "$r1" "$r2" "$w"; done
echo
echo "others' time / their clean time (loss: all but r1; slow: all but r2); uftp counts transfer+restore:"
f '.summary[] | select(.others_over_clean) | "  \(.net) \(.case): " + (.others_over_clean | to_entries | map("\(.key) \(.value // "-" | if type == "number" then (. * 100 | round / 100) else . end)") | join(", "))'
echo
echo "goals (design §7): fog/udpcast clean <= 0.8; others <= 1.1x clean; fog wire/stored <= 1.08"
f '.sessions[] | select(.ok | not) | "FAILED: \(.net) \(.tool) \(.case)"'
f '"load average: start \(.loadavg_start), end \(.loadavg_end); wall \(.wall_seconds | floor) s"'
echo "results: $result_json"
[ "$failed" = 0 ] || exit 1
