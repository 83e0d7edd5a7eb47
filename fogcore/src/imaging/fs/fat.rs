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
    let boot = read_boot_sector(dev)?.ok_or_else(|| {
        bad(format!(
            "too small for a FAT boot sector ({} bytes)",
            dev.size()
        ))
    })?;
    let geometry = parse_boot_sector(&boot, dev.size()).map_err(bad)?;
    let mut list = ExtentList::new();
    list.push(0, geometry.data_offset);
    add_used_clusters(dev, &geometry, chunk_bytes, &mut list)?;
    Ok(list.into_vec())
}

/// The first 512 bytes of `dev`, or None when it is smaller.
fn read_boot_sector(dev: &dyn ReadAt) -> Result<Option<[u8; 512]>> {
    let mut boot = [0u8; 512];
    if dev.size() < boot.len() as u64 {
        return Ok(None);
    }
    dev.read_exact_at(&mut boot, 0)?;
    Ok(Some(boot))
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
                return Err(format!(
                    "active FAT {active_fat} of {fat_count} FATs does not exist"
                ));
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
fn add_used_clusters(
    dev: &dyn ReadAt,
    g: &Geometry,
    chunk_bytes: u64,
    list: &mut ExtentList,
) -> Result<()> {
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
