//! Deploy: manifest -> checks against the target -> per region: chunk ids -> source -> verify ->
//! decompress -> write extents (skipping zeros on a fresh target) -> partition table adapted to
//! the target -> optional read-back verify.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::chunk::{self, ChunkSource};
use super::disk::{Disk, ReadAt};
use super::extent::Extent;
use super::fs::Filesystem;
use super::manifest::{ChunkRef, Manifest, Region};
use super::partition::{self, TableKind};
use super::resize::{self, LayoutMode, PlacedPartition, Placement, RegionWrite};
use super::store::Store;
use crate::progress::Progress;
use crate::{Error, Result};

/// Options of a deploy.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// Read the written extents back and compare them with the image.
    pub verify: bool,
    /// Worker threads (all cores when unset).
    pub threads: Option<usize>,
    /// How partitions are laid out on a target of another size.
    pub layout: LayoutMode,
}

/// What a deploy did.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    /// Image deployed.
    pub name: String,
    /// Target written.
    pub target: String,
    /// Target size in bytes.
    pub target_size: u64,
    /// Bytes of image data (used extents) deployed.
    pub data_bytes: u64,
    /// Bytes actually written (zero chunks are skipped on a fresh target).
    pub bytes_written: u64,
    /// Chunks read and checked.
    pub chunks: u64,
    /// True when the written data was read back and matched.
    pub verified: bool,
    /// The layout applied: `fit` when partitions were moved or resized, else `exact`.
    pub layout: LayoutMode,
    /// Why a `fit` deploy kept the source's table, when it did.
    pub layout_note: Option<String>,
    /// Where each partition went and what was resized.
    pub partitions: Vec<PlacedPartition>,
    /// Seconds the filesystem tools took (0 without resizing).
    pub resize_seconds: f64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Peak resident memory of the process by the end, in bytes (see [`crate::memory`]).
    pub peak_memory_bytes: u64,
}

/// Deploys image `name` from `store` to `target` (an image file, created if absent, or a block
/// device).
pub fn deploy(
    store: &Store,
    name: &str,
    target: &Path,
    options: &DeployOptions,
    progress: &dyn Progress,
) -> Result<DeployReport> {
    let _lock = store.lock_shared()?;
    let manifest = store.manifest(name)?;
    deploy_manifest(&store.reader()?, &manifest, target, options, progress)
}

/// Deploys an opened manifest with chunks from any [`ChunkSource`] (a store, a remote node).
pub fn deploy_manifest(
    source: &dyn ChunkSource,
    manifest: &Manifest,
    target_path: &Path,
    options: &DeployOptions,
    progress: &dyn Progress,
) -> Result<DeployReport> {
    prepare(manifest, target_path, options)?.run(source, progress)
}

/// A deploy checked against its target and laid out on it, nothing written yet.
pub struct PreparedDeploy<'a> {
    manifest: &'a Manifest,
    target_path: PathBuf,
    target: Disk,
    placement: Placement,
    verify: bool,
    threads: usize,
    started: Instant,
}

/// Opens the target, checks it against the image and lays the image out on it
/// ([`resize::place`]): a target that cannot hold the image is refused here, before anything is
/// written.
pub fn prepare<'a>(manifest: &'a Manifest, target_path: &Path, options: &DeployOptions) -> Result<PreparedDeploy<'a>> {
    let started = Instant::now();
    manifest.check()?;
    let header = &manifest.header;
    let layout = &header.layout;
    let target = Disk::open_target(target_path, layout.disk_size)?;
    if target.is_block_device() && target.sector_size() != layout.sector_size {
        return Err(Error::SectorSizeMismatch {
            path: target_path.into(),
            target: target.sector_size(),
            image: layout.sector_size,
        });
    }
    if layout.table == TableKind::Gpt && target.size() % u64::from(layout.sector_size) != 0 {
        return Err(Error::InvalidInput(format!(
            "target {} is {} bytes, not a whole number of {}-byte sectors",
            target_path.display(),
            target.size(),
            layout.sector_size
        )));
    }
    let placement = resize::place(header, target_path, target.size(), options.layout)?;
    resize::check_before_writing(&placement, layout)?;
    let needed = layout.min_target_size();
    if placement.mode == LayoutMode::Exact && target.size() < needed {
        return Err(Error::TargetTooSmall {
            path: target_path.into(),
            size: target.size(),
            needed,
        });
    }
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    Ok(PreparedDeploy {
        manifest,
        target_path: target_path.into(),
        target,
        placement,
        verify: options.verify,
        threads,
        started,
    })
}

