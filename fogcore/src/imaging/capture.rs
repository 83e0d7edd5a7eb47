//! Capture: disk -> partition table -> per region used extents -> chunker -> runs of
//! consecutive chunks -> hash, dedupe and compress each run's new chunks as one frame, in
//! parallel -> manifest commit.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fastcdc::v2020::StreamCDC;
use serde::Serialize;

use super::chunk::{self, ChunkId, ChunkSink};
use super::disk::{Disk, ReadAt, Slice};
use super::extent::{Extent, ExtentList, total_len};
use super::fs::{self, Filesystem};
use super::manifest::{ChunkRef, FORMAT, Header, ManifestWriter, Region, Section};
use super::partition::{self, Layout};
use super::store::{Store, check_image_name};
use crate::progress::Progress;
use crate::{Error, Result};

/// Options of a capture.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    /// Logical sector size of an image file (detected from a GPT when unset; block devices know).
    pub sector_size: Option<u32>,
    /// Worker threads for hashing and compression (all cores when unset).
    pub threads: Option<usize>,
}

/// What a capture did.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureReport {
    /// Image name.
    pub name: String,
    /// Source disk.
    pub source: String,
    /// Source disk size.
    pub disk_size: u64,
    /// Partition table.
    pub table: String,
    /// Per region: partition number (none for outside), filesystem, used bytes.
    pub regions: Vec<RegionReport>,
    /// Used bytes read and stored (before dedupe and compression).
    pub data_bytes: u64,
    /// Chunks in the image.
    pub chunks: u64,
    /// Chunks the store did not have.
    pub new_chunks: u64,
    /// Bytes added to the store.
    pub new_stored_bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Peak resident memory of the process by the end, in bytes (see [`crate::memory`]).
    pub peak_memory_bytes: u64,
}

/// One region in a [`CaptureReport`].
#[derive(Debug, Clone, Serialize)]
pub struct RegionReport {
    /// Partition number, or none for the bytes outside partitions.
    pub partition: Option<u32>,
    /// Filesystem label.
    pub filesystem: String,
    /// Region size.
    pub size: u64,
    /// Used bytes stored.
    pub used_bytes: u64,
}

/// A region to read: where it is, what it holds, which ranges to read (relative to `offset`),
/// and whether all-zero blocks in them are dropped.
struct Plan {
    partition: Option<u32>,
    offset: u64,
    len: u64,
    filesystem: Filesystem,
    ranges: Vec<Extent>,
    skip_zero_blocks: bool,
}

