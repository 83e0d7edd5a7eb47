//! Pack files: frames of new chunks appended one after another, so a capture creates a few large
//! files instead of one per chunk (file creation costs far more than the bytes on many
//! filesystems).
//!
//! ```text
//! frame: chunk count u32 LE | plain length u32 LE | stored length u32 LE
//!        | per chunk: id (32 bytes) | plain length u32 LE      (in order: offsets add up)
//!        | stored bytes (see `chunk::encode`: tag byte and payload)
//! ```
//! Frames are self-describing, so a pack can be checked, re-indexed or rewritten by gc on its
//! own. A pack is reachable only through index runs written after it was made durable; a pack no
//! run names (left by a killed capture) is removed by gc.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::index::Loc;
use crate::error::IoContext;
use crate::imaging::chunk::{ChunkId, FRAME_MAX};
use crate::{Error, Result};

/// Bytes of a frame's fixed header.
pub const FRAME_HEADER: u64 = 12;
/// Bytes per chunk in a frame's table.
pub const TABLE_ENTRY: u64 = 36;
/// A writer starts a new pack past this size.
pub const PACK_TARGET_SIZE: u64 = 1 << 30;

/// Bytes a frame of `chunks` chunks and `stored` stored bytes takes in a pack.
pub fn frame_size(chunks: usize, stored: usize) -> u64 {
    FRAME_HEADER + TABLE_ENTRY * chunks as u64 + stored as u64
}

/// Path of pack `number` in `dir`.
pub fn pack_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:08x}.pack"))
}

/// The pack number of a file name like `0001a2b3.pack`.
pub fn parse_pack_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".pack")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Appends entries to one new pack file.
pub struct PackWriter {
    out: BufWriter<File>,
    path: PathBuf,
    number: u32,
    len: u64,
}

impl PackWriter {
    /// Creates a pack with a number no other pack in `dir` has.
    pub fn create(dir: &Path) -> Result<PackWriter> {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        for _ in 0..1000 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let number = (seed >> 32) as u32;
            let path = pack_path(dir, number);
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(PackWriter {
                        out: BufWriter::with_capacity(1 << 20, file),
                        path,
                        number,
                        len: 0,
                    });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        Err(Error::InvalidInput(format!(
            "cannot find a free pack name in {}",
            dir.display()
        )))
    }

    /// The pack's number.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one frame: `chunks` (id, plain length, in the order their bytes were laid end to
    /// end) and the stored form of those bytes. Returns where each chunk is.
    pub fn append_frame(&mut self, chunks: &[(ChunkId, u32)], stored: &[u8]) -> Result<Vec<Loc>> {
        let plain: u64 = chunks.iter().map(|c| u64::from(c.1)).sum();
        let too_large =
            || Error::InvalidInput(format!("frame of {plain} bytes ({} stored) is too large", stored.len()));
        if plain > FRAME_MAX as u64 {
            return Err(too_large());
        }
        let stored_len = u32::try_from(stored.len()).map_err(|_| too_large())?;
        let count = u32::try_from(chunks.len()).map_err(|_| too_large())?;
        let mut head = Vec::with_capacity((FRAME_HEADER + TABLE_ENTRY * u64::from(count)) as usize);
        head.extend_from_slice(&count.to_le_bytes());
        head.extend_from_slice(&(plain as u32).to_le_bytes());
        head.extend_from_slice(&stored_len.to_le_bytes());
        for (id, len) in chunks {
            head.extend_from_slice(&id.0);
            head.extend_from_slice(&len.to_le_bytes());
        }
        self.out.write_all(&head).at(&self.path)?;
        self.out.write_all(stored).at(&self.path)?;
        let offset = self.len + head.len() as u64;
        self.len = offset + u64::from(stored_len);
        let mut start = 0u32;
        Ok(chunks
            .iter()
            .map(|&(_, len)| {
                let loc = Loc {
                    pack: self.number,
                    offset,
                    len: stored_len,
                    start,
                    chunk_len: len,
                };
                start += len;
                loc
            })
            .collect())
    }

    /// Flushes and fsyncs the pack; returns its path.
    pub fn finish(self) -> Result<PathBuf> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().at(&self.path)?;
        Ok(self.path)
    }
}

/// Removes a pack file, ignoring one that is already gone.
pub fn remove_pack(dir: &Path, number: u32) -> Result<()> {
    let path = pack_path(dir, number);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// One frame read back from a pack.
#[derive(Debug)]
pub struct Frame {
    /// Offset of its stored bytes in the pack (what index entries name).
    pub offset: u64,
    /// Plain length.
    pub plain_len: u32,
    /// Chunks: id, offset in the plain bytes, length.
    pub chunks: Vec<(ChunkId, u32, u32)>,
    /// Stored bytes (tag and payload).
    pub stored: Vec<u8>,
}

/// Reads a pack's frames in order (sequential reads, for gc and checks).
pub struct FrameReader {
    input: BufReader<File>,
    path: PathBuf,
    pos: u64,
    size: u64,
}

impl FrameReader {
    /// Opens pack `number` in `dir`.
    pub fn open(dir: &Path, number: u32) -> Result<FrameReader> {
        let path = pack_path(dir, number);
        let file = File::open(&path).at(&path)?;
        let size = file.metadata().at(&path)?.len();
        Ok(FrameReader {
            input: BufReader::with_capacity(1 << 20, file),
            path,
            pos: 0,
            size,
        })
    }

    /// The next frame, or `None` at the end of the pack. A damaged frame header is an error naming
    /// the pack and offset.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.pos >= self.size {
            return Ok(None);
        }
        let damaged = |pos: u64, reason: &str| {
            Error::InvalidInput(format!(
                "pack {} is damaged at byte {pos}: {reason}",
                self.path.display()
            ))
        };
        let at = self.pos;
        let mut head = [0u8; FRAME_HEADER as usize];
        self.input.read_exact(&mut head).at(&self.path)?;
        let word = |i: usize| {
            head.get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes)
        };
        let (count, plain_len, stored_len) = (word(0), word(4), word(8));
        let table_len = TABLE_ENTRY * u64::from(count);
        if plain_len as usize > FRAME_MAX
            || u64::from(count) > u64::from(plain_len).max(1)
            || at + FRAME_HEADER + table_len + u64::from(stored_len) > self.size
        {
            return Err(damaged(at, "frame header out of bounds"));
        }
        let mut table = vec![0u8; table_len as usize];
        self.input.read_exact(&mut table).at(&self.path)?;
        let mut chunks = Vec::with_capacity(count as usize);
        let mut start = 0u32;
        for entry in table.chunks_exact(TABLE_ENTRY as usize) {
            let (id, len) = entry.split_at(32);
            let mut raw = [0u8; 32];
            raw.copy_from_slice(id);
            let len = len.try_into().map_or(0, u32::from_le_bytes);
            chunks.push((ChunkId(raw), start, len));
            start = start
                .checked_add(len)
                .filter(|&s| s <= plain_len)
                .ok_or_else(|| damaged(at, "chunk table longer than the frame"))?;
        }
        if start != plain_len {
            return Err(damaged(at, "chunk table does not add up to the frame"));
        }
        let mut stored = vec![0u8; stored_len as usize];
        self.input.read_exact(&mut stored).at(&self.path)?;
        let offset = at + FRAME_HEADER + table_len;
        self.pos = offset + u64::from(stored_len);
        Ok(Some(Frame {
            offset,
            plain_len,
            chunks,
            stored,
        }))
    }
}
