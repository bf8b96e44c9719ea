//! Rate-limit counters of the quota authority (`quota_counters`, `quota_holders`): the
//! control plane grants each filter a part of a counter's quota (a lease, see
//! `QuotaRequest` in `api/proto/tollgate/v1/sync.proto`), and with the database between
//! replicas never grants more in a window than the limit.
//!
//! # The grant rule (one ask)
//!
//! - REQUESTS / TOKENS, per minute window: `overrun` is charged first (added to the window's
//!   total even past the limit). `left = limit - total` (0 if negative). If `left < need`
//!   nothing is granted; else `grant = min(left, max(need, min(want, left / 8)))`: at least
//!   `need` while that much is left, but never more than an eighth of what is left beyond
//!   it, so leases shrink near the limit and no filter sits on quota others need. The
//!   grant is added to the total; `remaining = left - grant`. `release` (quota the filter
//!   was leased and gives back unused, so that another filter's request may have it) is
//!   taken off the total first, never below 0.
//! - PARALLEL (window 0): the holder first gives back `min(release, what it holds)`; then
//!   the same rule against `limit - slots held by every unexpired holder`, and the holder's
//!   slots grow by the grant. `overrun` means nothing here and is ignored.
//!
//! # Atomicity
//!
//! A window ask is one statement, `INSERT .. ON CONFLICT DO UPDATE .. RETURNING`: the
//! right-hand sides of `SET` read the old row, so the grant and the new total are computed
//! together and both returned (`last_grant`, `total`). PostgreSQL locks the row for the
//! statement and SQLite holds the database's write lock, so concurrent asks (from any
//! number of replicas) are applied one after the other and the total never passes the
//! limit by a grant. A PARALLEL ask is a short transaction that first locks its counter's
//! row (the same upsert), so two asks on one counter cannot both read the slots held
//! before either adds to them. Each ask of a request is its own statement or transaction:
//! holding two counters' locks at once could deadlock with a request asking in another
//! order.
//!
//! Values are capped at [`QUOTA_VALUE_CAP`] (2^53) so no sum overflows a BIGINT, whatever a
//! filter sends.

use std::sync::LazyLock;

use sqlx::Row;

use super::{to_i64, to_u64, Pool, Store, StoreError};

/// The largest limit, need, want, overrun or release taken as sent, and the largest total a
/// window reaches: anything above is taken as this. Far above any real rate limit, and far
/// enough below `i64::MAX` that adding two values never overflows.
pub const QUOTA_VALUE_CAP: u64 = 1 << 53;

/// What a counter counts (the protocol's `LimitKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaKind {
    /// Requests in a minute window (rpm).
    Requests,
    /// Tokens in a minute window (tpm).
    Tokens,
    /// Requests in flight (max_parallel_requests).
    Parallel,
}

impl QuotaKind {
    /// The `quota_counters.kind` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Requests => "requests",
            QuotaKind::Tokens => "tokens",
            QuotaKind::Parallel => "parallel",
        }
    }
}

/// One counter: a rate limit of one scope (`scope` is the protocol's `BudgetScope` as
/// text, e.g. "key", "deployment").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaCounter<'a> {
    /// Scope name.
    pub scope: &'a str,
    /// The scope's id.
    pub id: &'a str,
}

/// What one ask wants (the protocol's `QuotaAsk` without its counter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaWant {
    /// The limit, per window or in flight.
    pub limit: u64,
    /// The least that is of use.
    pub need: u64,
    /// What the filter would like to hold.
    pub want: u64,
    /// REQUESTS / TOKENS: charged to the window before the grant, even past the limit.
    pub overrun: u64,
    /// Given back before the grant: PARALLEL slots, or REQUESTS / TOKENS leased and unused.
    pub release: u64,
}

impl QuotaWant {
    fn capped(self) -> QuotaWant {
        QuotaWant {
            limit: self.limit.min(QUOTA_VALUE_CAP),
            need: self.need.min(QUOTA_VALUE_CAP),
            want: self.want.min(QUOTA_VALUE_CAP),
            overrun: self.overrun.min(QUOTA_VALUE_CAP),
            release: self.release.min(QUOTA_VALUE_CAP),
        }
    }
}

