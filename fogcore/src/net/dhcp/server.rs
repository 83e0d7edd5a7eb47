//! The DHCP server: owns the sockets, runs the engine on each datagram, and group-commits lease
//! records (one fsync for every ACK queued while the previous fsync ran) before their ACKs leave.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{Checked, DhcpConfig, DhcpMode};
use super::engine::{Dest, Engine, Port, Reply};
use super::lease::{LeaseLog, Record};
use crate::clock::{Clock, SystemClock};
use crate::net::boot::BootPolicy;
use crate::{Error, Result};

/// A bound DHCP server, ready to [`run`](DhcpServer::run).
pub struct DhcpServer {
    engine: Engine,
    log: LeaseLog,
    sockets: Sockets,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DhcpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhcpServer")
            .field("engine", &self.engine)
            .field("addr", &self.sockets.addr)
            .finish()
    }
}

#[derive(Clone)]
struct Sockets {
    main: Arc<UdpSocket>,
    proxy: Option<Arc<UdpSocket>>,
    addr: SocketAddr,
    proxy_addr: Option<SocketAddr>,
}

/// A lease record waiting for its fsync, with the reply it holds back.
struct Pending {
    record: Record,
    reply: Option<(Reply, Port)>,
}

fn describe(addr: SocketAddr, interface: Option<&str>) -> String {
    match interface {
        Some(i) => format!("udp {addr} on interface {i}"),
        None => format!("udp {addr}"),
    }
}

/// A UDP socket with SO_REUSEADDR and SO_BROADCAST, bound to `interface` (SO_BINDTODEVICE) if given.
fn bind_udp(addr: SocketAddr, interface: Option<&str>) -> Result<UdpSocket> {
    let what = describe(addr, interface);
    let io = |e: std::io::Error| Error::io(what.clone(), e);
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    sock.set_reuse_address(true).map_err(io)?;
    sock.set_broadcast(true).map_err(io)?;
    // Bursts of hundreds of clients (a room powering on): a larger queue than the default
    // (capped by net.core.rmem_max) rides out scheduling hiccups.
    let _ = sock.set_recv_buffer_size(4 << 20);
    if let Some(name) = interface {
        sock.bind_device(Some(name.as_bytes())).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENODEV) {
                Error::io(
                    what.clone(),
                    std::io::Error::new(std::io::ErrorKind::NotFound, format!("no interface named {name:?}")),
                )
            } else {
                io(e)
            }
        })?;
    }
    sock.bind(&addr.into()).map_err(io)?;
    sock.set_nonblocking(true).map_err(io)?;
    UdpSocket::from_std(sock.into()).map_err(io)
}

impl DhcpServer {
    /// Binds the sockets (errors name the address and interface: port taken, no privilege, unknown
    /// interface), checks the config and loads the leases.
    pub async fn bind(config: DhcpConfig, policy: Arc<dyn BootPolicy>) -> Result<DhcpServer> {
        Self::bind_with_clock(config, policy, Arc::new(SystemClock)).await
    }

    /// [`bind`](Self::bind) with a clock of the caller's (tests of lease expiry).
    pub async fn bind_with_clock(
        config: DhcpConfig,
        policy: Arc<dyn BootPolicy>,
        clock: Arc<dyn Clock>,
    ) -> Result<DhcpServer> {
        let checked = Checked::try_from(&config)?;
        let iface = config.interface.as_deref();
        let main = bind_udp(config.listen, iface)?;
        let addr = main
            .local_addr()
            .map_err(|e| Error::io(describe(config.listen, iface), e))?;
        let proxy = match (config.mode, config.proxy_port) {
            (DhcpMode::Proxy, Some(port)) => Some(bind_udp(SocketAddr::new(config.listen.ip(), port), iface)?),
            _ => None,
        };
        let proxy_addr = proxy.as_ref().and_then(|s| s.local_addr().ok());
        let path = config.lease_file.clone();
        let (log, table) = tokio::task::spawn_blocking(move || LeaseLog::open(&path))
            .await
            .map_err(|e| Error::Internal(format!("dhcp: loading leases failed: {e}")))??;
        tracing::info!(%addr, ?proxy_addr, mode = ?config.mode, leases = table.len(), "dhcp bound");
        Ok(DhcpServer {
            engine: Engine::new(checked, table, policy),
            log,
            sockets: Sockets {
                main: Arc::new(main),
                proxy: proxy.map(Arc::new),
                addr,
                proxy_addr,
            },
            clock,
        })
    }

