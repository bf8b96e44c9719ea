//! The filter's in-memory state, built once per snapshot from the control plane so the
//! request path only does map look-ups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metrics::sanitize_stat_segment;
use prost::Message;

use crate::defaults::DefaultParams;
use crate::pricing::Prices;
use crate::proto;
use crate::ratelimit::{Limits, ScopeLimits};

mod delta;
mod kept;
mod keys;
mod tokens;

pub use delta::DeltaMessage;
pub use kept::{Kept, KeptUpdates};
use keys::KeyMap;
pub use tokens::{AccessTokens, TokenUnavailable};

/// Body limit when the control plane does not set one (LiteLLM has none; Envoy buffers the
/// body, so an unbounded limit would let one client exhaust a worker's memory).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Limit for buffered (non-streaming) response bodies.
pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// max_tokens for providers that require it when neither client nor config gave one (the
/// catalogue's, so the control plane and the filter agree).
pub const DEFAULT_MAX_TOKENS: u32 = tollgate_catalogue::DEFAULT_ANTHROPIC_MAX_TOKENS;

/// The wire protocols the filter translates to (the provider catalogue the control plane
/// shares).
pub use tollgate_catalogue::Wire;

/// Whether the upstream speaks TLS; picks the Envoy cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (local servers, the mock).
    Http,
    /// HTTPS.
    Https,
}

