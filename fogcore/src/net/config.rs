//! The node's config file (`fog.toml`): what `fog serve` and `fog.Server` run.
//!
//! Two layers, as in dora: [`ServeFile`] is the file as written (serde, `deny_unknown_fields`,
//! every value a plain string or number), and [`ServeConfig`] is the checked config built from it
//! with `TryFrom`. A wrong value is an error naming its key (`[http] listen: ...`), reported
//! before anything binds.
//!
//! ```toml
//! [node]
//! address = "10.99.0.1"          # our IPv4 address on the clients' subnet
//! data_dir = "/var/lib/fog"      # leases, state
//! boot_dir = "/var/lib/fog/boot" # iPXE binaries, kernels, initramfs (default: data_dir/boot)
//! master = "http://master:8090"  # node role: heartbeats, the tasks of its hosts (optional)
//! name = "site-a"                # this node's name on the master (required with master)
//! token_file = "/etc/fog/node-token" # or `token = "fog_..."` (one of them, with master)
//! heartbeat_secs = 5             # how often it reports and pulls its tasks
//! bandwidth = 12500000           # bytes/s for pulling images from the master (default: no limit)
//! wake_broadcast = "10.99.0.255" # send the master's Wake-on-LAN requests here (`:port`, default 9;
//!                                # from `address` when set). Unset: this node wakes no host.
//!
//! [http]                         # on unless `enabled = false`
//! listen = "0.0.0.0:8080"
//!
//! [tftp]                         # on when the section is present (and not `enabled = false`)
//! listen = "0.0.0.0:69"
//!
//! [dhcp]                         # `mode = "full"`, `"proxy"` or `"off"`
//! mode = "proxy"
//! interface = "br0"
//!
//! [boot]
//! bios_file = "undionly.kpxe"
//! uefi_x64_file = "ipxe.efi"     # or "snponly.efi"
//! uefi_arm64_file = "ipxe-arm64.efi"
//! secure_boot = "auto"           # x64 UEFI gets shim -> GRUB -> the signed kernel; "off": iPXE
//! menu_timeout_ms = 5000
//! menu_default = "local"         # item taken after the timeout: local, register, sysinfo, ...
//! agent_kernel = "bootenv/vmlinuz"    # what hosts with a task boot (paths under boot_dir)
//! agent_initrd = "bootenv/initrd.img"
//!
//! [multicast]                    # multicast tasks' sessions; off without `interface`
//! interface = "br0"
//! rate_mbit = 1000               # cap; the rate follows the bulk of the receivers
//! group = "239.255.70.1"         # the first session's group, then the next addresses
//! port = 7070
//! max_wait_secs = 300            # start when all its hosts joined, or this long after the first
//! ```
//!
//! The `[dhcp]` and `[tftp]` sections are the DHCP and TFTP servers' own configs
//! (`net::dhcp::DhcpConfig`, `net::tftp::TftpConfig`) plus the keys above; fog fills in what the
//! node section already says (server address, TFTP root, lease file).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::net::dhcp::{self, DhcpConfig};
use crate::net::tftp::TftpConfig;

/// Default HTTP listen address.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";
/// Default TFTP listen address.
pub const DEFAULT_TFTP_LISTEN: &str = "0.0.0.0:69";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/fog";

/// `fog.toml` as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// `[node]`.
    #[serde(default)]
    pub node: NodeFile,
    /// `[http]`.
    #[serde(default)]
    pub http: HttpFile,
    /// `[tftp]`: the TFTP server's config plus `enabled`; absent = TFTP off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp: Option<toml::Table>,
    /// `[dhcp]`: the DHCP server's config (`mode` may also be `"off"`); absent = DHCP off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<toml::Table>,
    /// `[boot]`.
    #[serde(default)]
    pub boot: BootFile,
    /// `[ra]`.
    #[serde(default)]
    pub ra: RaFile,
    /// `[store]`.
    #[serde(default)]
    pub store: StoreFile,
    /// `[multicast]`.
    #[serde(default)]
    pub multicast: MulticastFile,
}

/// `[multicast]` as written: multicast deploy sessions of this node's hosts (multicast tasks).
/// Off unless `interface` is set; a multicast task then deploys over HTTP from the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MulticastFile {
    /// The interface sessions send on (its IPv4 address serves joins and HTTP fallback).
    pub interface: Option<String>,
    /// Rate cap in Mbit/s (default 1000); the rate follows the bulk of the receivers up to it.
    pub rate_mbit: Option<u64>,
    /// The first session's group (default 239.255.70.1); further sessions at once take the
    /// next addresses.
    pub group: Option<String>,
    /// UDP port (default 7070).
    pub port: Option<u16>,
    /// A session starts when every host with a multicast task of its image here has joined, or
    /// this many seconds after the first join (default 300).
    pub max_wait_secs: Option<u64>,
}

/// `[multicast]` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastConfig {
    /// Interface name.
    pub interface: String,
    /// Rate cap, bytes per second.
    pub rate: u64,
    /// The first session's group.
    pub group: Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// Longest wait after the first join.
    pub max_wait: std::time::Duration,
}

