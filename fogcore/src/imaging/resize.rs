//! Resizable deploy: a layout for a target of another size (partitions that must keep their size
//! keep it, the others share the rest in proportion), and the filesystem tools that grow or
//! shrink each filesystem to its new partition.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::disk::{Disk, ReadAt};
use super::fs::Filesystem;
use super::loopdev::LoopDevice;
use super::manifest::Header;
use super::partition::{Layout, Moved, Partition, TableKind};
use crate::error::IoContext;
use crate::progress::Progress;
use crate::tools::find_tool;
use crate::{Error, Result};

/// How deploy lays the image's partitions out on the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutMode {
    /// Partitions that must keep their size keep it (EFI system, Microsoft reserved, recovery,
    /// BIOS boot, swap, filesystems fog cannot resize); the others share the target's space in
    /// proportion to their source sizes, and their filesystems are grown or shrunk to fit.
    #[default]
    Fit,
    /// The source's partition table as it was (only the backup GPT moves to the target's end).
    Exact,
}

impl LayoutMode {
    /// The name used by the CLI, REST and Python.
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutMode::Fit => "fit",
            LayoutMode::Exact => "exact",
        }
    }
}

impl fmt::Display for LayoutMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LayoutMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fit" => Ok(LayoutMode::Fit),
            "exact" => Ok(LayoutMode::Exact),
            other => Err(Error::InvalidInput(format!(
                "layout {other:?} is not one of fit, exact"
            ))),
        }
    }
}

/// Partitions start on 1 MiB boundaries, as every partitioning tool since Vista places them.
pub const ALIGN: u64 = 1 << 20;

const EFI_SYSTEM: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const MS_RESERVED: &str = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE";
const WINDOWS_RECOVERY: &str = "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const LINUX_SWAP: &str = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F";

/// Why a partition keeps its size in a `fit` layout, or `None` when fog may resize it: the
/// partitions firmware, Windows and boot loaders expect at a size (EFI system, Microsoft
/// reserved, Windows recovery, BIOS boot), swap, and filesystems fog cannot resize here.
pub fn fixed_reason(type_id: &str, filesystem: &Filesystem) -> Option<String> {
    let upper = type_id.to_ascii_uppercase();
    let by_type = match upper.as_str() {
        EFI_SYSTEM | "0XEF" => Some("an EFI system partition"),
        MS_RESERVED => Some("Microsoft reserved"),
        WINDOWS_RECOVERY => Some("Windows recovery"),
        // Hidden NTFS on an MBR disk: Windows' recovery partition (0x27) or a hidden volume.
        "0X27" | "0X17" if *filesystem == Filesystem::Ntfs => Some("Windows recovery (hidden NTFS)"),
        BIOS_BOOT => Some("BIOS boot"),
        LINUX_SWAP | "0X82" => Some("swap"),
        _ => None,
    };
    if let Some(reason) = by_type {
        return Some(reason.into());
    }
    if matches!(filesystem, Filesystem::Swap(_)) {
        return Some("swap".into());
    }
    match Resizer::for_filesystem(filesystem) {
        None => Some(format!("{} is not resized", filesystem.label())),
        Some(r) => r
            .missing_tool()
            .map(|(tool, package)| format!("{tool} is not installed (Debian package {package})")),
    }
}

/// What grows or shrinks a filesystem to its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resizer {
    /// ext2/3/4: e2fsck, then resize2fs.
    Ext,
    /// NTFS: ntfsresize, then ntfsfix clears the dirty flag and bad-cluster list it leaves.
    Ntfs,
    /// XFS: grown only, mounted (xfs_growfs works on a mounted filesystem).
    Xfs,
    /// btrfs: grown only here, mounted (`btrfs filesystem resize max`).
    Btrfs,
}

impl Resizer {
    /// The resizer of `filesystem`, if fog resizes it.
    pub fn for_filesystem(filesystem: &Filesystem) -> Option<Resizer> {
        match filesystem {
            Filesystem::Ext => Some(Resizer::Ext),
            Filesystem::Ntfs => Some(Resizer::Ntfs),
            Filesystem::Xfs => Some(Resizer::Xfs),
            Filesystem::Btrfs => Some(Resizer::Btrfs),
            _ => None,
        }
    }

    /// True when fog can make a shrunk copy (XFS cannot shrink; btrfs only mounted, which fog
    /// does not do to copies).
    pub fn can_shrink(self) -> bool {
        matches!(self, Resizer::Ext | Resizer::Ntfs)
    }

