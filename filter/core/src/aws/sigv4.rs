//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`) for a request whose method, host, path,
//! query, headers and body are final: [`sign`] returns the headers to add
//! (`authorization`, `x-amz-date`, `x-amz-security-token` with temporary credentials, and
//! `x-amz-content-sha256` when asked for).
//!
//! The algorithm, as AWS documents it ("Create a signed AWS API request", IAM User Guide):
//!
//! 1. The canonical request: `METHOD \n canonical URI \n canonical query \n canonical
//!    headers \n signed headers \n hex(sha256(body))`.
//!    - Canonical URI: the path with its dot segments and repeated slashes removed, then every
//!      byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) and `/` percent-encoded. The
//!      path is taken *as sent* on the request line, so for every service but S3 it is encoded
//!      a second time: Bedrock's model id `anthropic.claude-3-5-sonnet-20240620-v1:0` is sent
//!      as `…-v1%3A0` and its canonical URI holds `…-v1%253A0` (AWS computes it that way; a
//!      signer that encodes once gets `SignatureDoesNotMatch` for every model id with a
//!      colon). [`PathEncoding::AsSent`] is the S3 rule.
//!    - Canonical query: every `name=value` pair percent-decoded, re-encoded with only the
//!      unreserved bytes left as they are (a space is `%20`, a `+` is a literal plus sign:
//!      `%2B`), sorted by name then value; empty when there is no query.
//!    - Canonical headers: names lowercased, values trimmed with inner runs of spaces and tabs
//!      collapsed to one space, sorted by name, repeated names joined with `,` in the order
//!      sent, each line `name:value\n`; `host` and `x-amz-date` (and `x-amz-security-token`)
//!      are always among them. Signed headers: the names joined with `;`.
//! 2. The string to sign: `AWS4-HMAC-SHA256 \n YYYYMMDDTHHMMSSZ \n credential scope \n
//!    hex(sha256(canonical request))`, the scope being `YYYYMMDD/region/service/aws4_request`.
//! 3. The signing key: `HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service),
//!    "aws4_request")`; the signature is `hex(HMAC(key, string to sign))`.
//!
//! The time is passed in (the core reads no clock), as Unix seconds, and formatted here in
//! UTC. HMAC-SHA256 is written out over `sha2` (RFC 2104), which saves a dependency.

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// The algorithm name of the string to sign and the `Authorization` header.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The last second [`sign`] can format (`9999-12-31T23:59:59Z`): a four-digit year.
pub const LATEST_SIGNABLE_UNIX_SECONDS: u64 = 253_402_300_799;

/// Headers the signer writes itself: a request that already carries one is refused, since
/// the request would then have two (and `host` comes from [`SignableRequest::host`]).
const RESERVED_HEADERS: [&str; 5] = [
    "authorization",
    "host",
    "x-amz-content-sha256",
    "x-amz-date",
    "x-amz-security-token",
];

/// AWS credentials: a long-term access key, or temporary ones with their session token.
///
/// `Debug` shows the access key id only: the secret and the token never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key id (`AKIA…` or, for temporary credentials, `ASIA…`).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials (STS), sent as `x-amz-security-token`.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The request to sign, as it goes on the wire.
#[derive(Clone, Copy)]
pub struct SignableRequest<'a> {
    /// The HTTP method (`POST`), as sent.
    pub method: &'a str,
    /// The authority the request goes to, as its `Host` (`:authority`) header carries it:
    /// `bedrock-runtime.us-east-1.amazonaws.com`, with a port only when one is sent.
    pub host: &'a str,
    /// The path as sent on the request line, percent-encoding included
    /// (`/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse`), without the query. An
    /// empty path is `/`.
    pub path: &'a str,
    /// The query as sent, without the `?`; empty for none.
    pub query: &'a str,
    /// Every other header to sign (names in any case), in the order sent: `content-type`, say.
    /// Must not hold the headers the signer writes (`host`, `authorization`, `x-amz-date`,
    /// `x-amz-security-token`, `x-amz-content-sha256`).
    pub headers: &'a [(&'a str, &'a str)],
    /// The body, exactly as sent.
    pub body: &'a [u8],
}

