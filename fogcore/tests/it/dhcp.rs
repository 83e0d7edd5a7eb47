//! The DHCP server on loopback, driven by a client built with dhcproto. Loopback has no
//! broadcast, so the client acts as a relay (giaddr = 127.0.0.1): the server answers the relay at
//! the port it sent from.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use fogcore::net::boot::DefaultBootPolicy;
use fogcore::net::dhcp::{DhcpConfig, DhcpMode, DhcpServer, Pool};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn config(lease_file: &Path) -> DhcpConfig {
    let mut c = DhcpConfig::new(DhcpMode::Full, LO, lease_file);
    c.listen = SocketAddr::from((LO, 0));
    let mut pool = Pool::new(
        "127.0.0.0/8".parse().expect("subnet"),
        Ipv4Addr::new(127, 0, 1, 1),
        Ipv4Addr::new(127, 0, 1, 200),
    );
    pool.lease_secs = 600;
    c.pools.push(pool);
    c
}

struct Running {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<fogcore::Result<()>>,
}

async fn start(lease_file: &Path) -> Running {
    let policy = Arc::new(DefaultBootPolicy::new(LO, 8080));
    let server = DhcpServer::bind(config(lease_file), policy).await.expect("bind");
    let addr = server.local_addr();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server.run(cancel.clone()));
    Running { addr, cancel, task }
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server run");
    }
}

struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    mac: [u8; 6],
}

impl Client {
    async fn new(server: SocketAddr, n: u8) -> Client {
        let sock = UdpSocket::bind((LO, 0)).await.expect("client socket");
        Client {
            sock,
            server,
            mac: [0x52, 0x54, 0, 0, 1, n],
        }
    }

    async fn exchange(&self, kind: MessageType, opts: Vec<DhcpOption>) -> Message {
        let xid = rand::random();
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            LO,
            &self.mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o);
        }
        let bytes = m.to_vec().expect("encode");
        let mut buf = vec![0u8; 1500];
        for _attempt in 0..5 {
            self.sock.send_to(&bytes, self.server).await.expect("send");
            let Ok(received) = tokio::time::timeout(Duration::from_secs(2), self.sock.recv_from(&mut buf)).await else {
                continue;
            };
            let (n, _) = received.expect("recv");
            assert!(n >= 300, "reply padded to 300 bytes, got {n}");
            let reply = Message::decode(&mut Decoder::new(buf.get(..n).expect("len"))).expect("decode reply");
            assert_eq!(reply.xid(), xid);
            return reply;
        }
        panic!("no reply to {kind:?}");
    }

    async fn dora(&self) -> Ipv4Addr {
        let offer = self.exchange(MessageType::Discover, vec![]).await;
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        let ack = self
            .exchange(
                MessageType::Request,
                vec![
                    DhcpOption::RequestedIpAddress(offer.yiaddr()),
                    DhcpOption::ServerIdentifier(LO),
                ],
            )
            .await;
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), offer.yiaddr());
        assert_eq!(
            ack.opts().get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(600))
        );
        ack.yiaddr()
    }
}

#[tokio::test]
async fn dora_over_loopback_and_a_restart_keeps_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leases = dir.path().join("dhcp.leases");
    let server = start(&leases).await;
    let a = Client::new(server.addr, 1).await;
    let b = Client::new(server.addr, 2).await;
    let ip_a = a.dora().await;
    let ip_b = b.dora().await;
    assert_ne!(ip_a, ip_b);
    // Garbage does not stop the server.
    a.sock
        .send_to(b"not dhcp at all", server.addr)
        .await
        .expect("send garbage");
    assert_eq!(a.dora().await, ip_a);
    server.stop().await;

    let server = start(&leases).await;
    let b = Client::new(server.addr, 2).await;
    let a = Client::new(server.addr, 1).await;
    let c = Client::new(server.addr, 3).await;
    assert_eq!(b.dora().await, ip_b, "same address after a restart");
    assert_eq!(a.dora().await, ip_a, "same address after a restart");
    let ip_c = c.dora().await;
    assert!(
        ip_c != ip_a && ip_c != ip_b,
        "one address is never given to two clients"
    );
    server.stop().await;
}

#[tokio::test]
async fn concurrent_clients_get_distinct_durable_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leases = dir.path().join("dhcp.leases");
    let server = start(&leases).await;
    let mut tasks = Vec::new();
    for n in 0..64u8 {
        let addr = server.addr;
        tasks.push(tokio::spawn(
            async move { (n, Client::new(addr, n).await.dora().await) },
        ));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.expect("client task"));
    }
    let mut ips: Vec<Ipv4Addr> = got.iter().map(|(_, ip)| *ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 64, "64 distinct addresses");
    // Every ACKed lease is in the log before its ACK left: read it while the server still runs.
    let log = std::fs::read_to_string(&leases).expect("lease log");
    for (n, ip) in &got {
        let mac = format!("52:54:00:00:01:{n:02x}");
        assert!(
            log.lines().any(|l| l.contains(&mac) && l.contains(&format!(" {ip} "))),
            "lease of {mac} durable"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::UdpSocket::bind((LO, 0)).expect("bind");
    let mut c = config(&dir.path().join("l"));
    c.listen = taken.local_addr().expect("addr");
    // SO_REUSEADDR lets UDP sockets share a port only if both set it: this one did not.
    let err = DhcpServer::bind(c.clone(), Arc::new(DefaultBootPolicy::new(LO, 80)))
        .await
        .expect_err("port taken");
    assert!(err.to_string().contains(&c.listen.to_string()), "{err}");
    c.listen = SocketAddr::from((LO, 0));
    c.interface = Some("nosuchif0".into());
    let err = DhcpServer::bind(c, Arc::new(DefaultBootPolicy::new(LO, 80)))
        .await
        .expect_err("no such interface");
    assert!(err.to_string().contains("nosuchif0"), "{err}");
}
