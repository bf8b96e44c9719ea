//! One module per wire protocol of the provider catalogue (`tollgate_catalogue::Wire`),
//! behind one closed enum.
//!
//! Each provider module turns an OpenAI chat request into the provider's request
//! (`build_request`) and implements [`ProviderResponse`] to turn the provider's answer back
//! into OpenAI's format: a buffered body, an error body, or a stream chunk by chunk.

pub mod anthropic;
pub mod bedrock;
pub mod chunks;
pub mod cohere;
pub mod embeddings;
pub mod errors;
pub mod gemini;
pub mod ollama;
pub mod openai;

use crate::request::ChatRequestSummary;
use crate::snapshot::{Deployment, Wire};
use crate::{GatewayError, Usage};
pub use errors::openai_shaped_error;

/// Per-request facts a translation may need and must not fetch itself (the core reads no
/// clock, so golden tests are deterministic).
#[derive(Debug, Clone, Copy, Default)]
pub struct TranslateContext {
    /// Unix seconds, for OpenAI's `created`.
    pub now_unix: u64,
}

/// The request to send upstream.
#[derive(Clone, PartialEq)]
pub struct UpstreamRequest {
    /// Path appended to the deployment's base path (e.g. `/chat/completions`).
    pub path: String,
    /// Headers to set (provider auth, version headers ...).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRequest")
            .field("path", &self.path)
            .field("headers", &crate::redact::Headers(&self.headers))
            .field("body", &self.body)
            .finish()
    }
}

/// What became of one stream chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutput {
    /// Forward the chunk as it came (the translator only observed it).
    Unchanged,
    /// Forward the bytes written to `out` instead.
    Replaced,
}

/// How a provider frames a streamed answer. The translator says which one it reads, and
/// the answer is streamed only when its content type is that framing's (an answer in
/// another type, a JSON error say, is buffered and translated whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Server-sent events (`text/event-stream`): OpenAI, Anthropic, Gemini's `alt=sse`,
    /// Cohere.
    Sse,
    /// Newline-delimited JSON (`application/x-ndjson`): Ollama's native API.
    Ndjson,
    /// AWS event stream (`application/vnd.amazon.eventstream`): binary frames with CRCs,
    /// Bedrock's ConverseStream.
    AwsEventStream,
}

impl Framing {
    /// The media type this framing is sent with.
    pub const fn media_type(self) -> &'static str {
        match self {
            Framing::Sse => "text/event-stream",
            Framing::Ndjson => "application/x-ndjson",
            Framing::AwsEventStream => "application/vnd.amazon.eventstream",
        }
    }

    /// Whether a response `content-type` (parameters and case aside) is this framing's.
    pub fn matches(self, content_type: &str) -> bool {
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        media_type.eq_ignore_ascii_case(self.media_type())
    }
}

/// The response direction of a provider translation.
pub trait ProviderResponse {
    /// How the provider frames a stream; the translator's `translate_stream` reads it.
    fn framing(&self) -> Framing {
        Framing::Sse
    }

    /// Whether a successful buffered body is rewritten (false: forwarded as is, so its
    /// content-length stays valid).
    fn rewrites_body(&self) -> bool;

    /// Translates a complete successful body and records its usage. `None` forwards the body
    /// unchanged.
    fn translate_body(
        &mut self,
        body: &[u8],
        usage: &mut Usage,
    ) -> Result<Option<Vec<u8>>, GatewayError>;

    /// Translates a provider error body (status >= 400) into OpenAI's error shape.
    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8>;

    /// The status the client gets for a provider error (status >= 400) when it is not the
    /// provider's: `None` keeps it. (Gemini answers a key it refuses with 400; OpenAI
    /// clients expect 401.)
    fn error_status(&self, _status: u16, _body: &[u8]) -> Option<u16> {
        None
    }

    /// Translates one chunk of a successful stream, appending output to `out`, and records
    /// usage as it is reported. On `end_of_stream` it flushes whatever it still holds.
    fn translate_stream(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
        usage: &mut Usage,
    ) -> Result<ChunkOutput, GatewayError>;
}

