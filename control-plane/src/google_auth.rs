//! Google service accounts to OAuth 2.0 access tokens, for Vertex AI deployments.
//!
//! A deployment's `vertex_credentials` is a service account key file (JSON). The control
//! plane signs a JWT with its private key (RS256) and exchanges it at the key's `token_uri`
//! for an access token (the JWT bearer grant of RFC 7523, as Google's "OAuth 2.0 for Server
//! to Server Applications" describes it), then pushes the token to the filters in
//! `ControlMessage.provider_tokens`. The private key never leaves the control plane; Envoy
//! only ever holds tokens that expire within the hour.
//!
//! [`run_token_refresher`] keeps one token per service account (deployments sharing an
//! account share its token), fetches it when a deployment appears, refreshes it
//! [`REFRESH_MARGIN`] before it expires (halfway through a lifetime shorter than twice the
//! margin), and retries a failed exchange with a backoff, keeping the old token while it
//! is valid.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;

use crate::proto;
use crate::provider_settings::ProviderSettings;
use crate::store::now_unix_ms;
use crate::sync::SyncHub;

/// The scope Vertex AI's API takes.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The JWT bearer grant type (RFC 7523), form-encoded.
const JWT_BEARER_GRANT: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
/// Lifetime of the signed JWT: Google takes at most an hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// How long before a token expires it is refreshed.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// A token endpoint that does not answer within this is tried again later.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two failed exchanges for one account.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);

/// A service account key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceAccountError {
    /// Not JSON.
    #[error("not JSON (at line {line}, column {column})")]
    NotJson {
        /// Where the JSON breaks.
        line: usize,
        /// Where the JSON breaks.
        column: usize,
    },
    /// JSON, but not a service account key.
    #[error("not a service account key (\"type\" is not \"service_account\")")]
    NotServiceAccount,
    /// A field it needs is missing or empty.
    #[error("the service account key has no \"{0}\"")]
    Missing(&'static str),
    /// `private_key` is not a PEM PKCS#8 RSA key ring takes.
    #[error("the service account key's \"private_key\" is not a PEM PKCS#8 RSA private key: {0}")]
    BadPrivateKey(String),
    /// `token_uri` is not https (http only to this machine, for tests and local proxies).
    #[error("the service account key's \"token_uri\" must be an https URL (http only to 127.0.0.1, [::1] or localhost)")]
    BadTokenUri,
}

/// A parsed service account key. `Debug` shows the account, never the key.
pub struct ServiceAccount {
    client_email: String,
    private_key_id: Option<String>,
    token_uri: String,
    key: RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    client_email: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

fn required(value: Option<String>, field: &'static str) -> Result<String, ServiceAccountError> {
    value
        .filter(|value| !value.trim().is_empty())
        .ok_or(ServiceAccountError::Missing(field))
}

impl ServiceAccount {
    /// Parses a service account key file's JSON, private key included.
    pub fn parse(json: &str) -> Result<ServiceAccount, ServiceAccountError> {
        let file: KeyFile =
            serde_json::from_str(json).map_err(|error| ServiceAccountError::NotJson {
                line: error.line(),
                column: error.column(),
            })?;
        if file.kind.as_deref() != Some("service_account") {
            return Err(ServiceAccountError::NotServiceAccount);
        }
        let client_email = required(file.client_email, "client_email")?;
        let pem = required(file.private_key, "private_key")?;
        let token_uri = required(file.token_uri, "token_uri")?;
        if !is_allowed_token_uri(&token_uri) {
            return Err(ServiceAccountError::BadTokenUri);
        }
        let der = pkcs8_der(&pem)?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|error| ServiceAccountError::BadPrivateKey(error.to_string()))?;
        Ok(ServiceAccount {
            client_email,
            private_key_id: file.private_key_id.filter(|id| !id.is_empty()),
            token_uri,
            key,
        })
    }

    /// The account's e-mail (its name; not a secret).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// Where tokens are exchanged.
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// The signed JWT asking `token_uri` for a [`CLOUD_PLATFORM_SCOPE`] token, issued at
    /// `now_unix` (seconds).
    pub fn assertion(&self, now_unix: u64) -> Result<String, TokenError> {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(id) = &self.private_key_id {
            header["kid"] = serde_json::Value::String(id.clone());
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": CLOUD_PLATFORM_SCOPE,
            "aud": self.token_uri,
            "iat": now_unix,
            "exp": now_unix + ASSERTION_LIFETIME_SECS,
        });
        let mut jwt = engine.encode(header.to_string());
        jwt.push('.');
        jwt.push_str(&engine.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                jwt.as_bytes(),
                &mut signature,
            )
            .map_err(|_| TokenError::Signing)?;
        jwt.push('.');
        jwt.push_str(&engine.encode(signature));
        Ok(jwt)
    }

    /// The public half of the key, as PKCS#1 `RSAPublicKey` DER (what verifies the
    /// assertion; for tests and the mock token endpoint).
    pub fn public_key_der(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        self.key.public_key().as_ref().to_vec()
    }
}

