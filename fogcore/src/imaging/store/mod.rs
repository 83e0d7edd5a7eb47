//! The content-addressed store: chunks in pack files found through a sorted index, image
//! manifests, and the rules that keep it consistent when captures run side by side or are killed.
//!
//! ```text
//! STORE/fog-store            marker and format version
//! STORE/lock                 shared by captures and deploys, exclusive for gc
//! STORE/index.lock           exclusive while index runs are added or merged
//! STORE/packs/<n>.pack       frames of chunks compressed together, appended (see `pack`)
//! STORE/index/<name>.idx     sorted runs mapping chunk id -> pack, frame, place in the frame (see `index`)
//! STORE/images/<name>.fogimg manifests
//! STORE/tmp/<writer>/        a capture's manifest (and spilled index runs) until commit; a
//!                            manifest being received (`m-*`) until it is checked and renamed
//! ```
//!
//! Commit order: packs fsynced -> index run written, fsynced, renamed -> manifest renamed into
//! `images/`. A crash at any point leaves either no image or a complete one; a pack that no run
//! names, or a staging directory, is what [`Store::gc`] removes.
//!
//! A capture hands the writer runs of consecutive chunks; the ones the store lacks are compressed
//! together as one frame. Readers decompress a whole frame to get one chunk, so a
//! [`StoreReader`] keeps the last frames it decoded: a sequential deploy decodes each frame once.
//!
//! Memory does not grow with an image (`[store] memory_mib`, see [`Store::with_memory_mib`]): a
//! writer keeps a quarter of its budget of new index entries in memory and spills the rest to
//! sorted runs in its staging directory (looked up behind a Bloom filter of another quarter);
//! index runs are read in windows, never mapped or loaded whole; gc marks live chunks in a filter
//! of half the budget. What stays is fixed: frame buffers, the reader's frame cache, read windows.

pub mod index;
pub mod pack;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rayon::prelude::*;
use serde::Serialize;

use super::chunk::{self, ChunkId, ChunkSink, ChunkSource, FramePart, WireFrame};
use super::manifest::{Header, Manifest, ManifestWriter};
use crate::error::IoContext;
use crate::{Error, Result};
use index::{Bloom, Durability, Entry, Index, Loc, Merged, RUN_SUFFIX, Run, Spills, write_run};
use pack::{Frame, FrameReader, PackWriter, frame_size, pack_path, parse_pack_name, remove_pack};

const MARKER: &str = "fog-store";
const MARKER_CONTENT: &str = "fog content-addressed store, format 3 (framed packs)\n";
const IMAGE_SUFFIX: &str = ".fogimg";
/// Published runs of one size tier are merged into one once there are this many (see
/// [`compact`]), so lookups read few runs and an entry is rewritten once per tier.
const TIER_RUNS: usize = 8;
/// Entries of the smallest tier; each tier up holds runs [`TIER_RUNS`] times larger.
const TIER_BASE: u64 = 1 << 16;
/// The memory budget of a store's jobs when none is set, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// The least budget a store accepts, in MiB: below it the fixed buffers dominate anyway.
pub const MIN_MEMORY_MIB: u64 = 8;
/// Checks a memory budget a user gave as `field` (a config key, an option): at least
/// [`MIN_MEMORY_MIB`].
pub fn check_memory_mib(field: &'static str, mib: u64) -> Result<u64> {
    if mib < MIN_MEMORY_MIB {
        return Err(Error::invalid(
            field,
            mib.to_string(),
            format!("less than the least a store job works in ({MIN_MEMORY_MIB} MiB)"),
        ));
    }
    Ok(mib)
}

/// Bytes one in-memory index entry of a writer takes (id, place, hash table slack).
const PENDING_ENTRY_BYTES: u64 = 128;
/// Chunks verify checks per batch (sorted by pack position, checked in parallel by frame).
const VERIFY_BATCH: usize = 1 << 16;
/// Decoded frames a reader keeps: each deploy thread's current frame and the next, with room.
const FRAME_CACHE: usize = 32;
/// Tries (20 ms apart) of the exclusive lock before gc reports the store busy.
const LOCK_RETRIES: u32 = 25;

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    budget: Budget,
}

/// What each job of a store (a capture's writer, a gc) may keep in memory of what grows with
/// an image or the store; the rest goes to sorted runs on disk.
#[derive(Debug, Clone, Copy)]
struct Budget {
    bytes: u64,
}

impl Budget {
    fn of_mib(mib: u64) -> Budget {
        Budget {
            bytes: mib.max(MIN_MEMORY_MIB) << 20,
        }
    }

    /// New index entries a writer keeps in memory before it spills them: a quarter.
    fn pending_entries(self) -> usize {
        (self.bytes / 4 / PENDING_ENTRY_BYTES) as usize
    }

    /// A writer's filter over the ids it spilled: a quarter.
    fn spill_filter_bytes(self) -> u64 {
        self.bytes / 4
    }

    /// gc's filter of live chunks: half.
    fn live_filter_bytes(self) -> u64 {
        self.bytes / 2
    }
}

/// A lock on the store; dropped when the work is done.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// Summary of an image, from its header.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// Image name.
    pub name: String,
    /// Unix time of capture.
    pub created: u64,
    /// Source disk size in bytes.
    pub disk_size: u64,
    /// Used data bytes.
    pub data_bytes: u64,
    /// Number of chunk references.
    pub chunk_count: u64,
    /// Partition table kind.
    pub table: String,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Chunks still referenced (or kept by chance, see [`Store::gc`]).
    pub chunks_kept: u64,
    /// Chunks removed.
    pub chunks_removed: u64,
    /// Stored bytes freed.
    pub bytes_freed: u64,
    /// Abandoned capture directories removed.
    pub staging_removed: u64,
    /// Peak resident memory of the process by the end, in bytes (see [`crate::memory`]).
    pub peak_memory_bytes: u64,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Chunks checked.
    pub chunks_checked: u64,
    /// Chunks whose content is wrong or whose frame is damaged (ids, hex).
    pub corrupt: Vec<String>,
    /// Images checked.
    pub images_checked: u64,
    /// Problems with images (damaged manifest, missing chunks).
    pub image_errors: Vec<String>,
    /// Peak resident memory of the process by the end, in bytes (see [`crate::memory`]).
    pub peak_memory_bytes: u64,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.corrupt.is_empty() && self.image_errors.is_empty()
    }
}

