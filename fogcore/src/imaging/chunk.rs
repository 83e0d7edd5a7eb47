//! Chunks: pieces of a partition's used data, cut by FastCDC, named by BLAKE3, stored compressed
//! in frames.
//!
//! A store keeps runs of consecutive new chunks together in one *frame* (about [`FRAME_TARGET`]
//! bytes of plain data), compressed as a whole so zstd sees a shared window: 16 KiB compressed
//! one by one lose what a stream compressor finds between them. The stored form of a frame is
//! one tag byte and a payload: [`TAG_RAW`] (incompressible data is kept as is, so deploy skips a
//! useless decompression) or [`TAG_ZSTD`]. Dedupe stays per chunk, and every read checks the
//! chunk's hash, so a wrong byte can never reach a disk.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// FastCDC minimum chunk size. Cut points are what dedupe matches on: changing these (or the
/// fastcdc version, pinned exactly) makes old and new images share nothing.
pub const MIN_SIZE: u32 = 2 * 1024;
/// FastCDC average chunk size. Small so a scattered change costs little (8 KiB stores three
/// similar systems in about a third less than 16 KiB did); frames keep compression good and
/// deploy writes runs of chunks at once, so per-chunk cost stays low (see DESIGN.md decisions).
pub const AVG_SIZE: u32 = 8 * 1024;
/// FastCDC maximum chunk size.
pub const MAX_SIZE: u32 = 32 * 1024;

/// Plain bytes of consecutive chunks a capture gathers before compressing them as one frame.
pub const FRAME_TARGET: usize = 256 * 1024;
/// Largest plain size of a frame a reader accepts (a frame is at most `FRAME_TARGET` plus one
/// chunk when written; the limit guards allocations against a damaged pack).
pub const FRAME_MAX: usize = 16 << 20;

/// zstd level for new frames: level 3 is what `zstd -3` (FOG's and Clonezilla's default) uses.
pub const ZSTD_LEVEL: i32 = 3;

/// Stored payload is the plain data.
pub const TAG_RAW: u8 = 0;
/// Stored payload is one zstd frame.
pub const TAG_ZSTD: u8 = 1;

/// The name of a chunk: BLAKE3 of its plain bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

impl FromStr for ChunkId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(s, &mut id).map_err(|_| Error::InvalidInput(format!("{s:?} is not a chunk id")))?;
        Ok(ChunkId(id))
    }
}

thread_local! {
    // A zstd context per thread: creating one per frame costs more than compressing a small one.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok());
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// The stored form of a frame's plain bytes: compressed when that saves at least 1/32 of them.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(TAG_ZSTD);
    let compressed = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let compressor = c.as_mut()?;
        out.resize(1 + zstd::zstd_safe::compress_bound(data.len()), 0);
        let n = compressor.compress_to_buffer(data, out.get_mut(1..)?).ok()?;
        Some(n)
    });
    match compressed {
        Some(n) if n + data.len() / 32 < data.len() => {
            out.truncate(1 + n);
            out
        }
        _ => {
            out.clear();
            out.push(TAG_RAW);
            out.extend_from_slice(data);
            out
        }
    }
}

/// Decodes a stored frame to its plain bytes, which must be `len` long. The error says what was
/// wrong; callers name the chunk and image. Chunk hashes are checked by the caller ([`check`]).
pub fn decode(stored: &[u8], len: usize) -> std::result::Result<Vec<u8>, String> {
    if len > FRAME_MAX {
        return Err(format!("frame of {len} bytes is larger than {FRAME_MAX}"));
    }
    let (tag, payload) = stored.split_first().ok_or("empty frame")?;
    let data = match *tag {
        TAG_RAW => payload.to_vec(),
        TAG_ZSTD => DECOMPRESSOR
            .with(|d| {
                let mut d = d.borrow_mut();
                match d.as_mut() {
                    Some(d) => d.decompress(payload, len),
                    None => zstd::bulk::decompress(payload, len),
                }
            })
            .map_err(|e| format!("zstd: {e}"))?,
        other => return Err(format!("unknown encoding tag {other}")),
    };
    if data.len() != len {
        return Err(format!("frame holds {} bytes, expected {len}", data.len()));
    }
    Ok(data)
}

