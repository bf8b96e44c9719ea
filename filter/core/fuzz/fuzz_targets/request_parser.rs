//! The chat request parser and planner on arbitrary bytes: `summarize_chat_request`, then
//! `plan_chat_request` for a deployment of every provider kind serving the requested model.
//!
//! Checks:
//! - a refusal is a typed 400 with an OpenAI error body, and planning refuses the same way;
//! - an accepted body is a JSON object, the summary's spans point at its model and
//!   `stream_options`;
//! - the OpenAI plan accepts every request the summary accepts and sends the client's object
//!   with only the model replaced and, for a stream without the client's usage chunk,
//!   `stream_options.include_usage` forced on (so tokens are always counted);
//! - the Anthropic plan sends a JSON object with the upstream model, a max_tokens of at least
//!   1 and the client's stream flag, or refuses with a 400;
//! - the Gemini plan sends a JSON object with non-empty `contents` of roles `user` and
//!   `model` (alternating, as they are merged), to the upstream model's `generateContent`
//!   (`streamGenerateContent?alt=sse` for a stream) with the key in `x-goog-api-key`, or
//!   refuses with a 400;
//! - the Cohere plan sends a JSON object with only v2 chat fields (no untranslated `top_p`,
//!   `n`, `stop` ...), the upstream model, non-empty `messages` of v2's roles, `p` in the
//!   range Cohere takes and `stream` exactly for a stream, to `/v2/chat` with the bearer key,
//!   or refuses with a 400;
//! - the Ollama plan sends a JSON object with only /api/chat's fields, the upstream model,
//!   `stream` always (Ollama streams by default), non-empty `messages` of Ollama's roles with
//!   string content, images on user messages and tool call arguments as objects, to `/api/chat`
//!   with the bearer key, or refuses with a 400.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tollgate_core::gateway::{plan_chat_request, RequestPlan};
use tollgate_core::proto::ProviderKind;
use tollgate_core::request::{summarize_chat_request, ChatRequestSummary};
use tollgate_core::GatewayError;
use tollgate_core_fuzz::{
    assert_openai_error, json_object, state_serving, CONTEXT, MODEL, UPSTREAM_MODEL,
};

fn assert_refusal(error: &GatewayError) {
    assert_eq!(error.status(), 400, "{error}");
    assert_openai_error(&error.to_json());
}

fn check_openai(client: &Map<String, Value>, summary: &ChatRequestSummary<'_>, plan: &RequestPlan) {
    let mut expected = client.clone();
    expected.insert("model".into(), UPSTREAM_MODEL.into());
    if summary.stream && !summary.include_usage {
        let mut options = client
            .get("stream_options")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        options.insert("include_usage".into(), true.into());
        expected.insert("stream_options".into(), options.into());
    }
    let sent = json_object(&plan.body);
    assert!(
        sent == expected,
        "sent:\n{}\nexpected:\n{}",
        String::from_utf8_lossy(&plan.body),
        Value::from(expected.clone())
    );
    assert!(plan
        .headers
        .contains(&("authorization", "Bearer sk-fuzz".into())));
}

fn check_anthropic(summary: &ChatRequestSummary<'_>, plan: &RequestPlan) {
    let sent = json_object(&plan.body);
    assert_eq!(sent["model"], UPSTREAM_MODEL);
    assert!(
        sent["max_tokens"].as_u64().is_some_and(|max| max >= 1),
        "max_tokens {}",
        sent["max_tokens"]
    );
    assert_eq!(
        sent.get("stream").and_then(Value::as_bool).unwrap_or(false),
        summary.stream
    );
    assert!(sent["messages"]
        .as_array()
        .is_some_and(|messages| !messages.is_empty()));
    assert!(plan.headers.contains(&("x-api-key", "sk-fuzz".into())));
}

