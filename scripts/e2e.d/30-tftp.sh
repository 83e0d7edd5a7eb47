#!/usr/bin/env bash
# TFTP with real clients on loopback: tftp-hpa (no options, 512-byte blocks: the block number
# rolls over), atftp (blksize, windowsize) and curl (tsize, blksize, timeout) fetch a 32 MiB file
# from fog's TFTP server, hashes equal; traversal attempts (`..`, `/../..`, a symlink out of the
# root) are refused with ERROR 2, a missing file with ERROR 1; SIGTERM stops the server cleanly.
# The server is `fog serve` with TFTP only.
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/fog-e2e-tftp.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    echo "== e2e tftp failed (exit $rc); logs:"
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

echo "== clients: tftp-hpa, atftp, curl"
export DEBIAN_FRONTEND=noninteractive
missing=()
command -v tftp > /dev/null || missing+=(tftp-hpa)
command -v atftp > /dev/null || missing+=(atftp)
command -v curl > /dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  timeout 600 apt-get install -y "${missing[@]}" > "$work/apt.log" 2>&1 \
    || { apt-get update > "$work/apt.log" 2>&1 && timeout 600 apt-get install -y "${missing[@]}" >> "$work/apt.log" 2>&1; }
fi

echo "== server"
fog=${FOG:?run through scripts/e2e}
root=$work/root
mkdir -p "$root/sub"
head -c $((32 * 1024 * 1024)) /dev/urandom > "$root/big.bin"
echo "inside" > "$root/sub/small.txt"
echo "outside the root" > "$work/secret"
ln -s /etc/passwd "$root/escape"
ln -s "$work" "$root/updir"
want=$(sha256sum < "$root/big.bin")

cat > "$work/fog.toml" <<EOF
[node]
data_dir = "$work"
boot_dir = "$root"
[http]
enabled = false
[tftp]
listen = "127.0.0.1:0"
EOF
"$fog" serve --config "$work/fog.toml" > "$work/server.log" 2>&1 &
pids+=($!)
server_pid=$!
port=
for _ in $(seq 1 100); do
  port=$(sed -n 's/.*fog serve: running.*tftp="127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$work/server.log")
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || { echo "server exited"; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "server did not start within 10 s"; exit 1; }
echo "   listening on 127.0.0.1:$port"

# check NAME FILE: FILE must be the 32 MiB file.
check() {
  local got
  got=$(sha256sum < "$2")
  [ "$got" = "$want" ] || { echo "$1: hash differs ($(stat -c %s "$2") bytes)"; exit 1; }
  echo "   $1: ok"
}

echo "== 32 MiB fetches"
timeout 120 tftp -m binary 127.0.0.1 "$port" -c get big.bin "$work/hpa.bin" > "$work/tftp-hpa.log" 2>&1
check "tftp-hpa (512-byte blocks, rollover)" "$work/hpa.bin"
timeout 120 atftp --option "blksize 1428" --option "windowsize 16" --get -r big.bin -l "$work/atftp.bin" \
  127.0.0.1 "$port" > "$work/atftp.log" 2>&1
check "atftp blksize 1428 windowsize 16" "$work/atftp.bin"
timeout 120 atftp --option "tsize 0" --option "blksize 512" --get -r /big.bin -l "$work/atftp512.bin" \
  127.0.0.1 "$port" > "$work/atftp512.log" 2>&1
check "atftp tsize blksize 512" "$work/atftp512.bin"
timeout 120 curl -sS --tftp-blksize 1428 -o "$work/curl.bin" "tftp://127.0.0.1:$port/big.bin" > "$work/curl.log" 2>&1
check "curl blksize 1428 (tsize, timeout)" "$work/curl.bin"
timeout 120 curl -sS -o "$work/curl512.bin" "tftp://127.0.0.1:$port/big.bin" > "$work/curl512.log" 2>&1
check "curl default block size" "$work/curl512.bin"

echo "== refusals"
# refused CLIENT-ARGS...: curl must fail with "permission" (ERROR 2) and write nothing useful.
refused_curl() {
  local name=$1 rc=0
  rm -f "$work/r.out"
  timeout 30 curl -sS --path-as-is -o "$work/r.out" "tftp://127.0.0.1:$port/$name" > "$work/refused.log" 2>&1 || rc=$?
  # curl: 69 = TFTP permission problem (ERROR 2), 68 = file not found (ERROR 1).
  [ "$rc" = "${2:-69}" ] || { echo "curl $name: exit $rc, expected ${2:-69}"; cat "$work/refused.log"; exit 1; }
  if [ -s "$work/r.out" ] && grep -q "root:" "$work/r.out"; then echo "curl $name: got /etc/passwd"; exit 1; fi
  echo "   curl $name: refused (exit $rc)"
}
refused_curl "../etc/passwd"
refused_curl "/../../etc/passwd"
refused_curl "..%5C..%5Cetc%5Cpasswd"
refused_curl "escape"
refused_curl "updir/secret"
refused_curl "missing.efi" 68
timeout 30 tftp -m binary 127.0.0.1 "$port" -c get ../etc/passwd "$work/hpa-trav" > "$work/hpa-trav.log" 2>&1 || true
grep -q "Error code 2" "$work/hpa-trav.log" || { echo "tftp-hpa ../etc/passwd not refused"; cat "$work/hpa-trav.log"; exit 1; }
echo "   tftp-hpa ../etc/passwd: refused"
rc=0
timeout 30 atftp --get -r /../../etc/passwd -l "$work/atftp-trav" 127.0.0.1 "$port" > "$work/atftp-trav.log" 2>&1 || rc=$?
[ "$rc" != 0 ] && ! grep -qs "root:" "$work/atftp-trav" || { echo "atftp /../../etc/passwd not refused"; exit 1; }
echo "   atftp /../../etc/passwd: refused"
timeout 30 curl -sS -o "$work/small.txt" "tftp://127.0.0.1:$port/sub/small.txt" > "$work/small.log" 2>&1
grep -q "^inside$" "$work/small.txt"
echo "   still serving after refusals"

echo "== SIGTERM"
kill -TERM "$server_pid"
for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$server_pid" 2>/dev/null; then echo "server still running 5 s after SIGTERM"; exit 1; fi
wait "$server_pid"
echo "=== tftp e2e passed"
