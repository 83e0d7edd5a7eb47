//! NTFS: `$Bitmap` (MFT record 6) says which clusters are used.
//!
//! The boot sector gives the geometry and where the MFT starts. Record 0 (`$MFT`) maps the MFT
//! itself, so record 6 is found even when the MFT is fragmented; record 6's unnamed `$DATA` is
//! the cluster bitmap, one bit per cluster, read a chunk at a time. Everything after the last
//! cluster is kept too: the backup boot sector sits in the sector after the volume, which is the
//! last sector of the partition; the last sector of the device is kept as well (chkdsk and
//! ntfsfix look there when the partition is larger than the volume), and when the volume fills
//! the device, so is its middle sector, where chkdsk then keeps the backup.
//!
//! Not supported (reported as [`Error::BadFilesystem`], never guessed): a `$Bitmap` whose `$DATA`
//! lives in extension records through an attribute list, and compressed, encrypted or sparse
//! `$Bitmap` data, none of which Windows or ntfs-3g create.

use super::bitmap::BitScan;
use super::read_boot_sector;
use crate::imaging::disk::{ReadAt, le};
use crate::imaging::extent::{Extent, ExtentList};
use crate::{Error, Result};

/// Bytes of `$Bitmap` read at a time (8 Mi clusters: 32 GiB of volume with 4 KiB clusters).
const CHUNK_BYTES: u64 = 1 << 20;
/// The OEM id at byte 3 of every NTFS boot sector.
const OEM_ID: &[u8; 8] = b"NTFS    ";
/// Largest cluster Windows formats (2 MiB).
const MAX_CLUSTER_SIZE: u64 = 2 << 20;
/// Largest MFT record accepted.
const MAX_RECORD_SIZE: u64 = 64 << 10;
/// Update sequence stride: fixups protect the last two bytes of every 512 bytes.
const FIXUP_STRIDE: usize = 512;
/// MFT record numbers used here.
const MFT_RECORD: u64 = 0;
const BITMAP_RECORD: u64 = 6;
/// Attribute types.
const ATTR_ATTRIBUTE_LIST: u32 = 0x20;
const ATTR_DATA: u32 = 0x80;
const ATTR_END: u32 = 0xFFFF_FFFF;
/// Attribute flags that make the stored bytes differ from the value.
const ATTR_COMPRESSED: u16 = 0x0001;
const ATTR_ENCRYPTED: u16 = 0x4000;
const ATTR_SPARSE: u16 = 0x8000;

/// What the boot sector says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Geometry {
    bytes_per_sector: u64,
    cluster_size: u64,
    /// Sectors in the volume; the backup boot sector is the one after them.
    total_sectors: u64,
    /// Clusters in the volume, each with a bit in `$Bitmap`.
    clusters: u64,
    mft_lcn: u64,
    record_size: u64,
}

/// A run of clusters of a non-resident attribute: `len` clusters from `vcn` stored at `lcn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    vcn: u64,
    lcn: u64,
    len: u64,
}

/// True when `dev` holds an NTFS filesystem.
pub fn probe(dev: &dyn ReadAt) -> Result<bool> {
    let Some(boot) = read_boot_sector(dev)? else {
        return Ok(false);
    };
    Ok(parse_boot_sector(&boot, dev.size()).is_ok())
}

/// Used byte ranges of the NTFS filesystem on `dev`, relative to the start of `dev`, sorted and
/// merged.
pub fn used_extents(dev: &dyn ReadAt) -> Result<Vec<Extent>> {
    used_extents_in_chunks(dev, CHUNK_BYTES)
}

