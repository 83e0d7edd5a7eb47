//! The TFTP server on loopback, driven by a small client written here (plain tokio UDP).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fogcore::net::tftp::codec::{ErrorCode, Packet, Request};
use fogcore::net::tftp::{TftpConfig, TftpServer, VirtualFiles};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

struct Running {
    addr: SocketAddr,
    cancel: CancellationToken,
    handle: JoinHandle<fogcore::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("server stops")
            .expect("join");
        result.expect("run returns Ok");
    }
}

async fn start(root: &Path, tweak: impl FnOnce(&mut TftpConfig), files: Option<Arc<dyn VirtualFiles>>) -> Running {
    let mut config = TftpConfig::new(root);
    config.listen = "127.0.0.1:0".parse().expect("addr");
    tweak(&mut config);
    let server = TftpServer::bind(config, files).await.expect("bind");
    let addr = server.local_addr();
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(server.run(cancel.clone()));
    Running { addr, cancel, handle }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    Packet::Rrq(Request {
        filename: name.into(),
        mode: "octet".into(),
        options: options.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect(),
    })
    .encode()
}

#[derive(Debug)]
struct Fetched {
    data: Vec<u8>,
    oack: Option<Vec<(String, String)>>,
}

async fn recv(socket: &UdpSocket, buf: &mut [u8]) -> (usize, SocketAddr) {
    tokio::time::timeout(WAIT, socket.recv_from(buf))
        .await
        .expect("an answer in time")
        .expect("recv")
}

/// Fetches `name` with `options` from a fresh client socket. Err is the server's ERROR.
async fn fetch(server: SocketAddr, name: &str, options: &[(&str, &str)]) -> Result<Fetched, (ErrorCode, String)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    fetch_from(&socket, server, name, options).await
}

