//! The management service layer shared by the gRPC API ([`crate::grpc_api`]) and the
//! LiteLLM-compatible HTTP API ([`crate::http_api`]): authentication, validation, storage
//! (one transaction per change) and the live push of the new snapshot.

use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};

use crate::config::{self, EnvAllowlist};
use crate::provider_settings::ProviderSettings;
use std::collections::BTreeMap;

use crate::store::{
    now_unix_ms, sha256_hex, BudgetFields, CustomerRow, DeploymentRecord, DeploymentSource, KeyRow,
    Missing, NewMember, RateLimitFields, Store, StoreError, StoredDeployment, Taken, TeamRow,
    UserRow, SETTING_API_ENV_PREFIXES, SETTING_MASTER_KEY_SHA256,
};
use crate::sync::SyncHub;

/// LiteLLM user roles.
pub const USER_ROLES: &[&str] = &[
    "proxy_admin",
    "proxy_admin_viewer",
    "org_admin",
    "internal_user",
    "internal_user_viewer",
    "team",
    "customer",
];

/// Team member roles.
pub const TEAM_ROLES: &[&str] = &["admin", "user"];

/// Role whose keys may use the management API.
pub const ADMIN_ROLE: &str = "proxy_admin";

/// What went wrong, mapped to an HTTP status and a gRPC code by the two APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400 / INVALID_ARGUMENT.
    InvalidArgument,
    /// 401 / UNAUTHENTICATED.
    Unauthenticated,
    /// 403 / PERMISSION_DENIED.
    PermissionDenied,
    /// 404 / NOT_FOUND.
    NotFound,
    /// 409 / ALREADY_EXISTS.
    AlreadyExists,
    /// 400 / FAILED_PRECONDITION (a config-file model edited through the API).
    FailedPrecondition,
    /// 500 / INTERNAL.
    Internal,
}

/// An error of the management API, with the request field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Category.
    pub kind: ErrorKind,
    /// Human-readable message (names the field).
    pub message: String,
    /// The field, LiteLLM's `param`.
    pub param: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn new(kind: ErrorKind, param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    /// An error about a field; the message starts with the field's name.
    fn about(kind: ErrorKind, param: &str, message: String) -> Self {
        let message = if message.starts_with(param) {
            message
        } else {
            format!("{param}: {message}")
        };
        Self::new(kind, Some(param), message)
    }

    /// Bad field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::about(ErrorKind::InvalidArgument, param, message.into())
    }

    /// Unknown id.
    pub fn not_found(param: &str, message: impl Into<String>) -> Self {
        Self::about(ErrorKind::NotFound, param, message.into())
    }

    /// Taken name or id.
    pub fn already_exists(param: &str, message: impl Into<String>) -> Self {
        Self::about(ErrorKind::AlreadyExists, param, message.into())
    }

    /// No or unknown credentials.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, None, message)
    }

    /// Known credentials without the right.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, None, message)
    }

    /// A config-file model cannot be changed through the API.
    pub fn config_model(id: &str) -> Self {
        Self::new(
            ErrorKind::FailedPrecondition,
            Some("id"),
            format!(
                "id: model {id:?} is defined in config.yaml (model_info.db_model = false); \
                 change it in the config file"
            ),
        )
    }

    /// Storage failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, None, message)
    }
}

/// The one mapping of storage errors to API errors: what a change names that is missing or
/// taken becomes 404 / 409 about the request field that named it; anything else is a 500
/// (logged here, since its message is the only trace of a database failure).
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(missing) => match missing {
                Missing::Team(id) => {
                    ApiError::not_found("team_id", format!("team {id:?} does not exist"))
                }
                Missing::Key => ApiError::not_found("key", "key not found"),
                Missing::KeyInBatch { index } => ApiError::not_found(
                    &format!("keys[{index}]"),
                    "key not found; nothing was deleted",
                ),
                Missing::KeyAliasInBatch { index, alias } => ApiError::not_found(
                    &format!("key_aliases[{index}]"),
                    format!("no key with alias {alias:?}; nothing was deleted"),
                ),
                Missing::Deployment(id) => {
                    ApiError::not_found("id", format!("model {id:?} not found"))
                }
                Missing::User(id) => {
                    ApiError::not_found("user_id", format!("user {id:?} not found"))
                }
                Missing::Customer(id) => {
                    ApiError::not_found("user_id", format!("End User Id={id} does not exist in db"))
                }
                Missing::CustomerInBatch { index, user_id } => ApiError::not_found(
                    &format!("user_ids[{index}]"),
                    format!("End User Id={user_id} does not exist in db; nothing was deleted"),
                ),
            },
            StoreError::AlreadyExists(taken) => match taken {
                Taken::Key => ApiError::already_exists("key", "this key already exists"),
                Taken::KeyAlias(alias) => ApiError::already_exists(
                    "key_alias",
                    format!("key_alias {alias:?} is already used by another key"),
                ),
                Taken::User(id) => {
                    ApiError::already_exists("user_id", format!("user {id:?} already exists"))
                }
                Taken::Team(id) => {
                    ApiError::already_exists("team_id", format!("team {id:?} already exists"))
                }
                Taken::TeamAlias(alias) => ApiError::already_exists(
                    "team_alias",
                    format!("team_alias {alias:?} is already used by another team"),
                ),
                Taken::Member { user_id, team_id } => ApiError::already_exists(
                    "member",
                    format!("user {user_id:?} is already a member of team {team_id:?}"),
                ),
                Taken::Deployment(id) => ApiError::already_exists(
                    "model_info.id",
                    format!("a model with id {id:?} already exists"),
                ),
                Taken::Customer(id) => ApiError::already_exists(
                    "user_id",
                    format!(
                        "Customer already exists, passed user_id={id}. Please pass a new user_id."
                    ),
                ),
            },
            StoreError::ConfigDeployment(id) => ApiError::config_model(&id),
            StoreError::MemberWithoutUser { index } => ApiError::invalid(
                &format!("member[{index}].user_id"),
                "a member needs user_id or user_email",
            ),
            // A uniqueness race the checks inside the transaction did not see.
            StoreError::Database(sqlx::Error::Database(database))
                if database.is_unique_violation() =>
            {
                ApiError::new(ErrorKind::AlreadyExists, None, database.message())
            }
            StoreError::Database(error) => {
                tracing::error!(%error, "management storage error");
                ApiError::internal(format!("database error: {error}"))
            }
            other => {
                tracing::error!(error = %other, "management storage error");
                ApiError::internal(other.to_string())
            }
        }
    }
}

