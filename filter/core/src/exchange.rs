//! One HTTP exchange through the filter, as a state machine both glues drive: the proxy-wasm
//! filter (`tollgate-filter`) and the native Envoy dynamic module (`tollgate-native`). Each
//! glue reads what an event needs from Envoy, calls the matching `on_*` method with its
//! [`Host`], and turns the returned [`Verdict`] into its ABI's status code.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use crate::auth::{authenticate, Caller, Credentials};
use crate::budget::{check_budgets, SoftBudgetCrossed};
use crate::completions::{plan_completion_request_to, summarize_completion_request};
use crate::error::error_type_for_status;
use crate::gateway::{
    attempt_timeout_header, classify, direct_attempt_headers, plan_chat_request_to, relay_plan,
    Relayed, ROUTE_HEADER,
};
use crate::pricing::cost_header_value;
use crate::providers::embeddings::{parse_embeddings_request, plan_embeddings_request_to};
use crate::providers::{ChunkOutput, ResponseMode, TranslateContext};
use crate::ratelimit::{estimate_tokens, needs_of, Admission, Need, QuotaBook, RateHeaders};
use crate::request::{empty_body_error, summarize_chat_request, RequestRouting};
use crate::routing::attempts::{
    Chooser, LedgerEntry, RoutePlan, Routing, ATTEMPT_HEADER, RETRY_AFTER_HEADER, RETRY_HEADER,
};
use crate::routing::{AttemptReport, ErrorClass};
use crate::usage::{RecordIds, TokenCounts, Usage};
use crate::{proto, Endpoint, GatewayError, RequestPlan, State};

/// What the exchange asks of Envoy. Reads that several decisions share (the request headers,
/// the response's status and content type) are passed to the `on_*` methods instead, so each
/// glue reads them the cheapest way its ABI allows.
pub trait Host {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&mut self) -> u64;
    /// Removes a request header.
    fn remove_request_header(&mut self, name: &str);
    /// Answers the request locally with a JSON body and `headers` (besides its content type).
    fn send_json_response(&mut self, status: u16, headers: &[(&'static str, String)], body: &[u8]);
    /// The whole buffered request body (`size` bytes).
    fn request_body(&mut self, size: usize) -> Cow<'_, [u8]>;
    /// Rewrites the request for its upstream: headers as [`RequestPlan::upstream_headers`]
    /// describes (only the client headers [`RequestPlan::drops_client_header`] keeps, then the
    /// plan's), body replaced by [`RequestPlan::body`], route recomputed.
    fn write_upstream_request(&mut self, plan: &RequestPlan, body_size: usize);
    /// Removes a response header.
    fn remove_response_header(&mut self, name: &str);
    /// Sets a response header.
    fn set_response_header(&mut self, name: &str, value: &str);
    /// The response body received so far (`size` bytes): all of it when buffered, the newest
    /// chunk when streaming.
    fn response_body(&mut self, size: usize) -> Cow<'_, [u8]>;
    /// Replaces the response body received so far (`size` bytes) with `body`.
    fn replace_response_body(&mut self, size: usize, body: &[u8]);
    /// What `scope`/`id` has spent in its current budget window, as this filter knows it
    /// (the spend the control plane pushed plus this filter's charges since: see
    /// [`crate::spend::SpendBook`]). Only asked for scopes that have a budget.
    fn spend(&mut self, scope: proto::BudgetScope, id: &str, now_ms: u64) -> f64;
    /// Takes `needs` from this filter's rate-limit leases ([`QuotaBook::admit`], on the book
    /// the filter's workers share), and sends the asks for the authority that it made. On
    /// [`Admission::Wait`] the glue calls [`Exchange::on_quota`] again once the authority
    /// answered (or [`crate::ratelimit::AUTHORITY_WAIT_MS`] passed). Only called for
    /// requests that are rate limited.
    fn admit(&mut self, needs: &[Need], now_ms: u64) -> Admission;
}

/// The response header that carries a buffered response's cost, in US dollars (LiteLLM's
/// name, which its users' tooling reads).
pub const COST_HEADER: &str = "x-litellm-response-cost";
/// The same cost under Tollgate's own name.
pub const TOLLGATE_COST_HEADER: &str = "x-tollgate-response-cost";
/// Set when a soft budget of the request is crossed; the value names the scope (`key`,
/// `key_model`, `user`, `team`, `end_user`, `global`).
pub const SOFT_BUDGET_HEADER: &str = "x-tollgate-soft-budget-exceeded";

/// Response header naming the deployment that answered (LiteLLM's name).
pub const MODEL_ID_HEADER: &str = "x-litellm-model-id";
/// Response header with that deployment's base URL (LiteLLM's name).
pub const MODEL_API_BASE_HEADER: &str = "x-litellm-model-api-base";
/// Response header with the retries the request took (within model groups).
pub const ATTEMPTED_RETRIES_HEADER: &str = "x-litellm-attempted-retries";
/// Response header with the fallbacks the request took (to other model groups).
pub const ATTEMPTED_FALLBACKS_HEADER: &str = "x-litellm-attempted-fallbacks";

/// The attempt of relayed request `key` failed with `class`: whether another attempt
/// follows (its deployment is then the plan's current one), and how long Envoy should wait
/// before it, in milliseconds.
fn another_attempt(
    routing: &Option<Arc<Mutex<Routing>>>,
    state: &State,
    key: &str,
    class: ErrorClass,
    now_ms: u64,
) -> Option<u64> {
    with_plan(routing, state, key, now_ms, |plan, chooser| {
        plan.next(class, chooser)?;
        Some(plan.backoff_ms(&state.router))
    })
}

/// Runs `step` on the plan of relayed request `key` with a chooser over this filter's
/// routing view (under its lock); `None` when the request has no open ledger entry.
fn with_plan<R>(
    routing: &Option<Arc<Mutex<Routing>>>,
    state: &State,
    key: &str,
    now_ms: u64,
    step: impl FnOnce(&mut RoutePlan, &mut Chooser<'_>) -> Option<R>,
) -> Option<R> {
    with_routing(routing, now_ms, |routing| {
        let Routing {
            book,
            ledger,
            shuffler,
            ..
        } = routing;
        let LedgerEntry {
            plan,
            tags,
            estimated_tokens,
            stream,
            ..
        } = ledger.get_mut(key)?;
        let mut chooser = Chooser {
            state,
            book,
            shuffler,
            now_ms,
            tags,
            estimated_tokens: *estimated_tokens,
            stream: *stream,
        };
        step(plan, &mut chooser)
    })
}

/// Marks a failed attempt's answer for Envoy's retry policy on the attempts route: another
/// attempt follows, after `backoff_ms` (sent in whole seconds, rounded up: the granularity
/// of Envoy's rate-limit reset headers).
fn mark_for_retry(host: &mut impl Host, backoff_ms: u64) {
    for (name, value) in retry_marks(backoff_ms) {
        host.set_response_header(name, &value);
    }
}

/// The response headers of [`mark_for_retry`].
fn retry_marks(backoff_ms: u64) -> impl Iterator<Item = (&'static str, String)> {
    let wait =
        (backoff_ms > 0).then(|| (RETRY_AFTER_HEADER, backoff_ms.div_ceil(1000).to_string()));
    std::iter::once((RETRY_HEADER, "1".to_string())).chain(wait)
}

/// The `code` and `message` of an OpenAI-shaped error body (what the gateway's
/// translators answer).
fn error_code_and_message(body: &[u8]) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: ErrorFields,
    }
    #[derive(serde::Deserialize)]
    struct ErrorFields {
        #[serde(default)]
        code: Option<serde_json::Value>,
        #[serde(default)]
        message: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => (
            parsed.error.code.and_then(|code| match code {
                serde_json::Value::String(code) => Some(code),
                _ => None,
            }),
            parsed.error.message.unwrap_or_default(),
        ),
        Err(_) => (None, String::new()),
    }
}

/// What the glue tells Envoy after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the event on.
    Continue,
    /// Hold it (buffer a body, or stop after a local answer).
    Pause,
}

/// The request headers the filter reads, found in one pass over the header map.
///
/// Header bytes come from the client and are untrusted: they are read as bytes, and a value
/// the filter needs that is not UTF-8 is remembered in [`Self::invalid`] (answered 400 on the
/// gateway's endpoints) instead of being guessed at.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestHeaders<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path` (up to its first byte that is not UTF-8, see [`Self::invalid`]).
    pub path: &'a str,
    /// `authorization`.
    pub authorization: Option<&'a str>,
    /// `x-api-key`.
    pub x_api_key: Option<&'a str>,
    /// `api-key`.
    pub api_key: Option<&'a str>,
    /// `content-length`.
    pub content_length: Option<&'a str>,
    /// `x-request-id` (dropped when not UTF-8: it only labels the usage record).
    pub request_id: Option<&'a str>,
    /// `x-litellm-tags`, comma-separated request tags (dropped when not UTF-8: they only
    /// label the usage record).
    pub tags: Option<&'a str>,
    /// Whether the client sent [`ROUTE_HEADER`], which only the filter may set.
    pub route_header: bool,
    /// [`ATTEMPT_HEADER`]: the ledger key of a request relayed through the attempts route
    /// (trusted only when it names an open entry).
    pub attempt: Option<&'a str>,
    /// The first header the filter reads whose value is not UTF-8.
    pub invalid: Option<&'static str>,
}

impl<'a> RequestHeaders<'a> {
    /// Picks the headers the filter reads out of every `(name, value)` pair, as bytes (the
    /// first of each name wins).
    pub fn scan(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut headers = RequestHeaders::default();
        let mut method = None;
        let mut path = None;
        for (name, value) in pairs {
            let (slot, name) = match name {
                b":method" => (&mut method, ":method"),
                b":path" => {
                    if path.is_none() {
                        path = Some(headers.utf8_prefix(":path", value));
                    }
                    continue;
                }
                b"authorization" => (&mut headers.authorization, "authorization"),
                b"x-api-key" => (&mut headers.x_api_key, "x-api-key"),
                b"api-key" => (&mut headers.api_key, "api-key"),
                b"content-length" => (&mut headers.content_length, "content-length"),
                b"x-request-id" => {
                    if headers.request_id.is_none() {
                        headers.request_id = std::str::from_utf8(value).ok();
                    }
                    continue;
                }
                b"x-litellm-tags" => {
                    if headers.tags.is_none() {
                        headers.tags = std::str::from_utf8(value).ok();
                    }
                    continue;
                }
                name if name == ROUTE_HEADER.as_bytes() => {
                    headers.route_header = true;
                    continue;
                }
                name if name == ATTEMPT_HEADER.as_bytes() => {
                    if headers.attempt.is_none() {
                        headers.attempt = std::str::from_utf8(value).ok();
                    }
                    continue;
                }
                _ => continue,
            };
            if slot.is_some() {
                continue;
            }
            match std::str::from_utf8(value) {
                Ok(text) => *slot = Some(text),
                Err(_) => {
                    headers.invalid.get_or_insert(name);
                }
            }
        }
        headers.method = method.unwrap_or_default();
        headers.path = path.unwrap_or_default();
        headers
    }

