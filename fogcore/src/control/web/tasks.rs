//! Tasks: the open ones with live progress (see `live`), cancel behind a confirmation; scheduled
//! tasks to add and remove; the history with filters, paged, and as CSV.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Router};

use super::live::{self, LiveRow};
use super::view;
use super::{App, Ctx, Fields, Layout, WebResult, done, filled, page, percent_encode};
use crate::control::model::{After, Millis, NewTask, Schedule, Task, TaskFilter, TaskId, TaskKind, When};
use crate::error::Error;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/tasks", get(tasks))
        .route("/tasks/live", get(live::stream))
        .route("/tasks/active", get(active))
        .route("/tasks/history.csv", get(history_csv))
        .route("/tasks/{id}/cancel", get(confirm_cancel).post(cancel))
        .route("/schedules", post(add_schedule))
        .route("/schedules/{id}/delete", post(delete_schedule))
}

/// The history's filter, from the URL.
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct HistoryFilter {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    image: Option<String>,
    /// Days back (a box that may come empty).
    #[serde(default)]
    days: Option<String>,
    #[serde(default)]
    after: Option<TaskId>,
}

impl HistoryFilter {
    fn filter(&self, now: Millis, limit: u32) -> Result<TaskFilter, Error> {
        let kind = filled(&self.kind).as_deref().map(TaskKind::parse).transpose()?;
        let days = match filled(&self.days) {
            None => None,
            Some(d) => Some(
                d.parse::<i64>()
                    .ok()
                    .filter(|d| (1..=36_500).contains(d))
                    .ok_or_else(|| Error::invalid("days", &d, "a whole number of days, 1 to 36,500"))?,
            ),
        };
        Ok(TaskFilter {
            state: filled(&self.state),
            host: filled(&self.host),
            image: filled(&self.image),
            kind,
            since: days.map(|d| now - d * 86_400_000),
            limit: Some(limit),
            after: self.after,
            ..TaskFilter::default()
        })
    }

    /// The URL's query of this filter (without the cursor).
    fn query(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("state", &self.state),
            ("kind", &self.kind),
            ("host", &self.host),
            ("image", &self.image),
        ] {
            if let Some(v) = filled(v) {
                parts.push(format!("{k}={}", percent_encode(&v)));
            }
        }
        if let Some(d) = filled(&self.days) {
            parts.push(format!("days={}", percent_encode(&d)));
        }
        parts.join("&")
    }

    fn text(&self, which: &str) -> String {
        match which {
            "state" => filled(&self.state),
            "kind" => filled(&self.kind),
            "host" => filled(&self.host),
            "days" => filled(&self.days),
            _ => filled(&self.image),
        }
        .unwrap_or_default()
    }
}

struct HistoryRow {
    task: Task,
    state: String,
    class: &'static str,
    created: String,
    updated: String,
}

struct ScheduleRow {
    schedule: Schedule,
    when: String,
    next: String,
    what: String,
}

#[derive(Template)]
#[template(path = "tasks.html")]
struct TasksPage {
    layout: Layout,
    active: Vec<LiveRow>,
    schedules: Vec<ScheduleRow>,
    history: Vec<HistoryRow>,
    filter: HistoryFilter,
    next: Option<String>,
    csv: String,
    kinds: Vec<&'static str>,
    states: [&'static str; 7],
}

impl TasksPage {
    fn row(&self, row: &LiveRow) -> String {
        row.html(self.layout.role).to_string()
    }
}

const HISTORY_ROWS: u32 = 50;

const KINDS: [TaskKind; 7] = [
    TaskKind::Deploy,
    TaskKind::Multicast,
    TaskKind::Capture,
    TaskKind::Inventory,
    TaskKind::WipeFast,
    TaskKind::WipeFull,
    TaskKind::Debug,
];

async fn tasks(
    State(web): State<App>,
    Extension(ctx): Extension<Ctx>,
    Query(filter): Query<HistoryFilter>,
) -> WebResult {
    let now = web.control.clock().now();
    let found = web.control.task_page(&filter.filter(now, HISTORY_ROWS)?).await?;
    let query = filter.query();
    let next = found.next.map(|after| {
        if query.is_empty() {
            format!("/tasks?after={after}#history")
        } else {
            format!("/tasks?{query}&after={after}#history")
        }
    });
    let history = found
        .items
        .into_iter()
        .map(|task| HistoryRow {
            state: view::state(&task),
            class: view::state_class(&task.state),
            created: view::when(task.created_at),
            updated: view::when(task.updated_at),
            task,
        })
        .collect();
    let schedules = web
        .control
        .schedules()
        .await?
        .into_iter()
        .map(|s| ScheduleRow {
            when: match &s.when {
                When::At(at) => format!("once at {}", view::when(*at)),
                When::Cron(line) => format!("cron {line} (UTC)"),
            },
            next: s.next_run.map(view::when).unwrap_or_else(|| "done".into()),
            what: format!(
                "{} {}{}",
                s.task.kind.as_str(),
                match (&s.group, &s.task.host) {
                    (Some(g), _) => format!("group {g}"),
                    (None, Some(h)) => format!("host {h}"),
                    (None, None) => String::new(),
                },
                s.task
                    .image
                    .as_deref()
                    .map(|i| format!(" with {i}"))
                    .unwrap_or_default()
            ),
            schedule: s,
        })
        .collect();
    Ok(page(TasksPage {
        layout: ctx.layout("tasks"),
        active: live::open_rows(&web.control).await?,
        schedules,
        history,
        csv: if query.is_empty() {
            "/tasks/history.csv".into()
        } else {
            format!("/tasks/history.csv?{query}")
        },
        filter,
        next,
        kinds: KINDS.iter().map(|k| k.as_str()).collect(),
        states: crate::control::model::STATE_NAMES,
    }))
}

#[derive(Template)]
#[template(path = "tasks_active.html")]
struct ActiveRows {
    layout: Layout,
    active: Vec<LiveRow>,
}

impl ActiveRows {
    fn row(&self, row: &LiveRow) -> String {
        row.html(self.layout.role).to_string()
    }
}

/// The open tasks' table body alone: what a page reloads when the set of open tasks changes.
async fn active(State(web): State<App>, Extension(ctx): Extension<Ctx>) -> WebResult {
    Ok(page(ActiveRows {
        layout: ctx.layout("tasks"),
        active: live::open_rows(&web.control).await?,
    }))
}

/// The history as CSV (every page of it, up to 100,000 rows).
async fn history_csv(State(web): State<App>, Query(filter): Query<HistoryFilter>) -> WebResult {
    let now = web.control.clock().now();
    let mut query = filter.filter(now, 1000)?;
    let mut out = view::csv_row(
        &[
            "id", "kind", "host", "image", "node", "group", "state", "created", "updated",
        ]
        .map(String::from),
    );
    for _ in 0..100 {
        let found = web.control.task_page(&query).await?;
        for t in &found.items {
            out.push_str(&view::csv_row(&[
                t.id.to_string(),
                t.kind.as_str().into(),
                t.host.clone(),
                t.image.clone().unwrap_or_default(),
                t.node.clone().unwrap_or_default(),
                t.group.clone().unwrap_or_default(),
                view::state(t),
                crate::clock::utc_text(t.created_at),
                crate::clock::utc_text(t.updated_at),
            ]));
        }
        match found.next.and_then(|n| n.parse().ok()) {
            Some(after) => query.after = Some(after),
            None => break,
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"fog-tasks.csv\""),
        ],
        out,
    )
        .into_response())
}

