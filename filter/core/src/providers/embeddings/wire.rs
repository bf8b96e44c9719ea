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

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tollgate_catalogue::{Auth, ChatPath};

use super::{EmbeddingInput, EmbeddingsRequest, ProviderAnswer, Vector};
use crate::providers::{gemini, push_path_segment, UpstreamRequest};
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
    let body = if request.model == deployment.upstream_model {
        body.to_vec()
    } else {
        let model =
            serde_json::to_vec(&deployment.upstream_model).unwrap_or_else(|_| b"\"\"".to_vec());
        let span = &request.model_span;
        let mut out = Vec::with_capacity(body.len() + model.len());
        out.extend_from_slice(body.get(..span.start).unwrap_or_default());
        out.extend_from_slice(&model);
        out.extend_from_slice(body.get(span.end..).unwrap_or_default());
        out
    };
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
