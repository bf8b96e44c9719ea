//! Cohere's v2 Chat API: `POST <api_base>/v2/chat` with `authorization: Bearer <key>`, the
//! same endpoint streaming server-sent events when the body says `"stream": true`. LiteLLM's
//! `cohere/` and `cohere_chat/` prefixes both come here.
//!
//! Request: the OpenAI chat request is parsed once (borrowing from the body) and written out
//! as a v2 chat request. Messages keep their roles and order (v2 takes `system`, `user`,
//! `assistant` and `tool` messages as OpenAI does); user images become `image_url` content
//! blocks (Cohere reads data URLs and web URLs itself); assistant tool calls keep their ids,
//! and the text of an assistant message that calls tools goes as its `tool_plan` (what
//! Cohere calls the text a model writes before calling tools); tool messages keep their
//! `tool_call_id`. `tools` keep their shape (Cohere requires `parameters`: a tool without
//! any gets an empty object schema). `tool_choice` `required` and `none` are `REQUIRED` and
//! `NONE`; a named function, which v2 cannot name, is `REQUIRED` with that tool alone.
//! `top_p` is `p` (held to the [0.01, 0.99] Cohere takes, so OpenAI's default 1 is 0.99),
//! `stop` `stop_sequences`, `max_completion_tokens` (or `max_tokens`)
//! `max_tokens`; `response_format` `json_object` and `json_schema` are Cohere's
//! `{"type": "json_object"}` with the schema as its `json_schema`.
//!
//! Response: a buffered answer becomes a `chat.completion`, a stream is translated event by
//! event as its bytes arrive (the shared [`ChunkWriter`]). The tool plan is the answer's
//! text (so it comes back as the `tool_plan` of the next request); thinking content is not
//! the answer and is dropped. Finish reasons: `COMPLETE` and `STOP_SEQUENCE` are `stop`,
//! `MAX_TOKENS` is `length`, `TOOL_CALL` is `tool_calls` (so is any other answer that ended
//! with tool calls but was not cut short), `TIMEOUT` (an answer cut short by Cohere's time
//! limit) is `length`, and `ERROR` is no answer: the client gets a 502 error, or an error
//! event mid-stream.
//!
//! Usage: v2 reports `usage.billed_units` (what Cohere invoices) and `usage.tokens` (what the
//! model read and wrote, Cohere's own prompt template included, which is not billed). The
//! gateway counts and prices the billed units: they are what the operator pays for, so spend,
//! budgets and token limits match Cohere's invoice. `tokens` counts only when a response has
//! no `billed_units` (a private deployment, say). `cached_tokens` is a part of `tokens`, not
//! of the billed units, so it is not reported as cached prompt tokens.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{error_body, error_type_for_status};
use crate::openai_types::{self as oa, Content, ContentPart, Str};
use crate::pricing::{stream_cost, Prices};
use crate::providers::chunks::ChunkWriter;
use crate::providers::{
    check_tool_call_type, openai_shaped_error, ChunkOutput, ProviderResponse, TranslateContext,
    UpstreamRequest,
};
use crate::request::ChatRequestSummary;
use crate::snapshot::Deployment;
use crate::sse::SseParser;
use crate::{GatewayError, Usage};

/// Endpoint path, joined with the deployment's base path (a base that already ends with
/// `/v2` or `/v2/chat` does not get it twice).
pub const CHAT_PATH: &str = "/v2/chat";

/// The range of `p` Cohere takes.
const MIN_P: f64 = 0.01;
const MAX_P: f64 = 0.99;

/// The parameters of a function tool that declares none: Cohere requires a schema.
const EMPTY_PARAMETERS: &str = r#"{"type":"object","properties":{}}"#;

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict_tools: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<f64>,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum Message<'a> {
    System {
        content: MessageContent<'a>,
    },
    User {
        content: MessageContent<'a>,
    },
    Assistant {
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<MessageContent<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_plan: Option<Cow<'a, str>>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: MessageContent<'a>,
    },
}

/// A message's content: a string, or content blocks.
#[derive(Serialize)]
#[serde(untagged)]
enum MessageContent<'a> {
    Text(&'a str),
    Blocks(Vec<Block<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: ImageUrl<'a> },
}

#[derive(Serialize)]
struct ImageUrl<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
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
    parameters: &'a RawValue,
}

#[derive(Serialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<&'a RawValue>,
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

