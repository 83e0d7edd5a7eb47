#!/usr/bin/env bash
# The master's web pages in a real browser: Debian's Chromium (apt) driven by Playwright (PyPI,
# in the venv; no browser download), against a master seeded through the REST API. The test is
# scripts/lib/web_e2e.py; screenshots of each page go to FOG_WEB_SHOTS (default
# target/web-screenshots), printed at the end. The master runs on loopback and is stopped by
# trap; its log is printed on failure.
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/fog-e2e-web.XXXXXX)
master_pid=
cleanup() {
  local rc=$?
  [ -n "$master_pid" ] && kill "$master_pid" 2> /dev/null && wait "$master_pid" 2> /dev/null
  if [ $rc -ne 0 ]; then
    echo "== e2e web failed (exit $rc); logs:"
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 80 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

if [ ! -x /usr/bin/chromium ]; then
  echo "== apt-get install chromium"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq chromium > "$work/apt.log" 2>&1 \
    || { apt-get update -qq > "$work/apt.log" 2>&1 \
      && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq chromium >> "$work/apt.log" 2>&1; }
fi
venv=$PWD/.venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "playwright==1.65.3"

port=18393
base="http://127.0.0.1:$port"
"${FOG:?set FOG to the fog binary}" master --data-dir "$work/master" --listen "127.0.0.1:$port" > "$work/master.log" 2>&1 &
master_pid=$!
for _ in $(seq 1 100); do
  curl -sf "$base/api/v1/health" > /dev/null && break
  sleep 0.1
done
curl -sf "$base/api/v1/health" > /dev/null || { echo "the master did not answer within 10 s"; exit 1; }
grep -q "web sign-in: user admin" "$work/master.log" || { echo "the first start printed no admin password"; exit 1; }
[ "$(stat -c %a "$work/master/admin-password")" = 600 ] || { echo "admin-password is not mode 0600"; exit 1; }

shots=${FOG_WEB_SHOTS:-$PWD/target/web-screenshots}
timeout 600 "$venv/bin/python" scripts/lib/web_e2e.py "$base" "$work/master" "$shots" 2>&1 | tee "$work/browser.log"
echo "== screenshots in $shots"
