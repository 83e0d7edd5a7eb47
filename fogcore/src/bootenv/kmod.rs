//! Kernel modules for the boot environment: which files, in which load order, from a module
//! tree's `modules.dep` (what `depmod` wrote: `kernel/x/y.ko[.xz|.zst]: dep.ko dep.ko ...`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{Error, Result};

/// The NIC and disk drivers the boot environment carries (plus what they need): virtual
/// machines, the common Intel, Realtek and Broadcom cards, NVMe, SATA, USB sticks, and `sd_mod`
/// and the USB host controllers without which SATA and USB disks have no device node.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "r8169",
    "tg3",
    "nvme",
    "ahci",
    "usb-storage",
    "sd_mod",
    "xhci_pci",
    "ehci_pci",
    // Resizing deploys reach a partition through a loop device, and mount XFS and btrfs to
    // grow them.
    "loop",
    // libcrc32c (which XFS and btrfs need) asks the crypto API for crc32c, a soft dependency
    // modules.dep does not list: without it both fail to load.
    "crc32c_generic",
    "xfs",
    "btrfs",
];

/// A module's name as the kernel knows it: file stem, `-` as `_` (`usb-storage` is `usb_storage`).
pub fn module_name(file_or_name: &str) -> String {
    let base = file_or_name.rsplit('/').next().unwrap_or(file_or_name);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .unwrap_or(base);
    stem.replace('-', "_")
}

/// A module tree's `modules.dep` and `modules.builtin`, by module name.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    /// Name -> (path relative to the tree, direct and indirect dependencies as names).
    deps: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
}

/// What [`ModuleIndex::closure`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// Modules to load, each after everything it needs: (name, path relative to the tree).
    pub load: Vec<(String, String)>,
    /// Requested modules built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// Requested modules this kernel has neither as a file nor built in.
    pub missing: Vec<String>,
}

impl ModuleIndex {
    /// Parses the text of `modules.dep` and `modules.builtin`.
    pub fn parse(dep: &str, builtin: &str) -> ModuleIndex {
        let mut deps = BTreeMap::new();
        for line in dep.lines() {
            let Some((module, needs)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim();
            if module.is_empty() {
                continue;
            }
            let needs = needs.split_whitespace().map(module_name).collect();
            deps.insert(module_name(module), (module.to_string(), needs));
        }
        let builtin = builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        ModuleIndex { deps, builtin }
    }

    /// Reads `DIR/modules.dep` (required) and `DIR/modules.builtin` (optional).
    pub fn load(dir: &Path) -> Result<ModuleIndex> {
        let dep_path = dir.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path).map_err(|e| {
            Error::invalid(
                "module directory",
                dir.display().to_string(),
                format!(
                    "cannot read {}: {e} (run depmod, or pass --modules DIR)",
                    dep_path.display()
                ),
            )
        })?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let mut index = ModuleIndex::parse(&dep, &builtin);
        index.add_softdeps(&std::fs::read_to_string(dir.join("modules.softdep")).unwrap_or_default());
        Ok(index)
    }

    /// Adds the `pre:` modules of `modules.softdep` (`softdep crc64_rocksoft pre: crc64`) as
    /// dependencies: modprobe loads them first, and some modules fail to load without them.
    /// Names that are aliases rather than modules (`crypto-crc32c`) are left out.
    pub fn add_softdeps(&mut self, text: &str) {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                continue;
            };
            let mut pre = Vec::new();
            let mut in_pre = false;
            for word in words {
                match word {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    name if in_pre => pre.push(module_name(name)),
                    _ => {}
                }
            }
            pre.retain(|p| self.deps.contains_key(p));
            if let Some((_, needs)) = self.deps.get_mut(&module_name(module)) {
                for p in pre.into_iter().rev() {
                    if !needs.contains(&p) {
                        needs.insert(0, p);
                    }
                }
            }
        }
    }

    /// The modules `wanted` need, each after its dependencies, each once.
    pub fn closure(&self, wanted: &[impl AsRef<str>]) -> Closure {
        let mut out = Closure::default();
        let mut seen = BTreeSet::new();
        for name in wanted {
            let name = module_name(name.as_ref());
            if self.deps.contains_key(&name) {
                self.visit(&name, &mut seen, &mut out.load);
            } else if self.builtin.contains(&name) {
                out.builtin.push(name);
            } else {
                out.missing.push(name);
            }
        }
        out
    }

    fn visit(&self, name: &str, seen: &mut BTreeSet<String>, load: &mut Vec<(String, String)>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some((path, needs)) = self.deps.get(name) else {
            return;
        };
        for need in needs {
            self.visit(need, seen, load);
        }
        load.push((name.to_string(), path.clone()));
    }
}

