//! Replication: copy an image from one [`ImageStore`] to another, sending only the chunks the
//! destination lacks, every chunk checked on arrival, the manifest last.
//!
//! Resuming needs no state: chunks are stored in durable batches as they arrive, so a re-run
//! after a crash, a dropped link or a cancel asks again what is missing and sends only that; the
//! image appears only when its manifest is accepted, which the destination refuses while any
//! chunk is absent.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::imaging::chunk::{ChunkId, WireFrame};
use crate::imaging::manifest::ChunkRef;
use crate::imaging::replica::{
    DELTA_MAX_BASE, ImageStore, PieceHash, SpooledManifest, TempDir, WireChunk, apply_manifest_delta, chunk_windows,
    fetch_manifest, manifest_pieces, open_spooled, put_manifest_file, spool,
};
use crate::progress::Progress;

/// Options of a replication.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// Bytes per second on the wire for chunks (none: as fast as it goes).
    pub bandwidth: Option<u64>,
    /// Plain bytes of chunks per get and put batch.
    pub batch_bytes: u64,
    /// Ids per "which are missing" question: the manifest's chunk references are walked in
    /// windows of this many, so memory stays bounded whatever the image's size.
    pub has_batch: usize,
    /// Fetch the manifest as a delta against the destination's image of the same name (when
    /// that one is at most [`DELTA_MAX_BASE`] bytes).
    pub manifest_delta: bool,
    /// Where manifests are spooled while they are copied (a 2 TB disk's is about 9 GiB);
    /// `None`: the system's temporary directory.
    pub work_dir: Option<PathBuf>,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            bandwidth: None,
            batch_bytes: 4 << 20,
            has_batch: 8192,
            manifest_delta: true,
            work_dir: None,
        }
    }
}

/// What a replication did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicateReport {
    /// Image name.
    pub image: String,
    /// Distinct chunks the image names (distinct per window of `has_batch` references: a chunk
    /// used again in a later window counts again, and is skipped there).
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

    fn local_store(&self) -> Option<&crate::imaging::store::Store> {
        self.inner.local_store()
    }
    fn manifest_to(&self, name: &str, out: &mut dyn Write) -> Result<u64> {
        self.inner.manifest_to(name, out)
    }
    fn manifest_delta_to(&self, name: &str, base: &[PieceHash], out: &mut dyn Write) -> Result<u64> {
        self.inner.manifest_delta_to(name, base, out)
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
    fn put_manifest_from(&self, name: &str, manifest: &mut dyn Read) -> Result<()> {
        self.inner.put_manifest_from(name, manifest)
    }
}

fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Conflict { .. } | Error::Remote { status: 409, .. })
}

/// A writer that refuses to take more than `left` bytes.
struct AtMost<'a> {
    out: &'a mut dyn Write,
    left: u64,
}

impl Write for AtMost<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::other("larger than a delta is worth"));
        }
        let n = self.out.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The manifest of `image` from `source` as a delta against `dest`'s manifest of that name,
/// spooled in `dir`, with the bytes fetched; `None` when `dest` has none (or one over
/// [`DELTA_MAX_BASE`] bytes) or `source` cannot send a delta that rebuilds it.
fn by_delta(
    source: &dyn ImageStore,
    dest: &dyn ImageStore,
    image: &str,
    dir: &Path,
) -> Result<Option<(SpooledManifest, u64)>> {
    let tmp = TempDir::new_in(dir, "fog-replicate-")?;
    let base_path = tmp.path().join("base");
    let fetched = spool(&base_path, |out| {
        dest.manifest_to(
            image,
            &mut AtMost {
                out,
                left: DELTA_MAX_BASE,
            },
        )
    });
    if fetched.is_err() {
        return Ok(None);
    }
    let base = std::fs::File::open(&base_path).map_err(|e| Error::io(&base_path, e))?;
    let pieces = manifest_pieces(&base, &base_path)?;
    let delta_path = tmp.path().join("delta");
    let Ok(delta_len) = spool(&delta_path, |out| source.manifest_delta_to(image, &pieces, out)) else {
        return Ok(None);
    };
    let path = tmp.path().join("manifest");
    let rebuilt = std::fs::File::open(&delta_path)
        .map_err(|e| Error::io(&delta_path, e))
        .and_then(|delta| {
            spool(&path, |out| {
                apply_manifest_delta(&base, &base_path, &mut std::io::BufReader::new(delta), out)
            })
        });
    drop(base);
    let _ = std::fs::remove_file(&base_path);
    let _ = std::fs::remove_file(&delta_path);
    if let Err(e) = rebuilt {
        tracing::debug!(image, "manifest delta did not rebuild ({e}); fetching it whole");
        return Ok(None);
    }
    Ok(open_spooled(tmp, &path, image)
        .ok()
        .map(|m| (m, delta_len + pieces.len() as u64 * 16)))
}

/// The manifest of `image` from `source`, spooled in `dir`: a delta against `dest`'s image of
/// that name when it has one, else whole. Returns it, the bytes fetched and whether it was a
/// delta.
fn source_manifest(
    source: &dyn ImageStore,
    dest: &dyn ImageStore,
    image: &str,
    delta: bool,
    dir: &Path,
) -> Result<(SpooledManifest, u64, bool)> {
    if delta && let Some((manifest, fetched)) = by_delta(source, dest, image, dir)? {
        return Ok((manifest, fetched, true));
    }
    let manifest = fetch_manifest(source, image, dir)?;
    let fetched = manifest.manifest.file_len();
    Ok((manifest, fetched, false))
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
    let dir = options.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (spooled, fetched, was_delta) = source_manifest(source, dest, image, options.manifest_delta, &dir)?;
    let manifest = &spooled.manifest;
    let window = options.has_batch.clamp(1, crate::control::chunks::MAX_IDS);
    let mut report = ReplicateReport {
        image: image.into(),
        manifest_bytes: fetched,
        manifest_delta: was_delta,
        ..ReplicateReport::default()
    };
    // A first walk over the windows (a read of the spooled file) for the progress total.
    for chunks in chunk_windows(manifest, window) {
        let chunks = chunks?;
        report.chunks_considered += chunks.len() as u64;
        report.bytes_considered += chunks.iter().map(|c| u64::from(c.len)).sum::<u64>();
    }
    let mut bucket = options.bandwidth.map(|rate| TokenBucket::new(rate, Instant::now()));
    progress.start("replicate", report.bytes_considered);
    // A gc on the destination between a chunk batch and the manifest can take chunks away:
    // the manifest is refused (409) and one more pass sends them.
    for attempt in 0..2 {
        for chunks in chunk_windows(manifest, window) {
            copy_missing(
                source,
                dest,
                image,
                &chunks?,
                options,
                &mut bucket,
                progress,
                &mut report,
            )?;
        }
        match put_manifest_file(dest, image, spooled.path()) {
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
