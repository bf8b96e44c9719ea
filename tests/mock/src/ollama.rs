//! Ollama's native chat API: `POST /api/chat`. It streams newline-delimited JSON
//! (`application/x-ndjson`) unless the body says `"stream": false`, as Ollama does; errors
//! are `{"error": "<text>"}`.
//!
//! The body is checked the way Ollama's Go decoder reads it, and stricter where a gateway
//! could get the translation wrong and real Ollama would silently ignore it: `model` and
//! `messages` are required, `content` must be a string (not OpenAI's array of parts),
//! `images` standard base64 (a data URL fails as Go's decoder fails it: "illegal base64
//! data at input byte 4"), tool call `arguments` an object (not OpenAI's string); OpenAI
//! fields at the top level (`max_tokens`, `temperature`, `response_format` ...) and options
//! Ollama does not know are refused (Ollama ignores them, which would hide a parameter lost
//! in translation). With an Ollama key configured, `authorization: Bearer <key>` is required
//! (401 `{"error":"unauthorized"}`, as ollama.com answers). A model whose name starts with
//! `missing` does not exist (404 `model '<name>' not found`).

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::body::MockBody;
use crate::common::{
    count_words, find_stop, numbered_chunks, raw_error, response, split_words_keep_spaces,
    Directives,
};
use crate::State;

/// The endpoint.
pub(crate) const CHAT_PATH: &str = "/api/chat";

/// An Ollama error body: `{"error": "<message>"}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let body = serde_json::to_vec(&json!({ "error": message })).unwrap_or_default();
    response(
        status,
        "application/json; charset=utf-8",
        MockBody::full(Bytes::from(body)),
    )
}

fn invalid(message: &str) -> Response<MockBody> {
    error(StatusCode::BAD_REQUEST, message)
}

/// Ollama's 400 for an input over the model's context length.
pub(crate) const CONTEXT_LENGTH_MESSAGE: &str = "the input length exceeds the context length";

/// The error Ollama would send for `status` (used by `mock:status=NNN`).
pub(crate) fn status_error(status: StatusCode, model: &str) -> Response<MockBody> {
    let message = match status.as_u16() {
        400 => "invalid request (mock:status=400)".to_owned(),
        401 => "unauthorized".to_owned(),
        404 => format!("model '{model}' not found"),
        429 => "too many requests (mock:status=429)".to_owned(),
        503 => "server busy, please try again.  maximum pending requests exceeded".to_owned(),
        _ => "llama runner process has terminated: exit status 2".to_owned(),
    };
    error(status, &message)
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Top-level fields of Ollama's `ChatRequest`.
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "format",
    "keep_alive",
    "tools",
    "options",
    "think",
    "truncate",
    "shift",
    "logprobs",
    "top_logprobs",
];

/// OpenAI's chat fields, which a gateway must translate (Ollama ignores them unread).
const OPENAI_FIELDS: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "response_format",
    "tool_choice",
    "parallel_tool_calls",
    "n",
    "stream_options",
    "user",
    "functions",
];

/// Fields of Ollama's `Message`.
const MESSAGE_FIELDS: &[&str] = &[
    "role",
    "content",
    "thinking",
    "images",
    "tool_calls",
    "tool_name",
    "tool_call_id",
];

/// Options Ollama reads (its Modelfile parameters), with whether each is an integer.
const OPTIONS: &[(&str, OptionType)] = &[
    ("num_keep", OptionType::Integer),
    ("seed", OptionType::Integer),
    ("num_predict", OptionType::Integer),
    ("top_k", OptionType::Integer),
    ("top_p", OptionType::Number),
    ("min_p", OptionType::Number),
    ("typical_p", OptionType::Number),
    ("repeat_last_n", OptionType::Integer),
    ("temperature", OptionType::Number),
    ("repeat_penalty", OptionType::Number),
    ("presence_penalty", OptionType::Number),
    ("frequency_penalty", OptionType::Number),
    ("stop", OptionType::Strings),
    ("num_ctx", OptionType::Integer),
    ("num_batch", OptionType::Integer),
    ("num_gpu", OptionType::Integer),
    ("main_gpu", OptionType::Integer),
    ("use_mmap", OptionType::Boolean),
    ("num_thread", OptionType::Integer),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum OptionType {
    Integer,
    Number,
    Strings,
    Boolean,
}

/// What Go's decoder says when a JSON value does not fit the field.
fn cannot_unmarshal(value: &Value, field: &str, go_type: &str) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    format!("json: cannot unmarshal {kind} into Go struct field {field} of type {go_type}")
}

