//! Fault injection per deployment, and a count of the requests each deployment received.
//!
//! A deployment is told apart by the upstream model a request names: `model` in the body
//! (OpenAI, Anthropic, Cohere, Ollama, OpenAI's completions and embeddings), the deployment in
//! Azure's path (`/openai/deployments/<deployment>/…`), the model in Gemini's and Vertex AI's
//! paths (`…/models/<model>:<method>`, Vertex's percent-decoded) and Bedrock's model id
//! (`/model/<model id>/…`, percent-decoded).
//!
//! * `POST /_mock/faults` with `{"model": "<upstream model>", "fault": {...}, "times": N}`
//!   adds a rule (`times` left out: until cleared); `GET /_mock/faults` lists the active rules,
//!   `DELETE /_mock/faults` clears them. The first rule for the model with requests left
//!   applies, and counts one down.
//! * `GET /_mock/calls` answers `{"<upstream model>": <requests>}` for every request that
//!   reached a chat, completions or embeddings handler of any provider, faulted or not;
//!   `DELETE /_mock/calls` resets the counts.
//!
//! A fault is answered when the request arrives, before the provider's own checks (keys,
//! body validation), so a faulted deployment fails whatever the request holds.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::body::MockBody;
use crate::common::{json_response, set_header, MAX_DELAY_MS};
use crate::{
    anthropic, azure, bedrock, cohere, completions, embeddings, gemini, ollama, openai, vertex,
    Provider, State,
};

/// The path of the rules.
pub(crate) const FAULTS_PATH: &str = "/_mock/faults";
/// The path of the counts.
pub(crate) const CALLS_PATH: &str = "/_mock/calls";

/// Returned by the request handler for a `reset` fault: hyper closes the connection (HTTP/2:
/// resets the stream) without sending anything.
#[derive(Debug, thiserror::Error)]
#[error("tollgate-mock dropped the connection without answering (a reset fault)")]
pub(crate) struct NoResponse;

/// Put in a request's extensions when a `stream_cut_after_first_chunk` fault applies: the
/// handlers end their streams after the first content event (as `mock:stream_cut` does), and
/// the connection is then dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CutStream;

/// Whether a fault asked to cut this request's stream.
pub(crate) fn cuts_stream(parts: &Parts) -> bool {
    parts.extensions.get::<CutStream>().is_some()
}

/// A failure answered in the provider's own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `{"status": NNN}`: what `mock:status=NNN` answers.
    Status(StatusCode),
    /// `{"context_length": true}`: the provider's "prompt too long" error.
    ContextLength,
    /// `{"content_filter": true}`: the provider's content-policy refusal.
    ContentFilter,
}

/// What a fault does once its delay has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answer as usual (a fault that only delays).
    Answer,
    /// Answer with a failure instead.
    Fail(Failure),
    /// Close the connection without a response.
    Reset,
    /// Send the headers and the first content event, then drop the connection.
    StreamCut,
}

/// The fault a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    /// Waited before anything is answered (headers included).
    pub(crate) delay: Duration,
    pub(crate) outcome: Outcome,
}

/// `fault` of a rule, as posted. `false` flags are as good as absent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    context_length: bool,
    #[serde(default)]
    content_filter: bool,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    stream_cut_after_first_chunk: bool,
}

/// A rule, as posted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    model: String,
    fault: Value,
    #[serde(default)]
    times: Option<u64>,
}

/// An active rule.
#[derive(Debug)]
struct Rule {
    model: String,
    fault: Fault,
    /// The `fault` object as posted, for `GET /_mock/faults`.
    posted: Value,
    /// `None`: until cleared.
    times_left: Option<u64>,
}

impl FaultSpec {
    fn into_fault(self) -> Result<Fault, String> {
        let mut outcomes: Vec<(&str, Outcome)> = Vec::new();
        if let Some(code) = self.status {
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|status| status.is_client_error() || status.is_server_error())
                .ok_or_else(|| {
                    format!("fault.status must be an HTTP error status (400 to 599), not {code}")
                })?;
            outcomes.push(("status", Outcome::Fail(Failure::Status(status))));
        }
        if self.context_length {
            outcomes.push(("context_length", Outcome::Fail(Failure::ContextLength)));
        }
        if self.content_filter {
            outcomes.push(("content_filter", Outcome::Fail(Failure::ContentFilter)));
        }
        if self.reset {
            outcomes.push(("reset", Outcome::Reset));
        }
        if self.stream_cut_after_first_chunk {
            outcomes.push(("stream_cut_after_first_chunk", Outcome::StreamCut));
        }
        let delay = Duration::from_millis(self.delay_ms.unwrap_or(0).min(MAX_DELAY_MS));
        let outcome = match outcomes.as_slice() {
            [] if delay.is_zero() => {
                return Err("fault names nothing to do: give one of status, context_length, content_filter, reset, stream_cut_after_first_chunk, and/or a delay_ms above 0".to_owned());
            }
            [] => Outcome::Answer,
            [(_, outcome)] => *outcome,
            several => {
                let names: Vec<&str> = several.iter().map(|(name, _)| *name).collect();
                return Err(format!(
                    "fault names more than one outcome ({}): give one, with delay_ms if it should also wait",
                    names.join(", ")
                ));
            }
        };
        Ok(Fault { delay, outcome })
    }
}

