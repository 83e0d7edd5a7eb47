//! The chunk index: which pack and frame hold a chunk, and where in the frame.
//!
//! The index is a set of immutable sorted *runs*, each written once (by a capture's commit, by
//! compaction, by gc). Runs are read with positioned reads, never mapped or loaded whole, so the
//! memory a lookup or a walk over ten million chunks takes does not grow with the index:
//!
//! - a lookup narrows to the ids with the same first byte (the fan-out), then guesses the place
//!   from the next eight bytes (ids are uniform hashes, so the guess lands within a few dozen
//!   entries) and reads a window of [`WINDOW`] entries around it; a miss narrows the range and
//!   guesses again, and after a few guesses it halves instead, so a skewed run still ends;
//! - a walk ([`Run::entries`], [`Merged`]) reads [`READ_ENTRIES`] entries at a time.
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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::imaging::chunk::ChunkId;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"FOGIDX02";
const HEADER_LEN: usize = 8 + 8 + 256 * 8;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 56;
/// File name suffix of index runs.
pub const RUN_SUFFIX: &str = ".idx";
/// Entries a lookup reads around its guess (3.5 KiB, about one page).
pub const WINDOW: usize = 64;
/// Entries a walk reads at once (56 KiB).
pub const READ_ENTRIES: usize = 1024;
/// Guesses by interpolation before a lookup halves the range instead.
const GUESSES: u32 = 4;
/// Listings [`Index::load`] tries while compactions keep replacing runs under it.
const LOAD_ATTEMPTS: u32 = 1000;

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

/// An index entry.
pub type Entry = (ChunkId, Loc);

