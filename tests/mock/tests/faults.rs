//! Fault injection per deployment (`/_mock/faults`) and the requests each deployment received
//! (`/_mock/calls`), over HTTP.
// Helpers outside #[test] fns may unwrap too: a failing test should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn oa(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

fn an(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

/// POSTs a rule; it must be taken.
async fn set_fault(base: &str, rule: Value) {
    let resp = client()
        .post(format!("{base}/_mock/faults"))
        .json(&rule)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{rule}");
}

async fn get(base: &str, path: &str) -> Value {
    client()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn delete(base: &str, path: &str) -> Value {
    client()
        .delete(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn calls(base: &str) -> Value {
    get(base, "/_mock/calls").await
}

/// Status, headers and JSON body.
async fn parts(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap();
    (status, headers, body)
}

/// The body's bytes as they came, and whether the body ended in an error (a dropped
/// connection) rather than at its end.
async fn read_until_cut(mut resp: reqwest::Response) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => return (bytes, false),
            Err(_) => return (bytes, true),
        }
    }
}

#[tokio::test]
async fn status_faults_answer_one_deployment_as_mock_status_does() {
    let base = start_default().await;
    set_fault(&base, json!({"model": "gpt-a", "fault": {"status": 429}})).await;
    let rate_limited = json!({"error": {
        "message": "Rate limit reached for requests (mock:status=429). Please try again in 1s.",
        "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}});
    for stream in [false, true] {
        let (status, headers, body) = parts(openai(&base, &oa("gpt-a", "hi", stream)).await).await;
        assert_eq!(status, 429, "stream: {stream}");
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, rate_limited);
    }
    // The same body for another deployment is answered.
    let (status, _, body) = parts(openai(&base, &oa("gpt-b", "hi", false)).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hi");
    // What the directive answers, byte for byte.
    let directive = openai(&base, &oa("gpt-b", "mock:status=429", false)).await;
    assert_eq!(directive.status(), 429);
    assert_eq!(directive.json::<Value>().await.unwrap(), rate_limited);
    assert_eq!(calls(&base).await, json!({"gpt-a": 2, "gpt-b": 2}));
}

#[tokio::test]
async fn status_faults_answer_anthropic_deployments_in_anthropic_shape() {
    let base = start_default().await;
    set_fault(
        &base,
        json!({"model": "claude-a", "fault": {"status": 529}, "times": 1}),
    )
    .await;
    set_fault(
        &base,
        json!({"model": "claude-a", "fault": {"status": 429}, "times": 1}),
    )
    .await;
    let (status, headers, body) = parts(anthropic(&base, &an("claude-a", "hi", true)).await).await;
    assert_eq!(status, 529);
    assert_eq!(headers["request-id"], "req_mock_1");
    assert!(headers.get("retry-after").is_none());
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": "req_mock_1"})
    );
    let (status, headers, body) = parts(anthropic(&base, &an("claude-a", "hi", false)).await).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "rate_limit_error",
            "message": "This request would exceed the rate limit for your organization (mock:status=429)."},
            "request_id": "req_mock_2"})
    );
    // Both rules are spent: the deployment answers again.
    let (status, _, body) = parts(anthropic(&base, &an("claude-a", "hi", false)).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["content"][0]["text"], "echo: hi");
    assert_eq!(calls(&base).await, json!({"claude-a": 3}));
}