impl fmt::Debug for SignableRequest<'_> {
    /// Header values and the body are left out: they may carry what must not be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| *name).collect();
        f.debug_struct("SignableRequest")
            .field("method", &self.method)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("header_names", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// How the canonical URI is made from the path as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathEncoding {
    /// Percent-encode the path as sent (already encoded once) again: what every AWS service
    /// but S3 expects, Bedrock included.
    #[default]
    EncodeAgain,
    /// Use the path as sent (S3).
    AsSent,
}

/// Where the session token of temporary credentials goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionTokenPlacement {
    /// `x-amz-security-token` is one of the signed headers: what current AWS services expect.
    #[default]
    Signed,
    /// `x-amz-security-token` is sent but not signed (a few older services; the test suite's
    /// `post-sts-header-after`).
    AddedAfterSigning,
}

/// What differs between AWS services. [`Default`] is right for Bedrock and every service but
/// S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigningSettings {
    /// How the canonical URI is made from the path.
    pub path_encoding: PathEncoding,
    /// Whether dot segments (`.`, `..`) and repeated slashes are removed from the path before
    /// encoding (every service but S3).
    pub normalize_path: bool,
    /// Where the session token goes, when there is one.
    pub session_token: SessionTokenPlacement,
    /// Whether `x-amz-content-sha256` (the body's hash) is sent and signed: S3 requires it,
    /// Bedrock does not.
    pub content_sha256_header: bool,
}

impl Default for SigningSettings {
    fn default() -> Self {
        SigningSettings {
            path_encoding: PathEncoding::EncodeAgain,
            normalize_path: true,
            session_token: SessionTokenPlacement::Signed,
            content_sha256_header: false,
        }
    }
}

/// Who signs, for which region and service, and when.
#[derive(Debug, Clone, Copy)]
pub struct SigningParams<'a> {
    /// The credentials.
    pub credentials: &'a Credentials,
    /// The region (`us-east-1`).
    pub region: &'a str,
    /// The signing name of the service (`bedrock` for `bedrock-runtime` endpoints).
    pub service: &'a str,
    /// The signing time, in seconds since the Unix epoch (UTC). AWS refuses a request signed
    /// more than 5 minutes away from its own clock.
    pub unix_seconds: u64,
    /// What differs between services.
    pub settings: SigningSettings,
}

/// The headers [`sign`] adds to the request.
///
/// `Debug` hides the signature and the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `authorization`: `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
    pub authorization: String,
    /// `x-amz-date`: the signing time, `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    /// `x-amz-security-token`: the session token, with temporary credentials.
    pub security_token: Option<String>,
    /// `x-amz-content-sha256`: the body's hash, when [`SigningSettings::content_sha256_header`].
    pub content_sha256: Option<String>,
}

impl SignedHeaders {
    /// The headers to add as `(lowercase name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        [
            Some(("authorization", self.authorization.as_str())),
            Some(("x-amz-date", self.amz_date.as_str())),
            self.security_token
                .as_deref()
                .map(|token| ("x-amz-security-token", token)),
            self.content_sha256
                .as_deref()
                .map(|hash| ("x-amz-content-sha256", hash)),
        ]
        .into_iter()
        .flatten()
    }
}

impl fmt::Debug for SignedHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedHeaders")
            .field("authorization", &"<redacted>")
            .field("amz_date", &self.amz_date)
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .field("content_sha256", &self.content_sha256)
            .finish()
    }
}

/// A signature with the two strings it was made from, for tests and for comparing with the
/// canonical request AWS quotes in a `SignatureDoesNotMatch` error.
///
/// The canonical request holds the session token: `Debug` leaves both strings out.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSteps {
    /// The canonical request (step 1).
    pub canonical_request: String,
    /// The string to sign (step 2).
    pub string_to_sign: String,
    /// The headers to add.
    pub headers: SignedHeaders,
}