/// The response translator of one request.
#[derive(Debug)]
pub enum ResponseTranslator {
    /// OpenAI and compatible servers.
    OpenAi(openai::OpenAiResponse),
    /// Anthropic Messages.
    Anthropic(anthropic::AnthropicResponse),
    /// Gemini generateContent.
    Gemini(gemini::GeminiResponse),
    /// Bedrock Converse.
    Bedrock(bedrock::BedrockResponse),
    /// Cohere v2 chat.
    Cohere(cohere::CohereResponse),
    /// Ollama's native chat API.
    Ollama(ollama::OllamaResponse),
    /// An embeddings answer, of any wire.
    Embeddings(embeddings::EmbeddingsResponse),
    /// A legacy text completion answered through a chat translator (boxed: it holds one).
    TextCompletion(Box<crate::completions::TextCompletionResponse>),
}

impl ResponseTranslator {
    pub(crate) fn inner(&mut self) -> &mut dyn ProviderResponse {
        match self {
            ResponseTranslator::OpenAi(inner) => inner,
            ResponseTranslator::Anthropic(inner) => inner,
            ResponseTranslator::Gemini(inner) => inner,
            ResponseTranslator::Bedrock(inner) => inner,
            ResponseTranslator::Cohere(inner) => inner,
            ResponseTranslator::Ollama(inner) => inner,
            ResponseTranslator::Embeddings(inner) => inner,
            ResponseTranslator::TextCompletion(inner) => inner.as_mut(),
        }
    }

    pub(crate) fn inner_ref(&self) -> &dyn ProviderResponse {
        match self {
            ResponseTranslator::OpenAi(inner) => inner,
            ResponseTranslator::Anthropic(inner) => inner,
            ResponseTranslator::Gemini(inner) => inner,
            ResponseTranslator::Bedrock(inner) => inner,
            ResponseTranslator::Cohere(inner) => inner,
            ResponseTranslator::Ollama(inner) => inner,
            ResponseTranslator::Embeddings(inner) => inner,
            ResponseTranslator::TextCompletion(inner) => inner.as_ref(),
        }
    }
}

/// Translates the request for `deployment` and prepares the matching response translator.
pub fn translate_request(
    summary: &ChatRequestSummary<'_>,
    body: &[u8],
    deployment: &Deployment,
    context: &TranslateContext,
) -> Result<(UpstreamRequest, ResponseTranslator), GatewayError> {
    // The usage chunk the response side writes: the client's, or the gateway's own.
    let usage_chunk = summary.include_usage || summary.usage_to_gateway;
    match deployment.provider {
        Wire::OpenAi => {
            let request = openai::build_request(summary, body, deployment)?;
            let response =
                openai::OpenAiResponse::new(summary.stream, usage_chunk, deployment.prices);
            Ok((request, ResponseTranslator::OpenAi(response)))
        }
        Wire::Anthropic => {
            let request = anthropic::build_request(summary, body, deployment, context)?;
            let response = anthropic::AnthropicResponse::new(
                context,
                summary.stream,
                usage_chunk,
                deployment.prices,
            );
            Ok((request, ResponseTranslator::Anthropic(response)))
        }
        Wire::Gemini => {
            let request = gemini::build_request(summary, body, deployment, context)?;
            let response = gemini::GeminiResponse::new(
                context,
                usage_chunk,
                deployment.prices,
                &deployment.upstream_model,
            );
            Ok((request, ResponseTranslator::Gemini(response)))
        }
        Wire::Bedrock => {
            let request = bedrock::build_request(summary, body, deployment, context)?;
            let response = bedrock::BedrockResponse::new(
                context,
                body,
                usage_chunk,
                deployment.prices,
                &deployment.upstream_model,
            );
            Ok((request, ResponseTranslator::Bedrock(response)))
        }
        Wire::Cohere => {
            let request = cohere::build_request(summary, body, deployment, context)?;
            let response = cohere::CohereResponse::new(
                context,
                usage_chunk,
                deployment.prices,
                &deployment.upstream_model,
            );
            Ok((request, ResponseTranslator::Cohere(response)))
        }
        Wire::Ollama => {
            let request = ollama::build_request(summary, body, deployment, context)?;
            let response = ollama::OllamaResponse::new(
                context,
                usage_chunk,
                deployment.prices,
                &deployment.upstream_model,
            );
            Ok((request, ResponseTranslator::Ollama(response)))
        }
    }
}

