//! What the master does, independent of HTTP: checks every write, picks each host's node, runs
//! the task state machine and the slot queue, fires schedules, issues and checks tokens. The REST
//! API ([`crate::control::master`]) and in-process callers (tests, later Python) use it alike.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::control::cron::Cron;
use crate::control::db::{Db, MacLookup, TaskChange, TaskEventRow, TaskFilter, TokenRole, now_ms};
use crate::control::line::{Held, Lines, in_line};
use crate::control::model::{
    BootTask, CheckIn, CheckInReply, CheckOut, Group, Heartbeat, Host, Image, Millis, NewTask, Node, NodeToken,
    Placement, ProgressReport, Registered, Registration, STATE_NAMES, Schedule, SlotState, Task, TaskId, TaskKind,
    TaskState, When, canonical_mac, canonical_uuid, check_name,
};
use crate::control::tasks::{Event, Slot, slot_for, step};
use crate::error::{Error, Result};

/// Where time comes from (tests pass a manual clock).
pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch.
    fn now(&self) -> Millis;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        now_ms()
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An admin token: everything.
    Admin,
    /// A node's token: check-ins, progress and check-outs of its hosts, its heartbeat.
    Node(String),
}

/// The result of a task request for a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupTasks {
    /// One task per host that could take one.
    pub created: Vec<Task>,
    /// Hosts left out, with why.
    pub skipped: Vec<Skipped>,
}

/// A host a group task left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// Host name.
    pub host: String,
    /// Why.
    pub reason: String,
}

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

/// A decision about one task, before it is committed.
#[derive(Debug, Clone)]
struct Change {
    task: Task,
    from: &'static str,
    contact: Millis,
    events: Vec<TaskEventRow>,
}

/// Forgets the lines of `nodes` when dropped before `applied` (see [`Control::commit`]).
struct ForgetUnlessApplied<'a> {
    lines: &'a mut Lines,
    nodes: Vec<String>,
    applied: bool,
}

impl Drop for ForgetUnlessApplied<'_> {
    fn drop(&mut self) {
        if !self.applied {
            for node in &self.nodes {
                self.lines.forget(node);
            }
        }
    }
}

impl Change {
    /// `task` going to `next`; a history row when the state's name changes (with `detail`, or
    /// the failure's reason).
    fn new(task: &Task, next: TaskState, contact: Millis, detail: Option<String>) -> Change {
        let mut change = Change {
            task: task.clone(),
            from: task.state.name(),
            contact,
            events: Vec::new(),
        };
        change.step(next, detail);
        change
    }

    /// A further step of the same task, written with the first.
    fn step(&mut self, next: TaskState, detail: Option<String>) {
        let from = self.task.state.name();
        if from != next.name() {
            let reason = match &next {
                TaskState::Failed { reason } => Some(reason.clone()),
                _ => None,
            };
            self.events.push(TaskEventRow {
                from,
                to: next.name(),
                detail: detail.or(reason),
            });
        }
        self.task.state = next;
        self.task.updated_at = now_ms();
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn caller_of(role: &TokenRole) -> Caller {
    match role {
        TokenRole::Admin => Caller::Admin,
        TokenRole::Node(node) => Caller::Node(node.clone()),
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("db", &self.db).finish()
    }
}

/// A host name from a DMI serial number, unless the serial is a placeholder firmware vendors
/// leave in (`To be filled by O.E.M.`, `0`, `Default string`): letters and digits kept, the rest
/// `-`, lower case.
pub fn name_from_serial(serial: &str) -> Option<String> {
    let lower = serial.trim().to_ascii_lowercase();
    let placeholder = lower.is_empty()
        || lower.chars().all(|c| c == '0' || c == ' ')
        || [
            "to be filled",
            "default string",
            "system serial",
            "not specified",
            "none",
            "n/a",
            "123456789",
        ]
        .iter()
        .any(|p| lower.starts_with(p));
    if placeholder {
        return None;
    }
    let name: String = lower
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-').chars().take(64).collect::<String>();
    check_name("host name", &name).ok().map(|()| name)
}

/// A new random bearer token: `fog_` and 64 hex digits.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("fog_{}", hex::encode(bytes))
}

/// How a token is stored: its BLAKE3 hash, hex.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// The prefix of task tokens (see [`task_token`]).
pub const TASK_TOKEN_PREFIX: &str = "fogt_";

fn task_mac(key_hash: &blake3::Hash, node: &str, task: TaskId) -> blake3::Hash {
    blake3::keyed_hash(
        key_hash.as_bytes(),
        format!("fog task token v1\0{node}\0{task}").as_bytes(),
    )
}

/// The token an agent presents for `task` of `node`: `fogt_<id>_<64 hex>`, a BLAKE3 keyed hash of
/// the node and task keyed with the node token's stored hash. The node computes it without the
/// master (so it works from the node's cache); the master checks it against the node's stored
/// token hashes. It carries the node's rights, only while the task is open, and shows nothing of
/// the node's token, which stays off the boot script.
pub fn task_token(node_token: &str, node: &str, task: TaskId) -> String {
    let mac = task_mac(&blake3::hash(node_token.as_bytes()), node, task);
    format!("{TASK_TOKEN_PREFIX}{task}_{}", mac.to_hex())
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
            db,
            clock,
            line: Arc::new(Mutex::new(Lines::default())),
            tokens: std::sync::Mutex::new(TokenCache::default()),
            macs: std::sync::Mutex::new(MacCache::default()),
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

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    // ---- tokens

    /// Issues an admin token; only its hash is stored.
    pub async fn create_admin_token(&self) -> Result<String> {
        let token = new_token();
        self.db.insert_token(&token_hash(&token), &TokenRole::Admin).await?;
        Ok(token)
    }

    /// On a first start (no admin token yet), issues one and writes it to `DIR/admin-token`
    /// (mode 0600). Returns the token and file then; none when admin tokens exist already.
    pub async fn first_admin_token(&self, dir: &Path) -> Result<Option<(String, PathBuf)>> {
        if self.db.admin_tokens().await? > 0 {
            return Ok(None);
        }
        let token = self.create_admin_token().await?;
        let path = dir.join("admin-token");
        write_private(&path, &format!("{token}\n"))?;
        Ok(Some((token, path)))
    }

    /// Who holds this bearer token. A task token ([`task_token`]) stands for its task's node
    /// while the task is open.
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        if let Some(rest) = token.strip_prefix(TASK_TOKEN_PREFIX) {
            return self.authenticate_task(rest).await;
        }
        let hash = token_hash(token);
        let generation = {
            let cache = lock(&self.tokens);
            if let Some(role) = cache.roles.get(&hash) {
                return Ok(caller_of(role));
            }
            cache.generation
        };
        let role = self
            .db
            .token_role(&hash)
            .await?
            .ok_or_else(|| Error::Unauthorized("unknown token".into()))?;
        let caller = caller_of(&role);
        let mut cache = lock(&self.tokens);
        if cache.generation == generation {
            cache.roles.insert(hash, role);
        }
        Ok(caller)
    }

