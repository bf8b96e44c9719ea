//! Google Vertex AI: the OAuth token endpoint a service account's `token_uri` names, and the
//! publisher model endpoints that take its tokens.
//!
//! * `POST /token`: the JWT bearer grant (RFC 7523) as Google's token endpoint takes it: a
//!   form with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an RS256
//!   `assertion` whose signature must verify with the service account's public key, `iss`
//!   its e-mail, `aud` its `token_uri` (or this endpoint's URL), a `scope`, and at most an
//!   hour between `iat` and `exp`. Answers `{"access_token", "expires_in", "token_type": "Bearer"}`; refusals are
//!   OAuth's `{"error", "error_description"}`.
//! * `POST /v1/projects/<p>/locations/<l>/publishers/google/models/<m>:generateContent` (and
//!   `:streamGenerateContent?alt=sse`): Gemini's answers.
//! * `POST /v1/projects/<p>/locations/<l>/publishers/anthropic/models/<m>:rawPredict` (and
//!   `:streamRawPredict`): Anthropic's answers to a Messages body without `model` and with
//!   `anthropic_version: "vertex-2023-10-16"`.
//!
//! Model endpoints want `Authorization: Bearer <token>` with a token this mock issued and that
//! has not expired; Google answers 401 `UNAUTHENTICATED` otherwise.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::body::MockBody;
use crate::common::json_response;
use crate::{anthropic, gemini, State};

/// The `anthropic_version` Vertex AI takes in the body.
const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";
/// The grant type of a service account's JWT.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The service account whose JWTs the token endpoint accepts.
#[derive(Clone)]
pub struct VertexAccount {
    /// `client_email`: the JWT's `iss`.
    pub client_email: String,
    /// `token_uri`: the JWT's `aud`.
    pub token_uri: String,
    /// `private_key_id`: the JWT header's `kid`, when the key file has one.
    pub key_id: Option<String>,
    /// The public half of `private_key` (PKCS#1 `RSAPublicKey` DER).
    pub public_key_der: Vec<u8>,
    /// `expires_in` of the tokens issued.
    pub token_ttl: Duration,
}

impl std::fmt::Debug for VertexAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VertexAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("token_ttl", &self.token_ttl)
            .finish()
    }
}

impl VertexAccount {
    /// Reads a service account key file's JSON (its private key stays here: only the public
    /// half is kept).
    pub fn from_key_file(json: &str, token_ttl: Duration) -> anyhow::Result<VertexAccount> {
        use ring::signature::KeyPair;
        let file: Value = serde_json::from_str(json)?;
        let text = |name: &str| {
            file.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("the service account key has no {name}"))
        };
        let pem = text("private_key")?;
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body.trim())?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|error| anyhow::anyhow!("private_key: {error}"))?;
        Ok(VertexAccount {
            client_email: text("client_email")?,
            token_uri: text("token_uri")?,
            key_id: text("private_key_id").ok(),
            public_key_der: key.public_key().as_ref().to_vec(),
            token_ttl,
        })
    }
}

/// The tokens issued, and when each expires.
#[derive(Default)]
pub(crate) struct TokenBook {
    issued: Mutex<HashMap<String, Instant>>,
    count: std::sync::atomic::AtomicU64,
}

impl TokenBook {
    fn issue(&self, ttl: Duration) -> String {
        let n = self
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let token = format!("ya29.mock-vertex-token-{n}");
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), Instant::now() + ttl);
        token
    }

    fn is_valid(&self, token: &str) -> bool {
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .is_some_and(|expires| Instant::now() < *expires)
    }

    /// How many tokens were issued.
    pub(crate) fn issued(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<MockBody> {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (byte, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                at += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                at += 1;
            }
            _ => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks a JWT bearer assertion as Google does; the error is OAuth's `error_description`.
/// `here` is the URL the request came to, which is an audience as good as the key file's
/// `token_uri` (tests point a copy of the key file at the mock).
fn check_assertion(account: &VertexAccount, assertion: &str, here: &str) -> Result<(), String> {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.".into());
    };
    let decode_json = |part: &str| -> Result<Value, String> {
        let bytes = engine
            .decode(part)
            .map_err(|_| "Invalid JWT: not base64url".to_string())?;
        serde_json::from_slice(&bytes).map_err(|_| "Invalid JWT: not JSON".to_string())
    };
    let header = decode_json(header)?;
    let claims = decode_json(claims)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("Invalid JWT: alg must be RS256".into());
    }
    if let Some(kid) = &account.key_id {
        if header.get("kid").and_then(Value::as_str) != Some(kid.as_str()) {
            return Err("Invalid JWT Signature.".into());
        }
    }
    let signature = engine
        .decode(signature)
        .map_err(|_| "Invalid JWT Signature.".to_string())?;
    let signed = assertion
        .rsplit_once('.')
        .map(|(signed, _)| signed)
        .unwrap_or_default();
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &account.public_key_der,
    )
    .verify(signed.as_bytes(), &signature)
    .map_err(|_| "Invalid JWT Signature.".to_string())?;
    if claims.get("iss").and_then(Value::as_str) != Some(account.client_email.as_str()) {
        return Err("Invalid JWT: iss is not the service account".into());
    }
    let audience = claims.get("aud").and_then(Value::as_str);
    if audience != Some(account.token_uri.as_str()) && audience != Some(here) {
        return Err("Invalid JWT: Failed audience check.".into());
    }
    if claims
        .get("scope")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("Invalid JWT: No valid scope, audience or target audience".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (Some(iat), Some(exp)) = (
        claims.get("iat").and_then(Value::as_u64),
        claims.get("exp").and_then(Value::as_u64),
    ) else {
        return Err("Invalid JWT: iat and exp are required".into());
    };
    if exp <= iat || exp - iat > 3600 || iat > now + 60 || exp < now {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".into());
    }
    Ok(())
}

