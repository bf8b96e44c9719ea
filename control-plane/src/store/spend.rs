//! The spend ledger: usage records as the filters send them, the running spend of every
//! budget scope (`spend_totals`), the daily rollups (see [`super::rollup`]), and the
//! queries of the spend API (`/spend/logs`, `/global/spend/report`, `/spend/tags`) and of
//! retention.
//!
//! Pages of records are written for the indexes of the `*_spend_indexes` migration: filters
//! are equalities on one column plus a range of `started_unix_ms`, and pages are ordered by
//! `(started_unix_ms, id)` so an index on `(column, started_unix_ms, id)` answers both.
//! Sums (counts, reports, spend per tag) read whole days from the rollups and only the
//! parts of days at the ends of their range from the records.

use std::collections::{BTreeMap, HashSet};

use sqlx::Row;

use super::rollup::{split_range, RolledRecord, RollupChanges, Source};
use super::{now_unix_ms, to_i64, to_u64, usage_id, Pool, Store, StoreError};
use crate::proto;

/// Columns of one `usage_records` row as [`Store::insert_usage`] writes it.
const USAGE_INSERT_COLUMNS: &str = "id, model_name, deployment_id, provider, status, \
     prompt_tokens, completion_tokens, cached_prompt_tokens, started_unix_ms, duration_ms, \
     stream, key_hash, received_unix_ms, request_id, reasoning_tokens, cache_creation_tokens, \
     cost, key_alias, user_id, team_id, end_user, tags, first_byte_ms, answered_by_gateway, \
     error_type";
/// How many values one usage row binds.
const USAGE_INSERT_WIDTH: usize = 25;
/// Rows per multi-row INSERT. SQLite allows 32,766 bound values per statement (since 3.32;
/// sqlx bundles a newer one) and PostgreSQL 65,535: 500 rows of 25 stay far below both.
const USAGE_ROWS_PER_INSERT: usize = 500;
const _: () = assert!(USAGE_ROWS_PER_INSERT * USAGE_INSERT_WIDTH < 32_766);
/// Rows per multi-row INSERT of `usage_tags` and `spend_totals` (4 values each) and of the
/// rollups (at most 10 each).
pub(super) const SMALL_ROWS_PER_INSERT: usize = 2_000;
const _: () = assert!(SMALL_ROWS_PER_INSERT * 10 < 32_766);

/// Columns [`Store::spend_logs`] and [`Store::usage_records`] read.
const USAGE_SELECT_COLUMNS: &str = "id, model_name, deployment_id, provider, status, \
     prompt_tokens, completion_tokens, cached_prompt_tokens, started_unix_ms, duration_ms, \
     stream, key_hash, request_id, reasoning_tokens, cache_creation_tokens, cost, key_alias, \
     user_id, team_id, end_user, tags, first_byte_ms, answered_by_gateway, error_type";

/// Run before PostgreSQL aggregates a date range (inside the query's transaction): with the
/// default random_page_cost (4, for spinning disks) the planner prefers a parallel scan of
/// the whole table to the started_unix_ms index for a day of 10 million records (11 s
/// instead of 0.9 s, measured by `make bench-spend`); 1.1 is the usual value for SSDs.
const RANGE_SCAN_COSTS: &str = "SET LOCAL random_page_cost = 1.1";

/// Milliseconds per UTC day, the unit reports group by.
pub const DAY_MS: i64 = 86_400_000;

/// A budget scope of `spend_totals` (the filter protocol's `BudgetScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpendScope {
    /// id: SHA-256 hex of the key.
    Key,
    /// id: user_id.
    User,
    /// id: team_id.
    Team,
    /// id: the request's `user` field.
    EndUser,
    /// id: empty.
    Global,
    /// id: `<key SHA-256 hex>/<public model name>`.
    KeyModel,
}

impl SpendScope {
    /// The `spend_totals.scope` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SpendScope::Key => "key",
            SpendScope::User => "user",
            SpendScope::Team => "team",
            SpendScope::EndUser => "end_user",
            SpendScope::Global => "global",
            SpendScope::KeyModel => "key_model",
        }
    }

    /// The scope a `spend_totals.scope` value names.
    pub fn from_name(name: &str) -> Option<SpendScope> {
        [
            SpendScope::Key,
            SpendScope::User,
            SpendScope::Team,
            SpendScope::EndUser,
            SpendScope::Global,
            SpendScope::KeyModel,
        ]
        .into_iter()
        .find(|scope| scope.as_str() == name)
    }
}

/// Which scopes a record's cost is charged to, with their ids.
fn charged_scopes(record: &proto::UsageRecord) -> Vec<(SpendScope, String)> {
    let mut scopes = vec![(SpendScope::Global, String::new())];
    if !record.key_hash.is_empty() {
        scopes.push((SpendScope::Key, record.key_hash.clone()));
        if !record.model_name.is_empty() {
            scopes.push((
                SpendScope::KeyModel,
                format!("{}/{}", record.key_hash, record.model_name),
            ));
        }
    }
    for (scope, id) in [
        (SpendScope::User, &record.user_id),
        (SpendScope::Team, &record.team_id),
        (SpendScope::EndUser, &record.end_user),
    ] {
        if !id.is_empty() {
            scopes.push((scope, id.clone()));
        }
    }
    scopes
}