/// [`used_extents`] reading `$Bitmap` `chunk_bytes` at a time (tests use tiny chunks).
fn used_extents_in_chunks(dev: &dyn ReadAt, chunk_bytes: u64) -> Result<Vec<Extent>> {
    let bad = |reason: String| Error::BadFilesystem {
        what: dev.name(),
        reason,
    };
    let boot = read_boot_sector(dev)?
        .ok_or_else(|| bad(format!("too small for an NTFS boot sector ({} bytes)", dev.size())))?;
    let g = parse_boot_sector(&boot, dev.size()).map_err(bad)?;

    // $MFT maps the MFT; record 6 is $Bitmap.
    let mft_runs = {
        let mut record = vec![0u8; g.record_size as usize];
        dev.read_exact_at(&mut record, g.mft_lcn * g.cluster_size)?;
        load_record(&mut record, MFT_RECORD).map_err(bad)?;
        match find_unnamed_data(&record).map_err(bad)? {
            Some(attr) if is_non_resident(attr) => decode_runs(attr, g.clusters).map_err(bad)?,
            Some(_) => return Err(bad("$MFT has resident data".into())),
            None => return Err(bad("$MFT has no $DATA attribute".into())),
        }
    };
    let mut record = vec![0u8; g.record_size as usize];
    read_runs(dev, &g, &mft_runs, BITMAP_RECORD * g.record_size, &mut record)?;
    load_record(&mut record, BITMAP_RECORD).map_err(bad)?;
    let bitmap = find_unnamed_data(&record)
        .map_err(bad)?
        .ok_or_else(|| bad("$Bitmap (MFT record 6) has no $DATA attribute".into()))?;

    let mut list = ExtentList::new();
    let mut scan = BitScan::new(0, g.clusters, g.cluster_size);
    // The boot sector is always kept ($Boot is cluster 0 and marked used anyway).
    list.push(0, g.bytes_per_sector);
    let needed = g.clusters.div_ceil(8);
    if is_non_resident(bitmap) {
        let flags = le::u16(bitmap, 0x0C).unwrap_or(0);
        if flags & (ATTR_COMPRESSED | ATTR_ENCRYPTED | ATTR_SPARSE) != 0 {
            return Err(bad(format!(
                "$Bitmap data is compressed, encrypted or sparse (flags {flags:#06x})"
            )));
        }
        let data_size = le::u64(bitmap, 0x30).unwrap_or(0);
        let initialized = le::u64(bitmap, 0x38).unwrap_or(0);
        if data_size.min(initialized) < needed {
            return Err(bad(format!(
                "$Bitmap holds {} bytes, {} clusters need {needed}",
                data_size.min(initialized),
                g.clusters
            )));
        }
        let runs = decode_runs(bitmap, g.clusters).map_err(bad)?;
        let mut buf = Vec::new();
        let mut pos = 0u64;
        while pos < needed {
            let n = chunk_bytes.max(1).min(needed - pos);
            buf.resize(n as usize, 0);
            read_runs(dev, &g, &runs, pos, &mut buf)?;
            scan.bytes(&buf, &mut list);
            pos += n;
        }
    } else {
        let value =
            resident_value(bitmap).ok_or_else(|| bad("$Bitmap resident value lies outside its record".into()))?;
        let value = value.get(..needed as usize).ok_or_else(|| {
            bad(format!(
                "$Bitmap holds {} bytes, {} clusters need {needed}",
                value.len(),
                g.clusters
            ))
        })?;
        scan.bytes(value, &mut list);
    }
    scan.finish(&mut list);

    // Past the last cluster: the sectors that do not make a whole cluster, the backup boot
    // sector after the volume (mkntfs and Windows format put it there), and the last sector of
    // the device, where chkdsk and ntfsfix look for it when the partition is larger.
    let bps = g.bytes_per_sector;
    let cluster_end = g.clusters * g.cluster_size;
    let volume_end = ((g.total_sectors + 1) * bps).min(dev.size());
    list.push(cluster_end, volume_end.saturating_sub(cluster_end));
    let last_sector = dev.size().saturating_sub(bps);
    if last_sector >= volume_end {
        list.push(last_sector, dev.size() - last_sector);
    }
    let mut extents = list.into_vec();
    if (g.total_sectors + 1) * bps > dev.size() {
        // No room after the volume: chkdsk keeps the backup in the middle sector instead.
        let middle = g.total_sectors.div_ceil(2) * bps;
        extents = merged(extents, Extent::new(middle, bps));
    }
    Ok(extents)
}

/// `extents` (sorted, merged) with `extra` added.
fn merged(extents: Vec<Extent>, extra: Extent) -> Vec<Extent> {
    let at = extents.partition_point(|e| e.offset <= extra.offset);
    let mut list = ExtentList::new();
    let (before, after) = extents.split_at(at);
    for e in before.iter().chain([&extra]).chain(after) {
        list.push(e.offset, e.len);
    }
    list.into_vec()
}

