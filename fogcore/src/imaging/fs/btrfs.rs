//! btrfs on one device: the extent tree says which logical bytes are allocated, the chunk tree
//! where they are on the device.
//!
//! btrfs addresses everything by logical byte number; chunks map logical ranges to device ranges
//! ("stripes": one for the single profile, two copies on the same device for DUP). The superblock's
//! `sys_chunk_array` maps the system chunks, enough to read the chunk tree, which maps all chunks.
//! The root tree gives the extent tree's root, and every `EXTENT_ITEM` (data extents, and tree
//! blocks without skinny metadata) and `METADATA_ITEM` (tree blocks) in it is an allocated
//! logical range. Used is each of those ranges on every stripe of its chunk, plus the first MiB
//! of the device (the primary superblock and the area btrfs leaves to boot loaders) and the
//! superblock mirrors at 64 MiB and 256 GiB when the device reaches them (they sit inside chunks,
//! in ranges the allocator skips).
//!
//! Tree log blocks are not in the extent tree, and the extents they reference are added to it
//! only when the log is replayed: a filesystem with a log to replay (`log_root` set, after a crash
//! following an fsync) is taken at chunk granularity instead, every allocated chunk whole.
//!
//! Captured raw instead, with a warning (the report still says btrfs; every non-zero block is
//! kept, as for an unknown filesystem): a member of a multi-device filesystem (its chunks map to
//! other devices too and one device's share is not a filesystem of its own), chunk profiles other
//! than single and DUP, and incompatible features this module does not know (zoned, extent tree
//! v2, raid stripe tree, ...). That is always correct, so it is preferred to a guess.

use crate::imaging::disk::{ReadAt, le};
use crate::imaging::extent::{Extent, ExtentList};
use crate::{Error, Result};

/// Primary superblock offset and length.
const SUPERBLOCK_OFFSET: u64 = 64 << 10;
const SUPERBLOCK_LEN: usize = 4096;
/// Superblock mirrors (the primary is in the first MiB, which is kept whole).
const SUPERBLOCK_MIRRORS: [u64; 2] = [64 << 20, 256 << 30];
/// btrfs never allocates chunks in the first MiB.
const RESERVED_START: u64 = 1 << 20;
const MAGIC: &[u8; 8] = b"_BHRfS_M";

// Superblock fields.
const SB_FSID: usize = 0x20;
const SB_BYTENR: usize = 0x30;
const SB_MAGIC: usize = 0x40;
const SB_ROOT: usize = 0x50;
const SB_CHUNK_ROOT: usize = 0x58;
const SB_LOG_ROOT: usize = 0x60;
const SB_NUM_DEVICES: usize = 0x88;
const SB_SECTORSIZE: usize = 0x90;
const SB_NODESIZE: usize = 0x94;
const SB_SYS_CHUNK_ARRAY_SIZE: usize = 0xA0;
const SB_INCOMPAT_FLAGS: usize = 0xBC;
const SB_ROOT_LEVEL: usize = 0xC6;
const SB_CHUNK_ROOT_LEVEL: usize = 0xC7;
const SB_DEV_ITEM_DEVID: usize = 0xC9;
const SB_METADATA_UUID: usize = 0x23B;
const SB_SYS_CHUNK_ARRAY: usize = 0x32B;
const SYS_CHUNK_ARRAY_MAX: usize = 2048;

/// Incompatible features that change nothing here: mixed backref, default subvol, mixed groups,
/// LZO, zstd, big metadata, extended iref, raid56 (refused per chunk), skinny metadata, no holes,
/// metadata uuid, raid1c34 (refused per chunk).
const INCOMPAT_KNOWN: u64 = 0xFFF;
const INCOMPAT_METADATA_UUID: u64 = 0x400;

// Tree blocks.
const HEADER_LEN: usize = 101;
const HEADER_FSID: usize = 32;
const HEADER_BYTENR: usize = 48;
const HEADER_NRITEMS: usize = 96;
const HEADER_LEVEL: usize = 100;
/// A leaf item: key (objectid u64, type u8, offset u64), data offset u32, data size u32.
const ITEM_LEN: usize = 25;
/// A node pointer: key, child block u64, generation u64.
const KEY_PTR_LEN: usize = 33;
const KEY_LEN: usize = 17;
/// Deepest tree btrfs builds (BTRFS_MAX_LEVEL is 8: levels 0 to 7).
const MAX_LEVEL: u8 = 7;

