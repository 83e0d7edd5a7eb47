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

use super::chunk::{self, ChunkId};
use super::cursor::{self, ByteCursor, FieldError, FieldResult, Span};
use super::extent::Extent;
use super::fs::Filesystem;
use super::partition::Layout;
use crate::error::IoContext;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"FOGIMG01";
const TRAILER_LEN: u64 = 8 + 32 + 8;
const CHUNK_REF_LEN: u64 = 36;
const EXTENT_LEN: u64 = 16;
/// The largest header a manifest may have (real ones are a few KiB: a region is about 300 bytes).
const MAX_HEADER_LEN: u64 = 1 << 30;
/// Format version written in the header.
pub const FORMAT: u32 = 1;
/// The largest manifest file a store takes (64 GiB): 36 bytes per chunk reference, so a 2 TB
/// disk full of used data fits even at 4 KiB chunks (about 18 GiB; at the usual 8 KiB, about
/// 9 GiB). Manifests travel as files and streams, never whole in memory: this bounds the disk a
/// received one may take, not memory.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 30;

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
    /// The smallest size (bytes) the partition's filesystem can take, once worked out: the
    /// length of its shrunk copy, or `len` when it cannot shrink. `None` for regions that were
    /// never looked at (an image from before, or a filesystem fog does not resize).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_len: Option<u64>,
    /// True for the shrunk copy of partition `partition`'s filesystem (see
    /// [`crate::imaging::shrink::add_shrunk_copies`]): deploy writes it instead of the full
    /// region when the target's partition is smaller than the source's. Not counted in
    /// [`Header::data_bytes`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shrunk: bool,
}

impl Region {
    /// The region as captured (not a shrunk copy).
    pub fn is_source(&self) -> bool {
        !self.shrunk
    }
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
    /// The bytes outside partitions first, then each partition in disk order, then the shrunk
    /// copies of partitions (see [`Region::shrunk`]).
    pub regions: Vec<Region>,
    /// Number of chunk references (with repeats).
    pub chunk_count: u64,
    /// Bytes of used data in the image (the sum over regions, shrunk copies left out).
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
    /// The image name it was opened as, for errors.
    image: String,
    body_len: u64,
    /// Where the tables end and the header starts.
    tables_end: u64,
    /// The header.
    pub header: Header,
}

