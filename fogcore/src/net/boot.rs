//! Boot policy: which file a PXE client gets, from its firmware (DHCP option 93, the client
//! architecture, and option 77, the user class) and from what the control plane knows of it.
//! DHCP (full and proxy) and HTTP ask the same policy, so a host boots the same way whichever
//! serves it.

use std::net::Ipv4Addr;

/// Client system architecture (DHCP option 93, RFC 4578 and the IANA registry).
pub mod arch {
    /// x86 BIOS.
    pub const BIOS: u16 = 0;
    /// x86 UEFI (32-bit).
    pub const UEFI_IA32: u16 = 6;
    /// x64 UEFI.
    pub const UEFI_X64: u16 = 7;
    /// EFI BC (x64 in practice).
    pub const UEFI_BC: u16 = 9;
    /// ARM 32-bit UEFI.
    pub const UEFI_ARM32: u16 = 10;
    /// ARM 64-bit UEFI.
    pub const UEFI_ARM64: u16 = 11;
    /// x64 UEFI HTTP boot.
    pub const UEFI_X64_HTTP: u16 = 16;
    /// ARM 64-bit UEFI HTTP boot.
    pub const UEFI_ARM64_HTTP: u16 = 19;
}

/// What the firmware asking for a boot file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// A legacy BIOS PXE ROM.
    Bios,
    /// x64 (or IA32) UEFI PXE.
    UefiX64,
    /// ARM64 UEFI PXE.
    UefiArm64,
    /// UEFI HTTP boot (vendor class `HTTPClient`): wants a URL, not a TFTP name.
    UefiHttp,
    /// iPXE already running (user class `iPXE`): give it the HTTP script, or it loops.
    Ipxe,
    /// An architecture code fog has no boot file for.
    Unknown(u16),
}

/// The parts of a DHCP request that decide the boot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootRequest {
    /// Client hardware address.
    pub mac: [u8; 6],
    /// Option 93, if sent.
    pub arch: Option<u16>,
    /// Option 77 (user class), raw.
    pub user_class: Option<Vec<u8>>,
    /// Option 60 (vendor class identifier), e.g. `PXEClient:Arch:00007:UNDI:003016`.
    pub vendor_class: Option<String>,
}

impl BootRequest {
    /// Classifies the firmware. iPXE wins over the architecture: iPXE also sends option 93.
    pub fn firmware(&self) -> Firmware {
        if self
            .user_class
            .as_deref()
            .is_some_and(|u| u == b"iPXE" || u.ends_with(b"iPXE"))
        {
            return Firmware::Ipxe;
        }
        if self
            .vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("HTTPClient"))
        {
            return Firmware::UefiHttp;
        }
        match self.arch {
            None | Some(arch::BIOS) => Firmware::Bios,
            Some(arch::UEFI_IA32 | arch::UEFI_X64 | arch::UEFI_BC) => Firmware::UefiX64,
            Some(arch::UEFI_ARM64) => Firmware::UefiArm64,
            Some(arch::UEFI_X64_HTTP | arch::UEFI_ARM64_HTTP) => Firmware::UefiHttp,
            Some(other) => Firmware::Unknown(other),
        }
    }

    /// True when the request comes from PXE firmware (vendor class `PXEClient...` or
    /// `HTTPClient...`, or iPXE). Proxy DHCP answers only these.
    pub fn is_pxe(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("PXEClient") || v.starts_with("HTTPClient"))
            || self.firmware() == Firmware::Ipxe
    }
}

/// Where a client is told to fetch its boot program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFile {
    /// A file name on the TFTP server `next_server` (DHCP siaddr / option 66).
    Tftp {
        /// TFTP server.
        next_server: Ipv4Addr,
        /// File name (DHCP `file` / option 67).
        file: String,
    },
    /// A URL (UEFI HTTP boot and iPXE).
    Http {
        /// The URL.
        url: String,
    },
}

/// Decides the boot file of a client. The control plane implements it per host later; the
/// default maps firmware to the iPXE binaries.
pub trait BootPolicy: Send + Sync {
    /// The boot file for `request`, or `None` to not answer it as a PXE client.
    fn boot_file(&self, request: &BootRequest) -> Option<BootFile>;
}

/// How x64 UEFI PXE clients boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureBoot {
    /// The signed chain: shim (signed by Microsoft's UEFI CA), then GRUB (signed by the
    /// distribution), then the signed kernel. DHCP cannot tell whether Secure Boot is on, and shim
    /// boots either way.
    #[default]
    Auto,
    /// iPXE, which Secure Boot refuses (it is not signed by a key the firmware trusts).
    Off,
}

impl std::str::FromStr for SecureBoot {
    type Err = crate::Error;
    fn from_str(text: &str) -> crate::Result<Self> {
        match text {
            "auto" => Ok(SecureBoot::Auto),
            "off" => Ok(SecureBoot::Off),
            other => Err(crate::Error::InvalidInput(format!(
                "secure_boot: {other:?} is not one of \"auto\", \"off\""
            ))),
        }
    }
}

/// The signed chain's first stage, in the boot directory: shim loads `grubx64.efi` beside it.
pub const SHIM_FILE: &str = "shimx64.efi";
/// The signed GRUB network image, where shim looks for it.
pub const SIGNED_GRUB_FILE: &str = "grubx64.efi";

impl SecureBoot {
    /// The boot files this mode sends clients to beside the configured iPXE ones.
    pub fn signed_chain_files(self) -> &'static [&'static str] {
        match self {
            SecureBoot::Auto => &[SHIM_FILE, SIGNED_GRUB_FILE],
            SecureBoot::Off => &[],
        }
    }
}

