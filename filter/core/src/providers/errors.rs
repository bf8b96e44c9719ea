//! Provider error bodies in OpenAI's shape, `{"error":{"message","type","param","code"}}`,
//! with the provider's status kept (the official SDKs pick their exception by status:
//! 400 `BadRequestError`, 401 `AuthenticationError`, 403 `PermissionDeniedError`, 404
//! `NotFoundError`, 429 `RateLimitError`, 5xx `InternalServerError`).
//!
//! The OpenAI-compatible family answers errors in several shapes: OpenAI's own; Azure's
//! (`error` with `code` and `message` but no `type`, a content filter's verdict in
//! `innererror`); `{"error": "text"}` (Ollama's compatible API, llama.cpp); FastAPI's
//! `{"detail": ...}` (vLLM's validation errors, TGI); a top-level `{"object": "error",
//! "message", "type", "code"}` (vLLM, Mistral); plain text or HTML (a proxy in between,
//! Envoy's own `upstream request timeout`). Each becomes OpenAI's shape, what the provider
//! said kept: an OpenAI-shaped body missing only `type` or a code the gateway can name gets
//! them added, its other fields (Azure's `innererror`) left in place.
//!
//! The code names what a client may act on: `context_length_exceeded` (the prompt is over
//! the model's window, whatever words the provider used), `content_filter` (Azure's, kept),
//! `rate_limit_exceeded`, `overloaded` (529), `timeout` (408, 504).

use serde_json::{Map, Value};

use crate::error::{error_body, error_type_for_status};

/// The longest provider text kept in a message (a provider's HTML error page can be long).
const MAX_MESSAGE_CHARS: usize = 2000;

/// Phrases providers use for a prompt over the model's context window (lower case).
const CONTEXT_LENGTH_PHRASES: [&str; 8] = [
    "maximum context length",
    "context length",
    "context_length_exceeded",
    "context window",
    "prompt is too long",
    "input is too long",
    "reduce the length of the messages",
    "too many tokens",
];

/// The code a provider's error gets when it gave none: what its status or its message says.
pub(crate) fn inferred_code(status: u16, message: &str) -> Option<&'static str> {
    let lower = message.to_ascii_lowercase();
    if (status == 400 || status == 413 || status == 422)
        && CONTEXT_LENGTH_PHRASES
            .iter()
            .any(|phrase| lower.contains(phrase))
    {
        return Some("context_length_exceeded");
    }
    match status {
        429 => Some("rate_limit_exceeded"),
        529 => Some("overloaded"),
        408 | 504 => Some("timeout"),
        _ => None,
    }
}

/// `text` cut to [`MAX_MESSAGE_CHARS`].
fn cut(text: &str) -> String {
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

/// A new OpenAI error with `message`, the status's type and the code the message implies
/// (unless the provider named one).
fn new_error(status: u16, message: &str, error_type: Option<&str>, code: Option<&str>) -> Vec<u8> {
    let code = code.or_else(|| inferred_code(status, message));
    error_body(
        message,
        error_type.unwrap_or(error_type_for_status(status)),
        None,
        code,
    )
}

/// A string field of `object`, when it is a non-empty string (numbers as text: Mistral's
/// codes are numbers).
fn text_field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    match object.get(name)? {
        Value::String(text) if !text.is_empty() => Some(text.as_str().into()),
        Value::Number(number) => Some(number.to_string().into()),
        _ => None,
    }
}

/// FastAPI's `detail`: a string, or a list of `{"loc", "msg"}` validation errors.
fn detail_message(detail: &Value) -> Option<String> {
    match detail {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Array(items) => {
            let messages: Vec<String> = items
                .iter()
                .filter_map(|item| {
                    let message = item.get("msg")?.as_str()?;
                    let location = item
                        .get("loc")
                        .and_then(Value::as_array)
                        .map(|parts| {
                            parts
                                .iter()
                                .map(|part| match part {
                                    Value::String(text) => text.clone(),
                                    other => other.to_string(),
                                })
                                .collect::<Vec<String>>()
                                .join(".")
                        })
                        .filter(|location| !location.is_empty());
                    Some(match location {
                        Some(location) => format!("{location}: {message}"),
                        None => message.to_string(),
                    })
                })
                .collect();
            (!messages.is_empty()).then(|| messages.join("; "))
        }
        _ => None,
    }
}

/// A provider error body (status >= 400) in OpenAI's shape; see the module's doc.
pub fn openai_shaped_error(status: u16, body: &[u8]) -> Vec<u8> {
    // Parsed whole (an error path, not the hot one): a check that skipped the members it
    // does not read would pass through a body that is not JSON (a lone surrogate escape in
    // an unread string, say).
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let Some(Value::Object(mut top)) = parsed else {
        return plain_text_error(status, body);
    };
    match top.get_mut("error") {
        Some(Value::Object(error)) if error.get("message").is_some_and(Value::is_string) => {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut changed = false;
            if !error.get("type").is_some_and(Value::is_string) {
                // Azure leaves `type` out; its content filter is a client error.
                error.insert("type".into(), error_type_for_status(status).into());
                changed = true;
            }
            let has_code = error
                .get("code")
                .is_some_and(|code| !code.is_null() && code != "");
            if !has_code {
                if let Some(code) = inferred_code(status, &message) {
                    error.insert("code".into(), code.into());
                    changed = true;
                }
            }
            for field in ["param", "code"] {
                if !error.contains_key(field) {
                    error.insert(field.into(), Value::Null);
                    changed = true;
                }
            }
            if !changed {
                // What the provider sent, byte for byte.
                return body.to_vec();
            }
            serde_json::to_vec(&Value::Object(top)).unwrap_or_else(|_| body.to_vec())
        }
        Some(Value::String(message)) => new_error(status, &cut(message), None, None),
        _ => {
            // vLLM's and Mistral's top-level error, FastAPI's detail.
            if let Some(message) = text_field(&top, "message") {
                let error_type = text_field(&top, "type");
                let code = text_field(&top, "code");
                return new_error(
                    status,
                    &cut(&message),
                    error_type.as_deref(),
                    code.as_deref(),
                );
            }
            if let Some(message) = top.get("detail").and_then(detail_message) {
                return new_error(status, &cut(&message), None, None);
            }
            plain_text_error(status, body)
        }
    }
}

