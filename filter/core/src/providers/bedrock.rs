//! AWS Bedrock's Converse API: `POST <api_base>/model/<model id>/converse`, and
//! `/converse-stream` for a stream, answered in the binary AWS event stream
//! (`application/vnd.amazon.eventstream`). Requests carry no key: the gateway signs each one
//! with SigV4 after translation (`gateway::sign_for_provider`).
//!
//! Request: the OpenAI chat request is parsed once (borrowing from the body) and written out
//! as a Converse request. System and developer messages become the top-level `system` text
//! blocks; the conversation alternates `user` and `assistant` (consecutive messages of one
//! role are merged, and it must start with a user message: Converse refuses anything else);
//! content becomes `text` and `image` blocks (base64 data URLs only: Converse cannot fetch
//! an image URL), assistant tool calls `toolUse` blocks and tool messages `toolResult`
//! blocks (their text and images, placed before the text of the user message they join).
//! `max_tokens` / `max_completion_tokens`, `temperature`, `top_p` and `stop` go into
//! `inferenceConfig` (only when the client gives them: Converse's defaults are the model's).
//! Tools become `toolConfig.tools[].toolSpec`; `tool_choice` `auto`, `required` and a named
//! function become Converse's `auto`, `any` and `tool`. Converse has no "none": the tools are
//! left out (as LiteLLM does), unless the conversation already holds tool blocks, which
//! Converse accepts only with a `toolConfig` (then the tools go without a choice).
//! `parallel_tool_calls` has no Converse equivalent and is not enforced. `response_format`
//! `json_schema` becomes Converse's structured output (`outputConfig.textFormat`);
//! `json_object` has no Converse equivalent (a schema is required) and is refused with 400.
//!
//! Response: a buffered answer becomes a `chat.completion` (text blocks joined, `toolUse`
//! blocks as tool calls); a stream is decoded frame by frame as its bytes arrive (the event
//! stream decoder holds at most one unfinished frame, bounded at [`MAX_FRAME_BYTES`]) and
//! written as `chat.completion.chunk`s. Converse names neither the completion nor the model
//! in its answer: the id is made from the request (see [`completion_id`]) and the model is
//! the deployment's.

use std::borrow::Cow;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::aws::eventstream::{Decoder, Message, MessageType};
use crate::error::error_body;
use crate::openai_types::{self as oa, Content, ContentPart, Str};
use crate::pricing::{stream_cost, Prices};
use crate::providers::chunks::ChunkWriter;
use crate::providers::{
    push_path_segment, tool_call_arguments, ChunkOutput, Framing, ProviderResponse,
    TranslateContext, UpstreamRequest,
};
use crate::request::ChatRequestSummary;
use crate::snapshot::Deployment;
use crate::{GatewayError, Usage};

/// The SigV4 signing name of `bedrock-runtime` endpoints.
pub const SIGNING_SERVICE: &str = "bedrock";

/// The largest event stream frame accepted, as for a server-sent event: a Converse event
/// carries one text or tool-input delta, far below it.
pub const MAX_FRAME_BYTES: usize = crate::sse::DEFAULT_MAX_EVENT_BYTES;

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseRequest<'a> {
    messages: Vec<InputMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<SystemBlock<'a>>,
    #[serde(skip_serializing_if = "InferenceConfig::is_empty")]
    inference_config: InferenceConfig<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfig<'a>>,
}

#[derive(Serialize)]
struct SystemBlock<'a> {
    text: &'a str,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a str>,
}

impl InferenceConfig<'_> {
    fn is_empty(&self) -> bool {
        self.max_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.stop_sequences.is_empty()
    }
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

/// A content block: a union, written `{"<member>": value}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Block<'a> {
    Text(&'a str),
    Image(Image<'a>),
    ToolUse(ToolUse<'a>),
    ToolResult(ToolResult<'a>),
}

#[derive(Debug, Serialize)]
struct Image<'a> {
    format: &'static str,
    source: ImageSource<'a>,
}

/// The image's bytes, base64 as the JSON protocol carries a blob (the data URL's payload as
/// the client sent it, not decoded).
#[derive(Debug, Serialize)]
struct ImageSource<'a> {
    bytes: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse<'a> {
    tool_use_id: &'a str,
    name: &'a str,
    input: JsonObject<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolResult<'a> {
    tool_use_id: &'a str,
    content: Vec<ToolResultBlock<'a>>,
}

/// What a tool result holds: a union like [`Block`].
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ToolResultBlock<'a> {
    Text(&'a str),
    Image(Image<'a>),
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
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    tools: Vec<ToolEntry<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolEntry<'a> {
    tool_spec: ToolSpec<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: InputSchema<'a>,
}

#[derive(Serialize)]
struct InputSchema<'a> {
    json: JsonObject<'a>,
}

#[derive(Serialize)]
struct EmptyObject {}

/// Converse's tool choice: a union of `auto`, `any` and `tool`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ToolChoice<'a> {
    Auto(EmptyObject),
    Any(EmptyObject),
    Tool(NamedTool<'a>),
}

#[derive(Serialize)]
struct NamedTool<'a> {
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutputConfig<'a> {
    text_format: TextFormat<'a>,
}