/// A 400 of config issues: `param` is the first issue's field, the message lists them all.
fn issues_error(issues: Vec<config::Issue>) -> ApiError {
    let param = issues
        .first()
        .map_or("litellm_params", |issue| issue.path.as_str());
    let message = issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::new(ErrorKind::InvalidArgument, Some(param), message)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes)
        .map_err(|error| ApiError::internal(format!("no randomness: {error}")))?;
    Ok(bytes)
}

/// A random UUID (v4) string for users, teams and models created without an id.
pub fn new_id() -> String {
    let mut bytes = random_bytes::<16>().unwrap_or_else(|_| {
        let now = now_unix_ms().to_le_bytes();
        let mut fallback = [0u8; 16];
        fallback[..8].copy_from_slice(&now);
        fallback
    });
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A new clear key: `sk-` and 22 URL-safe characters (128 random bits), as LiteLLM's.
pub fn new_key() -> Result<String, ApiError> {
    let bytes = random_bytes::<16>()?;
    Ok(format!(
        "sk-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// LiteLLM's `key_name`: `sk-...` and the last four characters.
pub fn mask_key(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("sk-...{tail}")
}

/// The token of a key given as its clear value or as its token (64 hex digits).
pub fn token_of(key: &str) -> String {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        key.to_ascii_lowercase()
    } else {
        sha256_hex(key)
    }
}

/// LiteLLM durations: `30s`, `15m`, `12h`, `7d`, `2w`, `1mo` (30 days); in milliseconds.
pub fn parse_duration(param: &str, text: &str) -> Result<i64, ApiError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| {
        ApiError::invalid(
            param,
            format!("expected a duration like \"30d\", \"12h\", \"15m\", got {text:?}"),
        )
    })?;
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        "mo" => 30 * 86_400_000,
        _ => {
            return Err(ApiError::invalid(
                param,
                format!("unknown duration unit in {text:?} (use s, m, h, d, w or mo)"),
            ))
        }
    };
    number
        .checked_mul(unit_ms)
        .ok_or_else(|| ApiError::invalid(param, "duration too long"))
}

/// ISO 8601 UTC (`2025-01-02T03:04:05.678Z`) of unix milliseconds.
pub fn iso8601(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Budget fields of a request (`max_budget`, `soft_budget`, `budget_duration`): `None`
/// leaves a field as it is (unset, for a new row); `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetChange {
    /// US dollars per window; requests are refused past it.
    pub max_budget: Option<Option<f64>>,
    /// US dollars per window; alerts only.
    pub soft_budget: Option<Option<f64>>,
    /// LiteLLM duration of the window ("30d").
    pub budget_duration: Option<Option<String>>,
}

/// One model's entry of `model_max_budget`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelBudget {
    /// US dollars.
    pub budget_limit: f64,
    /// LiteLLM duration of the model's own window; `None`: the key's window.
    pub time_period: Option<String>,
    /// Written in LiteLLM's older shape (`{"gpt-4o": 0.5}`), so an error names
    /// `model_max_budget.gpt-4o` rather than its `budget_limit`.
    pub flat: bool,
}

fn check_dollars(param: &str, value: f64) -> Result<f64, ApiError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            param,
            "must be a number of US dollars, 0 or more",
        ))
    }
}

/// A budget window's length: a LiteLLM duration longer than 0.
fn check_window(param: &str, text: &str) -> Result<i64, ApiError> {
    match parse_duration(param, text)? {
        0 => Err(ApiError::invalid(param, "must be longer than 0")),
        ms => Ok(ms),
    }
}

/// Applies `change` to `fields`, validating each value (errors name the field).
pub fn apply_budget(fields: &mut BudgetFields, change: BudgetChange) -> Result<(), ApiError> {
    if let Some(max_budget) = change.max_budget {
        fields.max_budget = max_budget
            .map(|value| check_dollars("max_budget", value))
            .transpose()?;
    }
    if let Some(soft_budget) = change.soft_budget {
        fields.soft_budget = soft_budget
            .map(|value| check_dollars("soft_budget", value))
            .transpose()?;
    }
    if let Some(duration) = change.budget_duration {
        match duration {
            Some(text) => {
                fields.budget_duration_ms = Some(check_window("budget_duration", &text)?);
                fields.budget_duration = Some(text.trim().to_string());
            }
            None => {
                fields.budget_duration = None;
                fields.budget_duration_ms = None;
            }
        }
    }
    Ok(())
}

/// Replaces a key's `model_max_budget` (validated; errors name
/// `model_max_budget.<model>.budget_limit` / `.time_period`).
pub fn apply_model_budgets(
    key: &mut KeyRow,
    budgets: BTreeMap<String, ModelBudget>,
) -> Result<(), ApiError> {
    let mut limits = BTreeMap::new();
    let mut periods = BTreeMap::new();
    for (model, budget) in budgets {
        if model.trim().is_empty() {
            return Err(ApiError::invalid(
                "model_max_budget",
                "a model name must not be empty",
            ));
        }
        let limit_param = if budget.flat {
            format!("model_max_budget.{model}")
        } else {
            format!("model_max_budget.{model}.budget_limit")
        };
        limits.insert(
            model.clone(),
            check_dollars(&limit_param, budget.budget_limit)?,
        );
        if let Some(period) = budget.time_period {
            check_window(&format!("model_max_budget.{model}.time_period"), &period)?;
            periods.insert(model, period.trim().to_string());
        }
    }
    key.model_max_budget = limits;
    key.model_budget_durations = periods;
    Ok(())
}

/// A key's `model_max_budget` in LiteLLM's shapes: the model's dollars, or
/// `{"budget_limit", "time_period"}` when it has a window of its own.
pub fn model_max_budget_json(key: &KeyRow) -> Value {
    let entries: serde_json::Map<String, Value> = key
        .model_max_budget
        .iter()
        .map(|(model, limit)| {
            let value = match key.model_budget_durations.get(model) {
                Some(period) => json!({"budget_limit": limit, "time_period": period}),
                None => json!(limit),
            };
            (model.clone(), value)
        })
        .collect();
    Value::Object(entries)
}

