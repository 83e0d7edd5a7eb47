//! exFAT: the allocation bitmap says which clusters are used.
//!
//! Everything before the cluster heap is kept: the main and backup boot regions (12 sectors
//! each), the FAT(s) and any alignment gap. In the heap, the allocation bitmap (found through its
//! entry, type 0x81, in the root directory) has one bit per cluster; it is the authority, since
//! contiguous files (`NoFatChain`) have no FAT entries. The root directory and the bitmap are
//! found by following their FAT chains. With two FATs (TexFAT) the active FAT and bitmap are read.

use super::bitmap::BitScan;
use super::read_boot_sector;
use crate::imaging::disk::{ReadAt, le};
use crate::imaging::extent::{Extent, ExtentList};
use crate::{Error, Result};

/// The file system name at byte 3 of the boot sector.
const FILE_SYSTEM_NAME: &[u8; 8] = b"EXFAT   ";
/// Sectors in each of the main and backup boot regions.
const BOOT_REGION_SECTORS: u64 = 12;
/// Highest cluster count (cluster numbers run to 0xFFFFFFF6).
const MAX_CLUSTERS: u64 = 0xFFFF_FFF5;
/// Largest cluster: 32 MiB.
const MAX_CLUSTER_SHIFT: u8 = 25;
/// FAT entries from here on end a chain; 0xFFFFFFF7 marks a bad cluster.
const END_OF_CHAIN: u32 = 0xFFFF_FFF8;
/// Directory entries.
const ENTRY_LEN: usize = 32;
const ENTRY_END_OF_DIRECTORY: u8 = 0x00;
const ENTRY_ALLOCATION_BITMAP: u8 = 0x81;

// Boot sector fields.
const BS_VOLUME_LENGTH: usize = 72;
const BS_FAT_OFFSET: usize = 80;
const BS_FAT_LENGTH: usize = 84;
const BS_CLUSTER_HEAP_OFFSET: usize = 88;
const BS_CLUSTER_COUNT: usize = 92;
const BS_ROOT_CLUSTER: usize = 96;
const BS_VOLUME_FLAGS: usize = 106;
const BS_BYTES_PER_SECTOR_SHIFT: usize = 108;
const BS_SECTORS_PER_CLUSTER_SHIFT: usize = 109;
const BS_NUMBER_OF_FATS: usize = 110;
const BS_SIGNATURE: usize = 510;
/// `VolumeFlags`: the second FAT and bitmap are the active ones.
const ACTIVE_FAT: u16 = 0x1;

/// Where things are, in bytes from the start of the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Geometry {
    /// The active FAT.
    fat_offset: u64,
    /// First byte of cluster 2.
    heap_offset: u64,
    cluster_size: u64,
    clusters: u64,
    root_cluster: u64,
    /// Which allocation bitmap is active: 0, or 1 with two FATs.
    active: u8,
}

impl Geometry {
    /// Byte offset of cluster `n` (2 is the first); callers pass valid cluster numbers.
    fn cluster_offset(&self, n: u64) -> u64 {
        self.heap_offset + (n - 2) * self.cluster_size
    }
}

/// True when `dev` holds an exFAT filesystem whose boot sector is consistent.
pub fn probe(dev: &dyn ReadAt) -> Result<bool> {
    Ok(match read_boot_sector(dev)? {
        Some(boot) => parse_boot_sector(&boot, dev.size()).is_ok(),
        None => false,
    })
}

