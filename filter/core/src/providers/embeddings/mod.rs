//! `POST /v1/embeddings`: OpenAI's embeddings request, planned like a chat request (same key,
//! model access, budgets and rate limits; see [`crate::exchange`]) and sent to the
//! deployment's provider.
//!
//! - The OpenAI wire (OpenAI, Azure, every OpenAI-compatible preset) gets the body as the
//!   client sent it but for `model`, and its answer goes back untouched; its `usage` is read.
//! - Gemini (AI Studio's `batchEmbedContents`), Cohere (`/v2/embed`) and Ollama
//!   (`/api/embed`) get their own request, and their answer becomes OpenAI's
//!   `{"object":"list","data":[{"object":"embedding","index","embedding"}],"model","usage"}`;
//!   with `encoding_format: "base64"` the gateway encodes each vector as OpenAI does:
//!   base64 of its little-endian `f32`s.
//! - Anthropic has no embeddings API; Bedrock and Vertex AI embeddings are not translated
//!   yet: all three are refused with a 400 that says so.
//!
//! Usage: prompt tokens as the provider counts them, completion tokens 0 (an embedding
//! generates none), priced at the deployment's input price. A provider that reports no count
//! (Gemini's batch embed) leaves the usage unreported, not 0.

mod wire;

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::Caller;
use crate::gateway::{join_url, sign_for_provider};
use crate::providers::{
    openai_shaped_error, ChunkOutput, ProviderResponse, ResponseHandler, ResponseTranslator,
    TranslateContext, UpstreamRequest,
};
use crate::request::{raw_value_or_null, request_routing, RequestRouting, RoutingMembers};
use crate::snapshot::{Deployment, Wire};
use crate::{GatewayError, RequestPlan, State, Usage};

/// What the client asked to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingInput<'a> {
    /// A string or a list of strings (each non-empty).
    Texts(Vec<Cow<'a, str>>),
    /// A list of token ids, or a list of token-id lists (each non-empty).
    Tokens(Vec<Vec<u32>>),
}

impl EmbeddingInput<'_> {
    /// How many embeddings the answer holds.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Texts(texts) => texts.len(),
            EmbeddingInput::Tokens(lists) => lists.len(),
        }
    }

    /// Whether there is nothing to embed (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the client wants each vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodingFormat {
    /// A JSON array of numbers (OpenAI's default).
    #[default]
    Float,
    /// Base64 of the vector's little-endian `f32`s (what OpenAI's SDKs ask for by default).
    Base64,
}

/// An OpenAI embeddings request, validated.
#[derive(Debug)]
pub struct EmbeddingsRequest<'a> {
    /// The public model name.
    pub model: Cow<'a, str>,
    /// Where the model's JSON string sits in the body (quotes included).
    pub model_span: Range<usize>,
    /// What to embed.
    pub input: EmbeddingInput<'a>,
    /// `encoding_format`.
    pub encoding_format: EncodingFormat,
    /// `dimensions`: the size of each vector, when the client chose it.
    pub dimensions: Option<u32>,
    /// `user`: the end user (budgets and spend are kept per end user too).
    pub end_user: Option<Cow<'a, str>>,
    /// `input_type`, Cohere's (LiteLLM passes it on): `None` sends `search_document`.
    pub input_type: Option<Cow<'a, str>>,
    /// LiteLLM's per-request routing parameters (`fallbacks`, `num_retries`, ...): the
    /// gateway's, never sent to a provider.
    pub routing: RequestRouting,
}

impl EmbeddingsRequest<'_> {
    /// Tokens the request is estimated to use, for tokens-per-minute limits before the
    /// provider counts them: token-id input counts exactly, text about 4 bytes a token.
    pub fn estimated_tokens(&self) -> u64 {
        let count = match &self.input {
            EmbeddingInput::Texts(texts) => texts
                .iter()
                .map(|text| text.len().div_ceil(4))
                .sum::<usize>(),
            EmbeddingInput::Tokens(lists) => lists.iter().map(Vec::len).sum(),
        };
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}