impl Manifest {
    /// Opens the manifest of image `name` at `path`, checking its trailer and header: every
    /// table must lie inside the file and every region inside the disk, before anything is
    /// allocated for them.
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
        let body_len = len - TRAILER_LEN;
        let mut trailer = [0u8; TRAILER_LEN as usize];
        file.read_exact_at(&mut trailer, body_len).at(path)?;
        let mut fields = ByteCursor::new(&trailer);
        let parsed = (|| {
            let header_len = fields.u64("header length")?;
            fields.skip("checksum", 32)?;
            let magic = fields.array::<8>("end marker")?;
            Ok((header_len, magic))
        })();
        let (header_len, magic) = parsed.map_err(|e: FieldError| damaged(e.to_string()))?;
        if &magic != MAGIC {
            return Err(damaged("no end marker (truncated or not a fog image)".into()));
        }
        if header_len > MAX_HEADER_LEN {
            return Err(damaged(format!(
                "header length: {header_len} bytes is more than a header may have ({MAX_HEADER_LEN})"
            )));
        }
        let tables_end = body_len.checked_sub(header_len).ok_or_else(|| {
            damaged(format!(
                "header length: {header_len} bytes do not fit in the {body_len} bytes before the trailer"
            ))
        })?;
        let mut json = Span::new("header", tables_end, header_len, body_len)
            .and_then(|span| span.buffer("header"))
            .map_err(|e| damaged(e.to_string()))?;
        file.read_exact_at(&mut json, tables_end).at(path)?;
        let header: Header = serde_json::from_slice(&json).map_err(|e| damaged(format!("header: {e}")))?;
        if header.format != FORMAT {
            return Err(damaged(format!(
                "format {} is not supported (this fog reads {FORMAT})",
                header.format
            )));
        }
        check_header(&header, tables_end).map_err(|e| damaged(e.to_string()))?;
        Ok(Manifest {
            file,
            path: path.into(),
            image: name.into(),
            body_len,
            tables_end,
            header,
        })
    }

    /// Bytes of the whole file (tables, header and trailer).
    pub fn file_len(&self) -> u64 {
        self.body_len + TRAILER_LEN
    }

    /// The open file and its path (for errors): readers of the bytes use positioned reads
    /// ([`ReadAt`]), so they see this file even if the image was replaced since it was opened.
    pub(crate) fn file(&self) -> (&File, &Path) {
        (&self.file, &self.path)
    }

    /// Copies the manifest file, as it is, to `out`; returns its length.
    pub fn copy_to(&self, out: &mut dyn Write) -> Result<u64> {
        let mut reader = BufReader::with_capacity(1 << 20, ReadAt::new(&self.file, 0)).take(self.file_len());
        let n = std::io::copy(&mut reader, out).at(&self.path)?;
        if n != self.file_len() {
            return Err(Error::BadManifest {
                image: self.image.clone(),
                path: self.path.clone(),
                reason: format!("{n} bytes read of {} (truncated while open?)", self.file_len()),
            });
        }
        Ok(n)
    }

    fn damaged(&self, e: FieldError) -> Error {
        Error::BadManifest {
            image: self.image.clone(),
            path: self.path.clone(),
            reason: e.to_string(),
        }
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
                image: self.image.clone(),
                path: self.path.clone(),
                reason: "content does not match its checksum".into(),
            });
        }
        Ok(())
    }

    /// The extents of a region, checked to be non-empty, in order, disjoint and inside the region.
    pub fn extents(&self, region: &Region) -> Result<Vec<Extent>> {
        let field = format!("{} extent table", region_label(region));
        let span = Span::table(
            &field,
            region.extents.offset,
            region.extents.count,
            EXTENT_LEN,
            self.tables_end,
        )
        .map_err(|e| self.damaged(e))?;
        let mut raw = span.buffer(&field).map_err(|e| self.damaged(e))?;
        self.file.read_exact_at(&mut raw, span.offset).at(&self.path)?;
        let mut extents = Vec::with_capacity(raw.len() / EXTENT_LEN as usize);
        let mut entries = ByteCursor::new(&raw);
        let mut prev_end = 0;
        for i in 0..region.extents.count {
            let extent = (|| {
                let offset = entries.u64(&field)?;
                let len = entries.u64(&field)?;
                let end = cursor::add(&format!("{field} entry {i}"), offset, len)?;
                if len == 0 {
                    // Capture never writes one; a reader of the table would take it for a gap.
                    return Err(FieldError::new(
                        &format!("{field} entry {i}"),
                        format!("empty extent at {offset}"),
                    ));
                }
                if offset < prev_end || end > region.len {
                    return Err(FieldError::new(
                        &format!("{field} entry {i}"),
                        format!(
                            "{len} bytes at {offset} overlap the extent before or end past the region's {} bytes",
                            region.len
                        ),
                    ));
                }
                prev_end = end;
                Ok(Extent::new(offset, len))
            })()
            .map_err(|e| self.damaged(e))?;
            extents.push(extent);
        }
        Ok(extents)
    }

    /// Streams the chunk references of a region, in order. A table outside the file, or a chunk
    /// longer than any frame, ends the stream with an error.
    pub fn chunks(&self, region: &Region) -> impl Iterator<Item = Result<ChunkRef>> + '_ {
        let field = format!("{} chunk table", region_label(region));
        let (offset, mut remaining, mut failure) = match Span::table(
            &field,
            region.chunks.offset,
            region.chunks.count,
            CHUNK_REF_LEN,
            self.tables_end,
        ) {
            Ok(span) => (span.offset, region.chunks.count, None),
            Err(e) => (0, 0, Some(self.damaged(e))),
        };
        // Each iterator reads at its own position: the deploy and its prefetcher walk the same
        // manifest at once, and a shared file offset made them read each other's places.
        let mut reader = BufReader::with_capacity(1 << 20, ReadAt::new(&self.file, offset));
        let mut index = 0u64;
        let mut failed = false;
        std::iter::from_fn(move || {
            if let Some(e) = failure.take() {
                failed = true;
                return Some(Err(e));
            }
            if failed || remaining == 0 {
                return None;
            }
            remaining -= 1;
            index += 1;
            let mut entry = [0u8; CHUNK_REF_LEN as usize];
            let parsed = reader.read_exact(&mut entry).at(&self.path).and_then(|()| {
                let mut fields = ByteCursor::new(&entry);
                let chunk = (|| {
                    let id = fields.array::<32>(&field)?;
                    let len = fields.u32(&field)?;
                    if len as usize > chunk::FRAME_MAX {
                        return Err(FieldError::new(
                            &format!("{field} entry {}", index - 1),
                            format!("chunk of {len} bytes is larger than a frame ({})", chunk::FRAME_MAX),
                        ));
                    }
                    Ok(ChunkRef { id: ChunkId(id), len })
                })();
                chunk.map_err(|e| self.damaged(e))
            });
            if parsed.is_err() {
                failed = true;
            }
            Some(parsed)
        })
    }
}

