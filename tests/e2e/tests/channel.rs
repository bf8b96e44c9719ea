#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The filter channel is authenticated and can be encrypted: a real Envoy (with the build
//! under test) reaches `tollgate serve` only with the filter token, over TLS and mutual TLS
//! with a CA made for the test; a refused filter gets no snapshot and answers 503.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tollgate_e2e::{
    client, eventually, free_port, test_database, ControlPlane, Envoy, EnvoyOptions, PgDatabase,
    ServeOptions,
};
use tollgate_test_pki::TestPki;

const MASTER_KEY: &str = "sk-channel-master";
const TOKEN_ENV: &str = "TOLLGATE_FILTER_TOKEN";
const TOKEN: &str = "channel-e2e-filter-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

/// One model, never called (listing models needs a snapshot, not a provider).
const CONFIG: &str = "general_settings:\n  master_key: sk-channel-master\nmodel_list:\n  - model_name: channel-model\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: http://127.0.0.1:9/v1\n      api_key: sk-none\n";

fn path(path: &Path) -> String {
    path.display().to_string()
}

fn token_env(token: Option<&str>) -> Vec<(String, String)> {
    token
        .map(|token| (TOKEN_ENV.to_string(), token.to_string()))
        .into_iter()
        .collect()
}

/// `tollgate serve` requiring [`TOKEN`], with `args`, on a free port; the database goes
/// after the control plane (fields drop in order).
struct Plane {
    serve: ControlPlane,
    _database: Option<PgDatabase>,
}

fn control_plane(dir: &Path, args: Vec<String>) -> Plane {
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, CONFIG).unwrap();
    let (database_url, database) = test_database(dir).unwrap();
    let options = ServeOptions {
        args,
        env: token_env(Some(TOKEN)),
        ..ServeOptions::default()
    };
    let serve = ControlPlane::start_with(
        dir,
        &config_path,
        free_port().unwrap(),
        &database_url,
        &options,
    )
    .unwrap();
    Plane {
        serve,
        _database: database,
    }
}

fn serves_the_model(envoy: &Envoy) -> bool {
    eventually(WAIT, || envoy.model_ids(MASTER_KEY) == ["channel-model"])
}

/// A filter that was refused holds no snapshot: every request is answered 503 not_ready,
/// and its log says why it cannot open the stream.
fn assert_refused(envoy: &Envoy) {
    assert!(
        eventually(WAIT, || envoy
            .log_text()
            .contains("cannot open the control-plane stream")),
        "the filter did not log the refusal:\n{}",
        envoy.log_text()
    );
    let response = client()
        .post(format!("{}/v1/chat/completions", envoy.url))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"model": "channel-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
}

#[test]
fn filter_streams_without_the_right_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plane = control_plane(dir.path(), Vec::new());
    let envoy = |name: &str, token: Option<&str>| {
        let options = EnvoyOptions {
            env: token_env(token),
            ..EnvoyOptions::default()
        };
        Envoy::start_with(dir.path(), name, plane.serve.grpc_port, &options).unwrap()
    };
    let trusted = envoy("envoy-token", Some(TOKEN));
    let without = envoy("envoy-no-token", None);
    let wrong = envoy("envoy-wrong-token", Some("a-guessed-filter-token"));

    assert!(serves_the_model(&trusted), "{}", trusted.log_text());
    assert!(
        eventually(WAIT, || {
            let log = plane.serve.log_text();
            log.contains("no filter token") && log.contains("wrong filter token")
        }),
        "{}",
        plane.serve.log_text()
    );
    let log = plane.serve.log_text();
    for why in ["no filter token", "wrong filter token"] {
        let line = log
            .lines()
            .find(|line| line.contains(why))
            .unwrap_or_default();
        assert!(
            line.contains("refused a filter stream from 127.0.0.1:")
                && line.contains(&format!("{why} (x-tollgate-filter-token)")),
            "{line}"
        );
    }
    assert_refused(&without);
    assert_refused(&wrong);
    assert!(
        wrong.log_text().contains("check TOLLGATE_FILTER_TOKEN"),
        "{}",
        wrong.log_text()
    );

    // The token is in Envoy's environment only: not in its config dump, not in any log.
    let dump = trusted.config_dump().unwrap();
    assert!(dump.contains(TOKEN_ENV), "the dump names the variable");
    assert!(!dump.contains(TOKEN));
    for log in [plane.serve.log_text(), trusted.log_text(), wrong.log_text()] {
        assert!(!log.contains(TOKEN));
        assert!(!log.contains("a-guessed-filter-token"));
    }
}

#[test]
fn the_channel_runs_over_tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path(), "channel").unwrap();
    let server_tls = vec![
        "--grpc-tls-cert".to_string(),
        path(&pki.server_cert),
        "--grpc-tls-key".to_string(),
        path(&pki.server_key),
    ];
    let trusting_ca = vec!["--control-plane-ca".to_string(), path(&pki.ca)];
    let envoy = |name: &str, plane: &Plane, render_args: Vec<String>| {
        let options = EnvoyOptions {
            render_args,
            env: token_env(Some(TOKEN)),
            ..EnvoyOptions::default()
        };
        Envoy::start_with(dir.path(), name, plane.serve.grpc_port, &options).unwrap()
    };

    // TLS: Envoy verifies the control plane's certificate against the test CA.
    let plane = control_plane(dir.path(), server_tls.clone());
    let over_tls = envoy("envoy-tls", &plane, trusting_ca.clone());
    assert!(serves_the_model(&over_tls), "{}", over_tls.log_text());
    drop(over_tls);
    drop(plane);

    // Mutual TLS: the control plane demands a client certificate from the same CA.
    let mut mutual_args = server_tls;
    mutual_args.extend(["--grpc-client-ca".to_string(), path(&pki.ca)]);
    let plane = control_plane(dir.path(), mutual_args);
    let mut with_certificate = trusting_ca.clone();
    with_certificate.extend([
        "--control-plane-client-cert".to_string(),
        path(&pki.client_cert),
        "--control-plane-client-key".to_string(),
        path(&pki.client_key),
    ]);
    let mutual = envoy("envoy-mtls", &plane, with_certificate);
    assert!(serves_the_model(&mutual), "{}", mutual.log_text());
    let without_certificate = envoy("envoy-no-client-cert", &plane, trusting_ca);
    assert_refused(&without_certificate);
}