/// Rate-limit fields of a request (`rpm_limit`, `tpm_limit`, `max_parallel_requests`):
/// `None` leaves a field as it is (unset, for a new row); `Some(None)` clears it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitChange {
    /// Requests per minute.
    pub rpm_limit: Option<Option<u64>>,
    /// Tokens per minute.
    pub tpm_limit: Option<Option<u64>>,
    /// Requests in flight at once.
    pub max_parallel_requests: Option<Option<u64>>,
}

impl RateLimitChange {
    /// A change that sets every field to `limits` (absent fields cleared).
    pub fn exactly(limits: RateLimitFields) -> RateLimitChange {
        RateLimitChange {
            rpm_limit: Some(limits.rpm),
            tpm_limit: Some(limits.tpm),
            max_parallel_requests: Some(limits.max_parallel_requests),
        }
    }
}

/// A rate limit: a whole number that fits the database's signed 64-bit integers.
pub fn check_limit(param: &str, value: u64) -> Result<u64, ApiError> {
    if value <= crate::limits::MAX_LIMIT {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            param,
            format!(
                "must be a whole number from 0 to {}",
                crate::limits::MAX_LIMIT
            ),
        ))
    }
}

/// Applies `change` to `fields`, validating each value (errors name the field).
pub fn apply_limits(fields: &mut RateLimitFields, change: RateLimitChange) -> Result<(), ApiError> {
    if let Some(rpm) = change.rpm_limit {
        fields.rpm = rpm
            .map(|value| check_limit("rpm_limit", value))
            .transpose()?;
    }
    if let Some(tpm) = change.tpm_limit {
        fields.tpm = tpm
            .map(|value| check_limit("tpm_limit", value))
            .transpose()?;
    }
    if let Some(parallel) = change.max_parallel_requests {
        fields.max_parallel_requests = parallel
            .map(|value| check_limit("max_parallel_requests", value))
            .transpose()?;
    }
    Ok(())
}

/// A key's `model_rpm_limit` or `model_tpm_limit` (`param`), validated: errors name
/// `<param>.<model>`.
pub fn check_model_limits(
    param: &str,
    limits: BTreeMap<String, u64>,
) -> Result<BTreeMap<String, u64>, ApiError> {
    limits
        .into_iter()
        .map(|(model, value)| {
            if model.trim().is_empty() {
                return Err(ApiError::invalid(param, "a model name must not be empty"));
            }
            let value = check_limit(&format!("{param}.{model}"), value)?;
            Ok((model, value))
        })
        .collect()
}

/// A new key's fields (`/key/generate`).
#[derive(Debug, Clone, Default)]
pub struct KeyGenerate {
    /// Unique alias.
    pub key_alias: Option<String>,
    /// Owner (created if unknown).
    pub user_id: Option<String>,
    /// Team (must exist).
    pub team_id: Option<String>,
    /// Allowed models.
    pub models: Vec<String>,
    /// Lifetime.
    pub duration: Option<String>,
    /// JSON object.
    pub metadata: Option<Value>,
    /// Caller-chosen key.
    pub key: Option<String>,
    /// Create blocked.
    pub blocked: bool,
    /// Budget.
    pub budget: BudgetChange,
    /// Per-model budgets.
    pub model_max_budget: Option<BTreeMap<String, ModelBudget>>,
    /// Rate limits.
    pub limits: RateLimitChange,
    /// `model_rpm_limit`: requests per minute per public model name.
    pub model_rpm_limit: Option<BTreeMap<String, u64>>,
    /// `model_tpm_limit`: tokens per minute per public model name.
    pub model_tpm_limit: Option<BTreeMap<String, u64>>,
}

/// Changes to a key (`/key/update`): `None` leaves a field alone; `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    /// The key (clear or token).
    pub key: String,
    /// Alias.
    pub key_alias: Option<Option<String>>,
    /// Owner.
    pub user_id: Option<Option<String>>,
    /// Team.
    pub team_id: Option<Option<String>>,
    /// Models.
    pub models: Option<Vec<String>>,
    /// New lifetime from now; `Some(None)` = never expires.
    pub duration: Option<Option<String>>,
    /// Metadata (replaces).
    pub metadata: Option<Value>,
    /// Blocked.
    pub blocked: Option<bool>,
    /// Budget changes.
    pub budget: BudgetChange,
    /// Per-model budgets (replace); `Some(None)` clears them.
    pub model_max_budget: Option<Option<BTreeMap<String, ModelBudget>>>,
    /// Rate-limit changes.
    pub limits: RateLimitChange,
    /// `model_rpm_limit` (replaces); `Some(None)` clears it.
    pub model_rpm_limit: Option<Option<BTreeMap<String, u64>>>,
    /// `model_tpm_limit` (replaces); `Some(None)` clears it.
    pub model_tpm_limit: Option<Option<BTreeMap<String, u64>>>,
}

/// A new user (`/user/new`).
#[derive(Debug, Clone, Default)]
pub struct UserCreate {
    /// Id; generated if absent.
    pub user_id: Option<String>,
    /// Email.
    pub user_email: Option<String>,
    /// Role; `internal_user` if absent.
    pub user_role: Option<String>,
    /// Allowed models (also the models of the created key).
    pub models: Vec<String>,
    /// JSON object.
    pub metadata: Option<Value>,
    /// Create a key for the user (LiteLLM's default).
    pub auto_create_key: bool,
    /// Alias of that key.
    pub key_alias: Option<String>,
    /// Lifetime of that key.
    pub duration: Option<String>,
    /// The user's budget.
    pub budget: BudgetChange,
    /// The user's rate limits (not its key's).
    pub limits: RateLimitChange,
}

/// Changes to a user (`/user/update`): `None` leaves a field alone; `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// The user.
    pub user_id: String,
    /// Email.
    pub user_email: Option<Option<String>>,
    /// Role.
    pub user_role: Option<String>,
    /// Allowed models.
    pub models: Option<Vec<String>>,
    /// Metadata (replaces).
    pub metadata: Option<Value>,
    /// Budget changes.
    pub budget: BudgetChange,
    /// Rate-limit changes.
    pub limits: RateLimitChange,
}

/// Changes to a team (`/team/update`): `None` leaves a field alone; `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct TeamUpdate {
    /// The team.
    pub team_id: String,
    /// Alias.
    pub team_alias: Option<Option<String>>,
    /// Models.
    pub models: Option<Vec<String>>,
    /// Metadata (replaces).
    pub metadata: Option<Value>,
    /// Blocked.
    pub blocked: Option<bool>,
    /// Budget changes.
    pub budget: BudgetChange,
    /// Rate-limit changes.
    pub limits: RateLimitChange,
}

