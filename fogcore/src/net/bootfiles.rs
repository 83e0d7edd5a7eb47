//! The boot programs PXE clients load over TFTP, copied into the boot directory from the system's
//! packages, or a report of exactly what is missing and which package has it:
//! - iPXE (Debian/Ubuntu `ipxe`: `/usr/lib/ipxe/`; Fedora `ipxe-bootimgs-*`: `/usr/share/ipxe/`);
//! - the signed chain for Secure Boot: shim signed by Microsoft's UEFI CA (`shim-signed`) and
//!   the distribution's signed GRUB network image (`grub-efi-amd64-signed`), which shim loads
//!   as `grubx64.efi` from beside itself.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, IoContext as _, Result};
use crate::net::boot::SecureBoot;

/// One boot file and where the system's packages put it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootFileSource {
    /// Its name in the boot directory (what DHCP names).
    pub name: String,
    /// Where to look, in order (symlinks are followed).
    pub candidates: Vec<PathBuf>,
    /// The install command that provides it.
    pub package_hint: String,
    /// Whether PXE needs it for the common firmwares (BIOS and x64 UEFI).
    pub required: bool,
}

/// The boot files fog serves, with the package paths of Debian/Ubuntu and Fedora under `root`
/// (`/` for the running system). The signed chain is required unless `secure_boot` is off.
pub fn boot_file_sources(root: &Path, secure_boot: SecureBoot) -> Vec<BootFileSource> {
    let signed_chain_required = secure_boot == SecureBoot::Auto;
    let debian = "apt-get install ipxe (Debian/Ubuntu) or dnf install ipxe-bootimgs-x86 (Fedora)";
    let at = |paths: &[&str]| -> Vec<PathBuf> { paths.iter().map(|p| root.join(p.trim_start_matches('/'))).collect() };
    vec![
        BootFileSource {
            name: "undionly.kpxe".into(),
            candidates: at(&["/usr/lib/ipxe/undionly.kpxe", "/usr/share/ipxe/undionly.kpxe"]),
            package_hint: debian.into(),
            required: true,
        },
        BootFileSource {
            name: "ipxe.efi".into(),
            candidates: at(&[
                "/usr/lib/ipxe/ipxe.efi",
                "/boot/ipxe.efi",
                "/usr/share/ipxe/ipxe-x86_64.efi",
            ]),
            package_hint: debian.into(),
            required: true,
        },
        BootFileSource {
            name: "snponly.efi".into(),
            candidates: at(&["/usr/lib/ipxe/snponly.efi", "/usr/share/ipxe/ipxe-snponly-x86_64.efi"]),
            package_hint: debian.into(),
            required: false,
        },
        BootFileSource {
            name: "ipxe-arm64.efi".into(),
            candidates: at(&[
                "/usr/lib/ipxe/arm64-efi/ipxe.efi",
                "/usr/share/ipxe/arm64-efi/ipxe.efi",
                "/usr/share/ipxe/arm64-efi/snponly.efi",
            ]),
            package_hint: "dnf install ipxe-bootimgs-aarch64 (Fedora); Debian has no ARM64 iPXE package: \
                           build bin-arm64-efi/ipxe.efi from ipxe.org"
                .into(),
            required: false,
        },
        // `[boot] secure_boot = "auto"` (the default) sends x64 UEFI clients to shim.
        BootFileSource {
            name: crate::net::boot::SHIM_FILE.into(),
            candidates: at(&[
                "/usr/lib/shim/shimx64.efi.signed",
                "/usr/lib/shim/shimx64.efi.signed.latest",
                "/boot/efi/EFI/fedora/shimx64.efi",
            ]),
            package_hint: "apt-get install shim-signed (Debian/Ubuntu) or dnf install shim-x64 (Fedora)".into(),
            required: signed_chain_required,
        },
        BootFileSource {
            name: crate::net::boot::SIGNED_GRUB_FILE.into(),
            candidates: at(&[
                "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
                "/boot/efi/EFI/fedora/grubx64.efi",
            ]),
            package_hint: "apt-get install grub-efi-amd64-signed (Debian/Ubuntu) or dnf install grub2-efi-x64 \
                           (Fedora)"
                .into(),
            required: signed_chain_required,
        },
    ]
}

/// What `install` did with one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum FileOutcome {
    /// Copied from `from`.
    Installed {
        /// Source file.
        from: PathBuf,
        /// Bytes copied.
        bytes: u64,
    },
    /// Already in the boot directory with the same content.
    Unchanged {
        /// Source file.
        from: PathBuf,
    },
    /// No candidate exists.
    Missing {
        /// Where fog looked.
        looked_in: Vec<PathBuf>,
        /// What provides it.
        package_hint: String,
        /// Whether PXE needs it for BIOS or x64 UEFI.
        required: bool,
    },
}

/// The result of [`install`], per file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallReport {
    /// The boot directory.
    pub boot_dir: PathBuf,
    /// (file name, outcome), in the order of the sources.
    pub files: Vec<(String, FileOutcome)>,
}

