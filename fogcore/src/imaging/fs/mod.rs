//! Filesystems: recognise what a partition holds and list the byte ranges it uses, so capture
//! reads only data that matters.
//!
//! Each filesystem module offers `probe(dev) -> Result<Option<..>>` (is it mine?) and
//! `used_extents(dev) -> Result<Vec<Extent>>`: sorted, merged byte ranges relative to the start of
//! `dev`, which must cover everything needed for the filesystem to be identical after deploy
//! (boot sectors, backup superblocks and boot sectors, metadata, and every allocated block).
//!
//! LUKS, BitLocker and LVM physical volumes are only recognised: what they use is hidden by
//! encryption or by a volume manager fog does not map, so they are captured like raw data, but
//! named in reports. A guessed map could lose data; a whole capture cannot.

pub mod bitlocker;
mod bitmap;
pub mod btrfs;
pub mod exfat;
pub mod ext;
pub mod fat;
pub mod luks;
pub mod lvm;
pub mod ntfs;
pub mod swap;
#[cfg(test)]
mod test_support;
pub mod xfs;

use serde::{Deserialize, Serialize};

use super::disk::ReadAt;
use super::extent::Extent;
use crate::Result;

/// What a partition holds, as far as capture and deploy care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Filesystem {
    /// ext2, ext3 or ext4: block bitmaps say what is used.
    Ext,
    /// FAT12/16/32: the FAT says what is used.
    Fat,
    /// NTFS: `$Bitmap` says what is used.
    Ntfs,
    /// XFS: each allocation group's free space btree says what is free.
    Xfs,
    /// btrfs on one device: the extent tree says what is used (a member of a multi-device
    /// filesystem is captured like raw data).
    Btrfs,
    /// exFAT: the allocation bitmap says what is used.
    Exfat,
    /// LUKS1 or LUKS2 encrypted volume: captured like raw data.
    Luks,
    /// BitLocker encrypted volume: captured like raw data.
    BitLocker,
    /// LVM2 physical volume: captured like raw data.
    Lvm,
    /// Linux swap: nothing is stored; deploy writes a new header with the same UUID and label.
    Swap(swap::SwapHeader),
    /// Anything else: every block that is not all zeros.
    Raw,
}

impl Filesystem {
    /// A short name for listings.
    pub fn label(&self) -> &'static str {
        match self {
            Filesystem::Ext => "ext",
            Filesystem::Fat => "fat",
            Filesystem::Ntfs => "ntfs",
            Filesystem::Xfs => "xfs",
            Filesystem::Btrfs => "btrfs",
            Filesystem::Exfat => "exfat",
            Filesystem::Luks => "luks",
            Filesystem::BitLocker => "bitlocker",
            Filesystem::Lvm => "lvm",
            Filesystem::Swap(_) => "swap",
            Filesystem::Raw => "raw",
        }
    }
}

/// The first 512 bytes of `dev` (where FAT, exFAT, NTFS and BitLocker keep their boot sector),
/// or None when it is smaller.
fn read_boot_sector(dev: &dyn ReadAt) -> Result<Option<[u8; 512]>> {
    let mut boot = [0u8; 512];
    if dev.size() < boot.len() as u64 {
        return Ok(None);
    }
    dev.read_exact_at(&mut boot, 0)?;
    Ok(Some(boot))
}

/// Recognises the filesystem on `dev`; [`Filesystem::Raw`] when none is known.
///
/// Encrypted volumes and LVM come first: their signatures are exact, and a stale filesystem
/// signature left inside one (BitLocker To Go even carries a FAT boot sector on purpose) must not
/// win, since a filesystem's map there would drop data while a whole capture never does. Then the
/// filesystems with magic numbers, and last FAT, whose probe is a consistency check of a BPB.
pub fn probe(dev: &dyn ReadAt) -> Result<Filesystem> {
    if luks::probe(dev)? {
        return Ok(Filesystem::Luks);
    }
    if bitlocker::probe(dev)? {
        return Ok(Filesystem::BitLocker);
    }
    if lvm::probe(dev)? {
        return Ok(Filesystem::Lvm);
    }
    if ext::probe(dev)? {
        return Ok(Filesystem::Ext);
    }
    if xfs::probe(dev)? {
        return Ok(Filesystem::Xfs);
    }
    if btrfs::probe(dev)? {
        return Ok(Filesystem::Btrfs);
    }
    if ntfs::probe(dev)? {
        return Ok(Filesystem::Ntfs);
    }
    if exfat::probe(dev)? {
        return Ok(Filesystem::Exfat);
    }
    if fat::probe(dev)? {
        return Ok(Filesystem::Fat);
    }
    if let Some(header) = swap::probe(dev)? {
        return Ok(Filesystem::Swap(header));
    }
    Ok(Filesystem::Raw)
}

/// The used byte ranges of `dev` for a recognised filesystem; `None` for [`Filesystem::Raw`], the
/// encrypted and LVM volumes and a btrfs that is not mapped (every non-zero block is kept, found
/// while reading), and an empty list for swap.
pub fn used_extents(fs: &Filesystem, dev: &dyn ReadAt) -> Result<Option<Vec<Extent>>> {
    Ok(match fs {
        Filesystem::Ext => Some(ext::used_extents(dev)?),
        Filesystem::Fat => Some(fat::used_extents(dev)?),
        Filesystem::Ntfs => Some(ntfs::used_extents(dev)?),
        Filesystem::Xfs => Some(xfs::used_extents(dev)?),
        Filesystem::Btrfs => btrfs::used_extents(dev)?,
        Filesystem::Exfat => Some(exfat::used_extents(dev)?),
        Filesystem::Swap(_) => Some(Vec::new()),
        Filesystem::Luks | Filesystem::BitLocker | Filesystem::Lvm | Filesystem::Raw => None,
    })
}