#[derive(Serialize)]
struct TextFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    structure: FormatStructure<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FormatStructure<'a> {
    json_schema: JsonSchemaDefinition<'a>,
}

/// Converse takes the schema as a string holding the JSON.
#[derive(Serialize)]
struct JsonSchemaDefinition<'a> {
    schema: &'a str,
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
}

/// The conversation being built; keeps roles alternating.
#[derive(Default)]
struct Conversation<'a> {
    messages: Vec<InputMessage<'a>>,
    /// Whether a `toolUse` or `toolResult` block is in it (Converse then wants a
    /// `toolConfig`).
    has_tool_blocks: bool,
}

impl<'a> Conversation<'a> {
    /// Appends blocks as a message of `role`, merged into the previous one if it has the same
    /// role. A message without blocks is left out (Converse refuses empty content).
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
    /// holds and before its text (models behind Converse, Claude's among them, want the
    /// results first).
    fn push_tool_result(&mut self, block: Block<'a>) {
        self.has_tool_blocks = true;
        match self.messages.last_mut() {
            Some(last) if last.role == Role::User => {
                let at = last
                    .content
                    .iter()
                    .take_while(|block| matches!(block, Block::ToolResult(_)))
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

fn missing(param: &str) -> GatewayError {
    GatewayError::invalid(param, format!("Missing required parameter: '{param}'."))
}

/// The text or image of one content part; `None` for an empty text (Converse refuses blank
/// text blocks, and an empty part says nothing).
enum PartContent<'r> {
    Text(&'r str),
    Image(Image<'r>),
}

fn part_content<'r>(
    part: &'r ContentPart<'_>,
    message: usize,
    index: usize,
    allowed: Parts,
) -> Result<Option<PartContent<'r>>, GatewayError> {
    let param = |field: &str| format!("messages[{message}].content[{index}].{field}");
    let (text, field) = match (part.kind.as_str(), allowed) {
        ("text", _) => (part.text.as_deref(), "text"),
        ("refusal", Parts::Assistant) => (part.refusal.as_deref(), "refusal"),
        ("image_url", Parts::TextAndImages) => {
            let image = part
                .image_url
                .as_ref()
                .ok_or_else(|| missing(&param("image_url")))?;
            let image = image_block(&image.url, &param("image_url.url"))?;
            return Ok(Some(PartContent::Image(image)));
        }
        (other, _) => {
            return Err(GatewayError::invalid(
                &param("type"),
                format!(
                    "Content parts of type '{other}' are not supported here for Bedrock models."
                ),
            ))
        }
    };
    let text = text.ok_or_else(|| missing(&param(field)))?;
    Ok((!text.is_empty()).then_some(PartContent::Text(text)))
}

fn content_blocks<'r>(
    content: Option<&'r Content<'_>>,
    message: usize,
    allowed: Parts,
) -> Result<Vec<Block<'r>>, GatewayError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(vec![Block::Text(text)]),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (index, part) in parts.iter().enumerate() {
                match part_content(part, message, index, allowed)? {
                    Some(PartContent::Text(text)) => blocks.push(Block::Text(text)),
                    Some(PartContent::Image(image)) => blocks.push(Block::Image(image)),
                    None => {}
                }
            }
            Ok(blocks)
        }
    }
}

fn tool_result_content<'r>(
    content: Option<&'r Content<'_>>,
    message: usize,
) -> Result<Vec<ToolResultBlock<'r>>, GatewayError> {
    match content {
        // A result must hold something; an empty one is sent as the empty text it was.
        None => Ok(vec![ToolResultBlock::Text("")]),
        Some(Content::Text(text)) => Ok(vec![ToolResultBlock::Text(text)]),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (index, part) in parts.iter().enumerate() {
                match part_content(part, message, index, Parts::TextAndImages)? {
                    Some(PartContent::Text(text)) => blocks.push(ToolResultBlock::Text(text)),
                    Some(PartContent::Image(image)) => blocks.push(ToolResultBlock::Image(image)),
                    None => {}
                }
            }
            if blocks.is_empty() {
                blocks.push(ToolResultBlock::Text(""));
            }
            Ok(blocks)
        }
    }
}

fn strip_prefix_ignore_case<'s>(text: &'s str, prefix: &str) -> Option<&'s str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

/// Converse's image format for a media type: the four it takes.
fn image_format(media_type: &str) -> Option<&'static str> {
    const FORMATS: [(&str, &str); 5] = [
        ("image/png", "png"),
        ("image/jpeg", "jpeg"),
        ("image/jpg", "jpeg"),
        ("image/gif", "gif"),
        ("image/webp", "webp"),
    ];
    FORMATS
        .into_iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(media_type))
        .map(|(_, format)| format)
}