/// How errors name a region: by partition, or as the bytes outside them.
fn region_label(region: &Region) -> String {
    match region.partition {
        Some(n) => format!("partition {n}"),
        None => format!("unpartitioned region at byte {}", region.offset),
    }
}

/// Checks what a header says against the disk it describes and the file it is in, so later
/// arithmetic on it cannot overflow and no table is read from outside `tables_end`.
fn check_header(header: &Header, tables_end: u64) -> FieldResult<()> {
    header.layout.check()?;
    let mut chunk_count = 0u64;
    let mut data_bytes = 0u64;
    for (i, r) in header.regions.iter().enumerate() {
        let label = format!("region {i} ({})", region_label(r));
        Span::new(
            &format!("{label} offset and length"),
            r.offset,
            r.len,
            header.layout.disk_size,
        )?;
        Span::table(
            &format!("{label} chunk table"),
            r.chunks.offset,
            r.chunks.count,
            CHUNK_REF_LEN,
            tables_end,
        )?;
        Span::table(
            &format!("{label} extent table"),
            r.extents.offset,
            r.extents.count,
            EXTENT_LEN,
            tables_end,
        )?;
        if r.used_bytes > r.len {
            return Err(FieldError::new(
                &format!("{label} used_bytes"),
                format!("{} bytes used of a {}-byte region", r.used_bytes, r.len),
            ));
        }
        chunk_count = cursor::add("chunk_count", chunk_count, r.chunks.count)?;
        if r.shrunk {
            let source = header
                .regions
                .iter()
                .find(|s| s.is_source() && s.partition.is_some() && s.partition == r.partition);
            if source.is_none_or(|s| r.len > s.len) {
                return Err(FieldError::new(
                    &format!("{label} shrunk"),
                    "a shrunk copy must follow a partition of the image and not be larger",
                ));
            }
        } else {
            data_bytes = cursor::add("data_bytes", data_bytes, r.used_bytes)?;
        }
    }
    if chunk_count != header.chunk_count {
        return Err(FieldError::new(
            "chunk_count",
            format!(
                "the header says {}, the regions' chunk tables hold {chunk_count}",
                header.chunk_count
            ),
        ));
    }
    if data_bytes != header.data_bytes {
        return Err(FieldError::new(
            "data_bytes",
            format!("the header says {}, the regions hold {data_bytes}", header.data_bytes),
        ));
    }
    Ok(())
}