/// A content part as a Cohere block; `None` for an empty text, which says nothing.
fn block<'r>(
    part: &'r ContentPart<'_>,
    message: usize,
    index: usize,
    allowed: Parts,
) -> Result<Option<Block<'r>>, GatewayError> {
    let param = |field: &str| format!("messages[{message}].content[{index}].{field}");
    let (text, field) = match (part.kind.as_str(), allowed) {
        ("text", _) => (part.text.as_deref(), "text"),
        ("refusal", Parts::Assistant) => (part.refusal.as_deref(), "refusal"),
        ("image_url", Parts::TextAndImages) => {
            let image = part
                .image_url
                .as_ref()
                .ok_or_else(|| missing(&param("image_url")))?;
            return Ok(Some(Block::ImageUrl {
                image_url: ImageUrl {
                    url: &image.url,
                    detail: image.detail.as_deref(),
                },
            }));
        }
        (other, _) => {
            return Err(GatewayError::invalid(
                &param("type"),
                format!(
                    "Content parts of type '{other}' are not supported here for Cohere models."
                ),
            ))
        }
    };
    let text = text.ok_or_else(|| missing(&param(field)))?;
    Ok((!text.is_empty()).then_some(Block::Text { text }))
}

/// A message's content as Cohere's; `None` when it has nothing to say.
fn content<'r>(
    content: Option<&'r Content<'_>>,
    message: usize,
    allowed: Parts,
) -> Result<Option<MessageContent<'r>>, GatewayError> {
    match content {
        None => Ok(None),
        Some(Content::Text(text)) if text.is_empty() => Ok(None),
        Some(Content::Text(text)) => Ok(Some(MessageContent::Text(text))),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (index, part) in parts.iter().enumerate() {
                if let Some(block) = block(part, message, index, allowed)? {
                    blocks.push(block);
                }
            }
            Ok((!blocks.is_empty()).then_some(MessageContent::Blocks(blocks)))
        }
    }
}

/// The text of an assistant message that calls tools, as its `tool_plan`.
fn tool_plan<'r>(
    content: Option<&'r Content<'_>>,
    message: usize,
) -> Result<Option<Cow<'r, str>>, GatewayError> {
    match content {
        None => Ok(None),
        Some(Content::Text(text)) if text.is_empty() => Ok(None),
        Some(Content::Text(text)) => Ok(Some(Cow::Borrowed(text.as_str()))),
        Some(Content::Parts(parts)) => {
            let mut plan: Option<Cow<'r, str>> = None;
            for (index, part) in parts.iter().enumerate() {
                if let Some(Block::Text { text }) = block(part, message, index, Parts::Assistant)? {
                    match &mut plan {
                        None => plan = Some(Cow::Borrowed(text)),
                        Some(joined) => joined.to_mut().push_str(text),
                    }
                }
            }
            Ok(plan)
        }
    }
}

fn tool_calls<'r>(
    calls: &'r [oa::ToolCall<'_>],
    message: usize,
) -> Result<Vec<ToolCall<'r>>, GatewayError> {
    let mut out = Vec::with_capacity(calls.len());
    for (index, call) in calls.iter().enumerate() {
        check_tool_call_type(call, message, index, "Cohere")?;
        let arguments = call.function.arguments.as_deref().unwrap_or_default();
        out.push(ToolCall {
            id: &call.id,
            kind: "function",
            function: FunctionCall {
                name: &call.function.name,
                // Cohere reads the arguments as a JSON text: "no arguments" is an empty
                // object.
                arguments: if arguments.trim().is_empty() {
                    "{}"
                } else {
                    arguments
                },
            },
        });
    }
    Ok(out)
}

/// A tool message's content: a JSON object text as it is (Cohere's documented form, which
/// it can cite), any other text as one text block, text parts as text blocks.
fn tool_content<'r>(
    content: Option<&'r Content<'_>>,
    message: usize,
) -> Result<MessageContent<'r>, GatewayError> {
    match content {
        Some(Content::Text(text)) if text.is_empty() || text.trim_start().starts_with('{') => {
            Ok(MessageContent::Text(text))
        }
        Some(Content::Text(text)) => Ok(MessageContent::Blocks(vec![Block::Text { text }])),
        other => Ok(self::content(other, message, Parts::TextOnly)?
            // Cohere requires a tool message's content: an empty result is an empty text.
            .unwrap_or(MessageContent::Text(""))),
    }
}

