//! The initramfs archive format: cpio "newc" (`070701`), the one the kernel unpacks. Written
//! here rather than by a crate: a header of 13 hex fields, the name, the data, each padded to 4.
//! Entries are kept sorted by path with fixed owners and mtimes, so the same inputs give the
//! same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with these permission bits.
    Dir(u32),
    /// A regular file: permission bits and contents.
    File(u32, Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device: permission bits, major, minor.
    CharDev(u32, u32, u32),
}

impl Entry {
    fn mode(&self) -> u32 {
        match self {
            Entry::Dir(perm) => S_IFDIR | (perm & 0o7777),
            Entry::File(perm, _) => S_IFREG | (perm & 0o7777),
            Entry::Symlink(_) => S_IFLNK | 0o777,
            Entry::CharDev(perm, _, _) => S_IFCHR | (perm & 0o7777),
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Entry::File(_, data) => data,
            Entry::Symlink(target) => target.as_bytes(),
            Entry::Dir(_) | Entry::CharDev(..) => &[],
        }
    }
}

/// An archive being put together: paths relative to the root (`bin/sh`), parents added as
/// directories on the way.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Archive::default()
    }

    /// Adds (or replaces) `path`, creating its missing parent directories (0755).
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries.entry(parent.clone()).or_insert(Entry::Dir(0o755));
        }
        self.entries.insert(path.to_string(), entry);
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path.trim_start_matches('/'))
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of file contents.
    pub fn data_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.data().len() as u64).sum()
    }

    /// Writes the archive (sorted by path, owner root, mtime 0, then the trailer); returns the
    /// bytes written.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut written = 0;
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let nlink = if matches!(entry, Entry::Dir(_)) { 2 } else { 1 };
            let (major, minor) = match entry {
                Entry::CharDev(_, major, minor) => (*major, *minor),
                _ => (0, 0),
            };
            written += write_entry(
                out,
                path,
                ino as u32 + 1,
                entry.mode(),
                nlink,
                entry.data(),
                major,
                minor,
            )?;
        }
        written += write_entry(out, "TRAILER!!!", 0, 0, 1, &[], 0, 0)?;
        Ok(written)
    }
}

#[allow(clippy::too_many_arguments)]
fn write_entry(
    out: &mut impl Write,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    data: &[u8],
    rdev_major: u32,
    rdev_minor: u32,
) -> io::Result<u64> {
    let size = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: larger than 4 GiB")))?;
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{maj:08x}{min:08x}{rdev_major:08x}{rdev_minor:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        maj = 0,
        min = 0,
        namesize = name.len() + 1,
        check = 0,
    );
    let mut n = 0u64;
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    n += (header.len() + name.len() + 1) as u64;
    n += pad(out, n)?;
    out.write_all(data)?;
    n += data.len() as u64;
    n += pad(out, n)?;
    Ok(n)
}

/// Pads to a multiple of 4 (every entry starts aligned, so its own length decides).
fn pad(out: &mut impl Write, len: u64) -> io::Result<u64> {
    let fill = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..fill as usize])?;
    Ok(fill)
}

