#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Snapshot scale: 100,000 virtual keys and 1,000 deployments reach the filter (a snapshot
//! of about 15 MB, over tonic's default limit of 4 MiB), and a change to one key reaches
//! every worker as a delta, not as all the keys again.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;
use tollgate_e2e::{
    bulk_key, client, counter, eventually, free_port, insert_keys, test_database, ControlPlane,
    Envoy, FilterBuild, Mock, MOCK_OPENAI_KEY,
};

const KEYS: usize = 100_000;
const DEPLOYMENTS: usize = 1_000;
const MASTER_KEY: &str = "sk-master-scale";

/// `gpt-mock` served by the mock, and more deployments up to [`DEPLOYMENTS`].
fn config(mock: &Mock) -> String {
    let mut config = format!(
        "general_settings:\n  master_key: {MASTER_KEY}\nmodel_list:\n\
         - model_name: gpt-mock\n  litellm_params:\n    model: openai/mock-gpt-4o\n    \
         api_base: {url}/v1\n    api_key: {MOCK_OPENAI_KEY}\n",
        url = mock.url
    );
    for i in 1..DEPLOYMENTS {
        write!(
            config,
            "- model_name: scale-model-{i}\n  litellm_params:\n    model: openai/upstream-{i}\n    \
             api_base: {url}/v1\n    api_key: sk-scale-{i}\n",
            url = mock.url
        )
        .unwrap();
    }
    config
}

fn chat_status(url: &str, key: &str) -> u16 {
    client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .map(|response| response.status().as_u16())
        .unwrap_or(0)
}

/// Every worker answers `status` for `key`: each request opens a new connection, which
/// Envoy hands to one of its two workers, so 12 agreeing answers cover both.
fn every_worker_answers(envoy: &Envoy, key: &str, status: u16) -> bool {
    (0..12).all(|_| chat_status(&envoy.url, key) == status)
}

/// The snapshot counters of `envoy`: full snapshots, deltas, resyncs.
fn snapshot_counters(envoy: &Envoy) -> (u64, u64, u64) {
    let read = |name| counter(&envoy.admin_url, name).unwrap();
    (
        read("tollgate.snapshots_installed"),
        read("tollgate.snapshot_deltas_installed"),
        read("tollgate.snapshot_resyncs"),
    )
}

#[test]
fn a_hundred_thousand_keys_reach_every_worker_and_blocking_one_sends_a_delta() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config(&mock)).unwrap();
    let (database, _pg) = test_database(dir.path()).unwrap();
    let (grpc_port, http_port) = (free_port().unwrap(), free_port().unwrap());

    // The control plane creates its schema; the keys go straight into it before the next
    // start, so the filter's first snapshot holds all of them.
    let mut first_run =
        ControlPlane::start_with_http(dir.path(), &config_path, grpc_port, http_port, &database)
            .unwrap();
    first_run.process.stop();
    insert_keys(&database, 0..KEYS).unwrap();
    let _control_plane =
        ControlPlane::start_with_http(dir.path(), &config_path, grpc_port, http_port, &database)
            .unwrap();
    let envoy =
        Envoy::start_with_http(dir.path(), "envoy-scale", grpc_port, Some(http_port)).unwrap();

    // The first and the last key work on every worker.
    let (first, last) = (bulk_key(0), bulk_key(KEYS - 1));
    assert!(
        eventually(Duration::from_secs(90), || every_worker_answers(
            &envoy, &last, 200
        )),
        "the last key never worked: {}",
        chat_status(&envoy.url, &last)
    );
    assert!(every_worker_answers(&envoy, &first, 200));
    let models = envoy.model_ids(&first);
    assert_eq!(models.len(), DEPLOYMENTS);
    assert_eq!(models.first().map(String::as_str), Some("gpt-mock"));

    // One full snapshot per stream: the native module holds one, the Wasm filter one per VM
    // (two workers and the main thread's).
    let streams = match FilterBuild::chosen().unwrap() {
        FilterBuild::Wasm(_) => 3,
        // One for the module: the gateway listener's and the attempts listener's filter
        // configurations (the same bytes) share it.
        FilterBuild::Native(_) => 1,
    };
    // Counters reach Envoy at the filter's next tick (every 250 ms).
    assert!(eventually(Duration::from_secs(5), || snapshot_counters(
        &envoy
    ) == (streams, 0, 0)));

    // Block one key: every worker refuses it, and it came as one delta per stream.
    let blocked = bulk_key(KEYS / 2);
    let response = client()
        .post(format!("{}/key/block", envoy.url))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"key": blocked}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text());
    assert!(
        eventually(Duration::from_secs(30), || every_worker_answers(
            &envoy, &blocked, 401
        )),
        "the blocked key still works"
    );
    let refused: serde_json::Value = client()
        .post(format!("{}/v1/chat/completions", envoy.url))
        .bearer_auth(&blocked)
        .json(&json!({"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(refused["error"]["code"], "key_blocked");
    assert!(every_worker_answers(&envoy, &last, 200));
    assert!(
        eventually(Duration::from_secs(5), || snapshot_counters(&envoy)
            == (streams, streams, 0)),
        "snapshots, deltas, resyncs: {:?}",
        snapshot_counters(&envoy)
    );
}
