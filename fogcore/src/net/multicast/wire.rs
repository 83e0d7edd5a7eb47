//! Multicast packets: `'f' | version<<4 | type | session u32 | body | tag`, little-endian, at most
//! [`MAX_PACKET`] bytes (one Ethernet frame, never IP-fragmented). The tag is the first 8 bytes
//! of BLAKE3 keyed with the session's key over everything before it: a packet from outside the
//! session (random bytes, another session, a forged fragment) is dropped before it is used.
//! The bytes themselves are still checked by hash when an object is placed.

use std::fmt;

/// Largest packet: 1500-byte MTU minus IPv4 and UDP headers.
pub const MAX_PACKET: usize = 1472;
const MAGIC: u8 = b'f';
const VERSION: u8 = 1;
const TAG_LEN: usize = 8;
const HEADER_LEN: usize = 6;
const DATA_HEADER_LEN: usize = HEADER_LEN + 13;
/// Payload bytes in a full data packet.
pub const FRAGMENT: usize = MAX_PACKET - DATA_HEADER_LEN - TAG_LEN;
/// Needed-object ranges a report carries; past them the last range runs to the end.
pub const MAX_NEEDS: usize = 64;
/// Missing-fragment ranges of one object a report carries.
const MAX_NAK_RANGES: usize = 64;
/// Bytes of a URL or an image name in an announcement.
const MAX_TEXT: usize = 512;

const DATA: u8 = 1;
const ANNOUNCE: u8 = 3;
const REPORT: u8 = 4;

/// A session's key (random per session, given to receivers when they join).
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A new random key.
    pub fn random() -> Key {
        Key(rand::random())
    }

    fn tag(&self, bytes: &[u8]) -> [u8; TAG_LEN] {
        let hash = blake3::keyed_hash(&self.0, bytes);
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
        tag
    }
}

/// What a session is doing, as its announcements say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for receivers to join (the start rule).
    Waiting,
    /// Sending.
    Sending,
    /// Over: every receiver done or gone.
    Ended,
}

/// How a receiver gets its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// From the group, losses repaired by NAKs.
    Normal,
    /// Losing too much or writing too slowly: keeps what it catches, fetches the rest over HTTP.
    Assisted,
    /// Hears no multicast: everything over HTTP.
    Http,
}

/// One piece of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data<'a> {
    /// The sender's packet counter (receivers count losses by it).
    pub seq: u32,
    /// Object number in the plan.
    pub object: u32,
    /// Fragment number and count.
    pub frag: u16,
    /// Fragments of the object.
    pub frags: u16,
    /// Sent because a receiver asked for it again.
    pub repair: bool,
    /// The fragment's bytes.
    pub payload: &'a [u8],
}

/// The session's state, sent to the group twice a second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// What the session does.
    pub state: SessionState,
    /// Objects in the plan.
    pub objects: u32,
    /// The next object the carousel sends.
    pub position: u32,
    /// Current rate, KiB/s.
    pub rate_kib: u32,
    /// The bulk's loss, per mille: the median of the receivers' recent loss. A receiver
    /// losing far more than the bulk is slower than the rest (the rate follows the bulk).
    pub bulk_loss_permille: u16,
    /// How many receivers that hear the group the median was taken over. With one (or none),
    /// a receiver's loss is the bulk's, and the rate answers it.
    pub bulk_receivers: u16,
    /// Where to join (HTTP).
    pub url: String,
    /// The image sent (a session's name: receivers may look for it).
    pub image: String,
}

/// Missing fragments of one object, as half-open ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nak {
    /// Object number.
    pub object: u32,
    /// Missing fragment ranges.
    pub missing: Vec<(u16, u16)>,
}

