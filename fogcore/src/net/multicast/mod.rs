//! Multicast deploy: one stream images a room, with no barrier between receivers.
//!
//! The sender ([`send`]) cycles over the objects of an image's [`Plan`] that some live receiver
//! still needs, in disk order, each as stored. Receivers ([`receive`]) write what they catch
//! through the same deploy writer as unicast (so `fit` applies and every chunk is checked by its
//! hash), report what they lack five times a second (the sender merges the reports and sends each
//! missing fragment once however many asked), and fetch over HTTP what multicast does not bring
//! them: everything when they hear no multicast, the gaps when they lose too much or write too
//! slowly. The rate follows the bulk of the receivers, never the slowest. A late joiner starts
//! at the current position and wraps around. See `docs/multicast-design.md`.
//!
//! [`Plan`]: crate::imaging::carousel::Plan

mod receiver;
mod sender;
pub mod wire;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

pub use receiver::{ReceiveOptions, ReceiveReport, receive};
pub use sender::{ReceiverSummary, RunningSession, SendOptions, SendReport, send, start};

use crate::{Error, Result};

/// The group sessions use unless told otherwise (administratively scoped, RFC 2365).
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 70, 1);
/// The UDP port sessions use unless told otherwise.
pub const DEFAULT_PORT: u16 = 7070;

/// What a receiver learns when it joins (the sender's `POST /multicast/join`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Joined {
    /// Session number (in every packet).
    pub session: u32,
    /// The session's packet key, hex.
    pub key: String,
    /// The receiver's number.
    pub receiver: u32,
    /// Image name.
    pub image: String,
    /// Objects in the plan.
    pub objects: u32,
    /// Group address and port.
    pub group: SocketAddrV4,
    /// Where reports go.
    pub report: SocketAddr,
}

/// The IPv4 address of interface `name` (or `name` itself when it is an IPv4 address).
pub fn interface_ipv4(name: &str) -> Result<Ipv4Addr> {
    if let Ok(address) = name.parse::<Ipv4Addr>() {
        return Ok(address);
    }
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list freed below by freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(Error::Internal(format!(
            "cannot list interfaces: {}",
            std::io::Error::last_os_error()
        )));
    }
    let mut found = None;
    let mut seen = false;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let entry_name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        if entry_name.to_bytes() != name.as_bytes() {
            continue;
        }
        seen = true;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
        if i32::from(unsafe { (*entry.ifa_addr).sa_family }) == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let addr = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found.ok_or_else(|| {
        if seen {
            Error::invalid("interface", name, "it has no IPv4 address")
        } else {
            Error::invalid("interface", name, "no such interface")
        }
    })
}

/// A socket that hears `group` on the interface with address `interface`: bound to the group
/// and its port with SO_REUSEADDR (several receivers on one host each get every packet, and
/// another session's group on the same port is not heard), with a large receive buffer so a
/// burst waits in the kernel rather than being dropped.
fn group_socket(group: SocketAddrV4, interface: Ipv4Addr) -> Result<UdpSocket> {
    let io = |what: &str, e: std::io::Error| {
        Error::InvalidInput(format!("multicast group {group} on {interface}: {what}: {e}"))
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(|e| io("socket", e))?;
    socket.set_reuse_address(true).map_err(|e| io("SO_REUSEADDR", e))?;
    socket
        .bind(&SocketAddr::from(group).into())
        .map_err(|e| io("bind", e))?;
    socket
        .join_multicast_v4(group.ip(), &interface)
        .map_err(|e| io("join", e))?;
    set_receive_buffer(&socket, 16 << 20);
    Ok(socket.into())
}

/// A socket that sends to groups out of the interface with address `interface` (TTL 1: the
/// segment only), bound to that address so reports can come back to it.
fn sender_socket(interface: Ipv4Addr) -> Result<UdpSocket> {
    let io =
        |what: &str, e: std::io::Error| Error::InvalidInput(format!("multicast sender on {interface}: {what}: {e}"));
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(|e| io("socket", e))?;
    socket
        .bind(&SocketAddr::from((interface, 0)).into())
        .map_err(|e| io("bind", e))?;
    socket
        .set_multicast_if_v4(&interface)
        .map_err(|e| io("IP_MULTICAST_IF", e))?;
    socket.set_multicast_ttl_v4(1).map_err(|e| io("IP_MULTICAST_TTL", e))?;
    socket
        .set_multicast_loop_v4(true)
        .map_err(|e| io("IP_MULTICAST_LOOP", e))?;
    let _ = socket.set_send_buffer_size(4 << 20);
    set_receive_buffer(&socket, 4 << 20);
    Ok(socket.into())
}

/// Asks for `bytes` of receive buffer, past the sysctl limit when allowed (root).
fn set_receive_buffer(socket: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes as libc::c_int;
    // SAFETY: setsockopt reads an int from a valid pointer of the given length.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        let _ = socket.set_recv_buffer_size(bytes);
    }
}

/// Parses a hex key.
fn key_from_hex(text: &str) -> Result<wire::Key> {
    let bytes = hex::decode(text).map_err(|e| Error::invalid("session key", text, e.to_string()))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| Error::invalid("session key", text, "not 32 bytes"))?;
    Ok(wire::Key(bytes))
}

/// Half-open ranges of the `true` entries of `flags`.
fn ranges(flags: impl Iterator<Item = bool>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (i, flag) in (0u32..).zip(flags) {
        if !flag {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == i => last.1 = i + 1,
            _ => out.push((i, i + 1)),
        }
    }
    out
}
