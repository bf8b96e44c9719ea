//! LiteLLM-format `config.yaml` loader.
//!
//! Users bring their LiteLLM file unchanged, so the loader never rejects a key only because
//! Tollgate does not implement it yet: such keys become warnings that name the key's path.
//! Invalid values of the keys Tollgate does use are errors, also with the field's path, and
//! every problem of a file is reported at once rather than one per run.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};
use sha2::{Digest, Sha256};

use tollgate_catalogue::Settings;

use crate::limits::{RateLimitFields, MAX_LIMIT};
use crate::pricing::{check_price, Prices, PRICE_FIELDS};
use crate::proto;
use crate::provider_settings::{AwsCredentials, BedrockSettings, ProviderSettings, VertexSettings};

mod router;

pub use router::{
    DeploymentRouting, ErrorClassCounts, GroupAlias, GroupFallbacks, RouterConfig, RoutingStrategy,
    DEFAULT_ALLOWED_FAILS, DEFAULT_COOLDOWN_MS, DEFAULT_NUM_RETRIES,
    DEFAULT_STREAM_IDLE_TIMEOUT_MS,
};

/// Request parameters a deployment's `litellm_params` may give defaults for, sent by the
/// filter when the client gives none (the filter's `defaults::Param` knows the same names).
/// `max_tokens` is one too, read with the deployment's other fields (it is also the
/// `max_tokens` of providers that require one).
const DEFAULT_PARAMS: &[(&str, ParamKind)] = &[
    (
        "temperature",
        ParamKind::Number {
            min: 0.0,
            max: 2.0,
            integer: false,
        },
    ),
    (
        "top_p",
        ParamKind::Number {
            min: 0.0,
            max: 1.0,
            integer: false,
        },
    ),
    (
        "max_completion_tokens",
        ParamKind::Number {
            min: 1.0,
            max: 4_294_967_295.0,
            integer: true,
        },
    ),
    ("stop", ParamKind::Stop),
    (
        "seed",
        ParamKind::Number {
            min: -9_007_199_254_740_991.0,
            max: 9_007_199_254_740_991.0,
            integer: true,
        },
    ),
    (
        "frequency_penalty",
        ParamKind::Number {
            min: -2.0,
            max: 2.0,
            integer: false,
        },
    ),
    (
        "presence_penalty",
        ParamKind::Number {
            min: -2.0,
            max: 2.0,
            integer: false,
        },
    ),
    ("response_format", ParamKind::ResponseFormat),
    (
        "reasoning_effort",
        ParamKind::OneOf(&["none", "minimal", "low", "medium", "high"]),
    ),
];

/// How a default request parameter is checked.
enum ParamKind {
    /// A number within bounds (an integer if `integer`).
    Number { min: f64, max: f64, integer: bool },
    /// A string or a list of up to 4 (OpenAI's limit).
    Stop,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// An OpenAI `response_format` object.
    ResponseFormat,
}

/// Default request parameters by name, as JSON values.
pub type DefaultParams = serde_json::Map<String, serde_json::Value>;

/// `vertex_location` when a deployment gives none (LiteLLM's default).
pub const DEFAULT_VERTEX_LOCATION: &str = "us-central1";

/// The `litellm_params` a provider's typed settings are read from.
fn settings_params(settings: Settings) -> &'static [&'static str] {
    match settings {
        Settings::None | Settings::Azure => &[],
        Settings::Bedrock => &[
            "aws_bedrock_runtime_endpoint",
            "aws_region_name",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
        ],
        Settings::Vertex => &["vertex_project", "vertex_location", "vertex_credentials"],
    }
}

/// Whether `name` has the shape of an AWS region or a Google Cloud location ("us-east-1",
/// "europe-west4"): it becomes part of a host name and of a signature's scope.
fn is_aws_region(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A value for an error message: short ones quoted, long ones cut (they may be pasted
/// secrets in the wrong field).
fn shown_value(value: &str) -> String {
    if value.chars().count() <= 40 {
        format!("{value:?}")
    } else {
        "(a long value)".into()
    }
}

/// Checks a service account key's JSON: the fields the token exchange signs with.
fn check_service_account(text: &str) -> Result<(), String> {
    crate::google_auth::ServiceAccount::parse(text)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// Envoy's buffer limits are 32-bit, so a larger request limit could never be honoured.
const MAX_REQUEST_SIZE_MB: f64 = 4095.0;

/// The prefix LiteLLM uses to read a value from the environment.
pub const ENV_PREFIX: &str = "os.environ/";

/// `litellm_params` fields that hold credentials: the only fields whose `os.environ/NAME`
/// the management API resolves (and then only for allowed names, see [`EnvAllowlist`]).
/// Only `api_key` is used today; the others are LiteLLM's cloud credentials, listed so that
/// they follow the same rule when their providers arrive.
pub const CREDENTIAL_PARAMS: &[&str] = &[
    "api_key",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "vertex_credentials",
    "client_secret",
    "azure_ad_token",
];

pub use tollgate_catalogue::Wire;

/// The protocol enum sent to filters for a wire.
pub fn wire_to_proto(wire: Wire) -> proto::ProviderKind {
    match wire {
        Wire::OpenAi => proto::ProviderKind::Openai,
        Wire::Anthropic => proto::ProviderKind::Anthropic,
        Wire::Gemini => proto::ProviderKind::Gemini,
        Wire::Bedrock => proto::ProviderKind::Bedrock,
        Wire::Cohere => proto::ProviderKind::Cohere,
        Wire::Ollama => proto::ProviderKind::Ollama,
    }
}

/// Top-level keys of a LiteLLM config that Tollgate does not implement yet.
#[rustfmt::skip]
const KNOWN_UNSUPPORTED_TOP_LEVEL: &[&str] = &[
    "environment_variables", "callback_settings",
    "credential_list", "guardrails", "include", "files_settings", "finetune_settings",
    "assistant_settings", "mcp_servers", "mcp_aliases", "search_tools", "vector_store_registry",
    "prompts", "pass_through_endpoints",
];

/// `litellm_params` keys LiteLLM knows and Tollgate does not implement yet.
#[rustfmt::skip]
const KNOWN_UNSUPPORTED_LITELLM_PARAMS: &[&str] = &[
    "organization", "region_name", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "aws_region_name", "aws_role_name",
    "aws_session_name", "aws_profile_name", "aws_bedrock_runtime_endpoint",
    "aws_web_identity_token", "vertex_project", "vertex_location", "vertex_credentials",
    "input_cost_per_second",
    "output_cost_per_second", "input_cost_per_pixel", "output_cost_per_pixel",
    "custom_llm_provider", "extra_headers", "headers",
    "drop_params", "additional_drop_params", "merge_reasoning_content_in_choices",
    "mock_response", "use_in_pass_through", "configurable_clientside_auth_params",
    "litellm_credential_name", "api_type", "azure_ad_token", "azure_ad_token_provider", "tenant_id",
    "client_id", "client_secret", "base_model", "cache_control_injection_points",
    "use_litellm_proxy", "max_budget", "budget_duration", "supports_system_message",
    "thinking", "stream", "model_info", "metadata",
    "watsonx_region_name", "project_id", "space_id", "auto_router_config_path",
    "auto_router_config", "auto_router_default_model", "auto_router_embedding_model", "guardrails",
    "mock_timeout", "health_check_timeout", "litellm_trace_id",
];

/// `general_settings` keys LiteLLM knows and Tollgate does not implement yet.
#[rustfmt::skip]
const KNOWN_UNSUPPORTED_GENERAL_SETTINGS: &[&str] = &[
    "database_connection_pool_limit", "database_connection_timeout",
    "allow_requests_on_db_unavailable", "disable_spend_logs", "disable_master_key_return",
    "disable_retry_on_max_parallel_request_limit_error", "disable_reset_budget",
    "disable_adding_master_key_hash_to_db", "enable_jwt_auth", "litellm_jwtauth",
    "enforce_user_param", "allowed_routes", "admin_only_routes", "public_routes",
    "key_management_system", "key_management_settings", "use_azure_key_vault", "use_google_kms",
    "custom_auth", "custom_auth_settings", "custom_key_generate", "custom_sso", "allowed_ips",
    "alerting_threshold", "alerting_args", "alert_types", "alert_to_webhook_url",
    "spend_report_frequency", "proxy_batch_write_at", "proxy_budget_rescheduler_min_time",
    "proxy_budget_rescheduler_max_time", "store_model_in_db", "store_prompts_in_spend_logs",
    "ui_access_mode", "health_check_details",
    "infer_model_from_keys", "user_header_name", "pass_through_endpoints", "embedding_model", "default_team_disabled",
    "forward_openai_org_id", "forward_client_headers_to_llm_api", "supported_db_objects",
    "service_account_settings", "enable_oauth2_auth", "use_x_forwarded_for",
    "use_redis_transaction_buffer", "disable_prisma_schema_update", "cache", "cache_params", "otel",
    "master_key_rotation", "enable_public_model_hub", "mcp_client_side_auth_header_name",
];

/// One warning or error, located by the path of the field it is about
/// (`model_list[1].litellm_params.model`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Field path; `<root>` for the document itself.
    pub path: String,
    /// What is wrong or ignored.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// `general_settings`, resolved.
#[derive(Clone, Default, PartialEq)]
pub struct GeneralSettings {
    /// Name prefixes of the environment variables the management API may read for credential
    /// fields (`os.environ/NAME`); empty allows none. Tollgate's own key
    /// (`api_env_prefixes`), also set by `--api-env-prefix` / `TOLLGATE_API_ENV_PREFIX`.
    pub api_env_prefixes: Vec<String>,
    /// Key clients must present; `None` accepts every request.
    pub master_key: Option<String>,
    /// Where the control plane keeps its state (lowest priority source, after the flag and
    /// `DATABASE_URL`).
    pub database_url: Option<String>,
    /// Largest request body, in MiB (LiteLLM counts 1024 * 1024 bytes per MB).
    pub max_request_size_mb: Option<f64>,
    /// Largest buffered response body, in MiB.
    pub max_response_size_mb: Option<f64>,
    /// `cost_per_token`: public model name -> US dollars per token, one price for input and
    /// output (see [`crate::pricing`] for where it stands among the prices).
    pub cost_per_token: BTreeMap<String, f64>,
    /// A price table in LiteLLM's `model_prices_and_context_window.json` format over the
    /// built-in one. Tollgate's own key (`model_prices_file`), also set by
    /// `--model-prices-file` / `TOLLGATE_MODEL_PRICES_FILE`; a relative path in the file is
    /// relative to the config file's directory.
    pub model_prices_file: Option<PathBuf>,
    /// How long usage records are kept (`maximum_spend_logs_retention_period`), in ms;
    /// `None` keeps them forever.
    pub spend_logs_retention_ms: Option<u64>,
    /// How often old usage records are deleted (`maximum_spend_logs_retention_interval`), in
    /// ms; LiteLLM's default is daily.
    pub spend_logs_retention_interval_ms: u64,
    /// `max_budget`: US dollars per window for every request together.
    pub max_budget: Option<f64>,
    /// `soft_budget`: US dollars per window past which the gateway's spend alerts.
    pub soft_budget: Option<f64>,
    /// `budget_duration` as written ("30d"); `None`: the gateway's spend never resets.
    pub budget_duration: Option<String>,
    /// [`Self::budget_duration`] in milliseconds.
    pub budget_duration_ms: Option<i64>,
    /// `budget_reset_at` ("00:00"): the UTC time of day at which the gateway's window ends,
    /// in milliseconds after midnight (see [`Self::first_budget_reset`]).
    pub budget_reset_at_ms: Option<i64>,
    /// `alerting` lists `webhook`: budget alerts are POSTed to `WEBHOOK_URL` (LiteLLM's).
    pub alerting_webhook: bool,
    /// `rpm_limit`: requests per minute for every request together (scope GLOBAL).
    pub rpm_limit: Option<u64>,
    /// `tpm_limit`: tokens per minute for every request together (scope GLOBAL).
    pub tpm_limit: Option<u64>,
    /// `background_health_checks` with `health_check_interval`: how often the control plane
    /// probes every deployment, in ms; `None`: it does not.
    pub health_check_interval_ms: Option<u64>,
    /// `global_max_parallel_requests`: requests in flight through the whole gateway.
    pub global_max_parallel_requests: Option<u64>,
    /// `max_parallel_requests`: the limit of every key that sets none of its own.
    pub max_parallel_requests: Option<u64>,
    /// `user_rate_limit`: user id -> `{rpm, tpm, max_parallel_requests}`; a user's own
    /// (API-set) value wins, field by field.
    pub user_rate_limit: BTreeMap<String, RateLimitFields>,
}

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

impl GeneralSettings {
    /// When a gateway budget window started at `now_ms` (unix ms) ends: `budget_duration`
    /// later, moved on to the next `budget_reset_at` time of day when one is set (so a "1d"
    /// window with "00:00" ends at a UTC midnight, whenever the config was loaded). As
    /// LiteLLM does with its reset time of day, a window shorter than a day ignores it.
    /// `None` without a `budget_duration`.
    pub fn first_budget_reset(&self, now_ms: i64) -> Option<i64> {
        let duration_ms = self.budget_duration_ms?;
        let end = now_ms.saturating_add(duration_ms);
        let Some(time_of_day) = self.budget_reset_at_ms.filter(|_| duration_ms >= DAY_MS) else {
            return Some(end);
        };
        let at = end - end.rem_euclid(DAY_MS) + time_of_day;
        Some(if at < end {
            at.saturating_add(DAY_MS)
        } else {
            at
        })
    }
}

/// `litellm_settings`, resolved (the keys Tollgate implements).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LitellmSettings {
    /// `max_end_user_budget`: US dollars per window for each end user (the request's
    /// `user`) without a budget of its own.
    pub max_end_user_budget: Option<f64>,
    /// The gateway's `max_budget` written here (LiteLLM's place for it); moved into
    /// [`GeneralSettings::max_budget`] on load.
    pub max_budget: Option<f64>,
    /// Likewise `budget_duration`, as written and in milliseconds.
    pub budget_duration: Option<(String, i64)>,
}

/// LiteLLM's default `maximum_spend_logs_retention_interval`: once a day.
pub const DEFAULT_RETENTION_INTERVAL_MS: u64 = 86_400_000;

impl fmt::Debug for GeneralSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneralSettings")
            .field(
                "master_key",
                &self.master_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("max_request_size_mb", &self.max_request_size_mb)
            .field("max_response_size_mb", &self.max_response_size_mb)
            .field("api_env_prefixes", &self.api_env_prefixes)
            .field("cost_per_token", &self.cost_per_token)
            .field("model_prices_file", &self.model_prices_file)
            .field("spend_logs_retention_ms", &self.spend_logs_retention_ms)
            .field(
                "spend_logs_retention_interval_ms",
                &self.spend_logs_retention_interval_ms,
            )
            .field("max_budget", &self.max_budget)
            .field("soft_budget", &self.soft_budget)
            .field("budget_duration", &self.budget_duration)
            .field("budget_reset_at_ms", &self.budget_reset_at_ms)
            .field("alerting_webhook", &self.alerting_webhook)
            .field("rpm_limit", &self.rpm_limit)
            .field("tpm_limit", &self.tpm_limit)
            .field(
                "global_max_parallel_requests",
                &self.global_max_parallel_requests,
            )
            .field("max_parallel_requests", &self.max_parallel_requests)
            .field("user_rate_limit", &self.user_rate_limit)
            .field("health_check_interval_ms", &self.health_check_interval_ms)
            .finish()
    }
}

/// LiteLLM's `health_check_interval` default: 300 seconds.
pub const DEFAULT_HEALTH_CHECK_INTERVAL_MS: u64 = 300_000;

fn mb_to_bytes(mb: f64) -> u64 {
    // Validation keeps mb positive and below 4 GiB, so the cast cannot wrap.
    (mb * 1024.0 * 1024.0).round() as u64
}

impl GeneralSettings {
    /// `max_request_size_mb` in bytes.
    pub fn max_request_body_bytes(&self) -> Option<u64> {
        self.max_request_size_mb.map(mb_to_bytes)
    }

    /// `max_response_size_mb` in bytes.
    pub fn max_response_body_bytes(&self) -> Option<u64> {
        self.max_response_size_mb.map(mb_to_bytes)
    }
}

/// One `model_list` entry Tollgate serves, with defaults applied and environment resolved.
#[derive(Clone, PartialEq)]
pub struct DeploymentConfig {
    /// `model_info.id`, else a stable hash of the entry (see [`config_deployment_id`]).
    pub id: String,
    /// Position in `model_list` (entries of skipped providers keep their numbers).
    pub index: usize,
    /// Public model name clients ask for.
    pub model_name: String,
    /// Provider prefix as written ("hosted_vllm").
    pub provider_name: String,
    /// Wire protocol family.
    pub kind: Wire,
    /// Model name the provider expects (everything after the first `/`).
    pub upstream_model: String,
    /// Explicit or default base URL, without a trailing slash.
    pub api_base: String,
    /// Provider key; `None` sends no key.
    pub api_key: Option<String>,
    /// `api_version`, passed through to providers that use one.
    pub api_version: Option<String>,
    /// `max_tokens` for providers that require one (Anthropic gets 4096 by default).
    pub default_max_tokens: Option<u32>,
    /// `model_info`, kept as given (its prices and `base_model` were checked).
    pub model_info: Option<serde_json::Value>,
    /// Prices given in `litellm_params`.
    pub pricing: Prices,
    /// `litellm_params` `rpm`, `tpm`, `max_parallel_requests` (scope DEPLOYMENT).
    pub limits: RateLimitFields,
    /// The provider's typed settings (Bedrock's region and credentials, ...).
    pub provider_settings: ProviderSettings,
    /// Request parameters sent when the client gives none (`temperature`, `max_tokens`, ...).
    pub default_params: DefaultParams,
    /// `weight`, `order`, `tags`, `timeout`, `stream_timeout`, `num_retries`.
    pub routing: DeploymentRouting,
}

impl fmt::Debug for DeploymentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeploymentConfig")
            .field("id", &self.id)
            .field("index", &self.index)
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
            .finish()
    }
}