/// The plain length of a stored frame: a zstd frame carries it in its header, a raw one is its
/// payload. At most [`FRAME_MAX`], so a damaged header cannot ask for a huge allocation.
pub fn plain_len(stored: &[u8]) -> std::result::Result<usize, String> {
    let len = match stored.split_first() {
        Some((&TAG_RAW, payload)) => payload.len(),
        Some((&TAG_ZSTD, payload)) => zstd::zstd_safe::get_frame_content_size(payload)
            .ok()
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or("no readable zstd frame header")?,
        Some((tag, _)) => return Err(format!("unknown encoding tag {tag}")),
        None => return Err("empty frame".into()),
    };
    if len > FRAME_MAX {
        return Err(format!("frame of {len} bytes is larger than {FRAME_MAX}"));
    }
    Ok(len)
}

/// Decodes a stored frame whose plain length is in its own header ([`plain_len`]).
pub fn decode_whole(stored: &[u8]) -> std::result::Result<Vec<u8>, String> {
    decode(stored, plain_len(stored)?)
}

/// Where one asked-for chunk lies in a [`WireFrame`]'s plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePart {
    /// Position of the chunk's id in the request.
    pub index: u32,
    /// Offset of the chunk in the frame's plain bytes.
    pub start: u32,
    /// Length of the chunk.
    pub len: u32,
}

/// Chunks in transit inside a frame (what deploy reads): the frame's stored bytes, sent as the
/// store holds them when the asked-for chunks make up most of it, and where each asked-for chunk
/// lies in it. The sender neither decodes nor hashes; the receiver decodes the frame once and
/// checks every chunk against the id it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    /// Stored bytes (see [`encode`]).
    pub stored: Vec<u8>,
    /// The asked-for chunks in it.
    pub parts: Vec<FramePart>,
}

impl WireFrame {
    /// Frames one after another, as a frames reply or a multicast object carries them: per frame
    /// its part count, its parts (index, start, length) and its stored bytes, little-endian.
    pub fn encode_batch(frames: &[WireFrame]) -> Vec<u8> {
        let size = frames.iter().map(|f| 8 + 12 * f.parts.len() + f.stored.len()).sum();
        let mut out = Vec::with_capacity(size);
        for frame in frames {
            out.extend_from_slice(&(frame.parts.len() as u32).to_le_bytes());
            for part in &frame.parts {
                for word in [part.index, part.start, part.len] {
                    out.extend_from_slice(&word.to_le_bytes());
                }
            }
            out.extend_from_slice(&(frame.stored.len() as u32).to_le_bytes());
            out.extend_from_slice(&frame.stored);
        }
        out
    }

    /// Parses [`WireFrame::encode_batch`]'s bytes for a request of `count` ids: every part must
    /// name one of them.
    pub fn decode_batch(body: &[u8], count: usize) -> Result<Vec<WireFrame>> {
        use super::cursor::{ByteCursor, FieldError};
        let truncated = |e: FieldError| Error::invalid("frame batch", e.field, e.reason);
        let mut cur = ByteCursor::new(body);
        let mut frames = Vec::new();
        while cur.remaining() != 0 {
            let n = cur.u32("part count").map_err(truncated)? as usize;
            if n == 0 || n > count {
                return Err(Error::invalid(
                    "frame batch",
                    format!("{n} parts"),
                    format!("a frame holds 1 to {count} of the asked-for chunks"),
                ));
            }
            let mut parts = Vec::with_capacity(n);
            for _ in 0..n {
                let part = FramePart {
                    index: cur.u32("part index").map_err(truncated)?,
                    start: cur.u32("part start").map_err(truncated)?,
                    len: cur.u32("part length").map_err(truncated)?,
                };
                if part.index as usize >= count {
                    return Err(Error::invalid(
                        "frame batch",
                        format!("part index {}", part.index),
                        format!("the request named {count} chunks"),
                    ));
                }
                parts.push(part);
            }
            let len = cur.u32("frame length").map_err(truncated)?;
            let stored = cur.bytes("frame bytes", len as usize).map_err(truncated)?.to_vec();
            frames.push(WireFrame { stored, parts });
        }
        Ok(frames)
    }

