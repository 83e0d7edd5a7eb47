//! The TFTP wire format (RFC 1350, options of RFC 2347): packets from bytes and back. No I/O.
//!
//! Decoding goes through a cursor that returns `Option`, never indexes packet data and rejects
//! trailing bytes (except the NUL padding some PXE ROMs put after a request, and a missing NUL
//! at the end of an ERROR message: a client's ERROR must always end its transfer).

use std::fmt;

/// Opcode of a read request.
pub const OP_RRQ: u16 = 1;
/// Opcode of a write request.
pub const OP_WRQ: u16 = 2;
/// Opcode of a data block.
pub const OP_DATA: u16 = 3;
/// Opcode of an acknowledgement.
pub const OP_ACK: u16 = 4;
/// Opcode of an error.
pub const OP_ERROR: u16 = 5;
/// Opcode of an option acknowledgement (RFC 2347).
pub const OP_OACK: u16 = 6;

/// A TFTP error code (RFC 1350, 2347). Unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// Not defined, see the message.
    pub const NOT_DEFINED: ErrorCode = ErrorCode(0);
    /// File not found.
    pub const FILE_NOT_FOUND: ErrorCode = ErrorCode(1);
    /// Access violation.
    pub const ACCESS_VIOLATION: ErrorCode = ErrorCode(2);
    /// Disk full or allocation exceeded.
    pub const DISK_FULL: ErrorCode = ErrorCode(3);
    /// Illegal TFTP operation.
    pub const ILLEGAL_OPERATION: ErrorCode = ErrorCode(4);
    /// Unknown transfer ID.
    pub const UNKNOWN_TID: ErrorCode = ErrorCode(5);
    /// File already exists.
    pub const FILE_EXISTS: ErrorCode = ErrorCode(6);
    /// No such user.
    pub const NO_SUCH_USER: ErrorCode = ErrorCode(7);
    /// Option negotiation refused (RFC 2347).
    pub const OPTION_NEGOTIATION: ErrorCode = ErrorCode(8);
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            ErrorCode::NOT_DEFINED => "not defined",
            ErrorCode::FILE_NOT_FOUND => "file not found",
            ErrorCode::ACCESS_VIOLATION => "access violation",
            ErrorCode::DISK_FULL => "disk full",
            ErrorCode::ILLEGAL_OPERATION => "illegal operation",
            ErrorCode::UNKNOWN_TID => "unknown transfer id",
            ErrorCode::FILE_EXISTS => "file exists",
            ErrorCode::NO_SUCH_USER => "no such user",
            ErrorCode::OPTION_NEGOTIATION => "option negotiation refused",
            _ => "unknown",
        };
        write!(f, "{} ({name})", self.0)
    }
}

/// A read or write request: file name, transfer mode and options in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// File name as sent (not yet checked against the root).
    pub filename: String,
    /// Transfer mode (`octet`, `netascii`, `mail`), as sent.
    pub mode: String,
    /// Options (name, value) as sent; names compare case-insensitively.
    pub options: Vec<(String, String)>,
}

/// One TFTP packet. Data borrows from the datagram it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request),
    /// Write request.
    Wrq(Request),
    /// A data block.
    Data {
        /// Block number (wraps past 65535).
        block: u16,
        /// Payload, at most the block size.
        data: &'a [u8],
    },
    /// Acknowledgement of a block (0 acknowledges an OACK).
    Ack(u16),
    /// An error; it ends the transfer.
    Error {
        /// Error code.
        code: ErrorCode,
        /// Human-readable message.
        message: String,
    },
    /// Option acknowledgement: the options the server accepted, with their values.
    Oack(Vec<(String, String)>),
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than an opcode, or a field ends early.
    Truncated,
    /// An opcode TFTP does not define.
    UnknownOpcode(u16),
    /// A string is not UTF-8, empty where it must not be, or bytes follow the packet.
    Malformed(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "truncated packet"),
            DecodeError::UnknownOpcode(op) => write!(f, "unknown opcode {op}"),
            DecodeError::Malformed(why) => write!(f, "malformed packet: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A cursor over a datagram; every read returns `None` instead of running past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u16(&mut self) -> Option<u16> {
        let (head, rest) = self.rest.split_first_chunk::<2>()?;
        self.rest = rest;
        Some(u16::from_be_bytes(*head))
    }

    /// A NUL-terminated string (the NUL is consumed).
    fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.rest.iter().position(|&b| b == 0)?;
        let (s, rest) = self.rest.split_at_checked(end)?;
        self.rest = rest.get(1..)?;
        Some(s)
    }

    fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn only_nuls_left(&self) -> bool {
        self.rest.iter().all(|&b| b == 0)
    }
}

fn utf8(bytes: &[u8], what: &'static str) -> Result<String, DecodeError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::Malformed(what))
}

