//! OpenAI Chat Completions (`POST .../chat/completions`), streaming included.

use bytes::Bytes;
use hyper::header::AUTHORIZATION;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::body::MockBody;
use crate::common::{
    count_words, find_stop, now_unix, numbered_chunks, raw_error, response, set_header, split_even,
    split_words_keep_spaces, sse_response, Directives,
};
use crate::wire::openai as wire;
use crate::wire::{sse_data, to_json_bytes, Field};
use crate::State;

/// Arguments of the mock's one tool call.
pub(crate) const TOOL_ARGUMENTS: &str = r#"{"location":"Paris","unit":"celsius"}"#;
pub(crate) const TOOL_CALL_ID: &str = "call_mock_1";
const FINGERPRINT: &str = "fp_mock";

/// An OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub(crate) fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<MockBody> {
    let body = wire::ErrorBody {
        error: wire::ErrorObject {
            message,
            kind,
            param,
            code,
        },
    };
    response(
        status,
        "application/json",
        MockBody::full(to_json_bytes(&body)),
    )
}

/// The error OpenAI would send for `status` (used by `mock:status=NNN`).
pub(crate) fn status_error(status: StatusCode) -> Response<MockBody> {
    let (kind, code, message) = match status.as_u16() {
        400 => ("invalid_request_error", None, "Bad request (mock:status=400)."),
        401 => (
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided (mock:status=401).",
        ),
        403 => ("permission_error", None, "You are not allowed to sample from this model (mock:status=403)."),
        404 => (
            "invalid_request_error",
            Some("model_not_found"),
            "The model does not exist or you do not have access to it (mock:status=404).",
        ),
        408 => ("timeout_error", None, "Request timed out (mock:status=408)."),
        409 => ("conflict_error", None, "Conflict (mock:status=409)."),
        413 => ("invalid_request_error", None, "Request too large (mock:status=413)."),
        422 => ("invalid_request_error", None, "Unprocessable entity (mock:status=422)."),
        429 => (
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            "Rate limit reached for requests (mock:status=429). Please try again in 1s.",
        ),
        500 => (
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that! (mock:status=500)",
        ),
        502 => ("server_error", None, "Bad gateway (mock:status=502)."),
        503 => (
            "server_error",
            Some("service_unavailable"),
            "The engine is currently overloaded, please try again later (mock:status=503).",
        ),
        504 => ("timeout_error", None, "Gateway timeout (mock:status=504)."),
        s if s >= 500 => ("server_error", None, "Server error (mock:status)."),
        _ => ("invalid_request_error", None, "Request failed (mock:status)."),
    };
    let mut resp = error(status, message, kind, None, code);
    if status == StatusCode::TOO_MANY_REQUESTS {
        set_header(&mut resp, "retry-after", "1");
    }
    resp
}

/// OpenAI's answer to chat messages over the model's context window.
pub(crate) fn context_length_error() -> Response<MockBody> {
    bad_request(
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 130012 tokens. Please reduce the length of the messages.",
        Some("messages"),
        Some("context_length_exceeded"),
    )
}

/// OpenAI's answer to a prompt over the model's context window on the legacy completions and
/// the embeddings endpoints (worded as those answer it, without a code).
pub(crate) fn prompt_context_length_error() -> Response<MockBody> {
    bad_request(
        "This model's maximum context length is 8192 tokens, however you requested 8238 tokens (8238 in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
        None,
        None,
    )
}

/// OpenAI's refusal of a prompt its usage policy flags.
pub(crate) fn invalid_prompt() -> Response<MockBody> {
    bad_request(
        "Invalid prompt: your prompt was flagged as potentially violating our usage policy. Please try again with a different prompt: https://platform.openai.com/docs/guides/reasoning#advice-on-prompting",
        None,
        Some("invalid_prompt"),
    )
}

fn bad_request(message: &str, param: Option<&str>, code: Option<&str>) -> Response<MockBody> {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        code,
    )
}

fn bad(message: &str, param: Option<&str>, code: Option<&str>) -> Box<Response<MockBody>> {
    Box::new(bad_request(message, param, code))
}

fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars.iter().take(3).collect();
    let tail: String = chars.iter().skip(chars.len() - 4).collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

