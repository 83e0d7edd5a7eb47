//! A store as replication sees it: batched chunk questions and whole manifests, the same for a
//! local store ([`LocalStore`], the one adapter that touches [`Store`]) and a store behind HTTP
//! (`control::remote::RemoteStore`).
//!
//! Manifests travel as their file bytes (self-checking: BLAKE3 trailer). A re-captured image's
//! manifest differs from the old one in a few places, so it can also travel as a delta against a
//! manifest the receiver holds: both sides cut manifests into content-defined pieces (FastCDC,
//! about 1 KiB), the receiver names the pieces it has, the sender answers with references to
//! those and literal bytes for the rest ([`manifest_delta`], [`apply_manifest_delta`]).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use rayon::prelude::*;

use super::chunk::{self, ChunkId, ChunkSink, FramePart, WireFrame};
use super::manifest::{ChunkRef, Manifest, ManifestWriter};
use super::store::Store;
use crate::error::IoContext;
use crate::{Error, Result};

/// A chunk in transit: its id, plain length (needed to check it) and stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireChunk {
    /// Chunk id.
    pub id: ChunkId,
    /// Plain length.
    pub len: u32,
    /// Encoded bytes (see [`chunk::encode`]).
    pub encoded: Vec<u8>,
}

impl WireChunk {
    /// The plain bytes, decoded and checked against the id; the error names the chunk.
    pub fn plain(&self) -> Result<Vec<u8>> {
        chunk::decode(&self.encoded, self.len as usize)
            .and_then(|plain| chunk::check(&self.id, &plain).map(|()| plain))
            .map_err(|reason| Error::ChunkCorrupt {
                image: "transfer".into(),
                chunk: self.id.to_hex(),
                reason,
            })
    }

    /// Decodes and hashes the chunk; the error names it.
    pub fn verify(&self) -> Result<()> {
        self.plain().map(|_| ())
    }

    /// A chunk as it arrived in stored form; its plain length comes from the encoding.
    pub fn from_stored(id: ChunkId, encoded: Vec<u8>) -> Result<WireChunk> {
        let len = chunk::plain_len(&encoded)
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Error::ChunkCorrupt {
                image: "transfer".into(),
                chunk: id.to_hex(),
                reason: "its plain length is not readable from its encoding".into(),
            })?;
        Ok(WireChunk { id, len, encoded })
    }
}

/// Each image's header and the store's sizes ([`ImageStore::summaries`]).
pub type StoreSummary = (
    Vec<crate::imaging::store::ImageSummary>,
    crate::imaging::store::StoreStats,
);

/// A store that images can be replicated from and to. Every method is one round trip for a
/// remote store, so callers batch.
pub trait ImageStore: Send + Sync {
    /// Names of the complete images.
    fn images(&self) -> Result<Vec<String>>;
    /// Each image's header and the store's sizes, when the store is on this machine.
    fn summaries(&self) -> Result<Option<StoreSummary>> {
        Ok(None)
    }
    /// The manifest file of image `name` ([`Error::ImageNotFound`] when absent).
    fn manifest_bytes(&self, name: &str) -> Result<Vec<u8>>;
    /// The manifest of `name` as a delta against a manifest cut into `base` pieces.
    fn manifest_delta(&self, name: &str, base: &[PieceHash]) -> Result<Vec<u8>> {
        Ok(manifest_delta(&self.manifest_bytes(name)?, base))
    }
    /// Of `ids`, those the store does not hold, in the order given.
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>>;
    /// The encoded bytes of each of `ids` (`None` when absent), in the order given, each chunk
    /// encoded on its own: what replication sends, so only the chunks asked for cross the wire.
    fn get_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>>;
    /// The chunks of `ids` in frames ([`WireFrame`]): what deploy reads, with no per-chunk work on
    /// the sending side. Absent ids are in no frame. Default: each chunk from
    /// [`get_chunks`](ImageStore::get_chunks) as a frame of its own.
    fn get_frames(&self, ids: &[ChunkId]) -> Result<Vec<WireFrame>> {
        let mut frames = Vec::new();
        for ((index, id), encoded) in (0u32..).zip(ids).zip(self.get_chunks(ids)?) {
            let Some(encoded) = encoded else { continue };
            let chunk = WireChunk::from_stored(*id, encoded)?;
            frames.push(WireFrame {
                stored: chunk.encoded,
                parts: vec![FramePart {
                    index,
                    start: 0,
                    len: chunk.len,
                }],
            });
        }
        Ok(frames)
    }
    /// Checks every chunk (decode and hash) and, only if all are good, stores them durably.
    /// Returns how many were new.
    fn put_chunks(&self, chunks: &[WireChunk]) -> Result<u64>;
    /// Makes `bytes` (a manifest file) image `name`, atomically, once every chunk it names is
    /// present; else [`Error::Conflict`] naming what is missing, and nothing changes.
    fn put_manifest(&self, name: &str, bytes: &[u8]) -> Result<()>;
    /// Like [`put_chunks`](ImageStore::put_chunks) for the chunks of `frames` (parts naming
    /// `ids`). Default: each chunk encoded on its own through `put_chunks`.
    fn put_frames(&self, ids: &[ChunkId], frames: &[WireFrame]) -> Result<u64> {
        let chunks: Vec<WireChunk> = checked_frame_chunks(ids, frames)?
            .into_iter()
            .map(|(id, plain)| WireChunk {
                id,
                len: plain.len() as u32,
                encoded: chunk::encode(&plain),
            })
            .collect();
        self.put_chunks(&chunks)
    }
}