/// `POST /token`.
pub(crate) fn token(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    let Some(account) = &state.config.vertex else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "tollgate-mock was started without --vertex-service-account",
        );
    };
    let form_type = parts
        .headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid request: the body must be application/x-www-form-urlencoded",
        );
    }
    let form = String::from_utf8_lossy(body);
    let field = |name: &str| {
        form.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| percent_decode(value))
    };
    if field("grant_type").as_deref() != Some(JWT_BEARER) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type",
        );
    }
    let Some(assertion) = field("assertion") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let host = parts
        .headers
        .get("host")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let here = format!("http://{host}{}", parts.uri.path());
    if let Err(description) = check_assertion(account, &assertion, &here) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &description);
    }
    let token = state.vertex_tokens.issue(account.token_ttl);
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "expires_in": account.token_ttl.as_secs(),
            "token_type": "Bearer",
        }),
    )
}

/// Whether `path` is a Vertex AI publisher model method.
pub(crate) fn is_vertex_path(path: &str) -> bool {
    path.starts_with("/v1/projects/") && path.contains("/publishers/")
}

/// `/v1/projects/<p>/locations/<l>/publishers/<publisher>/models/<model>:<method>` as
/// (publisher, model, method), the model percent-decoded (`claude-x%40v1` is `claude-x@v1`).
pub(crate) fn parse_path(path: &str) -> Option<(&str, String, &str)> {
    let rest = path.strip_prefix("/v1/projects/")?;
    let segments: Vec<&str> = rest.splitn(7, '/').collect();
    let [project, "locations", location, "publishers", publisher, "models", model_method] =
        segments.as_slice()
    else {
        return None;
    };
    if project.is_empty() || location.is_empty() {
        return None;
    }
    let (model, method) = model_method.rsplit_once(':')?;
    (!model.is_empty() && !model.contains('/')).then(|| (*publisher, percent_decode(model), method))
}

fn unauthenticated() -> Response<MockBody> {
    gemini::error(
        StatusCode::UNAUTHORIZED,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        None,
    )
}

/// A publisher model method.
pub(crate) async fn handle(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    let token = parts
        .headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !token.is_some_and(|token| state.vertex_tokens.is_valid(token)) {
        return unauthenticated();
    }
    let not_found = || {
        gemini::error(
            StatusCode::NOT_FOUND,
            &format!(
                "The requested URL {} was not found on this server.",
                parts.uri.path()
            ),
            None,
        )
    };
    let Some((publisher, model, method)) = parse_path(parts.uri.path()) else {
        return not_found();
    };
    let model = model.as_str();
    match (publisher, method) {
        ("google", "generateContent") => gemini::answer(state, parts, body, model, false).await,
        ("google", "streamGenerateContent") => {
            gemini::answer(state, parts, body, model, true).await
        }
        ("google", "predict") => crate::embeddings::vertex_predict(body),
        ("anthropic", "rawPredict" | "streamRawPredict") => {
            anthropic_on_vertex(state, parts, body, model, method == "streamRawPredict").await
        }
        _ => not_found(),
    }
}

/// Claude on Vertex: Anthropic's body but for `model` (in the path) and `anthropic_version`
/// (in the body, not a header).
async fn anthropic_on_vertex(
    state: &State,
    parts: &Parts,
    body: &Bytes,
    model: &str,
    stream_method: bool,
) -> Response<MockBody> {
    let n = state.next_id();
    let request_id = format!("req_mock_{n}");
    let mut request: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            return anthropic::refuse(
                &format!("There was an issue with the request body: invalid JSON ({e})"),
                &request_id,
            )
        }
    };
    let Some(object) = request.as_object_mut() else {
        return anthropic::refuse("Input should be a valid dictionary", &request_id);
    };
    if object.contains_key("model") {
        return anthropic::refuse("model: Extra inputs are not permitted", &request_id);
    }
    match object.remove("anthropic_version") {
        Some(Value::String(version)) if version == VERTEX_ANTHROPIC_VERSION => {}
        Some(_) => {
            return anthropic::refuse(
                &format!("anthropic_version: Input should be '{VERTEX_ANTHROPIC_VERSION}'"),
                &request_id,
            )
        }
        None => return anthropic::refuse("anthropic_version: Field required", &request_id),
    }
    let streams = object
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if streams != stream_method {
        return anthropic::refuse(
            "stream: streamRawPredict takes \"stream\": true and rawPredict does not",
            &request_id,
        );
    }
    object.insert("model".into(), Value::String(model.to_string()));
    anthropic::answer(n, parts, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_publisher_model_and_method() {
        assert_eq!(
            parse_path("/v1/projects/p-1/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict"),
            Some(("anthropic", "claude-sonnet-4@20250514".into(), "rawPredict"))
        );
        assert_eq!(
            parse_path("/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash:streamGenerateContent"),
            Some(("google", "gemini-2.5-flash".into(), "streamGenerateContent"))
        );
        assert_eq!(
            parse_path("/v1/projects/p/publishers/google/models/m:x"),
            None
        );
        assert_eq!(
            parse_path("/v1/projects/p/locations/l/publishers/google/models/a/b:x"),
            None
        );
        assert_eq!(
            parse_path(
                "/v1/projects/p/locations/l/publishers/anthropic/models/claude%40v1:rawPredict"
            ),
            Some(("anthropic", "claude@v1".into(), "rawPredict"))
        );
        assert_eq!(percent_decode("urn%3Aietf%3Aparams+x"), "urn:ietf:params x");
    }
}
