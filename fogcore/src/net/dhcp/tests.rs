//! Unit tests of the decision logic, from bytes to bytes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use proptest::prelude::*;

use super::config::{Checked, CustomOption, DhcpConfig, DhcpMode, IpList, Mac, Pool, Reservation};
use super::engine::{Dest, Engine, Outcome, Port};
use super::lease::{LeaseLog, LeaseTable, Record};
use super::options::{BOOTP_MIN_LEN, PXE_DISCOVERY_CONTROL};
use crate::net::boot::DefaultBootPolicy;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const T0: u64 = 1_000_000;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0, n]
}

fn config(mode: DhcpMode) -> DhcpConfig {
    let mut c = DhcpConfig::new(mode, SERVER, "/nonexistent");
    if mode == DhcpMode::Full {
        let mut p = Pool::new(
            "10.99.0.0/24".parse().expect("subnet"),
            ip("10.99.0.100"),
            ip("10.99.0.102"),
        );
        p.router = Some(SERVER);
        p.dns = vec![ip("10.99.0.53")];
        p.domain = Some("lab".into());
        p.lease_secs = 600;
        p.reservations.push(Reservation {
            mac: Mac(mac(9)),
            ip: ip("10.99.0.9"),
            hostname: Some("nine".into()),
        });
        c.pools.push(p);
        let mut relayed = Pool::new(
            "10.50.0.0/16".parse().expect("subnet"),
            ip("10.50.1.1"),
            ip("10.50.1.10"),
        );
        relayed.options.push(CustomOption {
            code: 42,
            text: None,
            hex: None,
            ip: Some(IpList::One(ip("10.50.0.123"))),
        });
        c.pools.push(relayed);
    }
    c
}

fn engine(mode: DhcpMode) -> Engine {
    engine_with(config(mode), LeaseTable::new())
}

fn engine_with(c: DhcpConfig, table: LeaseTable) -> Engine {
    let checked = Checked::try_from(&c).expect("valid config");
    Engine::new(checked, table, Arc::new(DefaultBootPolicy::new(SERVER, 8080)))
}

fn client() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68))
}

fn msg(kind: MessageType, m: [u8; 6]) -> Message {
    let mut msg = Message::new_with_id(
        0x1234,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &m,
    );
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    msg
}

fn request(m: [u8; 6], want: Ipv4Addr) -> Message {
    let mut r = msg(MessageType::Request, m);
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(want));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    r
}

fn pxe(mut m: Message, arch: u16, user_class: Option<&[u8]>) -> Message {
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes(),
    ));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(arch)));
    m.opts_mut().insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
    if let Some(u) = user_class {
        m.opts_mut().insert(DhcpOption::UserClass(u.to_vec()));
    }
    m
}

fn run(e: &mut Engine, m: &Message, now: u64) -> Outcome {
    run_from(e, m, client(), Port::Dhcp, now)
}

fn run_from(e: &mut Engine, m: &Message, from: SocketAddr, port: Port, now: u64) -> Outcome {
    let bytes = m.to_vec().expect("encode request");
    e.handle(&bytes, from, port, now)
}

fn reply(o: &Outcome) -> Message {
    let r = o.reply.as_ref().expect("a reply");
    assert!(r.bytes.len() >= BOOTP_MIN_LEN, "reply padded to the BOOTP minimum");
    Message::decode(&mut Decoder::new(&r.bytes)).expect("decodable reply")
}

fn file(m: &Message) -> Option<&[u8]> {
    m.fname().map(|f| f.split(|b| *b == 0).next().unwrap_or(f))
}

fn kind(m: &Message) -> Option<MessageType> {
    m.opts().msg_type()
}

fn raw(m: &Message, code: u8) -> Option<Vec<u8>> {
    match m.opts().get(OptionCode::from(code))? {
        DhcpOption::Unknown(u) => Some(u.data().to_vec()),
        DhcpOption::ClassIdentifier(v)
        | DhcpOption::BootfileName(v)
        | DhcpOption::TFTPServerName(v)
        | DhcpOption::VendorExtensions(v) => Some(v.clone()),
        other => Some(
            other
                .to_vec()
                .expect("encode option")
                .get(2..)
                .expect("option body")
                .to_vec(),
        ),
    }
}

