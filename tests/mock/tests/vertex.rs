//! Vertex AI emulation, over HTTP: the service account token endpoint and the Gemini and
//! Claude publisher endpoints that take its tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};
use support::*;
use tollgate_mock::{MockConfig, VertexAccount};

const SERVICE_ACCOUNT: &str = include_str!("../../data/vertex/service-account.json");
const GEMINI: &str =
    "/v1/projects/tollgate-test/locations/us-central1/publishers/google/models/gemini-2.5-flash";
const CLAUDE: &str = "/v1/projects/tollgate-test/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514";

async fn vertex_start(ttl: Duration) -> String {
    start(MockConfig {
        vertex: Some(VertexAccount::from_key_file(SERVICE_ACCOUNT, ttl).unwrap()),
        ..Default::default()
    })
    .await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT with `claims`, signed with the test service account's key (or `other_key`'s).
fn jwt(claims: &Value, kid: &str) -> String {
    let file: Value = serde_json::from_str(SERVICE_ACCOUNT).unwrap();
    let pem = file["private_key"].as_str().unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let signed = format!(
        "{}.{}",
        engine.encode(header.to_string()),
        engine.encode(claims.to_string())
    );
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signed}.{}", engine.encode(signature))
}

fn claims() -> Value {
    json!({
        "iss": "tollgate-test@tollgate-test.iam.gserviceaccount.com",
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": now(),
        "exp": now() + 3600,
    })
}

const KID: &str = "0123456789abcdef0123456789abcdef01234567";

async fn exchange(base: &str, form: String) -> reqwest::Response {
    client()
        .post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
}

fn grant(assertion: &str) -> String {
    format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
    )
}

async fn token(base: &str) -> String {
    let resp = exchange(base, grant(&jwt(&claims(), KID))).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    answer["access_token"].as_str().unwrap().to_string()
}

