//! OpenAI's legacy text completions (`POST …/completions`, not `…/chat/completions`) and
//! Azure OpenAI's (`POST /openai/deployments/<deployment>/completions?api-version=`).
//!
//! Like OpenAI: `model` (but at Azure, whose path names the deployment) and `prompt` are
//! required; `prompt` is a string, an array of strings,
//! an array of tokens or an array of token arrays; a member the endpoint does not know is
//! refused ("Unrecognized request argument supplied"); `max_tokens` defaults to 16;
//! `stream_options` is only allowed with `stream`; `best_of` must be at least `n` and cannot
//! be streamed. Each prompt gets `n` choices (index `prompt * n + choice`), the text
//! `"echo: " + prompt` cut to `max_tokens` words (`finish_reason` `length`) or at the first
//! `stop` sequence, with the prompt in front when `echo` is set. Tokens are words (a token
//! array counts its tokens). Directives in the prompt (`mock:status=NNN`, `mock:chunks=N`,
//! `mock:delay_ms=N`, `mock:stream_error`, `mock:stream_cut`, `mock:raw_error`) work as for
//! chat. `logprobs` is answered with `null`, `suffix` is accepted and ignored.

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::body::MockBody;
use crate::common::{
    count_words, find_stop, now_unix, numbered_chunks, raw_error, response, set_header,
    split_words_keep_spaces, sse_response, Directives,
};
use crate::{azure, openai, State};

/// The members OpenAI's completions endpoint takes.
const KNOWN_MEMBERS: [&str; 18] = [
    "model",
    "prompt",
    "best_of",
    "echo",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "n",
    "presence_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "suffix",
    "temperature",
    "top_p",
    "user",
];

/// OpenAI's default `max_tokens` for this endpoint.
const DEFAULT_MAX_TOKENS: u64 = 16;

/// Which completions endpoint a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `…/completions`.
    OpenAi,
    /// `/openai/deployments/<deployment>/completions`.
    Azure,
}

/// The completions endpoint of `path`, if it is one (chat completions are not).
pub(crate) fn endpoint_of(path: &str) -> Option<Endpoint> {
    if !path.ends_with("/completions") || path.ends_with("/chat/completions") {
        return None;
    }
    if path.starts_with("/openai/deployments/") {
        Some(Endpoint::Azure)
    } else {
        Some(Endpoint::OpenAi)
    }
}

/// The error an endpoint answers with in its provider's shape.
pub(crate) fn error(endpoint: Endpoint, status: StatusCode, message: &str) -> Response<MockBody> {
    match endpoint {
        Endpoint::OpenAi => openai::error(status, message, "invalid_request_error", None, None),
        Endpoint::Azure => azure::error(status, message),
    }
}

pub(crate) async fn handle(
    state: &State,
    endpoint: Endpoint,
    parts: &Parts,
    body: &Bytes,
) -> Response<MockBody> {
    let refused = match endpoint {
        Endpoint::OpenAi => openai::check_auth(state, parts),
        Endpoint::Azure => check_azure(state, parts),
    };
    if let Some(refused) = refused {
        return refused;
    }
    answer(state, endpoint, parts, body).await
}

/// Azure's checks: an `api-version` query and the `api-key` header.
fn check_azure(state: &State, parts: &Parts) -> Option<Response<MockBody>> {
    let has_version = parts.uri.query().is_some_and(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .any(|(name, value)| name == "api-version" && !value.is_empty())
    });
    if !has_version {
        return Some(azure::error(StatusCode::NOT_FOUND, "Resource not found"));
    }
    let expected = state.config.azure_api_key.as_deref()?;
    let given = parts
        .headers
        .get("api-key")
        .and_then(|value| value.to_str().ok());
    (given != Some(expected)).then(|| {
        azure::error(
            StatusCode::UNAUTHORIZED,
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        )
    })
}

fn bad(message: &str, param: Option<&str>, code: Option<&str>) -> Response<MockBody> {
    openai::error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        code,
    )
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One prompt: its text (for the reply and directives) and its token count.
struct Prompt {
    text: String,
    tokens: u64,
}

/// The prompts of `prompt`, or `None` when it is none of the four shapes.
fn prompts(prompt: &Value) -> Option<Vec<Prompt>> {
    let text = |text: &str| Prompt {
        text: text.to_owned(),
        tokens: count_words(text),
    };
    let tokens = |items: &[Value]| -> Option<Prompt> {
        items.iter().all(Value::is_u64).then(|| Prompt {
            text: format!("[{} tokens]", items.len()),
            tokens: items.len() as u64,
        })
    };
    match prompt {
        Value::String(one) => Some(vec![text(one)]),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            Some(items.iter().filter_map(Value::as_str).map(text).collect())
        }
        Value::Array(items) if items.iter().all(Value::is_u64) => Some(vec![tokens(items)?]),
        Value::Array(items) => items.iter().map(|item| tokens(item.as_array()?)).collect(),
        _ => None,
    }
}

