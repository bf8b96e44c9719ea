//! Golden cases for the Anthropic Messages translation: `fixtures/anthropic/<case>/`.
//!
//! Every case runs through the public API (snapshot → `State` → `plan_chat_request` →
//! `ResponseHandler`) with a fixed clock. Files of a case:
//!
//! - `request.json`: the client's OpenAI request (required);
//! - `upstream_request.json`: the Anthropic body the gateway must send (compared as JSON);
//! - `upstream_headers.json` (optional): `{"path", "headers"}` the gateway must send;
//! - the provider's answer, at most one of `response.json`, `response.txt` (non-JSON body) or
//!   `response.sse` (an event stream), with its HTTP status in `status` (default 200);
//! - what the client must get: `expected_response.json` (with `expected_status` when the
//!   gateway replaces the provider's status) or `expected_response.sse` (compared as the
//!   sequence of `data:` events, JSON payloads compared as JSON);
//! - `usage.json`: the usage the gateway must record (`null` = not reported).
//!
//! Streams are also fed with a separate empty end-of-stream chunk, split in two at every byte
//! boundary, and one byte at a time: the output must be byte for byte the same. At every event
//! boundary the output so far must be a prefix of the final output (nothing waits for the end).
//!
//! `UPDATE_GOLDEN=1 cargo test -p tollgate-core --test golden_anthropic` rewrites the expected
//! files from the current output; the committed files were written and checked by hand against
//! Anthropic's and OpenAI's documentation, so review any diff it makes.

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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/anthropic")
}

fn deployment(
    model_name: &str,
    upstream_model: &str,
    api_base: &str,
    api_key: &str,
    default_max_tokens: u32,
    api_version: &str,
    pricing: Option<proto::Pricing>,
) -> proto::Deployment {
    proto::Deployment {
        id: format!("id-{model_name}"),
        model_name: model_name.into(),
        provider: proto::ProviderKind::Anthropic as i32,
        provider_name: "anthropic".into(),
        upstream_model: upstream_model.into(),
        api_base: api_base.into(),
        api_key: api_key.into(),
        default_max_tokens,
        api_version: api_version.into(),
        pricing,
        limits: None,
        provider_settings: None,
        default_params_json: String::new(),
        ..Default::default()
    }
}

/// `claude`: defaults everywhere. `claude-configured`: no key, its own max_tokens default,
/// API version and a base path that already ends in /v1. `claude` is priced as the case's
/// `pricing.json` says (not priced without one).
fn state() -> State {
    state_priced(None)
}

fn state_priced(pricing: Option<proto::Pricing>) -> State {
    let snapshot = proto::Snapshot {
        keys: Vec::new(),
        version: 1,
        settings: None,
        deployments: vec![
            deployment(
                "claude",
                "claude-sonnet-4-5-20250929",
                "https://api.anthropic.com",
                "sk-ant-test",
                0,
                "",
                pricing,
            ),
            deployment(
                "claude-configured",
                "claude-haiku-4-5",
                "http://127.0.0.1:8080/anthropic/v1",
                "",
                1024,
                "2023-01-01",
                None,
            ),
        ],
    };
    let (state, problems) = State::from_snapshot(snapshot);
    assert!(problems.is_empty(), "{problems:?}");
    state
}

/// The cost a priced stream's usage chunk must carry, as the case's `expected_cost` writes
/// it (the text of the JSON number, as the cost header would write it); `None` without
/// `pricing.json`. Checked against the bytes, since comparing JSON would accept `3.75e-5`.
fn check_cost(case: &Path, name: &str, output: &[u8], cost: Option<f64>) {
    let text = String::from_utf8_lossy(output);
    match read(case, "expected_cost") {
        Some(expected) => {
            let expected = String::from_utf8_lossy(&expected).trim().to_string();
            assert_eq!(
                cost.map(tollgate_core::pricing::cost_header_value),
                Some(expected.clone()),
                "{name}: the usage record's cost"
            );
            assert_eq!(
                text.matches(&format!("\"cost\":{expected}}}")).count(),
                1,
                "{name}: one usage chunk with the cost:\n{text}"
            );
        }
        None => assert!(!text.contains("\"cost\""), "{name}: no cost:\n{text}"),
    }
}

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
        "cache_creation_tokens": usage.cache_creation_tokens,
    })
}

