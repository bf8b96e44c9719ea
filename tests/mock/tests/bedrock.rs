//! Bedrock Converse emulation, over HTTP: SigV4 is verified, bodies are validated as
//! Converse validates them, answers and event streams are Bedrock's.
// Helpers outside #[test] fns may unwrap too: a failing test should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;
use tollgate_core::aws::eventstream::{Decoder, MessageType};
use tollgate_core::aws::sigv4;
use tollgate_mock::{AwsCredentials, MockConfig};

const KEY_ID: &str = "AKIDMOCKBEDROCK";
const SECRET: &str = "mock/secret+key";
const TEMP_KEY_ID: &str = "ASIAMOCKTEMP";
const TEMP_SECRET: &str = "temp-secret";
const TOKEN: &str = "session-token-value";
const MODEL_PATH: &str = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0";

async fn bedrock_start() -> String {
    start(MockConfig {
        aws_credentials: vec![
            AwsCredentials {
                access_key_id: KEY_ID.into(),
                secret_access_key: SECRET.into(),
                session_token: None,
            },
            AwsCredentials {
                access_key_id: TEMP_KEY_ID.into(),
                secret_access_key: TEMP_SECRET.into(),
                session_token: Some(TOKEN.into()),
            },
        ],
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

/// How a test request is signed.
struct Signer<'a> {
    key_id: &'a str,
    secret: &'a str,
    token: Option<&'a str>,
    time: u64,
}

impl Default for Signer<'_> {
    fn default() -> Self {
        Signer {
            key_id: KEY_ID,
            secret: SECRET,
            token: None,
            time: now(),
        }
    }
}

/// POSTs `body` to `path`, signed by `signer` (the body sent is `sent`, which a test may make
/// differ from the one signed).
async fn post_signed(
    base: &str,
    path: &str,
    signed: &[u8],
    sent: &[u8],
    signer: &Signer<'_>,
) -> reqwest::Response {
    let host = base.strip_prefix("http://").unwrap();
    let credentials = sigv4::Credentials {
        access_key_id: signer.key_id.into(),
        secret_access_key: signer.secret.into(),
        session_token: signer.token.map(str::to_string),
    };
    let headers = [("content-type", "application/json")];
    let request = sigv4::SignableRequest {
        method: "POST",
        host,
        path,
        query: "",
        headers: &headers,
        body: signed,
    };
    let params = sigv4::SigningParams {
        credentials: &credentials,
        region: "us-east-1",
        service: "bedrock",
        unix_seconds: signer.time,
        settings: sigv4::SigningSettings::default(),
    };
    let mut builder = client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json");
    for (name, value) in sigv4::sign(&request, &params).unwrap().iter() {
        builder = builder.header(name, value);
    }
    builder.body(sent.to_vec()).send().await.unwrap()
}

async fn post(base: &str, path: &str, body: &Value) -> reqwest::Response {
    let bytes = serde_json::to_vec(body).unwrap();
    post_signed(base, path, &bytes, &bytes, &Signer::default()).await
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": [{"text": text}]})
}

async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("x-amzn-errortype")
        .map(|value| {
            value
                .to_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_string()
        })
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap();
    (status, kind, body["message"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_signed_request_gets_the_echo_and_exact_usage() {
    let base = bedrock_start().await;
    let body = json!({"system": [{"text": "Be brief."}], "messages": [user("hello there")],
        "inferenceConfig": {"maxTokens": 20, "temperature": 0.5}});
    let response = post(&base, &format!("{MODEL_PATH}/converse"), &body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-amzn-requestid"));
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["output"]["message"]["content"],
        json!([{"text": "echo: hello there"}])
    );
    assert_eq!(answer["stopReason"], "end_turn");
    assert_eq!(
        answer["usage"],
        json!({"inputTokens": 4, "outputTokens": 3, "totalTokens": 7})
    );
}

#[tokio::test]
async fn temporary_credentials_need_their_token() {
    let base = bedrock_start().await;
    let body = serde_json::to_vec(&json!({"messages": [user("hi")]})).unwrap();
    let path = format!("{MODEL_PATH}/converse");
    let with_token = Signer {
        key_id: TEMP_KEY_ID,
        secret: TEMP_SECRET,
        token: Some(TOKEN),
        ..Signer::default()
    };
    assert_eq!(
        post_signed(&base, &path, &body, &body, &with_token)
            .await
            .status(),
        200
    );
    let without = Signer {
        token: None,
        ..with_token
    };
    let (status, kind, _) = error_of(post_signed(&base, &path, &body, &body, &without).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (403, "UnrecognizedClientException")
    );
}

#[tokio::test]
async fn bad_signatures_are_refused_as_aws_refuses_them() {
    let base = bedrock_start().await;
    let body = serde_json::to_vec(&json!({"messages": [user("hi")]})).unwrap();
    let path = format!("{MODEL_PATH}/converse");

    let wrong_secret = Signer {
        secret: "not-the-secret",
        ..Signer::default()
    };
    let (status, kind, message) =
        error_of(post_signed(&base, &path, &body, &body, &wrong_secret).await).await;
    assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));
    assert!(
        message.starts_with(
            "The request signature we calculated does not match the signature you provided."
        ),
        "{message}"
    );
    assert!(
        message.contains("/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse"),
        "{message}"
    );

    let unknown = Signer {
        key_id: "AKIDUNKNOWN",
        ..Signer::default()
    };
    let (status, kind, message) =
        error_of(post_signed(&base, &path, &body, &body, &unknown).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (403, "UnrecognizedClientException")
    );
    assert_eq!(
        message,
        "The security token included in the request is invalid."
    );

    let stale = Signer {
        time: now() - 301,
        ..Signer::default()
    };
    let (status, kind, message) =
        error_of(post_signed(&base, &path, &body, &body, &stale).await).await;
    assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));
    assert!(message.starts_with("Signature expired: "), "{message}");
    let recent = Signer {
        time: now() - 200,
        ..Signer::default()
    };
    assert_eq!(
        post_signed(&base, &path, &body, &body, &recent)
            .await
            .status(),
        200
    );

    // A body changed after signing.
    let other = serde_json::to_vec(&json!({"messages": [user("hi!")]})).unwrap();
    let (status, kind, _) =
        error_of(post_signed(&base, &path, &body, &other, &Signer::default()).await).await;
    assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));

    // A model id encoded once in the canonical URI (the S3 rule) is not Bedrock's.
    let host = base.strip_prefix("http://").unwrap();
    let credentials = sigv4::Credentials {
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
        session_token: None,
    };
    let headers = [("content-type", "application/json")];
    let signed = sigv4::sign(
        &sigv4::SignableRequest {
            method: "POST",
            host,
            path: &path,
            query: "",
            headers: &headers,
            body: &body,
        },
        &sigv4::SigningParams {
            credentials: &credentials,
            region: "us-east-1",
            service: "bedrock",
            unix_seconds: now(),
            settings: sigv4::SigningSettings {
                path_encoding: sigv4::PathEncoding::AsSent,
                ..Default::default()
            },
        },
    )
    .unwrap();
    let mut builder = client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json");
    for (name, value) in signed.iter() {
        builder = builder.header(name, value);
    }
    let (status, kind, _) = error_of(builder.body(body.clone()).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));

    // No signature at all.
    let response = client()
        .post(format!("{base}{path}"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(response).await;
    assert_eq!(
        (status, kind.as_str()),
        (403, "MissingAuthenticationTokenException")
    );
}

#[tokio::test]
async fn bodies_are_validated_as_converse_validates_them() {
    let base = bedrock_start().await;
    let path = format!("{MODEL_PATH}/converse");
    let cases = [
        (
            json!({"messages": [user("hi")], "model": "x"}),
            "extraneous key [model]",
        ),
        (json!({}), "messages: required list"),
        (json!({"messages": []}), "The messages field is empty"),
        (
            json!({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}),
            "must start with a user message",
        ),
        (
            json!({"messages": [user("a"), user("b")]}),
            "must alternate between user and assistant",
        ),
        (
            json!({"messages": [{"role": "system", "content": [{"text": "x"}]}]}),
            "messages.0.role",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"text": "  "}]}]}),
            "is blank",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
            "exactly one member",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"image": {"format": "bmp", "source": {"bytes": "QQ=="}}}]}]}),
            "format",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "not base64"}}}]}]}),
            "base64",
        ),
        (
            json!({"messages": [user("hi"), {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "f", "input": {}}}]}]}),
            "toolConfig field must be defined",
        ),
        (
            json!({"messages": [user("hi")], "inferenceConfig": {"max_tokens": 5}}),
            "unknown field 'max_tokens'",
        ),
        (
            json!({"messages": [user("hi")], "inferenceConfig": {"maxTokens": "5"}}),
            "maxTokens",
        ),
        (
            json!({"messages": [user("hi")], "inferenceConfig": {"temperature": 1.5}}),
            "temperature",
        ),
        (
            json!({"messages": [user("hi")], "toolConfig": {"tools": [{"toolSpec": {"name": "f"}}]}}),
            "inputSchema.json",
        ),
        (
            json!({"messages": [user("hi")], "toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {}}}}], "toolChoice": {"tool": {"name": "g"}}}}),
            "not one of the tools",
        ),
        (
            json!({"messages": [user("hi")], "outputConfig": {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {"schema": {"type": "object"}}}}}}),
            "schema: required string",
        ),
        (
            json!({"messages": [user("hi"),
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "t2", "content": [{"text": "x"}]}}]}],
            "toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {}}}}]}}),
            "unexpected toolUseId 't2'",
        ),
    ];
    for (body, expected) in cases {
        let (status, kind, message) = error_of(post(&base, &path, &body).await).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "ValidationException"),
            "{body}"
        );
        assert!(message.contains(expected), "{body}: {message}");
    }
}

