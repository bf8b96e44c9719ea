//! OpenAI's and Azure's legacy text completions emulation (`POST …/completions`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;
use tollgate_mock::MockConfig;

async fn post(base: &str, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn completion(base: &str, body: &Value) -> (u16, Value) {
    let response = post(base, "/v1/completions", body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn buffered_echo_and_usage() {
    let base = start_default().await;
    let (status, body) = completion(
        &base,
        &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-mock-"));
    assert_eq!(body["model"], "gpt-3.5-turbo-instruct");
    assert_eq!(
        body["choices"],
        json!([{"text": "echo: Say this is a test", "index": 0, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11})
    );
}

#[tokio::test]
async fn max_tokens_defaults_to_16_and_cuts_with_length() {
    let base = start_default().await;
    let (_, body) = completion(&base, &json!({"model": "m", "prompt": "mock:chunks=20"})).await;
    let expected: Vec<String> = (0..16).map(|i| format!("chunk{i}")).collect();
    assert_eq!(body["choices"][0]["text"], expected.join(" "));
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 16);

    let (_, body) = completion(
        &base,
        &json!({"model": "m", "prompt": "one two three", "max_tokens": 2}),
    )
    .await;
    assert_eq!(body["choices"][0]["text"], "echo: one");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );
}

#[tokio::test]
async fn lists_of_prompts_token_arrays_n_echo_and_stop() {
    let base = start_default().await;
    let (_, body) = completion(
        &base,
        &json!({"model": "m", "prompt": ["a b", "c"], "n": 2, "echo": true, "stop": " b"}),
    )
    .await;
    let texts: Vec<&str> = body["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|choice| choice["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["a becho: a", "a becho: a", "cecho: c", "cecho: c"]);
    assert_eq!(body["choices"][3]["index"], 3);
    // 2 + 1 prompt words; "echo: a" (2 words) twice and "echo: c" twice.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11})
    );

    let (_, body) = completion(&base, &json!({"model": "m", "prompt": [[1, 2, 3], [4]]})).await;
    assert_eq!(body["choices"][0]["text"], "echo: [3 tokens]");
    assert_eq!(body["choices"][1]["text"], "echo: [1 tokens]");
    assert_eq!(body["usage"]["prompt_tokens"], 4);
}

#[tokio::test]
async fn streams_text_chunks_and_the_usage_chunk_when_asked() {
    let base = start_default().await;
    let response = post(
        &base,
        "/v1/completions",
        &json!({"model": "m", "prompt": "one two", "stream": true,
            "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let events = openai_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = openai_chunks(&text);
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(pieces, ["echo:", " one", " two", ""]);
    assert!(chunks
        .iter()
        .all(|chunk| chunk["object"] == "text_completion"));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[0]["usage"], Value::Null);
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(
        chunks[4]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    );
    assert_eq!(chunks.len(), 5);

    // Without include_usage: no usage member, no usage chunk.
    let text = post(
        &base,
        "/v1/completions",
        &json!({"model": "m", "prompt": "one", "stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    let chunks = openai_chunks(&text);
    assert_eq!(chunks.len(), 3);
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
}

#[tokio::test]
async fn refuses_what_openai_refuses() {
    let base = start_default().await;
    for (body, param, message) in [
        (
            json!({"model": "m"}),
            Some("prompt"),
            "Missing required parameter: 'prompt'.",
        ),
        (
            json!({"prompt": "x"}),
            Some("model"),
            "you must provide a model parameter",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "prompt": "x"}),
            None,
            "Unrecognized request argument supplied: messages",
        ),
        (
            json!({"model": "m", "prompt": "x", "stream_options": {"include_usage": true}}),
            Some("stream_options"),
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        ),
        (
            json!({"model": "m", "prompt": "x", "n": 3, "best_of": 2}),
            Some("best_of"),
            "best_of must be greater than or equal to n.",
        ),
        (
            json!({"model": "m", "prompt": "x", "best_of": 2, "stream": true}),
            Some("best_of"),
            "Cannot stream results with best_of > 1.",
        ),
    ] {
        let (status, error) = completion(&base, &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["error"]["message"], message, "{body}");
        assert_eq!(error["error"]["param"].as_str(), param, "{body}");
    }
    let (status, error) = completion(&base, &json!({"model": "m", "prompt": {"a": 1}})).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["param"], "prompt");
}

#[tokio::test]
async fn directives_and_auth() {
    let base = start(MockConfig {
        openai_api_key: Some("sk-right".into()),
        ..MockConfig::default()
    })
    .await;
    let response = post(
        &base,
        "/v1/completions",
        &json!({"model": "m", "prompt": "x"}),
    )
    .await;
    assert_eq!(response.status(), 401);
    let response = client()
        .post(format!("{base}/v1/completions"))
        .bearer_auth("sk-right")
        .json(&json!({"model": "m", "prompt": "x mock:status=429"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn azure_completions_need_the_version_and_the_key() {
    let base = start(MockConfig {
        azure_api_key: Some("azure-key".into()),
        ..MockConfig::default()
    })
    .await;
    let path = "/openai/deployments/instruct/completions";
    let request = json!({"prompt": "hello azure", "max_tokens": 5});
    let response = client()
        .post(format!("{base}{path}"))
        .header("api-key", "azure-key")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "no api-version");
    let response = client()
        .post(format!("{base}{path}?api-version=2024-10-21"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "no key");
    // Azure takes the deployment from the path: the body needs no model.
    let response = client()
        .post(format!("{base}{path}?api-version=2024-10-21"))
        .header("api-key", "azure-key")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["text"], "echo: hello azure");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    );
}
