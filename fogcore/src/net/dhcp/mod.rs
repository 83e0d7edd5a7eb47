//! DHCP for PXE: full mode (address pools, reservations, durable leases) or proxy mode (boot
//! information only, beside another DHCP server), on the dhcproto codec.
//!
//! - [`config`]: the `[dhcp]` section of `fog.toml`.
//! - [`engine`]: the pure decision logic (bytes in, reply and lease record out), unit-tested.
//! - [`lease`]: the lease table, the durable lease log, and the injectable clock.
//! - [`options`]: reply options, PXE boot information, padding.
//! - [`server`]: sockets and group commit.
//!
//! ```no_run
//! use std::sync::Arc;
//! use fogcore::net::boot::DefaultBootPolicy;
//! use fogcore::net::dhcp::{DhcpConfig, DhcpMode, DhcpServer, Pool};
//!
//! # async fn demo() -> fogcore::Result<()> {
//! let server_ip = "10.99.0.1".parse().expect("address");
//! let mut config = DhcpConfig::new(DhcpMode::Full, server_ip, "/var/lib/fog/dhcp.leases");
//! config.interface = Some("br0".into());
//! config.pools.push(Pool::new("10.99.0.0/24".parse()?, "10.99.0.100".parse().expect("a"), "10.99.0.200".parse().expect("a")));
//! let server = DhcpServer::bind(config, Arc::new(DefaultBootPolicy::new(server_ip, 80))).await?;
//! server.run(tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

pub mod config;
pub mod engine;
pub mod lease;
pub mod options;
pub mod server;

#[cfg(test)]
mod tests;

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub(crate) use config::valid_interface_name;
pub use config::{CustomOption, DhcpConfig, DhcpMode, IpList, Mac, Pool, Reservation, Subnet, check};
pub use lease::{LeaseTable, Record};
pub use server::DhcpServer;
