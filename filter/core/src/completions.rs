//! The legacy text completions endpoint, `POST /v1/completions` (OpenAI's "Completions" API:
//! a `prompt` in, `choices[].text` out).
//!
//! Two ways upstream, picked by the deployment's wire:
//!
//! - **Pass-through** (the OpenAI wire: OpenAI, Azure and every OpenAI-compatible preset, which
//!   serve the endpoint themselves): the body goes to `<base>/completions` (Azure:
//!   `/openai/deployments/<deployment>/completions?api-version=`) with the same two surgical
//!   edits as a chat request (the model becomes the deployment's; a stream gets
//!   `stream_options.include_usage` forced on, and the usage chunk is removed again when the
//!   client did not ask for it), and the answer comes back as it is.
//! - **Through chat** (every other wire): the request becomes a chat request with one user
//!   message holding the prompt, which the provider's chat translation sends, and
//!   [`TextCompletionResponse`] turns the OpenAI chat answer it writes back into a
//!   `text_completion` object (or stream). Only what a chat request can say is accepted: one
//!   string prompt, one choice, no `echo`, `suffix`, `logprobs` or `best_of` > 1 (each is
//!   refused with a 400 naming it). `max_tokens` is sent as the client gave it, else the
//!   deployment's default parameter, else 16: OpenAI's documented default for this endpoint,
//!   so an answer is as long whichever provider serves it.
//!
//! Authentication, model access, budgets, rate limits, usage records and prices are the chat
//! path's: the exchange treats the plan made here like a chat plan.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tollgate_catalogue::ChatPath;

use crate::auth::Caller;
use crate::gateway::{join_url, sign_for_provider, RequestPlan};
use crate::providers::{
    openai, push_path_segment, translate_request, ChunkOutput, Framing, ProviderResponse,
    ResponseHandler, ResponseTranslator, TranslateContext,
};
use crate::request::{
    object_insert_point, raw_value_or_null, request_routing, summarize_chat_request,
    ChatRequestSummary, RequestRouting, RoutingMembers,
};
use crate::snapshot::{Deployment, Wire};
use crate::sse::{write_data_event, SseParser, DONE_EVENT};
use crate::{GatewayError, State, Usage};

/// `object` of a text completion and of each of its stream chunks.
pub const TEXT_COMPLETION: &str = "text_completion";

/// OpenAI's default `max_tokens` for this endpoint, sent to providers reached through chat
/// when neither the client nor the deployment gives one.
pub const DEFAULT_MAX_TOKENS: u64 = 16;

/// What the gateway needs to know about a completions request before routing it.
#[derive(Debug)]
pub struct CompletionRequestSummary<'a> {
    /// The public model name the client asked for.
    pub model: Cow<'a, str>,
    /// Where the model's JSON string sits in the body (quotes included).
    pub model_span: Range<usize>,
    /// The prompt as sent (a string, or an array of strings, tokens or token arrays).
    pub prompt: &'a RawValue,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the client asked for the usage chunk at the end of a stream.
    pub include_usage: bool,
    /// Where the `stream_options` value sits in the body, if present.
    pub stream_options_span: Option<Range<usize>>,
    /// The `stream_options` value as sent (an object or `null`), if present.
    pub stream_options: Option<&'a RawValue>,
    /// The `user` field (empty ones dropped).
    pub end_user: Option<Cow<'a, str>>,
    /// `metadata.tags`, LiteLLM's request tags, in order.
    pub tags: Vec<Cow<'a, str>>,
    /// `n`, when given.
    pub n: Option<u64>,
    /// `echo`, when given.
    pub echo: Option<bool>,
    /// Whether a `suffix` string was given.
    pub suffix: bool,
    /// `logprobs`, when given.
    pub logprobs: Option<u64>,
    /// `best_of`, when given.
    pub best_of: Option<u64>,
    /// LiteLLM's per-request routing parameters (`fallbacks`, `num_retries`, ...): the
    /// gateway's, never sent to a provider.
    pub routing: RequestRouting,
    /// Whether the answer must carry the usage chunk for the gateway itself even when the
    /// client did not ask for one (an attempt of a relayed request: the relaying side reads
    /// it, and removes it again).
    pub usage_to_gateway: bool,
}

/// The members the gateway reads and checks, typed (a wrong type is a 400 naming the field).
#[derive(Deserialize)]
struct CompletionRequestView<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    stream: Option<bool>,
    /// `null` included: its span must be known, so that it can be rewritten.
    #[serde(borrow, default, deserialize_with = "raw_value_or_null")]
    stream_options: Option<&'a RawValue>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<u64>,
    #[serde(borrow)]
    stop: Option<&'a RawValue>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    suffix: Option<Cow<'a, str>>,
    echo: Option<bool>,
    logprobs: Option<u64>,
    best_of: Option<u64>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
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

