//! Partition tables: MBR (primary, extended and logical) and GPT (protective MBR, both headers).
//!
//! Capture keeps every non-zero byte outside the data partitions (MBR boot code, the gap before
//! the first partition, EBRs, both GPT copies), so boot loaders survive. Deploy to a larger disk
//! moves the backup GPT to the new end and fixes the headers; see [`GptRelocation`].

use serde::{Deserialize, Serialize};

use super::cursor::{FieldError, FieldResult, Span};
use super::disk::{ReadAt, le};
use super::extent::{Extent, ExtentList};
use crate::{Error, Result};

/// Which partition table a disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// No partition table: the whole disk is one volume.
    None,
    /// DOS/MBR, possibly with an extended partition holding logical ones.
    Mbr,
    /// GUID partition table.
    Gpt,
}

/// One data partition (never the extended container itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Number as Linux names it (`sda1`; logical MBR partitions start at 5).
    pub number: u32,
    /// First byte on the disk.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// MBR type byte as `0x83`, or GPT type GUID.
    pub type_id: String,
    /// GPT partition name (empty for MBR).
    pub name: String,
}

/// The layout of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Partition table kind.
    pub table: TableKind,
    /// Logical sector size in bytes.
    pub sector_size: u32,
    /// Size of the disk in bytes.
    pub disk_size: u64,
    /// Data partitions in disk order.
    pub partitions: Vec<Partition>,
    /// Bytes at the end of the disk holding the backup GPT (entries and header); deploy writes
    /// them at the target's end instead. Zero without a GPT.
    pub backup_gpt_len: u64,
}

const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
const MAX_LOGICAL: u32 = 128;

fn is_extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0F | 0x85)
}

/// Reads the partition table of `disk`. `sector_size` is the device's logical sector size; for
/// image files pass `None` and it is detected (a GPT at 4096 bytes means 4096-byte sectors).
pub fn read_layout(disk: &dyn ReadAt, sector_size: Option<u32>) -> Result<Layout> {
    let disk_size = disk.size();
    let candidates: &[u32] = match sector_size {
        Some(ref s) => std::slice::from_ref(s),
        None => &[512, 4096],
    };
    for &ss in candidates {
        if disk_size >= u64::from(ss) * 2 && has_gpt_header(disk, ss)? {
            return read_gpt(disk, ss);
        }
    }
    let ss = sector_size.unwrap_or(512);
    let mut mbr = [0u8; 512];
    if disk_size >= 512 {
        disk.read_exact_at(&mut mbr, 0)?;
    }
    if mbr.get(510..512) == Some(&MBR_SIGNATURE[..]) && mbr_has_partitions(&mbr) {
        return read_mbr(disk, &mbr, ss);
    }
    Ok(Layout {
        table: TableKind::None,
        sector_size: ss,
        disk_size,
        partitions: vec![Partition {
            number: 0,
            offset: 0,
            len: disk_size,
            type_id: String::new(),
            name: String::new(),
        }],
        backup_gpt_len: 0,
    })
}

fn bad(disk: &dyn ReadAt, reason: String) -> Error {
    Error::BadDisk {
        path: disk.name().into(),
        reason,
    }
}

fn has_gpt_header(disk: &dyn ReadAt, ss: u32) -> Result<bool> {
    let mut sig = [0u8; 8];
    disk.read_exact_at(&mut sig, u64::from(ss))?;
    Ok(&sig == GPT_SIGNATURE)
}

/// A partition table entry is "in use" if it has a type and a size; a FAT/NTFS boot sector also
/// ends in 55AA but its "entries" are boot code, which rarely passes these checks.
fn mbr_has_partitions(mbr: &[u8; 512]) -> bool {
    (0..4).any(|i| {
        let e = 446 + i * 16;
        let status = mbr.get(e).copied().unwrap_or(0xFF);
        let kind = mbr.get(e + 4).copied().unwrap_or(0);
        let len = le::u32(mbr, e + 12).unwrap_or(0);
        (status == 0 || status == 0x80) && kind != 0 && len != 0
    }) && (0..4).all(|i| matches!(mbr.get(446 + i * 16), Some(0 | 0x80)))
}

