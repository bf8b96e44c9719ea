//! `tollgate-mock`: a fast mock of the LLM provider APIs Tollgate translates for (OpenAI,
//! Azure OpenAI, Anthropic, Gemini, Vertex AI, Bedrock, Cohere, Ollama), streaming included,
//! for Tollgate's end-to-end tests and benchmarks.
//!
//! * `POST …/chat/completions`: OpenAI Chat Completions (and Azure OpenAI's deployments).
//! * `POST …/v1/messages`: Anthropic Messages.
//! * `POST /v1beta/models/<model>:generateContent` and `:streamGenerateContent`: Gemini.
//! * `POST /model/<model id>/converse` and `/converse-stream`: AWS Bedrock Converse, SigV4
//!   signatures verified.
//! * `POST /v2/chat`: Cohere's v2 Chat API.
//! * `POST …/completions` (not `…/chat/completions`) and
//!   `/openai/deployments/<d>/completions`: OpenAI's and Azure's legacy text completions.
//! * `POST /api/chat`: Ollama's native chat API (newline-delimited JSON streams).
//! * Embeddings: `POST …/embeddings` (OpenAI, Azure), `:batchEmbedContents` (Gemini),
//!   `/v2/embed` (Cohere), `/api/embed` (Ollama); see `embeddings.rs`.
//! * `POST /token` and `POST /v1/projects/<p>/locations/<l>/publishers/<google|anthropic>/
//!   models/<model>:<method>`: Google's OAuth token endpoint for a service account, and
//!   Vertex AI's Gemini and Claude endpoints that take its tokens (`GET /_mock/vertex` says
//!   how many tokens were issued).
//! * `GET /_mock/requests`, `DELETE /_mock/requests`, `GET /_mock/health`: introspection.
//! * `POST|GET|DELETE /_mock/faults`, `GET|DELETE /_mock/calls`: faults per deployment (an
//!   upstream model fails, times out, resets or cuts its stream) and the requests each
//!   deployment received; see `faults.rs`.
//!
//! Replies are deterministic (`"echo: " + last user text`), and directives in the last user
//! message (`mock:status=429`, `mock:chunks=200`, `mock:delay_ms=5`, `mock:stream_error`,
//! `mock:raw_error`) shape the answer. See README.md.

mod anthropic;
mod azure;
mod bedrock;
mod body;
mod cohere;
mod common;
mod completions;
mod embeddings;
mod eventstream;
mod faults;
mod gemini;
mod ollama;
mod openai;
mod vertex;
mod wire;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

pub use bedrock::AwsCredentials;
pub use body::{ConnectionCut, MockBody};
pub use embeddings::{base64_of, embedding_for, embedding_for_text, DEFAULT_DIMENSIONS};
pub use vertex::VertexAccount;

/// How many requests `/_mock/requests` remembers.
pub const RECORD_CAPACITY: usize = 200;
/// Largest request body accepted (Anthropic's documented limit for the Messages API).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// What the mock checks. With a key set, the provider's auth header must carry exactly it.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    /// Required `Authorization: Bearer <key>` on OpenAI endpoints, if set.
    pub openai_api_key: Option<String>,
    /// Required `x-api-key: <key>` on Anthropic endpoints, if set.
    pub anthropic_api_key: Option<String>,
    /// Required `api-key: <key>` on Azure OpenAI endpoints, if set.
    pub azure_api_key: Option<String>,
    /// Required `x-goog-api-key: <key>` (or `?key=<key>`) on Gemini endpoints, if set.
    pub gemini_api_key: Option<String>,
    /// AWS credentials Bedrock endpoints accept (SigV4 is verified against them); with none,
    /// every Bedrock request is refused as AWS refuses an unknown key.
    pub aws_credentials: Vec<AwsCredentials>,
    /// Required `Authorization: Bearer <key>` on Cohere's `/v2/chat`, if set.
    pub cohere_api_key: Option<String>,
    /// Required `Authorization: Bearer <key>` on Ollama's `/api/chat`, if set (Ollama takes
    /// none by default).
    pub ollama_api_key: Option<String>,
    /// The service account whose JWTs `POST /token` exchanges for the tokens Vertex AI
    /// endpoints take; with none, both refuse everything.
    pub vertex: Option<VertexAccount>,
}

/// One request seen on a provider endpoint.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

pub(crate) struct State {
    pub(crate) config: MockConfig,
    counter: AtomicU64,
    records: Mutex<VecDeque<Recorded>>,
    /// Vertex AI access tokens issued by `POST /token`.
    pub(crate) vertex_tokens: vertex::TokenBook,
    /// The fault rules of `/_mock/faults` and the counts of `/_mock/calls`.
    faults: faults::FaultBook,
}

impl State {
    fn new(config: MockConfig) -> Self {
        State {
            config,
            counter: AtomicU64::new(0),
            records: Mutex::new(VecDeque::with_capacity(RECORD_CAPACITY)),
            vertex_tokens: vertex::TokenBook::default(),
            faults: faults::FaultBook::default(),
        }
    }

