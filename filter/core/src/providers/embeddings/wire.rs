//! Each provider's embeddings request and answer.
//!
//! - OpenAI (and Azure, and the OpenAI-compatible presets): `POST <base>/embeddings`, Azure
//!   `/openai/deployments/<deployment>/embeddings?api-version=<v>`; the client's body with
//!   `model` rewritten, the answer as it comes; `usage.prompt_tokens` read.
//! - Gemini (AI Studio): `POST /v1beta/models/<model>:batchEmbedContents` with
//!   `{"requests":[{"model":"models/<model>","content":{"parts":[{"text"}]},
//!   "outputDimensionality"}]}`; answer `{"embeddings":[{"values":[…]}]}`, no token count.
//! - Cohere: `POST /v2/embed` with `{"model","texts","input_type","embedding_types":["float"],
//!   "output_dimension"}`; answer `embeddings.float` and `meta.billed_units.input_tokens`.
//! - Ollama: `POST /api/embed` with `{"model","input","dimensions"}`; answer `embeddings`
//!   and `prompt_eval_count`.
//! - Vertex AI: `POST /v1/projects/<p>/locations/<l>/publishers/google/models/<m>:predict`
//!   with `{"instances":[{"content"}],"parameters":{"outputDimensionality"}}`; answer
//!   `predictions[].embeddings.{values, statistics.token_count}`.
//! - Bedrock (`POST /model/<id>/invoke`, SigV4): Titan `{"inputText","dimensions"}` → one
//!   `embedding` and `inputTextTokenCount`; Cohere `{"texts","input_type"}` → `embeddings`
//!   (no token count).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tollgate_catalogue::{Auth, ChatPath};

use super::{EmbeddingInput, EmbeddingsRequest, ProviderAnswer, Vector};
use crate::providers::{gemini, push_path_segment, UpstreamRequest};
use crate::request::{apply_edits, Edit};
use crate::snapshot::{Deployment, Wire};
use crate::{GatewayError, Usage};

/// Cohere's `input_type` when the client gives none: stored documents, as LiteLLM sends.
pub const COHERE_DEFAULT_INPUT_TYPE: &str = "search_document";

fn json_body<T: Serialize>(value: &T) -> Result<Vec<u8>, GatewayError> {
    serde_json::to_vec(value).map_err(|error| GatewayError::invalid("body", error.to_string()))
}

