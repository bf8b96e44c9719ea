//! Anthropic Messages (`POST .../v1/messages`), streaming included.

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::wire::anthropic as wire;
use crate::wire::{sse_event, to_json_bytes};

use crate::body::MockBody;
use crate::common::{
    count_words, find_stop, numbered_chunks, raw_error, response, set_header, split_even,
    split_words_keep_spaces, sse_response, Directives,
};
use crate::State;

pub(crate) const TOOL_USE_ID: &str = "toolu_mock_1";
/// Anthropic's `invalid_request_error` for a prompt over the model's context window.
pub(crate) const CONTEXT_LENGTH_MESSAGE: &str =
    "prompt is too long: 208310 tokens > 200000 maximum";
/// The `invalid_request_error` Anthropic answers when its content filter blocks an answer
/// (not in its error documentation, but what the API sends).
pub(crate) const CONTENT_FILTER_MESSAGE: &str = "Output blocked by content filtering policy";
const TOOL_PREAMBLE: &str = "Let me check.";

/// Top-level request fields the Messages API knows; anything else is "Extra inputs are not
/// permitted", as Anthropic answers.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_format",
    "output_config",
    "inference_geo",
];

const BLOCK_TYPES: &[&str] = &[
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
];

/// An Anthropic error body: `{"type":"error","error":{"type","message"},"request_id"}`.
pub(crate) fn error(
    status: StatusCode,
    kind: &str,
    message: &str,
    request_id: &str,
) -> Response<MockBody> {
    let body = wire::ErrorBody {
        kind: "error",
        error: wire::ErrorObject { kind, message },
        request_id: Some(request_id),
    };
    let mut resp = response(
        status,
        "application/json",
        MockBody::full(to_json_bytes(&body)),
    );
    set_header(&mut resp, "request-id", request_id);
    resp
}

fn invalid(message: &str, request_id: &str) -> Response<MockBody> {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        request_id,
    )
}

/// The error type Anthropic documents for `status`.
pub(crate) fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        500 => "api_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The error Anthropic would send for `status` (used by `mock:status=NNN`).
pub(crate) fn status_error(status: StatusCode, request_id: &str) -> Response<MockBody> {
    let message = match status.as_u16() {
        401 => "invalid x-api-key",
        402 => "Your credit balance is too low to access the Anthropic API.",
        403 => "Your API key does not have permission to use the specified resource.",
        404 => "The requested resource could not be found.",
        413 => "Request exceeds the maximum allowed number of bytes.",
        429 => "This request would exceed the rate limit for your organization (mock:status=429).",
        500 => "Internal server error",
        529 => "Overloaded",
        s if s >= 500 => "Internal server error",
        _ => "Invalid request (mock:status).",
    };
    let mut resp = error(status, error_type(status), message, request_id);
    if status == StatusCode::TOO_MANY_REQUESTS {
        set_header(&mut resp, "retry-after", "1");
    }
    resp
}

