//! Golden cases for `POST /v1/embeddings`: `fixtures/embeddings/<provider>_<case>/`, one
//! `#[test]` each.
//!
//! Every case runs through the public API (snapshot → `State` →
//! `plan_embeddings_request_for` → `ResponseHandler`) with a fixed clock. Files of a case:
//!
//! - `request.json`: the client's OpenAI request (required; its `model` picks the
//!   deployment, see [`state`]);
//! - when the gateway refuses the request itself: `expected_status` and
//!   `expected_response.json`, nothing else;
//! - otherwise `upstream_path` (the `:path` sent), `upstream_request.json` (the body sent,
//!   compared as JSON), the provider's answer `response.json` (any bytes) with its HTTP
//!   status in `status` (default 200), and what the client gets: `expected_response.json`,
//!   compared **byte for byte** (base64 vectors, digits of float vectors), with
//!   `expected_status` when the gateway replaces the provider's status;
//! - `usage.json`: the usage recorded, the cost the deployment's prices give it, and the
//!   tokens the rate limits estimated before the provider counted.
//!
//! `UPDATE_GOLDEN=1 cargo test -p tollgate-core --test golden_embeddings` rewrites the
//! expected files from the current output; the committed files were checked by hand against
//! the providers' references (base64 vectors against Python's `struct.pack('<f', …)`), so
//! review any diff it makes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use prost::Message;
use serde_json::{json, Value};
use tollgate_core::auth::Caller;
use tollgate_core::providers::embeddings::plan_embeddings_request_for;
use tollgate_core::providers::{ResponseMode, TranslateContext};
use tollgate_core::{proto, State};

const CONTEXT: TranslateContext = TranslateContext {
    now_unix: 1_700_000_000,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/embeddings")
}

/// Input tokens at $0.02 per million (text-embedding-3-small's price); output not priced.
fn pricing() -> Option<proto::Pricing> {
    Some(proto::Pricing {
        input_cost_per_token: Some(2e-8),
        ..Default::default()
    })
}

fn deployment(
    model_name: &str,
    kind: proto::ProviderKind,
    provider_name: &str,
    upstream_model: &str,
    api_base: &str,
    api_key: &str,
) -> proto::Deployment {
    proto::Deployment {
        id: format!("id-{model_name}"),
        model_name: model_name.into(),
        provider: kind as i32,
        provider_name: provider_name.into(),
        upstream_model: upstream_model.into(),
        api_base: api_base.into(),
        api_key: api_key.into(),
        pricing: pricing(),
        ..Default::default()
    }
}