fn decode_options(r: &mut Reader<'_>, allow_padding: bool) -> Result<Vec<(String, String)>, DecodeError> {
    let mut options = Vec::new();
    while !r.is_empty() {
        if allow_padding && r.only_nuls_left() {
            r.take_rest();
            break;
        }
        let name = r.cstr().ok_or(DecodeError::Truncated)?;
        if name.is_empty() {
            return Err(DecodeError::Malformed("empty option name"));
        }
        let value = r.cstr().ok_or(DecodeError::Truncated)?;
        options.push((
            utf8(name, "option name is not UTF-8")?,
            utf8(value, "option value is not UTF-8")?,
        ));
    }
    Ok(options)
}

fn decode_request(r: &mut Reader<'_>) -> Result<Request, DecodeError> {
    let filename = r.cstr().ok_or(DecodeError::Truncated)?;
    if filename.is_empty() {
        return Err(DecodeError::Malformed("empty file name"));
    }
    let mode = r.cstr().ok_or(DecodeError::Truncated)?;
    if mode.is_empty() {
        return Err(DecodeError::Malformed("empty mode"));
    }
    Ok(Request {
        filename: utf8(filename, "file name is not UTF-8")?,
        mode: utf8(mode, "mode is not UTF-8")?,
        options: decode_options(r, true)?,
    })
}

impl<'a> Packet<'a> {
    /// Decodes one datagram.
    pub fn decode(datagram: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        let mut r = Reader { rest: datagram };
        let opcode = r.u16().ok_or(DecodeError::Truncated)?;
        let packet = match opcode {
            OP_RRQ => Packet::Rrq(decode_request(&mut r)?),
            OP_WRQ => Packet::Wrq(decode_request(&mut r)?),
            OP_DATA => {
                let block = r.u16().ok_or(DecodeError::Truncated)?;
                Packet::Data {
                    block,
                    data: r.take_rest(),
                }
            }
            OP_ACK => Packet::Ack(r.u16().ok_or(DecodeError::Truncated)?),
            OP_ERROR => {
                let code = ErrorCode(r.u16().ok_or(DecodeError::Truncated)?);
                // Lenient: a message without its NUL (or with junk after it) still ends a transfer.
                let rest = r.take_rest();
                let text = rest.split(|&b| b == 0).next().unwrap_or_default();
                Packet::Error {
                    code,
                    message: String::from_utf8_lossy(text).into_owned(),
                }
            }
            OP_OACK => Packet::Oack(decode_options(&mut r, false)?),
            other => return Err(DecodeError::UnknownOpcode(other)),
        };
        if r.is_empty() {
            Ok(packet)
        } else {
            Err(DecodeError::Malformed("bytes after the packet"))
        }
    }

    /// Appends the encoded packet to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        match self {
            Packet::Rrq(req) | Packet::Wrq(req) => {
                let op = if matches!(self, Packet::Rrq(_)) { OP_RRQ } else { OP_WRQ };
                buf.extend_from_slice(&op.to_be_bytes());
                put_cstr(buf, &req.filename);
                put_cstr(buf, &req.mode);
                put_options(buf, &req.options);
            }
            Packet::Data { block, data } => {
                put_data_header(buf, *block);
                buf.extend_from_slice(data);
            }
            Packet::Ack(block) => {
                buf.extend_from_slice(&OP_ACK.to_be_bytes());
                buf.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => put_error(buf, *code, message),
            Packet::Oack(options) => {
                buf.extend_from_slice(&OP_OACK.to_be_bytes());
                put_options(buf, options);
            }
        }
    }

    /// The encoded packet in a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode_into(&mut buf);
        buf
    }
}

/// Appends the 4-byte header of a DATA packet; the caller appends the payload.
pub fn put_data_header(buf: &mut Vec<u8>, block: u16) {
    buf.extend_from_slice(&OP_DATA.to_be_bytes());
    buf.extend_from_slice(&block.to_be_bytes());
}

/// Appends an ERROR packet. NUL bytes in the message are dropped (they would cut it short).
pub fn put_error(buf: &mut Vec<u8>, code: ErrorCode, message: &str) {
    buf.extend_from_slice(&OP_ERROR.to_be_bytes());
    buf.extend_from_slice(&code.0.to_be_bytes());
    buf.extend(message.bytes().filter(|&b| b != 0));
    buf.push(0);
}

fn put_cstr(buf: &mut Vec<u8>, s: &str) {
    buf.extend(s.bytes().filter(|&b| b != 0));
    buf.push(0);
}