async fn fetch_from(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    options: &[(&str, &str)],
) -> Result<Fetched, (ErrorCode, String)> {
    socket.send_to(&rrq(name, options), server).await.expect("send rrq");
    let mut buf = vec![0u8; 70_000];
    let mut blksize = 512usize;
    let mut window = 1u64;
    let mut oack = None;
    let mut data = Vec::new();
    let mut received: u64 = 0; // blocks in order so far
    let mut tid: Option<SocketAddr> = None;
    loop {
        let (n, from) = recv(socket, &mut buf).await;
        if let Some(tid) = tid {
            assert_eq!(from, tid, "every packet of a transfer comes from its TID");
        }
        let packet = Packet::decode(buf.get(..n).expect("n")).expect("a valid packet");
        match packet {
            Packet::Oack(opts) => {
                assert!(tid.is_none(), "OACK only first");
                tid = Some(from);
                for (k, v) in &opts {
                    match k.as_str() {
                        "blksize" => blksize = v.parse().expect("blksize"),
                        "windowsize" => window = v.parse().expect("windowsize"),
                        _ => {}
                    }
                }
                oack = Some(opts);
                socket.send_to(&Packet::Ack(0).encode(), from).await.expect("ack 0");
            }
            Packet::Data { block, data: payload } => {
                tid = Some(from);
                if block != (received + 1) as u16 {
                    // Out of order or a duplicate: acknowledge the last good block (RFC 7440).
                    socket
                        .send_to(&Packet::Ack(received as u16).encode(), from)
                        .await
                        .expect("ack");
                    continue;
                }
                assert!(payload.len() <= blksize);
                data.extend_from_slice(payload);
                received += 1;
                let last = payload.len() < blksize;
                if last || received.is_multiple_of(window) {
                    socket.send_to(&Packet::Ack(block).encode(), from).await.expect("ack");
                }
                if last {
                    return Ok(Fetched { data, oack });
                }
            }
            Packet::Error { code, message } => return Err((code, message)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn root_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("root")).expect("mkdir");
    for (name, content) in files {
        let path = dir.path().join("root").join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }
    dir
}

#[tokio::test]
async fn serves_a_file_without_options() {
    let content = pseudo_random(100_000, 1);
    let dir = root_with(&[("undionly.kpxe", &content)]);
    let server = start(&dir.path().join("root"), |_| {}, None).await;
    let got = fetch(server.addr, "undionly.kpxe", &[]).await.expect("fetch");
    assert!(got.oack.is_none());
    assert!(got.data == content);
    // Exactly a multiple of 512: ends with an empty block.
    let dir2 = root_with(&[("even", &content[..1024])]);
    let server2 = start(&dir2.path().join("root"), |_| {}, None).await;
    assert!(fetch(server2.addr, "/even", &[]).await.expect("fetch").data == content[..1024]);
    server.stop().await;
    server2.stop().await;
}

#[tokio::test]
async fn negotiates_options_and_serves_windows() {
    let content = pseudo_random(1_000_000, 2);
    let dir = root_with(&[("boot/ipxe.efi", &content)]);
    let server = start(&dir.path().join("root"), |_| {}, None).await;
    let got = fetch(
        server.addr,
        "/boot/ipxe.efi",
        &[
            ("tsize", "0"),
            ("blksize", "1428"),
            ("windowsize", "16"),
            ("timeout", "2"),
            ("x-unknown", "1"),
        ],
    )
    .await
    .expect("fetch");
    let oack = got.oack.expect("an OACK");
    let want: Vec<(String, String)> = [
        ("tsize", "1000000"),
        ("blksize", "1428"),
        ("windowsize", "16"),
        ("timeout", "2"),
    ]
    .iter()
    .map(|(k, v)| ((*k).into(), (*v).into()))
    .collect();
    assert_eq!(oack, want);
    assert!(got.data == content);
    // Backslashes are separators; a block size above the limit is lowered to it.
    let got = fetch(server.addr, "\\boot\\ipxe.efi", &[("blksize", "65464")])
        .await
        .expect("fetch");
    assert_eq!(got.oack.expect("oack"), vec![("blksize".to_owned(), "1468".to_owned())]);
    assert!(got.data == content);
    server.stop().await;
}

#[tokio::test]
async fn large_file_rolls_block_numbers_over() {
    // 33 MiB + a bit at 512-byte blocks: more than 65535 blocks.
    let content = pseudo_random(33 * 1024 * 1024 + 123, 3);
    let dir = root_with(&[("big.img", &content)]);
    let server = start(&dir.path().join("root"), |_| {}, None).await;
    let got = fetch(server.addr, "big.img", &[("tsize", "0")]).await.expect("fetch");
    assert_eq!(got.data.len(), content.len());
    assert_eq!(blake3::hash(&got.data), blake3::hash(&content));
    let got = fetch(server.addr, "big.img", &[("blksize", "1428"), ("windowsize", "32")])
        .await
        .expect("fetch");
    assert_eq!(blake3::hash(&got.data), blake3::hash(&content));
    server.stop().await;
}

#[tokio::test]
async fn refuses_names_outside_the_root() {
    let dir = root_with(&[("ok", b"fine")]);
    std::fs::write(dir.path().join("secret"), b"outside").expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("root/link")).expect("symlink");
    std::os::unix::fs::symlink("/etc", dir.path().join("root/etc")).expect("symlink");
    let server = start(&dir.path().join("root"), |_| {}, None).await;
    for name in [
        "../secret",
        "/../../etc/passwd",
        "..\\secret",
        "ok/../../secret",
        "link",
        "etc/passwd",
    ] {
        let err = fetch(server.addr, name, &[]).await.expect_err(name);
        assert_eq!(err.0, ErrorCode::ACCESS_VIOLATION, "{name}: {err:?}");
    }
    let err = fetch(server.addr, "missing.efi", &[("tsize", "0")])
        .await
        .expect_err("missing");
    assert_eq!(err.0, ErrorCode::FILE_NOT_FOUND);
    assert_eq!(fetch(server.addr, "/ok", &[]).await.expect("ok").data, b"fine");
    server.stop().await;
}

#[tokio::test]
async fn refuses_writes_and_other_modes() {
    let dir = root_with(&[("f", b"x")]);
    let server = start(&dir.path().join("root"), |_| {}, None).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    let wrq = Packet::Wrq(Request {
        filename: "f".into(),
        mode: "octet".into(),
        options: vec![],
    })
    .encode();
    socket.send_to(&wrq, server.addr).await.expect("send");
    let mut buf = [0u8; 600];
    let (n, _) = recv(&socket, &mut buf).await;
    let Ok(Packet::Error { code, .. }) = Packet::decode(&buf[..n]) else {
        panic!("not an error")
    };
    assert_eq!(code, ErrorCode::ACCESS_VIOLATION);
    let mail = Packet::Rrq(Request {
        filename: "f".into(),
        mode: "mail".into(),
        options: vec![],
    })
    .encode();
    socket.send_to(&mail, server.addr).await.expect("send");
    let (n, _) = recv(&socket, &mut buf).await;
    let Ok(Packet::Error { code, .. }) = Packet::decode(&buf[..n]) else {
        panic!("not an error")
    };
    assert_eq!(code, ErrorCode::ILLEGAL_OPERATION);
    // Garbage is dropped and the server keeps serving.
    socket.send_to(b"\x00\x09junk", server.addr).await.expect("send");
    socket.send_to(b"", server.addr).await.expect("send");
    assert_eq!(fetch(server.addr, "f", &[]).await.expect("still serving").data, b"x");
    server.stop().await;
}

struct PerClient;

impl VirtualFiles for PerClient {
    fn open(&self, path: &str, client: SocketAddr) -> Option<Bytes> {
        (path == "boot.ipxe").then(|| Bytes::from(format!("#!ipxe\necho hello {}\n", client.ip())))
    }
}

#[tokio::test]
async fn serves_virtual_files_before_the_disk() {
    let dir = root_with(&[("boot.ipxe", b"from disk"), ("other", b"disk only")]);
    let server = start(&dir.path().join("root"), |_| {}, Some(Arc::new(PerClient))).await;
    let got = fetch(server.addr, "/boot.ipxe", &[("tsize", "0")])
        .await
        .expect("virtual");
    assert_eq!(got.data, b"#!ipxe\necho hello 127.0.0.1\n");
    assert_eq!(
        got.oack.expect("oack"),
        vec![("tsize".to_owned(), got.data.len().to_string())]
    );
    assert_eq!(fetch(server.addr, "other", &[]).await.expect("disk").data, b"disk only");
    server.stop().await;
}

#[tokio::test]
async fn two_hundred_clients_at_once_all_complete() {
    let content = Arc::new(pseudo_random(300_000, 4));
    let dir = root_with(&[("ipxe.efi", &content)]);
    let server = start(&dir.path().join("root"), |_| {}, None).await;
    let mut clients = Vec::new();
    for i in 0..200 {
        let addr = server.addr;
        let options: &'static [(&'static str, &'static str)] = if i % 2 == 0 {
            &[("blksize", "1428"), ("tsize", "0")]
        } else {
            &[("windowsize", "8")]
        };
        clients.push(tokio::spawn(async move { fetch(addr, "ipxe.efi", options).await }));
    }
    for client in clients {
        let got = client.await.expect("join").expect("fetch");
        assert!(got.data == *content);
    }
    server.stop().await;
}

