//! Hardware inventory from `/sys` and `/proc`: DMI, CPU, memory, disks, network cards. The roots
//! are arguments so tests read fixture trees. Nothing here fails: what cannot be read is absent.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the agent found on its machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Firmware identity (SMBIOS/DMI).
    pub dmi: Dmi,
    /// Processors.
    pub cpu: Cpu,
    /// Memory in bytes (`MemTotal`).
    pub memory_bytes: Option<u64>,
    /// Block devices that are disks (no loop, ram or optical devices).
    pub disks: Vec<DiskInfo>,
    /// Network cards (not loopback).
    pub nics: Vec<Nic>,
    /// How the machine booted (absent from inventories of older agents).
    #[serde(default)]
    pub boot: BootInfo,
}

/// How the machine booted: its firmware, and Secure Boot as the firmware told the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootInfo {
    /// Booted by UEFI (`/sys/firmware/efi` exists), or by BIOS; none without `/sys/firmware`.
    pub uefi: Option<bool>,
    /// Secure Boot on or off (off with BIOS); none when the firmware did not say.
    pub secure_boot: Option<bool>,
}

/// Where `struct boot_params` (exported at `/sys/kernel/boot_params/data`) keeps the Secure Boot
/// mode the EFI stub found: 0 unset, 1 unknown, 2 disabled, 3 enabled.
const BOOT_PARAMS_SECURE_BOOT: usize = 0x1ec;

/// The firmware and Secure Boot's state, from `sys`.
pub fn boot_info(sys: &Path) -> BootInfo {
    if !sys.join("firmware").is_dir() {
        return BootInfo::default();
    }
    if !sys.join("firmware/efi").is_dir() {
        return BootInfo {
            uefi: Some(false),
            secure_boot: Some(false),
        };
    }
    let mode = fs::read(sys.join("kernel/boot_params/data"))
        .ok()
        .and_then(|data| data.get(BOOT_PARAMS_SECURE_BOOT).copied());
    BootInfo {
        uefi: Some(true),
        secure_boot: match mode {
            Some(3) => Some(true),
            Some(2) => Some(false),
            _ => None,
        },
    }
}

/// SMBIOS identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dmi {
    /// `sys_vendor`.
    pub vendor: Option<String>,
    /// `product_name`.
    pub product: Option<String>,
    /// `product_serial` (readable by root only).
    pub serial: Option<String>,
    /// `product_uuid`, lower case (readable by root only).
    pub uuid: Option<String>,
}

/// Processors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// The first `model name` of `/proc/cpuinfo`.
    pub model: Option<String>,
    /// Logical processors.
    pub count: u32,
}

/// A disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Kernel name (`sda`, `nvme0n1`).
    pub name: String,
    /// Its device node.
    pub path: PathBuf,
    /// Model string.
    pub model: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Removable media (USB sticks, card readers).
    pub removable: bool,
}

/// A network card.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// MAC address, lower case.
    pub mac: String,
    /// Link speed in Mbit/s, when the link is up.
    pub speed_mbps: Option<u32>,
    /// Backed by a device (not a bridge, veth or tunnel).
    pub physical: bool,
}

/// A trimmed, non-empty first line of a file.
fn read_value(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let value = text.lines().next().unwrap_or("").trim();
    (!value.is_empty()).then(|| value.to_string())
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// True for text shaped like a UUID (`8-4-4-4-12` hex digits).
pub fn looks_like_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The SMBIOS identity under `sys` (`/sys`).
pub fn dmi(sys: &Path) -> Dmi {
    let id = sys.join("class/dmi/id");
    Dmi {
        vendor: read_value(&id.join("sys_vendor")),
        product: read_value(&id.join("product_name")),
        serial: read_value(&id.join("product_serial")),
        uuid: read_value(&id.join("product_uuid"))
            .map(|u| u.to_lowercase())
            .filter(|u| looks_like_uuid(u)),
    }
}

/// Processors from `/proc/cpuinfo` text.
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => cpu.count += 1,
            "model name" | "Model" | "cpu model" if cpu.model.is_none() && !value.trim().is_empty() => {
                cpu.model = Some(value.trim().to_string());
            }
            _ => {}
        }
    }
    cpu
}