    /// The kernel filesystem a resize mounts, for those that need mounting.
    fn mounts(self) -> Option<&'static str> {
        match self {
            Resizer::Xfs => Some("xfs"),
            Resizer::Btrfs => Some("btrfs"),
            Resizer::Ext | Resizer::Ntfs => None,
        }
    }

    /// The program that resizes, for reports.
    pub fn tool(self) -> &'static str {
        match self {
            Resizer::Ext => "resize2fs",
            Resizer::Ntfs => "ntfsresize",
            Resizer::Xfs => "xfs_growfs",
            Resizer::Btrfs => "btrfs filesystem resize",
        }
    }

    /// The programs it runs and the Debian packages that have them.
    fn tools(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Resizer::Ext => &[("e2fsck", "e2fsprogs"), ("resize2fs", "e2fsprogs")],
            Resizer::Ntfs => &[("ntfsresize", "ntfs-3g"), ("ntfsfix", "ntfs-3g")],
            Resizer::Xfs => &[("xfs_growfs", "xfsprogs")],
            Resizer::Btrfs => &[("btrfs", "btrfs-progs")],
        }
    }

    /// What this machine lacks to resize: the first of its programs that is not installed, or
    /// the kernel's support for mounting the filesystem.
    pub fn missing_tool(self) -> Option<(&'static str, &'static str)> {
        if let Some(fs) = self.mounts()
            && !kernel_mounts(fs)
        {
            return Some((fs, "the kernel's module"));
        }
        self.tools().iter().copied().find(|(tool, _)| find_tool(tool).is_none())
    }

    /// Grows or shrinks the filesystem on `device` (a partition, or a file) to the device's size.
    pub fn fit_to_device(self, device: &Path, what: &str) -> Result<()> {
        match self {
            Resizer::Ext => {
                check_ext(device, what)?;
                run_tool("resize2fs", &[device.as_os_str()], what, |c| c == 0)?;
            }
            Resizer::Ntfs => {
                let args = [
                    OsStr::new("--force"),
                    OsStr::new("--force"),
                    OsStr::new("--no-progress-bar"),
                ];
                run_tool("ntfsresize", &[&args[..], &[device.as_os_str()]].concat(), what, |c| {
                    c == 0
                })?;
                fix_ntfs(device, what)?;
            }
            Resizer::Xfs => {
                let mounted = Mounted::new(device, "xfs", what)?;
                run_tool("xfs_growfs", &[mounted.dir.as_os_str()], what, |c| c == 0)?;
                mounted.unmount()?;
            }
            Resizer::Btrfs => {
                let mounted = Mounted::new(device, "btrfs", what)?;
                let args = [OsStr::new("filesystem"), OsStr::new("resize"), OsStr::new("max")];
                run_tool("btrfs", &[&args[..], &[mounted.dir.as_os_str()]].concat(), what, |c| {
                    c == 0
                })?;
                mounted.unmount()?;
            }
        }
        Ok(())
    }

    /// Shrinks the filesystem in the image file `file` as far as it goes, truncates the file to
    /// the new size (whole MiB) and returns that size.
    pub(crate) fn shrink_file(self, file: &Path, what: &str) -> Result<u64> {
        let size = match self {
            Resizer::Ext => {
                check_ext(file, what)?;
                run_tool("resize2fs", &[OsStr::new("-M"), file.as_os_str()], what, |c| c == 0)?;
                super::fs::ext::filesystem_size(&Disk::open(file)?)?.next_multiple_of(ALIGN)
            }
            Resizer::Ntfs => {
                let info = run_tool(
                    "ntfsresize",
                    &[
                        OsStr::new("--info"),
                        OsStr::new("--force"),
                        OsStr::new("--no-progress-bar"),
                        file.as_os_str(),
                    ],
                    what,
                    |c| c == 0,
                )?;
                let min = ntfs_min_size(&info).ok_or_else(|| Error::ToolFailed {
                    tool: "ntfsresize --info".into(),
                    what: what.into(),
                    reason: "it did not say the smallest size".into(),
                })?;
                // Whole MiB, and one more so the volume can shrink to its minimum and still leave
                // the device's last sector to the backup boot sector.
                let size = min.next_multiple_of(ALIGN) + ALIGN;
                let current = std::fs::metadata(file).at(file)?.len();
                if size < current {
                    let size_arg = OsString::from(size.to_string());
                    run_tool(
                        "ntfsresize",
                        &[
                            OsStr::new("--force"),
                            OsStr::new("--force"),
                            OsStr::new("--no-progress-bar"),
                            OsStr::new("--size"),
                            &size_arg,
                            file.as_os_str(),
                        ],
                        what,
                        |c| c == 0,
                    )?;
                }
                size.min(current)
            }
            Resizer::Xfs | Resizer::Btrfs => {
                return Err(Error::InvalidInput(format!("{what}: {} only grows", self.tool())));
            }
        };
        let f = std::fs::OpenOptions::new().write(true).open(file).at(file)?;
        f.set_len(size).at(file)?;
        if self == Resizer::Ntfs {
            fix_ntfs(file, what)?; // the backup boot sector, at the new end
        }
        Ok(size)
    }
}