    /// The longest UTF-8 prefix of `value`; marks `name` invalid when that is not all of it
    /// (so a path still classifies, and is then refused, instead of slipping past the filter).
    fn utf8_prefix(&mut self, name: &'static str, value: &'a [u8]) -> &'a str {
        match std::str::from_utf8(value) {
            Ok(text) => text,
            Err(error) => {
                self.invalid.get_or_insert(name);
                value
                    .get(..error.valid_up_to())
                    .and_then(|valid| std::str::from_utf8(valid).ok())
                    .unwrap_or_default()
            }
        }
    }

    fn credentials(&self) -> Credentials<'a> {
        Credentials {
            authorization: self.authorization,
            x_api_key: self.x_api_key,
            api_key: self.api_key,
        }
    }
}

/// Where an exchange is in its life.
#[derive(Default)]
enum Phase {
    /// Not ours: Envoy's routes handle it.
    #[default]
    PassThrough,
    /// Chat, completions or embeddings request waiting for its body.
    AwaitingBody {
        state: Arc<State>,
        caller: Caller,
        endpoint: Endpoint,
        /// The ledger key of an attempt of a relayed request (the gateway's listener
        /// authenticated it and checked its limits already).
        attempt: Option<String>,
    },
    /// Planned, waiting for a rate-limit lease from the authority.
    AwaitingQuota(Box<Admitting>),
    /// Sent upstream.
    Upstream {
        plan: Box<RequestPlan>,
        /// The snapshot it was planned with (its router settings judge the answer).
        state: Arc<State>,
        /// Straight to the provider, relayed through the attempts route, or one attempt.
        role: Role,
        caller: Caller,
        sent_ms: u64,
        /// Largest buffered response body the gateway holds (the snapshot's).
        max_response_body_bytes: u64,
        /// The buffered response went over that limit: the client got a 502 instead, and
        /// the rest of the provider's body is dropped as it comes.
        response_too_large: bool,
        /// A soft budget the request crossed, for the response header.
        soft_budget: SoftBudgetCrossed,
        /// The rate-limit counters it took from (settled when it ends).
        quota: Vec<Need>,
        /// The `x-ratelimit-*` headers of its answer.
        rate_headers: Option<RateHeaders>,
    },
    /// Answered by the gateway itself.
    Answered {
        status: u16,
        /// What the refusal's record says; `None` for an answer that is not a refusal of
        /// a request to a model (the model list).
        refusal: Option<Box<Refusal>>,
    },
}

/// How a request that went upstream reached its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// Sent straight to its only possible deployment (Envoy retries it there).
    Direct,
    /// Sent through the attempts route under this ledger key; the answer that comes back
    /// is an attempt's, already translated.
    Relay(String),
    /// One attempt of a relayed request, under this ledger key.
    Attempt(String),
}

/// What routing needs of a request, whatever its endpoint.
struct RouteRequest<'a> {
    /// The model group it names.
    model: &'a str,
    /// Its own routing parameters (chat's `fallbacks`, `num_retries`, ...).
    own: &'a RequestRouting,
    /// Its `metadata.tags` (the header's are added).
    tags: Vec<String>,
    /// Whether the client asked for a stream.
    stream: bool,
    /// Its estimated tokens.
    estimated_tokens: u64,
}

/// Where a request goes first.
enum Routed {
    /// Straight to its one possible deployment, retried there by Envoy (with the request's
    /// own num_retries, when it gives one).
    Direct {
        first: Arc<crate::snapshot::Deployment>,
        own_retries: Option<u32>,
    },
    /// Through the attempts route, under this ledger key.
    Relayed {
        first: Arc<crate::snapshot::Deployment>,
        key: String,
    },
}

/// One attempt of a relayed request, as it reached the attempts listener.
struct AttemptRequest {
    /// Its ledger key.
    key: String,
    /// The endpoint the relaying side sent it to (the client's).
    endpoint: Endpoint,
    /// Its body's size.
    body_size: usize,
}

/// The plan of a request [`Exchange::route`] routed (`summary` is what its endpoint read
/// of its body): relayed through the attempts route, or translated by `direct` for its one
/// deployment, with Envoy's headers to retry it there.
fn routed_plan<S>(
    state: &State,
    routed: Routed,
    summary: S,
    body_size: usize,
    relayed: impl FnOnce(&S) -> Relayed,
    direct: impl FnOnce(Arc<crate::snapshot::Deployment>, S) -> Result<RequestPlan, GatewayError>,
) -> Result<(RequestPlan, Role), GatewayError> {
    match routed {
        Routed::Relayed { first, key } => {
            let plan = relay_plan(first, relayed(&summary), body_size, key.clone());
            Ok((plan, Role::Relay(key)))
        }
        Routed::Direct { first, own_retries } => {
            let mut plan = direct(first, summary)?;
            let stream = plan.stream;
            direct_attempt_headers(
                &state.router,
                &plan.deployment,
                own_retries,
                stream,
                &mut plan.headers,
            );
            Ok((plan, Role::Direct))
        }
    }
}

/// Translates the client's body of one attempt for `deployment`, the one its plan chose:
/// the answer carries the usage chunk for the relaying side, and the attempt gets the
/// deployment's timeout.
fn plan_attempt(
    state: &State,
    endpoint: Endpoint,
    deployment: Arc<crate::snapshot::Deployment>,
    body: &[u8],
    context: &TranslateContext,
) -> Result<RequestPlan, GatewayError> {
    let mut plan = match endpoint {
        Endpoint::Embeddings => {
            let request = parse_embeddings_request(body)?;
            plan_embeddings_request_to(state, deployment, &request, body, context)?
        }
        Endpoint::Completions => {
            let mut summary = summarize_completion_request(body)?;
            summary.usage_to_gateway = true;
            plan_completion_request_to(state, deployment, summary, body, context)?
        }
        _ => {
            let mut summary = summarize_chat_request(body)?;
            summary.usage_to_gateway = true;
            plan_chat_request_to(state, deployment, summary, body, context)?
        }
    };
    let stream = plan.stream;
    attempt_timeout_header(&state.router, &plan.deployment, stream, &mut plan.headers);
    Ok(plan)
}

/// A planned request on its way through the rate limits.
struct Admitting {
    state: Arc<State>,
    caller: Caller,
    role: Role,
    plan: RequestPlan,
    body_size: usize,
    soft_budget: SoftBudgetCrossed,
    needs: Vec<Need>,
    /// What the needs were estimated from (they are taken again for another deployment).
    estimated_tokens: u64,
}

/// What the usage record of a request the gateway refused says.
struct Refusal {
    error_type: &'static str,
    caller: Option<Caller>,
    model: String,
    end_user: String,
}

/// One request and its response.
#[derive(Default)]
pub struct Exchange {
    phase: Phase,
    request_id: Option<String>,
    /// The `x-litellm-tags` header's tags.
    header_tags: Vec<String>,
    /// When the request's headers arrived.
    started_ms: u64,
    /// A request to a model (`/v1/chat/completions`): its refusal has a usage record; a
    /// refused model listing has none.
    model_request: bool,
    first_byte_ms: Option<u64>,
    stream_out: Vec<u8>,
    /// The routing state the filter shares across requests (`None`: a fresh one per
    /// request, as in tests).
    routing: Option<Arc<Mutex<Routing>>>,
    /// Whether Envoy has the attempts route and listener (the plugin configuration says).
    attempts_route: bool,
    /// The ledger key of a request this exchange relays (closed when it ends).
    relay_key: Option<String>,
    /// The failure of this attempt, once judged.
    failure: Option<ErrorClass>,
    /// The provider's error message, for the health report.
    error_message: String,
}

/// How an exchange ended, for metrics and the control plane's usage records.
// Built once per request on the stack and consumed at once: boxing the big variant would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Outcome<'a> {
    /// The gateway answered (refused, listed models, ...).
    Answered {
        /// Status sent.
        status: u16,
        /// The usage record of a refused request (`None` for the model list).
        record: Option<proto::UsageRecord>,
    },
    /// The request went upstream.
    Upstream(UpstreamOutcome<'a>),
    /// The request was relayed through the attempts route: each attempt recorded its own
    /// usage; what is left is to give back the request's rate-limit quota.
    Relayed(RelayedOutcome<'a>),
}

/// A finished relayed request.
pub struct RelayedOutcome<'a> {
    /// Tokens the answer reported (as the attempt that answered translated them).
    pub usage: Usage,
    /// The rate-limit counters the request took from.
    pub quota: &'a [Need],
}

impl RelayedOutcome<'_> {
    /// Gives back to `book` what the request held of it (see
    /// [`UpstreamOutcome::settle_quota`]).
    pub fn settle_quota(&self, book: &mut QuotaBook, now_ms: u64) {
        settle(self.quota, &self.usage, book, now_ms);
    }
}

/// Gives back parallel slots and the difference between the estimate and `usage`.
fn settle(quota: &[Need], usage: &Usage, book: &mut QuotaBook, now_ms: u64) {
    if quota.is_empty() {
        return;
    }
    book.settle(quota, usage.reported_tokens(), now_ms);
}

/// A finished upstream exchange.
pub struct UpstreamOutcome<'a> {
    /// The plan it was sent with (deployment, stream flag).
    pub plan: &'a RequestPlan,
    /// Status the client saw (502 when the upstream never answered, or answered more than
    /// the gateway buffers).
    pub status: u16,
    /// The buffered answer went over `max_response_body_bytes` and was refused.
    pub response_too_large: bool,
    /// Tokens the provider reported.
    pub usage: Usage,
    /// Milliseconds from sending upstream to the end.
    pub upstream_ms: u64,
    /// Milliseconds from sending upstream to the first response byte of a stream.
    pub first_byte_ms: Option<u64>,
    /// The record the control plane prices and stores.
    pub record: proto::UsageRecord,
    /// The rate-limit counters the request took from.
    pub quota: &'a [Need],
}

impl UpstreamOutcome<'_> {
    /// Gives back to `book` what the request held of it: parallel slots, and the
    /// difference between its token estimate and the tokens the provider reported.
    pub fn settle_quota(&self, book: &mut QuotaBook, now_ms: u64) {
        settle(self.quota, &self.usage, book, now_ms);
    }

    /// What this response adds to the token counters.
    pub fn token_counts(&self) -> TokenCounts {
        TokenCounts::of_response(self.status, &self.usage)
    }
}

impl Exchange {
    /// A new exchange.
    pub fn new() -> Self {
        Exchange::default()
    }

    /// A new exchange routing with the filter's shared `routing` state; `attempts_route`
    /// says whether Envoy has the attempts route and listener (without them a request
    /// goes to one deployment, retried there by Envoy).
    pub fn with_routing(routing: Arc<Mutex<Routing>>, attempts_route: bool) -> Self {
        Exchange {
            routing: Some(routing),
            attempts_route,
            ..Exchange::default()
        }
    }

    /// Whether a chat request is waiting for its body (so body events are the filter's).
    pub fn awaits_body(&self) -> bool {
        matches!(self.phase, Phase::AwaitingBody { .. })
    }