impl fmt::Debug for SigningSteps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningSteps")
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// Why a request cannot be signed. None carries a header value or a credential.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SigningError {
    /// The method is empty or not an HTTP token.
    #[error("the HTTP method is empty or not a token")]
    InvalidMethod,
    /// The host is empty or holds a space or a control character.
    #[error("the host is empty or holds a space or a control character")]
    InvalidHost,
    /// The path does not start with `/`, or holds a `?` or `#`.
    #[error("the path must start with '/' and hold no '?' or '#'")]
    InvalidPath,
    /// A header name is empty or not an HTTP token (a pseudo-header such as `:path`, say).
    #[error("header name {0:?} is empty or not a token")]
    InvalidHeaderName(String),
    /// A header value holds a control character (a line break, say).
    #[error("the value of header {0:?} holds a control character")]
    InvalidHeaderValue(String),
    /// The request already carries a header the signer writes.
    #[error("header {0:?} is written by the signer and must not be passed in")]
    ReservedHeader(String),
    /// The access key id is empty or not ASCII letters and digits.
    #[error("the access key id is empty or not ASCII letters and digits")]
    InvalidAccessKeyId,
    /// The session token holds a character a header value cannot.
    #[error("the session token is empty or holds a space or a control character")]
    InvalidSessionToken,
    /// The region is empty or not lowercase letters, digits and `-`.
    #[error("region {0:?} is empty or not lowercase letters, digits and '-'")]
    InvalidRegion(String),
    /// The service is empty or not lowercase letters, digits, `-`, `_` and `.`.
    #[error("service {0:?} is empty or not lowercase letters, digits, '-', '_' and '.'")]
    InvalidService(String),
    /// The time is past the last one with a four-digit year.
    #[error("unix time {0} is past 9999-12-31T23:59:59Z")]
    TimeOutOfRange(u64),
}

/// Signs `request`: the headers to add to it.
pub fn sign(
    request: &SignableRequest<'_>,
    params: &SigningParams<'_>,
) -> Result<SignedHeaders, SigningError> {
    sign_with_steps(request, params).map(|steps| steps.headers)
}