/// Captures the disk image or block device `source` into `store` as image `name`.
pub fn capture(
    store: &Store,
    source: &Path,
    name: &str,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<CaptureReport> {
    check_image_name(name)?;
    let writer = store.writer()?;
    let manifest = writer.manifest_writer()?;
    let mut report = capture_to(&writer, manifest, source, name, options, progress)?;
    writer.flush()?; // the last frame counts in new_bytes
    report.new_chunks = writer.new_chunks();
    report.new_stored_bytes = writer.new_bytes();
    writer.commit(name)?;
    report.peak_memory_bytes = crate::memory::peak_rss();
    Ok(report)
}

/// Captures `source` as image `name` into any [`ChunkSink`] (a store being written, a remote
/// node), writing the manifest with `manifest`. The caller commits: the manifest is finished
/// only when every chunk went to the sink, and not at all when the job was cancelled. The
/// report's `new_chunks` and `new_stored_bytes` are left at zero for the caller to fill.
pub fn capture_to(
    sink: &dyn ChunkSink,
    mut manifest: ManifestWriter,
    source: &Path,
    name: &str,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<CaptureReport> {
    check_image_name(name)?;
    let started = Instant::now();
    let mut disk = Disk::open(source)?;
    let sector_size = if disk.is_block_device() {
        Some(disk.sector_size())
    } else {
        options.sector_size
    };
    let layout = partition::read_layout(&disk, sector_size)?;
    disk.set_sector_size(layout.sector_size);
    let plans = plan(&disk, &layout)?;
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);

    progress.start("capture", plans.iter().map(|p| total_len(&p.ranges)).sum());
    let mut regions = Vec::new();
    let mut chunk_count = 0;
    for p in plans {
        let slice = Slice::new(&disk, p.offset, p.len, region_name(&disk, p.partition));
        let (extents, chunks) = chunk_region(
            &slice,
            &p.ranges,
            p.skip_zero_blocks,
            sink,
            &mut manifest,
            threads,
            progress,
        )?;
        chunk_count += chunks.count;
        let extents_section = manifest.write_extents(&extents)?;
        regions.push(Region {
            partition: p.partition,
            offset: p.offset,
            len: p.len,
            filesystem: p.filesystem,
            used_bytes: total_len(&extents),
            extents: extents_section,
            chunks,
            min_len: None,
            shrunk: false,
        });
    }
    progress.finish();
    // A cancel up to this point must leave no image; after the commit it is too late.
    if progress.cancelled() {
        return Err(Error::Cancelled);
    }

    let data_bytes = regions.iter().map(|r| r.used_bytes).sum();
    let header = Header {
        format: FORMAT,
        name: name.into(),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        source: source.display().to_string(),
        layout: layout.clone(),
        regions,
        chunk_count,
        data_bytes,
    };
    manifest.finish(&header)?;
    Ok(CaptureReport {
        name: name.into(),
        source: source.display().to_string(),
        disk_size: layout.disk_size,
        table: format!("{:?}", layout.table).to_lowercase(),
        regions: header
            .regions
            .iter()
            .map(|r| RegionReport {
                partition: r.partition,
                filesystem: r.filesystem.label().into(),
                size: r.len,
                used_bytes: r.used_bytes,
            })
            .collect(),
        data_bytes,
        chunks: chunk_count,
        new_chunks: 0,
        new_stored_bytes: 0,
        seconds: started.elapsed().as_secs_f64(),
        peak_memory_bytes: crate::memory::peak_rss(),
    })
}

fn region_name(disk: &Disk, partition: Option<u32>) -> String {
    match partition {
        Some(n) => format!("{} partition {n}", disk.path().display()),
        None => format!("{} (outside partitions)", disk.path().display()),
    }
}

/// Decides what to read: the bytes outside partitions (minus the backup GPT, which deploy
/// rebuilds for the target's size), then each partition by its filesystem's used map.
fn plan(disk: &Disk, layout: &Layout) -> Result<Vec<Plan>> {
    let mut plans = Vec::new();
    if layout.table != partition::TableKind::None {
        let keep_end = layout.disk_size.saturating_sub(layout.backup_gpt_len);
        let mut outside = ExtentList::new();
        for e in layout.outside() {
            let end = e.end().min(keep_end);
            if end > e.offset {
                outside.push(e.offset, end - e.offset);
            }
        }
        plans.push(Plan {
            partition: None,
            offset: 0,
            len: layout.disk_size,
            filesystem: Filesystem::Raw,
            ranges: outside.into_vec(),
            skip_zero_blocks: true,
        });
    }
    for p in &layout.partitions {
        let slice = Slice::new(disk, p.offset, p.len, region_name(disk, Some(p.number)));
        let filesystem = fs::probe(&slice)?;
        let used = fs::used_extents(&filesystem, &slice)?;
        plans.push(Plan {
            partition: (layout.table != partition::TableKind::None).then_some(p.number),
            offset: p.offset,
            len: p.len,
            skip_zero_blocks: used.is_none(),
            ranges: used.unwrap_or_else(|| vec![Extent::new(0, p.len)]),
            filesystem,
        });
    }
    Ok(plans)
}

/// Granularity of zero-block skipping.
const ZERO_BLOCK: usize = 4096;
/// Bytes read from the disk per call.
const READ_SIZE: usize = 4 << 20;

/// Reads `ranges` of a device as one stream, optionally dropping all-zero blocks, and records
/// which bytes it actually returned.
struct ExtentStream<'a> {
    dev: &'a dyn ReadAt,
    ranges: &'a [Extent],
    next_range: usize,
    next_offset: u64,
    buf: Vec<u8>,
    pos: usize,
    skip_zero_blocks: bool,
    kept: ExtentList,
    failure: Option<Error>,
    progress: &'a dyn Progress,
}

impl<'a> ExtentStream<'a> {
    fn new(dev: &'a dyn ReadAt, ranges: &'a [Extent], skip_zero_blocks: bool, progress: &'a dyn Progress) -> Self {
        ExtentStream {
            dev,
            ranges,
            next_range: 0,
            next_offset: ranges.first().map_or(0, |r| r.offset),
            buf: Vec::with_capacity(READ_SIZE),
            pos: 0,
            skip_zero_blocks,
            kept: ExtentList::new(),
            failure: None,
            progress,
        }
    }

    /// Loads the next piece of data into `buf`; false at the end.
    fn refill(&mut self) -> Result<bool> {
        loop {
            if self.progress.cancelled() {
                return Err(Error::Cancelled);
            }
            let Some(range) = self.ranges.get(self.next_range) else {
                return Ok(false);
            };
            if self.next_offset >= range.end() {
                self.next_range += 1;
                self.next_offset = self.ranges.get(self.next_range).map_or(0, |r| r.offset);
                continue;
            }
            let start = self.next_offset;
            let len = (range.end() - start).min(READ_SIZE as u64) as usize;
            self.buf.resize(len, 0);
            self.dev.read_exact_at(&mut self.buf, start)?;
            self.next_offset += len as u64;
            self.progress.advance(len as u64);
            self.pos = 0;
            if self.skip_zero_blocks {
                self.drop_zero_blocks(start);
            } else {
                self.kept.push(start, len as u64);
            }
            if !self.buf.is_empty() {
                return Ok(true);
            }
        }
    }

