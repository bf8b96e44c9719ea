//! The request path: which endpoint, which deployment, what to send upstream.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;

use crate::auth::Caller;
use crate::aws::sigv4;
use crate::proto;
use crate::providers::{bedrock, translate_request, ResponseHandler, TranslateContext};
use crate::request::summarize_chat_request;
use crate::snapshot::Deployment;
use crate::{GatewayError, State};

/// Header the Envoy route table matches to pick the upstream cluster. Clients must never
/// set it themselves (it would make the gateway an open proxy): the glue strips it from
/// every incoming request.
pub const ROUTE_HEADER: &str = "x-tollgate-upstream";

/// The client headers that reach a provider, besides those the plan sets: the request line
/// (`:method`, `:scheme`; `:path` and `:authority` are the plan's), content negotiation, the
/// request id and trace context. Everything else stays at the gateway: the client's gateway
/// key, cookies, provider-account headers (`openai-organization`, `anthropic-beta`, ...),
/// forwarding headers, and `accept-encoding` (the gateway reads response bodies, so they
/// must not be compressed). An allowlist, not a denylist: a header nobody thought of when
/// this list was written does not leak.
pub const FORWARDED_CLIENT_HEADERS: [&str; 20] = [
    ":method",
    ":scheme",
    // Set by Envoy, not the client; Envoy's route lookup finds no route without it.
    "x-forwarded-proto",
    "content-type",
    "accept",
    "user-agent",
    "x-request-id",
    // W3C trace context and baggage.
    "traceparent",
    "tracestate",
    "baggage",
    // Zipkin B3, OpenTracing, cloud tracers.
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "x-amzn-trace-id",
    "sentry-trace",
];

/// The name under which a client header may reach a provider (as written in
/// [`FORWARDED_CLIENT_HEADERS`]), or `None` when it must not. Envoy hands header names over
/// in lower case, which one `match` compares at the cost of a length check and a memcmp per
/// candidate; a name with upper-case letters (another host) is compared without regard to
/// case.
pub fn forwarded_client_header(name: &[u8]) -> Option<&'static str> {
    let found = match name {
        b":method" => ":method",
        b":scheme" => ":scheme",
        b"x-forwarded-proto" => "x-forwarded-proto",
        b"content-type" => "content-type",
        b"accept" => "accept",
        b"user-agent" => "user-agent",
        b"x-request-id" => "x-request-id",
        b"traceparent" => "traceparent",
        b"tracestate" => "tracestate",
        b"baggage" => "baggage",
        b"b3" => "b3",
        b"x-b3-traceid" => "x-b3-traceid",
        b"x-b3-spanid" => "x-b3-spanid",
        b"x-b3-parentspanid" => "x-b3-parentspanid",
        b"x-b3-sampled" => "x-b3-sampled",
        b"x-b3-flags" => "x-b3-flags",
        b"x-ot-span-context" => "x-ot-span-context",
        b"x-cloud-trace-context" => "x-cloud-trace-context",
        b"x-amzn-trace-id" => "x-amzn-trace-id",
        b"sentry-trace" => "sentry-trace",
        _ if name.iter().any(u8::is_ascii_uppercase) => {
            return FORWARDED_CLIENT_HEADERS
                .into_iter()
                .find(|allowed| allowed.as_bytes().eq_ignore_ascii_case(name));
        }
        _ => return None,
    };
    Some(found)
}

/// What a request is, from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions` or `/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings` or `/embeddings`.
    Embeddings,
    /// `POST /v1/completions` or `/completions`: legacy text completions.
    Completions,
    /// `GET /v1/models` or `/models`.
    Models,
    /// `GET /health`: every deployment's health as this filter sees it (master key only).
    Health,
    /// `GET /health/liveliness` (or `/health/liveness`): the filter runs.
    Liveliness,
    /// `GET /health/readiness`: the filter holds a snapshot and serves.
    Readiness,
    /// A known endpoint with the wrong method.
    WrongMethod,
    /// Not the filter's business; Envoy's routes decide.
    Other,
}

/// Classifies a request.
pub fn classify(method: &str, path: &str) -> Endpoint {
    let path = path.split('?').next().unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    let (endpoint, expected) = match path {
        "/v1/chat/completions" | "/chat/completions" => (Endpoint::ChatCompletions, "POST"),
        "/v1/embeddings" | "/embeddings" => (Endpoint::Embeddings, "POST"),
        "/v1/completions" | "/completions" => (Endpoint::Completions, "POST"),
        "/v1/models" | "/models" => (Endpoint::Models, "GET"),
        "/health" => (Endpoint::Health, "GET"),
        "/health/liveliness" | "/health/liveness" => (Endpoint::Liveliness, "GET"),
        "/health/readiness" => (Endpoint::Readiness, "GET"),
        _ => return Endpoint::Other,
    };
    if method.eq_ignore_ascii_case(expected) {
        endpoint
    } else {
        Endpoint::WrongMethod
    }
}

