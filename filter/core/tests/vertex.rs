//! Vertex AI: Gemini and Claude models served by Google Cloud, at Vertex's paths and with the
//! control plane's access token. The bodies are Gemini's and Anthropic's own (Claude's
//! without `model` and with `anthropic_version`), so each case here runs a fixture of
//! `fixtures/gemini` or `fixtures/anthropic` through a Vertex deployment and checks that only
//! the path, the auth and those two body fields differ, and that the answer translates the
//! same, streams included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use prost::Message;
use serde_json::{json, Value};
use tollgate_core::gateway::plan_chat_request;
use tollgate_core::providers::{ChunkOutput, ResponseMode, TranslateContext};
use tollgate_core::snapshot::TokenUnavailable;
use tollgate_core::{proto, GatewayError, State};

const CONTEXT: TranslateContext = TranslateContext {
    now_unix: 1_700_000_000,
};
/// The token's expiry: an hour after [`CONTEXT`]'s clock.
const EXPIRES_UNIX_MS: u64 = 1_700_003_600_000;
const TOKEN: &str = "ya29.vertex-test-token";

fn vertex_deployment(
    model_name: &str,
    kind: proto::ProviderKind,
    upstream_model: &str,
    location: &str,
) -> proto::Deployment {
    proto::Deployment {
        id: format!("id-{model_name}"),
        model_name: model_name.into(),
        provider: kind as i32,
        provider_name: "vertex_ai".into(),
        upstream_model: upstream_model.into(),
        api_base: format!("https://{location}-aiplatform.googleapis.com"),
        default_max_tokens: 4096,
        provider_settings: Some(proto::deployment::ProviderSettings::Vertex(
            proto::VertexSettings {
                project: "tollgate-test".into(),
                location: location.into(),
            },
        )),
        ..Default::default()
    }
}

/// `gemini` and `claude` on Vertex with a token; `no-token` without one.
fn state() -> State {
    let snapshot = proto::Snapshot {
        version: 1,
        deployments: vec![
            vertex_deployment(
                "gemini",
                proto::ProviderKind::Gemini,
                "gemini-2.5-flash",
                "europe-west4",
            ),
            vertex_deployment(
                "claude",
                proto::ProviderKind::Anthropic,
                "claude-sonnet-4-5-20250929",
                "us-east5",
            ),
            vertex_deployment(
                "no-token",
                proto::ProviderKind::Gemini,
                "gemini-2.5-pro",
                "us-central1",
            ),
        ],
        ..Default::default()
    };
    let message = |kind| proto::ControlMessage { kind: Some(kind) }.encode_to_vec();
    let mut current = None;
    let applied = State::update(
        &mut current,
        &message(proto::control_message::Kind::Snapshot(snapshot)),
    )
    .unwrap()
    .unwrap();
    assert!(applied.problems.is_empty(), "{:?}", applied.problems);
    let tokens = proto::ProviderTokens {
        tokens: ["id-gemini", "id-claude"]
            .into_iter()
            .map(|id| proto::ProviderToken {
                deployment_id: id.into(),
                access_token: TOKEN.into(),
                expires_unix_ms: EXPIRES_UNIX_MS,
            })
            .collect(),
    };
    State::update(
        &mut current,
        &message(proto::control_message::Kind::ProviderTokens(tokens)),
    )
    .unwrap();
    State::clone(&current.unwrap())
}

fn fixture(provider: &str, case: &str, file: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(provider)
        .join(case)
        .join(file);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// The fixture's request for `model` instead.
fn request_for(provider: &str, case: &str, model: &str) -> Vec<u8> {
    let mut request = json(&fixture(provider, case, "request.json"));
    request["model"] = model.into();
    request.to_string().into_bytes()
}

fn headers(plan: &tollgate_core::gateway::RequestPlan) -> Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in &plan.headers {
        assert!(headers.insert((*name).to_string(), json!(value)).is_none());
    }
    Value::Object(headers)
}

fn bearer() -> Value {
    json!({"content-type": "application/json", "authorization": format!("Bearer {TOKEN}")})
}

/// The client's answer to a buffered fixture response through `plan`.
fn buffered_answer(
    mut plan: tollgate_core::gateway::RequestPlan,
    provider: &str,
    case: &str,
) -> Value {
    assert_eq!(
        plan.response.on_headers(200, Some("application/json")),
        ResponseMode::Buffer
    );
    let completed = plan
        .response
        .on_complete_body(&fixture(provider, case, "response.json"));
    assert_eq!(completed.status, None);
    json(&completed.body.unwrap())
}

/// The client's stream for a fixture stream through `plan`, fed in one chunk.
fn streamed_answer(
    mut plan: tollgate_core::gateway::RequestPlan,
    provider: &str,
    case: &str,
) -> Vec<u8> {
    assert_eq!(
        plan.response.on_headers(200, Some("text/event-stream")),
        ResponseMode::Stream
    );
    let mut out = Vec::new();
    let stream = fixture(provider, case, "response.sse");
    assert_eq!(
        plan.response.on_stream_chunk(&stream, true, &mut out),
        ChunkOutput::Replaced
    );
    out
}

