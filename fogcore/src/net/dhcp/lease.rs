//! Leases: the in-memory table the engine decides from, and the durable log behind it.
//!
//! The log is append-only text, one record per line with a CRC32, fsynced before the ACKs it
//! covers leave (group commit: one fsync for every record queued meanwhile). At start it is
//! replayed and compacted (write a snapshot to a temporary name, fsync, rename, fsync the
//! directory), so a crash at any point leaves either the old or the new log readable; a torn last
//! line fails its CRC and is skipped (its ACK never left).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::config::Mac;
use crate::error::IoContext;
use crate::{Error, Result};

/// One durable change to the lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `mac` holds `ip` until `expires` (0 after a release: free, but remembered for that client).
    Bound {
        /// Client.
        mac: Mac,
        /// Its address.
        ip: Ipv4Addr,
        /// Unix seconds.
        expires: u64,
        /// Option 12 from the client, if any.
        hostname: Option<String>,
    },
    /// The client gave `ip` back.
    Released {
        /// Client.
        mac: Mac,
        /// Address.
        ip: Ipv4Addr,
    },
    /// A client found `ip` in use: nobody gets it before `until`.
    Declined {
        /// Address.
        ip: Ipv4Addr,
        /// Unix seconds.
        until: u64,
    },
}

impl Record {
    fn to_line(&self) -> String {
        let body = match self {
            Record::Bound {
                mac,
                ip,
                expires,
                hostname,
            } => {
                format!(
                    "L {mac} {ip} {expires} {}",
                    hostname.as_deref().map(clean_hostname).unwrap_or_else(|| "-".into())
                )
            }
            Record::Released { mac, ip } => format!("R {mac} {ip}"),
            Record::Declined { ip, until } => format!("D {ip} {until}"),
        };
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body} {crc:08x}\n")
    }

    fn from_line(line: &str) -> Option<Record> {
        let (body, crc) = line.rsplit_once(' ')?;
        if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
            return None;
        }
        let f: Vec<&str> = body.split(' ').collect();
        match f.as_slice() {
            ["L", mac, ip, expires, host] => Some(Record::Bound {
                mac: mac.parse().ok()?,
                ip: ip.parse().ok()?,
                expires: expires.parse().ok()?,
                hostname: (*host != "-").then(|| host.to_string()),
            }),
            ["R", mac, ip] => Some(Record::Released {
                mac: mac.parse().ok()?,
                ip: ip.parse().ok()?,
            }),
            ["D", ip, until] => Some(Record::Declined {
                ip: ip.parse().ok()?,
                until: until.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// Host names go into a space-separated log: keep them printable, short, and without spaces.
fn clean_hostname(h: &str) -> String {
    let s: String = h
        .chars()
        .take(63)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if s.is_empty() || s == "-" { "_".into() } else { s }
}

/// What holds an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldKind {
    /// Offered, not yet requested (memory only).
    Offered,
    /// Leased (durable).
    Bound,
    /// Declined by a client (durable).
    Declined,
}

/// The holder of one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Offer, lease or decline.
    pub kind: HoldKind,
    /// The client (none for a decline).
    pub mac: Option<Mac>,
    /// Unix seconds after which the address is free again.
    pub until: u64,
    /// Client host name (leases).
    pub hostname: Option<String>,
}

/// The lease table: who holds which address, and which address each client had last.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    by_ip: HashMap<Ipv4Addr, Holder>,
    by_mac: HashMap<Mac, Ipv4Addr>,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a durable record (from the log, or decided by the engine).
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Bound {
                mac,
                ip,
                expires,
                hostname,
            } => {
                self.assign(*mac, *ip, HoldKind::Bound, *expires, hostname.clone());
            }
            Record::Released { mac, ip } => {
                if let Some(h) = self.by_ip.get_mut(ip).filter(|h| h.mac == Some(*mac)) {
                    h.kind = HoldKind::Bound;
                    h.until = 0;
                }
            }
            Record::Declined { ip, until } => {
                if let Some(old) = self.by_ip.get(ip).and_then(|h| h.mac)
                    && self.by_mac.get(&old) == Some(ip)
                {
                    self.by_mac.remove(&old);
                }
                self.by_ip.insert(
                    *ip,
                    Holder {
                        kind: HoldKind::Declined,
                        mac: None,
                        until: *until,
                        hostname: None,
                    },
                );
            }
        }
    }

    /// Holds `ip` for `mac` (offer or lease), releasing the address `mac` held before.
    pub fn assign(&mut self, mac: Mac, ip: Ipv4Addr, kind: HoldKind, until: u64, hostname: Option<String>) {
        if let Some(prev) = self.by_mac.insert(mac, ip)
            && prev != ip
            && self.by_ip.get(&prev).is_some_and(|h| h.mac == Some(mac))
        {
            self.by_ip.remove(&prev);
        }
        if let Some(other) = self.by_ip.get(&ip).and_then(|h| h.mac).filter(|m| *m != mac)
            && self.by_mac.get(&other) == Some(&ip)
        {
            self.by_mac.remove(&other);
        }
        self.by_ip.insert(
            ip,
            Holder {
                kind,
                mac: Some(mac),
                until,
                hostname,
            },
        );
    }

    /// The holder of `ip`, if any (possibly expired).
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&Holder> {
        self.by_ip.get(&ip)
    }

    /// The address `mac` holds or held last.
    pub fn address_of(&self, mac: Mac) -> Option<Ipv4Addr> {
        self.by_mac.get(&mac).copied()
    }

    /// The live lease of `mac`: (address, expiry), if bound and not expired at `now`.
    pub fn lease_of(&self, mac: Mac, now: u64) -> Option<(Ipv4Addr, u64)> {
        let ip = self.address_of(mac)?;
        let h = self.by_ip.get(&ip)?;
        (h.kind == HoldKind::Bound && h.mac == Some(mac) && h.until > now).then_some((ip, h.until))
    }

    /// True when `mac` may have `ip` at `now`: nobody holds it, `mac` does, or the hold expired.
    pub fn is_free_for(&self, ip: Ipv4Addr, mac: Mac, now: u64) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(h) if h.until <= now => true,
            Some(h) => h.kind != HoldKind::Declined && h.mac == Some(mac),
        }
    }

    /// True when nobody ever held `ip` (or it was cleared): allocation prefers these, so an expired
    /// lease stays with its client as long as possible.
    pub fn never_held(&self, ip: Ipv4Addr) -> bool {
        !self.by_ip.contains_key(&ip)
    }

    /// Forgets the offer `mac` got, if it is still only an offer.
    pub fn drop_offer(&mut self, mac: Mac) {
        if let Some(ip) = self.by_mac.get(&mac).copied()
            && self
                .by_ip
                .get(&ip)
                .is_some_and(|h| h.kind == HoldKind::Offered && h.mac == Some(mac))
        {
            self.by_ip.remove(&ip);
            self.by_mac.remove(&mac);
        }
    }

    /// Number of addresses held (any kind, expired included).
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// The durable state as records (leases and declines; offers are not durable).
    pub fn records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .by_ip
            .iter()
            .filter_map(|(ip, h)| match (h.kind, h.mac) {
                (HoldKind::Bound, Some(mac)) => Some(Record::Bound {
                    mac,
                    ip: *ip,
                    expires: h.until,
                    hostname: h.hostname.clone(),
                }),
                (HoldKind::Declined, _) => Some(Record::Declined {
                    ip: *ip,
                    until: h.until,
                }),
                _ => None,
            })
            .collect();
        out.sort_by_key(|r| match r {
            Record::Bound { ip, .. } | Record::Released { ip, .. } | Record::Declined { ip, .. } => u32::from(*ip),
        });
        out
    }
}