/// The base64 body of a PEM `PRIVATE KEY` block.
fn pkcs8_der(pem: &str) -> Result<Vec<u8>, ServiceAccountError> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let bad = |why: &str| ServiceAccountError::BadPrivateKey(why.to_string());
    let start = pem
        .find(BEGIN)
        .ok_or_else(|| bad("no BEGIN PRIVATE KEY line"))?
        + BEGIN.len();
    let rest = pem.get(start..).unwrap_or_default();
    let end = rest
        .find(END)
        .ok_or_else(|| bad("no END PRIVATE KEY line"))?;
    let body: String = rest
        .get(..end)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| bad("its body is not base64"))
}

/// https anywhere; http only to this machine (tests, a local metadata proxy).
fn is_allowed_token_uri(uri: &str) -> bool {
    if uri.starts_with("https://") {
        return uri.len() > "https://".len();
    }
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    matches!(host, "127.0.0.1" | "::1" | "localhost")
}

/// A token exchange that failed. The text never holds the key, the assertion or a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// ring refused to sign (never with a key it parsed).
    #[error("could not sign the JWT")]
    Signing,
    /// The endpoint could not be reached or did not answer in time.
    #[error("the token endpoint could not be reached: {0}")]
    Transport(String),
    /// It answered with an error.
    #[error("the token endpoint answered {status}: {error}")]
    Refused {
        /// Its HTTP status.
        status: u16,
        /// OAuth's `error` and `error_description`, as it gave them.
        error: String,
    },
    /// It answered 200 with something that is not a token response.
    #[error("the token endpoint's answer is not a token response: {0}")]
    BadAnswer(String),
}

/// An access token and when it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The bearer token.
    pub token: String,
    /// Unix milliseconds.
    pub expires_unix_ms: u64,
    /// Its lifetime as the endpoint gave it.
    pub lifetime: Duration,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Exchanges a signed JWT for an access token at the account's `token_uri`.
pub async fn fetch_token(
    client: &reqwest::Client,
    account: &ServiceAccount,
    now_unix_ms: u64,
) -> Result<AccessToken, TokenError> {
    let assertion = account.assertion(now_unix_ms / 1000)?;
    let body = format!("grant_type={JWT_BEARER_GRANT}&assertion={assertion}");
    let response = client
        .post(account.token_uri())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .timeout(TOKEN_REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|error| TokenError::Transport(error.without_url().to_string()))?;
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|error| TokenError::Transport(error.without_url().to_string()))?;
    if status != 200 {
        let error = match serde_json::from_slice::<ErrorAnswer>(&bytes) {
            Ok(answer) if !answer.error_description.is_empty() => {
                format!("{}: {}", answer.error, answer.error_description)
            }
            Ok(answer) if !answer.error.is_empty() => answer.error,
            _ => String::from_utf8_lossy(bytes.get(..200).unwrap_or(&bytes)).into_owned(),
        };
        return Err(TokenError::Refused { status, error });
    }
    let answer: TokenAnswer =
        serde_json::from_slice(&bytes).map_err(|error| TokenError::BadAnswer(error.to_string()))?;
    if answer.access_token.is_empty() || answer.expires_in == 0 {
        return Err(TokenError::BadAnswer(
            "an empty access_token or expires_in".into(),
        ));
    }
    Ok(AccessToken {
        token: answer.access_token,
        expires_unix_ms: now_unix_ms.saturating_add(answer.expires_in.saturating_mul(1000)),
        lifetime: Duration::from_secs(answer.expires_in),
    })
}

/// When a token of `lifetime` fetched at `now_unix_ms` is refreshed.
pub fn refresh_at(now_unix_ms: u64, lifetime: Duration) -> u64 {
    let after = if lifetime >= REFRESH_MARGIN * 2 {
        lifetime - REFRESH_MARGIN
    } else {
        lifetime / 2
    };
    now_unix_ms.saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
}

/// The wait before the next exchange after `failures` failed ones in a row.
fn retry_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(MAX_RETRY_BACKOFF)
}

