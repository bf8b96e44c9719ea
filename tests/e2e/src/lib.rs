//! Harness for the end-to-end tests: starts the mock provider, the control plane and a real
//! Envoy with the built filter as separate processes on 127.0.0.1, and stops them again.
//!
//! Binaries come from `target/debug` (override with `TOLLGATE_BIN_DIR`), the filter from
//! `target/wasm32-wasip1/release/tollgate_filter.wasm` (override with `TOLLGATE_WASM`) or, with
//! `TOLLGATE_E2E_FILTER=native`, the native module from
//! `target/release/libtollgate_native.so` (override with `TOLLGATE_NATIVE`); the test command
//! builds them first.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Path of one of the workspace's binaries.
pub fn binary(name: &str) -> Result<PathBuf> {
    let dir = std::env::var_os("TOLLGATE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug"));
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --workspace` first (or set TOLLGATE_BIN_DIR)",
            path.display()
        );
    }
    Ok(path)
}

/// Path of the built filter.
pub fn wasm() -> Result<PathBuf> {
    built(
        "TOLLGATE_WASM",
        "target/wasm32-wasip1/release/tollgate_filter.wasm",
        "cargo build -p tollgate-filter --target wasm32-wasip1 --release",
    )
}

/// Path of the built native module.
pub fn native() -> Result<PathBuf> {
    built(
        "TOLLGATE_NATIVE",
        "target/release/libtollgate_native.so",
        "cargo build -p tollgate-native --release",
    )
}

/// A build output: the path in `env`, else `default` under the workspace; an error saying
/// how to build it when it is missing.
fn built(env: &str, default: &str, build: &str) -> Result<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default));
    if !path.exists() {
        bail!("{} is missing: run `{build}` first", path.display());
    }
    Ok(path)
}

/// Which build of the filter Envoy loads: the proxy-wasm filter (default) or, with
/// `TOLLGATE_E2E_FILTER=native`, the native dynamic module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterBuild {
    /// `tollgate_filter.wasm`.
    Wasm(PathBuf),
    /// `libtollgate_native.so`.
    Native(PathBuf),
}

impl FilterBuild {
    /// The build these tests run against.
    pub fn chosen() -> Result<FilterBuild> {
        match std::env::var("TOLLGATE_E2E_FILTER").as_deref() {
            Ok("native") => Ok(FilterBuild::Native(native()?)),
            Ok("wasm") | Err(_) => Ok(FilterBuild::Wasm(wasm()?)),
            Ok(other) => bail!("TOLLGATE_E2E_FILTER={other}: expected wasm or native"),
        }
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process that is stopped (SIGINT, then SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `command` with stdout captured line by line (stderr goes to `log`).
    pub fn start(name: &str, mut command: Command, log: &Path) -> Result<Process> {
        let log_file = std::fs::File::create(log)?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Process {
            name: name.to_string(),
            child,
            lines,
        })
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "{} printed no line containing {needle:?} (exit status {status:?})",
                        self.name
                    )
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal by name (INT, TERM, KILL).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Stops the process: SIGINT, and SIGKILL if it does not exit within 10 s.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        self.signal("INT");
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The mock provider.
pub struct Mock {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _process: Process,
}

/// Provider keys the mock demands, so tests prove the gateway injects them.
pub const MOCK_OPENAI_KEY: &str = "sk-mock-openai";
/// See [`MOCK_OPENAI_KEY`].
pub const MOCK_ANTHROPIC_KEY: &str = "sk-mock-anthropic";

/// The `api-key` the mock requires on its Azure OpenAI paths.
pub const MOCK_AZURE_KEY: &str = "mock-azure-key";

/// The `x-goog-api-key` the mock requires on its Gemini paths.
pub const MOCK_GEMINI_KEY: &str = "mock-gemini-key";

/// The test-only Vertex AI service account of `tests/data/vertex` (it opens nothing).
pub const VERTEX_SERVICE_ACCOUNT: &str = include_str!("../../data/vertex/service-account.json");

/// The bearer key the mock requires on Cohere's `/v2/chat`.
pub const MOCK_COHERE_KEY: &str = "mock-cohere-key";

/// The bearer key the mock requires on Ollama's `/api/chat` (Ollama itself takes none; one
/// behind a proxy, or ollama.com, does).
pub const MOCK_OLLAMA_KEY: &str = "mock-ollama-key";

/// The AWS access key id the mock's Bedrock paths accept (they verify SigV4 signatures).
pub const MOCK_AWS_ACCESS_KEY_ID: &str = "AKIDMOCKE2EBEDROCK";
/// The secret of [`MOCK_AWS_ACCESS_KEY_ID`].
pub const MOCK_AWS_SECRET_ACCESS_KEY: &str = "mock/e2e+bedrock/secret";
/// Temporary AWS credentials the mock's Bedrock paths accept, with their session token.
pub const MOCK_AWS_TEMP_ACCESS_KEY_ID: &str = "ASIAMOCKE2ETEMP";
/// The secret of [`MOCK_AWS_TEMP_ACCESS_KEY_ID`].
pub const MOCK_AWS_TEMP_SECRET_ACCESS_KEY: &str = "mock-e2e-temporary-secret";
/// The session token [`MOCK_AWS_TEMP_ACCESS_KEY_ID`] must come with.
pub const MOCK_AWS_SESSION_TOKEN: &str = "FwoGZXIvYXdzMockE2ESessionToken//==";

/// The secret `tollgate serve` gets as `LITELLM_SALT_KEY` in these tests (the same for every
/// start, so a restarted control plane reads what an earlier one stored).
pub const E2E_SALT_KEY: &str = "tollgate-e2e-salt-key";

impl Mock {
    /// Starts `tollgate-mock` on a free port, requiring the mock provider keys.
    pub fn start(dir: &Path) -> Result<Mock> {
        Self::start_with_keys(dir, MOCK_OPENAI_KEY, MOCK_ANTHROPIC_KEY)
    }

    /// Starts `tollgate-mock` on a free port, requiring these provider keys.
    pub fn start_with_keys(dir: &Path, openai_key: &str, anthropic_key: &str) -> Result<Mock> {
        Self::start_with_args(dir, openai_key, anthropic_key, &[])
    }

    /// Starts `tollgate-mock` with its Vertex AI token endpoint accepting the test service
    /// account ([`VERTEX_SERVICE_ACCOUNT`]) and issuing tokens that last `token_ttl_secs`.
    pub fn start_with_vertex(dir: &Path, token_ttl_secs: u64) -> Result<Mock> {
        let account = dir.join("mock-service-account.json");
        std::fs::write(&account, VERTEX_SERVICE_ACCOUNT)?;
        let account = account.display().to_string();
        let ttl = token_ttl_secs.to_string();
        Self::start_with_args(
            dir,
            MOCK_OPENAI_KEY,
            MOCK_ANTHROPIC_KEY,
            &[
                "--vertex-service-account",
                &account,
                "--vertex-token-ttl",
                &ttl,
            ],
        )
    }

    /// The test service account's key file with its `token_uri` at this mock, as a JSON
    /// string (what a config's `vertex_credentials` takes).
    pub fn vertex_credentials(&self) -> Result<String> {
        let mut account: serde_json::Value = serde_json::from_str(VERTEX_SERVICE_ACCOUNT)?;
        account["token_uri"] = serde_json::Value::String(format!("{}/token", self.url));
        Ok(account.to_string())
    }

    /// How many Vertex AI access tokens the mock's token endpoint has issued.
    pub fn vertex_tokens_issued(&self) -> Result<u64> {
        let value: serde_json::Value =
            reqwest::blocking::get(format!("{}/_mock/vertex", self.url))?.json()?;
        value["tokens_issued"]
            .as_u64()
            .ok_or_else(|| anyhow!("no tokens_issued in {value}"))
    }

    fn start_with_args(
        dir: &Path,
        openai_key: &str,
        anthropic_key: &str,
        extra: &[&str],
    ) -> Result<Mock> {
        let mut command = Command::new(binary("tollgate-mock")?);
        command.args(extra);
        command.args([
            "--port",
            "0",
            "--openai-key",
            openai_key,
            "--anthropic-key",
            anthropic_key,
            "--azure-key",
            MOCK_AZURE_KEY,
            "--gemini-key",
            MOCK_GEMINI_KEY,
            "--cohere-key",
            MOCK_COHERE_KEY,
            "--ollama-key",
            MOCK_OLLAMA_KEY,
            "--aws-access-key-id",
            MOCK_AWS_ACCESS_KEY_ID,
            "--aws-secret-access-key",
            MOCK_AWS_SECRET_ACCESS_KEY,
            "--aws-access-key-id",
            MOCK_AWS_TEMP_ACCESS_KEY_ID,
            "--aws-secret-access-key",
            MOCK_AWS_TEMP_SECRET_ACCESS_KEY,
        ]);
        command.arg(format!(
            "--aws-session-token={MOCK_AWS_TEMP_ACCESS_KEY_ID}={MOCK_AWS_SESSION_TOKEN}"
        ));
        let mut process = Process::start("tollgate-mock", command, &dir.join("mock.log"))?;
        let line = process.wait_for_line("listening on", Duration::from_secs(20))?;
        let url = line
            .split_whitespace()
            .last()
            .ok_or_else(|| anyhow!("no URL in {line:?}"))?
            .trim_end_matches('/')
            .to_string();
        Ok(Mock {
            url,
            _process: process,
        })
    }

    /// Requests the mock received, oldest first.
    pub fn requests(&self) -> Result<Vec<serde_json::Value>> {
        let value: serde_json::Value =
            reqwest::blocking::get(format!("{}/_mock/requests", self.url))?.json()?;
        value
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("not an array: {value}"))
    }

    /// The last request the mock received.
    pub fn last_request(&self) -> Result<serde_json::Value> {
        self.requests()?
            .pop()
            .ok_or_else(|| anyhow!("the mock received no request"))
    }
}

/// A gateway in front of the mock with a master key: what each provider's end-to-end test
/// drives (chat requests, streams, the request the mock got, the spend logs).
pub struct ProviderEnv {
    /// The mock provider.
    pub mock: Mock,
    /// `tollgate up` in front of it.
    pub gateway: Gateway,
    master_key: String,
    headers: Vec<(&'static str, &'static str)>,
}

// Test helpers: a request that fails should stop the test loudly, where it failed.
#[allow(clippy::expect_used, clippy::panic)]
impl ProviderEnv {
    /// Requests go with `master_key` as their bearer key.
    pub fn new(mock: Mock, gateway: Gateway, master_key: &str) -> ProviderEnv {
        ProviderEnv {
            mock,
            gateway,
            master_key: master_key.to_string(),
            headers: Vec::new(),
        }
    }

    /// Every request also carries `headers` (a client's headers the gateway must drop).
    pub fn with_headers(mut self, headers: &[(&'static str, &'static str)]) -> ProviderEnv {
        self.headers = headers.to_vec();
        self
    }

    /// POSTs a chat completion request.
    pub fn post(&self, body: &serde_json::Value) -> reqwest::blocking::Response {
        let mut request = client()
            .post(format!("{}/v1/chat/completions", self.gateway.url))
            .bearer_auth(&self.master_key);
        for (name, value) in &self.headers {
            request = request.header(*name, *value);
        }
        request.json(body).send().expect("the gateway answers")
    }

    /// Status and JSON body of a chat request.
    pub fn chat(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let (status, _, value) = self.chat_with_cost(body);
        (status, value)
    }

    /// Status, `x-litellm-response-cost` and JSON body of a chat request.
    pub fn chat_with_cost(
        &self,
        body: &serde_json::Value,
    ) -> (u16, Option<f64>, serde_json::Value) {
        let response = self.post(body);
        let status = response.status().as_u16();
        let cost = response
            .headers()
            .get("x-litellm-response-cost")
            .and_then(|value| value.to_str().ok()?.parse().ok());
        let text = read_body(response).expect("a body");
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, cost, value)
    }

    /// The `data:` payloads of a streamed answer (`[DONE]` last), after checking it is a 200
    /// in server-sent events whatever the provider's framing.
    pub fn stream(&self, body: &serde_json::Value) -> Vec<String> {
        let response = self.post(body);
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        sse_data(&read_body(response).expect("a body"))
    }

    /// The request the mock received last.
    pub fn upstream(&self) -> serde_json::Value {
        self.mock.last_request().expect("the mock got a request")
    }

    /// The spend log rows of requests sent with `user: end_user`, once there are `count`.
    pub fn logs(&self, end_user: &str, count: usize) -> Vec<serde_json::Value> {
        let fetch = || -> Vec<serde_json::Value> {
            client()
                .get(format!(
                    "{}/spend/logs?end_user={end_user}",
                    self.gateway.url
                ))
                .bearer_auth(&self.master_key)
                .send()
                .ok()
                .and_then(|response| response.json::<serde_json::Value>().ok())
                .and_then(|value| value.as_array().cloned())
                .unwrap_or_default()
        };
        assert!(
            eventually(Duration::from_secs(15), || fetch().len() >= count),
            "{end_user}: {:?}",
            fetch()
        );
        fetch()
    }
}

/// A running `tollgate up`: control plane + Envoy with the filter.
pub struct Gateway {
    /// `http://127.0.0.1:PORT` of the gateway listener.
    pub url: String,
    /// Envoy admin URL.
    pub admin_url: String,
    /// Control-plane gRPC port.
    pub grpc_port: u16,
    /// The `tollgate up` process.
    pub process: Process,
    /// Where state and logs go.
    pub dir: PathBuf,
    /// The control plane's database.
    pub database_url: String,
    /// Dropped after the process, so the database outlives the control plane.
    _database: Option<PgDatabase>,
}