#[tokio::test]
async fn tools_get_a_tool_use_and_results_get_the_echo() {
    let base = bedrock_start().await;
    let path = format!("{MODEL_PATH}/converse");
    let tools = json!({"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]});
    let answer: Value = post(
        &base,
        &path,
        &json!({"messages": [user("weather?")], "toolConfig": tools}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(answer["stopReason"], "tool_use");
    assert_eq!(
        answer["output"]["message"]["content"],
        json!([{"text": "Let me check."}, {"toolUse": {"toolUseId": "tooluse_mock_1", "name": "get_weather", "input": {"location": "Paris", "unit": "celsius"}}}])
    );
    let answer: Value = post(&base, &path, &json!({"messages": [user("weather?"),
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_mock_1", "name": "get_weather", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_mock_1", "content": [{"text": "15C"}]}}, {"text": "thanks"}]}],
        "toolConfig": tools}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["output"]["message"]["content"],
        json!([{"text": "echo: 15C thanks"}])
    );
}

/// The frames of an event stream body: (event or exception type, payload).
fn decode_frames(bytes: &[u8]) -> Vec<(String, Value)> {
    let mut decoder = Decoder::new();
    decoder.push(bytes);
    let mut frames = Vec::new();
    while let Some(message) = decoder.next_message().unwrap() {
        let name = match message.message_type() {
            Some(MessageType::Event) => message.event_type().unwrap().to_string(),
            Some(MessageType::Exception) => message.exception_type().unwrap().to_string(),
            other => panic!("{other:?}"),
        };
        frames.push((name, serde_json::from_slice(message.payload()).unwrap()));
    }
    decoder.finish().unwrap();
    frames
}

#[tokio::test]
async fn streams_are_event_stream_frames() {
    let base = bedrock_start().await;
    let path = format!("{MODEL_PATH}/converse-stream");
    let response = post(&base, &path, &json!({"messages": [user("say two words")]})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let frames = decode_frames(&response.bytes().await.unwrap());
    let names: Vec<&str> = frames.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    let text: String = frames
        .iter()
        .filter_map(|(_, payload)| payload["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "echo: say two words");
    assert!(frames.iter().all(|(_, payload)| payload["p"].is_string()));
    assert_eq!(frames[6].1["stopReason"], "end_turn");
    assert_eq!(
        frames[7].1["usage"],
        json!({"inputTokens": 3, "outputTokens": 4, "totalTokens": 7})
    );

    let response = post(
        &base,
        &path,
        &json!({"messages": [user("hi mock:stream_error")]}),
    )
    .await;
    let frames = decode_frames(&response.bytes().await.unwrap());
    let names: Vec<&str> = frames.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "messageStart",
            "contentBlockDelta",
            "modelStreamErrorException"
        ]
    );

    let tools = json!({"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]});
    let response = post(
        &base,
        &path,
        &json!({"messages": [user("weather?")], "toolConfig": tools}),
    )
    .await;
    let frames = decode_frames(&response.bytes().await.unwrap());
    let input: String = frames
        .iter()
        .filter_map(|(_, payload)| payload["delta"]["toolUse"]["input"].as_str())
        .collect();
    assert_eq!(input, r#"{"location":"Paris","unit":"celsius"}"#);
    let start = frames
        .iter()
        .find(|(name, _)| name == "contentBlockStart")
        .unwrap();
    assert_eq!(start.1["start"]["toolUse"]["toolUseId"], "tooluse_mock_1");
}

#[tokio::test]
async fn status_directives_answer_bedrock_errors() {
    let base = bedrock_start().await;
    let path = format!("{MODEL_PATH}/converse");
    for (status, kind) in [
        (400, "ValidationException"),
        (403, "AccessDeniedException"),
        (429, "ThrottlingException"),
        (500, "InternalServerException"),
        (503, "ServiceUnavailableException"),
    ] {
        let body = json!({"messages": [user(&format!("x mock:status={status}"))]});
        let (got, got_kind, _) = error_of(post(&base, &path, &body).await).await;
        assert_eq!((got, got_kind.as_str()), (status, kind));
    }
}
