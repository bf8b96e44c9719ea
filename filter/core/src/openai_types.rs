//! OpenAI Chat Completions wire types, for translators that need the whole request.
//!
//! The request side borrows from the body wherever it can: strings without escapes (long
//! prompts, base64 images) and tool schemas (`&RawValue`) are not copied, so a translator's
//! only full copy of the content is the provider body it writes. Unknown fields are ignored.
//!
//! The response side (`chat.completion`, `chat.completion.chunk`) is what translators
//! serialise for the client; it borrows everything and allocates nothing of its own.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::GatewayError;

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

/// A JSON string that borrows from the body when it has no escapes.
///
/// (`Option<Cow<str>>` would always copy: serde only borrows a `Cow` field that is not inside
/// an `Option`.)
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Str<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Str<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Str(Cow::Borrowed(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Str(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Str(Cow::Owned(value)))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor)
    }
}

/// An OpenAI chat completion request, as far as translation needs it.
#[derive(Debug, Deserialize)]
pub struct ChatRequest<'a> {
    /// The conversation.
    #[serde(borrow)]
    pub messages: Vec<Message<'a>>,
    /// Function tools the model may call.
    #[serde(borrow, default)]
    pub tools: Option<Vec<Tool<'a>>>,
    /// `"none"`, `"auto"`, `"required"` or a named function.
    #[serde(borrow, default)]
    pub tool_choice: Option<ToolChoice<'a>>,
    /// Whether the model may call several tools in one turn (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Up to 4 stop sequences.
    #[serde(borrow, default)]
    pub stop: Option<Stop<'a>>,
    /// Sampling temperature, 0 to 2.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Deprecated output limit.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Output limit (reasoning included).
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Number of choices.
    #[serde(default)]
    pub n: Option<u64>,
    /// End-user identifier.
    #[serde(borrow, default)]
    pub user: Option<Str<'a>>,
    /// Whether to stream.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Stream options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// The deprecated `functions` list (replaced by `tools`).
    #[serde(borrow, default)]
    pub functions: Option<&'a RawValue>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Penalty on tokens by how often they appeared, -2 to 2.
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// Penalty on tokens that appeared at all, -2 to 2.
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// `{"type": "text" | "json_object" | "json_schema", ...}` as sent, for the translators
    /// that map it (see [`ResponseFormat`]); the others leave it alone.
    #[serde(borrow, default)]
    pub response_format: Option<&'a RawValue>,
}

/// `response_format`, read by a translator from [`ChatRequest::response_format`].
#[derive(Debug, Deserialize)]
pub struct ResponseFormat<'a> {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    /// The schema, for `json_schema`.
    #[serde(borrow, default)]
    pub json_schema: Option<JsonSchemaFormat<'a>>,
}

/// `response_format.json_schema`.
#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat<'a> {
    /// The schema's name.
    #[serde(borrow)]
    pub name: Str<'a>,
    /// What the answer is for.
    #[serde(borrow, default)]
    pub description: Option<Str<'a>>,
    /// The JSON Schema, as sent.
    #[serde(borrow, default)]
    pub schema: Option<&'a RawValue>,
    /// Structured-outputs strictness.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `stream_options`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a usage chunk before `[DONE]`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// One message of the conversation.
#[derive(Debug, Deserialize)]
pub struct Message<'a> {
    /// `system`, `developer`, `user`, `assistant`, `tool` or `function`.
    #[serde(borrow)]
    pub role: Str<'a>,
    /// A string or an array of content parts (`null` for assistant messages with tool calls).
    #[serde(borrow, default)]
    pub content: Option<Content<'a>>,
    /// Participant name.
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    /// Tool calls an assistant message made.
    #[serde(borrow, default)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
    /// The call a tool message answers.
    #[serde(borrow, default)]
    pub tool_call_id: Option<Str<'a>>,
}