/// Text of a message's content (string, or text blocks and tool_result texts joined by one
/// space), the number of image blocks, and whether it holds a tool_result block.
fn content_text(content: Option<&Value>) -> (String, usize, bool) {
    match content {
        Some(Value::String(s)) => (s.clone(), 0, false),
        Some(Value::Array(blocks)) => {
            let mut texts: Vec<&str> = Vec::new();
            let mut images = 0;
            let mut tool_result = false;
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => texts.extend(b.get("text").and_then(Value::as_str)),
                    Some("image") => images += 1,
                    Some("tool_result") => {
                        tool_result = true;
                        match b.get("content") {
                            Some(Value::String(s)) => texts.push(s),
                            Some(Value::Array(inner)) => texts.extend(
                                inner
                                    .iter()
                                    .filter(|x| {
                                        x.get("type").and_then(Value::as_str) == Some("text")
                                    })
                                    .filter_map(|x| x.get("text").and_then(Value::as_str)),
                            ),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            (texts.join(" "), images, tool_result)
        }
        _ => (String::new(), 0, false),
    }
}

fn system_text(system: Option<&Value>) -> String {
    match system {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn tool_use_ids(content: Option<&Value>) -> Vec<&str> {
    content
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
                .filter_map(|b| b.get("id").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

fn tool_result_ids(content: Option<&Value>) -> Vec<&str> {
    content
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                .filter_map(|b| b.get("tool_use_id").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

fn is_int(v: &Value) -> bool {
    v.is_i64() || v.is_u64()
}

fn validate_image(path: &str, b: &Value) -> Result<(), String> {
    let Some(source) = b.get("source") else {
        return Err(format!("{path}.source: Field required"));
    };
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            const TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];
            match source.get("media_type").and_then(Value::as_str) {
                None => Err(format!("{path}.source.base64.media_type: Field required")),
                Some(m) if !TYPES.contains(&m) => Err(format!(
                    "{path}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                )),
                Some(_) => match source.get("data") {
                    Some(Value::String(_)) => Ok(()),
                    None => Err(format!("{path}.source.base64.data: Field required")),
                    Some(_) => Err(format!("{path}.source.base64.data: Input should be a valid string")),
                },
            }
        }
        Some("url") => match source.get("url") {
            Some(Value::String(_)) => Ok(()),
            None => Err(format!("{path}.source.url.url: Field required")),
            Some(_) => Err(format!("{path}.source.url.url: Input should be a valid string")),
        },
        Some(other) => Err(format!(
            "{path}.source: Input tag '{other}' found using 'type' does not match any of the expected tags: 'base64', 'url'"
        )),
        None => Err(format!("{path}.source: Unable to extract tag using discriminator 'type'")),
    }
}

fn validate_block(
    path: &str,
    b: &Value,
    role: &str,
    prev_tool_use_ids: &[&str],
    msg_index: usize,
    block_index: usize,
) -> Result<(), String> {
    if !b.is_object() {
        return Err(format!(
            "{path}: Input should be a valid dictionary or object to extract fields from"
        ));
    }
    let Some(kind) = b.get("type").and_then(Value::as_str) else {
        return Err(format!(
            "{path}: Unable to extract tag using discriminator 'type'"
        ));
    };
    match kind {
        "text" => match b.get("text") {
            None => Err(format!("{path}.text.text: Field required")),
            Some(Value::String(s)) if s.is_empty() => {
                Err("messages: text content blocks must be non-empty".to_owned())
            }
            Some(Value::String(_)) => Ok(()),
            Some(_) => Err(format!("{path}.text.text: Input should be a valid string")),
        },
        "image" => validate_image(&format!("{path}.image"), b),
        "tool_use" => {
            for field in ["id", "name"] {
                match b.get(field) {
                    None => return Err(format!("{path}.tool_use.{field}: Field required")),
                    Some(Value::String(_)) => {}
                    Some(_) => return Err(format!("{path}.tool_use.{field}: Input should be a valid string")),
                }
            }
            match b.get("input") {
                None => Err(format!("{path}.tool_use.input: Field required")),
                Some(Value::Object(_)) => Ok(()),
                Some(_) => Err(format!("{path}.tool_use.input: Input should be a valid dictionary")),
            }
        }
        "tool_result" => {
            let id = match b.get("tool_use_id") {
                None => return Err(format!("{path}.tool_result.tool_use_id: Field required")),
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err(format!("{path}.tool_result.tool_use_id: Input should be a valid string")),
            };
            if role != "user" || !prev_tool_use_ids.contains(&id) {
                return Err(format!(
                    "messages.{msg_index}.content.{block_index}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                ));
            }
            match b.get("content") {
                None | Some(Value::String(_)) => Ok(()),
                Some(Value::Array(inner)) => {
                    for (k, x) in inner.iter().enumerate() {
                        let p = format!("{path}.tool_result.content.{k}");
                        match x.get("type").and_then(Value::as_str) {
                            Some("text") | Some("image") | Some("document") | Some("search_result") => {}
                            Some(other) => {
                                return Err(format!(
                                    "{p}: Input tag '{other}' found using 'type' does not match any of the expected tags: 'text', 'image', 'document', 'search_result'"
                                ));
                            }
                            None => return Err(format!("{p}: Unable to extract tag using discriminator 'type'")),
                        }
                        if x.get("type").and_then(Value::as_str) == Some("image") {
                            validate_image(&format!("{p}.image"), x)?;
                        }
                    }
                    Ok(())
                }
                Some(_) => Err(format!("{path}.tool_result.content: Input should be a valid list")),
            }
        }
        "document" | "thinking" | "redacted_thinking" => Ok(()),
        other => Err(format!(
            "{path}: Input tag '{other}' found using 'type' does not match any of the expected tags: {}",
            BLOCK_TYPES.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn validate_messages(messages: &[Value]) -> Result<(), String> {
    if messages.is_empty() {
        return Err("messages: at least one message is required".to_owned());
    }
    let last = messages.len() - 1;
    let mut prev_tool_use_ids: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if !m.is_object() {
            return Err(format!("messages.{i}: Input should be a valid dictionary"));
        }
        let role = match m.get("role") {
            None => return Err(format!("messages.{i}.role: Field required")),
            Some(Value::String(r)) if r == "user" || r == "assistant" => r.as_str(),
            Some(Value::String(r)) if r == "system" => {
                return Err("messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.".to_owned());
            }
            Some(_) => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ))
            }
        };
        if i == 0 && role != "user" {
            return Err("messages: first message must use the \"user\" role".to_owned());
        }
        let content = m.get("content");
        let non_empty = match content {
            None => return Err(format!("messages.{i}.content: Field required")),
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(blocks)) => {
                for (j, b) in blocks.iter().enumerate() {
                    validate_block(
                        &format!("messages.{i}.content.{j}"),
                        b,
                        role,
                        &prev_tool_use_ids,
                        i,
                        j,
                    )?;
                }
                !blocks.is_empty()
            }
            Some(_) => {
                return Err(format!(
                    "messages.{i}.content: Input should be a valid list"
                ))
            }
        };
        if !(non_empty || (i == last && role == "assistant")) {
            return Err(format!(
                "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
            ));
        }
        // Every tool_use of the previous assistant turn needs its tool_result in this message.
        if role == "user" && !prev_tool_use_ids.is_empty() {
            let results = tool_result_ids(content);
            let missing: Vec<&str> = prev_tool_use_ids
                .iter()
                .copied()
                .filter(|id| !results.contains(id))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                    i - 1,
                    missing.join(", ")
                ));
            }
        }
        prev_tool_use_ids = if role == "assistant" {
            tool_use_ids(content)
        } else {
            Vec::new()
        };
    }
    Ok(())
}

fn validate_tools(obj: &Map<String, Value>) -> Result<(), String> {
    if let Some(tools) = obj.get("tools") {
        let Some(tools) = tools.as_array() else {
            return Err("tools: Input should be a valid list".to_owned());
        };
        for (i, t) in tools.iter().enumerate() {
            if !t.is_object() {
                return Err(format!("tools.{i}: Input should be a valid dictionary or object to extract fields from"));
            }
            let kind = t.get("type").and_then(Value::as_str).unwrap_or("custom");
            let path = format!("tools.{i}.{kind}");
            match t.get("name") {
                None => return Err(format!("{path}.name: Field required")),
                Some(Value::String(_)) => {}
                Some(_) => return Err(format!("{path}.name: Input should be a valid string")),
            }
            if kind == "custom" {
                match t.get("input_schema") {
                    None => return Err(format!("{path}.input_schema: Field required")),
                    Some(Value::Object(_)) => {}
                    Some(_) => {
                        return Err(format!(
                            "{path}.input_schema: Input should be a valid dictionary"
                        ))
                    }
                }
            }
        }
    }
    if let Some(choice) = obj.get("tool_choice") {
        if !choice.is_object() {
            return Err(
                "tool_choice: Input should be a valid dictionary or object to extract fields from"
                    .to_owned(),
            );
        }
        match choice.get("type").and_then(Value::as_str) {
            Some("auto") | Some("any") | Some("none") => {}
            Some("tool") => match choice.get("name") {
                Some(Value::String(_)) => {}
                None => return Err("tool_choice.tool.name: Field required".to_owned()),
                Some(_) => {
                    return Err("tool_choice.tool.name: Input should be a valid string".to_owned())
                }
            },
            Some(other) => {
                return Err(format!(
                    "tool_choice: Input tag '{other}' found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
                ));
            }
            None => {
                return Err(
                    "tool_choice: Unable to extract tag using discriminator 'type'".to_owned(),
                )
            }
        }
    }
    Ok(())
}

fn validate(req: &Value) -> Result<(), String> {
    let Some(obj) = req.as_object() else {
        return Err("Input should be a valid dictionary".to_owned());
    };
    match obj.get("model") {
        None => return Err("model: Field required".to_owned()),
        Some(Value::String(_)) => {}
        Some(_) => return Err("model: Input should be a valid string".to_owned()),
    }
    match obj.get("messages") {
        None => return Err("messages: Field required".to_owned()),
        Some(Value::Array(_)) => {}
        Some(_) => return Err("messages: Input should be a valid list".to_owned()),
    }
    match obj.get("max_tokens") {
        None => return Err("max_tokens: Field required".to_owned()),
        Some(v) if !is_int(v) => {
            return Err("max_tokens: Input should be a valid integer".to_owned())
        }
        Some(v) if v.as_i64().is_some_and(|n| n < 1) => {
            return Err("max_tokens: Input should be greater than or equal to 1".to_owned());
        }
        Some(_) => {}
    }
    if let Some(extra) = obj.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(format!("{extra}: Extra inputs are not permitted"));
    }
    match obj.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(format!("system.{i}.type: Input should be 'text'"));
                }
                if !b.get("text").is_some_and(Value::is_string) {
                    return Err(format!("system.{i}.text: Field required"));
                }
            }
        }
        Some(_) => return Err("system: Input should be a valid list".to_owned()),
    }
    if let Some(v) = obj.get("stream") {
        if !v.is_boolean() {
            return Err("stream: Input should be a valid boolean".to_owned());
        }
    }
    if let Some(v) = obj.get("stop_sequences") {
        match v.as_array() {
            Some(a) if a.iter().all(Value::is_string) => {}
            Some(_) => {
                return Err("stop_sequences: Input should be a valid list of strings".to_owned())
            }
            None => return Err("stop_sequences: Input should be a valid list".to_owned()),
        }
    }
    for field in ["temperature", "top_p"] {
        if let Some(v) = obj.get(field) {
            match v.as_f64() {
                None => return Err(format!("{field}: Input should be a valid number")),
                Some(x) if x < 0.0 => {
                    return Err(format!(
                        "{field}: Input should be greater than or equal to 0"
                    ))
                }
                Some(x) if x > 1.0 => {
                    return Err(format!("{field}: Input should be less than or equal to 1"))
                }
                Some(_) => {}
            }
        }
    }
    if let Some(v) = obj.get("top_k") {
        if !is_int(v) || v.as_i64().is_some_and(|n| n < 0) {
            return Err("top_k: Input should be a non-negative integer".to_owned());
        }
    }
    validate_tools(obj)?;
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    validate_messages(messages)
}

