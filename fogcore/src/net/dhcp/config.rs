//! DHCP configuration: the serde form embedded under `[dhcp]` in `fog.toml`, and its checked form
//! (masks computed, ranges and reservations validated, custom options encoded) used by the engine.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Whether fog owns the addresses of the subnet or only adds boot information beside another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// fog hands out addresses from its pools (and boot files to PXE clients).
    #[default]
    Full,
    /// Another server owns the addresses; fog answers only PXE clients, with boot information.
    Proxy,
}

/// The DHCP service of a node (`[dhcp]` in `fog.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    /// Full or proxy.
    #[serde(default)]
    pub mode: DhcpMode,
    /// Interface to serve (SO_BINDTODEVICE): needed for broadcast replies on a multi-homed node or in
    /// a namespace without a default route.
    #[serde(default)]
    pub interface: Option<String>,
    /// Address of the main socket (default `0.0.0.0:67`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PXE boot server port answered in proxy mode (default 4011); `None` disables it. Ignored in
    /// full mode.
    #[serde(default = "default_proxy_port")]
    pub proxy_port: Option<u16>,
    /// Our address on the clients' subnet: server identifier, and the pool of non-relayed clients.
    pub server_ip: Ipv4Addr,
    /// Address pools (full mode), one per subnet.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// The lease log (append-only, fsynced before each ACK, compacted).
    #[serde(default = "default_lease_file")]
    pub lease_file: PathBuf,
    /// How long an offered address is held for the client that was offered it.
    #[serde(default = "default_offer_secs")]
    pub offer_secs: u32,
    /// How long an address a client declined (found in use) is kept out of the pool.
    #[serde(default = "default_decline_secs")]
    pub decline_secs: u32,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 67))
}
fn default_proxy_port() -> Option<u16> {
    Some(4011)
}
fn default_lease_file() -> PathBuf {
    PathBuf::from("/var/lib/fog/dhcp.leases")
}
fn default_offer_secs() -> u32 {
    60
}
fn default_decline_secs() -> u32 {
    600
}
fn default_lease_secs() -> u32 {
    3600
}

impl DhcpConfig {
    /// A full-mode config with no pools, listening on `0.0.0.0:67`, defaults elsewhere.
    pub fn new(mode: DhcpMode, server_ip: Ipv4Addr, lease_file: impl Into<PathBuf>) -> Self {
        DhcpConfig {
            mode,
            interface: None,
            listen: default_listen(),
            proxy_port: default_proxy_port(),
            server_ip,
            pools: Vec::new(),
            lease_file: lease_file.into(),
            offer_secs: default_offer_secs(),
            decline_secs: default_decline_secs(),
        }
    }
}

/// An address pool on one subnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// The subnet, e.g. `10.99.0.0/24`. Relayed clients get the pool whose subnet holds giaddr.
    pub subnet: Subnet,
    /// First and last address handed out dynamically (inclusive).
    pub range: (Ipv4Addr, Ipv4Addr),
    /// Default gateway (option 3).
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    #[serde(default)]
    pub domain: Option<String>,
    /// Lease time in seconds (option 51; T1 and T2 are 1/2 and 7/8 of it).
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    /// Fixed addresses by MAC (inside the subnet, may be outside the range).
    #[serde(default)]
    pub reservations: Vec<Reservation>,
    /// Any other option, sent to every client of the pool; 66/67 override the boot policy's.
    #[serde(default)]
    pub options: Vec<CustomOption>,
}

impl Pool {
    /// A pool on `subnet` handing out `first..=last`, one hour leases, nothing else.
    pub fn new(subnet: Subnet, first: Ipv4Addr, last: Ipv4Addr) -> Self {
        Pool {
            subnet,
            range: (first, last),
            router: None,
            dns: Vec::new(),
            domain: None,
            lease_secs: default_lease_secs(),
            reservations: Vec::new(),
            options: Vec::new(),
        }
    }
}

/// A fixed address for one MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// Client hardware address.
    pub mac: Mac,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Host name sent as option 12.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// A DHCP option from the config: its code and exactly one of `text`, `hex`, `ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomOption {
    /// Option code (1..=254, not 53).
    pub code: u8,
    /// The value as text (e.g. option 67 `"undionly.kpxe"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The value as hex bytes (e.g. option 43 `"060108ff"`; `:` and spaces allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    /// The value as one or more IPv4 addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpList>,
}

/// One address or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IpList {
    /// `ip = "10.0.0.1"`
    One(Ipv4Addr),
    /// `ip = ["10.0.0.1", "10.0.0.2"]`
    Many(Vec<Ipv4Addr>),
}