impl MulticastFile {
    fn check(self) -> Result<Option<MulticastConfig>> {
        let Some(interface) = self.interface else {
            return Ok(None);
        };
        if !dhcp::valid_interface_name(&interface) {
            return Err(bad(
                "[multicast] interface",
                format!("{interface:?} is not a valid interface name"),
            ));
        }
        let group = match self.group {
            None => crate::net::multicast::DEFAULT_GROUP,
            Some(text) => {
                let group: Ipv4Addr = text
                    .parse()
                    .map_err(|_| bad("[multicast] group", format!("{text:?} is not an IPv4 address")))?;
                if !group.is_multicast() {
                    return Err(bad("[multicast] group", format!("{text} is not a multicast address")));
                }
                group
            }
        };
        let rate_mbit = self.rate_mbit.unwrap_or(1000);
        if rate_mbit == 0 || rate_mbit > 100_000 {
            return Err(bad(
                "[multicast] rate_mbit",
                format!("{rate_mbit} is not from 1 to 100000"),
            ));
        }
        let port = self.port.unwrap_or(crate::net::multicast::DEFAULT_PORT);
        if port == 0 {
            return Err(bad("[multicast] port", "0 is not a port"));
        }
        Ok(Some(MulticastConfig {
            interface,
            rate: rate_mbit * 1_000_000 / 8,
            group,
            port,
            max_wait: std::time::Duration::from_secs(self.max_wait_secs.unwrap_or(300)),
        }))
    }
}

/// `[store]` as written: the node's image store (`DATA_DIR/store`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// Memory each capture, deploy, replication, verify or gc may keep of what grows with an
    /// image, in MiB (default 256, at least 8); the rest goes to sorted runs on disk.
    pub memory_mib: Option<u64>,
}

/// `[ra]` as written: IPv6 router advertisements that tell PXE clients there is no IPv6 router,
/// so iPXE does not wait ~13 s for one at every boot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaFile {
    /// Default: on with `[dhcp] mode = "full"` and an interface (fog owns that subnet), else off.
    pub enabled: Option<bool>,
    /// Default: `[dhcp] interface`.
    pub interface: Option<String>,
}

/// `[node]` as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// Our IPv4 address on the clients' subnet; required when DHCP is on.
    pub address: Option<String>,
    /// State directory (leases). Default `/var/lib/fog`.
    pub data_dir: Option<PathBuf>,
    /// Boot directory. Default `data_dir/boot`.
    pub boot_dir: Option<PathBuf>,
    /// The master's URL: this node heartbeats to it and serves the tasks of its hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// This node's name on the master (required with `master`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The node's token (or `token_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the node's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Seconds between heartbeats (and task pulls), default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
    /// Bytes per second for pulling images from the master (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    /// Where this node sends Wake-on-LAN packets (`10.99.0.255` or `10.99.0.255:9`); unset, it
    /// wakes no host (and leaves the master's wake requests for it unclaimed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_broadcast: Option<String>,
    /// An `https://` master is trusted when its certificate comes from the CA in this PEM file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_ca: Option<PathBuf>,
    /// An `https://` master is trusted when its certificate has this SHA-256 fingerprint (what
    /// `fog master --tls-self-signed` prints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_fingerprint: Option<String>,
}

/// `[http]` as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Default true.
    pub enabled: Option<bool>,
    /// `ip:port`, default `0.0.0.0:8080`.
    pub listen: Option<String>,
}

/// `[boot]` as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFile {
    /// BIOS PXE boot file, default `undionly.kpxe`.
    pub bios_file: Option<String>,
    /// x64 UEFI boot file, default `ipxe.efi` (`snponly.efi` for NICs whose UNDI iPXE lacks).
    pub uefi_x64_file: Option<String>,
    /// ARM64 UEFI boot file, default `ipxe-arm64.efi`.
    pub uefi_arm64_file: Option<String>,
    /// `auto` (default): x64 UEFI PXE clients get the signed chain (shim, GRUB, the signed
    /// kernel), which boots with Secure Boot on or off; `off`: they get `uefi_x64_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<crate::net::boot::SecureBoot>,
    /// Milliseconds the default menu waits before booting the local disk (default 5000).
    pub menu_timeout_ms: Option<u32>,
    /// The menu item taken after the timeout (default `local`; `register` registers unknown
    /// machines unattended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub menu_default: Option<String>,
    /// The agent's kernel, a path under the boot directory (default `bootenv/vmlinuz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_kernel: Option<String>,
    /// The agent's initramfs, a path under the boot directory (default `bootenv/initrd.img`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_initrd: Option<String>,
}

/// The DHCP service a config asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// No DHCP: another server gives addresses and boot files (or clients boot by other means).
    Off,
    /// Addresses and boot files.
    Full,
    /// Boot files only, beside a DHCP server that owns the addresses.
    Proxy,
}

impl std::str::FromStr for DhcpMode {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "off" => Ok(DhcpMode::Off),
            "full" => Ok(DhcpMode::Full),
            "proxy" => Ok(DhcpMode::Proxy),
            other => Err(Error::InvalidInput(format!(
                "[dhcp] mode: {other:?} is not one of \"full\", \"proxy\", \"off\""
            ))),
        }
    }
}

/// The boot files the DHCP policy names, checked to be plain file names in the boot directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// BIOS.
    pub bios_file: String,
    /// x64 UEFI.
    pub uefi_x64_file: String,
    /// ARM64 UEFI.
    pub uefi_arm64_file: String,
    /// Whether x64 UEFI gets the signed chain.
    pub secure_boot: crate::net::boot::SecureBoot,
    /// Default menu timeout.
    pub menu_timeout_ms: u32,
    /// The menu item taken after the timeout.
    pub menu_default: String,
    /// The agent's kernel, relative to the boot directory.
    pub agent_kernel: String,
    /// The agent's initramfs, relative to the boot directory.
    pub agent_initrd: String,
}

/// Default heartbeat period of a node.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 5;

/// Where the node's token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Written in the config.
    Inline(String),
    /// Read from this file at start.
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<hidden>)"),
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl TokenSource {
    /// The token (a file's first line, trimmed); an error names the key.
    pub fn read(&self) -> Result<String> {
        let token = match self {
            TokenSource::Inline(token) => token.trim().to_string(),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| bad("[node] token_file", format!("cannot read {}: {e}", path.display())))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            let key = match self {
                TokenSource::Inline(_) => "[node] token",
                TokenSource::File(_) => "[node] token_file",
            };
            return Err(bad(key, "the token is empty"));
        }
        Ok(token)
    }
}

