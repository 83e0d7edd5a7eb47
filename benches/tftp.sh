#!/usr/bin/env bash
# The TFTP benchmark: fog's TFTP server side by side with its peers in one run, same client, same
# 32 MiB file, over loopback, reported as ratios (fog / peer, higher is better).
#
#   sudo benches/tftp.sh                 # full run
#   sudo BENCH_REPEAT=3 benches/tftp.sh  # quicker
#
# Rows (client -> server):
#   atftp blksize 512              fog vs tftpd-hpa
#   atftp blksize 1428             fog vs tftpd-hpa
#   curl  blksize 512 / 1428       fog vs tftpd-hpa
#   atftp blksize 1428 window 16   fog vs atftpd
# and 200 atftp clients at once (4 MiB each, hashes checked) against fog: all must complete.
#
# Peers: tftpd-hpa (`in.tftpd -L`, foreground) and atftpd (`--daemon --no-fork`). The two Debian
# packages conflict: tftpd-hpa is installed, atftpd unpacked with dpkg-deb into the work dir.
# fog is `fog serve` with TFTP only.
#
# Environment:
#   BENCH_REPEAT         runs per cell, the median counts (default 5)
#   BENCH_CLIENTS        concurrent clients in the load test (default 200)
#   BENCH_STEP_TIMEOUT   seconds allowed for one transfer (default 120)
#   BENCH_KEEP=1         keep the work directory
#
# Exit status: 0 when every step ran (a missed target says FAIL in the table and the last line),
# non-zero when something errored (a transfer failed or a hash differs).
set -euo pipefail