/// Firmware -> iPXE binary (or the signed chain) over TFTP; iPXE and HTTP boot -> the node's
/// HTTP script.
#[derive(Debug, Clone)]
pub struct DefaultBootPolicy {
    /// The node's address on the clients' subnet (TFTP and HTTP server).
    pub server: Ipv4Addr,
    /// HTTP port of the node.
    pub http_port: u16,
    /// BIOS boot file.
    pub bios_file: String,
    /// x64 UEFI boot file (`ipxe.efi`, or `snponly.efi` for NICs whose UNDI iPXE lacks).
    pub uefi_x64_file: String,
    /// ARM64 UEFI boot file.
    pub uefi_arm64_file: String,
    /// Whether x64 UEFI PXE clients get the signed chain ([`SHIM_FILE`]) or `uefi_x64_file`.
    pub secure_boot: SecureBoot,
}

impl DefaultBootPolicy {
    /// The defaults for a node at `server` with HTTP on `http_port`.
    pub fn new(server: Ipv4Addr, http_port: u16) -> Self {
        DefaultBootPolicy {
            server,
            http_port,
            bios_file: "undionly.kpxe".into(),
            uefi_x64_file: "ipxe.efi".into(),
            uefi_arm64_file: "ipxe-arm64.efi".into(),
            secure_boot: SecureBoot::Auto,
        }
    }

    /// The base URL of the node's HTTP service.
    pub fn http_base(&self) -> String {
        if self.http_port == 80 {
            format!("http://{}", self.server)
        } else {
            format!("http://{}:{}", self.server, self.http_port)
        }
    }
}

impl BootPolicy for DefaultBootPolicy {
    fn boot_file(&self, request: &BootRequest) -> Option<BootFile> {
        let boot = self.choose(request);
        if let Some(BootFile::Tftp { file, .. }) = &boot {
            let chain = if file == SHIM_FILE {
                "signed chain (shim, GRUB, signed kernel)"
            } else {
                "iPXE"
            };
            tracing::info!(mac = %crate::names::Mac(request.mac), firmware = ?request.firmware(), %file, "boot: {chain}");
        }
        boot
    }
}

impl DefaultBootPolicy {
    fn choose(&self, request: &BootRequest) -> Option<BootFile> {
        let tftp = |file: &str| BootFile::Tftp {
            next_server: self.server,
            file: file.to_string(),
        };
        match request.firmware() {
            Firmware::Ipxe => Some(BootFile::Http {
                url: format!("{}/boot.ipxe", self.http_base()),
            }),
            Firmware::UefiHttp => Some(BootFile::Http {
                url: format!("{}/{}", self.http_base(), self.uefi_x64_file),
            }),
            Firmware::Bios => Some(tftp(&self.bios_file)),
            // 32-bit UEFI cannot run shimx64.
            Firmware::UefiX64
                if self.secure_boot == SecureBoot::Auto
                    && matches!(request.arch, Some(arch::UEFI_X64 | arch::UEFI_BC)) =>
            {
                Some(tftp(SHIM_FILE))
            }
            Firmware::UefiX64 => Some(tftp(&self.uefi_x64_file)),
            Firmware::UefiArm64 => Some(tftp(&self.uefi_arm64_file)),
            Firmware::Unknown(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(arch: Option<u16>, user_class: Option<&[u8]>, vendor: Option<&str>) -> BootRequest {
        BootRequest {
            mac: [0x52, 0x54, 0, 0, 0, 1],
            arch,
            user_class: user_class.map(<[u8]>::to_vec),
            vendor_class: vendor.map(str::to_string),
        }
    }

    #[test]
    fn picks_the_file_by_firmware() {
        let p = DefaultBootPolicy::new(Ipv4Addr::new(10, 99, 0, 1), 8080);
        let file = |r: &BootRequest| p.boot_file(r);
        let tftp = |f: &str| {
            Some(BootFile::Tftp {
                next_server: Ipv4Addr::new(10, 99, 0, 1),
                file: f.into(),
            })
        };
        assert_eq!(
            file(&req(Some(0), None, Some("PXEClient:Arch:00000"))),
            tftp("undionly.kpxe")
        );
        assert_eq!(
            file(&req(Some(7), None, Some("PXEClient:Arch:00007"))),
            tftp("shimx64.efi")
        );
        assert_eq!(
            file(&req(Some(9), None, Some("PXEClient:Arch:00009"))),
            tftp("shimx64.efi")
        );
        assert_eq!(
            file(&req(Some(6), None, Some("PXEClient:Arch:00006"))),
            tftp("ipxe.efi"),
            "32-bit UEFI has no shim"
        );
        let off = DefaultBootPolicy {
            secure_boot: SecureBoot::Off,
            ..p.clone()
        };
        assert_eq!(
            off.boot_file(&req(Some(7), None, Some("PXEClient:Arch:00007"))),
            tftp("ipxe.efi")
        );
        assert_eq!(
            off.boot_file(&req(Some(0), None, Some("PXEClient:Arch:00000"))),
            tftp("undionly.kpxe")
        );
        assert_eq!(
            file(&req(Some(11), None, Some("PXEClient:Arch:00011"))),
            tftp("ipxe-arm64.efi")
        );
        assert_eq!(
            file(&req(Some(7), Some(b"iPXE"), Some("PXEClient"))),
            Some(BootFile::Http {
                url: "http://10.99.0.1:8080/boot.ipxe".into()
            })
        );
        assert_eq!(
            file(&req(Some(16), None, Some("HTTPClient:Arch:00016"))),
            Some(BootFile::Http {
                url: "http://10.99.0.1:8080/ipxe.efi".into()
            })
        );
        assert_eq!(file(&req(Some(99), None, Some("PXEClient"))), None);
        assert!(!req(None, None, Some("MSFT 5.0")).is_pxe());
    }
}