#[derive(Deserialize)]
struct StreamOptionsView {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct MetadataView<'a> {
    #[serde(borrow)]
    tags: Option<&'a RawValue>,
}

/// The error for a completions request without a body.
fn empty_body_error() -> GatewayError {
    GatewayError::invalid(
        "body",
        "The request body is empty; send a JSON completion request.",
    )
}

fn not_an_object() -> GatewayError {
    GatewayError::invalid("body", "The request body must be a JSON object.")
}

/// The error for a body the plain parse refused, with the path of the bad field.
fn explain_invalid_request(body: &[u8]) -> GatewayError {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<CompletionRequestView<'_>, _> =
        serde_path_to_error::deserialize(&mut deserializer);
    match parsed {
        Err(error) => crate::openai_types::path_error(error, "request"),
        Ok(_) => match deserializer.end() {
            Err(error) => GatewayError::InvalidJson(error.to_string()),
            Ok(()) => GatewayError::InvalidJson("the request body could not be parsed".into()),
        },
    }
}

/// Validates `body` as an OpenAI completions request and summarises it.
pub fn summarize_completion_request(
    body: &[u8],
) -> Result<CompletionRequestSummary<'_>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(empty_body_error());
    }
    // serde also reads a struct from an array of its fields: refused before parsing.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Err(not_an_object()),
            Err(error) => Err(GatewayError::InvalidJson(error.to_string())),
        };
    }
    let view: CompletionRequestView<'_> = match serde_json::from_slice(body) {
        Ok(view) => view,
        Err(_) => return Err(explain_invalid_request(body)),
    };

    let model_raw = view
        .model
        .ok_or_else(|| GatewayError::invalid("model", "you must provide a model parameter"))?;
    let model: Cow<'_, str> = serde_json::from_str(model_raw.get())
        .map_err(|_| GatewayError::invalid("model", "model must be a string"))?;
    if model.is_empty() {
        return Err(GatewayError::invalid("model", "model must not be empty"));
    }
    let prompt = view
        .prompt
        .filter(|raw| raw.get() != "null")
        .ok_or_else(|| GatewayError::invalid("prompt", "Missing required parameter: 'prompt'."))?;
    check_prompt(prompt)?;

    check_range("temperature", view.temperature, 0.0, 2.0)?;
    check_range("top_p", view.top_p, 0.0, 1.0)?;
    check_range("presence_penalty", view.presence_penalty, -2.0, 2.0)?;
    check_range("frequency_penalty", view.frequency_penalty, -2.0, 2.0)?;
    if view.n == Some(0) {
        return Err(GatewayError::invalid(
            "n",
            "Invalid 'n': must be at least 1.",
        ));
    }
    // Read for their type only: the provider applies them.
    let _ = (view.max_tokens, view.seed);
    if let Some(stop) = view.stop.filter(|raw| raw.get() != "null") {
        if serde_json::from_str::<crate::openai_types::Stop<'_>>(stop.get()).is_err() {
            return Err(GatewayError::invalid(
                "stop",
                "Invalid type for 'stop': expected a string or an array of strings.",
            ));
        }
    }
    let stream_options = view.stream_options.filter(|raw| raw.get() != "null");
    let include_usage = match stream_options {
        Some(raw) if !raw.get().starts_with('{') => {
            return Err(GatewayError::invalid(
                "stream_options",
                "Invalid type for 'stream_options': expected an object.",
            ))
        }
        Some(raw) => serde_json::from_str::<StreamOptionsView>(raw.get())
            .map_err(|_| {
                GatewayError::invalid(
                    "stream_options.include_usage",
                    "stream_options.include_usage must be a boolean",
                )
            })?
            .include_usage
            .unwrap_or(false),
        None => false,
    };
    let tags = request_tags(view.metadata)?;
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

    Ok(CompletionRequestSummary {
        model,
        model_span: span_of(body, model_raw),
        prompt,
        stream: view.stream.unwrap_or(false),
        include_usage,
        stream_options_span: view.stream_options.map(|raw| span_of(body, raw)),
        stream_options: view.stream_options,
        end_user: view.user.filter(|user| !user.is_empty()),
        tags,
        n: view.n,
        echo: view.echo,
        suffix: view.suffix.is_some(),
        logprobs: view.logprobs,
        best_of: view.best_of,
        routing,
        usage_to_gateway: false,
    })
}

/// What a prompt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PromptKind {
    /// One string.
    Text,
    /// An array of strings, tokens or token arrays.
    List,
}

