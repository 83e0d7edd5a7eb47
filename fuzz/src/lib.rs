//! What the fuzz targets share: their seed inputs, written by each target's `init` into the
//! directory `FOG_FUZZ_SEEDS` names (scripts/fuzz points it at the target's corpus), and the
//! checks an accepted result must pass. A failed check panics, which libFuzzer reports as a
//! crash like any other.

use std::path::{Path, PathBuf};
use std::process::Command;

use fogcore::Error;
use fogcore::imaging::chunk::ChunkId;
use fogcore::imaging::extent::Extent;
use fogcore::imaging::fs::Filesystem;
use fogcore::imaging::manifest::{ChunkRef, FORMAT, Header, ManifestWriter, Region};
use fogcore::imaging::partition::{GptPartition, Layout, Partition, TableKind, gpt_writes};

const KIB: usize = 1024;

/// Writes the seeds of `target` into `$FOG_FUZZ_SEEDS` when it is set; files already there stay.
/// Seeds that need a tool (mkfs) are skipped when it is missing.
pub fn write_seeds(target: &str) {
    let Some(dir) = std::env::var_os("FOG_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for (name, bytes) in seeds(target) {
        let path = dir.join(format!("seed-{name}"));
        if !path.exists() {
            let _ = std::fs::write(&path, bytes);
        }
    }
}

/// The seeds of `target`, by name.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let named = |v: Vec<(&str, Vec<u8>)>| v.into_iter().map(|(n, b)| (n.to_string(), b)).collect();
    match target {
        "manifest" => named(vec![("two-regions", manifest_seed())]),
        "partition" => named(vec![
            ("mbr-logical", mbr_seed()),
            ("gpt-512", gpt_seed(512, 64 * KIB)),
            ("gpt-4096", gpt_seed(4096, 128 * KIB)),
        ]),
        "fs_ext" => mkfs_seeds(&[
            ("ext4-1k", "mkfs.ext4", &["-b", "1024", "-N", "32"], 128 * KIB),
            ("ext2-1k", "mkfs.ext2", &["-b", "1024", "-N", "16"], 64 * KIB),
            (
                "ext4-4k-metabg",
                "mkfs.ext4",
                &["-b", "4096", "-N", "64", "-O", "meta_bg,^resize_inode"],
                512 * KIB,
            ),
        ]),
        "fs_fat" => mkfs_seeds(&[
            ("fat12", "mkfs.vfat", &["-F", "12"], 64 * KIB),
            ("fat12-2k-sectors", "mkfs.vfat", &["-F", "12", "-S", "2048"], 256 * KIB),
        ]),
        "fs_ntfs" => mkfs_seeds(&[("ntfs-512", "mkfs.ntfs", &["-s", "512", "-c", "512"], 1028 * KIB)]),
        "dhcp" => named(dhcp_seeds()),
        "tftp" => named(tftp_seeds()),
        "multicast" => named(multicast_seeds()),
        _ => Vec::new(),
    }
}

/// A scratch file for this fuzzing process (in /dev/shm when there is one).
pub fn scratch_path(what: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("fog-fuzz-{what}-{}", std::process::id()))
}

/// Extents a parser returned for a device of `size` bytes: sorted, apart, non-empty, inside.
pub fn check_extents(extents: &[Extent], size: u64) {
    let mut prev_end = 0u64;
    for e in extents {
        let end = e.offset.checked_add(e.len).expect("extent end overflows");
        assert!(e.len > 0, "empty extent {e:?}");
        assert!(e.offset >= prev_end, "extent {e:?} overlaps or precedes the one before");
        assert!(end <= size, "extent {e:?} ends past the device's {size} bytes");
        prev_end = end;
    }
}

/// A layout read from a disk of `size` bytes holds together: it passes the same check as a
/// manifest's layout, and its sizes do not overflow.
pub fn check_layout(layout: &Layout, size: u64) {
    assert_eq!(layout.disk_size, size);
    if let Err(e) = layout.check() {
        panic!("read_layout returned a layout that fails its check: {e}: {layout:?}");
    }
    let _ = layout.outside();
    let _ = layout.min_target_size();
    assert!(
        layout.backup_gpt_len <= size,
        "backup GPT of {} bytes on a {size}-byte disk",
        layout.backup_gpt_len
    );
}

/// Panics unless `err` is the variant a parser of this input kind must return.
pub fn expect_variant(err: &Error, kind: &str) {
    let ok = match kind {
        "manifest" => matches!(err, Error::BadManifest { .. }),
        "disk" => matches!(err, Error::BadDisk { .. }),
        "filesystem" => matches!(err, Error::BadFilesystem { .. }),
        _ => false,
    };
    assert!(ok, "expected a {kind} error, got {err:?}");
}

