//! LUKS1 and LUKS2 encrypted volumes: recognised so capture reports name them, never mapped. What
//! is used inside is unknowable without the key, so they are captured whole (all-zero blocks
//! dropped, as for raw data).

use crate::Result;
use crate::imaging::disk::{ReadAt, be};

/// Magic of the primary header (LUKS1 and LUKS2).
const PRIMARY_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// Magic of the LUKS2 secondary header.
const SECONDARY_MAGIC: &[u8; 6] = b"SKUL\xba\xbe";
/// Where LUKS2 may put its secondary header: right after a primary header area of 16 KiB to
/// 4 MiB (cryptsetup's LUKS2 on-disk format).
const SECONDARY_OFFSETS: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];

/// True when `dev` starts with a LUKS1 or LUKS2 header, or holds a LUKS2 secondary header (the
/// primary may be damaged; cryptsetup repairs it from the secondary).
pub fn probe(dev: &dyn ReadAt) -> Result<bool> {
    if header_at(dev, 0, PRIMARY_MAGIC, &[1, 2])? {
        return Ok(true);
    }
    for offset in SECONDARY_OFFSETS {
        if header_at(dev, offset, SECONDARY_MAGIC, &[2])? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// True when a header with `magic` and one of `versions` (big-endian `u16` after the magic) is at
/// `offset`.
fn header_at(dev: &dyn ReadAt, offset: u64, magic: &[u8; 6], versions: &[u16]) -> Result<bool> {
    let mut head = [0u8; 8];
    if offset.saturating_add(head.len() as u64) > dev.size() {
        return Ok(false);
    }
    dev.read_exact_at(&mut head, offset)?;
    Ok(head.starts_with(magic) && be::u16(&head, 6).is_some_and(|v| versions.contains(&v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_primary_and_secondary_headers() {
        let mut dev = vec![0u8; 1 << 20];
        assert!(!probe(&dev).expect("probe"));
        dev[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x01");
        assert!(probe(&dev).expect("probe"));
        dev[7] = 2;
        assert!(probe(&dev).expect("probe"));
        dev[7] = 9;
        assert!(!probe(&dev).expect("probe"), "unknown version");
        dev[..8].fill(0);
        dev[0x4000..0x4008].copy_from_slice(b"SKUL\xba\xbe\x00\x02");
        assert!(probe(&dev).expect("probe"), "secondary header only");
        assert!(!probe(&dev[..0x4004].to_vec()).expect("probe"), "cut inside the header");
        assert!(!probe(&vec![0u8; 3]).expect("probe"));
    }
}
