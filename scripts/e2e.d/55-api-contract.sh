#!/usr/bin/env bash
# The master's API against its own OpenAPI document, as a new user's tools read it: the document
# passes openapi-spec-validator, then schemathesis (PyPI, in a venv) drives every route with an
# admin token, bounded (FOG_API_EXAMPLES per route, default 30, and a 10-minute cap), with every
# check on: no 5xx, every answer as documented, no schema-valid request refused with a 400, no
# schema-violating one accepted. A fixed seed keeps CI repeatable (FOG_API_SEED to vary it).
# Then a body over the limit is a 413 with the error body. The master runs on loopback only and
# is stopped by trap; its log is printed on failure.
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/fog-e2e-api.XXXXXX)
master_pid=
tls_pid=
cleanup() {
  local rc=$?
  for pid in $master_pid $tls_pid; do kill "$pid" 2> /dev/null && wait "$pid" 2> /dev/null; done
  if [ $rc -ne 0 ]; then
    echo "== e2e api-contract failed (exit $rc); logs:"
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 80 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

venv=$PWD/.venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==4.32.5" "openapi-spec-validator==0.9.0"

port=18391
base="http://127.0.0.1:$port"
"${FOG:?set FOG to the fog binary}" master --data-dir "$work/master" --listen "127.0.0.1:$port" > "$work/master.log" 2>&1 &
master_pid=$!
for _ in $(seq 1 100); do
  curl -sf "$base/api/v1/health" > /dev/null && break
  sleep 0.1
done
curl -sf "$base/api/v1/health" > /dev/null || { echo "the master did not answer within 10 s"; exit 1; }
token=$(cat "$work/master/admin-token")

echo "== openapi-spec-validator"
curl -sf "$base/api/v1/openapi.json" > "$work/openapi.json"
"$venv/bin/openapi-spec-validator" "$work/openapi.json"

echo "== schemathesis, ${FOG_API_EXAMPLES:-30} examples per route"
if ! timeout 600 "$venv/bin/st" --config-file scripts/lib/schemathesis.toml run "$base/api/v1/openapi.json" \
  -H "Authorization: Bearer $token" --max-examples "${FOG_API_EXAMPLES:-30}" --seed "${FOG_API_SEED:-1}" \
  --request-timeout 30 > "$work/schemathesis.log" 2>&1; then
  echo "schemathesis found failures:"
  cat "$work/schemathesis.log"
  exit 1
fi
grep -E "generated|passed" "$work/schemathesis.log" | tail -n 2

echo "== a body over the limit: 413 with the error body"
head -c $((3 * 1024 * 1024)) /dev/zero | tr '\0' ' ' > "$work/big.json"
status=$(curl -s -o "$work/413.json" -w '%{http_code}' -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' --data-binary @"$work/big.json" "$base/api/v1/hosts")
[ "$status" = 413 ] || { echo "a 3 MiB body answered $status"; cat "$work/413.json"; exit 1; }
grep -q '"code":"too_large"' "$work/413.json" || { echo "no too_large code:"; cat "$work/413.json"; exit 1; }
echo "== HTTPS: a self-signed master, trusted by curl --cacert and by the CLI's pinned fingerprint"
tls_port=18392
"$FOG" master --data-dir "$work/tls" --listen "127.0.0.1:$tls_port" --tls-self-signed > "$work/tls-master.log" 2>&1 &
tls_pid=$!
for _ in $(seq 1 100); do
  curl -sf --cacert "$work/tls/tls-cert.pem" "https://127.0.0.1:$tls_port/api/v1/health" > /dev/null && break
  sleep 0.1
done
curl -sf --cacert "$work/tls/tls-cert.pem" "https://127.0.0.1:$tls_port/api/v1/health" | grep -q '"ok":true' \
  || { echo "curl --cacert could not get /api/v1/health over HTTPS"; exit 1; }
if curl -sf "https://127.0.0.1:$tls_port/api/v1/health" > /dev/null 2>&1; then
  echo "curl trusted the self-signed certificate without --cacert"; exit 1
fi
fingerprint=$(sed -n 's/^TLS SHA-256 fingerprint.*: //p' "$work/tls-master.log")
[ -n "$fingerprint" ] || { echo "the master printed no fingerprint"; exit 1; }
tls_token=$(cat "$work/tls/admin-token")
FOG_MASTER="https://127.0.0.1:$tls_port" FOG_TOKEN=$tls_token "$FOG" --master-fingerprint "$fingerprint" \
  host add pc-tls --mac 52:54:00:00:77:01 > /dev/null
wrong=$(printf '%s' "$fingerprint" | tr '0-9A-F' '1-9A-F0')
if FOG_MASTER="https://127.0.0.1:$tls_port" FOG_TOKEN=$tls_token "$FOG" --master-fingerprint "$wrong" \
  host rm pc-tls > "$work/wrong-pin.out" 2>&1; then
  echo "a wrong pinned fingerprint was accepted"; exit 1
fi
grep -q "not the pinned" "$work/wrong-pin.out" || { echo "no clear error for a wrong pin:"; cat "$work/wrong-pin.out"; exit 1; }
FOG_MASTER="https://127.0.0.1:$tls_port" FOG_TOKEN=$tls_token "$FOG" --master-ca "$work/tls/tls-cert.pem" host show pc-tls \
  | grep -q pc-tls || { echo "the host is gone or the CA file was not trusted"; exit 1; }
echo "== api-contract e2e passed"
