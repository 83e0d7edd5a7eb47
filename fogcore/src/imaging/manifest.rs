//! Image manifests: the disk layout, and per region (each partition, and the bytes outside them)
//! its filesystem, used extents and ordered chunk list.
//!
//! A manifest is one file, written as a stream so its size is bounded only by the disk:
//!
//! ```text
//! per region: chunk table (id 32 bytes, length u32 LE) then extent table (offset u64, len u64 LE)
//! header     JSON (layout, regions with the offsets and counts of their tables)
//! trailer    header length u64 LE | BLAKE3 of everything before | magic "FOGIMG01"
//! ```
//!
//! Opening reads only the trailer and header, so listing a store of thousands of images is
//! cheap; a truncated file has no magic at its end and is refused. [`Manifest::check`] hashes the
//! whole file before a deploy trusts its tables.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chunk::ChunkId;
use super::extent::Extent;
use super::fs::Filesystem;
use super::partition::Layout;
use crate::error::IoContext;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"FOGIMG01";
const TRAILER_LEN: u64 = 8 + 32 + 8;
const CHUNK_REF_LEN: u64 = 36;
const EXTENT_LEN: u64 = 16;
/// Format version written in the header.
pub const FORMAT: u32 = 1;

/// Where a table lives in the manifest file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// Byte offset in the manifest file.
    pub offset: u64,
    /// Number of entries.
    pub count: u64,
}

/// One region of the disk as captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Partition number, or `None` for the bytes outside every partition.
    pub partition: Option<u32>,
    /// First byte of the region on the source disk.
    pub offset: u64,
    /// Length of the region.
    pub len: u64,
    /// What it holds.
    pub filesystem: Filesystem,
    /// Bytes of data stored for it (the sum of its extents).
    pub used_bytes: u64,
    /// Its used extents, relative to `offset`.
    pub extents: Section,
    /// Its chunks, in stream order.
    pub chunks: Section,
}

/// Everything about an image except its tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Manifest format version.
    pub format: u32,
    /// Image name.
    pub name: String,
    /// Seconds since the Unix epoch when the capture finished.
    pub created: u64,
    /// What was captured (path of the disk).
    pub source: String,
    /// The source disk's partition table.
    pub layout: Layout,
    /// The bytes outside partitions first, then each partition in disk order.
    pub regions: Vec<Region>,
    /// Number of chunk references (with repeats).
    pub chunk_count: u64,
    /// Bytes of used data in the image (the sum over regions).
    pub data_bytes: u64,
}

/// A chunk as an image uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// Chunk id.
    pub id: ChunkId,
    /// Plain length in bytes.
    pub len: u32,
}

/// Streams a manifest to a file. Call [`ManifestWriter::finish`] to write header and trailer.
pub struct ManifestWriter {
    out: BufWriter<File>,
    path: PathBuf,
    hasher: blake3::Hasher,
    pos: u64,
    section_start: u64,
}

impl ManifestWriter {
    /// Creates `path` (which must not exist).
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::options().write(true).create_new(true).open(path).at(path)?;
        Ok(ManifestWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            path: path.into(),
            hasher: blake3::Hasher::new(),
            pos: 0,
            section_start: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.pos += bytes.len() as u64;
        self.out.write_all(bytes).at(&self.path)
    }

    /// Appends a chunk reference to the current region's chunk table.
    pub fn push_chunk(&mut self, chunk: &ChunkRef) -> Result<()> {
        let mut entry = [0u8; CHUNK_REF_LEN as usize];
        entry[..32].copy_from_slice(&chunk.id.0);
        entry[32..].copy_from_slice(&chunk.len.to_le_bytes());
        self.write(&entry)
    }

    /// Ends the current chunk table, returning where it is.
    pub fn end_chunks(&mut self) -> Section {
        let section = Section {
            offset: self.section_start,
            count: (self.pos - self.section_start) / CHUNK_REF_LEN,
        };
        self.section_start = self.pos;
        section
    }

    /// Writes a region's extent table.
    pub fn write_extents(&mut self, extents: &[Extent]) -> Result<Section> {
        let offset = self.pos;
        for e in extents {
            let mut entry = [0u8; EXTENT_LEN as usize];
            entry[..8].copy_from_slice(&e.offset.to_le_bytes());
            entry[8..].copy_from_slice(&e.len.to_le_bytes());
            self.write(&entry)?;
        }
        self.section_start = self.pos;
        Ok(Section {
            offset,
            count: extents.len() as u64,
        })
    }

    /// Writes the header and trailer and makes the file durable.
    pub fn finish(mut self, header: &Header) -> Result<()> {
        let json = serde_json::to_vec(header).map_err(|e| Error::InvalidInput(format!("manifest header: {e}")))?;
        self.write(&json)?;
        let hash = *self.hasher.finalize().as_bytes();
        self.out.write_all(&(json.len() as u64).to_le_bytes()).at(&self.path)?;
        self.out.write_all(&hash).at(&self.path)?;
        self.out.write_all(MAGIC).at(&self.path)?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().at(&self.path)
    }
}