/// DISCOVER -> OFFER -> REQUEST -> ACK; returns the address.
fn dora(e: &mut Engine, m: [u8; 6], now: u64) -> Ipv4Addr {
    let offer = reply(&run(e, &msg(MessageType::Discover, m), now));
    assert_eq!(kind(&offer), Some(MessageType::Offer));
    let out = run(e, &request(m, offer.yiaddr()), now);
    let ack = reply(&out);
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    assert!(
        matches!(out.record, Some(Record::Bound { .. })),
        "an ACK carries a durable record"
    );
    ack.yiaddr()
}

#[test]
fn full_dora_gives_an_address_with_the_pool_options() {
    let mut e = engine(DhcpMode::Full);
    let out = run(&mut e, &msg(MessageType::Discover, mac(1)), T0);
    assert_eq!(out.record, None, "offers are not durable");
    assert_eq!(out.reply.as_ref().map(|r| r.to), Some(Dest::Broadcast));
    let offer = reply(&out);
    assert_eq!(offer.yiaddr(), ip("10.99.0.100"));
    assert_eq!(
        offer.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        offer.opts().get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(ip("255.255.255.0")))
    );
    assert_eq!(
        offer.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![SERVER]))
    );
    assert_eq!(
        offer.opts().get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![ip("10.99.0.53")]))
    );
    assert_eq!(
        offer.opts().get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("lab".into()))
    );
    assert_eq!(
        offer.opts().get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );
    assert_eq!(offer.xid(), 0x1234);
    assert_eq!(dora(&mut e, mac(1), T0), ip("10.99.0.100"));
    // A second client gets another address; the first keeps its own.
    assert_eq!(dora(&mut e, mac(2), T0), ip("10.99.0.101"));
    assert_eq!(dora(&mut e, mac(1), T0 + 10), ip("10.99.0.100"));
}

#[test]
fn naks_an_address_of_another_client_or_subnet() {
    let mut e = engine(DhcpMode::Full);
    let a = dora(&mut e, mac(1), T0);
    let nak = reply(&run(&mut e, &request(mac(2), a), T0));
    assert_eq!(kind(&nak), Some(MessageType::Nak));
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    let mut reboot = msg(MessageType::Request, mac(3));
    reboot
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("192.168.1.7")));
    let out = run(&mut e, &reboot, T0);
    assert_eq!(kind(&reply(&out)), Some(MessageType::Nak));
    assert_eq!(out.reply.map(|r| r.to), Some(Dest::Broadcast));
    // Out of range, even in the subnet.
    assert_eq!(
        kind(&reply(&run(&mut e, &request(mac(3), ip("10.99.0.250")), T0))),
        Some(MessageType::Nak)
    );
    // A REQUEST for another server is silently dropped.
    let mut other = request(mac(4), ip("10.99.0.102"));
    other.opts_mut().insert(DhcpOption::ServerIdentifier(ip("10.99.0.2")));
    assert_eq!(run(&mut e, &other, T0), Outcome::default());
}

#[test]
fn reservations_win_and_are_never_handed_to_others() {
    let mut e = engine(DhcpMode::Full);
    let offer = reply(&run(&mut e, &msg(MessageType::Discover, mac(9)), T0));
    assert_eq!(offer.yiaddr(), ip("10.99.0.9"));
    assert_eq!(
        offer.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("nine".into()))
    );
    assert_eq!(dora(&mut e, mac(9), T0), ip("10.99.0.9"));
    assert_eq!(
        kind(&reply(&run(&mut e, &request(mac(1), ip("10.99.0.9")), T0))),
        Some(MessageType::Nak)
    );
    assert_eq!(
        kind(&reply(&run(&mut e, &request(mac(9), ip("10.99.0.100")), T0))),
        Some(MessageType::Nak)
    );
}

#[test]
fn pool_exhaustion_and_expiry_with_the_injected_clock() {
    let mut e = engine(DhcpMode::Full);
    for n in 1..=3 {
        dora(&mut e, mac(n), T0);
    }
    assert_eq!(
        run(&mut e, &msg(MessageType::Discover, mac(4)), T0 + 10),
        Outcome::default(),
        "pool full"
    );
    // After the 600 s leases expire, the new client gets an address.
    let offer = reply(&run(&mut e, &msg(MessageType::Discover, mac(4)), T0 + 601));
    assert!(offer.yiaddr() >= ip("10.99.0.100") && offer.yiaddr() <= ip("10.99.0.102"));
    // An expired client that comes back early enough still gets its old address if it is free.
    let back = dora(&mut e, mac(1), T0 + 620);
    assert_ne!(back, offer.yiaddr(), "the offer to mac 4 is still held");
}