/// One sorted run, read in place.
pub struct Run {
    file: File,
    count: usize,
    /// Entries whose first id byte is at most `i`.
    fanout: Box<[u64; 256]>,
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

/// The entry at the start of `raw` (at least [`ENTRY_LEN`] bytes).
fn decode(raw: &[u8]) -> Entry {
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

fn encode(id: &ChunkId, loc: &Loc) -> [u8; ENTRY_LEN] {
    let mut entry = [0u8; ENTRY_LEN];
    entry[..32].copy_from_slice(&id.0);
    entry[32..36].copy_from_slice(&loc.pack.to_le_bytes());
    entry[36..44].copy_from_slice(&loc.offset.to_le_bytes());
    entry[44..48].copy_from_slice(&loc.len.to_le_bytes());
    entry[48..52].copy_from_slice(&loc.start.to_le_bytes());
    entry[52..].copy_from_slice(&loc.chunk_len.to_le_bytes());
    entry
}

/// Bytes 1..9 of an id: where it lies among ids with its first byte.
fn key(id: &[u8]) -> u64 {
    id.get(1..9)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl Run {
    /// Opens and checks a run file (its header only: the entries are read when asked for).
    pub fn open(path: &Path) -> Result<Run> {
        Run::from_file(File::open(path).at(path)?, path)
    }

    fn from_file(file: File, path: &Path) -> Result<Run> {
        let damaged = |reason: &str| Error::Internal(format!("index run {} is damaged: {reason}", path.display()));
        let len = file.metadata().at(path)?.len();
        let mut header = vec![0u8; HEADER_LEN];
        if len < HEADER_LEN as u64 {
            return Err(damaged("bad header"));
        }
        file.read_exact_at(&mut header, 0).at(path)?;
        if header.get(..8) != Some(&MAGIC[..]) {
            return Err(damaged("bad header"));
        }
        let count = u64_at(&header, 8);
        if len - HEADER_LEN as u64 != count.saturating_mul(ENTRY_LEN as u64) {
            return Err(damaged("length does not match its entry count"));
        }
        let mut fanout = Box::new([0u64; 256]);
        for (i, slot) in fanout.iter_mut().enumerate() {
            *slot = u64_at(&header, 16 + i * 8);
        }
        if fanout[255] != count || fanout.windows(2).any(|w| w[0] > w[1]) {
            return Err(damaged("fan-out table does not match its entry count"));
        }
        Ok(Run {
            file,
            count: count as usize,
            fanout,
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

    /// Reads entries `start..start + n` into `buf`.
    fn read(&self, start: usize, n: usize, buf: &mut [u8]) -> Result<()> {
        let bytes = buf.get_mut(..n * ENTRY_LEN).unwrap_or_default();
        self.file
            .read_exact_at(bytes, (HEADER_LEN + start * ENTRY_LEN) as u64)
            .at(&self.path)
    }

    /// Looks `id` up (see the module docs): usually one read of [`WINDOW`] entries.
    pub fn get(&self, id: &ChunkId) -> Result<Option<Loc>> {
        let first = usize::from(id.0[0]);
        let mut hi = (self.fanout[first] as usize).min(self.count);
        let mut lo = if first == 0 { 0 } else { self.fanout[first - 1] as usize }.min(hi);
        // Keys of the entries in lo..hi lie in lo_key..=hi_key.
        let (mut lo_key, mut hi_key) = (0u64, u64::MAX);
        let wanted = key(&id.0);
        let mut window = [0u8; WINDOW * ENTRY_LEN];
        let mut guesses = 0;
        while lo < hi {
            let n = hi - lo;
            let start = if n <= WINDOW {
                lo
            } else {
                // Keys out of order (a damaged run) make lo_key > hi_key: the guess is then
                // merely poor, never a panic, and halving ends the search all the same.
                let at = if guesses < GUESSES {
                    guesses += 1;
                    let span = u128::from(hi_key.saturating_sub(lo_key)) + 1;
                    let into = u128::from(wanted.saturating_sub(lo_key)).min(span - 1);
                    lo + (into * n as u128 / span) as usize
                } else {
                    lo + n / 2
                };
                at.saturating_sub(WINDOW / 2).clamp(lo, hi - WINDOW)
            };
            let len = WINDOW.min(hi - start);
            self.read(start, len, &mut window)?;
            let id_at = |i: usize| window.get(i * ENTRY_LEN..i * ENTRY_LEN + 32).unwrap_or_default();
            if id.0[..] < *id_at(0) {
                hi = start;
                hi_key = key(id_at(0));
                continue;
            }
            if id.0[..] > *id_at(len - 1) {
                lo = start + len;
                lo_key = key(id_at(len - 1));
                continue;
            }
            let (mut a, mut b) = (0, len);
            while a < b {
                let mid = a + (b - a) / 2;
                match id_at(mid).cmp(&id.0[..]) {
                    std::cmp::Ordering::Less => a = mid + 1,
                    std::cmp::Ordering::Greater => b = mid,
                    std::cmp::Ordering::Equal => {
                        return Ok(Some(decode(window.get(mid * ENTRY_LEN..).unwrap_or_default()).1));
                    }
                }
            }
            return Ok(None);
        }
        Ok(None)
    }

    /// Entries in id order, read [`READ_ENTRIES`] at a time.
    pub fn entries(&self) -> RunEntries<'_> {
        RunEntries {
            run: self,
            next: 0,
            buf: Vec::new(),
            buf_start: 0,
            buf_len: 0,
        }
    }
}

/// A walk over one run's entries; see [`Run::entries`].
pub struct RunEntries<'a> {
    run: &'a Run,
    next: usize,
    buf: Vec<u8>,
    buf_start: usize,
    buf_len: usize,
}

impl Iterator for RunEntries<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.next >= self.run.count {
            return None;
        }
        if self.next >= self.buf_start + self.buf_len {
            let n = READ_ENTRIES.min(self.run.count - self.next);
            self.buf.resize(READ_ENTRIES * ENTRY_LEN, 0);
            if let Err(e) = self.run.read(self.next, n, &mut self.buf) {
                self.next = self.run.count;
                return Some(Err(e));
            }
            self.buf_start = self.next;
            self.buf_len = n;
        }
        let at = (self.next - self.buf_start) * ENTRY_LEN;
        self.next += 1;
        Some(Ok(decode(self.buf.get(at..).unwrap_or_default())))
    }
}

/// Whether [`write_run`] makes the run durable: a published run must be; a job's own spilled
/// run, gone with its staging directory after a crash, need not wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before the rename.
    Synced,
    /// No fsync.
    Scratch,
}

/// Writes a run from entries given in ascending id order (duplicates allowed) to `path`, via a
/// temporary file and a rename. The first error of `entries` stops it and leaves no run.
pub fn write_run(path: &Path, entries: impl IntoIterator<Item = Result<Entry>>, durability: Durability) -> Result<()> {
    let tmp = path.with_extension("idx-tmp");
    let written = (|| {
        let file = File::create(&tmp).at(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_LEN]).at(&tmp)?;
        let mut fanout = [0u64; 256];
        let mut count = 0u64;
        let mut last: Option<ChunkId> = None;
        for entry in entries {
            let (id, loc) = entry?;
            if last.is_some_and(|l| l > id) {
                return Err(Error::Internal(format!(
                    "index run {}: entries given out of order at {id}",
                    path.display()
                )));
            }
            last = Some(id);
            out.write_all(&encode(&id, &loc)).at(&tmp)?;
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
        if durability == Durability::Synced {
            file.sync_all().at(&tmp)?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).at(path)
}

/// The runs in `dir`, sorted by name.
fn run_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(&RUN_SUFFIX[1..]) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// All runs of a store, as loaded at one moment.
#[derive(Default)]
pub struct Index {
    runs: Vec<Run>,
}

impl Index {
    /// Opens every run in `dir`. A compaction may replace runs meanwhile (it writes the merged
    /// run before it removes the old ones), so the runs opened are a consistent set only if the
    /// directory still lists exactly them afterwards; else it starts over. Once open, a run stays
    /// readable after its removal.
    pub fn load(dir: &Path) -> Result<Index> {
        let mut attempts = 0;
        'listing: loop {
            let mut runs = Vec::new();
            for path in run_paths(dir)? {
                match File::open(&path) {
                    Ok(file) => runs.push(Run::from_file(file, &path)?),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < LOAD_ATTEMPTS => {
                        attempts += 1;
                        continue 'listing;
                    }
                    Err(e) => return Err(Error::io(&path, e)),
                }
            }
            let opened: Vec<&Path> = runs.iter().map(|r| r.path.as_path()).collect();
            if run_paths(dir)? != opened && attempts < LOAD_ATTEMPTS {
                attempts += 1;
                continue;
            }
            return Ok(Index { runs });
        }
    }

    /// The runs.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Where `id` is, if indexed.
    pub fn get(&self, id: &ChunkId) -> Result<Option<Loc>> {
        for run in &self.runs {
            if let Some(loc) = run.get(id)? {
                return Ok(Some(loc));
            }
        }
        Ok(None)
    }

    /// Every entry of every run in id order; see [`Merged`].
    pub fn merged(&self) -> Merged<'_> {
        Merged::new(&self.runs)
    }
}

/// K-way merge over runs: every entry in id order, `true` marking the first entry of an id and
/// `false` the extra copies. Memory is one read buffer per run. An error ends it.
pub struct Merged<'a> {
    walks: Vec<RunEntries<'a>>,
    heap: BinaryHeap<Reverse<(ChunkId, usize, LocKey)>>,
    last: Option<ChunkId>,
    started: bool,
    failed: bool,
}