/// `MemTotal` of `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    Some(match words.next() {
        Some("kB") => n * 1024,
        _ => n,
    })
}

/// Kernel block devices that are never an imaging target or a disk worth listing.
fn is_virtual_block(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "fd", "nbd", "dm-", "md"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The disks under `sys` (`/sys/block`), without loop, ram, optical and device-mapper devices.
pub fn disks(sys: &Path) -> Vec<DiskInfo> {
    entries(&sys.join("block"))
        .into_iter()
        .filter(|(name, _)| !is_virtual_block(name))
        .map(|(name, dir)| {
            let value = |rel: &str| read_value(&dir.join(rel));
            DiskInfo {
                path: PathBuf::from("/dev").join(&name),
                model: value("device/model"),
                serial: value("device/serial").or_else(|| value("serial")),
                size_bytes: value("size").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 512,
                removable: value("removable").as_deref() == Some("1"),
                name,
            }
        })
        .collect()
}

/// The network cards under `sys` (`/sys/class/net`), without loopback and all-zero addresses.
pub fn nics(sys: &Path) -> Vec<Nic> {
    entries(&sys.join("class/net"))
        .into_iter()
        .filter_map(|(name, dir)| {
            let mac = read_value(&dir.join("address"))?.to_lowercase();
            if name == "lo" || mac.bytes().all(|b| b == b'0' || b == b':') || mac.len() != 17 {
                return None;
            }
            Some(Nic {
                speed_mbps: read_value(&dir.join("speed"))
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|s| *s > 0)
                    .and_then(|s| u32::try_from(s).ok()),
                physical: dir.join("device").exists(),
                name,
                mac,
            })
        })
        .collect()
}

/// The MACs to check in with: cards backed by a device first, then the others.
pub fn macs(sys: &Path) -> Vec<String> {
    let mut nics = nics(sys);
    nics.sort_by_key(|n| !n.physical);
    let mut out: Vec<String> = Vec::new();
    for nic in nics {
        if !out.contains(&nic.mac) {
            out.push(nic.mac);
        }
    }
    out
}