impl CustomOption {
    /// The option's value bytes, or why the config entry is wrong.
    pub fn value(&self) -> Result<Vec<u8>> {
        let code = self.code;
        let bad = |why: String| Error::InvalidInput(format!("dhcp option {code}: {why}"));
        if matches!(code, 0 | 53 | 255) {
            return Err(bad("this code cannot be set from the config".into()));
        }
        let value = match (&self.text, &self.hex, &self.ip) {
            (Some(text), None, None) => text.as_bytes().to_vec(),
            (None, Some(hex), None) => parse_hex(hex).map_err(bad)?,
            (None, None, Some(IpList::One(ip))) => ip.octets().to_vec(),
            (None, None, Some(IpList::Many(ips))) => ips.iter().flat_map(|ip| ip.octets()).collect(),
            _ => return Err(bad("give exactly one of text, hex, ip".into())),
        };
        if value.is_empty() {
            return Err(bad("empty value".into()));
        }
        Ok(value)
    }
}

fn parse_hex(s: &str) -> std::result::Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !matches!(b, b':' | b' ' | b'-')).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("hex value {s:?} has an odd number of digits"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("hex value {s:?} is not hex"))
        })
        .collect()
}

/// An IPv4 subnet, written `10.99.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    /// Network address (host bits zero).
    pub network: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Subnet {
    /// `network/prefix`; host bits of `network` are cleared.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self> {
        if prefix > 32 {
            return Err(Error::InvalidInput(format!(
                "subnet {network}/{prefix}: prefix over 32"
            )));
        }
        let mask = mask_bits(prefix);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(network) & mask),
            prefix,
        })
    }

    /// The subnet mask.
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask_bits(self.prefix))
    }

    /// True when `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix) == u32::from(self.network)
    }
}

fn mask_bits(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidInput(format!("subnet {s:?}: expected ADDRESS/PREFIX, e.g. 10.99.0.0/24"));
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        // Written as SUBNET_PATTERN says: no sign, no leading zero.
        if prefix.is_empty() || prefix.len() > 2 || (prefix.starts_with('0') && prefix != "0") {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Subnet::new(addr, prefix)
    }
}

/// [`Subnet`]'s written form as a regular expression (for the API's document).
pub const SUBNET_PATTERN: &str = concat!(
    r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    r"/(?:3[0-2]|[12]?[0-9])$"
);

impl schemars::JsonSchema for Subnet {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Subnet".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": SUBNET_PATTERN,
            "description": "An IPv4 subnet, ADDRESS/PREFIX (10.99.0.0/24)",
        })
    }
}

impl TryFrom<String> for Subnet {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

pub use crate::names::Mac;

/// A pool after checking: integers for the range, reservations indexed, options encoded.
#[derive(Debug, Clone)]
pub(crate) struct CheckedPool {
    pub subnet: Subnet,
    pub first: u32,
    pub last: u32,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_secs: u32,
    pub by_mac: HashMap<Mac, (Ipv4Addr, Option<String>)>,
    pub reserved_ips: HashSet<Ipv4Addr>,
    /// (code, value) in config order.
    pub options: Vec<(u8, Vec<u8>)>,
}

impl CheckedPool {
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }
    #[cfg(test)]
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options.iter().find(|(c, _)| *c == code).map(|(_, v)| v.as_slice())
    }
}

/// Whether `name` can be a Linux interface name (IFNAMSIZ, no `/`, NUL or whitespace).
pub(crate) fn valid_interface_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && !name.contains(['/', '\0']) && !name.contains(char::is_whitespace)
}

/// The whole config after checking.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub mode: DhcpMode,
    pub server_ip: Ipv4Addr,
    pub pools: Vec<CheckedPool>,
    pub offer_secs: u32,
    pub decline_secs: u32,
}

impl Checked {
    /// The pool whose subnet holds `ip`.
    pub fn pool_for(&self, ip: Ipv4Addr) -> Option<usize> {
        self.pools.iter().position(|p| p.subnet.contains(ip))
    }
}

impl TryFrom<&DhcpConfig> for Checked {
    type Error = Error;