/// One service account's token and when to fetch the next.
struct Account {
    account: Arc<ServiceAccount>,
    token: Option<AccessToken>,
    next_fetch_ms: u64,
    failures: u32,
}

/// The Vertex AI deployments of the store: deployment id to the sha256 of its service
/// account JSON, and each account parsed once.
async fn vertex_deployments(
    hub: &SyncHub,
) -> Option<(
    BTreeMap<String, String>,
    HashMap<String, Arc<ServiceAccount>>,
)> {
    let stored = match hub.store().deployments().await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(%error, "cannot read the deployments for Vertex AI tokens; retrying");
            return None;
        }
    };
    let mut deployments = BTreeMap::new();
    let mut accounts = HashMap::new();
    for deployment in stored {
        let ProviderSettings::Vertex(vertex) = &deployment.record.provider_settings else {
            continue;
        };
        let fingerprint = crate::store::sha256_hex(&vertex.service_account_json);
        if !accounts.contains_key(&fingerprint) {
            match ServiceAccount::parse(&vertex.service_account_json) {
                Ok(account) => {
                    accounts.insert(fingerprint.clone(), Arc::new(account));
                }
                Err(error) => {
                    // Checked when the deployment was stored: only a key stored by an older
                    // version gets here.
                    tracing::warn!(deployment = %deployment.record.id, %error, "Vertex AI deployment has an unusable service account; it gets no token");
                    continue;
                }
            }
        }
        deployments.insert(deployment.record.id.clone(), fingerprint);
    }
    Some((deployments, accounts))
}

/// The message every stream gets: each Vertex deployment whose account has a token.
fn tokens_message(
    deployments: &BTreeMap<String, String>,
    accounts: &HashMap<String, Account>,
) -> proto::ProviderTokens {
    proto::ProviderTokens {
        tokens: deployments
            .iter()
            .filter_map(|(id, fingerprint)| {
                let token = accounts.get(fingerprint)?.token.as_ref()?;
                Some(proto::ProviderToken {
                    deployment_id: id.clone(),
                    access_token: token.token.clone(),
                    expires_unix_ms: token.expires_unix_ms,
                })
            })
            .collect(),
    }
}