/// A receiver's report to the sender, five times a second.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Receiver number (from its join).
    pub receiver: u32,
    /// Increases with each report (stale ones are ignored).
    pub counter: u32,
    /// Data packets received since the last report.
    pub got: u32,
    /// Data packets sent since the last report, by their counter.
    pub expected: u32,
    /// Everything placed: the receiver leaves.
    pub done: bool,
    /// Its queue to the disk is full or overflowed.
    pub congested: bool,
    /// Its mode (`None` in a default report).
    pub mode: Option<Mode>,
    /// Objects placed so far.
    pub placed: u32,
    /// Objects still needed, as half-open ranges (at most [`MAX_NEEDS`]).
    pub needs: Vec<(u32, u32)>,
    /// Fragments to send again.
    pub naks: Vec<Nak>,
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A fragment of an object.
    Data(Data<'a>),
    /// The session's state.
    Announce(Announce),
    /// A receiver's report.
    Report(Report),
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Not a fog packet of this version, or cut short, or a field out of range.
    Malformed,
    /// Another session's.
    OtherSession,
    /// The tag does not match: not from someone holding the session's key.
    Tag,
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if self.0.len() < n {
            return Err(Bad::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Bad> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Bad> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn mode_byte(mode: Option<Mode>) -> u8 {
    match mode {
        None => 0,
        Some(Mode::Normal) => 1,
        Some(Mode::Assisted) => 2,
        Some(Mode::Http) => 3,
    }
}

fn mode_of(byte: u8) -> Result<Option<Mode>, Bad> {
    Ok(match byte {
        0 => None,
        1 => Some(Mode::Normal),
        2 => Some(Mode::Assisted),
        3 => Some(Mode::Http),
        _ => return Err(Bad::Malformed),
    })
}

/// Writes `packet` of session `session`, tagged with `key`, into `out` (cleared first). A report
/// too long for one packet loses NAKs from its end; its needs are capped at [`MAX_NEEDS`] ranges,
/// the last running to the end (asking for more than needed costs bytes, never correctness).
pub fn encode(session: u32, key: &Key, packet: &Packet<'_>, out: &mut Vec<u8>) {
    out.clear();
    let kind = match packet {
        Packet::Data(_) => DATA,
        Packet::Announce(_) => ANNOUNCE,
        Packet::Report(_) => REPORT,
    };
    let mut w = Writer(out);
    w.u8(MAGIC);
    w.u8(VERSION << 4 | kind);
    w.u32(session);
    match packet {
        Packet::Data(d) => {
            w.u32(d.seq);
            w.u32(d.object);
            w.u16(d.frag);
            w.u16(d.frags);
            w.u8(u8::from(d.repair));
            let room = FRAGMENT.min(d.payload.len());
            w.0.extend_from_slice(&d.payload[..room]);
        }
        Packet::Announce(a) => {
            w.u8(match a.state {
                SessionState::Waiting => 0,
                SessionState::Sending => 1,
                SessionState::Ended => 2,
            });
            w.u32(a.objects);
            w.u32(a.position);
            w.u32(a.rate_kib);
            w.u16(a.bulk_loss_permille);
            w.u16(a.bulk_receivers);
            for text in [&a.url, &a.image] {
                let bytes = text.as_bytes().get(..MAX_TEXT).unwrap_or(text.as_bytes());
                w.u16(bytes.len() as u16);
                w.0.extend_from_slice(bytes);
            }
        }
        Packet::Report(r) => {
            w.u32(r.receiver);
            w.u32(r.counter);
            w.u32(r.got);
            w.u32(r.expected);
            w.u8(u8::from(r.done) | u8::from(r.congested) << 1);
            w.u8(mode_byte(r.mode));
            w.u32(r.placed);
            let mut needs: Vec<(u32, u32)> = r.needs.iter().take(MAX_NEEDS).copied().collect();
            if r.needs.len() > MAX_NEEDS
                && let Some(last) = needs.last_mut()
            {
                last.1 = u32::MAX;
            }
            w.u16(needs.len() as u16);
            for (from, to) in needs {
                w.u32(from);
                w.u32(to);
            }
            let count_at = w.0.len();
            w.u16(0);
            let mut count = 0u16;
            for nak in &r.naks {
                let ranges = nak.missing.len().min(MAX_NAK_RANGES);
                if w.0.len() + 6 + 4 * ranges + TAG_LEN > MAX_PACKET {
                    break;
                }
                w.u32(nak.object);
                w.u16(ranges as u16);
                for (from, to) in &nak.missing[..ranges] {
                    w.u16(*from);
                    w.u16(*to);
                }
                count += 1;
            }
            w.0[count_at..count_at + 2].copy_from_slice(&count.to_le_bytes());
        }
    }
    let tag = key.tag(out);
    out.extend_from_slice(&tag);
}

/// The session a packet claims, if it is a fog packet at all.
pub fn session_of(bytes: &[u8]) -> Option<u32> {
    let mut r = Reader(bytes);
    (r.u8().ok()? == MAGIC && r.u8().ok()? >> 4 == VERSION).then_some(())?;
    r.u32().ok()
}

/// Reads a packet of session `session`. With `key` the tag must match; without one (a receiver
/// that has not joined yet, looking for announcements) only the form is checked.
pub fn decode<'a>(bytes: &'a [u8], session: Option<u32>, key: Option<&Key>) -> Result<Packet<'a>, Bad> {
    if bytes.len() > MAX_PACKET || bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(Bad::Malformed);
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let mut r = Reader(body);
    let magic = r.u8()?;
    let kind = r.u8()?;
    if magic != MAGIC || kind >> 4 != VERSION {
        return Err(Bad::Malformed);
    }
    let claimed = r.u32()?;
    if session.is_some_and(|s| s != claimed) {
        return Err(Bad::OtherSession);
    }
    if let Some(key) = key
        && key.tag(body) != tag
    {
        return Err(Bad::Tag);
    }
    let packet = match kind & 0x0f {
        DATA => {
            let seq = r.u32()?;
            let object = r.u32()?;
            let frag = r.u16()?;
            let frags = r.u16()?;
            let repair = r.u8()? & 1 == 1;
            let payload = r.0;
            if frag >= frags || payload.is_empty() {
                return Err(Bad::Malformed);
            }
            let last = u32::from(frag) + 1 == u32::from(frags);
            if !last && payload.len() != FRAGMENT {
                return Err(Bad::Malformed);
            }
            Packet::Data(Data {
                seq,
                object,
                frag,
                frags,
                repair,
                payload,
            })
        }
        ANNOUNCE => {
            let state = match r.u8()? {
                0 => SessionState::Waiting,
                1 => SessionState::Sending,
                2 => SessionState::Ended,
                _ => return Err(Bad::Malformed),
            };
            let objects = r.u32()?;
            let position = r.u32()?;
            let rate_kib = r.u32()?;
            let bulk_loss_permille = r.u16()?;
            let bulk_receivers = r.u16()?;
            let mut text = || -> Result<String, Bad> {
                let len = r.u16()? as usize;
                if len > MAX_TEXT {
                    return Err(Bad::Malformed);
                }
                Ok(std::str::from_utf8(r.take(len)?)
                    .map_err(|_| Bad::Malformed)?
                    .to_string())
            };
            let url = text()?;
            let image = text()?;
            Packet::Announce(Announce {
                state,
                objects,
                position,
                rate_kib,
                bulk_loss_permille,
                bulk_receivers,
                url,
                image,
            })
        }
        REPORT => {
            let receiver = r.u32()?;
            let counter = r.u32()?;
            let got = r.u32()?;
            let expected = r.u32()?;
            let flags = r.u8()?;
            let mode = mode_of(r.u8()?)?;
            let placed = r.u32()?;
            let n = r.u16()? as usize;
            if n > MAX_NEEDS {
                return Err(Bad::Malformed);
            }
            let mut needs = Vec::with_capacity(n);
            for _ in 0..n {
                let (from, to) = (r.u32()?, r.u32()?);
                if from >= to {
                    return Err(Bad::Malformed);
                }
                needs.push((from, to));
            }
            let n = r.u16()? as usize;
            let mut naks = Vec::with_capacity(n.min(256));
            for _ in 0..n {
                let object = r.u32()?;
                let m = r.u16()? as usize;
                if m > MAX_NAK_RANGES {
                    return Err(Bad::Malformed);
                }
                let mut missing = Vec::with_capacity(m.min(64));
                for _ in 0..m {
                    let (from, to) = (r.u16()?, r.u16()?);
                    if from >= to {
                        return Err(Bad::Malformed);
                    }
                    missing.push((from, to));
                }
                naks.push(Nak { object, missing });
            }
            Packet::Report(Report {
                receiver,
                counter,
                got,
                expected,
                done: flags & 1 == 1,
                congested: flags & 2 == 2,
                mode,
                placed,
                needs,
                naks,
            })
        }
        _ => return Err(Bad::Malformed),
    };
    if !r.0.is_empty() && !matches!(packet, Packet::Data(_)) {
        return Err(Bad::Malformed);
    }
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(packet: &Packet<'_>) -> Vec<u8> {
        let key = Key([7; 32]);
        let mut out = Vec::new();
        encode(9, &key, packet, &mut out);
        assert!(out.len() <= MAX_PACKET);
        assert_eq!(decode(&out, Some(9), Some(&key)).as_ref(), Ok(packet));
        out
    }

    #[test]
    fn packets_round_trip_and_fit_one_frame() {
        let payload = vec![3u8; FRAGMENT];
        round_trip(&Packet::Data(Data {
            seq: 1,
            object: 2,
            frag: 0,
            frags: 2,
            repair: false,
            payload: &payload,
        }));
        round_trip(&Packet::Announce(Announce {
            state: SessionState::Sending,
            objects: 10,
            position: 3,
            rate_kib: 4096,
            bulk_loss_permille: 12,
            bulk_receivers: 3,
            url: "http://10.0.0.1:7071".into(),
            image: "win11".into(),
        }));
        round_trip(&Packet::Report(Report {
            receiver: 4,
            counter: 5,
            got: 6,
            expected: 7,
            done: false,
            congested: true,
            mode: Some(Mode::Assisted),
            placed: 8,
            needs: vec![(0, 2), (5, 9)],
            naks: vec![Nak {
                object: 1,
                missing: vec![(0, 1), (4, 6)],
            }],
        }));
    }

    #[test]
    fn a_long_report_is_cut_to_one_packet_and_its_needs_run_to_the_end() {
        let report = Report {
            needs: (0..200).map(|i| (i * 4, i * 4 + 1)).collect(),
            naks: (0..500)
                .map(|object| Nak {
                    object,
                    missing: vec![(1, 2)],
                })
                .collect(),
            ..Report::default()
        };
        let key = Key([1; 32]);
        let mut out = Vec::new();
        encode(1, &key, &Packet::Report(report), &mut out);
        assert!(out.len() <= MAX_PACKET, "{}", out.len());
        let Ok(Packet::Report(back)) = decode(&out, Some(1), Some(&key)) else {
            panic!("not a report")
        };
        assert_eq!(back.needs.len(), MAX_NEEDS);
        assert_eq!(back.needs.last().map(|n| n.1), Some(u32::MAX));
        assert!(!back.naks.is_empty() && back.naks.len() < 500);
    }

    #[test]
    fn foreign_forged_and_random_packets_are_refused() {
        let key = Key([7; 32]);
        let payload = [1u8; 10];
        let mut out = Vec::new();
        let data = Packet::Data(Data {
            seq: 1,
            object: 0,
            frag: 0,
            frags: 1,
            repair: false,
            payload: &payload,
        });
        encode(9, &key, &data, &mut out);
        assert_eq!(decode(&out, Some(8), Some(&key)), Err(Bad::OtherSession));
        assert_eq!(decode(&out, Some(9), Some(&Key([8; 32]))), Err(Bad::Tag));
        let mut flipped = out.clone();
        flipped[HEADER_LEN + 14] ^= 1;
        assert_eq!(decode(&flipped, Some(9), Some(&key)), Err(Bad::Tag));
        for len in 0..200 {
            let junk: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            assert!(decode(&junk, Some(9), Some(&key)).is_err());
            let _ = decode(&junk, None, None); // never panics
        }
        for cut in 0..out.len() {
            let _ = decode(&out[..cut], None, None);
        }
    }
}
