#!/usr/bin/env bash
# DHCP with real clients in network namespaces: udhcpc and dhclient get leases from fog in full
# mode and the same addresses after a restart; a relayed request gets an address from the relay's
# subnet and its relay agent information (option 82) back unchanged; proxy mode beside dnsmasq:
# a PXE client gets its address from dnsmasq and its boot file from fog (port 67 offer and port
# 4011 ACK).
#
# Runs `fog serve --config` with DHCP only (HTTP and TFTP off). Topology: namespace dhsrv holds bridge br0 (10.99.0.1/24) where fog serves; client
# namespaces dhc1 (udhcpc, PXE client), dhc2 (dhclient), dhrel (a relay at 10.99.1.1) and dhdns
# (dnsmasq, 10.99.0.3) hang off it by veths.
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/fog-e2e-dhcp.XXXXXX)
pids=()
nss=(dhsrv dhc1 dhc2 dhrel dhdns)
cleanup() {
  local rc=$?
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for ns in "${nss[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    echo "== dhcp e2e failed (exit $rc); logs:"
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 80 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

need=()
command -v udhcpc >/dev/null || need+=(udhcpc)
command -v dhclient >/dev/null || need+=(isc-dhcp-client)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; fi

fog=${FOG:?run through scripts/e2e}
helper=$work/dhcp_client.py
# Test clients: a relay agent, and a PXE client that collects every offer.
cat > "$helper" <<'PY'
"""Tiny DHCP test clients for fog's e2e: a relay agent, and a PXE client beside a proxy."""
import argparse, random, socket, struct, subprocess, sys, time

def ip4(s): return socket.inet_aton(s)
def ntoa(b): return socket.inet_ntoa(b)

def build(kind, mac, xid, giaddr="0.0.0.0", ciaddr="0.0.0.0", flags=0x8000, hops=0, opts=()):
    hdr = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, hops, xid, 0, flags, ip4(ciaddr),
                      ip4("0.0.0.0"), ip4("0.0.0.0"), ip4(giaddr), mac + bytes(10), b"", b"")
    body = b"\x63\x82\x53\x63" + bytes([53, 1, kind])
    for code, value in opts:
        body += bytes([code, len(value)]) + value
    pkt = hdr + body + b"\xff"
    return pkt + bytes(max(0, 300 - len(pkt)))

def parse(data):
    if len(data) < 240 or data[236:240] != b"\x63\x82\x53\x63":
        return None
    m = {"op": data[0], "xid": struct.unpack("!I", data[4:8])[0], "yiaddr": ntoa(data[16:20]),
         "siaddr": ntoa(data[20:24]), "giaddr": ntoa(data[24:28]),
         "file": data[108:236].split(b"\0")[0].decode(errors="replace"), "opts": {}}
    i = 240
    while i < len(data):
        code = data[i]
        if code == 0: i += 1; continue
        if code == 255 or i + 1 >= len(data): break
        n = data[i + 1]; m["opts"][code] = data[i + 2:i + 2 + n]; i += 2 + n
    m["type"] = m["opts"].get(53, b"\0")[0]
    m["sid"] = ntoa(m["opts"][54]) if len(m["opts"].get(54, b"")) == 4 else "?"
    return m

def collect(sock, xid, seconds, want=None):
    out, end = [], time.time() + seconds
    while time.time() < end:
        sock.settimeout(max(0.01, end - time.time()))
        try:
            data, frm = sock.recvfrom(4096)
        except socket.timeout:
            break
        m = parse(data)
        if m and m["op"] == 2 and m["xid"] == xid:
            m["from"] = frm
            out.append(m)
            if want and want(m):
                break
    return out

def exchange(sock, pkt, dest, xid, want, tries=5):
    for _ in range(tries):
        sock.sendto(pkt, dest)
        got = [m for m in collect(sock, xid, 1.5, want) if want(m)]
        if got:
            return got[0]
    sys.exit(f"no answer from {dest}")

