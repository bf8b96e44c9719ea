//! Spend log retention (`general_settings.maximum_spend_logs_retention_period` and
//! `maximum_spend_logs_retention_interval`, as LiteLLM's): a background task deletes the
//! usage records older than the period, and their tags, every interval, and takes them out
//! of the daily rollups in the same transaction (reports add up the records that are kept,
//! as LiteLLM's, which read its spend logs). It deletes [`RETENTION_BATCH`] records per
//! transaction so the table is never locked for long, and never touches `spend_totals`
//! (budgets count what was spent, not what is still logged).

use std::time::Duration;

use crate::store::{now_unix_ms, Store, StoreError};

/// Records deleted per statement (and transaction).
pub const RETENTION_BATCH: u64 = 5_000;

/// Deletes the usage records started more than `retention_ms` before `now_ms`; returns how
/// many went.
pub async fn prune_once(store: &Store, retention_ms: u64, now_ms: u64) -> Result<u64, StoreError> {
    let cutoff = now_ms.saturating_sub(retention_ms);
    store
        .delete_usage_before(i64::try_from(cutoff).unwrap_or(i64::MAX), RETENTION_BATCH)
        .await
}

/// Starts the retention task: a first pass now, then one every `interval_ms`. A failed
/// pass is logged and retried at the next interval.
pub fn spawn(store: Store, retention_ms: u64, interval_ms: u64) -> tokio::task::JoinHandle<()> {
    tracing::info!(
        retention_ms,
        interval_ms,
        "spend log retention: usage records older than the retention period are deleted"
    );
    tokio::spawn(async move {
        let interval = Duration::from_millis(interval_ms.max(1_000));
        loop {
            match prune_once(&store, retention_ms, now_unix_ms()).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(deleted, "spend log retention: deleted old usage records")
                }
                Err(error) => {
                    tracing::warn!(%error, "spend log retention failed; retrying at the next interval")
                }
            }
            tokio::time::sleep(interval).await;
        }
    })
}
