//! Resizable deploys (`--layout fit`) of disks made by the tools users have: a Windows-style GPT
//! disk (EFI FAT32, Microsoft reserved, NTFS, Windows recovery after it) and a Linux MBR disk
//! (ext4, swap), each deployed to a disk 1.6x and 0.6x the source. Fixed partitions keep their
//! size, the recovery partition moves to the end with C:, every filesystem checks clean, fills
//! its partition, and every file reads back identical. A disk too small is refused with the
//! numbers, untouched.

use std::fs;
use std::path::{Path, PathBuf};

use crate::tools::*;
use fogcore::Error;
use fogcore::imaging::capture::{CaptureOptions, capture};
use fogcore::imaging::deploy::{DeployOptions, DeployReport, deploy};
use fogcore::imaging::resize::LayoutMode;
use fogcore::imaging::shrink::add_shrunk_copies;
use fogcore::imaging::store::Store;
use fogcore::progress::NoProgress;

const MIB: u64 = 1 << 20;

fn fit(verify: bool) -> DeployOptions {
    DeployOptions {
        verify,
        layout: LayoutMode::Fit,
        ..DeployOptions::default()
    }
}

fn put_files_ntfs(image: &Path, dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let local = dir.join("ntfs-file");
        fs::write(&local, data).expect("write file");
        sh(&format!("ntfscp -q {} {} {}", image.display(), local.display(), name));
    }
}

fn check_ntfs(target: &Path, part: (u64, u64), scratch: &Path, files: &[(String, Vec<u8>)]) {
    let image = extract(target, part, scratch);
    sh(&format!("ntfsfix -n {}", image.display()));
    // The volume fills its partition: NTFS counts every sector but the backup boot sector's.
    let boot = read_at(&image, 0, 512);
    let hidden = u32::from_le_bytes(boot[0x1C..0x20].try_into().expect("4 bytes"));
    assert_eq!(
        u64::from(hidden),
        part.0 / 512,
        "the boot sector's first sector is the partition's"
    );
    let sectors = u64::from_le_bytes(boot[0x28..0x30].try_into().expect("8 bytes"));
    assert!(
        part.1 - (sectors + 1) * 512 < 4096,
        "NTFS of {} sectors in a partition of {} bytes",
        sectors,
        part.1
    );
    for (name, data) in files {
        assert_eq!(
            &sh_bytes(&format!("ntfscat {} {}", image.display(), name)),
            data,
            "NTFS file {name}"
        );
    }
}

struct WindowsDisk {
    path: PathBuf,
    esp_files: Vec<(String, Vec<u8>)>,
    c_files: Vec<(String, Vec<u8>)>,
    recovery_files: Vec<(String, Vec<u8>)>,
}