fn tools<'r>(tools: &'r [oa::Tool<'_>]) -> Result<Vec<Tool<'r>>, GatewayError> {
    let empty: &'static RawValue = serde_json::from_str(EMPTY_PARAMETERS)
        .map_err(|error| GatewayError::invalid("tools", error.to_string()))?;
    let mut out = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        if tool.kind.as_str() != "function" {
            return Err(GatewayError::invalid(
                &format!("tools[{index}].type"),
                format!(
                    "Tools of type '{}' are not supported for Cohere models; use function tools.",
                    tool.kind.as_str()
                ),
            ));
        }
        let function = tool
            .function
            .as_ref()
            .ok_or_else(|| missing(&format!("tools[{index}].function")))?;
        let parameters = match function.parameters {
            None => empty,
            Some(raw) if raw.get().starts_with('{') => raw,
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

/// `tool_choice` as Cohere's, narrowing `tools` to the named function when there is one
/// (v2's `tool_choice` cannot name a function: `REQUIRED` with that tool alone forces it).
fn tool_choice(
    choice: Option<&oa::ToolChoice<'_>>,
    tools: &mut Vec<Tool<'_>>,
) -> Result<Option<&'static str>, GatewayError> {
    let only_with_tools = || {
        GatewayError::invalid(
            "tool_choice",
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
        )
    };
    match choice {
        None => Ok(None),
        Some(oa::ToolChoice::Mode(mode)) => match mode.as_str() {
            "auto" => Ok(None),
            // "none" without tools has nothing to act on.
            "none" => Ok((!tools.is_empty()).then_some("NONE")),
            "required" if tools.is_empty() => Err(only_with_tools()),
            "required" => Ok(Some("REQUIRED")),
            other => Err(GatewayError::invalid(
                "tool_choice",
                format!("Invalid value: '{other}'. Supported values are: 'none', 'auto' and 'required'."),
            )),
        },
        Some(oa::ToolChoice::Named(named)) => {
            if named.kind.as_str() != "function" {
                return Err(GatewayError::invalid(
                    "tool_choice.type",
                    format!(
                        "tool_choice of type '{}' is not supported for Cohere models.",
                        named.kind.as_str()
                    ),
                ));
            }
            let function = named
                .function
                .as_ref()
                .ok_or_else(|| missing("tool_choice.function"))?;
            if tools.is_empty() {
                return Err(only_with_tools());
            }
            tools.retain(|tool| tool.function.name == function.name.as_str());
            if tools.is_empty() {
                return Err(GatewayError::invalid(
                    "tool_choice.function.name",
                    format!(
                        "Invalid value for 'tool_choice.function.name': no tool is named '{}'.",
                        function.name.as_str()
                    ),
                ));
            }
            Ok(Some("REQUIRED"))
        }
    }
}

/// `response_format` as Cohere's.
fn response_format(raw: Option<&RawValue>) -> Result<Option<ResponseFormat<'_>>, GatewayError> {
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
    let json_schema = match format.kind.as_str() {
        "text" => return Ok(None),
        "json_object" => None,
        "json_schema" => {
            let schema = format
                .json_schema
                .as_ref()
                .ok_or_else(|| missing("response_format.json_schema"))?
                .schema;
            match schema {
                Some(schema) if schema.get().starts_with('{') => Some(schema),
                Some(_) => {
                    return Err(GatewayError::invalid(
                        "response_format.json_schema.schema",
                        "The schema must be a JSON Schema object.",
                    ))
                }
                // A named format without a schema: JSON, shape left to the model.
                None => None,
            }
        }
        other => {
            return Err(GatewayError::invalid(
                "response_format.type",
                format!("Invalid value: '{other}'. Supported values are: 'text', 'json_object' and 'json_schema'."),
            ))
        }
    };
    Ok(Some(ResponseFormat {
        kind: "json_object",
        json_schema,
    }))
}

/// Builds the Cohere request.
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
            "Cohere models give one choice per request; 'n' greater than 1 is not supported.",
        ));
    }
    if request.functions.is_some() {
        return Err(GatewayError::invalid(
            "functions",
            "The deprecated 'functions' parameter is not supported for Cohere models; use 'tools'.",
        ));
    }
    let seed = match request.seed {
        None => None,
        Some(seed) => Some(u64::try_from(seed).map_err(|_| {
            GatewayError::invalid("seed", "Cohere models take a 'seed' of 0 or more.")
        })?),
    };

    let mut messages = Vec::with_capacity(request.messages.len());
    for (index, message) in request.messages.iter().enumerate() {
        let role = message.role.as_str();
        match role {
            "system" | "developer" => {
                if let Some(content) = content(message.content.as_ref(), index, Parts::TextOnly)? {
                    messages.push(Message::System { content });
                }
            }
            "user" => {
                let content = content(message.content.as_ref(), index, Parts::TextAndImages)?
                    // Cohere requires a user message's content.
                    .unwrap_or(MessageContent::Text(""));
                messages.push(Message::User { content });
            }
            "assistant" => {
                let calls = match &message.tool_calls {
                    Some(calls) => tool_calls(calls, index)?,
                    None => Vec::new(),
                };
                let message = if calls.is_empty() {
                    match content(message.content.as_ref(), index, Parts::Assistant)? {
                        Some(content) => Message::Assistant {
                            content: Some(content),
                            tool_plan: None,
                            tool_calls: calls,
                        },
                        // An empty assistant turn says nothing.
                        None => continue,
                    }
                } else {
                    Message::Assistant {
                        content: None,
                        tool_plan: tool_plan(message.content.as_ref(), index)?,
                        tool_calls: calls,
                    }
                };
                messages.push(message);
            }
            "tool" => {
                let id = message
                    .tool_call_id
                    .as_deref()
                    .ok_or_else(|| missing(&format!("messages[{index}].tool_call_id")))?;
                messages.push(Message::Tool {
                    tool_call_id: id,
                    content: tool_content(message.content.as_ref(), index)?,
                });
            }
            other => {
                return Err(GatewayError::invalid(
                    &format!("messages[{index}].role"),
                    format!("Messages with role '{other}' are not supported for Cohere models; use 'tool' messages."),
                ))
            }
        }
    }

    if messages.is_empty() {
        // Every message was empty: Cohere refuses an empty list.
        return Err(GatewayError::invalid(
            "messages",
            "Cohere models need at least one message with content.",
        ));
    }

    let (mut tools, strict_tools) = match &request.tools {
        Some(list) => {
            // Cohere's strictness is one switch for every tool: on when every tool asks.
            let strict = !list.is_empty()
                && list.iter().all(|tool| {
                    tool.function
                        .as_ref()
                        .is_some_and(|function| function.strict == Some(true))
                });
            (tools(list)?, strict.then_some(true))
        }
        None => (Vec::new(), None),
    };
    let tool_choice = tool_choice(request.tool_choice.as_ref(), &mut tools)?;

    let upstream = ChatRequest {
        model: &deployment.upstream_model,
        messages,
        stream: summary.stream,
        tools,
        strict_tools,
        tool_choice,
        response_format: response_format(request.response_format)?,
        max_tokens: request.max_completion_tokens.or(request.max_tokens),
        stop_sequences: request
            .stop
            .as_ref()
            .map(|stop| stop.as_slice().iter().map(Str::as_str).collect())
            .unwrap_or_default(),
        temperature: request.temperature,
        seed,
        frequency_penalty: request.frequency_penalty,
        presence_penalty: request.presence_penalty,
        // Cohere takes p in [0.01, 0.99]: OpenAI's 1 (no cut, its default) is Cohere's
        // widest, 0 (the likeliest token only) its narrowest.
        p: request.top_p.map(|top_p| top_p.clamp(MIN_P, MAX_P)),
    };
    let mut out = Vec::with_capacity(body.len() + 128);
    serde_json::to_writer(&mut out, &upstream)
        .map_err(|error| GatewayError::invalid("body", error.to_string()))?;

    let mut headers = vec![("content-type", "application/json".to_string())];
    if !deployment.api_key.is_empty() {
        headers.push(("authorization", format!("Bearer {}", deployment.api_key)));
    }
    Ok(UpstreamRequest {
        path: CHAT_PATH.to_string(),
        headers,
        body: out,
    })
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// One count of a usage report: a JSON number (the API types it `number`), as whole tokens.
fn tokens(count: Option<f64>) -> u64 {
    match count {
        // In range (so finite and not negative): the cast neither wraps nor saturates.
        Some(count) if (0.0..1.8e19).contains(&count) => count.round() as u64,
        _ => 0,
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
struct Units {
    #[serde(default)]
    input_tokens: Option<f64>,
    #[serde(default)]
    output_tokens: Option<f64>,
}

impl Units {
    fn is_reported(&self) -> bool {
        self.input_tokens.is_some() || self.output_tokens.is_some()
    }
}

/// v2's `usage`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
struct CohereUsage {
    #[serde(default)]
    billed_units: Option<Units>,
    #[serde(default)]
    tokens: Option<Units>,
}

impl CohereUsage {
    /// The counts the gateway goes by: the billed units, else the model's tokens, else none
    /// (a count a report leaves out is 0).
    fn counted(&self) -> Option<(u64, u64)> {
        let units = self
            .billed_units
            .filter(Units::is_reported)
            .or(self.tokens.filter(Units::is_reported))?;
        Some((tokens(units.input_tokens), tokens(units.output_tokens)))
    }

    fn record(&self) -> Usage {
        match self.counted() {
            Some((prompt, completion)) => Usage {
                prompt_tokens: Some(prompt),
                completion_tokens: Some(completion),
                ..Usage::default()
            },
            None => Usage::default(),
        }
    }

    fn openai(&self) -> Option<oa::CompletionUsage> {
        let (prompt_tokens, completion_tokens) = self.counted()?;
        Some(oa::CompletionUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: oa::PromptTokensDetails { cached_tokens: 0 },
            completion_tokens_details: None,
            cost: None,
        })
    }
}

/// What a finish reason means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// An answer that ended with this OpenAI `finish_reason`.
    Reason(&'static str),
    /// No answer: Cohere failed while generating.
    Failed,
}

/// Cohere's `finish_reason` of an answer that made `called_tools`, for the client.
fn finish(reason: &str, called_tools: bool) -> Finish {
    match reason {
        "ERROR" => Finish::Failed,
        "MAX_TOKENS" | "TIMEOUT" => Finish::Reason("length"),
        _ if called_tools => Finish::Reason("tool_calls"),
        "TOOL_CALL" => Finish::Reason("tool_calls"),
        // COMPLETE, STOP_SEQUENCE, and whatever Cohere adds later.
        _ => Finish::Reason("stop"),
    }
}

/// The error a generation that failed becomes (`detail`: what Cohere said, if anything).
fn generation_failed(detail: Option<&str>) -> GatewayError {
    GatewayError::UpstreamGenerationFailed(match detail.filter(|text| !text.is_empty()) {
        Some(detail) => format!("Cohere reported finish_reason ERROR: {detail}"),
        None => "Cohere reported finish_reason ERROR.".to_string(),
    })
}

#[derive(Deserialize)]
struct ChatResponse<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Str<'a>>,
    #[serde(borrow)]
    message: ResponseMessage<'a>,
    #[serde(default)]
    usage: Option<CohereUsage>,
}