fn read_mbr(disk: &dyn ReadAt, mbr: &[u8; 512], ss: u32) -> Result<Layout> {
    let ssz = u64::from(ss);
    let mut partitions = Vec::new();
    let mut extended = None;
    for i in 0..4u32 {
        let e = 446 + i as usize * 16;
        let kind = mbr.get(e + 4).copied().unwrap_or(0);
        let start = u64::from(le::u32(mbr, e + 8).unwrap_or(0));
        let len = u64::from(le::u32(mbr, e + 12).unwrap_or(0));
        if kind == 0 || len == 0 {
            continue;
        }
        if is_extended(kind) {
            extended = Some((start, len));
        } else {
            partitions.push(Partition {
                number: i + 1,
                offset: start * ssz,
                len: len * ssz,
                type_id: format!("0x{kind:02x}"),
                name: String::new(),
            });
        }
    }
    if let Some((ext_start, ext_len)) = extended {
        // Each EBR holds a logical partition (relative to this EBR) and a link to the next EBR
        // (relative to the extended partition's start).
        let mut ebr_lba = ext_start;
        let mut number = 5;
        loop {
            if number > 4 + MAX_LOGICAL {
                return Err(bad(
                    disk,
                    format!("more than {MAX_LOGICAL} logical partitions (EBR loop?)"),
                ));
            }
            let mut ebr = [0u8; 512];
            disk.read_exact_at(&mut ebr, ebr_lba * ssz)?;
            if ebr.get(510..512) != Some(&MBR_SIGNATURE[..]) {
                return Err(bad(
                    disk,
                    format!("extended boot record at sector {ebr_lba} has no 55AA signature"),
                ));
            }
            let kind = ebr[450];
            let rel = u64::from(le::u32(&ebr, 454).unwrap_or(0));
            let len = u64::from(le::u32(&ebr, 458).unwrap_or(0));
            if kind != 0 && len != 0 {
                partitions.push(Partition {
                    number,
                    offset: (ebr_lba + rel) * ssz,
                    len: len * ssz,
                    type_id: format!("0x{kind:02x}"),
                    name: String::new(),
                });
                number += 1;
            }
            let next = u64::from(le::u32(&ebr, 462 + 8).unwrap_or(0));
            if ebr[466] == 0 || next == 0 {
                break;
            }
            if next >= ext_len {
                return Err(bad(
                    disk,
                    format!("EBR link at sector {ebr_lba} points outside the extended partition"),
                ));
            }
            ebr_lba = ext_start + next;
        }
    }
    finish(disk, TableKind::Mbr, ss, partitions, 0)
}

/// The fields of a GPT header that capture and deploy use.
#[derive(Debug, Clone, Copy)]
struct GptHeader {
    header_size: u32,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
}

impl GptHeader {
    fn entries_bytes(&self) -> u64 {
        u64::from(self.entry_count) * u64::from(self.entry_size)
    }
}

fn parse_gpt_header(disk: &dyn ReadAt, raw: &[u8]) -> Result<GptHeader> {
    let header_size = le::u32(raw, 12).unwrap_or(0);
    if !(92..=raw.len() as u32).contains(&header_size) {
        return Err(bad(disk, format!("GPT header size {header_size} is invalid")));
    }
    let mut check = raw.get(..header_size as usize).unwrap_or_default().to_vec();
    let stored_crc = le::u32(raw, 16).unwrap_or(0);
    if let Some(crc) = check.get_mut(16..20) {
        crc.fill(0);
    }
    if crc32fast::hash(&check) != stored_crc {
        return Err(bad(disk, "GPT header checksum mismatch".into()));
    }
    let h = GptHeader {
        header_size,
        entries_lba: le::u64(raw, 72).unwrap_or(0),
        entry_count: le::u32(raw, 80).unwrap_or(0),
        entry_size: le::u32(raw, 84).unwrap_or(0),
    };
    if h.entry_size < 128 || h.entry_size > 4096 || h.entry_count > 16384 {
        return Err(bad(
            disk,
            format!("GPT has {} entries of {} bytes", h.entry_count, h.entry_size),
        ));
    }
    Ok(h)
}