/// A new team (`/team/new`).
#[derive(Debug, Clone, Default)]
pub struct TeamCreate {
    /// Id; generated if absent.
    pub team_id: Option<String>,
    /// Unique alias.
    pub team_alias: Option<String>,
    /// Models.
    pub models: Vec<String>,
    /// JSON object.
    pub metadata: Option<Value>,
    /// Members.
    pub members: Vec<NewMember>,
    /// The team's budget.
    pub budget: BudgetChange,
    /// The team's rate limits.
    pub limits: RateLimitChange,
}

/// A `/customer/new` request (the fields Tollgate takes; the HTTP layer refuses the ones
/// it cannot enforce).
#[derive(Debug, Clone, Default)]
pub struct CustomerCreate {
    /// Required: the request's `user` field this customer is.
    pub user_id: String,
    /// Human-friendly name.
    pub alias: Option<String>,
    /// A public model name of the gateway (stored, not used yet).
    pub default_model: Option<String>,
    /// JSON object.
    pub metadata: Option<Value>,
    /// `max_budget`, `soft_budget`, `budget_duration`.
    pub budget: BudgetChange,
}

/// A `/customer/update` request: `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct CustomerUpdate {
    /// The customer to change.
    pub user_id: String,
    /// Human-friendly name.
    pub alias: Option<Option<String>>,
    /// A public model name of the gateway.
    pub default_model: Option<Option<String>>,
    /// JSON object (replaces the stored one).
    pub metadata: Option<Value>,
    /// `max_budget`, `soft_budget`, `budget_duration`.
    pub budget: BudgetChange,
}

/// A user with its teams and keys (`/user/info`).
#[derive(Debug, Clone)]
pub struct UserDetails {
    /// The user.
    pub user: UserRow,
    /// Team ids.
    pub teams: Vec<String>,
    /// Keys.
    pub keys: Vec<KeyRow>,
}

fn non_empty(param: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(text) if text.trim().is_empty() => Err(ApiError::invalid(param, "must not be empty")),
        other => Ok(other),
    }
}

fn check_metadata(param: &str, value: Option<Value>) -> Result<Value, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::Object(map)) => Ok(Value::Object(map)),
        Some(_) => Err(ApiError::invalid(param, "must be an object")),
    }
}

fn check_custom_key(param: &str, key: Option<String>) -> Result<String, ApiError> {
    match key {
        Some(key) if key.starts_with("sk-") && key.len() >= 8 => Ok(key),
        Some(_) => Err(ApiError::invalid(
            param,
            "must start with \"sk-\" and be at least 8 characters long",
        )),
        None => new_key(),
    }
}

/// The management service.
pub struct Manager {
    hub: Arc<SyncHub>,
}

impl Manager {
    /// A service over the hub's store, publishing to the hub's streams.
    pub fn new(hub: Arc<SyncHub>) -> Arc<Manager> {
        Arc::new(Manager { hub })
    }

    fn store(&self) -> &Store {
        self.hub.store()
    }

    /// The hub changes are published to.
    pub fn hub(&self) -> &Arc<SyncHub> {
        &self.hub
    }

    /// Checks a bearer credential: the master key, or a usable key of a `proxy_admin` user.
    pub async fn authorize(&self, credential: Option<&str>) -> Result<(), ApiError> {
        let Some(credential) = credential.map(str::trim).filter(|c| !c.is_empty()) else {
            return Err(ApiError::unauthenticated(
                "missing credentials: send \"Authorization: Bearer <master key or admin key>\"",
            ));
        };
        let settings = self.store().settings().await?;
        let Some(master) = settings.get(SETTING_MASTER_KEY_SHA256) else {
            return Err(ApiError::unauthenticated(
                "the management API needs general_settings.master_key in the config",
            ));
        };
        let hash = sha256_hex(credential);
        if &hash == master {
            return Ok(());
        }
        let now = i64::try_from(now_unix_ms()).unwrap_or(i64::MAX);
        match self.store().key_owner_role(&hash, now).await? {
            Some(role) if role == ADMIN_ROLE => Ok(()),
            Some(role) => Err(ApiError::permission_denied(format!(
                "this key's user has role {role:?}; the management API needs the master key or a key of a proxy_admin user"
            ))),
            None => Err(ApiError::unauthenticated(
                "invalid credentials: not the master key nor a valid admin key",
            )),
        }
    }

    /// After a commit: rebuild the snapshot from the database and push it to every stream,
    /// in the background and coalesced with other changes (see [`SyncHub::request_refresh`]).
    async fn changed(&self) {
        self.hub.request_refresh();
    }

    // ---- models ----

    /// Every deployment.
    pub async fn list_models(&self) -> Result<Vec<StoredDeployment>, ApiError> {
        Ok(self.store().deployments().await?)
    }

    /// One deployment.
    pub async fn get_model(&self, id: &str) -> Result<StoredDeployment, ApiError> {
        self.store()
            .deployment(id)
            .await?
            .ok_or_else(|| ApiError::not_found("id", format!("model {id:?} not found")))
    }

    /// The operator's allowlist of environment variables, as stored from the config.
    async fn env_allowlist(&self) -> Result<EnvAllowlist, ApiError> {
        let settings = self.store().settings().await?;
        let Some(text) = settings.get(SETTING_API_ENV_PREFIXES) else {
            return Ok(EnvAllowlist::default());
        };
        let prefixes: Vec<String> = serde_json::from_str(text).map_err(|error| {
            ApiError::internal(format!(
                "stored {SETTING_API_ENV_PREFIXES} is invalid: {error}"
            ))
        })?;
        EnvAllowlist::new(prefixes).map_err(|error| {
            ApiError::internal(format!(
                "stored {SETTING_API_ENV_PREFIXES} is invalid: {error}"
            ))
        })
    }

    /// `entry` (a model or a patch from a client) with its allowed `os.environ/NAME`
    /// references resolved, or a 400 naming the first field that may not use one.
    async fn resolve_env(&self, entry: &Value) -> Result<Value, ApiError> {
        let allowlist = self.env_allowlist().await?;
        let env = |name: &str| std::env::var(name).ok();
        config::resolve_api_env(entry, &allowlist, &env).map_err(issues_error)
    }

