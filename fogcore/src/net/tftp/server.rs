//! The TFTP server: the listening socket, one task and one ephemeral socket per transfer.

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

/// A file read in large pieces on blocking threads: while one piece is sent, the next is read
/// (the hand-off to a blocking thread never sits between two packets). Two buffers, reused.
struct FileSource {
    file: Arc<File>,
    size: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`; `buf.len()` bytes are valid.
    buf_offset: u64,
    /// Bytes per read: a multiple of the window, so windows do not straddle two pieces.
    read_size: usize,
    /// The read of the piece after `buf`, under way.
    ahead: Option<tokio::task::JoinHandle<Piece>>,
    /// The other buffer, when no read holds it.
    spare: Vec<u8>,
}

/// A piece read on a blocking thread: the buffer, its file offset, how the read went.
type Piece = (Vec<u8>, u64, io::Result<()>);

impl FileSource {
    fn covers(&self, start: u64, end: u64) -> bool {
        start >= self.buf_offset && end <= self.buf_offset + self.buf.len() as u64
    }

    /// Starts reading `len` bytes at `offset` into `buf` on a blocking thread.
    fn spawn_read(&self, mut buf: Vec<u8>, offset: u64, len: u64) -> tokio::task::JoinHandle<Piece> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let result = usize::try_from(len).map_err(io::Error::other).and_then(|len| {
                buf.resize(len, 0);
                file.read_exact_at(&mut buf, offset)
            });
            (buf, offset, result)
        })
    }

    async fn prepare(&mut self, start: u64, end: u64) -> io::Result<()> {
        if !self.covers(start, end) {
            if let Some(ahead) = self.ahead.take() {
                let (buf, offset, result) = ahead.await.map_err(io::Error::other)?;
                let old = std::mem::replace(&mut self.buf, buf);
                self.spare = old;
                self.buf_offset = offset;
                if result.is_err() {
                    self.buf.clear(); // the direct read below reports the error
                }
            }
            if !self.covers(start, end) {
                let len = (end - start).max(self.read_size as u64).min(self.size - start);
                let buf = std::mem::take(&mut self.buf);
                let (buf, offset, result) = self.spawn_read(buf, start, len).await.map_err(io::Error::other)?;
                self.buf = buf;
                self.buf_offset = offset;
                if let Err(e) = result {
                    self.buf.clear();
                    return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                        io::Error::other("the file shrank while being sent")
                    } else {
                        e
                    });
                }
            }
        }
        let next = self.buf_offset + self.buf.len() as u64;
        if self.ahead.is_none() && next < self.size {
            let len = (self.read_size as u64).min(self.size - next);
            let spare = std::mem::take(&mut self.spare);
            self.ahead = Some(self.spawn_read(spare, next, len));
        }
        Ok(())
    }
}

impl Source {
    fn size(&self) -> u64 {
        match self {
            Source::Memory(b) => b.len() as u64,
            Source::File(f) => f.size,
        }
    }

    /// Makes bytes `start..end` available to [`Source::slice`].
    async fn prepare(&mut self, start: u64, end: u64) -> io::Result<()> {
        match self {
            Source::Memory(_) => Ok(()),
            Source::File(f) => f.prepare(start, end).await,
        }
    }

    fn slice(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let (data, base) = match self {
            Source::Memory(b) => (b.as_ref(), 0),
            Source::File(f) => (f.buf.as_slice(), f.buf_offset),
        };
        let start = usize::try_from(offset.checked_sub(base)?).ok()?;
        data.get(start..start.checked_add(len)?)
    }
}

/// Runs one read transfer from its own socket to the end, logging the outcome.
async fn serve_transfer(shared: &Shared, client: SocketAddr, request: Request, cancel: CancellationToken) {
    let socket = match UdpSocket::bind(shared.transfer_bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%client, "tftp: no socket for a transfer: {e}");
            return;
        }
    };
    if let Err(e) = socket.connect(client).await {
        tracing::warn!(%client, "tftp: connect: {e}");
        return;
    }
    let started = Instant::now();
    let source = match open_source(shared, &request.filename, client).await {
        Ok(source) => source,
        Err((code, message)) => {
            tracing::info!(%client, file = %request.filename, "tftp: refused: {message}");
            let mut buf = Vec::new();
            codec::put_error(&mut buf, code, &message);
            let _ = socket.send(&buf).await;
            return;
        }
    };
    let size = source.size();
    match run_transfer(&socket, source, &request, &shared.limits, &cancel).await {
        Ok(Outcome::Finished) => {
            let secs = started.elapsed().as_secs_f64();
            tracing::debug!(%client, file = %request.filename, size, secs, "tftp: sent");
        }
        Ok(outcome) => tracing::info!(%client, file = %request.filename, "tftp: transfer ended: {outcome}"),
        Err(e) => {
            tracing::warn!(%client, file = %request.filename, "tftp: transfer failed: {e}");
            let mut buf = Vec::new();
            codec::put_error(&mut buf, ErrorCode::NOT_DEFINED, &e.to_string());
            let _ = socket.send(&buf).await;
        }
    }
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
        file: Arc::new(file),
        size,
        buf: Vec::new(),
        buf_offset: 0,
        read_size: 0,
        ahead: None,
        spare: Vec::new(),
    }))
}

async fn run_transfer(
    socket: &UdpSocket,
    mut source: Source,
    request: &Request,
    limits: &transfer::Limits,
    cancel: &CancellationToken,
) -> io::Result<Outcome> {
    let size = source.size();
    let negotiated = transfer::negotiate(&request.options, size, limits);
    let blksize = u64::from(negotiated.blksize);
    if let Source::File(f) = &mut source {
        let window = blksize * u64::from(negotiated.windowsize);
        let read = READ_AHEAD.div_ceil(window) * window;
        f.read_size = usize::try_from(read.min(size.max(1))).unwrap_or(usize::MAX);
    }
    let oack = if negotiated.oack.is_empty() {
        None
    } else {
        Some(Packet::Oack(negotiated.oack.clone()).encode())
    };
    let now = Instant::now();
    let mut t = Transfer::new(size, &negotiated, oack.is_some(), limits.retries, now);
    let mut packet = Vec::with_capacity(4 + usize::from(negotiated.blksize));
    let mut incoming = vec![0u8; 2048];
    // Both futures live for the whole transfer: nothing is registered again per packet, and the
    // timer is moved only when it fires (the state machine says whether it was really due).
    let sleep = tokio::time::sleep_until(t.deadline().into());
    tokio::pin!(sleep);
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let mut step = t.start(now);
    loop {
        match step {
            Step::SendOack => {
                if let Some(oack) = &oack
                    && send(socket, oack).await?
                {
                    return Ok(Outcome::ClientGone);
                }
            }
            Step::SendBlocks { first, count } => {
                let last = t.block(first + count - 1);
                let first_block = t.block(first);
                source
                    .prepare(first_block.offset, last.offset + last.len as u64)
                    .await?;
                for index in first..first + count {
                    let block = t.block(index);
                    let data = source
                        .slice(block.offset, block.len)
                        .ok_or_else(|| io::Error::other("block outside the read buffer"))?;
                    packet.clear();
                    codec::put_data_header(&mut packet, block.number);
                    packet.extend_from_slice(data);
                    if send(socket, &packet).await? {
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
            tokio::select! {
                biased;
                () = &mut cancelled => {
                    let mut buf = Vec::new();
                    codec::put_error(&mut buf, ErrorCode::NOT_DEFINED, "server shutting down");
                    let _ = socket.send(&buf).await;
                    return Ok(Outcome::Shutdown);
                }
                received = socket.recv(&mut incoming) => match received {
                    Ok(n) => match Packet::decode(incoming.get(..n).unwrap_or_default()) {
                        Ok(Packet::Ack(number)) => break t.on_ack(number, Instant::now()),
                        Ok(Packet::Error { code, message }) => {
                            t.on_error();
                            return Ok(Outcome::ClientError(format!("{code}: {message}")));
                        }
                        _ => continue, // anything else from the client's port is ignored
                    },
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(Outcome::ClientGone),
                    Err(e) => {
                        tracing::debug!("tftp: receive: {e}");
                        continue;
                    }
                },
                () = &mut sleep => {
                    let s = t.on_timeout(Instant::now());
                    sleep.as_mut().reset(t.deadline().into());
                    match s {
                        Step::Wait => continue,
                        Step::TimedOut => return Ok(Outcome::TimedOut),
                        s => break s,
                    }
                }
            }
        };
    }
}

/// Sends one datagram; `Ok(true)` when the client is gone (ICMP port unreachable).
async fn send(socket: &UdpSocket, datagram: &[u8]) -> io::Result<bool> {
    match socket.send(datagram).await {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
        // A full queue or a transient routing error: the retransmission timer covers it.
        Err(e) => {
            tracing::debug!("tftp: send: {e}");
            Ok(false)
        }
    }
}
