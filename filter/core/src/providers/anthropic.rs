//! Anthropic Messages API (`POST /v1/messages`), and Anthropic's models on Vertex AI (`POST
//! /v1/projects/<project>/locations/<location>/publishers/anthropic/models/<model>:rawPredict`,
//! `:streamRawPredict` for a stream): the same body without `model`, with `anthropic_version`
//! [`VERTEX_API_VERSION`], and the control plane's access token instead of a key. Answers
//! are the same.
//!
//! Request: the OpenAI chat request is parsed once (borrowing from the body) and written out
//! as an Anthropic request: system and developer messages become the top-level `system`,
//! consecutive messages of one role are merged (Anthropic alternates user and assistant),
//! tool calls become `tool_use` blocks and tool messages `tool_result` blocks.
//!
//! Response: a buffered message becomes a `chat.completion`; an event stream is translated
//! event by event, as its bytes arrive, into `chat.completion.chunk`s. The translator keeps
//! only the message id, the model name, token counts and one small entry per tool call.

use std::borrow::Cow;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::error_body;
use crate::openai_types::{self as oa, Content, ContentPart, Str};
use crate::pricing::{stream_cost, Prices};
use crate::providers::chunks::ChunkWriter;
use crate::providers::{
    openai_shaped_error, tool_call_arguments, vertex_model_path, ChunkOutput, ProviderResponse,
    TranslateContext, UpstreamRequest,
};
use crate::request::ChatRequestSummary;
use crate::snapshot::Deployment;
use crate::sse::{SseEventRef, SseParser};
use crate::{GatewayError, Usage};

/// Endpoint path, joined with the deployment's base path.
pub const MESSAGES_PATH: &str = "/v1/messages";
/// `anthropic-version` when the deployment sets none.
pub const DEFAULT_API_VERSION: &str = "2023-06-01";
/// The body's `anthropic_version` on Vertex AI, which takes the version there instead of in
/// a header (and the model in the path instead of the body).
pub const VERTEX_API_VERSION: &str = "vertex-2023-10-16";

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct MessagesRequest<'a> {
    /// Absent on Vertex AI, whose path names the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    /// Vertex AI's [`VERTEX_API_VERSION`]; absent on Anthropic's API (a header there).
    #[serde(skip_serializing_if = "Option::is_none")]
    anthropic_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block<'a>>,
    messages: Vec<InputMessage<'a>>,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolDefinition<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Role {
    User,
    Assistant,
}

#[derive(Serialize)]
struct InputMessage<'a> {
    role: Role,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    Image {
        source: ImageSource<'a>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: JsonObject<'a>,
    },
    ToolResult {
        tool_use_id: &'a str,
        #[serde(skip_serializing_if = "ToolResultContent::is_empty")]
        content: ToolResultContent<'a>,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolResultContent<'a> {
    Text(&'a str),
    Blocks(Vec<Block<'a>>),
}

impl ToolResultContent<'_> {
    fn is_empty(&self) -> bool {
        match self {
            ToolResultContent::Text(text) => text.is_empty(),
            ToolResultContent::Blocks(blocks) => blocks.is_empty(),
        }
    }
}

/// A JSON object written as the client sent it, or one of two fixed objects.
enum JsonObject<'a> {
    Raw(&'a RawValue),
    Empty,
    EmptySchema,
}

impl Serialize for JsonObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct EmptyMap {}
        #[derive(Serialize)]
        struct EmptySchema {
            #[serde(rename = "type")]
            kind: &'static str,
            properties: EmptyMap,
        }
        match self {
            JsonObject::Raw(raw) => raw.serialize(serializer),
            JsonObject::Empty => EmptyMap {}.serialize(serializer),
            JsonObject::EmptySchema => EmptySchema {
                kind: "object",
                properties: EmptyMap {},
            }
            .serialize(serializer),
        }
    }
}

#[derive(Serialize)]
struct ToolDefinition<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: JsonObject<'a>,
}

#[derive(Serialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

impl ToolChoice<'_> {
    fn of(kind: &'static str) -> Self {
        ToolChoice {
            kind,
            name: None,
            disable_parallel_tool_use: None,
        }
    }
}

/// The conversation being built; keeps roles alternating.
#[derive(Default)]
struct Conversation<'a> {
    messages: Vec<InputMessage<'a>>,
}

