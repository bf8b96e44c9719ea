//! The request path: which endpoint, which deployment, what to send upstream.

use std::sync::Arc;

use serde::Deserialize;

use crate::auth::Caller;
use crate::providers::{translate_request, ResponseHandler, TranslateContext};
use crate::request::summarize_chat_request;
use crate::snapshot::Deployment;
use crate::{GatewayError, State};

/// Header the Envoy route table matches to pick the upstream cluster. Clients must never
/// set it themselves (it would make the gateway an open proxy): the glue strips it from
/// every incoming request.
pub const ROUTE_HEADER: &str = "x-tollgate-upstream";

/// Client headers that must not reach a provider: the client's gateway key, and
/// accept-encoding (the gateway reads response bodies, so they must not be compressed).
pub const CLIENT_HEADERS_TO_REMOVE: [&str; 4] =
    ["authorization", "x-api-key", "api-key", "accept-encoding"];

/// What a request is, from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions` or `/chat/completions`.
    ChatCompletions,
    /// `GET /v1/models` or `/models`.
    Models,
    /// A known endpoint with the wrong method.
    WrongMethod,
    /// Not the filter's business; Envoy's routes decide.
    Other,
}

/// Classifies a request.
pub fn classify(method: &str, path: &str) -> Endpoint {
    let path = path.split('?').next().unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    let (endpoint, expected) = match path {
        "/v1/chat/completions" | "/chat/completions" => (Endpoint::ChatCompletions, "POST"),
        "/v1/models" | "/models" => (Endpoint::Models, "GET"),
        _ => return Endpoint::Other,
    };
    if method.eq_ignore_ascii_case(expected) {
        endpoint
    } else {
        Endpoint::WrongMethod
    }
}

/// The filter's static configuration (Envoy's plugin `configuration`): only what it needs to
/// find the control plane. Everything else arrives in snapshots.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Envoy cluster of the control plane (the proxy-wasm filter's stream goes through it).
    #[serde(default = "default_control_plane_cluster")]
    pub control_plane_cluster: String,
    /// gRPC URL of the control plane for the native module, which connects from a thread of
    /// its own instead of through an Envoy cluster.
    #[serde(default = "default_control_plane_url")]
    pub control_plane_url: String,
    /// This Envoy's name, reported to the control plane.
    #[serde(default)]
    pub node_id: String,
    /// Request body limit before the first snapshot arrives.
    #[serde(default)]
    pub max_request_body_bytes: Option<u64>,
    /// Milliseconds between reconnect attempts to the control plane.
    #[serde(default = "default_reconnect_ms")]
    pub reconnect_ms: u64,
}

fn default_control_plane_cluster() -> String {
    "tollgate_control_plane".to_string()
}

fn default_control_plane_url() -> String {
    "http://127.0.0.1:50051".to_string()
}

fn default_reconnect_ms() -> u64 {
    500
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            control_plane_cluster: default_control_plane_cluster(),
            control_plane_url: default_control_plane_url(),
            node_id: String::new(),
            max_request_body_bytes: None,
            reconnect_ms: default_reconnect_ms(),
        }
    }
}

impl PluginConfig {
    /// Parses the plugin configuration; empty means defaults.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(PluginConfig::default());
        }
        serde_json::from_slice(bytes)
            .map_err(|error| format!("invalid plugin configuration: {error}"))
    }
}

