//! Live task progress for open pages: one loop per master reads the open tasks once a second
//! (from the master's memory, where progress reports land) and renders each changed row once;
//! every open page's stream (`GET /tasks/live`, server-sent events) forwards the rows that changed
//! since it last sent, so a task's row is pushed at most once a second however often its agent
//! reports, and ten open pages cost one read. A task that ends is pushed once more, in its final
//! state, and then the set of rows is refreshed: nothing stays "in progress" after the end.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, response::IntoResponse, response::Response};
use futures_util::StreamExt;
use futures_util::stream::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::view;
use super::{App, Ctx};
use crate::control::model::{LayoutMode, Role, Task, TaskFilter, TaskId, TaskState};
use crate::control::service::Control;

/// How often the open tasks are read.
pub(super) const TICK: Duration = Duration::from_secs(1);

/// The most open tasks one page shows live.
const LIVE_MAX: u32 = 1000;

/// One task's row as the tasks page shows it.
#[derive(Debug, Clone)]
pub(super) struct LiveRow {
    pub(super) id: TaskId,
    pub(super) host: String,
    pub(super) kind: &'static str,
    pub(super) image: String,
    /// A deploy's layout.
    pub(super) layout: Option<&'static str>,
    pub(super) node: String,
    pub(super) state: String,
    pub(super) class: &'static str,
    /// 0 to 100, when it runs.
    pub(super) percent: Option<f64>,
    pub(super) rate: String,
    pub(super) eta: String,
    /// Its place among its node's waiting agents (1: next).
    pub(super) place: Option<usize>,
    pub(super) open: bool,
    /// The row rendered for people who may cancel, and for those who may not.
    html: [String; 2],
}

#[derive(Template)]
#[template(path = "task_row.html")]
struct RowTemplate<'a> {
    row: &'a LiveRow,
    operate: bool,
}

impl LiveRow {
    fn of(task: &Task, place: Option<usize>) -> LiveRow {
        let (percent, rate, eta) = match &task.state {
            TaskState::InProgress { percent, bytes, rate } => {
                let eta = if *rate > 0 && *percent > 0.5 {
                    let total = *bytes as f64 * 100.0 / percent;
                    let left_ms = (total - *bytes as f64).max(0.0) / *rate as f64 * 1000.0;
                    view::duration(left_ms as i64)
                } else {
                    String::new()
                };
                (Some(*percent), format!("{}/s", view::bytes(*rate)), eta)
            }
            _ => (None, String::new(), String::new()),
        };
        let mut row = LiveRow {
            id: task.id,
            host: task.host.clone(),
            kind: task.kind.as_str(),
            image: task.image.clone().unwrap_or_default(),
            layout: task.layout.map(LayoutMode::as_str),
            node: task.node.clone().unwrap_or_default(),
            state: view::state(task),
            class: view::state_class(&task.state),
            percent,
            rate,
            eta,
            place,
            open: !task.state.is_terminal(),
            html: [String::new(), String::new()],
        };
        for (i, operate) in [false, true].into_iter().enumerate() {
            row.html[i] = RowTemplate { row: &row, operate }
                .render()
                .unwrap_or_else(|e| format!("<tr><td>{e}</td></tr>"));
        }
        row
    }

    /// The row's HTML for a person of this role.
    pub(super) fn html(&self, role: Role) -> &str {
        &self.html[usize::from(role >= Role::Operator)]
    }

    fn width(&self) -> String {
        format!("{:.1}", self.percent.unwrap_or(0.0).clamp(0.0, 100.0))
    }
}

/// The open tasks, newest first, as rows (waiting agents numbered in their node's line).
pub(super) async fn open_rows(control: &Control) -> crate::error::Result<Vec<LiveRow>> {
    let filter = TaskFilter {
        open_only: true,
        limit: Some(LIVE_MAX),
        ..TaskFilter::default()
    };
    let tasks = control.task_page(&filter).await?.items;
    Ok(rows_of(&tasks))
}

fn rows_of(tasks: &[Task]) -> Vec<LiveRow> {
    let mut lines: HashMap<&str, Vec<(i64, TaskId)>> = HashMap::new();
    for task in tasks {
        if let (TaskState::WaitingForSlot, Some(node), Some(ticket)) = (&task.state, &task.node, task.ticket) {
            lines.entry(node).or_default().push((ticket, task.id));
        }
    }
    for line in lines.values_mut() {
        line.sort_unstable();
    }
    tasks
        .iter()
        .map(|task| {
            let place = task.node.as_deref().and_then(|node| {
                lines
                    .get(node)
                    .and_then(|line| line.iter().position(|(_, id)| *id == task.id))
                    .map(|p| p + 1)
            });
            LiveRow::of(task, place)
        })
        .collect()
}

/// What the loop last read: the open tasks' rows, and the final rows of tasks that just ended.
#[derive(Debug, Default)]
struct Snapshot {
    rows: Vec<Arc<LiveRow>>,
    /// Bumped when the set of open tasks changed (pages reload their table).
    generation: u64,
}

