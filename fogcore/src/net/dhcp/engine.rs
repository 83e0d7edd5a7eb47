//! The decision logic: request bytes + lease table + config -> a reply (or nothing) and the lease
//! record that must be durable before the reply leaves. No I/O, no clock: `now` is an argument.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};

use super::config::{Checked, CheckedPool, DhcpConfig, DhcpMode, Mac};
use super::lease::{HoldKind, LeaseTable, Record};
use super::options::{
    add_boot, append_raw, boot_request, decode_request, encode_reply, mac_of, relay_agent_information, set_raw,
};
use crate::net::boot::BootPolicy;

/// Which socket a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The DHCP server port (67).
    Dhcp,
    /// The PXE boot server port (4011, proxy mode).
    Proxy,
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Unicast to this address (a relay, or a client that has an address).
    To(SocketAddrV4),
    /// 255.255.255.255:68 on the served interface.
    Broadcast,
}

/// An encoded reply and its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The message, padded to the BOOTP minimum.
    pub bytes: Vec<u8>,
    /// Where to send it.
    pub to: Dest,
}

/// What the engine decided for one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply to send, if any.
    pub reply: Option<Reply>,
    /// A lease change that must be durable before `reply` is sent.
    pub record: Option<Record>,
}

impl Outcome {
    fn none() -> Self {
        Outcome::default()
    }
}

/// The DHCP state machine of one server: config, lease table, boot policy.
pub struct Engine {
    cfg: Checked,
    table: LeaseTable,
    policy: Arc<dyn BootPolicy>,
    /// Next address to try per pool.
    cursors: Vec<u32>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cfg", &self.cfg)
            .field("leases", &self.table.len())
            .finish()
    }
}