#[tokio::test]
async fn context_length_faults_use_each_providers_words() {
    let base = start_default().await;
    for model in [
        "gpt-a",
        "claude-a",
        "gemini-a",
        "command-a",
        "llama-a",
        "anthropic.claude-v2:1",
        "text-embedding-a",
    ] {
        set_fault(
            &base,
            json!({"model": model, "fault": {"context_length": true}}),
        )
        .await;
    }

    let (status, _, body) = parts(openai(&base, &oa("gpt-a", "long", true)).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {
            "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130012 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
    );

    let (status, headers, body) =
        parts(anthropic(&base, &an("claude-a", "long", false)).await).await;
    assert_eq!(status, 400);
    let request_id = headers["request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "invalid_request_error",
            "message": "prompt is too long: 208310 tokens > 200000 maximum"}, "request_id": request_id})
    );

    let gemini = client()
        .post(format!(
            "{base}/v1beta/models/gemini-a:streamGenerateContent?alt=sse"
        ))
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "long"}]}]}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(gemini).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {"code": 400,
            "message": "The input token count (1179648) exceeds the maximum number of tokens allowed (1048576).",
            "status": "INVALID_ARGUMENT"}})
    );

    let cohere = client()
        .post(format!("{base}/v2/chat"))
        .json(&json!({"model": "command-a", "messages": [{"role": "user", "content": "long"}]}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(cohere).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"id": "00000000-0000-4000-8000-00000000e770",
            "message": "too many tokens: size limit exceeded by 1502 tokens. Try using shorter or fewer inputs, or setting prompt_truncation='AUTO'."})
    );

    let ollama = client()
        .post(format!("{base}/api/chat"))
        .json(&json!({"model": "llama-a", "messages": [{"role": "user", "content": "long"}]}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(ollama).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": "the input length exceeds the context length"})
    );

    // Bedrock's model id is percent-encoded in the path; the fault answers before SigV4.
    let bedrock = client()
        .post(format!(
            "{base}/model/anthropic.claude-v2%3A1/converse-stream"
        ))
        .json(&json!({"messages": [{"role": "user", "content": [{"text": "long"}]}]}))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = parts(bedrock).await;
    assert_eq!(status, 400);
    assert_eq!(
        headers["x-amzn-errortype"],
        "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"
    );
    assert!(headers["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .starts_with("mock-bedrock-"));
    assert_eq!(
        body,
        json!({"message": "Input is too long for requested model."})
    );

    let embeddings = client()
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"model": "text-embedding-a", "input": "long"}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(embeddings).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {
            "message": "This model's maximum context length is 8192 tokens, however you requested 8238 tokens (8238 in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
            "type": "invalid_request_error", "param": null, "code": null}})
    );
}