/// Keeps the hub's provider tokens current (see the module's doc) until it shuts down.
pub async fn run_token_refresher(hub: Arc<SyncHub>) {
    let client = reqwest::Client::new();
    let mut versions = hub.subscribe_versions();
    let mut shutdown = hub.shutdown_signal();
    let mut deployments = BTreeMap::new();
    let mut accounts: HashMap<String, Account> = HashMap::new();
    let mut reload = true;
    loop {
        if reload {
            match vertex_deployments(&hub).await {
                Some((now_deployments, parsed)) => {
                    reload = false;
                    // Accounts still used keep their tokens; new ones are fetched now.
                    accounts.retain(|fingerprint, _| parsed.contains_key(fingerprint));
                    for (fingerprint, account) in parsed {
                        accounts.entry(fingerprint).or_insert(Account {
                            account,
                            token: None,
                            next_fetch_ms: 0,
                            failures: 0,
                        });
                    }
                    deployments = now_deployments;
                    hub.publish_tokens(tokens_message(&deployments, &accounts));
                }
                None => {
                    tokio::select! {
                        () = tokio::time::sleep(retry_backoff(2)) => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
            }
        }
        let now = now_unix_ms();
        let mut fetched = false;
        for (fingerprint, entry) in accounts.iter_mut() {
            if entry.next_fetch_ms > now {
                continue;
            }
            fetched = true;
            match fetch_token(&client, &entry.account, now).await {
                Ok(token) => {
                    entry.next_fetch_ms = refresh_at(now, token.lifetime);
                    entry.failures = 0;
                    tracing::info!(
                        account = entry.account.client_email(),
                        expires_unix_ms = token.expires_unix_ms,
                        "Vertex AI access token fetched"
                    );
                    entry.token = Some(token);
                }
                Err(error) => {
                    let wait = retry_backoff(entry.failures);
                    entry.failures = entry.failures.saturating_add(1);
                    entry.next_fetch_ms =
                        now.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
                    // A token past its expiry is no use to anyone: the filter refuses it.
                    if entry
                        .token
                        .as_ref()
                        .is_some_and(|t| t.expires_unix_ms <= now)
                    {
                        entry.token = None;
                    }
                    tracing::warn!(
                        account = entry.account.client_email(),
                        account_key = %fingerprint.get(..12).unwrap_or_default(),
                        %error,
                        retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "cannot get a Vertex AI access token"
                    );
                }
            }
        }
        if fetched {
            hub.publish_tokens(tokens_message(&deployments, &accounts));
        }
        let next = accounts
            .values()
            .map(|entry| entry.next_fetch_ms)
            .min()
            .map(|at| Duration::from_millis(at.saturating_sub(now_unix_ms())));
        tokio::select! {
            () = sleep_or_forever(next) => {}
            changed = versions.changed() => {
                if changed.is_err() {
                    return;
                }
                versions.borrow_and_update();
                reload = true;
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow_and_update() {
                    return;
                }
            }
        }
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The test-only key of `tests/data/vertex` (it opens nothing).
    pub(crate) const TEST_SERVICE_ACCOUNT: &str =
        include_str!("../../tests/data/vertex/service-account.json");

    #[test]
    fn the_assertion_is_an_rs256_jwt_google_takes() {
        let account = ServiceAccount::parse(TEST_SERVICE_ACCOUNT).unwrap();
        let jwt = account.assertion(1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: serde_json::Value =
            serde_json::from_slice(&engine.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "0123456789abcdef0123456789abcdef01234567"})
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({
                "iss": "tollgate-test@tollgate-test.iam.gserviceaccount.com",
                "scope": "https://www.googleapis.com/auth/cloud-platform",
                "aud": "https://oauth2.googleapis.com/token",
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            account.public_key_der(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        let signature = engine.decode(parts[2]).unwrap();
        public.verify(signed.as_bytes(), &signature).unwrap();
        // Another message does not verify with that signature.
        assert!(public.verify(b"other", &signature).is_err());
    }

    #[test]
    fn unusable_keys_are_named_and_never_shown() {
        let mut value: serde_json::Value = serde_json::from_str(TEST_SERVICE_ACCOUNT).unwrap();
        let error =
            |value: &serde_json::Value| ServiceAccount::parse(&value.to_string()).unwrap_err();
        assert_eq!(
            ServiceAccount::parse("{\"type\":").unwrap_err().to_string(),
            "not JSON (at line 1, column 8)"
        );
        value["type"] = "authorized_user".into();
        assert_eq!(error(&value), ServiceAccountError::NotServiceAccount);
        value["type"] = "service_account".into();
        value["token_uri"] = "http://oauth2.example.com/token".into();
        assert_eq!(error(&value), ServiceAccountError::BadTokenUri);
        value["token_uri"] = "http://127.0.0.1:9/token".into();
        let local = ServiceAccount::parse(&value.to_string()).unwrap();
        assert_eq!(local.token_uri(), "http://127.0.0.1:9/token");
        let shown = format!("{local:?}");
        assert!(
            !shown.contains("PRIVATE") && shown.contains("<redacted>"),
            "{shown}"
        );
        value["private_key"] =
            "-----BEGIN PRIVATE KEY-----\nMIIsecret\n-----END PRIVATE KEY-----\n".into();
        let bad_key = error(&value);
        assert!(
            matches!(&bad_key, ServiceAccountError::BadPrivateKey(_)),
            "{bad_key:?}"
        );
        assert!(!bad_key.to_string().contains("MIIsecret"));
        value["client_email"] = "".into();
        assert_eq!(error(&value), ServiceAccountError::Missing("client_email"));
    }

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        // Google's hour: five minutes before its end.
        assert_eq!(
            refresh_at(1_000, Duration::from_secs(3600)),
            1_000 + 3_300_000
        );
        // A lifetime under twice the margin: halfway.
        assert_eq!(refresh_at(1_000, Duration::from_secs(4)), 3_000);
        assert_eq!(retry_backoff(0), Duration::from_secs(1));
        assert_eq!(retry_backoff(3), Duration::from_secs(8));
        assert_eq!(retry_backoff(30), MAX_RETRY_BACKOFF);
    }

    #[test]
    fn token_uris_are_https_or_this_machine() {
        for uri in [
            "https://oauth2.googleapis.com/token",
            "http://127.0.0.1:8080/token",
            "http://localhost/token",
            "http://[::1]:9/token",
        ] {
            assert!(is_allowed_token_uri(uri), "{uri}");
        }
        for uri in [
            "http://10.0.0.1/token",
            "http://127.0.0.1.example.com/token",
            "ftp://x",
            "https://",
            "",
        ] {
            assert!(!is_allowed_token_uri(uri), "{uri}");
        }
    }
}