impl<'a> PreparedDeploy<'a> {
    /// The manifest's regions this deploy writes, in the order it writes them (a prefetcher
    /// fetches their chunks in this order).
    pub fn regions(&self) -> Vec<usize> {
        self.placement.writes.iter().map(|w| w.region).collect()
    }

    /// Writes the image, puts the partition table right for the target, verifies when asked and
    /// grows or shrinks the filesystems of resized partitions.
    pub fn run(self, source: &dyn ChunkSource, progress: &dyn Progress) -> Result<DeployReport> {
        let writer = self.into_writer()?;
        progress.start("deploy", writer.data_bytes());
        for (place, region) in writer.places.iter().zip(&writer.placement.writes) {
            let region = &writer.manifest.header.regions[region.region];
            let written = write_region(
                source,
                writer.manifest,
                region,
                place,
                &writer.target,
                writer.threads,
                progress,
            )?;
            writer.written.fetch_add(written, Ordering::Relaxed);
        }
        writer.finish(source, progress)
    }

    /// A writer that takes the image's data in any order (see [`DeployWriter::write`]), for a
    /// source that does not deliver it in disk order (a multicast carousel).
    pub fn into_writer(self) -> Result<DeployWriter<'a>> {
        let header = &self.manifest.header;
        let places = self
            .placement
            .writes
            .iter()
            .map(|w| {
                let extents = self.manifest.extents(&header.regions[w.region])?;
                Ok(RegionPlace {
                    map: StreamMap::new(w.offset, extents),
                    end: w.end,
                })
            })
            .collect::<Result<_>>()?;
        let PreparedDeploy {
            manifest,
            target_path,
            target,
            placement,
            verify,
            threads,
            started,
        } = self;
        Ok(DeployWriter {
            manifest,
            target_path,
            target,
            placement,
            places,
            verify,
            threads,
            started,
            written: AtomicU64::new(0),
        })
    }
}

/// A deploy's target taking the image's data in any order: each piece of a region's data stream
/// goes where the layout puts it. [`DeployWriter::finish`] then writes the partition table,
/// verifies and resizes.
pub struct DeployWriter<'a> {
    manifest: &'a Manifest,
    target_path: PathBuf,
    target: Disk,
    placement: Placement,
    /// Per entry of `placement.writes`: its stream-to-disk map and end.
    places: Vec<RegionPlace>,
    verify: bool,
    threads: usize,
    started: Instant,
    written: AtomicU64,
}

/// Where one region's data stream lands on the target, and the first byte not written.
struct RegionPlace {
    map: StreamMap,
    end: u64,
}

impl RegionPlace {
    /// Writes `data` (stream bytes from `stream_offset`) to the target; returns bytes written.
    fn write(&self, target: &Disk, stream_offset: u64, data: &[u8]) -> Result<u64> {
        let mut written = 0;
        self.map
            .for_each_piece(stream_offset, data.len() as u64, |disk_offset, at, len| {
                let len = len.min(self.end.saturating_sub(disk_offset));
                if len > 0 {
                    let piece = data.get(at as usize..(at + len) as usize).unwrap_or_default();
                    target.write_all_at(piece, disk_offset)?;
                    written += len;
                }
                Ok(())
            })?;
        Ok(written)
    }
}