/// Go's `encoding/base64` standard alphabet with padding, as `[]byte` fields decode it.
fn check_base64(text: &str) -> Result<(), String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(|_| ())
        .map_err(|_| {
            let at = text
                .bytes()
                .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')))
                .unwrap_or(text.len());
            format!("illegal base64 data at input byte {at}")
        })
}

/// What the answer depends on.
#[derive(Default)]
struct Checked {
    stream: bool,
    tools: Vec<String>,
    json: bool,
    stop: Vec<String>,
    num_predict: Option<u64>,
}

fn validate_options(options: &Map<String, Value>, checked: &mut Checked) -> Result<(), String> {
    for (name, value) in options {
        let Some((_, kind)) = OPTIONS.iter().find(|(known, _)| known == name) else {
            return Err(format!(
                "invalid option provided: {name} (tollgate-mock refuses options Ollama does not know; Ollama ignores them with a warning)"
            ));
        };
        let fits = match kind {
            OptionType::Integer => value.as_i64().is_some(),
            OptionType::Number => value.is_number(),
            OptionType::Boolean => value.is_boolean(),
            OptionType::Strings => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
        };
        if !fits {
            return Err(format!(
                "option \"{name}\" must be of type {}",
                match kind {
                    OptionType::Integer => "integer",
                    OptionType::Number => "float",
                    OptionType::Boolean => "bool",
                    OptionType::Strings => "[]string",
                }
            ));
        }
        match name.as_str() {
            "stop" => {
                checked.stop = value
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
            }
            "num_predict" => checked.num_predict = value.as_u64(),
            _ => {}
        }
    }
    Ok(())
}

