#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Legacy text completions (`POST /v1/completions`) end to end: real Envoy (2 workers) +
//! filter + control plane + mock. OpenAI and Azure get the request passed through to their
//! own completions endpoint; Anthropic is reached through its chat translation and answers as
//! a text completion. The ledger records exact tokens for each.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::{
    client, eventually, read_body, sse_data, Gateway, Mock, MOCK_ANTHROPIC_KEY, MOCK_AZURE_KEY,
    MOCK_OPENAI_KEY,
};

const MASTER_KEY: &str = "sk-master-completions";

fn config(mock: &Mock) -> String {
    format!(
        "model_list:\n\
         - model_name: gpt-mock\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-gpt-instruct\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         - model_name: claude-mock\n\
         \x20 litellm_params:\n\
         \x20   model: anthropic/claude-mock-sonnet\n\
         \x20   api_base: {url}\n\
         \x20   api_key: {MOCK_ANTHROPIC_KEY}\n\
         - model_name: azure-instruct\n\
         \x20 litellm_params:\n\
         \x20   model: azure/instruct-deployment\n\
         \x20   api_base: {url}\n\
         \x20   api_version: \"2024-10-21\"\n\
         \x20   api_key: {MOCK_AZURE_KEY}\n\
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
    fn post(&self, path: &str, body: &Value) -> reqwest::blocking::Response {
        client()
            .post(format!("{}{path}", self.gateway.url))
            .bearer_auth(MASTER_KEY)
            .json(body)
            .send()
            .unwrap()
    }

    fn complete(&self, body: &Value) -> (u16, Value) {
        let response = self.post("/v1/completions", body);
        let status = response.status().as_u16();
        let text = read_body(response).unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, value)
    }

    /// The stream's JSON chunks (`[DONE]` checked and left out).
    fn stream(&self, body: &Value) -> Vec<Value> {
        let response = self.post("/v1/completions", body);
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

    /// The spend log rows of requests sent with `user: end_user`, once there are `count`.
    fn logs(&self, end_user: &str, count: usize) -> Vec<Value> {
        let fetch = || -> Vec<Value> {
            client()
                .get(format!(
                    "{}/spend/logs?end_user={end_user}",
                    self.gateway.url
                ))
                .bearer_auth(MASTER_KEY)
                .send()
                .unwrap()
                .json::<Value>()
                .unwrap()
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        assert!(
            eventually(Duration::from_secs(15), || fetch().len() >= count),
            "{end_user}: {:?}",
            fetch()
        );
        fetch()
    }
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["text"].as_str())
        .collect()
}

/// (provider, status, prompt tokens, completion tokens, stream) of a spend log row.
fn token_counts(row: &Value) -> (String, u64, Option<u64>, Option<u64>, bool) {
    let tollgate = &row["metadata"]["tollgate"];
    (
        row["custom_llm_provider"].as_str().unwrap().to_string(),
        tollgate["http_status"].as_u64().unwrap(),
        tollgate["prompt_tokens"].as_u64(),
        tollgate["completion_tokens"].as_u64(),
        tollgate["stream"].as_bool().unwrap(),
    )
}

fn openai_pass_through(env: &Env) {
    let (status, body) = env.complete(&json!({
        "model": "gpt-mock", "prompt": "hello completions", "max_tokens": 10,
        "user": "cmpl-e2e-openai"
    }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "mock-gpt-instruct");
    assert_eq!(
        body["choices"],
        json!([{"text": "echo: hello completions", "index": 0, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    );
    let upstream = env.mock.last_request().unwrap();
    assert_eq!(upstream["path"], "/v1/completions");
    assert_eq!(
        upstream["body"],
        json!({"model": "mock-gpt-instruct", "prompt": "hello completions", "max_tokens": 10,
            "user": "cmpl-e2e-openai"})
    );
    assert_eq!(
        upstream["headers"]["authorization"],
        format!("Bearer {MOCK_OPENAI_KEY}")
    );

    // Streamed without the usage chunk: the gateway still counts the tokens.
    let chunks = env.stream(&json!({
        "model": "gpt-mock", "prompt": "one two three", "stream": true,
        "user": "cmpl-e2e-openai-stream"
    }));
    assert_eq!(streamed_text(&chunks), "echo: one two three");
    assert!(chunks
        .iter()
        .all(|chunk| chunk["object"] == "text_completion"));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(
        chunks.iter().all(|chunk| chunk["choices"] != json!([])),
        "no usage chunk the client did not ask for"
    );
    let upstream = env.mock.last_request().unwrap();
    assert_eq!(upstream["body"]["stream_options"]["include_usage"], true);

    // Azure: the deployment's completions path, version and key.
    let (status, body) = env.complete(&json!({
        "model": "azure-instruct", "prompt": "hello azure", "user": "cmpl-e2e-azure"
    }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "echo: hello azure");
    let upstream = env.mock.last_request().unwrap();
    assert_eq!(
        upstream["path"],
        "/openai/deployments/instruct-deployment/completions?api-version=2024-10-21"
    );
    assert_eq!(upstream["headers"]["api-key"], MOCK_AZURE_KEY);
}

fn anthropic_translated(env: &Env) {
    let response = env.post(
        "/completions",
        &json!({"model": "claude-mock", "prompt": "hello claude", "user": "cmpl-e2e-claude"}),
    );
    assert_eq!(response.status(), 200);
    let body: Value = serde_json::from_str(&read_body(response).unwrap()).unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(
        body["choices"],
        json!([{"text": "echo: hello claude", "index": 0, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["usage"]["total_tokens"], 5);
    let upstream = env.mock.last_request().unwrap();
    assert_eq!(upstream["path"], "/v1/messages");
    assert_eq!(upstream["body"]["model"], "claude-mock-sonnet");
    assert_eq!(upstream["body"]["max_tokens"], 16, "OpenAI's default");
    assert_eq!(
        upstream["body"]["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hello claude"}]}])
    );

    let chunks = env.stream(&json!({
        "model": "claude-mock", "prompt": "stream claude please", "stream": true,
        "stream_options": {"include_usage": true}, "user": "cmpl-e2e-claude-stream"
    }));
    assert_eq!(streamed_text(&chunks), "echo: stream claude please");
    assert!(chunks
        .iter()
        .all(|chunk| chunk["object"] == "text_completion"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 3);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["usage"]["total_tokens"], 7);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );

    // What a chat request cannot say is refused, naming the field.
    let (status, body) = env.complete(&json!({"model": "claude-mock", "prompt": "x", "n": 2}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "n");
    let (status, body) = env.complete(&json!({"model": "claude-mock", "prompt": ["a", "b"]}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "prompt");
}

fn usage_recorded(env: &Env) {
    for (end_user, expected) in [
        (
            "cmpl-e2e-openai",
            ("openai".into(), 200, Some(2), Some(3), false),
        ),
        (
            "cmpl-e2e-openai-stream",
            ("openai".into(), 200, Some(3), Some(4), true),
        ),
        (
            "cmpl-e2e-azure",
            ("azure".into(), 200, Some(2), Some(3), false),
        ),
        (
            "cmpl-e2e-claude",
            ("anthropic".into(), 200, Some(2), Some(3), false),
        ),
        (
            "cmpl-e2e-claude-stream",
            ("anthropic".into(), 200, Some(3), Some(4), true),
        ),
    ] {
        let rows = env.logs(end_user, 1);
        assert_eq!(rows.len(), 1, "{end_user}: {rows:?}");
        assert_eq!(token_counts(&rows[0]), expected, "{end_user}");
    }
}

#[test]
fn completions_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &config(&mock)).unwrap();
    let env = Env { mock, gateway };
    openai_pass_through(&env);
    anthropic_translated(&env);
    usage_recorded(&env);
    assert_eq!(env.gateway.filter_failures(), Vec::<String>::new());
}