fn opt_ip(msg: &Message, code: OptionCode) -> Option<Ipv4Addr> {
    match msg.opts().get(code) {
        Some(DhcpOption::RequestedIpAddress(ip) | DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

fn nonzero(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    (!ip.is_unspecified()).then_some(ip)
}

impl Engine {
    pub(crate) fn new(cfg: Checked, table: LeaseTable, policy: Arc<dyn BootPolicy>) -> Self {
        let cursors = cfg.pools.iter().map(|p| p.first).collect();
        Engine {
            cfg,
            table,
            policy,
            cursors,
        }
    }

    /// An engine for `config` (checked as [`super::check`] does) over `table`: the server's
    /// decision logic without its sockets, for fuzzing and embedding.
    pub fn from_config(config: &DhcpConfig, table: LeaseTable, policy: Arc<dyn BootPolicy>) -> crate::Result<Self> {
        Ok(Self::new(Checked::try_from(config)?, table, policy))
    }

    /// The lease table as the engine sees it (offers included).
    pub fn table(&self) -> &LeaseTable {
        &self.table
    }

    /// Decides the answer to one datagram received from `from` on `port` at time `now`.
    /// Malformed or uninteresting packets give an empty outcome.
    pub fn handle(&mut self, bytes: &[u8], from: SocketAddr, port: Port, now: u64) -> Outcome {
        let Some(msg) = decode_request(bytes) else {
            tracing::debug!(%from, len = bytes.len(), "dropping a malformed DHCP packet");
            return Outcome::none();
        };
        let (Some(mac), Some(kind)) = (mac_of(&msg), msg.opts().msg_type()) else {
            tracing::debug!(%from, "dropping a DHCP packet without message type");
            return Outcome::none();
        };
        let mac = Mac(mac);
        tracing::trace!(%from, %mac, ?kind, "dhcp request");
        let mut outcome = match self.cfg.mode {
            DhcpMode::Full if port == Port::Dhcp => self.full(&msg, mac, kind, from, now),
            DhcpMode::Full => Outcome::none(),
            DhcpMode::Proxy => self.proxy(&msg, mac, kind, from, port),
        };
        if nonzero(msg.giaddr()).is_some()
            && let Some(info) = relay_agent_information(bytes)
            && let Some(reply) = &mut outcome.reply
            && !append_raw(&mut reply.bytes, 82, info)
        {
            tracing::debug!(%from, %mac, "cannot echo the relay agent information");
        }
        outcome
    }

    fn pool_index(&self, msg: &Message) -> Option<usize> {
        if let Some(gi) = nonzero(msg.giaddr()) {
            return self.cfg.pool_for(gi);
        }
        if let Some(ci) = nonzero(msg.ciaddr())
            && let Some(i) = self.cfg.pool_for(ci)
        {
            return Some(i);
        }
        self.cfg
            .pool_for(self.cfg.server_ip)
            .or((self.cfg.pools.len() == 1).then_some(0))
    }

    fn full(&mut self, msg: &Message, mac: Mac, kind: MessageType, from: SocketAddr, now: u64) -> Outcome {
        let Some(pi) = self.pool_index(msg) else {
            tracing::debug!(%mac, giaddr = %msg.giaddr(), "no pool for this client's subnet");
            return Outcome::none();
        };
        match kind {
            MessageType::Discover => self.discover(msg, mac, pi, from, now),
            MessageType::Request => self.request(msg, mac, pi, from, now),
            MessageType::Decline => self.decline(msg, mac, now),
            MessageType::Release => self.release(msg, mac),
            MessageType::Inform => self.inform(msg, mac, pi, from),
            _ => Outcome::none(),
        }
    }

    /// True when `mac` may get the dynamic address `ip` from pool `pool`.
    fn dynamic_ok(&self, pool: &CheckedPool, ip: Ipv4Addr, mac: Mac, now: u64) -> bool {
        pool.in_range(ip)
            && ip != self.cfg.server_ip
            && !pool.reserved_ips.contains(&ip)
            && self.table.is_free_for(ip, mac, now)
    }

    fn allocate(&mut self, pi: usize, mac: Mac, now: u64) -> Option<Ipv4Addr> {
        let pool = self.cfg.pools.get(pi)?;
        let size = u64::from(pool.last - pool.first) + 1;
        let start = u64::from(
            self.cursors
                .get(pi)
                .copied()
                .unwrap_or(pool.first)
                .saturating_sub(pool.first),
        );
        let mut fallback = None;
        for k in 0..size {
            let n = pool.first + ((start + k) % size) as u32;
            let ip = Ipv4Addr::from(n);
            if pool.reserved_ips.contains(&ip) || ip == self.cfg.server_ip {
                continue;
            }
            if self.table.never_held(ip) {
                if let Some(c) = self.cursors.get_mut(pi) {
                    *c = n.wrapping_add(1);
                }
                return Some(ip);
            }
            if fallback.is_none() && self.table.is_free_for(ip, mac, now) {
                fallback = Some(ip);
            }
            if fallback.is_some() && k > 4096 {
                break;
            }
        }
        fallback
    }

    fn discover(&mut self, msg: &Message, mac: Mac, pi: usize, from: SocketAddr, now: u64) -> Outcome {
        let Some(pool) = self.cfg.pools.get(pi) else {
            return Outcome::none();
        };
        let ip = if let Some((ip, _)) = pool.by_mac.get(&mac) {
            Some(*ip)
        } else {
            let ok = |ip: &Ipv4Addr| self.dynamic_ok(pool, *ip, mac, now);
            self.table
                .address_of(mac)
                .filter(ok)
                .or_else(|| opt_ip(msg, OptionCode::RequestedIpAddress).filter(ok))
        };
        let Some(ip) = ip.or_else(|| self.allocate(pi, mac, now)) else {
            tracing::warn!(%mac, pool = %self.cfg.pools.get(pi).map(|p| p.subnet.to_string()).unwrap_or_default(), "pool exhausted: no address to offer");
            return Outcome::none();
        };
        if self.table.lease_of(mac, now).map(|(a, _)| a) != Some(ip) {
            self.table
                .assign(mac, ip, HoldKind::Offered, now + u64::from(self.cfg.offer_secs), None);
        }
        let reply = self.lease_reply(msg, mac, pi, MessageType::Offer, ip);
        Outcome {
            reply: reply.map(|bytes| Reply {
                bytes,
                to: dest(msg, from, false),
            }),
            record: None,
        }
    }

    fn request(&mut self, msg: &Message, mac: Mac, pi: usize, from: SocketAddr, now: u64) -> Outcome {
        let server_id = opt_ip(msg, OptionCode::ServerIdentifier);
        if server_id.is_some_and(|sid| sid != self.cfg.server_ip) {
            // The client chose another server.
            self.table.drop_offer(mac);
            return Outcome::none();
        }
        let requested = opt_ip(msg, OptionCode::RequestedIpAddress);
        let Some(ip) = requested.or_else(|| nonzero(msg.ciaddr())) else {
            tracing::debug!(%mac, "REQUEST without an address");
            return Outcome::none();
        };
        let Some(pool) = self.cfg.pools.get(pi) else {
            return Outcome::none();
        };
        let ok = pool.subnet.contains(ip)
            && match pool.by_mac.get(&mac) {
                Some((reserved, _)) => *reserved == ip,
                None => self.dynamic_ok(pool, ip, mac, now),
            };
        if !ok {
            tracing::debug!(%mac, %ip, "NAK");
            return Outcome {
                reply: self.nak(msg, from),
                record: None,
            };
        }
        let hostname = match msg.opts().get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => Some(h.clone()),
            _ => pool.by_mac.get(&mac).and_then(|(_, h)| h.clone()),
        };
        let record = Record::Bound {
            mac,
            ip,
            expires: now + u64::from(pool.lease_secs),
            hostname,
        };
        self.table.apply(&record);
        let reply = self.lease_reply(msg, mac, pi, MessageType::Ack, ip);
        match reply {
            Some(bytes) => Outcome {
                reply: Some(Reply {
                    bytes,
                    to: dest(msg, from, false),
                }),
                record: Some(record),
            },
            None => Outcome {
                reply: None,
                record: Some(record),
            },
        }
    }

    fn decline(&mut self, msg: &Message, mac: Mac, now: u64) -> Outcome {
        if opt_ip(msg, OptionCode::ServerIdentifier).is_some_and(|sid| sid != self.cfg.server_ip) {
            return Outcome::none();
        }
        let Some(ip) = opt_ip(msg, OptionCode::RequestedIpAddress) else {
            return Outcome::none();
        };
        if self.table.holder(ip).and_then(|h| h.mac) != Some(mac) {
            return Outcome::none();
        }
        tracing::info!(%mac, %ip, "client declined an address: in use by someone else?");
        let record = Record::Declined {
            ip,
            until: now + u64::from(self.cfg.decline_secs),
        };
        self.table.apply(&record);
        Outcome {
            reply: None,
            record: Some(record),
        }
    }

    fn release(&mut self, msg: &Message, mac: Mac) -> Outcome {
        let ip = msg.ciaddr();
        let held = self
            .table
            .holder(ip)
            .is_some_and(|h| h.mac == Some(mac) && h.kind == HoldKind::Bound);
        if !held {
            return Outcome::none();
        }
        let record = Record::Released { mac, ip };
        self.table.apply(&record);
        Outcome {
            reply: None,
            record: Some(record),
        }
    }

    fn inform(&mut self, msg: &Message, mac: Mac, pi: usize, from: SocketAddr) -> Outcome {
        let Some(mut m) = self.base(msg, MessageType::Ack) else {
            return Outcome::none();
        };
        m.set_ciaddr(msg.ciaddr());
        self.add_pool_options(&mut m, msg, mac, pi, None);
        let to = dest(msg, from, false);
        Outcome {
            reply: encode_reply(&m).map(|bytes| Reply { bytes, to }),
            record: None,
        }
    }

    fn proxy(&mut self, msg: &Message, mac: Mac, kind: MessageType, from: SocketAddr, port: Port) -> Outcome {
        let reply_kind = match (port, kind) {
            (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
            (Port::Proxy, MessageType::Request | MessageType::Inform) => MessageType::Ack,
            _ => return Outcome::none(),
        };
        let req = boot_request(msg, mac.0);
        if !req.is_pxe() {
            return Outcome::none();
        }
        let Some(boot) = self.policy.boot_file(&req) else {
            tracing::debug!(%mac, ?req, "boot policy has no file for this client");
            return Outcome::none();
        };
        let Some(mut m) = self.base(msg, reply_kind) else {
            return Outcome::none();
        };
        add_boot(&mut m, &req, &boot, self.cfg.server_ip);
        if !m.opts().contains(OptionCode::ClassIdentifier) {
            set_raw(&mut m, 60, b"PXEClient".to_vec());
        }
        echo_uuid(&mut m, msg);
        let to = match (port, from) {
            (Port::Proxy, SocketAddr::V4(v4)) if !v4.ip().is_unspecified() => Dest::To(v4),
            _ => dest(msg, from, false),
        };
        Outcome {
            reply: encode_reply(&m).map(|bytes| Reply { bytes, to }),
            record: None,
        }
    }

    /// A reply skeleton: same xid, flags, giaddr, chaddr; message type and server id.
    fn base(&self, req: &Message, kind: MessageType) -> Option<Message> {
        let mut m = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            req.chaddr(),
        );
        m.set_opcode(Opcode::BootReply);
        m.set_htype(req.htype());
        m.set_flags(req.flags());
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(self.cfg.server_ip));
        Some(m)
    }

    fn lease_reply(&self, req: &Message, mac: Mac, pi: usize, kind: MessageType, ip: Ipv4Addr) -> Option<Vec<u8>> {
        let mut m = self.base(req, kind)?;
        m.set_yiaddr(ip);
        let lease = self.cfg.pools.get(pi).map(|p| p.lease_secs);
        self.add_pool_options(&mut m, req, mac, pi, lease);
        encode_reply(&m)
    }

    fn add_pool_options(&self, m: &mut Message, req: &Message, mac: Mac, pi: usize, lease: Option<u32>) {
        let Some(pool) = self.cfg.pools.get(pi) else { return };
        let o = m.opts_mut();
        o.insert(DhcpOption::SubnetMask(pool.subnet.mask()));
        o.insert(DhcpOption::BroadcastAddr(pool.subnet.broadcast()));
        if let Some(r) = pool.router {
            o.insert(DhcpOption::Router(vec![r]));
        }
        if !pool.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServer(pool.dns.clone()));
        }
        if let Some(d) = &pool.domain {
            o.insert(DhcpOption::DomainName(d.clone()));
        }
        if let Some(secs) = lease {
            o.insert(DhcpOption::AddressLeaseTime(secs));
            o.insert(DhcpOption::Renewal(secs / 2));
            o.insert(DhcpOption::Rebinding((u64::from(secs) * 7 / 8) as u32));
        }
        if let Some((_, Some(h))) = pool.by_mac.get(&mac) {
            o.insert(DhcpOption::Hostname(h.clone()));
        }
        let req_boot = boot_request(req, mac.0);
        if req_boot.is_pxe()
            && let Some(boot) = self.policy.boot_file(&req_boot)
        {
            add_boot(m, &req_boot, &boot, self.cfg.server_ip);
            echo_uuid(m, req);
        }
        for (code, value) in &pool.options {
            set_raw(m, *code, value.clone());
            match code {
                67 => {
                    m.set_fname(value);
                }
                66 => {
                    if let Some(ip) = std::str::from_utf8(value).ok().and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                        m.set_siaddr(ip);
                    } else if let Ok(ip) = <[u8; 4]>::try_from(value.as_slice()) {
                        m.set_siaddr(Ipv4Addr::from(ip));
                    }
                }
                _ => {}
            }
        }
    }

    fn nak(&self, req: &Message, from: SocketAddr) -> Option<Reply> {
        let mut m = self.base(req, MessageType::Nak)?;
        m.opts_mut().insert(DhcpOption::Message("address not available".into()));
        if !req.giaddr().is_unspecified() {
            m.set_flags(Flags::default().set_broadcast());
        }
        encode_reply(&m).map(|bytes| Reply {
            bytes,
            to: dest(req, from, true),
        })
    }
}

/// PXE: echo the client's machine identifier (UUID, option 97).
fn echo_uuid(m: &mut Message, req: &Message) {
    if let Some(DhcpOption::ClientMachineIdentifier(uuid)) = req.opts().get(OptionCode::ClientMachineIdentifier) {
        set_raw(m, 97, uuid.clone());
    }
}

/// RFC 2131 4.1: relay -> giaddr (port 67, or the relay's own source port when it sent from
/// giaddr); a client with an address -> unicast; otherwise broadcast. A NAK to a client is
/// always broadcast.
fn dest(req: &Message, from: SocketAddr, nak: bool) -> Dest {
    let same_ip = |ip: Ipv4Addr, default: u16| match from {
        SocketAddr::V4(v4) if *v4.ip() == ip => v4.port(),
        _ => default,
    };
    if let Some(gi) = nonzero(req.giaddr()) {
        return Dest::To(SocketAddrV4::new(gi, same_ip(gi, 67)));
    }
    if let Some(ci) = nonzero(req.ciaddr()).filter(|_| !nak) {
        return Dest::To(SocketAddrV4::new(ci, same_ip(ci, 68)));
    }
    Dest::Broadcast
}