impl DeployWriter<'_> {
    /// Bytes of image data the deploy writes (the regions it places).
    pub fn data_bytes(&self) -> u64 {
        let regions = &self.manifest.header.regions;
        self.placement
            .writes
            .iter()
            .filter_map(|w| regions.get(w.region))
            .map(|r| r.used_bytes)
            .sum()
    }

    /// True when this deploy writes region `region` (a shrunk copy is written only where the
    /// target needs it, and then instead of its source).
    pub fn writes_region(&self, region: usize) -> bool {
        self.placement.writes.iter().any(|w| w.region == region)
    }

    /// The regions this deploy writes.
    pub fn regions(&self) -> Vec<usize> {
        self.placement.writes.iter().map(|w| w.region).collect()
    }

    /// Writes `data`, the bytes of region `region`'s data stream (its extents laid end to end)
    /// from `stream_offset`, where the layout puts them. The caller has checked the bytes against
    /// the manifest's chunk ids. A region this deploy does not write (a shrunk copy it does not
    /// need) is refused.
    /// All-zero data is skipped on a fresh target, as the in-order deploy skips it.
    pub fn write(&self, region: usize, stream_offset: u64, data: &[u8]) -> Result<u64> {
        let index = self
            .placement
            .writes
            .iter()
            .position(|w| w.region == region)
            .ok_or_else(|| Error::InvalidInput(format!("this deploy writes no region {region}")))?;
        if self.target.is_fresh() && data.iter().all(|&b| b == 0) {
            return Ok(0);
        }
        let written = self.places[index].write(&self.target, stream_offset, data)?;
        self.written.fetch_add(written, Ordering::Relaxed);
        Ok(written)
    }

    /// Writes swap headers and the partition table for the target, syncs, reads everything back
    /// when asked, and grows or shrinks the filesystems of resized partitions.
    pub fn finish(self, source: &dyn ChunkSource, progress: &dyn Progress) -> Result<DeployReport> {
        let DeployWriter {
            manifest,
            target_path,
            target,
            placement,
            places: _,
            verify,
            threads,
            started,
            written,
        } = self;
        let header = &manifest.header;
        let layout = &header.layout;
        for w in &placement.writes {
            let region = &header.regions[w.region];
            if let Filesystem::Swap(swap) = &region.filesystem {
                target.write_all_at(&swap.build(region.len), w.offset)?;
            }
        }
        // Bytes deploy writes over the captured ones: the partition table for the target.
        let moved = placement.moved();
        let patches = match layout.table {
            TableKind::Gpt => partition::relocate_gpt(&target, layout.sector_size, target.size(), &moved)?.writes,
            TableKind::Mbr if !moved.is_empty() => partition::refit_mbr(&target, layout.sector_size, &moved)?,
            _ => Vec::new(),
        };
        for (offset, bytes) in &patches {
            target.write_all_at(bytes, *offset)?;
        }
        target.sync()?;
        progress.finish();

        if verify {
            verify_writes(
                source,
                manifest,
                &placement.writes,
                &target,
                &patches,
                threads,
                progress,
            )?;
        }
        let resize_started = Instant::now();
        resize::resize_partitions(&target_path, &target, &placement, layout.sector_size, progress)?;
        let resize_seconds = resize_started.elapsed().as_secs_f64();
        let deployed = || placement.writes.iter().filter_map(|w| header.regions.get(w.region));
        Ok(DeployReport {
            name: header.name.clone(),
            target: target_path.display().to_string(),
            target_size: target.size(),
            data_bytes: deployed().map(|r| r.used_bytes).sum(),
            bytes_written: written.into_inner(),
            chunks: deployed().map(|r| r.chunks.count).sum(),
            verified: verify,
            layout: placement.mode,
            layout_note: placement.note.clone(),
            partitions: placement.partitions.clone(),
            resize_seconds,
            seconds: started.elapsed().as_secs_f64(),
            peak_memory_bytes: crate::memory::peak_rss(),
        })
    }
}

/// Writes one region's data in stream order where `place` says, skipping all-zero chunks on a
/// fresh target; returns the bytes written.
fn write_region(
    source: &dyn ChunkSource,
    manifest: &Manifest,
    region: &Region,
    place: &RegionPlace,
    target: &Disk,
    threads: usize,
    progress: &dyn Progress,
) -> Result<u64> {
    let header = &manifest.header;
    let written = AtomicU64::new(0);
    for_each_run(manifest, region, threads, progress, |run| {
        // A run's chunks are consecutive in the stream: stretches of them (all but the
        // all-zero chunks on a fresh target) are written with one write per extent piece.
        let mut buf = Vec::with_capacity(run.iter().map(|(c, _)| c.len as usize).sum());
        let mut stretches: Vec<(u64, usize, usize)> = Vec::new(); // stream offset, buf range
        for (chunk, stream_offset) in run {
            let from = buf.len();
            load_chunk_into(source, &header.name, chunk, &mut buf)?;
            progress.advance(u64::from(chunk.len));
            if target.is_fresh() && buf[from..].iter().all(|&b| b == 0) {
                buf.truncate(from);
                continue;
            }
            match stretches.last_mut() {
                Some(s) if s.0 + (s.2 - s.1) as u64 == *stream_offset => s.2 = buf.len(),
                _ => stretches.push((*stream_offset, from, buf.len())),
            }
        }
        for (stream_offset, from, to) in stretches {
            let data = buf.get(from..to).unwrap_or_default();
            written.fetch_add(place.write(target, stream_offset, data)?, Ordering::Relaxed);
        }
        Ok(())
    })?;
    Ok(written.into_inner())
}