/// Message content: a string or an array of parts.
#[derive(Debug)]
pub enum Content<'a> {
    /// Plain text.
    Text(Str<'a>),
    /// Content parts.
    Parts(Vec<ContentPart<'a>>),
}

struct ContentVisitor;

impl<'de> Visitor<'de> for ContentVisitor {
    type Value = Content<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of content parts")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Content::Text(Str(Cow::Borrowed(value))))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Content::Text(Str(Cow::Owned(value.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Content::Text(Str(Cow::Owned(value))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Vec::deserialize(SeqAccessDeserializer::new(seq)).map(Content::Parts)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ContentVisitor)
    }
}

/// One content part. `type` is kept as a string so that a part the translator cannot use is
/// reported by name rather than as a parse error.
#[derive(Debug, Deserialize)]
pub struct ContentPart<'a> {
    /// `text`, `image_url`, `refusal`, `input_audio`, `file` ...
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    /// Text of a `text` part.
    #[serde(borrow, default)]
    pub text: Option<Str<'a>>,
    /// Image of an `image_url` part.
    #[serde(borrow, default)]
    pub image_url: Option<ImageUrl<'a>>,
    /// Text of an assistant `refusal` part.
    #[serde(borrow, default)]
    pub refusal: Option<Str<'a>>,
}

/// `image_url` of a content part.
#[derive(Debug, Deserialize)]
pub struct ImageUrl<'a> {
    /// An http(s) URL or a `data:` URL.
    #[serde(borrow)]
    pub url: Str<'a>,
    /// `auto`, `low` or `high`.
    #[serde(borrow, default)]
    pub detail: Option<Str<'a>>,
}

/// A tool call made by an assistant message.
#[derive(Debug, Deserialize)]
pub struct ToolCall<'a> {
    /// Call id, echoed by the tool message that answers it.
    #[serde(borrow)]
    pub id: Str<'a>,
    /// Always `function`.
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Str<'a>>,
    /// The function called.
    #[serde(borrow)]
    pub function: FunctionCall<'a>,
}

/// The function of a tool call.
#[derive(Debug, Deserialize)]
pub struct FunctionCall<'a> {
    /// Function name.
    #[serde(borrow)]
    pub name: Str<'a>,
    /// Arguments as a JSON text.
    #[serde(borrow, default)]
    pub arguments: Option<Str<'a>>,
}

/// A tool the model may call.
#[derive(Debug, Deserialize)]
pub struct Tool<'a> {
    /// `function` (or `custom`, which translators may refuse).
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    /// The function, for `function` tools.
    #[serde(borrow, default)]
    pub function: Option<FunctionDefinition<'a>>,
}

/// A function tool's definition.
#[derive(Debug, Deserialize)]
pub struct FunctionDefinition<'a> {
    /// Name.
    #[serde(borrow)]
    pub name: Str<'a>,
    /// What it does.
    #[serde(borrow, default)]
    pub description: Option<Str<'a>>,
    /// JSON Schema of the arguments, as sent.
    #[serde(borrow, default)]
    pub parameters: Option<&'a RawValue>,
    /// Structured-outputs strictness.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `tool_choice`.
#[derive(Debug)]
pub enum ToolChoice<'a> {
    /// `"none"`, `"auto"` or `"required"`.
    Mode(Str<'a>),
    /// `{"type":"function","function":{"name":...}}` (or another object form).
    Named(NamedToolChoice<'a>),
}

/// The object form of `tool_choice`.
#[derive(Debug, Deserialize)]
pub struct NamedToolChoice<'a> {
    /// `function` (`allowed_tools` and `custom` exist too).
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    /// The function to call.
    #[serde(borrow, default)]
    pub function: Option<FunctionName<'a>>,
}

/// `{"name": ...}`.
#[derive(Debug, Deserialize)]
pub struct FunctionName<'a> {
    /// The function's name.
    #[serde(borrow)]
    pub name: Str<'a>,
}

struct ToolChoiceVisitor;

impl<'de> Visitor<'de> for ToolChoiceVisitor {
    type Value = ToolChoice<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"none\", \"auto\", \"required\" or a tool choice object")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(ToolChoice::Mode(Str(Cow::Borrowed(value))))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(ToolChoice::Mode(Str(Cow::Owned(value.to_owned()))))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        NamedToolChoice::deserialize(MapAccessDeserializer::new(map)).map(ToolChoice::Named)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ToolChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ToolChoiceVisitor)
    }
}

