//! The master's slot lines in memory, without I/O: per node, the tasks that hold a slot or wait
//! for one (in ticket order), each with its agent's last contact.
//!
//! The master is the only writer of tasks (one master per database) and already serializes slot
//! decisions, so it keeps this copy instead of asking the tasks table on every check-in: a node's
//! line is loaded from the database the first time it is needed and then follows every change
//! the master commits ([`Lines::put`]). Progress reports and the contact of agents that ask
//! again change only the copy and are marked dirty; the master writes the dirty ones in batches
//! ([`Lines::take_dirty`]) and answers reads of them from here.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::control::model::{Millis, Task, TaskId, TaskKind, TaskState};

/// True for the states that stand in a node's line: checked in, waiting, or holding a slot.
pub fn in_line(state: &TaskState) -> bool {
    matches!(
        state,
        TaskState::CheckedIn | TaskState::WaitingForSlot | TaskState::InProgress { .. }
    )
}

/// A task in a line, and when its agent last asked or reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The task as the master sees it (ahead of the database for dirty tasks).
    pub task: Task,
    /// The agent's last contact (the master's clock).
    pub contact: Millis,
}

/// One node's slots and line.
#[derive(Debug, Clone, PartialEq)]
struct NodeLine {
    max: u32,
    enabled: bool,
    running: BTreeSet<TaskId>,
    /// Multicast tasks in progress: one stream serves them all, so they hold no slot.
    riding: BTreeSet<TaskId>,
    /// (ticket, task): first in line first.
    waiting: BTreeSet<(i64, TaskId)>,
    /// When stale agents were last looked for.
    swept: Option<Millis>,
}

/// Stale agents of a node (see [`Lines::sweep`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stale {
    /// Slot holders silent too long: (task, how long, ms).
    pub silent: Vec<(Held, Millis)>,
    /// Waiters that stopped asking.
    pub quiet: Vec<Held>,
}

/// The lines of the nodes loaded so far.
#[derive(Debug, Default)]
pub struct Lines {
    nodes: HashMap<String, NodeLine>,
    tasks: HashMap<TaskId, Held>,
    next_ticket: Option<i64>,
    dirty: HashSet<TaskId>,
    /// A writer of dirty tasks is running.
    pub flushing: bool,
}

fn ticket_key(task: &Task) -> (i64, TaskId) {
    (task.ticket.unwrap_or(i64::MAX), task.id)
}

impl Lines {
    /// True when `node`'s line is here.
    pub fn loaded(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// Sets `node`'s line from the database: its limit, and its tasks in line with their last
    /// contact. Replaces what was here for that node.
    pub fn load(&mut self, node: &str, max: u32, enabled: bool, tasks: Vec<Held>) {
        self.forget(node);
        self.nodes.insert(
            node.to_string(),
            NodeLine {
                max,
                enabled,
                running: BTreeSet::new(),
                riding: BTreeSet::new(),
                waiting: BTreeSet::new(),
                swept: None,
            },
        );
        for held in tasks {
            self.put(held.task, held.contact);
        }
    }

    /// Drops `node`'s line (it is loaded again when next needed).
    pub fn forget(&mut self, node: &str) {
        if let Some(line) = self.nodes.remove(node) {
            let held = line.running.iter().chain(&line.riding);
            for id in held.chain(line.waiting.iter().map(|(_, id)| id)) {
                self.tasks.remove(id);
                self.dirty.remove(id);
            }
        }
    }

    /// Drops every line.
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.tasks.clear();
        self.dirty.clear();
    }

    /// New limits for a loaded node.
    pub fn set_limits(&mut self, node: &str, max: u32, enabled: bool) {
        if let Some(line) = self.nodes.get_mut(node) {
            line.max = max;
            line.enabled = enabled;
        }
    }

    /// `node`'s slot limit and whether it is enabled, when loaded.
    pub fn limits(&self, node: &str) -> Option<(u32, bool)> {
        self.nodes.get(node).map(|l| (l.max, l.enabled))
    }

    /// A task in a loaded line.
    pub fn get(&self, id: TaskId) -> Option<&Held> {
        self.tasks.get(&id)
    }