/// The records' cost summed per scope (records without a cost add nothing). Sorted, so
/// concurrent batches lock `spend_totals` rows in one order and cannot deadlock.
fn spend_per_scope<'a>(
    records: impl Iterator<Item = &'a proto::UsageRecord>,
) -> BTreeMap<(SpendScope, String), f64> {
    let mut totals = BTreeMap::new();
    for record in records {
        let Some(cost) = record.cost.filter(|cost| cost.is_finite()) else {
            continue;
        };
        for scope in charged_scopes(record) {
            *totals.entry(scope).or_insert(0.0) += cost;
        }
    }
    totals
}

/// `($1, $2, ...), ($n, ...)`: placeholders of `rows` rows of `width` values.
pub(super) fn placeholders(rows: usize, width: usize) -> String {
    let mut text = String::with_capacity(rows * width * 5);
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        for column in 0..width {
            if column > 0 {
                text.push_str(", ");
            }
            text.push('$');
            text.push_str(&(row * width + column + 1).to_string());
        }
        text.push(')');
    }
    text
}

/// The usage ledger's filters of `/spend/logs` (all given ones must match).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpendLogFilter {
    /// SHA-256 hex of the key.
    pub key_hash: Option<String>,
    /// Owner of the key.
    pub user_id: Option<String>,
    /// Team of the key.
    pub team_id: Option<String>,
    /// Public model name.
    pub model: Option<String>,
    /// The request's `user` field.
    pub end_user: Option<String>,
    /// The record's id or the client's x-request-id.
    pub request_id: Option<String>,
    /// Unix ms; records started at or after it.
    pub start_ms: Option<i64>,
    /// Unix ms; records started before it.
    pub end_ms: Option<i64>,
}

/// A value bound to a built query.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
}

/// `WHERE ...` of `filter` (or empty), with the values it binds from `$1`. Its range
/// (`start_ms`, `end_ms`) bounds `range_column`: `started_unix_ms` of the records, or `day`
/// of a rollup (the bounds are then day numbers).
fn where_clause(filter: &SpendLogFilter, range_column: &str, binds: &mut Vec<Bind>) -> String {
    let mut conditions: Vec<String> = Vec::new();
    for (column, value) in [
        ("key_hash", &filter.key_hash),
        ("user_id", &filter.user_id),
        ("team_id", &filter.team_id),
        ("model_name", &filter.model),
        ("end_user", &filter.end_user),
    ] {
        if let Some(value) = value {
            binds.push(Bind::Text(value.clone()));
            conditions.push(format!("{column} = ${}", binds.len()));
        }
    }
    if let Some(request_id) = &filter.request_id {
        binds.push(Bind::Text(request_id.clone()));
        let n = binds.len();
        conditions.push(format!("(id = ${n} OR request_id = ${n})"));
    }
    if let Some(start) = filter.start_ms {
        binds.push(Bind::Int(start));
        conditions.push(format!("{range_column} >= ${}", binds.len()));
    }
    if let Some(end) = filter.end_ms {
        binds.push(Bind::Int(end));
        conditions.push(format!("{range_column} < ${}", binds.len()));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// `WHERE ...` of `filter` restricted to the range of `source` (the filter's own range is
/// replaced), with the values it binds from `$1`.
fn part_where_clause(filter: &SpendLogFilter, source: Source, binds: &mut Vec<Bind>) -> String {
    let (range_column, start_ms, end_ms) = source.range();
    let part = SpendLogFilter {
        start_ms,
        end_ms,
        ..filter.clone()
    };
    where_clause(&part, range_column, binds)
}

/// Binds `$binds` in order onto `$query`.
macro_rules! bind_all {
    ($query:expr, $binds:expr) => {{
        let mut query = $query;
        for bind in $binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Int(number) => query.bind(number),
                Bind::Float(number) => query.bind(number),
            };
        }
        query
    }};
}

