//! The node's side of its agents: the agent API (`/api/v1/checkin`, progress, check-out) and a
//! chunk store (`/api/v1/store/...`) served by the node itself, so an agent talks only to the
//! node of its subnet and keeps working when the master is away.
//!
//! - Check-ins, progress and check-outs go on to the master with the node's token. When the
//!   master cannot be reached, the node answers from the tasks it last pulled: it grants slots up
//!   to its own limit, takes progress without passing it on, and keeps check-outs in an
//!   [`Outbox`] on disk, which [`Gateway::flush`] sends once the master answers again (as
//!   `offline` check-outs: the outcome stands whatever state the master last knew). A check-out
//!   sent twice (its reply lost) changes nothing the second time.
//! - The store is the node's own in front of the master's ([`ReadThrough`]): deploys read local
//!   chunks and fetch (and keep) the rest; captures land here, and a capture's check-out waits in
//!   the outbox until the image has been pushed to the master, so the master shows a capture
//!   complete only when it holds the image.
//! - Agents present the node token or their task's token (`fogt_…`, derived from the node token:
//!   the node checks it without the master). Quick registration (`/api/v1/register`) needs no
//!   token: the boot menu's items carry none, and the node forwards it with its own. Any other
//!   token, and any other `/api/v1` path, is passed to the master as it came (the menu's deploy
//!   and capture items run with an admin token typed at the console): the master decides.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::control::api::{API, ApiError, Body, Caller, bearer_token, constant_time_eq, no_token};
use crate::control::bootmenu::NodeTasks;
use crate::control::chunks::{self, HasStore};
use crate::control::client::Client;
use crate::control::model::{
    CheckIn, CheckInReply, CheckOut, CopyReport, CopyState, ProgressReport, Registration, SlotState, Task, TaskId,
    TaskKind, TaskState, canonical_mac,
};
use crate::control::multicast::{MulticastJoin, Sessions};
use crate::control::remote::RemoteStore;
use crate::control::replicate::{REPORT_EVERY, ReplicateOptions, replicate};
use crate::control::tokens::{TASK_TOKEN_PREFIX, task_token};
use crate::error::{Error, Result};
use crate::imaging::replica::{ImageStore, LocalStore, ReadThrough};
use crate::imaging::store::Store;
use crate::net::config::MulticastConfig;
use crate::net::tls::Trust;
use crate::progress::NoProgress;

/// How long the node waits for the master on an agent's behalf before answering from its cache.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

/// A check-out the master has not taken yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The task.
    pub task: TaskId,
    /// What the agent said.
    pub out: CheckOut,
    /// An image captured here that must reach the master first.
    #[serde(default)]
    pub push: Option<String>,
}

/// Check-outs waiting for the master, kept in a file (written whole, synced, renamed) so a node
/// restart loses none.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    entries: Mutex<Vec<Pending>>,
}

