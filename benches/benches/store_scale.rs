//! `cargo bench -p benches --bench store_scale`: does the store scale to ten million chunks in
//! bounded memory?
//!
//! Writes `SCALE_CHUNKS` (default 10 000 000) distinct 64-byte chunks through the public API as
//! four images of a quarter each, then lists, counts, verifies, looks up 1M random chunks, removes
//! two images and collects garbage, and verifies again. Every phase runs in a child process (this
//! binary re-invoked with `--phase NAME`), so each starts with a fresh heap and its own peak RSS.
//!
//! Memory is read from `/proc/self/status`: `VmHWM` (peak resident set, reset with
//! `/proc/self/clear_refs` when a phase begins) counts file-backed pages too (the binary; index
//! runs are read in windows, not mapped, so the index no longer shows there). `RssAnon` (the heap
//! and other private memory) is sampled every few milliseconds for its peak.
//!
//! Each phase also reports its CPU time (utime + stime of the process, all threads) and the bytes
//! it had read from storage (`read_bytes` of `/proc/self/io`: page-cache misses), which tell an I/O-bound phase from a CPU-bound one on a shared machine.
//!
//! `SCALE_DIR` holds the store (in `SCALE_DIR/store`, which must not exist); by default a new
//! directory under /tmp, removed at the end. `SCALE_KEEP=1` keeps the store. `SCALE_IMAGES`
//! (default 4) splits the chunks into that many images; gc removes the odd-numbered ones.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fogcore::imaging::chunk::{ChunkId, ChunkSink, ChunkSource};
use fogcore::imaging::extent::Extent;
use fogcore::imaging::fs::Filesystem;
use fogcore::imaging::manifest::{ChunkRef, FORMAT, Header, Region};
use fogcore::imaging::partition::{Layout, Partition, TableKind};
use fogcore::imaging::store::Store;