/// Sizes of the store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStats {
    /// Number of images.
    pub images: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Bytes the packs (frames of chunks) and the index take.
    pub stored_bytes: u64,
    /// Bytes of used data the images hold, summed over images.
    pub logical_bytes: u64,
}

impl StoreStats {
    /// Logical bytes per stored byte (dedupe and compression together).
    pub fn ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            0.0
        } else {
            self.logical_bytes as f64 / self.stored_bytes as f64
        }
    }
}

/// Checks an image name: it becomes a file name, so no separators and no leading dot.
pub fn check_image_name(name: &str) -> Result<()> {
    // The one rule for image names (the master's too), so a local capture can be pushed.
    match crate::names::ImageName::new(name) {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::InvalidImageName(name.into())),
    }
}

impl Store {
    /// Opens the store at `root`, creating it if the directory is absent or empty.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        let marker = root.join(MARKER);
        if !marker.exists() {
            fs::create_dir_all(&root).at(&root)?;
            let foreign = fs::read_dir(&root).at(&root)?.next().is_some();
            if foreign {
                return Err(Error::InvalidInput(format!(
                    "{} is not empty and not a fog store; give an empty or new directory",
                    root.display()
                )));
            }
            for dir in ["packs", "index", "images", "tmp"] {
                fs::create_dir_all(root.join(dir)).at(root.join(dir))?;
            }
            for lock in ["lock", "index.lock"] {
                fs::write(root.join(lock), b"").at(root.join(lock))?;
            }
            fs::write(&marker, MARKER_CONTENT).at(&marker)?;
        } else {
            let content = fs::read_to_string(&marker).at(&marker)?;
            if content != MARKER_CONTENT {
                return Err(Error::InvalidInput(format!(
                    "{} holds a store of another format ({:?}); this fog reads {:?} only: \
                     capture the images again into a new store",
                    root.display(),
                    content.trim(),
                    MARKER_CONTENT.trim()
                )));
            }
        }
        Ok(Store {
            root,
            budget: Budget::of_mib(DEFAULT_MEMORY_MIB),
        })
    }

    /// Sets the memory each job of this store may use for what grows with an image (at least
    /// [`MIN_MEMORY_MIB`]). Jobs stay within it plus fixed buffers (frames in flight, the
    /// reader's frame cache, read windows): a 2 TB capture takes what a 2 GB one does.
    pub fn with_memory_mib(mut self, mib: u64) -> Store {
        self.budget = Budget::of_mib(mib);
        self
    }

    /// The memory budget of each job, in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.budget.bytes >> 20
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_file(&self, name: &str) -> Result<File> {
        let path = self.root.join(name);
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)
    }

    /// A shared lock: captures and deploys take it, so gc cannot remove chunks under them.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        let file = self.lock_file("lock")?;
        file.lock_shared().at(self.root.join("lock"))?;
        Ok(StoreLock { _file: file })
    }

    fn lock_exclusive(&self) -> Result<StoreLock> {
        let file = self.lock_file("lock")?;
        // A child process another thread is starting holds a copy of a lock's descriptor until
        // its exec closes it: a lock seen busy is tried again for a moment before giving up.
        for attempt in 0..=LOCK_RETRIES {
            match file.try_lock() {
                Ok(()) => return Ok(StoreLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if attempt < LOCK_RETRIES => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => break,
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(self.root.join("lock"), e)),
            }
        }
        Err(Error::StoreBusy {
            path: self.root.clone(),
            reason: "a capture or deploy is running; try again when it ends".into(),
        })
    }

    fn lock_index(&self) -> Result<StoreLock> {
        let file = self.lock_file("index.lock")?;
        file.lock().at(self.root.join("index.lock"))?;
        Ok(StoreLock { _file: file })
    }

    fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    fn image_path(&self, name: &str) -> PathBuf {
        self.root.join("images").join(format!("{name}{IMAGE_SUFFIX}"))
    }

    /// Opens the manifest of image `name`.
    pub fn manifest(&self, name: &str) -> Result<Manifest> {
        check_image_name(name)?;
        let path = self.image_path(name);
        if !path.exists() {
            return Err(Error::ImageNotFound(name.into()));
        }
        Manifest::open(&path, name)
    }

    /// Names of all images, sorted.
    pub fn image_names(&self) -> Result<Vec<String>> {
        let dir = self.root.join("images");
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let file_name = entry.file_name();
            if let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(IMAGE_SUFFIX))
                && check_image_name(name).is_ok()
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Summaries of all images. A damaged manifest is an error naming it.
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        self.image_names()?
            .iter()
            .map(|name| self.manifest(name).map(|m| summary(&m.header)))
            .collect()
    }

    /// Removes image `name` (its chunks stay until gc).
    pub fn remove_image(&self, name: &str) -> Result<()> {
        check_image_name(name)?;
        let path = self.image_path(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.root.join("images")),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::ImageNotFound(name.into())),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Reads chunks as the index stands now.
    pub fn reader(&self) -> Result<StoreReader> {
        Ok(StoreReader::new(self.packs_dir(), Index::load(&self.index_dir())?))
    }

    /// Starts writing new chunks and one manifest. Holds a shared lock until dropped.
    pub fn writer(&self) -> Result<StoreWriter> {
        let lock = self.lock_shared()?;
        let staging = tempdir_in(&self.root.join("tmp"))?;
        let state = WriterState {
            spilled: Spills::new(&staging, self.budget.spill_filter_bytes()),
            pack: None,
            finished_packs: Vec::new(),
            pending: HashMap::new(),
            claimed: HashSet::new(),
            open_table: Vec::new(),
            open_plain: Vec::new(),
        };
        Ok(StoreWriter {
            store: self.clone(),
            known: Index::load(&self.index_dir())?,
            staging,
            _lock: lock,
            state: Mutex::new(state),
            failed: AtomicBool::new(false),
            new_chunks: AtomicU64::new(0),
            new_bytes: AtomicU64::new(0),
        })
    }

    /// Removes chunks no image references, packs and staging left by interrupted captures, and
    /// merges the index into one run.
    ///
    /// Live chunks are marked in a Bloom filter sized for the number of references (3 bytes
    /// each) up to half the memory budget, so memory stays bounded however large the store is. A
    /// false positive only keeps a dead chunk until the next gc (the filter is seeded anew each
    /// run; a full filter keeps more); a live chunk is never removed. Packs holding dead chunks are rewritten frame by frame: a frame whose chunks
    /// all live is copied as it is, one with dead chunks is decoded and its live chunks are
    /// compressed again into new frames (with those of the next such frames), so every dead byte
    /// is freed and only frames that lost something cost CPU.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock_exclusive()?;
        let _index_lock = self.lock_index()?;
        let mut report = GcReport::default();
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).at(&tmp)? {
            let path = entry.at(&tmp)?.path();
            fs::remove_dir_all(&path).at(&path)?;
            report.staging_removed += 1;
        }
        // Runs a killed compaction was writing (never renamed into place).
        let index_dir = self.index_dir();
        for entry in fs::read_dir(&index_dir).at(&index_dir)? {
            let path = entry.at(&index_dir)?.path();
            if path.extension().is_some_and(|e| e == "idx-tmp") {
                fs::remove_file(&path).at(&path)?;
            }
        }
        let manifests: Vec<Manifest> = self
            .image_names()?
            .iter()
            .map(|n| self.manifest(n))
            .collect::<Result<_>>()?;
        let references = manifests.iter().map(|m| m.header.chunk_count).sum();
        let mut live = Bloom::for_entries(references, self.budget.live_filter_bytes());
        for m in &manifests {
            for region in &m.header.regions {
                for chunk in m.chunks(region) {
                    live.insert(&chunk?.id);
                }
            }
        }
        let index = Index::load(&self.index_dir())?;
        // Pass 1: which packs hold dead entries (unreferenced chunks or extra copies), and how
        // many live chunks each pack holds.
        let mut dirty = HashSet::new();
        let mut live_per_pack: HashMap<u32, u64> = HashMap::new();
        for entry in index.merged() {
            let (id, loc, first) = entry?;
            let live_count = live_per_pack.entry(loc.pack).or_insert(0);
            if first && live.contains(&id) {
                report.chunks_kept += 1;
                *live_count += 1;
            } else {
                dirty.insert(loc.pack);
                if first {
                    report.chunks_removed += 1;
                }
            }
        }
        // Pass 2: the live chunks of dirty packs move to new packs, read in pack order.
        let packs_dir = self.packs_dir();
        let staging = tempdir_in(&tmp)?;
        let mut rewriter = Rewriter::new(&packs_dir, Spills::new(&staging, 0));
        let mut dirty_sorted: Vec<u32> = dirty.iter().copied().collect();
        dirty_sorted.sort_unstable();
        let moved = (|| {
            for &number in &dirty_sorted {
                if live_per_pack.get(&number).copied().unwrap_or(0) == 0 {
                    continue;
                }
                let mut frames = FrameReader::open(&packs_dir, number)?;
                while let Some(frame) = frames.next_frame()? {
                    let mut keep = Vec::with_capacity(frame.chunks.len());
                    for &(id, start, _) in &frame.chunks {
                        keep.push(
                            live.contains(&id)
                                && index
                                    .get(&id)?
                                    .is_some_and(|l| l.pack == number && l.offset == frame.offset && l.start == start),
                        );
                    }
                    rewriter.take(&frame, &keep)?;
                }
            }
            rewriter.finish()
        })();
        let created = rewriter.created.clone();
        let abandon = |e: Error| {
            for &number in &created {
                let _ = remove_pack(&packs_dir, number);
            }
            let _ = fs::remove_dir_all(&staging);
            e
        };
        moved.map_err(abandon)?;
        let expected: u64 = dirty.iter().filter_map(|p| live_per_pack.get(p)).sum();
        if rewriter.moved_count != expected {
            return Err(abandon(Error::Internal(format!(
                "gc found {} of the {expected} live chunks the index places in packs {}; nothing was \
                 removed: run `fog store verify`",
                rewriter.moved_count,
                packs_dir.display()
            ))));
        }
        // One new run: live entries of clean packs and the moved ones. It is renamed into place
        // only now that every pack it names is durable.
        let kept = index
            .merged()
            .filter(|m| {
                m.as_ref().map_or(true, |(id, loc, first)| {
                    *first && !dirty.contains(&loc.pack) && live.contains(id)
                })
            })
            .map(|m| m.map(|(id, loc, _)| (id, loc)));
        let staged_run = staging.join(format!("gc{RUN_SUFFIX}"));
        write_run(
            &staged_run,
            merge_two(kept, rewriter.spills.merged().entries()),
            Durability::Synced,
        )
        .map_err(abandon)?;
        let new_run = self.index_dir().join(format!("gc-{}{RUN_SUFFIX}", unique_name()));
        if Run::open(&staged_run)?.is_empty() {
            fs::remove_file(&staged_run).at(&staged_run)?;
        } else {
            fs::rename(&staged_run, &new_run).at(&new_run)?;
            sync_dir(&self.index_dir())?;
        }
        for run in index.runs() {
            fs::remove_file(run.path()).at(run.path())?;
        }
        sync_dir(&self.index_dir())?;
        drop(index);
        // Packs no run names any more: rewritten ones and those of killed captures.
        let (mut removed_bytes, mut created_bytes) = (0u64, 0u64);
        for entry in fs::read_dir(&packs_dir).at(&packs_dir)? {
            let entry = entry.at(&packs_dir)?;
            let Some(number) = entry.file_name().to_str().and_then(parse_pack_name) else {
                continue;
            };
            let size = entry.metadata().at(entry.path())?.len();
            if created.contains(&number) {
                created_bytes += size;
            } else if dirty.contains(&number) || !live_per_pack.contains_key(&number) {
                removed_bytes += size;
                remove_pack(&packs_dir, number)?;
            }
        }
        sync_dir(&packs_dir)?;
        fs::remove_dir_all(&staging).at(&staging)?;
        report.bytes_freed = removed_bytes.saturating_sub(created_bytes);
        report.peak_memory_bytes = crate::memory::peak_rss();
        Ok(report)
    }

    /// Checks every indexed chunk against its hash (frames decoded in parallel, in pack order)
    /// and every image's manifest and chunk references.
    pub fn verify(&self) -> Result<VerifyReport> {
        let _lock = self.lock_shared()?;
        let reader = self.reader()?;
        let mut report = VerifyReport::default();
        let mut batch: Vec<(ChunkId, Loc)> = Vec::new();
        let check_batch = |batch: &mut Vec<(ChunkId, Loc)>, report: &mut VerifyReport| {
            // The index is in id order; reading in pack order keeps the disk sequential.
            batch.sort_unstable_by_key(|(_, loc)| (loc.pack, loc.offset, loc.start));
            let frames: Vec<&[(ChunkId, Loc)]> = batch.chunk_by(|a, b| a.1.frame() == b.1.frame()).collect();
            let bad: Vec<String> = frames
                .par_iter()
                .flat_map_iter(|chunks| reader.corrupt_in_frame(chunks))
                .collect();
            report.chunks_checked += batch.len() as u64;
            report.corrupt.extend(bad);
            batch.clear();
        };
        for entry in reader.index.merged() {
            let (id, loc, _) = entry?;
            batch.push((id, loc));
            if batch.len() >= VERIFY_BATCH {
                check_batch(&mut batch, &mut report);
            }
        }
        check_batch(&mut batch, &mut report);
        for name in self.image_names()? {
            report.images_checked += 1;
            if let Err(e) = self.verify_image_refs_with(&reader, &name) {
                report.image_errors.push(e.to_string());
            }
        }
        report.peak_memory_bytes = crate::memory::peak_rss();
        Ok(report)
    }

    /// Checks one image: manifest checksum and that every chunk it needs is indexed.
    pub fn verify_image_refs(&self, name: &str) -> Result<()> {
        self.verify_image_refs_with(&self.reader()?, name)
    }

    fn verify_image_refs_with(&self, reader: &StoreReader, name: &str) -> Result<()> {
        let manifest = self.manifest(name)?;
        manifest.check()?;
        for region in &manifest.header.regions {
            for chunk in manifest.chunks(region) {
                let chunk = chunk?;
                if reader.index.get(&chunk.id)?.is_none() {
                    return Err(Error::ChunkMissing {
                        image: name.into(),
                        chunk: chunk.id.to_hex(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Counts images, chunks and bytes.
    pub fn stats(&self) -> Result<StoreStats> {
        let mut stats = StoreStats::default();
        for image in self.images()? {
            stats.images += 1;
            stats.logical_bytes += image.data_bytes;
        }
        let index = Index::load(&self.index_dir())?;
        for entry in index.merged() {
            if entry?.2 {
                stats.chunks += 1;
            }
        }
        for dir in [self.packs_dir(), self.index_dir()] {
            for entry in fs::read_dir(&dir).at(&dir)? {
                let entry = entry.at(&dir)?;
                stats.stored_bytes += entry.metadata().at(entry.path())?.len();
            }
        }
        Ok(stats)
    }
}

/// A chunk asked for in [`StoreReader::frames`]: its position in the request, id and place.
type AskedChunk = (u32, ChunkId, Loc);

/// Reads chunks from a store's packs through the index loaded when it was made.
pub struct StoreReader {
    packs_dir: PathBuf,
    index: Index,
    open_packs: Mutex<HashMap<u32, Arc<File>>>,
    cache: FrameCache,
}

/// A decoded frame, shared by the threads that need it; `None` when decoding failed.
type FrameSlot = Arc<OnceLock<Option<Arc<Vec<u8>>>>>;

/// The last frames a reader decoded (least recently used at the front). A slot is inserted before
/// its frame is decoded, so threads asking for the same frame at once wait for one decode.
#[derive(Default)]
struct FrameCache {
    slots: Mutex<VecDeque<((u32, u64), FrameSlot)>>,
    decoded: AtomicU64,
}

impl FrameCache {
    fn slot(&self, key: (u32, u64)) -> FrameSlot {
        let mut slots = lock(&self.slots);
        if let Some(at) = slots.iter().position(|(k, _)| *k == key)
            && let Some(entry) = slots.remove(at)
        {
            let slot = entry.1.clone();
            slots.push_back(entry);
            return slot;
        }
        let slot = FrameSlot::default();
        slots.push_back((key, slot.clone()));
        while slots.len() > FRAME_CACHE {
            slots.pop_front();
        }
        slot
    }

    fn forget(&self, key: (u32, u64)) {
        lock(&self.slots).retain(|(k, _)| *k != key);
    }
}

impl StoreReader {
    fn new(packs_dir: PathBuf, index: Index) -> StoreReader {
        StoreReader {
            packs_dir,
            index,
            open_packs: Mutex::new(HashMap::new()),
            cache: FrameCache::default(),
        }
    }

    /// True when the store holds chunk `id`.
    pub fn has(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.index.get(id)?.is_some())
    }

    /// Frames this reader has read and decoded so far (a sequential read decodes each once).
    pub fn frames_decoded(&self) -> u64 {
        self.cache.decoded.load(Ordering::Relaxed)
    }

    fn pack(&self, number: u32) -> Result<Arc<File>> {
        let mut open = lock(&self.open_packs);
        if let Some(f) = open.get(&number) {
            return Ok(f.clone());
        }
        let path = pack_path(&self.packs_dir, number);
        let file = Arc::new(File::open(&path).at(&path)?);
        open.insert(number, file.clone());
        Ok(file)
    }

    /// The stored bytes of the frame at `loc`.
    fn read_stored(&self, loc: &Loc) -> Result<Vec<u8>> {
        let mut stored = vec![0u8; loc.len as usize];
        self.pack(loc.pack)?
            .read_exact_at(&mut stored, loc.offset)
            .at(pack_path(&self.packs_dir, loc.pack))?;
        Ok(stored)
    }

    /// Reads and decodes the frame holding `id` (named in the error when the frame is damaged).
    fn load_frame(&self, id: &ChunkId, loc: &Loc) -> Result<Vec<u8>> {
        let stored = self.read_stored(loc)?;
        self.cache.decoded.fetch_add(1, Ordering::Relaxed);
        chunk::decode_whole(&stored).map_err(|reason| corrupt(id, format!("its frame is damaged: {reason}")))
    }

    /// The frames holding `ids`, in the order of their first asked-for chunk, for the wire (see
    /// [`WireFrame`]); absent ids are in no frame. A frame whose asked-for chunks make up at
    /// least half of its plain bytes goes as stored: no decode, no hash, no compression here (the
    /// receiver checks every chunk). A frame mostly of other chunks (another image's, after
    /// dedupe) is cut down to the asked-for ones and encoded again, so a sparse read does not
    /// carry a frame of strangers.
    pub fn frames(&self, ids: &[ChunkId]) -> Result<Vec<WireFrame>> {
        let mut groups: Vec<(Loc, Vec<AskedChunk>)> = Vec::new();
        let mut group_of: HashMap<(u32, u64), usize> = HashMap::new();
        for (index, id) in (0u32..).zip(ids) {
            let Some(loc) = self.index.get(id)? else { continue };
            let at = *group_of.entry(loc.frame()).or_insert_with(|| {
                groups.push((loc, Vec::new()));
                groups.len() - 1
            });
            groups[at].1.push((index, *id, loc));
        }
        groups
            .into_par_iter()
            .map(|(frame, chunks)| self.wire_frame(&frame, &chunks))
            .collect()
    }

    fn wire_frame(&self, frame: &Loc, chunks: &[AskedChunk]) -> Result<WireFrame> {
        let stored = self.read_stored(frame)?;
        let first = chunks.first().map_or(ChunkId([0; 32]), |c| c.1);
        let plain_len =
            chunk::plain_len(&stored).map_err(|reason| corrupt(&first, format!("its frame is damaged: {reason}")))?;
        let mut asked = HashSet::new();
        for (_, id, loc) in chunks {
            if loc.start as usize + loc.chunk_len as usize > plain_len {
                return Err(corrupt(id, "it lies past the end of its frame".into()));
            }
            asked.insert((loc.start, loc.chunk_len));
        }
        let asked_bytes: usize = asked.iter().map(|(_, len)| *len as usize).sum();
        if asked_bytes * 2 >= plain_len {
            let parts = chunks
                .iter()
                .map(|(index, _, loc)| FramePart {
                    index: *index,
                    start: loc.start,
                    len: loc.chunk_len,
                })
                .collect();
            return Ok(WireFrame { stored, parts });
        }
        // Decoded from the bytes already read: each frame is read once per request.
        let decoded = chunk::decode(&stored, plain_len)
            .map_err(|reason| corrupt(&first, format!("its frame is damaged: {reason}")))?;
        let mut plain = Vec::with_capacity(asked_bytes);
        let mut parts = Vec::with_capacity(chunks.len());
        let mut placed: HashMap<(u32, u32), u32> = HashMap::new();
        for (index, id, loc) in chunks {
            let start = match placed.get(&(loc.start, loc.chunk_len)) {
                Some(&start) => start,
                None => {
                    let data = chunk_in(&decoded, loc)
                        .ok_or_else(|| corrupt(id, "it lies past the end of its frame".into()))?;
                    let start = plain.len() as u32;
                    plain.extend_from_slice(data);
                    placed.insert((loc.start, loc.chunk_len), start);
                    start
                }
            };
            parts.push(FramePart {
                index: *index,
                start,
                len: loc.chunk_len,
            });
        }
        Ok(WireFrame {
            stored: chunk::encode(&plain),
            parts,
        })
    }

    /// The decoded frame of `loc`, from the cache when it is there.
    fn cached_frame(&self, id: &ChunkId, loc: &Loc) -> Result<Arc<Vec<u8>>> {
        let slot = self.cache.slot(loc.frame());
        let mut failure = None;
        let frame = slot.get_or_init(|| match self.load_frame(id, loc) {
            Ok(frame) => Some(Arc::new(frame)),
            Err(e) => {
                failure = Some(e);
                None
            }
        });
        match frame {
            Some(frame) => Ok(frame.clone()),
            None => {
                self.cache.forget(loc.frame());
                // Another thread's decode failed: read it again for this chunk's own error.
                Err(failure.unwrap_or_else(|| match self.load_frame(id, loc) {
                    Ok(_) => corrupt(id, "its frame could not be read".into()),
                    Err(e) => e,
                }))
            }
        }
    }

    /// Ids (hex) of the chunks that are wrong among `chunks`, all in one frame.
    fn corrupt_in_frame(&self, chunks: &[(ChunkId, Loc)]) -> Vec<String> {
        let frame = chunks.first().map(|(id, loc)| self.load_frame(id, loc));
        chunks
            .iter()
            .filter(|(id, loc)| match &frame {
                Some(Ok(frame)) => chunk_in(frame, loc).is_none_or(|data| chunk::check(id, data).is_err()),
                _ => true,
            })
            .map(|(id, _)| id.to_hex())
            .collect()
    }
}

impl ChunkSource for StoreReader {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let mut data = Vec::new();
        Ok(self.get_into(id, &mut data)?.then_some(data))
    }

    fn get_into(&self, id: &ChunkId, buf: &mut Vec<u8>) -> Result<bool> {
        let Some(loc) = self.index.get(id)? else {
            return Ok(false);
        };
        let frame = self.cached_frame(id, &loc)?;
        let data = chunk_in(&frame, &loc).ok_or_else(|| corrupt(id, "it lies past the end of its frame".into()))?;
        chunk::check(id, data).map_err(|reason| corrupt(id, reason))?;
        buf.extend_from_slice(data);
        Ok(true)
    }
}

/// The bytes of the chunk at `loc` in its decoded frame.
fn chunk_in<'a>(frame: &'a [u8], loc: &Loc) -> Option<&'a [u8]> {
    let start = loc.start as usize;
    frame.get(start..start.checked_add(loc.chunk_len as usize)?)
}

fn corrupt(id: &ChunkId, reason: String) -> Error {
    Error::ChunkCorrupt {
        image: "store".into(),
        chunk: id.to_hex(),
        reason,
    }
}

/// Moves live chunks of dirty packs into new packs for gc (see [`Store::gc`]).
struct Rewriter<'a> {
    packs_dir: &'a Path,
    pack: Option<PackWriter>,
    created: HashSet<u32>,
    /// Live chunks of partly dead frames waiting to be framed again.
    table: Vec<(ChunkId, u32)>,
    plain: Vec<u8>,
    /// New index entries not yet spilled, and the spilled runs.
    moved: Vec<Entry>,
    spills: Spills,
    moved_count: u64,
}

/// Moved entries gc keeps in memory before it spills them (3.5 MiB).
const GC_MOVED_ENTRIES: usize = 1 << 16;

impl<'a> Rewriter<'a> {
    fn new(packs_dir: &'a Path, spills: Spills) -> Rewriter<'a> {
        Rewriter {
            packs_dir,
            pack: None,
            created: HashSet::new(),
            table: Vec::new(),
            plain: Vec::new(),
            moved: Vec::new(),
            spills,
            moved_count: 0,
        }
    }

    /// Keeps the chunks of `frame` marked in `keep`.
    fn take(&mut self, frame: &Frame, keep: &[bool]) -> Result<()> {
        let kept = keep.iter().filter(|&&k| k).count();
        if kept == 0 {
            return Ok(());
        }
        if kept == frame.chunks.len() {
            let table: Vec<(ChunkId, u32)> = frame.chunks.iter().map(|&(id, _, len)| (id, len)).collect();
            return self.append(&table, &frame.stored);
        }
        let first_live = frame.chunks.iter().zip(keep).find(|(_, k)| **k).map(|(c, _)| c.0);
        let named = |reason: String| corrupt(&first_live.unwrap_or(ChunkId([0; 32])), reason);
        let plain = chunk::decode(&frame.stored, frame.plain_len as usize)
            .map_err(|reason| named(format!("its frame is damaged: {reason}")))?;
        for (&(id, start, len), _) in frame.chunks.iter().zip(keep).filter(|(_, k)| **k) {
            let loc = Loc {
                pack: 0,
                offset: 0,
                len: 0,
                start,
                chunk_len: len,
            };
            let data = chunk_in(&plain, &loc).ok_or_else(|| named("chunk table past its frame".into()))?;
            chunk::check(&id, data).map_err(|reason| corrupt(&id, reason))?;
            self.table.push((id, len));
            self.plain.extend_from_slice(data);
            if self.plain.len() >= chunk::FRAME_TARGET {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Frames the waiting live chunks.
    fn flush(&mut self) -> Result<()> {
        if self.table.is_empty() {
            return Ok(());
        }
        let stored = chunk::encode(&self.plain);
        let table = std::mem::take(&mut self.table);
        self.plain.clear();
        self.append(&table, &stored)
    }

    fn append(&mut self, table: &[(ChunkId, u32)], stored: &[u8]) -> Result<()> {
        if self.pack.as_ref().is_some_and(|p| p.len() >= pack::PACK_TARGET_SIZE)
            && let Some(full) = self.pack.take()
        {
            full.finish()?;
        }
        let writer = match &mut self.pack {
            Some(w) => w,
            None => self.pack.insert(PackWriter::create(self.packs_dir)?),
        };
        self.created.insert(writer.number());
        let locs = writer.append_frame(table, stored)?;
        for (&(id, _), loc) in table.iter().zip(locs) {
            self.moved.push((id, loc));
        }
        self.moved_count += table.len() as u64;
        if self.moved.len() >= GC_MOVED_ENTRIES {
            self.spills.add(std::mem::take(&mut self.moved))?;
        }
        Ok(())
    }

    /// Frames what waits, makes the new packs durable and spills the last moved entries.
    fn finish(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(p) = self.pack.take() {
            p.finish()?;
        }
        self.spills.add(std::mem::take(&mut self.moved))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct WriterState {
    pack: Option<PackWriter>,
    finished_packs: Vec<PathBuf>,
    /// New entries in memory, up to the budget's share; then spilled.
    pending: HashMap<ChunkId, Loc>,
    /// New chunks in the open frame or being compressed (no other thread stores them).
    claimed: HashSet<ChunkId>,
    /// The open frame: new chunks gathered across runs until it holds `FRAME_TARGET` bytes, so
    /// the scattered changes of a re-capture are compressed together too.
    open_table: Vec<(ChunkId, u32)>,
    open_plain: Vec<u8>,
    spilled: Spills,
}

impl WriterState {
    /// True when this writer stored `id` already (in memory or spilled).
    fn stored(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.pending.contains_key(id) || self.spilled.get(id)?.is_some())
    }
}

/// Writes new chunks and one manifest into a store; see the module docs for the commit order.
/// Dropping it without [`StoreWriter::commit`] leaves a pack no run names and a staging
/// directory, both for gc.
pub struct StoreWriter {
    store: Store,
    known: Index,
    staging: PathBuf,
    _lock: StoreLock,
    state: Mutex<WriterState>,
    /// Set when storing a frame failed: its chunks may be in the manifest but not in the store.
    failed: AtomicBool,
    new_chunks: AtomicU64,
    new_bytes: AtomicU64,
}

impl StoreWriter {
    /// Where the manifest is written before commit.
    pub fn manifest_writer(&self) -> Result<ManifestWriter> {
        ManifestWriter::create(&self.staging.join("manifest"))
    }

    /// Chunks this writer added that the store did not have.
    pub fn new_chunks(&self) -> u64 {
        self.new_chunks.load(Ordering::Relaxed)
    }

    /// Compresses and appends the open frame. [`StoreWriter::commit`] does it too; call it first
    /// to count the last frame in [`StoreWriter::new_bytes`].
    pub fn flush(&self) -> Result<()> {
        let (table, plain) = {
            let mut state = lock(&self.state);
            (
                std::mem::take(&mut state.open_table),
                std::mem::take(&mut state.open_plain),
            )
        };
        if table.is_empty() {
            return Ok(());
        }
        self.store_frame(&table, &plain)
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))
    }

    /// Bytes the new chunks take in packs (frames appended so far; see [`StoreWriter::flush`]).
    pub fn new_bytes(&self) -> u64 {
        self.new_bytes.load(Ordering::Relaxed)
    }

    /// Makes the new chunks, their index run and then the manifest durable and visible as image
    /// `name`, replacing an image of that name.
    pub fn commit(self, name: &str) -> Result<()> {
        check_image_name(name)?;
        let (store, staging) = self.publish_chunks()?;
        let image = store.image_path(name);
        fs::rename(staging.join("manifest"), &image).at(&image)?;
        sync_dir(&store.root.join("images"))?;
        fs::remove_dir_all(&staging).at(&staging)
    }

    /// Makes the new chunks and their index run durable and visible, with no image: replication
    /// commits batch by batch this way, so a re-run after a crash sends only what is missing.
    pub fn commit_chunks(self) -> Result<()> {
        let (_, staging) = self.publish_chunks()?;
        fs::remove_dir_all(&staging).at(&staging)
    }

    /// Flushes the open frame, finishes the packs and publishes the index run of the new chunks.
    fn publish_chunks(self) -> Result<(Store, PathBuf)> {
        self.flush()?;
        if self.failed.load(Ordering::Relaxed) {
            return Err(Error::Internal(
                "a frame of this capture could not be stored; nothing was committed".into(),
            ));
        }
        let state = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut packs = state.finished_packs;
        if let Some(p) = state.pack {
            packs.push(p.finish()?);
        }
        // The new packs' names must be durable before a run names them.
        if !packs.is_empty() {
            sync_dir(&self.store.packs_dir())?;
        }
        let index_dir = self.store.index_dir();
        let mut pending: Vec<Entry> = state.pending.into_iter().collect();
        pending.sort_unstable_by_key(|e| e.0);
        if !pending.is_empty() || !state.spilled.is_empty() {
            let run = self.staging.join(format!("new{RUN_SUFFIX}"));
            write_run(
                &run,
                merge_two(state.spilled.merged().entries(), pending.into_iter().map(Ok)),
                Durability::Synced,
            )?;
            let _index_lock = self.store.lock_index()?;
            let published = index_dir.join(format!("{}{RUN_SUFFIX}", unique_name()));
            fs::rename(&run, &published).at(&published)?;
            sync_dir(&index_dir)?;
            // The chunks are published: a compaction that fails (a full disk) leaves more runs to
            // read, not a failed capture; the next commit tries again.
            if let Err(e) = compact(&index_dir) {
                tracing::warn!(index = %index_dir.display(), "store: compacting the index failed: {e}");
            }
        }
        Ok((self.store, self.staging))
    }
}

/// Two streams sorted by id as one; an error comes out first, and ends the write it feeds.
fn merge_two(
    a: impl Iterator<Item = Result<Entry>>,
    b: impl Iterator<Item = Result<Entry>>,
) -> impl Iterator<Item = Result<Entry>> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(Err(_)), _) | (Some(Ok(_)), None) => a.next(),
        (_, Some(Err(_))) | (None, Some(Ok(_))) => b.next(),
        (Some(Ok(x)), Some(Ok(y))) => {
            if x.0 <= y.0 {
                a.next()
            } else {
                b.next()
            }
        }
        (None, None) => None,
    })
}