/// A [`Loc`] as an orderable heap payload.
type LocKey = (u32, u64, u32, u32, u32);

impl<'a> Merged<'a> {
    /// Merges `runs`.
    pub fn new(runs: impl IntoIterator<Item = &'a Run>) -> Merged<'a> {
        Merged {
            walks: runs.into_iter().map(Run::entries).collect(),
            heap: BinaryHeap::new(),
            last: None,
            started: false,
            failed: false,
        }
    }

    /// Pulls the next entry of walk `w` onto the heap.
    fn advance(&mut self, w: usize) -> Result<()> {
        if let Some(next) = self.walks.get_mut(w).and_then(Iterator::next) {
            let (id, l) = next?;
            self.heap
                .push(Reverse((id, w, (l.pack, l.offset, l.len, l.start, l.chunk_len))));
        }
        Ok(())
    }

    /// The entries as plain `(id, loc)`, extra copies included.
    pub fn entries(self) -> impl Iterator<Item = Result<Entry>> + 'a {
        self.map(|m| m.map(|(id, loc, _)| (id, loc)))
    }
}

impl Iterator for Merged<'_> {
    type Item = Result<(ChunkId, Loc, bool)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if !self.started {
            self.started = true;
            for w in 0..self.walks.len() {
                if let Err(e) = self.advance(w) {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        let Reverse((id, w, (pack, offset, len, start, chunk_len))) = self.heap.pop()?;
        if let Err(e) = self.advance(w) {
            self.failed = true;
            return Some(Err(e));
        }
        let first = self.last != Some(id);
        self.last = Some(id);
        let loc = Loc {
            pack,
            offset,
            len,
            start,
            chunk_len,
        };
        Some(Ok((id, loc, first)))
    }
}

/// Runs of a level merge into one run of the next level when there are this many, so an entry
/// is rewritten once per level: log8 of the number of spills.
const FAN_IN: usize = 8;

/// The sorted runs a job (a capture's writer, gc's rewriter) spills to its own directory once
/// its entries pass its share of memory, with a Bloom filter over their ids so that most lookups
/// of an id it never wrote read nothing. Merged 8 at a time by level, not all at once, so a
/// 2 TB capture rewrites each entry a few times, not once per spill.
pub struct Spills {
    dir: PathBuf,
    levels: Vec<Vec<Run>>,
    /// Made at the first spill: most writers (a replication batch) never spill, and a filter
    /// allocated for each of them would be zeroed (touched) whenever the allocator reuses heap.
    filter: Option<Bloom>,
    filter_bytes: u64,
    written: u64,
    entries: u64,
}

impl Spills {
    /// Spills into `dir` (which must exist), with a filter of `filter_bytes` (none when 0: a job
    /// that never looks its entries up).
    pub fn new(dir: &Path, filter_bytes: u64) -> Spills {
        Spills {
            dir: dir.into(),
            levels: Vec::new(),
            filter: None,
            filter_bytes,
            written: 0,
            entries: 0,
        }
    }

    /// Entries spilled so far (extra copies of an id included).
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// True when nothing was spilled.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn next_path(&mut self, level: usize) -> PathBuf {
        self.written += 1;
        self.dir.join(format!("spill-{level}-{}{RUN_SUFFIX}", self.written))
    }

    /// Sorts `entries` and writes them as a run, merging a level that is full.
    pub fn add(&mut self, mut entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        entries.sort_unstable_by_key(|e| e.0);
        if self.filter_bytes > 0 {
            let filter = self
                .filter
                .get_or_insert_with(|| Bloom::with_bytes(self.filter_bytes, SPILL_PROBES));
            for (id, _) in &entries {
                filter.insert(id);
            }
        }
        self.entries += entries.len() as u64;
        let path = self.next_path(0);
        write_run(&path, entries.into_iter().map(Ok), Durability::Scratch)?;
        self.push(0, Run::open(&path)?)
    }

    fn push(&mut self, level: usize, run: Run) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Vec::new);
        }
        self.levels[level].push(run);
        if self.levels[level].len() < FAN_IN {
            return Ok(());
        }
        let runs = std::mem::take(&mut self.levels[level]);
        let path = self.next_path(level + 1);
        write_run(&path, Merged::new(&runs).entries(), Durability::Scratch)?;
        for run in &runs {
            fs::remove_file(run.path()).at(run.path())?;
        }
        self.push(level + 1, Run::open(&path)?)
    }

    /// Where `id` is among the spilled entries.
    pub fn get(&self, id: &ChunkId) -> Result<Option<Loc>> {
        if self.is_empty() || self.filter.as_ref().is_some_and(|f| !f.contains(id)) {
            return Ok(None);
        }
        for run in self.levels.iter().flatten() {
            if let Some(loc) = run.get(id)? {
                return Ok(Some(loc));
            }
        }
        Ok(None)
    }

    /// Every spilled entry in id order.
    pub fn merged(&self) -> Merged<'_> {
        Merged::new(self.levels.iter().flatten())
    }
}