/// True when the running kernel mounts `fs`: registered already, or a module it can load.
fn kernel_mounts(fs: &str) -> bool {
    let registered = std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|list| list.lines().any(|l| l.split_whitespace().last() == Some(fs)));
    registered || {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        std::fs::read_to_string(format!("/lib/modules/{}/modules.dep", release.trim()))
            .is_ok_and(|deps| deps.lines().any(|l| l.contains(&format!("/{fs}.ko"))))
    }
}

/// A filesystem mounted on a directory of its own for a grow; unmounted on drop if
/// [`Mounted::unmount`] was not called.
struct Mounted {
    dir: std::path::PathBuf,
    mounted: bool,
}

impl Mounted {
    fn new(device: &Path, fstype: &str, what: &str) -> Result<Mounted> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("fog-grow-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&dir).at(&dir)?;
        let mut mounted = Mounted { dir, mounted: false };
        let c_string = |s: &OsStr| {
            std::ffi::CString::new(s.as_encoded_bytes())
                .map_err(|_| Error::InvalidInput(format!("{what}: a path with a NUL byte")))
        };
        let source = c_string(device.as_os_str())?;
        let target = c_string(mounted.dir.as_os_str())?;
        let kind = c_string(OsStr::new(fstype))?;
        // Two deploys of one XFS image on a host carry one UUID, which XFS refuses to mount twice.
        let options = c_string(OsStr::new(if fstype == "xfs" { "nouuid" } else { "" }))?;
        // SAFETY: four NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                kind.as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(Error::ToolFailed {
                tool: format!("mount -t {fstype}"),
                what: what.into(),
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
        mounted.mounted = true;
        Ok(mounted)
    }

    fn unmount(mut self) -> Result<()> {
        let dir = self.dir.clone();
        self.release().map_err(|e| Error::io(dir, e))
    }

    fn release(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.mounted) {
            let target = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())?;
            // SAFETY: a NUL-terminated path that outlives the call.
            if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        std::fs::remove_dir(&self.dir)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// e2fsck -f: resize2fs refuses a filesystem not checked since it was last mounted. Exit 1 means
/// it fixed something (the captured filesystem of a running system may have been mounted).
fn check_ext(device: &Path, what: &str) -> Result<()> {
    run_tool(
        "e2fsck",
        &[OsStr::new("-f"), OsStr::new("-y"), device.as_os_str()],
        what,
        |c| c <= 1,
    )?;
    Ok(())
}

/// ntfsresize marks the volume dirty (so Windows runs chkdsk); ntfsfix -d clears that flag and
/// -b the bad-cluster list, and it puts a backup boot sector that differs from the primary right.
fn fix_ntfs(device: &Path, what: &str) -> Result<()> {
    run_tool(
        "ntfsfix",
        &[OsStr::new("-b"), OsStr::new("-d"), device.as_os_str()],
        what,
        |c| c == 0,
    )?;
    Ok(())
}

/// "You might resize at 7856128 bytes or 8 MB (freeing 60 MB)." from ntfsresize --info.
fn ntfs_min_size(info: &str) -> Option<u64> {
    let rest = info.split("You might resize at ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Runs an external tool with stdin closed; its output when `ok(exit code)`, else
/// [`Error::ToolFailed`] with the last lines it printed.
fn run_tool(tool: &str, args: &[&OsStr], what: &str, ok: impl Fn(i32) -> bool) -> Result<String> {
    let failed = |reason: String| Error::ToolFailed {
        tool: tool.into(),
        what: what.into(),
        reason,
    };
    let path = find_tool(tool).ok_or_else(|| failed("not installed".into()))?;
    let out = Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot start {}: {e}", path.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(code) if ok(code) => Ok(stdout),
        status => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let text = format!("{stdout}\n{stderr}");
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(6)..].join(" | ");
            Err(failed(format!(
                "exit {}: {tail}",
                status.map_or("by signal".into(), |c| c.to_string())
            )))
        }
    }
}

/// Where one partition goes on the target.
#[derive(Debug, Clone, Serialize)]
pub struct PlacedPartition {
    /// Partition number.
    pub number: u32,
    /// Filesystem label.
    pub filesystem: String,
    /// Offset and length on the source disk.
    pub source_offset: u64,
    /// Source length.
    pub source_len: u64,
    /// Offset on the target.
    pub offset: u64,
    /// Length on the target.
    pub len: u64,
    /// Why it keeps its size, for partitions that must.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    /// True when deploy writes the image's shrunk copy of it (the target gives it less room than
    /// the source had).
    pub from_shrunk: bool,
    /// The filesystem is grown or shrunk to `len` after writing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resize: Option<Resizer>,
}

