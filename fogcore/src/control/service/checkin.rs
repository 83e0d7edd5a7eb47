//! Check-in and the slot lines: an agent asks for its task and gets a slot or its place in line,
//! reports progress, checks out. Decisions are made on each node's line in memory, under one
//! lock, and written before the answer (progress in batches).

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{Control, FLUSH_EVERY, MacEntry, SWEEP_EVERY_MS, lock};
use crate::control::api::Caller;
use crate::control::db::{Db, MacLookup, TaskChange, TaskEventRow};
use crate::control::line::{Held, Lines, in_line};
use crate::control::model::{
    CheckIn, CheckInReply, CheckOut, Millis, ProgressReport, SlotState, Task, TaskId, TaskKind, TaskState,
    canonical_mac, canonical_uuid,
};
use crate::control::tasks::{Event, Slot, slot_for, step};
use crate::error::{Error, Result};

/// A decision about one task, before it is committed.
#[derive(Debug, Clone)]
pub(super) struct Change {
    task: Task,
    from: &'static str,
    contact: Millis,
    /// When the decision was made (the task's `updated_at`).
    now: Millis,
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
    pub(super) fn new(task: &Task, next: TaskState, contact: Millis, now: Millis, detail: Option<String>) -> Change {
        let mut change = Change {
            task: task.clone(),
            from: task.state.name(),
            contact,
            now,
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
        self.task.updated_at = self.now;
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

pub(super) fn raced(id: TaskId) -> Error {
    Error::Database(format!("task {id}: its row kept changing under the master"))
}

impl Control {
    pub(super) fn check_node_caller(caller: &Caller, node: &str, host: &str) -> Result<()> {
        match caller.node() {
            Some(me) if me != node => Err(Error::Forbidden(format!(
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
    pub(super) async fn check_in_locked(
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
                (None, Caller::Node(me) | Caller::Task { node: me, .. }) => me.clone(),
                (None, Caller::User { .. }) => {
                    return Err(Error::conflict(
                        "host",
                        &found.host,
                        "no node images it: set its node, or its address inside a node's subnet",
                    ));
                }
            },
        };
        Control::check_node_caller(caller, &node_name, &found.host)?;
        Control::check_own_task(caller, task.id)?;
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
                changes.push(Change::new(&held.task, next, held.contact, now, Some(reason)));
            }
            for held in stale.quiet {
                let next = step(held.task.id, &held.task.state, Event::Requeue)?;
                let mut change = Change::new(
                    &held.task,
                    next,
                    held.contact,
                    now,
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
            now,
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
        let node_enabled = lines.limits(&node_name).is_some_and(|(_, enabled)| enabled);
        if task.kind == TaskKind::Multicast && node_enabled {
            // One stream serves every host of the session: it takes no slot and waits for none
            // (a disabled node images none, as for the others).
            let next = step(task.id, &mine.task.state, Event::Grant)?;
            mine.step(next, None);
            if !self.commit(lines, vec![mine.clone()]).await? {
                return Ok(None);
            }
            return Ok(Some(CheckInReply {
                task: mine.task,
                slot: SlotState::Granted,
            }));
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
                changes.push(Change::new(&held.task, next, held.contact, now, None));
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
            let task = lines.touch(task.id, None, now, now).cloned().unwrap_or(mine.task);
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
            Slot::Granted => Err(Error::Internal(format!(
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
    pub(super) async fn ensure_line(&self, lines: &mut Lines, node: &str) -> Result<()> {
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
    pub(super) async fn current_task(&self, lines: &mut Lines, id: TaskId) -> Result<(Task, Millis)> {
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
    pub(super) async fn ticket(&self, lines: &mut Lines) -> Result<i64> {
        if let Some(ticket) = lines.take_ticket() {
            return Ok(ticket);
        }
        lines.set_next_ticket(self.db.next_ticket().await?);
        lines
            .take_ticket()
            .ok_or_else(|| Error::internal("no ticket after setting the next one"))
    }

    /// Writes decisions in one transaction, then applies them to the lines. False (nothing
    /// written) when a task's row had changed under the master; then, and on errors, the lines
    /// of the nodes involved are dropped, to be loaded again from the database.
    pub(super) async fn commit(&self, lines: &mut Lines, changes: Vec<Change>) -> Result<bool> {
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
    pub(super) async fn commit_one(&self, lines: &mut Lines, change: Change) -> Result<Option<Task>> {
        let task = change.task.clone();
        Ok(self.commit(lines, vec![change]).await?.then_some(task))
    }

    /// Starts the writer of dirty tasks unless it runs: every [`FLUSH_EVERY`] it writes them,
    /// under the line's lock (one writer at a time, so SQLite never waits on its own lock);
    /// it stops when nothing is dirty, or when this `Control` is gone.
    pub(super) fn start_flusher(&self, lines: &mut Lines) {
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

    /// Refused unless `caller` may act on `task`: an admin, the task's node, or the token of
    /// this very task.
    pub(super) fn check_agent(caller: &Caller, task: &Task) -> Result<()> {
        if let Some(me) = caller.node() {
            match &task.node {
                Some(node) => Control::check_node_caller(caller, node, &task.host)?,
                None => {
                    return Err(Error::Forbidden(format!("task {} is not on node {me}", task.id)));
                }
            }
        }
        Control::check_own_task(caller, task.id)
    }

    /// A task token acts for its own task only.
    pub(super) fn check_own_task(caller: &Caller, id: TaskId) -> Result<()> {
        match caller {
            Caller::Task { task, .. } if *task != id => Err(Error::Forbidden(format!(
                "the token of task {task} cannot act on task {id}"
            ))),
            _ => Ok(()),
        }
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
        if let Some(task) = lines.touch(id, Some(next.clone()), now, now).cloned() {
            self.start_flusher(&mut lines);
            return Ok(task);
        }
        // Running but in no line (it has no node): written at once.
        let change = Change::new(&task, next, now, now, None);
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
            let now = self.clock.now();
            let change = Change::new(&task, next, now, now, None);
            if let Some(task) = self.commit_one(&mut lines, change).await? {
                return Ok(task);
            }
        }
        Err(raced(id))
    }
}
