//! The carousel's sender: one thread paces the group's packets, one reads reports, a small HTTP
//! server answers joins, the manifest and whole objects (for receivers that miss multicast).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use super::wire::{self, Announce, Data, Key, Mode, Packet, SessionState};
use super::{Joined, ranges};
use crate::imaging::carousel::Plan;
use crate::imaging::manifest::Manifest;
use crate::imaging::replica::ImageStore;
use crate::{Error, Result};

/// A receiver silent this long is forgotten (until it reports again).
const FORGET_AFTER: Duration = Duration::from_secs(5);
/// A receiver that joined and never reported is forgotten after this long.
const FIRST_REPORT_WITHIN: Duration = Duration::from_secs(30);
/// An object is not sent again within this time of its last send: reports lag behind.
const RESEND_AFTER: Duration = Duration::from_millis(1000);
/// A fragment asked for again is not repaired twice within this time.
const REPAIR_AGAIN_AFTER: Duration = Duration::from_millis(100);
/// Fragments waiting to be repaired, at most.
const MAX_REPAIRS: usize = 1 << 16;
/// Bytes of object payloads kept for repairs.
const PAYLOAD_CACHE: usize = 64 << 20;
/// Repair packets earned per carousel packet: repairs are at most a quarter of what is sent
/// while the carousel has work.
const REPAIR_SHARE: f64 = 1.0 / 3.0;
/// Repair packets that may go in one burst.
const REPAIR_BURST: f64 = 256.0;
/// The rate the carousel starts at, capped by the session's rate.
const START_RATE: f64 = 16.0 * 1024.0 * 1024.0;
/// The rate never drops below this.
const MIN_RATE: f64 = 512.0 * 1024.0;

/// A session's settings.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The interface to send on.
    pub interface: String,
    /// Group and port.
    pub group: SocketAddrV4,
    /// HTTP port for joins and fallback (0: any free port; announcements carry it).
    pub http_port: u16,
    /// Start when this many receivers joined...
    pub receivers: usize,
    /// ...or this long after the first join, whichever comes first.
    pub max_wait: Duration,
    /// Rate cap, bytes per second.
    pub rate: u64,
    /// End a session nobody joined after this long (`None`: wait for the first receiver).
    pub give_up: Option<Duration>,
}

/// One receiver as the sender saw it.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiverSummary {
    /// Its number.
    pub receiver: u32,
    /// Its last mode.
    pub mode: Mode,
    /// It said it had everything.
    pub done: bool,
    /// It stopped reporting before it was done.
    pub lost: bool,
    /// Objects it had placed when last heard.
    pub placed: u32,
}

/// What a session did.
#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    /// Image sent.
    pub image: String,
    /// Session number.
    pub session: u32,
    /// Objects in the plan.
    pub objects: u32,
    /// Bytes of the objects sent, each once (frames as stored, plus their part tables): what
    /// a clean run puts on the wire, and what `bytes_sent` is compared with.
    pub payload_bytes: u64,
    /// Data packets sent.
    pub packets: u64,
    /// UDP payload bytes of data packets sent.
    pub bytes_sent: u64,
    /// Fragments sent again because a receiver asked.
    pub repairs: u64,
    /// Objects sent again by the carousel (a later pass).
    pub objects_resent: u64,
    /// Objects served over HTTP.
    pub http_objects: u64,
    /// Reports refused (malformed, foreign, forged or from no joined receiver).
    pub bad_reports: u64,
    /// Seconds waiting for receivers.
    pub wait_seconds: f64,
    /// Seconds from the start to the end.
    pub send_seconds: f64,
    /// The receivers.
    pub receivers: Vec<ReceiverSummary>,
}

struct Peer {
    last_heard: Instant,
    counter: u32,
    reported: bool,
    needs: Vec<(u32, u32)>,
    loss: f64,
    /// Loss over the last few seconds (moving average of the reports that heard data).
    recent_loss: f64,
    /// The last report heard data from the group: only then is its loss a sample of the
    /// bulk's (a receiver that hears nothing expects nothing, and would count as lossless).
    hears: bool,
    congested: bool,
    mode: Mode,
    done: bool,
    forgotten: bool,
    placed: u32,
}

