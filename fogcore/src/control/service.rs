//! What the master does, independent of HTTP: checks every write, picks each host's node, runs
//! the task state machine and the slot queue, fires schedules, issues and checks tokens. The REST
//! API ([`crate::control::master`]) and in-process callers (tests, later Python) use it alike.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::control::cron::Cron;
use crate::control::db::{Db, TaskFilter, TaskUpdate, TokenRole, now_ms};
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

/// The master's logic over its database.
pub struct Control {
    db: Db,
    clock: Arc<dyn Clock>,
    /// Serializes check-ins, progress, check-outs and cancels: slot decisions see one line.
    line: Mutex<()>,
    waiter_timeout: Millis,
    agent_timeout: Millis,
    /// When this master started: silence while it was down is nobody's fault.
    started: Millis,
    store: std::sync::OnceLock<Arc<dyn crate::imaging::replica::ImageStore>>,
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
            line: Mutex::new(()),
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
        match self.db.token_role(&token_hash(token)).await? {
            Some(TokenRole::Admin) => Ok(Caller::Admin),
            Some(TokenRole::Node(node)) => Ok(Caller::Node(node)),
            None => Err(Error::Unauthorized("unknown token".into())),
        }
    }

    async fn authenticate_task(&self, rest: &str) -> Result<Caller> {
        let refused = || Error::Unauthorized("unknown task token".into());
        let (id, mac) = rest.split_once('_').ok_or_else(refused)?;
        let id: TaskId = id.parse().map_err(|_| refused())?;
        let mac = blake3::Hash::from_hex(mac).map_err(|_| refused())?;
        let task = match self.db.task(id).await {
            Ok(task) => task,
            Err(Error::NotFound { .. }) => return Err(refused()),
            Err(e) => return Err(e),
        };
        let node = task.node.clone().ok_or_else(refused)?;
        let mut valid = false;
        for hash in self.db.node_token_hashes(&node).await? {
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
        self.db.update_node(node).await?;
        self.db.node(name).await
    }

    /// Removes a node; refused while it has tasks not over.
    pub async fn delete_node(&self, name: &str) -> Result<()> {
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
        self.db.delete_node(name).await
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
        self.db.host(name).await
    }

    /// Removes a host; refused while it has a task not over.
    pub async fn delete_host(&self, name: &str) -> Result<()> {
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
        if let Some(node) = &host.node {
            return Ok(Some(node.clone()));
        }
        let Some(address) = address.or(host.address) else {
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
        self.db.tasks(filter).await
    }

    /// Cancels a task that is not over; frees its slot.
    pub async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        let _line = self.line.lock().await;
        let task = self.db.task(id).await?;
        let next = step(id, &task.state, Event::Cancel)?;
        self.db
            .set_task_state(&task, &next, TaskUpdate::keep(&task, Some("cancelled by an admin")))
            .await
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
    pub async fn check_in(&self, caller: &Caller, check_in: &CheckIn) -> Result<CheckInReply> {
        let mac = canonical_mac(&check_in.mac)?;
        let uuid = check_in.uuid.as_deref().map(canonical_uuid).transpose()?;
        let _line = self.line.lock().await;
        let mut host = self.db.host_by_mac(&mac).await?;
        if let (Some(uuid), None) = (&uuid, &host.uuid) {
            host.uuid = Some(uuid.clone());
            self.db.update_host(&host).await?;
        }
        let task = self
            .db
            .open_task_for_host(&host.name)
            .await?
            .ok_or_else(|| Error::not_found("task for host", &host.name))?;
        let node_name = match (&task.node, self.node_for(&host, check_in.address).await?, caller) {
            (Some(node), _, _) => node.clone(),
            (None, Some(node), _) => node,
            (None, None, Caller::Node(me)) => me.clone(),
            (None, None, Caller::Admin) => {
                return Err(Error::conflict(
                    "host",
                    &host.name,
                    "no node images it: set its node, or its address inside a node's subnet",
                ));
            }
        };
        Control::check_node_caller(caller, &node_name, &host.name)?;
        if let TaskState::InProgress { .. } = task.state {
            // The agent restarted mid-task (or asks again): it holds its slot still. Nothing to
            // decide, so the line is left alone.
            return Ok(CheckInReply {
                task,
                slot: SlotState::Granted,
            });
        }
        let node = self.db.node(&node_name).await?;
        let now = self.clock.now();
        let requeued = self.requeue_quiet(&node_name, now).await?;
        let update = |ticket| TaskUpdate {
            ticket,
            node: Some(node_name.as_str()),
            contact: Some(now),
            detail: None,
        };
        // The task may have been requeued just now: then read it again.
        let task = if requeued.contains(&task.id) {
            self.db.task(task.id).await?
        } else {
            task
        };
        let task = match &task.state {
            TaskState::Queued => {
                let ticket = self.db.next_ticket().await?;
                let next = step(task.id, &task.state, Event::CheckIn)?;
                self.db.set_task_state(&task, &next, update(Some(ticket))).await?
            }
            TaskState::InProgress { .. } => {
                // The agent restarted mid-task: it holds its slot still.
                return Ok(CheckInReply {
                    task,
                    slot: SlotState::Granted,
                });
            }
            _ => {
                let state = task.state.clone();
                self.db.set_task_state(&task, &state, update(task.ticket)).await?
            }
        };
        let line = self.db.node_line(&node_name).await?;
        let ahead = line
            .waiting
            .iter()
            .position(|(id, _)| *id == task.id)
            .unwrap_or(line.waiting.len());
        let ahead = u32::try_from(ahead).unwrap_or(u32::MAX);
        // Free slots go to the head of the line, all of them now, so tasks start in line
        // order even when the agent first in line asks a moment after the one behind it.
        let free = u32::try_from(line.waiting.len()).unwrap_or(u32::MAX).min(
            match slot_for(node.max_clients, node.enabled, line.active, 0) {
                Slot::Granted => node.max_clients.saturating_sub(line.active),
                Slot::Waiting { .. } => 0,
            },
        );
        let mut mine = None;
        for (id, _) in line.waiting.iter().take(free as usize) {
            let head = if *id == task.id {
                task.clone()
            } else {
                self.db.task(*id).await?
            };
            let next = step(head.id, &head.state, Event::Grant)?;
            let started = self
                .db
                .set_task_state(
                    &head,
                    &next,
                    TaskUpdate {
                        ticket: head.ticket,
                        node: Some(node_name.as_str()),
                        ..TaskUpdate::default()
                    },
                )
                .await?;
            if started.id == task.id {
                mine = Some(started);
            }
        }
        if let Some(task) = mine {
            return Ok(CheckInReply {
                task,
                slot: SlotState::Granted,
            });
        }
        match slot_for(node.max_clients, node.enabled, line.active, ahead) {
            Slot::Granted => Err(Error::Database(format!(
                "task {}: a free slot was not handed out",
                task.id
            ))),
            Slot::Waiting { place } => {
                let task = if task.state == TaskState::CheckedIn {
                    let next = step(task.id, &task.state, Event::Wait)?;
                    self.db.set_task_state(&task, &next, update(task.ticket)).await?
                } else {
                    task
                };
                Ok(CheckInReply {
                    task,
                    slot: SlotState::Waiting {
                        place,
                        active: line.active,
                        max: node.max_clients,
                    },
                })
            }
        }
    }

    /// Waiters of `node` that have not asked within the timeout lose their place (returned);
    /// slot holders silent for the agent timeout (counted from this master's start at the
    /// earliest) fail.
    async fn requeue_quiet(&self, node: &str, now: Millis) -> Result<Vec<TaskId>> {
        for (id, contact) in self.db.node_running(node).await? {
            let silent = now - contact.max(self.started);
            if silent > self.agent_timeout {
                let task = self.db.task(id).await?;
                let reason = format!("the agent went silent for {} s while holding a slot", silent / 1000);
                let next = step(id, &task.state, Event::Silent(reason.clone()))?;
                self.db
                    .set_task_state(&task, &next, TaskUpdate::keep(&task, Some(&reason)))
                    .await?;
            }
        }
        let mut requeued = Vec::new();
        for (id, contact) in self.db.node_waiting(node).await? {
            if now - contact > self.waiter_timeout {
                let task = self.db.task(id).await?;
                let next = step(id, &task.state, Event::Requeue)?;
                self.db
                    .set_task_state(
                        &task,
                        &next,
                        TaskUpdate {
                            node: task.node.as_deref(),
                            detail: Some("the agent stopped asking: lost its place in line"),
                            ..TaskUpdate::default()
                        },
                    )
                    .await?;
                requeued.push(id);
            }
        }
        Ok(requeued)
    }

    async fn agent_task(&self, caller: &Caller, id: TaskId) -> Result<Task> {
        let task = self.db.task(id).await?;
        if let Caller::Node(me) = caller {
            match &task.node {
                Some(node) => Control::check_node_caller(caller, node, &task.host)?,
                None => {
                    return Err(Error::Forbidden(format!("task {id} is not on node {me}")));
                }
            }
        }
        Ok(task)
    }

    /// An agent reports progress on its running task.
    pub async fn progress(&self, caller: &Caller, id: TaskId, report: &ProgressReport) -> Result<Task> {
        let _line = self.line.lock().await;
        let task = self.agent_task(caller, id).await?;
        let next = step(
            id,
            &task.state,
            Event::Progress {
                percent: report.percent,
                bytes: report.bytes,
                rate: report.rate,
            },
        )?;
        self.db
            .set_task_state(&task, &next, TaskUpdate::contact(&task, self.clock.now()))
            .await
    }

    /// An agent's last word: complete or failed; frees the slot, stores an inventory it sent.
    pub async fn check_out(&self, caller: &Caller, id: TaskId, out: &CheckOut) -> Result<Task> {
        let _line = self.line.lock().await;
        let task = self.agent_task(caller, id).await?;
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
        self.db
            .set_task_state(&task, &next, TaskUpdate::contact(&task, self.clock.now()))
            .await
    }

    /// A node's heartbeat.
    pub async fn heartbeat(&self, node: &str, beat: &Heartbeat) -> Result<Node> {
        self.db.heartbeat(node, beat.free_bytes, &beat.images).await?;
        self.db.node(node).await
    }

    /// The tasks not over of a node's hosts (what a node pulls).
    pub async fn node_tasks(&self, node: &str) -> Result<Vec<Task>> {
        self.db.node(node).await?;
        self.db
            .tasks(&TaskFilter {
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
