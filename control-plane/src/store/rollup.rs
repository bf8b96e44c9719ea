//! Daily rollups of the usage ledger: `spend_daily` (day x key x model x team x user),
//! `spend_daily_end_users` (the same x end user) and `spend_daily_tags` (day x tag), from
//! the `*_spend_rollups` migration. Each row holds what the records of its UTC day and group
//! add up to (known costs, prompt and completion tokens, number of records).
//!
//! They are kept in step with `usage_records` in the transactions that change it
//! ([`RollupChanges`]: ingestion adds a batch's records, retention takes its deleted ones
//! away), so the rollup of a day always equals the records of that day. A report over a date
//! range then reads whole days from the rollups and only the parts of days at either end of
//! the range from the records ([`split_range`]): a 30-day report reads 30 days of groups
//! instead of every record.

use std::collections::BTreeMap;

use super::spend::{placeholders, Bind, DAY_MS, SMALL_ROWS_PER_INSERT};

/// What a group of records adds up to (negative when records are taken away).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sums {
    spend: f64,
    prompt_tokens: i64,
    completion_tokens: i64,
    requests: i64,
}

impl Sums {
    /// Counts one record (or tag) with this cost and these tokens in (`sign` 1) or out (-1).
    fn count(
        &mut self,
        cost: Option<f64>,
        prompt_tokens: Option<i64>,
        completion_tokens: Option<i64>,
        sign: i64,
    ) {
        // Unknown cost adds nothing to the spend, as SUM(cost) skips NULL.
        if let Some(cost) = cost.filter(|cost| cost.is_finite()) {
            self.spend += cost * sign as f64;
        }
        self.prompt_tokens += prompt_tokens.unwrap_or(0) * sign;
        self.completion_tokens += completion_tokens.unwrap_or(0) * sign;
        self.requests += sign;
    }

    fn add(&mut self, record: &RolledRecord<'_>, sign: i64) {
        self.count(
            record.cost,
            record.prompt_tokens,
            record.completion_tokens,
            sign,
        );
    }
}

/// The columns of a usage record the rollups group and sum.
#[derive(Debug, Clone, Copy)]
pub(super) struct RolledRecord<'a> {
    /// Unix ms.
    pub started_ms: i64,
    pub key_hash: &'a str,
    pub model_name: &'a str,
    pub team_id: &'a str,
    pub user_id: &'a str,
    pub end_user: &'a str,
    pub cost: Option<f64>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
}

impl<'a> RolledRecord<'a> {
    /// The rolled columns of a record being stored.
    pub fn of(record: &'a crate::proto::UsageRecord) -> Self {
        RolledRecord {
            started_ms: super::to_i64(record.started_unix_ms),
            key_hash: &record.key_hash,
            model_name: &record.model_name,
            team_id: &record.team_id,
            user_id: &record.user_id,
            end_user: &record.end_user,
            cost: record.cost,
            prompt_tokens: record.prompt_tokens.map(super::to_i64),
            completion_tokens: record.completion_tokens.map(super::to_i64),
        }
    }
}

/// `spend_daily`'s group: day, key_hash, model_name, team_id, user_id.
type DailyGroup = (i64, String, String, String, String);
/// `spend_daily_end_users`' group: day, end_user, key_hash, model_name, team_id, user_id.
type EndUserGroup = (i64, String, String, String, String, String);
/// `spend_daily_tags`' group: day, tag.
type TagGroup = (i64, String);

/// What one transaction changes in the rollups. Groups are sorted, so concurrent
/// transactions update rows in one order and cannot deadlock.
#[derive(Debug, Default)]
pub(super) struct RollupChanges {
    daily: BTreeMap<DailyGroup, Sums>,
    end_users: BTreeMap<EndUserGroup, Sums>,
    tags: BTreeMap<TagGroup, Sums>,
}

