//! The agent: the program on the machine being imaged (`fog agent run`).
//!
//! [`run`] checks in with its master or node by MAC (each card in turn) and SMBIOS UUID, waits
//! for a slot (backing off, logging its place in line), runs the task over HTTP (deploy from the
//! store with chunks prefetched in batches, capture into it with puts batched and the manifest
//! last, or an inventory), reports progress every couple of seconds, checks out (complete, or
//! failed with the reason) and says what to do next (reboot, power off, stay), which
//! [`power_action`] carries out.

pub mod inventory;
pub mod target;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::control::client::Client;
use crate::control::model::{
    After, CheckIn, CheckOut, NewTask, ProgressReport, Registered, Registration, SlotState, Task, TaskKind,
    canonical_mac,
};
use crate::control::multicast::MulticastJoin;
use crate::control::remote::RemoteStore;
use crate::control::replicate::Throttled;
use crate::imaging::batch::{BatchSink, with_prefetch};
use crate::imaging::capture::{CaptureOptions, capture_to};
use crate::imaging::deploy::{DeployOptions, DeployReport, prepare};
use crate::imaging::manifest::ManifestWriter;
use crate::imaging::replica::{ImageStore, fetch_manifest, put_manifest_file};
use crate::imaging::wipe::{WipeMode, wipe};
use crate::net::multicast::{self, ReceiveOptions};
use crate::progress::Progress;
use crate::{Error, Result};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The master's (or node's) URL.
    pub master: String,
    /// Bearer token (a node's, usually).
    pub token: Option<String>,
    /// The target disk; overrides the rule below (a disk image file in tests).
    pub disk: Option<PathBuf>,
    /// The host's primary-disk rule (see [`target::choose`]).
    pub disk_rule: Option<String>,
    /// MACs to check in with; empty: the cards under `sys_root`.
    pub macs: Vec<String>,
    /// SMBIOS UUID; unset: read under `sys_root`.
    pub uuid: Option<String>,
    /// Where `/sys` is (fixtures in tests).
    pub sys_root: PathBuf,
    /// Where `/proc` is.
    pub proc_root: PathBuf,
    /// Return at once when no task waits, instead of asking again until one does.
    pub once: bool,
    /// First wait between check-ins; doubles up to `poll_max`.
    pub poll: Duration,
    /// Longest wait between check-ins.
    pub poll_max: Duration,
    /// Time between progress reports.
    pub report_every: Duration,
    /// Read the deployed data back and compare (every chunk is checked by hash anyway).
    pub verify: bool,
    /// Worker threads for capture and deploy (all cores when unset).
    pub threads: Option<usize>,
    /// Where a capture's manifest is written before it is sent (the system's temp dir when unset).
    pub work_dir: Option<PathBuf>,
    /// Bytes per second of chunks on the wire (none: as fast as it goes).
    pub bandwidth: Option<u64>,
    /// Create this task for the host first (needs an admin token): the boot menu's deploy and
    /// capture items, where the operator types a token at the console.
    pub request: Option<NewTask>,
}

impl AgentConfig {
    /// Defaults for the agent of the master at `master`.
    pub fn new(master: &str, token: Option<&str>) -> Self {
        AgentConfig {
            master: master.to_string(),
            token: token.map(str::to_string),
            disk: None,
            disk_rule: None,
            macs: Vec::new(),
            uuid: None,
            sys_root: PathBuf::from("/sys"),
            proc_root: PathBuf::from("/proc"),
            once: false,
            poll: Duration::from_secs(2),
            poll_max: Duration::from_secs(30),
            report_every: Duration::from_secs(2),
            verify: false,
            threads: None,
            work_dir: None,
            bandwidth: None,
            request: None,
        }
    }
}

/// What the agent did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentReport {
    /// The task run (none when `once` found nothing to do).
    pub task: Option<Task>,
    /// True when the task did what it should.
    pub ok: bool,
    /// Why not.
    pub reason: Option<String>,
    /// What to do now.
    pub after: Option<After>,
    /// Bytes of image data moved.
    pub bytes: u64,
    /// Wall time of the task, in seconds.
    pub seconds: f64,
}

