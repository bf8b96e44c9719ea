//! Routing: `router_settings` (with the routing keys of `litellm_settings` and the top-level
//! `model_group_alias`) and the routing fields of a deployment's `litellm_params` (`weight`,
//! `order`, `tags`, `timeout`, `stream_timeout`, `num_retries` / `max_retries`).
//!
//! They are read with the rest of the file, checked against the model groups of
//! `model_list` (an alias or a fallback naming a group that does not exist is an error), and
//! resolved with LiteLLM Router's defaults into what the filters get: every field of
//! `tollgate.v1.RouterSettings` is sent explicitly, so a filter needs no defaults of its
//! own.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};
use tollgate_catalogue::PolicyClass;

use super::{key_name, shown, shown_value, type_name, Checker, DeploymentConfig};
use crate::proto;

/// LiteLLM Router's `num_retries` when none is given.
pub const DEFAULT_NUM_RETRIES: u32 = 2;
/// LiteLLM Router's `allowed_fails` when none is given.
pub const DEFAULT_ALLOWED_FAILS: u32 = 3;
/// LiteLLM Router's `cooldown_time` (5 s) when none is given, in milliseconds.
pub const DEFAULT_COOLDOWN_MS: u64 = 5_000;

/// The longest duration a routing field takes, in seconds (a year): longer is a mistake,
/// and milliseconds of it fit every integer they are sent in.
const MAX_SECONDS: f64 = 31_536_000.0;

/// The `router_settings` keys Tollgate reads.
const ROUTER_KEYS: &[&str] = &[
    "routing_strategy",
    "routing_strategy_args",
    "model_group_alias",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "default_fallbacks",
    "num_retries",
    "retry_policy",
    "retry_after",
    "allowed_fails",
    "allowed_fails_policy",
    "cooldown_time",
    "disable_cooldowns",
    "timeout",
    "stream_timeout",
    "stream_idle_timeout",
    "enable_tag_filtering",
    "tag_filtering_match_any",
    "enable_pre_call_checks",
];

/// `router_settings` keys LiteLLM knows and Tollgate does not implement yet.
#[rustfmt::skip]
const KNOWN_UNSUPPORTED_ROUTER_KEYS: &[&str] = &[
    "redis_host", "redis_port", "redis_password", "redis_db", "redis_url", "cache_responses",
    "cache_kwargs", "caching_groups", "client_ttl", "default_max_parallel_requests",
    "default_priority", "polling_interval", "max_fallbacks", "default_litellm_params",
    "debug_level", "set_verbose", "provider_budget_config", "model_group_retry_policy",
    "router_general_settings", "optional_pre_call_checks", "deployment_affinity_ttl_seconds",
    "ignore_invalid_deployments", "search_tools", "guardrail_list", "alerting_config",
    "assistants_config", "routing_groups", "enable_pre_call_check",
];

/// The routing keys of `litellm_settings` (LiteLLM reads them there too; `router_settings`
/// wins where both give one).
pub(super) const LITELLM_ROUTING_KEYS: &[&str] = &[
    "num_retries",
    "request_timeout",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "default_fallbacks",
    "allowed_fails",
    "cooldown_time",
];

/// The routing keys of a deployment's `litellm_params`.
pub(super) const DEPLOYMENT_ROUTING_PARAMS: &[&str] = &[
    "weight",
    "order",
    "tags",
    "timeout",
    "stream_timeout",
    "num_retries",
    "max_retries",
];

/// `routing_strategy`; stored under LiteLLM's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoutingStrategy {
    /// `simple-shuffle` (LiteLLM's default): at random, weighted.
    #[default]
    #[serde(rename = "simple-shuffle")]
    SimpleShuffle,
    /// `least-busy`: the fewest requests in flight.
    #[serde(rename = "least-busy")]
    LeastBusy,
    /// `latency-based-routing`: the lowest recent latency.
    #[serde(rename = "latency-based-routing")]
    LatencyBased,
    /// `usage-based-routing` (v1 and v2): the lowest usage this minute.
    #[serde(rename = "usage-based-routing")]
    UsageBased,
    /// `cost-based-routing`: the cheapest.
    #[serde(rename = "cost-based-routing")]
    CostBased,
}

/// The names `routing_strategy` takes, with what each means (LiteLLM's, and the seed
/// configs' short `latency-based`).
const STRATEGY_NAMES: &[(&str, RoutingStrategy)] = &[
    ("simple-shuffle", RoutingStrategy::SimpleShuffle),
    ("least-busy", RoutingStrategy::LeastBusy),
    ("latency-based-routing", RoutingStrategy::LatencyBased),
    ("latency-based", RoutingStrategy::LatencyBased),
    ("usage-based-routing", RoutingStrategy::UsageBased),
    ("usage-based-routing-v2", RoutingStrategy::UsageBased),
    ("cost-based-routing", RoutingStrategy::CostBased),
];

impl RoutingStrategy {
    /// The protocol enum.
    pub fn to_proto(self) -> proto::RoutingStrategy {
        match self {
            RoutingStrategy::SimpleShuffle => proto::RoutingStrategy::SimpleShuffle,
            RoutingStrategy::LeastBusy => proto::RoutingStrategy::LeastBusy,
            RoutingStrategy::LatencyBased => proto::RoutingStrategy::LatencyBased,
            RoutingStrategy::UsageBased => proto::RoutingStrategy::UsageBased,
            RoutingStrategy::CostBased => proto::RoutingStrategy::CostBased,
        }
    }
}

/// A count per LiteLLM error class (`retry_policy`, `allowed_fails_policy`); `None`: the
/// class takes the general count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorClassCounts {
    /// `TimeoutError...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    /// `RateLimitError...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// `InternalServerError...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_error: Option<u32>,
    /// `AuthenticationError...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Option<u32>,
    /// `BadRequestError...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bad_request: Option<u32>,
    /// `ContentPolicyViolationError...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_policy: Option<u32>,
}

impl ErrorClassCounts {
    /// The count of LiteLLM's class `class` ("RateLimitError"), when it is one.
    fn slot(&mut self, class: &str) -> Option<&mut Option<u32>> {
        PolicyClass::from_litellm_name(class).map(|class| self.count_mut(class))
    }

    /// The count of `class`.
    fn count_mut(&mut self, class: PolicyClass) -> &mut Option<u32> {
        match class {
            PolicyClass::Timeout => &mut self.timeout,
            PolicyClass::RateLimit => &mut self.rate_limit,
            PolicyClass::InternalServer => &mut self.server_error,
            PolicyClass::Authentication => &mut self.authentication,
            PolicyClass::BadRequest => &mut self.bad_request,
            PolicyClass::ContentPolicyViolation => &mut self.content_policy,
        }
    }
}

/// One `model_group_alias` entry: a name clients send that stands for a model group. An
/// alias given as a list of groups is one entry per group, with the same alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAlias {
    /// The name clients send.
    pub alias: String,
    /// The model group (`model_name`) it stands for.
    pub model: String,
    /// Left out of `/v1/models` (`{model, hidden: true}`).
    #[serde(default)]
    pub hidden: bool,
}

/// One entry of a fallbacks list: the groups tried, in order, once `model` failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupFallbacks {
    /// The model group (or alias) that failed.
    pub model: String,
    /// The groups (or aliases) tried next.
    pub fallbacks: Vec<String>,
}

/// `router_settings` resolved, LiteLLM's defaults applied (what `tollgate.v1.RouterSettings`
/// carries; see its comments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouterConfig {
    /// `routing_strategy`.
    pub strategy: RoutingStrategy,
    /// `routing_strategy_args.lowest_latency_buffer`.
    pub lowest_latency_buffer: f64,
    /// `routing_strategy_args.ttl`, in milliseconds; 0: the filter's default (one hour).
    pub latency_ttl_ms: u64,
    /// `model_group_alias`.
    pub aliases: Vec<GroupAlias>,
    /// `fallbacks`.
    pub fallbacks: Vec<GroupFallbacks>,
    /// `context_window_fallbacks`.
    pub context_window_fallbacks: Vec<GroupFallbacks>,
    /// `content_policy_fallbacks`.
    pub content_policy_fallbacks: Vec<GroupFallbacks>,
    /// `default_fallbacks` (or a `{"*": [...]}` entry of `fallbacks`).
    pub default_fallbacks: Vec<String>,
    /// `num_retries` (or `retry_policy.max_retries`).
    pub num_retries: u32,
    /// `retry_policy`'s per-class retries.
    pub retry_policy: ErrorClassCounts,
    /// `retry_after` (or `retry_policy.base_delay`), in milliseconds.
    pub retry_base_delay_ms: u64,
    /// `retry_policy.max_delay`, in milliseconds.
    pub retry_max_delay_ms: u64,
    /// `disable_cooldowns`.
    pub disable_cooldowns: bool,
    /// `allowed_fails`.
    pub allowed_fails: u32,
    /// `allowed_fails_policy`.
    pub allowed_fails_policy: ErrorClassCounts,
    /// `cooldown_time`, in milliseconds.
    pub cooldown_ms: u64,
    /// `timeout` (`litellm_settings.request_timeout`), in milliseconds; 0: none.
    pub timeout_ms: u64,
    /// `stream_timeout`, in milliseconds; 0: `timeout_ms`.
    pub stream_timeout_ms: u64,
    /// `stream_idle_timeout` (Tollgate's): the longest a request's stream may go without a
    /// byte either way, in milliseconds, once it has started (Envoy's stream idle timeout).
    pub stream_idle_timeout_ms: u64,
    /// `enable_tag_filtering`.
    pub tag_filtering: bool,
}

/// Envoy's stream idle timeout when `stream_idle_timeout` is not set: 10 minutes, for
/// reasoning models that think long before their first token.
pub const DEFAULT_STREAM_IDLE_TIMEOUT_MS: u64 = 600_000;

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            strategy: RoutingStrategy::SimpleShuffle,
            lowest_latency_buffer: 0.0,
            latency_ttl_ms: 0,
            aliases: Vec::new(),
            fallbacks: Vec::new(),
            context_window_fallbacks: Vec::new(),
            content_policy_fallbacks: Vec::new(),
            default_fallbacks: Vec::new(),
            num_retries: DEFAULT_NUM_RETRIES,
            retry_policy: ErrorClassCounts::default(),
            retry_base_delay_ms: 0,
            retry_max_delay_ms: 0,
            disable_cooldowns: false,
            allowed_fails: DEFAULT_ALLOWED_FAILS,
            allowed_fails_policy: ErrorClassCounts::default(),
            cooldown_ms: DEFAULT_COOLDOWN_MS,
            timeout_ms: 0,
            stream_timeout_ms: 0,
            stream_idle_timeout_ms: DEFAULT_STREAM_IDLE_TIMEOUT_MS,
            tag_filtering: false,
        }
    }
}