/// `data:<media type>[;params];base64,<data>` becomes an image block. Converse fetches
/// nothing, so an http(s) URL is refused with a message that says so.
fn image_block<'r>(url: &'r str, param: &str) -> Result<Image<'r>, GatewayError> {
    let Some(rest) = strip_prefix_ignore_case(url, "data:") else {
        let message = if strip_prefix_ignore_case(url, "https://").is_some()
            || strip_prefix_ignore_case(url, "http://").is_some()
        {
            "Bedrock's Converse API cannot fetch image URLs; send the image as a base64 data URL ('data:image/png;base64,<data>')."
        } else {
            "Image URLs must be base64 data URLs ('data:image/png;base64,<data>') for Bedrock models."
        };
        return Err(GatewayError::invalid(param, message));
    };
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
    let format = image_format(media_type).ok_or_else(|| {
        GatewayError::invalid(
            param,
            format!("Image type '{media_type}' is not supported by Bedrock's Converse API; use image/png, image/jpeg, image/gif or image/webp."),
        )
    })?;
    Ok(Image {
        format,
        source: ImageSource { bytes: data },
    })
}

fn tool_use_blocks<'r>(
    calls: &'r [oa::ToolCall<'_>],
    message: usize,
    blocks: &mut Vec<Block<'r>>,
) -> Result<(), GatewayError> {
    for (index, call) in calls.iter().enumerate() {
        let input = match tool_call_arguments(call, message, index, "Bedrock")? {
            None => JsonObject::Empty,
            Some(raw) => JsonObject::Raw(raw),
        };
        blocks.push(Block::ToolUse(ToolUse {
            tool_use_id: &call.id,
            name: &call.function.name,
            input,
        }));
    }
    Ok(())
}

fn tool_specs<'r>(tools: &'r [oa::Tool<'_>]) -> Result<Vec<ToolEntry<'r>>, GatewayError> {
    let mut entries = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        if tool.kind.as_str() != "function" {
            return Err(GatewayError::invalid(
                &format!("tools[{index}].type"),
                format!(
                    "Tools of type '{}' are not supported for Bedrock models; use function tools.",
                    tool.kind.as_str()
                ),
            ));
        }
        let function = tool
            .function
            .as_ref()
            .ok_or_else(|| missing(&format!("tools[{index}].function")))?;
        let json = match function.parameters {
            None => JsonObject::EmptySchema,
            Some(raw) if raw.get().starts_with('{') => JsonObject::Raw(raw),
            Some(_) => {
                return Err(GatewayError::invalid(
                    &format!("tools[{index}].function.parameters"),
                    "Function parameters must be a JSON Schema object.",
                ))
            }
        };
        entries.push(ToolEntry {
            tool_spec: ToolSpec {
                name: &function.name,
                description: function.description.as_deref(),
                input_schema: InputSchema { json },
            },
        });
    }
    Ok(entries)
}

/// What the client's `tool_choice` asks of Converse.
enum Choice<'a> {
    /// No choice sent: the model decides (Converse's default is `auto`).
    Default,
    /// `"none"`: no tool may be called.
    NoTools,
    /// A choice to send.
    Send(ToolChoice<'a>),
}

fn tool_choice<'r>(choice: Option<&'r oa::ToolChoice<'_>>) -> Result<Choice<'r>, GatewayError> {
    Ok(match choice {
        None => Choice::Default,
        Some(oa::ToolChoice::Mode(mode)) => match mode.as_str() {
            "auto" => Choice::Send(ToolChoice::Auto(EmptyObject {})),
            "required" => Choice::Send(ToolChoice::Any(EmptyObject {})),
            "none" => Choice::NoTools,
            other => {
                return Err(GatewayError::invalid(
                    "tool_choice",
                    format!("Invalid value: '{other}'. Supported values are: 'none', 'auto' and 'required'."),
                ))
            }
        },
        Some(oa::ToolChoice::Named(named)) => {
            if named.kind.as_str() != "function" {
                return Err(GatewayError::invalid(
                    "tool_choice.type",
                    format!(
                        "tool_choice of type '{}' is not supported for Bedrock models.",
                        named.kind.as_str()
                    ),
                ));
            }
            let function = named
                .function
                .as_ref()
                .ok_or_else(|| missing("tool_choice.function"))?;
            Choice::Send(ToolChoice::Tool(NamedTool {
                name: &function.name,
            }))
        }
    })
}