/// Where one region of the image is written: its data starts at `offset` on the target and no
/// byte at or past `end` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionWrite {
    /// Index into the manifest's regions.
    pub region: usize,
    /// Target offset of the region's first byte.
    pub offset: u64,
    /// First target byte not written.
    pub end: u64,
}

/// A deploy's layout on its target.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The layout applied (a `fit` that had nothing to change is reported as such).
    pub mode: LayoutMode,
    /// Why `fit` kept the source's table, when it did.
    pub note: Option<String>,
    /// The regions to write, in order.
    pub writes: Vec<RegionWrite>,
    /// Every partition's place.
    pub partitions: Vec<PlacedPartition>,
}

impl Placement {
    /// Partitions whose place or size differ from the source's.
    pub fn moved(&self) -> Vec<Moved> {
        self.partitions
            .iter()
            .filter(|p| p.offset != p.source_offset || p.len != p.source_len)
            .map(|p| Moved {
                number: p.number,
                offset: p.offset,
                len: p.len,
            })
            .collect()
    }
}

/// Lays the image of `header` out on a target of `target_size` bytes (see [`LayoutMode`]).
/// Refuses, before anything is written, a target on which some partition cannot get the room
/// its filesystem needs, naming it.
pub fn place(header: &Header, target: &Path, target_size: u64, mode: LayoutMode) -> Result<Placement> {
    let layout = &header.layout;
    let exact = |note: &str| {
        Ok(exact_placement(
            header,
            target_size,
            (!note.is_empty()).then(|| note.into()),
        ))
    };
    match mode {
        LayoutMode::Exact => return exact(""),
        _ if layout.table == TableKind::None => return exact("a disk without a partition table is written as it was"),
        _ if layout.table == TableKind::Mbr && (layout.extended || layout.partitions.iter().any(|p| p.number > 4)) => {
            return exact("an MBR with an extended partition is written as it was");
        }
        _ if target_size == layout.disk_size || layout.partitions.is_empty() => return exact(""),
        _ => {}
    }
    let sizing = Sizing::of(header);
    if sizing.iter().all(|s| s.fixed.is_some()) {
        // Say why for a partition whose filesystem could be resized elsewhere.
        let why = sizing
            .iter()
            .find(|s| Resizer::for_filesystem(&s.filesystem).is_some())
            .and_then(|s| {
                s.fixed
                    .as_ref()
                    .map(|why| format!(": partition {}: {why}", s.partition.number))
            })
            .unwrap_or_default();
        return exact(&format!("no partition of this image can be resized here{why}"));
    }
    let ss = u64::from(layout.sector_size);
    let tail = if layout.table == TableKind::Gpt {
        layout.backup_gpt_len
    } else {
        0
    };
    let mut end = target_size.saturating_sub(tail) / ss * ss;
    if layout.table == TableKind::Mbr {
        // MBR entries count sectors in 32 bits: the rest of a larger disk stays unused.
        end = end.min(u64::from(u32::MAX) * ss);
    }
    let fits_as_is = target_size >= layout.min_target_size();
    let lens = match share_out(&sizing, layout, end, fits_as_is) {
        Ok(lens) => lens,
        // A target barely larger than the source: rounding and alignment leave no room to grow.
        Err(_) if fits_as_is => return exact("the target leaves no room to grow into"),
        Err(Shortfall { index, available }) => {
            let s = &sizing[index];
            return Err(Error::PartitionTooSmall {
                path: target.into(),
                partition: s.partition.number,
                filesystem: s.filesystem.label().into(),
                needed: s.min,
                available,
            });
        }
    };
    Ok(lay_out(header, &sizing, &lens, ss))
}

/// What `fit` knows of one partition of the image.
struct Sizing<'a> {
    partition: &'a Partition,
    filesystem: Filesystem,
    /// Its region as captured and its shrunk copy, by index into the manifest's regions.
    source: Option<usize>,
    shrunk: Option<usize>,
    /// Why it keeps its size, if it must.
    fixed: Option<String>,
    /// The least room it can have: its size when fixed or without a shrunk copy.
    min: u64,
}

