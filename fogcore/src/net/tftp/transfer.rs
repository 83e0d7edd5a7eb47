//! One read transfer as a state machine: packets and clock ticks in, what to send out. No I/O and
//! no clock of its own (the caller passes `now`), so every path tests without sockets or sleeps.
//!
//! Blocks are numbered internally from 1 as `u64`, so files of any size work; on the wire the
//! block number is the low 16 bits (it rolls over from 65535 to 0, as tftpd-hpa, iPXE, curl and
//! atftp expect). With a window of `w` blocks (RFC 7440) an ACK for block `b` is matched to the
//! one block in flight with those low bits; a window is at most 32768 blocks, so that is never
//! ambiguous.

use std::time::{Duration, Instant};

/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;
/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Block size without the blksize option.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Largest window this engine negotiates (keeps ACK matching unambiguous across rollover).
pub const MAX_WINDOWSIZE: u16 = 32768;

/// Server-side limits applied to what a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted.
    pub max_blksize: u16,
    /// Largest window granted.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client sends no `timeout` option.
    pub timeout: Duration,
    /// Retransmissions of one packet (or window) before giving up.
    pub retries: u32,
}

/// The outcome of option negotiation (RFC 2347): the parameters of the transfer and the OACK
/// options, empty when the client asked for nothing this server supports (then no OACK is sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Block size in bytes.
    pub blksize: u16,
    /// Blocks sent before waiting for an ACK.
    pub windowsize: u16,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// Options to acknowledge, in the order asked, with the client's spelling of the names.
    pub oack: Vec<(String, String)>,
}

/// Negotiates `blksize` (RFC 2348), `tsize` and `timeout` (RFC 2349) and `windowsize` (RFC 7440)
/// for a read of `size` bytes. Values out of range are ignored (the option is left out of the
/// OACK, as RFC 2347 allows); sizes above the limits are lowered to them. Unknown options are
/// ignored.
pub fn negotiate(options: &[(String, String)], size: u64, limits: &Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: limits.timeout,
        oack: Vec::new(),
    };
    let max_blksize = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    let max_window = limits.max_windowsize.clamp(1, MAX_WINDOWSIZE);
    for (name, value) in options {
        let Ok(v) = value.trim().parse::<u64>() else { continue };
        let granted = match name.to_ascii_lowercase().as_str() {
            "blksize" if v >= u64::from(MIN_BLKSIZE) => {
                n.blksize = u16::try_from(v).unwrap_or(u16::MAX).min(max_blksize);
                u64::from(n.blksize)
            }
            "windowsize" if v >= 1 => {
                n.windowsize = u16::try_from(v).unwrap_or(u16::MAX).min(max_window);
                u64::from(n.windowsize)
            }
            "timeout" if (1..=255).contains(&v) => {
                n.timeout = Duration::from_secs(v);
                v
            }
            "tsize" => size,
            _ => continue,
        };
        if n.oack.iter().any(|(seen, _)| seen.eq_ignore_ascii_case(name)) {
            continue; // a repeated option: the first one counts
        }
        n.oack.push((name.clone(), granted.to_string()));
    }
    n
}

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send (or resend) the OACK, then wait.
    SendOack,
    /// Send blocks `first ..= first + count - 1` (see [`Transfer::block`]), then wait.
    SendBlocks {
        /// First block (internal numbering from 1).
        first: u64,
        /// How many.
        count: u64,
    },
    /// Nothing to send; wait for a packet or the deadline.
    Wait,
    /// The client acknowledged the last block: done.
    Finished,
    /// The client sent an ERROR: stop at once, send nothing.
    ClientError,
    /// No answer after all retries: stop.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// OACK sent, waiting for ACK 0.
    Oack,
    /// Sending data.
    Data,
    /// Over (finished, aborted or timed out); every input answers `Wait`.
    Over,
}

/// The sending side of one read transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    size: u64,
    blksize: u64,
    window: u64,
    timeout: Duration,
    retries: u32,
    retries_left: u32,
    /// Index of the last block (`size / blksize + 1`; it is shorter than blksize, maybe empty).
    last: u64,
    /// Highest block acknowledged (0 before any).
    acked: u64,
    /// Highest block sent in the current window.
    sent: u64,
    phase: Phase,
    deadline: Instant,
}

/// Where block `index` lies in the file and how it is numbered on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Block number on the wire.
    pub number: u16,
    /// Byte offset in the file.
    pub offset: u64,
    /// Payload length.
    pub len: usize,
}

