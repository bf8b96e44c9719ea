//! Gemini API emulation, over HTTP.
// Helpers outside #[test] fns may unwrap too: a failing test should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;
use tollgate_mock::MockConfig;

const KEY: &str = "AIza-mock";

async fn gemini_start() -> String {
    start(MockConfig {
        gemini_api_key: Some(KEY.into()),
        ..Default::default()
    })
    .await
}

async fn post(base: &str, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}{path}"))
        .header("x-goog-api-key", KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn user(text: &str) -> Value {
    json!({"role": "user", "parts": [{"text": text}]})
}

/// The events of a Gemini SSE body, each ended by a CRLF pair.
fn sse_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\r\n\r\n"), "{body:?}");
    body.split("\r\n\r\n")
        .filter(|event| !event.is_empty())
        .map(|event| serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn generate_content_echoes_with_exact_usage() {
    let base = gemini_start().await;
    let resp = post(
        &base,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        &json!({"systemInstruction": {"parts": [{"text": "be brief"}]},
            "contents": [user("earlier"), {"role": "model", "parts": [{"text": "ok"}]}, user("hello gemini")]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.starts_with("{\n  \"candidates\""),
        "pretty-printed: {text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["candidates"][0]["content"],
        json!({"parts": [{"text": "echo: hello gemini"}], "role": "model"})
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["modelVersion"], "gemini-2.5-flash");
    assert!(v["responseId"].as_str().unwrap().starts_with("mock-resp-"));
    // system 2 + 1 + 1 + 2 words in, 3 out.
    assert_eq!(v["usageMetadata"]["promptTokenCount"], 6);
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 3);
    assert_eq!(v["usageMetadata"]["totalTokenCount"], 9);
}

#[tokio::test]
async fn keys_are_checked_as_google_checks_them() {
    let base = gemini_start().await;
    let url = format!("{base}/v1beta/models/g:generateContent");
    let body = json!({"contents": [user("x")]});
    let missing = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(missing.status(), 403);
    let v: Value = missing.json().await.unwrap();
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    let wrong = client()
        .post(&url)
        .header("x-goog-api-key", "nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    let v: Value = wrong.json().await.unwrap();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(v["error"]["details"][0]["reason"], "API_KEY_INVALID");
    let query = client()
        .post(format!("{url}?key={KEY}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 200);
}

#[tokio::test]
async fn bad_bodies_and_paths_are_refused() {
    let base = gemini_start().await;
    let resp = post(
        &base,
        "/v1beta/models/g:generateContent",
        &json!({"contents": [user("x")], "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "Invalid JSON payload received. Unknown name \"messages\": Cannot find field."
    );
    assert_eq!(v["error"]["code"], 400);
    let resp = post(
        &base,
        "/v1/models/g:generateContent",
        &json!({"contents": [user("x")]}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "NOT_FOUND");
}

#[tokio::test]
async fn streams_are_events_with_alt_sse_and_an_array_without() {
    let base = gemini_start().await;
    let body = json!({"contents": [user("stream me")]});
    let resp = post(
        &base,
        "/v1beta/models/g:streamGenerateContent?alt=sse",
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_events(&resp.text().await.unwrap());
    let text: String = events
        .iter()
        .map(|e| {
            e["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "echo: stream me");
    assert_eq!(events.len(), 3);
    let last = events.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 3);
    assert!(events[0]["candidates"][0].get("finishReason").is_none());

    let resp = post(&base, "/v1beta/models/g:streamGenerateContent", &body).await;
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let array: Value = resp.json().await.unwrap();
    assert_eq!(array.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn tools_are_called_with_a_signature_that_must_come_back() {
    let base = gemini_start().await;
    let tools = json!([{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object"}}]}]);
    let resp = post(
        &base,
        "/v1beta/models/g:generateContent",
        &json!({"contents": [user("weather?")], "tools": tools}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    let part = &v["candidates"][0]["content"]["parts"][0];
    assert_eq!(part["functionCall"]["name"], "get_weather");
    assert_eq!(
        part["functionCall"]["args"],
        json!({"location": "Paris", "unit": "celsius"})
    );
    let signature = part["thoughtSignature"].as_str().unwrap();

    let answer = json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "18C"}}}]});
    let call = |part: Value| json!({"role": "model", "parts": [part]});
    let resp = post(
        &base,
        "/v1beta/models/g:generateContent",
        &json!({"contents": [user("weather?"), call(part.clone()), answer], "tools": tools}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "echo: 18C"
    );

    let unsigned = json!({"functionCall": part["functionCall"]});
    let resp = post(
        &base,
        "/v1beta/models/g:generateContent",
        &json!({"contents": [user("weather?"), call(unsigned), answer], "tools": tools}),
    )
    .await;
    assert_eq!(resp.status(), 400, "{signature}");
}

#[tokio::test]
async fn directives_shape_the_answer() {
    let base = gemini_start().await;
    let resp = post(
        &base,
        "/v1beta/models/g:generateContent",
        &json!({"contents": [user("slow down mock:status=429")]}),
    )
    .await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");

    let resp = post(
        &base,
        "/v1beta/models/g:generateContent",
        &json!({"contents": [user("think mock:thoughts=7")],
            "generationConfig": {"maxOutputTokens": 2, "stopSequences": ["zzz"]}}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "echo: think"
    );
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(v["usageMetadata"]["thoughtsTokenCount"], 7);
    assert_eq!(v["usageMetadata"]["totalTokenCount"], 2 + 2 + 7);

    let resp = post(
        &base,
        "/v1beta/models/g:streamGenerateContent?alt=sse",
        &json!({"contents": [user("fail mock:stream_error")]}),
    )
    .await;
    let events = sse_events(&resp.text().await.unwrap());
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["error"]["status"], "UNAVAILABLE");
}

/// Every Gemini body the gateway's golden fixtures say it sends is one the mock (and so, as
/// far as the mock is faithful, Gemini) accepts: the translation and the mock agree.
#[tokio::test]
async fn the_gateways_golden_requests_are_accepted() {
    let base = gemini_start().await;
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../filter/core/fixtures/gemini");
    let mut checked = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let case = entry.unwrap().path();
        let Ok(body) = std::fs::read(case.join("upstream_request.json")) else {
            continue;
        };
        let body: Value = serde_json::from_slice(&body).unwrap();
        let resp = post(
            &base,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &body,
        )
        .await;
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
    assert!(checked >= 30, "{checked} fixtures");
}