/// Reads a newc archive back: `(path, mode, data)` per entry, without the trailer. For tests
/// and `fog bootenv` checks; an error names what is malformed.
pub fn read(bytes: &[u8]) -> std::result::Result<Vec<(String, u32, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let field = |at: usize, i: usize| -> std::result::Result<usize, String> {
        let start = at + 6 + i * 8;
        let text = bytes
            .get(start..start + 8)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| format!("truncated header at {at}"))?;
        usize::from_str_radix(text, 16).map_err(|_| format!("bad header field {i} at {at}: {text:?}"))
    };
    loop {
        if bytes.get(pos..pos + 6) != Some(b"070701") {
            return Err(format!("no newc magic at {pos}"));
        }
        let mode = field(pos, 1)? as u32;
        let size = field(pos, 6)?;
        let namesize = field(pos, 11)?;
        let name_start = pos + 110;
        let name = bytes
            .get(name_start..name_start + namesize.saturating_sub(1))
            .ok_or_else(|| format!("truncated name at {pos}"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let data_start = (name_start + namesize).next_multiple_of(4);
        let data = bytes
            .get(data_start..data_start + size)
            .ok_or_else(|| format!("truncated data of {name}"))?;
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        out.push((name, mode, data.to_vec()));
        pos = (data_start + size).next_multiple_of(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add("init", Entry::File(0o755, b"#!/bin/sh\necho hi\n".to_vec()));
        a.add("bin/busybox", Entry::File(0o755, vec![7; 5]));
        a.add("bin/sh", Entry::Symlink("busybox".into()));
        a.add("dev/console", Entry::CharDev(0o600, 5, 1));
        a.add("lib/modules/order", Entry::File(0o644, b"virtio\n".to_vec()));
        a
    }

    #[test]
    fn archive_reads_back_with_parents_sorted_and_aligned() {
        let mut bytes = Vec::new();
        let n = sample().write_to(&mut bytes).expect("write");
        assert_eq!(n as usize, bytes.len());
        assert_eq!(bytes.len() % 4, 0);
        let entries = read(&bytes).expect("read");
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/order"
            ]
        );
        let sh = entries.iter().find(|e| e.0 == "bin/sh").expect("sh");
        assert_eq!((sh.1, sh.2.as_slice()), (0o120777, &b"busybox"[..]));
        let init = entries.iter().find(|e| e.0 == "init").expect("init");
        assert_eq!((init.1, init.2.as_slice()), (0o100755, &b"#!/bin/sh\necho hi\n"[..]));
        assert_eq!(entries.iter().find(|e| e.0 == "bin").expect("bin").1, 0o040755);
    }

    #[test]
    fn same_entries_give_the_same_bytes() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        sample().write_to(&mut a).expect("write");
        let mut other = Archive::new();
        // Added in another order.
        other.add("lib/modules/order", Entry::File(0o644, b"virtio\n".to_vec()));
        other.add("dev/console", Entry::CharDev(0o600, 5, 1));
        other.add("bin/sh", Entry::Symlink("busybox".into()));
        other.add("bin/busybox", Entry::File(0o755, vec![7; 5]));
        other.add("init", Entry::File(0o755, b"#!/bin/sh\necho hi\n".to_vec()));
        other.write_to(&mut b).expect("write");
        assert_eq!(a, b);
    }

    /// GNU cpio, when installed, lists the same entries and extracts the same bytes.
    #[test]
    fn gnu_cpio_reads_it() {
        let Ok(dir) = tempfile::tempdir() else { return };
        if std::process::Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("cpio not installed: skipped");
            return;
        }
        let archive = dir.path().join("a.cpio");
        let mut bytes = Vec::new();
        sample().write_to(&mut bytes).expect("write");
        std::fs::write(&archive, &bytes).expect("write");
        let listing = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -t --quiet < {}", archive.display()))
            .output()
            .expect("cpio -t");
        assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
        let text = String::from_utf8_lossy(&listing.stdout);
        assert_eq!(text.lines().count(), 9, "{text}");
        let out = dir.path().join("x");
        std::fs::create_dir(&out).expect("mkdir");
        let extract = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && cpio -id --quiet --no-absolute-filenames init bin/sh bin/busybox < {}",
                out.display(),
                archive.display()
            ))
            .output()
            .expect("cpio -i");
        assert!(extract.status.success(), "{}", String::from_utf8_lossy(&extract.stderr));
        assert_eq!(std::fs::read(out.join("init")).expect("init"), b"#!/bin/sh\necho hi\n");
        assert_eq!(
            std::fs::read_link(out.join("bin/sh")).expect("link"),
            std::path::Path::new("busybox")
        );
    }
}
