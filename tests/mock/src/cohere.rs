//! Cohere's v2 Chat API: `POST /v2/chat`, `Authorization: Bearer <key>`, server-sent events
//! when the body says `"stream": true`.
//!
//! The body is checked the way Cohere checks it: unknown fields are refused with 422
//! ("unknown field: parameter top_p is not a valid field", which is what an OpenAI field left
//! untranslated gets), `model` and a non-empty `messages` are required, roles are `system`,
//! `user`, `assistant` and `tool` with the fields and content blocks each takes, a tool
//! message answers a tool call an earlier assistant message made, tools are function tools
//! with `parameters`, `tool_choice` is `REQUIRED` or `NONE` and comes with tools, `p` is in
//! [0.01, 0.99] and at most 5 `stop_sequences`. Errors are `{"id", "message"}`.

use bytes::Bytes;
use hyper::header::AUTHORIZATION;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::body::MockBody;
use crate::common::{
    count_words, find_stop, numbered_chunks, raw_error, response, split_even,
    split_words_keep_spaces, Directives,
};
use crate::wire::sse_event;
use crate::State;

/// Tokens Cohere's prompt template adds to every request: counted in `usage.tokens`, not
/// billed (`usage.billed_units`).
pub(crate) const TEMPLATE_TOKENS: u64 = 64;

/// The fields of a v2 chat request.
const REQUEST_FIELDS: &[&str] = &[
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

/// A Cohere error body: `{"id", "message"}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let body = serde_json::to_vec(&json!({
        "id": "00000000-0000-4000-8000-00000000e770",
        "message": message,
    }))
    .unwrap_or_default();
    response(
        status,
        "application/json",
        MockBody::full(Bytes::from(body)),
    )
}

/// Cohere's 400 for a prompt over the model's context window.
pub(crate) const CONTEXT_LENGTH_MESSAGE: &str = "too many tokens: size limit exceeded by 1502 tokens. Try using shorter or fewer inputs, or setting prompt_truncation='AUTO'.";

/// Cohere's content-policy refusal: 498 "blocked output".
pub(crate) fn content_blocked() -> Response<MockBody> {
    let status = StatusCode::from_u16(498).unwrap_or(StatusCode::BAD_REQUEST);
    error(
        status,
        "blocked output: please adjust your prompt and try again, as this generation may be a potential violation of our Usage Guidelines",
    )
}

/// The error Cohere would send for `status` (used by `mock:status=NNN`).
pub(crate) fn status_error(status: StatusCode) -> Response<MockBody> {
    let message = match status.as_u16() {
        400 => "invalid request: the request is not valid (mock:status=400)",
        401 => "invalid api token",
        402 => "Please add or update your payment method to continue (mock:status=402)",
        403 => "You do not have access to this model (mock:status=403)",
        404 => "model 'command-x' not found, make sure the correct model ID was used and that you have access to the model.",
        422 => "unknown field: parameter mock is not a valid field (mock:status=422)",
        429 => "You are using a Trial key, which is limited to 10 API calls / minute. (mock:status=429)",
        498 => "blocked output: please adjust your prompt and try again, as this generation may be a potential violation of our Usage Guidelines (mock:status=498)",
        499 => "request cancelled (mock:status=499)",
        503 => "service unavailable (mock:status=503)",
        504 => "request timed out (mock:status=504)",
        _ => "internal server error, this has been reported to our developers. (mock:status)",
    };
    error(status, message)
}

fn unknown_field(name: &str) -> String {
    format!("unknown field: parameter {name} is not a valid field. For proper usage, please refer to https://docs.cohere.com/reference/chat")
}

/// A refused body: 422 for a field v2 does not have, 400 for a bad value.
enum Refusal {
    Unknown(String),
    Invalid(String),
}

