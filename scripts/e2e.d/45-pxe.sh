#!/usr/bin/env bash
# Real PXE firmware against `fog serve` (DHCP full, TFTP, HTTP, IPv6 RA) on a bridge in a
# namespace, VMs under TCG:
# - BIOS: the NIC's iPXE ROM takes a lease, fog sends it (as an iPXE client) straight to
#   /boot.ipxe over HTTP, which chains to its host script, which loads a kernel and an initramfs
#   over HTTP; the initramfs takes a lease again and prints the marker from its command line;
# - UEFI with `--secure-boot off`: OVMF's own PXE gets ipxe.efi over TFTP from fog, then the same
#   HTTP chain (65-secureboot boots UEFI through the signed chain, the default);
# - a host with no script of its own gets the menu; rdisc6 sees fog's router advertisement
#   (lifetime 0: not a router), which is what lets iPXE skip its ~13 s wait for IPv6.
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
source scripts/lib/pxe.sh
work=$(mktemp -d /tmp/fog-e2e-pxe.XXXXXX)
ns=fog45
ns_cli=fog45c
serve_pid=
cleanup() {
  local rc=$?
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  ip netns del "$ns_cli" 2>/dev/null || true
  pxe_bridge_down "$ns"
  if [ $rc -ne 0 ]; then
    echo "== e2e pxe failed (exit $rc); logs:"
    for f in "$work"/*.log "$work"/*.qemu-stderr; do [ -f "$f" ] && { echo "--- $f"; tail -n 60 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

fog=${FOG:?run through scripts/e2e}
pxe_need_packages "$work/apt.log"
command -v rdisc6 > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ndisc6 >> "$work/apt.log" 2>&1

echo "== boot directory: iPXE binaries, a test kernel and initramfs, two host scripts"
boot=$work/boot
mkdir -p "$boot/hosts"
"$fog" bootfiles install --boot-dir "$boot" > "$work/bootfiles.log" 2>&1
bash scripts/lib/test-initramfs.sh "$boot/fogtest" > "$work/initramfs.log" 2>&1
base=http://10.99.45.1:8080
bios_mac=52:54:00:45:00:01
uefi_mac=52:54:00:45:00:02
bios_marker=bios-$RANDOM$RANDOM
uefi_marker=uefi-$RANDOM$RANDOM
host_script() {
  # initrd= names the initramfs for the kernel's EFI stub (iPXE EFI hands it over by that name);
  # panic=5 turns a failed boot into a VM exit instead of a wait for the timeout.
  printf '#!ipxe\nkernel %s/fogtest/vmlinuz initrd=initrd.img console=ttyS0 quiet panic=5 fog.marker=%s\ninitrd %s/fogtest/initrd.img\nboot\n' \
    "$base" "$2" "$base" > "$boot/hosts/${1//:/-}.ipxe"
}
host_script "$bios_mac" "$bios_marker"
host_script "$uefi_mac" "$uefi_marker"

echo "== fog serve on a bridge: DHCP full, TFTP, HTTP, RA"
pxe_bridge_up "$ns" 10.99.45.1/24
ip netns exec "$ns" "$fog" serve --interface br0 --address 10.99.45.1 --dhcp full --secure-boot off \
  --range 10.99.45.100-10.99.45.150 --boot-dir "$boot" --data-dir "$work" > "$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 100); do
  grep -q "fog serve: running" "$work/serve.log" && break
  kill -0 "$serve_pid" 2>/dev/null || { echo "fog serve exited early"; exit 1; }
  sleep 0.1
done
grep -q "fog serve: running" "$work/serve.log"
in_range='10\.99\.45\.(1[0-4][0-9]|150)'

echo "== rdisc6 on the bridge sees fog's advertisement: no router, no prefix"
ip netns add "$ns_cli"
ip link add f45c0 type veth peer name f45b0
ip link set f45b0 netns "$ns"; ip link set f45c0 netns "$ns_cli"
ip -n "$ns" link set f45b0 master br0; ip -n "$ns" link set f45b0 up
ip -n "$ns_cli" link set lo up; ip -n "$ns_cli" link set f45c0 up
# The link-local address needs duplicate address detection (~1 s) before rdisc6 can send.
for _ in $(seq 1 50); do
  ip -n "$ns_cli" -6 addr show dev f45c0 scope link | grep -q tentative || break
  sleep 0.2
done
ip netns exec "$ns_cli" timeout 30 rdisc6 -1 -w 2000 -r 5 f45c0 > "$work/rdisc6.log" 2>&1
grep -Eq "Router lifetime *: *0 " "$work/rdisc6.log"
if grep -q "Prefix" "$work/rdisc6.log"; then echo "fog advertised a prefix"; exit 1; fi

echo "== BIOS VM (iPXE NIC ROM)"
pxe_boot_vm "$ns" tap0 "$work/bios-vm.log" 300 bios "$bios_mac" || { echo "BIOS VM: qemu exit $?"; exit 1; }
grep -Eq "FOG-TEST-BOOTED marker=$bios_marker ip=$in_range" "$work/bios-vm.log"
grep -q "Filename: $base/boot.ipxe" "$work/bios-vm.log"
# (The marker can only come from the initramfs; iPXE's "ok" after the initrd download may be
# cut by the kernel's first console line, so it is not checked.)

echo "== UEFI VM (OVMF PXE, ipxe.efi over TFTP)"
pxe_boot_vm "$ns" tap1 "$work/uefi-vm.log" 400 uefi "$uefi_mac" || { echo "UEFI VM: qemu exit $?"; exit 1; }
grep -q "NBP filename is ipxe.efi" "$work/uefi-vm.log"
grep -q "NBP file downloaded successfully" "$work/uefi-vm.log"
grep -Eq "FOG-TEST-BOOTED marker=$uefi_marker ip=$in_range" "$work/uefi-vm.log"

echo "== a host without a script gets the menu"
menu=$(ip netns exec "$ns" curl -sf "$base/boot/52:54:00:45:00:99")
grep -q "choose --timeout 5000 --default local" <<< "$menu"

kill -TERM "$serve_pid"
for _ in $(seq 1 80); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$serve_pid" 2>/dev/null; then echo "fog serve still running 8 s after SIGTERM"; exit 1; fi
wait "$serve_pid" || { echo "fog serve exited $? after SIGTERM"; exit 1; }
serve_pid=
echo "== pxe e2e passed"