/// The control plane's database for one test: SQLite in `dir`, or a fresh PostgreSQL
/// database when `TOLLGATE_E2E_DB=postgres` (the test command runs the suite both ways).
pub fn test_database(dir: &Path) -> Result<(String, Option<PgDatabase>)> {
    if std::env::var("TOLLGATE_E2E_DB").is_ok_and(|db| db == "postgres") {
        let database = PgDatabase::create()?;
        Ok((database.url.clone(), Some(database)))
    } else {
        let path = dir.join(format!("tollgate-{}.db", free_port()?));
        Ok((format!("sqlite://{}?mode=rwc", path.display()), None))
    }
}

/// A config with two models served by the mock (one per provider) and a master key.
pub fn mock_config(mock: &Mock, master_key: Option<&str>) -> String {
    let master = master_key.map_or(String::new(), |key| {
        format!("general_settings:\n  master_key: {key}\n")
    });
    format!(
        "model_list:\n\
         - model_name: gpt-mock\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-gpt-4o\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         - model_name: claude-mock\n\
         \x20 litellm_params:\n\
         \x20   model: anthropic/claude-mock-sonnet\n\
         \x20   api_base: {url}\n\
         \x20   api_key: {MOCK_ANTHROPIC_KEY}\n\
         {master}",
        url = mock.url
    )
}