impl Refusal {
    fn response(self) -> Response<MockBody> {
        match self {
            Refusal::Unknown(message) => error(StatusCode::UNPROCESSABLE_ENTITY, &message),
            Refusal::Invalid(message) => error(StatusCode::BAD_REQUEST, &message),
        }
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::Invalid(format!("invalid request: {}", message.into()))
}

fn known(obj: &Map<String, Value>, names: &[&str], path: &str) -> Result<(), Refusal> {
    match obj.keys().find(|key| !names.contains(&key.as_str())) {
        Some(key) if path.is_empty() => Err(Refusal::Unknown(unknown_field(key))),
        Some(key) => Err(Refusal::Unknown(unknown_field(&format!("{path}.{key}")))),
        None => Ok(()),
    }
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, Refusal> {
    value
        .as_object()
        .ok_or_else(|| invalid(format!("{path} must be an object")))
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, Refusal> {
    value
        .as_str()
        .ok_or_else(|| invalid(format!("{path} must be a string")))
}

fn number(value: &Value, path: &str) -> Result<f64, Refusal> {
    value
        .as_f64()
        .ok_or_else(|| invalid(format!("{path} must be a number")))
}

fn unsigned(value: &Value, path: &str) -> Result<u64, Refusal> {
    value
        .as_u64()
        .ok_or_else(|| invalid(format!("{path} must be a non-negative integer")))
}

/// What the mock needs to know about one validated message.
#[derive(Default)]
struct MessageFacts {
    role: String,
    /// Its text: string content, text blocks, the tool plan, a tool result's text.
    text: String,
    images: usize,
}

/// The text of a content (a string or blocks of the `allowed` types), and its images.
fn content(value: &Value, path: &str, allowed: &[&str]) -> Result<(String, usize), Refusal> {
    if let Some(text) = value.as_str() {
        return Ok((text.to_owned(), 0));
    }
    let blocks = value.as_array().ok_or_else(|| {
        invalid(format!(
            "{path} must be a string or a list of content blocks"
        ))
    })?;
    let mut texts = Vec::new();
    let mut images = 0;
    for (index, block) in blocks.iter().enumerate() {
        let block_path = format!("{path}[{index}]");
        let obj = object(block, &block_path)?;
        let kind = obj
            .get("type")
            .map(|kind| string(kind, &format!("{block_path}.type")))
            .transpose()?
            .unwrap_or_default();
        if !allowed.contains(&kind) {
            return Err(invalid(format!(
                "{block_path}.type must be one of {allowed:?}, got '{kind}'"
            )));
        }
        match kind {
            "text" => {
                known(obj, &["type", "text"], &block_path)?;
                let text = obj
                    .get("text")
                    .ok_or_else(|| invalid(format!("{block_path}.text is required")))?;
                texts.push(string(text, &format!("{block_path}.text"))?.to_owned());
            }
            "thinking" => {
                known(obj, &["type", "thinking"], &block_path)?;
            }
            "image_url" => {
                known(obj, &["type", "image_url"], &block_path)?;
                let image_path = format!("{block_path}.image_url");
                let image = object(
                    obj.get("image_url")
                        .ok_or_else(|| invalid(format!("{image_path} is required")))?,
                    &image_path,
                )?;
                known(image, &["url", "detail"], &image_path)?;
                let url = string(
                    image
                        .get("url")
                        .ok_or_else(|| invalid(format!("{image_path}.url is required")))?,
                    &format!("{image_path}.url"),
                )?;
                if !(url.starts_with("data:image/")
                    || url.starts_with("https://")
                    || url.starts_with("http://"))
                {
                    return Err(invalid(format!(
                        "{image_path}.url must be a base64 data URI or a web URL"
                    )));
                }
                if let Some(detail) = image.get("detail") {
                    let detail = string(detail, &format!("{image_path}.detail"))?;
                    if !["auto", "low", "high"].contains(&detail) {
                        return Err(invalid(format!(
                            "{image_path}.detail must be one of auto, low, high"
                        )));
                    }
                }
                images += 1;
            }
            "document" => {
                known(obj, &["type", "document"], &block_path)?;
                let document = object(
                    obj.get("document")
                        .ok_or_else(|| invalid(format!("{block_path}.document is required")))?,
                    &format!("{block_path}.document"),
                )?;
                if let Some(data) = document.get("data") {
                    texts.push(data.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((texts.join(" "), images))
}

fn validate_message(
    message: &Value,
    path: &str,
    calls: &mut Vec<String>,
) -> Result<MessageFacts, Refusal> {
    let obj = object(message, path)?;
    let role = obj
        .get("role")
        .ok_or_else(|| invalid(format!("{path}.role is required")))?;
    let role = string(role, &format!("{path}.role"))?;
    let mut facts = MessageFacts {
        role: role.to_owned(),
        ..MessageFacts::default()
    };
    let content_path = format!("{path}.content");
    let required_content = || invalid(format!("{content_path} is required"));
    match role {
        "system" => {
            known(obj, &["role", "content"], path)?;
            let value = obj.get("content").ok_or_else(required_content)?;
            (facts.text, _) = content(value, &content_path, &["text"])?;
        }
        "user" => {
            known(obj, &["role", "content"], path)?;
            let value = obj.get("content").ok_or_else(required_content)?;
            (facts.text, facts.images) = content(value, &content_path, &["text", "image_url"])?;
        }
        "assistant" => {
            known(
                obj,
                &["role", "content", "tool_plan", "tool_calls", "citations"],
                path,
            )?;
            let mut texts = Vec::new();
            if let Some(plan) = obj.get("tool_plan") {
                texts.push(string(plan, &format!("{path}.tool_plan"))?.to_owned());
            }
            if let Some(value) = obj.get("content") {
                texts.push(content(value, &content_path, &["text", "thinking"])?.0);
            }
            let list = match obj.get("tool_calls") {
                Some(value) => value
                    .as_array()
                    .ok_or_else(|| invalid(format!("{path}.tool_calls must be a list")))?
                    .as_slice(),
                None => &[],
            };
            if list.is_empty() && obj.get("content").is_none() {
                return Err(invalid(format!(
                    "{path}: an assistant message needs content or tool_calls"
                )));
            }
            for (index, call) in list.iter().enumerate() {
                let call_path = format!("{path}.tool_calls[{index}]");
                let call = object(call, &call_path)?;
                known(call, &["id", "type", "function"], &call_path)?;
                let id = string(
                    call.get("id")
                        .ok_or_else(|| invalid(format!("{call_path}.id is required")))?,
                    &format!("{call_path}.id"),
                )?;
                if call.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(invalid(format!("{call_path}.type must be 'function'")));
                }
                let function_path = format!("{call_path}.function");
                let function = object(
                    call.get("function")
                        .ok_or_else(|| invalid(format!("{function_path} is required")))?,
                    &function_path,
                )?;
                known(function, &["name", "arguments"], &function_path)?;
                if let Some(name) = function.get("name") {
                    string(name, &format!("{function_path}.name"))?;
                }
                if let Some(arguments) = function.get("arguments") {
                    let arguments = string(arguments, &format!("{function_path}.arguments"))?;
                    if serde_json::from_str::<Value>(arguments)
                        .ok()
                        .filter(Value::is_object)
                        .is_none()
                    {
                        return Err(invalid(format!(
                            "{function_path}.arguments must be a JSON object"
                        )));
                    }
                }
                calls.push(id.to_owned());
            }
            facts.text = texts.join(" ");
        }
        "tool" => {
            known(obj, &["role", "tool_call_id", "content"], path)?;
            let id = string(
                obj.get("tool_call_id")
                    .ok_or_else(|| invalid(format!("{path}.tool_call_id is required")))?,
                &format!("{path}.tool_call_id"),
            )?;
            if !calls.iter().any(|call| call == id) {
                return Err(invalid(format!(
                    "{path}.tool_call_id '{id}' does not match a tool call of an earlier assistant message"
                )));
            }
            let value = obj.get("content").ok_or_else(required_content)?;
            (facts.text, _) = content(value, &content_path, &["text", "document"])?;
        }
        other => {
            return Err(invalid(format!(
                "{path}.role must be one of system, user, assistant, tool, got '{other}'"
            )))
        }
    }
    Ok(facts)
}

/// What the answer depends on.
#[derive(Default)]
struct Checked {
    messages: Vec<MessageFacts>,
    tools: Vec<String>,
    tool_choice: Option<String>,
    json: bool,
    max_tokens: Option<u64>,
    stop_sequences: Vec<String>,
    stream: bool,
}

fn validate_tools(value: &Value) -> Result<Vec<String>, Refusal> {
    let tools = value
        .as_array()
        .ok_or_else(|| invalid("tools must be a list"))?;
    let mut names = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        let path = format!("tools[{index}]");
        let tool = object(tool, &path)?;
        known(tool, &["type", "function"], &path)?;
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(format!("{path}.type must be 'function'")));
        }
        let function_path = format!("{path}.function");
        let function = object(
            tool.get("function")
                .ok_or_else(|| invalid(format!("{function_path} is required")))?,
            &function_path,
        )?;
        known(
            function,
            &["name", "description", "parameters"],
            &function_path,
        )?;
        let name = string(
            function
                .get("name")
                .ok_or_else(|| invalid(format!("{function_path}.name is required")))?,
            &format!("{function_path}.name"),
        )?;
        if let Some(description) = function.get("description") {
            string(description, &format!("{function_path}.description"))?;
        }
        object(
            function
                .get("parameters")
                .ok_or_else(|| invalid(format!("{function_path}.parameters is required")))?,
            &format!("{function_path}.parameters"),
        )?;
        names.push(name.to_owned());
    }
    Ok(names)
}

fn validate(request: &Value) -> Result<Checked, Refusal> {
    let obj = object(request, "body")?;
    known(obj, REQUEST_FIELDS, "")?;
    let model = obj
        .get("model")
        .ok_or_else(|| invalid("model is required"))?;
    if string(model, "model")?.is_empty() {
        return Err(invalid("model must not be empty"));
    }
    let messages = obj
        .get("messages")
        .ok_or_else(|| invalid("messages is required"))?
        .as_array()
        .ok_or_else(|| invalid("messages must be a list"))?;
    if messages.is_empty() {
        return Err(invalid("messages must not be empty"));
    }
    let mut checked = Checked::default();
    let mut calls = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        checked.messages.push(validate_message(
            message,
            &format!("messages[{index}]"),
            &mut calls,
        )?);
    }
    if let Some(stream) = obj.get("stream") {
        checked.stream = stream
            .as_bool()
            .ok_or_else(|| invalid("stream must be a boolean"))?;
    }
    if let Some(tools) = obj.get("tools") {
        checked.tools = validate_tools(tools)?;
    }
    if let Some(strict) = obj.get("strict_tools") {
        strict
            .as_bool()
            .ok_or_else(|| invalid("strict_tools must be a boolean"))?;
    }
    if let Some(choice) = obj.get("tool_choice") {
        let choice = string(choice, "tool_choice")?;
        if !["REQUIRED", "NONE"].contains(&choice) {
            return Err(invalid(format!(
                "tool_choice must be one of REQUIRED, NONE, got '{choice}'"
            )));
        }
        if checked.tools.is_empty() {
            return Err(invalid("tool_choice requires tools to be specified"));
        }
        checked.tool_choice = Some(choice.to_owned());
    }
    if let Some(format) = obj.get("response_format") {
        let format = object(format, "response_format")?;
        known(format, &["type", "json_schema"], "response_format")?;
        let kind = string(
            format
                .get("type")
                .ok_or_else(|| invalid("response_format.type is required"))?,
            "response_format.type",
        )?;
        match kind {
            "text" if format.contains_key("json_schema") => {
                return Err(invalid(
                    "response_format.json_schema must not be specified when the type is text",
                ))
            }
            "text" => {}
            "json_object" => checked.json = true,
            other => {
                return Err(invalid(format!(
                    "response_format.type must be one of text, json_object, got '{other}'"
                )))
            }
        }
        if let Some(schema) = format.get("json_schema") {
            object(schema, "response_format.json_schema")?;
        }
    }
    if let Some(max) = obj.get("max_tokens") {
        let max = unsigned(max, "max_tokens")?;
        if max == 0 {
            return Err(invalid("max_tokens must be at least 1"));
        }
        checked.max_tokens = Some(max);
    }
    if let Some(stops) = obj.get("stop_sequences") {
        let stops = stops
            .as_array()
            .ok_or_else(|| invalid("stop_sequences must be a list"))?;
        if stops.len() > 5 {
            return Err(invalid("stop_sequences can have at most 5 elements"));
        }
        for (index, stop) in stops.iter().enumerate() {
            checked
                .stop_sequences
                .push(string(stop, &format!("stop_sequences[{index}]"))?.to_owned());
        }
    }
    for name in ["temperature", "frequency_penalty", "presence_penalty"] {
        if let Some(value) = obj.get(name) {
            if number(value, name)? < 0.0 {
                return Err(invalid(format!("{name} must be at least 0")));
            }
        }
    }
    if let Some(p) = obj.get("p") {
        let p = number(p, "p")?;
        if !(0.01..=0.99).contains(&p) {
            return Err(invalid(format!("p must be between 0.01 and 0.99, got {p}")));
        }
    }
    if let Some(k) = obj.get("k") {
        if unsigned(k, "k")? > 500 {
            return Err(invalid("k must be at most 500"));
        }
    }
    if let Some(seed) = obj.get("seed") {
        unsigned(seed, "seed")?;
    }
    Ok(checked)
}

/// The arguments of every tool call the mock makes.
fn tool_args() -> String {
    json!({"location": "Paris", "unit": "celsius"}).to_string()
}

/// The tool plan of a call to `name`.
fn tool_plan(name: &str) -> String {
    format!("I will call {name}.")
}

enum Reply {
    Text {
        pieces: Vec<String>,
        finish: &'static str,
    },
    Call {
        name: String,
        id: String,
    },
}

fn usage(billed_input: u64, output: u64) -> Value {
    json!({
        "billed_units": {"input_tokens": billed_input, "output_tokens": output},
        "tokens": {"input_tokens": billed_input + TEMPLATE_TOKENS, "output_tokens": output},
    })
}

pub(crate) fn check_auth(state: &State, parts: &Parts) -> Option<Response<MockBody>> {
    let expected = state.config.cohere_api_key.as_deref()?;
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let token = header
        .get(..7)
        .filter(|prefix| prefix.eq_ignore_ascii_case("bearer "))
        .and_then(|_| header.get(7..))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    match token {
        Some(token) if token == expected => None,
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "invalid api token")),
        None => Some(error(StatusCode::UNAUTHORIZED, "no api key supplied")),
    }
}

pub(crate) async fn handle(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    if parts.uri.path() != "/v2/chat" {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "404 page not found: {} (tollgate-mock serves Cohere's POST /v2/chat)",
                parts.uri.path()
            ),
        );
    }
    if let Some(refused) = check_auth(state, parts) {
        return refused;
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => return invalid(format!("invalid json: {e}")).response(),
    };
    let checked = match validate(&request) {
        Ok(checked) => checked,
        Err(refusal) => return refusal.response(),
    };
    let n = state.next_id();
    let id = format!("00000000-0000-4000-8000-{n:012}");

    let billed_input = checked
        .messages
        .iter()
        .map(|message| count_words(&message.text))
        .sum::<u64>()
        .max(1);
    // The messages the answer answers: the last user message, or the tool results after the
    // last assistant message.
    let answered_a_call = checked
        .messages
        .last()
        .is_some_and(|message| message.role == "tool");
    let (user_text, images) = if answered_a_call {
        let results: Vec<&str> = checked
            .messages
            .iter()
            .rev()
            .take_while(|message| message.role == "tool")
            .map(|message| message.text.as_str())
            .collect();
        let texts: Vec<&str> = results.into_iter().rev().collect();
        (texts.join(" "), 0)
    } else {
        checked
            .messages
            .iter()
            .rev()
            .find(|message| message.role == "user")
            .map(|message| (message.text.clone(), message.images))
            .unwrap_or_default()
    };
    let directives = Directives::for_request(&user_text, parts);
    if directives.raw_error {
        return raw_error();
    }
    if let Some(status) = directives.error_status() {
        return status_error(status);
    }

    let calls_a_tool = !checked.tools.is_empty()
        && checked.tool_choice.as_deref() != Some("NONE")
        && !answered_a_call;
    let reply = if calls_a_tool {
        let name = checked.tools.first().cloned().unwrap_or_default();
        Reply::Call {
            id: format!("{name}_mock{n}"),
            name,
        }
    } else {
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
        let (mut text, mut finish) = match find_stop(&full, &checked.stop_sequences) {
            Some((cut, _)) => (
                full.get(..cut).unwrap_or_default().to_owned(),
                "STOP_SEQUENCE",
            ),
            None => (full, "COMPLETE"),
        };
        if let Some(max) = checked.max_tokens {
            let words = split_words_keep_spaces(&text);
            if words.len() as u64 > max {
                text = words
                    .iter()
                    .take(usize::try_from(max).unwrap_or(0))
                    .copied()
                    .collect();
                finish = "MAX_TOKENS";
            }
        }
        let pieces = split_words_keep_spaces(&text)
            .into_iter()
            .map(str::to_owned)
            .collect();
        Reply::Text { pieces, finish }
    };
    let output = match &reply {
        Reply::Text { pieces, .. } => count_words(&pieces.concat()),
        Reply::Call { name, .. } => count_words(&tool_plan(name)) + count_words(&tool_args()),
    };

    if !checked.stream {
        if let Some(ms) = directives.delay_ms.filter(|ms| *ms > 0) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let (message, finish) = match &reply {
            Reply::Text { pieces, finish } => (
                json!({"role": "assistant", "content": [{"type": "text", "text": pieces.concat()}]}),
                *finish,
            ),
            Reply::Call { name, id } => (
                json!({"role": "assistant", "tool_plan": tool_plan(name), "tool_calls": [
                    {"id": id, "type": "function", "function": {"name": name, "arguments": tool_args()}}
                ]}),
                "TOOL_CALL",
            ),
        };
        let answer = json!({
            "id": id,
            "message": message,
            "finish_reason": finish,
            "usage": usage(billed_input, output),
        });
        return response(
            StatusCode::OK,
            "application/json",
            MockBody::full(Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())),
        );
    }

    let mut events: Vec<Bytes> = vec![sse_event(
        "message-start",
        &json!({"id": id, "type": "message-start", "delta": {"message": {
            "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
    )];
    let end = |finish: &str, error: Option<&str>| {
        let mut delta = json!({"finish_reason": finish, "usage": usage(billed_input, output)});
        if let (Some(error), Some(object)) = (error, delta.as_object_mut()) {
            object.insert("error".into(), error.into());
        }
        sse_event(
            "message-end",
            &json!({"type": "message-end", "delta": delta}),
        )
    };
    match &reply {
        Reply::Call { name, id } => {
            for piece in split_words_keep_spaces(&tool_plan(name)) {
                events.push(sse_event(
                    "tool-plan-delta",
                    &json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": piece}}}),
                ));
                if directives.stream_cut {
                    return stream_response(events, &directives);
                }
            }
            events.push(sse_event(
                "tool-call-start",
                &json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
                    "id": id, "type": "function", "function": {"name": name, "arguments": ""}}}}}),
            ));
            let arguments = tool_args();
            for piece in split_even(&arguments, 4) {
                events.push(sse_event(
                    "tool-call-delta",
                    &json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {
                        "function": {"arguments": piece}}}}}),
                ));
            }
            events.push(sse_event(
                "tool-call-end",
                &json!({"type": "tool-call-end", "index": 0}),
            ));
            events.push(end("TOOL_CALL", None));
        }
        Reply::Text { pieces, finish } => {
            events.push(sse_event(
                "content-start",
                &json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
            ));
            for (index, piece) in pieces.iter().enumerate() {
                events.push(sse_event(
                    "content-delta",
                    &json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": piece}}}}),
                ));
                if index == 0 && directives.stream_cut {
                    return stream_response(events, &directives);
                }
                if index == 0 && directives.stream_error {
                    events.push(end(
                        "ERROR",
                        Some("internal server error (mock:stream_error)"),
                    ));
                    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
                    return stream_response(events, &directives);
                }
            }
            events.push(sse_event(
                "content-end",
                &json!({"type": "content-end", "index": 0}),
            ));
            events.push(end(finish, None));
        }
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    stream_response(events, &directives)
}