impl<'a> Sizing<'a> {
    fn of(header: &'a Header) -> Vec<Sizing<'a>> {
        let find = |number: u32, shrunk: bool| {
            header
                .regions
                .iter()
                .position(|r| r.partition == Some(number) && r.shrunk == shrunk)
        };
        let mbr = header.layout.table == TableKind::Mbr;
        let no_loop_devices = loop_devices_unavailable();
        header
            .layout
            .partitions
            .iter()
            .map(|p| {
                let source = find(p.number, false);
                let filesystem = source.map_or(Filesystem::Raw, |i| header.regions[i].filesystem.clone());
                let mut fixed = fixed_reason(&p.type_id, &filesystem);
                if fixed.is_none()
                    && let Some(why) = &no_loop_devices
                {
                    fixed = Some(why.clone());
                }
                // An MBR Windows' "System Reserved" (a small NTFS holding the boot files): its
                // boot configuration names partitions by their offsets, so it stays as it is.
                if mbr && fixed.is_none() && filesystem == Filesystem::Ntfs && p.len < SYSTEM_RESERVED_MAX {
                    fixed = Some("a small NTFS boot partition on an MBR disk (System Reserved)".into());
                }
                let shrunk = find(p.number, true).filter(|_| fixed.is_none());
                let min = shrunk.map_or(p.len, |i| header.regions[i].len.min(p.len));
                Sizing {
                    partition: p,
                    filesystem,
                    source,
                    shrunk,
                    fixed,
                    min,
                }
            })
            .collect()
    }
}

/// MBR NTFS partitions under this size are taken for Windows' "System Reserved".
const SYSTEM_RESERVED_MAX: u64 = 1 << 30;

/// A resizable partition that cannot get its minimum: its index and the most it could get.
#[derive(Debug)]
struct Shortfall {
    index: usize,
    available: u64,
}

/// The length of every partition on a target whose partitions may end at `end`: fixed ones
/// their size, the others shares of the rest in proportion to their source sizes, each at least
/// its minimum (at least its source size when `no_shrink`), whole multiples of [`ALIGN`]; the
/// last resizable one takes what rounding leaves.
fn share_out(sizing: &[Sizing], layout: &Layout, end: u64, no_shrink: bool) -> Result<Vec<u64>, Shortfall> {
    let align = ALIGN.max(u64::from(layout.sector_size));
    let start = layout.partitions.first().map_or(0, |p| p.offset);
    let min = |s: &Sizing| if no_shrink { s.partition.len } else { s.min };
    let flexible: Vec<usize> = (0..sizing.len()).filter(|&i| sizing[i].fixed.is_none()).collect();
    let fixed_total: u64 = sizing
        .iter()
        .filter(|s| s.fixed.is_some())
        .map(|s| s.partition.len)
        .sum();
    // One alignment gap at most before each partition but the first.
    let gaps = align * (sizing.len() as u64).saturating_sub(1);
    let room = end
        .saturating_sub(start)
        .saturating_sub(fixed_total)
        .saturating_sub(gaps);
    let mins_total: u64 = flexible.iter().map(|&i| min(&sizing[i]).next_multiple_of(align)).sum();
    if mins_total > room {
        // The first partition that cannot get its minimum even if the others get only theirs.
        let index = flexible
            .iter()
            .copied()
            .find(|&i| {
                let others: u64 = flexible
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| min(&sizing[j]).next_multiple_of(align))
                    .sum();
                room.saturating_sub(others) < min(&sizing[i])
            })
            .unwrap_or(flexible[0]);
        let others: u64 = flexible
            .iter()
            .filter(|&&j| j != index)
            .map(|&j| min(&sizing[j]).next_multiple_of(align))
            .sum();
        return Err(Shortfall {
            index,
            available: room.saturating_sub(others) / align * align,
        });
    }
    // Proportional shares; one under its minimum gets its minimum and the rest share again.
    let mut pinned: Vec<Option<u64>> = vec![None; sizing.len()];
    let share = |pinned: &[Option<u64>], i: usize| -> u64 {
        let free = room.saturating_sub(pinned.iter().flatten().sum());
        let weight: u128 = flexible
            .iter()
            .filter(|&&j| pinned[j].is_none())
            .map(|&j| u128::from(sizing[j].partition.len))
            .sum();
        let share = u128::from(free) * u128::from(sizing[i].partition.len) / weight.max(1);
        u64::try_from(share).unwrap_or(u64::MAX) / align * align
    };
    loop {
        let under: Vec<usize> = flexible
            .iter()
            .copied()
            .filter(|&i| pinned[i].is_none() && share(&pinned, i) < min(&sizing[i]))
            .collect();
        if under.is_empty() {
            break;
        }
        for i in under {
            pinned[i] = Some(min(&sizing[i]).next_multiple_of(align));
        }
    }
    let mut lens: Vec<u64> = (0..sizing.len())
        .map(|i| match &sizing[i].fixed {
            Some(_) => sizing[i].partition.len,
            None => pinned[i].unwrap_or_else(|| share(&pinned, i)),
        })
        .collect();
    // Where the partitions end as laid out (a gap only where a start is not aligned already).
    let laid_end = lens.iter().enumerate().fold(start, |at, (i, len)| {
        if i == 0 {
            at + len
        } else {
            at.next_multiple_of(align) + len
        }
    });
    if let Some(&last) = flexible.last() {
        lens[last] += end.saturating_sub(laid_end) / align * align;
    }
    Ok(lens)
}