/// True when a module (decompressed) ends with the kernel's module-signature trailer: a kernel
/// that enforces signatures (locked down by Secure Boot) loads only these.
pub fn is_signed(module: &[u8]) -> bool {
    module.ends_with(b"~Module signature appended~\n")
}

/// A module file's contents, decompressed (busybox `insmod` may not decompress): `.zst` here,
/// `.xz` and `.gz` through the `xz` and `gzip` commands.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let text = path.to_string_lossy();
    let io = |e| Error::io(path, e);
    if text.ends_with(".zst") {
        let file = std::fs::File::open(path).map_err(io)?;
        return zstd::decode_all(file).map_err(io);
    }
    let tool = if text.ends_with(".xz") {
        "xz"
    } else if text.ends_with(".gz") {
        "gzip"
    } else {
        return std::fs::read(path).map_err(io);
    };
    let out = std::process::Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| {
            Error::invalid(
                "kernel module",
                text.to_string(),
                format!("cannot run {tool} to decompress it: {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(Error::invalid(
            "kernel module",
            text.to_string(),
            format!("{tool} -dc failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko.zst: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/usb/storage/usb-storage.ko.xz: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/usb/core/usbcore.ko
kernel/drivers/scsi/scsi_mod.ko:
kernel/drivers/usb/core/usbcore.ko:
";

    #[test]
    fn closure_loads_dependencies_first_each_once() {
        let mut index = ModuleIndex::parse(DEP, "kernel/drivers/ata/ahci.ko\n");
        // failover's softdep on virtio_ring puts virtio_ring first; an alias is ignored.
        index.add_softdeps("softdep failover pre: virtio_ring crypto-crc32c\n# comment\n");
        let c = index.closure(&["virtio_net", "virtio_pci", "usb-storage", "ahci", "tg3"]);
        let names: Vec<&str> = c.load.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "failover",
                "net_failover",
                "virtio",
                "virtio_net",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "scsi_mod",
                "usbcore",
                "usb_storage"
            ]
        );
        assert_eq!(c.load[4].1, "kernel/drivers/net/virtio_net.ko.zst");
        assert_eq!(index.deps["failover"].1, ["virtio_ring"]);
        assert_eq!(c.builtin, ["ahci"]);
        assert_eq!(c.missing, ["tg3"]);
        // Every module comes after all it needs.
        for (i, (name, _)) in c.load.iter().enumerate() {
            for need in &index.deps[name].1 {
                let at = names.iter().position(|n| n == need).expect("dependency loaded");
                assert!(at < i, "{need} must load before {name}");
            }
        }
    }

    #[test]
    fn names_are_normalized() {
        assert_eq!(
            module_name("kernel/drivers/usb/storage/usb-storage.ko.xz"),
            "usb_storage"
        );
        assert_eq!(module_name("nvme-core.ko.zst"), "nvme_core");
        assert_eq!(module_name("e1000e"), "e1000e");
    }

    #[test]
    fn zstd_modules_are_decompressed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.ko.zst");
        std::fs::write(&path, zstd::encode_all(&b"\x7fELF module"[..], 3).expect("zstd")).expect("write");
        assert_eq!(read_module(&path).expect("read"), b"\x7fELF module");
        let e = read_module(&dir.path().join("absent.ko")).expect_err("absent");
        assert!(e.to_string().contains("absent.ko"), "{e}");
    }
}