/// Decodes a row of [`USAGE_SELECT_COLUMNS`].
macro_rules! decode_usage {
    ($row:expr) => {{
        let row = $row;
        let status: i64 = row.try_get("status")?;
        let id: String = row.try_get("id")?;
        let tags_text: String = row.try_get("tags")?;
        let tags: Vec<String> = serde_json::from_str(&tags_text)
            .map_err(|error| StoreError::Corrupt(format!("usage record {id}: tags: {error}")))?;
        let count = |name: &str| -> Result<Option<u64>, sqlx::Error> {
            Ok(row.try_get::<Option<i64>, _>(name)?.map(to_u64))
        };
        proto::UsageRecord {
            model_name: row.try_get("model_name")?,
            deployment_id: row.try_get("deployment_id")?,
            provider: row.try_get("provider")?,
            status: u32::try_from(status).unwrap_or(0),
            prompt_tokens: count("prompt_tokens")?,
            completion_tokens: count("completion_tokens")?,
            cached_prompt_tokens: count("cached_prompt_tokens")?,
            started_unix_ms: to_u64(row.try_get("started_unix_ms")?),
            duration_ms: to_u64(row.try_get("duration_ms")?),
            stream: row.try_get("stream")?,
            key_hash: row.try_get("key_hash")?,
            request_id: row.try_get("request_id")?,
            reasoning_tokens: count("reasoning_tokens")?,
            cache_creation_tokens: count("cache_creation_tokens")?,
            cost: row.try_get("cost")?,
            key_alias: row.try_get("key_alias")?,
            user_id: row.try_get("user_id")?,
            team_id: row.try_get("team_id")?,
            end_user: row.try_get("end_user")?,
            tags,
            first_byte_ms: count("first_byte_ms")?,
            answered_by_gateway: row.try_get("answered_by_gateway")?,
            error_type: row.try_get("error_type")?,
            // Not stored: only the cooldown judge reads it, from records as they arrive.
            error_class: String::new(),
            id,
        }
    }};
}

/// What `/global/spend/report` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportGroup {
    /// Per UTC day, then team; each team's rows per model and key.
    Team,
    /// Per UTC day, then end user (LiteLLM's customer); rows per model and key.
    Customer,
    /// Per key; rows per model.
    ApiKey,
    /// Per user (the key's owner); rows per model.
    User,
    /// Per public model name; rows per key.
    Model,
    /// Per UTC day.
    Day,
}

/// One group of a spend report: the columns grouped by are set, the others empty (`day`:
/// `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportRow {
    /// UTC day number (unix ms / [`DAY_MS`]).
    pub day: Option<i64>,
    /// Team id.
    pub team_id: String,
    /// End user.
    pub end_user: String,
    /// Key hash.
    pub key_hash: String,
    /// User id.
    pub user_id: String,
    /// Public model name.
    pub model: String,
    /// Sum of the known costs, US dollars.
    pub spend: f64,
    /// Sum of prompt tokens.
    pub prompt_tokens: u64,
    /// Sum of completion tokens.
    pub completion_tokens: u64,
    /// Number of records.
    pub requests: u64,
}

/// Spend of one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct TagSpend {
    /// The tag.
    pub tag: String,
    /// Records carrying it.
    pub log_count: u64,
    /// Their known costs, US dollars.
    pub total_spend: f64,
}

/// A report's restriction besides its dates (`api_key`, `internal_user_id`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportFilter {
    /// Only this key's records.
    pub key_hash: Option<String>,
    /// Only this user's records.
    pub user_id: Option<String>,
}

impl Store {
    /// Records a batch of usage; records whose id is already stored are skipped, so a batch
    /// resent after a lost acknowledgement is counted once. In the same transaction, the cost
    /// of the records stored now (only those) is added to the spend of every scope they are
    /// charged to (key, user, team, end user, global, key x model), and their tags go to
    /// `usage_tags`. Returns how many were new.
    pub async fn insert_usage(&self, records: &[proto::UsageRecord]) -> Result<u64, StoreError> {
        let new = self.insert_usage_new(records).await?;
        Ok(u64::try_from(new.len()).unwrap_or(u64::MAX))
    }

