//! Cohere v2 Chat API emulation, over HTTP.
// Helpers outside #[test] fns may unwrap too: a failing test should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;
use tollgate_mock::MockConfig;

const KEY: &str = "co-mock";

async fn cohere_start() -> String {
    start(MockConfig {
        cohere_api_key: Some(KEY.into()),
        ..Default::default()
    })
    .await
}

async fn post(base: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v2/chat"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn chat(base: &str, body: &Value) -> (u16, Value) {
    let resp = post(base, body).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// The events of a Cohere stream: `(event name, data)`, the `[DONE]` terminator last.
fn sse_events(body: &str) -> Vec<(String, String)> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let mut name = String::new();
            let mut data = String::new();
            for line in event.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = value.to_owned();
                } else {
                    panic!("unexpected line {line:?}");
                }
            }
            (name, data)
        })
        .collect()
}

fn datas(events: &[(String, String)]) -> Vec<Value> {
    events
        .iter()
        .filter(|(_, data)| data != "[DONE]")
        .map(|(name, data)| {
            let value: Value = serde_json::from_str(data).unwrap();
            assert_eq!(value["type"], name.as_str(), "{data}");
            value
        })
        .collect()
}

#[tokio::test]
async fn chat_echoes_with_billed_and_model_tokens() {
    let base = cohere_start().await;
    let (status, v) = chat(
        &base,
        &json!({"model": "command-a-03-2025", "messages": [
            {"role": "system", "content": "be brief"}, user("earlier"),
            {"role": "assistant", "content": "ok"}, user("hello cohere")]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["id"]
        .as_str()
        .unwrap()
        .starts_with("00000000-0000-4000-8000-"));
    assert_eq!(
        v["message"],
        json!({"role": "assistant", "content": [{"type": "text", "text": "echo: hello cohere"}]})
    );
    assert_eq!(v["finish_reason"], "COMPLETE");
    // 2 + 1 + 1 + 2 words billed in; the template's 64 only in `tokens`.
    assert_eq!(
        v["usage"],
        json!({"billed_units": {"input_tokens": 6, "output_tokens": 3},
            "tokens": {"input_tokens": 70, "output_tokens": 3}})
    );
}

#[tokio::test]
async fn keys_are_checked_as_cohere_checks_them() {
    let base = cohere_start().await;
    let url = format!("{base}/v2/chat");
    let body = json!({"model": "c", "messages": [user("x")]});
    let missing = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["message"], "no api key supplied");
    let wrong = client()
        .post(&url)
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let wrong: Value = wrong.json().await.unwrap();
    assert_eq!(wrong["message"], "invalid api token");
    assert!(wrong["id"].is_string());
    // Without a configured key, anything goes.
    let open = start_default().await;
    let resp = client()
        .post(format!("{open}/v2/chat"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn untranslated_openai_fields_are_refused() {
    let base = cohere_start().await;
    for (field, value) in [
        ("top_p", json!(0.5)),
        ("max_completion_tokens", json!(5)),
        ("n", json!(1)),
        ("stop", json!(["x"])),
        ("stream_options", json!({"include_usage": true})),
        ("tool_choice_mode", json!("auto")),
    ] {
        let mut body = json!({"model": "c", "messages": [user("x")]});
        body[field] = value;
        let (status, v) = chat(&base, &body).await;
        assert_eq!(status, 422, "{field}: {v}");
        assert_eq!(
            v["message"],
            format!("unknown field: parameter {field} is not a valid field. For proper usage, please refer to https://docs.cohere.com/reference/chat")
        );
    }
    for (body, needle) in [
        (json!({"messages": [user("x")]}), "model is required"),
        (json!({"model": "c"}), "messages is required"),
        (
            json!({"model": "c", "messages": []}),
            "messages must not be empty",
        ),
        (
            json!({"model": "c", "messages": [user("x")], "p": 1}),
            "p must be between",
        ),
        (
            json!({"model": "c", "messages": [user("x")], "tool_choice": "REQUIRED"}),
            "requires tools",
        ),
        (
            json!({"model": "c", "messages": [user("x"), {"role": "tool", "tool_call_id": "a", "content": "18C"}]}),
            "does not match a tool call",
        ),
    ] {
        let (status, v) = chat(&base, &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        let message = v["message"].as_str().unwrap();
        assert!(message.starts_with("invalid request: "), "{message}");
        assert!(message.contains(needle), "{message}");
    }
    let resp = client()
        .post(format!("{base}/v2/chat"))
        .bearer_auth(KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn stops_max_tokens_json_and_images() {
    let base = cohere_start().await;
    let (_, v) = chat(
        &base,
        &json!({"model": "c", "messages": [user("one two three")], "stop_sequences": ["three"]}),
    )
    .await;
    assert_eq!(v["message"]["content"][0]["text"], "echo: one two ");
    assert_eq!(v["finish_reason"], "STOP_SEQUENCE");
    let (_, v) = chat(
        &base,
        &json!({"model": "c", "messages": [user("one two three")], "max_tokens": 2}),
    )
    .await;
    assert_eq!(v["message"]["content"][0]["text"], "echo: one");
    assert_eq!(v["finish_reason"], "MAX_TOKENS");
    assert_eq!(v["usage"]["billed_units"]["output_tokens"], 2);
    let (_, v) = chat(
        &base,
        &json!({"model": "c", "messages": [user("as json")], "response_format": {"type": "json_object",
            "json_schema": {"type": "object"}}}),
    )
    .await;
    assert_eq!(
        v["message"]["content"][0]["text"],
        json!({"echo": "as json"}).to_string()
    );
    let (status, v) = chat(
        &base,
        &json!({"model": "c", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}}]}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["message"]["content"][0]["text"], "echo: look [images: 2]");
    let (status, _) = chat(
        &base,
        &json!({"model": "c", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]}),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn tools_are_called_then_answered() {
    let base = cohere_start().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    let (status, v) = chat(
        &base,
        &json!({"model": "c", "messages": [user("weather in Paris?")], "tools": tools}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["finish_reason"], "TOOL_CALL");
    let call = &v["message"]["tool_calls"][0];
    let id = call["id"].as_str().unwrap();
    assert!(id.starts_with("get_weather_mock"), "{id}");
    assert_eq!(
        call["function"],
        json!({"name": "get_weather", "arguments": r#"{"location":"Paris","unit":"celsius"}"#})
    );
    assert_eq!(v["message"]["tool_plan"], "I will call get_weather.");
    // The plan's 4 words and the arguments' one (no spaces in their JSON).
    assert_eq!(v["usage"]["billed_units"]["output_tokens"], 5);

    let (status, v) = chat(
        &base,
        &json!({"model": "c", "tools": tools, "messages": [user("weather in Paris?"),
            {"role": "assistant", "tool_plan": "I will call get_weather.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": [{"type": "text", "text": "18C"}]}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["message"]["content"][0]["text"], "echo: 18C");
    assert_eq!(v["finish_reason"], "COMPLETE");
    assert_eq!(v["usage"]["billed_units"]["input_tokens"], 8);

    // NONE: a text answer.
    let (_, v) = chat(
        &base,
        &json!({"model": "c", "messages": [user("talk")], "tools": tools, "tool_choice": "NONE"}),
    )
    .await;
    assert_eq!(v["message"]["content"][0]["text"], "echo: talk");
}

#[tokio::test]
async fn streams_text_events() {
    let base = cohere_start().await;
    let resp = post(
        &base,
        &json!({"model": "c", "stream": true, "messages": [user("hello there")]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_events(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), &(String::new(), "[DONE]".into()));
    let values = datas(&events);
    let kinds: Vec<&str> = values
        .iter()
        .map(|value| value["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "message-start",
            "content-start",
            "content-delta",
            "content-delta",
            "content-delta",
            "content-end",
            "message-end"
        ]
    );
    assert_eq!(values[0]["delta"]["message"]["role"], "assistant");
    let text: String = values
        .iter()
        .filter(|value| value["type"] == "content-delta")
        .map(|value| {
            value["delta"]["message"]["content"]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "echo: hello there");
    assert_eq!(
        values[6]["delta"],
        json!({"finish_reason": "COMPLETE", "usage": {
            "billed_units": {"input_tokens": 2, "output_tokens": 3},
            "tokens": {"input_tokens": 66, "output_tokens": 3}}})
    );
}

#[tokio::test]
async fn streams_tool_calls_and_errors() {
    let base = cohere_start().await;
    let tools =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let resp = post(
        &base,
        &json!({"model": "c", "stream": true, "tools": tools, "messages": [user("go")]}),
    )
    .await;
    let values = datas(&sse_events(&resp.text().await.unwrap()));
    let plan: String = values
        .iter()
        .filter(|value| value["type"] == "tool-plan-delta")
        .map(|value| value["delta"]["message"]["tool_plan"].as_str().unwrap())
        .collect();
    assert_eq!(plan, "I will call f.");
    let start = values
        .iter()
        .find(|value| value["type"] == "tool-call-start")
        .unwrap();
    assert_eq!(start["index"], 0);
    assert_eq!(
        start["delta"]["message"]["tool_calls"]["function"]["name"],
        "f"
    );
    let arguments: String = values
        .iter()
        .filter(|value| value["type"] == "tool-call-delta")
        .map(|value| {
            value["delta"]["message"]["tool_calls"]["function"]["arguments"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(arguments, r#"{"location":"Paris","unit":"celsius"}"#);
    assert_eq!(
        values.last().unwrap()["delta"]["finish_reason"],
        "TOOL_CALL"
    );

    let resp = post(
        &base,
        &json!({"model": "c", "stream": true, "messages": [user("break mock:stream_error")]}),
    )
    .await;
    let values = datas(&sse_events(&resp.text().await.unwrap()));
    let end = values.last().unwrap();
    assert_eq!(end["type"], "message-end");
    assert_eq!(end["delta"]["finish_reason"], "ERROR");
    assert_eq!(
        end["delta"]["error"],
        "internal server error (mock:stream_error)"
    );

    let resp = post(
        &base,
        &json!({"model": "c", "stream": true, "messages": [user("cut mock:stream_cut")]}),
    )
    .await;
    let events = sse_events(&resp.text().await.unwrap());
    assert!(events.iter().all(|(name, _)| name != "message-end"));
    assert_ne!(events.last().unwrap().1, "[DONE]");
}

#[tokio::test]
async fn status_directives_answer_in_cohere_shape() {
    let base = cohere_start().await;
    for status in [400u16, 404, 422, 429, 498, 499, 500, 503] {
        let (got, v) = chat(
            &base,
            &json!({"model": "c", "messages": [user(&format!("mock:status={status}"))]}),
        )
        .await;
        assert_eq!(got, status);
        assert!(v["message"].is_string() && v["id"].is_string(), "{v}");
    }
    let resp = post(
        &base,
        &json!({"model": "c", "messages": [user("mock:raw_error")]}),
    )
    .await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "upstream exploded");
}

/// Every Cohere body the gateway's golden fixtures say it sends is one the mock (and so, as
/// far as the mock is faithful, Cohere) accepts: the translation and the mock agree.
#[tokio::test]
async fn the_gateways_golden_requests_are_accepted() {
    let base = cohere_start().await;
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../filter/core/fixtures/cohere");
    let mut checked = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let case = entry.unwrap().path();
        let Ok(body) = std::fs::read(case.join("upstream_request.json")) else {
            continue;
        };
        let body: Value = serde_json::from_slice(&body).unwrap();
        let resp = post(&base, &body).await;
        let status = resp.status();
        assert_eq!(
            status,
            200,
            "{}: {}",
            case.display(),
            resp.text().await.unwrap()
        );
        checked += 1;
    }
    assert!(checked >= 35, "{checked} fixtures");
}
