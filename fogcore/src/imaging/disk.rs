//! Disks: raw image files and block devices, read and written at byte offsets.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};

/// Positional reads of a disk or a part of one. Implemented by [`Disk`] and [`Slice`], so
/// filesystem and partition parsers work the same on a whole device or on one partition.
pub trait ReadAt: Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// A name for error messages (a path, or path and partition number).
    fn name(&self) -> String;
}

/// An open disk image file or block device.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    sector_size: u32,
    block_device: bool,
    fresh: bool,
    /// Bytes written since write-out was last started (see [`WRITE_BEHIND`]).
    unflushed: AtomicU64,
}

/// Bytes written after which their write-out to the device is started, without waiting for it:
/// the disk works while data still arrives, instead of taking everything in the final sync (the
/// kernel alone would wait for a tenth of RAM to be dirty: gigabytes on an imaging client).
pub const WRITE_BEHIND: u64 = 32 << 20;

const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl Disk {
    /// Opens a disk image or block device for reading. The sector size of a block device is read
    /// from the kernel; an image file is taken as 512-byte sectors until the partition table says
    /// otherwise (see [`crate::imaging::partition::read_layout`]).
    pub fn open(path: &Path) -> Result<Disk> {
        let file = File::open(path).at(path)?;
        Self::from_file(file, path, false)
    }

    /// Opens an existing disk image or block device for reading and writing.
    pub fn open_writable(path: &Path) -> Result<Disk> {
        let file = OpenOptions::new().read(true).write(true).open(path).at(path)?;
        Self::from_file(file, path, false)
    }

    /// Opens a deploy target for writing. A path that does not exist becomes a new sparse image
    /// file of `new_file_size` bytes (a fresh target: nothing in it needs overwriting).
    pub fn open_target(path: &Path, new_file_size: u64) -> Result<Disk> {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => Self::from_file(file, path, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .at(path)?;
                file.set_len(new_file_size).at(path)?;
                Self::from_file(file, path, true)
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn from_file(file: File, path: &Path, fresh: bool) -> Result<Disk> {
        let meta = file.metadata().at(path)?;
        let (size, sector_size, block_device) = if meta.file_type().is_block_device() {
            (block_size64(&file, path)?, block_sector_size(&file, path)?, true)
        } else if meta.is_file() {
            (meta.len(), 512, false)
        } else {
            return Err(Error::BadDisk {
                path: path.into(),
                reason: "not a disk image file or block device".into(),
            });
        };
        Ok(Disk {
            file,
            path: path.into(),
            size,
            sector_size,
            block_device,
            fresh,
            unflushed: AtomicU64::new(0),
        })
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logical sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// Overrides the sector size of an image file (block devices know theirs).
    pub fn set_sector_size(&mut self, sector_size: u32) {
        if !self.block_device {
            self.sector_size = sector_size;
        }
    }

    /// True for a block device, false for an image file.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// True when the target was created by [`Disk::open_target`]: it holds only zeros.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(Error::InvalidInput(format!(
                "{}: write of {} bytes at {offset} past the end ({} bytes)",
                self.path.display(),
                buf.len(),
                self.size
            )));
        }
        self.file.write_all_at(buf, offset).at(&self.path)?;
        let len = buf.len() as u64;
        if self.unflushed.fetch_add(len, Ordering::Relaxed) + len >= WRITE_BEHIND {
            self.unflushed.store(0, Ordering::Relaxed);
            self.start_write_out();
        }
        Ok(())
    }

    /// Starts writing the dirty pages out, without waiting. Only a hint: errors surface in
    /// [`Disk::sync`].
    fn start_write_out(&self) {
        // SAFETY: the descriptor is open for as long as `self.file` lives; the call takes no
        // pointers.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// Flushes written data to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_all().at(&self.path)
    }
}

impl ReadAt for Disk {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.size) {
            return Err(Error::BadDisk {
                path: self.path.clone(),
                reason: format!(
                    "read of {} bytes at {offset} is past the end ({} bytes)",
                    buf.len(),
                    self.size
                ),
            });
        }
        self.file.read_exact_at(buf, offset).at(&self.path)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// A window `[offset, offset+len)` of another reader, e.g. one partition of a disk.
pub struct Slice<'a> {
    inner: &'a dyn ReadAt,
    offset: u64,
    len: u64,
    name: String,
}

impl<'a> Slice<'a> {
    /// A window on `inner`, named `name` in errors.
    pub fn new(inner: &'a dyn ReadAt, offset: u64, len: u64, name: String) -> Self {
        Slice {
            inner,
            offset,
            len,
            name,
        }
    }

    /// Where the window starts in the underlying reader.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl ReadAt for Slice<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(Error::BadFilesystem {
                what: self.name.clone(),
                reason: format!(
                    "read of {} bytes at {offset} is past its end ({} bytes)",
                    buf.len(),
                    self.len
                ),
            });
        }
        self.inner.read_exact_at(buf, self.offset + offset)
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// An in-memory disk, for tests and for parsing buffers.
impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let start = usize::try_from(offset).ok();
        let src = start
            .and_then(|s| s.checked_add(buf.len()).map(|e| (s, e)))
            .and_then(|(s, e)| self.get(s..e))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "read of {} bytes at {offset} past the end of a {}-byte buffer",
                    buf.len(),
                    self.len()
                ))
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn name(&self) -> String {
        "memory".into()
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn name(&self) -> String {
        "memory".into()
    }
}

fn block_size64(file: &File, path: &Path) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    Ok(size)
}

fn block_sector_size(file: &File, path: &Path) -> Result<u32> {
    use std::os::fd::AsRawFd;
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut size as *mut libc::c_int) };
    if rc != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    u32::try_from(size).map_err(|_| Error::BadDisk {
        path: path.into(),
        reason: format!("kernel reports sector size {size}"),
    })
}

/// Little-endian field readers over a byte slice that fail instead of panicking.
pub(crate) mod le {
    /// `u16` at `off`, or None past the end.
    pub fn u16(b: &[u8], off: usize) -> Option<u16> {
        b.get(off..off + 2)
            .and_then(|s| s.try_into().ok())
            .map(u16::from_le_bytes)
    }
    /// `u32` at `off`, or None past the end.
    pub fn u32(b: &[u8], off: usize) -> Option<u32> {
        b.get(off..off + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
    }
    /// `u64` at `off`, or None past the end.
    pub fn u64(b: &[u8], off: usize) -> Option<u64> {
        b.get(off..off + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    }
}

/// Big-endian field readers (XFS, LUKS) over a byte slice that fail instead of panicking.
pub(crate) mod be {
    /// `u16` at `off`, or None past the end.
    pub fn u16(b: &[u8], off: usize) -> Option<u16> {
        b.get(off..off.checked_add(2)?)
            .and_then(|s| s.try_into().ok())
            .map(u16::from_be_bytes)
    }
    /// `u32` at `off`, or None past the end.
    pub fn u32(b: &[u8], off: usize) -> Option<u32> {
        b.get(off..off.checked_add(4)?)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_be_bytes)
    }
    /// `u64` at `off`, or None past the end.
    pub fn u64(b: &[u8], off: usize) -> Option<u64> {
        b.get(off..off.checked_add(8)?)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_be_bytes)
    }
}