pub(crate) fn check_auth(state: &State, parts: &Parts) -> Option<Response<MockBody>> {
    let expected = state.config.openai_api_key.as_deref()?;
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = header
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .and_then(|_| header.get(7..))
        .map(str::trim);
    match token {
        Some(t) if t == expected => None,
        Some(t) if !t.is_empty() => Some(error(
            StatusCode::UNAUTHORIZED,
            &format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                mask_key(t)
            ),
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )),
        _ => Some(error(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Text of a message's `content` (string, or the text parts of an array joined by one space)
/// and the number of `image_url` parts.
fn content_text(content: Option<&Value>) -> (String, usize) {
    match content {
        Some(Value::String(s)) => (s.clone(), 0),
        Some(Value::Array(parts)) => {
            let mut texts: Vec<&str> = Vec::new();
            let mut images = 0;
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = part.get("text").and_then(Value::as_str) {
                            texts.push(t);
                        }
                    }
                    Some("image_url") => images += 1,
                    _ => {}
                }
            }
            (texts.join(" "), images)
        }
        _ => (String::new(), 0),
    }
}

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Validates the request like OpenAI does (the subset that matters to a gateway).
fn validate(req: &Value) -> Result<(), Box<Response<MockBody>>> {
    let Some(obj) = req.as_object() else {
        return Err(bad(
            &format!(
                "Invalid type for request body: expected an object, but got {} instead.",
                type_name(req)
            ),
            None,
            Some("invalid_type"),
        ));
    };
    match obj.get("model") {
        None | Some(Value::Null) => {
            return Err(bad(
                "you must provide a model parameter",
                Some("model"),
                None,
            ));
        }
        Some(Value::String(_)) => {}
        Some(other) => {
            return Err(bad(
                &format!(
                    "Invalid type for 'model': expected a string, but got {} instead.",
                    type_name(other)
                ),
                Some("model"),
                Some("invalid_type"),
            ));
        }
    }
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => {
            return Err(bad(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                Some("missing_required_parameter"),
            ));
        }
        Some(Value::Array(m)) => m,
        Some(other) => {
            return Err(bad(
                &format!(
                    "Invalid type for 'messages': expected an array of objects, but got {} instead.",
                    type_name(other)
                ),
                Some("messages"),
                Some("invalid_type"),
            ));
        }
    };
    if messages.is_empty() {
        return Err(bad(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("messages"),
            Some("empty_array"),
        ));
    }
    let mut open_tool_calls = false;
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        if !m.is_object() {
            return Err(bad(
                &format!(
                    "Invalid type for '{param}': expected an object, but got {} instead.",
                    type_name(m)
                ),
                Some(&param),
                Some("invalid_type"),
            ));
        }
        let role_param = format!("messages[{i}].role");
        let role = match m.get("role") {
            None | Some(Value::Null) => {
                return Err(bad(
                    &format!("Missing required parameter: '{role_param}'."),
                    Some(&role_param),
                    Some("missing_required_parameter"),
                ));
            }
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
            Some(other) => {
                let shown = other
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| other.to_string());
                return Err(bad(
                    &format!(
                        "Invalid value: '{shown}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
                    ),
                    Some(&role_param),
                    Some("invalid_value"),
                ));
            }
        };
        let content = m.get("content");
        let has_tool_calls = m
            .get("tool_calls")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        match content {
            None | Some(Value::Null)
                if role == "assistant" && (has_tool_calls || m.get("function_call").is_some()) => {}
            None => {
                let content_param = format!("messages[{i}].content");
                return Err(bad(
                    &format!("Missing required parameter: '{content_param}'."),
                    Some(&content_param),
                    Some("missing_required_parameter"),
                ));
            }
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(Value::Null) if role == "assistant" => {}
            Some(other) => {
                let content_param = format!("messages[{i}].content");
                return Err(bad(
                    &format!(
                        "Invalid type for '{content_param}': expected one of a string or array of objects, but got {} instead.",
                        type_name(other)
                    ),
                    Some(&content_param),
                    Some("invalid_type"),
                ));
            }
        }
        if role == "tool" {
            if !open_tool_calls {
                return Err(bad(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                    Some(&param),
                    None,
                ));
            }
            if m.get("tool_call_id").and_then(Value::as_str).is_none() {
                let p = format!("messages[{i}].tool_call_id");
                return Err(bad(
                    &format!("Missing required parameter: '{p}'."),
                    Some(&p),
                    Some("missing_required_parameter"),
                ));
            }
        } else {
            open_tool_calls = role == "assistant" && has_tool_calls;
        }
    }
    if let Some(tools) = obj.get("tools") {
        let Some(tools) = tools.as_array() else {
            return Err(bad(
                &format!(
                    "Invalid type for 'tools': expected an array of objects, but got {} instead.",
                    type_name(tools)
                ),
                Some("tools"),
                Some("invalid_type"),
            ));
        };
        for (i, t) in tools.iter().enumerate() {
            if t.pointer("/function/name")
                .and_then(Value::as_str)
                .is_none()
            {
                let p = format!("tools[{i}].function.name");
                return Err(bad(
                    &format!("Missing required parameter: '{p}'."),
                    Some(&p),
                    Some("missing_required_parameter"),
                ));
            }
        }
    }
    if let Some(v) = obj.get("stream") {
        if !v.is_boolean() && !v.is_null() {
            return Err(bad(
                &format!(
                    "Invalid type for 'stream': expected a boolean, but got {} instead.",
                    type_name(v)
                ),
                Some("stream"),
                Some("invalid_type"),
            ));
        }
    }
    Ok(())
}

