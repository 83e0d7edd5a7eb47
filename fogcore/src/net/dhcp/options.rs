//! Building reply options: lease parameters, PXE boot information, custom options, and the final
//! encoding padded to the BOOTP minimum.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable};

use crate::net::boot::{BootFile, BootRequest};

/// The smallest BOOTP message (RFC 951/1542): some relays and PXE ROMs drop shorter ones.
pub const BOOTP_MIN_LEN: usize = 300;

/// PXE vendor options (option 43): discovery control (sub-option 6) = 8, "take the boot file in
/// this offer, do not discover boot servers or prompt", then End.
pub const PXE_DISCOVERY_CONTROL: [u8; 4] = [6, 1, 8, 255];

/// Decodes a DHCP message; `None` for anything that is not a well-formed Ethernet BOOTREQUEST.
pub fn decode_request(bytes: &[u8]) -> Option<Message> {
    let clean = sanitize(bytes)?;
    let msg = Message::decode(&mut Decoder::new(&clean)).ok()?;
    // hlen > 16 would make `chaddr()` slice out of bounds; only Ethernet is served.
    (msg.opcode() == dhcproto::v4::Opcode::BootRequest && msg.hlen() == 6).then_some(msg)
}

/// Option codes the server reads, with the lengths it accepts (min, max). Everything else is
/// stripped before decoding: dhcproto 0.15 panics (debug assertions, length underflow) on some
/// malformed options it decodes eagerly (81, 151-157), and we never read them anyway.
fn accepted(code: u8) -> Option<(usize, usize)> {
    match code {
        53 => Some((1, 1)),
        50 | 54 => Some((4, 4)),
        57 => Some((2, 2)),
        12 | 55 | 60 | 61 | 77 | 97 => Some((1, 255)),
        93 => Some((2, 2)),
        _ => None,
    }
}

/// Checks the fixed header and the option area, and rebuilds the packet with only the options
/// we use (option 93 cut to its first architecture). `None` when truncated or not DHCP.
pub fn sanitize(bytes: &[u8]) -> Option<Vec<u8>> {
    const MAGIC: [u8; 4] = [99, 130, 83, 99];
    let header = bytes.get(..236)?;
    if *header.get(2)? as usize > 16 || bytes.get(236..240)? != MAGIC {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len().min(1500));
    out.extend_from_slice(bytes.get(..240)?);
    let mut rest = bytes.get(240..)?;
    loop {
        let (&code, tail) = rest.split_first()?;
        match code {
            0 => rest = tail,
            255 => break,
            _ => {
                let (&len, tail) = tail.split_first()?;
                let value = tail.get(..len as usize)?;
                rest = tail.get(len as usize..)?;
                let value = if code == 93 {
                    value.get(..2).unwrap_or(value)
                } else {
                    value
                };
                if let Some((min, max)) = accepted(code)
                    && (min..=max).contains(&value.len())
                {
                    out.push(code);
                    out.push(value.len() as u8);
                    out.extend_from_slice(value);
                }
            }
        }
    }
    out.push(255);
    Some(out)
}

/// The options of a raw DHCP packet as (code, value), in order, until End or the first
/// malformed one.
fn raw_options(bytes: &[u8]) -> impl Iterator<Item = (usize, u8, &[u8])> {
    let mut at = 240;
    std::iter::from_fn(move || {
        loop {
            let code = *bytes.get(at)?;
            match code {
                0 => at += 1,
                255 => return None,
                _ => {
                    let len = *bytes.get(at + 1)? as usize;
                    let value = bytes.get(at + 2..at + 2 + len)?;
                    let start = at;
                    at += 2 + len;
                    return Some((start, code, value));
                }
            }
        }
    })
}

/// The raw Relay Agent Information (option 82) of a request, as a relay put it there.
pub fn relay_agent_information(request: &[u8]) -> Option<&[u8]> {
    raw_options(request)
        .find(|(_, code, _)| *code == 82)
        .map(|(_, _, value)| value)
}

/// Adds a raw option as the last one of an encoded reply (before End). RFC 3046: the server
/// echoes option 82 unchanged, and relays expect it there.
pub fn append_raw(reply: &mut Vec<u8>, code: u8, value: &[u8]) -> bool {
    let Ok(len) = u8::try_from(value.len()) else {
        return false;
    };
    let end = match raw_options(reply).last() {
        Some((start, _, v)) => start + 2 + v.len(),
        None => 240,
    };
    // Only pads may sit between the last option and End.
    let Some(end) = (end..reply.len()).find(|&i| reply.get(i) == Some(&255)) else {
        return false;
    };
    let mut option = Vec::with_capacity(value.len() + 2);
    option.push(code);
    option.push(len);
    option.extend_from_slice(value);
    reply.splice(end..end, option);
    true
}

/// The client's MAC (the message must come from [`decode_request`]).
pub fn mac_of(msg: &Message) -> Option<[u8; 6]> {
    msg.chaddr().get(..6).and_then(|s| <[u8; 6]>::try_from(s).ok())
}

/// The boot-relevant parts of a request.
pub fn boot_request(msg: &Message, mac: [u8; 6]) -> BootRequest {
    let opts = msg.opts();
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    let user_class = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(u)) => Some(u.clone()),
        _ => None,
    };
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(String::from_utf8_lossy(v).into_owned()),
        _ => None,
    };
    BootRequest {
        mac,
        arch,
        user_class,
        vendor_class,
    }
}

/// Sets a raw option (replacing any typed one with the same code).
pub fn set_raw(msg: &mut Message, code: u8, value: Vec<u8>) {
    msg.opts_mut()
        .insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::from(code), value)));
}

/// Puts the boot file into a reply: siaddr + file + options 66/67, option 60 echoed, and for PXE
/// firmware the discovery control in option 43 (unless the config sets 43).
pub fn add_boot(msg: &mut Message, req: &BootRequest, boot: &BootFile, server_ip: Ipv4Addr) {
    let class: &[u8] = if req.vendor_class.as_deref().is_some_and(|v| v.starts_with("HTTPClient")) {
        b"HTTPClient"
    } else {
        b"PXEClient"
    };
    match boot {
        BootFile::Tftp { next_server, file } => {
            msg.set_siaddr(*next_server);
            msg.set_fname(file.as_bytes());
            set_raw(msg, 66, next_server.to_string().into_bytes());
            set_raw(msg, 67, file.as_bytes().to_vec());
        }
        BootFile::Http { url } => {
            msg.set_siaddr(server_ip);
            msg.set_fname(url.as_bytes());
            set_raw(msg, 67, url.as_bytes().to_vec());
        }
    }
    if req.vendor_class.is_some() {
        set_raw(msg, 60, class.to_vec());
    }
    if class == b"PXEClient" && req.vendor_class.as_deref().is_some_and(|v| v.starts_with("PXEClient")) {
        set_raw(msg, 43, PXE_DISCOVERY_CONTROL.to_vec());
    }
}

/// Encodes a reply and pads it to [`BOOTP_MIN_LEN`]. `None` if the message cannot be encoded
/// (an option too long for its format).
pub fn encode_reply(msg: &Message) -> Option<Vec<u8>> {
    let mut bytes = msg.to_vec().ok()?;
    if bytes.len() < BOOTP_MIN_LEN {
        bytes.resize(BOOTP_MIN_LEN, 0);
    }
    Some(bytes)
}
