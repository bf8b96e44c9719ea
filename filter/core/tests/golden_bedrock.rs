//! Golden cases for the Bedrock Converse translation: `fixtures/bedrock/<case>/`, one
//! `#[test]` each.
//!
//! Every case runs through the public API (snapshot → `State` → `plan_chat_request` →
//! `ResponseHandler`) with a fixed clock, so the SigV4 headers are fixed too. Files of a case:
//!
//! - `request.json`: the client's OpenAI request (required);
//! - `upstream_request.json`: the Converse body the gateway must send (compared as JSON);
//! - `upstream_headers.json` (optional): `{"path", "headers"}` the gateway must send, the
//!   signature included (the values in the committed files were computed apart from the
//!   gateway, with Python's `hmac`, from the exact body the case sends);
//! - the provider's answer, at most one of `response.json`, `response.txt` (non-JSON body) or
//!   `response.events.json` (an event stream, as a list of frames
//!   `{"event": "<:event-type>", "payload": {...}}` or `{"exception": "<:exception-type>",
//!   "payload": {...}}`, encoded into binary frames by this test; `"corrupt": true` flips a
//!   payload byte after the checksum is computed), with its HTTP status in `status`
//!   (default 200);
//! - what the client must get: `expected_response.json` (with `expected_status` when the
//!   gateway replaces the provider's status) or `expected_response.sse`
//!   (compared as the sequence of `data:` events, JSON payloads compared as JSON);
//! - `usage.json`: the usage the gateway must record;
//! - `pricing.json` and `expected_cost` (optional): the deployment's prices and the cost the
//!   usage chunk must carry.
//!
//! Streams are also fed with a separate empty end-of-stream chunk, split in two at every byte
//! boundary, and one byte at a time: the output must be byte for byte the same. At every frame
//! boundary the output so far must be a prefix of the final output, and a frame with text or a
//! tool call must have added to it (nothing waits for the end).
//!
//! `UPDATE_GOLDEN=1 cargo test -p tollgate-core --test golden_bedrock` rewrites the expected
//! files from the current output (the signature headers too: check them again with an
//! independent signer); the committed files were written and checked by hand against
//! Bedrock's Converse API reference and OpenAI's documentation, so review any diff it makes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod golden;

use std::path::{Path, PathBuf};

use golden::*;
use serde_json::{json, Value};
use tollgate_core::aws::eventstream::crc32;
use tollgate_core::gateway::plan_chat_request;
use tollgate_core::providers::{ChunkOutput, ResponseMode};
use tollgate_core::{proto, GatewayError, State, Usage};

/// 2023-11-14T22:13:20Z.
/// AWS's documentation example key pair.
const ACCESS_KEY_ID: &str = "AKIDEXAMPLE";
const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const SESSION_ACCESS_KEY_ID: &str = "ASIAEXAMPLETEMP";
const SESSION_SECRET: &str = "temporary/secret+key";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLETOKEN//session==";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bedrock")
}

fn deployment(
    model_name: &str,
    upstream_model: &str,
    region: &str,
    credentials: proto::AwsCredentials,
    pricing: Option<proto::Pricing>,
) -> proto::Deployment {
    proto::Deployment {
        id: format!("id-{model_name}"),
        model_name: model_name.into(),
        provider: proto::ProviderKind::Bedrock as i32,
        provider_name: "bedrock".into(),
        upstream_model: upstream_model.into(),
        api_base: format!("https://bedrock-runtime.{region}.amazonaws.com"),
        pricing,
        provider_settings: Some(proto::deployment::ProviderSettings::Bedrock(
            proto::BedrockSettings {
                region: region.into(),
                credentials: Some(credentials),
            },
        )),
        ..Default::default()
    }
}

