//! LVM2 physical volumes: recognised so capture reports name them, never mapped. Mapping the
//! logical volumes inside (and the filesystems in them) is not done, so they are captured whole
//! (all-zero blocks dropped, as for raw data).

use crate::Result;
use crate::imaging::disk::{ReadAt, le};

/// The label: "LABELONE" at the start of one of the first four sectors, naming its own sector,
/// with type "LVM2 001".
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
const LABEL_SECTORS: u64 = 4;
const SECTOR: u64 = 512;

/// True when one of the first four sectors of `dev` holds an LVM2 label.
pub fn probe(dev: &dyn ReadAt) -> Result<bool> {
    let mut sector = [0u8; 32];
    for n in 0..LABEL_SECTORS {
        if (n + 1) * SECTOR > dev.size() {
            break;
        }
        dev.read_exact_at(&mut sector, n * SECTOR)?;
        if sector.starts_with(LABEL_ID) && le::u64(&sector, 8) == Some(n) && sector.get(24..32) == Some(LABEL_TYPE) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_label_in_its_sector() {
        let mut dev = vec![0u8; 8192];
        assert!(!probe(&dev).expect("probe"));
        let label = |dev: &mut Vec<u8>, at: usize, names: u64| {
            dev[at..at + 8].copy_from_slice(LABEL_ID);
            dev[at + 8..at + 16].copy_from_slice(&names.to_le_bytes());
            dev[at + 24..at + 32].copy_from_slice(LABEL_TYPE);
        };
        label(&mut dev, 512, 0);
        assert!(!probe(&dev).expect("probe"), "label naming another sector");
        label(&mut dev, 512, 1);
        assert!(probe(&dev).expect("probe"));
        let mut late = vec![0u8; 8192];
        label(&mut late, 4 * 512, 4);
        assert!(!probe(&late).expect("probe"), "past the first four sectors");
        assert!(!probe(&dev[..600].to_vec()).expect("probe"));
    }
}
