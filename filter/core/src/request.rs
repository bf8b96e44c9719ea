//! First look at an OpenAI chat request: validate what the gateway relies on and find the
//! byte spans it may rewrite, in one borrowing pass (no tree of the whole body is built).

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::GatewayError;

/// What the gateway needs to know about a chat request before routing it.
#[derive(Debug)]
pub struct ChatRequestSummary<'a> {
    /// The public model name the client asked for.
    pub model: Cow<'a, str>,
    /// Where the model's JSON string sits in the body (quotes included).
    pub model_span: Range<usize>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the client asked for the usage chunk at the end of a stream.
    pub include_usage: bool,
    /// Where the `stream_options` value sits in the body, if present.
    pub stream_options_span: Option<Range<usize>>,
    /// The `stream_options` value as sent (an object or `null`), if present.
    pub stream_options: Option<&'a RawValue>,
    /// The `user` field: the end user the request is made for (budgets and spend are kept
    /// per end user too).
    pub end_user: Option<Cow<'a, str>>,
    /// `metadata.tags`, LiteLLM's request tags, in order.
    pub tags: Vec<Cow<'a, str>>,
    /// LiteLLM's per-request routing parameters (`fallbacks`, `context_window_fallbacks`,
    /// `content_policy_fallbacks`, `num_retries`): the gateway's, never sent to a provider.
    pub routing: RequestRouting,
    /// The answer's usage chunk goes back to the gateway's listener whatever the client
    /// asked (an attempt of a request relayed through the attempts route: the relaying side
    /// counts the usage, then removes the chunk the client did not ask for).
    pub usage_to_gateway: bool,
}

/// LiteLLM's per-request routing parameters, which replace the router's for the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestRouting {
    /// `fallbacks`: the model groups tried after the requested one failed.
    pub fallbacks: Option<Vec<String>>,
    /// `context_window_fallbacks`.
    pub context_window_fallbacks: Option<Vec<String>>,
    /// `content_policy_fallbacks`.
    pub content_policy_fallbacks: Option<Vec<String>>,
    /// `num_retries`.
    pub num_retries: Option<u32>,
    /// Where these members sit in the body, so a pass-through removes them (a provider would
    /// refuse a parameter it does not know).
    pub spans: Vec<Range<usize>>,
}

impl RequestRouting {
    /// Whether the request gives any.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// A fallbacks parameter: a list of model names, or LiteLLM's `[{model: [names]}]` form,
/// whose entry for `model` counts (entries for other models do not apply to this request).
fn fallback_list(
    param: &str,
    raw: Option<&RawValue>,
    model: &str,
) -> Result<Option<Vec<String>>, GatewayError> {
    let Some(raw) = raw.filter(|raw| raw.get() != "null") else {
        return Ok(None);
    };
    let invalid = || {
        GatewayError::invalid(
            param,
            format!(
                "{param} must be a list of model names, or of {{model: [model names]}} objects"
            ),
        )
    };
    let entries: Vec<serde_json::Value> = serde_json::from_str(raw.get()).map_err(|_| invalid())?;
    let mut list = Vec::new();
    for entry in entries {
        match entry {
            serde_json::Value::String(name) => list.push(name),
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let names: Vec<String> =
                        serde_json::from_value(value).map_err(|_| invalid())?;
                    if key == model {
                        list.extend(names);
                    }
                }
            }
            _ => return Err(invalid()),
        }
    }
    Ok(Some(list))
}

/// LiteLLM's routing members of a request body as sent (`null` included), which the
/// endpoints that take them read into a [`RequestRouting`]. Each endpoint's view reads the
/// four members itself (serde's `flatten` cannot borrow a `RawValue`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RoutingMembers<'a> {
    /// `fallbacks`.
    pub fallbacks: Option<&'a RawValue>,
    /// `context_window_fallbacks`.
    pub context_window_fallbacks: Option<&'a RawValue>,
    /// `content_policy_fallbacks`.
    pub content_policy_fallbacks: Option<&'a RawValue>,
    /// `num_retries`.
    pub num_retries: Option<&'a RawValue>,
}