fn bearer(deployment: &Deployment, headers: &mut Vec<(&'static str, String)>) {
    if !deployment.api_key.is_empty() {
        headers.push(("authorization", format!("Bearer {}", deployment.api_key)));
    }
}

/// Texts only: the providers the gateway translates for take no token ids.
fn texts<'r>(
    request: &'r EmbeddingsRequest<'_>,
    provider: &str,
) -> Result<Vec<&'r str>, GatewayError> {
    match &request.input {
        EmbeddingInput::Texts(texts) => Ok(texts.iter().map(|text| text.as_ref()).collect()),
        EmbeddingInput::Tokens(_) => Err(GatewayError::invalid(
            "input",
            format!(
                "{provider} embeds text only: send 'input' as a string or an array of strings, not token ids."
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------------------------

/// The client's body with the deployment's model.
pub(super) fn openai_request(
    request: &EmbeddingsRequest<'_>,
    body: &[u8],
    deployment: &Deployment,
) -> UpstreamRequest {
    // The model named for the deployment, and LiteLLM's routing parameters removed (the
    // gateway's: a provider would refuse them).
    let mut edits: Vec<Edit> = request
        .routing
        .spans
        .iter()
        .map(|span| Edit {
            range: span.clone(),
            bytes: Vec::new(),
        })
        .collect();
    if request.model != deployment.upstream_model {
        edits.push(Edit {
            range: request.model_span.clone(),
            bytes: serde_json::to_vec(&deployment.upstream_model)
                .unwrap_or_else(|_| b"\"\"".to_vec()),
        });
    }
    let body = apply_edits(body, &mut edits);
    let mut headers = vec![("content-type", "application/json".to_string())];
    if !deployment.api_key.is_empty() {
        headers.push(match deployment.spec.auth {
            Auth::Bearer => ("authorization", ["Bearer ", &deployment.api_key].concat()),
            Auth::Header(name) => (name, deployment.api_key.clone()),
        });
    }
    let path = match deployment.spec.chat_path {
        ChatPath::OpenAi => "/embeddings".to_string(),
        ChatPath::AzureDeployment => {
            let mut path = String::with_capacity(64 + deployment.upstream_model.len());
            path.push_str("/openai/deployments/");
            push_path_segment(&mut path, &deployment.upstream_model);
            path.push_str("/embeddings");
            if !deployment.api_version.is_empty() {
                path.push_str("?api-version=");
                push_path_segment(&mut path, &deployment.api_version);
            }
            path
        }
    };
    UpstreamRequest {
        path,
        headers,
        body,
    }
}

#[derive(Deserialize)]
struct OpenAiUsageOnly {
    usage: Option<OpenAiEmbeddingUsage>,
}

#[derive(Deserialize)]
struct OpenAiEmbeddingUsage {
    prompt_tokens: Option<u64>,
}

/// The `usage` of an OpenAI embeddings answer: prompt tokens, and 0 completion tokens.
pub(super) fn openai_usage(body: &[u8]) -> Usage {
    let prompt_tokens = serde_json::from_slice::<OpenAiUsageOnly>(body)
        .ok()
        .and_then(|answer| answer.usage)
        .and_then(|usage| usage.prompt_tokens);
    Usage {
        prompt_tokens,
        completion_tokens: prompt_tokens.map(|_| 0),
        ..Usage::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Gemini
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct BatchEmbedContentsRequest<'a> {
    requests: Vec<EmbedContentRequest<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedContentRequest<'a> {
    model: &'a str,
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
}

#[derive(Serialize)]
struct Content<'a> {
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
struct Part<'a> {
    text: &'a str,
}

/// `batchEmbedContents`: one request per input, each naming the model.
pub(super) fn gemini_request(
    request: &EmbeddingsRequest<'_>,
    deployment: &Deployment,
) -> Result<UpstreamRequest, GatewayError> {
    let texts = texts(request, "Gemini")?;
    let model = ["models/", &deployment.upstream_model].concat();
    let upstream = BatchEmbedContentsRequest {
        requests: texts
            .into_iter()
            .map(|text| EmbedContentRequest {
                model: &model,
                content: Content {
                    parts: [Part { text }],
                },
                output_dimensionality: request.dimensions,
            })
            .collect(),
    };
    let mut headers = vec![("content-type", "application/json".to_string())];
    if !deployment.api_key.is_empty() {
        match deployment.spec.auth {
            Auth::Header(name) => headers.push((name, deployment.api_key.clone())),
            Auth::Bearer if deployment.spec.wire == Wire::Gemini => {
                headers.push(("authorization", format!("Bearer {}", deployment.api_key)));
            }
            // A provider name this filter does not know: Google AI Studio's header.
            Auth::Bearer => headers.push((gemini::API_KEY_HEADER, deployment.api_key.clone())),
        }
    }
    let mut path = String::with_capacity(64 + deployment.upstream_model.len());
    path.push_str(gemini::API_VERSION_PATH);
    path.push_str("/models/");
    push_path_segment(&mut path, &deployment.upstream_model);
    path.push_str(":batchEmbedContents");
    Ok(UpstreamRequest {
        path,
        headers,
        body: json_body(&upstream)?,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchEmbedContentsResponse<'a> {
    #[serde(borrow)]
    embeddings: Option<Vec<ContentEmbedding<'a>>>,
    usage_metadata: Option<GeminiUsage>,
}

#[derive(Deserialize)]
struct ContentEmbedding<'a> {
    #[serde(borrow)]
    values: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiUsage {
    prompt_token_count: Option<u64>,
}

fn bad(what: &str) -> impl Fn(serde_json::Error) -> GatewayError + '_ {
    move |error| GatewayError::BadUpstreamResponse(format!("{what}: {error}"))
}

/// `embeddings[].values`. Google documents no token count for batch embeddings: a
/// `usageMetadata.promptTokenCount` is read when present, else the usage is unreported.
pub(super) fn gemini_answer(body: &[u8]) -> Result<ProviderAnswer<'_>, GatewayError> {
    let answer: BatchEmbedContentsResponse<'_> =
        serde_json::from_slice(body).map_err(bad("Gemini's batchEmbedContents answer"))?;
    let embeddings = answer.embeddings.ok_or_else(|| {
        GatewayError::BadUpstreamResponse("Gemini's answer has no `embeddings`".into())
    })?;
    let vectors = embeddings
        .into_iter()
        .map(|embedding| {
            embedding
                .values
                .ok_or_else(|| {
                    GatewayError::BadUpstreamResponse("a Gemini embedding has no `values`".into())
                })
                .and_then(Vector::read)
        })
        .collect::<Result<_, _>>()?;
    Ok(ProviderAnswer {
        vectors,
        prompt_tokens: answer
            .usage_metadata
            .and_then(|usage| usage.prompt_token_count),
    })
}

// ---------------------------------------------------------------------------------------------
// Cohere
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct CohereEmbedRequest<'a> {
    model: &'a str,
    texts: Vec<&'a str>,
    input_type: &'a str,
    embedding_types: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimension: Option<u32>,
}

/// `/v2/embed` for float vectors.
pub(super) fn cohere_request(
    request: &EmbeddingsRequest<'_>,
    deployment: &Deployment,
) -> Result<UpstreamRequest, GatewayError> {
    let upstream = CohereEmbedRequest {
        model: &deployment.upstream_model,
        texts: texts(request, "Cohere")?,
        input_type: request
            .input_type
            .as_deref()
            .unwrap_or(COHERE_DEFAULT_INPUT_TYPE),
        embedding_types: ["float"],
        output_dimension: request.dimensions,
    };
    let mut headers = vec![("content-type", "application/json".to_string())];
    bearer(deployment, &mut headers);
    Ok(UpstreamRequest {
        path: "/v2/embed".to_string(),
        headers,
        body: json_body(&upstream)?,
    })
}

#[derive(Deserialize)]
struct CohereEmbedResponse<'a> {
    #[serde(borrow)]
    embeddings: Option<CohereEmbeddings<'a>>,
    meta: Option<CohereMeta>,
}

#[derive(Deserialize)]
struct CohereEmbeddings<'a> {
    #[serde(borrow)]
    float: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct CohereMeta {
    billed_units: Option<CohereBilledUnits>,
}

#[derive(Deserialize)]
struct CohereBilledUnits {
    /// A JSON number (Cohere's API types it `number`).
    input_tokens: Option<f64>,
}

/// `embeddings.float` and `meta.billed_units.input_tokens`.
pub(super) fn cohere_answer(body: &[u8]) -> Result<ProviderAnswer<'_>, GatewayError> {
    let answer: CohereEmbedResponse<'_> =
        serde_json::from_slice(body).map_err(bad("Cohere's embed answer"))?;
    let floats = answer
        .embeddings
        .and_then(|embeddings| embeddings.float)
        .ok_or_else(|| {
            GatewayError::BadUpstreamResponse("Cohere's answer has no `embeddings.float`".into())
        })?;
    let vectors = floats
        .into_iter()
        .map(Vector::read)
        .collect::<Result<_, _>>()?;
    let prompt_tokens = answer
        .meta
        .and_then(|meta| meta.billed_units)
        .and_then(|units| units.input_tokens)
        // In range (so finite and not negative): the cast neither wraps nor saturates.
        .filter(|count| (0.0..1.8e19).contains(count))
        .map(|count| count.round() as u64);
    Ok(ProviderAnswer {
        vectors,
        prompt_tokens,
    })
}

// ---------------------------------------------------------------------------------------------
// Ollama
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(untagged)]
enum OllamaInput<'a> {
    One(&'a str),
    Many(Vec<&'a str>),
}

#[derive(Serialize)]
struct OllamaEmbedRequest<'a> {
    model: &'a str,
    input: OllamaInput<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
}