async fn post(base: &str, path: &str, token: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_signed_jwt_gets_a_token_and_the_token_counts() {
    let base = vertex_start(Duration::from_secs(3600)).await;
    let resp = exchange(&base, grant(&jwt(&claims(), KID))).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"access_token": "ya29.mock-vertex-token-1", "expires_in": 3600, "token_type": "Bearer"})
    );
    let issued: Value = client()
        .get(format!("{base}/_mock/vertex"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(issued, json!({"tokens_issued": 1}));
}

#[tokio::test]
async fn the_token_endpoint_refuses_what_google_refuses() {
    let base = vertex_start(Duration::from_secs(3600)).await;
    let refused = |claims: Value, kid: &'static str| {
        let base = base.clone();
        async move {
            let resp = exchange(&base, grant(&jwt(&claims, kid))).await;
            assert_eq!(resp.status(), 400);
            let answer: Value = resp.json().await.unwrap();
            (
                answer["error"].as_str().unwrap().to_string(),
                answer["error_description"].as_str().unwrap().to_string(),
            )
        }
    };
    let mut wrong_audience = claims();
    wrong_audience["aud"] = "https://example.com/token".into();
    assert_eq!(
        refused(wrong_audience, KID).await,
        (
            "invalid_grant".into(),
            "Invalid JWT: Failed audience check.".into()
        )
    );
    let mut too_long = claims();
    too_long["exp"] = (now() + 7200).into();
    assert_eq!(refused(too_long, KID).await.0, "invalid_grant");
    let mut other_account = claims();
    other_account["iss"] = "someone@else.iam.gserviceaccount.com".into();
    assert_eq!(refused(other_account, KID).await.0, "invalid_grant");
    assert_eq!(
        refused(claims(), "another-key-id").await,
        ("invalid_grant".into(), "Invalid JWT Signature.".into())
    );
    // A signature that is not the key's.
    let mut assertion = jwt(&claims(), KID);
    assertion.truncate(assertion.len() - 8);
    assertion.push_str("AAAAAAAA");
    let resp = exchange(&base, grant(&assertion)).await;
    assert_eq!(resp.status(), 400);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["error_description"], "Invalid JWT Signature.");
    // Another grant.
    let resp = exchange(&base, "grant_type=client_credentials".into()).await;
    assert_eq!(resp.status(), 400);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn gemini_and_claude_answer_with_a_token_and_refuse_without() {
    let base = vertex_start(Duration::from_secs(3600)).await;
    let token = token(&base).await;
    let gemini_body = json!({"contents": [{"role": "user", "parts": [{"text": "hello vertex"}]}]});
    let resp = post(
        &base,
        &format!("{GEMINI}:generateContent"),
        &token,
        &gemini_body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer["candidates"][0]["content"]["parts"][0]["text"],
        "echo: hello vertex"
    );
    assert_eq!(answer["usageMetadata"]["promptTokenCount"], 2);

    let claude_body = json!({"anthropic_version": "vertex-2023-10-16", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hello claude"}]});
    let resp = post(&base, &format!("{CLAUDE}:rawPredict"), &token, &claude_body).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["content"][0]["text"], "echo: hello claude");
    assert_eq!(answer["model"], "claude-sonnet-4@20250514");

    // Anthropic's own body is refused: the model is in the path, the version in the body.
    let mut with_model = claude_body.clone();
    with_model["model"] = "claude-sonnet-4".into();
    let resp = post(&base, &format!("{CLAUDE}:rawPredict"), &token, &with_model).await;
    assert_eq!(resp.status(), 400);
    let mut no_version = claude_body.clone();
    no_version
        .as_object_mut()
        .unwrap()
        .remove("anthropic_version");
    let resp = post(&base, &format!("{CLAUDE}:rawPredict"), &token, &no_version).await;
    assert_eq!(resp.status(), 400);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer["error"]["message"],
        "anthropic_version: Field required"
    );
    // streamRawPredict takes a streaming body.
    let resp = post(
        &base,
        &format!("{CLAUDE}:streamRawPredict"),
        &token,
        &claude_body,
    )
    .await;
    assert_eq!(resp.status(), 400);

    for bad in ["", "ya29.not-issued"] {
        let resp = post(
            &base,
            &format!("{GEMINI}:generateContent"),
            bad,
            &gemini_body,
        )
        .await;
        assert_eq!(resp.status(), 401, "{bad:?}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["error"]["status"], "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let base = vertex_start(Duration::from_secs(1)).await;
    let token = token(&base).await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let path = format!("{GEMINI}:generateContent");
    assert_eq!(post(&base, &path, &token, &body).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post(&base, &path, &token, &body).await.status(), 401);
}

#[tokio::test]
async fn predict_embeds_each_instance_with_its_token_count() {
    let base = vertex_start(Duration::from_secs(3600)).await;
    let token = token(&base).await;
    let path = "/v1/projects/tollgate-test/locations/us-central1/publishers/google/models/text-embedding-005:predict";
    let resp = post(
        &base,
        path,
        &token,
        &json!({"instances": [{"content": "hello vertex"}, {"content": "x"}],
            "parameters": {"outputDimensionality": 3}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    assert_eq!(
        predictions[0]["embeddings"]["statistics"],
        json!({"truncated": false, "token_count": 2})
    );
    assert_eq!(
        predictions[0]["embeddings"]["values"],
        json!(tollgate_mock::embedding_for_text("hello vertex", 3))
    );
    // What Vertex refuses: an unknown field, a dimension out of range, no token.
    for body in [
        json!({"instances": [{"content": "x"}], "model": "m"}),
        json!({"instances": [{"content": "x"}], "parameters": {"outputDimensionality": 0}}),
        json!({"instances": [{"text": "x"}]}),
    ] {
        assert_eq!(
            post(&base, path, &token, &body).await.status(),
            400,
            "{body}"
        );
    }
    assert_eq!(
        post(&base, path, "ya29.not-issued", &json!({"instances": []}))
            .await
            .status(),
        401
    );
}