/// The chunks of `frames` (parts naming `ids`), decoded and checked, frames in parallel.
pub fn checked_frame_chunks(ids: &[ChunkId], frames: &[WireFrame]) -> Result<Vec<(ChunkId, Vec<u8>)>> {
    let per_frame: Vec<Vec<(ChunkId, Vec<u8>)>> = frames.par_iter().map(|f| f.chunks(ids)).collect::<Result<_>>()?;
    Ok(per_frame.into_iter().flatten().collect())
}

/// The local store as an [`ImageStore`]. All of replication's contact with [`Store`] is here.
#[derive(Debug, Clone)]
pub struct LocalStore {
    store: Store,
}

impl LocalStore {
    /// Wraps `store`.
    pub fn new(store: Store) -> Self {
        LocalStore { store }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores chunks already checked against their ids, durably per batch.
    fn store_checked(&self, run: &[(ChunkId, &[u8])]) -> Result<u64> {
        let writer = self.store.writer()?;
        let new = writer.put_run(run)?;
        if new > 0 {
            // Durable per batch: a re-run after a crash sends only what is still missing.
            writer.commit_chunks()?;
        }
        Ok(new as u64)
    }
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{tag}{nanos:x}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new() -> TempFile {
        TempFile(std::env::temp_dir().join(unique("fog-manifest-")))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Rewrites `src` into `out` as image `name` (tables streamed, sections recomputed).
fn copy_manifest(src: &Manifest, mut out: ManifestWriter, name: &str) -> Result<()> {
    let mut header = src.header.clone();
    header.name = name.into();
    for region in &mut header.regions {
        for chunk in src.chunks(region) {
            out.push_chunk(&chunk?)?;
        }
        region.chunks = out.end_chunks();
        region.extents = out.write_extents(&src.extents(region)?)?;
    }
    out.finish(&header)
}

/// A manifest opened from bytes (kept in a temporary file while this lives).
pub struct OpenedManifest {
    /// The manifest.
    pub manifest: Manifest,
    _file: TempFile,
}

/// Opens manifest file bytes as image `name`, checking trailer, header and checksum.
pub fn open_manifest_bytes(bytes: &[u8], name: &str) -> Result<OpenedManifest> {
    let file = TempFile::new();
    fs::write(&file.0, bytes).at(&file.0)?;
    let manifest = Manifest::open(&file.0, name)?;
    manifest.check()?;
    Ok(OpenedManifest { manifest, _file: file })
}

/// Every distinct chunk a manifest names, in first-use order.
pub fn unique_chunks(manifest: &Manifest) -> Result<Vec<ChunkRef>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for region in &manifest.header.regions {
        for chunk in manifest.chunks(region) {
            let chunk = chunk?;
            if seen.insert(chunk.id) {
                out.push(chunk);
            }
        }
    }
    Ok(out)
}

impl ImageStore for LocalStore {
    fn images(&self) -> Result<Vec<String>> {
        self.store.image_names()
    }

    fn summaries(&self) -> Result<Option<StoreSummary>> {
        Ok(Some((self.store.images()?, self.store.stats()?)))
    }

    fn manifest_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let _lock = self.store.lock_shared()?;
        let manifest = self.store.manifest(name)?;
        let tmp = TempFile::new();
        copy_manifest(&manifest, ManifestWriter::create(&tmp.0)?, name)?;
        fs::read(&tmp.0).at(&tmp.0)
    }

    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let reader = self.store.reader()?;
        let mut missing = Vec::new();
        for id in ids {
            if !reader.has(id)? {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    fn get_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>> {
        use super::chunk::ChunkSource;
        let _lock = self.store.lock_shared()?;
        let reader = self.store.reader()?;
        // The store keeps frames of many chunks; the wire carries each chunk on its own,
        // compressed (verified plain bytes from the store, encoded in parallel).
        let plain: Vec<Option<Vec<u8>>> = ids.iter().map(|id| reader.get(id)).collect::<Result<_>>()?;
        Ok(plain.into_par_iter().map(|p| p.map(|p| chunk::encode(&p))).collect())
    }

    fn put_chunks(&self, chunks: &[WireChunk]) -> Result<u64> {
        // Every chunk of the batch is checked before any is stored: one bad chunk stores nothing.
        let plain: Vec<Vec<u8>> = chunks.par_iter().map(WireChunk::plain).collect::<Result<_>>()?;
        let run: Vec<(ChunkId, &[u8])> = chunks.iter().zip(&plain).map(|(c, p)| (c.id, p.as_slice())).collect();
        self.store_checked(&run)
    }

    fn get_frames(&self, ids: &[ChunkId]) -> Result<Vec<WireFrame>> {
        let _lock = self.store.lock_shared()?;
        self.store.reader()?.frames(ids)
    }

    fn put_frames(&self, ids: &[ChunkId], frames: &[WireFrame]) -> Result<u64> {
        let chunks = checked_frame_chunks(ids, frames)?;
        let run: Vec<(ChunkId, &[u8])> = chunks.iter().map(|(id, p)| (*id, p.as_slice())).collect();
        self.store_checked(&run)
    }

    fn put_manifest(&self, name: &str, bytes: &[u8]) -> Result<()> {
        super::store::check_image_name(name)?;
        let opened = open_manifest_bytes(bytes, name)?;
        let manifest = &opened.manifest;
        let writer = self.store.writer()?;
        let mut missing = Vec::new();
        for chunk in unique_chunks(manifest)? {
            if !writer.has(&chunk.id)? {
                missing.push(chunk.id);
            }
        }
        if let Some(first) = missing.first() {
            return Err(Error::conflict(
                "image",
                name,
                format!(
                    "{} chunks it names are missing (first {first}); send them, then the manifest",
                    missing.len()
                ),
            ));
        }
        copy_manifest(manifest, writer.manifest_writer()?, name)?;
        writer.commit(name)
    }
}

/// A site's store in front of its master's: what is here is served from here, what is not is
/// fetched from `upstream` and kept (checked, then stored), so a node deploys an image it has
/// not fully replicated yet and the next host finds the chunks local. Manifests come from
/// upstream first (the newest version of the image) and from here when upstream cannot say.
/// Writes go here only: a capture lands on the node and is pushed upstream afterwards.
pub struct ReadThrough {
    /// The node's own store.
    pub local: Arc<dyn ImageStore>,
    /// The master's.
    pub upstream: Arc<dyn ImageStore>,
}

impl ImageStore for ReadThrough {
    fn images(&self) -> Result<Vec<String>> {
        self.local.images()
    }

    fn manifest_bytes(&self, name: &str) -> Result<Vec<u8>> {
        match self.upstream.manifest_bytes(name) {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                tracing::debug!(image = name, "upstream manifest unavailable ({e}); using the local one");
                self.local.manifest_bytes(name)
            }
        }
    }

    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        self.local.missing(ids)
    }

    fn get_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut chunks = self.local.get_chunks(ids)?;
        let absent: Vec<usize> = (0..ids.len()).filter(|&i| chunks[i].is_none()).collect();
        if absent.is_empty() {
            return Ok(chunks);
        }
        let wanted: Vec<ChunkId> = absent.iter().map(|&i| ids[i]).collect();
        let fetched = self.upstream.get_chunks(&wanted)?;
        let mut keep = Vec::new();
        for ((&i, id), encoded) in absent.iter().zip(&wanted).zip(fetched) {
            if let Some(encoded) = encoded {
                keep.push(WireChunk::from_stored(*id, encoded.clone())?);
                chunks[i] = Some(encoded);
            }
        }
        // put_chunks checks every chunk against its id before storing any.
        self.local.put_chunks(&keep)?;
        Ok(chunks)
    }