/// Used byte ranges of the exFAT filesystem on `dev`, relative to the start of `dev`, sorted and
/// merged.
pub fn used_extents(dev: &dyn ReadAt) -> Result<Vec<Extent>> {
    let bad = |reason: String| Error::BadFilesystem {
        what: dev.name(),
        reason,
    };
    let boot = read_boot_sector(dev)?
        .ok_or_else(|| bad(format!("too small for an exFAT boot sector ({} bytes)", dev.size())))?;
    let g = parse_boot_sector(&boot, dev.size()).map_err(bad)?;
    let (bitmap_cluster, bitmap_len) = find_bitmap(dev, &g)?;
    if bitmap_len < g.clusters.div_ceil(8) {
        return Err(bad(format!(
            "allocation bitmap of {bitmap_len} bytes is too small for {} clusters",
            g.clusters
        )));
    }
    let mut list = ExtentList::new();
    list.push(0, g.heap_offset);
    let mut scan = BitScan::new(g.heap_offset, g.clusters, g.cluster_size);
    let mut buf = vec![0u8; g.cluster_size as usize];
    let mut left = g.clusters.div_ceil(8);
    let mut chain = Chain::new(&g, bitmap_cluster, "allocation bitmap");
    while left > 0 {
        let cluster = chain
            .next(dev)?
            .ok_or_else(|| bad("allocation bitmap chain ends early".into()))?;
        let n = left.min(g.cluster_size) as usize;
        let part = buf.get_mut(..n).unwrap_or_default();
        dev.read_exact_at(part, g.cluster_offset(cluster))?;
        scan.bytes(part, &mut list);
        left -= n as u64;
    }
    scan.finish(&mut list);
    Ok(list.into_vec())
}

/// Checks the boot sector; the error is the reason it is not a usable exFAT volume.
fn parse_boot_sector(boot: &[u8], dev_size: u64) -> std::result::Result<Geometry, String> {
    const SHORT: &str = "boot sector too short";
    if boot.get(3..11) != Some(FILE_SYSTEM_NAME.as_slice()) {
        return Err("no EXFAT file system name".into());
    }
    if le::u16(boot, BS_SIGNATURE) != Some(0xAA55) {
        return Err("no 55 AA boot signature".into());
    }
    let byte = |off: usize| boot.get(off).copied().ok_or(SHORT);
    let u32_at = |off| le::u32(boot, off).map(u64::from).ok_or(SHORT);
    let sector_shift = byte(BS_BYTES_PER_SECTOR_SHIFT)?;
    let cluster_shift = byte(BS_SECTORS_PER_CLUSTER_SHIFT)?;
    if !(9..=12).contains(&sector_shift) || cluster_shift > MAX_CLUSTER_SHIFT - sector_shift {
        return Err(format!(
            "sector size 2^{sector_shift}, 2^{cluster_shift} sectors per cluster"
        ));
    }
    let sector = 1u64 << sector_shift;
    let cluster_size = sector << cluster_shift;
    let fats = u64::from(byte(BS_NUMBER_OF_FATS)?);
    if !matches!(fats, 1 | 2) {
        return Err(format!("{fats} FATs"));
    }
    let volume_sectors = le::u64(boot, BS_VOLUME_LENGTH).ok_or(SHORT)?;
    let volume_bytes = volume_sectors
        .checked_mul(sector)
        .filter(|&b| b <= dev_size)
        .ok_or_else(|| format!("volume of {volume_sectors} sectors is larger than the {dev_size}-byte device"))?;
    let fat_offset = u32_at(BS_FAT_OFFSET)?;
    let fat_length = u32_at(BS_FAT_LENGTH)?;
    let heap_offset = u32_at(BS_CLUSTER_HEAP_OFFSET)?;
    let clusters = u32_at(BS_CLUSTER_COUNT)?;
    // All sector counts are < 2^32 and sectors <= 2^12 bytes: none of this overflows.
    if fat_offset < 2 * BOOT_REGION_SECTORS || fat_length == 0 || fat_offset + fats * fat_length > heap_offset {
        return Err(format!(
            "{fats} FATs of {fat_length} sectors at sector {fat_offset} do not fit between the \
             boot regions and the cluster heap at sector {heap_offset}"
        ));
    }
    if clusters == 0 || clusters > MAX_CLUSTERS || (clusters + 2) * 4 > fat_length * sector {
        return Err(format!("{clusters} clusters for a FAT of {fat_length} sectors"));
    }
    let heap_end = clusters
        .checked_mul(cluster_size)
        .and_then(|len| len.checked_add(heap_offset * sector));
    if heap_end.is_none_or(|end| end > volume_bytes) {
        return Err(format!(
            "{clusters} clusters of {cluster_size} bytes do not fit the volume"
        ));
    }
    let root_cluster = u32_at(BS_ROOT_CLUSTER)?;
    if !(2..clusters + 2).contains(&root_cluster) {
        return Err(format!("root directory at cluster {root_cluster}"));
    }
    let active = u8::from(fats == 2 && le::u16(boot, BS_VOLUME_FLAGS).ok_or(SHORT)? & ACTIVE_FAT != 0);
    Ok(Geometry {
        fat_offset: (fat_offset + u64::from(active) * fat_length) * sector,
        heap_offset: heap_offset * sector,
        cluster_size,
        clusters,
        root_cluster,
        active,
    })
}

