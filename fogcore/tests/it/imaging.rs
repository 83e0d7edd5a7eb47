//! Capture and deploy of real disks made by the tools users have: sgdisk/sfdisk tables,
//! filesystems by mkfs.ext4, mkfs.vfat and mkfs.ntfs filled without mounting. After deploy the
//! filesystems must check clean with e2fsck, fsck.vfat and ntfsfix, and every file must read back
//! identical.

use std::fs;
use std::path::{Path, PathBuf};

use crate::tools::*;
use fogcore::Error;
use fogcore::imaging::capture::{CaptureOptions, capture};
use fogcore::imaging::deploy::{DeployOptions, deploy};
use fogcore::imaging::resize::LayoutMode;
use fogcore::imaging::store::Store;
use fogcore::imaging::wipe::{WipeMode, wipe};
use fogcore::progress::NoProgress;

const MIB: u64 = 1 << 20;

/// These tests check the source's table is kept as it was: `exact` (resizing is in `resize.rs`).
fn deploy_opts(verify: bool) -> DeployOptions {
    DeployOptions {
        verify,
        layout: LayoutMode::Exact,
        ..DeployOptions::default()
    }
}

/// A GPT disk: 1 EFI FAT32, 2 ext4, 3 NTFS, 4 swap, 5 BIOS boot (raw bytes).
struct GptDisk {
    path: PathBuf,
    ext_files: Vec<(String, Vec<u8>)>,
    fat_files: Vec<(String, Vec<u8>)>,
    ntfs_files: Vec<(String, Vec<u8>)>,
}

fn build_gpt_disk(dir: &Path) -> GptDisk {
    let path = dir.join("gpt.img");
    make_sparse(&path, 200 * MIB);
    sh(&format!(
        "sgdisk -n 1:1M:+40M -t 1:EF00 -c 1:EFI -n 2:0:+64M -t 2:8300 -c 2:root -n 3:0:+40M -t 3:0700 \
         -n 4:0:+16M -t 4:8200 -n 5:0:+1M -t 5:EF02 {}",
        path.display()
    ));
    let parts = partitions(&path);

    let tree = dir.join("tree");
    let ext_files = write_tree(&tree, 1);
    let ext = dir.join("ext.img");
    sh(&format!("mkfs.ext4 -q -F -d {} {} 64M", tree.display(), ext.display()));
    put_partition(&path, parts[1], &ext);

    let fat = dir.join("fat.img");
    sh(&format!("mkfs.vfat -F 32 -n EFI -C {} {}", fat.display(), 40 * 1024));
    let fat_files = vec![
        ("/EFI/BOOT/BOOTX64.EFI".to_string(), pseudo_random(300_000, 7)),
        (
            "/EFI/fog/grub.cfg".to_string(),
            b"set timeout=5\nmenuentry fog {}\n".repeat(50),
        ),
    ];
    sh(&format!("mmd -i {} ::/EFI ::/EFI/BOOT ::/EFI/fog", fat.display()));
    for (name, data) in &fat_files {
        let local = dir.join("fatfile");
        fs::write(&local, data).expect("write fat file");
        sh(&format!("mcopy -i {} {} ::{}", fat.display(), local.display(), name));
    }
    put_partition(&path, parts[0], &fat);

    let ntfs = dir.join("ntfs.img");
    make_sparse(&ntfs, 40 * MIB);
    sh(&format!("mkfs.ntfs -q -F -f -L data {}", ntfs.display()));
    let ntfs_files = vec![
        ("/report.txt".to_string(), b"quarterly numbers\n".repeat(3000)),
        ("/blob.bin".to_string(), pseudo_random(2_500_000, 9)),
    ];
    for (name, data) in &ntfs_files {
        let local = dir.join("ntfsfile");
        fs::write(&local, data).expect("write ntfs file");
        sh(&format!("ntfscp -q {} {} {}", ntfs.display(), local.display(), name));
    }
    put_partition(&path, parts[2], &ntfs);

    let swap = dir.join("swap.img");
    make_sparse(&swap, 16 * MIB);
    sh(&format!(
        "mkswap -q -L fogswap -U 5a5a5a5a-1111-2222-3333-444455556666 {}",
        swap.display()
    ));
    put_partition(&path, parts[3], &swap);

    // Boot code in the MBR and a "core.img" in the BIOS boot partition, as GRUB would leave.
    let mut boot_code = pseudo_random(440, 3);
    boot_code.truncate(440);
    write_at(&path, 0, &boot_code);
    write_at(&path, parts[4].0, &pseudo_random(30_000, 4));
    GptDisk {
        path,
        ext_files,
        fat_files,
        ntfs_files,
    }
}