impl Scheme {
    /// Value of the routing header the Envoy route table matches on.
    pub fn route_value(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where a deployment's requests go.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// TLS or not.
    pub scheme: Scheme,
    /// `host[:port]`, sent as `:authority`.
    pub authority: String,
    /// Path prefix from api_base, without a trailing slash ("" or "/v1").
    pub base_path: String,
    /// api_base's query string, without the `?` ("" when it has none): kept on every
    /// request, for providers that take parameters there (Azure's `api-version`).
    pub base_query: String,
}

impl std::fmt::Debug for UpstreamTarget {
    /// The query is left out: a provider may take its key there (Gemini's `key=`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("base_path", &self.base_path)
            .field(
                "base_query",
                &if self.base_query.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

impl UpstreamTarget {
    /// Parses an `http(s)://host[:port][/path][?query]` base URL.
    pub fn parse(api_base: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(rest) = api_base.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = api_base.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(format!("api_base {api_base:?} is not an http(s) URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) {
            return Err(format!("api_base {api_base:?} has no usable host"));
        }
        // A fragment is never sent; a query is kept.
        let path = path.split('#').next().unwrap_or("");
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        Ok(UpstreamTarget {
            scheme,
            authority: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
            base_query: query.to_string(),
        })
    }
}

/// One upstream that can serve a public model name.
pub struct Deployment {
    /// Stable id from the control plane.
    pub id: String,
    /// Public model name.
    pub model_name: String,
    /// Translation to use.
    pub provider: Wire,
    /// Provider prefix from config ("openai", "hosted_vllm", "anthropic" ...).
    pub provider_name: String,
    /// The catalogue's entry for `provider_name`: its auth and paths.
    pub spec: &'static tollgate_catalogue::Provider,
    /// Model name the provider expects.
    pub upstream_model: String,
    /// Where requests go.
    pub target: UpstreamTarget,
    /// Provider key; empty means none is sent.
    pub api_key: String,
    /// max_tokens when the client sends none (providers that require it).
    pub default_max_tokens: u32,
    /// Provider API version, when the provider has one (Anthropic's `anthropic-version`,
    /// Azure's `api-version` from its settings).
    pub api_version: String,
    /// What the provider takes beyond base and key (Bedrock's region and credentials, ...),
    /// checked when the snapshot is built: a Bedrock deployment has its credentials.
    pub settings: Option<proto::deployment::ProviderSettings>,
    /// Request parameters sent when the client gives none.
    pub default_params: DefaultParams,
    /// `model_name` made safe for a stat name.
    pub stat_model: String,
    /// `provider_name` made safe for a stat name.
    pub stat_provider: String,
    /// What its tokens cost; `None`: not priced (costs are unknown, not 0).
    pub prices: Option<Prices>,
    /// litellm_params rpm / tpm / max_parallel_requests.
    pub limits: Option<Limits>,
    /// litellm_params weight, order, tags, timeouts, num_retries.
    pub routing: crate::routing::DeploymentRouting,
    /// `scheme://authority/base-path`, for `x-litellm-model-api-base` (made once here, not
    /// per request).
    pub api_base: String,
}

impl Deployment {
    /// Its Vertex AI settings, when it is served through Vertex AI (Gemini and Anthropic
    /// models there take Vertex's paths and its access tokens instead of their own API's).
    pub fn vertex(&self) -> Option<&proto::VertexSettings> {
        match &self.settings {
            Some(proto::deployment::ProviderSettings::Vertex(vertex)) => Some(vertex),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("id", &self.id)
            .field("model_name", &self.model_name)
            .field("provider", &self.provider)
            .field("provider_name", &self.provider_name)
            .field("spec", &self.spec.name)
            .field("upstream_model", &self.upstream_model)
            .field("target", &self.target)
            .field("api_key", &crate::redact::secret(&self.api_key))
            .field("default_max_tokens", &self.default_max_tokens)
            .field("api_version", &self.api_version)
            .field("settings", &self.settings)
            .field("default_params", &self.default_params)
            .field("stat_model", &self.stat_model)
            .field("stat_provider", &self.stat_provider)
            .field("prices", &self.prices)
            .field("limits", &self.limits)
            .field("routing", &self.routing)
            .finish()
    }
}

/// The deployments of one public model name.
#[derive(Debug, Default)]
pub struct ModelGroup {
    deployments: Vec<Arc<Deployment>>,
    next: AtomicUsize,
}

impl Clone for ModelGroup {
    /// The same deployments; the copy's round robin goes on from where this one is.
    fn clone(&self) -> Self {
        ModelGroup {
            deployments: self.deployments.clone(),
            next: AtomicUsize::new(self.next.load(Ordering::Relaxed)),
        }
    }
}

/// One deployment of a snapshot, in the snapshot's order. One the filter cannot use keeps
/// its place (by id), so that a delta onto this state gives the order a full snapshot would.
#[derive(Debug, Clone)]
enum DeploymentSlot {
    Usable(Arc<Deployment>),
    Unusable { id: String },
}

impl DeploymentSlot {
    /// Builds the slot of a deployment as the control plane sent it; `label` names it in the
    /// problem reported when it cannot be used.
    fn build(deployment: proto::Deployment, label: &str, problems: &mut Vec<String>) -> Self {
        let id = deployment.id.clone();
        match build_deployment(deployment) {
            Ok(deployment) => DeploymentSlot::Usable(Arc::new(deployment)),
            Err(problem) => {
                problems.push(format!("{label}: {problem}"));
                DeploymentSlot::Unusable { id }
            }
        }
    }

    fn id(&self) -> &str {
        match self {
            DeploymentSlot::Usable(deployment) => &deployment.id,
            DeploymentSlot::Unusable { id } => id,
        }
    }
}

impl ModelGroup {
    /// Picks the next deployment, round robin.
    pub fn pick(&self) -> Option<&Arc<Deployment>> {
        if self.deployments.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.deployments.get(turn % self.deployments.len())
    }

    /// All deployments, in config order.
    pub fn deployments(&self) -> &[Arc<Deployment>] {
        &self.deployments
    }
}

/// A spending limit of one scope, in US dollars per budget window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetLimit {
    /// Requests are refused once the window's spend reaches it.
    pub max: Option<f64>,
    /// Crossing it is reported (a response header), never refused.
    pub soft: Option<f64>,
}

impl BudgetLimit {
    /// The limit the control plane sent, when it sets one (non-finite or negative amounts
    /// are left out: the control plane validates them, so one here is a bug, not a limit).
    pub fn of(max: Option<f64>, soft: Option<f64>) -> Option<BudgetLimit> {
        let amount = |value: Option<f64>| value.filter(|v| v.is_finite() && *v >= 0.0);
        let limit = BudgetLimit {
            max: amount(max),
            soft: amount(soft),
        };
        (limit != BudgetLimit::default()).then_some(limit)
    }
}

/// The budgets of every scope but keys (keys carry their own), from the snapshot's settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budgets {
    /// `general_settings.max_budget`: every request counts.
    pub global: Option<BudgetLimit>,
    /// By user id.
    pub users: HashMap<String, BudgetLimit>,
    /// By team id.
    pub teams: HashMap<String, BudgetLimit>,
    /// By end user (the request's `user` field).
    pub end_users: HashMap<String, BudgetLimit>,
    /// Of every end user not in [`Self::end_users`] (`max_end_user_budget`).
    pub every_end_user: Option<BudgetLimit>,
}

impl Budgets {
    fn from_proto(budgets: Vec<proto::Budget>, problems: &mut Vec<String>) -> Budgets {
        let mut built = Budgets::default();
        for (index, budget) in budgets.into_iter().enumerate() {
            let Some(limit) = BudgetLimit::of(budget.max_budget, budget.soft_budget) else {
                continue;
            };
            match proto::BudgetScope::try_from(budget.scope) {
                Ok(proto::BudgetScope::Global) => built.global = Some(limit),
                Ok(proto::BudgetScope::User) => {
                    built.users.insert(budget.id, limit);
                }
                Ok(proto::BudgetScope::Team) => {
                    built.teams.insert(budget.id, limit);
                }
                Ok(proto::BudgetScope::EndUser) if budget.id.is_empty() => {
                    built.every_end_user = Some(limit);
                }
                Ok(proto::BudgetScope::EndUser) => {
                    built.end_users.insert(budget.id, limit);
                }
                _ => problems.push(format!(
                    "settings.budgets[{index}]: scope {} is not one settings carry",
                    budget.scope
                )),
            }
        }
        built
    }

    /// Whether no scope here has a budget (most installations: the request path then
    /// looks nothing up).
    pub fn is_empty(&self) -> bool {
        self.global.is_none()
            && self.users.is_empty()
            && self.teams.is_empty()
            && self.end_users.is_empty()
            && self.every_end_user.is_none()
    }
}

/// A virtual key, as the filter checks it.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualKey {
    /// Operator-given name.
    pub alias: String,
    /// Owner.
    pub user_id: String,
    /// Team.
    pub team_id: String,
    /// Public model names the key may use; empty means all.
    pub models: Vec<String>,
    /// Refused when set.
    pub blocked: bool,
    /// Unix milliseconds after which the key is refused; 0 means never.
    pub expires_unix_ms: u64,
    /// The key's own budget.
    pub budget: Option<BudgetLimit>,
    /// `model_max_budget`: US dollars per window for each public model name listed.
    pub model_budgets: Vec<(String, f64)>,
    /// rpm_limit / tpm_limit / max_parallel_requests.
    pub limits: Option<Limits>,
    /// model_rpm_limit / model_tpm_limit, per public model name (sorted by name).
    pub model_limits: Vec<(String, Limits)>,
}

impl VirtualKey {
    /// Whether the key may use `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|allowed| allowed == model)
    }
}

/// Everything the filter knows, from one snapshot (and the deltas applied onto it).
///
/// A clone shares every key and deployment with the original (they are behind `Arc`s): it
/// copies the maps, not what they hold.
#[derive(Debug, Clone)]
pub struct State {
    /// Snapshot version.
    pub version: u64,
    /// SHA-256 of the master key; `None` means requests need no key.
    pub master_key_sha256: Option<[u8; 32]>,
    /// Request body limit in bytes.
    pub max_request_body_bytes: u64,
    /// Buffered response body limit in bytes.
    pub max_response_body_bytes: u64,
    /// Budgets of users, teams, end users and the whole gateway.
    pub budgets: Budgets,
    /// Rate limits of users, teams and the whole gateway.
    pub rate_limits: ScopeLimits,
    /// router_settings: strategies, retries, cooldowns, fallbacks, aliases.
    pub router: crate::routing::RouterConfig,
    /// Every deployment in snapshot order, usable or not (what a delta applies onto).
    deployments: Vec<DeploymentSlot>,
    models: HashMap<String, ModelGroup>,
    /// Virtual keys by the SHA-256 of the clear key.
    keys: KeyMap,
    /// Public model names in first-seen order, for /v1/models.
    model_order: Vec<String>,
    /// The /v1/models answer, built once per snapshot.
    models_json: Vec<u8>,
    /// Provider access tokens by deployment id; they come apart from snapshots and a new
    /// snapshot keeps them.
    access_tokens: Arc<AccessTokens>,
    /// Deployments the control plane cooled down (from every filter's failures); kept
    /// across snapshots like the tokens.
    pushed_cooldowns: Arc<crate::routing::PushedCooldowns>,
}

impl State {
    /// Builds the state. Deployments that cannot be used are left out and described in the
    /// returned list, so one bad entry does not take the others down.
    pub fn from_snapshot(snapshot: proto::Snapshot) -> (State, Vec<String>) {
        let mut problems = Vec::new();
        let mut state = State {
            version: snapshot.version,
            master_key_sha256: None,
            max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
            max_response_body_bytes: DEFAULT_MAX_RESPONSE_BODY_BYTES,
            budgets: Budgets::default(),
            rate_limits: ScopeLimits::default(),
            router: crate::routing::RouterConfig::default(),
            deployments: Vec::with_capacity(snapshot.deployments.len()),
            models: HashMap::new(),
            keys: KeyMap::with_capacity(snapshot.keys.len()),
            model_order: Vec::new(),
            models_json: Vec::new(),
            access_tokens: Arc::default(),
            pushed_cooldowns: Arc::default(),
        };
        state.set_settings(snapshot.settings.unwrap_or_default(), &mut problems);
        for (index, deployment) in snapshot.deployments.into_iter().enumerate() {
            let slot =
                DeploymentSlot::build(deployment, &format!("deployments[{index}]"), &mut problems);
            state.deployments.push(slot);
        }
        state.rebuild_models();
        for (index, key) in snapshot.keys.into_iter().enumerate() {
            add_key(&mut state.keys, ("keys", index), key, &mut problems);
        }
        (state, problems)
    }

