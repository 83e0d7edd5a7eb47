#!/usr/bin/env bash
# The agent benchmark: a whole deploy task through `fog master` + `fog agent run` over HTTP on
# loopback, side by side with FOG Project's path (partclone image, zstd, plain HTTP) in the same
# run, reported as a ratio.
#
#   sudo benches/agent.sh                       # 1 GiB ext4 image, ~512 MiB of files
#   sudo BENCH_SIZE_MB=2048 benches/agent.sh    # larger
#
# fog:  `fog image capture` into DATA_DIR/store, `fog master --data-dir DATA_DIR` serving it, a
#       node, a host with a MAC, a deploy task; timed: `fog agent run --once --disk TARGET` from
#       its first check-in to its check-out (slot, manifest, frames in 4 MiB batches, progress
#       reports every 2 s, inventory, fsync of the target).
# peer: `partclone.ext4 -c | zstd -3 -T0` into a file served by `python3 -m http.server` on
#       127.0.0.1; timed: `curl URL | zstd -dc | partclone.restore -O TARGET` (no check-in, no
#       progress reports to anyone: the bare pipeline).
# Both targets must pass `e2fsck -fn` and hold the same file tree as the source (extracted with
# `debugfs rdump`, compared with `diff -r`), or the run fails.
#
# Environment:
#   BENCH_SIZE_MB        filesystem size in MiB (default 1024); the generated tree fills about half
#   BENCH_REPEAT         deploys of each side, alternating which goes first (default 3; median counts)
#   BENCH_DIR            parent of the work directory, and where agent.json goes
#                        (default: a temporary directory under /tmp, JSON in target/bench/)
#   BENCH_STEP_TIMEOUT   seconds allowed for any one step (default 1800)
#   BENCH_PORT           first of the two loopback ports used (default 18090: master; +1: http.server)
#   BENCH_KEEP=1         keep the work directory
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
size_mb=${BENCH_SIZE_MB:-1024}
limit=${BENCH_STEP_TIMEOUT:-1800}
repeat=${BENCH_REPEAT:-3}
port=${BENCH_PORT:-18090}
target_dir=${CARGO_TARGET_DIR:-$root/target}
[[ $size_mb =~ ^[0-9]+$ ]] && [ "$size_mb" -ge 64 ] || { echo "BENCH_SIZE_MB must be an integer >= 64" >&2; exit 2; }
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPEAT must be a positive integer" >&2; exit 2; }
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1024 ] && [ "$port" -lt 65535 ] || { echo "BENCH_PORT must be a port >= 1024" >&2; exit 2; }

if [ -n "${BENCH_DIR:-}" ]; then
  mkdir -p "$BENCH_DIR"
  work=$(mktemp -d "$BENCH_DIR/agent-work.XXXXXX")
  result_json=$BENCH_DIR/agent.json
else
  work=$(mktemp -d /tmp/fog-bench-agent.XXXXXX)
  result_json=$target_dir/bench/agent.json
