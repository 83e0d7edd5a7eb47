#!/usr/bin/env bash
# Secure Boot on real firmware: TCG VMs with OVMF's .ms firmware (Microsoft's keys enrolled,
# Secure Boot on) PXE-boot from `fog serve` with its default `secure_boot = "auto"`: the
# firmware's own PXE loads Debian's shim (signed by Microsoft), shim loads Debian's signed GRUB,
# GRUB asks the node over TFTP for its per-MAC config and boots the signed Debian kernel with
# fog's initramfs, unchanged:
# - with an inventory task, then a deploy task of a small image (GPT, ext4 with files): both
#   complete on the master, the console shows Secure Boot enabled and the kernel locked down
#   (every module, all signed, loaded), the host's inventory says Secure Boot is on, and the
#   VM's disk equals a `fog image deploy` of the image;
# - the same with a kernel whose signature is broken (one byte changed): the chain refuses it,
#   and no kernel runs;
# - a host without a task gets the menu, whose default after its timeout boots the local disk's
#   own signed loader (chainloaded, so Secure Boot checks it);
# - a UEFI VM with Secure Boot off boots through the same chain and completes its task.
# (BIOS with "auto" still boots iPXE: 60-bootenv; UEFI with "off" boots iPXE: 45-pxe, 70-sites.)
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
source scripts/lib/pxe.sh
source scripts/lib/wait.sh
work=$(mktemp -d /tmp/fog-e2e-secureboot.XXXXXX)
ns=fog65
pids=()
vm_pid_file=$work/vm.pid
cleanup() {
  local rc=$?
  [ -s "$vm_pid_file" ] && kill "$(cat "$vm_pid_file")" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pxe_bridge_down "$ns"
  if [ $rc -ne 0 ]; then
    echo "== e2e secureboot failed (exit $rc); logs:"
    for f in "$work"/*.log "$work"/*.qemu-stderr; do [ -f "$f" ] && { echo "--- $f"; tail -n 80 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

fog=${FOG:?run through scripts/e2e}
pxe_need_packages "$work/apt.log"
command -v sgdisk > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdisk >> "$work/apt.log" 2>&1

echo "== boot files (iPXE, shim, GRUB) and the boot environment"
boot=$work/boot
"$fog" bootfiles install --boot-dir "$boot" > "$work/bootfiles.log" 2>&1
cmp /usr/lib/shim/shimx64.efi.signed "$boot/shimx64.efi"
cmp /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed "$boot/grubx64.efi"
"$fog" bootenv build --boot-dir "$boot" --fog "$fog" > "$work/bootenv.log"
grep -q "the kernel and every module are signed" "$work/bootenv.log" \
  || { echo "the boot environment is not all signed"; cat "$work/bootenv.log"; exit 1; }

echo "== a small image: GPT, ext4 with files"
src=$work/disk.img
tree=$work/tree
mkdir -p "$tree/etc" "$tree/data"
echo "secure-$RANDOM" > "$tree/etc/hostname"
for i in $(seq 1 40); do head -c $((i * 1999)) /dev/urandom > "$tree/data/file$i.bin"; done
truncate -s 64M "$src"
sgdisk -n 1:2048:0 -t 1:8300 "$src" > /dev/null
read -r start sectors < <(partx -g -o START,SECTORS -n 1 "$src")
truncate -s $((sectors * 512)) "$work/part.img"
mkfs.ext4 -q -F -d "$tree" "$work/part.img"
dd if="$work/part.img" of="$src" bs=512 seek="$start" conv=notrunc,sparse status=none
rm -f "$work/part.img"
mkdir -p "$work/master"
"$fog" --store "$work/master/store" image capture "$src" --name sb-image > "$work/capture.log" 2>&1
truncate -s 64M "$work/expected.img"
"$fog" --store "$work/master/store" image deploy sb-image "$work/expected.img" > "$work/expected.log" 2>&1

echo "== a master and a node (fog serve, secure_boot auto) on a bridge"
pxe_bridge_up "$ns" 10.99.65.1/24
master=http://10.99.65.1:8090
ip netns exec "$ns" "$fog" master --data-dir "$work/master" --listen 10.99.65.1:8090 > "$work/master.log" 2>&1 &
pids+=($!)
wait_until 30 "the master" grep -q "listening on" "$work/master.log"
admin=$(cat "$work/master/admin-token")
m() { ip netns exec "$ns" "$fog" --master "$master" --token "$admin" "$@"; }
m --json node add site65 --url http://10.99.65.1:8080 --subnet 10.99.65.0/24 > "$work/node.json"
python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["token"])' "$work/node.json" > "$work/node-token"
chmod 600 "$work/node-token"
ip netns exec "$ns" curl -fsS -X POST -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
  -d '{"name": "sb-image"}' "$master/api/v1/images" > /dev/null
ip netns exec "$ns" "$fog" serve --interface br0 --address 10.99.65.1 --dhcp full \
  --range 10.99.65.100-10.99.65.150 --boot-dir "$boot" --data-dir "$work/node" \
  --node-master "$master" --node-name site65 --node-token-file "$work/node-token" > "$work/serve.log" 2>&1 &
pids+=($!)
wait_until 30 "fog serve" grep -q "fog serve: running" "$work/serve.log"
api() { ip netns exec "$ns" curl -fsS -H "Authorization: Bearer $admin" "$master/api/v1$1"; }
copied() {
  api /images/sb-image/copies | python3 -c 'import json, sys
sys.exit(0 if any(c["node"] == "site65" and c["state"] == "complete" for c in json.load(sys.stdin)) else 1)'
}
wait_until 120 "the image on the node" copied

sb_mac=52:54:00:65:00:01
plain_mac=52:54:00:65:00:02
m host add sb-vm --mac "$sb_mac" --node site65 > /dev/null
m host add plain-vm --mac "$plain_mac" --node site65 > /dev/null
task_state() { api "/tasks/$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])'; }
# new_task KIND HOST [ARGS...]: the task's id, once the node knows it (it pulls every 5 s).
new_task() {
  local id
  id=$(m --json task "$1" "$2" "${@:3}" --poweroff | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  sleep 6
  echo "$id"
}
# boot_task FIRMWARE MAC LOG [QEMU ARGS...]: the VM runs its task and powers off.
boot_task() {
  local fw=$1 mac=$2 log=$3 t0=$SECONDS
  shift 3
  pxe_boot_vm "$ns" tap0 "$log" 600 "$fw" "$mac" "$@" || { echo "$log: qemu exit $?"; return 1; }
  echo "   $(basename "$log" .log): $((SECONDS - t0)) s from power-on to power-off"
}

echo "== Secure Boot on: an inventory task through shim, GRUB and the signed kernel"
id=$(new_task inventory sb-vm)
boot_task uefi-sb "$sb_mac" "$work/sb-inventory.log"
log=$work/sb-inventory.log
grep -q "NBP filename is shimx64.efi" "$log"
grep -q "fog: Secure Boot is on" "$log"
grep -q "secureboot: Secure boot enabled" "$log"
grep -q "fog-init: fog boot environment, kernel .*; Secure Boot on, lockdown integrity" "$log"
# Every module is signed, so the locked-down kernel loads them all.
grep -Eq "fog-init: loaded ([0-9]+) of \1 kernel modules" "$log" \
  || { echo "not every module loaded: $(grep -o "fog-init: loaded.*" "$log")"; exit 1; }
grep -q "fog-init: running the agent: inventory (task $id)" "$log"
[ "$(task_state "$id")" = complete ] || { echo "inventory task $id: $(task_state "$id")"; exit 1; }
grep -q "boot: signed chain" "$work/serve.log"
# boot_of HOST: the host's inventory says how it booted.
boot_of() { api "/hosts/$1" | python3 -c 'import json, sys; b = json.load(sys.stdin)["inventory"]["boot"]; print(b["uefi"], b["secure_boot"])'; }
[ "$(boot_of sb-vm)" = "True True" ] || { echo "sb-vm's inventory says: $(boot_of sb-vm)"; exit 1; }

echo "== Secure Boot on: a deploy task of the small image"
truncate -s 64M "$work/sb-disk.img"
id=$(new_task deploy sb-vm --image sb-image)
boot_task uefi-sb "$sb_mac" "$work/sb-deploy.log" -drive "file=$work/sb-disk.img,format=raw,if=virtio"
grep -q "secureboot: Secure boot enabled" "$work/sb-deploy.log"
[ "$(task_state "$id")" = complete ] || { echo "deploy task $id: $(task_state "$id")"; exit 1; }
cmp "$work/expected.img" "$work/sb-disk.img"
echo "   the VM's disk equals fog image deploy's"

echo "== a kernel whose signature is broken is refused"
cp "$boot/bootenv/vmlinuz" "$work/vmlinuz.good"
size=$(stat -c %s "$boot/bootenv/vmlinuz")
python3 - "$boot/bootenv/vmlinuz" "$((size / 2))" <<'PY'
import sys
path, at = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(at)
    byte = f.read(1)
    f.seek(at)
    f.write(bytes([byte[0] ^ 0xFF]))
PY
id=$(new_task inventory sb-vm)
PXE_STDIN=/dev/null pxe_boot_vm "$ns" tap0 "$work/sb-broken.log" 400 uefi-sb "$sb_mac" -pidfile "$vm_pid_file" &
vm_job=$!
wait_until 360 "the refusal on the console" grep -q "fog: cannot boot the agent" "$work/sb-broken.log"
kill "$(cat "$vm_pid_file")" 2>/dev/null || true
wait "$vm_job" 2>/dev/null || true
: > "$vm_pid_file"
grep -Eq "bad shim signature|invalid signature|Verification failed" "$work/sb-broken.log" \
  || { echo "no signature refusal on the console"; exit 1; }
if grep -Eq "Linux version|fog-init" "$work/sb-broken.log"; then echo "a kernel with a broken signature ran"; exit 1; fi
echo "   refused: $(grep -Eo "bad shim signature|invalid signature|Verification failed" "$work/sb-broken.log" | head -n 1)"
cp "$work/vmlinuz.good" "$boot/bootenv/vmlinuz"
m task cancel "$id" > /dev/null

echo "== no task: the menu's default boots the local disk's own signed loader"
# The disk: an EFI system partition (qemu's vvfat over a directory) with Debian's shim as the
# removable-media loader, its signed GRUB beside it and a grub.cfg that says where it runs.
esp=$work/esp/EFI/BOOT
mkdir -p "$esp"
cp /usr/lib/shim/shimx64.efi.signed "$esp/BOOTX64.EFI"
cp /usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed "$esp/grubx64.efi"
printf 'echo "LOCAL-DISK-LOADER reached"\nsleep 2\nhalt\n' > "$esp/grub.cfg"
boot_task uefi-sb "$sb_mac" "$work/sb-menu.log" \
  -drive "file=fat:$work/esp,if=none,id=d0,format=raw,readonly=on" -device virtio-blk-pci,drive=d0,bootindex=2
grep -q "Booting from the local disk" "$work/sb-menu.log"
grep -q "LOCAL-DISK-LOADER reached" "$work/sb-menu.log"
grep -q "Secure Boot: on (fog boot menu)" "$work/sb-menu.log"

echo "== Secure Boot off: the same chain boots a plain UEFI VM"
id=$(new_task inventory plain-vm)
boot_task uefi "$plain_mac" "$work/plain-inventory.log"
log=$work/plain-inventory.log
grep -q "NBP filename is shimx64.efi" "$log"
grep -q "fog: Secure Boot is off" "$log"
grep -q "fog-init: fog boot environment, kernel .*; Secure Boot off" "$log"
[ "$(task_state "$id")" = complete ] || { echo "inventory task $id: $(task_state "$id")"; exit 1; }
[ "$(boot_of plain-vm)" = "True False" ] || { echo "plain-vm's inventory says: $(boot_of plain-vm)"; exit 1; }

echo "== secureboot e2e passed"