/// Writes region `region` of `manifest` (from `source`) into `target` at the region's own
/// offsets relative to its start: the region alone, as a file of its own (a shrunk copy's start).
pub(crate) fn write_region_alone(
    source: &dyn ChunkSource,
    manifest: &Manifest,
    region: &Region,
    target: &Disk,
    threads: usize,
) -> Result<u64> {
    let place = RegionPlace {
        map: StreamMap::new(0, manifest.extents(region)?),
        end: region.len,
    };
    write_region(
        source,
        manifest,
        region,
        &place,
        target,
        threads,
        &crate::progress::NoProgress,
    )
}

/// Reads every chunk's bytes back from the target and checks their hash. A chunk that deploy
/// partly overwrote (`patches`: the partition table for the target) is compared with its stored
/// content with those patches applied.
fn verify_writes(
    source: &dyn ChunkSource,
    manifest: &Manifest,
    writes: &[RegionWrite],
    target: &Disk,
    patches: &[(u64, Vec<u8>)],
    threads: usize,
    progress: &dyn Progress,
) -> Result<()> {
    let header = &manifest.header;
    let total = writes
        .iter()
        .filter_map(|w| header.regions.get(w.region))
        .map(|r| r.used_bytes)
        .sum();
    progress.start("verify", total);
    for w in writes {
        let region = &header.regions[w.region];
        let writable_end = w.end;
        let map = StreamMap::new(w.offset, manifest.extents(region)?);
        for_each_run(manifest, region, threads, progress, |run| {
            run.iter().try_for_each(|(chunk, stream_offset)| {
                let (chunk, stream_offset) = (chunk, *stream_offset);
                progress.advance(u64::from(chunk.len));
                let mut pieces = Vec::new();
                map.for_each_piece(stream_offset, u64::from(chunk.len), |disk_offset, from, len| {
                    pieces.push((disk_offset, from, len));
                    Ok(())
                })?;
                if pieces
                    .iter()
                    .any(|&(disk_offset, _, len)| disk_offset + len > writable_end)
                {
                    return Ok(()); // past a smaller target's end: deploy did not write it either
                }
                let mut written = vec![0u8; chunk.len as usize];
                for &(disk_offset, from, len) in &pieces {
                    let piece = written
                        .get_mut(from as usize..(from + len) as usize)
                        .unwrap_or_default();
                    target.read_exact_at(piece, disk_offset)?;
                }
                let patched = |&(disk_offset, _, len): &(u64, u64, u64)| {
                    patches
                        .iter()
                        .any(|(at, bytes)| *at < disk_offset + len && disk_offset < at + bytes.len() as u64)
                };
                let matches = if pieces.iter().any(patched) {
                    let mut expected = load_chunk(source, &header.name, chunk)?;
                    for &(disk_offset, from, len) in &pieces {
                        for (at, bytes) in patches {
                            let start = disk_offset.max(*at);
                            let end = (disk_offset + len).min(at + bytes.len() as u64);
                            if start < end {
                                let dst = (from + start - disk_offset) as usize..(from + end - disk_offset) as usize;
                                let src = (start - at) as usize..(end - at) as usize;
                                if let (Some(d), Some(s)) = (expected.get_mut(dst), bytes.get(src)) {
                                    d.copy_from_slice(s);
                                }
                            }
                        }
                    }
                    expected == written
                } else {
                    chunk::ChunkId::of(&written) == chunk.id
                };
                if matches {
                    Ok(())
                } else {
                    Err(Error::VerifyMismatch {
                        path: target.path().into(),
                        image: header.name.clone(),
                        offset: pieces.first().map_or(w.offset, |p| p.0),
                    })
                }
            })
        })?;
    }
    progress.finish();
    Ok(())
}

/// Fetches one chunk of image `image` (the source checks its hash; deploy checks its length).
fn load_chunk(source: &dyn ChunkSource, image: &str, chunk: &ChunkRef) -> Result<Vec<u8>> {
    let mut data = Vec::with_capacity(chunk.len as usize);
    load_chunk_into(source, image, chunk, &mut data)?;
    Ok(data)
}

