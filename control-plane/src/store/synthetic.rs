//! A synthetic usage ledger for the spend bench (`make bench-spend`, 10 million rows) and
//! its small twin in `make test`: row `i` is a pure function of `i`, written once in SQL (so
//! PostgreSQL generates millions of rows itself, with `generate_series`, and SQLite with a
//! recursive CTE) and once in Rust ([`synthetic_record`]), so a test can compute exactly what
//! every spend query must answer.
//!
//! The spread: [`SYNTHETIC_KEYS`] keys, each owned by one of [`SYNTHETIC_USERS`] users and
//! one of [`SYNTHETIC_TEAMS`] teams; [`SYNTHETIC_MODELS`] models; [`SYNTHETIC_TAGS`] tags
//! (every record one, every fourth a second); 200 end users; records evenly spread over
//! [`SYNTHETIC_DAYS`] days from [`SYNTHETIC_BASE_MS`]. Costs are multiples of 1/1024 so
//! their sums are exact in any order; every 20th record has no cost (unknown), every 100th
//! failed with a 429.

use super::{to_i64, Pool, Store, StoreError};
use crate::proto;

/// Distinct keys.
pub const SYNTHETIC_KEYS: u64 = 1_000;
/// Distinct users (key k belongs to user k % 100).
pub const SYNTHETIC_USERS: u64 = 100;
/// Distinct teams (key k belongs to team k % 20).
pub const SYNTHETIC_TEAMS: u64 = 20;
/// Distinct models (record i uses model (i / 1000) % 10, so every key uses every model).
pub const SYNTHETIC_MODELS: u64 = 10;
/// Distinct tags.
pub const SYNTHETIC_TAGS: u64 = 50;
/// Distinct end users (key k's requests come from end user k % 200).
pub const SYNTHETIC_END_USERS: u64 = 200;
/// Days the records are spread over.
pub const SYNTHETIC_DAYS: u64 = 30;
/// Start of the first day: 2026-11-01T00:00:00Z.
pub const SYNTHETIC_BASE_MS: u64 = 1_793_491_200_000;

const DAY_MS: u64 = 86_400_000;

/// The key hash of synthetic key `k`: its number as 64 decimal digits (64 hex digits, as a
/// SHA-256 hex is, so the API takes it as a hash).
pub fn synthetic_key_hash(k: u64) -> String {
    format!("{k:064}")
}

/// When record `i` of `total` started.
pub fn synthetic_started_ms(i: u64, total: u64) -> u64 {
    let span = u128::from(SYNTHETIC_DAYS * DAY_MS);
    let offset = u128::from(i) * span / u128::from(total.max(1));
    SYNTHETIC_BASE_MS + u64::try_from(offset).unwrap_or(0)
}

/// Record `i` of a synthetic ledger of `total` records, as [`Store::load_synthetic_usage`]
/// stores it.
pub fn synthetic_record(i: u64, total: u64) -> proto::UsageRecord {
    let k = i % SYNTHETIC_KEYS;
    let model = (i / 1_000) % SYNTHETIC_MODELS;
    let failed = i % 100 == 99;
    let mut tags = vec![format!("tag-{}", i % SYNTHETIC_TAGS)];
    if i.is_multiple_of(4) {
        tags.push(format!("tag-{}", (i % SYNTHETIC_TAGS + 1) % SYNTHETIC_TAGS));
    }
    proto::UsageRecord {
        id: format!("r{i:010}"),
        model_name: format!("model-{model}"),
        deployment_id: format!("dep-{model}"),
        provider: "openai".into(),
        status: if failed { 429 } else { 200 },
        prompt_tokens: Some(100 + i % 900),
        completion_tokens: Some(10 + i % 300),
        cached_prompt_tokens: None,
        started_unix_ms: synthetic_started_ms(i, total),
        duration_ms: 500 + i % 1_000,
        stream: i % 2 == 1,
        key_hash: synthetic_key_hash(k),
        request_id: format!("req-{i}"),
        reasoning_tokens: None,
        cache_creation_tokens: None,
        cost: (i % 20 != 19).then(|| ((i % 97) + 1) as f64 / 1024.0),
        key_alias: format!("alias-{k}"),
        user_id: format!("user-{}", k % SYNTHETIC_USERS),
        team_id: format!("team-{}", k % SYNTHETIC_TEAMS),
        end_user: format!("customer-{}", k % SYNTHETIC_END_USERS),
        tags,
        first_byte_ms: None,
        answered_by_gateway: false,
        error_type: if failed {
            "rate_limit_error".into()
        } else {
            String::new()
        },
        // Not stored (see the usage table): a record read back has none either.
        error_class: String::new(),
    }
}

