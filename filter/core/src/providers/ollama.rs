//! Ollama's native chat API: `POST <api_base>/api/chat` (both LiteLLM prefixes, `ollama/`
//! and `ollama_chat/`; LiteLLM sends `ollama/` to `/api/generate`, Tollgate speaks chat to
//! both). No key by default; a deployment's key goes as `authorization: Bearer <key>`
//! (Ollama behind a proxy, ollama.com).
//!
//! Request: the OpenAI chat request is parsed once (borrowing from the body) and written out
//! as Ollama's `ChatRequest`. Messages keep their order and roles (`developer` becomes
//! `system`); content is a string (text parts joined with `\n`), images go in the message's
//! `images` as bare base64 (a data URL's prefix stripped; http(s) URLs are refused: Ollama
//! takes image bytes, and the filter fetches nothing). Tools are OpenAI's function shape, as
//! Ollama takes them; an assistant's tool calls go back with their arguments as a JSON object
//! (OpenAI sends a string), a tool result as role `tool` with `tool_name` (the function the
//! call it answers called) and `tool_call_id`. Sampling options go into `options`
//! (`max_tokens` as `num_predict`), `response_format` into `format` (`"json"` or the
//! schema). `stream` is always sent: Ollama streams unless told not to.
//!
//! Response: a buffered answer is one JSON object, a stream newline-delimited JSON
//! (`application/x-ndjson`), one object per line, the last with `done: true`, the finish
//! reason and the counts. Tool calls come whole (arguments an object) and get an id when
//! Ollama gives none. A stream's `{"error": ...}` line ends it with an OpenAI error event.
//! `prompt_eval_count` and `eval_count` are left out by Ollama when 0 (a prompt served from
//! its cache has none): a count left out is recorded as not reported. Thinking text (models
//! that think) is not part of the answer and is dropped.

use std::borrow::Cow;
use std::ops::ControlFlow;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{error_body, error_type_for_status};
use crate::ndjson::NdjsonSplitter;
use crate::openai_types::{self as oa, Content, ContentPart, Str};
use crate::pricing::{stream_cost, Prices};
use crate::providers::chunks::ChunkWriter;
use crate::providers::{
    compact_json, openai_shaped_error, tool_call_arguments, ChunkOutput, Framing, ProviderResponse,
    TranslateContext, UpstreamRequest,
};
use crate::request::ChatRequestSummary;
use crate::snapshot::Deployment;
use crate::{GatewayError, Usage};

/// The chat endpoint below `api_base`.
pub const CHAT_PATH: &str = "/api/chat";

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Format<'a>>,
    #[serde(skip_serializing_if = "Options::is_empty")]
    options: Options<'a>,
    stream: bool,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Cow<'a, str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

impl<'a> Message<'a> {
    fn text(role: &'static str, content: Cow<'a, str>) -> Self {
        Message {
            role,
            content,
            images: Vec::new(),
            tool_calls: Vec::new(),
            tool_name: None,
            tool_call_id: None,
        }
    }
}

#[derive(Serialize)]
struct ToolCall<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    function: ToolCallFunction<'a>,
}

#[derive(Serialize)]
struct ToolCallFunction<'a> {
    name: &'a str,
    arguments: Args<'a>,
}

/// A tool call's arguments: the client's JSON object as it wrote it, or `{}`.
enum Args<'a> {
    Raw(&'a RawValue),
    Empty,
}

impl Serialize for Args<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Args::Raw(raw) => raw.serialize(serializer),
            Args::Empty => serializer.serialize_map(Some(0))?.end(),
        }
    }
}

#[derive(Serialize)]
struct Tool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDefinition<'a>,
}

#[derive(Serialize)]
struct FunctionDefinition<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
}

/// `format`: JSON mode, or a JSON Schema the answer must match.
enum Format<'a> {
    Json,
    Schema(&'a RawValue),
}

impl Serialize for Format<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Format::Json => serializer.serialize_str("json"),
            Format::Schema(schema) => schema.serialize(serializer),
        }
    }
}

/// The model options the OpenAI request sets (Ollama's Modelfile parameters).
#[derive(Serialize, Default)]
struct Options<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
}

impl Options<'_> {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.seed.is_none()
            && self.num_predict.is_none()
            && self.stop.is_empty()
            && self.frequency_penalty.is_none()
            && self.presence_penalty.is_none()
    }
}

fn missing(param: &str) -> GatewayError {
    GatewayError::invalid(param, format!("Missing required parameter: '{param}'."))
}

