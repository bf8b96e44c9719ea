//! Google's Gemini API, as Google AI Studio serves it: `POST
//! <api_base>/v1beta/models/<model>:generateContent`, and
//! `:streamGenerateContent?alt=sse` for a stream (server-sent events, each a whole
//! `GenerateContentResponse`), the key in `x-goog-api-key`. Vertex AI serves the same
//! bodies at `/v1/projects/<project>/locations/<location>/publishers/google/models/<model>:`
//! `generateContent` (or `:streamGenerateContent?alt=sse`), authenticated with the control
//! plane's access token instead of a key.
//!
//! Request: the OpenAI chat request is parsed once (borrowing from the body) and written out
//! as a `GenerateContentRequest`: system and developer messages become `systemInstruction`,
//! the conversation `contents` with roles `user` and `model` (consecutive messages of one
//! role merged into one content), images `inlineData` (data URLs) or `fileData` (http(s)
//! URLs), tools one `functionDeclarations` tool whose parameters go as
//! `parametersJsonSchema` (JSON Schema as the client wrote it, so nothing has to be cut down
//! to the OpenAPI subset `parameters` takes), assistant tool calls `functionCall` parts and
//! tool messages `functionResponse` parts named after the call they answer. The sampling
//! options go into `generationConfig`; `response_format` becomes `responseMimeType` (and
//! `responseJsonSchema`).
//!
//! Function calls carry no `id` upstream: Gemini pairs calls and responses by order and
//! name, and its API refuses an `id` on `functionCall` / `functionResponse` parts with
//! "Unknown name \"id\"" on some endpoints. A thinking model's `thoughtSignature` on a
//! function call must come back with that call in the next request (Gemini 3 answers 400
//! without it); an OpenAI client only hands back the tool call's id, so the signature rides
//! in the id, after [`THOUGHT_SIGNATURE_SEPARATOR`] (LiteLLM's convention, so a client moved
//! from LiteLLM keeps working).
//!
//! Response: a buffered answer becomes a `chat.completion`; a stream is translated event by
//! event, as its bytes arrive, into `chat.completion.chunk`s. The translator keeps only the
//! response id, the model name, the last usage report, the number of tool calls so far and
//! whether the answer has finished.

use std::borrow::Cow;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{error_body, error_type_for_status};
use crate::openai_types::{self as oa, Content, ContentPart, Str};
use crate::pricing::{stream_cost, Prices};
use crate::providers::chunks::ChunkWriter;
use crate::providers::{
    compact_json, openai_shaped_error, push_path_segment, tool_call_arguments, vertex_model_path,
    ChunkOutput, ProviderResponse, TranslateContext, UpstreamRequest,
};
use crate::request::ChatRequestSummary;
use crate::snapshot::{Deployment, Wire};
use crate::sse::SseParser;
use crate::{GatewayError, Usage};

/// The API version every endpoint path starts with (an `api_base` that already ends with it
/// does not get it twice).
pub const API_VERSION_PATH: &str = "/v1beta";

/// What separates the tool call id from the Gemini thought signature it carries.
pub const THOUGHT_SIGNATURE_SEPARATOR: &str = "__thought__";

/// The header the key goes in when the catalogue names none.
pub const API_KEY_HEADER: &str = "x-goog-api-key";

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest<'a> {
    contents: Vec<GeminiContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig<'a>,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Role {
    User,
    Model,
}

#[derive(Serialize)]
struct GeminiContent<'a> {
    role: Role,
    parts: Vec<Part<'a>>,
}

#[derive(Serialize)]
struct SystemInstruction<'a> {
    parts: Vec<Part<'a>>,
}

/// One part: exactly one kind of data, and the thought signature a function call came with.
struct Part<'a> {
    data: PartData<'a>,
    thought_signature: Option<&'a str>,
}

enum PartData<'a> {
    Text(&'a str),
    InlineData {
        mime_type: &'a str,
        data: &'a str,
    },
    FileData {
        mime_type: &'a str,
        file_uri: &'a str,
    },
    FunctionCall {
        name: &'a str,
        args: Args<'a>,
    },
    FunctionResponse {
        name: &'a str,
        response: ToolResponse<'a>,
    },
}

impl<'a> Part<'a> {
    fn of(data: PartData<'a>) -> Self {
        Part {
            data,
            thought_signature: None,
        }
    }
}

impl Serialize for Part<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Blob<'a> {
            mime_type: &'a str,
            data: &'a str,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct FileData<'a> {
            mime_type: &'a str,
            file_uri: &'a str,
        }
        #[derive(Serialize)]
        struct FunctionCall<'a> {
            name: &'a str,
            args: &'a Args<'a>,
        }
        #[derive(Serialize)]
        struct FunctionResponse<'a> {
            name: &'a str,
            response: &'a ToolResponse<'a>,
        }
        let mut map = serializer.serialize_map(None)?;
        match &self.data {
            PartData::Text(text) => map.serialize_entry("text", text)?,
            PartData::InlineData { mime_type, data } => {
                map.serialize_entry("inlineData", &Blob { mime_type, data })?
            }
            PartData::FileData {
                mime_type,
                file_uri,
            } => map.serialize_entry(
                "fileData",
                &FileData {
                    mime_type,
                    file_uri,
                },
            )?,
            PartData::FunctionCall { name, args } => {
                map.serialize_entry("functionCall", &FunctionCall { name, args })?
            }
            PartData::FunctionResponse { name, response } => {
                map.serialize_entry("functionResponse", &FunctionResponse { name, response })?
            }
        }
        if let Some(signature) = self.thought_signature {
            map.serialize_entry("thoughtSignature", signature)?;
        }
        map.end()
    }
}