/// UEFI firmware (OVMF) asks for tsize, aborts with ERROR when the OACK comes, and asks again
/// from the same port. The first transfer must stop at once; the second must be served.
#[tokio::test]
async fn client_error_ends_the_transfer_and_the_same_port_may_ask_again() {
    let content = pseudo_random(5000, 5);
    let dir = root_with(&[("ipxe.efi", &content)]);
    let server = start(&dir.path().join("root"), |c| c.timeout_ms = 100, None).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    socket
        .send_to(&rrq("ipxe.efi", &[("tsize", "0")]), server.addr)
        .await
        .expect("send");
    let mut buf = [0u8; 2048];
    let (n, tid) = recv(&socket, &mut buf).await;
    assert!(matches!(Packet::decode(&buf[..n]), Ok(Packet::Oack(_))));
    let abort = Packet::Error {
        code: ErrorCode::OPTION_NEGOTIATION,
        message: "tsize probe".into(),
    }
    .encode();
    socket.send_to(&abort, tid).await.expect("send error");
    // With a 100 ms timeout, a server that ignored the ERROR would resend the OACK within this.
    let quiet = tokio::time::timeout(Duration::from_millis(700), socket.recv_from(&mut buf)).await;
    assert!(quiet.is_err(), "nothing may come after the client's ERROR: {quiet:?}");
    let got = fetch_from(&socket, server.addr, "ipxe.efi", &[("blksize", "1468")])
        .await
        .expect("second request");
    assert!(got.data == content);
    server.stop().await;
}

