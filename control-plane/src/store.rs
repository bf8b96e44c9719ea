//! Storage: deployments, settings, the usage ledger and (in the `management` submodule)
//! virtual keys, users and teams, in SQLite or PostgreSQL.
//!
//! One enum over the two pools rather than `sqlx::Any`: each backend keeps its own types and
//! pool options (SQLite busy timeout, WAL), and the [`with_pool!`] macro writes every query
//! once while compiling it against both drivers. The SQL itself is shared: `$N` placeholders,
//! `ON CONFLICT` and `BIGINT` columns mean the same in both. Queries use the runtime API
//! because no database exists at build time.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::config::{Config, DeploymentConfig, Wire};
use crate::pricing::Prices;
use crate::proto;
use crate::provider_settings::ProviderSettings;
use crate::secrets::{self, CredentialError, CredentialKey};

pub use management::{
    key_model_scope_id, BudgetFields, KeyRow, MemberRow, NewMember, RateLimitFields, ScopeBudget,
    ScopeRateLimits, StateChanges, StateSnapshot, TeamRow, UserRow, REMOVED_KEY_RETENTION_MS,
};
pub use spend::{
    ReportFilter, ReportGroup, ReportRow, SpendLogFilter, SpendQuery, SpendScope, TagSpend, DAY_MS,
};
pub use synthetic::{
    synthetic_key_hash, synthetic_record, synthetic_started_ms, SYNTHETIC_BASE_MS, SYNTHETIC_DAYS,
    SYNTHETIC_END_USERS, SYNTHETIC_KEYS, SYNTHETIC_MODELS, SYNTHETIC_TAGS, SYNTHETIC_TEAMS,
    SYNTHETIC_USERS,
};

/// PostgreSQL channel every committed change is announced on (payload: the new version),
/// so that other control-plane replicas on the same database rebuild their snapshot.
pub const CHANGES_CHANNEL: &str = "tollgate_changes";

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// `settings` key of the SHA-256 hex of the master key (the key itself is never stored).
pub const SETTING_MASTER_KEY_SHA256: &str = "master_key_sha256";
/// `settings` key of the request body limit in bytes.
pub const SETTING_MAX_REQUEST_BODY_BYTES: &str = "max_request_body_bytes";
/// `settings` key of the buffered response body limit in bytes.
pub const SETTING_MAX_RESPONSE_BODY_BYTES: &str = "max_response_body_bytes";
/// `settings` key of the last snapshot version handed out.
pub const SETTING_SNAPSHOT_VERSION: &str = "snapshot_version";
/// `settings` key of a known text sealed with the credential key, so a wrong key is found at
/// startup even before a provider key is read.
pub const SETTING_CREDENTIAL_KEY_CHECK: &str = "credential_key_check";
/// `settings` key of the `os.environ/` name prefixes the management API may resolve in
/// credential fields (a JSON list; absent = none).
pub const SETTING_API_ENV_PREFIXES: &str = "api_env_prefixes";
/// `settings` key of `general_settings.cost_per_token` (a JSON object: public model name ->
/// US dollars per token). Written only with the config, in the transaction that marks the
/// deployments changed, since it changes their pricing (see `Store::replace_config`).
pub const SETTING_COST_PER_TOKEN: &str = "cost_per_token";
/// `general_settings.max_budget`: US dollars per window for every request together.
pub const SETTING_MAX_BUDGET: &str = "max_budget";
/// `general_settings.soft_budget`: alert threshold of the gateway's budget.
pub const SETTING_SOFT_BUDGET: &str = "soft_budget";
/// `general_settings.budget_duration`, as written ("30d").
pub const SETTING_BUDGET_DURATION: &str = "budget_duration";
/// `litellm_settings.max_end_user_budget`: US dollars per window for each end user (the
/// request's `user` field) that has no budget of its own.
pub const SETTING_MAX_END_USER_BUDGET: &str = "max_end_user_budget";
/// `general_settings.rpm_limit`: requests per minute for every request together.
pub const SETTING_RPM_LIMIT: &str = "rpm_limit";
/// `general_settings.tpm_limit`: tokens per minute for every request together.
pub const SETTING_TPM_LIMIT: &str = "tpm_limit";
/// `general_settings.global_max_parallel_requests`: requests in flight through the whole
/// gateway.
pub const SETTING_GLOBAL_MAX_PARALLEL_REQUESTS: &str = "global_max_parallel_requests";
/// `general_settings.max_parallel_requests`: the `max_parallel_requests` of every key that
/// sets none. Every key's snapshot entry depends on it, so a change of it marks every key
/// changed (see `Store::replace_config`).
pub const SETTING_MAX_PARALLEL_REQUESTS: &str = "max_parallel_requests";
/// `general_settings.user_rate_limit`: a JSON object, user id -> `{rpm, tpm,
/// max_parallel_requests}`.
pub const SETTING_USER_RATE_LIMIT: &str = "user_rate_limit";
/// `settings` key of `router_settings` resolved ([`crate::config::RouterConfig`] as JSON);
/// absent: LiteLLM's defaults.
pub const SETTING_ROUTER: &str = "router";

