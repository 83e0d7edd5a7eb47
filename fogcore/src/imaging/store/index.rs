//! The chunk index: which pack and frame hold a chunk, and where in the frame.
//!
//! The index is a set of immutable sorted *runs*, each written once (by a capture's commit, by
//! compaction, by gc) and memory-mapped for lookups, so a store of ten million chunks is looked
//! up without loading it into the heap:
//!
//! ```text
//! "FOGIDX02" | entry count u64 LE | fan-out: 256 x u64 LE (entries whose first id byte <= i)
//! entries sorted by id: id (32) | pack u32 LE | frame offset u64 LE | frame stored length u32 LE
//!                       | chunk offset in the frame's plain bytes u32 LE | chunk length u32 LE
//! ```
//! A chunk may appear in several runs (two captures stored it at once); any copy is valid.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::IoContext;
use crate::imaging::chunk::ChunkId;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"FOGIDX02";
const HEADER_LEN: usize = 8 + 8 + 256 * 8;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 56;
/// File name suffix of index runs.
pub const RUN_SUFFIX: &str = ".idx";

/// Where a chunk is: its frame's stored bytes in a pack, and its place in the frame's plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    /// Pack number.
    pub pack: u32,
    /// Offset of the frame's stored bytes in the pack.
    pub offset: u64,
    /// Stored length of the frame.
    pub len: u32,
    /// Offset of the chunk in the frame's plain bytes.
    pub start: u32,
    /// Length of the chunk.
    pub chunk_len: u32,
}

impl Loc {
    /// The frame: pack and offset.
    pub fn frame(&self) -> (u32, u64) {
        (self.pack, self.offset)
    }
}

/// One sorted, memory-mapped run.
pub struct Run {
    map: Mmap,
    count: usize,
    path: PathBuf,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

impl Run {
    /// Opens and checks a run file.
    pub fn open(path: &Path) -> Result<Run> {
        let file = File::open(path).at(path)?;
        // SAFETY: runs are never modified after they are renamed into place (only replaced by
        // new files and unlinked), so the mapping cannot change under us.
        let map = unsafe { Mmap::map(&file) }.at(path)?;
        let damaged = |reason: &str| Error::Internal(format!("index run {} is damaged: {reason}", path.display()));
        if map.len() < HEADER_LEN || map.get(..8) != Some(&MAGIC[..]) {
            return Err(damaged("bad header"));
        }
        let count = u64_at(&map, 8);
        if (map.len() - HEADER_LEN) as u64 != count.saturating_mul(ENTRY_LEN as u64) {
            return Err(damaged("length does not match its entry count"));
        }
        if u64_at(&map, 16 + 255 * 8) != count {
            return Err(damaged("fan-out table does not match its entry count"));
        }
        Ok(Run {
            map,
            count: count as usize,
            path: path.into(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the run has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn entry(&self, i: usize) -> (ChunkId, Loc) {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let raw = self.map.get(at..at + ENTRY_LEN).unwrap_or(&[0u8; ENTRY_LEN]);
        let mut id = [0u8; 32];
        id.copy_from_slice(raw.get(..32).unwrap_or(&[0u8; 32]));
        let loc = Loc {
            pack: u32_at(raw, 32),
            offset: u64_at(raw, 36),
            len: u32_at(raw, 44),
            start: u32_at(raw, 48),
            chunk_len: u32_at(raw, 52),
        };
        (ChunkId(id), loc)
    }

    fn id_at(&self, i: usize) -> &[u8] {
        let at = HEADER_LEN + i * ENTRY_LEN;
        self.map.get(at..at + 32).unwrap_or_default()
    }

    /// Looks `id` up: the fan-out narrows to ids with the same first byte, then binary search.
    pub fn get(&self, id: &ChunkId) -> Option<Loc> {
        let first = usize::from(id.0[0]);
        let lo = if first == 0 {
            0
        } else {
            u64_at(&self.map, 16 + (first - 1) * 8) as usize
        };
        let hi = (u64_at(&self.map, 16 + first * 8) as usize).min(self.count);
        let (mut lo, mut hi) = (lo.min(hi), hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.id_at(mid).cmp(&id.0[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.entry(mid).1),
            }
        }
        None
    }

    /// Entries in id order.
    pub fn iter(&self) -> impl Iterator<Item = (ChunkId, Loc)> + '_ {
        (0..self.count).map(|i| self.entry(i))
    }
}

/// Writes a run from entries given in ascending id order (duplicates allowed) to `path`, via a
/// temporary file, fsync and rename.
pub fn write_run(path: &Path, entries: impl Iterator<Item = (ChunkId, Loc)>) -> Result<()> {
    let tmp = path.with_extension("idx-tmp");
    let file = File::create(&tmp).at(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&[0u8; HEADER_LEN]).at(&tmp)?;
    let mut fanout = [0u64; 256];
    let mut count = 0u64;
    let mut last: Option<ChunkId> = None;
    for (id, loc) in entries {
        if last.is_some_and(|l| l > id) {
            return Err(Error::Internal("index run entries out of order".into()));
        }
        last = Some(id);
        let mut entry = [0u8; ENTRY_LEN];
        entry[..32].copy_from_slice(&id.0);
        entry[32..36].copy_from_slice(&loc.pack.to_le_bytes());
        entry[36..44].copy_from_slice(&loc.offset.to_le_bytes());
        entry[44..48].copy_from_slice(&loc.len.to_le_bytes());
        entry[48..52].copy_from_slice(&loc.start.to_le_bytes());
        entry[52..].copy_from_slice(&loc.chunk_len.to_le_bytes());
        out.write_all(&entry).at(&tmp)?;
        fanout[usize::from(id.0[0])] += 1;
        count += 1;
    }
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&count.to_le_bytes());
    let mut cumulative = 0;
    for n in fanout {
        cumulative += n;
        header.extend_from_slice(&cumulative.to_le_bytes());
    }
    let mut file = out.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
    file.seek(SeekFrom::Start(0)).at(&tmp)?;
    file.write_all(&header).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    fs::rename(&tmp, path).at(path)
}

/// All runs of a store, as loaded at one moment.
#[derive(Default)]
pub struct Index {
    runs: Vec<Run>,
}

impl Index {
    /// Opens every run in `dir`.
    pub fn load(dir: &Path) -> Result<Index> {
        let mut runs = Vec::new();
        for entry in fs::read_dir(dir).at(dir)? {
            let path = entry.at(dir)?.path();
            if path.extension().and_then(|e| e.to_str()) == Some(&RUN_SUFFIX[1..]) {
                runs.push(Run::open(&path)?);
            }
        }
        runs.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Index { runs })
    }

    /// Adds a run (a writer's own spilled entries).
    pub fn push(&mut self, run: Run) {
        self.runs.push(run);
    }

    /// The runs.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Where `id` is, if indexed.
    pub fn get(&self, id: &ChunkId) -> Option<Loc> {
        self.runs.iter().find_map(|r| r.get(id))
    }

    /// Every entry of every run in id order; `true` marks the first entry of an id, `false`
    /// the extra copies.
    pub fn merged(&self) -> Merged<'_> {
        let mut heap = BinaryHeap::new();
        for (r, run) in self.runs.iter().enumerate() {
            if !run.is_empty() {
                heap.push(Reverse((run.entry(0).0, r, 0usize)));
            }
        }
        Merged {
            runs: &self.runs,
            heap,
            last: None,
        }
    }
}

/// K-way merge over the runs of an [`Index`]; memory is one entry per run.
pub struct Merged<'a> {
    runs: &'a [Run],
    heap: BinaryHeap<Reverse<(ChunkId, usize, usize)>>,
    last: Option<ChunkId>,
}