/// One embedding deployment per provider, and one chat model that cannot embed.
fn state() -> State {
    use proto::ProviderKind as Kind;
    let azure = proto::Deployment {
        provider_settings: Some(proto::deployment::ProviderSettings::Azure(
            proto::AzureSettings {
                api_version: "2024-10-21".into(),
            },
        )),
        ..deployment(
            "azure-emb",
            Kind::Openai,
            "azure",
            "my-embedding",
            "https://r.openai.azure.com",
            "azure-key",
        )
    };
    let bedrock = proto::Deployment {
        provider_settings: Some(proto::deployment::ProviderSettings::Bedrock(
            proto::BedrockSettings {
                region: "us-east-1".into(),
                credentials: Some(proto::AwsCredentials {
                    access_key_id: "AKIDEXAMPLE".into(),
                    secret_access_key: "secret".into(),
                    session_token: String::new(),
                }),
            },
        )),
        ..deployment(
            "titan-emb",
            Kind::Bedrock,
            "bedrock",
            "amazon.titan-embed-text-v2:0",
            "https://bedrock-runtime.us-east-1.amazonaws.com",
            "",
        )
    };
    let bedrock_cohere = proto::Deployment {
        upstream_model: "cohere.embed-english-v3".into(),
        ..deployment_named(&bedrock, "bedrock-cohere-emb")
    };
    let bedrock_chat = proto::Deployment {
        upstream_model: "anthropic.claude-3-5-sonnet-20240620-v1:0".into(),
        ..deployment_named(&bedrock, "bedrock-chat")
    };
    let vertex = proto::Deployment {
        provider_settings: Some(proto::deployment::ProviderSettings::Vertex(
            proto::VertexSettings {
                project: "tollgate-test".into(),
                location: "us-central1".into(),
            },
        )),
        ..deployment(
            "vertex-emb",
            Kind::Gemini,
            "vertex_ai",
            "text-embedding-005",
            "https://us-central1-aiplatform.googleapis.com",
            "",
        )
    };
    let snapshot = proto::Snapshot {
        keys: Vec::new(),
        version: 1,
        settings: None,
        deployments: vec![
            deployment(
                "openai-emb",
                Kind::Openai,
                "openai",
                "text-embedding-3-small",
                "https://api.openai.com/v1",
                "sk-test",
            ),
            azure,
            deployment(
                "gemini-emb",
                Kind::Gemini,
                "gemini",
                "gemini-embedding-001",
                "https://generativelanguage.googleapis.com",
                "AIza-test-key",
            ),
            deployment(
                "cohere-emb",
                Kind::Cohere,
                "cohere",
                "embed-v4.0",
                "https://api.cohere.com",
                "co-test-key",
            ),
            deployment(
                "ollama-emb",
                Kind::Ollama,
                "ollama",
                "nomic-embed-text",
                "http://127.0.0.1:11434",
                "",
            ),
            deployment(
                "claude",
                Kind::Anthropic,
                "anthropic",
                "claude-sonnet-4-5",
                "https://api.anthropic.com",
                "sk-ant",
            ),
            bedrock,
            bedrock_cohere,
            bedrock_chat,
            vertex,
        ],
    };
    let message = |kind| proto::ControlMessage { kind: Some(kind) }.encode_to_vec();
    let mut current = None;
    let applied = State::update(
        &mut current,
        &message(proto::control_message::Kind::Snapshot(snapshot)),
    )
    .unwrap()
    .unwrap();
    assert!(applied.problems.is_empty(), "{:?}", applied.problems);
    // The Vertex deployment's access token, valid an hour past the cases' clock.
    let tokens = proto::ProviderTokens {
        tokens: vec![proto::ProviderToken {
            deployment_id: "id-vertex-emb".into(),
            access_token: "ya29.embeddings-test".into(),
            expires_unix_ms: (CONTEXT.now_unix + 3600) * 1000,
        }],
    };
    State::update(
        &mut current,
        &message(proto::control_message::Kind::ProviderTokens(tokens)),
    )
    .unwrap();
    State::clone(&current.unwrap())
}

/// `base` under another model name (and id).
fn deployment_named(base: &proto::Deployment, model_name: &str) -> proto::Deployment {
    proto::Deployment {
        id: format!("id-{model_name}"),
        model_name: model_name.into(),
        ..base.clone()
    }
}

fn update() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|value| value == "1")
}

fn read(case: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(case.join(name)).ok()
}

fn read_status(case: &Path, name: &str) -> Option<u16> {
    read(case, name).map(|bytes| String::from_utf8_lossy(&bytes).trim().parse().unwrap())
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(bytes)))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

/// Compares `actual` with the case's file byte for byte (but for a final newline), or
/// rewrites it under UPDATE_GOLDEN=1.
fn golden_bytes(case: &Path, name: &str, actual: &[u8]) {
    let path = case.join(name);
    if update() {
        let mut bytes = actual.to_vec();
        bytes.push(b'\n');
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let expected =
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let expected = expected.strip_suffix(b"\n").unwrap_or(&expected);
    assert!(
        actual == expected,
        "{}:\n--- got ---\n{}\n--- expected ---\n{}",
        path.display(),
        String::from_utf8_lossy(actual),
        String::from_utf8_lossy(expected)
    );
}

/// Compares `actual` with the case's JSON file, or rewrites it under UPDATE_GOLDEN=1.
fn golden_json(case: &Path, name: &str, actual: &Value) {
    let path = case.join(name);
    if update() {
        std::fs::write(&path, pretty(actual) + "\n").unwrap();
        return;
    }
    let expected =
        json(&std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display())));
    assert!(
        actual == &expected,
        "{}:\n--- got ---\n{}\n--- expected ---\n{}",
        path.display(),
        pretty(actual),
        pretty(&expected)
    );
}