/// Validates the request like OpenAI does; gives the prompts.
fn validate(request: &Value, endpoint: Endpoint) -> Result<Vec<Prompt>, Box<Response<MockBody>>> {
    let Some(object) = request.as_object() else {
        return Err(Box::new(bad(
            &format!(
                "Invalid type for request body: expected an object, but got {} instead.",
                type_name(request)
            ),
            None,
            Some("invalid_type"),
        )));
    };
    if let Some(unknown) = object
        .keys()
        .find(|name| !KNOWN_MEMBERS.contains(&name.as_str()))
    {
        return Err(Box::new(bad(
            &format!("Unrecognized request argument supplied: {unknown}"),
            None,
            None,
        )));
    }
    match object.get("model") {
        Some(Value::String(_)) => {}
        // Azure takes the deployment from the path.
        None if endpoint == Endpoint::Azure => {}
        None | Some(Value::Null) => {
            return Err(Box::new(bad(
                "you must provide a model parameter",
                Some("model"),
                None,
            )))
        }
        Some(other) => {
            return Err(Box::new(bad(
                &format!(
                    "Invalid type for 'model': expected a string, but got {} instead.",
                    type_name(other)
                ),
                Some("model"),
                Some("invalid_type"),
            )))
        }
    }
    let prompts = match object.get("prompt") {
        None | Some(Value::Null) => {
            return Err(Box::new(bad(
                "Missing required parameter: 'prompt'.",
                Some("prompt"),
                Some("missing_required_parameter"),
            )))
        }
        Some(prompt) => prompts(prompt).ok_or_else(|| {
            Box::new(bad(
                "Invalid type for 'prompt': expected one of a string, an array of strings, an array of integers or an array of arrays of integers.",
                Some("prompt"),
                Some("invalid_type"),
            ))
        })?,
    };
    for (name, check) in [
        ("stream", Value::is_boolean as fn(&Value) -> bool),
        ("echo", Value::is_boolean),
        ("max_tokens", Value::is_u64),
        ("n", Value::is_u64),
        ("best_of", Value::is_u64),
        ("logprobs", Value::is_u64),
        ("seed", Value::is_i64),
        ("suffix", Value::is_string),
        ("user", Value::is_string),
        ("stream_options", Value::is_object),
    ] {
        if let Some(value) = object.get(name).filter(|value| !value.is_null()) {
            if !check(value) {
                return Err(Box::new(bad(
                    &format!(
                        "Invalid type for '{name}': got {} instead.",
                        type_name(value)
                    ),
                    Some(name),
                    Some("invalid_type"),
                )));
            }
        }
    }
    let stream = object
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !stream && object.get("stream_options").is_some_and(|v| !v.is_null()) {
        return Err(Box::new(bad(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
            None,
        )));
    }
    let n = object.get("n").and_then(Value::as_u64).unwrap_or(1);
    if !(1..=128).contains(&n) {
        return Err(Box::new(bad(
            &format!("Invalid 'n': {n} is not between 1 and 128."),
            Some("n"),
            None,
        )));
    }
    if let Some(best_of) = object.get("best_of").and_then(Value::as_u64) {
        if best_of < n {
            return Err(Box::new(bad(
                "best_of must be greater than or equal to n.",
                Some("best_of"),
                None,
            )));
        }
        if best_of > 1 && stream {
            return Err(Box::new(bad(
                "Cannot stream results with best_of > 1.",
                Some("best_of"),
                None,
            )));
        }
    }
    if object
        .get("logprobs")
        .and_then(Value::as_u64)
        .is_some_and(|logprobs| logprobs > 5)
    {
        return Err(Box::new(bad(
            "Invalid 'logprobs': must be at most 5.",
            Some("logprobs"),
            None,
        )));
    }
    Ok(prompts)
}

/// One choice: its text pieces (as streamed) and why it ended.
struct Choice {
    pieces: Vec<String>,
    finish_reason: &'static str,
    completion_tokens: u64,
}