/// A reader of a file from a position of its own (`pread`), not the file's shared offset, so that
/// several readers of one open file do not move each other.
pub(crate) struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> ReadAt<'a> {
    /// Reads `file` from byte `pos` on.
    pub(crate) fn new(file: &'a File, pos: u64) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::partition::{Partition, TableKind};
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    /// Writes a manifest of a 1 MiB MBR disk with one partition: the unpartitioned region
    /// (2 chunks, 1 extent) and partition 1 (3 chunks, 2 extents). `tamper` edits the header
    /// before it is written.
    fn write_manifest(path: &Path, tamper: impl FnOnce(&mut Header)) -> Header {
        let mut w = ManifestWriter::create(path).expect("create");
        let chunk = |n: u8, len| ChunkRef {
            id: ChunkId([n; 32]),
            len,
        };
        let mut regions = Vec::new();
        for (partition, offset, len, chunks, extents) in [
            (
                None,
                0,
                1 << 20,
                vec![chunk(1, 512), chunk(2, 3584)],
                vec![Extent::new(0, 4096)],
            ),
            (
                Some(1),
                4096,
                (1 << 20) - 4096,
                vec![chunk(3, 8192), chunk(4, 4096), chunk(3, 8192)],
                vec![Extent::new(0, 16384), Extent::new(65536, 4096)],
            ),
        ] {
            for c in &chunks {
                w.push_chunk(c).expect("push");
            }
            let chunks = w.end_chunks();
            let extents_section = w.write_extents(&extents).expect("extents");
            regions.push(Region {
                partition,
                offset,
                len,
                filesystem: Filesystem::Raw,
                used_bytes: extents.iter().map(|e| e.len).sum(),
                extents: extents_section,
                chunks,
                min_len: None,
                shrunk: false,
            });
        }
        let mut header = Header {
            format: FORMAT,
            name: "img".into(),
            created: 0,
            source: "test".into(),
            layout: Layout {
                table: TableKind::Mbr,
                sector_size: 512,
                disk_size: 1 << 20,
                partitions: vec![Partition {
                    number: 1,
                    offset: 4096,
                    len: (1 << 20) - 4096,
                    type_id: "0x83".into(),
                    name: String::new(),
                }],
                backup_gpt_len: 0,
                extended: false,
            },
            chunk_count: regions.iter().map(|r| r.chunks.count).sum(),
            data_bytes: regions.iter().map(|r| r.used_bytes).sum(),
            regions,
        };
        tamper(&mut header);
        w.finish(&header).expect("finish");
        header
    }

    fn reason(err: Error) -> String {
        match err {
            Error::BadManifest { image, reason, .. } => {
                assert_eq!(image, "img");
                reason
            }
            other => panic!("expected BadManifest, got {other:?}"),
        }
    }

    /// Per region, its extents and its chunks.
    type Tables = (Vec<Vec<Extent>>, Vec<Vec<ChunkRef>>);

    /// Opens and walks every table, as a deploy does.
    fn walk(m: &Manifest) -> Result<Tables> {
        let mut extents = Vec::new();
        let mut chunks = Vec::new();
        for r in &m.header.regions {
            extents.push(m.extents(r)?);
            chunks.push(m.chunks(r).collect::<Result<Vec<_>>>()?);
        }
        Ok((extents, chunks))
    }

    #[test]
    fn written_manifest_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m");
        let header = write_manifest(&path, |_| {});
        let m = Manifest::open(&path, "img").expect("open");
        assert_eq!(m.header, header);
        m.check().expect("checksum");
        let (extents, chunks) = walk(&m).expect("walk");
        assert_eq!(extents[1], vec![Extent::new(0, 16384), Extent::new(65536, 4096)]);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(chunks[1][2].id, ChunkId([3; 32]));
    }

    #[test]
    fn rejects_empty_truncated_and_foreign_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m");
        write_manifest(&path, |_| {});
        let good = std::fs::read(&path).expect("read");
        for (bytes, want) in [
            (Vec::new(), "too short"),
            (good[..good.len() - 1].to_vec(), "no end marker"),
            (
                b"not a manifest at all, but long enough for a trailer".to_vec(),
                "no end marker",
            ),
        ] {
            std::fs::write(&path, &bytes).expect("write");
            let r = reason(Manifest::open(&path, "img").expect_err("refused"));
            assert!(r.contains(want), "{r}");
        }
    }

    #[test]
    fn rejects_header_length_past_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m");
        write_manifest(&path, |_| {});
        let good = std::fs::read(&path).expect("read");
        let at = good.len() - TRAILER_LEN as usize;
        for header_len in [u64::MAX, 1 << 40, good.len() as u64] {
            let mut bytes = good.clone();
            bytes[at..at + 8].copy_from_slice(&header_len.to_le_bytes());
            std::fs::write(&path, &bytes).expect("write");
            let r = reason(Manifest::open(&path, "img").expect_err("refused"));
            assert!(r.starts_with("header length: "), "{header_len}: {r}");
        }
    }

    #[test]
    fn rejects_tables_outside_the_file_naming_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        type Tamper = fn(&mut Header);
        let cases: [(Tamper, &str); 8] = [
            (
                |h| h.regions[1].chunks.count = u64::MAX / 4,
                "region 1 (partition 1) chunk table",
            ),
            (
                |h| h.regions[1].chunks.offset = u64::MAX - 10,
                "region 1 (partition 1) chunk table",
            ),
            (
                |h| h.regions[0].extents.count = 1 << 59,
                "region 0 (unpartitioned region at byte 0) extent table",
            ),
            (|h| h.regions[0].extents.offset = 1_000_000, "extent table"),
            (
                |h| h.regions[1].offset = u64::MAX,
                "region 1 (partition 1) offset and length",
            ),
            (
                |h| h.regions[1].len = 1 << 21,
                "region 1 (partition 1) offset and length",
            ),
            (|h| h.chunk_count = u64::MAX, "chunk_count"),
            (|h| h.layout.partitions[0].len = u64::MAX, "layout partition 1"),
        ];
        for (i, (tamper, want)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("m{i}"));
            write_manifest(&path, tamper);
            let r = reason(Manifest::open(&path, "img").expect_err("refused"));
            assert!(r.contains(want), "case {i}: {r}");
        }
        let path = dir.path().join("zero-sectors");
        write_manifest(&path, |h| h.layout.sector_size = 0);
        let r = reason(Manifest::open(&path, "img").expect_err("refused"));
        assert!(r.starts_with("layout sector_size"), "{r}");
    }

    #[test]
    fn rejects_extents_out_of_order_or_outside_their_region() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m");
        write_manifest(&path, |_| {});
        let m = Manifest::open(&path, "img").expect("open");
        // The extent table of partition 1 starts after 2 + 3 chunk references and 1 extent.
        let at = (5 * CHUNK_REF_LEN + EXTENT_LEN) as usize;
        let good = std::fs::read(&path).expect("read");
        // Past the end, overflowing, overlapping the next extent, and empty (found by the
        // manifest fuzz target: an empty extent was accepted).
        for (offset, len) in [(u64::MAX, 2), (0, u64::MAX), (1 << 20, 1), (65536, 1), (5, 0)] {
            let mut bytes = good.clone();
            bytes[at..at + 8].copy_from_slice(&offset.to_le_bytes());
            bytes[at + 8..at + 16].copy_from_slice(&len.to_le_bytes());
            std::fs::write(&path, &bytes).expect("write");
            let m = Manifest::open(&path, "img").expect("header unchanged");
            let r = reason(m.extents(&m.header.regions[1]).expect_err("refused"));
            assert!(r.starts_with("partition 1 extent table entry "), "{r}");
        }
        // A region from elsewhere with a table past this file is refused too, not read.
        let mut foreign = m.header.regions[0].clone();
        foreign.chunks.count = u64::MAX;
        foreign.extents.count = u64::MAX;
        assert!(m.extents(&foreign).is_err());
        let mut chunks = m.chunks(&foreign);
        assert!(matches!(chunks.next(), Some(Err(Error::BadManifest { .. }))));
        assert!(chunks.next().is_none());
    }

    #[test]
    fn rejects_chunks_longer_than_a_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m");
        write_manifest(&path, |_| {});
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        let m = Manifest::open(&path, "img").expect("open");
        let got: Vec<_> = m.chunks(&m.header.regions[0]).collect();
        assert_eq!(got.len(), 1, "the stream ends at the bad entry");
        let r = reason(got.into_iter().next().expect("one").expect_err("refused"));
        assert!(r.contains("entry 0") && r.contains("larger than a frame"), "{r}");
    }

    /// Opens `bytes` as a manifest and walks it: no panic, and either it all reads or the error
    /// is `BadManifest`. What reads is consistent: extents in order inside their regions.
    fn open_and_walk(path: &Path, bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
        std::fs::write(path, bytes).expect("write");
        let walked = Manifest::open(path, "img").and_then(|m| {
            let tables = walk(&m)?;
            m.check()?;
            Ok((m, tables))
        });
        match walked {
            Ok((m, (extents, _))) => {
                for (r, ext) in m.header.regions.iter().zip(&extents) {
                    prop_assert!(
                        r.offset
                            .checked_add(r.len)
                            .is_some_and(|e| e <= m.header.layout.disk_size)
                    );
                    prop_assert!(ext.windows(2).all(|w| w[0].end() <= w[1].offset));
                    prop_assert!(ext.iter().all(|e| e.len > 0 && e.end() <= r.len));
                }
            }
            Err(Error::BadManifest { .. }) => {}
            Err(other) => prop_assert!(false, "expected BadManifest, got {other:?}"),
        }
        Ok(())
    }

    /// A valid manifest's bytes, written once per test process.
    fn good_bytes() -> &'static [u8] {
        static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        GOOD.get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("m");
            write_manifest(&path, |_| {});
            std::fs::read(&path).expect("read")
        })
    }

    /// Sets numeric header field `which` (of those a table or region position depends on).
    fn set_field(h: &mut Header, which: usize, v: u64) {
        let r = which % 2;
        match which / 2 {
            0 => h.regions[r].chunks.offset = v,
            1 => h.regions[r].chunks.count = v,
            2 => h.regions[r].extents.offset = v,
            3 => h.regions[r].extents.count = v,
            4 => h.regions[r].offset = v,
            5 => h.regions[r].len = v,
            6 => h.regions[r].used_bytes = v,
            7 => h.chunk_count = v,
            8 => h.data_bytes = v,
            9 => h.layout.disk_size = v,
            10 => h.layout.partitions[0].offset = v,
            11 => h.layout.partitions[0].len = v,
            12 => h.layout.backup_gpt_len = v,
            _ => h.layout.sector_size = v as u32,
        }
    }

    /// Values that find overflows: the edges, and plain random ones.
    fn edgy_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX / 16),
            Just(u64::MAX / 36 + 1),
            Just(1 << 63),
            0u64..4096,
            any::<u64>(),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let dir = tempfile::tempdir().expect("tempdir");
            open_and_walk(&dir.path().join("m"), &bytes)?;
            // The same bytes with a trailer that passes the first checks.
            let mut framed = bytes.clone();
            framed.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            framed.extend_from_slice(&[0u8; 32]);
            framed.extend_from_slice(MAGIC);
            open_and_walk(&dir.path().join("m"), &framed)?;
        }

        #[test]
        fn mutated_manifests_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = good_bytes().to_vec();
            for (at, v) in flips {
                let i = at.index(bytes.len());
                bytes[i] = v;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            let dir = tempfile::tempdir().expect("tempdir");
            open_and_walk(&dir.path().join("m"), &bytes)?;
        }

        #[test]
        fn overwritten_table_and_trailer_u64s_never_panic(
            at in any::<prop::sample::Index>(),
            v in edgy_u64(),
        ) {
            // Any 8 bytes of the tables, or the trailer's header length.
            let good = good_bytes();
            let tables = good.len() - TRAILER_LEN as usize;
            let mut bytes = good.to_vec();
            let i = at.index(tables / 8 + 1);
            let pos = if i == tables / 8 { tables } else { i * 8 };
            bytes[pos..pos + 8].copy_from_slice(&v.to_le_bytes());
            let dir = tempfile::tempdir().expect("tempdir");
            open_and_walk(&dir.path().join("m"), &bytes)?;
        }

        #[test]
        fn overwritten_header_fields_never_panic(
            fields in proptest::collection::vec((0usize..28, edgy_u64()), 1..4),
        ) {
            // The header's numbers set to anything, written with a valid checksum.
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("m");
            write_manifest(&path, |h| {
                for &(which, v) in &fields {
                    set_field(h, which, v);
                }
            });
            let bytes = std::fs::read(&path).expect("read");
            open_and_walk(&path, &bytes)?;
        }
    }
}