impl<'a> Conversation<'a> {
    /// Appends blocks as a message of `role`, merged into the previous one if it has the same
    /// role. A message without blocks is left out (Anthropic refuses empty content).
    fn push(&mut self, role: Role, blocks: Vec<Block<'a>>) {
        if blocks.is_empty() {
            return;
        }
        match self.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => self.messages.push(InputMessage {
                role,
                content: blocks,
            }),
        }
    }

    /// Adds a tool result to the current user message, after the tool results it already
    /// holds and before its text (Anthropic wants tool results first).
    fn push_tool_result(&mut self, block: Block<'a>) {
        match self.messages.last_mut() {
            Some(last) if last.role == Role::User => {
                let at = last
                    .content
                    .iter()
                    .take_while(|block| matches!(block, Block::ToolResult { .. }))
                    .count();
                last.content.insert(at, block);
            }
            _ => self.messages.push(InputMessage {
                role: Role::User,
                content: vec![block],
            }),
        }
    }
}

/// Which content parts a role may carry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parts {
    /// system, developer.
    TextOnly,
    /// user, tool.
    TextAndImages,
    /// assistant (refusal parts are its earlier refusals, sent back as text).
    Assistant,
}

fn content_blocks<'r>(
    content: Option<&'r Content<'_>>,
    message: usize,
    allowed: Parts,
) -> Result<Vec<Block<'r>>, GatewayError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(vec![Block::Text { text }]),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (index, part) in parts.iter().enumerate() {
                if let Some(block) = part_block(part, message, index, allowed)? {
                    blocks.push(block);
                }
            }
            Ok(blocks)
        }
    }
}

fn part_block<'r>(
    part: &'r ContentPart<'_>,
    message: usize,
    index: usize,
    allowed: Parts,
) -> Result<Option<Block<'r>>, GatewayError> {
    let param = |field: &str| format!("messages[{message}].content[{index}].{field}");
    let text = match (part.kind.as_str(), allowed) {
        ("text", _) => part.text.as_deref(),
        ("refusal", Parts::Assistant) => part.refusal.as_deref(),
        ("image_url", Parts::TextAndImages) => {
            let image = part.image_url.as_ref().ok_or_else(|| {
                GatewayError::invalid(
                    &param("image_url"),
                    format!("Missing required parameter: '{}'.", param("image_url")),
                )
            })?;
            let source = image_source(&image.url, &param("image_url.url"))?;
            return Ok(Some(Block::Image { source }));
        }
        (other, _) => {
            return Err(GatewayError::invalid(
                &param("type"),
                format!(
                    "Content parts of type '{other}' are not supported here for Anthropic models."
                ),
            ))
        }
    };
    let field = if part.kind.as_str() == "refusal" {
        "refusal"
    } else {
        "text"
    };
    let text = text.ok_or_else(|| {
        GatewayError::invalid(
            &param(field),
            format!("Missing required parameter: '{}'.", param(field)),
        )
    })?;
    // Anthropic refuses empty text blocks; an empty part says nothing anyway.
    Ok((!text.is_empty()).then_some(Block::Text { text }))
}

fn strip_prefix_ignore_case<'s>(text: &'s str, prefix: &str) -> Option<&'s str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

/// `data:<media type>[;params];base64,<data>` becomes a base64 source, an http(s) URL a url
/// source.
fn image_source<'r>(url: &'r str, param: &str) -> Result<ImageSource<'r>, GatewayError> {
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
        return Ok(ImageSource::Base64 { media_type, data });
    }
    if strip_prefix_ignore_case(url, "https://").is_some()
        || strip_prefix_ignore_case(url, "http://").is_some()
    {
        return Ok(ImageSource::Url { url });
    }
    Err(GatewayError::invalid(
        param,
        "Image URLs must be http(s) URLs or base64 data URLs.",
    ))
}

fn tool_use_blocks<'r>(
    calls: &'r [oa::ToolCall<'_>],
    message: usize,
    blocks: &mut Vec<Block<'r>>,
) -> Result<(), GatewayError> {
    for (index, call) in calls.iter().enumerate() {
        let input = match tool_call_arguments(call, message, index, "Anthropic")? {
            None => JsonObject::Empty,
            Some(raw) => JsonObject::Raw(raw),
        };
        blocks.push(Block::ToolUse {
            id: &call.id,
            name: &call.function.name,
            input,
        });
    }
    Ok(())
}

