#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Vertex AI end to end: real Envoy (2 workers) + filter + control plane + the mock's token
//! endpoint and Vertex paths. The control plane signs a JWT with the test service account,
//! exchanges it at the mock's `/token` (which verifies the signature with the account's
//! public key), pushes the token to the filters and refreshes it before it expires; the
//! mock's Gemini and Claude endpoints accept only tokens it issued and has not seen expire.
//! The private key never reaches Envoy. The mock counts a token per word, so every count
//! below is exact.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::{client, eventually, read_body, sse_data, Gateway, Mock};

const MASTER_KEY: &str = "sk-master-vertex";
/// Tokens the mock issues last this long: the control plane refreshes them halfway.
const TOKEN_TTL_SECS: u64 = 6;

fn config(mock: &Mock) -> String {
    let credentials = serde_json::to_string(&mock.vertex_credentials().unwrap()).unwrap();
    // A key whose token endpoint refuses every exchange (its signature is not the key the
    // mock knows): its deployment never gets a token.
    let mut refused: Value = serde_json::from_str(&mock.vertex_credentials().unwrap()).unwrap();
    refused["client_email"] = "nobody@tollgate-test.iam.gserviceaccount.com".into();
    let refused = serde_json::to_string(&refused.to_string()).unwrap();
    format!(
        "model_list:\n\
         - model_name: vertex-gemini\n\
         \x20 litellm_params:\n\
         \x20   model: vertex_ai/gemini-2.5-flash\n\
         \x20   vertex_project: tollgate-test\n\
         \x20   vertex_location: us-central1\n\
         \x20   vertex_credentials: {credentials}\n\
         \x20   api_base: {url}\n\
         - model_name: vertex-claude\n\
         \x20 litellm_params:\n\
         \x20   model: vertex_ai/claude-sonnet-4@20250514\n\
         \x20   vertex_project: tollgate-test\n\
         \x20   vertex_location: us-east5\n\
         \x20   vertex_credentials: {credentials}\n\
         \x20   api_base: {url}\n\
         - model_name: vertex-refused\n\
         \x20 litellm_params:\n\
         \x20   model: vertex_ai/gemini-2.5-pro\n\
         \x20   vertex_project: tollgate-test\n\
         \x20   vertex_credentials: {refused}\n\
         \x20   api_base: {url}\n\
         general_settings:\n\
         \x20 master_key: {MASTER_KEY}\n",
        url = mock.url
    )
}

struct Env {
    mock: Mock,
    gateway: Gateway,
}

impl Env {
    fn post(&self, body: &Value) -> reqwest::blocking::Response {
        client()
            .post(format!("{}/v1/chat/completions", self.gateway.url))
            .bearer_auth(MASTER_KEY)
            .json(body)
            .send()
            .unwrap()
    }

