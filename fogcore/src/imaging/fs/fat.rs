//! FAT12, FAT16 and FAT32: the file allocation table says which clusters are used.
//!
//! Used are the reserved region (boot sector, FSInfo, backup boot sector), every copy of the FAT,
//! the fixed root directory of FAT12/16, and every data cluster whose entry in the active FAT is
//! not zero (free). Clusters marked bad are skipped: they hold nothing and may not be readable.
//!
//! The FAT width follows Microsoft's FAT specification (fatgen103): fewer than 4085 clusters is
//! FAT12, fewer than 65525 is FAT16. A BPB in FAT32 form (16-bit FAT size zero, 32-bit FAT size
//! set) is FAT32 whatever its cluster count, as the Windows and Linux drivers read it: `mkfs.fat
//! -F 32` makes such volumes below 65525 clusters.
//!
//! `probe` accepts only a BPB that is consistent throughout (geometry inside the device, a FAT
//! large enough for the clusters); anything else is left to raw capture.

use super::read_boot_sector;
use crate::imaging::disk::{ReadAt, le};
use crate::imaging::extent::{Extent, ExtentList};
use crate::{Error, Result};

/// Bytes of the FAT read at a time, so a 1 GiB FAT32 table never sits in memory whole.
const CHUNK_BYTES: u64 = 1 << 20;
/// Boot sector signature at byte 510.
const SIGNATURE_OFFSET: usize = 510;
/// Largest FAT12 volume, in clusters (fatgen103: below 4085).
const MAX_FAT12_CLUSTERS: u64 = 4084;
/// Largest FAT16 volume, in clusters (fatgen103: below 65525).
const MAX_FAT16_CLUSTERS: u64 = 65524;
/// Largest FAT32 volume, in clusters: cluster numbers run to 0x0FFFFFF6.
const MAX_FAT32_CLUSTERS: u64 = 0x0FFF_FFF5;

/// The width of FAT entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    /// The entry value that marks a bad cluster.
    fn bad_mark(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFF7,
            FatType::Fat16 => 0xFFF7,
            FatType::Fat32 => 0x0FFF_FFF7,
        }
    }

    /// Bytes holding entries `0..entries`.
    fn table_bytes(self, entries: u64) -> u64 {
        match self {
            FatType::Fat12 => (entries * 3).div_ceil(2),
            FatType::Fat16 => entries * 2,
            FatType::Fat32 => entries * 4,
        }
    }
}

/// Where things are on a FAT volume, in bytes from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Geometry {
    kind: FatType,
    cluster_size: u64,
    /// The FAT that is read: the first, or the active one of a FAT32 volume that does not mirror.
    active_fat_offset: u64,
    /// First byte of cluster 2, which is also the end of the reserved, FAT and root regions.
    data_offset: u64,
    /// Number of data clusters (clusters 2 ..= clusters + 1).
    clusters: u64,
}

/// True when `dev` holds a FAT12, FAT16 or FAT32 filesystem.
pub fn probe(dev: &dyn ReadAt) -> Result<bool> {
    let Some(boot) = read_boot_sector(dev)? else {
        return Ok(false);
    };
    Ok(parse_boot_sector(&boot, dev.size()).is_ok())
}

/// Used byte ranges of the FAT filesystem on `dev`, relative to the start of `dev`, sorted and
/// merged.
pub fn used_extents(dev: &dyn ReadAt) -> Result<Vec<Extent>> {
    used_extents_in_chunks(dev, CHUNK_BYTES)
}

/// [`used_extents`] reading the FAT `chunk_bytes` at a time (tests use tiny chunks).
fn used_extents_in_chunks(dev: &dyn ReadAt, chunk_bytes: u64) -> Result<Vec<Extent>> {
    let bad = |reason: String| Error::BadFilesystem {
        what: dev.name(),
        reason,
    };
    let boot =
        read_boot_sector(dev)?.ok_or_else(|| bad(format!("too small for a FAT boot sector ({} bytes)", dev.size())))?;
    let geometry = parse_boot_sector(&boot, dev.size()).map_err(bad)?;
    let mut list = ExtentList::new();
    list.push(0, geometry.data_offset);
    add_used_clusters(dev, &geometry, chunk_bytes, &mut list)?;
    Ok(list.into_vec())
}

