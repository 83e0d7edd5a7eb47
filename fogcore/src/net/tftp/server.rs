//! The TFTP server: the listening socket on tokio; per transfer an ephemeral socket and a thread.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::codec::{self, ErrorCode, Packet, Request};
use super::path::{self, Refused};
use super::transfer::{self, Step, Transfer};
use super::{TftpConfig, VirtualFiles};
use crate::{Error, Result};

/// How long `run` waits for transfers to stop after its token is cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Bytes read from a file at once (rounded up to whole windows).
const READ_AHEAD: u64 = 128 * 1024;
/// Longest a transfer thread sleeps in `recv` before looking at its clock and its cancellation.
const POLL: Duration = Duration::from_millis(100);

/// A bound TFTP server. [`TftpServer::run`] serves until its token is cancelled.
pub struct TftpServer {
    socket: UdpSocket,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    /// Canonical root directory.
    root: PathBuf,
    limits: transfer::Limits,
    virtual_files: Option<Arc<dyn VirtualFiles>>,
    permits: Arc<Semaphore>,
    /// Local address transfer sockets bind to (the listen IP, port 0).
    transfer_bind: SocketAddr,
}

impl TftpServer {
    /// Checks the config, opens the root and binds the listening socket. Errors name the root
    /// or the address (`udp 0.0.0.0:69: Address already in use`, `... Permission denied`).
    pub async fn bind(config: TftpConfig, virtual_files: Option<Arc<dyn VirtualFiles>>) -> Result<TftpServer> {
        config.validate()?;
        let root = std::fs::canonicalize(&config.root).map_err(|e| Error::io(&config.root, e))?;
        if !root.is_dir() {
            return Err(Error::InvalidInput(format!(
                "tftp: root {} is not a directory",
                config.root.display()
            )));
        }
        let listen = config.listen;
        let what = format!("udp {listen}");
        let std_socket = bind_udp(listen).map_err(|e| Error::io(&what, e))?;
        let socket = UdpSocket::from_std(std_socket).map_err(|e| Error::io(&what, e))?;
        let local_addr = socket.local_addr().map_err(|e| Error::io(&what, e))?;
        tracing::info!(%local_addr, root = %root.display(), "tftp: listening");
        Ok(TftpServer {
            socket,
            local_addr,
            shared: Arc::new(Shared {
                root,
                limits: config.limits(),
                virtual_files,
                permits: Arc::new(Semaphore::new(config.max_transfers)),
                transfer_bind: SocketAddr::new(listen.ip(), 0),
            }),
        })
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel` is cancelled, then stops the transfers in flight (each sends its
    /// client an ERROR) and returns within about two seconds.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let mut tasks = JoinSet::new();
        let transfers_cancel = cancel.child_token();
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined
                        && e.is_panic()
                    {
                        tracing::error!("tftp: a transfer task panicked: {e}");
                    }
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, peer)) => {
                        let datagram = buf.get(..n).unwrap_or_default();
                        self.on_datagram(datagram, peer, &mut tasks, &transfers_cancel).await;
                    }
                    Err(e) => {
                        // ICMP errors and the like: transient; keep serving.
                        tracing::debug!("tftp: receive on {}: {e}", self.local_addr);
                    }
                },
            }
        }
        transfers_cancel.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("tftp: {} transfers did not stop in time, aborted", tasks.len());
            tasks.shutdown().await;
        }
        tracing::info!(local_addr = %self.local_addr, "tftp: stopped");
        Ok(())
    }

    async fn on_datagram(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
    ) {
        let request = match Packet::decode(datagram) {
            Ok(Packet::Rrq(request)) => request,
            Ok(Packet::Wrq(request)) => {
                tracing::info!(%peer, file = %request.filename, "tftp: write refused");
                self.send_error(peer, ErrorCode::ACCESS_VIOLATION, "read-only server")
                    .await;
                return;
            }
            Ok(other) => {
                tracing::debug!(%peer, "tftp: ignored {other:?} on the listening port");
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, "tftp: bad request: {e}");
                if matches!(datagram.get(..2), Some([0, 1] | [0, 2])) {
                    self.send_error(peer, ErrorCode::ILLEGAL_OPERATION, &format!("bad request: {e}"))
                        .await;
                }
                return;
            }
        };
        let mode = request.mode.to_ascii_lowercase();
        if mode != "octet" && mode != "netascii" {
            let msg = format!("unsupported mode {:?} (use octet)", request.mode);
            self.send_error(peer, ErrorCode::ILLEGAL_OPERATION, &msg).await;
            return;
        }
        let Ok(permit) = Arc::clone(&self.shared.permits).try_acquire_owned() else {
            tracing::warn!(%peer, file = %request.filename, "tftp: busy, request refused");
            self.send_error(peer, ErrorCode::NOT_DEFINED, "server busy, try again later")
                .await;
            return;
        };
        // No de-duplication by ip:port: a client that aborted a transfer (UEFI's tsize probe)
        // asks again from the same port, and a retransmitted request that makes a second
        // transfer is ended by the client's ERROR 5 to it.
        let shared = Arc::clone(&self.shared);
        let cancel = cancel.clone();
        tasks.spawn(async move {
            serve_transfer(&shared, peer, request, cancel).await;
            drop(permit);
        });
    }

    async fn send_error(&self, peer: SocketAddr, code: ErrorCode, message: &str) {
        let mut buf = Vec::with_capacity(message.len() + 5);
        codec::put_error(&mut buf, code, message);
        if let Err(e) = self.socket.send_to(&buf, peer).await {
            tracing::debug!(%peer, "tftp: sending an error: {e}");
        }
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Room for a burst of requests (a room of PCs powered on together).
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Where a transfer's bytes come from.
enum Source {
    Memory(Bytes),
    File(FileSource),
}

/// A file read in pieces of whole windows into one reused buffer.
struct FileSource {
    file: File,
    size: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`; `buf.len()` bytes are valid.
    buf_offset: u64,
    /// Bytes per read: a multiple of the window, so windows do not straddle two pieces.
    read_size: u64,
}

impl FileSource {
    /// Makes bytes `start..end` available in `buf`.
    fn prepare(&mut self, start: u64, end: u64) -> io::Result<()> {
        if start >= self.buf_offset && end <= self.buf_offset + self.buf.len() as u64 {
            return Ok(());
        }
        let len = (end - start).max(self.read_size).min(self.size - start);
        self.buf.resize(usize::try_from(len).map_err(io::Error::other)?, 0);
        self.buf_offset = start;
        self.file.read_exact_at(&mut self.buf, start).map_err(|e| {
            self.buf.clear();
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::other("the file shrank while being sent")
            } else {
                e
            }
        })
    }
}