fn task_id(text: &str) -> Result<TaskId, Error> {
    text.parse()
        .map_err(|_| Error::invalid("task id", text, "not a number"))
}

async fn confirm_cancel(State(web): State<App>, Extension(ctx): Extension<Ctx>, Path(id): Path<String>) -> WebResult {
    let task = web.control.task(task_id(&id)?).await?;
    let question = format!(
        "Cancel task {} ({} of {}, {})?",
        task.id,
        task.kind.as_str(),
        task.host,
        view::state(&task)
    );
    let fields = Fields::default();
    Ok(page(super::hosts::confirm(
        ctx.layout("tasks"),
        question,
        format!("/tasks/{id}/cancel"),
        &fields,
        "/tasks".into(),
    )))
}

async fn cancel(State(web): State<App>, Path(id): Path<String>) -> WebResult {
    let task = web.control.cancel_task(task_id(&id)?).await?;
    Ok(done(
        &web,
        "/tasks",
        id,
        format!("Task {} ({} of {}) cancelled.", task.id, task.kind.as_str(), task.host),
    ))
}

/// A schedule from the form: once at a time (`YYYY-MM-DDTHH:MM`, UTC) or by a cron line, for a
/// host or a group.
async fn add_schedule(State(web): State<App>, fields: Fields) -> WebResult {
    let when = match (fields.get("at"), fields.get("cron")) {
        (Some(at), None) => When::At(parse_utc(at)?),
        (None, Some(cron)) => When::Cron(cron.to_string()),
        _ => return Err(Error::invalid("when", "", "give either a time or a cron line").into()),
    };
    let kind = TaskKind::parse(fields.need("kind")?)?;
    let schedule = Schedule {
        id: 0,
        when,
        task: NewTask {
            kind,
            host: fields.get("host").map(str::to_string),
            image: fields.get("image").map(str::to_string),
            after: After::default(),
            wake: fields.get("wake").is_some(),
            layout: None,
        },
        group: fields.get("group").map(str::to_string),
        next_run: None,
    };
    let made = web.control.create_schedule(&schedule).await?;
    Ok(done(
        &web,
        "/tasks#schedules",
        made.id.to_string(),
        format!("Schedule {} added.", made.id),
    ))
}

/// `2026-12-06T17:30` (as a datetime-local field sends it), read as UTC.
fn parse_utc(text: &str) -> Result<Millis, Error> {
    let bad = || Error::invalid("time", text, "write it YYYY-MM-DDTHH:MM (UTC)");
    let (date, time) = text.split_once(['T', ' ']).ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let ([y, m, day], [hh, mm, ..]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    if !(1970..=9999).contains(y)
        || !(1..=12).contains(m)
        || !(1..=31).contains(day)
        || !(0..24).contains(hh)
        || !(0..60).contains(mm)
    {
        return Err(bad());
    }
    let days = crate::clock::days_from_civil(*y, *m as u32, *day as u32);
    Ok(((days * 24 + hh) * 60 + mm) * 60_000)
}

async fn delete_schedule(State(web): State<App>, Path(id): Path<String>) -> WebResult {
    let number: i64 = id
        .parse()
        .map_err(|_| Error::invalid("schedule id", &id, "not a number"))?;
    web.control.delete_schedule(number).await?;
    Ok(done(
        &web,
        "/tasks#schedules",
        id.clone(),
        format!("Schedule {id} removed."),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_form_time_as_utc() {
        assert_eq!(super::parse_utc("1970-01-01T00:01").ok(), Some(60_000));
        assert_eq!(
            super::parse_utc("2026-12-06T17:03")
                .map(crate::clock::utc_text)
                .ok()
                .as_deref(),
            Some("2026-12-06 17:03:00Z")
        );
        assert!(super::parse_utc("2026-13-06T17:03").is_err());
    }
}