/// Appends `text` percent-encoded but for RFC 3986's unreserved characters, so a name with
/// `/`, `?`, `:` or spaces stays one path segment (or one query value): Azure's deployment,
/// Gemini's model, Bedrock's model id or ARN.
pub(crate) fn push_path_segment(path: &mut String, text: &str) {
    use std::fmt::Write as _;
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(path, "%{byte:02X}");
        }
    }
}

/// Refuses an assistant tool call that is not a `function` call (`provider` names the
/// models in the message: "Anthropic").
pub(crate) fn check_tool_call_type(
    call: &crate::openai_types::ToolCall<'_>,
    message: usize,
    index: usize,
    provider: &str,
) -> Result<(), GatewayError> {
    match &call.kind {
        Some(kind) if kind.as_str() != "function" => Err(GatewayError::invalid(
            &format!("messages[{message}].tool_calls[{index}].type"),
            format!(
                "Tool calls of type '{}' are not supported for {provider} models.",
                kind.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

/// An assistant tool call's arguments for providers that take them as a JSON object: the
/// call checked ([`check_tool_call_type`]) and its arguments, a JSON object encoded as a
/// string, borrowed as they are; `None` when they are empty (no arguments).
pub(crate) fn tool_call_arguments<'r>(
    call: &'r crate::openai_types::ToolCall<'_>,
    message: usize,
    index: usize,
    provider: &str,
) -> Result<Option<&'r serde_json::value::RawValue>, GatewayError> {
    check_tool_call_type(call, message, index, provider)?;
    let arguments = call.function.arguments.as_deref().unwrap_or_default();
    if arguments.trim().is_empty() {
        return Ok(None);
    }
    let not_an_object = || {
        let param = format!("messages[{message}].tool_calls[{index}].function.arguments");
        GatewayError::invalid(
            &param,
            format!("Invalid '{param}': the arguments must be a JSON object encoded as a string."),
        )
    };
    let raw: &serde_json::value::RawValue =
        serde_json::from_str(arguments).map_err(|_| not_an_object())?;
    if !raw.get().starts_with('{') {
        return Err(not_an_object());
    }
    Ok(Some(raw))
}

/// `json` (valid JSON) without whitespace between tokens (tool-call arguments the way
/// OpenAI writes them); borrowed when it has none.
pub(crate) fn compact_json(json: &str) -> std::borrow::Cow<'_, str> {
    let (mut in_string, mut escaped) = (false, false);
    let is_insignificant =
        |byte: u8, in_string: bool| !in_string && matches!(byte, b' ' | b'\n' | b'\r' | b'\t');
    // Fast path: most arguments (every streamed one) are already compact.
    let first_space = json.bytes().position(|byte| {
        let skip = is_insignificant(byte, in_string);
        if escaped {
            escaped = false;
        } else if in_string && byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            in_string = !in_string;
        }
        skip
    });
    let Some(first_space) = first_space else {
        return std::borrow::Cow::Borrowed(json);
    };
    let mut out = String::with_capacity(json.len());
    out.push_str(json.get(..first_space).unwrap_or_default());
    let rest = json.get(first_space..).unwrap_or_default();
    for character in rest.chars() {
        let byte = u8::try_from(character).unwrap_or(0x80);
        if is_insignificant(byte, in_string) {
            continue;
        }
        if escaped {
            escaped = false;
        } else if in_string && character == '\\' {
            escaped = true;
        } else if character == '"' {
            in_string = !in_string;
        }
        out.push(character);
    }
    std::borrow::Cow::Owned(out)
}

/// Vertex AI's path of a publisher model's method:
/// `/v1/projects/<project>/locations/<location>/publishers/<publisher>/models/<model>:<method>`
/// (each name one path segment), joined with the deployment's base
/// (`https://<location>-aiplatform.googleapis.com` unless it sets one).
pub(crate) fn vertex_model_path(
    vertex: &crate::proto::VertexSettings,
    publisher: &str,
    model: &str,
    method: &str,
) -> String {
    let mut path = String::with_capacity(
        64 + vertex.project.len() + vertex.location.len() + model.len() + method.len(),
    );
    path.push_str("/v1/projects/");
    push_path_segment(&mut path, &vertex.project);
    path.push_str("/locations/");
    push_path_segment(&mut path, &vertex.location);
    path.push_str("/publishers/");
    path.push_str(publisher);
    path.push_str("/models/");
    push_path_segment(&mut path, model);
    path.push(':');
    path.push_str(method);
    path
}

/// How the glue should treat the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// Hold headers, buffer the whole body, then call [`ResponseHandler::on_complete_body`].
    Buffer,
    /// Pass each chunk through [`ResponseHandler::on_stream_chunk`] as it arrives.
    Stream,
}

