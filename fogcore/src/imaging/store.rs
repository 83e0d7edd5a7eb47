//! The content-addressed store: chunk files named by hash, image manifests, and the rules that
//! keep it consistent when captures run side by side or are killed.
//!
//! ```text
//! STORE/fog-store          marker and format version
//! STORE/lock               shared by captures and deploys, exclusive for gc
//! STORE/chunks/abc/<id>    one file per chunk (tag byte + payload), fanned out by 3 hex digits
//! STORE/images/<name>.fogimg
//! STORE/tmp/<writer>/      a capture's new chunks and manifest until commit
//! ```
//!
//! Durability without an fsync per chunk: a writer stages new chunks in its own directory,
//! then at commit calls `syncfs` once, renames them into `chunks/`, calls `syncfs` again and only
//! then renames the manifest into `images/`. A crash at any point leaves either no image or a
//! complete one, and staged or unreferenced chunks that [`Store::gc`] removes.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use super::chunk::{self, ChunkId, ChunkSink, ChunkSource};
use super::manifest::{Header, Manifest, ManifestWriter};
use crate::error::IoContext;
use crate::{Error, Result};

const MARKER: &str = "fog-store";
const MARKER_CONTENT: &str = "fog content-addressed store, format 1\n";
const IMAGE_SUFFIX: &str = ".fogimg";

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
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
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Chunk files checked.
    pub chunks_checked: u64,
    /// Chunk files whose content is wrong (ids, hex).
    pub corrupt: Vec<String>,
    /// Images checked.
    pub images_checked: u64,
    /// Problems with images (damaged manifest, missing chunks).
    pub image_errors: Vec<String>,
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
    /// Number of chunk files.
    pub chunks: u64,
    /// Bytes the chunk files take.
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
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok { Ok(()) } else { Err(Error::InvalidImageName(name.into())) }
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
            for dir in ["chunks", "images", "tmp"] {
                fs::create_dir_all(root.join(dir)).at(root.join(dir))?;
            }
            fs::write(root.join("lock"), b"").at(root.join("lock"))?;
            fs::write(&marker, MARKER_CONTENT).at(&marker)?;
        }
        Ok(Store { root })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_file(&self) -> Result<File> {
        let path = self.root.join("lock");
        File::options().read(true).write(true).create(true).truncate(false).open(&path).at(&path)
    }

    /// A shared lock: captures and deploys take it, so gc cannot remove chunks under them.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        let file = self.lock_file()?;
        file.lock_shared().at(self.root.join("lock"))?;
        Ok(StoreLock { _file: file })
    }

    fn lock_exclusive(&self) -> Result<StoreLock> {
        let file = self.lock_file()?;
        match file.try_lock() {
            Ok(()) => Ok(StoreLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::StoreBusy {
                path: self.root.clone(),
                reason: "a capture or deploy is running; try again when it ends".into(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(self.root.join("lock"), e)),
        }
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("chunks").join(&hex[..3]).join(hex)
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

    /// True when the store holds chunk `id`.
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunk_path(id).exists()
    }

    /// Starts writing new chunks and one manifest. Holds a shared lock until dropped.
    pub fn writer(&self) -> Result<StoreWriter> {
        let lock = self.lock_shared()?;
        let staging = tempdir_in(&self.root.join("tmp"))?;
        Ok(StoreWriter {
            store: self.clone(),
            staging,
            _lock: lock,
            new_chunks: AtomicU64::new(0),
            new_bytes: AtomicU64::new(0),
        })
    }

    /// Removes chunks no image references and abandoned capture directories.
    ///
    /// Live chunks are marked in a Bloom filter sized for the number of references, so memory
    /// stays bounded (about 2 bytes per chunk) however large the store is. A false positive only
    /// keeps a dead chunk until the next gc (the filter is seeded anew each run); a live chunk is
    /// never removed.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock_exclusive()?;
        let mut report = GcReport::default();
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).at(&tmp)? {
            let path = entry.at(&tmp)?.path();
            fs::remove_dir_all(&path).at(&path)?;
            report.staging_removed += 1;
        }
        let manifests: Vec<Manifest> =
            self.image_names()?.iter().map(|n| self.manifest(n)).collect::<Result<_>>()?;
        let refs: u64 = manifests.iter().map(|m| m.header.chunk_count).sum();
        let mut live = Bloom::new(refs);
        for m in &manifests {
            for region in &m.header.regions {
                for chunk in m.chunks(region) {
                    live.insert(&chunk?.id);
                }
            }
        }
        self.for_each_chunk_file(|id, path, len| {
            if live.contains(&id) {
                report.chunks_kept += 1;
            } else {
                fs::remove_file(path).at(path)?;
                report.chunks_removed += 1;
                report.bytes_freed += len;
            }
            Ok(())
        })?;
        sync_fs(&self.root)?;
        Ok(report)
    }

    /// Calls `f(id, path, stored length)` for every chunk file, one fan-out directory at a time.
    fn for_each_chunk_file(&self, mut f: impl FnMut(ChunkId, &Path, u64) -> Result<()>) -> Result<()> {
        let chunks = self.root.join("chunks");
        let mut dirs: Vec<PathBuf> = fs::read_dir(&chunks).at(&chunks)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for dir in dirs {
            for entry in fs::read_dir(&dir).at(&dir)? {
                let entry = entry.at(&dir)?;
                let path = entry.path();
                let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<ChunkId>().ok()) else {
                    continue;
                };
                let len = entry.metadata().at(&path)?.len();
                f(id, &path, len)?;
            }
        }
        Ok(())
    }

    /// Checks every chunk file against its hash (in parallel) and every image's manifest and
    /// chunk references.
    pub fn verify(&self) -> Result<VerifyReport> {
        let _lock = self.lock_shared()?;
        let mut report = VerifyReport::default();
        let mut batch: Vec<(ChunkId, PathBuf)> = Vec::new();
        let check_batch = |batch: &mut Vec<(ChunkId, PathBuf)>, report: &mut VerifyReport| {
            let bad: Vec<String> = batch
                .par_iter()
                .filter(|(id, path)| {
                    let stored = fs::read(path);
                    match stored {
                        Ok(stored) => chunk_is_corrupt(id, &stored),
                        Err(_) => true,
                    }
                })
                .map(|(id, _)| id.to_hex())
                .collect();
            report.chunks_checked += batch.len() as u64;
            report.corrupt.extend(bad);
            batch.clear();
        };
        self.for_each_chunk_file(|id, path, _| {
            batch.push((id, path.to_path_buf()));
            if batch.len() >= 4096 {
                check_batch(&mut batch, &mut report);
            }
            Ok(())
        })?;
        check_batch(&mut batch, &mut report);
        for name in self.image_names()? {
            report.images_checked += 1;
            if let Err(e) = self.verify_image_refs(&name) {
                report.image_errors.push(e.to_string());
            }
        }
        Ok(report)
    }

    /// Checks one image: manifest checksum and that every chunk it needs is present.
    pub fn verify_image_refs(&self, name: &str) -> Result<()> {
        let manifest = self.manifest(name)?;
        manifest.check()?;
        for region in &manifest.header.regions {
            for chunk in manifest.chunks(region) {
                let chunk = chunk?;
                if !self.has_chunk(&chunk.id) {
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
        self.for_each_chunk_file(|_, _, len| {
            stats.chunks += 1;
            stats.stored_bytes += len;
            Ok(())
        })?;
        Ok(stats)
    }
}

fn chunk_is_corrupt(id: &ChunkId, stored: &[u8]) -> bool {
    // The plain length is not in the chunk file; zstd frames carry it, raw chunks are their payload.
    let len = match stored.split_first() {
        Some((&chunk::TAG_RAW, payload)) => payload.len() as u64,
        Some((&chunk::TAG_ZSTD, payload)) => zstd::zstd_safe::get_frame_content_size(payload).ok().flatten().unwrap_or(u64::MAX),
        _ => return true,
    };
    u32::try_from(len).map_or(true, |len| chunk::decode(id, stored, len).is_err())
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

impl ChunkSource for Store {
    fn get_encoded(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let path = self.chunk_path(id);
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}

/// Writes new chunks and one manifest into a store; see the module docs for the commit order.
/// Dropping it without [`StoreWriter::commit`] leaves only a staging directory for gc.
pub struct StoreWriter {
    store: Store,
    staging: PathBuf,
    _lock: StoreLock,
    new_chunks: AtomicU64,
    new_bytes: AtomicU64,
}

impl StoreWriter {
    fn staged_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.staging.join(&hex[..3]).join(hex)
    }

    /// Where the manifest is written before commit.
    pub fn manifest_writer(&self) -> Result<ManifestWriter> {
        ManifestWriter::create(&self.staging.join("manifest"))
    }

    /// Chunks this writer added that the store did not have.
    pub fn new_chunks(&self) -> u64 {
        self.new_chunks.load(Ordering::Relaxed)
    }

    /// Stored bytes of those chunks.
    pub fn new_bytes(&self) -> u64 {
        self.new_bytes.load(Ordering::Relaxed)
    }

    /// Makes the staged chunks and then the manifest durable and visible as image `name`,
    /// replacing an image of that name.
    pub fn commit(self, name: &str) -> Result<()> {
        check_image_name(name)?;
        sync_fs(&self.staging)?;
        let chunks = self.store.root.join("chunks");
        for entry in fs::read_dir(&self.staging).at(&self.staging)? {
            let dir = entry.at(&self.staging)?.path();
            if !dir.is_dir() {
                continue;
            }
            let target_dir = chunks.join(dir.file_name().unwrap_or_default());
            fs::create_dir_all(&target_dir).at(&target_dir)?;
            for chunk in fs::read_dir(&dir).at(&dir)? {
                let chunk = chunk.at(&dir)?;
                let to = target_dir.join(chunk.file_name());
                fs::rename(chunk.path(), &to).at(&to)?;
            }
        }
        sync_fs(&chunks)?;
        let image = self.store.image_path(name);
        fs::rename(self.staging.join("manifest"), &image).at(&image)?;
        sync_dir(&self.store.root.join("images"))?;
        fs::remove_dir_all(&self.staging).at(&self.staging)
    }
}

impl ChunkSink for StoreWriter {
    fn has(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.store.has_chunk(id) || self.staged_path(id).exists())
    }

    fn put_encoded(&self, id: &ChunkId, stored: &[u8]) -> Result<bool> {
        if self.store.has_chunk(id) {
            return Ok(false);
        }
        let path = self.staged_path(id);
        let file = match File::options().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let dir = path.parent().unwrap_or(&self.staging);
                fs::create_dir_all(dir).at(dir)?;
                return self.put_encoded(id, stored);
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        use std::io::Write;
        (&file).write_all(stored).at(&path)?;
        self.new_chunks.fetch_add(1, Ordering::Relaxed);
        self.new_bytes.fetch_add(stored.len() as u64, Ordering::Relaxed);
        Ok(true)
    }
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    fs::create_dir_all(parent).at(parent)?;
    let pid = std::process::id();
    for attempt in 0u32..1000 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = parent.join(format!("w-{pid}-{nanos:x}-{attempt}"));
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Err(Error::InvalidInput(format!("cannot create a staging directory in {}", parent.display())))
}

/// Flushes the whole filesystem holding `path`: one call instead of an fsync per chunk file.
fn sync_fs(path: &Path) -> Result<()> {
    let dir = File::open(path).at(path)?;
    // SAFETY: syncfs takes a valid open descriptor and touches no memory of ours.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|d| d.sync_all()).at(path)
}

/// A Bloom filter over chunk ids; ids are uniform hashes already, so probes are slices of them
/// mixed with a per-run seed.
struct Bloom {
    bits: Vec<u64>,
    mask: u64,
    seed: u64,
}

const BLOOM_PROBES: u64 = 11;

impl Bloom {
    fn new(entries: u64) -> Bloom {
        // At least 64 Mbit (8 MiB), else 24 bits per entry: false positives ~1e-5 at capacity.
        let bits = (entries.saturating_mul(24)).max(1 << 26).next_power_of_two();
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x9E37_79B9);
        Bloom {
            bits: vec![0; (bits / 64) as usize],
            mask: bits - 1,
            seed,
        }
    }

    fn probes(&self, id: &ChunkId) -> impl Iterator<Item = u64> {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&id.0[..8]);
        b.copy_from_slice(&id.0[8..16]);
        let h1 = u64::from_le_bytes(a) ^ self.seed;
        let h2 = u64::from_le_bytes(b).rotate_left(17) ^ self.seed.rotate_left(31) | 1;
        let mask = self.mask;
        (0..BLOOM_PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) & mask)
    }

    fn insert(&mut self, id: &ChunkId) {
        let probes: Vec<u64> = self.probes(id).collect();
        for bit in probes {
            if let Some(word) = self.bits.get_mut((bit / 64) as usize) {
                *word |= 1 << (bit % 64);
            }
        }
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.probes(id).all(|bit| self.bits.get((bit / 64) as usize).is_some_and(|w| w & (1 << (bit % 64)) != 0))
    }
}
