//! What the master does, independent of HTTP: checks every write, picks each host's node, runs
//! the task state machine and the slot queue, fires schedules, issues and checks tokens. The REST
//! API ([`crate::control::master`]), the web pages and in-process callers use it alike; the
//! handlers only translate, so every rule here holds for every caller.
//!
//! One file per domain: users (sign-ins, sessions), tokens (and who holds them), hosts and groups
//! (registration, node choice), images, nodes (heartbeats, wakes), tasks, check-in (the slot
//! lines, progress, check-out) and schedules.

mod audit;
mod checkin;
mod hosts;
mod images;
mod nodes;
mod schedules;
mod tasks;
mod tokens;
mod users;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

pub use self::hosts::name_from_serial;
pub use self::nodes::WAKE_TTL_MS;
pub use self::tokens::ADMIN_TOKEN_FILE;
pub use self::users::{ADMIN_PASSWORD_FILE, FIRST_USER, SESSION_TTL_MS, Session, SignedIn};
pub use crate::clock::{Clock, SystemClock};
pub use crate::control::api::Caller;
use crate::control::db::{Db, TokenRole};
use crate::control::line::Lines;
pub use crate::control::model::{GroupTasks, Skipped};
use crate::control::model::{Millis, TaskId};
pub use crate::control::tokens::{TASK_TOKEN_PREFIX, new_token, task_token, token_hash};
use crate::error::{Error, Result};

/// Default: a waiting agent that has not asked for this long loses its place.
pub const WAITER_TIMEOUT_MS: Millis = 120_000;

/// Default: an agent holding a slot that has not reported for this long (it reports every 2 s)
/// is taken for dead; its task fails and the slot goes to the next in line.
pub const AGENT_TIMEOUT_MS: Millis = 600_000;

/// How often (ms of the master's clock) a node's line is looked over for stale agents.
pub const SWEEP_EVERY_MS: Millis = 1_000;

/// How often progress reports and the contact of agents asking again are written (they change
/// only the master's memory meanwhile; reads are answered from there).
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The master's logic over its database.
pub struct Control {
    db: Db,
    clock: Arc<dyn Clock>,
    /// The slot lines, in memory; the lock serializes check-ins, progress, check-outs and
    /// cancels, so slot decisions see one line.
    line: Arc<Mutex<Lines>>,
    /// Known token hashes (filled as tokens are used, emptied for a node when its tokens change).
    tokens: std::sync::Mutex<TokenCache>,
    /// MAC → the host's task standing in a line (filled at check-ins, emptied when hosts
    /// change), so an agent asking again costs no query.
    macs: std::sync::Mutex<MacCache>,
    /// Calls without a known token recorded this second (see `audit`).
    anonymous: std::sync::Mutex<audit::AnonymousWindow>,
    /// Failed sign-ins, to slow the next ones.
    sign_ins: std::sync::Mutex<users::SignInFailures>,
    /// Argon2 hashes computed at once at most.
    password_slots: tokio::sync::Semaphore,
    waiter_timeout: Millis,
    agent_timeout: Millis,
    /// When this master started: silence while it was down is nobody's fault.
    started: Millis,
    store: std::sync::OnceLock<Arc<dyn crate::imaging::replica::ImageStore>>,
}

/// Token hashes seen in the database: their rights, and each node's hashes (for task tokens).
/// Only tokens found are kept; `generation` moves whenever tokens are revoked, so a lookup that
/// raced a revocation is not kept.
#[derive(Debug, Default)]
struct TokenCache {
    roles: HashMap<String, TokenRole>,
    node_hashes: HashMap<String, Vec<String>>,
    generation: u64,
}

/// MACs of hosts whose task stood in a line at their last check-in. An entry is only a hint:
/// it counts while its task is still in a line. `generation` moves whenever hosts change.
#[derive(Debug, Default)]
struct MacCache {
    entries: HashMap<String, MacEntry>,
    generation: u64,
}

#[derive(Debug, Clone)]
struct MacEntry {
    host: String,
    task: TaskId,
    /// The host's UUID is known (a check-in bringing one has nothing to store).
    uuid: bool,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("db", &self.db).finish()
    }
}

impl Control {
    /// Over `db`, with the wall clock.
    pub fn new(db: Db) -> Self {
        Control::with_clock(db, Arc::new(SystemClock), WAITER_TIMEOUT_MS)
    }

    /// Over `db`, with a clock and the waiter timeout.
    pub fn with_clock(db: Db, clock: Arc<dyn Clock>, waiter_timeout: Millis) -> Self {
        let started = clock.now();
        Control {
            db: db.with_clock(clock.clone()),
            clock,
            line: Arc::new(Mutex::new(Lines::default())),
            tokens: std::sync::Mutex::new(TokenCache::default()),
            macs: std::sync::Mutex::new(MacCache::default()),
            anonymous: std::sync::Mutex::new(audit::AnonymousWindow::default()),
            sign_ins: std::sync::Mutex::new(users::SignInFailures::default()),
            password_slots: users::password_work_slots(),
            waiter_timeout,
            agent_timeout: AGENT_TIMEOUT_MS,
            started,
            store: std::sync::OnceLock::new(),
        }
    }

    /// With this timeout for agents holding slots (see [`AGENT_TIMEOUT_MS`]).
    pub fn with_agent_timeout(mut self, timeout: Millis) -> Self {
        self.agent_timeout = timeout;
        self
    }

    /// Gives the master an image store, served by the chunk routes (`/api/v1/store/...`).
    /// Only the first call counts.
    pub fn set_image_store(&self, store: Arc<dyn crate::imaging::replica::ImageStore>) {
        let _ = self.store.set(store);
    }

    /// The master's image store, if it has one.
    pub fn image_store(&self) -> Result<Arc<dyn crate::imaging::replica::ImageStore>> {
        self.store
            .get()
            .cloned()
            .ok_or_else(|| Error::not_found("store", "this master keeps no image store"))
    }

    /// The clock everything here reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Writes what is only in memory (progress) and closes the database.
    pub async fn close(&self) {
        if let Err(e) = self.flush().await {
            tracing::warn!("master: writing the last progress reports: {e}");
        }
        self.db.close().await;
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes a secret a first start made (a token, a password) to `dir/file`, mode 0600, when there
/// is a directory; the file written.
fn keep_secret(dir: Option<&std::path::Path>, file: &str, secret: &str) -> Result<Option<std::path::PathBuf>> {
    let Some(dir) = dir else { return Ok(None) };
    let path = dir.join(file);
    crate::fsutil::write_private(&path, format!("{secret}\n").as_bytes())?;
    Ok(Some(path))
}

/// Refused when a body renames the record its path names.
fn same_name(field: &'static str, path: &str, body: &str) -> Result<()> {
    if path == body {
        Ok(())
    } else {
        Err(Error::unprocessable(
            field,
            body,
            format!("the record is {path:?}: names cannot change"),
        ))
    }
}