/// Checks the prompt's shape: a string, or an array whose items are all strings, all tokens
/// (integers) or all token arrays.
fn check_prompt(prompt: &RawValue) -> Result<PromptKind, GatewayError> {
    let bad = || {
        GatewayError::invalid(
            "prompt",
            "Invalid type for 'prompt': expected a string, an array of strings, an array of tokens or an array of token arrays.",
        )
    };
    match prompt.get().as_bytes().first() {
        Some(b'"') => Ok(PromptKind::Text),
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(prompt.get()).map_err(|_| bad())?;
            let Some(first) = items.first() else {
                return Ok(PromptKind::List);
            };
            let kind_of = |item: &RawValue| -> Option<u8> {
                match item.get().as_bytes().first()? {
                    b'"' => Some(b'"'),
                    b'[' => serde_json::from_str::<Vec<u64>>(item.get())
                        .ok()
                        .map(|_| b'['),
                    _ => serde_json::from_str::<u64>(item.get()).ok().map(|_| b'0'),
                }
            };
            let kind = kind_of(first).ok_or_else(bad)?;
            if items.iter().all(|item| kind_of(item) == Some(kind)) {
                Ok(PromptKind::List)
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

fn check_range(param: &str, value: Option<f64>, min: f64, max: f64) -> Result<(), GatewayError> {
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(GatewayError::invalid(
            param,
            format!("Invalid '{param}': {v} is not between {min} and {max}."),
        )),
        _ => Ok(()),
    }
}

/// The tags of `metadata.tags` (LiteLLM's request tags): an array of strings.
fn request_tags(metadata: Option<&RawValue>) -> Result<Vec<Cow<'_, str>>, GatewayError> {
    let Some(metadata) = metadata.filter(|raw| raw.get() != "null") else {
        return Ok(Vec::new());
    };
    if !metadata.get().starts_with('{') {
        return Err(GatewayError::invalid(
            "metadata",
            "Invalid type for 'metadata': expected an object.",
        ));
    }
    let bad_tags =
        || GatewayError::invalid("metadata.tags", "metadata.tags must be an array of strings");
    let view: MetadataView<'_> = serde_json::from_str(metadata.get()).map_err(|_| bad_tags())?;
    match view.tags.filter(|raw| raw.get() != "null") {
        Some(raw) => serde_json::from_str::<Vec<Cow<'_, str>>>(raw.get()).map_err(|_| bad_tags()),
        None => Ok(Vec::new()),
    }
}

/// The byte range of `raw` inside `body`; `raw` must borrow from `body`.
fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + raw.get().len()
}

/// Validates, resolves and translates a completions request for a caller with access to
/// every model.
pub fn plan_completion_request(
    state: &State,
    body: &[u8],
    context: &TranslateContext,
) -> Result<RequestPlan, GatewayError> {
    plan_completion_request_for(state, &Caller::default(), body, context)
}

/// Validates, resolves and translates a completions request for `caller`.
pub fn plan_completion_request_for(
    state: &State,
    caller: &Caller,
    body: &[u8],
    context: &TranslateContext,
) -> Result<RequestPlan, GatewayError> {
    plan_completion_request_with(state, caller, body, context, |group| group.pick().cloned())
}

/// [`plan_completion_request_for`], with the deployment of the model group chosen by
/// `pick` (the router's strategy).
pub fn plan_completion_request_with(
    state: &State,
    caller: &Caller,
    body: &[u8],
    context: &TranslateContext,
    pick: impl FnOnce(&crate::snapshot::ModelGroup) -> Option<std::sync::Arc<Deployment>>,
) -> Result<RequestPlan, GatewayError> {
    let summary = summarize_completion_request(body)?;
    caller.check_model(&summary.model)?;
    let deployment = state
        .model(&summary.model)
        .and_then(pick)
        .ok_or_else(|| GatewayError::ModelNotFound(summary.model.to_string()))?;
    plan_completion_request_to(state, deployment, summary, body, context)
}

/// Translates a validated completions request (`summary` of `body`) for `deployment`,
/// which may belong to another model group than the one it names (a fallback).
pub fn plan_completion_request_to(
    state: &State,
    deployment: std::sync::Arc<Deployment>,
    summary: CompletionRequestSummary<'_>,
    body: &[u8],
    context: &TranslateContext,
) -> Result<RequestPlan, GatewayError> {
    let end_user = summary
        .end_user
        .as_deref()
        .map(str::to_string)
        .unwrap_or_default();
    let tags: Vec<String> = summary.tags.iter().map(|tag| tag.to_string()).collect();
    let stream = summary.stream;
    let (upstream, translator) = match deployment.provider {
        Wire::OpenAi => pass_through(summary, body, &deployment)?,
        _ => through_chat(&summary, body, &deployment, context)?,
    };
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
        stream,
        response: ResponseHandler::new(translator, stream),
        deployment,
        end_user,
        tags,
    })
}