    /// A record from an entry whose strings are all values (see [`Self::resolve_env`]).
    fn record_from_entry(entry: &Value, id: String) -> Result<DeploymentRecord, ApiError> {
        let (deployment, _warnings) = config::parse_model_entry(entry).map_err(issues_error)?;
        let mut record = DeploymentRecord::from_config(&deployment);
        record.id = id.clone();
        record.source = DeploymentSource::Api;
        record.position = 0;
        let mut info = record.model_info.take().unwrap_or_else(|| json!({}));
        if let Value::Object(map) = &mut info {
            map.insert("id".into(), Value::String(id));
        }
        record.model_info = Some(info);
        Ok(record)
    }

    fn entry_id(entry: &Value) -> Result<Option<String>, ApiError> {
        match entry.get("model_info").and_then(|info| info.get("id")) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(id)) if !id.trim().is_empty() => Ok(Some(id.clone())),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(_) => Err(ApiError::invalid(
                "model_info.id",
                "must be a non-empty string",
            )),
        }
    }

    /// `/model/new`: `entry` is `{model_name, litellm_params, model_info?}`.
    pub async fn create_model(&self, entry: &Value) -> Result<StoredDeployment, ApiError> {
        let entry = self.resolve_env(entry).await?;
        let id = Self::entry_id(&entry)?.unwrap_or_else(new_id);
        let record = Self::record_from_entry(&entry, id.clone())?;
        self.store().insert_api_deployment(&record).await?;
        self.changed().await;
        self.get_model(&id).await
    }

    /// `/model/update`: fields of `patch` (`model_name`, `litellm_params.*`, `model_info.*`)
    /// replace the stored ones; the result is validated like a new model.
    pub async fn update_model(
        &self,
        id: &str,
        patch: &Value,
    ) -> Result<StoredDeployment, ApiError> {
        let current = self.get_model(id).await?;
        if current.record.source != DeploymentSource::Api {
            return Err(ApiError::config_model(id));
        }
        // Only the client's fields: the stored ones are values already.
        let patch = &self.resolve_env(patch).await?;
        let mut entry = model_entry_json(&current.record, true);
        if let Some(name) = patch.get("model_name") {
            if !name.is_null() {
                entry["model_name"] = name.clone();
            }
        }
        for section in ["litellm_params", "model_info"] {
            match patch.get(section) {
                None | Some(Value::Null) => {}
                Some(Value::Object(fields)) => {
                    for (name, value) in fields {
                        if section == "model_info" && name == "id" {
                            continue;
                        }
                        entry[section][name] = value.clone();
                    }
                }
                Some(_) => return Err(ApiError::invalid(section, "must be an object")),
            }
        }
        // A session token belongs to the AWS key pair it was issued with: new credentials
        // without a token of their own are long-term ones, not the old token's.
        let names = |field: &str| {
            patch
                .get("litellm_params")
                .and_then(|params| params.get(field))
                .is_some()
        };
        if (names("aws_access_key_id") || names("aws_secret_access_key"))
            && !names("aws_session_token")
        {
            if let Some(Value::Object(params)) = entry.get_mut("litellm_params") {
                params.remove("aws_session_token");
            }
        }
        // num_retries and max_retries are one setting (the stored entry says num_retries):
        // a patch giving one of them replaces it, rather than disagreeing with it.
        for (given, other) in [
            ("max_retries", "num_retries"),
            ("num_retries", "max_retries"),
        ] {
            if names(given) && !names(other) {
                if let Some(Value::Object(params)) = entry.get_mut("litellm_params") {
                    params.remove(other);
                }
            }
        }
        let record = Self::record_from_entry(&entry, id.to_string())?;
        self.store()
            .change_api_deployment(id, Some(&record))
            .await?;
        self.changed().await;
        self.get_model(id).await
    }

    /// `/model/delete`.
    pub async fn delete_model(&self, id: &str) -> Result<(), ApiError> {
        self.store().change_api_deployment(id, None).await?;
        self.changed().await;
        Ok(())
    }

    // ---- keys ----

    /// `/key/generate`: returns the clear key (shown once) and the stored row.
    pub async fn generate_key(&self, request: KeyGenerate) -> Result<(String, KeyRow), ApiError> {
        let clear = check_custom_key("key", request.key)?;
        let now = i64::try_from(now_unix_ms()).unwrap_or(i64::MAX);
        let expires_ms = match &request.duration {
            Some(duration) => Some(now.saturating_add(parse_duration("duration", duration)?)),
            None => None,
        };
        let mut row = KeyRow {
            budget: Default::default(),
            model_max_budget: Default::default(),
            model_budget_durations: Default::default(),
            limits: Default::default(),
            model_rpm_limit: Default::default(),
            model_tpm_limit: Default::default(),
            token: sha256_hex(&clear),
            key_name: mask_key(&clear),
            key_alias: non_empty("key_alias", request.key_alias)?,
            user_id: non_empty("user_id", request.user_id)?,
            team_id: non_empty("team_id", request.team_id)?,
            models: request.models,
            blocked: request.blocked,
            expires_ms,
            metadata: check_metadata("metadata", request.metadata)?,
            created_at: now,
            updated_at: now,
        };
        apply_budget(&mut row.budget, request.budget)?;
        if let Some(budgets) = request.model_max_budget {
            apply_model_budgets(&mut row, budgets)?;
        }
        apply_limits(&mut row.limits, request.limits)?;
        if let Some(limits) = request.model_rpm_limit {
            row.model_rpm_limit = check_model_limits("model_rpm_limit", limits)?;
        }
        if let Some(limits) = request.model_tpm_limit {
            row.model_tpm_limit = check_model_limits("model_tpm_limit", limits)?;
        }
        self.store().insert_key(&row).await?;
        self.changed().await;
        Ok((clear, row))
    }

    /// One key, by clear key or token.
    pub async fn key_info(&self, key: &str) -> Result<KeyRow, ApiError> {
        if key.trim().is_empty() {
            return Err(ApiError::invalid("key", "required"));
        }
        self.store()
            .key(&token_of(key))
            .await?
            .ok_or_else(|| ApiError::not_found("key", "key not found"))
    }

    /// Keys matching the filters.
    pub async fn list_keys(
        &self,
        user_id: Option<&str>,
        team_id: Option<&str>,
        key_alias: Option<&str>,
    ) -> Result<Vec<KeyRow>, ApiError> {
        Ok(self.store().keys(user_id, team_id, key_alias).await?)
    }

    /// `/key/update`.
    pub async fn update_key(&self, request: KeyUpdate) -> Result<KeyRow, ApiError> {
        let mut row = self.key_info(&request.key).await?;
        if let Some(alias) = request.key_alias {
            row.key_alias = non_empty("key_alias", alias)?;
        }
        if let Some(user_id) = request.user_id {
            row.user_id = non_empty("user_id", user_id)?;
        }
        if let Some(team_id) = request.team_id {
            row.team_id = non_empty("team_id", team_id)?;
        }
        if let Some(models) = request.models {
            row.models = models;
        }
        if let Some(duration) = request.duration {
            let now = i64::try_from(now_unix_ms()).unwrap_or(i64::MAX);
            row.expires_ms = match duration {
                Some(duration) => Some(now.saturating_add(parse_duration("duration", &duration)?)),
                None => None,
            };
        }
        if let Some(metadata) = request.metadata {
            row.metadata = check_metadata("metadata", Some(metadata))?;
        }
        if let Some(blocked) = request.blocked {
            row.blocked = blocked;
        }
        apply_budget(&mut row.budget, request.budget)?;
        if let Some(budgets) = request.model_max_budget {
            apply_model_budgets(&mut row, budgets.unwrap_or_default())?;
        }
        apply_limits(&mut row.limits, request.limits)?;
        if let Some(limits) = request.model_rpm_limit {
            row.model_rpm_limit =
                check_model_limits("model_rpm_limit", limits.unwrap_or_default())?;
        }
        if let Some(limits) = request.model_tpm_limit {
            row.model_tpm_limit =
                check_model_limits("model_tpm_limit", limits.unwrap_or_default())?;
        }
        let (row, _) = self.store().update_key(&row, None).await?;
        self.changed().await;
        Ok(row)
    }

    /// `/key/block` and `/key/unblock`.
    pub async fn set_blocked(&self, key: &str, blocked: bool) -> Result<KeyRow, ApiError> {
        self.update_key(KeyUpdate {
            key: key.to_string(),
            blocked: Some(blocked),
            ..KeyUpdate::default()
        })
        .await
    }

    /// `/key/regenerate`: a new clear key for the same row; the old key stops working.
    pub async fn regenerate_key(
        &self,
        key: &str,
        new_key: Option<String>,
    ) -> Result<(String, KeyRow), ApiError> {
        let row = self.key_info(key).await?;
        let clear = check_custom_key("new_key", new_key)?;
        let token = sha256_hex(&clear);
        let (row, _) = self
            .store()
            .update_key(&row, Some((&token, &mask_key(&clear))))
            .await?;
        self.changed().await;
        Ok((clear, row))
    }

    /// `/key/delete`: all or nothing; returns the deleted tokens.
    pub async fn delete_keys(
        &self,
        keys: &[String],
        aliases: &[String],
    ) -> Result<Vec<String>, ApiError> {
        if keys.is_empty() && aliases.is_empty() {
            return Err(ApiError::invalid(
                "keys",
                "give keys or key_aliases to delete",
            ));
        }
        let tokens: Vec<String> = keys.iter().map(|key| token_of(key)).collect();
        let (deleted, _) = self.store().delete_keys(&tokens, aliases).await?;
        self.changed().await;
        Ok(deleted)
    }

    // ---- users ----

    /// `/user/new`: the user, and its key unless `auto_create_key` is false.
    pub async fn create_user(
        &self,
        request: UserCreate,
    ) -> Result<(UserRow, Option<(String, KeyRow)>), ApiError> {
        let role = request.user_role.unwrap_or_else(|| "internal_user".into());
        if !USER_ROLES.contains(&role.as_str()) {
            return Err(ApiError::invalid(
                "user_role",
                format!("{role:?} is not one of {}", USER_ROLES.join(", ")),
            ));
        }
        let now = i64::try_from(now_unix_ms()).unwrap_or(i64::MAX);
        let mut user = UserRow {
            budget: Default::default(),
            limits: Default::default(),
            user_id: non_empty("user_id", request.user_id)?.unwrap_or_else(new_id),
            user_email: non_empty("user_email", request.user_email)?,
            user_role: role,
            models: request.models.clone(),
            metadata: check_metadata("metadata", request.metadata)?,
            created_at: now,
            updated_at: now,
        };
        apply_budget(&mut user.budget, request.budget)?;
        apply_limits(&mut user.limits, request.limits)?;
        let key = if request.auto_create_key {
            let clear = new_key()?;
            let expires_ms = match &request.duration {
                Some(duration) => Some(now.saturating_add(parse_duration("duration", duration)?)),
                None => None,
            };
            Some((
                clear.clone(),
                KeyRow {
                    budget: Default::default(),
                    model_max_budget: Default::default(),
                    model_budget_durations: Default::default(),
                    limits: Default::default(),
                    model_rpm_limit: Default::default(),
                    model_tpm_limit: Default::default(),
                    token: sha256_hex(&clear),
                    key_name: mask_key(&clear),
                    key_alias: non_empty("key_alias", request.key_alias)?,
                    user_id: Some(user.user_id.clone()),
                    team_id: None,
                    models: request.models,
                    blocked: false,
                    expires_ms,
                    metadata: json!({}),
                    created_at: now,
                    updated_at: now,
                },
            ))
        } else {
            None
        };
        self.store()
            .insert_user(&user, key.as_ref().map(|(_, row)| row))
            .await?;
        self.changed().await;
        Ok((user, key))
    }

    /// `/user/info`.
    pub async fn user_info(&self, user_id: &str) -> Result<UserDetails, ApiError> {
        if user_id.trim().is_empty() {
            return Err(ApiError::invalid("user_id", "required"));
        }
        let user =
            self.store().user(user_id).await?.ok_or_else(|| {
                ApiError::not_found("user_id", format!("user {user_id:?} not found"))
            })?;
        let teams = self.store().user_teams(user_id).await?;
        let keys = self.store().keys(Some(user_id), None, None).await?;
        Ok(UserDetails { user, teams, keys })
    }

    /// `/user/update`.
    pub async fn update_user(&self, request: UserUpdate) -> Result<UserRow, ApiError> {
        let mut user = self.user_info(&request.user_id).await?.user;
        if let Some(email) = request.user_email {
            user.user_email = non_empty("user_email", email)?;
        }
        if let Some(role) = request.user_role {
            if !USER_ROLES.contains(&role.as_str()) {
                return Err(ApiError::invalid(
                    "user_role",
                    format!("{role:?} is not one of {}", USER_ROLES.join(", ")),
                ));
            }
            user.user_role = role;
        }
        if let Some(models) = request.models {
            user.models = models;
        }
        if let Some(metadata) = request.metadata {
            user.metadata = check_metadata("metadata", Some(metadata))?;
        }
        apply_budget(&mut user.budget, request.budget)?;
        apply_limits(&mut user.limits, request.limits)?;
        let (user, _) = self.store().update_user(&user).await?;
        self.changed().await;
        Ok(user)
    }

    /// When the budget window of `scope` (`key`, `user`, `team`, `key_model`, `global`) /
    /// `scope_id` ends, in unix ms; `None` when its spend never resets.
    pub async fn budget_reset_at(
        &self,
        scope: &str,
        scope_id: &str,
    ) -> Result<Option<i64>, ApiError> {
        Ok(self.store().budget_reset_at(scope, scope_id).await?)
    }

    // ---- customers (end users) ----

    /// Fails unless `model` is a public model name of the gateway (LiteLLM checks
    /// `default_model` the same way).
    async fn check_default_model(&self, model: Option<String>) -> Result<Option<String>, ApiError> {
        let Some(model) = non_empty("default_model", model)? else {
            return Ok(None);
        };
        let known = self.store().deployments().await?;
        if known.iter().any(|stored| stored.record.model_name == model) {
            Ok(Some(model))
        } else {
            Err(ApiError::invalid(
                "default_model",
                format!("{model:?} is not a model of this gateway"),
            ))
        }
    }

    /// `/customer/new`.
    pub async fn create_customer(&self, request: CustomerCreate) -> Result<CustomerRow, ApiError> {
        let user_id = request.user_id;
        if user_id.trim().is_empty() {
            return Err(ApiError::invalid("user_id", "required"));
        }
        let now = i64::try_from(now_unix_ms()).unwrap_or(i64::MAX);
        let mut customer = CustomerRow {
            user_id,
            alias: non_empty("alias", request.alias)?,
            default_model: self.check_default_model(request.default_model).await?,
            metadata: check_metadata("metadata", request.metadata)?,
            created_at: now,
            updated_at: now,
            budget: BudgetFields::default(),
        };
        apply_budget(&mut customer.budget, request.budget)?;
        self.store().insert_customer(&customer).await?;
        self.changed().await;
        Ok(customer)
    }

    /// `/customer/info`.
    pub async fn customer_info(&self, user_id: &str) -> Result<CustomerRow, ApiError> {
        if user_id.trim().is_empty() {
            return Err(ApiError::invalid("end_user_id", "required"));
        }
        self.store().customer(user_id).await?.ok_or_else(|| {
            ApiError::not_found(
                "end_user_id",
                format!("End User Id={user_id} does not exist in db"),
            )
        })
    }

    /// `/customer/list`.
    pub async fn list_customers(&self) -> Result<Vec<CustomerRow>, ApiError> {
        Ok(self.store().customers().await?)
    }

    /// `/customer/update`.
    pub async fn update_customer(&self, request: CustomerUpdate) -> Result<CustomerRow, ApiError> {
        if request.user_id.trim().is_empty() {
            return Err(ApiError::invalid("user_id", "required"));
        }
        let mut customer = self
            .store()
            .customer(&request.user_id)
            .await?
            .ok_or_else(|| {
                ApiError::from(StoreError::NotFound(Missing::Customer(
                    request.user_id.clone(),
                )))
            })?;
        if let Some(alias) = request.alias {
            customer.alias = non_empty("alias", alias)?;
        }
        if let Some(model) = request.default_model {
            customer.default_model = self.check_default_model(model).await?;
        }
        if let Some(metadata) = request.metadata {
            customer.metadata = check_metadata("metadata", Some(metadata))?;
        }
        apply_budget(&mut customer.budget, request.budget)?;
        let (customer, _) = self.store().update_customer(&customer).await?;
        self.changed().await;
        Ok(customer)
    }

    /// `/customer/delete`: all or nothing (an unknown id deletes none); returns how many
    /// were deleted.
    pub async fn delete_customers(&self, user_ids: &[String]) -> Result<usize, ApiError> {
        if user_ids.is_empty() {
            return Err(ApiError::invalid(
                "user_ids",
                "give at least one user_id to delete",
            ));
        }
        let mut unique: Vec<String> = Vec::with_capacity(user_ids.len());
        for (index, user_id) in user_ids.iter().enumerate() {
            if user_id.trim().is_empty() {
                return Err(ApiError::invalid(
                    &format!("user_ids[{index}]"),
                    "must not be empty",
                ));
            }
            if !unique.contains(user_id) {
                unique.push(user_id.clone());
            }
        }
        match self.store().delete_customers(&unique).await {
            Ok(_) => {}
            // The store counts in the list without repeats; the error names the request's.
            Err(StoreError::NotFound(Missing::CustomerInBatch { user_id, .. })) => {
                let index = user_ids.iter().position(|id| *id == user_id).unwrap_or(0);
                return Err(
                    StoreError::NotFound(Missing::CustomerInBatch { index, user_id }).into(),
                );
            }
            Err(other) => return Err(other.into()),
        }
        self.changed().await;
        Ok(unique.len())
    }

    // ---- teams ----

    fn check_members(param: &str, members: &[NewMember]) -> Result<(), ApiError> {
        for (index, member) in members.iter().enumerate() {
            if !TEAM_ROLES.contains(&member.role.as_str()) {
                return Err(ApiError::invalid(
                    &format!("{param}[{index}].role"),
                    format!("{:?} is not one of admin, user", member.role),
                ));
            }
            if member.user_id.is_none() && member.user_email.is_none() {
                return Err(ApiError::invalid(
                    &format!("{param}[{index}].user_id"),
                    "a member needs user_id or user_email",
                ));
            }
        }
        Ok(())
    }

    /// `/team/new`.
    pub async fn create_team(&self, request: TeamCreate) -> Result<TeamRow, ApiError> {
        Self::check_members("members_with_roles", &request.members)?;
        let now = i64::try_from(now_unix_ms()).unwrap_or(i64::MAX);
        let mut team = TeamRow {
            budget: Default::default(),
            limits: Default::default(),
            team_id: non_empty("team_id", request.team_id)?.unwrap_or_else(new_id),
            team_alias: non_empty("team_alias", request.team_alias)?,
            models: request.models,
            metadata: check_metadata("metadata", request.metadata)?,
            blocked: false,
            members: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        apply_budget(&mut team.budget, request.budget)?;
        apply_limits(&mut team.limits, request.limits)?;
        self.store().insert_team(&team, &request.members).await?;
        self.changed().await;
        Ok(self.team_info(&team.team_id).await?.0)
    }

    /// `/team/info`: the team with its members, and its keys.
    pub async fn team_info(&self, team_id: &str) -> Result<(TeamRow, Vec<KeyRow>), ApiError> {
        if team_id.trim().is_empty() {
            return Err(ApiError::invalid("team_id", "required"));
        }
        let team =
            self.store().team(team_id).await?.ok_or_else(|| {
                ApiError::not_found("team_id", format!("team {team_id:?} not found"))
            })?;
        let keys = self.store().keys(None, Some(team_id), None).await?;
        Ok((team, keys))
    }

    /// `/team/update`.
    pub async fn update_team(&self, request: TeamUpdate) -> Result<TeamRow, ApiError> {
        let (mut team, _) = self.team_info(&request.team_id).await?;
        if let Some(alias) = request.team_alias {
            team.team_alias = non_empty("team_alias", alias)?;
        }
        if let Some(models) = request.models {
            team.models = models;
        }
        if let Some(metadata) = request.metadata {
            team.metadata = check_metadata("metadata", Some(metadata))?;
        }
        if let Some(blocked) = request.blocked {
            team.blocked = blocked;
        }
        apply_budget(&mut team.budget, request.budget)?;
        apply_limits(&mut team.limits, request.limits)?;
        self.store().update_team(&team).await?;
        self.changed().await;
        Ok(self.team_info(&team.team_id).await?.0)
    }

    /// `/team/member_add`: all members or none.
    pub async fn add_team_members(
        &self,
        team_id: &str,
        members: &[NewMember],
    ) -> Result<TeamRow, ApiError> {
        if team_id.trim().is_empty() {
            return Err(ApiError::invalid("team_id", "required"));
        }
        if members.is_empty() {
            return Err(ApiError::invalid("member", "required"));
        }
        Self::check_members("member", members)?;
        self.store().add_team_members(team_id, members).await?;
        self.changed().await;
        Ok(self.team_info(team_id).await?.0)
    }
}