/// Which content parts a role may carry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parts {
    /// system, developer, tool.
    TextOnly,
    /// user.
    TextAndImages,
    /// assistant (refusal parts are its earlier refusals, sent back as text).
    Assistant,
}

/// A message's content as Ollama's string (text parts joined with `\n`) and its images.
fn content<'r>(
    content: Option<&'r Content<'_>>,
    message: usize,
    allowed: Parts,
) -> Result<(Cow<'r, str>, Vec<&'r str>), GatewayError> {
    let parts = match content {
        None => return Ok((Cow::Borrowed(""), Vec::new())),
        Some(Content::Text(text)) => return Ok((Cow::Borrowed(text.as_str()), Vec::new())),
        Some(Content::Parts(parts)) => parts,
    };
    let mut text: Option<Cow<'r, str>> = None;
    let mut images = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        match content_part(part, message, index, allowed)? {
            Piece::Text(piece) => match &mut text {
                None => text = Some(Cow::Borrowed(piece)),
                Some(joined) => {
                    let joined = joined.to_mut();
                    joined.push('\n');
                    joined.push_str(piece);
                }
            },
            Piece::Image(data) => images.push(data),
        }
    }
    Ok((text.unwrap_or(Cow::Borrowed("")), images))
}

enum Piece<'r> {
    Text(&'r str),
    Image(&'r str),
}

fn content_part<'r>(
    part: &'r ContentPart<'_>,
    message: usize,
    index: usize,
    allowed: Parts,
) -> Result<Piece<'r>, GatewayError> {
    let param = |field: &str| format!("messages[{message}].content[{index}].{field}");
    let (text, field) = match (part.kind.as_str(), allowed) {
        ("text", _) => (part.text.as_deref(), "text"),
        ("refusal", Parts::Assistant) => (part.refusal.as_deref(), "refusal"),
        ("image_url", Parts::TextAndImages) => {
            let image = part
                .image_url
                .as_ref()
                .ok_or_else(|| missing(&param("image_url")))?;
            return image_data(&image.url, &param("image_url.url")).map(Piece::Image);
        }
        (other, _) => {
            return Err(GatewayError::invalid(
                &param("type"),
                format!(
                    "Content parts of type '{other}' are not supported here for Ollama models."
                ),
            ))
        }
    };
    text.map(Piece::Text).ok_or_else(|| missing(&param(field)))
}

fn strip_prefix_ignore_case<'s>(text: &'s str, prefix: &str) -> Option<&'s str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

/// `data:<media type>[;params];base64,<data>` as the bare base64 Ollama takes. Ollama reads
/// image bytes only, and the filter fetches nothing: an http(s) URL is refused, saying so.
fn image_data<'r>(url: &'r str, param: &str) -> Result<&'r str, GatewayError> {
    if let Some(rest) = strip_prefix_ignore_case(url, "data:") {
        let invalid = || {
            GatewayError::invalid(
                param,
                "Image data URLs must look like 'data:image/png;base64,<data>'.",
            )
        };
        let (meta, data) = rest.split_once(',').ok_or_else(invalid)?;
        let mut fields = meta.split(';');
        let media_type = fields.next().unwrap_or_default().trim();
        let base64 = fields.any(|field| field.trim().eq_ignore_ascii_case("base64"));
        if media_type.is_empty() || !base64 {
            return Err(invalid());
        }
        return Ok(data);
    }
    if strip_prefix_ignore_case(url, "https://").is_some()
        || strip_prefix_ignore_case(url, "http://").is_some()
    {
        return Err(GatewayError::invalid(
            param,
            "Ollama takes images as base64 data and the gateway does not fetch image URLs; send the image as a base64 data URL ('data:image/png;base64,<data>').",
        ));
    }
    Err(GatewayError::invalid(
        param,
        "Image URLs must be base64 data URLs ('data:image/png;base64,<data>') for Ollama models.",
    ))
}

fn tool_calls<'r>(
    calls: &'r [oa::ToolCall<'_>],
    message: usize,
) -> Result<Vec<ToolCall<'r>>, GatewayError> {
    let mut out = Vec::with_capacity(calls.len());
    for (index, call) in calls.iter().enumerate() {
        let arguments = match tool_call_arguments(call, message, index, "Ollama")? {
            None => Args::Empty,
            Some(raw) => Args::Raw(raw),
        };
        out.push(ToolCall {
            id: &call.id,
            function: ToolCallFunction {
                name: &call.function.name,
                arguments,
            },
        });
    }
    Ok(out)
}

