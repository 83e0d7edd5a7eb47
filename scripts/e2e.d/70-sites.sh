#!/usr/bin/env bash
# The whole loop with real firmware, two sites and a master, VMs under TCG:
# - namespace fog70m runs `fog master`; sites A (fog70a, 10.71.0.0/24) and B (fog70b, 10.72.0.0/24)
#   reach it over veths (10.70.1.0/30, 10.70.2.0/30). Site A's node serves DHCP in full mode; site
#   B's node runs proxy DHCP beside dnsmasq (namespace fog70d on B's bridge hands out addresses).
# - VM 1 at site A (GPT disk: FAT32 EFI partition + ext4 with files) has a capture task: it
#   PXE-boots into fog's boot environment, the agent captures its disk through node A, node A
#   pushes the image to the master.
# - The image is placed on site B: node B pulls it. VM 2 at site B (an empty disk 1.6x VM 1's) gets
#   a deploy task, PXE-boots and deploys with the default layout, fit: the EFI partition keeps its
#   size, the ext4 partition grows to the disk's end and the agent grows its filesystem (e2fsck and
#   resize2fs from the boot environment). Its disk, read afterwards, has clean filesystems that
#   fill their partitions and VM 1's files.
# - VM 3, unknown to the master, boots at site A and registers itself (its MAC and the DMI values
#   given to qemu with -smbios land in the master's inventory).
# Once with BIOS (SeaBIOS + iPXE ROM) and once with UEFI (OVMF's PXE, then ipxe.efi: the nodes
# say secure_boot = "off"; 65-secureboot tests the signed chain).
# `FOG_SITES_FIRMWARE=bios` (or uefi) runs one round only.
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
source scripts/lib/pxe.sh
source scripts/lib/wait.sh
work=$(mktemp -d /tmp/fog-e2e-sites.XXXXXX)
pids=()
loops=()
mounts=()
cleanup() {
  local rc=$?
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || true; done
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in fog70d fog70a fog70b fog70m; do ip netns del "$ns" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    echo "== e2e sites failed (exit $rc); logs:"
    for f in "$work"/*.log "$work"/*.qemu-stderr; do [ -f "$f" ] && { echo "--- $f"; tail -n 80 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

fog=${FOG:?run through scripts/e2e}
pxe_need_packages "$work/apt.log"
need=()
command -v dnsmasq > /dev/null || need+=(dnsmasq-base)
command -v sgdisk > /dev/null || need+=(gdisk)
command -v mkfs.vfat > /dev/null || need+=(dosfstools)
command -v mcopy > /dev/null || need+=(mtools)
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >> "$work/apt.log" 2>&1
fi


echo "== network: master namespace, site A (full DHCP), site B (proxy DHCP beside dnsmasq)"
ip netns add fog70m
ip -n fog70m link set lo up
pxe_bridge_up fog70a 10.71.0.1/24
pxe_bridge_up fog70b 10.72.0.1/24
link_site() { # NS MASTER_SIDE_IF NODE_SIDE_IF NET
  ip link add "$2" netns fog70m type veth peer name "$3" netns "$1"
  ip -n fog70m addr add "10.70.$4.1/30" dev "$2"
  ip -n "$1" addr add "10.70.$4.2/30" dev "$3"
  ip -n fog70m link set "$2" up
  ip -n "$1" link set "$3" up
}
link_site fog70a to-a uplink 1
link_site fog70b to-b uplink 2
ip netns add fog70d
ip -n fog70d link set lo up
ip link add dns0 netns fog70d type veth peer name dnsport netns fog70b
ip -n fog70b link set dnsport master br0
ip -n fog70b link set dnsport up
ip -n fog70d addr add 10.72.0.3/24 dev dns0
ip -n fog70d link set dns0 up
ip -n fog70d route add 255.255.255.255/32 dev dns0
ip netns exec fog70d dnsmasq --no-daemon --port=0 --interface=dns0 --bind-interfaces \
  --dhcp-range=10.72.0.100,10.72.0.150,255.255.255.0,1h --dhcp-leasefile="$work/dnsmasq.leases" \
  --no-ping --no-resolv --log-dhcp --dhcp-authoritative > "$work/dnsmasq.log" 2>&1 &
pids+=($!)

echo "== master"
mkdir -p "$work/master"
ip netns exec fog70m "$fog" master --data-dir "$work/master" --listen 0.0.0.0:8090 > "$work/master.log" 2>&1 &
pids+=($!)
wait_until 60 "the master" test -s "$work/master/admin-token"
export FOG_TOKEN
FOG_TOKEN=$(cat "$work/master/admin-token")
m() { ip netns exec fog70m "$fog" --master http://127.0.0.1:8090 "$@"; }
api() { # METHOD PATH [JSON]
  ip netns exec fog70m curl -sS -f -X "$1" -H "authorization: Bearer $FOG_TOKEN" \
    -H 'content-type: application/json' ${3:+--data "$3"} "http://127.0.0.1:8090/api/v1$2"
}
wait_until 60 "the master's API" api GET /health

echo "== boot environment and nodes"
boot_env=$work/bootenv-boot
mkdir -p "$boot_env"
"$fog" bootfiles install --boot-dir "$boot_env" > "$work/bootfiles.log" 2>&1
"$fog" bootenv build --boot-dir "$boot_env" > "$work/bootenv.log" 2>&1
ls -l "$boot_env/bootenv" >> "$work/bootenv.log"

start_node() { # NAME NS ADDRESS MASTER_ADDR DHCP_SECTION
  local name=$1 ns=$2 addr=$3 master=$4 dhcp=$5
  local dir=$work/$name
  mkdir -p "$dir"
  cp -r "$boot_env" "$dir/boot"
  m node add "$name" --url "http://$addr:8080" --subnet "${addr%.*}.0/24" --max-clients 2 \
    | sed -n 's/^node token (shown once): //p' > "$dir/token"
  [ -s "$dir/token" ] || { echo "no token for node $name"; return 1; }
  cat > "$dir/node.toml" <<EOF
[node]
address = "$addr"
data_dir = "$dir"
boot_dir = "$dir/boot"
master = "http://$master:8090"
name = "$name"
token_file = "$dir/token"
heartbeat_secs = 1
[http]
listen = "0.0.0.0:8080"
[tftp]
listen = "$addr:69"
$dhcp
EOF
  ip netns exec "$ns" "$fog" serve --config "$dir/node.toml" > "$work/node-$name.log" 2>&1 &
  pids+=($!)
  wait_until 60 "node $name" grep -q "fog serve: running" "$work/node-$name.log"
}
start_node site-a fog70a 10.71.0.1 10.70.1.1 "[dhcp]
mode = \"full\"
interface = \"br0\"
[[dhcp.pools]]
subnet = \"10.71.0.0/24\"
range = [\"10.71.0.100\", \"10.71.0.150\"]
lease_secs = 600
[boot]
menu_timeout_ms = 1000
menu_default = \"register\"
secure_boot = \"off\""
start_node site-b fog70b 10.72.0.1 10.70.2.1 "[dhcp]
mode = \"proxy\"
interface = \"br0\"
[ra]
enabled = true
[boot]
secure_boot = \"off\""
m node ls > "$work/nodes.log"

echo "== VM 1's disk: GPT, FAT32 EFI partition, ext4 with files"
src=$work/vm1.img
tree=$work/tree
mkdir -p "$tree/etc" "$tree/srv/data" "$tree/usr/bin"
echo "golden-$RANDOM" > "$tree/etc/hostname"
for i in $(seq 1 200); do head -c $((i * 517)) /dev/urandom > "$tree/srv/data/file$i.bin"; done
cp /bin/busybox "$tree/usr/bin/busybox"
head -c 24M /dev/urandom > "$tree/srv/big.bin"
truncate -s 160M "$src"
sgdisk -n 1:2048:+40M -t 1:ef00 -c 1:EFI -n 2:0:0 -t 2:8300 -c 2:root "$src" > "$work/sgdisk.log"
esp=$work/esp.img
root=$work/root.img
read -r esp_start esp_len < <(partx -g -o START,SECTORS -n 1 "$src")
read -r root_start root_len < <(partx -g -o START,SECTORS -n 2 "$src")
esp_len=$((esp_len * 512))
root_len=$((root_len * 512))
truncate -s "$esp_len" "$esp"
mkfs.vfat -F 32 -n FOGESP "$esp" > /dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT
printf 'fog test loader\n' > "$work/BOOTX64.EFI"
mcopy -i "$esp" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
truncate -s "$root_len" "$root"
mkfs.ext4 -q -F -d "$tree" "$root"
dd if="$esp" of="$src" bs=512 seek="$esp_start" conv=notrunc,sparse status=none
dd if="$root" of="$src" bs=512 seek="$root_start" conv=notrunc,sparse status=none
rm -f "$esp" "$root"

# part_loop DISK N: a read-only loop device over partition N of DISK (no udev here for loopXpN).
part_loop() {
  local start sectors loop
  read -r start sectors < <(partx -g -o START,SECTORS -n "$2" "$1")
  loop=$(losetup -f --show -r -o $((start * 512)) --sizelimit $((sectors * 512)) "$1")
  loops+=("$loop")
  echo "$loop"
}

# same_files DISK: the disk's partitions pass fsck and hold the source's files.
same_files() {
  local disk=$1 esp_loop root_loop src_root
  esp_loop=$(part_loop "$disk" 1)
  root_loop=$(part_loop "$disk" 2)
  src_root=$(part_loop "$src" 2)
  fsck.vfat -n "$esp_loop" > "$work/fsck-vfat.log" 2>&1
  e2fsck -fn "$root_loop" > "$work/fsck-ext4.log" 2>&1
  mkdir -p "$work/mnt-src" "$work/mnt-dst"
  mount -o ro "$src_root" "$work/mnt-src"
  mounts+=("$work/mnt-src")
  mount -o ro "$root_loop" "$work/mnt-dst"
  mounts+=("$work/mnt-dst")
  diff -r "$work/mnt-src" "$work/mnt-dst"
  echo "   $(find "$work/mnt-dst" -type f | wc -l) files identical, both file systems clean"
  umount "$work/mnt-src" "$work/mnt-dst"
  mcopy -i "$esp_loop" ::/EFI/BOOT/BOOTX64.EFI "$work/deployed.efi"
  cmp "$work/BOOTX64.EFI" "$work/deployed.efi"
  rm -f "$work/deployed.efi"
  losetup -d "$esp_loop" "$root_loop" "$src_root"
}

# grown DISK: a fit deploy to a larger disk: the table checks clean, the EFI partition kept its
# size, the ext4 partition reaches the end of the disk and its filesystem fills it.
grown() {
  local disk=$1 start sectors esp_sectors root_loop blocks block_size disk_size
  sgdisk -v "$disk" 2>/dev/null | grep -q "No problems found" || { sgdisk -v "$disk"; return 1; }
  read -r _ esp_sectors < <(partx -g -o START,SECTORS -n 1 "$disk")
  [ $((esp_sectors * 512)) -eq "$esp_len" ] || { echo "EFI partition resized: $esp_sectors sectors"; return 1; }
  read -r start sectors < <(partx -g -o START,SECTORS -n 2 "$disk")
  disk_size=$(stat -c %s "$disk")
  [ $((disk_size - (start + sectors) * 512)) -lt $((2 << 20)) ] \
    || { echo "ext4 partition ends at $(((start + sectors) * 512)) of $disk_size"; return 1; }
  root_loop=$(part_loop "$disk" 2)
  blocks=$(dumpe2fs -h "$root_loop" 2>/dev/null | sed -n 's/^Block count: *//p')
  block_size=$(dumpe2fs -h "$root_loop" 2>/dev/null | sed -n 's/^Block size: *//p')
  losetup -d "$root_loop"
  [ $((blocks * block_size)) -eq $((sectors * 512)) ] \
    || { echo "ext4 of $((blocks * block_size)) bytes in a partition of $((sectors * 512))"; return 1; }
  echo "   fit: ext4 grew from $((root_len >> 20)) MiB to $((sectors * 512 >> 20)) MiB, filesystem fills it"
}

