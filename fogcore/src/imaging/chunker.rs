//! Chunking one region: its used ranges read as one stream (all-zero blocks dropped where
//! asked) -> FastCDC -> runs of consecutive chunks -> hash, dedupe and compress each run's new
//! chunks as one frame, in parallel -> the sink, the chunk table to the manifest in stream order.
//! Capture runs it per region; shrunk copies ([`super::shrink`]) run it on their copy.

use std::collections::BTreeMap;
use std::io::Read;

use fastcdc::v2020::StreamCDC;

use super::chunk::{self, ChunkId, ChunkSink};
use super::disk::ReadAt;
use super::extent::{Extent, ExtentList};
use super::manifest::{ChunkRef, ManifestWriter, Section};
use crate::progress::Progress;
use crate::{Error, Result};

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
pub fn chunk_region(
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