/// `stop`: one sequence or several.
#[derive(Debug)]
pub enum Stop<'a> {
    /// A single stop sequence.
    One(Str<'a>),
    /// Several.
    Many(Vec<Str<'a>>),
}

impl<'a> Stop<'a> {
    /// The sequences, in order.
    pub fn as_slice(&self) -> &[Str<'a>] {
        match self {
            Stop::One(one) => std::slice::from_ref(one),
            Stop::Many(many) => many,
        }
    }
}

struct StopVisitor;

impl<'de> Visitor<'de> for StopVisitor {
    type Value = Stop<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of strings")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Stop::One(Str(Cow::Borrowed(value))))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Stop::One(Str(Cow::Owned(value.to_owned()))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Vec::deserialize(SeqAccessDeserializer::new(seq)).map(Stop::Many)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Stop<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StopVisitor)
    }
}

/// Parses a chat request. A type error becomes a 400 naming the field by its path
/// (`messages[1].tool_calls[0].function.name`); a syntax error is "not JSON".
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequest<'_>, GatewayError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let request: ChatRequest<'_> = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| path_error(error, "body"))?;
    deserializer
        .end()
        .map_err(|error| GatewayError::InvalidJson(error.to_string()))?;
    Ok(request)
}

/// Turns a serde error with its path into the client's error.
pub fn path_error(
    error: serde_path_to_error::Error<serde_json::Error>,
    root: &str,
) -> GatewayError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return GatewayError::InvalidJson(inner.to_string());
    }
    let param = if path == "." { root.to_string() } else { path };
    let detail = inner.to_string();
    let detail = match detail.rfind(" at line ") {
        Some(at) => detail.get(..at).unwrap_or(&detail),
        None => &detail,
    };
    GatewayError::InvalidRequest {
        message: format!("Invalid value for '{param}': {detail}."),
        param: Some(param),
    }
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// `object` of a buffered completion.
pub const CHAT_COMPLETION: &str = "chat.completion";
/// `object` of a stream chunk.
pub const CHAT_COMPLETION_CHUNK: &str = "chat.completion.chunk";

/// A buffered chat completion.
#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    /// Completion id.
    pub id: &'a str,
    /// Always [`CHAT_COMPLETION`].
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: &'a str,
    /// The choices (one).
    pub choices: &'a [Choice<'a>],
    /// Token usage, when the provider reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

/// One choice of a buffered completion.
#[derive(Debug, Serialize)]
pub struct Choice<'a> {
    /// Choice index.
    pub index: u32,
    /// The assistant's message.
    pub message: AssistantMessage<'a>,
    /// Always null (not supported by the translators).
    pub logprobs: Option<()>,
    /// `stop`, `length`, `tool_calls`, `content_filter`.
    pub finish_reason: &'a str,
}

/// The assistant message of a buffered completion.
#[derive(Debug, Serialize)]
pub struct AssistantMessage<'a> {
    /// Always `assistant`.
    pub role: &'static str,
    /// Text, or null when the model only called tools.
    pub content: Option<&'a str>,
    /// Always null.
    pub refusal: Option<&'a str>,
    /// Tool calls, when there are any.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tool_calls: &'a [ToolCallOut<'a>],
}

/// A tool call in a buffered completion.
#[derive(Debug, Serialize)]
pub struct ToolCallOut<'a> {
    /// Call id.
    pub id: &'a str,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The call.
    pub function: FunctionCallOut<'a>,
}

/// Name and arguments of a tool call.
#[derive(Debug, Serialize)]
pub struct FunctionCallOut<'a> {
    /// Function name.
    pub name: &'a str,
    /// Arguments as a JSON text.
    pub arguments: &'a str,
}

/// OpenAI's usage object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CompletionUsage {
    /// Input tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Sum of both.
    pub total_tokens: u64,
    /// Cached input tokens.
    pub prompt_tokens_details: PromptTokensDetails,
    /// Reasoning tokens, when the provider reports them apart (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    /// What the response cost, on a stream's usage chunk (a stream's headers leave before
    /// the cost is known); absent when it is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
}