fn fallbacks_to_proto(lists: &[GroupFallbacks]) -> Vec<proto::Fallbacks> {
    lists
        .iter()
        .map(|list| proto::Fallbacks {
            model: list.model.clone(),
            fallbacks: list.fallbacks.clone(),
        })
        .collect()
}

impl RouterConfig {
    /// The protocol message, every field explicit.
    pub fn to_proto(&self) -> proto::RouterSettings {
        let retries = &self.retry_policy;
        let fails = &self.allowed_fails_policy;
        proto::RouterSettings {
            strategy: self.strategy.to_proto() as i32,
            lowest_latency_buffer: self.lowest_latency_buffer,
            latency_ttl_ms: self.latency_ttl_ms,
            aliases: self
                .aliases
                .iter()
                .map(|alias| proto::ModelGroupAlias {
                    alias: alias.alias.clone(),
                    model: alias.model.clone(),
                    hidden: alias.hidden,
                })
                .collect(),
            fallbacks: fallbacks_to_proto(&self.fallbacks),
            context_window_fallbacks: fallbacks_to_proto(&self.context_window_fallbacks),
            content_policy_fallbacks: fallbacks_to_proto(&self.content_policy_fallbacks),
            default_fallbacks: self.default_fallbacks.clone(),
            retries: Some(proto::RetryPolicy {
                num_retries: self.num_retries,
                timeout: retries.timeout,
                rate_limit: retries.rate_limit,
                server_error: retries.server_error,
                authentication: retries.authentication,
                bad_request: retries.bad_request,
                content_policy: retries.content_policy,
            }),
            cooldown: Some(proto::CooldownPolicy {
                disabled: self.disable_cooldowns,
                allowed_fails: self.allowed_fails,
                timeout: fails.timeout,
                rate_limit: fails.rate_limit,
                server_error: fails.server_error,
                authentication: fails.authentication,
                bad_request: fails.bad_request,
                content_policy: fails.content_policy,
                cooldown_ms: self.cooldown_ms,
            }),
            timeout_ms: self.timeout_ms,
            stream_timeout_ms: self.stream_timeout_ms,
            tag_filtering: self.tag_filtering,
            retry_base_delay_ms: self.retry_base_delay_ms,
            retry_max_delay_ms: self.retry_max_delay_ms,
        }
    }
}

/// The routing fields of one deployment's `litellm_params`; `None` (empty): not given, the
/// router's apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeploymentRouting {
    /// `weight` (simple-shuffle), greater than 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// `order`: priority tier, 1 first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    /// `tags` (tag-based routing), without repeats.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// `timeout`, in milliseconds (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `stream_timeout`, in milliseconds (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_timeout_ms: Option<u64>,
    /// `num_retries` (or `max_retries`, the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
}

impl DeploymentRouting {
    /// Whether no field is given (stored as NULL).
    pub fn is_empty(&self) -> bool {
        *self == DeploymentRouting::default()
    }

    /// The fields as `litellm_params` members (seconds for the timeouts), for the
    /// management API's view of a model and for rebuilding an entry to update.
    pub fn to_params(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut params = serde_json::Map::new();
        let seconds = |ms: u64| serde_json::Value::from(ms as f64 / 1000.0);
        if let Some(weight) = self.weight {
            params.insert("weight".into(), serde_json::Value::from(weight));
        }
        if let Some(order) = self.order {
            params.insert("order".into(), serde_json::Value::from(order));
        }
        if !self.tags.is_empty() {
            params.insert("tags".into(), serde_json::Value::from(self.tags.clone()));
        }
        if let Some(ms) = self.timeout_ms {
            params.insert("timeout".into(), seconds(ms));
        }
        if let Some(ms) = self.stream_timeout_ms {
            params.insert("stream_timeout".into(), seconds(ms));
        }
        if let Some(retries) = self.num_retries {
            params.insert("num_retries".into(), serde_json::Value::from(retries));
        }
        params
    }
}

/// A value with the path of the field it was read from.
#[derive(Debug, Clone)]
struct Located<T> {
    path: String,
    value: T,
}

/// A list of model group names with its path, each name with its own.
type LocatedNames = Located<Vec<Located<String>>>;

/// One alias as written: its entries share the name, one per group it stands for.
#[derive(Debug, Clone)]
struct AliasEntry {
    alias: String,
    hidden: bool,
    /// The model groups, each with its path.
    models: Vec<Located<String>>,
}

/// One `{model: [fallbacks]}` entry as written.
#[derive(Debug, Clone)]
struct FallbackEntry {
    /// Path of the list item (`router_settings.fallbacks[0]`).
    path: String,
    model: String,
    fallbacks: Vec<Located<String>>,
}

/// The routing keys one section gives (`router_settings`, `litellm_settings`); `None`: not
/// given there.
#[derive(Default)]
struct RoutingKeys {
    strategy: Option<RoutingStrategy>,
    lowest_latency_buffer: Option<f64>,
    latency_ttl_ms: Option<u64>,
    aliases: Option<Vec<AliasEntry>>,
    fallbacks: Option<Located<Vec<FallbackEntry>>>,
    context_window_fallbacks: Option<Located<Vec<FallbackEntry>>>,
    content_policy_fallbacks: Option<Located<Vec<FallbackEntry>>>,
    default_fallbacks: Option<LocatedNames>,
    num_retries: Option<Located<u32>>,
    retry_policy: ErrorClassCounts,
    /// `retry_policy.max_retries` (the seed configs' name for `num_retries`).
    policy_max_retries: Option<Located<u32>>,
    retry_after_ms: Option<Located<u64>>,
    /// `retry_policy.base_delay` (the seed configs' name for `retry_after`).
    policy_base_delay_ms: Option<Located<u64>>,
    policy_max_delay_ms: Option<Located<u64>>,
    allowed_fails: Option<Located<u32>>,
    allowed_fails_policy: ErrorClassCounts,
    cooldown_ms: Option<Located<u64>>,
    disable_cooldowns: Option<bool>,
    timeout_ms: Option<Located<u64>>,
    stream_timeout_ms: Option<u64>,
    stream_idle_timeout_ms: Option<u64>,
    tag_filtering: Option<bool>,
}

/// The model groups of `model_list`: those Tollgate serves, and those named in the file
/// whose every deployment was skipped (an unsupported provider).
pub(super) struct ModelGroups {
    served: BTreeSet<String>,
    skipped: BTreeSet<String>,
}

impl ModelGroups {
    /// The groups of `deployments` (served) and of the raw `model_list` of `root`.
    pub(super) fn of(root: &Mapping, deployments: &[DeploymentConfig]) -> ModelGroups {
        let served: BTreeSet<String> = deployments
            .iter()
            .map(|deployment| deployment.model_name.clone())
            .collect();
        let mut skipped = BTreeSet::new();
        if let Some(Value::Sequence(entries)) = root.get("model_list") {
            for entry in entries {
                let name = match entry.get("model_name") {
                    Some(Value::String(name)) => name.clone(),
                    Some(Value::Number(number)) => number.to_string(),
                    _ => continue,
                };
                if !served.contains(&name) {
                    skipped.insert(name);
                }
            }
        }
        ModelGroups { served, skipped }
    }
}

/// Milliseconds in `seconds` (checked finite, non-negative and at most [`MAX_SECONDS`]).
fn to_ms(seconds: f64) -> u64 {
    // In range by the caller's check, so the cast neither wraps nor saturates.
    (seconds * 1000.0).round() as u64
}