    /// [`Store::insert_usage`], returning the positions in `records` of those stored now
    /// (ascending): a record already stored (by this replica or another one on the same
    /// database) or repeated in the batch is not among them, so what is judged from new
    /// records (cooldowns) counts each record once.
    pub async fn insert_usage_new(
        &self,
        records: &[proto::UsageRecord],
    ) -> Result<Vec<usize>, StoreError> {
        // One record per id: a batch holding the same record twice must charge it once.
        let mut seen = HashSet::new();
        let mut positions = Vec::with_capacity(records.len());
        let unique: Vec<(String, &proto::UsageRecord)> = records
            .iter()
            .enumerate()
            .map(|(position, record)| (position, usage_id(record), record))
            .filter(|(_, id, _)| seen.insert(id.clone()))
            .map(|(position, id, record)| {
                positions.push(position);
                (id, record)
            })
            .collect();
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let received = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut inserted: HashSet<String> = HashSet::new();
            for chunk in unique.chunks(USAGE_ROWS_PER_INSERT) {
                let sql = format!(
                    "INSERT INTO usage_records ({USAGE_INSERT_COLUMNS}) VALUES {} \
                     ON CONFLICT (id) DO NOTHING RETURNING id",
                    placeholders(chunk.len(), USAGE_INSERT_WIDTH)
                );
                let mut query = sqlx::query(&sql);
                for (id, record) in chunk {
                    let tags = serde_json::Value::from(record.tags.clone()).to_string();
                    query = query
                        .bind(id.clone())
                        .bind(record.model_name.clone())
                        .bind(record.deployment_id.clone())
                        .bind(record.provider.clone())
                        .bind(i64::from(record.status))
                        .bind(record.prompt_tokens.map(to_i64))
                        .bind(record.completion_tokens.map(to_i64))
                        .bind(record.cached_prompt_tokens.map(to_i64))
                        .bind(to_i64(record.started_unix_ms))
                        .bind(to_i64(record.duration_ms))
                        .bind(record.stream)
                        .bind(record.key_hash.clone())
                        .bind(received)
                        .bind(record.request_id.clone())
                        .bind(record.reasoning_tokens.map(to_i64))
                        .bind(record.cache_creation_tokens.map(to_i64))
                        .bind(record.cost.filter(|cost| cost.is_finite()))
                        .bind(record.key_alias.clone())
                        .bind(record.user_id.clone())
                        .bind(record.team_id.clone())
                        .bind(record.end_user.clone())
                        .bind(tags)
                        .bind(record.first_byte_ms.map(to_i64))
                        .bind(record.answered_by_gateway)
                        .bind(record.error_type.clone());
                }
                for row in query.fetch_all(&mut *tx).await? {
                    inserted.insert(row.try_get("id")?);
                }
            }
            let new: Vec<(&String, &proto::UsageRecord)> = unique
                .iter()
                .filter(|(id, _)| inserted.contains(id))
                .map(|(id, record)| (id, *record))
                .collect();

            let mut tag_rows: Vec<(&String, &String, i64, Option<f64>)> = Vec::new();
            for (id, record) in &new {
                let mut record_tags = HashSet::new();
                for tag in &record.tags {
                    if record_tags.insert(tag) {
                        tag_rows.push((id, tag, to_i64(record.started_unix_ms), record.cost));
                    }
                }
            }
            for chunk in tag_rows.chunks(SMALL_ROWS_PER_INSERT) {
                let sql = format!(
                    "INSERT INTO usage_tags (record_id, tag, started_unix_ms, cost) VALUES {} \
                     ON CONFLICT (record_id, tag) DO NOTHING",
                    placeholders(chunk.len(), 4)
                );
                let mut query = sqlx::query(&sql);
                for (id, tag, started, cost) in chunk {
                    query = query
                        .bind((*id).clone())
                        .bind((*tag).clone())
                        .bind(*started)
                        .bind(cost.filter(|cost| cost.is_finite()));
                }
                query.execute(&mut *tx).await?;
            }

            let totals: Vec<((SpendScope, String), f64)> =
                spend_per_scope(new.iter().map(|(_, record)| *record)).into_iter().collect();
            for chunk in totals.chunks(SMALL_ROWS_PER_INSERT) {
                // reset_at of a new row is 0 (no window yet); the budget clock owns it and
                // sets spend back to 0 when a window ends, so an existing row keeps it.
                let sql = format!(
                    "INSERT INTO spend_totals (scope, scope_id, spend, updated_ms) VALUES {} \
                     ON CONFLICT (scope, scope_id) DO UPDATE SET \
                     spend = spend_totals.spend + excluded.spend, \
                     updated_ms = excluded.updated_ms",
                    placeholders(chunk.len(), 4)
                );
                let mut query = sqlx::query(&sql);
                for ((scope, id), spend) in chunk {
                    query = query
                        .bind(scope.as_str())
                        .bind(id.clone())
                        .bind(*spend)
                        .bind(received);
                }
                query.execute(&mut *tx).await?;
            }

            let mut rollups = RollupChanges::default();
            for (_, record) in &new {
                rollups.record(&RolledRecord::of(record), 1);
            }
            for (_, tag, started, cost) in &tag_rows {
                rollups.tag(tag, *started, *cost, 1);
            }
            for (sql, binds) in rollups.statements() {
                bind_all!(sqlx::query(&sql), binds).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(positions
                .iter()
                .zip(&unique)
                .filter(|(_, (id, _))| inserted.contains(id))
                .map(|(position, _)| *position)
                .collect())
        })
    }

    /// The spend of one scope in its current budget window and when that window ends (unix
    /// ms, 0: never); `None` when nothing was ever charged to it.
    pub async fn spend_total(
        &self,
        scope: SpendScope,
        id: &str,
    ) -> Result<Option<(f64, u64)>, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT spend, reset_at FROM spend_totals WHERE scope = $1 AND scope_id = $2",
            )
            .bind(scope.as_str())
            .bind(id)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(row) => Ok(Some((row.try_get("spend")?, to_u64(row.try_get("reset_at")?)))),
                None => Ok(None),
            }
        })
    }

    /// The whole usage ledger, oldest first (tests and small installations).
    pub async fn usage_records(&self) -> Result<Vec<proto::UsageRecord>, StoreError> {
        let sql = format!(
            "SELECT {USAGE_SELECT_COLUMNS} FROM usage_records ORDER BY started_unix_ms, id"
        );
        with_pool!(self, pool => {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            let mut records = Vec::with_capacity(rows.len());
            for row in &rows {
                records.push(decode_usage!(row));
            }
            Ok(records)
        })
    }

    /// Number of usage records stored.
    pub async fn usage_count(&self) -> Result<u64, StoreError> {
        with_pool!(self, pool => {
            let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM usage_records")
                .fetch_one(pool)
                .await?
                .try_get("n")?;
            Ok(to_u64(count))
        })
    }

    /// One page of the records matching `filter`, newest first (ties by id, descending).
    pub async fn spend_logs(
        &self,
        filter: &SpendLogFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<proto::UsageRecord>, StoreError> {
        let (sql, binds) = spend_logs_query(filter, offset, limit);
        with_pool!(self, pool => {
            let rows = bind_all!(sqlx::query(&sql), binds).fetch_all(pool).await?;
            let mut records = Vec::with_capacity(rows.len());
            for row in &rows {
                records.push(decode_usage!(row));
            }
            Ok(records)
        })
    }

    /// How many records match `filter`: whole days of its range from the daily rollups,
    /// the rest from the records.
    pub async fn spend_logs_count(&self, filter: &SpendLogFilter) -> Result<u64, StoreError> {
        let statements = count_statements(filter);
        let postgres = matches!(self.pool, Pool::Postgres(_));
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if postgres {
                sqlx::query(RANGE_SCAN_COSTS).execute(&mut *tx).await?;
            }
            let mut count = 0u64;
            for (sql, binds) in statements {
                let part: i64 = bind_all!(sqlx::query(&sql), binds)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
                count = count.saturating_add(to_u64(part));
            }
            tx.commit().await?;
            Ok(count)
        })
    }

    /// Spend of the records started in `[start_ms, end_ms)`, summed per the columns `group`
    /// names, largest spend first (ties in the order of the grouped columns). Whole days of
    /// the range are read from the daily rollups, the rest from the records.
    pub async fn spend_report(
        &self,
        start_ms: i64,
        end_ms: i64,
        group: ReportGroup,
        restrict: &ReportFilter,
    ) -> Result<Vec<ReportRow>, StoreError> {
        let postgres = matches!(self.pool, Pool::Postgres(_));
        let statements = report_statements(postgres, start_ms, end_ms, group, restrict);
        let parts = statements.len();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if postgres {
                sqlx::query(RANGE_SCAN_COSTS).execute(&mut *tx).await?;
            }
            let mut report = Vec::new();
            for (sql, binds) in statements {
                let rows = bind_all!(sqlx::query(&sql), binds).fetch_all(&mut *tx).await?;
                report.reserve(rows.len());
                for row in &rows {
                    let day: i64 = row.try_get("day")?;
                    report.push(ReportRow {
                        day: (day >= 0).then_some(day),
                        team_id: row.try_get("team_id")?,
                        end_user: row.try_get("end_user")?,
                        key_hash: row.try_get("key_hash")?,
                        user_id: row.try_get("user_id")?,
                        model: row.try_get("model_name")?,
                        spend: row.try_get("spend")?,
                        prompt_tokens: to_u64(row.try_get("prompt_tokens")?),
                        completion_tokens: to_u64(row.try_get("completion_tokens")?),
                        requests: to_u64(row.try_get("requests")?),
                    });
                }
            }
            tx.commit().await?;
            Ok(finish_report(report, parts > 1))
        })
    }

    /// Spend per tag of the records started in `[start_ms, end_ms)` (either bound may be
    /// open), largest spend first (ties by tag). Whole days from the daily rollups, the rest
    /// from the records' tags.
    pub async fn spend_by_tag(
        &self,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
    ) -> Result<Vec<TagSpend>, StoreError> {
        let statements = tags_statements(start_ms, end_ms);
        let parts = statements.len();
        let postgres = matches!(self.pool, Pool::Postgres(_));
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if postgres {
                sqlx::query(RANGE_SCAN_COSTS).execute(&mut *tx).await?;
            }
            let mut tags = Vec::new();
            for (sql, binds) in statements {
                let rows = bind_all!(sqlx::query(&sql), binds).fetch_all(&mut *tx).await?;
                for row in &rows {
                    tags.push(TagSpend {
                        tag: row.try_get("tag")?,
                        log_count: to_u64(row.try_get("log_count")?),
                        total_spend: row.try_get("total_spend")?,
                    });
                }
            }
            tx.commit().await?;
            Ok(finish_tags(tags, parts > 1))
        })
    }

    /// `team_id -> team_alias` of every team with an alias (report labels).
    pub async fn team_aliases(&self) -> Result<BTreeMap<String, String>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT team_id, team_alias FROM teams WHERE team_alias IS NOT NULL",
            )
            .fetch_all(pool)
            .await?;
            let mut aliases = BTreeMap::new();
            for row in &rows {
                aliases.insert(row.try_get("team_id")?, row.try_get("team_alias")?);
            }
            Ok(aliases)
        })
    }

    /// Deletes at most `batch` usage records started before `cutoff_ms` (oldest first) and
    /// their tags, in one short transaction, and takes them out of the daily rollups; returns
    /// how many records went. `spend_totals` is left alone: budgets count what was spent,
    /// not what is still logged.
    pub async fn delete_usage_batch(&self, cutoff_ms: i64, batch: u64) -> Result<u64, StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(
                "DELETE FROM usage_records WHERE id IN (SELECT id FROM usage_records \
                 WHERE started_unix_ms < $1 ORDER BY started_unix_ms LIMIT $2) RETURNING id, \
                 started_unix_ms, key_hash, model_name, team_id, user_id, end_user, cost, \
                 prompt_tokens, completion_tokens",
            )
            .bind(cutoff_ms)
            .bind(to_i64(batch))
            .fetch_all(&mut *tx)
            .await?;
            let mut rollups = RollupChanges::default();
            let mut ids = Vec::with_capacity(rows.len());
            for row in &rows {
                ids.push(row.try_get::<String, _>("id")?);
                let texts: [String; 5] = [
                    row.try_get("key_hash")?,
                    row.try_get("model_name")?,
                    row.try_get("team_id")?,
                    row.try_get("user_id")?,
                    row.try_get("end_user")?,
                ];
                let [key_hash, model_name, team_id, user_id, end_user] = &texts;
                let record = RolledRecord {
                    started_ms: row.try_get("started_unix_ms")?,
                    key_hash,
                    model_name,
                    team_id,
                    user_id,
                    end_user,
                    cost: row.try_get("cost")?,
                    prompt_tokens: row.try_get("prompt_tokens")?,
                    completion_tokens: row.try_get("completion_tokens")?,
                };
                rollups.record(&record, -1);
            }
            for chunk in ids.chunks(SMALL_ROWS_PER_INSERT) {
                let list = (1..=chunk.len())
                    .map(|n| format!("${n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "DELETE FROM usage_tags WHERE record_id IN ({list}) \
                     RETURNING tag, started_unix_ms, cost"
                );
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(id.clone());
                }
                for row in query.fetch_all(&mut *tx).await? {
                    let tag: String = row.try_get("tag")?;
                    rollups.tag(&tag, row.try_get("started_unix_ms")?, row.try_get("cost")?, -1);
                }
            }
            for (sql, binds) in rollups.statements().into_iter().chain(rollups.prune_statements()) {
                bind_all!(sqlx::query(&sql), binds).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
        })
    }

    /// Deletes every usage record started before `cutoff_ms`, `batch` at a time (each batch
    /// its own transaction, so writers wait at most one batch); returns how many went.
    pub async fn delete_usage_before(&self, cutoff_ms: i64, batch: u64) -> Result<u64, StoreError> {
        let batch = batch.max(1);
        let mut deleted = 0u64;
        loop {
            let gone = self.delete_usage_batch(cutoff_ms, batch).await?;
            deleted = deleted.saturating_add(gone);
            if gone < batch {
                return Ok(deleted);
            }
        }
    }
}