    /// The stored hashes of a node's tokens (cached).
    async fn node_token_hashes(&self, node: &str) -> Result<Vec<String>> {
        let generation = {
            let cache = lock(&self.tokens);
            if let Some(hashes) = cache.node_hashes.get(node) {
                return Ok(hashes.clone());
            }
            cache.generation
        };
        let hashes = self.db.node_token_hashes(node).await?;
        let mut cache = lock(&self.tokens);
        if cache.generation == generation {
            cache.node_hashes.insert(node.to_string(), hashes.clone());
        }
        Ok(hashes)
    }

    /// A node's tokens changed: forget what was cached of them.
    fn forget_node_tokens(&self, node: &str) {
        let mut cache = lock(&self.tokens);
        cache.generation += 1;
        cache.roles.retain(|_, role| *role != TokenRole::Node(node.to_string()));
        cache.node_hashes.remove(node);
    }

    async fn authenticate_task(&self, rest: &str) -> Result<Caller> {
        let refused = || Error::Unauthorized("unknown task token".into());
        let (id, mac) = rest.split_once('_').ok_or_else(refused)?;
        let id: TaskId = id.parse().map_err(|_| refused())?;
        let mac = blake3::Hash::from_hex(mac).map_err(|_| refused())?;
        let task = match self.task(id).await {
            Ok(task) => task,
            Err(Error::NotFound { .. }) => return Err(refused()),
            Err(e) => return Err(e),
        };
        let node = task.node.clone().ok_or_else(refused)?;
        let mut valid = false;
        for hash in self.node_token_hashes(&node).await? {
            if let Ok(key) = blake3::Hash::from_hex(&hash) {
                // blake3::Hash compares in constant time.
                valid |= task_mac(&key, &node, id) == mac;
            }
        }
        if !valid {
            return Err(refused());
        }
        if task.state.is_terminal() {
            return Err(Error::Unauthorized(format!(
                "task {id} is {}: its token is no longer valid",
                task.state.name()
            )));
        }
        Ok(Caller::Node(node))
    }

    // ---- groups, images, nodes, hosts

    /// Adds a group.
    pub async fn create_group(&self, group: &Group) -> Result<Group> {
        group.validate()?;
        self.db.create_group(group).await?;
        self.db.group(&group.name).await
    }

    /// Adds a node and issues its token (returned once).
    pub async fn create_node(&self, node: &Node) -> Result<NodeToken> {
        node.validate()?;
        self.db.create_node(node).await?;
        // Images placed on all nodes now include this one.
        for image in self.db.images().await? {
            if image.placement == Placement::All {
                self.db.place_image(&image).await?;
            }
        }
        self.node_token(&node.name).await
    }

    /// Revokes a node's tokens and issues a new one.
    pub async fn node_token(&self, name: &str) -> Result<NodeToken> {
        let node = self.db.node(name).await?;
        self.db.delete_node_tokens(name).await?;
        self.forget_node_tokens(name);
        let token = new_token();
        self.db
            .insert_token(&token_hash(&token), &TokenRole::Node(name.to_string()))
            .await?;
        Ok(NodeToken { node, token })
    }

    /// Replaces a node's settings; the name in the path wins over none, a different one is refused.
    pub async fn update_node(&self, name: &str, node: &Node) -> Result<Node> {
        same_name("node name", name, &node.name)?;
        node.validate()?;
        let mut lines = self.line.lock().await;
        self.db.update_node(node).await?;
        lines.set_limits(name, node.max_clients, node.enabled);
        drop(lines);
        self.db.node(name).await
    }

