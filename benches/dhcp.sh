#!/usr/bin/env bash
# DHCP throughput: perfdhcp (kea-admin; it acts as a relay from port 67) against fog and against
# dnsmasq, same namespaces, same rate ladder. Reports 4-way exchanges (DORA) per second and drops
# for each and the ratio at the best drop-free rate. fog fsyncs every lease before its ACK
# (group commit); dnsmasq writes its lease file without fsync.
# Usage (root): benches/dhcp.sh [SECONDS_PER_STEP] [RATES...]   default: 10 s, 200 500 1000 2000 4000 8000
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (namespaces)" >&2; exit 2; }
secs=${1:-10}; shift || true
rates=("${@:-}")
[ -n "${rates[0]}" ] || rates=(200 500 1000 2000 4000 8000)
work=$(mktemp -d /tmp/fog-bench-dhcp.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  ip netns del dbsrv 2>/dev/null || true; ip netns del dbcli 2>/dev/null || true
  [ $rc -ne 0 ] && for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

command -v perfdhcp >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q kea-admin >/dev/null
command -v dnsmasq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q dnsmasq-base >/dev/null
cargo build --release --locked -q -p fog-cli
fog=$PWD/target/release/fog

ip netns del dbsrv 2>/dev/null || true; ip netns del dbcli 2>/dev/null || true
ip netns add dbsrv; ip netns add dbcli
ip link add dbs0 type veth peer name dbc0
ip link set dbs0 netns dbsrv; ip link set dbc0 netns dbcli
ip -n dbsrv addr add 10.98.0.1/16 dev dbs0; ip -n dbcli addr add 10.98.0.2/16 dev dbc0
for n in dbsrv dbcli; do ip -n $n link set lo up; done
ip -n dbsrv link set dbs0 up; ip -n dbcli link set dbc0 up

# Lease files on the same disk for both (not tmpfs).
mkdir -p "$PWD/target/bench-dhcp"
leasedir=$(mktemp -d "$PWD/target/bench-dhcp/run.XXXXXX")
cat > "$work/fog.toml" <<EOF2
[node]
address = "10.98.0.1"
data_dir = "$leasedir"
[http]
enabled = false
[dhcp]
mode = "full"
interface = "dbs0"
lease_file = "$leasedir/fog.leases"
[[dhcp.pools]]
subnet = "10.98.0.0/16"
range = ["10.98.1.0", "10.98.250.255"]
lease_secs = 3600
EOF2

start_server() { # NAME
  rm -f "$leasedir"/*
  case "$1" in
    fog) ip netns exec dbsrv "$fog" serve --config "$work/fog.toml" >"$work/fog.log" 2>&1 & ;;
    dnsmasq) ip netns exec dbsrv dnsmasq --no-daemon --port=0 --interface=dbs0 --bind-interfaces \
        --dhcp-range=10.98.1.0,10.98.250.255,255.255.0.0,1h --dhcp-leasefile="$leasedir/dnsmasq.leases" \
        --dhcp-lease-max=100000 --no-ping --no-resolv --dhcp-authoritative >"$work/dnsmasq.log" 2>&1 & ;;
  esac
  server_pid=$!; pids+=("$server_pid"); sleep 1
  kill -0 "$server_pid"
}
stop_server() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }

declare -A result
run_step() { # NAME RATE -> "dora_per_s drops_pct"
  local out="$work/perf-$1-$2.log"
  ip netns exec dbcli timeout $((secs + 30)) perfdhcp -4 -r "$2" -R 50000 -p "$secs" -W 1000000 -s 7 10.98.0.1 >"$out" 2>&1 || true
  local rate sent recv
  rate=$(sed -n 's/.*Rate: \([0-9.]*\) 4-way exchanges\/second.*/\1/p' "$out" | tail -n1)
  sent=$(awk '/DISCOVER-OFFER/{f=1} f&&/^sent packets:/{print $3; exit}' "$out")
  recv=$(awk '/REQUEST-ACK/{f=1} f&&/^received packets:/{print $3; exit}' "$out")
  local drops
  drops=$(awk '/drops:/{s+=$2} END{print s+0}' "$out")
  # DORA/s = ACKs over the sending period (perfdhcp's own "Rate" also counts its exit wait).
  local per_s
  per_s=$(awk -v a="${recv:-0}" -v s="$secs" 'BEGIN{printf "%.0f", a/s}')
  echo "${per_s} ${drops:-?} ${sent:-?} ${recv:-?} ${rate:-0}"
}

printf "%-8s %8s %8s %8s %10s %10s %14s\n" server rate DORA/s drops DISCOVERs ACKs perfdhcp-rate
for name in dnsmasq fog; do
  for r in "${rates[@]}"; do
    start_server "$name"
    read -r got drops sent recv prate < <(run_step "$name" "$r")
    stop_server
    result[$name,$r]="$got $drops"
    printf "%-8s %8s %8s %8s %10s %10s %14s\n" "$name" "$r" "$got" "$drops" "$sent" "$recv" "$prate"
  done
done
best() { # NAME -> best DORA/s with no drops
  local b=0
  for r in "${rates[@]}"; do
    read -r got drops <<<"${result[$1,$r]}"
    if [ "$drops" = 0 ] && awk -v g="$got" -v b="$b" 'BEGIN{exit !(g>b)}'; then b=$got; fi
  done
  echo "$b"
}
peak() { local b=0; for r in "${rates[@]}"; do read -r got _ <<<"${result[$1,$r]}"; [ "$got" -gt "$b" ] && b=$got; done; echo "$b"; }
pf=$(peak fog); pd=$(peak dnsmasq)
echo "peak DORA/s (drops allowed): fog $pf, dnsmasq $pd, ratio $(awk -v f="$pf" -v d="$pd" 'BEGIN{ if (d>0) printf "%.1fx", f/d; else print "n/a" }')"
bf=$(best fog); bd=$(best dnsmasq)
echo "best drop-free DORA/s: fog $bf, dnsmasq $bd, ratio $(awk -v f="$bf" -v d="$bd" 'BEGIN{ if (d>0) printf "%.1fx", f/d; else print "n/a" }')"
rm -rf "$leasedir"