/// The request for a provider that serves the endpoint itself: the chat path's edits (model,
/// forced `include_usage`), the completions path, and OpenAI's response side (usage read,
/// the forced usage chunk removed again).
fn pass_through(
    summary: CompletionRequestSummary<'_>,
    body: &[u8],
    deployment: &Deployment,
) -> Result<(crate::providers::UpstreamRequest, ResponseTranslator), GatewayError> {
    let with_defaults = deployment.default_params.apply(body)?;
    let (summary, body) = match &with_defaults {
        Some(merged) => {
            let mut merged_summary = summarize_completion_request(merged)?;
            merged_summary.usage_to_gateway = summary.usage_to_gateway;
            (merged_summary, merged.as_slice())
        }
        None => (summary, body),
    };
    // The usage chunk the response side keeps: the client's, or the gateway's own.
    let usage_chunk = summary.include_usage || summary.usage_to_gateway;
    // The OpenAI request builder reads only the model and the stream options.
    let edits = ChatRequestSummary {
        model: summary.model.clone(),
        model_span: summary.model_span.clone(),
        stream: summary.stream,
        include_usage: summary.include_usage,
        stream_options_span: summary.stream_options_span.clone(),
        stream_options: summary.stream_options,
        end_user: None,
        tags: Vec::new(),
        // Removed from the body: a provider would refuse them.
        routing: summary.routing,
        usage_to_gateway: false,
    };
    let mut request = openai::build_request(&edits, body, deployment)?;
    request.path = completions_path(deployment);
    let response = openai::OpenAiResponse::new(summary.stream, usage_chunk, deployment.prices);
    Ok((request, ResponseTranslator::OpenAi(response)))
}

/// Where an OpenAI-wire deployment serves text completions, below its base path.
fn completions_path(deployment: &Deployment) -> String {
    match deployment.spec.chat_path {
        ChatPath::OpenAi => "/completions".to_string(),
        ChatPath::AzureDeployment => {
            let mut path = String::with_capacity(64 + deployment.upstream_model.len());
            path.push_str("/openai/deployments/");
            push_path_segment(&mut path, &deployment.upstream_model);
            path.push_str("/completions");
            if !deployment.api_version.is_empty() {
                path.push_str("?api-version=");
                push_path_segment(&mut path, &deployment.api_version);
            }
            path
        }
    }
}

/// The members of a completions request that a chat request has too, copied as sent.
#[derive(Deserialize)]
struct SharedMembers<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow)]
    n: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    stop: Option<&'a RawValue>,
    #[serde(borrow)]
    seed: Option<&'a RawValue>,
    #[serde(borrow)]
    presence_penalty: Option<&'a RawValue>,
    #[serde(borrow)]
    frequency_penalty: Option<&'a RawValue>,
    #[serde(borrow)]
    logit_bias: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
}

/// Refuses what a chat request cannot say, naming the field.
fn refuse_what_chat_cannot_say(
    summary: &CompletionRequestSummary<'_>,
    provider: &str,
) -> Result<(), GatewayError> {
    let refuse = |param: &str, what: &str, instead: &str| {
        Err(GatewayError::invalid(
            param,
            format!(
                "'{param}' {what} is not supported for this model: its provider ({provider}) is reached through chat completions. {instead}"
            ),
        ))
    };
    if check_prompt(summary.prompt)? == PromptKind::List {
        return refuse(
            "prompt",
            "as an array (of strings, tokens or token arrays)",
            "Send one string.",
        );
    }
    if summary.n.is_some_and(|n| n > 1) {
        return refuse("n", "above 1", "Send one request per choice.");
    }
    if summary.echo == Some(true) {
        return refuse("echo", "set to true", "Leave it out or false.");
    }
    if summary.suffix {
        return refuse(
            "suffix",
            "(text inserted after the completion)",
            "Leave it out.",
        );
    }
    if summary.logprobs.is_some() {
        return refuse("logprobs", "(log probabilities of tokens)", "Leave it out.");
    }
    if summary.best_of.is_some_and(|best_of| best_of > 1) {
        return refuse("best_of", "above 1", "Leave it out or 1.");
    }
    Ok(())
}