/// `/api/embed` (`/embed` below a base that ends in `/api`, as ollama.com's does).
pub(super) fn ollama_request(
    request: &EmbeddingsRequest<'_>,
    deployment: &Deployment,
) -> Result<UpstreamRequest, GatewayError> {
    let mut texts = texts(request, "Ollama")?;
    let input = match (texts.len(), texts.pop()) {
        (1, Some(text)) => OllamaInput::One(text),
        (_, Some(last)) => {
            texts.push(last);
            OllamaInput::Many(texts)
        }
        (_, None) => OllamaInput::Many(texts),
    };
    let upstream = OllamaEmbedRequest {
        model: &deployment.upstream_model,
        input,
        dimensions: request.dimensions,
    };
    let mut headers = vec![("content-type", "application/json".to_string())];
    bearer(deployment, &mut headers);
    let path = if deployment.target.base_path.ends_with("/api") {
        "/embed"
    } else {
        "/api/embed"
    };
    Ok(UpstreamRequest {
        path: path.to_string(),
        headers,
        body: json_body(&upstream)?,
    })
}

#[derive(Deserialize)]
struct OllamaEmbedResponse<'a> {
    #[serde(borrow)]
    embeddings: Option<Vec<&'a RawValue>>,
    prompt_eval_count: Option<u64>,
}

