//! Storage of the management state: virtual keys (hashed), users, teams and their members,
//! API-created deployments. Every write is one transaction that starts by bumping the
//! version counter (which serialises writers, so the existence and uniqueness checks made
//! inside it cannot race) and ends by announcing the new version.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{
    now_unix_ms, to_i64, to_u64, Backend, DeploymentRecord, DeploymentSource, Missing, Pool, Store,
    StoreError, StoredDeployment, Taken, CHANGES_CHANNEL, DEPLOYMENT_COLUMNS, INSERT_DEPLOYMENT,
};
use crate::config::Wire;
pub use crate::limits::{RateLimitFields, ScopeRateLimits};

/// A spending limit as stored on a key, user or team (LiteLLM's fields).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetFields {
    /// US dollars per window; requests are refused once spent.
    pub max_budget: Option<f64>,
    /// US dollars per window; crossing it alerts, never refuses.
    pub soft_budget: Option<f64>,
    /// The window as written ("30d"); `None`: the spend never resets.
    pub budget_duration: Option<String>,
    /// [`Self::budget_duration`] in milliseconds (validated by the caller).
    pub budget_duration_ms: Option<i64>,
}

impl BudgetFields {
    /// Whether a budget or a window is set at all.
    pub fn is_set(&self) -> bool {
        self.max_budget.is_some() || self.soft_budget.is_some() || self.budget_duration.is_some()
    }
}

/// A virtual key as stored (never the clear key).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    /// SHA-256 hex of the clear key.
    pub token: String,
    /// Masked key, `sk-...abcd`.
    pub key_name: String,
    /// Unique alias.
    pub key_alias: Option<String>,
    /// Owner.
    pub user_id: Option<String>,
    /// Team.
    pub team_id: Option<String>,
    /// Allowed public model names; empty = all (or the team's).
    pub models: Vec<String>,
    /// Refused by the filters.
    pub blocked: bool,
    /// Unix ms after which the key is refused.
    pub expires_ms: Option<i64>,
    /// Free-form JSON object.
    pub metadata: serde_json::Value,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// The key's budget.
    pub budget: BudgetFields,
    /// `model_max_budget`: US dollars per window for each public model name.
    pub model_max_budget: BTreeMap<String, f64>,
    /// The models of [`Self::model_max_budget`] whose budget has a window of its own
    /// (LiteLLM's `time_period`, as written: "1d"); the others count in the key's window.
    /// Each starts the window of scope `key_model`, id `<token>/<model>`, in `spend_totals`.
    pub model_budget_durations: BTreeMap<String, String>,
    /// `rpm_limit`, `tpm_limit`, `max_parallel_requests`.
    pub limits: RateLimitFields,
    /// `model_rpm_limit`: requests per minute for each public model name.
    pub model_rpm_limit: BTreeMap<String, u64>,
    /// `model_tpm_limit`: tokens per minute for each public model name.
    pub model_tpm_limit: BTreeMap<String, u64>,
}

/// A user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    /// Primary key.
    pub user_id: String,
    /// Email.
    pub user_email: Option<String>,
    /// LiteLLM role (`proxy_admin`, `internal_user`, ...).
    pub user_role: String,
    /// Allowed models.
    pub models: Vec<String>,
    /// Free-form JSON object.
    pub metadata: serde_json::Value,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// The user's budget.
    pub budget: BudgetFields,
    /// The user's own `rpm_limit`, `tpm_limit`, `max_parallel_requests` (those of
    /// `general_settings.user_rate_limit` are not here: they fill the fields left unset when
    /// the snapshot is built).
    pub limits: RateLimitFields,
}

/// A team member as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRow {
    /// The member.
    pub user_id: String,
    /// The member's email, if known.
    pub user_email: Option<String>,
    /// `admin` or `user`.
    pub role: String,
}

/// A member to add: by user id, or by email (looked up, else a new user).
#[derive(Debug, Clone, PartialEq)]
pub struct NewMember {
    /// Existing or new user id.
    pub user_id: Option<String>,
    /// Email.
    pub user_email: Option<String>,
    /// `admin` or `user`.
    pub role: String,
}

/// A team with its members.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamRow {
    /// Primary key.
    pub team_id: String,
    /// Unique alias.
    pub team_alias: Option<String>,
    /// Models the team's keys may use.
    pub models: Vec<String>,
    /// Free-form JSON object.
    pub metadata: serde_json::Value,
    /// Every key of the team is refused.
    pub blocked: bool,
    /// Members.
    pub members: Vec<MemberRow>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// The team's budget.
    pub budget: BudgetFields,
    /// `rpm_limit`, `tpm_limit`, `max_parallel_requests`.
    pub limits: RateLimitFields,
}

/// Everything a snapshot is built from, read in one consistent transaction.
#[derive(Debug, Clone)]
pub struct StateSnapshot {
    /// Version of the newest change included.
    pub version: u64,
    /// Every deployment.
    pub deployments: Vec<StoredDeployment>,
    /// Every setting.
    pub settings: BTreeMap<String, String>,
    /// Every key.
    pub keys: Vec<KeyRow>,
    /// Models and blocked flag of every team, by id.
    pub teams: BTreeMap<String, (Vec<String>, bool)>,
    /// Budgets of the users, teams and customers (end users) that have one, in that order,
    /// each by id.
    pub budgets: Vec<ScopeBudget>,
    /// Rate limits of the users and teams that have one, users first, each by id.
    pub rate_limits: Vec<ScopeRateLimits>,
}

/// A budget of a user, team or customer, as the filters get it (in the snapshot's settings).
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeBudget {
    /// `"user"`, `"team"` or `"end_user"` (a customer).
    pub scope: &'static str,
    /// User or team id.
    pub id: String,
    /// US dollars per window.
    pub max_budget: Option<f64>,
    /// Alert threshold.
    pub soft_budget: Option<f64>,
}