/// 400 MiB: 1 EFI FAT32 100 MiB, 2 Microsoft reserved 16 MiB, 3 NTFS 240 MiB (24 MiB of files),
/// 4 Windows recovery NTFS 30 MiB right after C:, and free space after it.
fn windows_disk(dir: &Path) -> WindowsDisk {
    let path = dir.join("windows.img");
    make_sparse(&path, 400 * MIB);
    sh(&format!(
        "sgdisk -n 1:1M:+100M -t 1:EF00 -c 1:EFI -n 2:0:+16M -t 2:0C01 -c 2:MSR -n 3:0:+240M -t 3:0700 -c 3:C \
         -n 4:0:+30M -t 4:2700 -c 4:Recovery {}",
        path.display()
    ));
    let parts = partitions(&path);

    let esp = dir.join("esp.img");
    sh(&format!("mkfs.vfat -F 32 -n EFI -C {} {}", esp.display(), 100 * 1024));
    let esp_files = vec![("/EFI/BOOT/BOOTX64.EFI".to_string(), pseudo_random(400_000, 11))];
    sh(&format!("mmd -i {} ::/EFI ::/EFI/BOOT", esp.display()));
    for (name, data) in &esp_files {
        let local = dir.join("esp-file");
        fs::write(&local, data).expect("write");
        sh(&format!("mcopy -i {} {} ::{}", esp.display(), local.display(), name));
    }
    put_partition(&path, parts[0], &esp);

    let c = dir.join("c.img");
    make_sparse(&c, 240 * MIB);
    // Windows' boot code reads the partition's first sector from the boot sector: set it, as
    // Windows' own format does.
    sh(&format!(
        "mkfs.ntfs -q -F -f -L Windows -p {} {}",
        parts[2].0 / 512,
        c.display()
    ));
    let c_files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("/file{i}.bin"),
                pseudo_random(4_000_000 + i * 10_000, 20 + i as u64),
            )
        })
        .chain([("/notes.txt".to_string(), b"fit this disk\n".repeat(5000))])
        .collect();
    put_files_ntfs(&c, dir, &c_files);
    put_partition(&path, parts[2], &c);

    let recovery = dir.join("recovery.img");
    make_sparse(&recovery, 30 * MIB);
    sh(&format!(
        "mkfs.ntfs -q -F -f -L Recovery -p {} {}",
        parts[3].0 / 512,
        recovery.display()
    ));
    let recovery_files = vec![("/winre.wim".to_string(), pseudo_random(3_000_000, 31))];
    put_files_ntfs(&recovery, dir, &recovery_files);
    put_partition(&path, parts[3], &recovery);
    WindowsDisk {
        path,
        esp_files,
        c_files,
        recovery_files,
    }
}

fn check_windows_disk(disk: &WindowsDisk, target: &Path, report: &DeployReport, dir: &Path) {
    let out = sh(&format!("sgdisk -v {}", target.display()));
    assert!(
        out.contains("No problems found"),
        "sgdisk -v {}:\n{out}",
        target.display()
    );
    let src = partitions(&disk.path);
    let parts = partitions(target);
    assert_eq!(parts.len(), 4, "{parts:?}");
    for i in [0, 1, 3] {
        assert_eq!(parts[i].1, src[i].1, "partition {} must keep its size", i + 1);
    }
    assert_eq!(parts[0].0, src[0].0, "the first partition stays where it was");
    // Recovery is last and ends at the end of the usable space (1 MiB alignment aside).
    let last_usable = fs::metadata(target).expect("target").len() - 33 * 512;
    assert!(
        last_usable - (parts[3].0 + parts[3].1) < MIB,
        "{parts:?}: recovery not at the end"
    );
    for w in parts.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0 && w[1].0 % MIB == 0, "{parts:?}");
    }
    for (i, p) in report.partitions.iter().enumerate() {
        assert_eq!((p.offset, p.len), parts[i], "report and table differ");
    }

    let esp = extract(target, parts[0], &dir.join("t-esp.img"));
    sh(&format!("fsck.vfat -n {}", esp.display()));
    for (name, data) in &disk.esp_files {
        assert_eq!(
            &sh_bytes(&format!("mtype -i {} ::{}", esp.display(), name)),
            data,
            "ESP {name}"
        );
    }
    check_ntfs(target, parts[2], &dir.join("t-c.img"), &disk.c_files);
    check_ntfs(target, parts[3], &dir.join("t-recovery.img"), &disk.recovery_files);
}

