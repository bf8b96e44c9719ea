#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Azure OpenAI end to end: real Envoy (2 workers) + filter + control plane + the mock's
//! Azure paths, which answer 404 without `api-version` and 401 without the `api-key` header.

use serde_json::{json, Value};
use tollgate_e2e::{client, read_body, sse_data, Gateway, Mock, MOCK_AZURE_KEY};

const MASTER_KEY: &str = "sk-master-azure";

fn config(mock: &Mock) -> String {
    format!(
        "model_list:\n\
         - model_name: azure-gpt\n\
         \x20 litellm_params:\n\
         \x20   model: azure/gpt-4o-deployment\n\
         \x20   api_base: {url}\n\
         \x20   api_version: \"2024-10-21\"\n\
         \x20   api_key: {MOCK_AZURE_KEY}\n\
         - model_name: azure-wrong-key\n\
         \x20 litellm_params:\n\
         \x20   model: azure/gpt-4o-deployment\n\
         \x20   api_base: {url}\n\
         \x20   api_version: \"2024-10-21\"\n\
         \x20   api_key: not-the-key\n\
         general_settings:\n\
         \x20 master_key: {MASTER_KEY}\n",
        url = mock.url
    )
}

fn post(gateway: &Gateway, body: &Value) -> reqwest::blocking::Response {
    client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(MASTER_KEY)
        .json(body)
        .send()
        .unwrap()
}

fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"][name].as_str()
}

#[test]
fn azure_openai_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &config(&mock)).unwrap();

    // Buffered: the deployment's URL, api-version and api-key; the answer as it came.
    let response = post(
        &gateway,
        &json!({"model": "azure-gpt", "messages": [{"role": "user", "content": "hello azure"}]}),
    );
    assert_eq!(response.status(), 200);
    let body: Value = serde_json::from_str(&read_body(response).unwrap()).unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello azure"
    );
    assert_eq!(body["object"], "chat.completion");
    let upstream = mock.last_request().unwrap();
    assert_eq!(
        upstream["path"],
        "/openai/deployments/gpt-4o-deployment/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(header(&upstream, "api-key"), Some(MOCK_AZURE_KEY));
    assert_eq!(
        header(&upstream, "authorization"),
        None,
        "neither the client's gateway key nor a Bearer header reaches Azure"
    );

    // Streamed, with the usage chunk asked for.
    let response = post(
        &gateway,
        &json!({
            "model": "azure-gpt", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "stream from azure"}]
        }),
    );
    assert_eq!(response.status(), 200);
    let chunks: Vec<Value> = sse_data(&read_body(response).unwrap())
        .iter()
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: stream from azure");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["total_tokens"].as_u64(),
        Some(
            usage["usage"]["prompt_tokens"].as_u64().unwrap()
                + usage["usage"]["completion_tokens"].as_u64().unwrap()
        )
    );
    let upstream = mock.last_request().unwrap();
    assert_eq!(upstream["body"]["stream"], true);

    // Azure's own error (no OpenAI `type`) reaches the client with its status and message.
    let response = post(
        &gateway,
        &json!({"model": "azure-wrong-key", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(response.status(), 401);
    let body: Value = serde_json::from_str(&read_body(response).unwrap()).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Access denied due to invalid subscription key"),
        "{body}"
    );
    // Azure gives no OpenAI `type`: the gateway adds the status's.
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["error"]["code"], "401");

    // A prompt Azure's content filter blocks: 400, its code and verdict kept.
    let response = post(
        &gateway,
        &json!({"model": "azure-gpt", "messages": [{"role": "user", "content": "mock:content_filter"}]}),
    );
    assert_eq!(response.status(), 400);
    let body: Value = serde_json::from_str(&read_body(response).unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "content_filter");
    assert_eq!(body["error"]["param"], "prompt");
    assert_eq!(
        body["error"]["innererror"]["content_filter_result"]["hate"],
        json!({"filtered": true, "severity": "high"})
    );
}