/// The routing parameters of a request for `model` from its members (which borrow from
/// `body`), with where they sit so that a pass-through removes them.
pub fn request_routing(
    body: &[u8],
    model: &str,
    members: RoutingMembers<'_>,
) -> Result<RequestRouting, GatewayError> {
    Ok(RequestRouting {
        fallbacks: fallback_list("fallbacks", members.fallbacks, model)?,
        context_window_fallbacks: fallback_list(
            "context_window_fallbacks",
            members.context_window_fallbacks,
            model,
        )?,
        content_policy_fallbacks: fallback_list(
            "content_policy_fallbacks",
            members.content_policy_fallbacks,
            model,
        )?,
        num_retries: match members.num_retries.filter(|raw| raw.get() != "null") {
            Some(raw) => Some(serde_json::from_str::<u32>(raw.get()).map_err(|_| {
                GatewayError::invalid("num_retries", "num_retries must be a whole number >= 0")
            })?),
            None => None,
        },
        spans: [
            members.fallbacks,
            members.context_window_fallbacks,
            members.content_policy_fallbacks,
            members.num_retries,
        ]
        .into_iter()
        .flatten()
        .map(|raw| member_span(body, span_of(body, raw)))
        .collect(),
    })
}

#[derive(Deserialize)]
struct ChatRequestView<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<Vec<MessageView<'a>>>,
    stream: Option<bool>,
    /// `null` included: its span must be known, so that it can be rewritten.
    #[serde(borrow, default, deserialize_with = "raw_value_or_null")]
    stream_options: Option<&'a RawValue>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    n: Option<u64>,
    #[serde(borrow)]
    stop: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
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
struct MetadataView<'a> {
    #[serde(borrow)]
    tags: Option<&'a RawValue>,
}

/// Reads any value, `null` too, which `Option<&RawValue>` would read as absent.
pub(crate) fn raw_value_or_null<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'a RawValue>, D::Error> {
    <&'a RawValue>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
struct MessageView<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptionsView {
    include_usage: Option<bool>,
}

/// Message roles OpenAI accepts.
const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// The error for a chat request without a body (also when the headers already ended the
/// request, so no body will come).
pub fn empty_body_error() -> GatewayError {
    GatewayError::invalid(
        "body",
        "The request body is empty; send a JSON chat completion request.",
    )
}

/// The error for a body the plain parse refused, with the path of the bad field.
fn explain_invalid_request(body: &[u8]) -> GatewayError {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<ChatRequestView<'_>, _> =
        serde_path_to_error::deserialize(&mut deserializer);
    match parsed {
        Err(error) => crate::openai_types::path_error(error, "request"),
        Ok(_) => match deserializer.end() {
            Err(error) => GatewayError::InvalidJson(error.to_string()),
            // Both parses read the same bytes; a difference is a bug, reported as bad JSON
            // rather than let through.
            Ok(()) => GatewayError::InvalidJson("the request body could not be parsed".into()),
        },
    }
}

