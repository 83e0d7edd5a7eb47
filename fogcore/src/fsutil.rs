//! File writes that survive a crash whole: the one place for the temporary-file, sync, rename,
//! sync-the-directory sequence.

use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a synced temporary
/// file renamed over it, then the directory synced.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    write_durably_with(path, |file| file.write_all(bytes).at(path.with_extension("tmp")))
}

/// [`write_durably`] for content that `write` streams into the temporary file; what `write`
/// returns is returned once the file is in place. On an error `path` is untouched.
pub(crate) fn write_durably_with<T>(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<T>) -> Result<T> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).at(&tmp)?;
    let value = match write(&mut file) {
        Ok(value) => value,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    file.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
    Ok(value)
}