/// The `toolConfig` for these tools and choice, given whether the conversation holds tool
/// blocks.
fn tool_config<'r>(
    tools: Vec<ToolEntry<'r>>,
    choice: Choice<'r>,
    has_tool_blocks: bool,
) -> Result<Option<ToolConfig<'r>>, GatewayError> {
    if tools.is_empty() {
        if matches!(
            choice,
            Choice::Send(ToolChoice::Any(_) | ToolChoice::Tool(_))
        ) {
            return Err(GatewayError::invalid(
                "tool_choice",
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            ));
        }
        return Ok(None);
    }
    let tool_choice = match choice {
        Choice::Default => None,
        // Converse has no "none": without tools nothing can be called. A conversation with
        // tool blocks needs its toolConfig, so there the tools stay, without a choice.
        Choice::NoTools if !has_tool_blocks => return Ok(None),
        Choice::NoTools => None,
        Choice::Send(choice) => Some(choice),
    };
    Ok(Some(ToolConfig { tools, tool_choice }))
}

fn output_config<'r>(
    format: Option<&'r RawValue>,
) -> Result<Option<OutputConfig<'r>>, GatewayError> {
    let Some(raw) = format else {
        return Ok(None);
    };
    if raw.get() == "null" {
        return Ok(None);
    }
    let format: oa::ResponseFormat<'_> = serde_json::from_str(raw.get()).map_err(|error| {
        GatewayError::invalid(
            "response_format",
            format!("Invalid 'response_format': {error}"),
        )
    })?;
    match format.kind.as_str() {
        "text" => Ok(None),
        "json_object" => Err(GatewayError::invalid(
            "response_format.type",
            "Bedrock's Converse API has no JSON mode without a schema; use response_format of type 'json_schema' with a schema.",
        )),
        "json_schema" => {
            let definition = format
                .json_schema
                .ok_or_else(|| missing("response_format.json_schema"))?;
            let schema = definition
                .schema
                .filter(|schema| schema.get().starts_with('{'))
                .ok_or_else(|| {
                    GatewayError::invalid(
                        "response_format.json_schema.schema",
                        "Bedrock's structured output needs 'response_format.json_schema.schema', a JSON Schema object.",
                    )
                })?;
            Ok(Some(OutputConfig {
                text_format: TextFormat {
                    kind: "json_schema",
                    structure: FormatStructure {
                        json_schema: JsonSchemaDefinition {
                            schema: schema.get(),
                            name: definition.name.0,
                            description: definition.description.map(|text| text.0),
                        },
                    },
                },
            }))
        }
        other => Err(GatewayError::invalid(
            "response_format.type",
            format!("Invalid value: '{other}'. Supported values are: 'text', 'json_object' and 'json_schema'."),
        )),
    }
}

/// `/model/<model id>/converse`, or `/converse-stream` for a stream.
pub fn endpoint_path(model: &str, stream: bool) -> String {
    let mut path = String::with_capacity(32 + 3 * model.len());
    path.push_str("/model/");
    push_path_segment(&mut path, model);
    path.push_str(if stream {
        "/converse-stream"
    } else {
        "/converse"
    });
    path
}

/// Builds the Converse request (unsigned: the gateway signs it once the target is final).
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
            "Bedrock models return one choice per request; 'n' greater than 1 is not supported.",
        ));
    }
    if request.functions.is_some() {
        return Err(GatewayError::invalid(
            "functions",
            "The deprecated 'functions' parameter is not supported for Bedrock models; use 'tools'.",
        ));
    }

    let mut system = Vec::new();
    let mut conversation = Conversation::default();
    for (index, message) in request.messages.iter().enumerate() {
        match message.role.as_str() {
            "system" | "developer" => {
                for block in content_blocks(message.content.as_ref(), index, Parts::TextOnly)? {
                    if let Block::Text(text) = block {
                        system.push(SystemBlock { text });
                    }
                }
            }
            "user" => {
                let blocks = content_blocks(message.content.as_ref(), index, Parts::TextAndImages)?;
                conversation.push(Role::User, blocks);
            }
            "assistant" => {
                let mut blocks = content_blocks(message.content.as_ref(), index, Parts::Assistant)?;
                if let Some(calls) = &message.tool_calls {
                    conversation.has_tool_blocks |= !calls.is_empty();
                    tool_use_blocks(calls, index, &mut blocks)?;
                }
                conversation.push(Role::Assistant, blocks);
            }
            "tool" => {
                let tool_use_id = message
                    .tool_call_id
                    .as_deref()
                    .ok_or_else(|| missing(&format!("messages[{index}].tool_call_id")))?;
                let content = tool_result_content(message.content.as_ref(), index)?;
                conversation.push_tool_result(Block::ToolResult(ToolResult {
                    tool_use_id,
                    content,
                }));
            }
            other => {
                return Err(GatewayError::invalid(
                    &format!("messages[{index}].role"),
                    format!("Messages with role '{other}' are not supported for Bedrock models; use 'tool' messages."),
                ))
            }
        }
    }
    match conversation.messages.first() {
        None => {
            return Err(GatewayError::invalid(
                "messages",
                "Bedrock models need at least one user message with content besides system messages.",
            ))
        }
        Some(first) if first.role != Role::User => {
            return Err(GatewayError::invalid(
                "messages",
                "Bedrock's Converse API needs the conversation to start with a user message (after the system messages).",
            ))
        }
        Some(_) => {}
    }

    let tools = match &request.tools {
        Some(tools) => tool_specs(tools)?,
        None => Vec::new(),
    };
    let tool_config = tool_config(
        tools,
        tool_choice(request.tool_choice.as_ref())?,
        conversation.has_tool_blocks,
    )?;
    let stop_sequences = request
        .stop
        .as_ref()
        .map(|stop| stop.as_slice().iter().map(Str::as_str).collect())
        .unwrap_or_default();
    let inference_config = InferenceConfig {
        max_tokens: request.max_completion_tokens.or(request.max_tokens),
        temperature: request.temperature,
        top_p: request.top_p,
        stop_sequences,
    };

    let upstream = ConverseRequest {
        messages: conversation.messages,
        system,
        inference_config,
        tool_config,
        output_config: output_config(request.response_format)?,
    };
    let mut out = Vec::with_capacity(body.len() + 128);
    serde_json::to_writer(&mut out, &upstream)
        .map_err(|error| GatewayError::invalid("body", error.to_string()))?;

    let accept = if summary.stream {
        Framing::AwsEventStream.media_type()
    } else {
        "application/json"
    };
    Ok(UpstreamRequest {
        path: endpoint_path(&deployment.upstream_model, summary.stream),
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("accept", accept.to_string()),
        ],
        body: out,
    })
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// Converse's token usage; every field may be missing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_write_input_tokens: Option<u64>,
}