/// `bedrock`: Claude 3.5 Sonnet in us-east-1 with a long-term key, priced as the case's
/// `pricing.json` says (not priced without one). `bedrock-temporary`: Nova Pro through a US
/// inference profile in eu-west-1, with temporary credentials (a session token).
fn state_priced(pricing: Option<proto::Pricing>) -> State {
    let snapshot = proto::Snapshot {
        keys: Vec::new(),
        version: 1,
        settings: None,
        deployments: vec![
            deployment(
                "bedrock",
                "anthropic.claude-3-5-sonnet-20240620-v1:0",
                "us-east-1",
                proto::AwsCredentials {
                    access_key_id: ACCESS_KEY_ID.into(),
                    secret_access_key: SECRET_ACCESS_KEY.into(),
                    session_token: String::new(),
                },
                pricing,
            ),
            deployment(
                "bedrock-temporary",
                "us.amazon.nova-pro-v1:0",
                "eu-west-1",
                proto::AwsCredentials {
                    access_key_id: SESSION_ACCESS_KEY_ID.into(),
                    secret_access_key: SESSION_SECRET.into(),
                    session_token: SESSION_TOKEN.into(),
                },
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

/// One event stream message with string headers (type 7), as Bedrock frames it.
fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::new();
    for (name, value) in headers {
        encoded.push(u8::try_from(name.len()).unwrap());
        encoded.extend_from_slice(name.as_bytes());
        encoded.push(7);
        encoded.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        encoded.extend_from_slice(value.as_bytes());
    }
    let total = u32::try_from(16 + encoded.len() + payload.len()).unwrap();
    let mut message = Vec::new();
    message.extend_from_slice(&total.to_be_bytes());
    message.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    let prelude_crc = crc32(&message);
    message.extend_from_slice(&prelude_crc.to_be_bytes());
    message.extend_from_slice(&encoded);
    message.extend_from_slice(payload);
    let message_crc = crc32(&message);
    message.extend_from_slice(&message_crc.to_be_bytes());
    message
}

/// The binary stream of a case's `response.events.json`, and where each frame ends.
fn encode_events(events: &Value) -> (Vec<u8>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for event in events.as_array().expect("a list of frames") {
        let payload = serde_json::to_vec(&event["payload"]).unwrap();
        let mut bytes = if let Some(name) = event["event"].as_str() {
            frame(
                &[
                    (":event-type", name),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ],
                &payload,
            )
        } else if let Some(name) = event["exception"].as_str() {
            frame(
                &[
                    (":exception-type", name),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                &payload,
            )
        } else {
            panic!("a frame is an event or an exception: {event}");
        };
        if event["corrupt"] == true {
            // A byte of the payload changes after the checksums were computed.
            let at = bytes.len() - 6;
            bytes[at] ^= 0x20;
        }
        stream.extend_from_slice(&bytes);
        ends.push(stream.len());
    }
    (stream, ends)
}

/// Runs a provider stream through a fresh plan for a `bedrock` priced with `pricing`, fed in
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
        plan.response
            .on_headers(200, Some("application/vnd.amazon.eventstream")),
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
            ChunkOutput::Unchanged => panic!("Bedrock streams are always rewritten"),
        }
    }
    (output, plan.response.usage(), plan.cost())
}

fn check_stream(case: &Path, request: &[u8], events: &Value) {
    let (stream, ends) = encode_events(events);
    let prices = pricing(case);
    let (whole, usage, cost) = run_stream(prices, request, &[&stream], true);
    check_cost(case, &whole, cost);
    golden_sse(case, "expected_response.sse", &whole);
    golden_json(case, "usage.json", &usage_json(usage));

    let (output, separate_end, _) = run_stream(prices, request, &[&stream, b""], true);
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

    // Translation is incremental: once a frame is complete, its output is out.
    let mut previous = 0;
    for (event, end) in events.as_array().unwrap().iter().zip(ends) {
        let (so_far, _, _) = run_stream(prices, request, &[&stream[..end]], false);
        assert!(
            whole.starts_with(&so_far),
            "output up to byte {end} is not a prefix of the final output"
        );
        let delta = &event["payload"]["delta"];
        let carries = delta["text"].as_str().is_some_and(|text| !text.is_empty())
            || delta["toolUse"]["input"]
                .as_str()
                .is_some_and(|input| !input.is_empty())
            || event["payload"]["start"]["toolUse"].is_object()
            || event["exception"].is_string();
        // Frames after the one that ended the stream (an exception, a corrupt frame) add
        // nothing.
        let ended = previous == whole.len();
        if carries && !ended {
            assert!(
                so_far.len() > previous,
                "frame ending at byte {end} held back"
            );
        }
        previous = so_far.len();
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
    assert_eq!(
        headers["accept"],
        if stream {
            "application/vnd.amazon.eventstream"
        } else {
            "application/json"
        }
    );
    assert_eq!(headers["x-amz-date"], "20231114T221320Z");
    let authorization = headers["authorization"].as_str().unwrap();
    let model = json(&request)["model"].as_str().unwrap().to_string();
    let (key_id, scope, upstream_model, token) = match model.as_str() {
        "bedrock" => (
            ACCESS_KEY_ID,
            "20231114/us-east-1/bedrock/aws4_request",
            "anthropic.claude-3-5-sonnet-20240620-v1%3A0",
            None,
        ),
        _ => (
            SESSION_ACCESS_KEY_ID,
            "20231114/eu-west-1/bedrock/aws4_request",
            "us.amazon.nova-pro-v1%3A0",
            Some(SESSION_TOKEN),
        ),
    };
    let signed = if token.is_some() {
        "content-type;host;x-amz-date;x-amz-security-token"
    } else {
        "content-type;host;x-amz-date"
    };
    assert!(
        authorization.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={signed}, Signature="
        )),
        "{authorization}"
    );
    assert_eq!(
        headers.get("x-amz-security-token").and_then(Value::as_str),
        token
    );
    assert!(!headers.contains_key("x-api-key"));
    let endpoint = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    assert_eq!(plan.path, format!("/model/{upstream_model}/{endpoint}"));
    if case.join("upstream_headers.json").exists() {
        golden_json(
            &case,
            "upstream_headers.json",
            &json!({"path": plan.path, "authority": plan.authority, "headers": headers}),
        );
    }

    if let Some(events) = read(&case, "response.events.json") {
        check_stream(&case, &request, &json(&events));
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
    let client_body = completed
        .body
        .unwrap_or_else(|| panic!("{name}: Bedrock bodies are always rewritten"));
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
    tools,
    tool_results,
    parallel_tool_calls,
    tool_choice_required,
    tool_choice_named,
    tool_choice_none,
    images,
    params,
    json_schema,
    cache_usage,
    finish_max_tokens,
    guardrail_intervened,
    temporary_credentials,
    error_400_validation,
    error_400_context_length,
    error_403_signature,
    error_403_unknown_key,
    error_403_access_denied,
    error_404_model,
    error_429_throttling,
    error_500,
    error_503,
    error_non_json,
    bad_upstream_body,
    stream_text,
    stream_tool_calls,
    stream_usage,
    stream_priced_usage,
    stream_exception,
    stream_validation_exception,
    stream_corrupt_frame,
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
            json!({"model": "bedrock", "messages": [user("hi"),
                {"role": "assistant", "tool_calls": [call("a", "{}"), call("b", "{\"city\": ")]}]}),
            "messages[1].tool_calls[1].function.arguments",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi")], "n": 2}),
            "n",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi")], "functions": [{"name": "f"}]}),
            "functions",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi")], "response_format": {"type": "json_object"}}),
            "response_format.type",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi")], "response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi")], "response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi")],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format.json_schema.schema",
        ),
        // Converse fetches no URL.
        (
            json!({"model": "bedrock", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
            "messages[0].content[1].image_url.url",
        ),
        (
            json!({"model": "bedrock", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"model": "bedrock", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
            "messages[0].content[0].type",
        ),
        // Converse wants the conversation to start with the user.
        (
            json!({"model": "bedrock", "messages": [{"role": "system", "content": "be nice"},
                {"role": "assistant", "content": "Hello!"}, user("hi")]}),
            "messages",
        ),
        (
            json!({"model": "bedrock", "messages": [{"role": "system", "content": "be nice"}]}),
            "messages",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi"), {"role": "assistant", "tool_calls": [call("a", "{}")]},
                {"role": "tool", "content": "15C"}]}),
            "messages[2].tool_call_id",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi"), {"role": "function", "name": "f", "content": "x"}]}),
            "messages[1].role",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi")], "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi")], "tools": [weather_tool()], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi")], "tools": [{"type": "custom", "custom": {"name": "x"}}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "bedrock", "messages": [user("hi")],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": "none"}}]}),
            "tools[0].function.parameters",
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
    let http = error_of(
        json!({"model": "bedrock", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]}),
    );
    assert!(
        http.to_string().contains("cannot fetch image URLs"),
        "{http}"
    );
}