    fn get_frames(&self, ids: &[ChunkId]) -> Result<Vec<WireFrame>> {
        let wanted = self.local.missing(ids)?;
        if !wanted.is_empty() {
            // Checked and kept here first, then served from here like the rest.
            let fetched = self.upstream.get_frames(&wanted)?;
            self.local.put_frames(&wanted, &fetched)?;
        }
        self.local.get_frames(ids)
    }

    fn put_chunks(&self, chunks: &[WireChunk]) -> Result<u64> {
        self.local.put_chunks(chunks)
    }

    fn put_manifest(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.local.put_manifest(name, bytes)
    }
}

/// The name of a manifest piece: the first 16 bytes of its BLAKE3.
pub type PieceHash = [u8; 16];

const PIECE_MIN: usize = 256;
const PIECE_AVG: usize = 1024;
const PIECE_MAX: usize = 4096;
const OP_COPY: u8 = 0;
const OP_LITERAL: u8 = 1;

fn piece_hash(bytes: &[u8]) -> PieceHash {
    let mut h = [0u8; 16];
    h.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
    h
}

fn cut(bytes: &[u8]) -> Vec<(usize, usize)> {
    fastcdc::v2020::FastCDC::new(bytes, PIECE_MIN, PIECE_AVG, PIECE_MAX)
        .map(|c| (c.offset, c.length))
        .collect()
}

