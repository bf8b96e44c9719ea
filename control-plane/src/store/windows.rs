//! Budget windows and the spend the filters are pushed: reads of `spend_totals` by change
//! time, and the budget clock that starts each scope's next window when its `reset_at`
//! passes (spend back to 0). `spend_totals` rows are added to where usage is stored.

use sqlx::Row;

use super::{to_i64, Pool, Store, StoreError};

/// One scope's spend in its current window, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRow {
    /// `key`, `user`, `team`, `end_user`, `global` or `key_model`.
    pub scope: String,
    /// The scope's id (see the `spend_totals` migration).
    pub scope_id: String,
    /// US dollars since the window began.
    pub spend: f64,
    /// Unix ms the window ends at; 0: never.
    pub reset_at: i64,
}

impl Store {
    /// The spend rows changed at or after `since_ms` (unix ms); every row for 0.
    pub async fn spend_totals_since(&self, since_ms: u64) -> Result<Vec<SpendRow>, StoreError> {
        let sql = "SELECT scope, scope_id, spend, reset_at FROM spend_totals \
                   WHERE updated_ms >= $1 ORDER BY scope, scope_id";
        with_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(to_i64(since_ms)).fetch_all(pool).await?;
            let mut spend = Vec::with_capacity(rows.len());
            for row in &rows {
                spend.push(SpendRow {
                    scope: row.try_get("scope")?,
                    scope_id: row.try_get("scope_id")?,
                    spend: row.try_get("spend")?,
                    reset_at: row.try_get("reset_at")?,
                });
            }
            Ok(spend)
        })
    }

    /// Starts the next window of every scope whose window ended by `now_ms`: spend back to
    /// 0, `reset_at` moved on by whole windows to the first end after now (a control plane
    /// that was down for three windows does not reset three times). Returns how many
    /// windows were reset. Idempotent, so every replica may run it.
    pub async fn reset_budget_windows(&self, now_ms: u64) -> Result<u64, StoreError> {
        let sql = "UPDATE spend_totals SET spend = 0, \
                   reset_at = reset_at + budget_duration_ms * ((($1 - reset_at) / budget_duration_ms) + 1), \
                   updated_ms = $1 \
                   WHERE reset_at <> 0 AND reset_at <= $1 AND budget_duration_ms > 0";
        with_pool!(self, pool => {
            Ok(sqlx::query(sql).bind(to_i64(now_ms)).execute(pool).await?.rows_affected())
        })
    }
}

/// Which threshold of a budget an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetAlertKind {
    /// The soft budget was reached.
    Soft,
    /// The max budget was reached (requests are refused from now on).
    Max,
}

impl Store {
    /// Claims the alert of `kind` for the window of `scope`/`id` that ends at `reset_at`:
    /// true for exactly one caller per window, across replicas (so each alert is sent once).
    pub async fn claim_budget_alert(
        &self,
        scope: &str,
        id: &str,
        kind: BudgetAlertKind,
        reset_at: u64,
    ) -> Result<bool, StoreError> {
        let sql = match kind {
            BudgetAlertKind::Soft => {
                "UPDATE spend_totals SET soft_alerted_reset_at = $3 \
                 WHERE scope = $1 AND scope_id = $2 AND soft_alerted_reset_at <> $3"
            }
            BudgetAlertKind::Max => {
                "UPDATE spend_totals SET max_alerted_reset_at = $3 \
                 WHERE scope = $1 AND scope_id = $2 AND max_alerted_reset_at <> $3"
            }
        };
        with_pool!(self, pool => {
            let claimed = sqlx::query(sql)
                .bind(scope.to_string())
                .bind(id.to_string())
                .bind(to_i64(reset_at))
                .execute(pool)
                .await?
                .rows_affected();
            Ok(claimed == 1)
        })
    }
}