/// Places partitions of lengths `lens` in the source's order from the first one's offset, each
/// later one on an alignment boundary, and says which region goes where.
fn lay_out(header: &Header, sizing: &[Sizing], lens: &[u64], ss: u64) -> Placement {
    let layout = &header.layout;
    let align = ALIGN.max(ss);
    let start = layout.partitions.first().map_or(0, |p| p.offset);
    let mut writes = Vec::new();
    if let Some(i) = header.regions.iter().position(|r| r.partition.is_none()) {
        // Only what precedes the first partition: boot code, the tables (rewritten after), the
        // gap boot loaders use. Gaps between partitions mean nothing at new places.
        writes.push(RegionWrite {
            region: i,
            offset: 0,
            end: start,
        });
    }
    let mut partitions = Vec::new();
    let mut at = start;
    for (i, (s, &len)) in sizing.iter().zip(lens).enumerate() {
        let p = s.partition;
        if i > 0 {
            at = at.next_multiple_of(align);
        }
        let from_shrunk = s.fixed.is_none() && len < p.len;
        let written = if from_shrunk { s.shrunk } else { s.source };
        let written_len = written.map_or(p.len, |w| header.regions[w].len);
        if let Some(region) = written {
            writes.push(RegionWrite {
                region,
                offset: at,
                end: at + len.min(written_len),
            });
        }
        partitions.push(PlacedPartition {
            number: p.number,
            filesystem: s.filesystem.label().into(),
            source_offset: p.offset,
            source_len: p.len,
            offset: at,
            len,
            fixed: s.fixed.clone(),
            from_shrunk,
            resize: if len != written_len {
                Resizer::for_filesystem(&s.filesystem)
            } else {
                None
            },
        });
        at += len;
    }
    Placement {
        mode: LayoutMode::Fit,
        note: None,
        writes,
        partitions,
    }
}

/// Checks, before anything is written, that the table can hold every moved partition.
pub fn check_before_writing(placement: &Placement, layout: &Layout) -> Result<()> {
    for m in placement.moved() {
        m.check(layout.table, u64::from(layout.sector_size))?;
    }
    Ok(())
}

/// Why this process cannot resize filesystems on a target (they are reached through loop
/// devices, which need root), or `None`. Such partitions then keep their size.
fn loop_devices_unavailable() -> Option<String> {
    let control = Path::new("/dev/loop-control");
    match std::fs::OpenOptions::new().read(true).write(true).open(control) {
        Ok(_) => None,
        Err(e) => Some(format!("no loop devices to resize it ({}: {e})", control.display())),
    }
}

/// The source's layout as it was: every captured region at its own offset.
fn exact_placement(header: &Header, target_size: u64, note: Option<String>) -> Placement {
    let layout = &header.layout;
    // Captured bytes outside partitions past this point (only zeros or junk after the last
    // partition) do not fit a smaller target and are not needed.
    let end = target_size
        - if layout.table == TableKind::Gpt {
            layout.backup_gpt_len
        } else {
            0
        };
    let writes = header
        .regions
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_source())
        .map(|(i, r)| RegionWrite {
            region: i,
            offset: r.offset,
            end,
        })
        .collect();
    let partitions = layout
        .partitions
        .iter()
        .map(|p| {
            let region = header
                .regions
                .iter()
                .find(|r| r.partition == Some(p.number) && r.is_source());
            PlacedPartition {
                number: p.number,
                filesystem: region.map_or("raw", |r| r.filesystem.label()).into(),
                source_offset: p.offset,
                source_len: p.len,
                offset: p.offset,
                len: p.len,
                fixed: None,
                from_shrunk: false,
                resize: None,
            }
        })
        .collect();
    Placement {
        mode: LayoutMode::Exact,
        note,
        writes,
        partitions,
    }
}

/// Grows or shrinks the filesystem of every partition `placement` resized, each through a loop
/// device over its new place on `target_path`, then gives moved NTFS and FAT partitions their
/// new first sector ([`patch_hidden_sectors`]).
pub fn resize_partitions(
    target_path: &Path,
    target: &Disk,
    placement: &Placement,
    sector_size: u32,
    progress: &dyn Progress,
) -> Result<()> {
    let resized: Vec<&PlacedPartition> = placement.partitions.iter().filter(|p| p.resize.is_some()).collect();
    if !resized.is_empty() {
        progress.start("resize", resized.len() as u64);
        for p in resized {
            if progress.cancelled() {
                return Err(Error::Cancelled);
            }
            if let Some(resizer) = p.resize {
                let what = format!("{} partition {}", target_path.display(), p.number);
                let device = LoopDevice::attach(target_path, p.offset, p.len)?;
                resizer.fit_to_device(device.path(), &what)?;
            }
            progress.advance(1);
        }
        progress.finish();
    }
    for p in &placement.partitions {
        if p.offset != p.source_offset {
            patch_hidden_sectors(target, p, u64::from(sector_size))?;
        }
    }
    target.sync()
}