impl TokenUsage {
    /// All input tokens: Bedrock counts cache reads and writes apart from `inputTokens` (as
    /// Anthropic does, whose models report through it; LiteLLM adds them up the same way).
    fn prompt_tokens(&self) -> Option<u64> {
        let input = self.input_tokens?;
        Some(
            input
                .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
                .saturating_add(self.cache_write_input_tokens.unwrap_or(0)),
        )
    }

    fn record(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens(),
            completion_tokens: self.output_tokens,
            cached_prompt_tokens: self.cache_read_input_tokens,
            cache_creation_tokens: self.cache_write_input_tokens,
            // Converse counts reasoning in outputTokens and does not report it apart.
            reasoning_tokens: None,
        }
    }

    fn openai(&self, cost: Option<f64>) -> oa::CompletionUsage {
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
            cost: cost.map(oa::Cost),
        }
    }
}

/// OpenAI's `finish_reason` for Converse's `stopReason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "tool_use" => "tool_calls",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence, and whatever Bedrock adds later.
        _ => "stop",
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse<'a> {
    #[serde(borrow)]
    output: ConverseOutput<'a>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct ConverseOutput<'a> {
    #[serde(borrow)]
    message: OutputMessage<'a>,
}

#[derive(Deserialize)]
struct OutputMessage<'a> {
    #[serde(borrow)]
    content: Vec<OutputBlock<'a>>,
}

/// One block of the answer: a union, so at most one member is set. Members the Chat
/// Completions answer has no place for (reasoning, citations ...) are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputBlock<'a> {
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    tool_use: Option<OutputToolUse<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputToolUse<'a> {
    #[serde(borrow)]
    tool_use_id: Str<'a>,
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

/// A Bedrock error body: `{"message": "..."}` (`Message` in a few services' older shape).
#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default)]
    message: Option<Str<'a>>,
    #[serde(borrow, default, rename = "Message")]
    message_upper: Option<Str<'a>>,
}

impl<'a> ErrorBody<'a> {
    fn message(&self) -> Option<&str> {
        self.message
            .as_deref()
            .or(self.message_upper.as_deref())
            .filter(|message| !message.is_empty())
    }
}

/// Whether a Bedrock message says the input is over the model's context window (Bedrock
/// answers it as a 400 ValidationException, with the model's own wording).
fn says_context_too_long(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "input is too long",
        "too many input tokens",
        "context length",
        "context window",
        "maximum context",
        "prompt is too long",
    ]
    .iter()
    .any(|phrase| lower.contains(phrase))
}

/// Whether a Bedrock 403 is about the request's credentials (an unknown key, a signature that
/// does not match, an expired one) rather than a missing permission.
fn says_credentials_refused(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    ["signature", "security token", "credential", "access key"]
        .iter()
        .any(|phrase| lower.contains(phrase))
}

/// OpenAI's error type and code for a Bedrock error of `status` saying `message`. Bedrock
/// names the error in the `x-amzn-errortype` header, which the response translator does not
/// see (it gets the status and the body); status and message say enough.
fn error_kind(status: u16, message: &str) -> (&'static str, Option<&'static str>) {
    match status {
        400 | 413 | 422 if says_context_too_long(message) => {
            ("invalid_request_error", Some("context_length_exceeded"))
        }
        400 | 409 | 413 | 422 => ("invalid_request_error", None),
        401 => ("authentication_error", Some("invalid_api_key")),
        403 if says_credentials_refused(message) => {
            ("authentication_error", Some("invalid_api_key"))
        }
        403 => ("permission_error", None),
        404 => ("invalid_request_error", Some("model_not_found")),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        _ => ("api_error", None),
    }
}

