//! Byte ranges of a disk or partition.

use serde::{Deserialize, Serialize};

/// A byte range `[offset, offset + len)`, relative to whatever it describes (a partition, a disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Extent {
    /// A new extent.
    pub const fn new(offset: u64, len: u64) -> Self {
        Extent { offset, len }
    }

    /// One past the last byte.
    pub const fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Builds a sorted list of extents, merging ranges that touch. Pushes must come in ascending order.
#[derive(Debug, Default, Clone)]
pub struct ExtentList {
    extents: Vec<Extent>,
}

impl ExtentList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `[offset, offset+len)`, merging with the previous extent when they touch or overlap.
    pub fn push(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.extents.last_mut()
            && offset <= last.end()
        {
            let end = last.end().max(offset + len);
            last.len = end - last.offset;
            return;
        }
        self.extents.push(Extent::new(offset, len));
    }

    /// Total bytes covered.
    pub fn total(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// The extents, sorted and merged.
    pub fn into_vec(self) -> Vec<Extent> {
        self.extents
    }
}

/// Total bytes of a slice of extents.
pub fn total_len(extents: &[Extent]) -> u64 {
    extents.iter().map(|e| e.len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_touching_and_overlapping_ranges() {
        let mut l = ExtentList::new();
        l.push(0, 10);
        l.push(10, 5);
        l.push(12, 10);
        l.push(30, 1);
        l.push(30, 0);
        assert_eq!(l.into_vec(), vec![Extent::new(0, 22), Extent::new(30, 1)]);
    }
}