/// Result of translating a buffered body.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedBody {
    /// A status to send instead of the provider's (the gateway could not read its answer).
    pub status: Option<u16>,
    /// The body to send instead; `None` keeps the provider's.
    pub body: Option<Vec<u8>>,
}

/// Drives the response direction of one request: picks buffering or streaming, translates,
/// and keeps the usage the provider reported.
#[derive(Debug)]
pub struct ResponseHandler {
    translator: ResponseTranslator,
    client_stream: bool,
    status: u16,
    mode: ResponseMode,
    usage: Usage,
    /// A stream that failed stays failed: later chunks are dropped, not half-translated.
    stream_failed: bool,
}

impl ResponseHandler {
    /// A handler for a request the client sent with `stream = client_stream`.
    pub fn new(translator: ResponseTranslator, client_stream: bool) -> Self {
        ResponseHandler {
            translator,
            client_stream,
            status: 0,
            mode: ResponseMode::Buffer,
            usage: Usage::default(),
            stream_failed: false,
        }
    }

    /// Called with the provider's status and content type; says how to read the body.
    pub fn on_headers(&mut self, status: u16, content_type: Option<&str>) -> ResponseMode {
        self.status = status;
        let framing = self.translator.inner_ref().framing();
        let is_stream = content_type.is_some_and(|value| framing.matches(value));
        self.mode = if (200..300).contains(&status) && self.client_stream && is_stream {
            ResponseMode::Stream
        } else {
            ResponseMode::Buffer
        };
        self.mode
    }

    /// Whether the client's `content-type` must be replaced by `text/event-stream`: a stream
    /// whose provider frames it otherwise (Bedrock's AWS event stream, NDJSON) reaches the
    /// client as server-sent events.
    pub fn streams_in_another_framing(&self) -> bool {
        self.mode == ResponseMode::Stream && self.translator.inner_ref().framing() != Framing::Sse
    }

    /// The mode chosen by [`Self::on_headers`].
    pub fn mode(&self) -> ResponseMode {
        self.mode
    }

    /// The provider's status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the provider's `content-length` may no longer match what the client gets.
    pub fn drops_content_length(&self) -> bool {
        match self.mode {
            ResponseMode::Stream => true,
            ResponseMode::Buffer => {
                !(200..300).contains(&self.status) || self.translator.inner_ref().rewrites_body()
            }
        }
    }

