//! Shrunk copies: how an image deploys to a disk smaller than its source without ever writing
//! the source. The store's owner writes a partition to a sparse file of its own, shrinks that
//! copy with the filesystem's tool (resize2fs -M, ntfsresize), and stores it in the same image as
//! a second region of that partition. Content-defined chunks make the copy cost little: only the
//! blocks the tool moved are new. The copy's length is the partition's minimum size, which a
//! `fit` deploy never goes under.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::chunker::chunk_region;
use super::deploy::write_region_alone;
use super::disk::{Disk, ReadAt};
use super::extent::{Extent, total_len};
use super::fs;
use super::manifest::{Header, ManifestWriter, Region};
use super::replica::TempDir;
use super::resize::{ALIGN, Resizer, fixed_reason};
use super::store::{Store, StoreWriter};
use crate::progress::NoProgress;
use crate::{Error, Result};

/// One partition looked at by [`add_shrunk_copies`].
#[derive(Debug, Clone, Serialize)]
pub struct ShrinkReport {
    /// Partition number.
    pub partition: u32,
    /// Filesystem label.
    pub filesystem: String,
    /// The partition's size in the image.
    pub len: u64,
    /// The smallest partition its filesystem fits: the shrunk copy's size, or `len` when
    /// shrinking gained less than a MiB.
    pub min_len: u64,
    /// Bytes of used data in the shrunk copy (0 without one).
    pub used_bytes: u64,
    /// Seconds writing, shrinking and storing the copy took.
    pub seconds: f64,
}

/// Works out the minimum size of every resizable partition of image `name` that has none yet,
/// storing a shrunk copy of each that can shrink, and commits the image again with them. The
/// image stays as it was if anything fails. Returns one report per partition looked at (none
/// when every partition was already done or none can be resized).
pub fn add_shrunk_copies(store: &Store, name: &str, threads: Option<usize>) -> Result<Vec<ShrinkReport>> {
    // Most images have nothing to do (no partitions fog shrinks, or done already): the header
    // says so without a lock or a pass over the file.
    if shrinkable(&store.manifest(name)?.header).is_empty() {
        return Ok(Vec::new());
    }
    // The writer's shared lock before the image is read: a gc cannot take its chunks meanwhile.
    let writer = store.writer()?;
    let manifest = store.manifest(name)?;
    manifest.check()?;
    let header = &manifest.header;
    let todo = shrinkable(header);
    if todo.is_empty() {
        return Ok(Vec::new());
    }
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let reader = store.reader()?;
    let mut out = writer.manifest_writer()?;
    let work = TempDir::new_in(&store.root().join("tmp"), "shrink")?;

    let mut regions = header.regions.clone();
    let mut copies = Vec::new();
    let mut reports = Vec::new();
    for (index, number, resizer) in todo {
        let started = Instant::now();
        let region = &header.regions[index];
        let file = work.path().join(format!("partition-{number}.img"));
        let what = format!("image {name} partition {number} (copy being shrunk)");
        {
            let copy = Disk::open_target(&file, region.len)?;
            write_region_alone(&reader, &manifest, region, &copy, threads)?;
            copy.sync()?;
        }
        let size = resizer.shrink_file(&file, &what)?;
        let mut report = ShrinkReport {
            partition: number,
            filesystem: region.filesystem.label().into(),
            len: region.len,
            min_len: region.len,
            used_bytes: 0,
            seconds: 0.0,
        };
        if size + ALIGN <= region.len {
            let copy = store_copy(&file, &what, &writer, &mut out, threads)?;
            report.min_len = size;
            report.used_bytes = copy.used_bytes;
            copies.push(Region {
                partition: Some(number),
                offset: region.offset,
                len: size,
                ..copy
            });
        }
        regions[index].min_len = Some(report.min_len);
        report.seconds = started.elapsed().as_secs_f64();
        reports.push(report);
        std::fs::remove_file(&file).map_err(|e| Error::io(&file, e))?;
    }

    // The image's own tables, copied after the new ones.
    for (region, old) in regions.iter_mut().zip(&header.regions) {
        for chunk in manifest.chunks(old) {
            out.push_chunk(&chunk?)?;
        }
        region.chunks = out.end_chunks();
        region.extents = out.write_extents(&manifest.extents(old)?)?;
    }
    regions.extend(copies);
    let chunk_count = regions.iter().map(|r| r.chunks.count).sum();
    out.finish(&Header {
        regions,
        chunk_count,
        ..header.clone()
    })?;
    // A capture of the same name that landed meanwhile wins: its copies are its own business.
    // (What is left is the moment between this check and the rename.)
    match store.manifest(name) {
        Ok(now) if now.header == *header && now.file_len() == manifest.file_len() => writer.commit(name)?,
        Ok(_) | Err(Error::ImageNotFound(_)) => {
            return Err(Error::Conflict {
                kind: "image",
                key: name.into(),
                reason: "it was replaced or removed while its minimum sizes were worked out".into(),
            });
        }
        Err(e) => return Err(e),
    }
    Ok(reports)
}

/// The regions of `header` fog can shrink and has not looked at: index, partition, resizer.
fn shrinkable(header: &Header) -> Vec<(usize, u32, Resizer)> {
    header
        .regions
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_source() && r.min_len.is_none())
        .filter_map(|(i, r)| {
            let number = r.partition?;
            let part = header.layout.partitions.iter().find(|p| p.number == number)?;
            if fixed_reason(&part.type_id, &r.filesystem).is_some() {
                return None;
            }
            let resizer = Resizer::for_filesystem(&r.filesystem).filter(|r| r.can_shrink())?;
            Some((i, number, resizer))
        })
        .collect()
}

/// Chunks the shrunk filesystem in `file` into the store being written, its tables into `out`.
/// The region returned has the copy's extents, chunks and used bytes; the caller sets the rest.
fn store_copy(
    file: &Path,
    what: &str,
    writer: &StoreWriter,
    out: &mut ManifestWriter,
    threads: usize,
) -> Result<Region> {
    let disk = Disk::open(file)?;
    let filesystem = fs::probe(&disk)?;
    let used = fs::used_extents(&filesystem, &disk)?;
    let ranges = used.clone().unwrap_or_else(|| vec![Extent::new(0, disk.size())]);
    let (extents, chunks) =
        chunk_region(&disk, &ranges, used.is_none(), writer, out, threads, &NoProgress).map_err(|e| {
            Error::BadFilesystem {
                what: what.into(),
                reason: e.to_string(),
            }
        })?;
    let extents_section = out.write_extents(&extents)?;
    Ok(Region {
        partition: None,
        offset: 0,
        len: disk.size(),
        used_bytes: total_len(&extents),
        filesystem,
        extents: extents_section,
        chunks,
        min_len: None,
        shrunk: true,
    })
}
