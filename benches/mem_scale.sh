#!/usr/bin/env bash
# The memory-at-scale benchmark (issue "bounded memory at real disk sizes"): peak memory (max RSS)
# and wall time of every store job at several sizes of unique, incompressible data, for the new fog
# binary and the old one (from before the change) side by side in the same run.
#
#   sudo benches/mem_scale.sh                            # 1, 4 and 16 GiB (needs ~3.2 x 16 GiB free)
#   sudo BENCH_SIZES="0.125 0.25" benches/mem_scale.sh   # quick run
#
# Columns: OLD with its fixed behaviour, NEW with its default budget (256 MiB), NEW with
# FOG_MEMORY_MIB=$BENCH_MEMORY_MIB (32) in the environment of each of its processes (client,
# master, agent), so the bound shows at sizes this machine can hold. Per size and column, each step
# its own process, timed by `/usr/bin/time -f '%e %M'` (the master's peak: VmHWM after writing 5 to
# its clear_refs before the step):
#   capture      fog --store S image capture SRC --name img --json
#   deploy       fog --store S image deploy img TARGET        (a new file; cmp'd with SRC at the
#                                                              smallest size, then deleted)
#   verify       fog --store S store verify
#   replicate    fog image replicate img --from S --to S2     (S2 deleted afterwards)
#   push         fog image replicate img --from S --to URL    (a fog master with an empty store)
#   pull         fog image replicate img --from URL --to S2   (a fog master serving S, --store S)
#   agent        fog agent run --once --disk SRC: a capture task into a master with an empty store
#   gc           fog image rm img (untimed); fog --store S store gc
# SRC is a raw disk image (no partition table: captured whole) of AES-CTR keystream, one seed per
# size. At most the source, one store and one other copy exist at a time; each column's stores
# are removed before the next column runs.
#
# Environment:
#   BENCH_SIZES          sizes in GiB, space-separated (default "1 4 16")
#   BENCH_MEMORY_MIB     the budget of the third column (default 32; 0: no third column)
#   FOG_NEW              the new binary (default target/release/fog, built if absent)
#   FOG_OLD              the old binary (default /tmp/fog-old; absent: the new one runs alone)
#   BENCH_DIR            parent of the work directory, on a real disk (default /var/tmp)
#   BENCH_STEP_TIMEOUT   seconds allowed for any one step (default 3600)
#   BENCH_PORT           loopback port of the master (default 18094)
#   BENCH_CMP_ALL=1      cmp each deployed target with the source at every size, not only the smallest
#   BENCH_DROP_CACHES=0  do not drop the page cache before each step (default: drop it, as root)
#   BENCH_KEEP=1         keep the work directory
# Results: target/bench/mem_scale.json and a table. Exit status non-zero when any step failed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
sizes_in=${BENCH_SIZES:-1 4 16}
small_mib=${BENCH_MEMORY_MIB:-32}
limit=${BENCH_STEP_TIMEOUT:-3600}
port=${BENCH_PORT:-18094}
parent=${BENCH_DIR:-/var/tmp}
fog_new=${FOG_NEW:-$target_dir/release/fog}
fog_old=${FOG_OLD:-/tmp/fog-old}
result_json=$target_dir/bench/mem_scale.json

die() { echo "mem_scale bench: ERROR: $*" >&2; exit 1; }
say() { printf '== %s\n' "$*"; }

# --- arguments -----------------------------------------------------------------------------
sizes=()
for s in $sizes_in; do
  if ! [[ $s =~ ^([0-9]+(\.[0-9]*)?|\.[0-9]+)$ ]] || ! awk -v s="$s" 'BEGIN { exit !(s > 0) }'; then
    echo "BENCH_SIZES: '$s' is not a positive number of GiB" >&2
    exit 2
  fi
  sizes+=("$s")
