//! Partition tables: MBR (primary, extended and logical) and GPT (protective MBR, both headers).
//!
//! Capture keeps every non-zero byte outside the data partitions (MBR boot code, the gap before
//! the first partition, EBRs, both GPT copies), so boot loaders survive. Deploy to a larger disk
//! moves the backup GPT to the new end and fixes the headers; see [`GptRelocation`].

use serde::{Deserialize, Serialize};

use super::cursor::{self, ByteCursor, FieldError, FieldResult, Span};
use super::disk::ReadAt;
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
    /// True when the MBR has an extended partition (the container of logical ones, perhaps
    /// empty): a resizing deploy keeps such a table as it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extended: bool,
}

const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
const MAX_LOGICAL: u32 = 128;
/// Extended boot records followed before a chain is taken for a loop (empty EBRs count too).
const MAX_EBRS: u32 = 4 * MAX_LOGICAL;
/// The largest GPT entry array read (the usual one is 128 entries of 128 bytes: 16 KiB).
pub const MAX_GPT_ENTRIES_BYTES: u64 = 4 << 20;
/// The most GPT entries read.
const MAX_GPT_ENTRIES: u32 = 16384;

fn is_extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0F | 0x85)
}

/// Reads the partition table of `disk`. `sector_size` is the device's logical sector size; for
/// image files pass `None` and it is detected (a GPT at 4096 bytes means 4096-byte sectors).
///
/// The table is untrusted input: every LBA, count and size in it is checked against the disk
/// before it is used or anything is allocated for it, and a table that does not add up is
/// [`Error::BadDisk`].
pub fn read_layout(disk: &dyn ReadAt, sector_size: Option<u32>) -> Result<Layout> {
    if let Some(ss) = sector_size
        && !valid_sector_size(ss)
    {
        return Err(bad(
            disk,
            format!("sector size {ss} is not a power of two from 512 to 65536"),
        ));
    }
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
        read_at(disk, &mut mbr, 0, "MBR")?;
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
        extended: false,
    })
}

fn bad(disk: &dyn ReadAt, reason: String) -> Error {
    Error::BadDisk {
        path: disk.name().into(),
        reason,
    }
}

fn bad_field(disk: &dyn ReadAt) -> impl Fn(FieldError) -> Error + '_ {
    move |e| bad(disk, e.to_string())
}

/// Reads `buf.len()` bytes at `offset`, after checking they are on the disk: a table pointing
/// past the end is [`Error::BadDisk`] naming `what`, whatever the reader's own error would be.
fn read_at(disk: &dyn ReadAt, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
    Span::new(what, offset, buf.len() as u64, disk.size()).map_err(bad_field(disk))?;
    disk.read_exact_at(buf, offset)
}

fn has_gpt_header(disk: &dyn ReadAt, ss: u32) -> Result<bool> {
    let mut sig = [0u8; 8];
    read_at(disk, &mut sig, u64::from(ss), "GPT signature")?;
    Ok(&sig == GPT_SIGNATURE)
}

/// One of the four entries of an MBR or EBR partition table.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    status: u8,
    kind: u8,
    start: u32,
    len: u32,
}

impl MbrEntry {
    /// Entry `i` (0..4) of the table in `sector`.
    fn read(sector: &[u8; 512], i: usize) -> FieldResult<MbrEntry> {
        let field = |name: &str| format!("partition table entry {} {name}", i + 1);
        let mut c = ByteCursor::at(sector, 446 + i * 16);
        let status = c.u8(&field("status"))?;
        c.skip(&field("first CHS"), 3)?;
        let kind = c.u8(&field("type"))?;
        c.skip(&field("last CHS"), 3)?;
        Ok(MbrEntry {
            status,
            kind,
            start: c.u32(&field("first LBA"))?,
            len: c.u32(&field("sector count"))?,
        })
    }

    fn is_used(&self) -> bool {
        self.kind != 0 && self.len != 0
    }
}

/// A partition table entry is "in use" if it has a type and a size; a FAT/NTFS boot sector also
/// ends in 55AA but its "entries" are boot code, which rarely passes these checks.
fn mbr_has_partitions(mbr: &[u8; 512]) -> bool {
    let entries: Vec<MbrEntry> = (0..4).filter_map(|i| MbrEntry::read(mbr, i).ok()).collect();
    entries.len() == 4
        && entries.iter().any(|e| matches!(e.status, 0 | 0x80) && e.is_used())
        && entries.iter().all(|e| matches!(e.status, 0 | 0x80))
}

/// A partition of `len` sectors at sector `start`, in bytes, checked to be on the disk.
fn sectors_to_bytes(disk: &dyn ReadAt, field: &str, start: u64, len: u64, ssz: u64) -> Result<(u64, u64)> {
    let offset = cursor::mul(&format!("{field} first LBA"), start, ssz).map_err(bad_field(disk))?;
    let bytes = cursor::mul(&format!("{field} sector count"), len, ssz).map_err(bad_field(disk))?;
    let span = Span::new(field, offset, bytes, disk.size()).map_err(bad_field(disk))?;
    Ok((span.offset, span.len))
}