/// A valid configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// `general_settings`.
    pub general: GeneralSettings,
    /// Served deployments, in file order; several may share a `model_name`.
    pub deployments: Vec<DeploymentConfig>,
    /// `litellm_settings`.
    pub litellm: LitellmSettings,
    /// `router_settings`, with the routing keys of `litellm_settings` and the top-level
    /// `model_group_alias`.
    pub router: RouterConfig,
}

/// A valid configuration and what was ignored in it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: Config,
    /// Keys, values or entries that were ignored, each with its path.
    pub warnings: Vec<Issue>,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("{origin}: invalid YAML: {source}")]
    Yaml {
        /// File name (or `<string>`).
        origin: String,
        /// Parser error, with line and column.
        source: serde_yaml::Error,
    },
    /// Fields have invalid values.
    #[error("{origin}: invalid configuration:\n{}", format_issues(errors))]
    Invalid {
        /// File name (or `<string>`).
        origin: String,
        /// Every invalid field.
        errors: Vec<Issue>,
        /// Warnings found along the way, so `check-config` can show them too.
        warnings: Vec<Issue>,
    },
}

fn format_issues(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|issue| format!("  {issue}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and validates a config file, resolving `os.environ/NAME` from the process environment.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut loaded = parse(&text, &path.display().to_string(), &|name| {
        std::env::var(name).ok()
    })?;
    let general = &mut loaded.config.general;
    if let (Some(file), Some(dir)) = (&general.model_prices_file, path.parent()) {
        if file.is_relative() {
            general.model_prices_file = Some(dir.join(file));
        }
    }
    Ok(loaded)
}

/// The environment variables the management API may read, by name prefix: the operator's
/// choice (`general_settings.api_env_prefixes`, `--api-env-prefix`), empty by default. An
/// admin key is trusted with the management API, not with the control plane's environment:
/// without this, `"api_key": "os.environ/DATABASE_URL"` and an `api_base` of the admin's own
/// would hand any variable to whoever holds an admin key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvAllowlist {
    prefixes: Vec<String>,
}

impl EnvAllowlist {
    /// An allowlist of `prefixes`, each checked with [`check_env_prefix`].
    pub fn new(prefixes: Vec<String>) -> Result<EnvAllowlist, String> {
        for prefix in &prefixes {
            check_env_prefix(prefix)?;
        }
        Ok(EnvAllowlist { prefixes })
    }

    /// The prefixes.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether variable `name` may be read.
    pub fn allows(&self, name: &str) -> bool {
        self.prefixes.iter().any(|prefix| name.starts_with(prefix))
    }
}

/// A prefix of environment variable names: letters, digits and `_`, not empty (an empty
/// prefix would allow every variable).
pub fn check_env_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("an empty prefix would allow every environment variable; name a prefix such as TOLLGATE_PROVIDER_"
            .to_string());
    }
    if !prefix
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
    {
        return Err(format!(
            "{prefix:?} is not a prefix of environment variable names (letters, digits and _)"
        ));
    }
    Ok(())
}

/// Resolves the `os.environ/NAME` references of a model entry (or patch) sent to the
/// management API, which are allowed only in credential fields ([`CREDENTIAL_PARAMS`] of
/// `litellm_params`) and only for names `allowlist` allows; every other string starting with
/// `os.environ/` is an error rather than a value to store. The allowlist is checked before
/// `env` is asked, so the answer never tells whether a variable exists. The result has the
/// allowed references replaced by their values and is parsed literally (see
/// [`parse_model_entry`]).
pub fn resolve_api_env(
    entry: &serde_json::Value,
    allowlist: &EnvAllowlist,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<serde_json::Value, Vec<Issue>> {
    let mut resolved = entry.clone();
    let mut issues = Vec::new();
    resolve_api_env_in(&mut resolved, "", allowlist, env, &mut issues);
    if issues.is_empty() {
        Ok(resolved)
    } else {
        Err(issues)
    }
}

fn resolve_api_env_in(
    value: &mut serde_json::Value,
    path: &str,
    allowlist: &EnvAllowlist,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<Issue>,
) {
    match value {
        serde_json::Value::String(text) => {
            let Some(name) = text.strip_prefix(ENV_PREFIX) else {
                return;
            };
            let is_credential = path
                .strip_prefix("litellm_params.")
                .is_some_and(|field| CREDENTIAL_PARAMS.contains(&field));
            let problem = if !is_credential {
                Some(format!(
                    "{ENV_PREFIX} references are resolved only in the config file; through the management API only credential fields (litellm_params.api_key) may name an environment variable"
                ))
            } else if name.is_empty() {
                Some(format!("\"{ENV_PREFIX}\" names no environment variable"))
            } else if !allowlist.allows(name) {
                Some(if allowlist.prefixes().is_empty() {
                    format!(
                        "{ENV_PREFIX}{name} is not allowed: the operator allows no environment variables through the management API (--api-env-prefix)"
                    )
                } else {
                    format!(
                        "{ENV_PREFIX}{name} is not allowed: the operator allows only names starting with {}",
                        allowlist.prefixes().join(", ")
                    )
                })
            } else {
                match env(name) {
                    Some(found) => {
                        *text = found;
                        None
                    }
                    None => Some(format!("environment variable {name} is not set")),
                }
            };
            if let Some(message) = problem {
                issues.push(Issue {
                    path: path.to_string(),
                    message,
                });
            }
        }
        serde_json::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                resolve_api_env_in(item, &format!("{path}[{index}]"), allowlist, env, issues);
            }
        }
        serde_json::Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                let field_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                resolve_api_env_in(field, &field_path, allowlist, env, issues);
            }
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