fn choice_for(prompt: &Prompt, request: &Value, directives: &Directives) -> Choice {
    let reply: Vec<String> = match directives.chunks {
        Some(n) => numbered_chunks(n),
        None => split_words_keep_spaces(&format!("echo: {}", prompt.text))
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    let max_tokens = request
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let limit = usize::try_from(max_tokens).unwrap_or(usize::MAX);
    let (mut pieces, mut finish_reason) = if reply.len() > limit {
        (reply.into_iter().take(limit).collect(), "length")
    } else {
        (reply, "stop")
    };
    let stops: Vec<String> = match request.get("stop") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let full: String = pieces.concat();
    if let Some((cut, _)) = find_stop(&full, &stops) {
        pieces = split_words_keep_spaces(full.get(..cut).unwrap_or_default())
            .into_iter()
            .map(str::to_owned)
            .collect();
        finish_reason = "stop";
    }
    let completion_tokens = count_words(&pieces.concat());
    if request.get("echo").and_then(Value::as_bool) == Some(true) {
        pieces.insert(0, prompt.text.clone());
    }
    Choice {
        pieces,
        finish_reason,
        completion_tokens,
    }
}

async fn answer(
    state: &State,
    endpoint: Endpoint,
    parts: &Parts,
    body: &Bytes,
) -> Response<MockBody> {
    let request: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => {
            return bad(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
                None,
                None,
            )
        }
    };
    let prompts = match validate(&request, endpoint) {
        Ok(prompts) => prompts,
        Err(refused) => return *refused,
    };
    let all_text: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let directives = Directives::for_request(&all_text.join(" "), parts);
    if directives.raw_error {
        return raw_error();
    }
    if let Some(status) = directives.error_status() {
        return openai::status_error(status);
    }
    let n = request.get("n").and_then(Value::as_u64).unwrap_or(1);
    let choices: Vec<Choice> = prompts
        .iter()
        .flat_map(|prompt| (0..n).map(move |_| prompt))
        .map(|prompt| choice_for(prompt, &request, &directives))
        .collect();
    let prompt_tokens = prompts.iter().map(|p| p.tokens).sum::<u64>().max(1);
    let completion_tokens: u64 = choices.iter().map(|c| c.completion_tokens).sum();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let number = state.next_id();
    let id = format!("cmpl-mock-{number}");
    let created = now_unix();
    let model = request.get("model").cloned().unwrap_or(Value::Null);
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut resp = if stream {
        let include_usage = request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let chunk = |index: usize, text: &str, finish_reason: Option<&str>| {
            let mut chunk = json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [{"text": text, "index": index, "logprobs": null,
                    "finish_reason": finish_reason}],
            });
            if include_usage {
                chunk["usage"] = Value::Null;
            }
            sse(&chunk)
        };
        let mut events = Vec::new();
        'choices: for (index, choice) in choices.iter().enumerate() {
            for (at, piece) in choice.pieces.iter().enumerate() {
                events.push(chunk(index, piece, None));
                if at == 0 && directives.stream_error {
                    events.push(sse(&json!({"error": {
                        "message": "The server had an error while processing your request. Sorry about that! (mock:stream_error)",
                        "type": "server_error", "param": null, "code": null}})));
                    break 'choices;
                }
                if at == 0 && directives.stream_cut {
                    break 'choices;
                }
            }
            events.push(chunk(index, "", Some(choice.finish_reason)));
        }
        if !directives.stream_error && !directives.stream_cut {
            if include_usage {
                events.push(sse(&json!({
                    "id": id, "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": "fp_mock", "choices": [], "usage": usage,
                })));
            }
            events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        sse_response(events, directives.delay())
    } else {
        if let Some(ms) = directives.delay_ms.filter(|ms| *ms > 0) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(index, choice)| {
                json!({"text": choice.pieces.concat(), "index": index, "logprobs": null,
                    "finish_reason": choice.finish_reason})
            })
            .collect();
        let completion = json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "fp_mock", "choices": choices, "usage": usage,
        });
        response(
            StatusCode::OK,
            "application/json",
            MockBody::full(Bytes::from(completion.to_string())),
        )
    };
    set_header(&mut resp, "x-request-id", &format!("req_mock_{number}"));
    resp
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(endpoint_of("/v1/completions"), Some(Endpoint::OpenAi));
        assert_eq!(
            endpoint_of("/openai/deployments/d/completions"),
            Some(Endpoint::Azure)
        );
        assert_eq!(endpoint_of("/v1/chat/completions"), None);
        assert_eq!(endpoint_of("/v1/embeddings"), None);
    }

    #[test]
    fn prompt_shapes() {
        assert_eq!(prompts(&json!("a b")).unwrap()[0].tokens, 2);
        assert_eq!(prompts(&json!(["a", "b c"])).unwrap().len(), 2);
        assert_eq!(prompts(&json!([1, 2, 3])).unwrap()[0].tokens, 3);
        assert_eq!(prompts(&json!([[1], [2, 3]])).unwrap()[1].tokens, 2);
        assert!(prompts(&json!(["a", 1])).is_none());
        assert!(prompts(&json!({"a": 1})).is_none());
    }
}
