//! ext2, ext3 and ext4: which blocks are in use, read from the block bitmaps.
//!
//! The filesystem is cut into block groups of `s_blocks_per_group` blocks. Each group has a
//! descriptor, in the group descriptor table right after the superblock (or, with `meta_bg`, in the
//! first, second and last group of each meta group), that gives the blocks of its block bitmap,
//! inode bitmap and inode table; with `flex_bg` these may lie in another group, which changes
//! nothing here since the addresses are followed as given. A set bit in a group's block bitmap is a
//! used block (a used cluster with `bigalloc`).
//!
//! A group flagged `BLOCK_UNINIT` (trusted only with `gdt_csum` or `metadata_csum`, as the kernel
//! does) has no bitmap on disk. Its used blocks are computed like `ext4_init_block_bitmap`: the
//! superblock backup, group descriptors and reserved GDT blocks when the group holds a backup
//! (sparse_super / sparse_super2 rules; the meta_bg rules for descriptor blocks), plus the block
//! bitmap, inode bitmap and inode table blocks of any group that fall inside it.
//!
//! To be safe against a bitmap that forgot them, those base metadata blocks and the bitmaps and
//! inode tables of all groups are counted as used in every group, and so are the blocks before
//! `s_first_data_block` (the 1 KiB boot block of 1 KiB-block filesystems).
//!
//! Groups are processed in order, one bitmap block at a time (bitmaps stored next to each other,
//! as with `flex_bg`, are read in one batch), so memory stays small for any filesystem size: the
//! group descriptors (a few dozen bytes per group) and the resulting extent list.
//!
//! A filesystem whose journal needs recovery, an external journal device, or one with incompatible
//! features this module does not know is returned whole, with a warning: the bitmaps on disk may
//! not tell the whole story there, and a full copy is always correct.

use crate::imaging::disk::{ReadAt, le};
use crate::imaging::extent::{Extent, ExtentList};
use crate::{Error, Result};

/// Byte offset of the primary superblock.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes of the superblock read.
const SUPERBLOCK_LEN: usize = 1024;
/// `s_magic`.
const MAGIC: u16 = 0xEF53;
/// Largest supported `s_log_block_size`: 64 KiB blocks.
const MAX_LOG_BLOCK_SIZE: u32 = 6;
/// Largest supported `s_log_cluster_size` (e2fsprogs' limit: 512 MiB clusters).
const MAX_LOG_CLUSTER_SIZE: u32 = 19;
/// At most this many bytes of consecutive bitmap or descriptor blocks are read at once.
const MAX_BATCH: usize = 1 << 20;

// Superblock fields (byte offsets in the superblock).
const S_BLOCKS_COUNT_LO: usize = 0x04;
const S_FIRST_DATA_BLOCK: usize = 0x14;
const S_LOG_BLOCK_SIZE: usize = 0x18;
const S_LOG_CLUSTER_SIZE: usize = 0x1C;
const S_BLOCKS_PER_GROUP: usize = 0x20;
const S_CLUSTERS_PER_GROUP: usize = 0x24;
const S_INODES_PER_GROUP: usize = 0x28;
const S_MAGIC: usize = 0x38;
const S_REV_LEVEL: usize = 0x4C;
const S_INODE_SIZE: usize = 0x58;
const S_FEATURE_COMPAT: usize = 0x5C;
const S_FEATURE_INCOMPAT: usize = 0x60;
const S_FEATURE_RO_COMPAT: usize = 0x64;
const S_RESERVED_GDT_BLOCKS: usize = 0xCE;
const S_DESC_SIZE: usize = 0xFE;
const S_FIRST_META_BG: usize = 0x104;
const S_BLOCKS_COUNT_HI: usize = 0x150;
const S_BACKUP_BGS: usize = 0x24C;

const COMPAT_SPARSE_SUPER2: u32 = 0x200;

const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
/// Incompatible features that do not change how blocks are allocated or where metadata is:
/// filetype, recover, journal_dev, meta_bg, extent, 64bit, mmp, flex_bg, ea_inode, dirdata,
/// csum_seed, largedir, inline_data, encrypt, casefold.
const INCOMPAT_KNOWN: u32 = 0x2
    | 0x4
    | 0x8
    | 0x10
    | 0x40
    | 0x80
    | 0x100
    | 0x200
    | 0x400
    | 0x1000
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x1_0000
    | 0x2_0000;

const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

// Group descriptor fields.
const BG_BLOCK_BITMAP_LO: usize = 0x00;
const BG_INODE_BITMAP_LO: usize = 0x04;
const BG_INODE_TABLE_LO: usize = 0x08;
const BG_FLAGS: usize = 0x12;
const BG_BLOCK_BITMAP_HI: usize = 0x20;
const BG_INODE_BITMAP_HI: usize = 0x24;
const BG_INODE_TABLE_HI: usize = 0x28;

/// `bg_flags`: the block bitmap is not initialised on disk.
const BG_BLOCK_UNINIT: u16 = 0x2;

/// True when `dev` holds ext2/3/4 (magic 0xEF53 at byte 1024+56).
pub fn probe(dev: &dyn ReadAt) -> Result<bool> {
    if dev.size() < SUPERBLOCK_OFFSET + SUPERBLOCK_LEN as u64 {
        return Ok(false);
    }
    let mut magic = [0u8; 2];
    dev.read_exact_at(&mut magic, SUPERBLOCK_OFFSET + S_MAGIC as u64)?;
    Ok(u16::from_le_bytes(magic) == MAGIC)
}

/// Used byte ranges of the filesystem on `dev`, relative to the start of `dev`, sorted and merged.
pub fn used_extents(dev: &dyn ReadAt) -> Result<Vec<Extent>> {
    let geo = match Geometry::read(dev)? {
        Plan::Groups(geo) => geo,
        Plan::Whole(why) => {
            tracing::warn!(fs = %dev.name(), "ext filesystem {why}: capturing all of it");
            return Ok(vec![Extent::new(0, dev.size())]);
        }
    };
    let descs = geo.read_descriptors(dev)?;
    geo.collect(dev, &descs)
}

/// The primary superblock of `dev`, its magic checked.
fn read_superblock(dev: &dyn ReadAt) -> Result<Vec<u8>> {
    if dev.size() < SUPERBLOCK_OFFSET + SUPERBLOCK_LEN as u64 {
        return Err(bad(
            dev,
            format!("{} bytes is too small for an ext filesystem", dev.size()),
        ));
    }
    let mut buf = vec![0u8; SUPERBLOCK_LEN];
    dev.read_exact_at(&mut buf, SUPERBLOCK_OFFSET)?;
    let sb = Fields(&buf);
    if sb.u16(S_MAGIC) != u64::from(MAGIC) {
        return Err(bad(dev, "no ext2/3/4 superblock (bad magic)"));
    }
    Ok(buf)
}

