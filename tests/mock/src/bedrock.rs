//! AWS Bedrock's Converse API: `POST /model/<model id>/converse` and
//! `POST /model/<model id>/converse-stream` (the model id percent-encoded as one path
//! segment), authenticated by AWS Signature Version 4.
//!
//! The mock checks what Bedrock checks, in Bedrock's order and with its error shape (a JSON
//! `{"message": "..."}` body and the error's name in `x-amzn-ErrorType`):
//!
//! * the signature: `Authorization` present and well formed (403
//!   `MissingAuthenticationTokenException` / `IncompleteSignatureException`), a known access
//!   key id (403 `UnrecognizedClientException`), the session token of temporary credentials,
//!   `x-amz-date` within 5 minutes of the mock's clock (403 `InvalidSignatureException`,
//!   "Signature expired"), and the signature itself, recomputed from the request as received
//!   (403 `InvalidSignatureException`, with the canonical request and string to sign AWS
//!   quotes). The recomputation uses tollgate-core's signer, which is checked against AWS's
//!   published SigV4 test suite (`filter/core/tests/sigv4_vectors.rs`): what the gateway signs
//!   is compared with what a correct signer makes of the request Envoy delivered, so a header
//!   changed on the way, a path encoded the wrong way or a body altered after signing fails;
//! * the body, as Converse validates it (400 `ValidationException`): known top-level fields
//!   only, `messages` required, roles `user`/`assistant` alternating from `user`, content
//!   blocks with one known member each and their shapes (`text` non-blank, `image` with a
//!   format and base64 bytes, `toolUse`, `toolResult` answering the previous turn's `toolUse`),
//!   a `toolConfig` whenever tool blocks are used, `inferenceConfig`'s field names and types,
//!   `toolConfig` and `outputConfig` shapes.
//!
//! Answers follow the other mocks: `echo: ` + the last user message's text (text blocks and
//! tool result texts joined by one space, ` [images: N]` when it has images), or with tools
//! (and no tool result in the last user message) `Let me check.` and one `toolUse`
//! (`tooluse_mock_1`, `{"location":"Paris","unit":"celsius"}`). Input tokens count the words
//! of the system prompt and of every message's text (at least 1), output tokens the reply's
//! words. A stream is real event stream frames (`application/vnd.amazon.eventstream`):
//! `messageStart`, a `contentBlockDelta` per word, `contentBlockStop`, the tool use's
//! `contentBlockStart` and 4 input pieces, `messageStop`, `metadata` with the usage; every
//! payload carries Bedrock's `p` padding field. `mock:stream_error` sends a
//! `modelStreamErrorException` frame after the first word and ends the stream, and
//! `mock:stream_cut` ends it there without one.

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};
use tollgate_core::aws::sigv4;

use crate::body::MockBody;
use crate::common::{
    count_words, find_stop, now_unix, numbered_chunks, raw_error, response, set_header, split_even,
    split_words_keep_spaces, Directives,
};
use crate::eventstream;
use crate::State;

/// The id of the mock's one tool use.
pub(crate) const TOOL_USE_ID: &str = "tooluse_mock_1";
const TOOL_PREAMBLE: &str = "Let me check.";
/// How far `x-amz-date` may be from the clock, as AWS allows.
const MAX_CLOCK_SKEW_SECONDS: u64 = 300;
/// The padding Bedrock adds to each event payload (random there, fixed here).
const PADDING: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";