fn read_mbr(disk: &dyn ReadAt, mbr: &[u8; 512], ss: u32) -> Result<Layout> {
    let ssz = u64::from(ss);
    let mut partitions = Vec::new();
    let mut extended = None;
    for i in 0..4u32 {
        let e = MbrEntry::read(mbr, i as usize).map_err(bad_field(disk))?;
        if !e.is_used() {
            continue;
        }
        let (start, len) = (u64::from(e.start), u64::from(e.len));
        if is_extended(e.kind) {
            extended = Some((start, len));
        } else {
            let (offset, len) = sectors_to_bytes(disk, &format!("partition {}", i + 1), start, len, ssz)?;
            partitions.push(Partition {
                number: i + 1,
                offset,
                len,
                type_id: format!("0x{:02x}", e.kind),
                name: String::new(),
            });
        }
    }
    if let Some((ext_start, ext_len)) = extended {
        // Each EBR holds a logical partition (relative to this EBR) and a link to the next EBR
        // (relative to the extended partition's start). A chain is followed for at most
        // MAX_EBRS records and never to one already seen, so a loop (even of empty EBRs) ends.
        let mut ebr_lba = ext_start;
        let mut number = 5;
        let mut seen = std::collections::HashSet::new();
        loop {
            if number > 4 + MAX_LOGICAL || seen.len() as u32 >= MAX_EBRS {
                return Err(bad(
                    disk,
                    format!("more than {MAX_LOGICAL} logical partitions (EBR loop?)"),
                ));
            }
            if !seen.insert(ebr_lba) {
                return Err(bad(
                    disk,
                    format!("the EBR chain comes back to sector {ebr_lba} (a loop)"),
                ));
            }
            let mut ebr = [0u8; 512];
            let at = cursor::mul("EBR LBA", ebr_lba, ssz).map_err(bad_field(disk))?;
            read_at(disk, &mut ebr, at, &format!("extended boot record at sector {ebr_lba}"))?;
            if ebr.get(510..512) != Some(&MBR_SIGNATURE[..]) {
                return Err(bad(
                    disk,
                    format!("extended boot record at sector {ebr_lba} has no 55AA signature"),
                ));
            }
            let logical = MbrEntry::read(&ebr, 0).map_err(bad_field(disk))?;
            let link = MbrEntry::read(&ebr, 1).map_err(bad_field(disk))?;
            if logical.is_used() {
                let field = format!("logical partition {number}");
                let start = cursor::add(&format!("{field} first LBA"), ebr_lba, u64::from(logical.start))
                    .map_err(bad_field(disk))?;
                let (offset, len) = sectors_to_bytes(disk, &field, start, u64::from(logical.len), ssz)?;
                partitions.push(Partition {
                    number,
                    offset,
                    len,
                    type_id: format!("0x{:02x}", logical.kind),
                    name: String::new(),
                });
                number += 1;
            }
            let next = u64::from(link.start);
            if link.kind == 0 || next == 0 {
                break;
            }
            if next >= ext_len {
                return Err(bad(
                    disk,
                    format!("EBR link at sector {ebr_lba} points outside the extended partition"),
                ));
            }
            ebr_lba = cursor::add("EBR link", ext_start, next).map_err(bad_field(disk))?;
        }
    }
    let mut layout = finish(disk, TableKind::Mbr, ss, partitions, 0)?;
    layout.extended = extended.is_some();
    Ok(layout)
}

/// A GPT header (UEFI 2.10 section 5.3.2), as read or to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptHeader {
    /// Bytes of the header the CRC covers (92).
    pub header_size: u32,
    /// The sector this header is in.
    pub my_lba: u64,
    /// The sector of the other header.
    pub alternate_lba: u64,
    /// First sector partitions may use.
    pub first_usable_lba: u64,
    /// Last sector partitions may use.
    pub last_usable_lba: u64,
    /// Disk GUID, as stored (mixed-endian).
    pub disk_guid: [u8; 16],
    /// First sector of this copy's entry array.
    pub entries_lba: u64,
    /// Number of entries.
    pub entry_count: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    /// CRC32 of the entry array.
    pub entries_crc: u32,
}

impl GptHeader {
    /// Bytes of the entry array (at most [`MAX_GPT_ENTRIES_BYTES`] for a header that was read).
    pub fn entries_bytes(&self) -> u64 {
        u64::from(self.entry_count) * u64::from(self.entry_size)
    }

    /// Parses and checks a header sector: signature, size, CRC, and an entry array of sane size.
    pub fn parse(raw: &[u8]) -> FieldResult<GptHeader> {
        let mut c = ByteCursor::new(raw);
        if &c.array::<8>("GPT header signature")? != GPT_SIGNATURE {
            return Err(FieldError::new("GPT header signature", "is not \"EFI PART\""));
        }
        c.skip("GPT header revision", 4)?;
        let header_size = c.u32("GPT header size")?;
        if !(92..=raw.len() as u64).contains(&u64::from(header_size)) {
            return Err(FieldError::new("GPT header size", format!("{header_size} is invalid")));
        }
        let stored_crc = c.u32("GPT header CRC")?;
        c.skip("GPT header reserved", 4)?;
        let h = GptHeader {
            header_size,
            my_lba: c.u64("GPT header LBA")?,
            alternate_lba: c.u64("GPT alternate header LBA")?,
            first_usable_lba: c.u64("GPT first usable LBA")?,
            last_usable_lba: c.u64("GPT last usable LBA")?,
            disk_guid: c.array("GPT disk GUID")?,
            entries_lba: c.u64("GPT partition entries LBA")?,
            entry_count: c.u32("GPT partition entry count")?,
            entry_size: c.u32("GPT partition entry size")?,
            entries_crc: c.u32("GPT partition entries CRC")?,
        };
        let mut check = raw.get(..header_size as usize).unwrap_or_default().to_vec();
        if let Some(crc) = check.get_mut(16..20) {
            crc.fill(0);
        }
        if crc32fast::hash(&check) != stored_crc {
            return Err(FieldError::new("GPT header CRC", "checksum mismatch"));
        }
        if h.entry_size < 128
            || h.entry_size > 4096
            || !h.entry_size.is_multiple_of(8)
            || h.entry_count > MAX_GPT_ENTRIES
            || h.entries_bytes() > MAX_GPT_ENTRIES_BYTES
        {
            return Err(FieldError::new(
                "GPT partition entries",
                format!(
                    "{} entries of {} bytes (fog reads at most {MAX_GPT_ENTRIES} entries of 128 to 4096 \
                     bytes, {MAX_GPT_ENTRIES_BYTES} bytes in all)",
                    h.entry_count, h.entry_size
                ),
            ));
        }
        Ok(h)
    }
}