    fn try_from(c: &DhcpConfig) -> Result<Self> {
        let bad = |s: String| Err(Error::InvalidInput(format!("dhcp: {s}")));
        if c.server_ip.is_unspecified() || c.server_ip.is_broadcast() {
            return bad(format!(
                "server_ip {} must be this node's address on the clients' subnet",
                c.server_ip
            ));
        }
        if c.mode == DhcpMode::Full && c.pools.is_empty() {
            return bad("full mode needs at least one [[dhcp.pools]]".into());
        }
        if c.interface.as_deref().is_some_and(|i| !valid_interface_name(i)) {
            return bad(format!("interface {:?} is not a valid interface name", c.interface));
        }
        let mut pools: Vec<CheckedPool> = Vec::new();
        for p in &c.pools {
            let s = p.subnet;
            let (first, last) = p.range;
            if !s.contains(first) || !s.contains(last) {
                return bad(format!("pool {s}: range {first}-{last} is not inside the subnet"));
            }
            if u32::from(first) > u32::from(last) {
                return bad(format!("pool {s}: range {first}-{last} is reversed"));
            }
            if s.prefix < 31 && (first == s.network || last == s.broadcast()) {
                return bad(format!(
                    "pool {s}: range {first}-{last} includes the network or broadcast address"
                ));
            }
            if p.lease_secs < 10 {
                return bad(format!(
                    "pool {s}: lease_secs {} is too short (at least 10)",
                    p.lease_secs
                ));
            }
            if let Some(other) = pools
                .iter()
                .find(|o| o.subnet.contains(s.network) || s.contains(o.subnet.network))
            {
                return bad(format!("pools {} and {s} overlap", other.subnet));
            }
            let mut by_mac = HashMap::new();
            let mut reserved_ips = HashSet::new();
            for r in &p.reservations {
                if !s.contains(r.ip) {
                    return bad(format!(
                        "pool {s}: reservation {} for {} is outside the subnet",
                        r.ip, r.mac
                    ));
                }
                if by_mac.insert(r.mac, (r.ip, r.hostname.clone())).is_some() {
                    return bad(format!("pool {s}: two reservations for {}", r.mac));
                }
                if !reserved_ips.insert(r.ip) {
                    return bad(format!("pool {s}: {} is reserved twice", r.ip));
                }
            }
            let mut options = Vec::new();
            for o in &p.options {
                let value = o
                    .value()
                    .map_err(|e| Error::InvalidInput(format!("dhcp: pool {s}: {e}")))?;
                options.retain(|(code, _)| *code != o.code);
                options.push((o.code, value));
            }
            pools.push(CheckedPool {
                subnet: s,
                first: u32::from(first),
                last: u32::from(last),
                router: p.router,
                dns: p.dns.clone(),
                domain: p.domain.clone(),
                lease_secs: p.lease_secs,
                by_mac,
                reserved_ips,
                options,
            });
        }
        Ok(Checked {
            mode: c.mode,
            server_ip: c.server_ip,
            pools,
            offer_secs: c.offer_secs.max(1),
            decline_secs: c.decline_secs,
        })
    }
}

/// Checks a config without binding anything (for `fog config check`).
pub fn check(config: &DhcpConfig) -> Result<()> {
    Checked::try_from(config).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config_from_toml() {
        let text = r#"
            mode = "full"
            interface = "br0"
            server_ip = "10.99.0.1"
            lease_file = "/tmp/x.leases"
            [[pools]]
            subnet = "10.99.0.0/24"
            range = ["10.99.0.100", "10.99.0.200"]
            router = "10.99.0.1"
            dns = ["10.99.0.1", "9.9.9.9"]
            domain = "lab"
            lease_secs = 600
            reservations = [{ mac = "52:54:00:00:00:01", ip = "10.99.0.50", hostname = "pc1" }]
            options = [
              { code = 66, ip = "10.99.0.1" },
              { code = 43, hex = "06:01:08:ff" },
              { code = 252, text = "http://x/wpad.dat" },
            ]
        "#;
        let c: DhcpConfig = toml::from_str(text).expect("parses");
        assert_eq!(c.listen, "0.0.0.0:67".parse().expect("addr"));
        assert_eq!(c.proxy_port, Some(4011));
        let checked = Checked::try_from(&c).expect("valid");
        let pool = &checked.pools[0];
        assert_eq!(pool.option(43), Some(&[6u8, 1, 8, 0xff][..]));
        assert_eq!(pool.option(66), Some(&[10u8, 99, 0, 1][..]));
        assert_eq!(pool.subnet.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(
            pool.by_mac
                .contains_key(&"52:54:00:00:00:01".parse::<Mac>().expect("mac"))
        );
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(toml::from_str::<DhcpConfig>("server_ip = \"10.0.0.1\"\nbogus = 1").is_err());
        assert!("10.0.0.0/33".parse::<Subnet>().is_err());
        assert!("52:54:00:00:00".parse::<Mac>().is_err());
        let mut c = DhcpConfig::new(DhcpMode::Full, Ipv4Addr::new(10, 0, 0, 1), "/tmp/l");
        assert!(check(&c).is_err(), "full mode without pools");
        let subnet: Subnet = "10.0.0.0/24".parse().expect("subnet");
        c.pools.push(Pool::new(
            subnet,
            Ipv4Addr::new(10, 0, 1, 1),
            Ipv4Addr::new(10, 0, 1, 9),
        ));
        assert!(check(&c).is_err(), "range outside subnet");
        c.pools[0].range = (Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 20));
        check(&c).expect("valid now");
        c.pools[0].options.push(CustomOption {
            code: 67,
            text: Some("a".into()),
            hex: Some("00".into()),
            ip: None,
        });
        assert!(check(&c).is_err(), "two values for one option");
    }
}
