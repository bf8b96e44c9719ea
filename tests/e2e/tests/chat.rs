#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! OpenAI and Anthropic end to end: real Envoy (2 workers) + filter + control plane + mock.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::{
    client, eventually, mock_config, read_body, sse_data, Gateway, Mock, MOCK_ANTHROPIC_KEY,
    MOCK_OPENAI_KEY,
};

const MASTER_KEY: &str = "sk-master-e2e";

struct Env {
    mock: Mock,
    gateway: Gateway,
}

impl Env {
    fn post(&self, path: &str, body: &Value) -> reqwest::blocking::Response {
        client()
            .post(format!("{}{path}", self.gateway.url))
            .bearer_auth(MASTER_KEY)
            .header("accept-encoding", "gzip")
            .json(body)
            .send()
            .unwrap()
    }

    fn chat(&self, body: &Value) -> (u16, Value) {
        let response = self.post("/v1/chat/completions", body);
        let status = response.status().as_u16();
        let text = read_body(response).unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, value)
    }

    fn stream(&self, body: &Value) -> Vec<String> {
        let response = self.post("/v1/chat/completions", body);
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        sse_data(&read_body(response).unwrap())
    }
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn chunks_json(data: &[String]) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str(chunk).unwrap())
        .collect()
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"][name].as_str()
}

fn openai_chat(env: &Env) {
    let (status, body) = env.chat(&json!({"model": "gpt-mock", "messages": user("hello there")}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello there"
    );
    assert_eq!(body["object"], "chat.completion");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let upstream = env.mock.last_request().unwrap();
    assert_eq!(upstream["path"], "/v1/chat/completions");
    assert_eq!(
        upstream["body"]["model"], "mock-gpt-4o",
        "model rewritten to the deployment's"
    );
    assert_eq!(
        header(&upstream, "authorization"),
        Some(format!("Bearer {MOCK_OPENAI_KEY}").as_str())
    );
    assert_eq!(
        header(&upstream, "x-tollgate-upstream"),
        None,
        "routing header stripped"
    );
    assert_eq!(
        header(&upstream, "accept-encoding"),
        None,
        "client accept-encoding stripped"
    );

    let response = env.post(
        "/chat/completions",
        &json!({"model": "gpt-mock", "messages": user("short path")}),
    );
    assert_eq!(response.status(), 200);
}

fn openai_stream(env: &Env) {
    let chunks =
        chunks_json(&env.stream(
            &json!({"model": "gpt-mock", "stream": true, "messages": user("one two three")}),
        ));
    assert_eq!(streamed_text(&chunks), "echo: one two three");
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["choices"].as_array().is_some_and(|c| !c.is_empty())),
        "the forced usage chunk must not reach a client that did not ask for it"
    );
    let upstream = env.mock.last_request().unwrap();
    assert_eq!(
        upstream["body"]["stream_options"]["include_usage"], true,
        "include_usage forced upstream"
    );

    let chunks = chunks_json(&env.stream(&json!({
        "model": "gpt-mock", "stream": true, "stream_options": {"include_usage": true}, "messages": user("one two")
    })));
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let chunks = chunks_json(&env.stream(
        &json!({"model": "gpt-mock", "stream": true, "messages": user("count mock:chunks=200")}),
    ));
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(content_chunks, 200);
}