/// A function call's arguments: the client's JSON object as it wrote it, or `{}`.
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

/// A tool result: Gemini takes a JSON object. One the tool returned goes as it is; any
/// other result is wrapped as `{"content": <text>}`.
enum ToolResponse<'a> {
    Object(&'a RawValue),
    Text(Cow<'a, str>),
}

impl Serialize for ToolResponse<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ToolResponse::Object(raw) => raw.serialize(serializer),
            ToolResponse::Text(text) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("content", text.as_ref())?;
                map.end()
            }
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tool<'a> {
    function_declarations: Vec<FunctionDeclaration<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_function_names: Vec<&'a str>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a RawValue>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.stop_sequences.is_empty()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.max_output_tokens.is_none()
            && self.seed.is_none()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
    }
}

/// The conversation being built: consecutive turns of one role are merged into one content.
#[derive(Default)]
struct Conversation<'a> {
    contents: Vec<GeminiContent<'a>>,
}

impl<'a> Conversation<'a> {
    /// Appends parts as a turn of `role`, merged into the previous content if it has the same
    /// role. A turn without parts is left out (Gemini refuses a content with no parts).
    fn push(&mut self, role: Role, parts: Vec<Part<'a>>) {
        if parts.is_empty() {
            return;
        }
        match self.contents.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => self.contents.push(GeminiContent { role, parts }),
        }
    }
}

/// Which content parts a role may carry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parts {
    /// system, developer.
    TextOnly,
    /// user.
    TextAndImages,
    /// assistant (refusal parts are its earlier refusals, sent back as text).
    Assistant,
}

fn missing(param: &str) -> GatewayError {
    GatewayError::invalid(param, format!("Missing required parameter: '{param}'."))
}

fn content_parts<'r>(
    content: Option<&'r Content<'_>>,
    message: usize,
    allowed: Parts,
) -> Result<Vec<Part<'r>>, GatewayError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(vec![Part::of(PartData::Text(text))]),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (index, part) in parts.iter().enumerate() {
                if let Some(part) = content_part(part, message, index, allowed)? {
                    out.push(part);
                }
            }
            Ok(out)
        }
    }
}

fn content_part<'r>(
    part: &'r ContentPart<'_>,
    message: usize,
    index: usize,
    allowed: Parts,
) -> Result<Option<Part<'r>>, GatewayError> {
    let param = |field: &str| format!("messages[{message}].content[{index}].{field}");
    let (text, field) = match (part.kind.as_str(), allowed) {
        ("text", _) => (part.text.as_deref(), "text"),
        ("refusal", Parts::Assistant) => (part.refusal.as_deref(), "refusal"),
        ("image_url", Parts::TextAndImages) => {
            let image = part
                .image_url
                .as_ref()
                .ok_or_else(|| missing(&param("image_url")))?;
            return image_part(&image.url, &param("image_url.url")).map(Some);
        }
        (other, _) => {
            return Err(GatewayError::invalid(
                &param("type"),
                format!(
                    "Content parts of type '{other}' are not supported here for Gemini models."
                ),
            ))
        }
    };
    let text = text.ok_or_else(|| missing(&param(field)))?;
    // An empty text part says nothing, and Gemini refuses a part without data.
    Ok((!text.is_empty()).then(|| Part::of(PartData::Text(text))))
}

fn strip_prefix_ignore_case<'s>(text: &'s str, prefix: &str) -> Option<&'s str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

/// The image MIME types Gemini reads, by the file extensions a URL may end with.
const IMAGE_EXTENSIONS: [(&str, &str); 6] = [
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("webp", "image/webp"),
    ("heic", "image/heic"),
    ("heif", "image/heif"),
];

/// The MIME type an image URL's path names by its extension (query and fragment aside).
fn image_mime_type(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let (_, extension) = path.rsplit_once('.')?;
    if extension.contains('/') {
        return None;
    }
    IMAGE_EXTENSIONS
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(extension))
        .map(|(_, mime_type)| *mime_type)
}