/// The size in bytes of the ext filesystem on `dev` (its block count times its block size), as
/// resize2fs left it.
pub fn filesystem_size(dev: &dyn ReadAt) -> Result<u64> {
    let buf = read_superblock(dev)?;
    let sb = Fields(&buf);
    let log_bs = sb.u32(S_LOG_BLOCK_SIZE);
    if log_bs > u64::from(MAX_LOG_BLOCK_SIZE) {
        return Err(bad(dev, format!("block size 1024 << {log_bs} is larger than 64 KiB")));
    }
    let wide = sb.flags(S_FEATURE_INCOMPAT) & INCOMPAT_64BIT != 0;
    let blocks = sb.u32(S_BLOCKS_COUNT_LO) | if wide { sb.u32(S_BLOCKS_COUNT_HI) << 32 } else { 0 };
    blocks
        .checked_mul(1024 << log_bs)
        .ok_or_else(|| bad(dev, format!("{blocks} blocks of 1024 << {log_bs} bytes overflow")))
}

/// An error about the filesystem on `dev`.
fn bad(dev: &dyn ReadAt, reason: impl Into<String>) -> Error {
    Error::BadFilesystem {
        what: dev.name(),
        reason: reason.into(),
    }
}

/// What to do with a filesystem.
enum Plan {
    /// Read the bitmaps.
    Groups(Geometry),
    /// Keep everything, for the reason given.
    Whole(&'static str),
}

/// The layout of the filesystem, from its superblock. Block numbers are absolute.
#[derive(Debug)]
struct Geometry {
    /// Block size in bytes.
    bs: u64,
    /// Blocks in the filesystem.
    blocks: u64,
    /// First block of group 0 (1 with 1 KiB blocks, else 0).
    first_data_block: u64,
    /// Block holding the primary superblock (1 with 1 KiB blocks, else 0).
    sb_block: u64,
    /// Blocks per group.
    bpg: u64,
    /// Blocks per cluster (1 without bigalloc); bitmap bits are clusters.
    ratio: u64,
    /// Number of groups.
    groups: u64,
    /// Bytes per group descriptor.
    desc_size: usize,
    /// Group descriptors per block.
    descs_per_block: u64,
    /// Blocks of the whole descriptor table.
    gdt_blocks: u64,
    /// Reserved GDT blocks after each descriptor table copy (for online resize).
    reserved_gdt: u64,
    /// Blocks of one group's inode table.
    itable_blocks: u64,
    /// `meta_bg`: descriptor blocks from `first_meta_bg` on live in their meta group.
    meta_bg: bool,
    /// First descriptor block handled by meta_bg rules.
    first_meta_bg: u64,
    /// Descriptors carry checksums, so `BLOCK_UNINIT` is to be believed.
    csum: bool,
    /// `sparse_super`: backups only in groups 0, 1 and powers of 3, 5 and 7.
    sparse_super: bool,
    /// `sparse_super2`: backups only in group 0 and these two groups.
    sparse_super2: Option<[u64; 2]>,
    /// 64-bit descriptors: block numbers have high halves.
    wide: bool,
}

/// What capture needs from one group descriptor.
#[derive(Debug, Clone, Copy)]
struct Desc {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    flags: u16,
}

/// Field readers over the superblock; it is always `SUPERBLOCK_LEN` bytes, so every field is there.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u16(&self, off: usize) -> u64 {
        le::u16(self.0, off).map_or(0, u64::from)
    }
    fn u32(&self, off: usize) -> u64 {
        le::u32(self.0, off).map_or(0, u64::from)
    }
    fn flags(&self, off: usize) -> u32 {
        le::u32(self.0, off).unwrap_or(0)
    }
}