    /// Compacts `buf` (read from `start`) to its non-zero blocks, recording them as kept.
    fn drop_zero_blocks(&mut self, start: u64) {
        let mut write = 0;
        let mut read = 0;
        while read < self.buf.len() {
            let end = (read + ZERO_BLOCK).min(self.buf.len());
            let nonzero = self.buf.get(read..end).is_some_and(|b| !is_zero(b));
            if nonzero {
                self.buf.copy_within(read..end, write);
                write += end - read;
                self.kept.push(start + read as u64, (end - read) as u64);
            }
            read = end;
        }
        self.buf.truncate(write);
    }
}

impl Read for ExtentStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.buf.len() {
            match self.refill() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    let message = e.to_string();
                    self.failure = Some(e);
                    return Err(std::io::Error::other(message));
                }
            }
        }
        let available = self.buf.get(self.pos..).unwrap_or_default();
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.pos += n;
        Ok(n)
    }
}

fn is_zero(block: &[u8]) -> bool {
    // OR-folding fixed-size pieces vectorises; an early exit per byte does not.
    block
        .chunks(64)
        .all(|piece| piece.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Chunks one region into `sink`, appending its chunk table to `manifest`. Returns the extents
/// actually stored and the chunk table's section.
pub(crate) fn chunk_region(
    dev: &dyn ReadAt,
    ranges: &[Extent],
    skip_zero_blocks: bool,
    sink: &dyn ChunkSink,
    manifest: &mut ManifestWriter,
    threads: usize,
    progress: &dyn Progress,
) -> Result<(Vec<Extent>, Section)> {
    // A job is a run of consecutive chunks of about one frame: the new ones among them are
    // compressed together.
    let (job_tx, job_rx) = crossbeam_channel::bounded::<(u64, Vec<Vec<u8>>)>(threads * 4);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Result<(u64, Vec<ChunkRef>)>>(threads * 8);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut stream = ExtentStream::new(dev, ranges, skip_zero_blocks, progress);
            let chunker = StreamCDC::new(
                &mut stream,
                chunk::MIN_SIZE as usize,
                chunk::AVG_SIZE as usize,
                chunk::MAX_SIZE as usize,
            );
            let mut failure = None;
            let mut seq = 0u64;
            let mut run = Vec::new();
            let mut run_len = 0;
            for piece in chunker {
                match piece {
                    Ok(piece) => {
                        run_len += piece.data.len();
                        run.push(piece.data);
                        if run_len >= chunk::FRAME_TARGET {
                            run_len = 0;
                            if job_tx.send((seq, std::mem::take(&mut run))).is_err() {
                                break; // the collector stopped on an error
                            }
                            seq += 1;
                        }
                    }
                    Err(e) => {
                        failure = Some(Error::InvalidInput(format!("{}: {e}", dev.name())));
                        break;
                    }
                }
            }
            if failure.is_none() && !run.is_empty() {
                let _ = job_tx.send((seq, run));
            }
            drop(job_tx);
            match stream.failure.take().or(failure) {
                Some(e) => Err(e),
                None => Ok(stream.kept.into_vec()),
            }
        });
        for _ in 0..threads {
            let jobs = job_rx.clone();
            let done = done_tx.clone();
            scope.spawn(move || {
                for (seq, run) in jobs {
                    let result = store_run(sink, &run).map(|refs| (seq, refs));
                    let failed = result.is_err();
                    if done.send(result).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(job_rx);
        drop(done_tx);

        // Workers finish out of order; the manifest needs stream order.
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        let mut failure = None;
        for result in &done_rx {
            match result {
                Ok((seq, refs)) => {
                    pending.insert(seq, refs);
                    while let Some(refs) = pending.remove(&next) {
                        for chunk in &refs {
                            if let Err(e) = manifest.push_chunk(chunk) {
                                failure.get_or_insert(e);
                            }
                        }
                        next += 1;
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    break;
                }
            }
            if failure.is_some() {
                break;
            }
        }
        drop(done_rx);
        let extents = reader
            .join()
            .map_err(|_| Error::Internal("capture reader thread panicked".into()))?;
        if let Some(e) = failure {
            return Err(e);
        }
        let extents = extents?;
        Ok((extents, manifest.end_chunks()))
    })
}

/// Hashes a run of consecutive chunks and stores those the store lacks (as one frame).
fn store_run(sink: &dyn ChunkSink, run: &[Vec<u8>]) -> Result<Vec<ChunkRef>> {
    let chunks: Vec<(ChunkId, &[u8])> = run.iter().map(|data| (ChunkId::of(data), &data[..])).collect();
    sink.put_run(&chunks)?;
    chunks
        .iter()
        .map(|(id, data)| {
            let len = u32::try_from(data.len())
                .map_err(|_| Error::InvalidInput(format!("chunk {id} of {} bytes is too large", data.len())))?;
            Ok(ChunkRef { id: *id, len })
        })
        .collect()
}