/// Parses a posted rule.
fn parse_rule(body: &[u8]) -> Result<Rule, String> {
    let spec: RuleSpec =
        serde_json::from_slice(body).map_err(|e| format!("invalid fault rule: {e}"))?;
    if spec.model.is_empty() {
        return Err(
            "model must be a non-empty string (the upstream model the deployment sends)".to_owned(),
        );
    }
    if spec.times == Some(0) {
        return Err(
            "times must be at least 1 (leave it out for a rule that lasts until cleared)"
                .to_owned(),
        );
    }
    if !spec.fault.is_object() {
        return Err("fault must be an object, e.g. {\"status\": 429}".to_owned());
    }
    let fault = FaultSpec::deserialize(&spec.fault)
        .map_err(|e| format!("invalid fault: {e}"))?
        .into_fault()?;
    Ok(Rule {
        model: spec.model,
        fault,
        posted: spec.fault,
        times_left: spec.times,
    })
}

/// The rules and the counts.
#[derive(Debug, Default)]
pub(crate) struct FaultBook {
    rules: Mutex<Vec<Rule>>,
    calls: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultBook {
    /// Counts a request for `model` and returns the fault it gets, if a rule names the model
    /// (that rule's `times` is counted down, and the rule dropped once spent).
    pub(crate) fn arrive(&self, model: &str) -> Option<Fault> {
        {
            let mut calls = lock(&self.calls);
            match calls.get_mut(model) {
                Some(count) => *count += 1,
                None => {
                    calls.insert(model.to_owned(), 1);
                }
            }
        }
        let mut rules = lock(&self.rules);
        let at = rules.iter().position(|rule| rule.model == model)?;
        let rule = rules.get_mut(at)?;
        let fault = rule.fault;
        let spent = match rule.times_left.as_mut() {
            Some(left) => {
                *left = left.saturating_sub(1);
                *left == 0
            }
            None => false,
        };
        if spent {
            rules.remove(at);
        }
        Some(fault)
    }

    fn add(&self, rule: Rule) -> usize {
        let mut rules = lock(&self.rules);
        rules.push(rule);
        rules.len()
    }

    fn clear_rules(&self) -> usize {
        let mut rules = lock(&self.rules);
        let cleared = rules.len();
        rules.clear();
        cleared
    }

    fn rules_json(&self) -> Value {
        Value::Array(
            lock(&self.rules)
                .iter()
                .map(|rule| {
                    json!({"model": rule.model, "fault": rule.posted, "times_left": rule.times_left})
                })
                .collect(),
        )
    }

    fn calls_json(&self) -> Value {
        let calls = lock(&self.calls);
        Value::Object(
            calls
                .iter()
                .map(|(model, count)| (model.clone(), Value::from(*count)))
                .collect::<Map<String, Value>>(),
        )
    }

    /// Resets the counts; answers how many requests they held.
    fn clear_calls(&self) -> u64 {
        let mut calls = lock(&self.calls);
        let total = calls.values().sum();
        calls.clear();
        total
    }
}

/// Whether `path` is one of this module's control endpoints.
pub(crate) fn is_control_path(path: &str) -> bool {
    path == FAULTS_PATH || path == CALLS_PATH
}

fn refuse(status: StatusCode, message: &str) -> Response<MockBody> {
    openai::error(status, message, "invalid_request_error", None, None)
}

/// Answers a control endpoint (`path` is one, see [`is_control_path`]).
pub(crate) fn control(
    book: &FaultBook,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Response<MockBody> {
    match (method, path) {
        (&Method::POST, FAULTS_PATH) => match parse_rule(body) {
            Ok(rule) => json_response(StatusCode::OK, &json!({"rules": book.add(rule)})),
            Err(message) => refuse(StatusCode::BAD_REQUEST, &message),
        },
        (&Method::GET, FAULTS_PATH) => json_response(StatusCode::OK, &book.rules_json()),
        (&Method::DELETE, FAULTS_PATH) => {
            json_response(StatusCode::OK, &json!({"cleared": book.clear_rules()}))
        }
        (&Method::GET, CALLS_PATH) => json_response(StatusCode::OK, &book.calls_json()),
        (&Method::DELETE, CALLS_PATH) => {
            json_response(StatusCode::OK, &json!({"cleared": book.clear_calls()}))
        }
        _ => refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method {method} is not allowed on {path}: {FAULTS_PATH} takes POST, GET and DELETE, {CALLS_PATH} GET and DELETE."),
        ),
    }
}

/// `model` of a JSON body, read without building the whole document.
fn body_model(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ModelOnly<'a> {
        #[serde(borrow, default)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    let parsed: ModelOnly<'_> = serde_json::from_slice(body).ok()?;
    parsed.model.map(std::borrow::Cow::into_owned)
}

/// `<deployment>` of `/openai/deployments/<deployment>/…`.
fn azure_deployment(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, _) = rest.split_once('/')?;
    (!deployment.is_empty()).then(|| deployment.to_owned())
}