/// The answer to one ask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLease {
    /// Granted now.
    pub granted: u64,
    /// Left at the authority after the grant (not leased to anyone).
    pub remaining: u64,
}

/// The grant rule (see the module): what `need` / `want` get when `left` is left.
pub fn quota_grant(left: u64, need: u64, want: u64) -> u64 {
    if left < need {
        return 0;
    }
    need.max(want.min(left / 8)).min(left)
}

/// The grant rule in SQL, for the window's total (after the overrun) `charged`; `$5` is
/// the limit, `$6` need, `$7` want. `left >= need` in the last branch, and so
/// `max(need, min(want, left / 8)) <= left` there: no outer `min` is needed.
fn grant_sql(charged: &str) -> String {
    let left = format!("(CASE WHEN $5 > {charged} THEN $5 - {charged} ELSE 0 END)");
    let eighth = format!("({left} / 8)");
    let inner = format!("(CASE WHEN $7 < {eighth} THEN $7 ELSE {eighth} END)");
    format!("(CASE WHEN {left} < $6 THEN 0 WHEN $6 > {inner} THEN $6 ELSE {inner} END)")
}

/// One window ask: `$1` scope, `$2` id, `$3` kind, `$4` window start, `$5` limit, `$6` need,
/// `$7` want, `$8` overrun, `$10` release (all capped), `$9` now. A new row starts from
/// total 0 (a release there gives back nothing).
static GRANT_WINDOW_SQL: LazyLock<String> = LazyLock::new(|| {
    let charged = "(quota_counters.total + $8)";
    let old = format!(
        "(CASE WHEN {charged} > {QUOTA_VALUE_CAP} + $10 THEN {QUOTA_VALUE_CAP} \
         WHEN {charged} > $10 THEN {charged} - $10 ELSE 0 END)"
    );
    let fresh_grant = grant_sql("$8");
    let grant = grant_sql(&old);
    format!(
        "INSERT INTO quota_counters (scope, id, kind, window_start_unix_ms, total, last_grant, \
         updated_unix_ms) VALUES ($1, $2, $3, $4, $8 + {fresh_grant}, {fresh_grant}, $9) \
         ON CONFLICT (scope, id, kind, window_start_unix_ms) DO UPDATE SET \
         total = {old} + {grant}, last_grant = {grant}, updated_unix_ms = $9 \
         RETURNING total, last_grant"
    )
});

/// Locks a PARALLEL counter's row for the transaction (creating it).
const LOCK_PARALLEL_SQL: &str = "INSERT INTO quota_counters (scope, id, kind, \
     window_start_unix_ms, total, last_grant, updated_unix_ms) VALUES ($1, $2, 'parallel', 0, \
     0, 0, $3) ON CONFLICT (scope, id, kind, window_start_unix_ms) DO UPDATE SET \
     updated_unix_ms = excluded.updated_unix_ms";

/// Binds per statement of a refresh: far below both drivers' limits.
const HOLDERS_PER_STATEMENT: usize = 500;

impl Store {
    /// Grants one REQUESTS or TOKENS ask on the window starting at `window_start_ms` (by the
    /// rule of the module), in one statement.
    pub async fn grant_quota_window(
        &self,
        counter: QuotaCounter<'_>,
        kind: QuotaKind,
        window_start_ms: u64,
        ask: QuotaWant,
        now_ms: u64,
    ) -> Result<QuotaLease, StoreError> {
        let ask = ask.capped();
        let (total, granted): (i64, i64) = with_pool!(self, pool => {
            let row = sqlx::query(GRANT_WINDOW_SQL.as_str())
                .bind(counter.scope)
                .bind(counter.id)
                .bind(kind.as_str())
                .bind(to_i64(window_start_ms))
                .bind(to_i64(ask.limit))
                .bind(to_i64(ask.need))
                .bind(to_i64(ask.want))
                .bind(to_i64(ask.overrun))
                .bind(to_i64(now_ms))
                .bind(to_i64(ask.release))
                .fetch_one(pool)
                .await?;
            (row.try_get("total")?, row.try_get("last_grant")?)
        });
        let total = to_u64(total);
        Ok(QuotaLease {
            granted: to_u64(granted),
            remaining: ask.limit.saturating_sub(total),
        })
    }

