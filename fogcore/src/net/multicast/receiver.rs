//! A carousel's receiver: a socket loop reassembles objects and reports, decoder threads check
//! and place them through the deploy writer, an HTTP thread fetches what multicast does not bring.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use super::wire::{self, Key, Mode, Nak, Packet, Report, SessionState};
use super::{Joined, key_from_hex, ranges};
use crate::imaging::carousel::Plan;
use crate::imaging::chunk::{ChunkId, ChunkSource};
use crate::imaging::deploy::{self, DeployOptions, DeployReport, DeployWriter};
use crate::imaging::replica::{TempDir, open_spooled};
use crate::progress::Progress;
use crate::{Error, Result};

/// How often a receiver reports.
const REPORT_EVERY: Duration = Duration::from_millis(200);
/// No valid packet for this long: multicast does not reach us, HTTP takes over.
const SILENCE: Duration = Duration::from_secs(3);
/// Loss past the bulk's by this over the last [`ASSIST_WINDOW`] reports: keep what comes,
/// fetch the gaps over HTTP. Well above what the rate's probing costs everyone (a few percent at its peaks), well
/// below what a port slower than the rest loses (half at half the rate).
const ASSIST_LOSS: f64 = 0.15;
/// Loss past the bulk's by this over a second: assisted at once.
const HEAVY_LOSS: f64 = 0.3;
/// Reports (of [`REPORT_EVERY`]) loss is judged over: three seconds.
const ASSIST_WINDOW: usize = 15;
/// A partial object not added to for this long is asked for again (NAK).
const STALE: Duration = Duration::from_millis(40);
/// A NAK is not repeated within this time.
const NAK_AGAIN: Duration = Duration::from_millis(300);
/// Bytes of objects waiting for the decoders: a burst waits here while the rate adapts; past
/// it an object is dropped (it stays needed) and the receiver reports congestion.
const DECODE_QUEUE_BYTES: usize = 64 << 20;
/// Partial objects kept (the oldest is dropped past it; the object stays needed).
const MAX_PARTIAL: usize = 512;

/// How to receive.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The interface to hear the group on.
    pub interface: String,
    /// Group and port (where announcements are heard when `sender` is not given).
    pub group: SocketAddrV4,
    /// The sender's URL (`http://host:port`); else taken from its announcements.
    pub sender: Option<String>,
    /// Without `sender`: the session of this image (else the first announced).
    pub session: Option<String>,
    /// Without `sender`: only sessions whose URL is on this host (the node's, from the boot
    /// menu: anyone on the segment can announce).
    pub only_from: Option<String>,
    /// How long to wait for an announcement (or for the sender to answer).
    pub wait: Duration,
    /// Where the manifest is spooled (default: the system's temporary directory).
    pub work_dir: Option<std::path::PathBuf>,
    /// Layout and threads of the deploy (verify is not offered: every chunk is checked by hash
    /// as it is placed).
    pub deploy: DeployOptions,
}

/// What a receiver did.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiveReport {
    /// Session number.
    pub session: u32,
    /// This receiver's number.
    pub receiver: u32,
    /// Mode at the end.
    pub mode: Mode,
    /// Objects this deploy needed.
    pub objects: u32,
    /// Objects placed from multicast.
    pub from_multicast: u32,
    /// Objects fetched over HTTP.
    pub from_http: u32,
    /// Data packets received.
    pub packets: u64,
    /// Packets dropped as malformed, foreign or forged.
    pub bad_packets: u64,
    /// Objects whose content failed its check (none written).
    pub bad_objects: u64,
    /// NAKs sent (objects asked for again).
    pub naks: u64,
    /// Objects dropped because the disk could not keep up.
    pub queue_drops: u64,
    /// The deploy.
    pub deploy: DeployReport,
}

struct Partial {
    buf: Vec<u8>,
    have: Vec<bool>,
    count: u16,
    len: usize,
    last_seen: Instant,
    passed: bool,
    last_nak: Option<Instant>,
}

