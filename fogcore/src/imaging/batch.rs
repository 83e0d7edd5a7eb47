//! Batching between the per-chunk pipelines (deploy asks [`ChunkSource`] for one chunk at a
//! time, capture hands [`ChunkSink`] one chunk at a time) and an [`ImageStore`] that answers
//! batches (a node over HTTP, where one request per 16 KiB chunk would cost a round trip each).
//!
//! - [`with_prefetch`]: a source that reads a manifest's chunks ahead, in manifest order, a few
//!   MiB per request, within a bounded window of memory. It asks for frames
//!   ([`ImageStore::get_frames`]), so the store sends what it holds as it holds it and the
//!   readers decode each frame once and check each chunk.
//! - [`BatchSink`]: a sink that buffers puts and sends them a few MiB at a time, asking first which
//!   of them the store lacks; what it knows the store holds (seeded from an earlier manifest of
//!   the same image, and the chunks it sent) is not compressed or sent again. What it knows is
//!   bounded ([`KNOWN_IDS`]): it is only a shortcut, the store's `missing` answer is the truth.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use super::chunk::{self, ChunkId, ChunkSink, ChunkSource, FramePart, WireFrame};
use super::manifest::Manifest;
use super::replica::{ImageStore, WINDOW_REFS, WireChunk, chunk_windows, fetch_manifest};
use crate::{Error, Result};

/// Bytes of chunks asked for (or sent) in one request.
pub const BATCH_BYTES: usize = 4 << 20;
/// Bytes of prefetched chunks held before the prefetcher waits for deploy to use them.
pub const WINDOW_BYTES: usize = 32 << 20;
/// Chunk ids a [`BatchSink`] remembers as held by the store, per generation (two are kept, the
/// older dropped when the newer fills): about 2 x 16 MiB, some 4 GiB of data at 8 KiB chunks.
pub const KNOWN_IDS: usize = 1 << 18;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A frame the prefetcher received, decoded once by the first reader that needs one of its
/// chunks (deploy's worker threads decode different frames in parallel).
struct Received {
    stored: Vec<u8>,
    plain: OnceLock<std::result::Result<Vec<u8>, String>>,
}

/// Where a prefetched chunk lies.
#[derive(Clone)]
struct Piece {
    frame: Arc<Received>,
    part: FramePart,
}

#[derive(Default)]
struct Cached {
    /// Where the chunk is; `None` when the store said it does not have the chunk.
    piece: Option<Piece>,
    /// Uses announced by the prefetcher and not yet taken.
    uses: u32,
}

#[derive(Default)]
struct PrefetchState {
    cache: HashMap<ChunkId, Cached>,
    /// Plain bytes of the chunks cached (what the window bounds).
    bytes: usize,
    /// Readers waiting for a chunk not yet cached: the prefetcher never pauses while one waits.
    waiters: usize,
    /// The prefetcher is paused on a full window (readers wake it only then).
    paused: bool,
    done: bool,
    stop: bool,
    failure: Option<Error>,
    failed: bool,
}

/// A [`ChunkSource`] fed by a prefetcher; see [`with_prefetch`].
pub struct Prefetch<'a> {
    store: &'a dyn ImageStore,
    state: Mutex<PrefetchState>,
    changed: Condvar,
    fetched: AtomicU64,
}

