//! XFS: the free-space B+tree of each allocation group says which blocks are free; everything
//! else is used.
//!
//! The filesystem is cut into allocation groups (AGs) of `sb_agblocks` blocks (the last may be
//! shorter). Each AG starts with its superblock copy, then the AGF (free space header) in its
//! second sector, whose by-block-number B+tree ("bnobt") lists the free extents of the AG in
//! ascending order. Used is the whole AG minus those extents: AG headers, the free list, the inode
//! chunks, every btree, the internal log and all file data, with no need to know what is what.
//!
//! Btree blocks are short-form: v4 (`ABTB`) with a 16-byte header, v5 (`AB3B`, CRC filesystems)
//! with a 56-byte header that also names the block's disk address and owning AG, which are
//! checked. The leaves are found by following the leftmost pointers down from the root and then
//! the right-sibling chain; records must ascend, which also rules out sibling loops.
//!
//! Only the data device is imaged: an external log or a realtime section lives elsewhere. A log
//! that needs recovery is not detected (that takes parsing the log); capture expects a cleanly
//! unmounted filesystem, as any block-level copy does.

use crate::imaging::disk::{ReadAt, be};
use crate::imaging::extent::{Extent, ExtentList};
use crate::{Error, Result};

/// `sb_magicnum`.
const MAGIC: &[u8; 4] = b"XFSB";
/// `agf_magicnum`.
const AGF_MAGIC: &[u8; 4] = b"XAGF";
/// Free space by block number btree block magic, v4 and v5.
const BNOBT_MAGIC_V4: &[u8; 4] = b"ABTB";
const BNOBT_MAGIC_V5: &[u8; 4] = b"AB3B";
/// Btree block header lengths, v4 and v5 (short-form pointers).
const BLOCK_HEADER_V4: usize = 16;
const BLOCK_HEADER_V5: usize = 56;
/// A free extent record or key: start block and block count, both `u32`.
const RECORD_LEN: usize = 8;
/// A short-form child pointer: an AG block number.
const POINTER_LEN: usize = 4;
/// "No sibling".
const NULL_AG_BLOCK: u32 = u32::MAX;
/// Deepest free space btree accepted (the kernel's limit for any AG btree is 9 levels).
const MAX_LEVELS: u32 = 9;
/// Bytes of the superblock and of the AGF that are read.
const HEADER_LEN: usize = 512;

// Superblock fields (byte offsets, big-endian).
const SB_BLOCKSIZE: usize = 4;
const SB_DBLOCKS: usize = 8;
const SB_AGBLOCKS: usize = 84;
const SB_AGCOUNT: usize = 88;
const SB_VERSIONNUM: usize = 100;
const SB_SECTSIZE: usize = 102;

// AGF fields.
const AGF_SEQNO: usize = 8;
const AGF_LENGTH: usize = 12;
const AGF_BNO_ROOT: usize = 16;
const AGF_BNO_LEVEL: usize = 28;

// Btree block fields.
const BB_LEVEL: usize = 4;
const BB_NUMRECS: usize = 6;
const BB_RIGHTSIB: usize = 12;
const BB_BLKNO: usize = 16;
const BB_OWNER: usize = 48;

/// The layout of the filesystem, from its superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Geometry {
    block_size: u64,
    sector_size: u64,
    /// Blocks in the data section.
    blocks: u64,
    ag_blocks: u64,
    ag_count: u64,
    /// Version 5 (CRC) btree headers.
    v5: bool,
}

impl Geometry {
    /// Blocks in AG `ag` (the last one holds what is left).
    fn ag_len(&self, ag: u64) -> u64 {
        (self.blocks - ag * self.ag_blocks).min(self.ag_blocks)
    }

    /// Byte offset of block `agbno` of AG `ag`. Callers keep `agbno` below `ag_len(ag)`, so the
    /// result is inside the filesystem, which [`parse_superblock`] checked fits the device.
    fn byte_offset(&self, ag: u64, agbno: u64) -> u64 {
        (ag * self.ag_blocks + agbno) * self.block_size
    }