impl GptHeader {
    /// Writes the fields into the header sector `raw` (keeping its signature, revision and any
    /// bytes after the fields) and sets its CRC.
    pub fn write_into(&self, raw: &mut [u8]) -> FieldResult<()> {
        let n = self.header_size as usize;
        if n < 92 {
            return Err(FieldError::new("GPT header size", format!("{n} is invalid")));
        }
        let h = raw
            .get_mut(..n)
            .ok_or_else(|| FieldError::new("GPT header size", format!("{n} is more than the sector")))?;
        h[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        h[16..20].fill(0);
        h[24..32].copy_from_slice(&self.my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable_lba.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable_lba.to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid);
        h[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
        h[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        h[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = crc32fast::hash(h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// A new header sector of `sector_size` bytes (UEFI revision 1.0, 92-byte header).
    fn new_sector(&self, sector_size: u32) -> FieldResult<Vec<u8>> {
        let mut raw = vec![0u8; sector_size as usize];
        if let Some(start) = raw.get_mut(..12) {
            start[..8].copy_from_slice(GPT_SIGNATURE);
            start[8..].copy_from_slice(&GPT_REVISION.to_le_bytes());
        }
        self.write_into(&mut raw)?;
        Ok(raw)
    }
}

/// Reads and checks the GPT header at LBA 1 and its entry array.
fn read_gpt_tables(disk: &dyn ReadAt, ss: u32) -> Result<(Vec<u8>, GptHeader, Vec<u8>)> {
    let ssz = u64::from(ss);
    let mut raw = vec![0u8; ss as usize];
    read_at(disk, &mut raw, ssz, "GPT header")?;
    let header = GptHeader::parse(&raw).map_err(bad_field(disk))?;
    if header.entries_lba < 2 {
        return Err(bad(
            disk,
            format!(
                "GPT partition entries LBA: {} overlaps the MBR or the header",
                header.entries_lba
            ),
        ));
    }
    let at = cursor::mul("GPT partition entries LBA", header.entries_lba, ssz).map_err(bad_field(disk))?;
    let span = Span::new("GPT partition entries", at, header.entries_bytes(), disk.size()).map_err(bad_field(disk))?;
    let mut entries = span.buffer("GPT partition entries").map_err(bad_field(disk))?;
    read_at(disk, &mut entries, span.offset, "GPT partition entries")?;
    Ok((raw, header, entries))
}

fn read_gpt(disk: &dyn ReadAt, ss: u32) -> Result<Layout> {
    let ssz = u64::from(ss);
    let (_, header, entries) = read_gpt_tables(disk, ss)?;
    if crc32fast::hash(&entries) != header.entries_crc {
        return Err(bad(disk, "GPT partition entries checksum mismatch".into()));
    }
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(header.entry_size as usize).enumerate() {
        let number = i as u32 + 1;
        let entry = GptEntry::parse(e).map_err(|err| bad(disk, format!("GPT entry {number}: {err}")))?;
        if entry.type_guid.iter().all(|&b| b == 0) {
            continue;
        }
        if entry.last_lba < entry.first_lba {
            return Err(bad(disk, format!("GPT entry {number} ends before it starts")));
        }
        let field = format!("GPT entry {number}");
        let sectors = cursor::add(&format!("{field} sector count"), entry.last_lba - entry.first_lba, 1)
            .map_err(bad_field(disk))?;
        let (offset, len) = sectors_to_bytes(disk, &field, entry.first_lba, sectors, ssz)?;
        partitions.push(Partition {
            number,
            offset,
            len,
            type_id: guid_string(&entry.type_guid),
            name: entry.name(),
        });
    }
    let backup_gpt_len = ssz + header.entries_bytes().div_ceil(ssz) * ssz;
    // The backup tables (at the disk's end) and the MBR and primary header must all fit: capture
    // keeps the bytes before the backup, deploy rebuilds the backup.
    if backup_gpt_len.saturating_add(2 * ssz) > disk.size() {
        return Err(bad(
            disk,
            format!(
                "a GPT with {} bytes of entries does not fit on a disk of {} bytes",
                header.entries_bytes(),
                disk.size()
            ),
        ));
    }
    finish(disk, TableKind::Gpt, ss, partitions, backup_gpt_len)
}

/// One GPT partition entry (the first 128 bytes; larger entries have reserved space after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GptEntry {
    type_guid: [u8; 16],
    unique_guid: [u8; 16],
    first_lba: u64,
    last_lba: u64,
    attributes: u64,
    name: [u8; 72],
}

impl GptEntry {
    fn parse(raw: &[u8]) -> FieldResult<GptEntry> {
        let mut c = ByteCursor::new(raw);
        Ok(GptEntry {
            type_guid: c.array("type GUID")?,
            unique_guid: c.array("unique GUID")?,
            first_lba: c.u64("first LBA")?,
            last_lba: c.u64("last LBA")?,
            attributes: c.u64("attributes")?,
            name: c.array("name")?,
        })
    }

    /// The name, UTF-16LE up to the first NUL.
    fn name(&self) -> String {
        let units: Vec<u16> = self
            .name
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }
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
        let span = Span::new(&format!("partition {}", p.number), p.offset, p.len, disk_size).map_err(|_| {
            bad(
                disk,
                format!(
                    "partition {} ends at byte {} beyond the disk's {} bytes",
                    p.number,
                    p.offset.saturating_add(p.len),
                    disk_size
                ),
            )
        })?;
        if p.offset < prev_end {
            return Err(bad(disk, format!("partition {} overlaps the one before it", p.number)));
        }
        prev_end = span.end();
    }
    Ok(Layout {
        table,
        sector_size: ss,
        disk_size,
        partitions,
        backup_gpt_len,
        extended: false,
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

/// Entries in a GPT that fog writes (the usual 128 of 128 bytes: 16 KiB).
pub const GPT_ENTRY_COUNT: u32 = 128;
const GPT_ENTRY_SIZE: u32 = 128;
/// Bytes of the entry array of a GPT that fog writes.
pub const GPT_ENTRIES_LEN: u64 = GPT_ENTRY_COUNT as u64 * GPT_ENTRY_SIZE as u64;
const GPT_REVISION: u32 = 0x0001_0000;

/// One partition for [`gpt_writes`].
#[derive(Debug, Clone, Copy)]
pub struct GptPartition<'a> {
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Type GUID in text form, e.g. `C12A7328-F81F-11D2-BA4B-00A0C93EC93B` (EFI system).
    pub type_guid: &'a str,
    /// Unique GUID in text form.
    pub unique_guid: &'a str,
    /// Name, at most 36 UTF-16 code units.
    pub name: &'a str,
}

/// The writes (`(offset, bytes)`) that put a new GPT on a disk of `disk_size` bytes: a
/// protective MBR, the primary header and its 128 entries after it, and the backup entries and
/// header in the last sectors, with every CRC set. Partition `i` of `partitions` becomes entry
/// `i + 1`. The disk's other bytes are not touched.
pub fn gpt_writes(
    disk_size: u64,
    sector_size: u32,
    disk_guid: &str,
    partitions: &[GptPartition<'_>],
) -> Result<Vec<(u64, Vec<u8>)>> {
    if !valid_sector_size(sector_size) {
        return Err(Error::InvalidInput(format!(
            "GPT sector size {sector_size} is not a power of two from 512 to 65536"
        )));
    }
    let ss = u64::from(sector_size);
    let entries_bytes = GPT_ENTRIES_LEN;
    let entry_sectors = entries_bytes.div_ceil(ss);
    let sectors = disk_size / ss;
    if sectors < 2 * entry_sectors + 4 {
        return Err(Error::InvalidInput(format!(
            "a GPT does not fit on a disk of {disk_size} bytes"
        )));
    }
    let last_lba = sectors - 1;
    let first_usable = 2 + entry_sectors;
    let backup_entries_lba = last_lba - entry_sectors;
    let last_usable = backup_entries_lba - 1;
    if partitions.len() > GPT_ENTRY_COUNT as usize {
        return Err(Error::InvalidInput(format!(
            "{} partitions do not fit in a GPT",
            partitions.len()
        )));
    }

    let mut entries = vec![0u8; entries_bytes as usize];
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (i, (p, e)) in partitions
        .iter()
        .zip(entries.chunks_exact_mut(GPT_ENTRY_SIZE as usize))
        .enumerate()
    {
        if p.first_lba < first_usable || p.last_lba > last_usable || p.last_lba < p.first_lba {
            return Err(Error::InvalidInput(format!(
                "GPT partition {} (sectors {}..={}) is outside the usable sectors \
                 {first_usable}..={last_usable}",
                i + 1,
                p.first_lba,
                p.last_lba
            )));
        }
        if spans.iter().any(|&(a, b)| p.first_lba <= b && a <= p.last_lba) {
            return Err(Error::InvalidInput(format!("GPT partition {} overlaps another", i + 1)));
        }
        spans.push((p.first_lba, p.last_lba));
        let name: Vec<u16> = p.name.encode_utf16().collect();
        if name.len() > 36 {
            return Err(Error::InvalidInput(format!(
                "GPT partition name {:?} is longer than 36 characters",
                p.name
            )));
        }
        e[0..16].copy_from_slice(&guid_bytes(p.type_guid)?);
        e[16..32].copy_from_slice(&guid_bytes(p.unique_guid)?);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        for (dst, c) in e[56..128].chunks_exact_mut(2).zip(&name) {
            dst.copy_from_slice(&c.to_le_bytes());
        }
    }
    let primary = GptHeader {
        header_size: 92,
        my_lba: 1,
        alternate_lba: last_lba,
        first_usable_lba: first_usable,
        last_usable_lba: last_usable,
        disk_guid: guid_bytes(disk_guid)?,
        entries_lba: 2,
        entry_count: GPT_ENTRY_COUNT,
        entry_size: GPT_ENTRY_SIZE,
        entries_crc: crc32fast::hash(&entries),
    };
    let backup = GptHeader {
        my_lba: last_lba,
        alternate_lba: 1,
        entries_lba: backup_entries_lba,
        ..primary
    };
    let sector = |h: &GptHeader| {
        h.new_sector(sector_size)
            .map_err(|e| Error::InvalidInput(e.to_string()))
    };

    // Protective MBR: one 0xEE partition from sector 1 over the whole disk (capped at 32 bits).
    let mut mbr = vec![0u8; sector_size as usize];
    let e = 446;
    mbr[e + 1..e + 4].copy_from_slice(&[0x00, 0x02, 0x00]);
    mbr[e + 4] = 0xEE;
    mbr[e + 5..e + 8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    mbr[e + 8..e + 12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(last_lba).unwrap_or(u32::MAX);
    mbr[e + 12..e + 16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    Ok(vec![
        (0, mbr),
        (ss, sector(&primary)?),
        (2 * ss, entries.clone()),
        (backup_entries_lba * ss, entries),
        (last_lba * ss, sector(&backup)?),
    ])
}

/// The 16 on-disk bytes of a GUID in text form: the first three groups little-endian.
pub fn guid_bytes(text: &str) -> Result<[u8; 16]> {
    let bad = || Error::InvalidInput(format!("{text:?} is not a GUID"));
    let groups: Vec<&str> = text.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return Err(bad());
    }
    let raw = hex::decode(groups.concat()).map_err(|_| bad())?;
    let mut out: [u8; 16] = raw.try_into().map_err(|_| bad())?;
    out[0..4].reverse();
    out[4..6].reverse();
    out[6..8].reverse();
    Ok(out)
}

/// The writes that put a GPT right on a target of another size: the primary header's alternate
/// LBA and last usable LBA, the protective MBR's size, and the backup entries and header at the
/// target's last sectors.
#[derive(Debug)]
pub struct GptRelocation {
    /// `(offset, bytes)` to write, after the captured bytes outside partitions.
    pub writes: Vec<(u64, Vec<u8>)>,
}

/// A partition put at another place by a resizing deploy: its number, first byte and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Partition number (the GPT entry index + 1, or the MBR primary slot 1..=4).
    pub number: u32,
    /// First byte on the target.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Moved {
    /// First and last sector (inclusive), checked to be whole sectors.
    fn sectors(&self, ssz: u64) -> Result<(u64, u64)> {
        if !self.offset.is_multiple_of(ssz) || !self.len.is_multiple_of(ssz) || self.len == 0 {
            return Err(Error::InvalidInput(format!(
                "partition {} at byte {} of {} bytes is not whole {ssz}-byte sectors",
                self.number, self.offset, self.len
            )));
        }
        Ok((self.offset / ssz, (self.offset + self.len) / ssz - 1))
    }

    /// Checks that a `table` entry can say this (whole sectors; MBR: a primary slot and 32-bit
    /// sectors), so deploy can refuse before it writes rather than after.
    pub fn check(&self, table: TableKind, ssz: u64) -> Result<()> {
        let (first, last) = self.sectors(ssz)?;
        let fits = match table {
            TableKind::Mbr => (1..=4).contains(&self.number) && last < u64::from(u32::MAX),
            TableKind::Gpt => self.number >= 1,
            TableKind::None => false,
        };
        if fits {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "partition {} at sectors {first}..={last} cannot be written in a {table:?} table",
                self.number
            )))
        }
    }
}

/// Computes the GPT writes for a target of `target_size` bytes from the primary GPT already
/// written to it (read back through `target`), with the entries of `moved` partitions pointing
/// at their new places (and the entry array's checksum, in both headers, to match).
pub fn relocate_gpt(target: &dyn ReadAt, ss: u32, target_size: u64, moved: &[Moved]) -> Result<GptRelocation> {
    if !valid_sector_size(ss) {
        return Err(bad(
            target,
            format!("sector size {ss} is not a power of two from 512 to 65536"),
        ));
    }
    let ssz = u64::from(ss);
    let (mut primary_sector, mut header, mut entries) = read_gpt_tables(target, ss)?;
    for m in moved {
        let (first, last) = m.sectors(ssz)?;
        let at = (m.number as usize)
            .checked_sub(1)
            .map(|i| i * header.entry_size as usize)
            .filter(|at| at + 48 <= entries.len())
            .ok_or_else(|| bad(target, format!("the GPT has no entry {}", m.number)))?;
        entries[at + 32..at + 40].copy_from_slice(&first.to_le_bytes());
        entries[at + 40..at + 48].copy_from_slice(&last.to_le_bytes());
    }
    if !moved.is_empty() {
        header.entries_crc = crc32fast::hash(&entries);
    }
    let entry_sectors = header.entries_bytes().div_ceil(ssz);
    let too_small = || {
        bad(
            target,
            format!("a target of {target_size} bytes is too small for its GPT"),
        )
    };
    let last_lba = (target_size / ssz).checked_sub(1).ok_or_else(too_small)?;
    let backup_entries_lba = last_lba.checked_sub(entry_sectors).ok_or_else(too_small)?;
    let last_usable = backup_entries_lba.checked_sub(1).ok_or_else(too_small)?;
    if last_usable < header.entries_lba.saturating_add(entry_sectors) {
        return Err(too_small());
    }

    // Both headers keep what the captured one has beyond the fields fog sets.
    let primary = GptHeader {
        alternate_lba: last_lba,
        last_usable_lba: last_usable,
        ..header
    };
    let backup = GptHeader {
        my_lba: last_lba,
        alternate_lba: 1,
        entries_lba: backup_entries_lba,
        ..primary
    };
    let mut backup_sector = primary_sector.clone();
    primary.write_into(&mut primary_sector).map_err(bad_field(target))?;
    backup.write_into(&mut backup_sector).map_err(bad_field(target))?;

    let mut mbr = [0u8; 512];
    read_at(target, &mut mbr, 0, "protective MBR")?;
    let mut writes = vec![(ssz, primary_sector)];
    if !moved.is_empty() {
        writes.push((header.entries_lba * ssz, entries.clone()));
    }
    writes.push((backup_entries_lba * ssz, entries));
    writes.push((last_lba * ssz, backup_sector));
    // Protective MBR: the 0xEE entry covers the disk, capped at 32 bits.
    if let Some(i) = (0..4).find(|i| mbr.get(446 + i * 16 + 4) == Some(&0xEE)) {
        let size = u32::try_from(last_lba).unwrap_or(u32::MAX);
        let off = 446 + i * 16 + 12;
        writes.push((off as u64, size.to_le_bytes().to_vec()));
    }
    Ok(GptRelocation { writes })
}

/// The writes that point the primary MBR entries of `moved` partitions at their new places
/// (read back through `target`, where the captured MBR was written). Logical partitions live in
/// EBR chains and are not moved.
pub fn refit_mbr(target: &dyn ReadAt, ss: u32, moved: &[Moved]) -> Result<Vec<(u64, Vec<u8>)>> {
    let ssz = u64::from(ss);
    let mut mbr = [0u8; 512];
    read_at(target, &mut mbr, 0, "MBR")?;
    for m in moved {
        let (first, last) = m.sectors(ssz)?;
        if !(1..=4).contains(&m.number) {
            return Err(bad(
                target,
                format!("partition {} is not a primary MBR partition", m.number),
            ));
        }
        let too_far = || {
            bad(
                target,
                format!(
                    "partition {} at sector {first} does not fit an MBR's 32-bit sectors",
                    m.number
                ),
            )
        };
        let start = u32::try_from(first).map_err(|_| too_far())?;
        let count = u32::try_from(last - first + 1).map_err(|_| too_far())?;
        let e = 446 + (m.number as usize - 1) * 16;
        // CHS fields say "use the LBA" (as every tool since the 1990s writes them).
        mbr[e + 1..e + 4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        mbr[e + 5..e + 8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        mbr[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        mbr[e + 12..e + 16].copy_from_slice(&count.to_le_bytes());
    }
    Ok(vec![(0, mbr.to_vec())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    const MIB: u64 = 1 << 20;
    const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    const EFI: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

    fn put32(d: &mut [u8], at: usize, v: u32) {
        d[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put64(d: &mut [u8], at: usize, v: u64) {
        d[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Writes MBR entry `i` of the table in the sector at `sector`.
    fn mbr_entry(d: &mut [u8], sector: u64, i: usize, kind: u8, start: u32, len: u32) {
        let e = sector as usize * 512 + 446 + i * 16;
        d[e] = 0;
        d[e + 4] = kind;
        put32(d, e + 8, start);
        put32(d, e + 12, len);
        d[sector as usize * 512 + 510] = 0x55;
        d[sector as usize * 512 + 511] = 0xAA;
    }

    /// An 8 MiB MBR disk: primary 1 (0x83) at 1 MiB, extended 2 from 3 MiB holding logical 5
    /// (0x83) and 6 (0x82), each after its EBR.
    fn mbr_disk() -> Vec<u8> {
        let mut d = vec![0u8; 8 * MIB as usize];
        mbr_entry(&mut d, 0, 0, 0x83, 2048, 2048);
        mbr_entry(&mut d, 0, 1, 0x05, 6144, 8192);
        // EBR 1 at 6144: logical 5 at +2048, link to EBR 2 at extended + 4096.
        mbr_entry(&mut d, 6144, 0, 0x83, 2048, 1024);
        mbr_entry(&mut d, 6144, 1, 0x05, 4096, 4096);
        // EBR 2 at 10240: logical 6 at +2048, no link.
        mbr_entry(&mut d, 10240, 0, 0x82, 2048, 1024);
        d
    }

    /// A 4 MiB GPT disk (or 16 MiB with 4096-byte sectors): partition 1 EFI at 1 MiB (1 MiB), 2
    /// Linux "root" after it (1 MiB).
    fn gpt_disk(ss: u32) -> Vec<u8> {
        let size = if ss == 512 { 4 * MIB } else { 16 * MIB };
        let mut d = vec![0u8; size as usize];
        let per_mib = MIB / u64::from(ss);
        let parts = [
            GptPartition {
                first_lba: per_mib,
                last_lba: 2 * per_mib - 1,
                type_guid: EFI,
                unique_guid: "11111111-2222-4333-8444-555555555555",
                name: "EFI system",
            },
            GptPartition {
                first_lba: 2 * per_mib,
                last_lba: 3 * per_mib - 1,
                type_guid: LINUX,
                unique_guid: "11111111-2222-4333-8444-666666666666",
                name: "root",
            },
        ];
        let writes = gpt_writes(size, ss, "01234567-89AB-4CDE-8F01-23456789ABCD", &parts).expect("gpt writes");
        apply(&mut d, &writes);
        d
    }

    fn apply(d: &mut [u8], writes: &[(u64, Vec<u8>)]) {
        for (at, bytes) in writes {
            d[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
        }
    }

    /// Recomputes the CRC of the primary GPT header after a test changed it.
    fn reseal(d: &mut [u8], ss: usize) {
        let h = &mut d[ss..ss + 92];
        h[16..20].fill(0);
        let crc = crc32fast::hash(h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    fn bad_disk(r: Result<Layout>) -> String {
        match r {
            Err(Error::BadDisk { reason, .. }) => reason,
            other => panic!("expected BadDisk, got {other:?}"),
        }
    }

    fn spans(l: &Layout) -> Vec<(u32, u64, u64, &str)> {
        l.partitions
            .iter()
            .map(|p| (p.number, p.offset, p.len, p.type_id.as_str()))
            .collect()
    }

    #[test]
    fn mbr_with_logical_partitions_reads_back() {
        let l = read_layout(&mbr_disk(), None).expect("layout");
        assert_eq!(l.table, TableKind::Mbr);
        assert_eq!(
            spans(&l),
            [
                (1, MIB, MIB, "0x83"),
                (5, 4 * MIB, MIB / 2, "0x83"),
                (6, 6 * MIB, MIB / 2, "0x82")
            ]
        );
        l.check().expect("a layout read from a disk checks");
    }

    #[test]
    fn gpt_reads_back_with_either_sector_size() {
        for ss in [512u32, 4096] {
            let d = gpt_disk(ss);
            let l = read_layout(&d, None).expect("layout");
            assert_eq!((l.table, l.sector_size), (TableKind::Gpt, ss));
            assert_eq!(spans(&l), [(1, MIB, MIB, EFI), (2, 2 * MIB, MIB, LINUX)]);
            assert_eq!(l.partitions[0].name, "EFI system");
            let ssz = u64::from(ss);
            assert_eq!(l.backup_gpt_len, ssz + (16384u64).div_ceil(ssz) * ssz);
            l.check().expect("checks");
        }
    }

    #[test]
    fn ebr_loop_of_empty_records_is_refused() {
        // Regression: the loop bound counted logical partitions only, so a chain of empty EBRs
        // that links back to itself never ended.
        let mut d = mbr_disk();
        mbr_entry(&mut d, 6144, 0, 0, 0, 0);
        mbr_entry(&mut d, 6144, 1, 0x05, 4096, 4096);
        mbr_entry(&mut d, 10240, 0, 0, 0, 0);
        mbr_entry(&mut d, 10240, 1, 0x05, 4096, 4096);
        let r = bad_disk(read_layout(&d, None));
        assert!(r.contains("loop"), "{r}");
        // A link back to the EBR itself, with a partition in it.
        let mut d = mbr_disk();
        mbr_entry(&mut d, 10240, 1, 0x05, 4096, 4096);
        assert!(bad_disk(read_layout(&d, None)).contains("loop"));
        let mut d = mbr_disk();
        mbr_entry(&mut d, 10240, 1, 0x05, 1, 4096);
        assert!(bad_disk(read_layout(&d, None)).contains("55AA"));
    }

    #[test]
    fn mbr_partitions_past_the_disk_are_refused() {
        let mut d = mbr_disk();
        mbr_entry(&mut d, 0, 0, 0x83, u32::MAX, u32::MAX);
        assert!(bad_disk(read_layout(&d, None)).contains("partition 1"));
        let mut d = mbr_disk();
        mbr_entry(&mut d, 0, 1, 0x05, u32::MAX - 1, 8192);
        assert!(bad_disk(read_layout(&d, None)).contains("extended boot record"));
        let mut d = mbr_disk();
        mbr_entry(&mut d, 6144, 0, 0x83, u32::MAX, 1);
        assert!(bad_disk(read_layout(&d, None)).contains("partition 5"));
        let mut d = mbr_disk();
        mbr_entry(&mut d, 6144, 1, 0x05, 9000, 1);
        assert!(bad_disk(read_layout(&d, None)).contains("outside the extended partition"));
    }

    #[test]
    fn huge_gpt_entry_arrays_are_refused_before_reading() {
        for (count, size) in [
            (16384u32, 4096u32),
            (u32::MAX, 128),
            (128, u32::MAX),
            (128, 100),
            (128, 130),
        ] {
            let mut d = gpt_disk(512);
            put32(&mut d, 512 + 80, count);
            put32(&mut d, 512 + 84, size);
            reseal(&mut d, 512);
            let r = bad_disk(read_layout(&d, None));
            assert!(r.starts_with("GPT partition entries"), "{count} x {size}: {r}");
        }
    }

    #[test]
    fn gpt_lbas_that_overflow_or_miss_the_disk_are_refused() {
        let header_cases: [(usize, u64, &str); 3] = [
            (72, u64::MAX, "GPT partition entries LBA"),
            (72, 1 << 40, "GPT partition entries"),
            (72, 0, "overlaps the MBR"),
        ];
        for (at, v, want) in header_cases {
            let mut d = gpt_disk(512);
            put64(&mut d, 512 + at, v);
            reseal(&mut d, 512);
            let r = bad_disk(read_layout(&d, None));
            assert!(r.contains(want), "{at}={v}: {r}");
        }
        // Entry 2's first and last LBA (the entries' CRC then fails first unless fixed).
        for (first, last, want) in [
            (u64::MAX / 2, u64::MAX / 2 + 1, "GPT entry 2 first LBA"),
            (0, u64::MAX, "GPT entry 2 sector count"),
            (100, 99, "ends before it starts"),
            (8000, 9000, "GPT entry 2"),
        ] {
            let mut d = gpt_disk(512);
            let e = 1024 + 128;
            put64(&mut d, e + 32, first);
            put64(&mut d, e + 40, last);
            let crc = crc32fast::hash(&d[1024..1024 + 16384]);
            put32(&mut d, 512 + 88, crc);
            reseal(&mut d, 512);
            let r = bad_disk(read_layout(&d, None));
            assert!(r.contains(want), "{first}..{last}: {r}");
        }
        // A header with the right CRC but a damaged entry array.
        let mut d = gpt_disk(512);
        d[1024 + 200] ^= 1;
        assert!(bad_disk(read_layout(&d, None)).contains("checksum"));
    }

    #[test]
    fn gpt_whose_backup_cannot_fit_is_refused() {
        // Regression: a GPT whose entries start at LBA 0 on a disk just big enough for them gave
        // a backup length larger than the disk, and capture's "keep up to the backup" underflowed.
        let mut d = vec![0u8; 16384 + 1024];
        let mut header = vec![0u8; 512];
        GptHeader {
            header_size: 92,
            my_lba: 1,
            alternate_lba: 1,
            first_usable_lba: 0,
            last_usable_lba: 0,
            disk_guid: [0; 16],
            entries_lba: 2,
            entry_count: 128,
            entry_size: 128,
            entries_crc: crc32fast::hash(&[0u8; 16384]),
        }
        .write_into(&mut header)
        .expect("header");
        header[..8].copy_from_slice(GPT_SIGNATURE);
        reseal_into(&mut header);
        d[512..1024].copy_from_slice(&header);
        assert!(bad_disk(read_layout(&d, None)).contains("does not fit"));
    }

    fn reseal_into(h: &mut [u8]) {
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn relocated_gpt_reads_back_on_a_larger_target() {
        let small = gpt_disk(512);
        let mut big = small[..2 * MIB as usize].to_vec();
        big.resize(6 * MIB as usize, 0);
        let moved = relocate_gpt(&big, 512, big.len() as u64, &[]).expect("relocate");
        apply(&mut big, &moved.writes);
        let l = read_layout(&big, None).expect("layout");
        assert_eq!(l.disk_size, 6 * MIB);
        assert_eq!(spans(&l), spans(&read_layout(&small, None).expect("layout")));
        // The backup header is a valid header naming the primary.
        let backup = GptHeader::parse(&big[big.len() - 512..]).expect("backup header");
        assert_eq!((backup.my_lba, backup.alternate_lba), (6 * 2048 - 1, 1));
        // Relocating again to the same size changes nothing.
        let again = relocate_gpt(&big, 512, big.len() as u64, &[]).expect("relocate");
        let before = big.clone();
        apply(&mut big, &again.writes);
        assert_eq!(before, big);
        // Too small for its own tables, or a bad sector size, is an error, not an underflow.
        for (ss, size) in [(512, 100), (512, 16 * 1024), (0, 6 * MIB), (513, 6 * MIB)] {
            assert!(
                matches!(relocate_gpt(&big, ss, size, &[]), Err(Error::BadDisk { .. })),
                "{ss} {size}"
            );
        }
    }

    #[test]
    fn bad_sector_sizes_are_refused() {
        for ss in [0u32, 1, 511, 513, 1 << 17] {
            assert!(bad_disk(read_layout(&gpt_disk(512), Some(ss))).contains("sector size"));
        }
        assert!(gpt_writes(4 * MIB, 520, "01234567-89AB-4CDE-8F01-23456789ABCD", &[]).is_err());
    }

    #[test]
    fn layout_check_names_the_bad_field() {
        let good = read_layout(&mbr_disk(), None).expect("layout");
        type Tamper = fn(&mut Layout);
        let cases: [(Tamper, &str); 4] = [
            (|l| l.sector_size = 0, "layout sector_size"),
            (|l| l.partitions[1].offset = u64::MAX, "layout partition 5"),
            (|l| l.partitions[2].offset = MIB, "layout partition 6"),
            (|l| l.backup_gpt_len = u64::MAX, "layout backup_gpt_len"),
        ];
        for (tamper, want) in cases {
            let mut l = good.clone();
            tamper(&mut l);
            let e = l.check().expect_err("refused");
            assert_eq!(e.field, want, "{e}");
        }
        let mut huge = good.clone();
        huge.table = TableKind::Gpt;
        huge.backup_gpt_len = 8 * MIB;
        huge.partitions[2].len = u64::MAX - huge.partitions[2].offset;
        assert_eq!(huge.min_target_size(), u64::MAX, "saturates, never wraps");
        assert_eq!(huge.outside().last().map(|e| e.end()), Some(huge.partitions[2].offset));
    }

    #[test]
    fn not_a_table_is_one_volume() {
        for d in [vec![], vec![0u8; 100], vec![0u8; 4096]] {
            let l = read_layout(&d, None).expect("layout");
            assert_eq!((l.table, l.partitions.len()), (TableKind::None, 1));
        }
    }

    /// Reads `d`'s layout: no panic, and either a layout that fits the disk or `BadDisk`.
    fn read_checked(d: &dyn ReadAt, ss: Option<u32>) -> std::result::Result<(), TestCaseError> {
        match read_layout(d, ss) {
            Ok(l) => {
                prop_assert_eq!(l.check(), Ok(()));
                prop_assert!(l.backup_gpt_len <= l.disk_size);
                prop_assert!(l.min_target_size() <= l.disk_size || l.table == TableKind::Gpt);
                if l.table == TableKind::Gpt {
                    // Relocating onto a copy of itself, or a random size, never panics and
                    // writes only inside the target.
                    for size in [l.disk_size, l.disk_size / 2, l.disk_size * 2] {
                        if let Ok(r) = relocate_gpt(d, l.sector_size, size, &[]) {
                            for (at, bytes) in &r.writes {
                                prop_assert!(at + bytes.len() as u64 <= size);
                            }
                        }
                    }
                }
            }
            Err(Error::BadDisk { .. }) => {}
            Err(other) => prop_assert!(false, "expected BadDisk, got {other:?}"),
        }
        Ok(())
    }

    /// The MBR, EBR and GPT header sectors of the test disks, where damage matters.
    fn hot_mbr(i: usize) -> usize {
        [0, 6144 * 512, 10240 * 512][i % 3] + 446 + (i / 3) % 66
    }

    /// Offsets of the numeric fields of a GPT header (after LBA 1) and of entry 1 and 2.
    const GPT_FIELDS: [(usize, usize); 13] = [
        (512 + 12, 4),
        (512 + 24, 8),
        (512 + 32, 8),
        (512 + 40, 8),
        (512 + 48, 8),
        (512 + 72, 8),
        (512 + 80, 4),
        (512 + 84, 4),
        (1024 + 32, 8),
        (1024 + 40, 8),
        (1024 + 128 + 32, 8),
        (1024 + 128 + 40, 8),
        (1024 + 128 + 16, 8),
    ];

    /// Sets the entries' and the header's CRC of a GPT with 512-byte sectors whose entry array
    /// (as its header now says) lies in `d`.
    fn fix_crcs(d: &mut [u8]) {
        let count = u32::from_le_bytes(d[512 + 80..512 + 84].try_into().expect("4 bytes"));
        let size = u32::from_le_bytes(d[512 + 84..512 + 88].try_into().expect("4 bytes"));
        let lba = u64::from_le_bytes(d[512 + 72..512 + 80].try_into().expect("8 bytes"));
        let len = u64::from(count) * u64::from(size);
        let start = lba.saturating_mul(512);
        if let Some(entries) = usize::try_from(start)
            .ok()
            .and_then(|s| d.get(s..s.saturating_add(len as usize)))
        {
            let crc = crc32fast::hash(entries);
            put32(d, 512 + 88, crc);
        }
        let header_size = u32::from_le_bytes(d[512 + 12..512 + 16].try_into().expect("4 bytes")) as usize;
        if (92..=512).contains(&header_size) {
            d[512 + 16..512 + 20].fill(0);
            let crc = crc32fast::hash(&d[512..512 + header_size]);
            put32(d, 512 + 16, crc);
        }
    }

    fn edgy_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(u64::MAX),
            Just(u64::from(u32::MAX)),
            Just(1 << 63),
            0u64..20_000,
            any::<u64>(),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            read_checked(&bytes, None)?;
            read_checked(&bytes, Some(512))?;
        }

        #[test]
        fn random_mbr_tables_never_panic(
            tables in proptest::collection::vec(any::<u8>(), 64 * 3),
            ext in any::<bool>(),
        ) {
            // Random entries in the MBR and both EBRs, with signatures, so the chain is walked.
            let mut d = mbr_disk();
            for (i, chunk) in tables.chunks_exact(64).enumerate() {
                let at = [0, 6144 * 512, 10240 * 512][i] + 446;
                d[at..at + 64].copy_from_slice(chunk);
                if ext && i > 0 {
                    d[at + 16 + 4] = 0x05;
                }
            }
            if ext {
                d[446 + 16 + 4] = 0x0F;
                d[446..446 + 64].iter_mut().step_by(16).for_each(|s| *s &= 0x80);
            }
            read_checked(&d, None)?;
        }

        #[test]
        fn mutated_mbr_disks_never_panic(
            flips in proptest::collection::vec((0usize..198, any::<u8>()), 1..8),
            cut in proptest::option::of(0usize..12 * 512 * 1024),
        ) {
            let mut d = mbr_disk();
            for (at, v) in flips {
                d[hot_mbr(at)] = v;
            }
            if let Some(cut) = cut {
                d.truncate(cut);
            }
            read_checked(&d, None)?;
        }

        #[test]
        fn mutated_gpt_disks_never_panic(
            fields in proptest::collection::vec((0usize..GPT_FIELDS.len(), edgy_u64()), 1..4),
            flips in proptest::collection::vec((512usize..1024 + 512, any::<u8>()), 0..4),
            cut in proptest::option::of(0usize..4 * 1024 * 1024),
            reseal in any::<bool>(),
        ) {
            let mut d = gpt_disk(512);
            for (i, v) in fields {
                let (at, len) = GPT_FIELDS[i];
                d[at..at + len].copy_from_slice(&v.to_le_bytes()[..len]);
            }
            for (at, v) in flips {
                d[at] = v;
            }
            if reseal {
                fix_crcs(&mut d);
            }
            if let Some(cut) = cut {
                d.truncate(cut);
            }
            read_checked(&d, None)?;
            read_checked(&d, Some(512))?;
        }
    }
}