/// Validates config text. `env` resolves `os.environ/NAME` references (tests pass a map
/// instead of mutating the process environment); `origin` names the text in errors.
pub fn parse(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigError> {
    let document: Value = serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml {
        origin: origin.to_string(),
        source,
    })?;
    let mut checker = Checker {
        env: EnvReferences::Resolve(env),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let config = checker.document(&document);
    if checker.errors.is_empty() {
        Ok(LoadedConfig {
            config,
            warnings: checker.warnings,
        })
    } else {
        Err(ConfigError::Invalid {
            origin: origin.to_string(),
            errors: checker.errors,
            warnings: checker.warnings,
        })
    }
}

/// Validates one `model_list` entry given as JSON (the management API's `/model/new`),
/// with the same rules as the config file, except that every string is taken literally:
/// `os.environ/NAME` is never read here (the API resolves the references it allows first,
/// with [`resolve_api_env`]). Errors (and the warning of an unsupported provider, which the
/// API cannot skip) come back with paths relative to the entry (`litellm_params.model`);
/// other warnings are returned.
pub fn parse_model_entry(
    entry: &serde_json::Value,
) -> Result<(DeploymentConfig, Vec<Issue>), Vec<Issue>> {
    let fix = |mut issue: Issue| {
        issue.path = issue.path.trim_start_matches('.').to_string();
        issue
    };
    let value: Value = match serde_yaml::to_value(entry) {
        Ok(value) => value,
        Err(error) => {
            return Err(vec![Issue {
                path: String::new(),
                message: format!("not representable: {error}"),
            }])
        }
    };
    let Value::Mapping(map) = &value else {
        return Err(vec![Issue {
            path: String::new(),
            message: format!("expected an object, got {}", type_name(&value)),
        }]);
    };
    let mut checker = Checker {
        env: EnvReferences::Literal,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let deployment = checker.model_entry(0, map, "");
    let warnings: Vec<Issue> = checker.warnings.into_iter().map(fix).collect();
    let errors: Vec<Issue> = checker.errors.into_iter().map(fix).collect();
    match deployment {
        Some(deployment) if errors.is_empty() => Ok((deployment, warnings)),
        _ if !errors.is_empty() => Err(errors),
        _ => Err(warnings
            .into_iter()
            .filter(|issue| issue.message.contains("skipped"))
            .collect()),
    }
}

/// Id of a config deployment without `model_info.id`: stable across restarts as long as the
/// entry keeps its place and meaning, so usage records keep pointing at it.
pub fn config_deployment_id(index: usize, model_name: &str, model: &str, api_base: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [index.to_string().as_str(), model_name, model, api_base] {
        hasher.update(part.as_bytes());
        // A separator that cannot occur in YAML scalars keeps ("a","bc") apart from ("ab","c").
        hasher.update([0u8]);
    }
    let digest = hex::encode(hasher.finalize());
    format!("cfg-{}", &digest[..16])
}

/// True for `http://host...` and `https://host...` with a non-empty host.
fn is_http_url(value: &str) -> bool {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .unwrap_or("");
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    !host.is_empty() && !host.starts_with(':') && !host.contains(char::is_whitespace)
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|_| "?".to_string()),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// What a [`Checker`] does with `os.environ/NAME`.
enum EnvReferences<'a> {
    /// A file the operator loads: every reference is read through the function.
    Resolve(&'a dyn Fn(&str) -> Option<String>),
    /// The management API: strings are values, never references.
    Literal,
}

struct Checker<'a> {
    env: EnvReferences<'a>,
    errors: Vec<Issue>,
    warnings: Vec<Issue>,
}

/// A value for an error message: quoted when written in the file, named by its reference when
/// it came from the environment (which may hold a secret that belongs in no log line).
fn shown(raw: &str, resolved: &str) -> String {
    if raw == resolved {
        format!("\"{resolved}\"")
    } else {
        format!("the value of {raw}")
    }
}

impl Checker<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(Issue {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(Issue {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Warns about every key of `map` outside `supported`, wording known LiteLLM keys apart
    /// from unknown ones (likely typos).
    fn warn_other_keys(&mut self, map: &Mapping, path: &str, supported: &[&str], known: &[&str]) {
        for key in map.keys() {
            let name = key_name(key);
            if supported.contains(&name.as_str()) {
                continue;
            }
            let key_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            if known.contains(&name.as_str()) {
                self.warn(&key_path, "not supported by Tollgate yet, ignored");
            } else {
                self.warn(&key_path, "unknown key, ignored");
            }
        }
    }

    /// Resolves `os.environ/NAME` (when reading a file); other strings pass through.
    fn resolve(&mut self, path: &str, raw: &str) -> Option<String> {
        let EnvReferences::Resolve(env) = self.env else {
            return Some(raw.to_string());
        };
        let Some(name) = raw.strip_prefix(ENV_PREFIX) else {
            return Some(raw.to_string());
        };
        if name.is_empty() {
            self.error(path, format!("\"{raw}\" names no environment variable"));
            return None;
        }
        match env(name) {
            Some(value) => Some(value),
            None => {
                self.error(
                    path,
                    format!("environment variable {name} is not set (from \"{raw}\")"),
                );
                None
            }
        }
    }

    /// A string field: absent or null is `None`; numbers are taken as written (YAML reads
    /// `api_version: 2024` as a number); other types are errors.
    fn string(&mut self, map: &Mapping, key: &str, path: &str) -> Option<String> {
        let path = format!("{path}.{key}");
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(raw)) => self.resolve(&path, raw),
            Some(Value::Number(number)) => Some(number.to_string()),
            Some(other) => {
                self.error(&path, format!("must be a string, got {}", type_name(other)));
                None
            }
        }
    }

    /// A number field, also accepted as a numeric string (so it can come from the environment).
    fn number(&mut self, map: &Mapping, key: &str, path: &str) -> Option<Option<f64>> {
        let field = format!("{path}.{key}");
        let value = match map.get(key) {
            None | Some(Value::Null) => return Some(None),
            Some(Value::Number(number)) => number.as_f64(),
            Some(Value::String(raw)) => {
                let resolved = self.resolve(&field, raw)?;
                match resolved.trim().parse::<f64>() {
                    Ok(value) => Some(value),
                    Err(_) => {
                        self.error(
                            &field,
                            format!("must be a number, got {}", shown(raw, &resolved)),
                        );
                        return None;
                    }
                }
            }
            Some(other) => {
                self.error(
                    &field,
                    format!("must be a number, got {}", type_name(other)),
                );
                return None;
            }
        };
        Some(value)
    }

    fn document(&mut self, document: &Value) -> Config {
        let empty = Mapping::new();
        let root = match document {
            Value::Mapping(map) => map,
            // An empty file is a valid (empty) configuration.
            Value::Null => &empty,
            other => {
                self.error(
                    "<root>",
                    format!("expected a mapping, got {}", type_name(other)),
                );
                return Config::default();
            }
        };
        self.warn_other_keys(
            root,
            "",
            &[
                "model_list",
                "general_settings",
                "litellm_settings",
                "router_settings",
                "model_group_alias",
            ],
            KNOWN_UNSUPPORTED_TOP_LEVEL,
        );
        let litellm = match root.get("litellm_settings") {
            None | Some(Value::Null) => LitellmSettings::default(),
            Some(Value::Mapping(map)) => self.litellm_settings(map),
            Some(other) => {
                self.error(
                    "litellm_settings",
                    format!("expected a mapping, got {}", type_name(other)),
                );
                LitellmSettings::default()
            }
        };
        let general = match root.get("general_settings") {
            None | Some(Value::Null) => GeneralSettings::default(),
            Some(Value::Mapping(map)) => self.general_settings(map),
            Some(other) => {
                self.error(
                    "general_settings",
                    format!("expected a mapping, got {}", type_name(other)),
                );
                GeneralSettings::default()
            }
        };
        let mut general = general;
        self.merge_gateway_budget(&mut general, &litellm);
        let deployments = match root.get("model_list") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(entries)) => self.model_list(entries),
            Some(other) => {
                self.error(
                    "model_list",
                    format!("expected a list, got {}", type_name(other)),
                );
                Vec::new()
            }
        };
        // Aliases and fallbacks name model groups: read once the groups are known.
        let router = self.router(root, &deployments);
        Config {
            general,
            deployments,
            litellm,
            router,
        }
    }

    fn litellm_settings(&mut self, map: &Mapping) -> LitellmSettings {
        const PATH: &str = "litellm_settings";
        const SUPPORTED: &[&str] = &["max_end_user_budget", "max_budget", "budget_duration"];
        // Every other key is LiteLLM's (callbacks, caching, ...): ignored, as the whole
        // section was before Tollgate read any of it. The routing keys are read with
        // router_settings (see `router`).
        for key in map.keys() {
            let name = key_name(key);
            if !SUPPORTED.contains(&name.as_str())
                && !router::LITELLM_ROUTING_KEYS.contains(&name.as_str())
            {
                self.warn(
                    &format!("{PATH}.{name}"),
                    "not supported by Tollgate yet, ignored",
                );
            }
        }
        let max_budget = self.budget_amount(map, "max_budget", PATH);
        let budget_duration = self.budget_duration(map, PATH);
        LitellmSettings {
            max_end_user_budget: self.budget_amount(map, "max_end_user_budget", PATH),
            max_budget,
            budget_duration,
        }
    }

    /// LiteLLM documents the gateway's `max_budget` and `budget_duration` under
    /// `litellm_settings`; the seed configs put them in `general_settings`. Either is read,
    /// into [`GeneralSettings`]; both at once is an error, since they would disagree.
    fn merge_gateway_budget(&mut self, general: &mut GeneralSettings, litellm: &LitellmSettings) {
        if let Some(max_budget) = litellm.max_budget {
            if general.max_budget.is_some() {
                self.error(
                    "litellm_settings.max_budget",
                    "also set as general_settings.max_budget; set it once",
                );
            } else {
                general.max_budget = Some(max_budget);
            }
        }
        if let Some((text, ms)) = &litellm.budget_duration {
            if general.budget_duration.is_some() {
                self.error(
                    "litellm_settings.budget_duration",
                    "also set as general_settings.budget_duration; set it once",
                );
            } else {
                general.budget_duration = Some(text.clone());
                general.budget_duration_ms = Some(*ms);
            }
        }
        let bad_duration = self
            .errors
            .iter()
            .any(|issue| issue.path.ends_with(".budget_duration"));
        if general.budget_reset_at_ms.is_some()
            && general.budget_duration.is_none()
            && !bad_duration
        {
            self.warn(
                "general_settings.budget_reset_at",
                "ignored without general_settings.budget_duration (the gateway's spend never resets)",
            );
        }
    }

    /// A budget in US dollars: absent is `None`; anything but a finite number >= 0 is an
    /// error.
    fn budget_amount(&mut self, map: &Mapping, key: &str, path: &str) -> Option<f64> {
        let value = self.number(map, key, path)??;
        if value.is_finite() && value >= 0.0 {
            Some(value)
        } else {
            self.error(
                &format!("{path}.{key}"),
                "must be a number of US dollars, 0 or more",
            );
            None
        }
    }

    /// `budget_duration` ("30d") with its length in milliseconds.
    fn budget_duration(&mut self, map: &Mapping, path: &str) -> Option<(String, i64)> {
        let field = format!("{path}.budget_duration");
        let text = self.string(map, "budget_duration", path)?;
        match crate::manage::parse_duration(&field, &text) {
            Ok(ms) if ms > 0 => Some((text, ms)),
            Ok(_) => {
                self.error(&field, "must be longer than 0");
                None
            }
            Err(error) => {
                self.errors.push(Issue {
                    message: error
                        .message
                        .strip_prefix(&format!("{field}: "))
                        .unwrap_or(&error.message)
                        .to_string(),
                    path: field,
                });
                None
            }
        }
    }

    /// `budget_reset_at`: a UTC time of day, "HH:MM" or "HH:MM:SS", in ms after midnight.
    fn budget_reset_at(&mut self, map: &Mapping, path: &str) -> Option<i64> {
        let field = format!("{path}.budget_reset_at");
        let text = self.string(map, "budget_reset_at", path)?;
        let parts: Vec<&str> = text.trim().split(':').collect();
        let number = |part: Option<&&str>, limit: i64| -> Option<i64> {
            let part = part?;
            if part.len() != 2 {
                return None;
            }
            part.parse::<i64>().ok().filter(|value| *value < limit)
        };
        let parsed = match parts.len() {
            2 | 3 => {
                let seconds = if parts.len() == 3 {
                    number(parts.get(2), 60)
                } else {
                    Some(0)
                };
                match (number(parts.first(), 24), number(parts.get(1), 60), seconds) {
                    (Some(hours), Some(minutes), Some(seconds)) => {
                        Some(((hours * 60 + minutes) * 60 + seconds) * 1000)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if parsed.is_none() {
            self.error(
                &field,
                format!("must be a UTC time of day like \"00:00\" or \"13:30:00\", got {text:?}"),
            );
        }
        parsed
    }

    fn general_settings(&mut self, map: &Mapping) -> GeneralSettings {
        const PATH: &str = "general_settings";
        self.warn_other_keys(
            map,
            PATH,
            &[
                "master_key",
                "database_url",
                "max_request_size_mb",
                "max_response_size_mb",
                "api_env_prefixes",
                "cost_per_token",
                "model_prices_file",
                "maximum_spend_logs_retention_period",
                "maximum_spend_logs_retention_interval",
                "max_budget",
                "soft_budget",
                "budget_duration",
                "budget_reset_at",
                "alerting",
                "rpm_limit",
                "tpm_limit",
                "global_max_parallel_requests",
                "max_parallel_requests",
                "user_rate_limit",
                "background_health_checks",
                "health_check_interval",
            ],
            KNOWN_UNSUPPORTED_GENERAL_SETTINGS,
        );
        let master_key = self.string(map, "master_key", PATH);
        if master_key.as_deref() == Some("") {
            self.error(
                "general_settings.master_key",
                "must not be empty (remove it to disable auth)",
            );
        }
        let database_url = self.string(map, "database_url", PATH);
        if let Some(url) = &database_url {
            if !crate::store::is_supported_url(url) {
                self.error(
                    "general_settings.database_url",
                    "must start with sqlite:, postgres:// or postgresql://",
                );
            }
        }
        let size = |checker: &mut Self, key: &str| -> Option<f64> {
            let path = format!("{PATH}.{key}");
            let value = checker.number(map, key, PATH)??;
            if !value.is_finite() || value <= 0.0 {
                checker.error(&path, "must be a positive number");
                None
            } else if value > MAX_REQUEST_SIZE_MB {
                checker.error(
                    &path,
                    format!("must be at most {MAX_REQUEST_SIZE_MB} (Envoy buffers are 32-bit)"),
                );
                None
            } else {
                Some(value)
            }
        };
        let max_request_size_mb = size(self, "max_request_size_mb");
        let max_response_size_mb = size(self, "max_response_size_mb");
        let api_env_prefixes = self.api_env_prefixes(map, PATH);
        let cost_per_token = self.cost_per_token(map, PATH);
        let model_prices_file = match self.string(map, "model_prices_file", PATH) {
            Some(file) if file.trim().is_empty() => {
                self.error(
                    &format!("{PATH}.model_prices_file"),
                    "must not be empty (remove it to use the built-in prices alone)",
                );
                None
            }
            file => file.map(PathBuf::from),
        };
        let spend_logs_retention_ms =
            self.retention_duration(map, "maximum_spend_logs_retention_period", PATH);
        let interval = self.retention_duration(map, "maximum_spend_logs_retention_interval", PATH);
        if interval.is_some() && spend_logs_retention_ms.is_none() {
            self.warn(
                &format!("{PATH}.maximum_spend_logs_retention_interval"),
                "has no effect without maximum_spend_logs_retention_period, ignored",
            );
        }
        let max_budget = self.budget_amount(map, "max_budget", PATH);
        let soft_budget = self.budget_amount(map, "soft_budget", PATH);
        let budget_duration = self.budget_duration(map, PATH);
        let budget_reset_at_ms = self.budget_reset_at(map, PATH);
        let (budget_duration, budget_duration_ms) = match budget_duration {
            Some((text, ms)) => (Some(text), Some(ms)),
            None => (None, None),
        };
        let alerting_webhook = self.alerting(map, PATH);
        let rpm_limit = self.rate_limit(map, "rpm_limit", PATH);
        let tpm_limit = self.rate_limit(map, "tpm_limit", PATH);
        let global_max_parallel_requests =
            self.rate_limit(map, "global_max_parallel_requests", PATH);
        let max_parallel_requests = self.rate_limit(map, "max_parallel_requests", PATH);
        let user_rate_limit = self.user_rate_limit(map, PATH);
        let health_check_interval_ms = self.health_check_interval(map, PATH);
        GeneralSettings {
            health_check_interval_ms,
            rpm_limit,
            tpm_limit,
            global_max_parallel_requests,
            max_parallel_requests,
            user_rate_limit,
            alerting_webhook,
            max_budget,
            soft_budget,
            budget_duration,
            budget_duration_ms,
            budget_reset_at_ms,
            api_env_prefixes,
            master_key,
            database_url,
            max_request_size_mb,
            max_response_size_mb,
            cost_per_token,
            model_prices_file,
            spend_logs_retention_ms,
            spend_logs_retention_interval_ms: interval.unwrap_or(DEFAULT_RETENTION_INTERVAL_MS),
        }
    }

    /// `background_health_checks` and `health_check_interval` (seconds, LiteLLM's default
    /// 300): the interval when checks are on.
    fn health_check_interval(&mut self, map: &Mapping, path: &str) -> Option<u64> {
        let enabled = self.boolean(map, "background_health_checks", path);
        let interval = self.seconds_ms(map, "health_check_interval", path, true);
        if enabled != Some(true) {
            if interval.is_some() {
                self.warn(
                    &format!("{path}.health_check_interval"),
                    "has no effect without background_health_checks: true, ignored",
                );
            }
            return None;
        }
        Some(interval.unwrap_or(DEFAULT_HEALTH_CHECK_INTERVAL_MS))
    }

    /// A rate limit: absent is `None`; anything but a whole number >= 0 (that fits a signed
    /// 64-bit integer, as the database stores it) is an error.
    fn rate_limit(&mut self, map: &Mapping, key: &str, path: &str) -> Option<u64> {
        let value = self.number(map, key, path)??;
        // MAX_LIMIT as f64 rounds up to 2^63, so the comparison is strict.
        if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < MAX_LIMIT as f64 {
            // Checked above: whole, non-negative and in range.
            Some(value as u64)
        } else {
            self.error(
                &format!("{path}.{key}"),
                "must be a whole number, 0 or more",
            );
            None
        }
    }

    /// `rpm`, `tpm`, `max_parallel_requests` of one mapping (`litellm_params`, a
    /// `user_rate_limit` entry), the other keys left to the caller.
    fn rate_limits(&mut self, map: &Mapping, path: &str) -> RateLimitFields {
        RateLimitFields {
            rpm: self.rate_limit(map, "rpm", path),
            tpm: self.rate_limit(map, "tpm", path),
            max_parallel_requests: self.rate_limit(map, "max_parallel_requests", path),
        }
    }

    /// `user_rate_limit`: user id -> `{rpm, tpm, max_parallel_requests}`.
    fn user_rate_limit(&mut self, map: &Mapping, path: &str) -> BTreeMap<String, RateLimitFields> {
        let field = format!("{path}.user_rate_limit");
        let entries = match map.get("user_rate_limit") {
            None | Some(Value::Null) => return BTreeMap::new(),
            Some(Value::Mapping(entries)) => entries,
            Some(other) => {
                self.error(
                    &field,
                    format!(
                        "expected a mapping of user ids to limits, got {}",
                        type_name(other)
                    ),
                );
                return BTreeMap::new();
            }
        };
        let mut limits = BTreeMap::new();
        for (user, entry) in entries {
            let user = key_name(user);
            let entry_path = format!("{field}.{user}");
            if user.trim().is_empty() {
                self.error(&field, "a user id must not be empty");
                continue;
            }
            let entry = match entry {
                Value::Mapping(entry) => entry,
                Value::Null => continue,
                other => {
                    self.error(
                        &entry_path,
                        format!(
                            "expected a mapping of rpm, tpm, max_parallel_requests, got {}",
                            type_name(other)
                        ),
                    );
                    continue;
                }
            };
            self.warn_other_keys(
                entry,
                &entry_path,
                &["rpm", "tpm", "max_parallel_requests"],
                &[],
            );
            let user_limits = self.rate_limits(entry, &entry_path);
            if user_limits.is_set() {
                limits.insert(user, user_limits);
            }
        }
        limits
    }

    /// `alerting`: a list of alert channels; `webhook` is the one Tollgate has (budget
    /// alerts to `WEBHOOK_URL`), the others are reported as ignored.
    fn alerting(&mut self, map: &Mapping, path: &str) -> bool {
        let field = format!("{path}.alerting");
        let list = match map.get("alerting") {
            None | Some(Value::Null) => return false,
            Some(Value::Sequence(list)) => list,
            Some(other) => {
                self.error(
                    &field,
                    format!("must be a list of strings, got {}", type_name(other)),
                );
                return false;
            }
        };
        let mut webhook = false;
        for (index, item) in list.iter().enumerate() {
            let item_path = format!("{field}[{index}]");
            match item {
                Value::String(channel) if channel == "webhook" => webhook = true,
                Value::String(channel) => self.warn(
                    &item_path,
                    format!("{channel:?} alerts are not supported yet (only \"webhook\"), ignored"),
                ),
                other => self.error(
                    &item_path,
                    format!("must be a string, got {}", type_name(other)),
                ),
            }
        }
        webhook
    }

    /// A LiteLLM duration (`"7d"`, `"24h"`, `"60m"`, `"3600s"`, also `w` and `mo`) of at
    /// least a second, in ms.
    fn retention_duration(&mut self, map: &Mapping, key: &str, path: &str) -> Option<u64> {
        let field = format!("{path}.{key}");
        let text = self.string(map, key, path)?;
        match crate::manage::parse_duration(&field, &text) {
            Ok(ms) if ms >= 1_000 => u64::try_from(ms).ok(),
            Ok(_) => {
                self.error(&field, format!("must be at least 1s, got {text:?}"));
                None
            }
            Err(error) => {
                let message = error
                    .message
                    .strip_prefix(&format!("{field}: "))
                    .unwrap_or(&error.message)
                    .to_string();
                self.error(&field, message);
                None
            }
        }
    }

    /// A price field: absent is `None`; anything but a non-negative number is an error.
    fn price(&mut self, map: &Mapping, key: &str, path: &str) -> Option<f64> {
        let value = self.number(map, key, path)??;
        match check_price(value) {
            Ok(price) => Some(price),
            Err(message) => {
                self.error(&format!("{path}.{key}"), message);
                None
            }
        }
    }

    /// The five prices of `map` (`litellm_params`), each checked.
    fn prices(&mut self, map: &Mapping, path: &str) -> Prices {
        let mut prices = Prices::default();
        for field in PRICE_FIELDS {
            prices.set(field, self.price(map, field, path));
        }
        prices
    }

    /// `cost_per_token`: a mapping of public model names to prices.
    fn cost_per_token(&mut self, map: &Mapping, path: &str) -> BTreeMap<String, f64> {
        let field = format!("{path}.cost_per_token");
        let entries = match map.get("cost_per_token") {
            None | Some(Value::Null) => return BTreeMap::new(),
            Some(Value::Mapping(entries)) => entries,
            Some(other) => {
                self.error(
                    &field,
                    format!(
                        "must be a mapping of model names to US dollars per token, got {}",
                        type_name(other)
                    ),
                );
                return BTreeMap::new();
            }
        };
        let mut prices = BTreeMap::new();
        for key in entries.keys() {
            let name = key_name(key);
            if name.trim().is_empty() {
                self.error(&field, "a model name must not be empty");
                continue;
            }
            // Keyed by the name as written, so a numeric key (`4: 1e-6`) is looked up as text.
            let mut single = Mapping::new();
            if let Some(value) = entries.get(key) {
                single.insert(Value::String(name.clone()), value.clone());
            }
            if let Some(price) = self.price(&single, &name, &field) {
                prices.insert(name, price);
            }
        }
        prices
    }

    /// `api_env_prefixes`: a list of prefixes, or one string of comma-separated prefixes.
    fn api_env_prefixes(&mut self, map: &Mapping, path: &str) -> Vec<String> {
        let field = format!("{path}.api_env_prefixes");
        let items: Vec<(String, String)> = match map.get("api_env_prefixes") {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::String(_)) => match self.string(map, "api_env_prefixes", path) {
                Some(text) => text
                    .split(',')
                    .map(|prefix| (field.clone(), prefix.trim().to_string()))
                    .collect(),
                None => return Vec::new(),
            },
            Some(Value::Sequence(list)) => {
                let mut items = Vec::new();
                for (index, item) in list.iter().enumerate() {
                    let item_path = format!("{field}[{index}]");
                    match item {
                        Value::String(prefix) => items.push((item_path, prefix.clone())),
                        other => self.error(
                            &item_path,
                            format!("must be a string, got {}", type_name(other)),
                        ),
                    }
                }
                items
            }
            Some(other) => {
                self.error(
                    &field,
                    format!("must be a list of strings, got {}", type_name(other)),
                );
                return Vec::new();
            }
        };
        let mut prefixes = Vec::new();
        for (item_path, prefix) in items {
            match check_env_prefix(&prefix) {
                Ok(()) => prefixes.push(prefix),
                Err(message) => self.error(&item_path, message),
            }
        }
        prefixes
    }

    fn model_list(&mut self, entries: &[Value]) -> Vec<DeploymentConfig> {
        let mut deployments: Vec<DeploymentConfig> = Vec::new();
        // Explicit ids must be unique: they are primary keys and usage records refer to them.
        let mut explicit_ids: HashMap<String, usize> = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let path = format!("model_list[{index}]");
            let Value::Mapping(map) = entry else {
                self.error(
                    &path,
                    format!("expected a mapping, got {}", type_name(entry)),
                );
                continue;
            };
            let Some(deployment) = self.model_entry(index, map, &path) else {
                continue;
            };
            if deployment
                .model_info
                .as_ref()
                .and_then(explicit_id)
                .is_some()
            {
                if let Some(first) = explicit_ids.get(&deployment.id) {
                    self.error(
                        &format!("{path}.model_info.id"),
                        format!(
                            "duplicate id \"{}\" (also model_list[{first}])",
                            deployment.id
                        ),
                    );
                    continue;
                }
                explicit_ids.insert(deployment.id.clone(), index);
            }
            deployments.push(deployment);
        }
        deployments
    }

    fn model_entry(&mut self, index: usize, map: &Mapping, path: &str) -> Option<DeploymentConfig> {
        self.warn_other_keys(
            map,
            path,
            &["model_name", "litellm_params", "model_info"],
            &[],
        );
        let model_name = match self.string(map, "model_name", path) {
            Some(name) if !name.trim().is_empty() => Some(name),
            Some(_) => {
                self.error(&format!("{path}.model_name"), "must not be empty");
                None
            }
            None => {
                if !self.has_error_at(&format!("{path}.model_name")) {
                    self.error(&format!("{path}.model_name"), "required");
                }
                None
            }
        };
        let model_info = self.model_info(map, path);
        let params_path = format!("{path}.litellm_params");
        let params = match map.get("litellm_params") {
            Some(Value::Mapping(params)) => params,
            None | Some(Value::Null) => {
                self.error(&params_path, "required");
                return None;
            }
            Some(other) => {
                self.error(
                    &params_path,
                    format!("expected a mapping, got {}", type_name(other)),
                );
                return None;
            }
        };
        let model_path = format!("{params_path}.model");
        let model = match self.string(params, "model", &params_path) {
            Some(model) => model,
            None => {
                if !self.has_error_at(&model_path) {
                    self.error(&model_path, "required");
                }
                return None;
            }
        };
        let (provider_name, upstream_model) = match model.split_once('/') {
            Some((provider, upstream)) if !provider.is_empty() && !upstream.is_empty() => {
                (provider.to_string(), upstream.to_string())
            }
            _ => {
                let raw = params.get("model").and_then(Value::as_str).unwrap_or("");
                self.error(
                    &model_path,
                    format!(
                        "expected \"<provider>/<model>\", got {}",
                        shown(raw, &model)
                    ),
                );
                return None;
            }
        };
        let Some(provider) = tollgate_catalogue::find(&provider_name) else {
            let reason = if tollgate_catalogue::KNOWN_UNSUPPORTED.contains(&provider_name.as_str())
            {
                format!("provider \"{provider_name}\" is not supported by Tollgate yet")
            } else {
                format!("unknown provider \"{provider_name}\"")
            };
            self.warn(&model_path, format!("{reason}; deployment skipped"));
            return None;
        };
        let supported: Vec<&str> = [
            "model",
            "api_key",
            "api_base",
            "api_version",
            "max_tokens",
            "input_cost_per_token",
            "output_cost_per_token",
            "cache_read_input_token_cost",
            "cache_creation_input_token_cost",
            "output_cost_per_reasoning_token",
            "rpm",
            "tpm",
            "max_parallel_requests",
        ]
        .into_iter()
        .chain(DEFAULT_PARAMS.iter().map(|(name, _)| *name))
        .chain(router::DEPLOYMENT_ROUTING_PARAMS.iter().copied())
        .chain(settings_params(provider.settings).iter().copied())
        .collect();
        self.warn_other_keys(
            params,
            &params_path,
            &supported,
            KNOWN_UNSUPPORTED_LITELLM_PARAMS,
        );
        let provider_settings = self.provider_settings(provider, params, &params_path);
        let pricing = self.prices(params, &params_path);
        let limits = self.rate_limits(params, &params_path);
        let default_params = self.default_params(params, &params_path);
        let routing = self.deployment_routing(params, &params_path);
        // Bedrock's endpoint may also be given as LiteLLM's aws_bedrock_runtime_endpoint.
        let base_field = if provider.settings == Settings::Bedrock
            && !params.contains_key("api_base")
            && params.contains_key("aws_bedrock_runtime_endpoint")
        {
            "aws_bedrock_runtime_endpoint"
        } else {
            "api_base"
        };
        let api_base_path = format!("{params_path}.{base_field}");
        let api_base = match self.string(params, base_field, &params_path) {
            Some(base) => {
                let base = base.trim_end_matches('/').to_string();
                if is_http_url(&base) {
                    Some(base)
                } else {
                    self.error(&api_base_path, "not a http(s) URL");
                    None
                }
            }
            None if self.has_error_at(&api_base_path) => None,
            None => match provider.default_api_base.map(str::to_string).or_else(|| {
                // Bedrock's and Vertex's endpoints are in the deployment's region.
                provider_settings
                    .as_ref()
                    .and_then(ProviderSettings::default_api_base)
            }) {
                Some(base) => Some(base),
                // Settings that were invalid are reported already; without them the
                // endpoint is unknown rather than missing.
                None if provider_settings.is_none() => None,
                None => {
                    self.error(
                        &api_base_path,
                        format!("required for provider \"{provider_name}\""),
                    );
                    None
                }
            },
        };
        // Hugging Face's router names models its own way (see the catalogue).
        let upstream_model =
            provider.upstream_model(&upstream_model, !params.contains_key(base_field));
        let api_key = self.string(params, "api_key", &params_path);
        let api_version = self.string(params, "api_version", &params_path);
        let api_version_path = format!("{params_path}.api_version");
        if provider.settings == tollgate_catalogue::Settings::Azure
            && api_version.is_none()
            && !self.has_error_at(&api_version_path)
        {
            // Azure answers 404 to a request without one.
            self.error(
                &api_version_path,
                format!("required for provider \"{provider_name}\" (for example \"2024-10-21\")"),
            );
        }
        let max_tokens_path = format!("{params_path}.max_tokens");
        let max_tokens = match self.number(params, "max_tokens", &params_path) {
            Some(Some(value))
                if value.fract() == 0.0 && value >= 1.0 && value <= f64::from(u32::MAX) =>
            {
                Some(value as u32)
            }
            Some(Some(_)) => {
                self.error(&max_tokens_path, "must be a positive integer");
                None
            }
            _ => None,
        };
        // Vertex AI serves Claude models with Anthropic's body: the model decides.
        let wire = provider.wire_for(&upstream_model);
        let default_max_tokens = max_tokens.or(wire.required_max_tokens());
        let mut default_params = default_params;
        if let Some(max_tokens) = max_tokens {
            default_params.insert("max_tokens".into(), serde_json::Value::from(max_tokens));
        }
        let model_name = model_name?;
        let provider_settings = provider_settings?;
        let api_base = api_base?;
        let model_info = model_info?;
        let id = match model_info.as_ref().and_then(explicit_id) {
            Some(id) => id,
            None => config_deployment_id(index, &model_name, &model, &api_base),
        };
        Some(DeploymentConfig {
            id,
            index,
            model_name,
            provider_name,
            kind: wire,
            upstream_model,
            api_base,
            api_key,
            api_version,
            default_max_tokens,
            model_info,
            pricing,
            limits,
            provider_settings,
            default_params,
            routing,
        })
    }

    /// The request parameters of [`DEFAULT_PARAMS`] given in `litellm_params`, checked, as
    /// the JSON members the filter writes into requests that lack them.
    fn default_params(&mut self, params: &Mapping, params_path: &str) -> DefaultParams {
        let mut defaults = DefaultParams::new();
        for (name, kind) in DEFAULT_PARAMS {
            let path = format!("{params_path}.{name}");
            let value = match kind {
                ParamKind::Number { min, max, integer } => {
                    match self.number(params, name, params_path) {
                        Some(Some(value))
                            if value >= *min
                                && value <= *max
                                && (!integer || value.fract() == 0.0) =>
                        {
                            if *integer {
                                // Checked integral and within i64 (bounds below 2^63).
                                serde_json::Value::from(value as i64)
                            } else {
                                serde_json::Value::from(value)
                            }
                        }
                        Some(Some(_)) => {
                            let what = if *integer { "an integer" } else { "a number" };
                            self.error(&path, format!("must be {what} from {min} to {max}"));
                            continue;
                        }
                        _ => continue,
                    }
                }
                ParamKind::Stop => match params.get(*name) {
                    None | Some(Value::Null) => continue,
                    Some(Value::String(_)) => match self.string(params, name, params_path) {
                        Some(stop) => serde_json::Value::String(stop),
                        None => continue,
                    },
                    Some(Value::Sequence(items))
                        if (1..=4).contains(&items.len())
                            && items.iter().all(|item| item.as_str().is_some()) =>
                    {
                        serde_json::Value::from_iter(
                            items.iter().filter_map(Value::as_str).map(str::to_string),
                        )
                    }
                    Some(_) => {
                        self.error(&path, "must be a string or a list of 1 to 4 strings");
                        continue;
                    }
                },
                ParamKind::OneOf(allowed) => match self.string(params, name, params_path) {
                    Some(value) if allowed.contains(&value.as_str()) => {
                        serde_json::Value::String(value)
                    }
                    Some(value) => {
                        self.error(
                            &path,
                            format!(
                                "must be one of {}, got {}",
                                allowed.join(", "),
                                shown_value(&value)
                            ),
                        );
                        continue;
                    }
                    None => continue,
                },
                ParamKind::ResponseFormat => match params.get(*name) {
                    None | Some(Value::Null) => continue,
                    Some(format @ Value::Mapping(map))
                        if map.get("type").and_then(Value::as_str).is_some_and(|kind| {
                            ["text", "json_object", "json_schema"].contains(&kind)
                        }) =>
                    {
                        match serde_json::to_value(format) {
                            Ok(value) => value,
                            Err(error) => {
                                self.error(&path, format!("not representable as JSON: {error}"));
                                continue;
                            }
                        }
                    }
                    Some(_) => {
                        self.error(
                            &path,
                            "must be a mapping with type text, json_object or json_schema",
                        );
                        continue;
                    }
                },
            };
            defaults.insert((*name).to_string(), value);
        }
        defaults
    }

    /// The typed settings `provider` takes, from `litellm_params`; `None` when invalid
    /// (errors recorded).
    fn provider_settings(
        &mut self,
        provider: &tollgate_catalogue::Provider,
        params: &Mapping,
        params_path: &str,
    ) -> Option<ProviderSettings> {
        match provider.settings {
            // Azure's api_version is read with the other flat fields.
            Settings::None | Settings::Azure => Some(ProviderSettings::None),
            Settings::Bedrock => self
                .bedrock_settings(params, params_path)
                .map(ProviderSettings::Bedrock),
            Settings::Vertex => self
                .vertex_settings(params, params_path)
                .map(ProviderSettings::Vertex),
        }
    }

    /// An environment variable LiteLLM falls back to, when reading a file (never through
    /// the management API, whose values are literal).
    fn fallback_env(&self, name: &str) -> Option<String> {
        match self.env {
            EnvReferences::Resolve(env) => env(name).filter(|value| !value.trim().is_empty()),
            EnvReferences::Literal => None,
        }
    }

    /// `aws_region_name` and the access key, each falling back to the AWS environment
    /// variables as LiteLLM (and every AWS SDK) does.
    fn bedrock_settings(&mut self, params: &Mapping, params_path: &str) -> Option<BedrockSettings> {
        let region_path = format!("{params_path}.aws_region_name");
        let region = self
            .string(params, "aws_region_name", params_path)
            .or_else(|| self.fallback_env("AWS_REGION"))
            .or_else(|| self.fallback_env("AWS_DEFAULT_REGION"));
        let region = match region {
            Some(region) if is_aws_region(&region) => Some(region),
            Some(region) => {
                self.error(
                    &region_path,
                    format!("not an AWS region name: {}", shown_value(&region)),
                );
                None
            }
            None if self.has_error_at(&region_path) => None,
            None => {
                self.error(
                    &region_path,
                    "required for provider \"bedrock\" (or set AWS_REGION)",
                );
                None
            }
        };
        let key_id_path = format!("{params_path}.aws_access_key_id");
        let secret_path = format!("{params_path}.aws_secret_access_key");
        let given_id = self.string(params, "aws_access_key_id", params_path);
        let given_secret = self.string(params, "aws_secret_access_key", params_path);
        let given_token = self.string(params, "aws_session_token", params_path);
        if self.has_error_at(&key_id_path) || self.has_error_at(&secret_path) {
            return None;
        }
        let credentials = match (given_id, given_secret) {
            (Some(access_key_id), Some(secret_access_key)) => Some(AwsCredentials {
                access_key_id,
                secret_access_key,
                session_token: given_token,
            }),
            (Some(_), None) => {
                self.error(&secret_path, "required with aws_access_key_id");
                None
            }
            (None, Some(_)) => {
                self.error(&key_id_path, "required with aws_secret_access_key");
                None
            }
            (None, None) => match (
                self.fallback_env("AWS_ACCESS_KEY_ID"),
                self.fallback_env("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Some(access_key_id), Some(secret_access_key)) => Some(AwsCredentials {
                    access_key_id,
                    secret_access_key,
                    session_token: given_token.or_else(|| self.fallback_env("AWS_SESSION_TOKEN")),
                }),
                _ => {
                    self.error(
                        &key_id_path,
                        "required for provider \"bedrock\", with aws_secret_access_key (or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); roles and profiles are not supported yet",
                    );
                    None
                }
            },
        };
        let credentials = credentials?;
        for (field, value) in [
            ("aws_access_key_id", Some(&credentials.access_key_id)),
            (
                "aws_secret_access_key",
                Some(&credentials.secret_access_key),
            ),
            ("aws_session_token", credentials.session_token.as_ref()),
        ] {
            // They go into HTTP headers and the signature: no whitespace or controls.
            if value.is_some_and(|value| {
                value.is_empty() || value.bytes().any(|byte| !byte.is_ascii_graphic())
            }) {
                self.error(
                    &format!("{params_path}.{field}"),
                    "must be non-empty printable ASCII without spaces",
                );
                return None;
            }
        }
        Some(BedrockSettings {
            region: region?,
            credentials,
        })
    }

    /// `vertex_project`, `vertex_location` (default us-central1) and `vertex_credentials`:
    /// a service account key's JSON, or (in a file) the path of the key file, falling back
    /// to GOOGLE_APPLICATION_CREDENTIALS.
    fn vertex_settings(&mut self, params: &Mapping, params_path: &str) -> Option<VertexSettings> {
        let project_path = format!("{params_path}.vertex_project");
        let project = self.string(params, "vertex_project", params_path);
        if project.is_none() && !self.has_error_at(&project_path) {
            self.error(&project_path, "required for provider \"vertex_ai\"");
        }
        let location_path = format!("{params_path}.vertex_location");
        let location = self
            .string(params, "vertex_location", params_path)
            .unwrap_or_else(|| DEFAULT_VERTEX_LOCATION.to_string());
        if !is_aws_region(&location) {
            // Google's location names have the shape of AWS's: lowercase, digits, dashes.
            self.error(
                &location_path,
                format!("not a Vertex AI location: {}", shown_value(&location)),
            );
            return None;
        }
        let credentials_path = format!("{params_path}.vertex_credentials");
        let given = self.string(params, "vertex_credentials", params_path);
        if self.has_error_at(&credentials_path) {
            return None;
        }
        let text = match given {
            Some(text) if text.trim_start().starts_with('{') => text,
            Some(file) if matches!(self.env, EnvReferences::Resolve(_)) => {
                self.read_credentials_file(&credentials_path, &file)?
            }
            Some(_) => {
                self.error(
                    &credentials_path,
                    "must be the service account key's JSON (a file path is read only from the config file)",
                );
                return None;
            }
            None => match self.fallback_env("GOOGLE_APPLICATION_CREDENTIALS") {
                Some(file) => self.read_credentials_file(&credentials_path, &file)?,
                None => {
                    self.error(
                        &credentials_path,
                        "required for provider \"vertex_ai\": a service account key (or set GOOGLE_APPLICATION_CREDENTIALS)",
                    );
                    return None;
                }
            },
        };
        if let Err(message) = check_service_account(&text) {
            self.error(&credentials_path, message);
            return None;
        }
        Some(VertexSettings {
            project: project?,
            location,
            service_account_json: text,
        })
    }

    fn read_credentials_file(&mut self, path: &str, file: &str) -> Option<String> {
        match std::fs::read_to_string(file) {
            Ok(text) => Some(text),
            Err(error) => {
                self.error(path, format!("cannot read {file}: {error}"));
                None
            }
        }
    }

    /// `Some(None)` when absent, `None` when invalid.
    fn model_info(&mut self, map: &Mapping, path: &str) -> Option<Option<serde_json::Value>> {
        let info_path = format!("{path}.model_info");
        let info = match map.get("model_info") {
            None | Some(Value::Null) => return Some(None),
            Some(Value::Mapping(info)) => info,
            Some(other) => {
                self.error(
                    &info_path,
                    format!("expected a mapping, got {}", type_name(other)),
                );
                return None;
            }
        };
        match info.get("id") {
            None | Some(Value::Null) | Some(Value::Number(_)) => {}
            Some(Value::String(id)) if !id.trim().is_empty() => {}
            Some(Value::String(_)) => {
                self.error(&format!("{info_path}.id"), "must not be empty");
                return None;
            }
            Some(other) => {
                self.error(
                    &format!("{info_path}.id"),
                    format!("must be a string, got {}", type_name(other)),
                );
                return None;
            }
        }
        // Prices here are read when snapshots are built (see crate::pricing): check them now.
        // model_info is kept as written, so its prices are numbers, never references.
        let mut valid = true;
        for field in PRICE_FIELDS {
            let field_path = format!("{info_path}.{field}");
            match info.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Number(number)) => {
                    if let Err(message) = check_price(number.as_f64().unwrap_or(f64::NAN)) {
                        self.error(&field_path, message);
                        valid = false;
                    }
                }
                Some(other) => {
                    self.error(
                        &field_path,
                        format!("must be a number, got {}", type_name(other)),
                    );
                    valid = false;
                }
            }
        }
        match info.get("base_model") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) if !name.trim().is_empty() => {}
            Some(other) => {
                let message = match other {
                    Value::String(_) => "must not be empty".to_string(),
                    other => format!("must be a string, got {}", type_name(other)),
                };
                self.error(&format!("{info_path}.base_model"), message);
                valid = false;
            }
        }
        if !valid {
            return None;
        }
        match serde_json::to_value(Value::Mapping(info.clone())) {
            Ok(json) => Some(Some(json)),
            Err(error) => {
                self.error(
                    &info_path,
                    format!("cannot be represented as JSON: {error}"),
                );
                None
            }
        }
    }

    fn has_error_at(&self, path: &str) -> bool {
        self.errors.iter().any(|issue| issue.path == path)
    }
}