/// Runs a provider stream through a fresh plan, fed in `chunks` (the last one ends the
/// stream unless `end` is false).
fn run_stream(request: &[u8], chunks: &[&[u8]], end: bool) -> (Vec<u8>, Usage) {
    let (output, usage, _) = run_priced_stream(None, request, chunks, end);
    (output, usage)
}

/// [`run_stream`] for a `claude` priced with `pricing`; also gives the record's cost.
fn run_priced_stream(
    pricing: Option<proto::Pricing>,
    request: &[u8],
    chunks: &[&[u8]],
    end: bool,
) -> (Vec<u8>, Usage, Option<f64>) {
    let state = state_priced(pricing);
    let mut plan = plan_chat_request(&state, request, &CONTEXT).unwrap();
    assert_eq!(
        plan.response
            .on_headers(200, Some("text/event-stream; charset=utf-8")),
        ResponseMode::Stream
    );
    assert!(plan.response.drops_content_length());
    let mut output = Vec::new();
    for (index, chunk) in chunks.iter().enumerate() {
        let mut out = Vec::new();
        let end_of_stream = end && index + 1 == chunks.len();
        match plan
            .response
            .on_stream_chunk(chunk, end_of_stream, &mut out)
        {
            ChunkOutput::Replaced => output.extend_from_slice(&out),
            ChunkOutput::Unchanged => panic!("Anthropic streams are always rewritten"),
        }
    }
    (output, plan.response.usage(), plan.cost())
}

