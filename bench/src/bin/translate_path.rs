//! Callgrind driver for the filter's translate path, natively (no Envoy, no wasm):
//! `plan_chat_request` + `ResponseHandler::on_headers` + `on_complete_body` (or a 200-chunk
//! stream through `on_stream_chunk`, one SSE event per call), plus what the glue builds per
//! request around them (the upstream header map and the usage record), N times.
//!
//! `translate_path <openai|anthropic> <buffered|stream>[+budget] <N>`
//!
//! `+budget`: the deployment is priced and the caller's key has a budget (and the gateway a
//! global one): each request also has its budgets checked against the spend book, its cost
//! computed, and its record's charges booked, as the filter does for a budgeted key; the key
//! also has rpm and tpm limits far from reached, so each request is admitted by the quota
//! book and settled after.
//!
//! `make bench` runs it under `valgrind --tool=callgrind` twice (N and a smaller N) and
//! reports the difference per request, so setup (snapshot, bodies) is not counted.

use std::hint::black_box;

use anyhow::{bail, Context, Result};
use tollgate_core::auth::Caller;
use tollgate_core::budget::check_budgets;
use tollgate_core::gateway::plan_chat_request;
use tollgate_core::providers::TranslateContext;
use tollgate_core::ratelimit::{estimate_tokens, needs_of, Admission, Limits, QuotaBook};
use tollgate_core::snapshot::{BudgetLimit, VirtualKey};
use tollgate_core::spend::{charges_of, SpendBook};
use tollgate_core::{proto, State};

/// `state` with a global budget far from spent.
fn priced_and_budgeted(mut state: State) -> State {
    state.budgets.global = Some(BudgetLimit {
        max: Some(1e12),
        soft: None,
    });
    state
}

/// A caller whose key has a budget far from spent.
fn budgeted_caller() -> Caller {
    Caller {
        key_hash: "ab".repeat(32),
        key: Some(std::sync::Arc::new(VirtualKey {
            alias: "bench".into(),
            user_id: "bench-user".into(),
            team_id: String::new(),
            models: Vec::new(),
            blocked: false,
            expires_unix_ms: 0,
            budget: Some(BudgetLimit {
                max: Some(1e12),
                soft: Some(1e11),
            }),
            model_budgets: Vec::new(),
            // Far from reached: every request takes from the rpm and tpm counters.
            limits: Some(Limits {
                rpm: Some(1_000_000_000_000),
                tpm: Some(1_000_000_000_000_000),
                parallel: None,
            }),
            model_limits: Vec::new(),
        })),
    }
}

/// Chunks per stream, as the live benchmark's `mock:chunks=200`.
const STREAM_CHUNKS: usize = 200;
/// Deployments in the snapshot, as in the live benchmark.
const DEPLOYMENTS: usize = 1_000;

