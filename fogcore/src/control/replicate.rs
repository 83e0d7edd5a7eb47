//! Replication: copy an image from one [`ImageStore`] to another, sending only the chunks the
//! destination lacks, every chunk checked on arrival, the manifest last.
//!
//! Resuming needs no state: chunks are stored in durable batches as they arrive, so a re-run
//! after a crash, a dropped link or a cancel asks again what is missing and sends only that; the
//! image appears only when its manifest is accepted, which the destination refuses while any
//! chunk is absent.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::imaging::chunk::{ChunkId, WireFrame};
use crate::imaging::manifest::ChunkRef;
use crate::imaging::replica::{
    ImageStore, WireChunk, apply_manifest_delta, manifest_pieces, open_manifest_bytes, unique_chunks,
};
use crate::progress::Progress;

/// Options of a replication.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// Bytes per second on the wire for chunks (none: as fast as it goes).
    pub bandwidth: Option<u64>,
    /// Plain bytes of chunks per get and put batch.
    pub batch_bytes: u64,
    /// Ids per "which are missing" question.
    pub has_batch: usize,
    /// Fetch the manifest as a delta against the destination's image of the same name.
    pub manifest_delta: bool,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            bandwidth: None,
            batch_bytes: 4 << 20,
            has_batch: 8192,
            manifest_delta: true,
        }
    }
}

/// What a replication did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicateReport {
    /// Image name.
    pub image: String,
    /// Distinct chunks the image names.
    pub chunks_considered: u64,
    /// Their plain bytes.
    pub bytes_considered: u64,
    /// Chunks copied.
    pub chunks_sent: u64,
    /// Encoded bytes of the chunks copied.
    pub bytes_sent: u64,
    /// Chunks the destination already had.
    pub chunks_skipped: u64,
    /// Their plain bytes.
    pub bytes_skipped: u64,
    /// Bytes the manifest took to fetch (a delta when it could be).
    pub manifest_bytes: u64,
    /// True when the manifest came as a delta.
    pub manifest_delta: bool,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// A token bucket: `rate` bytes per second, bursts up to one second's worth.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` bytes per second.
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        let rate = rate.max(1) as f64;
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes `bytes` at `now`; returns how long to wait before sending them.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate) - bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A store whose chunk traffic (gets and puts) is held to `rate` bytes per second: an agent
/// imaging over a link it must share (`fog agent run --bandwidth`).
pub struct Throttled<S> {
    inner: S,
    bucket: std::sync::Mutex<TokenBucket>,
}

impl<S: ImageStore> Throttled<S> {
    /// `inner` at `rate` bytes per second.
    pub fn new(inner: S, rate: u64) -> Self {
        Throttled {
            inner,
            bucket: std::sync::Mutex::new(TokenBucket::new(rate, Instant::now())),
        }
    }

    fn pace(&self, bytes: u64) {
        let wait = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(bytes, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

impl<S: ImageStore> ImageStore for Throttled<S> {
    fn images(&self) -> Result<Vec<String>> {
        self.inner.images()
    }
    fn manifest_bytes(&self, name: &str) -> Result<Vec<u8>> {
        self.inner.manifest_bytes(name)
    }
    fn manifest_delta(&self, name: &str, base: &[crate::imaging::replica::PieceHash]) -> Result<Vec<u8>> {
        self.inner.manifest_delta(name, base)
    }
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        self.inner.missing(ids)
    }
    fn get_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>> {
        let chunks = self.inner.get_chunks(ids)?;
        self.pace(chunks.iter().flatten().map(|c| c.len() as u64).sum());
        Ok(chunks)
    }
    fn get_frames(&self, ids: &[ChunkId]) -> Result<Vec<WireFrame>> {
        let frames = self.inner.get_frames(ids)?;
        self.pace(frames.iter().map(|f| f.stored.len() as u64).sum());
        Ok(frames)
    }
    fn put_chunks(&self, chunks: &[WireChunk]) -> Result<u64> {
        self.pace(chunks.iter().map(|c| c.encoded.len() as u64).sum());
        self.inner.put_chunks(chunks)
    }
    fn put_frames(&self, ids: &[ChunkId], frames: &[WireFrame]) -> Result<u64> {
        self.pace(frames.iter().map(|f| f.stored.len() as u64).sum());
        self.inner.put_frames(ids, frames)
    }
    fn put_manifest(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.inner.put_manifest(name, bytes)
    }
}

fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Conflict { .. } | Error::Remote { status: 409, .. })
}