impl Transfer {
    /// A transfer of `size` bytes with the negotiated parameters; `oack` says whether an OACK
    /// opens it (the client then acknowledges it with ACK 0 before data flows).
    pub fn new(size: u64, negotiated: &Negotiated, oack: bool, retries: u32, now: Instant) -> Transfer {
        let blksize = u64::from(negotiated.blksize.max(MIN_BLKSIZE));
        Transfer {
            size,
            blksize,
            window: u64::from(negotiated.windowsize.clamp(1, MAX_WINDOWSIZE)),
            timeout: negotiated.timeout,
            retries,
            retries_left: retries,
            last: size / blksize + 1,
            acked: 0,
            sent: 0,
            phase: if oack { Phase::Oack } else { Phase::Data },
            deadline: now + negotiated.timeout,
        }
    }

    /// The first step: the OACK, or the first window of data.
    pub fn start(&mut self, now: Instant) -> Step {
        self.deadline = now + self.timeout;
        match self.phase {
            Phase::Oack => Step::SendOack,
            Phase::Data => self.next_window(now),
            Phase::Over => Step::Wait,
        }
    }

    /// When the caller should call [`Transfer::on_timeout`] if no packet comes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Number of the last block; the transfer is complete when it is acknowledged.
    pub fn last_block(&self) -> u64 {
        self.last
    }

    /// Blocks acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Whether the transfer is over (finished, aborted or timed out).
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    /// Offset, length and wire number of block `index` (from 1).
    pub fn block(&self, index: u64) -> Block {
        let offset = index.saturating_sub(1).saturating_mul(self.blksize).min(self.size);
        let len = (self.size - offset).min(self.blksize);
        Block {
            number: index as u16, // the wire number is the low 16 bits: rollover to 0
            offset,
            len: usize::try_from(len).unwrap_or(usize::MAX),
        }
    }

    /// An ACK for wire block `number` arrived.
    pub fn on_ack(&mut self, number: u16, now: Instant) -> Step {
        match self.phase {
            Phase::Over => Step::Wait,
            Phase::Oack if number == 0 => {
                self.phase = Phase::Data;
                self.next_window(now)
            }
            Phase::Oack => Step::Wait,
            Phase::Data => {
                // Distance from the last acknowledged block, modulo 2^16.
                let ahead = u64::from(number.wrapping_sub(self.acked as u16));
                if ahead == 0 || ahead > self.sent - self.acked {
                    // A duplicate (or stale, or not yet sent) ACK: answering it would double
                    // every later packet (the sorcerer's apprentice); the timer covers real loss.
                    return Step::Wait;
                }
                self.acked += ahead;
                if self.acked >= self.last {
                    self.phase = Phase::Over;
                    return Step::Finished;
                }
                // The whole window, or a part of it (RFC 7440: the client lost the rest): go on
                // from the block after the acknowledged one.
                self.next_window(now)
            }
        }
    }

    /// The client sent an ERROR: the transfer ends, nothing more is sent.
    pub fn on_error(&mut self) -> Step {
        if self.phase == Phase::Over {
            return Step::Wait;
        }
        self.phase = Phase::Over;
        Step::ClientError
    }