fn read_gpt(disk: &dyn ReadAt, ss: u32) -> Result<Layout> {
    let ssz = u64::from(ss);
    let mut raw = vec![0u8; ss as usize];
    disk.read_exact_at(&mut raw, ssz)?;
    let header = parse_gpt_header(disk, &raw)?;
    let mut entries = vec![0u8; header.entries_bytes() as usize];
    disk.read_exact_at(&mut entries, header.entries_lba * ssz)?;
    if crc32fast::hash(&entries) != le::u32(&raw, 88).unwrap_or(0) {
        return Err(bad(disk, "GPT partition entries checksum mismatch".into()));
    }
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(header.entry_size as usize).enumerate() {
        let type_guid = e.get(..16).unwrap_or_default();
        if type_guid.iter().all(|&b| b == 0) {
            continue;
        }
        let first = le::u64(e, 32).unwrap_or(0);
        let last = le::u64(e, 40).unwrap_or(0);
        if last < first {
            return Err(bad(disk, format!("GPT entry {} ends before it starts", i + 1)));
        }
        let name: Vec<u16> = e
            .get(56..128)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        partitions.push(Partition {
            number: i as u32 + 1,
            offset: first * ssz,
            len: (last - first + 1) * ssz,
            type_id: guid_string(type_guid),
            name: String::from_utf16_lossy(&name),
        });
    }
    let backup_gpt_len = ssz + header.entries_bytes().div_ceil(ssz) * ssz;
    finish(disk, TableKind::Gpt, ss, partitions, backup_gpt_len)
}

fn finish(
    disk: &dyn ReadAt,
    table: TableKind,
    ss: u32,
    mut partitions: Vec<Partition>,
    backup_gpt_len: u64,
) -> Result<Layout> {
    partitions.sort_by_key(|p| p.offset);
    let disk_size = disk.size();
    let mut prev_end = 0;
    for p in &partitions {
        if p.offset + p.len > disk_size {
            return Err(bad(
                disk,
                format!(
                    "partition {} ends at byte {} beyond the disk's {} bytes",
                    p.number,
                    p.offset + p.len,
                    disk_size
                ),
            ));
        }
        if p.offset < prev_end {
            return Err(bad(disk, format!("partition {} overlaps the one before it", p.number)));
        }
        prev_end = p.offset + p.len;
    }
    Ok(Layout {
        table,
        sector_size: ss,
        disk_size,
        partitions,
        backup_gpt_len,
    })
}

/// Mixed-endian GUID text form, as sgdisk and blkid print it.
fn guid_string(b: &[u8]) -> String {
    let g = |r: std::ops::Range<usize>| b.get(r).unwrap_or_default().to_vec();
    let rev = |mut v: Vec<u8>| {
        v.reverse();
        hex::encode_upper(v)
    };
    format!(
        "{}-{}-{}-{}-{}",
        rev(g(0..4)),
        rev(g(4..6)),
        rev(g(6..8)),
        hex::encode_upper(g(8..10)),
        hex::encode_upper(g(10..16))
    )
}

impl Layout {
    /// Checks a layout that was not just read from a disk (one from a manifest): a usable sector
    /// size, partitions in order, apart and inside the disk, and a backup GPT that fits it, so
    /// that arithmetic on it cannot overflow.
    pub fn check(&self) -> FieldResult<()> {
        if !valid_sector_size(self.sector_size) {
            return Err(FieldError::new(
                "layout sector_size",
                format!("{} is not a power of two from 512 to 65536", self.sector_size),
            ));
        }
        let mut prev_end = 0;
        for p in &self.partitions {
            let field = format!("layout partition {}", p.number);
            let span = Span::new(&field, p.offset, p.len, self.disk_size)?;
            if p.offset < prev_end {
                return Err(FieldError::new(&field, "starts before the end of the one before it"));
            }
            prev_end = span.end();
        }
        if self.backup_gpt_len > self.disk_size {
            return Err(FieldError::new(
                "layout backup_gpt_len",
                format!("{} bytes on a disk of {}", self.backup_gpt_len, self.disk_size),
            ));
        }
        Ok(())
    }