/// What changed since a version (see [`Store::state_changes_since`]).
#[derive(Debug, Clone)]
pub struct StateChanges {
    /// Version, settings and teams as a full read gives them; `keys` holds only the keys
    /// written after the version asked about, `deployments` is empty unless
    /// [`Self::deployments_changed`].
    pub state: StateSnapshot,
    /// Whether the deployments changed after the version asked about (then `state` holds
    /// all of them).
    pub deployments_changed: bool,
    /// Tokens of the keys removed after it (none of them is in `state.keys`).
    pub removed_keys: Vec<String>,
    /// False when removals that old may have been forgotten (see
    /// [`REMOVED_KEY_RETENTION_MS`]): only a full read gives the stored state then.
    pub complete: bool,
}

/// How long a removed key's token is remembered for [`Store::state_changes_since`]: a
/// control plane further behind than this reads everything (a restarted one does anyway).
/// Versions are unix milliseconds (or just above, when writes come faster).
pub const REMOVED_KEY_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn json_object(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({}))
}

fn list_text(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

const KEY_COLUMNS: &str = "token, key_name, key_alias, user_id, team_id, models, blocked, \
     expires, metadata, created_at, updated_at, max_budget, soft_budget, budget_duration, \
     model_max_budget, rpm_limit, tpm_limit, max_parallel_requests, model_rpm_limit, \
     model_tpm_limit";
const USER_COLUMNS: &str = "user_id, user_email, user_role, models, metadata, created_at, \
     updated_at, max_budget, soft_budget, budget_duration, rpm_limit, tpm_limit, \
     max_parallel_requests";
const TEAM_COLUMNS: &str =
    "team_id, team_alias, models, metadata, blocked, created_at, updated_at, \
     max_budget, soft_budget, budget_duration, rpm_limit, tpm_limit, max_parallel_requests";

/// The budget columns of a row. The duration in ms is not stored: it is parsed again from
/// the text, which was validated when written.
macro_rules! decode_budget {
    ($row:expr) => {{
        let row = $row;
        let budget_duration: Option<String> = row.try_get("budget_duration")?;
        BudgetFields {
            max_budget: row.try_get("max_budget")?,
            soft_budget: row.try_get("soft_budget")?,
            budget_duration_ms: budget_duration
                .as_deref()
                .and_then(|text| crate::manage::parse_duration("budget_duration", text).ok()),
            budget_duration,
        }
    }};
}

/// The rate-limit columns of a row (a negative value, which only a hand edit of the
/// database makes, is no limit).
macro_rules! decode_limits {
    ($row:expr) => {{
        let row = $row;
        let limit = |value: Option<i64>| value.and_then(|value| u64::try_from(value).ok());
        RateLimitFields {
            rpm: limit(row.try_get("rpm_limit")?),
            tpm: limit(row.try_get("tpm_limit")?),
            max_parallel_requests: limit(row.try_get("max_parallel_requests")?),
        }
    }};
}

/// Reads a stored `model_rpm_limit` / `model_tpm_limit` JSON object (written by this code:
/// a bad one, or a bad entry, is no limit).
fn model_rate_limits(text: &str) -> BTreeMap<String, u64> {
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return BTreeMap::new();
    };
    entries
        .into_iter()
        .filter_map(|(model, value)| value.as_u64().map(|value| (model, value)))
        .collect()
}

/// The stored form of a model -> limit map.
fn model_rate_limits_text(limits: &BTreeMap<String, u64>) -> String {
    serde_json::Value::Object(
        limits
            .iter()
            .map(|(model, value)| (model.clone(), serde_json::Value::from(*value)))
            .collect(),
    )
    .to_string()
}

/// A limit as stored (limits are validated to fit).
fn limit_column(value: Option<u64>) -> Option<i64> {
    value.map(|value| i64::try_from(value).unwrap_or(i64::MAX))
}

/// Reads a stored `model_max_budget` JSON object (written by this code: a bad one is empty):
/// each model maps to US dollars, or (when it has a window of its own) to LiteLLM's newer
/// `{"budget_limit": dollars, "time_period": "1d"}`. Returns the limits and the periods.
fn model_budgets(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut limits = BTreeMap::new();
    let mut periods = BTreeMap::new();
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return (limits, periods);
    };
    for (model, entry) in entries {
        let (limit, period) = match &entry {
            serde_json::Value::Object(fields) => (
                fields
                    .get("budget_limit")
                    .and_then(serde_json::Value::as_f64),
                fields
                    .get("time_period")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string),
            ),
            other => (other.as_f64(), None),
        };
        if let Some(limit) = limit {
            if let Some(period) = period {
                periods.insert(model.clone(), period);
            }
            limits.insert(model, limit);
        }
    }
    (limits, periods)
}

/// The stored form of a key's `model_max_budget` (see [`model_budgets`]).
fn model_budgets_text(key: &KeyRow) -> String {
    let entries: serde_json::Map<String, serde_json::Value> = key
        .model_max_budget
        .iter()
        .map(|(model, limit)| {
            let value = match key.model_budget_durations.get(model) {
                Some(period) => serde_json::json!({"budget_limit": limit, "time_period": period}),
                None => serde_json::json!(limit),
            };
            (model.clone(), value)
        })
        .collect();
    serde_json::Value::Object(entries).to_string()
}

/// The `spend_totals` id of a key x model window.
pub fn key_model_scope_id(token: &str, model: &str) -> String {
    format!("{token}/{model}")
}