/// `embeddings` and `prompt_eval_count`.
pub(super) fn ollama_answer(body: &[u8]) -> Result<ProviderAnswer<'_>, GatewayError> {
    let answer: OllamaEmbedResponse<'_> =
        serde_json::from_slice(body).map_err(bad("Ollama's embed answer"))?;
    let vectors = answer
        .embeddings
        .ok_or_else(|| {
            GatewayError::BadUpstreamResponse("Ollama's answer has no `embeddings`".into())
        })?
        .into_iter()
        .map(Vector::read)
        .collect::<Result<_, _>>()?;
    Ok(ProviderAnswer {
        vectors,
        prompt_tokens: answer.prompt_eval_count,
    })
}

// ---------------------------------------------------------------------------------------------
// Vertex AI
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct PredictRequest<'a> {
    instances: Vec<PredictInstance<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<PredictParameters>,
}

#[derive(Serialize)]
struct PredictInstance<'a> {
    content: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PredictParameters {
    output_dimensionality: u32,
}

/// Vertex AI's `:predict` for Google's embedding models (`gemini-embedding-001`,
/// `text-embedding-005`, ...): one instance per input; the access token is added by the
/// signing step.
pub(super) fn vertex_request(
    request: &EmbeddingsRequest<'_>,
    deployment: &Deployment,
    vertex: &crate::proto::VertexSettings,
) -> Result<UpstreamRequest, GatewayError> {
    let upstream = PredictRequest {
        instances: texts(request, "Vertex AI")?
            .into_iter()
            .map(|content| PredictInstance { content })
            .collect(),
        parameters: request
            .dimensions
            .map(|output_dimensionality| PredictParameters {
                output_dimensionality,
            }),
    };
    Ok(UpstreamRequest {
        path: crate::providers::vertex_model_path(
            vertex,
            "google",
            &deployment.upstream_model,
            "predict",
        ),
        headers: vec![("content-type", "application/json".to_string())],
        body: json_body(&upstream)?,
    })
}

#[derive(Deserialize)]
struct PredictResponse<'a> {
    #[serde(borrow)]
    predictions: Option<Vec<Prediction<'a>>>,
}

#[derive(Deserialize)]
struct Prediction<'a> {
    #[serde(borrow)]
    embeddings: Option<PredictionEmbeddings<'a>>,
}

#[derive(Deserialize)]
struct PredictionEmbeddings<'a> {
    #[serde(borrow)]
    values: Option<&'a RawValue>,
    statistics: Option<PredictionStatistics>,
}

#[derive(Deserialize)]
struct PredictionStatistics {
    token_count: Option<f64>,
}

/// `predictions[].embeddings.values`; the prompt tokens are the sum of each prediction's
/// `statistics.token_count` (not reported when one lacks it).
pub(super) fn vertex_answer(body: &[u8]) -> Result<ProviderAnswer<'_>, GatewayError> {
    let answer: PredictResponse<'_> =
        serde_json::from_slice(body).map_err(bad("Vertex AI's predict answer"))?;
    let predictions = answer.predictions.ok_or_else(|| {
        GatewayError::BadUpstreamResponse("Vertex AI's answer has no `predictions`".into())
    })?;
    let mut vectors = Vec::with_capacity(predictions.len());
    let mut prompt_tokens = Some(0u64);
    for prediction in predictions {
        let embeddings = prediction.embeddings.ok_or_else(|| {
            GatewayError::BadUpstreamResponse("a Vertex AI prediction has no `embeddings`".into())
        })?;
        let values = embeddings.values.ok_or_else(|| {
            GatewayError::BadUpstreamResponse("a Vertex AI embedding has no `values`".into())
        })?;
        vectors.push(Vector::read(values)?);
        let count = embeddings
            .statistics
            .and_then(|statistics| statistics.token_count)
            .filter(|count| (0.0..1.8e19).contains(count))
            // In range: the cast neither wraps nor saturates.
            .map(|count| count.round() as u64);
        prompt_tokens = match (prompt_tokens, count) {
            (Some(total), Some(count)) => Some(total.saturating_add(count)),
            _ => None,
        };
    }
    Ok(ProviderAnswer {
        vectors,
        prompt_tokens,
    })
}

// ---------------------------------------------------------------------------------------------
// Bedrock
// ---------------------------------------------------------------------------------------------

