//! Golden cases for the Cohere v2 chat translation: `fixtures/cohere/<case>/`, one `#[test]`
//! each.
//!
//! Every case runs through the public API (snapshot → `State` → `plan_chat_request` →
//! `ResponseHandler`) with a fixed clock. Files of a case:
//!
//! - `request.json`: the client's OpenAI request (required);
//! - `upstream_request.json`: the Cohere body the gateway must send (compared as JSON);
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
//! a tool plan, a tool call or the end of the message must have added to it (nothing waits for
//! the end).
//!
//! `UPDATE_GOLDEN=1 cargo test -p tollgate-core --test golden_cohere` rewrites the expected
//! files from the current output; the committed files were checked by hand against Cohere's
//! v2 Chat API reference (cohere-openapi.yaml: `/v2/chat`, its stream events and error
//! responses) and OpenAI's documentation, so review any diff it makes.

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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cohere")
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
        provider: proto::ProviderKind::Cohere as i32,
        provider_name: provider_name.into(),
        upstream_model: upstream_model.into(),
        api_base: api_base.into(),
        api_key: api_key.into(),
        pricing,
        ..Default::default()
    }
}

/// `cohere` (LiteLLM's `cohere/`): Cohere's base and a key, priced as the case's
/// `pricing.json` says (not priced without one). `cohere-proxied` (`cohere_chat/`): no key and
/// a base that already ends in `/v2`.
fn state_priced(pricing: Option<proto::Pricing>) -> State {
    let snapshot = proto::Snapshot {
        keys: Vec::new(),
        version: 1,
        settings: None,
        deployments: vec![
            deployment(
                "cohere",
                "cohere",
                "command-a-03-2025",
                "https://api.cohere.com",
                "co-test-key",
                pricing,
            ),
            deployment(
                "cohere-proxied",
                "cohere_chat",
                "command-r-plus-08-2024",
                "http://127.0.0.1:8080/cohere/v2",
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

/// Runs a provider stream through a fresh plan for a `cohere` priced with `pricing`, fed in
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
            ChunkOutput::Unchanged => panic!("Cohere streams are always rewritten"),
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
        let carries_text = contains(event, b"\"text\":\"") && !contains(event, b"\"text\":\"\"");
        let carries_plan =
            contains(event, b"\"tool_plan\":\"") && !contains(event, b"\"tool_plan\":\"\"");
        let starts_a_call = contains(event, b"\"type\":\"tool-call-start\"");
        let ends = contains(event, b"\"type\":\"message-end\"");
        if index == 0 || carries_text || carries_plan || starts_a_call || ends {
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
    let stream = json(&request)["stream"] == true;
    let model = json(&request)["model"].as_str().unwrap().to_string();
    let (base, upstream_model) = match model.as_str() {
        "cohere" => {
            assert_eq!(headers["authorization"], "Bearer co-test-key");
            ("", "command-a-03-2025")
        }
        _ => {
            assert!(!headers.contains_key("authorization"));
            ("/cohere", "command-r-plus-08-2024")
        }
    };
    assert_eq!(plan.path, format!("{base}/v2/chat"));
    let sent = json(&plan.body);
    assert_eq!(sent["model"], upstream_model);
    // Cohere streams when the body says so; a buffered request says nothing.
    assert_eq!(sent.get("stream").cloned(), stream.then_some(json!(true)));
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
        .unwrap_or_else(|| panic!("{name}: Cohere bodies are always rewritten"));
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
    tool_choice_required,
    tool_choice_none,
    tool_choice_named,
    tool_results,
    parallel_tool_calls,
    images,
    stop_and_params,
    json_object,
    json_schema,
    finish_stop_sequence,
    finish_max_tokens,
    finish_timeout,
    finish_error,
    usage_tokens_only,
    error_400,
    error_401,
    error_402,
    error_403,
    error_404,
    error_422,
    error_429,
    error_498,
    error_499,
    error_500,
    error_non_json,
    bad_upstream_body,
    stream_text,
    stream_usage,
    stream_priced_usage,
    stream_tool_calls,
    stream_thinking,
    stream_max_tokens,
    stream_error,
    stream_cut,
);

fn error_of(body: Value) -> GatewayError {
    plan_chat_request(&state(), body.to_string().as_bytes(), &CONTEXT)
        .err()
        .unwrap_or_else(|| panic!("accepted: {body}"))
}

fn sent(body: Value) -> Value {
    let plan = plan_chat_request(&state(), body.to_string().as_bytes(), &CONTEXT)
        .unwrap_or_else(|error| panic!("{body}: {error}"));
    json(&plan.body)
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}})
}

#[test]
fn bad_requests_are_400_naming_the_field() {
    let cases = [
        (
            json!({"model": "cohere", "messages": [user("hi")], "n": 2}),
            "n",
        ),
        (
            json!({"model": "cohere", "messages": [{"role": "system", "content": ""},
                {"role": "assistant", "content": [{"type": "text", "text": ""}]}]}),
            "messages",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "functions": [{"name": "f"}]}),
            "functions",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "seed": -1}),
            "seed",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "seed": "x"}),
            "seed",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "frequency_penalty": "x"}),
            "frequency_penalty",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi"), {"role": "tool", "content": "15C"}]}),
            "messages[1].tool_call_id",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi"), {"role": "tool", "tool_call_id": "a", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
            "messages[1].content[0].type",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi"), {"role": "function", "name": "f", "content": "x"}]}),
            "messages[1].role",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi"), {"role": "assistant", "tool_calls": [
                {"id": "a", "type": "custom", "function": {"name": "f"}}]}]}),
            "messages[1].tool_calls[0].type",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
            "tool_choice",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "tools": [weather_tool()], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "tools": [weather_tool()],
                "tool_choice": {"type": "allowed_tools"}}),
            "tool_choice.type",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "tools": [weather_tool()],
                "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
            "tool_choice.function.name",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "tools": [{"type": "custom", "custom": {"name": "x"}}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")], "tools": [{"type": "function"}]}),
            "tools[0].function",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi")],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": "none"}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"model": "cohere", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "cohere", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content[0].image_url",
        ),
        (
            json!({"model": "cohere", "messages": [{"role": "system", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}, user("hi")]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "cohere", "messages": [user("hi"), {"role": "assistant", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
            "messages[1].content[0].type",
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
fn requests_cohere_takes_as_they_are_pass() {
    for body in [
        json!({"model": "cohere", "messages": [user("hi")], "n": 1, "user": "u1"}),
        json!({"model": "cohere", "messages": [user("hi")], "response_format": {"type": "text"}}),
        json!({"model": "cohere", "messages": [user("hi")], "parallel_tool_calls": false, "tools": [weather_tool()]}),
    ] {
        let sent = sent(body.clone());
        for openai_only in ["n", "user", "parallel_tool_calls", "response_format"] {
            assert!(sent.get(openai_only).is_none(), "{body}: {sent}");
        }
    }
    // Without tools, "none" and "auto" have nothing to act on.
    for choice in ["none", "auto"] {
        let sent =
            sent(json!({"model": "cohere", "messages": [user("hi")], "tool_choice": choice}));
        assert!(
            sent.get("tool_choice").is_none() && sent.get("tools").is_none(),
            "{sent}"
        );
    }
    // "auto" with tools is Cohere's default: no tool_choice.
    let sent_auto = sent(
        json!({"model": "cohere", "messages": [user("hi")], "tools": [weather_tool()], "tool_choice": "auto"}),
    );
    assert!(sent_auto.get("tool_choice").is_none(), "{sent_auto}");
    // Empty turns say nothing: an empty assistant message is left out, an empty user message
    // and an empty tool result are sent empty (Cohere requires their content).
    let sent_empty = sent(json!({"model": "cohere", "messages": [
        {"role": "system", "content": ""}, user(""), {"role": "assistant", "content": ""},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c1", "content": ""}]}));
    assert_eq!(
        sent_empty["messages"],
        json!([
            {"role": "user", "content": ""},
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": ""}
        ])
    );
    // top_p is held to the [0.01, 0.99] Cohere takes: OpenAI's 1 (no cut) is Cohere's widest.
    for (top_p, p) in [(1.0, 0.99), (0.0, 0.01), (0.5, 0.5)] {
        let sent = sent(json!({"model": "cohere", "messages": [user("hi")], "top_p": top_p}));
        assert_eq!(sent["p"], p, "{top_p}");
        assert!(sent.get("top_p").is_none());
    }
    // Strict tools: Cohere's one switch is on only when every tool asks for it.
    let strict = |strict: [bool; 2]| {
        let tools: Vec<Value> = strict
            .iter()
            .zip(["a", "b"])
            .map(|(strict, name)| json!({"type": "function", "function": {"name": name, "strict": strict}}))
            .collect();
        sent(json!({"model": "cohere", "messages": [user("hi")], "tools": tools}))
            .get("strict_tools")
            .cloned()
    };
    assert_eq!(strict([true, true]), Some(json!(true)));
    assert_eq!(strict([true, false]), None);
}

#[test]
fn the_client_sees_one_error_after_a_stream_fails() {
    let request = json!({"model": "cohere", "stream": true, "messages": [user("hi")]}).to_string();
    let (output, usage, _) = run_stream(
        None,
        request.as_bytes(),
        &[b"event: content-delta\ndata: {oops}\n\n", b"data: {}\n\n"],
        true,
    );
    let events = data_events(&output);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["error"]["code"], "bad_upstream_response");
    assert!(!usage.is_reported());
}