/// An opened manifest: header in memory, tables read on demand.
#[derive(Debug)]
pub struct Manifest {
    file: File,
    path: PathBuf,
    body_len: u64,
    /// The header.
    pub header: Header,
}

impl Manifest {
    /// Opens the manifest of image `name` at `path`, checking its trailer and header.
    pub fn open(path: &Path, name: &str) -> Result<Manifest> {
        let file = File::open(path).at(path)?;
        let damaged = |reason: String| Error::BadManifest {
            image: name.into(),
            path: path.into(),
            reason,
        };
        let len = file.metadata().at(path)?.len();
        if len < TRAILER_LEN {
            return Err(damaged(format!("{len} bytes is too short (truncated?)")));
        }
        let mut trailer = [0u8; TRAILER_LEN as usize];
        file.read_exact_at(&mut trailer, len - TRAILER_LEN).at(path)?;
        if &trailer[40..] != MAGIC {
            return Err(damaged("no end marker (truncated or not a fog image)".into()));
        }
        let mut header_len = [0u8; 8];
        header_len.copy_from_slice(&trailer[..8]);
        let header_len = u64::from_le_bytes(header_len);
        let body_len = len - TRAILER_LEN;
        if header_len > body_len || header_len > 1 << 30 {
            return Err(damaged(format!("header length {header_len} does not fit the file")));
        }
        let mut json = vec![0u8; header_len as usize];
        file.read_exact_at(&mut json, body_len - header_len).at(path)?;
        let header: Header = serde_json::from_slice(&json).map_err(|e| damaged(format!("header: {e}")))?;
        if header.format != FORMAT {
            return Err(damaged(format!(
                "format {} is not supported (this fog reads {FORMAT})",
                header.format
            )));
        }
        let tables_end = body_len - header_len;
        for r in &header.regions {
            let chunk_end = r.chunks.offset + r.chunks.count * CHUNK_REF_LEN;
            let extent_end = r.extents.offset + r.extents.count * EXTENT_LEN;
            if chunk_end > tables_end || extent_end > tables_end {
                return Err(damaged("a table lies outside the file".into()));
            }
        }
        Ok(Manifest {
            file,
            path: path.into(),
            body_len,
            header,
        })
    }

    /// Hashes the whole file against its trailer.
    pub fn check(&self) -> Result<()> {
        let mut reader = BufReader::with_capacity(1 << 20, ReadAt::new(&self.file, 0));
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut (&mut reader).take(self.body_len), &mut hasher).at(&self.path)?;
        let mut stored = [0u8; 32];
        self.file.read_exact_at(&mut stored, self.body_len + 8).at(&self.path)?;
        if *hasher.finalize().as_bytes() != stored {
            return Err(Error::BadManifest {
                image: self.header.name.clone(),
                path: self.path.clone(),
                reason: "content does not match its checksum".into(),
            });
        }
        Ok(())
    }

    /// The extents of a region.
    pub fn extents(&self, region: &Region) -> Result<Vec<Extent>> {
        let mut raw = vec![0u8; (region.extents.count * EXTENT_LEN) as usize];
        self.file
            .read_exact_at(&mut raw, region.extents.offset)
            .at(&self.path)?;
        Ok(raw
            .chunks_exact(EXTENT_LEN as usize)
            .map(|e| {
                let (a, b) = e.split_at(8);
                Extent::new(le64(a), le64(b))
            })
            .collect())
    }

    /// Streams the chunk references of a region, in order.
    pub fn chunks(&self, region: &Region) -> impl Iterator<Item = Result<ChunkRef>> + '_ {
        // Each iterator reads at its own position: the deploy and its prefetcher walk the same
        // manifest at once, and a shared file offset made them read each other's places.
        let mut reader = BufReader::with_capacity(1 << 20, ReadAt::new(&self.file, region.chunks.offset));
        let mut remaining = region.chunks.count;
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || remaining == 0 {
                return None;
            }
            remaining -= 1;
            let mut entry = [0u8; CHUNK_REF_LEN as usize];
            match reader.read_exact(&mut entry).at(&self.path) {
                Ok(()) => {
                    let mut id = [0u8; 32];
                    id.copy_from_slice(&entry[..32]);
                    let len = u32::from_le_bytes([entry[32], entry[33], entry[34], entry[35]]);
                    Some(Ok(ChunkRef { id: ChunkId(id), len }))
                }
                Err(e) => {
                    failed = true;
                    Some(Err(e))
                }
            }
        })
    }
}

/// A reader of a file from a position of its own (`pread`), not the file's shared offset, so that
/// several readers of one open file do not move each other.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> ReadAt<'a> {
    fn new(file: &'a File, pos: u64) -> Self {
        ReadAt { file, pos }
    }
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}