/// Everything, from `sys` (`/sys`) and `proc` (`/proc`).
pub fn collect(sys: &Path, proc: &Path) -> Inventory {
    Inventory {
        dmi: dmi(sys),
        cpu: fs::read_to_string(proc.join("cpuinfo"))
            .map(|t| parse_cpuinfo(&t))
            .unwrap_or_default(),
        memory_bytes: fs::read_to_string(proc.join("meminfo"))
            .ok()
            .and_then(|t| parse_meminfo(&t)),
        disks: disks(sys),
        nics: nics(sys),
        boot: boot_info(sys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(path, text).expect("write");
    }

    /// A fixture laid out like `/sys` and `/proc` of a small PC.
    fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sys, proc) = (dir.path().join("sys"), dir.path().join("proc"));
        put(&sys, "class/dmi/id/sys_vendor", "LENOVO\n");
        put(&sys, "class/dmi/id/product_name", "ThinkCentre M920q\n");
        put(&sys, "class/dmi/id/product_serial", "PC1ABCDE\n");
        put(
            &sys,
            "class/dmi/id/product_uuid",
            "4C4C4544-0042-3510-8052-B4C04F564E32\n",
        );
        put(&sys, "block/nvme0n1/size", "1000215216\n");
        put(&sys, "block/nvme0n1/removable", "0\n");
        put(
            &sys,
            "block/nvme0n1/device/model",
            "Samsung SSD 970 EVO Plus 500GB   \n",
        );
        put(&sys, "block/nvme0n1/device/serial", "S4EVNX0M123456\n");
        put(&sys, "block/sda/size", "60062500\n");
        put(&sys, "block/sda/removable", "1\n");
        put(&sys, "block/sda/device/model", "Ultra USB 3.0\n");
        put(&sys, "block/loop0/size", "1024\n");
        put(&sys, "block/sr0/size", "0\n");
        put(&sys, "class/net/lo/address", "00:00:00:00:00:00\n");
        put(&sys, "class/net/eno1/address", "E8:6A:64:12:34:56\n");
        put(&sys, "class/net/eno1/speed", "1000\n");
        put(&sys, "class/net/eno1/device/vendor", "0x8086\n");
        put(&sys, "class/net/wlp2s0/address", "a0:b1:c2:d3:e4:f5\n");
        put(&sys, "class/net/wlp2s0/speed", "-1\n");
        put(&sys, "class/net/docker0/address", "02:42:ac:11:00:01\n");
        put(
            &proc,
            "cpuinfo",
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz\n\n\
             processor\t: 1\nmodel name\t: Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz\n\n",
        );
        put(
            &proc,
            "meminfo",
            "MemTotal:       16303716 kB\nMemFree:         1203716 kB\n",
        );
        (dir, sys, proc)
    }

    #[test]
    fn secure_boot_comes_from_the_boot_params() {
        let (_dir, sys, _) = fixture();
        assert_eq!(boot_info(&sys), BootInfo::default(), "no /sys/firmware: unknown");
        fs::create_dir_all(sys.join("firmware/acpi")).expect("mkdir");
        assert_eq!(
            boot_info(&sys),
            BootInfo {
                uefi: Some(false),
                secure_boot: Some(false)
            },
            "BIOS"
        );
        fs::create_dir_all(sys.join("firmware/efi")).expect("mkdir");
        assert_eq!(boot_info(&sys).secure_boot, None, "UEFI, nothing said");
        for (mode, want) in [(3u8, Some(true)), (2, Some(false)), (1, None)] {
            let mut params = vec![0u8; 4096];
            params[BOOT_PARAMS_SECURE_BOOT] = mode;
            fs::create_dir_all(sys.join("kernel/boot_params")).expect("mkdir");
            fs::write(sys.join("kernel/boot_params/data"), &params).expect("write");
            let got = boot_info(&sys);
            assert_eq!((got.uefi, got.secure_boot), (Some(true), want), "mode {mode}");
        }
    }

    #[test]
    fn reads_a_fixture_tree() {
        let (_dir, sys, proc) = fixture();
        let inv = collect(&sys, &proc);
        assert_eq!(inv.dmi.vendor.as_deref(), Some("LENOVO"));
        assert_eq!(inv.dmi.product.as_deref(), Some("ThinkCentre M920q"));
        assert_eq!(inv.dmi.serial.as_deref(), Some("PC1ABCDE"));
        assert_eq!(inv.dmi.uuid.as_deref(), Some("4c4c4544-0042-3510-8052-b4c04f564e32"));
        assert_eq!(inv.cpu.count, 2);
        assert_eq!(
            inv.cpu.model.as_deref(),
            Some("Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz")
        );
        assert_eq!(inv.memory_bytes, Some(16_303_716 * 1024));
        let names: Vec<&str> = inv.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda"]);
        let nvme = &inv.disks[0];
        assert_eq!(nvme.model.as_deref(), Some("Samsung SSD 970 EVO Plus 500GB"));
        assert_eq!(nvme.serial.as_deref(), Some("S4EVNX0M123456"));
        assert_eq!(nvme.size_bytes, 1_000_215_216 * 512);
        assert!(!nvme.removable && inv.disks[1].removable);
        let nics: Vec<(&str, &str, Option<u32>)> = inv
            .nics
            .iter()
            .map(|n| (n.name.as_str(), n.mac.as_str(), n.speed_mbps))
            .collect();
        assert_eq!(
            nics,
            [
                ("docker0", "02:42:ac:11:00:01", None),
                ("eno1", "e8:6a:64:12:34:56", Some(1000)),
                ("wlp2s0", "a0:b1:c2:d3:e4:f5", None)
            ]
        );
        assert_eq!(macs(&sys).first().map(String::as_str), Some("e8:6a:64:12:34:56"));
        let json = serde_json::to_value(&inv).expect("json");
        assert_eq!(json["dmi"]["vendor"], "LENOVO");
    }

    #[test]
    fn an_empty_tree_gives_an_empty_inventory_and_a_bad_uuid_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        put(dir.path(), "class/dmi/id/product_uuid", "Not Settable\n");
        let inv = collect(dir.path(), &dir.path().join("proc"));
        assert_eq!(inv, Inventory::default());
    }

    #[test]
    fn reads_this_machine_without_panicking() {
        let inv = collect(Path::new("/sys"), Path::new("/proc"));
        assert!(inv.cpu.count >= 1, "{inv:?}");
        assert!(inv.memory_bytes.is_some_and(|m| m > 0), "{inv:?}");
    }
}