/// Checks the BPB and works out the layout; the error is the reason it is not a usable FAT.
fn parse_boot_sector(boot: &[u8], dev_size: u64) -> std::result::Result<Geometry, String> {
    let byte = |off: usize| boot.get(off).copied().ok_or("boot sector too short");
    let u16_at = |off: usize| le::u16(boot, off).map(u64::from).ok_or("boot sector too short");
    let u32_at = |off: usize| le::u32(boot, off).map(u64::from).ok_or("boot sector too short");

    if u16_at(SIGNATURE_OFFSET)? != 0xAA55 {
        return Err("no 55 AA boot sector signature".into());
    }
    let jump = byte(0)?;
    if jump != 0xEB && jump != 0xE9 {
        return Err(format!("boot sector starts with {jump:#04x}, not a jump"));
    }
    match boot.get(3..11) {
        Some(b"NTFS    ") => return Err("boot sector is NTFS".into()),
        Some(b"EXFAT   ") => return Err("boot sector is exFAT".into()),
        _ => {}
    }
    let bytes_per_sector = u16_at(11)?;
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
        return Err(format!("{bytes_per_sector} bytes per sector"));
    }
    let sectors_per_cluster = u64::from(byte(13)?);
    if !sectors_per_cluster.is_power_of_two() {
        return Err(format!("{sectors_per_cluster} sectors per cluster"));
    }
    let reserved_sectors = u16_at(14)?;
    if reserved_sectors == 0 {
        return Err("no reserved sectors".into());
    }
    let fat_count = u64::from(byte(16)?);
    if fat_count == 0 {
        return Err("no FATs".into());
    }
    let root_entries = u16_at(17)?;
    let media = byte(21)?;
    if media != 0xF0 && media < 0xF8 {
        return Err(format!("media descriptor {media:#04x}"));
    }
    let total_sectors = match u16_at(19)? {
        0 => u32_at(32)?,
        n => n,
    };
    if total_sectors == 0 {
        return Err("total sector count is zero".into());
    }
    let fat_size16 = u16_at(22)?;
    let fat32_form = fat_size16 == 0;
    let fat_sectors = if fat32_form { u32_at(36)? } else { fat_size16 };
    if fat_sectors == 0 {
        return Err("FAT size is zero".into());
    }

    // All of these fit in u64: sectors are < 2^32, FATs < 2^8, sector sizes <= 2^12.
    let fs_bytes = total_sectors * bytes_per_sector;
    if fs_bytes > dev_size {
        return Err(format!(
            "filesystem is {fs_bytes} bytes ({total_sectors} sectors), larger than the \
             {dev_size}-byte device"
        ));
    }
    let root_dir_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
    let data_sector = reserved_sectors + fat_count * fat_sectors + root_dir_sectors;
    if data_sector >= total_sectors {
        return Err(format!(
            "reserved, FAT and root directory regions ({data_sector} sectors) fill the \
             {total_sectors}-sector volume"
        ));
    }
    let clusters = (total_sectors - data_sector) / sectors_per_cluster;
    if clusters == 0 {
        return Err("no data clusters".into());
    }
    let kind = if fat32_form {
        if clusters > MAX_FAT32_CLUSTERS {
            return Err(format!("{clusters} clusters, more than FAT32 can address"));
        }
        FatType::Fat32
    } else if clusters <= MAX_FAT12_CLUSTERS {
        FatType::Fat12
    } else if clusters <= MAX_FAT16_CLUSTERS {
        FatType::Fat16
    } else {
        return Err(format!(
            "{clusters} clusters need FAT32, but the BPB has a 16-bit FAT size"
        ));
    };
    let table_bytes = kind.table_bytes(clusters + 2);
    if table_bytes > fat_sectors * bytes_per_sector {
        return Err(format!(
            "a {}-sector FAT is too small for {clusters} clusters",
            fat_sectors
        ));
    }
    let mut active_fat = 0;
    if kind == FatType::Fat32 {
        let ext_flags = u16_at(40)?;
        if ext_flags & 0x80 != 0 {
            active_fat = ext_flags & 0x0F;
            if active_fat >= fat_count {
                return Err(format!("active FAT {active_fat} of {fat_count} FATs does not exist"));
            }
        }
    }
    Ok(Geometry {
        kind,
        cluster_size: sectors_per_cluster * bytes_per_sector,
        active_fat_offset: (reserved_sectors + active_fat * fat_sectors) * bytes_per_sector,
        data_offset: data_sector * bytes_per_sector,
        clusters,
    })
}