/// Name of the tool to call, if the mock should answer with tool_use.
fn tool_to_call(req: &Value, last_user_has_tool_result: bool) -> Option<String> {
    let tools = req.get("tools")?.as_array()?;
    let first = tools.first()?;
    let choice = req.get("tool_choice");
    let choice_type = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    if choice_type == Some("none") || last_user_has_tool_result {
        return None;
    }
    let forced = if choice_type == Some("tool") {
        choice.and_then(|c| c.get("name")).and_then(Value::as_str)
    } else {
        None
    };
    let name = forced.or_else(|| first.get("name").and_then(Value::as_str))?;
    Some(name.to_owned())
}

fn tool_input() -> Value {
    json!({"location": "Paris", "unit": "celsius"})
}

enum Reply {
    Text {
        pieces: Vec<String>,
        stop_sequence: Option<String>,
    },
    ToolUse(String),
}

pub(crate) async fn handle(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    let n = state.next_id();
    let request_id = format!("req_mock_{n}");
    if let Some(expected) = state.config.anthropic_api_key.as_deref() {
        match parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            None => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "x-api-key header is required",
                    &request_id,
                );
            }
            Some(k) if k != expected => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "invalid x-api-key",
                    &request_id,
                );
            }
            Some(_) => {}
        }
    }
    if !parts.headers.contains_key("anthropic-version") {
        return invalid("anthropic-version: header is required", &request_id);
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return invalid(
                &format!("There was an issue with the request body: invalid JSON ({e})"),
                &request_id,
            );
        }
    };
    answer(n, parts, req).await
}