/// Signs `request`, returning the canonical request and the string to sign with the headers.
pub fn sign_with_steps(
    request: &SignableRequest<'_>,
    params: &SigningParams<'_>,
) -> Result<SigningSteps, SigningError> {
    let credentials = params.credentials;
    let settings = params.settings;
    let access_key_id = credentials.access_key_id.as_str();
    if access_key_id.is_empty() || !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(SigningError::InvalidAccessKeyId);
    }
    if params.region.is_empty()
        || !params
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(SigningError::InvalidRegion(params.region.to_string()));
    }
    if params.service.is_empty()
        || !params.service.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
    {
        return Err(SigningError::InvalidService(params.service.to_string()));
    }
    if request.method.is_empty() || !request.method.bytes().all(is_token_byte) {
        return Err(SigningError::InvalidMethod);
    }
    if request.host.is_empty() || !request.host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SigningError::InvalidHost);
    }
    let token = credentials.session_token.as_deref();
    if let Some(token) = token {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SigningError::InvalidSessionToken);
        }
    }
    let time = UtcTime::from_unix_seconds(params.unix_seconds)?;
    let date = time.date();
    let amz_date = time.amz_date(&date);
    let payload_hash = hex::encode(Sha256::digest(request.body));

    // The headers to sign, lowercased; a stable sort keeps repeated names in the order sent.
    let mut headers: Vec<(String, &str)> = Vec::with_capacity(request.headers.len() + 4);
    for (name, value) in request.headers {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(SigningError::InvalidHeaderName((*name).to_string()));
        }
        let name = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(SigningError::ReservedHeader(name));
        }
        if !value.bytes().all(is_header_value_byte) {
            return Err(SigningError::InvalidHeaderValue(name));
        }
        headers.push((name, value));
    }
    headers.push(("host".to_string(), request.host));
    headers.push(("x-amz-date".to_string(), amz_date.as_str()));
    if let (Some(token), SessionTokenPlacement::Signed) = (token, settings.session_token) {
        headers.push(("x-amz-security-token".to_string(), token));
    }
    if settings.content_sha256_header {
        headers.push(("x-amz-content-sha256".to_string(), payload_hash.as_str()));
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));

    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum();
    let mut canonical_request = String::with_capacity(
        request.method.len() + 3 * request.path.len() + request.query.len() + 2 * header_bytes + 80,
    );
    canonical_request.push_str(request.method);
    canonical_request.push('\n');
    push_canonical_uri(&mut canonical_request, request.path, &settings)?;
    canonical_request.push('\n');
    push_canonical_query(&mut canonical_request, request.query);
    canonical_request.push('\n');
    let mut signed_headers = String::with_capacity(header_bytes);
    let mut previous: Option<&str> = None;
    for (name, value) in &headers {
        if previous == Some(name.as_str()) {
            canonical_request.push(',');
        } else {
            if previous.is_some() {
                canonical_request.push('\n');
                signed_headers.push(';');
            }
            canonical_request.push_str(name);
            canonical_request.push(':');
            signed_headers.push_str(name);
        }
        push_canonical_header_value(&mut canonical_request, value);
        previous = Some(name.as_str());
    }
    // The last header line's end, then the blank line that closes the headers.
    canonical_request.push_str("\n\n");
    canonical_request.push_str(&signed_headers);
    canonical_request.push('\n');
    canonical_request.push_str(&payload_hash);

    let scope = format!(
        "{date}/{region}/{service}/aws4_request",
        region = params.region,
        service = params.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(
        &credentials.secret_access_key,
        &date,
        params.region,
        params.service,
    );
    let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    );
    let content_sha256 = settings.content_sha256_header.then_some(payload_hash);
    Ok(SigningSteps {
        canonical_request,
        string_to_sign,
        headers: SignedHeaders {
            authorization,
            amz_date,
            security_token: token.map(str::to_string),
            content_sha256,
        },
    })
}

/// `x-amz-date` for `unix_seconds`: `YYYYMMDDTHHMMSSZ`, in UTC.
pub fn amz_date(unix_seconds: u64) -> Result<String, SigningError> {
    let time = UtcTime::from_unix_seconds(unix_seconds)?;
    Ok(time.amz_date(&time.date()))
}

/// The key of one day, region and service (step 3).
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut first_key = Vec::with_capacity(4 + secret.len());
    first_key.extend_from_slice(b"AWS4");
    first_key.extend_from_slice(secret.as_bytes());
    let date_key = hmac_sha256(&first_key, date.as_bytes());
    let region_key = hmac_sha256(&date_key, region.as_bytes());
    let service_key = hmac_sha256(&region_key, service.as_bytes());
    hmac_sha256(&service_key, b"aws4_request")
}

/// HMAC-SHA256 (RFC 2104 with SHA-256's 64-byte block).
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        let digest = Sha256::digest(key);
        for (slot, byte) in block_key.iter_mut().zip(digest.iter()) {
            *slot = *byte;
        }
    } else {
        for (slot, byte) in block_key.iter_mut().zip(key) {
            *slot = *byte;
        }
    }
    let mut inner = Sha256::new();
    inner.update(block_key.map(|byte| byte ^ 0x36));
    inner.update(message);
    let inner_digest = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block_key.map(|byte| byte ^ 0x5c));
    outer.update(inner_digest);
    outer.finalize().into()
}

/// An HTTP token byte (RFC 9110 `tchar`).
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A byte a header value may hold (RFC 9110 `field-content`, with the spaces): no control
/// character but the tab.
fn is_header_value_byte(byte: u8) -> bool {
    byte == b'\t' || (byte >= 0x20 && byte != 0x7f)
}