/// Probes of a spill filter: its load is not known ahead, and 4 does well from 40 bits per id
/// (false positives ~1e-4) down to 4 (~0.2).
const SPILL_PROBES: u32 = 4;

/// A Bloom filter over chunk ids; ids are uniform hashes already, so probes are slices of them
/// mixed with a per-filter seed (a fresh one each time, so an unlucky id is not unlucky twice).
pub struct Bloom {
    bits: Vec<u64>,
    mask: u64,
    seed: u64,
    probes: u32,
}

impl Bloom {
    /// A filter of at most `bytes` (rounded down to a power of two, at least 8 KiB).
    pub fn with_bytes(bytes: u64, probes: u32) -> Bloom {
        let bits = (bytes.saturating_mul(8).max(1 << 16) / 2 + 1).next_power_of_two();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9);
        Bloom {
            bits: vec![0; (bits / 64) as usize],
            mask: bits - 1,
            seed,
            probes: probes.clamp(1, 16),
        }
    }

    /// A filter for `entries` ids: 24 bits each (false positives ~1e-5) when `max_bytes`
    /// allows, fewer (and fewer probes) when it does not.
    pub fn for_entries(entries: u64, max_bytes: u64) -> Bloom {
        let wanted = entries.saturating_mul(3).next_power_of_two();
        let mut bloom = Bloom::with_bytes(wanted.min(max_bytes), 1);
        let bits_per_entry = bloom.bytes().saturating_mul(8) as f64 / entries.max(1) as f64;
        bloom.probes = ((bits_per_entry * std::f64::consts::LN_2).round() as u32).clamp(2, 11);
        bloom
    }

    /// Bytes the filter takes.
    pub fn bytes(&self) -> u64 {
        self.bits.len() as u64 * 8
    }

    fn probes(&self, id: &ChunkId) -> impl Iterator<Item = u64> + use<> {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&id.0[..8]);
        b.copy_from_slice(&id.0[8..16]);
        let h1 = u64::from_le_bytes(a) ^ self.seed;
        let h2 = u64::from_le_bytes(b).rotate_left(17) ^ self.seed.rotate_left(31) | 1;
        let mask = self.mask;
        (0..u64::from(self.probes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) & mask)
    }

    /// Adds `id`.
    pub fn insert(&mut self, id: &ChunkId) {
        for bit in self.probes(id) {
            if let Some(word) = self.bits.get_mut((bit / 64) as usize) {
                *word |= 1 << (bit % 64);
            }
        }
    }

    /// False when `id` was surely never added.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.probes(id).all(|bit| {
            self.bits
                .get((bit / 64) as usize)
                .is_some_and(|w| w & (1 << (bit % 64)) != 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        ChunkId::of(&n.to_le_bytes())
    }

    fn loc(n: u32) -> Loc {
        Loc {
            pack: n % 7,
            offset: u64::from(n) * 100,
            len: n,
            start: n / 3,
            chunk_len: n / 2,
        }
    }

    fn sorted(ids: impl Iterator<Item = (ChunkId, Loc)>) -> Vec<Entry> {
        let mut entries: Vec<Entry> = ids.collect();
        entries.sort_by_key(|e| e.0);
        entries
    }

    #[test]
    fn finds_every_entry_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Large enough that a lookup has to guess (buckets of ~800 entries, windows of 64).
        let entries = sorted((0..200_000).map(|n| (id(n), loc(n))));
        let path = dir.path().join("a.idx");
        write_run(&path, entries.iter().copied().map(Ok), Durability::Synced).expect("write");
        let run = Run::open(&path).expect("open");
        for (i, l) in &entries {
            assert_eq!(run.get(i).expect("read"), Some(*l));
        }
        for n in 200_000..210_000 {
            assert_eq!(run.get(&id(n)).expect("read"), None);
        }
        let walked: Vec<Entry> = run.entries().collect::<Result<_>>().expect("walk");
        assert_eq!(walked, entries);
    }

    #[test]
    fn finds_ids_that_defeat_the_guess() {
        // Ids alike in bytes 1..9 but for the last: every guess lands at one end, so the lookup
        // must fall back to halving and still find each one.
        let dir = tempfile::tempdir().expect("tempdir");
        let entries = sorted((0..5000u32).map(|n| {
            let mut raw = [7u8; 32];
            raw[9..13].copy_from_slice(&n.to_be_bytes());
            (ChunkId(raw), loc(n))
        }));
        let path = dir.path().join("a.idx");
        write_run(&path, entries.iter().copied().map(Ok), Durability::Scratch).expect("write");
        let run = Run::open(&path).expect("open");
        for (i, l) in &entries {
            assert_eq!(run.get(i).expect("read"), Some(*l));
        }
        let mut absent = [7u8; 32];
        absent[9..13].copy_from_slice(&9999u32.to_be_bytes());
        assert_eq!(run.get(&ChunkId(absent)).expect("read"), None);
    }

    #[test]
    fn a_damaged_run_gives_wrong_answers_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entries = sorted((0..20_000).map(|n| (id(n), loc(n))));
        let path = dir.path().join("a.idx");
        write_run(&path, entries.iter().copied().map(Ok), Durability::Synced).expect("write");
        // Every 50th entry's key bytes (1..9) set to extremes: the run is no longer sorted.
        let mut raw = fs::read(&path).expect("read");
        for i in (0..entries.len()).step_by(50) {
            let at = HEADER_LEN + i * ENTRY_LEN;
            raw[at + 1..at + 9].fill(if i % 100 == 0 { 0xFF } else { 0x00 });
        }
        fs::write(&path, &raw).expect("write");
        let run = Run::open(&path).expect("open");
        for (i, _) in &entries {
            run.get(i).expect("read");
        }
    }

    #[test]
    fn merge_orders_and_marks_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = sorted((0..3000).map(|n| (id(n), loc(1))));
        let b = sorted((1500..4500).map(|n| (id(n), loc(2))));
        write_run(&dir.path().join("a.idx"), a.into_iter().map(Ok), Durability::Synced).expect("write");
        write_run(&dir.path().join("b.idx"), b.into_iter().map(Ok), Durability::Synced).expect("write");
        let index = Index::load(dir.path()).expect("load");
        let merged: Vec<_> = index.merged().collect::<Result<_>>().expect("merge");
        assert_eq!(merged.len(), 6000);
        assert_eq!(merged.iter().filter(|m| m.2).count(), 4500);
        assert!(merged.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn spills_merge_by_level_and_find_what_they_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spills = Spills::new(dir.path(), 1 << 16);
        // 20 spills of 500: two level merges (8 + 8), four runs left at level 0.
        for batch in 0..20u32 {
            spills
                .add((batch * 500..batch * 500 + 500).map(|n| (id(n), loc(n))).collect())
                .expect("spill");
        }
        let runs = fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(runs, 2 + 4, "level-1 runs and level-0 runs on disk");
        assert_eq!(spills.len(), 10_000);
        for n in (0..10_000).step_by(7) {
            assert_eq!(spills.get(&id(n)).expect("read"), Some(loc(n)));
        }
        assert_eq!(spills.get(&id(10_001)).expect("read"), None);
        let merged: Vec<_> = spills.merged().collect::<Result<_>>().expect("merge");
        assert_eq!(merged.len(), 10_000);
        assert!(merged.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let mut bloom = Bloom::for_entries(100_000, 1 << 20);
        for n in 0..100_000 {
            bloom.insert(&id(n));
        }
        assert!((0..100_000).all(|n| bloom.contains(&id(n))));
        let false_positives = (100_000..200_000).filter(|&n| bloom.contains(&id(n))).count();
        assert!(false_positives < 100, "{false_positives} false positives in 100000");
        // Capped below 24 bits per entry, it still never forgets.
        let mut small = Bloom::for_entries(100_000, 1 << 13);
        (0..100_000).for_each(|n| small.insert(&id(n)));
        assert!((0..100_000).all(|n| small.contains(&id(n))));
        assert_eq!(small.bytes(), 1 << 13);
    }

    #[test]
    fn rejects_a_truncated_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.idx");
        write_run(
            &path,
            (0..10).map(|n| Ok((ChunkId([n; 32]), loc(0)))),
            Durability::Synced,
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

    #[test]
    fn a_failing_source_leaves_no_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.idx");
        let entries = vec![Ok((id(1), loc(1))), Err(Error::Internal("disk went away".into()))];
        assert!(write_run(&path, entries, Durability::Synced).is_err());
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