impl Peer {
    /// Takes part in choosing what to send and how fast.
    fn active(&self) -> bool {
        !self.done && !self.forgotten
    }

    fn carousel_needs(&self) -> Option<&[(u32, u32)]> {
        (self.active() && self.mode != Mode::Http).then_some(&self.needs[..])
    }
}

#[derive(Default)]
struct Session {
    /// Over: no more joins.
    closed: bool,
    peers: BTreeMap<u32, Peer>,
    next_id: u32,
    first_join: Option<Instant>,
    repairs: VecDeque<(u32, u16)>,
    queued: HashSet<(u32, u16)>,
    bad_reports: u64,
    http_objects: u64,
}

struct Shared {
    plan: Plan,
    /// Per object, its fragment count once sent (0 before): NAKs are checked against it.
    frags: Vec<AtomicU16>,
    store: Arc<dyn ImageStore>,
    manifest: bytes::Bytes,
    image: String,
    session: u32,
    key: Key,
    key_hex: String,
    group: SocketAddrV4,
    report: SocketAddr,
    state: Mutex<Session>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Session> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends image `image` of `store` to the receivers that join, until each is done or gone.
pub fn send(store: Arc<dyn ImageStore>, image: &str, options: &SendOptions) -> Result<SendReport> {
    start(store, image, options)?.wait()
}

/// A session running on threads of its own.
pub struct RunningSession {
    url: String,
    group: SocketAddrV4,
    ended: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<SendReport>>,
}

impl RunningSession {
    /// Where receivers join (`http://address:port`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The session's group and port.
    pub fn group(&self) -> SocketAddrV4 {
        self.group
    }

    /// True once every receiver is done or gone (or the session failed).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire) || self.thread.is_finished()
    }

    /// Waits for the end; the session's report.
    pub fn wait(self) -> Result<SendReport> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the multicast sender panicked".into())))
    }
}

/// Opens a session for image `image` of `store`: plans it, binds its sockets and HTTP side, and
/// runs it on its own threads until every receiver that joins is done or gone.
pub fn start(store: Arc<dyn ImageStore>, image: &str, options: &SendOptions) -> Result<RunningSession> {
    let interface = super::interface_ipv4(&options.interface)?;
    let mut manifest_bytes = Vec::new();
    store.manifest_to(image, &mut manifest_bytes)?;
    let plan = {
        let dir = crate::imaging::replica::TempDir::new_in(&std::env::temp_dir(), "fog-multicast-")?;
        let path = dir.path().join("manifest");
        std::fs::write(&path, &manifest_bytes).map_err(|e| Error::io(&path, e))?;
        let manifest = Manifest::open(&path, image)?;
        manifest.check()?;
        Plan::build(&manifest)?
    };
    let objects = u32::try_from(plan.len()).map_err(|_| Error::invalid("image", image, "too many objects"))?;
    let socket = super::sender_socket(interface)?;
    let report_addr = socket.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    let key = Key::random();
    let shared = Arc::new(Shared {
        frags: (0..plan.len()).map(|_| AtomicU16::new(0)).collect(),
        plan,
        store,
        manifest: manifest_bytes.into(),
        image: image.into(),
        session: rand::random(),
        key_hex: hex::encode(key.0),
        key,
        group: options.group,
        report: report_addr,
        state: Mutex::new(Session::default()),
    });
    let http = HttpSide::start(shared.clone(), SocketAddr::from((interface, options.http_port)))?;
    let url = format!("http://{}", http.addr);
    tracing::info!(image, session = shared.session, %url, group = %options.group, "multicast: session open");
    let ended = Arc::new(AtomicBool::new(false));
    let thread = {
        let (options, url, ended) = (options.clone(), url.clone(), ended.clone());
        std::thread::Builder::new()
            .name("fog-multicast".into())
            .spawn(move || {
                let stop = AtomicBool::new(false);
                let result = std::thread::scope(|scope| {
                    let reports = socket.try_clone().map_err(|e| Error::Internal(e.to_string()))?;
                    let reader = scope.spawn(|| read_reports(&shared, reports, &stop));
                    let result = Carousel::new(&shared, &socket, &options, url, objects).run();
                    stop.store(true, Ordering::Relaxed);
                    let _ = reader.join();
                    result
                });
                http.stop();
                ended.store(true, Ordering::Release);
                result
            })
            .map_err(|e| Error::Internal(format!("cannot start the multicast sender: {e}")))?
    };
    Ok(RunningSession {
        url,
        group: options.group,
        ended,
        thread,
    })
}