    /// Removes a node; refused while it has tasks not over.
    pub async fn delete_node(&self, name: &str) -> Result<()> {
        // Under the line's lock from the check to the delete: a check-in cannot put a task on
        // the node in between.
        let mut lines = self.line.lock().await;
        let open = self
            .db
            .tasks(&TaskFilter {
                node: Some(name.to_string()),
                open_only: true,
                limit: Some(1),
                ..TaskFilter::default()
            })
            .await?;
        if let Some(task) = open.first() {
            return Err(Error::conflict(
                "node",
                name,
                format!("task {} on it is not over", task.id),
            ));
        }
        // Its tokens leave the cache before and after: a call dropped mid-delete must not leave
        // them working.
        self.forget_node_tokens(name);
        self.db.delete_node(name).await?;
        lines.forget(name);
        drop(lines);
        self.forget_node_tokens(name);
        Ok(())
    }

    async fn check_placement(&self, image: &Image) -> Result<()> {
        image.validate()?;
        if let Placement::Nodes { nodes } = &image.placement {
            for node in nodes {
                self.db.node(node).await?;
            }
        }
        Ok(())
    }

    /// Adds an image's record; its placement names existing nodes.
    pub async fn create_image(&self, image: &Image) -> Result<Image> {
        self.check_placement(image).await?;
        self.db.create_image(image).await?;
        self.db.image(&image.name).await
    }

    /// Replaces an image's record.
    pub async fn update_image(&self, name: &str, image: &Image) -> Result<Image> {
        same_name("image name", name, &image.name)?;
        self.check_placement(image).await?;
        self.db.update_image(image).await?;
        self.db.image(name).await
    }

    /// Removes an image's record; refused while a host or an open task uses it.
    pub async fn delete_image(&self, name: &str) -> Result<()> {
        self.db.image(name).await?;
        if self.db.image_in_use(name).await? {
            return Err(Error::conflict("image", name, "a host or an open task uses it"));
        }
        self.db.delete_image(name).await
    }

    async fn check_host(&self, host: &mut Host) -> Result<()> {
        host.validate()?;
        if let Some(image) = &host.image {
            self.db.image(image).await?;
        }
        if let Some(group) = &host.group {
            self.db.group(group).await?;
        }
        if let Some(node) = &host.node {
            self.db.node(node).await?;
        }
        Ok(())
    }

    /// Adds a host: MACs valid and not another host's, image, group and node existing.
    pub async fn create_host(&self, mut host: Host) -> Result<Host> {
        self.check_host(&mut host).await?;
        self.db.create_host(&host).await?;
        self.db.host(&host.name).await
    }

    /// Replaces a host's record.
    pub async fn update_host(&self, name: &str, mut host: Host) -> Result<Host> {
        same_name("host name", name, &host.name)?;
        self.check_host(&mut host).await?;
        self.db.update_host(&host).await?;
        self.forget_macs();
        self.db.host(name).await
    }

    /// Hosts changed: the MAC hints go.
    fn forget_macs(&self) {
        let mut macs = lock(&self.macs);
        macs.generation += 1;
        macs.entries.clear();
    }

    /// Removes a host; refused while it has a task not over.
    pub async fn delete_host(&self, name: &str) -> Result<()> {
        self.forget_macs();
        self.db.host(name).await?;
        if let Some(task) = self.db.open_task_for_host(name).await? {
            return Err(Error::conflict(
                "host",
                name,
                format!("task {} is not over: cancel it first", task.id),
            ));
        }
        self.db.delete_host(name).await
    }