# json_field PATH EXPR: EXPR (Python, over `d`, the JSON answer of GET PATH) printed.
json_field() { api GET "$1" | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"; }
task_is() { [ "$(json_field "/tasks/$1" 'd["state"]')" = "$2" ]; }
copy_complete() { # IMAGE NODE
  [ "$(json_field "/images/$1/copies" "[c['state'] for c in d if c['node'] == '$2']")" = "['complete']" ]
}
round() { # FIRMWARE N
  local fw=$1 n=$2
  local mac1=52:54:00:70:0$n:01 mac2=52:54:00:70:0$n:02 mac3=52:54:00:70:0$n:03
  local image=lab-$fw
  echo "== [$fw] VM 1 captures its disk at site A"
  api POST /images "{\"name\":\"$image\",\"placement\":{\"kind\":\"nodes\",\"nodes\":[\"site-a\"]}}" > /dev/null
  m host add "vm1-$fw" --mac "$mac1" --node site-a > /dev/null
  local capture_id
  capture_id=$(api POST /tasks "{\"kind\":\"capture\",\"host\":\"vm1-$fw\",\"image\":\"$image\",\"after\":\"poweroff\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  cp "$src" "$work/vm1-$fw.img"
  local t0=$SECONDS
  pxe_boot_vm fog70a tap0 "$work/vm1-$fw.log" 600 "$fw" "$mac1" \
    -drive "file=$work/vm1-$fw.img,format=raw,if=virtio" || true
  echo "   VM 1 ran $((SECONDS - t0)) s"
  wait_until 120 "capture task $capture_id complete" task_is "$capture_id" complete
  "$fog" image ls --store "$work/master/store" | grep -q "$image"

  echo "== [$fw] the image is placed on site B; node B pulls it"
  api PUT "/images/$image" "{\"name\":\"$image\",\"placement\":{\"kind\":\"nodes\",\"nodes\":[\"site-a\",\"site-b\"]}}" > /dev/null
  wait_until 300 "$image on site B" copy_complete "$image" site-b

  echo "== [$fw] VM 2 deploys at site B onto an empty disk"
  m host add "vm2-$fw" --mac "$mac2" --node site-b > /dev/null
  local deploy_id
  deploy_id=$(api POST /tasks "{\"kind\":\"deploy\",\"host\":\"vm2-$fw\",\"image\":\"$image\",\"after\":\"poweroff\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  truncate -s 256M "$work/vm2-$fw.img"
  t0=$SECONDS
  pxe_boot_vm fog70b tap0 "$work/vm2-$fw.log" 600 "$fw" "$mac2" \
    -drive "file=$work/vm2-$fw.img,format=raw,if=virtio" || true
  echo "   VM 2 ran $((SECONDS - t0)) s"
  wait_until 60 "deploy task $deploy_id complete" task_is "$deploy_id" complete
  same_files "$work/vm2-$fw.img"
  grown "$work/vm2-$fw.img"

  echo "== [$fw] unknown VM 3 registers itself with its DMI values"
  local serial=SN-$fw-$RANDOM
  t0=$SECONDS
  pxe_boot_vm fog70a tap1 "$work/vm3-$fw.log" 600 "$fw" "$mac3" \
    -smbios "type=1,manufacturer=FogTest,product=Lab-VM-$fw,serial=$serial" || true
  echo "   VM 3 ran $((SECONDS - t0)) s"
  # Found by the list's search over MACs (a page: {"items", "next"}).
  api GET "/hosts?q=$mac3" > "$work/hosts.json"
  python3 - "$work/hosts.json" "$mac3" "$serial" "$fw" <<'PY'
import json, sys
hosts, mac, serial, fw = json.load(open(sys.argv[1]))["items"], sys.argv[2], sys.argv[3], sys.argv[4]
mine = [h for h in hosts if mac in h["macs"]]
assert mine, f"no host with MAC {mac}: {[h['name'] for h in hosts]}"
text = json.dumps(mine[0]["inventory"])
for want in ("FogTest", f"Lab-VM-{fw}", serial):
    assert want in text, f"{want} missing from the inventory: {text}"
print(f"   registered {mine[0]['name']} with {mac}, {serial}")
PY
}

# One VM, for watching (scripts/watch-vm): it captures its disk at site A, the disk is wiped, and
# it deploys the image back; its console streams to the terminal.
watch_one() { # FIRMWARE
  local fw=$1 mac=52:54:00:70:09:01 image=watch-$1 id tail_pid
  api POST /images "{\"name\":\"$image\",\"placement\":{\"kind\":\"nodes\",\"nodes\":[\"site-a\"]}}" > /dev/null
  m host add watch-vm --mac "$mac" --node site-a > /dev/null
  cp "$src" "$work/watch.img"
  for kind in capture deploy; do
    echo "== [$fw] the VM boots to $kind ($image)"
    id=$(api POST /tasks "{\"kind\":\"$kind\",\"host\":\"watch-vm\",\"image\":\"$image\",\"after\":\"poweroff\"}" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    : > "$work/watch-$kind.log"
    tail -f "$work/watch-$kind.log" &
    tail_pid=$!
    pxe_boot_vm fog70a tap0 "$work/watch-$kind.log" 600 "$fw" "$mac" \
      -drive "file=$work/watch.img,format=raw,if=virtio" || true
    kill "$tail_pid" 2> /dev/null || true
    wait_until 120 "task $id complete" task_is "$id" complete
    if [ "$kind" = capture ]; then
      echo "== the VM's disk is wiped"
      rm -f "$work/watch.img"
      truncate -s 160M "$work/watch.img"
    fi
  done
  same_files "$work/watch.img"
}

if [ -n "${FOG_SITES_WATCH:-}" ]; then
  watch_one "${FOG_SITES_FIRMWARE:-bios}"
  echo "== watch run passed"
  exit 0
fi

for fw in ${FOG_SITES_FIRMWARE:-bios uefi}; do
  case $fw in bios) round bios 1 ;; uefi) round uefi 2 ;; *) echo "unknown firmware $fw"; exit 2 ;; esac
done
echo "== sites e2e passed"
