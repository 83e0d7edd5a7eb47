//! File writes that survive a crash whole: the one place for the temporary-file, sync, rename,
//! sync-the-directory sequence.

use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a synced temporary
/// file renamed over it, then the directory synced.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).at(&tmp)?;
    file.write_all(bytes).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