impl Outbox {
    /// The outbox kept at `path` (read back if it exists).
    pub fn open(path: &Path) -> Result<Outbox> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid("node outbox", path.display().to_string(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        Ok(Outbox {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
        })
    }

    /// What waits, oldest first.
    pub fn pending(&self) -> Vec<Pending> {
        self.lock().clone()
    }

    /// Adds (or replaces) the check-out of a task, durably before it returns.
    pub fn add(&self, pending: Pending) -> Result<()> {
        let mut entries = self.lock();
        entries.retain(|p| p.task != pending.task);
        entries.push(pending);
        self.save(&entries)
    }

    /// Drops the check-out of a task (the master took it, or refused it for good).
    pub fn remove(&self, task: TaskId) -> Result<()> {
        let mut entries = self.lock();
        entries.retain(|p| p.task != task);
        self.save(&entries)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save(&self, entries: &[Pending]) -> Result<()> {
        let text = serde_json::to_vec_pretty(entries)
            .map_err(|e| Error::Internal(format!("node outbox: cannot encode: {e}")))?;
        crate::fsutil::write_durably(&self.path, &text)
    }
}

/// The node's agent API and store.
pub struct Gateway {
    node: String,
    node_token: String,
    master: Client,
    tasks: Arc<NodeTasks>,
    local: Arc<dyn ImageStore>,
    store: Arc<dyn ImageStore>,
    upstream: Arc<dyn ImageStore>,
    outbox: Outbox,
    /// Where replication spools manifests (`node/spool` in the data directory: on disk, where
    /// the system's temporary directory may be memory).
    spool: std::path::PathBuf,
    /// Tasks holding one of this node's slots (granted, not checked out), as granted.
    active: Mutex<HashMap<TaskId, Task>>,
    /// Of those, the ones this node granted while the master was away: the master does not know
    /// they run, so their progress is not its business and their check-out is a reconciliation.
    granted_offline: Mutex<HashSet<TaskId>>,
    /// The node's multicast sessions, when `[multicast]` is configured.
    multicast: std::sync::OnceLock<Arc<Sessions>>,
    /// The node's slot limit as the master last said (used while it is away).
    max_clients: AtomicU32,
    /// One flush at a time.
    flushing: tokio::sync::Mutex<()>,
    /// The master's base URL and a plain HTTP client, for requests passed through as they came.
    master_url: String,
    passthrough: reqwest::Client,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("node", &self.node).finish()
    }
}

impl Gateway {
    /// The gateway of node `node` (its state under `data_dir`: `store/`, `node/outbox.json`,
    /// `node/spool/`); each job of its store keeps within `store_memory_mib`.
    pub fn open(
        data_dir: &Path,
        store_memory_mib: u64,
        master_url: &str,
        node: &str,
        node_token: &str,
        trust: &Trust,
        tasks: Arc<NodeTasks>,
    ) -> Result<Gateway> {
        let store = Store::open(data_dir.join("store"))?.with_memory_mib(store_memory_mib);
        let local: Arc<dyn ImageStore> = Arc::new(LocalStore::new(store));
        let upstream: Arc<dyn ImageStore> = Arc::new(RemoteStore::with_trust(master_url, Some(node_token), trust)?);
        let store = Arc::new(ReadThrough {
            local: local.clone(),
            upstream: upstream.clone(),
        });
        Ok(Gateway {
            node: node.to_string(),
            node_token: node_token.to_string(),
            master: Client::with_trust(master_url, Some(node_token), trust)?,
            tasks,
            local,
            store,
            upstream,
            outbox: Outbox::open(&data_dir.join("node").join("outbox.json"))?,
            spool: data_dir.join("node").join("spool"),
            active: Mutex::new(HashMap::new()),
            granted_offline: Mutex::new(HashSet::new()),
            multicast: std::sync::OnceLock::new(),
            max_clients: AtomicU32::new(u32::MAX),
            flushing: tokio::sync::Mutex::new(()),
            master_url: master_url.trim_end_matches('/').to_string(),
            passthrough: trust
                .client_builder()?
                .timeout(Duration::from_secs(300))
                .build()
                .map_err(|e| Error::Http {
                    url: master_url.to_string(),
                    reason: e.to_string(),
                })?,
        })
    }

    /// Serves multicast tasks with sessions as `config` says (from the node's store, which
    /// fetches what it lacks from the master).
    pub fn enable_multicast(&self, config: MulticastConfig) {
        let _ = self.multicast.set(Arc::new(Sessions::new(config, self.store.clone())));
    }

    /// Where the agent of multicast task `id` joins its session (opened now when none runs for
    /// its image). Only the task's own token (or the node's) may ask. Without `[multicast]` the
    /// answer is a 409 and the agent deploys over HTTP.
    pub async fn multicast_join(&self, caller: &Caller, id: TaskId) -> Result<MulticastJoin> {
        match caller {
            Caller::Task { task, .. } if *task == id => {}
            Caller::Node(_) => {}
            _ => return Err(Error::Forbidden(format!("this token is not task {id}'s"))),
        }
        let task = self.cached_task(id)?;
        if task.kind != TaskKind::Multicast {
            return Err(Error::conflict(
                "task",
                id.to_string(),
                format!("a {} task joins no multicast session", task.kind.as_str()),
            ));
        }
        let image = task
            .image
            .clone()
            .ok_or_else(|| Error::conflict("task", id.to_string(), "it names no image"))?;
        let sessions =
            self.multicast.get().cloned().ok_or_else(|| {
                Error::conflict("node", &self.node, "it has no [multicast] interface: deploy over HTTP")
            })?;
        // Every host here with a multicast task of this image is waited for (up to the
        // session's longest wait).
        let receivers = self
            .tasks
            .count(|t| t.kind == TaskKind::Multicast && t.image.as_deref() == Some(image.as_str()));
        tokio::task::spawn_blocking(move || sessions.join(&image, receivers))
            .await
            .map_err(|e| Error::Internal(format!("multicast join: {e}")))?
    }

    /// The node's own store.
    pub fn local_store(&self) -> Arc<dyn ImageStore> {
        self.local.clone()
    }

    /// The master's store, seen with the node's token.
    pub fn upstream_store(&self) -> Arc<dyn ImageStore> {
        self.upstream.clone()
    }

