//! Checked reading of tables that come from a file, a disk or the network (manifests, partition
//! tables).
//!
//! Offsets, counts and lengths found in such input are combined only with checked arithmetic and
//! bounded by the bytes that are really there before anything is allocated or read. A value out
//! of range is a [`FieldError`] naming the field; the parser turns it into its own error
//! (`Error::BadManifest`, `Error::BadDisk`) with the input's name. Fixed-layout records (an MBR
//! entry, a GPT header) are read field by field through a [`ByteCursor`].

use std::fmt;

/// A field of untrusted input whose value is out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Which field, as a reader of the error message would look for it (`"region 2 chunk table"`).
    pub field: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl FieldError {
    /// A new error for `field`.
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

/// Result with [`FieldError`].
pub type FieldResult<T> = std::result::Result<T, FieldError>;

/// `a + b`, or an error naming `field` when it overflows.
pub fn add(field: &str, a: u64, b: u64) -> FieldResult<u64> {
    a.checked_add(b)
        .ok_or_else(|| FieldError::new(field, format!("{a} + {b} overflows")))
}

/// `a * b`, or an error naming `field` when it overflows.
pub fn mul(field: &str, a: u64, b: u64) -> FieldResult<u64> {
    a.checked_mul(b)
        .ok_or_else(|| FieldError::new(field, format!("{a} * {b} overflows")))
}

/// `v` as a `usize` (for a buffer length or an index), or an error naming `field`.
pub fn to_usize(field: &str, v: u64) -> FieldResult<usize> {
    usize::try_from(v).map_err(|_| FieldError::new(field, format!("{v} does not fit in memory")))
}

/// A byte range `[offset, offset + len)` of some input, known to end within it: [`Span::end`]
/// cannot overflow and [`Span::buffer`] allocates at most the input's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Span {
    /// `len` bytes at `offset`, checked to end within `limit` bytes.
    pub fn new(field: &str, offset: u64, len: u64, limit: u64) -> FieldResult<Span> {
        let end = add(field, offset, len)?;
        if end > limit {
            return Err(FieldError::new(
                field,
                format!("{len} bytes at {offset} end at {end}, past the {limit} bytes there are"),
            ));
        }
        Ok(Span { offset, len })
    }

    /// A table of `count` entries of `entry_len` bytes at `offset`, checked to end within
    /// `limit` bytes.
    pub fn table(field: &str, offset: u64, count: u64, entry_len: u64, limit: u64) -> FieldResult<Span> {
        let len = count
            .checked_mul(entry_len)
            .ok_or_else(|| FieldError::new(field, format!("{count} entries of {entry_len} bytes overflow")))?;
        Self::new(field, offset, len, limit).map_err(|_| {
            FieldError::new(
                field,
                format!("{count} entries of {entry_len} bytes at {offset} do not fit in the {limit} bytes there are"),
            )
        })
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    /// A zeroed buffer of the span's length, to read it into.
    pub fn buffer(&self, field: &str) -> FieldResult<Vec<u8>> {
        Ok(vec![0u8; to_usize(field, self.len)?])
    }
}

/// Reads little-endian fields of a byte slice from a moving position. Every read is bounded: past
/// the end is an error naming the field, never a panic.
#[derive(Debug, Clone)]
pub struct ByteCursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ByteCursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        ByteCursor { buf, pos: 0 }
    }

    /// A cursor at `pos` of `buf` (reads fail if `pos` is past the end).
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        ByteCursor { buf, pos }
    }

    /// The position of the next read.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the position.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, field: &str, n: usize) -> FieldResult<&'a [u8]> {
        let got = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| {
                FieldError::new(
                    field,
                    format!("{n} bytes at {} run past the end of {} bytes", self.pos, self.buf.len()),
                )
            })?;
        self.pos += n;
        Ok(got)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &str) -> FieldResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(field, N)?);
        Ok(out)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, field: &str, n: usize) -> FieldResult<()> {
        self.bytes(field, n).map(|_| ())
    }

    /// A byte.
    pub fn u8(&mut self, field: &str) -> FieldResult<u8> {
        self.array::<1>(field).map(|[b]| b)
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self, field: &str) -> FieldResult<u16> {
        self.array(field).map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, field: &str) -> FieldResult<u32> {
        self.array(field).map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, field: &str) -> FieldResult<u64> {
        self.array(field).map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_overflow_names_the_field() {
        assert_eq!(add("a", 1, 2), Ok(3));
        assert_eq!(mul("m", 3, 4), Ok(12));
        let err = add("region 1 offset", u64::MAX, 1).expect_err("overflow");
        assert_eq!(err.field, "region 1 offset");
        assert!(mul("count", u64::MAX / 2, 3).is_err());
    }

    #[test]
    fn spans_end_inside_their_input() {
        assert_eq!(Span::table("t", 8, 3, 16, 56), Ok(Span { offset: 8, len: 48 }));
        assert!(Span::table("t", 8, 3, 16, 55).is_err());
        assert!(Span::table("t", 0, u64::MAX / 8, 16, u64::MAX).is_err());
        assert!(Span::table("t", u64::MAX, 1, 1, u64::MAX).is_err());
        assert!(Span::new("s", u64::MAX - 1, 2, u64::MAX).is_err());
        let empty = Span::table("t", 100, 0, 36, 100).expect("empty table at the end");
        assert_eq!((empty.end(), empty.buffer("t").expect("buffer").len()), (100, 0));
        let err = Span::table("region 3 extents", 0, 1 << 60, 16, 1000).expect_err("too long");
        assert!(err.to_string().starts_with("region 3 extents: "), "{err}");
    }

    #[test]
    fn cursor_reads_fields_and_stops_at_the_end() {
        let buf = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        let mut c = ByteCursor::new(&buf);
        assert_eq!(c.u8("a"), Ok(1));
        assert_eq!(c.u16("b"), Ok(0x0302));
        assert_eq!(c.u32("c"), Ok(0x0706_0504));
        assert_eq!(c.remaining(), 4);
        assert_eq!(c.u64("d").expect_err("past the end").field, "d");
        assert_eq!(c.pos(), 7, "a failed read does not move");
        assert_eq!(c.bytes("e", 4), Ok(&buf[7..]));
        assert!(c.u8("f").is_err());
        assert!(ByteCursor::at(&buf, 100).u8("g").is_err());
        assert!(ByteCursor::at(&buf, usize::MAX).bytes("h", 2).is_err());
        let mut s = ByteCursor::at(&buf, 9);
        assert!(s.skip("i", 3).is_err());
        assert_eq!(s.skip("i", 2), Ok(()));
    }
}
