//! Network services a node runs for its subnet: PXE-aware DHCP (full or proxy), TFTP and HTTP
//! boot, Wake-on-LAN, and the server that starts them from a config.

pub mod boot;
pub mod bootfiles;
pub mod config;
pub mod dhcp;
pub mod grub;
pub mod http;
pub mod multicast;
pub mod ra;
pub mod server;
pub mod tftp;
pub mod tls;
pub mod wol;