impl RollupChanges {
    /// Counts a record in (`sign` 1) or out (-1). Its tags go through [`Self::tag`].
    pub fn record(&mut self, record: &RolledRecord<'_>, sign: i64) {
        let day = record.started_ms.div_euclid(DAY_MS);
        let text = |value: &str| value.to_string();
        self.daily
            .entry((
                day,
                text(record.key_hash),
                text(record.model_name),
                text(record.team_id),
                text(record.user_id),
            ))
            .or_default()
            .add(record, sign);
        self.end_users
            .entry((
                day,
                text(record.end_user),
                text(record.key_hash),
                text(record.model_name),
                text(record.team_id),
                text(record.user_id),
            ))
            .or_default()
            .add(record, sign);
    }

    /// Counts a tag of a record started at `started_ms` in (`sign` 1) or out (-1).
    pub fn tag(&mut self, tag: &str, started_ms: i64, cost: Option<f64>, sign: i64) {
        let day = started_ms.div_euclid(DAY_MS);
        self.tags
            .entry((day, tag.to_string()))
            .or_default()
            .count(cost, None, None, sign);
    }

    /// The first and last day these changes touch (groups are sorted by day first;
    /// `end_users` has the days of `daily`).
    fn days(&self) -> Option<(i64, i64)> {
        let first = [
            self.daily.first_key_value().map(|(group, _)| group.0),
            self.tags.first_key_value().map(|(group, _)| group.0),
        ];
        let last = [
            self.daily.last_key_value().map(|(group, _)| group.0),
            self.tags.last_key_value().map(|(group, _)| group.0),
        ];
        Some((
            first.into_iter().flatten().min()?,
            last.into_iter().flatten().max()?,
        ))
    }

    /// The upserts that add these changes to the rollups, table by table in a fixed order.
    pub fn statements(&self) -> Vec<(String, Vec<Bind>)> {
        const SUMS: &[&str] = &["spend", "prompt_tokens", "completion_tokens", "requests"];
        let sums = |row: &mut Vec<Bind>, sums: &Sums| {
            row.push(Bind::Float(sums.spend));
            row.push(Bind::Int(sums.prompt_tokens));
            row.push(Bind::Int(sums.completion_tokens));
            row.push(Bind::Int(sums.requests));
        };
        let mut statements = Vec::new();
        let daily = self
            .daily
            .iter()
            .map(|((day, key, model, team, user), group)| {
                let mut row = vec![Bind::Int(*day)];
                row.extend([key, model, team, user].map(|text| Bind::Text(text.clone())));
                sums(&mut row, group);
                row
            });
        upserts(
            &mut statements,
            "spend_daily",
            &["day", "key_hash", "model_name", "team_id", "user_id"],
            SUMS,
            daily,
        );
        let end_users =
            self.end_users
                .iter()
                .map(|((day, end_user, key, model, team, user), group)| {
                    let mut row = vec![Bind::Int(*day)];
                    row.extend(
                        [end_user, key, model, team, user].map(|text| Bind::Text(text.clone())),
                    );
                    sums(&mut row, group);
                    row
                });
        upserts(
            &mut statements,
            "spend_daily_end_users",
            &[
                "day",
                "end_user",
                "key_hash",
                "model_name",
                "team_id",
                "user_id",
            ],
            SUMS,
            end_users,
        );
        let tags = self.tags.iter().map(|((day, tag), group)| {
            vec![
                Bind::Int(*day),
                Bind::Text(tag.clone()),
                Bind::Float(group.spend),
                Bind::Int(group.requests),
            ]
        });
        upserts(
            &mut statements,
            "spend_daily_tags",
            &["day", "tag"],
            &["spend", "requests"],
            tags,
        );
        statements
    }

    /// After records were taken away: deletes the groups of the days touched that no record
    /// is left in (their spend would otherwise linger as a rounding residue).
    pub fn prune_statements(&self) -> Vec<(String, Vec<Bind>)> {
        let Some((first, last)) = self.days() else {
            return Vec::new();
        };
        ["spend_daily", "spend_daily_end_users", "spend_daily_tags"]
            .into_iter()
            .map(|table| {
                (
                    format!("DELETE FROM {table} WHERE day >= $1 AND day <= $2 AND requests <= 0"),
                    vec![Bind::Int(first), Bind::Int(last)],
                )
            })
            .collect()
    }
}

