//! Embedding endpoints of every provider the gateway translates for:
//!
//! * OpenAI `POST …/embeddings` (and Azure's `/openai/deployments/<d>/embeddings
//!   ?api-version=`): `{"model","input","encoding_format","dimensions","user"}`; answers
//!   `{"object":"list","data":[{"object":"embedding","index","embedding"}],"model",
//!   "usage":{"prompt_tokens","total_tokens"}}`, base64 vectors when asked.
//! * Gemini `POST /v1beta/models/<model>:batchEmbedContents`: `{"requests":[{"model":
//!   "models/<model>","content":{"parts":[{"text"}]},"outputDimensionality"}]}`; answers
//!   `{"embeddings":[{"values"}]}` (no token count, as Google's).
//! * Cohere `POST /v2/embed`: `{"model","input_type","texts","embedding_types",
//!   "output_dimension"}`; answers `embeddings.float` and `meta.billed_units.input_tokens`.
//! * Ollama `POST /api/embed`: `{"model","input","dimensions"}`; answers `embeddings` and
//!   `prompt_eval_count`.
//! * Vertex AI `:predict` (routed by `vertex.rs`, which checks the token): `{"instances":
//!   [{"content"}],"parameters":{"outputDimensionality"}}`; answers `predictions[].embeddings.
//!   {values, statistics.token_count}`.
//! * Bedrock `InvokeModel` (routed by `bedrock.rs`, which checks SigV4): Titan `{"inputText",
//!   "dimensions","normalize"}` → `{"embedding","inputTextTokenCount"}`, Cohere `{"texts",
//!   "input_type","truncate"}` → `{"embeddings","id","response_type","texts"}`.
//!
//! Vectors are deterministic: [`embedding_for`] of the text (or token ids), of
//! [`DEFAULT_DIMENSIONS`] values unless the request sets its size, each a multiple of 1/256
//! (exact in `f32`, so a float vector and its base64 decode to the same numbers). Tokens are
//! counted as words (token-id input: one token per id).

use base64::Engine as _;
use bytes::Bytes;
use hyper::header::AUTHORIZATION;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::body::MockBody;
use crate::common::{count_words, json_response};
use crate::{azure, cohere, gemini, ollama, openai, State};

/// Size of a vector when the request does not choose one.
pub const DEFAULT_DIMENSIONS: usize = 8;

/// Which embedding endpoint a path is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Endpoint {
    OpenAi,
    Azure,
    Gemini,
    Cohere,
    Ollama,
}

/// The embedding endpoint of `path`, if it is one.
pub(crate) fn endpoint_of(path: &str) -> Option<Endpoint> {
    if path.starts_with("/openai/deployments/") && path.ends_with("/embeddings") {
        Some(Endpoint::Azure)
    } else if path.ends_with("/embeddings") {
        Some(Endpoint::OpenAi)
    } else if path.ends_with(":batchEmbedContents") {
        Some(Endpoint::Gemini)
    } else if path == "/v2/embed" {
        Some(Endpoint::Cohere)
    } else if path.ends_with("/api/embed") {
        Some(Endpoint::Ollama)
    } else {
        None
    }
}

/// The mock's vector for `seed` (a text's bytes, or token ids): `dimensions` values in
/// [-1, 1), each `k / 256` for an integer `k`.
pub fn embedding_for(seed: &[u64], dimensions: usize) -> Vec<f64> {
    let hash = seed.iter().enumerate().fold(0u64, |hash, (at, value)| {
        hash.wrapping_add(value.wrapping_mul(at as u64 + 1))
    });
    (0..dimensions as u64)
        .map(|i| (hash.wrapping_add(37 * i) % 512) as f64 / 256.0 - 1.0)
        .collect()
}

/// The mock's vector for a text.
pub fn embedding_for_text(text: &str, dimensions: usize) -> Vec<f64> {
    let bytes: Vec<u64> = text.bytes().map(u64::from).collect();
    embedding_for(&bytes, dimensions)
}

