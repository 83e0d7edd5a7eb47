//! Wiping a disk: what a `wipe_fast` or `wipe_full` task does before a machine leaves the fleet
//! or gets a clean start.
//!
//! - [`WipeMode::Fast`] zeroes where partition tables and filesystem, RAID and LVM signatures
//!   live: the first and last [`SIGNATURE_SPAN`] of the disk (MBR, primary and backup GPT) and of
//!   every partition it finds (superblocks at the start, NTFS and md 0.90/1.0 copies at the end).
//!   The disk then looks empty to firmware, `blkid` and installers; the data itself stays.
//! - [`WipeMode::Full`] overwrites every byte with zeros.
//!
//! Both end with a sync, so "complete" means the zeros are on the disk.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::disk::{Disk, ReadAt};
use super::partition::{self, TableKind};
use crate::progress::Progress;
use crate::{Error, Result};

/// Bytes zeroed at each end of the disk and of each partition by a fast wipe: every signature
/// blkid knows lies within the first or last MiB of its device.
pub const SIGNATURE_SPAN: u64 = 1 << 20;
/// Bytes of zeros written at once by a full wipe.
const WRITE_BLOCK: usize = 4 << 20;

/// How much of the disk a wipe overwrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WipeMode {
    /// Partition tables and signatures only.
    Fast,
    /// Every byte.
    Full,
}

/// What a wipe did.
#[derive(Debug, Clone, Serialize)]
pub struct WipeReport {
    /// The disk.
    pub target: String,
    /// Fast or full.
    pub mode: WipeMode,
    /// Size of the disk in bytes.
    pub disk_size: u64,
    /// Partitions found (and wiped at both ends by a fast wipe).
    pub partitions: usize,
    /// Bytes of zeros written.
    pub bytes_written: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Wipes the disk at `path` (an image file or a block device; it must exist).
pub fn wipe(path: &Path, mode: WipeMode, progress: &dyn Progress) -> Result<WipeReport> {
    let started = Instant::now();
    let disk = Disk::open_writable(path)?;
    let size = disk.size();
    // A damaged or absent table is no reason not to wipe: the disk's own ends are zeroed anyway.
    let partitions = match partition::read_layout(&disk, None) {
        Ok(layout) if layout.table != TableKind::None => layout.partitions,
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::warn!(
                "{}: no readable partition table ({e}); wiping the disk's ends",
                path.display()
            );
            Vec::new()
        }
    };
    let ranges = match mode {
        WipeMode::Full => vec![(0, size)],
        WipeMode::Fast => {
            let mut ranges = ends(0, size);
            for p in &partitions {
                ranges.extend(ends(p.offset, p.len.min(size.saturating_sub(p.offset))));
            }
            merge(ranges)
        }
    };
    let total: u64 = ranges.iter().map(|(_, len)| len).sum();
    progress.start(
        match mode {
            WipeMode::Fast => "wipe (fast)",
            WipeMode::Full => "wipe (full)",
        },
        total,
    );
    let zeros = vec![0u8; WRITE_BLOCK];
    for (start, len) in ranges {
        let mut at = start;
        while at < start + len {
            if progress.cancelled() {
                return Err(Error::Cancelled);
            }
            let n = (start + len - at).min(WRITE_BLOCK as u64);
            disk.write_all_at(&zeros[..n as usize], at)?;
            progress.advance(n);
            at += n;
        }
    }
    disk.sync()?;
    progress.finish();
    Ok(WipeReport {
        target: path.display().to_string(),
        mode,
        disk_size: size,
        partitions: partitions.len(),
        bytes_written: total,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The first and last [`SIGNATURE_SPAN`] of `len` bytes at `offset` (all of it when shorter).
fn ends(offset: u64, len: u64) -> Vec<(u64, u64)> {
    if len <= 2 * SIGNATURE_SPAN {
        return vec![(offset, len)];
    }
    vec![
        (offset, SIGNATURE_SPAN),
        (offset + len - SIGNATURE_SPAN, SIGNATURE_SPAN),
    ]
}

/// Sorted ranges with overlaps and neighbours joined, so no byte is written twice.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|(_, len)| *len > 0);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, len) in ranges {
        match out.last_mut() {
            Some((s, l)) if start <= *s + *l => *l = (*l).max(start + len - *s),
            _ => out.push((start, len)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_both_ends_and_merge_overlaps() {
        let mib = SIGNATURE_SPAN;
        assert_eq!(ends(0, mib), vec![(0, mib)]);
        assert_eq!(ends(10, 10 * mib), vec![(10, mib), (10 + 9 * mib, mib)]);
        assert_eq!(
            merge(vec![
                (5 * mib, mib),
                (0, mib),
                (mib / 2, mib),
                (2 * mib, 0),
                (3 * mib, mib)
            ]),
            vec![(0, mib + mib / 2), (3 * mib, mib), (5 * mib, mib)]
        );
        assert_eq!(merge(vec![(0, mib), (mib, mib)]), vec![(0, 2 * mib)]);
    }
}