/// The bytes URI encoding leaves as they are (RFC 3986 `unreserved`).
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Appends `bytes` percent-encoded (uppercase hex), leaving the unreserved bytes and, with
/// `keep_slash`, `/`.
fn push_uri_encoded(out: &mut String, bytes: &[u8], keep_slash: bool) {
    for &byte in bytes {
        if is_unreserved(byte) || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(upper_hex_digit(byte >> 4));
            out.push(upper_hex_digit(byte & 0x0f));
        }
    }
}

fn upper_hex_digit(nibble: u8) -> char {
    char::from(if nibble < 10 {
        b'0' + nibble
    } else {
        b'A' + (nibble - 10)
    })
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// `input` with every `%XX` decoded; a `%` not followed by two hex digits stays as it is.
fn percent_decode(input: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            if let [high, low, after @ ..] = tail {
                if let (Some(high), Some(low)) = (hex_value(*high), hex_value(*low)) {
                    out.push((high << 4) | low);
                    rest = after;
                    continue;
                }
            }
        }
        out.push(first);
        rest = tail;
    }
    out
}

/// Appends the canonical URI of `path` (see the module's documentation).
fn push_canonical_uri(
    out: &mut String,
    path: &str,
    settings: &SigningSettings,
) -> Result<(), SigningError> {
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') || path.contains(['?', '#']) {
        return Err(SigningError::InvalidPath);
    }
    let encode = |out: &mut String, part: &str| match settings.path_encoding {
        PathEncoding::EncodeAgain => push_uri_encoded(out, part.as_bytes(), true),
        PathEncoding::AsSent => out.push_str(part),
    };
    if !settings.normalize_path {
        encode(out, path);
        return Ok(());
    }
    // RFC 3986 dot-segment removal, with empty segments (repeated slashes) dropped too: a
    // trailing slash is kept unless nothing is left.
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    for segment in &segments {
        out.push('/');
        encode(out, segment);
    }
    if segments.is_empty() || path.ends_with('/') {
        out.push('/');
    }
    Ok(())
}

/// Appends the canonical query of `query` (see the module's documentation).
fn push_canonical_query(out: &mut String, query: &str) {
    if query.is_empty() {
        return;
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let mut encoded_name = String::with_capacity(name.len());
            push_uri_encoded(&mut encoded_name, &percent_decode(name), false);
            let mut encoded_value = String::with_capacity(value.len());
            push_uri_encoded(&mut encoded_value, &percent_decode(value), false);
            (encoded_name, encoded_value)
        })
        .collect();
    // By name, then by value; identical pairs are interchangeable.
    pairs.sort_unstable();
    for (index, (name, value)) in pairs.iter().enumerate() {
        if index > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
}

/// Appends `value` trimmed, its inner runs of spaces and tabs collapsed to one space.
fn push_canonical_header_value(out: &mut String, value: &str) {
    let mut words = value.split([' ', '\t']).filter(|word| !word.is_empty());
    if let Some(first) = words.next() {
        out.push_str(first);
    }
    for word in words {
        out.push(' ');
        out.push_str(word);
    }
}

/// A UTC date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UtcTime {
    year: u64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
}

impl UtcTime {
    fn from_unix_seconds(unix_seconds: u64) -> Result<Self, SigningError> {
        if unix_seconds > LATEST_SIGNABLE_UNIX_SECONDS {
            return Err(SigningError::TimeOutOfRange(unix_seconds));
        }
        let (year, month, day) = civil_from_days(unix_seconds / 86_400);
        let second_of_day = unix_seconds % 86_400;
        Ok(UtcTime {
            year,
            month,
            day,
            hour: second_of_day / 3_600,
            minute: second_of_day % 3_600 / 60,
            second: second_of_day % 60,
        })
    }