    /// Options for this node's replications: manifests spooled in its data directory.
    pub fn replicate_options(&self) -> ReplicateOptions {
        ReplicateOptions {
            work_dir: Some(self.spool.clone()),
            ..ReplicateOptions::default()
        }
    }

    /// Check-outs waiting for the master.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Agents imaging through this node now.
    pub fn active(&self) -> u32 {
        u32::try_from(self.lock_active().len()).unwrap_or(u32::MAX)
    }

    /// The slot limit the master last gave, if it has.
    pub fn max_clients(&self) -> Option<u32> {
        Some(self.max_clients.load(Ordering::Relaxed)).filter(|&m| m != u32::MAX)
    }

    /// The slot limit the master gave (from its heartbeat reply).
    pub fn set_max_clients(&self, max: u32) {
        self.max_clients.store(max, Ordering::Relaxed);
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Task>> {
        self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node for its own token, the task for a task token of this node, else none.
    fn caller_of(&self, token: &str) -> Option<Caller> {
        if constant_time_eq(token.as_bytes(), self.node_token.as_bytes()) {
            return Some(Caller::Node(self.node.clone()));
        }
        let id = token
            .strip_prefix(TASK_TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(id, _)| id.parse::<TaskId>().ok())?;
        constant_time_eq(
            token.as_bytes(),
            task_token(&self.node_token, &self.node, id).as_bytes(),
        )
        .then(|| Caller::Task {
            node: self.node.clone(),
            task: id,
        })
    }

    async fn forward<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::Http {
                url: "master".into(),
                reason: format!("no answer within {} s", FORWARD_TIMEOUT.as_secs()),
            }),
        }
    }

    /// An agent checks in: the master decides; without a master, the node's cache and limit do.
    pub async fn check_in(&self, check_in: &CheckIn) -> Result<CheckInReply> {
        match self.forward(self.master.check_in(check_in)).await {
            Ok(reply) => {
                if reply.slot == SlotState::Granted {
                    self.lock_active().insert(reply.task.id, reply.task.clone());
                }
                Ok(reply)
            }
            Err(e) if e.is_transient() => {
                tracing::info!(mac = %check_in.mac, "node: master unreachable ({e}); checking in from the cache");
                self.check_in_offline(check_in)
            }
            Err(e) => Err(e),
        }
    }

    fn check_in_offline(&self, check_in: &CheckIn) -> Result<CheckInReply> {
        let mac = crate::net::http::parse_mac(&canonical_mac(&check_in.mac)?)
            .ok_or_else(|| Error::invalid("mac", &check_in.mac, "not a MAC address"))?;
        let boot = self
            .tasks
            .get(mac)
            .ok_or_else(|| Error::not_found("task for host with MAC", &check_in.mac))?;
        let mut task = boot.task;
        let max = self.max_clients.load(Ordering::Relaxed);
        let mut active = self.lock_active();
        // Multicast tasks take no slot, and do not count against the others.
        let rides = task.kind == TaskKind::Multicast;
        let holding = active.values().filter(|t| t.kind != TaskKind::Multicast).count();
        let slot = if rides || active.contains_key(&task.id) || (holding as u64) < u64::from(max) {
            active.insert(task.id, task.clone());
            self.offline_set().insert(task.id);
            task.state = TaskState::InProgress {
                percent: 0.0,
                bytes: 0,
                rate: 0,
            };
            SlotState::Granted
        } else {
            task.state = TaskState::WaitingForSlot;
            SlotState::Waiting {
                place: 1,
                active: u32::try_from(active.len()).unwrap_or(u32::MAX),
                max,
            }
        };
        Ok(CheckInReply { task, slot })
    }

    /// The task as this node last knew it (for answers given without the master): as granted
    /// here, else from the last pull (a task may start before the next pull brings it).
    fn cached_task(&self, id: TaskId) -> Result<Task> {
        if let Some(task) = self.lock_active().get(&id) {
            return Ok(task.clone());
        }
        self.tasks
            .by_id(id)
            .map(|b| b.task)
            .ok_or_else(|| Error::not_found("task", id.to_string()))
    }

    fn offline_set(&self) -> std::sync::MutexGuard<'_, HashSet<TaskId>> {
        self.granted_offline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An agent's progress: passed on, or taken quietly while the master is away (or does not
    /// know the task runs, having been away when this node granted it).
    pub async fn progress(&self, id: TaskId, report: &ProgressReport) -> Result<Task> {
        let offline = self.offline_set().contains(&id);
        match self.forward(self.master.progress(id, report)).await {
            Err(e) if e.is_transient() || (offline && matches!(e, Error::Remote { status: 409, .. })) => {
                let mut task = self.cached_task(id)?;
                task.state = TaskState::InProgress {
                    percent: report.percent,
                    bytes: report.bytes,
                    rate: report.rate,
                };
                Ok(task)
            }
            other => other,
        }
    }