#[derive(Deserialize)]
struct EmbeddingsView<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    encoding_format: Option<&'a RawValue>,
    #[serde(borrow)]
    dimensions: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    input_type: Option<&'a RawValue>,
    /// LiteLLM's routing parameters, `null` included (removed before a provider sees it).
    #[serde(borrow, default, deserialize_with = "raw_value_or_null")]
    fallbacks: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_value_or_null")]
    context_window_fallbacks: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_value_or_null")]
    content_policy_fallbacks: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_value_or_null")]
    num_retries: Option<&'a RawValue>,
}

fn invalid_input(message: &str) -> GatewayError {
    GatewayError::invalid("input", message)
}

const INPUT_KINDS: &str = "'input' must be a string, an array of strings, an array of token ids (integers) or an array of arrays of token ids.";

/// Validates `body` as an OpenAI embeddings request.
pub fn parse_embeddings_request(body: &[u8]) -> Result<EmbeddingsRequest<'_>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(GatewayError::invalid(
            "body",
            "The request body is empty; send a JSON embeddings request.",
        ));
    }
    if body.trim_ascii_start().first() != Some(&b'{') {
        // serde would read a struct from an array of its fields.
        return Err(GatewayError::invalid(
            "body",
            "The request body must be a JSON object.",
        ));
    }
    let view: EmbeddingsView<'_> = serde_json::from_slice(body)
        .map_err(|error| GatewayError::InvalidJson(error.to_string()))?;

    let model_raw = view
        .model
        .ok_or_else(|| GatewayError::invalid("model", "you must provide a model parameter"))?;
    let model: Cow<'_, str> = serde_json::from_str(model_raw.get())
        .map_err(|_| GatewayError::invalid("model", "model must be a string"))?;
    if model.is_empty() {
        return Err(GatewayError::invalid("model", "model must not be empty"));
    }

    let input = parse_input(
        view.input
            .ok_or_else(|| invalid_input("Missing required parameter: 'input'."))?,
    )?;

    let encoding_format = match view.encoding_format {
        None => EncodingFormat::Float,
        Some(raw) => match serde_json::from_str::<Cow<'_, str>>(raw.get()).as_deref() {
            Ok("float") => EncodingFormat::Float,
            Ok("base64") => EncodingFormat::Base64,
            _ => {
                return Err(GatewayError::invalid(
                    "encoding_format",
                    format!(
                        "Invalid value for 'encoding_format': {}. Supported values are: 'float' and 'base64'.",
                        raw.get()
                    ),
                ))
            }
        },
    };

    let dimensions = match view.dimensions {
        None => None,
        Some(raw) => match serde_json::from_str::<u32>(raw.get()) {
            Ok(dimensions) if dimensions > 0 => Some(dimensions),
            _ => {
                return Err(GatewayError::invalid(
                    "dimensions",
                    format!(
                        "Invalid value for 'dimensions': {}. It must be a positive integer.",
                        raw.get()
                    ),
                ))
            }
        },
    };

    let end_user = match view.user {
        None => None,
        Some(raw) => Some(
            serde_json::from_str::<Cow<'_, str>>(raw.get())
                .map_err(|_| GatewayError::invalid("user", "user must be a string"))?,
        ),
    }
    .filter(|user| !user.is_empty());

    let input_type = match view.input_type {
        None => None,
        Some(raw) => Some(
            serde_json::from_str::<Cow<'_, str>>(raw.get())
                .map_err(|_| GatewayError::invalid("input_type", "input_type must be a string"))?,
        ),
    };

    let routing = request_routing(
        body,
        &model,
        RoutingMembers {
            fallbacks: view.fallbacks,
            context_window_fallbacks: view.context_window_fallbacks,
            content_policy_fallbacks: view.content_policy_fallbacks,
            num_retries: view.num_retries,
        },
    )?;

    let start = (model_raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    Ok(EmbeddingsRequest {
        model,
        model_span: start..start + model_raw.get().len(),
        input,
        encoding_format,
        dimensions,
        end_user,
        input_type,
        routing,
    })
}