/// Forwards to the caller's [`Progress`] and keeps what the reporter posts.
struct Tracker<'a> {
    user: &'a dyn Progress,
    total: AtomicU64,
    done: AtomicU64,
    moved: AtomicU64,
    phase_start: Mutex<Instant>,
    cancelled: AtomicBool,
}

impl Tracker<'_> {
    fn report(&self) -> ProgressReport {
        let (total, done) = (self.total.load(Ordering::Relaxed), self.done.load(Ordering::Relaxed));
        let elapsed = self.phase_start.lock().map_or(0.0, |s| s.elapsed().as_secs_f64());
        ProgressReport {
            percent: if total == 0 {
                0.0
            } else {
                (done as f64 * 100.0 / total as f64).min(100.0)
            },
            bytes: done,
            rate: if elapsed > 0.0 {
                (done as f64 / elapsed) as u64
            } else {
                0
            },
        }
    }
}

impl Progress for Tracker<'_> {
    fn start(&self, phase: &str, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        if let Ok(mut s) = self.phase_start.lock() {
            *s = Instant::now();
        }
        self.user.start(phase, total);
    }
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        self.moved.fetch_add(bytes, Ordering::Relaxed);
        self.user.advance(bytes);
    }
    fn finish(&self) {
        self.user.finish();
    }
    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.user.cancelled()
    }
}

fn runtime(master: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fog-agent")
        .enable_all()
        .build()
        .map_err(|e| Error::Http {
            url: master.to_string(),
            reason: format!("runtime: {e}"),
        })
}

/// The MACs of `config`, else of the cards under its `sys_root`; an error when there are none.
fn config_macs(config: &AgentConfig) -> Result<Vec<String>> {
    let macs = if config.macs.is_empty() {
        inventory::macs(&config.sys_root)
    } else {
        config.macs.clone()
    };
    if macs.is_empty() {
        return Err(Error::invalid("mac", "", "no network card found to check in with"));
    }
    Ok(macs)
}

/// Quick registration (the boot menu's "register" item): sends this machine's MACs, UUID and
/// inventory to the master, which creates its host or updates the known one. `name` is the name
/// wanted (default: the master picks one from the DMI serial or the MAC).
pub fn register(config: &AgentConfig, name: Option<&str>) -> Result<Registered> {
    let runtime = runtime(&config.master)?;
    let client = Client::new(&config.master, config.token.as_deref())?;
    let macs = config_macs(config)?;
    let found = inventory::collect(&config.sys_root, &config.proc_root);
    let uuid = config.uuid.clone().or_else(|| found.dmi.uuid.clone());
    let reg = Registration {
        macs,
        uuid,
        name: name.map(str::to_string),
        inventory: serde_json::to_value(&found).map_err(|e| Error::Internal(format!("inventory as JSON: {e}")))?,
    };
    runtime.block_on(client.register(&reg))
}

/// Creates `new` for the host with one of `macs` (admin token): the host is looked up by MAC.
async fn request_task(client: &Client, macs: &[String], new: &NewTask) -> Result<Task> {
    let macs: Vec<String> = macs.iter().filter_map(|m| canonical_mac(m).ok()).collect();
    let hosts = client.hosts().await?;
    let host = hosts
        .iter()
        .find(|h| h.macs.iter().any(|m| macs.contains(m)))
        .ok_or_else(|| Error::not_found("host with mac", format!("{} (register it first)", macs.join(", "))))?;
    let mut new = new.clone();
    new.host = Some(host.name.clone());
    let task = client.create_task(&new).await?;
    tracing::info!("task {} ({}) created for {}", task.id, task.kind.as_str(), host.name);
    Ok(task)
}

