#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Golden cases for the OpenAI-compatible pass-through: fixtures/openai/<case>/.
//!
//! Each case holds the client's request, the exact upstream body expected, the provider's
//! answer (JSON, text or SSE, with an optional `status`) and what the client must get, plus
//! the usage the gateway must record. Streams are also fed split at every byte boundary and
//! one byte at a time, and must give the same output.

#[macro_use]
mod golden;

use std::path::{Path, PathBuf};

use golden::*;
use tollgate_core::gateway::plan_chat_request;
use tollgate_core::providers::{ChunkOutput, ResponseMode, TranslateContext};
use tollgate_core::{proto, State, Usage};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/openai")
}

/// One OpenAI deployment, `gpt-public`, priced as the case says.
fn state(case: &Path) -> State {
    let snapshot = proto::Snapshot {
        keys: Vec::new(),
        version: 1,
        settings: None,
        deployments: vec![proto::Deployment {
            pricing: pricing(case),
            limits: None,
            provider_settings: None,
            default_params_json: String::new(),
            id: "d1".into(),
            model_name: "gpt-public".into(),
            provider: proto::ProviderKind::Openai as i32,
            provider_name: "openai".into(),
            upstream_model: "gpt-4o-2024-08-06".into(),
            api_base: "https://api.openai.com/v1".into(),
            api_key: "sk-provider".into(),
            default_max_tokens: 0,
            api_version: String::new(),
            ..Default::default()
        }],
    };
    State::from_snapshot(snapshot).0
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

fn data_events(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

fn expected_usage(case: &Path) -> Option<Usage> {
    let value = json(&read(case, "usage.json")?);
    Some(Usage {
        prompt_tokens: value["prompt_tokens"].as_u64(),
        completion_tokens: value["completion_tokens"].as_u64(),
        cached_prompt_tokens: value["cached_prompt_tokens"].as_u64(),
        cache_creation_tokens: value["cache_creation_tokens"].as_u64(),
        reasoning_tokens: value["reasoning_tokens"].as_u64(),
    })
}

/// Runs a stream through a fresh plan, fed in the given chunks; gives the output, the usage
/// and the cost the usage record gets.
fn run_stream(case: &Path, request: &[u8], chunks: &[&[u8]]) -> (Vec<u8>, Usage, Option<f64>) {
    let state = state(case);
    let mut plan = plan_chat_request(
        &state,
        request,
        &TranslateContext {
            now_unix: 1_700_000_000,
        },
    )
    .unwrap();
    assert_eq!(
        plan.response
            .on_headers(200, Some("text/event-stream; charset=utf-8")),
        ResponseMode::Stream
    );
    let mut output = Vec::new();
    for (index, chunk) in chunks.iter().enumerate() {
        let mut out = Vec::new();
        match plan
            .response
            .on_stream_chunk(chunk, index + 1 == chunks.len(), &mut out)
        {
            ChunkOutput::Unchanged => output.extend_from_slice(chunk),
            ChunkOutput::Replaced => output.extend_from_slice(&out),
        }
    }
    (output, plan.response.usage(), plan.cost())
}

fn check_case(case: &Path) {
    let name = case.file_name().unwrap().to_string_lossy().to_string();
    let request = read(case, "request.json").unwrap();
    let state = state(case);
    let mut plan = plan_chat_request(
        &state,
        &request,
        &TranslateContext {
            now_unix: 1_700_000_000,
        },
    )
    .unwrap();
    assert_eq!(plan.path, "/v1/chat/completions", "{name}");
    assert_eq!(plan.authority, "api.openai.com", "{name}");
    assert_eq!(plan.route_value, "https", "{name}");
    assert!(
        plan.headers
            .contains(&("authorization", "Bearer sk-provider".into())),
        "{name}"
    );

    let expected_upstream = read(case, "upstream_request.json").unwrap();
    assert_eq!(
        json(&plan.body),
        json(&expected_upstream),
        "{name}: upstream body"
    );
    let request_summary = json(&request);
    let forced_usage = request_summary["stream"] == true
        && request_summary["stream_options"]["include_usage"] != true;
    if !forced_usage {
        // Only the model may change, byte for byte.
        assert_eq!(
            String::from_utf8_lossy(&plan.body),
            String::from_utf8_lossy(&expected_upstream),
            "{name}: bytes"
        );
    }

    let status: u16 =
        read(case, "status").map_or(200, |s| String::from_utf8_lossy(&s).trim().parse().unwrap());
    if let Some(stream) = read(case, "response.sse") {
        let expected = read(case, "expected_response.sse").unwrap();
        let (whole, usage, cost) = run_stream(case, &request, &[&stream]);
        assert_eq!(
            data_events(&whole),
            data_events(&expected),
            "{name}: stream"
        );
        assert_eq!(Some(usage), expected_usage(case), "{name}: usage");
        check_cost(case, &name, &whole, cost);
        for event in data_events(&whole) {
            if event != "[DONE]" {
                json(event.as_bytes());
            }
        }
        for split in 0..=stream.len() {
            let (output, split_usage, _) =
                run_stream(case, &request, &[&stream[..split], &stream[split..]]);
            assert_eq!(
                data_events(&output),
                data_events(&expected),
                "{name}: split at {split}"
            );
            assert_eq!(split_usage, usage, "{name}: usage, split at {split}");
            // Events are forwarded as they came, so where the chunks split changes nothing.
            assert!(output == whole, "{name}: bytes, split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (output, _, _) = run_stream(case, &request, &bytes);
        assert!(output == whole, "{name}: bytes, byte by byte");
        assert_eq!(
            data_events(&output),
            data_events(&expected),
            "{name}: byte by byte"
        );
        return;
    }

    let response = read(case, "response.json")
        .or_else(|| read(case, "response.txt"))
        .unwrap();
    let content_type = if read(case, "response.txt").is_some() {
        "text/html"
    } else {
        "application/json"
    };
    assert_eq!(
        plan.response.on_headers(status, Some(content_type)),
        ResponseMode::Buffer,
        "{name}"
    );
    let completed = plan.response.on_complete_body(&response);
    assert_eq!(
        completed.status, None,
        "{name}: the provider's status stays"
    );
    let client_body = completed.body.unwrap_or_else(|| response.clone());
    assert_eq!(
        json(&client_body),
        json(&read(case, "expected_response.json").unwrap()),
        "{name}: response"
    );
    if let Some(usage) = expected_usage(case) {
        assert_eq!(plan.response.usage(), usage, "{name}: usage");
    } else {
        assert!(
            !plan.response.usage().is_reported(),
            "{name}: no usage on errors"
        );
    }
    assert_eq!(
        plan.response.drops_content_length(),
        status >= 400,
        "{name}: content-length kept for pass-through"
    );
}

fn check_named(name: &str) {
    check_case(&fixtures().join(name));
}

golden_cases!(
    fixtures = fixtures,
    check = check_named;
    error_504_timeout,
    error_azure_content_filter,
    error_context_length,
    error_fastapi_detail,
    error_openai,
    error_plain,
    error_string,
    error_vllm_top_level,
    stream_client_usage,
    stream_forced_usage,
    stream_priced_forced,
    stream_priced_usage,
    text,
    tools_and_images,
);