fn tool_definitions<'r>(
    tools: &'r [oa::Tool<'_>],
) -> Result<Vec<ToolDefinition<'r>>, GatewayError> {
    let mut definitions = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        if tool.kind.as_str() != "function" {
            return Err(GatewayError::invalid(
                &format!("tools[{index}].type"),
                format!("Tools of type '{}' are not supported for Anthropic models; use function tools.", tool.kind.as_str()),
            ));
        }
        let function = tool.function.as_ref().ok_or_else(|| {
            GatewayError::invalid(
                &format!("tools[{index}].function"),
                format!("Missing required parameter: 'tools[{index}].function'."),
            )
        })?;
        let input_schema = match function.parameters {
            None => JsonObject::EmptySchema,
            Some(raw) if raw.get().starts_with('{') => JsonObject::Raw(raw),
            Some(_) => {
                return Err(GatewayError::invalid(
                    &format!("tools[{index}].function.parameters"),
                    "Function parameters must be a JSON Schema object.",
                ))
            }
        };
        definitions.push(ToolDefinition {
            name: &function.name,
            description: function.description.as_deref(),
            input_schema,
        });
    }
    Ok(definitions)
}

fn tool_choice<'r>(
    choice: Option<&'r oa::ToolChoice<'_>>,
    parallel_tool_calls: Option<bool>,
    has_tools: bool,
) -> Result<Option<ToolChoice<'r>>, GatewayError> {
    let mut choice = match choice {
        None => None,
        Some(oa::ToolChoice::Mode(mode)) => Some(match mode.as_str() {
            "auto" => ToolChoice::of("auto"),
            "required" => ToolChoice::of("any"),
            "none" => ToolChoice::of("none"),
            other => {
                return Err(GatewayError::invalid(
                    "tool_choice",
                    format!("Invalid value: '{other}'. Supported values are: 'none', 'auto' and 'required'."),
                ))
            }
        }),
        Some(oa::ToolChoice::Named(named)) => {
            if named.kind.as_str() != "function" {
                return Err(GatewayError::invalid(
                    "tool_choice.type",
                    format!("tool_choice of type '{}' is not supported for Anthropic models.", named.kind.as_str()),
                ));
            }
            let function = named.function.as_ref().ok_or_else(|| {
                GatewayError::invalid(
                    "tool_choice.function",
                    "Missing required parameter: 'tool_choice.function'.",
                )
            })?;
            Some(ToolChoice {
                name: Some(&function.name),
                ..ToolChoice::of("tool")
            })
        }
    };
    if !has_tools {
        if choice
            .as_ref()
            .is_some_and(|choice| matches!(choice.kind, "any" | "tool"))
        {
            return Err(GatewayError::invalid(
                "tool_choice",
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            ));
        }
        return Ok(None);
    }
    if parallel_tool_calls == Some(false) {
        let choice = choice.get_or_insert_with(|| ToolChoice::of("auto"));
        // Anthropic's "none" has no such field: no tool is called at all.
        if choice.kind != "none" {
            choice.disable_parallel_tool_use = Some(true);
        }
    }
    Ok(choice)
}