/// OpenAI's base64 encoding of a vector: its little-endian `f32`s.
pub fn base64_of(vector: &[f64]) -> String {
    let bytes: Vec<u8> = vector
        .iter()
        .flat_map(|value| (*value as f32).to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) async fn handle(
    state: &State,
    endpoint: Endpoint,
    parts: &Parts,
    body: &Bytes,
) -> Response<MockBody> {
    match endpoint {
        Endpoint::OpenAi => {
            if let Some(refused) = openai::check_auth(state, parts) {
                return refused;
            }
            openai_answer(body, None)
        }
        Endpoint::Azure => {
            let has_version = parts.uri.query().is_some_and(|query| {
                query
                    .split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .any(|(name, value)| name == "api-version" && !value.is_empty())
            });
            if !has_version {
                return azure::error(StatusCode::NOT_FOUND, "Resource not found");
            }
            if let Some(expected) = state.config.azure_api_key.as_deref() {
                let given = parts
                    .headers
                    .get("api-key")
                    .and_then(|value| value.to_str().ok());
                if given != Some(expected) {
                    return azure::error(
                        StatusCode::UNAUTHORIZED,
                        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
                    );
                }
            }
            let deployment = parts
                .uri
                .path()
                .trim_start_matches("/openai/deployments/")
                .trim_end_matches("/embeddings");
            openai_answer(body, Some(deployment))
        }
        Endpoint::Gemini => gemini_answer(state, parts, body),
        Endpoint::Cohere => {
            if let Some(refused) = cohere::check_auth(state, parts) {
                return refused;
            }
            cohere_answer(body)
        }
        Endpoint::Ollama => ollama_answer(state, parts, body),
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------------------------

fn openai_invalid(message: &str, param: Option<&str>) -> Response<MockBody> {
    openai::error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        None,
    )
}

/// OpenAI's parameters of `POST /v1/embeddings`.
const OPENAI_FIELDS: [&str; 5] = ["model", "input", "encoding_format", "dimensions", "user"];

/// The seeds of OpenAI's `input`, or the error OpenAI gives.
fn openai_inputs(input: &Value) -> Result<(Vec<Vec<u64>>, u64), &'static str> {
    let text_seed = |text: &str| text.bytes().map(u64::from).collect::<Vec<u64>>();
    let token = |value: &Value| value.as_u64().filter(|id| *id <= 100_257);
    let tokens_of = |items: &[Value]| items.iter().map(token).collect::<Option<Vec<u64>>>();
    match input {
        Value::String(text) if !text.is_empty() => Ok((vec![text_seed(text)], count_words(text))),
        Value::Array(items) if !items.is_empty() => {
            if items.iter().all(Value::is_string) {
                let texts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                if texts.iter().any(|text| text.is_empty()) {
                    return Err("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.");
                }
                let tokens = texts.iter().map(|text| count_words(text)).sum();
                Ok((texts.into_iter().map(text_seed).collect(), tokens))
            } else if items.iter().all(Value::is_array) {
                let mut seeds = Vec::new();
                for item in items {
                    match item.as_array().and_then(|ids| tokens_of(ids)) {
                        Some(ids) if !ids.is_empty() => seeds.push(ids),
                        _ => return Err("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."),
                    }
                }
                let tokens = seeds.iter().map(|ids| ids.len() as u64).sum();
                Ok((seeds, tokens))
            } else {
                match tokens_of(items) {
                    Some(ids) => {
                        let tokens = ids.len() as u64;
                        Ok((vec![ids], tokens))
                    }
                    None => Err("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."),
                }
            }
        }
        _ => Err("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."),
    }
}

/// OpenAI's answer; Azure's (`deployment` set) takes no `model`: the path names it.
fn openai_answer(body: &Bytes, deployment: Option<&str>) -> Response<MockBody> {
    let request: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(request)) => Value::Object(request),
        _ => return openai_invalid("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)", None),
    };
    let object = request.as_object().cloned().unwrap_or_default();
    if let Some(unknown) = object
        .keys()
        .find(|name| !OPENAI_FIELDS.contains(&name.as_str()))
    {
        return openai_invalid(
            &format!("Unrecognized request argument supplied: {unknown}"),
            None,
        );
    }
    let Some(model) = object.get("model").and_then(Value::as_str).or(deployment) else {
        return openai_invalid("you must provide a model parameter", None);
    };
    let Some(input) = object.get("input") else {
        return openai_invalid("Missing required parameter: 'input'.", Some("input"));
    };
    let (seeds, tokens) = match openai_inputs(input) {
        Ok(found) => found,
        Err(message) => return openai_invalid(message, Some("input")),
    };
    let base64 = match object.get("encoding_format") {
        None => false,
        Some(Value::String(format)) if format == "float" => false,
        Some(Value::String(format)) if format == "base64" => true,
        Some(other) => {
            return openai_invalid(
                &format!("Invalid value for 'encoding_format': {other}. Supported values are: 'float' and 'base64'."),
                Some("encoding_format"),
            )
        }
    };
    let dimensions = match object.get("dimensions") {
        None => DEFAULT_DIMENSIONS,
        Some(value) => match value.as_u64().filter(|n| (1..=3072).contains(n)) {
            Some(n) => n as usize,
            None => {
                return openai_invalid(
                    &format!("Invalid value for 'dimensions' = {value}. Must be a positive integer up to 3072."),
                    Some("dimensions"),
                )
            }
        },
    };
    if object.get("user").is_some_and(|user| !user.is_string()) {
        return openai_invalid("Invalid type for 'user': expected a string.", Some("user"));
    }
    let data: Vec<Value> = seeds
        .iter()
        .enumerate()
        .map(|(index, seed)| {
            let vector = embedding_for(seed, dimensions);
            let embedding = if base64 {
                Value::String(base64_of(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Gemini
// ---------------------------------------------------------------------------------------------

fn gemini_invalid(message: &str) -> Response<MockBody> {
    gemini::error(StatusCode::BAD_REQUEST, message, None)
}

fn unknown_name(name: &str, at: &str) -> String {
    format!("Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field.")
}

fn gemini_answer(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    let path = parts.uri.path();
    let Some(model) = path
        .strip_prefix("/v1beta/models/")
        .and_then(|rest| rest.strip_suffix(":batchEmbedContents"))
        .filter(|model| !model.is_empty() && !model.contains('/'))
    else {
        return gemini::error(
            StatusCode::NOT_FOUND,
            &format!("The requested URL {path} was not found on this server."),
            None,
        );
    };
    if let Some(expected) = state.config.gemini_api_key.as_deref() {
        let given = parts
            .headers
            .get("x-goog-api-key")
            .and_then(|value| value.to_str().ok());
        match given {
            None => {
                return gemini::error(
                    StatusCode::FORBIDDEN,
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                    None,
                )
            }
            Some(key) if key != expected => {
                return gemini::error(
                    StatusCode::BAD_REQUEST,
                    "API key not valid. Please pass a valid API key.",
                    Some(json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"}}])),
                )
            }
            Some(_) => {}
        }
    }
    let request: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(request)) => request,
        _ => return gemini_invalid("Invalid JSON payload received."),
    };
    if let Some(unknown) = request.keys().find(|name| name.as_str() != "requests") {
        return gemini_invalid(&unknown_name(unknown, ""));
    }
    let Some(requests) = request.get("requests").and_then(Value::as_array) else {
        return gemini_invalid(
            "* BatchEmbedContentsRequest.requests: at least one request is required\n",
        );
    };
    if requests.is_empty() {
        return gemini_invalid(
            "* BatchEmbedContentsRequest.requests: at least one request is required\n",
        );
    }
    let expected_model = format!("models/{model}");
    let mut embeddings = Vec::with_capacity(requests.len());
    for (index, item) in requests.iter().enumerate() {
        let at = format!("requests[{index}]");
        let Some(item) = item.as_object() else {
            return gemini_invalid(&format!("Invalid value at '{at}': expected an object."));
        };
        for name in item.keys() {
            if ![
                "model",
                "content",
                "taskType",
                "task_type",
                "title",
                "outputDimensionality",
                "output_dimensionality",
            ]
            .contains(&name.as_str())
            {
                return gemini_invalid(&unknown_name(name, &at));
            }
        }
        match item.get("model").and_then(Value::as_str) {
            Some(name) if name == expected_model => {}
            Some(name) => {
                return gemini_invalid(&format!(
                "Model {name} in the {at} does not match the model in the URL: {expected_model}."
            ))
            }
            None => {
                return gemini_invalid(&format!(
                    "* BatchEmbedContentsRequest.{at}.model: required field is not set\n"
                ))
            }
        }
        let parts = item
            .get("content")
            .and_then(|content| content.get("parts"))
            .and_then(Value::as_array);
        let Some(parts) = parts.filter(|parts| !parts.is_empty()) else {
            return gemini_invalid(&format!(
                "* BatchEmbedContentsRequest.{at}.content.parts: contents.parts must not be empty.\n"
            ));
        };
        let mut text = String::new();
        for part in parts {
            match part.get("text").and_then(Value::as_str) {
                Some(piece) => text.push_str(piece),
                None => return gemini_invalid(&format!("Invalid value at '{at}.content.parts': each part of an embedding request must have text.")),
            }
        }
        let dimensions = match item
            .get("outputDimensionality")
            .or_else(|| item.get("output_dimensionality"))
        {
            None => DEFAULT_DIMENSIONS,
            Some(value) => match value.as_u64().filter(|n| (1..=3072).contains(n)) {
                Some(n) => n as usize,
                None => {
                    return gemini_invalid(&format!(
                        "Invalid value at '{at}.output_dimensionality' ({value}): it must be between 1 and 3072."
                    ))
                }
            },
        };
        embeddings.push(json!({"values": embedding_for_text(&text, dimensions)}));
    }
    json_response(StatusCode::OK, &json!({ "embeddings": embeddings }))
}

// ---------------------------------------------------------------------------------------------
// Cohere
// ---------------------------------------------------------------------------------------------

const COHERE_FIELDS: [&str; 9] = [
    "model",
    "input_type",
    "texts",
    "images",
    "inputs",
    "embedding_types",
    "output_dimension",
    "max_tokens",
    "truncate",
];
const COHERE_INPUT_TYPES: [&str; 5] = [
    "search_document",
    "search_query",
    "classification",
    "clustering",
    "image",
];
const COHERE_EMBEDDING_TYPES: [&str; 6] = ["float", "int8", "uint8", "binary", "ubinary", "base64"];

fn cohere_invalid(message: &str) -> Response<MockBody> {
    cohere::error(StatusCode::BAD_REQUEST, message)
}

fn cohere_answer(body: &Bytes) -> Response<MockBody> {
    let request: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(request)) => request,
        Ok(_) | Err(_) => {
            return cohere_invalid("invalid request: the request body is not valid JSON")
        }
    };
    if let Some(unknown) = request
        .keys()
        .find(|name| !COHERE_FIELDS.contains(&name.as_str()))
    {
        return cohere::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("unknown field: parameter {unknown} is not a valid field. For proper usage, please refer to https://docs.cohere.com/reference/embed"),
        );
    }
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return cohere_invalid("invalid request: model must be specified");
    };
    match request.get("input_type").and_then(Value::as_str) {
        Some(kind) if COHERE_INPUT_TYPES.contains(&kind) => {}
        Some(kind) => {
            return cohere_invalid(&format!(
                "invalid request: input_type '{kind}' is not valid; it must be one of search_document, search_query, classification, clustering, image"
            ))
        }
        None => {
            return cohere_invalid(
                "invalid request: valid input_type must be provided with the provided model",
            )
        }
    }
    let texts: Vec<&str> = match request.get("texts").and_then(Value::as_array) {
        Some(texts) if !texts.is_empty() && texts.len() <= 96 => {
            match texts.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
                Some(texts) => texts,
                None => {
                    return cohere_invalid("invalid request: texts must be an array of strings")
                }
            }
        }
        Some(texts) if texts.len() > 96 => {
            return cohere_invalid(&format!(
                "invalid request: total number of texts must be at most 96 - received {}",
                texts.len()
            ))
        }
        _ => {
            return cohere_invalid(
                "invalid request: one of texts, images or inputs must be specified",
            )
        }
    };
    let types: Vec<&str> = match request.get("embedding_types") {
        None => vec!["float"],
        Some(Value::Array(types)) => match types.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
            Some(types) if types.iter().all(|kind| COHERE_EMBEDDING_TYPES.contains(kind)) => types,
            _ => return cohere_invalid("invalid request: embedding_types must be one or more of float, int8, uint8, binary, ubinary, base64"),
        },
        Some(_) => return cohere_invalid("invalid request: embedding_types must be an array"),
    };
    let dimensions = match request.get("output_dimension") {
        None => DEFAULT_DIMENSIONS,
        Some(value) => match value.as_u64() {
            Some(n) if [256, 512, 1024, 1536].contains(&n) => n as usize,
            _ => {
                return cohere_invalid(&format!(
                    "invalid request: output_dimension must be one of 256, 512, 1024, 1536 (got {value})"
                ))
            }
        },
    };
    let vectors: Vec<Vec<f64>> = texts
        .iter()
        .map(|text| embedding_for_text(text, dimensions))
        .collect();
    let mut embeddings = Map::new();
    for kind in types {
        let value = match kind {
            "float" => json!(vectors),
            "base64" => json!(vectors.iter().map(|v| base64_of(v)).collect::<Vec<_>>()),
            _ => json!(vectors
                .iter()
                .map(|v| v
                    .iter()
                    .map(|x| (x * 127.0).round() as i64)
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()),
        };
        embeddings.insert(kind.to_string(), value);
    }
    let tokens: u64 = texts.iter().map(|text| count_words(text)).sum();
    json_response(
        StatusCode::OK,
        &json!({
            "id": "00000000-0000-4000-8000-0000000e3b3d",
            "embeddings": embeddings,
            "texts": texts,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
            "response_type": "embeddings_by_type",
            "model": model,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Ollama
// ---------------------------------------------------------------------------------------------

fn ollama_answer(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    if let Some(expected) = state.config.ollama_api_key.as_deref() {
        let given = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if given != Some(expected) {
            return ollama::error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    let request: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(request)) => request,
        _ => return ollama::error(StatusCode::BAD_REQUEST, "invalid request body"),
    };
    let Some(model) = request
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    else {
        return ollama::error(StatusCode::BAD_REQUEST, "model is required");
    };
    let texts: Vec<&str> = match request.get("input") {
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(items)) => {
            match items.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
                Some(texts) => texts,
                None => return ollama::error(StatusCode::BAD_REQUEST, "invalid input type"),
            }
        }
        None => Vec::new(),
        Some(_) => return ollama::error(StatusCode::BAD_REQUEST, "invalid input type"),
    };
    let dimensions = match request.get("dimensions") {
        None => DEFAULT_DIMENSIONS,
        Some(value) => match value.as_u64().filter(|n| *n > 0) {
            Some(n) => n as usize,
            None => {
                return ollama::error(
                    StatusCode::BAD_REQUEST,
                    &format!("json: cannot unmarshal {value} into Go struct field EmbedRequest.dimensions of type int"),
                )
            }
        },
    };
    let embeddings: Vec<Vec<f64>> = texts
        .iter()
        .map(|text| embedding_for_text(text, dimensions))
        .collect();
    let tokens: u64 = texts.iter().map(|text| count_words(text)).sum();
    json_response(
        StatusCode::OK,
        &json!({
            "model": model,
            "embeddings": embeddings,
            "total_duration": 14_143_917u64,
            "load_duration": 1_019_500u64,
            "prompt_eval_count": tokens,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Vertex AI
// ---------------------------------------------------------------------------------------------

fn vertex_invalid(message: &str) -> Response<MockBody> {
    gemini::error(StatusCode::BAD_REQUEST, message, None)
}

/// Vertex AI's `:predict` for a text embedding model.
pub(crate) fn vertex_predict(body: &Bytes) -> Response<MockBody> {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return vertex_invalid("Invalid JSON payload received.");
    };
    if let Some(extra) = request
        .keys()
        .find(|key| !["instances", "parameters"].contains(&key.as_str()))
    {
        return vertex_invalid(&format!(
            "Invalid JSON payload received. Unknown name \"{extra}\": Cannot find field."
        ));
    }
    let Some(instances) = request.get("instances").and_then(Value::as_array) else {
        return vertex_invalid("instances is required.");
    };
    let dimensions = match request.get("parameters") {
        None => DEFAULT_DIMENSIONS,
        Some(Value::Object(parameters)) => {
            if let Some(extra) = parameters
                .keys()
                .find(|key| !["outputDimensionality", "autoTruncate"].contains(&key.as_str()))
            {
                return vertex_invalid(&format!("Unknown parameter \"{extra}\"."));
            }
            match parameters.get("outputDimensionality") {
                None => DEFAULT_DIMENSIONS,
                Some(value) => match value.as_u64() {
                    Some(n @ 1..=3072) => n as usize,
                    _ => return vertex_invalid("outputDimensionality must be between 1 and 3072."),
                },
            }
        }
        Some(_) => return vertex_invalid("parameters must be an object."),
    };
    let mut predictions = Vec::with_capacity(instances.len());
    let mut characters = 0;
    for instance in instances {
        let Some(content) = instance.get("content").and_then(Value::as_str) else {
            return vertex_invalid("Each instance needs a string `content`.");
        };
        if instance.as_object().is_some_and(|object| {
            object
                .keys()
                .any(|key| !["content", "task_type", "title"].contains(&key.as_str()))
        }) {
            return vertex_invalid("Unknown field in instance.");
        }
        characters += content.chars().count();
        predictions.push(json!({"embeddings": {
            "statistics": {"truncated": false, "token_count": count_words(content).max(1)},
            "values": embedding_for_text(content, dimensions)}}));
    }
    json_response(
        StatusCode::OK,
        &json!({"predictions": predictions, "metadata": {"billableCharacterCount": characters}}),
    )
}

// ---------------------------------------------------------------------------------------------
// Bedrock
// ---------------------------------------------------------------------------------------------

/// `InvokeModel` for a Titan or Cohere embedding model (the signature is checked already).
pub(crate) fn bedrock_invoke(model: &str, body: &Bytes) -> Response<MockBody> {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return crate::bedrock::validation(
            "Malformed input request, please reformat your input and try again.",
        );
    };
    let extraneous = |allowed: &[&str]| {
        request
            .keys()
            .find(|key| !allowed.contains(&key.as_str()))
            .map(|key| {
                crate::bedrock::validation(format!(
                    "Malformed input request: extraneous key [{key}] is not permitted, please reformat your input and try again."
                ))
            })
    };
    if model.starts_with("amazon.titan-embed") {
        if let Some(refused) =
            extraneous(&["inputText", "dimensions", "normalize", "embeddingTypes"])
        {
            return refused;
        }
        let Some(text) = request.get("inputText").and_then(Value::as_str) else {
            return crate::bedrock::validation("Malformed input request: required key [inputText] not found, please reformat your input and try again.");
        };
        let dimensions = match request.get("dimensions") {
            None => 1024,
            Some(value) => match value.as_u64() {
                Some(n @ (256 | 512 | 1024)) => n as usize,
                _ => return crate::bedrock::validation(format!("Malformed input request: #/dimensions: {value} is not a valid enum value, please reformat your input and try again.")),
            },
        };
        return json_response(
            StatusCode::OK,
            &json!({"embedding": embedding_for_text(text, dimensions),
                "inputTextTokenCount": count_words(text).max(1)}),
        );
    }
    if model.starts_with("cohere.embed") {
        if let Some(refused) = extraneous(&["texts", "input_type", "truncate", "embedding_types"]) {
            return refused;
        }
        let Some(texts) = request.get("texts").and_then(Value::as_array) else {
            return crate::bedrock::validation("Malformed input request: required key [texts] not found, please reformat your input and try again.");
        };
        if request.get("input_type").and_then(Value::as_str).is_none() {
            return crate::bedrock::validation("Malformed input request: required key [input_type] not found, please reformat your input and try again.");
        }
        let texts: Vec<&str> = texts.iter().filter_map(Value::as_str).collect();
        return json_response(
            StatusCode::OK,
            &json!({"embeddings": texts.iter().map(|text| embedding_for_text(text, DEFAULT_DIMENSIONS)).collect::<Vec<_>>(),
                "id": "mock-bedrock-embed", "response_type": "embeddings_floats",
                "texts": texts}),
        );
    }
    crate::bedrock::validation(format!(
        "The provided model identifier is invalid: {model} is not an embedding model the mock serves."
    ))
}