#[derive(Deserialize)]
struct ResponseMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Vec<ResponseContent<'a>>>,
    #[serde(borrow, default)]
    tool_plan: Option<Str<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ResponseToolCall<'a>>>,
}

#[derive(Deserialize)]
struct ResponseContent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
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
    arguments: Option<Str<'a>>,
}

/// The id the client gets for a tool call: Cohere's, or `call_<index>` when it gave none.
fn tool_call_id(id: Option<&str>, index: u64) -> Cow<'_, str> {
    match id.filter(|id| !id.is_empty()) {
        Some(id) => Cow::Borrowed(id),
        None => Cow::Owned(format!("call_{index}")),
    }
}

/// One stream event: its type and the members every type shares; `delta` is read by type.
#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
}

/// `delta` of content-start and content-delta.
#[derive(Deserialize)]
struct ContentDelta<'a> {
    #[serde(borrow, default)]
    message: Option<ContentDeltaMessage<'a>>,
}

#[derive(Deserialize)]
struct ContentDeltaMessage<'a> {
    #[serde(borrow, default)]
    content: Option<DeltaContent<'a>>,
}

#[derive(Deserialize)]
struct DeltaContent<'a> {
    /// The answer's text (a thinking block's deltas carry `thinking` instead).
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
}

/// `delta` of tool-plan-delta.
#[derive(Deserialize)]
struct ToolPlanDelta<'a> {
    #[serde(borrow, default)]
    message: Option<ToolPlanDeltaMessage<'a>>,
}

