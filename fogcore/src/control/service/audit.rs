//! The audit log: every mutating call and every refused one, with who, what, on what, from where
//! and how it ended (written by the API's guard, read by `GET /audit`).

use super::Control;
use crate::control::model::{AuditEntry, AuditQuery, Page, page_limit};
use crate::error::Result;

impl Control {
    /// Records a call at the master's clock. A log that cannot be written does not undo the
    /// call; it is said in the master's log.
    pub async fn record_audit(&self, mut entry: AuditEntry) {
        entry.at = self.clock.now();
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
