//! Allocation bitmaps (NTFS `$Bitmap`, the exFAT allocation bitmap): one bit per cluster, set when
//! it is used, turned into byte ranges.

use crate::imaging::extent::ExtentList;

/// Turns bitmap bytes into extents of used clusters, across chunks.
pub(super) struct BitScan {
    /// Byte offset of the cluster of the first bit.
    base: u64,
    clusters: u64,
    cluster_size: u64,
    /// Cluster of the next bit.
    next: u64,
    /// First cluster of the used run in progress.
    run_start: Option<u64>,
}

impl BitScan {
    /// A scan of a bitmap of `clusters` bits, the first for the `cluster_size` bytes at `base`.
    pub(super) fn new(base: u64, clusters: u64, cluster_size: u64) -> Self {
        BitScan {
            base,
            clusters,
            cluster_size,
            next: 0,
            run_start: None,
        }
    }

    /// Scans the next bytes of the bitmap (bit 0 first); bits past the last cluster are ignored.
    pub(super) fn bytes(&mut self, bytes: &[u8], list: &mut ExtentList) {
        for &byte in bytes {
            if self.next >= self.clusters {
                return;
            }
            // Whole bytes that do not end or start a run.
            if self.next + 8 <= self.clusters {
                match (byte, self.run_start) {
                    (0x00, None) | (0xFF, Some(_)) => {
                        self.next += 8;
                        continue;
                    }
                    _ => {}
                }
            }
            for bit in 0..8 {
                if self.next >= self.clusters {
                    return;
                }
                self.bit(byte & (1 << bit) != 0, list);
            }
        }
    }

    fn bit(&mut self, used: bool, list: &mut ExtentList) {
        match (used, self.run_start) {
            (true, None) => self.run_start = Some(self.next),
            (false, Some(start)) => {
                self.push(start, self.next, list);
                self.run_start = None;
            }
            _ => {}
        }
        self.next += 1;
    }

    /// Ends the run in progress.
    pub(super) fn finish(&mut self, list: &mut ExtentList) {
        if let Some(start) = self.run_start.take() {
            self.push(start, self.next, list);
        }
    }

    fn push(&self, start: u64, end: u64, list: &mut ExtentList) {
        list.push(self.base + start * self.cluster_size, (end - start) * self.cluster_size);
    }
}
