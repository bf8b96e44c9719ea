//! Golden cases for the Gemini translation: `fixtures/gemini/<case>/`, one `#[test]` each.
//!
//! Every case runs through the public API (snapshot → `State` → `plan_chat_request` →
//! `ResponseHandler`) with a fixed clock. Files of a case:
//!
//! - `request.json`: the client's OpenAI request (required);
//! - `upstream_request.json`: the Gemini body the gateway must send (compared as JSON);
//! - `upstream_headers.json` (optional): `{"path", "headers"}` the gateway must send;
//! - the provider's answer, at most one of `response.json`, `response.txt` (non-JSON body) or
//!   `response.sse` (an event stream), with its HTTP status in `status` (default 200);
//! - what the client must get: `expected_response.json` (with `expected_status` when the
//!   gateway replaces the provider's status) or `expected_response.sse` (compared as the
//!   sequence of `data:` events, JSON payloads compared as JSON);
//! - `usage.json`: the usage the gateway must record;
//! - `pricing.json` and `expected_cost` (optional): the deployment's prices and the cost the
//!   usage chunk must carry.
//!
//! Streams are also fed with a separate empty end-of-stream chunk, split in two at every byte
//! boundary, and one byte at a time: the output must be byte for byte the same. At every event
//! boundary the output so far must be a prefix of the final output, and an event with text or
//! a function call must have added to it (nothing waits for the end).
//!
//! `UPDATE_GOLDEN=1 cargo test -p tollgate-core --test golden_gemini` rewrites the expected
//! files from the current output; the committed files were written and checked by hand against
//! Google's Gemini API reference and OpenAI's documentation, so review any diff it makes.

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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gemini")
}

fn deployment(
    model_name: &str,
    upstream_model: &str,
    api_base: &str,
    api_key: &str,
    pricing: Option<proto::Pricing>,
) -> proto::Deployment {
    proto::Deployment {
        id: format!("id-{model_name}"),
        model_name: model_name.into(),
        provider: proto::ProviderKind::Gemini as i32,
        provider_name: "gemini".into(),
        upstream_model: upstream_model.into(),
        api_base: api_base.into(),
        api_key: api_key.into(),
        pricing,
        ..Default::default()
    }
}

