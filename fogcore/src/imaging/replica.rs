//! A store as replication sees it: batched chunk questions and streamed manifests, the same for
//! a local store ([`LocalStore`], the one adapter that touches [`Store`]) and a store behind HTTP
//! (`control::remote::RemoteStore`).
//!
//! Manifests travel as their file bytes (self-checking: BLAKE3 trailer), streamed from file to
//! file and never whole in memory: a 2 TB disk's manifest is about 9 GiB. Whoever needs to read
//! one spools it to a file first ([`fetch_manifest`]) and walks its chunk references in windows
//! ([`chunk_windows`]), so memory stays bounded whatever the image's size.
//!
//! A re-captured image's manifest differs from the old one in a few places, so it can also travel
//! as a delta against a manifest the receiver holds: both sides cut manifests into
//! content-defined pieces (FastCDC, about 1 KiB), the receiver names the pieces it has, the
//! sender answers with references to those and literal bytes for the rest
//! ([`write_manifest_delta`], [`apply_manifest_delta`]). Both stream over files; the piece list
//! (16 bytes per KiB of base) and the sender's index of it are what they hold, so a delta is
//! asked for only against a base of at most [`DELTA_MAX_BASE`] bytes.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::chunk::{self, ChunkId, ChunkSink, FramePart, WireFrame};
use super::manifest::{ChunkRef, MAX_MANIFEST_BYTES, Manifest, ManifestWriter, ReadAt};
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

/// Chunk references walked per window ([`chunk_windows`]): one `missing` question each, about
/// 2.3 MiB of references in memory.
pub const WINDOW_REFS: usize = 1 << 16;