fn check_stream(case: &Path, name: &str, request: &[u8], stream: &[u8]) {
    let run_stream = |request: &[u8], chunks: &[&[u8]], end: bool| {
        let (output, usage, _) = run_priced_stream(pricing(case), request, chunks, end);
        (output, usage)
    };
    let (whole, usage, cost) = run_priced_stream(pricing(case), request, &[stream], true);
    check_cost(case, name, &whole, cost);
    golden_sse(case, "expected_response.sse", &whole);
    golden_json(case, "usage.json", &usage_json(usage));

    let (output, separate_end) = run_stream(request, &[stream, b""], true);
    assert_eq!(output, whole, "{name}: empty end-of-stream chunk");
    assert_eq!(
        separate_end, usage,
        "{name}: usage, empty end-of-stream chunk"
    );

    for split in 0..=stream.len() {
        let (output, split_usage) =
            run_stream(request, &[&stream[..split], &stream[split..]], true);
        assert!(
            output == whole,
            "{name}: split at {split}:\n{}",
            String::from_utf8_lossy(&output)
        );
        assert_eq!(split_usage, usage, "{name}: usage, split at {split}");
    }

    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let (output, byte_usage) = run_stream(request, &bytes, true);
    assert!(output == whole, "{name}: byte by byte");
    assert_eq!(byte_usage, usage, "{name}: usage, byte by byte");

    // Translation is incremental: once an event is complete, its output is out.
    let mut previous = 0;
    let mut at = 0;
    while let Some(found) = memchr_find(&stream[at..], b"\n\n") {
        let boundary = at + found + 2;
        let event = &stream[at..boundary];
        let (so_far, _) = run_stream(request, &[&stream[..boundary]], false);
        assert!(
            whole.starts_with(&so_far),
            "{name}: output up to byte {boundary} is not a prefix of the final output"
        );
        let carries_text = contains(event, b"\"text_delta\"") && !contains(event, b"\"text\":\"\"");
        if carries_text || contains(event, b"\"message_start\"") {
            assert!(
                so_far.len() > previous,
                "{name}: event ending at byte {boundary} held back"
            );
        }
        previous = so_far.len();
        at = boundary;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr_find(haystack, needle).is_some()
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn check_case(case: &Path) {
    let name = case.file_name().unwrap().to_string_lossy().to_string();
    let request = read(case, "request.json").unwrap_or_else(|| panic!("{name}: no request.json"));
    let state = state_priced(pricing(case));
    let plan = plan_chat_request(&state, &request, &CONTEXT)
        .unwrap_or_else(|error| panic!("{name}: {error}"));

    golden_json(case, "upstream_request.json", &json(&plan.body));
    let mut headers = serde_json::Map::new();
    for (header, value) in &plan.headers {
        assert!(
            headers
                .insert((*header).to_string(), json!(value))
                .is_none(),
            "{name}: header {header} set twice"
        );
    }
    assert_eq!(headers["content-type"], "application/json", "{name}");
    assert!(headers.contains_key("anthropic-version"), "{name}");
    assert!(!headers.contains_key("authorization"), "{name}");
    if case.join("upstream_headers.json").exists() {
        golden_json(
            case,
            "upstream_headers.json",
            &json!({"path": plan.path, "headers": headers}),
        );
    }

    if let Some(stream) = read(case, "response.sse") {
        check_stream(case, &name, &request, &stream);
        return;
    }
    let (body, content_type) = match (read(case, "response.json"), read(case, "response.txt")) {
        (Some(body), None) => (body, "application/json"),
        (None, Some(body)) => (body, "text/html"),
        (None, None) => return, // a request-only case
        (Some(_), Some(_)) => panic!("{name}: response.json and response.txt"),
    };
    let status = read_status(case, "status").unwrap_or(200);
    let mut response = plan.response;
    assert_eq!(
        response.on_headers(status, Some(content_type)),
        ResponseMode::Buffer,
        "{name}"
    );
    let completed = response.on_complete_body(&body);
    assert_eq!(
        completed.status.unwrap_or(status),
        read_status(case, "expected_status").unwrap_or(status),
        "{name}: status"
    );
    let client_body = completed
        .body
        .unwrap_or_else(|| panic!("{name}: Anthropic bodies are always rewritten"));
    golden_json(case, "expected_response.json", &json(&client_body));
    golden_json(case, "usage.json", &usage_json(response.usage()));
    assert!(response.drops_content_length(), "{name}: content-length");
}

fn check_named(name: &str) {
    check_case(&fixtures().join(name));
}

golden_cases!(
    fixtures = fixtures,
    check = check_named;
    assistant_first,
    bad_upstream_body,
    error_400,
    error_429,
    error_529,
    error_non_json,
    finish_max_tokens,
    finish_refusal,
    images,
    multi_turn,
    stop_and_params,
    stream_cut,
    stream_error,
    stream_priced_usage,
    stream_priced_usage_off,
    stream_text,
    stream_text_escaped,
    stream_tools,
    stream_usage,
    stream_usage_off,
    system,
    text,
    tool_choice_named,
    tool_choice_none,
    tool_choice_parallel_off,
    tool_choice_required,
    tools,
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

#[test]
fn bad_requests_are_400_naming_the_field() {
    let cases = [
        // Tool-call arguments that are not a JSON object.
        (
            json!({"model": "claude", "messages": [user("hi"),
                {"role": "assistant", "tool_calls": [call("a", "{}"), call("b", "{\"city\": ")]}]}),
            "messages[1].tool_calls[1].function.arguments",
        ),
        (
            json!({"model": "claude", "messages": [user("hi"),
                {"role": "assistant", "tool_calls": [call("a", "[1, 2]")]}]}),
            "messages[1].tool_calls[0].function.arguments",
        ),
        // Parameters Anthropic cannot honour.
        (
            json!({"model": "claude", "messages": [user("hi")], "n": 2}),
            "n",
        ),
        (
            json!({"model": "claude", "messages": [user("hi")], "temperature": 1.5}),
            "temperature",
        ),
        (
            json!({"model": "claude", "messages": [user("hi")], "functions": [{"name": "f"}]}),
            "functions",
        ),
        // Field types the first validation pass does not look at.
        (
            json!({"model": "claude", "messages": [user("hi")],
                "tools": [{"type": "function", "function": {"name": 5}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"model": "claude", "messages": [user("hi"),
                {"role": "assistant", "tool_calls": [{"id": 5, "function": {"name": "f"}}]}]}),
            "messages[1].tool_calls[0].id",
        ),
        (
            json!({"model": "claude", "messages": [user("hi")], "parallel_tool_calls": "no"}),
            "parallel_tool_calls",
        ),
        (
            json!({"model": "claude", "messages": [user("hi")], "user": 5}),
            "user",
        ),
        (
            json!({"model": "claude", "messages": [user("hi")], "stop": ["a", 1]}),
            "stop[1]",
        ),
        (
            json!({"model": "claude", "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}),
            "messages[0].content[0].text",
        ),
        // Structure.
        (
            json!({"model": "claude", "messages": [user("hi"), {"role": "assistant", "tool_calls": [call("a", "{}")]},
                {"role": "tool", "content": "15C"}]}),
            "messages[2].tool_call_id",
        ),
        (
            json!({"model": "claude", "messages": [{"role": "system", "content": "be nice"}]}),
            "messages",
        ),
        (
            json!({"model": "claude", "messages": [user("hi"), {"role": "function", "name": "f", "content": "x"}]}),
            "messages[1].role",
        ),
        (
            json!({"model": "claude", "messages": [user("hi")], "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": "claude", "messages": [user("hi")], "tools": [weather_tool()], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "claude", "messages": [user("hi")], "tools": [{"type": "custom", "custom": {"name": "x"}}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "claude", "messages": [user("hi")], "tools": [{"type": "function"}]}),
            "tools[0].function",
        ),
        (
            json!({"model": "claude", "messages": [user("hi")],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": "none"}}]}),
            "tools[0].function.parameters",
        ),
        // Content Anthropic cannot take.
        (
            json!({"model": "claude", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]}),
            "messages[0].content[1].image_url.url",
        ),
        (
            json!({"model": "claude", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"model": "claude", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "claude", "messages": [{"role": "system", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}, user("hi")]}),
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

    let temperature =
        error_of(json!({"model": "claude", "messages": [user("hi")], "temperature": 1.5}));
    assert!(temperature.to_string().contains("0 to 1"), "{temperature}");
}

#[test]
fn limits_that_are_fine_pass() {
    for body in [
        json!({"model": "claude", "messages": [user("hi")], "temperature": 1.0, "n": 1}),
        json!({"model": "claude", "messages": [user("hi")], "temperature": 0, "top_p": 1}),
        json!({"model": "claude", "messages": [user("hi")], "tool_choice": "none", "parallel_tool_calls": false}),
        json!({"model": "claude", "messages": [user("hi"), {"role": "assistant", "tool_calls": [call("a", "  ")]}]}),
    ] {
        let plan = plan_chat_request(&state(), body.to_string().as_bytes(), &CONTEXT);
        assert!(plan.is_ok(), "{body}: {:?}", plan.err());
    }
    // Without tools, "none"/"auto" and parallel_tool_calls have nothing to act on.
    let plan = plan_chat_request(
        &state(),
        json!({"model": "claude", "messages": [user("hi")], "tool_choice": "auto", "parallel_tool_calls": false})
            .to_string()
            .as_bytes(),
        &CONTEXT,
    )
    .unwrap();
    let sent = json(&plan.body);
    assert!(
        sent.get("tool_choice").is_none() && sent.get("tools").is_none(),
        "{sent}"
    );
}

#[test]
fn the_client_sees_one_error_after_a_stream_fails() {
    let request = json!({"model": "claude", "stream": true, "messages": [user("hi")]}).to_string();
    let (output, usage) = run_stream(
        request.as_bytes(),
        &[
            b"event: message_start\ndata: {oops}\n\n",
            b"event: ping\ndata: {}\n\n",
        ],
        true,
    );
    let events = data_events(&output);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["error"]["code"], "bad_upstream_response");
    assert!(!usage.is_reported());
}