#[derive(Deserialize)]
struct ToolPlanDeltaMessage<'a> {
    #[serde(borrow, default)]
    tool_plan: Option<Str<'a>>,
}

/// `delta` of tool-call-start and tool-call-delta (one call, not a list).
#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(borrow, default)]
    message: Option<ToolCallDeltaMessage<'a>>,
}

#[derive(Deserialize)]
struct ToolCallDeltaMessage<'a> {
    #[serde(borrow, default)]
    tool_calls: Option<ResponseToolCall<'a>>,
}

/// `delta` of message-end.
#[derive(Deserialize)]
struct MessageEndDelta<'a> {
    #[serde(borrow, default)]
    finish_reason: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<CohereUsage>,
    #[serde(borrow, default)]
    error: Option<Str<'a>>,
}

fn bad_event(error: serde_json::Error) -> GatewayError {
    GatewayError::BadUpstreamResponse(format!("invalid Cohere stream event: {error}"))
}

/// The event's `delta` as `T` (an event without one reads as `T`'s empty value).
fn delta<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Result<Option<T>, GatewayError> {
    raw.map(|raw| serde_json::from_str(raw.get()).map_err(bad_event))
        .transpose()
}

/// Cohere's error body (`{"id", "message"}`) as the client's status and OpenAI error body.
/// 498 (a deny-listed token in the request or the answer) is no status an OpenAI client
/// knows: it is a 400 content policy refusal.
fn cohere_error(status: u16, body: &[u8]) -> (u16, Vec<u8>) {
    let client_status = if status == 498 { 400 } else { status };
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| value.get("message")?.as_str().map(str::to_string));
    let Some(message) = message else {
        return (client_status, openai_shaped_error(client_status, body));
    };
    let code = match status {
        401 => Some("invalid_api_key"),
        429 => Some("rate_limit_exceeded"),
        498 => Some("content_policy_violation"),
        _ => None,
    };
    let body = error_body(&message, error_type_for_status(client_status), None, code);
    (client_status, body)
}