#[test]
fn decline_keeps_the_address_out_for_a_while() {
    let mut e = engine(DhcpMode::Full);
    let a = dora(&mut e, mac(1), T0);
    let mut d = msg(MessageType::Decline, mac(1));
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    d.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let out = run(&mut e, &d, T0);
    assert!(out.reply.is_none());
    assert!(matches!(out.record, Some(Record::Declined { .. })));
    // Nobody gets it, not even the decliner.
    assert_ne!(dora(&mut e, mac(1), T0 + 1), a);
    assert_ne!(dora(&mut e, mac(2), T0 + 1), a);
    assert_eq!(
        kind(&reply(&run(&mut e, &request(mac(3), a), T0 + 2))),
        Some(MessageType::Nak)
    );
    // After decline_secs it is usable again.
    assert_eq!(
        kind(&reply(&run(&mut e, &request(mac(3), a), T0 + 601))),
        Some(MessageType::Ack)
    );
}

#[test]
fn release_frees_the_address() {
    let mut e = engine(DhcpMode::Full);
    let a = dora(&mut e, mac(1), T0);
    let mut r = msg(MessageType::Release, mac(1));
    r.set_ciaddr(a);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let out = run(&mut e, &r, T0);
    assert!(out.reply.is_none());
    assert_eq!(
        out.record,
        Some(Record::Released {
            mac: Mac(mac(1)),
            ip: a
        })
    );
    assert_eq!(
        kind(&reply(&run(&mut e, &request(mac(2), a), T0))),
        Some(MessageType::Ack)
    );
    // A release from someone else changes nothing.
    let mut forged = msg(MessageType::Release, mac(7));
    forged.set_ciaddr(a);
    assert_eq!(run(&mut e, &forged, T0), Outcome::default());
}

#[test]
fn inform_gets_options_without_an_address() {
    let mut e = engine(DhcpMode::Full);
    let mut i = msg(MessageType::Inform, mac(5));
    i.set_ciaddr(ip("10.99.0.77"));
    let out = run_from(&mut e, &i, "10.99.0.77:68".parse().expect("addr"), Port::Dhcp, T0);
    assert_eq!(out.record, None);
    assert_eq!(
        out.reply.as_ref().map(|r| r.to),
        Some(Dest::To(SocketAddrV4::new(ip("10.99.0.77"), 68)))
    );
    let ack = reply(&out);
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.ciaddr(), ip("10.99.0.77"));
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(ack.opts().get(OptionCode::Router).is_some());
}

#[test]
fn relayed_requests_get_the_relay_subnet_and_go_back_to_the_relay() {
    let mut e = engine(DhcpMode::Full);
    let mut d = msg(MessageType::Discover, mac(1));
    d.set_giaddr(ip("10.50.0.1"));
    let out = run_from(&mut e, &d, "10.50.0.1:67".parse().expect("addr"), Port::Dhcp, T0);
    assert_eq!(
        out.reply.as_ref().map(|r| r.to),
        Some(Dest::To(SocketAddrV4::new(ip("10.50.0.1"), 67)))
    );
    let offer = reply(&out);
    assert_eq!(offer.yiaddr(), ip("10.50.1.1"));
    assert_eq!(offer.giaddr(), ip("10.50.0.1"));
    assert_eq!(
        offer.opts().get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(ip("255.255.0.0")))
    );
    assert_eq!(
        raw(&offer, 42),
        Some(vec![10, 50, 0, 123]),
        "custom option of the relay's pool"
    );
    // A relay on a subnet fog has no pool for gets nothing.
    d.set_giaddr(ip("172.16.0.1"));
    assert_eq!(run(&mut e, &d, T0), Outcome::default());
    // A relay sending from another port than 67 gets its answer there.
    d.set_giaddr(ip("10.50.0.1"));
    let out = run_from(&mut e, &d, "10.50.0.1:6767".parse().expect("addr"), Port::Dhcp, T0);
    assert_eq!(
        out.reply.map(|r| r.to),
        Some(Dest::To(SocketAddrV4::new(ip("10.50.0.1"), 6767)))
    );
}