// Item types.
const ROOT_ITEM: u8 = 132;
const EXTENT_ITEM: u8 = 168;
const METADATA_ITEM: u8 = 169;
const CHUNK_ITEM: u8 = 228;
const EXTENT_TREE_OBJECTID: u64 = 2;
/// Offsets in a root item of the tree root's block and level.
const ROOT_ITEM_BYTENR: usize = 176;
const ROOT_ITEM_LEVEL: usize = 238;

// Chunk items.
const CHUNK_HEADER_LEN: usize = 48;
const CHUNK_TYPE: usize = 24;
const CHUNK_NUM_STRIPES: usize = 44;
const STRIPE_LEN: usize = 32;
const BLOCK_GROUP_DUP: u64 = 1 << 5;
/// Every profile bit: RAID0, RAID1, DUP, RAID10, RAID5, RAID6, RAID1C3, RAID1C4.
const BLOCK_GROUP_PROFILES: u64 = 0xFF << 3;

/// What the superblock says.
#[derive(Debug, Clone)]
struct Superblock {
    nodesize: u64,
    /// The id tree blocks carry: the fsid, or the metadata uuid when that feature is on.
    tree_fsid: [u8; 16],
    devid: u64,
    root: u64,
    root_level: u8,
    chunk_root: u64,
    chunk_root_level: u8,
    log_root: u64,
    num_devices: u64,
    incompat: u64,
    sys_chunk_array: Vec<u8>,
}

/// A chunk: `len` logical bytes from `logical`, stored at each of `stripes` (device offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk {
    logical: u64,
    len: u64,
    stripes: Vec<u64>,
}

/// Why the extent-level map cannot be made, but the device is still btrfs.
#[derive(Debug)]
enum Refusal {
    /// Damaged or inconsistent: an error.
    Bad(String),
    /// Legal, but not handled here: captured raw.
    Unsupported(String),
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Refusal::Bad(reason)
    }
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        Refusal::Bad(reason.into())
    }
}

type Parsed<T> = std::result::Result<T, Refusal>;

/// True when `dev` holds a btrfs filesystem (or one device of one) with a sane superblock.
pub fn probe(dev: &dyn ReadAt) -> Result<bool> {
    Ok(match read_superblock(dev)? {
        Some(sb) => parse_superblock(&sb).is_ok(),
        None => false,
    })
}

/// Used byte ranges of the btrfs filesystem on `dev`, relative to the start of `dev`, sorted and
/// merged; `None` when it is to be captured raw (see the module comment).
pub fn used_extents(dev: &dyn ReadAt) -> Result<Option<Vec<Extent>>> {
    let bad = |reason: String| Error::BadFilesystem {
        what: dev.name(),
        reason,
    };
    let sb =
        read_superblock(dev)?.ok_or_else(|| bad(format!("too small for a btrfs superblock ({} bytes)", dev.size())))?;
    let sb = parse_superblock(&sb).map_err(bad)?;
    match map_used(dev, &sb) {
        Ok(extents) => Ok(Some(extents)),
        Err(Refusal::Unsupported(why)) => {
            tracing::warn!(fs = %dev.name(), "btrfs {why}: capturing every non-zero block");
            Ok(None)
        }
        Err(Refusal::Bad(reason)) => Err(bad(reason)),
    }
}

/// The primary superblock, or None when `dev` is too small for one.
fn read_superblock(dev: &dyn ReadAt) -> Result<Option<Vec<u8>>> {
    if dev.size() < SUPERBLOCK_OFFSET + SUPERBLOCK_LEN as u64 {
        return Ok(None);
    }
    let mut sb = vec![0u8; SUPERBLOCK_LEN];
    dev.read_exact_at(&mut sb, SUPERBLOCK_OFFSET)?;
    Ok(Some(sb))
}