/// `input`: a string, or an array of strings, of token ids or of token-id arrays.
fn parse_input(raw: &RawValue) -> Result<EmbeddingInput<'_>, GatewayError> {
    let text = raw.get();
    if text.starts_with('"') {
        let single: Cow<'_, str> =
            serde_json::from_str(text).map_err(|_| invalid_input(INPUT_KINDS))?;
        if single.is_empty() {
            return Err(invalid_input("'input' must not be an empty string."));
        }
        return Ok(EmbeddingInput::Texts(vec![single]));
    }
    if !text.starts_with('[') {
        return Err(invalid_input(INPUT_KINDS));
    }
    let items: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|_| invalid_input(INPUT_KINDS))?;
    let Some(first) = items.first() else {
        return Err(invalid_input("'input' must not be an empty array."));
    };
    match first.get().as_bytes().first() {
        Some(b'"') => {
            let mut texts = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let text: Cow<'_, str> =
                    serde_json::from_str(item.get()).map_err(|_| invalid_input(INPUT_KINDS))?;
                if text.is_empty() {
                    return Err(invalid_input(&format!(
                        "'input[{index}]' must not be an empty string."
                    )));
                }
                texts.push(text);
            }
            Ok(EmbeddingInput::Texts(texts))
        }
        Some(b'[') => {
            let mut lists = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let tokens: Vec<u32> =
                    serde_json::from_str(item.get()).map_err(|_| invalid_input(INPUT_KINDS))?;
                if tokens.is_empty() {
                    return Err(invalid_input(&format!(
                        "'input[{index}]' must not be an empty array."
                    )));
                }
                lists.push(tokens);
            }
            Ok(EmbeddingInput::Tokens(lists))
        }
        _ => {
            let tokens: Vec<u32> =
                serde_json::from_str(text).map_err(|_| invalid_input(INPUT_KINDS))?;
            Ok(EmbeddingInput::Tokens(vec![tokens]))
        }
    }
}

/// Validates, resolves and translates an embeddings request for `caller`; also returns
/// the tokens it is estimated to use (for tokens-per-minute limits).
pub fn plan_embeddings_request_for(
    state: &State,
    caller: &Caller,
    body: &[u8],
    context: &TranslateContext,
) -> Result<(RequestPlan, u64), GatewayError> {
    plan_embeddings_request_with(state, caller, body, context, |group| group.pick().cloned())
}

/// [`plan_embeddings_request_for`], with the deployment of the model group chosen by
/// `pick` (the router's strategy).
pub fn plan_embeddings_request_with(
    state: &State,
    caller: &Caller,
    body: &[u8],
    context: &TranslateContext,
    pick: impl FnOnce(&crate::snapshot::ModelGroup) -> Option<std::sync::Arc<Deployment>>,
) -> Result<(RequestPlan, u64), GatewayError> {
    let request = parse_embeddings_request(body)?;
    caller.check_model(&request.model)?;
    let deployment = state
        .model(&request.model)
        .and_then(pick)
        .ok_or_else(|| GatewayError::ModelNotFound(request.model.to_string()))?;
    let plan = plan_embeddings_request_to(state, deployment, &request, body, context)?;
    Ok((plan, request.estimated_tokens()))
}