fn check_gpt_disk(disk: &GptDisk, target: &Path, dir: &Path) {
    let out = sh(&format!("sgdisk -v {}", target.display()));
    assert!(
        out.contains("No problems found"),
        "sgdisk -v on {}:\n{out}",
        target.display()
    );
    let src_parts = partitions(&disk.path);
    let parts = partitions(target);
    assert_eq!(src_parts, parts, "partition table changed");
    assert_eq!(
        read_at(&disk.path, 0, 440),
        read_at(target, 0, 440),
        "MBR boot code lost"
    );
    assert_eq!(
        read_at(&disk.path, parts[4].0, parts[4].1),
        read_at(target, parts[4].0, parts[4].1),
        "BIOS boot partition differs"
    );

    let ext = extract(target, parts[1], &dir.join("t-ext.img"));
    sh(&format!("e2fsck -fn {}", ext.display()));
    for (name, data) in &disk.ext_files {
        assert_eq!(&debugfs_cat(&ext, name), data, "ext4 file {name}");
    }
    let fat = extract(target, parts[0], &dir.join("t-fat.img"));
    sh(&format!("fsck.vfat -n {}", fat.display()));
    for (name, data) in &disk.fat_files {
        let out = dir.join("fat-out");
        let _ = fs::remove_file(&out);
        sh(&format!("mcopy -i {} ::{} {}", fat.display(), name, out.display()));
        assert_eq!(&fs::read(&out).expect("read mcopy output"), data, "FAT file {name}");
    }
    let ntfs = extract(target, parts[2], &dir.join("t-ntfs.img"));
    sh(&format!("ntfsfix -n {}", ntfs.display()));
    for (name, data) in &disk.ntfs_files {
        assert_eq!(
            &sh_bytes(&format!("ntfscat {} {}", ntfs.display(), name)),
            data,
            "NTFS file {name}"
        );
    }
    let swap = extract(target, parts[3], &dir.join("t-swap.img"));
    let blkid = sh(&format!("blkid -p -o export {}", swap.display()));
    assert!(
        blkid.contains("UUID=5a5a5a5a-1111-2222-3333-444455556666"),
        "swap UUID lost: {blkid}"
    );
    assert!(blkid.contains("LABEL=fogswap"), "swap label lost: {blkid}");
}

#[test]
fn gpt_disk_round_trips_to_a_larger_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = build_gpt_disk(dir.path());
    let store = Store::open(dir.path().join("store")).expect("store");
    let report = capture(&store, &disk.path, "gpt", &CaptureOptions::default(), &NoProgress).expect("capture");
    assert!(
        report.data_bytes < 120 * MIB,
        "stored {} bytes of a 200 MiB disk: used maps not applied?",
        report.data_bytes
    );
    let filesystems: Vec<_> = report.regions.iter().map(|r| r.filesystem.as_str()).collect();
    assert_eq!(filesystems, ["raw", "fat", "ext", "ntfs", "swap", "raw"]);

    let target = dir.path().join("target.img");
    make_sparse(&target, 300 * MIB);
    deploy(&store, "gpt", &target, &deploy_opts(true), &NoProgress).expect("deploy");
    check_gpt_disk(&disk, &target, dir.path());

    // A new target file is created sparse: only the image's data is allocated.
    let fresh = dir.path().join("fresh.img");
    let r = deploy(&store, "gpt", &fresh, &deploy_opts(false), &NoProgress).expect("deploy fresh");
    let allocated = allocated_bytes(&fresh);
    assert!(
        allocated <= report.data_bytes + 4 * MIB,
        "fresh target has {allocated} bytes allocated for {} of data",
        report.data_bytes
    );
    assert!(r.bytes_written <= report.data_bytes);
    check_gpt_disk(&disk, &fresh, dir.path());
}