#[tokio::test]
async fn retransmits_when_an_ack_is_lost_and_ignores_duplicate_acks() {
    let content = pseudo_random(2000, 6);
    let dir = root_with(&[("f", &content)]);
    let server = start(&dir.path().join("root"), |c| c.timeout_ms = 100, None).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    socket.send_to(&rrq("f", &[]), server.addr).await.expect("send");
    let mut buf = [0u8; 2048];
    // Block 1, not acknowledged: it comes again.
    let (n, tid) = recv(&socket, &mut buf).await;
    let first = buf[..n].to_vec();
    let (n, _) = recv(&socket, &mut buf).await;
    assert_eq!(&buf[..n], &first[..], "block 1 retransmitted");
    socket.send_to(&Packet::Ack(1).encode(), tid).await.expect("ack");
    let (n, _) = recv(&socket, &mut buf).await;
    assert!(matches!(Packet::decode(&buf[..n]), Ok(Packet::Data { block: 2, .. })));
    // A duplicate ACK 1 must not make the server send block 2 again before its timeout.
    socket.send_to(&Packet::Ack(1).encode(), tid).await.expect("dup ack");
    socket.send_to(&Packet::Ack(2).encode(), tid).await.expect("ack");
    let (n, _) = recv(&socket, &mut buf).await;
    assert!(
        matches!(Packet::decode(&buf[..n]), Ok(Packet::Data { block: 3, .. })),
        "{:?}",
        &buf[..n.min(8)]
    );
    server.stop().await;
}

#[tokio::test]
async fn answers_busy_beyond_max_transfers() {
    let dir = root_with(&[("f", &[7u8; 4096])]);
    let server = start(
        &dir.path().join("root"),
        |c| {
            c.max_transfers = 1;
            c.timeout_ms = 5000;
        },
        None,
    )
    .await;
    // A client that never acknowledges holds the only slot.
    let holder = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    holder.send_to(&rrq("f", &[]), server.addr).await.expect("send");
    let mut buf = [0u8; 2048];
    recv(&holder, &mut buf).await;
    let err = fetch(server.addr, "f", &[]).await.expect_err("busy");
    assert_eq!(err.0, ErrorCode::NOT_DEFINED);
    assert!(err.1.contains("busy"), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn bind_errors_name_the_address_and_the_root() {
    let dir = root_with(&[]);
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    let mut config = TftpConfig::new(dir.path().join("root"));
    config.listen = taken.local_addr().expect("addr");
    let err = TftpServer::bind(config.clone(), None).await.err().expect("port taken");
    assert!(err.to_string().contains(&format!("udp {}", config.listen)), "{err}");
    config.root = dir.path().join("nope");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    let err = TftpServer::bind(config, None).await.err().expect("missing root");
    assert!(err.to_string().contains("nope"), "{err}");
}