/// Checks the boot sector; the error is the reason it is not a usable NTFS volume.
fn parse_boot_sector(boot: &[u8], dev_size: u64) -> std::result::Result<Geometry, String> {
    const SHORT: &str = "boot sector too short";
    if boot.get(3..11) != Some(OEM_ID.as_slice()) {
        return Err("no NTFS OEM id".into());
    }
    let bytes_per_sector = le::u16(boot, 0x0B).map(u64::from).ok_or(SHORT)?;
    if !bytes_per_sector.is_power_of_two() || !(256..=4096).contains(&bytes_per_sector) {
        return Err(format!("{bytes_per_sector} bytes per sector"));
    }
    // Up to 128 sectors per cluster directly; above, the byte is -log2 (Windows 10 >= 1709).
    let cluster_size = match boot.get(0x0D).copied().ok_or(SHORT)? {
        0 => return Err("0 sectors per cluster".into()),
        n @ 1..=0x80 if n.is_power_of_two() => u64::from(n) * bytes_per_sector,
        n @ 0xE0..=0xFF => bytes_per_sector << (256 - u32::from(n)),
        n => return Err(format!("sectors per cluster byte {n:#04x}")),
    };
    if cluster_size > MAX_CLUSTER_SIZE {
        return Err(format!("{cluster_size}-byte clusters"));
    }
    let total_sectors = le::u64(boot, 0x28).ok_or(SHORT)?;
    let volume_bytes = total_sectors
        .checked_mul(bytes_per_sector)
        .filter(|&b| b <= dev_size)
        .ok_or_else(|| format!("volume of {total_sectors} sectors is larger than the {dev_size}-byte device"))?;
    let clusters = volume_bytes / cluster_size;
    if clusters == 0 {
        return Err("no clusters".into());
    }
    let mft_lcn = le::u64(boot, 0x30).ok_or(SHORT)?;
    let record_size = match boot.get(0x40).map(|&b| b as i8).ok_or(SHORT)? {
        n @ 1.. => u64::from(n.unsigned_abs()) * cluster_size,
        n @ -31..=-1 => 1 << n.unsigned_abs(),
        n => return Err(format!("clusters per MFT record {n}")),
    };
    if !record_size.is_power_of_two() || !(512..=MAX_RECORD_SIZE).contains(&record_size) {
        return Err(format!("{record_size}-byte MFT records"));
    }
    let mft_clusters = record_size.div_ceil(cluster_size);
    if mft_lcn.checked_add(mft_clusters).is_none_or(|end| end > clusters) {
        return Err(format!(
            "MFT at cluster {mft_lcn} is outside the {clusters}-cluster volume"
        ));
    }
    Ok(Geometry {
        bytes_per_sector,
        cluster_size,
        total_sectors,
        clusters,
        mft_lcn,
        record_size,
    })
}

/// Checks an MFT record and undoes its update sequence fixups.
fn load_record(record: &mut [u8], number: u64) -> std::result::Result<(), String> {
    if record.get(0..4) != Some(b"FILE".as_slice()) {
        return Err(format!("MFT record {number} has no FILE signature"));
    }
    let usa_offset = usize::from(le::u16(record, 4).unwrap_or(0));
    let usa_count = usize::from(le::u16(record, 6).unwrap_or(0));
    let blocks = record.len() / FIXUP_STRIDE;
    if usa_count != blocks + 1 || usa_offset % 2 != 0 || usa_offset + 2 * usa_count > record.len() {
        return Err(format!(
            "MFT record {number}: update sequence of {usa_count} at {usa_offset} does not fit \
             a {}-byte record",
            record.len()
        ));
    }
    let usn = le::u16(record, usa_offset);
    for block in 0..blocks {
        let end = (block + 1) * FIXUP_STRIDE - 2;
        if le::u16(record, end) != usn {
            return Err(format!(
                "MFT record {number}: update sequence mismatch in sector {block} (torn write)"
            ));
        }
        let saved = usa_offset + 2 + 2 * block;
        let original = le::u16(record, saved).map(u16::to_le_bytes);
        if let (Some(original), Some(dst)) = (original, record.get_mut(end..end + 2)) {
            dst.copy_from_slice(&original);
        }
    }
    let flags = le::u16(record, 0x16).unwrap_or(0);
    if flags & 0x0001 == 0 {
        return Err(format!("MFT record {number} is not in use"));
    }
    Ok(())
}

/// The unnamed `$DATA` attribute of a record: the resident one, or the non-resident one that
/// starts at VCN 0.
fn find_unnamed_data(record: &[u8]) -> std::result::Result<Option<&[u8]>, String> {
    let used = (le::u32(record, 0x18).unwrap_or(0) as usize).min(record.len());
    let mut off = usize::from(le::u16(record, 0x14).unwrap_or(0));
    let mut has_list = false;
    loop {
        let kind = le::u32(record, off).ok_or("attribute list runs past the record")?;
        if kind == ATTR_END {
            break;
        }
        let len = le::u32(record, off + 4).unwrap_or(0) as usize;
        let attr = off
            .checked_add(len)
            .filter(|&end| len >= 16 && end <= used)
            .and_then(|end| record.get(off..end))
            .ok_or_else(|| format!("attribute at {off} of length {len} runs past the record"))?;
        has_list |= kind == ATTR_ATTRIBUTE_LIST;
        let unnamed = attr.get(9) == Some(&0);
        if kind == ATTR_DATA && unnamed && (!is_non_resident(attr) || le::u64(attr, 0x10) == Some(0)) {
            return Ok(Some(attr));
        }
        off += len;
    }
    if has_list {
        return Err("$DATA is in an attribute list, which is not supported".into());
    }
    Ok(None)
}

fn is_non_resident(attr: &[u8]) -> bool {
    attr.get(8).is_some_and(|&b| b != 0)
}

