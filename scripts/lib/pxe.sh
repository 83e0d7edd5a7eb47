# Sourced by scripts/e2e.d/45-pxe.sh and benches/pxe_boot.sh: a namespace with a bridge and a tap
# for qemu VMs, and PXE-booting a TCG VM on it with its serial console in a log.
# Root only. The caller owns cleanup: `pxe_bridge_down NS` and killing what it started.

# pxe_need_packages LOG: installs qemu, OVMF, iPXE, the signed chain (shim, GRUB) and the kernel
# the test initramfs uses.
pxe_need_packages() {
  local need=()
  command -v qemu-system-x86_64 > /dev/null || need+=(qemu-system-x86)
  [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
  [ -f /usr/lib/ipxe/undionly.kpxe ] || need+=(ipxe)
  [ -f /usr/lib/shim/shimx64.efi.signed ] || need+=(shim-signed)
  [ -f /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed ] || need+=(grub-efi-amd64-signed)
  command -v cpio > /dev/null || need+=(cpio)
  ls /boot/vmlinuz-* > /dev/null 2>&1 || need+=(linux-image-amd64)
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" > "$1" 2>&1
  fi
}

# pxe_bridge_up NS ADDR/PREFIX: namespace NS with bridge br0 holding ADDR and tap devices
# tap0..tap1 for VMs. Broadcasts leave through br0 (no default route in the namespace).
pxe_bridge_up() {
  local ns=$1 addr=$2
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link add br0 type bridge
  ip -n "$ns" link set br0 type bridge forward_delay 0 stp_state 0 mcast_snooping 0
  ip -n "$ns" addr add "$addr" dev br0
  for tap in tap0 tap1; do
    ip -n "$ns" tuntap add dev "$tap" mode tap
    ip -n "$ns" link set "$tap" master br0
    ip -n "$ns" link set "$tap" up
  done
  ip -n "$ns" link set br0 up
  ip -n "$ns" route add 255.255.255.255/32 dev br0
}

pxe_bridge_down() { ip netns del "$1" 2>/dev/null || true; }

# pxe_boot_vm NS TAP LOG TIMEOUT bios|uefi|uefi-sb MAC [QEMU ARGS...]: PXE-boots a TCG VM (512 MiB,
# no disk) until it powers off or TIMEOUT seconds pass; its serial console goes to LOG, each line
# prefixed with the seconds since qemu started. BIOS boots the NIC's iPXE ROM; UEFI boots OVMF's
# own PXE; uefi-sb is UEFI with Secure Boot on (OVMF's .ms firmware: Microsoft's keys enrolled;
# SMM, which Secure Boot's variable store needs, under TCG only). Extra arguments go to qemu
# (-smbios, -pidfile); PXE_STDIN names what the serial console reads (default /dev/null; a FIFO
# to type into a shell). Returns qemu's status (124 on timeout).
pxe_boot_vm() {
  local ns=$1 tap=$2 log=$3 limit=$4 firmware=$5 mac=$6
  shift 6
  local dir fw nic
  dir=$(mktemp -d /tmp/fog-vm.XXXXXX)
  printf '\xf8\x03' > "$dir/sercon.bin"
  if [ "$firmware" = uefi ]; then
    cp /usr/share/OVMF/OVMF_VARS_4M.fd "$dir/vars.fd"
    fw=(-machine q35 -drive "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
      -drive "if=pflash,format=raw,file=$dir/vars.fd")
    nic=(-device "virtio-net-pci,netdev=n0,mac=$mac,romfile=,bootindex=1")
  elif [ "$firmware" = uefi-sb ]; then
    cp /usr/share/OVMF/OVMF_VARS_4M.ms.fd "$dir/vars.fd"
    fw=(-machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on
      -drive "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
      -drive "if=pflash,format=raw,unit=1,file=$dir/vars.fd")
    nic=(-device "virtio-net-pci,netdev=n0,mac=$mac,romfile=,bootindex=1")
  else
    # SeaBIOS and iPXE print to the serial port only when told to.
    fw=(-fw_cfg "name=etc/sercon-port,file=$dir/sercon.bin")
    nic=(-device "virtio-net-pci,netdev=n0,mac=$mac")
  fi
  timeout "$limit" ip netns exec "$ns" qemu-system-x86_64 -accel tcg -m 512 -display none -nodefaults \
    -no-reboot -serial stdio "${fw[@]}" -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
    "${nic[@]}" -boot n "$@" < "${PXE_STDIN:-/dev/null}" 2> "$log.qemu-stderr" | python3 "$(dirname "${BASH_SOURCE[0]}")/tsfilter.py" > "$log"
  local rc=${PIPESTATUS[0]}
  rm -rf "$dir"
  return "$rc"
}