#[test]
fn mbr_disk_with_logical_partitions_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mbr.img");
    make_sparse(&path, 160 * MIB);
    sfdisk(&path, "label: dos\n,32M,83\n,,5\n,40M,83\n,40M,06\n", "");
    let parts = partitions(&path);
    assert_eq!(parts.len(), 3, "sfdisk made {parts:?}");
    let tree = dir.path().join("tree");
    let files = write_tree(&tree, 2);
    for (i, part) in parts.iter().enumerate().take(2) {
        let img = dir.path().join(format!("p{i}.img"));
        sh(&format!(
            "mkfs.ext4 -q -F -d {} {} {}k",
            tree.display(),
            img.display(),
            part.1 / 1024
        ));
        put_partition(&path, *part, &img);
    }
    let fat = dir.path().join("fat16.img");
    sh(&format!("mkfs.vfat -F 16 -C {} {}", fat.display(), parts[2].1 / 1024));
    sh(&format!(
        "mcopy -i {} {} ::/DATA.BIN",
        fat.display(),
        tree.join("bin/blob0").display()
    ));
    put_partition(&path, parts[2], &fat);

    let store = Store::open(dir.path().join("store")).expect("store");
    let report = capture(&store, &path, "mbr", &CaptureOptions::default(), &NoProgress).expect("capture");
    let filesystems: Vec<_> = report.regions.iter().map(|r| r.filesystem.as_str()).collect();
    assert_eq!(filesystems, ["raw", "ext", "ext", "fat"]);
    let target = dir.path().join("target.img");
    make_sparse(&target, 200 * MIB);
    deploy(&store, "mbr", &target, &deploy_opts(true), &NoProgress).expect("deploy");
    assert_eq!(
        sh(&format!("sfdisk -d {}", path.display())).replace(&path.display().to_string(), "X"),
        sh(&format!("sfdisk -d {}", target.display())).replace(&target.display().to_string(), "X")
    );
    for (i, part) in partitions(&target).iter().enumerate().take(2) {
        let ext = extract(&target, *part, &dir.path().join(format!("t{i}.img")));
        sh(&format!("e2fsck -fn {}", ext.display()));
        for (name, data) in &files {
            assert_eq!(&debugfs_cat(&ext, name), data, "partition {} file {name}", i + 1);
        }
    }
    let fat = extract(&target, partitions(&target)[2], &dir.path().join("t-fat.img"));
    sh(&format!("fsck.vfat -n {}", fat.display()));
    assert_eq!(
        sh_bytes(&format!("mtype -i {} ::/DATA.BIN", fat.display())),
        fs::read(tree.join("bin/blob0")).expect("blob")
    );
}

#[test]
fn disk_with_4096_byte_sectors_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("4k.img");
    make_sparse(&path, 96 * MIB);
    // sfdisk 2.38 has no --sector-size; fdisk -b does.
    sh(&format!(
        "printf 'g\\nn\\n1\\n\\n+48M\\nw\\n' | fdisk -b 4096 {} >/dev/null",
        path.display()
    ));
    let parts = partitions_4k(&path);
    let tree = dir.path().join("tree");
    let files = write_tree(&tree, 3);
    let ext = dir.path().join("ext.img");
    sh(&format!(
        "mkfs.ext4 -q -F -b 4096 -d {} {} {}k",
        tree.display(),
        ext.display(),
        parts[0].1 / 1024
    ));
    put_partition(&path, parts[0], &ext);

    let store = Store::open(dir.path().join("store")).expect("store");
    capture(&store, &path, "4k", &CaptureOptions::default(), &NoProgress).expect("capture");
    assert_eq!(store.manifest("4k").expect("manifest").header.layout.sector_size, 4096);
    let target = dir.path().join("target.img");
    make_sparse(&target, 128 * MIB);
    deploy(&store, "4k", &target, &deploy_opts(true), &NoProgress).expect("deploy");
    let table = sh(&format!("fdisk -b 4096 -l {} 2>&1", target.display()));
    for problem in ["corrupt", "mismatch", "invalid", "rror"] {
        assert!(!table.contains(problem), "fdisk -l reports a problem: {table}");
    }
    assert_eq!(partitions_4k(&target), parts);
    let ext = extract(&target, parts[0], &dir.path().join("t.img"));
    sh(&format!("e2fsck -fn {}", ext.display()));
    for (name, data) in &files {
        assert_eq!(&debugfs_cat(&ext, name), data, "file {name}");
    }
}