    /// An agent's check-out. A successful capture is queued behind the push of its image; any
    /// check-out the master cannot take now is queued. The agent's answer says what it said.
    pub async fn check_out(self: &Arc<Self>, id: TaskId, out: &CheckOut) -> Result<Task> {
        let cached = self.cached_task(id).ok();
        let push = match &cached {
            Some(t) if t.kind == TaskKind::Capture && out.ok => t.image.clone(),
            _ => None,
        };
        let offline = self.offline_set().remove(&id);
        if push.is_none() && !offline {
            match self.forward(self.master.check_out(id, out)).await {
                Ok(task) => {
                    self.lock_active().remove(&id);
                    return Ok(task);
                }
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => tracing::info!(task = id, "node: master unreachable ({e}); the check-out waits"),
            }
        }
        let mut task = cached.ok_or_else(|| Error::not_found("task", id.to_string()))?;
        self.outbox.add(Pending {
            task: id,
            out: out.clone(),
            push,
        })?;
        self.lock_active().remove(&id);
        task.state = if out.ok {
            TaskState::Complete
        } else {
            TaskState::Failed {
                reason: out.reason.clone().unwrap_or_default(),
            }
        };
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.flush().await {
                tracing::debug!("node: outbox: {e}");
            }
        });
        Ok(task)
    }

    /// Sends what waits in the outbox, oldest first: pushes captured images, then the
    /// check-outs. Stops at the first failure worth trying again (the master away); drops a
    /// check-out the master refuses for good, saying why. Returns how many were delivered.
    pub async fn flush(&self) -> Result<usize> {
        let _one = self.flushing.lock().await;
        let mut delivered = 0;
        for pending in self.outbox.pending() {
            if let Some(image) = &pending.push {
                self.push(pending.task, image).await?;
            }
            let out = CheckOut {
                offline: true,
                ..pending.out.clone()
            };
            match self.forward(self.master.check_out(pending.task, &out)).await {
                Ok(task) => {
                    tracing::info!(task = task.id, state = task.state.name(), "node: check-out delivered");
                    delivered += 1;
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => tracing::warn!(task = pending.task, "node: the master refused a queued check-out: {e}"),
            }
            self.outbox.remove(pending.task)?;
        }
        Ok(delivered)
    }

    /// Copies a captured image to the master, telling it the task is alive meanwhile, and marks
    /// this node's copy complete.
    async fn push(&self, task: TaskId, image: &str) -> Result<()> {
        let (local, upstream, name) = (self.local.clone(), self.upstream.clone(), image.to_string());
        let options = self.replicate_options();
        let mut job = tokio::task::spawn_blocking(move || replicate(&*local, &*upstream, &name, &options, &NoProgress));
        let report = loop {
            tokio::select! {
                r = &mut job => break r.map_err(|e| Error::Internal(format!("push worker: {e}")))??,
                () = tokio::time::sleep(REPORT_EVERY * 15) => {
                    // The agent is gone: keep its slot from being taken for silent.
                    let alive = ProgressReport { percent: 100.0, bytes: 0, rate: 0 };
                    let _ = self.forward(self.master.progress(task, &alive)).await;
                }
            }
        };
        tracing::info!(
            image,
            chunks = report.chunks_sent,
            bytes = report.bytes_sent,
            "node: capture pushed to the master"
        );
        let complete = CopyReport {
            state: CopyState::Complete,
            bytes: report.bytes_considered,
            reason: None,
        };
        match self.master.set_copy_state(image, &self.node, &complete).await {
            Ok(()) | Err(Error::Remote { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The routes agents use: check-in, progress, check-out and the store, behind the token check.
    pub fn router(self: &Arc<Self>) -> Router {
        let guard = middleware::from_fn_with_state(self.clone(), authorize);
        let agent = Router::new()
            .route(&format!("{API}/register"), post(register_route))
            .route(&format!("{API}/{{*rest}}"), any(pass_through))
            .route(&format!("{API}/checkin"), post(check_in_route))
            .route(&format!("{API}/tasks/{{id}}/progress"), post(progress_route))
            .route(&format!("{API}/tasks/{{id}}/checkout"), post(check_out_route))
            .route(&format!("{API}/tasks/{{id}}/multicast"), post(multicast_route))
            .route_layer(guard.clone())
            .with_state(self.clone());
        let mut store = Router::new();
        for (route, method_router) in chunks::table::<NodeStore>() {
            store = store.route(&route.path, method_router.route_layer(guard.clone()));
        }
        agent.merge(store.with_state(NodeStore(self.store.clone())))
    }
}

/// The node's store as the chunk routes serve it.
#[derive(Clone)]
struct NodeStore(Arc<dyn ImageStore>);

impl HasStore for NodeStore {
    fn image_store(&self) -> Result<Arc<dyn ImageStore>> {
        Ok(self.0.clone())
    }
}

/// The gateway's token check: this node's tokens are served here; any other token (an admin's,
/// or nobody's) goes to the master, which answers; quick registration may come without one.
async fn authorize(State(gateway): State<Arc<Gateway>>, mut req: Request, next: Next) -> Response {
    let caller = match bearer_token(req.headers()) {
        None if req.uri().path() == format!("{API}/register") => return next.run(req).await,
        None => return ApiError(no_token()).into_response(),
        Some(token) => gateway.caller_of(token),
    };
    match caller {
        Some(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => gateway.pass(req).await,
    }
}

impl Gateway {
    /// Sends `req` to the master as it came (method, path, query, token, body) and its answer back.
    async fn pass(&self, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}{path}", self.master_url);
        let bytes = match axum::body::to_bytes(body, chunks::MAX_BODY).await {
            Ok(b) => b,
            Err(e) => return ApiError(Error::invalid("request body", path, e.to_string())).into_response(),
        };
        let mut out = self.passthrough.request(parts.method.clone(), &url).body(bytes);
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
            if let Some(v) = parts.headers.get(&name) {
                out = out.header(name, v);
            }
        }
        let failed = |e: reqwest::Error| {
            ApiError(Error::Http {
                url: url.clone(),
                reason: e.to_string(),
            })
            .into_response()
        };
        let answer = match out.send().await {
            Ok(a) => a,
            Err(e) => return failed(e),
        };
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        match answer.bytes().await {
            Ok(body) => {
                let mut response = (status, body).into_response();
                if let Some(ct) = content_type {
                    response.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                response
            }
            Err(e) => failed(e),
        }
    }
}

async fn pass_through(State(g): State<Arc<Gateway>>, req: Request) -> Response {
    g.pass(req).await
}

async fn register_route(State(g): State<Arc<Gateway>>, Body(reg): Body<Registration>) -> Response {
    answer(g.forward(g.master.register(&reg)).await)
}

/// The master's refusal passed to the agent as the master said it (status, code, message).
fn answer<T: Serialize>(result: Result<T>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(Error::Remote { status, code, message }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, Json(serde_json::json!({ "code": code, "message": message }))).into_response()
        }
        Err(e) => ApiError(e).into_response(),
    }
}

fn task_id(text: &str) -> Result<TaskId> {
    crate::control::api::path_id("task id", text)
}

async fn check_in_route(State(g): State<Arc<Gateway>>, Body(check_in): Body<CheckIn>) -> Response {
    answer(g.check_in(&check_in).await)
}

async fn progress_route(
    State(g): State<Arc<Gateway>>,
    UrlPath(id): UrlPath<String>,
    Body(report): Body<ProgressReport>,
) -> Response {
    match task_id(&id) {
        Ok(id) => answer(g.progress(id, &report).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn check_out_route(
    State(g): State<Arc<Gateway>>,
    UrlPath(id): UrlPath<String>,
    Body(out): Body<CheckOut>,
) -> Response {
    match task_id(&id) {
        Ok(id) => answer(g.check_out(id, &out).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

async fn multicast_route(
    State(g): State<Arc<Gateway>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match task_id(&id) {
        Ok(id) => answer(g.multicast_join(&caller, id).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_survives_a_reopen_and_replaces_by_task() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("node/outbox.json");
        let outbox = Outbox::open(&path)?;
        let done = |task, ok| Pending {
            task,
            out: CheckOut {
                ok,
                ..CheckOut::default()
            },
            push: None,
        };
        outbox.add(done(1, false))?;
        outbox.add(done(2, true))?;
        outbox.add(done(1, true))?;
        let reopened = Outbox::open(&path)?;
        assert_eq!(reopened.pending(), vec![done(2, true), done(1, true)]);
        reopened.remove(2)?;
        assert_eq!(Outbox::open(&path)?.pending(), vec![done(1, true)]);
        std::fs::write(&path, b"{ not json").map_err(|e| Error::io(&path, e))?;
        let err = Outbox::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("outbox.json"), "{err}");
        Ok(())
    }
}