fn validate_tools(tools: &Value) -> Result<Vec<String>, String> {
    let tools = tools
        .as_array()
        .ok_or_else(|| cannot_unmarshal(tools, "ChatRequest.tools", "api.Tools"))?;
    let mut names = Vec::new();
    for tool in tools {
        let tool = tool
            .as_object()
            .ok_or_else(|| cannot_unmarshal(tool, "ChatRequest.tools", "api.Tool"))?;
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err("tools must be of type \"function\"".to_owned());
        }
        let function = tool
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| "a tool needs its function".to_owned())?;
        let name = function.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            return Err("a tool's function needs a name".to_owned());
        }
        if let Some(parameters) = function.get("parameters") {
            if !parameters.is_object() {
                return Err(cannot_unmarshal(
                    parameters,
                    "Tool.function.parameters",
                    "api.ToolFunctionParameters",
                ));
            }
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

fn validate_message(
    index: usize,
    message: &Value,
    earlier_calls: &[String],
) -> Result<Vec<String>, String> {
    let message = message
        .as_object()
        .ok_or_else(|| cannot_unmarshal(message, "ChatRequest.messages", "api.Message"))?;
    for key in message.keys() {
        if !MESSAGE_FIELDS.contains(&key.as_str()) {
            return Err(format!(
                "messages[{index}]: unknown field \"{key}\" (tollgate-mock refuses fields Ollama's Message does not have)"
            ));
        }
    }
    let role = match message.get("role") {
        Some(Value::String(role)) => role.to_ascii_lowercase(),
        Some(other) => return Err(cannot_unmarshal(other, "Message.messages.role", "string")),
        None => return Err(format!("messages[{index}]: role is required")),
    };
    if !matches!(role.as_str(), "system" | "user" | "assistant" | "tool") {
        return Err(format!("messages[{index}]: invalid role \"{role}\""));
    }
    if let Some(content) = message.get("content") {
        if !content.is_string() {
            return Err(cannot_unmarshal(
                content,
                "Message.messages.content",
                "string",
            ));
        }
    }
    if let Some(images) = message.get("images") {
        let images = images.as_array().ok_or_else(|| {
            cannot_unmarshal(images, "Message.messages.images", "[]api.ImageData")
        })?;
        for image in images {
            let text = image.as_str().ok_or_else(|| {
                cannot_unmarshal(image, "Message.messages.images", "api.ImageData")
            })?;
            check_base64(text)?;
        }
    }
    for name in ["tool_name", "tool_call_id", "thinking"] {
        if let Some(value) = message.get(name) {
            if !value.is_string() {
                return Err(cannot_unmarshal(
                    value,
                    &format!("Message.messages.{name}"),
                    "string",
                ));
            }
        }
    }
    let mut calls = Vec::new();
    if let Some(tool_calls) = message.get("tool_calls") {
        let tool_calls = tool_calls.as_array().ok_or_else(|| {
            cannot_unmarshal(tool_calls, "Message.messages.tool_calls", "[]api.ToolCall")
        })?;
        for call in tool_calls {
            let function = call
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    cannot_unmarshal(call, "Message.messages.tool_calls", "api.ToolCall")
                })?;
            let name = function.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(arguments) = function.get("arguments") {
                if !arguments.is_object() {
                    return Err(cannot_unmarshal(
                        arguments,
                        "ToolCall.function.arguments",
                        "map[string]interface {}",
                    ));
                }
            }
            calls.push(name.to_owned());
        }
    }
    // Not checked by Ollama, which takes the name as a hint: checked here so that a gateway
    // that names the wrong function (or sends results of calls never made) is caught.
    if let Some(name) = message.get("tool_name").and_then(Value::as_str) {
        if role != "tool" {
            return Err(format!("messages[{index}]: tool_name is for tool messages"));
        }
        if !earlier_calls.iter().any(|called| called == name) {
            return Err(format!(
                "messages[{index}]: tool_name \"{name}\" names no tool call of an earlier assistant message"
            ));
        }
    }
    Ok(calls)
}

fn validate(request: &Value) -> Result<Checked, String> {
    let request = request
        .as_object()
        .ok_or_else(|| "json: cannot unmarshal into Go value of type api.ChatRequest".to_owned())?;
    for key in request.keys() {
        if OPENAI_FIELDS.contains(&key.as_str()) {
            return Err(format!(
                "unknown field \"{key}\": an OpenAI field Ollama's /api/chat does not read (Ollama ignores it; tollgate-mock refuses it)"
            ));
        }
        if !REQUEST_FIELDS.contains(&key.as_str()) {
            return Err(format!(
                "unknown field \"{key}\" (tollgate-mock refuses fields Ollama's ChatRequest does not have)"
            ));
        }
    }
    match request.get("model") {
        Some(Value::String(model)) if !model.is_empty() => {}
        Some(Value::String(_)) | None | Some(Value::Null) => return Err("model is required".into()),
        Some(other) => return Err(cannot_unmarshal(other, "ChatRequest.model", "string")),
    }
    let messages = match request.get("messages") {
        Some(Value::Array(messages)) => messages,
        Some(other) => {
            return Err(cannot_unmarshal(
                other,
                "ChatRequest.messages",
                "[]api.Message",
            ))
        }
        None => return Err("messages is required (tollgate-mock does not load models)".into()),
    };
    let mut checked = Checked {
        stream: true,
        ..Checked::default()
    };
    let mut earlier_calls = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let calls = validate_message(index, message, &earlier_calls)?;
        earlier_calls.extend(calls);
    }
    match request.get("stream") {
        Some(Value::Bool(stream)) => checked.stream = *stream,
        Some(Value::Null) | None => {}
        Some(other) => return Err(cannot_unmarshal(other, "ChatRequest.stream", "bool")),
    }
    match request.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(format)) if format == "json" => checked.json = true,
        Some(Value::String(format)) if format.is_empty() => {}
        Some(Value::Object(_)) => checked.json = true,
        Some(other) => return Err(format!("invalid format: {other}")),
    }
    if let Some(tools) = request.get("tools").filter(|tools| !tools.is_null()) {
        checked.tools = validate_tools(tools)?;
    }
    match request.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(options)) => validate_options(options, &mut checked)?,
        Some(other) => {
            return Err(cannot_unmarshal(
                other,
                "ChatRequest.options",
                "map[string]interface {}",
            ))
        }
    }
    Ok(checked)
}