def relay(a):
    mac = bytes.fromhex(a.mac.replace(":", ""))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 67))
    xid = random.getrandbits(32)
    dst = (a.server, 67)
    # Relay agent information (RFC 3046): circuit id "eth7", remote id 0x0001; the server must
    # echo it unchanged.
    agent = [(82, b"\x01\x04eth7\x02\x02\x00\x01")]
    offer = exchange(s, build(1, mac, xid, giaddr=a.giaddr, flags=0, hops=1, opts=agent), dst, xid,
                     lambda m: m["type"] == 2)
    print(f"OFFER yiaddr={offer['yiaddr']} giaddr={offer['giaddr']} from={offer['from'][0]} "
          f"opt82={offer['opts'].get(82, b'').hex()}")
    req = build(3, mac, xid, giaddr=a.giaddr, flags=0, hops=1,
                opts=[(50, ip4(offer["yiaddr"])), (54, ip4(offer["sid"]))] + agent)
    ack = exchange(s, req, dst, xid, lambda m: m["type"] in (5, 6))
    print(f"{'ACK' if ack['type'] == 5 else 'NAK'} yiaddr={ack['yiaddr']} server={ack['sid']} "
          f"opt82={ack['opts'].get(82, b'').hex()}")

PXE_OPTS = [(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\0\0"), (94, b"\x01\x02\x01"),
            (97, b"\0" + bytes(range(16))), (55, bytes([1, 3, 6, 43, 60, 66, 67]))]

def pxe(a):
    mac = bytes.fromhex(a.mac.replace(":", ""))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a.iface.encode())
    s.bind(("0.0.0.0", 68))
    xid = random.getrandbits(32)
    bcast = ("255.255.255.255", 67)
    offers = []
    for _ in range(3):
        s.sendto(build(1, mac, xid, opts=PXE_OPTS), bcast)
        offers += collect(s, xid, 2.0)
        if any(o["yiaddr"] != "0.0.0.0" for o in offers) and any(o["yiaddr"] == "0.0.0.0" for o in offers):
            break
    addr = next((o for o in offers if o["type"] == 2 and o["yiaddr"] != "0.0.0.0"), None)
    boot = next((o for o in offers if o["type"] == 2 and o["yiaddr"] == "0.0.0.0"), None)
    for o in offers:
        print(f"offer from {o['sid']}: yiaddr={o['yiaddr']} siaddr={o['siaddr']} file={o['file']!r} "
              f"opt60={o['opts'].get(60)} opt43={o['opts'].get(43, b'').hex()}")
    if not addr or not boot:
        sys.exit("missing an address offer or a boot offer")
    if boot["opts"].get(60) != b"PXEClient" or any(c in boot["opts"] for c in (51, 1, 3)):
        sys.exit("proxy offer must carry option 60 PXEClient and no lease options")
    print(f"BOOT siaddr={boot['siaddr']} file={boot['file']} from {boot['sid']}")
    req = build(3, mac, xid, opts=[(50, ip4(addr["yiaddr"])), (54, ip4(addr["sid"]))] + PXE_OPTS)
    ack = exchange(s, req, bcast, xid, lambda m: m["type"] in (5, 6) and m["sid"] == addr["sid"])
    if ack["type"] != 5:
        sys.exit("address server refused the request")
    print(f"ADDRESS {ack['yiaddr']} from {ack['sid']}")
    subprocess.run(["ip", "addr", "add", ack["yiaddr"] + "/24", "dev", a.iface], check=True)
    # The PXE boot server step (port 4011), unicast from the new address.
    xid2 = random.getrandbits(32)
    req = build(3, mac, xid2, ciaddr=ack["yiaddr"], flags=0, opts=PXE_OPTS)
    s2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s2.bind((ack["yiaddr"], 0))
    got = exchange(s2, req, (boot["siaddr"], 4011), xid2, lambda m: m["type"] == 5)
    if got["yiaddr"] != "0.0.0.0":
        sys.exit("proxy ACK gave an address")
    print(f"PROXY4011 file={got['file']} siaddr={got['siaddr']} from {got['from'][0]}:{got['from'][1]}")