/// The node role: the master this node reports to.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterLink {
    /// The master's base URL (`http://master:8090`), without a trailing `/`.
    pub url: String,
    /// This node's name on the master.
    pub name: String,
    /// The node's token.
    pub token: TokenSource,
    /// Seconds between heartbeats and task pulls.
    pub heartbeat_secs: u64,
    /// Bytes per second for pulling images (none: no limit).
    pub bandwidth: Option<u64>,
    /// Where the master's wake requests are sent (`[node] wake_broadcast`), `None`: not claimed.
    pub wake: Option<crate::net::wol::WakeTarget>,
    /// How the master's certificate is trusted (`[node] master_ca`, `master_fingerprint`).
    pub trust: crate::net::tls::Trust,
}

/// A checked config: what `fog serve` runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Our address on the clients' subnet (required with DHCP).
    pub address: Option<Ipv4Addr>,
    /// State directory.
    pub data_dir: PathBuf,
    /// Boot directory (HTTP and TFTP root).
    pub boot_dir: PathBuf,
    /// HTTP listen address, `None` when off.
    pub http: Option<SocketAddr>,
    /// TFTP, `None` when off (`root` defaults to the boot directory).
    pub tftp: Option<TftpConfig>,
    /// DHCP, `None` when off (`server_ip` defaults to the node address, `lease_file` to
    /// `data_dir/dhcp.leases`).
    pub dhcp: Option<DhcpConfig>,
    /// Boot files and menu.
    pub boot: BootFiles,
    /// The interface whose router solicitations are answered, `None` when off.
    pub ra: Option<String>,
    /// The node role (`[node] master`), `None` for a standalone node.
    pub master: Option<MasterLink>,
    /// `[store] memory_mib`: the memory budget of each store job.
    pub store_memory_mib: u64,
    /// `[multicast]`, `None` when off.
    pub multicast: Option<MulticastConfig>,
}

fn bad(key: &str, reason: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{key}: {reason}"))
}

fn socket_addr(key: &str, text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        bad(
            key,
            format!("{text:?} is not an ip:port address (e.g. \"0.0.0.0:8080\")"),
        )
    })
}

fn file_name(key: &str, value: Option<String>, default: &str) -> Result<String> {
    let name = value.unwrap_or_else(|| default.to_string());
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.bytes().all(|b| b.is_ascii_graphic());
    if plain {
        Ok(name)
    } else {
        Err(bad(
            key,
            format!("{name:?} is not a plain file name in the boot directory"),
        ))
    }
}

/// A relative path under the boot directory (`bootenv/vmlinuz`): no `..`, not absolute, plain
/// characters (it goes into an iPXE script and a URL).
fn boot_path(key: &str, value: Option<String>, default: &str) -> Result<String> {
    let path = value.unwrap_or_else(|| default.to_string());
    let plain = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b'+'));
    if plain {
        Ok(path)
    } else {
        Err(bad(
            key,
            format!("{path:?} is not a plain relative path under the boot directory (e.g. \"{default}\")"),
        ))
    }
}

fn master_link(node: &NodeFile, address: Option<Ipv4Addr>) -> Result<Option<MasterLink>> {
    let Some(url) = &node.master else {
        for (key, set) in [
            ("[node] name", node.name.is_some()),
            ("[node] token", node.token.is_some()),
            ("[node] token_file", node.token_file.is_some()),
            ("[node] heartbeat_secs", node.heartbeat_secs.is_some()),
            ("[node] bandwidth", node.bandwidth.is_some()),
            ("[node] wake_broadcast", node.wake_broadcast.is_some()),
        ] {
            if set {
                return Err(bad(key, "only means something with [node] master"));
            }
        }
        return Ok(None);
    };
    let url = url.trim().trim_end_matches('/').to_string();
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad(
            "[node] master",
            format!("{url:?} is not an http:// or https:// URL (e.g. \"http://master:8090\")"),
        ));
    }
    let name = node.name.clone().ok_or_else(|| {
        bad(
            "[node] name",
            "required with [node] master (the node's name on the master)",
        )
    })?;
    if crate::names::NodeName::new(name.as_str()).is_err() {
        return Err(bad(
            "[node] name",
            format!("{name:?} is not a node name (letters, digits, '.', '-', '_')"),
        ));
    }
    let token = match (&node.token, &node.token_file) {
        (Some(_), Some(_)) => return Err(bad("[node] token", "give token or token_file, not both")),
        (Some(token), None) => TokenSource::Inline(token.clone()),
        (None, Some(path)) => TokenSource::File(path.clone()),
        (None, None) => {
            return Err(bad(
                "[node] token_file",
                "required with [node] master (or [node] token): the node's token from `fog node add`",
            ));
        }
    };
    if let TokenSource::Inline(token) = &token
        && token.trim().is_empty()
    {
        return Err(bad("[node] token", "is empty"));
    }
    let heartbeat_secs = node.heartbeat_secs.unwrap_or(DEFAULT_HEARTBEAT_SECS);
    if !(1..=3600).contains(&heartbeat_secs) {
        return Err(bad("[node] heartbeat_secs", "must be 1 to 3600"));
    }
    if node.bandwidth == Some(0) {
        return Err(bad(
            "[node] bandwidth",
            "must be more than 0 bytes per second (leave it out for no limit)",
        ));
    }
    let wake = node
        .wake_broadcast
        .as_deref()
        .map(|text| crate::net::wol::WakeTarget::parse("[node] wake_broadcast", text, address))
        .transpose()?;
    let trust = crate::net::tls::Trust::from_options(node.master_ca.as_deref(), node.master_fingerprint.as_deref())
        .map_err(|e| bad("[node] master_ca / master_fingerprint", e.to_string()))?;
    Ok(Some(MasterLink {
        url,
        name,
        token,
        heartbeat_secs,
        bandwidth: node.bandwidth,
        wake,
        trust,
    }))
}

