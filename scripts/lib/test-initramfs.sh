#!/usr/bin/env bash
# test-initramfs.sh OUT_DIR — a Linux kernel and a tiny initramfs for PXE-boot tests, from Debian's
# linux-image-amd64 and busybox-static (installed or unpacked here when missing; root only).
# OUT_DIR gets `vmlinuz` and `initrd.img`. The initramfs brings up the virtio NIC, takes a DHCP
# lease with udhcpc, prints `FOG-TEST-BOOTED marker=<fog.marker=...> ip=<lease>` on the console
# and powers off (qemu runs with -no-reboot, so the VM exits).
set -euo pipefail
out=$1
mkdir -p "$out"
work=$(mktemp -d /tmp/fog-initramfs.XXXXXX)
trap 'rm -rf "$work"' EXIT

kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$kernel" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-image-amd64 \
    > "$work/apt.log" 2>&1 || { cat "$work/apt.log"; exit 1; }
  kernel=$(ls /boot/vmlinuz-* | sort -V | tail -n 1)
fi
version=${kernel#/boot/vmlinuz-}
modules=/lib/modules/$version

# busybox-static conflicts with the busybox package udhcpc comes from: unpack it instead.
(cd "$work" && apt-get download busybox-static > apt-download.log 2>&1) || { cat "$work/apt-download.log"; exit 1; }
dpkg-deb -x "$work"/busybox-static_*.deb "$work/bb"

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,etc/udhcpc,lib/modules}
cp "$work/bb/bin/busybox" "$root/bin/busybox"
for applet in sh mount insmod ip udhcpc cat echo poweroff sleep grep sed; do
  ln -s busybox "$root/bin/$applet"
done
# Load order matters: each needs the ones before it.
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover \
  net_failover virtio_net; do
  f=$(find "$modules/kernel" -name "$m.ko*" | head -n 1)
  [ -n "$f" ] || { echo "module $m not found under $modules"; exit 1; }
  case "$f" in
    *.xz) xz -dc "$f" > "$root/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" > "$root/lib/modules/$m.ko" ;;
    *) cp "$f" "$root/lib/modules/$m.ko" ;;
  esac
  echo "$m" >> "$root/lib/modules/order"
done
cat > "$root/etc/udhcpc/default.script" <<'SCRIPT'
#!/bin/sh
case "$1" in
  bound|renew) ip addr add "$ip/${mask:-24}" dev "$interface"; echo "$ip" > /lease ;;
esac
SCRIPT
chmod +x "$root/etc/udhcpc/default.script"
cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko; done
ip link set lo up; ip link set eth0 up
udhcpc -i eth0 -q -n -t 10 -T 2 > /dev/null 2>&1
marker=$(sed -n 's/.*fog\.marker=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "FOG-TEST-BOOTED marker=$marker ip=$(cat /lease 2>/dev/null)"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img"
cp "$kernel" "$out/vmlinuz"