    /// Takes the settings of a snapshot (or of a delta that changes them).
    fn set_settings(&mut self, settings: proto::Settings, problems: &mut Vec<String>) {
        self.master_key_sha256 = if settings.master_key_sha256.is_empty() {
            None
        } else {
            match decode_sha256(&settings.master_key_sha256) {
                Some(hash) => Some(hash),
                None => {
                    // Refusing everything is safer than serving without the key that was set.
                    problems.push("settings.master_key_sha256 is not a SHA-256 hex digest; every request will be refused".to_string());
                    Some([0; 32])
                }
            }
        };
        self.max_request_body_bytes = nonzero_or(
            settings.max_request_body_bytes,
            DEFAULT_MAX_REQUEST_BODY_BYTES,
        );
        self.max_response_body_bytes = nonzero_or(
            settings.max_response_body_bytes,
            DEFAULT_MAX_RESPONSE_BODY_BYTES,
        );
        self.budgets = Budgets::from_proto(settings.budgets, problems);
        self.rate_limits = ScopeLimits::from_proto(settings.rate_limits, problems);
        self.router = crate::routing::RouterConfig::from_proto(settings.router);
    }

    /// Groups the usable deployments by public model name, in snapshot order, and renders
    /// the /v1/models answer.
    fn rebuild_models(&mut self) {
        let mut models: HashMap<String, ModelGroup> = HashMap::new();
        let mut model_order = Vec::new();
        for slot in &self.deployments {
            let DeploymentSlot::Usable(deployment) = slot else {
                continue;
            };
            let group = models
                .entry(deployment.model_name.clone())
                .or_insert_with(|| {
                    model_order.push(deployment.model_name.clone());
                    ModelGroup::default()
                });
            group.deployments.push(Arc::clone(deployment));
        }
        // model_group_alias: an alias is a group of its own, the union of the groups it
        // names (a name that is a model group already stays that group).
        let mut aliases: Vec<(&str, &[String])> = self.router.aliases().collect();
        aliases.sort_unstable_by_key(|(alias, _)| *alias);
        for (alias, groups) in aliases {
            if models.contains_key(alias) {
                continue;
            }
            let deployments: Vec<Arc<Deployment>> = groups
                .iter()
                .filter_map(|group| models.get(group))
                .flat_map(|group| group.deployments.iter().cloned())
                .collect();
            if deployments.is_empty() {
                continue;
            }
            if self.router.listed(alias) {
                model_order.push(alias.to_string());
            }
            models.insert(
                alias.to_string(),
                ModelGroup {
                    deployments,
                    next: AtomicUsize::new(0),
                },
            );
        }
        self.models_json = render_models(&model_order, &models, |_| true);
        self.models = models;
        self.model_order = model_order;
    }

    /// Checks a control-plane message and decodes all of it but its keys; `Ok(None)` when it
    /// carries neither a snapshot, a delta nor provider tokens. [`State::apply`] then builds or updates the
    /// state. Split so a VM can let its current state go between the two: the check is what
    /// can fail.
    pub fn check_control_message(
        message: &[u8],
    ) -> Result<Option<ControlUpdate<'_>>, SnapshotDecodeError> {
        // A oneof: the last of its fields on the wire is the one that counts.
        let mut update = None;
        for_each_length_delimited_field(message, |tag, payload| {
            if tag == CONTROL_MESSAGE_SNAPSHOT_TAG
                || tag == CONTROL_MESSAGE_DELTA_TAG
                || tag == CONTROL_MESSAGE_PROVIDER_TOKENS_TAG
                || tag == CONTROL_MESSAGE_COOLDOWNS_TAG
            {
                update = Some((tag, payload));
            }
            Ok(())
        })?;
        match update {
            None => Ok(None),
            Some((CONTROL_MESSAGE_COOLDOWNS_TAG, cooldowns)) => Ok(Some(ControlUpdate::Cooldowns(
                proto::DeploymentCooldowns::decode(cooldowns)?,
            ))),
            Some((CONTROL_MESSAGE_DELTA_TAG, delta_bytes)) => Ok(Some(ControlUpdate::Delta(
                DeltaMessage::check(delta_bytes)?,
            ))),
            Some((CONTROL_MESSAGE_PROVIDER_TOKENS_TAG, tokens)) => Ok(Some(ControlUpdate::Tokens(
                proto::ProviderTokens::decode(tokens)?,
            ))),
            Some((_, snapshot_bytes)) => Ok(Some(ControlUpdate::Snapshot(SnapshotMessage::check(
                snapshot_bytes,
            )?))),
        }
    }