/// The filter's static configuration (Envoy's plugin `configuration`): only what it needs to
/// find the control plane. Everything else arrives in snapshots.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Envoy cluster of the control plane (the proxy-wasm filter's stream goes through it).
    #[serde(default = "default_control_plane_cluster")]
    pub control_plane_cluster: String,
    /// gRPC URL of the control plane for the native module, which connects from a thread of
    /// its own instead of through an Envoy cluster.
    #[serde(default = "default_control_plane_url")]
    pub control_plane_url: String,
    /// This Envoy's name, reported to the control plane.
    #[serde(default)]
    pub node_id: String,
    /// Request body limit before the first snapshot arrives.
    #[serde(default)]
    pub max_request_body_bytes: Option<u64>,
    /// Milliseconds between reconnect attempts to the control plane.
    #[serde(default = "default_reconnect_ms")]
    pub reconnect_ms: u64,
    /// Environment variable of Envoy's process that holds the filter token the stream
    /// presents (see [`crate::channel`]); the Wasm VM sees it only when its
    /// `vm_config.environment_variables.host_env_keys` lists it.
    #[serde(default = "default_control_plane_token_env")]
    pub control_plane_token_env: String,
    /// TLS to the control plane, for the native module (`control_plane_url` is then
    /// `https://`). The Wasm filter's stream goes through an Envoy cluster, whose transport
    /// socket does TLS instead.
    #[serde(default)]
    pub control_plane_tls: Option<ControlPlaneTls>,
    /// Whether Envoy has the attempts route (`x-tollgate-upstream: attempts`, with the retry
    /// policy that retries an answer marked `x-tollgate-retry`) and the internal attempts
    /// listener behind it: then a request that may need another deployment or a fallback
    /// is relayed through them. Without, every request goes straight to one deployment.
    #[serde(default)]
    pub attempts_route: bool,
}

/// How the native module verifies the control plane and, for mutual TLS, proves itself.
/// Files are read at every connection, so renewed certificates are picked up.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneTls {
    /// PEM file of the CA(s) the control plane's certificate must chain to.
    pub ca_file: String,
    /// PEM certificate chain presented to the control plane (mutual TLS).
    #[serde(default)]
    pub client_cert_file: Option<String>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<String>,
    /// Name the control plane's certificate must carry; default the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_control_plane_cluster() -> String {
    "tollgate_control_plane".to_string()
}

fn default_control_plane_url() -> String {
    "http://127.0.0.1:50051".to_string()
}

fn default_reconnect_ms() -> u64 {
    500
}

fn default_control_plane_token_env() -> String {
    crate::channel::DEFAULT_FILTER_TOKEN_ENV.to_string()
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            control_plane_cluster: default_control_plane_cluster(),
            control_plane_url: default_control_plane_url(),
            node_id: String::new(),
            max_request_body_bytes: None,
            reconnect_ms: default_reconnect_ms(),
            control_plane_token_env: default_control_plane_token_env(),
            control_plane_tls: None,
            attempts_route: false,
        }
    }
}

impl PluginConfig {
    /// Parses the plugin configuration; empty means defaults.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(PluginConfig::default());
        }
        serde_json::from_slice(bytes)
            .map_err(|error| format!("invalid plugin configuration: {error}"))
    }
}

/// Everything the glue must do to send a chat request upstream.
pub struct RequestPlan {
    /// The chosen deployment.
    pub deployment: Arc<Deployment>,
    /// Value for [`ROUTE_HEADER`].
    pub route_value: &'static str,
    /// New `:authority`.
    pub authority: String,
    /// New `:path`.
    pub path: String,
    /// Headers to set.
    pub headers: Vec<(&'static str, String)>,
    /// New body (empty when [`Self::keeps_body`]).
    pub body: Vec<u8>,
    /// The client's body goes on unchanged (a request relayed through the attempts route,
    /// translated per attempt): the glue leaves it in place instead of writing
    /// [`Self::body`].
    pub keeps_body: bool,
    /// `content-length` of [`Self::body`].
    pub body_length: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The response side.
    pub response: ResponseHandler,
    /// The request's `user` field (empty: none).
    pub end_user: String,
    /// The request's `metadata.tags`.
    pub tags: Vec<String>,
}

impl std::fmt::Debug for RequestPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestPlan")
            .field("deployment", &self.deployment)
            .field("route_value", &self.route_value)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("headers", &crate::redact::Headers(&self.headers))
            .field("body", &self.body)
            .field("body_length", &self.body_length)
            .field("keeps_body", &self.keeps_body)
            .field("stream", &self.stream)
            .field("response", &self.response)
            .finish()
    }
}

impl RequestPlan {
    /// What the response cost so far, in US dollars: `None` while the provider reported no
    /// usage, or when the deployment is not priced.
    pub fn cost(&self) -> Option<f64> {
        self.deployment.prices?.cost(&self.response.usage())
    }

    /// Whether the plan sets header `name` (lower case, as Envoy and the plan write names)
    /// itself, so a client's value never matters.
    fn sets_header(&self, name: &[u8]) -> bool {
        const ROUTE: &[u8] = ROUTE_HEADER.as_bytes();
        matches!(name, b":path" | b":authority" | b"content-length" | ROUTE)
            || self.headers.iter().any(|(set, _)| set.as_bytes() == name)
    }