fn same_events(actual: &[u8], expected: &[u8]) {
    let events = |bytes: &[u8]| -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .split_terminator("\n\n")
            .map(|event| {
                let payload = event.strip_prefix("data: ").unwrap();
                serde_json::from_str(payload).unwrap_or(Value::String(payload.into()))
            })
            .collect()
    };
    assert_eq!(events(actual), events(expected));
}

#[test]
fn gemini_on_vertex_takes_the_same_body_at_vertexs_path_with_the_token() {
    let state = state();
    let plan =
        plan_chat_request(&state, &request_for("gemini", "text", "gemini"), &CONTEXT).unwrap();
    assert_eq!(plan.authority, "europe-west4-aiplatform.googleapis.com");
    assert_eq!(
        plan.path,
        "/v1/projects/tollgate-test/locations/europe-west4/publishers/google/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(headers(&plan), bearer());
    assert_eq!(
        json(&plan.body),
        json(&fixture("gemini", "text", "upstream_request.json"))
    );
    assert_eq!(
        buffered_answer(plan, "gemini", "text"),
        json(&fixture("gemini", "text", "expected_response.json"))
    );
}

#[test]
fn gemini_on_vertex_streams_with_alt_sse() {
    let state = state();
    let plan = plan_chat_request(
        &state,
        &request_for("gemini", "stream_text", "gemini"),
        &CONTEXT,
    )
    .unwrap();
    assert_eq!(
        plan.path,
        "/v1/projects/tollgate-test/locations/europe-west4/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(headers(&plan), bearer());
    assert_eq!(
        json(&plan.body),
        json(&fixture("gemini", "stream_text", "upstream_request.json"))
    );
    same_events(
        &streamed_answer(plan, "gemini", "stream_text"),
        &fixture("gemini", "stream_text", "expected_response.sse"),
    );
}

/// Anthropic's body for Vertex: no `model`, `anthropic_version` instead.
fn anthropic_body_on_vertex(case: &str) -> Value {
    let mut body = json(&fixture("anthropic", case, "upstream_request.json"));
    let object = body.as_object_mut().unwrap();
    assert!(object.remove("model").is_some());
    object.insert("anthropic_version".into(), "vertex-2023-10-16".into());
    body
}

#[test]
fn claude_on_vertex_takes_anthropics_body_without_model_at_raw_predict() {
    let state = state();
    let plan = plan_chat_request(
        &state,
        &request_for("anthropic", "text", "claude"),
        &CONTEXT,
    )
    .unwrap();
    assert_eq!(plan.authority, "us-east5-aiplatform.googleapis.com");
    assert_eq!(
        plan.path,
        "/v1/projects/tollgate-test/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5-20250929:rawPredict"
    );
    // No x-api-key, no anthropic-version header: the version is in the body.
    assert_eq!(headers(&plan), bearer());
    assert_eq!(json(&plan.body), anthropic_body_on_vertex("text"));
    assert_eq!(
        buffered_answer(plan, "anthropic", "text"),
        json(&fixture("anthropic", "text", "expected_response.json"))
    );
}

#[test]
fn claude_on_vertex_streams_at_stream_raw_predict() {
    let state = state();
    let plan = plan_chat_request(
        &state,
        &request_for("anthropic", "stream_text", "claude"),
        &CONTEXT,
    )
    .unwrap();
    assert_eq!(
        plan.path,
        "/v1/projects/tollgate-test/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5-20250929:streamRawPredict"
    );
    assert_eq!(json(&plan.body), anthropic_body_on_vertex("stream_text"));
    same_events(
        &streamed_answer(plan, "anthropic", "stream_text"),
        &fixture("anthropic", "stream_text", "expected_response.sse"),
    );
}

#[test]
fn without_a_valid_token_the_request_is_refused_before_it_is_sent() {
    let state = state();
    let refusal = |model: &str, context: &TranslateContext| {
        plan_chat_request(&state, &request_for("gemini", "text", model), context)
            .err()
            .unwrap()
    };
    let missing = refusal("no-token", &CONTEXT);
    assert!(matches!(
        missing,
        GatewayError::UpstreamCredentialsUnavailable(TokenUnavailable::Missing)
    ));
    assert_eq!(missing.status(), 503);
    assert_eq!(missing.error_type(), "service_unavailable");
    let body = json(&missing.to_json());
    assert_eq!(body["error"]["code"], "upstream_credentials_unavailable");
    assert_eq!(
        body["error"]["message"],
        "The gateway has no valid access token for this model's provider: the control plane has sent no access token for this deployment yet. Retry shortly; if this persists, the control plane's log says why."
    );
    // An hour later the token the control plane sent has expired.
    let later = TranslateContext {
        now_unix: EXPIRES_UNIX_MS / 1000,
    };
    assert!(matches!(
        refusal("gemini", &later),
        GatewayError::UpstreamCredentialsUnavailable(TokenUnavailable::Expired)
    ));
    // The token never shows in the plan's Debug output.
    let plan =
        plan_chat_request(&state, &request_for("gemini", "text", "gemini"), &CONTEXT).unwrap();
    assert!(!format!("{plan:?}").contains(TOKEN));
}