root_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
repeat=${BENCH_REPEAT:-5}
clients=${BENCH_CLIENTS:-200}
limit=${BENCH_STEP_TIMEOUT:-120}
target_dir=${CARGO_TARGET_DIR:-$root_dir/target}
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPEAT must be a positive integer" >&2; exit 2; }
[[ $clients =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_CLIENTS must be a positive integer" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "benches/tftp.sh needs root (installs packages, runs peer servers)" >&2; exit 2; }

work=$(mktemp -d /tmp/fog-bench-tftp.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    echo "tftp bench: ERROR (exit $rc); logs:" >&2
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "work directory kept: $work" >&2; else rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== tools"
export DEBIAN_FRONTEND=noninteractive
need=()
command -v atftp > /dev/null || need+=(atftp)
command -v curl > /dev/null || need+=(curl)
[ -x /usr/sbin/in.tftpd ] || need+=(tftpd-hpa)
if [ ${#need[@]} -gt 0 ]; then
  timeout 600 apt-get install -y "${need[@]}" > "$work/apt.log" 2>&1
fi
atftpd_bin=$(command -v atftpd || true)
if [ -z "$atftpd_bin" ]; then
  (cd "$work" && timeout 300 apt-get download atftpd > "$work/apt-atftpd.log" 2>&1 && dpkg-deb -x atftpd_*.deb "$work/atftpd-pkg")
  atftpd_bin=$work/atftpd-pkg/usr/sbin/atftpd
fi
(cd "$root_dir" && cargo build --release --locked -q -p fog-cli)
fog_bin=$target_dir/release/fog

srv=$work/srv
mkdir -p "$srv" "$work/out"
chmod 755 "$srv"
head -c $((32 * 1024 * 1024)) /dev/urandom > "$srv/big.bin"
head -c $((4 * 1024 * 1024)) /dev/urandom > "$srv/small.bin"
chmod 644 "$srv"/*.bin
want_big=$(sha256sum < "$srv/big.bin")
want_small=$(sha256sum < "$srv/small.bin")

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    [ -z "$(ss -Hlun "sport = :$p" 2> /dev/null)" ] && { echo "$p"; return; }
  done
  echo "no free UDP port" >&2
  return 1
}

wait_udp() { # PORT PID NAME
  for _ in $(seq 1 100); do
    [ -n "$(ss -Hlun "sport = :$1" 2> /dev/null)" ] && return 0
    kill -0 "$2" 2> /dev/null || { echo "$3 exited at start" >&2; return 1; }
    sleep 0.1
  done
  echo "$3 did not listen on $1 within 10 s" >&2
  return 1
}

echo "== servers"
fog_port=$(free_port)
cat > "$work/fog.toml" <<EOF
[node]
data_dir = "$work"
boot_dir = "$srv"
[http]
enabled = false
[tftp]
listen = "127.0.0.1:$fog_port"
max_transfers = 1024
EOF
"$fog_bin" serve --config "$work/fog.toml" > "$work/fog.log" 2>&1 &
pids+=($!)
wait_udp "$fog_port" $! fog
hpa_port=$(free_port)
/usr/sbin/in.tftpd -L -s "$srv" -a "127.0.0.1:$hpa_port" > "$work/tftpd-hpa.log" 2>&1 &
pids+=($!)
wait_udp "$hpa_port" $! tftpd-hpa
atftpd_port=$(free_port)
"$atftpd_bin" --daemon --no-fork --port "$atftpd_port" --bind-address 127.0.0.1 --logfile "$work/atftpd.log" \
  --maxthread 300 "$srv" > "$work/atftpd.out.log" 2>&1 &
pids+=($!)
wait_udp "$atftpd_port" $! atftpd
echo "   fog :$fog_port, tftpd-hpa :$hpa_port, atftpd :$atftpd_port"

# fetch CLIENT PORT BLKSIZE WINDOW OUT -> prints seconds
fetch() {
  local client=$1 port=$2 blk=$3 win=$4 out=$5 t0 t1
  rm -f "$out"
  t0=$(date +%s.%N)
  case $client in
    atftp)
      local opts=(--option "blksize $blk")
      [ "$win" -gt 1 ] && opts+=(--option "windowsize $win")
      timeout "$limit" atftp "${opts[@]}" --get -r big.bin -l "$out" 127.0.0.1 "$port" > "$work/client.log" 2>&1
      ;;
    curl)
      timeout "$limit" curl -sS --tftp-blksize "$blk" -o "$out" "tftp://127.0.0.1:$port/big.bin" > "$work/client.log" 2>&1
      ;;
  esac
  t1=$(date +%s.%N)
  [ "$(sha256sum < "$out")" = "$want_big" ] || { echo "$client from :$port blksize $blk: hash differs" >&2; return 1; }
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

results=()
fails=0
# row LABEL CLIENT BLKSIZE WINDOW PEER_NAME PEER_PORT
row() {
  local label=$1 client=$2 blk=$3 win=$4 peer=$5 peer_port=$6 i fog_times=() peer_times=() fog_s peer_s
  for i in $(seq 1 "$repeat"); do # interleaved, so drift hits both alike
    fog_times+=("$(fetch "$client" "$fog_port" "$blk" "$win" "$work/out/f.bin")")
    peer_times+=("$(fetch "$client" "$peer_port" "$blk" "$win" "$work/out/p.bin")")
  done
  fog_s=$(printf '%s\n' "${fog_times[@]}" | median)
  peer_s=$(printf '%s\n' "${peer_times[@]}" | median)
  local line
  line=$(awk -v l="$label" -v p="$peer" -v f="$fog_s" -v q="$peer_s" 'BEGIN {
    fr = 32 / f; pr = 32 / q; r = fr / pr
    printf "%-34s %-10s %8.1f %8.1f %7.2fx  %s\n", l, p, fr, pr, r, (r >= 1.0 ? "ok" : "FAIL")
  }')
  echo "$line"
  results+=("$line")
  [[ $line == *FAIL ]] && fails=$((fails + 1))
  return 0
}

echo "== 32 MiB over loopback, median of $repeat (MiB/s)"
printf '%-34s %-10s %8s %8s %8s\n' "client, options" "peer" "fog" "peer" "ratio"
row "atftp blksize 512" atftp 512 1 tftpd-hpa "$hpa_port"
row "atftp blksize 1428" atftp 1428 1 tftpd-hpa "$hpa_port"
row "curl blksize 512" curl 512 1 tftpd-hpa "$hpa_port"
row "curl blksize 1428" curl 1428 1 tftpd-hpa "$hpa_port"
row "atftp blksize 1428 windowsize 16" atftp 1428 16 atftpd "$atftpd_port"

echo "== $clients atftp clients at once against fog (4 MiB each, blksize 1428)"
load() { # PORT NAME
  local port=$1 name=$2 i t0 t1 cpids=() ok=0 bad=0
  rm -f "$work"/out/c.*
  t0=$(date +%s.%N)
  for i in $(seq 1 "$clients"); do
    timeout "$limit" atftp --option "blksize 1428" --get -r small.bin -l "$work/out/c.$i" 127.0.0.1 "$port" \
      > "$work/out/c.$i.log" 2>&1 &
    cpids+=($!)
  done
  for i in "${!cpids[@]}"; do wait "${cpids[$i]}" || true; done
  t1=$(date +%s.%N)
  for i in $(seq 1 "$clients"); do
    if [ -f "$work/out/c.$i" ] && [ "$(sha256sum < "$work/out/c.$i")" = "$want_small" ]; then
      ok=$((ok + 1))
    else
      bad=$((bad + 1))
    fi
  done
  awk -v n="$name" -v ok="$ok" -v c="$clients" -v a="$t0" -v b="$t1" 'BEGIN {
    s = b - a; printf "%-10s %d/%d complete in %.2f s (%.0f MiB/s aggregate)  %s\n", n, ok, c, s, ok * 4 / s, (ok == c ? "ok" : "FAIL")
  }'
  [ "$bad" = 0 ]
}
if load "$fog_port" fog; then :; else fails=$((fails + 1)); fi
load "$hpa_port" tftpd-hpa || true # for reference only

kill -TERM "${pids[0]}" 2> /dev/null || true
if [ "$fails" -gt 0 ]; then echo "== tftp bench: $fails target(s) missed"; else echo "== tftp bench: all targets met"; fi
