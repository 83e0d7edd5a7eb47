//! Pack files: new chunks appended one after another, so a capture creates a few large files
//! instead of one per chunk (file creation costs far more than the bytes on many filesystems).
//!
//! ```text
//! entry: chunk id (32 bytes) | stored length u32 LE | stored bytes (see `chunk::encode`)
//! ```
//! Entries are self-describing, so a pack can be checked or re-indexed on its own. A pack is
//! reachable only through index runs written after it was made durable; a pack no run names
//! (left by a killed capture) is removed by gc.

use std::fs::{self, File};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::index::Loc;
use crate::error::IoContext;
use crate::imaging::chunk::ChunkId;
use crate::{Error, Result};

/// Bytes before an entry's stored data.
pub const ENTRY_HEADER: u64 = 36;
/// A writer starts a new pack past this size.
pub const PACK_TARGET_SIZE: u64 = 1 << 30;

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

    /// Appends one entry, returning where its stored bytes are.
    pub fn append(&mut self, id: &ChunkId, stored: &[u8]) -> Result<Loc> {
        let stored_len = u32::try_from(stored.len())
            .map_err(|_| Error::InvalidInput(format!("chunk {id} of {} bytes is too large", stored.len())))?;
        self.out.write_all(&id.0).at(&self.path)?;
        self.out.write_all(&stored_len.to_le_bytes()).at(&self.path)?;
        self.out.write_all(stored).at(&self.path)?;
        let loc = Loc {
            pack: self.number,
            offset: self.len + ENTRY_HEADER,
            len: stored_len,
        };
        self.len += ENTRY_HEADER + u64::from(stored_len);
        Ok(loc)
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
