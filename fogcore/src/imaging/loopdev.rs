//! Loop devices over a byte range of a file or block device, so a filesystem tool (resize2fs,
//! ntfsresize, mount) can work on one partition of a disk image or of a disk whose new
//! partition table the kernel has not read. Set up through the kernel's ioctls, not `losetup`:
//! the boot environment's busybox `losetup` has no size limit.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// The device goes away when its last user closes it, even if fog dies before [`Drop`].
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Another process may take the free device between asking and binding; try again this often.
const BIND_ATTEMPTS: usize = 16;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// A loop device showing `len` bytes of a file or device from `offset`. Detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    device: File,
    path: PathBuf,
}

impl LoopDevice {
    /// Binds a free loop device to `len` bytes of `backing` from `offset`.
    pub fn attach(backing: &Path, offset: u64, len: u64) -> Result<LoopDevice> {
        let file = OpenOptions::new().read(true).write(true).open(backing).at(backing)?;
        let control_path = Path::new("/dev/loop-control");
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open(control_path)
            .map_err(|e| Error::io(control_path, e))?;
        for _ in 0..BIND_ATTEMPTS {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
            if number < 0 {
                return Err(Error::io(control_path, std::io::Error::last_os_error()));
            }
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // udev is slow
                Err(e) => return Err(Error::io(&path, e)),
            };
            // SAFETY: LOOP_SET_FD takes the backing file's descriptor, which outlives the call.
            if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD as _, file.as_raw_fd()) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EBUSY) {
                    continue; // taken by someone else meanwhile
                }
                return Err(Error::io(&path, e));
            }
            let bound = LoopDevice { device, path };
            let mut info = LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset,
                sizelimit: len,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR,
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            };
            let name = backing.as_os_str().as_encoded_bytes();
            let n = name.len().min(63);
            info.file_name[..n].copy_from_slice(&name[..n]);
            // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64`, which `info` is.
            if unsafe { libc::ioctl(bound.device.as_raw_fd(), LOOP_SET_STATUS64 as _, &info) } < 0 {
                return Err(Error::io(&bound.path, std::io::Error::last_os_error()));
            }
            return Ok(bound);
        }
        Err(Error::Internal(format!(
            "no free loop device for {} after {BIND_ATTEMPTS} attempts",
            backing.display()
        )))
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // SAFETY: LOOP_CLR_FD takes no argument. With autoclear set the kernel detaches at the
        // last close anyway; this makes it immediate.
        unsafe { libc::ioctl(self.device.as_raw_fd(), LOOP_CLR_FD as _) };
    }
}
