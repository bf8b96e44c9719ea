//! Golden cases for the legacy text completions endpoint (`POST /v1/completions`):
//! `fixtures/completions/<provider>_<case>/`, one `#[test]` each.
//!
//! Every case runs through the public API (snapshot → `State` → `plan_completion_request` →
//! `ResponseHandler`) with a fixed clock. Deployments: `gpt` (OpenAI, passed through),
//! `azure-instruct` (Azure, passed through), `claude` (Anthropic) and `gemini` (Gemini), both
//! reached through their chat translation. Files of a case:
//!
//! - `request.json`: the client's completions request (required);
//! - `expected_error.json`: `{"status", "body"}` of the gateway's refusal, when it refuses the
//!   request (the case then has nothing else);
//! - `upstream.json`: `{"path", "headers", "body"}` the gateway must send (the body compared
//!   as JSON);
//! - the provider's answer, at most one of `response.json` or `response.sse`, with its HTTP
//!   status in `status` (default 200);
//! - what the client must get: `expected_response.json` (with `expected_status` when the
//!   gateway replaces the provider's status) or `expected_response.sse` (compared as the
//!   sequence of `data:` events, JSON payloads compared as JSON);
//! - `usage.json`: the usage the gateway must record.
//!
//! Streams are also fed with a separate empty end-of-stream chunk, split in two at every
//! byte boundary, and one byte at a time: the output must be byte for byte the same.
//!
//! `UPDATE_GOLDEN=1 cargo test -p tollgate-core --test golden_completions` rewrites the
//! expected files from the current output; review any diff it makes against OpenAI's
//! Completions API reference.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tollgate_core::completions::plan_completion_request;
use tollgate_core::providers::{ChunkOutput, ResponseMode, TranslateContext};
use tollgate_core::{proto, State, Usage};

const CONTEXT: TranslateContext = TranslateContext {
    now_unix: 1_700_000_000,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/completions")
}

fn deployment(
    model_name: &str,
    kind: proto::ProviderKind,
    provider_name: &str,
    upstream_model: &str,
    api_base: &str,
    api_key: &str,
) -> proto::Deployment {
    proto::Deployment {
        id: format!("id-{model_name}"),
        model_name: model_name.into(),
        provider: kind as i32,
        provider_name: provider_name.into(),
        upstream_model: upstream_model.into(),
        api_base: api_base.into(),
        api_key: api_key.into(),
        ..Default::default()
    }
}

fn state() -> State {
    let azure = proto::Deployment {
        provider_settings: Some(proto::deployment::ProviderSettings::Azure(
            proto::AzureSettings {
                api_version: "2024-10-21".into(),
            },
        )),
        ..deployment(
            "azure-instruct",
            proto::ProviderKind::Openai,
            "azure",
            "gpt-35-instruct",
            "https://r.openai.azure.com",
            "azure-key",
        )
    };
    let snapshot = proto::Snapshot {
        keys: Vec::new(),
        version: 1,
        settings: None,
        deployments: vec![
            deployment(
                "gpt",
                proto::ProviderKind::Openai,
                "openai",
                "gpt-3.5-turbo-instruct",
                "https://api.openai.com/v1",
                "sk-openai-test",
            ),
            azure,
            deployment(
                "claude",
                proto::ProviderKind::Anthropic,
                "anthropic",
                "claude-sonnet-4-5-20250929",
                "https://api.anthropic.com",
                "sk-ant-test",
            ),
            deployment(
                "gemini",
                proto::ProviderKind::Gemini,
                "gemini",
                "gemini-2.5-flash",
                "https://generativelanguage.googleapis.com",
                "AIza-test-key",
            ),
        ],
    };
    let (state, problems) = State::from_snapshot(snapshot);
    assert!(problems.is_empty(), "{problems:?}");
    state
}

fn update() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|value| value == "1")
}

fn read(case: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(case.join(name)).ok()
}

fn read_status(case: &Path, name: &str) -> Option<u16> {
    read(case, name).map(|bytes| {
        String::from_utf8_lossy(&bytes)
            .trim()
            .parse()
            .unwrap_or_else(|error| panic!("{}/{name}: {error}", case.display()))
    })
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(bytes)))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

/// Compares `actual` with the case's JSON file, or rewrites the file under UPDATE_GOLDEN=1.
fn golden_json(case: &Path, name: &str, actual: &Value) {
    let path = case.join(name);
    if update() {
        std::fs::write(&path, pretty(actual) + "\n").unwrap();
        return;
    }
    let expected =
        json(&std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display())));
    assert!(
        actual == &expected,
        "{}:\n--- got ---\n{}\n--- expected ---\n{}",
        path.display(),
        pretty(actual),
        pretty(&expected)
    );
}

/// The `data:` payloads of an OpenAI stream, which must consist of nothing but
/// `data: <payload>\n\n` events; JSON payloads are parsed, `[DONE]` is kept as a string.
fn data_events(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).expect("streams are UTF-8");
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "stream does not end with a complete event: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|event| {
            let payload = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!payload.contains('\n'), "multi-line event: {event:?}");
            if payload == "[DONE]" {
                Value::String(payload.into())
            } else {
                json(payload.as_bytes())
            }
        })
        .collect()
}

fn golden_sse(case: &Path, name: &str, actual: &[u8]) {
    let path = case.join(name);
    if update() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected =
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let (actual, expected) = (data_events(actual), data_events(&expected));
    assert!(
        actual == expected,
        "{}:\n--- got ---\n{}\n--- expected ---\n{}",
        path.display(),
        pretty(&Value::Array(actual)),
        pretty(&Value::Array(expected))
    );
}

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
        "cache_creation_tokens": usage.cache_creation_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    })
}