/// The signature covers the body: a byte more in the request's text changes it, and a
/// client's own `authorization` or `x-amz-*` headers never reach the provider (the plan sets
/// them, so the glues write the plan's over the client's).
#[test]
fn the_signature_is_the_requests_own() {
    let plan = |text: &str| {
        let body = json!({"model": "bedrock", "messages": [user(text)]}).to_string();
        plan_chat_request(&state(), body.as_bytes(), &CONTEXT).unwrap()
    };
    let header = |plan: &tollgate_core::gateway::RequestPlan, name: &str| {
        plan.headers
            .iter()
            .find(|(set, _)| *set == name)
            .map(|(_, value)| value.clone())
            .unwrap()
    };
    let (a, b) = (plan("hi"), plan("hi!"));
    assert_ne!(header(&a, "authorization"), header(&b, "authorization"));
    assert_eq!(header(&a, "x-amz-date"), header(&b, "x-amz-date"));
    for name in [
        &b"authorization"[..],
        b"x-amz-date",
        b"x-amz-security-token",
        b"host",
        b"x-amz-content-sha256",
    ] {
        let client = vec![(name.to_vec(), b"client-value".to_vec())];
        let upstream = a.upstream_headers(&client);
        assert!(
            upstream.iter().all(|(_, value)| *value != b"client-value"),
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    // The Debug output of the plan shows neither the signature nor the secret.
    let printed = format!("{a:?}");
    assert!(!printed.contains(&header(&a, "authorization")), "{printed}");
    assert!(!printed.contains(SECRET_ACCESS_KEY), "{printed}");
}

#[test]
fn the_client_sees_one_error_after_a_stream_fails() {
    let request = json!({"model": "bedrock", "stream": true, "messages": [user("hi")]}).to_string();
    let good = frame(
        &[
            (":event-type", "messageStart"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        br#"{"role":"assistant"}"#,
    );
    let mut broken = good.clone();
    broken[8] ^= 1; // the prelude's checksum
    let (output, usage, _) = run_stream(None, request.as_bytes(), &[&broken, &good], true);
    let events = data_events(&output);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["error"]["code"], "bad_upstream_response");
    assert!(!usage.is_reported());
}

/// The `text` and `temporary_credentials` cases' signatures (in their `upstream_headers.json`)
/// were computed apart from the gateway, with Python's `hashlib` and `hmac`, over these exact
/// bodies: the bytes the gateway sends must be these.
#[test]
fn the_signed_bodies_are_byte_exact() {
    for (name, body) in [
        (
            "text",
            &br#"{"messages":[{"role":"user","content":[{"text":"Hello, who are you?"}]}]}"#[..],
        ),
        (
            "temporary_credentials",
            br#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}]}"#,
        ),
    ] {
        let request = read(&fixtures().join(name), "request.json").unwrap();
        let plan = plan_chat_request(&state(), &request, &CONTEXT).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&plan.body),
            String::from_utf8_lossy(body),
            "{name}"
        );
    }
}

/// The client gets server-sent events, whatever Bedrock's framing: the handler says the
/// stream's content type must be replaced.
#[test]
fn a_bedrock_stream_reaches_the_client_as_server_sent_events() {
    let request = json!({"model": "bedrock", "stream": true, "messages": [user("hi")]}).to_string();
    let mut plan = plan_chat_request(&state(), request.as_bytes(), &CONTEXT).unwrap();
    assert_eq!(
        plan.response
            .on_headers(200, Some("application/vnd.amazon.eventstream")),
        ResponseMode::Stream
    );
    assert!(plan.response.streams_in_another_framing());
    // An error answer (JSON) is buffered and keeps its type.
    let mut plan = plan_chat_request(&state(), request.as_bytes(), &CONTEXT).unwrap();
    assert_eq!(
        plan.response.on_headers(400, Some("application/json")),
        ResponseMode::Buffer
    );
    assert!(!plan.response.streams_in_another_framing());
}