/// The request for a provider without the endpoint: a chat request with the prompt as its
/// one user message, translated as chat requests are; its answer is turned back into a text
/// completion.
fn through_chat(
    summary: &CompletionRequestSummary<'_>,
    body: &[u8],
    deployment: &Deployment,
    context: &TranslateContext,
) -> Result<(crate::providers::UpstreamRequest, ResponseTranslator), GatewayError> {
    refuse_what_chat_cannot_say(summary, &deployment.provider_name)?;
    let chat_body = chat_request_body(summary, body)?;
    let with_defaults = deployment.default_params.apply(&chat_body)?;
    let chat_body = with_default_max_tokens(with_defaults.unwrap_or(chat_body))?;
    let mut chat_summary = summarize_chat_request(&chat_body)?;
    chat_summary.usage_to_gateway = summary.usage_to_gateway;
    let (request, chat) = translate_request(&chat_summary, &chat_body, deployment, context)?;
    // The chat translator writes the usage chunk the gateway needs; the client's choice
    // only adds `"usage": null` to the other chunks.
    let response = TextCompletionResponse::new(chat, summary.include_usage);
    Ok((
        request,
        ResponseTranslator::TextCompletion(Box::new(response)),
    ))
}

/// The chat request a completions request stands for: its shared members as sent, and
/// `messages` with the prompt as the one user message.
fn chat_request_body(
    summary: &CompletionRequestSummary<'_>,
    body: &[u8],
) -> Result<Vec<u8>, GatewayError> {
    let members: SharedMembers<'_> = serde_json::from_slice(body)
        .map_err(|error| GatewayError::InvalidJson(error.to_string()))?;
    let mut chat: BTreeMap<&str, &RawValue> = BTreeMap::new();
    for (name, value) in [
        ("model", members.model),
        ("max_tokens", members.max_tokens),
        ("temperature", members.temperature),
        ("top_p", members.top_p),
        ("n", members.n),
        ("stream", members.stream),
        ("stream_options", members.stream_options),
        ("stop", members.stop),
        ("seed", members.seed),
        ("presence_penalty", members.presence_penalty),
        ("frequency_penalty", members.frequency_penalty),
        ("logit_bias", members.logit_bias),
        ("user", members.user),
        ("metadata", members.metadata),
    ] {
        if let Some(value) = value {
            chat.insert(name, value);
        }
    }
    let mut messages = Vec::with_capacity(summary.prompt.get().len() + 32);
    messages.extend_from_slice(br#"[{"role":"user","content":"#);
    messages.extend_from_slice(summary.prompt.get().as_bytes());
    messages.extend_from_slice(b"}]");
    let messages = std::str::from_utf8(&messages)
        .ok()
        .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
        .ok_or_else(|| GatewayError::invalid("prompt", "prompt must be a string"))?;
    chat.insert("messages", messages);
    serde_json::to_vec(&chat).map_err(|error| GatewayError::InvalidJson(error.to_string()))
}

#[derive(Deserialize)]
struct OutputLimits {
    #[serde(default, deserialize_with = "present")]
    max_tokens: bool,
    #[serde(default, deserialize_with = "present")]
    max_completion_tokens: bool,
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(deserializer).map(|_| true)
}

/// `chat_body` with `max_tokens` 16 when it has no output limit.
fn with_default_max_tokens(chat_body: Vec<u8>) -> Result<Vec<u8>, GatewayError> {
    let limits: OutputLimits = serde_json::from_slice(&chat_body)
        .map_err(|error| GatewayError::InvalidJson(error.to_string()))?;
    if limits.max_tokens || limits.max_completion_tokens {
        return Ok(chat_body);
    }
    let member = format!("\"max_tokens\":{DEFAULT_MAX_TOKENS},");
    let at = object_insert_point(&chat_body);
    let mut out = Vec::with_capacity(chat_body.len() + member.len());
    out.extend_from_slice(chat_body.get(..at).unwrap_or_default());
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(chat_body.get(at..).unwrap_or_default());
    Ok(out)
}

/// The response side of a completions request sent through chat: the provider's chat
/// translator writes an OpenAI chat answer, which this turns into a text completion. Streams
/// are converted event by event as the chat translator writes them (the translator writes
/// whole events, so nothing is held between chunks beyond the parser's bounded state).
#[derive(Debug)]
pub struct TextCompletionResponse {
    chat: ResponseTranslator,
    include_usage: bool,
    parser: SseParser,
    /// What the chat translator wrote for the current chunk (capacity reused).
    chat_out: Vec<u8>,
}

impl TextCompletionResponse {
    /// Wraps the chat translator `chat`; `include_usage` is the client's.
    pub fn new(chat: ResponseTranslator, include_usage: bool) -> Self {
        TextCompletionResponse {
            chat,
            include_usage,
            parser: SseParser::default(),
            chat_out: Vec::new(),
        }
    }
}

impl ProviderResponse for TextCompletionResponse {
    fn framing(&self) -> Framing {
        self.chat.inner_ref().framing()
    }

    fn rewrites_body(&self) -> bool {
        true
    }

    fn translate_body(
        &mut self,
        body: &[u8],
        usage: &mut Usage,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        let chat = self.chat.inner().translate_body(body, usage)?;
        let chat = chat.as_deref().unwrap_or(body);
        text_completion_of(chat).map(Some)
    }

    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8> {
        self.chat.inner_ref().translate_error(status, body)
    }

    fn error_status(&self, status: u16, body: &[u8]) -> Option<u16> {
        self.chat.inner_ref().error_status(status, body)
    }

    fn translate_stream(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
        usage: &mut Usage,
    ) -> Result<ChunkOutput, GatewayError> {
        self.chat_out.clear();
        let output =
            self.chat
                .inner()
                .translate_stream(chunk, end_of_stream, &mut self.chat_out, usage)?;
        let chat: &[u8] = match output {
            ChunkOutput::Unchanged => chunk,
            ChunkOutput::Replaced => &self.chat_out,
        };
        let include_usage = self.include_usage;
        self.parser.feed(chat, |event| {
            write_text_event(out, event.data, include_usage)
        })?;
        Ok(ChunkOutput::Replaced)
    }
}

#[derive(Deserialize)]
struct ChatCompletionView<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    created: u64,
    #[serde(borrow)]
    model: &'a RawValue,
    #[serde(borrow)]
    choices: Vec<ChatChoiceView<'a>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChatChoiceView<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow)]
    message: ChatMessageView<'a>,
    #[serde(borrow, default)]
    finish_reason: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChatMessageView<'a> {
    /// A JSON string (copied as it is), or absent / `null` (no text).
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// Writes `"id":…,"object":"text_completion","created":…,"model":…,"choices":[` after `{`.
fn write_head(out: &mut Vec<u8>, id: &RawValue, created: u64, model: &RawValue) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"object\":\"");
    out.extend_from_slice(TEXT_COMPLETION.as_bytes());
    out.extend_from_slice(b"\",\"created\":");
    out.extend_from_slice(created.to_string().as_bytes());
    out.extend_from_slice(b",\"model\":");
    out.extend_from_slice(model.get().as_bytes());
    out.extend_from_slice(b",\"choices\":[");
}