/// The size tier of a run of `entries`: 0 up to [`TIER_BASE`], then one more per factor of
/// [`TIER_RUNS`].
fn tier(entries: usize) -> u32 {
    let mut tier = 0;
    let mut bound = TIER_BASE;
    while entries as u64 > bound {
        tier += 1;
        bound = bound.saturating_mul(TIER_RUNS as u64);
    }
    tier
}

/// Merges the runs of a size tier into one once it has [`TIER_RUNS`] of them, then looks again
/// (the merged run may fill the next tier). Each entry is rewritten once per tier it climbs, so
/// a node taking a capture batch by batch does not rewrite its whole index every few batches;
/// lookups read at most `TIER_RUNS - 1` runs per tier. Caller holds the index lock.
fn compact(index_dir: &Path) -> Result<()> {
    loop {
        let index = Index::load(index_dir)?;
        let mut tiers: std::collections::BTreeMap<u32, Vec<&Run>> = std::collections::BTreeMap::new();
        for run in index.runs() {
            tiers.entry(tier(run.len())).or_default().push(run);
        }
        let Some(full) = tiers.into_values().find(|runs| runs.len() >= TIER_RUNS) else {
            return Ok(());
        };
        let merged = index_dir.join(format!("{}{RUN_SUFFIX}", unique_name()));
        let firsts = Merged::new(full.iter().copied())
            .filter(|m| m.as_ref().map_or(true, |m| m.2))
            .map(|m| m.map(|(id, loc, _)| (id, loc)));
        write_run(&merged, firsts, Durability::Synced)?;
        sync_dir(index_dir)?;
        for run in full {
            fs::remove_file(run.path()).at(run.path())?;
        }
        sync_dir(index_dir)?;
    }
}