    /// Whether a client header must be removed before the request goes upstream: it is not
    /// one of [`FORWARDED_CLIENT_HEADERS`] and the plan does not set it anyway (a host that
    /// edits headers one by one need not remove what it is about to overwrite).
    pub fn drops_client_header(&self, name: &[u8]) -> bool {
        forwarded_client_header(name).is_none() && !self.sets_header(name)
    }

    /// The whole upstream header map, built from the client's headers (`client`, as read from
    /// the host, as bytes) and this plan, so the glue can write it in one host call: every
    /// host call crosses the Wasm boundary, and one write of ~10 headers costs less than six
    /// single ones. Keeps only the client headers of [`FORWARDED_CLIENT_HEADERS`] (their
    /// values byte for byte), then sets `:path`, `:authority`, `content-length`, the routing
    /// header and every header the provider needs.
    pub fn upstream_headers<'a>(
        &'a self,
        client: &'a [(Vec<u8>, Vec<u8>)],
    ) -> Vec<(&'a str, &'a [u8])> {
        let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(self.headers.len() + 10);
        headers.extend(client.iter().filter_map(|(name, value)| {
            let name = forwarded_client_header(name)?;
            (!self.sets_header(name.as_bytes())).then_some((name, value.as_slice()))
        }));
        headers.push((":path", self.path.as_bytes()));
        headers.push((":authority", self.authority.as_bytes()));
        headers.push(("content-length", self.body_length.as_bytes()));
        headers.push((ROUTE_HEADER, self.route_value.as_bytes()));
        headers.extend(
            self.headers
                .iter()
                .map(|(name, value)| (*name, value.as_bytes())),
        );
        headers
    }
}

/// Validates, resolves and translates a chat completion request for a caller with access
/// to every model.
pub fn plan_chat_request(
    state: &State,
    body: &[u8],
    context: &TranslateContext,
) -> Result<RequestPlan, GatewayError> {
    plan_chat_request_for(state, &Caller::default(), body, context)
}

/// Validates, resolves and translates a chat completion request for `caller` (the
/// deployment taken round robin: the exchange routes with [`crate::routing`] instead).
pub fn plan_chat_request_for(
    state: &State,
    caller: &Caller,
    body: &[u8],
    context: &TranslateContext,
) -> Result<RequestPlan, GatewayError> {
    let summary = summarize_chat_request(body)?;
    caller.check_model(&summary.model)?;
    let deployment = state
        .model(&summary.model)
        .and_then(|group| group.pick())
        .ok_or_else(|| GatewayError::ModelNotFound(summary.model.to_string()))?
        .clone();
    plan_chat_request_to(state, deployment, summary, body, context)
}

/// Translates a validated chat completion request (`summary` of `body`) for `deployment`.
pub fn plan_chat_request_to(
    state: &State,
    deployment: Arc<Deployment>,
    summary: crate::request::ChatRequestSummary<'_>,
    body: &[u8],
    context: &TranslateContext,
) -> Result<RequestPlan, GatewayError> {
    // The deployment's default parameters the client did not give: the request with them is
    // summarized again (its spans moved), and only then translated.
    let with_defaults = deployment.default_params.apply(body)?;
    let (summary, body) = match &with_defaults {
        Some(merged) => {
            let mut merged_summary = summarize_chat_request(merged)?;
            merged_summary.usage_to_gateway = summary.usage_to_gateway;
            (merged_summary, merged.as_slice())
        }
        None => (summary, body),
    };
    let (upstream, translator) = translate_request(&summary, body, &deployment, context)?;
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
        stream: summary.stream,
        response: ResponseHandler::new(translator, summary.stream),
        deployment,
        end_user: summary.end_user.map(Cow::into_owned).unwrap_or_default(),
        tags: summary.tags.into_iter().map(Cow::into_owned).collect(),
    })
}

/// Value of [`ROUTE_HEADER`] that sends a request through the attempts route: Envoy's route
/// with the retry policy that retries an attempt marked with
/// [`crate::routing::attempts::RETRY_HEADER`], to the internal attempts listener.
pub const ATTEMPTS_ROUTE: &str = "attempts";

/// What the relaying side of a request needs besides its first deployment and ledger key.
pub struct Relayed {
    /// The endpoint's path on the attempts listener (where each attempt is translated).
    pub path: &'static str,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The response side: the answer that comes back is already OpenAI's (the attempt
    /// translated it), so it only reads usage, and removes the usage chunk again when the
    /// client did not ask for one (attempts always send it).
    pub response: crate::providers::ResponseTranslator,
    /// The `user` field (empty when none).
    pub end_user: String,
    /// The request's tags.
    pub tags: Vec<String>,
}

impl Relayed {
    /// A chat completions request.
    pub fn chat(summary: &crate::request::ChatRequestSummary<'_>) -> Self {
        Relayed::openai_shaped(
            "/v1/chat/completions",
            summary.stream,
            summary.include_usage,
        )
        .with(summary.end_user.as_deref(), &summary.tags)
    }