// ---------------------------------------------------------------------------------------------
// Answer
// ---------------------------------------------------------------------------------------------

fn tool_args() -> Value {
    json!({"location": "Paris", "unit": "celsius"})
}

/// `mock:cached_prompt` (Ollama only): the answer leaves `prompt_eval_count` out, as Ollama
/// does for a prompt served from its cache.
fn cached_prompt(text: &str) -> bool {
    text.split_whitespace().any(|word| {
        word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()) == "mock:cached_prompt"
    })
}

/// `created_at` of the `n`th answer: a fixed day, the answer's number as nanoseconds (Ollama
/// writes its timestamps with nanoseconds), so every answer differs and none depends on the
/// clock.
fn created_at(n: u64) -> String {
    format!("2025-01-01T00:00:00.{:09}Z", n % 1_000_000_000)
}

enum Reply {
    Text {
        pieces: Vec<String>,
        reason: &'static str,
    },
    Call(String),
}

fn line(
    model: &str,
    created_at: &str,
    message: Value,
    done: Option<(&str, Option<u64>, u64)>,
) -> Value {
    let mut line = json!({"model": model, "created_at": created_at, "message": message, "done": done.is_some()});
    if let (Some((reason, prompt, eval)), Some(object)) = (done, line.as_object_mut()) {
        object.insert("done_reason".into(), reason.into());
        object.insert("total_duration".into(), 182_242_375.into());
        object.insert("load_duration".into(), 41_295_167.into());
        if let Some(prompt) = prompt {
            object.insert("prompt_eval_count".into(), prompt.into());
        }
        object.insert("prompt_eval_duration".into(), 24_573_166.into());
        // Go's omitempty: a count of 0 is left out.
        if eval > 0 {
            object.insert("eval_count".into(), eval.into());
        }
        object.insert("eval_duration".into(), 115_959_084.into());
    }
    line
}