fi
mkdir -p "$work/logs" "$(dirname "$result_json")"
pids=() # background processes this script started (killed by PID on exit)
cleanup() {
  local rc=$? pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2> /dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2> /dev/null || true
  done
  if [ $rc -ne 0 ]; then
    echo "agent bench: ERROR (exit $rc); last lines of the newest logs:" >&2
    while IFS= read -r f; do
      echo "--- $f" >&2
      tail -n 15 "$f" >&2
    done < <(ls -t "$work"/logs/* 2> /dev/null | head -n 4)
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    echo "work directory kept: $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '== %s\n' "$*"; }
die() { echo "agent bench: ERROR: $*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------
need=(partclone.ext4:partclone partclone.restore:partclone zstd:zstd curl:curl
      mkfs.ext4:e2fsprogs debugfs:e2fsprogs e2fsck:e2fsprogs python3:python3)
missing=()
for pair in "${need[@]}"; do
  command -v "${pair%%:*}" > /dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root so the script can install them"
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive timeout "$limit" apt-get install -y "${missing[@]}" > "$work/logs/apt.log" 2>&1 \
    || die "apt-get install -y ${missing[*]} failed"
fi
[ "$(id -u)" = 0 ] || echo "warning: not root: the page cache cannot be dropped between runs" >&2

need_mb=$((size_mb * 5))
free_mb=$(df -Pm "$work" | awk 'NR == 2 { print $4 }')
[ "$free_mb" -ge "$need_mb" ] || die "$work has ${free_mb} MiB free, the run needs about ${need_mb} MiB"

# The same cargo command as api.sh: one feature set, so the two scripts share one build of fogcore.
say "building fog (cargo build --release -p fog-cli -p benches --bin fog --bin api_load)"
(cd "$root" && timeout "$limit" "${CARGO:-cargo}" build --release -p fog-cli -p benches --bin fog --bin api_load) \
  > "$work/logs/build.log" 2>&1 || die "cargo build --release -p fog-cli failed"
fog=$target_dir/release/fog
[ -x "$fog" ] || die "$fog not found after the build"

# --- helpers (as in imaging.sh) ------------------------------------------------------------
drop_caches() {
  sync
  { echo 3 > /proc/sys/vm/drop_caches; } 2> /dev/null || true
}
declare -A T # step name -> wall seconds
timed() { # timed NAME CMD...: cold page cache, under timeout; output in logs/NAME.{out,err}
  local name=$1 t0 t1
  shift
  drop_caches
  t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$work/logs/$name.out" 2> "$work/logs/$name.err" || die "step $name failed or timed out: $*"
  t1=$(date +%s.%N)
  T[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
}
step() { # step NAME CMD...: untimed, under timeout; output in logs/NAME.log
  local name=$1
  shift
  timeout "$limit" "$@" > "$work/logs/$name.log" 2>&1 || die "step $name failed or timed out: $*"
}
jget() { python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v[int(k) if isinstance(v, list) else k]
print(v)' "$@"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
wait_http() { # wait_http URL PID: until URL answers (10 s), or the process died
  local i
  for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null "$1" 2> /dev/null && return 0
    kill -0 "$2" 2> /dev/null || die "the server for $1 exited"
    sleep 0.1
  done
  die "$1 did not answer within 10 s"
}
port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

details=$work/details.tsv
: > "$details"
detail() { printf '%s\t%s\n' "$1" "$2" >> "$details"; }
detail loadavg_at_start "$(cut -d' ' -f1-3 /proc/loadavg)"

# --- data ----------------------------------------------------------------------------------
say "generating the data: ${size_mb} MiB ext4 image about half full"
export E2FSPROGS_FAKE_TIME=1717200000
step gen python3 "$root/benches/gen_tree.py" tree "$work/tree" --mb "$size_mb"
step mkfs mkfs.ext4 -q -F -U 6f0c5e2a-1b7d-4c1e-9a55-0d1e2f3a4b5c -E hash_seed=3c1d0b7e-8a2f-4e6d-b1c9-5f4a3e2d1c0b \
  -d "$work/tree" "$work/disk.img" "${size_mb}M"
rm -rf "$work/tree"
detail generated "$(cat "$work/logs/gen.log")"
disk_size=$(stat -c %s "$work/disk.img")
# The reference tree, read back out of the image the same way as the targets'.
mkdir "$work/src.tree"
step rdump_src debugfs -R "rdump / $work/src.tree" "$work/disk.img"

say "storing the image: fog image capture into the master's store; partclone.ext4 | zstd -3 -T0 into a file"
mkdir -p "$work/master" "$work/www"
step fog_capture "$fog" --store "$work/master/store" --json image capture "$work/disk.img" --name base
step pcl_capture bash -o pipefail -c 'partclone.ext4 -c -q -f 1 -s "$1" -o - -L "$2" | zstd -3 -T0 -q > "$3"' _ \
  "$work/disk.img" "$work/logs/pcl_capture.partclone" "$work/www/base.pcl.zst"
detail fog_stored_bytes "$(jget "$work/logs/fog_capture.log" data_bytes 2> /dev/null || echo '?')"
detail pcl_zst_bytes "$(stat -c %s "$work/www/base.pcl.zst")"

# --- servers -------------------------------------------------------------------------------
port_free "$port" || die "port $port is taken (set BENCH_PORT)"
port_free $((port + 1)) || die "port $((port + 1)) is taken (set BENCH_PORT)"
master=http://127.0.0.1:$port
say "starting fog master on $master and python3 -m http.server on 127.0.0.1:$((port + 1))"
RUST_LOG=warn "$fog" master --data-dir "$work/master" --listen "127.0.0.1:$port" > "$work/logs/master.log" 2>&1 &
pids+=($!)
wait_http "$master/api/v1/health" "${pids[-1]}"
(cd "$work/www" && exec python3 -m http.server --bind 127.0.0.1 $((port + 1))) > "$work/logs/http.log" 2>&1 &
pids+=($!)
peer_url=http://127.0.0.1:$((port + 1))/base.pcl.zst
wait_http "$peer_url" "${pids[-1]}"
grep -q "image store: $work/master/store" "$work/logs/master.log" || die "fog master does not serve $work/master/store"
admin=$(tr -d '\n' < "$work/master/admin-token")
export FOG_MASTER=$master
step image_record curl -fsS -X POST -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
  -d '{"name": "base"}' "$master/api/v1/images"
FOG_TOKEN=$admin step node "$fog" --json node add site --url "$master" --max-clients 10
node_token=$(jget "$work/logs/node.log" token)
mac=52:54:00:fb:00:01
FOG_TOKEN=$admin step host "$fog" --json host add pc1 --mac "$mac" --image base --node site

# --- deploys -------------------------------------------------------------------------------
fog_once() { # fog_once RUN: a deploy task for pc1, then the agent runs it (timed)
  rm -f "$work/fog_out.img"
  FOG_TOKEN=$admin step "task_$1" "$fog" --json task deploy pc1
  local id
  id=$(jget "$work/logs/task_$1.log" id)
  timed "fog_$1" "$fog" --json agent run --master "$master" --token "$node_token" --mac "$mac" \
    --disk "$work/fog_out.img" --once --no-power
  [ "$(jget "$work/logs/fog_$1.out" ok)" = True ] || die "agent run $1 did not report ok"
  FOG_TOKEN=$admin step "show_$1" "$fog" --json task show "$id"
  [ "$(jget "$work/logs/show_$1.log" task state)" = complete ] || die "task $id is not complete on the master"
  detail "fog_agent_seconds_$1" "$(jget "$work/logs/fog_$1.out" seconds)"
}
pcl_once() { # pcl_once RUN: the target exists with the disk's size, as partclone.restore -O wants
  rm -f "$work/pcl_out.img"
  truncate -s "$disk_size" "$work/pcl_out.img"
  timed "pcl_$1" bash -o pipefail -c 'curl -fsS "$1" | zstd -dc -q | partclone.restore -q -f 1 -s - -O "$2" -L "$3"' _ \
    "$peer_url" "$work/pcl_out.img" "$work/logs/pcl_restore.partclone"
}
say "deploy: fog agent (whole task) vs curl | zstd -dc | partclone.restore ($repeat runs each, alternating)"
for ((r = 1; r <= repeat; r++)); do
  if ((r % 2)); then fog_once $r; pcl_once $r; else pcl_once $r; fog_once $r; fi
done
fog_med=$(for ((r = 1; r <= repeat; r++)); do echo "${T[fog_$r]}"; done | median)
pcl_med=$(for ((r = 1; r <= repeat; r++)); do echo "${T[pcl_$r]}"; done | median)
detail runs_fog "$(for ((r = 1; r <= repeat; r++)); do echo "${T[fog_$r]}"; done | paste -sd,)"
detail runs_pcl "$(for ((r = 1; r <= repeat; r++)); do echo "${T[pcl_$r]}"; done | paste -sd,)"

# --- checks on the last targets ------------------------------------------------------------
check_target() { # check_target NAME IMAGE: e2fsck clean and the same files as the source
  timeout "$limit" e2fsck -fn "$2" > "$work/logs/fsck_$1.log" 2>&1 || { echo UNCLEAN; return; }
  mkdir "$work/$1.tree"
  timeout "$limit" debugfs -R "rdump / $work/$1.tree" "$2" > "$work/logs/rdump_$1.log" 2>&1 || { echo "rdump failed"; return; }
  if timeout "$limit" diff -r --no-dereference "$work/src.tree" "$work/$1.tree" > "$work/logs/diff_$1.log" 2>&1; then
    echo clean
  else
    echo "files differ"
  fi
  rm -rf "${work:?}/$1.tree"
}
say "checking both targets: e2fsck -fn, file trees (debugfs rdump + diff -r) against the source"
check_fog=$(check_target fog "$work/fog_out.img")
check_pcl=$(check_target pcl "$work/pcl_out.img")
same_fog=no same_pcl=no
cmp -s "$work/disk.img" "$work/fog_out.img" && same_fog=yes
cmp -s "$work/disk.img" "$work/pcl_out.img" && same_pcl=yes
detail files_in_tree "$(find "$work/src.tree" -type f | wc -l)"
detail loadavg_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"
detail cpus "$(nproc)"
detail versions "$(partclone.ext4 -v 2>&1 | awk 'NR == 1 { print $1, $3 }'); zstd $(zstd -qV); $(curl --version | head -n 1 | cut -d' ' -f1-2); $(python3 --version); fog $(git -C "$root" rev-parse --short HEAD 2> /dev/null || echo '?') (work tree may differ)"

# --- report --------------------------------------------------------------------------------
python3 - "$details" "$result_json" "$size_mb" "$fog_med" "$pcl_med" "$check_fog" "$check_pcl" "$same_fog" "$same_pcl" << 'PY'
import json, sys, time

details_path, out_path, size_mb, fog, pcl, check_fog, check_pcl, same_fog, same_pcl = sys.argv[1:10]
fog, pcl = float(fog), float(pcl)
details = {}
for line in open(details_path):
    k, v = line.rstrip("\n").split("\t", 1)
    details[k] = v
ratio = pcl / fog
rows = [
    ("deploy time (median)", "%.2f s" % fog, "curl|zstd|partclone", "%.2f s" % pcl, "%.3f (peer/fog)" % ratio, ">= 1.5",
     "PASS" if ratio >= 1.5 else "FAIL"),
    ("target e2fsck -fn + files == source", check_fog, "curl|zstd|partclone", check_pcl, "-", "-",
     "PASS" if check_fog == check_pcl == "clean" else "FAIL"),
    ("target == source, byte for byte", same_fog, "curl|zstd|partclone", same_pcl, "-", "-", "info"),
]
report = {
    "bench": "agent", "size_mb": int(size_mb), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "deploy_seconds_fog": fog, "deploy_seconds_peer": pcl, "ratio_peer_over_fog": round(ratio, 4),
    "target": "ratio >= 1.5", "met": ratio >= 1.5, "check_fog": check_fog, "check_peer": check_pcl,
    "identical_fog": same_fog, "identical_peer": same_pcl, "details": dict(sorted(details.items())),
}
with open(out_path, "w") as fh:
    json.dump(report, fh, indent=2)
    fh.write("\n")
head = ("metric", "fog", "peer", "peer value", "ratio", "target", "result")
table = [head] + rows
widths = [max(len(r[i]) for r in table) for i in range(len(head))]
print()
print("agent benchmark, %s MiB ext4 image (%s); load average %s at start, %s at end"
      % (size_mb, details.get("generated", ""), details.get("loadavg_at_start"), details.get("loadavg_at_end")))
print("fog: whole task (check-in, slot, deploy over HTTP, progress, check-out); peer: the bare pipeline")
for n, r in enumerate(table):
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if n == 0:
        print("  ".join("-" * w for w in widths))
print("runs: fog %s s; peer %s s" % (details["runs_fog"], details["runs_pcl"]))
print()
print("results: %s" % out_path)
print("all targets met" if ratio >= 1.5 else "TARGETS MISSED (1): deploy_time")
PY
[ "$check_fog" = clean ] && [ "$check_pcl" = clean ] || die "a deployed target is not clean or its files differ from the source: see the table"