fn anthropic_chat(env: &Env) {
    let (status, body) = env.chat(&json!({
        "model": "claude-mock",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello claude"}],
        "temperature": 0.2
    }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello claude"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let upstream = env.mock.last_request().unwrap();
    assert_eq!(upstream["path"], "/v1/messages");
    assert_eq!(header(&upstream, "x-api-key"), Some(MOCK_ANTHROPIC_KEY));
    assert_eq!(header(&upstream, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        header(&upstream, "authorization"),
        None,
        "the client's gateway key never reaches a provider"
    );
    assert_eq!(upstream["body"]["model"], "claude-mock-sonnet");
    assert_eq!(upstream["body"]["max_tokens"], 4096, "default max_tokens");
    assert_eq!(upstream["body"]["system"][0]["text"], "be brief");
    assert_eq!(upstream["body"]["messages"][0]["role"], "user");
}

fn anthropic_stream(env: &Env) {
    let chunks = chunks_json(&env.stream(&json!({
        "model": "claude-mock", "stream": true, "stream_options": {"include_usage": true}, "messages": user("stream me please")
    })));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks), "echo: stream me please");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    // A stream the provider drops ends with the gateway's error event, in both builds (the
    // native module once lost what it wrote on the empty end-of-stream call).
    let data = env.stream(&json!({
        "model": "claude-mock", "stream": true, "messages": user("cut mock:stream_cut")
    }));
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(
        last,
        json!({"error": {
            "message": "The upstream stream ended before the response was complete.",
            "type": "api_error", "param": null, "code": "upstream_stream_cut"}}),
        "{data:?}"
    );
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str(chunk).unwrap())
        .collect();
    assert_eq!(streamed_text(&chunks), "echo:");
    assert!(!data.iter().any(|event| event == "[DONE]"));
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}])
}

fn anthropic_tools(env: &Env) {
    let (status, body) = env.chat(
        &json!({"model": "claude-mock", "messages": user("weather in Paris?"), "tools": tools()}),
    );
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["location"], "Paris");

    // The tool result goes back as an Anthropic tool_result.
    let (status, body) = env.chat(
        &json!({"model": "claude-mock", "tools": tools(), "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let upstream = env.mock.last_request().unwrap();
    let blocks = &upstream["body"]["messages"][2]["content"];
    assert_eq!(blocks[0]["type"], "tool_result");
    assert_eq!(blocks[0]["tool_use_id"], call["id"]);

    let chunks = chunks_json(&env.stream(&json!({"model": "claude-mock", "stream": true, "messages": user("weather?"), "tools": tools()})));
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(arguments["location"], "Paris");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
}

fn models(env: &Env) {
    let response = client()
        .get(format!("{}/v1/models", env.gateway.url))
        .bearer_auth(MASTER_KEY)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().unwrap();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["gpt-mock", "claude-mock"]);
}

fn provider_errors(env: &Env) {
    let (status, body) =
        env.chat(&json!({"model": "gpt-mock", "messages": user("mock:status=429")}));
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let (status, body) =
        env.chat(&json!({"model": "claude-mock", "messages": user("mock:status=529")}));
    assert_eq!(status, 529);
    assert_eq!(body["error"]["type"], "overloaded_error");
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(body["error"]["message"].is_string());

    let (status, body) =
        env.chat(&json!({"model": "gpt-mock", "messages": user("mock:raw_error")}));
    assert_eq!(status, 500);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream exploded"));

    let (status, body) =
        env.chat(&json!({"model": "claude-mock", "messages": user("mock:raw_error")}));
    assert_eq!(status, 500);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream exploded"));
}

fn stats(env: &Env) {
    // Counters reach Envoy's stats at the filter's next tick (every 250 ms).
    eventually(Duration::from_secs(5), || {
        env.gateway
            .prometheus()
            .is_ok_and(|text| text.contains(r#"provider="anthropic",status="529""#))
    });
    let prometheus = env.gateway.prometheus().unwrap();
    let has = |needle: &str| prometheus.lines().any(|line| line.contains(needle));
    assert!(
        has(r#"model="gpt-mock",provider="openai",status="200""#),
        "{prometheus}"
    );
    assert!(
        has(r#"model="claude-mock",provider="anthropic",status="529""#),
        "{prometheus}"
    );
    assert!(has("tollgate_prompt_tokens{"), "{prometheus}");
    assert!(has("tollgate_completion_tokens{"), "{prometheus}");
    assert!(has("tollgate_upstream_latency_ms_bucket{"), "{prometheus}");
    // The same on the gateway port.
    let metrics = client()
        .get(format!("{}/metrics", env.gateway.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("tollgate_requests"), "{metrics}");
}

#[test]
fn openai_and_anthropic_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &mock_config(&mock, Some(MASTER_KEY))).unwrap();
    let env = Env { mock, gateway };
    models(&env);
    openai_chat(&env);
    openai_stream(&env);
    anthropic_chat(&env);
    anthropic_stream(&env);
    anthropic_tools(&env);
    provider_errors(&env);
    stats(&env);
}