#[test]
fn windows_gpt_disk_fits_larger_and_smaller_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = windows_disk(dir.path());
    let store = Store::open(dir.path().join("store")).expect("store");
    let captured = capture(&store, &disk.path, "win", &CaptureOptions::default(), &NoProgress).expect("capture");
    let shrunk = captured.minimum_sizes;
    // Only C: is resizable: EFI, MSR and recovery keep their sizes.
    assert_eq!(shrunk.len(), 1, "{shrunk:?}");
    let c_min = shrunk[0].min_len;
    assert!(c_min < 80 * MIB && c_min > 24 * MIB, "C: minimum {c_min}");
    assert!(
        add_shrunk_copies(&store, "win", None).expect("again").is_empty(),
        "done once"
    );

    for (name, size) in [("larger", 640 * MIB), ("smaller", 240 * MIB)] {
        let target = dir.path().join(format!("{name}.img"));
        make_sparse(&target, size);
        let report = deploy(&store, "win", &target, &fit(true), &NoProgress).expect(name);
        assert_eq!(report.layout, LayoutMode::Fit);
        let c = &report.partitions[2];
        assert_eq!(c.from_shrunk, size < 400 * MIB, "{name}: {c:?}");
        assert!(c.resize.is_some(), "{name}: C: not resized");
        check_windows_disk(&disk, &target, &report, dir.path());
    }

    // Too small for C:'s data: refused with the numbers before anything is written.
    let target = dir.path().join("tiny.img");
    make_sparse(&target, 160 * MIB);
    let err = deploy(&store, "win", &target, &fit(false), &NoProgress).expect_err("too small");
    match &err {
        Error::PartitionTooSmall {
            partition,
            needed,
            available,
            ..
        } => {
            assert_eq!(*partition, 3);
            assert_eq!(*needed, c_min);
            assert!(available < needed);
        }
        other => panic!("expected PartitionTooSmall, got {other}"),
    }
    assert!(err.to_string().contains("partition 3 (ntfs)"), "{err}");
    assert_eq!(allocated_bytes(&target), 0, "the refused target was written");
}

#[test]
fn linux_mbr_disk_fits_larger_and_smaller_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("linux.img");
    make_sparse(&path, 300 * MIB);
    sfdisk(&path, "label: dos\n,200M,83\n,32M,82\n", "");
    let parts = partitions(&path);
    let tree = dir.path().join("tree");
    let files = write_tree(&tree, 5);
    let ext = dir.path().join("ext.img");
    sh(&format!("mkfs.ext4 -q -F -d {} {} 200M", tree.display(), ext.display()));
    put_partition(&path, parts[0], &ext);
    let swap = dir.path().join("swap.img");
    make_sparse(&swap, 32 * MIB);
    sh(&format!(
        "mkswap -q -L fogswap -U 6b6b6b6b-1111-2222-3333-444455556666 {}",
        swap.display()
    ));
    put_partition(&path, parts[1], &swap);

    let store = Store::open(dir.path().join("store")).expect("store");
    // Captured without the minimum sizes, worked out after (as a node does for an agent's).
    let options = CaptureOptions {
        skip_minimum_sizes: true,
        ..CaptureOptions::default()
    };
    let captured = capture(&store, &path, "linux", &options, &NoProgress).expect("capture");
    assert!(captured.minimum_sizes.is_empty());
    let shrunk = add_shrunk_copies(&store, "linux", None).expect("shrink");
    assert_eq!(shrunk.len(), 1, "{shrunk:?}");
    assert!(shrunk[0].min_len < 100 * MIB, "{shrunk:?}");

    for (name, size) in [("larger", 480 * MIB), ("smaller", 180 * MIB)] {
        let target = dir.path().join(format!("{name}.img"));
        make_sparse(&target, size);
        let report = deploy(&store, "linux", &target, &fit(true), &NoProgress).expect(name);
        let got = partitions(&target);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, parts[1].1, "{name}: swap keeps its size");
        assert!(
            size - (got[1].0 + got[1].1) < MIB,
            "{name}: {got:?} leaves the disk's end unused"
        );
        assert_eq!((report.partitions[0].offset, report.partitions[0].len), got[0]);
        let ext = extract(&target, got[0], &dir.path().join("t-ext.img"));
        sh(&format!("e2fsck -fn {}", ext.display()));
        let info = sh(&format!("dumpe2fs -h {} 2>/dev/null", ext.display()));
        let field = |key: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{key} in dumpe2fs"))
        };
        assert_eq!(
            field("Block count:") * field("Block size:"),
            got[0].1,
            "{name}: ext4 fills its partition"
        );
        for (file, data) in &files {
            assert_eq!(&debugfs_cat(&ext, file), data, "{name}: file {file}");
        }
        let swap = extract(&target, got[1], &dir.path().join("t-swap.img"));
        let blkid = sh(&format!("blkid -p -o export {}", swap.display()));
        assert!(blkid.contains("UUID=6b6b6b6b-1111-2222-3333-444455556666"), "{blkid}");
    }

    // exact keeps the table as it was.
    let target = dir.path().join("exact.img");
    make_sparse(&target, 480 * MIB);
    let options = DeployOptions {
        layout: LayoutMode::Exact,
        ..DeployOptions::default()
    };
    deploy(&store, "linux", &target, &options, &NoProgress).expect("exact");
    assert_eq!(partitions(&target), parts);
}