/// The SQL and binds of [`Store::spend_logs`].
fn spend_logs_query(filter: &SpendLogFilter, offset: u64, limit: u64) -> (String, Vec<Bind>) {
    let mut binds = Vec::new();
    let condition = where_clause(filter, "started_unix_ms", &mut binds);
    binds.push(Bind::Int(to_i64(limit)));
    let limit_at = binds.len();
    binds.push(Bind::Int(to_i64(offset)));
    let offset_at = binds.len();
    let sql = format!(
        "SELECT {USAGE_SELECT_COLUMNS} FROM usage_records{condition} \
         ORDER BY started_unix_ms DESC, id DESC LIMIT ${limit_at} OFFSET ${offset_at}"
    );
    (sql, binds)
}

/// The statements of [`Store::spend_logs_count`], one per part of the filter's range. A
/// filter by request id is a lookup of one record: it reads the records.
fn count_statements(filter: &SpendLogFilter) -> Vec<(String, Vec<Bind>)> {
    let parts = if filter.request_id.is_some() {
        vec![Source::Records(filter.start_ms, filter.end_ms)]
    } else {
        split_range(filter.start_ms, filter.end_ms)
    };
    parts
        .into_iter()
        .map(|source| {
            let (table, counted) = match source {
                Source::Records(..) => ("usage_records", "COUNT(*)"),
                // Only the end users' rollup has the end user column.
                Source::Days(..) if filter.end_user.is_some() => {
                    ("spend_daily_end_users", "SUM(requests)")
                }
                Source::Days(..) => ("spend_daily", "SUM(requests)"),
            };
            let mut binds = Vec::new();
            let condition = part_where_clause(filter, source, &mut binds);
            (
                format!(
                    "SELECT CAST(COALESCE({counted}, 0) AS BIGINT) AS n FROM {table}{condition}"
                ),
                binds,
            )
        })
        .collect()
}

