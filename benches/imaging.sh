#!/usr/bin/env bash
# The imaging benchmark: fog side by side with its peers in the same run, reported as ratios.
#
#   sudo benches/imaging.sh                      # full run: 2 GiB ext4 image, ~1 GiB of files
#   sudo BENCH_SIZE_MB=256 benches/imaging.sh    # quick run
#   cargo bench -p benches --bench imaging       # the same, through cargo (as root)
#
# Peers: partclone.ext4 | zstd -3 -T0 (what FOG Project and Clonezilla store) for capture,
# deploy and full re-capture; casync (content-defined chunking, zstd) for incremental storage.
# Every timed step runs under `timeout`, with the page cache dropped first (when permitted), and
# both tools read the same input file. See benches/README.md for what is measured and why.
#
# Environment:
#   BENCH_SIZE_MB        filesystem size in MiB (default 2048); the generated tree fills about half
#   BENCH_DIR            parent of the work directory, and where imaging.json goes
#                        (default: a temporary directory under /tmp, JSON in target/bench/)
#   BENCH_STEP_TIMEOUT   seconds allowed for any one step (default 1800)
#   BENCH_REPEAT         runs of fog's and partclone's capture and deploy and of fog's re-capture;
#                        the median time counts (default 3)
#   BENCH_KEEP=1         keep the work directory
#
# Exit status: 0 when every step ran (even if a target was missed: the table says FAIL and the
# last line says how many), non-zero when something errored or a deployed image fails fsck.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
size_mb=${BENCH_SIZE_MB:-2048}
limit=${BENCH_STEP_TIMEOUT:-1800}
repeat=${BENCH_REPEAT:-3}
target_dir=${CARGO_TARGET_DIR:-$root/target}
[[ $size_mb =~ ^[0-9]+$ ]] && [ "$size_mb" -ge 64 ] || { echo "BENCH_SIZE_MB must be an integer >= 64" >&2; exit 2; }
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPEAT must be a positive integer" >&2; exit 2; }

if [ -n "${BENCH_DIR:-}" ]; then
  mkdir -p "$BENCH_DIR"
  work=$(mktemp -d "$BENCH_DIR/imaging-work.XXXXXX")
  result_json=$BENCH_DIR/imaging.json
else
  work=$(mktemp -d /tmp/fog-bench-imaging.XXXXXX)
  result_json=$target_dir/bench/imaging.json
