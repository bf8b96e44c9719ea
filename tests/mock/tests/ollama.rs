//! Ollama native API emulation, over HTTP.
// Helpers outside #[test] fns may unwrap too: a failing test should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;
use tollgate_mock::MockConfig;

const KEY: &str = "ollama-mock-key";

async fn post(base: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = client().post(format!("{base}/api/chat")).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// The lines of an NDJSON body, each ended by `\n`.
fn lines(body: &str) -> Vec<Value> {
    assert!(body.ends_with('\n'), "{body:?}");
    body.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn a_buffered_chat_echoes_with_exact_counts() {
    let base = start_default().await;
    let resp = post(
        &base,
        None,
        &json!({"model": "llama3.2", "stream": false, "messages": [
            {"role": "system", "content": "be brief"}, user("earlier"),
            {"role": "assistant", "content": "ok"}, user("hello ollama")]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["message"],
        json!({"role": "assistant", "content": "echo: hello ollama"})
    );
    assert_eq!(v["model"], "llama3.2");
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "stop");
    assert_eq!(v["created_at"], "2025-01-01T00:00:00.000000001Z");
    // system 2 + 1 + 1 + 2 words in, 3 out.
    assert_eq!(v["prompt_eval_count"], 6);
    assert_eq!(v["eval_count"], 3);
}

#[tokio::test]
async fn streams_are_ndjson_by_default() {
    let base = start_default().await;
    let resp = post(
        &base,
        None,
        &json!({"model": "m", "messages": [user("stream me")]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let lines = lines(&resp.text().await.unwrap());
    assert_eq!(lines.len(), 4);
    let text: String = lines
        .iter()
        .map(|line| line["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "echo: stream me");
    assert!(lines[..3].iter().all(|line| line["done"] == false));
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["prompt_eval_count"], 2);
    assert_eq!(last["eval_count"], 3);
    assert!(lines[0].get("eval_count").is_none());
}

#[tokio::test]
async fn keys_are_checked_when_configured() {
    let base = start(MockConfig {
        ollama_api_key: Some(KEY.into()),
        ..Default::default()
    })
    .await;
    let body = json!({"model": "m", "stream": false, "messages": [user("x")]});
    for key in [None, Some("nope")] {
        let resp = post(&base, key, &body).await;
        assert_eq!(resp.status(), 401);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v, json!({"error": "unauthorized"}));
    }
    assert_eq!(post(&base, Some(KEY), &body).await.status(), 200);
    // Without a key configured, none is needed.
    let open = start_default().await;
    assert_eq!(post(&open, None, &body).await.status(), 200);
}

#[tokio::test]
async fn openai_shapes_and_unknown_models_are_refused() {
    let base = start_default().await;
    let refused = [
        (
            json!({"model": "m", "messages": [user("x")], "max_tokens": 5}),
            "unknown field \"max_tokens\"",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
            "cannot unmarshal array",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["data:image/png;base64,QQ=="]}]}),
            "illegal base64 data at input byte 4",
        ),
        (
            json!({"model": "m", "messages": [user("x"), {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]}),
            "cannot unmarshal string",
        ),
        (json!({"messages": [user("x")]}), "model is required"),
        (json!({"model": "m"}), "messages is required"),
    ];
    for (body, message) in refused {
        let resp = post(&base, None, &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(message),
            "{body}: {v}"
        );
    }
    let resp = post(
        &base,
        None,
        &json!({"model": "missing-model", "messages": [user("x")]}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"error": "model 'missing-model' not found"}));
    // Another path is Go's plain 404.
    let resp = client()
        .post(format!("{base}/v1/api/chat"))
        .json(&json!({"model": "m", "messages": [user("x")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), "404 page not found");
}

#[tokio::test]
async fn tools_are_called_and_results_answered() {
    let base = start_default().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    let resp = post(
        &base,
        None,
        &json!({"model": "m", "stream": false, "messages": [user("weather?")], "tools": tools}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    let call = &v["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        call["function"]["arguments"],
        json!({"location": "Paris", "unit": "celsius"})
    );
    assert!(call.get("id").is_none(), "no id, as Ollama before 0.12.10");
    assert_eq!(v["message"]["content"], "");
    assert_eq!(v["done_reason"], "stop");
    assert_eq!(v["eval_count"], 1);

    let assistant = json!({"role": "assistant", "content": "", "tool_calls": [call]});
    let result =
        |name: &str| json!({"role": "tool", "content": "18C and sunny", "tool_name": name});
    let resp = post(
        &base,
        None,
        &json!({"model": "m", "stream": false, "tools": tools,
            "messages": [user("weather?"), assistant, result("get_weather")]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["message"]["content"], "echo: 18C and sunny");
    // A result naming a function no earlier call called is refused.
    let resp = post(
        &base,
        None,
        &json!({"model": "m", "stream": false, "tools": tools,
            "messages": [user("weather?"), assistant, result("get_time")]}),
    )
    .await;
    assert_eq!(resp.status(), 400);

    // Streamed: the call whole in one line, then the last line.
    let resp = post(
        &base,
        None,
        &json!({"model": "m", "messages": [user("weather?")], "tools": tools}),
    )
    .await;
    let lines = lines(&resp.text().await.unwrap());
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(lines[1]["done"], true);
}

#[tokio::test]
async fn options_images_format_and_directives_shape_the_answer() {
    let base = start_default().await;
    let resp = post(
        &base,
        None,
        &json!({"model": "m", "stream": false, "messages": [user("one two three four")],
            "options": {"num_predict": 3, "stop": ["zzz"], "temperature": 0.5, "seed": 7}}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["message"]["content"], "echo: one two");
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["eval_count"], 3);

    let resp = post(
        &base,
        None,
        &json!({"model": "m", "stream": false, "messages": [
            {"role": "user", "content": "what is this", "images": ["iVBORw0KGgo=", "/9j/4AAQ"]}]}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["message"]["content"], "echo: what is this [images: 2]");

    let resp = post(
        &base,
        None,
        &json!({"model": "m", "stream": false, "format": {"type": "object"}, "messages": [user("as json")]}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    let content: Value = serde_json::from_str(v["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"echo": "as json"}));

    // A prompt served from Ollama's cache has no prompt_eval_count.
    let resp = post(
        &base,
        None,
        &json!({"model": "m", "stream": false, "messages": [user("again mock:cached_prompt")]}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert!(v.get("prompt_eval_count").is_none(), "{v}");
    assert_eq!(v["eval_count"], 3);

    let resp = post(
        &base,
        None,
        &json!({"model": "m", "messages": [user("slow down mock:status=429")]}),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());

    let resp = post(
        &base,
        None,
        &json!({"model": "m", "messages": [user("fail mock:stream_error")]}),
    )
    .await;
    let lines = lines(&resp.text().await.unwrap());
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[1],
        json!({"error": "an error was encountered while running the model"})
    );
}

/// Every Ollama body the gateway's golden fixtures say it sends is one the mock (and so, as
/// far as the mock is faithful, Ollama) accepts: the translation and the mock agree.
#[tokio::test]
async fn the_gateways_golden_requests_are_accepted() {
    let base = start_default().await;
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../filter/core/fixtures/ollama");
    let mut checked = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let case = entry.unwrap().path();
        let Ok(body) = std::fs::read(case.join("upstream_request.json")) else {
            continue;
        };
        let body: Value = serde_json::from_slice(&body).unwrap();
        let resp = post(&base, None, &body).await;
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
    assert!(checked >= 27, "{checked} fixtures");
}