/// Everything the glue must do to send a chat request upstream.
#[derive(Debug)]
pub struct RequestPlan {
    /// The chosen deployment.
    pub deployment: Arc<Deployment>,
    /// Value for [`ROUTE_HEADER`].
    pub route_value: &'static str,
    /// New `:authority`.
    pub authority: String,
    /// New `:path`.
    pub path: String,
    /// Headers to set.
    pub headers: Vec<(&'static str, String)>,
    /// New body.
    pub body: Vec<u8>,
    /// `content-length` of [`Self::body`].
    pub body_length: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The response side.
    pub response: ResponseHandler,
}

impl RequestPlan {
    /// The whole upstream header map, built from the client's headers (`client`, as read from
    /// the host) and this plan, so the glue can write it in one host call: every host call
    /// crosses the Wasm boundary, and one write of ~10 headers costs less than six single
    /// ones. Drops the client's credentials, `accept-encoding` and any routing header; replaces
    /// `:path`, `:authority`, `content-length` and every header the provider needs.
    pub fn upstream_headers<'a>(
        &'a self,
        client: &'a [(String, String)],
    ) -> Vec<(&'a str, &'a str)> {
        let replaced = |name: &str| {
            CLIENT_HEADERS_TO_REMOVE.contains(&name)
                || matches!(
                    name,
                    ":path" | ":authority" | "content-length" | ROUTE_HEADER
                )
                || self.headers.iter().any(|(set, _)| *set == name)
        };
        let mut headers: Vec<(&str, &str)> =
            Vec::with_capacity(client.len() + self.headers.len() + 4);
        headers.extend(
            client
                .iter()
                .filter(|(name, _)| !replaced(name))
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        headers.push((":path", &self.path));
        headers.push((":authority", &self.authority));
        headers.push(("content-length", &self.body_length));
        headers.push((ROUTE_HEADER, self.route_value));
        headers.extend(
            self.headers
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        );
        headers
    }
}

/// Validates, resolves and translates a chat completion request for a caller with access
/// to every model.
pub fn plan_chat_request(
    state: &State,
    body: &[u8],
    context: &TranslateContext,
) -> Result<RequestPlan, GatewayError> {
    plan_chat_request_for(state, &Caller::default(), body, context)
}

/// Validates, resolves and translates a chat completion request for `caller`.
pub fn plan_chat_request_for(
    state: &State,
    caller: &Caller,
    body: &[u8],
    context: &TranslateContext,
) -> Result<RequestPlan, GatewayError> {
    let summary = summarize_chat_request(body)?;
    caller.check_model(&summary.model)?;
    let deployment = state
        .model(&summary.model)
        .and_then(|group| group.pick())
        .ok_or_else(|| GatewayError::ModelNotFound(summary.model.to_string()))?
        .clone();
    let (upstream, translator) = translate_request(&summary, body, &deployment, context)?;
    let target = &deployment.target;
    let path = join_path(&target.base_path, &upstream.path);
    Ok(RequestPlan {
        route_value: target.scheme.route_value(),
        authority: target.authority.clone(),
        path,
        headers: upstream.headers,
        body_length: upstream.body.len().to_string(),
        body: upstream.body,
        stream: summary.stream,
        response: ResponseHandler::new(translator, summary.stream),
        deployment,
    })
}

/// Joins a base path and an endpoint path, without doubling a segment the base already
/// ends with (api_base ".../v1/messages" or ".../v1" with "/v1/messages").
fn join_path(base: &str, endpoint: &str) -> String {
    if base.ends_with(endpoint) {
        return base.to_string();
    }
    if let Some(rest) = endpoint.strip_prefix("/v1") {
        if base.ends_with("/v1") {
            return [base, rest].concat();
        }
    }
    [base, endpoint].concat()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto;
    use crate::snapshot::tests::deployment;

    pub(crate) fn state() -> State {
        let snapshot = proto::Snapshot {
            keys: Vec::new(),
            version: 1,
            settings: None,
            deployments: vec![
                deployment("gpt", proto::ProviderKind::Openai, "http://127.0.0.1:9/v1"),
                deployment(
                    "claude",
                    proto::ProviderKind::Anthropic,
                    "https://api.anthropic.com",
                ),
            ],
        };
        State::from_snapshot(snapshot).0
    }

    #[test]
    fn classifies_endpoints() {
        assert_eq!(
            classify("POST", "/v1/chat/completions"),
            Endpoint::ChatCompletions
        );
        assert_eq!(
            classify("POST", "/chat/completions?x=1"),
            Endpoint::ChatCompletions
        );
        assert_eq!(classify("GET", "/v1/models"), Endpoint::Models);
        assert_eq!(
            classify("GET", "/v1/chat/completions"),
            Endpoint::WrongMethod
        );
        assert_eq!(classify("GET", "/metrics"), Endpoint::Other);
    }

    #[test]
    fn joins_paths() {
        assert_eq!(
            join_path("/v1", "/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(join_path("", "/v1/messages"), "/v1/messages");
        assert_eq!(join_path("/v1", "/v1/messages"), "/v1/messages");
        assert_eq!(
            join_path("/proxy/v1/messages", "/v1/messages"),
            "/proxy/v1/messages"
        );
    }

    #[test]
    fn plans_openai_passthrough_with_minimal_edits() {
        let body =
            br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#;
        let plan = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap();
        assert_eq!(plan.route_value, "http");
        assert_eq!(plan.authority, "127.0.0.1:9");
        assert_eq!(plan.path, "/v1/chat/completions");
        assert_eq!(
            plan.body,
            br#"{"model":"upstream-gpt","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#.to_vec()
        );
        assert!(plan
            .headers
            .contains(&("authorization", "Bearer sk-provider".to_string())));
    }

    #[test]
    fn upstream_headers_replace_credentials_and_routing() {
        let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        let plan = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap();
        let client: Vec<(String, String)> = [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "gateway.local"),
            ("authorization", "Bearer sk-gateway"),
            ("x-api-key", "sk-gateway"),
            ("accept-encoding", "gzip"),
            ("content-length", "999"),
            (ROUTE_HEADER, "https"),
            ("x-request-id", "abc"),
            ("x-custom", "1"),
            ("x-custom", "2"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        let headers = plan.upstream_headers(&client);
        let values = |name: &str| -> Vec<&str> {
            headers
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .collect()
        };
        assert_eq!(values(":method"), ["POST"]);
        assert_eq!(values(":path"), ["/v1/chat/completions"]);
        assert_eq!(values(":authority"), ["127.0.0.1:9"]);
        assert_eq!(values("authorization"), ["Bearer sk-provider"]);
        assert_eq!(
            values("content-length"),
            [plan.body.len().to_string().as_str()]
        );
        assert_eq!(values(ROUTE_HEADER), ["http"]);
        assert_eq!(values("x-request-id"), ["abc"]);
        assert_eq!(values("x-custom"), ["1", "2"]);
        assert!(values("x-api-key").is_empty());
        assert!(values("accept-encoding").is_empty());
    }

    #[test]
    fn forces_include_usage_on_streams() {
        let body = br#"{"model":"gpt","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let plan = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert_eq!(sent["model"], "upstream-gpt");

        let body = br#"{"model":"gpt","stream":true,"stream_options":{"include_usage":false,"x":1},"messages":[{"role":"user","content":"hi"}]}"#;
        let plan = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
        assert_eq!(
            sent["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
    }

    #[test]
    fn unknown_model_is_404() {
        let body = br#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#;
        let error = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap_err();
        assert_eq!(error.status(), 404);
    }

    #[test]
    fn plugin_config() {
        assert_eq!(PluginConfig::parse(b"").unwrap(), PluginConfig::default());
        let config =
            PluginConfig::parse(br#"{"control_plane_cluster":"cp","node_id":"n1"}"#).unwrap();
        assert_eq!(config.control_plane_cluster, "cp");
        assert!(PluginConfig::parse(br#"{"bogus":1}"#).is_err());
    }
}