#[tokio::test]
async fn content_filter_faults_are_each_providers_refusal() {
    let base = start_default().await;
    for model in [
        "gpt-a",
        "claude-a",
        "gpt-4o-eu",
        "gemini-a",
        "command-a",
        "llama-a",
    ] {
        set_fault(
            &base,
            json!({"model": model, "fault": {"content_filter": true}}),
        )
        .await;
    }

    let (status, _, body) = parts(openai(&base, &oa("gpt-a", "bad", false)).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {
            "message": "Invalid prompt: your prompt was flagged as potentially violating our usage policy. Please try again with a different prompt: https://platform.openai.com/docs/guides/reasoning#advice-on-prompting",
            "type": "invalid_request_error", "param": null, "code": "invalid_prompt"}})
    );

    let (status, headers, body) = parts(anthropic(&base, &an("claude-a", "bad", true)).await).await;
    assert_eq!(status, 400);
    let request_id = headers["request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "invalid_request_error",
            "message": "Output blocked by content filtering policy"}, "request_id": request_id})
    );

    // Azure's deployment is in the path; its refusal is what `mock:content_filter` answers.
    let azure = |text: &str| {
        client()
            .post(format!(
                "{base}/openai/deployments/gpt-4o-eu/chat/completions?api-version=2024-10-21"
            ))
            .json(&json!({"messages": [{"role": "user", "content": text}]}))
            .send()
    };
    let (status, _, faulted) = parts(azure("bad").await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(faulted["error"]["code"], "content_filter");
    assert_eq!(
        faulted["error"]["innererror"]["content_filter_result"]["hate"],
        json!({"filtered": true, "severity": "high"})
    );
    delete(&base, "/_mock/faults").await;
    let (status, _, directive) = parts(azure("bad mock:content_filter").await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(faulted, directive);
    for model in ["gemini-a", "command-a", "llama-a"] {
        set_fault(
            &base,
            json!({"model": model, "fault": {"content_filter": true}}),
        )
        .await;
    }

    // Gemini blocks the prompt: 200, no candidates, promptFeedback.
    let gemini = client()
        .post(format!("{base}/v1beta/models/gemini-a:generateContent"))
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "two words"}]}]}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(gemini).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "HIGH"},
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"}]},
            "usageMetadata": {"promptTokenCount": 2, "totalTokenCount": 2,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 2}]},
            "modelVersion": "gemini-a",
            "responseId": body["responseId"],
        })
    );
    assert!(body["responseId"]
        .as_str()
        .unwrap()
        .starts_with("mock-resp-"));

    let cohere = client()
        .post(format!("{base}/v2/chat"))
        .json(&json!({"model": "command-a", "messages": [{"role": "user", "content": "bad"}]}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(cohere).await;
    assert_eq!(status, 498);
    assert_eq!(
        body,
        json!({"id": "00000000-0000-4000-8000-00000000e770",
            "message": "blocked output: please adjust your prompt and try again, as this generation may be a potential violation of our Usage Guidelines"})
    );

    // Ollama has no content policy: its 400.
    let ollama = client()
        .post(format!("{base}/api/chat"))
        .json(&json!({"model": "llama-a", "messages": [{"role": "user", "content": "bad"}]}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(ollama).await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({"error": "invalid request (mock:status=400)"}));
}

#[tokio::test]
async fn bedrock_content_filter_is_a_content_filtered_stop() {
    let base = start_default().await;
    set_fault(
        &base,
        json!({"model": "amazon.nova-lite-v1:0", "fault": {"content_filter": true}}),
    )
    .await;
    let resp = client()
        .post(format!("{base}/model/amazon.nova-lite-v1%3A0/converse"))
        .json(&json!({"system": [{"text": "be kind"}],
            "messages": [{"role": "user", "content": [{"text": "three more words"}]}]}))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = parts(resp).await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("x-amzn-requestid"));
    assert_eq!(
        body,
        json!({"output": {"message": {"role": "assistant", "content": []}},
            "stopReason": "content_filtered",
            "usage": {"inputTokens": 5, "outputTokens": 0, "totalTokens": 5},
            "metrics": {"latencyMs": 1}})
    );
}

#[tokio::test]
async fn delay_faults_hold_the_headers_then_answer() {
    let base = start_default().await;
    set_fault(
        &base,
        json!({"model": "gpt-slow", "fault": {"delay_ms": 400}, "times": 2}),
    )
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = impatient
        .post(format!("{base}/v1/chat/completions"))
        .json(&oa("gpt-slow", "hi", true))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");

    // Headers included: a stream's response does not start before the delay.
    let began = Instant::now();
    let resp = openai(&base, &oa("gpt-slow", "hi", true)).await;
    assert!(began.elapsed() >= Duration::from_millis(400));
    assert_eq!(resp.status(), 200);
    let chunks = openai_chunks(&resp.text().await.unwrap());
    assert_eq!(openai_content(&chunks), ("echo: hi".to_owned(), 2));

    // The rule is spent.
    let began = Instant::now();
    assert_eq!(
        openai(&base, &oa("gpt-slow", "hi", false)).await.status(),
        200
    );
    assert!(began.elapsed() < Duration::from_millis(400));
    assert_eq!(calls(&base).await, json!({"gpt-slow": 3}));
}

#[tokio::test]
async fn a_delay_can_come_before_another_fault() {
    let base = start_default().await;
    set_fault(
        &base,
        json!({"model": "claude-slow", "fault": {"status": 500, "delay_ms": 200}}),
    )
    .await;
    let began = Instant::now();
    let (status, headers, body) =
        parts(anthropic(&base, &an("claude-slow", "hi", false)).await).await;
    assert!(began.elapsed() >= Duration::from_millis(200));
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "api_error", "message": "Internal server error"},
            "request_id": headers["request-id"].to_str().unwrap()})
    );
}

/// Everything the mock sends back on a raw HTTP/1.1 connection for `body` on `path`.
async fn raw_exchange(base: &str, path: &str, headers: &str, body: &Value) -> Vec<u8> {
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("the mock closes the connection");
    // A close with unread data may arrive as a reset: nothing was sent either way.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    received
}