/// Checks the superblock; the error is the reason it is not a usable btrfs superblock.
fn parse_superblock(sb: &[u8]) -> std::result::Result<Superblock, String> {
    const SHORT: &str = "superblock too short";
    if sb.get(SB_MAGIC..SB_MAGIC + 8) != Some(MAGIC.as_slice()) {
        return Err("no _BHRfS_M magic".into());
    }
    let u64_at = |off| le::u64(sb, off).ok_or(SHORT);
    let u32_at = |off| le::u32(sb, off).map(u64::from).ok_or(SHORT);
    if u64_at(SB_BYTENR)? != SUPERBLOCK_OFFSET {
        return Err(format!("superblock says it is at byte {}", u64_at(SB_BYTENR)?));
    }
    let sectorsize = u32_at(SB_SECTORSIZE)?;
    let nodesize = u32_at(SB_NODESIZE)?;
    if !sectorsize.is_power_of_two() || !nodesize.is_power_of_two() || !(4096..=65536).contains(&sectorsize) {
        return Err(format!("{sectorsize}-byte sectors"));
    }
    if !(sectorsize..=65536).contains(&nodesize) {
        return Err(format!("{nodesize}-byte tree blocks with {sectorsize}-byte sectors"));
    }
    let array_size = u32_at(SB_SYS_CHUNK_ARRAY_SIZE)? as usize;
    if array_size > SYS_CHUNK_ARRAY_MAX {
        return Err(format!("system chunk array of {array_size} bytes"));
    }
    let incompat = u64_at(SB_INCOMPAT_FLAGS)?;
    let fsid_at = if incompat & INCOMPAT_METADATA_UUID != 0 {
        SB_METADATA_UUID
    } else {
        SB_FSID
    };
    let level = |off: usize| sb.get(off).copied().ok_or(SHORT);
    Ok(Superblock {
        nodesize,
        tree_fsid: sb
            .get(fsid_at..fsid_at + 16)
            .and_then(|s| s.try_into().ok())
            .ok_or(SHORT)?,
        devid: u64_at(SB_DEV_ITEM_DEVID)?,
        root: u64_at(SB_ROOT)?,
        root_level: level(SB_ROOT_LEVEL)?,
        chunk_root: u64_at(SB_CHUNK_ROOT)?,
        chunk_root_level: level(SB_CHUNK_ROOT_LEVEL)?,
        log_root: u64_at(SB_LOG_ROOT)?,
        num_devices: u64_at(SB_NUM_DEVICES)?,
        incompat,
        sys_chunk_array: sb
            .get(SB_SYS_CHUNK_ARRAY..SB_SYS_CHUNK_ARRAY + array_size)
            .ok_or(SHORT)?
            .to_vec(),
    })
}

/// The used map of a single-device filesystem.
fn map_used(dev: &dyn ReadAt, sb: &Superblock) -> Parsed<Vec<Extent>> {
    if sb.num_devices != 1 {
        return Err(Refusal::Unsupported(format!(
            "filesystem spans {} devices",
            sb.num_devices
        )));
    }
    let unknown = sb.incompat & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(Refusal::Unsupported(format!(
            "has incompatible features {unknown:#x} this version does not know"
        )));
    }
    let system = ChunkMap::new(parse_sys_chunk_array(sb, dev.size())?)?;
    let reader = TreeReader {
        dev,
        sb,
        chunks: &system,
    };
    let mut chunks = Vec::new();
    reader.walk("chunk tree", sb.chunk_root, sb.chunk_root_level, &mut |key, data| {
        if key.kind == CHUNK_ITEM {
            chunks.push(parse_chunk(data, key.offset, sb.devid, dev.size())?);
        }
        Ok(())
    })?;
    let chunks = ChunkMap::new(chunks)?;

    let mut pieces = Vec::new();
    if sb.log_root != 0 {
        // A log to replay: what it allocated is not in the extent tree yet.
        for chunk in &chunks.0 {
            pieces.extend(chunk.stripes.iter().map(|&s| Extent::new(s, chunk.len)));
        }
    } else {
        let reader = TreeReader {
            dev,
            sb,
            chunks: &chunks,
        };
        let (extent_root, extent_level) = reader.find_extent_root()?;
        let mut current = ChunkExtents::default();
        reader.walk("extent tree", extent_root, extent_level, &mut |key, _| {
            let len = match key.kind {
                EXTENT_ITEM => key.offset,
                METADATA_ITEM => sb.nodesize,
                _ => return Ok(()),
            };
            current.push(&chunks, key.objectid, len, &mut pieces)
        })?;
        current.flush(&mut pieces);
    }

    // Fixed places, then everything in device order.
    pieces.push(Extent::new(0, RESERVED_START.min(dev.size())));
    for mirror in SUPERBLOCK_MIRRORS {
        if mirror + SUPERBLOCK_LEN as u64 <= dev.size() {
            pieces.push(Extent::new(mirror, SUPERBLOCK_LEN as u64));
        }
    }
    pieces.sort_unstable();
    let mut list = ExtentList::new();
    for piece in pieces {
        list.push(piece.offset, piece.len);
    }
    Ok(list.into_vec())
}