/// AWS credentials the mock accepts: a long-term key, or temporary ones with their token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AwsCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token that must come with this key, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A Bedrock error: `{"message": ...}` with its name in `x-amzn-ErrorType`.
pub(crate) fn error(status: StatusCode, error_type: &str, message: &str) -> Response<MockBody> {
    let body = json!({"message": message});
    let mut resp = response(
        status,
        "application/json",
        MockBody::full(Bytes::from(body.to_string())),
    );
    set_header(
        &mut resp,
        "x-amzn-errortype",
        &format!("{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
    );
    resp
}

/// The error Bedrock names for `status`.
pub(crate) fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

pub(crate) fn validation(message: impl Into<String>) -> Response<MockBody> {
    error(
        StatusCode::BAD_REQUEST,
        "ValidationException",
        &message.into(),
    )
}

/// Bedrock's `ValidationException` for a prompt over the model's context window.
pub(crate) const CONTEXT_LENGTH_MESSAGE: &str = "Input is too long for requested model.";

/// What Converse answers when the model's content filter stops it: 200, no content, and
/// `stopReason: "content_filtered"` (a stream: `messageStart`, `messageStop` with that reason,
/// `metadata`). Input tokens count the words of the body's text blocks.
pub(crate) fn content_filtered(body: &Bytes, stream: bool) -> Response<MockBody> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let texts = |blocks: Option<&Value>| {
        blocks
            .and_then(Value::as_array)
            .map(|blocks| {
                blocks
                    .iter()
                    .filter_map(|block| block.get("text").and_then(Value::as_str))
                    .map(count_words)
                    .sum::<u64>()
            })
            .unwrap_or(0)
    };
    let mut input_tokens = texts(request.get("system"));
    for message in request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        input_tokens += texts(message.get("content"));
    }
    let input_tokens = input_tokens.max(1);
    let usage =
        json!({"inputTokens": input_tokens, "outputTokens": 0, "totalTokens": input_tokens});
    if stream {
        let frames = vec![
            event("messageStart", json!({"role": "assistant"}), 0),
            event("messageStop", json!({"stopReason": "content_filtered"}), 9),
            event(
                "metadata",
                json!({"usage": usage, "metrics": {"latencyMs": 1}}),
                10,
            ),
        ];
        return response(
            StatusCode::OK,
            eventstream::CONTENT_TYPE,
            MockBody::paced(frames, std::time::Duration::ZERO),
        );
    }
    let answer = json!({
        "output": {"message": {"role": "assistant", "content": []}},
        "stopReason": "content_filtered",
        "usage": usage,
        "metrics": {"latencyMs": 1},
    });
    response(
        StatusCode::OK,
        "application/json",
        MockBody::full(Bytes::from(answer.to_string())),
    )
}

/// The error Bedrock would send for `status` (used by `mock:status=NNN`).
pub(crate) fn status_error(status: StatusCode) -> Response<MockBody> {
    let message = match status.as_u16() {
        400 => "Malformed input request (mock:status=400).",
        403 => "You don't have access to the model with the specified model ID.",
        404 => "Could not resolve the foundation model from the provided model identifier.",
        408 => "Model has timed out in processing the request.",
        424 => "The model returned an error (mock:status=424).",
        429 => "Too many requests, please wait before trying again.",
        503 => "Bedrock is unable to process your request.",
        _ => "The server encountered an internal error while processing the request.",
    };
    error(status, error_type(status), message)
}

fn forbidden(error_type: &str, message: &str) -> Response<MockBody> {
    error(StatusCode::FORBIDDEN, error_type, message)
}

// ---------------------------------------------------------------------------------------------
// Signature
// ---------------------------------------------------------------------------------------------

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix(sigv4::ALGORITHM)?.strip_prefix(' ')?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        match name {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed = Some(value),
            "Signature" => signature = Some(value),
            _ => return None,
        }
    }
    let mut scope = credential?.split('/');
    let authorization = Authorization {
        access_key_id: scope.next()?,
        date: scope.next()?,
        region: scope.next()?,
        service: scope.next()?,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    };
    (scope.next() == Some("aws4_request") && scope.next().is_none()).then_some(authorization)
}

/// `YYYYMMDDTHHMMSSZ` as Unix seconds.
fn parse_amz_date(value: &str) -> Option<u64> {
    let bytes = value.as_bytes();
    if bytes.len() != 16 || bytes.get(8) != Some(&b'T') || bytes.get(15) != Some(&b'Z') {
        return None;
    }
    let number = |range: std::ops::Range<usize>| value.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3_600 + minute * 60 + second).ok()
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
}

