//! Golden cases for the Ollama translation: `fixtures/ollama/<case>/`, one `#[test]` each.
//!
//! Every case runs through the public API (snapshot → `State` → `plan_chat_request` →
//! `ResponseHandler`) with a fixed clock. Files of a case:
//!
//! - `request.json`: the client's OpenAI request (required);
//! - `upstream_request.json`: the Ollama body the gateway must send (compared as JSON);
//! - `upstream_headers.json` (optional): `{"path", "headers"}` the gateway must send;
//! - the provider's answer, at most one of `response.json`, `response.txt` (non-JSON body) or
//!   `response.ndjson` (a newline-delimited JSON stream), with its HTTP status in `status`
//!   (default 200);
//! - what the client must get: `expected_response.json` (with `expected_status` when the
//!   gateway replaces the provider's status) or `expected_response.sse` (compared as the
//!   sequence of `data:` events, JSON payloads compared as JSON);
//! - `usage.json`: the usage the gateway must record;
//! - `pricing.json` and `expected_cost` (optional): the deployment's prices and the cost the
//!   usage chunk must carry.
//!
//! Streams are also fed with a separate empty end-of-stream chunk, split in two at every byte
//! boundary, and one byte at a time: the output must be byte for byte the same. At every line
//! end the output so far must be a prefix of the final output, and a line with text or a tool
//! call must have added to it (nothing waits for the end).
//!
//! `UPDATE_GOLDEN=1 cargo test -p tollgate-core --test golden_ollama` rewrites the expected
//! files from the current output; the committed files were written and checked by hand against
//! Ollama's API reference (docs/api.md) and OpenAI's documentation, so review any diff it makes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod golden;

use std::path::{Path, PathBuf};

use golden::*;
use serde_json::{json, Value};
use tollgate_core::gateway::plan_chat_request;
use tollgate_core::providers::{ChunkOutput, ResponseMode};
use tollgate_core::{proto, GatewayError, State, Usage};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ollama")
}

fn deployment(
    model_name: &str,
    provider_name: &str,
    upstream_model: &str,
    api_base: &str,
    api_key: &str,
    pricing: Option<proto::Pricing>,
) -> proto::Deployment {
    proto::Deployment {
        id: format!("id-{model_name}"),
        model_name: model_name.into(),
        provider: proto::ProviderKind::Ollama as i32,
        provider_name: provider_name.into(),
        upstream_model: upstream_model.into(),
        api_base: api_base.into(),
        api_key: api_key.into(),
        pricing,
        ..Default::default()
    }
}

/// `ollama`: a local Ollama without a key (`ollama/` prefix), priced as the case's
/// `pricing.json` says (not priced without one). `ollama-keyed`: `ollama_chat/` on
/// ollama.com's documented base, which already ends in `/api`, with a key.
fn state_priced(pricing: Option<proto::Pricing>) -> State {
    let snapshot = proto::Snapshot {
        keys: Vec::new(),
        version: 1,
        settings: None,
        deployments: vec![
            deployment(
                "ollama",
                "ollama",
                "llama3.2",
                "http://ollama.internal:11434",
                "",
                pricing,
            ),
            deployment(
                "ollama-keyed",
                "ollama_chat",
                "gpt-oss:120b",
                "https://ollama.com/api",
                "ollama-test-key",
                None,
            ),
        ],
    };
    let (state, problems) = State::from_snapshot(snapshot);
    assert!(problems.is_empty(), "{problems:?}");
    state
}

fn state() -> State {
    state_priced(None)
}

/// Runs a provider stream through a fresh plan for `ollama` priced with `pricing`, fed in
/// `chunks` (the last one ends the stream unless `end` is false); gives what the client got,
/// the usage and the record's cost.
fn run_stream(
    pricing: Option<proto::Pricing>,
    request: &[u8],
    chunks: &[&[u8]],
    end: bool,
) -> (Vec<u8>, Usage, Option<f64>) {
    let state = state_priced(pricing);
    let mut plan = plan_chat_request(&state, request, &CONTEXT).unwrap();
    assert_eq!(
        plan.response.on_headers(200, Some("application/x-ndjson")),
        ResponseMode::Stream
    );
    assert!(plan.response.drops_content_length());
    assert!(plan.response.streams_in_another_framing());
    let mut output = Vec::new();
    for (index, chunk) in chunks.iter().enumerate() {
        let mut out = Vec::new();
        let end_of_stream = end && index + 1 == chunks.len();
        match plan
            .response
            .on_stream_chunk(chunk, end_of_stream, &mut out)
        {
            ChunkOutput::Replaced => output.extend_from_slice(&out),
            ChunkOutput::Unchanged => panic!("Ollama streams are always rewritten"),
        }
    }
    (output, plan.response.usage(), plan.cost())
}