/// What [`SETTING_CREDENTIAL_KEY_CHECK`] seals.
const CREDENTIAL_KEY_CHECK_TEXT: &str = "tollgate credential key check";
/// The associated data of [`SETTING_CREDENTIAL_KEY_CHECK`].
const CREDENTIAL_KEY_CHECK_CONTEXT: &str = "settings:credential_key_check";

/// The associated data a deployment's provider key is sealed with.
fn api_key_context(deployment_id: &str) -> String {
    format!("deployment:{deployment_id}:api_key")
}

/// The associated data a deployment's provider credentials are sealed with.
fn provider_secret_context(deployment_id: &str) -> String {
    format!("deployment:{deployment_id}:provider_secret")
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names a database Tollgate cannot use.
    #[error(
        "unsupported database URL {0}: expected sqlite:..., postgres://... or postgresql://..."
    )]
    UnsupportedUrl(String),
    /// The database could not be opened.
    #[error("cannot open database {target}: {source}")]
    Connect {
        /// The URL, without its password.
        target: String,
        /// Driver error.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A config deployment's id belongs to a deployment added through the API.
    #[error(
        "deployment id {0:?} from the config is already used by a deployment added through the API"
    )]
    IdTaken(String),
    /// A row holds a value this version cannot read.
    #[error("invalid stored data: {0}")]
    Corrupt(String),
    /// A change names a row that is not stored.
    #[error("{0} not found")]
    NotFound(Missing),
    /// A change would store a second row under a unique id or name.
    #[error("{0} already exists")]
    AlreadyExists(Taken),
    /// A change or deletion of a deployment from the config file, which only the file may
    /// change.
    #[error("deployment {0:?} belongs to the config file")]
    ConfigDeployment(String),
    /// A team member to add names neither a user id nor an email.
    #[error("team member {index} has neither a user id nor an email")]
    MemberWithoutUser {
        /// Position of the member in the list given.
        index: usize,
    },
    /// Provider credentials cannot be encrypted or decrypted.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
}

/// The row a change names that is not stored ([`StoreError::NotFound`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// A team, by id.
    Team(String),
    /// The key being changed.
    Key,
    /// A key of a batch deletion, by its position among the tokens given.
    KeyInBatch {
        /// Position among the tokens.
        index: usize,
    },
    /// A key alias of a batch deletion, by its position among the aliases given.
    KeyAliasInBatch {
        /// Position among the aliases.
        index: usize,
        /// The alias.
        alias: String,
    },
    /// A deployment, by id.
    Deployment(String),
    /// A user, by id.
    User(String),
    /// A customer (end user), by id.
    Customer(String),
    /// A customer of a batch deletion, by its position among the ids given.
    CustomerInBatch {
        /// Position among the ids.
        index: usize,
        /// The id.
        user_id: String,
    },
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Team(id) => write!(f, "team {id:?}"),
            Missing::Key => f.write_str("key"),
            Missing::KeyInBatch { index } => write!(f, "key {index} of the batch"),
            Missing::KeyAliasInBatch { index, alias } => {
                write!(f, "key alias {alias:?} ({index} of the batch)")
            }
            Missing::Deployment(id) => write!(f, "deployment {id:?}"),
            Missing::User(id) => write!(f, "user {id:?}"),
            Missing::Customer(id) => write!(f, "customer {id:?}"),
            Missing::CustomerInBatch { index, user_id } => {
                write!(f, "customer {user_id:?} ({index} of the batch)")
            }
        }
    }
}

/// The unique id or name a change would store twice ([`StoreError::AlreadyExists`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// A key's token.
    Key,
    /// A key alias, held by another key.
    KeyAlias(String),
    /// A user id.
    User(String),
    /// A team id.
    Team(String),
    /// A team alias, held by another team.
    TeamAlias(String),
    /// A user's membership of a team.
    Member {
        /// The user.
        user_id: String,
        /// The team.
        team_id: String,
    },
    /// A deployment id.
    Deployment(String),
    /// A customer (end user) id.
    Customer(String),
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Taken::Key => f.write_str("key"),
            Taken::KeyAlias(alias) => write!(f, "key alias {alias:?}"),
            Taken::User(id) => write!(f, "user {id:?}"),
            Taken::Team(id) => write!(f, "team {id:?}"),
            Taken::TeamAlias(alias) => write!(f, "team alias {alias:?}"),
            Taken::Member { user_id, team_id } => {
                write!(f, "membership of user {user_id:?} in team {team_id:?}")
            }
            Taken::Deployment(id) => write!(f, "deployment {id:?}"),
            Taken::Customer(id) => write!(f, "customer {id:?}"),
        }
    }
}

