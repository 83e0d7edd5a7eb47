#!/usr/bin/env bash
# `fog serve` as a user runs it: HTTP (+ TFTP) on loopback with --dhcp off, a 32 MiB file whole
# and by Range, SIGTERM stops it within seconds, a taken port is exit code 2 naming the port;
# `fog bootfiles install` from Debian's ipxe package; then the whole node in a namespace pair
# (DHCP full on a veth): udhcpc gets an address and the BIOS boot file, the client fetches the
# boot file over TFTP and the iPXE script over HTTP from the address DHCP named.
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/fog-e2e-serve.XXXXXX)
pids=()
ns_srv=fog40s
ns_cli=fog40c
cleanup() {
  local rc=$?
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
  ip netns del "$ns_cli" 2>/dev/null || true
  ip netns del "$ns_srv" 2>/dev/null || true
  if [ $rc -ne 0 ]; then
    echo "== e2e serve failed (exit $rc); logs:"
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

fog=${FOG:?run through scripts/e2e}
need=()
command -v curl > /dev/null || need+=(curl)
command -v udhcpc > /dev/null || need+=(udhcpc)
command -v tftp > /dev/null || need+=(tftp-hpa)
[ -f /usr/lib/ipxe/undionly.kpxe ] || need+=(ipxe)
[ -f /usr/lib/shim/shimx64.efi.signed ] || need+=(shim-signed)
[ -f /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed ] || need+=(grub-efi-amd64-signed)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > "$work/apt.log" 2>&1
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits (bounded) until URL answers.
wait_http() {
  local url=$1 pid=$2
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "$url" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "fog serve exited early"; return 1; }
    sleep 0.1
  done
  echo "no answer from $url within 10 s"; return 1
}
# Waits (bounded) until PID exits; its exit code in $exit_code.
wait_exit() {
  local pid=$1 limit=$2
  for _ in $(seq 1 $((limit * 10))); do
    if ! kill -0 "$pid" 2>/dev/null; then
      set +e; wait "$pid"; exit_code=$?; set -e
      return 0
    fi
    sleep 0.1
  done
  echo "pid $pid still running after $limit s"; return 1
}

boot=$work/boot
mkdir -p "$boot/debian"
head -c $((32 << 20)) /dev/urandom > "$boot/debian/initrd.img"
echo "secret" > "$work/secret"
ln -s "$work/secret" "$boot/escape"

echo "== fog bootfiles install"
"$fog" bootfiles install --boot-dir "$boot" > "$work/bootfiles.log" 2>&1
cmp /usr/lib/ipxe/undionly.kpxe "$boot/undionly.kpxe"
cmp /usr/lib/ipxe/ipxe.efi "$boot/ipxe.efi"
cmp /usr/lib/shim/shimx64.efi.signed "$boot/shimx64.efi"
cmp /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed "$boot/grubx64.efi"
grep -q "unchanged undionly.kpxe" <("$fog" bootfiles install --boot-dir "$boot" 2>&1)

echo "== fog config check"
"$fog" config check configs/node-full.toml > "$work/check.log" 2>&1
grep -q "pool 10.99.0.0/24: 10.99.0.100-10.99.0.200" "$work/check.log"
printf '[http]\nlisten = "0.0.0.0:8080"\nlisen = 1\n' > "$work/bad.toml"
set +e; "$fog" config check "$work/bad.toml" > "$work/bad.log" 2>&1; rc=$?; set -e
[ $rc = 2 ] && grep -q "line 3: unknown field \`lisen\`" "$work/bad.log"

echo "== fog serve --dhcp off on loopback: HTTP and TFTP"
http_port=$(free_port)
tftp_port=$(free_port)
"$fog" serve --address 127.0.0.1 --dhcp off --boot-dir "$boot" --data-dir "$work" \
  --http-port "$http_port" --tftp-port "$tftp_port" > "$work/serve.log" 2>&1 &
serve_pid=$!; pids+=("$serve_pid")
base=http://127.0.0.1:$http_port
wait_http "$base/boot.ipxe" "$serve_pid"
curl -sf "$base/boot.ipxe" | grep -q "chain --autofree $base/boot/\${netX/mac}"
curl -sf "$base/boot/52:54:00:12:34:56" | grep -q "choose --timeout 5000 --default local"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/boot/52:54:00:12:34")" = 400 ]
curl -sf -D "$work/headers.txt" -o "$work/whole.img" "$base/debian/initrd.img"
cmp "$work/whole.img" "$boot/debian/initrd.img"
grep -qi "^content-length: 33554432" "$work/headers.txt"
curl -sf -r 1000000-9999999 -D "$work/range-headers.txt" -o "$work/range.img" "$base/debian/initrd.img"
grep -q "^HTTP/1.1 206" "$work/range-headers.txt"
cmp "$work/range.img" <(tail -c +1000001 "$boot/debian/initrd.img" | head -c 9000000)
for bad in "/../secret" "/%2e%2e/secret" "/escape"; do
  code=$(curl -s --path-as-is -o "$work/bad.out" -w '%{http_code}' "$base$bad")
  [ "$code" = 404 ] || { echo "$bad gave $code"; exit 1; }
  if grep -q secret "$work/bad.out"; then echo "$bad leaked the file"; exit 1; fi