impl Partial {
    fn new(frags: usize) -> Partial {
        Partial {
            buf: vec![0; frags * wire::FRAGMENT],
            have: vec![false; frags],
            count: 0,
            len: 0,
            last_seen: Instant::now(),
            passed: false,
            last_nak: None,
        }
    }
}

enum Origin {
    Multicast,
    Http,
}

/// State the socket loop, the decoders and the HTTP thread share.
struct Progressing {
    done: Vec<AtomicBool>,
    placed: AtomicU32,
    from_multicast: AtomicU32,
    from_http: AtomicU32,
    bad_objects: AtomicU64,
    failure: Mutex<Option<Error>>,
    /// Objects handed to the decoders or to HTTP and not yet settled.
    pending: Mutex<HashSet<u32>>,
    /// Bytes of objects waiting for the decoders.
    queued_bytes: AtomicUsize,
    /// The deploy stopped (done, cancelled or failed): the threads drop what is left.
    stop: AtomicBool,
}

impl Progressing {
    fn pending(&self) -> MutexGuard<'_, HashSet<u32>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, e: Error) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(e);
        }
    }

    fn failed(&self) -> Option<Error> {
        self.failure.lock().ok().and_then(|mut s| s.take())
    }
}

/// A chunk source with nothing in it: a multicast deploy is not read back (every chunk was
/// checked by hash as it was placed), so finishing it needs none.
struct NoChunks;

impl ChunkSource for NoChunks {
    fn get(&self, _id: &ChunkId) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// A small HTTP client usable from any thread (its own runtime; see `control::remote`).
struct Http {
    base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Http {
    fn new(base: &str) -> Result<Http> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(Error::invalid("sender", base, "must start with http://"));
        }
        let client = crate::net::tls::Trust::System
            .client_builder()?
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Http {
                url: base.clone(),
                reason: e.to_string(),
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("fog-multicast-client")
            .build()
            .map_err(|e| Error::Internal(format!("cannot start a runtime: {e}")))?;
        Ok(Http { base, client, runtime })
    }

    fn call(&self, post: bool, path: &str) -> Result<bytes::Bytes> {
        let url = format!("{}{path}", self.base);
        let req = if post {
            self.client.post(&url)
        } else {
            self.client.get(&url)
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let result = async {
                let resp = req.send().await?.error_for_status()?;
                resp.bytes().await
            }
            .await;
            let _ = tx.send(result);
        });
        let http = |reason: String| Error::Http {
            url: url.clone(),
            reason,
        };
        rx.recv()
            .map_err(|_| http("the request was dropped".into()))?
            .map_err(|e| http(e.to_string()))
    }
}