/// Runs a provider stream through a fresh plan, fed in `chunks` (the last one ends the
/// stream); gives what the client got and the usage.
fn run_stream(request: &[u8], chunks: &[&[u8]]) -> (Vec<u8>, Usage) {
    let state = state();
    let mut plan = plan_completion_request(&state, request, &CONTEXT).unwrap();
    assert_eq!(
        plan.response.on_headers(200, Some("text/event-stream")),
        ResponseMode::Stream
    );
    let mut output = Vec::new();
    for (index, chunk) in chunks.iter().enumerate() {
        let mut out = Vec::new();
        let end_of_stream = index + 1 == chunks.len();
        match plan
            .response
            .on_stream_chunk(chunk, end_of_stream, &mut out)
        {
            ChunkOutput::Replaced => output.extend_from_slice(&out),
            ChunkOutput::Unchanged => output.extend_from_slice(chunk),
        }
    }
    (output, plan.response.usage())
}

fn check_stream(case: &Path, request: &[u8], stream: &[u8]) {
    let (whole, usage) = run_stream(request, &[stream]);
    golden_sse(case, "expected_response.sse", &whole);
    golden_json(case, "usage.json", &usage_json(usage));

    let (output, separate_end) = run_stream(request, &[stream, b""]);
    assert_eq!(output, whole, "empty end-of-stream chunk");
    assert_eq!(separate_end, usage, "usage, empty end-of-stream chunk");

    for split in 0..=stream.len() {
        let (output, split_usage) = run_stream(request, &[&stream[..split], &stream[split..]]);
        assert!(
            output == whole,
            "split at {split}:\n{}",
            String::from_utf8_lossy(&output)
        );
        assert_eq!(split_usage, usage, "usage, split at {split}");
    }

    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let (output, byte_usage) = run_stream(request, &bytes);
    assert!(output == whole, "byte by byte");
    assert_eq!(byte_usage, usage, "usage, byte by byte");
}

fn check_case(name: &str) {
    let case = fixtures().join(name);
    let request = read(&case, "request.json").unwrap_or_else(|| panic!("{name}: no request.json"));
    let state = state();
    let planned = plan_completion_request(&state, &request, &CONTEXT);
    let refused = case.join("expected_error.json").exists();
    let plan = match planned {
        Err(error) => {
            assert!(
                refused || update(),
                "{name}: refused, but the case has no expected_error.json: {error}"
            );
            let refusal = json!({"status": error.status(), "body": json(&error.to_json())});
            golden_json(&case, "expected_error.json", &refusal);
            return;
        }
        Ok(plan) => {
            assert!(
                !refused,
                "{name}: accepted, but expected_error.json says refused"
            );
            plan
        }
    };
    let mut headers = serde_json::Map::new();
    for (header, value) in &plan.headers {
        assert!(
            headers
                .insert((*header).to_string(), json!(value))
                .is_none(),
            "header {header} set twice"
        );
    }
    golden_json(
        &case,
        "upstream.json",
        &json!({
            "authority": plan.authority,
            "path": plan.path,
            "headers": headers,
            "body": json(&plan.body),
        }),
    );
    assert_eq!(plan.stream, json(&request)["stream"] == true);

    if let Some(stream) = read(&case, "response.sse") {
        check_stream(&case, &request, &stream);
        return;
    }
    let Some(body) = read(&case, "response.json") else {
        return; // a request-only case
    };
    let status = read_status(&case, "status").unwrap_or(200);
    let mut response = plan.response;
    assert_eq!(
        response.on_headers(status, Some("application/json")),
        ResponseMode::Buffer,
    );
    let completed = response.on_complete_body(&body);
    let expected_status = read_status(&case, "expected_status").unwrap_or(status);
    assert_eq!(
        completed.status.unwrap_or(status),
        expected_status,
        "status"
    );
    // A body the gateway forwards as it came is what the client gets.
    let client_body = completed.body.unwrap_or_else(|| body.clone());
    golden_json(&case, "expected_response.json", &json(&client_body));
    golden_json(&case, "usage.json", &usage_json(response.usage()));
}

/// One test per fixture directory; [`every_fixture_has_its_test`] keeps the list whole.
macro_rules! golden_cases {
    ($($case:ident),* $(,)?) => {
        const CASES: &[&str] = &[$(stringify!($case)),*];
        $(
            #[test]
            fn $case() {
                check_case(stringify!($case));
            }
        )*
    };
}

golden_cases!(
    openai_text,
    openai_stream,
    openai_stream_usage,
    openai_error_404,
    openai_missing_prompt,
    openai_bad_prompt,
    azure_text,
    anthropic_text,
    anthropic_default_max_tokens,
    anthropic_stream,
    anthropic_stream_usage,
    anthropic_error_429,
    anthropic_refuses_prompt_list,
    anthropic_refuses_token_array,
    anthropic_refuses_token_arrays,
    anthropic_refuses_n,
    anthropic_refuses_echo,
    anthropic_refuses_suffix,
    anthropic_refuses_logprobs,
    anthropic_refuses_best_of,
    gemini_text,
    gemini_stream,
    gemini_refuses_prompt_list,
);

#[test]
fn every_fixture_has_its_test() {
    let mut found: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .map(|path| path.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    found.sort();
    let mut listed: Vec<String> = CASES.iter().map(ToString::to_string).collect();
    listed.sort();
    assert_eq!(found, listed);
}