/// The name of the function the tool call `id` called: the nearest earlier assistant
/// message's call with that id.
fn called_function<'r>(earlier: &'r [oa::Message<'_>], id: &str) -> Option<&'r str> {
    earlier
        .iter()
        .rev()
        .filter_map(|message| message.tool_calls.as_deref())
        .flat_map(|calls| calls.iter().rev())
        .find(|call| call.id.as_str() == id)
        .map(|call| call.function.name.as_str())
}

fn tools<'r>(tools: &'r [oa::Tool<'_>]) -> Result<Vec<Tool<'r>>, GatewayError> {
    let mut out = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        if tool.kind.as_str() != "function" {
            return Err(GatewayError::invalid(
                &format!("tools[{index}].type"),
                format!(
                    "Tools of type '{}' are not supported for Ollama models; use function tools.",
                    tool.kind.as_str()
                ),
            ));
        }
        let function = tool
            .function
            .as_ref()
            .ok_or_else(|| missing(&format!("tools[{index}].function")))?;
        let parameters = match function.parameters {
            None => None,
            Some(raw) if raw.get().starts_with('{') => Some(raw),
            Some(_) => {
                return Err(GatewayError::invalid(
                    &format!("tools[{index}].function.parameters"),
                    "Function parameters must be a JSON Schema object.",
                ))
            }
        };
        out.push(Tool {
            kind: "function",
            function: FunctionDefinition {
                name: &function.name,
                description: function.description.as_deref(),
                parameters,
            },
        });
    }
    Ok(out)
}

/// Whether the tools are sent: Ollama has no `tool_choice`, so `none` sends none, `auto`
/// (the default) sends them, and a call it cannot force is refused.
fn sends_tools(choice: Option<&oa::ToolChoice<'_>>) -> Result<bool, GatewayError> {
    let cannot_force = || {
        GatewayError::invalid(
            "tool_choice",
            "Ollama models cannot be made to call a tool: 'tool_choice' may be 'auto' or 'none'.",
        )
    };
    match choice {
        None => Ok(true),
        Some(oa::ToolChoice::Mode(mode)) => match mode.as_str() {
            "auto" => Ok(true),
            "none" => Ok(false),
            "required" => Err(cannot_force()),
            other => Err(GatewayError::invalid(
                "tool_choice",
                format!("Invalid value: '{other}'. Supported values are: 'none', 'auto' and 'required'."),
            )),
        },
        Some(oa::ToolChoice::Named(_)) => Err(cannot_force()),
    }
}

/// `response_format` as `format`.
fn format(raw: Option<&RawValue>) -> Result<Option<Format<'_>>, GatewayError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    let format: oa::ResponseFormat<'_> = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| {
            let path = error.path().to_string();
            let param = if path == "." {
                "response_format".to_string()
            } else {
                format!("response_format.{path}")
            };
            GatewayError::InvalidRequest {
                message: format!("Invalid value for '{param}': {}.", error.into_inner()),
                param: Some(param),
            }
        })?;
    match format.kind.as_str() {
        "text" => Ok(None),
        "json_object" => Ok(Some(Format::Json)),
        "json_schema" => {
            let schema = format
                .json_schema
                .as_ref()
                .ok_or_else(|| missing("response_format.json_schema"))?
                .schema;
            match schema {
                Some(schema) if schema.get().starts_with('{') => Ok(Some(Format::Schema(schema))),
                Some(_) => Err(GatewayError::invalid(
                    "response_format.json_schema.schema",
                    "The schema must be a JSON Schema object.",
                )),
                // A named format without a schema: JSON, shape left to the model.
                None => Ok(Some(Format::Json)),
            }
        }
        other => Err(GatewayError::invalid(
            "response_format.type",
            format!("Invalid value: '{other}'. Supported values are: 'text', 'json_object' and 'json_schema'."),
        )),
    }
}

/// The endpoint below the deployment's base: `/api/chat`, or `/chat` when the base already
/// ends in `/api` (ollama.com's documented base is `https://ollama.com/api`).
fn endpoint_path(deployment: &Deployment) -> &'static str {
    if deployment.target.base_path.ends_with("/api") {
        "/chat"
    } else {
        CHAT_PATH
    }
}