/// NTFS and FAT boot sectors record the partition's first sector ("hidden sectors", a 32-bit
/// field at byte 0x1C), and Windows' boot code uses it. A moved partition whose boot sector had
/// its old first sector gets the new one, in the backup boot sector too.
pub fn patch_hidden_sectors(target: &Disk, p: &PlacedPartition, ss: u64) -> Result<()> {
    const HIDDEN_SECTORS: usize = 0x1C;
    if !matches!(p.filesystem.as_str(), "ntfs" | "fat") {
        return Ok(());
    }
    let (Ok(old), Ok(new)) = (u32::try_from(p.source_offset / ss), u32::try_from(p.offset / ss)) else {
        return Ok(());
    };
    let mut boot = [0u8; 512];
    target.read_exact_at(&mut boot, p.offset)?;
    let field = |b: &[u8; 512]| u32::from_le_bytes([b[0x1C], b[0x1D], b[0x1E], b[0x1F]]);
    if field(&boot) != old {
        return Ok(()); // not set from the partition table (mkfs on a file, say): left alone
    }
    let bytes_per_sector = u64::from(u16::from_le_bytes([boot[0x0B], boot[0x0C]]));
    let backups = if p.filesystem == "ntfs" {
        // NTFS keeps its backup in the sector after the volume, which after ntfsresize is the
        // partition's last sector, not always the sector its count points past.
        let sectors = u64::from_le_bytes(boot[0x28..0x30].try_into().unwrap_or_default());
        vec![sectors.checked_mul(bytes_per_sector), p.len.checked_sub(ss)]
    } else if u16::from_le_bytes([boot[0x16], boot[0x17]]) == 0 {
        // FAT32 (no 16-bit FAT size): the backup boot sector's number is at 0x32.
        vec![Some(
            u64::from(u16::from_le_bytes([boot[0x32], boot[0x33]])) * bytes_per_sector,
        )]
    } else {
        Vec::new()
    };
    let mut at = vec![p.offset];
    for b in backups.into_iter().flatten() {
        if b > 0 && b + 512 <= p.len && !at.contains(&(p.offset + b)) {
            at.push(p.offset + b);
        }
    }
    let oem_id = boot[3..11].to_vec();
    for offset in at {
        // Only a copy of this boot sector (same OEM id, same old value), never data that
        // happens to sit where a backup could be.
        target.read_exact_at(&mut boot, offset)?;
        if field(&boot) == old && boot[3..11] == oem_id[..] {
            target.write_all_at(&new.to_le_bytes(), offset + HIDDEN_SECTORS as u64)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::manifest::{FORMAT, Region, Section};
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

    /// A GPT (or MBR) image whose partitions are `(len, fixed, shrunk copy length)`, each 1 MiB
    /// after the one before, from 1 MiB.
    fn image(table: TableKind, parts: &[(u64, bool, Option<u64>)]) -> Header {
        let mut partitions = Vec::new();
        let mut regions = Vec::new();
        let mut at = MIB;
        for (i, &(len, fixed, shrunk)) in parts.iter().enumerate() {
            let number = i as u32 + 1;
            let type_id = match (table, fixed) {
                (TableKind::Mbr, true) => "0x82".into(),
                (TableKind::Mbr, false) => "0x83".into(),
                (_, true) => EFI_SYSTEM.into(),
                (_, false) => LINUX.into(),
            };
            partitions.push(Partition {
                number,
                offset: at,
                len,
                type_id,
                name: String::new(),
            });
            let region = |len, shrunk| Region {
                partition: Some(number),
                offset: at,
                len,
                filesystem: Filesystem::Ext,
                used_bytes: 0,
                extents: Section::default(),
                chunks: Section::default(),
                min_len: None,
                shrunk,
            };
            regions.push(region(len, false));
            if let Some(s) = shrunk {
                regions.push(region(s, true));
            }
            at += len + MIB;
        }
        Header {
            format: FORMAT,
            name: "img".into(),
            created: 0,
            source: "test".into(),
            layout: Layout {
                table,
                sector_size: 512,
                disk_size: at + MIB,
                partitions,
                backup_gpt_len: if table == TableKind::Gpt { 33 * 512 } else { 0 },
                extended: false,
            },
            regions,
            chunk_count: 0,
            data_bytes: 0,
        }
    }

    fn fit(header: &Header, target_size: u64) -> Result<Placement> {
        place(header, Path::new("t.img"), target_size, LayoutMode::Fit)
    }

    #[test]
    fn recovery_after_c_moves_to_the_end_and_c_takes_the_room() {
        // EFI 100, C: 300 (fits in 100), recovery-like fixed 50.
        let h = image(
            TableKind::Gpt,
            &[
                (100 * MIB, true, None),
                (300 * MIB, false, Some(100 * MIB)),
                (50 * MIB, true, None),
            ],
        );
        for target in [800 * MIB, 260 * MIB] {
            let p = fit(&h, target).expect("fits");
            let [efi, c, rec] = &p.partitions[..] else {
                panic!("three partitions")
            };
            assert_eq!((efi.offset, efi.len), (MIB, 100 * MIB));
            assert_eq!(rec.len, 50 * MIB);
            assert!(target - 33 * 512 - (rec.offset + rec.len) < MIB, "{target}: {p:?}");
            assert_eq!(c.from_shrunk, target < h.layout.disk_size);
            assert!(c.resize.is_some());
        }
    }

    #[test]
    fn a_target_barely_larger_than_the_source_keeps_every_partition_whole() {
        let h = image(TableKind::Gpt, &[(100 * MIB, true, None), (10 << 30, false, None)]);
        for extra in [512, MIB, 2 * MIB, 3 * MIB] {
            let p = fit(&h, h.layout.disk_size + extra).expect("a larger disk always fits");
            assert!(
                p.partitions.iter().all(|q| q.len >= q.source_len && !q.from_shrunk),
                "{p:?}"
            );
        }
    }

    #[test]
    fn too_small_names_the_partition_and_what_it_could_get() {
        let h = image(
            TableKind::Gpt,
            &[(100 * MIB, true, None), (300 * MIB, false, Some(120 * MIB))],
        );
        match fit(&h, 200 * MIB) {
            Err(Error::PartitionTooSmall {
                partition: 2,
                needed,
                available,
                ..
            }) => {
                assert_eq!(needed, 120 * MIB);
                assert!(available < needed && available > 90 * MIB, "{available}");
            }
            other => panic!("expected partition 2 refused, got {other:?}"),
        }
    }

    #[test]
    fn mbr_stops_at_32_bit_sectors_and_an_extended_partition_keeps_the_table() {
        let h = image(TableKind::Mbr, &[(100 * MIB, false, None), (64 * MIB, true, None)]);
        let p = fit(&h, 3 << 40).expect("fits");
        let last = p.partitions.last().expect("partitions");
        assert!(last.offset + last.len <= u64::from(u32::MAX) * 512);
        for m in p.moved() {
            m.check(TableKind::Mbr, 512).expect("an MBR can say it");
        }
        let mut h = h;
        h.layout.extended = true;
        let p = fit(&h, 3 << 30).expect("exact");
        assert_eq!(p.mode, LayoutMode::Exact);
    }

    proptest! {
        #[test]
        fn fit_never_overlaps_leaves_the_disk_or_goes_under_a_minimum(
            parts in proptest::collection::vec((1u64..4000, any::<bool>(), 0u64..100), 1..6),
            target_mib in 8u64..20000,
        ) {
            let parts: Vec<(u64, bool, Option<u64>)> = parts
                .into_iter()
                .map(|(mib, fixed, pct)| {
                    let len = mib * MIB;
                    (len, fixed, (pct > 10 && !fixed).then_some(len * pct / 100 / 512 * 512))
                })
                .collect();
            let h = image(TableKind::Gpt, &parts);
            let target = target_mib * MIB;
            match fit(&h, target) {
                Ok(p) if p.mode == LayoutMode::Fit => {
                    let end = target - 33 * 512;
                    let mut prev_end = 0;
                    for (q, (len, fixed, shrunk)) in p.partitions.iter().zip(&parts) {
                        prop_assert!(q.offset >= prev_end && q.offset + q.len <= end, "{p:?}");
                        prop_assert!(q.len >= shrunk.unwrap_or(*len), "{q:?} under its minimum");
                        if *fixed {
                            prop_assert_eq!(q.len, *len);
                        }
                        if target >= h.layout.min_target_size() {
                            prop_assert!(!q.from_shrunk, "{q:?} shrunk on a larger disk");
                        }
                        prev_end = q.offset + q.len;
                    }
                    for m in p.moved() {
                        prop_assert!(m.check(TableKind::Gpt, 512).is_ok());
                    }
                }
                Ok(_) => {}
                Err(Error::PartitionTooSmall { .. } | Error::TargetTooSmall { .. }) => {
                    prop_assert!(target < h.layout.min_target_size(), "a larger disk refused");
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