fn take_bool(table: &mut toml::Table, section: &str, key: &str) -> Result<Option<bool>> {
    match table.remove(key) {
        None => Ok(None),
        Some(toml::Value::Boolean(b)) => Ok(Some(b)),
        Some(other) => Err(bad(
            &format!("[{section}] {key}"),
            format!("{other} is not true or false"),
        )),
    }
}

/// A section that does not deserialize: the message names the field (`unknown field`,
/// `missing field`, `invalid type ... for key`).
fn section_error(section: &str, e: &toml::de::Error) -> Error {
    Error::InvalidInput(format!("[{section}] {}", e.message().trim_end()))
}

/// An error of a section's own checks, prefixed with the section.
fn in_section(section: &str, e: Error) -> Error {
    match e {
        Error::InvalidInput(m) => {
            let m = m.strip_prefix(&format!("{section}: ")).unwrap_or(&m).to_string();
            Error::InvalidInput(format!("[{section}] {m}"))
        }
        other => other,
    }
}

fn path_value(path: &Path) -> toml::Value {
    toml::Value::String(path.to_string_lossy().into_owned())
}

impl TryFrom<ServeFile> for ServeConfig {
    type Error = Error;

    fn try_from(file: ServeFile) -> Result<Self> {
        let address = match &file.node.address {
            None => None,
            Some(text) => Some(text.parse::<Ipv4Addr>().map_err(|_| {
                bad(
                    "[node] address",
                    format!("{text:?} is not an IPv4 address (e.g. \"10.99.0.1\")"),
                )
            })?),
        };
        if address.is_some_and(|a| a.is_unspecified() || a.is_broadcast() || a.is_multicast()) {
            return Err(bad(
                "[node] address",
                "must be this node's own unicast address on the clients' subnet",
            ));
        }
        let master = master_link(&file.node, address)?;
        let data_dir = file.node.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let boot_dir = file.node.boot_dir.unwrap_or_else(|| data_dir.join("boot"));
        for (key, dir) in [("[node] data_dir", &data_dir), ("[node] boot_dir", &boot_dir)] {
            if dir.as_os_str().is_empty() {
                return Err(bad(key, "is empty"));
            }
        }

        let http = match file.http.enabled {
            Some(false) => None,
            _ => Some(socket_addr(
                "[http] listen",
                file.http.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN),
            )?),
        };

        let boot = BootFiles {
            bios_file: file_name("[boot] bios_file", file.boot.bios_file, "undionly.kpxe")?,
            uefi_x64_file: file_name("[boot] uefi_x64_file", file.boot.uefi_x64_file, "ipxe.efi")?,
            uefi_arm64_file: file_name("[boot] uefi_arm64_file", file.boot.uefi_arm64_file, "ipxe-arm64.efi")?,
            secure_boot: file.boot.secure_boot.unwrap_or_default(),
            menu_timeout_ms: file.boot.menu_timeout_ms.unwrap_or(5000),
            menu_default: file.boot.menu_default.unwrap_or_else(|| "local".into()),
            agent_kernel: boot_path("[boot] agent_kernel", file.boot.agent_kernel, "bootenv/vmlinuz")?,
            agent_initrd: boot_path("[boot] agent_initrd", file.boot.agent_initrd, "bootenv/initrd.img")?,
        };
        let items: Vec<&str> = std::iter::once("local")
            .chain(crate::net::http::AGENT_ITEMS.iter().map(|(label, ..)| *label))
            .collect();
        if !items.contains(&boot.menu_default.as_str()) {
            return Err(bad(
                "[boot] menu_default",
                format!("{:?} is not one of {}", boot.menu_default, items.join(", ")),
            ));
        }
        if boot.menu_timeout_ms > 3_600_000 {
            return Err(bad("[boot] menu_timeout_ms", "more than an hour"));
        }

        let tftp = match file.tftp {
            None => None,
            Some(mut table) => match take_bool(&mut table, "tftp", "enabled")? {
                Some(false) => None,
                _ => {
                    table.entry("root").or_insert_with(|| path_value(&boot_dir));
                    let config: TftpConfig = table.try_into().map_err(|e| section_error("tftp", &e))?;
                    config.validate().map_err(|e| in_section("tftp", e))?;
                    Some(config)
                }
            },
        };

        let dhcp = match file.dhcp {
            None => None,
            Some(mut table) => {
                let mode = match table.get("mode") {
                    None => return Err(bad("[dhcp] mode", "missing: \"full\", \"proxy\" or \"off\"")),
                    Some(toml::Value::String(s)) => s.parse::<DhcpMode>()?,
                    Some(other) => return Err(bad("[dhcp] mode", format!("{other} is not a string"))),
                };
                if mode == DhcpMode::Off {
                    // Keys are still checked (a typo stays an error when DHCP is switched back on);
                    // values are not.
                    table.remove("mode");
                    table
                        .entry("server_ip")
                        .or_insert_with(|| toml::Value::String(Ipv4Addr::UNSPECIFIED.to_string()));
                    let _: DhcpConfig = table.try_into().map_err(|e| section_error("dhcp", &e))?;
                    None
                } else {
                    let Some(address) = address else {
                        return Err(bad(
                            "[node] address",
                            "required when [dhcp] mode is \"full\" or \"proxy\" (clients are sent to it)",
                        ));
                    };
                    table
                        .entry("server_ip")
                        .or_insert_with(|| toml::Value::String(address.to_string()));
                    table
                        .entry("lease_file")
                        .or_insert_with(|| path_value(&data_dir.join("dhcp.leases")));
                    let config: DhcpConfig = table.try_into().map_err(|e| section_error("dhcp", &e))?;
                    dhcp::check(&config).map_err(|e| in_section("dhcp", e))?;
                    Some(config)
                }
            }
        };