/// Chunks sorted by logical address, not overlapping.
struct ChunkMap(Vec<Chunk>);

impl ChunkMap {
    fn new(mut chunks: Vec<Chunk>) -> Parsed<ChunkMap> {
        chunks.sort_unstable_by_key(|c| c.logical);
        for pair in chunks.windows(2) {
            if let [a, b] = pair
                && a.logical + a.len > b.logical
            {
                return Err(format!("chunks at logical {} and {} overlap", a.logical, b.logical).into());
            }
        }
        Ok(ChunkMap(chunks))
    }

    /// The chunk holding all of `len` logical bytes from `logical`.
    fn find(&self, logical: u64, len: u64) -> Parsed<&Chunk> {
        let at = self.0.partition_point(|c| c.logical <= logical);
        at.checked_sub(1)
            .and_then(|i| self.0.get(i))
            .filter(|c| logical.checked_add(len).is_some_and(|end| end <= c.logical + c.len))
            .ok_or_else(|| Refusal::Bad(format!("{len} bytes at logical {logical} are not inside one chunk")))
    }
}

/// Used pieces of the chunk the extent tree walk is in: items come in logical order, so within a
/// chunk each stripe's pieces come in device order and merge as they come.
#[derive(Default)]
struct ChunkExtents {
    chunk_logical: Option<u64>,
    stripes: Vec<ExtentList>,
}