impl Geometry {
    /// Reads and checks the primary superblock.
    fn read(dev: &dyn ReadAt) -> Result<Plan> {
        let buf = read_superblock(dev)?;
        let sb = Fields(&buf);
        let compat = sb.flags(S_FEATURE_COMPAT);
        let incompat = sb.flags(S_FEATURE_INCOMPAT);
        let ro_compat = sb.flags(S_FEATURE_RO_COMPAT);
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Ok(Plan::Whole("is an external journal device"));
        }
        if incompat & INCOMPAT_RECOVER != 0 {
            return Ok(Plan::Whole(
                "needs journal recovery (mounted, or not cleanly unmounted)",
            ));
        }
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Ok(Plan::Whole("has unknown incompatible features"));
        }

        let log_bs = u32::try_from(sb.u32(S_LOG_BLOCK_SIZE)).unwrap_or(u32::MAX);
        if log_bs > MAX_LOG_BLOCK_SIZE {
            return Err(bad(dev, format!("block size 1024 << {log_bs} is larger than 64 KiB")));
        }
        let bs = 1024u64 << log_bs;
        let bigalloc = ro_compat & RO_COMPAT_BIGALLOC != 0;
        let ratio = if bigalloc {
            let log_cs = u32::try_from(sb.u32(S_LOG_CLUSTER_SIZE)).unwrap_or(u32::MAX);
            if log_cs < log_bs || log_cs > MAX_LOG_CLUSTER_SIZE {
                return Err(bad(
                    dev,
                    format!("cluster size 1024 << {log_cs} does not fit block size {bs}"),
                ));
            }
            1u64 << (log_cs - log_bs)
        } else {
            1
        };

        let bpg = sb.u32(S_BLOCKS_PER_GROUP);
        let cpg = if bigalloc { sb.u32(S_CLUSTERS_PER_GROUP) } else { bpg };
        if cpg == 0 || cpg > 8 * bs {
            return Err(bad(
                dev,
                format!("{cpg} blocks (clusters) per group, must be 1 to {}", 8 * bs),
            ));
        }
        if cpg.checked_mul(ratio) != Some(bpg) {
            return Err(bad(
                dev,
                format!("{bpg} blocks per group is not {cpg} clusters of {ratio} blocks"),
            ));
        }

        let wide = incompat & INCOMPAT_64BIT != 0;
        let blocks = sb.u32(S_BLOCKS_COUNT_LO) | if wide { sb.u32(S_BLOCKS_COUNT_HI) << 32 } else { 0 };
        let first_data_block = sb.u32(S_FIRST_DATA_BLOCK);
        if first_data_block > 1 || (first_data_block == 1 && (bs != 1024 || ratio != 1)) {
            return Err(bad(
                dev,
                format!("first data block {first_data_block} is impossible with {bs}-byte blocks"),
            ));
        }
        if blocks <= first_data_block {
            return Err(bad(dev, format!("block count {blocks} leaves no block groups")));
        }
        match blocks.checked_mul(bs) {
            Some(bytes) if bytes <= dev.size() => {}
            _ => {
                return Err(bad(
                    dev,
                    format!(
                        "{blocks} blocks of {bs} bytes do not fit in the device ({} bytes)",
                        dev.size()
                    ),
                ));
            }
        }

        let desc_size = if wide {
            let size = sb.u16(S_DESC_SIZE);
            if !(64..=1024).contains(&size) || !size.is_power_of_two() {
                return Err(bad(dev, format!("group descriptor size {size} (64bit)")));
            }
            size
        } else {
            32
        };

        let inode_size = if sb.u32(S_REV_LEVEL) == 0 {
            128
        } else {
            sb.u16(S_INODE_SIZE)
        };
        if inode_size < 128 || inode_size > bs || !inode_size.is_power_of_two() {
            return Err(bad(dev, format!("inode size {inode_size}")));
        }
        let ipg = sb.u32(S_INODES_PER_GROUP);
        if ipg == 0 || ipg > 8 * bs {
            return Err(bad(dev, format!("{ipg} inodes per group, must be 1 to {}", 8 * bs)));
        }
        let itable_blocks = (ipg * inode_size).div_ceil(bs);

        let reserved_gdt = sb.u16(S_RESERVED_GDT_BLOCKS);
        if reserved_gdt > bs / 4 {
            return Err(bad(dev, format!("{reserved_gdt} reserved GDT blocks")));
        }

        let groups = (blocks - first_data_block).div_ceil(bpg);
        let descs_per_block = bs / desc_size;
        let gdt_blocks = groups.div_ceil(descs_per_block);
        let sb_block = SUPERBLOCK_OFFSET / bs;
        let meta_bg = incompat & INCOMPAT_META_BG != 0;
        let first_meta_bg = if meta_bg { sb.u32(S_FIRST_META_BG) } else { gdt_blocks };
        if first_meta_bg > gdt_blocks {
            return Err(bad(
                dev,
                format!("first meta block group {first_meta_bg} is past the {gdt_blocks} descriptor blocks"),
            ));
        }
        let sparse_super2 =
            (compat & COMPAT_SPARSE_SUPER2 != 0).then(|| [sb.u32(S_BACKUP_BGS), sb.u32(S_BACKUP_BGS + 4)]);

        Ok(Plan::Groups(Geometry {
            bs,
            blocks,
            first_data_block,
            sb_block,
            bpg,
            ratio,
            groups,
            desc_size: desc_size as usize,
            descs_per_block,
            gdt_blocks,
            reserved_gdt,
            itable_blocks,
            meta_bg,
            first_meta_bg,
            csum: ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
            sparse_super: ro_compat & RO_COMPAT_SPARSE_SUPER != 0,
            sparse_super2,
            wide,
        }))
    }

    /// First block of group `g`.
    fn group_start(&self, g: u64) -> u64 {
        self.first_data_block + g * self.bpg
    }

    /// True when group `g` holds a superblock backup (`ext4_bg_has_super`).
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if let Some([a, b]) = self.sparse_super2 {
            return g == a || g == b;
        }
        if g == 1 || !self.sparse_super {
            return true;
        }
        g % 2 == 1 && (is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7))
    }

    /// Blocks at the start of group `g` taken by the superblock, descriptors and reserved GDT
    /// blocks (`ext4_num_base_meta_blocks`).
    fn base_meta_blocks(&self, g: u64) -> u64 {
        let sup = u64::from(self.has_super(g));
        let mut n = if !self.meta_bg || g < self.first_meta_bg * self.descs_per_block {
            if sup == 1 {
                let old_desc = if self.meta_bg {
                    self.first_meta_bg
                } else {
                    self.gdt_blocks
                };
                1 + old_desc + self.reserved_gdt
            } else {
                0
            }
        } else {
            let r = g % self.descs_per_block;
            sup + u64::from(r == 0 || r == 1 || r == self.descs_per_block - 1)
        };
        // 1 KiB blocks with bigalloc: group 0 starts at block 0 but the superblock is block 1.
        if g == 0 && self.sb_block > self.first_data_block {
            n += self.sb_block - self.first_data_block;
        }
        n
    }

    /// Block holding descriptor block `i` (`descriptor_loc`).
    fn desc_block(&self, i: u64) -> u64 {
        if !self.meta_bg || i < self.first_meta_bg {
            return self.sb_block + 1 + i;
        }
        let g = self.descs_per_block * i;
        let mut b = self.group_start(g) + u64::from(self.has_super(g));
        if i == 0 && self.sb_block > self.first_data_block {
            b += self.sb_block - self.first_data_block;
        }
        b
    }

    /// Reads and checks all group descriptors.
    fn read_descriptors(&self, dev: &dyn ReadAt) -> Result<Vec<Desc>> {
        let mut locs = Vec::new();
        for i in 0..self.gdt_blocks {
            let b = self.desc_block(i);
            if b >= self.blocks {
                return Err(bad(
                    dev,
                    format!(
                        "group descriptor block {i} at block {b} is past the end ({} blocks)",
                        self.blocks
                    ),
                ));
            }
            locs.push(Some(b));
        }
        let mut reader = BatchReader::new(dev, self.bs, locs);
        // Not preallocated from the header: the vector grows only as real descriptors check out.
        let mut descs = Vec::new();
        let mut g = 0u64;
        for i in 0..self.gdt_blocks {
            let block = reader
                .get(i as usize)?
                .ok_or_else(|| bad(dev, "descriptor block missing"))?;
            for raw in block.chunks_exact(self.desc_size) {
                if g >= self.groups {
                    break;
                }
                let d = self.parse_desc(dev, g, raw)?;
                self.check_desc(dev, g, &d)?;
                descs.push(d);
                g += 1;
            }
        }
        if g != self.groups {
            return Err(bad(dev, format!("read {g} group descriptors of {}", self.groups)));
        }
        Ok(descs)
    }

    fn parse_desc(&self, dev: &dyn ReadAt, g: u64, raw: &[u8]) -> Result<Desc> {
        let field = |lo: usize, hi: usize| -> Option<u64> {
            let lo = u64::from(le::u32(raw, lo)?);
            let hi = if self.wide { u64::from(le::u32(raw, hi)?) } else { 0 };
            Some(hi << 32 | lo)
        };
        let parsed = (|| {
            Some(Desc {
                block_bitmap: field(BG_BLOCK_BITMAP_LO, BG_BLOCK_BITMAP_HI)?,
                inode_bitmap: field(BG_INODE_BITMAP_LO, BG_INODE_BITMAP_HI)?,
                inode_table: field(BG_INODE_TABLE_LO, BG_INODE_TABLE_HI)?,
                flags: le::u16(raw, BG_FLAGS)?,
            })
        })();
        parsed.ok_or_else(|| {
            bad(
                dev,
                format!("group {g}: descriptor of {} bytes is too short", raw.len()),
            )
        })
    }

    /// The bitmaps and inode table must lie after the superblock and inside the filesystem.
    fn check_desc(&self, dev: &dyn ReadAt, g: u64, d: &Desc) -> Result<()> {
        let lo = self.sb_block + 1;
        for (what, start, len) in [
            ("block bitmap", d.block_bitmap, 1),
            ("inode bitmap", d.inode_bitmap, 1),
            ("inode table", d.inode_table, self.itable_blocks),
        ] {
            if start < lo || start >= self.blocks || self.blocks - start < len {
                return Err(bad(
                    dev,
                    format!(
                        "group {g}: {what} at block {start} ({len} blocks) is outside blocks {lo}..{}",
                        self.blocks
                    ),
                ));
            }
        }
        Ok(())
    }

    /// True when group `g`'s block bitmap is not on disk.
    fn block_uninit(&self, d: &Desc) -> bool {
        self.csum && d.flags & BG_BLOCK_UNINIT != 0
    }

    /// Walks the groups in order and gathers the used byte ranges.
    fn collect(&self, dev: &dyn ReadAt, descs: &[Desc]) -> Result<Vec<Extent>> {
        let bs = self.bs;
        let mut out = ExtentList::new();
        if self.first_data_block > 0 {
            out.push(0, self.first_data_block * bs);
        }
        let meta = metadata_ranges(descs, self.itable_blocks);
        let locs = descs
            .iter()
            .map(|d| (!self.block_uninit(d)).then_some(d.block_bitmap))
            .collect();
        let mut reader = BatchReader::new(dev, bs, locs);
        let mut bitmap = vec![0u8; bs as usize];
        let mut cursor = 0usize;
        for g in 0..self.groups {
            let start = self.group_start(g);
            let end = (start + self.bpg).min(self.blocks);
            let group = GroupBits {
                start,
                end,
                ratio: self.ratio,
            };
            match reader.get(g as usize)? {
                Some(block) => {
                    bitmap.clear();
                    bitmap.extend_from_slice(block);
                }
                None => bitmap.fill(0),
            }
            group.set_blocks(&mut bitmap, start, start + self.base_meta_blocks(g));
            while meta.get(cursor).is_some_and(|&(_, e)| e <= start) {
                cursor += 1;
            }
            for &(a, b) in meta.get(cursor..).unwrap_or_default() {
                if a >= end {
                    break;
                }
                group.set_blocks(&mut bitmap, a, b);
            }
            let clusters = (end - start).div_ceil(self.ratio);
            for_each_run(&bitmap, clusters, |first, len| {
                let b0 = start + first * self.ratio;
                let b1 = (start + (first + len) * self.ratio).min(end);
                out.push(b0 * bs, (b1 - b0) * bs);
            });
        }
        Ok(out.into_vec())
    }
}