/// A Bedrock error body as an OpenAI one.
fn error_json(status: u16, body: &[u8]) -> Vec<u8> {
    let parsed = serde_json::from_slice::<ErrorBody<'_>>(body).ok();
    let message = match parsed.as_ref().and_then(ErrorBody::message) {
        Some(message) => Cow::Borrowed(message),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            Cow::Owned(if text.is_empty() {
                format!("The upstream provider returned HTTP {status} with an empty body.")
            } else {
                let cut: String = text.chars().take(2000).collect();
                format!("The upstream provider returned HTTP {status}: {cut}")
            })
        }
    };
    let (kind, code) = error_kind(status, &message);
    error_body(&message, kind, None, code)
}

/// OpenAI's error type and code for an exception of a stream (`:exception-type`).
fn exception_kind(exception_type: &str, message: &str) -> (&'static str, Option<&'static str>) {
    match exception_type {
        "throttlingException" => ("rate_limit_error", Some("rate_limit_exceeded")),
        "validationException" if says_context_too_long(message) => {
            ("invalid_request_error", Some("context_length_exceeded"))
        }
        "validationException" => ("invalid_request_error", None),
        "serviceUnavailableException" => ("api_error", Some("service_unavailable")),
        // internalServerException, modelStreamErrorException and any other.
        _ => ("api_error", None),
    }
}

/// One event of the stream; the members of every event type, all optional.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamEvent<'a> {
    #[serde(default)]
    content_block_index: Option<u64>,
    #[serde(borrow, default)]
    start: Option<BlockStart<'a>>,
    #[serde(borrow, default)]
    delta: Option<BlockDelta<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart<'a> {
    #[serde(borrow, default)]
    tool_use: Option<StartedToolUse<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartedToolUse<'a> {
    #[serde(borrow)]
    tool_use_id: Str<'a>,
    #[serde(borrow)]
    name: Str<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    tool_use: Option<ToolUseDelta<'a>>,
}

#[derive(Deserialize)]
struct ToolUseDelta<'a> {
    #[serde(borrow, default)]
    input: Option<Str<'a>>,
}

/// The completion id of an answer: Converse sends none. Made from the request's time, its
/// length and its first and last 4 KiB (FNV-1a), so it costs nothing on a large body; two
/// identical requests in the same second get the same id, which no client relies on.
pub fn completion_id(now_unix: u64, body: &[u8]) -> String {
    const SAMPLE: usize = 4096;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&now_unix.to_be_bytes());
    feed(&u64::try_from(body.len()).unwrap_or(u64::MAX).to_be_bytes());
    feed(body.get(..SAMPLE).unwrap_or(body));
    feed(
        body.get(body.len().saturating_sub(SAMPLE)..)
            .unwrap_or_default(),
    );
    format!("chatcmpl-bedrock-{hash:016x}")
}

/// Response side of a Bedrock request.
#[derive(Debug)]
pub struct BedrockResponse {
    created: u64,
    id: String,
    /// The deployment's model: Converse does not name the model that answered.
    model: String,
    /// The event stream decoder, boxed so a feed lends a pointer, not the buffer's header.
    decoder: Option<Box<Decoder>>,
    /// The OpenAI stream the client gets (content block indexes key its tool calls).
    writer: ChunkWriter,
    tokens: TokenUsage,
    /// `messageStop` came (the finish chunk is out).
    stopped: bool,
    /// `metadata` (the usage) came.
    reported: bool,
    /// The deployment's prices, for the cost on the usage chunk.
    prices: Option<Prices>,
}

impl BedrockResponse {
    /// Response side for a request whose client body is `body`, with the client's
    /// `include_usage`, to a deployment of `upstream_model` with these `prices`.
    pub fn new(
        context: &TranslateContext,
        body: &[u8],
        include_usage: bool,
        prices: Option<Prices>,
        upstream_model: &str,
    ) -> Self {
        let id = completion_id(context.now_unix, body);
        let mut writer = ChunkWriter::new(context.now_unix, include_usage);
        writer.set_id(id.clone());
        writer.set_model(upstream_model.to_string());
        BedrockResponse {
            created: context.now_unix,
            id,
            model: upstream_model.to_string(),
            decoder: None,
            writer,
            tokens: TokenUsage::default(),
            stopped: false,
            reported: false,
            prices,
        }
    }

    fn end(&mut self, out: &mut Vec<u8>, usage: &Usage) -> Result<(), GatewayError> {
        // The headers are long gone: the usage chunk is where the client learns the cost.
        let usage_out = self.tokens.openai(stream_cost(self.prices.as_ref(), usage));
        self.writer.end(out, usage_out)
    }