/// Builds the Ollama request.
pub fn build_request(
    summary: &ChatRequestSummary<'_>,
    body: &[u8],
    deployment: &Deployment,
    _context: &TranslateContext,
) -> Result<UpstreamRequest, GatewayError> {
    let request = oa::parse_chat_request(body)?;
    if request.n.is_some_and(|n| n > 1) {
        return Err(GatewayError::invalid(
            "n",
            "The gateway asks Ollama models for one choice per request; 'n' greater than 1 is not supported.",
        ));
    }
    if request.functions.is_some() {
        return Err(GatewayError::invalid(
            "functions",
            "The deprecated 'functions' parameter is not supported for Ollama models; use 'tools'.",
        ));
    }

    let mut messages = Vec::with_capacity(request.messages.len());
    for (index, message) in request.messages.iter().enumerate() {
        let out = match message.role.as_str() {
            "system" | "developer" => {
                let (text, _) = content(message.content.as_ref(), index, Parts::TextOnly)?;
                Message::text("system", text)
            }
            "user" => {
                let (text, images) =
                    content(message.content.as_ref(), index, Parts::TextAndImages)?;
                Message {
                    images,
                    ..Message::text("user", text)
                }
            }
            "assistant" => {
                let (text, _) = content(message.content.as_ref(), index, Parts::Assistant)?;
                let calls = match &message.tool_calls {
                    Some(calls) => tool_calls(calls, index)?,
                    None => Vec::new(),
                };
                Message {
                    tool_calls: calls,
                    ..Message::text("assistant", text)
                }
            }
            "tool" => {
                let id = message
                    .tool_call_id
                    .as_deref()
                    .ok_or_else(|| missing(&format!("messages[{index}].tool_call_id")))?;
                let (text, _) = content(message.content.as_ref(), index, Parts::TextOnly)?;
                let earlier = request.messages.get(..index).unwrap_or_default();
                Message {
                    tool_name: called_function(earlier, id),
                    tool_call_id: Some(id),
                    ..Message::text("tool", text)
                }
            }
            other => {
                return Err(GatewayError::invalid(
                    &format!("messages[{index}].role"),
                    format!("Messages with role '{other}' are not supported for Ollama models; use 'tool' messages."),
                ))
            }
        };
        messages.push(out);
    }

    let tools = match &request.tools {
        Some(declared) if sends_tools(request.tool_choice.as_ref())? => tools(declared)?,
        Some(_) => Vec::new(),
        None => {
            // A forced call without tools is refused as OpenAI refuses it.
            if matches!(&request.tool_choice, Some(oa::ToolChoice::Named(_)))
                || matches!(&request.tool_choice, Some(oa::ToolChoice::Mode(mode)) if mode.as_str() == "required")
            {
                return Err(GatewayError::invalid(
                    "tool_choice",
                    "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                ));
            }
            Vec::new()
        }
    };
    let options = Options {
        temperature: request.temperature,
        top_p: request.top_p,
        seed: request.seed,
        num_predict: request.max_completion_tokens.or(request.max_tokens),
        stop: request
            .stop
            .as_ref()
            .map(|stop| stop.as_slice().iter().map(Str::as_str).collect())
            .unwrap_or_default(),
        frequency_penalty: request.frequency_penalty,
        presence_penalty: request.presence_penalty,
    };
    let upstream = ChatRequest {
        model: &deployment.upstream_model,
        messages,
        tools,
        format: format(request.response_format)?,
        options,
        stream: summary.stream,
    };
    let mut out = Vec::with_capacity(body.len() + 128);
    serde_json::to_writer(&mut out, &upstream)
        .map_err(|error| GatewayError::invalid("body", error.to_string()))?;

    let mut headers = vec![("content-type", "application/json".to_string())];
    if !deployment.api_key.is_empty() {
        headers.push(("authorization", format!("Bearer {}", deployment.api_key)));
    }
    Ok(UpstreamRequest {
        path: endpoint_path(deployment).to_string(),
        headers,
        body: out,
    })
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// One answer object: the whole answer (buffered), or one line of a stream.
#[derive(Deserialize)]
struct ChatResponse<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(borrow, default)]
    created_at: Option<Str<'a>>,
    #[serde(borrow, default)]
    message: Option<ResponseMessage<'a>>,
    #[serde(default)]
    done: Option<bool>,
    #[serde(borrow, default)]
    done_reason: Option<Str<'a>>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    /// Ollama's error: a string (an object with a message is read too).
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResponseMessage<'a> {
    /// A JSON string, kept raw so that a stream can copy text that needs no unescaping.
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ResponseToolCall<'a>>>,
}

#[derive(Deserialize)]
struct ResponseToolCall<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    function: Option<ResponseFunction<'a>>,
}

#[derive(Deserialize)]
struct ResponseFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

impl ChatResponse<'_> {
    fn counts(&self) -> Counts {
        Counts {
            prompt_eval_count: self.prompt_eval_count,
            eval_count: self.eval_count,
        }
    }
}

