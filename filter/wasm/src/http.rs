//! Per-request glue: read what core needs from Envoy, apply what core decides.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};
use tollgate_core::auth::{authenticate, Caller, Credentials};
use tollgate_core::gateway::{classify, plan_chat_request_for, ROUTE_HEADER};
use tollgate_core::providers::{ChunkOutput, ResponseMode, TranslateContext};
use tollgate_core::request::empty_body_error;
use tollgate_core::snapshot::DEFAULT_MAX_REQUEST_BODY_BYTES;
use tollgate_core::{proto, Endpoint, GatewayError, RequestPlan, State};

use crate::host;
use crate::root::VmShared;

const JSON_HEADERS: [(&str, &str); 1] = [("content-type", "application/json")];

/// Where a request is in its life.
enum Phase {
    /// Not ours: Envoy's routes handle it.
    PassThrough,
    /// Chat request waiting for its body.
    AwaitingBody { state: Rc<State>, caller: Caller },
    /// Sent upstream.
    Upstream {
        plan: Box<RequestPlan>,
        caller: Caller,
        sent_ms: u64,
    },
    /// Answered by the gateway itself.
    Answered { status: u16 },
}

/// The request headers, taken in one host call: the filter reads a few of them and, for a
/// chat request, writes the upstream map back in one call too.
#[derive(Default)]
struct RequestHeaders {
    /// Every header as the host gave it.
    all: Vec<(String, String)>,
    /// Positions in [`Self::all`] of the headers the filter reads (the first of each name).
    method: Option<usize>,
    path: Option<usize>,
    authorization: Option<usize>,
    x_api_key: Option<usize>,
    api_key: Option<usize>,
    content_length: Option<usize>,
    request_id: Option<usize>,
    /// The client sent the routing header (it must be removed).
    route_header: bool,
}

impl RequestHeaders {
    fn read() -> Self {
        let mut headers = RequestHeaders {
            all: host::request_headers(),
            ..RequestHeaders::default()
        };
        for (at, (name, _)) in headers.all.iter().enumerate() {
            let slot = match name.as_str() {
                ":method" => &mut headers.method,
                ":path" => &mut headers.path,
                "authorization" => &mut headers.authorization,
                "x-api-key" => &mut headers.x_api_key,
                "api-key" => &mut headers.api_key,
                "content-length" => &mut headers.content_length,
                "x-request-id" => &mut headers.request_id,
                ROUTE_HEADER => {
                    headers.route_header = true;
                    continue;
                }
                _ => continue,
            };
            slot.get_or_insert(at);
        }
        headers
    }

    fn value(&self, at: Option<usize>) -> Option<&str> {
        self.all.get(at?).map(|(_, value)| value.as_str())
    }

    fn method(&self) -> &str {
        self.value(self.method).unwrap_or_default()
    }

    fn path(&self) -> &str {
        self.value(self.path).unwrap_or_default()
    }
}

/// One HTTP request.
pub struct TollgateHttp {
    shared: Rc<RefCell<VmShared>>,
    headers: RequestHeaders,
    phase: Phase,
    first_byte_ms: Option<u64>,
    stream_out: Vec<u8>,
}

impl TollgateHttp {
    /// A context for a new request.
    pub fn new(shared: Rc<RefCell<VmShared>>) -> Self {
        TollgateHttp {
            shared,
            headers: RequestHeaders::default(),
            phase: Phase::PassThrough,
            first_byte_ms: None,
            stream_out: Vec::new(),
        }
    }

    fn reject(&mut self, error: &GatewayError) -> Action {
        let status = error.status();
        host::send_response(status, JSON_HEADERS.to_vec(), &error.to_json());
        self.phase = Phase::Answered { status };
        Action::Pause
    }

    fn body_limit(&self, state: Option<&State>) -> u64 {
        match state {
            Some(state) => state.max_request_body_bytes,
            None => self
                .shared
                .borrow()
                .config
                .max_request_body_bytes
                .unwrap_or(DEFAULT_MAX_REQUEST_BODY_BYTES),
        }
    }

    fn start_chat(&mut self, end_of_stream: bool) -> Action {
        let Some(state) = self.shared.borrow().state.clone() else {
            return self.reject(&GatewayError::NotReady);
        };
        let caller = match authenticate_request(&state, &self.headers) {
            Ok(caller) => caller,
            Err(error) => return self.reject(&error),
        };
        let limit = self.body_limit(Some(&state));
        let announced = self.headers.value(self.headers.content_length);
        if let Some(length) = announced.and_then(|v| v.trim().parse::<u64>().ok()) {
            if length > limit {
                return self.reject(&GatewayError::BodyTooLarge {
                    size: length,
                    limit,
                });
            }
        }
        if end_of_stream {
            return self.reject(&empty_body_error());
        }
        self.phase = Phase::AwaitingBody { state, caller };
        Action::Pause
    }

    fn send_upstream(&mut self, state: &State, caller: Caller, body_size: usize) -> Action {
        let body = host::body(BufferType::HttpRequestBody, body_size);
        let now_ms = host::now_ms();
        let context = TranslateContext {
            now_unix: now_ms / 1000,
        };
        let plan = match plan_chat_request_for(state, &caller, &body, &context) {
            Ok(plan) => plan,
            Err(error) => return self.reject(&error),
        };
        host::set_request_headers(plan.upstream_headers(&self.headers.all));
        host::replace_body(BufferType::HttpRequestBody, body_size, &plan.body);
        self.phase = Phase::Upstream {
            plan: Box::new(plan),
            caller,
            sent_ms: now_ms,
        };
        Action::Continue
    }