    /// A text completions request.
    pub fn completion(summary: &crate::completions::CompletionRequestSummary<'_>) -> Self {
        Relayed::openai_shaped("/v1/completions", summary.stream, summary.include_usage)
            .with(summary.end_user.as_deref(), &summary.tags)
    }

    /// An embeddings request.
    pub fn embeddings(request: &crate::providers::embeddings::EmbeddingsRequest<'_>) -> Self {
        let response = crate::providers::embeddings::EmbeddingsResponse::relayed(request);
        let response = crate::providers::ResponseTranslator::Embeddings(response);
        Relayed::new("/v1/embeddings", false, response).with(request.end_user.as_deref(), &[])
    }

    fn openai_shaped(path: &'static str, stream: bool, include_usage: bool) -> Self {
        let response = crate::providers::openai::OpenAiResponse::new(stream, include_usage, None);
        let response = crate::providers::ResponseTranslator::OpenAi(response);
        Relayed::new(path, stream, response)
    }

    fn new(
        path: &'static str,
        stream: bool,
        response: crate::providers::ResponseTranslator,
    ) -> Self {
        Relayed {
            path,
            stream,
            response,
            end_user: String::new(),
            tags: Vec::new(),
        }
    }

    fn with(mut self, end_user: Option<&str>, tags: &[Cow<'_, str>]) -> Self {
        self.end_user = end_user.map(str::to_string).unwrap_or_default();
        self.tags = tags.iter().map(|tag| tag.to_string()).collect();
        self
    }
}

/// The plan of a request relayed through the attempts route: the client's body goes on
/// unchanged (each attempt translates it for its own deployment), with the ledger key of
/// the request and the most retries Envoy may make.
pub fn relay_plan(
    first: Arc<Deployment>,
    relayed: Relayed,
    body_size: usize,
    key: String,
) -> RequestPlan {
    let max_retries = crate::routing::MAX_ATTEMPTS - 1;
    RequestPlan {
        deployment: first,
        route_value: ATTEMPTS_ROUTE,
        authority: "tollgate-attempts".to_string(),
        path: relayed.path.to_string(),
        headers: vec![
            (crate::routing::attempts::ATTEMPT_HEADER, key),
            ("x-envoy-max-retries", max_retries.to_string()),
        ],
        body: Vec::new(),
        keeps_body: true,
        body_length: body_size.to_string(),
        stream: relayed.stream,
        response: ResponseHandler::new(relayed.response, relayed.stream),
        end_user: relayed.end_user,
        tags: relayed.tags,
    }
}

/// Envoy's headers for the attempts of a request sent straight to `deployment` (it has no
/// other deployment to go to): the router retries it there itself on the failures the
/// retry policy retries, and each attempt gets the deployment's timeout. Envoy takes one
/// retry count for all classes: the largest of those retried.
pub fn direct_attempt_headers(
    config: &crate::routing::RouterConfig,
    deployment: &Deployment,
    own_retries: Option<u32>,
    stream: bool,
    headers: &mut Vec<(&'static str, String)>,
) {
    use crate::routing::ErrorClass;
    // The request's own num_retries replaces the router's for every class retried.
    let retries_for = |class| own_retries.unwrap_or_else(|| config.retries_for(class, deployment));
    let retries = own_retries.unwrap_or_else(|| config.max_default_retries(deployment));
    if retries > 0 {
        let mut retry_on: Vec<&str> = Vec::with_capacity(3);
        if retries_for(ErrorClass::ServerError) > 0 {
            retry_on.push("5xx,reset,connect-failure,refused-stream");
        } else if retries_for(ErrorClass::Timeout) > 0 {
            retry_on.push("gateway-error");
        }
        if retries_for(ErrorClass::RateLimit) > 0 {
            retry_on.push("retriable-status-codes");
            headers.push(("x-envoy-retriable-status-codes", "429".to_string()));
        }
        headers.push(("x-envoy-retry-on", retry_on.join(",")));
        headers.push(("x-envoy-max-retries", retries.to_string()));
    }
    attempt_timeout_header(config, deployment, stream, headers);
}

/// The per-attempt timeout of `deployment` as Envoy's header (the time to the response's
/// start: Envoy ignores it once the response has begun, which is what a stream timeout is).
pub fn attempt_timeout_header(
    config: &crate::routing::RouterConfig,
    deployment: &Deployment,
    stream: bool,
    headers: &mut Vec<(&'static str, String)>,
) {
    let timeout_ms = config.attempt_timeout_ms(deployment, stream);
    if timeout_ms > 0 {
        headers.push((
            "x-envoy-upstream-rq-per-try-timeout-ms",
            timeout_ms.to_string(),
        ));
    }
}

/// The last step of a plan, once the request's authority, path (with its query), headers and
/// body are final: providers that authenticate each request by its content get their
/// signature headers, and those that take a short-lived token get it. Deployments with
/// Bedrock settings are signed with SigV4 (service `bedrock`, their region and credentials,
/// the time of the request); those with Vertex settings get the control plane's access
/// token for them as a bearer token (refused when the filter holds none that is valid, rather
/// than sent without: Google would answer 401); the others need nothing here.
///
/// What the signature covers is `host`, `x-amz-date`, `x-amz-security-token` (temporary
/// credentials) and `content-type`, all set by the plan: the glues write the plan's headers
/// over the client's, and the client headers that reach the provider
/// ([`FORWARDED_CLIENT_HEADERS`]) are not signed, which SigV4 allows.
pub(crate) fn sign_for_provider(
    state: &State,
    deployment: &Deployment,
    authority: &str,
    path_and_query: &str,
    body: &[u8],
    context: &TranslateContext,
    headers: &mut Vec<(&'static str, String)>,
) -> Result<(), GatewayError> {
    match &deployment.settings {
        Some(proto::deployment::ProviderSettings::Bedrock(settings)) => {
            sign_sigv4(settings, authority, path_and_query, body, context, headers)
        }
        Some(proto::deployment::ProviderSettings::Vertex(_)) => {
            let now_unix_ms = context.now_unix.saturating_mul(1000);
            let token = state
                .access_token(&deployment.id, now_unix_ms)
                .map_err(GatewayError::UpstreamCredentialsUnavailable)?;
            headers.push(("authorization", format!("Bearer {token}")));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Adds SigV4's `authorization`, `x-amz-date` and (temporary credentials)
/// `x-amz-security-token` for a Bedrock runtime request. The body is hashed once, here.
fn sign_sigv4(
    settings: &proto::BedrockSettings,
    authority: &str,
    path_and_query: &str,
    body: &[u8],
    context: &TranslateContext,
    headers: &mut Vec<(&'static str, String)>,
) -> Result<(), GatewayError> {
    let stored = settings.credentials.as_ref().ok_or_else(|| {
        GatewayError::UpstreamSigning("the deployment has no AWS credentials".into())
    })?;
    let credentials = sigv4::Credentials {
        access_key_id: stored.access_key_id.clone(),
        secret_access_key: stored.secret_access_key.clone(),
        session_token: (!stored.session_token.is_empty()).then(|| stored.session_token.clone()),
    };
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let signed_headers: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(name, _)| *name == "content-type")
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let request = sigv4::SignableRequest {
        method: "POST",
        host: authority,
        path,
        query,
        headers: &signed_headers,
        body,
    };
    let params = sigv4::SigningParams {
        credentials: &credentials,
        region: &settings.region,
        service: bedrock::SIGNING_SERVICE,
        unix_seconds: context.now_unix,
        settings: sigv4::SigningSettings::default(),
    };
    let signed = sigv4::sign(&request, &params)
        .map_err(|error| GatewayError::UpstreamSigning(error.to_string()))?;
    headers.extend(signed.iter().map(|(name, value)| (name, value.to_string())));
    Ok(())
}

/// The request's `:path`: the base path joined with the translator's endpoint path, then
/// the base's query and the endpoint's (Azure's `api-version` from api_base, Gemini's
/// `alt=sse` from the translator), in that order.
pub(crate) fn join_url(base_path: &str, base_query: &str, endpoint: &str) -> String {
    let (endpoint_path, endpoint_query) = endpoint.split_once('?').unwrap_or((endpoint, ""));
    let mut path = join_path(base_path, endpoint_path);
    for (at, query) in [base_query, endpoint_query]
        .into_iter()
        .filter(|query| !query.is_empty())
        .enumerate()
    {
        path.push(if at == 0 { '?' } else { '&' });
        path.push_str(query);
    }
    path
}

/// Joins a base path and an endpoint path, without doubling a segment the base already
/// ends with (api_base ".../v1/messages" or ".../v1" with "/v1/messages", ".../v1beta" with
/// "/v1beta/models/...").
fn join_path(base: &str, endpoint: &str) -> String {
    if base.ends_with(endpoint) {
        return base.to_string();
    }
    if let Some(version) = version_segment(endpoint) {
        if base.ends_with(version) {
            let rest = endpoint.get(version.len()..).unwrap_or_default();
            return [base, rest].concat();
        }
    }
    [base, endpoint].concat()
}

/// The endpoint's first segment when it is an API version ("/v1", "/v1beta", "/v2alpha").
fn version_segment(endpoint: &str) -> Option<&str> {
    let rest = endpoint.strip_prefix("/v")?;
    let end = rest.find('/').unwrap_or(rest.len());
    let name = rest.get(..end)?;
    if !name.starts_with(|c: char| c.is_ascii_digit())
        || !name.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return None;
    }
    endpoint.get(..end + 2)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto;
    use crate::snapshot::tests::deployment;

    pub(crate) fn state() -> State {
        let snapshot = proto::Snapshot {
            keys: Vec::new(),
            version: 1,
            settings: None,
            deployments: vec![
                deployment("gpt", proto::ProviderKind::Openai, "http://127.0.0.1:9/v1"),
                deployment(
                    "claude",
                    proto::ProviderKind::Anthropic,
                    "https://api.anthropic.com",
                ),
            ],
        };
        State::from_snapshot(snapshot).0
    }

    #[test]
    fn classifies_endpoints() {
        assert_eq!(
            classify("POST", "/v1/chat/completions"),
            Endpoint::ChatCompletions
        );
        assert_eq!(
            classify("POST", "/chat/completions?x=1"),
            Endpoint::ChatCompletions
        );
        assert_eq!(classify("GET", "/v1/models"), Endpoint::Models);
        assert_eq!(
            classify("GET", "/v1/chat/completions"),
            Endpoint::WrongMethod
        );
        assert_eq!(classify("GET", "/metrics"), Endpoint::Other);
    }

    #[test]
    fn joins_paths() {
        assert_eq!(
            join_path("/v1", "/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(join_path("", "/v1/messages"), "/v1/messages");
        assert_eq!(join_path("/v1", "/v1/messages"), "/v1/messages");
        assert_eq!(
            join_path("/proxy/v1/messages", "/v1/messages"),
            "/proxy/v1/messages"
        );
    }

    #[test]
    fn a_base_query_reaches_the_upstream_path() {
        let snapshot = proto::Snapshot {
            deployments: vec![deployment(
                "azure-gpt",
                proto::ProviderKind::Openai,
                "https://r.openai.azure.com/openai/deployments/gpt?api-version=2024-10-21",
            )],
            ..Default::default()
        };
        let state = State::from_snapshot(snapshot).0;
        let body = br#"{"model":"azure-gpt","messages":[{"role":"user","content":"hi"}]}"#;
        let plan = plan_chat_request(&state, body, &TranslateContext::default()).unwrap();
        assert_eq!(plan.authority, "r.openai.azure.com");
        assert_eq!(
            plan.path,
            "/openai/deployments/gpt/chat/completions?api-version=2024-10-21"
        );
    }

    fn azure_plan(settings_version: Option<&str>, flat_version: &str) -> RequestPlan {
        let snapshot = proto::Snapshot {
            deployments: vec![proto::Deployment {
                provider_name: "azure".into(),
                upstream_model: "my gpt/4o".into(),
                api_key: "azure-key".into(),
                api_version: flat_version.into(),
                provider_settings: settings_version.map(|version| {
                    proto::deployment::ProviderSettings::Azure(proto::AzureSettings {
                        api_version: version.into(),
                    })
                }),
                ..deployment(
                    "azure-gpt",
                    proto::ProviderKind::Openai,
                    "https://r.openai.azure.com",
                )
            }],
            ..Default::default()
        };
        let state = State::from_snapshot(snapshot).0;
        let body = br#"{"model":"azure-gpt","messages":[{"role":"user","content":"hi"}]}"#;
        plan_chat_request(&state, body, &TranslateContext::default()).unwrap()
    }

    fn plan_with_defaults(kind: proto::ProviderKind, body: &str) -> RequestPlan {
        let snapshot = proto::Snapshot {
            deployments: vec![proto::Deployment {
                default_params_json: r#"{"temperature":0.7,"max_tokens":4096,"stop":["END"]}"#
                    .into(),
                ..deployment("m", kind, "http://127.0.0.1:9/v1")
            }],
            ..Default::default()
        };
        let state = State::from_snapshot(snapshot).0;
        plan_chat_request(&state, body.as_bytes(), &TranslateContext::default()).unwrap()
    }

    #[test]
    fn default_params_fill_what_the_client_left_out() {
        let plan = plan_with_defaults(
            proto::ProviderKind::Openai,
            r#"{"model":"m","temperature":0.1,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(
            String::from_utf8(plan.body).unwrap(),
            r#"{"max_tokens":4096,"stop":["END"],"model":"upstream-m","temperature":0.1,"messages":[{"role":"user","content":"hi"}]}"#
        );
        // Translated like the client's own values.
        let plan = plan_with_defaults(
            proto::ProviderKind::Anthropic,
            r#"{"model":"m","max_completion_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let sent: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
        assert_eq!(sent["temperature"], 0.7);
        assert_eq!(sent["max_tokens"], 5);
        assert_eq!(sent["stop_sequences"], serde_json::json!(["END"]));
    }

    #[test]
    fn azure_deployments_get_their_path_version_and_key_header() {
        let plan = azure_plan(Some("2024-10-21"), "");
        assert_eq!(
            plan.path,
            "/openai/deployments/my%20gpt%2F4o/chat/completions?api-version=2024-10-21"
        );
        assert!(plan.headers.contains(&("api-key", "azure-key".to_string())));
        assert!(plan
            .headers
            .iter()
            .all(|(name, _)| *name != "authorization"));
    }

    /// A control plane from before typed settings sends the version in `api_version`.
    #[test]
    fn azure_settings_win_over_the_flat_api_version() {
        assert_eq!(
            azure_plan(None, "2024-02-01").path,
            "/openai/deployments/my%20gpt%2F4o/chat/completions?api-version=2024-02-01"
        );
        assert_eq!(
            azure_plan(Some("2024-10-21"), "2024-02-01").path,
            "/openai/deployments/my%20gpt%2F4o/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn bedrock_settings_without_credentials_refuse_the_deployment() {
        let bedrock = |credentials: Option<proto::AwsCredentials>| proto::Snapshot {
            deployments: vec![proto::Deployment {
                provider_settings: Some(proto::deployment::ProviderSettings::Bedrock(
                    proto::BedrockSettings {
                        region: "us-east-1".into(),
                        credentials,
                    },
                )),
                ..deployment("b", proto::ProviderKind::Openai, "https://b.example")
            }],
            ..Default::default()
        };
        let (state, problems) = State::from_snapshot(bedrock(None));
        assert!(state.model("b").is_none());
        assert_eq!(
            problems,
            ["deployments[0]: b: Bedrock settings without credentials"]
        );
        let credentials = proto::AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: String::new(),
        };
        let (state, problems) = State::from_snapshot(bedrock(Some(credentials)));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(state.model("b").is_some());
    }

    #[test]
    fn queries_of_the_base_and_the_endpoint_are_both_kept() {
        assert_eq!(
            join_url(
                "/openai/deployments/gpt",
                "api-version=2024-10-21",
                "/chat/completions"
            ),
            "/openai/deployments/gpt/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            join_url(
                "/v1beta",
                "",
                "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
            ),
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            join_url(
                "/v1beta",
                "key=k",
                "/models/g:streamGenerateContent?alt=sse"
            ),
            "/v1beta/models/g:streamGenerateContent?key=k&alt=sse"
        );
        assert_eq!(
            join_url("/v1", "", "/chat/completions"),
            "/v1/chat/completions"
        );
        // Gemini's endpoint carries its version: a base that ends with it does not double it.
        let gemini = "/v1beta/models/g:streamGenerateContent?alt=sse";
        for (base, joined) in [
            ("", "/v1beta/models/g:streamGenerateContent?alt=sse"),
            ("/v1beta", "/v1beta/models/g:streamGenerateContent?alt=sse"),
            (
                "/proxy/v1beta",
                "/proxy/v1beta/models/g:streamGenerateContent?alt=sse",
            ),
            ("/v1", "/v1/v1beta/models/g:streamGenerateContent?alt=sse"),
            (
                "/gemini",
                "/gemini/v1beta/models/g:streamGenerateContent?alt=sse",
            ),
        ] {
            assert_eq!(join_url(base, "", gemini), joined, "{base}");
        }
        assert_eq!(version_segment("/v1/messages"), Some("/v1"));
        assert_eq!(version_segment("/v1beta/models/x"), Some("/v1beta"));
        assert_eq!(version_segment("/v1beta"), Some("/v1beta"));
        assert_eq!(version_segment("/video/x"), None);
        assert_eq!(version_segment("/v/x"), None);
        assert_eq!(version_segment("/chat/completions"), None);
    }

    #[test]
    fn plans_openai_passthrough_with_minimal_edits() {
        let body =
            br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#;
        let plan = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap();
        assert_eq!(plan.route_value, "http");
        assert_eq!(plan.authority, "127.0.0.1:9");
        assert_eq!(plan.path, "/v1/chat/completions");
        assert_eq!(
            plan.body,
            br#"{"model":"upstream-gpt","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#.to_vec()
        );
        assert!(plan
            .headers
            .contains(&("authorization", "Bearer sk-provider".to_string())));
    }

    #[test]
    fn debug_output_hides_provider_keys() {
        let state = state();
        let mut printed = vec![format!("{state:?}")];
        for model in ["gpt", "claude"] {
            let body =
                format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
            let plan =
                plan_chat_request(&state, body.as_bytes(), &TranslateContext::default()).unwrap();
            assert!(plan
                .headers
                .iter()
                .any(|(_, value)| value.contains("sk-provider")));
            printed.push(format!("{plan:?}"));
        }
        let snapshot = proto::Snapshot {
            deployments: vec![deployment(
                "gpt",
                proto::ProviderKind::Openai,
                "http://h/v1",
            )],
            ..Default::default()
        };
        printed.push(format!("{snapshot:?}"));
        for debug in printed {
            assert!(!debug.contains("sk-provider"), "{debug}");
            assert!(debug.contains("<redacted>"), "{debug}");
        }
    }

    #[test]
    fn upstream_headers_keep_only_allowlisted_client_headers() {
        let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        let plan = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap();
        let client: Vec<(Vec<u8>, Vec<u8>)> = [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b"x-forwarded-proto", b"http"),
            (b":path", b"/v1/chat/completions"),
            (b":authority", b"gateway.local"),
            (b"authorization", b"Bearer sk-gateway"),
            (b"x-api-key", b"sk-gateway"),
            (b"api-key", b"sk-gateway"),
            (b"cookie", b"session=secret"),
            (b"openai-organization", b"org-client"),
            (b"openai-project", b"proj-client"),
            (b"anthropic-beta", b"tools-2024"),
            (b"x-forwarded-for", b"10.1.2.3"),
            (b"accept-encoding", b"gzip"),
            (b"content-length", b"999"),
            (ROUTE_HEADER.as_bytes(), b"https"),
            (b"x-request-id", b"abc"),
            (
                b"traceparent",
                b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            (b"User-Agent", b"sdk \xff"),
            (b"x-custom", b"1"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_vec(), value.to_vec()))
        .collect();
        let headers = plan.upstream_headers(&client);
        let values = |name: &str| -> Vec<&[u8]> {
            headers
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .collect()
        };
        assert_eq!(values(":method"), [b"POST"]);
        assert_eq!(values(":scheme"), [b"http"]);
        assert_eq!(values(":path"), [b"/v1/chat/completions"]);
        assert_eq!(values(":authority"), [b"127.0.0.1:9"]);
        assert_eq!(values("authorization"), [b"Bearer sk-provider"]);
        assert_eq!(
            values("content-length"),
            [plan.body.len().to_string().as_bytes()]
        );
        assert_eq!(values(ROUTE_HEADER), [b"http"]);
        assert_eq!(values("x-request-id"), [b"abc"]);
        assert_eq!(values("user-agent"), [b"sdk \xff"], "bytes pass untouched");
        assert_eq!(values("traceparent").len(), 1);
        let names: Vec<&str> = headers.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                ":method",
                ":scheme",
                "x-forwarded-proto",
                "x-request-id",
                "traceparent",
                "user-agent",
                ":path",
                ":authority",
                "content-length",
                ROUTE_HEADER,
                "content-type",
                "authorization"
            ],
            "nothing else: no cookie, no client key, no provider-account header"
        );
    }

    #[test]
    fn the_allowlist_match_and_the_list_agree() {
        for name in FORWARDED_CLIENT_HEADERS {
            assert_eq!(forwarded_client_header(name.as_bytes()), Some(name));
            let upper = name.to_ascii_uppercase();
            assert_eq!(forwarded_client_header(upper.as_bytes()), Some(name));
        }
        for name in [&b"cookie"[..], b"authorization", b"x-api-key", b"", b"\xff"] {
            assert_eq!(forwarded_client_header(name), None, "{name:?}");
        }
    }

    #[test]
    fn a_host_editing_headers_one_by_one_drops_what_is_not_allowlisted() {
        let body = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#;
        let plan = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap();
        for dropped in [
            &b"cookie"[..],
            b"x-api-key",
            b"openai-organization",
            b"accept-encoding",
            b"x-\xff",
        ] {
            assert!(plan.drops_client_header(dropped), "{dropped:?}");
        }
        for kept in [
            &b":method"[..],
            b"x-forwarded-proto",
            b"content-type",
            b"traceparent",
            // Set by the plan anyway: overwritten, not removed first.
            b"authorization",
            b":path",
            b"content-length",
        ] {
            assert!(!plan.drops_client_header(kept), "{kept:?}");
        }
    }

    #[test]
    fn forces_include_usage_on_streams() {
        let body = br#"{"model":"gpt","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let plan = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert_eq!(sent["model"], "upstream-gpt");

        let body = br#"{"model":"gpt","stream":true,"stream_options":{"include_usage":false,"x":1},"messages":[{"role":"user","content":"hi"}]}"#;
        let plan = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
        assert_eq!(
            sent["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
    }

    /// Checked by the `request_parser` fuzz target: `"stream_options": null` read as absent, so
    /// the forced `include_usage` went in before it and the provider, reading the last
    /// member, got `null` and counted no tokens.
    #[test]
    fn forces_include_usage_over_a_null_stream_options() {
        let body = br#"{"model":"gpt","stream":true,"messages":[{"role":"user","content":"hi"}],"stream_options":null}"#;
        let plan = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap();
        assert_eq!(
            plan.body,
            br#"{"model":"upstream-gpt","stream":true,"messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#
        );
        assert!(!summarize_chat_request(body).unwrap().include_usage);
    }

    #[test]
    fn unknown_model_is_404() {
        let body = br#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#;
        let error = plan_chat_request(&state(), body, &TranslateContext::default()).unwrap_err();
        assert_eq!(error.status(), 404);
    }

    #[test]
    fn plugin_config() {
        assert_eq!(PluginConfig::parse(b"").unwrap(), PluginConfig::default());
        let config =
            PluginConfig::parse(br#"{"control_plane_cluster":"cp","node_id":"n1"}"#).unwrap();
        assert_eq!(config.control_plane_cluster, "cp");
        assert!(PluginConfig::parse(br#"{"bogus":1}"#).is_err());
        assert_eq!(config.control_plane_token_env, "TOLLGATE_FILTER_TOKEN");
        assert_eq!(config.control_plane_tls, None);
        let config = PluginConfig::parse(
            br#"{"control_plane_url":"https://cp:50051","control_plane_token_env":"CP_TOKEN",
                "control_plane_tls":{"ca_file":"/ca.pem","client_cert_file":"/c.pem",
                "client_key_file":"/k.pem","server_name":"cp.internal"}}"#,
        )
        .unwrap();
        assert_eq!(config.control_plane_token_env, "CP_TOKEN");
        assert_eq!(
            config.control_plane_tls,
            Some(ControlPlaneTls {
                ca_file: "/ca.pem".into(),
                client_cert_file: Some("/c.pem".into()),
                client_key_file: Some("/k.pem".into()),
                server_name: Some("cp.internal".into()),
            })
        );
        assert!(
            PluginConfig::parse(br#"{"control_plane_tls":{"ca_file":"/ca","bogus":1}}"#).is_err()
        );
    }
}