/// Reads reports until `stop`.
fn read_reports(shared: &Shared, socket: UdpSocket, stop: &AtomicBool) {
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = socket.recv(&mut buf) else { continue };
        let packet = wire::decode(&buf[..n], Some(shared.session), Some(&shared.key));
        let mut session = shared.lock();
        let Ok(Packet::Report(report)) = packet else {
            session.bad_reports += 1;
            continue;
        };
        let Some(peer) = session.peers.get_mut(&report.receiver) else {
            session.bad_reports += 1;
            continue;
        };
        if peer.reported && report.counter <= peer.counter {
            continue; // stale or replayed
        }
        peer.reported = true;
        peer.counter = report.counter;
        peer.last_heard = Instant::now();
        peer.forgotten = false;
        peer.needs = report.needs;
        peer.done = report.done;
        peer.placed = report.placed;
        peer.mode = report.mode.unwrap_or(Mode::Normal);
        peer.congested = report.congested;
        peer.loss = if report.expected > 0 {
            1.0 - (f64::from(report.got) / f64::from(report.expected)).min(1.0)
        } else {
            0.0
        };
        peer.hears = report.expected > 0;
        if peer.hears {
            peer.recent_loss = 0.8 * peer.recent_loss + 0.2 * peer.loss;
        }
        // Only fragments of objects sent, within their count, while the queue has room.
        'naks: for nak in &report.naks {
            let sent = shared
                .frags
                .get(nak.object as usize)
                .map_or(0, |f| f.load(Ordering::Relaxed));
            for &(from, to) in &nak.missing {
                for frag in from..to.min(sent) {
                    if session.repairs.len() >= MAX_REPAIRS {
                        break 'naks;
                    }
                    if session.queued.insert((nak.object, frag)) {
                        session.repairs.push_back((nak.object, frag));
                    }
                }
            }
        }
    }
}

/// Paces packets at the current rate.
struct Pacer {
    rate: f64,
    cap: f64,
    next: Instant,
    cut_once: bool,
    /// Wire bytes paced since the last adjustment, and when that was.
    sent: usize,
    since: Instant,
    /// No second cut before this: reports still carry the loss of the rate before the last.
    hold_until: Instant,
}

impl Pacer {
    fn new(cap: f64) -> Pacer {
        let now = Instant::now();
        Pacer {
            rate: START_RATE.min(cap),
            cap,
            next: now,
            cut_once: false,
            sent: 0,
            since: now,
            hold_until: now,
        }
    }

    fn wait(&mut self, bytes: usize) {
        let now = Instant::now();
        if self.next > now + Duration::from_millis(1) {
            std::thread::sleep(self.next - now);
        } else if self.next + Duration::from_millis(5) < now {
            self.next = now - Duration::from_millis(5); // no burst after an idle spell
        }
        self.next += Duration::from_secs_f64(bytes as f64 / self.rate);
        self.sent += bytes;
    }