    /// Byte ranges of the disk outside every data partition: boot code, gaps, EBRs, GPT copies.
    pub fn outside(&self) -> Vec<Extent> {
        let mut list = ExtentList::new();
        let mut pos = 0;
        for p in &self.partitions {
            list.push(pos, p.offset.saturating_sub(pos));
            pos = pos.max(p.offset.saturating_add(p.len));
        }
        list.push(pos, self.disk_size.saturating_sub(pos));
        list.into_vec()
    }

    /// The smallest target that can hold this layout.
    pub fn min_target_size(&self) -> u64 {
        let end = self
            .partitions
            .iter()
            .map(|p| p.offset.saturating_add(p.len))
            .max()
            .unwrap_or(0);
        match self.table {
            TableKind::None => self.disk_size,
            TableKind::Mbr => end,
            TableKind::Gpt => end.saturating_add(self.backup_gpt_len),
        }
    }
}

/// A logical sector size fog works with: a power of two from 512 to 65536 bytes.
pub fn valid_sector_size(ss: u32) -> bool {
    ss.is_power_of_two() && (512..=65536).contains(&ss)
}

/// The writes that put a GPT right on a target of another size: the primary header's alternate
/// LBA and last usable LBA, the protective MBR's size, and the backup entries and header at the
/// target's last sectors.
#[derive(Debug)]
pub struct GptRelocation {
    /// `(offset, bytes)` to write, after the captured bytes outside partitions.
    pub writes: Vec<(u64, Vec<u8>)>,
}

/// Computes the GPT writes for a target of `target_size` bytes from the primary GPT already
/// written to it (read back through `target`).
pub fn relocate_gpt(target: &dyn ReadAt, ss: u32, target_size: u64) -> Result<GptRelocation> {
    let ssz = u64::from(ss);
    let mut primary = vec![0u8; ss as usize];
    target.read_exact_at(&mut primary, ssz)?;
    let header = parse_gpt_header(target, &primary)?;
    let mut entries = vec![0u8; header.entries_bytes() as usize];
    target.read_exact_at(&mut entries, header.entries_lba * ssz)?;
    let entry_sectors = header.entries_bytes().div_ceil(ssz);
    let last_lba = target_size / ssz - 1;
    let backup_entries_lba = last_lba - entry_sectors;
    let last_usable = backup_entries_lba - 1;

    let set = |h: &mut Vec<u8>, off: usize, v: u64| {
        if let Some(d) = h.get_mut(off..off + 8) {
            d.copy_from_slice(&v.to_le_bytes());
        }
    };
    let seal = |h: &mut Vec<u8>| {
        let n = header.header_size as usize;
        if let Some(c) = h.get_mut(16..20) {
            c.fill(0);
        }
        let crc = crc32fast::hash(h.get(..n).unwrap_or_default());
        if let Some(c) = h.get_mut(16..20) {
            c.copy_from_slice(&crc.to_le_bytes());
        }
    };
    set(&mut primary, 32, last_lba);
    set(&mut primary, 48, last_usable);
    seal(&mut primary);

    let mut backup = primary.clone();
    set(&mut backup, 24, last_lba);
    set(&mut backup, 32, 1);
    set(&mut backup, 72, backup_entries_lba);
    seal(&mut backup);

    let mut mbr = [0u8; 512];
    target.read_exact_at(&mut mbr, 0)?;
    let mut writes = vec![
        (ssz, primary),
        (backup_entries_lba * ssz, entries),
        (last_lba * ssz, backup),
    ];
    // Protective MBR: the 0xEE entry covers the disk, capped at 32 bits.
    if let Some(i) = (0..4).find(|i| mbr.get(446 + i * 16 + 4) == Some(&0xEE)) {
        let size = u32::try_from(last_lba).unwrap_or(u32::MAX);
        let off = 446 + i * 16 + 12;
        writes.push((off as u64, size.to_le_bytes().to_vec()));
    }
    Ok(GptRelocation { writes })
}