/// A loop device over one partition of a disk image, detached when dropped.
struct PartitionLoop(String);

impl PartitionLoop {
    fn new(disk: &Path, (offset, len): (u64, u64)) -> PartitionLoop {
        let dev = sh(&format!(
            "losetup -f --show -o {offset} --sizelimit {len} {}",
            disk.display()
        ));
        PartitionLoop(dev.trim().to_string())
    }
}

impl Drop for PartitionLoop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// `files` under the read-only mount of `dev` at `dir` are identical.
fn mounted_files_match(dev: &str, dir: &Path, files: &[(String, Vec<u8>)], what: &str) {
    fs::create_dir_all(dir).expect("mount point");
    sh(&format!("mount -o ro {dev} {}", dir.display()));
    let mismatch = files
        .iter()
        .find(|(name, data)| fs::read(dir.join(name.trim_start_matches('/'))).ok().as_ref() != Some(data))
        .map(|(name, _)| name.clone());
    sh(&format!("umount {}", dir.display()));
    assert_eq!(mismatch, None, "{what}: a file differs");
}

#[test]
fn xfs_and_btrfs_grow_to_a_larger_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("linux.img");
    make_sparse(&path, 560 * MIB);
    // mkfs.xfs wants at least 300 MiB.
    sh(&format!(
        "sgdisk -n 1:1M:+320M -t 1:8300 -n 2:0:+200M -t 2:8300 {}",
        path.display()
    ));
    let parts = partitions(&path);
    let tree = dir.path().join("tree");
    let files = write_tree(&tree, 9);

    let xfs = dir.path().join("xfs.img");
    make_sparse(&xfs, parts[0].1);
    sh(&format!("mkfs.xfs -q {}", xfs.display()));
    let mnt = dir.path().join("mnt");
    fs::create_dir_all(&mnt).expect("mnt");
    sh(&format!("mount -o loop {} {}", xfs.display(), mnt.display()));
    sh(&format!(
        "cp -a {}/. {}/; umount {}",
        tree.display(),
        mnt.display(),
        mnt.display()
    ));
    put_partition(&path, parts[0], &xfs);
    let btrfs = dir.path().join("btrfs.img");
    make_sparse(&btrfs, parts[1].1);
    sh(&format!(
        "mkfs.btrfs -q --rootdir {} {}",
        tree.display(),
        btrfs.display()
    ));
    put_partition(&path, parts[1], &btrfs);

    let store = Store::open(dir.path().join("store")).expect("store");
    let captured = capture(&store, &path, "grow", &CaptureOptions::default(), &NoProgress).expect("capture");
    assert!(captured.minimum_sizes.is_empty(), "XFS and btrfs get no shrunk copies");

    let target = dir.path().join("target.img");
    make_sparse(&target, 900 * MIB);
    let report = deploy(&store, "grow", &target, &fit(true), &NoProgress).expect("deploy");
    let got = partitions(&target);
    assert!(got[0].1 > parts[0].1 && got[1].1 > parts[1].1, "{got:?}");
    assert!(
        report.partitions.iter().all(|p| p.resize.is_some()),
        "{:?}",
        report.partitions
    );

    let xfs_dev = PartitionLoop::new(&target, got[0]);
    sh(&format!("xfs_repair -n {}", xfs_dev.0));
    let sb = sh(&format!(
        "xfs_db -r -c 'sb 0' -c 'p dblocks' -c 'p blocksize' {}",
        xfs_dev.0
    ));
    let value = |key: &str| -> u64 {
        sb.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim_start_matches([' ', '=']).trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in {sb}"))
    };
    let xfs_bytes = value("dblocks") * value("blocksize");
    assert!(
        got[0].1 - xfs_bytes < value("blocksize") * 16,
        "XFS of {xfs_bytes} in {}",
        got[0].1
    );
    mounted_files_match(&xfs_dev.0, &dir.path().join("m-xfs"), &files, "XFS");

    let btrfs_dev = PartitionLoop::new(&target, got[1]);
    sh(&format!("btrfs check --readonly {} 2>&1", btrfs_dev.0));
    let super_block = sh(&format!("btrfs inspect-internal dump-super {}", btrfs_dev.0));
    let total: u64 = super_block
        .lines()
        .find_map(|l| l.strip_prefix("dev_item.total_bytes"))
        .and_then(|v| v.trim().parse().ok())
        .expect("dev_item.total_bytes");
    assert_eq!(total, got[1].1, "btrfs fills its partition");
    mounted_files_match(&btrfs_dev.0, &dir.path().join("m-btrfs"), &files, "btrfs");

    // XFS cannot shrink: a target without room for it is refused, naming it.
    let small = dir.path().join("small.img");
    make_sparse(&small, 400 * MIB);
    match deploy(&store, "grow", &small, &fit(false), &NoProgress) {
        Err(Error::PartitionTooSmall { partition: 1, .. }) => {}
        other => panic!("expected partition 1 refused, got {other:?}"),
    }
}