/// Builds the Anthropic request.
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
            "Anthropic models return one choice per request; 'n' greater than 1 is not supported.",
        ));
    }
    if request.functions.is_some() {
        return Err(GatewayError::invalid(
            "functions",
            "The deprecated 'functions' parameter is not supported for Anthropic models; use 'tools'.",
        ));
    }
    if let Some(temperature) = request.temperature {
        if !(0.0..=1.0).contains(&temperature) {
            return Err(GatewayError::invalid(
                "temperature",
                format!("Invalid 'temperature': {temperature}. Anthropic models accept a temperature from 0 to 1."),
            ));
        }
    }

    let mut system = Vec::new();
    let mut conversation = Conversation::default();
    for (index, message) in request.messages.iter().enumerate() {
        match message.role.as_str() {
            "system" | "developer" => {
                system.extend(content_blocks(message.content.as_ref(), index, Parts::TextOnly)?);
            }
            "user" => {
                let blocks = content_blocks(message.content.as_ref(), index, Parts::TextAndImages)?;
                conversation.push(Role::User, blocks);
            }
            "assistant" => {
                let mut blocks = content_blocks(message.content.as_ref(), index, Parts::Assistant)?;
                if let Some(calls) = &message.tool_calls {
                    tool_use_blocks(calls, index, &mut blocks)?;
                }
                conversation.push(Role::Assistant, blocks);
            }
            "tool" => {
                let tool_use_id = message.tool_call_id.as_deref().ok_or_else(|| {
                    GatewayError::invalid(
                        &format!("messages[{index}].tool_call_id"),
                        format!("Missing required parameter: 'messages[{index}].tool_call_id'."),
                    )
                })?;
                let content = match &message.content {
                    Some(Content::Text(text)) => ToolResultContent::Text(text),
                    other => ToolResultContent::Blocks(content_blocks(
                        other.as_ref(),
                        index,
                        Parts::TextAndImages,
                    )?),
                };
                conversation.push_tool_result(Block::ToolResult {
                    tool_use_id,
                    content,
                });
            }
            other => {
                return Err(GatewayError::invalid(
                    &format!("messages[{index}].role"),
                    format!("Messages with role '{other}' are not supported for Anthropic models; use 'tool' messages."),
                ))
            }
        }
    }
    if conversation.messages.is_empty() {
        return Err(GatewayError::invalid(
            "messages",
            "Anthropic models need at least one user or assistant message with content besides system messages.",
        ));
    }

    let tools = match &request.tools {
        Some(tools) => tool_definitions(tools)?,
        None => Vec::new(),
    };
    let tool_choice = tool_choice(
        request.tool_choice.as_ref(),
        request.parallel_tool_calls,
        !tools.is_empty(),
    )?;
    let stop_sequences = request
        .stop
        .as_ref()
        .map(|stop| stop.as_slice().iter().map(Str::as_str).collect())
        .unwrap_or_default();
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(u64::from(deployment.default_max_tokens));
    let metadata = request
        .user
        .as_deref()
        .filter(|user| !user.is_empty())
        .map(|user_id| Metadata { user_id });

    let vertex = deployment.vertex();
    let upstream = MessagesRequest {
        model: vertex
            .is_none()
            .then_some(deployment.upstream_model.as_str()),
        anthropic_version: vertex.map(|_| VERTEX_API_VERSION),
        system,
        messages: conversation.messages,
        max_tokens,
        stop_sequences,
        temperature: request.temperature,
        top_p: request.top_p,
        metadata,
        tools,
        tool_choice,
        stream: summary.stream,
    };
    let mut out = Vec::with_capacity(body.len() + 256);
    serde_json::to_writer(&mut out, &upstream)
        .map_err(|error| GatewayError::invalid("body", error.to_string()))?;

    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(vertex) = vertex {
        // Vertex AI: the model in the path, the version in the body, the access token added
        // by the signing step.
        let method = if summary.stream {
            "streamRawPredict"
        } else {
            "rawPredict"
        };
        return Ok(UpstreamRequest {
            path: vertex_model_path(vertex, "anthropic", &deployment.upstream_model, method),
            headers,
            body: out,
        });
    }
    if !deployment.api_key.is_empty() {
        headers.push(("x-api-key", deployment.api_key.clone()));
    }
    let version = if deployment.api_version.is_empty() {
        DEFAULT_API_VERSION
    } else {
        deployment.api_version.as_str()
    };
    headers.push(("anthropic-version", version.to_string()));
    Ok(UpstreamRequest {
        path: MESSAGES_PATH.to_string(),
        headers,
        body: out,
    })
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// Anthropic's usage object; every field may be missing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    fn merge(&mut self, later: AnthropicUsage) {
        let fields = [
            (&mut self.input_tokens, later.input_tokens),
            (&mut self.output_tokens, later.output_tokens),
            (
                &mut self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            ),
            (
                &mut self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            ),
        ];
        for (field, value) in fields {
            if value.is_some() {
                *field = value;
            }
        }
    }

    /// All input tokens: Anthropic counts cache writes and reads apart from `input_tokens`.
    fn prompt_tokens(&self) -> Option<u64> {
        let input = self.input_tokens?;
        Some(
            input
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
                .saturating_add(self.cache_read_input_tokens.unwrap_or(0)),
        )
    }

    fn record(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens(),
            completion_tokens: self.output_tokens,
            cached_prompt_tokens: self.cache_read_input_tokens,
            cache_creation_tokens: self.cache_creation_input_tokens,
            // Anthropic counts thinking in output_tokens and does not report it apart.
            reasoning_tokens: None,
        }
    }

    fn openai(&self) -> oa::CompletionUsage {
        let prompt_tokens = self.prompt_tokens().unwrap_or(0);
        let completion_tokens = self.output_tokens.unwrap_or(0);
        oa::CompletionUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: oa::PromptTokensDetails {
                cached_tokens: self.cache_read_input_tokens.unwrap_or(0),
            },
            completion_tokens_details: None,
            cost: None,
        }
    }
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn, and whatever Anthropic adds later.
        _ => "stop",
    }
}