    /// Follows the bulk: slower when half or more of the receivers heard are congested (to below
    /// what was really sent), faster while most are clean and the rate is really reached. One
    /// slow receiver among several never slows the others: it fetches what it misses over HTTP.
    /// Receivers in HTTP mode hear nothing and do not count.
    fn adjust(&mut self, peers: &BTreeMap<u32, Peer>) {
        let now = Instant::now();
        let achieved = self.sent as f64 / (now - self.since).as_secs_f64().max(1e-3);
        self.sent = 0;
        self.since = now;
        let voters: Vec<&Peer> = peers
            .values()
            .filter(|p| p.active() && p.reported && p.mode != Mode::Http)
            .collect();
        if voters.is_empty() {
            return;
        }
        let congested = voters.iter().filter(|p| p.loss > 0.02 || p.congested).count();
        let lossy = voters.iter().filter(|p| p.loss > 0.005 || p.congested).count();
        if congested * 2 >= voters.len() && congested > 0 {
            if now >= self.hold_until {
                self.rate = (self.rate.min(achieved.max(MIN_RATE)) * 0.85).max(MIN_RATE);
                self.cut_once = true;
                self.hold_until = now + Duration::from_millis(600);
            }
        } else if lossy * 2 < voters.len() && achieved >= self.rate * 0.85 {
            let step = if self.cut_once { 1.03 } else { 1.15 };
            self.rate = (self.rate * step).min(self.cap);
        }
    }
}

struct Carousel<'a> {
    shared: &'a Shared,
    socket: &'a UdpSocket,
    options: &'a SendOptions,
    url: String,
    objects: u32,
    position: u32,
    seq: u32,
    pacer: Pacer,
    last_sent: Vec<Option<Instant>>,
    repaired: HashMap<(u32, u16), Instant>,
    cache: HashMap<u32, Arc<Vec<u8>>>,
    cache_order: VecDeque<u32>,
    cache_bytes: usize,
    packet: Vec<u8>,
    state: SessionState,
    report: SendReport,
    last_announce: Option<Instant>,
    last_adjust: Instant,
    /// Repair packets that may be sent now (see [`REPAIR_SHARE`]).
    repair_credit: f64,
}

impl<'a> Carousel<'a> {
    fn new(shared: &'a Shared, socket: &'a UdpSocket, options: &'a SendOptions, url: String, objects: u32) -> Self {
        let cap = options.rate.max(MIN_RATE as u64) as f64;
        Carousel {
            shared,
            socket,
            options,
            url,
            objects,
            position: 0,
            seq: 0,
            pacer: Pacer::new(cap),
            last_sent: vec![None; objects as usize],
            repaired: HashMap::new(),
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            cache_bytes: 0,
            packet: Vec::with_capacity(wire::MAX_PACKET),
            state: SessionState::Waiting,
            report: SendReport {
                image: shared.image.clone(),
                session: shared.session,
                objects,
                payload_bytes: 0,
                packets: 0,
                bytes_sent: 0,
                repairs: 0,
                objects_resent: 0,
                http_objects: 0,
                bad_reports: 0,
                wait_seconds: 0.0,
                send_seconds: 0.0,
                receivers: Vec::new(),
            },
            last_announce: None,
            last_adjust: Instant::now(),
            repair_credit: REPAIR_BURST,
        }
    }

