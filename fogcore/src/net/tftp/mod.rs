//! TFTP server for PXE: read-only, RFC 1350 with option negotiation (RFC 2347), `blksize`
//! (RFC 2348), `tsize` and `timeout` (RFC 2349) and `windowsize` (RFC 7440).
//!
//! - [`codec`]: packets from bytes and back, no I/O.
//! - [`transfer`]: one read transfer as a state machine (packets and clock in, sends out).
//! - [`path`]: the root jail.
//! - [`TftpServer`]: owns the sockets; every transfer runs on its own ephemeral port (TID).
//!
//! Files come from the root directory, or first from a [`VirtualFiles`] handler (a script
//! generated per client). Write requests are refused: the server is read-only.
//!
//! ```no_run
//! use fogcore::net::tftp::{TftpConfig, TftpServer};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> fogcore::Result<()> {
//! let server = TftpServer::bind(TftpConfig::new("/srv/fog/boot"), None).await?;
//! println!("TFTP on {}", server.local_addr());
//! server.run(CancellationToken::new()).await
//! # }
//! ```

pub mod codec;
pub mod path;
mod server;
pub mod transfer;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use server::TftpServer;

/// TFTP settings, the `[tftp]` table of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpConfig {
    /// Address and port to listen on (default `0.0.0.0:69`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory served; nothing outside it is reachable.
    pub root: PathBuf,
    /// Transfers at once; a request beyond it gets ERROR 0 "server busy" (default 1024).
    #[serde(default = "default_max_transfers")]
    pub max_transfers: usize,
    /// Retransmission timeout in milliseconds when the client asks none (default 1000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retransmissions of a packet before the transfer is abandoned (default 5).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Largest block size granted (default 1468: one Ethernet frame, no IP fragments; up to
    /// 65464).
    #[serde(default = "default_max_blksize")]
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440, default 64; up to 32768).
    #[serde(default = "default_max_windowsize")]
    pub max_windowsize: u16,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 69))
}
fn default_max_transfers() -> usize {
    1024
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_retries() -> u32 {
    5
}
fn default_max_blksize() -> u16 {
    1468
}
fn default_max_windowsize() -> u16 {
    64
}

impl TftpConfig {
    /// The defaults, serving `root`.
    pub fn new(root: impl Into<PathBuf>) -> TftpConfig {
        TftpConfig {
            listen: default_listen(),
            root: root.into(),
            max_transfers: default_max_transfers(),
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
            max_blksize: default_max_blksize(),
            max_windowsize: default_max_windowsize(),
        }
    }

    /// Checks every value; the error names the field and what is allowed.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |msg: String| Err(crate::Error::InvalidInput(format!("tftp: {msg}")));
        if self.max_transfers == 0 {
            return bad("max_transfers must be at least 1".into());
        }
        if !(1..=255_000).contains(&self.timeout_ms) {
            return bad(format!("timeout_ms {} is not in 1..=255000", self.timeout_ms));
        }
        if !(transfer::MIN_BLKSIZE..=transfer::MAX_BLKSIZE).contains(&self.max_blksize) {
            return bad(format!("max_blksize {} is not in 8..=65464", self.max_blksize));
        }
        if !(1..=transfer::MAX_WINDOWSIZE).contains(&self.max_windowsize) {
            return bad(format!("max_windowsize {} is not in 1..=32768", self.max_windowsize));
        }
        Ok(())
    }

    pub(crate) fn limits(&self) -> transfer::Limits {
        transfer::Limits {
            max_blksize: self.max_blksize,
            max_windowsize: self.max_windowsize,
            timeout: Duration::from_millis(self.timeout_ms),
            retries: self.retries,
        }
    }
}

/// Files that do not come from the root directory, e.g. a boot script generated per client.
/// Asked before the disk for every read request whose name passed the root jail.
pub trait VirtualFiles: Send + Sync {
    /// Content for `path` (normalised: relative, `/`-separated, no leading `/`, no `..`) as
    /// requested by `client`, or `None` to serve it from disk.
    fn open(&self, path: &str, client: SocketAddr) -> Option<bytes::Bytes>;
}

/// Several [`VirtualFiles`] handlers, asked in order.
pub struct ChainedFiles(pub Vec<std::sync::Arc<dyn VirtualFiles>>);

impl VirtualFiles for ChainedFiles {
    fn open(&self, path: &str, client: SocketAddr) -> Option<bytes::Bytes> {
        self.0.iter().find_map(|files| files.open(path, client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: TftpConfig = toml::from_str("root = \"/srv/boot\"").expect("parse");
        assert_eq!(c, TftpConfig::new("/srv/boot"));
        assert!(c.validate().is_ok());
        let c: TftpConfig =
            toml::from_str("root = \"/b\"\nlisten = \"127.0.0.1:6969\"\nmax_blksize = 8192").expect("parse");
        assert_eq!(c.listen, "127.0.0.1:6969".parse().expect("addr"));
        assert_eq!(c.max_blksize, 8192);
        assert!(toml::from_str::<TftpConfig>("root = \"/b\"\nblksize = 1").is_err());
        assert!(
            toml::from_str::<TftpConfig>("listen = \"0.0.0.0:69\"").is_err(),
            "root is required"
        );
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut c = TftpConfig::new("/b");
        c.max_blksize = 4;
        assert!(
            c.validate()
                .expect_err("small blksize")
                .to_string()
                .contains("max_blksize")
        );
        let mut c = TftpConfig::new("/b");
        c.max_transfers = 0;
        assert!(c.validate().expect_err("zero").to_string().contains("max_transfers"));
    }
}