/// A cost in US dollars, serialised as the `x-litellm-response-cost` header writes it
/// ([`crate::pricing::cost_header_value`]: plain decimal, never exponent notation), so that a
/// stream's `usage.cost` and a buffered answer's header read the same. Only for serde_json.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost(pub f64);

impl Serialize for Cost {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = crate::pricing::cost_header_value(self.0);
        let raw = RawValue::from_string(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CompletionTokensDetails {
    /// The part of `completion_tokens` the model spent reasoning.
    pub reasoning_tokens: u64,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Input tokens served from the prompt cache.
    pub cached_tokens: u64,
}

/// One stream chunk.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk<'a> {
    /// Completion id (the same on every chunk).
    pub id: &'a str,
    /// Always [`CHAT_COMPLETION_CHUNK`].
    pub object: &'static str,
    /// Unix seconds (the same on every chunk).
    pub created: u64,
    /// The model that answers.
    pub model: &'a str,
    /// One choice, or none on the usage chunk.
    pub choices: &'a [ChunkChoice<'a>],
    /// Absent unless the client asked for usage; then null on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<CompletionUsage>>,
}

/// The choice of a stream chunk.
#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    /// Choice index.
    pub index: u32,
    /// What this chunk adds.
    pub delta: Delta<'a>,
    /// Always null.
    pub logprobs: Option<()>,
    /// Set on the chunk that ends the choice.
    pub finish_reason: Option<&'a str>,
}

/// The delta of a stream chunk.
#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    /// `assistant`, on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Text added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    /// Tool call pieces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<&'a [ToolCallDelta<'a>]>,
}

/// A piece of a streamed tool call.
#[derive(Debug, Serialize)]
pub struct ToolCallDelta<'a> {
    /// Which tool call of the response (0-based).
    pub index: u32,
    /// Call id, on its first piece.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// `function`, on its first piece.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Name (first piece) or argument text.
    pub function: FunctionDelta<'a>,
}

/// Function part of a streamed tool call piece.
#[derive(Debug, Serialize)]
pub struct FunctionDelta<'a> {
    /// Function name, on the first piece.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// A piece of the arguments' JSON text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a str>,
}

/// The bytes every `chat.completion.chunk` event of one stream shares, serialised once per
/// stream: from chunk to chunk only the delta and the finish reason change, and writing the
/// id, object, created and model again for each token costs more than the token.
///
/// [`ChunkFrame::write`] produces exactly what serialising a [`ChatCompletionChunk`] with one
/// choice of index 0 as a `data:` event would.
#[derive(Debug, Default)]
pub struct ChunkFrame {
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":[{"index":0,"delta":`
    head: Vec<u8>,
    /// Whether chunks carry `"usage":null` (the client asked for the usage chunk).
    include_usage: bool,
}

impl ChunkFrame {
    /// The frame of a stream with this id, creation time and model.
    pub fn new(id: &str, created: u64, model: &str, include_usage: bool) -> Self {
        let mut head = Vec::with_capacity(96 + id.len() + model.len());
        head.extend_from_slice(b"data: {\"id\":");
        write_json_str(&mut head, id);
        head.extend_from_slice(b",\"object\":\"");
        head.extend_from_slice(CHAT_COMPLETION_CHUNK.as_bytes());
        head.extend_from_slice(b"\",\"created\":");
        head.extend_from_slice(created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        write_json_str(&mut head, model);
        head.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":");
        ChunkFrame {
            head,
            include_usage,
        }
    }

    /// Appends one chunk event with `delta` to `out`.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        delta: &Delta<'_>,
        finish_reason: Option<&str>,
    ) -> Result<(), serde_json::Error> {
        out.extend_from_slice(&self.head);
        serde_json::to_writer(&mut *out, delta)?;
        self.write_tail(out, finish_reason);
        Ok(())
    }

    /// What follows the delta: the rest of the choice and of the chunk, and the event's end.
    fn write_tail(&self, out: &mut Vec<u8>, finish_reason: Option<&str>) {
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish_reason {
            Some(reason) => write_json_str(out, reason),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]");
        if self.include_usage {
            out.extend_from_slice(b",\"usage\":null");
        }
        out.extend_from_slice(b"}\n\n");
    }
}