    /// The clock reached (or passed) [`Transfer::deadline`]: retransmit, or give up.
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        if self.phase == Phase::Over || now < self.deadline {
            return Step::Wait;
        }
        if self.retries_left == 0 {
            self.phase = Phase::Over;
            return Step::TimedOut;
        }
        self.retries_left -= 1;
        self.deadline = now + self.timeout;
        match self.phase {
            Phase::Oack => Step::SendOack,
            _ => Step::SendBlocks {
                first: self.acked + 1,
                count: self.sent - self.acked,
            },
        }
    }

    fn next_window(&mut self, now: Instant) -> Step {
        let first = self.acked + 1;
        let count = self.window.min(self.last - self.acked);
        self.sent = self.acked + count;
        self.retries_left = self.retries;
        self.deadline = now + self.timeout;
        Step::SendBlocks { first, count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_blksize: 1468,
            max_windowsize: 64,
            timeout: Duration::from_secs(1),
            retries: 3,
        }
    }

    fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect()
    }

    fn plain(blksize: u16, windowsize: u16) -> Negotiated {
        Negotiated {
            blksize,
            windowsize,
            timeout: Duration::from_secs(1),
            oack: Vec::new(),
        }
    }

    #[test]
    fn negotiates_every_supported_option() {
        let n = negotiate(
            &opts(&[
                ("tsize", "0"),
                ("BLKSIZE", "1428"),
                ("timeout", "3"),
                ("windowsize", "16"),
                ("x-foo", "1"),
            ]),
            12345,
            &limits(),
        );
        assert_eq!(n.blksize, 1428);
        assert_eq!(n.windowsize, 16);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack,
            opts(&[
                ("tsize", "12345"),
                ("BLKSIZE", "1428"),
                ("timeout", "3"),
                ("windowsize", "16")
            ])
        );
    }

    #[test]
    fn lowers_sizes_to_the_limits_and_ignores_bad_values() {
        let n = negotiate(&opts(&[("blksize", "65464"), ("windowsize", "99999")]), 1, &limits());
        assert_eq!((n.blksize, n.windowsize), (1468, 64));
        assert_eq!(n.oack, opts(&[("blksize", "1468"), ("windowsize", "64")]));
        let n = negotiate(
            &opts(&[
                ("blksize", "7"),
                ("timeout", "0"),
                ("timeout", "256"),
                ("windowsize", "0"),
                ("tsize", "x"),
            ]),
            1,
            &limits(),
        );
        assert_eq!(n, plain(512, 1));
    }

    #[test]
    fn no_options_means_no_oack() {
        assert!(negotiate(&[], 10, &limits()).oack.is_empty());
    }

    #[test]
    fn first_of_repeated_options_counts() {
        let n = negotiate(&opts(&[("blksize", "1024"), ("blksize", "2048")]), 1, &limits());
        assert_eq!(n.oack, opts(&[("blksize", "1024")]));
    }

    /// Runs a transfer to completion with a perfect client, returning every block sent.
    fn run_lossless(size: u64, n: &Negotiated, oack: bool) -> Vec<u64> {
        let now = Instant::now();
        let mut t = Transfer::new(size, n, oack, 3, now);
        let mut step = t.start(now);
        let mut sent = Vec::new();
        loop {
            match step {
                Step::SendOack => step = t.on_ack(0, now),
                Step::SendBlocks { first, count } => {
                    sent.extend(first..first + count);
                    step = t.on_ack(t.block(first + count - 1).number, now);
                }
                Step::Finished => return sent,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn sends_every_block_once_and_a_short_last_block() {
        let sent = run_lossless(1024, &plain(512, 1), false);
        assert_eq!(sent, vec![1, 2, 3]); // 512 + 512 + an empty block
        let t = Transfer::new(1000, &plain(512, 1), false, 3, Instant::now());
        assert_eq!(
            t.block(2),
            Block {
                number: 2,
                offset: 512,
                len: 488
            }
        );
        let t = Transfer::new(0, &plain(512, 1), false, 3, Instant::now());
        assert_eq!(
            t.block(1),
            Block {
                number: 1,
                offset: 0,
                len: 0
            }
        );
    }

    #[test]
    fn oack_waits_for_ack_zero() {
        let now = Instant::now();
        let mut t = Transfer::new(10, &plain(512, 1), true, 3, now);
        assert_eq!(t.start(now), Step::SendOack);
        assert_eq!(t.on_ack(1, now), Step::Wait);
        assert_eq!(t.on_ack(0, now), Step::SendBlocks { first: 1, count: 1 });
        assert_eq!(t.on_ack(0, now), Step::Wait, "a duplicate ACK 0 sends nothing");
        assert_eq!(t.on_ack(1, now), Step::Finished);
    }

    #[test]
    fn windows_and_partial_acks() {
        let now = Instant::now();
        let mut t = Transfer::new(512 * 40, &plain(512, 16), false, 3, now);
        assert_eq!(t.start(now), Step::SendBlocks { first: 1, count: 16 });
        // The client lost block 6: it acknowledges 5, the window restarts at 6.
        assert_eq!(t.on_ack(5, now), Step::SendBlocks { first: 6, count: 16 });
        assert_eq!(t.on_ack(5, now), Step::Wait);
        assert_eq!(t.on_ack(21, now), Step::SendBlocks { first: 22, count: 16 });
        assert_eq!(t.on_ack(99, now), Step::Wait, "an ACK for a block not sent is ignored");
        assert_eq!(t.on_ack(37, now), Step::SendBlocks { first: 38, count: 4 });
        assert_eq!(t.on_ack(41, now), Step::Finished);
        let sent = run_lossless(512 * 40, &plain(512, 16), true);
        assert_eq!(sent, (1..=41).collect::<Vec<_>>());
    }

    #[test]
    fn block_numbers_roll_over_past_65535() {
        let size = 512 * 70_000 + 7;
        let sent = run_lossless(size, &plain(512, 1), false);
        assert_eq!(sent.len(), 70_001);
        let t = Transfer::new(size, &plain(512, 1), false, 3, Instant::now());
        assert_eq!(t.block(65535).number, 65535);
        assert_eq!(t.block(65536).number, 0);
        assert_eq!(t.block(65537).number, 1);
        assert_eq!(
            t.block(70_001),
            Block {
                number: 4465,
                offset: 512 * 70_000,
                len: 7
            }
        );
        let sent = run_lossless(size, &plain(512, 16), false);
        assert_eq!(sent, (1..=70_001).collect::<Vec<_>>());
    }

    #[test]
    fn a_window_across_the_rollover_is_acknowledged_by_its_wire_number() {
        let now = Instant::now();
        let mut t = Transfer::new(512 * 70_000, &plain(512, 10), false, 3, now);
        let mut step = t.start(now);
        while let Step::SendBlocks { first, count } = step {
            if first + count > 65_537 {
                break;
            }
            step = t.on_ack(t.block(first + count - 1).number, now);
        }
        let Step::SendBlocks { first, count } = step else {
            panic!("{step:?}")
        };
        assert!(first <= 65_536 && first + count > 65_536);
        // ACK of wire block 2 = block 65538, inside this window.
        assert_eq!((first, count), (65_531, 10));
        assert_eq!(
            t.on_ack(2, now),
            Step::SendBlocks {
                first: 65_539,
                count: 10
            }
        );
        assert_eq!(t.acked(), 65_538);
    }

    #[test]
    fn retransmits_on_timeout_then_gives_up() {
        let start = Instant::now();
        let mut t = Transfer::new(2048, &plain(512, 2), false, 2, start);
        assert_eq!(t.start(start), Step::SendBlocks { first: 1, count: 2 });
        let early = start + Duration::from_millis(500);
        assert_eq!(t.on_timeout(early), Step::Wait, "before the deadline nothing is resent");
        let t1 = t.deadline();
        assert_eq!(t.on_timeout(t1), Step::SendBlocks { first: 1, count: 2 });
        assert_eq!(
            t.on_ack(1, t1),
            Step::SendBlocks { first: 2, count: 2 },
            "progress resets retries"
        );
        let t2 = t.deadline();
        assert_eq!(t.on_timeout(t2), Step::SendBlocks { first: 2, count: 2 });
        let t3 = t.deadline();
        assert_eq!(t.on_timeout(t3), Step::SendBlocks { first: 2, count: 2 });
        let t4 = t.deadline();
        assert_eq!(t.on_timeout(t4), Step::TimedOut);
        assert!(t.is_over());
        assert_eq!(t.on_timeout(t4 + Duration::from_secs(9)), Step::Wait);
    }

    #[test]
    fn oack_is_retransmitted_too() {
        let now = Instant::now();
        let mut t = Transfer::new(1, &plain(512, 1), true, 1, now);
        assert_eq!(t.start(now), Step::SendOack);
        assert_eq!(t.on_timeout(t.deadline()), Step::SendOack);
        assert_eq!(t.on_timeout(t.deadline()), Step::TimedOut);
    }

    #[test]
    fn client_error_stops_everything() {
        let now = Instant::now();
        let mut t = Transfer::new(1 << 20, &plain(512, 1), true, 5, now);
        assert_eq!(t.start(now), Step::SendOack);
        assert_eq!(t.on_error(), Step::ClientError);
        assert_eq!(
            t.on_timeout(t.deadline()),
            Step::Wait,
            "no retransmission after an ERROR"
        );
        assert_eq!(t.on_ack(0, now), Step::Wait);
        assert_eq!(t.on_error(), Step::Wait);
    }

    #[test]
    fn duplicate_acks_do_not_double_the_traffic() {
        let now = Instant::now();
        let mut t = Transfer::new(512 * 10, &plain(512, 1), false, 3, now);
        assert_eq!(t.start(now), Step::SendBlocks { first: 1, count: 1 });
        assert_eq!(t.on_ack(1, now), Step::SendBlocks { first: 2, count: 1 });
        // A delayed duplicate of ACK 1 arrives: block 2 must not go out twice.
        assert_eq!(t.on_ack(1, now), Step::Wait);
        assert_eq!(t.on_ack(2, now), Step::SendBlocks { first: 3, count: 1 });
    }
}