impl InstallReport {
    /// Required files that could not be installed.
    pub fn missing_required(&self) -> Vec<&str> {
        self.files
            .iter()
            .filter(|(_, o)| matches!(o, FileOutcome::Missing { required: true, .. }))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// An error naming the missing required files, where fog looked and the package to install.
    pub fn check(&self) -> Result<()> {
        let missing: Vec<String> = self
            .files
            .iter()
            .filter_map(|(name, o)| match o {
                FileOutcome::Missing {
                    looked_in,
                    package_hint,
                    required: true,
                } => {
                    let looked: Vec<String> = looked_in.iter().map(|p| p.display().to_string()).collect();
                    Some(format!("{name} (looked in {}; {package_hint})", looked.join(", ")))
                }
                _ => None,
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "boot files missing from this system: {}",
                missing.join("; ")
            )))
        }
    }
}

fn same_content(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {
            matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
        }
        _ => false,
    }
}

/// Copies `from` to `to` crash-safely: a temporary name in the same directory, fsync, rename.
fn copy_durably(from: &Path, to: &Path) -> Result<u64> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut input = std::fs::File::open(from).at(from)?;
        let mut output = std::fs::File::create(&tmp).at(&tmp)?;
        let bytes = std::io::copy(&mut input, &mut output).at(&tmp)?;
        output.flush().at(&tmp)?;
        output.sync_all().at(&tmp)?;
        std::fs::rename(&tmp, to).at(to)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(bytes)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies every file of `sources` found on the system into `boot_dir` (created if absent).
/// Files already there with the same content are left alone. Missing files are reported, not an
/// error: see [`InstallReport::check`].
pub fn install(boot_dir: &Path, sources: &[BootFileSource]) -> Result<InstallReport> {
    std::fs::create_dir_all(boot_dir).at(boot_dir)?;
    let mut files = Vec::new();
    for source in sources {
        let target = boot_dir.join(&source.name);
        let found = source.candidates.iter().find(|c| c.is_file());
        let outcome = match found {
            None => FileOutcome::Missing {
                looked_in: source.candidates.clone(),
                package_hint: source.package_hint.clone(),
                required: source.required,
            },
            Some(from) if same_content(from, &target) => FileOutcome::Unchanged { from: from.clone() },
            Some(from) => FileOutcome::Installed {
                from: from.clone(),
                bytes: copy_durably(from, &target)?,
            },
        };
        files.push((source.name.clone(), outcome));
    }
    Ok(InstallReport {
        boot_dir: boot_dir.to_path_buf(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_what_exists_and_names_what_is_missing() -> Result<()> {
        let root = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let lib = root.path().join("usr/lib/ipxe");
        std::fs::create_dir_all(&lib).at(&lib)?;
        std::fs::create_dir_all(root.path().join("boot")).at(&lib)?;
        std::fs::write(lib.join("undionly.kpxe"), b"bios").at(&lib)?;
        std::fs::write(root.path().join("boot/ipxe.efi"), b"uefi").at(&lib)?;
        std::os::unix::fs::symlink("/boot/ipxe.efi-absent", lib.join("ipxe.efi")).at(&lib)?;
        let shim = root.path().join("usr/lib/shim");
        let grub = root.path().join("usr/lib/grub/x86_64-efi-signed");
        for dir in [&shim, &grub] {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        std::fs::write(shim.join("shimx64.efi.signed"), b"shim").at(&shim)?;
        std::fs::write(grub.join("grubnetx64.efi.signed"), b"grub").at(&grub)?;
        let boot_dir = root.path().join("srv/boot");

        let report = install(&boot_dir, &boot_file_sources(root.path(), SecureBoot::Auto))?;
        assert_eq!(std::fs::read(boot_dir.join("undionly.kpxe")).at(&boot_dir)?, b"bios");
        assert_eq!(std::fs::read(boot_dir.join("ipxe.efi")).at(&boot_dir)?, b"uefi");
        assert_eq!(std::fs::read(boot_dir.join("shimx64.efi")).at(&boot_dir)?, b"shim");
        assert_eq!(std::fs::read(boot_dir.join("grubx64.efi")).at(&boot_dir)?, b"grub");
        assert!(report.missing_required().is_empty());
        assert!(report.check().is_ok());
        assert!(
            matches!(report.files.get(2), Some((n, FileOutcome::Missing { required: false, .. })) if n == "snponly.efi")
        );

        let again = install(&boot_dir, &boot_file_sources(root.path(), SecureBoot::Auto))?;
        assert!(matches!(again.files.first(), Some((_, FileOutcome::Unchanged { .. }))));

        std::fs::remove_file(lib.join("undionly.kpxe")).at(&lib)?;
        std::fs::remove_file(shim.join("shimx64.efi.signed")).at(&shim)?;
        let empty = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let report = install(
            &empty.path().join("boot"),
            &boot_file_sources(root.path(), SecureBoot::Auto),
        )?;
        assert_eq!(report.missing_required(), ["undionly.kpxe", "shimx64.efi"]);
        let message = report.check().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("undionly.kpxe"), "{message}");
        assert!(message.contains("usr/lib/ipxe/undionly.kpxe"), "{message}");
        assert!(message.contains("apt-get install ipxe"), "{message}");
        assert!(message.contains("usr/lib/shim/shimx64.efi.signed"), "{message}");
        assert!(message.contains("apt-get install shim-signed"), "{message}");
        let without = install(
            &empty.path().join("boot"),
            &boot_file_sources(root.path(), SecureBoot::Off),
        )?;
        assert_eq!(
            without.missing_required(),
            ["undionly.kpxe"],
            "secure_boot = \"off\" needs no shim"
        );
        Ok(())
    }
}