    /// Grants one PARALLEL ask for `holder`: gives back its `release` first, then grants by
    /// the rule against the slots every unexpired holder holds; the holder's row expires at
    /// `expires_ms` (refreshed by [`Store::refresh_quota_holders`] while its stream lives).
    pub async fn grant_quota_parallel(
        &self,
        counter: QuotaCounter<'_>,
        holder: &str,
        ask: QuotaWant,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<QuotaLease, StoreError> {
        let ask = ask.capped();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // First a write: it takes the counter's row lock (PostgreSQL) or the write lock
            // (SQLite) before anything is read.
            sqlx::query(LOCK_PARALLEL_SQL)
                .bind(counter.scope)
                .bind(counter.id)
                .bind(to_i64(now_ms))
                .execute(&mut *tx)
                .await?;
            // A crashed replica's slots: no longer counted, so no longer kept.
            sqlx::query(
                "DELETE FROM quota_holders WHERE scope = $1 AND id = $2 AND expires_unix_ms <= $3",
            )
            .bind(counter.scope)
            .bind(counter.id)
            .bind(to_i64(now_ms))
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query(
                "SELECT CAST(COALESCE(SUM(held), 0) AS BIGINT) AS all_held, \
                 CAST(COALESCE(SUM(CASE WHEN holder = $3 THEN held ELSE 0 END), 0) AS BIGINT) \
                 AS mine FROM quota_holders WHERE scope = $1 AND id = $2",
            )
            .bind(counter.scope)
            .bind(counter.id)
            .bind(holder)
            .fetch_one(&mut *tx)
            .await?;
            let all_held = to_u64(row.try_get::<i64, _>("all_held")?);
            let mine = to_u64(row.try_get::<i64, _>("mine")?);
            let released = ask.release.min(mine);
            let all_held = all_held.saturating_sub(released);
            let left = ask.limit.saturating_sub(all_held);
            let granted = quota_grant(left, ask.need, ask.want);
            let held = (mine - released).saturating_add(granted);
            if held == 0 {
                sqlx::query("DELETE FROM quota_holders WHERE scope = $1 AND id = $2 AND holder = $3")
                    .bind(counter.scope)
                    .bind(counter.id)
                    .bind(holder)
                    .execute(&mut *tx)
                    .await?;
            } else if held != mine || granted > 0 || released > 0 {
                sqlx::query(
                    "INSERT INTO quota_holders (scope, id, holder, held, expires_unix_ms) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, id, holder) DO UPDATE \
                     SET held = excluded.held, expires_unix_ms = excluded.expires_unix_ms",
                )
                .bind(counter.scope)
                .bind(counter.id)
                .bind(holder)
                .bind(to_i64(held))
                .bind(to_i64(expires_ms))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(QuotaLease {
                granted,
                remaining: left - granted,
            })
        })
    }