/// Response side of a Cohere request.
#[derive(Debug)]
pub struct CohereResponse {
    created: u64,
    /// The deployment's model: Cohere's answers do not name theirs.
    upstream_model: String,
    /// Boxed so that lending it out for a feed moves a pointer, not the parser.
    parser: Option<Box<SseParser>>,
    /// The OpenAI stream the client gets (tool calls keyed by Cohere's event index).
    writer: ChunkWriter,
    /// Tool calls streamed so far.
    tool_calls: u64,
    /// The deployment's prices, for the cost on the usage chunk.
    prices: Option<Prices>,
}

impl CohereResponse {
    /// Response side for a request with the client's `include_usage`, to a deployment of
    /// `upstream_model` with these `prices`.
    pub fn new(
        context: &TranslateContext,
        include_usage: bool,
        prices: Option<Prices>,
        upstream_model: &str,
    ) -> Self {
        let mut writer = ChunkWriter::new(context.now_unix, include_usage);
        writer.set_model(upstream_model.to_string());
        CohereResponse {
            created: context.now_unix,
            upstream_model: upstream_model.to_string(),
            parser: Some(Box::default()),
            writer,
            tool_calls: 0,
            prices,
        }
    }

    fn handle_event(
        &mut self,
        name: &str,
        data: &str,
        out: &mut Vec<u8>,
        usage: &mut Usage,
    ) -> Result<(), GatewayError> {
        // The terminator after message-end (the stream is over by then).
        if data.trim() == "[DONE]" {
            return Ok(());
        }
        let event: StreamEvent<'_> = serde_json::from_str(data).map_err(bad_event)?;
        let kind = event.kind.as_deref().unwrap_or(name);
        match kind {
            "message-start" => {
                if let Some(id) = event.id.as_deref() {
                    self.writer.set_id(id.to_string());
                }
                self.writer.start(out)
            }
            "content-start" | "content-delta" => {
                let text = delta::<ContentDelta<'_>>(event.delta)?
                    .and_then(|delta| delta.message?.content?.text);
                match text {
                    Some(text) => self.writer.text(out, &text),
                    None => Ok(()),
                }
            }
            "tool-plan-delta" => {
                let plan = delta::<ToolPlanDelta<'_>>(event.delta)?
                    .and_then(|delta| delta.message?.tool_plan);
                match plan {
                    Some(plan) => self.writer.text(out, &plan),
                    None => Ok(()),
                }
            }
            "tool-call-start" => {
                let key = event.index.unwrap_or(self.tool_calls);
                self.tool_calls = self.tool_calls.saturating_add(1);
                let call = delta::<ToolCallDelta<'_>>(event.delta)?
                    .and_then(|delta| delta.message?.tool_calls);
                let (id, function) = match &call {
                    Some(call) => (call.id.as_deref(), call.function.as_ref()),
                    None => (None, None),
                };
                let name = function
                    .and_then(|function| function.name.as_deref())
                    .unwrap_or_default();
                self.writer
                    .tool_call_start(out, key, &tool_call_id(id, key), name)?;
                let arguments = function.and_then(|function| function.arguments.as_deref());
                self.writer
                    .tool_call_arguments(out, key, arguments.unwrap_or_default())
            }
            "tool-call-delta" => {
                let arguments = delta::<ToolCallDelta<'_>>(event.delta)?
                    .and_then(|delta| delta.message?.tool_calls?.function?.arguments);
                match (event.index, arguments) {
                    (Some(key), Some(arguments)) => {
                        self.writer.tool_call_arguments(out, key, &arguments)
                    }
                    _ => Ok(()),
                }
            }
            "message-end" => {
                let end = delta::<MessageEndDelta<'_>>(event.delta)?;
                self.end(out, end, usage)
            }
            // content-end, tool-call-end, citation-start, citation-end, debug, and whatever
            // Cohere adds later: nothing for the client.
            _ => Ok(()),
        }
    }

    /// message-end: the finish reason and the usage. The stream ends here rather than when
    /// the provider's body does, so no output waits for an end-of-stream call that may
    /// bring no data to write into.
    fn end(
        &mut self,
        out: &mut Vec<u8>,
        end: Option<MessageEndDelta<'_>>,
        usage: &mut Usage,
    ) -> Result<(), GatewayError> {
        let (reason, reported, error) = match &end {
            Some(end) => (
                end.finish_reason.as_deref(),
                end.usage,
                end.error.as_deref(),
            ),
            None => (None, None, None),
        };
        if let Some(reported) = reported {
            usage.merge(reported.record());
        }
        let finish = match (reason, error) {
            (Some(reason), _) => finish(reason, self.tool_calls > 0),
            // An error without a finish reason is a failure all the same.
            (None, Some(_)) => Finish::Failed,
            (None, None) => finish("COMPLETE", self.tool_calls > 0),
        };
        match finish {
            Finish::Failed => {
                self.writer.fail(out, &generation_failed(error).to_json());
                Ok(())
            }
            Finish::Reason(reason) => {
                self.writer.finish(out, reason)?;
                // The headers are long gone: the usage chunk is where the client learns
                // the cost (the same the usage record gets, from the same usage).
                let reported = reported.and_then(|reported| reported.openai()).unwrap_or(
                    oa::CompletionUsage {
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        total_tokens: 0,
                        prompt_tokens_details: oa::PromptTokensDetails { cached_tokens: 0 },
                        completion_tokens_details: None,
                        cost: None,
                    },
                );
                let usage_out = oa::CompletionUsage {
                    cost: stream_cost(self.prices.as_ref(), usage).map(oa::Cost),
                    ..reported
                };
                self.writer.end(out, usage_out)
            }
        }
    }
}

