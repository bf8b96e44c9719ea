//! Helpers shared by the integration tests.
#![allow(dead_code)]
// Test helpers: a failing helper should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use tollgate_mock::{spawn, MockConfig};

pub async fn start(config: MockConfig) -> String {
    let addr = spawn(config).await.expect("mock starts");
    format!("http://{addr}")
}

pub async fn start_default() -> String {
    start(MockConfig::default()).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// POSTs an OpenAI chat completion request.
pub async fn openai(base: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// POSTs an Anthropic messages request with `anthropic-version`.
pub async fn anthropic(base: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// The `data:` payloads of an OpenAI SSE body, in order (`[DONE]` included verbatim).
pub fn openai_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {e:?}"));
            assert!(!data.contains('\n'), "one line per event: {e:?}");
            data.to_owned()
        })
        .collect()
}

/// The JSON chunks of an OpenAI SSE body (everything but `[DONE]`).
pub fn openai_chunks(body: &str) -> Vec<Value> {
    openai_events(body)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk is JSON"))
        .collect()
}

/// `(event name, data)` pairs of an Anthropic SSE body.
pub fn anthropic_events(body: &str) -> Vec<(String, Value)> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let name = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .unwrap_or_else(|| panic!("missing event line: {e:?}"));
            let data = lines
                .next()
                .and_then(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("missing data line: {e:?}"));
            assert!(lines.next().is_none(), "two lines per event: {e:?}");
            let data: Value = serde_json::from_str(data).expect("event data is JSON");
            assert_eq!(data["type"], name, "event name matches data.type");
            (name.to_owned(), data)
        })
        .collect()
}

pub fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

/// Concatenation of OpenAI `delta.content` pieces, and how many non-empty ones there were.
pub fn openai_content(chunks: &[Value]) -> (String, usize) {
    let mut text = String::new();
    let mut n = 0;
    for c in chunks {
        if let Some(s) = c["choices"][0]["delta"]["content"].as_str() {
            if !s.is_empty() {
                n += 1;
            }
            text.push_str(s);
        }
    }
    (text, n)
}

/// Concatenation of Anthropic text_delta pieces, and how many there were.
pub fn anthropic_text(events: &[(String, Value)]) -> (String, usize) {
    let mut text = String::new();
    let mut n = 0;
    for (_, d) in events {
        if d["type"] == "content_block_delta" && d["delta"]["type"] == "text_delta" {
            text.push_str(d["delta"]["text"].as_str().expect("text"));
            n += 1;
        }
    }
    (text, n)
}
