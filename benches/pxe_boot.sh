#!/usr/bin/env bash
# The boot-time benchmark: from a VM's power-on to its iPXE script fetched over HTTP, in one run,
# same VM, same boot files, as ratios (peer time / fog time, higher is better):
#
#   fog serve (DHCP full, TFTP, HTTP, IPv6 RA)                      the node as it ships
#   fog serve --no-ra                                               what the RA saves
#   dnsmasq (DHCP + TFTP, no RA) + fog's HTTP for the same script   the peer setup
#
# Each VM is a TCG qemu (KVM does not work here) on a bridge in a namespace; BIOS boots the NIC's
# iPXE ROM, UEFI (BENCH_UEFI=1, also) boots OVMF's PXE and ipxe.efi over TFTP. The host script
# prints a marker and reboots, and qemu runs with -no-reboot, so the VM ends as soon as the script is fetched.
# The time is the serial console's timestamp of that marker.
#
#   sudo benches/pxe_boot.sh
#   sudo BENCH_REPEAT=5 BENCH_UEFI=1 benches/pxe_boot.sh
#
# Exit status: 0 when every boot reached its script, non-zero otherwise (the logs are printed).
set -euo pipefail

root_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root_dir/scripts/lib/pxe.sh"
repeat=${BENCH_REPEAT:-3}
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPEAT must be a positive integer" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "benches/pxe_boot.sh needs root (namespaces, qemu taps)" >&2; exit 2; }
firmwares=(bios)
[ "${BENCH_UEFI:-0}" = 1 ] && firmwares+=(uefi)

work=$(mktemp -d /tmp/fog-bench-pxe.XXXXXX)
ns=fogbpxe
server_pids=()
stop_servers() {
  for pid in "${server_pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for pid in "${server_pids[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
  server_pids=()
}
cleanup() {
  local rc=$?
  stop_servers
  pxe_bridge_down "$ns"
  if [ $rc -ne 0 ]; then
    echo "== pxe boot benchmark failed (exit $rc); logs:"
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

pxe_need_packages "$work/apt.log"
command -v dnsmasq > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsmasq-base >> "$work/apt.log" 2>&1
(cd "$root_dir" && cargo build --release --locked -q -p fog-cli)
fog=${CARGO_TARGET_DIR:-$root_dir/target}/release/fog

boot=$work/boot
mkdir -p "$boot/hosts"
"$fog" bootfiles install --boot-dir "$boot" > "$work/bootfiles.log" 2>&1
mac=52:54:00:b0:07:01
printf '#!ipxe\necho FOG-SCRIPT-FETCHED\nsleep 1\nreboot\n' > "$boot/hosts/${mac//:/-}.ipxe"
pxe_bridge_up "$ns" 10.99.46.1/24
base=http://10.99.46.1:8080

wait_for() { # wait_for FILE PATTERN PID
  for _ in $(seq 1 100); do
    grep -q "$2" "$1" && return 0
    kill -0 "$3" 2>/dev/null || { echo "server exited early: $1"; return 1; }
    sleep 0.1
  done
  echo "no '$2' in $1 within 10 s"; return 1
}

start_fog() { # start_fog EXTRA_FLAGS...
  # iPXE on UEFI too, as dnsmasq serves it (benches/secureboot_boot.sh times the signed chain).
  ip netns exec "$ns" "$fog" serve --interface br0 --address 10.99.46.1 --dhcp full --secure-boot off \
    --range 10.99.46.100-10.99.46.200 --boot-dir "$boot" --data-dir "$work/fog-data" "$@" \
    > "$work/fog.log" 2>&1 &
  server_pids+=($!)
  wait_for "$work/fog.log" "fog serve: running" "$!"
}

start_dnsmasq() {
  ip netns exec "$ns" "$fog" serve --address 10.99.46.1 --dhcp off --no-tftp --boot-dir "$boot" \
    > "$work/fog-http.log" 2>&1 &
  server_pids+=($!)
  wait_for "$work/fog-http.log" "fog serve: running" "$!"
  ip netns exec "$ns" dnsmasq --no-daemon --port=0 --interface=br0 --bind-interfaces --no-ping \
    --dhcp-range=10.99.46.100,10.99.46.200,1h --dhcp-leasefile="$work/dnsmasq.leases" \
    --dhcp-userclass=set:ipxe,iPXE --dhcp-match=set:efi64,option:client-arch,7 \
    --dhcp-boot=tag:ipxe,$base/boot.ipxe --dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi \
    --dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe --enable-tftp --tftp-root="$boot" \
    --log-facility="$work/dnsmasq.log" > "$work/dnsmasq-stdout.log" 2>&1 &
  server_pids+=($!)
  sleep 1
  kill -0 "$!" 2>/dev/null || { echo "dnsmasq exited early"; return 1; }
}

# boot_time SETUP FIRMWARE RUN: seconds from power-on to the script fetched.
boot_time() {
  local log=$work/vm-$1-$2-$3.log
  rm -rf "$work/fog-data" "$work/dnsmasq.leases"
  mkdir -p "$work/fog-data"
  case $1 in
    fog) start_fog ;;
    fog-no-ra) start_fog --no-ra ;;
    dnsmasq) start_dnsmasq ;;
  esac
  pxe_boot_vm "$ns" tap0 "$log" 300 "$2" "$mac" || { echo "$1 $2: qemu exit $?" >&2; stop_servers; return 1; }
  stop_servers
  local at
  at=$(grep -m1 "FOG-SCRIPT-FETCHED" "$log" | sed -E 's/^\[ *([0-9.]+)\].*/\1/')
  [ -n "$at" ] || { echo "$1 $2: the script was never fetched (see $log)" >&2; return 1; }
  echo "$at"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "| firmware | fog (s) | fog --no-ra (s) | dnsmasq (s) | dnsmasq / fog | no-ra / fog |"
echo "|---|---|---|---|---|---|"
for firmware in "${firmwares[@]}"; do
  declare -A times=()
  setups=(fog fog-no-ra dnsmasq)
  for run in $(seq 1 "$repeat"); do
    # Rotate the order so drift in machine load does not favour one setup.
    for i in 0 1 2; do
      setup=${setups[$(((i + run) % 3))]}
      t=$(boot_time "$setup" "$firmware" "$run")
      times[$setup]+="$t "
    done
  done
  # shellcheck disable=SC2086
  f=$(median ${times[fog]}); n=$(median ${times[fog-no-ra]}); d=$(median ${times[dnsmasq]})
  awk -v fw="$firmware" -v f="$f" -v n="$n" -v d="$d" \
    'BEGIN { printf "| %s | %.2f | %.2f | %.2f | %.2fx | %.2fx |\n", fw, f, n, d, d / f, n / f }'
  echo "runs: fog ${times[fog]}/ no-ra ${times[fog-no-ra]}/ dnsmasq ${times[dnsmasq]}" >&2
  unset times
done