/// Adds every data cluster whose FAT entry is in use, reading the FAT about `chunk_bytes` at a
/// time.
fn add_used_clusters(dev: &dyn ReadAt, g: &Geometry, chunk_bytes: u64, list: &mut ExtentList) -> Result<()> {
    let entries = g.clusters + 2;
    // An even number of entries per chunk, so FAT12 chunks start on a byte boundary.
    let per_chunk = match g.kind {
        FatType::Fat12 => chunk_bytes * 2 / 3,
        FatType::Fat16 => chunk_bytes / 2,
        FatType::Fat32 => chunk_bytes / 4,
    }
    .max(2)
        & !1;
    let bad_mark = g.kind.bad_mark();
    let mut buf = Vec::new();
    let mut run_start: Option<u64> = None;
    let mut first = 0u64;
    while first < entries {
        let count = per_chunk.min(entries - first);
        let start_byte = g.kind.table_bytes(first);
        let len = g.kind.table_bytes(first + count) - start_byte;
        buf.resize(len as usize, 0);
        dev.read_exact_at(&mut buf, g.active_fat_offset + start_byte)?;
        for i in 0..count {
            let cluster = first + i;
            let entry = fat_entry(&buf, g.kind, i).ok_or_else(|| Error::BadFilesystem {
                what: dev.name(),
                reason: format!("FAT entry {cluster} lies outside the FAT read"),
            })?;
            let used = cluster >= 2 && entry != 0 && entry != bad_mark;
            match (used, run_start) {
                (true, None) => run_start = Some(cluster),
                (false, Some(start)) => {
                    push_clusters(list, g, start, cluster);
                    run_start = None;
                }
                _ => {}
            }
        }
        first += count;
    }
    if let Some(start) = run_start {
        push_clusters(list, g, start, entries);
    }
    Ok(())
}

/// Adds clusters `start..end` (cluster numbers, 2 is the first) to `list`.
fn push_clusters(list: &mut ExtentList, g: &Geometry, start: u64, end: u64) {
    list.push(
        g.data_offset + (start - 2) * g.cluster_size,
        (end - start) * g.cluster_size,
    );
}