fn check_gemini(summary: &ChatRequestSummary<'_>, plan: &RequestPlan) {
    let sent = json_object(&plan.body);
    let contents = sent["contents"].as_array().expect("contents is an array");
    assert!(!contents.is_empty());
    let roles: Vec<&str> = contents
        .iter()
        .map(|content| content["role"].as_str().expect("a role"))
        .collect();
    assert!(
        roles.iter().all(|role| matches!(*role, "user" | "model")),
        "{roles:?}"
    );
    assert!(roles.windows(2).all(|pair| pair[0] != pair[1]), "{roles:?}");
    for content in contents {
        assert!(content["parts"]
            .as_array()
            .is_some_and(|parts| !parts.is_empty()));
    }
    let endpoint = if summary.stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    };
    assert_eq!(
        plan.path,
        format!("/v1/v1beta/models/{UPSTREAM_MODEL}{endpoint}")
    );
    assert!(plan.headers.contains(&("x-goog-api-key", "sk-fuzz".into())));
}

/// The fields Tollgate sends to Ollama's /api/chat (OpenAI's `max_tokens`, `n`, `top_p` ...
/// belong in `options` or nowhere).
const OLLAMA_FIELDS: &[&str] = &["model", "messages", "tools", "format", "options", "stream"];

fn check_ollama(summary: &ChatRequestSummary<'_>, plan: &RequestPlan) {
    let sent = json_object(&plan.body);
    for field in sent.keys() {
        assert!(OLLAMA_FIELDS.contains(&field.as_str()), "{field} sent");
    }
    assert_eq!(sent["model"], UPSTREAM_MODEL);
    // Ollama streams unless told not to.
    assert_eq!(sent["stream"], summary.stream);
    let messages = sent["messages"].as_array().expect("messages is an array");
    assert!(!messages.is_empty());
    for message in messages {
        let role = message["role"].as_str().expect("a role");
        assert!(
            matches!(role, "system" | "user" | "assistant" | "tool"),
            "{role}"
        );
        assert!(message["content"].is_string(), "{message}");
        if let Some(images) = message.get("images") {
            // The payloads of the client's data URLs, on user messages only.
            assert_eq!(role, "user");
            let images = images.as_array().expect("images is an array");
            assert!(!images.is_empty() && images.iter().all(Value::is_string));
        }
        for call in message["tool_calls"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            assert!(call["function"]["arguments"].is_object(), "{call}");
        }
    }
    assert_eq!(plan.path, "/v1/api/chat");
    assert!(plan
        .headers
        .contains(&("authorization", "Bearer sk-fuzz".into())));
}

/// The fields of a v2 chat request (Cohere answers 422 to any other).
const COHERE_FIELDS: &[&str] = &[
    "stream",
    "model",
    "messages",
    "tools",
    "strict_tools",
    "documents",
    "citation_options",
    "response_format",
    "safety_mode",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "k",
    "p",
    "logprobs",
    "tool_choice",
    "thinking",
    "priority",
];

/// A v2 chat request: v2's fields only, the upstream model, messages of v2's roles, `p` in
/// [0.01, 0.99], `stream` only for a stream, sent to `/v2/chat` with the bearer key.
fn check_cohere(summary: &ChatRequestSummary<'_>, plan: &RequestPlan) {
    let sent = json_object(&plan.body);
    for key in sent.keys() {
        assert!(
            COHERE_FIELDS.contains(&key.as_str()),
            "{key} sent to Cohere"
        );
    }
    assert_eq!(sent["model"], UPSTREAM_MODEL);
    assert_eq!(
        sent.get("stream"),
        summary.stream.then_some(&Value::Bool(true))
    );
    let messages = sent["messages"].as_array().expect("messages is an array");
    assert!(!messages.is_empty());
    for message in messages {
        let role = message["role"].as_str().expect("a role");
        assert!(
            matches!(role, "system" | "user" | "assistant" | "tool"),
            "{role}"
        );
    }
    if let Some(p) = sent.get("p") {
        let p = p.as_f64().expect("p is a number");
        assert!((0.01..=0.99).contains(&p), "p {p}");
    }
    if let Some(choice) = sent.get("tool_choice") {
        assert!(choice == "REQUIRED" || choice == "NONE", "{choice}");
        assert!(sent["tools"]
            .as_array()
            .is_some_and(|tools| !tools.is_empty()));
    }
    assert_eq!(plan.path, "/v1/v2/chat");
    assert!(plan
        .headers
        .contains(&("authorization", "Bearer sk-fuzz".into())));
}