p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd", required=True)
r = sub.add_parser("relay"); r.add_argument("--giaddr"); r.add_argument("--server"); r.add_argument("--mac")
x = sub.add_parser("pxe"); x.add_argument("--iface"); x.add_argument("--mac")
args = p.parse_args()
relay(args) if args.cmd == "relay" else pxe(args)
PY

# --- namespaces
for ns in "${nss[@]}"; do ip netns del "$ns" 2>/dev/null || true; ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n dhsrv link add br0 type bridge
ip -n dhsrv addr add 10.99.0.1/24 dev br0
ip -n dhsrv link set br0 up
n=0
for ns in dhc1 dhc2 dhrel dhdns; do
  n=$((n + 1))
  ip link add "dhv$n" type veth peer name "dhp$n"
  ip link set "dhv$n" netns dhsrv
  ip link set "dhp$n" netns "$ns"
  ip -n "$ns" link set "dhp$n" name eth0
  ip -n "$ns" link set eth0 address "02:99:00:00:00:0$n"
  ip -n "$ns" link set eth0 up
  ip -n dhsrv link set "dhv$n" master br0
  ip -n dhsrv link set "dhv$n" up
  ip -n "$ns" route add 255.255.255.255/32 dev eth0 2>/dev/null || true
done
ip -n dhrel addr add 10.99.1.1/24 dev eth0
ip -n dhrel route add 10.99.0.0/24 dev eth0
ip -n dhsrv route add 10.99.1.0/24 dev br0
ip -n dhdns addr add 10.99.0.3/24 dev eth0

# --- client scripts: only `ip addr add` and print the lease
cat > "$work/udhcpc.sh" <<'S'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    echo "LEASE ip=$ip siaddr=${siaddr:-} boot_file=${boot_file:-} serverid=${serverid:-}" ;;
esac
S
cat > "$work/dhclient.sh" <<'S'
#!/bin/sh
case "$reason" in
  BOUND|REBOOT|RENEW|REBIND)
    ip addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
    echo "LEASE ip=$new_ip_address" ;;
esac
S
chmod +x "$work/udhcpc.sh" "$work/dhclient.sh"

fog_pid=
start_fog() { # CONFIG LOG
  ip netns exec dhsrv "$fog" serve --config "$1" >>"$2" 2>&1 &
  fog_pid=$!
  pids+=("$fog_pid")
  for _ in $(seq 1 100); do
    grep -q "fog serve: running" "$2" && return 0
    kill -0 "$fog_pid" 2>/dev/null || { echo "fog exited"; return 1; }
    sleep 0.1
  done
  echo "fog did not start"; return 1
}
stop_fog() {
  kill -TERM "$fog_pid"
  timeout 10 tail --pid="$fog_pid" -f /dev/null
  wait "$fog_pid" 2>/dev/null || true
}

run_udhcpc() { # LOG -> prints ip
  ip netns exec dhc1 ip addr flush dev eth0
  ip netns exec dhc1 timeout 30 udhcpc -i eth0 -f -q -n -t 5 -T 1 -s "$work/udhcpc.sh" >>"$1" 2>&1
  sed -n 's/^LEASE ip=\([0-9.]*\).*/\1/p' "$1" | tail -n 1
}
run_dhclient() { # LOG -> prints ip
  ip netns exec dhc2 ip addr flush dev eth0
  rm -f "$work/dhclient.leases"
  ip netns exec dhc2 timeout 30 dhclient -4 -1 -sf "$work/dhclient.sh" -lf "$work/dhclient.leases" \
    -pf "$work/dhclient.pid" eth0 >>"$1" 2>&1
  [ -f "$work/dhclient.pid" ] && { kill "$(cat "$work/dhclient.pid")" 2>/dev/null || true; rm -f "$work/dhclient.pid"; }
  sed -n 's/^LEASE ip=\([0-9.]*\).*/\1/p' "$1" | tail -n 1
}

