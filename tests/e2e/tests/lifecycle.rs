#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The control plane's life seen from a running Envoy: config changes reach it without an
//! Envoy restart, it keeps serving while the control plane is away (fail-static), and
//! `tollgate up` stops cleanly on Ctrl-C.

use std::time::Duration;

use serde_json::json;
use tollgate_e2e::{
    client, eventually, free_port, mock_config, port_open, test_database, ControlPlane, Envoy,
    Gateway, Mock,
};

const KEY: &str = "sk-lifecycle";

/// Every worker sees `expected`: each call opens a new connection, which Envoy hands to one of
/// its workers, so 12 agreeing answers in a row cover both workers' VMs.
fn all_workers_list(envoy: &Envoy, expected: &[&str]) -> bool {
    (0..12).all(|_| envoy.model_ids(KEY) == expected)
}

fn chat_ok(url: &str, model: &str) -> bool {
    client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "ping"}]}))
        .send()
        .is_ok_and(|response| response.status() == 200)
}

#[test]
fn config_changes_reach_a_running_envoy_and_it_serves_while_the_control_plane_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let config_path = dir.path().join("config.yaml");
    let (database, _pg) = test_database(dir.path()).unwrap();
    let first = mock_config(&mock, Some(KEY));
    std::fs::write(&config_path, &first).unwrap();

    let grpc_port = free_port().unwrap();
    let mut control_plane =
        ControlPlane::start(dir.path(), &config_path, grpc_port, &database).unwrap();
    let mut envoy = Envoy::start(dir.path(), "envoy-a", grpc_port).unwrap();
    let envoy_pid = envoy.process.pid();
    assert!(
        eventually(Duration::from_secs(15), || all_workers_list(
            &envoy,
            &["gpt-mock", "claude-mock"]
        )),
        "first snapshot never arrived: {:?}",
        envoy.model_ids(KEY)
    );
    assert!(chat_ok(&envoy.url, "gpt-mock"));

    // Fail-static: the control plane goes away, the gateway keeps serving its snapshot.
    control_plane.process.stop();
    assert!(!port_open(grpc_port));
    for _ in 0..6 {
        for model in ["gpt-mock", "claude-mock"] {
            assert!(
                chat_ok(&envoy.url, model),
                "{model} while the control plane is down"
            );
        }
    }
    assert!(all_workers_list(&envoy, &["gpt-mock", "claude-mock"]));

    // A changed config and a restarted control plane reach the same Envoy process.
    let second = first.replace("- model_name: claude-mock", "- model_name: claude-renamed");
    std::fs::write(&config_path, second).unwrap();
    let _control_plane =
        ControlPlane::start(dir.path(), &config_path, grpc_port, &database).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || all_workers_list(
            &envoy,
            &["gpt-mock", "claude-renamed"]
        )),
        "new snapshot never arrived: {:?}",
        envoy.model_ids(KEY)
    );
    for _ in 0..6 {
        assert!(chat_ok(&envoy.url, "claude-renamed"));
        assert!(
            !chat_ok(&envoy.url, "claude-mock"),
            "the removed model is gone"
        );
    }
    assert!(envoy.process.is_running());
    assert_eq!(envoy.process.pid(), envoy_pid, "Envoy was not restarted");
}

#[test]
fn tollgate_up_stops_envoy_and_itself_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let mut gateway = Gateway::start(dir.path(), &mock_config(&mock, None)).unwrap();
    let port: u16 = gateway.url.rsplit(':').next().unwrap().parse().unwrap();
    let admin_port: u16 = gateway
        .admin_url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(port_open(port) && port_open(admin_port) && port_open(gateway.grpc_port));
    assert!(chat_ok(&gateway.url, "gpt-mock"));

    gateway.process.signal("INT");
    let code = gateway.process.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "tollgate up exits 0 on Ctrl-C");
    assert!(
        eventually(Duration::from_secs(5), || !port_open(port)
            && !port_open(admin_port)
            && !port_open(gateway.grpc_port)),
        "Envoy or the control plane is still listening after Ctrl-C"
    );
}