/// `<model>` of `/v1beta/models/<model>:<method>`.
fn gemini_model(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1beta/models/")?;
    let (model, _) = rest.rsplit_once(':')?;
    (!model.is_empty() && !model.contains('/')).then(|| model.to_owned())
}

/// The upstream model a provider request names, which tells its deployment apart.
pub(crate) fn upstream_model(provider: Provider, parts: &Parts, body: &[u8]) -> Option<String> {
    let path = parts.uri.path();
    match provider {
        Provider::OpenAi
        | Provider::Anthropic
        | Provider::Cohere
        | Provider::Ollama
        | Provider::Completions(completions::Endpoint::OpenAi)
        | Provider::Embeddings(
            embeddings::Endpoint::OpenAi
            | embeddings::Endpoint::Cohere
            | embeddings::Endpoint::Ollama,
        ) => body_model(body),
        Provider::Azure
        | Provider::Completions(completions::Endpoint::Azure)
        | Provider::Embeddings(embeddings::Endpoint::Azure) => azure_deployment(path),
        Provider::Gemini | Provider::Embeddings(embeddings::Endpoint::Gemini) => gemini_model(path),
        Provider::Vertex => vertex::parse_path(path).map(|(_, model, _)| model),
        Provider::Bedrock => bedrock::parse_path(path).map(|(model, _)| model),
    }
}

/// Which of a provider's answers a failure takes the shape of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    /// Legacy completions and embeddings: OpenAI words their context errors differently.
    Prompt,
}

/// The failure in `provider`'s own words (the request's `model` as the deployment named it).
pub(crate) fn failure(
    state: &State,
    provider: Provider,
    parts: &Parts,
    body: &Bytes,
    model: &str,
    failure: Failure,
) -> Response<MockBody> {
    match provider {
        Provider::OpenAi => openai_failure(failure, Api::Chat, false),
        Provider::Azure => openai_failure(failure, Api::Chat, true),
        Provider::Completions(endpoint) => openai_failure(
            failure,
            Api::Prompt,
            endpoint == completions::Endpoint::Azure,
        ),
        Provider::Embeddings(embeddings::Endpoint::OpenAi) => {
            openai_failure(failure, Api::Prompt, false)
        }
        Provider::Embeddings(embeddings::Endpoint::Azure) => {
            openai_failure(failure, Api::Prompt, true)
        }
        Provider::Anthropic => anthropic_failure(state, failure),
        Provider::Gemini => {
            let stream = parts.uri.path().ends_with(":streamGenerateContent");
            gemini_failure(state, parts, body, model, failure, Some(stream))
        }
        Provider::Embeddings(embeddings::Endpoint::Gemini) => {
            gemini_failure(state, parts, body, model, failure, None)
        }
        Provider::Vertex => match vertex::parse_path(parts.uri.path()) {
            Some(("anthropic", _, _)) => anthropic_failure(state, failure),
            Some((_, _, "generateContent")) => {
                gemini_failure(state, parts, body, model, failure, Some(false))
            }
            Some((_, _, "streamGenerateContent")) => {
                gemini_failure(state, parts, body, model, failure, Some(true))
            }
            _ => gemini_failure(state, parts, body, model, failure, None),
        },
        Provider::Bedrock => {
            let converse = bedrock::parse_path(parts.uri.path())
                .filter(|_| !parts.uri.path().ends_with("/invoke"))
                .map(|(_, stream)| stream);
            let mut resp = match failure {
                Failure::Status(status) => bedrock::status_error(status),
                Failure::ContextLength => bedrock::validation(bedrock::CONTEXT_LENGTH_MESSAGE),
                Failure::ContentFilter => match converse {
                    Some(stream) => bedrock::content_filtered(body, stream),
                    // InvokeModel (the embedding models) has no content-policy answer.
                    None => bedrock::status_error(StatusCode::BAD_REQUEST),
                },
            };
            set_header(
                &mut resp,
                "x-amzn-requestid",
                &format!("mock-bedrock-{}", state.next_id()),
            );
            resp
        }
        Provider::Cohere | Provider::Embeddings(embeddings::Endpoint::Cohere) => match failure {
            Failure::Status(status) => cohere::status_error(status),
            Failure::ContextLength => {
                cohere::error(StatusCode::BAD_REQUEST, cohere::CONTEXT_LENGTH_MESSAGE)
            }
            Failure::ContentFilter => cohere::content_blocked(),
        },
        Provider::Ollama | Provider::Embeddings(embeddings::Endpoint::Ollama) => match failure {
            Failure::Status(status) => ollama::status_error(status, model),
            Failure::ContextLength => {
                ollama::error(StatusCode::BAD_REQUEST, ollama::CONTEXT_LENGTH_MESSAGE)
            }
            // Ollama has no content policy: the 400 `{"status": 400}` answers.
            Failure::ContentFilter => ollama::status_error(StatusCode::BAD_REQUEST, model),
        },
    }
}