    /// The plain bytes of part `part` of the decoded frame `plain`, checked against `id`.
    pub fn checked_part<'a>(plain: &'a [u8], part: &FramePart, id: &ChunkId) -> std::result::Result<&'a [u8], String> {
        let start = part.start as usize;
        let data = plain
            .get(start..start + part.len as usize)
            .ok_or("it lies past the end of its frame")?;
        check(id, data)?;
        Ok(data)
    }

    /// Decodes the frame and returns its parts' chunks, each checked against the id at its index
    /// in `ids`; the error names the first bad chunk.
    pub fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Vec<u8>)>> {
        let id_of = |part: &FramePart| {
            ids.get(part.index as usize).copied().ok_or_else(|| {
                Error::InvalidInput(format!(
                    "a frame part names request position {}, past the request",
                    part.index
                ))
            })
        };
        let corrupt = |id: &ChunkId, reason: String| Error::ChunkCorrupt {
            image: "transfer".into(),
            chunk: id.to_hex(),
            reason,
        };
        let plain = match decode_whole(&self.stored) {
            Ok(plain) => plain,
            Err(reason) => {
                let first = self.parts.first().map(id_of).transpose()?.unwrap_or(ChunkId([0; 32]));
                return Err(corrupt(&first, format!("its frame is damaged: {reason}")));
            }
        };
        self.parts
            .iter()
            .map(|part| {
                let id = id_of(part)?;
                let data = WireFrame::checked_part(&plain, part, &id).map_err(|reason| corrupt(&id, reason))?;
                Ok((id, data.to_vec()))
            })
            .collect()
    }
}

/// Checks that `data` is chunk `id`.
pub fn check(id: &ChunkId, data: &[u8]) -> std::result::Result<(), String> {
    if ChunkId::of(data) == *id {
        Ok(())
    } else {
        Err("content does not match its hash".into())
    }
}

/// Where chunks come from: a local store, or a remote node.
pub trait ChunkSource: Send + Sync {
    /// The plain bytes of `id`, checked against its hash, or `None` when absent. Wrong content is
    /// [`Error::ChunkCorrupt`] with image `"store"`; callers that know the image rename it.
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>>;

    /// Appends the plain bytes of `id`, checked, to `buf`; false (and `buf` unchanged) when
    /// absent. Sources that hold decoded frames override it to copy once.
    fn get_into(&self, id: &ChunkId, buf: &mut Vec<u8>) -> Result<bool> {
        Ok(self.get(id)?.map(|data| buf.extend_from_slice(&data)).is_some())
    }
}

/// Where chunks go: a store being written.
pub trait ChunkSink: Send + Sync {
    /// True when the sink already holds `id` (so it need not be compressed or sent).
    fn has(&self, id: &ChunkId) -> Result<bool>;
    /// Stores consecutive chunks of one data stream (ids and plain bytes): those the sink lacks
    /// are kept together (a store compresses them as one frame). Returns how many were new.
    fn put_run(&self, chunks: &[(ChunkId, &[u8])]) -> Result<usize>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_compressible_and_random_data() {
        let text = b"fog fog fog fog ".repeat(1000);
        let random: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for data in [&text[..], &random[..], &[][..]] {
            let stored = encode(data);
            assert_eq!(decode(&stored, data.len()).as_deref(), Ok(data));
            assert!(decode(&stored, data.len() + 1).is_err());
        }
        assert_eq!(encode(&text)[0], TAG_ZSTD);
    }

    #[test]
    fn rejects_a_flipped_byte() {
        let data = b"hello world".repeat(100);
        let id = ChunkId::of(&data);
        let mut stored = vec![TAG_RAW];
        stored.extend_from_slice(&data);
        let last = stored.len() - 1;
        stored[last] ^= 1;
        let plain = decode(&stored, data.len()).expect("a raw frame decodes");
        assert!(check(&id, &plain).is_err());
        assert!(check(&id, &data).is_ok());
        assert!(decode(&[7, 1, 2], 2).is_err());
    }

    #[test]
    fn parses_its_own_hex() {
        let id = ChunkId::of(b"x");
        assert_eq!(id.to_hex().parse::<ChunkId>().ok(), Some(id));
        assert!("zz".parse::<ChunkId>().is_err());
    }
}