/// Checks in, waits for a slot, runs the task, reports, checks out. Blocking: call it from a
/// plain thread, not from async code.
pub fn run(config: &AgentConfig, progress: &dyn Progress) -> Result<AgentReport> {
    let runtime = runtime(&config.master)?;
    let client = Client::new(&config.master, config.token.as_deref())?;
    let macs = config_macs(config)?;
    if let Some(new) = &config.request {
        runtime.block_on(request_task(&client, &macs, new))?;
    }
    let uuid = config.uuid.clone().or_else(|| inventory::dmi(&config.sys_root).uuid);

    // Check in until a task holds a slot.
    let mut wait = config.poll;
    let mut last_place = None;
    let task = loop {
        let mut reply = None;
        let mut last_err = None;
        for mac in &macs {
            let check_in = CheckIn {
                mac: mac.clone(),
                uuid: uuid.clone(),
                address: None,
            };
            match runtime.block_on(client.check_in(&check_in)) {
                Ok(r) => {
                    reply = Some(r);
                    break;
                }
                Err(Error::Remote { status: 404, .. }) => {}
                Err(e) if e.is_transient() && !config.once => {
                    tracing::warn!("check-in as {mac}: {e}; trying again");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        match reply {
            Some(r) => match r.slot {
                SlotState::Granted => break r.task,
                SlotState::Waiting { place, active, max } => {
                    if last_place != Some(place) {
                        tracing::info!(
                            "task {} ({}): place {place} in line, {active} of {max} slots busy",
                            r.task.id,
                            r.task.kind.as_str()
                        );
                        last_place = Some(place);
                    }
                }
            },
            None if config.once && last_err.is_none() => {
                tracing::info!("no task for {}", macs.join(", "));
                return Ok(AgentReport {
                    task: None,
                    ok: true,
                    reason: None,
                    after: None,
                    bytes: 0,
                    seconds: 0.0,
                });
            }
            None => {}
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(config.poll_max);
    };
    tracing::info!("task {} ({}) started", task.id, task.kind.as_str());

    let inventory = inventory::collect(&config.sys_root, &config.proc_root);
    let tracker = Tracker {
        user: progress,
        total: AtomicU64::new(0),
        done: AtomicU64::new(0),
        moved: AtomicU64::new(0),
        phase_start: Mutex::new(Instant::now()),
        cancelled: AtomicBool::new(false),
    };
    let started = Instant::now();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let result = std::thread::scope(|scope| {
        let (runtime, client, tracker, task) = (&runtime, &client, &tracker, &task);
        let reporter = scope.spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(config.report_every) {
                match runtime.block_on(client.progress(task.id, &tracker.report())) {
                    Ok(_) => {}
                    Err(Error::Remote { status: 409, .. }) => {
                        tracing::warn!("task {} is no longer running here: stopping", task.id);
                        tracker.cancelled.store(true, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!("progress report: {e}"),
                }
            }
        });
        let result = run_task(config, task, tracker);
        let _ = stop_tx.send(());
        let _ = reporter.join();
        result
    });
    let seconds = started.elapsed().as_secs_f64();
    let bytes = tracker.moved.load(Ordering::Relaxed);

    let (ok, reason) = match &result {
        Ok(()) => {
            let last = ProgressReport {
                percent: 100.0,
                bytes,
                rate: if seconds > 0.0 {
                    (bytes as f64 / seconds) as u64
                } else {
                    0
                },
            };
            if let Err(e) = runtime.block_on(client.progress(task.id, &last)) {
                tracing::warn!("progress report: {e}");
            }
            (true, None)
        }
        Err(e) => (false, Some(e.to_string())),
    };
    let out = CheckOut {
        ok,
        reason: reason.clone(),
        inventory: serde_json::to_value(&inventory).ok(),
        ..CheckOut::default()
    };
    let mut wait = config.poll;
    let mut tries = 0;
    let task = loop {
        match runtime.block_on(client.check_out(task.id, &out)) {
            Ok(task) => break task,
            Err(e) if e.is_transient() && tries < 10 => {
                tracing::warn!("check-out: {e}; trying again");
                tries += 1;
                std::thread::sleep(wait);
                wait = (wait * 2).min(config.poll_max);
            }
            Err(e) => return Err(e),
        }
    };
    match &reason {
        None => tracing::info!("task {} complete: {bytes} bytes in {seconds:.1} s", task.id),
        Some(r) => tracing::warn!("task {} failed: {r}", task.id),
    }
    Ok(AgentReport {
        after: Some(task.after),
        task: Some(task),
        ok,
        reason,
        bytes,
        seconds,
    })
}

fn target_disk(config: &AgentConfig) -> Result<PathBuf> {
    match &config.disk {
        Some(disk) => Ok(disk.clone()),
        None => target::choose(&config.sys_root, config.disk_rule.as_deref()),
    }
}

fn task_image(task: &Task) -> Result<&str> {
    task.image
        .as_deref()
        .ok_or_else(|| Error::invalid("task image", task.id.to_string(), "the task names no image"))
}

fn remote_store(config: &AgentConfig) -> Result<Box<dyn ImageStore>> {
    let store = RemoteStore::new(&config.master, config.token.as_deref())?;
    Ok(match config.bandwidth {
        Some(rate) => Box::new(Throttled::new(store, rate)),
        None => Box::new(store),
    })
}

fn run_task(config: &AgentConfig, task: &Task, progress: &dyn Progress) -> Result<()> {
    match task.kind {
        TaskKind::Deploy => {
            let image = task_image(task)?;
            let disk = target_disk(config)?;
            let options = deploy_options(config, task);
            deploy_remote(&*remote_store(config)?, image, &disk, config, &options, progress)
        }
        TaskKind::Capture => {
            let image = task_image(task)?;
            let disk = target_disk(config)?;
            capture_remote(&*remote_store(config)?, image, &disk, config, progress)
        }
        TaskKind::Multicast => {
            let image = task_image(task)?;
            let disk = target_disk(config)?;
            let options = deploy_options(config, task);
            let join = runtime(&config.master)?.block_on(async {
                Client::new(&config.master, config.token.as_deref())?
                    .multicast_join(task.id)
                    .await
            });
            match join {
                Ok(join) => match receive_multicast(config, &join, &disk, options.clone(), progress) {
                    // The disk is written again whole: what the session wrote is overwritten.
                    Err(e) if !matches!(e, Error::Cancelled) && !e.is_bad_input() => {
                        tracing::warn!(
                            "task {}: the multicast session failed ({e}); deploying over HTTP",
                            task.id
                        );
                        deploy_remote(&*remote_store(config)?, image, &disk, config, &options, progress)
                    }
                    other => other,
                },
                // A node without multicast (or that does not know the route): one stream each.
                Err(Error::Remote {
                    status: 404 | 409,
                    message,
                    ..
                }) => {
                    tracing::warn!(
                        "task {}: no multicast session ({message}); deploying over HTTP",
                        task.id
                    );
                    deploy_remote(&*remote_store(config)?, image, &disk, config, &options, progress)
                }
                Err(e) => Err(e),
            }
        }
        TaskKind::Inventory => Ok(()), // the inventory goes with the check-out
        TaskKind::WipeFast | TaskKind::WipeFull => {
            let mode = if task.kind == TaskKind::WipeFull {
                WipeMode::Full
            } else {
                WipeMode::Fast
            };
            let report = wipe(&target_disk(config)?, mode, progress)?;
            tracing::info!(
                "wiped {} ({:?}): {} bytes of zeros, {} partitions",
                report.target,
                mode,
                report.bytes_written,
                report.partitions
            );
            Ok(())
        }
        other => Err(Error::invalid(
            "task kind",
            other.as_str(),
            "this agent does not run it yet",
        )),
    }
}

/// Deploys from the multicast session `join`, heard on the interface that faces the node.
fn receive_multicast(
    config: &AgentConfig,
    join: &MulticastJoin,
    disk: &Path,
    options: DeployOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let interface = local_address_toward(&join.sender)?;
    let receive = ReceiveOptions {
        interface: interface.to_string(),
        group: SocketAddrV4::new(join.group, join.port),
        sender: Some(join.sender.clone()),
        session: None,
        only_from: None,
        wait: Duration::from_secs(600),
        work_dir: Some(work_dir(config)),
        deploy: options,
    };
    let report = multicast::receive(disk, &receive, progress)?;
    tracing::info!(
        "multicast: {} objects ({} from the group, {} over HTTP, mode {:?}), {} NAKs, {} bad packets; {:.1} s",
        report.objects,
        report.from_multicast,
        report.from_http,
        report.mode,
        report.naks,
        report.bad_packets,
        report.deploy.seconds
    );
    log_deploy(&report.deploy);
    Ok(())
}

/// The local IPv4 address a packet to `url`'s host leaves from (no packet is sent).
fn local_address_toward(url: &str) -> Result<Ipv4Addr> {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let bad = |reason: String| Error::invalid("multicast sender", url, reason);
    let target = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| bad(e.to_string()))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| bad("no IPv4 address".into()))?;
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| bad(e.to_string()))?;
    probe.connect(target).map_err(|e| bad(e.to_string()))?;
    match probe.local_addr().map_err(|e| bad(e.to_string()))? {
        SocketAddr::V4(local) => Ok(*local.ip()),
        SocketAddr::V6(_) => Err(bad("not reached over IPv4".into())),
    }
}

/// Where the agent keeps a manifest while it captures or deploys (`work_dir`, else the system's
/// temporary directory).
fn work_dir(config: &AgentConfig) -> std::path::PathBuf {
    config.work_dir.clone().unwrap_or_else(std::env::temp_dir)
}

/// How the agent deploys `task`: verify and threads from its config, the layout the task
/// settled on.
pub fn deploy_options(config: &AgentConfig, task: &Task) -> DeployOptions {
    DeployOptions {
        verify: config.verify,
        threads: config.threads,
        layout: task.deploy_layout(),
    }
}

/// Deploys `image` from `store` to `disk` with `options`, chunks prefetched in manifest order;
/// the manifest is spooled to the config's work directory.
pub fn deploy_remote(
    store: &dyn ImageStore,
    image: &str,
    disk: &Path,
    config: &AgentConfig,
    options: &DeployOptions,
    progress: &dyn Progress,
) -> Result<()> {
    // Spooled to the work directory and read from there: never whole in memory.
    let spooled = fetch_manifest(store, image, &work_dir(config))?;
    let manifest = &spooled.manifest;
    let deploy = prepare(manifest, disk, options)?;
    let regions = deploy.regions();
    let report = with_prefetch(store, manifest, &regions, |source| deploy.run(source, progress))?;
    log_deploy(&report);
    Ok(())
}

/// Logs where a deploy put partitions of another size, and the filesystem tools' time.
fn log_deploy(report: &DeployReport) {
    let image = &report.name;
    for p in report
        .partitions
        .iter()
        .filter(|p| p.offset != p.source_offset || p.len != p.source_len)
    {
        tracing::info!(
            "deploy {image}: layout {}, partition {} ({}) {} -> {} bytes at {}{}",
            report.layout,
            p.number,
            p.filesystem,
            p.source_len,
            p.len,
            p.offset,
            p.resize.map(|r| format!(", {}", r.tool())).unwrap_or_default()
        );
    }
    if report.partitions.iter().any(|p| p.resize.is_some()) {
        tracing::info!("deploy {image}: filesystem tools took {:.1}s", report.resize_seconds);
    }
}

/// Captures `disk` into `store` as `image`: chunks the store holds are not sent, the rest go in
/// batches, the manifest last (so the image is complete or absent).
pub fn capture_remote(
    store: &dyn ImageStore,
    image: &str,
    disk: &Path,
    config: &AgentConfig,
    progress: &dyn Progress,
) -> Result<()> {
    let sink = BatchSink::new(store);
    let work = work_dir(config);
    let known = sink.seed_from_image(image, &work)?;
    tracing::debug!("{known} chunks of the previous {image} are in the store");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = work.join(format!("fog-agent-{}-{nanos:x}.manifest", std::process::id()));
    let result = (|| {
        let writer = ManifestWriter::create(&path)?;
        let options = CaptureOptions {
            threads: config.threads,
            // The node works the minimum sizes out when it receives the image.
            ..CaptureOptions::default()
        };
        capture_to(&sink, writer, disk, image, &options, progress)?;
        sink.flush()?;
        put_manifest_file(store, image, &path)
    })();
    let _ = std::fs::remove_file(&path);
    let stats = sink.stats();
    tracing::info!(
        "capture {image}: {} chunks sent ({} bytes), {} already in the store",
        stats.chunks_sent,
        stats.bytes_sent,
        stats.chunks_present + known as u64
    );
    result
}

/// Reboots or powers off the machine (after sync), or does nothing for [`After::Stay`].
pub fn power_action(after: After) -> Result<()> {
    let command = match after {
        After::Stay => return Ok(()),
        After::Reboot => "reboot",
        After::Poweroff => "poweroff",
    };
    let status = std::process::Command::new(command)
        .status()
        .map_err(|e| Error::io(command, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!("{command} exited with {status}")))
    }
}
