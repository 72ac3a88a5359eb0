//! Audit retention: every permission decision (each question asked, each
//! API call, granted or denied) is an audit row, so decisions older than the
//! retention are deleted at start and every hour, in batches that keep the
//! store's writer free for questions in between. Administrative changes
//! (who changed what, before and after) are kept whatever their age, like
//! Google's Admin Activity logs outliving its Data Access logs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rouse_store::{AuditStore, StoreError};
use tokio_util::sync::CancellationToken;

/// How often old decisions are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Rows one delete removes: a few milliseconds of the writer.
const BATCH: u32 = 5_000;

/// Deletes every decision entry recorded more than `retention` before `now`;
/// returns how many.
pub async fn prune(
    store: &dyn AuditStore,
    retention: Duration,
    now: SystemTime,
) -> Result<u64, StoreError> {
    let Some(before) = now.checked_sub(retention) else {
        return Ok(0);
    };
    let mut total = 0;
    loop {
        let deleted = store.prune_audit_decisions(before, BATCH).await?;
        total += deleted;
        if deleted < u64::from(BATCH) {
            return Ok(total);
        }
        // Let waiting writes (questions' records) in between batches.
        tokio::task::yield_now().await;
    }
}

/// Prunes at once and then every [`PRUNE_INTERVAL`] until `shutdown`.
/// `None` keeps every entry.
pub fn keep_pruned(
    store: Arc<dyn AuditStore>,
    retention: Option<Duration>,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let retention = retention?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match prune(store.as_ref(), retention, SystemTime::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    deleted = n,
                    retention_secs = retention.as_secs(),
                    "pruned audit decisions older than the retention"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune the audit log; trying again in an hour")
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rouse_store::{AuditEntry, AuditFilter, SqliteStore};

    #[tokio::test]
    async fn old_decisions_go_in_batches_and_changes_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("rouse.db")).expect("store");
        let now = SystemTime::now();
        let old = now - Duration::from_secs(31 * 86_400);
        let entry = |at, decision: &str| AuditEntry {
            id: 0,
            at,
            principal: "anonymous".into(),
            action: "question".into(),
            resource: "projects/p/services/s".into(),
            permission: "services.ask".into(),
            decision: decision.parse().expect("decision word"),
            detail: "{}".into(),
        };
        let many = usize::try_from(BATCH).expect("small") + 7;
        for i in 0..many {
            let decision = if i % 2 == 0 { "granted" } else { "denied" };
            store
                .append_audit(&entry(old, decision))
                .await
                .expect("append");
        }
        store
            .append_audit(&entry(old, "changed"))
            .await
            .expect("append");
        store
            .append_audit(&entry(now, "granted"))
            .await
            .expect("append");
        let deleted = prune(&store, Duration::from_secs(30 * 86_400), now)
            .await
            .expect("prune");
        assert_eq!(deleted, many as u64);
        let left = store
            .list_audit(&AuditFilter {
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(left.len(), 2, "the change and the recent decision");
    }
}