    /// Translates a complete buffered body.
    pub fn on_complete_body(&mut self, body: &[u8]) -> CompletedBody {
        if !(200..300).contains(&self.status) {
            let translator = self.translator.inner_ref();
            let translated = translator.translate_error(self.status, body);
            let replaced = translator
                .error_status(self.status, body)
                .filter(|status| *status >= 400);
            if let Some(status) = replaced {
                // The usage record and the stats say what the client got.
                self.status = status;
            }
            return CompletedBody {
                status: replaced,
                body: Some(translated),
            };
        }
        match self
            .translator
            .inner()
            .translate_body(body, &mut self.usage)
        {
            Ok(body) => CompletedBody { status: None, body },
            Err(error) => CompletedBody {
                status: Some(error.status()),
                body: Some(error.to_json()),
            },
        }
    }

    /// Translates one stream chunk. The output is either the chunk unchanged or `out`.
    pub fn on_stream_chunk(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
    ) -> ChunkOutput {
        if self.stream_failed {
            return ChunkOutput::Replaced;
        }
        match self
            .translator
            .inner()
            .translate_stream(chunk, end_of_stream, out, &mut self.usage)
        {
            Ok(output) => output,
            Err(error) => {
                self.stream_failed = true;
                crate::sse::write_data_event(out, &error.to_json());
                ChunkOutput::Replaced
            }
        }
    }

    /// Usage reported so far (complete once the body has ended).
    pub fn usage(&self) -> Usage {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framings_match_their_media_type_only() {
        assert!(Framing::Sse.matches("text/event-stream"));
        assert!(Framing::Sse.matches("Text/Event-Stream; charset=utf-8"));
        assert!(!Framing::Sse.matches("application/json"));
        assert!(!Framing::Sse.matches("text/event-streamx"));
        assert!(Framing::Ndjson.matches("application/x-ndjson"));
        assert!(!Framing::Ndjson.matches("text/event-stream"));
        assert!(Framing::AwsEventStream.matches("application/vnd.amazon.eventstream"));
    }

    #[test]
    fn openai_errors_pass_and_others_are_wrapped() {
        let openai = br#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(openai_shaped_error(429, openai), openai.to_vec());
        // Without a code, the one its status names.
        let no_code: serde_json::Value = serde_json::from_slice(&openai_shaped_error(
            429,
            br#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":null}}"#,
        ))
        .unwrap();
        assert_eq!(no_code["error"]["code"], "rate_limit_exceeded");

        let ollama: serde_json::Value = serde_json::from_slice(&openai_shaped_error(
            404,
            br#"{"error":"model 'x' not found"}"#,
        ))
        .unwrap();
        assert_eq!(ollama["error"]["message"], "model 'x' not found");
        assert_eq!(ollama["error"]["type"], "invalid_request_error");

        let text: serde_json::Value =
            serde_json::from_slice(&openai_shaped_error(500, b"upstream exploded")).unwrap();
        assert!(text["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream exploded"));
        assert_eq!(text["error"]["type"], "api_error");
    }

    /// Found by the `anthropic_body` fuzz target: a body shaped like an OpenAI error passed
    /// through with invalid UTF-8 in a member the check skips, and the client got invalid
    /// JSON.
    #[test]
    fn an_error_body_that_is_not_json_throughout_is_wrapped() {
        // OpenAI-shaped, but a member the shape check does not read holds a lone surrogate
        // escape: passing it through would give the client a body that is not JSON.
        let body = br#"{"error":{"message":"bad","type":"x"},"request_id":"req_\udc00"}"#;
        let wrapped = openai_shaped_error(400, body);
        let value: serde_json::Value = serde_json::from_slice(&wrapped).unwrap();
        assert!(value["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The upstream provider returned HTTP 400: "));
    }

    #[test]
    fn an_error_body_that_is_not_utf8_is_wrapped() {
        let body = b"{\"type\":\"\xfcrror\",\"error\":{\"message\":\"Overloaded\"}}";
        let wrapped = openai_shaped_error(529, body);
        let client: serde_json::Value = serde_json::from_slice(&wrapped).unwrap();
        assert_eq!(
            client["error"]["message"],
            "The upstream provider returned HTTP 529: {\"type\":\"\u{fffd}rror\",\"error\":{\"message\":\"Overloaded\"}}"
        );
    }
}