    /// Installs a checked update in `current`: a full snapshot replaces it (dropped before
    /// the new state is built, so the two are never in memory together here; holders of
    /// other `Arc`s keep theirs), a delta changes it. A delta applies only onto the version
    /// it was made from; otherwise `current` is left as it is and the caller must get a
    /// full snapshot. The delta changes the state in place when nothing else holds it, else
    /// a copy that shares every unchanged key and deployment.
    pub fn apply(
        current: &mut Option<Arc<State>>,
        update: ControlUpdate<'_>,
    ) -> Result<Applied, DeltaRefused> {
        match update {
            ControlUpdate::Snapshot(snapshot) => {
                // The tokens and pushed cooldowns stay: they are not the snapshot's.
                let (access_tokens, pushed_cooldowns) = current
                    .take()
                    .map(|old| {
                        (
                            Arc::clone(&old.access_tokens),
                            Arc::clone(&old.pushed_cooldowns),
                        )
                    })
                    .unwrap_or_default();
                let keys = snapshot.key_count();
                let (mut state, problems) = snapshot.into_state();
                state.access_tokens = access_tokens;
                state.pushed_cooldowns = pushed_cooldowns;
                let applied = Applied {
                    kind: UpdateKind::Snapshot,
                    version: state.version,
                    keys,
                    problems,
                };
                *current = Some(Arc::new(state));
                Ok(applied)
            }
            ControlUpdate::Delta(delta) => {
                let held = current.as_ref().map(|state| state.version);
                let Some(state) = current
                    .as_mut()
                    .filter(|_| held == Some(delta.base_version()))
                else {
                    return Err(DeltaRefused {
                        held,
                        base_version: delta.base_version(),
                    });
                };
                let keys = delta.key_changes();
                let version = delta.version();
                let problems = delta.apply_to(Arc::make_mut(state));
                Ok(Applied {
                    kind: UpdateKind::Delta,
                    version,
                    keys,
                    problems,
                })
            }
            ControlUpdate::Cooldowns(cooldowns) => {
                let cooldowns = crate::routing::PushedCooldowns::from_proto(cooldowns);
                let keys = cooldowns.len();
                let Some(state) = current.as_mut() else {
                    // Sent again after the next stream's snapshot: none is lost.
                    return Ok(Applied {
                        kind: UpdateKind::Cooldowns,
                        version: 0,
                        keys,
                        problems: vec!["cooldowns before any snapshot: left".into()],
                    });
                };
                Arc::make_mut(state).pushed_cooldowns = Arc::new(cooldowns);
                Ok(Applied {
                    kind: UpdateKind::Cooldowns,
                    version: state.version,
                    keys,
                    problems: Vec::new(),
                })
            }
            ControlUpdate::Tokens(tokens) => {
                let tokens = AccessTokens::from_proto(tokens);
                let keys = tokens.len();
                let Some(state) = current.as_mut() else {
                    // The control plane sends tokens after a snapshot, and again with the
                    // next stream's: none is lost by leaving these.
                    return Ok(Applied {
                        kind: UpdateKind::Tokens,
                        version: 0,
                        keys,
                        problems: vec!["provider tokens before any snapshot: left".into()],
                    });
                };
                // A copy of the state when requests hold it: its maps' values are shared.
                Arc::make_mut(state).access_tokens = Arc::new(tokens);
                Ok(Applied {
                    kind: UpdateKind::Tokens,
                    version: state.version,
                    keys,
                    problems: Vec::new(),
                })
            }
        }
    }

    /// The deployments the control plane says are cooling down.
    pub fn pushed_cooldowns(&self) -> &crate::routing::PushedCooldowns {
        &self.pushed_cooldowns
    }

    /// The access token to send for `deployment_id` at `now_unix_ms` (Vertex AI's).
    pub fn access_token(
        &self,
        deployment_id: &str,
        now_unix_ms: u64,
    ) -> Result<&str, TokenUnavailable> {
        self.access_tokens.get(deployment_id, now_unix_ms)
    }

    /// Checks one control-plane message and applies its update to `current` (see
    /// [`State::check_control_message`] and [`State::apply`]); `Ok(None)` when it carries
    /// none. On an error `current` is as it was, and a refused delta means the filter needs
    /// a full snapshot.
    pub fn update(
        current: &mut Option<Arc<State>>,
        message: &[u8],
    ) -> Result<Option<Applied>, UpdateError> {
        match State::check_control_message(message)? {
            Some(update) => Ok(Some(State::apply(current, update)?)),
            None => Ok(None),
        }
    }

    /// The deployments of a public model name.
    pub fn model(&self, name: &str) -> Option<&ModelGroup> {
        self.models.get(name)
    }

    /// Public model names in config order.
    pub fn model_names(&self) -> &[String] {
        &self.model_order
    }

    /// The usable deployments, in snapshot order.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.deployments.iter().filter_map(|slot| match slot {
            DeploymentSlot::Usable(deployment) => Some(deployment),
            DeploymentSlot::Unusable { .. } => None,
        })
    }

    /// The ids of every deployment, for a glue that keeps state per deployment and must let
    /// go of what a new snapshot dropped.
    pub fn deployment_ids(&self) -> impl Iterator<Item = &str> {
        self.models.values().flat_map(|group| {
            group
                .deployments()
                .iter()
                .map(|deployment| deployment.id.as_str())
        })
    }

    /// Body of `GET /v1/models`.
    pub fn models_json(&self) -> &[u8] {
        &self.models_json
    }

    /// Body of `GET /v1/models` for a key limited to some models.
    pub fn models_json_for(&self, key: &VirtualKey) -> Vec<u8> {
        render_models(&self.model_order, &self.models, |name| {
            key.allows_model(name)
        })
    }

    /// The virtual key with this SHA-256, if any.
    pub fn key(&self, sha256: &[u8; 32]) -> Option<&Arc<VirtualKey>> {
        self.keys.get(sha256)
    }

    /// Number of virtual keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

fn nonzero_or(value: u64, default: u64) -> u64 {
    if value == 0 {
        default
    } else {
        value
    }
}

fn decode_sha256(hex_digest: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_digest.trim()).ok()?;
    bytes.try_into().ok()
}