/// The end of each line of `stream` (just past its `\n`).
fn line_ends(stream: &[u8]) -> Vec<usize> {
    stream
        .iter()
        .enumerate()
        .filter(|(_, byte)| **byte == b'\n')
        .map(|(at, _)| at + 1)
        .collect()
}

fn check_stream(case: &Path, request: &[u8], stream: &[u8]) {
    let prices = pricing(case);
    let (whole, usage, cost) = run_stream(prices, request, &[stream], true);
    check_cost(case, &whole, cost);
    golden_sse(case, "expected_response.sse", &whole);
    golden_json(case, "usage.json", &usage_json(usage));

    let (output, separate_end, _) = run_stream(prices, request, &[stream, b""], true);
    assert_eq!(output, whole, "empty end-of-stream chunk");
    assert_eq!(separate_end, usage, "usage, empty end-of-stream chunk");

    for split in 0..=stream.len() {
        let (output, split_usage, _) =
            run_stream(prices, request, &[&stream[..split], &stream[split..]], true);
        assert!(
            output == whole,
            "split at {split}:\n{}",
            String::from_utf8_lossy(&output)
        );
        assert_eq!(split_usage, usage, "usage, split at {split}");
    }

    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let (output, byte_usage, _) = run_stream(prices, request, &bytes, true);
    assert!(output == whole, "byte by byte");
    assert_eq!(byte_usage, usage, "usage, byte by byte");

    // Translation is incremental: once a line is complete, its output is out.
    let mut previous = 0;
    let mut start = 0;
    for (index, end) in line_ends(stream).into_iter().enumerate() {
        let line = &stream[start..end];
        let (so_far, _, _) = run_stream(prices, request, &[&stream[..end]], false);
        assert!(
            whole.starts_with(&so_far),
            "output up to byte {end} is not a prefix of the final output"
        );
        let carries_text =
            contains(line, b"\"content\":\"") && !contains(line, b"\"content\":\"\"");
        if index == 0 || carries_text || contains(line, b"\"tool_calls\"") {
            assert!(
                so_far.len() > previous,
                "line ending at byte {end} held back"
            );
        }
        previous = so_far.len();
        start = end;
    }
}

fn check_case(name: &str) {
    let case = fixtures().join(name);
    let request = read(&case, "request.json").unwrap_or_else(|| panic!("{name}: no request.json"));
    let state = state_priced(pricing(&case));
    let plan = plan_chat_request(&state, &request, &CONTEXT)
        .unwrap_or_else(|error| panic!("{name}: {error}"));

    golden_json(&case, "upstream_request.json", &json(&plan.body));
    let mut headers = serde_json::Map::new();
    for (header, value) in &plan.headers {
        assert!(
            headers
                .insert((*header).to_string(), json!(value))
                .is_none(),
            "header {header} set twice"
        );
    }
    assert_eq!(headers["content-type"], "application/json");
    let model = json(&request)["model"].as_str().unwrap().to_string();
    let (authorization, upstream_model) = match model.as_str() {
        "ollama" => (None, "llama3.2"),
        _ => (Some("Bearer ollama-test-key"), "gpt-oss:120b"),
    };
    assert_eq!(
        headers.get("authorization").and_then(Value::as_str),
        authorization
    );
    // Both bases reach /api/chat: one has no path, the other ends in /api.
    assert_eq!(plan.path, "/api/chat");
    // Ollama streams unless told not to: `stream` is always sent, as the client asked.
    let sent = json(&plan.body);
    assert_eq!(sent["stream"], json(&request)["stream"] == true);
    assert_eq!(sent["model"], upstream_model);
    if case.join("upstream_headers.json").exists() {
        golden_json(
            &case,
            "upstream_headers.json",
            &json!({"path": plan.path, "headers": headers}),
        );
    }

    if let Some(stream) = read(&case, "response.ndjson") {
        check_stream(&case, &request, &stream);
        return;
    }
    let (body, content_type) = match (read(&case, "response.json"), read(&case, "response.txt")) {
        (Some(body), None) => (body, "application/json"),
        (None, Some(body)) => (body, "text/plain; charset=utf-8"),
        (None, None) => return, // a request-only case
        (Some(_), Some(_)) => panic!("{name}: response.json and response.txt"),
    };
    let status = read_status(&case, "status").unwrap_or(200);
    let mut response = plan.response;
    assert_eq!(
        response.on_headers(status, Some(content_type)),
        ResponseMode::Buffer,
    );
    let completed = response.on_complete_body(&body);
    let expected_status = read_status(&case, "expected_status").unwrap_or(status);
    assert_eq!(
        completed.status.unwrap_or(status),
        expected_status,
        "status"
    );
    if status >= 400 {
        // A provider error's status, replaced or not, is what the usage record says.
        assert_eq!(response.status(), expected_status, "the status recorded");
    }
    let client_body = completed
        .body
        .unwrap_or_else(|| panic!("{name}: Ollama bodies are always rewritten"));
    golden_json(&case, "expected_response.json", &json(&client_body));
    golden_json(&case, "usage.json", &usage_json(response.usage()));
    assert!(response.drops_content_length(), "content-length");
}