    /// 1, 2, 3 … shared by both providers' ids.
    pub(crate) fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn record(&self, parts: &Parts, body: &Bytes) {
        let mut headers: Vec<(String, String)> = Vec::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            headers.push((
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
        let rec = Recorded {
            method: parts.method.as_str().to_owned(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            headers,
            body: body.clone(),
        };
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= RECORD_CAPACITY {
            records.pop_front();
        }
        records.push_back(rec);
    }

    fn records_json(&self) -> Value {
        let records: Vec<Recorded> = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        Value::Array(
            records
                .into_iter()
                .map(|r| {
                    let mut headers = Map::new();
                    for (name, value) in r.headers {
                        // Repeated headers are joined the way HTTP allows: "a, b".
                        let joined = match headers.remove(&name) {
                            Some(Value::String(prev)) => format!("{prev}, {value}"),
                            _ => value,
                        };
                        headers.insert(name, Value::String(joined));
                    }
                    json!({
                        "method": r.method,
                        "path": r.path,
                        "headers": headers,
                        "body": serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null),
                        "raw_body": String::from_utf8_lossy(&r.body),
                    })
                })
                .collect(),
        )
    }

    fn clear(&self) -> usize {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let n = records.len();
        records.clear();
        n
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Provider {
    OpenAi,
    Anthropic,
    /// Azure OpenAI: `/openai/deployments/<deployment>/chat/completions?api-version=...`.
    Azure,
    /// Gemini: `/v1beta/models/<model>:generateContent` / `:streamGenerateContent`.
    Gemini,
    /// Bedrock: `/model/<model id>/converse` / `/converse-stream`.
    Bedrock,
    /// Cohere: `/v2/chat`.
    Cohere,
    /// Ollama: `/api/chat`.
    Ollama,
    /// Vertex AI: `/v1/projects/<p>/locations/<l>/publishers/<publisher>/models/<m>:<method>`.
    Vertex,
    /// An embeddings endpoint (OpenAI, Azure, Gemini, Cohere, Ollama).
    Embeddings(embeddings::Endpoint),
    /// Legacy text completions: `…/completions` (OpenAI) or Azure's deployment path.
    Completions(completions::Endpoint),
}

fn provider_error(
    state: &State,
    provider: Provider,
    status: StatusCode,
    message: &str,
) -> Response<MockBody> {
    match provider {
        Provider::OpenAi => openai::error(status, message, "invalid_request_error", None, None),
        Provider::Azure => azure::error(status, message),
        Provider::Gemini => gemini::error(status, message, None),
        Provider::Bedrock => bedrock::error(status, bedrock::error_type(status), message),
        Provider::Cohere => cohere::error(status, message),
        Provider::Ollama => ollama::error(status, message),
        Provider::Vertex => gemini::error(status, message, None),
        Provider::Completions(endpoint) => completions::error(endpoint, status, message),
        Provider::Embeddings(endpoint) => match endpoint {
            embeddings::Endpoint::OpenAi => {
                openai::error(status, message, "invalid_request_error", None, None)
            }
            embeddings::Endpoint::Azure => azure::error(status, message),
            embeddings::Endpoint::Gemini => gemini::error(status, message, None),
            embeddings::Endpoint::Cohere => cohere::error(status, message),
            embeddings::Endpoint::Ollama => ollama::error(status, message),
        },
        Provider::Anthropic => {
            let request_id = format!("req_mock_{}", state.next_id());
            anthropic::error(status, anthropic::error_type(status), message, &request_id)
        }
    }
}

fn not_found(method: &Method, path: &str) -> Response<MockBody> {
    openai::error(
        StatusCode::NOT_FOUND,
        &format!("Unknown request URL: {method} {path}. tollgate-mock serves POST .../chat/completions, POST .../v1/messages, POST /v1beta/models/<model>:generateContent (and :streamGenerateContent), POST /model/<model id>/converse (and /converse-stream), POST /v2/chat, POST /api/chat, the embeddings endpoints (…/embeddings, :batchEmbedContents, /v2/embed, /api/embed) and /_mock/* (requests, health, vertex, faults, calls)."),
        "invalid_request_error",
        None,
        Some("unknown_url"),
    )
}

async fn route(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, faults::NoResponse> {
    let path = req.uri().path();
    // Vertex first: its Gemini paths end like Gemini's own.
    let provider = if vertex::is_vertex_path(path) {
        Provider::Vertex
    } else if let Some(endpoint) = embeddings::endpoint_of(path) {
        Provider::Embeddings(endpoint)
    } else if let Some(endpoint) = completions::endpoint_of(path) {
        Provider::Completions(endpoint)
    } else if path.starts_with("/openai/deployments/") && path.ends_with("/chat/completions") {
        Provider::Azure
    } else if path.ends_with("/chat/completions") {
        Provider::OpenAi
    } else if path.ends_with("/v1/messages") {
        Provider::Anthropic
    } else if path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent") {
        Provider::Gemini
    } else if bedrock::is_bedrock_path(path) {
        Provider::Bedrock
    } else if path == "/v2/chat" {
        Provider::Cohere
    } else if path.ends_with(ollama::CHAT_PATH) {
        Provider::Ollama
    } else if path == "/token" && req.method() == Method::POST {
        // Not recorded: the requests log is the providers'.
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        return Ok(vertex::token(&state, &parts, &body));
    } else if faults::is_control_path(path) {
        // Not recorded either: control, not traffic.
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        return Ok(faults::control(
            &state.faults,
            &parts.method,
            parts.uri.path(),
            &body,
        ));
    } else {
        return Ok(mock_endpoint(&state, req.method(), path));
    };
    let (mut parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            state.record(&parts, &Bytes::new());
            return Ok(if too_large {
                provider_error(
                    &state,
                    provider,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request exceeds the maximum allowed number of bytes.",
                )
            } else {
                provider_error(
                    &state,
                    provider,
                    StatusCode::BAD_REQUEST,
                    "Could not read the request body.",
                )
            });
        }
    };
    state.record(&parts, &body);
    if parts.method != Method::POST {
        return Ok(provider_error(
            &state,
            provider,
            StatusCode::METHOD_NOT_ALLOWED,
            &format!(
                "Method {} is not allowed on {}; use POST.",
                parts.method,
                parts.uri.path()
            ),
        ));
    }
    // Counted (and faulted) by the upstream model that names the deployment.
    let model = faults::upstream_model(provider, &parts, &body);
    let fault = model
        .as_deref()
        .and_then(|model| state.faults.arrive(model));
    let mut cut = false;
    if let Some(fault) = fault {
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        match fault.outcome {
            faults::Outcome::Answer => {}
            faults::Outcome::Reset => return Err(faults::NoResponse),
            faults::Outcome::StreamCut => {
                parts.extensions.insert(faults::CutStream);
                cut = true;
            }
            faults::Outcome::Fail(failure) => {
                return Ok(faults::failure(
                    &state,
                    provider,
                    &parts,
                    &body,
                    model.as_deref().unwrap_or_default(),
                    failure,
                ));
            }
        }
    }
    let resp = match provider {
        Provider::OpenAi => openai::handle(&state, &parts, &body).await,
        Provider::Anthropic => anthropic::handle(&state, &parts, &body).await,
        Provider::Azure => azure::handle(&state, &parts, &body).await,
        Provider::Gemini => gemini::handle(&state, &parts, &body).await,
        Provider::Bedrock => bedrock::handle(&state, &parts, &body).await,
        Provider::Cohere => cohere::handle(&state, &parts, &body).await,
        Provider::Ollama => ollama::handle(&state, &parts, &body).await,
        Provider::Vertex => vertex::handle(&state, &parts, &body).await,
        Provider::Embeddings(endpoint) => embeddings::handle(&state, endpoint, &parts, &body).await,
        Provider::Completions(endpoint) => {
            completions::handle(&state, endpoint, &parts, &body).await
        }
    };
    // A refusal (bad key, bad body) goes out whole: only an answer is cut.
    Ok(if cut && resp.status().is_success() {
        resp.map(MockBody::cut_connection)
    } else {
        resp
    })
}

fn mock_endpoint(state: &State, method: &Method, path: &str) -> Response<MockBody> {
    match (method, path) {
        (&Method::GET, "/_mock/health") => common::response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            MockBody::full(Bytes::from_static(b"ok")),
        ),
        (&Method::GET, "/_mock/requests") => {
            common::json_response(StatusCode::OK, &state.records_json())
        }
        (&Method::GET, "/_mock/vertex") => common::json_response(
            StatusCode::OK,
            &json!({"tokens_issued": state.vertex_tokens.issued()}),
        ),
        (&Method::DELETE, "/_mock/requests") => {
            let cleared = state.clear();
            common::json_response(StatusCode::OK, &json!({"cleared": cleared}))
        }
        _ => not_found(method, path),
    }
}

/// Serves the mock on `listener` until the task is dropped or aborted. Accept errors (e.g. out
/// of file descriptors) are logged and retried; they do not end the server.
pub async fn serve(listener: TcpListener, config: MockConfig) -> anyhow::Result<()> {
    let state = Arc::new(State::new(config));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "tollgate-mock: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Latency matters more than packet count for a mock upstream.
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = service_fn(move |req| route(Arc::clone(&state), req));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "tollgate-mock: connection ended with an error");
            }
        });
    }
}

/// Binds `127.0.0.1:0`, serves the mock on a tokio task, and returns the bound address.
pub async fn spawn(config: MockConfig) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, config).await {
            tracing::error!(error = %e, "tollgate-mock stopped");
        }
    });
    Ok(addr)
}