/// Adds (or replaces) a key; one whose hash is not a SHA-256 hex digest is reported as
/// `{list}[{index}]` and left out.
fn add_key(
    keys: &mut KeyMap,
    (list, index): (&str, usize),
    key: proto::VirtualKey,
    problems: &mut Vec<String>,
) {
    let Some(hash) = decode_sha256(&key.key_sha256) else {
        problems.push(format!(
            "{list}[{index}]: key_sha256 is not a SHA-256 hex digest"
        ));
        return;
    };
    keys.insert(
        hash,
        Arc::new(VirtualKey {
            alias: key.key_alias,
            user_id: key.user_id,
            team_id: key.team_id,
            models: key.models,
            blocked: key.blocked,
            expires_unix_ms: key.expires_unix_ms,
            budget: BudgetLimit::of(key.max_budget, key.soft_budget),
            model_budgets: {
                // Sorted, so that a key's state does not depend on the map's order.
                let mut budgets: Vec<(String, f64)> = key
                    .model_max_budget
                    .into_iter()
                    .filter(|(_, amount)| amount.is_finite() && *amount >= 0.0)
                    .collect();
                budgets.sort_by(|a, b| a.0.cmp(&b.0));
                budgets
            },
            limits: Limits::of(key.limits.as_ref()),
            model_limits: {
                let mut limits: Vec<(String, Limits)> = key
                    .model_limits
                    .iter()
                    .filter_map(|(model, limits)| Some((model.clone(), Limits::of(Some(limits))?)))
                    .collect();
                limits.sort_by(|a, b| a.0.cmp(&b.0));
                limits
            },
        }),
    );
}

/// A control-plane message that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDecodeError {
    /// The message's framing is broken.
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    /// A field's content is invalid.
    #[error(transparent)]
    Protobuf(#[from] prost::DecodeError),
}

/// `ControlMessage.kind.snapshot`.
const CONTROL_MESSAGE_SNAPSHOT_TAG: u32 = 1;
/// `ControlMessage.kind.delta`.
const CONTROL_MESSAGE_DELTA_TAG: u32 = 2;
/// `ControlMessage.kind.provider_tokens`.
const CONTROL_MESSAGE_PROVIDER_TOKENS_TAG: u32 = 6;
/// `ControlMessage.kind.cooldowns`.
const CONTROL_MESSAGE_COOLDOWNS_TAG: u32 = 7;
/// `Snapshot.keys`.
const SNAPSHOT_KEYS_TAG: u32 = 4;

/// What a checked control-plane message carries (see [`State::check_control_message`]).
#[derive(Debug)]
pub enum ControlUpdate<'m> {
    /// A full snapshot.
    Snapshot(SnapshotMessage<'m>),
    /// Changes onto an earlier snapshot.
    Delta(DeltaMessage<'m>),
    /// Provider access tokens, which replace those held and leave the version as it is.
    Tokens(proto::ProviderTokens),
    /// The deployments the control plane cooled down, which replace those held and leave
    /// the version as it is.
    Cooldowns(proto::DeploymentCooldowns),
}

impl ControlUpdate<'_> {
    /// The version the filter holds once the update is applied; `None` for tokens, which
    /// leave it as it is.
    pub fn version(&self) -> Option<u64> {
        match self {
            ControlUpdate::Snapshot(snapshot) => Some(snapshot.version()),
            ControlUpdate::Delta(delta) => Some(delta.version()),
            ControlUpdate::Tokens(_) | ControlUpdate::Cooldowns(_) => None,
        }
    }
}

/// Whether an update was a full snapshot, a delta or provider tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// A full snapshot replaced the state.
    Snapshot,
    /// A delta changed it.
    Delta,
    /// Provider access tokens replaced those held; the version is as it was. (`keys` of
    /// [`Applied`] is the number of tokens.)
    Tokens,
    /// The control plane's cooldowns replaced those held; the version is as it was.
    /// (`keys` of [`Applied`] is the number of deployments cooling down.)
    Cooldowns,
}

impl UpdateKind {
    /// Whether the update leaves the snapshot's version as it was (nothing to acknowledge).
    pub fn leaves_version(self) -> bool {
        matches!(self, UpdateKind::Tokens | UpdateKind::Cooldowns)
    }
}

/// What [`State::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Full snapshot or delta.
    pub kind: UpdateKind,
    /// The version now held.
    pub version: u64,
    /// Keys the update carried: all of them for a snapshot, those added, changed or
    /// removed for a delta.
    pub keys: usize,
    /// Entries that could not be used (see [`State::from_snapshot`]).
    pub problems: Vec<String>,
}

/// A delta that does not apply onto the state held: the filter needs a full snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a delta onto snapshot {base_version} cannot apply onto {}", held.map_or("no snapshot".to_string(), |version| format!("snapshot {version}")))]
pub struct DeltaRefused {
    /// The version held, if any.
    pub held: Option<u64>,
    /// The version the delta was made from.
    pub base_version: u64,
}

/// Why a control-plane message changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// It does not decode.
    #[error("undecodable control-plane message: {0}")]
    Decode(#[from] SnapshotDecodeError),
    /// It is a delta onto another version than the one held.
    #[error(transparent)]
    Refused(#[from] DeltaRefused),
}

/// A checked full snapshot (see [`State::check_control_message`]).
#[derive(Debug)]
pub struct SnapshotMessage<'m> {
    head: SnapshotWithoutKeys,
    snapshot_bytes: &'m [u8],
    key_count: usize,
}

impl<'m> SnapshotMessage<'m> {
    /// Decodes everything but the keys, and checks that every key decodes.
    fn check(snapshot_bytes: &'m [u8]) -> Result<Self, SnapshotDecodeError> {
        let mut key_count = 0;
        for_each_length_delimited_field(snapshot_bytes, |tag, payload| {
            if tag == SNAPSHOT_KEYS_TAG {
                proto::VirtualKey::decode(payload)?;
                key_count += 1;
            }
            Ok(())
        })?;
        // Everything but the keys (prost skips their field).
        let head = SnapshotWithoutKeys::decode(snapshot_bytes)?;
        Ok(SnapshotMessage {
            head,
            snapshot_bytes,
            key_count,
        })
    }
}