/// `data:<media type>[;params];base64,<data>` becomes `inlineData`, an http(s) URL
/// `fileData` (Gemini fetches public URLs itself, and needs their MIME type, read here from
/// the URL's extension).
fn image_part<'r>(url: &'r str, param: &str) -> Result<Part<'r>, GatewayError> {
    if let Some(rest) = strip_prefix_ignore_case(url, "data:") {
        let invalid = || {
            GatewayError::invalid(
                param,
                "Image data URLs must look like 'data:image/png;base64,<data>'.",
            )
        };
        let (meta, data) = rest.split_once(',').ok_or_else(invalid)?;
        let mut fields = meta.split(';');
        let mime_type = fields.next().unwrap_or_default().trim();
        let base64 = fields.any(|field| field.trim().eq_ignore_ascii_case("base64"));
        if mime_type.is_empty() || !base64 {
            return Err(invalid());
        }
        return Ok(Part::of(PartData::InlineData { mime_type, data }));
    }
    if strip_prefix_ignore_case(url, "https://").is_some()
        || strip_prefix_ignore_case(url, "http://").is_some()
    {
        let mime_type = image_mime_type(url).ok_or_else(|| {
            GatewayError::invalid(
                param,
                "Gemini models need an image URL's MIME type, which the gateway reads from the URL's extension: use a URL ending in .png, .jpg, .jpeg, .webp, .heic or .heif, or a base64 data URL.",
            )
        })?;
        return Ok(Part::of(PartData::FileData {
            mime_type,
            file_uri: url,
        }));
    }
    Err(GatewayError::invalid(
        param,
        "Image URLs must be http(s) URLs or base64 data URLs.",
    ))
}

/// A tool call id as the client got it: the id, and the thought signature it carries.
fn split_tool_call_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once(THOUGHT_SIGNATURE_SEPARATOR) {
        Some((id, signature)) if !signature.is_empty() => (id, Some(signature)),
        _ => (id, None),
    }
}

fn function_call_parts<'r>(
    calls: &'r [oa::ToolCall<'_>],
    message: usize,
    parts: &mut Vec<Part<'r>>,
) -> Result<(), GatewayError> {
    for (index, call) in calls.iter().enumerate() {
        let args = match tool_call_arguments(call, message, index, "Gemini")? {
            None => Args::Empty,
            Some(raw) => Args::Raw(raw),
        };
        let (_, thought_signature) = split_tool_call_id(&call.id);
        parts.push(Part {
            data: PartData::FunctionCall {
                name: &call.function.name,
                args,
            },
            thought_signature,
        });
    }
    Ok(())
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

/// A tool message's content as Gemini's `functionResponse.response`.
fn tool_response<'r>(
    content: Option<&'r Content<'_>>,
    message: usize,
) -> Result<ToolResponse<'r>, GatewayError> {
    match content {
        None => Ok(ToolResponse::Text(Cow::Borrowed(""))),
        Some(Content::Text(text)) => {
            let text = text.as_str();
            if text.trim_start().starts_with('{') {
                if let Ok(raw) = serde_json::from_str::<&RawValue>(text) {
                    return Ok(ToolResponse::Object(raw));
                }
            }
            Ok(ToolResponse::Text(Cow::Borrowed(text)))
        }
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (index, part) in parts.iter().enumerate() {
                let param = |field: &str| format!("messages[{message}].content[{index}].{field}");
                if part.kind.as_str() != "text" {
                    return Err(GatewayError::invalid(
                        &param("type"),
                        format!(
                            "Content parts of type '{}' are not supported in tool results for Gemini models.",
                            part.kind.as_str()
                        ),
                    ));
                }
                text.push_str(
                    part.text
                        .as_deref()
                        .ok_or_else(|| missing(&param("text")))?,
                );
            }
            Ok(ToolResponse::Text(Cow::Owned(text)))
        }
    }
}

fn function_declarations<'r>(
    tools: &'r [oa::Tool<'_>],
) -> Result<Vec<FunctionDeclaration<'r>>, GatewayError> {
    let mut declarations = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        if tool.kind.as_str() != "function" {
            return Err(GatewayError::invalid(
                &format!("tools[{index}].type"),
                format!(
                    "Tools of type '{}' are not supported for Gemini models; use function tools.",
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
        declarations.push(FunctionDeclaration {
            name: &function.name,
            description: function.description.as_deref(),
            parameters_json_schema: parameters,
        });
    }
    Ok(declarations)
}

fn tool_config<'r>(
    choice: Option<&'r oa::ToolChoice<'_>>,
    has_tools: bool,
) -> Result<Option<ToolConfig<'r>>, GatewayError> {
    let config = |mode: &'static str, allowed_function_names: Vec<&'r str>| ToolConfig {
        function_calling_config: FunctionCallingConfig {
            mode,
            allowed_function_names,
        },
    };
    let (config, forces_a_call) = match choice {
        None => return Ok(None),
        Some(oa::ToolChoice::Mode(mode)) => match mode.as_str() {
            "auto" => (config("AUTO", Vec::new()), false),
            "none" => (config("NONE", Vec::new()), false),
            "required" => (config("ANY", Vec::new()), true),
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
                        "tool_choice of type '{}' is not supported for Gemini models.",
                        named.kind.as_str()
                    ),
                ));
            }
            let function = named
                .function
                .as_ref()
                .ok_or_else(|| missing("tool_choice.function"))?;
            (config("ANY", vec![function.name.as_str()]), true)
        }
    };
    if !has_tools {
        if forces_a_call {
            return Err(GatewayError::invalid(
                "tool_choice",
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            ));
        }
        // "auto" or "none" without tools: nothing to configure.
        return Ok(None);
    }
    Ok(Some(config))
}