golden_cases!(
    fixtures = fixtures,
    check = check_case;
    text,
    system,
    multi_turn,
    keyed_base,
    tools,
    tool_results,
    parallel_tool_calls,
    tool_choice_none,
    images,
    options,
    json_object,
    json_schema,
    max_tokens,
    usage_cached_prompt,
    usage_missing,
    error_400,
    error_401,
    error_404_model_not_found,
    error_500,
    error_non_json,
    error_in_ok_body,
    bad_upstream_body,
    stream_text,
    stream_tool_calls,
    stream_priced_usage,
    stream_error,
    stream_cut,
);

fn error_of(body: Value) -> GatewayError {
    plan_chat_request(&state(), body.to_string().as_bytes(), &CONTEXT)
        .err()
        .unwrap_or_else(|| panic!("accepted: {body}"))
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}})
}

fn call(id: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}})
}

fn image(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

#[test]
fn bad_requests_are_400_naming_the_field() {
    let cases = [
        (
            json!({"model": "ollama", "messages": [user("hi"),
                {"role": "assistant", "tool_calls": [call("a", "{}"), call("b", "{\"city\": ")]}]}),
            "messages[1].tool_calls[1].function.arguments",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi"),
                {"role": "assistant", "tool_calls": [call("a", "[1, 2]")]}]}),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "n": 2}),
            "n",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "functions": [{"name": "f"}]}),
            "functions",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "seed": "x"}),
            "seed",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "frequency_penalty": "high"}),
            "frequency_penalty",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi"), {"role": "assistant", "tool_calls": [call("a", "{}")]},
                {"role": "tool", "content": "15C"}]}),
            "messages[2].tool_call_id",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi"), {"role": "assistant", "tool_calls": [call("a", "{}")]},
                {"role": "tool", "tool_call_id": "a", "content": [image("data:image/png;base64,QQ==")]}]}),
            "messages[2].content[0].type",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi"), {"role": "function", "name": "f", "content": "x"}]}),
            "messages[1].role",
        ),
        // Ollama has no tool_choice: a call it cannot be made to make is refused.
        (
            json!({"model": "ollama", "messages": [user("hi")], "tools": [weather_tool()], "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "tools": [weather_tool()],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
            "tool_choice",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "tools": [weather_tool()], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "tools": [{"type": "custom", "custom": {"name": "x"}}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")], "tools": [{"type": "function"}]}),
            "tools[0].function",
        ),
        (
            json!({"model": "ollama", "messages": [user("hi")],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": "none"}}]}),
            "tools[0].function.parameters",
        ),
        // Images Ollama cannot be sent: it takes bytes, and the filter fetches nothing.
        (
            json!({"model": "ollama", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "look"}, image("https://example.com/a.png")]}]}),
            "messages[0].content[1].image_url.url",
        ),
        (
            json!({"model": "ollama", "messages": [{"role": "user", "content": [image("ftp://example.com/a.png")]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"model": "ollama", "messages": [{"role": "user", "content": [image("data:image/png,notbase64")]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"model": "ollama", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "ollama", "messages": [{"role": "system", "content": [
                image("data:image/png;base64,QQ==")]}, user("hi")]}),
            "messages[0].content[0].type",
        ),
    ];
    for (body, param) in cases {
        let error = error_of(body.clone());
        assert_eq!(error.status(), 400, "{body}");
        assert_eq!(error.param(), Some(param), "{body}: {error}");
        let client: Value = serde_json::from_slice(&error.to_json()).unwrap();
        assert_eq!(client["error"]["param"], param);
        assert_eq!(client["error"]["type"], "invalid_request_error");
    }
    let error = error_of(
        json!({"model": "ollama", "messages": [{"role": "user", "content": [
        image("https://example.com/a.png")]}]}),
    );
    assert!(
        error.to_string().contains("does not fetch image URLs"),
        "{error}"
    );
}

#[test]
fn requests_ollama_takes_as_they_are_pass() {
    for body in [
        json!({"model": "ollama", "messages": [user("hi")], "temperature": 2.0, "n": 1}),
        json!({"model": "ollama", "messages": [user("hi")], "response_format": {"type": "text"}}),
        json!({"model": "ollama", "messages": [user("hi")], "parallel_tool_calls": false, "tools": [weather_tool()]}),
        json!({"model": "ollama", "messages": [user("hi")], "tools": [weather_tool()], "tool_choice": "auto"}),
        json!({"model": "ollama", "messages": [user("hi"), {"role": "assistant", "tool_calls": [call("a", "  ")]}]}),
    ] {
        let plan = plan_chat_request(&state(), body.to_string().as_bytes(), &CONTEXT);
        assert!(plan.is_ok(), "{body}: {:?}", plan.err());
    }
    // Without tools, "none" and "auto" have nothing to act on.
    for choice in ["none", "auto"] {
        let plan = plan_chat_request(
            &state(),
            json!({"model": "ollama", "messages": [user("hi")], "tool_choice": choice})
                .to_string()
                .as_bytes(),
            &CONTEXT,
        )
        .unwrap();
        assert!(json(&plan.body).get("tools").is_none());
    }
    // A result whose call is not in the conversation goes without tool_name (Ollama does
    // not need it), with its id.
    let plan = plan_chat_request(
        &state(),
        json!({"model": "ollama", "messages": [user("hi"),
            {"role": "tool", "tool_call_id": "elsewhere", "content": "15C"}]})
        .to_string()
        .as_bytes(),
        &CONTEXT,
    )
    .unwrap();
    assert_eq!(
        json(&plan.body)["messages"][1],
        json!({"role": "tool", "content": "15C", "tool_call_id": "elsewhere"})
    );
}

#[test]
fn only_an_ndjson_answer_is_streamed() {
    let request = json!({"model": "ollama", "stream": true, "messages": [user("hi")]}).to_string();
    for (content_type, mode) in [
        ("application/x-ndjson", ResponseMode::Stream),
        ("Application/X-NDJSON; charset=utf-8", ResponseMode::Stream),
        ("application/json; charset=utf-8", ResponseMode::Buffer),
        ("text/event-stream", ResponseMode::Buffer),
    ] {
        let mut plan = plan_chat_request(&state(), request.as_bytes(), &CONTEXT).unwrap();
        assert_eq!(
            plan.response.on_headers(200, Some(content_type)),
            mode,
            "{content_type}"
        );
        // A stream reaches the client as server-sent events.
        assert_eq!(
            plan.response.streams_in_another_framing(),
            mode == ResponseMode::Stream
        );
    }
    // A stream request Ollama answered with one JSON object (a proxy that buffers) is
    // translated whole.
    let mut plan = plan_chat_request(&state(), request.as_bytes(), &CONTEXT).unwrap();
    plan.response.on_headers(200, Some("application/json"));
    let completed = plan.response.on_complete_body(
        br#"{"model":"llama3.2","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"Hi"},"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":1}"#,
    );
    let body = json(&completed.body.unwrap());
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "Hi");
}

#[test]
fn the_client_sees_one_error_after_a_stream_fails() {
    let request = json!({"model": "ollama", "stream": true, "messages": [user("hi")]}).to_string();
    let (output, usage, _) = run_stream(
        None,
        request.as_bytes(),
        &[b"{oops}\n", b"{\"done\":true}\n"],
        true,
    );
    let events = data_events(&output);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["error"]["code"], "bad_upstream_response");
    assert!(!usage.is_reported());
}