impl Prefetch<'_> {
    fn fetch_loop(&self, manifest: &Manifest, regions: &[usize], batch_bytes: usize, window: usize) -> Result<()> {
        let mut batch: Vec<ChunkId> = Vec::new();
        let mut batch_uses: HashMap<ChunkId, u32> = HashMap::new();
        let mut pending_bytes = 0usize;
        for region in regions.iter().filter_map(|&i| manifest.header.regions.get(i)) {
            for chunk in manifest.chunks(region) {
                let chunk = chunk?;
                {
                    let mut state = lock(&self.state);
                    if state.stop {
                        return Ok(());
                    }
                    if let Some(cached) = state.cache.get_mut(&chunk.id) {
                        cached.uses += 1;
                        continue;
                    }
                }
                let uses = batch_uses.entry(chunk.id).or_insert(0);
                *uses += 1;
                if *uses == 1 {
                    batch.push(chunk.id);
                    pending_bytes += chunk.len as usize;
                }
                if pending_bytes >= batch_bytes {
                    self.fetch(&mut batch, &mut batch_uses, window)?;
                    pending_bytes = 0;
                }
            }
        }
        self.fetch(&mut batch, &mut batch_uses, window)
    }

    fn fetch(&self, batch: &mut Vec<ChunkId>, uses: &mut HashMap<ChunkId, u32>, window: usize) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        {
            let mut state = lock(&self.state);
            while state.bytes > window && state.waiters == 0 && !state.stop {
                state.paused = true;
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                state.paused = false;
            }
            if state.stop {
                return Ok(());
            }
        }
        let mut pieces = received_pieces(self.store.get_frames(batch)?, &self.fetched);
        let mut state = lock(&self.state);
        for (index, id) in batch.drain(..).enumerate() {
            let piece = pieces.remove(&index);
            let cached = state.cache.entry(id).or_default();
            cached.uses += uses.remove(&id).unwrap_or(1);
            let added = match piece {
                Some(piece) if cached.piece.is_none() => {
                    let len = piece.part.len as usize;
                    cached.piece = Some(piece);
                    len
                }
                _ => 0,
            };
            state.bytes += added;
        }
        uses.clear();
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// Stored bytes received by the prefetcher so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

/// The pieces of received frames by their position in the request.
fn received_pieces(frames: Vec<WireFrame>, fetched: &AtomicU64) -> HashMap<usize, Piece> {
    let mut pieces = HashMap::new();
    for frame in frames {
        fetched.fetch_add(frame.stored.len() as u64, Ordering::Relaxed);
        let received = Arc::new(Received {
            stored: frame.stored,
            plain: OnceLock::new(),
        });
        for part in frame.parts {
            pieces.entry(part.index as usize).or_insert_with(|| Piece {
                frame: received.clone(),
                part,
            });
        }
    }
    pieces
}

impl ChunkSource for Prefetch<'_> {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let mut data = Vec::new();
        Ok(self.get_into(id, &mut data)?.then_some(data))
    }

    fn get_into(&self, id: &ChunkId, buf: &mut Vec<u8>) -> Result<bool> {
        let Some(piece) = self.take_piece(id)? else {
            return Ok(false);
        };
        let frame = &piece.frame;
        let checked = frame
            .plain
            .get_or_init(|| chunk::decode_whole(&frame.stored))
            .as_ref()
            .map_err(|reason| format!("its frame is damaged: {reason}"))
            .and_then(|plain| WireFrame::checked_part(plain, &piece.part, id));
        match checked {
            Ok(data) => {
                buf.extend_from_slice(data);
                Ok(true)
            }
            Err(reason) => Err(Error::ChunkCorrupt {
                image: "store".into(),
                chunk: id.to_hex(),
                reason,
            }),
        }
    }
}

impl Prefetch<'_> {
    /// Where `id` lies in a received frame: from the read-ahead cache (waiting for the
    /// prefetcher when it is on its way), or fetched on its own when out of order.
    fn take_piece(&self, id: &ChunkId) -> Result<Option<Piece>> {
        let mut state = lock(&self.state);
        loop {
            if let Some(cached) = state.cache.get_mut(id) {
                cached.uses = cached.uses.saturating_sub(1);
                let piece = if cached.uses == 0 {
                    let piece = state.cache.remove(id).and_then(|c| c.piece);
                    state.bytes = state
                        .bytes
                        .saturating_sub(piece.as_ref().map_or(0, |p| p.part.len as usize));
                    piece
                } else {
                    cached.piece.clone()
                };
                let paused = state.paused;
                drop(state);
                if paused {
                    self.changed.notify_all();
                }
                return Ok(piece);
            }
            if let Some(e) = state.failure.take() {
                return Err(e);
            }
            if state.failed {
                return Err(Error::Internal(
                    "prefetching chunks stopped after an earlier error".into(),
                ));
            }
            if state.done || state.stop {
                // Not in the manifest's order (a verify pass re-reading a chunk): ask directly.
                drop(state);
                let frames = self.store.get_frames(std::slice::from_ref(id))?;
                return Ok(received_pieces(frames, &self.fetched).remove(&0));
            }
            state.waiters += 1;
            self.changed.notify_all();
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            state.waiters -= 1;
        }
    }
}

