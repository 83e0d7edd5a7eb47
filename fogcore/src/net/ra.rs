//! IPv6 router advertisements that let PXE clients stop waiting.
//!
//! iPXE configures IPv4 and IPv6 side by side and boots only when both are done; on a subnet with
//! no IPv6 router it waits about 13 s for a router advertisement that never comes — for every
//! machine, at every boot. The node answers each router solicitation on its interface with an
//! advertisement that offers nothing: router lifetime 0 (not a default router), no prefix, no
//! DHCPv6 flags. Clients learn "no IPv6 here" at once and go on with IPv4.
//!
//! Replies go unicast to the soliciting link-local address (multicast to all nodes for a client
//! that has none yet), so a room of machines booting together is not rate-limited the way a
//! router's multicast advertisements are.

use std::ffi::CString;
use std::io::ErrorKind;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// ff02::1, all nodes.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ff02::2, all routers: where solicitations go.
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// The advertisement (RFC 4861 4.2): hop limit 64, no flags, router lifetime 0, reachable and
/// retransmit times unspecified, no options. The kernel fills in the ICMPv6 checksum.
pub fn advertisement() -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[0] = ROUTER_ADVERTISEMENT;
    packet[4] = 64;
    packet
}

/// Whether `packet` (an ICMPv6 message, no IP header) is a well-formed router solicitation.
pub fn is_solicitation(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] == ROUTER_SOLICITATION && packet[1] == 0
}

/// A bound responder on one interface.
pub struct RaResponder {
    /// A raw ICMPv6 socket. tokio's datagram socket only does recvfrom/sendto on it, which is all
    /// a raw socket needs.
    socket: UdpSocket,
    interface: String,
    index: u32,
}

fn interface_index(name: &str) -> Result<u32> {
    let c_name = CString::new(name).map_err(|_| Error::InvalidInput(format!("ra: bad interface name {name:?}")))?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(Error::InvalidInput(format!("ra: no interface named {name:?}")));
    }
    Ok(index)
}

impl RaResponder {
    /// Opens a raw ICMPv6 socket on `interface` (needs root or CAP_NET_RAW) and joins all-routers.
    pub fn bind(interface: &str) -> Result<RaResponder> {
        let index = interface_index(interface)?;
        let what = format!("ra: raw ICMPv6 socket on interface {interface}");
        let io = |e: std::io::Error| {
            if e.kind() == ErrorKind::PermissionDenied {
                Error::InvalidInput(format!("{what}: permission denied (needs root or CAP_NET_RAW)"))
            } else {
                Error::InvalidInput(format!("{what}: {e}"))
            }
        };
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(io)?;
        socket.bind_device(Some(interface.as_bytes())).map_err(io)?;
        // Neighbour discovery is only accepted with hop limit 255 (proof it never left the link).
        socket.set_multicast_hops_v6(255).map_err(io)?;
        socket.set_unicast_hops_v6(255).map_err(io)?;
        socket.set_multicast_loop_v6(false).map_err(io)?;
        socket.join_multicast_v6(&ALL_ROUTERS, index).map_err(io)?;
        socket.set_nonblocking(true).map_err(io)?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket)).map_err(io)?;
        Ok(RaResponder {
            socket,
            interface: interface.to_string(),
            index,
        })
    }

    async fn send(&self, to: SocketAddrV6) {
        match self.socket.send_to(&advertisement(), SocketAddr::V6(to)).await {
            Ok(_) => {}
            // Our link-local address is still tentative (the link just came up): the client
            // solicits again in a few seconds.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                tracing::debug!(interface = %self.interface, "ra: no link-local address yet; not answered");
            }
            Err(e) => tracing::warn!(interface = %self.interface, error = %e, "ra: cannot send an advertisement"),
        }
    }

    /// Answers solicitations until `cancel`. Nothing is sent unasked: the interface may have no
    /// link-local address yet (a bridge without ports), and every PXE client solicits anyway.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        tracing::info!(interface = %self.interface, "ra: answering router solicitations");
        let mut buf = [0u8; 1500];
        loop {
            let received = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => r,
            };
            let (len, from) = match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(interface = %self.interface, error = %e, "ra: receive failed");
                    continue;
                }
            };
            if !is_solicitation(&buf[..len]) {
                continue;
            }
            let to = match from {
                SocketAddr::V6(source) if !source.ip().is_unspecified() => {
                    SocketAddrV6::new(*source.ip(), 0, 0, self.index)
                }
                _ => SocketAddrV6::new(ALL_NODES, 0, 0, self.index),
            };
            tracing::debug!(interface = %self.interface, client = %to.ip(), "ra: solicitation answered");
            self.send(to).await;
        }
        tracing::info!(interface = %self.interface, "ra: stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertisement_offers_nothing() {
        let ra = advertisement();
        assert_eq!(ra[0], ROUTER_ADVERTISEMENT);
        assert_eq!(ra[4], 64, "hop limit");
        assert_eq!(ra[5], 0, "no managed or other-config flag");
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0: not a default router");
        assert!(ra[8..].iter().all(|&b| b == 0));
    }

    #[test]
    fn only_solicitations_are_answered() {
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(is_solicitation(&[
            133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56
        ]));
        assert!(!is_solicitation(&[133, 0, 0, 0]), "truncated");
        assert!(!is_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]), "code must be 0");
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]), "an advertisement");
        assert!(!is_solicitation(&[]));
    }

    #[test]
    fn an_unknown_interface_is_named() {
        let e = interface_index("fog-no-such0")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no interface named \"fog-no-such0\""), "{e}");
    }
}