impl ProviderResponse for CohereResponse {
    fn rewrites_body(&self) -> bool {
        true
    }

    fn translate_body(
        &mut self,
        body: &[u8],
        usage: &mut Usage,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        let response: ChatResponse<'_> = serde_json::from_slice(body).map_err(|error| {
            GatewayError::BadUpstreamResponse(format!("not a Cohere chat response: {error}"))
        })?;
        if let Some(reported) = response.usage {
            usage.merge(reported.record());
        }
        let message = &response.message;
        // The tool plan first, as a stream has it.
        let mut text: Option<Cow<'_, str>> = message
            .tool_plan
            .as_deref()
            .filter(|plan| !plan.is_empty())
            .map(Cow::Borrowed);
        for part in message.content.as_deref().unwrap_or_default() {
            if part.kind.as_str() != "text" {
                continue;
            }
            if let Some(piece) = part.text.as_deref() {
                match &mut text {
                    None => text = Some(Cow::Borrowed(piece)),
                    Some(joined) => joined.to_mut().push_str(piece),
                }
            }
        }
        let calls = message.tool_calls.as_deref().unwrap_or_default();
        let ids: Vec<Cow<'_, str>> = calls
            .iter()
            .zip(0u64..)
            .map(|(call, index)| tool_call_id(call.id.as_deref(), index))
            .collect();
        let tool_calls: Vec<oa::ToolCallOut<'_>> = calls
            .iter()
            .zip(&ids)
            .map(|(call, id)| {
                let function = call.function.as_ref();
                oa::ToolCallOut {
                    id,
                    kind: "function",
                    function: oa::FunctionCallOut {
                        name: function
                            .and_then(|function| function.name.as_deref())
                            .unwrap_or_default(),
                        arguments: function
                            .and_then(|function| function.arguments.as_deref())
                            .filter(|arguments| !arguments.is_empty())
                            .unwrap_or("{}"),
                    },
                }
            })
            .collect();
        let reason = match finish(
            response.finish_reason.as_deref().unwrap_or("COMPLETE"),
            !tool_calls.is_empty(),
        ) {
            Finish::Reason(reason) => reason,
            Finish::Failed => return Err(generation_failed(None)),
        };
        let choice = oa::Choice {
            index: 0,
            message: oa::AssistantMessage {
                role: "assistant",
                content: text.as_deref(),
                refusal: None,
                tool_calls: &tool_calls,
            },
            logprobs: None,
            finish_reason: reason,
        };
        let completion = oa::ChatCompletion {
            id: response.id.as_deref().unwrap_or_default(),
            object: oa::CHAT_COMPLETION,
            created: self.created,
            model: &self.upstream_model,
            choices: std::slice::from_ref(&choice),
            usage: response.usage.and_then(|reported| reported.openai()),
        };
        serde_json::to_vec(&completion)
            .map(Some)
            .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))
    }

    fn error_status(&self, status: u16, _body: &[u8]) -> Option<u16> {
        (status == 498).then_some(400)
    }

    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8> {
        cohere_error(status, body).1
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
        // The parser lends events while the translator writes: take it out for the feed.
        let mut parser = self.parser.take().unwrap_or_default();
        let result = parser.feed(chunk, |event| {
            if self.writer.is_done() {
                return Ok(());
            }
            self.handle_event(event.event, event.data, out, usage)
        });
        self.parser = Some(parser);
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

    fn translator(include_usage: bool) -> CohereResponse {
        CohereResponse::new(
            &TranslateContext { now_unix: 7 },
            include_usage,
            None,
            "command-a",
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
    fn finish_reasons() {
        assert_eq!(finish("COMPLETE", false), Finish::Reason("stop"));
        assert_eq!(finish("STOP_SEQUENCE", false), Finish::Reason("stop"));
        assert_eq!(finish("MAX_TOKENS", false), Finish::Reason("length"));
        assert_eq!(finish("TIMEOUT", false), Finish::Reason("length"));
        assert_eq!(finish("TOOL_CALL", false), Finish::Reason("tool_calls"));
        assert_eq!(finish("TOOL_CALL", true), Finish::Reason("tool_calls"));
        assert_eq!(finish("COMPLETE", true), Finish::Reason("tool_calls"));
        assert_eq!(finish("MAX_TOKENS", true), Finish::Reason("length"));
        assert_eq!(finish("ERROR", false), Finish::Failed);
        assert_eq!(finish("ERROR", true), Finish::Failed);
        assert_eq!(finish("SOMETHING_NEW", false), Finish::Reason("stop"));
    }

    #[test]
    fn usage_counts_billed_units_then_tokens() {
        let both: CohereUsage = serde_json::from_str(
            r#"{"billed_units":{"input_tokens":5,"output_tokens":9},"tokens":{"input_tokens":71,"output_tokens":9},"cached_tokens":64}"#,
        )
        .unwrap();
        assert_eq!(both.counted(), Some((5, 9)));
        assert_eq!(
            both.record(),
            Usage {
                prompt_tokens: Some(5),
                completion_tokens: Some(9),
                ..Usage::default()
            }
        );
        let tokens_only: CohereUsage = serde_json::from_str(
            r#"{"billed_units":{},"tokens":{"input_tokens":7.0,"output_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(tokens_only.counted(), Some((7, 2)));
        let input_only: CohereUsage =
            serde_json::from_str(r#"{"billed_units":{"input_tokens":3}}"#).unwrap();
        assert_eq!(input_only.counted(), Some((3, 0)));
        let none: CohereUsage = serde_json::from_str("{}").unwrap();
        assert_eq!(none.counted(), None);
        assert!(!none.record().is_reported());
        assert_eq!(tokens(Some(-1.0)), 0);
        assert_eq!(tokens(Some(f64::MAX)), 0);
        assert_eq!(tokens(Some(2.6)), 3);
    }

    #[test]
    fn errors_keep_cohere_messages_and_498_is_a_400() {
        let (status, body) = cohere_error(401, br#"{"id":"e1","message":"invalid api token"}"#);
        assert_eq!(status, 401);
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            serde_json::json!({"error": {"message": "invalid api token", "type": "authentication_error", "param": null, "code": "invalid_api_key"}})
        );
        let (status, body) = cohere_error(498, br#"{"message":"blocked"}"#);
        assert_eq!(status, 400);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "content_policy_violation");
        let response = translator(false);
        assert_eq!(response.error_status(498, b""), Some(400));
        assert_eq!(response.error_status(429, b""), None);
        let text: Value =
            serde_json::from_slice(&response.translate_error(502, b"<html>bad gateway</html>"))
                .unwrap();
        assert_eq!(text["error"]["type"], "api_error");
    }

    #[test]
    fn nothing_after_message_end() {
        let mut response = translator(false);
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        let stream = b"event: message-start\ndata: {\"id\":\"m1\",\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\",\"content\":[],\"tool_plan\":\"\",\"tool_calls\":[],\"citations\":[]}}}\n\nevent: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"Hi\"}}}}\n\nevent: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\",\"usage\":{\"billed_units\":{\"input_tokens\":2,\"output_tokens\":1}}}}\n\ndata: [DONE]\n\n";
        response
            .translate_stream(stream, false, &mut out, &mut usage)
            .unwrap();
        let events = data_events(&out);
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(events[0]["id"], "m1");
        assert_eq!(events[0]["model"], "command-a");
        assert_eq!(events[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[3], "[DONE]");
        response
            .translate_stream(b"data: {garbage\n\n", true, &mut out, &mut usage)
            .unwrap();
        assert_eq!(data_events(&out).len(), 4);
        assert_eq!(usage.prompt_tokens, Some(2));
        assert_eq!(usage.completion_tokens, Some(1));
    }

    #[test]
    fn a_stream_without_message_end_was_cut() {
        let mut response = translator(true);
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        response
            .translate_stream(
                b"event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"Hi\"}}}}\n\n",
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
    fn a_broken_event_is_an_error() {
        let mut response = translator(false);
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        let error = response
            .translate_stream(
                b"event: content-delta\ndata: {\"type\":\"content-delta\",\"delta\":{\"message\":{\"content\":5}}}\n\n",
                false,
                &mut out,
                &mut usage,
            )
            .unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(out.is_empty());
    }

    #[test]
    fn thinking_is_not_the_answer() {
        let mut response = translator(false);
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        let stream = b"event: content-start\ndata: {\"type\":\"content-start\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"type\":\"thinking\",\"thinking\":\"\"}}}}\n\nevent: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"thinking\":\"hmm\"}}}}\n\n";
        response
            .translate_stream(stream, false, &mut out, &mut usage)
            .unwrap();
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }
}