/// Name of the tool to call, if the mock should answer with a tool call.
fn tool_to_call(req: &Value, messages: &[Value]) -> Option<String> {
    let tools = req.get("tools")?.as_array()?;
    let first = tools.first()?;
    let choice = req.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    if messages.last()?.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let forced = choice
        .and_then(|c| c.pointer("/function/name"))
        .and_then(Value::as_str);
    let name = forced.or_else(|| first.pointer("/function/name").and_then(Value::as_str))?;
    Some(name.to_owned())
}

enum Reply {
    Text(Vec<String>),
    ToolCall(String),
}

pub(crate) async fn handle(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    if let Some(resp) = check_auth(state, parts) {
        return resp;
    }
    answer(state, parts, body).await
}

/// A chat completion request whose caller was authenticated (OpenAI's way or Azure's).
pub(crate) async fn answer(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return bad_request(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
                None,
                None,
            );
        }
    };
    if let Err(resp) = validate(&req) {
        return *resp;
    }
    let messages: &[Value] = req
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let model = req.get("model").and_then(Value::as_str).unwrap_or_default();

    let mut prompt_tokens = 0;
    for m in messages {
        prompt_tokens += count_words(&content_text(m.get("content")).0);
    }
    let prompt_tokens = prompt_tokens.max(1);

    let (user_text, images) = messages
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
        return status_error(status);
    }

    let reply = match tool_to_call(&req, messages) {
        Some(name) => Reply::ToolCall(name),
        None => {
            let pieces: Vec<String> = match directives.chunks {
                Some(n) => numbered_chunks(n),
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
            Reply::Text(apply_stop(pieces, &stop_list(&req)))
        }
    };
    let completion_tokens = match &reply {
        Reply::Text(p) => count_words(&p.concat()),
        Reply::ToolCall(_) => count_words(TOOL_ARGUMENTS),
    };
    let usage = wire::Usage::new(prompt_tokens, completion_tokens);

    let n = state.next_id();
    let id = format!("chatcmpl-mock-{n}");
    let created = now_unix();
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut resp = if stream {
        let include_usage = req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let ctx = StreamCtx {
            id: &id,
            created,
            model,
            include_usage,
        };
        let events = stream_events(&ctx, &reply, &directives, usage);
        sse_response(events, directives.delay())
    } else {
        if let Some(ms) = directives.delay_ms.filter(|ms| *ms > 0) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let text;
        let (message, finish_reason) = match &reply {
            Reply::Text(p) => {
                text = p.concat();
                (
                    wire::Message {
                        role: "assistant",
                        content: Some(&text),
                        tool_calls: None,
                        refusal: None,
                        annotations: [],
                    },
                    "stop",
                )
            }
            Reply::ToolCall(name) => (
                wire::Message {
                    role: "assistant",
                    content: None,
                    tool_calls: Some([wire::ToolCall {
                        id: TOOL_CALL_ID,
                        kind: "function",
                        function: wire::Function {
                            name,
                            arguments: TOOL_ARGUMENTS,
                        },
                    }]),
                    refusal: None,
                    annotations: [],
                },
                "tool_calls",
            ),
        };
        let completion = wire::Completion {
            id: &id,
            object: "chat.completion",
            created,
            model,
            choices: [wire::Choice {
                index: 0,
                message,
                logprobs: None,
                finish_reason,
            }],
            usage,
            service_tier: "default",
            system_fingerprint: FINGERPRINT,
        };
        response(
            StatusCode::OK,
            "application/json",
            MockBody::full(to_json_bytes(&completion)),
        )
    };
    set_header(&mut resp, "x-request-id", &format!("req_mock_{n}"));
    resp
}

/// `stop`: a string or an array of strings.
fn stop_list(req: &Value) -> Vec<String> {
    match req.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Cuts the reply before the earliest stop sequence (OpenAI leaves the stop text out).
fn apply_stop(pieces: Vec<String>, stops: &[String]) -> Vec<String> {
    if stops.is_empty() {
        return pieces;
    }
    let full = pieces.concat();
    let Some((cut, _)) = find_stop(&full, stops) else {
        return pieces;
    };
    let mut out = Vec::new();
    let mut pos = 0;
    for p in pieces {
        if pos >= cut {
            break;
        }
        let end = pos + p.len();
        if end <= cut {
            pos = end;
            out.push(p);
        } else {
            if let Some(head) = p.get(..cut - pos) {
                out.push(head.to_owned());
            }
            break;
        }
    }
    out
}

struct StreamCtx<'a> {
    id: &'a str,
    created: u64,
    model: &'a str,
    include_usage: bool,
}

