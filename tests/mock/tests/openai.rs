//! OpenAI Chat Completions emulation.
// Helpers outside #[test] fns may unwrap too: a failing test should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;
use tollgate_mock::MockConfig;

const ARGS: &str = r#"{"location":"Paris","unit":"celsius"}"#;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    ])
}

#[tokio::test]
async fn non_stream_echo_and_usage() {
    let base = start_default().await;
    let resp = openai(
        &base,
        &json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": "hello there world"}
            ]
        }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(v["model"], "gpt-4o-mini");
    let created = v["created"].as_u64().unwrap();
    assert!(created.abs_diff(now()) < 60);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "echo: hello there world");
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["logprobs"].is_null());
    // 3 + 2 + 2 + 3 words in; "echo: hello there world" is 4 words out.
    assert_eq!(v["usage"]["prompt_tokens"], 10);
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 14);
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn ids_are_unique_and_body_key_order_matches_openai() {
    let base = start_default().await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    let a = openai(&base, &body).await.text().await.unwrap();
    let b = openai(&base, &body).await.text().await.unwrap();
    assert!(
        a.starts_with(r#"{"id":"chatcmpl-mock-"#),
        "id comes first like OpenAI: {a}"
    );
    let ida = serde_json::from_str::<Value>(&a).unwrap()["id"].clone();
    let idb = serde_json::from_str::<Value>(&b).unwrap()["id"].clone();
    assert_ne!(ida, idb);
}

#[tokio::test]
async fn array_content_with_images() {
    let base = start_default().await;
    let v: Value = openai(
        &base,
        &json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "text", "text": "in these?"}
            ]}]
        }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "echo: what is in these? [images: 2]"
    );
    assert_eq!(v["usage"]["prompt_tokens"], 4);
}

#[tokio::test]
async fn stream_without_include_usage() {
    let base = start_default().await;
    let resp = openai(
        &base,
        &json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "one two  three"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = resp.text().await.unwrap();
    let events = openai_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = openai_chunks(&body);
    // role chunk + 4 word chunks + finish chunk
    assert_eq!(chunks.len(), 6, "{body}");
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert_eq!(c["model"], "gpt-4o");
        assert!(
            c.get("usage").is_none(),
            "no usage key without include_usage: {c}"
        );
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    assert!(chunks[0]["choices"][0]["finish_reason"].is_null());
    let (text, n) = openai_content(&chunks);
    assert_eq!(text, "echo: one two  three");
    assert_eq!(n, 4);
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "echo:");
    assert_eq!(chunks[2]["choices"][0]["delta"]["content"], " one");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn stream_with_include_usage() {
    let base = start_default().await;
    let body = openai(
        &base,
        &json!({
            "model": "gpt-4o",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
        }),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = openai_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = openai_chunks(&body);
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 4);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 3);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 7);
    for c in rest {
        assert!(
            c.get("usage").is_some_and(Value::is_null),
            "usage: null on every other chunk: {c}"
        );
    }
    assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert_eq!(openai_content(rest).0, "echo: hi there");
}