/// Which embedding model family a Bedrock model id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BedrockEmbedder {
    /// Amazon Titan Text Embeddings (`amazon.titan-embed-text-v1`, `-v2:0`): one text a
    /// request.
    Titan,
    /// Cohere Embed on Bedrock (`cohere.embed-english-v3`, `-multilingual-v3`).
    Cohere,
}

impl BedrockEmbedder {
    /// The family of `model` (an inference profile's region prefix, `us.`, aside).
    pub(super) fn of(model: &str) -> Option<BedrockEmbedder> {
        let model = model
            .split_once('.')
            .filter(|(prefix, _)| prefix.len() == 2 || *prefix == "apac")
            .map_or(model, |(_, rest)| rest);
        if model.starts_with("amazon.titan-embed") {
            Some(BedrockEmbedder::Titan)
        } else if model.starts_with("cohere.embed") {
            Some(BedrockEmbedder::Cohere)
        } else {
            None
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TitanRequest<'a> {
    input_text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
}

#[derive(Serialize)]
struct BedrockCohereRequest<'a> {
    texts: Vec<&'a str>,
    input_type: &'a str,
}

/// Bedrock's `InvokeModel` (`POST /model/<id>/invoke`) with the model's own body, signed
/// with SigV4 by the signing step.
pub(super) fn bedrock_request(
    request: &EmbeddingsRequest<'_>,
    deployment: &Deployment,
    embedder: BedrockEmbedder,
) -> Result<UpstreamRequest, GatewayError> {
    let texts = texts(request, "Bedrock")?;
    let body = match embedder {
        BedrockEmbedder::Titan => {
            let [text] = texts.as_slice() else {
                return Err(GatewayError::invalid(
                    "input",
                    "Titan embedding models take one text a request: send 'input' as a string (or an array of one).",
                ));
            };
            json_body(&TitanRequest {
                input_text: text,
                dimensions: request.dimensions,
            })?
        }
        BedrockEmbedder::Cohere => {
            if request.dimensions.is_some() {
                return Err(GatewayError::invalid(
                    "dimensions",
                    "Cohere's embedding models on Bedrock have a fixed size: leave 'dimensions' out.",
                ));
            }
            json_body(&BedrockCohereRequest {
                texts,
                input_type: request
                    .input_type
                    .as_deref()
                    .unwrap_or(COHERE_DEFAULT_INPUT_TYPE),
            })?
        }
    };
    let mut path = String::with_capacity(24 + deployment.upstream_model.len());
    path.push_str("/model/");
    push_path_segment(&mut path, &deployment.upstream_model);
    path.push_str("/invoke");
    Ok(UpstreamRequest {
        path,
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("accept", "application/json".to_string()),
        ],
        body,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanResponse<'a> {
    #[serde(borrow)]
    embedding: Option<&'a RawValue>,
    input_text_token_count: Option<u64>,
}

#[derive(Deserialize)]
struct BedrockCohereResponse<'a> {
    #[serde(borrow)]
    embeddings: Option<Vec<&'a RawValue>>,
}

/// Titan's `embedding` and `inputTextTokenCount`, or Cohere's `embeddings` (Cohere on Bedrock
/// reports no token count).
pub(super) fn bedrock_answer(
    body: &[u8],
    embedder: BedrockEmbedder,
) -> Result<ProviderAnswer<'_>, GatewayError> {
    match embedder {
        BedrockEmbedder::Titan => {
            let answer: TitanResponse<'_> =
                serde_json::from_slice(body).map_err(bad("Titan's embedding answer"))?;
            let embedding = answer.embedding.ok_or_else(|| {
                GatewayError::BadUpstreamResponse("Titan's answer has no `embedding`".into())
            })?;
            Ok(ProviderAnswer {
                vectors: vec![Vector::read(embedding)?],
                prompt_tokens: answer.input_text_token_count,
            })
        }
        BedrockEmbedder::Cohere => {
            let answer: BedrockCohereResponse<'_> =
                serde_json::from_slice(body).map_err(bad("Cohere's embedding answer"))?;
            let vectors = answer
                .embeddings
                .ok_or_else(|| {
                    GatewayError::BadUpstreamResponse(
                        "Cohere's answer on Bedrock has no `embeddings`".into(),
                    )
                })?
                .into_iter()
                .map(Vector::read)
                .collect::<Result<_, _>>()?;
            Ok(ProviderAnswer {
                vectors,
                prompt_tokens: None,
            })
        }
    }
}