fn put_options(buf: &mut Vec<u8>, options: &[(String, String)]) {
    for (name, value) in options {
        put_cstr(buf, name);
        put_cstr(buf, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(filename: &str, options: &[(&str, &str)]) -> Request {
        Request {
            filename: filename.into(),
            mode: "octet".into(),
            options: options.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect(),
        }
    }

    #[test]
    fn round_trips_every_packet_kind() {
        let packets = [
            Packet::Rrq(req("pxelinux.0", &[])),
            Packet::Rrq(req(
                "/boot/ipxe.efi",
                &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "16")],
            )),
            Packet::Wrq(req("upload", &[("blksize", "512")])),
            Packet::Data {
                block: 65535,
                data: b"hello",
            },
            Packet::Data { block: 0, data: b"" },
            Packet::Ack(0),
            Packet::Ack(65535),
            Packet::Error {
                code: ErrorCode::FILE_NOT_FOUND,
                message: "no such file".into(),
            },
            Packet::Error {
                code: ErrorCode(42),
                message: String::new(),
            },
            Packet::Oack(vec![
                ("blksize".into(), "1428".into()),
                ("tsize".into(), "33554432".into()),
            ]),
        ];
        for p in packets {
            let bytes = p.encode();
            assert_eq!(Packet::decode(&bytes), Ok(p));
        }
    }

    #[test]
    fn decodes_a_pxe_rom_request_byte_for_byte() {
        let bytes = b"\x00\x01/undionly.kpxe\x00octet\x00tsize\x000\x00blksize\x001456\x00";
        let Ok(Packet::Rrq(r)) = Packet::decode(bytes) else {
            panic!("not an RRQ")
        };
        assert_eq!(r, req("/undionly.kpxe", &[("tsize", "0"), ("blksize", "1456")]));
    }

    #[test]
    fn accepts_nul_padding_after_a_request() {
        let bytes = b"\x00\x01f\x00octet\x00\x00\x00\x00";
        assert_eq!(Packet::decode(bytes), Ok(Packet::Rrq(req("f", &[]))));
    }

    #[test]
    fn accepts_an_error_without_its_nul() {
        let bytes = b"\x00\x05\x00\x08abort";
        assert_eq!(
            Packet::decode(bytes),
            Ok(Packet::Error {
                code: ErrorCode::OPTION_NEGOTIATION,
                message: "abort".into()
            })
        );
    }

    #[test]
    fn rejects_malformed_packets() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::Truncated),
            (b"\x00", DecodeError::Truncated),
            (b"\x00\x09", DecodeError::UnknownOpcode(9)),
            (b"\x00\x01file", DecodeError::Truncated),
            (b"\x00\x01file\x00octet", DecodeError::Truncated),
            (b"\x00\x01\x00octet\x00", DecodeError::Malformed("empty file name")),
            (b"\x00\x01f\x00\x00", DecodeError::Malformed("empty mode")),
            (b"\x00\x01f\x00octet\x00blksize\x00", DecodeError::Truncated),
            (b"\x00\x01f\x00octet\x00blksize\x00512", DecodeError::Truncated),
            (
                b"\x00\x01\xff\xfe\x00octet\x00",
                DecodeError::Malformed("file name is not UTF-8"),
            ),
            (b"\x00\x04\x00", DecodeError::Truncated),
            (
                b"\x00\x04\x00\x01\x00",
                DecodeError::Malformed("bytes after the packet"),
            ),
            (b"\x00\x03\x00", DecodeError::Truncated),
            (b"\x00\x05\x00", DecodeError::Truncated),
            (b"\x00\x06blksize\x00", DecodeError::Truncated),
        ];
        for (bytes, want) in cases {
            assert_eq!(Packet::decode(bytes).as_ref().err(), Some(want), "{bytes:?}");
        }
    }

    #[test]
    fn error_messages_lose_embedded_nuls() {
        let mut buf = Vec::new();
        put_error(&mut buf, ErrorCode::NOT_DEFINED, "a\0b");
        assert_eq!(buf, b"\x00\x05\x00\x00ab\x00");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Packet::decode(&bytes);
        }

        #[test]
        fn random_requests_round_trip(
            name in "[a-zA-Z0-9/._-]{1,40}",
            opts in proptest::collection::vec(("[a-z]{1,10}", "[0-9]{0,6}"), 0..5),
            block in any::<u16>(),
        ) {
            let r = Request { filename: name, mode: "octet".into(), options: opts };
            let p = Packet::Rrq(r);
            let bytes = p.encode();
            prop_assert_eq!(Packet::decode(&bytes), Ok(p.clone()));
            let ack = Packet::Ack(block);
            let bytes = ack.encode();
            prop_assert_eq!(Packet::decode(&bytes), Ok(ack));
        }

        #[test]
        fn requests_with_random_tails_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut bytes = b"\x00\x01file\x00octet\x00".to_vec();
            bytes.extend_from_slice(&tail);
            let _ = Packet::decode(&bytes);
        }
    }
}
