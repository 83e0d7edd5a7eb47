#!/usr/bin/env bash
# Multicast deploy between network namespaces on a bridge (scripts/lib/mcast-net.sh): a sender
# and up to 4 receivers, each port shaped to 200 Mbit/s by tbf so the link, not the 2 cores, sets
# the pace. An image of a 640 MiB ext4 partition with 520 MiB of files (random and text). Every
# receiver's disk must equal a unicast `fog image deploy` of the same image.
# - clean, 3 receivers: all from multicast, no HTTP;
# - one receiver at 1% loss (nftables): it repairs by NAKs, the others need no HTTP;
# - one receiver's port at half the rate: it turns to HTTP for what it misses, the others stay on
#   multicast and finish first;
# - a receiver killed mid-session and one joining late; bad packets (random bytes, another
#   session's, forged data) sent to the group meanwhile: the others finish, the late one too;
# - a receiver that hears no multicast at all (nftables drops the group): everything over HTTP.
# Times are the bench's business (benches/multicast.sh); this checks bytes and modes.
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
source scripts/lib/mcast-net.sh
work=$(mktemp -d /tmp/fog-e2e-mcast.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  mcast_net_down 4
  if [ $rc -ne 0 ]; then
    echo "== e2e multicast failed (exit $rc); logs:"
    for f in "$work"/*.log "$work"/*.json; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

fog=${FOG:?run through scripts/e2e}
export FOG_STORE=$work/store
need=()
command -v nft > /dev/null || need+=(nftables)
command -v tc > /dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" > "$work/apt.log" 2>&1
fi

echo "== image: 640 MiB ext4 partition, 520 MiB of files"
mkdir -p "$work/tree"
head -c 300M /dev/urandom > "$work/tree/random.bin"
python3 - "$work/tree/text.txt" <<'PY'
import random, sys
rng = random.Random(80)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 9))) for _ in range(5000)]
with open(sys.argv[1], 'w') as out:
    written = 0
    while written < 220 << 20:
        line = ' '.join(rng.choice(words) for _ in range(14)) + '\n'
        out.write(line)
        written += len(line)
PY
truncate -s 700M "$work/disk.img"
sfdisk -q "$work/disk.img" <<<$'label: gpt\n,640M,L\n'
truncate -s 640M "$work/part.img"
mkfs.ext4 -q -F -d "$work/tree" "$work/part.img"
dd if="$work/part.img" of="$work/disk.img" bs=1M seek=1 conv=notrunc status=none
rm -f "$work/part.img" "$work/tree/random.bin"
"$fog" image capture "$work/disk.img" --name room > "$work/capture.log" 2>&1
rm -f "$work/disk.img"
"$fog" image deploy room "$work/unicast.img" > "$work/unicast.log" 2>&1

echo "== network: a bridge, a sender and 4 receivers, ports at 200 Mbit/s"
mcast_net_up 4
for r in r1 r2 r3 r4; do mcast_rate "$r" 200; done

# session NAME N [send args...]: a sender for N receivers, started in the background; its JSON
# report goes to NAME-send.json.
session() {
  local name=$1 n=$2
  shift 2
  ip netns exec "${MC}s" "$fog" --json multicast send room --interface eth0 --receivers "$n" --max-wait 60 \
    --http-port 7071 "$@" > "$work/$name-send.json" 2> "$work/$name-send.log" &
  sender=$!
  pids+=("$sender")
}

# receiver NAME I [receive args...]: receiver I in the background, into $work/NAME-rI.img.
receiver() {
  local name=$1 i=$2
  shift 2
  ip netns exec "${MC}r$i" "$fog" --json multicast receive "$work/$name-r$i.img" --interface eth0 --wait 60 "$@" \
    > "$work/$name-r$i.json" 2> "$work/$name-r$i.log" &
  last=$!
  pids+=("$last")
}

# finish NAME PIDS...: waits (bounded) for the receivers, then the sender if one was started by
# `session`; each must succeed.
finish() {
  local name=$1 p
  shift
  for p in "$@" ${sender:+"$sender"}; do
    local deadline=$((SECONDS + 300))
    while kill -0 "$p" 2>/dev/null; do
      [ $SECONDS -lt $deadline ] || { echo "$name: process $p still running after 300 s"; return 1; }
      sleep 0.5
    done
    wait "$p" || { echo "$name: process $p failed"; return 1; }
  done
}

# same NAME I...: receiver disks equal the unicast deploy.
same() {
  local name=$1 i
  shift
  for i in "$@"; do
    cmp "$work/$name-r$i.img" "$work/unicast.img" || { echo "$name: receiver $i's disk differs"; return 1; }
    rm -f "$work/$name-r$i.img"
  done
}

# summary NAME I...: one line per receiver (mode, objects from HTTP, seconds), for the log.
summary() {
  local name=$1 i
  shift
  for i in "$@"; do
    echo "   receiver $i: $(field "$work/$name-r$i.json" "'%s, %d of %d objects over HTTP, %d NAKs, %.1f s' % (r['mode'], r['from_http'], r['objects'], r['naks'], r['deploy']['seconds'])")"
  done
}

# field FILE EXPR: a value of a JSON report (python expression over r).
field() {
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"
}

echo "== clean: 3 receivers"
session clean 3
receiver clean 1; a=$last; receiver clean 2; b=$last; receiver clean 3; c=$last
finish clean "$a" "$b" "$c"
summary clean 1 2 3
same clean 1 2 3
for i in 1 2 3; do
  [ "$(field "$work/clean-r$i.json" "r['from_http']")" = 0 ] || { echo "clean: receiver $i used HTTP"; exit 1; }
done
wire=$(field "$work/clean-send.json" "round(r['bytes_sent'] / r['payload_bytes'], 3)")
echo "   sent $(field "$work/clean-send.json" "r['bytes_sent']") bytes for $(field "$work/clean-send.json" "r['payload_bytes']") of objects (${wire}x), $(field "$work/clean-send.json" "r['repairs']") repairs"
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 1.08 else 1)" "$wire" || { echo "clean: ${wire}x the objects' bytes sent"; exit 1; }

echo "== one receiver at 1% loss"
mcast_loss r1 1
session loss 3
receiver loss 1; a=$last; receiver loss 2; b=$last; receiver loss 3; c=$last
finish loss "$a" "$b" "$c"
mcast_noloss r1
summary loss 1 2 3
same loss 1 2 3
[ "$(field "$work/loss-r1.json" "r['naks'] > 0")" = True ] || { echo "loss: the lossy receiver sent no NAK"; exit 1; }
for i in 2 3; do
  [ "$(field "$work/loss-r$i.json" "r['from_http']")" = 0 ] || { echo "loss: receiver $i used HTTP"; exit 1; }
done

echo "== one receiver's port at half the rate"
mcast_rate r2 100
session slow 3
receiver slow 1; a=$last; receiver slow 2; b=$last; receiver slow 3; c=$last
finish slow "$a" "$b" "$c"
mcast_rate r2 200
summary slow 1 2 3
same slow 1 2 3
[ "$(field "$work/slow-r2.json" "r['mode']")" = assisted ] || { echo "slow: the slow receiver was not assisted"; exit 1; }
slow_seconds=$(field "$work/slow-r2.json" "r['deploy']['seconds']")
for i in 1 3; do
  [ "$(field "$work/slow-r$i.json" "r['mode']")" = normal ] || { echo "slow: receiver $i left multicast"; exit 1; }
  [ "$(field "$work/slow-r$i.json" "r['deploy']['seconds'] < $slow_seconds")" = True ] \
    || { echo "slow: receiver $i finished after the slow one"; exit 1; }
done

echo "== a receiver killed mid-session, one joining late, bad packets on the group"
session late 3
receiver late 1; a=$last; receiver late 2; b=$last; receiver late 3; c=$last
sleep 6
kill -9 "$c"
wait "$c" 2>/dev/null || true
ip netns exec "${MC}r4" python3 - <<'PY' > "$work/bad.log" 2>&1
# Random bytes, another session's packet, and a forged data packet of this session (the session
# number read from its announcements, the tag wrong) to the group.
import os, socket, struct
listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listen.bind(('', 7070))
listen.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton('239.255.70.1') + socket.inet_aton('10.80.0.14'))
session = None
while session is None:
    data = listen.recv(2048)
    if data[:1] == b'f' and data[1] & 0x0f == 1:
        session = struct.unpack('<I', data[2:6])[0]
        seq, obj, frag, frags = struct.unpack('<IIHH', data[6:18])
send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('10.80.0.14'))
group = ('239.255.70.1', 7070)
for i in range(300):
    send.sendto(os.urandom(1 + i % 1400), group)
    send.sendto(b'f\x11' + struct.pack('<I', session ^ 1) + os.urandom(1400), group)
    header = b'f\x11' + struct.pack('<IIIHHB', session, seq + i, obj + i % 50, 0, frags, 0)
    send.sendto(header + os.urandom(1445) + os.urandom(8), group)
print('sent 900 bad packets to session', session)
PY
grep -q "sent 900 bad packets" "$work/bad.log"
sleep 2
receiver late 4 --session room; d=$last
finish late "$a" "$b" "$d"
summary late 1 2 4
same late 1 2 4
[ "$(field "$work/late-send.json" "[x['lost'] for x in r['receivers']].count(True)")" = 1 ] \
  || { echo "late: the sender did not see exactly one receiver lost"; exit 1; }
for i in 1 2; do
  [ "$(field "$work/late-r$i.json" "r['bad_packets'] > 0")" = True ] || { echo "late: receiver $i saw no bad packet"; exit 1; }
done

echo "== a receiver that hears no multicast: everything over HTTP"
ip netns exec "${MC}r3" nft add table inet g
ip netns exec "${MC}r3" nft add chain inet g input '{ type filter hook input priority 0; }'
ip netns exec "${MC}r3" nft add rule inet g input ip daddr 224.0.0.0/4 drop
session deaf 2
receiver deaf 1; a=$last; receiver deaf 3 --sender http://10.80.0.1:7071; c=$last
finish deaf "$a" "$c"
summary deaf 1 3
same deaf 1 3
[ "$(field "$work/deaf-r3.json" "r['mode']")" = http ] || { echo "deaf: receiver 3 was not in HTTP mode"; exit 1; }
[ "$(field "$work/deaf-r1.json" "r['from_http']")" = 0 ] || { echo "deaf: receiver 1 used HTTP"; exit 1; }

echo "== tasks: a master and a node with [multicast]; a multicast task for a group of 3 hosts"
ip netns exec "${MC}s" "$fog" --store "$work/store" master --data-dir "$work/master" --listen 10.80.0.1:8090 \
  > "$work/master.log" 2>&1 &
pids+=($!)
master=http://10.80.0.1:8090
up() { ip netns exec "${MC}s" curl -fsS -o /dev/null "$1" 2> /dev/null; }
deadline=$((SECONDS + 60))
until up "$master/api/v1/health"; do
  [ $SECONDS -lt $deadline ] || { echo "the master did not answer within 60 s"; exit 1; }
  sleep 0.5
done
admin=$(tr -d '\n' < "$work/master/admin-token")
m() { ip netns exec "${MC}s" "$fog" --master "$master" --token "$admin" "$@"; }
ip netns exec "${MC}s" curl -fsS -X POST -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
  -d '{"name": "room"}' "$master/api/v1/images" > /dev/null
m --json node add site --url http://10.80.0.1:8080 --subnet 10.80.0.0/24 --max-clients 1 > "$work/node-add.json"
field "$work/node-add.json" "r['token']" > "$work/node-token"
node_token=$(cat "$work/node-token")
m group add lab > /dev/null
for i in 1 2 3; do
  m host add "pc$i" --mac "52:54:00:80:00:0$i" --node site --group lab > /dev/null
done
mkdir -p "$work/node/boot"
cat > "$work/node.toml" <<TOML
[node]
address = "10.80.0.1"
data_dir = "$work/node"
master = "$master"
name = "site"
token_file = "$work/node-token"
heartbeat_secs = 1

[http]
listen = "10.80.0.1:8080"

[multicast]
interface = "eth0"
max_wait_secs = 60
TOML
ip netns exec "${MC}s" "$fog" serve --config "$work/node.toml" > "$work/node.log" 2>&1 &
pids+=($!)
deadline=$((SECONDS + 60))
until up http://10.80.0.1:8080/boot.ipxe; do
  [ $SECONDS -lt $deadline ] || { echo "the node did not answer within 60 s"; exit 1; }
  sleep 0.5
done
m --json task multicast --group lab --image room > "$work/tasks.json"
[ "$(field "$work/tasks.json" "len(r['created'])")" = 3 ] || { echo "tasks: not 3 tasks created"; exit 1; }
sleep 3 # the node pulls its hosts' tasks every second: the session waits for all three
agents=()
for i in 1 2 3; do
  ip netns exec "${MC}r$i" "$fog" --json agent run --master http://10.80.0.1:8080 --token "$node_token" \
    --mac "52:54:00:80:00:0$i" --disk "$work/tasks-r$i.img" --once --no-power \
    > "$work/tasks-r$i.json" 2> "$work/tasks-r$i.log" &
  agents+=($!)
  pids+=($!)
done
sender= # the node's session: no sender process of ours
finish tasks "${agents[@]}"
for i in 1 2 3; do
  [ "$(field "$work/tasks-r$i.json" "r['ok']")" = True ] || { echo "tasks: agent $i failed"; exit 1; }
  grep -q "multicast: .* from the group" "$work/tasks-r$i.log" || { echo "tasks: agent $i did not receive by multicast"; exit 1; }
done
same tasks 1 2 3
[ "$(grep -c "multicast: session open" "$work/node.log")" = 1 ] || { echo "tasks: not exactly one session"; exit 1; }
m --json task ls > "$work/task-ls.json"
[ "$(field "$work/task-ls.json" "sorted(t['state']['state'] if isinstance(t['state'], dict) else t['state'] for t in r)")" \
  = "['complete', 'complete', 'complete']" ] || { echo "tasks: not all complete on the master"; cat "$work/task-ls.json"; exit 1; }

echo "== multicast e2e passed"