impl ChunkFrame {
    /// Appends one chunk event whose delta is `{"content":"<escaped_text>"}`, with no
    /// finish reason. `escaped_text` must be the body of a JSON string as it stands (see
    /// [`is_json_string_body`]); it is copied, not escaped again.
    pub fn write_escaped_content(&self, out: &mut Vec<u8>, escaped_text: &str) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"{\"content\":\"");
        out.extend_from_slice(escaped_text.as_bytes());
        out.extend_from_slice(b"\"}");
        self.write_tail(out, None);
    }
}

/// Whether `text` is the body of a JSON string (what goes between the quotes): no bare
/// quote or control character, and only well-formed escapes. Surrogate escapes are refused
/// too: serde refuses a lone one, so copying it would hand the client a string that is not
/// JSON; a valid pair takes the general path, which decodes it.
pub fn is_json_string_body(text: &[u8]) -> bool {
    let mut at = 0;
    while let Some(&byte) = text.get(at) {
        at += match byte {
            b'"' | 0..=0x1f => return false,
            b'\\' => match text.get(at + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                Some(b'u')
                    if text.get(at + 2..at + 6).is_some_and(|hex| {
                        hex.iter().all(u8::is_ascii_hexdigit) && !is_surrogate_escape(hex)
                    }) =>
                {
                    6
                }
                _ => return false,
            },
            _ => 1,
        };
    }
    true
}

