#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Gemini (Google AI Studio) end to end: real Envoy (2 workers) + filter + control plane + the
//! mock's Gemini paths, which check the body as Gemini's protobuf JSON, want the key in
//! `x-goog-api-key` (403 without one, 400 `API_KEY_INVALID` with a wrong one) and the thought
//! signature of their function calls back. The mock counts a token per word, so every count
//! below is exact.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::{eventually, Gateway, Mock, ProviderEnv, MOCK_GEMINI_KEY};

const MASTER_KEY: &str = "sk-master-gemini";

/// The signature the mock puts on its function calls (tests/mock/src/gemini.rs).
const MOCK_SIGNATURE: &str = "bW9jay10aG91Z2h0LXNpZ25hdHVyZQ==";

fn config(mock: &Mock) -> String {
    format!(
        "model_list:\n\
         - model_name: gemini-flash\n\
         \x20 litellm_params:\n\
         \x20   model: gemini/gemini-2.5-flash\n\
         \x20   api_base: {url}\n\
         \x20   api_key: {MOCK_GEMINI_KEY}\n\
         - model_name: gemini-v1beta-base\n\
         \x20 litellm_params:\n\
         \x20   model: gemini/gemini-2.5-pro\n\
         \x20   api_base: {url}/v1beta\n\
         \x20   api_key: {MOCK_GEMINI_KEY}\n\
         - model_name: gemini-wrong-key\n\
         \x20 litellm_params:\n\
         \x20   model: gemini/gemini-2.5-flash\n\
         \x20   api_base: {url}\n\
         \x20   api_key: not-the-key\n\
         - model_name: gemini-no-key\n\
         \x20 litellm_params:\n\
         \x20   model: gemini/gemini-2.5-flash\n\
         \x20   api_base: {url}\n\
         general_settings:\n\
         \x20 master_key: {MASTER_KEY}\n",
        url = mock.url
    )
}

type Env = ProviderEnv;

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

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
            "required": ["location"], "additionalProperties": false}}}])
}

