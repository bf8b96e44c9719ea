//! Anthropic Messages emulation.
// Helpers outside #[test] fns may unwrap too: a failing test should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;
use tollgate_mock::MockConfig;

fn tools() -> Value {
    json!([
        {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}},
        {"name": "get_time", "input_schema": {"type": "object"}}
    ])
}

#[tokio::test]
async fn non_stream_message() {
    let base = start_default().await;
    let resp = anthropic(
        &base,
        &json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "system": "You are a helpful assistant.",
            "messages": [
                {"role": "user", "content": "earlier question"},
                {"role": "assistant", "content": "earlier answer"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "claude"}]}
            ]
        }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("request-id").is_some());
    let text = resp.text().await.unwrap();
    assert!(
        text.starts_with(r#"{"id":"msg_mock_"#),
        "field order like Anthropic: {text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "echo: hello claude"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["stop_sequence"].is_null());
    // system 5 + 2 + 2 + 2 words
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 11, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 3})
    );
}

#[tokio::test]
async fn images_are_counted() {
    let base = start_default().await;
    let v: Value = anthropic(
        &base,
        &json!({
            "model": "claude", "max_tokens": 10,
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "describe"}
            ]}]
        }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["content"][0]["text"], "echo: describe [images: 2]");
}

#[tokio::test]
async fn stream_event_sequence() {
    let base = start_default().await;
    let resp = anthropic(
        &base,
        &json!({"model": "claude", "max_tokens": 50, "stream": true, "system": [{"type": "text", "text": "sys prompt"}],
                "messages": [{"role": "user", "content": "tell me more"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = resp.text().await.unwrap();
    let events = anthropic_events(&body);
    assert_eq!(
        names(&events),
        vec![
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_mock_"));
    assert_eq!(start["type"], "message");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["model"], "claude");
    assert_eq!(start["content"], json!([]));
    assert!(start["stop_reason"].is_null());
    assert_eq!(start["usage"]["input_tokens"], 5);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    let (text, n) = anthropic_text(&events);
    assert_eq!(text, "echo: tell me more");
    assert_eq!(n, 4);
    assert_eq!(events[3].1["index"], 0);
    assert_eq!(
        events[7].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(
        events[8].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 4}})
    );
    assert_eq!(events[9].1, json!({"type": "message_stop"}));
}

#[tokio::test]
async fn tool_use_non_stream() {
    let base = start_default().await;
    let v: Value = anthropic(
        &base,
        &json!({"model": "claude", "max_tokens": 100, "tools": tools(), "messages": [{"role": "user", "content": "weather?"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"],
        json!([
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather", "input": {"location": "Paris", "unit": "celsius"}}
        ])
    );

    let forced: Value = anthropic(
        &base,
        &json!({"model": "claude", "max_tokens": 100, "tools": tools(), "tool_choice": {"type": "tool", "name": "get_time"},
                "messages": [{"role": "user", "content": "time?"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(forced["content"][1]["name"], "get_time");

    let none: Value = anthropic(
        &base,
        &json!({"model": "claude", "max_tokens": 100, "tools": tools(), "tool_choice": {"type": "none"},
                "messages": [{"role": "user", "content": "no tools"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(none["stop_reason"], "end_turn");
    assert_eq!(none["content"][0]["text"], "echo: no tools");
}

#[tokio::test]
async fn tool_result_turn_gets_text() {
    let base = start_default().await;
    let v: Value = anthropic(
        &base,
        &json!({
            "model": "claude", "max_tokens": 100, "tools": tools(),
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather", "input": {"location": "Paris"}}
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_mock_1", "content": "15 degrees"}]}
            ]
        }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "echo: 15 degrees"}])
    );
}

#[tokio::test]
async fn tool_use_stream() {
    let base = start_default().await;
    let body = anthropic(
        &base,
        &json!({"model": "claude", "max_tokens": 100, "stream": true, "tools": tools(),
                "messages": [{"role": "user", "content": "weather?"}]}),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = anthropic_events(&body);
    let n = names(&events);
    assert_eq!(&n[..3], &["message_start", "content_block_start", "ping"]);
    assert_eq!(&n[n.len() - 2..], &["message_delta", "message_stop"]);
    let tool_start = events
        .iter()
        .find(|(name, d)| name == "content_block_start" && d["index"] == 1)
        .expect("tool_use block starts at index 1");
    assert_eq!(
        tool_start.1["content_block"],
        json!({"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather", "input": {}})
    );
    let mut json_text = String::new();
    let mut pieces = 0;
    for (_, d) in &events {
        if d["type"] == "content_block_delta" && d["index"] == 1 {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            let p = d["delta"]["partial_json"].as_str().unwrap();
            if !p.is_empty() {
                pieces += 1;
            }
            json_text.push_str(p);
        }
    }
    assert!(pieces >= 3, "input split into 3+ pieces, got {pieces}");
    assert_eq!(
        serde_json::from_str::<Value>(&json_text).unwrap(),
        json!({"location": "Paris", "unit": "celsius"})
    );
    assert_eq!(anthropic_text(&events).0, "Let me check.");
    let stops: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "content_block_stop")
        .map(|(_, d)| &d["index"])
        .collect();
    assert_eq!(stops, vec![&json!(0), &json!(1)]);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn stop_sequences() {
    let base = start_default().await;
    let v: Value = anthropic(
        &base,
        &json!({"model": "claude", "max_tokens": 100, "stop_sequences": ["zzz", "END"],
                "messages": [{"role": "user", "content": "one two END three"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["stop_reason"], "stop_sequence");
    assert_eq!(v["stop_sequence"], "END");
    assert_eq!(v["content"][0]["text"], "echo: one two ");

    let body = anthropic(
        &base,
        &json!({"model": "claude", "max_tokens": 100, "stream": true, "stop_sequences": ["END"],
                "messages": [{"role": "user", "content": "one two END three"}]}),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = anthropic_events(&body);
    assert_eq!(anthropic_text(&events).0, "echo: one two ");
    let delta = &events[events.len() - 2].1["delta"];
    assert_eq!(delta["stop_reason"], "stop_sequence");
    assert_eq!(delta["stop_sequence"], "END");
}

async fn expect_invalid(base: &str, body: Value, needle: &str) {
    let resp = anthropic(base, &body).await;
    assert_eq!(resp.status(), 400, "{body}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
}

#[tokio::test]
async fn validation_errors() {
    let base = start_default().await;
    // No anthropic-version header.
    let resp = client()
        .post(format!("{base}/v1/messages"))
        .json(&json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"],
        json!({"type": "invalid_request_error", "message": "anthropic-version: header is required"})
    );

    expect_invalid(
        &base,
        json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "x"}]}),
        "Unexpected role \"system\". The Messages API accepts a top-level `system` parameter",
    )
    .await;
    expect_invalid(
        &base,
        json!({"model": "claude", "messages": [{"role": "user", "content": "x"}]}),
        "max_tokens: Field required",
    )
    .await;
    expect_invalid(
        &base,
        json!({"model": "claude", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
        "max_tokens",
    )
    .await;
    expect_invalid(&base, json!({"model": "claude", "max_tokens": 1.5, "messages": [{"role": "user", "content": "x"}]}), "max_tokens").await;
    expect_invalid(
        &base,
        json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        "model: Field required",
    )
    .await;
    expect_invalid(
        &base,
        json!({"model": "claude", "max_tokens": 5}),
        "messages: Field required",
    )
    .await;
    expect_invalid(
        &base,
        json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "assistant", "content": "x"}]}),
        "first message",
    )
    .await;
    expect_invalid(
        &base,
        json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}),
        "messages.0.content.0",
    )
    .await;
    expect_invalid(
        &base,
        json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "x"}}]}]}),
        "media_type",
    )
    .await;
    expect_invalid(
        &base,
        json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}]}]}),
        "unexpected `tool_use_id` found in `tool_result` blocks: toolu_nope",
    )
    .await;
    expect_invalid(
        &base,
        json!({"model": "claude", "max_tokens": 5, "tools": [{"name": "t"}], "messages": [{"role": "user", "content": "x"}]}),
        "input_schema: Field required",
    )
    .await;
    expect_invalid(
        &base,
        json!({"model": "claude", "max_tokens": 5, "tools": tools(), "tool_choice": {"type": "required"},
               "messages": [{"role": "user", "content": "x"}]}),
        "'auto', 'any', 'tool', 'none'",
    )
    .await;
    // OpenAI-only fields leaking through a gateway are rejected, as Anthropic does.
    expect_invalid(
        &base,
        json!({"model": "claude", "max_tokens": 5, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "x"}]}),
        "stream_options: Extra inputs are not permitted",
    )
    .await;

    let resp = client()
        .post(format!("{base}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn auth_required_when_configured() {
    let base = start(MockConfig {
        anthropic_api_key: Some("sk-ant-test".into()),
        ..Default::default()
    })
    .await;
    let body =
        json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let url = format!("{base}/v1/messages");

    let missing = client()
        .post(&url)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let v: Value = missing.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(
        v["error"],
        json!({"type": "authentication_error", "message": "x-api-key header is required"})
    );

    let wrong = client()
        .post(&url)
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let v: Value = wrong.json().await.unwrap();
    assert_eq!(
        v["error"],
        json!({"type": "authentication_error", "message": "invalid x-api-key"})
    );

    let ok = client()
        .post(&url)
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "sk-ant-test")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}