    /// `YYYYMMDD`, the date of the credential scope.
    fn date(&self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// `YYYYMMDDTHHMMSSZ`, from [`UtcTime::date`].
    fn amz_date(&self, date: &str) -> String {
        format!(
            "{date}T{:02}{:02}{:02}Z",
            self.hour, self.minute, self.second
        )
    }
}

/// The proleptic Gregorian `(year, month, day)` of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch). The caller bounds `days` (to year
/// 9999), so no step overflows.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days since 0000-03-01, which puts the leap day at the end of each year.
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March (0) to February (11).
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231_test_case_1() {
        let key = [0x0b; 20];
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_test_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_sha256_hashes_a_key_longer_than_the_block_rfc_4231_test_case_6() {
        let key = [0xaa; 131];
        assert_eq!(
            hex::encode(hmac_sha256(
                &key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn hmac_sha256_with_a_key_of_exactly_one_block() {
        // A 64-byte key is used as it is, not hashed: cross-checked with Python's
        // hmac.new(bytes(range(64)), b"message", "sha256").
        let key: Vec<u8> = (0..64).collect();
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"message")),
            "eb97f15211c02e38e3213edb045e8301601867c1cd49df01c687eb04f8909e98"
        );
    }

    #[test]
    fn amz_date_formats_the_epoch() {
        assert_eq!(amz_date(0).unwrap(), "19700101T000000Z");
    }

    #[test]
    fn amz_date_formats_the_test_suite_time() {
        assert_eq!(amz_date(1_440_938_160).unwrap(), "20150830T123600Z");
    }

    #[test]
    fn amz_date_formats_leap_days() {
        // 1972 (divisible by 4) and 2000 (divisible by 400) have a 29 February.
        assert_eq!(amz_date(68_169_600).unwrap(), "19720229T000000Z");
        assert_eq!(amz_date(951_782_400).unwrap(), "20000229T000000Z");
        assert_eq!(amz_date(951_868_800).unwrap(), "20000301T000000Z");
        assert_eq!(amz_date(1_709_164_800).unwrap(), "20240229T000000Z");
    }

    #[test]
    fn amz_date_skips_the_leap_day_of_a_century_not_divisible_by_400() {
        // 2100-02-28 is followed by 2100-03-01.
        assert_eq!(amz_date(4_107_456_000).unwrap(), "21000228T000000Z");
        assert_eq!(
            amz_date(4_107_456_000 + 86_400).unwrap(),
            "21000301T000000Z"
        );
    }

    #[test]
    fn amz_date_crosses_a_year_boundary() {
        assert_eq!(amz_date(1_704_067_199).unwrap(), "20231231T235959Z");
        assert_eq!(amz_date(1_704_067_200).unwrap(), "20240101T000000Z");
    }

    #[test]
    fn amz_date_formats_the_last_four_digit_second_and_refuses_the_next() {
        assert_eq!(
            amz_date(LATEST_SIGNABLE_UNIX_SECONDS).unwrap(),
            "99991231T235959Z"
        );
        assert_eq!(
            amz_date(LATEST_SIGNABLE_UNIX_SECONDS + 1),
            Err(SigningError::TimeOutOfRange(
                LATEST_SIGNABLE_UNIX_SECONDS + 1
            ))
        );
        assert_eq!(
            amz_date(u64::MAX),
            Err(SigningError::TimeOutOfRange(u64::MAX))
        );
    }

    #[test]
    fn civil_from_days_agrees_with_counting_every_day_to_year_9999() {
        let is_leap = |year: u64| {
            (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
        };
        let month_length = |year: u64, month: u64| match month {
            2 if is_leap(year) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let (mut year, mut month, mut day) = (1970, 1, 1);
        let last_day = LATEST_SIGNABLE_UNIX_SECONDS / 86_400;
        for days in 0..=last_day {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            day += 1;
            if day > month_length(year, month) {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
        assert_eq!((year, month, day), (10_000, 1, 1));
    }

    #[test]
    fn percent_decode_keeps_a_percent_without_two_hex_digits() {
        assert_eq!(percent_decode("a%2Fb%2fc"), b"a/b/c");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
        assert_eq!(percent_decode("%E1%88%B4"), "\u{1234}".as_bytes());
    }

    fn canonical_uri(path: &str, settings: SigningSettings) -> Result<String, SigningError> {
        let mut out = String::new();
        push_canonical_uri(&mut out, path, &settings).map(|()| out)
    }

    #[test]
    fn canonical_uri_encodes_a_bedrock_model_path_again() {
        assert_eq!(
            canonical_uri(
                "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream",
                SigningSettings::default()
            )
            .unwrap(),
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse-stream"
        );
    }

    #[test]
    fn canonical_uri_as_sent_keeps_the_path() {
        let s3 = SigningSettings {
            path_encoding: PathEncoding::AsSent,
            normalize_path: false,
            ..SigningSettings::default()
        };
        assert_eq!(
            canonical_uri("/bucket/my-object//example//photo.user%3A", s3).unwrap(),
            "/bucket/my-object//example//photo.user%3A"
        );
    }

    #[test]
    fn canonical_uri_of_an_empty_path_is_a_slash() {
        assert_eq!(canonical_uri("", SigningSettings::default()).unwrap(), "/");
    }

    #[test]
    fn canonical_uri_keeps_the_root_for_a_path_climbing_above_it() {
        assert_eq!(
            canonical_uri("/../../a/", SigningSettings::default()).unwrap(),
            "/a/"
        );
    }

    #[test]
    fn canonical_uri_refuses_a_relative_path_or_one_with_a_query() {
        for path in ["model/x", "/model?x=1", "/model#x"] {
            assert_eq!(
                canonical_uri(path, SigningSettings::default()),
                Err(SigningError::InvalidPath),
                "{path}"
            );
        }
    }

    fn canonical_query(query: &str) -> String {
        let mut out = String::new();
        push_canonical_query(&mut out, query);
        out
    }

    #[test]
    fn canonical_query_encodes_reserved_bytes_and_sorts() {
        assert_eq!(
            canonical_query("b=2&a=x y&a=%7e&c&&plus=1+1&slash=a/b"),
            "a=x%20y&a=~&b=2&c=&plus=1%2B1&slash=a%2Fb"
        );
    }

    #[test]
    fn canonical_header_value_trims_and_collapses_spaces_and_tabs() {
        let mut out = String::new();
        push_canonical_header_value(&mut out, " \t a \t  b\tc  ");
        assert_eq!(out, "a b c");
    }

    fn credentials(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_string),
        }
    }

    fn request<'a>(headers: &'a [(&'a str, &'a str)]) -> SignableRequest<'a> {
        SignableRequest {
            method: "GET",
            host: "example.amazonaws.com",
            path: "/",
            query: "",
            headers,
            body: b"",
        }
    }

    fn params(credentials: &Credentials) -> SigningParams<'_> {
        SigningParams {
            credentials,
            region: "us-east-1",
            service: "service",
            unix_seconds: 1_440_938_160,
            settings: SigningSettings::default(),
        }
    }

    #[test]
    fn sign_refuses_headers_the_signer_writes() {
        let credentials = credentials(None);
        for name in [
            "Host",
            "authorization",
            "X-Amz-Date",
            "x-amz-security-token",
            "X-Amz-Content-Sha256",
        ] {
            let headers = [(name, "x")];
            assert_eq!(
                sign(&request(&headers), &params(&credentials)),
                Err(SigningError::ReservedHeader(name.to_ascii_lowercase())),
                "{name}"
            );
        }
    }

    #[test]
    fn sign_refuses_a_pseudo_header_and_a_line_break_in_a_value() {
        let credentials = credentials(None);
        let pseudo = [(":path", "/")];
        assert_eq!(
            sign(&request(&pseudo), &params(&credentials)),
            Err(SigningError::InvalidHeaderName(":path".into()))
        );
        let injected = [("X-Custom", "a\r\nx-amz-date: 1")];
        assert_eq!(
            sign(&request(&injected), &params(&credentials)),
            Err(SigningError::InvalidHeaderValue("x-custom".into()))
        );
    }

    #[test]
    fn sign_refuses_bad_scopes_and_credentials() {
        let good = credentials(None);
        let cases = [
            (
                SigningParams {
                    region: "US-EAST-1",
                    ..params(&good)
                },
                SigningError::InvalidRegion("US-EAST-1".into()),
            ),
            (
                SigningParams {
                    region: "",
                    ..params(&good)
                },
                SigningError::InvalidRegion(String::new()),
            ),
            (
                SigningParams {
                    service: "bed/rock",
                    ..params(&good)
                },
                SigningError::InvalidService("bed/rock".into()),
            ),
        ];
        for (params, error) in cases {
            assert_eq!(sign(&request(&[]), &params), Err(error));
        }
        let slash_key = Credentials {
            access_key_id: "AKID/EXAMPLE".into(),
            ..credentials(None)
        };
        assert_eq!(
            sign(&request(&[]), &params(&slash_key)),
            Err(SigningError::InvalidAccessKeyId)
        );
        let broken_token = credentials(Some("abc\ndef"));
        assert_eq!(
            sign(&request(&[]), &params(&broken_token)),
            Err(SigningError::InvalidSessionToken)
        );
    }

    #[test]
    fn sign_refuses_a_bad_method_and_host() {
        let credentials = credentials(None);
        let bad_method = SignableRequest {
            method: "GE T",
            ..request(&[])
        };
        assert_eq!(
            sign(&bad_method, &params(&credentials)),
            Err(SigningError::InvalidMethod)
        );
        let bad_host = SignableRequest {
            host: "example.com\r\nx: y",
            ..request(&[])
        };
        assert_eq!(
            sign(&bad_host, &params(&credentials)),
            Err(SigningError::InvalidHost)
        );
    }

    #[test]
    fn content_sha256_header_is_sent_and_signed_when_asked_for() {
        let credentials = credentials(None);
        let params = SigningParams {
            settings: SigningSettings {
                content_sha256_header: true,
                ..SigningSettings::default()
            },
            ..params(&credentials)
        };
        let steps = sign_with_steps(&request(&[]), &params).unwrap();
        let empty_hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(steps.headers.content_sha256.as_deref(), Some(empty_hash));
        assert!(steps
            .canonical_request
            .contains(&format!("\nx-amz-content-sha256:{empty_hash}\n")));
        assert!(steps
            .headers
            .authorization
            .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date,"));
        assert_eq!(
            steps
                .headers
                .iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>(),
            ["authorization", "x-amz-date", "x-amz-content-sha256"]
        );
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let token = "SESSIONTOKENVALUE";
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let credentials = credentials(Some(token));
        let steps = sign_with_steps(&request(&[]), &params(&credentials)).unwrap();
        let signature = steps
            .headers
            .authorization
            .rsplit("Signature=")
            .next()
            .unwrap()
            .to_string();
        for shown in [
            format!("{credentials:?}"),
            format!("{steps:?}"),
            format!("{:?}", steps.headers),
            format!("{:?}", params(&credentials)),
        ] {
            assert!(!shown.contains(token), "{shown}");
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains(&signature), "{shown}");
        }
        assert!(format!("{credentials:?}").contains("AKIDEXAMPLE"));
        let body_request = SignableRequest {
            body: b"secret prompt",
            headers: &[("x-api-key", "hidden-value")],
            ..request(&[])
        };
        let shown = format!("{body_request:?}");
        assert!(!shown.contains("secret prompt") && !shown.contains("hidden-value"));
        assert!(shown.contains("x-api-key"));
    }
}