#[test]
fn relay_agent_information_goes_back_to_the_relay_unchanged_and_last() {
    let mut e = engine(DhcpMode::Full);
    let mut d = msg(MessageType::Discover, mac(1));
    d.set_giaddr(ip("10.50.0.1"));
    let mut bytes = d.to_vec().expect("encode request");
    // Circuit id "eth7", remote id 0x0001, as a relay appends it (after the client's options).
    let info = [1, 4, b'e', b't', b'h', b'7', 2, 2, 0, 1];
    let end = bytes.iter().rposition(|&b| b == 255).expect("End");
    bytes.splice(end..end, [82, info.len() as u8].into_iter().chain(info));
    let out = e.handle(&bytes, "10.50.0.1:67".parse().expect("addr"), Port::Dhcp, T0);
    let r = out.reply.as_ref().expect("a reply");
    let mut option = vec![82, info.len() as u8];
    option.extend_from_slice(&info);
    option.push(255);
    assert!(
        r.bytes.windows(option.len()).any(|w| w == option.as_slice()),
        "option 82 echoed as the last option"
    );
    assert_eq!(reply(&out).yiaddr(), ip("10.50.1.1"));

    // Not relayed (giaddr 0): nothing to echo to.
    let mut direct = msg(MessageType::Discover, mac(2)).to_vec().expect("encode request");
    let end = direct.iter().rposition(|&b| b == 255).expect("End");
    direct.splice(end..end, [82, info.len() as u8].into_iter().chain(info));
    let out = e.handle(&direct, client(), Port::Dhcp, T0);
    let r = out.reply.as_ref().expect("a reply");
    assert!(!r.bytes.windows(2).any(|w| w == [82, info.len() as u8]));
}

#[test]
fn pxe_clients_get_the_boot_file_for_their_firmware() {
    let mut e = engine(DhcpMode::Full);
    let cases: [(u16, Option<&[u8]>, &str); 4] = [
        (0, None, "undionly.kpxe"),
        (7, None, "shimx64.efi"),
        (11, None, "ipxe-arm64.efi"),
        (0, Some(b"iPXE"), "http://10.99.0.1:8080/boot.ipxe"),
    ];
    for (n, (arch, user_class, want)) in cases.into_iter().enumerate() {
        let offer = reply(&run(
            &mut e,
            &pxe(msg(MessageType::Discover, mac(n as u8 % 3 + 1)), arch, user_class),
            T0,
        ));
        assert_eq!(file(&offer), Some(want.as_bytes()), "arch {arch}");
        assert_eq!(raw(&offer, 67), Some(want.as_bytes().to_vec()));
        assert_eq!(offer.siaddr(), SERVER);
        assert_eq!(raw(&offer, 60), Some(b"PXEClient".to_vec()));
        assert_eq!(raw(&offer, 97), Some(vec![0; 17]), "UUID echoed");
        assert_ne!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    }
    let plain = reply(&run(&mut e, &msg(MessageType::Discover, mac(1)), T0));
    assert_eq!(file(&plain), None);
    assert_eq!(raw(&plain, 60), None);
}

#[test]
fn config_options_66_and_67_override_the_boot_policy() {
    let mut c = config(DhcpMode::Full);
    c.pools[0].options.push(CustomOption {
        code: 67,
        text: Some("custom.kpxe".into()),
        hex: None,
        ip: None,
    });
    c.pools[0].options.push(CustomOption {
        code: 66,
        text: Some("10.99.0.66".into()),
        hex: None,
        ip: None,
    });
    c.pools[0].options.push(CustomOption {
        code: 43,
        text: None,
        hex: Some("01 02 03".into()),
        ip: None,
    });
    let mut e = engine_with(c, LeaseTable::new());
    let offer = reply(&run(&mut e, &pxe(msg(MessageType::Discover, mac(1)), 0, None), T0));
    assert_eq!(file(&offer), Some(&b"custom.kpxe"[..]));
    assert_eq!(offer.siaddr(), ip("10.99.0.66"));
    assert_eq!(raw(&offer, 43), Some(vec![1, 2, 3]), "vendor option 43 raw from config");
}