impl SnapshotMessage<'_> {
    /// The snapshot's version.
    pub fn version(&self) -> u64 {
        self.head.version
    }

    /// The snapshot's number of keys.
    pub fn key_count(&self) -> usize {
        self.key_count
    }

    /// Builds the state. The keys go from the message into the state's map one at a time,
    /// never all decoded at once in a `Vec` (which, with its growth, would more than double
    /// the memory a large snapshot needs).
    pub fn into_state(self) -> (State, Vec<String>) {
        let (mut state, mut problems) = State::from_snapshot(proto::Snapshot {
            version: self.head.version,
            settings: self.head.settings,
            deployments: self.head.deployments,
            keys: Vec::new(),
        });
        state.keys.reserve(self.key_count);
        let mut index = 0;
        let walked = for_each_length_delimited_field(self.snapshot_bytes, |tag, payload| {
            if tag == SNAPSHOT_KEYS_TAG {
                add_key(
                    &mut state.keys,
                    ("keys", index),
                    proto::VirtualKey::decode(payload)?,
                    &mut problems,
                );
                index += 1;
            }
            Ok(())
        });
        // The check decoded every key already; this cannot fail, but is not hidden if it does.
        if let Err(error) = walked {
            problems.push(format!("keys[{index}] and after: {error}"));
        }
        (state, problems)
    }
}

/// `proto::Snapshot` without its keys, which [`SnapshotMessage::into_state`] reads one by one.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotWithoutKeys {
    #[prost(uint64, tag = "1")]
    version: u64,
    #[prost(message, optional, tag = "2")]
    settings: Option<proto::Settings>,
    #[prost(message, repeated, tag = "3")]
    deployments: Vec<proto::Deployment>,
}

/// Walks the fields of one protobuf message, handing each length-delimited field's tag and
/// payload to `visit` and stepping over the others.
fn for_each_length_delimited_field<'m>(
    mut message: &'m [u8],
    mut visit: impl FnMut(u32, &'m [u8]) -> Result<(), SnapshotDecodeError>,
) -> Result<(), SnapshotDecodeError> {
    use prost::encoding::{decode_varint, WireType};
    while !message.is_empty() {
        let key = decode_varint(&mut message)?;
        let tag = u32::try_from(key >> 3)
            .map_err(|_| SnapshotDecodeError::Malformed("field tag out of range"))?;
        let skip = match WireType::try_from(key & 0x7)? {
            WireType::Varint => {
                decode_varint(&mut message)?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                let length = usize::try_from(decode_varint(&mut message)?)
                    .map_err(|_| SnapshotDecodeError::Malformed("length out of range"))?;
                let payload = message
                    .get(..length)
                    .ok_or(SnapshotDecodeError::Malformed("truncated field"))?;
                visit(tag, payload)?;
                length
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(SnapshotDecodeError::Malformed(
                    "groups are not used by this protocol",
                ))
            }
        };
        message = message
            .get(skip..)
            .ok_or(SnapshotDecodeError::Malformed("truncated field"))?;
    }
    Ok(())
}

fn build_deployment(deployment: proto::Deployment) -> Result<Deployment, String> {
    let provider = match proto::ProviderKind::try_from(deployment.provider) {
        Ok(proto::ProviderKind::Openai) => Wire::OpenAi,
        Ok(proto::ProviderKind::Anthropic) => Wire::Anthropic,
        Ok(proto::ProviderKind::Gemini) => Wire::Gemini,
        Ok(proto::ProviderKind::Bedrock) => Wire::Bedrock,
        Ok(proto::ProviderKind::Cohere) => Wire::Cohere,
        Ok(proto::ProviderKind::Ollama) => Wire::Ollama,
        _ => return Err(format!("unknown provider kind {}", deployment.provider)),
    };
    if deployment.model_name.is_empty() {
        return Err("model_name is empty".into());
    }
    if deployment.upstream_model.is_empty() {
        return Err(format!(
            "{}: upstream model is empty",
            deployment.model_name
        ));
    }
    let target = UpstreamTarget::parse(&deployment.api_base)
        .map_err(|problem| format!("{}: {problem}", deployment.model_name))?;
    check_settings(deployment.provider_settings.as_ref())
        .map_err(|problem| format!("{}: {problem}", deployment.model_name))?;
    let default_params = DefaultParams::parse(&deployment.default_params_json)
        .map_err(|problem| format!("{}: {problem}", deployment.model_name))?;
    // Azure's api-version is in its settings (field 9 from a control plane before them).
    let routing = crate::routing::DeploymentRouting::of(&deployment);
    let api_base = format!(
        "{}://{}{}",
        target.scheme.route_value(),
        target.authority,
        target.base_path
    );
    let api_version = match &deployment.provider_settings {
        Some(proto::deployment::ProviderSettings::Azure(azure))
            if !azure.api_version.is_empty() =>
        {
            azure.api_version.clone()
        }
        _ => deployment.api_version,
    };
    Ok(Deployment {
        stat_model: sanitize_stat_segment(&deployment.model_name),
        stat_provider: sanitize_stat_segment(&deployment.provider_name),
        id: deployment.id,
        model_name: deployment.model_name,
        provider,
        // A name this filter does not know (a newer control plane) behaves as OpenAI does.
        spec: tollgate_catalogue::find(&deployment.provider_name)
            .filter(|spec| spec.wire == provider)
            .unwrap_or(&tollgate_catalogue::OPENAI_COMPATIBLE),
        provider_name: deployment.provider_name,
        upstream_model: deployment.upstream_model,
        target,
        api_key: deployment.api_key,
        default_max_tokens: if deployment.default_max_tokens == 0 {
            DEFAULT_MAX_TOKENS
        } else {
            deployment.default_max_tokens
        },
        api_version,
        settings: deployment.provider_settings,
        default_params,
        prices: deployment.pricing.as_ref().and_then(Prices::from_proto),
        limits: Limits::of(deployment.limits.as_ref()),
        routing,
        api_base,
    })
}