/// A Converse request: alternating roles from the user, none empty, no model or stream field
/// (they are the path's), sent to the model's endpoint and signed.
fn check_bedrock(summary: &ChatRequestSummary<'_>, plan: &RequestPlan) {
    let sent = json_object(&plan.body);
    assert!(!sent.contains_key("model") && !sent.contains_key("stream"));
    let messages = sent["messages"].as_array().expect("messages is an array");
    let roles: Vec<&str> = messages
        .iter()
        .map(|message| message["role"].as_str().expect("a role"))
        .collect();
    assert_eq!(roles.first(), Some(&"user"), "{roles:?}");
    assert!(roles.windows(2).all(|pair| pair[0] != pair[1]), "{roles:?}");
    for message in messages {
        assert!(message["content"]
            .as_array()
            .is_some_and(|content| !content.is_empty()));
    }
    let endpoint = if summary.stream {
        "converse-stream"
    } else {
        "converse"
    };
    assert_eq!(plan.path, format!("/v1/model/{UPSTREAM_MODEL}/{endpoint}"));
    let header = |name: &str| plan.headers.iter().find(|(set, _)| *set == name);
    assert!(header("authorization")
        .is_some_and(|(_, value)| value.starts_with("AWS4-HMAC-SHA256 Credential=AKIDFUZZ/")));
    assert!(header("x-amz-date").is_some());
}

fuzz_target!(|body: &[u8]| {
    let summary = match summarize_chat_request(body) {
        Ok(summary) => summary,
        Err(error) => {
            assert_refusal(&error);
            let planned =
                plan_chat_request(&state_serving(MODEL, ProviderKind::Openai), body, &CONTEXT);
            let refused = planned.expect_err("planning accepted what the summary refused");
            assert_eq!(refused.to_string(), error.to_string());
            return;
        }
    };
    assert_eq!(
        body.trim_ascii_start().first(),
        Some(&b'{'),
        "an accepted body is not an object"
    );
    let model: String = serde_json::from_slice(&body[summary.model_span.clone()])
        .expect("the model span is a JSON string");
    assert_eq!(model, summary.model);
    if let Some(span) = summary.stream_options_span.clone() {
        let raw = summary.stream_options.expect("a span comes with its value");
        assert_eq!(&body[span], raw.get().as_bytes());
    }
    // The comparisons read the body as a JSON value, which holds no number out of f64's
    // range; the parser passes such numbers in fields it does not read.
    let client: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    if let Some(client) = &client {
        assert_eq!(client["model"], summary.model.as_ref());
    }
    let state = state_serving(&summary.model, ProviderKind::Openai);
    match (plan_chat_request(&state, body, &CONTEXT), &client) {
        (Ok(plan), Some(client)) => check_openai(client, &summary, &plan),
        (Ok(_), None) => {}
        (Err(error), Some(_)) => panic!("the OpenAI plan refused an accepted request: {error}"),
        (Err(error), None) => assert_refusal(&error),
    }
    let state = state_serving(&summary.model, ProviderKind::Anthropic);
    match plan_chat_request(&state, body, &CONTEXT) {
        Ok(plan) if client.is_some() => check_anthropic(&summary, &plan),
        Ok(_) => {}
        Err(error) => assert_refusal(&error),
    }
    let state = state_serving(&summary.model, ProviderKind::Gemini);
    match plan_chat_request(&state, body, &CONTEXT) {
        Ok(plan) if client.is_some() => check_gemini(&summary, &plan),
        Ok(_) => {}
        Err(error) => assert_refusal(&error),
    }
    let state = state_serving(&summary.model, ProviderKind::Bedrock);
    match plan_chat_request(&state, body, &CONTEXT) {
        Ok(plan) if client.is_some() => check_bedrock(&summary, &plan),
        Ok(_) => {}
        Err(error) => assert_refusal(&error),
    }
    let state = state_serving(&summary.model, ProviderKind::Cohere);
    match plan_chat_request(&state, body, &CONTEXT) {
        Ok(plan) if client.is_some() => check_cohere(&summary, &plan),
        Ok(_) => {}
        Err(error) => assert_refusal(&error),
    }
    let state = state_serving(&summary.model, ProviderKind::Ollama);
    match plan_chat_request(&state, body, &CONTEXT) {
        Ok(plan) if client.is_some() => check_ollama(&summary, &plan),
        Ok(_) => {}
        Err(error) => assert_refusal(&error),
    }
});
