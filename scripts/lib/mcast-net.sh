# A multicast segment of network namespaces, for the multicast e2e and bench (source it):
# bridge namespace ${MC}b with br0 (multicast snooping off, MAC pinned), sender namespace ${MC}s at
# 10.80.0.1 and receivers ${MC}r1..N at 10.80.0.11.., each on a veth into the bridge, with a
# route for 224.0.0.0/4. This kernel has no netem: loss by nftables, rates by tbf.
MC=${MC:-fog80}

# mcast_net_up N: the bridge, the sender and N receivers.
mcast_net_up() {
  local n=$1 i
  ip netns add "${MC}b"
  ip -n "${MC}b" link add br0 type bridge mcast_snooping 0
  ip -n "${MC}b" link set br0 address 02:80:00:00:00:01
  ip -n "${MC}b" link set br0 up
  mcast_host s 10.80.0.1
  for i in $(seq 1 "$n"); do mcast_host "r$i" "10.80.0.$((10 + i))"; done
}

# mcast_host NAME ADDR: a host namespace on the bridge.
mcast_host() {
  local ns="${MC}$1"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add eth0 netns "$ns" type veth peer name "p-$1" netns "${MC}b"
  ip -n "${MC}b" link set "p-$1" master br0
  ip -n "${MC}b" link set "p-$1" up
  ip -n "$ns" addr add "$2/24" brd + dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add 224.0.0.0/4 dev eth0
}

# mcast_rate HOST MBIT: shapes what the bridge sends to HOST (its port) to MBIT Mbit/s.
mcast_rate() {
  tc -n "${MC}b" qdisc replace dev "p-$1" root tbf rate "$2mbit" burst 256kb latency 50ms
}

# mcast_unshape HOST
mcast_unshape() {
  tc -n "${MC}b" qdisc del dev "p-$1" root 2>/dev/null || true
}

# mcast_loss HOST PERCENT: drops PERCENT% of the UDP packets HOST receives.
mcast_loss() {
  ip netns exec "${MC}$1" nft add table inet f
  ip netns exec "${MC}$1" nft add chain inet f input '{ type filter hook input priority 0; }'
  ip netns exec "${MC}$1" nft add rule inet f input meta l4proto udp numgen random mod 100 "<" "$2" drop
}

# mcast_noloss HOST
mcast_noloss() {
  ip netns exec "${MC}$1" nft delete table inet f 2>/dev/null || true
}

# mcast_tx_bytes: bytes the sender's interface has sent.
mcast_tx_bytes() {
  ip netns exec "${MC}s" cat /sys/class/net/eth0/statistics/tx_bytes
}

# mcast_net_down N
mcast_net_down() {
  local i
  for i in $(seq 1 "$1"); do ip netns del "${MC}r$i" 2>/dev/null || true; done
  ip netns del "${MC}s" 2>/dev/null || true
  ip netns del "${MC}b" 2>/dev/null || true
}