    /// Whether the request waits for a rate-limit lease (the glue calls [`Self::on_quota`]
    /// when the authority answers).
    pub fn awaits_quota(&self) -> bool {
        matches!(self.phase, Phase::AwaitingQuota(_))
    }

    /// Whether the request went upstream (so the response is the filter's to translate).
    pub fn is_upstream(&self) -> bool {
        matches!(self.phase, Phase::Upstream { .. })
    }

    fn reject(&mut self, host: &mut impl Host, error: &GatewayError) -> Verdict {
        self.refuse(host, error, None, String::new(), String::new())
    }

    /// Refuses the request with `error`, remembering for its usage record who made it
    /// (when known) and for which model.
    fn refuse(
        &mut self,
        host: &mut impl Host,
        error: &GatewayError,
        caller: Option<Caller>,
        model: String,
        end_user: String,
    ) -> Verdict {
        self.refuse_with(host, error, &[], caller, model, end_user)
    }

    /// [`Self::refuse`], with response headers.
    fn refuse_with(
        &mut self,
        host: &mut impl Host,
        error: &GatewayError,
        headers: &[(&'static str, String)],
        caller: Option<Caller>,
        model: String,
        end_user: String,
    ) -> Verdict {
        let status = error.status();
        host.send_json_response(status, headers, &error.to_json());
        let refusal = self.model_request.then(|| {
            Box::new(Refusal {
                error_type: error.error_type(),
                caller,
                model,
                end_user,
            })
        });
        self.phase = Phase::Answered { status, refusal };
        Verdict::Pause
    }

    fn answer(&mut self, host: &mut impl Host, status: u16, body: &[u8]) -> Verdict {
        host.send_json_response(status, &[], body);
        self.phase = Phase::Answered {
            status,
            refusal: None,
        };
        Verdict::Pause
    }

    /// The request headers arrived. `state` is the newest snapshot, if one has.
    pub fn on_request_headers(
        &mut self,
        host: &mut impl Host,
        state: Option<&Arc<State>>,
        headers: &RequestHeaders<'_>,
        end_of_stream: bool,
    ) -> Verdict {
        if headers.route_header {
            host.remove_request_header(ROUTE_HEADER);
        }
        let endpoint = classify(headers.method, headers.path);
        if endpoint == Endpoint::Other {
            return Verdict::Continue;
        }
        if let Some(key) = headers.attempt {
            let now_ms = host.now_ms();
            let entry = with_routing(&self.routing, now_ms, |routing| {
                routing.ledger.get(key).map(|entry| {
                    (
                        entry.caller.clone(),
                        entry.request_id.clone(),
                        entry.header_tags.clone(),
                        Arc::clone(&entry.state),
                    )
                })
            });
            // A key that names no open entry is a client's guess: the request is treated as
            // any other (and the header goes nowhere: it is not forwarded upstream).
            if let Some((caller, request_id, header_tags, state)) = entry {
                self.request_id = request_id;
                self.header_tags = header_tags;
                self.model_request = true;
                self.started_ms = now_ms;
                self.phase = Phase::AwaitingBody {
                    state,
                    caller,
                    endpoint,
                    attempt: Some(key.to_string()),
                };
                return Verdict::Pause;
            }
        }
        self.request_id = headers.request_id.map(str::to_string);
        self.model_request = matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Embeddings | Endpoint::Completions
        );
        if let Some(tags) = headers.tags {
            add_tags(&mut self.header_tags, tags.split(',').map(str::trim));
        }
        if let Some(name) = headers.invalid {
            return self.reject(host, &GatewayError::InvalidHeader { name });
        }
        if endpoint == Endpoint::WrongMethod {
            let error = GatewayError::MethodNotAllowed {
                method: headers.method.to_string(),
                path: headers
                    .path
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            };
            return self.reject(host, &error);
        }
        match (endpoint, state) {
            // Neither needs a key: orchestrators probe them without one (as LiteLLM's).
            (Endpoint::Liveliness, _) => return self.answer(host, 200, br#""I'm alive!""#),
            (Endpoint::Readiness, Some(state)) => {
                let body = crate::routing::readiness_json(Some(state.version));
                return self.answer(host, 200, &body);
            }
            (Endpoint::Readiness, None) => {
                let body = crate::routing::readiness_json(None);
                return self.answer(host, 503, &body);
            }
            _ => {}
        }
        let Some(state) = state else {
            return self.reject(host, &GatewayError::NotReady);
        };
        let now_ms = host.now_ms();
        self.started_ms = now_ms;
        let caller = match authenticate(state, headers.credentials(), now_ms) {
            Ok(caller) => caller,
            Err(error) => return self.reject(host, &error),
        };
        if endpoint == Endpoint::Health {
            if caller.key.is_some() {
                return self.reject(host, &GatewayError::AdminOnly("/health"));
            }
            let body = with_routing(&self.routing, now_ms, |routing| {
                crate::routing::health_json(state, &routing.book, now_ms, routing.started_ms)
            });
            return self.answer(host, 200, &body);
        }
        if endpoint == Endpoint::Models {
            return match &caller.key {
                Some(key) if !key.models.is_empty() => {
                    self.answer(host, 200, &state.models_json_for(key))
                }
                _ => self.answer(host, 200, state.models_json()),
            };
        }
        let limit = state.max_request_body_bytes;
        let announced = headers
            .content_length
            .and_then(|value| value.trim().parse::<u64>().ok());
        if let Some(size) = announced.filter(|size| *size > limit) {
            let error = GatewayError::BodyTooLarge { size, limit };
            return self.refuse(host, &error, Some(caller), String::new(), String::new());
        }
        if end_of_stream {
            return self.refuse(
                host,
                &empty_body_error(),
                Some(caller),
                String::new(),
                String::new(),
            );
        }
        self.phase = Phase::AwaitingBody {
            state: state.clone(),
            caller,
            endpoint,
            attempt: None,
        };
        Verdict::Pause
    }

    /// Request body bytes arrived; `body_size` is all that is buffered so far.
    pub fn on_request_body(
        &mut self,
        host: &mut impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Verdict {
        let Phase::AwaitingBody { state, caller, .. } = &self.phase else {
            return Verdict::Continue;
        };
        let limit = state.max_request_body_bytes;
        let size = u64::try_from(body_size).unwrap_or(u64::MAX);
        if size > limit {
            let caller = Some(caller.clone());
            let error = GatewayError::BodyTooLarge { size, limit };
            return self.refuse(host, &error, caller, String::new(), String::new());
        }
        if !end_of_stream {
            return Verdict::Pause;
        }
        let Phase::AwaitingBody {
            state,
            caller,
            endpoint,
            attempt,
        } = std::mem::take(&mut self.phase)
        else {
            return Verdict::Continue;
        };
        let now_ms = host.now_ms();
        let context = TranslateContext {
            now_unix: now_ms / 1000,
        };
        if let Some(key) = attempt {
            let request = AttemptRequest {
                key,
                endpoint,
                body_size,
            };
            return self.send_attempt(host, state, caller, request, now_ms, &context);
        }
        let planned = {
            let body = host.request_body(body_size);
            match endpoint {
                Endpoint::Embeddings => {
                    self.plan_embeddings(&state, &caller, &body, &context, now_ms)
                }
                Endpoint::Completions => {
                    self.plan_completion(&state, &caller, &body, &context, now_ms)
                }
                _ => self.plan_chat(&state, &caller, &body, &context, now_ms),
            }
        };
        let (plan, estimated_tokens, role) = match planned {
            Ok(planned) => planned,
            Err(error) => {
                return self.refuse(host, &error, Some(caller), String::new(), String::new())
            }
        };
        let model = &plan.deployment.model_name;
        let budgets = check_budgets(&state, &caller, model, &plan.end_user, |scope, id| {
            host.spend(scope, id, now_ms)
        });
        let soft_budget = match budgets {
            Ok(soft_budget) => soft_budget,
            Err(error) => {
                let (model, end_user) = (model.clone(), plan.end_user.clone());
                return self.refuse(host, &error, Some(caller), model, end_user);
            }
        };
        let needs = needs_of(&state, &caller, model, &plan.deployment, estimated_tokens);
        self.admit(
            host,
            Box::new(Admitting {
                state,
                caller,
                role,
                plan,
                body_size,
                soft_budget,
                needs,
                estimated_tokens,
            }),
            now_ms,
        )
    }

    /// Plans a chat request: validates it, resolves its model group, chooses its first
    /// deployment, and either translates it for that deployment (the only one it can go to:
    /// Envoy retries it there) or, when another deployment or a fallback may have to take
    /// over, opens its ledger entry and relays it through the attempts route.
    fn plan_chat(
        &mut self,
        state: &Arc<State>,
        caller: &Caller,
        body: &[u8],
        context: &TranslateContext,
        now_ms: u64,
    ) -> Result<(RequestPlan, u64, Role), GatewayError> {
        let summary = summarize_chat_request(body)?;
        let estimated_tokens = estimate_tokens(body.len());
        let routed = self.route(
            state,
            caller,
            RouteRequest {
                model: &summary.model,
                own: &summary.routing,
                tags: summary.tags.iter().map(|tag| tag.to_string()).collect(),
                stream: summary.stream,
                estimated_tokens,
            },
            now_ms,
        )?;
        let (plan, role) = routed_plan(
            state,
            routed,
            summary,
            body.len(),
            Relayed::chat,
            |first, summary| plan_chat_request_to(state, first, summary, body, context),
        )?;
        Ok((plan, estimated_tokens, role))
    }

    /// Plans an embeddings request as [`Self::plan_chat`] plans a chat request.
    fn plan_embeddings(
        &mut self,
        state: &Arc<State>,
        caller: &Caller,
        body: &[u8],
        context: &TranslateContext,
        now_ms: u64,
    ) -> Result<(RequestPlan, u64, Role), GatewayError> {
        let request = parse_embeddings_request(body)?;
        let estimated_tokens = request.estimated_tokens();
        let routed = self.route(
            state,
            caller,
            RouteRequest {
                model: &request.model,
                own: &request.routing,
                tags: Vec::new(),
                stream: false,
                estimated_tokens,
            },
            now_ms,
        )?;
        let (plan, role) = routed_plan(
            state,
            routed,
            request,
            body.len(),
            Relayed::embeddings,
            |first, request| plan_embeddings_request_to(state, first, &request, body, context),
        )?;
        Ok((plan, estimated_tokens, role))
    }

    /// Plans a text completions request as [`Self::plan_chat`] plans a chat request.
    fn plan_completion(
        &mut self,
        state: &Arc<State>,
        caller: &Caller,
        body: &[u8],
        context: &TranslateContext,
        now_ms: u64,
    ) -> Result<(RequestPlan, u64, Role), GatewayError> {
        let summary = summarize_completion_request(body)?;
        let estimated_tokens = estimate_tokens(body.len());
        let routed = self.route(
            state,
            caller,
            RouteRequest {
                model: &summary.model,
                own: &summary.routing,
                tags: summary.tags.iter().map(|tag| tag.to_string()).collect(),
                stream: summary.stream,
                estimated_tokens,
            },
            now_ms,
        )?;
        let (plan, role) = routed_plan(
            state,
            routed,
            summary,
            body.len(),
            Relayed::completion,
            |first, summary| plan_completion_request_to(state, first, summary, body, context),
        )?;
        Ok((plan, estimated_tokens, role))
    }

    /// Resolves a request's model group and chooses its first deployment; when another
    /// deployment or a fallback may have to take over, opens its ledger entry (the request
    /// is then relayed through the attempts route). Checks that the caller may use the
    /// model and the request's own fallbacks.
    fn route(
        &mut self,
        state: &Arc<State>,
        caller: &Caller,
        request: RouteRequest<'_>,
        now_ms: u64,
    ) -> Result<Routed, GatewayError> {
        caller.check_model(request.model)?;
        if state.model(request.model).is_none() {
            return Err(GatewayError::ModelNotFound(request.model.to_string()));
        }
        // The request's own fallbacks must be models it may use.
        let own = request.own;
        for (param, list) in [
            ("fallbacks", &own.fallbacks),
            ("context_window_fallbacks", &own.context_window_fallbacks),
            ("content_policy_fallbacks", &own.content_policy_fallbacks),
        ] {
            for model in list.iter().flatten() {
                if state.model(model).is_none() {
                    return Err(GatewayError::invalid(
                        param,
                        format!("The fallback model `{model}` does not exist."),
                    ));
                }
                caller.check_model(model)?;
            }
        }
        let mut tags = request.tags;
        add_tags(&mut tags, self.header_tags.iter().map(String::as_str));
        let attempts_route = self.attempts_route;
        let (request_id, header_tags) = (&self.request_id, &self.header_tags);
        let routed = with_routing(&self.routing, now_ms, |routing| {
            let Routing {
                book,
                ledger,
                shuffler,
                keys,
                ..
            } = routing;
            let mut chooser = Chooser {
                state,
                book,
                shuffler,
                now_ms,
                tags: &tags,
                estimated_tokens: request.estimated_tokens,
                stream: request.stream,
            };
            let plan = RoutePlan::start(request.model, own, &mut chooser)?;
            let first = Arc::clone(plan.current());
            if !(attempts_route && plan.may_try_another(state)) {
                let own_retries = plan.own_retries();
                return Some(Routed::Direct { first, own_retries });
            }
            let entry = LedgerEntry {
                plan,
                state: Arc::clone(state),
                caller: caller.clone(),
                estimated_tokens: request.estimated_tokens,
                tags: tags.clone(),
                header_tags: header_tags.clone(),
                request_id: request_id.clone(),
                stream: request.stream,
                opened_ms: now_ms,
            };
            let key = ledger.open(entry, keys);
            Some(Routed::Relayed { first, key })
        });
        if let Some(Routed::Relayed { key, .. }) = &routed {
            self.relay_key = Some(key.clone());
        }
        routed.ok_or_else(|| {
            GatewayError::invalid(
                "metadata.tags",
                format!(
                    "No deployment of model `{}` serves the request's tags ({}), and none is tagged `default`.",
                    request.model,
                    tags.join(", ")
                ),
            )
        })
    }

    /// Sends one attempt of a relayed request (ledger entry `key`) to the deployment its
    /// plan chose. Budgets and rate limits were checked when the request arrived.
    fn send_attempt(
        &mut self,
        host: &mut impl Host,
        state: Arc<State>,
        caller: Caller,
        request: AttemptRequest,
        now_ms: u64,
        context: &TranslateContext,
    ) -> Verdict {
        let AttemptRequest {
            key,
            endpoint,
            body_size,
        } = request;
        let current = with_routing(&self.routing, now_ms, |routing| {
            routing.ledger.get(&key).map(|entry| {
                (
                    Arc::clone(entry.plan.current()),
                    entry.plan.attempts(),
                    entry.estimated_tokens,
                )
            })
        });
        let Some((deployment, attempt, estimated_tokens)) = current else {
            // The relaying side ended (or its entry was dropped) while Envoy retried.
            return self.refuse(
                host,
                &GatewayError::Internal,
                Some(caller),
                String::new(),
                String::new(),
            );
        };
        let model = deployment.model_name.clone();
        let planned = {
            let body = host.request_body(body_size);
            plan_attempt(&state, endpoint, deployment, &body, context)
        };
        match planned {
            Ok(plan) => {
                // The key's, user's, team's and global limits were taken when the request
                // arrived, with the first deployment's own; a later attempt takes its
                // deployment's own rpm / tpm.
                let needs = if attempt > 1 {
                    needs_of(&state, &caller, &model, &plan.deployment, estimated_tokens)
                        .into_iter()
                        .filter(|need| need.counter.scope == proto::BudgetScope::Deployment)
                        .collect()
                } else {
                    Vec::new()
                };
                self.admit(
                    host,
                    Box::new(Admitting {
                        state,
                        caller,
                        role: Role::Attempt(key),
                        plan,
                        body_size,
                        soft_budget: None,
                        needs,
                        estimated_tokens,
                    }),
                    now_ms,
                )
            }
            Err(error) => self.refuse(host, &error, Some(caller), model, String::new()),
        }
    }

    /// The authority answered (or took too long): a request waiting for a lease is admitted,
    /// refused, or waits on. `Continue` means the glue must resume the request.
    pub fn on_quota(&mut self, host: &mut impl Host) -> Verdict {
        // Checked before the phase is taken: an exchange that is not waiting keeps its own.
        if !self.awaits_quota() {
            return Verdict::Pause;
        }
        let Phase::AwaitingQuota(admitting) = std::mem::take(&mut self.phase) else {
            return Verdict::Pause;
        };
        let now_ms = host.now_ms();
        self.admit(host, admitting, now_ms)
    }

    /// The deployment a relayed request was about to go to is at its own rpm / tpm cap
    /// (`counter`), counted over every filter though this one had not seen it: the book
    /// learns it, and the request's plan takes another deployment of the group instead, if
    /// there is one (a request sent straight to its only deployment has none).
    fn reroute(
        &mut self,
        admitting: &Admitting,
        counter: &crate::ratelimit::CounterId,
        now_ms: u64,
    ) -> Option<Arc<crate::snapshot::Deployment>> {
        let Role::Relay(key) = &admitting.role else {
            return None;
        };
        self.learn_cap(&admitting.plan.deployment, counter, now_ms);
        with_plan(
            &self.routing,
            &admitting.state,
            key,
            now_ms,
            |plan, chooser| plan.instead(chooser),
        )
    }

    /// An attempt (not the first) was refused its deployment's own rpm / tpm: the book
    /// learns the cap, and the plan takes another deployment of the group not tried yet
    /// (not counted as a retry), else goes on as after a rate-limit failure (a retry or a
    /// fallback). The wait before the next attempt, when there is one.
    fn skip_attempt(
        &mut self,
        admitting: &Admitting,
        key: &str,
        counter: &crate::ratelimit::CounterId,
        now_ms: u64,
    ) -> Option<u64> {
        self.learn_cap(&admitting.plan.deployment, counter, now_ms);
        let state = &admitting.state;
        with_plan(&self.routing, state, key, now_ms, |plan, chooser| {
            plan.instead(chooser)
        })
        .map(|_| 0)
        .or_else(|| another_attempt(&self.routing, state, key, ErrorClass::RateLimit, now_ms))
    }

    /// The rate-limit authority refused `deployment` for its own cap (`counter`): this
    /// filter's book counts it as full for the rest of the minute.
    fn learn_cap(
        &mut self,
        deployment: &crate::snapshot::Deployment,
        counter: &crate::ratelimit::CounterId,
        now_ms: u64,
    ) {
        let tokens = match counter.kind {
            proto::LimitKind::Requests => false,
            proto::LimitKind::Tokens => true,
            _ => return,
        };
        with_routing(&self.routing, now_ms, |routing| {
            routing.book.reached_cap(deployment, tokens, now_ms)
        });
    }

    /// Takes the request's rate-limit quota, then sends it upstream; or refuses it (429),
    /// or waits for the authority.
    fn admit(&mut self, host: &mut impl Host, admitting: Box<Admitting>, now_ms: u64) -> Verdict {
        let rate_headers = if admitting.needs.is_empty() {
            None
        } else {
            match host.admit(&admitting.needs, now_ms) {
                Admission::Admitted(headers) => Some(headers),
                Admission::Wait => {
                    self.phase = Phase::AwaitingQuota(admitting);
                    return Verdict::Pause;
                }
                Admission::Refused(refusal) => {
                    let mut another = None;
                    if refusal.counter.scope == proto::BudgetScope::Deployment {
                        if let Role::Attempt(key) = &admitting.role {
                            // Refused before it was sent: the next deployment instead (not a
                            // retry), through the attempts route like any other attempt.
                            another = self.skip_attempt(&admitting, key, &refusal.counter, now_ms);
                        } else if let Some(rerouted) =
                            self.reroute(&admitting, &refusal.counter, now_ms)
                        {
                            let mut admitting = admitting;
                            admitting.needs = needs_of(
                                &admitting.state,
                                &admitting.caller,
                                &rerouted.model_name,
                                &rerouted,
                                admitting.estimated_tokens,
                            );
                            admitting.plan.deployment = rerouted;
                            return self.admit(host, admitting, now_ms);
                        }
                    }
                    let Admitting { caller, plan, .. } = *admitting;
                    let error = GatewayError::RateLimited {
                        scope: describe_scope(
                            &refusal.counter,
                            &caller,
                            &plan.deployment.model_name,
                        ),
                        what: describe_kind(refusal.counter.kind),
                        limit: refusal.limit,
                        requested: refusal.requested,
                        retry_after_secs: refusal.retry_after_ms.div_ceil(1000),
                    };
                    let mut headers = refusal.headers.headers();
                    headers.push((
                        "retry-after",
                        refusal.retry_after_ms.div_ceil(1000).to_string(),
                    ));
                    headers.push(("retry-after-ms", refusal.retry_after_ms.to_string()));
                    if let Some(backoff_ms) = another {
                        headers.extend(retry_marks(backoff_ms));
                    }
                    let model = plan.deployment.model_name.clone();
                    return self.refuse_with(
                        host,
                        &error,
                        &headers,
                        Some(caller),
                        model,
                        plan.end_user,
                    );
                }
            }
        };
        let Admitting {
            state,
            caller,
            role,
            plan,
            body_size,
            soft_budget,
            needs,
            ..
        } = *admitting;
        host.write_upstream_request(&plan, body_size);
        if !matches!(role, Role::Relay(_)) {
            with_routing(&self.routing, now_ms, |routing| {
                routing.book.started(&plan.deployment.id, now_ms)
            });
        }
        self.phase = Phase::Upstream {
            plan: Box::new(plan),
            state: Arc::clone(&state),
            role,
            caller,
            sent_ms: now_ms,
            max_response_body_bytes: state.max_response_body_bytes,
            response_too_large: false,
            soft_budget,
            quota: needs,
            rate_headers,
        };
        Verdict::Continue
    }

    /// The response headers arrived: `status` is `:status` (`None` when missing or not a
    /// number), `content_type` the `content-type` header.
    pub fn on_response_headers(
        &mut self,
        host: &mut impl Host,
        status: Option<u16>,
        content_type: Option<&str>,
        end_of_stream: bool,
    ) -> Verdict {
        self.on_response_headers_with(host, status, content_type, None, end_of_stream)
    }

    /// [`Self::on_response_headers`], with Envoy's `x-envoy-attempt-count` response header
    /// (the attempts Envoy's router made, when the route reports them).
    pub fn on_response_headers_with(
        &mut self,
        host: &mut impl Host,
        status: Option<u16>,
        content_type: Option<&str>,
        envoy_attempts: Option<&str>,
        end_of_stream: bool,
    ) -> Verdict {
        let Phase::Upstream {
            plan,
            state,
            role,
            soft_budget,
            rate_headers,
            ..
        } = &mut self.phase
        else {
            return Verdict::Continue;
        };
        let mode = plan
            .response
            .on_headers(status.unwrap_or(502), content_type);
        let now_ms = match role {
            Role::Direct => 0,
            _ => host.now_ms(),
        };
        match role {
            Role::Relay(key) => {
                // Envoy gave up retrying (or had no more attempts): the mark is the gateway's.
                host.remove_response_header(RETRY_HEADER);
                host.remove_response_header(RETRY_AFTER_HEADER);
                let counts = with_routing(&self.routing, now_ms, |routing| {
                    routing
                        .ledger
                        .get(key)
                        .map(|entry| (entry.plan.retries(), entry.plan.fallbacks()))
                });
                if let Some((retries, fallbacks)) = counts {
                    host.set_response_header(ATTEMPTED_RETRIES_HEADER, &retries.to_string());
                    host.set_response_header(ATTEMPTED_FALLBACKS_HEADER, &fallbacks.to_string());
                }
            }
            Role::Direct | Role::Attempt(_) => {
                host.set_response_header(MODEL_ID_HEADER, &plan.deployment.id);
                host.set_response_header(MODEL_API_BASE_HEADER, &plan.deployment.api_base);
                if *role == Role::Direct {
                    let retries = envoy_attempts
                        .and_then(|count| count.trim().parse::<u32>().ok())
                        .map_or(0, |count| count.saturating_sub(1));
                    host.set_response_header(ATTEMPTED_RETRIES_HEADER, &retries.to_string());
                    host.set_response_header(ATTEMPTED_FALLBACKS_HEADER, "0");
                }
            }
        }
        if end_of_stream && plan.response.status() >= 400 {
            // An error without a body: judged by its status alone.
            let class = ErrorClass::of(plan.response.status(), None);
            self.failure = class;
            if let (Role::Attempt(key), Some(class)) = (&*role, class) {
                if let Some(backoff_ms) = another_attempt(&self.routing, state, key, class, now_ms)
                {
                    mark_for_retry(host, backoff_ms);
                }
            }
        }
        if let Some(scope) = soft_budget {
            host.set_response_header(SOFT_BUDGET_HEADER, scope);
        }
        if let Some(rate_headers) = rate_headers {
            for (name, value) in rate_headers.headers() {
                host.set_response_header(name, &value);
            }
        }
        if end_of_stream {
            return Verdict::Continue;
        }
        if plan.response.drops_content_length() {
            host.remove_response_header("content-length");
        }
        if plan.response.streams_in_another_framing() {
            host.set_response_header("content-type", crate::providers::Framing::Sse.media_type());
        }
        match mode {
            // Held so a translated error can still change status and content type.
            ResponseMode::Buffer => Verdict::Pause,
            ResponseMode::Stream => Verdict::Continue,
        }
    }

    /// Response body bytes arrived: `body_size` is what is buffered (buffered mode) or the
    /// newest chunk (stream mode).
    pub fn on_response_body(
        &mut self,
        host: &mut impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Verdict {
        let Phase::Upstream {
            plan,
            state,
            role,
            max_response_body_bytes,
            response_too_large,
            ..
        } = &mut self.phase
        else {
            return Verdict::Continue;
        };
        // Time to first byte only means something for streams; a buffered answer's first
        // byte is not what the client waits for, and the clock may be a host call.
        if plan.stream && self.first_byte_ms.is_none() && body_size > 0 {
            self.first_byte_ms = Some(host.now_ms());
        }
        match plan.response.mode() {
            ResponseMode::Buffer => {
                if *response_too_large {
                    // The client has its error: what the provider still sends goes nowhere.
                    host.replace_response_body(body_size, &[]);
                    return Verdict::Continue;
                }
                let limit = *max_response_body_bytes;
                if u64::try_from(body_size).unwrap_or(u64::MAX) > limit {
                    // Buffering on would hold an unbounded answer in memory: answer 502 now
                    // (the headers are still held, so status and type can change).
                    *response_too_large = true;
                    let error = GatewayError::UpstreamResponseTooLarge(limit);
                    host.set_response_header(":status", &error.status().to_string());
                    host.set_response_header("content-type", "application/json");
                    host.remove_response_header("content-length");
                    host.replace_response_body(body_size, &error.to_json());
                    return Verdict::Continue;
                }
                if !end_of_stream {
                    return Verdict::Pause;
                }
                let completed = {
                    let body = host.response_body(body_size);
                    plan.response.on_complete_body(&body)
                };
                if let Some(status) = completed.status {
                    host.set_response_header(":status", &status.to_string());
                }
                let status = plan.response.status();
                if status >= 400 {
                    let (code, message) = completed
                        .body
                        .as_deref()
                        .map(error_code_and_message)
                        .unwrap_or_default();
                    let class = ErrorClass::of(status, code.as_deref());
                    self.failure = class;
                    self.error_message = message;
                    if let (Role::Attempt(key), Some(class)) = (&*role, class) {
                        let now_ms = host.now_ms();
                        if let Some(backoff_ms) =
                            another_attempt(&self.routing, state, key, class, now_ms)
                        {
                            mark_for_retry(host, backoff_ms);
                        }
                    }
                }
                if let Some(new_body) = completed.body {
                    host.set_response_header("content-type", "application/json");
                    host.replace_response_body(body_size, &new_body);
                }
                // The headers are still held: the client gets the cost with the answer.
                if let Some(cost) = plan.cost() {
                    let value = cost_header_value(cost);
                    host.set_response_header(COST_HEADER, &value);
                    host.set_response_header(TOLLGATE_COST_HEADER, &value);
                }
                Verdict::Continue
            }
            ResponseMode::Stream => {
                self.stream_out.clear();
                let output = {
                    let chunk = host.response_body(body_size);
                    plan.response
                        .on_stream_chunk(&chunk, end_of_stream, &mut self.stream_out)
                };
                if output == ChunkOutput::Replaced {
                    host.replace_response_body(body_size, &self.stream_out);
                }
                Verdict::Continue
            }
        }
    }

    /// The exchange ended (`now_ms` is when): what its attempt taught the router goes into
    /// the routing book (latency, usage, a failure that may cool the deployment down), and
    /// a relayed request's ledger entry is closed. Call before [`Self::outcome`].
    pub fn finish(&mut self, now_ms: u64) {
        if let Some(key) = self.relay_key.take() {
            with_routing(&self.routing, now_ms, |routing| routing.ledger.close(&key));
        }
        let Phase::Upstream {
            plan,
            state,
            role,
            sent_ms,
            response_too_large,
            ..
        } = &self.phase
        else {
            return;
        };
        if matches!(role, Role::Relay(_)) {
            return;
        }
        let status = match plan.response.status() {
            _ if *response_too_large => 502,
            status => status,
        };
        let class = self.failure.or_else(|| ErrorClass::of(status, None));
        let usage = plan.response.usage();
        let report = AttemptReport {
            deployment_id: &plan.deployment.id,
            status,
            class,
            latency_ms: now_ms.saturating_sub(*sent_ms),
            first_byte_ms: self
                .first_byte_ms
                .map(|first| first.saturating_sub(*sent_ms)),
            tokens: usage.reported_tokens(),
            completion_tokens: usage.completion_tokens,
            message: &self.error_message,
        };
        with_routing(&self.routing, now_ms, |routing| {
            routing.book.finished(&report, &state.router, now_ms)
        });
    }

    /// How the exchange ended, once it has (`now_ms` is the time it did); `None` for one
    /// the filter let through untouched or that never went upstream. An upstream exchange's
    /// usage record takes its id from `ids`.
    pub fn outcome(&self, now_ms: u64, ids: &mut RecordIds) -> Option<Outcome<'_>> {
        match &self.phase {
            Phase::Answered { status, refusal } => Some(Outcome::Answered {
                status: *status,
                record: refusal
                    .as_deref()
                    .map(|refusal| self.refusal_record(*status, refusal, now_ms, ids)),
            }),
            Phase::Upstream {
                plan,
                role: Role::Relay(_),
                quota,
                ..
            } => Some(Outcome::Relayed(RelayedOutcome {
                usage: plan.response.usage(),
                quota,
            })),
            Phase::Upstream {
                plan,
                caller,
                sent_ms,
                response_too_large,
                quota,
                ..
            } => {
                let deployment = &plan.deployment;
                let status = match plan.response.status() {
                    _ if *response_too_large => 502,
                    0 => 502,
                    status => status,
                };
                let usage = plan.response.usage();
                let upstream_ms = now_ms.saturating_sub(*sent_ms);
                let first_byte_ms = self
                    .first_byte_ms
                    .map(|first| first.saturating_sub(*sent_ms));
                let mut tags = plan.tags.clone();
                add_tags(&mut tags, self.header_tags.iter().map(String::as_str));
                let (key_alias, user_id, team_id) = who(caller);
                let record = proto::UsageRecord {
                    id: ids.next_id(),
                    request_id: self.request_id.clone().unwrap_or_default(),
                    model_name: deployment.model_name.clone(),
                    deployment_id: deployment.id.clone(),
                    provider: deployment.provider_name.clone(),
                    status: u32::from(status),
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    cached_prompt_tokens: usage.cached_prompt_tokens,
                    started_unix_ms: *sent_ms,
                    duration_ms: upstream_ms,
                    stream: plan.stream,
                    key_hash: caller.key_hash.clone(),
                    reasoning_tokens: usage.reasoning_tokens,
                    cache_creation_tokens: usage.cache_creation_tokens,
                    cost: plan.cost(),
                    key_alias,
                    user_id,
                    team_id,
                    end_user: plan.end_user.clone(),
                    tags,
                    first_byte_ms,
                    answered_by_gateway: false,
                    error_type: if status >= 400 {
                        error_type_for_status(status).to_string()
                    } else {
                        String::new()
                    },
                    error_class: self
                        .failure
                        .or_else(|| ErrorClass::of(status, None))
                        .map_or_else(String::new, |class| class.name().to_string()),
                };
                Some(Outcome::Upstream(UpstreamOutcome {
                    plan,
                    status,
                    response_too_large: *response_too_large,
                    usage,
                    upstream_ms,
                    first_byte_ms,
                    record,
                    quota,
                }))
            }
            // A request that waited for a lease and whose client left: it was neither
            // answered nor sent.
            Phase::PassThrough | Phase::AwaitingBody { .. } | Phase::AwaitingQuota(_) => None,
        }
    }

    /// The usage record of a request the gateway refused: no deployment, no tokens, a
    /// cost of 0 (nothing was spent: not "unknown").
    fn refusal_record(
        &self,
        status: u16,
        refusal: &Refusal,
        now_ms: u64,
        ids: &mut RecordIds,
    ) -> proto::UsageRecord {
        let (key_alias, user_id, team_id) = refusal.caller.as_ref().map(who).unwrap_or_default();
        proto::UsageRecord {
            id: ids.next_id(),
            request_id: self.request_id.clone().unwrap_or_default(),
            model_name: refusal.model.clone(),
            status: u32::from(status),
            started_unix_ms: self.started_ms,
            duration_ms: now_ms.saturating_sub(self.started_ms),
            key_hash: refusal
                .caller
                .as_ref()
                .map(|caller| caller.key_hash.clone())
                .unwrap_or_default(),
            cost: Some(0.0),
            key_alias,
            user_id,
            team_id,
            end_user: refusal.end_user.clone(),
            tags: self.header_tags.clone(),
            answered_by_gateway: true,
            error_type: refusal.error_type.to_string(),
            ..Default::default()
        }
    }
}

/// Runs `f` on the shared routing state (a fresh one when there is none, as in tests).
fn with_routing<R>(
    routing: &Option<Arc<Mutex<Routing>>>,
    now_ms: u64,
    f: impl FnOnce(&mut Routing) -> R,
) -> R {
    match routing {
        Some(shared) => {
            // Nothing run under the lock panics; if something did, the state is still usable.
            let mut routing = shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut routing)
        }
        None => f(&mut Routing::new(u128::from(now_ms), now_ms)),
    }
}

/// Whose rate limit a counter is, for a person.
fn describe_scope(counter: &crate::ratelimit::CounterId, caller: &Caller, model: &str) -> String {
    let key = || match caller.key.as_deref() {
        Some(key) if !key.alias.is_empty() => format!("key {}", key.alias),
        _ => "this key".to_string(),
    };
    match counter.scope {
        proto::BudgetScope::Key => key(),
        proto::BudgetScope::KeyModel => format!("{} on model {model}", key()),
        proto::BudgetScope::User => format!("user {}", counter.id),
        proto::BudgetScope::Team => format!("team {}", counter.id),
        proto::BudgetScope::Deployment => format!("model {model} (deployment {})", counter.id),
        proto::BudgetScope::EndUser => format!("end user {}", counter.id),
        proto::BudgetScope::Global | proto::BudgetScope::Unspecified => "the gateway".to_string(),
    }
}

/// Which limit a counter is, for a person.
fn describe_kind(kind: proto::LimitKind) -> &'static str {
    match kind {
        proto::LimitKind::Requests => "requests per minute (rpm)",
        proto::LimitKind::Tokens => "tokens per minute (tpm)",
        proto::LimitKind::Parallel | proto::LimitKind::Unspecified => {
            "parallel requests (max_parallel_requests)"
        }
    }
}

/// The key alias, user and team of a caller (empty for the master key).
fn who(caller: &Caller) -> (String, String, String) {
    match &caller.key {
        Some(key) => (key.alias.clone(), key.user_id.clone(), key.team_id.clone()),
        None => Default::default(),
    }
}

/// Adds the non-empty `more` tags to `tags`, each once, in order.
fn add_tags<'t>(tags: &mut Vec<String>, more: impl Iterator<Item = &'t str>) {
    for tag in more {
        if !tag.is_empty() && !tags.iter().any(|known| known == tag) {
            tags.push(tag.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::tests::state;

    /// Records what the exchange asked of Envoy.
    #[derive(Default)]
    struct FakeHost {
        now: u64,
        request_body: Vec<u8>,
        response_body: Vec<u8>,
        removed_request_headers: Vec<String>,
        local_reply: Option<(u16, serde_json::Value)>,
        upstream: Option<(String, String, Vec<u8>)>,
        response_headers_set: Vec<(String, String)>,
        response_headers_removed: Vec<String>,
        /// Spend by (scope, id); scopes asked for are recorded.
        spend: std::collections::HashMap<(i32, String), f64>,
        spend_asked: Vec<(proto::BudgetScope, String)>,
        /// The filter's rate-limit leases.
        quota: QuotaBook,
        local_reply_headers: Vec<(String, String)>,
    }

    impl Host for FakeHost {
        fn now_ms(&mut self) -> u64 {
            self.now
        }
        fn remove_request_header(&mut self, name: &str) {
            self.removed_request_headers.push(name.to_string());
        }
        fn send_json_response(
            &mut self,
            status: u16,
            headers: &[(&'static str, String)],
            body: &[u8],
        ) {
            let json = serde_json::from_slice(body).unwrap();
            self.local_reply = Some((status, json));
            self.local_reply_headers = headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.clone()))
                .collect();
        }
        fn request_body(&mut self, size: usize) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.request_body[..size])
        }
        fn write_upstream_request(&mut self, plan: &RequestPlan, body_size: usize) {
            assert_eq!(body_size, self.request_body.len());
            self.upstream = Some((plan.authority.clone(), plan.path.clone(), plan.body.clone()));
        }
        fn remove_response_header(&mut self, name: &str) {
            self.response_headers_removed.push(name.to_string());
        }
        fn set_response_header(&mut self, name: &str, value: &str) {
            self.response_headers_set
                .push((name.to_string(), value.to_string()));
        }
        fn response_body(&mut self, size: usize) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.response_body[..size])
        }
        fn replace_response_body(&mut self, size: usize, body: &[u8]) {
            assert_eq!(size, self.response_body.len());
            self.response_body = body.to_vec();
        }
        fn spend(&mut self, scope: proto::BudgetScope, id: &str, _now_ms: u64) -> f64 {
            self.spend_asked.push((scope, id.to_string()));
            self.spend
                .get(&(scope as i32, id.to_string()))
                .copied()
                .unwrap_or(0.0)
        }
        fn admit(&mut self, needs: &[Need], now_ms: u64) -> Admission {
            self.quota.admit(needs, now_ms)
        }
    }

    fn chat_headers(content_length: Option<&str>) -> RequestHeaders<'_> {
        RequestHeaders {
            method: "POST",
            path: "/v1/chat/completions",
            content_length,
            request_id: Some("req-1"),
            ..RequestHeaders::default()
        }
    }

    #[test]
    fn scans_the_headers_it_reads() {
        let pairs: [(&[u8], &[u8]); 7] = [
            (b":method", b"POST"),
            (b":path", b"/v1/chat/completions"),
            (b"authorization", b"Bearer a"),
            (b"authorization", b"Bearer b"),
            (b"x-tollgate-upstream", b"https"),
            (b"x-other", b"\xff\xfe"),
            (b"x-request-id", b"req-7"),
        ];
        let headers = RequestHeaders::scan(pairs);
        assert_eq!(headers.method, "POST");
        assert_eq!(headers.path, "/v1/chat/completions");
        assert_eq!(headers.authorization, Some("Bearer a"));
        assert_eq!(headers.x_api_key, None);
        assert_eq!(headers.request_id, Some("req-7"));
        assert!(headers.route_header);
        assert_eq!(headers.invalid, None, "a header the filter does not read");
    }

    #[test]
    fn headers_that_matter_and_are_not_utf8_are_marked_not_guessed() {
        let key: [(&[u8], &[u8]); 3] = [
            (b":method", b"POST"),
            (b":path", b"/v1/chat/completions"),
            (b"authorization", b"Bearer sk-\xff"),
        ];
        let headers = RequestHeaders::scan(key);
        assert_eq!(headers.authorization, None);
        assert_eq!(headers.invalid, Some("authorization"));

        let path: [(&[u8], &[u8]); 2] = [
            (b":method", b"POST"),
            (b":path", b"/v1/chat/completions?x=\xc3"),
        ];
        let headers = RequestHeaders::scan(path);
        assert_eq!(headers.path, "/v1/chat/completions?x=", "still classified");
        assert_eq!(headers.invalid, Some(":path"));

        let id: [(&[u8], &[u8]); 1] = [(b"x-request-id", b"\x80")];
        let headers = RequestHeaders::scan(id);
        assert_eq!((headers.request_id, headers.invalid), (None, None));
    }

    #[test]
    fn refuses_a_key_that_is_not_utf8_with_a_clear_400() {
        let state = Arc::new(state());
        let mut host = FakeHost::default();
        let mut exchange = Exchange::new();
        let headers = RequestHeaders {
            invalid: Some("authorization"),
            ..chat_headers(None)
        };
        let verdict = exchange.on_request_headers(&mut host, Some(&state), &headers, false);
        assert_eq!(verdict, Verdict::Pause);
        let (status, body) = host.local_reply.take().unwrap();
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], "invalid_header");
        assert_eq!(body["error"]["param"], "authorization");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        // On a path that is not the gateway's, the header is not the filter's business.
        let mut exchange = Exchange::new();
        let other = RequestHeaders {
            method: "GET",
            path: "/healthz",
            invalid: Some("authorization"),
            ..RequestHeaders::default()
        };
        assert_eq!(
            exchange.on_request_headers(&mut host, Some(&state), &other, true),
            Verdict::Continue
        );
    }

    #[test]
    fn lets_other_paths_through_but_strips_the_routing_header() {
        let mut host = FakeHost::default();
        let mut exchange = Exchange::new();
        let headers = RequestHeaders {
            method: "GET",
            path: "/key/info",
            route_header: true,
            ..RequestHeaders::default()
        };
        let verdict = exchange.on_request_headers(&mut host, None, &headers, true);
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(host.removed_request_headers, vec![ROUTE_HEADER]);
        assert!(host.local_reply.is_none());
        assert!(exchange.outcome(0, &mut RecordIds::new(7)).is_none());
    }

    #[test]
    fn refuses_before_the_first_snapshot_and_counts_the_answer() {
        let mut host = FakeHost::default();
        let mut exchange = Exchange::new();
        let verdict = exchange.on_request_headers(&mut host, None, &chat_headers(None), false);
        assert_eq!(verdict, Verdict::Pause);
        let (status, json) = host.local_reply.clone().unwrap();
        assert_eq!(status, 503);
        assert_eq!(json["error"]["code"], "not_ready");
        let Some(Outcome::Answered {
            status: 503,
            record: Some(record),
        }) = exchange.outcome(0, &mut RecordIds::new(7))
        else {
            panic!("not a refusal with a record");
        };
        assert!(record.answered_by_gateway);
        assert_eq!(record.error_type, "service_unavailable");
        assert_eq!((record.status, record.cost), (503, Some(0.0)));
        assert_eq!(record.request_id, "req-1");

        // A model listing refused the same way is not a request to a model: no record.
        let mut exchange = Exchange::new();
        let listing = RequestHeaders {
            method: "GET",
            path: "/v1/models",
            ..RequestHeaders::default()
        };
        exchange.on_request_headers(&mut host, None, &listing, true);
        assert_eq!(host.local_reply.as_ref().unwrap().0, 503);
        assert!(matches!(
            exchange.outcome(0, &mut RecordIds::new(7)),
            Some(Outcome::Answered {
                status: 503,
                record: None
            })
        ));
    }

    #[test]
    fn refuses_wrong_methods_and_announced_oversized_bodies() {
        let state = Arc::new(state());
        let mut host = FakeHost::default();
        let headers = RequestHeaders {
            method: "GET",
            ..chat_headers(None)
        };
        Exchange::new().on_request_headers(&mut host, Some(&state), &headers, true);
        assert_eq!(host.local_reply.take().unwrap().0, 405);

        let too_big = (state.max_request_body_bytes + 1).to_string();
        let mut exchange = Exchange::new();
        let verdict = exchange.on_request_headers(
            &mut host,
            Some(&state),
            &chat_headers(Some(&too_big)),
            false,
        );
        assert_eq!(verdict, Verdict::Pause);
        let (status, json) = host.local_reply.take().unwrap();
        assert_eq!(status, 413);
        assert_eq!(json["error"]["type"], "invalid_request_error");

        Exchange::new().on_request_headers(&mut host, Some(&state), &chat_headers(None), true);
        assert_eq!(host.local_reply.take().unwrap().0, 400);
    }

    #[test]
    fn lists_models() {
        let state = Arc::new(state());
        let mut host = FakeHost::default();
        let headers = RequestHeaders {
            method: "GET",
            path: "/v1/models",
            ..RequestHeaders::default()
        };
        Exchange::new().on_request_headers(&mut host, Some(&state), &headers, true);
        let (status, json) = host.local_reply.unwrap();
        assert_eq!(status, 200);
        assert_eq!(json["object"], "list");
        assert_eq!(json["data"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn sends_a_chat_request_upstream_and_reports_its_usage() {
        let state = Arc::new(state());
        let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        let mut host = FakeHost {
            now: 1_000,
            request_body: body.to_vec(),
            ..FakeHost::default()
        };
        let mut exchange = Exchange::new();
        let verdict =
            exchange.on_request_headers(&mut host, Some(&state), &chat_headers(None), false);
        assert_eq!(verdict, Verdict::Pause);
        assert_eq!(
            exchange.on_request_body(&mut host, 10, false),
            Verdict::Pause
        );
        assert_eq!(
            exchange.on_request_body(&mut host, body.len(), true),
            Verdict::Continue
        );
        let (authority, path, upstream_body) = host.upstream.clone().unwrap();
        assert_eq!(authority, "127.0.0.1:9");
        assert_eq!(path, "/v1/chat/completions");
        assert!(upstream_body.starts_with(br#"{"model":"upstream-gpt""#));
        assert!(exchange.is_upstream());

        let verdict =
            exchange.on_response_headers(&mut host, Some(200), Some("application/json"), false);
        assert_eq!(verdict, Verdict::Pause);
        host.response_body = br#"{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#.to_vec();
        let size = host.response_body.len();
        assert_eq!(
            exchange.on_response_body(&mut host, size, true),
            Verdict::Continue
        );
        host.now = 1_250;
        let Some(Outcome::Upstream(outcome)) = exchange.outcome(host.now, &mut RecordIds::new(7))
        else {
            panic!("not an upstream outcome");
        };
        assert_eq!(outcome.status, 200);
        assert_eq!(outcome.upstream_ms, 250);
        assert_eq!(outcome.usage.prompt_tokens, Some(3));
        assert_eq!(
            outcome.record.id.len(),
            32,
            "128 random bits, not the client's id"
        );
        assert_ne!(outcome.record.id, "req-1");
        assert_eq!(outcome.record.request_id, "req-1");
        assert_eq!(outcome.record.model_name, "gpt");
        assert_eq!(outcome.record.completion_tokens, Some(4));
        assert!(!outcome.record.stream);
        assert_eq!(outcome.record.error_class, "");
    }

    /// A state with one priced deployment ("gpt": 1e-6 per input token, 2e-6 per output
    /// token), a virtual key `sk-budget` (alias "demo", user u1, team t1) with `key_budget`,
    /// and `budgets` in its settings.
    fn priced_state(
        key_budget: (Option<f64>, Option<f64>),
        budgets: Vec<proto::Budget>,
    ) -> Arc<State> {
        use sha2::Digest;
        let snapshot = proto::Snapshot {
            version: 1,
            settings: Some(proto::Settings {
                master_key_sha256: hex::encode(sha2::Sha256::digest(b"sk-master")),
                budgets,
                ..Default::default()
            }),
            deployments: vec![proto::Deployment {
                pricing: Some(proto::Pricing {
                    input_cost_per_token: Some(1e-6),
                    output_cost_per_token: Some(2e-6),
                    ..Default::default()
                }),
                ..crate::snapshot::tests::deployment(
                    "gpt",
                    proto::ProviderKind::Openai,
                    "http://127.0.0.1:9/v1",
                )
            }],
            keys: vec![proto::VirtualKey {
                key_sha256: hex::encode(sha2::Sha256::digest(b"sk-budget")),
                key_alias: "demo".into(),
                user_id: "u1".into(),
                team_id: "t1".into(),
                max_budget: key_budget.0,
                soft_budget: key_budget.1,
                ..Default::default()
            }],
        };
        Arc::new(State::from_snapshot(snapshot).0)
    }

    const KEY_HEADER: &str = "Bearer sk-budget";

    /// Sends `body` with the budgeted key; the host's spend is `spend`.
    fn send_with_key(
        state: &Arc<State>,
        body: &[u8],
        spend: &[(proto::BudgetScope, &str, f64)],
        tags: Option<&str>,
    ) -> (FakeHost, Exchange) {
        let mut host = FakeHost {
            now: 5_000,
            request_body: body.to_vec(),
            spend: spend
                .iter()
                .map(|(scope, id, amount)| ((*scope as i32, id.to_string()), *amount))
                .collect(),
            ..FakeHost::default()
        };
        let headers = RequestHeaders {
            authorization: Some(KEY_HEADER),
            tags,
            ..chat_headers(None)
        };
        let mut exchange = Exchange::new();
        exchange.on_request_headers(&mut host, Some(state), &headers, false);
        exchange.on_request_body(&mut host, body.len(), true);
        (host, exchange)
    }

    fn key_hash() -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"sk-budget"))
    }

    #[test]
    fn a_buffered_answer_carries_its_cost_and_the_record_says_who_pays() {
        let state = priced_state((None, None), Vec::new());
        let body = br#"{"model":"gpt","user":"alice","metadata":{"tags":["prod","a"]},"messages":[{"role":"user","content":"hi"}]}"#;
        let (mut host, mut exchange) = send_with_key(&state, body, &[], Some("a, b,,"));
        assert!(exchange.is_upstream(), "{:?}", host.local_reply);
        exchange.on_response_headers(&mut host, Some(200), Some("application/json"), false);
        host.response_body = br#"{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":50,"total_tokens":1050,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":20}}}"#.to_vec();
        let size = host.response_body.len();
        exchange.on_response_body(&mut host, size, true);
        let cost = 1000.0 * 1e-6 + 50.0 * 2e-6;
        assert_eq!(cost, 0.0011);
        assert!(host
            .response_headers_set
            .contains(&(COST_HEADER.to_string(), "0.0011".to_string())));
        assert!(host
            .response_headers_set
            .contains(&(TOLLGATE_COST_HEADER.to_string(), "0.0011".to_string())));
        let Some(Outcome::Upstream(outcome)) = exchange.outcome(5_100, &mut RecordIds::new(1))
        else {
            panic!("not an upstream outcome");
        };
        let record = outcome.record;
        assert_eq!(record.cost, Some(0.0011));
        assert_eq!(record.reasoning_tokens, Some(20));
        assert_eq!(record.key_hash, key_hash());
        assert_eq!(
            (
                record.key_alias.as_str(),
                record.user_id.as_str(),
                record.team_id.as_str()
            ),
            ("demo", "u1", "t1")
        );
        assert_eq!(record.end_user, "alice");
        assert_eq!(record.tags, vec!["prod", "a", "b"]);
        assert_eq!(
            (record.answered_by_gateway, record.error_type.as_str()),
            (false, "")
        );
    }

    #[test]
    fn an_unpriced_or_unreported_answer_has_no_cost_header() {
        let state = Arc::new(state());
        let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        let (mut host, mut exchange) = sent_upstream(&state, body);
        exchange.on_response_headers(&mut host, Some(200), Some("application/json"), false);
        host.response_body = br#"{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#.to_vec();
        let size = host.response_body.len();
        exchange.on_response_body(&mut host, size, true);
        assert!(host
            .response_headers_set
            .iter()
            .all(|(name, _)| name != COST_HEADER));
        let Some(Outcome::Upstream(outcome)) = exchange.outcome(1, &mut RecordIds::new(1)) else {
            panic!("not an upstream outcome");
        };
        assert_eq!(outcome.record.cost, None, "unknown, not 0");
    }

    #[test]
    fn a_spent_budget_refuses_with_400_and_a_record_of_the_refusal() {
        let state = priced_state((Some(0.5), None), Vec::new());
        let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        let hash = key_hash();
        let (host, exchange) =
            send_with_key(&state, body, &[(proto::BudgetScope::Key, &hash, 0.5)], None);
        assert!(host.upstream.is_none());
        let (status, json) = host.local_reply.clone().unwrap();
        assert_eq!(status, 400);
        assert_eq!(json["error"]["type"], "budget_exceeded");
        assert_eq!(
            json["error"]["message"],
            "Budget has been exceeded! key demo spent 0.5 USD of its max budget of 0.5 USD in this budget window."
        );
        let Some(Outcome::Answered {
            status: 400,
            record: Some(record),
        }) = exchange.outcome(5_000, &mut RecordIds::new(1))
        else {
            panic!("not a refusal");
        };
        assert_eq!(record.error_type, "budget_exceeded");
        assert_eq!(
            (record.model_name.as_str(), record.key_hash.as_str()),
            ("gpt", hash.as_str())
        );
        assert_eq!(record.key_alias, "demo");

        // Under the budget it goes upstream.
        let (host, exchange) = send_with_key(
            &state,
            body,
            &[(proto::BudgetScope::Key, &hash, 0.49)],
            None,
        );
        assert!(exchange.is_upstream(), "{:?}", host.local_reply);
        assert_eq!(
            host.spend_asked,
            vec![(proto::BudgetScope::Key, hash.clone())]
        );
    }

    #[test]
    fn team_and_global_budgets_refuse_too_and_a_soft_budget_only_warns() {
        let budget = |scope: proto::BudgetScope, id: &str, max: Option<f64>, soft: Option<f64>| {
            proto::Budget {
                scope: scope as i32,
                id: id.into(),
                max_budget: max,
                soft_budget: soft,
            }
        };
        let state = priced_state(
            (None, Some(0.1)),
            vec![
                budget(proto::BudgetScope::Team, "t1", Some(2.0), None),
                budget(proto::BudgetScope::Global, "", Some(100.0), None),
            ],
        );
        let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        let (host, _) = send_with_key(&state, body, &[(proto::BudgetScope::Team, "t1", 2.5)], None);
        let (status, json) = host.local_reply.unwrap();
        assert_eq!(status, 400);
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team t1 spent 2.5 USD"));
        let (host, _) = send_with_key(
            &state,
            body,
            &[(proto::BudgetScope::Global, "", 100.0)],
            None,
        );
        assert_eq!(host.local_reply.unwrap().0, 400);

        let hash = key_hash();
        let (mut host, mut exchange) =
            send_with_key(&state, body, &[(proto::BudgetScope::Key, &hash, 0.2)], None);
        assert!(exchange.is_upstream());
        exchange.on_response_headers(&mut host, Some(200), Some("application/json"), false);
        assert!(host
            .response_headers_set
            .contains(&(SOFT_BUDGET_HEADER.to_string(), "key".to_string())));
    }

    fn limited_state(limits: proto::RateLimits) -> Arc<State> {
        let mut snapshot = proto::Snapshot {
            version: 1,
            deployments: vec![crate::snapshot::tests::deployment(
                "gpt",
                proto::ProviderKind::Openai,
                "http://127.0.0.1:9/v1",
            )],
            keys: vec![proto::VirtualKey {
                key_sha256: key_hash(),
                key_alias: "demo".into(),
                user_id: "u1".into(),
                team_id: "t1".into(),
                limits: Some(limits),
                ..Default::default()
            }],
            ..Default::default()
        };
        snapshot.settings = Some(proto::Settings {
            master_key_sha256: "00".repeat(32),
            ..Default::default()
        });
        Arc::new(State::from_snapshot(snapshot).0)
    }

    #[test]
    fn a_rate_limited_request_waits_for_its_lease_and_carries_the_remaining_headers() {
        let state = limited_state(proto::RateLimits {
            rpm: Some(2),
            ..Default::default()
        });
        let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        let mut host = FakeHost {
            now: 120_000 + 15_000,
            request_body: body.to_vec(),
            ..FakeHost::default()
        };
        host.quota.set_connected(true);
        let headers = RequestHeaders {
            authorization: Some(KEY_HEADER),
            ..chat_headers(None)
        };
        let mut exchange = Exchange::new();
        exchange.on_request_headers(&mut host, Some(&state), &headers, false);
        assert_eq!(
            exchange.on_request_body(&mut host, body.len(), true),
            Verdict::Pause
        );
        assert!(exchange.awaits_quota());
        assert!(host.upstream.is_none());
        let request = host.quota.take_request().expect("an ask");
        let ask = &request.asks[0];
        assert_eq!(
            (
                ask.scope,
                ask.id.as_str(),
                ask.kind,
                ask.limit,
                ask.window_start_unix_ms
            ),
            (
                proto::BudgetScope::Key as i32,
                key_hash().as_str(),
                proto::LimitKind::Requests as i32,
                2,
                120_000
            )
        );
        // Still nothing: waiting on.
        assert_eq!(exchange.on_quota(&mut host), Verdict::Pause);
        host.quota.apply(
            &proto::QuotaGrant {
                request_id: request.request_id,
                leases: vec![proto::QuotaLease {
                    scope: ask.scope,
                    id: ask.id.clone(),
                    kind: ask.kind,
                    window_start_unix_ms: 120_000,
                    granted: 1,
                    remaining: 1,
                }],
            },
            host.now,
        );
        assert_eq!(exchange.on_quota(&mut host), Verdict::Continue);
        assert!(exchange.is_upstream());
        // A wake-up for an exchange no longer waiting leaves it as it is.
        assert_eq!(exchange.on_quota(&mut host), Verdict::Pause);
        assert!(exchange.is_upstream());
        assert!(host.upstream.is_some());
        exchange.on_response_headers(&mut host, Some(200), Some("application/json"), false);
        for expected in [
            ("x-ratelimit-limit-requests", "2"),
            ("x-ratelimit-remaining-requests", "1"),
            ("x-ratelimit-reset-requests", "45s"),
            ("x-tollgate-ratelimit-window", "120000"),
        ] {
            assert!(
                host.response_headers_set
                    .contains(&(expected.0.to_string(), expected.1.to_string())),
                "{expected:?} in {:?}",
                host.response_headers_set
            );
        }
    }

    #[test]
    fn a_spent_rate_limit_is_a_429_with_retry_after_and_a_record() {
        let state = limited_state(proto::RateLimits {
            rpm: Some(1),
            ..Default::default()
        });
        let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        // No stream to the authority: the filter counts alone against the whole limit.
        let mut host = FakeHost {
            now: 120_000 + 20_000,
            request_body: body.to_vec(),
            ..FakeHost::default()
        };
        let headers = RequestHeaders {
            authorization: Some(KEY_HEADER),
            ..chat_headers(None)
        };
        let mut first = Exchange::new();
        first.on_request_headers(&mut host, Some(&state), &headers, false);
        assert_eq!(
            first.on_request_body(&mut host, body.len(), true),
            Verdict::Continue
        );
        let mut second = Exchange::new();
        second.on_request_headers(&mut host, Some(&state), &headers, false);
        assert_eq!(
            second.on_request_body(&mut host, body.len(), true),
            Verdict::Pause
        );
        let (status, json) = host.local_reply.clone().expect("a refusal");
        assert_eq!(status, 429);
        assert_eq!(json["error"]["type"], "rate_limit_error");
        assert_eq!(json["error"]["code"], "rate_limit_exceeded");
        assert_eq!(
            json["error"]["message"],
            "Rate limit reached for key demo on requests per minute (rpm): limit 1, this request needs 1. Retry in 40s."
        );
        for expected in [
            ("retry-after", "40"),
            ("retry-after-ms", "40000"),
            ("x-ratelimit-limit-requests", "1"),
            ("x-ratelimit-remaining-requests", "0"),
        ] {
            assert!(
                host.local_reply_headers
                    .contains(&(expected.0.to_string(), expected.1.to_string())),
                "{expected:?} in {:?}",
                host.local_reply_headers
            );
        }
        let Some(Outcome::Answered {
            status: 429,
            record: Some(record),
        }) = second.outcome(140_001, &mut RecordIds::new(1))
        else {
            panic!("a refusal record");
        };
        assert_eq!(record.error_type, "rate_limit_error");
        assert!(record.answered_by_gateway);
    }

    #[test]
    fn bad_user_and_tags_are_400s_naming_the_field() {
        let state = priced_state((None, None), Vec::new());
        for (body, param) in [
            (
                r#"{"model":"gpt","user":7,"messages":[{"role":"user","content":"hi"}]}"#,
                "user",
            ),
            (
                r#"{"model":"gpt","metadata":[],"messages":[{"role":"user","content":"hi"}]}"#,
                "metadata",
            ),
            (
                r#"{"model":"gpt","metadata":{"tags":"x"},"messages":[{"role":"user","content":"hi"}]}"#,
                "metadata.tags",
            ),
            (
                r#"{"model":"gpt","metadata":{"tags":[1]},"messages":[{"role":"user","content":"hi"}]}"#,
                "metadata.tags",
            ),
        ] {
            let (host, _) = send_with_key(&state, body.as_bytes(), &[], None);
            let (status, json) = host.local_reply.unwrap();
            assert_eq!(
                (status, json["error"]["param"].as_str()),
                (400, Some(param)),
                "{body}"
            );
        }
    }

    /// A host and an exchange that sent the chat request `body` upstream.
    fn sent_upstream(state: &Arc<State>, body: &[u8]) -> (FakeHost, Exchange) {
        let mut host = FakeHost {
            request_body: body.to_vec(),
            ..FakeHost::default()
        };
        let mut exchange = Exchange::new();
        exchange.on_request_headers(&mut host, Some(state), &chat_headers(None), false);
        exchange.on_request_body(&mut host, body.len(), true);
        (host, exchange)
    }

    /// A state whose buffered-response limit is `limit` bytes.
    fn state_with_response_limit(limit: u64) -> Arc<State> {
        let snapshot = proto::Snapshot {
            version: 1,
            settings: Some(proto::Settings {
                max_response_body_bytes: limit,
                ..Default::default()
            }),
            deployments: vec![crate::snapshot::tests::deployment(
                "gpt",
                proto::ProviderKind::Openai,
                "http://127.0.0.1:9/v1",
            )],
            ..Default::default()
        };
        Arc::new(State::from_snapshot(snapshot).0)
    }

    #[test]
    fn a_buffered_answer_over_the_limit_is_a_502_and_the_rest_is_dropped() {
        let state = state_with_response_limit(64);
        let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        let (mut host, mut exchange) = sent_upstream(&state, body);
        let verdict =
            exchange.on_response_headers(&mut host, Some(200), Some("application/json"), false);
        assert_eq!(verdict, Verdict::Pause);
        // Within the limit: buffered on.
        host.response_body = vec![b'x'; 64];
        assert_eq!(
            exchange.on_response_body(&mut host, 64, false),
            Verdict::Pause
        );
        // One byte over: the client gets the error now, not after the whole answer.
        host.response_body = vec![b'x'; 65];
        assert_eq!(
            exchange.on_response_body(&mut host, 65, false),
            Verdict::Continue
        );
        let error: serde_json::Value = serde_json::from_slice(&host.response_body).unwrap();
        assert_eq!(error["error"]["code"], "upstream_response_too_large");
        assert_eq!(error["error"]["type"], "api_error");
        assert!(host
            .response_headers_set
            .contains(&(":status".to_string(), "502".to_string())));
        assert!(host
            .response_headers_removed
            .contains(&"content-length".to_string()));
        // What the provider still sends is dropped.
        host.response_body = vec![b'y'; 4096];
        assert_eq!(
            exchange.on_response_body(&mut host, 4096, true),
            Verdict::Continue
        );
        assert!(host.response_body.is_empty());
        let Some(Outcome::Upstream(outcome)) = exchange.outcome(0, &mut RecordIds::new(7)) else {
            panic!("not an upstream outcome");
        };
        assert_eq!(outcome.status, 502);
        assert!(outcome.response_too_large);
        assert_eq!(outcome.record.status, 502);
        // The class the routing book judged it by travels with the record.
        assert_eq!(outcome.record.error_class, "server_error");
    }

    #[test]
    fn translates_an_anthropic_stream_chunk_by_chunk() {
        let state = Arc::new(state());
        let body =
            br#"{"model":"claude","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let (mut host, mut exchange) = sent_upstream(&state, body);
        assert_eq!(host.upstream.as_ref().unwrap().1, "/v1/messages");
        let verdict =
            exchange.on_response_headers(&mut host, Some(200), Some("text/event-stream"), false);
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(host.response_headers_removed, vec!["content-length"]);
        host.now = 5;
        host.response_body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n".to_vec();
        let size = host.response_body.len();
        assert_eq!(
            exchange.on_response_body(&mut host, size, false),
            Verdict::Continue
        );
        let out = String::from_utf8(host.response_body.clone()).unwrap();
        assert!(out.starts_with("data: {"), "{out}");
        assert!(out.contains("\"content\":\"Hel\""), "{out}");
        let Some(Outcome::Upstream(outcome)) = exchange.outcome(9, &mut RecordIds::new(7)) else {
            panic!("not an upstream outcome");
        };
        assert!(outcome.record.stream);
        assert_eq!(outcome.first_byte_ms, Some(5));
    }
}