fn run_case(name: &str) {
    let case = fixtures().join(name);
    let request = read(&case, "request.json").expect("request.json");
    let state = state();
    let planned = plan_embeddings_request_for(&state, &Caller::default(), &request, &CONTEXT);
    let (mut plan, estimated_tokens) = match planned {
        Ok(planned) => planned,
        Err(error) => {
            assert!(
                read(&case, "response.json").is_none(),
                "the gateway refused the request: {error:?}"
            );
            assert_eq!(
                Some(error.status()),
                read_status(&case, "expected_status"),
                "{error:?}"
            );
            golden_json(&case, "expected_response.json", &json(&error.to_json()));
            return;
        }
    };
    assert!(!plan.stream);
    golden_bytes(&case, "upstream_path", plan.path.as_bytes());
    if case.join("upstream_headers.json").exists() {
        // The auth a provider takes (Vertex's bearer token, Bedrock's SigV4 headers).
        let headers: serde_json::Map<String, Value> = plan
            .headers
            .iter()
            .map(|(name, value)| ((*name).to_string(), Value::String(value.clone())))
            .collect();
        golden_json(&case, "upstream_headers.json", &Value::Object(headers));
    }
    golden_json(&case, "upstream_request.json", &json(&plan.body));

    let answer = read(&case, "response.json").expect("response.json");
    let status = read_status(&case, "status").unwrap_or(200);
    // Even an event-stream content type is buffered: the client never asked for a stream.
    assert_eq!(
        plan.response.on_headers(status, Some("application/json")),
        ResponseMode::Buffer
    );
    assert_eq!(
        plan.response.on_headers(status, Some("text/event-stream")),
        ResponseMode::Buffer
    );
    let completed = plan.response.on_complete_body(&answer);
    let client_body = completed.body.clone().unwrap_or_else(|| answer.clone());
    if (200..300).contains(&status) && completed.status.is_none() {
        // Forwarded untouched exactly when the provider speaks OpenAI's format.
        assert_eq!(
            completed.body.is_none(),
            !plan.response.drops_content_length()
        );
    }
    assert_eq!(completed.status, read_status(&case, "expected_status"));
    golden_bytes(&case, "expected_response.json", &client_body);
    if update() {
        // The client's body is JSON whatever the provider answered.
        json(&client_body);
    }
    let usage = plan.response.usage();
    golden_json(
        &case,
        "usage.json",
        &json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens(),
            // As the cost header writes it: JSON numbers would not compare exactly.
            "cost": plan.cost().map(tollgate_core::pricing::cost_header_value),
            "estimated_tokens": estimated_tokens,
        }),
    );
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_case(stringify!($name));
            }
        )*

        /// Every fixture directory has its test.
        #[test]
        fn every_case_has_a_test() {
            let named = [$(stringify!($name)),*];
            let mut missing = Vec::new();
            for entry in std::fs::read_dir(fixtures()).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if !named.contains(&name.as_str()) {
                    missing.push(name);
                }
            }
            assert!(missing.is_empty(), "fixtures without a test: {missing:?}");
        }
    };
}

cases!(
    openai_float,
    openai_base64_passthrough,
    openai_token_arrays,
    openai_error_401,
    azure_float,
    gemini_float,
    gemini_base64,
    gemini_dimensions,
    gemini_tokens_refused,
    gemini_error_400_key_invalid,
    cohere_float,
    cohere_base64,
    cohere_input_type,
    cohere_error_400,
    ollama_float,
    vertex_float,
    vertex_dimensions_base64,
    vertex_error_401,
    bedrock_titan_float,
    bedrock_titan_many_refused,
    bedrock_cohere_float,
    bedrock_chat_model_refused,
    ollama_base64,
    ollama_error_404,
    ollama_bad_upstream_body,
    anthropic_refused,
    request_empty_string,
    request_empty_array,
    request_bad_encoding_format,
    request_bad_dimensions,
    request_unknown_model,
);