    fn header_len(&self) -> usize {
        if self.v5 { BLOCK_HEADER_V5 } else { BLOCK_HEADER_V4 }
    }

    /// Records (leaf) or key/pointer pairs (node) that fit in one btree block.
    fn max_records(&self, leaf: bool) -> usize {
        let per = if leaf { RECORD_LEN } else { RECORD_LEN + POINTER_LEN };
        (self.block_size as usize - self.header_len()) / per
    }
}

/// True when `dev` holds an XFS filesystem whose superblock is consistent.
pub fn probe(dev: &dyn ReadAt) -> Result<bool> {
    Ok(match read_superblock(dev)? {
        Some(sb) => parse_superblock(&sb, dev.size()).is_ok(),
        None => false,
    })
}

/// Used byte ranges of the XFS filesystem on `dev`, relative to the start of `dev`, sorted and
/// merged.
pub fn used_extents(dev: &dyn ReadAt) -> Result<Vec<Extent>> {
    let bad = |reason: String| Error::BadFilesystem {
        what: dev.name(),
        reason,
    };
    let sb =
        read_superblock(dev)?.ok_or_else(|| bad(format!("too small for an XFS superblock ({} bytes)", dev.size())))?;
    let g = parse_superblock(&sb, dev.size()).map_err(bad)?;
    let mut list = ExtentList::new();
    let mut block = vec![0u8; g.block_size as usize];
    for ag in 0..g.ag_count {
        add_used_in_ag(dev, &g, ag, &mut block, &mut list)?;
    }
    Ok(list.into_vec())
}

/// The first sector of `dev`, or None when it is smaller.
fn read_superblock(dev: &dyn ReadAt) -> Result<Option<Vec<u8>>> {
    if dev.size() < HEADER_LEN as u64 {
        return Ok(None);
    }
    let mut sb = vec![0u8; HEADER_LEN];
    dev.read_exact_at(&mut sb, 0)?;
    Ok(Some(sb))
}

/// Checks the superblock; the error is the reason it is not a usable XFS filesystem.
fn parse_superblock(sb: &[u8], dev_size: u64) -> std::result::Result<Geometry, String> {
    const SHORT: &str = "superblock too short";
    if sb.get(..4) != Some(MAGIC.as_slice()) {
        return Err("no XFSB magic".into());
    }
    let field32 = |off| be::u32(sb, off).map(u64::from).ok_or(SHORT);
    let block_size = field32(SB_BLOCKSIZE)?;
    if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
        return Err(format!("{block_size}-byte blocks"));
    }
    let sector_size = be::u16(sb, SB_SECTSIZE).map(u64::from).ok_or(SHORT)?;
    if !sector_size.is_power_of_two() || !(512..=block_size).contains(&sector_size) {
        return Err(format!("{sector_size}-byte sectors with {block_size}-byte blocks"));
    }
    let version = be::u16(sb, SB_VERSIONNUM).ok_or(SHORT)? & 0xF;
    if !matches!(version, 4 | 5) {
        return Err(format!("superblock version {version}"));
    }
    let blocks = be::u64(sb, SB_DBLOCKS).ok_or(SHORT)?;
    let ag_blocks = field32(SB_AGBLOCKS)?;
    let ag_count = field32(SB_AGCOUNT)?;
    // Each AG holds at least its four header sectors and a btree root.
    if ag_blocks * block_size < 4 * sector_size + block_size || ag_count == 0 {
        return Err(format!("{ag_count} allocation groups of {ag_blocks} blocks"));
    }
    // Every AG but the last is whole, and the last is not empty.
    let covered = ag_blocks * ag_count; // both < 2^32: no overflow
    if blocks > covered || blocks <= covered - ag_blocks {
        return Err(format!(
            "{blocks} blocks do not make {ag_count} allocation groups of {ag_blocks} blocks"
        ));
    }
    if blocks.checked_mul(block_size).is_none_or(|bytes| bytes > dev_size) {
        return Err(format!(
            "filesystem of {blocks} {block_size}-byte blocks is larger than the {dev_size}-byte device"
        ));
    }
    Ok(Geometry {
        block_size,
        sector_size,
        blocks,
        ag_blocks,
        ag_count,
        v5: version == 5,
    })
}

