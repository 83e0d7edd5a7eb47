//! Capture and deploy of XFS, btrfs and exFAT filled through a mount (the kernel's, or exfat-fuse
//! for exFAT, which this kernel cannot mount), with files written and deleted so free space lies
//! between used blocks. Only the used blocks may be stored; after deploy the filesystem must check
//! clean with its own fsck and every file must read back identical through a read-only mount.
//! LUKS, LVM and BitLocker volumes are recognised, named in the report and deployed byte for byte.
//!
//! Tests that mount or make loop devices need root; without it they print why and pass.

use std::fs;
use std::path::{Path, PathBuf};

use crate::tools::*;
use fogcore::imaging::capture::{CaptureOptions, CaptureReport, capture};
use fogcore::imaging::deploy::{DeployOptions, deploy};
use fogcore::imaging::store::Store;
use fogcore::progress::NoProgress;

const MIB: u64 = 1 << 20;

/// True when running as root; otherwise says which test is skipped and why.
fn root_or_skip(test: &str) -> bool {
    let root = sh("id -u").trim() == "0";
    if !root {
        eprintln!("skipping {test}: it mounts filesystems or makes loop devices, which needs root");
    }
    root
}

/// Something mounted on `dir`, unmounted (and its loop device detached) when dropped, so a failed
/// assertion leaves nothing behind.
struct Mount {
    dir: PathBuf,
    loop_dev: Option<String>,
}

impl Mount {
    /// Mounts `image` with the kernel driver through a loop device.
    fn kernel(image: &Path, dir: &Path, options: &str) -> Mount {
        fs::create_dir_all(dir).expect("mount point");
        sh(&format!(
            "mount -o loop,{options} {} {}",
            image.display(),
            dir.display()
        ));
        Mount {
            dir: dir.to_path_buf(),
            loop_dev: None,
        }
    }

