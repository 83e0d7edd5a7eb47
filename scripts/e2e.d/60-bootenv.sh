#!/usr/bin/env bash
# The boot environment on a real VM: `fog bootenv build` (this system's kernel and busybox, the
# fog under test), a master and `fog serve` on a bridge in a namespace, and TCG VMs that PXE-boot
# (BIOS, iPXE ROM) into it with SMBIOS identities set by qemu:
# - fog.action=register with a node token: the master then holds a host with the VM's MAC, its
#   DMI vendor, product, serial and UUID as read from the VM's /sys, named after the serial,
#   imaged by that node; the VM reboots (qemu -no-reboot: it exits);
# - the same VM booted as the menu's items boot it (an action, no task): it asks for an admin
#   token on the console, creates an inventory task, runs it, and the task is complete;
# - a master that does not answer: the console shows the error and a shell that runs what is
#   typed, and the VM stays up (no reboot loop).
# - the same VM with an inventory task (power off after): the node's own script boots it with the
#   task and a task token on the kernel line, the agent runs it, the task is complete, it powers off;
# - the same VM, now with a disk (GPT, an ext4 partition made by mkfs), and a fast wipe task: the
#   agent picks the only disk, and afterwards neither blkid nor wipefs finds the table or ext4.
# The menu and failure VMs run at the same time (the second mostly waits in its shell).
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
source scripts/lib/pxe.sh
work=$(mktemp -d /tmp/fog-e2e-bootenv.XXXXXX)
ns=fog60
serve_pid=
master_pid=
vm_pid_file=$work/vm-bad.pid
menu_pid_file=$work/vm-menu.pid
cleanup() {
  local rc=$?
  for f in "$vm_pid_file" "$menu_pid_file"; do
    if [ -s "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  [ -n "$master_pid" ] && kill "$master_pid" 2>/dev/null && wait "$master_pid" 2>/dev/null
  pxe_bridge_down "$ns"
  if [ $rc -ne 0 ]; then
    echo "== e2e bootenv failed (exit $rc); logs:"
    for f in "$work"/*.log "$work"/*.qemu-stderr "$work"/*.json; do
      [ -f "$f" ] && { echo "--- $f"; tail -n 80 "$f"; }
    done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

# wait_for FILE PATTERN SECONDS [PID]: until FILE holds PATTERN (false when PID exits first).
wait_for() {
  local file=$1 pattern=$2 limit=$3 pid=${4:-}
  for _ in $(seq 1 $((limit * 5))); do
    grep -q -- "$pattern" "$file" 2>/dev/null && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.2
  done
  return 1
}

fog=${FOG:?run through scripts/e2e}
pxe_need_packages "$work/apt.log"
command -v jq > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >> "$work/apt.log" 2>&1
command -v sgdisk > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdisk >> "$work/apt.log" 2>&1

echo "== fog bootenv build"
boot=$work/boot
mkdir -p "$boot/hosts"
"$fog" bootfiles install --boot-dir "$boot" > "$work/bootfiles.log" 2>&1
start=$(date +%s%N)
"$fog" --json bootenv build --boot-dir "$boot" --fog "$fog" > "$work/bootenv.json"
echo "   built in $((($(date +%s%N) - start) / 1000000)) ms: initramfs $(jq .initrd_bytes "$work/bootenv.json") bytes," \
  "$(jq '.modules | length' "$work/bootenv.json") modules, missing: $(jq -c .missing "$work/bootenv.json")"
[ -s "$boot/bootenv/vmlinuz" ] && [ -s "$boot/bootenv/initrd.img" ]
jq -e '.modules | index("virtio_net") and index("virtio_pci")' "$work/bootenv.json" > /dev/null
# The same inputs give the same archive.
"$fog" --json bootenv build --out "$work/again" --fog "$fog" > /dev/null
cmp "$boot/bootenv/initrd.img" "$work/again/initrd.img"

echo "== a master and fog serve on a bridge"
pxe_bridge_up "$ns" 10.99.60.1/24
master=http://10.99.60.1:8090
ip netns exec "$ns" "$fog" master --data-dir "$work/master" --listen 10.99.60.1:8090 > "$work/master.log" 2>&1 &
master_pid=$!
wait_for "$work/master.log" "listening on" 30 "$master_pid"
admin=$(cat "$work/master/admin-token")
ip netns exec "$ns" "$fog" --master "$master" --token "$admin" --json node add site60 \
  --url http://10.99.60.1:8080 --subnet 10.99.60.0/24 > "$work/node.json"
node_token=$(jq -r .token "$work/node.json")
printf '%s\n' "$node_token" > "$work/node-token"
chmod 600 "$work/node-token"
ip netns exec "$ns" "$fog" serve --interface br0 --address 10.99.60.1 --dhcp full \
  --range 10.99.60.100-10.99.60.150 --boot-dir "$boot" --data-dir "$work" \
  --node-master "$master" --node-name site60 --node-token-file "$work/node-token" > "$work/serve.log" 2>&1 &
serve_pid=$!
wait_for "$work/serve.log" "fog serve: running" 30 "$serve_pid"

# Each VM's script boots the environment with its action (what the node's menu and task
# scripts generate; written by hand here so the token can be a node token).
base=http://10.99.60.1:8080
host_script() {
  printf '#!ipxe\nkernel %s/bootenv/vmlinuz initrd=initrd.img console=tty0 console=ttyS0,115200n8 panic=5 %s\ninitrd %s/bootenv/initrd.img\nboot\n' \
    "$base" "$2" "$base" > "$boot/hosts/${1//:/-}.ipxe"
}
good_mac=52:54:00:60:00:01
bad_mac=52:54:00:60:00:02
uuid=6f0a0b1c-2d3e-4f50-8a6b-7c8d9e0f6001
host_script "$good_mac" "fog.action=register fog.master=$master fog.token=$node_token"
host_script "$bad_mac" "fog.action=register fog.master=http://10.99.60.1:9 fog.token=$node_token"

echo "== VM registers itself (BIOS PXE, SMBIOS FogTest / Lab-VM / SN-1234)"
pxe_boot_vm "$ns" tap0 "$work/vm-register.log" 240 bios "$good_mac" \
  -smbios "type=1,manufacturer=FogTest,product=Lab-VM,serial=SN-1234,uuid=$uuid" \
  || { echo "register VM: qemu exit $?"; exit 1; }
grep -q "fog-init: network up on eth0 10.99.60.1[0-5][0-9]" "$work/vm-register.log"
grep -q "registered host sn-1234" "$work/vm-register.log"
grep -q "fog-init: registered; rebooting" "$work/vm-register.log"
echo "   boot to registration: $(sed -n 's/^\[ *\([0-9.]*\)\] registered host.*/\1/p' "$work/vm-register.log") s after qemu started"
ip netns exec "$ns" "$fog" --master "$master" --token "$admin" --json host ls > "$work/hosts.json"
jq -e --arg mac "$good_mac" --arg uuid "$uuid" '.[] | select(.macs | index($mac))
  | select(.name == "sn-1234" and .node == "site60" and .uuid == $uuid
    and .inventory.dmi.vendor == "FogTest" and .inventory.dmi.product == "Lab-VM"
    and .inventory.dmi.serial == "SN-1234")' "$work/hosts.json" > /dev/null \
  || { echo "no host with the VM's MAC and DMI values"; exit 1; }

echo "== the menu's way (no task: an admin token typed at the console) and a master that does not answer"
host_script "$good_mac" "fog.action=inventory fog.master=$master fog.mac=$good_mac"
# Each console reads a FIFO: what is written there is typed on the VM's serial console.
mkfifo "$work/menu.in" "$work/bad.in"
exec 7<> "$work/bad.in" 8<> "$work/menu.in"
PXE_STDIN=$work/menu.in pxe_boot_vm "$ns" tap0 "$work/vm-menu.log" 240 bios "$good_mac" \
  -smbios "type=1,manufacturer=FogTest,product=Lab-VM,serial=SN-1234,uuid=$uuid" -pidfile "$menu_pid_file" &
menu_job=$!
PXE_STDIN=$work/bad.in pxe_boot_vm "$ns" tap1 "$work/vm-bad.log" 240 bios "$bad_mac" -pidfile "$vm_pid_file" &
vm_job=$!

wait_for "$work/vm-menu.log" "fog-init: inventory from the boot menu: an admin token creates the task" 200 "$menu_job" \
  || { echo "the menu VM does not ask for a token"; exit 1; }
sleep 1
echo "$admin" >&8
wait "$menu_job" || { echo "menu VM: qemu exit $?"; exit 1; }
: > "$menu_pid_file"
grep -q "fog-init: task complete; then: reboot" "$work/vm-menu.log"
if grep -q "$admin" "$work/vm-menu.log"; then echo "the admin token was echoed on the console"; exit 1; fi
ip netns exec "$ns" "$fog" --master "$master" --token "$admin" --json task ls > "$work/tasks.json"
jq -e '.[] | select(.host == "sn-1234" and .kind == "inventory" and .state == "complete")' "$work/tasks.json" > /dev/null \
  || { echo "no complete inventory task for sn-1234"; exit 1; }

wait_for "$work/vm-bad.log" "fog-init: not rebooting: starting a shell" 200 "$vm_job" \
  || { echo "no shell announced on the console"; exit 1; }
grep -q "fog-init: ERROR: registration with http://10.99.60.1:9 failed" "$work/vm-bad.log"
grep -q "fog: .*10.99.60.1:9" "$work/vm-bad.log"
sleep 2
echo 'echo "shell-says-$((6 * 7))"' >&7
wait_for "$work/vm-bad.log" "shell-says-42" 30 "$vm_job" || { echo "the console shell does not answer"; exit 1; }
sleep 3
kill -0 "$vm_job" 2>/dev/null || { echo "the VM exited (rebooted) instead of waiting in a shell"; exit 1; }
if grep -q "reboot: Restarting system" "$work/vm-bad.log"; then echo "the VM rebooted"; exit 1; fi
kill "$(cat "$vm_pid_file")"
wait "$vm_job" 2>/dev/null || true
: > "$vm_pid_file"
exec 7>&- 8>&-

echo "== a task from the master: the node's script boots the environment with a task token"
ip netns exec "$ns" "$fog" --master "$master" --token "$admin" --json task inventory sn-1234 --poweroff > "$work/task.json"
task_id=$(jq -r .id "$work/task.json")
sleep 6 # the node pulls its hosts' tasks every 5 s
ip netns exec "$ns" curl -sf "$base/boot/$good_mac" > "$work/node-script.log"
grep -q "fog.task=$task_id fog.action=inventory fog.mac=$good_mac fog.token=fogt_${task_id}_" "$work/node-script.log"
pxe_boot_vm "$ns" tap0 "$work/vm-task.log" 240 bios "$good_mac" \
  -smbios "type=1,manufacturer=FogTest,product=Lab-VM,serial=SN-1234,uuid=$uuid" \
  || { echo "task VM: qemu exit $?"; exit 1; }
grep -q "fog-init: running the agent: inventory (task $task_id)" "$work/vm-task.log"
grep -q "fog-init: powering off" "$work/vm-task.log"
ip netns exec "$ns" "$fog" --master "$master" --token "$admin" --json task show "$task_id" > "$work/task-done.json"
jq -e '.state == "complete" or .task.state == "complete"' "$work/task-done.json" > /dev/null \
  || { echo "task $task_id is not complete"; exit 1; }

echo "== a wipe task: the agent erases the table and signatures of the VM's disk"
disk=$work/vm-disk.img
truncate -s 64M "$disk"
sgdisk -n 1:2048:+32M "$disk" > /dev/null
mkfs.ext4 -q -F -E offset=1048576 "$disk" 32M
[ "$(blkid -p -O 1048576 -o value -s TYPE "$disk")" = ext4 ] || { echo "the test disk has no ext4"; exit 1; }
ip netns exec "$ns" "$fog" --master "$master" --token "$admin" --json task wipe sn-1234 --poweroff > "$work/wipe.json"
wipe_id=$(jq -r .id "$work/wipe.json")
sleep 6 # the node pulls its hosts' tasks every 5 s
pxe_boot_vm "$ns" tap0 "$work/vm-wipe.log" 240 bios "$good_mac" \
  -smbios "type=1,manufacturer=FogTest,product=Lab-VM,serial=SN-1234,uuid=$uuid" \
  -drive "file=$disk,if=virtio,format=raw" \
  || { echo "wipe VM: qemu exit $?"; exit 1; }
grep -q "fog-init: running the agent: wipe_fast (task $wipe_id)" "$work/vm-wipe.log"
ip netns exec "$ns" "$fog" --master "$master" --token "$admin" --json task show "$wipe_id" > "$work/wipe-done.json"
jq -e '.state == "complete" or .task.state == "complete"' "$work/wipe-done.json" > /dev/null \
  || { echo "wipe task $wipe_id is not complete"; exit 1; }
[ -z "$(blkid -p -O 1048576 -o value -s TYPE "$disk" || true)" ] || { echo "ext4 survived the wipe"; exit 1; }
[ -z "$(wipefs -n "$disk")" ] || { echo "the partition table survived the wipe"; wipefs -n "$disk"; exit 1; }

kill -TERM "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=
kill -TERM "$master_pid"; wait "$master_pid" 2>/dev/null || true; master_pid=
echo "== bootenv e2e passed"