/// `response_format` as `responseMimeType` and `responseJsonSchema`.
fn response_format<'r>(
    raw: Option<&'r RawValue>,
) -> Result<(Option<&'static str>, Option<&'r RawValue>), GatewayError> {
    let Some(raw) = raw else {
        return Ok((None, None));
    };
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    let format: oa::ResponseFormat<'r> = serde_path_to_error::deserialize(&mut deserializer)
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
        "text" => Ok((None, None)),
        "json_object" => Ok((Some("application/json"), None)),
        "json_schema" => {
            let schema = format
                .json_schema
                .as_ref()
                .ok_or_else(|| missing("response_format.json_schema"))?
                .schema;
            match schema {
                Some(schema) if schema.get().starts_with('{') => {
                    Ok((Some("application/json"), Some(schema)))
                }
                Some(_) => Err(GatewayError::invalid(
                    "response_format.json_schema.schema",
                    "The schema must be a JSON Schema object.",
                )),
                // A named format without a schema: JSON, shape left to the model.
                None => Ok((Some("application/json"), None)),
            }
        }
        other => Err(GatewayError::invalid(
            "response_format.type",
            format!("Invalid value: '{other}'. Supported values are: 'text', 'json_object' and 'json_schema'."),
        )),
    }
}

/// The endpoint of `model`: `generateContent`, or `streamGenerateContent` with `alt=sse`
/// (without it Gemini streams one JSON array).
fn endpoint_path(model: &str, stream: bool) -> String {
    let mut path = String::with_capacity(64 + model.len());
    path.push_str(API_VERSION_PATH);
    path.push_str("/models/");
    push_path_segment(&mut path, model);
    path.push_str(if stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    });
    path
}

/// Builds the Gemini request.
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
            "The gateway asks Gemini models for one choice per request; 'n' greater than 1 is not supported.",
        ));
    }
    if request.functions.is_some() {
        return Err(GatewayError::invalid(
            "functions",
            "The deprecated 'functions' parameter is not supported for Gemini models; use 'tools'.",
        ));
    }

    let mut system = Vec::new();
    let mut conversation = Conversation::default();
    for (index, message) in request.messages.iter().enumerate() {
        match message.role.as_str() {
            "system" | "developer" => {
                system.extend(content_parts(message.content.as_ref(), index, Parts::TextOnly)?);
            }
            "user" => {
                let parts = content_parts(message.content.as_ref(), index, Parts::TextAndImages)?;
                conversation.push(Role::User, parts);
            }
            "assistant" => {
                let mut parts = content_parts(message.content.as_ref(), index, Parts::Assistant)?;
                if let Some(calls) = &message.tool_calls {
                    function_call_parts(calls, index, &mut parts)?;
                }
                conversation.push(Role::Model, parts);
            }
            "tool" => {
                let param = format!("messages[{index}].tool_call_id");
                let id = message
                    .tool_call_id
                    .as_deref()
                    .ok_or_else(|| missing(&param))?;
                let earlier = request.messages.get(..index).unwrap_or_default();
                let name = called_function(earlier, id).ok_or_else(|| {
                    GatewayError::invalid(
                        &param,
                        format!("Invalid '{param}': no earlier assistant message made a tool call with id '{id}' (Gemini needs the called function's name)."),
                    )
                })?;
                let response = tool_response(message.content.as_ref(), index)?;
                let part = Part::of(PartData::FunctionResponse { name, response });
                conversation.push(Role::User, vec![part]);
            }
            other => {
                return Err(GatewayError::invalid(
                    &format!("messages[{index}].role"),
                    format!("Messages with role '{other}' are not supported for Gemini models; use 'tool' messages."),
                ))
            }
        }
    }
    if conversation.contents.is_empty() {
        return Err(GatewayError::invalid(
            "messages",
            "Gemini models need at least one user or assistant message with content besides system messages.",
        ));
    }

    let declarations = match &request.tools {
        Some(tools) => function_declarations(tools)?,
        None => Vec::new(),
    };
    let tool_config = tool_config(request.tool_choice.as_ref(), !declarations.is_empty())?;
    let tools = if declarations.is_empty() {
        Vec::new()
    } else {
        vec![Tool {
            function_declarations: declarations,
        }]
    };
    let (response_mime_type, response_json_schema) = response_format(request.response_format)?;
    let generation_config = GenerationConfig {
        stop_sequences: request
            .stop
            .as_ref()
            .map(|stop| stop.as_slice().iter().map(Str::as_str).collect())
            .unwrap_or_default(),
        temperature: request.temperature,
        top_p: request.top_p,
        max_output_tokens: request.max_completion_tokens.or(request.max_tokens),
        seed: request.seed,
        response_mime_type,
        response_json_schema,
    };

    let upstream = GenerateContentRequest {
        contents: conversation.contents,
        system_instruction: (!system.is_empty()).then_some(SystemInstruction { parts: system }),
        tools,
        tool_config,
        generation_config,
    };
    let mut out = Vec::with_capacity(body.len() + 256);
    serde_json::to_writer(&mut out, &upstream)
        .map_err(|error| GatewayError::invalid("body", error.to_string()))?;

    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(vertex) = deployment.vertex() {
        // Vertex AI: its own path; the access token is added by the signing step.
        let method = if summary.stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        return Ok(UpstreamRequest {
            path: vertex_model_path(vertex, "google", &deployment.upstream_model, method),
            headers,
            body: out,
        });
    }
    if !deployment.api_key.is_empty() {
        match deployment.spec.auth {
            tollgate_catalogue::Auth::Header(name) => {
                headers.push((name, deployment.api_key.clone()));
            }
            // A provider of this wire that takes a bearer token.
            tollgate_catalogue::Auth::Bearer if deployment.spec.wire == Wire::Gemini => {
                headers.push(("authorization", format!("Bearer {}", deployment.api_key)));
            }
            // A provider name this filter does not know (its spec is OpenAI's): Google AI
            // Studio's header.
            tollgate_catalogue::Auth::Bearer => {
                headers.push((API_KEY_HEADER, deployment.api_key.clone()));
            }
        }
    }
    Ok(UpstreamRequest {
        path: endpoint_path(&deployment.upstream_model, summary.stream),
        headers,
        body: out,
    })
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// Gemini's `usageMetadata`. It is protobuf JSON: a count of 0 is left out, so in a report
/// a missing count is 0, and a missing report is "not reported".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
    #[serde(default)]
    tool_use_prompt_token_count: Option<u64>,
}