fn explicit_id(model_info: &serde_json::Value) -> Option<String> {
    match model_info.get("id")? {
        serde_json::Value::String(id) => Some(id.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    fn ok(text: &str) -> LoadedConfig {
        ok_env(text, &[])
    }

    fn ok_env(text: &str, pairs: &[(&str, &str)]) -> LoadedConfig {
        match parse(text, "test.yaml", &env_of(pairs)) {
            Ok(loaded) => loaded,
            Err(error) => panic!("expected a valid config, got: {error}"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        errors_env(text, &[])
    }

    /// The typed settings of `params` (YAML) for a provider taking `kind`, read as from a
    /// file with `env`; the settings or the errors.
    fn settings_of(
        kind: Settings,
        params: &str,
        env: &[(&str, &str)],
    ) -> Result<ProviderSettings, Vec<String>> {
        let env = env_of(env);
        let mut checker = Checker {
            env: EnvReferences::Resolve(&env),
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let provider = tollgate_catalogue::Provider {
            settings: kind,
            ..*tollgate_catalogue::find("openai").unwrap()
        };
        let Value::Mapping(params) = serde_yaml::from_str(params).unwrap() else {
            panic!("not a mapping: {params}");
        };
        let settings = checker.provider_settings(&provider, &params, "p");
        match settings {
            Some(settings) if checker.errors.is_empty() => Ok(settings),
            _ => Err(checker.errors.iter().map(ToString::to_string).collect()),
        }
    }

    fn aws(key_id: &str, secret: &str, token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: key_id.into(),
            secret_access_key: secret.into(),
            session_token: token.map(str::to_string),
        }
    }

    #[test]
    fn default_request_params_are_read_and_checked() {
        let loaded = ok(r#"
model_list:
  - model_name: gpt-4
    litellm_params:
      model: openai/gpt-4
      max_tokens: 4096
      temperature: 0.7
  - model_name: all
    litellm_params:
      model: openai/gpt-4o
      top_p: "0.5"
      max_completion_tokens: 100
      stop: ["END", "STOP"]
      seed: 42
      frequency_penalty: -1.5
      presence_penalty: 2
      response_format: {type: json_object}
      reasoning_effort: low
  - model_name: one-stop
    litellm_params: {model: openai/gpt-4o, stop: "\n\n"}
  - model_name: claude
    litellm_params: {model: anthropic/claude-x}
"#);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let defaults: Vec<serde_json::Value> = loaded
            .config
            .deployments
            .iter()
            .map(|d| serde_json::Value::Object(d.default_params.clone()))
            .collect();
        assert_eq!(
            defaults,
            [
                serde_json::json!({"max_tokens": 4096, "temperature": 0.7}),
                serde_json::json!({
                    "top_p": 0.5, "max_completion_tokens": 100, "stop": ["END", "STOP"],
                    "seed": 42, "frequency_penalty": -1.5, "presence_penalty": 2.0,
                    "response_format": {"type": "json_object"}, "reasoning_effort": "low"
                }),
                serde_json::json!({"stop": "\n\n"}),
                // The wire's required max_tokens is not a default the client gets.
                serde_json::json!({}),
            ]
        );
        assert_eq!(loaded.config.deployments[3].default_max_tokens, Some(4096));

        let text = r#"
model_list:
  - model_name: bad
    litellm_params:
      model: openai/gpt-4o
      temperature: 3
      top_p: high
      seed: 1.5
      stop: [1, 2]
      response_format: {type: yaml}
      reasoning_effort: extreme
"#;
        assert_eq!(
            errors(text),
            [
                "model_list[0].litellm_params.temperature: must be a number from 0 to 2",
                "model_list[0].litellm_params.top_p: must be a number, got \"high\"",
                "model_list[0].litellm_params.stop: must be a string or a list of 1 to 4 strings",
                "model_list[0].litellm_params.seed: must be an integer from -9007199254740991 to 9007199254740991",
                "model_list[0].litellm_params.response_format: must be a mapping with type text, json_object or json_schema",
                "model_list[0].litellm_params.reasoning_effort: must be one of none, minimal, low, medium, high, got \"extreme\"",
            ]
        );
    }

    #[test]
    fn bedrock_settings_are_read_from_litellm_params() {
        let settings = settings_of(
            Settings::Bedrock,
            "{aws_region_name: eu-west-1, aws_access_key_id: AKIDEXAMPLE, aws_secret_access_key: os.environ/AWS_SECRET, aws_session_token: tok}",
            &[("AWS_SECRET", "s3cr3t"), ("AWS_REGION", "us-west-2")],
        );
        assert_eq!(
            settings.unwrap(),
            ProviderSettings::Bedrock(BedrockSettings {
                region: "eu-west-1".into(),
                credentials: aws("AKIDEXAMPLE", "s3cr3t", Some("tok")),
            })
        );
    }

    #[test]
    fn bedrock_settings_fall_back_to_the_aws_environment() {
        let settings = settings_of(
            Settings::Bedrock,
            "{}",
            &[
                ("AWS_DEFAULT_REGION", "ap-south-1"),
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                ("AWS_SESSION_TOKEN", "env-token"),
            ],
        );
        assert_eq!(
            settings.unwrap(),
            ProviderSettings::Bedrock(BedrockSettings {
                region: "ap-south-1".into(),
                credentials: aws("AKIDENV", "env-secret", Some("env-token")),
            })
        );
        // AWS_REGION comes before AWS_DEFAULT_REGION, as in the AWS SDKs.
        let settings = settings_of(
            Settings::Bedrock,
            "{aws_access_key_id: A, aws_secret_access_key: B}",
            &[
                ("AWS_REGION", "us-east-2"),
                ("AWS_DEFAULT_REGION", "ap-south-1"),
            ],
        );
        assert_eq!(
            settings.unwrap(),
            ProviderSettings::Bedrock(BedrockSettings {
                region: "us-east-2".into(),
                credentials: aws("A", "B", None),
            })
        );
    }

    /// A LiteLLM Bedrock entry: the Converse wire, its typed settings, the region's runtime
    /// endpoint as api_base (or LiteLLM's aws_bedrock_runtime_endpoint), no warning.
    #[test]
    fn a_bedrock_entry_loads_with_its_settings_and_regional_base() {
        let loaded = ok_env(
            "model_list:\n\
             \x20 - model_name: claude\n\
             \x20   litellm_params:\n\
             \x20     model: bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0\n\
             \x20     aws_region_name: eu-west-3\n\
             \x20     aws_access_key_id: AKIDEXAMPLE\n\
             \x20     aws_secret_access_key: os.environ/BEDROCK_SECRET\n\
             \x20     aws_session_token: the-token\n\
             \x20 - model_name: nova\n\
             \x20   litellm_params:\n\
             \x20     model: bedrock/us.amazon.nova-pro-v1:0\n\
             \x20     aws_region_name: us-east-1\n\
             \x20     aws_bedrock_runtime_endpoint: https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com/\n",
            &[
                ("BEDROCK_SECRET", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                ("AWS_ACCESS_KEY_ID", "AKIDFROMENV"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ],
        );
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let d = &loaded.config.deployments;
        assert_eq!(d[0].kind, Wire::Bedrock);
        assert_eq!(wire_to_proto(d[0].kind), proto::ProviderKind::Bedrock);
        assert_eq!(d[0].provider_name, "bedrock");
        assert_eq!(
            d[0].upstream_model,
            "anthropic.claude-3-5-sonnet-20240620-v1:0"
        );
        assert_eq!(
            d[0].api_base,
            "https://bedrock-runtime.eu-west-3.amazonaws.com"
        );
        assert_eq!(d[0].api_key, None);
        assert_eq!(d[0].default_max_tokens, None);
        assert_eq!(
            d[0].provider_settings,
            ProviderSettings::Bedrock(BedrockSettings {
                region: "eu-west-3".into(),
                credentials: aws(
                    "AKIDEXAMPLE",
                    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                    Some("the-token")
                ),
            })
        );
        assert_eq!(
            d[1].api_base,
            "https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com"
        );
        assert_eq!(
            d[1].provider_settings,
            ProviderSettings::Bedrock(BedrockSettings {
                region: "us-east-1".into(),
                credentials: aws("AKIDFROMENV", "env-secret", None),
            })
        );
        // The secret is not in the deployment's Debug output.
        let printed = format!("{:?}", d[0]);
        assert!(!printed.contains("wJalrXUtnFEMI"), "{printed}");
        assert!(!printed.contains("the-token"), "{printed}");
    }

    #[test]
    fn bedrock_settings_errors_name_the_field() {
        assert_eq!(
            settings_of(Settings::Bedrock, "{}", &[]).unwrap_err(),
            [
                "p.aws_region_name: required for provider \"bedrock\" (or set AWS_REGION)",
                "p.aws_access_key_id: required for provider \"bedrock\", with aws_secret_access_key (or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); roles and profiles are not supported yet",
            ]
        );
        assert_eq!(
            settings_of(
                Settings::Bedrock,
                "{aws_region_name: 'us east', aws_access_key_id: A}",
                &[]
            )
            .unwrap_err(),
            [
                "p.aws_region_name: not an AWS region name: \"us east\"",
                "p.aws_secret_access_key: required with aws_access_key_id",
            ]
        );
        assert_eq!(
            settings_of(
                Settings::Bedrock,
                "{aws_region_name: us-east-1, aws_access_key_id: A, aws_secret_access_key: 'has space'}",
                &[]
            )
            .unwrap_err(),
            ["p.aws_secret_access_key: must be non-empty printable ASCII without spaces"]
        );
        // Through the management API the environment is not read.
        let checker = Checker {
            env: EnvReferences::Literal,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        assert_eq!(checker.fallback_env("AWS_REGION"), None);
    }

    #[test]
    fn bedrock_settings_give_the_regional_endpoint() {
        let settings = settings_of(
            Settings::Bedrock,
            "{aws_region_name: eu-central-1, aws_access_key_id: A, aws_secret_access_key: B}",
            &[],
        )
        .unwrap();
        assert_eq!(
            settings.default_api_base().as_deref(),
            Some("https://bedrock-runtime.eu-central-1.amazonaws.com")
        );
    }

    /// The test-only key of `tests/data/vertex` (it opens nothing).
    const SERVICE_ACCOUNT: &str = include_str!("../../tests/data/vertex/service-account.json");

    #[test]
    fn vertex_settings_take_the_key_json_or_its_file() {
        let params = format!(
            "{{vertex_project: p-1, vertex_credentials: {}}}",
            serde_json::to_string(SERVICE_ACCOUNT).unwrap()
        );
        let expected = ProviderSettings::Vertex(VertexSettings {
            project: "p-1".into(),
            location: "us-central1".into(),
            service_account_json: SERVICE_ACCOUNT.into(),
        });
        assert_eq!(
            settings_of(Settings::Vertex, &params, &[]).unwrap(),
            expected
        );
        assert_eq!(
            expected.default_api_base().as_deref(),
            Some("https://us-central1-aiplatform.googleapis.com")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sa.json");
        std::fs::write(&file, SERVICE_ACCOUNT).unwrap();
        let file = file.display().to_string();
        let from_env = settings_of(
            Settings::Vertex,
            "{vertex_project: p-1, vertex_location: europe-west4}",
            &[("GOOGLE_APPLICATION_CREDENTIALS", &file)],
        )
        .unwrap();
        let ProviderSettings::Vertex(vertex) = from_env else {
            panic!("{from_env:?}");
        };
        assert_eq!(vertex.location, "europe-west4");
        assert_eq!(vertex.service_account_json, SERVICE_ACCOUNT);
    }

    #[test]
    fn vertex_settings_errors_name_the_field_and_no_key_text() {
        assert_eq!(
            settings_of(Settings::Vertex, "{}", &[]).unwrap_err(),
            [
                "p.vertex_project: required for provider \"vertex_ai\"",
                "p.vertex_credentials: required for provider \"vertex_ai\": a service account key (or set GOOGLE_APPLICATION_CREDENTIALS)",
            ]
        );
        let not_a_service_account = r#"{"type":"authorized_user","private_key":"pk-secret"}"#;
        let errors = settings_of(
            Settings::Vertex,
            &format!(
                "{{vertex_project: p, vertex_credentials: {}}}",
                serde_json::to_string(not_a_service_account).unwrap()
            ),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            errors,
            ["p.vertex_credentials: not a service account key (\"type\" is not \"service_account\")"]
        );
        let errors = settings_of(
            Settings::Vertex,
            "{vertex_project: p, vertex_credentials: '{\"private_key\": pk-secret'}",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            errors,
            ["p.vertex_credentials: not JSON (at line 1, column 17)"]
        );
    }

    fn errors_env(text: &str, pairs: &[(&str, &str)]) -> Vec<String> {
        match parse(text, "test.yaml", &env_of(pairs)) {
            Ok(loaded) => panic!("expected errors, got {:?}", loaded.config),
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(ToString::to_string).collect()
            }
            Err(other) => panic!("expected field errors, got {other}"),
        }
    }

    fn warnings(loaded: &LoadedConfig) -> Vec<String> {
        loaded.warnings.iter().map(ToString::to_string).collect()
    }

    const FULL: &str = r#"
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o-2024-08-06
      api_base: https://proxy.example.com/v1/
      api_key: sk-literal
      api_version: "2024-06-01"
    model_info:
      id: gpt-4o-eu
      mode: chat
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_key: os.environ/ANTHROPIC_API_KEY
  - model_name: claude-short
    litellm_params:
      model: anthropic/claude-haiku
      max_tokens: 1024
  - model_name: llama
    litellm_params:
      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct
      api_base: http://127.0.0.1:8000/v1
      max_tokens: 512
  - model_name: local
    litellm_params:
      model: lm_studio/qwen
general_settings:
  master_key: os.environ/MASTER
  database_url: postgres://postgres@127.0.0.1:5432/test
  max_request_size_mb: 5
  max_response_size_mb: 0.5
"#;

    #[test]
    fn valid_full_file() {
        let loaded = ok_env(
            FULL,
            &[
                ("OPENAI_API_KEY", "sk-openai"),
                ("ANTHROPIC_API_KEY", "sk-ant"),
                ("MASTER", "sk-m"),
            ],
        );
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let config = loaded.config;
        assert_eq!(config.general.master_key.as_deref(), Some("sk-m"));
        assert_eq!(
            config.general.database_url.as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/test")
        );
        assert_eq!(
            config.general.max_request_body_bytes(),
            Some(5 * 1024 * 1024)
        );
        assert_eq!(config.general.max_response_body_bytes(), Some(512 * 1024));
        let d = &config.deployments;
        assert_eq!(d.len(), 6);

        assert_eq!(d[0].model_name, "gpt-4o");
        assert_eq!(d[0].provider_name, "openai");
        assert_eq!(d[0].kind, Wire::OpenAi);
        assert_eq!(d[0].upstream_model, "gpt-4o");
        assert_eq!(d[0].api_base, "https://api.openai.com/v1");
        assert_eq!(d[0].api_key.as_deref(), Some("sk-openai"));
        assert_eq!(d[0].default_max_tokens, None);
        assert_eq!(
            d[0].id,
            config_deployment_id(0, "gpt-4o", "openai/gpt-4o", "https://api.openai.com/v1")
        );
        assert!(d[0].id.starts_with("cfg-"));

        // Same public name, second deployment; explicit id; trailing slash dropped.
        assert_eq!(d[1].model_name, "gpt-4o");
        assert_eq!(d[1].id, "gpt-4o-eu");
        assert_eq!(d[1].api_base, "https://proxy.example.com/v1");
        assert_eq!(d[1].api_key.as_deref(), Some("sk-literal"));
        assert_eq!(d[1].api_version.as_deref(), Some("2024-06-01"));
        assert_eq!(
            d[1].model_info,
            Some(serde_json::json!({"id": "gpt-4o-eu", "mode": "chat"}))
        );

        assert_eq!(d[2].kind, Wire::Anthropic);
        assert_eq!(d[2].api_base, "https://api.anthropic.com");
        assert_eq!(d[2].default_max_tokens, Some(4096));
        assert_eq!(d[3].default_max_tokens, Some(1024));

        assert_eq!(d[4].provider_name, "hosted_vllm");
        assert_eq!(d[4].upstream_model, "meta-llama/Llama-3.1-8B-Instruct");
        assert_eq!(d[4].api_base, "http://127.0.0.1:8000/v1");
        assert_eq!(d[4].default_max_tokens, Some(512));
        assert_eq!(d[5].api_base, "http://localhost:1234/v1");
        assert_eq!(d[5].api_key, None);
    }

    #[test]
    fn azure_deployments_need_a_base_and_an_api_version() {
        let text = "model_list:\n  - model_name: gpt\n    litellm_params:\n      model: azure/my-gpt-4o\n      api_base: https://r.openai.azure.com\n      api_version: \"2024-10-21\"\n      api_key: k\n";
        let loaded = ok(text);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let deployment = &loaded.config.deployments[0];
        assert_eq!(deployment.kind, Wire::OpenAi);
        assert_eq!(deployment.provider_name, "azure");
        assert_eq!(deployment.upstream_model, "my-gpt-4o");
        assert_eq!(deployment.api_version.as_deref(), Some("2024-10-21"));
        assert_eq!(
            errors(&text.replace("      api_version: \"2024-10-21\"\n", "")),
            ["model_list[0].litellm_params.api_version: required for provider \"azure\" (for example \"2024-10-21\")"]
        );
    }

    #[test]
    fn openai_compatible_presets_get_their_bases_and_hugging_face_its_model_names() {
        let text = "model_list:\n  - model_name: nim\n    litellm_params:\n      model: nvidia_nim/meta/llama-3.1-8b-instruct\n  - model_name: cerebras\n    litellm_params:\n      model: cerebras/llama3.1-8b\n  - model_name: hf-routed\n    litellm_params:\n      model: huggingface/together/deepseek-ai/DeepSeek-R1\n  - model_name: hf-tgi\n    litellm_params:\n      model: huggingface/together/deepseek-ai/DeepSeek-R1\n      api_base: http://127.0.0.1:8080/v1\n";
        let d = ok(text).config.deployments;
        let got: Vec<(&str, &str, &str, Wire)> = d
            .iter()
            .map(|d| {
                (
                    d.provider_name.as_str(),
                    d.upstream_model.as_str(),
                    d.api_base.as_str(),
                    d.kind,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "nvidia_nim",
                    "meta/llama-3.1-8b-instruct",
                    "https://integrate.api.nvidia.com/v1",
                    Wire::OpenAi
                ),
                (
                    "cerebras",
                    "llama3.1-8b",
                    "https://api.cerebras.ai/v1",
                    Wire::OpenAi
                ),
                (
                    "huggingface",
                    "deepseek-ai/DeepSeek-R1:together",
                    "https://router.huggingface.co/v1",
                    Wire::OpenAi
                ),
                (
                    "huggingface",
                    "together/deepseek-ai/DeepSeek-R1",
                    "http://127.0.0.1:8080/v1",
                    Wire::OpenAi
                ),
            ]
        );
    }

    #[test]
    fn gemini_deployments_speak_the_gemini_wire() {
        let text = "model_list:\n  - model_name: flash\n    litellm_params:\n      model: gemini/gemini-2.5-flash\n      api_key: os.environ/GEMINI_API_KEY\n  - model_name: flash-proxied\n    litellm_params:\n      model: gemini/gemini-2.5-pro\n      api_base: https://proxy.example.com/v1beta/\n";
        let loaded = ok_env(text, &[("GEMINI_API_KEY", "AIza-test")]);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let d = &loaded.config.deployments;
        assert_eq!(d[0].kind, Wire::Gemini);
        assert_eq!(d[0].provider_name, "gemini");
        assert_eq!(d[0].upstream_model, "gemini-2.5-flash");
        assert_eq!(d[0].api_base, "https://generativelanguage.googleapis.com");
        assert_eq!(d[0].api_key.as_deref(), Some("AIza-test"));
        // Gemini needs no max_tokens: none is invented.
        assert_eq!(d[0].default_max_tokens, None);
        assert_eq!(d[1].api_base, "https://proxy.example.com/v1beta");
        assert_eq!(wire_to_proto(d[1].kind), proto::ProviderKind::Gemini);
    }

    #[test]
    fn cohere_deployments_speak_the_cohere_wire() {
        let text = "model_list:\n  - model_name: command\n    litellm_params:\n      model: cohere/command-r-plus\n      api_key: os.environ/COHERE_API_KEY\n  - model_name: command-chat\n    litellm_params:\n      model: cohere_chat/command-a-03-2025\n      api_base: https://cohere.example.com/\n";
        let loaded = ok_env(text, &[("COHERE_API_KEY", "co-test")]);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let d = &loaded.config.deployments;
        assert_eq!(d[0].kind, Wire::Cohere);
        assert_eq!(d[0].provider_name, "cohere");
        assert_eq!(d[0].upstream_model, "command-r-plus");
        assert_eq!(d[0].api_base, "https://api.cohere.com");
        assert_eq!(d[0].api_key.as_deref(), Some("co-test"));
        // Cohere needs no max_tokens: none is invented.
        assert_eq!(d[0].default_max_tokens, None);
        assert_eq!(d[1].kind, Wire::Cohere);
        assert_eq!(d[1].provider_name, "cohere_chat");
        assert_eq!(d[1].upstream_model, "command-a-03-2025");
        assert_eq!(d[1].api_base, "https://cohere.example.com");
        assert_eq!(wire_to_proto(d[1].kind), proto::ProviderKind::Cohere);
    }

    #[test]
    fn ollama_deployments_speak_the_ollama_wire() {
        // LiteLLM's seed config, and ollama_chat/ on the default base with a key (ollama.com).
        let text = "model_list:\n  - model_name: llama2\n    litellm_params:\n      model: ollama/llama2\n      api_base: http://host.docker.internal:11434\n  - model_name: llama-chat\n    litellm_params:\n      model: ollama_chat/llama3.1:8b\n      api_key: os.environ/OLLAMA_API_KEY\n";
        let loaded = ok_env(text, &[("OLLAMA_API_KEY", "ollama-test")]);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let d = &loaded.config.deployments;
        assert_eq!(d[0].kind, Wire::Ollama);
        assert_eq!(d[0].provider_name, "ollama");
        assert_eq!(d[0].upstream_model, "llama2");
        assert_eq!(d[0].api_base, "http://host.docker.internal:11434");
        assert_eq!(d[0].api_key, None);
        // Ollama needs no max_tokens: none is invented.
        assert_eq!(d[0].default_max_tokens, None);
        assert_eq!(d[1].kind, Wire::Ollama);
        assert_eq!(d[1].provider_name, "ollama_chat");
        assert_eq!(d[1].upstream_model, "llama3.1:8b");
        assert_eq!(d[1].api_base, "http://localhost:11434");
        assert_eq!(d[1].api_key.as_deref(), Some("ollama-test"));
        assert_eq!(wire_to_proto(d[1].kind), proto::ProviderKind::Ollama);
    }

    #[test]
    fn every_supported_provider_has_its_default_base() {
        for spec in tollgate_catalogue::PROVIDERS {
            let text = format!(
                "model_list:\n  - model_name: m\n    litellm_params:\n      model: {}/x\n",
                spec.name
            );
            if spec.settings == Settings::Bedrock {
                // No fixed base: the region's endpoint, once the settings give the region.
                assert_eq!(spec.default_api_base, None);
                let text = format!(
                    "{text}      aws_region_name: ap-northeast-1\n      aws_access_key_id: AKIDEXAMPLE\n      aws_secret_access_key: s3cr3t\n"
                );
                let loaded = ok(&text);
                assert_eq!(
                    loaded.config.deployments[0].api_base,
                    "https://bedrock-runtime.ap-northeast-1.amazonaws.com"
                );
                assert_eq!(loaded.config.deployments[0].kind, spec.wire);
                continue;
            }
            if spec.settings == Settings::Vertex {
                // The location's endpoint, once the settings give it.
                assert_eq!(spec.default_api_base, None);
                let text = format!(
                    "{text}      vertex_project: p-1\n      vertex_location: europe-west4\n      vertex_credentials: {}\n",
                    serde_json::to_string(SERVICE_ACCOUNT).unwrap()
                );
                let loaded = ok(&text);
                assert_eq!(
                    loaded.config.deployments[0].api_base,
                    "https://europe-west4-aiplatform.googleapis.com"
                );
                assert_eq!(loaded.config.deployments[0].kind, spec.wire);
                continue;
            }
            match spec.default_api_base {
                Some(base) => {
                    let loaded = ok(&text);
                    assert_eq!(loaded.config.deployments[0].api_base, base, "{}", spec.name);
                    assert_eq!(loaded.config.deployments[0].kind, spec.wire);
                }
                None => {
                    let mut expected = vec![format!(
                        "model_list[0].litellm_params.api_base: required for provider \"{}\"",
                        spec.name
                    )];
                    if spec.settings == tollgate_catalogue::Settings::Azure {
                        expected.push(format!(
                            "model_list[0].litellm_params.api_version: required for provider \"{}\" (for example \"2024-10-21\")",
                            spec.name
                        ));
                    }
                    let mut found = errors(&text);
                    found.sort();
                    assert_eq!(found, expected, "{}", spec.name);
                }
            }
        }
        assert_eq!(
            tollgate_catalogue::find("groq").map(|s| s.default_api_base),
            Some(Some("https://api.groq.com/openai/v1"))
        );
        assert_eq!(
            tollgate_catalogue::find("perplexity").map(|s| s.default_api_base),
            Some(Some("https://api.perplexity.ai"))
        );
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let text = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n  - model_name: a\n    litellm_params: {model: openai/x}\n";
        let first = ok(text).config;
        let second = ok(text).config;
        assert_eq!(first.deployments[0].id, second.deployments[0].id);
        assert_ne!(first.deployments[0].id, first.deployments[1].id);
    }

    #[test]
    fn numeric_model_info_id_is_used_as_text() {
        let loaded = ok("model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n    model_info: {id: 42}\n");
        assert_eq!(loaded.config.deployments[0].id, "42");
    }

    #[test]
    fn model_without_provider_is_an_error() {
        let text = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n  - model_name: b\n    litellm_params:\n      model: gpt-4o\n";
        assert_eq!(
            errors(text),
            [r#"model_list[1].litellm_params.model: expected "<provider>/<model>", got "gpt-4o""#]
        );
        assert_eq!(
            errors("model_list:\n  - model_name: b\n    litellm_params: {model: openai/}\n"),
            [r#"model_list[0].litellm_params.model: expected "<provider>/<model>", got "openai/""#]
        );
    }

    #[test]
    fn required_fields() {
        assert_eq!(
            errors("model_list:\n  - litellm_params: {model: openai/x}\n"),
            ["model_list[0].model_name: required"]
        );
        assert_eq!(
            errors("model_list:\n  - model_name: a\n"),
            ["model_list[0].litellm_params: required"]
        );
        assert_eq!(
            errors("model_list:\n  - model_name: a\n    litellm_params: {api_key: k}\n"),
            ["model_list[0].litellm_params.model: required"]
        );
        assert_eq!(
            errors("model_list:\n  - model_name: ''\n    litellm_params: {model: openai/x}\n"),
            ["model_list[0].model_name: must not be empty"]
        );
    }

    #[test]
    fn every_error_of_a_file_is_reported() {
        let text = r#"
model_list:
  - model_name: a
    litellm_params: {model: gpt-4o}
  - litellm_params: {model: openai/x}
  - model_name: c
    litellm_params: {model: openai/x, api_base: "ftp://example.com"}
  - model_name: d
    litellm_params: {model: hosted_vllm/x, max_tokens: -3}
general_settings:
  max_request_size_mb: 0
  max_response_size_mb: lots
"#;
        assert_eq!(
            errors(text),
            [
                "general_settings.max_request_size_mb: must be a positive number",
                "general_settings.max_response_size_mb: must be a number, got \"lots\"",
                r#"model_list[0].litellm_params.model: expected "<provider>/<model>", got "gpt-4o""#,
                "model_list[1].model_name: required",
                "model_list[2].litellm_params.api_base: not a http(s) URL",
                "model_list[3].litellm_params.api_base: required for provider \"hosted_vllm\"",
                "model_list[3].litellm_params.max_tokens: must be a positive integer",
            ]
        );
    }

    #[test]
    fn api_base_must_be_http() {
        for bad in [
            "example.com",
            "http://",
            "https:///v1",
            "localhost:8000",
            "http:// x",
        ] {
            let text = format!(
                "model_list:\n  - model_name: a\n    litellm_params: {{model: openai/x}}\n  - model_name: a\n    litellm_params: {{model: openai/x}}\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      api_base: \"{bad}\"\n"
            );
            assert_eq!(
                errors(&text),
                ["model_list[2].litellm_params.api_base: not a http(s) URL"],
                "{bad}"
            );
        }
        for good in [
            "http://localhost:8000",
            "https://user:pw@example.com/v1",
            "http://[::1]:8000/v1",
        ] {
            let text = format!(
                "model_list:\n  - model_name: a\n    litellm_params: {{model: openai/x, api_base: \"{good}\"}}\n"
            );
            assert_eq!(ok(&text).config.deployments[0].api_base, good);
        }
    }

    #[test]
    fn sizes_must_be_positive_numbers() {
        for bad in ["0", "-1", "'abc'", "[1]", ".nan", "5000"] {
            let text = format!("general_settings:\n  max_request_size_mb: {bad}\n");
            let errs = errors(&text);
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(
                errs[0].starts_with("general_settings.max_request_size_mb: must be"),
                "{errs:?}"
            );
        }
        assert_eq!(
            errors("general_settings:\n  max_request_size_mb: -2\n"),
            ["general_settings.max_request_size_mb: must be a positive number"]
        );
        let loaded = ok_env(
            "general_settings:\n  max_request_size_mb: os.environ/SIZE\n",
            &[("SIZE", "2.5")],
        );
        assert_eq!(
            loaded.config.general.max_request_body_bytes(),
            Some(2_621_440)
        );
    }

    #[test]
    fn env_references_resolve_or_fail_with_path_and_name() {
        let text = "model_list:\n  - model_name: os.environ/NAME\n    litellm_params:\n      model: os.environ/MODEL\n      api_key: os.environ/OPENAI_API_KEY\n      api_base: os.environ/BASE\n";
        let loaded = ok_env(
            text,
            &[
                ("NAME", "n"),
                ("MODEL", "openai/m"),
                ("OPENAI_API_KEY", "sk-1"),
                ("BASE", "http://h:1/v1"),
            ],
        );
        let d = &loaded.config.deployments[0];
        assert_eq!(
            (d.model_name.as_str(), d.upstream_model.as_str()),
            ("n", "m")
        );
        assert_eq!(d.api_key.as_deref(), Some("sk-1"));
        assert_eq!(d.api_base, "http://h:1/v1");

        let errs = errors_env(
            text,
            &[
                ("NAME", "n"),
                ("MODEL", "openai/m"),
                ("BASE", "http://h:1/v1"),
            ],
        );
        assert_eq!(
            errs,
            ["model_list[0].litellm_params.api_key: environment variable OPENAI_API_KEY is not set (from \"os.environ/OPENAI_API_KEY\")"]
        );
        assert_eq!(
            errors("general_settings:\n  master_key: os.environ/\n"),
            ["general_settings.master_key: \"os.environ/\" names no environment variable"]
        );
        assert_eq!(
            errors("general_settings:\n  master_key: os.environ/MISSING_MASTER\n"),
            ["general_settings.master_key: environment variable MISSING_MASTER is not set (from \"os.environ/MISSING_MASTER\")"]
        );
    }

    #[test]
    fn env_reference_from_process_environment() {
        // load_file reads the real environment; PATH is always set.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      api_key: os.environ/PATH\n",
        )
        .unwrap();
        let loaded = load_file(&path).unwrap();
        assert_eq!(
            loaded.config.deployments[0].api_key,
            std::env::var("PATH").ok()
        );
    }

    #[test]
    fn unknown_and_unsupported_keys_are_warnings() {
        let text = r#"
model_list:
  - model_name: a
    litellm_params:
      model: openai/x
      rpm: 10
      tpm: 1000
      temprature: 0.1
    model_info: {mode: chat}
    extra: 1
router_settings:
  routing_strategy: simple-shuffle
  redis_host: localhost
litellm_settings:
  drop_params: true
environment_variables:
  FOO: bar
general_settings:
  master_key: sk-1
  alerting: [slack]
  mystery: 1
whatever: 1
"#;
        let loaded = ok(text);
        assert_eq!(
            warnings(&loaded),
            [
                "environment_variables: not supported by Tollgate yet, ignored",
                "whatever: unknown key, ignored",
                "litellm_settings.drop_params: not supported by Tollgate yet, ignored",
                "general_settings.mystery: unknown key, ignored",
                "general_settings.alerting[0]: \"slack\" alerts are not supported yet (only \"webhook\"), ignored",
                "model_list[0].extra: unknown key, ignored",
                "model_list[0].litellm_params.temprature: unknown key, ignored",
                "router_settings.redis_host: not supported by Tollgate yet, ignored",
            ]
        );
        assert_eq!(loaded.config.deployments.len(), 1);
    }

    #[test]
    fn budgets_are_read_and_checked() {
        let loaded = ok(r#"
general_settings:
  max_budget: 100.0
  soft_budget: 80
  budget_duration: "30d"
  budget_reset_at: "00:00"
litellm_settings:
  max_end_user_budget: 2.5
"#);
        assert_eq!(warnings(&loaded), Vec::<String>::new());
        let general = &loaded.config.general;
        assert_eq!(general.max_budget, Some(100.0));
        assert_eq!(general.soft_budget, Some(80.0));
        assert_eq!(general.budget_duration.as_deref(), Some("30d"));
        assert_eq!(general.budget_duration_ms, Some(30 * DAY_MS));
        assert_eq!(general.budget_reset_at_ms, Some(0));
        assert_eq!(loaded.config.litellm.max_end_user_budget, Some(2.5));
        // 2025-01-02T03:04:05.678Z + 30d, moved on to the next midnight: 2025-02-02T00:00Z.
        assert_eq!(
            general.first_budget_reset(1_735_787_045_678),
            Some(1_738_454_400_000)
        );
        let loaded =
            ok("general_settings:\n  budget_duration: 2d\n  budget_reset_at: '01:30:15'\n");
        let general = &loaded.config.general;
        assert_eq!(general.budget_reset_at_ms, Some(5_415_000));
        // 03:04:05.678 + 2d, past 01:30:15: the day after's 01:30:15.
        assert_eq!(
            general.first_budget_reset(1_735_787_045_678),
            Some(1_735_787_045_678 - 11_045_678 + 3 * DAY_MS + 5_415_000)
        );
        // Shorter than a day: the time of day does not apply.
        let loaded = ok("general_settings:\n  budget_duration: 12h\n  budget_reset_at: '13:30'\n");
        assert_eq!(
            loaded.config.general.first_budget_reset(1_735_787_045_678),
            Some(1_735_787_045_678 + 43_200_000)
        );
        let plain = ok("general_settings:\n  budget_duration: 1h\n");
        assert_eq!(
            plain.config.general.first_budget_reset(1_000),
            Some(3_601_000)
        );
        assert_eq!(ok("").config.general.first_budget_reset(1_000), None);
        assert_eq!(
            warnings(&ok("general_settings:\n  budget_reset_at: '00:00'\n")),
            ["general_settings.budget_reset_at: ignored without general_settings.budget_duration (the gateway's spend never resets)"]
        );
        assert_eq!(
            errors(
                r#"
general_settings:
  max_budget: -1
  soft_budget: lots
  budget_duration: 3y
  budget_reset_at: "25:00"
litellm_settings:
  max_end_user_budget: [1]
"#
            ),
            [
                "litellm_settings.max_end_user_budget: must be a number, got a list",
                "general_settings.max_budget: must be a number of US dollars, 0 or more",
                "general_settings.soft_budget: must be a number, got \"lots\"",
                "general_settings.budget_duration: unknown duration unit in \"3y\" (use s, m, h, d, w or mo)",
                "general_settings.budget_reset_at: must be a UTC time of day like \"00:00\" or \"13:30:00\", got \"25:00\"",
            ]
        );
        assert_eq!(
            errors("general_settings:\n  budget_duration: 0s\n  budget_reset_at: '7:5'\n"),
            [
                "general_settings.budget_duration: must be longer than 0",
                "general_settings.budget_reset_at: must be a UTC time of day like \"00:00\" or \"13:30:00\", got \"7:5\"",
            ]
        );
        assert_eq!(
            errors("litellm_settings: [1]\n"),
            ["litellm_settings: expected a mapping, got a list"]
        );
        // LiteLLM's documented place for the gateway's budget.
        let loaded = ok("litellm_settings:\n  max_budget: 0\n  budget_duration: 30d\n");
        assert_eq!(warnings(&loaded), Vec::<String>::new());
        assert_eq!(loaded.config.general.max_budget, Some(0.0));
        assert_eq!(
            loaded.config.general.budget_duration.as_deref(),
            Some("30d")
        );
        assert_eq!(loaded.config.general.budget_duration_ms, Some(30 * DAY_MS));
        assert_eq!(
            errors(
                "general_settings:\n  max_budget: 1\n  budget_duration: 1d\n\
                 litellm_settings:\n  max_budget: 2\n  budget_duration: 2d\n"
            ),
            [
                "litellm_settings.max_budget: also set as general_settings.max_budget; set it once",
                "litellm_settings.budget_duration: also set as general_settings.budget_duration; set it once",
            ]
        );
        assert_eq!(
            errors("litellm_settings:\n  budget_duration: 2x\n"),
            ["litellm_settings.budget_duration: unknown duration unit in \"2x\" (use s, m, h, d, w or mo)"]
        );
    }

    #[test]
    fn unsupported_providers_are_skipped_with_a_warning() {
        let text = r#"
model_list:
  - model_name: rp
    litellm_params: {model: replicate/zephyr-7b, api_key: os.environ/UNSET_RP_KEY}
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o}
  - model_name: az
    litellm_params: {model: sagemaker_chat/command-r, api_base: "not a url"}
  - model_name: typo
    litellm_params: {model: opneai/gpt-4o}
  - model_name: wx
    litellm_params: {model: watsonx/ibm/granite-13b-chat-v2}
"#;
        let loaded = ok(text);
        assert_eq!(
            warnings(&loaded),
            [
                "model_list[0].litellm_params.model: provider \"replicate\" is not supported by Tollgate yet; deployment skipped",
                "model_list[2].litellm_params.model: provider \"sagemaker_chat\" is not supported by Tollgate yet; deployment skipped",
                "model_list[3].litellm_params.model: unknown provider \"opneai\"; deployment skipped",
                "model_list[4].litellm_params.model: provider \"watsonx\" is not supported by Tollgate yet; deployment skipped",
            ]
        );
        assert_eq!(loaded.config.deployments.len(), 1);
        assert_eq!(loaded.config.deployments[0].model_name, "gpt");
        assert_eq!(loaded.config.deployments[0].index, 1);
    }

    #[test]
    fn duplicate_explicit_ids_are_errors() {
        let text = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n    model_info: {id: same}\n  - model_name: b\n    litellm_params: {model: openai/y}\n    model_info: {id: same}\n";
        assert_eq!(
            errors(text),
            ["model_list[1].model_info.id: duplicate id \"same\" (also model_list[0])"]
        );
    }

    #[test]
    fn wrong_types_are_errors() {
        assert_eq!(
            errors("- a\n- b\n"),
            ["<root>: expected a mapping, got a list"]
        );
        assert_eq!(
            errors("model_list: {a: 1}\n"),
            ["model_list: expected a list, got a mapping"]
        );
        assert_eq!(
            errors("model_list: [3]\n"),
            ["model_list[0]: expected a mapping, got a number"]
        );
        assert_eq!(
            errors("general_settings: [1]\n"),
            ["general_settings: expected a mapping, got a list"]
        );
        assert_eq!(
            errors("model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, api_key: [1]}\n"),
            ["model_list[0].litellm_params.api_key: must be a string, got a list"]
        );
        assert_eq!(
            errors("model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n    model_info: [1]\n"),
            ["model_list[0].model_info: expected a mapping, got a list"]
        );
        assert_eq!(
            errors("general_settings:\n  database_url: mysql://x\n"),
            ["general_settings.database_url: must start with sqlite:, postgres:// or postgresql://"]
        );
        assert_eq!(
            errors("general_settings:\n  master_key: ''\n"),
            ["general_settings.master_key: must not be empty (remove it to disable auth)"]
        );
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        let loaded = ok("");
        assert!(loaded.config.deployments.is_empty());
        assert_eq!(loaded.config.general, GeneralSettings::default());
    }

    #[test]
    fn yaml_syntax_errors_name_the_file() {
        match parse("model_list: [\n", "x.yaml", &|_| None) {
            Err(ConfigError::Yaml { origin, .. }) => assert_eq!(origin, "x.yaml"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn api_version_as_number_is_kept_as_written() {
        let loaded = ok("model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, api_version: 2024}\n");
        assert_eq!(
            loaded.config.deployments[0].api_version.as_deref(),
            Some("2024")
        );
    }

    fn api_env_errors(entry: serde_json::Value, allowlist: &EnvAllowlist) -> Vec<String> {
        let env = |name: &str| panic!("the environment was read for {name}");
        match resolve_api_env(&entry, allowlist, &env) {
            Ok(resolved) => panic!("expected errors, got {resolved}"),
            Err(issues) => issues.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_api_resolves_env_references_only_in_credential_fields() {
        let none = EnvAllowlist::default();
        // The repro: a model named after HOME, a key read from PATH.
        assert_eq!(
            api_env_errors(
                serde_json::json!({"model_name": "os.environ/HOME",
                    "litellm_params": {"model": "openai/x", "api_key": "os.environ/PATH"}}),
                &none
            ),
            [
                "litellm_params.api_key: os.environ/PATH is not allowed: the operator allows no environment variables through the management API (--api-env-prefix)",
                "model_name: os.environ/ references are resolved only in the config file; through the management API only credential fields (litellm_params.api_key) may name an environment variable",
            ]
        );
        // Every other field, nested ones and unknown ones too, never reads the environment.
        let allowlist = EnvAllowlist::new(vec!["TOLLGATE_P_".into()]).unwrap();
        let errors = api_env_errors(
            serde_json::json!({"model_name": "m", "litellm_params": {
                "model": "os.environ/TOLLGATE_P_MODEL", "api_base": "os.environ/TOLLGATE_P_BASE",
                "api_version": "os.environ/TOLLGATE_P_V", "extra": ["os.environ/TOLLGATE_P_X"]},
                "model_info": {"id": "os.environ/TOLLGATE_P_ID", "tags": {"t": "os.environ/HOME"}}}),
            &allowlist,
        );
        let paths: Vec<&str> = errors
            .iter()
            .map(|error| error.split(':').next().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "litellm_params.api_base",
                "litellm_params.api_version",
                "litellm_params.extra[0]",
                "litellm_params.model",
                "model_info.id",
                "model_info.tags.t",
            ]
        );
        // A credential field: only allowed names, and those only when set.
        assert_eq!(
            api_env_errors(
                serde_json::json!({"litellm_params": {"api_key": "os.environ/DATABASE_URL",
                    "aws_secret_access_key": "os.environ/"}}),
                &allowlist
            ),
            [
                "litellm_params.api_key: os.environ/DATABASE_URL is not allowed: the operator allows only names starting with TOLLGATE_P_",
                "litellm_params.aws_secret_access_key: \"os.environ/\" names no environment variable",
            ]
        );
        let env = env_of(&[("TOLLGATE_P_OPENAI", "sk-from-env")]);
        let entry = serde_json::json!({"model_name": "m", "litellm_params": {
            "model": "openai/x", "api_key": "os.environ/TOLLGATE_P_OPENAI"}});
        let resolved = resolve_api_env(&entry, &allowlist, &env).unwrap();
        assert_eq!(resolved["litellm_params"]["api_key"], "sk-from-env");
        assert_eq!(resolved["model_name"], "m");
        let unset =
            serde_json::json!({"litellm_params": {"api_key": "os.environ/TOLLGATE_P_UNSET"}});
        let issues = resolve_api_env(&unset, &allowlist, &env).unwrap_err();
        assert_eq!(
            issues[0].to_string(),
            "litellm_params.api_key: environment variable TOLLGATE_P_UNSET is not set"
        );
    }

    #[test]
    fn api_entries_are_parsed_literally() {
        // What the API resolved (or was sent) is a value: never resolved a second time.
        let entry = serde_json::json!({"model_name": "m", "litellm_params": {
            "model": "openai/x", "api_key": "os.environ/LOOKS_LIKE_A_REFERENCE"}});
        let (deployment, _) = parse_model_entry(&entry).unwrap();
        assert_eq!(
            deployment.api_key.as_deref(),
            Some("os.environ/LOOKS_LIKE_A_REFERENCE")
        );
    }

    /// The rate-limiting block of the seed config (/work/shared/seeds/000_c61eacea6ba789f1.txt,
    /// "Rate Limiting"), as written there.
    const SEED_RATE_LIMITS: &str = r#"
general_settings:
  tpm_limit: 10000  # tokens per minute
  rpm_limit: 100    # requests per minute
  max_parallel_requests: 10
  user_rate_limit:
    "user-1": {"tpm": 5000, "rpm": 50}
"#;

    /// The seed's main config block (its "General Settings"), rate limits among keys
    /// Tollgate does not implement.
    const SEED_GENERAL_SETTINGS: &str = r#"
general_settings:
  master_key: sk-seed
  track_cost_per_model: true
  max_budget: 100.0
  budget_duration: 30d
  cache: true
  # Rate Limiting
  tpm_limit: 10000  # tokens per minute
  rpm_limit: 100    # requests per minute
  success_callback: ["langfuse"]
  allowed_ips: ["*"]
"#;

    #[test]
    fn seed_rate_limits_load_without_warnings() {
        let loaded = ok(SEED_RATE_LIMITS);
        assert!(warnings(&loaded).is_empty(), "{:?}", warnings(&loaded));
        let general = &loaded.config.general;
        assert_eq!(general.tpm_limit, Some(10_000));
        assert_eq!(general.rpm_limit, Some(100));
        assert_eq!(general.max_parallel_requests, Some(10));
        assert_eq!(general.global_max_parallel_requests, None);
        assert_eq!(
            general.user_rate_limit,
            BTreeMap::from([(
                "user-1".to_string(),
                RateLimitFields {
                    rpm: Some(50),
                    tpm: Some(5000),
                    max_parallel_requests: None
                }
            )])
        );

        let loaded = ok(SEED_GENERAL_SETTINGS);
        assert_eq!(
            warnings(&loaded),
            [
                "general_settings.track_cost_per_model: unknown key, ignored",
                "general_settings.cache: not supported by Tollgate yet, ignored",
                "general_settings.success_callback: unknown key, ignored",
                "general_settings.allowed_ips: not supported by Tollgate yet, ignored",
            ]
        );
        assert_eq!(loaded.config.general.tpm_limit, Some(10_000));
        assert_eq!(loaded.config.general.rpm_limit, Some(100));
    }

    #[test]
    fn rate_limits_are_read_and_checked() {
        let loaded = ok(r#"
model_list:
  - model_name: a
    litellm_params:
      model: openai/x
      rpm: 10
      tpm: 1000
      max_parallel_requests: 2
  - model_name: b
    litellm_params:
      model: openai/y
      tpm: "500"
general_settings:
  global_max_parallel_requests: 100
  max_parallel_requests: 0
  user_rate_limit:
    user-2: {max_parallel_requests: 3}
    user-3: {}
"#);
        assert!(warnings(&loaded).is_empty(), "{:?}", warnings(&loaded));
        let config = &loaded.config;
        assert_eq!(
            config.deployments[0].limits,
            RateLimitFields {
                rpm: Some(10),
                tpm: Some(1000),
                max_parallel_requests: Some(2)
            }
        );
        assert_eq!(
            config.deployments[1].limits,
            RateLimitFields {
                rpm: None,
                tpm: Some(500),
                max_parallel_requests: None
            }
        );
        assert_eq!(config.general.global_max_parallel_requests, Some(100));
        assert_eq!(config.general.max_parallel_requests, Some(0));
        assert_eq!(config.general.rpm_limit, None);
        // A user without any limit is left out.
        assert_eq!(
            config.general.user_rate_limit,
            BTreeMap::from([(
                "user-2".to_string(),
                RateLimitFields {
                    max_parallel_requests: Some(3),
                    ..RateLimitFields::default()
                }
            )])
        );

        assert_eq!(
            errors(r#"
model_list:
  - model_name: a
    litellm_params:
      model: openai/x
      rpm: -1
      tpm: 1.5
      max_parallel_requests: many
general_settings:
  rpm_limit: -5
  tpm_limit: 2.5
  global_max_parallel_requests: [1]
  max_parallel_requests: -1
  user_rate_limit:
    user-1: {rpm: -1, tpm: 0.5, burst: 3}
    user-2: 7
"#),
            [
                "general_settings.rpm_limit: must be a whole number, 0 or more",
                "general_settings.tpm_limit: must be a whole number, 0 or more",
                "general_settings.global_max_parallel_requests: must be a number, got a list",
                "general_settings.max_parallel_requests: must be a whole number, 0 or more",
                "general_settings.user_rate_limit.user-1.rpm: must be a whole number, 0 or more",
                "general_settings.user_rate_limit.user-1.tpm: must be a whole number, 0 or more",
                "general_settings.user_rate_limit.user-2: expected a mapping of rpm, tpm, max_parallel_requests, got a number",
                "model_list[0].litellm_params.rpm: must be a whole number, 0 or more",
                "model_list[0].litellm_params.tpm: must be a whole number, 0 or more",
                "model_list[0].litellm_params.max_parallel_requests: must be a number, got \"many\"",
            ]
        );
        assert_eq!(
            errors("general_settings:\n  user_rate_limit: [user-1]\n"),
            ["general_settings.user_rate_limit: expected a mapping of user ids to limits, got a list"]
        );
    }

    #[test]
    fn spend_log_retention_is_checked() {
        let loaded = ok("general_settings:\n  maximum_spend_logs_retention_period: 7d\n  maximum_spend_logs_retention_interval: 12h\n");
        assert_eq!(
            loaded.config.general.spend_logs_retention_ms,
            Some(7 * 86_400_000)
        );
        assert_eq!(
            loaded.config.general.spend_logs_retention_interval_ms,
            12 * 3_600_000
        );
        assert!(warnings(&loaded).is_empty(), "{:?}", warnings(&loaded));
        let loaded = ok("general_settings:\n  maximum_spend_logs_retention_period: 3600s\n");
        assert_eq!(
            loaded.config.general.spend_logs_retention_ms,
            Some(3_600_000)
        );
        assert_eq!(
            loaded.config.general.spend_logs_retention_interval_ms,
            DEFAULT_RETENTION_INTERVAL_MS
        );
        let loaded = ok("general_settings:\n  maximum_spend_logs_retention_interval: 1d\n");
        assert_eq!(loaded.config.general.spend_logs_retention_ms, None);
        assert_eq!(
            warnings(&loaded),
            ["general_settings.maximum_spend_logs_retention_interval: has no effect without maximum_spend_logs_retention_period, ignored"]
        );
        assert_eq!(
            errors("general_settings:\n  maximum_spend_logs_retention_period: 7 days\n  maximum_spend_logs_retention_interval: 0s\n"),
            [
                "general_settings.maximum_spend_logs_retention_period: unknown duration unit in \"7 days\" (use s, m, h, d, w or mo)",
                "general_settings.maximum_spend_logs_retention_interval: must be at least 1s, got \"0s\"",
            ]
        );
        assert_eq!(
            errors("general_settings:\n  maximum_spend_logs_retention_period: [1]\n"),
            ["general_settings.maximum_spend_logs_retention_period: must be a string, got a list"]
        );
    }

    #[test]
    fn alerting_webhook_is_read_and_other_channels_are_reported() {
        let loaded = ok("general_settings:\n  alerting: [webhook, slack]\n");
        assert!(loaded.config.general.alerting_webhook);
        assert_eq!(
            warnings(&loaded),
            ["general_settings.alerting[1]: \"slack\" alerts are not supported yet (only \"webhook\"), ignored"]
        );
        assert!(
            !ok("general_settings:\n  alerting: [slack]\n")
                .config
                .general
                .alerting_webhook
        );
        assert_eq!(
            errors("general_settings:\n  alerting: webhook\n"),
            ["general_settings.alerting: must be a list of strings, got a string"]
        );
    }

    #[test]
    fn api_env_prefixes_are_checked() {
        let loaded = ok("general_settings:\n  api_env_prefixes: [TOLLGATE_P_, OPENAI_]\n");
        assert_eq!(
            loaded.config.general.api_env_prefixes,
            ["TOLLGATE_P_", "OPENAI_"]
        );
        let loaded = ok("general_settings:\n  api_env_prefixes: 'A_, B_'\n");
        assert_eq!(loaded.config.general.api_env_prefixes, ["A_", "B_"]);
        assert_eq!(
            errors("general_settings:\n  api_env_prefixes: ['', 'A-B', 3]\n"),
            [
                "general_settings.api_env_prefixes[2]: must be a string, got a number",
                "general_settings.api_env_prefixes[0]: an empty prefix would allow every environment variable; name a prefix such as TOLLGATE_PROVIDER_",
                "general_settings.api_env_prefixes[1]: \"A-B\" is not a prefix of environment variable names (letters, digits and _)",
            ]
        );
        assert_eq!(
            errors("general_settings:\n  api_env_prefixes: {a: 1}\n"),
            ["general_settings.api_env_prefixes: must be a list of strings, got a mapping"]
        );
        assert!(EnvAllowlist::new(vec![String::new()]).is_err());
        let allowlist = EnvAllowlist::new(vec!["A_".into()]).unwrap();
        assert!(allowlist.allows("A_KEY") && !allowlist.allows("B_KEY") && !allowlist.allows("A"));
    }

    #[test]
    fn errors_name_env_references_instead_of_their_values() {
        let text = "model_list:\n  - model_name: a\n    litellm_params:\n      model: os.environ/SECRET\n      max_tokens: os.environ/SECRET\n";
        let errs = errors_env(text, &[("SECRET", "sk-env-secret")]);
        assert_eq!(
            errs,
            [
                r#"model_list[0].litellm_params.model: expected "<provider>/<model>", got the value of os.environ/SECRET"#
            ]
        );
        let text = "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      max_tokens: os.environ/SECRET\n";
        assert_eq!(
            errors_env(text, &[("SECRET", "sk-env-secret")]),
            ["model_list[0].litellm_params.max_tokens: must be a number, got the value of os.environ/SECRET"]
        );
        // A value written in the file is quoted as before.
        assert_eq!(
            errors("general_settings:\n  max_request_size_mb: lots\n"),
            ["general_settings.max_request_size_mb: must be a number, got \"lots\""]
        );
    }

    #[test]
    fn price_keys_load_without_warnings() {
        let text = r#"
general_settings:
  cost_per_token: {gpt-4: 0.00006, "local": 0}
  model_prices_file: /etc/tollgate/prices.json
model_list:
  - model_name: a
    litellm_params:
      model: openai/gpt-4o
      input_cost_per_token: 0.0000025
      output_cost_per_token: 1.0e-5
      cache_read_input_token_cost: "1.25e-6"
      cache_creation_input_token_cost: os.environ/CACHE_WRITE_PRICE
      output_cost_per_reasoning_token: 0
    model_info:
      base_model: gpt-4o-2024-08-06
      input_cost_per_token: 0.000003
      cache_read_input_token_cost: 0
  - model_name: b
    litellm_params: {model: anthropic/claude-haiku-4-5}
"#;
        let loaded = ok_env(text, &[("CACHE_WRITE_PRICE", "3e-6")]);
        assert_eq!(warnings(&loaded), Vec::<String>::new());
        let general = &loaded.config.general;
        assert_eq!(
            general.cost_per_token,
            BTreeMap::from([("gpt-4".to_string(), 6e-5), ("local".to_string(), 0.0)])
        );
        assert_eq!(
            general.model_prices_file.as_deref(),
            Some(Path::new("/etc/tollgate/prices.json"))
        );
        let d = &loaded.config.deployments;
        assert_eq!(
            d[0].pricing,
            Prices {
                input_cost_per_token: Some(2.5e-6),
                output_cost_per_token: Some(1e-5),
                cache_read_input_token_cost: Some(1.25e-6),
                cache_creation_input_token_cost: Some(3e-6),
                output_cost_per_reasoning_token: Some(0.0),
            }
        );
        assert_eq!(
            d[0].model_info,
            Some(serde_json::json!({"base_model": "gpt-4o-2024-08-06",
                "input_cost_per_token": 0.000003, "cache_read_input_token_cost": 0}))
        );
        assert_eq!(d[1].pricing, Prices::default());
        // The API takes the same keys (numbers or numeric strings).
        let entry = serde_json::json!({"model_name": "m", "litellm_params": {
            "model": "openai/x", "input_cost_per_token": "2e-7", "output_cost_per_token": 8e-7}});
        let (deployment, warnings) = parse_model_entry(&entry).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            deployment.pricing,
            Prices {
                input_cost_per_token: Some(2e-7),
                output_cost_per_token: Some(8e-7),
                ..Prices::default()
            }
        );
    }

    #[test]
    fn bad_prices_are_errors_naming_the_path() {
        let text = r#"
general_settings:
  cost_per_token: {gpt-4: -1, gpt-3: cheap, "": 1e-6}
  model_prices_file: ""
model_list:
  - model_name: a
    litellm_params:
      model: openai/gpt-4o
      input_cost_per_token: -0.000001
      output_cost_per_token: [1]
      cache_read_input_token_cost: free
      cache_creation_input_token_cost: .inf
      output_cost_per_reasoning_token: .nan
  - model_name: b
    litellm_params: {model: openai/gpt-4o}
    model_info: {input_cost_per_token: "1e-6", output_cost_per_token: -2, base_model: 4}
  - model_name: c
    litellm_params: {model: openai/gpt-4o}
    model_info: {base_model: " "}
"#;
        assert_eq!(
            errors(text),
            [
                "general_settings.cost_per_token.gpt-4: must be a non-negative number (US dollars per token)",
                "general_settings.cost_per_token.gpt-3: must be a number, got \"cheap\"",
                "general_settings.cost_per_token: a model name must not be empty",
                "general_settings.model_prices_file: must not be empty (remove it to use the built-in prices alone)",
                "model_list[0].litellm_params.input_cost_per_token: must be a non-negative number (US dollars per token)",
                "model_list[0].litellm_params.output_cost_per_token: must be a number, got a list",
                "model_list[0].litellm_params.cache_read_input_token_cost: must be a number, got \"free\"",
                "model_list[0].litellm_params.cache_creation_input_token_cost: must be a non-negative number (US dollars per token)",
                "model_list[0].litellm_params.output_cost_per_reasoning_token: must be a non-negative number (US dollars per token)",
                "model_list[1].model_info.input_cost_per_token: must be a number, got a string",
                "model_list[1].model_info.output_cost_per_token: must be a non-negative number (US dollars per token)",
                "model_list[1].model_info.base_model: must be a string, got a number",
                "model_list[2].model_info.base_model: must not be empty",
            ]
        );
        assert_eq!(
            errors("general_settings:\n  cost_per_token: 0.00006\n"),
            ["general_settings.cost_per_token: must be a mapping of model names to US dollars per token, got a number"]
        );
        // Through the API, with paths relative to the entry.
        let entry = serde_json::json!({"model_name": "m", "litellm_params": {
            "model": "openai/x", "output_cost_per_token": -1}});
        let issues = parse_model_entry(&entry).unwrap_err();
        assert_eq!(
            issues.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["litellm_params.output_cost_per_token: must be a non-negative number (US dollars per token)"]
        );
    }

    #[test]
    fn a_relative_price_file_is_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "general_settings:\n  model_prices_file: prices/mine.json\n",
        )
        .unwrap();
        let loaded = load_file(&path).unwrap();
        assert_eq!(
            loaded.config.general.model_prices_file,
            Some(dir.path().join("prices/mine.json"))
        );
        std::fs::write(
            &path,
            "general_settings:\n  model_prices_file: /abs/p.json\n",
        )
        .unwrap();
        assert_eq!(
            load_file(&path).unwrap().config.general.model_prices_file,
            Some(PathBuf::from("/abs/p.json"))
        );
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let loaded = ok("general_settings: {master_key: sk-master-secret}\nmodel_list:\n  - model_name: a\n    litellm_params: {model: openai/x, api_key: sk-provider-secret}\n");
        let debug = format!("{:?}", loaded.config);
        assert!(!debug.contains("sk-master-secret"), "{debug}");
        assert!(!debug.contains("sk-provider-secret"), "{debug}");
    }
}
