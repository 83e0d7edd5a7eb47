//! File writes that survive a crash whole: the one place for the temporary-file, sync, rename,
//! sync-the-directory sequence.

use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a synced temporary
/// file renamed over it, then the directory synced.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    write_durably_with(path, DEFAULT_MODE, |file| {
        file.write_all(bytes).at(path.with_extension("tmp"))
    })
}

/// [`write_durably`] of a file only its owner can read (mode 0600 from its first byte): tokens,
/// passwords, keys.
#[cfg_attr(not(feature = "master"), allow(dead_code))]
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_durably_with(path, 0o600, |file| file.write_all(bytes).at(path.with_extension("tmp")))
}

/// The mode new files get (before the umask), as `File::create` gives.
pub(crate) const DEFAULT_MODE: u32 = 0o666;

/// [`write_durably`] for content that `write` streams into the temporary file, created with
/// `mode` (before the umask); what `write` returns is returned once the file is in place. On an
/// error `path` is untouched.
pub(crate) fn write_durably_with<T>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut std::fs::File) -> Result<T>,
) -> Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    let tmp = path.with_extension("tmp");
    // A leftover from a crash may have another mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .at(&tmp)?;
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