        let dhcp_interface = dhcp.as_ref().and_then(|d| d.interface.clone());
        let ra = match file.ra.enabled {
            Some(false) => None,
            Some(true) => Some(file.ra.interface.or(dhcp_interface).ok_or_else(|| {
                bad(
                    "[ra] interface",
                    "required with [ra] enabled = true when [dhcp] names none",
                )
            })?),
            None => match &dhcp {
                Some(d) if d.mode == dhcp::DhcpMode::Full => file.ra.interface.or(dhcp_interface),
                _ => None,
            },
        };
        if let Some(name) = ra.as_deref().filter(|n| !dhcp::valid_interface_name(n)) {
            return Err(bad("[ra] interface", format!("{name:?} is not a valid interface name")));
        }

        if http.is_none() && tftp.is_none() && dhcp.is_none() {
            return Err(Error::InvalidInput(
                "the config runs no service: [http] is disabled and there is no [tftp] or [dhcp]".into(),
            ));
        }
        let store_memory_mib = match file.store.memory_mib {
            None => crate::imaging::store::DEFAULT_MEMORY_MIB,
            Some(mib) => crate::imaging::store::check_memory_mib("[store] memory_mib", mib)?,
        };
        let multicast = file.multicast.check()?;
        Ok(ServeConfig {
            address,
            data_dir,
            boot_dir,
            http,
            tftp,
            dhcp,
            boot,
            ra,
            master,
            store_memory_mib,
            multicast,
        })
    }
}

/// The common cases without a config file (`fog serve --interface br0 --address 10.99.0.1
/// --dhcp full --range 10.99.0.100-10.99.0.200 --boot-dir DIR`): turned into the same
/// [`ServeFile`] a config would be, so the same checks apply.
#[derive(Debug, Clone, PartialEq)]
pub struct QuickServe {
    /// Interface the DHCP server binds to.
    pub interface: Option<String>,
    /// Our address on the clients' subnet; HTTP and TFTP listen on it.
    pub address: String,
    /// DHCP mode.
    pub dhcp: DhcpMode,
    /// `FIRST-LAST` addresses handed out in full mode.
    pub range: Option<String>,
    /// The subnet of the range (default: the /24 holding `address`).
    pub subnet: Option<String>,
    /// Boot directory.
    pub boot_dir: Option<PathBuf>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// HTTP port.
    pub http_port: u16,
    /// TFTP port, `None` for no TFTP.
    pub tftp_port: Option<u16>,
    /// `false` switches off the router advertisements that `[ra]` would send by default.
    pub router_advertisements: bool,
    /// `--node-master`: the node role's master URL.
    pub master: Option<String>,
    /// `--node-name`.
    pub node_name: Option<String>,
    /// `--node-token-file`.
    pub node_token_file: Option<PathBuf>,
    /// `--node-master-ca`.
    pub master_ca: Option<PathBuf>,
    /// `--node-master-fingerprint`.
    pub master_fingerprint: Option<String>,
    /// `--secure-boot`: how x64 UEFI clients boot.
    pub secure_boot: crate::net::boot::SecureBoot,
}

impl QuickServe {
    /// The config file these settings stand for.
    pub fn to_file(&self) -> Result<ServeFile> {
        let address: Ipv4Addr = self.address.parse().map_err(|_| {
            bad(
                "--address",
                format!("{:?} is not an IPv4 address (e.g. 10.99.0.1)", self.address),
            )
        })?;
        let mut file = ServeFile {
            node: NodeFile {
                address: Some(address.to_string()),
                data_dir: self.data_dir.clone(),
                boot_dir: self.boot_dir.clone(),
                master: self.master.clone(),
                name: self.node_name.clone(),
                token_file: self.node_token_file.clone(),
                master_ca: self.master_ca.clone(),
                master_fingerprint: self.master_fingerprint.clone(),
                ..NodeFile::default()
            },
            http: HttpFile {
                enabled: Some(true),
                listen: Some(SocketAddr::from((address, self.http_port)).to_string()),
            },
            boot: BootFile {
                secure_boot: Some(self.secure_boot),
                ..BootFile::default()
            },
            ..ServeFile::default()
        };
        if let Some(port) = self.tftp_port {
            let mut tftp = toml::Table::new();
            tftp.insert("listen".into(), SocketAddr::from((address, port)).to_string().into());
            file.tftp = Some(tftp);
        }
        if self.range.is_some() && self.dhcp != DhcpMode::Full {
            return Err(bad("--range", "only with --dhcp full"));
        }
        let mut dhcp = toml::Table::new();
        let mode = match self.dhcp {
            DhcpMode::Off => "off",
            DhcpMode::Full => "full",
            DhcpMode::Proxy => "proxy",
        };
        dhcp.insert("mode".into(), mode.into());
        if let Some(interface) = &self.interface {
            dhcp.insert("interface".into(), interface.clone().into());
        }
        if self.dhcp == DhcpMode::Full {
            let Some(range) = &self.range else {
                return Err(bad(
                    "--range",
                    "required with --dhcp full (e.g. 10.99.0.100-10.99.0.200)",
                ));
            };
            let parse = |s: &str| s.trim().parse::<Ipv4Addr>().ok();
            let (first, last) = range
                .split_once('-')
                .and_then(|(a, b)| Some((parse(a)?, parse(b)?)))
                .ok_or_else(|| {
                    bad(
                        "--range",
                        format!("{range:?} is not FIRST-LAST (e.g. 10.99.0.100-10.99.0.200)"),
                    )
                })?;
            let subnet = match &self.subnet {
                Some(s) => s.clone(),
                None => {
                    let [a, b, c, _] = address.octets();
                    format!("{a}.{b}.{c}.0/24")
                }
            };
            let mut pool = toml::Table::new();
            pool.insert("subnet".into(), subnet.into());
            pool.insert(
                "range".into(),
                toml::Value::Array(vec![first.to_string().into(), last.to_string().into()]),
            );
            pool.insert("router".into(), address.to_string().into());
            dhcp.insert("pools".into(), toml::Value::Array(vec![toml::Value::Table(pool)]));
        }
        file.dhcp = Some(dhcp);
        if !self.router_advertisements {
            file.ra.enabled = Some(false);
        }
        Ok(file)
    }
}