    /// Stores a task as committed: in its node's line when its state stands in one (and the
    /// node is loaded), else out of every line.
    pub fn put(&mut self, task: Task, contact: Millis) {
        if let Some(old) = self.tasks.remove(&task.id)
            && let Some(line) = old.task.node.as_deref().and_then(|n| self.nodes.get_mut(n))
        {
            line.running.remove(&old.task.id);
            line.riding.remove(&old.task.id);
            line.waiting.remove(&ticket_key(&old.task));
        }
        let line = task.node.as_deref().and_then(|n| self.nodes.get_mut(n));
        match line {
            Some(line) if in_line(&task.state) => {
                if matches!(task.state, TaskState::InProgress { .. }) {
                    if task.kind == TaskKind::Multicast {
                        line.riding.insert(task.id);
                    } else {
                        line.running.insert(task.id);
                    }
                } else {
                    line.waiting.insert(ticket_key(&task));
                }
                self.tasks.insert(task.id, Held { task, contact });
            }
            _ => {
                self.dirty.remove(&task.id);
            }
        }
    }

    /// A change that need not be written at once (progress, an agent asking again): applied
    /// here and marked dirty. `None` when the task is in no loaded line.
    pub fn touch(&mut self, id: TaskId, state: Option<TaskState>, contact: Millis, at: Millis) -> Option<&Task> {
        let held = self.tasks.get_mut(&id)?;
        if let Some(state) = state {
            held.task.state = state;
        }
        held.task.updated_at = at;
        held.contact = contact;
        self.dirty.insert(id);
        Some(&held.task)
    }