    fn run(mut self) -> Result<SendReport> {
        let opened = Instant::now();
        self.wait_for_receivers()?;
        let started = Instant::now();
        self.report.wait_seconds = (started - opened).as_secs_f64();
        self.state = SessionState::Sending;
        tracing::info!(session = self.shared.session, "multicast: sending");
        loop {
            self.housekeeping()?;
            if self.finished() {
                break;
            }
            // Repairs take at most a quarter of the packets while the carousel has work, so one
            // lossy receiver cannot slow the others much; when it has none they go freely.
            let next = self.next_object();
            if (next.is_none() || self.repair_credit >= 1.0)
                && let Some((object, frag)) = self.next_repair()
            {
                self.send_fragment(object, frag, true)?;
                self.report.repairs += 1;
                self.repair_credit = (self.repair_credit - 1.0).max(0.0);
                continue;
            }
            match next {
                Some(object) => self.send_object(object)?,
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        self.report.send_seconds = started.elapsed().as_secs_f64();
        self.state = SessionState::Ended;
        for _ in 0..3 {
            self.announce()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        let session = self.shared.lock();
        self.report.bad_reports = session.bad_reports;
        self.report.http_objects = session.http_objects;
        self.report.receivers = session
            .peers
            .iter()
            .map(|(&receiver, p)| ReceiverSummary {
                receiver,
                mode: p.mode,
                done: p.done,
                lost: !p.done,
                placed: p.placed,
            })
            .collect();
        drop(session);
        Ok(self.report)
    }

    fn wait_for_receivers(&mut self) -> Result<()> {
        let opened = Instant::now();
        loop {
            self.announce_when_due()?;
            let session = self.shared.lock();
            let joined = session.peers.len();
            let first = session.first_join;
            drop(session);
            let abandoned = first.is_none() && self.options.give_up.is_some_and(|limit| opened.elapsed() >= limit);
            if joined >= self.options.receivers.max(1)
                || first.is_some_and(|t| t.elapsed() >= self.options.max_wait)
                || abandoned
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn housekeeping(&mut self) -> Result<()> {
        self.announce_when_due()?;
        if self.last_adjust.elapsed() >= Duration::from_millis(250) {
            self.last_adjust = Instant::now();
            let mut session = self.shared.lock();
            for peer in session.peers.values_mut() {
                let patience = if peer.reported {
                    FORGET_AFTER
                } else {
                    FIRST_REPORT_WITHIN
                };
                if !peer.done && !peer.forgotten && peer.last_heard.elapsed() > patience {
                    peer.forgotten = true;
                    tracing::warn!("multicast: a receiver stopped reporting; forgotten until it reports again");
                }
            }
            let before = self.pacer.rate;
            self.pacer.adjust(&session.peers);
            if (self.pacer.rate - before).abs() > f64::EPSILON {
                let loss: Vec<String> = session
                    .peers
                    .values()
                    .map(|p| format!("{:.3}{}", p.loss, if p.congested { "c" } else { "" }))
                    .collect();
                tracing::debug!(rate_mib = self.pacer.rate / 1048576.0, ?loss, "multicast: rate");
            }
        }
        Ok(())
    }

    /// Every receiver done or gone (or none ever came): joins are refused from now on.
    fn finished(&self) -> bool {
        let mut session = self.shared.lock();
        if session.peers.values().all(|p| !p.active()) {
            session.closed = true;
        }
        session.closed
    }

    fn announce_when_due(&mut self) -> Result<()> {
        if self
            .last_announce
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
        {
            self.announce()?;
        }
        Ok(())
    }

    /// The median of the recent loss of the receivers that hear the group, per mille, and
    /// how many they are.
    fn bulk_loss(&self) -> (u16, u16) {
        let session = self.shared.lock();
        let mut losses: Vec<f64> = session
            .peers
            .values()
            .filter(|p| p.active() && p.hears && p.mode != Mode::Http)
            .map(|p| p.recent_loss)
            .collect();
        drop(session);
        if losses.is_empty() {
            return (0, 0);
        }
        losses.sort_by(f64::total_cmp);
        let median = (losses[(losses.len() - 1) / 2] * 1000.0).round().clamp(0.0, 1000.0) as u16;
        (median, losses.len().min(usize::from(u16::MAX)) as u16)
    }

    fn announce(&mut self) -> Result<()> {
        self.last_announce = Some(Instant::now());
        let (bulk_loss_permille, bulk_receivers) = self.bulk_loss();
        let packet = Packet::Announce(Announce {
            state: self.state,
            objects: self.objects,
            position: self.position,
            rate_kib: (self.pacer.rate / 1024.0) as u32,
            bulk_loss_permille,
            bulk_receivers,
            url: self.url.clone(),
            image: self.shared.image.clone(),
        });
        wire::encode(self.shared.session, &self.shared.key, &packet, &mut self.packet);
        self.transmit()
    }

    fn transmit(&mut self) -> Result<()> {
        loop {
            match self.socket.send_to(&self.packet, self.shared.group) {
                Ok(_) => return Ok(()),
                // A full queue on the interface: wait for it as for the pacer.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    return Err(Error::Internal(format!("multicast send to {}: {e}", self.shared.group)));
                }
            }
        }
    }

    fn next_repair(&mut self) -> Option<(u32, u16)> {
        let mut session = self.shared.lock();
        while let Some(piece) = session.repairs.pop_front() {
            session.queued.remove(&piece);
            let recently = self
                .repaired
                .get(&piece)
                .is_some_and(|t| t.elapsed() < REPAIR_AGAIN_AFTER);
            if !recently {
                self.repaired.insert(piece, Instant::now());
                if self.repaired.len() > 1 << 16 {
                    self.repaired.retain(|_, t| t.elapsed() < REPAIR_AGAIN_AFTER);
                }
                return Some(piece);
            }
        }
        None
    }

    /// The next object from the position that an active receiver needs and that was not just
    /// sent, wrapping around.
    fn next_object(&mut self) -> Option<u32> {
        let session = self.shared.lock();
        let needs: Vec<&[(u32, u32)]> = session.peers.values().filter_map(Peer::carousel_needs).collect();
        if needs.is_empty() {
            return None;
        }
        let mut from = self.position;
        for _ in 0..4096 {
            let candidate = needs
                .iter()
                .filter_map(|ranges| first_at_or_after(ranges, from, self.objects))
                .min_by_key(|&k| (k + self.objects - from) % self.objects.max(1))?;
            let recently = self.last_sent[candidate as usize].is_some_and(|t| t.elapsed() < RESEND_AFTER);
            if !recently {
                return Some(candidate);
            }
            from = (candidate + 1) % self.objects;
            if from == self.position {
                return None;
            }
        }
        None
    }

    fn payload(&mut self, object: u32) -> Result<Arc<Vec<u8>>> {
        if let Some(p) = self.cache.get(&object) {
            return Ok(p.clone());
        }
        let payload = Arc::new(self.shared.plan.payload(self.shared.store.as_ref(), object as usize)?);
        self.cache_bytes += payload.len();
        self.cache.insert(object, payload.clone());
        self.cache_order.push_back(object);
        while self.cache_bytes > PAYLOAD_CACHE {
            let Some(old) = self.cache_order.pop_front() else { break };
            if let Some(p) = self.cache.remove(&old) {
                self.cache_bytes -= p.len();
            }
        }
        Ok(payload)
    }

    fn send_object(&mut self, object: u32) -> Result<()> {
        let payload = self.payload(object)?;
        let frags = payload.len().div_ceil(wire::FRAGMENT).max(1);
        let frags = u16::try_from(frags).map_err(|_| Error::Internal(format!("object {object} is too large")))?;
        if self.last_sent[object as usize].is_some() {
            self.report.objects_resent += 1;
        } else {
            self.report.payload_bytes += payload.len() as u64;
        }
        self.last_sent[object as usize] = Some(Instant::now());
        if let Some(f) = self.shared.frags.get(object as usize) {
            f.store(frags, Ordering::Relaxed);
        }
        for frag in 0..frags {
            self.send_piece(object, frag, frags, &payload, false)?;
        }
        self.position = (object + 1) % self.objects;
        Ok(())
    }

    fn send_fragment(&mut self, object: u32, frag: u16, repair: bool) -> Result<()> {
        let payload = self.payload(object)?;
        let frags = payload.len().div_ceil(wire::FRAGMENT).max(1) as u16;
        if frag < frags {
            self.send_piece(object, frag, frags, &payload, repair)?;
        }
        Ok(())
    }

    fn send_piece(&mut self, object: u32, frag: u16, frags: u16, payload: &[u8], repair: bool) -> Result<()> {
        let start = usize::from(frag) * wire::FRAGMENT;
        let piece = &payload[start.min(payload.len())..(start + wire::FRAGMENT).min(payload.len())];
        self.seq = self.seq.wrapping_add(1);
        let packet = Packet::Data(Data {
            seq: self.seq,
            object,
            frag,
            frags,
            repair,
            payload: piece,
        });
        wire::encode(self.shared.session, &self.shared.key, &packet, &mut self.packet);
        self.pacer.wait(self.packet.len() + 42);
        self.transmit()?;
        if !repair {
            self.repair_credit = (self.repair_credit + REPAIR_SHARE).min(REPAIR_BURST);
        }
        self.report.packets += 1;
        self.report.bytes_sent += self.packet.len() as u64;
        Ok(())
    }
}

/// The first object of `ranges` at or after `from`, else the first of all (wrapping).
fn first_at_or_after(ranges: &[(u32, u32)], from: u32, objects: u32) -> Option<u32> {
    let clip = |(a, b): (u32, u32)| (a.min(objects), b.min(objects));
    ranges
        .iter()
        .map(|&r| clip(r))
        .filter(|(a, b)| a < b)
        .find_map(|(a, b)| (b > from).then(|| a.max(from)))
        .or_else(|| ranges.iter().map(|&r| clip(r)).find(|(a, b)| a < b).map(|(a, _)| a))
}

/// The session's HTTP side on a runtime thread of its own.
struct HttpSide {
    addr: SocketAddr,
    cancel: tokio_util::sync::CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

impl HttpSide {
    fn start(shared: Arc<Shared>, listen: SocketAddr) -> Result<HttpSide> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("fog-multicast-http")
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the multicast HTTP runtime: {e}")))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .map_err(|e| Error::InvalidInput(format!("multicast http {listen}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
        let app = Router::new()
            .route("/multicast/join", post(join))
            .route("/multicast/manifest", get(manifest))
            .route("/multicast/object/{index}", get(object))
            .with_state(shared);
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("fog-multicast-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let serve =
                        axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
                    if let Err(e) = serve.await {
                        tracing::error!("multicast http: {e}");
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| Error::Internal(format!("cannot start the multicast HTTP thread: {e}")))?;
        Ok(HttpSide { addr, cancel, thread })
    }

    fn stop(self) {
        self.cancel.cancel();
        let _ = self.thread.join();
    }
}

async fn join(State(shared): State<Arc<Shared>>) -> Response {
    let mut session = shared.lock();
    if session.closed {
        return (StatusCode::GONE, "this multicast session is over").into_response();
    }
    let receiver = session.next_id;
    session.next_id += 1;
    session.first_join.get_or_insert_with(Instant::now);
    let objects = shared.plan.len() as u32;
    session.peers.insert(
        receiver,
        Peer {
            last_heard: Instant::now(),
            counter: 0,
            reported: false,
            needs: ranges((0..objects).map(|_| true)),
            loss: 0.0,
            recent_loss: 0.0,
            hears: false,
            congested: false,
            mode: Mode::Normal,
            done: false,
            forgotten: false,
            placed: 0,
        },
    );
    drop(session);
    tracing::info!(receiver, "multicast: a receiver joined");
    axum::Json(Joined {
        session: shared.session,
        key: shared.key_hex.clone(),
        receiver,
        image: shared.image.clone(),
        objects,
        group: shared.group,
        report: shared.report,
    })
    .into_response()
}

async fn manifest(State(shared): State<Arc<Shared>>) -> Response {
    shared.manifest.clone().into_response()
}

async fn object(State(shared): State<Arc<Shared>>, UrlPath(index): UrlPath<u32>) -> Response {
    let task = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || shared.plan.payload(shared.store.as_ref(), index as usize))
    };
    match task.await {
        Ok(Ok(payload)) => {
            shared.lock().http_objects += 1;
            payload.into_response()
        }
        Ok(Err(e)) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_needed_object_wraps_around() {
        let ranges = [(2, 4), (8, 9)];
        assert_eq!(first_at_or_after(&ranges, 0, 10), Some(2));
        assert_eq!(first_at_or_after(&ranges, 3, 10), Some(3));
        assert_eq!(first_at_or_after(&ranges, 4, 10), Some(8));
        assert_eq!(first_at_or_after(&ranges, 9, 10), Some(2));
        assert_eq!(first_at_or_after(&[(5, u32::MAX)], 7, 10), Some(7));
        assert_eq!(first_at_or_after(&[], 7, 10), None);
    }
}
