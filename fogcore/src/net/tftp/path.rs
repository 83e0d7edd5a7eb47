//! The root jail: which file a requested name means, and refusing every name that leaves the
//! root (`..`, absolute escapes, symlinks pointing outside).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Why a requested name gives no file.
#[derive(Debug)]
pub enum Refused {
    /// The name tries to leave the root (`..`, or a symlink out): ERROR 2.
    Traversal,
    /// No such file: ERROR 1.
    NotFound,
    /// A directory or device, not a regular file: ERROR 1.
    NotAFile,
    /// The OS refused to open it: ERROR 2.
    Denied,
    /// Another I/O error: ERROR 0 with the message.
    Io(io::Error),
}

/// Normalises a requested name into a relative path with `/` separators: backslashes count as
/// separators (Windows clients), leading `/` (PXE ROMs) and empty or `.` components are dropped.
/// A `..` component is [`Refused::Traversal`]; a name with nothing left is [`Refused::NotFound`].
pub fn normalize(requested: &str) -> Result<String, Refused> {
    let mut parts = Vec::new();
    for part in requested.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(Refused::Traversal),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        Err(Refused::NotFound)
    } else {
        Ok(parts.join("/"))
    }
}

/// Opens `relative` (a result of [`normalize`]) under `root`, which must be canonical (absolute,
/// no symlinks). The full path is canonicalised and must stay under the root, so a symlink
/// inside the root may point anywhere inside it but not out. Blocking: call on a blocking thread.
pub fn open_in_root(root: &Path, relative: &str) -> Result<(File, u64, PathBuf), Refused> {
    let joined = root.join(relative);
    let real = match std::fs::canonicalize(&joined) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Refused::NotFound),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(Refused::Denied),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) || e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Refused::NotFound);
        }
        Err(e) => return Err(Refused::Io(e)),
    };
    if !real.starts_with(root) {
        return Err(Refused::Traversal);
    }
    let file = match File::open(&real) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Refused::NotFound),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(Refused::Denied),
        Err(e) => return Err(Refused::Io(e)),
    };
    let meta = file.metadata().map_err(Refused::Io)?;
    if !meta.is_file() {
        return Err(Refused::NotAFile);
    }
    Ok((file, meta.len(), real))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_what_clients_send() {
        let ok = |s: &str| normalize(s).ok();
        assert_eq!(ok("pxelinux.0").as_deref(), Some("pxelinux.0"));
        assert_eq!(ok("/undionly.kpxe").as_deref(), Some("undionly.kpxe"));
        assert_eq!(ok("//boot/./ipxe.efi").as_deref(), Some("boot/ipxe.efi"));
        assert_eq!(ok("\\Boot\\x64\\wdsnbp.com").as_deref(), Some("Boot/x64/wdsnbp.com"));
        assert_eq!(ok("a..b/c...").as_deref(), Some("a..b/c..."));
    }

    #[test]
    fn refuses_parent_components_and_empty_names() {
        for bad in [
            "..",
            "../etc/passwd",
            "/../../etc/passwd",
            "a/../b",
            "a\\..\\..\\x",
            "..\\x",
        ] {
            assert!(matches!(normalize(bad), Err(Refused::Traversal)), "{bad:?}");
        }
        for empty in ["/", "", "./.", "\\"] {
            assert!(matches!(normalize(empty), Err(Refused::NotFound)), "{empty:?}");
        }
    }

    #[test]
    fn opens_inside_and_refuses_symlinks_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/file"), b"inside").expect("write");
        std::fs::write(dir.path().join("secret"), b"outside").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).expect("symlink");
        std::os::unix::fs::symlink("sub/file", root.join("in")).expect("symlink");
        std::os::unix::fs::symlink(dir.path(), root.join("updir")).expect("symlink");
        let root = std::fs::canonicalize(&root).expect("canonicalize");

        let (_, len, _) = open_in_root(&root, "sub/file").expect("inside");
        assert_eq!(len, 6);
        assert!(open_in_root(&root, "in").is_ok(), "a symlink inside the root is fine");
        assert!(matches!(open_in_root(&root, "out"), Err(Refused::Traversal)));
        assert!(matches!(open_in_root(&root, "updir/secret"), Err(Refused::Traversal)));
        assert!(matches!(open_in_root(&root, "missing"), Err(Refused::NotFound)));
        assert!(matches!(open_in_root(&root, "sub/file/x"), Err(Refused::NotFound)));
        assert!(matches!(open_in_root(&root, "sub"), Err(Refused::NotAFile)));
    }
}