/// The value of a resident attribute.
fn resident_value(attr: &[u8]) -> Option<&[u8]> {
    let len = le::u32(attr, 0x10)? as usize;
    let off = usize::from(le::u16(attr, 0x14)?);
    attr.get(off..off.checked_add(len)?)
}

/// Decodes the mapping pairs of a non-resident system file attribute. Every run must lie inside
/// the volume, and the stream cannot be longer than the volume or sparse (system files never
/// are), which also keeps every byte offset computed from the runs from overflowing.
fn decode_runs(attr: &[u8], clusters: u64) -> std::result::Result<Vec<Run>, String> {
    let mut vcn = le::u64(attr, 0x10).ok_or("attribute header too short")?;
    let mut pos = usize::from(le::u16(attr, 0x20).ok_or("attribute header too short")?);
    let mut lcn: i64 = 0;
    let mut runs = Vec::new();
    loop {
        let header = *attr.get(pos).ok_or("mapping pairs run past the attribute")?;
        if header == 0 {
            break;
        }
        let len_size = usize::from(header & 0x0F);
        let off_size = usize::from(header >> 4);
        if len_size == 0 || len_size > 8 || off_size > 8 {
            return Err(format!("mapping pair header {header:#04x}"));
        }
        let len = signed(attr.get(pos + 1..pos + 1 + len_size)).ok_or("mapping pairs run past the attribute")?;
        let len = u64::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| format!("run of {len} clusters"))?;
        let start = pos + 1 + len_size;
        if off_size == 0 {
            return Err(format!("sparse run of {len} clusters in a system file"));
        }
        let delta = signed(attr.get(start..start + off_size)).ok_or("mapping pairs run past the attribute")?;
        lcn = lcn.checked_add(delta).ok_or("run offset overflows")?;
        let first = u64::try_from(lcn).map_err(|_| format!("run at cluster {lcn}"))?;
        if first.checked_add(len).is_none_or(|end| end > clusters) {
            return Err(format!(
                "run of {len} clusters at {first} is outside the {clusters}-cluster volume"
            ));
        }
        runs.push(Run { vcn, lcn: first, len });
        vcn = vcn
            .checked_add(len)
            .filter(|&end| end <= clusters)
            .ok_or_else(|| format!("stream of more than {clusters} clusters"))?;
        pos = start + off_size;
    }
    Ok(runs)
}

/// A little-endian two's complement number of 1 to 8 bytes.
fn signed(bytes: Option<&[u8]>) -> Option<i64> {
    let bytes = bytes?;
    let last = *bytes.last()?;
    let mut value = if last & 0x80 != 0 { [0xFF; 8] } else { [0; 8] };
    value.get_mut(..bytes.len())?.copy_from_slice(bytes);
    Some(i64::from_le_bytes(value))
}