/// Translates a parsed embeddings request (`request` of `body`) for `deployment`, which
/// may belong to another model group than the one it names (a fallback).
pub fn plan_embeddings_request_to(
    state: &State,
    deployment: std::sync::Arc<Deployment>,
    request: &EmbeddingsRequest<'_>,
    body: &[u8],
    context: &TranslateContext,
) -> Result<RequestPlan, GatewayError> {
    let (upstream, response) = build_request(request, body, &deployment, context)?;
    let target = &deployment.target;
    let path = join_url(&target.base_path, &target.base_query, &upstream.path);
    let mut headers = upstream.headers;
    sign_for_provider(
        state,
        &deployment,
        &target.authority,
        &path,
        &upstream.body,
        context,
        &mut headers,
    )?;
    Ok(RequestPlan {
        route_value: target.scheme.route_value(),
        authority: target.authority.clone(),
        path,
        headers,
        body_length: upstream.body.len().to_string(),
        body: upstream.body,
        keeps_body: false,
        stream: false,
        response: ResponseHandler::new(ResponseTranslator::Embeddings(response), false),
        deployment,
        end_user: request
            .end_user
            .as_deref()
            .map(str::to_string)
            .unwrap_or_default(),
        tags: Vec::new(),
    })
}

/// Translates the request for `deployment` and prepares the matching response side.
pub fn build_request(
    request: &EmbeddingsRequest<'_>,
    body: &[u8],
    deployment: &Deployment,
    context: &TranslateContext,
) -> Result<(UpstreamRequest, EmbeddingsResponse), GatewayError> {
    let model = &deployment.upstream_model;
    let (upstream, kind, errors) = match deployment.provider {
        Wire::OpenAi => (
            wire::openai_request(request, body, deployment),
            EmbeddingWire::OpenAi,
            None,
        ),
        Wire::Gemini if deployment.vertex().is_some() => {
            let vertex = deployment.vertex().ok_or(GatewayError::Internal)?;
            (
                wire::vertex_request(request, deployment, vertex)?,
                EmbeddingWire::Vertex,
                Some(ResponseTranslator::Gemini(
                    crate::providers::gemini::GeminiResponse::new(context, false, None, model),
                )),
            )
        }
        Wire::Gemini => (
            wire::gemini_request(request, deployment)?,
            EmbeddingWire::Gemini,
            Some(ResponseTranslator::Gemini(
                crate::providers::gemini::GeminiResponse::new(context, false, None, model),
            )),
        ),
        Wire::Cohere => (
            wire::cohere_request(request, deployment)?,
            EmbeddingWire::Cohere,
            Some(ResponseTranslator::Cohere(
                crate::providers::cohere::CohereResponse::new(context, false, None, model),
            )),
        ),
        Wire::Ollama => (
            wire::ollama_request(request, deployment)?,
            EmbeddingWire::Ollama,
            Some(ResponseTranslator::Ollama(
                crate::providers::ollama::OllamaResponse::new(context, false, None, model),
            )),
        ),
        Wire::Bedrock => {
            let embedder = wire::BedrockEmbedder::of(model).ok_or_else(|| {
                unsupported(
                    deployment,
                    "on Bedrock the gateway embeds with Amazon Titan (amazon.titan-embed-*) and Cohere (cohere.embed-*) models",
                )
            })?;
            (
                wire::bedrock_request(request, deployment, embedder)?,
                EmbeddingWire::Bedrock(embedder),
                Some(ResponseTranslator::Bedrock(
                    crate::providers::bedrock::BedrockResponse::new(
                        context, body, false, None, model,
                    ),
                )),
            )
        }
        Wire::Anthropic => {
            return Err(unsupported(
                deployment,
                "Anthropic has no embeddings API; use an embedding model of another provider",
            ))
        }
    };
    let response = EmbeddingsResponse {
        wire: kind,
        encoding_format: request.encoding_format,
        upstream_model: model.clone(),
        inputs: request.input.len(),
        errors: errors.map(Box::new),
    };
    Ok((upstream, response))
}

/// The 400 for a model whose provider the gateway cannot ask for embeddings.
fn unsupported(deployment: &Deployment, why: &str) -> GatewayError {
    GatewayError::invalid(
        "model",
        format!(
            "Model `{}` (provider {}) cannot serve embeddings: {why}.",
            deployment.model_name, deployment.provider_name
        ),
    )
}

