//! The filter's in-memory state, built once per snapshot from the control plane so the
//! request path only does map look-ups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metrics::sanitize_stat_segment;
use crate::proto;

/// Body limit when the control plane does not set one (LiteLLM has none; Envoy buffers the
/// body, so an unbounded limit would let one client exhaust a worker's memory).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Limit for buffered (non-streaming) response bodies.
pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// max_tokens for providers that require it when neither client nor config gave one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The providers the filter can translate to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server.
    OpenAi,
    /// Anthropic Messages API.
    Anthropic,
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// TLS or not.
    pub scheme: Scheme,
    /// `host[:port]`, sent as `:authority`.
    pub authority: String,
    /// Path prefix from api_base, without a trailing slash ("" or "/v1").
    pub base_path: String,
}

impl UpstreamTarget {
    /// Parses an `http(s)://host[:port][/path]` base URL.
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
        let path = path.split(['?', '#']).next().unwrap_or("");
        Ok(UpstreamTarget {
            scheme,
            authority: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
        })
    }
}

/// One upstream that can serve a public model name.
#[derive(Debug)]
pub struct Deployment {
    /// Stable id from the control plane.
    pub id: String,
    /// Public model name.
    pub model_name: String,
    /// Translation to use.
    pub provider: ProviderKind,
    /// Provider prefix from config ("openai", "hosted_vllm", "anthropic" ...).
    pub provider_name: String,
    /// Model name the provider expects.
    pub upstream_model: String,
    /// Where requests go.
    pub target: UpstreamTarget,
    /// Provider key; empty means none is sent.
    pub api_key: String,
    /// max_tokens when the client sends none (providers that require it).
    pub default_max_tokens: u32,
    /// Provider API version, when the provider has one (Anthropic's `anthropic-version`).
    pub api_version: String,
    /// `model_name` made safe for a stat name.
    pub stat_model: String,
    /// `provider_name` made safe for a stat name.
    pub stat_provider: String,
}

/// The deployments of one public model name.
#[derive(Debug, Default)]
pub struct ModelGroup {
    deployments: Vec<Arc<Deployment>>,
    next: AtomicUsize,
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

/// A virtual key, as the filter checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl VirtualKey {
    /// Whether the key may use `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|allowed| allowed == model)
    }
}

/// Everything the filter knows, from one snapshot.
#[derive(Debug)]
pub struct State {
    /// Snapshot version.
    pub version: u64,
    /// SHA-256 of the master key; `None` means requests need no key.
    pub master_key_sha256: Option<[u8; 32]>,
    /// Request body limit in bytes.
    pub max_request_body_bytes: u64,
    /// Buffered response body limit in bytes.
    pub max_response_body_bytes: u64,
    models: HashMap<String, ModelGroup>,
    /// Virtual keys by the SHA-256 of the clear key.
    keys: HashMap<[u8; 32], Arc<VirtualKey>>,
    /// Public model names in first-seen order, for /v1/models.
    model_order: Vec<String>,
    /// The /v1/models answer, built once per snapshot.
    models_json: Vec<u8>,
}

impl State {
    /// Builds the state. Deployments that cannot be used are left out and described in the
    /// returned list, so one bad entry does not take the others down.
    pub fn from_snapshot(snapshot: proto::Snapshot) -> (State, Vec<String>) {
        let mut problems = Vec::new();
        let settings = snapshot.settings.unwrap_or_default();
        let master_key_sha256 = if settings.master_key_sha256.is_empty() {
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
        let mut models: HashMap<String, ModelGroup> = HashMap::new();
        let mut model_order = Vec::new();
        for (index, deployment) in snapshot.deployments.into_iter().enumerate() {
            match build_deployment(deployment) {
                Ok(deployment) => {
                    let group = models
                        .entry(deployment.model_name.clone())
                        .or_insert_with(|| {
                            model_order.push(deployment.model_name.clone());
                            ModelGroup::default()
                        });
                    group.deployments.push(Arc::new(deployment));
                }
                Err(problem) => problems.push(format!("deployments[{index}]: {problem}")),
            }
        }
        let mut keys = HashMap::with_capacity(snapshot.keys.len());
        for (index, key) in snapshot.keys.into_iter().enumerate() {
            let Some(hash) = decode_sha256(&key.key_sha256) else {
                problems.push(format!(
                    "keys[{index}]: key_sha256 is not a SHA-256 hex digest"
                ));
                continue;
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
                }),
            );
        }
        let models_json = render_models(&model_order, &models, |_| true);
        let state = State {
            version: snapshot.version,
            master_key_sha256,
            max_request_body_bytes: nonzero_or(
                settings.max_request_body_bytes,
                DEFAULT_MAX_REQUEST_BODY_BYTES,
            ),
            max_response_body_bytes: nonzero_or(
                settings.max_response_body_bytes,
                DEFAULT_MAX_RESPONSE_BODY_BYTES,
            ),
            models,
            keys,
            model_order,
            models_json,
        };
        (state, problems)
    }

    /// The deployments of a public model name.
    pub fn model(&self, name: &str) -> Option<&ModelGroup> {
        self.models.get(name)
    }

    /// Public model names in config order.
    pub fn model_names(&self) -> &[String] {
        &self.model_order
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

fn build_deployment(deployment: proto::Deployment) -> Result<Deployment, String> {
    let provider = match proto::ProviderKind::try_from(deployment.provider) {
        Ok(proto::ProviderKind::Openai) => ProviderKind::OpenAi,
        Ok(proto::ProviderKind::Anthropic) => ProviderKind::Anthropic,
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
    Ok(Deployment {
        stat_model: sanitize_stat_segment(&deployment.model_name),
        stat_provider: sanitize_stat_segment(&deployment.provider_name),
        id: deployment.id,
        model_name: deployment.model_name,
        provider,
        provider_name: deployment.provider_name,
        upstream_model: deployment.upstream_model,
        target,
        api_key: deployment.api_key,
        default_max_tokens: if deployment.default_max_tokens == 0 {
            DEFAULT_MAX_TOKENS
        } else {
            deployment.default_max_tokens
        },
        api_version: deployment.api_version,
    })
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
            id: format!("id-{model_name}"),
            model_name: model_name.into(),
            provider: kind as i32,
            provider_name: match kind {
                proto::ProviderKind::Anthropic => "anthropic".into(),
                _ => "openai".into(),
            },
            upstream_model: format!("upstream-{model_name}"),
            api_base: api_base.into(),
            api_key: "sk-provider".into(),
            default_max_tokens: 0,
            api_version: String::new(),
        }
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
    }

    #[test]
    fn builds_state_and_reports_bad_entries() {
        let snapshot = proto::Snapshot {
            keys: Vec::new(),
            version: 7,
            settings: Some(proto::Settings {
                master_key_sha256: hex::encode([1u8; 32]),
                max_request_body_bytes: 0,
                max_response_body_bytes: 5,
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