/// `invalid_request_error` 400, as Anthropic answers a body it refuses.
pub(crate) fn refuse(message: &str, request_id: &str) -> Response<MockBody> {
    invalid(message, request_id)
}

/// Answers a Messages request body (with its `model`) once the caller is authenticated:
/// Anthropic's own endpoint and Vertex AI's `rawPredict`. `n` numbers the request's ids.
pub(crate) async fn answer(n: u64, parts: &Parts, req: Value) -> Response<MockBody> {
    let request_id = format!("req_mock_{n}");
    if let Err(message) = validate(&req) {
        return invalid(&message, &request_id);
    }
    let messages: &[Value] = req
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let model = req.get("model").and_then(Value::as_str).unwrap_or_default();

    let mut input_tokens = count_words(&system_text(req.get("system")));
    for m in messages {
        input_tokens += count_words(&content_text(m.get("content")).0);
    }
    let input_tokens = input_tokens.max(1);

    let (user_text, images, has_tool_result) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default();
    let directives = Directives::for_request(&user_text, parts);
    if directives.raw_error {
        return raw_error();
    }
    if let Some(status) = directives.error_status() {
        return status_error(status, &request_id);
    }

    let reply = match tool_to_call(&req, has_tool_result) {
        Some(name) => Reply::ToolUse(name),
        None => {
            let pieces: Vec<String> = match directives.chunks {
                Some(c) => numbered_chunks(c),
                None => {
                    let mut content = format!("echo: {user_text}");
                    if images > 0 {
                        content.push_str(&format!(" [images: {images}]"));
                    }
                    split_words_keep_spaces(&content)
                        .into_iter()
                        .map(str::to_owned)
                        .collect()
                }
            };
            let stops: Vec<String> = req
                .get("stop_sequences")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let full = pieces.concat();
            match find_stop(&full, &stops) {
                Some((cut, stop)) => {
                    let head = full.get(..cut).unwrap_or_default();
                    Reply::Text {
                        pieces: split_words_keep_spaces(head)
                            .into_iter()
                            .map(str::to_owned)
                            .collect(),
                        stop_sequence: Some(stop.to_owned()),
                    }
                }
                None => Reply::Text {
                    pieces,
                    stop_sequence: None,
                },
            }
        }
    };
    let output_tokens = match &reply {
        Reply::Text { pieces, .. } => count_words(&pieces.concat()),
        Reply::ToolUse(_) => count_words(TOOL_PREAMBLE) + count_words(&tool_input().to_string()),
    }
    .max(1);
    let (stop_reason, stop_sequence) = match &reply {
        Reply::Text {
            stop_sequence: Some(s),
            ..
        } => ("stop_sequence", Some(s.clone())),
        Reply::Text { .. } => ("end_turn", None),
        Reply::ToolUse(_) => ("tool_use", None),
    };

    let id = format!("msg_mock_{n}");
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let input = tool_input();
    let usage = wire::Usage {
        input_tokens,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
        output_tokens,
    };
    let mut resp = if stream {
        let events = stream_events(&StreamCtx {
            id: &id,
            model,
            usage,
            stop_reason,
            stop_sequence: stop_sequence.as_deref(),
            reply: &reply,
            input: &input,
            stream_error: directives.stream_error,
            stream_cut: directives.stream_cut,
        });
        sse_response(events, directives.delay())
    } else {
        if let Some(ms) = directives.delay_ms.filter(|ms| *ms > 0) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let text;
        let content = match &reply {
            Reply::Text { pieces, .. } => {
                text = pieces.concat();
                vec![wire::Block::Text { text: &text }]
            }
            Reply::ToolUse(name) => vec![
                wire::Block::Text {
                    text: TOOL_PREAMBLE,
                },
                wire::Block::ToolUse {
                    id: TOOL_USE_ID,
                    name,
                    input: &input,
                },
            ],
        };
        let message = wire::Message {
            id: &id,
            kind: "message",
            role: "assistant",
            model,
            content,
            stop_reason: Some(stop_reason),
            stop_sequence: stop_sequence.as_deref(),
            usage,
        };
        response(
            StatusCode::OK,
            "application/json",
            MockBody::full(to_json_bytes(&message)),
        )
    };
    set_header(&mut resp, "request-id", &request_id);
    resp
}