/// The SQL of record `i` (a column named `i`, BIGINT) of `$2` records in total, for one
/// backend: `(text of a number padded to width)`, concatenation and the usage columns.
fn record_select(postgres: bool) -> String {
    let pad = |expression: &str, width: u32| {
        if postgres {
            format!("lpad(({expression})::text, {width}, '0')")
        } else {
            format!("printf('%0{width}d', {expression})")
        }
    };
    let text = |expression: &str| {
        if postgres {
            format!("({expression})::text")
        } else {
            format!("CAST({expression} AS TEXT)")
        }
    };
    let real = if postgres {
        "::double precision"
    } else {
        " * 1.0"
    };
    let k = format!("(i % {SYNTHETIC_KEYS})");
    let model = format!("((i / 1000) % {SYNTHETIC_MODELS})");
    let tag_a = format!("'tag-' || {}", text(&format!("i % {SYNTHETIC_TAGS}")));
    let tag_b = format!(
        "'tag-' || {}",
        text(&format!("(i % {SYNTHETIC_TAGS} + 1) % {SYNTHETIC_TAGS}"))
    );
    let span = SYNTHETIC_DAYS * DAY_MS;
    format!(
        "'r' || {id}, 'model-' || {model_text}, 'dep-' || {model_text}, 'openai', \
         CASE WHEN i % 100 = 99 THEN 429 ELSE 200 END, 100 + i % 900, 10 + i % 300, NULL, \
         {SYNTHETIC_BASE_MS} + i * {span} / $2, 500 + i % 1000, i % 2 = 1, {key}, \
         {SYNTHETIC_BASE_MS} + i * {span} / $2, 'req-' || {i_text}, NULL, NULL, \
         CASE WHEN i % 20 = 19 THEN NULL ELSE ((i % 97) + 1){real} / 1024 END, \
         'alias-' || {k_text}, 'user-' || {user}, 'team-' || {team}, 'customer-' || {end_user}, \
         CASE WHEN i % 4 = 0 THEN '[\"' || {tag_a} || '\",\"' || {tag_b} || '\"]' \
         ELSE '[\"' || {tag_a} || '\"]' END, NULL, {false}, \
         CASE WHEN i % 100 = 99 THEN 'rate_limit_error' ELSE '' END",
        id = pad("i", 10),
        model_text = text(&model),
        key = pad(&k, 64),
        i_text = text("i"),
        k_text = text(&k),
        user = text(&format!("{k} % {SYNTHETIC_USERS}")),
        team = text(&format!("{k} % {SYNTHETIC_TEAMS}")),
        end_user = text(&format!("{k} % {SYNTHETIC_END_USERS}")),
        false = if postgres { "FALSE" } else { "0" },
    )
}