/// Walks a FAT cluster chain, at most as many clusters as the volume has (longer is a loop).
struct Chain<'a> {
    g: &'a Geometry,
    next: Option<u64>,
    steps: u64,
    what: &'static str,
}

impl<'a> Chain<'a> {
    fn new(g: &'a Geometry, first: u64, what: &'static str) -> Self {
        Chain {
            g,
            next: Some(first),
            steps: 0,
            what,
        }
    }

    /// The next cluster of the chain, or None after its end.
    fn next(&mut self, dev: &dyn ReadAt) -> Result<Option<u64>> {
        let bad = |reason: String| Error::BadFilesystem {
            what: dev.name(),
            reason: format!("{}: {reason}", self.what),
        };
        let Some(cluster) = self.next else {
            return Ok(None);
        };
        if !(2..self.g.clusters + 2).contains(&cluster) {
            return Err(bad(format!("cluster {cluster} is outside the heap")));
        }
        self.steps += 1;
        if self.steps > self.g.clusters {
            return Err(bad("cluster chain loops".into()));
        }
        let mut entry = [0u8; 4];
        dev.read_exact_at(&mut entry, self.g.fat_offset + cluster * 4)?;
        let entry = u32::from_le_bytes(entry);
        self.next = (entry < END_OF_CHAIN).then_some(u64::from(entry));
        Ok(Some(cluster))
    }
}