impl StoreWriter {
    /// Compresses one frame of claimed chunks (ids and lengths, their bytes end to end in
    /// `plain`) and appends it to the pack.
    fn store_frame(&self, table: &[(ChunkId, u32)], plain: &[u8]) -> Result<()> {
        let stored = chunk::encode(plain);
        let mut state = lock(&self.state);
        if state.pack.as_ref().is_some_and(|p| p.len() >= pack::PACK_TARGET_SIZE)
            && let Some(full) = state.pack.take()
        {
            let path = full.finish()?;
            state.finished_packs.push(path);
        }
        let pack = match &mut state.pack {
            Some(p) => p,
            None => state.pack.insert(PackWriter::create(&self.store.packs_dir())?),
        };
        let locs = pack.append_frame(table, &stored)?;
        for (&(id, _), loc) in table.iter().zip(locs) {
            state.claimed.remove(&id);
            state.pending.insert(id, loc);
        }
        if state.pending.len() >= self.store.budget.pending_entries() {
            let entries: Vec<Entry> = state.pending.drain().collect();
            state.spilled.add(entries)?;
        }
        drop(state);
        self.new_bytes
            .fetch_add(frame_size(table.len(), stored.len()), Ordering::Relaxed);
        Ok(())
    }
}

impl ChunkSink for StoreWriter {
    fn has(&self, id: &ChunkId) -> Result<bool> {
        if self.known.get(id)?.is_some() {
            return Ok(true);
        }
        let state = lock(&self.state);
        Ok(state.claimed.contains(id) || state.stored(id)?)
    }