/// The durable lease log. Not async: the server calls it from a blocking thread.
#[derive(Debug)]
pub struct LeaseLog {
    path: PathBuf,
    file: File,
    /// The table as the log has it (durable records only), used to compact.
    mirror: LeaseTable,
    lines: usize,
}

impl LeaseLog {
    /// Opens (creating) the log at `path`, replays it, compacts it, and returns it with the table.
    pub fn open(path: &Path) -> Result<(LeaseLog, LeaseTable)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        let mut table = LeaseTable::new();
        match File::open(path) {
            Ok(f) => {
                let mut reader = BufReader::new(f);
                let mut buf = Vec::new();
                let mut lineno = 0usize;
                loop {
                    buf.clear();
                    let n = reader.read_until(b'\n', &mut buf).at(path)?;
                    if n == 0 {
                        break;
                    }
                    lineno += 1;
                    let complete = buf.last() == Some(&b'\n');
                    let record = std::str::from_utf8(&buf)
                        .ok()
                        .map(str::trim_end)
                        .and_then(Record::from_line);
                    match record {
                        Some(r) if complete => table.apply(&r),
                        _ => tracing::warn!(path = %path.display(), line = lineno, "skipping a damaged lease record"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
        let file = write_snapshot(path, &table)?;
        let lines = table.len();
        Ok((
            LeaseLog {
                path: path.to_path_buf(),
                file,
                mirror: table.clone(),
                lines,
            },
            table,
        ))
    }

    /// Appends `records` and fsyncs them: when this returns Ok, they survive a crash.
    pub fn commit(&mut self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = String::with_capacity(records.len() * 64);
        for r in records {
            buf.push_str(&r.to_line());
            self.mirror.apply(r);
        }
        self.file.write_all(buf.as_bytes()).at(&self.path)?;
        self.file.sync_data().at(&self.path)?;
        self.lines += records.len();
        if self.lines > 4096 && self.lines > 4 * self.mirror.len() {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the log with only the live state.
    pub fn compact(&mut self) -> Result<()> {
        self.file = write_snapshot(&self.path, &self.mirror)?;
        self.lines = self.mirror.len();
        Ok(())
    }
}

/// Writes `table` to `path` crash-safely and returns the file opened for appending.
fn write_snapshot(path: &Path, table: &LeaseTable) -> Result<File> {
    let mut text = String::new();
    for r in table.records() {
        text.push_str(&r.to_line());
    }
    crate::fsutil::write_durably(path, text.as_bytes())?;
    OpenOptions::new().append(true).open(path).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn log_survives_reopen_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases");
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        {
            let (mut log, table) = LeaseLog::open(&path).expect("open");
            assert!(table.is_empty());
            log.commit(&[Record::Bound {
                mac: mac(1),
                ip,
                expires: 1000,
                hostname: Some("pc one".into()),
            }])
            .expect("commit");
        }
        // A crash in the middle of the next append.
        let mut f = OpenOptions::new().append(true).open(&path).expect("append");
        f.write_all(b"L 52:54:00:00:00:02 10.0.0.6 20").expect("write");
        drop(f);
        let (_log, table) = LeaseLog::open(&path).expect("reopen");
        assert_eq!(table.lease_of(mac(1), 10), Some((ip, 1000)));
        assert_eq!(table.holder(ip).and_then(|h| h.hostname.clone()), Some("pc_one".into()));
        assert_eq!(table.address_of(mac(2)), None);
    }

    #[test]
    fn compaction_keeps_only_the_live_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases");
        let (mut log, _) = LeaseLog::open(&path).expect("open");
        for i in 0..5000u64 {
            let ip = Ipv4Addr::new(10, 0, 0, (i % 3) as u8 + 1);
            log.commit(&[Record::Bound {
                mac: mac(1),
                ip,
                expires: i,
                hostname: None,
            }])
            .expect("commit");
        }
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.lines().count() < 2000, "log was compacted");
        let (_log, table) = LeaseLog::open(&path).expect("reopen");
        assert_eq!(
            table.address_of(mac(1)),
            Some(Ipv4Addr::new(10, 0, 0, (4999 % 3) as u8 + 1))
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn moving_a_client_frees_its_old_address() {
        let mut t = LeaseTable::new();
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        t.apply(&Record::Bound {
            mac: mac(1),
            ip: a,
            expires: 100,
            hostname: None,
        });
        t.apply(&Record::Bound {
            mac: mac(1),
            ip: b,
            expires: 100,
            hostname: None,
        });
        assert!(t.holder(a).is_none());
        assert!(!t.is_free_for(b, mac(2), 50));
        assert!(t.is_free_for(b, mac(2), 100), "expired");
        t.apply(&Record::Released { mac: mac(1), ip: b });
        assert!(t.is_free_for(b, mac(2), 50));
        t.apply(&Record::Declined { ip: b, until: 200 });
        assert!(!t.is_free_for(b, mac(1), 150));
        assert_eq!(t.address_of(mac(1)), None);
    }
}