fn buffered(env: &Env) {
    let (status, body) = env.chat(&json!({
        "model": "gemini-flash", "user": "gemini-e2e-buffered",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello gemini"}],
        "temperature": 0.2, "max_tokens": 50
    }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gemini-2.5-flash");
    assert!(
        body["id"].as_str().unwrap().starts_with("mock-resp-"),
        "{body}"
    );
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello gemini"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // "be brief" + "hello gemini" in, "echo: hello gemini" out.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );

    let upstream = env.upstream();
    assert_eq!(
        upstream["path"],
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(header(&upstream, "x-goog-api-key"), Some(MOCK_GEMINI_KEY));
    assert_eq!(
        header(&upstream, "authorization"),
        None,
        "the client's gateway key never reaches a provider"
    );
    assert_eq!(
        upstream["body"],
        json!({"systemInstruction": {"parts": [{"text": "be brief"}]},
            "contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}],
            "generationConfig": {"temperature": 0.2, "maxOutputTokens": 50}})
    );

    // A base that already ends in /v1beta does not get it twice.
    let (status, body) = env.chat(&json!({"model": "gemini-v1beta-base",
        "messages": [{"role": "user", "content": "joined once"}]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.upstream()["path"],
        "/v1beta/models/gemini-2.5-pro:generateContent"
    );

    // JSON mode.
    let (status, body) = env.chat(
        &json!({"model": "gemini-flash", "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "as json"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"echo": "as json"}));
    assert_eq!(
        env.upstream()["body"]["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );

    // Reasoning tokens are output tokens, reported apart.
    let (status, body) = env.chat(
        &json!({"model": "gemini-flash", "user": "gemini-e2e-thoughts",
        "messages": [{"role": "user", "content": "think mock:thoughts=5"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 5}})
    );

    // A reply cut at max_tokens says so.
    let (_, body) = env.chat(&json!({"model": "gemini-flash", "max_completion_tokens": 2,
        "messages": [{"role": "user", "content": "one two three"}]}));
    assert_eq!(body["choices"][0]["message"]["content"], "echo: one");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

fn streamed(env: &Env) {
    let chunks = chunks_json(&env.stream(&json!({
        "model": "gemini-flash", "stream": true, "stream_options": {"include_usage": true},
        "user": "gemini-e2e-stream", "messages": [{"role": "user", "content": "stream from gemini"}]
    })));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks), "echo: stream from gemini");
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|chunk| &chunk["choices"][0]["finish_reason"])
        .filter(|reason| !reason.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let upstream = env.upstream();
    assert_eq!(
        upstream["path"],
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(header(&upstream, "x-goog-api-key"), Some(MOCK_GEMINI_KEY));

    // Without include_usage: no usage chunk; one chunk per streamed word.
    let chunks = chunks_json(&env.stream(&json!({"model": "gemini-flash", "stream": true,
        "messages": [{"role": "user", "content": "count mock:chunks=50"}]})));
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(content_chunks, 50);

    // An error event mid-stream reaches the client as one OpenAI error event, no [DONE].
    let data = env.stream(&json!({"model": "gemini-flash", "stream": true,
        "messages": [{"role": "user", "content": "break mock:stream_error"}]}));
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "service_unavailable", "{data:?}");
    assert_eq!(last["error"]["code"], "unavailable");
    assert!(!data.iter().any(|event| event == "[DONE]"));
}

fn tool_round_trip(env: &Env) {
    let (status, body) = env.chat(&json!({"model": "gemini-flash", "tools": tools(),
        "messages": [{"role": "user", "content": "weather in Paris?"}]}));
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        call["function"]["arguments"],
        r#"{"location":"Paris","unit":"celsius"}"#
    );
    let id = call["id"].as_str().unwrap();
    assert!(
        id.ends_with(&format!("__thought__{MOCK_SIGNATURE}")),
        "{id}"
    );
    let upstream = env.upstream();
    assert_eq!(
        upstream["body"]["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"],
        tools()[0]["function"]["parameters"]
    );

    // The result goes back as a functionResponse named after the call, the call with its
    // thought signature (the mock refuses the turn without it).
    let (status, body) = env.chat(
        &json!({"model": "gemini-flash", "tools": tools(), "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "18C and sunny"}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: 18C and sunny"
    );
    let contents = &env.upstream()["body"]["contents"];
    assert_eq!(
        contents[1],
        json!({"role": "model", "parts": [{"functionCall": {"name": "get_weather",
            "args": {"location": "Paris", "unit": "celsius"}}, "thoughtSignature": MOCK_SIGNATURE}]})
    );
    assert_eq!(
        contents[2],
        json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
            "response": {"content": "18C and sunny"}}}]})
    );

    // Streamed: the call comes as one tool call delta with its id, name and arguments.
    let chunks = chunks_json(&env.stream(&json!({"model": "gemini-flash", "stream": true,
        "tools": tools(), "tool_choice": "required", "messages": [{"role": "user", "content": "weather?"}]})));
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls[0]["id"].as_str().unwrap().ends_with(MOCK_SIGNATURE));
    let arguments: String = calls
        .iter()
        .filter_map(|call| call["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, r#"{"location":"Paris","unit":"celsius"}"#);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    assert_eq!(
        env.upstream()["body"]["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );
}

fn images(env: &Env) {
    let (status, body) = env.chat(
        &json!({"model": "gemini-flash", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/photos/cat.jpg"}}
        ]}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: what is this [images: 2]"
    );
    assert_eq!(
        env.upstream()["body"]["contents"][0]["parts"],
        json!([{"text": "what is this"},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photos/cat.jpg"}}])
    );
    // An image URL whose MIME type cannot be read is the gateway's 400, naming the field.
    let (status, body) = env.chat(
        &json!({"model": "gemini-flash", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/render?id=1"}}]}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["param"],
        "messages[0].content[0].image_url.url"
    );
}

fn errors(env: &Env) {
    // Gemini answers a key it refuses with 400 API_KEY_INVALID: the client gets OpenAI's 401.
    let (status, body) = env.chat(
        &json!({"model": "gemini-wrong-key", "user": "gemini-e2e-errors",
        "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body,
        json!({"error": {"message": "API key not valid. Please pass a valid API key.",
            "type": "authentication_error", "param": null, "code": "invalid_api_key"}})
    );
    assert_eq!(
        header(&env.upstream(), "x-goog-api-key"),
        Some("not-the-key")
    );

    let (status, body) = env
        .chat(&json!({"model": "gemini-no-key", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["type"], "permission_error");
    assert_eq!(body["error"]["code"], "permission_denied");
    assert_eq!(header(&env.upstream(), "x-goog-api-key"), None);

    let (status, body) = env.chat(&json!({"model": "gemini-flash", "messages": [{"role": "user", "content": "mock:status=429"}]}));
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "resource_exhausted");

    let (status, body) = env.chat(&json!({"model": "gemini-flash", "messages": [{"role": "user", "content": "mock:raw_error"}]}));
    assert_eq!(status, 500, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream exploded"));
}

fn usage_recorded(env: &Env) {
    let token_counts = |row: &Value| {
        let tollgate = &row["metadata"]["tollgate"];
        (
            row["custom_llm_provider"].as_str().unwrap().to_string(),
            tollgate["http_status"].as_u64().unwrap(),
            tollgate["prompt_tokens"].as_u64(),
            tollgate["completion_tokens"].as_u64(),
            tollgate["reasoning_tokens"].as_u64(),
            tollgate["stream"].as_bool().unwrap(),
        )
    };
    let rows = env.logs("gemini-e2e-buffered", 1);
    assert_eq!(
        token_counts(&rows[0]),
        ("gemini".into(), 200, Some(4), Some(3), None, false)
    );
    assert_eq!(rows[0]["model"], "gemini-flash");
    let rows = env.logs("gemini-e2e-thoughts", 1);
    assert_eq!(
        token_counts(&rows[0]),
        ("gemini".into(), 200, Some(2), Some(8), Some(5), false)
    );
    let rows = env.logs("gemini-e2e-stream", 1);
    assert_eq!(
        token_counts(&rows[0]),
        ("gemini".into(), 200, Some(3), Some(4), None, true)
    );
    // The refused key is recorded with the status the client got, and no tokens.
    let rows = env.logs("gemini-e2e-errors", 1);
    assert_eq!(
        token_counts(&rows[0]),
        ("gemini".into(), 401, None, None, None, false)
    );
}

fn stats(env: &Env) {
    assert!(eventually(Duration::from_secs(5), || {
        env.gateway.prometheus().is_ok_and(|text| {
            text.contains(r#"model="gemini-flash",provider="gemini",status="200""#)
        })
    }));
    let prometheus = env.gateway.prometheus().unwrap();
    assert!(
        prometheus.contains(r#"model="gemini-wrong-key",provider="gemini",status="401""#),
        "{prometheus}"
    );
}

#[test]
fn gemini_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &config(&mock)).unwrap();
    let env = ProviderEnv::new(mock, gateway, MASTER_KEY);
    buffered(&env);
    streamed(&env);
    tool_round_trip(&env);
    images(&env);
    errors(&env);
    usage_recorded(&env);
    stats(&env);
    assert_eq!(env.gateway.filter_failures(), Vec::<String>::new());
}