fn deployment(
    name: &str,
    kind: proto::ProviderKind,
    upstream: &str,
    base: &str,
) -> proto::Deployment {
    proto::Deployment {
        id: format!("config:{name}"),
        model_name: name.to_string(),
        provider: kind as i32,
        provider_name: match kind {
            proto::ProviderKind::Anthropic => "anthropic".to_string(),
            _ => "openai".to_string(),
        },
        upstream_model: upstream.to_string(),
        api_base: base.to_string(),
        api_key: "sk-mock-provider-key".to_string(),
        // OpenAI's gpt-4o prices; `+budget` runs price their answers, the others do not
        // ask (pricing is computed only for a record, or a buffered answer's header).
        pricing: Some(proto::Pricing {
            input_cost_per_token: Some(2.5e-6),
            output_cost_per_token: Some(1e-5),
            cache_read_input_token_cost: Some(1.25e-6),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn state() -> State {
    let mut deployments = vec![
        deployment(
            "gpt-mock",
            proto::ProviderKind::Openai,
            "mock-gpt-4o",
            "http://127.0.0.1:9090/v1",
        ),
        deployment(
            "claude-mock",
            proto::ProviderKind::Anthropic,
            "claude-mock-sonnet",
            "http://127.0.0.1:9090",
        ),
    ];
    for i in 0..DEPLOYMENTS - 2 {
        deployments.push(deployment(
            &format!("bench-model-{i}"),
            proto::ProviderKind::Openai,
            &format!("bench-upstream-{i}"),
            "http://127.0.0.1:9090/v1",
        ));
    }
    let snapshot = proto::Snapshot {
        version: 1,
        deployments,
        ..Default::default()
    };
    State::from_snapshot(snapshot).0
}

/// The ~1 KB chat request of the live benchmark (same generator).
fn request(model: &str, stream: bool) -> Vec<u8> {
    tollgate_bench_body(model, 1024, stream)
}

fn tollgate_bench_body(model: &str, size: usize, stream: bool) -> Vec<u8> {
    // Kept in step with bench/src/main.rs `chat_body` (OpenAI API).
    let directive = if stream {
        "mock:chunks=200"
    } else {
        "mock:chunks=30"
    };
    let system = "You are a helpful assistant. Answer concisely and cite the relevant section of the provided context when you can.";
    let head = format!(
        r#"{{"model":"{model}","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{directive} "#
    );
    let tail = if stream {
        r#""}],"temperature":0.7,"max_tokens":512,"stream":true}"#
    } else {
        r#""}],"temperature":0.7,"max_tokens":512}"#
    };
    let filler_len = size.saturating_sub(head.len() + tail.len());
    let words = "the quick brown fox jumps over the lazy dog while the gateway counts tokens ";
    let filler: String = words.chars().cycle().take(filler_len).collect();
    format!("{head}{filler}{tail}").into_bytes()
}

fn openai_body() -> Vec<u8> {
    let text: Vec<String> = (0..30).map(|i| format!("chunk{i}")).collect();
    format!(
        r#"{{"id":"chatcmpl-mock-1","object":"chat.completion","created":1795321596,"model":"mock-gpt-4o","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":150,"completion_tokens":30,"total_tokens":180,"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_mock"}}"#,
        text.join(" ")
    )
    .into_bytes()
}

fn anthropic_body() -> Vec<u8> {
    let text: Vec<String> = (0..30).map(|i| format!("chunk{i}")).collect();
    format!(
        r#"{{"id":"msg_mock_5","type":"message","role":"assistant","model":"claude-mock-sonnet","content":[{{"type":"text","text":"{}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":150,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":30}}}}"#,
        text.join(" ")
    )
    .into_bytes()
}

/// The mock's OpenAI stream, one SSE event per element.
fn openai_stream() -> Vec<Vec<u8>> {
    let head = r#"data: {"id":"chatcmpl-mock-2","object":"chat.completion.chunk","created":1795321596,"model":"mock-gpt-4o","service_tier":"default","system_fingerprint":"fp_mock","choices":"#;
    let mut events = vec![format!(
        r#"{head}[{{"index":0,"delta":{{"role":"assistant","content":"","refusal":null}},"logprobs":null,"finish_reason":null}}],"usage":null}}

"#
    )];
    for i in 0..STREAM_CHUNKS {
        let space = if i == 0 { "" } else { " " };
        events.push(format!(
            r#"{head}[{{"index":0,"delta":{{"content":"{space}chunk{i}"}},"logprobs":null,"finish_reason":null}}],"usage":null}}

"#
        ));
    }
    events.push(format!(
        r#"{head}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}],"usage":null}}

"#
    ));
    events.push(format!(
        r#"{head}[],"usage":{{"prompt_tokens":150,"completion_tokens":200,"total_tokens":350,"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}}}

"#
    ));
    events.push("data: [DONE]\n\n".to_string());
    events.into_iter().map(String::into_bytes).collect()
}

/// The mock's Anthropic stream, one SSE event per element.
fn anthropic_stream() -> Vec<Vec<u8>> {
    let mut events = vec![
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_mock_6","type":"message","role":"assistant","model":"claude-mock-sonnet","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":150,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}

"#
        .to_string(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
        "event: ping\ndata: {\"type\":\"ping\"}\n\n".to_string(),
    ];
    for i in 0..STREAM_CHUNKS {
        let space = if i == 0 { "" } else { " " };
        events.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{space}chunk{i}\"}}}}\n\n"
        ));
    }
    events.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_string(),
    );
    events.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":200}}\n\n".to_string());
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    events.into_iter().map(String::into_bytes).collect()
}

/// The measured part (callgrind counts only inside this function).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn run_requests(
    state: &State,
    body: &[u8],
    context: &TranslateContext,
    content_type: &str,
    stream: bool,
    response: &[u8],
    events: &[Vec<u8>],
    client_headers: &[(Vec<u8>, Vec<u8>)],
    budget: Option<&Caller>,
    n: usize,
) -> Result<usize> {
    let mut out = Vec::with_capacity(4096);
    let mut bytes_out = 0usize;
    let mut ids = tollgate_core::usage::RecordIds::new(0x5eed);
    let mut book = SpendBook::default();
    // Without a control plane the book counts alone against the whole limit: the same
    // lookups per request as admitting from a lease.
    let mut quota = QuotaBook::new();
    for _ in 0..n {
        let mut plan = plan_chat_request(state, black_box(body), context)
            .map_err(|error| anyhow::anyhow!("plan failed: {error:?}"))
            .context("plan_chat_request")?;
        if let Some(caller) = budget {
            let model = &plan.deployment.model_name;
            check_budgets(state, caller, model, &plan.end_user, |scope, id| {
                book.spend(scope, id, 1)
            })
            .map_err(|error| anyhow::anyhow!("budget refused: {error}"))?;
        }
        let needs = match budget {
            Some(caller) => {
                let needs = needs_of(
                    state,
                    caller,
                    &plan.deployment.model_name,
                    &plan.deployment,
                    estimate_tokens(body.len()),
                );
                match quota.admit(&needs, 1) {
                    Admission::Admitted(headers) => {
                        bytes_out += black_box(headers.headers()).len();
                    }
                    other => anyhow::bail!("rate limits refused: {other:?}"),
                }
                needs
            }
            None => Vec::new(),
        };
        bytes_out += plan.body.len() + plan.path.len() + plan.authority.len();
        plan.response.on_headers(200, Some(content_type));
        if stream {
            let last = events.len() - 1;
            for (i, event) in events.iter().enumerate() {
                out.clear();
                plan.response
                    .on_stream_chunk(black_box(event), i == last, &mut out);
                bytes_out += out.len();
            }
        } else {
            let completed = plan.response.on_complete_body(black_box(response));
            bytes_out += completed.body.map_or(0, |b| b.len());
        }
        // What the glue builds per request: the upstream header map (one host call) and, in
        // on_log, the usage record.
        bytes_out += black_box(plan.upstream_headers(black_box(client_headers))).len();
        let deployment = &plan.deployment;
        let usage = plan.response.usage();
        let record = proto::UsageRecord {
            id: ids.next_id(),
            request_id: "0b4c7a1e-5d6f-4a8b-9c0d-1e2f3a4b5c6d".to_string(),
            model_name: deployment.model_name.clone(),
            deployment_id: deployment.id.clone(),
            provider: deployment.provider_name.clone(),
            status: 200,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_prompt_tokens: usage.cached_prompt_tokens,
            started_unix_ms: 1,
            duration_ms: 1,
            stream,
            key_hash: budget
                .map(|caller| caller.key_hash.clone())
                .unwrap_or_default(),
            cost: plan.cost(),
            ..Default::default()
        };
        if !needs.is_empty() {
            let tokens = usage.prompt_tokens.unwrap_or(0) + usage.completion_tokens.unwrap_or(0);
            quota.settle(&needs, Some(tokens), 1);
        }
        if budget.is_some() {
            // Booked when queued, released when the pushed spend counts it.
            let charges = charges_of(&record);
            book.charge(&charges);
            book.release(&charges);
        }
        bytes_out += black_box(record).model_name.len();
        black_box(&plan);
    }
    Ok(bytes_out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (provider, mode, n) = match args.as_slice() {
        [_, provider, mode, n] => (provider.as_str(), mode.as_str(), n.parse::<usize>()?),
        _ => bail!("usage: translate_path <openai|anthropic> <buffered|stream> <N>"),
    };
    let (mode, budgeted) = match mode.strip_suffix("+budget") {
        Some(mode) => (mode, true),
        None => (mode, false),
    };
    let stream = match mode {
        "buffered" => false,
        "stream" => true,
        _ => bail!("mode must be buffered or stream, with or without +budget"),
    };
    let (model, response, events) = match provider {
        "openai" => ("gpt-mock", openai_body(), openai_stream()),
        "anthropic" => ("claude-mock", anthropic_body(), anthropic_stream()),
        _ => bail!("provider must be openai or anthropic"),
    };
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut state = state();
    if budgeted {
        state = priced_and_budgeted(state);
    }
    let body = request(model, stream);
    let context = TranslateContext {
        now_unix: 1_795_321_596,
    };
    // What a client sends through the gateway (Envoy adds x-request-id and the forwarded
    // headers before the filter runs).
    let client_headers: Vec<(Vec<u8>, Vec<u8>)> = [
        (":authority", "127.0.0.1:4000"),
        (":path", "/v1/chat/completions"),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("authorization", "Bearer sk-bench-master"),
        ("content-length", "1024"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "0b4c7a1e-5d6f-4a8b-9c0d-1e2f3a4b5c6d"),
    ]
    .into_iter()
    .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
    .collect();
    let budget = budgeted.then(budgeted_caller);
    let bytes_out = run_requests(
        &state,
        &body,
        &context,
        content_type,
        stream,
        &response,
        &events,
        &client_headers,
        budget.as_ref(),
        n,
    )?;
    println!("{provider} {mode} x{n}: {bytes_out} bytes out");
    Ok(())
}