/// Ollama's token counts. Ollama leaves a count of 0 out (and has none for a prompt it
/// served from its cache): a count left out is "not reported", not 0.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
struct Counts {
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
}

impl Counts {
    fn is_reported(&self) -> bool {
        self.prompt_eval_count.is_some() || self.eval_count.is_some()
    }

    fn record(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_eval_count,
            completion_tokens: self.eval_count,
            ..Usage::default()
        }
    }

    fn openai(&self) -> oa::CompletionUsage {
        let prompt_tokens = self.prompt_eval_count.unwrap_or(0);
        let completion_tokens = self.eval_count.unwrap_or(0);
        oa::CompletionUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: oa::PromptTokensDetails { cached_tokens: 0 },
            completion_tokens_details: None,
            cost: None,
        }
    }
}

/// OpenAI's `finish_reason` for Ollama's `done_reason` of an answer that made
/// `called_tools` (Ollama ends a turn of tool calls with `stop`).
fn finish_reason(reason: Option<&str>, called_tools: bool) -> &'static str {
    match reason {
        Some("length") => "length",
        _ if called_tools => "tool_calls",
        // stop, load, unload, and whatever Ollama adds later.
        _ => "stop",
    }
}

/// A short stable hash (FNV-1a, 64 bits) of the answer's model and creation time: Ollama
/// gives its answers no id, and a client needs one (and tool calls unique ids) per answer.
fn answer_key(model: &str, created_at: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in model.bytes().chain([0]).chain(created_at.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The id the client gets for the `index`th tool call of the answer `key`: Ollama's own
/// when it gave one, else `call_<key>_<index>`.
fn tool_call_id(call: &ResponseToolCall<'_>, key: &str, index: u32) -> String {
    match call.id.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => id.to_string(),
        None => format!("call_{key}_{index}"),
    }
}

/// A tool call's arguments as OpenAI's JSON text: Ollama's object without whitespace
/// between tokens, a string as it is (a server that sent the text already), `{}` for none.
fn arguments<'r>(call: &'r ResponseToolCall<'_>) -> Result<Cow<'r, str>, GatewayError> {
    let raw = call
        .function
        .as_ref()
        .and_then(|function| function.arguments)
        .filter(|raw| raw.get() != "null");
    match raw {
        None => Ok(Cow::Borrowed("{}")),
        Some(raw) if raw.get().starts_with('"') => {
            let text: Str<'r> = serde_json::from_str(raw.get()).map_err(|error| {
                GatewayError::BadUpstreamResponse(format!("tool call arguments: {error}"))
            })?;
            Ok(text.0)
        }
        Some(raw) => Ok(compact_json(raw.get())),
    }
}

/// A message's content: its text, decoded (`None`: no content).
fn decoded_text<'r>(raw: Option<&'r RawValue>) -> Result<Option<Cow<'r, str>>, GatewayError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let text: Str<'r> = serde_json::from_str(raw.get()).map_err(|error| {
        GatewayError::BadUpstreamResponse(format!("message.content is not a string: {error}"))
    })?;
    Ok(Some(text.0))
}

