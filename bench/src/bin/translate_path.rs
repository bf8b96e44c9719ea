//! Callgrind driver for the filter's translate path, natively (no Envoy, no wasm):
//! `plan_chat_request` + `ResponseHandler::on_headers` + `on_complete_body` (or a 200-chunk
//! stream through `on_stream_chunk`, one SSE event per call), plus what the glue builds per
//! request around them (the upstream header map and the usage record), N times.
//!
//! `translate_path <openai|anthropic|gemini|bedrock> <buffered|stream>[+budget] <N>`
//!
//! Each provider gets the answer the mock (tests/mock) sends for the same request, byte for
//! byte in shape: OpenAI's and Anthropic's SSE events, Gemini's (`data: <response>` ended by
//! CRLF pairs, each event a whole `GenerateContentResponse` with the usage so far) and
//! Bedrock's ConverseStream as AWS event stream frames (binary, CRC32-checked, one frame per
//! call). The Bedrock plan also signs each request with SigV4, as the filter does.
//!
//! `+budget`: the deployment is priced and the caller's key has a budget (and the gateway a
//! global one): each request also has its budgets checked against the spend book, its cost
//! computed, and its record's charges booked, as the filter does for a budgeted key; the key
//! also has rpm and tpm limits far from reached, so each request is admitted by the quota
//! book and settled after.
//!
//! `make bench` runs it under `valgrind --tool=callgrind`, counting only inside the request
//! loop (`--toggle-collect`), so setup (snapshot, bodies) is not counted. After the loop, one
//! more request is checked (outside the counted part): the translated answer holds the last
//! chunk and the provider's token counts, so a malformed fixture cannot measure an error
//! path instead of the translation.

use std::hint::black_box;

use anyhow::{bail, Context, Result};
use tollgate_core::auth::Caller;
use tollgate_core::aws::eventstream::crc32;
use tollgate_core::budget::check_budgets;
use tollgate_core::gateway::plan_chat_request;
use tollgate_core::providers::{ChunkOutput, TranslateContext};
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

/// The AWS key the Bedrock deployment signs with (the live benchmark's mock accepts it).
const AWS_ACCESS_KEY_ID: &str = "AKIDBENCHMOCK";
const AWS_SECRET_ACCESS_KEY: &str = "bench-mock-secret-access-key";
/// Upstream model ids, as the live benchmark's config names them.
const GEMINI_MODEL: &str = "gemini-2.5-flash";
const BEDROCK_MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

fn deployment(
    name: &str,
    kind: proto::ProviderKind,
    upstream: &str,
    base: &str,
) -> proto::Deployment {
    let (provider_name, api_key, provider_settings) = match kind {
        proto::ProviderKind::Anthropic => ("anthropic", "sk-mock-provider-key", None),
        proto::ProviderKind::Gemini => ("gemini", "sk-mock-gemini", None),
        // Bedrock takes no key: each request is signed with SigV4.
        proto::ProviderKind::Bedrock => (
            "bedrock",
            "",
            Some(proto::deployment::ProviderSettings::Bedrock(
                proto::BedrockSettings {
                    region: "us-east-1".to_string(),
                    credentials: Some(proto::AwsCredentials {
                        access_key_id: AWS_ACCESS_KEY_ID.to_string(),
                        secret_access_key: AWS_SECRET_ACCESS_KEY.to_string(),
                        session_token: String::new(),
                    }),
                },
            )),
        ),
        _ => ("openai", "sk-mock-provider-key", None),
    };
    proto::Deployment {
        id: format!("config:{name}"),
        model_name: name.to_string(),
        provider: kind as i32,
        provider_name: provider_name.to_string(),
        upstream_model: upstream.to_string(),
        api_base: base.to_string(),
        api_key: api_key.to_string(),
        // OpenAI's gpt-4o prices; `+budget` runs price their answers, the others do not
        // ask (pricing is computed only for a record, or a buffered answer's header).
        pricing: Some(proto::Pricing {
            input_cost_per_token: Some(2.5e-6),
            output_cost_per_token: Some(1e-5),
            cache_read_input_token_cost: Some(1.25e-6),
            ..Default::default()
        }),
        provider_settings,
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
        deployment(
            "gemini-mock",
            proto::ProviderKind::Gemini,
            GEMINI_MODEL,
            "http://127.0.0.1:9090",
        ),
        deployment(
            "bedrock-mock",
            proto::ProviderKind::Bedrock,
            BEDROCK_MODEL,
            "http://127.0.0.1:9090",
        ),
    ];
    let named = deployments.len();
    for i in 0..DEPLOYMENTS - named {
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

/// The words of the buffered answers (`mock:chunks=30`), joined as the mock joins them.
fn buffered_text() -> String {
    let text: Vec<String> = (0..30).map(|i| format!("chunk{i}")).collect();
    text.join(" ")
}

/// The stream's pieces (`mock:chunks=200`): each word after the first carries its space.
fn stream_pieces() -> Vec<String> {
    (0..STREAM_CHUNKS)
        .map(|i| {
            if i == 0 {
                "chunk0".to_string()
            } else {
                format!(" chunk{i}")
            }
        })
        .collect()
}

/// Gemini's `usageMetadata` as the mock writes it (its members sorted, as every object the
/// mock's serde_json writes).
fn gemini_usage(candidates: usize) -> String {
    format!(
        r#"{{"candidatesTokenCount":{candidates},"promptTokenCount":150,"promptTokensDetails":[{{"modality":"TEXT","tokenCount":150}}],"totalTokenCount":{}}}"#,
        150 + candidates
    )
}

/// The mock's buffered Gemini answer (Gemini pretty-prints buffered answers).
fn gemini_body() -> Vec<u8> {
    format!(
        r#"{{
  "candidates": [
    {{
      "content": {{
        "parts": [
          {{
            "text": "{}"
          }}
        ],
        "role": "model"
      }},
      "finishReason": "STOP",
      "index": 0
    }}
  ],
  "modelVersion": "{GEMINI_MODEL}",
  "responseId": "mock-resp-7",
  "usageMetadata": {{
    "candidatesTokenCount": 30,
    "promptTokenCount": 150,
    "promptTokensDetails": [
      {{
        "modality": "TEXT",
        "tokenCount": 150
      }}
    ],
    "totalTokenCount": 180
  }}
}}"#,
        buffered_text()
    )
    .into_bytes()
}