fn small_ext_disk(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    write_tree(&tree, 4);
    let path = dir.join("whole.img");
    sh(&format!("mkfs.ext4 -q -F -d {} {} 32M", tree.display(), path.display()));
    path
}

#[test]
fn corrupt_chunk_fails_deploy_naming_image_and_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = small_ext_disk(dir.path());
    let store = Store::open(dir.path().join("store")).expect("store");
    capture(&store, &source, "img", &CaptureOptions::default(), &NoProgress).expect("capture");
    // Flip one byte in the middle of the largest frame of the pack (frame: chunk count u32 |
    // plain length u32 | stored length u32 | count x (id 32 | length u32) | stored bytes).
    let pack = walk(&dir.path().join("store/packs"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let mut bytes = fs::read(&pack).expect("read pack");
    let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize;
    let (mut at, mut largest) = (0usize, (0usize, 0usize, 0usize));
    while at + 12 <= bytes.len() {
        let (count, stored) = (word(&bytes, at), word(&bytes, at + 8));
        if stored > largest.2 {
            largest = (at, count, stored);
        }
        at += 12 + 36 * count + stored;
    }
    assert_eq!(at, bytes.len(), "frames fill the pack exactly");
    let (frame, count, stored) = largest;
    let ids: Vec<String> = (0..count)
        .map(|i| hex::encode(&bytes[frame + 12 + 36 * i..frame + 12 + 36 * i + 32]))
        .collect();
    bytes[frame + 12 + 36 * count + stored / 2] ^= 0x40;
    fs::write(&pack, bytes).expect("write pack");

    let err = deploy(
        &store,
        "img",
        &dir.path().join("t.img"),
        &deploy_opts(false),
        &NoProgress,
    )
    .expect_err("deploy must fail");
    let named = match &err {
        Error::ChunkCorrupt { image, chunk, .. } => {
            assert_eq!(image, "img");
            assert!(ids.contains(chunk), "{chunk} is not in the damaged frame");
            chunk.clone()
        }
        other => panic!("expected ChunkCorrupt, got {other}"),
    };
    assert!(err.to_string().contains(&named) && err.to_string().contains("img"));
    // A damaged compressed frame spoils its chunks; a raw one only the chunk holding the byte.
    let report = store.verify().expect("verify runs");
    assert!(report.corrupt.contains(&named), "verify missed {named}");
    assert!(report.corrupt.iter().all(|c| ids.contains(c)), "{:?}", report.corrupt);
}

#[test]
fn truncated_manifest_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = small_ext_disk(dir.path());
    let store = Store::open(dir.path().join("store")).expect("store");
    capture(&store, &source, "img", &CaptureOptions::default(), &NoProgress).expect("capture");
    let manifest = dir.path().join("store/images/img.fogimg");
    let len = fs::metadata(&manifest).expect("manifest").len();
    let file = fs::OpenOptions::new().write(true).open(&manifest).expect("open");
    file.set_len(len - 100).expect("truncate");
    let err = deploy(
        &store,
        "img",
        &dir.path().join("t.img"),
        &deploy_opts(false),
        &NoProgress,
    )
    .expect_err("must fail");
    assert!(
        matches!(err, Error::BadManifest { ref image, .. } if image == "img"),
        "got {err}"
    );
    assert!(
        !dir.path().join("t.img").exists(),
        "a target was created from a damaged image"
    );
    assert!(store.images().is_err());
    // A byte flipped inside the tables is caught by the checksum.
    capture(&store, &source, "img2", &CaptureOptions::default(), &NoProgress).expect("capture");
    let manifest = dir.path().join("store/images/img2.fogimg");
    let mut bytes = fs::read(&manifest).expect("read");
    bytes[5] ^= 1;
    fs::write(&manifest, bytes).expect("write");
    let err = deploy(
        &store,
        "img2",
        &dir.path().join("t2.img"),
        &deploy_opts(false),
        &NoProgress,
    )
    .expect_err("must fail");
    assert!(matches!(err, Error::BadManifest { .. }), "got {err}");
}