/// A deployment as a LiteLLM `model_list` entry. `with_secret` keeps the provider key
/// (internal use: updates); API answers never include it.
pub fn model_entry_json(record: &DeploymentRecord, with_secret: bool) -> Value {
    let mut params = serde_json::Map::new();
    params.insert(
        "model".into(),
        Value::String(format!(
            "{}/{}",
            record.provider_name, record.upstream_model
        )),
    );
    params.insert("api_base".into(), Value::String(record.api_base.clone()));
    if let Some(version) = &record.api_version {
        params.insert("api_version".into(), Value::String(version.clone()));
    }
    if let Some(tokens) = record.default_max_tokens {
        params.insert("max_tokens".into(), Value::from(tokens));
    }
    // Prices given in litellm_params (an update rebuilds the entry from this, so they must
    // be here to survive it).
    for field in crate::pricing::PRICE_FIELDS {
        if let Some(price) = record.pricing.get(field) {
            params.insert(field.into(), Value::from(price));
        }
    }
    // Likewise the rate limits.
    for (field, limit) in [
        ("rpm", record.limits.rpm),
        ("tpm", record.limits.tpm),
        ("max_parallel_requests", record.limits.max_parallel_requests),
    ] {
        if let Some(limit) = limit {
            params.insert(field.into(), Value::from(limit));
        }
    }
    if with_secret {
        if let Some(key) = &record.api_key {
            params.insert("api_key".into(), Value::String(key.clone()));
        }
    }
    for (name, value) in &record.default_params {
        params.insert(name.clone(), value.clone());
    }
    // The routing fields too (an update rebuilds the entry from this).
    params.extend(record.routing.to_params());
    // The typed settings as LiteLLM's flat params, their credentials only with the secret.
    match &record.provider_settings {
        ProviderSettings::None => {}
        ProviderSettings::Bedrock(bedrock) => {
            params.insert(
                "aws_region_name".into(),
                Value::String(bedrock.region.clone()),
            );
            if with_secret {
                let credentials = &bedrock.credentials;
                params.insert(
                    "aws_access_key_id".into(),
                    Value::String(credentials.access_key_id.clone()),
                );
                params.insert(
                    "aws_secret_access_key".into(),
                    Value::String(credentials.secret_access_key.clone()),
                );
                if let Some(token) = &credentials.session_token {
                    params.insert("aws_session_token".into(), Value::String(token.clone()));
                }
            }
        }
        ProviderSettings::Vertex(vertex) => {
            params.insert(
                "vertex_project".into(),
                Value::String(vertex.project.clone()),
            );
            params.insert(
                "vertex_location".into(),
                Value::String(vertex.location.clone()),
            );
            if with_secret {
                params.insert(
                    "vertex_credentials".into(),
                    Value::String(vertex.service_account_json.clone()),
                );
            }
        }
    }
    let mut info = match &record.model_info {
        Some(Value::Object(map)) => map.clone(),
        _ => serde_json::Map::new(),
    };
    if !with_secret {
        info.insert("id".into(), Value::String(record.id.clone()));
        info.insert(
            "db_model".into(),
            Value::Bool(record.source == DeploymentSource::Api),
        );
    }
    json!({
        "model_name": record.model_name,
        "litellm_params": Value::Object(params),
        "model_info": Value::Object(info),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_dates() {
        assert_eq!(parse_duration("d", "30s").ok(), Some(30_000));
        assert_eq!(parse_duration("d", "2h").ok(), Some(7_200_000));
        assert_eq!(parse_duration("d", "1mo").ok(), Some(2_592_000_000));
        assert!(parse_duration("d", "soon").is_err());
        assert!(parse_duration("d", "3y").is_err());
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_735_787_045_678), "2025-01-02T03:04:05.678Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn keys_and_ids() {
        let key = new_key().unwrap();
        assert!(key.starts_with("sk-") && key.len() == 25, "{key}");
        assert_eq!(mask_key("sk-abcdefgh"), "sk-...efgh");
        assert_eq!(token_of(&key), sha256_hex(&key));
        assert_eq!(token_of(&sha256_hex(&key)), sha256_hex(&key));
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_ne!(id, new_id());
    }
}