/// The statements of [`Store::spend_report`], one per part of the range.
fn report_statements(
    postgres: bool,
    start_ms: i64,
    end_ms: i64,
    group: ReportGroup,
    restrict: &ReportFilter,
) -> Vec<(String, Vec<Bind>)> {
    split_range(Some(start_ms), Some(end_ms))
        .into_iter()
        .map(|source| report_query(postgres, source, group, restrict))
        .collect()
}

/// The SQL and binds of one part of [`Store::spend_report`].
fn report_query(
    postgres: bool,
    source: Source,
    group: ReportGroup,
    restrict: &ReportFilter,
) -> (String, Vec<Bind>) {
    let (table, day, spent, counted) = match source {
        Source::Records(..) => (
            "usage_records",
            format!("started_unix_ms / {DAY_MS}"),
            "cost",
            "COUNT(*)",
        ),
        Source::Days(..) => (
            // Only the end users' rollup has the end user column.
            if group == ReportGroup::Customer {
                "spend_daily_end_users"
            } else {
                "spend_daily"
            },
            "day".to_string(),
            "spend",
            "SUM(requests)",
        ),
    };
    // PostgreSQL groups text by its collation when it sorts, which costs seconds over a day
    // of records with en_US; byte order ("C") groups the same rows.
    let text = |name: &str| -> String {
        if postgres {
            format!("{name} COLLATE \"C\"")
        } else {
            name.to_string()
        }
    };
    let grouped: &[&str] = match group {
        ReportGroup::Team => &["day", "team_id", "model_name", "key_hash"],
        ReportGroup::Customer => &["day", "end_user", "model_name", "key_hash"],
        ReportGroup::ApiKey => &["key_hash", "model_name"],
        ReportGroup::User => &["user_id", "model_name"],
        ReportGroup::Model => &["model_name", "key_hash"],
        ReportGroup::Day => &["day"],
    };
    let column = |name: &str, expression: &str, empty: &str| -> String {
        if grouped.contains(&name) {
            format!("{expression} AS {name}")
        } else {
            format!("{empty} AS {name}")
        }
    };
    let selected = [
        column("day", &day, "CAST(-1 AS BIGINT)"),
        column("team_id", &text("team_id"), "''"),
        column("end_user", &text("end_user"), "''"),
        column("key_hash", &text("key_hash"), "''"),
        column("user_id", &text("user_id"), "''"),
        column("model_name", &text("model_name"), "''"),
    ]
    .join(", ");
    let group_by = grouped
        .iter()
        .map(|name| {
            if *name == "day" {
                day.clone()
            } else {
                text(name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let filter = SpendLogFilter {
        key_hash: restrict.key_hash.clone(),
        user_id: restrict.user_id.clone(),
        ..Default::default()
    };
    let mut binds = Vec::new();
    let condition = part_where_clause(&filter, source, &mut binds);
    let sql = format!(
        "SELECT {selected}, COALESCE(SUM({spent}), 0.0) AS spend, \
         CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
         CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
         CAST(COALESCE({counted}, 0) AS BIGINT) AS requests FROM {table}{condition} \
         GROUP BY {group_by}"
    );
    (sql, binds)
}

/// A report's rows, the groups read from several parts of the range added up (`merge`),
/// largest spend first, ties in the order of the grouped columns.
fn finish_report(rows: Vec<ReportRow>, merge: bool) -> Vec<ReportRow> {
    let mut rows = if merge {
        type Group = (Option<i64>, String, String, String, String, String);
        let mut groups: std::collections::HashMap<Group, ReportRow> =
            std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let group = (
                row.day,
                row.team_id.clone(),
                row.end_user.clone(),
                row.key_hash.clone(),
                row.user_id.clone(),
                row.model.clone(),
            );
            match groups.entry(group) {
                std::collections::hash_map::Entry::Occupied(mut entry) => {
                    let sum = entry.get_mut();
                    sum.spend += row.spend;
                    sum.prompt_tokens = sum.prompt_tokens.saturating_add(row.prompt_tokens);
                    sum.completion_tokens =
                        sum.completion_tokens.saturating_add(row.completion_tokens);
                    sum.requests = sum.requests.saturating_add(row.requests);
                }
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(row);
                }
            }
        }
        groups.into_values().collect()
    } else {
        rows
    };
    rows.sort_by(|a, b| {
        b.spend.total_cmp(&a.spend).then_with(|| {
            (
                a.day,
                &a.team_id,
                &a.end_user,
                &a.key_hash,
                &a.user_id,
                &a.model,
            )
                .cmp(&(
                    b.day,
                    &b.team_id,
                    &b.end_user,
                    &b.key_hash,
                    &b.user_id,
                    &b.model,
                ))
        })
    });
    rows
}

/// The statements of [`Store::spend_by_tag`], one per part of the range.
fn tags_statements(start_ms: Option<i64>, end_ms: Option<i64>) -> Vec<(String, Vec<Bind>)> {
    split_range(start_ms, end_ms)
        .into_iter()
        .map(|source| {
            let (table, counted, spent) = match source {
                Source::Records(..) => ("usage_tags", "COUNT(*)", "cost"),
                Source::Days(..) => ("spend_daily_tags", "SUM(requests)", "spend"),
            };
            let mut binds = Vec::new();
            let condition = part_where_clause(&SpendLogFilter::default(), source, &mut binds);
            (
                format!(
                    "SELECT tag, CAST(COALESCE({counted}, 0) AS BIGINT) AS log_count, \
                     COALESCE(SUM({spent}), 0.0) AS total_spend FROM {table}{condition} \
                     GROUP BY tag"
                ),
                binds,
            )
        })
        .collect()
}

/// Spend per tag, the tags read from several parts of the range added up (`merge`),
/// largest spend first, ties by tag.
fn finish_tags(tags: Vec<TagSpend>, merge: bool) -> Vec<TagSpend> {
    let mut tags = if merge {
        let mut merged: BTreeMap<String, TagSpend> = BTreeMap::new();
        for tag in tags {
            match merged.entry(tag.tag.clone()) {
                std::collections::btree_map::Entry::Occupied(mut entry) => {
                    let sum = entry.get_mut();
                    sum.log_count = sum.log_count.saturating_add(tag.log_count);
                    sum.total_spend += tag.total_spend;
                }
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(tag);
                }
            }
        }
        merged.into_values().collect()
    } else {
        tags
    };
    tags.sort_by(|a, b| {
        b.total_spend
            .total_cmp(&a.total_spend)
            .then_with(|| a.tag.cmp(&b.tag))
    });
    tags
}

/// A spend query the bench explains ([`Store::explain_spend_query`]).
#[derive(Debug, Clone)]
pub enum SpendQuery {
    /// [`Store::spend_logs`].
    Logs(SpendLogFilter, u64, u64),
    /// [`Store::spend_logs_count`].
    Count(SpendLogFilter),
    /// [`Store::spend_report`].
    Report(i64, i64, ReportGroup, ReportFilter),
    /// [`Store::spend_by_tag`].
    Tags(Option<i64>, Option<i64>),
}

impl Store {
    /// PostgreSQL's `EXPLAIN (ANALYZE, BUFFERS)` of the SQL a spend query runs, line by line
    /// (the bench prints them; SQLite answers its own `EXPLAIN`, not a plan).
    pub async fn explain_spend_query(&self, query: &SpendQuery) -> Result<Vec<String>, StoreError> {
        let postgres = matches!(self.pool, Pool::Postgres(_));
        let statements = match query {
            SpendQuery::Logs(filter, offset, limit) => {
                vec![spend_logs_query(filter, *offset, *limit)]
            }
            SpendQuery::Count(filter) => count_statements(filter),
            SpendQuery::Report(start, end, group, restrict) => {
                report_statements(postgres, *start, *end, *group, restrict)
            }
            SpendQuery::Tags(start, end) => tags_statements(*start, *end),
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if postgres {
                sqlx::query(RANGE_SCAN_COSTS).execute(&mut *tx).await?;
            }
            let mut lines = Vec::new();
            for (sql, binds) in statements {
                lines.push(format!("-- {sql}"));
                let explain = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
                let rows = bind_all!(sqlx::query(&explain), binds).fetch_all(&mut *tx).await?;
                for row in &rows {
                    lines.push(row.try_get::<String, _>(0)?);
                }
            }
            tx.commit().await?;
            Ok(lines)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_every_value() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 1), "($1)");
    }

    #[test]
    fn spend_goes_to_every_named_scope_once_per_record() {
        let record = proto::UsageRecord {
            key_hash: "k".into(),
            model_name: "m".into(),
            user_id: "u".into(),
            team_id: String::new(),
            end_user: "e".into(),
            cost: Some(0.25),
            ..Default::default()
        };
        let unpriced = proto::UsageRecord {
            cost: None,
            ..record.clone()
        };
        let totals = spend_per_scope([&record, &record, &unpriced].into_iter());
        let expected: BTreeMap<(SpendScope, String), f64> = [
            ((SpendScope::Key, "k".to_string()), 0.5),
            ((SpendScope::User, "u".to_string()), 0.5),
            ((SpendScope::EndUser, "e".to_string()), 0.5),
            ((SpendScope::Global, String::new()), 0.5),
            ((SpendScope::KeyModel, "k/m".to_string()), 0.5),
        ]
        .into_iter()
        .collect();
        assert_eq!(totals, expected);
    }
}