fn manifest_seed() -> Vec<u8> {
    let path = scratch_path("seed-manifest");
    let _ = std::fs::remove_file(&path);
    let build = || -> fogcore::Result<Vec<u8>> {
        let mut w = ManifestWriter::create(&path)?;
        let mut regions = Vec::new();
        let plan: [(Option<u32>, u64, u64, &[(u8, u32)], &[Extent]); 2] = [
            (None, 0, 1 << 20, &[(1, 512), (2, 3584)], &[Extent::new(0, 4096)]),
            (
                Some(1),
                4096,
                (1 << 20) - 4096,
                &[(3, 8192), (4, 4096), (3, 8192)],
                &[Extent::new(0, 16384), Extent::new(65536, 4096)],
            ),
        ];
        for (partition, offset, len, chunks, extents) in plan {
            for &(n, len) in chunks {
                w.push_chunk(&ChunkRef {
                    id: ChunkId([n; 32]),
                    len,
                })?;
            }
            let chunks = w.end_chunks();
            let extents_section = w.write_extents(extents)?;
            regions.push(Region {
                partition,
                offset,
                len,
                filesystem: Filesystem::Raw,
                used_bytes: extents.iter().map(|e| e.len).sum(),
                extents: extents_section,
                chunks,
                min_len: None,
                shrunk: false,
            });
        }
        let header = Header {
            format: FORMAT,
            name: "seed".into(),
            created: 0,
            source: "fuzz".into(),
            layout: Layout {
                table: TableKind::Mbr,
                sector_size: 512,
                disk_size: 1 << 20,
                partitions: vec![Partition {
                    number: 1,
                    offset: 4096,
                    len: (1 << 20) - 4096,
                    type_id: "0x83".into(),
                    name: String::new(),
                }],
                backup_gpt_len: 0,
                extended: false,
            },
            chunk_count: regions.iter().map(|r| r.chunks.count).sum(),
            data_bytes: regions.iter().map(|r| r.used_bytes).sum(),
            regions,
        };
        w.finish(&header)?;
        std::fs::read(&path).map_err(|e| Error::io(&path, e))
    };
    let bytes = build().unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    bytes
}

fn put_mbr_entry(d: &mut [u8], sector: usize, i: usize, kind: u8, start: u32, len: u32) {
    let e = sector * 512 + 446 + i * 16;
    if let Some(entry) = d.get_mut(e..e + 16) {
        entry[4] = kind;
        entry[8..12].copy_from_slice(&start.to_le_bytes());
        entry[12..16].copy_from_slice(&len.to_le_bytes());
    }
    if let Some(sig) = d.get_mut(sector * 512 + 510..sector * 512 + 512) {
        sig.copy_from_slice(&[0x55, 0xAA]);
    }
}

/// 64 KiB: primary 1 at sector 4, extended 2 from sector 32 with logical 5 and 6.
fn mbr_seed() -> Vec<u8> {
    let mut d = vec![0u8; 64 * KIB];
    put_mbr_entry(&mut d, 0, 0, 0x83, 4, 24);
    put_mbr_entry(&mut d, 0, 1, 0x05, 32, 96);
    put_mbr_entry(&mut d, 32, 0, 0x83, 2, 30);
    put_mbr_entry(&mut d, 32, 1, 0x05, 40, 56);
    put_mbr_entry(&mut d, 72, 0, 0x82, 2, 40);
    d
}

/// A GPT with two partitions on a disk of `size` bytes.
fn gpt_seed(ss: u32, size: usize) -> Vec<u8> {
    let mut d = vec![0u8; size];
    let sectors = (size / ss as usize) as u64;
    let entry_sectors = (16 * KIB as u64).div_ceil(u64::from(ss));
    let first = 2 + entry_sectors;
    let last = sectors - 2 - entry_sectors;
    let mid = (first + last) / 2;
    let parts = [
        GptPartition {
            first_lba: first,
            last_lba: mid,
            type_guid: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            unique_guid: "11111111-2222-4333-8444-555555555555",
            name: "EFI system",
        },
        GptPartition {
            first_lba: mid + 1,
            last_lba: last,
            type_guid: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            unique_guid: "11111111-2222-4333-8444-666666666666",
            name: "root",
        },
    ];
    if let Ok(writes) = gpt_writes(size as u64, ss, "01234567-89AB-4CDE-8F01-23456789ABCD", &parts) {
        for (at, bytes) in writes {
            let at = at as usize;
            if let Some(dst) = d.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(&bytes);
            }
        }
    }
    d
}