#[tokio::test]
async fn tool_call_non_stream() {
    let base = start_default().await;
    let v: Value = openai(
        &base,
        &json!({"model": "gpt-4o", "tools": weather_tools(), "messages": [{"role": "user", "content": "weather in Paris?"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_mock_1");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args = call["function"]["arguments"]
        .as_str()
        .expect("arguments is a JSON string");
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"location": "Paris", "unit": "celsius"})
    );
}

#[tokio::test]
async fn tool_choice_forced_none_and_after_tool_result() {
    let base = start_default().await;
    let forced: Value = openai(
        &base,
        &json!({
            "model": "gpt-4o",
            "tools": weather_tools(),
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            "messages": [{"role": "user", "content": "time?"}]
        }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        forced["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_time"
    );

    let none: Value = openai(
        &base,
        &json!({"model": "gpt-4o", "tools": weather_tools(), "tool_choice": "none",
                "messages": [{"role": "user", "content": "no tools"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(none["choices"][0]["finish_reason"], "stop");
    assert_eq!(none["choices"][0]["message"]["content"], "echo: no tools");

    // The last message is the tool's answer: reply with text, echoing the last user message.
    let after: Value = openai(
        &base,
        &json!({
            "model": "gpt-4o",
            "tools": weather_tools(),
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_mock_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}
                ]},
                {"role": "tool", "tool_call_id": "call_mock_1", "content": "15 degrees"}
            ]
        }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(after["choices"][0]["finish_reason"], "stop");
    assert_eq!(after["choices"][0]["message"]["content"], "echo: weather?");
}

#[tokio::test]
async fn tool_call_stream() {
    let base = start_default().await;
    let body = openai(
        &base,
        &json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
                "tools": weather_tools(), "messages": [{"role": "user", "content": "weather?"}]}),
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(openai_events(&body).last().unwrap(), "[DONE]");
    let chunks = openai_chunks(&body);
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    let call = &first["tool_calls"][0];
    assert_eq!(call["index"], 0);
    assert_eq!(call["id"], "call_mock_1");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "");
    let mut args = String::new();
    let mut pieces = 0;
    for c in &chunks[1..] {
        if let Some(calls) = c["choices"][0]["delta"]["tool_calls"].as_array() {
            assert_eq!(calls[0]["index"], 0);
            assert!(
                calls[0].get("id").is_none(),
                "only the first chunk carries the id"
            );
            args.push_str(calls[0]["function"]["arguments"].as_str().unwrap());
            pieces += 1;
        }
    }
    assert!(
        pieces >= 3,
        "arguments split into several pieces, got {pieces}"
    );
    assert_eq!(args, ARGS);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
}

#[tokio::test]
async fn stop_sequence_cuts_reply() {
    let base = start_default().await;
    let v: Value = openai(
        &base,
        &json!({"model": "m", "stop": ["STOP"], "messages": [{"role": "user", "content": "a b STOP c"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: a b ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

async fn expect_400(base: &str, body: Value, param: Option<&str>, code: Option<&str>) -> Value {
    let resp = openai(base, &body).await;
    assert_eq!(resp.status(), 400, "{body}");
    let v: Value = resp.json().await.unwrap();
    let err = &v["error"];
    assert_eq!(err["type"], "invalid_request_error");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(err["param"].as_str(), param, "{v}");
    assert_eq!(err["code"].as_str(), code, "{v}");
    v
}

#[tokio::test]
async fn validation_errors() {
    let base = start_default().await;
    let resp = client()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("could not parse the JSON body"));

    expect_400(
        &base,
        json!({"messages": [{"role": "user", "content": "x"}]}),
        Some("model"),
        None,
    )
    .await;
    expect_400(
        &base,
        json!({"model": "m"}),
        Some("messages"),
        Some("missing_required_parameter"),
    )
    .await;
    expect_400(
        &base,
        json!({"model": "m", "messages": []}),
        Some("messages"),
        Some("empty_array"),
    )
    .await;
    expect_400(
        &base,
        json!({"model": "m", "messages": "hi"}),
        Some("messages"),
        Some("invalid_type"),
    )
    .await;
    expect_400(
        &base,
        json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
        Some("messages[0].role"),
        Some("invalid_value"),
    )
    .await;
    expect_400(
        &base,
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c", "content": "y"}]}),
        Some("messages[1]"),
        None,
    )
    .await;
}

#[tokio::test]
async fn auth_required_when_configured() {
    let base = start(MockConfig {
        openai_api_key: Some("sk-test-123456789".into()),
        ..Default::default()
    })
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    let url = format!("{base}/v1/chat/completions");

    let missing = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let v: Value = missing.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let wrong = client()
        .post(&url)
        .bearer_auth("sk-wrong-key-000000")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let v: Value = wrong.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("Incorrect API key provided"), "{msg}");
    assert!(!msg.contains("sk-wrong-key-000000"), "key is masked: {msg}");

    let ok = client()
        .post(&url)
        .bearer_auth("sk-test-123456789")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // Anthropic auth is independent.
    let anthropic_ok = anthropic(
        &base,
        &json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(anthropic_ok.status(), 200);
}

#[tokio::test]
async fn path_variants() {
    let base = start_default().await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    for path in [
        "/chat/completions",
        "/openai/deployments/gpt/chat/completions?api-version=2024-10-21",
    ] {
        let resp = client()
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn azure_deployments_want_an_api_version_and_their_api_key() {
    let base = start(MockConfig {
        azure_api_key: Some("azure-key-1".into()),
        openai_api_key: Some("sk-not-for-azure".into()),
        ..Default::default()
    })
    .await;
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let path = format!("{base}/openai/deployments/my-gpt/chat/completions");

    let no_version = client()
        .post(&path)
        .header("api-key", "azure-key-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status(), 404);
    let v: Value = no_version.json().await.unwrap();
    assert_eq!(
        v,
        json!({"error": {"code": "404", "message": "Resource not found"}})
    );

    let url = format!("{path}?api-version=2024-10-21");
    for bearer in [true, false] {
        let mut request = client().post(&url).json(&body);
        if bearer {
            // OpenAI's way is not Azure's.
            request = request.bearer_auth("azure-key-1");
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 401);
        let v: Value = refused.json().await.unwrap();
        assert_eq!(v["error"]["code"], "401");
        assert!(
            v["error"].get("type").is_none(),
            "Azure's shape has no type"
        );
    }

    let ok = client()
        .post(&url)
        .header("api-key", "azure-key-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let v: Value = ok.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hi");
}