/// The mock's Gemini stream (`alt=sse`), one event per element: each a whole
/// `GenerateContentResponse` with the usage so far, the finish reason on the last, every
/// event ended by a CRLF pair as Gemini ends them.
fn gemini_stream() -> Vec<Vec<u8>> {
    let pieces = stream_pieces();
    let last = pieces.len() - 1;
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let finish = if i == last {
                r#","finishReason":"STOP""#
            } else {
                ""
            };
            format!(
                "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{piece}\"}}],\"role\":\"model\"}}{finish},\"index\":0}}],\"modelVersion\":\"{GEMINI_MODEL}\",\"responseId\":\"mock-resp-8\",\"usageMetadata\":{}}}\r\n\r\n",
                gemini_usage(i + 1)
            )
            .into_bytes()
        })
        .collect()
}

/// The mock's buffered Bedrock Converse answer.
fn bedrock_body() -> Vec<u8> {
    format!(
        r#"{{"metrics":{{"latencyMs":1}},"output":{{"message":{{"content":[{{"text":"{}"}}],"role":"assistant"}}}},"stopReason":"end_turn","usage":{{"inputTokens":150,"outputTokens":30,"totalTokens":180}}}}"#,
        buffered_text()
    )
    .into_bytes()
}

/// One AWS event stream message (`application/vnd.amazon.eventstream`), integers
/// big-endian: total length u32, headers length u32, CRC32 of those 8 bytes, the headers
/// (string type 7: name length u8, name, 7, value length u16, value), the payload, CRC32 of
/// every byte before it. The headers are Bedrock's for an event: `:event-type`,
/// `:content-type`, `:message-type`. tests/mock's encoder is private to the mock binary's
/// crate; the checksum is tollgate-core's (checked there against AWS's published vectors).
fn event_stream_frame(event_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    for (name, value) in [
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ] {
        // Names and values here are short literals: the lengths fit their fields.
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7);
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 16 + headers.len() + payload.len();
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&(total as u32).to_be_bytes());
    frame.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&frame);
    frame.extend_from_slice(&prelude_crc.to_be_bytes());
    frame.extend_from_slice(&headers);
    frame.extend_from_slice(payload);
    let message_crc = crc32(&frame);
    frame.extend_from_slice(&message_crc.to_be_bytes());
    frame
}

/// Bedrock's padding member `p` (random there; the mock's fixed prefix of this, as long as
/// `n % 36 + 1`).
fn padding(n: usize) -> &'static str {
    const PADDING: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";
    PADDING.get(..n % PADDING.len() + 1).unwrap_or(PADDING)
}

