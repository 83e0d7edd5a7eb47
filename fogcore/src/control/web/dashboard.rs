//! The dashboard: each node's slots, line and disk; imaging over 30 days (SVG drawn here);
//! recent events; alerts (silent nodes, stale or failed copies, machines waiting for approval).

use askama::Template;
use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Router};

use super::fleet::{NodeRow, node_rows};
use super::view;
use super::{App, Ctx, Layout, WebResult, page};
use crate::control::db::DayCount;
use crate::control::model::{CopyState, HostQuery, TaskEvent};

pub(super) fn routes() -> Router<App> {
    Router::new().route("/", get(dashboard))
}

/// Days the activity chart covers.
const DAYS: i64 = 30;

/// The chart's finished days, counted once: a task that finishes lands in today, so the counts of
/// the days before never change and only today's are read at each view (at 200,000 tasks the
/// whole month costs 300 ms to count, today a few).
#[derive(Debug, Default)]
pub(super) struct PastDays {
    /// The day (number since the epoch, UTC) they were counted on, and the counts before it.
    counted: Option<(i64, Vec<DayCount>)>,
}

/// Tasks finished per day over the chart's days, today counted now.
async fn activity(web: &super::Web, today: i64) -> crate::error::Result<Vec<DayCount>> {
    let cached = {
        let past = web.past_days.lock().unwrap_or_else(|p| p.into_inner());
        past.counted
            .as_ref()
            .filter(|(day, _)| *day == today)
            .map(|(_, days)| days.clone())
    };
    let mut days = match cached {
        Some(days) => days,
        None => {
            let first = (today - DAYS + 1) * 86_400_000;
            let days: Vec<_> = web
                .control
                .tasks_per_day(first)
                .await?
                .into_iter()
                .filter(|d| d.day < today)
                .collect();
            let mut past = web.past_days.lock().unwrap_or_else(|p| p.into_inner());
            past.counted = Some((today, days.clone()));
            days
        }
    };
    days.extend(web.control.tasks_per_day(today * 86_400_000).await?);
    Ok(days)
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    layout: Layout,
    nodes: Vec<NodeRow>,
    chart: String,
    done: u64,
    failed: u64,
    events: Vec<(String, TaskEvent, String)>,
    alerts: Vec<(&'static str, String, String)>,
}

/// Bars of completed (and, on top, failed) tasks per day, oldest left; numbers only, so the
/// markup is built here and trusted by the template.
fn chart(today: i64, days: &[DayCount]) -> String {
    const W: i64 = 600;
    const H: i64 = 120;
    let bar = W / DAYS;
    let peak = days.iter().map(|d| d.complete + d.failed).max().unwrap_or(0).max(1);
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {}" role="img" aria-label="Tasks finished per day, last {DAYS} days"><title>Tasks finished per day</title>"#,
        H + 14
    );
    for &DayCount {
        day,
        complete: ok,
        failed: bad,
    } in days
    {
        let slot = DAYS - 1 - (today - day);
        if !(0..DAYS).contains(&slot) {
            continue;
        }
        let x = slot * bar;
        let ok_h = (ok as i64 * H) / peak as i64;
        let bad_h = (bad as i64 * H) / peak as i64;
        svg.push_str(&format!(
            r#"<rect class="ok" x="{x}" y="{}" width="{}" height="{ok_h}"><title>{ok} complete</title></rect>"#,
            H - ok_h,
            bar - 2
        ));
        if bad_h > 0 {
            svg.push_str(&format!(
                r#"<rect class="bad" x="{x}" y="{}" width="{}" height="{bad_h}"><title>{bad} failed</title></rect>"#,
                H - ok_h - bad_h,
                bar - 2
            ));
        }
    }
    svg.push_str(&format!(
        r#"<line x1="0" y1="{H}" x2="{W}" y2="{H}" class="axis"/><text x="0" y="{}">{DAYS} days ago</text><text x="{W}" y="{}" text-anchor="end">today</text></svg>"#,
        H + 12,
        H + 12
    ));
    svg
}

async fn dashboard(State(web): State<App>, Extension(ctx): Extension<Ctx>) -> WebResult {
    let now = web.control.clock().now();
    let today = now.div_euclid(86_400_000);
    let days = activity(&web, today).await?;
    let nodes = node_rows(&web).await?;
    let mut alerts = Vec::new();
    for row in nodes.iter().filter(|r| r.silent) {
        alerts.push((
            "bad",
            format!("Node {} is silent: last heartbeat {}", row.node.name, row.seen),
            "/nodes".to_string(),
        ));
    }
    for image in web.control.images().await? {
        for copy in web.control.image_copies(&image.name).await? {
            let what = match copy.state {
                CopyState::Failed => "failed",
                CopyState::Stale => "stale",
                _ => continue,
            };
            let reason = copy.reason.map(|r| format!(": {r}")).unwrap_or_default();
            alerts.push((
                "bad",
                format!("Copy of {} on {} is {what}{reason}", image.name, copy.node),
                "/images".to_string(),
            ));
        }
    }
    let pending = web
        .control
        .host_count(&HostQuery {
            pending: true,
            ..HostQuery::default()
        })
        .await?;
    if pending > 0 {
        alerts.push((
            "wait",
            format!("{pending} new machines registered from the boot menu wait for approval"),
            "/registrations".to_string(),
        ));
    }
    let events = web
        .control
        .recent_events(15)
        .await?
        .into_iter()
        .map(|(e, host)| (view::ago(now, Some(e.at)), e, host))
        .collect();
    Ok(page(Dashboard {
        layout: ctx.layout("dashboard"),
        chart: chart(today, &days),
        done: days.iter().map(|d| d.complete).sum(),
        failed: days.iter().map(|d| d.failed).sum(),
        nodes,
        events,
        alerts,
    }))
}