/// Entry `i` of a piece of the FAT that starts at an even entry.
fn fat_entry(buf: &[u8], kind: FatType, i: u64) -> Option<u32> {
    let i = usize::try_from(i).ok()?;
    match kind {
        FatType::Fat12 => {
            let pair = u32::from(le::u16(buf, i / 2 * 3 + (i & 1))?);
            Some(if i & 1 == 0 { pair & 0xFFF } else { pair >> 4 })
        }
        FatType::Fat16 => le::u16(buf, i * 2).map(u32::from),
        FatType::Fat32 => le::u32(buf, i * 4).map(|e| e & 0x0FFF_FFFF),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::Output;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::imaging::disk::Disk;
    use crate::imaging::extent::total_len;
    use crate::imaging::fs::test_support::*;

    const INSTALL: &str = "apt-get install -y dosfstools mtools";

    fn run(name: &str, args: &[&str]) -> Output {
        crate::tools::test::output(name, crate::tools::test::command(name, INSTALL).args(args))
    }

    fn run_ok(name: &str, args: &[&str]) -> String {
        let out = run(name, args);
        assert!(
            out.status.success(),
            "{name} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn s(p: &Path) -> &str {
        p.to_str().expect("temporary paths are UTF-8")
    }

    /// Writes `size` pseudo-random bytes to `root/rel`, creating directories, and returns them.
    fn write_file(root: &Path, rel: &str, size: usize, rng: &mut StdRng) -> Vec<u8> {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("file has a parent")).expect("mkdir");
        let mut data = vec![0u8; size];
        rng.fill(&mut data[..]);
        std::fs::write(&path, &data).expect("write source file");
        data
    }

    /// Copies only `extents` of `src` into a new sparse, zero-filled file of the same size.
    fn copy_extents(src: &Path, extents: &[Extent], dst: &Path) {
        let src = File::open(src).expect("open source image");
        let size = src.metadata().expect("stat source image").len();
        let dst = File::create(dst).expect("create copy");
        dst.set_len(size).expect("size copy");
        let mut buf = vec![0u8; 1 << 20];
        for e in extents {
            let mut at = e.offset;
            while at < e.end() {
                let n = (e.end() - at).min(buf.len() as u64) as usize;
                src.read_exact_at(&mut buf[..n], at).expect("read extent");
                dst.write_all_at(&buf[..n], at).expect("write extent");
                at += n as u64;
            }
        }
    }

    /// What a user would check: fsck finds nothing wrong and every file reads back the same.
    /// `restore_total` puts back the original total sector count after fsck, for volumes whose
    /// BPB was shrunk to a size mtools cannot read.
    fn check_copy(
        copy: &Path,
        files: &[(String, Vec<u8>)],
        work: &Path,
        restore_total: Option<u32>,
    ) -> std::result::Result<(), String> {
        let fsck = run("fsck.vfat", &["-n", s(copy)]);
        if !fsck.status.success() {
            return Err(format!(
                "fsck.vfat -n failed ({}): {}{}",
                fsck.status,
                String::from_utf8_lossy(&fsck.stdout),
                String::from_utf8_lossy(&fsck.stderr)
            ));
        }
        if let Some(total) = restore_total {
            set_total_sectors(copy, total);
        }
        for (i, (name, data)) in files.iter().enumerate() {
            let out = work.join(format!("readback-{i}"));
            let _ = std::fs::remove_file(&out);
            let mcopy = run("mcopy", &["-n", "-i", s(copy), &format!("::/{name}"), s(&out)]);
            if !mcopy.status.success() {
                return Err(format!(
                    "mcopy of {name} failed: {}",
                    String::from_utf8_lossy(&mcopy.stderr)
                ));
            }
            if std::fs::read(&out).map_err(|e| e.to_string())? != *data {
                return Err(format!("{name} reads back different"));
            }
        }
        Ok(())
    }

    /// Sets the 32-bit total sector count of a FAT32 volume with 512-byte sectors in its boot
    /// sector and backup boot sector, and marks the FSInfo free count unknown.
    fn set_total_sectors(img: &Path, total: u32) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(img)
            .expect("open image for patching");
        for sector in [0u64, 6] {
            f.write_all_at(&total.to_le_bytes(), sector * 512 + 32)
                .expect("patch total sectors");
        }
        f.write_all_at(&[0xFF; 8], 512 + 488).expect("patch FSInfo");
    }

    /// (data area offset, cluster size, used clusters) as fsck.vfat -v counts them.
    fn fsck_counts(img: &Path) -> (u64, u64, u64) {
        let out = run_ok("fsck.vfat", &["-n", "-v", s(img)]);
        let number_before = |marker: &str| -> u64 {
            let line = out
                .lines()
                .find(|l| l.contains(marker))
                .unwrap_or_else(|| panic!("no {marker:?} in {out}"));
            line.split_whitespace()
                .next()
                .and_then(|w| w.parse().ok())
                .expect("a number")
        };
        let data_start = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Data area starts at byte "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no data area offset in {out}"));
        let cluster_size = number_before("bytes per cluster");
        let used = out
            .lines()
            .find(|l| l.ends_with(" clusters") && l.contains(" files, "))
            .and_then(|l| l.rsplit(", ").next())
            .and_then(|w| w.split('/').next())
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no cluster count in {out}"));
        (data_start, cluster_size, used)
    }

    /// Makes a FAT image, fills it, deletes a file in the middle, and checks the used map.
    fn round_trip(
        fat_bits: u32,
        size_kb: u64,
        mkfs_extra: &[&str],
        file_sizes: &[usize],
        expect: FatType,
        shrink_to: Option<u64>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path();
        let img = work.join("fat.img");
        let mut args = vec!["-F".to_string(), fat_bits.to_string()];
        args.extend(mkfs_extra.iter().map(|a| a.to_string()));
        args.extend(["-C".to_string(), s(&img).to_string(), size_kb.to_string()]);
        run_ok("mkfs.vfat", &args.iter().map(String::as_str).collect::<Vec<_>>());

        // Files at the top, in a directory and two levels down; "victim" is deleted later.
        let src = work.join("src");
        let mut rng = StdRng::seed_from_u64(u64::from(fat_bits) * 1000 + size_kb);
        let mut files = Vec::new();
        for (i, &size) in file_sizes.iter().enumerate() {
            let rel = match i % 3 {
                0 => format!("top{i}.bin"),
                1 => format!("docs/file{i}.dat"),
                _ => format!("docs/deep/er/f{i}.bin"),
            };
            let data = write_file(&src, &rel, size, &mut rng);
            files.push((rel, data));
        }
        let victim = write_file(
            &src,
            "victim.bin",
            file_sizes.iter().max().copied().unwrap_or(1000),
            &mut rng,
        );
        let mut mcopy_args = vec!["-s", "-Q", "-i", s(&img)];
        // victim.bin goes in before the last files so its clusters sit in the middle.
        let top0 = src.join("top0.bin");
        let victim_path = src.join("victim.bin");
        let docs = src.join("docs");
        mcopy_args.extend([s(&top0), s(&victim_path), s(&docs), "::/"]);
        run_ok("mcopy", &mcopy_args);
        for (rel, _) in &files {
            if !rel.starts_with("docs/") && rel != "top0.bin" {
                run_ok("mcopy", &["-i", s(&img), s(&src.join(rel)), &format!("::/{rel}")]);
            }
        }

        let disk = Disk::open(&img).expect("open image");
        assert!(
            probe(&disk).expect("probe"),
            "probe does not recognise {fat_bits}-bit FAT"
        );
        let boot = read_boot_sector(&disk).expect("read").expect("boot sector");
        let size = disk.size();
        let with_victim = used_extents(&disk).expect("used extents before delete");
        drop(disk);

        run_ok("mdel", &["-i", s(&img), "::/victim.bin"]);
        let mut restore_total = None;
        if let Some(clusters) = shrink_to {
            let g = parse_boot_sector(&boot, size).expect("geometry");
            assert_eq!(le::u16(&boot, 11), Some(512));
            restore_total = le::u32(&boot, 32);
            let total = (g.data_offset / 512 + clusters * g.cluster_size / 512) as u32;
            set_total_sectors(&img, total);
        }
        let disk = Disk::open(&img).expect("open image");
        let boot = read_boot_sector(&disk).expect("read").expect("boot sector");
        let g = parse_boot_sector(&boot, disk.size()).expect("geometry");
        assert_eq!(g.kind, expect);
        if let Some(clusters) = shrink_to {
            assert_eq!(g.clusters, clusters);
        }
        let extents = used_extents(&disk).expect("used extents");
        assert_sorted_disjoint(&extents, size);
        let used = total_len(&extents);
        let before = total_len(&with_victim);
        assert!(
            used + victim.len() as u64 <= before,
            "deleting {} bytes took used from {before} only to {used}",
            victim.len()
        );
        assert!(
            extents.len() >= 2,
            "no free space in the middle after delete: {extents:?}"
        );
        assert!(used < size / 2, "{used} of {size} bytes used on a mostly empty volume");

        // The same total, counted independently by fsck.vfat.
        let (data_start, cluster_size, used_clusters) = fsck_counts(&img);
        assert_eq!(
            used,
            data_start + used_clusters * cluster_size,
            "used bytes differ from fsck.vfat's count"
        );
        assert_eq!(extents.first().map(|e| e.offset), Some(0));
        assert!(
            extents.first().is_some_and(|e| e.len >= data_start),
            "metadata regions not all kept"
        );

        // Tiny chunks give the same map (FAT12 entries straddle bytes and chunk ends).
        for chunk in [1, 3, 5, 7, 12] {
            assert_eq!(
                used_extents_in_chunks(&disk, chunk).expect("chunked"),
                extents,
                "chunk {chunk}"
            );
        }

        let copy = work.join("copy.img");
        copy_extents(&img, &extents, &copy);
        check_copy(&copy, &files, work, restore_total).expect("copy of the used extents is a good filesystem");

        // The check can fail: without the last extent, some file or directory is lost.
        let fewer = &extents[..extents.len() - 1];
        let broken = work.join("broken.img");
        copy_extents(&img, fewer, &broken);
        assert!(
            check_copy(&broken, &files, work, restore_total).is_err(),
            "copy without {:?} passed",
            extents.last()
        );
    }

    #[test]
    fn fat12_used_clusters_round_trip() {
        round_trip(
            12,
            2048,
            &[],
            &[100_000, 3, 70_000, 4096, 250_000, 1],
            FatType::Fat12,
            None,
        );
    }

    #[test]
    fn fat16_used_clusters_round_trip() {
        round_trip(
            16,
            32 * 1024,
            &[],
            &[3_000_000, 10, 700_000, 40_000, 2_000_000, 2048, 5_000],
            FatType::Fat16,
            None,
        );
    }

    #[test]
    fn fat32_used_clusters_round_trip() {
        round_trip(
            32,
            64 * 1024,
            &[],
            &[5_000_000, 512, 1_000_000, 80_000, 3_000_000, 0, 4_000],
            FatType::Fat32,
            None,
        );
    }

    /// `mkfs.fat -F 32` makes FAT32 volumes with fewer than 65525 clusters; Linux and Windows
    /// read them as FAT32. mtools does not, so a bigger volume is filled and then cut down.
    #[test]
    fn small_fat32_by_bpb_round_trip() {
        let files = [1_000_000, 1, 300_000, 9_000, 20_000];
        round_trip(32, 40_000, &["-s", "1"], &files, FatType::Fat32, Some(60_000));
    }

    /// Bigger clusters and sectors than the default.
    #[test]
    fn fat16_4k_sectors_round_trip() {
        round_trip(
            16,
            32 * 1024,
            &["-S", "4096", "-s", "1"],
            &[1_000_000, 77, 300_000, 9_000],
            FatType::Fat16,
            None,
        );
    }

    /// A full volume: the run of used clusters ends at the last cluster.
    #[test]
    fn full_fat12_keeps_last_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("fat.img");
        run_ok("mkfs.vfat", &["-F", "12", "-C", s(&img), "2048"]);
        let disk = Disk::open(&img).expect("open image");
        let boot = read_boot_sector(&disk).expect("read").expect("boot sector");
        let g = parse_boot_sector(&boot, disk.size()).expect("geometry");
        drop(disk);
        let mut rng = StdRng::seed_from_u64(12);
        let src = dir.path().join("src");
        let data = write_file(&src, "full.bin", (g.clusters * g.cluster_size) as usize, &mut rng);
        run_ok("mcopy", &["-i", s(&img), s(&src.join("full.bin")), "::/full.bin"]);
        let disk = Disk::open(&img).expect("open image");
        let extents = used_extents(&disk).expect("used extents");
        let end = g.data_offset + g.clusters * g.cluster_size;
        assert_eq!(extents, [Extent::new(0, end)]);
        let copy = dir.path().join("copy.img");
        copy_extents(&img, &extents, &copy);
        let files = [("full.bin".to_string(), data)];
        check_copy(&copy, &files, dir.path(), None).expect("copy of a full volume");
    }

    /// A FAT32 volume that does not mirror its FATs is read from the active one.
    #[test]
    fn fat32_reads_the_active_fat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("fat.img");
        run_ok("mkfs.vfat", &["-F", "32", "-C", s(&img), "65536"]);
        let mut rng = StdRng::seed_from_u64(32);
        let src = dir.path().join("src");
        write_file(&src, "d/a.bin", 2_000_000, &mut rng);
        run_ok("mcopy", &["-s", "-i", s(&img), s(&src.join("d")), "::/"]);
        let mut bytes = std::fs::read(&img).expect("read image");
        let expected = used_extents(&bytes).expect("used extents");
        let g = parse_boot_sector(&bytes[..512], bytes.len() as u64).expect("geometry");
        let fat_bytes = (le::u32(&bytes, 36).expect("FAT size") * 512) as usize;
        let fat0 = g.active_fat_offset as usize;
        // FAT 1 active, FAT 0 stale (empty): the map comes from FAT 1.
        bytes[40..42].copy_from_slice(&0x81u16.to_le_bytes());
        bytes[fat0 + 8..fat0 + fat_bytes].fill(0);
        assert_eq!(used_extents(&bytes).expect("used extents"), expected);
        // FAT 0 active and empty: only the metadata regions.
        bytes[40..42].copy_from_slice(&0x80u16.to_le_bytes());
        assert_eq!(
            used_extents(&bytes).expect("used extents"),
            [Extent::new(0, g.data_offset)]
        );
        // A FAT that does not exist.
        bytes[40..42].copy_from_slice(&0x82u16.to_le_bytes());
        assert!(matches!(used_extents(&bytes), Err(Error::BadFilesystem { .. })));
    }

    fn fresh_fat12() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("fat.img");
        run_ok("mkfs.vfat", &["-F", "12", "-C", s(&img), "2048"]);
        let mut rng = StdRng::seed_from_u64(7);
        let src = dir.path().join("src");
        write_file(&src, "a/b.bin", 300_000, &mut rng);
        run_ok("mcopy", &["-s", "-i", s(&img), s(&src.join("a")), "::/"]);
        let bytes = std::fs::read(&img).expect("read image");
        (dir, img, bytes)
    }

    #[test]
    fn corrupt_boot_sectors_are_errors() {
        let (dir, _img, good) = fresh_fat12();
        type Patch = fn(&mut [u8]);
        let cases: [(&str, Patch); 10] = [
            ("sectors per cluster 0", |b| b[13] = 0),
            ("sectors per cluster 3", |b| b[13] = 3),
            ("bytes per sector 3", |b| b[11..13].copy_from_slice(&3u16.to_le_bytes())),
            ("no reserved sectors", |b| {
                b[14..16].copy_from_slice(&0u16.to_le_bytes())
            }),
            ("no FATs", |b| b[16] = 0),
            ("FAT size 0", |b| b[22..24].copy_from_slice(&0u16.to_le_bytes())),
            ("FAT too small", |b| b[22..24].copy_from_slice(&1u16.to_le_bytes())),
            ("larger than device", |b| {
                b[19..21].copy_from_slice(&0u16.to_le_bytes());
                b[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
            }),
            ("no signature", |b| b[510] = 0),
            ("root directory fills the volume", |b| {
                b[17..19].copy_from_slice(&u16::MAX.to_le_bytes())
            }),
        ];
        for (what, patch) in cases {
            let mut bytes = good.clone();
            patch(&mut bytes);
            let path = dir.path().join("corrupt.img");
            std::fs::write(&path, &bytes).expect("write corrupt image");
            let disk = Disk::open(&path).expect("open");
            assert!(!probe(&disk).expect("probe reads"), "{what}: probe accepted it");
            assert_bad_filesystem(used_extents(&disk), s(&path), what)
        }
        // A device truncated below the filesystem size, and one too small for a boot sector.
        let path = dir.path().join("short.img");
        std::fs::write(&path, &good[..good.len() / 2]).expect("write short image");
        let disk = Disk::open(&path).expect("open");
        assert!(!probe(&disk).expect("probe reads"));
        assert!(matches!(used_extents(&disk), Err(Error::BadFilesystem { .. })));
        let tiny = good[..100].to_vec();
        assert!(!probe(&tiny).expect("probe reads"));
        assert!(matches!(used_extents(&tiny), Err(Error::BadFilesystem { .. })));
        // An NTFS boot sector is not FAT.
        let mut ntfs = good.clone();
        ntfs[3..11].copy_from_slice(b"NTFS    ");
        assert!(!probe(&ntfs).expect("probe reads"));
    }

    /// Random damage to the BPB and the FAT never panics, and whatever is accepted stays inside
    /// the device.
    #[test]
    fn random_damage_never_panics() {
        let (_dir, _img, good) = fresh_fat12();
        let mut bytes = good.clone();
        let mut rng = StdRng::seed_from_u64(42);
        for round in 0..4000 {
            bytes[..8192].copy_from_slice(&good[..8192]);
            for _ in 0..rng.random_range(1..4) {
                let at = if round % 4 == 0 {
                    rng.random_range(512..8192)
                } else {
                    rng.random_range(0..64)
                };
                bytes[at] = rng.random();
            }
            let _ = probe(&bytes);
            if let Ok(extents) = used_extents(&bytes) {
                assert_sorted_disjoint(&extents, bytes.len() as u64);
            }
        }
    }

    #[test]
    fn fat12_entries_decode() {
        // Entries 0..4 = 0xFF8, 0xFFF, 0x003, 0xABC packed in 6 bytes.
        let buf = [0xF8, 0xFF, 0xFF, 0x03, 0xC0, 0xAB];
        let got: Vec<_> = (0..4).map(|i| fat_entry(&buf, FatType::Fat12, i)).collect();
        assert_eq!(got, [Some(0xFF8), Some(0xFFF), Some(0x003), Some(0xABC)]);
        assert_eq!(fat_entry(&buf, FatType::Fat12, 4), None);
        assert_eq!(
            fat_entry(&[0xFF, 0xFF, 0xFF, 0xFF], FatType::Fat32, 0),
            Some(0x0FFF_FFFF)
        );
    }
}
