#!/usr/bin/env bash
# Power-on to the agent's first check-in, through the signed chain and through iPXE, on the same
# TCG VM (UEFI, 512 MiB, the firmware's own PXE), same node, same boot environment, medians of
# BENCH_REPEAT runs (default 3) taken in rotating order:
#
#   ipxe      Secure Boot off firmware, the node with --secure-boot off: ipxe.efi over TFTP, then
#             the script, kernel and initramfs over HTTP
#   shim      Secure Boot off firmware, the node's default (auto): shim, GRUB, then kernel and
#             initramfs over TFTP
#   shim-sb   OVMF's .ms firmware, Secure Boot on, the same chain (every stage verified)
#
# Each run: a fresh inventory task for the VM's host; the time is the serial console's timestamp
# of the agent's "task N (inventory) started" (the check-in that granted it), and the task must
# complete on the master.
#
#   sudo benches/secureboot_boot.sh
#
# Exit status: 0 when every boot checked in, non-zero otherwise (the logs are printed).
set -euo pipefail

root_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root_dir/scripts/lib/pxe.sh"
source "$root_dir/scripts/lib/wait.sh"
repeat=${BENCH_REPEAT:-3}
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPEAT must be a positive integer" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "benches/secureboot_boot.sh needs root (namespaces, qemu taps)" >&2; exit 2; }

work=$(mktemp -d /tmp/fog-bench-sb.XXXXXX)
ns=fogbsb
master_pid=
node_pid=
node_mode=
stop_node() {
  [ -n "$node_pid" ] && { kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null || true; }
  node_pid=
  node_mode=
}
cleanup() {
  local rc=$?
  stop_node
  [ -n "$master_pid" ] && { kill "$master_pid" 2>/dev/null; wait "$master_pid" 2>/dev/null || true; }
  pxe_bridge_down "$ns"
  if [ $rc -ne 0 ]; then
    echo "== secure boot benchmark failed (exit $rc); logs:"
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

pxe_need_packages "$work/apt.log"
(cd "$root_dir" && cargo build --release --locked -q -p fog-cli)
fog=${CARGO_TARGET_DIR:-$root_dir/target}/release/fog

boot=$work/boot
"$fog" bootfiles install --boot-dir "$boot" > "$work/bootfiles.log" 2>&1
"$fog" bootenv build --boot-dir "$boot" --fog "$fog" > "$work/bootenv.log"

pxe_bridge_up "$ns" 10.99.67.1/24
master=http://10.99.67.1:8090
ip netns exec "$ns" "$fog" master --data-dir "$work/master" --listen 10.99.67.1:8090 > "$work/master.log" 2>&1 &
master_pid=$!
wait_until 30 "the master" grep -q "listening on" "$work/master.log"
admin=$(cat "$work/master/admin-token")
m() { ip netns exec "$ns" "$fog" --master "$master" --token "$admin" "$@"; }
m --json node add bench --url http://10.99.67.1:8080 --subnet 10.99.67.0/24 > "$work/node.json"
python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["token"])' "$work/node.json" > "$work/node-token"
chmod 600 "$work/node-token"
mac=52:54:00:67:00:01
m host add bench-vm --mac "$mac" --node bench > /dev/null

# node MODE: the node runs with --secure-boot MODE (restarted when it ran another).
node() {
  [ "$node_mode" = "$1" ] && return 0
  stop_node
  rm -rf "$work/node"
  ip netns exec "$ns" "$fog" serve --interface br0 --address 10.99.67.1 --dhcp full --secure-boot "$1" \
    --range 10.99.67.100-10.99.67.150 --boot-dir "$boot" --data-dir "$work/node" \
    --node-master "$master" --node-name bench --node-token-file "$work/node-token" > "$work/node-$1.log" 2>&1 &
  node_pid=$!
  node_mode=$1
  wait_until 30 "fog serve" grep -q "fog serve: running" "$work/node-$1.log"
}

task_state() {
  ip netns exec "$ns" curl -fsS -H "Authorization: Bearer $admin" "$master/api/v1/tasks/$1" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])'
}

# check_in_time SETUP RUN: seconds from power-on to the agent's first check-in (the node must
# run in the setup's mode: `node` is called outside, where its process is remembered).
check_in_time() {
  local setup=$1 firmware=uefi log=$work/vm-$1-$2.log id at
  [ "$setup" = shim-sb ] && firmware=uefi-sb
  id=$(m --json task inventory bench-vm --poweroff | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  sleep 6 # the node pulls its hosts' tasks every 5 s
  pxe_boot_vm "$ns" tap0 "$log" 300 "$firmware" "$mac" || { echo "$setup: qemu exit $?" >&2; return 1; }
  [ "$(task_state "$id")" = complete ] || { echo "$setup: task $id is $(task_state "$id") (see $log)" >&2; return 1; }
  at=$(grep -m1 "task $id (inventory) started" "$log" | sed -E 's/^\[ *([0-9.]+)\].*/\1/')
  [ -n "$at" ] || { echo "$setup: no check-in on the console (see $log)" >&2; return 1; }
  echo "$at"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

declare -A times=()
setups=(ipxe shim shim-sb)
for run in $(seq 1 "$repeat"); do
  # Rotate the order so drift in machine load does not favour one setup.
  for i in 0 1 2; do
    setup=${setups[$(((i + run) % 3))]}
    if [ "$setup" = ipxe ]; then node off; else node auto; fi
    t=$(check_in_time "$setup" "$run")
    times[$setup]+="$t "
  done
done
# shellcheck disable=SC2086
i=$(median ${times[ipxe]}); s=$(median ${times[shim]}); b=$(median ${times[shim-sb]})
echo "| path | power-on to first check-in, median of $repeat (s) | / iPXE |"
echo "|---|---|---|"
awk -v i="$i" -v s="$s" -v b="$b" 'BEGIN {
  printf "| iPXE (Secure Boot off, --secure-boot off) | %.2f | 1.00 |\n", i
  printf "| shim, GRUB (Secure Boot off, auto) | %.2f | %.2f |\n", s, s / i
  printf "| shim, GRUB (Secure Boot on, auto) | %.2f | %.2f |\n", b, b / i
}'
echo "runs: ipxe ${times[ipxe]}/ shim ${times[shim]}/ shim-sb ${times[shim-sb]}" >&2