/// Validates `body` as an OpenAI chat completion request and summarises it.
pub fn summarize_chat_request(body: &[u8]) -> Result<ChatRequestSummary<'_>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(empty_body_error());
    }
    // serde also reads a struct from an array of its fields, in order: refused first, so
    // an array is not explained as a struct with a bad field either.
    if body.trim_ascii_start().first() == Some(&b'[') {
        return Err(GatewayError::invalid(
            "body",
            "The request body must be a JSON object.",
        ));
    }
    // Path tracking allocates a string per key it passes, so it runs only to explain a body
    // that failed the plain parse.
    let view: ChatRequestView<'_> = match serde_json::from_slice(body) {
        Ok(view) => view,
        Err(_) => return Err(explain_invalid_request(body)),
    };
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(GatewayError::invalid(
            "body",
            "The request body must be a JSON object.",
        ));
    }

    let model_raw = view
        .model
        .ok_or_else(|| GatewayError::invalid("model", "you must provide a model parameter"))?;
    let model: Cow<'_, str> = serde_json::from_str(model_raw.get())
        .map_err(|_| GatewayError::invalid("model", "model must be a string"))?;
    if model.is_empty() {
        return Err(GatewayError::invalid("model", "model must not be empty"));
    }

    let messages = view.messages.ok_or_else(|| {
        GatewayError::invalid("messages", "Missing required parameter: 'messages'.")
    })?;
    if messages.is_empty() {
        return Err(GatewayError::invalid(
            "messages",
            "'messages' must contain at least one message.",
        ));
    }
    for (index, message) in messages.iter().enumerate() {
        validate_message(index, message)?;
    }

    check_range("temperature", view.temperature, 0.0, 2.0)?;
    check_range("top_p", view.top_p, 0.0, 1.0)?;
    check_positive("max_tokens", view.max_tokens)?;
    check_positive("max_completion_tokens", view.max_completion_tokens)?;
    check_positive("n", view.n)?;
    check_json_kind("stop", view.stop, &[JsonKind::String, JsonKind::Array])?;
    check_json_kind("tools", view.tools, &[JsonKind::Array])?;
    check_json_kind(
        "tool_choice",
        view.tool_choice,
        &[JsonKind::String, JsonKind::Object],
    )?;
    // `null` means no options, as for OpenAI; its span is still kept, so that a forced
    // include_usage replaces it instead of going before it and being overridden by it.
    let stream_options = view.stream_options.filter(|raw| raw.get() != "null");
    check_json_kind("stream_options", stream_options, &[JsonKind::Object])?;

    let include_usage = match stream_options {
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

    check_json_kind("user", view.user, &[JsonKind::String])?;
    let end_user = match view.user {
        Some(raw) => Some(
            serde_json::from_str::<Cow<'_, str>>(raw.get())
                .map_err(|_| GatewayError::invalid("user", "user must be a string"))?,
        ),
        None => None,
    }
    .filter(|user| !user.is_empty());
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

    Ok(ChatRequestSummary {
        model,
        model_span: span_of(body, model_raw),
        stream: view.stream.unwrap_or(false),
        include_usage,
        stream_options_span: view.stream_options.map(|raw| span_of(body, raw)),
        stream_options: view.stream_options,
        end_user,
        tags,
        routing,
        usage_to_gateway: false,
    })
}

/// The bytes to remove to take the member whose value is at `value` out of the top-level
/// object of `body`: from the comma before its key (or, for the first member, from its key
/// to the comma after its value), so the object stays valid JSON.
pub fn member_span(body: &[u8], value: Range<usize>) -> Range<usize> {
    let before = body.get(..value.start).unwrap_or_default();
    // Back over `"key" :` (the key is one of ours: no escaped quotes).
    let mut at = before.len();
    let skip_space = |at: &mut usize| {
        while *at > 0 && before.get(*at - 1).is_some_and(u8::is_ascii_whitespace) {
            *at -= 1;
        }
    };
    skip_space(&mut at);
    if before.get(at.wrapping_sub(1)) == Some(&b':') {
        at -= 1;
    }
    skip_space(&mut at);
    if before.get(at.wrapping_sub(1)) == Some(&b'"') {
        at -= 1;
        while at > 0 && before.get(at - 1) != Some(&b'"') {
            at -= 1;
        }
        at = at.saturating_sub(1);
    }
    let key_start = at;
    skip_space(&mut at);
    if before.get(at.wrapping_sub(1)) == Some(&b',') {
        return (at - 1)..value.end;
    }
    // The first member: take the comma after it instead.
    let after = body.get(value.end..).unwrap_or_default();
    let mut end = value.end;
    let mut offset = 0;
    while after.get(offset).is_some_and(u8::is_ascii_whitespace) {
        offset += 1;
    }
    if after.get(offset) == Some(&b',') {
        end = value.end + offset + 1;
    }
    key_start..end
}