/// `gemini`: Google AI Studio's base and a key, priced as the case's `pricing.json` says
/// (not priced without one). `gemini-proxied`: no key and a base that already ends in
/// `/v1beta`.
fn state_priced(pricing: Option<proto::Pricing>) -> State {
    let snapshot = proto::Snapshot {
        keys: Vec::new(),
        version: 1,
        settings: None,
        deployments: vec![
            deployment(
                "gemini",
                "gemini-2.5-flash",
                "https://generativelanguage.googleapis.com",
                "AIza-test-key",
                pricing,
            ),
            deployment(
                "gemini-proxied",
                "gemini-2.5-pro",
                "http://127.0.0.1:8080/gemini/v1beta",
                "",
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

/// Runs a provider stream through a fresh plan for a `gemini` priced with `pricing`, fed in
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
        plan.response.on_headers(200, Some("text/event-stream")),
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
            ChunkOutput::Unchanged => panic!("Gemini streams are always rewritten"),
        }
    }
    (output, plan.response.usage(), plan.cost())
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

    // Translation is incremental: once an event is complete, its output is out.
    let mut previous = 0;
    let mut start = 0;
    for (index, end) in event_ends(stream).into_iter().enumerate() {
        let event = &stream[start..end];
        let (so_far, _, _) = run_stream(prices, request, &[&stream[..end]], false);
        assert!(
            whole.starts_with(&so_far),
            "output up to byte {end} is not a prefix of the final output"
        );
        let carries_text = contains(event, b"\"text\"")
            && !contains(event, b"\"text\":\"\"")
            && !contains(event, b"\"thought\":true");
        if index == 0 || carries_text || contains(event, b"\"functionCall\"") {
            assert!(
                so_far.len() > previous,
                "event ending at byte {end} held back"
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
    assert!(!headers.contains_key("authorization"));
    let stream = json(&request)["stream"] == true;
    let model = json(&request)["model"].as_str().unwrap().to_string();
    let (base, upstream_model) = match model.as_str() {
        "gemini" => ("", "gemini-2.5-flash"),
        _ => ("/gemini", "gemini-2.5-pro"),
    };
    let endpoint = if stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    };
    assert_eq!(
        plan.path,
        format!("{base}/v1beta/models/{upstream_model}{endpoint}")
    );
    if case.join("upstream_headers.json").exists() {
        golden_json(
            &case,
            "upstream_headers.json",
            &json!({"path": plan.path, "headers": headers}),
        );
    }

    if let Some(stream) = read(&case, "response.sse") {
        check_stream(&case, &request, &stream);
        return;
    }
    let (body, content_type) = match (read(&case, "response.json"), read(&case, "response.txt")) {
        (Some(body), None) => (body, "application/json"),
        (None, Some(body)) => (body, "text/html"),
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
        .unwrap_or_else(|| panic!("{name}: Gemini bodies are always rewritten"));
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
    proxied_base,
    tools,
    tool_results,
    parallel_tool_calls,
    tool_choice_required,
    tool_choice_named,
    tool_choice_none,
    images,
    stop_and_params,
    json_object,
    json_schema,
    safety_block,
    prompt_blocked,
    max_tokens,
    reasoning_tokens,
    error_400,
    error_401_key_invalid,
    error_403,
    error_429,
    error_500,
    error_non_json,
    bad_upstream_body,
    stream_text,
    stream_tool_calls,
    stream_usage,
    stream_priced_usage,
    stream_prompt_blocked,
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

#[test]
fn bad_requests_are_400_naming_the_field() {
    let cases = [
        (
            json!({"model": "gemini", "messages": [user("hi"),
                {"role": "assistant", "tool_calls": [call("a", "{}"), call("b", "{\"city\": ")]}]}),
            "messages[1].tool_calls[1].function.arguments",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi"),
                {"role": "assistant", "tool_calls": [call("a", "[1, 2]")]}]}),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "n": 2}),
            "n",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "functions": [{"name": "f"}]}),
            "functions",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "seed": "x"}),
            "seed",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "response_format": {"kind": "json_object"}}),
            "response_format",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")],
                "response_format": {"type": "json_schema", "json_schema": {"name": 3}}}),
            "response_format.json_schema.name",
        ),
        // A tool result must answer a call made earlier: Gemini needs the function's name.
        (
            json!({"model": "gemini", "messages": [user("hi"), {"role": "assistant", "tool_calls": [call("a", "{}")]},
                {"role": "tool", "tool_call_id": "b", "content": "15C"}]}),
            "messages[2].tool_call_id",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi"), {"role": "assistant", "tool_calls": [call("a", "{}")]},
                {"role": "tool", "content": "15C"}]}),
            "messages[2].tool_call_id",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi"), {"role": "assistant", "tool_calls": [call("a", "{}")]},
                {"role": "tool", "tool_call_id": "a", "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
            "messages[2].content[0].type",
        ),
        (
            json!({"model": "gemini", "messages": [{"role": "system", "content": "be nice"}]}),
            "messages",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi"), {"role": "function", "name": "f", "content": "x"}]}),
            "messages[1].role",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
            "tool_choice",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "tools": [weather_tool()], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "tools": [weather_tool()],
                "tool_choice": {"type": "allowed_tools"}}),
            "tool_choice.type",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "tools": [{"type": "custom", "custom": {"name": "x"}}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")], "tools": [{"type": "function"}]}),
            "tools[0].function",
        ),
        (
            json!({"model": "gemini", "messages": [user("hi")],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": "none"}}]}),
            "tools[0].function.parameters",
        ),
        // Images Gemini cannot be sent.
        (
            json!({"model": "gemini", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]}),
            "messages[0].content[1].image_url.url",
        ),
        (
            json!({"model": "gemini", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/render?id=7"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"model": "gemini", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"model": "gemini", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "gemini", "messages": [{"role": "system", "content": [
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
}

#[test]
fn requests_gemini_takes_as_they_are_pass() {
    for body in [
        json!({"model": "gemini", "messages": [user("hi")], "temperature": 2.0, "n": 1}),
        json!({"model": "gemini", "messages": [user("hi")], "response_format": {"type": "text"}}),
        json!({"model": "gemini", "messages": [user("hi")], "parallel_tool_calls": false, "tools": [weather_tool()]}),
        json!({"model": "gemini", "messages": [user("hi"), {"role": "assistant", "tool_calls": [call("a", "  ")]}]}),
    ] {
        let plan = plan_chat_request(&state(), body.to_string().as_bytes(), &CONTEXT);
        assert!(plan.is_ok(), "{body}: {:?}", plan.err());
    }
    // Without tools, "none" and "auto" have nothing to act on.
    for choice in ["none", "auto"] {
        let plan = plan_chat_request(
            &state(),
            json!({"model": "gemini", "messages": [user("hi")], "tool_choice": choice})
                .to_string()
                .as_bytes(),
            &CONTEXT,
        )
        .unwrap();
        let sent = json(&plan.body);
        assert!(
            sent.get("toolConfig").is_none() && sent.get("tools").is_none(),
            "{sent}"
        );
    }
}

#[test]
fn the_client_sees_one_error_after_a_stream_fails() {
    let request = json!({"model": "gemini", "stream": true, "messages": [user("hi")]}).to_string();
    let (output, usage, _) = run_stream(
        None,
        request.as_bytes(),
        &[b"data: {oops}\n\n", b"data: {}\n\n"],
        true,
    );
    let events = data_events(&output);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["error"]["code"], "bad_upstream_response");
    assert!(!usage.is_reported());
}