struct StreamCtx<'a> {
    id: &'a str,
    model: &'a str,
    usage: wire::Usage,
    stop_reason: &'a str,
    stop_sequence: Option<&'a str>,
    reply: &'a Reply,
    input: &'a Value,
    stream_error: bool,
    stream_cut: bool,
}

fn event(e: &wire::Event<'_>) -> Bytes {
    sse_event(e.name(), e)
}

fn stream_events(ctx: &StreamCtx<'_>) -> Vec<Bytes> {
    let start_usage = wire::Usage {
        output_tokens: 1,
        ..ctx.usage
    };
    let mut events = vec![
        event(&wire::Event::MessageStart {
            message: wire::Message {
                id: ctx.id,
                kind: "message",
                role: "assistant",
                model: ctx.model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                usage: start_usage,
            },
        }),
        event(&wire::Event::ContentBlockStart {
            index: 0,
            content_block: wire::Block::Text { text: "" },
        }),
        event(&wire::Event::Ping),
    ];
    let text_pieces: Vec<&str> = match ctx.reply {
        Reply::Text { pieces, .. } => pieces.iter().map(String::as_str).collect(),
        Reply::ToolUse(_) => split_words_keep_spaces(TOOL_PREAMBLE),
    };
    events.reserve(text_pieces.len() + 10);
    for (i, text) in text_pieces.iter().enumerate() {
        events.push(event(&wire::Event::ContentBlockDelta {
            index: 0,
            delta: wire::Delta::TextDelta { text },
        }));
        if i == 0 && ctx.stream_error {
            events.push(event(&wire::Event::Error {
                error: wire::ErrorObject {
                    kind: "overloaded_error",
                    message: "Overloaded",
                },
            }));
            return events;
        }
        if i == 0 && ctx.stream_cut {
            return events;
        }
    }
    events.push(event(&wire::Event::ContentBlockStop { index: 0 }));
    if let Reply::ToolUse(name) = ctx.reply {
        let empty = Value::Object(serde_json::Map::new());
        events.push(event(&wire::Event::ContentBlockStart {
            index: 1,
            content_block: wire::Block::ToolUse {
                id: TOOL_USE_ID,
                name,
                input: &empty,
            },
        }));
        let json = ctx.input.to_string();
        let mut pieces = vec![""];
        pieces.extend(split_even(&json, 4));
        for partial_json in pieces {
            events.push(event(&wire::Event::ContentBlockDelta {
                index: 1,
                delta: wire::Delta::InputJsonDelta { partial_json },
            }));
        }
        events.push(event(&wire::Event::ContentBlockStop { index: 1 }));
    }
    events.push(event(&wire::Event::MessageDelta {
        delta: wire::MessageDeltaBody {
            stop_reason: Some(ctx.stop_reason),
            stop_sequence: ctx.stop_sequence,
        },
        usage: wire::OutputUsage {
            output_tokens: ctx.usage.output_tokens,
        },
    }));
    events.push(event(&wire::Event::MessageStop));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: Value) -> Result<(), String> {
        validate(&v)
    }

    #[test]
    fn validation_messages() {
        let base =
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(ok(base.clone()), Ok(()));
        assert_eq!(
            ok(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})),
            Err("max_tokens: Field required".to_owned())
        );
        assert_eq!(
            ok(
                json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]})
            ),
            Err("max_tokens: Input should be greater than or equal to 1".to_owned())
        );
        assert!(ok(json!({"model": "m", "max_tokens": 5, "n": 2, "messages": [{"role": "user", "content": "hi"}]}))
            .is_err_and(|e| e == "n: Extra inputs are not permitted"));
        assert!(ok(json!({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": "hi"}]}))
            .is_err_and(|e| e.contains("first message")));
        assert!(ok(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": ""}]})
        )
        .is_err_and(|e| e.contains("non-empty content")));
        // Final assistant prefill may be empty.
        assert_eq!(
            ok(json!({"model": "m", "max_tokens": 5, "messages": [
                {"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]})),
            Ok(())
        );
        assert!(ok(json!({"model": "m", "max_tokens": 5, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]}))
            .is_err_and(|e| e.starts_with("temperature")));
    }

    #[test]
    fn tool_pairing() {
        let good = json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "15C"}]}
        ]});
        assert_eq!(ok(good), Ok(()));
        let orphan = json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9", "content": "15C"}]}
        ]});
        assert!(ok(orphan).is_err_and(|e| e.contains("unexpected `tool_use_id`")));
        let missing = json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {}}]},
            {"role": "user", "content": "no result"}
        ]});
        assert!(ok(missing).is_err_and(|e| e.contains("without `tool_result`")));
    }

    #[test]
    fn error_types() {
        assert_eq!(
            error_type(StatusCode::from_u16(529).unwrap_or(StatusCode::OK)),
            "overloaded_error"
        );
        assert_eq!(error_type(StatusCode::INTERNAL_SERVER_ERROR), "api_error");
        assert_eq!(error_type(StatusCode::FORBIDDEN), "permission_error");
        assert_eq!(error_type(StatusCode::IM_A_TEAPOT), "invalid_request_error");
    }
}