    fn chat(&self, body: &Value) -> (u16, Value) {
        let response = self.post(body);
        let status = response.status().as_u16();
        let text = read_body(response).unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, value)
    }

    /// The stream's chunks as JSON, after checking it ends with `[DONE]`.
    fn stream(&self, body: &Value) -> Vec<Value> {
        let response = self.post(body);
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let data = sse_data(&read_body(response).unwrap());
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
        data[..data.len() - 1]
            .iter()
            .map(|chunk| serde_json::from_str(chunk).unwrap())
            .collect()
    }

    fn upstream(&self) -> Value {
        self.mock.last_request().unwrap()
    }

    fn bearer_sent(&self) -> String {
        self.upstream()["headers"]["authorization"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// The first request waits for the control plane's first token to reach Envoy.
fn first_token_arrives(env: &Env) {
    let body =
        json!({"model": "vertex-gemini", "messages": [{"role": "user", "content": "warm up"}]});
    assert!(
        eventually(Duration::from_secs(20), || env.chat(&body).0 == 200),
        "no Vertex AI token reached the filter: {:?}\n{}",
        env.chat(&body),
        env.gateway.envoy_log()
    );
}

fn gemini_on_vertex(env: &Env) {
    let (status, body) = env.chat(&json!({
        "model": "vertex-gemini",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello vertex"}],
        "temperature": 0.2, "max_tokens": 50
    }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello vertex"
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let upstream = env.upstream();
    assert_eq!(
        upstream["path"],
        "/v1/projects/tollgate-test/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"
    );
    let bearer = env.bearer_sent();
    assert!(
        bearer.starts_with("Bearer ya29.mock-vertex-token-"),
        "{bearer}"
    );
    assert_eq!(upstream["headers"]["x-goog-api-key"], Value::Null);
    assert_eq!(
        upstream["body"],
        json!({"systemInstruction": {"parts": [{"text": "be brief"}]},
            "contents": [{"role": "user", "parts": [{"text": "hello vertex"}]}],
            "generationConfig": {"temperature": 0.2, "maxOutputTokens": 50}})
    );

    let chunks = env.stream(&json!({"model": "vertex-gemini", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream from vertex"}]}));
    assert_eq!(streamed_text(&chunks), "echo: stream from vertex");
    assert_eq!(
        chunks.last().unwrap()["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(
        env.upstream()["path"],
        "/v1/projects/tollgate-test/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
}

fn claude_on_vertex(env: &Env) {
    let (status, body) = env.chat(&json!({"model": "vertex-claude",
        "messages": [{"role": "user", "content": "hello claude"}]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello claude"
    );
    assert_eq!(body["model"], "claude-sonnet-4@20250514");
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert_eq!(body["usage"]["completion_tokens"], 3);
    let upstream = env.upstream();
    assert_eq!(
        upstream["path"],
        "/v1/projects/tollgate-test/locations/us-east5/publishers/anthropic/models/claude-sonnet-4%4020250514:rawPredict"
    );
    assert_eq!(
        upstream["body"],
        json!({"anthropic_version": "vertex-2023-10-16", "max_tokens": 4096,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello claude"}]}]})
    );
    assert_eq!(upstream["headers"]["x-api-key"], Value::Null);
    assert_eq!(upstream["headers"]["anthropic-version"], Value::Null);
    assert!(env
        .bearer_sent()
        .starts_with("Bearer ya29.mock-vertex-token-"));

    let chunks = env.stream(&json!({"model": "vertex-claude", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream claude"}]}));
    assert_eq!(streamed_text(&chunks), "echo: stream claude");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 3);
    assert!(env.upstream()["path"]
        .as_str()
        .unwrap()
        .ends_with("/models/claude-sonnet-4%4020250514:streamRawPredict"));
}

fn tokens_are_refreshed(env: &Env) {
    let body =
        json!({"model": "vertex-gemini", "messages": [{"role": "user", "content": "again"}]});
    let (status, _) = env.chat(&body);
    assert_eq!(status, 200);
    let before = env.bearer_sent();
    // The mock's tokens last TOKEN_TTL_SECS: a request after that goes with a newer one the
    // control plane fetched and pushed meanwhile (an expired one would get 401).
    std::thread::sleep(Duration::from_secs(TOKEN_TTL_SECS + 1));
    let (status, answer) = env.chat(&body);
    assert_eq!(status, 200, "{answer}");
    let after = env.bearer_sent();
    assert_ne!(before, after);
    assert!(
        env.mock.vertex_tokens_issued().unwrap() >= 3,
        "one at the start, then one every {} s",
        TOKEN_TTL_SECS / 2
    );
}

fn without_a_token(env: &Env) {
    // Its token endpoint refuses the account: the filter has no token and says so, and the
    // request never reaches the provider.
    let requests = env.mock.requests().unwrap().len();
    let (status, body) = env.chat(&json!({"model": "vertex-refused",
        "messages": [{"role": "user", "content": "hello"}]}));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "service_unavailable");
    assert_eq!(body["error"]["code"], "upstream_credentials_unavailable");
    assert_eq!(env.mock.requests().unwrap().len(), requests);
    assert!(env
        .gateway
        .log()
        .contains("cannot get a Vertex AI access token"));
}

fn no_key_in_envoy(env: &Env) {
    // Envoy's config dump holds neither the private key nor a token.
    let dump = client()
        .get(format!("{}/config_dump", env.gateway.admin_url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        !dump.contains("PRIVATE KEY"),
        "the key reached Envoy's config"
    );
    assert!(!dump.contains("ya29."), "a token reached Envoy's config");
}

#[test]
fn vertex_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start_with_vertex(dir.path(), TOKEN_TTL_SECS).unwrap();
    let gateway = Gateway::start(dir.path(), &config(&mock)).unwrap();
    let env = Env { mock, gateway };
    first_token_arrives(&env);
    gemini_on_vertex(&env);
    claude_on_vertex(&env);
    tokens_are_refreshed(&env);
    without_a_token(&env);
    no_key_in_envoy(&env);
    assert_eq!(env.gateway.filter_failures(), Vec::<String>::new());
}