/// A store that images can be replicated from and to. Every method is one round trip for a
/// remote store, so callers batch. Manifests stream: no method holds one whole in memory.
pub trait ImageStore: Send + Sync {
    /// Names of the complete images.
    fn images(&self) -> Result<Vec<String>>;
    /// Each image's header and the store's sizes, when the store is on this machine.
    fn summaries(&self) -> Result<Option<StoreSummary>> {
        Ok(None)
    }
    /// Writes the manifest file of image `name` to `out` and returns its length
    /// ([`Error::ImageNotFound`] when absent, before anything is written).
    fn manifest_to(&self, name: &str, out: &mut dyn Write) -> Result<u64>;
    /// Writes the manifest of `name` to `out` as a delta against a manifest cut into `base`
    /// pieces ([`write_manifest_delta`]); returns the delta's length. Default: the manifest
    /// spooled to a temporary file, the delta streamed from it.
    fn manifest_delta_to(&self, name: &str, base: &[PieceHash], out: &mut dyn Write) -> Result<u64> {
        let dir = TempDir::new_in(&std::env::temp_dir(), "fog-delta-")?;
        let path = dir.path().join("manifest");
        spool(&path, |file| self.manifest_to(name, file))?;
        let file = File::open(&path).at(&path)?;
        write_manifest_delta(&file, &path, base, out)
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
    /// Makes the manifest file read from `manifest` (at most [`MAX_MANIFEST_BYTES`]) image
    /// `name`, atomically, once every chunk it names is present; else [`Error::Conflict`] naming
    /// what is missing, and nothing changes. See [`put_manifest_file`].
    fn put_manifest_from(&self, name: &str, manifest: &mut dyn Read) -> Result<()>;
    /// The local store behind this one, if it is one: what receives an image works its
    /// partitions' minimum sizes out there ([`crate::imaging::shrink`]). Default: none.
    fn local_store(&self) -> Option<&Store> {
        None
    }
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

/// Makes the manifest file at `path` image `name` in `store` ([`ImageStore::put_manifest_from`]).
pub fn put_manifest_file(store: &dyn ImageStore, name: &str, path: &Path) -> Result<()> {
    let file = File::open(path).at(path)?;
    store.put_manifest_from(name, &mut BufReader::with_capacity(1 << 20, file))
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

    /// The manifest served as image `name`: the stored file, opened (a snapshot: a replacement
    /// committed meanwhile does not change it), or, when its header names another image, a copy
    /// rewritten under `name` in a temporary directory (kept alive by the second value).
    fn served(&self, name: &str) -> Result<(Manifest, Option<TempDir>)> {
        let manifest = self.store.manifest(name)?;
        if manifest.header.name == name {
            return Ok((manifest, None));
        }
        let dir = TempDir::new_in(&std::env::temp_dir(), "fog-manifest-")?;
        let path = dir.path().join("manifest");
        copy_manifest(&manifest, ManifestWriter::create(&path)?, name)?;
        Ok((Manifest::open(&path, name)?, Some(dir)))
    }
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{tag}{nanos:x}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// A temporary directory, removed with what it holds on drop. A directory (not a file) because a
/// store's gc removes whatever is in its `tmp/` as directories.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new directory in `parent` (created if absent), its name starting with `tag`.
    pub fn new_in(parent: &Path, tag: &str) -> Result<TempDir> {
        fs::create_dir_all(parent).at(parent)?;
        let path = parent.join(unique(tag));
        fs::create_dir(&path).at(&path)?;
        Ok(TempDir(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Creates `path` and has `fill` write it through a buffer; a partial file is removed.
pub fn spool(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<u64>) -> Result<u64> {
    let file = File::options().write(true).create_new(true).open(path).at(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let written = fill(&mut out).and_then(|n| out.flush().at(path).map(|()| n));
    if written.is_err() {
        drop(out);
        let _ = fs::remove_file(path);
    }
    written
}

/// Copies at most `limit` bytes of `from` into the new file `path`: more is
/// [`Error::TooLarge`], a failed read an invalid upload of `what`.
fn receive(from: &mut dyn Read, path: &Path, limit: u64, what: &str) -> Result<u64> {
    spool(path, |out| {
        let mut limited = from.take(limit.saturating_add(1));
        let n = copy_apart(&mut limited, out).map_err(|e| match e {
            CopyError::Read(e) => Error::invalid("manifest", what, format!("reading it stopped: {e}")),
            CopyError::Write(e) => Error::io(path, e),
        })?;
        if n > limit {
            return Err(Error::TooLarge {
                what: format!("the manifest of {what}"),
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            });
        }
        Ok(n)
    })
}

/// Copies `from` to `to` in pieces, telling read errors (the source) from write errors (the
/// destination) apart; returns the bytes copied.
pub fn copy_apart(from: &mut dyn Read, to: &mut dyn Write) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(buf.get(..n).unwrap_or_default())
            .map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// Which side of a [`copy_apart`] failed.
#[derive(Debug)]
pub enum CopyError {
    /// Reading the source.
    Read(io::Error),
    /// Writing the destination.
    Write(io::Error),
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

/// A manifest spooled to a temporary file, opened and checked; the file goes with it.
pub struct SpooledManifest {
    /// The manifest.
    pub manifest: Manifest,
    path: PathBuf,
    _dir: TempDir,
}

impl SpooledManifest {
    /// Where its file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The manifest of image `name` from `store`, spooled into a temporary directory in `dir`,
/// opened and checked (trailer, header, checksum).
pub fn fetch_manifest(store: &dyn ImageStore, name: &str, dir: &Path) -> Result<SpooledManifest> {
    let tmp = TempDir::new_in(dir, "fog-manifest-")?;
    let path = tmp.path().join("manifest");
    spool(&path, |out| store.manifest_to(name, out))?;
    open_spooled(tmp, &path, name)
}

/// Opens and checks the manifest at `path` (in `dir`, which goes with it) as image `name`.
pub fn open_spooled(dir: TempDir, path: &Path, name: &str) -> Result<SpooledManifest> {
    let manifest = Manifest::open(path, name)?;
    manifest.check()?;
    Ok(SpooledManifest {
        manifest,
        path: path.into(),
        _dir: dir,
    })
}

/// The chunk references of `manifest` in windows of at most `window` references, each without
/// repeats (first use first): one `missing` question per window keeps memory bounded whatever the
/// image's size. A chunk used again in a later window comes again there (one more question about
/// it, answered by the store, never a second transfer).
pub fn chunk_windows(manifest: &Manifest, window: usize) -> impl Iterator<Item = Result<Vec<ChunkRef>>> + '_ {
    let window = window.max(1);
    let mut refs = manifest.header.regions.iter().flat_map(|r| manifest.chunks(r));
    let mut seen = HashSet::new();
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        seen.clear();
        let mut out = Vec::new();
        for chunk in refs.by_ref().take(window) {
            match chunk {
                Ok(c) => {
                    if seen.insert(c.id) {
                        out.push(c);
                    }
                }
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        }
        (!out.is_empty()).then_some(Ok(out))
    })
}

impl ImageStore for LocalStore {
    fn images(&self) -> Result<Vec<String>> {
        self.store.image_names()
    }

    fn local_store(&self) -> Option<&Store> {
        Some(&self.store)
    }

    fn summaries(&self) -> Result<Option<StoreSummary>> {
        Ok(Some((self.store.images()?, self.store.stats()?)))
    }

    fn manifest_to(&self, name: &str, out: &mut dyn Write) -> Result<u64> {
        let (manifest, _tmp) = self.served(name)?;
        manifest.copy_to(out)
    }

    fn manifest_delta_to(&self, name: &str, base: &[PieceHash], out: &mut dyn Write) -> Result<u64> {
        let (manifest, _tmp) = self.served(name)?;
        let (file, path) = manifest.file();
        write_manifest_delta(file, path, base, out)
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

    fn put_manifest_from(&self, name: &str, manifest: &mut dyn Read) -> Result<()> {
        super::store::check_image_name(name)?;
        // A shared lock, held until the commit, keeps gc from emptying `tmp/` (where the
        // manifest is received) and from removing chunks once they are checked present.
        let _lock = self.store.lock_shared()?;
        let tmp = TempDir::new_in(&self.store.root().join("tmp"), "m-")?;
        let path = tmp.path().join("received");
        receive(manifest, &path, MAX_MANIFEST_BYTES, name)?;
        let received = open_spooled(tmp, &path, name)?;
        let manifest = &received.manifest;
        let writer = self.store.writer()?;
        let (mut missing, mut first) = (0u64, None);
        for window in chunk_windows(manifest, WINDOW_REFS) {
            for chunk in window? {
                if !writer.has(&chunk.id)? {
                    missing += 1;
                    first.get_or_insert(chunk.id);
                }
            }
        }
        if let Some(first) = first {
            return Err(Error::conflict(
                "image",
                name,
                format!("{missing} chunks it names are missing (first {first}); send them, then the manifest"),
            ));
        }
        copy_manifest(manifest, writer.manifest_writer()?, name)?;
        writer.commit(name)
    }
}

/// Counts the bytes written through it.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
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

    fn local_store(&self) -> Option<&Store> {
        self.local.local_store()
    }

    fn manifest_to(&self, name: &str, out: &mut dyn Write) -> Result<u64> {
        let mut counting = Counting { inner: out, written: 0 };
        match self.upstream.manifest_to(name, &mut counting) {
            Ok(n) => Ok(n),
            // Once bytes went out, the local copy cannot be appended to them.
            Err(e) if counting.written > 0 => Err(e),
            Err(e) => {
                tracing::debug!(image = name, "upstream manifest unavailable ({e}); using the local one");
                self.local.manifest_to(name, counting.inner)
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

    fn put_manifest_from(&self, name: &str, manifest: &mut dyn Read) -> Result<()> {
        self.local.put_manifest_from(name, manifest)
    }
}

/// The name of a manifest piece: the first 16 bytes of its BLAKE3.
pub type PieceHash = [u8; 16];

/// The largest base manifest a delta is asked against (1 GiB, about 230 GB of used data at
/// 8 KiB chunks). The piece list is 16 bytes per piece (about 1 KiB each, at least 256 bytes),
/// so it stays within a request body ([`crate::control::chunks::MAX_BODY`]) and the sender's
/// index of it within tens of MiB. Larger manifests travel whole, still streamed.
pub const DELTA_MAX_BASE: u64 = 1 << 30;

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

/// Calls `each` with the offset and bytes of every piece of `file`, in order, reading it as a
/// stream (cut points are the same as over the bytes in memory).
fn cut_file(file: &File, path: &Path, mut each: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
    let reader = BufReader::with_capacity(1 << 20, ReadAt::new(file, 0));
    for piece in fastcdc::v2020::StreamCDC::new(reader, PIECE_MIN, PIECE_AVG, PIECE_MAX) {
        let piece = piece.map_err(|e| Error::io(path, e.into()))?;
        each(piece.offset, &piece.data)?;
    }
    Ok(())
}

/// The pieces of a manifest file the receiver holds, to send with a delta request.
pub fn manifest_pieces(file: &File, path: &Path) -> Result<Vec<PieceHash>> {
    let mut pieces = Vec::new();
    cut_file(file, path, |_, piece| {
        pieces.push(piece_hash(piece));
        Ok(())
    })?;
    Ok(pieces)
}

/// Writes the manifest file `target` to `out` as references to `base` pieces and literal bytes,
/// after its BLAKE3 (so the file is read twice, never held); returns the bytes written.
pub fn write_manifest_delta(target: &File, path: &Path, base: &[PieceHash], out: &mut dyn Write) -> Result<u64> {
    let index: HashMap<&PieceHash, u32> = base.iter().zip(0u32..).collect();
    let mut hasher = blake3::Hasher::new();
    std::io::copy(
        &mut BufReader::with_capacity(1 << 20, ReadAt::new(target, 0)),
        &mut hasher,
    )
    .at(path)?;
    let sent = |e: std::io::Error| Error::io("manifest delta", e);
    out.write_all(hasher.finalize().as_bytes()).map_err(sent)?;
    let mut written = 32u64;
    cut_file(target, path, |_, piece| {
        match index.get(&piece_hash(piece)) {
            Some(i) => {
                out.write_all(&[OP_COPY]).map_err(sent)?;
                out.write_all(&i.to_le_bytes()).map_err(sent)?;
                written += 5;
            }
            None => {
                out.write_all(&[OP_LITERAL]).map_err(sent)?;
                out.write_all(&(piece.len() as u32).to_le_bytes()).map_err(sent)?;
                out.write_all(piece).map_err(sent)?;
                written += 5 + piece.len() as u64;
            }
        }
        Ok(())
    })?;
    Ok(written)
}

/// Rebuilds a manifest into `out` from the file `base` and a delta read from `delta`, checking
/// its BLAKE3 at the end (on an error, what was written is to be thrown away). Holds only the
/// base's piece positions. Returns the bytes written.
pub fn apply_manifest_delta(base: &File, path: &Path, delta: &mut dyn Read, out: &mut dyn Write) -> Result<u64> {
    let bad = |why: &str| Error::InvalidInput(format!("manifest delta: {why}"));
    let mut pieces: Vec<(u64, u32)> = Vec::new();
    cut_file(base, path, |offset, piece| {
        pieces.push((offset, piece.len() as u32));
        Ok(())
    })?;
    let mut delta = BufReader::with_capacity(1 << 20, delta);
    let read = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bad("truncated")
        } else {
            Error::io("manifest delta", e)
        }
    };
    let written_to = |e: std::io::Error| Error::io("rebuilt manifest", e);
    let mut hash = [0u8; 32];
    delta.read_exact(&mut hash).map_err(read)?;
    let mut hasher = blake3::Hasher::new();
    let mut written = 0u64;
    let mut piece = vec![0u8; PIECE_MAX];
    loop {
        let mut op = [0u8; 1];
        match delta.read(&mut op) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read(e)),
        }
        let mut n = [0u8; 4];
        delta.read_exact(&mut n).map_err(read)?;
        let n = u32::from_le_bytes(n);
        match op[0] {
            OP_COPY => {
                let (o, l) = pieces
                    .get(n as usize)
                    .copied()
                    .ok_or_else(|| bad("reference past the base"))?;
                let buf = piece
                    .get_mut(..l as usize)
                    .ok_or_else(|| bad("reference past the base"))?;
                base.read_exact_at(buf, o).at(path)?;
                hasher.update(buf);
                out.write_all(buf).map_err(written_to)?;
                written += u64::from(l);
            }
            OP_LITERAL => {
                let mut left = u64::from(n);
                while left > 0 {
                    let take = left.min(piece.len() as u64) as usize;
                    let buf = piece.get_mut(..take).ok_or_else(|| bad("truncated literal"))?;
                    delta.read_exact(buf).map_err(|e| match read(e) {
                        Error::InvalidInput(_) => bad("truncated literal"),
                        other => other,
                    })?;
                    hasher.update(buf);
                    out.write_all(buf).map_err(written_to)?;
                    left -= take as u64;
                }
                written += u64::from(n);
            }
            other => return Err(bad(&format!("unknown op {other}"))),
        }
    }
    if *hasher.finalize().as_bytes() != hash {
        return Err(bad("result does not match its hash"));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(dir: &Path, name: &str, bytes: &[u8]) -> (File, PathBuf) {
        let path = dir.join(name);
        fs::write(&path, bytes).expect("write");
        (File::open(&path).expect("open"), path)
    }

    fn rebuilt(base: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, path) = file_of(dir.path(), "base", base);
        let mut out = Vec::new();
        apply_manifest_delta(&file, &path, &mut &delta[..], &mut out)?;
        Ok(out)
    }

    #[test]
    fn delta_of_a_small_change_is_small_and_rebuilds_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base: Vec<u8> = (0..200_000u32)
            .flat_map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[..4].to_vec())
            .collect();
        let mut target = base.clone();
        target.splice(100_000..100_000, [7u8; 72]);
        if let Some(b) = target.get_mut(500_000) {
            *b ^= 1;
        }
        let (base_file, base_path) = file_of(dir.path(), "base", &base);
        let (target_file, target_path) = file_of(dir.path(), "target", &target);
        let pieces = manifest_pieces(&base_file, &base_path).expect("pieces");
        // Streamed cut points are those of the bytes in memory (what older peers computed).
        let in_memory: Vec<PieceHash> = fastcdc::v2020::FastCDC::new(&base, PIECE_MIN, PIECE_AVG, PIECE_MAX)
            .map(|c| piece_hash(&base[c.offset..c.offset + c.length]))
            .collect();
        assert!(pieces == in_memory, "streamed pieces differ from in-memory ones");
        let mut delta = Vec::new();
        let n = write_manifest_delta(&target_file, &target_path, &pieces, &mut delta).expect("delta");
        assert_eq!(n, delta.len() as u64);
        assert!(
            delta.len() < target.len() / 50,
            "delta {} of {}",
            delta.len(),
            target.len()
        );
        assert_eq!(rebuilt(&base, &delta).ok(), Some(target.clone()));
        // Against the wrong base the hash check refuses it.
        let other = vec![1u8; base.len()];
        assert!(rebuilt(&other, &delta).is_err());
        assert!(rebuilt(&base, &delta[..delta.len() - 1]).is_err());
        assert!(rebuilt(&base, &delta[..20]).is_err());
    }

    #[test]
    fn a_manifest_past_the_limit_is_refused_and_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m");
        assert_eq!(receive(&mut &[7u8; 10][..], &path, 10, "img").ok(), Some(10));
        fs::remove_file(&path).expect("remove");
        match receive(&mut &[7u8; 11][..], &path, 10, "img") {
            Err(Error::TooLarge { limit: 10, .. }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(!path.exists(), "a refused manifest was kept");
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