    fn handle_message(
        &mut self,
        message: &Message<'_>,
        out: &mut Vec<u8>,
        usage: &mut Usage,
    ) -> Result<(), GatewayError> {
        match message.message_type() {
            Some(MessageType::Event) => {}
            Some(MessageType::Exception) => {
                let exception = message.exception_type().unwrap_or("unknownException");
                let parsed = serde_json::from_slice::<ErrorBody<'_>>(message.payload()).ok();
                let text = parsed.as_ref().and_then(ErrorBody::message).map_or_else(
                    || format!("Bedrock ended the stream with {exception}."),
                    str::to_string,
                );
                let (kind, code) = exception_kind(exception, &text);
                self.writer.fail(out, &error_body(&text, kind, None, code));
                return Ok(());
            }
            Some(MessageType::Error) => {
                let code = message.error_code().unwrap_or("unknown error");
                let text = message.error_message().unwrap_or("");
                let text = format!("Bedrock ended the stream with an error: {code}: {text}");
                self.writer
                    .fail(out, &error_body(&text, "api_error", None, None));
                return Ok(());
            }
            // Frames of no known type say nothing the answer needs.
            Some(MessageType::Other(_)) | None => return Ok(()),
        }
        let Some(event_type) = message.event_type() else {
            return Ok(());
        };
        let event: StreamEvent<'_> =
            serde_json::from_slice(message.payload()).map_err(|error| {
                GatewayError::BadUpstreamResponse(format!(
                    "invalid Bedrock stream event {event_type:?}: {error}"
                ))
            })?;
        let index = event.content_block_index.unwrap_or(u64::MAX);
        match event_type {
            "messageStart" => self.writer.start(out),
            "contentBlockStart" => match event.start.and_then(|start| start.tool_use) {
                Some(tool) => {
                    self.writer
                        .tool_call_start(out, index, &tool.tool_use_id, &tool.name)
                }
                None => Ok(()),
            },
            "contentBlockDelta" => {
                let Some(delta) = event.delta else {
                    return Ok(());
                };
                if let Some(text) = &delta.text {
                    self.writer.text(out, text)?;
                }
                match delta.tool_use.and_then(|tool| tool.input) {
                    Some(input) => self.writer.tool_call_arguments(out, index, &input),
                    // reasoningContent, citations ...: not part of the Chat Completions answer.
                    None => Ok(()),
                }
            }
            "messageStop" => {
                self.stopped = true;
                let reason = event.stop_reason.as_deref().unwrap_or("end_turn");
                self.writer.finish(out, finish_reason(reason))?;
                if self.reported {
                    self.end(out, usage)?;
                }
                Ok(())
            }
            "metadata" => {
                if let Some(reported) = event.usage {
                    self.tokens = reported;
                    usage.merge(reported.record());
                }
                self.reported = true;
                // The metadata event is the stream's last, after messageStop.
                if self.stopped {
                    self.end(out, usage)?;
                }
                Ok(())
            }
            // contentBlockStop, and events Bedrock may add.
            _ => Ok(()),
        }
    }
}

impl ProviderResponse for BedrockResponse {
    fn framing(&self) -> Framing {
        Framing::AwsEventStream
    }

    fn rewrites_body(&self) -> bool {
        true
    }