/// Settings a request could not be sent with are refused with the snapshot's deployment,
/// not at request time.
fn check_settings(settings: Option<&proto::deployment::ProviderSettings>) -> Result<(), String> {
    use proto::deployment::ProviderSettings;
    match settings {
        None | Some(ProviderSettings::Azure(_)) => Ok(()),
        Some(ProviderSettings::Bedrock(bedrock)) => {
            let has_key = bedrock.credentials.as_ref().is_some_and(|credentials| {
                !credentials.access_key_id.is_empty() && !credentials.secret_access_key.is_empty()
            });
            if bedrock.region.is_empty() {
                Err("Bedrock settings without a region".into())
            } else if !has_key {
                Err("Bedrock settings without credentials".into())
            } else {
                Ok(())
            }
        }
        Some(ProviderSettings::Vertex(vertex)) if vertex.project.is_empty() => {
            Err("Vertex settings without a project".into())
        }
        Some(ProviderSettings::Vertex(vertex)) if vertex.location.is_empty() => {
            Err("Vertex settings without a location".into())
        }
        Some(ProviderSettings::Vertex(_)) => Ok(()),
    }
}

#[derive(serde::Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelEntry<'a>>,
}

#[derive(serde::Serialize)]
struct ModelEntry<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'a str,
}

/// LiteLLM reports a fixed creation time; clients only read ids.
const MODEL_CREATED: u64 = 1_677_610_602;