impl ChunkExtents {
    fn push(&mut self, chunks: &ChunkMap, logical: u64, len: u64, out: &mut Vec<Extent>) -> Parsed<()> {
        let chunk = chunks.find(logical, len)?;
        if self.chunk_logical != Some(chunk.logical) {
            self.flush(out);
            self.chunk_logical = Some(chunk.logical);
            self.stripes = vec![ExtentList::new(); chunk.stripes.len()];
        }
        for (list, &stripe) in self.stripes.iter_mut().zip(&chunk.stripes) {
            // Inside the chunk, whose stripes parse_chunk checked lie inside the device.
            list.push(stripe + (logical - chunk.logical), len);
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<Extent>) {
        for list in self.stripes.drain(..) {
            out.extend(list.into_vec());
        }
    }
}

/// The chunks of the superblock's system chunk array: (key, chunk item) pairs.
fn parse_sys_chunk_array(sb: &Superblock, dev_size: u64) -> Parsed<Vec<Chunk>> {
    let array = &sb.sys_chunk_array;
    let mut chunks = Vec::new();
    let mut pos = 0usize;
    while pos < array.len() {
        let key = Key::parse(array, pos).ok_or("system chunk array key runs past its end")?;
        if key.kind != CHUNK_ITEM {
            return Err(format!("system chunk array holds item type {}", key.kind).into());
        }
        let item_at = pos + KEY_LEN;
        let stripes = le::u16(array, item_at + CHUNK_NUM_STRIPES).ok_or("system chunk runs past the array")?;
        let item_len = CHUNK_HEADER_LEN + usize::from(stripes) * STRIPE_LEN;
        let item = array
            .get(item_at..item_at + item_len)
            .ok_or("system chunk runs past the array")?;
        chunks.push(parse_chunk(item, key.offset, sb.devid, dev_size)?);
        pos = item_at + item_len;
    }
    if chunks.is_empty() {
        return Err("no system chunks".to_string().into());
    }
    Ok(chunks)
}

/// A chunk item for the chunk at `logical`; its stripes must be on this device and inside it.
fn parse_chunk(item: &[u8], logical: u64, devid: u64, dev_size: u64) -> Parsed<Chunk> {
    const SHORT: &str = "chunk item too short";
    let len = le::u64(item, 0).ok_or(SHORT)?;
    let kind = le::u64(item, CHUNK_TYPE).ok_or(SHORT)?;
    let count = usize::from(le::u16(item, CHUNK_NUM_STRIPES).ok_or(SHORT)?);
    if len == 0 || logical.checked_add(len).is_none() {
        return Err(format!("chunk of {len} bytes at logical {logical}").into());
    }
    let profile = kind & BLOCK_GROUP_PROFILES;
    let single_or_dup = (profile == 0 && count == 1) || (profile == BLOCK_GROUP_DUP && count == 2);
    if !single_or_dup {
        return Err(Refusal::Unsupported(format!(
            "has a chunk with profile {profile:#x} and {count} stripes"
        )));
    }
    let mut stripes = Vec::with_capacity(count);
    for i in 0..count {
        let at = CHUNK_HEADER_LEN + i * STRIPE_LEN;
        let stripe_dev = le::u64(item, at).ok_or(SHORT)?;
        let offset = le::u64(item, at + 8).ok_or(SHORT)?;
        if stripe_dev != devid {
            return Err(format!("chunk at logical {logical} is on device {stripe_dev}, not {devid}").into());
        }
        if offset.checked_add(len).is_none_or(|end| end > dev_size) {
            return Err(format!(
                "chunk at logical {logical}: {len} bytes at device offset {offset} do not fit the \
                 {dev_size}-byte device"
            )
            .into());
        }
        stripes.push(offset);
    }
    Ok(Chunk { logical, len, stripes })
}

/// A btrfs key.
#[derive(Debug, Clone, Copy)]
struct Key {
    objectid: u64,
    kind: u8,
    offset: u64,
}

impl Key {
    fn parse(buf: &[u8], at: usize) -> Option<Key> {
        Some(Key {
            objectid: le::u64(buf, at)?,
            kind: *buf.get(at.checked_add(8)?)?,
            offset: le::u64(buf, at.checked_add(9)?)?,
        })
    }
}

/// Reads tree blocks through a chunk map.
struct TreeReader<'a> {
    dev: &'a dyn ReadAt,
    sb: &'a Superblock,
    chunks: &'a ChunkMap,
}