/// Whether the four hex digits of a `\u` escape are a UTF-16 surrogate (D800 to DFFF).
fn is_surrogate_escape(hex: &[u8]) -> bool {
    matches!(
        hex,
        [b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F', ..]
    )
}

/// Appends `value` as a JSON string.
fn write_json_str(out: &mut Vec<u8>, value: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_content_is_what_serde_writes_for_the_unescaped_text() {
        for (escaped, text) in [
            ("plain", "plain"),
            (
                r#"a \"quoted\" \\ line\n\t\u00e9\/"#,
                "a \"quoted\" \\ line\n\t\u{e9}/",
            ),
            ("", ""),
        ] {
            assert!(is_json_string_body(escaped.as_bytes()), "{escaped}");
            let frame = ChunkFrame::new("id", 1, "m", true);
            let mut fast = Vec::new();
            frame.write_escaped_content(&mut fast, escaped);
            let mut general = Vec::new();
            let delta = Delta {
                content: Some(text),
                ..Delta::default()
            };
            frame.write(&mut general, &delta, None).unwrap();
            let parse = |bytes: &[u8]| -> serde_json::Value {
                let text = std::str::from_utf8(bytes).unwrap();
                serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap()
            };
            assert_eq!(parse(&fast), parse(&general), "{escaped}");
        }
        // Surrogate escapes: a lone one is not JSON serde accepts, so none are copied as is.
        for bad in [
            "a\"b",
            "tab\there",
            "end\\",
            r"\x",
            r"\u12",
            r"\u12g4",
            r"\ud800",
            r"\uDFFF",
            r"\ud83d\ude00",
        ] {
            assert!(!is_json_string_body(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn chunk_frame_writes_what_serde_writes() {
        let tool_call = [ToolCallDelta {
            index: 1,
            id: Some("toolu_1"),
            kind: Some("function"),
            function: FunctionDelta {
                name: Some("get_weather"),
                arguments: Some("{\"city\":\"Z\u{fc}rich\"}"),
            },
        }];
        let deltas = [
            Delta {
                role: Some("assistant"),
                content: Some(""),
                tool_calls: None,
            },
            Delta {
                content: Some("line \"one\"\n\u{1}"),
                ..Delta::default()
            },
            Delta {
                tool_calls: Some(&tool_call),
                ..Delta::default()
            },
            Delta::default(),
        ];
        for include_usage in [false, true] {
            let frame = ChunkFrame::new("msg_\"x\"", 1_700_000_000, "claude-\u{e9}", include_usage);
            for delta in &deltas {
                for finish_reason in [None, Some("stop")] {
                    let mut framed = Vec::new();
                    frame.write(&mut framed, delta, finish_reason).unwrap();
                    let choice = ChunkChoice {
                        index: 0,
                        delta: Delta { ..*delta },
                        logprobs: None,
                        finish_reason,
                    };
                    let chunk = ChatCompletionChunk {
                        id: "msg_\"x\"",
                        object: CHAT_COMPLETION_CHUNK,
                        created: 1_700_000_000,
                        model: "claude-\u{e9}",
                        choices: std::slice::from_ref(&choice),
                        usage: include_usage.then_some(None),
                    };
                    let expected = format!("data: {}\n\n", serde_json::to_string(&chunk).unwrap());
                    assert_eq!(String::from_utf8(framed).unwrap(), expected);
                }
            }
        }
    }

    #[test]
    fn borrows_plain_strings_and_raw_schemas() {
        let body = br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}],
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
            "tool_choice":{"type":"function","function":{"name":"f"}},"stop":"x","user":"u\n"}"#;
        let request = parse_chat_request(body).unwrap();
        let Some(Content::Parts(parts)) = &request.messages[0].content else {
            panic!("parts expected");
        };
        let url = &parts[0].image_url.as_ref().unwrap().url;
        assert!(matches!(url.0, Cow::Borrowed(_)));
        let tools = request.tools.as_ref().unwrap();
        assert_eq!(
            tools[0]
                .function
                .as_ref()
                .unwrap()
                .parameters
                .unwrap()
                .get(),
            r#"{"type":"object"}"#
        );
        assert!(matches!(request.tool_choice, Some(ToolChoice::Named(_))));
        assert_eq!(request.stop.as_ref().unwrap().as_slice().len(), 1);
        // Escaped strings are decoded (and owned).
        assert_eq!(request.user.as_ref().unwrap().as_str(), "u\n");
    }

    #[test]
    fn nulls_are_absent() {
        let body = br#"{"messages":[{"role":"assistant","content":null,"tool_calls":null}],"tools":null,"tool_choice":null,"stop":null,"user":null,"n":null}"#;
        let request = parse_chat_request(body).unwrap();
        assert!(request.messages[0].content.is_none());
        assert!(request.tools.is_none() && request.tool_choice.is_none() && request.stop.is_none());
    }

    #[test]
    fn type_errors_name_the_path() {
        let cases = [
            (
                r#"{"messages":[{"role":"user","content":5}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"text","text":1}]}]}"#,
                "messages[0].content[0].text",
            ),
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"a","function":{"name":3}}]}]}"#,
                "messages[0].tool_calls[0].function.name",
            ),
            (
                r#"{"messages":[],"tools":[{"type":"function","function":{}}]}"#,
                "tools[0].function",
            ),
            (r#"{"messages":[],"tool_choice":7}"#, "tool_choice"),
            (r#"{"messages":[],"stop":[1]}"#, "stop[0]"),
            (r#"{"messages":[],"temperature":"hot"}"#, "temperature"),
            (
                r#"{"messages":[],"stream_options":{"include_usage":"yes"}}"#,
                "stream_options.include_usage",
            ),
        ];
        for (body, param) in cases {
            let error = parse_chat_request(body.as_bytes()).unwrap_err();
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(error.param(), Some(param), "{body}: {error}");
        }
        assert!(matches!(
            parse_chat_request(b"{"),
            Err(GatewayError::InvalidJson(_))
        ));
    }

    #[test]
    fn chunk_usage_is_absent_null_or_set() {
        let choice = ChunkChoice {
            index: 0,
            delta: Delta {
                content: Some("hi"),
                ..Delta::default()
            },
            logprobs: None,
            finish_reason: None,
        };
        let mut chunk = ChatCompletionChunk {
            id: "x",
            object: CHAT_COMPLETION_CHUNK,
            created: 1,
            model: "m",
            choices: std::slice::from_ref(&choice),
            usage: None,
        };
        let value = serde_json::to_value(&chunk).unwrap();
        assert!(value.get("usage").is_none());
        assert_eq!(
            value["choices"][0]["delta"],
            serde_json::json!({"content": "hi"})
        );
        chunk.usage = Some(None);
        assert!(serde_json::to_value(&chunk).unwrap()["usage"].is_null());
    }
}
