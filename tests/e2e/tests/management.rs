#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The management API end to end: changes made through the LiteLLM-compatible HTTP API reach
//! every Envoy connected to the control plane within a second (two Envoys on one control
//! plane; two control-plane replicas on one PostgreSQL), on SQLite and PostgreSQL.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::{client, free_port, mock_config, ControlPlane, Envoy, Mock, PgDatabase};

const MASTER_KEY: &str = "sk-master-management";
/// The bound for a change to reach every filter.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

fn management(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = client()
        .post(format!("{url}{path}"))
        .bearer_auth(MASTER_KEY)
        .json(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn chat_status(url: &str, key: &str, model: &str) -> u16 {
    client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .map(|response| response.status().as_u16())
        .unwrap_or(0)
}

/// Time until `check` holds on every Envoy, each asked over fresh connections (so both of
/// its workers answer), polled every 10 ms; panics past 5 s.
fn time_until_all(envoys: &[&Envoy], check: impl Fn(&Envoy) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if envoys.iter().all(|envoy| (0..4).all(|_| check(envoy))) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "change never reached every Envoy"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write_config(dir: &Path, mock: &Mock) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, mock_config(mock, Some(MASTER_KEY))).unwrap();
    path
}

fn two_envoys_on_one_control_plane(database_url: &str, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let config = write_config(dir.path(), &mock);
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let _control_plane =
        ControlPlane::start_with_http(dir.path(), &config, grpc, http, database_url).unwrap();
    let first = Envoy::start_with_http(dir.path(), "envoy-1", grpc, Some(http)).unwrap();
    let second = Envoy::start_with_http(dir.path(), "envoy-2", grpc, Some(http)).unwrap();
    let envoys = [&first, &second];
    time_until_all(&envoys, |envoy| envoy.model_ids(MASTER_KEY).len() == 2);

    // A key generated through the gateway port (Envoy routes /key/* to the control plane).
    let (status, generated) = management(
        &first.url,
        "/key/generate",
        &json!({"models": ["gpt-mock"], "key_alias": format!("e2e-{label}")}),
    );
    assert_eq!(status, 200, "{generated}");
    let key = generated["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-"), "{generated}");
    let took = time_until_all(&envoys, |envoy| {
        chat_status(&envoy.url, &key, "gpt-mock") == 200
    });
    println!("[{label}] new key usable on both Envoys after {took:?}");
    assert!(took < PROPAGATION_BOUND, "new key took {took:?}");
    assert_eq!(
        chat_status(&first.url, &key, "claude-mock"),
        401,
        "model allow-list"
    );

    // Blocked: refused by every Envoy within a second.
    let (status, body) = management(&second.url, "/key/block", &json!({"key": key}));
    assert_eq!(status, 200, "{body}");
    let took = time_until_all(&envoys, |envoy| {
        chat_status(&envoy.url, &key, "gpt-mock") == 401
    });
    println!("[{label}] blocked key refused by both Envoys after {took:?}");
    assert!(took < PROPAGATION_BOUND, "block took {took:?}");
    let (status, body) = management(&first.url, "/key/unblock", &json!({"key": key}));
    assert_eq!(status, 200, "{body}");
    time_until_all(&envoys, |envoy| {
        chat_status(&envoy.url, &key, "gpt-mock") == 200
    });

    // Deleted: refused too.
    let (status, body) = management(&first.url, "/key/delete", &json!({"keys": [key]}));
    assert_eq!(status, 200, "{body}");
    let took = time_until_all(&envoys, |envoy| {
        chat_status(&envoy.url, &key, "gpt-mock") == 401
    });
    println!("[{label}] deleted key refused by both Envoys after {took:?}");
    assert!(took < PROPAGATION_BOUND, "delete took {took:?}");

    // A model created through the API is served by both.
    let (status, body) = management(
        &first.url,
        "/model/new",
        &json!({"model_name": "gpt-api", "litellm_params": {
            "model": "openai/mock-api-model", "api_base": format!("{}/v1", mock.url), "api_key": tollgate_e2e::MOCK_OPENAI_KEY}}),
    );
    assert_eq!(status, 200, "{body}");
    let took = time_until_all(&envoys, |envoy| {
        chat_status(&envoy.url, MASTER_KEY, "gpt-api") == 200
    });
    println!("[{label}] new model served by both Envoys after {took:?}");
    assert!(took < PROPAGATION_BOUND, "model took {took:?}");
    assert_eq!(
        mock.last_request().unwrap()["body"]["model"],
        "mock-api-model"
    );

    // Bad input to the API through the gateway port.
    let (status, body) = management(&first.url, "/key/block", &json!({}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    let response = client()
        .post(format!("{}/key/generate", first.url))
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[test]
fn changes_reach_two_envoys_within_a_second_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display());
    two_envoys_on_one_control_plane(&url, "sqlite");
}

#[test]
fn changes_reach_two_envoys_within_a_second_postgres() {
    let database = PgDatabase::create().unwrap();
    two_envoys_on_one_control_plane(&database.url, "postgres");
}

#[test]
fn two_control_plane_replicas_on_one_postgres_serve_the_same_state() {
    let database = PgDatabase::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let config = write_config(dir.path(), &mock);
    let (grpc_a, http_a, grpc_b, http_b) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let _replica_a =
        ControlPlane::start_with_http(dir.path(), &config, grpc_a, http_a, &database.url).unwrap();
    let _replica_b =
        ControlPlane::start_with_http(dir.path(), &config, grpc_b, http_b, &database.url).unwrap();
    let on_a = Envoy::start_with_http(dir.path(), "envoy-on-a", grpc_a, Some(http_a)).unwrap();
    let on_b = Envoy::start_with_http(dir.path(), "envoy-on-b", grpc_b, Some(http_b)).unwrap();
    let envoys = [&on_a, &on_b];
    time_until_all(&envoys, |envoy| envoy.model_ids(MASTER_KEY).len() == 2);

    // Made on replica A, seen by the Envoy connected to replica B.
    let (status, generated) = management(
        &on_a.url,
        "/key/generate",
        &json!({"key_alias": "replicated"}),
    );
    assert_eq!(status, 200, "{generated}");
    let key = generated["key"].as_str().unwrap().to_string();
    let took = time_until_all(&envoys, |envoy| {
        chat_status(&envoy.url, &key, "gpt-mock") == 200
    });
    println!("[replicas] key made on A usable through B after {took:?}");
    assert!(took < PROPAGATION_BOUND, "replication took {took:?}");

    let (status, body) = management(&on_b.url, "/key/block", &json!({"key": key}));
    assert_eq!(status, 200, "{body}");
    let took = time_until_all(&envoys, |envoy| {
        chat_status(&envoy.url, &key, "gpt-mock") == 401
    });
    println!("[replicas] key blocked on B refused through A after {took:?}");
    assert!(took < PROPAGATION_BOUND, "replicated block took {took:?}");
}