impl Source {
    fn size(&self) -> u64 {
        match self {
            Source::Memory(b) => b.len() as u64,
            Source::File(f) => f.size,
        }
    }

    /// Bytes `offset..offset + len`, read from the file if needed.
    fn bytes(&mut self, offset: u64, len: usize) -> io::Result<&[u8]> {
        let (data, base) = match self {
            Source::Memory(b) => (&b[..], 0),
            Source::File(f) => {
                f.prepare(offset, offset + len as u64)?;
                (f.buf.as_slice(), f.buf_offset)
            }
        };
        usize::try_from(offset - base)
            .ok()
            .and_then(|start| data.get(start..start.checked_add(len)?))
            .ok_or_else(|| io::Error::other("block outside the read buffer"))
    }
}

/// Runs one read transfer from its own socket to the end, logging the outcome. The transfer
/// itself runs on a thread of its own with blocking I/O: lock-step TFTP is one small packet per
/// round trip, and a thread asleep in `recv` wakes straight to the ACK, where an async task pays
/// for a readiness poll, a wake-up and a failed `recv` on every block.
async fn serve_transfer(shared: &Shared, client: SocketAddr, request: Request, cancel: CancellationToken) {
    let socket = match transfer_socket(shared.transfer_bind, client) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%client, "tftp: no socket for a transfer: {e}");
            return;
        }
    };
    let source = match open_source(shared, &request.filename, client).await {
        Ok(source) => source,
        Err((code, message)) => {
            tracing::info!(%client, file = %request.filename, "tftp: refused: {message}");
            send_error(&socket, code, &message);
            return;
        }
    };
    let limits = shared.limits;
    let filename = request.filename.clone();
    let (done, finished) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("fog-tftp".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let started = Instant::now();
            let size = source.size();
            let result = run_transfer(&socket, source, &request, &limits, &cancel);
            if let Err(e) = &result {
                send_error(&socket, ErrorCode::NOT_DEFINED, &e.to_string());
            }
            let _ = done.send((result, size, started.elapsed()));
        });
    if let Err(e) = spawned {
        tracing::warn!(%client, "tftp: no thread for a transfer: {e}");
        return;
    }
    match finished.await {
        Ok((Ok(Outcome::Finished), size, took)) => {
            tracing::debug!(%client, file = %filename, size, secs = took.as_secs_f64(), "tftp: sent");
        }
        Ok((Ok(outcome), _, _)) => tracing::info!(%client, file = %filename, "tftp: transfer ended: {outcome}"),
        Ok((Err(e), _, _)) => tracing::warn!(%client, file = %filename, "tftp: transfer failed: {e}"),
        Err(_) => tracing::warn!(%client, file = %filename, "tftp: transfer thread ended without a result"),
    }
}

/// A blocking UDP socket on an ephemeral port, connected to the client (packets from any other
/// address are dropped by the kernel), waking at least every [`POLL`] to look at the clock and
/// at cancellation.
fn transfer_socket(bind: SocketAddr, client: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(client)?;
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

fn send_error(socket: &std::net::UdpSocket, code: ErrorCode, message: &str) {
    let mut buf = Vec::with_capacity(message.len() + 5);
    codec::put_error(&mut buf, code, message);
    let _ = socket.send(&buf);
}

/// How a transfer ended, for the log.
enum Outcome {
    Finished,
    ClientError(String),
    TimedOut,
    ClientGone,
    Shutdown,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Finished => write!(f, "finished"),
            Outcome::ClientError(e) => write!(f, "the client sent ERROR {e}"),
            Outcome::TimedOut => write!(f, "no answer from the client, gave up"),
            Outcome::ClientGone => write!(f, "the client's port is closed"),
            Outcome::Shutdown => write!(f, "server shutting down"),
        }
    }
}