/// A deploy fed in any order (as a multicast receiver will feed it) gives the same disk as one
/// written in stream order, with the fit layout applied the same way.
#[test]
fn a_deploy_written_in_reverse_order_gives_the_same_disk() {
    use fogcore::imaging::chunk::ChunkSource;
    use fogcore::imaging::deploy::prepare;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("linux.img");
    make_sparse(&path, 96 * MIB);
    sfdisk(&path, "label: dos\n,64M,83\n,16M,82\n", "");
    let parts = partitions(&path);
    let tree = dir.path().join("tree");
    write_tree(&tree, 7);
    let ext = dir.path().join("ext.img");
    sh(&format!("mkfs.ext4 -q -F -d {} {} 64M", tree.display(), ext.display()));
    put_partition(&path, parts[0], &ext);
    let store = Store::open(dir.path().join("store")).expect("store");
    capture(&store, &path, "img", &CaptureOptions::default(), &NoProgress).expect("capture");

    let in_order = dir.path().join("in-order.img");
    make_sparse(&in_order, 160 * MIB);
    deploy(&store, "img", &in_order, &fit(false), &NoProgress).expect("deploy");

    let reversed = dir.path().join("reversed.img");
    make_sparse(&reversed, 160 * MIB);
    let manifest = store.manifest("img").expect("manifest");
    let reader = store.reader().expect("reader");
    let prepared = prepare(&manifest, &reversed, &fit(false)).expect("prepare");
    let regions = prepared.regions();
    let writer = prepared.into_writer().expect("writer");
    let mut pieces = Vec::new();
    for &r in &regions {
        let mut at = 0u64;
        for chunk in manifest.chunks(&manifest.header.regions[r]) {
            let chunk = chunk.expect("chunk ref");
            pieces.push((r, at, chunk.id));
            at += u64::from(chunk.len);
        }
    }
    for (region, stream_offset, id) in pieces.into_iter().rev() {
        let mut data = Vec::new();
        assert!(
            reader.get_into(&id, &mut data).expect("read chunk"),
            "chunk {id} missing"
        );
        writer.write(region, stream_offset, &data).expect("write");
    }
    let shrunk_copy = manifest
        .header
        .regions
        .iter()
        .position(|r| r.shrunk)
        .expect("a shrunk copy");
    assert!(
        writer.write(shrunk_copy, 0, b"x").is_err(),
        "a region this deploy does not write"
    );
    let report = writer.finish(&reader, &NoProgress).expect("finish");
    assert_eq!(report.layout, LayoutMode::Fit);
    assert!(
        fs::read(&in_order).expect("in order") == fs::read(&reversed).expect("reversed"),
        "the disks differ"
    );
}