/// Adds AG `ag` minus the free extents its bnobt lists. `block` is a buffer of one block.
fn add_used_in_ag(dev: &dyn ReadAt, g: &Geometry, ag: u64, block: &mut [u8], list: &mut ExtentList) -> Result<()> {
    let bad = |reason: String| Error::BadFilesystem {
        what: dev.name(),
        reason: format!("allocation group {ag}: {reason}"),
    };
    let ag_len = g.ag_len(ag);
    let mut agf = [0u8; 64];
    dev.read_exact_at(&mut agf, g.byte_offset(ag, 0) + g.sector_size)?;
    if agf.get(..4) != Some(AGF_MAGIC.as_slice()) {
        return Err(bad("no XAGF magic in the AGF".into()));
    }
    let field = |off| be::u32(&agf, off).map(u64::from).unwrap_or(u64::MAX);
    if field(AGF_SEQNO) != ag || field(AGF_LENGTH) != ag_len {
        return Err(bad(format!(
            "AGF says it is AG {} of {} blocks, expected {ag_len} blocks",
            field(AGF_SEQNO),
            field(AGF_LENGTH)
        )));
    }
    let levels = field(AGF_BNO_LEVEL);
    if levels == 0 || levels > u64::from(MAX_LEVELS) {
        return Err(bad(format!("free space btree of {levels} levels")));
    }

    // Down the leftmost edge to the first leaf.
    let mut agbno = field(AGF_BNO_ROOT);
    for level in (1..levels).rev() {
        let records = read_btree_block(dev, g, ag, agbno, level, block).map_err(bad)?;
        if records == 0 {
            return Err(bad(format!("free space btree node at block {agbno} is empty")));
        }
        let pointer_at = g.header_len() + g.max_records(false) * RECORD_LEN;
        agbno = be::u32(block, pointer_at).map(u64::from).unwrap_or(u64::MAX);
    }

    // Along the leaves: used is what lies between free extents.
    let mut used_from = 0u64;
    let mut leaves = 0u64;
    loop {
        let records = read_btree_block(dev, g, ag, agbno, 0, block).map_err(bad)?;
        leaves += 1;
        if records == 0 && (levels > 1 || leaves > 1) {
            return Err(bad(format!("free space btree leaf at block {agbno} is empty")));
        }
        for i in 0..records {
            let at = g.header_len() + i * RECORD_LEN;
            let start = be::u32(block, at).map_or(u64::MAX, u64::from);
            let count = be::u32(block, at + 4).map_or(0, u64::from);
            if count == 0 || start < used_from || start + count > ag_len {
                return Err(bad(format!(
                    "free extent of {count} blocks at {start} (leaf block {agbno}) is empty, out of \
                     order or past the {ag_len}-block AG"
                )));
            }
            push_blocks(list, g, ag, used_from, start);
            used_from = start + count;
        }
        let right = be::u32(block, BB_RIGHTSIB).unwrap_or(NULL_AG_BLOCK);
        if right == NULL_AG_BLOCK {
            break;
        }
        // Records ascend strictly across leaves, so a chain longer than the AG is a loop.
        if leaves >= ag_len {
            return Err(bad("free space btree leaves loop".into()));
        }
        agbno = u64::from(right);
    }
    push_blocks(list, g, ag, used_from, ag_len);
    Ok(())
}

/// Adds blocks `start..end` of AG `ag`.
fn push_blocks(list: &mut ExtentList, g: &Geometry, ag: u64, start: u64, end: u64) {
    if end > start {
        list.push(g.byte_offset(ag, start), (end - start) * g.block_size);
    }
}