done
[ ${#sizes[@]} -gt 0 ] || { echo "BENCH_SIZES is empty" >&2; exit 2; }
mapfile -t sizes < <(printf '%s\n' "${sizes[@]}" | sort -g -u)
if ! [[ $small_mib =~ ^[0-9]+$ ]] || { [ "$small_mib" != 0 ] && [ "$small_mib" -lt 8 ]; }; then
  echo "BENCH_MEMORY_MIB must be 0 (no third column) or an integer >= 8" >&2
  exit 2
fi
[[ $limit =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_STEP_TIMEOUT must be a positive integer" >&2; exit 2; }
if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1024 ] || [ "$port" -gt 65535 ]; then
  echo "BENCH_PORT must be a port >= 1024" >&2
  exit 2
fi
# bytes of S GiB, a whole number of MiB (at least one)
size_bytes() { awk -v g="$1" 'BEGIN { m = int(g * 1024 + 0.5); if (m < 1) m = 1; printf "%.0f", m * 1048576 }'; }

# Only what this script sets reaches fog: no store, master, token or budget from the caller.
unset FOG_STORE FOG_MASTER FOG_TOKEN FOG_MEMORY_MIB FOG_DATABASE_URL FOG_MASTER_CA FOG_MASTER_FINGERPRINT

# --- tools and binaries ----------------------------------------------------------------------
[ "$(id -u)" = 0 ] || echo "warning: not root: the page cache cannot be dropped and tools cannot be installed" >&2
need=(/usr/bin/time:time openssl:openssl curl:curl python3:python3 cmp:diffutils timeout:coreutils)
missing=()
for pair in "${need[@]}"; do
  command -v "${pair%%:*}" > /dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root so the script can install them"
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive timeout "$limit" apt-get install -y "${missing[@]}" > /dev/null 2>&1 \
    || die "apt-get install -y ${missing[*]} failed"
fi

if [ ! -x "$fog_new" ]; then
  [ -z "${FOG_NEW:-}" ] || die "FOG_NEW=$fog_new is not an executable"
  say "building fog (cargo build --release --locked -p fog-cli -q)"
  (cd "$root" && timeout "$limit" "${CARGO:-cargo}" build --release --locked -p fog-cli -q) \
    || die "cargo build --release --locked -p fog-cli failed"
  [ -x "$fog_new" ] || die "$fog_new not found after the build"
fi
# columns: id, label, binary, FOG_MEMORY_MIB ('' = the binary's default)
col_ids=() col_labels=() col_bins=() col_mibs=()
add_col() { col_ids+=("$1"); col_labels+=("$2"); col_bins+=("$3"); col_mibs+=("$4"); }
if [ -x "$fog_old" ]; then
  add_col old "old" "$fog_old" ""
else
  cat >&2 << EOF
warning: no old binary at $fog_old (FOG_OLD): running the new one alone. To make one, from $root:
  git worktree add /tmp/fog-old-src b5824d9 && cargo build --release -p fog-cli --manifest-path /tmp/fog-old-src/Cargo.toml --target-dir /tmp/fog-old-target
  cp /tmp/fog-old-target/release/fog /tmp/fog-old
EOF
fi
add_col new "new" "$fog_new" ""
[ "$small_mib" = 0 ] || add_col "new_m$small_mib" "new($small_mib)" "$fog_new" "$small_mib"

# --- work directory --------------------------------------------------------------------------
mkdir -p "$parent" "$(dirname "$result_json")"
work=$(mktemp -d "$parent/fog-mem-scale.XXXXXX")
step_pid='' master_pid='' shown_log=''
cleanup() {
  local rc=$? pid
  for pid in $step_pid $master_pid; do
    kill "$pid" 2> /dev/null || true
  done
  for pid in $step_pid $master_pid; do
    wait "$pid" 2> /dev/null || true
  done
  if [ $rc -ne 0 ] && [ -z "$shown_log" ] && [ -n "$(ls -A "$work/logs" 2> /dev/null)" ]; then
    echo "mem_scale bench: ERROR (exit $rc); last lines of the newest logs:" >&2
    while IFS= read -r f; do
      echo "--- $f" >&2
      tail -n 20 "$f" >&2
    done < <(find "$work/logs" -type f -printf '%T@ %p\n' | sort -rn | head -n 3 | cut -d' ' -f2-)
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
mkdir -p "$work/logs" "$work/tmp" "$work/xdg"
# fog's temporary files (spooled manifests) and default store stay in the work directory
export TMPDIR=$work/tmp XDG_DATA_HOME=$work/xdg

fs_type=$(stat -f -c %T "$work")
if [ "$fs_type" = tmpfs ] || [ "$fs_type" = ramfs ]; then
  die "$parent is on $fs_type: the sources and stores would sit in memory; set BENCH_DIR to a directory on a disk"
fi
largest=${sizes[-1]}
need_kib=$(awk -v b="$(size_bytes "$largest")" 'BEGIN { printf "%.0f", b * 3.2 / 1024 }')
free_kib=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
[ "$free_kib" -ge "$need_kib" ] \
  || die "$parent has $((free_kib / 1048576)) GiB free; $largest GiB of unique data needs about $((need_kib / 1048576 + 1)) GiB (3.2 x: the source, a store and one more copy). Lower BENCH_SIZES or free some space"

# --- helpers ---------------------------------------------------------------------------------
drop_caches() {
  [ "${BENCH_DROP_CACHES:-1}" = 1 ] || return 0
  sync
  { echo 3 > /proc/sys/vm/drop_caches; } 2> /dev/null || true
}
# bounded OUT ERR CMD...: CMD under timeout, in the background so that a signal stops the run at once
bounded() {
  local out=$1 err=$2 rc=0
  shift 2
  timeout "$limit" "$@" > "$out" 2> "$err" &
  step_pid=$!
  wait "$step_pid" || rc=$?
  step_pid=''
  return $rc
}
# failed NAME RC CMD...: prints the step's output and stops the run
failed() {
  local name=$1 rc=$2 f
  shift 2
  shown_log=1
  {
    echo "mem_scale bench: ERROR: step $name ($size GiB, ${col_labels[$c]}) exited with $rc$([ "$rc" = 124 ] && echo ": timed out after $limit s"): $*"
    for f in "$work/logs/$name".*; do
      [ -s "$f" ] || continue
      echo "--- $f (last 40 lines)"
      tail -n 40 "$f"
    done
  } >&2
  exit 1
}
# step NAME CMD...: an unmeasured step (bounded); output in logs/NAME.{out,err}
step() {
  local name=$1 rc=0
  shift
  bounded "$work/logs/$name.out" "$work/logs/$name.err" "$@" || rc=$?
  [ $rc = 0 ] || failed "$name" "$rc" "$@"
}
results=$work/results.tsv
details=$work/details.tsv
: > "$results"
: > "$details"
detail() { printf '%s\t%s\n' "$1" "$2" >> "$details"; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$size" "${col_ids[$c]}" "$2" "$3" >> "$results"; } # op secs kib
# measure OP CMD...: one process, cold cache, bounded, under /usr/bin/time; with a master running,
# also the master's peak over the step (row OP.master). A failure of the old binary is reported
# (its row shows "?", the reason goes to the details) and the run goes on: before the change it
# refused manifests over 64 MiB (push and agent capture past ~15 GiB) and could lose a race with
# its own compaction on a server taking batches; `measured` says whether the step succeeded.
measure() {
  local op=$1 name rc=0 secs kib hwm
  shift
  measured=0
  name=$size-${col_ids[$c]}-$op
  drop_caches
  if [ -n "$master_pid" ]; then
    echo 5 > "/proc/$master_pid/clear_refs" || die "cannot reset the master's peak (/proc/$master_pid/clear_refs)"
  fi
  bounded "$work/logs/$name.out" "$work/logs/$name.err" /usr/bin/time -f '%e %M' -o "$work/logs/$name.time" "$@" || rc=$?
  if [ $rc != 0 ] && [ "${col_ids[$c]}" = old ]; then
    detail "failed_${op}_${size}_old" "exit $rc: $(grep -v '^Command exited' "$work/logs/$name.err" | tail -n 1)"
    printf '   %-14s FAILED (exit %s, see %s)\n' "$op" "$rc" "$work/logs/$name.err"
    return 0
  fi
  [ $rc = 0 ] || failed "$name" "$rc" "$@"
  measured=1
  read -r secs kib < <(tail -n 1 "$work/logs/$name.time")
  [[ $kib =~ ^[0-9]+$ ]] || die "no peak in $work/logs/$name.time"
  record "$op" "$secs" "$kib"
  if [ -n "$master_pid" ]; then
    kill -0 "$master_pid" 2> /dev/null || die "the master exited during $op (log: $work/logs/$size-${col_ids[$c]}-master.log)"
    hwm=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$master_pid/status")
    record "$op.master" "$secs" "$hwm"
  fi
  printf '   %-14s %8s s %10s KiB%s\n' "$op" "$secs" "$kib" "${hwm:+   master $hwm KiB}"
}
jget() { python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v[int(k) if isinstance(v, list) else k]
print(v)' "$@"; }
port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }
url=http://127.0.0.1:$port
mdir=$work/master
# start_master [--store DIR]: fog master on the loopback port, data in $mdir (its store: $mdir/store)
start_master() {
  local i log=$work/logs/$size-${col_ids[$c]}-master.log store=$mdir/store
  [ "${1:-}" != --store ] || store=$2
  port_free "$port" || die "port $port is taken (set BENCH_PORT)"
  echo "--- fog master $*" >> "$log"
  RUST_LOG=warn "$fog" master --data-dir "$mdir" --listen "127.0.0.1:$port" "$@" >> "$log" 2>&1 &
  master_pid=$!
  for ((i = 0; i < 300; i++)); do
    curl -fsS -o /dev/null "$url/api/v1/health" 2> /dev/null && break
    kill -0 "$master_pid" 2> /dev/null || { master_pid=''; die "fog master exited at start (log: $log)"; }
    sleep 0.1
  done
  [ "$i" -lt 300 ] || die "fog master did not answer within 30 s (log: $log)"
  grep -qF "image store: $store" "$log" || die "fog master does not serve $store (log: $log)"
  token=$(tr -d '\n' < "$mdir/admin-token")
}
stop_master() {
  local i
  [ -n "$master_pid" ] || return 0
  kill "$master_pid" 2> /dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$master_pid" 2> /dev/null || break
    sleep 0.1
  done
  kill -0 "$master_pid" 2> /dev/null && kill -KILL "$master_pid" 2> /dev/null
  wait "$master_pid" 2> /dev/null || true
  master_pid=''
}

detail loadavg_at_start "$(cut -d' ' -f1-3 /proc/loadavg)"
detail cpus "$(nproc)"
detail mem_total_kib "$(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo)"
detail work_dir "$work ($fs_type, $((free_kib / 1048576)) GiB free at start)"
detail commit "$(git -C "$root" rev-parse --short HEAD 2> /dev/null || echo '?') (work tree may differ)"
for ((c = 0; c < ${#col_ids[@]}; c++)); do
  detail "binary_${col_ids[$c]}" "${col_bins[$c]} ($(stat -c '%s bytes, modified %y' "${col_bins[$c]}"))"
done

# --- the run ---------------------------------------------------------------------------------
src=$work/src.img S=$work/S S2=$work/S2 target=$work/target.img
mac=52:54:00:fb:00:17
say "sizes ${sizes[*]} GiB; columns: ${col_labels[*]}; work directory $work"
for size in "${sizes[@]}"; do
  c=0
  bytes=$(size_bytes "$size")
  say "$size GiB: the source ($bytes bytes of AES-CTR keystream)"
  # shellcheck disable=SC2016 # expanded by the inner bash
  step "$size-source" bash -o pipefail -c \
    '{ openssl enc -aes-128-ctr -pass "pass:$1" -nosalt -pbkdf2 -in /dev/zero 2> /dev/null || true; } | head -c "$2" > "$3"' \
    _ "fog-mem-scale-$size" "$bytes" "$src"
  [ "$(stat -c %s "$src")" = "$bytes" ] || die "the source has $(stat -c %s "$src") bytes, not $bytes"
  detail "source_bytes_$size" "$bytes"
  for ((c = 0; c < ${#col_ids[@]}; c++)); do
    fog=${col_bins[$c]}
    if [ -n "${col_mibs[$c]}" ]; then export FOG_MEMORY_MIB=${col_mibs[$c]}; else unset FOG_MEMORY_MIB; fi
    say "$size GiB, ${col_labels[$c]} (${fog}${FOG_MEMORY_MIB:+, FOG_MEMORY_MIB=$FOG_MEMORY_MIB})"
    rm -rf "$S" "$S2" "$mdir" "$target"
    id=${col_ids[$c]}

    measure capture "$fog" --store "$S" image capture "$src" --name img --json
    detail "store_bytes_${size}_$id" "$(du -sb "$S" | cut -f1)"

    measure deploy "$fog" --store "$S" image deploy img "$target"
    if [ "$size" = "${sizes[0]}" ] || [ "${BENCH_CMP_ALL:-0}" = 1 ]; then
      step "$size-$id-cmp" cmp "$src" "$target"
      detail "deploy_identical_${size}_$id" yes
    fi
    rm -f "$target"

    measure verify "$fog" --store "$S" store verify

    measure replicate "$fog" image replicate img --from "$S" --to "$S2"
    rm -rf "$S2"

    # push: into a master whose store is empty
    start_master
    measure push "$fog" image replicate img --from "$S" --to "$url" --token "$token"
    stop_master
    rm -rf "$mdir/store"

    # pull: from a master serving S, into an empty local store
    start_master --store "$S"
    measure pull "$fog" image replicate img --from "$url" --to "$S2" --token "$token"
    stop_master
    rm -rf "$S2"

    # agent: a capture task for a host whose disk is the source, into a master with an empty store
    start_master
    FOG_TOKEN=$token step "$size-$id-node" "$fog" --json --master "$url" node add site --url "$url" --max-clients 10
    node_token=$(jget "$work/logs/$size-$id-node.out" token)
    FOG_TOKEN=$token step "$size-$id-host" "$fog" --json --master "$url" host add pc1 --mac "$mac" --node site
    step "$size-$id-image" curl -fsS -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      -d '{"name": "img"}' "$url/api/v1/images"
    FOG_TOKEN=$token step "$size-$id-task" "$fog" --json --master "$url" task capture pc1 --image img
    task_id=$(jget "$work/logs/$size-$id-task.out" id)
    measure agent "$fog" --json agent run --master "$url" --token "$node_token" --mac "$mac" --disk "$src" --once --no-power
    if [ "$measured" = 1 ]; then
      [ "$(jget "$work/logs/$size-$id-agent.out" ok)" = True ] || die "the agent's capture did not report ok (log: $work/logs/$size-$id-agent.out)"
      FOG_TOKEN=$token step "$size-$id-show" "$fog" --json --master "$url" task show "$task_id"
      [ "$(jget "$work/logs/$size-$id-show.out" task state)" = complete ] || die "capture task $task_id is not complete on the master"
      detail "agent_store_bytes_${size}_$id" "$(du -sb "$mdir/store" | cut -f1)"
    fi
    stop_master
    rm -rf "$mdir"

    step "$size-$id-rm" "$fog" --store "$S" image rm img
    measure gc "$fog" --store "$S" store gc
    rm -rf "$S"
  done
  rm -f "$src"
done
unset FOG_MEMORY_MIB
detail loadavg_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# --- report ----------------------------------------------------------------------------------
cols_tsv=$work/columns.tsv
: > "$cols_tsv"
for ((c = 0; c < ${#col_ids[@]}; c++)); do
  printf '%s\t%s\t%s\t%s\n' "${col_ids[$c]}" "${col_labels[$c]}" "${col_bins[$c]}" "${col_mibs[$c]}" >> "$cols_tsv"
done
python3 - "$results" "$details" "$cols_tsv" "$result_json" "$limit" << 'PY'
import json, sys, time

results_path, details_path, cols_path, out_path, limit = sys.argv[1:6]
columns = []
for line in open(cols_path):
    cid, label, binary, mib = line.rstrip("\n").split("\t")
    columns.append({"id": cid, "label": label, "binary": binary,
                    "memory_mib": None if cid == "old" else int(mib) if mib else 256,
                    "memory_mib_from": "FOG_MEMORY_MIB" if mib else "none (old binary)" if cid == "old" else "default"})
details = {}
for line in open(details_path):
    k, v = line.rstrip("\n").split("\t", 1)
    details[k] = v
ops = [  # row id, label, what ran
    ("capture", "capture", "fog image capture SRC"),
    ("deploy", "deploy", "fog image deploy img TARGET"),
    ("verify", "store verify", "fog store verify"),
    ("replicate", "replicate dir->dir", "fog image replicate --from S --to S2"),
    ("push", "push: client", "fog image replicate --from S --to URL"),
    ("push.master", "push: master", "fog master (receiving), VmHWM"),
    ("pull", "pull: client", "fog image replicate --from URL --to S2"),
    ("pull.master", "pull: master", "fog master (serving S), VmHWM"),
    ("agent", "agent capture: agent", "fog agent run --once --disk SRC (capture task)"),
    ("agent.master", "agent capture: master", "fog master (receiving the capture), VmHWM"),
    ("gc", "gc (after image rm)", "fog store gc"),
]
data = {}  # (op, size, column) -> (seconds, kib)
sizes = []
for line in open(results_path):
    op, size, col, secs, kib = line.rstrip("\n").split("\t")
    data[(op, size, col)] = (float(secs), int(kib))
    if size not in sizes:
        sizes.append(size)
sizes.sort(key=float)
cids = [c["id"] for c in columns]
has_old = "old" in cids
mib = lambda kib: kib / 1024.0

rows_json, table = [], []
for op, label, what in ops:
    for size in sizes:
        cells = [label, size]
        for cid in cids:
            v = data.get((op, size, cid))
            if v is None:
                cells += ["?", "?"]
                continue
            secs, kib = v
            rows_json.append({"op": op, "size_gib": float(size), "column": cid, "seconds": secs,
                              "peak_rss_kib": kib, "peak_rss_mib": round(mib(kib), 1)})
            cells += ["%.1f" % mib(kib), "-" if op.endswith(".master") else "%.2f" % secs]
        table.append(cells)

slopes, ratios, table2 = {}, {}, []
lo, hi = sizes[0], sizes[-1]
others = [c for c in cids if c != "old"]
for op, label, what in ops:
    cells = [label]
    slopes[op] = {}
    for cid in cids:
        a, b = data.get((op, lo, cid)), data.get((op, hi, cid))
        if a and b and hi != lo:
            s = (mib(b[1]) - mib(a[1])) / (float(hi) - float(lo))
            slopes[op][cid] = round(s, 2)
            cells.append("%.1f" % s)
        else:
            slopes[op][cid] = None
            cells.append("-")
    if has_old and not op.endswith(".master"):
        ratios[op] = {}
        for cid in others:
            ratios[op][cid] = {}
            for size in sizes:
                n, o = data.get((op, size, cid)), data.get((op, size, "old"))
                r = n[0] / o[0] if n and o and o[0] > 0 else None
                ratios[op][cid][size] = round(r, 3) if r is not None else None
                cells.append("%.2f" % r if r is not None else "-")
    elif has_old:
        cells += ["-"] * (len(others) * len(sizes))
    table2.append(cells)

report = {
    "bench": "mem_scale", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sizes_gib": [float(s) for s in sizes],
    "step_timeout_s": int(limit), "columns": columns,
    "operations": [{"op": op, "label": label, "process": what} for op, label, what in ops],
    "rows": rows_json, "slope_mib_per_gib": slopes,
    "time_ratio_vs_old": ratios, "details": dict(sorted(details.items())),
}
with open(out_path, "w") as fh:
    json.dump(report, fh, indent=2)
    fh.write("\n")

def show(head, rows, right_from):
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(x).rjust(w) if i >= right_from else str(x).ljust(w)
                              for i, (x, w) in enumerate(zip(r, widths))).rstrip()
    print(fmt(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))

labels = {c["id"]: c["label"] for c in columns}
print()
print("memory at scale: peak RSS (MiB) and wall time (s) of each process; unique data, %s GiB; load average %s at start, %s at end"
      % (", ".join(sizes), details.get("loadavg_at_start"), details.get("loadavg_at_end")))
print("columns: " + "; ".join("%s = %s%s" % (c["label"], c["binary"], "" if c["memory_mib"] is None else
                                                ", budget %d MiB (%s)" % (c["memory_mib"], c["memory_mib_from"]))
                              for c in columns))
head = ["operation", "GiB"]
for cid in cids:
    head += [labels[cid] + " MiB", labels[cid] + " s"]
show(head, table, 1)
print()
head2 = ["operation"] + ["%s MiB/GiB" % labels[c] for c in cids]
if has_old:
    head2 += ["%s/old @%s" % (labels[c], s) for c in others for s in sizes]
print("growth of the peak between %s and %s GiB (MiB per GiB)%s" % (lo, hi, "; wall time against old's at each size (< 1: faster)" if has_old else ""))
show(head2, table2, 1)
print()
print("results: %s" % out_path)
PY