    fn put_run(&self, chunks: &[(ChunkId, &[u8])]) -> Result<usize> {
        let mut fresh = Vec::new();
        for (id, data) in chunks {
            if self.known.get(id)?.is_none() {
                let len = u32::try_from(data.len())
                    .ok()
                    .filter(|&n| n as usize <= chunk::FRAME_MAX)
                    .ok_or_else(|| Error::InvalidInput(format!("chunk {id} of {} bytes is too large", data.len())))?;
                fresh.push((id, len, data));
            }
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        // A run with at least half a frame of new chunks (a first capture, a new file) is framed
        // on its own, so frames follow the runs deploy reads; fewer (the scattered changes of a
        // re-capture) wait in the open frame to be compressed with others.
        let new;
        let mut own: Vec<(ChunkId, u32, &[u8])> = Vec::new();
        let mut full = Vec::new();
        {
            let mut state = lock(&self.state);
            let state = &mut *state;
            for (id, len, data) in fresh {
                // A failed lookup leaves chunks claimed that no frame will hold: the writer
                // must not commit after it.
                let stored = state
                    .stored(id)
                    .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))?;
                if !stored && state.claimed.insert(*id) {
                    own.push((*id, len, &data[..]));
                }
            }
            new = own.len() as u64;
            let own_len: usize = own.iter().map(|c| c.2.len()).sum();
            if own_len < chunk::FRAME_TARGET / 2 {
                for (id, len, data) in own.drain(..) {
                    state.open_table.push((id, len));
                    state.open_plain.extend_from_slice(data);
                }
                if state.open_plain.len() >= chunk::FRAME_TARGET {
                    full.push((
                        std::mem::take(&mut state.open_table),
                        std::mem::take(&mut state.open_plain),
                    ));
                }
            }
        }
        // Own chunks in frames of about FRAME_TARGET (a long run makes several).
        let mut rest = &own[..];
        while !rest.is_empty() {
            let mut take = 0;
            let mut plain_len = 0;
            while let Some(c) = rest.get(take)
                && (take == 0 || plain_len < chunk::FRAME_TARGET)
            {
                plain_len += c.2.len();
                take += 1;
            }
            let (frame, tail) = rest.split_at(take);
            rest = tail;
            let mut plain = Vec::with_capacity(plain_len);
            for c in frame {
                plain.extend_from_slice(c.2);
            }
            full.push((frame.iter().map(|c| (c.0, c.1)).collect(), plain));
        }
        self.new_chunks.fetch_add(new, Ordering::Relaxed);
        for (table, plain) in full {
            if let Err(e) = self.store_frame(&table, &plain) {
                self.failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(new as usize)
    }
}

fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:032x}-{}", std::process::id())
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    fs::create_dir_all(parent).at(parent)?;
    for attempt in 0u32..1000 {
        let path = parent.join(format!("w-{}-{attempt}", unique_name()));
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Err(Error::InvalidInput(format!(
        "cannot create a staging directory in {}",
        parent.display()
    )))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|d| d.sync_all()).at(path)
}

fn summary(h: &Header) -> ImageSummary {
    ImageSummary {
        name: h.name.clone(),
        created: h.created,
        disk_size: h.layout.disk_size,
        data_bytes: h.data_bytes,
        chunk_count: h.chunk_count,
        table: format!("{:?}", h.layout.table).to_lowercase(),
    }
}

#[cfg(test)]
mod tests;