/// Reads `buf.len()` bytes at byte `pos` of a non-resident stream.
fn read_runs(dev: &dyn ReadAt, g: &Geometry, runs: &[Run], pos: u64, buf: &mut [u8]) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = pos + done as u64;
        let vcn = at / g.cluster_size;
        let run = runs
            .iter()
            .find(|r| r.vcn <= vcn && vcn - r.vcn < r.len)
            .ok_or_else(|| Error::BadFilesystem {
                what: dev.name(),
                reason: format!("cluster {vcn} of a system file is not mapped"),
            })?;
        // Runs lie inside the volume (decode_runs), so none of this overflows.
        let run_end = (run.vcn + run.len) * g.cluster_size;
        let n = (run_end - at).min((buf.len() - done) as u64) as usize;
        let offset = (run.lcn + (vcn - run.vcn)) * g.cluster_size + at % g.cluster_size;
        if let Some(dst) = buf.get_mut(done..done + n) {
            dev.read_exact_at(dst, offset)?;
        }
        done += n;
    }
    Ok(())
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

    const INSTALL: &str = "apt-get install -y ntfs-3g";

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

    /// What a user would check: ntfsfix finds nothing to fix (it also checks the backup boot
    /// sector), ntfsresize's consistency check of the cluster accounting passes, and every file
    /// reads back the same.
    fn check_copy(copy: &Path, files: &[(String, Vec<u8>)]) -> std::result::Result<(), String> {
        for (name, args) in [
            ("ntfsfix", vec!["-n", s(copy)]),
            ("ntfsresize", vec!["--info", "--force", "--no-progress-bar", s(copy)]),
        ] {
            let out = run(name, &args);
            if !out.status.success() {
                return Err(format!(
                    "{name} failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        for (name, data) in files {
            let out = run("ntfscat", &[s(copy), name]);
            if !out.status.success() {
                return Err(format!(
                    "ntfscat {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            if out.stdout != *data {
                return Err(format!("{name} reads back different"));
            }
        }
        Ok(())
    }

    /// A number after `label` on a line of `text`, e.g. "Cluster Size: 4096".
    fn number_after(text: &str, label: &str) -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.trim_start_matches([' ', ':', '\t']).split_whitespace().next())
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in {text}"))
    }

    fn make_ntfs(work: &Path, size_mb: u64, mkfs_extra: &[&str]) -> PathBuf {
        let img = work.join("ntfs.img");
        File::create(&img)
            .and_then(|f| f.set_len(size_mb << 20))
            .expect("create image");
        let mut args = vec!["-F", "-Q"];
        args.extend(mkfs_extra);
        args.push(s(&img));
        run_ok("mkfs.ntfs", &args);
        img
    }

    /// Copies a file with `size` random bytes into the image as `/name`.
    fn put_file(img: &Path, work: &Path, name: &str, size: usize, rng: &mut StdRng) -> (String, Vec<u8>) {
        let mut data = vec![0u8; size];
        rng.fill(&mut data[..]);
        let src = work.join("src.bin");
        std::fs::write(&src, &data).expect("write source file");
        let dst = format!("/{name}");
        run_ok("ntfscp", &[s(img), s(&src), &dst]);
        (dst, data)
    }

    /// Makes an NTFS image, fills it, truncates a file in the middle to nothing, and checks the
    /// used map. `grow` adds bytes to the device after mkfs (a partition larger than its volume).
    fn round_trip(size_mb: u64, mkfs_extra: &[&str], sizes: &[usize], small_files: usize, grow: u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path();
        let img = make_ntfs(work, size_mb, mkfs_extra);
        if grow > 0 {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img)
                .expect("open image");
            f.set_len((size_mb << 20) + grow).expect("grow image");
            // As chkdsk would: the backup boot sector also goes to the partition's last sector.
            let mut boot = [0u8; 4096];
            let bps = Disk::open(&img)
                .ok()
                .and_then(|d| read_boot_sector(&d).ok().flatten())
                .and_then(|b| le::u16(&b, 0x0B))
                .map(usize::from)
                .expect("sector size");
            f.read_exact_at(&mut boot[..bps], 0).expect("read boot sector");
            f.write_all_at(&boot[..bps], (size_mb << 20) + grow - bps as u64)
                .expect("write backup boot sector");
        }
        let mut rng = StdRng::seed_from_u64(size_mb * 7 + sizes.len() as u64 + grow);
        let mut files = Vec::new();
        let (first, rest) = sizes.split_first().expect("some files");
        files.push(put_file(&img, work, "first.bin", *first, &mut rng));
        let victim_size = sizes.iter().max().copied().unwrap_or(1) + 12345;
        let (victim, _) = put_file(&img, work, "victim.bin", victim_size, &mut rng);
        for (i, &size) in rest.iter().enumerate() {
            files.push(put_file(&img, work, &format!("file{i}.dat"), size, &mut rng));
        }
        // Enough small files that the MFT and the root index grow past what mkfs made.
        for i in 0..small_files {
            let size = rng.random_range(0..3000);
            files.push(put_file(&img, work, &format!("small{i}.txt"), size, &mut rng));
        }

        let disk = Disk::open(&img).expect("open image");
        assert!(probe(&disk).expect("probe"), "probe does not recognise NTFS");
        assert!(
            !super::super::fat::probe(&disk).expect("fat probe"),
            "FAT probe accepts NTFS"
        );
        let with_victim = used_extents(&disk).expect("used extents before truncate");
        drop(disk);

        let listing = run_ok("ntfsls", &["-i", s(&img)]);
        let inode = listing
            .lines()
            .find_map(|l| l.trim().strip_suffix(" victim.bin"))
            .unwrap_or_else(|| panic!("no victim.bin in {listing}"));
        run_ok("ntfstruncate", &[s(&img), inode.trim(), "0"]);
        files.push((victim, Vec::new()));

        let disk = Disk::open(&img).expect("open image");
        let size = disk.size();
        let boot = read_boot_sector(&disk).expect("read").expect("boot sector");
        let g = parse_boot_sector(&boot, size).expect("geometry");
        let extents = used_extents(&disk).expect("used extents");
        assert_sorted_disjoint(&extents, size);
        let used = total_len(&extents);
        let before = total_len(&with_victim);
        let freed = victim_size as u64 / g.cluster_size * g.cluster_size;
        assert!(
            used + freed <= before,
            "truncating {victim_size} bytes took used from {before} only to {used}"
        );
        assert!(extents.len() >= 2, "no free space in the middle: {extents:?}");
        assert!(used < size / 2, "{used} of {size} bytes used on a mostly empty volume");
        assert_eq!(extents.first().map(|e| e.offset), Some(0));
        assert_eq!(
            extents.last().map(|e| e.end()),
            Some(size),
            "the last sector is not kept"
        );
        let backup = g.total_sectors * g.bytes_per_sector;
        assert!(
            extents
                .iter()
                .any(|e| e.offset <= backup && backup + g.bytes_per_sector <= e.end()),
            "backup boot sector at {backup} not kept"
        );

        // The same count from ntfs-3g: every byte but the free clusters (the tail past the last
        // cluster is the backup boot sector, kept whole).
        let info = run_ok("ntfsinfo", &["-m", s(&img)]);
        assert_eq!(number_after(&info, "Cluster Size"), g.cluster_size);
        assert_eq!(number_after(&info, "Volume Size in Clusters"), g.clusters);
        let free = number_after(&run_ok("ntfscluster", &["-i", s(&img)]), "bytes of free space");
        if grow == 0 {
            assert_eq!(used, size - free, "used bytes differ from ntfscluster's free space");
        } else {
            let tail = size - g.clusters * g.cluster_size;
            assert_eq!(
                used,
                size - tail - free + (g.bytes_per_sector + (size - grow - g.clusters * g.cluster_size))
            );
        }

        // Tiny chunks of $Bitmap give the same map.
        for chunk in [1, 3, 7, 4096] {
            assert_eq!(
                used_extents_in_chunks(&disk, chunk).expect("chunked"),
                extents,
                "chunk {chunk}"
            );
        }

        check_copy(&img, &files).expect("the original passes the checks");
        let copy = work.join("copy.img");
        copy_extents(&img, &extents, &copy);
        check_copy(&copy, &files).expect("copy of the used extents is a good filesystem");

        // The checks can fail: without the last extent (backup boot sector) or without the
        // largest one, something is missing.
        let largest = extents
            .iter()
            .enumerate()
            .max_by_key(|(_, e)| e.len)
            .map(|(i, _)| i)
            .unwrap_or(0);
        for drop_at in [extents.len() - 1, largest] {
            let mut fewer = extents.clone();
            let dropped = fewer.remove(drop_at);
            let broken = work.join("broken.img");
            copy_extents(&img, &fewer, &broken);
            assert!(check_copy(&broken, &files).is_err(), "copy without {dropped:?} passed");
        }
    }

    #[test]
    fn ntfs_4k_clusters_round_trip() {
        round_trip(32, &["-s", "512"], &[3_000_000, 100, 1_000_000, 5_000_000, 4096], 20, 0);
    }

    /// 512-byte clusters: a positive clusters-per-MFT-record count and a bigger bitmap; with many
    /// files the MFT grows past what mkfs made.
    #[test]
    fn ntfs_512_byte_clusters_round_trip() {
        round_trip(
            32,
            &["-s", "512", "-c", "512"],
            &[2_000_000, 1, 700_000, 3_000_000],
            150,
            0,
        );
    }

    /// 4 KiB sectors: 4 KiB MFT records with eight fixups each, a 4 KiB backup boot sector.
    #[test]
    fn ntfs_4k_sectors_round_trip() {
        round_trip(32, &["-s", "4096"], &[1_500_000, 10, 600_000, 2_500_000], 10, 0);
    }

    /// 64 KiB clusters: the volume ends mid-cluster, so sectors past the last cluster matter.
    #[test]
    fn ntfs_64k_clusters_round_trip() {
        round_trip(
            32,
            &["-s", "512", "-c", "65536"],
            &[1_000_000, 5, 300_000, 2_000_000],
            10,
            0,
        );
    }

    /// A partition larger than its volume: the backup boot sector after the volume and the
    /// last sector of the device are both kept.
    #[test]
    fn ntfs_in_larger_partition_round_trip() {
        round_trip(32, &["-s", "512"], &[1_000_000, 5, 300_000, 2_000_000], 5, 3 << 20);
    }

    fn fresh_ntfs() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = make_ntfs(dir.path(), 8, &["-s", "512", "-c", "1024"]);
        let mut rng = StdRng::seed_from_u64(9);
        put_file(&img, dir.path(), "a.bin", 300_000, &mut rng);
        let bytes = std::fs::read(&img).expect("read image");
        (dir, img, bytes)
    }

    /// Byte offsets of MFT records 0 and 6 in a fresh image (the MFT is contiguous there).
    fn record_offsets(bytes: &[u8]) -> (usize, usize) {
        let g = parse_boot_sector(&bytes[..512], bytes.len() as u64).expect("geometry");
        let mft = (g.mft_lcn * g.cluster_size) as usize;
        (mft, mft + 6 * g.record_size as usize)
    }

    #[test]
    fn corrupt_metadata_is_an_error() {
        let (dir, _img, good) = fresh_ntfs();
        let (mft, bitmap) = record_offsets(&good);
        type Patch = Box<dyn Fn(&mut [u8])>;
        let put = |at: usize, bytes: Vec<u8>| -> Patch {
            Box::new(move |b: &mut [u8]| b[at..at + bytes.len()].copy_from_slice(&bytes))
        };
        // (what, patch, probe still says NTFS)
        let cases: Vec<(&str, Patch, bool)> = vec![
            ("bytes per sector 3", put(0x0B, 3u16.to_le_bytes().to_vec()), false),
            ("sectors per cluster 0", put(0x0D, vec![0]), false),
            ("sectors per cluster 3", put(0x0D, vec![3]), false),
            ("clusters per MFT record 0", put(0x40, vec![0]), false),
            ("MFT records of 2^-40 bytes", put(0x40, vec![(-40i8) as u8]), false),
            ("MFT past the end", put(0x30, u64::MAX.to_le_bytes().to_vec()), false),
            (
                "volume larger than device",
                put(0x28, (1u64 << 40).to_le_bytes().to_vec()),
                false,
            ),
            ("huge volume", put(0x28, u64::MAX.to_le_bytes().to_vec()), false),
            ("no OEM id", put(3, b"MSDOS5.0".to_vec()), false),
            ("$MFT record signature", put(mft, b"BAAD".to_vec()), true),
            ("$Bitmap torn write", put(bitmap + 510, vec![0x12, 0x34]), true),
            ("$Bitmap not in use", put(bitmap + 0x16, vec![0, 0]), true),
            (
                "$Bitmap attributes past the record",
                put(bitmap + 0x14, vec![0xF0, 0x03]),
                true,
            ),
        ];
        for (what, patch, still_ntfs) in cases {
            let mut bytes = good.clone();
            patch(&mut bytes);
            let path = dir.path().join("corrupt.img");
            std::fs::write(&path, &bytes).expect("write corrupt image");
            let disk = Disk::open(&path).expect("open");
            assert_eq!(probe(&disk).expect("probe reads"), still_ntfs, "{what}: probe");
            assert_bad_filesystem(used_extents(&disk), s(&path), what)
        }
        let tiny = good[..100].to_vec();
        assert!(!probe(&tiny).expect("probe reads"));
        assert!(matches!(used_extents(&tiny), Err(Error::BadFilesystem { .. })));
    }

    /// A volume that fills its device has its backup boot sector in the middle (chkdsk).
    #[test]
    fn volume_filling_device_keeps_middle_sector() {
        let (_dir, _img, mut bytes) = fresh_ntfs();
        let sectors = bytes.len() as u64 / 512;
        let middle = sectors.div_ceil(2) * 512;
        // mkntfs puts $LogFile in the middle: mark the middle cluster free in $Bitmap, so the
        // middle sector is kept only for being the backup boot sector.
        let g = parse_boot_sector(&bytes[..512], bytes.len() as u64).expect("geometry");
        let (_, at) = record_offsets(&bytes);
        let mut record = bytes[at..at + g.record_size as usize].to_vec();
        load_record(&mut record, 6).expect("record 6");
        let attr = find_unnamed_data(&record).expect("attributes").expect("$DATA");
        let runs = decode_runs(attr, g.clusters).expect("runs");
        let cluster = middle / g.cluster_size;
        let byte = (runs[0].lcn * g.cluster_size + cluster / 8) as usize;
        bytes[byte] &= !(1 << (cluster % 8));
        let covers = |extents: &[Extent]| extents.iter().any(|e| e.offset <= middle && middle + 512 <= e.end());
        let normal = used_extents(&bytes).expect("used extents");
        assert!(!covers(&normal), "middle sector is in a used cluster: {normal:?}");
        bytes[0x28..0x30].copy_from_slice(&sectors.to_le_bytes());
        let extents = used_extents(&bytes).expect("used extents");
        assert!(covers(&extents), "middle sector not kept: {extents:?}");
        assert_eq!(extents.last().map(|e| e.end()), Some(bytes.len() as u64));
    }

    /// Fixups put back the two bytes at the end of every 512 and check the sequence number.
    #[test]
    fn fixups_restore_sector_ends() {
        let mut record = vec![0u8; 1024];
        record[..4].copy_from_slice(b"FILE");
        record[4..6].copy_from_slice(&0x30u16.to_le_bytes());
        record[6..8].copy_from_slice(&3u16.to_le_bytes());
        record[0x16] = 1; // in use
        record[0x30..0x36].copy_from_slice(&[0x07, 0x00, 0xAB, 0xCD, 0xEF, 0x01]);
        record[510..512].copy_from_slice(&[0x07, 0x00]);
        record[1022..1024].copy_from_slice(&[0x07, 0x00]);
        let mut loaded = record.clone();
        load_record(&mut loaded, 6).expect("fixups apply");
        assert_eq!(loaded[510..512], [0xAB, 0xCD]);
        assert_eq!(loaded[1022..1024], [0xEF, 0x01]);
        assert_eq!(loaded[..510], record[..510]);
        let mut torn = record.clone();
        torn[1023] = 1;
        assert!(load_record(&mut torn, 6).is_err(), "torn write accepted");
        let mut short_usa = record.clone();
        short_usa[6] = 2;
        assert!(
            load_record(&mut short_usa, 6).is_err(),
            "update sequence too short accepted"
        );
    }

    /// Random damage to the boot sector and to MFT records 0 and 6 never panics, and whatever
    /// is accepted stays inside the device.
    #[test]
    fn random_damage_never_panics() {
        let (_dir, _img, good) = fresh_ntfs();
        let (mft, bitmap) = record_offsets(&good);
        let mut bytes = good.clone();
        let mut rng = StdRng::seed_from_u64(4242);
        let mut accepted = 0;
        let mut touched = Vec::new();
        for round in 0..6000 {
            for at in touched.drain(..) {
                bytes[at] = good[at];
            }
            for _ in 0..rng.random_range(1..4) {
                let at = match round % 3 {
                    0 => rng.random_range(0..0x50),
                    1 => mft + rng.random_range(0..1024),
                    _ => bitmap + rng.random_range(0..1024),
                };
                bytes[at] = rng.random();
                touched.push(at);
            }
            let _ = probe(&bytes);
            if let Ok(extents) = used_extents(&bytes) {
                accepted += 1;
                assert_sorted_disjoint(&extents, bytes.len() as u64);
            }
        }
        assert!(
            accepted > 0,
            "every damaged image was rejected; the fuzzing reaches nothing"
        );
    }

    #[test]
    fn mapping_pairs_decode() {
        // Header with mapping pairs at 0x40: 0x21 = 1-byte length, 2-byte offset.
        let mut attr = vec![0u8; 0x48];
        attr[0x20] = 0x40;
        attr[0x40..0x47].copy_from_slice(&[0x21, 0x04, 0x00, 0x10, 0x11, 0x02, 0xFF]);
        // Run 1: 4 clusters at 0x1000; run 2: 2 clusters at 0x1000 - 1; end.
        let runs = decode_runs(&attr, 1 << 20).expect("decodes");
        assert_eq!(
            runs,
            [
                Run {
                    vcn: 0,
                    lcn: 0x1000,
                    len: 4
                },
                Run {
                    vcn: 4,
                    lcn: 0x0FFF,
                    len: 2
                }
            ]
        );
        assert!(decode_runs(&attr, 0x1000).is_err(), "run past the volume accepted");
        attr[0x44] = 0x01; // sparse run
        assert!(decode_runs(&attr, 1 << 20).is_err());
        assert_eq!(signed(Some(&[0xFF])), Some(-1));
        assert_eq!(signed(Some(&[0x00, 0x80])), Some(-32768));
        assert_eq!(signed(Some(&[])), None);
    }

    /// Reading a stream across runs that are out of order on disk and not cluster aligned.
    #[test]
    fn streams_read_across_runs() {
        let g = Geometry {
            bytes_per_sector: 512,
            cluster_size: 4,
            total_sectors: 1,
            clusters: 16,
            mft_lcn: 0,
            record_size: 1024,
        };
        let dev: Vec<u8> = (0..64).collect();
        let runs = [
            Run { vcn: 0, lcn: 5, len: 2 },
            Run { vcn: 2, lcn: 1, len: 1 },
            Run { vcn: 3, lcn: 9, len: 3 },
        ];
        // The stream is clusters 5, 6, 1, 9, 10, 11: bytes 20..28, 4..8, 36..48.
        let stream: Vec<u8> = (20..28).chain(4..8).chain(36..48).collect();
        for pos in 0..stream.len() {
            for len in 0..=stream.len() - pos {
                let mut buf = vec![0xAA; len];
                read_runs(&dev, &g, &runs, pos as u64, &mut buf).expect("read");
                assert_eq!(buf, stream[pos..pos + len], "pos {pos} len {len}");
            }
        }
        let mut buf = [0u8; 2];
        assert!(read_runs(&dev, &g, &runs, 23, &mut buf).is_err(), "read past the runs");

        // Bits across chunks: clusters 3..=9, 15 and 16 used of 17; bits past 16 are ignored.
        let bitmap = [0b1111_1000u8, 0b1000_0011, 0b1111_0001, 0xFF];
        let mut list = ExtentList::new();
        let mut scan = BitScan::new(0, 17, 4);
        for chunk in bitmap.chunks(1) {
            scan.bytes(chunk, &mut list);
        }
        scan.finish(&mut list);
        assert_eq!(list.into_vec(), [Extent::new(12, 28), Extent::new(60, 8)]);
    }
}