/// Checks the request's SigV4 signature against the configured credentials; the error AWS
/// would answer otherwise.
// The error is the answer itself, built once per refused request (a mock, not a hot path).
#[allow(clippy::result_large_err)]
fn check_signature(state: &State, parts: &Parts, body: &[u8]) -> Result<(), Response<MockBody>> {
    let Some(value) = header(parts, "authorization") else {
        return Err(forbidden(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let Some(authorization) = parse_authorization(value) else {
        return Err(forbidden(
            "IncompleteSignatureException",
            &format!("Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters. Authorization={value}"),
        ));
    };
    let Some(credentials) = state
        .config
        .aws_credentials
        .iter()
        .find(|known| known.access_key_id == authorization.access_key_id)
    else {
        return Err(forbidden(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    let token = header(parts, "x-amz-security-token");
    if token != credentials.session_token.as_deref() {
        return Err(forbidden(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if authorization.service != "bedrock" {
        return Err(forbidden(
            "InvalidSignatureException",
            &format!(
                "Credential should be scoped to correct service: 'bedrock'. (got '{}')",
                authorization.service
            ),
        ));
    }
    for required in ["host", "x-amz-date"] {
        if !authorization.signed_headers.contains(&required) {
            return Err(forbidden(
                "InvalidSignatureException",
                &format!("'{required}' must be a 'SignedHeader' in the AWS Authorization."),
            ));
        }
    }
    let Some(amz_date) = header(parts, "x-amz-date") else {
        return Err(forbidden(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    let Some(signed_at) = parse_amz_date(amz_date) else {
        return Err(forbidden(
            "IncompleteSignatureException",
            &format!("Date must be in ISO-8601 'basic format'. Got '{amz_date}'."),
        ));
    };
    let now = now_unix();
    let now_text = sigv4::amz_date(now).unwrap_or_default();
    if signed_at.saturating_add(MAX_CLOCK_SKEW_SECONDS) < now {
        let earliest = sigv4::amz_date(now - MAX_CLOCK_SKEW_SECONDS).unwrap_or_default();
        return Err(forbidden(
            "InvalidSignatureException",
            &format!("Signature expired: {amz_date} is now earlier than {earliest} ({now_text} - 5 min.)"),
        ));
    }
    if signed_at > now.saturating_add(MAX_CLOCK_SKEW_SECONDS) {
        let latest = sigv4::amz_date(now + MAX_CLOCK_SKEW_SECONDS).unwrap_or_default();
        return Err(forbidden(
            "InvalidSignatureException",
            &format!("Signature not yet current: {amz_date} is still later than {latest} ({now_text} + 5 min.)"),
        ));
    }
    if amz_date.get(..8) != Some(authorization.date) {
        return Err(forbidden(
            "InvalidSignatureException",
            &format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.",
                authorization.date,
                amz_date.get(..8).unwrap_or_default()
            ),
        ));
    }
    // The request as it arrived: HTTP/1.1 carries the authority in Host, HTTP/2 in the URI.
    let host = header(parts, "host")
        .or_else(|| parts.uri.authority().map(|authority| authority.as_str()))
        .unwrap_or_default();
    let mut signed: Vec<(&str, String)> = Vec::new();
    for name in &authorization.signed_headers {
        if matches!(*name, "host" | "x-amz-date" | "x-amz-security-token") {
            continue;
        }
        let values: Vec<&str> = parts
            .headers
            .get_all(*name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        signed.push((name, values.join(",")));
    }
    let signed: Vec<(&str, &str)> = signed
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let verifying = sigv4::Credentials {
        access_key_id: credentials.access_key_id.clone(),
        secret_access_key: credentials.secret_access_key.clone(),
        session_token: token.map(str::to_string),
    };
    let token_signed = authorization
        .signed_headers
        .contains(&"x-amz-security-token");
    let request = sigv4::SignableRequest {
        method: parts.method.as_str(),
        host,
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or_default(),
        headers: &signed,
        body,
    };
    let params = sigv4::SigningParams {
        credentials: &verifying,
        region: authorization.region,
        service: authorization.service,
        unix_seconds: signed_at,
        settings: sigv4::SigningSettings {
            session_token: if token_signed {
                sigv4::SessionTokenPlacement::Signed
            } else {
                sigv4::SessionTokenPlacement::AddedAfterSigning
            },
            ..sigv4::SigningSettings::default()
        },
    };
    let steps = sigv4::sign_with_steps(&request, &params).map_err(|problem| {
        forbidden(
            "InvalidSignatureException",
            &format!("The request signature we calculated does not match the signature you provided. ({problem})"),
        )
    })?;
    let expected = steps
        .headers
        .authorization
        .rsplit("Signature=")
        .next()
        .unwrap_or_default();
    if expected != authorization.signature {
        return Err(forbidden(
            "InvalidSignatureException",
            &format!(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'{}'\n\nThe String-to-Sign should have been\n'{}'\n",
                steps.canonical_request, steps.string_to_sign
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Body
// ---------------------------------------------------------------------------------------------

const TOP_LEVEL_FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
    "outputConfig",
    "serviceTier",
];

const BLOCK_MEMBERS: &[&str] = &[
    "text",
    "image",
    "document",
    "video",
    "toolUse",
    "toolResult",
    "guardContent",
    "cachePoint",
    "reasoningContent",
    "citationsContent",
];

fn is_base64(text: &str) -> bool {
    !text.is_empty()
        && text.len().is_multiple_of(4)
        && text
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        && text.len() - text.trim_end_matches('=').len() <= 2
}

/// The single member of a union object, or the message Bedrock gives.
fn union_member<'a>(
    value: &'a Value,
    path: &str,
    known: &[&str],
) -> Result<(&'a str, &'a Value), String> {
    let Some(object) = value.as_object() else {
        return Err(format!("{path}: expected an object"));
    };
    let mut members = object.iter();
    let (Some((name, inner)), None) = (members.next(), members.next()) else {
        return Err(format!(
            "{path}: exactly one member of the union must be set, got {}",
            object.len()
        ));
    };
    if !known.contains(&name.as_str()) {
        return Err(format!("{path}: unknown member '{name}'"));
    }
    Ok((name.as_str(), inner))
}

fn check_image(image: &Value, path: &str) -> Result<(), String> {
    match image.get("format").and_then(Value::as_str) {
        Some("png" | "jpeg" | "gif" | "webp") => {}
        Some(other) => {
            return Err(format!(
                "{path}.format: '{other}' is not one of png, jpeg, gif, webp"
            ))
        }
        None => return Err(format!("{path}.format: required")),
    }
    let Some(source) = image.get("source") else {
        return Err(format!("{path}.source: required"));
    };
    match source.get("bytes").and_then(Value::as_str) {
        Some(bytes) if is_base64(bytes) => Ok(()),
        Some(_) => Err(format!("{path}.source.bytes: not valid base64")),
        None if source.get("s3Location").is_some() => Ok(()),
        None => Err(format!(
            "{path}.source: one of bytes, s3Location is required"
        )),
    }
}

/// A content block's text, whether it is an image, its toolUse id, its toolResult (id and
/// texts); checked as Bedrock checks it.
#[derive(Default)]
struct BlockFacts<'a> {
    text: Option<&'a str>,
    image: bool,
    tool_use_id: Option<&'a str>,
    tool_result: Option<(&'a str, Vec<&'a str>)>,
}

fn check_block<'a>(
    block: &'a Value,
    message: usize,
    index: usize,
) -> Result<BlockFacts<'a>, String> {
    let path = format!("messages.{message}.content.{index}");
    let (member, inner) = union_member(block, &path, BLOCK_MEMBERS)?;
    let mut facts = BlockFacts::default();
    match member {
        "text" => match inner.as_str() {
            Some(text) if text.trim().is_empty() => {
                return Err(format!("The text field in the ContentBlock object at {path} is blank. Add text to the text field, and try again."));
            }
            Some(text) => facts.text = Some(text),
            None => return Err(format!("{path}.text: expected a string")),
        },
        "image" => {
            check_image(inner, &format!("{path}.image"))?;
            facts.image = true;
        }
        "toolUse" => {
            for field in ["toolUseId", "name"] {
                if !inner.get(field).is_some_and(Value::is_string) {
                    return Err(format!("{path}.toolUse.{field}: required string"));
                }
            }
            if inner.get("input").is_none() {
                return Err(format!("{path}.toolUse.input: required"));
            }
            facts.tool_use_id = inner.get("toolUseId").and_then(Value::as_str);
        }
        "toolResult" => {
            let Some(id) = inner.get("toolUseId").and_then(Value::as_str) else {
                return Err(format!("{path}.toolResult.toolUseId: required string"));
            };
            let Some(content) = inner.get("content").and_then(Value::as_array) else {
                return Err(format!("{path}.toolResult.content: required list"));
            };
            let mut texts = Vec::new();
            for (at, item) in content.iter().enumerate() {
                let item_path = format!("{path}.toolResult.content.{at}");
                let (kind, value) = union_member(
                    item,
                    &item_path,
                    &["text", "json", "image", "document", "video"],
                )?;
                match kind {
                    "text" => texts.push(
                        value
                            .as_str()
                            .ok_or_else(|| format!("{item_path}.text: expected a string"))?,
                    ),
                    "image" => check_image(value, &format!("{item_path}.image"))?,
                    _ => {}
                }
            }
            match inner.get("status").map(Value::as_str) {
                None | Some(Some("success" | "error")) => {}
                Some(_) => {
                    return Err(format!(
                        "{path}.toolResult.status: must be success or error"
                    ))
                }
            }
            facts.tool_result = Some((id, texts));
        }
        _ => {}
    }
    Ok(facts)
}

/// What the validated conversation says, for the answer.
struct Conversation {
    /// Words of every text (system included), for the input tokens.
    input_words: u64,
    /// The last user message's text and tool result texts, joined by one space.
    last_user_text: String,
    last_user_images: usize,
    last_user_has_tool_result: bool,
}

fn check_messages(messages: &[Value], has_tool_config: bool) -> Result<Conversation, String> {
    if messages.is_empty() {
        return Err("The messages field is empty. Add at least one message and try again.".into());
    }
    let mut conversation = Conversation {
        input_words: 0,
        last_user_text: String::new(),
        last_user_images: 0,
        last_user_has_tool_result: false,
    };
    let mut previous_role: Option<&str> = None;
    let mut previous_tool_uses: Vec<&str> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role,
            Some(other) => {
                return Err(format!(
                    "messages.{i}.role: '{other}' is not one of user, assistant"
                ))
            }
            None => return Err(format!("messages.{i}.role: required")),
        };
        if i == 0 && role != "user" {
            return Err("A conversation must start with a user message. Try again with a conversation that starts with a user message.".into());
        }
        if previous_role == Some(role) {
            return Err("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.".into());
        }
        let Some(content) = message.get("content").and_then(Value::as_array) else {
            return Err(format!("messages.{i}.content: required list"));
        };
        if content.is_empty() {
            return Err(format!("The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again."));
        }
        let mut texts: Vec<&str> = Vec::new();
        let mut images = 0;
        let mut tool_uses = Vec::new();
        let mut tool_results = Vec::new();
        for (j, block) in content.iter().enumerate() {
            let facts = check_block(block, i, j)?;
            if (facts.tool_use_id.is_some() || facts.tool_result.is_some()) && !has_tool_config {
                return Err("The toolConfig field must be defined when using toolUse and toolResult content blocks.".into());
            }
            if facts.tool_use_id.is_some() && role != "assistant" {
                return Err(format!(
                    "messages.{i}.content.{j}: toolUse blocks may only be in assistant messages"
                ));
            }
            if let Some(id) = facts.tool_use_id {
                tool_uses.push(id);
            }
            if let Some((id, result_texts)) = facts.tool_result {
                if role != "user" || !previous_tool_uses.contains(&id) {
                    return Err(format!("messages.{i}.content.{j}: unexpected toolUseId '{id}' in toolResult: each toolResult must answer a toolUse of the previous assistant message."));
                }
                tool_results.push(id);
                texts.extend(result_texts);
            }
            texts.extend(facts.text);
            images += usize::from(facts.image);
        }
        if role == "user" {
            if let Some(missing) = previous_tool_uses
                .iter()
                .find(|id| !tool_results.contains(id))
            {
                return Err(format!("messages.{i}: the toolUse '{missing}' of messages.{} has no toolResult in this message.", i - 1));
            }
            conversation.last_user_text = texts.join(" ");
            conversation.last_user_images = images;
            conversation.last_user_has_tool_result = !tool_results.is_empty();
        }
        for text in &texts {
            conversation.input_words += count_words(text);
        }
        previous_tool_uses = if role == "assistant" {
            tool_uses
        } else {
            Vec::new()
        };
        previous_role = Some(role);
    }
    Ok(conversation)
}

fn check_inference_config(config: &Value) -> Result<(), String> {
    let Some(object) = config.as_object() else {
        return Err("inferenceConfig: expected an object".into());
    };
    for (name, value) in object {
        match name.as_str() {
            "maxTokens" => {
                if value.as_u64().is_none_or(|n| n < 1) {
                    return Err("inferenceConfig.maxTokens: must be an integer of at least 1".into());
                }
            }
            "temperature" | "topP" => {
                if !value.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)) {
                    return Err(format!("inferenceConfig.{name}: must be a number from 0 to 1"));
                }
            }
            "stopSequences" => {
                let ok = value
                    .as_array()
                    .is_some_and(|items| items.len() <= 2500 && items.iter().all(Value::is_string));
                if !ok {
                    return Err("inferenceConfig.stopSequences: must be a list of strings".into());
                }
            }
            other => {
                return Err(format!(
                    "inferenceConfig: unknown field '{other}' (known: maxTokens, temperature, topP, stopSequences)"
                ))
            }
        }
    }
    Ok(())
}

/// The tool names of a valid `toolConfig`, and the forced one, if any.
fn check_tool_config(config: &Value) -> Result<(Vec<&str>, Option<&str>), String> {
    let Some(tools) = config.get("tools").and_then(Value::as_array) else {
        return Err("toolConfig.tools: required list".into());
    };
    if tools.is_empty() {
        return Err("toolConfig.tools: must hold at least one tool".into());
    }
    let mut names = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("toolConfig.tools.{i}");
        let (member, spec) = union_member(tool, &path, &["toolSpec", "cachePoint"])?;
        if member != "toolSpec" {
            continue;
        }
        let Some(name) = spec.get("name").and_then(Value::as_str) else {
            return Err(format!("{path}.toolSpec.name: required string"));
        };
        if !spec
            .get("inputSchema")
            .and_then(|schema| schema.get("json"))
            .is_some_and(Value::is_object)
        {
            return Err(format!("{path}.toolSpec.inputSchema.json: required object"));
        }
        names.push(name);
    }
    let forced = match config.get("toolChoice") {
        None => None,
        Some(choice) => {
            match union_member(choice, "toolConfig.toolChoice", &["auto", "any", "tool"])? {
                ("tool", named) => {
                    let Some(name) = named.get("name").and_then(Value::as_str) else {
                        return Err("toolConfig.toolChoice.tool.name: required string".into());
                    };
                    if !names.contains(&name) {
                        return Err(format!(
                            "toolConfig.toolChoice.tool.name: '{name}' is not one of the tools"
                        ));
                    }
                    Some(name)
                }
                (_, value) if value.as_object().is_some_and(Map::is_empty) => None,
                (member, _) => {
                    return Err(format!(
                        "toolConfig.toolChoice.{member}: expected an empty object"
                    ))
                }
            }
        }
    };
    Ok((names, forced))
}

fn check_output_config(config: &Value) -> Result<(), String> {
    let format = config
        .get("textFormat")
        .ok_or("outputConfig.textFormat: required")?;
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err("outputConfig.textFormat.type: must be json_schema".into());
    }
    let schema = format
        .get("structure")
        .and_then(|structure| structure.get("jsonSchema"))
        .and_then(|definition| definition.get("schema"))
        .and_then(Value::as_str)
        .ok_or("outputConfig.textFormat.structure.jsonSchema.schema: required string")?;
    serde_json::from_str::<Value>(schema)
        .map(|_| ())
        .map_err(|_| "outputConfig.textFormat.structure.jsonSchema.schema: not valid JSON".into())
}

/// The decoded model id of `/model/<id>/converse[-stream]` (or `/invoke`), and whether it
/// streams.
pub(crate) fn parse_path(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/model/")?;
    let (encoded, stream) = if let Some(id) = rest.strip_suffix("/converse-stream") {
        (id, true)
    } else if let Some(id) = rest.strip_suffix("/invoke") {
        (id, false)
    } else {
        (rest.strip_suffix("/converse")?, false)
    };
    if encoded.is_empty() || encoded.contains('/') {
        return None;
    }
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte == b'%' {
            let hex = encoded.get(at + 1..at + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            decoded.push(byte);
            at += 1;
        }
    }
    Some((String::from_utf8(decoded).ok()?, stream))
}

/// Whether `path` is one of the Bedrock endpoints.
pub(crate) fn is_bedrock_path(path: &str) -> bool {
    path.starts_with("/model/")
        && (path.ends_with("/converse")
            || path.ends_with("/converse-stream")
            || path.ends_with("/invoke"))
}

fn tool_input() -> Value {
    json!({"location": "Paris", "unit": "celsius"})
}

/// The mock's reply.
enum Reply {
    Text {
        pieces: Vec<String>,
        stop_sequence: bool,
    },
    ToolUse(String),
}

pub(crate) async fn handle(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    let request_id = format!("mock-bedrock-{}", state.next_id());
    let mut resp = answer(state, parts, body).await;
    set_header(&mut resp, "x-amzn-requestid", &request_id);
    resp
}

async fn answer(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    let Some((model, stream)) = parse_path(parts.uri.path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "The model id must be one percent-encoded path segment: /model/<model id>/converse.",
        );
    };
    if let Err(refused) = check_signature(state, parts, body) {
        return refused;
    }
    if parts.uri.path().ends_with("/invoke") {
        // InvokeModel: the model's own body; the mock serves embedding models.
        return crate::embeddings::bedrock_invoke(&model, body);
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => {
            return validation("Malformed input request, please reformat your input and try again.")
        }
    };
    let Some(object) = request.as_object() else {
        return validation("Malformed input request, please reformat your input and try again.");
    };
    if let Some(extra) = object
        .keys()
        .find(|key| !TOP_LEVEL_FIELDS.contains(&key.as_str()))
    {
        return validation(format!("Malformed input request: extraneous key [{extra}] is not permitted, please reformat your input and try again."));
    }
    let tool_config = match object.get("toolConfig").map(check_tool_config).transpose() {
        Ok(config) => config,
        Err(message) => return validation(message),
    };
    let Some(messages) = object.get("messages").and_then(Value::as_array) else {
        return validation("messages: required list");
    };
    let conversation = match check_messages(messages, tool_config.is_some()) {
        Ok(conversation) => conversation,
        Err(message) => return validation(message),
    };
    let mut system_words = 0;
    if let Some(system) = object.get("system") {
        let Some(blocks) = system.as_array() else {
            return validation("system: expected a list");
        };
        for (i, block) in blocks.iter().enumerate() {
            match union_member(block, &format!("system.{i}"), &["text", "guardContent", "cachePoint"]) {
                Ok(("text", text)) => match text.as_str() {
                    Some(text) if !text.trim().is_empty() => system_words += count_words(text),
                    _ => return validation(format!("The text field in the SystemContentBlock object at system.{i} is blank. Add text to the text field, and try again.")),
                },
                Ok(_) => {}
                Err(message) => return validation(message),
            }
        }
    }
    if let Err(message) = object
        .get("inferenceConfig")
        .map(check_inference_config)
        .transpose()
    {
        return validation(message);
    }
    if let Err(message) = object
        .get("outputConfig")
        .map(check_output_config)
        .transpose()
    {
        return validation(message);
    }

    let directives = Directives::for_request(&conversation.last_user_text, parts);
    if directives.raw_error {
        return raw_error();
    }
    if let Some(status) = directives.error_status() {
        return status_error(status);
    }
    let input_tokens = (conversation.input_words + system_words).max(1);
    let reply = match &tool_config {
        Some((names, forced)) if !conversation.last_user_has_tool_result => {
            match forced.or_else(|| names.first().copied()) {
                Some(name) => Reply::ToolUse(name.to_string()),
                None => text_reply(&conversation, &directives, object),
            }
        }
        _ => text_reply(&conversation, &directives, object),
    };
    let input = tool_input();
    let output_tokens = match &reply {
        Reply::Text { pieces, .. } => count_words(&pieces.concat()),
        Reply::ToolUse(_) => count_words(TOOL_PREAMBLE) + count_words(&input.to_string()),
    }
    .max(1);
    let stop_reason = match &reply {
        Reply::Text {
            stop_sequence: true,
            ..
        } => "stop_sequence",
        Reply::Text { .. } => "end_turn",
        Reply::ToolUse(_) => "tool_use",
    };
    let usage = json!({
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens,
    });
    if stream {
        let frames = stream_frames(&reply, &input, stop_reason, &usage, &directives);
        return response(
            StatusCode::OK,
            eventstream::CONTENT_TYPE,
            MockBody::paced(frames, directives.delay()),
        );
    }
    if let Some(ms) = directives.delay_ms.filter(|ms| *ms > 0) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let content = match &reply {
        Reply::Text { pieces, .. } => json!([{"text": pieces.concat()}]),
        Reply::ToolUse(name) => json!([
            {"text": TOOL_PREAMBLE},
            {"toolUse": {"toolUseId": TOOL_USE_ID, "name": name, "input": input}}
        ]),
    };
    let answer = json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": usage,
        "metrics": {"latencyMs": 1},
    });
    response(
        StatusCode::OK,
        "application/json",
        MockBody::full(Bytes::from(answer.to_string())),
    )
}

fn text_reply(
    conversation: &Conversation,
    directives: &Directives,
    request: &Map<String, Value>,
) -> Reply {
    let pieces: Vec<String> = match directives.chunks {
        Some(count) => numbered_chunks(count),
        None => {
            let mut content = format!("echo: {}", conversation.last_user_text);
            if conversation.last_user_images > 0 {
                content.push_str(&format!(" [images: {}]", conversation.last_user_images));
            }
            split_words_keep_spaces(&content)
                .into_iter()
                .map(str::to_owned)
                .collect()
        }
    };
    let stops: Vec<String> = request
        .get("inferenceConfig")
        .and_then(|config| config.get("stopSequences"))
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let full = pieces.concat();
    match find_stop(&full, &stops) {
        Some((cut, _)) => Reply::Text {
            pieces: split_words_keep_spaces(full.get(..cut).unwrap_or_default())
                .into_iter()
                .map(str::to_owned)
                .collect(),
            stop_sequence: true,
        },
        None => Reply::Text {
            pieces,
            stop_sequence: false,
        },
    }
}

/// An event frame with Bedrock's padding member added to `payload`.
fn event(event_type: &str, mut payload: Value, padding: usize) -> Bytes {
    if let Value::Object(object) = &mut payload {
        let length = padding % PADDING.len() + 1;
        object.insert(
            "p".into(),
            Value::String(PADDING.get(..length).unwrap_or_default().into()),
        );
    }
    let bytes = serde_json::to_vec(&payload).unwrap_or_default();
    Bytes::from(eventstream::event(event_type, &bytes).unwrap_or_default())
}

fn stream_frames(
    reply: &Reply,
    input: &Value,
    stop_reason: &str,
    usage: &Value,
    directives: &Directives,
) -> Vec<Bytes> {
    let mut frames = vec![event("messageStart", json!({"role": "assistant"}), 0)];
    let pieces: Vec<&str> = match reply {
        Reply::Text { pieces, .. } => pieces.iter().map(String::as_str).collect(),
        Reply::ToolUse(_) => split_words_keep_spaces(TOOL_PREAMBLE),
    };
    for (i, text) in pieces.iter().enumerate() {
        frames.push(event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": text}}),
            i + 1,
        ));
        if i == 0 && directives.stream_error {
            let payload = json!({"message": "The model stream failed (mock:stream_error)."});
            frames.push(Bytes::from(
                eventstream::exception("modelStreamErrorException", payload.to_string().as_bytes())
                    .unwrap_or_default(),
            ));
            return frames;
        }
        if i == 0 && directives.stream_cut {
            return frames;
        }
    }
    frames.push(event(
        "contentBlockStop",
        json!({"contentBlockIndex": 0}),
        2,
    ));
    if let Reply::ToolUse(name) = reply {
        frames.push(event(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": TOOL_USE_ID, "name": name}}}),
            3,
        ));
        let arguments = input.to_string();
        for (i, piece) in split_even(&arguments, 4).into_iter().enumerate() {
            frames.push(event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": piece}}}),
                4 + i,
            ));
        }
        frames.push(event(
            "contentBlockStop",
            json!({"contentBlockIndex": 1}),
            8,
        ));
    }
    frames.push(event("messageStop", json!({"stopReason": stop_reason}), 9));
    frames.push(event(
        "metadata",
        json!({"usage": usage, "metrics": {"latencyMs": 1}}),
        10,
    ));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_parse() {
        assert_eq!(parse_amz_date("20231114T221320Z"), Some(1_700_000_000));
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20240229T000000Z"), Some(1_709_164_800));
        for bad in [
            "20231114221320Z",
            "20231314T000000Z",
            "2023-11-14T22:13:20Z",
            "",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
        for now in [0, 1_700_000_000, 1_709_164_800, 4_102_444_799] {
            assert_eq!(parse_amz_date(&sigv4::amz_date(now).unwrap()), Some(now));
        }
    }

    #[test]
    fn paths_name_one_model() {
        assert_eq!(
            parse_path("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"),
            Some(("anthropic.claude-3-5-sonnet-20240620-v1:0".into(), false))
        );
        assert_eq!(
            parse_path("/model/us.amazon.nova-pro-v1%3a0/converse-stream"),
            Some(("us.amazon.nova-pro-v1:0".into(), true))
        );
        assert_eq!(parse_path("/model/a/b/converse"), None);
        assert_eq!(parse_path("/model//converse"), None);
        // InvokeModel (the embedding models) is served too.
        assert_eq!(
            parse_path("/model/amazon.titan-embed-text-v2%3A0/invoke"),
            Some(("amazon.titan-embed-text-v2:0".into(), false))
        );
        assert_eq!(parse_path("/model/x/other"), None);
    }

    #[test]
    fn authorization_headers_parse() {
        let parsed = parse_authorization("AWS4-HMAC-SHA256 Credential=AKID/20231114/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=abc").unwrap();
        assert_eq!(parsed.access_key_id, "AKID");
        assert_eq!(parsed.region, "us-east-1");
        assert_eq!(
            parsed.signed_headers,
            ["content-type", "host", "x-amz-date"]
        );
        assert_eq!(parsed.signature, "abc");
        assert!(parse_authorization("Bearer x").is_none());
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=AKID/20231114/us-east-1/bedrock, SignedHeaders=host, Signature=a").is_none());
    }

    #[test]
    fn base64_checks() {
        assert!(is_base64("QUJD"));
        assert!(is_base64("QQ=="));
        assert!(!is_base64("QQ="));
        assert!(!is_base64("not base64!"));
        assert!(!is_base64(""));
    }
}