    fn record_finished(&mut self) {
        let mut shared = self.shared.borrow_mut();
        match &self.phase {
            Phase::Answered { status } => {
                shared.count_gateway_answer(*status);
            }
            Phase::Upstream {
                plan,
                caller,
                sent_ms,
            } => {
                let deployment = &plan.deployment;
                let status = match plan.response.status() {
                    0 => 502,
                    status => status,
                };
                let usage = plan.response.usage();
                let now = host::now_ms();
                let first_byte_after = self
                    .first_byte_ms
                    .map(|first| first.saturating_sub(*sent_ms));
                shared.record_upstream(
                    deployment,
                    status,
                    &usage,
                    now.saturating_sub(*sent_ms),
                    first_byte_after,
                );
                let id = match self.headers.value(self.headers.request_id) {
                    Some(id) => id.to_string(),
                    None => format!("{}-{now}", deployment.id),
                };
                shared.queue_usage(proto::UsageRecord {
                    id,
                    model_name: deployment.model_name.clone(),
                    deployment_id: deployment.id.clone(),
                    provider: deployment.provider_name.clone(),
                    status: u32::from(status),
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    cached_prompt_tokens: usage.cached_prompt_tokens,
                    started_unix_ms: *sent_ms,
                    duration_ms: now.saturating_sub(*sent_ms),
                    stream: plan.stream,
                    key_hash: caller.key_hash.clone(),
                });
            }
            Phase::PassThrough | Phase::AwaitingBody { .. } => {}
        }
    }
}

fn authenticate_request(state: &State, headers: &RequestHeaders) -> Result<Caller, GatewayError> {
    authenticate(
        state,
        Credentials {
            authorization: headers.value(headers.authorization),
            x_api_key: headers.value(headers.x_api_key),
            api_key: headers.value(headers.api_key),
        },
        host::now_ms(),
    )
}

impl Context for TollgateHttp {}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.headers = RequestHeaders::read();
        // Only the filter may choose an upstream cluster.
        if self.headers.route_header {
            host::set_request_header(ROUTE_HEADER, None);
        }
        match classify(self.headers.method(), self.headers.path()) {
            Endpoint::Other => Action::Continue,
            Endpoint::WrongMethod => {
                let method = self.headers.method().to_string();
                let path = self
                    .headers
                    .path()
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                self.reject(&GatewayError::MethodNotAllowed { method, path })
            }
            Endpoint::Models => {
                let Some(state) = self.shared.borrow().state.clone() else {
                    return self.reject(&GatewayError::NotReady);
                };
                let caller = match authenticate_request(&state, &self.headers) {
                    Ok(caller) => caller,
                    Err(error) => return self.reject(&error),
                };
                match &caller.key {
                    Some(key) if !key.models.is_empty() => {
                        host::send_response(200, JSON_HEADERS.to_vec(), &state.models_json_for(key))
                    }
                    _ => host::send_response(200, JSON_HEADERS.to_vec(), state.models_json()),
                }
                self.phase = Phase::Answered { status: 200 };
                Action::Pause
            }
            Endpoint::ChatCompletions => self.start_chat(end_of_stream),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Phase::AwaitingBody { state, .. } = &self.phase else {
            return Action::Continue;
        };
        let state = state.clone();
        let limit = self.body_limit(Some(&state));
        if body_size as u64 > limit {
            return self.reject(&GatewayError::BodyTooLarge {
                size: body_size as u64,
                limit,
            });
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let Phase::AwaitingBody { caller, .. } =
            std::mem::replace(&mut self.phase, Phase::PassThrough)
        else {
            return Action::Continue;
        };
        self.send_upstream(&state, caller, body_size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Phase::Upstream { plan, .. } = &mut self.phase else {
            return Action::Continue;
        };
        let headers = host::response_headers();
        let header = |wanted: &str| {
            headers
                .iter()
                .find(|(name, _)| name == wanted)
                .map(|(_, value)| value.as_str())
        };
        let status = header(":status")
            .and_then(|value| value.parse::<u16>().ok())
            .unwrap_or(502);
        let mode = plan.response.on_headers(status, header("content-type"));
        if end_of_stream {
            return Action::Continue;
        }
        if plan.response.drops_content_length() {
            host::set_response_header("content-length", None);
        }
        match mode {
            // Held so a translated error can still change status and content type.
            ResponseMode::Buffer => Action::Pause,
            ResponseMode::Stream => Action::Continue,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Phase::Upstream { plan, .. } = &mut self.phase else {
            return Action::Continue;
        };
        // Time to first byte only means something for streams; a buffered answer's first
        // byte is not what the client waits for, and the clock is a host call.
        if plan.stream && self.first_byte_ms.is_none() && body_size > 0 {
            self.first_byte_ms = Some(host::now_ms());
        }
        match plan.response.mode() {
            ResponseMode::Buffer => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let body = host::body(BufferType::HttpResponseBody, body_size);
                let completed = plan.response.on_complete_body(&body);
                if let Some(status) = completed.status {
                    host::set_response_header(":status", Some(&status.to_string()));
                }
                if let Some(new_body) = completed.body {
                    host::set_response_header("content-type", Some("application/json"));
                    host::replace_body(BufferType::HttpResponseBody, body_size, &new_body);
                }
                Action::Continue
            }
            ResponseMode::Stream => {
                let chunk = host::body(BufferType::HttpResponseBody, body_size);
                self.stream_out.clear();
                if plan
                    .response
                    .on_stream_chunk(&chunk, end_of_stream, &mut self.stream_out)
                    == ChunkOutput::Replaced
                {
                    host::replace_body(BufferType::HttpResponseBody, body_size, &self.stream_out);
                }
                Action::Continue
            }
        }
    }

    fn on_log(&mut self) {
        self.record_finished();
    }
}