const DEFAULT_CHUNKS: u64 = 10_000_000;
const DEFAULT_IMAGES: u64 = 4;
const PAYLOAD: usize = 64;
const LOOKUPS: u64 = 1_000_000;
/// Bytes of one index entry (id 32, pack 4, frame offset 8, frame length 4, place in frame 4 + 4).
const INDEX_ENTRY: u64 = 56;
/// Chunks handed to the writer at once and framed together (capture frames about 32 chunks).
const RUN: usize = 16;
const SALT: u64 = 0x5CA1_E0F5_70E5_CA1E;
const PHASES: [&str; 8] = [
    "generate",
    "open+list",
    "stats",
    "verify",
    "lookups",
    "remove+gc",
    "verify-after-gc",
    "refs",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--phase") {
        let parsed = match (args.get(at + 1), args.get(at + 2), args.get(at + 3), args.get(at + 4)) {
            (Some(phase), Some(dir), Some(n), Some(images)) => n
                .parse()
                .ok()
                .zip(images.parse().ok())
                .map(|(n, images)| (phase, dir, Scale { n, images })),
            _ => None,
        };
        let Some((phase, dir, scale)) = parsed else {
            eprintln!("store_scale: --phase NAME STORE CHUNKS IMAGES");
            return ExitCode::FAILURE;
        };
        return match child(phase, Path::new(dir), scale) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("store_scale: phase {phase}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Cargo passes libtest-style flags and filters; a filter not naming this bench skips it.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "store_scale".contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    match parent() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store_scale: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data: chunk i is 64 pseudo-random bytes derived from i, so any phase can recompute its id.

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn payload(i: u64) -> [u8; PAYLOAD] {
    let mut out = [0u8; PAYLOAD];
    for (j, word) in (0u64..).zip(out.chunks_exact_mut(8)) {
        word.copy_from_slice(&splitmix(i.wrapping_mul(8).wrapping_add(j) ^ SALT).to_le_bytes());
    }
    out
}

fn chunk_id(i: u64) -> ChunkId {
    ChunkId::of(&payload(i))
}

fn image_name(k: u64) -> String {
    format!("img-{k}")
}

/// The size of the run: `n` chunks in `images` images.
#[derive(Debug, Clone, Copy)]
struct Scale {
    n: u64,
    images: u64,
}

impl Scale {
    /// The chunk numbers of image `k`.
    fn range(&self, k: u64) -> std::ops::Range<u64> {
        k * self.n / self.images..(k + 1) * self.n / self.images
    }

    /// Images gc must leave whole (even-numbered) and images removed before it (odd-numbered).
    fn kept(&self) -> impl Iterator<Item = u64> {
        (0..self.images).step_by(2)
    }

    fn removed(&self) -> impl Iterator<Item = u64> {
        (1..self.images).step_by(2)
    }

    fn chunks_of(&self, images: impl Iterator<Item = u64>) -> u64 {
        images.map(|k| self.range(k).end - self.range(k).start).sum()
    }
}

fn ctx<T>(r: fogcore::Result<T>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Memory: /proc/self/status, with a sampler thread for the peak of RssAnon and RssFile.

#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    /// utime + stime, in clock ticks (USER_HZ, 100 on Linux).
    cpu_ticks: u64,
    /// Bytes fetched from storage.
    read_bytes: u64,
}

const USER_HZ: f64 = 100.0;

fn cpu_ticks() -> u64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map_or("", |r| r.1);
    let fields: Vec<u64> = rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect();
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

fn read_bytes() -> u64 {
    fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn mem() -> Mem {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Mem {
        hwm_kib: field("VmHWM:"),
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:"),
        cpu_ticks: cpu_ticks(),
        read_bytes: read_bytes(),
    }
}

struct Meter {
    stop: Arc<AtomicBool>,
    /// Peak RssAnon of the phase.
    overall_anon: Arc<AtomicU64>,
    /// Peak RssAnon of the current window (see `take_peak_anon`).
    peak_anon: Arc<AtomicU64>,
    peak_file: Arc<AtomicU64>,
    sampler: Option<JoinHandle<()>>,
    started: Instant,
    start: Mem,
    elapsed: Option<Duration>,
    /// CPU and reads when the measured part ended.
    ended: Option<Mem>,
}

impl Meter {
    fn new() -> Meter {
        let stop = Arc::new(AtomicBool::new(false));
        let overall_anon = Arc::new(AtomicU64::new(0));
        let peak_anon = Arc::new(AtomicU64::new(0));
        let peak_file = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (stop, overall_anon, peak_anon, peak_file) =
                (stop.clone(), overall_anon.clone(), peak_anon.clone(), peak_file.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let m = mem();
                    overall_anon.fetch_max(m.anon_kib, Ordering::Relaxed);
                    peak_anon.fetch_max(m.anon_kib, Ordering::Relaxed);
                    peak_file.fetch_max(m.file_kib, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Meter {
            stop,
            overall_anon,
            peak_anon,
            peak_file,
            sampler: Some(sampler),
            started: Instant::now(),
            start: mem(),
            elapsed: None,
            ended: None,
        }
    }

    /// Starts the measured part: resets the peak RSS and the clock (setup before it is not counted).
    fn begin(&mut self) {
        // "5" resets VmHWM to the current RSS (Linux >= 4.0).
        let _ = fs::write("/proc/self/clear_refs", "5");
        self.start = mem();
        self.overall_anon.store(self.start.anon_kib, Ordering::Relaxed);
        self.peak_anon.store(self.start.anon_kib, Ordering::Relaxed);
        self.peak_file.store(self.start.file_kib, Ordering::Relaxed);
        self.started = Instant::now();
    }

    /// The peak of RssAnon since the last call (or `begin`), in KiB; starts a new window.
    fn take_peak_anon(&self) -> u64 {
        let now = mem().anon_kib;
        self.peak_anon.swap(now, Ordering::Relaxed).max(now)
    }

    fn end(&mut self) {
        if self.elapsed.is_none() {
            self.elapsed = Some(self.started.elapsed());
            self.ended = Some(mem());
        }
    }

    /// Stops sampling; returns (seconds, start, end) with the sampled peaks in `end`.
    fn finish(mut self) -> (f64, Mem, Mem) {
        self.end();
        let mut end = mem();
        if let Some(ended) = self.ended {
            end.cpu_ticks = ended.cpu_ticks;
            end.read_bytes = ended.read_bytes;
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        end.anon_kib = end.anon_kib.max(self.overall_anon.load(Ordering::Relaxed));
        end.anon_kib = end.anon_kib.max(self.peak_anon.load(Ordering::Relaxed));
        end.file_kib = end.file_kib.max(self.peak_file.load(Ordering::Relaxed));
        (self.elapsed.unwrap_or_default().as_secs_f64(), self.start, end)
    }
}

// ---------------------------------------------------------------------------------------------
// Phases, each run in a child process.

struct Outcome {
    chunks: u64,
    note: String,
}

fn child(phase: &str, store_dir: &Path, scale: Scale) -> Result<(), String> {
    let mut meter = Meter::new();
    meter.begin();
    let outcome = match phase {
        "generate" => generate(store_dir, scale, &meter)?,
        "open+list" => open_list(store_dir)?,
        "stats" => stats(store_dir)?,
        "verify" => verify(store_dir, scale, false)?,
        "lookups" => lookups(store_dir, scale, &mut meter)?,
        "remove+gc" => remove_gc(store_dir, scale)?,
        "verify-after-gc" => verify(store_dir, scale, true)?,
        "refs" => refs(store_dir, scale)?,
        other => return Err(format!("unknown phase {other:?}")),
    };
    let (secs, start, end) = meter.finish();
    println!(
        "RESULT {secs} {} {} {} {} {} {} {} {}",
        start.hwm_kib,
        end.hwm_kib,
        start.anon_kib,
        end.anon_kib,
        end.file_kib,
        outcome.chunks,
        end.cpu_ticks.saturating_sub(start.cpu_ticks),
        end.read_bytes.saturating_sub(start.read_bytes)
    );
    println!("NOTE {}", outcome.note);
    Ok(())
}

fn generate(dir: &Path, scale: Scale, meter: &Meter) -> Result<Outcome, String> {
    let n = scale.n;
    let store = ctx(Store::open(dir), "open")?;
    let mut notes = Vec::new();
    let (mut new_chunks, mut new_bytes) = (0, 0);
    for k in 0..scale.images {
        let started = Instant::now();
        let name = image_name(k);
        let writer = ctx(store.writer(), "writer")?;
        let mut manifest = ctx(writer.manifest_writer(), "manifest writer")?;
        let range = scale.range(k);
        let first = range.start;
        let mut last_million = (Instant::now(), cpu_ticks());
        let count = range.end - range.start;
        let end = range.end;
        let mut run: Vec<(ChunkId, [u8; PAYLOAD])> = Vec::with_capacity(RUN);
        for i in range {
            let data = payload(i);
            let id = ChunkId::of(&data);
            run.push((id, data));
            if run.len() == RUN || i + 1 == end {
                let chunks: Vec<(ChunkId, &[u8])> = run.iter().map(|(id, d)| (*id, &d[..])).collect();
                if ctx(writer.put_run(&chunks), "put")? != chunks.len() {
                    return Err(format!("a chunk up to {i} was already stored: ids are not distinct"));
                }
                // Each run its own frame: 64-byte chunks would otherwise gather by the thousand
                // into one 256 KiB frame, where real chunks (2 KiB at least) make at most 128.
                ctx(writer.flush(), "flush")?;
                run.clear();
            }
            ctx(
                manifest.push_chunk(&ChunkRef {
                    id,
                    len: PAYLOAD as u32,
                }),
                "push_chunk",
            )?;
            if (i + 1) % 1_000_000 == 0 {
                // The last million alone: wall and CPU seconds, so a slowdown shows as it happens.
                let (now, cpu) = (Instant::now(), cpu_ticks());
                eprintln!(
                    "  generate: {} chunks ({} in {name}), last million {:.1}s wall, {:.1}s cpu",
                    i + 1,
                    i + 1 - first,
                    (now - last_million.0).as_secs_f64(),
                    cpu.saturating_sub(last_million.1) as f64 / USER_HZ
                );
                last_million = (now, cpu);
            }
        }
        let chunks = manifest.end_chunks();
        let data_bytes = count * PAYLOAD as u64;
        let extents = if data_bytes == 0 {
            Vec::new()
        } else {
            vec![Extent::new(0, data_bytes)]
        };
        let extents = ctx(manifest.write_extents(&extents), "write_extents")?;
        let header = Header {
            format: FORMAT,
            name: name.clone(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            source: format!("synthetic:{name}"),
            layout: Layout {
                table: TableKind::None,
                sector_size: 512,
                disk_size: data_bytes,
                partitions: vec![Partition {
                    number: 0,
                    offset: 0,
                    len: data_bytes,
                    type_id: String::new(),
                    name: String::new(),
                }],
                backup_gpt_len: 0,
                extended: false,
            },
            regions: vec![Region {
                partition: Some(0),
                offset: 0,
                len: data_bytes,
                filesystem: Filesystem::Raw,
                used_bytes: data_bytes,
                extents,
                chunks,
                min_len: None,
                shrunk: false,
            }],
            chunk_count: count,
            data_bytes,
        };
        ctx(manifest.finish(&header), "manifest finish")?;
        new_chunks += writer.new_chunks();
        new_bytes += writer.new_bytes();
        let before_commit = started.elapsed();
        ctx(writer.commit(&name), "commit")?;
        notes.push(format!(
            "{name} {:.1}s (commit {:.1}s, heap {:.0} MiB)",
            started.elapsed().as_secs_f64(),
            (started.elapsed() - before_commit).as_secs_f64(),
            mib(meter.take_peak_anon())
        ));
    }
    if new_chunks != n {
        return Err(format!("{new_chunks} new chunks stored, expected {n}"));
    }
    Ok(Outcome {
        chunks: n,
        note: format!("{}; {} MiB in packs", notes.join(", "), new_bytes >> 20),
    })
}

fn open_list(dir: &Path) -> Result<Outcome, String> {
    let store = ctx(Store::open(dir), "open")?;
    let images = ctx(store.images(), "images")?;
    Ok(Outcome {
        chunks: images.iter().map(|i| i.chunk_count).sum(),
        note: format!("{} images", images.len()),
    })
}

fn stats(dir: &Path) -> Result<Outcome, String> {
    let store = ctx(Store::open(dir), "open")?;
    let s = ctx(store.stats(), "stats")?;
    Ok(Outcome {
        chunks: s.chunks,
        note: format!(
            "{} images, stored {} MiB, logical {} MiB",
            s.images,
            s.stored_bytes >> 20,
            s.logical_bytes >> 20
        ),
    })
}

fn verify(dir: &Path, scale: Scale, after_gc: bool) -> Result<Outcome, String> {
    let store = ctx(Store::open(dir), "open")?;
    let report = ctx(store.verify(), "verify")?;
    if !report.is_ok() {
        return Err(format!(
            "verify found {} corrupt chunks (first {:?}) and image errors {:?}",
            report.corrupt.len(),
            report.corrupt.first(),
            report.image_errors.iter().take(3).collect::<Vec<_>>()
        ));
    }
    let live = if after_gc {
        scale.chunks_of(scale.kept())
    } else {
        scale.n
    };
    // After gc, Bloom false positives may keep a few dead chunks: at least the live ones remain.
    let expected_ok = if after_gc {
        report.chunks_checked >= live
    } else {
        report.chunks_checked == live
    };
    if !expected_ok {
        return Err(format!(
            "verify checked {} chunks, expected {live}",
            report.chunks_checked
        ));
    }
    Ok(Outcome {
        chunks: report.chunks_checked,
        note: format!("ok, {} images", report.images_checked),
    })
}

fn lookups(dir: &Path, scale: Scale, meter: &mut Meter) -> Result<Outcome, String> {
    let n = scale.n;
    // Setup, not measured: the ids to look up (32 MiB).
    let mut seed = 0x1234_5678u64;
    let ids: Vec<(u64, ChunkId)> = (0..LOOKUPS)
        .map(|_| {
            seed = splitmix(seed);
            let i = seed % n;
            (i, chunk_id(i))
        })
        .collect();
    meter.begin();
    let store = ctx(Store::open(dir), "open")?;
    let reader = ctx(store.reader(), "reader")?;
    let pass = |ids: &[(u64, ChunkId)]| -> Result<(u64, u64), String> {
        let (mut found, mut stored_bytes) = (0u64, 0u64);
        for (i, id) in ids {
            if let Some(data) = ctx(reader.get(id), "get")? {
                found += 1;
                stored_bytes += data.len() as u64;
                if data != payload(*i) {
                    return Err(format!("chunk {i}: wrong bytes"));
                }
            }
        }
        Ok((found, stored_bytes))
    };
    let (found, stored_bytes) = pass(&ids)?;
    meter.end();
    if found != ids.len() as u64 {
        return Err(format!("{found} of {} lookups found their chunk", ids.len()));
    }
    let secs = meter.elapsed.unwrap_or_default().as_secs_f64();
    // The same lookups again, now that the pages they touch are resident (not in the table).
    let warm = Instant::now();
    pass(&ids)?;
    let warm_secs = warm.elapsed().as_secs_f64();
    Ok(Outcome {
        chunks: found,
        note: format!(
            "all found; {:.2} us/lookup incl. the read and hash check of {} B ({:.2} us when repeated warm)",
            secs * 1e6 / found.max(1) as f64,
            stored_bytes / found.max(1),
            warm_secs * 1e6 / found.max(1) as f64
        ),
    })
}

fn remove_gc(dir: &Path, scale: Scale) -> Result<Outcome, String> {
    let n = scale.n;
    let store = ctx(Store::open(dir), "open")?;
    for k in scale.removed() {
        ctx(store.remove_image(&image_name(k)), "remove_image")?;
    }
    let started = Instant::now();
    let report = ctx(store.gc(), "gc")?;
    let dead = scale.chunks_of(scale.removed());
    if report.chunks_kept + report.chunks_removed != n {
        return Err(format!(
            "gc kept {} and removed {}, which is not the {n} stored",
            report.chunks_kept, report.chunks_removed
        ));
    }
    Ok(Outcome {
        chunks: report.chunks_kept + report.chunks_removed,
        note: format!(
            "gc {:.1}s: kept {}, removed {} of {dead} dead ({} kept by Bloom false positives), freed {} MiB",
            started.elapsed().as_secs_f64(),
            report.chunks_kept,
            report.chunks_removed,
            dead.saturating_sub(report.chunks_removed),
            report.bytes_freed >> 20
        ),
    })
}

fn refs(dir: &Path, scale: Scale) -> Result<Outcome, String> {
    let store = ctx(Store::open(dir), "open")?;
    let mut checked = 0;
    for k in scale.kept() {
        ctx(store.verify_image_refs(&image_name(k)), "verify_image_refs")?;
        checked += scale.chunks_of(std::iter::once(k));
    }
    for k in scale.removed() {
        if store.verify_image_refs(&image_name(k)).is_ok() {
            return Err(format!("removed image {} still verifies", image_name(k)));
        }
    }
    // Every chunk of the removed images should be gone but for Bloom false positives.
    let reader = ctx(store.reader(), "reader")?;
    let mut survivors = 0u64;
    for k in scale.removed() {
        for i in scale.range(k) {
            if reader.has(&chunk_id(i)).map_err(|e| e.to_string())? {
                survivors += 1;
            }
        }
    }
    Ok(Outcome {
        chunks: checked,
        note: format!("kept images complete; {survivors} chunks of removed images survive"),
    })
}

// ---------------------------------------------------------------------------------------------
// The parent: runs the phases, prints the table and the verdict.

struct Row {
    phase: String,
    secs: f64,
    cpu_secs: f64,
    read_mib: f64,
    hwm_start_mib: f64,
    hwm_mib: f64,
    anon_start_mib: f64,
    anon_mib: f64,
    file_mib: f64,
    chunks: u64,
    note: String,
}

impl Row {
    fn heap_growth(&self) -> f64 {
        self.anon_mib - self.anon_start_mib
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn run_phase(exe: &Path, phase: &str, store_dir: &Path, scale: Scale) -> Result<Row, String> {
    eprintln!("store_scale: phase {phase} ...");
    let out = Command::new(exe)
        .arg("--phase")
        .arg(phase)
        .arg(store_dir)
        .arg(scale.n.to_string())
        .arg(scale.images.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("phase {phase} failed ({})", out.status));
    }
    let result = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("phase {phase} printed no result"))?;
    let v: Vec<f64> = result.split(' ').filter_map(|x| x.parse().ok()).collect();
    let [
        secs,
        hwm_start,
        hwm,
        anon_start,
        anon,
        file,
        chunks,
        cpu_ticks,
        read_bytes,
    ] = v[..]
    else {
        return Err(format!("phase {phase}: bad result line {result:?}"));
    };
    let kib = |x: f64| mib(x as u64);
    Ok(Row {
        phase: phase.into(),
        secs,
        cpu_secs: cpu_ticks / USER_HZ,
        read_mib: read_bytes / (1024.0 * 1024.0),
        hwm_start_mib: kib(hwm_start),
        hwm_mib: kib(hwm),
        anon_start_mib: kib(anon_start),
        anon_mib: kib(anon),
        file_mib: kib(file),
        chunks: chunks as u64,
        note: stdout
            .lines()
            .find_map(|l| l.strip_prefix("NOTE "))
            .unwrap_or_default()
            .to_string(),
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

fn print_table(rows: &[Row], scale: Scale, on_disk: &str) {
    let n = scale.n;
    let index_mib = (n * INDEX_ENTRY) as f64 / (1024.0 * 1024.0);
    println!();
    println!(
        "store_scale: {n} chunks of {PAYLOAD} B in {} images; index {index_mib:.0} MiB ({INDEX_ENTRY} B/entry); {on_disk}",
        scale.images
    );
    println!(
        "{:<16} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9}  notes",
        "phase", "seconds", "cpu s", "read MiB", "peak RSS", "growth", "peak anon", "peak file", "chunks"
    );
    for r in rows {
        println!(
            "{:<16} {:>8.2} {:>8.2} {:>9.0} {:>9.1} {:>8.1} {:>9.1} {:>9.1} {:>9}  {}",
            r.phase,
            r.secs,
            r.cpu_secs,
            r.read_mib,
            r.hwm_mib,
            r.hwm_mib - r.hwm_start_mib,
            r.anon_mib,
            r.file_mib,
            r.chunks,
            r.note
        );
    }
    println!(
        "(MiB. Each phase is its own process. peak RSS = VmHWM, reset when the measured part begins; growth = \
         peak RSS minus RSS then; peak anon / peak file = sampled (5 ms) maxima of RssAnon (heap) and RssFile \
         (file-backed: the binary); read MiB = read_bytes from /proc/self/io (page-cache \
         misses); cpu s = utime + stime of all threads.)"
    );
    let half = index_mib / 2.0;
    if let Some(h) = rows.iter().max_by(|a, b| a.hwm_mib.total_cmp(&b.hwm_mib)) {
        println!(
            "verdict, peak RSS (VmHWM) < half the index in every phase: {} (largest {:.0} MiB in {} = {:.0}% of \
             the {index_mib:.0} MiB index, of which {:.0} MiB file-backed: the binary and other mapped files, \
             which the kernel can drop; they are not heap)",
            if h.hwm_mib < half { "YES" } else { "NO" },
            h.hwm_mib,
            h.phase,
            100.0 * h.hwm_mib / index_mib.max(f64::MIN_POSITIVE),
            h.file_mib
        );
    }
    if let Some(a) = rows.iter().max_by(|a, b| a.heap_growth().total_cmp(&b.heap_growth())) {
        let readers = rows
            .iter()
            .filter(|r| r.phase != "generate" && r.phase != "lookups")
            .map(Row::heap_growth)
            .fold(0.0, f64::max);
        println!(
            "verdict, heap (RssAnon) growth < half the index in every phase: {} (largest {:.0} MiB in {} = {:.0}% \
             of the index; every phase but generate and lookups (which holds its 32 MiB of ids) under {:.0} MiB)",
            if a.heap_growth() < half { "YES" } else { "NO" },
            a.heap_growth(),
            a.phase,
            100.0 * a.heap_growth() / index_mib.max(f64::MIN_POSITIVE),
            readers.ceil()
        );
    }
}

fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn parent() -> Result<(), String> {
    let scale = Scale {
        n: env_number("SCALE_CHUNKS", DEFAULT_CHUNKS)?,
        images: env_number("SCALE_IMAGES", DEFAULT_IMAGES)?.max(1),
    };
    if scale.n < scale.images {
        return Err(format!("SCALE_CHUNKS must be at least SCALE_IMAGES ({})", scale.images));
    }
    let (work, remove_work) = match std::env::var_os("SCALE_DIR") {
        Some(d) => (PathBuf::from(d), false),
        None => (
            std::env::temp_dir().join(format!("fog-store-scale-{}", std::process::id())),
            true,
        ),
    };
    let store_dir = work.join("store");
    if store_dir.exists() {
        return Err(format!(
            "{} exists; give a SCALE_DIR without a store in it",
            store_dir.display()
        ));
    }
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut rows = Vec::new();
    let mut failure = None;
    let mut on_disk = String::new();
    for phase in PHASES {
        match run_phase(&exe, phase, &store_dir, scale) {
            Ok(row) => rows.push(row),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if phase == "generate" {
            let sizes: Vec<String> = ["packs", "index", "images"]
                .into_iter()
                .map(|d| format!("{d} {} MiB", dir_bytes(&store_dir.join(d)) >> 20))
                .collect();
            on_disk = format!("on disk: {}", sizes.join(", "));
        }
    }
    print_table(&rows, scale, &on_disk);
    let _ = std::io::stdout().flush();
    let keep = std::env::var("SCALE_KEEP").is_ok_and(|v| v == "1");
    if !keep {
        let target = if remove_work { &work } else { &store_dir };
        if let Err(e) = fs::remove_dir_all(target) {
            eprintln!("store_scale: cannot remove {}: {e}", target.display());
        }
    }
    failure.map_or(Ok(()), Err)
}
