#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! AWS Bedrock (Converse) end to end: real Envoy (2 workers) + filter + control plane + the
//! mock's Bedrock paths, which recompute the SigV4 signature of every request as it reached
//! them (403 `InvalidSignatureException` when it does not match, `UnrecognizedClientException`
//! for an unknown key or a missing session token, a stale `x-amz-date` refused), validate the
//! body as Converse does, and stream real event stream frames. The mock counts a token per
//! word, so every count below is exact.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::{
    eventually, read_body, sse_data, Gateway, Mock, ProviderEnv, MOCK_AWS_ACCESS_KEY_ID,
    MOCK_AWS_SECRET_ACCESS_KEY, MOCK_AWS_SESSION_TOKEN, MOCK_AWS_TEMP_ACCESS_KEY_ID,
    MOCK_AWS_TEMP_SECRET_ACCESS_KEY,
};

const MASTER_KEY: &str = "sk-master-bedrock";
const MODEL_PATH: &str = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0";

fn config(mock: &Mock) -> String {
    format!(
        "model_list:\n\
         - model_name: bedrock-claude\n\
         \x20 litellm_params:\n\
         \x20   model: bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0\n\
         \x20   api_base: {url}\n\
         \x20   aws_region_name: us-east-1\n\
         \x20   aws_access_key_id: {MOCK_AWS_ACCESS_KEY_ID}\n\
         \x20   aws_secret_access_key: {MOCK_AWS_SECRET_ACCESS_KEY}\n\
         - model_name: bedrock-temporary\n\
         \x20 litellm_params:\n\
         \x20   model: bedrock/us.amazon.nova-pro-v1:0\n\
         \x20   aws_bedrock_runtime_endpoint: {url}\n\
         \x20   aws_region_name: eu-west-1\n\
         \x20   aws_access_key_id: {MOCK_AWS_TEMP_ACCESS_KEY_ID}\n\
         \x20   aws_secret_access_key: {MOCK_AWS_TEMP_SECRET_ACCESS_KEY}\n\
         \x20   aws_session_token: {MOCK_AWS_SESSION_TOKEN}\n\
         - model_name: bedrock-wrong-secret\n\
         \x20 litellm_params:\n\
         \x20   model: bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0\n\
         \x20   api_base: {url}\n\
         \x20   aws_region_name: us-east-1\n\
         \x20   aws_access_key_id: {MOCK_AWS_ACCESS_KEY_ID}\n\
         \x20   aws_secret_access_key: not-the-secret\n\
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
            "required": ["location"]}}}])
}

fn buffered(env: &Env) {
    let (status, body) = env.chat(&json!({"model": "bedrock-claude", "user": "bedrock-e2e-buffered",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello bedrock"}]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello bedrock"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["model"], "anthropic.claude-3-5-sonnet-20240620-v1:0");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let upstream = env.upstream();
    assert_eq!(upstream["path"], format!("{MODEL_PATH}/converse"));
    assert_eq!(
        upstream["body"],
        json!({"messages": [{"role": "user", "content": [{"text": "hello bedrock"}]}],
            "system": [{"text": "Be brief."}]})
    );
    let authorization = header(&upstream, "authorization").unwrap();
    assert!(
        authorization.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={MOCK_AWS_ACCESS_KEY_ID}/"
        )) && authorization.contains("/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="),
        "{authorization}"
    );
    assert_ne!(header(&upstream, "x-amz-date"), Some("20000101T000000Z"));
    assert_eq!(header(&upstream, "x-amz-security-token"), None);

    // Temporary credentials: the session token goes and is signed.
    let (status, body) = env.chat(&json!({"model": "bedrock-temporary", "user": "bedrock-e2e-buffered",
        "messages": [{"role": "user", "content": "hello nova"}], "max_tokens": 20, "temperature": 0.5}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hello nova");
    let upstream = env.upstream();
    assert_eq!(
        upstream["path"],
        "/model/us.amazon.nova-pro-v1%3A0/converse"
    );
    assert_eq!(
        header(&upstream, "x-amz-security-token"),
        Some(MOCK_AWS_SESSION_TOKEN)
    );
    assert!(header(&upstream, "authorization")
        .unwrap()
        .contains("/eu-west-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, "));
    assert_eq!(
        upstream["body"]["inferenceConfig"],
        json!({"maxTokens": 20, "temperature": 0.5})
    );
}

fn streamed(env: &Env) {
    let data = env.stream(
        &json!({"model": "bedrock-claude", "stream": true, "user": "bedrock-e2e-stream",
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream from bedrock"}]}),
    );
    let chunks = chunks_json(&data);
    assert_eq!(streamed_text(&chunks), "echo: stream from bedrock");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["finish_reason"].as_str().map(|_| chunk))
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(
        env.upstream()["path"],
        format!("{MODEL_PATH}/converse-stream")
    );
    assert_eq!(
        header(&env.upstream(), "accept"),
        Some("application/vnd.amazon.eventstream")
    );

    // Without include_usage: no usage chunk, same text.
    let data = env.stream(&json!({"model": "bedrock-temporary", "stream": true,
        "messages": [{"role": "user", "content": "mock:chunks=5"}]}));
    let chunks = chunks_json(&data);
    assert_eq!(streamed_text(&chunks), "chunk0 chunk1 chunk2 chunk3 chunk4");
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));

    // An exception frame mid-stream ends the stream with an OpenAI error event.
    let response = env.post(&json!({"model": "bedrock-claude", "stream": true,
        "messages": [{"role": "user", "content": "break mock:stream_error"}]}));
    assert_eq!(response.status(), 200);
    let data = sse_data(&read_body(response).unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["message"],
        "The model stream failed (mock:stream_error)."
    );
    assert_eq!(last["error"]["type"], "api_error");
    assert!(!data.contains(&"[DONE]".to_string()));
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str::<Value>(chunk).unwrap())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "echo:");
}