impl Checker<'_> {
    /// A whole number from 0 to 2^32 - 1 (retries, allowed failures).
    fn count(&mut self, map: &Mapping, key: &str, path: &str) -> Option<u32> {
        let value = self.number(map, key, path)??;
        if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= f64::from(u32::MAX)
        {
            // Checked whole and in range.
            Some(value as u32)
        } else {
            self.error(
                &format!("{path}.{key}"),
                "must be a whole number, 0 or more",
            );
            None
        }
    }

    /// A duration in seconds (fractions allowed), as milliseconds; `positive` refuses 0.
    pub(super) fn seconds_ms(
        &mut self,
        map: &Mapping,
        key: &str,
        path: &str,
        positive: bool,
    ) -> Option<u64> {
        let value = self.number(map, key, path)??;
        let field = format!("{path}.{key}");
        let too_small = value < 0.0 || (positive && value == 0.0);
        if !value.is_finite() || too_small || value > MAX_SECONDS {
            let bound = if positive {
                "greater than 0"
            } else {
                "0 or more"
            };
            self.error(
                &field,
                format!("must be a number of seconds {bound}, at most {MAX_SECONDS} (a year)"),
            );
            return None;
        }
        let ms = to_ms(value);
        if positive && ms == 0 {
            self.error(
                &field,
                "must be a number of seconds greater than 0, at least 0.001 (a millisecond)",
            );
            return None;
        }
        Some(ms)
    }

    /// [`Self::count`] with the field's path.
    fn located_count(&mut self, map: &Mapping, key: &str, path: &str) -> Option<Located<u32>> {
        self.count(map, key, path).map(|value| Located {
            path: format!("{path}.{key}"),
            value,
        })
    }

    /// [`Self::seconds_ms`] with the field's path.
    fn located_ms(
        &mut self,
        map: &Mapping,
        key: &str,
        path: &str,
        positive: bool,
    ) -> Option<Located<u64>> {
        self.seconds_ms(map, key, path, positive)
            .map(|value| Located {
                path: format!("{path}.{key}"),
                value,
            })
    }

    /// A boolean, also accepted as the string "true" or "false" (so it can come from the
    /// environment).
    pub(super) fn boolean(&mut self, map: &Mapping, key: &str, path: &str) -> Option<bool> {
        let field = format!("{path}.{key}");
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(value)) => Some(*value),
            Some(Value::String(raw)) => {
                let resolved = self.resolve(&field, raw)?;
                match resolved.trim().to_ascii_lowercase().as_str() {
                    "true" => Some(true),
                    "false" => Some(false),
                    _ => {
                        self.error(
                            &field,
                            format!("must be true or false, got {}", shown(raw, &resolved)),
                        );
                        None
                    }
                }
            }
            Some(other) => {
                self.error(
                    &field,
                    format!("must be true or false, got {}", type_name(other)),
                );
                None
            }
        }
    }

    /// One model group name (a string, or a number as written).
    fn group_name(&mut self, value: &Value, path: &str) -> Option<String> {
        match value {
            Value::String(raw) => self.resolve(path, raw),
            Value::Number(number) => Some(number.to_string()),
            other => {
                self.error(
                    path,
                    format!("must be a model group name, got {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A list of model group names; `None` when it is not a list (error recorded). Items
    /// that are not names are errors and left out.
    fn group_names(&mut self, value: &Value, path: &str) -> Option<Vec<Located<String>>> {
        let Value::Sequence(items) = value else {
            self.error(
                path,
                format!(
                    "must be a list of model group names, got {}",
                    type_name(value)
                ),
            );
            return None;
        };
        let mut names = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            if let Some(name) = self.group_name(item, &item_path) {
                names.push(Located {
                    path: item_path,
                    value: name,
                });
            }
        }
        Some(names)
    }

    /// `routing_strategy`.
    fn routing_strategy(&mut self, map: &Mapping, path: &str) -> Option<RoutingStrategy> {
        let field = format!("{path}.routing_strategy");
        let name = self.string(map, "routing_strategy", path)?;
        let found = STRATEGY_NAMES
            .iter()
            .find(|(known, _)| *known == name.trim())
            .map(|(_, strategy)| *strategy);
        if found.is_none() {
            let valid: Vec<String> = STRATEGY_NAMES
                .iter()
                .map(|(known, _)| format!("{known:?}"))
                .collect();
            self.error(
                &field,
                format!(
                    "must be one of {}, got {}",
                    valid.join(", "),
                    shown_value(&name)
                ),
            );
        }
        found
    }

    /// `routing_strategy_args`: its `lowest_latency_buffer` and `ttl` (in ms). LiteLLM's
    /// `max_latency_list_size` sizes its own list of samples; the filter keeps a moving
    /// average instead.
    fn routing_strategy_args(&mut self, map: &Mapping, path: &str) -> (Option<f64>, Option<u64>) {
        let field = format!("{path}.routing_strategy_args");
        let args = match map.get("routing_strategy_args") {
            None | Some(Value::Null) => return (None, None),
            Some(Value::Mapping(args)) => args,
            Some(other) => {
                self.error(
                    &field,
                    format!("expected a mapping, got {}", type_name(other)),
                );
                return (None, None);
            }
        };
        self.warn_other_keys(
            args,
            &field,
            &["lowest_latency_buffer", "ttl", "max_latency_list_size"],
            &[],
        );
        let ttl = self.seconds_ms(args, "ttl", &field, true);
        let buffer = match self.number(args, "lowest_latency_buffer", &field) {
            Some(Some(buffer)) if buffer.is_finite() && buffer >= 0.0 => Some(buffer),
            Some(Some(_)) => {
                self.error(
                    &format!("{field}.lowest_latency_buffer"),
                    "must be a number, 0 or more",
                );
                None
            }
            _ => None,
        };
        (buffer, ttl)
    }

    /// `model_group_alias` (at `path`): `alias: group`, `alias: {model: group, hidden:
    /// true}` (LiteLLM's forms) or `alias: [group, ...]` (the seed configs': the union of
    /// the groups).
    fn model_group_alias(&mut self, value: &Value, path: &str) -> Option<Vec<AliasEntry>> {
        let entries = match value {
            Value::Null => return None,
            Value::Mapping(entries) => entries,
            other => {
                self.error(
                    path,
                    format!(
                        "expected a mapping of aliases to model groups, got {}",
                        type_name(other)
                    ),
                );
                return None;
            }
        };
        let mut aliases = Vec::with_capacity(entries.len());
        for (alias, target) in entries {
            let alias = key_name(alias);
            let alias_path = format!("{path}.{alias}");
            if alias.trim().is_empty() {
                self.error(path, "an alias must not be empty");
                continue;
            }
            let (models, hidden) = match target {
                Value::String(_) | Value::Number(_) => match self.group_name(target, &alias_path) {
                    Some(model) => (
                        vec![Located {
                            path: alias_path,
                            value: model,
                        }],
                        false,
                    ),
                    None => continue,
                },
                Value::Sequence(_) => match self.group_names(target, &alias_path) {
                    Some(models) if !models.is_empty() => (models, false),
                    Some(_) => {
                        self.error(&alias_path, "must name at least one model group");
                        continue;
                    }
                    None => continue,
                },
                Value::Mapping(form) => {
                    self.warn_other_keys(form, &alias_path, &["model", "hidden"], &[]);
                    let hidden = self.boolean(form, "hidden", &alias_path).unwrap_or(false);
                    let model_path = format!("{alias_path}.model");
                    match form.get("model") {
                        None | Some(Value::Null) => {
                            self.error(&model_path, "required");
                            continue;
                        }
                        Some(model) => match self.group_name(model, &model_path) {
                            Some(model) => (
                                vec![Located {
                                    path: model_path,
                                    value: model,
                                }],
                                hidden,
                            ),
                            None => continue,
                        },
                    }
                }
                other => {
                    self.error(
                        &alias_path,
                        format!(
                            "must be a model group, a list of them or {{model, hidden}}, got {}",
                            type_name(other)
                        ),
                    );
                    continue;
                }
            };
            aliases.push(AliasEntry {
                alias,
                hidden,
                models,
            });
        }
        Some(aliases)
    }

    /// A fallbacks list (`fallbacks`, `context_window_fallbacks`,
    /// `content_policy_fallbacks`): `[{group: [fallback, ...]}, ...]`.
    fn fallbacks(
        &mut self,
        map: &Mapping,
        key: &str,
        path: &str,
    ) -> Option<Located<Vec<FallbackEntry>>> {
        let field = format!("{path}.{key}");
        let items = match map.get(key) {
            None | Some(Value::Null) => return None,
            Some(Value::Sequence(items)) => items,
            Some(other) => {
                self.error(
                    &field,
                    format!(
                        "must be a list of {{model group: [fallbacks]}} mappings, got {}",
                        type_name(other)
                    ),
                );
                return None;
            }
        };
        let mut entries = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{field}[{index}]");
            let entry = match item {
                Value::Mapping(entry) if entry.len() == 1 => entry,
                Value::Mapping(entry) => {
                    self.error(
                        &item_path,
                        format!(
                            "must name exactly one model group, like {{gpt-4: [gpt-3.5-turbo]}}; names {}",
                            entry.len()
                        ),
                    );
                    continue;
                }
                other => {
                    self.error(
                        &item_path,
                        format!(
                            "must be a mapping of one model group to its fallbacks, like {{gpt-4: [gpt-3.5-turbo]}}, got {}",
                            type_name(other)
                        ),
                    );
                    continue;
                }
            };
            let Some((model, targets)) = entry.iter().next() else {
                continue;
            };
            let model = key_name(model);
            let Some(fallbacks) = self.group_names(targets, &format!("{item_path}.{model}")) else {
                continue;
            };
            entries.push(FallbackEntry {
                path: item_path,
                model,
                fallbacks,
            });
        }
        Some(Located {
            path: field,
            value: entries,
        })
    }

    /// `default_fallbacks`: a list of model groups.
    fn default_fallbacks(&mut self, map: &Mapping, path: &str) -> Option<LocatedNames> {
        let field = format!("{path}.default_fallbacks");
        let value = match map.get("default_fallbacks") {
            None | Some(Value::Null) => return None,
            Some(value) => value,
        };
        self.group_names(value, &field).map(|names| Located {
            path: field,
            value: names,
        })
    }

    /// `retry_policy`: LiteLLM's per-class retries (`RateLimitErrorRetries`, ...) and the
    /// seed configs' `{max_retries, base_delay, max_delay}` (seconds).
    fn retry_policy(&mut self, map: &Mapping, path: &str, keys: &mut RoutingKeys) {
        let field = format!("{path}.retry_policy");
        let policy = match map.get("retry_policy") {
            None | Some(Value::Null) => return,
            Some(Value::Mapping(policy)) => policy,
            Some(other) => {
                self.error(
                    &field,
                    format!("expected a mapping, got {}", type_name(other)),
                );
                return;
            }
        };
        for key in policy.keys() {
            let name = key_name(key);
            match name.as_str() {
                "max_retries" => {
                    keys.policy_max_retries = self.located_count(policy, &name, &field);
                }
                "base_delay" => {
                    keys.policy_base_delay_ms = self.located_ms(policy, &name, &field, false);
                }
                "max_delay" => {
                    keys.policy_max_delay_ms = self.located_ms(policy, &name, &field, true);
                }
                _ => {
                    let is_class = name
                        .strip_suffix("Retries")
                        .is_some_and(|class| keys.retry_policy.slot(class).is_some());
                    if !is_class {
                        self.warn(&format!("{field}.{name}"), "unknown key, ignored");
                        continue;
                    }
                    let count = self.count(policy, &name, &field);
                    if let Some(slot) = name
                        .strip_suffix("Retries")
                        .and_then(|class| keys.retry_policy.slot(class))
                    {
                        *slot = count;
                    }
                }
            }
        }
    }

    /// `allowed_fails_policy`: LiteLLM's per-class allowed failures
    /// (`RateLimitErrorAllowedFails`, ...).
    fn allowed_fails_policy(&mut self, map: &Mapping, path: &str) -> ErrorClassCounts {
        let field = format!("{path}.allowed_fails_policy");
        let mut counts = ErrorClassCounts::default();
        let policy = match map.get("allowed_fails_policy") {
            None | Some(Value::Null) => return counts,
            Some(Value::Mapping(policy)) => policy,
            Some(other) => {
                self.error(
                    &field,
                    format!("expected a mapping, got {}", type_name(other)),
                );
                return counts;
            }
        };
        for key in policy.keys() {
            let name = key_name(key);
            let is_class = name
                .strip_suffix("AllowedFails")
                .is_some_and(|class| counts.slot(class).is_some());
            if !is_class {
                self.warn(&format!("{field}.{name}"), "unknown key, ignored");
                continue;
            }
            let count = self.count(policy, &name, &field);
            if let Some(slot) = name
                .strip_suffix("AllowedFails")
                .and_then(|class| counts.slot(class))
            {
                *slot = count;
            }
        }
        counts
    }

    /// The keys of `router_settings`.
    fn router_settings(&mut self, map: &Mapping) -> RoutingKeys {
        const PATH: &str = "router_settings";
        self.warn_other_keys(map, PATH, ROUTER_KEYS, KNOWN_UNSUPPORTED_ROUTER_KEYS);
        let strategy_args = self.routing_strategy_args(map, PATH);
        let mut keys = RoutingKeys {
            strategy: self.routing_strategy(map, PATH),
            lowest_latency_buffer: strategy_args.0,
            latency_ttl_ms: strategy_args.1,
            aliases: match map.get("model_group_alias") {
                None => None,
                Some(value) => self.model_group_alias(value, &format!("{PATH}.model_group_alias")),
            },
            fallbacks: self.fallbacks(map, "fallbacks", PATH),
            context_window_fallbacks: self.fallbacks(map, "context_window_fallbacks", PATH),
            content_policy_fallbacks: self.fallbacks(map, "content_policy_fallbacks", PATH),
            default_fallbacks: self.default_fallbacks(map, PATH),
            num_retries: self.located_count(map, "num_retries", PATH),
            retry_after_ms: self.located_ms(map, "retry_after", PATH, false),
            allowed_fails: self.located_count(map, "allowed_fails", PATH),
            allowed_fails_policy: self.allowed_fails_policy(map, PATH),
            cooldown_ms: self.located_ms(map, "cooldown_time", PATH, false),
            disable_cooldowns: self.boolean(map, "disable_cooldowns", PATH),
            timeout_ms: self.located_ms(map, "timeout", PATH, true),
            stream_timeout_ms: self.seconds_ms(map, "stream_timeout", PATH, true),
            stream_idle_timeout_ms: self.seconds_ms(map, "stream_idle_timeout", PATH, true),
            tag_filtering: self.boolean(map, "enable_tag_filtering", PATH),
            ..RoutingKeys::default()
        };
        self.retry_policy(map, PATH, &mut keys);
        // Accepted without a word where they change nothing; reported where Tollgate would
        // behave otherwise than LiteLLM.
        if self.boolean(map, "tag_filtering_match_any", PATH) == Some(false) {
            self.warn(
                &format!("{PATH}.tag_filtering_match_any"),
                "false (a deployment must have every tag of the request) is not supported by Tollgate yet (a deployment with any of them matches), ignored",
            );
        }
        if self.boolean(map, "enable_pre_call_checks", PATH) == Some(true) {
            self.warn(
                &format!("{PATH}.enable_pre_call_checks"),
                "not supported by Tollgate yet (deployments are not filtered by context window before the call), ignored",
            );
        }
        keys
    }

    /// The routing keys of `litellm_settings` (see [`LITELLM_ROUTING_KEYS`]).
    fn litellm_routing(&mut self, map: &Mapping) -> RoutingKeys {
        const PATH: &str = "litellm_settings";
        RoutingKeys {
            num_retries: self.located_count(map, "num_retries", PATH),
            timeout_ms: self.located_ms(map, "request_timeout", PATH, true),
            fallbacks: self.fallbacks(map, "fallbacks", PATH),
            context_window_fallbacks: self.fallbacks(map, "context_window_fallbacks", PATH),
            content_policy_fallbacks: self.fallbacks(map, "content_policy_fallbacks", PATH),
            default_fallbacks: self.default_fallbacks(map, PATH),
            allowed_fails: self.located_count(map, "allowed_fails", PATH),
            cooldown_ms: self.located_ms(map, "cooldown_time", PATH, false),
            ..RoutingKeys::default()
        }
    }

    /// `router`'s value where it gives one, else `litellm`'s; a value of `litellm` that
    /// `router` overrides is reported (LiteLLM lets `router_settings` win too).
    fn prefer<T>(
        &mut self,
        router: Option<Located<T>>,
        litellm: Option<Located<T>>,
    ) -> Option<Located<T>> {
        match (router, litellm) {
            (Some(router), Some(litellm)) => {
                self.warn(
                    &litellm.path,
                    format!("also set as {}, which wins; ignored", router.path),
                );
                Some(router)
            }
            (router, litellm) => router.or(litellm),
        }
    }

    /// Whether `name` (at `path`) names a served model group, or when `aliases` is given an
    /// alias of one. A group whose deployments were all skipped is a warning (the file is
    /// fine, Tollgate serves less of it); anything else is an error.
    fn group_exists(
        &mut self,
        groups: &ModelGroups,
        aliases: Option<&BTreeSet<String>>,
        path: &str,
        name: &str,
    ) -> bool {
        if groups.served.contains(name) || aliases.is_some_and(|aliases| aliases.contains(name)) {
            return true;
        }
        if groups.skipped.contains(name) {
            self.warn(
                path,
                format!(
                    "model group {name:?} has no deployment Tollgate serves (all were skipped), ignored"
                ),
            );
        } else if aliases.is_some() {
            self.error(
                path,
                format!("{name:?} is not a model_name of model_list nor a model_group_alias"),
            );
        } else {
            self.error(path, format!("{name:?} is not a model_name of model_list"));
        }
        false
    }

    /// A fallbacks list checked against the model groups and aliases: entries of unknown
    /// groups dropped (with an error or a warning), a group given twice or falling back to
    /// itself an error. A `"*"` entry (LiteLLM's fallbacks of every group) is taken out and
    /// returned apart.
    fn resolve_fallbacks(
        &mut self,
        groups: &ModelGroups,
        aliases: &BTreeSet<String>,
        entries: Vec<FallbackEntry>,
        key: &str,
    ) -> (Vec<GroupFallbacks>, Option<LocatedNames>) {
        let mut resolved = Vec::with_capacity(entries.len());
        let mut every_group = None;
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for entry in entries {
            if let Some(first) = seen.get(&entry.model) {
                self.error(
                    &entry.path,
                    format!(
                        "the fallbacks of {:?} are given twice (also {first})",
                        entry.model
                    ),
                );
                continue;
            }
            seen.insert(entry.model.clone(), entry.path.clone());
            if entry.model == "*" {
                if key == "fallbacks" {
                    every_group = Some(Located {
                        path: entry.path,
                        value: entry.fallbacks,
                    });
                } else {
                    self.warn(
                        &entry.path,
                        format!(
                            "\"*\" (every model group) is supported by Tollgate only in fallbacks, not in {key}; ignored"
                        ),
                    );
                }
                continue;
            }
            if !self.group_exists(groups, Some(aliases), &entry.path, &entry.model) {
                continue;
            }
            let mut fallbacks = Vec::with_capacity(entry.fallbacks.len());
            for target in entry.fallbacks {
                if target.value == entry.model {
                    self.error(&target.path, "a model group cannot fall back to itself");
                } else if self.group_exists(groups, Some(aliases), &target.path, &target.value) {
                    fallbacks.push(target.value);
                }
            }
            resolved.push(GroupFallbacks {
                model: entry.model,
                fallbacks,
            });
        }
        (resolved, every_group)
    }

    /// Every routing key of the file resolved: `router_settings`, the routing keys of
    /// `litellm_settings` (where `router_settings` gives none) and the top-level
    /// `model_group_alias`, checked against the model groups of `deployments`, with
    /// LiteLLM's defaults for what no key gives.
    pub(super) fn router(
        &mut self,
        root: &Mapping,
        deployments: &[DeploymentConfig],
    ) -> RouterConfig {
        let groups = ModelGroups::of(root, deployments);
        let router = match root.get("router_settings") {
            None | Some(Value::Null) => RoutingKeys::default(),
            Some(Value::Mapping(map)) => self.router_settings(map),
            Some(other) => {
                self.error(
                    "router_settings",
                    format!("expected a mapping, got {}", type_name(other)),
                );
                RoutingKeys::default()
            }
        };
        // A litellm_settings that is not a mapping is reported where the section is read.
        let litellm = match root.get("litellm_settings") {
            Some(Value::Mapping(map)) => self.litellm_routing(map),
            _ => RoutingKeys::default(),
        };
        let top_level_aliases = match root.get("model_group_alias") {
            None => None,
            Some(value) => self.model_group_alias(value, "model_group_alias"),
        };

        // Aliases: router_settings' and the top level's together, router_settings' winning
        // an alias both give.
        let mut alias_entries = router.aliases.unwrap_or_default();
        for entry in top_level_aliases.unwrap_or_default() {
            if alias_entries.iter().any(|kept| kept.alias == entry.alias) {
                let path = entry
                    .models
                    .first()
                    .map(|model| model.path.clone())
                    .unwrap_or_else(|| format!("model_group_alias.{}", entry.alias));
                self.warn(
                    &path,
                    format!(
                        "also set as router_settings.model_group_alias.{}, which wins; ignored",
                        entry.alias
                    ),
                );
            } else {
                alias_entries.push(entry);
            }
        }
        let mut aliases = Vec::new();
        for entry in alias_entries {
            for model in entry.models {
                // An alias names a model group, not another alias.
                if self.group_exists(&groups, None, &model.path, &model.value) {
                    aliases.push(GroupAlias {
                        alias: entry.alias.clone(),
                        model: model.value,
                        hidden: entry.hidden,
                    });
                }
            }
        }
        let alias_names: BTreeSet<String> =
            aliases.iter().map(|alias| alias.alias.clone()).collect();

        let fallbacks = self.prefer(router.fallbacks, litellm.fallbacks);
        let context_window = self.prefer(
            router.context_window_fallbacks,
            litellm.context_window_fallbacks,
        );
        let content_policy = self.prefer(
            router.content_policy_fallbacks,
            litellm.content_policy_fallbacks,
        );
        let default_fallbacks = self.prefer(router.default_fallbacks, litellm.default_fallbacks);
        let (fallbacks, every_group) = self.resolve_fallbacks(
            &groups,
            &alias_names,
            fallbacks.map(|list| list.value).unwrap_or_default(),
            "fallbacks",
        );
        let (context_window_fallbacks, _) = self.resolve_fallbacks(
            &groups,
            &alias_names,
            context_window.map(|list| list.value).unwrap_or_default(),
            "context_window_fallbacks",
        );
        let (content_policy_fallbacks, _) = self.resolve_fallbacks(
            &groups,
            &alias_names,
            content_policy.map(|list| list.value).unwrap_or_default(),
            "content_policy_fallbacks",
        );
        let default_fallbacks = match (default_fallbacks, every_group) {
            (Some(list), Some(every)) => {
                self.error(
                    &every.path,
                    format!(
                        "gives the fallbacks of every model group, as {} does; set one",
                        list.path
                    ),
                );
                Some(list)
            }
            (list, every) => list.or(every),
        };
        let default_fallbacks: Vec<String> = default_fallbacks
            .map(|list| list.value)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|name| {
                self.group_exists(&groups, Some(&alias_names), &name.path, &name.value)
                    .then_some(name.value)
            })
            .collect();

        // retry_policy.max_retries is router_settings' too: it wins over litellm_settings.
        let router_retries = match (router.num_retries, router.policy_max_retries) {
            (Some(general), Some(policy)) if general.value != policy.value => {
                self.error(
                    &policy.path,
                    format!(
                        "differs from {} ({}): both set the retries of a request; set one",
                        general.path, general.value
                    ),
                );
                Some(general)
            }
            (general, policy) => general.or(policy),
        };
        let num_retries = self
            .prefer(router_retries, litellm.num_retries)
            .map(|count| count.value);
        let base_delay = match (router.retry_after_ms, router.policy_base_delay_ms) {
            (Some(after), Some(base)) if after.value != base.value => {
                self.error(
                    &base.path,
                    format!(
                        "differs from {}: both set the wait before a retry; set one",
                        after.path
                    ),
                );
                Some(after)
            }
            (after, base) => after.or(base),
        };
        if let (Some(base), Some(max)) = (&base_delay, &router.policy_max_delay_ms) {
            if max.value < base.value {
                self.error(
                    &max.path,
                    format!("must be at least {} (the first wait)", base.path),
                );
            }
        }
        let allowed_fails = self.prefer(router.allowed_fails, litellm.allowed_fails);
        let cooldown = self.prefer(router.cooldown_ms, litellm.cooldown_ms);
        let timeout = self.prefer(router.timeout_ms, litellm.timeout_ms);

        let defaults = RouterConfig::default();
        RouterConfig {
            strategy: router.strategy.unwrap_or(defaults.strategy),
            lowest_latency_buffer: router
                .lowest_latency_buffer
                .unwrap_or(defaults.lowest_latency_buffer),
            latency_ttl_ms: router.latency_ttl_ms.unwrap_or(defaults.latency_ttl_ms),
            aliases,
            fallbacks,
            context_window_fallbacks,
            content_policy_fallbacks,
            default_fallbacks,
            num_retries: num_retries.unwrap_or(defaults.num_retries),
            retry_policy: router.retry_policy,
            retry_base_delay_ms: base_delay.map_or(defaults.retry_base_delay_ms, |ms| ms.value),
            retry_max_delay_ms: router
                .policy_max_delay_ms
                .map_or(defaults.retry_max_delay_ms, |ms| ms.value),
            disable_cooldowns: router
                .disable_cooldowns
                .unwrap_or(defaults.disable_cooldowns),
            allowed_fails: allowed_fails.map_or(defaults.allowed_fails, |count| count.value),
            allowed_fails_policy: router.allowed_fails_policy,
            cooldown_ms: cooldown.map_or(defaults.cooldown_ms, |ms| ms.value),
            timeout_ms: timeout.map_or(defaults.timeout_ms, |ms| ms.value),
            stream_timeout_ms: router
                .stream_timeout_ms
                .unwrap_or(defaults.stream_timeout_ms),
            stream_idle_timeout_ms: router
                .stream_idle_timeout_ms
                .unwrap_or(defaults.stream_idle_timeout_ms),
            tag_filtering: router.tag_filtering.unwrap_or(defaults.tag_filtering),
        }
    }

    /// The routing fields of a deployment's `litellm_params` (see
    /// [`DEPLOYMENT_ROUTING_PARAMS`]); invalid ones are errors and left out.
    pub(super) fn deployment_routing(&mut self, params: &Mapping, path: &str) -> DeploymentRouting {
        let weight = match self.number(params, "weight", path) {
            Some(Some(weight)) if weight.is_finite() && weight > 0.0 => Some(weight),
            Some(Some(_)) => {
                self.error(&format!("{path}.weight"), "must be a number greater than 0");
                None
            }
            _ => None,
        };
        let order = match self.number(params, "order", path) {
            Some(Some(order))
                if order.fract() == 0.0 && order >= 1.0 && order <= f64::from(u32::MAX) =>
            {
                // Checked whole and in range.
                Some(order as u32)
            }
            Some(Some(_)) => {
                self.error(
                    &format!("{path}.order"),
                    "must be a whole number, 1 or more",
                );
                None
            }
            _ => None,
        };
        let tags = self.tags(params, path);
        let timeout_ms = self.seconds_ms(params, "timeout", path, true);
        let stream_timeout_ms = self.seconds_ms(params, "stream_timeout", path, true);
        let num_retries = self.count(params, "num_retries", path);
        let max_retries = self.count(params, "max_retries", path);
        let num_retries = match (num_retries, max_retries) {
            (Some(num), Some(max)) if num != max => {
                self.error(
                    &format!("{path}.max_retries"),
                    format!(
                        "differs from num_retries ({num}): both set the deployment's retries; set one"
                    ),
                );
                Some(num)
            }
            (num, max) => num.or(max),
        };
        DeploymentRouting {
            weight,
            order,
            tags,
            timeout_ms,
            stream_timeout_ms,
            num_retries,
        }
    }

    /// `tags`: a list of non-empty strings (numbers taken as written), repeats dropped.
    fn tags(&mut self, params: &Mapping, path: &str) -> Vec<String> {
        let field = format!("{path}.tags");
        let items = match params.get("tags") {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Sequence(items)) => items,
            Some(other) => {
                self.error(
                    &field,
                    format!("must be a list of strings, got {}", type_name(other)),
                );
                return Vec::new();
            }
        };
        let mut tags: Vec<String> = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{field}[{index}]");
            let tag = match item {
                Value::String(raw) => self.resolve(&item_path, raw),
                Value::Number(number) => Some(number.to_string()),
                other => {
                    self.error(
                        &item_path,
                        format!("must be a string, got {}", type_name(other)),
                    );
                    None
                }
            };
            match tag {
                Some(tag) if tag.trim().is_empty() => self.error(&item_path, "must not be empty"),
                Some(tag) if !tags.contains(&tag) => tags.push(tag),
                _ => {}
            }
        }
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, parse_model_entry, ConfigError, LoadedConfig};

    /// Deployments of every model group the seed's router settings name (and one more).
    const SEED_MODELS: &str = r#"