#[tokio::test]
async fn reset_faults_close_the_connection_without_a_response() {
    let base = start_default().await;
    set_fault(
        &base,
        json!({"model": "gpt-a", "fault": {"reset": true}, "times": 1}),
    )
    .await;
    set_fault(
        &base,
        json!({"model": "claude-a", "fault": {"reset": true}}),
    )
    .await;
    let received = raw_exchange(&base, "/v1/chat/completions", "", &oa("gpt-a", "hi", true)).await;
    assert_eq!(received, b"");
    // The rule was for one request: the next one is answered.
    let received = raw_exchange(&base, "/v1/chat/completions", "", &oa("gpt-a", "hi", false)).await;
    assert!(
        received.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&received)
    );

    let received = raw_exchange(
        &base,
        "/v1/messages",
        "anthropic-version: 2023-06-01\r\n",
        &an("claude-a", "hi", false),
    )
    .await;
    assert_eq!(received, b"");
    let err = anthropic_send(&base, &an("claude-a", "hi", true))
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err}");
    assert!(err.status().is_none(), "{err}");
    assert_eq!(calls(&base).await, json!({"gpt-a": 2, "claude-a": 2}));
}

async fn anthropic_send(base: &str, body: &Value) -> reqwest::Result<reqwest::Response> {
    // A fresh client: no pooled connection the mock might have closed.
    reqwest::Client::new()
        .post(format!("{base}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
}

#[tokio::test]
async fn stream_cut_faults_send_the_first_event_then_drop_the_connection() {
    let base = start_default().await;
    set_fault(
        &base,
        json!({"model": "gpt-a", "fault": {"stream_cut_after_first_chunk": true}, "times": 1}),
    )
    .await;
    set_fault(
        &base,
        json!({"model": "claude-a", "fault": {"stream_cut_after_first_chunk": true}, "times": 1}),
    )
    .await;

    let resp = openai(&base, &oa("gpt-a", "cut me", true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let (bytes, cut) = read_until_cut(resp).await;
    assert!(cut, "the body must end in an error, not at its end");
    let chunks = openai_chunks(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "echo:");
    // Spent: the next stream is whole.
    let resp = openai(&base, &oa("gpt-a", "cut me", true)).await;
    let (bytes, cut) = read_until_cut(resp).await;
    assert!(!cut);
    let events = openai_events(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    let resp = anthropic(&base, &an("claude-a", "cut me", true)).await;
    assert_eq!(resp.status(), 200);
    let (bytes, cut) = read_until_cut(resp).await;
    assert!(cut);
    let events = anthropic_events(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta"
        ]
    );
    assert_eq!(events[3].1["delta"]["text"], "echo:");
    assert_eq!(calls(&base).await, json!({"gpt-a": 2, "claude-a": 1}));
}

#[tokio::test]
async fn a_stream_cut_fault_on_a_buffered_answer_sends_half_of_it() {
    let base = start_default().await;
    set_fault(
        &base,
        json!({"model": "gpt-a", "fault": {"stream_cut_after_first_chunk": true}}),
    )
    .await;
    let resp = openai(&base, &oa("gpt-a", "cut me", false)).await;
    assert_eq!(resp.status(), 200);
    let promised: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (bytes, cut) = read_until_cut(resp).await;
    assert!(cut);
    assert_eq!(bytes.len(), promised / 2);
    assert!(bytes.starts_with(br#"{"id":"chatcmpl-mock-"#));
}

#[tokio::test]
async fn the_stream_cut_directive_ends_every_providers_stream_cleanly() {
    let base = start_default().await;
    let resp = openai(&base, &oa("gpt-a", "mock:stream_cut now", true)).await;
    let (bytes, cut) = read_until_cut(resp).await;
    assert!(
        !cut,
        "the directive ends the body, it does not drop the connection"
    );
    let events = openai_events(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
}

#[tokio::test]
async fn rules_count_down_list_and_clear() {
    let base = start_default().await;
    set_fault(
        &base,
        json!({"model": "gpt-a", "fault": {"status": 503}, "times": 2}),
    )
    .await;
    set_fault(&base, json!({"model": "gpt-b", "fault": {"status": 500}})).await;
    assert_eq!(
        get(&base, "/_mock/faults").await,
        json!([
            {"model": "gpt-a", "fault": {"status": 503}, "times_left": 2},
            {"model": "gpt-b", "fault": {"status": 500}, "times_left": null}
        ])
    );
    let statuses = |model: &'static str| {
        let base = base.clone();
        async move {
            openai(&base, &oa(model, "hi", false))
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(statuses("gpt-a").await, 503);
    assert_eq!(
        get(&base, "/_mock/faults").await[0],
        json!({"model": "gpt-a", "fault": {"status": 503}, "times_left": 1})
    );
    assert_eq!(statuses("gpt-a").await, 503);
    assert_eq!(statuses("gpt-a").await, 200);
    assert_eq!(statuses("gpt-b").await, 500);
    assert_eq!(statuses("gpt-b").await, 500);
    assert_eq!(
        get(&base, "/_mock/faults").await,
        json!([{"model": "gpt-b", "fault": {"status": 500}, "times_left": null}])
    );
    assert_eq!(delete(&base, "/_mock/faults").await, json!({"cleared": 1}));
    assert_eq!(get(&base, "/_mock/faults").await, json!([]));
    assert_eq!(statuses("gpt-b").await, 200);
    assert_eq!(calls(&base).await, json!({"gpt-a": 3, "gpt-b": 3}));
}

#[tokio::test]
async fn calls_count_every_provider_request_by_upstream_model() {
    let base = start_default().await;
    set_fault(&base, json!({"model": "gpt-a", "fault": {"status": 429}})).await;
    openai(&base, &oa("gpt-a", "hi", false)).await;
    openai(&base, &oa("gpt-b", "hi", true)).await;
    anthropic(&base, &an("claude-a", "hi", false)).await;
    // Refused by the provider (no anthropic-version), counted all the same.
    let refused = client()
        .post(format!("{base}/v1/messages"))
        .json(&an("claude-a", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let post = |path: &str, body: Value| client().post(format!("{base}{path}")).json(&body).send();
    post(
        "/openai/deployments/gpt-4o-eu/chat/completions?api-version=2024-10-21",
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    post(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
    )
    .await
    .unwrap();
    post(
        "/v2/chat",
        json!({"model": "command-r", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    post(
        "/api/chat",
        json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    post(
        "/v1/embeddings",
        json!({"model": "text-embedding-3-small", "input": "hi"}),
    )
    .await
    .unwrap();
    post(
        "/v1/completions",
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}),
    )
    .await
    .unwrap();
    // Unsigned or without a token: refused, but they reached the handlers.
    post(
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
    )
    .await
    .unwrap();
    post(
        "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4%4020250514:rawPredict",
        json!({"anthropic_version": "vertex-2023-10-16", "max_tokens": 8, "messages": []}),
    )
    .await
    .unwrap();
    // Not counted: no model can be read, no handler was reached, or not provider traffic.
    client()
        .post(format!("{base}/v1/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    client()
        .get(format!("{base}/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    get(&base, "/_mock/requests").await;
    get(&base, "/_mock/faults").await;

    let expected = json!({
        "anthropic.claude-3-5-sonnet-20240620-v1:0": 1,
        "claude-a": 2,
        "claude-sonnet-4@20250514": 1,
        "command-r": 1,
        "gemini-2.5-flash": 1,
        "gpt-3.5-turbo-instruct": 1,
        "gpt-4o-eu": 1,
        "gpt-a": 1,
        "gpt-b": 1,
        "llama3": 1,
        "text-embedding-3-small": 1,
    });
    assert_eq!(calls(&base).await, expected);
    assert_eq!(delete(&base, "/_mock/calls").await, json!({"cleared": 12}));
    assert_eq!(calls(&base).await, json!({}));
    openai(&base, &oa("gpt-a", "hi", false)).await;
    assert_eq!(calls(&base).await, json!({"gpt-a": 1}));
}

#[tokio::test]
async fn bad_rules_and_methods_are_refused() {
    let base = start_default().await;
    let resp = client()
        .post(format!("{base}/_mock/faults"))
        .json(&json!({"model": "gpt-a", "fault": {"status": 429, "reset": true}}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(resp).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {
            "message": "fault names more than one outcome (status, reset): give one, with delay_ms if it should also wait",
            "type": "invalid_request_error", "param": null, "code": null}})
    );
    let resp = client()
        .put(format!("{base}/_mock/calls"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(get(&base, "/_mock/faults").await, json!([]));
}