impl TreeReader<'_> {
    /// Calls `visit` with every leaf item of the tree rooted at `root` (depth first, in key
    /// order). Each child must sit one level below its parent, so the walk ends; the number of
    /// blocks read is bounded by the blocks the device could hold.
    fn walk(
        &self,
        tree: &str,
        root: u64,
        root_level: u8,
        visit: &mut dyn FnMut(Key, &[u8]) -> Parsed<()>,
    ) -> Parsed<()> {
        if root_level > MAX_LEVEL {
            return Err(format!("{tree} root at level {root_level}").into());
        }
        let mut budget = self.dev.size() / self.sb.nodesize;
        let mut stack = vec![(root, root_level)];
        let mut block = vec![0u8; self.sb.nodesize as usize];
        while let Some((logical, level)) = stack.pop() {
            budget = budget
                .checked_sub(1)
                .ok_or_else(|| format!("{tree} has more blocks than the device holds"))?;
            let items = self.read_block(tree, logical, level, &mut block)?;
            if level == 0 {
                for i in 0..items {
                    let at = HEADER_LEN + i * ITEM_LEN;
                    let key = Key::parse(&block, at).ok_or("leaf item past the block")?;
                    let data_at = le::u32(&block, at + KEY_LEN).map_or(usize::MAX, |v| v as usize);
                    let data_len = le::u32(&block, at + KEY_LEN + 4).map_or(usize::MAX, |v| v as usize);
                    let data = HEADER_LEN
                        .checked_add(data_at)
                        .and_then(|start| block.get(start..start.checked_add(data_len)?))
                        .ok_or_else(|| format!("{tree} leaf at {logical}: item {i} data lies outside the block"))?;
                    visit(key, data)?;
                }
            } else {
                // Children pushed last to first, so the first is visited first.
                for i in (0..items).rev() {
                    let at = HEADER_LEN + i * KEY_PTR_LEN + KEY_LEN;
                    let child = le::u64(&block, at).ok_or("node pointer past the block")?;
                    stack.push((child, level - 1));
                }
            }
        }
        Ok(())
    }

    /// Reads the tree block at `logical` into `block` and checks its header; returns its item
    /// count, which fits the block.
    fn read_block(&self, tree: &str, logical: u64, level: u8, block: &mut [u8]) -> Parsed<usize> {
        let chunk = self.chunks.find(logical, self.sb.nodesize)?;
        let physical = chunk.stripes.first().copied().unwrap_or(0) + (logical - chunk.logical);
        self.dev
            .read_exact_at(block, physical)
            .map_err(|e| format!("{tree} block at {logical}: {e}"))?;
        if block.get(HEADER_FSID..HEADER_FSID + 16) != Some(self.sb.tree_fsid.as_slice()) {
            return Err(format!("{tree} block at {logical} belongs to another filesystem").into());
        }
        let bytenr = le::u64(block, HEADER_BYTENR);
        let got_level = block.get(HEADER_LEVEL).copied();
        if bytenr != Some(logical) || got_level != Some(level) {
            return Err(format!(
                "{tree} block at {logical} says it is at {bytenr:?}, level {got_level:?} (expected {level})"
            )
            .into());
        }
        let items = le::u32(block, HEADER_NRITEMS).map_or(usize::MAX, |n| n as usize);
        let per = if level == 0 { ITEM_LEN } else { KEY_PTR_LEN };
        let max = (block.len() - HEADER_LEN) / per;
        if items > max {
            return Err(format!("{tree} block at {logical} has {items} items, at most {max} fit").into());
        }
        Ok(items)
    }

    /// The extent tree's root block and level, from its root item in the root tree.
    fn find_extent_root(&self) -> Parsed<(u64, u8)> {
        let mut found = None;
        self.walk("root tree", self.sb.root, self.sb.root_level, &mut |key, data| {
            if key.objectid == EXTENT_TREE_OBJECTID && key.kind == ROOT_ITEM {
                let bytenr = le::u64(data, ROOT_ITEM_BYTENR);
                let level = data.get(ROOT_ITEM_LEVEL).copied();
                found = Some(bytenr.zip(level).ok_or("extent tree root item too short")?);
            }
            Ok(())
        })?;
        found.ok_or_else(|| "root tree has no extent tree".into())
    }
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

    const INSTALL: &str = "apt-get install -y btrfs-progs";

    /// A btrfs image of `size` bytes holding `files` (name, length) of pseudo-random bytes.
    fn mkfs(dir: &Path, size: u64, files: &[(&str, usize)], args: &[&str]) -> Vec<u8> {
        let root = dir.join("root");
        std::fs::create_dir_all(&root).expect("mkdir");
        let mut rng = StdRng::seed_from_u64(size);
        for &(name, len) in files {
            let mut data = vec![0u8; len];
            rng.fill(&mut data[..]);
            std::fs::write(root.join(name), data).expect("write file");
        }
        let img = dir.join("btrfs.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size))
            .expect("create image");
        output_ok(
            "mkfs.btrfs",
            command("mkfs.btrfs", INSTALL)
                .arg("-q")
                .arg("--rootdir")
                .arg(&root)
                .args(args)
                .arg(&img),
        );
        std::fs::read(&img).expect("read image")
    }

    #[test]
    fn used_map_holds_the_files_and_little_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = [("a", 3_000_000), ("b", 5_000), ("c", 1_500_000)];
        let bytes = mkfs(dir.path(), 256 << 20, &files, &[]);
        assert!(probe(&bytes).expect("probe"));
        let extents = used_extents(&bytes).expect("used extents").expect("an extent map");
        assert_sorted_disjoint(&extents, bytes.len() as u64);
        let used = total_len(&extents);
        let data: u64 = files.iter().map(|f| f.1 as u64).sum();
        assert!(used >= data, "{used} bytes used for {data} bytes of files");
        assert!(used < data + (8 << 20), "{used} bytes used for {data} bytes of files");
        assert_eq!(extents[0].offset, 0);
        assert!(
            extents
                .iter()
                .any(|e| e.offset <= 64 << 20 && e.end() >= (64 << 20) + 4096),
            "mirror kept"
        );

        // Mixed block groups without skinny metadata: tree blocks are EXTENT_ITEMs.
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = mkfs(dir.path(), 128 << 20, &files, &["-M", "-O", "^skinny-metadata"]);
        let extents = used_extents(&bytes).expect("used extents").expect("an extent map");
        assert!(total_len(&extents) < data + (8 << 20));
    }

    #[test]
    fn other_data_is_not_btrfs() {
        let zeros = vec![0u8; 2 << 20];
        assert!(!probe(&zeros).expect("probe"));
        assert!(matches!(used_extents(&zeros), Err(Error::BadFilesystem { .. })));
        assert!(used_extents(&vec![0u8; 1000]).is_err());
    }

    #[test]
    fn multi_device_and_unknown_features_are_captured_raw() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = mkfs(dir.path(), 128 << 20, &[("a", 10_000)], &[]);
        let sb = SUPERBLOCK_OFFSET as usize;
        let mut two = good.clone();
        two[sb + SB_NUM_DEVICES] = 2;
        assert!(probe(&two).expect("probe"));
        assert_eq!(used_extents(&two).expect("no error"), None);
        let mut zoned = good.clone();
        zoned[sb + SB_INCOMPAT_FLAGS + 1] |= 0x10;
        assert_eq!(used_extents(&zoned).expect("no error"), None);
    }

    /// Damage to the superblock, the system chunk array and tree blocks is an error or a raw
    /// capture, never a panic, and whatever is accepted stays inside the device.
    #[test]
    fn damage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = mkfs(dir.path(), 128 << 20, &[("a", 100_000), ("b", 200_000)], &[]);
        let sb = parse_superblock(&good[SUPERBLOCK_OFFSET as usize..][..SUPERBLOCK_LEN]).expect("superblock");
        let chunks =
            ChunkMap::new(parse_sys_chunk_array(&sb, good.len() as u64).expect("system chunks")).expect("chunk map");
        let chunk = chunks.find(sb.chunk_root, sb.nodesize).expect("chunk root mapped");
        let chunk_root = (chunk.stripes[0] + sb.chunk_root - chunk.logical) as usize;
        let sbo = SUPERBLOCK_OFFSET as usize;

        type Patch = fn(&mut [u8], usize, usize);
        let cases: [(&str, Patch); 7] = [
            ("sys array size huge", |b, s, _| b[s + SB_SYS_CHUNK_ARRAY_SIZE + 2] = 1),
            ("sys chunk past device", |b, s, _| {
                b[s + SB_SYS_CHUNK_ARRAY + KEY_LEN + CHUNK_HEADER_LEN + 15] = 0x40
            }),
            ("chunk root unmapped", |b, s, _| b[s + SB_CHUNK_ROOT + 7] = 0x10),
            ("chunk root level", |b, s, _| b[s + SB_CHUNK_ROOT_LEVEL] = 9),
            ("chunk leaf item count", |b, _, c| b[c + HEADER_NRITEMS + 3] = 0x7F),
            ("chunk leaf item data", |b, _, c| b[c + HEADER_LEN + KEY_LEN + 3] = 0x7F),
            ("chunk leaf of another fs", |b, _, c| b[c + HEADER_FSID] ^= 1),
        ];
        for (what, patch) in cases {
            let mut bytes = good.clone();
            patch(&mut bytes, sbo, chunk_root);
            assert_bad_filesystem(used_extents(&bytes), "memory", what)
        }
        // Cut short: chunks past the end.
        assert!(used_extents(&good[..good.len() / 4].to_vec()).is_err());

        let mut rng = StdRng::seed_from_u64(9);
        let mut bytes = good.clone();
        for _ in 0..2000 {
            for at in [sbo, chunk_root] {
                bytes[at..at + 4096].copy_from_slice(&good[at..at + 4096]);
            }
            for _ in 0..rng.random_range(1..4) {
                let at = if rng.random_bool(0.5) {
                    sbo + rng.random_range(0x50..0x32B + 200)
                } else {
                    chunk_root + rng.random_range(0..HEADER_LEN + 4 * ITEM_LEN)
                };
                bytes[at] = rng.random();
            }
            let _ = probe(&bytes);
            if let Ok(Some(extents)) = used_extents(&bytes) {
                assert_sorted_disjoint(&extents, bytes.len() as u64);
            }
        }
    }
}