/// OpenAI's failures (and Azure's, which serves OpenAI's models and words).
fn openai_failure(failure: Failure, api: Api, azure: bool) -> Response<MockBody> {
    match failure {
        Failure::Status(status) => openai::status_error(status),
        Failure::ContextLength => match api {
            Api::Chat => openai::context_length_error(),
            Api::Prompt => openai::prompt_context_length_error(),
        },
        Failure::ContentFilter if azure => azure::content_filter(),
        Failure::ContentFilter => openai::invalid_prompt(),
    }
}

fn anthropic_failure(state: &State, failure: Failure) -> Response<MockBody> {
    let request_id = format!("req_mock_{}", state.next_id());
    match failure {
        Failure::Status(status) => anthropic::status_error(status, &request_id),
        Failure::ContextLength => anthropic::refuse(anthropic::CONTEXT_LENGTH_MESSAGE, &request_id),
        Failure::ContentFilter => anthropic::refuse(anthropic::CONTENT_FILTER_MESSAGE, &request_id),
    }
}

/// Gemini's failures; `stream` is `None` for an endpoint without content (embeddings).
fn gemini_failure(
    state: &State,
    parts: &Parts,
    body: &Bytes,
    model: &str,
    failure: Failure,
    stream: Option<bool>,
) -> Response<MockBody> {
    match (failure, stream) {
        (Failure::Status(status), _) => gemini::status_error(status),
        (Failure::ContextLength, Some(_)) => {
            gemini::context_length_error(gemini::CHAT_INPUT_TOKEN_LIMIT)
        }
        (Failure::ContextLength, None) => {
            gemini::context_length_error(gemini::EMBEDDING_INPUT_TOKEN_LIMIT)
        }
        (Failure::ContentFilter, Some(stream)) => {
            gemini::prompt_blocked(state, parts, body, model, stream)
        }
        // Embeddings have no content-policy answer.
        (Failure::ContentFilter, None) => gemini::status_error(StatusCode::BAD_REQUEST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(value: Value) -> Result<Rule, String> {
        parse_rule(value.to_string().as_bytes())
    }

    fn fault(value: Value) -> Result<Fault, String> {
        rule(json!({"model": "m", "fault": value})).map(|rule| rule.fault)
    }

    #[test]
    fn faults_parse_to_one_outcome_and_a_delay() {
        assert_eq!(
            fault(json!({"status": 429})),
            Ok(Fault {
                delay: Duration::ZERO,
                outcome: Outcome::Fail(Failure::Status(StatusCode::TOO_MANY_REQUESTS)),
            })
        );
        assert_eq!(
            fault(json!({"context_length": true, "delay_ms": 5})),
            Ok(Fault {
                delay: Duration::from_millis(5),
                outcome: Outcome::Fail(Failure::ContextLength),
            })
        );
        assert_eq!(
            fault(json!({"content_filter": true, "reset": false})).map(|f| f.outcome),
            Ok(Outcome::Fail(Failure::ContentFilter))
        );
        assert_eq!(
            fault(json!({"reset": true})).map(|f| f.outcome),
            Ok(Outcome::Reset)
        );
        assert_eq!(
            fault(json!({"stream_cut_after_first_chunk": true})).map(|f| f.outcome),
            Ok(Outcome::StreamCut)
        );
        assert_eq!(
            fault(json!({"delay_ms": 999_999_999})),
            Ok(Fault {
                delay: Duration::from_millis(MAX_DELAY_MS),
                outcome: Outcome::Answer,
            })
        );
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        assert_eq!(
            fault(json!({})).err().as_deref(),
            Some("fault names nothing to do: give one of status, context_length, content_filter, reset, stream_cut_after_first_chunk, and/or a delay_ms above 0")
        );
        assert_eq!(
            fault(json!({"delay_ms": 0, "content_filter": false}))
                .err()
                .as_deref(),
            fault(json!({})).err().as_deref()
        );
        assert_eq!(
            fault(json!({"status": 500, "reset": true})).err().as_deref(),
            Some("fault names more than one outcome (status, reset): give one, with delay_ms if it should also wait")
        );
        assert_eq!(
            fault(json!({"status": 200})).err().as_deref(),
            Some("fault.status must be an HTTP error status (400 to 599), not 200")
        );
        assert_eq!(
            fault(json!({"status": 600})).err().as_deref(),
            Some("fault.status must be an HTTP error status (400 to 599), not 600")
        );
        assert!(fault(json!({"stauts": 429}))
            .err()
            .is_some_and(|e| e.starts_with("invalid fault: unknown field `stauts`")));
        assert_eq!(
            rule(json!({"model": "", "fault": {"reset": true}}))
                .err()
                .as_deref(),
            Some("model must be a non-empty string (the upstream model the deployment sends)")
        );
        assert_eq!(
            rule(json!({"model": "m", "fault": {"reset": true}, "times": 0}))
                .err()
                .as_deref(),
            Some("times must be at least 1 (leave it out for a rule that lasts until cleared)")
        );
        assert_eq!(
            rule(json!({"model": "m", "fault": 429})).err().as_deref(),
            Some("fault must be an object, e.g. {\"status\": 429}")
        );
        assert!(rule(json!({"fault": {"reset": true}}))
            .err()
            .is_some_and(|e| e.starts_with("invalid fault rule: missing field `model`")));
        assert!(parse_rule(b"not json")
            .err()
            .is_some_and(|e| e.starts_with("invalid fault rule: ")));
    }

    #[test]
    fn the_first_rule_with_requests_left_applies_and_counts_down() {
        let book = FaultBook::default();
        let limited = rule(json!({"model": "a", "fault": {"status": 429}, "times": 2}));
        let lasting = rule(json!({"model": "a", "fault": {"status": 500}}));
        assert_eq!(limited.map(|r| book.add(r)), Ok(1));
        assert_eq!(lasting.map(|r| book.add(r)), Ok(2));
        let status = |fault: Option<Fault>| match fault.map(|f| f.outcome) {
            Some(Outcome::Fail(Failure::Status(status))) => Some(status.as_u16()),
            _ => None,
        };
        assert_eq!(status(book.arrive("a")), Some(429));
        assert_eq!(status(book.arrive("b")), None);
        assert_eq!(status(book.arrive("a")), Some(429));
        assert_eq!(status(book.arrive("a")), Some(500));
        assert_eq!(status(book.arrive("a")), Some(500));
        assert_eq!(
            book.rules_json(),
            json!([{"model": "a", "fault": {"status": 500}, "times_left": null}])
        );
        assert_eq!(book.calls_json(), json!({"a": 4, "b": 1}));
        assert_eq!(book.clear_rules(), 1);
        assert_eq!(book.arrive("a"), None);
        assert_eq!(book.clear_calls(), 6);
        assert_eq!(book.calls_json(), json!({}));
    }

    #[test]
    fn models_come_from_the_body_or_the_path() {
        assert_eq!(
            body_model(br#"{"messages": [], "model": "gpt-\u0034o"}"#),
            Some("gpt-4o".to_owned())
        );
        assert_eq!(body_model(br#"{"messages": []}"#), None);
        assert_eq!(body_model(b"{"), None);
        assert_eq!(
            azure_deployment("/openai/deployments/gpt-4o-eu/chat/completions"),
            Some("gpt-4o-eu".to_owned())
        );
        assert_eq!(azure_deployment("/openai/deployments//embeddings"), None);
        assert_eq!(
            gemini_model("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            Some("gemini-2.5-flash".to_owned())
        );
        assert_eq!(gemini_model("/v1beta/models/a/b:generateContent"), None);
    }
}