fi
mkdir -p "$work/logs" "$(dirname "$result_json")"
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "imaging bench: ERROR (exit $rc); last lines of the newest step logs:" >&2
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
die() { echo "imaging bench: ERROR: $*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------
need=(partclone.ext4:partclone partclone.restore:partclone zstd:zstd casync:casync
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

need_mb=$((size_mb * 6))
free_mb=$(df -Pm "$work" | awk 'NR == 2 { print $4 }')
[ "$free_mb" -ge "$need_mb" ] || die "$work has ${free_mb} MiB free, the run needs about ${need_mb} MiB"

say "building fog (cargo build --release -p fog-cli)"
(cd "$root" && timeout "$limit" "${CARGO:-cargo}" build --release -p fog-cli) > "$work/logs/build.log" 2>&1 \
  || die "cargo build --release -p fog-cli failed"
fog=$target_dir/release/fog
[ -x "$fog" ] || die "$fog not found after the build"

# --- helpers -------------------------------------------------------------------------------
drop_caches() {
  sync
  { echo 3 > /proc/sys/vm/drop_caches; } 2> /dev/null || true
}

declare -A T C # step name -> wall seconds, CPU seconds (user + system, all its processes)
# timed NAME CMD...: runs CMD with a cold page cache, under timeout; output in logs/NAME.{out,err}.
timed() {
  local name=$1
  shift
  drop_caches
  timed_warm "$name" "$@"
}
# timed_warm NAME CMD...: the same without dropping the cache first.
timed_warm() {
  local name=$1 t0 t1
  shift
  times > "$work/times.before" # this shell's waited-for descendants: the step's CPU time
  t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$work/logs/$name.out" 2> "$work/logs/$name.err" \
    || die "step $name failed or timed out: $*"
  t1=$(date +%s.%N)
  times > "$work/times.after"
  T[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  C[$name]=$(awk 'function s(x, p) { sub(/s$/, "", x); split(x, p, "m"); return p[1] * 60 + p[2] }
    FNR == 2 { c[NR > FNR] = s($1) + s($2) } END { printf "%.3f", c[1] - c[0] }' "$work/times.before" "$work/times.after")
}
# step NAME CMD...: an untimed step, under timeout; output in logs/NAME.log.
step() {
  local name=$1
  shift
  timeout "$limit" "$@" > "$work/logs/$name.log" 2>&1 || die "step $name failed or timed out: $*"
}
# jget FILE KEY: a top-level field of a JSON object.
jget() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
fsize() { stat -c %s "$1"; }
# Bytes of the files under a directory (chunk payloads; the directories' own sizes left out).
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
fog_stored() { "$fog" --store "$1" --json store stats > "$work/logs/stats.json" && jget "$work/logs/stats.json" stored_bytes; }

rows=$work/rows.tsv
details=$work/details.tsv
: > "$rows"
: > "$details"
# metric KEY LABEL UNIT FOG PEER_NAME PEER RATIO(fog/peer|peer/fog|-) CHECK(ratio|fog|fsck|-) OP TARGET
metric() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$rows"; }
detail() { printf '%s\t%s\n' "$1" "$2" >> "$details"; }

detail loadavg_at_start "$(cut -d' ' -f1-3 /proc/loadavg)"

# --- 1. data -------------------------------------------------------------------------------
gen=$root/benches/gen_tree.py # the deterministic tree generator (shared with agent.sh)

# Fixed UUID, hash seed and times: the same BENCH_SIZE_MB gives the same images every run, and
# the three systems of step 5 are variants of one golden image (as in a lab).
export E2FSPROGS_FAKE_TIME=1717200000
mkfs_opts=(-q -F -U 6f0c5e2a-1b7d-4c1e-9a55-0d1e2f3a4b5c -E hash_seed=3c1d0b7e-8a2f-4e6d-b1c9-5f4a3e2d1c0b)
make_image() { # make_image VARIANT IMAGE
  local tree=$work/tree$1
  step "gen$1" python3 "$gen" tree "$tree" --mb "$size_mb" --variant "$1"
  step "mkfs$1" mkfs.ext4 "${mkfs_opts[@]}" -d "$tree" "$2" "${size_mb}M"
  rm -rf "$tree"
}
say "generating the data: ${size_mb} MiB ext4 image about half full, plus two variants"
make_image 0 "$work/disk.img"
detail generated "$(cat "$work/logs/gen0.log")"
step copy_base cp --sparse=always "$work/disk.img" "$work/base.img" # pristine copy for steps 4 and 5
make_image 1 "$work/var1.img"
make_image 2 "$work/var2.img"
step mutate python3 "$gen" mutate "$work/mut" "$work/mut.cmds" --mb "$size_mb"
detail mutation "$(cat "$work/logs/mutate.log")"
disk_size=$(fsize "$work/disk.img")
detail disk_size "$disk_size"

# --- 2. capture ----------------------------------------------------------------------------
# Captures and deploys run $repeat times, the two tools alternating which goes first, and the
# median time counts: the machine may be shared, and a single run of each is noisy.
# partclone's progress thread sleeps -f seconds (default 2) per tick and the process waits for it
# at exit; -f 1 halves that idle tail. (-f 0 removes it but polls, costing ~15% of a core.)
pcl_capture() { # pcl_capture IMAGE OUT LOG
  partclone.ext4 -c -q -f 1 -s "$1" -o - -L "$3" | zstd -3 -T0 -q > "$2"
}
pcl_restore() { # pcl_restore IMAGE TARGET LOG
  zstd -dc -q "$1" | partclone.restore -q -f 1 -s - -O "$2" -L "$3"
}
export -f pcl_capture pcl_restore
fog_capture_once() { # fog_capture_once RUN: into an empty store
  rm -rf "$work/store"
  timed "fog_capture_$1" "$fog" --store "$work/store" --json image capture "$work/disk.img" --name base
}
# partclone's output is fsynced inside its timed run: fog's capture is durable when it returns.
pcl_capture_once() { # pcl_capture_once RUN
  rm -f "$work/img1.pcl.zst"
  timed "pcl_capture_$1" bash -o pipefail -c 'pcl_capture "$@" && sync "$2"' _ "$work/disk.img" "$work/img1.pcl.zst" "$work/logs/pcl_capture.partclone"
}
fog_deploy_once() {
  rm -f "$work/fog_out.img"
  timed "fog_deploy_$1" "$fog" --store "$work/store" --json image deploy base "$work/fog_out.img"
}
pcl_deploy_once() { # the target must exist with the disk's size
  rm -f "$work/pcl_out.img"
  truncate -s "$disk_size" "$work/pcl_out.img"
  timed "pcl_deploy_$1" bash -o pipefail -c 'pcl_restore "$@"' _ "$work/img1.pcl.zst" "$work/pcl_out.img" "$work/logs/pcl_deploy.partclone"
}
median() { # median NAME: T[NAME], C[NAME] = medians over runs NAME_1..repeat (runs to the details)
  local i
  for ((i = 1; i <= repeat; i++)); do echo "${T[${1}_$i]}"; done | sort -g > "$work/median"
  T[$1]=$(awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }' "$work/median")
  detail "runs_$1" "$(paste -sd, "$work/median")"
  for ((i = 1; i <= repeat; i++)); do echo "${C[${1}_$i]}"; done | sort -g > "$work/median"
  C[$1]=$(awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }' "$work/median")
}

say "capture: fog vs partclone.ext4 | zstd -3 -T0 ($repeat runs each)"
for ((r = 1; r <= repeat; r++)); do
  if ((r % 2)); then fog_capture_once $r; pcl_capture_once $r; else pcl_capture_once $r; fog_capture_once $r; fi
done
median fog_capture
median pcl_capture
cp "$work/logs/fog_capture_$repeat.out" "$work/fog_capture.json"
fog_first_stored=$(fog_stored "$work/store")
pcl1=$(fsize "$work/img1.pcl.zst")
detail fog_capture_data_bytes "$(jget "$work/fog_capture.json" data_bytes)"
detail fog_capture_reported_seconds "$(jget "$work/fog_capture.json" seconds)"
detail fog_store_files_bytes_after_capture "$(tree_bytes "$work/store")"
metric capture_time "capture time" s "${T[fog_capture]}" "partclone+zstd" "${T[pcl_capture]}" fog/peer ratio "<=" 1.0
metric capture_cpu "capture CPU time (user+sys)" s "${C[fog_capture]}" "partclone+zstd" "${C[pcl_capture]}" fog/peer - - -
metric capture_bytes "capture stored bytes" B "$fog_first_stored" "partclone+zstd" "$pcl1" fog/peer - - -

# --- 3. deploy -----------------------------------------------------------------------------
say "deploy: fog vs zstd -dc | partclone.restore ($repeat runs each)"
for ((r = 1; r <= repeat; r++)); do
  if ((r % 2)); then fog_deploy_once $r; pcl_deploy_once $r; else pcl_deploy_once $r; fog_deploy_once $r; fi
done
median fog_deploy
median pcl_deploy
metric deploy_time "deploy time" s "${T[fog_deploy]}" "partclone+zstd" "${T[pcl_deploy]}" peer/fog ratio ">=" 1.5
metric deploy_cpu "deploy CPU time (user+sys)" s "${C[fog_deploy]}" "partclone+zstd" "${C[pcl_deploy]}" peer/fog - - -
fsck_ok=1
fsck_fog=clean fsck_pcl=clean
timeout "$limit" e2fsck -fn "$work/fog_out.img" > "$work/logs/fsck_fog.log" 2>&1 || { fsck_fog=UNCLEAN; fsck_ok=0; }
timeout "$limit" e2fsck -fn "$work/pcl_out.img" > "$work/logs/fsck_pcl.log" 2>&1 || { fsck_pcl=UNCLEAN; fsck_ok=0; }
same_fog=no same_pcl=no
timeout "$limit" cmp -s "$work/disk.img" "$work/fog_out.img" && same_fog=yes
timeout "$limit" cmp -s "$work/disk.img" "$work/pcl_out.img" && same_pcl=yes
metric deploy_fsck "deployed image e2fsck -fn" - "$fsck_fog" "partclone+zstd" "$fsck_pcl" - fsck - -
metric deploy_identical "deployed image == source" - "$same_fog" "partclone+zstd" "$same_pcl" - - - -
rm -f "$work/fog_out.img" "$work/pcl_out.img"

# --- 4. re-capture after changing ~1% of the files -----------------------------------------
say "re-capture after editing ~1% of the files: fog vs casync vs partclone+zstd"
timed casync_v1 casync make --store="$work/castr" "$work/v1.caibx" "$work/disk.img"
casync_v1_bytes=$(tree_bytes "$work/castr")
casync_v1_du=$(du -sb "$work/castr" | cut -f1)
metric casync_first_capture "first capture time (casync: whole image)" s "${T[fog_capture]}" casync "${T[casync_v1]}" fog/peer - - -
step debugfs debugfs -w -f "$work/mut.cmds" "$work/disk.img"
step fsck_changed e2fsck -fn "$work/disk.img"
store_files_before=$(tree_bytes "$work/store")
# Each run starts from a copy of the store as it was after the first capture.
mv "$work/store" "$work/store.first"
for ((r = 1; r <= repeat; r++)); do
  rm -rf "$work/store"
  step copy_store cp -a "$work/store.first" "$work/store"
  timed "fog_recapture_$r" "$fog" --store "$work/store" --json image capture "$work/disk.img" --name changed
done
rm -rf "$work/store.first"
median fog_recapture
cp "$work/logs/fog_recapture_$repeat.out" "$work/logs/fog_recapture.out"
fog_new=$(jget "$work/logs/fog_recapture.out" new_stored_bytes)
fog_second_stored=$(fog_stored "$work/store")
store_files_growth=$(( $(tree_bytes "$work/store") - store_files_before ))
timed casync_v2 casync make --store="$work/castr" "$work/v2.caibx" "$work/disk.img"
casync_growth=$(( $(tree_bytes "$work/castr") - casync_v1_bytes ))
casync_du_growth=$(( $(du -sb "$work/castr" | cut -f1) - casync_v1_du ))
timed pcl_recapture bash -o pipefail -c 'pcl_capture "$@" && sync "$2"' _ "$work/disk.img" "$work/img2.pcl.zst" "$work/logs/pcl_recapture.partclone"
pcl2=$(fsize "$work/img2.pcl.zst")
detail fog_recapture_reported_seconds "$(jget "$work/logs/fog_recapture.out" seconds)"
detail fog_recapture_new_chunks "$(jget "$work/logs/fog_recapture.out" new_chunks)"
detail fog_store_stored_bytes_after_recapture "$fog_second_stored"
detail fog_store_files_growth_on_recapture "$store_files_growth"
detail casync_store_bytes_v1 "$casync_v1_bytes"
detail casync_du_sb_growth "$casync_du_growth"
metric recapture_bytes_vs_casync "re-capture: bytes added" B "$fog_new" casync "$casync_growth" fog/peer ratio "<=" 0.5
metric recapture_bytes_vs_full "re-capture: bytes added" B "$fog_new" "partclone+zstd" "$pcl2" fog/peer - - -
metric recapture_bytes_vs_first "re-capture bytes / first capture bytes" B "$fog_new" "fog first capture" "$fog_first_stored" fog/peer ratio "<=" 0.10
metric recapture_time_vs_first "re-capture time / first capture time" s "${T[fog_recapture]}" "fog first capture" "${T[fog_capture]}" fog/peer ratio "<=" 0.3333
metric recapture_cpu_vs_first "re-capture CPU / first capture CPU" s "${C[fog_recapture]}" "fog first capture" "${C[fog_capture]}" fog/peer - - -
metric recapture_time_vs_casync "re-capture time" s "${T[fog_recapture]}" casync "${T[casync_v2]}" fog/peer - - -
metric recapture_time_vs_partclone "re-capture time" s "${T[fog_recapture]}" "partclone+zstd" "${T[pcl_recapture]}" fog/peer - - -
rm -f "$work/img2.pcl.zst"

# --- 5. three similar systems in one store -------------------------------------------------
say "three similar systems in one fresh store: fog vs casync"
timed fog_family0 "$fog" --store "$work/store3" --json image capture "$work/base.img" --name sys0
family_first=$(fog_stored "$work/store3")
timed fog_family1 "$fog" --store "$work/store3" --json image capture "$work/var1.img" --name sys1
timed fog_family2 "$fog" --store "$work/store3" --json image capture "$work/var2.img" --name sys2
family_total=$(fog_stored "$work/store3")
for i in 0 1 2; do
  img=$work/base.img
  [ $i = 0 ] || img=$work/var$i.img
  timed "casync_family$i" casync make --store="$work/castr3" "$work/sys$i.caibx" "$img"
  if [ $i = 0 ]; then casync_family_first=$(tree_bytes "$work/castr3"); fi
done
casync_family_total=$(tree_bytes "$work/castr3")
pcl_family=$pcl1
for i in 1 2; do
  timed "pcl_family$i" bash -o pipefail -c 'pcl_capture "$@"' _ "$work/var$i.img" "$work/var$i.pcl.zst" "$work/logs/pcl_family$i.partclone"
  pcl_family=$((pcl_family + $(fsize "$work/var$i.pcl.zst")))
  rm -f "$work/var$i.pcl.zst"
done
family_ratio=$(awk -v a="$family_total" -v b="$family_first" 'BEGIN { printf "%.4f", a / b }')
casync_family_ratio=$(awk -v a="$casync_family_total" -v b="$casync_family_first" 'BEGIN { printf "%.4f", a / b }')
detail fog_family_first_stored "$family_first"
detail casync_family_first_bytes "$casync_family_first"
metric family_ratio "3 systems: store / first image" x "$family_ratio" casync "$casync_family_ratio" - fog "<=" 1.2
metric family_bytes "3 systems: store bytes" B "$family_total" casync "$casync_family_total" fog/peer - - -
metric family_bytes_full "3 systems: store bytes" B "$family_total" "partclone+zstd" "$pcl_family" fog/peer - - -

detail cpus "$(nproc)"
detail versions "$(partclone.ext4 -v 2>&1 | awk 'NR == 1 { print $1, $3 }'); zstd $(zstd -qV); $(casync --version | head -n 1); fog $(git -C "$root" rev-parse --short HEAD 2> /dev/null || echo '?') (work tree may differ)"
detail loadavg_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# --- report --------------------------------------------------------------------------------
for k in "${!T[@]}"; do detail "seconds_$k" "${T[$k]}"; done
for k in "${!C[@]}"; do detail "cpu_seconds_$k" "${C[$k]}"; done
python3 - "$rows" "$details" "$result_json" "$size_mb" "$fsck_ok" <<'PY'
import json, sys, time

rows_path, details_path, out_path, size_mb, fsck_ok = sys.argv[1:6]

def num(v):
    try:
        return float(v) if "." in v else int(v)
    except ValueError:
        return v

def show(v, unit):
    if not isinstance(v, (int, float)):
        return str(v)
    if unit == "B":
        return "%.1f MiB" % (v / 1048576)
    if unit == "s":
        return "%.2f s" % v
    if unit == "x":
        return "%.3f" % v
    return str(v)

metrics, failed = [], []
for line in open(rows_path):
    key, label, unit, fog, peer_name, peer, ratio_kind, check, op, target = line.rstrip("\n").split("\t")
    fog, peer = num(fog), num(peer)
    ratio = None
    if ratio_kind == "fog/peer" and peer:
        ratio = fog / peer
    elif ratio_kind == "peer/fog" and fog:
        ratio = peer / fog
    result = "info"
    if check == "fsck":
        result = "PASS" if fog == "clean" and peer == "clean" else "FAIL"
    elif check in ("ratio", "fog"):
        value = ratio if check == "ratio" else fog
        target_v = float(target)
        ok = value is not None and (value <= target_v if op == "<=" else value >= target_v)
        result = "PASS" if ok else "FAIL"
    if result == "FAIL":
        failed.append(key)
    metrics.append({
        "key": key, "metric": label, "unit": unit, "fog": fog, "peer": peer_name, "peer_value": peer,
        "ratio": None if ratio is None else round(ratio, 4), "ratio_is": ratio_kind if ratio_kind != "-" else None,
        "target": None if check in ("-", "fsck") else "%s %s %s" % ("ratio" if check == "ratio" else "fog", op, target),
        "result": result,
    })

details = {}
for line in open(details_path):
    k, v = line.rstrip("\n").split("\t", 1)
    details[k] = num(v)

report = {
    "bench": "imaging", "size_mb": int(size_mb), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "metrics": metrics, "details": dict(sorted(details.items())), "failed_targets": failed,
}
with open(out_path, "w") as fh:
    json.dump(report, fh, indent=2)
    fh.write("\n")

head = ("metric", "fog", "peer", "peer value", "ratio", "target", "result")
table = [head]
for m in metrics:
    ratio = "-" if m["ratio"] is None else "%.3f (%s)" % (m["ratio"], m["ratio_is"])
    target = "-"
    if m["target"]:
        what, op, val = m["target"].split()
        target = "%s %s" % (op, val)
    table.append((m["metric"], show(m["fog"], m["unit"]), m["peer"], show(m["peer_value"], m["unit"]), ratio, target, m["result"]))
widths = [max(len(r[i]) for r in table) for i in range(len(head))]
print()
print("imaging benchmark, %s MiB ext4 image (%s)" % (size_mb, details.get("generated", "")))
for n, r in enumerate(table):
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if n == 0:
        print("  ".join("-" * w for w in widths))
print()
print("results: %s" % out_path)
if failed:
    print("TARGETS MISSED (%d): %s" % (len(failed), ", ".join(failed)))
else:
    print("all targets met")
PY
[ "$fsck_ok" = 1 ] || die "a deployed image is not clean (e2fsck -fn): see the table"