/// The pieces of a manifest the receiver holds, to send with a delta request.
pub fn manifest_pieces(bytes: &[u8]) -> Vec<PieceHash> {
    cut(bytes)
        .into_iter()
        .filter_map(|(o, l)| bytes.get(o..o + l).map(piece_hash))
        .collect()
}

/// `target` as references to `base` pieces and literal bytes, with its BLAKE3 first.
pub fn manifest_delta(target: &[u8], base: &[PieceHash]) -> Vec<u8> {
    let index: HashMap<&PieceHash, u32> = base.iter().zip(0u32..).collect();
    let mut out = blake3::hash(target).as_bytes().to_vec();
    for (o, l) in cut(target) {
        let Some(piece) = target.get(o..o + l) else { continue };
        match index.get(&piece_hash(piece)) {
            Some(i) => {
                out.push(OP_COPY);
                out.extend_from_slice(&i.to_le_bytes());
            }
            None => {
                out.push(OP_LITERAL);
                out.extend_from_slice(&(l as u32).to_le_bytes());
                out.extend_from_slice(piece);
            }
        }
    }
    out
}

/// Rebuilds a manifest from `base` and a [`manifest_delta`], checking its BLAKE3.
pub fn apply_manifest_delta(base: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::InvalidInput(format!("manifest delta: {why}"));
    let pieces = cut(base);
    let (hash, mut ops) = delta.split_at_checked(32).ok_or_else(|| bad("truncated"))?;
    let mut out = Vec::with_capacity(base.len());
    let u32_at = |b: &[u8]| -> Option<u32> { Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?)) };
    while let Some((&op, rest)) = ops.split_first() {
        let n = u32_at(rest).ok_or_else(|| bad("truncated"))?;
        let rest = rest.get(4..).ok_or_else(|| bad("truncated"))?;
        match op {
            OP_COPY => {
                let (o, l) = pieces
                    .get(n as usize)
                    .copied()
                    .ok_or_else(|| bad("reference past the base"))?;
                out.extend_from_slice(base.get(o..o + l).ok_or_else(|| bad("reference past the base"))?);
                ops = rest;
            }
            OP_LITERAL => {
                let (lit, rest) = rest
                    .split_at_checked(n as usize)
                    .ok_or_else(|| bad("truncated literal"))?;
                out.extend_from_slice(lit);
                ops = rest;
            }
            other => return Err(bad(&format!("unknown op {other}"))),
        }
    }
    if blake3::hash(&out).as_bytes() != hash {
        return Err(bad("result does not match its hash"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_of_a_small_change_is_small_and_rebuilds_the_target() {
        let base: Vec<u8> = (0..200_000u32)
            .flat_map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[..4].to_vec())
            .collect();
        let mut target = base.clone();
        target.splice(100_000..100_000, [7u8; 72]);
        if let Some(b) = target.get_mut(500_000) {
            *b ^= 1;
        }
        let delta = manifest_delta(&target, &manifest_pieces(&base));
        assert!(
            delta.len() < target.len() / 50,
            "delta {} of {}",
            delta.len(),
            target.len()
        );
        assert_eq!(apply_manifest_delta(&base, &delta).ok(), Some(target.clone()));
        // Against the wrong base the hash check refuses it.
        let other = vec![1u8; base.len()];
        assert!(apply_manifest_delta(&other, &delta).is_err());
        assert!(apply_manifest_delta(&base, &delta[..delta.len() - 1]).is_err());
    }

    #[test]
    fn plain_length_comes_from_the_encoding() {
        for data in [b"fog ".repeat(5000), vec![9u8; 3], Vec::new()] {
            assert_eq!(chunk::plain_len(&chunk::encode(&data)), Ok(data.len()));
        }
        assert!(chunk::plain_len(&[]).is_err());
        assert!(WireChunk::from_stored(ChunkId::of(b""), vec![7, 0]).is_err());
    }
}