    /// Quick registration from the boot menu: creates the host of these MACs (named `name`, else
    /// after its DMI serial, else `host-<mac>`; imaged by the calling node), or, when one of the
    /// MACs is known, stores the new inventory (and the UUID and MACs it lacked) on that host.
    /// Registering twice changes nothing more. A node may not touch another node's host.
    pub async fn register(&self, caller: &Caller, reg: &Registration) -> Result<Registered> {
        let mut macs = Vec::new();
        for mac in &reg.macs {
            let mac = canonical_mac(mac)?;
            if !macs.contains(&mac) {
                macs.push(mac);
            }
        }
        let first = macs
            .first()
            .cloned()
            .ok_or_else(|| Error::invalid("mac", "", "a registration needs at least one MAC"))?;
        let dmi = &reg.inventory["dmi"];
        let uuid = match reg.uuid.as_deref().or(dmi["uuid"].as_str()) {
            Some(u) => Some(canonical_uuid(u)?),
            None => None,
        };
        // One registration at a time: two boots of the same machine must not both create it.
        let _line = self.line.lock().await;
        let mut known = None;
        for mac in &macs {
            match self.db.host_by_mac(mac).await {
                Ok(host) => {
                    known = Some(host);
                    break;
                }
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(mut host) = known {
            if let (Caller::Node(me), Some(owner)) = (caller, &host.node)
                && me != owner
            {
                return Err(Error::Forbidden(format!(
                    "host {} belongs to node {owner}, not to node {me}",
                    host.name
                )));
            }
            for mac in macs {
                if !host.macs.contains(&mac) {
                    host.macs.push(mac);
                }
            }
            if host.uuid.is_none() {
                host.uuid = uuid;
            }
            if !reg.inventory.is_null() {
                host.inventory = reg.inventory.clone();
            }
            let name = host.name.clone();
            let host = self.update_host(&name, host).await?;
            return Ok(Registered { host, created: false });
        }
        let node = match caller {
            Caller::Node(me) => Some(me.clone()),
            Caller::Admin => None,
        };
        let name = match &reg.name {
            Some(name) => name.clone(),
            None => {
                let mut name = format!("host-{}", first.replace(':', ""));
                if let Some(serial) = dmi["serial"].as_str().and_then(name_from_serial)
                    && matches!(self.db.host(&serial).await, Err(Error::NotFound { .. }))
                {
                    name = serial;
                }
                name
            }
        };
        let host = Host {
            name,
            macs,
            uuid,
            address: None,
            image: None,
            group: None,
            node,
            primary_disk: None,
            kernel_args: String::new(),
            inventory: reg.inventory.clone(),
        };
        let host = self.create_host(host).await?;
        Ok(Registered { host, created: true })
    }

    /// The node that images `host`: the one set on it, else the enabled node whose subnet holds
    /// `address` (or the host's address), the longest prefix winning.
    pub async fn node_for(&self, host: &Host, address: Option<Ipv4Addr>) -> Result<Option<String>> {
        self.node_for_parts(host.node.as_deref(), address.or(host.address))
            .await
    }

    async fn node_for_parts(&self, node: Option<&str>, address: Option<Ipv4Addr>) -> Result<Option<String>> {
        if let Some(node) = node {
            return Ok(Some(node.to_string()));
        }
        let Some(address) = address else {
            return Ok(None);
        };
        Ok(self
            .db
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.enabled)
            .filter_map(|n| n.matches(address).map(|prefix| (prefix, n.name)))
            .max_by_key(|(prefix, _)| *prefix)
            .map(|(_, name)| name))
    }

    // ---- tasks

    /// Creates a task for one host. Deploy takes the host's image when none is given.
    pub async fn create_task(&self, new: &NewTask) -> Result<Task> {
        let host_name = new
            .host
            .as_deref()
            .ok_or_else(|| Error::invalid("host", "", "a task needs a host (or use a group)"))?;
        let host = self.db.host(host_name).await?;
        self.task_for_host(new, &host, None, None).await
    }

    async fn task_for_host(
        &self,
        new: &NewTask,
        host: &Host,
        group: Option<&str>,
        schedule: Option<i64>,
    ) -> Result<Task> {
        if new.kind == TaskKind::Multicast {
            return Err(Error::invalid(
                "task kind",
                "multicast",
                "multicast sessions are not supported yet",
            ));
        }
        let mut new = new.clone();
        new.host = Some(host.name.clone());
        if new.kind == TaskKind::Deploy && new.image.is_none() {
            new.image = host.image.clone();
        }
        if new.kind.needs_image() {
            let image = new.image.as_deref().ok_or_else(|| {
                Error::invalid(
                    "image",
                    "",
                    format!(
                        "a {} task needs an image (host {} has none set)",
                        new.kind.as_str(),
                        host.name
                    ),
                )
            })?;
            self.db.image(image).await?;
        } else if new.image.is_some() {
            return Err(Error::invalid(
                "image",
                new.image.clone().unwrap_or_default(),
                format!("a {} task takes no image", new.kind.as_str()),
            ));
        }
        if let Some(task) = self.db.open_task_for_host(&host.name).await? {
            return Err(Error::conflict(
                "host",
                &host.name,
                format!("task {} ({}) is not over", task.id, task.state.name()),
            ));
        }
        let node = self.node_for(host, None).await?;
        if new.wake {
            crate::control::wake::waking_node(host, node.as_deref())?;
        }
        let task = self
            .db
            .insert_task(&new, &host.name, node.as_deref(), group, schedule)
            .await?;
        if let (true, Some(node)) = (task.wake, &node) {
            self.request_wake(host, node, Some(task.id)).await?;
        }
        Ok(task)
    }

    /// Creates one task per host of the group; hosts that cannot take one are listed with why.
    pub async fn create_group_task(&self, group: &str, new: &NewTask) -> Result<GroupTasks> {
        self.create_group_task_from(group, new, None).await
    }

    async fn create_group_task_from(&self, group: &str, new: &NewTask, schedule: Option<i64>) -> Result<GroupTasks> {
        self.db.group(group).await?;
        if new.host.is_some() {
            return Err(Error::invalid(
                "host",
                new.host.clone().unwrap_or_default(),
                "a group task names no host",
            ));
        }
        let mut report = GroupTasks {
            created: Vec::new(),
            skipped: Vec::new(),
        };
        for host in self.db.hosts_in_group(group).await? {
            match self.task_for_host(new, &host, Some(group), schedule).await {
                Ok(task) => report.created.push(task),
                Err(e) if e.is_bad_input() => report.skipped.push(Skipped {
                    host: host.name.clone(),
                    reason: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Tasks matching a filter (state names checked).
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        if let Some(state) = &filter.state
            && !STATE_NAMES.contains(&state.as_str())
        {
            return Err(Error::invalid(
                "state",
                state,
                format!("use one of {}", STATE_NAMES.join(", ")),
            ));
        }
        let mut tasks = self.db.tasks(filter).await?;
        self.line.lock().await.overlay(&mut tasks);
        Ok(tasks)
    }

    /// One task (progress as last reported, which may not be written yet).
    pub async fn task(&self, id: TaskId) -> Result<Task> {
        if let Some(held) = self.line.lock().await.get(id) {
            return Ok(held.task.clone());
        }
        self.db.task(id).await
    }

    /// Cancels a task that is not over; frees its slot.
    pub async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        let mut lines = self.line.lock().await;
        for _ in 0..2 {
            let (task, contact) = self.current_task(&mut lines, id).await?;
            let next = step(id, &task.state, Event::Cancel)?;
            let change = Change::new(&task, next, contact, Some("cancelled by an admin".into()));
            if let Some(task) = self.commit_one(&mut lines, change).await? {
                return Ok(task);
            }
        }
        Err(raced(id))
    }

    fn check_node_caller(caller: &Caller, node: &str, host: &str) -> Result<()> {
        match caller {
            Caller::Node(me) if me != node => Err(Error::Forbidden(format!(
                "host {host} is imaged by node {node}, not {me}"
            ))),
            _ => Ok(()),
        }
    }

    /// An agent asks for its host's task: the task and whether to start, or its place in line.
    ///
    /// One query finds the host and its open task; the decision is made on the node's line in
    /// memory, under the line's lock, and its changes are written in one transaction before the
    /// answer. An agent that asks again while waiting or running writes nothing at once.
    pub async fn check_in(&self, caller: &Caller, check_in: &CheckIn) -> Result<CheckInReply> {
        let mac = canonical_mac(&check_in.mac)?;
        let uuid = check_in.uuid.as_deref().map(canonical_uuid).transpose()?;
        // An agent asking again: its task is in a line, nothing to read.
        let (hint, generation) = {
            let macs = lock(&self.macs);
            (macs.entries.get(&mac).cloned(), macs.generation)
        };
        if let Some(hint) = hint.filter(|h| h.uuid || uuid.is_none()) {
            let mut lines = self.line.lock().await;
            if let Some(held) = lines.get(hint.task).filter(|h| h.task.host == hint.host) {
                let found = MacLookup {
                    host: hint.host.clone(),
                    uuid: None,
                    address: None,
                    node: held.task.node.clone(),
                    task: Some(held.task.clone()),
                };
                let task = held.task.clone();
                if let Some(reply) = self
                    .check_in_locked(&mut lines, caller, &found, task, check_in.address)
                    .await?
                {
                    return Ok(reply);
                }
            }
        }
        let found = self
            .db
            .check_in_lookup(&mac)
            .await?
            .ok_or_else(|| Error::not_found("host with mac", &mac))?;
        if let (Some(uuid), None) = (&uuid, &found.uuid) {
            self.db.set_host_uuid(&found.host, uuid).await?;
        }
        let mut lines = self.line.lock().await;
        // Read before the lock: the line tells whether the task moved since; when it did, the
        // task is read again under the lock.
        let mut task = found.task.clone();
        for _ in 0..3 {
            let open = task.ok_or_else(|| Error::not_found("task for host", &found.host))?;
            if let Some(reply) = self
                .check_in_locked(&mut lines, caller, &found, open, check_in.address)
                .await?
            {
                if lines.get(reply.task.id).is_some() {
                    let mut macs = lock(&self.macs);
                    if macs.generation == generation {
                        let entry = MacEntry {
                            host: found.host.clone(),
                            task: reply.task.id,
                            uuid: found.uuid.is_some() || uuid.is_some(),
                        };
                        macs.entries.insert(mac, entry);
                    }
                }
                return Ok(reply);
            }
            task = self.db.open_task_for_host(&found.host).await?;
            // Read under the lock: a task the database has in a line and the copy lacks means
            // the copy is behind, so the node's line is read again.
            if let Some(t) = &task
                && in_line(&t.state)
                && lines.get(t.id).is_none()
                && let Some(node) = &t.node
            {
                lines.forget(node);
            }
        }
        Err(Error::Database(format!(
            "check-in of host {}: its task kept changing",
            found.host
        )))
    }

    /// [`Control::check_in`] under the line's lock. `None`: the task read before the lock has
    /// changed since; read it again.
    async fn check_in_locked(
        &self,
        lines: &mut Lines,
        caller: &Caller,
        found: &MacLookup,
        task: Task,
        address: Option<Ipv4Addr>,
    ) -> Result<Option<CheckInReply>> {
        let node_name = match (&task.node, caller) {
            (Some(node), _) => node.clone(),
            (None, caller) => match (
                self.node_for_parts(found.node.as_deref(), address.or(found.address))
                    .await?,
                caller,
            ) {
                (Some(node), _) => node,
                (None, Caller::Node(me)) => me.clone(),
                (None, Caller::Admin) => {
                    return Err(Error::conflict(
                        "host",
                        &found.host,
                        "no node images it: set its node, or its address inside a node's subnet",
                    ));
                }
            },
        };
        Control::check_node_caller(caller, &node_name, &found.host)?;
        self.ensure_line(lines, &node_name).await?;
        let mut task = match lines.get(task.id) {
            Some(held) => held.task.clone(),
            // In a line when read, not now: it left the line since.
            None if in_line(&task.state) => return Ok(None),
            None => task,
        };
        if let TaskState::InProgress { .. } = task.state {
            // The agent restarted mid-task (or asks again): it holds its slot still. Nothing to
            // decide, so the line is left alone.
            return Ok(Some(CheckInReply {
                task,
                slot: SlotState::Granted,
            }));
        }
        let now = self.clock.now();
        if let Some(stale) = lines.sweep(
            &node_name,
            now,
            SWEEP_EVERY_MS,
            self.started,
            self.agent_timeout,
            self.waiter_timeout,
        ) && (!stale.silent.is_empty() || !stale.quiet.is_empty())
        {
            let mut changes = Vec::new();
            for (held, silent) in stale.silent {
                let reason = format!("the agent went silent for {} s while holding a slot", silent / 1000);
                let next = step(held.task.id, &held.task.state, Event::Silent(reason.clone()))?;
                changes.push(Change::new(&held.task, next, held.contact, Some(reason)));
            }
            for held in stale.quiet {
                let next = step(held.task.id, &held.task.state, Event::Requeue)?;
                let mut change = Change::new(
                    &held.task,
                    next,
                    held.contact,
                    Some("the agent stopped asking: lost its place in line".into()),
                );
                change.task.ticket = None;
                changes.push(change);
            }
            if !self.commit(lines, changes).await? {
                return Ok(None);
            }
            // This very agent may have lost its place just now.
            if let Some(held) = lines.get(task.id) {
                task = held.task.clone();
            } else if in_line(&task.state) {
                return Ok(None);
            }
        }
        let fresh = task.state == TaskState::Queued;
        let mut mine = Change {
            task: task.clone(),
            from: task.state.name(),
            contact: now,
            events: Vec::new(),
        };
        if fresh {
            let next = step(task.id, &task.state, Event::CheckIn)?;
            mine.task.ticket = Some(self.ticket(lines).await?);
            mine.task.node = Some(node_name.clone());
            mine.step(next, None);
        } else if task.state.is_terminal() {
            step(task.id, &task.state, Event::CheckIn)?;
        }
        let (max, enabled) = lines.limits(&node_name).unwrap_or((0, false));
        let active = lines.active(&node_name);
        // Free slots go to the head of the line, all of them now, so tasks start in line
        // order even when the agent first in line asks a moment after the one behind it.
        let free = match slot_for(max, enabled, active, 0) {
            Slot::Granted => max.saturating_sub(active),
            Slot::Waiting { .. } => 0,
        };
        let free = usize::try_from(free).unwrap_or(usize::MAX);
        let mut heads = lines.heads(&node_name, free);
        // A new ticket is the last in line.
        let ahead = if fresh {
            let waiting = lines.waiting_len(&node_name);
            if heads.len() < free {
                heads.push(task.id);
            }
            waiting
        } else {
            lines.ahead(&node_name, &task)
        };
        let mut changes = Vec::new();
        let mut granted = false;
        for id in heads {
            if id == task.id {
                let next = step(id, &mine.task.state, Event::Grant)?;
                mine.step(next, None);
                changes.push(mine.clone());
                granted = true;
            } else if let Some(held) = lines.get(id) {
                let next = step(id, &held.task.state, Event::Grant)?;
                changes.push(Change::new(&held.task, next, held.contact, None));
            }
        }
        if !granted && mine.task.state == TaskState::CheckedIn {
            let next = step(task.id, &mine.task.state, Event::Wait)?;
            mine.step(next, None);
        }
        if !granted && !mine.events.is_empty() {
            changes.push(mine.clone());
        }
        let unchanged = mine.events.is_empty();
        if !self.commit(lines, changes).await? {
            return Ok(None);
        }
        let task = if unchanged {
            // Asked again, still waiting: only its contact changes, written with the next batch.
            let task = lines.touch(task.id, None, now, now_ms()).cloned().unwrap_or(mine.task);
            self.start_flusher(lines);
            task
        } else {
            mine.task
        };
        if granted {
            return Ok(Some(CheckInReply {
                task,
                slot: SlotState::Granted,
            }));
        }
        let ahead = u32::try_from(ahead).unwrap_or(u32::MAX);
        match slot_for(max, enabled, active, ahead) {
            Slot::Granted => Err(Error::Database(format!(
                "task {}: a free slot was not handed out",
                task.id
            ))),
            Slot::Waiting { place } => Ok(Some(CheckInReply {
                task,
                slot: SlotState::Waiting {
                    place,
                    active: lines.active(&node_name),
                    max,
                },
            })),
        }
    }

    /// Loads `node`'s line into memory unless it is there: its limit and its tasks in line.
    async fn ensure_line(&self, lines: &mut Lines, node: &str) -> Result<()> {
        if lines.loaded(node) {
            return Ok(());
        }
        let limits = self.db.node(node).await?;
        let tasks = self.db.line_tasks(node).await?;
        lines.load(
            node,
            limits.max_clients,
            limits.enabled,
            tasks
                .into_iter()
                .map(|(task, contact)| Held { task, contact })
                .collect(),
        );
        Ok(())
    }

    /// The task as the master sees it, with its agent's last contact: from its node's line when
    /// it stands in one (loaded when needed), else from the database.
    async fn current_task(&self, lines: &mut Lines, id: TaskId) -> Result<(Task, Millis)> {
        if let Some(held) = lines.get(id) {
            return Ok((held.task.clone(), held.contact));
        }
        let task = self.db.task(id).await?;
        if let (true, Some(node)) = (in_line(&task.state), task.node.as_deref()) {
            if lines.loaded(node) {
                // The database says it is in the line and the copy does not: trust the database.
                lines.forget(node);
            }
            self.ensure_line(lines, node).await?;
            if let Some(held) = lines.get(id) {
                return Ok((held.task.clone(), held.contact));
            }
        }
        Ok((task, 0))
    }

    /// The next ticket: after every ticket handed out.
    async fn ticket(&self, lines: &mut Lines) -> Result<i64> {
        if let Some(ticket) = lines.take_ticket() {
            return Ok(ticket);
        }
        lines.set_next_ticket(self.db.next_ticket().await?);
        lines.take_ticket().ok_or_else(|| Error::Database("no ticket".into()))
    }

    /// Writes decisions in one transaction, then applies them to the lines. False (nothing
    /// written) when a task's row had changed under the master; then, and on errors, the lines
    /// of the nodes involved are dropped, to be loaded again from the database.
    async fn commit(&self, lines: &mut Lines, changes: Vec<Change>) -> Result<bool> {
        if changes.is_empty() {
            return Ok(true);
        }
        let rows: Vec<TaskChange<'_>> = changes
            .iter()
            .map(|c| TaskChange {
                task: &c.task,
                from: c.from,
                contact: Some(c.contact),
                events: c.events.clone(),
            })
            .collect();
        // An outcome (complete, failed, cancelled) is synced before the answer: nobody sends it
        // again. Grants and check-ins are not, like progress (see DECISIONS).
        let durable = changes.iter().any(|c| c.task.state.is_terminal());
        // Until the lines are updated, the nodes' lines are forgotten if this future ends early:
        // on an error, a guard that failed, or a caller that went away (its request dropped)
        // while the database may already have committed. They are then read again.
        let mut guard = ForgetUnlessApplied {
            lines,
            nodes: changes.iter().filter_map(|c| c.task.node.clone()).collect(),
            applied: false,
        };
        let written = self.db.write_changes(&rows, durable).await;
        if !matches!(written, Ok(true)) {
            return written;
        }
        guard.applied = true;
        for change in changes {
            guard.lines.put(change.task, change.contact);
        }
        Ok(true)
    }

    /// [`Control::commit`] of one change: the task as written, or `None` when its row had changed.
    async fn commit_one(&self, lines: &mut Lines, change: Change) -> Result<Option<Task>> {
        let task = change.task.clone();
        Ok(self.commit(lines, vec![change]).await?.then_some(task))
    }

    /// Starts the writer of dirty tasks unless it runs: every [`FLUSH_EVERY`] it writes them,
    /// under the line's lock (one writer at a time, so SQLite never waits on its own lock);
    /// it stops when nothing is dirty, or when this `Control` is gone.
    fn start_flusher(&self, lines: &mut Lines) {
        if lines.flushing || lines.dirty() == 0 {
            return;
        }
        lines.flushing = true;
        let line = Arc::downgrade(&self.line);
        let db = self.db.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let Some(line) = line.upgrade() else { break };
                let mut lines = line.lock().await;
                if lines.dirty() == 0 {
                    lines.flushing = false;
                    break;
                }
                if let Err(e) = flush(&db, &mut lines).await {
                    tracing::warn!("writing progress: {e}");
                }
            }
        });
    }

    /// Writes the progress and contacts not written yet (the master does every
    /// [`FLUSH_EVERY`], and before it stops).
    pub async fn flush(&self) -> Result<()> {
        let mut lines = self.line.lock().await;
        flush(&self.db, &mut lines).await
    }

    fn check_agent(caller: &Caller, task: &Task) -> Result<()> {
        if let Caller::Node(me) = caller {
            match &task.node {
                Some(node) => Control::check_node_caller(caller, node, &task.host)?,
                None => {
                    return Err(Error::Forbidden(format!("task {} is not on node {me}", task.id)));
                }
            }
        }
        Ok(())
    }

    /// An agent reports progress on its running task. Applied in memory and answered at once;
    /// written with the next batch (see [`FLUSH_EVERY`]).
    pub async fn progress(&self, caller: &Caller, id: TaskId, report: &ProgressReport) -> Result<Task> {
        let mut lines = self.line.lock().await;
        let (task, _) = self.current_task(&mut lines, id).await?;
        Control::check_agent(caller, &task)?;
        let next = step(
            id,
            &task.state,
            Event::Progress {
                percent: report.percent,
                bytes: report.bytes,
                rate: report.rate,
            },
        )?;
        let now = self.clock.now();
        if let Some(task) = lines.touch(id, Some(next.clone()), now, now_ms()).cloned() {
            self.start_flusher(&mut lines);
            return Ok(task);
        }
        // Running but in no line (it has no node): written at once.
        let change = Change::new(&task, next, now, None);
        self.commit_one(&mut lines, change).await?.ok_or_else(|| raced(id))
    }

    /// An agent's last word: complete or failed; frees the slot, stores an inventory it sent.
    /// Written before the answer.
    pub async fn check_out(&self, caller: &Caller, id: TaskId, out: &CheckOut) -> Result<Task> {
        let mut lines = self.line.lock().await;
        for _ in 0..2 {
            let (task, _) = self.current_task(&mut lines, id).await?;
            Control::check_agent(caller, &task)?;
            let reason = || out.reason.clone().unwrap_or_else(|| "the agent gave no reason".into());
            // A node replays check-outs it queued while the master was unreachable, and may replay
            // one whose reply it lost: the same outcome again changes nothing.
            match (&task.state, out.ok) {
                (TaskState::Complete, true) => return Ok(task),
                (TaskState::Failed { .. }, false) => return Ok(task),
                _ => {}
            }
            let event = match (out.ok, out.offline) {
                (true, false) => Event::Complete,
                (false, false) => Event::Fail(reason()),
                (true, true) => Event::Reconcile(None),
                (false, true) => Event::Reconcile(Some(reason())),
            };
            let next = step(id, &task.state, event)?;
            if let Some(inventory) = &out.inventory {
                self.db.set_inventory(&task.host, inventory).await?;
            }
            let change = Change::new(&task, next, self.clock.now(), None);
            if let Some(task) = self.commit_one(&mut lines, change).await? {
                return Ok(task);
            }
        }
        Err(raced(id))
    }

    /// A node's heartbeat.
    pub async fn heartbeat(&self, node: &str, beat: &Heartbeat) -> Result<Node> {
        self.db.heartbeat(node, beat.free_bytes, &beat.images).await?;
        self.db.node(node).await
    }

    /// The tasks not over of a node's hosts (what a node pulls).
    pub async fn node_tasks(&self, node: &str) -> Result<Vec<Task>> {
        self.db.node(node).await?;
        self.tasks(&TaskFilter {
            node: Some(node.to_string()),
            open_only: true,
            ..TaskFilter::default()
        })
        .await
    }

    /// [`Control::node_tasks`] with each host's MACs and kernel arguments: what a node needs
    /// to answer `/boot/{mac}` (a node token cannot read hosts).
    pub async fn node_boot_tasks(&self, node: &str) -> Result<Vec<BootTask>> {
        let mut out = Vec::new();
        for task in self.node_tasks(node).await? {
            match self.db.host(&task.host).await {
                Ok(host) => out.push(BootTask {
                    task,
                    macs: host.macs,
                    kernel_args: host.kernel_args,
                }),
                // Removed since; its task is history.
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    // ---- schedules

    /// Adds a schedule: a cron line that parses, a host or a group (not both) that exists.
    pub async fn create_schedule(&self, schedule: &Schedule) -> Result<Schedule> {
        let mut schedule = schedule.clone();
        match (&schedule.group, &schedule.task.host) {
            (Some(group), None) => {
                check_name("group name", group)?;
                self.db.group(group).await?;
            }
            (None, Some(host)) => {
                self.db.host(host).await?;
            }
            _ => {
                return Err(Error::invalid(
                    "schedule",
                    "",
                    "name either a host (task.host) or a group",
                ));
            }
        }
        if schedule.task.kind == TaskKind::Multicast {
            return Err(Error::invalid("task kind", "multicast", "not supported yet"));
        }
        schedule.next_run = next_run(&schedule.when, self.clock.now())?;
        schedule.id = self.db.create_schedule(&schedule).await?;
        Ok(schedule)
    }

    /// Creates the tasks of every schedule due at `now`; moves cron schedules to their next time
    /// and retires one-offs. Returns the tasks created and the hosts skipped.
    pub async fn run_schedules(&self, now: Millis) -> Result<GroupTasks> {
        let mut report = GroupTasks {
            created: Vec::new(),
            skipped: Vec::new(),
        };
        for schedule in self.db.schedules().await? {
            let Some(due) = schedule.next_run else { continue };
            if due > now {
                continue;
            }
            let next = match &schedule.when {
                When::At(_) => None,
                When::Cron(line) => line.parse::<Cron>()?.next_after(now),
            };
            self.db.set_next_run(schedule.id, next).await?;
            if let Some(group) = &schedule.group {
                let r = self
                    .create_group_task_from(group, &schedule.task, Some(schedule.id))
                    .await?;
                report.created.extend(r.created);
                report.skipped.extend(r.skipped);
            } else if let Some(host_name) = &schedule.task.host {
                let result = match self.db.host(host_name).await {
                    Ok(host) => self.task_for_host(&schedule.task, &host, None, Some(schedule.id)).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(task) => report.created.push(task),
                    Err(e) if e.is_bad_input() => report.skipped.push(Skipped {
                        host: host_name.clone(),
                        reason: e.to_string(),
                    }),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }
}

/// Writes the dirty tasks of `lines` (see [`Control::flush`]).
async fn flush(db: &Db, lines: &mut Lines) -> Result<()> {
    let dirty = lines.take_dirty();
    let rows: Vec<(&Task, Millis)> = dirty.iter().map(|h| (&h.task, h.contact)).collect();
    let written = db.write_touches(&rows).await;
    if written.is_err() {
        // Written by the next batch (newer values win if they came meanwhile).
        lines.mark_dirty(&dirty);
    }
    written
}

fn raced(id: TaskId) -> Error {
    Error::Database(format!("task {id}: its row kept changing under the master"))
}

fn next_run(when: &When, now: Millis) -> Result<Option<Millis>> {
    Ok(match when {
        When::At(at) => Some(*at),
        When::Cron(line) => {
            let next = line.parse::<Cron>()?.next_after(now);
            if next.is_none() {
                return Err(Error::invalid("cron line", line, "never matches"));
            }
            next
        }
    })
}

fn same_name(field: &'static str, path: &str, body: &str) -> Result<()> {
    if path == body {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            body,
            format!("the record is {path:?}: names cannot change"),
        ))
    }
}

/// Writes a file only its owner can read (0600), replacing it atomically.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