/// Which provider answer an [`EmbeddingsResponse`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmbeddingWire {
    OpenAi,
    Gemini,
    Vertex,
    Cohere,
    Ollama,
    Bedrock(wire::BedrockEmbedder),
}

/// The response side of an embeddings request.
#[derive(Debug)]
pub struct EmbeddingsResponse {
    wire: EmbeddingWire,
    encoding_format: EncodingFormat,
    upstream_model: String,
    /// How many vectors the answer must hold.
    inputs: usize,
    /// The chat translator of the same provider, whose error mapping applies here too
    /// (`None`: the OpenAI wire's).
    errors: Option<Box<ResponseTranslator>>,
}

impl EmbeddingsResponse {
    /// The response side of `request` relayed through the attempts route: the answer that
    /// comes back is already OpenAI's (the attempt translated it), so it is only read for
    /// usage.
    pub fn relayed(request: &EmbeddingsRequest<'_>) -> Self {
        EmbeddingsResponse {
            wire: EmbeddingWire::OpenAi,
            encoding_format: request.encoding_format,
            upstream_model: String::new(),
            inputs: request.input.len(),
            errors: None,
        }
    }
}

impl ProviderResponse for EmbeddingsResponse {
    fn rewrites_body(&self) -> bool {
        self.wire != EmbeddingWire::OpenAi
    }

    fn translate_body(
        &mut self,
        body: &[u8],
        usage: &mut Usage,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        let answer = match self.wire {
            EmbeddingWire::OpenAi => {
                *usage = wire::openai_usage(body);
                return Ok(None);
            }
            EmbeddingWire::Gemini => wire::gemini_answer(body)?,
            EmbeddingWire::Cohere => wire::cohere_answer(body)?,
            EmbeddingWire::Ollama => wire::ollama_answer(body)?,
            EmbeddingWire::Vertex => wire::vertex_answer(body)?,
            EmbeddingWire::Bedrock(embedder) => wire::bedrock_answer(body, embedder)?,
        };
        if answer.vectors.len() != self.inputs {
            return Err(GatewayError::BadUpstreamResponse(format!(
                "{} embeddings for {} inputs",
                answer.vectors.len(),
                self.inputs
            )));
        }
        *usage = Usage {
            prompt_tokens: answer.prompt_tokens,
            completion_tokens: answer.prompt_tokens.map(|_| 0),
            ..Usage::default()
        };
        write_openai_answer(
            &answer.vectors,
            self.encoding_format,
            &self.upstream_model,
            answer.prompt_tokens,
        )
        .map(Some)
    }

    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8> {
        match &self.errors {
            Some(errors) => errors.inner_ref().translate_error(status, body),
            None => openai_shaped_error(status, body),
        }
    }

    fn error_status(&self, status: u16, body: &[u8]) -> Option<u16> {
        self.errors
            .as_ref()
            .and_then(|errors| errors.inner_ref().error_status(status, body))
    }

    fn translate_stream(
        &mut self,
        _chunk: &[u8],
        _end_of_stream: bool,
        _out: &mut Vec<u8>,
        _usage: &mut Usage,
    ) -> Result<ChunkOutput, GatewayError> {
        // Embeddings are never streamed: the client cannot ask for a stream, so the answer is
        // always buffered (`ResponseHandler::on_headers`).
        Ok(ChunkOutput::Unchanged)
    }
}

/// A provider's answer, read: one vector per input (its JSON array as sent, and its values)
/// and the prompt tokens it counted.
pub(crate) struct ProviderAnswer<'a> {
    pub(crate) vectors: Vec<Vector<'a>>,
    pub(crate) prompt_tokens: Option<u64>,
}

/// One embedding as the provider sent it.
pub(crate) struct Vector<'a> {
    /// The JSON array, byte for byte (float output copies it: no digit changes).
    pub(crate) raw: &'a RawValue,
    /// Its values (base64 output encodes them as `f32`).
    pub(crate) values: Vec<f64>,
}