#[test]
fn target_too_small_is_refused_before_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = build_gpt_disk(dir.path());
    let store = Store::open(dir.path().join("store")).expect("store");
    capture(&store, &disk.path, "gpt", &CaptureOptions::default(), &NoProgress).expect("capture");
    let target = dir.path().join("small.img");
    fs::write(&target, pseudo_random(50 * MIB as usize, 11)).expect("write target");
    let before = blake3::hash(&fs::read(&target).expect("read"));
    let err = deploy(&store, "gpt", &target, &deploy_opts(false), &NoProgress).expect_err("must fail");
    assert!(matches!(err, Error::TargetTooSmall { .. }), "got {err}");
    assert!(err.is_bad_input());
    assert_eq!(
        blake3::hash(&fs::read(&target).expect("read")),
        before,
        "target was written"
    );
}

#[test]
fn two_captures_into_one_store_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    fs::create_dir_all(&a).expect("dir");
    fs::create_dir_all(&b).expect("dir");
    let disk_a = small_ext_disk(&a);
    let disk_b = build_gpt_disk(&b).path;
    let store = Store::open(dir.path().join("store")).expect("store");
    std::thread::scope(|s| {
        let t1 = s.spawn(|| capture(&store, &disk_a, "a", &CaptureOptions::default(), &NoProgress));
        let t2 = s.spawn(|| capture(&store, &disk_b, "b", &CaptureOptions::default(), &NoProgress));
        t1.join().expect("thread").expect("capture a");
        t2.join().expect("thread").expect("capture b");
    });
    assert!(store.verify().expect("verify").is_ok());
    for (name, source) in [("a", &disk_a), ("b", &disk_b)] {
        let target = dir.path().join(format!("{name}.out"));
        deploy(&store, name, &target, &deploy_opts(true), &NoProgress).expect("deploy");
        let size = fs::metadata(source).expect("meta").len();
        assert_eq!(fs::metadata(&target).expect("meta").len(), size);
    }
    sh(&format!("e2fsck -fn {}", dir.path().join("a.out").display()));
}

#[test]
fn recapture_stores_only_changes_and_gc_reclaims_removed_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = small_ext_disk(dir.path());
    let store = Store::open(dir.path().join("store")).expect("store");
    let first = capture(&store, &source, "v1", &CaptureOptions::default(), &NoProgress).expect("capture");
    let change = dir.path().join("change.txt");
    fs::write(&change, b"a new file in version 2\n".repeat(100)).expect("write");
    sh(&format!(
        "debugfs -w -R \"write {} /new.txt\" {}",
        change.display(),
        source.display()
    ));
    let second = capture(&store, &source, "v2", &CaptureOptions::default(), &NoProgress).expect("capture");
    assert!(
        second.new_stored_bytes * 10 < first.new_stored_bytes,
        "v2 added {} bytes, v1 {}",
        second.new_stored_bytes,
        first.new_stored_bytes
    );
    let target = dir.path().join("v2.out");
    deploy(&store, "v2", &target, &deploy_opts(true), &NoProgress).expect("deploy");
    assert_eq!(debugfs_cat(&target, "/new.txt"), fs::read(&change).expect("read"));

    let before = store.stats().expect("stats");
    store.remove_image("v1").expect("rm");
    let gc = store.gc().expect("gc");
    assert!(gc.chunks_removed > 0 && gc.chunks_removed < before.chunks);
    assert!(store.verify().expect("verify").is_ok());
    store.remove_image("v2").expect("rm");
    store.gc().expect("gc");
    assert_eq!(store.stats().expect("stats").chunks, 0);
}