/// Runs `job` with a [`ChunkSource`] that reads the chunks of `manifest`'s `regions` (indexes, in
/// the order the job reads them) from `store` ahead of use, `BATCH_BYTES` per request and at most about `WINDOW_BYTES` ahead. A chunk
/// asked for out of order is fetched on its own. Every chunk is still checked by its reader.
pub fn with_prefetch<R>(
    store: &dyn ImageStore,
    manifest: &Manifest,
    regions: &[usize],
    job: impl FnOnce(&Prefetch<'_>) -> Result<R>,
) -> Result<R> {
    let prefetch = Prefetch {
        store,
        state: Mutex::new(PrefetchState::default()),
        changed: Condvar::new(),
        fetched: AtomicU64::new(0),
    };
    std::thread::scope(|scope| {
        let fetcher = scope.spawn(|| {
            let result = prefetch.fetch_loop(manifest, regions, BATCH_BYTES, WINDOW_BYTES);
            let mut state = lock(&prefetch.state);
            state.done = true;
            if let Err(e) = result {
                state.failure = Some(e);
                state.failed = true;
            }
            drop(state);
            prefetch.changed.notify_all();
        });
        let result = job(&prefetch);
        lock(&prefetch.state).stop = true;
        prefetch.changed.notify_all();
        let joined = fetcher.join();
        if joined.is_err() {
            return Err(Error::Internal("chunk prefetch thread panicked".into()));
        }
        result
    })
}

/// Counters of a [`BatchSink`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Chunks sent to the store.
    pub chunks_sent: u64,
    /// Their stored bytes.
    pub bytes_sent: u64,
    /// Chunks the store already had (not sent).
    pub chunks_present: u64,
}

/// Ids known to be held by the store, in two generations of at most [`KNOWN_IDS`] each: when
/// the newer fills, the older is dropped, so memory is bounded and recent ids (the ones a capture
/// meets again) stay known.
#[derive(Default)]
struct Known {
    new: HashSet<ChunkId>,
    old: HashSet<ChunkId>,
}

impl Known {
    fn contains(&self, id: &ChunkId) -> bool {
        self.new.contains(id) || self.old.contains(id)
    }

    /// Adds `id`; false when it was known already.
    fn insert(&mut self, id: ChunkId) -> bool {
        if self.contains(&id) {
            return false;
        }
        if self.new.len() >= KNOWN_IDS {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(id)
    }

    fn len(&self) -> usize {
        self.new.len() + self.old.len()
    }
}

/// A [`ChunkSink`] over an [`ImageStore`] that sends puts in batches of about `BATCH_BYTES`,
/// each preceded by one `missing` question so chunks the store holds are not sent.
pub struct BatchSink<'a> {
    store: &'a dyn ImageStore,
    known: Mutex<Known>,
    pending: Mutex<(Vec<WireChunk>, usize)>,
    stats: Mutex<SinkStats>,
}

impl<'a> BatchSink<'a> {
    /// A sink into `store`.
    pub fn new(store: &'a dyn ImageStore) -> Self {
        BatchSink {
            store,
            known: Mutex::new(Known::default()),
            pending: Mutex::new((Vec::new(), 0)),
            stats: Mutex::new(SinkStats::default()),
        }
    }

