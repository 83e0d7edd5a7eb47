//! The task state machine and the slot queue, without I/O: the master's service feeds them what
//! the database holds and stores what they decide.
//!
//! ```text
//! queued --check_in--> checked_in --grant--> in_progress --progress--> in_progress
//!                          |  ^                  |--complete--> complete
//!                        wait |requeue           '--fail------> failed
//!                          v  |
//!                     waiting_for_slot --grant--> in_progress
//! any state that is not over --cancel--> cancelled; checked_in/waiting --fail--> failed
//! ```

use crate::control::model::{TaskId, TaskState};
use crate::error::{Error, Result};

/// Something that happens to a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Its host's agent asked for it.
    CheckIn,
    /// No slot free: wait in line.
    Wait,
    /// A slot is the task's: start.
    Grant,
    /// The agent reports how far it is.
    Progress {
        /// 0 to 100.
        percent: f64,
        /// Bytes moved.
        bytes: u64,
        /// Bytes per second.
        rate: u64,
    },
    /// The agent is done.
    Complete,
    /// The agent gave up.
    Fail(String),
    /// An operator stopped it.
    Cancel,
    /// A waiting agent went quiet: it loses its place and starts over when it asks again.
    Requeue,
    /// A node ran the task while the master was unreachable and reports how it ended (`None`:
    /// complete; else the failure's reason), whatever state the master last knew it in.
    Reconcile(Option<String>),
    /// An agent holding a slot went silent for too long: the slot is freed.
    Silent(String),
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::CheckIn => "check_in",
            Event::Wait => "wait",
            Event::Grant => "grant",
            Event::Progress { .. } => "progress",
            Event::Complete => "complete",
            Event::Fail(_) => "fail",
            Event::Cancel => "cancel",
            Event::Requeue => "requeue",
            Event::Reconcile(_) => "reconcile",
            Event::Silent(_) => "silent",
        }
    }
}

/// The state after `event`, or [`Error::IllegalTransition`] naming the task, its state and the event.
pub fn step(task: TaskId, state: &TaskState, event: Event) -> Result<TaskState> {
    use TaskState as S;
    let next = match (state, &event) {
        (S::Queued, Event::CheckIn) => S::CheckedIn,
        (S::CheckedIn, Event::Wait) => S::WaitingForSlot,
        (S::CheckedIn | S::WaitingForSlot, Event::Grant) => S::InProgress {
            percent: 0.0,
            bytes: 0,
            rate: 0,
        },
        (S::CheckedIn | S::WaitingForSlot, Event::Requeue) => S::Queued,
        (S::InProgress { .. }, Event::Progress { percent, bytes, rate }) => {
            if !(0.0..=100.0).contains(percent) {
                return Err(Error::invalid(
                    "percent",
                    percent.to_string(),
                    "must be between 0 and 100",
                ));
            }
            S::InProgress {
                percent: *percent,
                bytes: *bytes,
                rate: *rate,
            }
        }
        (S::InProgress { .. }, Event::Complete) => S::Complete,
        (S::CheckedIn | S::WaitingForSlot | S::InProgress { .. }, Event::Fail(reason)) => {
            S::Failed { reason: reason.clone() }
        }
        (s, Event::Cancel) if !s.is_terminal() => S::Cancelled,
        (s, Event::Reconcile(None)) if !s.is_terminal() => S::Complete,
        (s, Event::Reconcile(Some(reason))) if !s.is_terminal() => S::Failed { reason: reason.clone() },
        (S::InProgress { .. }, Event::Silent(reason)) => S::Failed { reason: reason.clone() },
        _ => {
            return Err(Error::IllegalTransition {
                task,
                from: state.name().to_string(),
                to: event.name().to_string(),
            });
        }
    };
    Ok(next)
}

/// True when a task in this state holds one of its node's slots.
pub fn holds_slot(state: &TaskState) -> bool {
    matches!(state, TaskState::InProgress { .. })
}

/// The slot decision for one waiting task. `active` tasks hold slots now; `ahead` is how many
/// checked-in tasks of the same node have an earlier ticket and no slot yet. First come, first
/// served: a task starts only when every task ahead of it can start too, so nobody is overtaken;
/// a waiter that stops asking is requeued by its timeout, so nobody is blocked forever.
pub fn slot_for(max: u32, enabled: bool, active: u32, ahead: u32) -> Slot {
    let free = if enabled { max.saturating_sub(active) } else { 0 };
    if ahead < free {
        Slot::Granted
    } else {
        Slot::Waiting {
            place: ahead - free + 1,
        }
    }
}

/// See [`slot_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Start now.
    Granted,
    /// Place in line, 1 is next.
    Waiting {
        /// Place.
        place: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_path_to_complete() -> Result<()> {
        let s = step(1, &TaskState::Queued, Event::CheckIn)?;
        let s = step(1, &s, Event::Wait)?;
        let s = step(1, &s, Event::Grant)?;
        let s = step(
            1,
            &s,
            Event::Progress {
                percent: 50.0,
                bytes: 1,
                rate: 1,
            },
        )?;
        assert_eq!(step(1, &s, Event::Complete)?, TaskState::Complete);
        Ok(())
    }

    #[test]
    fn illegal_steps_name_task_and_states() {
        let e = step(7, &TaskState::Queued, Event::Complete)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(e, "task 7: cannot go from queued to complete");
        for done in [
            TaskState::Complete,
            TaskState::Cancelled,
            TaskState::Failed { reason: "x".into() },
        ] {
            assert!(step(1, &done, Event::Cancel).is_err());
            assert!(step(1, &done, Event::CheckIn).is_err());
        }
        assert!(step(1, &TaskState::CheckedIn, Event::Complete).is_err());
        let running = TaskState::InProgress {
            percent: 1.0,
            bytes: 0,
            rate: 0,
        };
        assert!(
            step(
                1,
                &running,
                Event::Progress {
                    percent: 101.0,
                    bytes: 0,
                    rate: 0
                }
            )
            .is_err()
        );
    }

    #[test]
    fn slots_go_in_order() {
        assert_eq!(slot_for(2, true, 0, 0), Slot::Granted);
        assert_eq!(slot_for(2, true, 0, 1), Slot::Granted);
        assert_eq!(slot_for(2, true, 1, 1), Slot::Waiting { place: 1 });
        assert_eq!(slot_for(2, true, 2, 0), Slot::Waiting { place: 1 });
        assert_eq!(slot_for(2, true, 2, 3), Slot::Waiting { place: 4 });
        assert_eq!(slot_for(2, false, 0, 0), Slot::Waiting { place: 1 });
    }
}
