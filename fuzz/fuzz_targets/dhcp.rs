//! A datagram as the DHCP server receives it: sanitized and decoded, then handled by the engine
//! in full mode (two pools, a reservation) and proxy mode (ports 67 and 4011). A reply the engine
//! builds must decode.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use dhcproto::{Decodable, Decoder, v4::Message};
use fogcore::net::boot::DefaultBootPolicy;
use fogcore::net::dhcp::engine::{Engine, Port};
use fogcore::net::dhcp::options::{boot_request, decode_request, mac_of, relay_agent_information, sanitize};
use fogcore::net::dhcp::{DhcpConfig, DhcpMode, LeaseTable, Mac, Pool, Reservation};
use libfuzzer_sys::fuzz_target;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn engine(mode: DhcpMode) -> Engine {
    let mut c = DhcpConfig::new(mode, SERVER, "/nonexistent");
    if mode == DhcpMode::Full {
        let mut p = Pool::new(
            "10.99.0.0/24".parse().expect("subnet"),
            Ipv4Addr::new(10, 99, 0, 100),
            Ipv4Addr::new(10, 99, 0, 102),
        );
        p.router = Some(SERVER);
        p.reservations.push(Reservation {
            mac: Mac([0x52, 0x54, 0, 0, 0, 9]),
            ip: Ipv4Addr::new(10, 99, 0, 9),
            hostname: Some("nine".into()),
        });
        c.pools.push(p);
        c.pools.push(Pool::new(
            "10.50.0.0/16".parse().expect("subnet"),
            Ipv4Addr::new(10, 50, 1, 1),
            Ipv4Addr::new(10, 50, 1, 10),
        ));
    }
    Engine::from_config(&c, LeaseTable::new(), Arc::new(DefaultBootPolicy::new(SERVER, 8080))).expect("config")
}

fuzz_target!(init: fog_fuzz::write_seeds("dhcp"), |data: &[u8]| {
    let _ = sanitize(data);
    if let Some(msg) = decode_request(data)
        && let Some(mac) = mac_of(&msg)
    {
        let _ = boot_request(&msg, mac);
    }
    let _ = relay_agent_information(data);
    let from = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68));
    for (mode, port) in [
        (DhcpMode::Full, Port::Dhcp),
        (DhcpMode::Proxy, Port::Dhcp),
        (DhcpMode::Proxy, Port::Proxy),
    ] {
        let mut e = engine(mode);
        // Twice: the second sees the offer or lease the first made.
        for now in [1_000_000, 1_000_030] {
            let outcome = e.handle(data, from, port, now);
            if let Some(reply) = outcome.reply {
                assert!(
                    Message::decode(&mut Decoder::new(&reply.bytes)).is_ok(),
                    "the engine built a reply that does not decode"
                );
            }
        }
    }
});