impl Iterator for Merged<'_> {
    type Item = (ChunkId, Loc, bool);

    fn next(&mut self) -> Option<Self::Item> {
        let Reverse((id, r, i)) = self.heap.pop()?;
        let run = self.runs.get(r)?;
        let (_, loc) = run.entry(i);
        if i + 1 < run.len() {
            self.heap.push(Reverse((run.entry(i + 1).0, r, i + 1)));
        }
        let first = self.last != Some(id);
        self.last = Some(id);
        Some((id, loc, first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        ChunkId::of(&n.to_le_bytes())
    }

    #[test]
    fn finds_every_entry_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut entries: Vec<(ChunkId, Loc)> = (0..5000)
            .map(|n| {
                (
                    id(n),
                    Loc {
                        pack: n % 7,
                        offset: u64::from(n) * 100,
                        len: n,
                        start: n / 3,
                        chunk_len: n / 2,
                    },
                )
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        let path = dir.path().join("a.idx");
        write_run(&path, entries.iter().copied()).expect("write");
        let run = Run::open(&path).expect("open");
        for (i, l) in &entries {
            assert_eq!(run.get(i), Some(*l));
        }
        assert_eq!(run.get(&id(99_999)), None);
        assert_eq!(run.iter().count(), 5000);
    }

    #[test]
    fn merge_orders_and_marks_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loc = Loc {
            pack: 1,
            offset: 0,
            len: 1,
            start: 0,
            chunk_len: 1,
        };
        let mut a: Vec<ChunkId> = (0..100).map(id).collect();
        let mut b: Vec<ChunkId> = (50..150).map(id).collect();
        a.sort();
        b.sort();
        write_run(&dir.path().join("a.idx"), a.iter().map(|&i| (i, loc))).expect("write");
        write_run(&dir.path().join("b.idx"), b.iter().map(|&i| (i, loc))).expect("write");
        let index = Index::load(dir.path()).expect("load");
        let merged: Vec<_> = index.merged().collect();
        assert_eq!(merged.len(), 200);
        assert_eq!(merged.iter().filter(|m| m.2).count(), 150);
        assert!(merged.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn rejects_a_truncated_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.idx");
        write_run(
            &path,
            (0..10).map(|n| {
                (
                    ChunkId([n; 32]),
                    Loc {
                        pack: 0,
                        offset: 0,
                        len: 0,
                        start: 0,
                        chunk_len: 0,
                    },
                )
            }),
        )
        .expect("write");
        let len = fs::metadata(&path).expect("meta").len();
        File::options()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(len - 5)
            .expect("truncate");
        assert!(Run::open(&path).is_err());
    }
}