/// The mock's Bedrock ConverseStream, one event stream frame per element: `messageStart`,
/// a `contentBlockDelta` per piece, `contentBlockStop`, `messageStop`, `metadata` with the
/// usage; every payload with Bedrock's padding.
fn bedrock_stream() -> Vec<Vec<u8>> {
    let mut frames = vec![event_stream_frame(
        "messageStart",
        format!(r#"{{"p":"{}","role":"assistant"}}"#, padding(0)).as_bytes(),
    )];
    for (i, piece) in stream_pieces().iter().enumerate() {
        frames.push(event_stream_frame(
            "contentBlockDelta",
            format!(
                r#"{{"contentBlockIndex":0,"delta":{{"text":"{piece}"}},"p":"{}"}}"#,
                padding(i + 1)
            )
            .as_bytes(),
        ));
    }
    frames.push(event_stream_frame(
        "contentBlockStop",
        format!(r#"{{"contentBlockIndex":0,"p":"{}"}}"#, padding(2)).as_bytes(),
    ));
    frames.push(event_stream_frame(
        "messageStop",
        format!(r#"{{"p":"{}","stopReason":"end_turn"}}"#, padding(9)).as_bytes(),
    ));
    frames.push(event_stream_frame(
        "metadata",
        format!(
            r#"{{"metrics":{{"latencyMs":1}},"p":"{}","usage":{{"inputTokens":150,"outputTokens":{STREAM_CHUNKS},"totalTokens":{}}}}}"#,
            padding(10),
            150 + STREAM_CHUNKS
        )
        .as_bytes(),
    ));
    frames
}

/// One more request, outside the counted loop: the answer must come out translated, with
/// the last word and the provider's token counts, or the counts measured an error path.
fn check_translation(
    state: &State,
    body: &[u8],
    context: &TranslateContext,
    content_type: &str,
    stream: bool,
    response: &[u8],
    events: &[Vec<u8>],
) -> Result<()> {
    let mut plan = plan_chat_request(state, body, context)
        .map_err(|error| anyhow::anyhow!("plan failed: {error:?}"))?;
    plan.response.on_headers(200, Some(content_type));
    let (answer, last_word, completion_tokens) = if stream {
        let mut answer = Vec::new();
        let mut out = Vec::new();
        let last = events.len() - 1;
        for (i, event) in events.iter().enumerate() {
            out.clear();
            match plan.response.on_stream_chunk(event, i == last, &mut out) {
                ChunkOutput::Unchanged => answer.extend_from_slice(event),
                ChunkOutput::Replaced => answer.extend_from_slice(&out),
            }
        }
        let last_word = format!("chunk{}", STREAM_CHUNKS - 1);
        (answer, last_word, STREAM_CHUNKS as u64)
    } else {
        let completed = plan.response.on_complete_body(response);
        if let Some(status) = completed.status {
            bail!("the answer was refused with status {status}");
        }
        let answer = completed.body.unwrap_or_else(|| response.to_vec());
        (answer, "chunk29".to_string(), 30)
    };
    let text = String::from_utf8_lossy(&answer);
    if !text.contains(&last_word) || text.contains("\"error\"") {
        bail!("the answer did not come out translated: {text:.600}");
    }
    if stream && !text.contains("data: [DONE]") {
        bail!("the translated stream has no [DONE]: {text:.600}");
    }
    let usage = plan.response.usage();
    if usage.prompt_tokens != Some(150) || usage.completion_tokens != Some(completion_tokens) {
        bail!(
            "usage read as {:?} prompt / {:?} completion tokens, not 150 / {completion_tokens}",
            usage.prompt_tokens,
            usage.completion_tokens
        );
    }
    Ok(())
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
    // `dump` instead of N writes the answer fed to the filter (a stream's events
    // concatenated) to stdout, to compare with what tests/mock sends.
    let (provider, mode, n) = match args.as_slice() {
        [_, provider, mode, n] if n == "dump" => (provider.as_str(), mode.as_str(), None),
        [_, provider, mode, n] => (provider.as_str(), mode.as_str(), Some(n.parse::<usize>()?)),
        _ => bail!(
            "usage: translate_path <openai|anthropic|gemini|bedrock> <buffered|stream>[+budget] <N|dump>"
        ),
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
    // The model asked for, the mock's answer and stream, and their content types (buffered,
    // stream) as the mock sends them.
    let (model, response, events, content_types) = match provider {
        "openai" => (
            "gpt-mock",
            openai_body(),
            openai_stream(),
            ("application/json", "text/event-stream"),
        ),
        "anthropic" => (
            "claude-mock",
            anthropic_body(),
            anthropic_stream(),
            ("application/json", "text/event-stream"),
        ),
        "gemini" => (
            "gemini-mock",
            gemini_body(),
            gemini_stream(),
            ("application/json; charset=UTF-8", "text/event-stream"),
        ),
        "bedrock" => (
            "bedrock-mock",
            bedrock_body(),
            bedrock_stream(),
            ("application/json", "application/vnd.amazon.eventstream"),
        ),
        _ => bail!("provider must be openai, anthropic, gemini or bedrock"),
    };
    let content_type = if stream {
        content_types.1
    } else {
        content_types.0
    };
    let Some(n) = n else {
        use std::io::Write as _;
        let answer = if stream { events.concat() } else { response };
        std::io::stdout().write_all(&answer)?;
        return Ok(());
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
    check_translation(
        &state,
        &body,
        &context,
        content_type,
        stream,
        &response,
        &events,
    )
    .with_context(|| format!("{provider} {mode}"))?;
    println!("{provider} {mode} x{n}: {bytes_out} bytes out");
    Ok(())
}