/// The first cluster and length in bytes of the active allocation bitmap, from the root directory.
fn find_bitmap(dev: &dyn ReadAt, g: &Geometry) -> Result<(u64, u64)> {
    let bad = |reason: String| Error::BadFilesystem {
        what: dev.name(),
        reason,
    };
    let mut chain = Chain::new(g, g.root_cluster, "root directory");
    let mut dir = vec![0u8; g.cluster_size as usize];
    while let Some(cluster) = chain.next(dev)? {
        dev.read_exact_at(&mut dir, g.cluster_offset(cluster))?;
        for entry in dir.chunks_exact(ENTRY_LEN) {
            match entry.first().copied() {
                Some(ENTRY_END_OF_DIRECTORY) => break,
                Some(ENTRY_ALLOCATION_BITMAP) if entry.get(1).map(|f| f & 1) == Some(g.active) => {
                    let first = le::u32(entry, 20).map_or(0, u64::from);
                    let len = le::u64(entry, 24).unwrap_or(0);
                    return Ok((first, len));
                }
                _ => {}
            }
        }
    }
    Err(bad(format!("root directory has no allocation bitmap {}", g.active)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::imaging::extent::total_len;
    use crate::imaging::fs::test_support::*;
    use crate::tools::test::{command, output_ok};

    const INSTALL: &str = "apt-get install -y exfatprogs";

    fn mkfs(img: &Path, size: u64, args: &[&str]) -> Vec<u8> {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(size))
            .expect("create image");
        output_ok("mkfs.exfat", command("mkfs.exfat", INSTALL).args(args).arg(img));
        std::fs::read(img).expect("read image")
    }

    /// A fresh volume: the regions before the heap, then the bitmap, up-case table and root
    /// directory clusters, and nothing else.
    #[test]
    fn fresh_volume_uses_its_metadata_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (size, args) in [
            (64u64 << 20, &[][..]),
            (300 << 20, &["-c", "64K"][..]),
            (40 << 20, &["-c", "512", "--pack-bitmap"][..]),
        ] {
            let bytes = mkfs(&dir.path().join("e.img"), size, args);
            assert!(probe(&bytes).expect("probe"), "{args:?}");
            let g = parse_boot_sector(&bytes[..512], size).expect("geometry");
            let extents = used_extents(&bytes).expect("used extents");
            assert_sorted_disjoint(&extents, size);
            assert_eq!(extents[0].offset, 0);
            assert!(extents[0].len >= g.heap_offset, "{args:?}: {extents:?}");
            let used = total_len(&extents);
            assert!(
                used >= g.heap_offset + 3 * g.cluster_size && used < size / 8,
                "{args:?}: {used} bytes used on a fresh {size}-byte volume"
            );
        }
    }

    #[test]
    fn fat_boot_sectors_and_zeros_are_not_exfat() {
        let zeros = vec![0u8; 1 << 20];
        assert!(!probe(&zeros).expect("probe"));
        assert!(matches!(used_extents(&zeros), Err(Error::BadFilesystem { .. })));
        assert!(used_extents(&vec![0u8; 100]).is_err());
    }

    /// Damaged boot sectors, FAT chains, root directories and bitmap entries are errors naming the
    /// device, never panics.
    #[test]
    fn damage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = mkfs(&dir.path().join("e.img"), 64 << 20, &[]);
        let g = parse_boot_sector(&good[..512], good.len() as u64).expect("geometry");
        let root = g.cluster_offset(g.root_cluster) as usize;
        let fat = g.fat_offset as usize;
        type Patch = fn(&mut [u8], &Geometry, usize);
        let cases: [(&str, Patch); 9] = [
            ("sector shift 13", |b, _, _| b[BS_BYTES_PER_SECTOR_SHIFT] = 13),
            ("cluster count huge", |b, _, _| b[BS_CLUSTER_COUNT + 3] = 0x7F),
            ("volume past the device", |b, _, _| b[BS_VOLUME_LENGTH + 4] = 1),
            ("FAT over the heap", |b, _, _| b[BS_FAT_LENGTH + 2] = 1),
            ("root cluster 1", |b, _, _| {
                b[BS_ROOT_CLUSTER..BS_ROOT_CLUSTER + 4].copy_from_slice(&1u32.to_le_bytes())
            }),
            ("root chain loops", |b, g, _| {
                let at = g.fat_offset as usize + g.root_cluster as usize * 4;
                b[at..at + 4].copy_from_slice(&(g.root_cluster as u32).to_le_bytes());
                let dir = g.cluster_offset(g.root_cluster) as usize;
                b[dir..dir + (g.cluster_size as usize)].fill(0x85);
            }),
            ("no bitmap entry", |b, _, root| {
                for e in (root..root + 96).step_by(32) {
                    if b[e] == ENTRY_ALLOCATION_BITMAP {
                        b[e] = 0x01;
                    }
                }
            }),
            ("bitmap too short", |b, _, root| {
                b[root + 32 + 24..root + 32 + 32].fill(0)
            }),
            ("bitmap outside the heap", |b, _, root| b[root + 32 + 23] = 0x40),
        ];
        assert_eq!(
            good[root + 32],
            ENTRY_ALLOCATION_BITMAP,
            "mkfs.exfat puts the bitmap entry second"
        );
        for (what, patch) in cases {
            let mut bytes = good.clone();
            patch(&mut bytes, &g, root);
            assert_bad_filesystem(used_extents(&bytes), "memory", what)
        }
        assert!(!probe(&good[..good.len() / 2].to_vec()).expect("probe"));

        let mut rng = StdRng::seed_from_u64(3);
        let mut bytes = good.clone();
        for _ in 0..3000 {
            for at in [0, root, fat] {
                bytes[at..at + 512].copy_from_slice(&good[at..at + 512]);
            }
            for _ in 0..rng.random_range(1..4) {
                let base = [0, root, fat][rng.random_range(0..3)];
                let at = base
                    + if base == 0 {
                        rng.random_range(64..112)
                    } else {
                        rng.random_range(0..128)
                    };
                bytes[at] = rng.random();
            }
            let _ = probe(&bytes);
            if let Ok(extents) = used_extents(&bytes) {
                assert_sorted_disjoint(&extents, bytes.len() as u64);
            }
        }
    }
}
