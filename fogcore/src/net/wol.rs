//! Wake-on-LAN: the magic packet (6 bytes 0xFF, then the target MAC 16 times, then an optional
//! 4- or 6-byte SecureOn password) sent as one UDP datagram to a broadcast address, port 9 by
//! default, from a socket with `SO_BROADCAST`, bound to the node's address on the clients'
//! subnet when one is given (so it leaves by that interface).
//!
//! The codec ([`magic_packet`]) does no I/O; [`send`] owns the socket. Nothing here sends by
//! itself: a node sends only when its config names a broadcast target (`[node] wake_broadcast`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::error::{Error, Result};

/// The usual Wake-on-LAN port (discard).
pub const WOL_PORT: u16 = 9;

/// Length of a magic packet without a password.
pub const MAGIC_LEN: usize = 6 + 16 * 6;

/// The magic packet waking the card `mac`; `password` is a SecureOn password (4 or 6 bytes).
pub fn magic_packet(mac: [u8; 6], password: Option<&[u8]>) -> Result<Vec<u8>> {
    let extra = password.map_or(0, <[u8]>::len);
    if password.is_some() && !matches!(extra, 4 | 6) {
        return Err(Error::invalid(
            "SecureOn password",
            hex::encode(password.unwrap_or_default()),
            "must be 4 or 6 bytes",
        ));
    }
    let mut packet = Vec::with_capacity(MAGIC_LEN + extra);
    packet.extend_from_slice(&[0xFF; 6]);
    for _ in 0..16 {
        packet.extend_from_slice(&mac);
    }
    if let Some(password) = password {
        packet.extend_from_slice(password);
    }
    Ok(packet)
}

/// Where magic packets go: a broadcast address (and port), optionally from a given local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeTarget {
    /// The subnet's broadcast address and port (`10.99.0.255:9`).
    pub broadcast: SocketAddrV4,
    /// The local address to send from (the node's address on that subnet), if any.
    pub bind: Option<Ipv4Addr>,
}

impl WakeTarget {
    /// Parses `10.99.0.255` or `10.99.0.255:9`; `key` names the setting in errors.
    pub fn parse(key: &'static str, text: &str, bind: Option<Ipv4Addr>) -> Result<WakeTarget> {
        let text = text.trim();
        let broadcast = match text.parse::<SocketAddrV4>() {
            Ok(addr) => addr,
            Err(_) => SocketAddrV4::new(
                text.parse::<Ipv4Addr>().map_err(|_| {
                    Error::invalid(
                        key,
                        text,
                        "not an IPv4 address or address:port (e.g. \"10.99.0.255\" or \"10.99.0.255:9\")",
                    )
                })?,
                WOL_PORT,
            ),
        };
        if broadcast.ip().is_unspecified() || broadcast.ip().is_multicast() || broadcast.port() == 0 {
            return Err(Error::invalid(
                key,
                text,
                "must be the broadcast address of the hosts' subnet, with a port other than 0",
            ));
        }
        Ok(WakeTarget { broadcast, bind })
    }
}

/// Sends the magic packet for `mac` to `target`; returns the bytes sent.
pub async fn send(target: &WakeTarget, mac: [u8; 6], password: Option<&[u8]>) -> Result<usize> {
    let packet = magic_packet(mac, password)?;
    let what = format!("wake-on-lan to {}", target.broadcast);
    let local = SocketAddr::from((target.bind.unwrap_or(Ipv4Addr::UNSPECIFIED), 0));
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| Error::io(format!("{what} (binding {local})"), e))?;
    socket.set_broadcast(true).map_err(|e| Error::io(&what, e))?;
    socket
        .send_to(&packet, SocketAddr::V4(target.broadcast))
        .await
        .map_err(|e| Error::io(&what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn packet_is_six_ff_then_sixteen_macs() -> Result<()> {
        let p = magic_packet(MAC, None)?;
        assert_eq!(p.len(), 102);
        assert_eq!(p.get(..6), Some(&[0xFF; 6][..]));
        for i in 0..16 {
            assert_eq!(p.get(6 + i * 6..12 + i * 6), Some(&MAC[..]), "copy {i}");
        }
        Ok(())
    }

    #[test]
    fn secureon_password_is_appended_and_checked() -> Result<()> {
        let p = magic_packet(MAC, Some(&[1, 2, 3, 4, 5, 6]))?;
        assert_eq!(p.len(), 108);
        assert_eq!(p.get(102..), Some(&[1, 2, 3, 4, 5, 6][..]));
        assert_eq!(magic_packet(MAC, Some(&[9; 4]))?.len(), 106);
        let e = magic_packet(MAC, Some(&[1, 2, 3])).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("SecureOn password") && e.contains("010203")));
        Ok(())
    }

    #[test]
    fn targets_parse_with_default_port_and_name_bad_input() -> Result<()> {
        let t = WakeTarget::parse("[node] wake_broadcast", "10.99.0.255", None)?;
        assert_eq!(t.broadcast, "10.99.0.255:9".parse().map_err(|_| Error::Cancelled)?);
        let t = WakeTarget::parse("[node] wake_broadcast", "10.99.0.255:7", None)?;
        assert_eq!(t.broadcast.port(), 7);
        for bad in ["10.99.0", "0.0.0.0", "224.0.0.1", "10.0.0.255:0", "br0"] {
            let e = WakeTarget::parse("[node] wake_broadcast", bad, None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("wake_broadcast") && e.contains(bad), "{bad}: {e}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_receiver_on_loopback_gets_the_packet() -> Result<()> {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("receiver", e))?;
        let port = rx.local_addr().map_err(|e| Error::io("receiver", e))?.port();
        let target = WakeTarget {
            broadcast: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            bind: Some(Ipv4Addr::LOCALHOST),
        };
        assert_eq!(send(&target, MAC, None).await?, 102);
        let mut buf = [0u8; 200];
        let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv_from(&mut buf))
            .await
            .map_err(|_| Error::InvalidInput("no packet within 5 s".into()))?
            .map_err(|e| Error::io("receiver", e))?;
        assert_eq!(buf.get(..n), Some(&magic_packet(MAC, None)?[..]));
        Ok(())
    }
}
