//! How values read on a page: sizes, times, rates, and the hidden fields a confirmation carries.

use crate::clock::utc_text;
use crate::control::model::{Millis, Task, TaskState};

/// `1.5 GB`, `300 MB`, `12 KB`, `512 B` (powers of 1000, as disks are sold).
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if value < 10.0 { 1 } else { 0 };
    format!("{value:.digits$} {}", UNITS[unit])
}

/// `5 s ago`, `3 min ago`, `2 h ago`, `4 days ago`, or `never`.
pub(super) fn ago(now: Millis, at: Option<Millis>) -> String {
    let Some(at) = at else { return "never".into() };
    let s = (now - at).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// A time to the minute, UTC: `2026-12-06 17:03Z`.
pub(super) fn when(at: Millis) -> String {
    let text = utc_text(at);
    format!("{}Z", &text[..16])
}

/// `1 h 05 min`, `4 min 10 s`, `12 s`.
pub(super) fn duration(ms: Millis) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}

/// A task's state in words, for people.
pub(super) fn state(task: &Task) -> String {
    match &task.state {
        TaskState::Queued => "queued".into(),
        TaskState::CheckedIn => "checked in".into(),
        TaskState::WaitingForSlot => "waiting for a slot".into(),
        TaskState::InProgress { .. } => "in progress".into(),
        TaskState::Complete => "complete".into(),
        TaskState::Failed { reason } => format!("failed: {reason}"),
        TaskState::Cancelled => "cancelled".into(),
    }
}

/// The CSS class of a state: `ok`, `bad`, `busy`, `idle`.
pub(super) fn state_class(state: &TaskState) -> &'static str {
    match state {
        TaskState::Complete => "ok",
        TaskState::Failed { .. } => "bad",
        TaskState::InProgress { .. } => "busy",
        TaskState::Cancelled => "idle",
        _ => "wait",
    }
}

/// Rows of a CSV file: fields quoted where they need it (and a leading `=`, `+`, `-`, `@`
/// defused, so a spreadsheet does not run a host name as a formula).
pub(super) fn csv_row(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| {
            let f = if f.starts_with(['=', '+', '-', '@']) {
                format!("'{f}")
            } else {
                f.clone()
            };
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1_500_000_000), "1.5 GB");
        assert_eq!(bytes(300_000_000), "300 MB");
        assert_eq!(ago(10_000, Some(7_000)), "3 s ago");
        assert_eq!(ago(10_000, None), "never");
        assert_eq!(duration(3_725_000), "1 h 02 min");
        assert_eq!(when(0), "1970-01-01 00:00Z");
        assert_eq!(csv_row(&["a,b".into(), "=cmd".into()]), "\"a,b\",'=cmd\r\n");
    }
}