async fn open_source(
    shared: &Shared,
    requested: &str,
    client: SocketAddr,
) -> std::result::Result<Source, (ErrorCode, String)> {
    let refused = |r: Refused| match r {
        Refused::Traversal => (
            ErrorCode::ACCESS_VIOLATION,
            "access violation: outside the TFTP root".to_owned(),
        ),
        Refused::NotFound => (ErrorCode::FILE_NOT_FOUND, "file not found".to_owned()),
        Refused::NotAFile => (ErrorCode::FILE_NOT_FOUND, "not a regular file".to_owned()),
        Refused::Denied => (ErrorCode::ACCESS_VIOLATION, "permission denied".to_owned()),
        Refused::Io(e) => (ErrorCode::NOT_DEFINED, e.to_string()),
    };
    let relative = path::normalize(requested).map_err(refused)?;
    if let Some(files) = &shared.virtual_files
        && let Some(bytes) = files.open(&relative, client)
    {
        return Ok(Source::Memory(bytes));
    }
    let root = shared.root.clone();
    let opened = tokio::task::spawn_blocking(move || path::open_in_root(&root, &relative))
        .await
        .map_err(|e| (ErrorCode::NOT_DEFINED, e.to_string()))?;
    let (file, size, _) = opened.map_err(refused)?;
    Ok(Source::File(FileSource {
        file,
        size,
        buf: Vec::new(),
        buf_offset: 0,
        read_size: READ_AHEAD,
    }))
}

fn run_transfer(
    socket: &std::net::UdpSocket,
    mut source: Source,
    request: &Request,
    limits: &transfer::Limits,
    cancel: &CancellationToken,
) -> io::Result<Outcome> {
    let size = source.size();
    let negotiated = transfer::negotiate(&request.options, size, limits);
    if let Source::File(f) = &mut source {
        let window = u64::from(negotiated.blksize) * u64::from(negotiated.windowsize);
        f.read_size = READ_AHEAD.div_ceil(window) * window;
    }
    let oack = if negotiated.oack.is_empty() {
        None
    } else {
        Some(Packet::Oack(negotiated.oack.clone()).encode())
    };
    let mut t = Transfer::new(size, &negotiated, oack.is_some(), limits.retries, Instant::now());
    let mut packet = Vec::with_capacity(4 + usize::from(negotiated.blksize));
    let mut incoming = vec![0u8; 2048];
    let mut step = t.start(Instant::now());
    loop {
        match step {
            Step::SendOack => {
                if let Some(oack) = &oack
                    && send(socket, oack)?
                {
                    return Ok(Outcome::ClientGone);
                }
            }
            Step::SendBlocks { first, count } => {
                for index in first..first + count {
                    let block = t.block(index);
                    packet.clear();
                    codec::put_data_header(&mut packet, block.number);
                    packet.extend_from_slice(source.bytes(block.offset, block.len)?);
                    if send(socket, &packet)? {
                        return Ok(Outcome::ClientGone);
                    }
                }
            }
            Step::Wait => {}
            Step::Finished => return Ok(Outcome::Finished),
            Step::ClientError => return Ok(Outcome::ClientError(String::new())),
            Step::TimedOut => return Ok(Outcome::TimedOut),
        }
        step = loop {
            if cancel.is_cancelled() {
                send_error(socket, ErrorCode::NOT_DEFINED, "server shutting down");
                return Ok(Outcome::Shutdown);
            }
            match socket.recv(&mut incoming) {
                Ok(n) => match Packet::decode(incoming.get(..n).unwrap_or_default()) {
                    Ok(Packet::Ack(number)) => match t.on_ack(number, Instant::now()) {
                        Step::Wait => {}
                        s => break s,
                    },
                    Ok(Packet::Error { code, message }) => {
                        t.on_error();
                        return Ok(Outcome::ClientError(format!("{code}: {message}")));
                    }
                    _ => {} // anything else from the client's port is ignored
                },
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(Outcome::ClientGone),
                Err(e) => tracing::debug!("tftp: receive: {e}"),
            }
            // Checked after every packet too: a client sending only stale ACKs must still time out.
            match t.on_timeout(Instant::now()) {
                Step::Wait => {}
                Step::TimedOut => return Ok(Outcome::TimedOut),
                s => break s,
            }
        };
    }
}

/// Sends one datagram; `Ok(true)` when the client is gone (ICMP port unreachable).
fn send(socket: &std::net::UdpSocket, datagram: &[u8]) -> io::Result<bool> {
    match socket.send(datagram) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
        // A full queue or a transient routing error: the retransmission timer covers it.
        Err(e) => {
            tracing::debug!("tftp: send: {e}");
            Ok(false)
        }
    }
}