done
curl -s --tftp-blksize 1428 -o "$work/tftp.img" "tftp://127.0.0.1:$tftp_port/debian/initrd.img"
cmp "$work/tftp.img" "$boot/debian/initrd.img"

echo "== a taken port: exit 2, one line naming the port"
set +e
"$fog" serve --address 127.0.0.1 --dhcp off --boot-dir "$boot" --http-port "$http_port" --no-tftp \
  > "$work/taken.log" 2>&1
rc=$?
set -e
[ $rc = 2 ] || { echo "exit code $rc on a taken port"; exit 1; }
grep -q "^fog: http: cannot listen on tcp 127.0.0.1:$http_port: port $http_port is already in use" "$work/taken.log"

echo "== SIGTERM stops it within seconds"
kill -TERM "$serve_pid"
wait_exit "$serve_pid" 8
[ "$exit_code" = 0 ] || { echo "fog serve exited $exit_code after SIGTERM"; exit 1; }
grep -q "SIGTERM: stopping" "$work/serve.log"
if curl -s -o /dev/null "$base/boot.ipxe"; then echo "still serving after SIGTERM"; exit 1; fi

echo "== the node in a namespace pair: DHCP full, TFTP, HTTP"
ip netns add "$ns_srv"; ip netns add "$ns_cli"
ip link add f40s0 type veth peer name f40c0
ip link set f40s0 netns "$ns_srv"; ip link set f40c0 netns "$ns_cli"
ip -n "$ns_srv" addr add 10.99.40.1/24 dev f40s0
for n in "$ns_srv" "$ns_cli"; do ip -n "$n" link set lo up; done
ip -n "$ns_srv" link set f40s0 up; ip -n "$ns_cli" link set f40c0 up
ip -n "$ns_cli" route add 255.255.255.255/32 dev f40c0
ip -n "$ns_srv" route add 255.255.255.255/32 dev f40s0
ip netns exec "$ns_srv" "$fog" serve --interface f40s0 --address 10.99.40.1 --dhcp full \
  --range 10.99.40.100-10.99.40.150 --boot-dir "$boot" --data-dir "$work" \
  > "$work/serve-ns.log" 2>&1 &
ns_pid=$!; pids+=("$ns_pid")
for _ in $(seq 1 100); do
  grep -q "fog serve: running" "$work/serve-ns.log" && break
  kill -0 "$ns_pid" 2>/dev/null || { echo "fog serve exited early"; exit 1; }
  sleep 0.1
done
cat > "$work/udhcpc.sh" <<'EOF'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr add "$ip/${mask:-24}" dev "$interface"
    echo "lease ip=$ip siaddr=$siaddr boot_file=$boot_file serverid=$serverid" ;;
esac
EOF
chmod +x "$work/udhcpc.sh"
ip netns exec "$ns_cli" timeout 30 udhcpc -i f40c0 -f -q -n -t 5 -T 1 -s "$work/udhcpc.sh" \
  -V "PXEClient:Arch:00000:UNDI:002001" -x 93:0000 > "$work/udhcpc.log" 2>&1
grep -Eq "lease ip=10\.99\.40\.(1[0-4][0-9]|150) siaddr=10\.99\.40\.1 boot_file=undionly.kpxe" "$work/udhcpc.log"
(cd "$work" && ip netns exec "$ns_cli" timeout 30 tftp -m binary 10.99.40.1 -c get undionly.kpxe tftp.kpxe)
cmp "$work/tftp.kpxe" "$boot/undionly.kpxe"
ip netns exec "$ns_cli" timeout 10 curl -sf http://10.99.40.1:8080/boot.ipxe > "$work/ns-boot.ipxe"
grep -q "chain --autofree http://10.99.40.1:8080/boot/\${netX/mac}" "$work/ns-boot.ipxe"
kill -TERM "$ns_pid"
wait_exit "$ns_pid" 8
[ "$exit_code" = 0 ] || { echo "fog serve (namespace) exited $exit_code after SIGTERM"; exit 1; }
echo "== serve e2e passed"