#[test]
fn proxy_mode_answers_only_pxe_clients_and_never_gives_an_address() {
    let mut e = engine(DhcpMode::Proxy);
    assert_eq!(
        run(&mut e, &msg(MessageType::Discover, mac(1)), T0),
        Outcome::default(),
        "not PXE"
    );
    let out = run(&mut e, &pxe(msg(MessageType::Discover, mac(1)), 7, None), T0);
    assert_eq!(out.record, None);
    let offer = reply(&out);
    assert_eq!(kind(&offer), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.siaddr(), SERVER);
    assert_eq!(file(&offer), Some(&b"shimx64.efi"[..]));
    assert_eq!(raw(&offer, 60), Some(b"PXEClient".to_vec()));
    assert_eq!(raw(&offer, 43), Some(PXE_DISCOVERY_CONTROL.to_vec()));
    for code in [OptionCode::AddressLeaseTime, OptionCode::SubnetMask, OptionCode::Router] {
        assert!(offer.opts().get(code).is_none(), "{code:?} in a proxy offer");
    }
    // Port 67 REQUESTs belong to the address server.
    let mut req = pxe(msg(MessageType::Request, mac(1)), 7, None);
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip("10.99.0.150")));
    assert_eq!(run(&mut e, &req, T0), Outcome::default());
    // Port 4011: the PXE client asks its boot server with its new address; answered unicast.
    req.set_ciaddr(ip("10.99.0.150"));
    let from: SocketAddr = "10.99.0.150:68".parse().expect("addr");
    let out = run_from(&mut e, &req, from, Port::Proxy, T0);
    assert_eq!(
        out.reply.as_ref().map(|r| r.to),
        Some(Dest::To(SocketAddrV4::new(ip("10.99.0.150"), 68)))
    );
    let ack = reply(&out);
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(file(&ack), Some(&b"shimx64.efi"[..]));
    // iPXE in proxy mode gets the HTTP script.
    let ipxe = reply(&run(
        &mut e,
        &pxe(msg(MessageType::Discover, mac(2)), 0, Some(b"iPXE")),
        T0,
    ));
    assert_eq!(file(&ipxe), Some(&b"http://10.99.0.1:8080/boot.ipxe"[..]));
}

#[test]
fn leases_survive_a_reload_and_are_not_given_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("leases");
    let (a, b);
    {
        let (mut log, table) = LeaseLog::open(&path).expect("open");
        let mut e = engine_with(config(DhcpMode::Full), table);
        for (m, slot) in [(mac(1), &mut None::<Ipv4Addr>), (mac(2), &mut None)] {
            let offer = reply(&run(&mut e, &msg(MessageType::Discover, m), T0));
            let out = run(&mut e, &request(m, offer.yiaddr()), T0);
            log.commit(&[out.record.clone().expect("record")]).expect("commit");
            *slot = Some(offer.yiaddr());
        }
        a = e.table().lease_of(Mac(mac(1)), T0).map(|l| l.0);
        b = e.table().lease_of(Mac(mac(2)), T0).map(|l| l.0);
    }
    let (_log, table) = LeaseLog::open(&path).expect("reopen");
    let mut e = engine_with(config(DhcpMode::Full), table);
    // Same addresses after the restart, even asked in the opposite order.
    assert_eq!(Some(dora(&mut e, mac(2), T0 + 5)), b);
    assert_eq!(Some(dora(&mut e, mac(1), T0 + 5)), a);
    let c = dora(&mut e, mac(3), T0 + 5);
    assert!(Some(c) != a && Some(c) != b);
}

#[test]
fn malformed_packets_are_dropped() {
    let mut e = engine(DhcpMode::Full);
    let good = msg(MessageType::Discover, mac(1)).to_vec().expect("encode");
    for n in [0, 1, 100, 236, 240, 241] {
        assert_eq!(
            e.handle(good.get(..n).expect("prefix"), client(), Port::Dhcp, T0),
            Outcome::default(),
            "{n} bytes"
        );
    }
    // A BOOTREPLY, a bad hlen.
    let mut reply_msg = msg(MessageType::Discover, mac(1));
    reply_msg.set_opcode(dhcproto::v4::Opcode::BootReply);
    assert_eq!(run(&mut e, &reply_msg, T0), Outcome::default());
    let mut bad = good.clone();
    if let Some(hlen) = bad.get_mut(2) {
        *hlen = 200;
    }
    assert_eq!(e.handle(&bad, client(), Port::Dhcp, T0), Outcome::default());
    let _ = Flags::default();
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut e = engine(DhcpMode::Full);
        let _ = e.handle(&bytes, client(), Port::Dhcp, T0);
        let mut p = engine(DhcpMode::Proxy);
        let _ = p.handle(&bytes, client(), Port::Proxy, T0);
    }

    #[test]
    fn mutated_requests_never_panic(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..8)) {
        let mut e = engine(DhcpMode::Full);
        let mut bytes = pxe(request(mac(1), ip("10.99.0.100")), 7, Some(b"iPXE")).to_vec().expect("encode");
        for (at, v) in flips {
            if let Some(b) = bytes.get_mut(at) { *b = v; }
        }
        let _ = e.handle(&bytes, client(), Port::Dhcp, T0);
    }
}
