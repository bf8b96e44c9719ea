#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Provider keys reach the provider and nothing else: after successful, failing and
//! management requests, no key is in an answer, Envoy's `/config_dump`, a log of the control
//! plane or Envoy, or the database (where it is encrypted with the key `tollgate up` created in
//! its state directory).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::{client, eventually, free_port, psql_output, Gateway, Mock};

const MASTER_KEY: &str = "sk-master-secrets";

/// A provider key nobody could guess, so finding it anywhere means it leaked from here.
fn random_key(label: &str) -> String {
    let random = |_| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let parts: Vec<String> = (0..2).map(random).map(|n| format!("{n:016x}")).collect();
    format!("sk-{label}-{}", parts.concat())
}

fn chat(url: &str, model: &str, content: &str, stream: bool) -> (u16, String) {
    let response = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"model": model, "stream": stream,
                      "messages": [{"role": "user", "content": content}]}))
        .send()
        .unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn management(url: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let request = match body {
        Some(body) => client().post(format!("{url}{path}")).json(body),
        None => client().get(format!("{url}{path}")),
    };
    let response = request.bearer_auth(MASTER_KEY).send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn get(url: &str) -> String {
    client().get(url).send().unwrap().text().unwrap()
}

#[test]
fn provider_keys_appear_in_no_answer_dump_log_or_row() {
    let dir = tempfile::tempdir().unwrap();
    let openai_key = random_key("openai");
    let anthropic_key = random_key("anthropic");
    let unreachable_key = random_key("unreachable");
    let api_key = random_key("api");
    let secrets = [&openai_key, &anthropic_key, &unreachable_key, &api_key];

    let mock = Mock::start_with_keys(dir.path(), &openai_key, &anthropic_key).unwrap();
    let closed_port = free_port().unwrap();
    let config = format!(
        "general_settings:\n  master_key: {MASTER_KEY}\n\
         model_list:\n\
         - model_name: gpt-mock\n\
         \x20 litellm_params: {{model: openai/mock-gpt-4o, api_base: {url}/v1, api_key: {openai_key}}}\n\
         - model_name: claude-mock\n\
         \x20 litellm_params: {{model: anthropic/claude-mock, api_base: {url}, api_key: {anthropic_key}}}\n\
         - model_name: nowhere\n\
         \x20 litellm_params: {{model: openai/x, api_base: 'http://127.0.0.1:{closed_port}/v1', api_key: {unreachable_key}}}\n",
        url = mock.url
    );
    // Debug logging in the control plane: a key in any of its log lines would show.
    let gateway = Gateway::start_with_env(dir.path(), &config, &[("RUST_LOG", "debug")]).unwrap();
    let url = gateway.url.as_str();
    let mut answers: Vec<String> = Vec::new();

    // The providers get their keys (so this test can fail: the keys do travel).
    let (status, text) = chat(url, "gpt-mock", "hello", false);
    assert_eq!(status, 200, "{text}");
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen["headers"]["authorization"],
        format!("Bearer {openai_key}")
    );
    answers.push(text);
    let (status, text) = chat(url, "claude-mock", "hello", true);
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        mock.last_request().unwrap()["headers"]["x-api-key"],
        anthropic_key.as_str()
    );
    answers.push(text);

    // Failures: provider errors, a provider that is not there, the gateway's own errors.
    for (model, content, expected) in [
        ("gpt-mock", "mock:status=500", 500),
        ("gpt-mock", "mock:status=401", 401),
        ("claude-mock", "mock:status=529", 529),
        ("gpt-mock", "mock:raw_error", 500),
        ("nowhere", "hello", 503),
        ("no-such-model", "hello", 404),
    ] {
        let (status, text) = chat(url, model, content, false);
        assert_eq!(status, expected, "{model} {content}: {text}");
        answers.push(text);
    }
    let (status, text) = chat(url, "gpt-mock", "mock:stream_error", true);
    assert_eq!(status, 200, "{text}");
    answers.push(text);

    // The management API through the gateway: a key added, listed, refused with a bad field.
    let (status, text) = management(
        url,
        "/model/new",
        Some(
            &json!({"model_name": "added", "model_info": {"id": "added-1"},
                     "litellm_params": {"model": "openai/x", "api_key": api_key,
                                        "api_base": format!("http://127.0.0.1:{closed_port}/v1")}}),
        ),
    );
    assert_eq!(status, 200, "{text}");
    answers.push(text);
    let (status, text) = management(
        url,
        "/model/new",
        Some(
            &json!({"model_name": "bad", "litellm_params": {"model": "no-provider",
                                                             "api_key": api_key}}),
        ),
    );
    assert_eq!(status, 400, "{text}");
    answers.push(text);
    for path in ["/model/info", "/model/info?litellm_model_id=added-1"] {
        let (status, text) = management(url, path, None);
        assert_eq!(status, 200, "{text}");
        answers.push(text);
    }
    assert!(
        eventually(Duration::from_secs(10), || chat(url, "added", "hi", false)
            .0
            == 503),
        "the added model never reached the filter"
    );

    // Envoy's view of its configuration and state.
    for path in [
        "/config_dump",
        "/config_dump?include_eds",
        "/clusters",
        "/stats",
    ] {
        answers.push(get(&format!("{}{path}", gateway.admin_url)));
    }
    for (index, answer) in answers.iter().enumerate() {
        for secret in &secrets {
            assert!(
                !answer.contains(secret.as_str()),
                "answer {index} has {secret}: {answer}"
            );
        }
    }

    // Every log of the control plane and Envoy (the mock's own log does not count).
    let logs = [
        dir.path().join("tollgate.log"),
        dir.path().join("state/envoy.log"),
    ];
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(!text.is_empty(), "{} is empty", log.display());
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{} has {secret}",
                log.display()
            );
        }
    }
    let control_plane_log = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(
        control_plane_log
            .contains("provider keys are encrypted at rest with the key from the key file"),
        "{control_plane_log}"
    );

    // At rest: encrypted, with a key file only its owner can read.
    let key_file = dir.path().join("state/credential.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());
    }
    let stored = if gateway.database_url.starts_with("sqlite:") {
        let mut text = String::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("tollgate-"))
            {
                text.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
            }
        }
        text
    } else {
        psql_output(&gateway.database_url, "SELECT id, api_key FROM deployments").unwrap()
    };
    assert!(stored.contains("enc:v1:"), "no sealed key stored");
    for secret in &secrets {
        assert!(
            !stored.contains(secret.as_str()),
            "{secret} stored in clear"
        );
    }
}