impl Store {
    /// Stores records `first..end` of a synthetic ledger of `total` records (see
    /// [`synthetic_record`]) with their tags, generated inside the database (bench and
    /// tests; never on a real ledger). `spend_totals` is not touched: see
    /// [`Store::rebuild_synthetic_totals`].
    pub async fn load_synthetic_usage(
        &self,
        first: u64,
        end: u64,
        total: u64,
    ) -> Result<(), StoreError> {
        let postgres = matches!(self.pool, Pool::Postgres(_));
        let series = if postgres {
            "SELECT generate_series($1::bigint, $3::bigint - 1) AS i".to_string()
        } else {
            "WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $3) \
             SELECT i FROM n"
                .to_string()
        };
        let records = format!(
            "INSERT INTO usage_records (id, model_name, deployment_id, provider, status, \
             prompt_tokens, completion_tokens, cached_prompt_tokens, started_unix_ms, \
             duration_ms, stream, key_hash, received_unix_ms, request_id, reasoning_tokens, \
             cache_creation_tokens, cost, key_alias, user_id, team_id, end_user, tags, \
             first_byte_ms, answered_by_gateway, error_type) \
             SELECT {} FROM ({series}) AS s",
            record_select(postgres)
        );
        let (id, tag_a, tag_b, text_of) = if postgres {
            (
                "'r' || lpad(i::text, 10, '0')",
                format!("'tag-' || (i % {SYNTHETIC_TAGS})::text"),
                format!("'tag-' || ((i % {SYNTHETIC_TAGS} + 1) % {SYNTHETIC_TAGS})::text"),
                "::double precision",
            )
        } else {
            (
                "'r' || printf('%010d', i)",
                format!("'tag-' || CAST(i % {SYNTHETIC_TAGS} AS TEXT)"),
                format!("'tag-' || CAST((i % {SYNTHETIC_TAGS} + 1) % {SYNTHETIC_TAGS} AS TEXT)"),
                " * 1.0",
            )
        };
        let span = SYNTHETIC_DAYS * DAY_MS;
        let cost =
            format!("CASE WHEN i % 20 = 19 THEN NULL ELSE ((i % 97) + 1){text_of} / 1024 END");
        let tags = format!(
            "INSERT INTO usage_tags (record_id, tag, started_unix_ms, cost) \
             SELECT {id}, {tag_a}, {SYNTHETIC_BASE_MS} + i * {span} / $2, {cost} \
             FROM ({series}) AS s \
             UNION ALL SELECT {id}, {tag_b}, {SYNTHETIC_BASE_MS} + i * {span} / $2, {cost} \
             FROM ({series}) AS s WHERE i % 4 = 0"
        );
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for sql in [&records, &tags] {
                sqlx::query(sql)
                    .bind(to_i64(first))
                    .bind(to_i64(total))
                    .bind(to_i64(end))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Sets `spend_totals` of every key, user, team and the global scope to the sum of the
    /// stored records' costs, and the daily rollups to the records' (what
    /// [`Store::insert_usage`] would have added), for a ledger loaded with
    /// [`Store::load_synthetic_usage`].
    pub async fn rebuild_synthetic_totals(&self) -> Result<(), StoreError> {
        let now = to_i64(super::now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM spend_totals").execute(&mut *tx).await?;
            for (scope, column) in [
                ("key", "key_hash"),
                ("user", "user_id"),
                ("team", "team_id"),
                ("end_user", "end_user"),
                ("global", ""),
            ] {
                // The global scope is one row over every record (PostgreSQL refuses to group
                // by a constant).
                let sql = if column.is_empty() {
                    "INSERT INTO spend_totals (scope, scope_id, spend, updated_ms) \
                     SELECT $1, '', SUM(cost), $2 FROM usage_records WHERE cost IS NOT NULL \
                     HAVING COUNT(*) > 0"
                        .to_string()
                } else {
                    format!(
                        "INSERT INTO spend_totals (scope, scope_id, spend, updated_ms) \
                         SELECT $1, {column}, SUM(cost), $2 FROM usage_records \
                         WHERE cost IS NOT NULL AND {column} <> '' GROUP BY {column}"
                    )
                };
                sqlx::query(&sql).bind(scope).bind(now).execute(&mut *tx).await?;
            }
            for sql in super::rollup::REBUILD {
                sqlx::query(sql).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Brings a freshly loaded ledger to the state a live one is in: planner statistics
    /// (`ANALYZE`) and, on PostgreSQL, the visibility map `VACUUM` sets (autovacuum does so
    /// on insert-only tables), without which index-only scans (counts) read the heap.
    pub async fn analyze(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(pool) => {
                sqlx::query("ANALYZE").execute(pool).await?;
            }
            Pool::Postgres(pool) => {
                for table in [
                    "usage_records",
                    "usage_tags",
                    "spend_totals",
                    "spend_daily",
                    "spend_daily_end_users",
                    "spend_daily_tags",
                ] {
                    sqlx::query(&format!("VACUUM (ANALYZE) {table}"))
                        .execute(pool)
                        .await?;
                }
            }
        }
        Ok(())
    }
}