    fn translate_body(
        &mut self,
        body: &[u8],
        usage: &mut Usage,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        let response: ConverseResponse<'_> = serde_json::from_slice(body).map_err(|error| {
            GatewayError::BadUpstreamResponse(format!("not a Bedrock Converse answer: {error}"))
        })?;
        let mut text: Option<Cow<'_, str>> = None;
        let mut tool_calls = Vec::new();
        for block in &response.output.message.content {
            if let Some(piece) = &block.text {
                match &mut text {
                    None => text = Some(Cow::Borrowed(piece.as_str())),
                    Some(joined) => joined.to_mut().push_str(piece),
                }
            }
            if let Some(tool) = &block.tool_use {
                tool_calls.push(oa::ToolCallOut {
                    id: &tool.tool_use_id,
                    kind: "function",
                    function: oa::FunctionCallOut {
                        name: &tool.name,
                        arguments: tool.input.map_or("{}", RawValue::get),
                    },
                });
            }
        }
        if let Some(reported) = response.usage {
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
            finish_reason: finish_reason(response.stop_reason.as_deref().unwrap_or("end_turn")),
        };
        let completion = oa::ChatCompletion {
            id: &self.id,
            object: oa::CHAT_COMPLETION,
            created: self.created,
            model: &self.model,
            choices: std::slice::from_ref(&choice),
            usage: response.usage.map(|reported| reported.openai(None)),
        };
        serde_json::to_vec(&completion)
            .map(Some)
            .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))
    }

    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8> {
        error_json(status, body)
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
        // The decoder lends messages while the translator writes: take it out for the feed.
        let mut decoder = self
            .decoder
            .take()
            .unwrap_or_else(|| Box::new(Decoder::with_max_message_bytes(MAX_FRAME_BYTES)));
        decoder.push(chunk);
        let result = loop {
            if self.writer.is_done() {
                break Ok(());
            }
            match decoder.next_message() {
                Ok(Some(message)) => {
                    if let Err(error) = self.handle_message(&message, out, usage) {
                        break Err(error);
                    }
                }
                Ok(None) => break Ok(()),
                Err(error) => {
                    break Err(GatewayError::BadUpstreamResponse(format!(
                        "invalid Bedrock event stream: {error}"
                    )))
                }
            }
        };
        let finished = decoder.finish();
        self.decoder = Some(decoder);
        result?;
        if end_of_stream && !self.writer.is_done() {
            if let Err(error) = finished {
                return Err(GatewayError::BadUpstreamResponse(format!(
                    "invalid Bedrock event stream: {error}"
                )));
            }
            if self.stopped {
                // A stream that stopped without its metadata event: what was reported.
                self.end(out, usage)?;
            } else {
                self.writer.fail_cut(out);
            }
        }
        Ok(ChunkOutput::Replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_one_path_segment() {
        assert_eq!(
            endpoint_path("anthropic.claude-3-5-sonnet-20240620-v1:0", false),
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
        );
        assert_eq!(
            endpoint_path("us.amazon.nova-pro-v1:0", true),
            "/model/us.amazon.nova-pro-v1%3A0/converse-stream"
        );
        assert_eq!(
            endpoint_path(
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/x y",
                false
            ),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fx%20y/converse"
        );
    }

    #[test]
    fn stop_reasons() {
        assert_eq!(finish_reason("end_turn"), "stop");
        assert_eq!(finish_reason("stop_sequence"), "stop");
        assert_eq!(finish_reason("tool_use"), "tool_calls");
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("model_context_window_exceeded"), "length");
        assert_eq!(finish_reason("guardrail_intervened"), "content_filter");
        assert_eq!(finish_reason("content_filtered"), "content_filter");
        assert_eq!(finish_reason("something_new"), "stop");
    }

    #[test]
    fn image_formats_and_urls() {
        let image = image_block("data:image/jpg;base64,QUJD", "p").unwrap();
        assert_eq!(image.format, "jpeg");
        assert_eq!(image.source.bytes, "QUJD");
        assert_eq!(
            image_block("DATA:Image/WebP;base64,QQ==", "p")
                .unwrap()
                .format,
            "webp"
        );
        for bad in [
            "https://example.com/a.png",
            "data:image/bmp;base64,QQ==",
            "data:image/png,QQ==",
            "data:;base64,QQ==",
            "ftp://x/a.png",
            "",
        ] {
            let error = image_block(bad, "messages[0].content[0].image_url.url").unwrap_err();
            assert_eq!(
                error.param(),
                Some("messages[0].content[0].image_url.url"),
                "{bad}"
            );
        }
        let http = image_block("http://example.com/a.png", "p").unwrap_err();
        assert!(
            http.to_string().contains("cannot fetch image URLs"),
            "{http}"
        );
    }

    #[test]
    fn completion_ids_follow_time_and_body() {
        let a = completion_id(1, b"{\"a\":1}");
        assert_eq!(a, completion_id(1, b"{\"a\":1}"));
        assert_ne!(a, completion_id(2, b"{\"a\":1}"));
        assert_ne!(a, completion_id(1, b"{\"a\":2}"));
        assert!(a.starts_with("chatcmpl-bedrock-"));
        assert_eq!(a.len(), "chatcmpl-bedrock-".len() + 16);
    }

    #[test]
    fn errors_by_status_and_message() {
        let kind = |status, message: &str| error_kind(status, message);
        assert_eq!(
            kind(400, "Input is too long for requested model."),
            ("invalid_request_error", Some("context_length_exceeded"))
        );
        assert_eq!(
            kind(400, "Malformed input request"),
            ("invalid_request_error", None)
        );
        assert_eq!(
            kind(
                403,
                "The security token included in the request is invalid."
            ),
            ("authentication_error", Some("invalid_api_key"))
        );
        assert_eq!(
            kind(
                403,
                "You don't have access to the model with the specified model ID."
            ),
            ("permission_error", None)
        );
        assert_eq!(
            kind(429, "Too many requests"),
            ("rate_limit_error", Some("rate_limit_exceeded"))
        );
        assert_eq!(kind(503, "unavailable"), ("api_error", None));
        let client: serde_json::Value =
            serde_json::from_slice(&error_json(500, b"<html>boom</html>")).unwrap();
        assert_eq!(
            client["error"]["message"],
            "The upstream provider returned HTTP 500: <html>boom</html>"
        );
    }
}