/// Writes one choice: `{"text":…,"index":…,"logprobs":null,"finish_reason":…}`.
fn write_choice(
    out: &mut Vec<u8>,
    text: Option<&RawValue>,
    index: u32,
    finish_reason: Option<&RawValue>,
) -> Result<(), GatewayError> {
    out.extend_from_slice(b"{\"text\":");
    match text {
        Some(text) if text.get().starts_with('"') => out.extend_from_slice(text.get().as_bytes()),
        Some(_) => {
            return Err(GatewayError::BadUpstreamResponse(
                "the answer's content is not a string".into(),
            ))
        }
        None => out.extend_from_slice(b"\"\""),
    }
    out.extend_from_slice(b",\"index\":");
    out.extend_from_slice(index.to_string().as_bytes());
    out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
    match finish_reason {
        Some(reason) => out.extend_from_slice(reason.get().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    Ok(())
}

/// The text completion of a buffered chat completion (as the chat translators write it).
fn text_completion_of(chat: &[u8]) -> Result<Vec<u8>, GatewayError> {
    let view: ChatCompletionView<'_> = serde_json::from_slice(chat)
        .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))?;
    let mut out = Vec::with_capacity(chat.len());
    write_head(&mut out, view.id, view.created, view.model);
    for (at, choice) in view.choices.iter().enumerate() {
        if at > 0 {
            out.push(b',');
        }
        write_choice(
            &mut out,
            choice.message.content,
            choice.index,
            choice.finish_reason,
        )?;
    }
    out.push(b']');
    if let Some(usage) = view.usage {
        out.extend_from_slice(b",\"usage\":");
        out.extend_from_slice(usage.get().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

#[derive(Deserialize)]
struct ChatChunkView<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    created: u64,
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    choices: Option<Vec<ChatChunkChoiceView<'a>>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChatChunkChoiceView<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    delta: Option<ChatDeltaView<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChatDeltaView<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// Writes the text completion event for one event of the chat stream (`data`, its payload):
/// text deltas and the finish reason become `choices[0].text` chunks, the usage chunk stays a
/// usage chunk, `[DONE]` and error events pass as they are; the role chunk (no text) and
/// anything else without text is dropped.
fn write_text_event(
    out: &mut Vec<u8>,
    data: &str,
    include_usage: bool,
) -> Result<(), GatewayError> {
    if data == "[DONE]" {
        out.extend_from_slice(DONE_EVENT);
        return Ok(());
    }
    let view: ChatChunkView<'_> = serde_json::from_str(data)
        .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))?;
    let (Some(id), Some(model), Some(choices)) = (view.id, view.model, view.choices) else {
        // Not a chunk: an error event.
        write_data_event(out, data.as_bytes());
        return Ok(());
    };
    let usage = view.usage.filter(|usage| usage.get() != "null");
    let start = out.len();
    out.extend_from_slice(b"data: ");
    write_head(out, id, view.created, model);
    match (choices.first(), usage) {
        (None, Some(usage)) => {
            out.extend_from_slice(b"],\"usage\":");
            out.extend_from_slice(usage.get().as_bytes());
        }
        (Some(choice), _) => {
            let text = choice
                .delta
                .as_ref()
                .and_then(|delta| delta.content)
                .filter(|text| text.get() != "\"\"");
            if text.is_none() && choice.finish_reason.is_none() {
                out.truncate(start);
                return Ok(());
            }
            write_choice(out, text, choice.index, choice.finish_reason)?;
            out.push(b']');
            if include_usage {
                out.extend_from_slice(b",\"usage\":null");
            }
        }
        (None, None) => {
            out.truncate(start);
            return Ok(());
        }
    }
    out.extend_from_slice(b"}\n\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::tests::state;

    fn plan(body: &str) -> Result<RequestPlan, GatewayError> {
        plan_completion_request(&state(), body.as_bytes(), &TranslateContext::default())
    }

    #[test]
    fn classifies_the_endpoint() {
        use crate::gateway::{classify, Endpoint};
        assert_eq!(classify("POST", "/v1/completions"), Endpoint::Completions);
        assert_eq!(classify("POST", "/completions/"), Endpoint::Completions);
        assert_eq!(classify("GET", "/v1/completions"), Endpoint::WrongMethod);
        assert_eq!(
            classify("POST", "/v1/chat/completions"),
            Endpoint::ChatCompletions
        );
    }

    #[test]
    fn passes_through_to_the_completions_path() {
        let plan = plan(r#"{"model":"gpt","prompt":"Say hi","max_tokens":5}"#).unwrap();
        assert_eq!(plan.path, "/v1/completions");
        assert_eq!(
            plan.body,
            br#"{"model":"upstream-gpt","prompt":"Say hi","max_tokens":5}"#
        );
        assert!(!plan.stream);
    }

    #[test]
    fn streams_get_include_usage_forced_on() {
        let plan = plan(r#"{"model":"gpt","prompt":["a","b"],"stream":true}"#).unwrap();
        assert_eq!(
            plan.body,
            br#"{"stream_options":{"include_usage":true},"model":"upstream-gpt","prompt":["a","b"],"stream":true}"#
        );
    }

    /// The stream `plan`'s response side writes for `upstream` (one chunk, ending it).
    fn streamed(plan: &mut RequestPlan, content_type: &str, upstream: &[u8]) -> String {
        plan.response.on_headers(200, Some(content_type));
        let mut out = Vec::new();
        let written = match plan.response.on_stream_chunk(upstream, true, &mut out) {
            ChunkOutput::Unchanged => upstream.to_vec(),
            ChunkOutput::Replaced => out,
        };
        String::from_utf8(written).unwrap()
    }

    /// An attempt of a relayed request keeps the usage chunk the client did not ask for:
    /// the relaying side reads it (and removes it again).
    #[test]
    fn an_attempts_stream_keeps_the_usage_chunk_for_the_relaying_side() {
        let state = state();
        let context = TranslateContext::default();
        let openai = concat!(
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"upstream-gpt\",\"choices\":[{\"text\":\"hi\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"upstream-gpt\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
            "data: [DONE]\n\n",
        );
        let anthropic = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"upstream-claude\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        for (model, upstream) in [("gpt", openai), ("claude", anthropic)] {
            let body = format!(r#"{{"model":"{model}","prompt":"a","stream":true}}"#);
            for usage_to_gateway in [false, true] {
                let mut summary = summarize_completion_request(body.as_bytes()).unwrap();
                summary.usage_to_gateway = usage_to_gateway;
                let deployment = state.model(model).unwrap().pick().cloned().unwrap();
                let mut plan = plan_completion_request_to(
                    &state,
                    deployment,
                    summary,
                    body.as_bytes(),
                    &context,
                )
                .unwrap();
                let out = streamed(&mut plan, "text/event-stream", upstream.as_bytes());
                let usage_chunks = out.matches("\"usage\":{").count();
                assert_eq!(
                    usage_chunks,
                    usize::from(usage_to_gateway),
                    "{model}, usage to gateway {usage_to_gateway}: {out}"
                );
                assert!(out.contains("\"text\":\"hi\""), "{model}: {out}");
                assert!(out.ends_with("data: [DONE]\n\n"), "{model}: {out}");
            }
        }
    }

    #[test]
    fn translated_requests_become_one_user_message() {
        let plan = plan(
            r#"{"model":"claude","prompt":"Say hi","temperature":0.5,"echo":false,"best_of":1,"suffix":null,"logprobs":null}"#,
        )
        .unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
        assert_eq!(
            sent["messages"],
            serde_json::json!([{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}])
        );
        assert_eq!(sent["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(sent["temperature"], 0.5);
        assert_eq!(plan.path, "/v1/messages");
    }

    #[test]
    fn bad_requests_name_the_field() {
        for (body, param) in [
            (r#"{"model":"gpt"}"#, "prompt"),
            (r#"{"prompt":"x"}"#, "model"),
            (r#"{"model":"gpt","prompt":5}"#, "prompt"),
            (r#"{"model":"gpt","prompt":["a",1]}"#, "prompt"),
            (r#"{"model":"gpt","prompt":[[1],"a"]}"#, "prompt"),
            (
                r#"{"model":"gpt","prompt":"x","temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"model":"gpt","prompt":"x","max_tokens":-1}"#,
                "max_tokens",
            ),
            (r#"{"model":"gpt","prompt":"x","n":0}"#, "n"),
            (r#"{"model":"gpt","prompt":"x","echo":"yes"}"#, "echo"),
            (r#"{"model":"gpt","prompt":"x","stop":7}"#, "stop"),
            (
                r#"{"model":"gpt","prompt":"x","stream_options":{"include_usage":1}}"#,
                "stream_options.include_usage",
            ),
            (
                r#"{"model":"gpt","prompt":"x","metadata":{"tags":"a"}}"#,
                "metadata.tags",
            ),
        ] {
            let error = plan(body).unwrap_err();
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(error.param(), Some(param), "{body}: {error}");
        }
        for body in ["", "[1]", "{", r#"["gpt","x"]"#] {
            assert_eq!(plan(body).unwrap_err().status(), 400, "{body}");
        }
        assert_eq!(
            plan(r#"{"model":"nope","prompt":"x"}"#)
                .unwrap_err()
                .status(),
            404
        );
    }

    #[test]
    fn translated_providers_refuse_what_chat_cannot_say() {
        for (extra, param) in [
            (r#""prompt":["a"]"#, "prompt"),
            (r#""prompt":[1,2]"#, "prompt"),
            (r#""prompt":[[1,2]]"#, "prompt"),
            (r#""prompt":"x","n":2"#, "n"),
            (r#""prompt":"x","echo":true"#, "echo"),
            (r#""prompt":"x","suffix":"end"#, "suffix"),
            (r#""prompt":"x","logprobs":0"#, "logprobs"),
            (r#""prompt":"x","best_of":2"#, "best_of"),
        ] {
            let body = format!(r#"{{"model":"claude",{extra}}}"#);
            let body = body.replace(r#""end}"#, r#""end"}"#);
            let error = plan(&body).unwrap_err();
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(error.param(), Some(param), "{body}: {error}");
            // The same request is the provider's business when it serves the endpoint.
            assert!(plan(&body.replace("claude", "gpt")).is_ok(), "{body}");
        }
    }

    #[test]
    fn chat_answers_become_text_completions() {
        let chat = br#"{"id":"msg_1","object":"chat.completion","created":7,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"you\"","refusal":null},"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        assert_eq!(
            String::from_utf8(text_completion_of(chat).unwrap()).unwrap(),
            r#"{"id":"msg_1","object":"text_completion","created":7,"model":"m","choices":[{"text":"Hi \"you\"","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
        );
    }

    #[test]
    fn chat_chunks_become_text_chunks() {
        let mut out = Vec::new();
        let head = r#"{"id":"c","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":"#;
        for data in [
            format!(r#"{head}{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}{{"content":"Hi"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}{{}},"logprobs":null,"finish_reason":"stop"}}],"usage":null}}"#),
            r#"{"id":"c","object":"chat.completion.chunk","created":7,"model":"m","choices":[],"usage":{"prompt_tokens":1}}"#.to_string(),
            r#"{"error":{"message":"x"}}"#.to_string(),
            "[DONE]".to_string(),
        ] {
            write_text_event(&mut out, &data, true).unwrap();
        }
        let head =
            r#"data: {"id":"c","object":"text_completion","created":7,"model":"m","choices":["#;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "{head}{{\"text\":\"Hi\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n\
                 {head}{{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n\
                 {head}],\"usage\":{{\"prompt_tokens\":1}}}}\n\n\
                 data: {{\"error\":{{\"message\":\"x\"}}}}\n\n\
                 data: [DONE]\n\n"
            )
        );
    }
}
