#!/usr/bin/env bash
# The control plane's database tests on PostgreSQL: Debian's postgresql, a throwaway cluster in a
# temp dir listening only on a unix socket there, `cargo test --test it -- control:: web::` with
# FOG_TEST_POSTGRES_URL pointing at it (each test makes its own database), then the cluster is
# stopped and removed by trap, its log printed on failure.
set -euo pipefail
# A command that fails the part names itself and its line (scripts/e2e repeats it at the end);
# failures expected under `set +e` stay quiet.
trap 'case $- in *e*) echo "!! ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND (exit $?)" ;; esac' ERR
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/fog-e2e-pg.XXXXXX)
pg_bin=
cleanup() {
  local rc=$?
  if [ -n "$pg_bin" ] && [ -f "$work/data/postmaster.pid" ]; then
    su postgres -s /bin/sh -c "'$pg_bin/pg_ctl' -D '$work/data' -m immediate -w -t 20 stop" > /dev/null 2>&1 || true
  fi
  if [ $rc -ne 0 ]; then
    echo "== e2e control-postgres failed (exit $rc); logs:"
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 60 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

if ! ls /usr/lib/postgresql/*/bin/initdb > /dev/null 2>&1; then
  echo "== apt-get install postgresql"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql > "$work/apt.log" 2>&1
fi
pg_bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
id postgres > /dev/null 2>&1 || { echo "no postgres user after installing postgresql"; exit 1; }

echo "== a throwaway cluster on a unix socket in $work"
chown postgres "$work"
chmod 0755 "$work"
port=54329
su postgres -s /bin/sh -c "'$pg_bin/initdb' -D '$work/data' -A trust -U postgres" > "$work/initdb.log" 2>&1
su postgres -s /bin/sh -c "'$pg_bin/pg_ctl' -D '$work/data' -l '$work/postgres.log' -w -t 30 \
  -o \"-c listen_addresses='' -c unix_socket_directories='$work' -p $port -c fsync=off\" start" \
  > "$work/pg_ctl.log" 2>&1
for _ in $(seq 1 100); do
  [ -S "$work/.s.PGSQL.$port" ] && break
  sleep 0.1
done
[ -S "$work/.s.PGSQL.$port" ] || { echo "no socket within 10 s"; exit 1; }

echo "== control and web tests on PostgreSQL"
export FOG_TEST_POSTGRES_URL="postgres://postgres@localhost:$port/postgres?host=$work"
RUST_BACKTRACE=0 timeout 900 cargo test --locked -p fogcore --test it -- control:: web:: > "$work/test.log" 2>&1
grep "test result:" "$work/test.log"
# The tests ran on PostgreSQL too: each made a database there.
n=$(su postgres -s /bin/sh -c "'$pg_bin/psql' -h '$work' -p $port -At -c \"SELECT count(*) FROM pg_database WHERE datname LIKE 'fog_test_%'\"")
[ "$n" -ge 5 ] || { echo "only $n test databases on PostgreSQL"; exit 1; }
echo "== control-postgres e2e passed ($n test databases)"