    /// Frees every slot `holder` holds (its stream ended); returns how many.
    pub async fn release_quota_holder(&self, holder: &str) -> Result<u64, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query("DELETE FROM quota_holders WHERE holder = $1 RETURNING held")
                .bind(holder)
                .fetch_all(pool)
                .await?;
            let mut freed = 0u64;
            for row in &rows {
                freed = freed.saturating_add(to_u64(row.try_get::<i64, _>("held")?));
            }
            Ok(freed)
        })
    }

    /// Moves the expiry of every row of `holders` to `expires_ms` (their streams are alive);
    /// returns the rows refreshed.
    pub async fn refresh_quota_holders(
        &self,
        holders: &[String],
        expires_ms: u64,
    ) -> Result<u64, StoreError> {
        let mut refreshed = 0u64;
        for chunk in holders.chunks(HOLDERS_PER_STATEMENT) {
            let list = (2..chunk.len() + 2)
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql =
                format!("UPDATE quota_holders SET expires_unix_ms = $1 WHERE holder IN ({list})");
            let done = with_pool!(self, pool => {
                let mut query = sqlx::query(&sql).bind(to_i64(expires_ms));
                for holder in chunk {
                    query = query.bind(holder.as_str());
                }
                query.execute(pool).await?.rows_affected()
            });
            refreshed = refreshed.saturating_add(done);
        }
        Ok(refreshed)
    }

    /// The PARALLEL slots every unexpired holder holds on `counter` at `now_ms`.
    pub async fn quota_slots_held(
        &self,
        counter: QuotaCounter<'_>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let held: i64 = with_pool!(self, pool => {
            sqlx::query(
                "SELECT CAST(COALESCE(SUM(held), 0) AS BIGINT) AS held FROM quota_holders \
                 WHERE scope = $1 AND id = $2 AND expires_unix_ms > $3",
            )
            .bind(counter.scope)
            .bind(counter.id)
            .bind(to_i64(now_ms))
            .fetch_one(pool)
            .await?
            .try_get("held")?
        });
        Ok(to_u64(held))
    }

    /// Deletes, `batch` rows per statement so no lock is held for long, the REQUESTS /
    /// TOKENS windows that started before `windows_before_ms`, the holders expired before
    /// `expired_before_ms`, and PARALLEL counter rows untouched since `windows_before_ms`
    /// that no holder holds; returns the rows deleted.
    pub async fn prune_quota(
        &self,
        windows_before_ms: u64,
        expired_before_ms: u64,
        batch: u64,
    ) -> Result<u64, StoreError> {
        let batch = to_i64(batch.max(1));
        let statements = [
            (
                "DELETE FROM quota_counters WHERE (scope, id, kind, window_start_unix_ms) IN \
                 (SELECT scope, id, kind, window_start_unix_ms FROM quota_counters \
                 WHERE window_start_unix_ms > 0 AND window_start_unix_ms < $1 LIMIT $2)",
                windows_before_ms,
            ),
            (
                "DELETE FROM quota_holders WHERE (scope, id, holder) IN (SELECT scope, id, \
                 holder FROM quota_holders WHERE expires_unix_ms < $1 LIMIT $2)",
                expired_before_ms,
            ),
            (
                "DELETE FROM quota_counters WHERE (scope, id, kind, window_start_unix_ms) IN \
                 (SELECT c.scope, c.id, c.kind, c.window_start_unix_ms FROM quota_counters c \
                 WHERE c.kind = 'parallel' AND c.updated_unix_ms < $1 AND NOT EXISTS \
                 (SELECT 1 FROM quota_holders h WHERE h.scope = c.scope AND h.id = c.id) \
                 LIMIT $2) AND updated_unix_ms < $1",
                windows_before_ms,
            ),
        ];
        let mut deleted = 0u64;
        for (sql, cutoff) in statements {
            loop {
                let gone = with_pool!(self, pool => {
                    sqlx::query(sql)
                        .bind(to_i64(cutoff))
                        .bind(batch)
                        .execute(pool)
                        .await?
                        .rows_affected()
                });
                deleted = deleted.saturating_add(gone);
                if gone < to_u64(batch) {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_caps_leases_near_the_limit() {
        assert_eq!(quota_grant(60, 1, 3), 3);
        assert_eq!(quota_grant(60, 1, 100), 7);
        assert_eq!(quota_grant(7, 1, 3), 1);
        assert_eq!(quota_grant(7, 5, 5), 5);
        assert_eq!(quota_grant(4, 5, 5), 0);
        assert_eq!(quota_grant(0, 1, 1), 0);
        assert_eq!(quota_grant(16, 1, 0), 1);
    }
}