/// The one reading loop of a master, running while some page is open.
pub(super) struct Feed {
    control: Weak<Control>,
    sender: Arc<Mutex<Option<watch::Sender<Arc<Snapshot>>>>>,
    /// Cancelled when the master stops: every stream ends, so shutdown does not wait on them.
    stop: CancellationToken,
}

impl Feed {
    pub(super) fn new(control: Weak<Control>, stop: CancellationToken) -> Feed {
        Feed {
            control,
            sender: Arc::new(Mutex::new(None)),
            stop,
        }
    }

    /// The snapshots, starting the loop if no page was open.
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        let mut sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = sender.as_ref() {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        *sender = Some(tx.clone());
        tokio::spawn(read_loop(self.control.clone(), tx, self.sender.clone()));
        rx
    }
}

async fn read_loop(
    control: Weak<Control>,
    tx: watch::Sender<Arc<Snapshot>>,
    slot: Arc<Mutex<Option<watch::Sender<Arc<Snapshot>>>>>,
) {
    let mut tick = tokio::time::interval(TICK);
    let mut last: HashMap<TaskId, Arc<LiveRow>> = HashMap::new();
    let mut generation = 0;
    loop {
        tick.tick().await;
        // Stop when no page listens (or the master is gone); under the lock, so no page
        // subscribes to a loop that has ended.
        let control = {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            match control.upgrade() {
                Some(control) if tx.receiver_count() > 0 => control,
                _ => {
                    *slot = None;
                    return;
                }
            }
        };
        let rows = match open_rows(&control).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("web: reading open tasks: {e}");
                continue;
            }
        };
        let open: HashSet<TaskId> = rows.iter().map(|r| r.id).collect();
        let mut next: Vec<Arc<LiveRow>> = Vec::with_capacity(rows.len());
        for row in rows {
            // Unchanged rows keep their Arc: pages compare by pointer.
            match last.get(&row.id) {
                Some(old) if old.html[1] == row.html[1] => next.push(old.clone()),
                _ => next.push(Arc::new(row)),
            }
        }
        // Tasks that ended since: their final state, once. (One still open but past the
        // page's cap is not an end.)
        let mut changed = open.iter().any(|id| !last.contains_key(id));
        for id in last.keys().filter(|id| !open.contains(id)) {
            match control.task(*id).await {
                Ok(task) if task.state.is_terminal() => {
                    next.push(Arc::new(LiveRow::of(&task, None)));
                    changed = true;
                }
                Ok(_) => {}
                Err(_) => changed = true,
            }
        }
        if changed {
            generation += 1;
        }
        last = next
            .iter()
            .filter(|r| r.open && open.contains(&r.id))
            .map(|r| (r.id, r.clone()))
            .collect();
        tx.send_replace(Arc::new(Snapshot { rows: next, generation }));
    }
}

/// `GET /tasks/live`: the page's stream. Events `task-ID` carry a row's new HTML (swapped in
/// place); `tasks` says the set of open tasks changed (the page reloads its table). The first
/// event is always `tasks`: what changed between the page's rendering and the stream (or while
/// the browser reconnected) reaches it so, and the rows of the loop's last reading count as sent.
pub(super) async fn stream(State(web): State<App>, Extension(ctx): Extension<Ctx>) -> Response {
    let rx = web.live.subscribe();
    let role = ctx.session.user.role;
    let (sent, generation) = {
        let current = rx.borrow();
        let sent: HashMap<TaskId, Arc<LiveRow>> = current.rows.iter().map(|r| (r.id, r.clone())).collect();
        (sent, Some(current.generation))
    };
    let state = (rx, sent, generation);
    let events = futures_util::stream::unfold(state, move |(mut rx, mut sent, mut generation)| async move {
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            let snapshot = rx.borrow_and_update().clone();
            let mut batch = Vec::new();
            for row in &snapshot.rows {
                if sent.get(&row.id).is_some_and(|old| Arc::ptr_eq(old, row)) {
                    continue;
                }
                sent.insert(row.id, row.clone());
                batch.push(Event::default().event(format!("task-{}", row.id)).data(row.html(role)));
            }
            if generation.is_some_and(|g| g != snapshot.generation) {
                batch.push(Event::default().event("tasks").data(snapshot.generation.to_string()));
            }
            generation = Some(snapshot.generation);
            sent.retain(|id, _| snapshot.rows.iter().any(|r| r.id == *id));
            if !batch.is_empty() {
                return Some((batch, (rx, sent, generation)));
            }
        }
    });
    let first = futures_util::stream::once(async { vec![Event::default().event("tasks").data("0")] });
    let events = flatten(first.chain(events)).take_until(web.live.stop.clone().cancelled_owned());
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn flatten(
    batches: impl Stream<Item = Vec<Event>> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    batches.flat_map(|batch| futures_util::stream::iter(batch.into_iter().map(Ok)))
}