impl<'a> Vector<'a> {
    /// Reads a JSON array of numbers.
    pub(crate) fn read(raw: &'a RawValue) -> Result<Self, GatewayError> {
        let values: Vec<f64> = serde_json::from_str(raw.get()).map_err(|error| {
            GatewayError::BadUpstreamResponse(format!(
                "an embedding is not an array of numbers: {error}"
            ))
        })?;
        Ok(Vector { raw, values })
    }
}

/// OpenAI's answer: `{"object":"list","data":[…],"model","usage"}` (`usage` is `null` when
/// the provider counted nothing).
fn write_openai_answer(
    vectors: &[Vector<'_>],
    encoding_format: EncodingFormat,
    model: &str,
    prompt_tokens: Option<u64>,
) -> Result<Vec<u8>, GatewayError> {
    let size: usize = vectors
        .iter()
        .map(|vector| vector.raw.get().len().max(vector.values.len() * 6) + 48)
        .sum();
    let mut out = Vec::with_capacity(size + 128);
    out.extend_from_slice(br#"{"object":"list","data":["#);
    for (index, vector) in vectors.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"object":"embedding","index":"#);
        out.extend_from_slice(index.to_string().as_bytes());
        out.extend_from_slice(br#","embedding":"#);
        match encoding_format {
            EncodingFormat::Float => out.extend_from_slice(vector.raw.get().as_bytes()),
            EncodingFormat::Base64 => {
                out.push(b'"');
                let bytes: Vec<u8> = vector
                    .values
                    .iter()
                    // OpenAI's vectors are f32: the narrowing is the format's.
                    .flat_map(|value| (*value as f32).to_le_bytes())
                    .collect();
                base64_encode(&bytes, &mut out);
                out.push(b'"');
            }
        }
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"model":"#);
    serde_json::to_writer(&mut out, model)
        .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))?;
    out.extend_from_slice(br#","usage":"#);
    match prompt_tokens {
        Some(tokens) => {
            out.extend_from_slice(br#"{"prompt_tokens":"#);
            out.extend_from_slice(tokens.to_string().as_bytes());
            out.extend_from_slice(br#","total_tokens":"#);
            out.extend_from_slice(tokens.to_string().as_bytes());
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    Ok(out)
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648, with padding), appended to `out`.
pub fn base64_encode(bytes: &[u8], out: &mut Vec<u8>) {
    let symbol = |index: u32| {
        // `index & 63` is below 64: the fallback is never taken.
        BASE64_ALPHABET
            .get((index & 63) as usize)
            .copied()
            .unwrap_or(b'A')
    };
    for chunk in bytes.chunks(3) {
        let b0 = u32::from(chunk.first().copied().unwrap_or(0));
        let b1 = u32::from(chunk.get(1).copied().unwrap_or(0));
        let b2 = u32::from(chunk.get(2).copied().unwrap_or(0));
        let triple = (b0 << 16) | (b1 << 8) | b2;
        out.push(symbol(triple >> 18));
        out.push(symbol(triple >> 12));
        out.push(if chunk.len() > 1 {
            symbol(triple >> 6)
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            symbol(triple)
        } else {
            b'='
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        base64_encode(bytes, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), encoded);
        }
        // 1.0f32 little-endian is 00 00 80 3f.
        assert_eq!(encode(&1.0f32.to_le_bytes()), "AACAPw==");
    }

    #[test]
    fn classifies_the_embeddings_paths() {
        use crate::gateway::{classify, Endpoint};
        assert_eq!(classify("POST", "/v1/embeddings"), Endpoint::Embeddings);
        assert_eq!(classify("POST", "/embeddings/"), Endpoint::Embeddings);
        assert_eq!(classify("GET", "/v1/embeddings"), Endpoint::WrongMethod);
    }

    #[test]
    fn parses_every_input_shape() {
        fn parse(body: &str) -> Result<EmbeddingInput<'_>, GatewayError> {
            parse_embeddings_request(body.as_bytes()).map(|request| request.input)
        }
        assert_eq!(
            parse(r#"{"model":"m","input":"hi"}"#).unwrap(),
            EmbeddingInput::Texts(vec!["hi".into()])
        );
        assert_eq!(
            parse(r#"{"model":"m","input":["a","b"]}"#).unwrap(),
            EmbeddingInput::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse(r#"{"model":"m","input":[1,2,3]}"#).unwrap(),
            EmbeddingInput::Tokens(vec![vec![1, 2, 3]])
        );
        assert_eq!(
            parse(r#"{"model":"m","input":[[1],[2,3]]}"#).unwrap(),
            EmbeddingInput::Tokens(vec![vec![1], vec![2, 3]])
        );
        for (body, param, message) in [
            (r#"{"model":"m"}"#, "input", "Missing required parameter: 'input'."),
            (r#"{"model":"m","input":""}"#, "input", "'input' must not be an empty string."),
            (r#"{"model":"m","input":[]}"#, "input", "'input' must not be an empty array."),
            (r#"{"model":"m","input":["a",""]}"#, "input", "'input[1]' must not be an empty string."),
            (r#"{"model":"m","input":[[1],[]]}"#, "input", "'input[1]' must not be an empty array."),
            (r#"{"model":"m","input":["a",1]}"#, "input", INPUT_KINDS),
            (r#"{"model":"m","input":[-1]}"#, "input", INPUT_KINDS),
            (r#"{"model":"m","input":{"a":1}}"#, "input", INPUT_KINDS),
            (r#"{"input":"a"}"#, "model", "you must provide a model parameter"),
            (r#"{"model":"m","input":"a","dimensions":0}"#, "dimensions", "Invalid value for 'dimensions': 0. It must be a positive integer."),
            (r#"{"model":"m","input":"a","dimensions":1.5}"#, "dimensions", "Invalid value for 'dimensions': 1.5. It must be a positive integer."),
            (r#"{"model":"m","input":"a","encoding_format":"int8"}"#, "encoding_format", "Invalid value for 'encoding_format': \"int8\". Supported values are: 'float' and 'base64'."),
            (r#"{"model":"m","input":"a","user":5}"#, "user", "user must be a string"),
        ] {
            let error = parse_embeddings_request(body.as_bytes()).unwrap_err();
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(
                error,
                GatewayError::invalid(param, message),
                "{body}"
            );
        }
        assert!(matches!(
            parse_embeddings_request(b"[1]").unwrap_err(),
            GatewayError::InvalidRequest { .. }
        ));
        assert!(matches!(
            parse_embeddings_request(b"{\"model\":").unwrap_err(),
            GatewayError::InvalidJson(_)
        ));
    }

    #[test]
    fn estimates_tokens_from_the_input() {
        let estimate = |body: &str| {
            parse_embeddings_request(body.as_bytes())
                .unwrap()
                .estimated_tokens()
        };
        assert_eq!(estimate(r#"{"model":"m","input":"hello world"}"#), 3);
        assert_eq!(estimate(r#"{"model":"m","input":["abcd","e"]}"#), 2);
        assert_eq!(estimate(r#"{"model":"m","input":[[1,2],[3,4,5]]}"#), 5);
    }

    #[test]
    fn remembers_format_dimensions_user_and_the_model_span() {
        let body =
            br#"{"model":"emb","input":"a","encoding_format":"base64","dimensions":8,"user":"u1"}"#;
        let request = parse_embeddings_request(body).unwrap();
        assert_eq!(request.encoding_format, EncodingFormat::Base64);
        assert_eq!(request.dimensions, Some(8));
        assert_eq!(request.end_user.as_deref(), Some("u1"));
        assert_eq!(&body[request.model_span.clone()], br#""emb""#);
    }
}
