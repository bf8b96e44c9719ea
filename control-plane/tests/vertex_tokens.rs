//! Vertex AI access tokens: the control plane exchanges a service account's signed JWT at
//! its `token_uri` (here a token endpoint on 127.0.0.1 that verifies the signature), pushes
//! the token to every filter stream after the snapshot, refreshes it before it expires,
//! retries an endpoint that fails, and mints tokens for deployments added through the
//! management API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use tollgate::google_auth::ServiceAccount;
use tollgate::proto::ProviderTokens;

use common::{on_both, FakeFilter, Plane};

const SERVICE_ACCOUNT: &str = include_str!("../../tests/data/vertex/service-account.json");
const WAIT: Duration = Duration::from_secs(15);

/// A token endpoint: checks the JWT's signature and audience, issues `tok-<n>`.
struct TokenEndpoint {
    public_key: Vec<u8>,
    audience: String,
    issued: AtomicU64,
    failing: AtomicBool,
    lifetime_secs: u64,
}

async fn exchange(
    Extract(endpoint): Extract<Arc<TokenEndpoint>>,
    form: String,
) -> (StatusCode, Json<Value>) {
    if endpoint.failing.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "temporarily_unavailable"})),
        );
    }
    let assertion = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("assertion="))
        .unwrap_or_default();
    let grant_ok =
        form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer");
    let (signed, signature) = assertion.rsplit_once('.').unwrap_or_default();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let verified = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &endpoint.public_key,
    )
    .verify(
        signed.as_bytes(),
        &engine.decode(signature).unwrap_or_default(),
    )
    .is_ok();
    let claims: Value = signed
        .split('.')
        .nth(1)
        .and_then(|part| engine.decode(part).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    if !grant_ok || !verified || claims["aud"] != endpoint.audience.as_str() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})),
        );
    }
    let n = endpoint.issued.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::OK,
        Json(
            json!({"access_token": format!("tok-{n}"), "expires_in": endpoint.lifetime_secs,
            "token_type": "Bearer"}),
        ),
    )
}

/// Serves a token endpoint and returns it with the service account pointing at it.
async fn token_endpoint(lifetime_secs: u64) -> (Arc<TokenEndpoint>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_uri = format!("http://{}/token", listener.local_addr().unwrap());
    let mut account: Value = serde_json::from_str(SERVICE_ACCOUNT).unwrap();
    account["token_uri"] = token_uri.clone().into();
    let account = account.to_string();
    let endpoint = Arc::new(TokenEndpoint {
        public_key: ServiceAccount::parse(&account).unwrap().public_key_der(),
        audience: token_uri,
        issued: AtomicU64::new(0),
        failing: AtomicBool::new(false),
        lifetime_secs,
    });
    let app = axum::Router::new()
        .route("/token", post(exchange))
        .with_state(endpoint.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint, account)
}

fn config(account: &str) -> String {
    format!(
        "general_settings:\n  master_key: {}\nmodel_list:\n  - model_name: gemini\n    litellm_params:\n      model: vertex_ai/gemini-2.5-flash\n      vertex_project: p-1\n      vertex_credentials: {}\n  - model_name: claude\n    litellm_params:\n      model: vertex_ai/claude-sonnet-4@20250514\n      vertex_project: p-1\n      vertex_location: us-east5\n      vertex_credentials: {}\n",
        common::MASTER,
        serde_json::to_string(account).unwrap(),
        serde_json::to_string(account).unwrap(),
    )
}

/// (deployment id, token) of each token, sorted.
fn tokens_of(tokens: &ProviderTokens) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = tokens
        .tokens
        .iter()
        .map(|token| (token.deployment_id.clone(), token.access_token.clone()))
        .collect();
    pairs.sort();
    pairs
}

async fn tokens_where(
    filter: &mut FakeFilter,
    wanted: impl Fn(&ProviderTokens) -> bool,
) -> ProviderTokens {
    tokio::time::timeout(WAIT, async {
        loop {
            let tokens = filter.next_provider_tokens().await;
            if wanted(&tokens) {
                return tokens;
            }
        }
    })
    .await
    .expect("no such provider tokens in time")
}

async fn tokens_are_minted_pushed_and_refreshed(db: common::Db) {
    let (endpoint, account) = token_endpoint(4).await;
    let plane = Plane::start(db.url(), &config(&account)).await;
    let snapshot = plane.hub.current();
    let ids: Vec<String> = snapshot.deployments.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids.len(), 2);
    // The snapshot carries the settings, never a token or the key.
    let vertex = format!("{:?}", snapshot.deployments[1].provider_settings);
    assert_eq!(
        vertex,
        r#"Some(Vertex(VertexSettings { project: "p-1", location: "us-east5" }))"#
    );
    assert_eq!(
        snapshot.deployments[1].provider,
        tollgate::proto::ProviderKind::Anthropic as i32
    );
    assert_eq!(
        snapshot.deployments[0].api_base,
        "https://us-central1-aiplatform.googleapis.com"
    );

    // One exchange for the account both deployments share; a stream gets it after the
    // snapshot.
    let mut filter = FakeFilter::connect(plane.grpc).await;
    filter.next_snapshot().await;
    let first = tokens_where(&mut filter, |tokens| !tokens.tokens.is_empty()).await;
    let mut expected: Vec<(String, String)> =
        ids.iter().map(|id| (id.clone(), "tok-1".into())).collect();
    expected.sort();
    assert_eq!(tokens_of(&first), expected);
    let now = tollgate::store::now_unix_ms();
    let expires = first.tokens[0].expires_unix_ms;
    assert!(
        expires > now && expires <= now + 4_000,
        "{expires} is not 4 s after {now}"
    );
    assert_eq!(endpoint.issued.load(Ordering::SeqCst), 1);

    // Halfway through its 4 s the token is refreshed and pushed again.
    let second = tokens_where(&mut filter, |tokens| {
        tokens.tokens.iter().all(|t| t.access_token == "tok-2")
    })
    .await;
    assert_eq!(second.tokens.len(), 2);
    assert_eq!(endpoint.issued.load(Ordering::SeqCst), 2);

    // A failing endpoint is retried; the token held is kept while it is valid, then
    // dropped, and a working endpoint gets a new one pushed.
    endpoint.failing.store(true, Ordering::SeqCst);
    let emptied = tokens_where(&mut filter, |tokens| tokens.tokens.is_empty()).await;
    assert!(emptied.tokens.is_empty());
    endpoint.failing.store(false, Ordering::SeqCst);
    let third = tokens_where(&mut filter, |tokens| !tokens.tokens.is_empty()).await;
    assert_eq!(third.tokens[0].access_token, "tok-3");

    // A new stream gets the tokens held, right after its snapshot.
    let mut late = FakeFilter::connect(plane.grpc).await;
    late.next_snapshot().await;
    let held = late.next_provider_tokens().await;
    assert!(held
        .tokens
        .iter()
        .all(|t| t.access_token.starts_with("tok-")));
    assert_eq!(held.tokens.len(), 2);

    // A deployment added through the management API gets a token too.
    plane
        .ok(
            "/model/new",
            json!({"model_name": "added", "litellm_params": {
                "model": "vertex_ai/gemini-2.5-pro", "vertex_project": "p-2",
                "vertex_credentials": account}}),
        )
        .await;
    let with_added = tokens_where(&mut filter, |tokens| tokens.tokens.len() == 3).await;
    assert_eq!(tokens_of(&with_added).len(), 3);
    plane.stop().await;
}

on_both!(
    tokens_are_minted_pushed_and_refreshed,
    vertex_tokens_sqlite,
    vertex_tokens_postgres
);