    /// The dirty tasks, now clean.
    pub fn take_dirty(&mut self) -> Vec<Held> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|id| self.tasks.get(&id).cloned())
            .collect()
    }

    /// Marks again as dirty those of `tasks` (taken by [`Lines::take_dirty`], their write
    /// failed) still in a line, so the next batch writes them.
    pub fn mark_dirty(&mut self, tasks: &[Held]) {
        for held in tasks {
            if self.tasks.contains_key(&held.task.id) {
                self.dirty.insert(held.task.id);
            }
        }
    }

    /// How many tasks are dirty.
    pub fn dirty(&self) -> usize {
        self.dirty.len()
    }

    /// How many of `node`'s tasks hold slots.
    pub fn active(&self, node: &str) -> u32 {
        self.nodes
            .get(node)
            .map_or(0, |l| u32::try_from(l.running.len()).unwrap_or(u32::MAX))
    }

    /// `node`'s line, first first.
    pub fn waiting(&self, node: &str) -> Vec<TaskId> {
        self.nodes
            .get(node)
            .map(|l| l.waiting.iter().map(|(_, id)| *id).collect())
            .unwrap_or_default()
    }

    /// The first `n` of `node`'s line.
    pub fn heads(&self, node: &str, n: usize) -> Vec<TaskId> {
        self.nodes
            .get(node)
            .map(|l| l.waiting.iter().take(n).map(|(_, id)| *id).collect())
            .unwrap_or_default()
    }

    /// How many wait in `node`'s line.
    pub fn waiting_len(&self, node: &str) -> usize {
        self.nodes.get(node).map_or(0, |l| l.waiting.len())
    }

    /// How many of `node`'s line are ahead of `task`.
    pub fn ahead(&self, node: &str, task: &Task) -> usize {
        self.nodes
            .get(node)
            .map_or(0, |l| l.waiting.range(..ticket_key(task)).count())
    }

    /// The next ticket, once the first was set with [`Lines::set_next_ticket`].
    pub fn take_ticket(&mut self) -> Option<i64> {
        let ticket = self.next_ticket?;
        self.next_ticket = Some(ticket + 1);
        Some(ticket)
    }

    /// The first ticket to hand out (after every ticket in the database).
    pub fn set_next_ticket(&mut self, ticket: i64) {
        self.next_ticket = Some(ticket);
    }

    /// The agents of `node` that went stale by `now`: slot holders silent for more than
    /// `agent_timeout` (counted from `started` at the earliest) and waiters that have not asked
    /// within `waiter_timeout`. Looks at most once per `every` ms of the clock (a sweep is a walk
    /// over the node's line); `None` when it did not look.
    pub fn sweep(
        &mut self,
        node: &str,
        now: Millis,
        every: Millis,
        started: Millis,
        agent_timeout: Millis,
        waiter_timeout: Millis,
    ) -> Option<Stale> {
        let line = self.nodes.get_mut(node)?;
        if line.swept.is_some_and(|at| now >= at && now - at < every) {
            return None;
        }
        line.swept = Some(now);
        let mut stale = Stale::default();
        for id in line.running.iter().chain(&line.riding) {
            if let Some(held) = self.tasks.get(id) {
                let silent = now - held.contact.max(started);
                if silent > agent_timeout {
                    stale.silent.push((held.clone(), silent));
                }
            }
        }
        for (_, id) in &line.waiting {
            if let Some(held) = self.tasks.get(id)
                && now - held.contact > waiter_timeout
            {
                stale.quiet.push(held.clone());
            }
        }
        Some(stale)
    }

    /// The tasks here (in some loaded line) among `tasks`, replaced by this copy.
    pub fn overlay(&self, tasks: &mut [Task]) {
        for task in tasks {
            if let Some(held) = self.tasks.get(&task.id) {
                task.clone_from(&held.task);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::model::{After, TaskKind};

    fn task(id: TaskId, state: TaskState, ticket: i64) -> Task {
        Task {
            id,
            kind: TaskKind::Deploy,
            host: format!("pc-{id}"),
            image: None,
            node: Some("site".into()),
            group: None,
            schedule: None,
            after: After::Reboot,
            wake: false,
            layout: None,
            state,
            ticket: Some(ticket),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn running() -> TaskState {
        TaskState::InProgress {
            percent: 0.0,
            bytes: 0,
            rate: 0,
        }
    }

    #[test]
    fn line_follows_committed_states_in_ticket_order() {
        let mut lines = Lines::default();
        lines.load(
            "site",
            2,
            true,
            vec![
                Held {
                    task: task(3, TaskState::WaitingForSlot, 30),
                    contact: 0,
                },
                Held {
                    task: task(1, running(), 10),
                    contact: 0,
                },
                Held {
                    task: task(2, TaskState::CheckedIn, 20),
                    contact: 0,
                },
            ],
        );
        assert_eq!(lines.active("site"), 1);
        assert_eq!(lines.waiting("site"), [2, 3]);
        lines.put(task(2, running(), 20), 5);
        assert_eq!((lines.active("site"), lines.waiting("site")), (2, vec![3]));
        lines.put(task(1, TaskState::Complete, 10), 5);
        assert_eq!(lines.active("site"), 1);
        assert!(lines.get(1).is_none(), "over: out of the line");
        lines.put(task(3, TaskState::Queued, 30), 5);
        assert!(lines.waiting("site").is_empty(), "requeued: out of the line");
    }

    #[test]
    fn touches_are_dirty_until_taken_and_overlay_reads() {
        let mut lines = Lines::default();
        lines.load(
            "site",
            2,
            true,
            vec![Held {
                task: task(1, running(), 10),
                contact: 0,
            }],
        );
        let p = TaskState::InProgress {
            percent: 50.0,
            bytes: 1,
            rate: 2,
        };
        assert!(lines.touch(1, Some(p.clone()), 7, 8).is_some());
        assert!(lines.touch(9, None, 7, 8).is_none(), "not in a line");
        let mut read = [task(1, running(), 10)];
        lines.overlay(&mut read);
        assert_eq!(read[0].state, p);
        assert_eq!(lines.take_dirty().len(), 1);
        assert_eq!(lines.dirty(), 0);
        lines.touch(1, None, 9, 9);
        lines.put(task(1, TaskState::Complete, 10), 9);
        assert!(
            lines.take_dirty().is_empty(),
            "a task that left the line has nothing to flush"
        );
    }

    #[test]
    fn sweep_finds_silent_holders_and_quiet_waiters_once_per_period() {
        let mut lines = Lines::default();
        lines.load(
            "site",
            1,
            true,
            vec![
                Held {
                    task: task(1, running(), 10),
                    contact: 1_000,
                },
                Held {
                    task: task(2, TaskState::WaitingForSlot, 20),
                    contact: 5_000,
                },
            ],
        );
        let stale = lines.sweep("site", 10_000, 1_000, 0, 8_000, 4_000);
        let stale = stale.unwrap_or_default();
        assert_eq!(stale.silent.len(), 1);
        assert_eq!(stale.silent[0].1, 9_000);
        assert_eq!(stale.quiet.len(), 1);
        assert_eq!(
            lines.sweep("site", 10_500, 1_000, 0, 8_000, 4_000),
            None,
            "swept 500 ms ago"
        );
        let later = lines
            .sweep("site", 11_000, 1_000, 20_000, 8_000, 4_000)
            .unwrap_or_default();
        assert!(later.silent.is_empty(), "silence counts from the master's start");
    }
}
