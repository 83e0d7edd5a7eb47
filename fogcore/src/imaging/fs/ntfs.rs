//! ntfs: used-block map (to be written).

use crate::imaging::disk::ReadAt;
use crate::imaging::extent::Extent;
use crate::Result;

/// True when `dev` holds this filesystem.
pub fn probe(_dev: &dyn ReadAt) -> Result<bool> {
    Ok(false)
}

/// Used byte ranges of the filesystem on `dev`.
pub fn used_extents(dev: &dyn ReadAt) -> Result<Vec<Extent>> {
    Ok(vec![Extent::new(0, dev.size())])
}
