//! BitLocker encrypted volumes: recognised so capture reports name them, never mapped. The
//! volume's own allocation is encrypted, so they are captured whole (all-zero blocks dropped, as
//! for raw data).

use crate::Result;
use crate::imaging::disk::ReadAt;

/// OEM id at byte 3 of a BitLocker boot sector (Windows Vista and later).
const OEM_ID: &[u8; 8] = b"-FVE-FS-";
/// The BitLocker identifier GUID {4967D63B-2E29-4AD8-8399-F6A339E3D001} as stored on disk.
const BITLOCKER_GUID: [u8; 16] = [
    0x3B, 0xD6, 0x67, 0x49, 0x29, 0x2E, 0xD8, 0x4A, 0x83, 0x99, 0xF6, 0xA3, 0x39, 0xE3, 0xD0, 0x01,
];
/// Where the GUID sits: 0xA0 in the Windows 7+ boot sector, 0x1A8 in the FAT-looking boot sector
/// of BitLocker To Go (OEM id `MSWIN4.1`, readable by old systems that show the reader tool).
const GUID_OFFSETS: [usize; 2] = [0xA0, 0x1A8];

/// True when the boot sector of `dev` is a BitLocker one.
pub fn probe(dev: &dyn ReadAt) -> Result<bool> {
    let Some(boot) = super::read_boot_sector(dev)? else {
        return Ok(false);
    };
    Ok(boot.get(3..11) == Some(OEM_ID.as_slice())
        || GUID_OFFSETS
            .iter()
            .any(|&at| boot.get(at..at + 16) == Some(BITLOCKER_GUID.as_slice())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_oem_id_and_the_guid() {
        let mut boot = vec![0u8; 4096];
        assert!(!probe(&boot).expect("probe"));
        boot[3..11].copy_from_slice(b"NTFS    ");
        assert!(!probe(&boot).expect("probe"));
        boot[3..11].copy_from_slice(OEM_ID);
        assert!(probe(&boot).expect("probe"));
        // BitLocker To Go: a FAT boot sector with the GUID.
        boot[3..11].copy_from_slice(b"MSWIN4.1");
        assert!(!probe(&boot).expect("probe"));
        boot[0x1A8..0x1B8].copy_from_slice(&BITLOCKER_GUID);
        assert!(probe(&boot).expect("probe"));
        assert!(!probe(&vec![0u8; 100]).expect("probe"));
    }
}