/// Joins a session and deploys its image to `target` (a file, created if absent, or a block
/// device).
pub fn receive(target: &Path, options: &ReceiveOptions, progress: &dyn Progress) -> Result<ReceiveReport> {
    let interface = super::interface_ipv4(&options.interface)?;
    let socket = super::group_socket(options.group, interface)?;
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let url = match &options.sender {
        Some(url) => url.clone(),
        None => wait_for_announcement(&socket, options)?,
    };
    let http = Http::new(&url)?;
    // Ready before joining: the session starts when its receivers have joined, and one still
    // fetching its manifest then would fetch it under the stream.
    let work_dir = options.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = TempDir::new_in(&work_dir, "fog-multicast-")?;
    let path = dir.path().join("manifest");
    // A receiver started before its sender waits for it, as for an announcement.
    let started = Instant::now();
    let manifest_bytes = loop {
        match http.call(false, "/multicast/manifest") {
            Ok(bytes) => break bytes,
            Err(e) if started.elapsed() >= options.wait => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    std::fs::write(&path, manifest_bytes).map_err(|e| Error::io(&path, e))?;
    let spooled = open_spooled(dir, &path, &format!("the image of {url}"))?;
    let manifest = &spooled.manifest;
    let deploy_options = DeployOptions {
        verify: false,
        ..options.deploy.clone()
    };
    let writer = deploy::prepare(manifest, target, &deploy_options)?.into_writer()?;
    let plan = Plan::build(manifest)?;
    let joined: Joined = serde_json::from_slice(&http.call(true, "/multicast/join")?)
        .map_err(|e| Error::invalid("multicast join reply", url.clone(), e.to_string()))?;
    let key = key_from_hex(&joined.key)?;
    if joined.group != options.group {
        tracing::info!(group = %joined.group, "multicast: the session's group is another than ours; HTTP only");
    }
    if plan.len() != joined.objects as usize || joined.image != manifest.header.name {
        return Err(Error::invalid(
            "multicast session",
            url,
            format!(
                "it sends {} ({} objects), its manifest is of {} ({} objects)",
                joined.image,
                joined.objects,
                manifest.header.name,
                plan.len()
            ),
        ));
    }
    let regions = writer.regions();
    let needed = plan.needed(&regions);
    progress.start("multicast", writer.data_bytes());
    let shared = Progressing {
        done: needed.iter().map(|n| AtomicBool::new(!n)).collect(),
        placed: AtomicU32::new(0),
        from_multicast: AtomicU32::new(0),
        from_http: AtomicU32::new(0),
        bad_objects: AtomicU64::new(0),
        failure: Mutex::new(None),
        pending: Mutex::new(HashSet::new()),
        queued_bytes: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    };
    let wanted = needed.iter().filter(|n| **n).count() as u32;
    let listening = joined.group == options.group;
    let mut state = Loop {
        socket: &socket,
        session: joined.session,
        receiver: joined.receiver,
        report_to: joined.report,
        key,
        needed: &needed,
        max_frags: (0..plan.len()).map(|k| plan.max_fragments(k, wire::FRAGMENT)).collect(),
        wanted,
        mode: if listening { Mode::Normal } else { Mode::Http },
        partial: HashMap::new(),
        carousel_at: None,
        passed: VecDeque::new(),
        last_valid: Instant::now(),
        last_data: None,
        sending_since: None,
        session_state: SessionState::Waiting,
        bulk_loss: 0.0,
        bulk_receivers: 0,
        counter: 0,
        got: 0,
        max_seq: None,
        reported_seq: None,
        window: VecDeque::new(),
        congested: false,
        packets: 0,
        bad_packets: 0,
        naks: 0,
        queue_drops: 0,
        packet: Vec::with_capacity(wire::MAX_PACKET),
    };
    let (decode_tx, decode_rx) = crossbeam_channel::unbounded::<(u32, Vec<u8>, Origin)>();
    let (fetch_tx, fetch_rx) = crossbeam_channel::unbounded::<u32>();
    let threads = deploy_options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 4);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let rx = decode_rx.clone();
            let (plan, writer, shared, regions) = (&plan, &writer, &shared, &regions);
            scope.spawn(move || decode_loop(rx, plan, writer, shared, regions, progress));
        }
        drop(decode_rx);
        {
            let (http, shared, decode_tx) = (&http, &shared, decode_tx.clone());
            scope.spawn(move || fetch_loop(fetch_rx, http, decode_tx, shared));
        }
        let result = state.run(&shared, &decode_tx, &fetch_tx, progress);
        shared.stop.store(true, Ordering::Relaxed);
        drop(decode_tx);
        drop(fetch_tx);
        result
    })?;
    if let Some(e) = shared.failed() {
        return Err(e);
    }
    let deploy = writer.finish(&NoChunks, progress)?;
    state.leave(&shared);
    Ok(ReceiveReport {
        session: joined.session,
        receiver: joined.receiver,
        mode: state.mode,
        objects: wanted,
        from_multicast: shared.from_multicast.load(Ordering::Relaxed),
        from_http: shared.from_http.load(Ordering::Relaxed),
        packets: state.packets,
        bad_packets: state.bad_packets,
        bad_objects: shared.bad_objects.load(Ordering::Relaxed),
        naks: state.naks,
        queue_drops: state.queue_drops,
        deploy,
    })
}