pub(crate) async fn handle(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    if parts.uri.path() != CHAT_PATH {
        return response(
            StatusCode::NOT_FOUND,
            "text/plain",
            MockBody::full(Bytes::from_static(b"404 page not found")),
        );
    }
    if let Some(expected) = state.config.ollama_api_key.as_deref() {
        let given = parts
            .headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if given != Some(expected) {
            return error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    if body.is_empty() {
        return invalid("missing request body");
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => return invalid(&format!("invalid character in request body: {e}")),
    };
    let checked = match validate(&request) {
        Ok(checked) => checked,
        Err(message) => return invalid(&message),
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if model.starts_with("missing") {
        return error(StatusCode::NOT_FOUND, &format!("model '{model}' not found"));
    }
    let n = state.next_id();
    let created = created_at(n);
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text_of = |message: &Value| {
        message
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if messages.is_empty() {
        // Ollama loads the model and says so.
        let answer = line(
            &model,
            &created,
            json!({"role": "assistant", "content": ""}),
            None,
        );
        let mut answer = answer;
        if let Some(object) = answer.as_object_mut() {
            object.insert("done".into(), true.into());
            object.insert("done_reason".into(), "load".into());
        }
        return response(
            StatusCode::OK,
            "application/json; charset=utf-8",
            MockBody::full(Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())),
        );
    }
    let prompt_tokens = messages
        .iter()
        .map(|message| count_words(&text_of(message)))
        .sum::<u64>()
        .max(1);
    // The turn being answered: the tool results after the last assistant message, or the
    // last user message.
    let answered_a_call = messages
        .last()
        .and_then(|message| message.get("role"))
        .and_then(Value::as_str)
        == Some("tool");
    let (user_text, images) = if answered_a_call {
        let results: Vec<String> = messages
            .iter()
            .rev()
            .take_while(|message| message.get("role").and_then(Value::as_str) == Some("tool"))
            .map(text_of)
            .collect();
        (results.into_iter().rev().collect::<Vec<_>>().join(" "), 0)
    } else {
        messages
            .iter()
            .rev()
            .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
            .map(|message| {
                let images = message
                    .get("images")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                (text_of(message), images)
            })
            .unwrap_or_default()
    };
    let directives = Directives::for_request(&user_text, parts);
    if directives.raw_error {
        return raw_error();
    }
    if let Some(status) = directives.error_status() {
        return status_error(status, &model);
    }
    let prompt_reported = (!cached_prompt(&user_text)).then_some(prompt_tokens);

    let reply = match checked.tools.first() {
        Some(name) if !answered_a_call => Reply::Call(name.clone()),
        _ => {
            let full = match directives.chunks {
                Some(count) => numbered_chunks(count).concat(),
                None if checked.json => json!({"echo": user_text}).to_string(),
                None => {
                    let mut text = format!("echo: {user_text}");
                    if images > 0 {
                        text.push_str(&format!(" [images: {images}]"));
                    }
                    text
                }
            };
            let mut text = match find_stop(&full, &checked.stop) {
                Some((cut, _)) => full.get(..cut).unwrap_or_default().to_owned(),
                None => full,
            };
            let mut reason = "stop";
            if let Some(max) = checked.num_predict {
                let words: Vec<&str> = split_words_keep_spaces(&text);
                if words.len() as u64 > max {
                    text = words
                        .iter()
                        .take(usize::try_from(max).unwrap_or(0))
                        .copied()
                        .collect();
                    reason = "length";
                }
            }
            let pieces = split_words_keep_spaces(&text)
                .into_iter()
                .map(str::to_owned)
                .collect();
            Reply::Text { pieces, reason }
        }
    };
    let eval_tokens = match &reply {
        Reply::Text { pieces, .. } => count_words(&pieces.concat()),
        Reply::Call(_) => count_words(&tool_args().to_string()),
    };
    let call_message = |name: &str| {
        json!({"role": "assistant", "content": "",
            "tool_calls": [{"function": {"index": 0, "name": name, "arguments": tool_args()}}]})
    };

    if !checked.stream {
        if let Some(ms) = directives.delay_ms.filter(|ms| *ms > 0) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let (message, reason) = match &reply {
            Reply::Text { pieces, reason } => (
                json!({"role": "assistant", "content": pieces.concat()}),
                *reason,
            ),
            Reply::Call(name) => (call_message(name), "stop"),
        };
        let answer = line(
            &model,
            &created,
            message,
            Some((reason, prompt_reported, eval_tokens)),
        );
        return response(
            StatusCode::OK,
            "application/json; charset=utf-8",
            MockBody::full(Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())),
        );
    }

    // One line per word, then the last line with the reason and the counts (its content
    // empty); a tool call comes whole in one line.
    let mut lines: Vec<Value> = Vec::new();
    let reason = match &reply {
        Reply::Call(name) => {
            lines.push(line(&model, &created, call_message(name), None));
            if directives.stream_cut {
                return ndjson_response(lines, &directives);
            }
            "stop"
        }
        Reply::Text { pieces, reason } => {
            for (index, piece) in pieces.iter().enumerate() {
                lines.push(line(
                    &model,
                    &created,
                    json!({"role": "assistant", "content": piece}),
                    None,
                ));
                if index == 0 && directives.stream_error {
                    lines
                        .push(json!({"error": "an error was encountered while running the model"}));
                    break;
                }
                if index == 0 && directives.stream_cut {
                    return ndjson_response(lines, &directives);
                }
            }
            reason
        }
    };
    if !directives.stream_error || matches!(reply, Reply::Call(_)) {
        lines.push(line(
            &model,
            &created,
            json!({"role": "assistant", "content": ""}),
            Some((reason, prompt_reported, eval_tokens)),
        ));
    }
    ndjson_response(lines, &directives)
}

/// A newline-delimited JSON stream of `lines`.
fn ndjson_response(lines: Vec<Value>, directives: &Directives) -> Response<MockBody> {
    let frames: Vec<Bytes> = lines
        .iter()
        .map(|line| {
            let mut frame = serde_json::to_vec(line).unwrap_or_default();
            frame.push(b'\n');
            Bytes::from(frame)
        })
        .collect();
    response(
        StatusCode::OK,
        "application/x-ndjson",
        MockBody::paced(frames, directives.delay()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(request: Value) -> Result<(), String> {
        validate(&request).map(|_| ())
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn bodies_are_checked_as_ollama_reads_them() {
        assert_eq!(ok(json!({"model": "m", "messages": [user("hi")]})), Ok(()));
        assert_eq!(
            ok(json!({"messages": [user("hi")]})),
            Err("model is required".to_owned())
        );
        assert!(ok(json!({"model": "m"})).is_err_and(|e| e.starts_with("messages is required")));
        assert!(
            ok(json!({"model": "m", "messages": [user("hi")], "max_tokens": 5}))
                .is_err_and(|e| e.contains("OpenAI field"))
        );
        assert_eq!(
            ok(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})),
            Err("json: cannot unmarshal array into Go struct field Message.messages.content of type string".to_owned())
        );
        assert_eq!(
            ok(
                json!({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["data:image/png;base64,QQ=="]}]})
            ),
            Err("illegal base64 data at input byte 4".to_owned())
        );
        assert_eq!(
            ok(
                json!({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["iVBORw0KGgo="]}]})
            ),
            Ok(())
        );
        let call = |arguments: Value| json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": arguments}}]});
        assert_eq!(
            ok(json!({"model": "m", "messages": [user("hi"), call(json!({"a": 1}))]})),
            Ok(())
        );
        assert!(
            ok(json!({"model": "m", "messages": [user("hi"), call(json!("{\"a\":1}"))]}))
                .is_err_and(|e| e.contains("cannot unmarshal string"))
        );
        let result = |name: &str| json!({"role": "tool", "content": "18C", "tool_name": name});
        assert_eq!(
            ok(json!({"model": "m", "messages": [user("hi"), call(json!({})), result("f")]})),
            Ok(())
        );
        assert!(
            ok(json!({"model": "m", "messages": [user("hi"), call(json!({})), result("g")]}))
                .is_err_and(|e| e.contains("names no tool call"))
        );
        assert!(
            ok(json!({"model": "m", "messages": [user("hi")], "options": {"max_tokens": 5}}))
                .is_err_and(|e| e.starts_with("invalid option provided: max_tokens"))
        );
        assert!(ok(
            json!({"model": "m", "messages": [user("hi")], "options": {"num_predict": "5"}})
        )
        .is_err_and(|e| e.contains("integer")));
        assert!(
            ok(json!({"model": "m", "messages": [user("hi")], "format": "yaml"}))
                .is_err_and(|e| e.starts_with("invalid format"))
        );
        assert!(
            ok(json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}))
                .is_err_and(|e| e.contains("invalid role"))
        );
        assert!(ok(
            json!({"model": "m", "messages": [{"role": "user", "content": "x", "name": "bob"}]})
        )
        .is_err_and(|e| e.contains("unknown field \"name\"")));
    }

    #[test]
    fn directives_and_timestamps() {
        assert!(cached_prompt("hi mock:cached_prompt."));
        assert!(!cached_prompt("hi"));
        assert_eq!(created_at(7), "2025-01-01T00:00:00.000000007Z");
    }
}