impl UsageMetadata {
    /// Input tokens: the prompt (cached content included, as Gemini counts it) and what
    /// server-side tools fed the model.
    fn prompt_tokens(&self) -> u64 {
        self.prompt_token_count
            .unwrap_or(0)
            .saturating_add(self.tool_use_prompt_token_count.unwrap_or(0))
    }

    /// Output tokens: the answer and the thoughts (Gemini bills thinking as output and
    /// counts it apart; OpenAI counts reasoning inside `completion_tokens`).
    fn completion_tokens(&self) -> u64 {
        self.candidates_token_count
            .unwrap_or(0)
            .saturating_add(self.thoughts_token_count.unwrap_or(0))
    }

    fn record(&self) -> Usage {
        Usage {
            prompt_tokens: Some(self.prompt_tokens()),
            completion_tokens: Some(self.completion_tokens()),
            cached_prompt_tokens: self.cached_content_token_count,
            cache_creation_tokens: None,
            reasoning_tokens: self.thoughts_token_count,
        }
    }

    fn openai(&self) -> oa::CompletionUsage {
        let prompt_tokens = self.prompt_tokens();
        let completion_tokens = self.completion_tokens();
        oa::CompletionUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: oa::PromptTokensDetails {
                cached_tokens: self.cached_content_token_count.unwrap_or(0),
            },
            completion_tokens_details: self
                .thoughts_token_count
                .map(|reasoning_tokens| oa::CompletionTokensDetails { reasoning_tokens }),
            cost: None,
        }
    }
}

/// OpenAI's `finish_reason` for Gemini's `finishReason` of a candidate that made
/// `called_tools` (Gemini ends a turn of function calls with `STOP`).
fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => "content_filter",
        _ if called_tools => "tool_calls",
        // STOP, LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, and whatever Gemini adds later.
        _ => "stop",
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse<'a> {
    #[serde(borrow, default)]
    candidates: Option<Vec<Candidate<'a>>>,
    #[serde(borrow, default)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow, default)]
    model_version: Option<Str<'a>>,
    #[serde(borrow, default)]
    response_id: Option<Str<'a>>,
    /// A stream's error event.
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

impl<'a> GenerateContentResponse<'a> {
    fn candidate(&self) -> Option<&Candidate<'a>> {
        self.candidates.as_deref().and_then(<[_]>::first)
    }

    /// The prompt was blocked: no candidate, a block reason.
    fn prompt_blocked(&self) -> bool {
        self.candidate().is_none()
            && self
                .prompt_feedback
                .as_ref()
                .is_some_and(|feedback| feedback.block_reason.is_some())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<CandidateContent<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Str<'a>>,
}

impl<'a> Candidate<'a> {
    fn parts(&self) -> &[ResponsePart<'a>] {
        self.content
            .as_ref()
            .and_then(|content| content.parts.as_deref())
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct CandidateContent<'a> {
    #[serde(borrow, default)]
    parts: Option<Vec<ResponsePart<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponsePart<'a> {
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    /// A thought summary, not part of the answer.
    #[serde(default)]
    thought: Option<bool>,
    #[serde(borrow, default)]
    function_call: Option<ResponseFunctionCall<'a>>,
    #[serde(borrow, default)]
    thought_signature: Option<Str<'a>>,
}

impl ResponsePart<'_> {
    /// The part's answer text (thoughts are not the answer).
    fn answer_text(&self) -> Option<&str> {
        match self.thought {
            Some(true) => None,
            _ => self.text.as_deref(),
        }
    }
}

#[derive(Deserialize)]
struct ResponseFunctionCall<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow, default)]
    block_reason: Option<Str<'a>>,
}

/// The id the client gets for the `index`th function call of response `response_id`:
/// Gemini's own when it gave one, else `call_<response id>_<index>`; with the thought
/// signature the call came with appended.
fn tool_call_id(
    call: &ResponseFunctionCall<'_>,
    signature: Option<&str>,
    response_id: &str,
    index: u32,
) -> String {
    let mut id = match call.id.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => id.to_string(),
        None if response_id.is_empty() => format!("call_{index}"),
        None => format!("call_{response_id}_{index}"),
    };
    if let Some(signature) = signature.filter(|signature| !signature.is_empty()) {
        id.push_str(THOUGHT_SIGNATURE_SEPARATOR);
        id.push_str(signature);
    }
    id
}