/// Which database engine a store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file (the default).
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// True for the URL schemes [`Store::connect`] accepts.
pub fn is_supported_url(url: &str) -> bool {
    url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` without the password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                url.to_string()
            }
        }
        None => url.to_string(),
    }
}

/// Where a deployment row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentSource {
    /// `model_list` of the config file; replaced on every load.
    Config,
    /// Added at run time (management API); survives config reloads.
    Api,
}

impl DeploymentSource {
    fn as_str(self) -> &'static str {
        match self {
            DeploymentSource::Config => "config",
            DeploymentSource::Api => "api",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "config" => Some(DeploymentSource::Config),
            "api" => Some(DeploymentSource::Api),
            _ => None,
        }
    }
}

/// One deployment as stored.
#[derive(Clone, PartialEq)]
pub struct DeploymentRecord {
    /// Primary key.
    pub id: String,
    /// Public model name.
    pub model_name: String,
    /// Provider prefix as configured.
    pub provider_name: String,
    /// Wire protocol family.
    pub kind: Wire,
    /// Model name the provider expects.
    pub upstream_model: String,
    /// Resolved base URL.
    pub api_base: String,
    /// Provider key, resolved and in clear (the filter needs it so to call the provider);
    /// the store seals it on the way in and opens it on the way out.
    pub api_key: Option<String>,
    /// `api_version`.
    pub api_version: Option<String>,
    /// Default `max_tokens`.
    pub default_max_tokens: Option<u32>,
    /// `model_info`, opaque.
    pub model_info: Option<serde_json::Value>,
    /// Prices given in `litellm_params` (those of `model_info` stay in it); the snapshot's
    /// pricing is resolved from these and the price tables (see [`crate::pricing`]).
    pub pricing: Prices,
    /// `litellm_params` `rpm`, `tpm`, `max_parallel_requests`.
    pub limits: RateLimitFields,
    /// The provider's typed settings; their credentials are sealed at rest like `api_key`.
    pub provider_settings: ProviderSettings,
    /// Request parameters sent when the client gives none.
    pub default_params: crate::config::DefaultParams,
    /// `litellm_params` `weight`, `order`, `tags`, `timeout`, `stream_timeout`,
    /// `num_retries`.
    pub routing: crate::config::DeploymentRouting,
    /// Config or API.
    pub source: DeploymentSource,
    /// Place in `model_list` for config rows.
    pub position: i64,
}

impl std::fmt::Debug for DeploymentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentRecord")
            .field("id", &self.id)
            .field("model_name", &self.model_name)
            .field("provider_name", &self.provider_name)
            .field("kind", &self.kind)
            .field("upstream_model", &self.upstream_model)
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_version", &self.api_version)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("model_info", &self.model_info)
            .field("pricing", &self.pricing)
            .field("limits", &self.limits)
            .field("provider_settings", &self.provider_settings)
            .field("default_params", &self.default_params)
            .field("routing", &self.routing)
            .field("source", &self.source)
            .field("position", &self.position)
            .finish()
    }
}

impl DeploymentRecord {
    /// The row of a config entry.
    pub fn from_config(deployment: &DeploymentConfig) -> Self {
        DeploymentRecord {
            id: deployment.id.clone(),
            model_name: deployment.model_name.clone(),
            provider_name: deployment.provider_name.clone(),
            kind: deployment.kind,
            upstream_model: deployment.upstream_model.clone(),
            api_base: deployment.api_base.clone(),
            api_key: deployment.api_key.clone(),
            api_version: deployment.api_version.clone(),
            default_max_tokens: deployment.default_max_tokens,
            model_info: deployment.model_info.clone(),
            pricing: deployment.pricing,
            limits: deployment.limits,
            provider_settings: deployment.provider_settings.clone(),
            default_params: deployment.default_params.clone(),
            routing: deployment.routing.clone(),
            source: DeploymentSource::Config,
            position: i64::try_from(deployment.index).unwrap_or(i64::MAX),
        }
    }
}

/// A stored deployment with its timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeployment {
    /// The row.
    pub record: DeploymentRecord,
    /// Unix milliseconds of the first insert (kept across config reloads for the same id).
    pub created_at_ms: i64,
    /// Unix milliseconds of the last write.
    pub updated_at_ms: i64,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool, so each query is compiled for both
/// drivers without generic trait bounds.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Handle to the database; cheap to clone (pools are shared).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Seals provider keys at rest; without one, no provider key can be stored or read.
    credentials: Option<CredentialKey>,
}

/// What [`Store::prepare_credentials`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialReport {
    /// Sealed provider keys that opened with the key.
    pub sealed: usize,
    /// Clear provider keys (from an earlier version) that were sealed now.
    pub migrated: usize,
}

/// Current time in unix milliseconds.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

const DEPLOYMENT_COLUMNS: &str = "id, model_name, provider_name, provider_kind, upstream_model, \
     api_base, api_key, api_version, default_max_tokens, model_info, source, position, \
     created_at, updated_at, pricing, rate_limits, provider_settings, provider_secret, \
     default_params, routing";

const INSERT_DEPLOYMENT: &str = "INSERT INTO deployments (id, model_name, provider_name, \
     provider_kind, upstream_model, api_base, api_key, api_version, default_max_tokens, \
     model_info, source, position, created_at, updated_at, pricing, rate_limits, \
     provider_settings, provider_secret, default_params, routing) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20)";

const UPSERT_SETTING: &str = "INSERT INTO settings (key, value) VALUES ($1, $2) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Bumps the one version counter inside transaction `$tx` and evaluates to the new version.
/// It must be the first statement of every writing transaction: the row lock it takes
/// (PostgreSQL) or the write lock (SQLite) orders all changes, so versions are committed in
/// increasing order on every replica and checks made later in the transaction cannot race.
macro_rules! bump_version {
    ($tx:ident, $now_ms:expr) => {{
        let version: i64 = sqlx::query(
            "UPDATE state_version SET version = CASE WHEN version + 1 > $1 THEN version + 1 \
             ELSE $1 END WHERE id = 1 RETURNING version",
        )
        .bind(to_i64($now_ms))
        .fetch_one(&mut *$tx)
        .await?
        .try_get("version")?;
        to_u64(version)
    }};
}

/// Records that the deployments changed at `version` (inside the change's transaction), so
/// a control plane reading what changed since an older version re-reads them and one
/// reading since a newer version does not (see `Store::state_changes_since`).
macro_rules! mark_deployments_changed {
    ($tx:ident, $version:expr) => {{
        sqlx::query("UPDATE state_version SET deployments_version = $1 WHERE id = 1")
            .bind(to_i64($version))
            .execute(&mut *$tx)
            .await?;
    }};
}

/// Announces a committed change to the other replicas (PostgreSQL delivers it on commit).
macro_rules! notify_change {
    ($store:expr, $tx:ident, $version:expr) => {{
        if $store.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind($version.to_string())
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

/// Binds a [`DeploymentRecord`] to [`INSERT_DEPLOYMENT`], its provider key sealed by `$store`.
macro_rules! bind_deployment {
    ($store:expr, $query:expr, $record:expr, $created:expr, $updated:expr) => {{
        let record: &DeploymentRecord = $record;
        let sealed_api_key = $store.seal_api_key(record)?;
        let (provider_settings, provider_secret) = record.provider_settings.to_columns();
        let sealed_provider_secret = $store.seal_provider_secret(&record.id, provider_secret)?;
        $query
            .bind(record.id.clone())
            .bind(record.model_name.clone())
            .bind(record.provider_name.clone())
            .bind(record.kind.name())
            .bind(record.upstream_model.clone())
            .bind(record.api_base.clone())
            .bind(sealed_api_key)
            .bind(record.api_version.clone())
            .bind(record.default_max_tokens.map(i64::from))
            .bind(record.model_info.as_ref().map(|info| info.to_string()))
            .bind(record.source.as_str())
            .bind(record.position)
            .bind($created)
            .bind($updated)
            // NULL for none, so rows stored before prices were read look the same.
            .bind($crate::store::pricing_json(&record.pricing))
            .bind(record.limits.to_json_text())
            .bind(provider_settings)
            .bind(sealed_provider_secret)
            // NULL for none, as rows stored before defaults were read.
            .bind(
                (!record.default_params.is_empty())
                    .then(|| serde_json::Value::Object(record.default_params.clone()).to_string()),
            )
            // NULL for none, as rows stored before routing fields were read.
            .bind($crate::store::routing_json(&record.routing))
    }};
}

/// Decodes a `deployments` row of either backend, its provider key opened by `$store`.
macro_rules! decode_deployment {
    ($store:expr, $row:expr) => {{
        let row = $row;
        let kind: String = row.try_get("provider_kind")?;
        let source: String = row.try_get("source")?;
        let model_info: Option<String> = row.try_get("model_info")?;
        let pricing: Option<String> = row.try_get("pricing")?;
        let rate_limits: Option<String> = row.try_get("rate_limits")?;
        let max_tokens: Option<i64> = row.try_get("default_max_tokens")?;
        let id: String = row.try_get("id")?;
        let api_key = $store.open_api_key(&id, row.try_get("api_key")?)?;
        let provider_settings: Option<String> = row.try_get("provider_settings")?;
        let default_params: Option<String> = row.try_get("default_params")?;
        let default_params: $crate::config::DefaultParams = match default_params {
            Some(text) => serde_json::from_str(&text).map_err(|error| {
                StoreError::Corrupt(format!("deployment {id}: default_params: {error}"))
            })?,
            None => $crate::config::DefaultParams::new(),
        };
        let routing: Option<String> = row.try_get("routing")?;
        let routing: $crate::config::DeploymentRouting = match routing {
            Some(text) => serde_json::from_str(&text).map_err(|error| {
                StoreError::Corrupt(format!("deployment {id}: routing: {error}"))
            })?,
            None => $crate::config::DeploymentRouting::default(),
        };
        let provider_secret = $store.open_provider_secret(&id, row.try_get("provider_secret")?)?;
        let provider_settings = $crate::provider_settings::ProviderSettings::from_columns(
            provider_settings.as_deref(),
            provider_secret.as_deref(),
        )
        .map_err(|error| StoreError::Corrupt(format!("deployment {id}: {error}")))?;
        let model_info = match model_info {
            Some(text) => Some(serde_json::from_str(&text).map_err(|error| {
                StoreError::Corrupt(format!("deployment {id}: model_info: {error}"))
            })?),
            None => None,
        };
        let pricing: $crate::pricing::Prices = match pricing {
            Some(text) => serde_json::from_str(&text).map_err(|error| {
                StoreError::Corrupt(format!("deployment {id}: pricing: {error}"))
            })?,
            None => $crate::pricing::Prices::default(),
        };
        let limits: RateLimitFields = match rate_limits {
            Some(text) => serde_json::from_str(&text).map_err(|error| {
                StoreError::Corrupt(format!("deployment {id}: rate_limits: {error}"))
            })?,
            None => RateLimitFields::default(),
        };
        StoredDeployment {
            record: DeploymentRecord {
                kind: Wire::from_name(&kind).ok_or_else(|| {
                    StoreError::Corrupt(format!("deployment {id}: provider_kind {kind:?}"))
                })?,
                source: DeploymentSource::parse(&source).ok_or_else(|| {
                    StoreError::Corrupt(format!("deployment {id}: source {source:?}"))
                })?,
                model_name: row.try_get("model_name")?,
                provider_name: row.try_get("provider_name")?,
                upstream_model: row.try_get("upstream_model")?,
                api_base: row.try_get("api_base")?,
                api_key,
                api_version: row.try_get("api_version")?,
                default_max_tokens: max_tokens.and_then(|value| u32::try_from(value).ok()),
                model_info,
                pricing,
                limits,
                provider_settings,
                default_params,
                routing,
                position: row.try_get("position")?,
                id,
            },
            created_at_ms: row.try_get("created_at")?,
            updated_at_ms: row.try_get("updated_at")?,
        }
    }};
}

/// The `pricing` column of a deployment's prices: `NULL` when it has none.
fn pricing_json(prices: &Prices) -> Option<String> {
    if prices.is_empty() {
        return None;
    }
    // Serializing plain optional numbers cannot fail; a failure would only drop the prices.
    serde_json::to_string(prices).ok()
}

/// The `routing` column of a deployment's routing fields: `NULL` when it has none.
fn routing_json(routing: &crate::config::DeploymentRouting) -> Option<String> {
    if routing.is_empty() {
        return None;
    }
    // Serializing plain optional numbers and strings cannot fail; a failure would only drop
    // the fields.
    serde_json::to_string(routing).ok()
}

/// The stored form of the resolved `router_settings`: `None` when they are LiteLLM's
/// defaults, so a database without routing settings reads the same.
fn router_json(config: &Config) -> Option<String> {
    if config.router == crate::config::RouterConfig::default() {
        return None;
    }
    serde_json::to_string(&config.router).ok()
}

/// The stored form of `general_settings.cost_per_token`: `None` when empty.
fn cost_per_token_json(config: &Config) -> Option<String> {
    let prices = &config.general.cost_per_token;
    (!prices.is_empty()).then(|| {
        serde_json::Value::from_iter(
            prices
                .iter()
                .map(|(model, price)| (model.clone(), serde_json::Value::from(*price))),
        )
        .to_string()
    })
}

/// A usage record's primary key: its own id, or for a record without one a hash of its
/// content, so that resending the same record still counts once.
fn usage_id(record: &proto::UsageRecord) -> String {
    if !record.id.is_empty() {
        return record.id.clone();
    }
    let mut hasher = Sha256::new();
    hasher.update(prost::Message::encode_to_vec(record));
    format!("anon-{}", hex::encode(hasher.finalize()))
}

// `macro_use`: replace_config starts the gateway's budget window with `set_budget_window!`.
#[macro_use]
mod management;
mod customers;
mod windows;

pub use customers::CustomerRow;

pub use windows::{BudgetAlertKind, SpendRow};
mod quota;
mod rollup;
mod spend;
mod synthetic;

pub use quota::{quota_grant, QuotaCounter, QuotaKind, QuotaLease, QuotaWant, QUOTA_VALUE_CAP};

impl Store {
    /// Opens (creating if the URL allows) the database at `url` and applies migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            let options =
                SqliteConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
                    target: redact_url(url),
                    source,
                })?;
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            // `sqlite://tollgate.db` should just work, as it does for LiteLLM users' Postgres
            // URLs; an explicit `mode=` (ro, rw) is respected.
            let options = if url.contains("mode=") {
                options
            } else {
                options.create_if_missing(true)
            };
            Self::open_sqlite(options, in_memory, url).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|source| StoreError::Connect {
                    target: redact_url(url),
                    source,
                })?;
            POSTGRES_MIGRATOR.run(&pool).await?;
            Ok(Store {
                pool: Pool::Postgres(pool),
                credentials: None,
            })
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// Opens (creating it if missing) the SQLite file at `path`; no URL escaping to get wrong.
    pub async fn connect_sqlite_file(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::open_sqlite(options, false, &path.display().to_string()).await
    }

    async fn open_sqlite(
        options: SqliteConnectOptions,
        in_memory: bool,
        target: &str,
    ) -> Result<Store, StoreError> {
        // The filter's usage batches and config loads may write at the same time; wait for
        // the lock instead of failing with SQLITE_BUSY.
        let mut options = options.busy_timeout(Duration::from_secs(10));
        let mut pool_options = SqlitePoolOptions::new();
        if in_memory {
            // Every connection of an in-memory database is a new, empty database: keep one
            // connection open for the pool's whole life.
            pool_options = pool_options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        } else {
            options = options.journal_mode(SqliteJournalMode::Wal);
            pool_options = pool_options.max_connections(4);
        }
        let pool =
            pool_options
                .connect_with(options)
                .await
                .map_err(|source| StoreError::Connect {
                    target: redact_url(target),
                    source,
                })?;
        SQLITE_MIGRATOR.run(&pool).await?;
        Ok(Store {
            pool: Pool::Sqlite(pool),
            credentials: None,
        })
    }

    /// This store with `key` sealing and opening provider keys (`None`: no provider key can
    /// be stored, and sealed ones cannot be read).
    pub fn with_credential_key(mut self, key: Option<CredentialKey>) -> Store {
        self.credentials = key;
        self
    }

    /// The key provider keys are sealed with, if any.
    pub fn credential_key(&self) -> Option<&CredentialKey> {
        self.credentials.as_ref()
    }

    /// The provider key of `record` as stored: sealed, or an error when there is a key to
    /// store and no credential key.
    fn seal_api_key(&self, record: &DeploymentRecord) -> Result<Option<String>, StoreError> {
        self.seal_secret(
            &record.id,
            &api_key_context(&record.id),
            record.api_key.as_deref(),
        )
    }

    /// The stored form of a deployment's provider credentials (see [`Self::seal_api_key`]).
    fn seal_provider_secret(
        &self,
        id: &str,
        secret: Option<String>,
    ) -> Result<Option<String>, StoreError> {
        self.seal_secret(id, &provider_secret_context(id), secret.as_deref())
    }

    fn seal_secret(
        &self,
        id: &str,
        context: &str,
        secret: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let Some(secret) = secret else {
            return Ok(None);
        };
        let Some(key) = &self.credentials else {
            return Err(CredentialError::NoKeyToSeal {
                deployment: id.to_string(),
            }
            .into());
        };
        key.seal(context, secret).map(Some).map_err(|source| {
            CredentialError::Seal {
                deployment: id.to_string(),
                source,
            }
            .into()
        })
    }

    /// The clear provider credentials of deployment `id` from their stored form; unlike a
    /// provider key, they are never stored in clear.
    fn open_provider_secret(
        &self,
        id: &str,
        stored: Option<String>,
    ) -> Result<Option<String>, StoreError> {
        let Some(stored) = stored else {
            return Ok(None);
        };
        if !secrets::is_sealed(&stored) {
            return Err(StoreError::Corrupt(format!(
                "deployment {id}: provider_secret is not encrypted"
            )));
        }
        self.open_sealed(id, &provider_secret_context(id), &stored)
            .map(Some)
    }

    fn open_sealed(&self, id: &str, context: &str, stored: &str) -> Result<String, StoreError> {
        let Some(key) = &self.credentials else {
            return Err(CredentialError::NoKeyToOpen {
                deployment: id.to_string(),
            }
            .into());
        };
        key.open(context, stored).map_err(|source| {
            CredentialError::Unreadable {
                deployment: id.to_string(),
                key_source: key.source().clone(),
                source,
            }
            .into()
        })
    }

    /// The clear provider key of deployment `id` from its stored form. A sealed key that does
    /// not open is an error, never passed on as it is. A clear key (an earlier version's row,
    /// sealed by [`Self::prepare_credentials`] at the next start) is returned as it is.
    fn open_api_key(&self, id: &str, stored: Option<String>) -> Result<Option<String>, StoreError> {
        let Some(stored) = stored else {
            return Ok(None);
        };
        if !secrets::is_sealed(&stored) {
            return Ok(Some(stored));
        }
        self.open_sealed(id, &api_key_context(id), &stored)
            .map(Some)
    }

    /// Checks at startup that every stored provider key can be read, and seals the clear ones
    /// earlier versions wrote. With a key: the database's key check and every sealed key must
    /// open (else an error naming the key's source or the deployment), clear keys are sealed,
    /// and the key check is written if missing. Without one: any stored provider key is an
    /// error saying what to set. Nothing is written when something does not open.
    pub async fn prepare_credentials(&self) -> Result<CredentialReport, StoreError> {
        let mut report = CredentialReport::default();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // First statement: orders this with every other writer (see bump_version).
            let version = bump_version!(tx, now_unix_ms());
            let check: Option<String> = sqlx::query("SELECT value FROM settings WHERE key = $1")
                .bind(SETTING_CREDENTIAL_KEY_CHECK)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get("value"))
                .transpose()?;
            let rows = sqlx::query(
                "SELECT id, api_key FROM deployments WHERE api_key IS NOT NULL ORDER BY id",
            )
            .fetch_all(&mut *tx)
            .await?;
            let mut clear: Vec<(String, String)> = Vec::new();
            for row in &rows {
                let id: String = row.try_get("id")?;
                let stored: String = row.try_get("api_key")?;
                match &self.credentials {
                    None if secrets::is_sealed(&stored) => {
                        return Err(CredentialError::NoKeyToOpen { deployment: id }.into());
                    }
                    None => return Err(CredentialError::ClearWithoutKey { deployment: id }.into()),
                    Some(_) if secrets::is_sealed(&stored) => {
                        self.open_api_key(&id, Some(stored))?;
                        report.sealed += 1;
                    }
                    Some(_) => clear.push((id, stored)),
                }
            }
            let secrets = sqlx::query(
                "SELECT id, provider_secret FROM deployments WHERE provider_secret IS NOT NULL \
                 ORDER BY id",
            )
            .fetch_all(&mut *tx)
            .await?;
            for row in &secrets {
                let id: String = row.try_get("id")?;
                self.open_provider_secret(&id, row.try_get("provider_secret")?)?;
                report.sealed += 1;
            }
            let Some(key) = &self.credentials else {
                tx.rollback().await?;
                return Ok(report);
            };
            match check {
                Some(check) => {
                    key.open(CREDENTIAL_KEY_CHECK_CONTEXT, &check).map_err(|source| {
                        CredentialError::WrongKey { key_source: key.source().clone(), source }
                    })?;
                }
                None => {
                    let check = key
                        .seal(CREDENTIAL_KEY_CHECK_CONTEXT, CREDENTIAL_KEY_CHECK_TEXT)
                        .map_err(|source| CredentialError::Seal {
                            deployment: "(key check)".into(),
                            source,
                        })?;
                    sqlx::query(UPSERT_SETTING)
                        .bind(SETTING_CREDENTIAL_KEY_CHECK)
                        .bind(check)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            for (id, api_key) in clear {
                let sealed = key.seal(&api_key_context(&id), &api_key).map_err(|source| {
                    CredentialError::Seal { deployment: id.clone(), source }
                })?;
                sqlx::query("UPDATE deployments SET api_key = $1 WHERE id = $2")
                    .bind(sealed)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                report.migrated += 1;
            }
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(report)
        })
    }

    /// Which engine this store uses.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    /// Stores a loaded config: its deployments replace the previous config deployments and
    /// its `general_settings` replace the previous config settings, in one transaction so a
    /// filter never sees half of a config. API deployments are left alone.
    pub async fn replace_config(&self, config: &Config) -> Result<(), StoreError> {
        let records: Vec<DeploymentRecord> = config
            .deployments
            .iter()
            .map(DeploymentRecord::from_config)
            .collect();
        let settings: Vec<(&str, Option<String>)> = vec![
            (
                SETTING_MASTER_KEY_SHA256,
                config.general.master_key.as_deref().map(sha256_hex),
            ),
            (
                SETTING_MAX_REQUEST_BODY_BYTES,
                config
                    .general
                    .max_request_body_bytes()
                    .map(|bytes| bytes.to_string()),
            ),
            (
                SETTING_MAX_RESPONSE_BODY_BYTES,
                config
                    .general
                    .max_response_body_bytes()
                    .map(|bytes| bytes.to_string()),
            ),
            (SETTING_COST_PER_TOKEN, cost_per_token_json(config)),
            (
                SETTING_MAX_BUDGET,
                config.general.max_budget.map(|dollars| dollars.to_string()),
            ),
            (
                SETTING_SOFT_BUDGET,
                config
                    .general
                    .soft_budget
                    .map(|dollars| dollars.to_string()),
            ),
            (
                SETTING_BUDGET_DURATION,
                config.general.budget_duration.clone(),
            ),
            (
                SETTING_MAX_END_USER_BUDGET,
                config
                    .litellm
                    .max_end_user_budget
                    .map(|dollars| dollars.to_string()),
            ),
            (
                SETTING_RPM_LIMIT,
                config.general.rpm_limit.map(|limit| limit.to_string()),
            ),
            (
                SETTING_TPM_LIMIT,
                config.general.tpm_limit.map(|limit| limit.to_string()),
            ),
            (
                SETTING_GLOBAL_MAX_PARALLEL_REQUESTS,
                config
                    .general
                    .global_max_parallel_requests
                    .map(|limit| limit.to_string()),
            ),
            (
                SETTING_MAX_PARALLEL_REQUESTS,
                config
                    .general
                    .max_parallel_requests
                    .map(|limit| limit.to_string()),
            ),
            (
                SETTING_USER_RATE_LIMIT,
                (!config.general.user_rate_limit.is_empty())
                    .then(|| serde_json::to_string(&config.general.user_rate_limit).ok())
                    .flatten(),
            ),
            (SETTING_ROUTER, router_json(config)),
            (
                SETTING_API_ENV_PREFIXES,
                (!config.general.api_env_prefixes.is_empty()).then(|| {
                    serde_json::Value::from(config.general.api_env_prefixes.clone()).to_string()
                }),
            ),
        ];
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // First statement: takes the write lock that orders every change (see bump_version).
            let version = bump_version!(tx, now_unix_ms());
            mark_deployments_changed!(tx, version);
            // Keep created_at of ids that survive the reload.
            let rows = sqlx::query("SELECT id, created_at FROM deployments WHERE source = 'config'")
                .fetch_all(&mut *tx)
                .await?;
            let mut created: BTreeMap<String, i64> = BTreeMap::new();
            for row in rows {
                created.insert(row.try_get("id")?, row.try_get("created_at")?);
            }
            sqlx::query("DELETE FROM deployments WHERE source = 'config'")
                .execute(&mut *tx)
                .await?;
            for record in &records {
                let created_at = created.get(&record.id).copied().unwrap_or(now);
                let result = bind_deployment!(self, sqlx::query(INSERT_DEPLOYMENT), record, created_at, now)
                    .execute(&mut *tx)
                    .await;
                if let Err(sqlx::Error::Database(error)) = &result {
                    if error.is_unique_violation() {
                        return Err(StoreError::IdTaken(record.id.clone()));
                    }
                }
                result?;
            }
            // The gateway's window: started (or kept, when one of the same length runs) with
            // the settings that define it; without a duration its spend never resets.
            let global_window = BudgetFields {
                max_budget: config.general.max_budget,
                soft_budget: config.general.soft_budget,
                budget_duration: config.general.budget_duration.clone(),
                budget_duration_ms: config.general.budget_duration_ms,
            };
            let first_reset = config.general.first_budget_reset(now).unwrap_or(0);
            set_budget_window!(tx, "global", "", &global_window, now, first_reset = first_reset);
            // Every key without a max_parallel_requests of its own carries the default in its
            // snapshot entry: when the default changes, every key's entry changes, and the
            // changes since a version must name them all.
            let stored_default: Option<String> =
                sqlx::query("SELECT value FROM settings WHERE key = $1")
                    .bind(SETTING_MAX_PARALLEL_REQUESTS)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| row.try_get("value"))
                    .transpose()?;
            let new_default = config.general.max_parallel_requests.map(|limit| limit.to_string());
            if stored_default != new_default {
                sqlx::query(
                    "UPDATE virtual_keys SET changed_version = $1 WHERE max_parallel_requests IS NULL",
                )
                .bind(to_i64(version))
                .execute(&mut *tx)
                .await?;
            }
            for (key, value) in &settings {
                match value {
                    Some(value) => {
                        sqlx::query(UPSERT_SETTING).bind(*key).bind(value.clone()).execute(&mut *tx).await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM settings WHERE key = $1").bind(*key).execute(&mut *tx).await?;
                    }
                }
            }
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Inserts or replaces one deployment as given (management API; tests).
    pub async fn upsert_deployment(&self, record: &DeploymentRecord) -> Result<(), StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            mark_deployments_changed!(tx, version);
            let created_at: Option<i64> = sqlx::query("SELECT created_at FROM deployments WHERE id = $1")
                .bind(record.id.clone())
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get("created_at"))
                .transpose()?;
            sqlx::query("DELETE FROM deployments WHERE id = $1")
                .bind(record.id.clone())
                .execute(&mut *tx)
                .await?;
            bind_deployment!(self, sqlx::query(INSERT_DEPLOYMENT), record, created_at.unwrap_or(now), now)
                .execute(&mut *tx)
                .await?;
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Deletes one deployment; true if it existed.
    pub async fn delete_deployment(&self, id: &str) -> Result<bool, StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            mark_deployments_changed!(tx, version);
            let affected = sqlx::query("DELETE FROM deployments WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(affected > 0)
        })
    }

    /// Every deployment: config rows in file order, then API rows by creation time.
    pub async fn deployments(&self) -> Result<Vec<StoredDeployment>, StoreError> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments \
             ORDER BY CASE source WHEN 'config' THEN 0 ELSE 1 END, position, created_at, id"
        );
        with_pool!(self, pool => {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            let mut deployments = Vec::with_capacity(rows.len());
            for row in &rows {
                deployments.push(decode_deployment!(self, row));
            }
            Ok(deployments)
        })
    }

    /// Every setting.
    pub async fn settings(&self) -> Result<BTreeMap<String, String>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query("SELECT key, value FROM settings").fetch_all(pool).await?;
            let mut settings = BTreeMap::new();
            for row in &rows {
                settings.insert(row.try_get("key")?, row.try_get("value")?);
            }
            Ok(settings)
        })
    }

    /// Sets one setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(UPSERT_SETTING).bind(key).bind(value).execute(pool).await?;
            Ok(())
        })
    }

    /// Hands out the next snapshot version: above every version handed out before (also by
    /// an earlier run, or another replica, on this database) and at least `now_ms`, so
    /// filters that kept an old snapshot through a restart always see the new one as newer.
    pub async fn next_snapshot_version(&self, now_ms: u64) -> Result<u64, StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_ms);
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(version)
        })
    }

    /// The version of the newest committed change.
    pub async fn stored_version(&self) -> Result<u64, StoreError> {
        with_pool!(self, pool => {
            let version: i64 = sqlx::query("SELECT version FROM state_version WHERE id = 1")
                .fetch_one(pool)
                .await?
                .try_get("version")?;
            Ok(to_u64(version))
        })
    }
}

/// SHA-256 hex, the form in which keys are compared and stored.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("sqlite://tollgate.db?mode=rwc"),
            "sqlite://tollgate.db?mode=rwc"
        );
    }

    #[test]
    fn anonymous_usage_ids_are_content_hashes() {
        let record = proto::UsageRecord {
            model_name: "m".into(),
            ..Default::default()
        };
        assert_eq!(usage_id(&record), usage_id(&record.clone()));
        let other = proto::UsageRecord {
            model_name: "n".into(),
            ..Default::default()
        };
        assert_ne!(usage_id(&record), usage_id(&other));
        let named = proto::UsageRecord {
            id: "x".into(),
            ..Default::default()
        };
        assert_eq!(usage_id(&named), "x");
    }
}
