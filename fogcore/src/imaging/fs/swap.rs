//! Linux swap: never stored. Deploy writes a fresh header keeping the UUID and label, as mkswap
//! would, so `/etc/fstab` entries by UUID or LABEL still match.

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::imaging::disk::ReadAt;

const SIGNATURE: &[u8; 10] = b"SWAPSPACE2";
const PAGE_SIZES: [u64; 4] = [4096, 8192, 16384, 65536];
/// Offset of the `swap_header.info` fields after the boot bits.
const INFO_OFFSET: usize = 1024;

/// What deploy needs to recreate a swap partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapHeader {
    /// Page size the header was written for.
    pub page_size: u64,
    /// Swap UUID, hex.
    pub uuid: String,
    /// Volume label.
    pub label: String,
}

/// Finds a version-1 swap header on `dev`.
pub fn probe(dev: &dyn ReadAt) -> Result<Option<SwapHeader>> {
    for page_size in PAGE_SIZES {
        if dev.size() < page_size * 2 {
            break;
        }
        let mut page = vec![0u8; page_size as usize];
        dev.read_exact_at(&mut page, 0)?;
        if page.ends_with(SIGNATURE) {
            let info = page.get(INFO_OFFSET..INFO_OFFSET + 44).unwrap_or_default();
            let uuid = hex::encode(info.get(12..28).unwrap_or_default());
            let label_bytes = info.get(28..44).unwrap_or_default();
            let label_len = label_bytes.iter().position(|&b| b == 0).unwrap_or(label_bytes.len());
            let label = String::from_utf8_lossy(label_bytes.get(..label_len).unwrap_or_default()).into_owned();
            return Ok(Some(SwapHeader { page_size, uuid, label }));
        }
    }
    Ok(None)
}

impl SwapHeader {
    /// The first page of a swap area of `size` bytes with this UUID and label.
    pub fn build(&self, size: u64) -> Vec<u8> {
        let mut page = vec![0u8; self.page_size as usize];
        let last_page = (size / self.page_size).saturating_sub(1) as u32;
        let uuid = hex::decode(&self.uuid).unwrap_or_default();
        put(&mut page, INFO_OFFSET, &1u32.to_le_bytes());
        put(&mut page, INFO_OFFSET + 4, &last_page.to_le_bytes());
        put(&mut page, INFO_OFFSET + 12, uuid.get(..16).unwrap_or_default());
        let label = self.label.as_bytes();
        put(
            &mut page,
            INFO_OFFSET + 28,
            label.get(..label.len().min(16)).unwrap_or_default(),
        );
        let sig_at = page.len() - SIGNATURE.len();
        put(&mut page, sig_at, SIGNATURE);
        page
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_uuid_and_label() {
        let header = SwapHeader {
            page_size: 4096,
            uuid: "00112233445566778899aabbccddeeff".into(),
            label: "myswap".into(),
        };
        let mut disk = header.build(1 << 20);
        disk.resize(1 << 20, 0);
        assert_eq!(probe(&disk).ok().flatten(), Some(header));
    }
}