/// A body that is no error object: its text becomes the message.
fn plain_text_error(status: u16, body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("The upstream provider returned HTTP {status} with an empty body.")
    } else {
        format!(
            "The upstream provider returned HTTP {status}: {}",
            cut(text)
        )
    };
    new_error(status, &message, None, None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn shaped(status: u16, body: &str) -> Value {
        serde_json::from_slice(&openai_shaped_error(status, body.as_bytes())).unwrap()
    }

    #[test]
    fn openai_shaped_bodies_pass_byte_for_byte() {
        let body = r#"{"error": {"message": "Invalid 'messages'.", "type": "invalid_request_error", "param": "messages", "code": "invalid_value"}}"#;
        assert_eq!(openai_shaped_error(400, body.as_bytes()), body.as_bytes());
    }

    #[test]
    fn azure_content_filter_gets_a_type_and_keeps_its_verdict() {
        let body = json!({"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "code": "content_filter", "param": "prompt", "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {"hate": {"filtered": true, "severity": "high"}}}}});
        let mut expected = body.clone();
        expected["error"]["type"] = "invalid_request_error".into();
        assert_eq!(shaped(400, &body.to_string()), expected);
    }

    #[test]
    fn context_length_is_named_whatever_the_words() {
        for message in [
            "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
            "Please reduce the length of the messages or completion.",
            "prompt is too long: 210000 tokens > 200000 maximum",
            "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: too many tokens",
        ] {
            let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
            assert_eq!(
                shaped(400, &body.to_string())["error"]["code"],
                "context_length_exceeded",
                "{message}"
            );
        }
        // A provider's own code is kept.
        let body = r#"{"error": {"message": "context length exceeded", "type": "invalid_request_error", "code": "too_long"}}"#;
        assert_eq!(shaped(400, body)["error"]["code"], "too_long");
        // Not on a 500.
        let body = r#"{"error": {"message": "context length bug", "type": "server_error", "param": null, "code": null}}"#;
        assert_eq!(openai_shaped_error(500, body.as_bytes()), body.as_bytes());
    }

    #[test]
    fn other_shapes_become_openai_errors() {
        assert_eq!(
            shaped(
                404,
                r#"{"error": "model \"llama3\" not found, try pulling it first"}"#
            ),
            json!({"error": {"message": "model \"llama3\" not found, try pulling it first",
                "type": "invalid_request_error", "param": null, "code": null}})
        );
        // vLLM / Mistral: top level.
        assert_eq!(
            shaped(
                400,
                r#"{"object": "error", "message": "Prompt contains 9000 tokens, more than the model's context length of 8192", "type": "BadRequestError", "param": null, "code": 400}"#
            ),
            json!({"error": {"message": "Prompt contains 9000 tokens, more than the model's context length of 8192",
                "type": "BadRequestError", "param": null, "code": "400"}})
        );
        // FastAPI validation.
        assert_eq!(
            shaped(
                422,
                r#"{"detail": [{"loc": ["body", "messages", 0, "role"], "msg": "field required", "type": "value_error.missing"}]}"#
            ),
            json!({"error": {"message": "body.messages.0.role: field required",
                "type": "invalid_request_error", "param": null, "code": null}})
        );
        assert_eq!(
            shaped(401, r#"{"detail": "Invalid token"}"#),
            json!({"error": {"message": "Invalid token", "type": "authentication_error", "param": null, "code": null}})
        );
        // Envoy's own timeout, a proxy's overload page.
        assert_eq!(
            shaped(504, "upstream request timeout"),
            json!({"error": {"message": "The upstream provider returned HTTP 504: upstream request timeout",
                "type": "api_error", "param": null, "code": "timeout"}})
        );
        assert_eq!(shaped(529, "")["error"]["code"], "overloaded");
        assert_eq!(
            shaped(429, r#"{"message": "Too many requests"}"#),
            json!({"error": {"message": "Too many requests", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})
        );
        // JSON without any message: its text.
        assert_eq!(
            shaped(502, r#"{"status": "down"}"#)["error"]["message"],
            r#"The upstream provider returned HTTP 502: {"status": "down"}"#
        );
        // An OpenAI-shaped body missing param and code gets them (null).
        assert_eq!(
            shaped(
                403,
                r#"{"error": {"message": "no", "type": "permission_error"}}"#
            ),
            json!({"error": {"message": "no", "type": "permission_error", "param": null, "code": null}})
        );
    }

    #[test]
    fn long_texts_are_cut() {
        let long = "x".repeat(5000);
        let message = shaped(500, &long)["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            message.len(),
            "The upstream provider returned HTTP 500: ".len() + MAX_MESSAGE_CHARS
        );
    }
}