/// The URL of the first session announced on the group.
fn wait_for_announcement(socket: &UdpSocket, options: &ReceiveOptions) -> Result<String> {
    let started = Instant::now();
    let mut buf = vec![0u8; 2048];
    while started.elapsed() < options.wait {
        let Ok(n) = socket.recv(&mut buf) else { continue };
        if let Ok(Packet::Announce(a)) = wire::decode(&buf[..n], None, None)
            && a.state != SessionState::Ended
            && a.url.starts_with("http://")
            && options.session.as_ref().is_none_or(|name| *name == a.image)
            && options.only_from.as_ref().is_none_or(|host| url_host(&a.url) == host)
        {
            tracing::info!(image = %a.image, url = %a.url, "multicast: joining an announced session");
            return Ok(a.url);
        }
    }
    Err(Error::InvalidInput(format!(
        "no multicast session{} announced on {} (interface {}) within {} s",
        options.session.as_ref().map(|s| format!(" of {s}")).unwrap_or_default(),
        options.group,
        options.interface,
        options.wait.as_secs()
    )))
}

/// The host of an `http://host:port/...` URL.
fn url_host(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or_default();
    authority.rsplit_once(':').map_or(authority, |(host, _)| host)
}

fn decode_loop(
    rx: Receiver<(u32, Vec<u8>, Origin)>,
    plan: &Plan,
    writer: &DeployWriter<'_>,
    shared: &Progressing,
    regions: &[usize],
    progress: &dyn Progress,
) {
    for (object, payload, origin) in rx {
        shared.queued_bytes.fetch_sub(payload.len(), Ordering::Relaxed);
        let index = object as usize;
        if shared.stop.load(Ordering::Relaxed) || shared.done.get(index).is_none_or(|d| d.load(Ordering::Acquire)) {
            shared.pending().remove(&object);
            continue;
        }
        let placed = match plan.check(index, &payload) {
            Ok(checked) => plan.write(&checked, writer).map(Some),
            Err(reason) => {
                // Forged or damaged: nothing was written; the object stays needed.
                shared.bad_objects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    object,
                    "multicast: an object failed its check ({reason}); asked for again"
                );
                Ok(None)
            }
        };
        match placed {
            Ok(None) => {}
            Ok(Some(_)) => {
                shared.done[index].store(true, Ordering::Release);
                shared.placed.fetch_add(1, Ordering::Relaxed);
                match origin {
                    Origin::Multicast => shared.from_multicast.fetch_add(1, Ordering::Relaxed),
                    Origin::Http => shared.from_http.fetch_add(1, Ordering::Relaxed),
                };
                progress.advance(plan.use_bytes(index, regions));
            }
            Err(e) => shared.fail(e),
        }
        shared.pending().remove(&object);
    }
}