/// The arguments' JSON text, without the whitespace Gemini pretty-prints buffered answers
/// with (`{}` when Gemini sent none).
fn arguments<'r>(call: &'r ResponseFunctionCall<'_>) -> Cow<'r, str> {
    call.args
        .map_or(Cow::Borrowed("{}"), |raw| compact_json(raw.get()))
}

/// Google's error object (`{"code","message","status","details"}`) as an OpenAI error body,
/// with the status the client should get when it is not the provider's (a key Gemini calls
/// "not valid" is answered 400 `INVALID_ARGUMENT`; OpenAI clients expect 401).
fn google_error(status: u16, error: &Value) -> Option<(Option<u16>, Vec<u8>)> {
    let message = error.get("message").and_then(Value::as_str)?;
    let google_status = error.get("status").and_then(Value::as_str);
    let key_invalid = error
        .get("details")
        .and_then(Value::as_array)
        .is_some_and(|details| {
            details.iter().any(|detail| {
                detail.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID")
            })
        });
    if key_invalid {
        let body = error_body(
            message,
            "authentication_error",
            None,
            Some("invalid_api_key"),
        );
        return Some((Some(401), body));
    }
    let code = google_status.map(str::to_ascii_lowercase);
    let body = error_body(
        message,
        error_type_for_status(status),
        None,
        code.as_deref(),
    );
    Some((None, body))
}

/// An error body: `{"error": {...}}`, or that object first in an array (how Gemini answers
/// a stream request without `alt=sse`).
fn google_error_of_body(status: u16, body: &[u8]) -> Option<(Option<u16>, Vec<u8>)> {
    let parsed: Value = serde_json::from_slice(body).ok()?;
    let envelope = match &parsed {
        Value::Array(items) => items.first()?,
        other => other,
    };
    google_error(status, envelope.get("error")?)
}

/// Response side of a Gemini request.
#[derive(Debug)]
pub struct GeminiResponse {
    created: u64,
    /// The deployment's model, for answers that do not name their model version.
    upstream_model: String,
    /// Boxed so that lending it out for a feed moves a pointer, not the parser.
    parser: Option<Box<SseParser>>,
    /// The OpenAI stream the client gets (function calls keyed by their number).
    writer: ChunkWriter,
    /// The response id the stream's tool call ids are made from, once known.
    response_id: Option<String>,
    /// Whether the stream's model was set.
    model_set: bool,
    /// The last usage report of the stream (each is cumulative).
    tokens: Option<UsageMetadata>,
    /// Function calls streamed so far.
    tool_calls: u32,
    /// The deployment's prices, for the cost on the usage chunk.
    prices: Option<Prices>,
}

impl GeminiResponse {
    /// Response side for a request with the client's `include_usage`, to a deployment of
    /// `upstream_model` with these `prices`.
    pub fn new(
        context: &TranslateContext,
        include_usage: bool,
        prices: Option<Prices>,
        upstream_model: &str,
    ) -> Self {
        GeminiResponse {
            created: context.now_unix,
            upstream_model: upstream_model.to_string(),
            parser: Some(Box::default()),
            writer: ChunkWriter::new(context.now_unix, include_usage),
            response_id: None,
            model_set: false,
            tokens: None,
            tool_calls: 0,
            prices,
        }
    }

    fn handle_event(
        &mut self,
        data: &str,
        out: &mut Vec<u8>,
        usage: &mut Usage,
    ) -> Result<(), GatewayError> {
        let event: GenerateContentResponse<'_> = serde_json::from_str(data).map_err(|error| {
            GatewayError::BadUpstreamResponse(format!("invalid Gemini stream event: {error}"))
        })?;
        if let Some(error) = event.error {
            let body = serde_json::from_str::<Value>(error.get())
                .ok()
                .and_then(|error| {
                    // The stream's status was 200: the error's own code says what went wrong.
                    let status = error
                        .get("code")
                        .and_then(Value::as_u64)
                        .and_then(|code| u16::try_from(code).ok())
                        .unwrap_or(500);
                    google_error(status, &error)
                })
                .map_or_else(
                    || {
                        error_body(
                            "The upstream provider reported an error in the stream.",
                            "api_error",
                            None,
                            None,
                        )
                    },
                    |(_, body)| body,
                );
            self.writer.fail(out, &body);
            return Ok(());
        }
        if self.response_id.is_none() {
            let id = event.response_id.as_deref().unwrap_or_default().to_string();
            self.writer.set_id(id.clone());
            self.response_id = Some(id);
        }
        if !self.model_set {
            let model = event
                .model_version
                .as_deref()
                .unwrap_or(&self.upstream_model)
                .to_string();
            self.writer.set_model(model);
            self.model_set = true;
        }
        if let Some(reported) = event.usage_metadata {
            self.tokens = Some(reported);
            usage.merge(reported.record());
        }
        self.writer.start(out)?;
        if event.prompt_blocked() {
            return self.end(out, "content_filter", usage);
        }
        let Some(candidate) = event.candidate() else {
            return Ok(());
        };
        for part in candidate.parts() {
            if let Some(call) = &part.function_call {
                let index = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                let response_id = self.response_id.as_deref().unwrap_or_default();
                let id = tool_call_id(call, part.thought_signature.as_deref(), response_id, index);
                let key = u64::from(index);
                let name = call.name.as_deref().unwrap_or_default();
                self.writer.tool_call_start(out, key, &id, name)?;
                self.writer
                    .tool_call_arguments(out, key, &arguments(call))?;
            } else if let Some(text) = part.answer_text() {
                self.writer.text(out, text)?;
            }
        }
        match &candidate.finish_reason {
            Some(reason) => self.end(out, finish_reason(reason, self.tool_calls > 0), usage),
            None => Ok(()),
        }
    }

    /// The answer is over: the event with the finish reason is Gemini's last, and carries
    /// the final usage. The stream ends here rather than when the provider's body does, so
    /// no output waits for an end-of-stream call that may bring no data to write into.
    fn end(
        &mut self,
        out: &mut Vec<u8>,
        reason: &'static str,
        usage: &Usage,
    ) -> Result<(), GatewayError> {
        self.writer.finish(out, reason)?;
        // The headers are long gone: the usage chunk is where the client learns the cost
        // (the same the usage record gets, from the same usage).
        let reported = self.tokens.unwrap_or_default().openai();
        let usage_out = oa::CompletionUsage {
            cost: stream_cost(self.prices.as_ref(), usage).map(oa::Cost),
            ..reported
        };
        self.writer.end(out, usage_out)
    }
}