#[derive(Deserialize)]
struct MessageBody<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    id: Str<'a>,
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(borrow)]
    content: Vec<ResponseBlock<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct ResponseBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrorEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow)]
    error: ErrorObject<'a>,
}

#[derive(Deserialize)]
struct ErrorObject<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    message: Option<Str<'a>>,
}

impl ErrorObject<'_> {
    /// OpenAI's shape, with the code the status or message names ("prompt is too long" is
    /// `context_length_exceeded`, 529 `overloaded`).
    fn to_openai(&self, status: u16) -> Vec<u8> {
        let message = self
            .message
            .as_deref()
            .unwrap_or("The upstream provider reported an error.");
        error_body(
            message,
            self.kind.as_deref().unwrap_or("api_error"),
            None,
            crate::providers::errors::inferred_code(status, message),
        )
    }
}

/// One event of the stream; the fields of every event type, all optional.
#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    message: Option<StartedMessage<'a>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    content_block: Option<StartedBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
    #[serde(borrow, default)]
    error: Option<ErrorObject<'a>>,
}

#[derive(Deserialize)]
struct StartedMessage<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct StartedBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    partial_json: Option<Str<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
}

/// The text of a `content_block_delta` event carrying a `text_delta`, still JSON-escaped,
/// when the event has exactly the layout Anthropic sends. Most events of a stream are these,
/// and their text can go to the client as it stands, without being parsed and escaped again.
/// `None` sends the event through the general parser.
fn plain_text_delta(data: &str) -> Option<&str> {
    let rest = data.strip_prefix(r#"{"type":"content_block_delta","index":"#)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let text = rest
        .get(digits..)?
        .strip_prefix(r#","delta":{"type":"text_delta","text":""#)?
        .strip_suffix(r#""}}"#)?;
    // A text ending in an odd backslash would have swallowed the closing quote: the check
    // refuses it, and every other odd shape.
    oa::is_json_string_body(text.as_bytes()).then_some(text)
}

/// Response side of an Anthropic request.
#[derive(Debug)]
pub struct AnthropicResponse {
    created: u64,
    /// Boxed so that lending it out for a feed moves a pointer, not the parser (a move of
    /// the parser costs a memcpy per chunk).
    parser: Option<Box<SseParser>>,
    /// The OpenAI stream the client gets (content block indexes key its tool calls).
    writer: ChunkWriter,
    tokens: AnthropicUsage,
    /// The deployment's prices, for the cost on the usage chunk.
    prices: Option<Prices>,
}

impl AnthropicResponse {
    /// Response side for a request sent with `stream` and the client's `include_usage`, to a
    /// deployment with these `prices`.
    pub fn new(
        context: &TranslateContext,
        _stream: bool,
        include_usage: bool,
        prices: Option<Prices>,
    ) -> Self {
        AnthropicResponse {
            created: context.now_unix,
            parser: Some(Box::default()),
            writer: ChunkWriter::new(context.now_unix, include_usage),
            tokens: AnthropicUsage::default(),
            prices,
        }
    }

    fn handle_event(
        &mut self,
        event: SseEventRef<'_>,
        out: &mut Vec<u8>,
        usage: &mut Usage,
    ) -> Result<(), GatewayError> {
        let parsed: StreamEvent<'_> = serde_json::from_str(event.data).map_err(|error| {
            GatewayError::BadUpstreamResponse(format!(
                "invalid Anthropic stream event {:?}: {error}",
                event.event
            ))
        })?;
        let kind = parsed.kind.as_deref().unwrap_or(event.event);
        match kind {
            "message_start" => {
                if let Some(message) = parsed.message {
                    if let Some(id) = message.id {
                        self.writer.set_id(id.0.into_owned());
                    }
                    if let Some(model) = message.model {
                        self.writer.set_model(model.0.into_owned());
                    }
                    if let Some(reported) = message.usage {
                        // output_tokens here is a placeholder; message_delta has the count.
                        self.tokens.merge(AnthropicUsage {
                            output_tokens: None,
                            ..reported
                        });
                        usage.merge(self.tokens.record());
                    }
                }
                self.writer.start(out)
            }
            "content_block_start" => {
                let Some(block) = parsed.content_block else {
                    return Ok(());
                };
                match block.kind.as_str() {
                    "text" => self
                        .writer
                        .text(out, block.text.as_deref().unwrap_or_default()),
                    "tool_use" => self.writer.tool_call_start(
                        out,
                        parsed.index.unwrap_or(u64::MAX),
                        block.id.as_deref().unwrap_or_default(),
                        block.name.as_deref().unwrap_or_default(),
                    ),
                    // thinking, redacted_thinking, server tools ...: not part of the
                    // Chat Completions answer.
                    _ => Ok(()),
                }
            }
            "content_block_delta" => {
                let Some(delta) = parsed.delta else {
                    return Ok(());
                };
                match delta.kind.as_deref() {
                    Some("text_delta") => self
                        .writer
                        .text(out, delta.text.as_deref().unwrap_or_default()),
                    Some("input_json_delta") => self.writer.tool_call_arguments(
                        out,
                        parsed.index.unwrap_or(u64::MAX),
                        delta.partial_json.as_deref().unwrap_or_default(),
                    ),
                    // thinking_delta, signature_delta, citations_delta ...
                    _ => Ok(()),
                }
            }
            "message_delta" => {
                if let Some(reported) = parsed.usage {
                    // Counts in message_delta are cumulative.
                    self.tokens.merge(reported);
                    usage.merge(self.tokens.record());
                }
                match parsed.delta.and_then(|delta| delta.stop_reason) {
                    Some(reason) => self.writer.finish(out, finish_reason(&reason)),
                    None => Ok(()),
                }
            }
            "message_stop" => {
                // The headers are long gone: the usage chunk is where the client learns the
                // cost (the same the usage record gets, from the same usage).
                let usage_out = oa::CompletionUsage {
                    cost: stream_cost(self.prices.as_ref(), usage).map(oa::Cost),
                    ..self.tokens.openai()
                };
                self.writer.end(out, usage_out)
            }
            "error" => {
                let body = match &parsed.error {
                    // Mid-stream the status is long sent: the error's type says which it is.
                    Some(error) => error.to_openai(match error.kind.as_deref() {
                        Some("overloaded_error") => 529,
                        Some("rate_limit_error") => 429,
                        _ => 200,
                    }),
                    None => error_body(
                        "The upstream provider reported an error in the stream.",
                        "api_error",
                        None,
                        None,
                    ),
                };
                self.writer.fail(out, &body);
                Ok(())
            }
            // ping, content_block_stop, and event types Anthropic may add.
            _ => Ok(()),
        }
    }
}

impl ProviderResponse for AnthropicResponse {
    fn rewrites_body(&self) -> bool {
        true
    }

    fn translate_body(
        &mut self,
        body: &[u8],
        usage: &mut Usage,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        let message: MessageBody<'_> = serde_json::from_slice(body).map_err(|error| {
            GatewayError::BadUpstreamResponse(format!("not an Anthropic message: {error}"))
        })?;
        if let Some(kind) = &message.kind {
            if kind.as_str() != "message" {
                return Err(GatewayError::BadUpstreamResponse(format!(
                    "expected an Anthropic message, got type {:?}",
                    kind.as_str()
                )));
            }
        }
        let mut text: Option<Cow<'_, str>> = None;
        let mut tool_calls = Vec::new();
        for block in &message.content {
            match block.kind.as_str() {
                "text" => {
                    let piece = block.text.as_deref().unwrap_or_default();
                    match &mut text {
                        None => text = Some(Cow::Borrowed(piece)),
                        Some(joined) => joined.to_mut().push_str(piece),
                    }
                }
                "tool_use" => {
                    let (Some(id), Some(name)) = (&block.id, &block.name) else {
                        return Err(GatewayError::BadUpstreamResponse(
                            "a tool_use block has no id or name".into(),
                        ));
                    };
                    tool_calls.push(oa::ToolCallOut {
                        id,
                        kind: "function",
                        function: oa::FunctionCallOut {
                            name,
                            arguments: block.input.map_or("{}", RawValue::get),
                        },
                    });
                }
                _ => {}
            }
        }
        let reported = message.usage.unwrap_or_default();
        if let Some(reported) = message.usage {
            usage.merge(reported.record());
        }
        let choice = oa::Choice {
            index: 0,
            message: oa::AssistantMessage {
                role: "assistant",
                content: text.as_deref(),
                refusal: None,
                tool_calls: &tool_calls,
            },
            logprobs: None,
            finish_reason: finish_reason(message.stop_reason.as_deref().unwrap_or("end_turn")),
        };
        let completion = oa::ChatCompletion {
            id: &message.id,
            object: oa::CHAT_COMPLETION,
            created: self.created,
            model: message.model.as_deref().unwrap_or_default(),
            choices: std::slice::from_ref(&choice),
            usage: message.usage.map(|_| reported.openai()),
        };
        serde_json::to_vec(&completion)
            .map(Some)
            .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))
    }

    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8> {
        match serde_json::from_slice::<ErrorEnvelope<'_>>(body) {
            Ok(envelope) if envelope.kind.as_str() == "error" => envelope.error.to_openai(status),
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
        // The parser lends events while the translator writes: take it out for the feed.
        let mut parser = self.parser.take().unwrap_or_default();
        let result = parser.feed(chunk, |event| {
            if self.writer.is_done() {
                return Ok(());
            }
            match plain_text_delta(event.data) {
                Some(escaped_text) => self.writer.escaped_text(out, escaped_text),
                None => self.handle_event(event, out, usage),
            }
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

    fn translator(include_usage: bool) -> AnthropicResponse {
        AnthropicResponse::new(&TranslateContext { now_unix: 7 }, true, include_usage, None)
    }

    fn data_events(out: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let data = event.strip_prefix("data: ").unwrap();
                serde_json::from_str(data)
                    .unwrap_or_else(|_| serde_json::Value::String(data.into()))
            })
            .collect()
    }

    #[test]
    fn data_urls_and_http_urls() {
        assert!(matches!(
            image_source("data:image/png;base64,AAAA", "p").unwrap(),
            ImageSource::Base64 {
                media_type: "image/png",
                data: "AAAA"
            }
        ));
        assert!(matches!(
            image_source("DATA:image/jpeg;name=a.jpg;base64,QQ==", "p").unwrap(),
            ImageSource::Base64 {
                media_type: "image/jpeg",
                data: "QQ=="
            }
        ));
        assert!(matches!(
            image_source("HTTPS://example.com/a.png", "p").unwrap(),
            ImageSource::Url { .. }
        ));
        for bad in [
            "data:image/png,AAAA",
            "data:;base64,AAAA",
            "data:image/png;base64",
            "ftp://x/a.png",
            "a.png",
            "",
        ] {
            let error = image_source(bad, "messages[0].content[0].image_url.url").unwrap_err();
            assert_eq!(
                error.param(),
                Some("messages[0].content[0].image_url.url"),
                "{bad}"
            );
        }
    }

    #[test]
    fn tool_results_go_before_text_in_a_merged_user_message() {
        let mut conversation = Conversation::default();
        conversation.push(Role::User, vec![Block::Text { text: "a" }]);
        conversation.push_tool_result(Block::ToolResult {
            tool_use_id: "1",
            content: ToolResultContent::Text("r1"),
        });
        conversation.push_tool_result(Block::ToolResult {
            tool_use_id: "2",
            content: ToolResultContent::Text("r2"),
        });
        conversation.push(Role::User, vec![Block::Text { text: "b" }]);
        let json = serde_json::to_value(&conversation.messages).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "1", "content": "r1"},
                {"type": "tool_result", "tool_use_id": "2", "content": "r2"},
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"}
            ]}])
        );
    }

    /// A priced stream: the usage chunk says what the usage record will, in plain decimal.
    #[test]
    fn the_usage_chunk_carries_the_cost_when_priced() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let prices = Prices {
            input: Some(1e-8),
            output: Some(2e-8),
            ..Prices::default()
        };
        let run = |prices: Option<Prices>, include_usage: bool| {
            let mut response = AnthropicResponse::new(
                &TranslateContext { now_unix: 7 },
                true,
                include_usage,
                prices,
            );
            let (mut out, mut usage) = (Vec::new(), Usage::default());
            response
                .translate_stream(stream.as_bytes(), true, &mut out, &mut usage)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        // 3 * 1e-8 + 2 * 2e-8, which serde_json alone would write as 7e-8.
        assert_eq!(3.0 * 1e-8 + 2.0 * 2e-8, 0.00000007);
        let priced = run(Some(prices), true);
        assert!(
            priced.contains("data: {\"id\":\"m\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":0},\"cost\":0.00000007}}\n\ndata: [DONE]\n\n"),
            "{priced}"
        );
        // Unpriced: the same stream without the member; without include_usage: no usage chunk.
        assert_eq!(priced.replace(",\"cost\":0.00000007", ""), run(None, true));
        assert_eq!(run(Some(prices), false), run(None, false));
        assert!(!run(Some(prices), false).contains("\"usage\""));
    }

    #[test]
    fn nothing_after_the_end_of_the_stream() {
        let mut response = translator(false);
        let mut out = Vec::new();
        let mut usage = Usage::default();
        let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"late\"}}\n\n";
        response
            .translate_stream(stream, false, &mut out, &mut usage)
            .unwrap();
        response
            .translate_stream(b"data: garbage\n\n", true, &mut out, &mut usage)
            .unwrap();
        let events = data_events(&out);
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[2], "[DONE]");
        assert_eq!(usage.prompt_tokens, Some(3));
        // message_start's output_tokens is a placeholder, not a count.
        assert_eq!(usage.completion_tokens, None);
    }

    #[test]
    fn unknown_events_and_blocks_are_ignored_and_one_finish_chunk_is_sent() {
        let mut response = translator(false);
        let mut out = Vec::new();
        let mut usage = Usage::default();
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\"}}\n\n",
            "event: brand_new\ndata: {\"type\":\"brand_new\",\"x\":1}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"s\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":9,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":5}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":6}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        response
            .translate_stream(stream.as_bytes(), true, &mut out, &mut usage)
            .unwrap();
        let events = data_events(&out);
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(events[1]["choices"][0]["finish_reason"], "length");
        assert_eq!(usage.completion_tokens, Some(6));
    }

    #[test]
    fn a_broken_event_is_an_error() {
        let mut response = translator(false);
        let mut out = Vec::new();
        let mut usage = Usage::default();
        let error = response
            .translate_stream(
                b"event: message_start\ndata: {not json\n\n",
                false,
                &mut out,
                &mut usage,
            )
            .unwrap_err();
        assert_eq!(error.status(), 502);
    }

    #[test]
    fn plain_text_deltas_take_the_short_path_and_odd_ones_do_not() {
        let event = |text: &str| {
            format!(
                r#"{{"type":"content_block_delta","index":12,"delta":{{"type":"text_delta","text":"{text}"}}}}"#
            )
        };
        assert_eq!(plain_text_delta(&event("Hi")), Some("Hi"));
        assert_eq!(plain_text_delta(&event(r#"a\n\"b\""#)), Some(r#"a\n\"b\""#));
        // The text's last backslash escapes the quote: not a complete string.
        assert_eq!(plain_text_delta(&event(r"a\")), None);
        for other in [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
            r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}"#,
            r#"{"type":"content_block_delta","index":,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi","x":1}}"#,
        ] {
            assert_eq!(plain_text_delta(other), None, "{other}");
        }
    }

    /// The fast path copied a text's escapes as they came, and serde refuses a lone surrogate
    /// escape: the client got a chunk that is not JSON. Surrogate escapes now take the general
    /// path, which decodes pairs and refuses lone ones.
    #[test]
    fn surrogate_escapes_take_the_general_path() {
        let delta = |text: &str| {
            format!(
                "data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n"
            )
        };
        let mut response = translator(false);
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        response
            .translate_stream(
                delta(r"\ud83d\ude00").as_bytes(),
                false,
                &mut out,
                &mut usage,
            )
            .unwrap();
        let events = data_events(&out);
        assert_eq!(events[1]["choices"][0]["delta"]["content"], "\u{1f600}");

        let mut response = translator(false);
        out.clear();
        let error = response
            .translate_stream(delta(r"\ud800").as_bytes(), false, &mut out, &mut usage)
            .unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn stop_reasons() {
        assert_eq!(finish_reason("end_turn"), "stop");
        assert_eq!(finish_reason("stop_sequence"), "stop");
        assert_eq!(finish_reason("pause_turn"), "stop");
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("model_context_window_exceeded"), "length");
        assert_eq!(finish_reason("tool_use"), "tool_calls");
        assert_eq!(finish_reason("refusal"), "content_filter");
        assert_eq!(finish_reason("something_new"), "stop");
    }
}
