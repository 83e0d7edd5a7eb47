//! Filesystems: recognise what a partition holds and list the byte ranges it uses, so capture
//! reads only data that matters.
//!
//! Each filesystem module offers `probe(dev) -> Result<Option<..>>` (is it mine?) and
//! `used_extents(dev) -> Result<Vec<Extent>>`: sorted, merged byte ranges relative to the start of
//! `dev`, which must cover everything needed for the filesystem to be identical after deploy
//! (boot sectors, backup superblocks and boot sectors, metadata, and every allocated block).

pub mod ext;
pub mod fat;
pub mod ntfs;
pub mod swap;

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
            Filesystem::Swap(_) => "swap",
            Filesystem::Raw => "raw",
        }
    }
}

/// Recognises the filesystem on `dev`; [`Filesystem::Raw`] when none is known.
pub fn probe(dev: &dyn ReadAt) -> Result<Filesystem> {
    if ext::probe(dev)? {
        return Ok(Filesystem::Ext);
    }
    if ntfs::probe(dev)? {
        return Ok(Filesystem::Ntfs);
    }
    if fat::probe(dev)? {
        return Ok(Filesystem::Fat);
    }
    if let Some(header) = swap::probe(dev)? {
        return Ok(Filesystem::Swap(header));
    }
    Ok(Filesystem::Raw)
}

/// The used byte ranges of `dev` for a recognised filesystem; `None` for [`Filesystem::Raw`]
/// (every non-zero block is kept, found while reading) and an empty list for swap.
pub fn used_extents(fs: &Filesystem, dev: &dyn ReadAt) -> Result<Option<Vec<Extent>>> {
    Ok(match fs {
        Filesystem::Ext => Some(ext::used_extents(dev)?),
        Filesystem::Fat => Some(fat::used_extents(dev)?),
        Filesystem::Ntfs => Some(ntfs::used_extents(dev)?),
        Filesystem::Swap(_) => Some(Vec::new()),
        Filesystem::Raw => None,
    })
}