impl StreamCtx<'_> {
    fn chunk(&self, delta: wire::Delta<'_>, finish_reason: Option<&str>) -> Bytes {
        sse_data(&wire::Chunk {
            id: self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model,
            service_tier: "default",
            system_fingerprint: FINGERPRINT,
            choices: vec![wire::ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: if self.include_usage {
                Field::Null
            } else {
                Field::Absent
            },
        })
    }

    fn usage_chunk(&self, usage: wire::Usage) -> Bytes {
        sse_data(&wire::Chunk {
            id: self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model,
            service_tier: "default",
            system_fingerprint: FINGERPRINT,
            choices: Vec::new(),
            usage: Field::Value(usage),
        })
    }
}

fn stream_error_event() -> Bytes {
    sse_data(&wire::ErrorBody {
        error: wire::ErrorObject {
            message: "The server had an error while processing your request. Sorry about that! (mock:stream_error)",
            kind: "server_error",
            param: None,
            code: None,
        },
    })
}

fn stream_events(
    ctx: &StreamCtx<'_>,
    reply: &Reply,
    d: &Directives,
    usage: wire::Usage,
) -> Vec<Bytes> {
    let mut events = Vec::new();
    let finish_reason = match reply {
        Reply::Text(pieces) => {
            events.reserve(pieces.len() + 4);
            events.push(ctx.chunk(
                wire::Delta {
                    role: Some("assistant"),
                    content: Field::Value(""),
                    refusal: Field::Null,
                    ..Default::default()
                },
                None,
            ));
            for (i, p) in pieces.iter().enumerate() {
                events.push(ctx.chunk(
                    wire::Delta {
                        content: Field::Value(p),
                        ..Default::default()
                    },
                    None,
                ));
                if i == 0 && d.stream_error {
                    events.push(stream_error_event());
                    return events;
                }
                if i == 0 && d.stream_cut {
                    return events;
                }
            }
            "stop"
        }
        Reply::ToolCall(name) => {
            events.push(ctx.chunk(
                wire::Delta {
                    role: Some("assistant"),
                    content: Field::Null,
                    tool_calls: Some([wire::DeltaToolCall {
                        index: 0,
                        id: Some(TOOL_CALL_ID),
                        kind: Some("function"),
                        function: wire::DeltaFunction {
                            name: Some(name),
                            arguments: "",
                        },
                    }]),
                    refusal: Field::Null,
                },
                None,
            ));
            for (i, piece) in split_even(TOOL_ARGUMENTS, 4).into_iter().enumerate() {
                events.push(ctx.chunk(
                    wire::Delta {
                        tool_calls: Some([wire::DeltaToolCall {
                            index: 0,
                            id: None,
                            kind: None,
                            function: wire::DeltaFunction {
                                name: None,
                                arguments: piece,
                            },
                        }]),
                        ..Default::default()
                    },
                    None,
                ));
                if i == 0 && d.stream_error {
                    events.push(stream_error_event());
                    return events;
                }
                if i == 0 && d.stream_cut {
                    return events;
                }
            }
            "tool_calls"
        }
    };
    events.push(ctx.chunk(wire::Delta::default(), Some(finish_reason)));
    if ctx.include_usage {
        events.push(ctx.usage_chunk(usage));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stop_cuts_pieces() {
        let pieces: Vec<String> = ["echo:", " hello", " STOP", " world"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = apply_stop(pieces.clone(), &["STOP".to_owned()]);
        assert_eq!(out.concat(), "echo: hello ");
        let out = apply_stop(pieces.clone(), &["llo".to_owned()]);
        assert_eq!(out, vec!["echo:".to_owned(), " he".to_owned()]);
        assert_eq!(apply_stop(pieces.clone(), &[]), pieces);
    }

    #[test]
    fn masks_keys() {
        assert_eq!(mask_key("sk-abcdefghijkl"), "sk-********ijkl");
        assert_eq!(mask_key("short"), "*****");
    }

    #[test]
    fn content_text_parts() {
        let c = json!([{"type": "text", "text": "a b"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "c"}]);
        assert_eq!(content_text(Some(&c)), ("a b c".to_owned(), 1));
        assert_eq!(content_text(Some(&json!("x"))), ("x".to_owned(), 0));
        assert_eq!(content_text(None), (String::new(), 0));
    }
}