fn fetch_loop(rx: Receiver<u32>, http: &Http, decode: Sender<(u32, Vec<u8>, Origin)>, shared: &Progressing) {
    for object in rx {
        if shared.stop.load(Ordering::Relaxed)
            || shared
                .done
                .get(object as usize)
                .is_none_or(|d| d.load(Ordering::Acquire))
        {
            shared.pending().remove(&object);
            continue;
        }
        // No more fetched than the decoders have room for.
        while shared.queued_bytes.load(Ordering::Relaxed) > DECODE_QUEUE_BYTES && !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut tries = 0;
        let payload = loop {
            match http.call(false, &format!("/multicast/object/{object}")) {
                Ok(bytes) => break Some(bytes.to_vec()),
                Err(e) if tries >= 3 => {
                    shared.fail(e);
                    break None;
                }
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        let Some(payload) = payload else { return };
        shared.queued_bytes.fetch_add(payload.len(), Ordering::Relaxed);
        if decode.send((object, payload, Origin::Http)).is_err() {
            return;
        }
    }
}

/// The socket loop's state.
struct Loop<'a> {
    socket: &'a UdpSocket,
    session: u32,
    receiver: u32,
    report_to: std::net::SocketAddr,
    key: Key,
    needed: &'a [bool],
    /// Per object, the most fragments it can take (see [`Plan::max_fragments`]).
    max_frags: Vec<usize>,
    wanted: u32,
    mode: Mode,
    partial: HashMap<u32, Partial>,
    /// The object the carousel is on (from its last non-repair packet).
    carousel_at: Option<u32>,
    /// Objects the carousel passed while we lacked them (assisted mode fetches them).
    passed: VecDeque<u32>,
    last_valid: Instant,
    /// The last data packet, and when the announcements said the session started sending.
    last_data: Option<Instant>,
    sending_since: Option<Instant>,
    session_state: SessionState,
    /// The bulk's loss as the sender last announced it.
    bulk_loss: f64,
    /// How many receivers that hear the group make the bulk.
    bulk_receivers: u16,
    counter: u32,
    got: u32,
    max_seq: Option<u32>,
    reported_seq: Option<u32>,
    /// (got, expected, congested) of the last reports.
    window: VecDeque<(u32, u32, bool)>,
    congested: bool,
    packets: u64,
    bad_packets: u64,
    naks: u64,
    queue_drops: u64,
    packet: Vec<u8>,
}

impl Loop<'_> {
    fn run(
        &mut self,
        shared: &Progressing,
        decode: &Sender<(u32, Vec<u8>, Origin)>,
        fetch: &Sender<u32>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut buf = vec![0u8; 2048];
        let mut last_report = Instant::now() - REPORT_EVERY;
        loop {
            if let Some(e) = shared.failed() {
                return Err(e);
            }
            if progress.cancelled() {
                return Err(Error::Cancelled);
            }
            if shared.placed.load(Ordering::Acquire) >= self.wanted {
                return Ok(());
            }
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.packet_in(&buf[..n], shared, decode);
            }
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = Instant::now();
                self.choose_mode();
                self.queue_http(shared, fetch);
                self.report(shared, false);
            }
        }
    }

    fn packet_in(&mut self, bytes: &[u8], shared: &Progressing, decode: &Sender<(u32, Vec<u8>, Origin)>) {
        let packet = match wire::decode(bytes, Some(self.session), Some(&self.key)) {
            Ok(p) => p,
            Err(_) => {
                self.bad_packets += 1;
                return;
            }
        };
        self.last_valid = Instant::now();
        let data = match packet {
            Packet::Data(d) => d,
            Packet::Announce(a) => {
                if a.state == SessionState::Sending && self.session_state != SessionState::Sending {
                    self.sending_since = Some(Instant::now());
                }
                self.session_state = a.state;
                self.bulk_loss = f64::from(a.bulk_loss_permille) / 1000.0;
                self.bulk_receivers = a.bulk_receivers;
                return;
            }
            Packet::Report(_) => return,
        };
        self.last_data = Some(Instant::now());
        self.packets += 1;
        self.got += 1;
        if self.max_seq.is_none_or(|m| data.seq.wrapping_sub(m) < 1 << 31) {
            self.max_seq = Some(data.seq);
        }
        let object = data.object;
        let index = object as usize;
        if index >= self.needed.len() || usize::from(data.frags) > self.max_frags[index] {
            self.bad_packets += 1; // not an object of this plan: not from the sender
            return;
        }
        if !data.repair {
            self.carousel_moved(object, shared);
        }
        if !self.needed.get(index).copied().unwrap_or(false) || shared.done[index].load(Ordering::Acquire) {
            return;
        }
        if shared.pending().contains(&object) {
            return;
        }
        let frags = data.frags as usize;
        let entry = self.partial.entry(object).or_insert_with(|| Partial::new(frags));
        if entry.have.len() != frags {
            // The object was sent with another count (its bytes changed in the store): start
            // again from this packet.
            *entry = Partial::new(frags);
        }
        entry.last_seen = Instant::now();
        let frag = data.frag as usize;
        if entry.have[frag] {
            return;
        }
        entry.have[frag] = true;
        entry.count += 1;
        let start = frag * wire::FRAGMENT;
        entry.buf[start..start + data.payload.len()].copy_from_slice(data.payload);
        if frag + 1 == frags {
            entry.len = start + data.payload.len();
        }
        if usize::from(entry.count) == frags {
            let Some(mut done) = self.partial.remove(&object) else {
                return;
            };
            done.buf.truncate(done.len);
            let queued = shared.queued_bytes.load(Ordering::Relaxed);
            if queued + done.buf.len() > DECODE_QUEUE_BYTES {
                // The disk does not keep up: drop it (it stays needed) and say so.
                self.queue_drops += 1;
                self.congested = true;
                return;
            }
            if queued + done.buf.len() > DECODE_QUEUE_BYTES * 3 / 4 {
                self.congested = true;
            }
            shared.queued_bytes.fetch_add(done.buf.len(), Ordering::Relaxed);
            shared.pending().insert(object);
            if decode.send((object, done.buf, Origin::Multicast)).is_err() {
                shared.pending().remove(&object);
            }
        } else if self.partial.len() > MAX_PARTIAL {
            let oldest = self.partial.iter().min_by_key(|(_, p)| p.last_seen).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.partial.remove(&oldest);
            }
        }
    }

    /// The carousel went on to `object`: what we lack between it and where it was is passed.
    fn carousel_moved(&mut self, object: u32, shared: &Progressing) {
        let previous = self.carousel_at.replace(object);
        let Some(previous) = previous else { return };
        if previous == object {
            return;
        }
        let objects = self.needed.len() as u32;
        let mut k = previous;
        for _ in 0..objects.min(4096) {
            if k == object {
                break;
            }
            let index = k as usize;
            if self.needed[index] && !shared.done[index].load(Ordering::Acquire) {
                if let Some(p) = self.partial.get_mut(&k) {
                    p.passed = true;
                }
                self.passed.push_back(k);
            }
            k = (k + 1) % objects;
        }
        while self.passed.len() > 1 << 16 {
            self.passed.pop_front();
        }
    }

    /// Data packets the sender sent since the last report, by its counter.
    fn expected_since_report(&self) -> u32 {
        match (self.max_seq, self.reported_seq) {
            (Some(now), Some(before)) => now.wrapping_sub(before),
            (Some(_), None) => self.got,
            _ => 0,
        }
    }

    fn choose_mode(&mut self) {
        let expected = self.expected_since_report();
        self.window.push_back((self.got, expected, self.congested));
        while self.window.len() > ASSIST_WINDOW {
            self.window.pop_front();
        }
        if self.mode == Mode::Http {
            return;
        }
        // Announcements alone do not count: a path that passes small packets and drops full
        // ones (an MTU below 1500) brings no data.
        // (In assisted mode the carousel may rightly send nothing: what is left is on its way
        // over HTTP.)
        let no_data = self.mode == Mode::Normal
            && self.session_state == SessionState::Sending
            && self
                .last_data
                .or(self.sending_since)
                .is_some_and(|t| t.elapsed() >= SILENCE);
        let silent = self.last_valid.elapsed() >= SILENCE || no_data;
        let ended = self.session_state == SessionState::Ended;
        if silent || ended {
            tracing::info!(silent, ended, "multicast: receiving over HTTP");
            self.mode = Mode::Http;
            return;
        }
        // Loss the sender causes for everyone passes once the rate adapts (a second or less);
        // only loss that lasts the whole window, and still now, is this receiver's own.
        let loss_of = |intervals: usize| {
            let (got, expected) = self
                .window
                .iter()
                .rev()
                .take(intervals)
                .fold((0u64, 0u64), |(g, e), w| (g + u64::from(w.0), e + u64::from(w.1)));
            if expected >= 50 {
                1.0 - (got as f64 / expected as f64).min(1.0)
            } else {
                0.0
            }
        };
        // Only loss beyond the bulk's is this receiver's own: when it is the bulk (the only one
        // hearing the group, or all lose alike) the rate answers it, as it answers a full queue.
        if self.bulk_receivers < 2 {
            return;
        }
        let own = |loss: f64| loss - self.bulk_loss;
        let full = self.window.len() == ASSIST_WINDOW;
        let loss = own(loss_of(ASSIST_WINDOW));
        // Heavy loss for a second is a port slower than the rest: no need to wait longer.
        let last_second = own(loss_of(ASSIST_WINDOW / 3));
        let heavy = self.window.len() >= ASSIST_WINDOW / 3 && last_second >= HEAVY_LOSS;
        let lossy = heavy || full && loss >= ASSIST_LOSS && last_second >= ASSIST_LOSS;
        let congested = self.window.iter().filter(|w| w.2).count();
        if self.mode == Mode::Normal && (lossy || congested >= ASSIST_WINDOW / 2 && self.queue_drops > 0) {
            tracing::info!(loss, congested, "multicast: assisted by HTTP");
            self.mode = Mode::Assisted;
        }
    }

    /// Hands objects to HTTP: all that remain in HTTP mode, the passed ones in assisted mode.
    fn queue_http(&mut self, shared: &Progressing, fetch: &Sender<u32>) {
        let mut queue = |object: u32, shared: &Progressing| {
            let index = object as usize;
            if self.needed[index] && !shared.done[index].load(Ordering::Acquire) && shared.pending().insert(object) {
                self.partial.remove(&object);
                let _ = fetch.send(object);
            }
        };
        match self.mode {
            Mode::Normal => {}
            Mode::Assisted => {
                while let Some(object) = self.passed.pop_front() {
                    queue(object, shared);
                }
            }
            Mode::Http => {
                for object in 0..self.needed.len() as u32 {
                    queue(object, shared);
                }
            }
        }
    }

    fn report(&mut self, shared: &Progressing, done: bool) {
        let expected = self.expected_since_report();
        let pending = shared.pending().clone();
        let needs =
            if self.mode == Mode::Http || done {
                Vec::new()
            } else {
                ranges((0..self.needed.len()).map(|i| {
                    self.needed[i] && !shared.done[i].load(Ordering::Acquire) && !pending.contains(&(i as u32))
                }))
            };
        let mut naks = Vec::new();
        if self.mode == Mode::Normal {
            for (&object, p) in &mut self.partial {
                let stale = p.passed || p.last_seen.elapsed() >= STALE;
                if !stale || p.last_nak.is_some_and(|t| t.elapsed() < NAK_AGAIN) {
                    continue;
                }
                p.last_nak = Some(Instant::now());
                let missing: Vec<(u16, u16)> = ranges(p.have.iter().map(|h| !h))
                    .into_iter()
                    .map(|(a, b)| (a as u16, b as u16))
                    .collect();
                naks.push(Nak { object, missing });
            }
            naks.sort_by_key(|n| n.object);
            self.naks += naks.len() as u64;
        }
        self.counter += 1;
        let report = Report {
            receiver: self.receiver,
            counter: self.counter,
            got: self.got,
            expected,
            done,
            congested: self.congested,
            mode: Some(self.mode),
            placed: shared.placed.load(Ordering::Relaxed),
            needs,
            naks,
        };
        self.got = 0;
        self.reported_seq = self.max_seq;
        self.congested = false;
        wire::encode(self.session, &self.key, &Packet::Report(report), &mut self.packet);
        let _ = self.socket.send_to(&self.packet, self.report_to);
    }

    /// Tells the sender we are done (three times: reports are not acknowledged).
    fn leave(&mut self, shared: &Progressing) {
        for _ in 0..3 {
            self.report(shared, true);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