fn tool_round_trip(env: &Env) {
    let question = json!({"role": "user", "content": "weather in Paris?"});
    let (status, body) = env.chat(
        &json!({"model": "bedrock-claude", "user": "bedrock-e2e-tools",
        "messages": [question], "tools": tools(), "tool_choice": "required"}),
    );
    assert_eq!(status, 200, "{body}");
    let message = &body["choices"][0]["message"];
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(message["content"], "Let me check.");
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "tooluse_mock_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\",\"unit\":\"celsius\"}"}}])
    );
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(
        env.upstream()["body"]["toolConfig"]["toolChoice"],
        json!({"any": {}})
    );

    // The client sends the call and its result back.
    let (status, body) = env.chat(
        &json!({"model": "bedrock-claude", "user": "bedrock-e2e-tools",
        "messages": [question, message,
            {"role": "tool", "tool_call_id": "tooluse_mock_1", "content": "15 degrees"}],
        "tools": tools()}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: 15 degrees");
    assert_eq!(
        env.upstream()["body"]["messages"][2],
        json!({"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_mock_1",
            "content": [{"text": "15 degrees"}]}}]})
    );

    // Streamed tool calls.
    let data = env.stream(&json!({"model": "bedrock-claude", "stream": true,
        "messages": [{"role": "user", "content": "weather?"}], "tools": tools()}));
    let chunks = chunks_json(&data);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "tooluse_mock_1");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: String = calls
        .iter()
        .filter_map(|call| call["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, "{\"location\":\"Paris\",\"unit\":\"celsius\"}");
    assert!(calls.iter().all(|call| call["index"] == 0));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

fn images(env: &Env) {
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let (status, body) = env.chat(
        &json!({"model": "bedrock-claude", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}]}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: what is this? [images: 1]"
    );
    assert_eq!(
        env.upstream()["body"]["messages"][0]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": png}}})
    );

    // An image URL Converse cannot fetch is refused before Bedrock is asked.
    let before = env.mock.requests().unwrap().len();
    let (status, body) = env.chat(
        &json!({"model": "bedrock-claude", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(
        body["error"]["param"],
        "messages[0].content[0].image_url.url"
    );
    assert_eq!(env.mock.requests().unwrap().len(), before);
}

fn errors(env: &Env) {
    // The mock recomputes the signature with the real secret: it does not match.
    let (status, body) = env.chat(
        &json!({"model": "bedrock-wrong-secret", "user": "bedrock-e2e-errors",
        "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(
        body["error"]["message"].as_str().unwrap().starts_with(
            "The request signature we calculated does not match the signature you provided."
        ),
        "{body}"
    );

    let (status, body) = env.chat(&json!({"model": "bedrock-claude",
        "messages": [{"role": "user", "content": "x mock:status=429"}]}));
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        body["error"]["message"],
        "Too many requests, please wait before trying again."
    );
}

fn usage_recorded(env: &Env) {
    let token_counts = |row: &Value| {
        let tollgate = &row["metadata"]["tollgate"];
        (
            row["custom_llm_provider"].as_str().unwrap().to_string(),
            tollgate["http_status"].as_u64().unwrap(),
            tollgate["prompt_tokens"].as_u64(),
            tollgate["completion_tokens"].as_u64(),
            tollgate["stream"].as_bool().unwrap(),
        )
    };
    let mut rows = env.logs("bedrock-e2e-buffered", 2);
    rows.sort_by_key(|row| row["model"].as_str().unwrap().to_string());
    assert_eq!(
        token_counts(&rows[0]),
        ("bedrock".into(), 200, Some(4), Some(3), false)
    );
    assert_eq!(rows[0]["model"], "bedrock-claude");
    assert_eq!(
        token_counts(&rows[1]),
        ("bedrock".into(), 200, Some(2), Some(3), false)
    );
    assert_eq!(rows[1]["model"], "bedrock-temporary");
    let rows = env.logs("bedrock-e2e-stream", 1);
    assert_eq!(
        token_counts(&rows[0]),
        ("bedrock".into(), 200, Some(3), Some(4), true)
    );
    // Tool call: 3 words of question; 3 of preamble + 1 of arguments. Then the result: the
    // question, the preamble and the result's 2 words.
    let mut rows = env.logs("bedrock-e2e-tools", 2);
    rows.sort_by_key(|row| row["metadata"]["tollgate"]["prompt_tokens"].as_u64());
    assert_eq!(
        token_counts(&rows[0]),
        ("bedrock".into(), 200, Some(3), Some(4), false)
    );
    assert_eq!(
        token_counts(&rows[1]),
        ("bedrock".into(), 200, Some(8), Some(3), false)
    );
    let rows = env.logs("bedrock-e2e-errors", 1);
    assert_eq!(
        token_counts(&rows[0]),
        ("bedrock".into(), 403, None, None, false)
    );
}

#[test]
fn bedrock_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &config(&mock)).unwrap();
    let env = ProviderEnv::new(mock, gateway, MASTER_KEY).with_headers(&[
        // A client's own AWS headers must not reach Bedrock or break the signature.
        ("x-amz-date", "20000101T000000Z"),
        ("x-amz-security-token", "client-token"),
    ]);
    buffered(&env);
    streamed(&env);
    tool_round_trip(&env);
    images(&env);
    errors(&env);
    usage_recorded(&env);
    assert!(eventually(Duration::from_secs(5), || {
        env.gateway.prometheus().is_ok_and(|text| {
            text.contains(r#"model="bedrock-wrong-secret",provider="bedrock",status="403""#)
        })
    }));
    assert_eq!(env.gateway.filter_failures(), Vec::<String>::new());
}