/// The line (1-based) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

impl ServeFile {
    /// Parses TOML text; `origin` (a file name) starts the error message, with the line.
    pub fn parse(text: &str, origin: &str) -> Result<ServeFile> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| format!(" line {}", line_of(text, s.start)))
                .unwrap_or_default();
            Error::InvalidInput(format!("{origin}{line}: {}", e.message().trim_end()))
        })
    }
}

impl ServeConfig {
    /// Parses and checks TOML text.
    pub fn parse(text: &str, origin: &str) -> Result<ServeConfig> {
        ServeConfig::try_from(ServeFile::parse(text, origin)?).map_err(|e| match e {
            Error::InvalidInput(m) => Error::InvalidInput(format!("{origin}: {m}")),
            other => other,
        })
    }

    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<ServeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        ServeConfig::parse(&text, &path.display().to_string())
    }

    /// The HTTP base URL clients are sent to (`http://address:port`), when both are known.
    pub fn http_base(&self) -> Option<String> {
        let listen = self.http?;
        let host = match (listen.ip(), self.address) {
            (IpAddr::V4(ip), _) if !ip.is_unspecified() => ip,
            (_, Some(address)) => address,
            _ => return None,
        };
        Some(if listen.port() == 80 {
            format!("http://{host}")
        } else {
            format!("http://{host}:{}", listen.port())
        })
    }

    /// Boot files named by the config that are not in the boot directory (a warning, not an
    /// error: `fog bootfiles install` puts them there).
    pub fn missing_boot_files(&self) -> Vec<PathBuf> {
        if self.tftp.is_none() && self.http.is_none() {
            return Vec::new();
        }
        [self.boot.bios_file.as_str(), self.boot.uefi_x64_file.as_str()]
            .into_iter()
            .chain(self.boot.secure_boot.signed_chain_files().iter().copied())
            .map(|f| self.boot_dir.join(f))
            .filter(|p| !p.is_file())
            .collect()
    }

    /// What the config means, for people: which services listen where, and what clients get.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let addr = self.address.map_or_else(|| "(not set)".to_string(), |a| a.to_string());
        let _ = writeln!(out, "node address  {addr}");
        let _ = writeln!(out, "data dir      {}", self.data_dir.display());
        let _ = writeln!(out, "boot dir      {}", self.boot_dir.display());
        match self.http {
            Some(listen) => {
                let base = self
                    .http_base()
                    .unwrap_or_else(|| format!("http://<node>:{}", listen.port()));
                let _ = writeln!(
                    out,
                    "http          tcp {listen}: {base}/boot.ipxe, {base}/boot/<mac>, files of the boot dir"
                );
            }
            None => {
                let _ = writeln!(out, "http          off");
            }
        }
        match &self.tftp {
            Some(t) => {
                let _ = writeln!(
                    out,
                    "tftp          udp {}: files of {} (blksize up to {}, windowsize up to {})",
                    t.listen,
                    t.root.display(),
                    t.max_blksize,
                    t.max_windowsize
                );
            }
            None => {
                let _ = writeln!(out, "tftp          off");
            }
        }
        match &self.dhcp {
            Some(d) => {
                let mode = match d.mode {
                    dhcp::DhcpMode::Full => "full (addresses and boot files)",
                    dhcp::DhcpMode::Proxy => "proxy (boot files only, beside another DHCP server)",
                };
                let on = d
                    .interface
                    .as_deref()
                    .map_or_else(String::new, |i| format!(" on interface {i}"));
                let _ = writeln!(
                    out,
                    "dhcp          {mode}, udp {}{on}, server {}",
                    d.listen, d.server_ip
                );
                if d.mode == dhcp::DhcpMode::Proxy {
                    match d.proxy_port {
                        Some(port) => {
                            let _ = writeln!(out, "              PXE boot server on udp port {port}");
                        }
                        None => {
                            let _ = writeln!(out, "              no PXE boot server port");
                        }
                    }
                } else {
                    let _ = writeln!(out, "              leases in {}", d.lease_file.display());
                }
                for pool in &d.pools {
                    let (first, last) = pool.range;
                    let _ = write!(
                        out,
                        "  pool {}: {first}-{last}, lease {} s",
                        pool.subnet, pool.lease_secs
                    );
                    if let Some(router) = pool.router {
                        let _ = write!(out, ", router {router}");
                    }
                    if !pool.dns.is_empty() {
                        let dns: Vec<String> = pool.dns.iter().map(Ipv4Addr::to_string).collect();
                        let _ = write!(out, ", dns {}", dns.join(" "));
                    }
                    if let Some(domain) = &pool.domain {
                        let _ = write!(out, ", domain {domain}");
                    }
                    let _ = writeln!(
                        out,
                        ", {} reservations, {} custom options",
                        pool.reservations.len(),
                        pool.options.len()
                    );
                }
            }
            None => {
                let _ = writeln!(out, "dhcp          off");
            }
        }
        match &self.ra {
            Some(interface) => {
                let _ = writeln!(
                    out,
                    "ipv6 ra       answers router solicitations on {interface} (no IPv6 router here: iPXE stops waiting)"
                );
            }
            None => {
                let _ = writeln!(out, "ipv6 ra       off");
            }
        }
        let ipxe = self
            .http_base()
            .map_or_else(|| "the HTTP script".to_string(), |b| format!("{b}/boot.ipxe"));
        let _ = writeln!(out, "boot files    BIOS -> {} (tftp)", self.boot.bios_file);
        match self.boot.secure_boot {
            crate::net::boot::SecureBoot::Auto => {
                let _ = writeln!(
                    out,
                    "              UEFI x64 -> {} -> {} -> the signed kernel (tftp; secure_boot = \"auto\")",
                    crate::net::boot::SHIM_FILE,
                    crate::net::boot::SIGNED_GRUB_FILE
                );
            }
            crate::net::boot::SecureBoot::Off => {
                let _ = writeln!(out, "              UEFI x64 -> {} (tftp)", self.boot.uefi_x64_file);
            }
        }
        let _ = writeln!(out, "              UEFI arm64 -> {} (tftp)", self.boot.uefi_arm64_file);
        let _ = writeln!(out, "              iPXE -> {ipxe}");
        let _ = writeln!(
            out,
            "menu          takes {:?} after {} ms",
            self.boot.menu_default, self.boot.menu_timeout_ms
        );
        match &self.master {
            Some(m) => {
                let token = match &m.token {
                    TokenSource::Inline(_) => "token in the config".to_string(),
                    TokenSource::File(path) => format!("token from {}", path.display()),
                };
                let _ = writeln!(
                    out,
                    "node role     {} on master {} ({token}), heartbeat every {} s",
                    m.name, m.url, m.heartbeat_secs
                );
                let _ = writeln!(
                    out,
                    "              hosts with a task boot {} + {} (boot dir); others get the menu",
                    self.boot.agent_kernel, self.boot.agent_initrd
                );
                let _ = match &m.wake {
                    Some(w) => writeln!(
                        out,
                        "wake-on-lan   the master's wake requests go to udp {}{}",
                        w.broadcast,
                        w.bind.map(|b| format!(" from {b}")).unwrap_or_default()
                    ),
                    None => writeln!(out, "wake-on-lan   off (no [node] wake_broadcast)"),
                };
            }
            None => {
                let _ = writeln!(out, "node role     standalone (no [node] master)");
            }
        }
        out
    }
}