model_list:
  - model_name: gpt-4
    litellm_params: {model: openai/gpt-4, api_key: sk-a}
  - model_name: gpt-4-turbo
    litellm_params: {model: openai/gpt-4-turbo, api_key: sk-a}
  - model_name: gpt-3.5-turbo
    litellm_params: {model: openai/gpt-3.5-turbo, api_key: sk-a}
  - model_name: claude-3-opus
    litellm_params: {model: anthropic/claude-3-opus-20240229, api_key: sk-b}
  - model_name: claude-3-sonnet
    litellm_params: {model: anthropic/claude-3-sonnet-20240229, api_key: sk-b}
  - model_name: claude-3-haiku
    litellm_params: {model: anthropic/claude-3-haiku-20240307, api_key: sk-b}
"#;

    fn load(text: &str) -> LoadedConfig {
        match parse(text, "test.yaml", &|_| None) {
            Ok(loaded) => loaded,
            Err(error) => panic!("expected a valid config, got: {error}"),
        }
    }

    /// `SEED_MODELS` followed by `rest`.
    fn with_models(rest: &str) -> String {
        format!("{SEED_MODELS}{rest}")
    }

    fn warnings(loaded: &LoadedConfig) -> Vec<String> {
        loaded.warnings.iter().map(ToString::to_string).collect()
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text, "test.yaml", &|_| None) {
            Ok(loaded) => panic!("expected errors, got {:?}", loaded.config.router),
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(ToString::to_string).collect()
            }
            Err(other) => panic!("expected field errors, got {other}"),
        }
    }

    /// The one error of `router_settings` text over the seed's models.
    fn router_error(router_settings: &str) -> Vec<String> {
        errors(&with_models(router_settings))
    }

    fn alias(alias: &str, model: &str, hidden: bool) -> proto::ModelGroupAlias {
        proto::ModelGroupAlias {
            alias: alias.into(),
            model: model.into(),
            hidden,
        }
    }

    fn fallbacks(model: &str, to: &[&str]) -> proto::Fallbacks {
        proto::Fallbacks {
            model: model.into(),
            fallbacks: to.iter().map(|name| name.to_string()).collect(),
        }
    }

    /// RouterSettings with LiteLLM's defaults, every field written out.
    fn default_message() -> proto::RouterSettings {
        proto::RouterSettings {
            strategy: proto::RoutingStrategy::SimpleShuffle as i32,
            lowest_latency_buffer: 0.0,
            latency_ttl_ms: 0,
            aliases: vec![],
            fallbacks: vec![],
            context_window_fallbacks: vec![],
            content_policy_fallbacks: vec![],
            default_fallbacks: vec![],
            retries: Some(proto::RetryPolicy {
                num_retries: 2,
                timeout: None,
                rate_limit: None,
                server_error: None,
                authentication: None,
                bad_request: None,
                content_policy: None,
            }),
            cooldown: Some(proto::CooldownPolicy {
                disabled: false,
                allowed_fails: 3,
                timeout: None,
                rate_limit: None,
                server_error: None,
                authentication: None,
                bad_request: None,
                content_policy: None,
                cooldown_ms: 5000,
            }),
            timeout_ms: 0,
            stream_timeout_ms: 0,
            tag_filtering: false,
            retry_base_delay_ms: 0,
            retry_max_delay_ms: 0,
        }
    }

    #[test]
    fn the_seeds_router_settings_load_without_warnings() {
        // Both router_settings blocks of the seed, as one section.
        let loaded = load(&with_models(
            r#"
router_settings:
  routing_strategy: "usage-based-routing"  # or "simple-shuffle", "least-busy", "latency-based"
  model_group_alias:
    gpt-4-group: ["gpt-4", "gpt-4-turbo"]
    claude-group: ["claude-3-opus", "claude-3-sonnet", "claude-3-haiku"]
  fallbacks:
    - gpt-4: ["gpt-3.5-turbo"]
    - claude-3-opus: ["claude-3-sonnet", "gpt-4"]
  cooldown_time: 1  # seconds between retries
  retry_policy:
    max_retries: 3
    base_delay: 1
    max_delay: 10
"#,
        ));
        assert!(warnings(&loaded).is_empty(), "{:?}", warnings(&loaded));
        let mut expected = default_message();
        expected.strategy = proto::RoutingStrategy::UsageBased as i32;
        expected.aliases = vec![
            alias("gpt-4-group", "gpt-4", false),
            alias("gpt-4-group", "gpt-4-turbo", false),
            alias("claude-group", "claude-3-opus", false),
            alias("claude-group", "claude-3-sonnet", false),
            alias("claude-group", "claude-3-haiku", false),
        ];
        expected.fallbacks = vec![
            fallbacks("gpt-4", &["gpt-3.5-turbo"]),
            fallbacks("claude-3-opus", &["claude-3-sonnet", "gpt-4"]),
        ];
        expected.retries = Some(proto::RetryPolicy {
            num_retries: 3,
            ..default_message().retries.unwrap()
        });
        expected.cooldown = Some(proto::CooldownPolicy {
            cooldown_ms: 1000,
            ..default_message().cooldown.unwrap()
        });
        expected.retry_base_delay_ms = 1000;
        expected.retry_max_delay_ms = 10_000;
        assert_eq!(loaded.config.router.to_proto(), expected);
    }

    #[test]
    fn without_routing_keys_litellms_defaults_are_sent_explicitly() {
        let loaded = load(SEED_MODELS);
        assert_eq!(loaded.config.router, RouterConfig::default());
        assert_eq!(loaded.config.router.to_proto(), default_message());
        assert_eq!(
            crate::config::Config::default().router.to_proto(),
            default_message()
        );
    }

    #[test]
    fn every_strategy_name_is_read() {
        for (name, strategy) in [
            ("simple-shuffle", proto::RoutingStrategy::SimpleShuffle),
            ("least-busy", proto::RoutingStrategy::LeastBusy),
            (
                "latency-based-routing",
                proto::RoutingStrategy::LatencyBased,
            ),
            ("latency-based", proto::RoutingStrategy::LatencyBased),
            ("usage-based-routing", proto::RoutingStrategy::UsageBased),
            ("usage-based-routing-v2", proto::RoutingStrategy::UsageBased),
            ("cost-based-routing", proto::RoutingStrategy::CostBased),
        ] {
            let loaded = load(&format!("router_settings:\n  routing_strategy: {name}\n"));
            assert!(
                warnings(&loaded).is_empty(),
                "{name}: {:?}",
                warnings(&loaded)
            );
            assert_eq!(
                loaded.config.router.to_proto().strategy,
                strategy as i32,
                "{name}"
            );
        }
    }

    #[test]
    fn every_router_key_is_read() {
        let loaded = load(&with_models(
            r#"
router_settings:
  routing_strategy: latency-based-routing
  routing_strategy_args: {lowest_latency_buffer: 0.5, ttl: 30}
  fallbacks: [{gpt-4: [claude-3-opus]}]
  context_window_fallbacks: [{gpt-3.5-turbo: [gpt-4-turbo]}]
  content_policy_fallbacks: [{claude-3-opus: [gpt-4]}]
  default_fallbacks: [claude-3-haiku]
  num_retries: 4
  retry_after: 0.25
  allowed_fails: 1
  cooldown_time: 2.5
  disable_cooldowns: true
  timeout: 30
  stream_timeout: 7.5
  stream_idle_timeout: 90
  enable_tag_filtering: true
  tag_filtering_match_any: true
  enable_pre_call_checks: false
"#,
        ));
        assert!(warnings(&loaded).is_empty(), "{:?}", warnings(&loaded));
        let mut expected = default_message();
        expected.strategy = proto::RoutingStrategy::LatencyBased as i32;
        expected.lowest_latency_buffer = 0.5;
        expected.latency_ttl_ms = 30_000;
        expected.fallbacks = vec![fallbacks("gpt-4", &["claude-3-opus"])];
        expected.context_window_fallbacks = vec![fallbacks("gpt-3.5-turbo", &["gpt-4-turbo"])];
        expected.content_policy_fallbacks = vec![fallbacks("claude-3-opus", &["gpt-4"])];
        expected.default_fallbacks = vec!["claude-3-haiku".into()];
        expected.retries = Some(proto::RetryPolicy {
            num_retries: 4,
            ..default_message().retries.unwrap()
        });
        expected.retry_base_delay_ms = 250;
        expected.cooldown = Some(proto::CooldownPolicy {
            disabled: true,
            allowed_fails: 1,
            cooldown_ms: 2500,
            ..default_message().cooldown.unwrap()
        });
        expected.timeout_ms = 30_000;
        expected.stream_timeout_ms = 7_500;
        expected.tag_filtering = true;
        assert_eq!(loaded.config.router.to_proto(), expected);
        // Envoy's, not the filter's: in the rendered bootstrap.
        assert_eq!(loaded.config.router.stream_idle_timeout_ms, 90_000);
    }

    #[test]
    fn litellms_alias_forms_are_read_and_the_top_level_key_too() {
        let loaded = load(&with_models(
            r#"
router_settings:
  model_group_alias:
    gpt-4o: gpt-4
    secret: {model: claude-3-haiku, hidden: true}
    shown: {model: claude-3-sonnet, hidden: false}
model_group_alias:
  turbo: gpt-4-turbo
  gpt-4o: gpt-3.5-turbo
"#,
        ));
        assert_eq!(
            warnings(&loaded),
            ["model_group_alias.gpt-4o: also set as router_settings.model_group_alias.gpt-4o, which wins; ignored"]
        );
        assert_eq!(
            loaded.config.router.to_proto().aliases,
            [
                alias("gpt-4o", "gpt-4", false),
                alias("secret", "claude-3-haiku", true),
                alias("shown", "claude-3-sonnet", false),
                alias("turbo", "gpt-4-turbo", false),
            ]
        );
    }

    #[test]
    fn retry_policy_and_allowed_fails_policy_take_litellms_class_keys() {
        let loaded = load(
            r#"
router_settings:
  num_retries: 1
  retry_policy:
    BadRequestErrorRetries: 0
    AuthenticationErrorRetries: 1
    TimeoutErrorRetries: 2
    RateLimitErrorRetries: 3
    ContentPolicyViolationErrorRetries: 4
    InternalServerErrorRetries: 5
  allowed_fails: 7
  allowed_fails_policy:
    BadRequestErrorAllowedFails: 1000
    AuthenticationErrorAllowedFails: 10
    TimeoutErrorAllowedFails: 12
    RateLimitErrorAllowedFails: 10000
    ContentPolicyViolationErrorAllowedFails: 15
    InternalServerErrorAllowedFails: 20
"#,
        );
        assert!(warnings(&loaded).is_empty(), "{:?}", warnings(&loaded));
        let router = loaded.config.router.to_proto();
        assert_eq!(
            router.retries,
            Some(proto::RetryPolicy {
                num_retries: 1,
                bad_request: Some(0),
                authentication: Some(1),
                timeout: Some(2),
                rate_limit: Some(3),
                content_policy: Some(4),
                server_error: Some(5),
            })
        );
        assert_eq!(
            router.cooldown,
            Some(proto::CooldownPolicy {
                disabled: false,
                allowed_fails: 7,
                bad_request: Some(1000),
                authentication: Some(10),
                timeout: Some(12),
                rate_limit: Some(10_000),
                content_policy: Some(15),
                server_error: Some(20),
                cooldown_ms: 5000,
            })
        );
    }

    #[test]
    fn litellm_settings_routing_keys_apply() {
        let loaded = load(&with_models(
            r#"
litellm_settings:
  num_retries: 5
  request_timeout: 600
  fallbacks: [{gpt-4: [gpt-3.5-turbo]}]
  context_window_fallbacks: [{gpt-3.5-turbo: [gpt-4-turbo]}]
  content_policy_fallbacks: [{claude-3-opus: [gpt-4]}]
  default_fallbacks: [claude-3-haiku]
  allowed_fails: 0
  cooldown_time: 60
"#,
        ));
        assert!(warnings(&loaded).is_empty(), "{:?}", warnings(&loaded));
        let mut expected = default_message();
        expected.fallbacks = vec![fallbacks("gpt-4", &["gpt-3.5-turbo"])];
        expected.context_window_fallbacks = vec![fallbacks("gpt-3.5-turbo", &["gpt-4-turbo"])];
        expected.content_policy_fallbacks = vec![fallbacks("claude-3-opus", &["gpt-4"])];
        expected.default_fallbacks = vec!["claude-3-haiku".into()];
        expected.retries = Some(proto::RetryPolicy {
            num_retries: 5,
            ..default_message().retries.unwrap()
        });
        expected.cooldown = Some(proto::CooldownPolicy {
            allowed_fails: 0,
            cooldown_ms: 60_000,
            ..default_message().cooldown.unwrap()
        });
        expected.timeout_ms = 600_000;
        assert_eq!(loaded.config.router.to_proto(), expected);
    }

    #[test]
    fn router_settings_win_over_litellm_settings_and_say_so() {
        let loaded = load(&with_models(
            r#"
litellm_settings:
  num_retries: 5
  request_timeout: 600
  fallbacks: [{gpt-4: [gpt-3.5-turbo]}]
  cooldown_time: 60
  allowed_fails: 9
router_settings:
  timeout: 30
  fallbacks: [{gpt-4: [claude-3-opus]}]
  cooldown_time: 1
  retry_policy: {max_retries: 1}
"#,
        ));
        assert_eq!(
            warnings(&loaded),
            [
                "litellm_settings.fallbacks: also set as router_settings.fallbacks, which wins; ignored",
                "litellm_settings.num_retries: also set as router_settings.retry_policy.max_retries, which wins; ignored",
                "litellm_settings.cooldown_time: also set as router_settings.cooldown_time, which wins; ignored",
                "litellm_settings.request_timeout: also set as router_settings.timeout, which wins; ignored",
            ]
        );
        let router = loaded.config.router;
        assert_eq!(
            router.fallbacks,
            [GroupFallbacks {
                model: "gpt-4".into(),
                fallbacks: vec!["claude-3-opus".into()]
            }]
        );
        assert_eq!(router.num_retries, 1);
        assert_eq!(router.cooldown_ms, 1000);
        assert_eq!(router.timeout_ms, 30_000);
        // Given only in litellm_settings: taken from there.
        assert_eq!(router.allowed_fails, 9);
    }

    #[test]
    fn a_star_entry_gives_the_fallbacks_of_every_group() {
        let loaded = load(&with_models(
            "router_settings:\n  fallbacks: [{gpt-4: [gpt-4-turbo]}, {\"*\": [gpt-3.5-turbo]}]\n  context_window_fallbacks: [{\"*\": [gpt-4]}]\n",
        ));
        assert_eq!(
            warnings(&loaded),
            ["router_settings.context_window_fallbacks[0]: \"*\" (every model group) is supported by Tollgate only in fallbacks, not in context_window_fallbacks; ignored"]
        );
        let router = loaded.config.router;
        assert_eq!(
            router.fallbacks,
            [GroupFallbacks {
                model: "gpt-4".into(),
                fallbacks: vec!["gpt-4-turbo".into()]
            }]
        );
        assert_eq!(router.default_fallbacks, ["gpt-3.5-turbo"]);
        assert!(router.context_window_fallbacks.is_empty());
    }

    #[test]
    fn fallbacks_may_name_aliases() {
        let loaded = load(&with_models(
            "router_settings:\n  model_group_alias: {claude-group: [claude-3-opus, claude-3-sonnet]}\n  fallbacks: [{claude-group: [gpt-4]}, {gpt-4: [claude-group]}]\n  default_fallbacks: [claude-group]\n",
        ));
        assert!(warnings(&loaded).is_empty(), "{:?}", warnings(&loaded));
        let router = loaded.config.router;
        assert_eq!(
            router.fallbacks,
            [
                GroupFallbacks {
                    model: "claude-group".into(),
                    fallbacks: vec!["gpt-4".into()]
                },
                GroupFallbacks {
                    model: "gpt-4".into(),
                    fallbacks: vec!["claude-group".into()]
                },
            ]
        );
        assert_eq!(router.default_fallbacks, ["claude-group"]);
    }

    #[test]
    fn groups_whose_deployments_were_skipped_are_warnings() {
        let loaded = load(
            r#"
model_list:
  - model_name: gpt-4
    litellm_params: {model: openai/gpt-4}
  - model_name: sage
    litellm_params: {model: sagemaker_chat/x}
router_settings:
  model_group_alias: {s: sage}
  fallbacks: [{gpt-4: [sage]}, {sage: [gpt-4]}]
"#,
        );
        assert_eq!(
            warnings(&loaded),
            [
                "model_list[1].litellm_params.model: provider \"sagemaker_chat\" is not supported by Tollgate yet; deployment skipped",
                "router_settings.model_group_alias.s: model group \"sage\" has no deployment Tollgate serves (all were skipped), ignored",
                "router_settings.fallbacks[0].gpt-4[0]: model group \"sage\" has no deployment Tollgate serves (all were skipped), ignored",
                "router_settings.fallbacks[1]: model group \"sage\" has no deployment Tollgate serves (all were skipped), ignored",
            ]
        );
        let router = loaded.config.router;
        assert!(router.aliases.is_empty());
        assert_eq!(
            router.fallbacks,
            [GroupFallbacks {
                model: "gpt-4".into(),
                fallbacks: vec![]
            }]
        );
    }

    #[test]
    fn keys_tollgate_does_not_implement_are_warnings() {
        let loaded = load(
            r#"
router_settings:
  redis_host: localhost
  routing_strategy: latency-based-routing
  routing_strategy_args: {ttl: 60, lowest_latency_buffer: 0.1, bogus: 1}
  enable_pre_call_checks: true
  tag_filtering_match_any: false
  retry_policy: {NotAnErrorRetries: 1}
  allowed_fails_policy: {NotAnErrorAllowedFails: 1}
  mystery: 1
"#,
        );
        assert_eq!(
            warnings(&loaded),
            [
                "router_settings.redis_host: not supported by Tollgate yet, ignored",
                "router_settings.mystery: unknown key, ignored",
                "router_settings.routing_strategy_args.bogus: unknown key, ignored",
                "router_settings.allowed_fails_policy.NotAnErrorAllowedFails: unknown key, ignored",
                "router_settings.retry_policy.NotAnErrorRetries: unknown key, ignored",
                "router_settings.tag_filtering_match_any: false (a deployment must have every tag of the request) is not supported by Tollgate yet (a deployment with any of them matches), ignored",
                "router_settings.enable_pre_call_checks: not supported by Tollgate yet (deployments are not filtered by context window before the call), ignored",
            ]
        );
        assert_eq!(loaded.config.router.lowest_latency_buffer, 0.1);
        assert_eq!(loaded.config.router.latency_ttl_ms, 60_000);
    }

    #[test]
    fn router_settings_round_trip_through_their_stored_json() {
        let loaded = load(&with_models(
            r#"
router_settings:
  routing_strategy: cost-based-routing
  model_group_alias: {secret: {model: gpt-4, hidden: true}}
  fallbacks: [{gpt-4: [gpt-3.5-turbo]}]
  retry_policy: {RateLimitErrorRetries: 3, base_delay: 0.5, max_delay: 4}
  allowed_fails_policy: {TimeoutErrorAllowedFails: 2}
  timeout: 12.5
"#,
        ));
        let router = loaded.config.router;
        let text = serde_json::to_string(&router).unwrap();
        let back: RouterConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, router);
        // A stored value that lacks fields (written by an older version) takes the defaults.
        let old: RouterConfig = serde_json::from_str(r#"{"strategy":"least-busy"}"#).unwrap();
        assert_eq!(
            old,
            RouterConfig {
                strategy: RoutingStrategy::LeastBusy,
                ..RouterConfig::default()
            }
        );
    }

    // ---- errors, each with the path of its field ----

    #[test]
    fn an_unknown_strategy_is_an_error_listing_the_valid_ones() {
        assert_eq!(
            router_error("router_settings:\n  routing_strategy: fastest\n"),
            ["router_settings.routing_strategy: must be one of \"simple-shuffle\", \"least-busy\", \"latency-based-routing\", \"latency-based\", \"usage-based-routing\", \"usage-based-routing-v2\", \"cost-based-routing\", got \"fastest\""]
        );
    }

    #[test]
    fn router_settings_must_be_a_mapping() {
        assert_eq!(
            router_error("router_settings: [1]\n"),
            ["router_settings: expected a mapping, got a list"]
        );
    }

    #[test]
    fn a_fallback_of_an_unknown_group_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  fallbacks: [{gpt-4: [gpt-3.5-turbo]}, {gpt-5: [gpt-4]}]\n"),
            ["router_settings.fallbacks[1]: \"gpt-5\" is not a model_name of model_list nor a model_group_alias"]
        );
    }

    #[test]
    fn a_fallback_to_an_unknown_group_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  fallbacks: [{gpt-4: [gpt-3.5-turbo, gpt-2]}]\n"),
            ["router_settings.fallbacks[0].gpt-4[1]: \"gpt-2\" is not a model_name of model_list nor a model_group_alias"]
        );
    }

    #[test]
    fn a_litellm_settings_fallback_to_an_unknown_group_is_an_error() {
        assert_eq!(
            router_error("litellm_settings:\n  context_window_fallbacks: [{gpt-4: [gpt-4-32k]}]\n"),
            ["litellm_settings.context_window_fallbacks[0].gpt-4[0]: \"gpt-4-32k\" is not a model_name of model_list nor a model_group_alias"]
        );
    }

    #[test]
    fn an_unknown_default_fallback_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  default_fallbacks: [gpt-4, claude-2]\n"),
            ["router_settings.default_fallbacks[1]: \"claude-2\" is not a model_name of model_list nor a model_group_alias"]
        );
    }

    #[test]
    fn a_fallback_entry_naming_two_groups_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  fallbacks: [{gpt-4: [gpt-3.5-turbo], claude-3-opus: [gpt-4]}]\n"),
            ["router_settings.fallbacks[0]: must name exactly one model group, like {gpt-4: [gpt-3.5-turbo]}; names 2"]
        );
    }

    #[test]
    fn fallbacks_that_are_not_a_list_are_an_error() {
        assert_eq!(
            router_error("router_settings:\n  fallbacks: {gpt-4: [gpt-3.5-turbo]}\n"),
            ["router_settings.fallbacks: must be a list of {model group: [fallbacks]} mappings, got a mapping"]
        );
    }

    #[test]
    fn fallback_targets_that_are_not_a_list_are_an_error() {
        assert_eq!(
            router_error("router_settings:\n  fallbacks: [{gpt-4: gpt-3.5-turbo}]\n"),
            ["router_settings.fallbacks[0].gpt-4: must be a list of model group names, got a string"]
        );
    }

    #[test]
    fn the_fallbacks_of_a_group_given_twice_are_an_error() {
        assert_eq!(
            router_error("router_settings:\n  fallbacks: [{gpt-4: [gpt-3.5-turbo]}, {gpt-4: [claude-3-opus]}]\n"),
            ["router_settings.fallbacks[1]: the fallbacks of \"gpt-4\" are given twice (also router_settings.fallbacks[0])"]
        );
    }

    #[test]
    fn a_group_falling_back_to_itself_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  fallbacks: [{gpt-4: [gpt-3.5-turbo, gpt-4]}]\n"),
            ["router_settings.fallbacks[0].gpt-4[1]: a model group cannot fall back to itself"]
        );
    }

    #[test]
    fn a_star_entry_with_default_fallbacks_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  fallbacks: [{\"*\": [gpt-4]}]\n  default_fallbacks: [gpt-3.5-turbo]\n"),
            ["router_settings.fallbacks[0]: gives the fallbacks of every model group, as router_settings.default_fallbacks does; set one"]
        );
    }

    #[test]
    fn an_alias_of_an_unknown_group_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  model_group_alias:\n    gpt-4-group: [gpt-4, gpt-4o]\n"),
            ["router_settings.model_group_alias.gpt-4-group[1]: \"gpt-4o\" is not a model_name of model_list"]
        );
    }

    #[test]
    fn an_alias_of_an_alias_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  model_group_alias:\n    a: gpt-4\n    b: {model: a}\n"),
            ["router_settings.model_group_alias.b.model: \"a\" is not a model_name of model_list"]
        );
    }

    #[test]
    fn a_top_level_alias_of_an_unknown_group_is_an_error() {
        assert_eq!(
            router_error("model_group_alias: {gpt-4o: gpt-5}\n"),
            ["model_group_alias.gpt-4o: \"gpt-5\" is not a model_name of model_list"]
        );
    }

    #[test]
    fn an_alias_without_a_model_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  model_group_alias: {secret: {hidden: true}}\n"),
            ["router_settings.model_group_alias.secret.model: required"]
        );
    }

    #[test]
    fn an_alias_with_an_empty_list_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  model_group_alias: {none: []}\n"),
            ["router_settings.model_group_alias.none: must name at least one model group"]
        );
    }

    #[test]
    fn a_hidden_flag_that_is_not_a_boolean_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  model_group_alias: {secret: {model: gpt-4, hidden: maybe}}\n"),
            ["router_settings.model_group_alias.secret.hidden: must be true or false, got \"maybe\""]
        );
    }

    #[test]
    fn negative_retries_are_an_error() {
        assert_eq!(
            router_error("router_settings:\n  num_retries: -1\n"),
            ["router_settings.num_retries: must be a whole number, 0 or more"]
        );
    }

    #[test]
    fn fractional_allowed_fails_are_an_error() {
        assert_eq!(
            router_error("litellm_settings:\n  allowed_fails: 1.5\n"),
            ["litellm_settings.allowed_fails: must be a whole number, 0 or more"]
        );
    }

    #[test]
    fn a_class_retry_count_that_is_not_a_number_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  retry_policy: {RateLimitErrorRetries: many}\n"),
            ["router_settings.retry_policy.RateLimitErrorRetries: must be a number, got \"many\""]
        );
    }

    #[test]
    fn a_negative_allowed_fails_policy_count_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  allowed_fails_policy: {TimeoutErrorAllowedFails: -2}\n"),
            ["router_settings.allowed_fails_policy.TimeoutErrorAllowedFails: must be a whole number, 0 or more"]
        );
    }

    #[test]
    fn a_negative_cooldown_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  cooldown_time: -1\n"),
            ["router_settings.cooldown_time: must be a number of seconds 0 or more, at most 31536000 (a year)"]
        );
    }

    #[test]
    fn a_zero_timeout_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  timeout: 0\n"),
            ["router_settings.timeout: must be a number of seconds greater than 0, at most 31536000 (a year)"]
        );
    }

    #[test]
    fn a_timeout_under_a_millisecond_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  stream_timeout: 0.0001\n"),
            ["router_settings.stream_timeout: must be a number of seconds greater than 0, at least 0.001 (a millisecond)"]
        );
    }

    #[test]
    fn a_request_timeout_that_is_not_a_number_is_an_error() {
        assert_eq!(
            router_error("litellm_settings:\n  request_timeout: soon\n"),
            ["litellm_settings.request_timeout: must be a number, got \"soon\""]
        );
    }

    #[test]
    fn a_negative_latency_buffer_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  routing_strategy_args: {lowest_latency_buffer: -0.5}\n"),
            ["router_settings.routing_strategy_args.lowest_latency_buffer: must be a number, 0 or more"]
        );
    }

    #[test]
    fn a_disable_cooldowns_that_is_not_a_boolean_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  disable_cooldowns: 1\n"),
            ["router_settings.disable_cooldowns: must be true or false, got a number"]
        );
    }

    #[test]
    fn max_retries_differing_from_num_retries_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  num_retries: 2\n  retry_policy: {max_retries: 3}\n"),
            ["router_settings.retry_policy.max_retries: differs from router_settings.num_retries (2): both set the retries of a request; set one"]
        );
    }

    #[test]
    fn base_delay_differing_from_retry_after_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  retry_after: 2\n  retry_policy: {base_delay: 1}\n"),
            ["router_settings.retry_policy.base_delay: differs from router_settings.retry_after: both set the wait before a retry; set one"]
        );
    }

    #[test]
    fn a_max_delay_below_the_base_delay_is_an_error() {
        assert_eq!(
            router_error("router_settings:\n  retry_policy: {base_delay: 5, max_delay: 2}\n"),
            ["router_settings.retry_policy.max_delay: must be at least router_settings.retry_policy.base_delay (the first wait)"]
        );
    }

    // ---- deployments ----

    #[test]
    fn deployment_routing_fields_are_read_without_warnings() {
        let loaded = load(
            r#"
model_list:
  - model_name: gpt-4
    litellm_params:
      model: openai/gpt-4
      weight: 2.5
      order: 1
      tags: [eu, "2024", eu, paid]
      timeout: 30
      stream_timeout: 0.75
      max_retries: 4
  - model_name: gpt-4
    litellm_params: {model: openai/gpt-4-0613, num_retries: 0, order: 2}
  - model_name: plain
    litellm_params: {model: openai/gpt-4o}
"#,
        );
        assert!(warnings(&loaded).is_empty(), "{:?}", warnings(&loaded));
        let routing: Vec<&DeploymentRouting> = loaded
            .config
            .deployments
            .iter()
            .map(|deployment| &deployment.routing)
            .collect();
        assert_eq!(
            routing,
            [
                &DeploymentRouting {
                    weight: Some(2.5),
                    order: Some(1),
                    tags: vec!["eu".into(), "2024".into(), "paid".into()],
                    timeout_ms: Some(30_000),
                    stream_timeout_ms: Some(750),
                    num_retries: Some(4),
                },
                &DeploymentRouting {
                    order: Some(2),
                    num_retries: Some(0),
                    ..DeploymentRouting::default()
                },
                &DeploymentRouting::default(),
            ]
        );
        assert!(routing[2].is_empty());
    }

    /// The errors of one deployment with `params` (YAML flow mapping members).
    fn deployment_error(params: &str) -> Vec<String> {
        errors(&format!(
            "model_list:\n  - model_name: a\n    litellm_params: {{model: openai/x, {params}}}\n"
        ))
    }

    #[test]
    fn a_zero_weight_is_an_error() {
        assert_eq!(
            deployment_error("weight: 0"),
            ["model_list[0].litellm_params.weight: must be a number greater than 0"]
        );
    }

    #[test]
    fn a_weight_that_is_not_a_number_is_an_error() {
        assert_eq!(
            deployment_error("weight: heavy"),
            ["model_list[0].litellm_params.weight: must be a number, got \"heavy\""]
        );
    }

    #[test]
    fn an_order_below_one_is_an_error() {
        assert_eq!(
            deployment_error("order: 0"),
            ["model_list[0].litellm_params.order: must be a whole number, 1 or more"]
        );
    }

    #[test]
    fn a_fractional_order_is_an_error() {
        assert_eq!(
            deployment_error("order: 1.5"),
            ["model_list[0].litellm_params.order: must be a whole number, 1 or more"]
        );
    }

    #[test]
    fn tags_that_are_not_a_list_are_an_error() {
        assert_eq!(
            deployment_error("tags: eu"),
            ["model_list[0].litellm_params.tags: must be a list of strings, got a string"]
        );
    }

    #[test]
    fn an_empty_or_structured_tag_is_an_error() {
        assert_eq!(
            deployment_error("tags: [eu, \" \", {a: 1}]"),
            [
                "model_list[0].litellm_params.tags[1]: must not be empty",
                "model_list[0].litellm_params.tags[2]: must be a string, got a mapping",
            ]
        );
    }

    #[test]
    fn a_negative_deployment_timeout_is_an_error() {
        assert_eq!(
            deployment_error("timeout: -5"),
            ["model_list[0].litellm_params.timeout: must be a number of seconds greater than 0, at most 31536000 (a year)"]
        );
    }

    #[test]
    fn a_zero_stream_timeout_is_an_error() {
        assert_eq!(
            deployment_error("stream_timeout: 0"),
            ["model_list[0].litellm_params.stream_timeout: must be a number of seconds greater than 0, at most 31536000 (a year)"]
        );
    }

    #[test]
    fn fractional_deployment_retries_are_an_error() {
        assert_eq!(
            deployment_error("num_retries: 0.5"),
            ["model_list[0].litellm_params.num_retries: must be a whole number, 0 or more"]
        );
    }

    #[test]
    fn max_retries_differing_from_num_retries_of_a_deployment_is_an_error() {
        assert_eq!(
            deployment_error("num_retries: 1, max_retries: 2"),
            ["model_list[0].litellm_params.max_retries: differs from num_retries (1): both set the deployment's retries; set one"]
        );
    }

    #[test]
    fn the_same_num_retries_and_max_retries_are_fine() {
        let loaded = load(
            "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, num_retries: 3, max_retries: 3}\n",
        );
        assert_eq!(loaded.config.deployments[0].routing.num_retries, Some(3));
    }

    #[test]
    fn the_management_api_reads_the_same_routing_fields() {
        let entry = serde_json::json!({
            "model_name": "gpt",
            "litellm_params": {
                "model": "openai/gpt-4o", "weight": 3, "order": 2, "tags": ["eu"],
                "timeout": 1.5, "stream_timeout": 20, "max_retries": 1
            }
        });
        let (deployment, warnings) = parse_model_entry(&entry).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let expected = DeploymentRouting {
            weight: Some(3.0),
            order: Some(2),
            tags: vec!["eu".into()],
            timeout_ms: Some(1500),
            stream_timeout_ms: Some(20_000),
            num_retries: Some(1),
        };
        assert_eq!(deployment.routing, expected);
        // What the API shows (and an update rebuilds the entry from) reads back the same.
        assert_eq!(
            serde_json::Value::Object(expected.to_params()),
            serde_json::json!({
                "weight": 3.0, "order": 2, "tags": ["eu"], "timeout": 1.5,
                "stream_timeout": 20.0, "num_retries": 1
            })
        );
        let mut rebuilt = entry.clone();
        rebuilt["litellm_params"] = serde_json::Value::Object(expected.to_params());
        rebuilt["litellm_params"]["model"] = "openai/gpt-4o".into();
        assert_eq!(parse_model_entry(&rebuilt).unwrap().0.routing, expected);

        let bad = serde_json::json!({
            "model_name": "gpt",
            "litellm_params": {"model": "openai/gpt-4o", "order": 0}
        });
        let issues: Vec<String> = parse_model_entry(&bad)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            issues,
            ["litellm_params.order: must be a whole number, 1 or more"]
        );
    }
}