    /// Mounts the exFAT `image` with exfat-fuse, which wants a block device.
    fn exfat_fuse(image: &Path, dir: &Path, options: &str) -> Mount {
        fs::create_dir_all(dir).expect("mount point");
        let loop_dev = sh(&format!("losetup -f --show {}", image.display())).trim().to_string();
        let mount = Mount {
            dir: dir.to_path_buf(),
            loop_dev: Some(loop_dev.clone()),
        };
        sh(&format!(
            "mount.exfat-fuse -o {options} {loop_dev} {} 2>&1",
            dir.display()
        ));
        mount
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // A busy mount (another test's child process briefly holding a file) refuses a plain
        // umount; try again, then detach it lazily, so no run leaves a mount behind.
        let umount = |args: &[&str]| {
            std::process::Command::new("umount")
                .args(args)
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(&[]) {
            std::thread::sleep(std::time::Duration::from_millis(500));
            if !umount(&[]) {
                umount(&["-l"]);
            }
        }
        if let Some(dev) = &self.loop_dev {
            let _ = std::process::Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// Writes about 20 MiB of files under `root` (nested directories, sizes from empty to 4 MiB) with
/// more files between them that are deleted again; returns the kept files (path under `root`,
/// content).
fn write_and_delete(root: &Path, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut kept = Vec::new();
    for i in 0..9u64 {
        let rel = match i % 3 {
            0 => format!("top{i}.bin"),
            1 => format!("docs/file{i}.dat"),
            _ => format!("docs/deep/er/f{i}.bin"),
        };
        let len = [
            4 * MIB,
            3 * MIB,
            1,
            2 * MIB + 12_345,
            0,
            3 * MIB,
            700_001,
            2 * MIB,
            4 * MIB,
        ][i as usize];
        let data = pseudo_random(len as usize, seed * 100 + i);
        let path = root.join(&rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, &data).expect("write file");
        kept.push((rel, data));
        let victim = root.join(format!("victim{i}.bin"));
        fs::write(&victim, pseudo_random(3 * MIB as usize, seed * 1000 + i)).expect("write victim");
    }
    sh(&format!("sync -f {}", root.display()));
    for i in 0..9 {
        fs::remove_file(root.join(format!("victim{i}.bin"))).expect("delete victim");
    }
    kept
}

/// Every kept file reads back identical under `root`.
fn assert_files(root: &Path, files: &[(String, Vec<u8>)], what: &str) {
    for (rel, data) in files {
        let got = fs::read(root.join(rel)).unwrap_or_else(|e| panic!("{what}: read {rel}: {e}"));
        assert!(
            got == *data,
            "{what}: {rel} reads back different ({} bytes, {} expected)",
            got.len(),
            data.len()
        );
    }
}

/// Captures `source` as `name` into a new store under `dir`, deploys it to a new file and returns
/// the report and that file.
fn capture_and_deploy(dir: &Path, source: &Path, name: &str) -> (CaptureReport, PathBuf) {
    let store = Store::open(dir.join(format!("{name}-store"))).expect("store");
    let report = capture(&store, source, name, &CaptureOptions::default(), &NoProgress).expect("capture");
    let target = dir.join(format!("{name}-deployed.img"));
    let options = DeployOptions {
        verify: true,
        ..DeployOptions::default()
    };
    deploy(&store, name, &target, &options, &NoProgress).expect("deploy");
    (report, target)
}

/// The one region of a capture that is a partition (or the whole device), checked to be
/// `filesystem`; its used bytes and size.
fn region(report: &CaptureReport, filesystem: &str) -> (u64, u64) {
    let found: Vec<_> = report.regions.iter().map(|r| r.filesystem.as_str()).collect();
    let region = report
        .regions
        .iter()
        .find(|r| r.filesystem == filesystem)
        .unwrap_or_else(|| panic!("no {filesystem} region in the report: {found:?}"));
    eprintln!(
        "{filesystem}: stored {} of {} bytes ({:.1}%)",
        region.used_bytes,
        region.size,
        100.0 * region.used_bytes as f64 / region.size as f64
    );
    (region.used_bytes, region.size)
}

/// Largest free space btree depth over all allocation groups, as xfs_db reads it.
fn xfs_bnobt_levels(image: &Path) -> u64 {
    let agcount: u64 = sh(&format!("xfs_db -r -c 'sb 0' -c 'p agcount' {}", image.display()))
        .trim()
        .trim_start_matches("agcount = ")
        .parse()
        .expect("agcount");
    (0..agcount)
        .map(|ag| {
            sh(&format!("xfs_db -r -c 'agf {ag}' -c 'p bnolevel' {}", image.display()))
                .trim()
                .trim_start_matches("bnolevel = ")
                .parse::<u64>()
                .expect("bnolevel")
        })
        .max()
        .unwrap_or(0)
}

/// XFS (v5, 1 KiB blocks) in the second partition of a GPT disk, so offsets inside a disk count.
/// Many small files with every other one deleted give a free space btree of two levels.
#[test]
fn xfs_in_a_gpt_partition_stores_only_used_blocks() {
    if !root_or_skip("xfs_in_a_gpt_partition_stores_only_used_blocks") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let xfs = dir.path().join("xfs.img");
    make_sparse(&xfs, 320 * MIB);
    sh(&format!("mkfs.xfs -q -b size=1024 {}", xfs.display()));
    let mnt = dir.path().join("mnt");
    let mut files = {
        let _mount = Mount::kernel(&xfs, &mnt, "rw");
        let mut files = write_and_delete(&mnt, 1);
        fs::create_dir(mnt.join("frag")).expect("mkdir frag");
        for i in 0..600 {
            fs::write(mnt.join(format!("frag/{i}")), pseudo_random(4096, 7000 + i)).expect("small file");
        }
        sh(&format!("sync -f {}", mnt.display()));
        for i in (0..600).step_by(2) {
            fs::remove_file(mnt.join(format!("frag/{i}"))).expect("delete small file");
        }
        files.extend(
            (1..600)
                .step_by(2)
                .map(|i| (format!("frag/{i}"), pseudo_random(4096, 7000 + i))),
        );
        files
    };
    assert!(
        xfs_bnobt_levels(&xfs) >= 2,
        "the free space btree did not grow a second level"
    );
    files.sort();

    let disk = dir.path().join("disk.img");
    make_sparse(&disk, 400 * MIB);
    sh(&format!(
        "sgdisk -n 1:1M:+8M -t 1:EF02 -n 2:0:+320M -t 2:8300 {}",
        disk.display()
    ));
    let parts = partitions(&disk);
    put_partition(&disk, parts[1], &xfs);
    write_at(&disk, parts[0].0, &pseudo_random(100_000, 3));

    let (report, target) = capture_and_deploy(dir.path(), &disk, "xfs");
    let filesystems: Vec<_> = report.regions.iter().map(|r| r.filesystem.as_str()).collect();
    assert_eq!(filesystems, ["raw", "raw", "xfs"]);
    let (used, size) = region(&report, "xfs");
    assert!(
        used < size / 2,
        "stored {used} bytes of a {size}-byte XFS holding 21 MiB"
    );
    assert_eq!(partitions(&target), parts);
    let deployed = extract(&target, parts[1], &dir.path().join("xfs-out.img"));
    sh(&format!("xfs_repair -n {} 2>&1", deployed.display()));
    let _mount = Mount::kernel(&deployed, &dir.path().join("check"), "ro,nouuid");
    assert_files(&dir.path().join("check"), &files, "xfs");
}

/// btrfs made by mkfs.btrfs --rootdir (single data, DUP metadata), then changed through a mount:
/// files deleted and more written, so data block groups have holes.
#[test]
fn btrfs_stores_only_allocated_extents() {
    if !root_or_skip("btrfs_stores_only_allocated_extents") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    let mut files = write_and_delete(&tree, 2);
    let image = dir.path().join("btrfs.img");
    make_sparse(&image, 256 * MIB);
    sh(&format!(
        "mkfs.btrfs -q --rootdir {} {}",
        tree.display(),
        image.display()
    ));
    let mnt = dir.path().join("mnt");
    {
        let _mount = Mount::kernel(&image, &mnt, "rw");
        let more = write_and_delete(&mnt.join("more"), 3);
        files.extend(more.into_iter().map(|(rel, data)| (format!("more/{rel}"), data)));
        fs::remove_file(mnt.join("top0.bin")).expect("delete a file mkfs wrote");
        files.retain(|(rel, _)| rel != "top0.bin");
    }

    let (report, deployed) = capture_and_deploy(dir.path(), &image, "btrfs");
    let (used, size) = region(&report, "btrfs");
    let file_bytes: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert!(used < size / 2, "stored {used} bytes of a {size}-byte btrfs");
    assert!(
        used < file_bytes + 16 * MIB,
        "stored {used} bytes for {file_bytes} bytes of files: free space in chunks kept?"
    );
    sh(&format!("btrfs check --readonly {} 2>&1", deployed.display()));
    let _mount = Mount::kernel(&deployed, &dir.path().join("check"), "ro");
    assert_files(&dir.path().join("check"), &files, "btrfs");
}

/// exFAT from mkfs.exfat, filled through exfat-fuse.
#[test]
fn exfat_stores_only_allocated_clusters() {
    if !root_or_skip("exfat_stores_only_allocated_clusters") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("exfat.img");
    make_sparse(&image, 256 * MIB);
    sh(&format!("mkfs.exfat {} >/dev/null", image.display()));
    let files = {
        let _mount = Mount::exfat_fuse(&image, &dir.path().join("mnt"), "rw");
        write_and_delete(&dir.path().join("mnt"), 4)
    };
    sh(&format!("fsck.exfat -n {} 2>&1", image.display()));

    let (report, deployed) = capture_and_deploy(dir.path(), &image, "exfat");
    let (used, size) = region(&report, "exfat");
    assert!(
        used < size / 2,
        "stored {used} bytes of a {size}-byte exFAT holding 20 MiB"
    );
    sh(&format!("fsck.exfat -n {} 2>&1", deployed.display()));
    let _mount = Mount::exfat_fuse(&deployed, &dir.path().join("check"), "ro");
    assert_files(&dir.path().join("check"), &files, "exfat");
}

/// Captures `image`, checks the report names `filesystem` and that deploy gives back the same
/// bytes.
fn assert_captured_whole(dir: &Path, image: &Path, filesystem: &str) {
    let (report, deployed) = capture_and_deploy(dir, image, filesystem);
    let (used, size) = region(&report, filesystem);
    assert!(used > 0 && used <= size);
    sh(&format!("cmp {} {}", image.display(), deployed.display()));
}

/// LUKS2 from cryptsetup, its data area filled as if written through dm-crypt.
#[test]
fn luks_is_named_and_deployed_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("luks.img");
    make_sparse(&image, 32 * MIB);
    let key = dir.path().join("key");
    fs::write(&key, pseudo_random(64, 11)).expect("key file");
    sh(&format!(
        "cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
         --key-file {} {}",
        key.display(),
        image.display()
    ));
    // Encrypted data, with a hole of zeros in the middle.
    write_at(&image, 16 * MIB, &pseudo_random(5 * MIB as usize, 12));
    write_at(&image, 24 * MIB, &pseudo_random(3 * MIB as usize, 13));
    assert_captured_whole(dir.path(), &image, "luks");
    let deployed = dir.path().join("luks-deployed.img");
    sh(&format!(
        "cryptsetup open --test-passphrase --key-file {} {}",
        key.display(),
        deployed.display()
    ));
}

/// An LVM2 physical volume from pvcreate, with data after its metadata area.
#[test]
fn lvm_is_named_and_deployed_byte_for_byte() {
    if !root_or_skip("lvm_is_named_and_deployed_byte_for_byte") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("lvm.img");
    make_sparse(&image, 32 * MIB);
    {
        let loop_dev = sh(&format!("losetup -f --show {}", image.display())).trim().to_string();
        let created = std::process::Command::new("pvcreate")
            .args(["-y", "--devices", &loop_dev, &loop_dev])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output();
        sh(&format!("losetup -d {loop_dev}"));
        let out = created.expect("run pvcreate");
        assert!(
            out.status.success(),
            "pvcreate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    write_at(&image, 4 * MIB, &pseudo_random(6 * MIB as usize, 21));
    assert_captured_whole(dir.path(), &image, "lvm");
}

/// A BitLocker boot sector (no tool makes one here) followed by encrypted-looking data.
#[test]
fn bitlocker_is_named_and_deployed_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("bitlocker.img");
    make_sparse(&image, 16 * MIB);
    let mut boot = pseudo_random(512, 31);
    boot[..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    boot[3..11].copy_from_slice(b"-FVE-FS-");
    boot[510..].copy_from_slice(&[0x55, 0xAA]);
    write_at(&image, 0, &boot);
    write_at(&image, MIB, &pseudo_random(4 * MIB as usize, 32));
    write_at(&image, 9 * MIB, &pseudo_random(MIB as usize, 33));
    assert_captured_whole(dir.path(), &image, "bitlocker");
}