impl ServeConfig {
    /// The menu hosts without a script of their own get.
    pub fn menu(&self) -> crate::net::http::DefaultMenu {
        crate::net::http::DefaultMenu {
            timeout_ms: self.boot.menu_timeout_ms,
            agent: Some(crate::net::http::AgentFiles {
                kernel: self.boot.agent_kernel.clone(),
                initrd: self.boot.agent_initrd.clone(),
            }),
            default_item: self.boot.menu_default.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match ServeConfig::parse(text, "fog.toml") {
            Ok(config) => panic!("accepted {text:?}: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_run_http_only() -> Result<()> {
        let config = ServeConfig::parse("", "fog.toml")?;
        assert_eq!(config.http, Some(socket_addr("x", DEFAULT_HTTP_LISTEN)?));
        assert!(config.tftp.is_none() && config.dhcp.is_none());
        assert_eq!(config.boot_dir, Path::new("/var/lib/fog/boot"));
        assert_eq!(config.boot.uefi_x64_file, "ipxe.efi");
        Ok(())
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[node]\nadress = \"1.2.3.4\"\n").contains("line 2: unknown field `adress`"));
        assert!(err("[nod]\n").contains("unknown field `nod`"));
        assert!(err("[node]\naddress = \"10.99.0.300\"\n").contains("[node] address"));
        assert!(err("[http]\nlisten = \"0.0.0.0\"\n").contains("[http] listen"));
        assert!(err("[boot]\nuefi_x64_file = \"../x.efi\"\n").contains("[boot] uefi_x64_file"));
        assert!(err("[dhcp]\nmode = \"ful\"\n").contains("[dhcp] mode"));
        assert!(err("[dhcp]\nmode = \"proxy\"\n").contains("[node] address"));
        assert!(err("[tftp]\nenabled = 1\n").contains("[tftp] enabled"));
        assert!(err("[tftp]\nlisten = \"x:69\"\n").contains("[tftp]"));
        assert!(err("[tftp]\nmax_blksize = 4\n").contains("[tftp] max_blksize"));
        assert!(err("[tftp]\nblksize = 512\n").contains("[tftp] unknown field `blksize`"));
        assert!(err("[node]\naddress = \"10.0.0.1\"\n[dhcp]\nmode = \"full\"\n").contains("[dhcp]"));
        assert!(
            err("[node]\naddress = \"10.0.0.1\"\n[dhcp]\nmode = \"proxy\"\nintreface = \"br0\"\n")
                .contains("[dhcp] unknown field `intreface`")
        );
        assert!(err("[http]\nenabled = false\n").contains("no service"));
        assert!(err("[node]\nmaster = \"ftp://m\"\nname = \"a\"\ntoken = \"t\"\n").contains("[node] master"));
        assert!(err("[node]\nmaster = \"http://m:8090\"\ntoken = \"t\"\n").contains("[node] name"));
        assert!(err("[node]\nmaster = \"http://m:8090\"\nname = \"a b\"\ntoken = \"t\"\n").contains("[node] name"));
        assert!(err("[node]\nmaster = \"http://m:8090\"\nname = \"a\"\n").contains("[node] token_file"));
        assert!(
            err("[node]\nmaster = \"http://m\"\nname = \"a\"\ntoken = \"t\"\nheartbeat_secs = 0\n")
                .contains("[node] heartbeat_secs")
        );
        assert!(err("[node]\nname = \"a\"\n").contains("[node] name"));
        assert!(err("[boot]\nagent_kernel = \"../vmlinuz\"\n").contains("[boot] agent_kernel"));
        assert!(err("[boot]\nagent_initrd = \"/initrd\"\n").contains("[boot] agent_initrd"));
    }

    #[test]
    fn node_role_reads_the_master_section() -> Result<()> {
        let config = ServeConfig::parse(
            "[node]\nmaster = \"http://m:8090/\"\nname = \"site-a\"\ntoken_file = \"/etc/fog/t\"\n",
            "fog.toml",
        )?;
        let link = config.master.as_ref().ok_or(Error::Cancelled)?;
        assert_eq!(link.url, "http://m:8090");
        assert_eq!(link.token, TokenSource::File(PathBuf::from("/etc/fog/t")));
        assert_eq!(link.heartbeat_secs, DEFAULT_HEARTBEAT_SECS);
        assert_eq!(config.boot.agent_kernel, "bootenv/vmlinuz");
        let text = config.describe();
        assert!(text.contains("site-a on master http://m:8090") && text.contains("bootenv/initrd.img"));
        assert!(!format!("{:?}", TokenSource::Inline("secret".into())).contains("secret"));
        assert!(ServeConfig::parse("", "fog.toml")?.master.is_none());
        assert!(link.wake.is_none(), "no wake target unless configured");
        assert!(text.contains("wake-on-lan   off"));
        Ok(())
    }

    #[test]
    fn wake_broadcast_needs_a_master_and_sends_from_the_node_address() -> Result<()> {
        let base = "[node]\naddress = \"10.99.0.1\"\nmaster = \"http://m:8090\"\nname = \"a\"\ntoken = \"t\"\n";
        let config = ServeConfig::parse(&format!("{base}wake_broadcast = \"10.99.0.255\"\n"), "fog.toml")?;
        let wake = config.master.as_ref().and_then(|m| m.wake).ok_or(Error::Cancelled)?;
        assert_eq!(wake.broadcast.to_string(), "10.99.0.255:9");
        assert_eq!(wake.bind, Some(Ipv4Addr::new(10, 99, 0, 1)));
        assert!(config.describe().contains("udp 10.99.0.255:9 from 10.99.0.1"));
        assert!(err(&format!("{base}wake_broadcast = \"br0\"\n")).contains("wake_broadcast"));
        assert!(err("[node]\nwake_broadcast = \"10.99.0.255\"\n").contains("[node] wake_broadcast"));
        Ok(())
    }

    #[test]
    fn fills_in_the_node_values() -> Result<()> {
        let config = ServeConfig::parse(
            "[node]\naddress = \"10.99.0.1\"\nboot_dir = \"/srv/boot\"\n[tftp]\n[dhcp]\nmode = \"proxy\"\n",
            "fog.toml",
        )?;
        let tftp = config.tftp.as_ref().ok_or(Error::Cancelled)?;
        assert_eq!(tftp.root, Path::new("/srv/boot"));
        assert_eq!(tftp.listen, socket_addr("x", "0.0.0.0:69")?);
        let dhcp = config.dhcp.as_ref().ok_or(Error::Cancelled)?;
        assert_eq!(dhcp.server_ip, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(dhcp.lease_file, Path::new("/var/lib/fog/dhcp.leases"));
        assert_eq!(config.http_base().as_deref(), Some("http://10.99.0.1:8080"));
        let off = ServeConfig::parse("[dhcp]\nmode = \"off\"\n", "fog.toml")?;
        assert!(off.dhcp.is_none());
        Ok(())
    }

    #[test]
    fn router_advertisements_follow_full_dhcp_unless_switched() -> Result<()> {
        let full = "[node]\naddress = \"10.99.0.1\"\n[dhcp]\nmode = \"full\"\ninterface = \"br0\"\n\
                    [[dhcp.pools]]\nsubnet = \"10.99.0.0/24\"\nrange = [\"10.99.0.100\", \"10.99.0.200\"]\n";
        assert_eq!(ServeConfig::parse(full, "fog.toml")?.ra.as_deref(), Some("br0"));
        let off = format!("{full}[ra]\nenabled = false\n");
        assert_eq!(ServeConfig::parse(&off, "fog.toml")?.ra, None);
        let proxy = "[node]\naddress = \"10.99.0.1\"\n[dhcp]\nmode = \"proxy\"\ninterface = \"br0\"\n";
        assert_eq!(
            ServeConfig::parse(proxy, "fog.toml")?.ra,
            None,
            "not our subnet: off unless asked"
        );
        let asked = format!("{proxy}[ra]\nenabled = true\ninterface = \"eth1\"\n");
        assert_eq!(ServeConfig::parse(&asked, "fog.toml")?.ra.as_deref(), Some("eth1"));
        assert!(err("[ra]\nenabled = true\n").contains("[ra] interface"));
        assert!(err("[ra]\nenabled = true\ninterface = \"a/b\"\n").contains("[ra] interface"));
        assert!(err("[ra]\nenable = true\n").contains("unknown field `enable`"));
        Ok(())
    }

    #[test]
    fn store_memory_budget_defaults_and_has_a_floor() -> Result<()> {
        let base = "[node]\naddress = \"10.99.0.1\"\n";
        assert_eq!(ServeConfig::parse(base, "fog.toml")?.store_memory_mib, 256);
        let set = format!("{base}[store]\nmemory_mib = 64\n");
        assert_eq!(ServeConfig::parse(&set, "fog.toml")?.store_memory_mib, 64);
        assert!(err(&format!("{base}[store]\nmemory_mib = 4\n")).contains("[store] memory_mib"));
        Ok(())
    }
}