# --- full mode
cat > "$work/full.toml" <<EOF2
[node]
address = "10.99.0.1"
data_dir = "$work"
[http]
enabled = false
[dhcp]
mode = "full"
interface = "br0"
lease_file = "$work/full.leases"
[[dhcp.pools]]
subnet = "10.99.0.0/24"
range = ["10.99.0.100", "10.99.0.150"]
router = "10.99.0.1"
dns = ["10.99.0.1"]
domain = "fog.test"
lease_secs = 600
[[dhcp.pools]]
subnet = "10.99.1.0/24"
range = ["10.99.1.100", "10.99.1.150"]
router = "10.99.1.1"
EOF2

echo "== full mode: udhcpc and dhclient get leases"
start_fog "$work/full.toml" "$work/fog-full.log"
ip1=$(run_udhcpc "$work/udhcpc1.log")
ip2=$(run_dhclient "$work/dhclient1.log")
echo "udhcpc got $ip1, dhclient got $ip2"
[[ "$ip1" == 10.99.0.* && "$ip2" == 10.99.0.* && "$ip1" != "$ip2" ]]
grep -q "02:99:00:00:00:01 $ip1 " "$work/full.leases"
grep -q "02:99:00:00:00:02 $ip2 " "$work/full.leases"

echo "== full mode: a relayed request gets an address from the relay's subnet"
ip netns exec dhrel timeout 30 python3 "$helper" relay --giaddr 10.99.1.1 --server 10.99.0.1 \
  --mac 02:99:00:00:01:01 >"$work/relay.log" 2>&1
cat "$work/relay.log"
grep -q "^ACK yiaddr=10.99.1.1[0-4][0-9] " "$work/relay.log"
grep -q "^OFFER .* opt82=01046574683702020001$" "$work/relay.log"
grep -q "^ACK .* opt82=01046574683702020001$" "$work/relay.log"

echo "== full mode: a restarted fog gives the same addresses"
stop_fog
grep -q "leases flushed" "$work/fog-full.log"
start_fog "$work/full.toml" "$work/fog-full2.log"
ip2b=$(run_dhclient "$work/dhclient2.log")
ip1b=$(run_udhcpc "$work/udhcpc2.log")
echo "after restart: udhcpc got $ip1b, dhclient got $ip2b"
[ "$ip1b" = "$ip1" ] && [ "$ip2b" = "$ip2" ]
stop_fog

echo "== proxy mode beside dnsmasq"
ip netns exec dhdns dnsmasq --no-daemon --port=0 --interface=eth0 --bind-interfaces \
  --dhcp-range=10.99.0.160,10.99.0.180,255.255.255.0,1h --dhcp-leasefile="$work/dnsmasq.leases" \
  --no-ping --no-resolv --log-dhcp --dhcp-authoritative >"$work/dnsmasq.log" 2>&1 &
pids+=($!)
cat > "$work/proxy.toml" <<EOF2
[node]
address = "10.99.0.1"
data_dir = "$work"
[http]
enabled = false
[dhcp]
mode = "proxy"
interface = "br0"
lease_file = "$work/proxy.leases"
EOF2
start_fog "$work/proxy.toml" "$work/fog-proxy.log"
ip netns exec dhc1 ip addr flush dev eth0
ip netns exec dhc1 timeout 40 python3 "$helper" pxe --iface eth0 --mac 02:99:00:00:00:01 >"$work/pxe.log" 2>&1
cat "$work/pxe.log"
grep -q "^ADDRESS 10.99.0.1[678][0-9] from 10.99.0.3" "$work/pxe.log"
grep -q "^BOOT siaddr=10.99.0.1 file=undionly.kpxe from 10.99.0.1" "$work/pxe.log"
grep -q "^PROXY4011 file=undionly.kpxe" "$work/pxe.log"
# A non-PXE client is not answered by fog in proxy mode, and fog never hands out an address.
ip netns exec dhc2 ip addr flush dev eth0
ip netns exec dhc2 timeout 30 udhcpc -i eth0 -f -q -n -t 5 -T 1 -s "$work/udhcpc.sh" >"$work/udhcpc-proxy.log" 2>&1
grep -q "LEASE ip=10.99.0.1[678][0-9] .*serverid=10.99.0.3" "$work/udhcpc-proxy.log"
[ ! -s "$work/proxy.leases" ]
stop_fog
echo "== dhcp e2e passed"