/// The blocks of one group and how they map to its bitmap bits.
struct GroupBits {
    start: u64,
    end: u64,
    ratio: u64,
}

impl GroupBits {
    /// Marks the blocks `[a, b)` used, as far as they lie in this group.
    fn set_blocks(&self, bitmap: &mut [u8], a: u64, b: u64) {
        let a = a.max(self.start);
        let b = b.min(self.end);
        if a < b {
            set_bits(
                bitmap,
                (a - self.start) / self.ratio,
                (b - self.start).div_ceil(self.ratio),
            );
        }
    }
}

/// The block bitmaps, inode bitmaps and inode tables of all groups as sorted, merged block ranges
/// `[start, end)`.
fn metadata_ranges(descs: &[Desc], itable_blocks: u64) -> Vec<(u64, u64)> {
    fn add(v: &mut Vec<(u64, u64)>, a: u64, b: u64) {
        match v.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => v.push((a, b)),
        }
    }
    // Separately first, so the runs flex_bg lays out (bitmap after bitmap) merge right away.
    let (mut bb, mut ib, mut it) = (Vec::new(), Vec::new(), Vec::new());
    for d in descs {
        add(&mut bb, d.block_bitmap, d.block_bitmap + 1);
        add(&mut ib, d.inode_bitmap, d.inode_bitmap + 1);
        add(&mut it, d.inode_table, d.inode_table + itable_blocks);
    }
    bb.append(&mut ib);
    bb.append(&mut it);
    bb.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(bb.len());
    for (a, b) in bb {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// True when `g` is a power of `base` (`base` itself included).
fn is_power_of(g: u64, base: u64) -> bool {
    let mut n = base;
    while n < g {
        match n.checked_mul(base) {
            Some(next) => n = next,
            None => return false,
        }
    }
    n == g
}

/// Sets bits `[from, to)` of a little-endian bitmap (bit `i` is bit `i % 8` of byte `i / 8`).
fn set_bits(bitmap: &mut [u8], from: u64, to: u64) {
    let to = to.min(bitmap.len() as u64 * 8);
    let mut i = from;
    while i < to {
        if i.is_multiple_of(8) && to - i >= 8 {
            let (a, b) = ((i / 8) as usize, (to / 8) as usize);
            if let Some(bytes) = bitmap.get_mut(a..b) {
                bytes.fill(0xFF);
            }
            i = to / 8 * 8;
            continue;
        }
        if let Some(byte) = bitmap.get_mut((i / 8) as usize) {
            *byte |= 1 << (i % 8);
        }
        i += 1;
    }
}

/// Calls `f(first, len)` for each run of set bits among the first `nbits` bits of `bitmap`.
fn for_each_run(bitmap: &[u8], nbits: u64, mut f: impl FnMut(u64, u64)) {
    let nbits = nbits.min(bitmap.len() as u64 * 8);
    let mut open: Option<u64> = None;
    for (wi, chunk) in bitmap.chunks(8).enumerate() {
        let base = wi as u64 * 64;
        if base >= nbits {
            break;
        }
        let mut bytes = [0u8; 8];
        for (d, s) in bytes.iter_mut().zip(chunk) {
            *d = *s;
        }
        let mut w = u64::from_le_bytes(bytes);
        let valid = nbits - base;
        if valid < 64 {
            w &= (1u64 << valid) - 1;
        }
        let mut pos = 0u32;
        while pos < 64 {
            let rest = w >> pos;
            if rest == 0 {
                if let Some(s) = open.take() {
                    f(s, base + u64::from(pos) - s);
                }
                break;
            }
            let zeros = rest.trailing_zeros();
            if zeros > 0 {
                if let Some(s) = open.take() {
                    f(s, base + u64::from(pos) - s);
                }
                pos += zeros;
            }
            if open.is_none() {
                open = Some(base + u64::from(pos));
            }
            pos += (w >> pos).trailing_ones();
        }
    }
    if let Some(s) = open {
        f(s, nbits - s);
    }
}

/// Reads blocks by index in ascending order, fetching consecutive blocks in one read.
struct BatchReader<'a> {
    dev: &'a dyn ReadAt,
    bs: usize,
    /// Block number of each index; None for an index with nothing to read.
    locs: Vec<Option<u64>>,
    buf: Vec<u8>,
    /// Index whose block is at the start of `buf`.
    first: usize,
    /// Number of blocks in `buf`.
    count: usize,
}

impl<'a> BatchReader<'a> {
    fn new(dev: &'a dyn ReadAt, bs: u64, locs: Vec<Option<u64>>) -> Self {
        BatchReader {
            dev,
            bs: bs as usize,
            locs,
            buf: Vec::new(),
            first: 0,
            count: 0,
        }
    }