    /// The address of the main (port 67) socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.sockets.addr
    }

    /// The address of the PXE boot server (4011) socket, in proxy mode.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.sockets.proxy_addr
    }

    /// Serves until `cancel` fires, then writes the last leases and compacts the lease log.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let DhcpServer {
            mut engine,
            log,
            sockets,
            clock,
        } = self;
        let (tx, rx) = mpsc::channel::<Pending>(16384);
        let committer = tokio::spawn(commit_loop(log, rx, sockets.clone()));
        let mut buf = vec![0u8; 4096];
        let mut pbuf = vec![0u8; 4096];
        loop {
            let (received, port) = tokio::select! {
                _ = cancel.cancelled() => break,
                r = sockets.main.recv_from(&mut buf) => (r.map(|(n, from)| (n, from, false)), Port::Dhcp),
                r = recv_opt(sockets.proxy.as_deref(), &mut pbuf) => (r.map(|(n, from)| (n, from, true)), Port::Proxy),
            };
            let (n, from, on_proxy) = match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "dhcp receive error");
                    continue;
                }
            };
            let data = if on_proxy { pbuf.get(..n) } else { buf.get(..n) };
            let Some(data) = data else { continue };
            let outcome = engine.handle(data, from, port, clock.now_secs());
            match (outcome.record, outcome.reply) {
                (Some(record), reply) => {
                    if tx
                        .send(Pending {
                            record,
                            reply: reply.map(|r| (r, port)),
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                (None, Some(reply)) => send(&sockets, port, &reply).await,
                (None, None) => {}
            }
        }
        drop(tx);
        let mut log = committer
            .await
            .map_err(|e| Error::Internal(format!("dhcp: lease writer failed: {e}")))?;
        tokio::task::spawn_blocking(move || log.compact())
            .await
            .map_err(|e| Error::InvalidInput(format!("dhcp: lease writer failed: {e}")))??;
        tracing::info!("dhcp stopped, leases flushed");
        Ok(())
    }
}

async fn recv_opt(sock: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn send(sockets: &Sockets, port: Port, reply: &Reply) {
    let sock = match (port, &sockets.proxy) {
        (Port::Proxy, Some(p)) => p,
        _ => &sockets.main,
    };
    let to = match reply.to {
        Dest::To(a) => a,
        Dest::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
    };
    if let Err(e) = sock.send_to(&reply.bytes, to).await {
        tracing::warn!(%to, error = %e, "dhcp send failed");
    }
}

/// Group commit: take every record queued, write and fsync them once on a blocking thread, then
/// send the replies they held back. Records queued during the fsync form the next batch.
async fn commit_loop(mut log: LeaseLog, mut rx: mpsc::Receiver<Pending>, sockets: Sockets) -> LeaseLog {
    let mut batch: Vec<Pending> = Vec::new();
    while rx.recv_many(&mut batch, 65536).await > 0 {
        let records: Vec<Record> = batch.iter().map(|p| p.record.clone()).collect();
        let joined = tokio::task::spawn_blocking(move || {
            let r = log.commit(&records);
            (log, r)
        })
        .await;
        let result;
        (log, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                // The writer panicked: nothing sensible to do but stop answering with leases.
                tracing::error!(error = %e, "lease writer panicked");
                std::process::abort();
            }
        };
        match result {
            Ok(()) => {
                for p in batch.drain(..) {
                    if let Some((reply, port)) = p.reply {
                        send(&sockets, port, &reply).await;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, withheld = batch.len(), "lease log write failed: ACKs withheld");
                batch.clear();
            }
        }
    }
    log
}