/// Appends one chunk of image `image` to `buf`, as [`load_chunk`]; on error `buf` may hold part
/// of it.
fn load_chunk_into(source: &dyn ChunkSource, image: &str, chunk: &ChunkRef, buf: &mut Vec<u8>) -> Result<()> {
    let corrupt = |reason| Error::ChunkCorrupt {
        image: image.into(),
        chunk: chunk.id.to_hex(),
        reason,
    };
    let from = buf.len();
    match source.get_into(&chunk.id, buf) {
        Ok(true) => {}
        Ok(false) => {
            return Err(Error::ChunkMissing {
                image: image.into(),
                chunk: chunk.id.to_hex(),
            });
        }
        Err(Error::ChunkCorrupt { reason, .. }) => return Err(corrupt(reason)),
        Err(e) => return Err(e),
    }
    let got = buf.len() - from;
    if got != chunk.len as usize {
        return Err(corrupt(format!("{got} bytes, the image expects {}", chunk.len)));
    }
    Ok(())
}

/// Runs `work(run)` for runs of consecutive chunks of a region (each with its stream offset) on
/// `threads` threads; stops at the first error and returns it. Each thread takes runs of consecutive chunks cut as capture
/// cuts its frames (about `FRAME_TARGET` bytes from the region's start), so the threads mostly
/// decode different frames.
fn for_each_run(
    manifest: &Manifest,
    region: &Region,
    threads: usize,
    progress: &dyn Progress,
    work: impl Fn(&[(ChunkRef, u64)]) -> Result<()> + Sync,
) -> Result<()> {
    let stop = AtomicBool::new(false);
    let failure = Mutex::new(None);
    let (tx, rx) = crossbeam_channel::bounded::<Vec<(ChunkRef, u64)>>(threads * 2);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let rx = rx.clone();
            let (work, stop, failure) = (&work, &stop, &failure);
            scope.spawn(move || {
                for run in rx {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(e) = work(&run) {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = failure.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
        drop(rx);
        let mut offset = 0u64;
        let mut run = Vec::new();
        let mut run_len = 0;
        for chunk in manifest.chunks(region) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if progress.cancelled() {
                stop.store(true, Ordering::Relaxed);
                if let Ok(mut slot) = failure.lock() {
                    slot.get_or_insert(Error::Cancelled);
                }
                break;
            }
            match chunk {
                Ok(chunk) => {
                    let len = u64::from(chunk.len);
                    run.push((chunk, offset));
                    offset += len;
                    run_len += len as usize;
                    if run_len >= chunk::FRAME_TARGET {
                        run_len = 0;
                        if tx.send(std::mem::take(&mut run)).is_err() {
                            break;
                        }
                    }
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = failure.lock() {
                        slot.get_or_insert(e);
                    }
                    break;
                }
            }
        }
        if !run.is_empty() && !stop.load(Ordering::Relaxed) {
            let _ = tx.send(run);
        }
        drop(tx); // lets the workers' loops end before the scope joins them
    });
    match failure.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Maps offsets in a region's data stream (its extents laid end to end) to disk offsets.
struct StreamMap {
    base: u64,
    extents: Vec<Extent>,
    starts: Vec<u64>,
}

impl StreamMap {
    fn new(base: u64, extents: Vec<Extent>) -> Self {
        let mut pos = 0;
        let starts = extents
            .iter()
            .map(|e| {
                let s = pos;
                pos += e.len;
                s
            })
            .collect();
        StreamMap { base, extents, starts }
    }

    /// Calls `f(disk offset, offset within the piece of data, length)` for each contiguous piece of
    /// the stream range `[offset, offset+len)`.
    fn for_each_piece(&self, offset: u64, len: u64, mut f: impl FnMut(u64, u64, u64) -> Result<()>) -> Result<()> {
        let mut i = self.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let mut done = 0;
        while done < len {
            let (Some(extent), Some(&start)) = (self.extents.get(i), self.starts.get(i)) else {
                return Err(Error::Internal(
                    "image chunks run past their extents (damaged manifest)".into(),
                ));
            };
            let within = offset + done - start;
            let n = (extent.len - within).min(len - done);
            f(self.base + extent.offset + within, done, n)?;
            done += n;
            i += 1;
        }
        Ok(())
    }
}