#[test]
fn bad_names_and_paths_are_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("store");
    let source = small_ext_disk(dir.path());
    for name in ["", "../x", ".hidden", "a/b"] {
        let err = capture(&store, &source, name, &CaptureOptions::default(), &NoProgress).expect_err("bad name");
        assert!(err.is_bad_input(), "{name:?}: {err}");
    }
    let err = capture(
        &store,
        &dir.path().join("missing.img"),
        "x",
        &CaptureOptions::default(),
        &NoProgress,
    )
    .expect_err("missing");
    assert!(err.is_bad_input() && err.to_string().contains("missing.img"), "{err}");
    let err = deploy(
        &store,
        "nope",
        &dir.path().join("t.img"),
        &deploy_opts(false),
        &NoProgress,
    )
    .expect_err("missing image");
    assert!(matches!(err, Error::ImageNotFound(_)));
}

#[test]
fn two_walks_of_one_manifest_at_once_agree() {
    // The agent's deploy and its prefetcher walk the same open manifest together; they shared
    // the file's offset once, and the second walk read past the end.
    let dir = tempfile::tempdir().expect("tempdir");
    let source = small_ext_disk(dir.path());
    let store = Store::open(dir.path().join("store")).expect("store");
    capture(&store, &source, "img", &CaptureOptions::default(), &NoProgress).expect("capture");
    let manifest = store.manifest("img").expect("manifest");
    manifest.check().expect("check");
    for region in &manifest.header.regions {
        let (mut a, mut b) = (manifest.chunks(region), manifest.chunks(region));
        loop {
            match (a.next(), b.next()) {
                (None, None) => break,
                (Some(x), Some(y)) => assert_eq!(x.expect("first walk"), y.expect("second walk")),
                (x, y) => panic!("the walks differ in length: {x:?} / {y:?}"),
            }
        }
    }
}

/// What `blkid -p` finds in `len` bytes at `offset` of `disk` (empty when nothing).
fn blkid_type(disk: &Path, (offset, len): (u64, u64)) -> String {
    let out = std::process::Command::new("blkid")
        .args([
            "-p",
            "-o",
            "value",
            "-s",
            "TYPE",
            "-O",
            &offset.to_string(),
            "-S",
            &len.to_string(),
        ])
        .arg(disk)
        .output()
        .expect("blkid runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn fast_wipe_leaves_no_table_or_signature_and_full_wipe_leaves_only_zeros() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = build_gpt_disk(dir.path());
    let parts = partitions(&disk.path);
    let found: Vec<String> = parts[..4].iter().map(|p| blkid_type(&disk.path, *p)).collect();
    assert_eq!(found, ["vfat", "ext4", "ntfs", "swap"]);
    // Data in the middle of the ext4 partition: a fast wipe leaves it alone.
    let middle = (parts[1].0 + parts[1].1 / 2, 4096);
    let before = pseudo_random(middle.1 as usize, 11);
    write_at(&disk.path, middle.0, &before);

    let report = wipe(&disk.path, WipeMode::Fast, &NoProgress).expect("fast wipe");
    assert_eq!(report.partitions, 5);
    assert!(report.bytes_written <= 12 * MIB, "{} bytes", report.bytes_written);
    for p in &parts {
        assert_eq!(blkid_type(&disk.path, *p), "", "a signature survived at {p:?}");
    }
    assert_eq!(
        sh(&format!("wipefs -n {}", disk.path.display())),
        "",
        "the disk still has a table"
    );
    assert!(fs::metadata(&disk.path).expect("meta").len() == 200 * MIB);
    assert_eq!(read_at(&disk.path, middle.0, middle.1), before);

    let report = wipe(&disk.path, WipeMode::Full, &NoProgress).expect("full wipe");
    assert_eq!(report.bytes_written, 200 * MIB);
    let bytes = fs::read(&disk.path).expect("read");
    assert!(bytes.iter().all(|&b| b == 0), "a full wipe left data");

    // A wrong path is an error naming it, and creates nothing.
    let missing = dir.path().join("no-such-disk.img");
    let err = wipe(&missing, WipeMode::Fast, &NoProgress).expect_err("wiped a missing disk");
    assert!(err.to_string().contains("no-such-disk.img"), "{err}");
    assert!(!missing.exists());
}