fn stream_response(events: Vec<Bytes>, directives: &Directives) -> Response<MockBody> {
    let mut resp = response(
        StatusCode::OK,
        "text/event-stream",
        MockBody::paced(events, directives.delay()),
    );
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(request: Value) -> Result<(), String> {
        validate(&request)
            .map(|_| ())
            .map_err(|refusal| match refusal {
                Refusal::Unknown(message) => format!("422 {message}"),
                Refusal::Invalid(message) => format!("400 {message}"),
            })
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn bodies_are_checked_as_cohere_checks_them() {
        assert_eq!(ok(json!({"model": "c", "messages": [user("hi")]})), Ok(()));
        for field in [
            "top_p",
            "max_completion_tokens",
            "n",
            "stop",
            "stream_options",
            "user",
        ] {
            let mut body = json!({"model": "c", "messages": [user("hi")]});
            body[field] = json!(1);
            assert_eq!(
                ok(body),
                Err(format!("422 {}", unknown_field(field))),
                "{field}"
            );
        }
        assert!(
            ok(json!({"messages": [user("hi")]})).is_err_and(|e| e.contains("model is required"))
        );
        assert!(ok(json!({"model": "c", "messages": []})).is_err_and(|e| e.starts_with("400")));
        assert!(ok(
            json!({"model": "c", "messages": [{"role": "user", "content": "x", "name": "n"}]})
        )
        .is_err_and(|e| e.starts_with("422") && e.contains("messages[0].name")));
        assert!(
            ok(json!({"model": "c", "messages": [{"role": "developer", "content": "x"}]}))
                .is_err_and(|e| e.contains("role must be one of"))
        );
        assert!(
            ok(json!({"model": "c", "messages": [user("hi")], "p": 1.0}))
                .is_err_and(|e| e.contains("p must be between"))
        );
        assert!(
            ok(json!({"model": "c", "messages": [user("hi")], "tool_choice": "REQUIRED"}))
                .is_err_and(|e| e.contains("requires tools"))
        );
        assert!(ok(
            json!({"model": "c", "messages": [user("hi")], "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})
        )
        .is_err_and(|e| e.contains("REQUIRED, NONE")));
        assert!(ok(json!({"model": "c", "messages": [user("hi")],
            "tools": [{"type": "function", "function": {"name": "f"}}]}))
        .is_err_and(|e| e.contains("parameters is required")));
        assert!(ok(json!({"model": "c", "messages": [user("hi")], "response_format": {"type": "json_schema"}}))
            .is_err_and(|e| e.contains("text, json_object")));
        assert!(
            ok(json!({"model": "c", "messages": [user("hi")], "seed": -1}))
                .is_err_and(|e| e.contains("seed"))
        );
        assert!(ok(json!({"model": "c", "messages": [user("hi")], "stop_sequences": ["a","b","c","d","e","f"]}))
            .is_err_and(|e| e.contains("at most 5")));
        assert!(ok(
            json!({"model": "c", "messages": [{"role": "system", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}, user("hi")]})
        )
        .is_err_and(|e| e.contains("messages[0].content[0].type")));
    }

    #[test]
    fn tool_results_answer_earlier_calls() {
        let call = json!({"role": "assistant", "tool_plan": "I will.", "tool_calls": [
            {"id": "get_weather_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]});
        let result = |id: &str| json!({"role": "tool", "tool_call_id": id, "content": "18C"});
        assert_eq!(
            ok(
                json!({"model": "c", "messages": [user("hi"), call.clone(), result("get_weather_1")]})
            ),
            Ok(())
        );
        assert!(
            ok(json!({"model": "c", "messages": [user("hi"), call.clone(), result("other")]}))
                .is_err_and(|e| e.contains("does not match a tool call"))
        );
        let bad_arguments = json!({"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]});
        assert!(
            ok(json!({"model": "c", "messages": [user("hi"), bad_arguments]}))
                .is_err_and(|e| e.contains("arguments must be a JSON object"))
        );
        assert!(
            ok(json!({"model": "c", "messages": [user("hi"), {"role": "assistant"}]}))
                .is_err_and(|e| e.contains("needs content or tool_calls"))
        );
    }
}