/// The manifest of `image` from `source`: a delta against `dest`'s image of that name when it
/// has one, else whole. Returns the bytes, the bytes fetched and whether it was a delta.
fn fetch_manifest(
    source: &dyn ImageStore,
    dest: &dyn ImageStore,
    image: &str,
    delta: bool,
) -> Result<(Vec<u8>, u64, bool)> {
    if delta && let Ok(base) = dest.manifest_bytes(image) {
        let pieces = manifest_pieces(&base);
        if let Ok(d) = source.manifest_delta(image, &pieces)
            && let Ok(bytes) = apply_manifest_delta(&base, &d)
        {
            return Ok((bytes, (d.len() + pieces.len() * 16) as u64, true));
        }
    }
    let bytes = source.manifest_bytes(image)?;
    let n = bytes.len() as u64;
    Ok((bytes, n, false))
}

/// Copies image `image` from `source` to `dest`. See the module docs.
pub fn replicate(
    source: &dyn ImageStore,
    dest: &dyn ImageStore,
    image: &str,
    options: &ReplicateOptions,
    progress: &dyn Progress,
) -> Result<ReplicateReport> {
    crate::imaging::store::check_image_name(image)?;
    let started = Instant::now();
    let (manifest_bytes, fetched, was_delta) = fetch_manifest(source, dest, image, options.manifest_delta)?;
    let opened = open_manifest_bytes(&manifest_bytes, image)?;
    let chunks = unique_chunks(&opened.manifest)?;
    let mut report = ReplicateReport {
        image: image.into(),
        chunks_considered: chunks.len() as u64,
        bytes_considered: chunks.iter().map(|c| u64::from(c.len)).sum(),
        manifest_bytes: fetched,
        manifest_delta: was_delta,
        ..ReplicateReport::default()
    };
    let mut bucket = options.bandwidth.map(|rate| TokenBucket::new(rate, Instant::now()));
    progress.start("replicate", report.bytes_considered);
    // A gc on the destination between a chunk batch and the manifest can take chunks away:
    // the manifest is refused (409) and one more pass sends them.
    for attempt in 0..2 {
        copy_missing(
            source,
            dest,
            image,
            &chunks,
            options,
            &mut bucket,
            progress,
            &mut report,
        )?;
        match dest.put_manifest(image, &manifest_bytes) {
            Ok(()) => break,
            Err(e) if attempt == 0 && is_conflict(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn copy_missing(
    source: &dyn ImageStore,
    dest: &dyn ImageStore,
    image: &str,
    chunks: &[ChunkRef],
    options: &ReplicateOptions,
    bucket: &mut Option<TokenBucket>,
    progress: &dyn Progress,
    report: &mut ReplicateReport,
) -> Result<()> {
    let cancelled = || {
        if progress.cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    };
    for group in chunks.chunks(options.has_batch.max(1)) {
        cancelled()?;
        let ids: Vec<ChunkId> = group.iter().map(|c| c.id).collect();
        let missing: std::collections::HashSet<ChunkId> = dest.missing(&ids)?.into_iter().collect();
        let mut wanted = Vec::new();
        for c in group {
            if missing.contains(&c.id) {
                wanted.push(*c);
            } else {
                report.chunks_skipped += 1;
                report.bytes_skipped += u64::from(c.len);
                progress.advance(u64::from(c.len));
            }
        }
        let mut start = 0;
        while start < wanted.len() {
            cancelled()?;
            let mut end = start;
            let mut plain = 0u64;
            while end < wanted.len() && (end == start || plain < options.batch_bytes) {
                plain += wanted.get(end).map_or(0, |c| u64::from(c.len));
                end += 1;
            }
            let batch = wanted.get(start..end).unwrap_or_default();
            let ids: Vec<ChunkId> = batch.iter().map(|c| c.id).collect();
            let got = source.get_chunks(&ids)?;
            let mut out = Vec::with_capacity(batch.len());
            for (c, bytes) in batch.iter().zip(got) {
                let encoded = bytes.ok_or_else(|| Error::ChunkMissing {
                    image: image.into(),
                    chunk: c.id.to_hex(),
                })?;
                out.push(WireChunk {
                    id: c.id,
                    len: c.len,
                    encoded,
                });
            }
            let wire: u64 = out.iter().map(|c| c.encoded.len() as u64).sum();
            if let Some(bucket) = bucket.as_mut() {
                std::thread::sleep(bucket.take(wire, Instant::now()));
            }
            dest.put_chunks(&out).map_err(|e| match e {
                Error::ChunkCorrupt { chunk, reason, .. } => Error::ChunkCorrupt {
                    image: image.into(),
                    chunk,
                    reason,
                },
                other => other,
            })?;
            report.chunks_sent += out.len() as u64;
            report.bytes_sent += wire;
            progress.advance(plain);
            start = end;
        }
    }
    Ok(())
}

/// Counts progress for [`pull_for_node`], which posts it to the master.
#[derive(Debug, Default)]
struct Counter {
    done: std::sync::atomic::AtomicU64,
}

impl Progress for Counter {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How often [`pull_for_node`] reports bytes to the master.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// A node pulls `image` from `source` into `dest` and keeps the master's copy row current:
/// replicating (with bytes, every [`REPORT_EVERY`]), then complete, or failed with the reason.
/// A master that cannot be told does not stop the copy.
pub async fn pull_for_node(
    master: &crate::control::client::Client,
    node: &str,
    source: std::sync::Arc<dyn ImageStore>,
    dest: std::sync::Arc<dyn ImageStore>,
    image: &str,
    options: ReplicateOptions,
) -> Result<ReplicateReport> {
    use crate::control::model::{CopyReport, CopyState};
    let report = |state, bytes, reason: Option<String>| CopyReport { state, bytes, reason };
    let tell = |r: CopyReport| async move {
        if let Err(e) = master.set_copy_state(image, node, &r).await {
            tracing::warn!(image, node, "copy state not recorded: {e}");
        }
    };
    tell(report(CopyState::Replicating, 0, None)).await;
    let counter = std::sync::Arc::new(Counter::default());
    let (c, name) = (counter.clone(), image.to_string());
    let mut job = tokio::task::spawn_blocking(move || replicate(&*source, &*dest, &name, &options, &*c));
    let result = loop {
        tokio::select! {
            r = &mut job => break r.map_err(|e| Error::Internal(format!("replication worker: {e}")))?,
            () = tokio::time::sleep(REPORT_EVERY) => {
                let done = counter.done.load(std::sync::atomic::Ordering::Relaxed);
                tell(report(CopyState::Replicating, done, None)).await;
            }
        }
    };
    match &result {
        Ok(r) => tell(report(CopyState::Complete, r.bytes_considered, None)).await,
        Err(e) => tell(report(CopyState::Failed, 0, Some(e.to_string()))).await,
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_spaces_sends_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert_eq!(b.take(1000, t0), Duration::ZERO);
        assert_eq!(b.take(500, t0), Duration::from_millis(500));
        // Half a second later the debt is paid; a second later a full second's worth is back.
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(b.take(1000, t1), Duration::ZERO);
    }
}