/// Reads block `agbno` of AG `ag` into `block` and checks it is a bnobt block at `level`;
/// returns its record count, which fits the block.
fn read_btree_block(
    dev: &dyn ReadAt,
    g: &Geometry,
    ag: u64,
    agbno: u64,
    level: u64,
    block: &mut [u8],
) -> std::result::Result<usize, String> {
    if agbno >= g.ag_len(ag) {
        return Err(format!("free space btree block {agbno} is outside the AG"));
    }
    let offset = g.byte_offset(ag, agbno);
    dev.read_exact_at(block, offset).map_err(|e| e.to_string())?;
    let magic = if g.v5 { BNOBT_MAGIC_V5 } else { BNOBT_MAGIC_V4 };
    if block.get(..4) != Some(magic.as_slice()) {
        return Err(format!(
            "free space btree block {agbno} has no {} magic",
            String::from_utf8_lossy(magic)
        ));
    }
    let got_level = be::u16(block, BB_LEVEL).map_or(u64::MAX, u64::from);
    if got_level != level {
        return Err(format!(
            "free space btree block {agbno} is at level {got_level}, expected {level}"
        ));
    }
    if g.v5 {
        // The header names where it belongs (disk address in 512-byte units, owning AG): a block
        // from elsewhere, or a stale one, does not pass.
        let blkno = be::u64(block, BB_BLKNO);
        let owner = be::u32(block, BB_OWNER).map(u64::from);
        if blkno != Some(offset / 512) || owner != Some(ag) {
            return Err(format!(
                "free space btree block {agbno} says it is at sector {blkno:?} of AG {owner:?}"
            ));
        }
    }
    let records = usize::from(be::u16(block, BB_NUMRECS).unwrap_or(u16::MAX));
    let max = g.max_records(level == 0);
    if records > max {
        return Err(format!(
            "free space btree block {agbno} holds {records} records, at most {max} fit"
        ));
    }
    Ok(records)
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

    const INSTALL: &str = "apt-get install -y xfsprogs";

    fn mkfs(img: &Path, size: u64, args: &[&str]) -> Vec<u8> {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(size))
            .expect("create image");
        output_ok("mkfs.xfs", command("mkfs.xfs", INSTALL).arg("-q").args(args).arg(img));
        std::fs::read(img).expect("read image")
    }

    /// Free blocks of all AGs as xfs_db counts them: the by-size btrees and the AG free lists.
    fn xfs_db_free_blocks(img: &Path) -> u64 {
        let out = output_ok(
            "xfs_db",
            command("xfs_db", INSTALL).args(["-r", "-c", "freesp -s"]).arg(img),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("total free blocks "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no free block count in {text}"))
    }

    /// Fresh filesystems, v5 and v4, several AGs: used plus free (counted by xfs_db from the other
    /// free space btree) is every block.
    #[test]
    fn fresh_filesystems_use_little() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, args) in [
            ("v5", &["-d", "agcount=4"][..]),
            ("v4", &["-m", "crc=0", "-d", "agcount=3"][..]),
            ("v5-1k", &["-b", "size=1024", "-m", "reflink=0"][..]),
        ] {
            let img = dir.path().join(format!("{name}.img"));
            let bytes = mkfs(&img, 320 << 20, args);
            assert!(probe(&bytes).expect("probe"), "{name}: not recognised");
            let g = parse_superblock(&bytes[..512], bytes.len() as u64).expect("geometry");
            assert_eq!(g.v5, name.starts_with("v5"), "{name}");
            let extents = used_extents(&bytes).expect("used extents");
            assert_sorted_disjoint(&extents, bytes.len() as u64);
            let used = total_len(&extents);
            let free = xfs_db_free_blocks(&img) * g.block_size;
            let all = g.blocks * g.block_size;
            // The free list blocks are used here (they hold nothing, but are not in the bnobt).
            let free_list: u64 = (0..g.ag_count)
                .map(|ag| {
                    let agf = (g.byte_offset(ag, 0) + g.sector_size) as usize;
                    u64::from(be::u32(&bytes, agf + 48).expect("agf_flcount")) * g.block_size
                })
                .sum();
            assert_eq!(used + free, all + free_list, "{name}: used {used} + free {free}");
            assert!(
                used < all / 4,
                "{name}: {used} of {all} bytes used on an empty filesystem"
            );
            assert_eq!(extents.first().map(|e| e.offset), Some(0), "{name}: superblock kept");
        }
    }

    #[test]
    fn other_data_is_not_xfs() {
        let zeros = vec![0u8; 1 << 20];
        assert!(!probe(&zeros).expect("probe"));
        assert!(matches!(used_extents(&zeros), Err(Error::BadFilesystem { .. })));
        let tiny = vec![0u8; 100];
        assert!(!probe(&tiny).expect("probe"));
        assert!(used_extents(&tiny).is_err());
    }

    /// Damaged superblocks, AGFs and btree blocks are errors naming the device, never panics, and
    /// whatever is accepted stays inside the device.
    #[test]
    fn damage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("x.img");
        let good = mkfs(&img, 320 << 20, &["-d", "agcount=4"]);
        let g = parse_superblock(&good[..512], good.len() as u64).expect("geometry");
        let bs = g.block_size as usize;
        let agf1 = (g.ag_blocks * g.block_size + g.sector_size) as usize;
        let bno_root = be::u32(&good, agf1 + AGF_BNO_ROOT).expect("root") as usize;
        let leaf = (g.ag_blocks as usize + bno_root) * bs;

        type Patch = fn(&mut [u8], usize, usize);
        let cases: [(&str, Patch); 9] = [
            ("superblock agcount huge", |b, _, _| {
                b[SB_AGCOUNT..SB_AGCOUNT + 4].copy_from_slice(&[0xFF; 4])
            }),
            ("AGF magic", |b, agf, _| b[agf] = b'Y'),
            ("AGF length", |b, agf, _| b[agf + AGF_LENGTH + 3] ^= 1),
            ("btree levels 0", |b, agf, _| {
                b[agf + AGF_BNO_LEVEL..agf + AGF_BNO_LEVEL + 4].fill(0)
            }),
            ("btree levels 30", |b, agf, _| b[agf + AGF_BNO_LEVEL + 3] = 30),
            ("root outside the AG", |b, agf, _| {
                b[agf + AGF_BNO_ROOT..agf + AGF_BNO_ROOT + 4].fill(0xEE)
            }),
            ("leaf record count huge", |b, _, leaf| {
                b[leaf + BB_NUMRECS..leaf + BB_NUMRECS + 2].fill(0xFF)
            }),
            ("free extent past the AG", |b, _, leaf| {
                b[leaf + BLOCK_HEADER_V5 + 4..leaf + BLOCK_HEADER_V5 + 8].fill(0x7F)
            }),
            ("leaf from another AG", |b, _, leaf| b[leaf + BB_OWNER + 3] ^= 3),
        ];
        for (what, patch) in cases {
            let mut bytes = good.clone();
            patch(&mut bytes, agf1, leaf);
            assert_bad_filesystem(used_extents(&bytes), "memory", what)
        }
        // A device cut short of the filesystem.
        assert!(!probe(&good[..good.len() / 2].to_vec()).expect("probe"));

        let mut rng = StdRng::seed_from_u64(5);
        let mut bytes = good.clone();
        for _ in 0..3000 {
            for at in [0, agf1, leaf] {
                bytes[at..at + 512].copy_from_slice(&good[at..at + 512]);
            }
            for _ in 0..rng.random_range(1..4) {
                let base = [0, agf1, leaf][rng.random_range(0..3)];
                bytes[base + rng.random_range(0..128)] = rng.random();
            }
            let _ = probe(&bytes);
            if let Ok(extents) = used_extents(&bytes) {
                assert_sorted_disjoint(&extents, bytes.len() as u64);
            }
        }
    }
}