impl Gateway {
    /// Runs `tollgate up` with `config` and waits until it says it is ready. Ports are
    /// picked free just before; another process can take one in between, so a failed start
    /// is retried with new ports.
    pub fn start(dir: &Path, config: &str) -> Result<Gateway> {
        Self::start_with_env(dir, config, &[])
    }

    /// Like [`Self::start`], with extra environment variables for `tollgate up`.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Result<Gateway> {
        let mut last_error = anyhow!("not started");
        for _ in 0..3 {
            match Self::start_once(dir, config, env) {
                Ok(gateway) => return Ok(gateway),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    fn start_once(dir: &Path, config: &str, env: &[(&str, &str)]) -> Result<Gateway> {
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config)?;
        let (port, admin_port, grpc_port) = (free_port()?, free_port()?, free_port()?);
        let state_dir = dir.join("state");
        let (database_url, database) = test_database(dir)?;
        let mut command = Command::new(binary("tollgate")?);
        command
            .arg("up")
            .arg("--config")
            .arg(&config_path)
            .args(["--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--http-port", &free_port()?.to_string()])
            .args(["--concurrency", "2"])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--database-url", &database_url])
            .envs(env.iter().copied())
            .current_dir(dir);
        match FilterBuild::chosen()? {
            FilterBuild::Wasm(path) => command.arg("--wasm").arg(path),
            FilterBuild::Native(path) => command.arg("--native").arg(path),
        };
        let mut process = Process::start("tollgate up", command, &dir.join("tollgate.log"))?;
        if let Err(error) = process.wait_for_line("Tollgate is ready", Duration::from_secs(90)) {
            let log = std::fs::read_to_string(dir.join("tollgate.log")).unwrap_or_default();
            let envoy_log =
                std::fs::read_to_string(state_dir.join("envoy.log")).unwrap_or_default();
            bail!("{error}\n--- tollgate log ---\n{log}\n--- envoy log ---\n{envoy_log}");
        }
        Ok(Gateway {
            url: format!("http://127.0.0.1:{port}"),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
            grpc_port,
            process,
            dir: dir.to_path_buf(),
            database_url,
            _database: database,
        })
    }

    /// The control plane's log so far (`tollgate up`'s output).
    pub fn log(&self) -> String {
        let bytes = std::fs::read(self.dir.join("tollgate.log")).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Envoy's log so far (`tollgate up` writes it to its state directory).
    pub fn envoy_log(&self) -> String {
        let bytes = std::fs::read(self.dir.join("state").join("envoy.log")).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Lines of Envoy's log saying that filter code failed: a Wasm VM call that trapped (after
    /// which the VM is gone for every request of its worker), or a panic, in either build.
    /// Envoy 1.40 counts no VM failure in its stats; its log is where it says so.
    pub fn filter_failures(&self) -> Vec<String> {
        self.envoy_log()
            .lines()
            .filter(|line| {
                (line.contains("[wasm]") && line.contains("failed: Uncaught"))
                    || line.contains("panicked at")
            })
            .map(str::to_string)
            .collect()
    }

    /// Envoy's stats in Prometheus format.
    pub fn prometheus(&self) -> Result<String> {
        Ok(reqwest::blocking::get(format!("{}/stats/prometheus", self.admin_url))?.text()?)
    }

    /// Envoy's plain stats.
    pub fn stats(&self) -> Result<String> {
        Ok(reqwest::blocking::get(format!("{}/stats", self.admin_url))?.text()?)
    }
}

/// A blocking HTTP client with a generous timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| reqwest::blocking::Client::new())
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:").map(str::trim_start))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// Reads a whole response body (for streaming responses read as they come).
pub fn read_body(mut response: reqwest::blocking::Response) -> Result<String> {
    let mut body = String::new();
    response.read_to_string(&mut body)?;
    Ok(body)
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// `tollgate serve`: the control plane alone.
pub struct ControlPlane {
    /// Its gRPC port.
    pub grpc_port: u16,
    /// The process.
    pub process: Process,
    /// Its log (stderr).
    pub log: PathBuf,
}

/// What else `tollgate serve` gets: its HTTP port, more arguments, its environment.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The management API's port (default: a free one).
    pub http_port: Option<u16>,
    /// More arguments (TLS files, ...).
    pub args: Vec<String>,
    /// More environment variables (`TOLLGATE_FILTER_TOKEN`, ...).
    pub env: Vec<(String, String)>,
}

impl ControlPlane {
    /// Starts `tollgate serve` with `config_path` and the given database, and waits for its
    /// gRPC port.
    pub fn start(
        dir: &Path,
        config_path: &Path,
        grpc_port: u16,
        database_url: &str,
    ) -> Result<ControlPlane> {
        // serve always opens its management API; a fixed default port would collide
        // between tests running side by side.
        Self::start_with_http(dir, config_path, grpc_port, free_port()?, database_url)
    }

    /// Like [`Self::start`], with the management HTTP API on a given `http_port`.
    pub fn start_with_http(
        dir: &Path,
        config_path: &Path,
        grpc_port: u16,
        http_port: u16,
        database_url: &str,
    ) -> Result<ControlPlane> {
        let options = ServeOptions {
            http_port: Some(http_port),
            ..ServeOptions::default()
        };
        Self::start_with(dir, config_path, grpc_port, database_url, &options)
    }

    /// Like [`Self::start`], with `options`.
    pub fn start_with(
        dir: &Path,
        config_path: &Path,
        grpc_port: u16,
        database_url: &str,
        options: &ServeOptions,
    ) -> Result<ControlPlane> {
        let http_port = match options.http_port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut command = Command::new(binary("tollgate")?);
        command
            .arg("serve")
            .arg("--config")
            .arg(config_path)
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
            .args(["--database-url", database_url])
            .env("LITELLM_SALT_KEY", E2E_SALT_KEY)
            .env_remove("TOLLGATE_SALT_KEY")
            .args(&options.args)
            .envs(options.env.iter().map(|(name, value)| (name, value)))
            .current_dir(dir);
        command.args(["--http-addr", &format!("127.0.0.1:{http_port}")]);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let log = dir.join(format!("control-plane-{grpc_port}-{stamp}.log"));
        let mut process = Process::start("tollgate serve", command, &log)?;
        let ports_open = || port_open(grpc_port) && port_open(http_port);
        if !eventually(Duration::from_secs(30), ports_open) {
            let status = process.wait_exit(Duration::from_millis(10));
            bail!(
                "control plane did not open its ports (exit {status:?}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(ControlPlane {
            grpc_port,
            process,
            log,
        })
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An Envoy started directly from `tollgate envoy-config`, as an operator would run it.
pub struct Envoy {
    /// Gateway URL.
    pub url: String,
    /// Admin URL.
    pub admin_url: String,
    /// The process.
    pub process: Process,
    /// Its log.
    pub log: PathBuf,
}

/// What else an [`Envoy`] gets: management routing, more `envoy-config` arguments, its
/// environment.
#[derive(Debug, Clone, Default)]
pub struct EnvoyOptions {
    /// Route the management paths to the control plane's HTTP API on this port.
    pub http_port: Option<u16>,
    /// More `tollgate envoy-config` arguments (TLS to the control plane, ...).
    pub render_args: Vec<String>,
    /// More environment variables of Envoy's process (`TOLLGATE_FILTER_TOKEN`, ...).
    pub env: Vec<(String, String)>,
}

impl Envoy {
    /// Renders the bootstrap for a control plane on `grpc_port` and starts Envoy with it.
    pub fn start(dir: &Path, name: &str, grpc_port: u16) -> Result<Envoy> {
        Self::start_with_http(dir, name, grpc_port, None)
    }

    /// Like [`Self::start`], also routing the management paths to the control plane's HTTP
    /// API on `http_port`.
    pub fn start_with_http(
        dir: &Path,
        name: &str,
        grpc_port: u16,
        http_port: Option<u16>,
    ) -> Result<Envoy> {
        let options = EnvoyOptions {
            http_port,
            ..EnvoyOptions::default()
        };
        Self::start_with(dir, name, grpc_port, &options)
    }

    /// Like [`Self::start`], with `options`.
    pub fn start_with(
        dir: &Path,
        name: &str,
        grpc_port: u16,
        options: &EnvoyOptions,
    ) -> Result<Envoy> {
        let (port, admin_port) = (free_port()?, free_port()?);
        let mut render = Command::new(binary("tollgate")?);
        render.arg("envoy-config").args(&options.render_args);
        if let Some(http_port) = options.http_port {
            render.args(["--http-port", &http_port.to_string()]);
        }
        let filter = FilterBuild::chosen()?;
        match &filter {
            FilterBuild::Wasm(path) => render.arg("--wasm").arg(path),
            FilterBuild::Native(_) => render.arg("--native"),
        };
        let rendered = render
            .args(["--port", &port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--node-id", name])
            .output()?;
        anyhow::ensure!(
            rendered.status.success(),
            "envoy-config failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let bootstrap = dir.join(format!("{name}.yaml"));
        std::fs::write(&bootstrap, &rendered.stdout)?;
        let envoy = std::env::var_os("TOLLGATE_ENVOY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("envoy"));
        let mut command = Command::new(envoy);
        command.envs(options.env.iter().map(|(name, value)| (name, value)));
        if let FilterBuild::Native(library) = &filter {
            if let Some(dir) = library.parent() {
                command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir);
            }
        }
        command.arg("-c").arg(&bootstrap).args([
            "--concurrency",
            "2",
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
        ]);
        let log = dir.join(format!("{name}.log"));
        let process = Process::start(name, command, &log)?;
        let admin_url = format!("http://127.0.0.1:{admin_port}");
        let ready = eventually(Duration::from_secs(30), || {
            reqwest::blocking::get(format!("{admin_url}/ready"))
                .is_ok_and(|r| r.status().is_success())
        });
        anyhow::ensure!(
            ready,
            "envoy {name} not ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Ok(Envoy {
            url: format!("http://127.0.0.1:{port}"),
            admin_url,
            process,
            log,
        })
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Envoy's `/config_dump`: all of its configuration that Envoy shows.
    pub fn config_dump(&self) -> Result<String> {
        Ok(reqwest::blocking::get(format!("{}/config_dump", self.admin_url))?.text()?)
    }

    /// Model ids listed by the gateway (empty while it has no snapshot).
    pub fn model_ids(&self, key: &str) -> Vec<String> {
        let Ok(response) = client()
            .get(format!("{}/v1/models", self.url))
            .bearer_auth(key)
            .send()
        else {
            return Vec::new();
        };
        let Ok(body) = response.json::<serde_json::Value>() else {
            return Vec::new();
        };
        body["data"]
            .as_array()
            .map(|models| {
                models
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A fresh, empty PostgreSQL database for one test, dropped when this is dropped.
pub struct PgDatabase {
    /// Its URL.
    pub url: String,
    name: String,
    admin_url: String,
}

impl PgDatabase {
    /// Creates `tollgate_e2e_<pid>_<nanos>` on the server of `TOLLGATE_TEST_PG_URL`
    /// (default postgres://postgres@127.0.0.1:5432/test).
    pub fn create() -> Result<PgDatabase> {
        let admin_url = std::env::var("TOLLGATE_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("tollgate_e2e_{}_{nanos}", std::process::id());
        psql(&admin_url, &format!("CREATE DATABASE {name}"))?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        Ok(PgDatabase {
            url: format!("{base}/{name}"),
            name,
            admin_url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// The clear key of the `index`-th key [`insert_keys`] creates.
pub fn bulk_key(index: usize) -> String {
    format!("sk-bulk-{index:07}")
}

/// Inserts the keys [`bulk_key`]`(i)` for `i` in `keys` straight into the control plane's
/// database (a SQLite URL or PostgreSQL), as one transaction that also bumps the state
/// version: 100,000 keys in seconds, where the management API would take minutes. The
/// schema must exist (start the control plane on the database once). Keys get the alias
/// `bulk-<i>`, no owner and every model.
pub fn insert_keys(database_url: &str, keys: std::ops::Range<usize>) -> Result<()> {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let mut sql = String::from("BEGIN;\n");
    let indexes: Vec<usize> = keys.collect();
    for chunk in indexes.chunks(1000) {
        sql.push_str(
            "INSERT INTO virtual_keys (token, key_name, key_alias, user_id, team_id, models, \
             blocked, expires, metadata, created_at, updated_at, changed_version) VALUES ",
        );
        for (n, index) in chunk.iter().enumerate() {
            let token = hex::encode(Sha256::digest(bulk_key(*index).as_bytes()));
            let separator = if n == 0 { "" } else { "," };
            write!(
                sql,
                "{separator}('{token}', 'sk-...{:04}', 'bulk-{index}', NULL, NULL, '[]', FALSE, \
                 NULL, '{{}}', {now}, {now}, {now})",
                index % 10_000
            )?;
        }
        sql.push_str(";\n");
    }
    write!(
        sql,
        "UPDATE state_version SET version = CASE WHEN version + 1 > {now} THEN version + 1 \
         ELSE {now} END WHERE id = 1;\nCOMMIT;\n"
    )?;
    let script = std::env::temp_dir().join(format!(
        "tollgate-keys-{}-{}.sql",
        std::process::id(),
        free_port()?
    ));
    std::fs::write(&script, sql)?;
    let output = if database_url.starts_with("sqlite:") {
        let path = database_url
            .trim_start_matches("sqlite:")
            .trim_start_matches("//")
            .split('?')
            .next()
            .unwrap_or_default();
        Command::new("sqlite3")
            .arg(path)
            .arg(format!(".read {}", script.display()))
            .output()
    } else {
        Command::new("psql")
            .arg(database_url)
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&script)
            .output()
    };
    let _ = std::fs::remove_file(&script);
    let output = output.context("running sqlite3 or psql (both are needed for the tests)")?;
    anyhow::ensure!(
        output.status.success(),
        "inserting keys: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The value of the counter whose name ends with `name` in Envoy's plain `/stats` (its
/// prefix differs between the Wasm filter and the native module); 0 when absent.
pub fn counter(admin_url: &str, name: &str) -> Result<u64> {
    let stats = reqwest::blocking::get(format!("{admin_url}/stats?filter={name}"))?.text()?;
    Ok(stats
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(stat, _)| stat.ends_with(name))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum())
}

fn psql(url: &str, sql: &str) -> Result<()> {
    psql_output(url, sql).map(drop)
}

/// What `psql` prints for `sql` on the database at `url`.
pub fn psql_output(url: &str, sql: &str) -> Result<String> {
    let output = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Faults per deployment on the mock (`/_mock/faults`, `/_mock/calls`; see
/// tests/mock/README.md): a deployment is the upstream model its requests name.
impl Mock {
    /// Makes the mock answer requests for `model` (the upstream model a deployment sends:
    /// `model` in the body, Azure's deployment, the model in Gemini's, Vertex's or Bedrock's
    /// path) with `fault`, e.g. `json!({"status": 429})`, `json!({"delay_ms": 3000})`,
    /// `json!({"reset": true})`: for the next `times` such requests, or until
    /// [`Mock::clear_faults`] with `None`.
    pub fn set_fault(
        &self,
        model: &str,
        fault: serde_json::Value,
        times: Option<u64>,
    ) -> Result<()> {
        let mut rule = serde_json::json!({"model": model, "fault": fault});
        if let Some(times) = times {
            rule["times"] = times.into();
        }
        let response = client()
            .post(format!("{}/_mock/faults", self.url))
            .json(&rule)
            .send()?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "the mock refused the fault rule {rule}: {status} {}",
                response.text().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) -> Result<()> {
        client()
            .delete(format!("{}/_mock/faults", self.url))
            .send()?
            .error_for_status()?;
        Ok(())
    }

    /// How many chat, completions and embeddings requests the mock received, per upstream
    /// model (faulted ones included).
    pub fn calls(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        Ok(reqwest::blocking::get(format!("{}/_mock/calls", self.url))?
            .error_for_status()?
            .json()?)
    }

    /// How many requests the mock received for `model` (0 when none).
    pub fn calls_for(&self, model: &str) -> Result<u64> {
        Ok(self.calls()?.get(model).copied().unwrap_or(0))
    }

    /// Resets the counts of [`Mock::calls`].
    pub fn reset_calls(&self) -> Result<()> {
        client()
            .delete(format!("{}/_mock/calls", self.url))
            .send()?
            .error_for_status()?;
        Ok(())
    }
}