/// Filesystem images made by the real tools (none when a tool is missing).
fn mkfs_seeds(specs: &[(&str, &str, &[&str], usize)]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, tool, args, size) in specs {
        let img = scratch_path(&format!("seed-{name}"));
        let _ = std::fs::remove_file(&img);
        let made = std::fs::File::create(&img)
            .and_then(|f| f.set_len(*size as u64))
            .is_ok();
        let mut cmd = Command::new(tool);
        match *tool {
            "mkfs.vfat" => cmd.args(*args).arg(&img),
            "mkfs.ntfs" => cmd.args(["-q", "-F", "-f"]).args(*args).arg(&img),
            _ => cmd.args(["-q", "-F"]).args(*args).arg(&img),
        };
        let ok = made
            && cmd
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if ok && let Ok(bytes) = std::fs::read(&img) {
            out.push((name.to_string(), bytes));
        }
        let _ = std::fs::remove_file(&img);
    }
    out
}

fn dhcp_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use dhcproto::Encodable;
    use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};
    let mac = [0x52, 0x54, 0, 0, 0, 1];
    let message = |kind: MessageType, ipxe: bool| {
        let mut m = Message::new_with_id(
            0x1234_5678,
            std::net::Ipv4Addr::UNSPECIFIED,
            std::net::Ipv4Addr::UNSPECIFIED,
            std::net::Ipv4Addr::UNSPECIFIED,
            std::net::Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
        ));
        opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::BootfileName,
        ]));
        opts.insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
        if ipxe {
            opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        if kind == MessageType::Request {
            opts.insert(DhcpOption::RequestedIpAddress([10, 99, 0, 100].into()));
            opts.insert(DhcpOption::ServerIdentifier([10, 99, 0, 1].into()));
        }
        m.to_vec().unwrap_or_default()
    };
    let mut relayed = message(MessageType::Discover, false);
    // giaddr = 10.50.0.1, and option 82 before End.
    if let Some(gi) = relayed.get_mut(24..28) {
        gi.copy_from_slice(&[10, 50, 0, 1]);
    }
    if let Some(end) = relayed.iter().rposition(|&b| b == 255) {
        relayed.splice(end..end, [82, 6, 1, 4, b'p', b'o', b'r', b't']);
    }
    vec![
        ("discover", message(MessageType::Discover, false)),
        ("request-ipxe", message(MessageType::Request, true)),
        ("relayed-discover", relayed),
    ]
}

fn tftp_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use fogcore::net::tftp::codec::{ErrorCode, Packet, Request};
    let request = Request {
        filename: "ipxe.efi".into(),
        mode: "octet".into(),
        options: vec![
            ("blksize".into(), "1468".into()),
            ("tsize".into(), "0".into()),
            ("windowsize".into(), "4".into()),
        ],
    };
    vec![
        ("rrq", Packet::Rrq(request.clone()).encode()),
        ("wrq", Packet::Wrq(request).encode()),
        (
            "data",
            Packet::Data {
                block: 7,
                data: b"some bytes",
            }
            .encode(),
        ),
        ("ack", Packet::Ack(65535).encode()),
        (
            "error",
            Packet::Error {
                code: ErrorCode::NOT_DEFINED,
                message: "no".into(),
            }
            .encode(),
        ),
        ("oack", Packet::Oack(vec![("blksize".into(), "1468".into())]).encode()),
    ]
}

/// The session number the multicast target's packets are read as.
pub const MULTICAST_SESSION: u32 = 0x0f06_0001;
/// The key the multicast target's packets are tagged with.
pub const MULTICAST_KEY: [u8; 32] = [7; 32];

/// One multicast packet of each kind, tagged with [`MULTICAST_KEY`].
fn multicast_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use fogcore::net::multicast::wire::{self, Announce, Data, Key, Mode, Nak, Packet, Report, SessionState};
    let key = Key(MULTICAST_KEY);
    let payload = vec![0x5a; 700];
    let packets = [
        (
            "data",
            Packet::Data(Data {
                seq: 9,
                object: 3,
                frag: 1,
                frags: 2,
                repair: false,
                payload: &payload,
            }),
        ),
        (
            "announce",
            Packet::Announce(Announce {
                state: SessionState::Sending,
                objects: 40,
                position: 7,
                rate_kib: 20_000,
                bulk_loss_permille: 5,
                bulk_receivers: 2,
                url: "http://10.99.0.1:7071".into(),
                image: "win11".into(),
            }),
        ),
        (
            "report",
            Packet::Report(Report {
                receiver: 1,
                counter: 5,
                got: 100,
                expected: 104,
                done: false,
                congested: false,
                mode: Some(Mode::Normal),
                placed: 12,
                needs: vec![(12, 20), (25, 40)],
                naks: vec![Nak {
                    object: 11,
                    missing: vec![(3, 5)],
                }],
            }),
        ),
    ];
    packets
        .into_iter()
        .map(|(name, packet)| {
            let mut bytes = Vec::new();
            wire::encode(MULTICAST_SESSION, &key, &packet, &mut bytes);
            (name, bytes)
        })
        .collect()
}
