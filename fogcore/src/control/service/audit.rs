//! The audit log: every mutating call and every refused one, with who, what, on what, from where
//! and how it ended (written by the API's guard, read by `GET /audit`).

use super::{Control, lock};
use crate::control::api::ANONYMOUS;
use crate::control::model::{AuditEntry, AuditQuery, Millis, Page, page_limit};
use crate::error::Result;

/// Calls without a known token recorded per second at most: anyone can send them, and each
/// would be a row; the rest are counted and the count goes into the next entry recorded.
pub const ANONYMOUS_PER_SECOND: u32 = 10;

/// The second being counted, how many were recorded in it, and how many were not since the last
/// recorded one.
#[derive(Debug, Default)]
pub(super) struct AnonymousWindow {
    second: Millis,
    recorded: u32,
    dropped: u64,
}

impl Control {
    /// Records a call at the master's clock. A log that cannot be written does not undo the
    /// call; it is said in the master's log. Calls without a known token are kept to
    /// `ANONYMOUS_PER_SECOND`.
    pub async fn record_audit(&self, mut entry: AuditEntry) {
        entry.at = self.clock.now();
        if entry.actor == ANONYMOUS {
            let mut window = lock(&self.anonymous);
            let second = entry.at.div_euclid(1000);
            if window.second != second {
                window.second = second;
                window.recorded = 0;
            }
            if window.recorded >= ANONYMOUS_PER_SECOND {
                window.dropped += 1;
                return;
            }
            window.recorded += 1;
            if window.dropped > 0 {
                entry.result = format!(
                    "{} ({} more calls without a known token were not recorded)",
                    entry.result, window.dropped
                );
                window.dropped = 0;
            }
        }
        if let Err(e) = self.db.insert_audit(&entry).await {
            tracing::warn!(
                actor = entry.actor,
                action = entry.action,
                "audit entry not written: {e}"
            );
        }
    }

    /// A page of the audit log, newest first.
    pub async fn audit_page(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        query.validate()?;
        let limit = page_limit(query.limit)?;
        let entries = self.db.audit(query, limit + 1).await?;
        Ok(Page::of(entries, limit, |e| e.id.to_string()))
    }
}