    /// Learns which chunks of `image` (an earlier capture of the same name, when the store has
    /// one) the store holds, in batched questions, so a re-capture skips them without
    /// compressing them. The manifest is spooled into `work_dir` and walked in windows; learning
    /// stops once [`KNOWN_IDS`] are known. Returns how many it learnt; an absent image is not an
    /// error.
    pub fn seed_from_image(&self, image: &str, work_dir: &Path) -> Result<usize> {
        let spooled = match fetch_manifest(self.store, image, work_dir) {
            Ok(spooled) => spooled,
            Err(Error::ImageNotFound(_)) => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut present = 0;
        for window in chunk_windows(&spooled.manifest, WINDOW_REFS) {
            let ids: Vec<ChunkId> = window?.iter().map(|c| c.id).collect();
            for batch in ids.chunks(BATCH_BYTES / 64) {
                let missing: HashSet<ChunkId> = self.store.missing(batch)?.into_iter().collect();
                let mut known = lock(&self.known);
                for id in batch.iter().filter(|id| !missing.contains(id)) {
                    if known.insert(*id) {
                        present += 1;
                    }
                }
                if known.len() >= KNOWN_IDS {
                    return Ok(present);
                }
            }
        }
        Ok(present)
    }

    /// Sends what is buffered. Call it before putting the manifest.
    pub fn flush(&self) -> Result<()> {
        let batch = std::mem::take(&mut lock(&self.pending).0);
        lock(&self.pending).1 = 0;
        self.send(batch)
    }

    fn send(&self, batch: Vec<WireChunk>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = batch.iter().map(|c| c.id).collect();
        let mut missing: HashSet<ChunkId> = self.store.missing(&ids)?.into_iter().collect();
        // A chunk put twice (known forgot it in between) is sent once.
        let (send, present): (Vec<WireChunk>, Vec<WireChunk>) = batch.into_iter().partition(|c| missing.remove(&c.id));
        let bytes: u64 = send.iter().map(|c| c.encoded.len() as u64).sum();
        self.store.put_chunks(&send)?;
        let mut stats = lock(&self.stats);
        stats.chunks_sent += send.len() as u64;
        stats.bytes_sent += bytes;
        stats.chunks_present += present.len() as u64;
        Ok(())
    }

    /// What was sent so far.
    pub fn stats(&self) -> SinkStats {
        *lock(&self.stats)
    }
}

impl ChunkSink for BatchSink<'_> {
    fn has(&self, id: &ChunkId) -> Result<bool> {
        Ok(lock(&self.known).contains(id))
    }

    fn put_run(&self, chunks: &[(ChunkId, &[u8])]) -> Result<usize> {
        let mut new = Vec::new();
        for (id, plain) in chunks {
            if !lock(&self.known).insert(*id) {
                continue;
            }
            let len = u32::try_from(plain.len()).map_err(|_| Error::ChunkCorrupt {
                image: "upload".into(),
                chunk: id.to_hex(),
                reason: format!("{} bytes is too large for a chunk", plain.len()),
            })?;
            // Compressed here, on the capture worker's thread: in parallel, one chunk each.
            new.push(WireChunk {
                id: *id,
                len,
                encoded: chunk::encode(plain),
            });
        }
        let count = new.len();
        let full = {
            let mut pending = lock(&self.pending);
            pending.1 += new.iter().map(|c| c.encoded.len()).sum::<usize>();
            pending.0.extend(new);
            if pending.1 >= BATCH_BYTES {
                pending.1 = 0;
                Some(std::mem::take(&mut pending.0))
            } else {
                None
            }
        };
        if let Some(batch) = full {
            self.send(batch)?;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids_stay_bounded_and_keep_the_recent_ones() {
        let mut known = Known::default();
        let id = |i: u32| ChunkId::of(&i.to_le_bytes());
        let n = 2 * KNOWN_IDS as u32 + 5;
        for i in 0..n {
            assert!(known.insert(id(i)));
        }
        assert!(known.len() <= 2 * KNOWN_IDS, "{} ids kept", known.len());
        assert!(known.contains(&id(n - 1)) && known.contains(&id(n - KNOWN_IDS as u32)));
        assert!(!known.contains(&id(0)), "the oldest generation was kept");
        assert!(!known.insert(id(n - 1)));
    }
}