/// The text of Ollama's `error` (a string; an object's `message` is read too).
fn error_message(error: &RawValue) -> Option<String> {
    match serde_json::from_str::<Value>(error.get()).ok()? {
        Value::String(message) => Some(message),
        Value::Object(object) => object
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// Response side of an Ollama request.
#[derive(Debug)]
pub struct OllamaResponse {
    created: u64,
    /// The deployment's model, for answers that do not name theirs.
    upstream_model: String,
    /// Boxed so that lending it out for a feed moves a pointer, not the splitter.
    splitter: Option<Box<NdjsonSplitter>>,
    /// The OpenAI stream the client gets (tool calls keyed by their number).
    writer: ChunkWriter,
    /// The stream's answer key (its id and its tool call ids), once its first line came.
    key: Option<String>,
    /// The final counts of the stream.
    counts: Counts,
    /// Tool calls streamed so far.
    tool_calls: u32,
    /// The deployment's prices, for the cost on the usage chunk.
    prices: Option<Prices>,
}

impl OllamaResponse {
    /// Response side for a request with the client's `include_usage`, to a deployment of
    /// `upstream_model` with these `prices`.
    pub fn new(
        context: &TranslateContext,
        include_usage: bool,
        prices: Option<Prices>,
        upstream_model: &str,
    ) -> Self {
        OllamaResponse {
            created: context.now_unix,
            upstream_model: upstream_model.to_string(),
            splitter: Some(Box::default()),
            writer: ChunkWriter::new(context.now_unix, include_usage),
            key: None,
            counts: Counts::default(),
            tool_calls: 0,
            prices,
        }
    }

    fn handle_line(
        &mut self,
        line: &[u8],
        out: &mut Vec<u8>,
        usage: &mut Usage,
    ) -> Result<ControlFlow<()>, GatewayError> {
        let answer: ChatResponse<'_> = serde_json::from_slice(line).map_err(|error| {
            GatewayError::BadUpstreamResponse(format!("invalid Ollama stream line: {error}"))
        })?;
        if let Some(error) = answer.error {
            let message = error_message(error).unwrap_or_else(|| {
                "The upstream provider reported an error in the stream.".to_string()
            });
            self.writer
                .fail(out, &error_body(&message, "api_error", None, None));
            return Ok(ControlFlow::Break(()));
        }
        if self.key.is_none() {
            let model = answer
                .model
                .as_deref()
                .unwrap_or(&self.upstream_model)
                .to_string();
            let key = answer_key(&model, answer.created_at.as_deref().unwrap_or_default());
            self.writer.set_id(format!("chatcmpl-{key}"));
            self.writer.set_model(model);
            self.key = Some(key);
        }
        self.writer.start(out)?;
        if let Some(message) = &answer.message {
            if let Some(raw) = message.content {
                match raw
                    .get()
                    .strip_prefix('"')
                    .and_then(|text| text.strip_suffix('"'))
                    .filter(|text| oa::is_json_string_body(text.as_bytes()))
                {
                    Some(escaped_text) => self.writer.escaped_text(out, escaped_text)?,
                    None => {
                        let text = decoded_text(Some(raw))?.unwrap_or_default();
                        self.writer.text(out, &text)?;
                    }
                }
            }
            for call in message.tool_calls.as_deref().unwrap_or_default() {
                let index = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                let id = tool_call_id(call, self.key.as_deref().unwrap_or_default(), index);
                let name = call
                    .function
                    .as_ref()
                    .and_then(|function| function.name.as_deref())
                    .unwrap_or_default();
                let key = u64::from(index);
                self.writer.tool_call_start(out, key, &id, name)?;
                self.writer
                    .tool_call_arguments(out, key, &arguments(call)?)?;
            }
        }
        if answer.done == Some(true) {
            self.counts = answer.counts();
            usage.merge(self.counts.record());
            let reason = finish_reason(answer.done_reason.as_deref(), self.tool_calls > 0);
            self.end(out, reason, usage)?;
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The answer is over: the line with `done: true` is Ollama's last, and carries the
    /// counts. The stream ends here rather than when the provider's body does, so no output
    /// waits for an end-of-stream call that may bring no data to write into.
    fn end(
        &mut self,
        out: &mut Vec<u8>,
        reason: &'static str,
        usage: &Usage,
    ) -> Result<(), GatewayError> {
        self.writer.finish(out, reason)?;
        // The headers are long gone: the usage chunk is where the client learns the cost
        // (the same the usage record gets, from the same usage).
        let usage_out = oa::CompletionUsage {
            cost: stream_cost(self.prices.as_ref(), usage).map(oa::Cost),
            ..self.counts.openai()
        };
        self.writer.end(out, usage_out)
    }
}

impl ProviderResponse for OllamaResponse {
    fn framing(&self) -> Framing {
        Framing::Ndjson
    }

    fn rewrites_body(&self) -> bool {
        true
    }

    fn translate_body(
        &mut self,
        body: &[u8],
        usage: &mut Usage,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        let answer: ChatResponse<'_> = serde_json::from_slice(body).map_err(|error| {
            GatewayError::BadUpstreamResponse(format!("not an Ollama chat response: {error}"))
        })?;
        if let Some(error) = answer.error {
            let message = error_message(error).unwrap_or_else(|| error.get().to_string());
            return Err(GatewayError::BadUpstreamResponse(format!(
                "Ollama answered with an error: {message}"
            )));
        }
        let message = answer.message.as_ref().ok_or_else(|| {
            GatewayError::BadUpstreamResponse("the Ollama response has no message".into())
        })?;
        let model = answer.model.as_deref().unwrap_or(&self.upstream_model);
        let key = answer_key(model, answer.created_at.as_deref().unwrap_or_default());
        let text = decoded_text(message.content)?;
        let calls = message.tool_calls.as_deref().unwrap_or_default();
        let mut ids = Vec::with_capacity(calls.len());
        let mut arguments_out = Vec::with_capacity(calls.len());
        for (index, call) in calls.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            ids.push(tool_call_id(call, &key, index));
            arguments_out.push(arguments(call)?);
        }
        let tool_calls: Vec<oa::ToolCallOut<'_>> = calls
            .iter()
            .zip(&ids)
            .zip(&arguments_out)
            .map(|((call, id), arguments)| oa::ToolCallOut {
                id,
                kind: "function",
                function: oa::FunctionCallOut {
                    name: call
                        .function
                        .as_ref()
                        .and_then(|function| function.name.as_deref())
                        .unwrap_or_default(),
                    arguments,
                },
            })
            .collect();
        // A turn of tool calls has no text; OpenAI says so with null.
        let content = match text.as_deref() {
            Some("") | None if !tool_calls.is_empty() => None,
            Some(text) => Some(text),
            None => Some(""),
        };
        let counts = answer.counts();
        if counts.is_reported() {
            usage.merge(counts.record());
        }
        let id = format!("chatcmpl-{key}");
        let choice = oa::Choice {
            index: 0,
            message: oa::AssistantMessage {
                role: "assistant",
                content,
                refusal: None,
                tool_calls: &tool_calls,
            },
            logprobs: None,
            finish_reason: finish_reason(answer.done_reason.as_deref(), !tool_calls.is_empty()),
        };
        let completion = oa::ChatCompletion {
            id: &id,
            object: oa::CHAT_COMPLETION,
            created: self.created,
            model,
            choices: std::slice::from_ref(&choice),
            usage: counts.is_reported().then(|| counts.openai()),
        };
        serde_json::to_vec(&completion)
            .map(Some)
            .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))
    }

    /// Ollama's `{"error": "<text>"}` as OpenAI's error; a model Ollama does not have (404)
    /// gets OpenAI's `model_not_found` code.
    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8> {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        match parsed.as_ref().and_then(|value| value.get("error")) {
            Some(Value::String(message)) => {
                let code = (status == 404).then_some("model_not_found");
                error_body(message, error_type_for_status(status), None, code)
            }
            _ => openai_shaped_error(status, body),
        }
    }

    fn translate_stream(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
        usage: &mut Usage,
    ) -> Result<ChunkOutput, GatewayError> {
        if self.writer.is_done() {
            return Ok(ChunkOutput::Replaced);
        }
        // The splitter lends lines while the translator writes: take it out for the feed.
        let mut splitter = self.splitter.take().unwrap_or_default();
        let result = splitter.feed(chunk, end_of_stream, |line| {
            self.handle_line(line, out, usage)
        });
        self.splitter = Some(splitter);
        result?;
        if end_of_stream && !self.writer.is_done() {
            self.writer.fail_cut(out);
        }
        Ok(ChunkOutput::Replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translator(include_usage: bool) -> OllamaResponse {
        OllamaResponse::new(
            &TranslateContext { now_unix: 7 },
            include_usage,
            None,
            "llama-x",
        )
    }

    fn data_events(out: &[u8]) -> Vec<Value> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let data = event.strip_prefix("data: ").unwrap();
                serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.into()))
            })
            .collect()
    }

    #[test]
    fn image_data_urls_lose_their_prefix_and_urls_are_refused() {
        assert_eq!(
            image_data("data:image/png;base64,iVBORw0KGgo=", "p").unwrap(),
            "iVBORw0KGgo="
        );
        assert_eq!(
            image_data("DATA:image/webp;charset=x;BASE64,QQ==", "p").unwrap(),
            "QQ=="
        );
        for url in [
            "data:image/png,notbase64",
            "data:;base64,QQ==",
            "data:image/png",
        ] {
            let error = image_data(url, "p").unwrap_err();
            assert!(error.to_string().contains("data:image/png;base64"), "{url}");
        }
        let error = image_data("https://example.com/a.png", "p").unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.param(), Some("p"));
        assert!(
            error.to_string().contains("does not fetch image URLs"),
            "{error}"
        );
        assert!(image_data("ftp://example.com/a.png", "p").is_err());
    }

    #[test]
    fn arguments_lose_whitespace_but_not_their_strings() {
        for (json, compact) in [
            ("{\"a\":1}", "{\"a\":1}"),
            (
                "{\n  \"a b\": \"x  y\\\" \\\\\",\n  \"c\": [1, 2]\n}",
                "{\"a b\":\"x  y\\\" \\\\\",\"c\":[1,2]}",
            ),
            ("{ \"é\" : \"ü ü\" }", "{\"é\":\"ü ü\"}"),
        ] {
            assert_eq!(compact_json(json), compact, "{json}");
            let reparsed: Value = serde_json::from_str(&compact_json(json)).unwrap();
            assert_eq!(reparsed, serde_json::from_str::<Value>(json).unwrap());
        }
        assert!(matches!(compact_json("{\"a\":\"b\"}"), Cow::Borrowed(_)));
    }

    #[test]
    fn tool_call_ids_are_ollamas_or_made_from_the_answer() {
        let call: ResponseToolCall<'_> =
            serde_json::from_str(r#"{"function":{"name":"f","arguments":{"a":1}}}"#).unwrap();
        assert_eq!(tool_call_id(&call, "k", 2), "call_k_2");
        assert_eq!(arguments(&call).unwrap(), "{\"a\":1}");
        let given: ResponseToolCall<'_> = serde_json::from_str(
            r#"{"id":"call_abc","function":{"name":"f","arguments":"{\"a\":2}"}}"#,
        )
        .unwrap();
        assert_eq!(tool_call_id(&given, "k", 0), "call_abc");
        assert_eq!(arguments(&given).unwrap(), "{\"a\":2}");
        let bare: ResponseToolCall<'_> =
            serde_json::from_str(r#"{"function":{"name":"f"}}"#).unwrap();
        assert_eq!(arguments(&bare).unwrap(), "{}");
        // The key is a function of the answer.
        assert_eq!(answer_key("m", "t"), answer_key("m", "t"));
        assert_ne!(answer_key("m", "t"), answer_key("m", "u"));
        assert_ne!(answer_key("mt", ""), answer_key("m", "t"));
        assert_eq!(answer_key("m", "t").len(), 16);
    }

    #[test]
    fn finish_reasons() {
        assert_eq!(finish_reason(Some("stop"), false), "stop");
        assert_eq!(finish_reason(Some("stop"), true), "tool_calls");
        assert_eq!(finish_reason(None, true), "tool_calls");
        assert_eq!(finish_reason(Some("length"), true), "length");
        assert_eq!(finish_reason(Some("load"), false), "stop");
        assert_eq!(finish_reason(None, false), "stop");
    }

    #[test]
    fn counts_left_out_are_not_reported() {
        let cached: Counts = serde_json::from_str(r#"{"eval_count":5}"#).unwrap();
        assert_eq!(
            cached.record(),
            Usage {
                prompt_tokens: None,
                completion_tokens: Some(5),
                ..Usage::default()
            }
        );
        assert!(cached.is_reported());
        assert_eq!(cached.openai().total_tokens, 5);
        let none: Counts = serde_json::from_str("{}").unwrap();
        assert!(!none.is_reported());
        assert!(!none.record().is_reported());
    }

    #[test]
    fn nothing_after_the_last_line() {
        let mut response = translator(false);
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        let stream = b"{\"model\":\"m\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":2,\"eval_count\":1}\n{\"error\":\"late\"}\n";
        response
            .translate_stream(stream, false, &mut out, &mut usage)
            .unwrap();
        let events = data_events(&out);
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(events[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(events[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[3], "[DONE]");
        response
            .translate_stream(b"{garbage\n", true, &mut out, &mut usage)
            .unwrap();
        assert_eq!(data_events(&out).len(), 4);
        assert_eq!(usage.prompt_tokens, Some(2));
        assert_eq!(usage.completion_tokens, Some(1));
    }

    #[test]
    fn a_stream_without_its_last_line_was_cut() {
        let mut response = translator(true);
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        response
            .translate_stream(
                b"{\"message\":{\"content\":\"Hi\"},\"done\":false}\n",
                true,
                &mut out,
                &mut usage,
            )
            .unwrap();
        let events = data_events(&out);
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[2]["error"]["code"], "upstream_stream_cut");
        assert!(!usage.is_reported());
    }

    #[test]
    fn a_broken_line_is_an_error() {
        let mut response = translator(false);
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        let error = response
            .translate_stream(b"{\"message\": 5}\n", false, &mut out, &mut usage)
            .unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(out.is_empty());
    }

    #[test]
    fn errors_keep_their_status_and_name_a_missing_model() {
        let response = translator(false);
        let body: Value = serde_json::from_slice(
            &response.translate_error(404, br#"{"error":"model 'x' not found"}"#),
        )
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "model 'x' not found", "type": "invalid_request_error", "param": null, "code": "model_not_found"}})
        );
        assert_eq!(response.error_status(404, b"{}"), None);
        let body: Value =
            serde_json::from_slice(&response.translate_error(500, b"<html>oops</html>")).unwrap();
        assert_eq!(body["error"]["type"], "api_error");
    }
}