/// Appends to `statements` the multi-row upserts of `rows` (each the values of `groups`
/// then of `sums`) into `table`: a new group is inserted, an existing one has the values of
/// `sums` added.
fn upserts(
    statements: &mut Vec<(String, Vec<Bind>)>,
    table: &str,
    groups: &[&str],
    sums: &[&str],
    rows: impl Iterator<Item = Vec<Bind>>,
) {
    let width = groups.len() + sums.len();
    let added = sums
        .iter()
        .map(|column| format!("{column} = {table}.{column} + excluded.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<Vec<Bind>> = rows.collect();
    for chunk in rows.chunks(SMALL_ROWS_PER_INSERT) {
        statements.push((
            format!(
                "INSERT INTO {table} ({}, {}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {added}",
                groups.join(", "),
                sums.join(", "),
                placeholders(chunk.len(), width),
                groups.join(", "),
            ),
            chunk.iter().flatten().cloned().collect(),
        ));
    }
}

/// Rebuilds every rollup from the records (what the migration does for a ledger stored
/// before it; the bench and tests call it after a bulk load that bypassed ingestion).
pub(super) const REBUILD: &[&str] = &[
    "DELETE FROM spend_daily",
    "DELETE FROM spend_daily_end_users",
    "DELETE FROM spend_daily_tags",
    "INSERT INTO spend_daily (day, key_hash, model_name, team_id, user_id, spend, \
     prompt_tokens, completion_tokens, requests) \
     SELECT started_unix_ms / 86400000, key_hash, model_name, team_id, user_id, \
     COALESCE(SUM(cost), 0.0), COALESCE(SUM(prompt_tokens), 0), \
     COALESCE(SUM(completion_tokens), 0), COUNT(*) FROM usage_records \
     GROUP BY started_unix_ms / 86400000, key_hash, model_name, team_id, user_id",
    "INSERT INTO spend_daily_end_users (day, end_user, key_hash, model_name, team_id, \
     user_id, spend, prompt_tokens, completion_tokens, requests) \
     SELECT started_unix_ms / 86400000, end_user, key_hash, model_name, team_id, user_id, \
     COALESCE(SUM(cost), 0.0), COALESCE(SUM(prompt_tokens), 0), \
     COALESCE(SUM(completion_tokens), 0), COUNT(*) FROM usage_records \
     GROUP BY started_unix_ms / 86400000, end_user, key_hash, model_name, team_id, user_id",
    "INSERT INTO spend_daily_tags (day, tag, spend, requests) \
     SELECT started_unix_ms / 86400000, tag, COALESCE(SUM(cost), 0.0), COUNT(*) \
     FROM usage_tags GROUP BY started_unix_ms / 86400000, tag",
];

/// Where one part of a date range is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The records started in `[start, end)` (unix ms; `None`: open).
    Records(Option<i64>, Option<i64>),
    /// The rollups of UTC days `[first, end)` (day numbers; `None`: open).
    Days(Option<i64>, Option<i64>),
}

impl Source {
    /// The column this part's range bounds, and its bounds: `started_unix_ms` of the records
    /// (unix ms) or `day` of a rollup (day numbers).
    pub fn range(self) -> (&'static str, Option<i64>, Option<i64>) {
        match self {
            Source::Records(start, end) => ("started_unix_ms", start, end),
            Source::Days(first, end) => ("day", first, end),
        }
    }
}

/// The parts a date range `[start, end)` (unix ms, either open) is read from: its whole UTC
/// days from the rollups, and what it holds of a day it starts or ends inside of from the
/// records. A range inside one or two days with no whole day in it is read from the records.
pub(super) fn split_range(start: Option<i64>, end: Option<i64>) -> Vec<Source> {
    // First whole day: the day of the start if it is a midnight, else the next.
    let first_day = start.map(|start| {
        let day = start.div_euclid(DAY_MS);
        if start.rem_euclid(DAY_MS) == 0 {
            day
        } else {
            day.saturating_add(1)
        }
    });
    let end_day = end.map(|end| end.div_euclid(DAY_MS));
    if let (Some(first), Some(last)) = (first_day, end_day) {
        if first >= last {
            return vec![Source::Records(start, end)];
        }
    }
    let mut parts = vec![Source::Days(first_day, end_day)];
    if let (Some(start), Some(first)) = (start, first_day) {
        let midnight = first.saturating_mul(DAY_MS);
        if start < midnight {
            parts.push(Source::Records(Some(start), Some(midnight)));
        }
    }
    if let (Some(end), Some(last)) = (end, end_day) {
        let midnight = last.saturating_mul(DAY_MS);
        if end > midnight {
            parts.push(Source::Records(Some(midnight), Some(end)));
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: i64 = DAY_MS;

    #[test]
    fn whole_days_come_from_the_rollups_and_edges_from_the_records() {
        // Midnight to midnight: rollups only.
        assert_eq!(
            split_range(Some(3 * D), Some(5 * D)),
            [Source::Days(Some(3), Some(5))]
        );
        // Starts and ends inside days: the whole days between, and both edges.
        assert_eq!(
            split_range(Some(3 * D + 7), Some(5 * D + 9)),
            [
                Source::Days(Some(4), Some(5)),
                Source::Records(Some(3 * D + 7), Some(4 * D)),
                Source::Records(Some(5 * D), Some(5 * D + 9)),
            ]
        );
        // Inside one day, or across one midnight with no whole day: the records.
        assert_eq!(
            split_range(Some(3 * D + 7), Some(3 * D + 9)),
            [Source::Records(Some(3 * D + 7), Some(3 * D + 9))]
        );
        assert_eq!(
            split_range(Some(3 * D + 7), Some(4 * D + 9)),
            [Source::Records(Some(3 * D + 7), Some(4 * D + 9))]
        );
        // Open ends.
        assert_eq!(split_range(None, None), [Source::Days(None, None)]);
        assert_eq!(
            split_range(None, Some(5 * D + 1)),
            [
                Source::Days(None, Some(5)),
                Source::Records(Some(5 * D), Some(5 * D + 1))
            ]
        );
        assert_eq!(
            split_range(Some(3 * D - 1), None),
            [
                Source::Days(Some(3), None),
                Source::Records(Some(3 * D - 1), Some(3 * D))
            ]
        );
        // Empty and reversed ranges read nothing from the rollups.
        assert_eq!(
            split_range(Some(3 * D), Some(3 * D)),
            [Source::Records(Some(3 * D), Some(3 * D))]
        );
        assert_eq!(
            split_range(Some(5 * D), Some(3 * D)),
            [Source::Records(Some(5 * D), Some(3 * D))]
        );
        // Far ends do not overflow.
        assert_eq!(
            split_range(Some(i64::MAX), None)[0],
            Source::Days(Some(i64::MAX / D + 1), None)
        );
    }

    #[test]
    fn changes_sum_per_group_and_cancel_out() {
        let record = RolledRecord {
            started_ms: 2 * D + 5,
            key_hash: "k",
            model_name: "m",
            team_id: "t",
            user_id: "u",
            end_user: "e",
            cost: Some(0.5),
            prompt_tokens: Some(10),
            completion_tokens: None,
        };
        let mut changes = RollupChanges::default();
        changes.record(&record, 1);
        changes.record(&record, 1);
        changes.record(
            &RolledRecord {
                cost: None,
                ..record
            },
            1,
        );
        changes.tag("a", record.started_ms, record.cost, 1);
        let daily = changes.daily.values().copied().collect::<Vec<_>>();
        assert_eq!(
            daily,
            [Sums {
                spend: 1.0,
                prompt_tokens: 30,
                completion_tokens: 0,
                requests: 3
            }]
        );
        assert_eq!(changes.end_users.len(), 1);
        assert_eq!(changes.days(), Some((2, 2)));
        changes.record(&record, -1);
        assert_eq!(
            changes.daily.values().next().map(|sums| sums.requests),
            Some(2)
        );
        // One upsert per table; the prune covers the days touched.
        let statements = changes.statements();
        assert_eq!(statements.len(), 3);
        assert_eq!(statements[0].1.len(), 9);
        assert_eq!(statements[1].1.len(), 10);
        assert_eq!(statements[2].1.len(), 4);
        let prune = changes.prune_statements();
        assert_eq!(prune.len(), 3);
        assert!(matches!(prune[0].1[..], [Bind::Int(2), Bind::Int(2)]));
    }
}