/// The tags of `metadata.tags` (LiteLLM's request tags): an array of strings.
fn request_tags(metadata: Option<&RawValue>) -> Result<Vec<Cow<'_, str>>, GatewayError> {
    let metadata = metadata.filter(|raw| raw.get() != "null");
    check_json_kind("metadata", metadata, &[JsonKind::Object])?;
    let Some(metadata) = metadata else {
        return Ok(Vec::new());
    };
    let bad_tags =
        || GatewayError::invalid("metadata.tags", "metadata.tags must be an array of strings");
    let view: MetadataView<'_> = serde_json::from_str(metadata.get()).map_err(|_| bad_tags())?;
    match view.tags.filter(|raw| raw.get() != "null") {
        Some(raw) => serde_json::from_str::<Vec<Cow<'_, str>>>(raw.get()).map_err(|_| bad_tags()),
        None => Ok(Vec::new()),
    }
}

fn validate_message(index: usize, message: &MessageView<'_>) -> Result<(), GatewayError> {
    let param = || format!("messages[{index}].role");
    let role = message.role.as_deref().ok_or_else(|| {
        GatewayError::invalid(
            &param(),
            format!("Missing required parameter: 'messages[{index}].role'."),
        )
    })?;
    if !ROLES.contains(&role) {
        return Err(GatewayError::invalid(
            &param(),
            format!(
                "Invalid value: '{role}'. Supported values are: 'system', 'developer', 'user', 'assistant', 'tool' and 'function'."
            ),
        ));
    }
    // The parameter name is formatted only for an error: this runs for every message.
    let content_param = || format!("messages[{index}].content");
    const CONTENT_KINDS: &[JsonKind] = &[JsonKind::String, JsonKind::Array];
    match message.content {
        None if matches!(role, "system" | "developer" | "user" | "tool") => {
            let param = content_param();
            Err(GatewayError::invalid(
                &param,
                format!("Missing required parameter: '{param}'."),
            ))
        }
        None => Ok(()),
        Some(raw) if json_kind_of(raw).is_some_and(|kind| CONTENT_KINDS.contains(&kind)) => Ok(()),
        Some(raw) => check_json_kind(&content_param(), Some(raw), CONTENT_KINDS),
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum JsonKind {
    String,
    Array,
    Object,
}

fn json_kind_of(raw: &RawValue) -> Option<JsonKind> {
    match raw.get().as_bytes().first()? {
        b'"' => Some(JsonKind::String),
        b'[' => Some(JsonKind::Array),
        b'{' => Some(JsonKind::Object),
        _ => None,
    }
}

fn check_json_kind(
    param: &str,
    raw: Option<&RawValue>,
    allowed: &[JsonKind],
) -> Result<(), GatewayError> {
    let Some(raw) = raw else { return Ok(()) };
    match json_kind_of(raw) {
        Some(kind) if allowed.contains(&kind) => Ok(()),
        _ => {
            let names: Vec<&str> = allowed
                .iter()
                .map(|kind| match kind {
                    JsonKind::String => "a string",
                    JsonKind::Array => "an array",
                    JsonKind::Object => "an object",
                })
                .collect();
            Err(GatewayError::invalid(
                param,
                format!(
                    "Invalid type for '{param}': expected {}.",
                    names.join(" or ")
                ),
            ))
        }
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

fn check_positive(param: &str, value: Option<u64>) -> Result<(), GatewayError> {
    match value {
        Some(0) => Err(GatewayError::invalid(
            param,
            format!("Invalid '{param}': must be at least 1."),
        )),
        _ => Ok(()),
    }
}

/// The byte range of `raw` inside `body`; `raw` must borrow from `body`.
fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + raw.get().len()
}

/// A replacement of `range` in a body by `bytes` (an empty range inserts).
#[derive(Debug)]
pub struct Edit {
    /// What to replace.
    pub range: Range<usize>,
    /// What to put there.
    pub bytes: Vec<u8>,
}

/// Applies non-overlapping edits to `body` in one copy. Rewriting a model name this way
/// costs one memcpy of the body instead of a parse and a re-serialisation.
pub fn apply_edits(body: &[u8], edits: &mut [Edit]) -> Vec<u8> {
    edits.sort_by_key(|edit| edit.range.start);
    let extra: usize = edits.iter().map(|edit| edit.bytes.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0;
    for edit in edits.iter() {
        let start = edit.range.start.clamp(at, body.len());
        out.extend_from_slice(body.get(at..start).unwrap_or_default());
        out.extend_from_slice(&edit.bytes);
        at = edit.range.end.clamp(start, body.len());
    }
    out.extend_from_slice(body.get(at..).unwrap_or_default());
    out
}

/// Position just after the body's opening `{`, where a new member can be inserted.
pub fn object_insert_point(body: &[u8]) -> usize {
    body.iter()
        .position(|byte| *byte == b'{')
        .map_or(0, |at| at + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(body: &str) -> GatewayError {
        summarize_chat_request(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn summary_of_a_valid_request() {
        let body = br#"{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]}"#;
        let summary = summarize_chat_request(body).unwrap();
        assert_eq!(summary.model, "gpt-4o");
        assert_eq!(&body[summary.model_span.clone()], br#""gpt-4o""#);
        assert!(summary.stream && summary.include_usage);
        assert_eq!(
            &body[summary.stream_options_span.unwrap()],
            br#"{"include_usage": true}"#
        );
    }

    #[test]
    fn escaped_model_name_is_decoded() {
        let summary = summarize_chat_request(
            br#"{"model":"a\/b","messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(summary.model, "a/b");
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (r#"{"messages":[{"role":"user","content":"x"}]}"#, "model"),
            (
                r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#,
                "model",
            ),
            (r#"{"model":"m"}"#, "messages"),
            (r#"{"model":"m","messages":"hi"}"#, "messages"),
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "messages[0].content",
            ),
            (r#"{"model":"m","messages":["x"]}"#, "messages[0]"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "stream",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":{}}"#,
                "tools",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":1}"#,
                "stop",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":1}}"#,
                "stream_options.include_usage",
            ),
        ];
        for (body, param) in cases {
            let error = error_of(body);
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(error.param(), Some(param), "{body}: {error}");
        }
    }

    #[test]
    fn not_json() {
        for body in ["{", "nope", r#"{"model":"m"} trailing"#, "[1,2]"] {
            let error = error_of(body);
            assert_eq!(error.status(), 400, "{body}");
        }
        assert!(matches!(error_of("{"), GatewayError::InvalidJson(_)));
        assert!(matches!(error_of(""), GatewayError::InvalidRequest { .. }));
    }

    /// Checked by the `request_parser` fuzz target: serde reads a struct from an array of its
    /// fields too, so an array passed as a request and was rewritten as if it were one.
    #[test]
    fn an_array_of_the_fields_is_not_a_request() {
        let body = r#" ["m",[{"role":"user","content":"x"}],true,null,null,null,null,null,null,null,null,null]"#;
        let error = error_of(body);
        assert_eq!(error.status(), 400);
        assert_eq!(error.param(), Some("body"));
    }

    #[test]
    fn edits_splice_in_order() {
        let body = br#"{"model":"a","x":1}"#;
        let mut edits = vec![
            Edit {
                range: 9..12,
                bytes: br#""bbb""#.to_vec(),
            },
            Edit {
                range: 1..1,
                bytes: br#""s":1,"#.to_vec(),
            },
        ];
        assert_eq!(
            apply_edits(body, &mut edits),
            br#"{"s":1,"model":"bbb","x":1}"#.to_vec()
        );
        assert_eq!(object_insert_point(b"  {}"), 3);
    }
}