/// Starts or keeps the budget window of `scope`/`id` in `spend_totals`: with a duration, the
/// window ends `duration` after now unless one of that length is already running; without
/// one, the spend never resets.
macro_rules! set_budget_window {
    ($tx:ident, $scope:expr, $id:expr, $budget:expr, $now:expr) => {{
        let budget: &BudgetFields = $budget;
        let duration_ms = budget.budget_duration_ms.unwrap_or(0).max(0);
        let first_reset: i64 = $now.saturating_add(duration_ms);
        set_budget_window!($tx, $scope, $id, budget, $now, first_reset = first_reset);
    }};
    // `first_reset`: when a new window ends (the gateway's window may end at a time of day).
    ($tx:ident, $scope:expr, $id:expr, $budget:expr, $now:expr, first_reset = $first:expr) => {{
        let budget: &BudgetFields = $budget;
        let duration_ms = budget.budget_duration_ms.unwrap_or(0).max(0);
        let reset_at: i64 = if duration_ms > 0 { $first } else { 0 };
        sqlx::query(
            "INSERT INTO spend_totals (scope, scope_id, spend, reset_at, budget_duration_ms, \
             updated_ms) VALUES ($1, $2, 0, $3, $4, $5) ON CONFLICT (scope, scope_id) DO UPDATE \
             SET reset_at = CASE WHEN spend_totals.budget_duration_ms = excluded.budget_duration_ms \
             AND spend_totals.reset_at <> 0 THEN spend_totals.reset_at ELSE excluded.reset_at END, \
             budget_duration_ms = excluded.budget_duration_ms, updated_ms = excluded.updated_ms",
        )
        .bind($scope)
        .bind($id.to_string())
        .bind(reset_at)
        .bind(duration_ms)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Starts or keeps the window of every model of `key` with a `time_period` (scope
/// `key_model`), and drops the windows of the key's models that no longer have one.
macro_rules! set_key_model_windows {
    ($tx:ident, $key:expr, $now:expr) => {{
        let key: &KeyRow = $key;
        let prefix = format!("{}/", key.token);
        // Tokens are hex, so the prefix holds no LIKE wildcard.
        let rows = sqlx::query(
            "SELECT scope_id FROM spend_totals WHERE scope = 'key_model' AND scope_id LIKE $1",
        )
        .bind(format!("{prefix}%"))
        .fetch_all(&mut *$tx)
        .await?;
        for row in &rows {
            let scope_id: String = row.try_get("scope_id")?;
            let model = scope_id.strip_prefix(&prefix).unwrap_or_default();
            if !key.model_budget_durations.contains_key(model) {
                sqlx::query("DELETE FROM spend_totals WHERE scope = 'key_model' AND scope_id = $1")
                    .bind(scope_id.clone())
                    .execute(&mut *$tx)
                    .await?;
            }
        }
        for (model, period) in &key.model_budget_durations {
            let window = BudgetFields {
                budget_duration: Some(period.clone()),
                budget_duration_ms: crate::manage::parse_duration("time_period", period).ok(),
                ..BudgetFields::default()
            };
            set_budget_window!(
                $tx,
                "key_model",
                key_model_scope_id(&key.token, model),
                &window,
                $now
            );
        }
    }};
}

macro_rules! decode_key {
    ($row:expr) => {{
        let row = $row;
        let models: String = row.try_get("models")?;
        let metadata: String = row.try_get("metadata")?;
        let (model_max_budget, model_budget_durations) =
            model_budgets(&row.try_get::<String, _>("model_max_budget")?);
        KeyRow {
            token: row.try_get("token")?,
            key_name: row.try_get("key_name")?,
            key_alias: row.try_get("key_alias")?,
            user_id: row.try_get("user_id")?,
            team_id: row.try_get("team_id")?,
            models: json_list(&models),
            blocked: row.try_get("blocked")?,
            expires_ms: row.try_get("expires")?,
            metadata: json_object(&metadata),
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            budget: decode_budget!(row),
            model_max_budget,
            model_budget_durations,
            limits: decode_limits!(row),
            model_rpm_limit: model_rate_limits(&row.try_get::<String, _>("model_rpm_limit")?),
            model_tpm_limit: model_rate_limits(&row.try_get::<String, _>("model_tpm_limit")?),
        }
    }};
}

macro_rules! decode_user {
    ($row:expr) => {{
        let row = $row;
        let models: String = row.try_get("models")?;
        let metadata: String = row.try_get("metadata")?;
        UserRow {
            user_id: row.try_get("user_id")?,
            user_email: row.try_get("user_email")?,
            user_role: row.try_get("user_role")?,
            models: json_list(&models),
            metadata: json_object(&metadata),
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            budget: decode_budget!(row),
            limits: decode_limits!(row),
        }
    }};
}

macro_rules! decode_team {
    ($row:expr) => {{
        let row = $row;
        let models: String = row.try_get("models")?;
        let metadata: String = row.try_get("metadata")?;
        TeamRow {
            team_id: row.try_get("team_id")?,
            team_alias: row.try_get("team_alias")?,
            models: json_list(&models),
            metadata: json_object(&metadata),
            blocked: row.try_get("blocked")?,
            members: Vec::new(),
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            budget: decode_budget!(row),
            limits: decode_limits!(row),
        }
    }};
}

/// Inserts a key written at `version` (its `changed_version`, see
/// [`Store::state_changes_since`]).
macro_rules! insert_key {
    ($tx:ident, $key:expr, $version:expr) => {{
        let key: &KeyRow = $key;
        sqlx::query(
            "INSERT INTO virtual_keys (token, key_name, key_alias, user_id, team_id, models, \
             blocked, expires, metadata, created_at, updated_at, changed_version, max_budget, \
             soft_budget, budget_duration, model_max_budget, rpm_limit, tpm_limit, \
             max_parallel_requests, model_rpm_limit, model_tpm_limit) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19, $20, $21)",
        )
        .bind(key.token.clone())
        .bind(key.key_name.clone())
        .bind(key.key_alias.clone())
        .bind(key.user_id.clone())
        .bind(key.team_id.clone())
        .bind(list_text(&key.models))
        .bind(key.blocked)
        .bind(key.expires_ms)
        .bind(key.metadata.to_string())
        .bind(key.created_at)
        .bind(key.updated_at)
        .bind(to_i64($version))
        .bind(key.budget.max_budget)
        .bind(key.budget.soft_budget)
        .bind(key.budget.budget_duration.clone())
        .bind(model_budgets_text(key))
        .bind(limit_column(key.limits.rpm))
        .bind(limit_column(key.limits.tpm))
        .bind(limit_column(key.limits.max_parallel_requests))
        .bind(model_rate_limits_text(&key.model_rpm_limit))
        .bind(model_rate_limits_text(&key.model_tpm_limit))
        .execute(&mut *$tx)
        .await?;
        if key.budget.is_set() {
            set_budget_window!($tx, "key", key.token, &key.budget, key.created_at);
        }
        if !key.model_budget_durations.is_empty() {
            set_key_model_windows!($tx, key, key.created_at);
        }
    }};
}

/// Records that the key `token` went away at `version` (deleted, or renamed by
/// regeneration), for [`Store::state_changes_since`], and forgets removals older than
/// [`REMOVED_KEY_RETENTION_MS`].
macro_rules! record_removed_key {
    ($tx:ident, $token:expr, $version:expr) => {{
        sqlx::query(
            "INSERT INTO removed_keys (token, version) VALUES ($1, $2) \
             ON CONFLICT (token) DO UPDATE SET version = excluded.version",
        )
        .bind($token.to_string())
        .bind(to_i64($version))
        .execute(&mut *$tx)
        .await?;
        sqlx::query("DELETE FROM removed_keys WHERE version < $1")
            .bind(to_i64($version.saturating_sub(REMOVED_KEY_RETENTION_MS)))
            .execute(&mut *$tx)
            .await?;
    }};
}

/// Fails unless the team exists.
macro_rules! require_team {
    ($tx:ident, $team_id:expr) => {{
        let exists = sqlx::query("SELECT team_id FROM teams WHERE team_id = $1")
            .bind($team_id.to_string())
            .fetch_optional(&mut *$tx)
            .await?
            .is_some();
        if !exists {
            return Err(StoreError::NotFound(Missing::Team($team_id.to_string())));
        }
    }};
}

/// Creates the user (as `internal_user`) unless it exists, as LiteLLM does for keys and
/// team members naming a user it has not seen.
macro_rules! ensure_user {
    ($tx:ident, $user_id:expr, $email:expr, $now:expr) => {{
        sqlx::query(
            "INSERT INTO users (user_id, user_email, user_role, models, metadata, created_at, \
             updated_at) VALUES ($1, $2, 'internal_user', '[]', '{}', $3, $3) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind($user_id.to_string())
        .bind($email)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Fails if the alias belongs to another key.
macro_rules! require_free_key_alias {
    ($tx:ident, $alias:expr, $except:expr) => {{
        if let Some(alias) = $alias {
            let holder: Option<String> =
                sqlx::query("SELECT token FROM virtual_keys WHERE key_alias = $1")
                    .bind(alias.to_string())
                    .fetch_optional(&mut *$tx)
                    .await?
                    .map(|row| row.try_get("token"))
                    .transpose()?;
            if holder.is_some_and(|token| Some(token.as_str()) != $except) {
                return Err(StoreError::AlreadyExists(Taken::KeyAlias(
                    alias.to_string(),
                )));
            }
        }
    }};
}

/// Adds members to a team inside a transaction; fails on an existing member.
macro_rules! add_members {
    ($tx:ident, $team_id:expr, $members:expr, $now:expr) => {{
        for (index, member) in $members.iter().enumerate() {
            let member: &NewMember = member;
            let user_id = match (&member.user_id, &member.user_email) {
                (Some(user_id), _) => {
                    ensure_user!($tx, user_id, member.user_email.clone(), $now);
                    user_id.clone()
                }
                (None, Some(email)) => {
                    let found: Option<String> = sqlx::query(
                        "SELECT user_id FROM users WHERE user_email = $1 ORDER BY created_at LIMIT 1",
                    )
                    .bind(email.clone())
                    .fetch_optional(&mut *$tx)
                    .await?
                    .map(|row| row.try_get("user_id"))
                    .transpose()?;
                    match found {
                        Some(user_id) => user_id,
                        None => {
                            let user_id = crate::manage::new_id();
                            ensure_user!($tx, &user_id, Some(email.clone()), $now);
                            user_id
                        }
                    }
                }
                (None, None) => {
                    return Err(StoreError::MemberWithoutUser { index })
                }
            };
            let existing = sqlx::query(
                "SELECT user_id FROM team_members WHERE team_id = $1 AND user_id = $2",
            )
            .bind($team_id.to_string())
            .bind(user_id.clone())
            .fetch_optional(&mut *$tx)
            .await?;
            if existing.is_some() {
                return Err(StoreError::AlreadyExists(Taken::Member {
                    user_id,
                    team_id: $team_id.to_string(),
                }));
            }
            sqlx::query(
                "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind($team_id.to_string())
            .bind(user_id)
            .bind(member.role.clone())
            .bind($now)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

impl Store {
    /// Reads everything a snapshot needs in one transaction (REPEATABLE READ on
    /// PostgreSQL), so the version matches the content.
    pub async fn state_snapshot(&self) -> Result<StateSnapshot, StoreError> {
        Ok(self.read_state(None).await?.state)
    }

    /// Reads what a snapshot needs, but of the keys only those written after version
    /// `since`, and the tokens of those removed after it: what a control plane serving
    /// `since` needs to serve the stored version, without reading every key. Every write
    /// that changes what a key's snapshot entry holds sets its `changed_version`; one that
    /// makes a key go away records it in `removed_keys`.
    pub async fn state_changes_since(&self, since: u64) -> Result<StateChanges, StoreError> {
        self.read_state(Some(since)).await
    }

    async fn read_state(&self, since: Option<u64>) -> Result<StateChanges, StoreError> {
        let deployment_sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments \
             ORDER BY CASE source WHEN 'config' THEN 0 ELSE 1 END, position, created_at, id"
        );
        let key_sql = match since {
            None => format!("SELECT {KEY_COLUMNS} FROM virtual_keys ORDER BY token"),
            // Ordered by the index the condition uses: ordered by token, SQLite would rather
            // walk every key in token order than sort the few that changed.
            Some(_) => format!(
                "SELECT {KEY_COLUMNS} FROM virtual_keys WHERE changed_version > $1 \
                 ORDER BY changed_version, token"
            ),
        };
        let postgres = self.backend() == Backend::Postgres;
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .execute(&mut *tx)
                    .await?;
            }
            let row = sqlx::query("SELECT version, deployments_version FROM state_version WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            let version: i64 = row.try_get("version")?;
            let deployments_version: i64 = row.try_get("deployments_version")?;
            // 1,000 deployments take longer to read than the rest of a one-key change.
            let deployments_changed =
                since.is_none_or(|since| to_u64(deployments_version) > since);
            let mut deployments = Vec::new();
            if deployments_changed {
                let rows = sqlx::query(&deployment_sql).fetch_all(&mut *tx).await?;
                deployments.reserve(rows.len());
                for row in &rows {
                    deployments.push(decode_deployment!(self, row));
                }
            }
            let rows = sqlx::query("SELECT key, value FROM settings").fetch_all(&mut *tx).await?;
            let mut settings = BTreeMap::new();
            for row in &rows {
                settings.insert(row.try_get("key")?, row.try_get("value")?);
            }
            let rows = sqlx::query(&key_sql)
                .bind(to_i64(since.unwrap_or(0)))
                .fetch_all(&mut *tx)
                .await?;
            let mut keys = Vec::with_capacity(rows.len());
            for row in &rows {
                keys.push(decode_key!(row));
            }
            let mut removed_keys = Vec::new();
            if let Some(since) = since {
                let rows = sqlx::query(
                    "SELECT r.token AS token FROM removed_keys r \
                     WHERE r.version > $1 AND NOT EXISTS \
                     (SELECT 1 FROM virtual_keys k WHERE k.token = r.token) ORDER BY r.token",
                )
                .bind(to_i64(since))
                .fetch_all(&mut *tx)
                .await?;
                for row in &rows {
                    removed_keys.push(row.try_get("token")?);
                }
            }
            let rows = sqlx::query("SELECT team_id, models, blocked FROM teams").fetch_all(&mut *tx).await?;
            let mut teams = BTreeMap::new();
            for row in &rows {
                let models: String = row.try_get("models")?;
                teams.insert(row.try_get("team_id")?, (json_list(&models), row.try_get("blocked")?));
            }
            // Few users and teams have budgets; all of them are read every time (their
            // changes are not tracked like keys').
            let mut budgets = Vec::new();
            for (scope, sql) in [
                ("user", "SELECT user_id AS id, max_budget, soft_budget FROM users \
                          WHERE max_budget IS NOT NULL OR soft_budget IS NOT NULL ORDER BY user_id"),
                ("team", "SELECT team_id AS id, max_budget, soft_budget FROM teams \
                          WHERE max_budget IS NOT NULL OR soft_budget IS NOT NULL ORDER BY team_id"),
                ("end_user", "SELECT user_id AS id, max_budget, soft_budget FROM end_users \
                          WHERE max_budget IS NOT NULL OR soft_budget IS NOT NULL ORDER BY user_id"),
            ] {
                for row in sqlx::query(sql).fetch_all(&mut *tx).await? {
                    budgets.push(ScopeBudget {
                        scope,
                        id: row.try_get("id")?,
                        max_budget: row.try_get("max_budget")?,
                        soft_budget: row.try_get("soft_budget")?,
                    });
                }
            }
            // Likewise rate limits.
            let mut rate_limits = Vec::new();
            for (scope, sql) in [
                ("user", "SELECT user_id AS id, rpm_limit, tpm_limit, max_parallel_requests \
                          FROM users WHERE rpm_limit IS NOT NULL OR tpm_limit IS NOT NULL \
                          OR max_parallel_requests IS NOT NULL ORDER BY user_id"),
                ("team", "SELECT team_id AS id, rpm_limit, tpm_limit, max_parallel_requests \
                          FROM teams WHERE rpm_limit IS NOT NULL OR tpm_limit IS NOT NULL \
                          OR max_parallel_requests IS NOT NULL ORDER BY team_id"),
            ] {
                for row in sqlx::query(sql).fetch_all(&mut *tx).await? {
                    rate_limits.push(ScopeRateLimits {
                        scope,
                        id: row.try_get("id")?,
                        limits: decode_limits!(&row),
                    });
                }
            }
            tx.commit().await?;
            let version = to_u64(version);
            Ok(StateChanges {
                state: StateSnapshot {
                    version,
                    deployments,
                    settings,
                    keys,
                    teams,
                    budgets,
                    rate_limits,
                },
                deployments_changed,
                removed_keys,
                complete: since.is_some_and(|since| {
                    since.saturating_add(REMOVED_KEY_RETENTION_MS) >= version
                }),
            })
        })
    }

    /// Inserts a new key (creating its user if unknown). Fails on an unknown team or a
    /// taken alias or key.
    pub async fn insert_key(&self, key: &KeyRow) -> Result<u64, StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            if let Some(team_id) = &key.team_id {
                require_team!(tx, team_id);
            }
            if let Some(user_id) = &key.user_id {
                ensure_user!(tx, user_id, None::<String>, now);
            }
            require_free_key_alias!(tx, key.key_alias.as_deref(), None::<&str>);
            let taken = sqlx::query("SELECT token FROM virtual_keys WHERE token = $1")
                .bind(key.token.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(StoreError::AlreadyExists(Taken::Key));
            }
            insert_key!(tx, key, version);
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(version)
        })
    }

    /// One key by token.
    pub async fn key(&self, token: &str) -> Result<Option<KeyRow>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM virtual_keys WHERE token = $1");
        with_pool!(self, pool => {
            match sqlx::query(&sql).bind(token).fetch_optional(pool).await? {
                Some(row) => Ok(Some(decode_key!(&row))),
                None => Ok(None),
            }
        })
    }

    /// Token of the key with this alias.
    pub async fn key_token_by_alias(&self, alias: &str) -> Result<Option<String>, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query("SELECT token FROM virtual_keys WHERE key_alias = $1")
                .bind(alias)
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get("token"))
                .transpose()?)
        })
    }

    /// Keys matching every given filter, oldest first.
    pub async fn keys(
        &self,
        user_id: Option<&str>,
        team_id: Option<&str>,
        key_alias: Option<&str>,
    ) -> Result<Vec<KeyRow>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM virtual_keys WHERE ($1 IS NULL OR user_id = $1) \
             AND ($2 IS NULL OR team_id = $2) AND ($3 IS NULL OR key_alias = $3) \
             ORDER BY created_at, token"
        );
        with_pool!(self, pool => {
            let rows = sqlx::query(&sql)
                .bind(user_id)
                .bind(team_id)
                .bind(key_alias)
                .fetch_all(pool)
                .await?;
            let mut keys = Vec::with_capacity(rows.len());
            for row in &rows {
                keys.push(decode_key!(row));
            }
            Ok(keys)
        })
    }

    /// Replaces a key's row (`key.token` names it; `new_token`, when set, renames it: key
    /// regeneration). Fails on an unknown key or team, or a taken alias.
    pub async fn update_key(
        &self,
        key: &KeyRow,
        new_token: Option<(&str, &str)>,
    ) -> Result<(KeyRow, u64), StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            let exists = sqlx::query("SELECT token FROM virtual_keys WHERE token = $1")
                .bind(key.token.clone())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound(Missing::Key));
            }
            if let Some(team_id) = &key.team_id {
                require_team!(tx, team_id);
            }
            if let Some(user_id) = &key.user_id {
                ensure_user!(tx, user_id, None::<String>, now);
            }
            require_free_key_alias!(tx, key.key_alias.as_deref(), Some(key.token.as_str()));
            let mut updated = key.clone();
            updated.updated_at = now;
            if let Some((token, key_name)) = new_token {
                updated.token = token.to_string();
                updated.key_name = key_name.to_string();
            }
            sqlx::query(
                "UPDATE virtual_keys SET token = $1, key_name = $2, key_alias = $3, user_id = $4, \
                 team_id = $5, models = $6, blocked = $7, expires = $8, metadata = $9, \
                 updated_at = $10, changed_version = $11, max_budget = $13, soft_budget = $14, \
                 budget_duration = $15, model_max_budget = $16, rpm_limit = $17, \
                 tpm_limit = $18, max_parallel_requests = $19, model_rpm_limit = $20, \
                 model_tpm_limit = $21 WHERE token = $12",
            )
            .bind(updated.token.clone())
            .bind(updated.key_name.clone())
            .bind(updated.key_alias.clone())
            .bind(updated.user_id.clone())
            .bind(updated.team_id.clone())
            .bind(list_text(&updated.models))
            .bind(updated.blocked)
            .bind(updated.expires_ms)
            .bind(updated.metadata.to_string())
            .bind(now)
            .bind(to_i64(version))
            .bind(key.token.clone())
            .bind(updated.budget.max_budget)
            .bind(updated.budget.soft_budget)
            .bind(updated.budget.budget_duration.clone())
            .bind(model_budgets_text(&updated))
            .bind(limit_column(updated.limits.rpm))
            .bind(limit_column(updated.limits.tpm))
            .bind(limit_column(updated.limits.max_parallel_requests))
            .bind(model_rate_limits_text(&updated.model_rpm_limit))
            .bind(model_rate_limits_text(&updated.model_tpm_limit))
            .execute(&mut *tx)
            .await?;
            if updated.token != key.token {
                // The spend of the key's window stays with the key under its new token.
                sqlx::query(
                    "UPDATE spend_totals SET scope_id = $1, updated_ms = $2 \
                     WHERE scope = 'key' AND scope_id = $3",
                )
                .bind(updated.token.clone())
                .bind(now)
                .bind(key.token.clone())
                .execute(&mut *tx)
                .await?;
                // And the key x model windows, whose ids start with the token.
                let rows = sqlx::query(
                    "SELECT scope_id FROM spend_totals WHERE scope = 'key_model' AND scope_id LIKE $1",
                )
                .bind(format!("{}/%", key.token))
                .fetch_all(&mut *tx)
                .await?;
                for row in &rows {
                    let old_id: String = row.try_get("scope_id")?;
                    let model = old_id.strip_prefix(&format!("{}/", key.token)).unwrap_or_default();
                    sqlx::query(
                        "UPDATE spend_totals SET scope_id = $1, updated_ms = $2 \
                         WHERE scope = 'key_model' AND scope_id = $3",
                    )
                    .bind(key_model_scope_id(&updated.token, model))
                    .bind(now)
                    .bind(old_id.clone())
                    .execute(&mut *tx)
                    .await?;
                }
            }
            set_budget_window!(tx, "key", updated.token, &updated.budget, now);
            set_key_model_windows!(tx, &updated, now);
            if updated.token != key.token {
                record_removed_key!(tx, key.token, version);
            }
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok((updated, version))
        })
    }

    /// Deletes every named key, or none when one of them does not exist.
    pub async fn delete_keys(
        &self,
        tokens: &[String],
        aliases: &[String],
    ) -> Result<(Vec<String>, u64), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            let mut deleted = Vec::new();
            for (index, token) in tokens.iter().enumerate() {
                let affected = sqlx::query("DELETE FROM virtual_keys WHERE token = $1")
                    .bind(token.clone())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if affected == 0 && !deleted.contains(token) {
                    return Err(StoreError::NotFound(Missing::KeyInBatch { index }));
                }
                if !deleted.contains(token) {
                    record_removed_key!(tx, token, version);
                    deleted.push(token.clone());
                }
            }
            for (index, alias) in aliases.iter().enumerate() {
                let token: Option<String> =
                    sqlx::query("SELECT token FROM virtual_keys WHERE key_alias = $1")
                        .bind(alias.clone())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|row| row.try_get("token"))
                        .transpose()?;
                let Some(token) = token else {
                    return Err(StoreError::NotFound(Missing::KeyAliasInBatch {
                        index,
                        alias: alias.clone(),
                    }));
                };
                sqlx::query("DELETE FROM virtual_keys WHERE token = $1")
                    .bind(token.clone())
                    .execute(&mut *tx)
                    .await?;
                record_removed_key!(tx, token, version);
                deleted.push(token);
            }
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok((deleted, version))
        })
    }

    /// Creates a user, and with it `key` if given. Fails on a taken user id.
    pub async fn insert_user(
        &self,
        user: &UserRow,
        key: Option<&KeyRow>,
    ) -> Result<u64, StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            let taken = sqlx::query("SELECT user_id FROM users WHERE user_id = $1")
                .bind(user.user_id.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(StoreError::AlreadyExists(Taken::User(user.user_id.clone())));
            }
            sqlx::query(
                "INSERT INTO users (user_id, user_email, user_role, models, metadata, created_at, \
                 updated_at, max_budget, soft_budget, budget_duration, rpm_limit, tpm_limit, \
                 max_parallel_requests) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(user.user_id.clone())
            .bind(user.user_email.clone())
            .bind(user.user_role.clone())
            .bind(list_text(&user.models))
            .bind(user.metadata.to_string())
            .bind(user.created_at)
            .bind(user.updated_at)
            .bind(user.budget.max_budget)
            .bind(user.budget.soft_budget)
            .bind(user.budget.budget_duration.clone())
            .bind(limit_column(user.limits.rpm))
            .bind(limit_column(user.limits.tpm))
            .bind(limit_column(user.limits.max_parallel_requests))
            .execute(&mut *tx)
            .await?;
            if user.budget.is_set() {
                set_budget_window!(tx, "user", user.user_id, &user.budget, user.created_at);
            }
            if let Some(key) = key {
                require_free_key_alias!(tx, key.key_alias.as_deref(), None::<&str>);
                insert_key!(tx, key, version);
            }
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(version)
        })
    }

    /// Replaces a user's fields (`user.user_id` names it; `created_at` is kept) and starts
    /// or keeps its budget window. Fails on an unknown user.
    pub async fn update_user(&self, user: &UserRow) -> Result<(UserRow, u64), StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            let affected = sqlx::query(
                "UPDATE users SET user_email = $1, user_role = $2, models = $3, metadata = $4, \
                 updated_at = $5, max_budget = $6, soft_budget = $7, budget_duration = $8, \
                 rpm_limit = $10, tpm_limit = $11, max_parallel_requests = $12 \
                 WHERE user_id = $9",
            )
            .bind(user.user_email.clone())
            .bind(user.user_role.clone())
            .bind(list_text(&user.models))
            .bind(user.metadata.to_string())
            .bind(now)
            .bind(user.budget.max_budget)
            .bind(user.budget.soft_budget)
            .bind(user.budget.budget_duration.clone())
            .bind(user.user_id.clone())
            .bind(limit_column(user.limits.rpm))
            .bind(limit_column(user.limits.tpm))
            .bind(limit_column(user.limits.max_parallel_requests))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Err(StoreError::NotFound(Missing::User(user.user_id.clone())));
            }
            set_budget_window!(tx, "user", user.user_id, &user.budget, now);
            notify_change!(self, tx, version);
            tx.commit().await?;
            let mut updated = user.clone();
            updated.updated_at = now;
            Ok((updated, version))
        })
    }

    /// Replaces a team's own fields (alias, models, metadata, blocked, budget; not its
    /// members) and starts or keeps its budget window. Fails on an unknown team or a taken
    /// alias.
    pub async fn update_team(&self, team: &TeamRow) -> Result<u64, StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            require_team!(tx, team.team_id);
            if let Some(alias) = &team.team_alias {
                let holder: Option<String> =
                    sqlx::query("SELECT team_id FROM teams WHERE team_alias = $1")
                        .bind(alias.clone())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|row| row.try_get("team_id"))
                        .transpose()?;
                if holder.is_some_and(|holder| holder != team.team_id) {
                    return Err(StoreError::AlreadyExists(Taken::TeamAlias(alias.clone())));
                }
            }
            sqlx::query(
                "UPDATE teams SET team_alias = $1, models = $2, metadata = $3, blocked = $4, \
                 updated_at = $5, max_budget = $6, soft_budget = $7, budget_duration = $8, \
                 rpm_limit = $10, tpm_limit = $11, max_parallel_requests = $12 \
                 WHERE team_id = $9",
            )
            .bind(team.team_alias.clone())
            .bind(list_text(&team.models))
            .bind(team.metadata.to_string())
            .bind(team.blocked)
            .bind(now)
            .bind(team.budget.max_budget)
            .bind(team.budget.soft_budget)
            .bind(team.budget.budget_duration.clone())
            .bind(team.team_id.clone())
            .bind(limit_column(team.limits.rpm))
            .bind(limit_column(team.limits.tpm))
            .bind(limit_column(team.limits.max_parallel_requests))
            .execute(&mut *tx)
            .await?;
            set_budget_window!(tx, "team", team.team_id, &team.budget, now);
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(version)
        })
    }

    /// When the budget window of `scope`/`scope_id` ends (unix ms); `None` when it has no
    /// window, or one that never resets.
    pub async fn budget_reset_at(
        &self,
        scope: &str,
        scope_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let Some(scope) = super::SpendScope::from_name(scope) else {
            return Ok(None);
        };
        Ok(self
            .spend_total(scope, scope_id)
            .await?
            .map(|(_, reset_at)| to_i64(reset_at))
            .filter(|reset_at| *reset_at > 0))
    }

    /// One user.
    pub async fn user(&self, user_id: &str) -> Result<Option<UserRow>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = $1");
        with_pool!(self, pool => {
            match sqlx::query(&sql).bind(user_id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(decode_user!(&row))),
                None => Ok(None),
            }
        })
    }

    /// Ids of the teams a user belongs to.
    pub async fn user_teams(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query("SELECT team_id FROM team_members WHERE user_id = $1 ORDER BY team_id")
                .bind(user_id)
                .fetch_all(pool)
                .await?;
            let mut teams = Vec::new();
            for row in &rows {
                teams.push(row.try_get("team_id")?);
            }
            Ok(teams)
        })
    }

    /// The role of the user owning a usable (not blocked, not expired) key, if any.
    pub async fn key_owner_role(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query(
                "SELECT u.user_role AS user_role FROM virtual_keys k JOIN users u ON u.user_id = k.user_id \
                 WHERE k.token = $1 AND NOT k.blocked AND (k.expires IS NULL OR k.expires > $2)",
            )
            .bind(token)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?
            .map(|row| row.try_get("user_role"))
            .transpose()?)
        })
    }

    /// Creates a team with its members (users named by email only are found or created).
    pub async fn insert_team(
        &self,
        team: &TeamRow,
        members: &[NewMember],
    ) -> Result<u64, StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            let taken = sqlx::query("SELECT team_id FROM teams WHERE team_id = $1")
                .bind(team.team_id.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(StoreError::AlreadyExists(Taken::Team(team.team_id.clone())));
            }
            if let Some(alias) = &team.team_alias {
                let taken = sqlx::query("SELECT team_id FROM teams WHERE team_alias = $1")
                    .bind(alias.clone())
                    .fetch_optional(&mut *tx)
                    .await?;
                if taken.is_some() {
                    return Err(StoreError::AlreadyExists(Taken::TeamAlias(alias.clone())));
                }
            }
            sqlx::query(
                "INSERT INTO teams (team_id, team_alias, models, metadata, blocked, created_at, \
                 updated_at, max_budget, soft_budget, budget_duration, rpm_limit, tpm_limit, \
                 max_parallel_requests) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(team.team_id.clone())
            .bind(team.team_alias.clone())
            .bind(list_text(&team.models))
            .bind(team.metadata.to_string())
            .bind(team.blocked)
            .bind(team.created_at)
            .bind(team.updated_at)
            .bind(team.budget.max_budget)
            .bind(team.budget.soft_budget)
            .bind(team.budget.budget_duration.clone())
            .bind(limit_column(team.limits.rpm))
            .bind(limit_column(team.limits.tpm))
            .bind(limit_column(team.limits.max_parallel_requests))
            .execute(&mut *tx)
            .await?;
            if team.budget.is_set() {
                set_budget_window!(tx, "team", team.team_id, &team.budget, team.created_at);
            }
            add_members!(tx, &team.team_id, members, now);
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(version)
        })
    }

    /// Adds members to an existing team; none are added if one fails.
    pub async fn add_team_members(
        &self,
        team_id: &str,
        members: &[NewMember],
    ) -> Result<u64, StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            require_team!(tx, team_id);
            add_members!(tx, team_id, members, now);
            sqlx::query("UPDATE teams SET updated_at = $1 WHERE team_id = $2")
                .bind(now)
                .bind(team_id)
                .execute(&mut *tx)
                .await?;
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(version)
        })
    }

    /// One team with its members.
    pub async fn team(&self, team_id: &str) -> Result<Option<TeamRow>, StoreError> {
        let sql = format!("SELECT {TEAM_COLUMNS} FROM teams WHERE team_id = $1");
        with_pool!(self, pool => {
            let Some(row) = sqlx::query(&sql).bind(team_id).fetch_optional(pool).await? else {
                return Ok(None);
            };
            let mut team = decode_team!(&row);
            let rows = sqlx::query(
                "SELECT m.user_id AS user_id, u.user_email AS user_email, m.role AS role \
                 FROM team_members m LEFT JOIN users u ON u.user_id = m.user_id \
                 WHERE m.team_id = $1 ORDER BY m.created_at, m.user_id",
            )
            .bind(team_id)
            .fetch_all(pool)
            .await?;
            for row in &rows {
                team.members.push(MemberRow {
                    user_id: row.try_get("user_id")?,
                    user_email: row.try_get("user_email")?,
                    role: row.try_get("role")?,
                });
            }
            Ok(Some(team))
        })
    }

    /// Inserts an API deployment; fails if the id is taken.
    pub async fn insert_api_deployment(
        &self,
        record: &DeploymentRecord,
    ) -> Result<u64, StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            mark_deployments_changed!(tx, version);
            let taken = sqlx::query("SELECT id FROM deployments WHERE id = $1")
                .bind(record.id.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(StoreError::AlreadyExists(Taken::Deployment(record.id.clone())));
            }
            bind_deployment!(self, sqlx::query(INSERT_DEPLOYMENT), record, now, now)
                .execute(&mut *tx)
                .await?;
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(version)
        })
    }

    /// Replaces (`Some`) or deletes (`None`) the API deployment `id`. Config deployments
    /// are refused: they belong to the config file.
    pub async fn change_api_deployment(
        &self,
        id: &str,
        record: Option<&DeploymentRecord>,
    ) -> Result<u64, StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            mark_deployments_changed!(tx, version);
            let row = sqlx::query("SELECT source, created_at FROM deployments WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Err(StoreError::NotFound(Missing::Deployment(id.to_string())));
            };
            let source: String = row.try_get("source")?;
            let created_at: i64 = row.try_get("created_at")?;
            if DeploymentSource::parse(&source) != Some(DeploymentSource::Api) {
                return Err(StoreError::ConfigDeployment(id.to_string()));
            }
            sqlx::query("DELETE FROM deployments WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if let Some(record) = record {
                bind_deployment!(self, sqlx::query(INSERT_DEPLOYMENT), record, created_at, now)
                    .execute(&mut *tx)
                    .await?;
            }
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(version)
        })
    }

    /// One deployment.
    pub async fn deployment(&self, id: &str) -> Result<Option<StoredDeployment>, StoreError> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1");
        with_pool!(self, pool => {
            match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(decode_deployment!(self, &row))),
                None => Ok(None),
            }
        })
    }

    /// Waits for the next notification on [`CHANGES_CHANNEL`] from any replica; `None` on
    /// SQLite (single replica).
    pub async fn change_listener(&self) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen(CHANGES_CHANNEL).await?;
                Ok(Some(listener))
            }
            Pool::Sqlite(_) => Ok(None),
        }
    }
}