fn render_models(
    order: &[String],
    models: &HashMap<String, ModelGroup>,
    visible: impl Fn(&str) -> bool,
) -> Vec<u8> {
    let data = order
        .iter()
        .filter(|name| visible(name))
        .map(|name| ModelEntry {
            id: name,
            object: "model",
            created: MODEL_CREATED,
            owned_by: models
                .get(name)
                .and_then(|group| group.deployments.first())
                .map_or("tollgate", |deployment| deployment.provider_name.as_str()),
        })
        .collect();
    serde_json::to_vec(&ModelList {
        object: "list",
        data,
    })
    .unwrap_or_else(|_| br#"{"object":"list","data":[]}"#.to_vec())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deployment as the control plane would send it.
    pub fn deployment(
        model_name: &str,
        kind: proto::ProviderKind,
        api_base: &str,
    ) -> proto::Deployment {
        proto::Deployment {
            pricing: None,
            limits: None,
            id: format!("id-{model_name}"),
            model_name: model_name.into(),
            provider: kind as i32,
            provider_name: match kind {
                proto::ProviderKind::Anthropic => "anthropic".into(),
                proto::ProviderKind::Gemini => "gemini".into(),
                proto::ProviderKind::Bedrock => "bedrock".into(),
                proto::ProviderKind::Cohere => "cohere".into(),
                proto::ProviderKind::Ollama => "ollama".into(),
                _ => "openai".into(),
            },
            upstream_model: format!("upstream-{model_name}"),
            api_base: api_base.into(),
            api_key: "sk-provider".into(),
            default_max_tokens: 0,
            api_version: String::new(),
            provider_settings: None,
            default_params_json: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn a_control_message_decodes_to_the_state_of_its_snapshot() {
        let keys: Vec<proto::VirtualKey> = (0u8..40)
            .map(|i| proto::VirtualKey {
                key_sha256: hex::encode([i; 32]),
                key_alias: format!("alias-{i}"),
                models: vec!["gpt".into()],
                blocked: i % 7 == 0,
                ..Default::default()
            })
            .chain(std::iter::once(proto::VirtualKey {
                key_sha256: "not-hex".into(),
                ..Default::default()
            }))
            .collect();
        let snapshot = proto::Snapshot {
            version: 7,
            settings: Some(proto::Settings {
                master_key_sha256: hex::encode([9; 32]),
                max_request_body_bytes: 1234,
                ..Default::default()
            }),
            deployments: vec![
                deployment("gpt", proto::ProviderKind::Openai, "http://127.0.0.1:9/v1"),
                deployment(
                    "claude",
                    proto::ProviderKind::Anthropic,
                    "http://127.0.0.1:9",
                ),
            ],
            keys,
        };
        let message = proto::ControlMessage {
            kind: Some(proto::control_message::Kind::Snapshot(snapshot.clone())),
        }
        .encode_to_vec();
        let Some(ControlUpdate::Snapshot(checked)) =
            State::check_control_message(&message).unwrap()
        else {
            panic!("not a snapshot");
        };
        assert_eq!((checked.version(), checked.key_count()), (7, 41));
        let (streamed, streamed_problems) = checked.into_state();
        let (whole, whole_problems) = State::from_snapshot(snapshot);
        assert_eq!(streamed_problems, whole_problems);
        assert_eq!(
            streamed_problems,
            vec!["keys[40]: key_sha256 is not a SHA-256 hex digest"]
        );
        assert_eq!(streamed.version, whole.version);
        assert_eq!(streamed.master_key_sha256, whole.master_key_sha256);
        assert_eq!(streamed.max_request_body_bytes, 1234);
        assert_eq!(streamed.model_names(), whole.model_names());
        assert_eq!(streamed.models_json(), whole.models_json());
        assert_eq!(streamed.key_count(), 40);
        for i in 0u8..40 {
            let (a, b) = (
                streamed.key(&[i; 32]).unwrap(),
                whole.key(&[i; 32]).unwrap(),
            );
            assert_eq!(
                (&a.alias, &a.models, a.blocked),
                (&b.alias, &b.models, b.blocked)
            );
        }
    }

    #[test]
    fn a_broken_control_message_is_refused_whole_and_an_empty_one_has_no_snapshot() {
        let message = proto::ControlMessage {
            kind: Some(proto::control_message::Kind::Snapshot(proto::Snapshot {
                version: 1,
                keys: vec![proto::VirtualKey {
                    key_sha256: hex::encode([1; 32]),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        }
        .encode_to_vec();
        for cut in 1..message.len() {
            assert!(
                State::check_control_message(&message[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // Invalid UTF-8 inside a key: framing is fine, the content is not.
        let mut bad_text = message.clone();
        let at = bad_text.len() - 1;
        bad_text[at] = 0xff;
        assert!(State::check_control_message(&bad_text).is_err());
        assert!(State::check_control_message(&[]).unwrap().is_none());
    }

    fn snapshot_message(version: u64) -> Vec<u8> {
        proto::ControlMessage {
            kind: Some(proto::control_message::Kind::Snapshot(proto::Snapshot {
                version,
                deployments: vec![deployment(
                    "claude",
                    proto::ProviderKind::Anthropic,
                    "http://127.0.0.1:9",
                )],
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    fn tokens_message(token: &str) -> Vec<u8> {
        proto::ControlMessage {
            kind: Some(proto::control_message::Kind::ProviderTokens(
                proto::ProviderTokens {
                    tokens: vec![proto::ProviderToken {
                        deployment_id: "id-claude".into(),
                        access_token: token.into(),
                        expires_unix_ms: 5_000,
                    }],
                },
            )),
        }
        .encode_to_vec()
    }

    #[test]
    fn provider_tokens_leave_the_version_and_outlive_snapshots_and_deltas() {
        let mut current = None;
        // Before any snapshot there is nothing to hold them: left, and said so.
        let early = State::update(&mut current, &tokens_message("ya29.early"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (early.kind, early.version, early.keys),
            (UpdateKind::Tokens, 0, 1)
        );
        assert!(current.is_none());

        State::update(&mut current, &snapshot_message(3)).unwrap();
        let held = Arc::clone(current.as_ref().unwrap());
        let applied = State::update(&mut current, &tokens_message("ya29.first"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (applied.kind, applied.version, applied.keys),
            (UpdateKind::Tokens, 3, 1)
        );
        let state = current.as_ref().unwrap();
        assert_eq!(state.access_token("id-claude", 4_999), Ok("ya29.first"));
        assert_eq!(
            state.access_token("id-claude", 5_000),
            Err(TokenUnavailable::Expired)
        );
        assert_eq!(
            state.access_token("id-other", 0),
            Err(TokenUnavailable::Missing)
        );
        // A request holding the state it started with keeps it as it was.
        assert_eq!(
            held.access_token("id-claude", 0),
            Err(TokenUnavailable::Missing)
        );

        // A new full snapshot keeps the tokens; so does a delta.
        State::update(&mut current, &snapshot_message(4)).unwrap();
        let delta = proto::ControlMessage {
            kind: Some(proto::control_message::Kind::Delta(proto::SnapshotDelta {
                base_version: 4,
                version: 5,
                ..Default::default()
            })),
        }
        .encode_to_vec();
        State::update(&mut current, &delta).unwrap();
        let state = current.as_ref().unwrap();
        assert_eq!(state.version, 5);
        assert_eq!(state.access_token("id-claude", 0), Ok("ya29.first"));

        // The next message replaces them whole.
        let empty = proto::ControlMessage {
            kind: Some(proto::control_message::Kind::ProviderTokens(
                proto::ProviderTokens::default(),
            )),
        }
        .encode_to_vec();
        State::update(&mut current, &empty).unwrap();
        assert_eq!(
            current.as_ref().unwrap().access_token("id-claude", 0),
            Err(TokenUnavailable::Missing)
        );
    }

    #[test]
    fn parses_api_bases() {
        let target = UpstreamTarget::parse("http://127.0.0.1:8000/v1/").unwrap();
        assert_eq!(target.scheme, Scheme::Http);
        assert_eq!(target.authority, "127.0.0.1:8000");
        assert_eq!(target.base_path, "/v1");
        let target = UpstreamTarget::parse("https://api.anthropic.com").unwrap();
        assert_eq!(target.scheme, Scheme::Https);
        assert_eq!(target.base_path, "");
        assert!(UpstreamTarget::parse("ftp://x").is_err());
        assert!(UpstreamTarget::parse("https:///v1").is_err());
        // Azure's api-version stays on the base; a fragment goes.
        let target = UpstreamTarget::parse(
            "https://r.openai.azure.com/openai/deployments/gpt/?api-version=2024-10-21#x",
        )
        .unwrap();
        assert_eq!(target.base_path, "/openai/deployments/gpt");
        assert_eq!(target.base_query, "api-version=2024-10-21");
        let target = UpstreamTarget::parse("https://g.example/v1beta?key=secret").unwrap();
        assert_eq!(target.base_query, "key=secret");
        assert!(!format!("{target:?}").contains("secret"));
        assert_eq!(
            UpstreamTarget::parse("https://api.anthropic.com/#top")
                .unwrap()
                .base_query,
            ""
        );
    }

    #[test]
    fn builds_state_and_reports_bad_entries() {
        let snapshot = proto::Snapshot {
            keys: Vec::new(),
            version: 7,
            settings: Some(proto::Settings {
                budgets: Vec::new(),
                rate_limits: Vec::new(),
                master_key_sha256: hex::encode([1u8; 32]),
                max_request_body_bytes: 0,
                max_response_body_bytes: 5,
                router: None,
            }),
            deployments: vec![
                deployment("gpt", proto::ProviderKind::Openai, "http://127.0.0.1:1/v1"),
                deployment(
                    "claude",
                    proto::ProviderKind::Anthropic,
                    "https://api.anthropic.com",
                ),
                deployment("gpt", proto::ProviderKind::Openai, "http://127.0.0.1:2/v1"),
                deployment("broken", proto::ProviderKind::Openai, "nope"),
            ],
        };
        let (state, problems) = State::from_snapshot(snapshot);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("deployments[3]"));
        assert_eq!(state.version, 7);
        assert_eq!(state.master_key_sha256, Some([1u8; 32]));
        assert_eq!(state.max_request_body_bytes, DEFAULT_MAX_REQUEST_BODY_BYTES);
        assert_eq!(state.max_response_body_bytes, 5);
        assert_eq!(state.model_names(), ["gpt", "claude"]);
        let group = state.model("gpt").unwrap();
        let first = group.pick().unwrap().target.authority.clone();
        let second = group.pick().unwrap().target.authority.clone();
        assert_ne!(first, second, "round robin over two deployments");
        let models: serde_json::Value = serde_json::from_slice(state.models_json()).unwrap();
        assert_eq!(models["object"], "list");
        assert_eq!(models["data"][1]["id"], "claude");
        assert_eq!(models["data"][1]["owned_by"], "anthropic");
    }

    #[test]
    fn bad_master_key_hash_refuses_rather_than_opens() {
        let snapshot = proto::Snapshot {
            keys: Vec::new(),
            version: 1,
            settings: Some(proto::Settings {
                master_key_sha256: "zz".into(),
                ..Default::default()
            }),
            deployments: vec![],
        };
        let (state, problems) = State::from_snapshot(snapshot);
        assert!(state.master_key_sha256.is_some());
        assert_eq!(problems.len(), 1);
    }
}
