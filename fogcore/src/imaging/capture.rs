//! Capture: disk -> partition table -> per region used extents -> chunker -> runs of
//! consecutive chunks -> hash, dedupe and compress each run's new chunks as one frame, in
//! parallel -> manifest commit.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::chunk::ChunkSink;
use super::chunker::chunk_region;
use super::disk::{Disk, Slice};
use super::extent::{Extent, ExtentList, total_len};
use super::fs::{self, Filesystem};
use super::manifest::{FORMAT, Header, ManifestWriter, Region};
use super::partition::{self, Layout};
use super::shrink::{ShrinkReport, add_shrunk_copies};
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
    /// Do not work out the partitions' minimum sizes after the capture (see
    /// [`add_shrunk_copies`]): the image then deploys only to disks of at least its size.
    pub skip_minimum_sizes: bool,
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
    /// The resizable partitions' minimum sizes, worked out after the capture.
    pub minimum_sizes: Vec<ShrinkReport>,
    /// Why the minimum sizes could not be worked out (the image is complete all the same, and
    /// deploys to disks of at least its size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_sizes_error: Option<String>,
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
    let started = Instant::now();
    let writer = store.writer()?;
    let manifest = writer.manifest_writer()?;
    let mut report = capture_to(&writer, manifest, source, name, options, progress)?;
    writer.flush()?; // the last frame counts in new_bytes
    report.new_chunks = writer.new_chunks();
    report.new_stored_bytes = writer.new_bytes();
    writer.commit(name)?;
    if !options.skip_minimum_sizes {
        match add_shrunk_copies(store, name, options.threads) {
            Ok(sizes) => report.minimum_sizes = sizes,
            Err(e) => {
                tracing::warn!("image {name}: minimum partition sizes not worked out: {e}");
                report.minimum_sizes_error = Some(e.to_string());
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
    }
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
        minimum_sizes: Vec::new(),
        minimum_sizes_error: None,
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