    /// The block of index `i`, or None when it has none.
    fn get(&mut self, i: usize) -> Result<Option<&[u8]>> {
        let Some(Some(start)) = self.locs.get(i).copied() else {
            return Ok(None);
        };
        if i < self.first || i >= self.first + self.count {
            let max = (MAX_BATCH / self.bs).max(1);
            let mut n = 1;
            while n < max && self.locs.get(i + n).copied().flatten() == Some(start + n as u64) {
                n += 1;
            }
            self.buf.resize(n * self.bs, 0);
            self.dev.read_exact_at(&mut self.buf, start * self.bs as u64)?;
            self.first = i;
            self.count = n;
        }
        let off = (i - self.first) * self.bs;
        Ok(self.buf.get(off..off + self.bs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::disk::Disk;
    use crate::imaging::fs::test_support::*;
    use std::collections::BTreeSet;
    use std::fs::{self, File};
    use std::io::Write as _;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    // ---- helpers -------------------------------------------------------------------------------

    fn cmd(name: &str) -> Command {
        crate::tools::test::command(name, "apt-get install -y e2fsprogs")
    }

    fn run(name: &str, c: &mut Command) -> Output {
        crate::tools::test::output(name, c)
    }

    fn run_ok(name: &str, c: &mut Command) -> Output {
        crate::tools::test::output_ok(name, c)
    }

    /// Deterministic pseudo-random bytes (xorshift64*), so data is neither zero nor repetitive.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            let mut v = Vec::with_capacity(n + 8);
            while v.len() < n {
                v.extend_from_slice(&self.next().to_le_bytes());
            }
            v.truncate(n);
            v
        }
    }

    /// Writes a tree of files under `root`; returns (path in the fs, content).
    fn populate(root: &Path, big: usize) -> Vec<(String, Vec<u8>)> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut files: Vec<(String, Vec<u8>)> = vec![
            ("big.bin".into(), rng.bytes(big)),
            ("docs/readme.txt".into(), b"fog ext test file\n".repeat(200)),
            ("empty".into(), Vec::new()),
            ("deep/a/b/c/d/leaf.bin".into(), rng.bytes(70_000)),
            ("zeros.bin".into(), vec![0u8; 300_000]),
        ];
        for i in 0..40usize {
            let len = 1000 + i * 997;
            files.push((format!("many/f{i:02}.dat"), rng.bytes(len)));
        }
        for (path, data) in &files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().expect("file has a parent")).expect("create source dir");
            fs::write(&p, data).expect("write source file");
        }
        files
    }

    /// A fresh zero-filled (sparse) file of `size` bytes.
    fn sparse_file(path: &Path, size: u64) {
        File::create(path)
            .expect("create image")
            .set_len(size)
            .expect("size image");
    }

    /// `mkfs_name opts... -d src img` on a fresh `size`-byte image.
    fn mkfs(mkfs_name: &str, opts: &[&str], size: u64, src: Option<&Path>, img: &Path) {
        sparse_file(img, size);
        let mut c = cmd(mkfs_name);
        c.args(["-F", "-q"]).args(opts);
        if let Some(src) = src {
            c.arg("-d").arg(src);
        }
        c.arg(img);
        run_ok(mkfs_name, &mut c);
    }

    /// A field of `dumpe2fs -h`.
    fn dumpe2fs_field(header: &str, field: &str) -> u64 {
        header
            .lines()
            .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("dumpe2fs shows no {field:?}:\n{header}"))
    }

    /// Used bytes according to e2fsprogs: (block count - free blocks) * block size.
    fn dumpe2fs_used(img: &Path) -> u64 {
        let out = run_ok("dumpe2fs", cmd("dumpe2fs").arg("-h").arg(img));
        let h = String::from_utf8_lossy(&out.stdout);
        let bs = dumpe2fs_field(&h, "Block size");
        (dumpe2fs_field(&h, "Block count") - dumpe2fs_field(&h, "Free blocks")) * bs
    }

    /// The full `dumpe2fs` listing (group flags and all).
    fn dumpe2fs_all(img: &Path) -> String {
        let out = run_ok("dumpe2fs", cmd("dumpe2fs").arg(img));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Copies only `extents` of `src` into a fresh sparse file of the same size.
    fn copy_extents(src: &Path, extents: &[Extent], dst: &Path) {
        let size = fs::metadata(src).expect("stat image").len();
        let from = File::open(src).expect("open image");
        sparse_file(dst, size);
        let to = fs::OpenOptions::new().write(true).open(dst).expect("open copy");
        let mut buf = vec![0u8; 1 << 20];
        for e in extents {
            let mut off = e.offset;
            while off < e.end() {
                let n = (e.end() - off).min(buf.len() as u64) as usize;
                let chunk = buf.get_mut(..n).expect("chunk fits the buffer");
                from.read_exact_at(chunk, off).expect("read image");
                to.write_all_at(chunk, off).expect("write copy");
                off += n as u64;
            }
        }
    }

    /// What a user would check on a deployed copy: e2fsck is happy and every file reads back.
    fn check_copy(copy: &Path, files: &[(String, Vec<u8>)], work: &Path) -> std::result::Result<(), String> {
        let out = run("e2fsck", cmd("e2fsck").arg("-fn").arg(copy));
        if !out.status.success() {
            return Err(format!(
                "e2fsck -fn on the copy failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let dump = work.join("dump");
        fs::create_dir_all(&dump).expect("create dump dir");
        let script = work.join("debugfs.cmds");
        let mut s = File::create(&script).expect("create debugfs script");
        for (i, (path, _)) in files.iter().enumerate() {
            writeln!(s, "dump /{path} {}", dump.join(i.to_string()).display()).expect("write debugfs script");
        }
        drop(s);
        run_ok("debugfs", cmd("debugfs").arg("-f").arg(&script).arg(copy));
        for (i, (path, data)) in files.iter().enumerate() {
            let got = fs::read(dump.join(i.to_string())).map_err(|e| format!("debugfs did not dump /{path}: {e}"))?;
            if &got != data {
                return Err(format!(
                    "/{path} differs in the copy ({} bytes, expected {})",
                    got.len(),
                    data.len()
                ));
            }
        }
        Ok(())
    }

    /// Extents are sorted, merged (not touching), non-empty and inside the device.
    fn assert_well_formed(extents: &[Extent], size: u64) {
        for e in extents {
            assert!(e.len > 0, "empty extent {e:?}");
            assert!(e.end() <= size, "extent {e:?} past the end ({size})");
        }
        for w in extents.windows(2) {
            if let [a, b] = w {
                assert!(a.end() < b.offset, "extents not sorted and merged: {a:?} {b:?}");
            }
        }
    }

    struct Built {
        dir: tempfile::TempDir,
        img: PathBuf,
        files: Vec<(String, Vec<u8>)>,
        size: u64,
    }

    /// A `size`-byte filesystem made by `mkfs_name opts` from a tree with a `big`-byte file.
    fn build(mkfs_name: &str, opts: &[&str], size: u64, big: usize) -> Built {
        build_on(mkfs_name, opts, size, big, false)
    }

    /// Like [`build`]; with `old_data` the image is first filled with pseudo-random bytes, like a
    /// reused disk (pass `-E nodiscard` so mke2fs leaves what it does not write).
    fn build_on(mkfs_name: &str, opts: &[&str], size: u64, big: usize, old_data: bool) -> Built {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let files = populate(&src, big);
        let img = dir.path().join("fs.img");
        if old_data {
            let mut f = File::create(&img).expect("create image");
            let mut rng = Rng(0xDEAD_BEEF_F00D_CAFE);
            for _ in 0..size / MIB {
                f.write_all(&rng.bytes(MIB as usize)).expect("fill image");
            }
            drop(f);
            let mut c = cmd(mkfs_name);
            c.args(["-F", "-q"]).args(opts).arg("-d").arg(&src).arg(&img);
            run_ok(mkfs_name, &mut c);
        } else {
            mkfs(mkfs_name, opts, size, Some(&src), &img);
        }
        run_ok("e2fsck", cmd("e2fsck").arg("-fn").arg(&img));
        Built { dir, img, files, size }
    }

    /// Builds, maps, copies only the used extents, and checks the copy like a user would.
    /// Returns the used bytes and the full dumpe2fs listing.
    fn roundtrip(mkfs_name: &str, opts: &[&str], size: u64, big: usize) -> (u64, String) {
        roundtrip_on(mkfs_name, opts, size, big, false)
    }

    fn roundtrip_on(mkfs_name: &str, opts: &[&str], size: u64, big: usize, old_data: bool) -> (u64, String) {
        let b = build_on(mkfs_name, opts, size, big, old_data);
        let disk = Disk::open(&b.img).expect("open image");
        assert!(
            probe(&disk).expect("probe"),
            "probe does not recognise {mkfs_name} {opts:?}"
        );
        let extents = used_extents(&disk).expect("used_extents");
        assert_well_formed(&extents, b.size);
        let used: u64 = extents.iter().map(|e| e.len).sum();
        assert_eq!(
            used,
            dumpe2fs_used(&b.img),
            "{mkfs_name} {opts:?}: used bytes differ from dumpe2fs (block count - free blocks) * block size"
        );
        let copy = b.dir.path().join("copy.img");
        copy_extents(&b.img, &extents, &copy);
        if let Err(e) = check_copy(&copy, &b.files, b.dir.path()) {
            panic!("{mkfs_name} {opts:?}: {e}");
        }
        (used, dumpe2fs_all(&b.img))
    }

    const MIB: u64 = 1 << 20;

    // ---- real filesystems ----------------------------------------------------------------------

    #[test]
    fn ext4_default_flex_bg_uninit_groups() {
        // 64 MiB with this host's defaults: flex_bg, csums, several groups left BLOCK_UNINIT.
        let (used, listing) = roundtrip("mkfs.ext4", &[], 64 * MIB, 2_000_000);
        assert!(listing.contains("flex_bg"), "expected flex_bg:\n{listing}");
        assert!(
            listing.contains("BLOCK_UNINIT"),
            "expected BLOCK_UNINIT groups:\n{listing}"
        );
        assert!(used < 64 * MIB / 5, "{used} bytes used of a mostly empty 64 MiB fs");
    }

    #[test]
    fn ext4_4k_blocks_32bit_descriptors_many_groups() {
        let (used, listing) = roundtrip(
            "mkfs.ext4",
            &["-b", "4096", "-g", "2048", "-O", "^64bit"],
            128 * MIB,
            12_000_000,
        );
        assert!(!listing.contains(" 64bit"), "expected 32-byte descriptors:\n{listing}");
        assert!(
            listing.contains("BLOCK_UNINIT"),
            "expected BLOCK_UNINIT groups:\n{listing}"
        );
        // A 16 MiB journal and the resize reserve in 6 backup groups, plus 12 MB of files.
        assert!(used < 128 * MIB * 2 / 5, "{used} bytes used");
    }

    #[test]
    fn ext4_64bit_lazy_itable_init() {
        let (used, listing) = roundtrip(
            "mkfs.ext4",
            &["-b", "4096", "-g", "1024", "-O", "64bit", "-E", "lazy_itable_init=1"],
            128 * MIB,
            6_000_000,
        );
        assert!(listing.contains(" 64bit"), "expected 64bit:\n{listing}");
        // A 16 MiB journal and the resize reserve in 8 backup groups, plus 6 MB of files.
        assert!(used < 128 * MIB * 2 / 5, "{used} bytes used");
    }

    #[test]
    fn ext4_1k_blocks_gdt_csum() {
        let (used, listing) = roundtrip(
            "mkfs.ext4",
            &["-b", "1024", "-O", "^metadata_csum,^64bit,uninit_bg"],
            64 * MIB,
            2_000_000,
        );
        assert!(listing.contains("uninit_bg"), "expected uninit_bg:\n{listing}");
        assert!(
            listing.contains("First block:              1"),
            "expected 1 KiB layout:\n{listing}"
        );
        assert!(used < 64 * MIB / 5, "{used} bytes used");
    }

    #[test]
    fn ext4_meta_bg() {
        // 64 groups of 1 MiB, 16 descriptors per block: 4 meta groups.
        let (_, listing) = roundtrip(
            "mkfs.ext4",
            &["-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode,64bit"],
            64 * MIB,
            2_000_000,
        );
        assert!(listing.contains("meta_bg"), "expected meta_bg:\n{listing}");
    }

    #[test]
    fn ext4_sparse_super2() {
        let (_, listing) = roundtrip("mkfs.ext4", &["-b", "1024", "-O", "sparse_super2"], 64 * MIB, 2_000_000);
        assert!(
            listing.contains("Backup block groups"),
            "expected sparse_super2:\n{listing}"
        );
    }

    #[test]
    fn ext4_bigalloc_1k_blocks() {
        let (_, listing) = roundtrip(
            "mkfs.ext4",
            &["-b", "1024", "-O", "bigalloc", "-C", "16384", "-g", "1024"],
            128 * MIB,
            2_000_000,
        );
        assert!(listing.contains("bigalloc"), "expected bigalloc:\n{listing}");
    }

    #[test]
    fn ext4_bigalloc_4k_blocks() {
        let (_, listing) = roundtrip(
            "mkfs.ext4",
            &["-b", "4096", "-O", "bigalloc", "-C", "65536", "-g", "256"],
            128 * MIB,
            2_000_000,
        );
        assert!(listing.contains("bigalloc"), "expected bigalloc:\n{listing}");
    }

    #[test]
    fn ext2_without_flex_bg() {
        let (used, listing) = roundtrip("mkfs.ext2", &["-O", "^flex_bg"], 64 * MIB, 2_000_000);
        assert!(!listing.contains("flex_bg"), "expected no flex_bg:\n{listing}");
        assert!(used < 64 * MIB / 5, "{used} bytes used");
    }

    #[test]
    fn ext2_4k_blocks_not_sparse_super() {
        // Every group holds a superblock backup.
        roundtrip(
            "mkfs.ext2",
            &["-b", "4096", "-g", "2048", "-O", "^sparse_super,^resize_inode"],
            64 * MIB,
            2_000_000,
        );
    }

    #[test]
    fn ext3_with_journal() {
        let (used, listing) = roundtrip("mkfs.ext3", &[], 64 * MIB, 2_000_000);
        assert!(listing.contains("has_journal"), "expected a journal:\n{listing}");
        assert!(used < 64 * MIB / 5, "{used} bytes used");
    }

    #[test]
    fn ext4_over_old_data_ignores_stale_uninit_bitmaps() {
        // mke2fs does not write the bitmaps of BLOCK_UNINIT groups: on a reused disk they hold
        // old bytes, which must not count.
        let (used, listing) = roundtrip_on(
            "mkfs.ext4",
            &["-b", "1024", "-E", "nodiscard,lazy_itable_init=1"],
            64 * MIB,
            2_000_000,
            true,
        );
        assert!(
            listing.contains("BLOCK_UNINIT"),
            "expected BLOCK_UNINIT groups:\n{listing}"
        );
        assert!(used < 64 * MIB / 5, "{used} bytes used");
    }

    /// Block ranges `[first, last]` that dumpe2fs lists for the group starting with `header`
    /// ("Group 0:"): superblock, descriptors, reserved GDT, bitmaps, inode table.
    fn dumpe2fs_group_metadata(listing: &str, header: &str) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        let section = listing
            .lines()
            .skip_while(|l| !l.starts_with(header))
            .skip(1)
            .take_while(|l| !l.starts_with("Group "));
        for line in section {
            for part in line.split(" at ").skip(1) {
                let num: String = part.chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
                let mut it = num.split('-').map(|n| n.parse::<u64>().expect("block number"));
                let first = it.next().expect("a block");
                ranges.push((first, it.next().unwrap_or(first)));
            }
        }
        assert!(!ranges.is_empty(), "no metadata for {header:?} in:\n{listing}");
        ranges
    }

    #[test]
    fn block_uninit_group_counts_metadata_of_all_groups() {
        // Two 8 MiB groups with flex_bg: group 0 holds the bitmaps and inode tables of both.
        // Flag group 0 BLOCK_UNINIT and wipe its bitmap: what is left used in group 0 must be
        // exactly the boot block, superblock, descriptors, reserved GDT and both groups' tables.
        let b = build("mkfs.ext4", &["-b", "1024", "-O", "flex_bg"], 16 * MIB, 100_000);
        let listing = dumpe2fs_all(&b.img);
        let group1 = 8193u64;
        assert!(
            listing.contains("Group 1: (Blocks 8193-16383)"),
            "unexpected layout:\n{listing}"
        );
        let mut meta = dumpe2fs_group_metadata(&listing, "Group 0:");
        let g1 = dumpe2fs_group_metadata(&listing, "Group 1:");
        assert!(
            g1.iter().any(|&(a, _)| a < group1),
            "group 1 keeps its tables in group 0 with flex_bg:\n{listing}"
        );
        meta.extend(g1);
        meta.push((0, 0)); // the boot block
        meta.sort_unstable();
        let mut want = ExtentList::new();
        for (a, z) in meta {
            if a < group1 {
                want.push(a * 1024, (z.min(group1 - 1) + 1 - a) * 1024);
            }
        }

        let mut d = fs::read(&b.img).expect("read image");
        let gd = 2048;
        let flags = le::u16(&d, gd + BG_FLAGS).expect("flags") | BG_BLOCK_UNINIT;
        put16(&mut d, gd + BG_FLAGS, flags);
        let bitmap = le::u32(&d, gd + BG_BLOCK_BITMAP_LO).expect("bitmap") as usize * 1024;
        d.get_mut(bitmap..bitmap + 1024).expect("bitmap block").fill(0);
        let got: Vec<Extent> = used_extents(&d)
            .expect("map")
            .into_iter()
            .filter(|e| e.offset < group1 * 1024)
            .map(|e| Extent::new(e.offset, e.end().min(group1 * 1024) - e.offset))
            .collect();
        assert_eq!(got, want.into_vec());
    }

    #[test]
    fn the_copy_check_catches_missing_blocks() {
        // The harness must be able to fail: drop the largest used extent and the copy is broken.
        let b = build("mkfs.ext4", &[], 64 * MIB, 2_000_000);
        let disk = Disk::open(&b.img).expect("open image");
        let mut extents = used_extents(&disk).expect("used_extents");
        let largest = extents
            .iter()
            .enumerate()
            .max_by_key(|(_, e)| e.len)
            .map(|(i, _)| i)
            .expect("some extents");
        extents.remove(largest);
        let copy = b.dir.path().join("copy.img");
        copy_extents(&b.img, &extents, &copy);
        assert!(
            check_copy(&copy, &b.files, b.dir.path()).is_err(),
            "a copy without its largest extent passed the checks"
        );
    }

    #[test]
    fn two_gib_filesystem_maps_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("big.img");
        mkfs(
            "mkfs.ext4",
            &["-b", "4096", "-E", "lazy_itable_init=1,nodiscard"],
            2048 * MIB,
            None,
            &img,
        );
        let disk = Disk::open(&img).expect("open image");
        let extents = used_extents(&disk).expect("used_extents");
        assert_well_formed(&extents, 2048 * MIB);
        assert_eq!(extents.iter().map(|e| e.len).sum::<u64>(), dumpe2fs_used(&img));
    }

    #[test]
    fn probe_recognises_ext_only() {
        let b = build("mkfs.ext2", &[], 16 * MIB, 100_000);
        let disk = Disk::open(&b.img).expect("open image");
        assert!(probe(&disk).expect("probe"));
        assert!(!probe(&vec![0u8; 1 << 20]).expect("probe zeros"));
        assert!(!probe(&vec![0u8; 100]).expect("probe tiny"));
        assert!(used_extents(&vec![0u8; 1 << 20]).is_err(), "zeros are not ext");
        assert!(used_extents(&vec![0u8; 100]).is_err(), "100 bytes are not ext");
    }

    // ---- corrupt input -------------------------------------------------------------------------

    /// A small real ext4 image in memory, and the offset of its first group descriptor.
    fn small_image(opts: &[&str]) -> (Vec<u8>, usize) {
        let b = build("mkfs.ext4", opts, 16 * MIB, 200_000);
        let data = fs::read(&b.img).expect("read image");
        let log = data.get(1024 + S_LOG_BLOCK_SIZE).copied().expect("superblock");
        let bs = 1024usize << log;
        (data, if bs == 1024 { 2048 } else { bs })
    }

    fn put32(d: &mut [u8], off: usize, v: u32) {
        d.get_mut(off..off + 4)
            .expect("field in image")
            .copy_from_slice(&v.to_le_bytes());
    }

    fn put16(d: &mut [u8], off: usize, v: u16) {
        d.get_mut(off..off + 2)
            .expect("field in image")
            .copy_from_slice(&v.to_le_bytes());
    }

    fn expect_bad(d: &dyn ReadAt, what: &str) {
        assert_bad_filesystem(used_extents(d), "memory", what)
    }

    #[test]
    fn corrupt_superblock_and_descriptors_are_errors() {
        let (good, gd) = small_image(&["-b", "1024"]);
        assert!(used_extents(&good).is_ok(), "the pristine image maps");
        let sb = 1024;
        type Corrupt = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Corrupt)> = vec![
            (
                "log block size 20",
                Box::new(move |d| put32(d, sb + S_LOG_BLOCK_SIZE, 20)),
            ),
            (
                "log block size u32::MAX",
                Box::new(move |d| put32(d, sb + S_LOG_BLOCK_SIZE, u32::MAX)),
            ),
            (
                "zero blocks per group",
                Box::new(move |d| put32(d, sb + S_BLOCKS_PER_GROUP, 0)),
            ),
            (
                "too many blocks per group",
                Box::new(move |d| put32(d, sb + S_BLOCKS_PER_GROUP, 1 << 20)),
            ),
            (
                "block count past the device",
                Box::new(move |d| put32(d, sb + S_BLOCKS_COUNT_LO, u32::MAX)),
            ),
            (
                "zero block count",
                Box::new(move |d| put32(d, sb + S_BLOCKS_COUNT_LO, 0)),
            ),
            (
                "zero inodes per group",
                Box::new(move |d| put32(d, sb + S_INODES_PER_GROUP, 0)),
            ),
            (
                "first data block 7",
                Box::new(move |d| put32(d, sb + S_FIRST_DATA_BLOCK, 7)),
            ),
            ("bad desc size", Box::new(move |d| put16(d, sb + S_DESC_SIZE, 48))),
            (
                "huge reserved gdt",
                Box::new(move |d| put16(d, sb + S_RESERVED_GDT_BLOCKS, 0xFFFF)),
            ),
            (
                "bitmap beyond the block count",
                Box::new(move |d| put32(d, gd + BG_BLOCK_BITMAP_LO, 1 << 30)),
            ),
            (
                "bitmap on the superblock",
                Box::new(move |d| put32(d, gd + BG_BLOCK_BITMAP_LO, 1)),
            ),
            (
                "inode table past the end",
                Box::new(move |d| put32(d, gd + BG_INODE_TABLE_LO, 16 * 1024 - 3)),
            ),
            ("truncated device", Box::new(move |d| d.truncate(200_000))),
        ];
        for (what, corrupt) in cases {
            let mut d = good.clone();
            corrupt(&mut d);
            expect_bad(&d, what);
        }
        // meta_bg pointing past its descriptor table.
        let mut d = good.clone();
        let incompat = le::u32(&d, sb + S_FEATURE_INCOMPAT).expect("incompat");
        put32(&mut d, sb + S_FEATURE_INCOMPAT, incompat | INCOMPAT_META_BG);
        put32(&mut d, sb + S_FIRST_META_BG, 1000);
        expect_bad(&d, "first_meta_bg too large");
        // Not ext at all.
        let mut d = good.clone();
        put32(&mut d, sb + S_MAGIC, 0);
        expect_bad(&d, "bad magic");
    }

    #[test]
    fn errors_name_the_device() {
        let b = build("mkfs.ext4", &[], 16 * MIB, 100_000);
        let f = fs::OpenOptions::new().write(true).open(&b.img).expect("open image");
        f.write_all_at(&20u32.to_le_bytes(), 1024 + S_LOG_BLOCK_SIZE as u64)
            .expect("corrupt");
        drop(f);
        let disk = Disk::open(&b.img).expect("open image");
        let err = used_extents(&disk).expect_err("corrupt block size");
        assert!(matches!(err, Error::BadFilesystem { .. }), "{err:?}");
        assert!(err.to_string().contains(&b.img.display().to_string()), "{err}");
    }

    #[test]
    fn needs_recovery_is_captured_whole() {
        let (mut d, _) = small_image(&[]);
        let incompat = le::u32(&d, 1024 + S_FEATURE_INCOMPAT).expect("incompat");
        put32(&mut d, 1024 + S_FEATURE_INCOMPAT, incompat | INCOMPAT_RECOVER);
        assert_eq!(used_extents(&d).expect("map"), vec![Extent::new(0, d.len() as u64)]);
    }

    #[test]
    fn random_corruption_never_panics() {
        for opts in [
            &["-b", "1024"][..],
            &["-b", "4096", "-g", "1024"][..],
            &["-b", "1024", "-O", "meta_bg,^resize_inode"][..],
        ] {
            let (mut d, gd) = small_image(opts);
            let mut rng = Rng(0x1234_5678_9ABC_DEF1);
            let hot: Vec<usize> = (1024..1024 + 0x160).chain(gd..gd + 512).collect();
            for _ in 0..3000 {
                // Change 1-4 bytes of the superblock or descriptors, map, restore.
                let n = 1 + (rng.next() % 4) as usize;
                let mut saved = Vec::new();
                for _ in 0..n {
                    let off = hot
                        .get((rng.next() % hot.len() as u64) as usize)
                        .copied()
                        .expect("offset");
                    let old = d.get(off).copied().expect("byte");
                    saved.push((off, old));
                    if let Some(b) = d.get_mut(off) {
                        *b = rng.next() as u8;
                    }
                }
                if let Ok(extents) = used_extents(&d) {
                    assert_well_formed(&extents, d.len() as u64);
                }
                for (off, old) in saved.into_iter().rev() {
                    if let Some(b) = d.get_mut(off) {
                        *b = old;
                    }
                }
            }
        }
    }

    // ---- pieces --------------------------------------------------------------------------------

    #[test]
    fn backup_groups_follow_sparse_super() {
        let geo = Geometry {
            bs: 4096,
            blocks: 1 << 30,
            first_data_block: 0,
            sb_block: 0,
            bpg: 32768,
            ratio: 1,
            groups: 1 << 15,
            desc_size: 64,
            descs_per_block: 64,
            gdt_blocks: 512,
            reserved_gdt: 0,
            itable_blocks: 512,
            meta_bg: false,
            first_meta_bg: 0,
            csum: true,
            sparse_super: true,
            sparse_super2: None,
            wide: true,
        };
        let with: BTreeSet<u64> = (0..3000).filter(|&g| geo.has_super(g)).collect();
        let expected: BTreeSet<u64> = [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343, 625, 729, 2187, 2401].into();
        assert_eq!(with, expected);
        let geo2 = Geometry {
            sparse_super2: Some([1, 2999]),
            ..geo
        };
        let with: BTreeSet<u64> = (0..3000).filter(|&g| geo2.has_super(g)).collect();
        assert_eq!(with, [0, 1, 2999].into());
        let geo3 = Geometry {
            sparse_super: false,
            sparse_super2: None,
            ..geo2
        };
        assert!(
            (0..3000).all(|g| geo3.has_super(g)),
            "without sparse_super every group has a backup"
        );
    }

    #[test]
    fn runs_match_a_naive_scan() {
        let mut rng = Rng(42);
        for round in 0..500 {
            let len = 8 * (1 + (rng.next() % 64) as usize);
            let mut bits = rng.bytes(len);
            // Sometimes long runs of zeros and ones.
            if round % 3 == 0 {
                for b in bits.iter_mut() {
                    *b = if rng.next().is_multiple_of(2) { 0 } else { 0xFF };
                }
            }
            let nbits = rng.next() % (len as u64 * 8 + 1);
            let mut got = Vec::new();
            for_each_run(&bits, nbits, |s, n| got.push((s, n)));
            let mut want: Vec<(u64, u64)> = Vec::new();
            for i in 0..nbits {
                let set = bits.get((i / 8) as usize).is_some_and(|b| b >> (i % 8) & 1 == 1);
                if set {
                    match want.last_mut() {
                        Some(last) if last.0 + last.1 == i => last.1 += 1,
                        _ => want.push((i, 1)),
                    }
                }
            }
            assert_eq!(got, want, "round {round}, nbits {nbits}");

            let (a, b) = (rng.next() % 700, rng.next() % 700);
            let (from, to) = (a.min(b), a.max(b));
            let mut m = vec![0u8; len];
            set_bits(&mut m, from, to);
            for i in 0..len as u64 * 8 {
                let set = m.get((i / 8) as usize).is_some_and(|x| x >> (i % 8) & 1 == 1);
                assert_eq!(set, i >= from && i < to, "set_bits({from}, {to}) bit {i}");
            }
        }
    }
}