impl ProviderResponse for GeminiResponse {
    fn rewrites_body(&self) -> bool {
        true
    }

    fn translate_body(
        &mut self,
        body: &[u8],
        usage: &mut Usage,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        let response: GenerateContentResponse<'_> =
            serde_json::from_slice(body).map_err(|error| {
                GatewayError::BadUpstreamResponse(format!(
                    "not a Gemini GenerateContentResponse: {error}"
                ))
            })?;
        let response_id = response.response_id.as_deref().unwrap_or_default();
        let (text, calls, reason) = match response.candidate() {
            Some(candidate) => {
                let mut text: Option<Cow<'_, str>> = None;
                let mut calls = Vec::new();
                for part in candidate.parts() {
                    if let Some(call) = &part.function_call {
                        let index = u32::try_from(calls.len()).unwrap_or(u32::MAX);
                        let id = tool_call_id(
                            call,
                            part.thought_signature.as_deref(),
                            response_id,
                            index,
                        );
                        calls.push((id, call));
                    } else if let Some(piece) = part.answer_text() {
                        match &mut text {
                            None => text = Some(Cow::Borrowed(piece)),
                            Some(joined) => joined.to_mut().push_str(piece),
                        }
                    }
                }
                let reason = finish_reason(
                    candidate.finish_reason.as_deref().unwrap_or("STOP"),
                    !calls.is_empty(),
                );
                (text, calls, reason)
            }
            None if response.prompt_blocked() => (None, Vec::new(), "content_filter"),
            None => {
                return Err(GatewayError::BadUpstreamResponse(
                    "the Gemini response has no candidate and no prompt feedback".into(),
                ))
            }
        };
        if let Some(reported) = response.usage_metadata {
            usage.merge(reported.record());
        }
        let arguments: Vec<Cow<'_, str>> = calls.iter().map(|(_, call)| arguments(call)).collect();
        let tool_calls: Vec<oa::ToolCallOut<'_>> = calls
            .iter()
            .zip(&arguments)
            .map(|((id, call), arguments)| oa::ToolCallOut {
                id,
                kind: "function",
                function: oa::FunctionCallOut {
                    name: call.name.as_deref().unwrap_or_default(),
                    arguments,
                },
            })
            .collect();
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
            id: response_id,
            object: oa::CHAT_COMPLETION,
            created: self.created,
            model: response
                .model_version
                .as_deref()
                .unwrap_or(&self.upstream_model),
            choices: std::slice::from_ref(&choice),
            usage: response.usage_metadata.map(|reported| reported.openai()),
        };
        serde_json::to_vec(&completion)
            .map(Some)
            .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))
    }

    fn error_status(&self, status: u16, body: &[u8]) -> Option<u16> {
        google_error_of_body(status, body).and_then(|(replaced, _)| replaced)
    }

    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8> {
        match google_error_of_body(status, body) {
            Some((_, body)) => body,
            None => openai_shaped_error(status, body),
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
            self.handle_event(event.data, out, usage)
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

    fn translator(include_usage: bool) -> GeminiResponse {
        GeminiResponse::new(
            &TranslateContext { now_unix: 7 },
            include_usage,
            None,
            "gemini-x",
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
    fn image_mime_types_come_from_the_extension() {
        for (url, expected) in [
            ("https://example.com/a.png", Some("image/png")),
            ("https://example.com/a.JPG?size=2#top", Some("image/jpeg")),
            ("http://example.com/dir.v2/a.jpeg", Some("image/jpeg")),
            ("https://example.com/a.webp", Some("image/webp")),
            ("https://example.com/a.heic", Some("image/heic")),
            ("https://example.com/a.gif", None),
            ("https://example.com/image", None),
            ("https://example.com/dir.png/image", None),
        ] {
            assert_eq!(image_mime_type(url), expected, "{url}");
        }
        let error = image_part("https://example.com/image", "p").err().unwrap();
        assert_eq!(error.param(), Some("p"));
        assert!(error.to_string().contains(".png"), "{error}");
        assert!(image_part("ftp://example.com/a.png", "p").is_err());
        assert!(image_part("data:image/png,AAAA", "p").is_err());
        assert!(matches!(
            image_part("DATA:image/webp;base64,QQ==", "p").unwrap().data,
            PartData::InlineData {
                mime_type: "image/webp",
                data: "QQ=="
            }
        ));
    }

    #[test]
    fn tool_call_ids_carry_the_thought_signature_both_ways() {
        let call: ResponseFunctionCall<'_> = serde_json::from_str(r#"{"name":"f"}"#).unwrap();
        assert_eq!(tool_call_id(&call, None, "resp", 2), "call_resp_2");
        assert_eq!(tool_call_id(&call, None, "", 0), "call_0");
        let signed = tool_call_id(&call, Some("c2ln"), "resp", 0);
        assert_eq!(signed, "call_resp_0__thought__c2ln");
        assert_eq!(split_tool_call_id(&signed), ("call_resp_0", Some("c2ln")));
        assert_eq!(split_tool_call_id("call_1"), ("call_1", None));
        assert_eq!(
            split_tool_call_id("call_1__thought__"),
            ("call_1__thought__", None)
        );
        let given: ResponseFunctionCall<'_> =
            serde_json::from_str(r#"{"id":"abc","name":"f"}"#).unwrap();
        assert_eq!(tool_call_id(&given, None, "resp", 4), "abc");
    }

    #[test]
    fn arguments_lose_the_pretty_printing_but_not_their_strings() {
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
        assert!(matches!(compact_json("{\"a\":\" \"}"), Cow::Borrowed(_)));
    }

    #[test]
    fn finish_reasons() {
        assert_eq!(finish_reason("STOP", false), "stop");
        assert_eq!(finish_reason("STOP", true), "tool_calls");
        assert_eq!(finish_reason("MAX_TOKENS", true), "length");
        for filtered in [
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
        ] {
            assert_eq!(finish_reason(filtered, false), "content_filter");
            assert_eq!(finish_reason(filtered, true), "content_filter");
        }
        assert_eq!(finish_reason("MALFORMED_FUNCTION_CALL", false), "stop");
        assert_eq!(finish_reason("SOMETHING_NEW", false), "stop");
    }

    #[test]
    fn model_names_are_one_path_segment() {
        assert_eq!(
            endpoint_path("gemini-2.5-flash", false),
            "/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            endpoint_path("a b/c?d", true),
            "/v1beta/models/a%20b%2Fc%3Fd:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn usage_adds_thoughts_to_the_output_and_missing_counts_are_zero() {
        let reported: UsageMetadata = serde_json::from_str(
            r#"{"promptTokenCount":10,"candidatesTokenCount":5,"thoughtsTokenCount":7,"cachedContentTokenCount":4,"totalTokenCount":22}"#,
        )
        .unwrap();
        assert_eq!(
            reported.record(),
            Usage {
                prompt_tokens: Some(10),
                completion_tokens: Some(12),
                cached_prompt_tokens: Some(4),
                cache_creation_tokens: None,
                reasoning_tokens: Some(7),
            }
        );
        let openai = serde_json::to_value(reported.openai()).unwrap();
        assert_eq!(
            openai,
            serde_json::json!({"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 7}})
        );
        let blocked: UsageMetadata =
            serde_json::from_str(r#"{"promptTokenCount":3,"totalTokenCount":3}"#).unwrap();
        assert_eq!(blocked.record().completion_tokens, Some(0));
        assert_eq!(blocked.record().reasoning_tokens, None);
    }

    #[test]
    fn nothing_after_the_end_of_the_stream() {
        let mut response = translator(false);
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        let stream = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":1},\"responseId\":\"r\"}\r\n\r\ndata: {\"error\":{\"code\":500,\"message\":\"late\",\"status\":\"INTERNAL\"}}\r\n\r\n";
        response
            .translate_stream(stream, false, &mut out, &mut usage)
            .unwrap();
        // The finish reason ends the stream: the late error is dropped.
        let events = data_events(&out);
        assert_eq!(events.len(), 4, "{events:?}");
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
    fn a_stream_without_a_finish_reason_was_cut() {
        let mut response = translator(true);
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        response
            .translate_stream(
                b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}]}\n\n",
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
                b"data: {\"candidates\": 5}\n\n",
                false,
                &mut out,
                &mut usage,
            )
            .unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(out.is_empty());
    }

    #[test]
    fn errors_in_an_array_and_bad_keys() {
        let key = br#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}]"#;
        let response = translator(false);
        assert_eq!(response.error_status(400, key), Some(401));
        let body: Value = serde_json::from_slice(&response.translate_error(400, key)).unwrap();
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        let other =
            br#"{"error":{"code":429,"message":"slow down","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(response.error_status(429, other), None);
        let body: Value = serde_json::from_slice(&response.translate_error(429, other)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": "resource_exhausted"}})
        );
        let text: Value =
            serde_json::from_slice(&response.translate_error(502, b"<html>bad gateway</html>"))
                .unwrap();
        assert_eq!(text["error"]["type"], "api_error");
    }
}
