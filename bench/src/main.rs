//! `make bench`: what Tollgate costs on top of Envoy, measured side by side in one run, with
//! the results written to BENCHMARKS.md.
//!
//! Starts the mock provider, a bare Envoy routing to it (bench/envoy-bare.yaml) and Envoy
//! with the Tollgate filter + control plane (`tollgate serve` and `tollgate envoy-config`),
//! all on 127.0.0.1, and measures latency at a fixed rate, throughput at fixed concurrency,
//! Envoy's resident memory, and the filter's instructions per request (callgrind on
//! `translate_path`). `bench/run.sh` installs what it needs and builds everything first.
//!
//! Environment: `BENCH_SECONDS` (throughput run length, default 8), `BENCH_LATENCY_SECONDS`
//! (default 4), `BENCH_ROUNDS` (interleaved throughput rounds, default 4), `BENCH_RATE` (default 500), `BENCH_KEYS` (default 10000), `BENCH_OUT`
//! (default BENCHMARKS.md in the repository root), `BENCH_PERF_DIR` (a perf profile of each
//! throughput run's Envoy goes there), `BENCH_ONLY=throughput` (a quick look while
//! optimising: only the 1 KB throughput runs, printed, BENCHMARKS.md left alone; with
//! `BENCH_PATHS=NativeOpenAi,TollgateBedrock,...` only those paths (any of `PATHS`, by their
//! `Route` names) and bare Envoy, with the bare Envoy on the provider's request for a Gemini
//! or Bedrock path), `BENCH_ONLY=latency` (the same for the 1 KB latency runs, buffered and
//! streamed: with `BENCH_PATHS`, those paths, their direct and bare-Envoy baselines and, for
//! a routing path, the path it is read against),
//! `BENCH_VERBOSE=1` (each throughput round's req/s, p99 and slowest request, on stderr),
//! `BENCH_ONLY=scale` (only the snapshot-scale rows, printed: memory with `BENCH_SCALE_KEYS`
//! keys, default 100000, and the time a one-key change takes to reach the filter).

mod load;
mod scale;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use load::{percentile, RequestSpec, RunResult};

const MASTER_KEY: &str = "sk-bench-master";
const DEPLOYMENTS: usize = 1_000;
const ENVOY_CPU: &str = "0";
const LOAD_CPU: &str = "1";
const THROUGHPUT_CONNECTIONS: usize = 32;
const LATENCY_CONNECTIONS: usize = 8;
const STREAM_CHUNKS: usize = 200;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn start(name: &str, mut command: Command, log: &Path) -> Result<Proc> {
        let log_file = std::fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if text.is_empty() {
                text = String::from_utf8_lossy(&o.stderr).trim().to_string();
            }
            text
        })
        .unwrap_or_else(|| "unknown".into())
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After "pid (comm)": state is field 3, utime 14, stime 15 (1-based, whole line).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) jiffies of one CPU from /proc/stat.
fn cpu_jiffies(cpu: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&format!("cpu{cpu}")))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out waiting for {what}")
}

// ---------------------------------------------------------------- request bodies

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

const SYSTEM: &str = "You are a helpful assistant. Answer concisely and cite the relevant section of the provided context when you can.";

/// A chat request of about `size` bytes (the user message is padded). Non-streaming
/// requests ask the mock for a 30-word answer, streams for 200 chunks, so the answer does not
/// grow with the prompt (the mock otherwise echoes it).
fn chat_body(api: Api, model: &str, scenario: Scenario) -> Bytes {
    let Scenario {
        size,
        stream,
        paced,
    } = scenario;
    let directive = if paced {
        format!("mock:chunks={PACED_CHUNKS} mock:delay_ms=1")
    } else if stream {
        format!("mock:chunks={STREAM_CHUNKS}")
    } else {
        "mock:chunks=30".to_string()
    };
    let head = match api {
        Api::OpenAi => format!(
            r#"{{"model":"{model}","messages":[{{"role":"system","content":"{SYSTEM}"}},{{"role":"user","content":"{directive} "#
        ),
        Api::Anthropic => format!(
            r#"{{"model":"{model}","system":"{SYSTEM}","messages":[{{"role":"user","content":"{directive} "#
        ),
    };
    let tail = match (api, stream) {
        (Api::OpenAi, true) => r#""}],"temperature":0.7,"max_tokens":512,"stream":true}"#,
        (Api::OpenAi, false) => r#""}],"temperature":0.7,"max_tokens":512}"#,
        (Api::Anthropic, true) => r#""}],"temperature":0.7,"max_tokens":512,"stream":true}"#,
        (Api::Anthropic, false) => r#""}],"temperature":0.7,"max_tokens":512}"#,
    };
    let filler_len = size.saturating_sub(head.len() + tail.len());
    let words = "the quick brown fox jumps over the lazy dog while the gateway counts tokens ";
    let filler: String = words.chars().cycle().take(filler_len).collect();
    Bytes::from(format!("{head}{filler}{tail}"))
}

/// The Gemini and Bedrock deployments of the bench config, for their baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Gemini,
    Bedrock,
}

/// The Gemini key the mock requires (`--gemini-key`) and the gateway's config injects.
const GEMINI_KEY: &str = "sk-mock-gemini";
const GEMINI_MODEL: &str = "gemini-2.5-flash";
/// The AWS key the mock accepts (`--aws-access-key-id`, `--aws-secret-access-key`) and the
/// bedrock deployment signs with.
const AWS_ACCESS_KEY_ID: &str = "AKIDBENCHMOCK";
const AWS_SECRET_ACCESS_KEY: &str = "bench-mock-secret-access-key";
const AWS_REGION: &str = "us-east-1";
const BEDROCK_MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// A provider request as the filter sends it: path (with query), headers, body.
struct UpstreamRequest {
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// What the filter sends a Gemini or Bedrock deployment for this scenario's chat request
/// (path, provider headers, body), for the baselines that send it straight to the mock or
/// through bare Envoy, so both sides make the mock do the same work. tollgate-core plans it
/// for a one-deployment snapshot whose api_base is `authority`, the address it goes to:
/// Bedrock's SigV4 signature covers the host and the time, and is made now (the mock, as
/// AWS, accepts it for 5 minutes; every run asks for its request afresh).
fn upstream_request(
    upstream: Upstream,
    authority: SocketAddr,
    scenario: Scenario,
) -> Result<UpstreamRequest> {
    use tollgate_core::proto;
    let (kind, model, provider_name, api_key, settings) = match upstream {
        Upstream::Gemini => (
            proto::ProviderKind::Gemini,
            GEMINI_MODEL,
            "gemini",
            GEMINI_KEY,
            None,
        ),
        Upstream::Bedrock => (
            proto::ProviderKind::Bedrock,
            BEDROCK_MODEL,
            "bedrock",
            "",
            Some(proto::deployment::ProviderSettings::Bedrock(
                proto::BedrockSettings {
                    region: AWS_REGION.to_string(),
                    credentials: Some(proto::AwsCredentials {
                        access_key_id: AWS_ACCESS_KEY_ID.to_string(),
                        secret_access_key: AWS_SECRET_ACCESS_KEY.to_string(),
                        session_token: String::new(),
                    }),
                },
            )),
        ),
    };
    let snapshot = proto::Snapshot {
        version: 1,
        deployments: vec![proto::Deployment {
            id: "bench-baseline".to_string(),
            model_name: "baseline".to_string(),
            provider: kind as i32,
            provider_name: provider_name.to_string(),
            upstream_model: model.to_string(),
            api_base: format!("http://{authority}"),
            api_key: api_key.to_string(),
            provider_settings: settings,
            ..Default::default()
        }],
        ..Default::default()
    };
    let state = tollgate_core::State::from_snapshot(snapshot).0;
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let plan = tollgate_core::gateway::plan_chat_request(
        &state,
        &chat_body(Api::OpenAi, "baseline", scenario),
        &tollgate_core::providers::TranslateContext { now_unix },
    )
    .map_err(|error| anyhow!("planning the {upstream:?} baseline request: {error}"))?;
    let mut headers = Vec::new();
    for (name, value) in &plan.headers {
        // The load generator sends `content-type: application/json` on every request.
        if *name == "content-type" {
            if value != "application/json" {
                bail!("the {upstream:?} request has content-type {value}");
            }
            continue;
        }
        headers.push((name.to_string(), value.clone()));
    }
    Ok(UpstreamRequest {
        path: plan.path,
        headers,
        body: Bytes::from(plan.body),
    })
}

// ---------------------------------------------------------------- the stack

struct Stack {
    mock_port: u16,
    bare_port: u16,
    dfp_port: u16,
    tollgate_port: u16,
    bare_envoy: Proc,
    dfp_envoy: Proc,
    floor_noop: BenchEnvoy,
    floor_body_routing: BenchEnvoy,
    /// `BENCH_FLOOR_STEPS` (quick mode only).
    extra_floors: Vec<(String, BenchEnvoy)>,
    buffer_limit: String,
    tollgate_envoy: Proc,
    /// Envoy with Tollgate's native module (`tollgate envoy-config --native`), on the same
    /// control plane.
    native_port: u16,
    native_envoy: Proc,
    /// The admin ports of the Wasm filter's and the native module's Envoys (their stats).
    tollgate_admin: u16,
    native_admin: u16,
    /// A key with a budget and rpm and tpm limits, all far from spent (the limited paths).
    limited_key: String,
    _control_plane: Proc,
    _mock: Proc,
}

/// The limited paths' key: a budget, an rpm and a tpm limit, none of which the bench comes
/// near, so every request is checked against all three (and priced) and admitted.
const LIMITED_KEY_FIELDS: &str = r#"{"key_alias":"bench-limited","max_budget":1000000000,"rpm_limit":1000000000,"tpm_limit":1000000000000}"#;

fn binary(name: &str) -> PathBuf {
    std::env::var_os("TOLLGATE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release"))
        .join(name)
}

fn envoy_binary() -> PathBuf {
    std::env::var_os("TOLLGATE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("envoy"))
}

/// An Envoy started from one of the bench/*.yaml templates.
struct BenchEnvoy {
    port: u16,
    admin: u16,
    envoy: Proc,
}

impl BenchEnvoy {
    /// Renders bench/`<template>`.yaml with fresh listener and admin ports and the given
    /// `{{PLACEHOLDER}}` values, and starts Envoy on it; `name` names its files in `dir`.
    fn start(
        dir: &Path,
        template: &str,
        name: &str,
        placeholders: &[(&str, &str)],
    ) -> Result<BenchEnvoy> {
        let (port, admin) = (free_port()?, free_port()?);
        let mut yaml = std::fs::read_to_string(root().join(format!("bench/{template}.yaml")))?
            .replace("{{ADMIN_PORT}}", &admin.to_string())
            .replace("{{LISTEN_PORT}}", &port.to_string());
        for (placeholder, value) in placeholders {
            yaml = yaml.replace(placeholder, value);
        }
        let bootstrap = dir.join(format!("envoy-{name}.yaml"));
        std::fs::write(&bootstrap, yaml)?;
        let envoy = Proc::start(
            &format!("envoy ({name})"),
            envoy_command(&bootstrap),
            &dir.join(format!("envoy-{name}.log")),
        )?;
        Ok(BenchEnvoy { port, admin, envoy })
    }

    /// Envoy running bench/floor-filter with `steps` as its configuration.
    fn floor(dir: &Path, steps: &str, mock_port: u16, buffer_limit: &str) -> Result<BenchEnvoy> {
        let wasm = floor_wasm_path().display().to_string();
        BenchEnvoy::start(
            dir,
            "envoy-floor",
            &format!("floor-{}", steps.replace([',', ' '], "_")),
            &[
                ("{{MOCK_PORT}}", &mock_port.to_string()),
                ("{{BUFFER_LIMIT_BYTES}}", buffer_limit),
                ("{{FLOOR_MODE}}", steps),
                ("{{FLOOR_WASM_PATH}}", &wasm),
            ],
        )
    }
}

impl BenchEnvoy {
    /// Envoy with Tollgate's filter (`native`: its native module) from `tollgate envoy-config`,
    /// for the control plane on `grpc`; also returns the rendered bootstrap. `name` names its
    /// files in `dir` and its Envoy node.
    fn tollgate(
        dir: &Path,
        name: &str,
        grpc: u16,
        config: Option<&Path>,
        native: bool,
    ) -> Result<(BenchEnvoy, String)> {
        Self::tollgate_with_http(dir, name, (grpc, None), config, native)
    }

    /// [`Self::tollgate`], routing the management API to the control plane's HTTP port
    /// `http` when given (else its default).
    fn tollgate_with_http(
        dir: &Path,
        name: &str,
        (grpc, http): (u16, Option<u16>),
        config: Option<&Path>,
        native: bool,
    ) -> Result<(BenchEnvoy, String)> {
        let (port, admin) = (free_port()?, free_port()?);
        let node = format!("bench-{name}");
        let yaml = tollgate_envoy_config(port, admin, (grpc, http), &node, config, native)?;
        let bootstrap = dir.join(format!("envoy-{name}.yaml"));
        std::fs::write(&bootstrap, &yaml)?;
        let envoy = Proc::start(
            &format!("envoy ({name})"),
            envoy_command(&bootstrap),
            &dir.join(format!("envoy-{name}.log")),
        )?;
        Ok((BenchEnvoy { port, admin, envoy }, yaml))
    }

    /// Envoy running bench/native-floor, the empty native (dynamic-module) filter.
    fn native_floor(dir: &Path, mock_port: u16, buffer_limit: &str) -> Result<BenchEnvoy> {
        BenchEnvoy::start(
            dir,
            "envoy-native-floor",
            "native-floor",
            &[
                ("{{MOCK_PORT}}", &mock_port.to_string()),
                ("{{BUFFER_LIMIT_BYTES}}", buffer_limit),
            ],
        )
    }
}

/// Idle memory of Envoy with the empty native filter, started and stopped for the reading.
async fn native_floor_rss(dir: &Path, stack: &Stack) -> Result<u64> {
    let native = BenchEnvoy::native_floor(dir, stack.mock_port, &stack.buffer_limit)?;
    wait_until("native-floor Envoy", Duration::from_secs(60), || {
        envoy_ready(native.admin)
    })
    .await?;
    // The filter must really be in the chain: a request through it reaches the mock.
    let mut spec = Route::BareOpenAi.spec(stack, ONE_K, MASTER_KEY)?;
    spec.addr = local(native.port);
    let mut sender = load::connect(spec.addr).await?;
    load::send_one(&mut sender, &spec, Instant::now())
        .await
        .context("request through the native-floor Envoy")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(vm_rss_kb(native.envoy.pid()).unwrap_or(0))
}

fn floor_wasm_path() -> PathBuf {
    std::env::var_os("TOLLGATE_FLOOR_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip1/release/tollgate_floor_filter.wasm"))
}

fn wasm_path() -> PathBuf {
    std::env::var_os("TOLLGATE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip1/release/tollgate_filter.wasm"))
}

/// The model group of the routing paths: three deployments and a fallback, so every request
/// is relayed through Envoy's attempts route and listener (none fails).
const GROUP_MODEL: &str = "gpt-group";
/// `GROUP_MODEL`'s deployments' upstream models (distinct: three deployments to the mock).
const GROUP_UPSTREAMS: [&str; 3] = ["mock-group-1", "mock-group-2", "mock-group-3"];
/// The model group of the fallback paths: one deployment, which the mock always answers
/// 429, falling back to `gpt-mock`.
const FALLBACK_MODEL: &str = "gpt-fallback";
/// `FALLBACK_MODEL`'s deployment's upstream model: the only one the mock fails.
const FAILING_UPSTREAM: &str = "mock-fallback-429";

fn bench_config(mock_port: u16) -> String {
    let mut config = String::from("model_list:\n");
    let base = format!("http://127.0.0.1:{mock_port}");
    let _ = write!(
        config,
        "- model_name: gpt-mock\n  litellm_params:\n    model: openai/mock-gpt-4o\n    api_base: {base}/v1\n    api_key: sk-mock-openai\n\
         - model_name: claude-mock\n  litellm_params:\n    model: anthropic/claude-mock-sonnet\n    api_base: {base}\n    api_key: sk-mock-anthropic\n\
         - model_name: gpt-priced\n  litellm_params:\n    model: openai/mock-gpt-4o\n    api_base: {base}/v1\n    api_key: sk-mock-openai\n    input_cost_per_token: 0.0000025\n    output_cost_per_token: 0.00001\n\
         - model_name: gemini-mock\n  litellm_params:\n    model: gemini/{GEMINI_MODEL}\n    api_base: {base}\n    api_key: {GEMINI_KEY}\n\
         - model_name: bedrock-mock\n  litellm_params:\n    model: bedrock/{BEDROCK_MODEL}\n    api_base: {base}\n    aws_region_name: {AWS_REGION}\n    aws_access_key_id: {AWS_ACCESS_KEY_ID}\n    aws_secret_access_key: {AWS_SECRET_ACCESS_KEY}\n"
    );
    // The routing paths' groups: `gpt-group`'s three deployments (each its own upstream
    // model, so the mock tells them apart) and `gpt-fallback`'s one, whose upstream model
    // the mock fails with 429 (`FAILING_UPSTREAM`, set by `Stack::start`). Its num_retries
    // 0 makes the fallback the only other attempt; a group's only deployment never cools
    // down, so every request tries it first.
    for upstream in GROUP_UPSTREAMS {
        let _ = write!(
            config,
            "- model_name: {GROUP_MODEL}\n  litellm_params:\n    model: openai/{upstream}\n    api_base: {base}/v1\n    api_key: sk-mock-openai\n"
        );
    }
    let _ = write!(
        config,
        "- model_name: {FALLBACK_MODEL}\n  litellm_params:\n    model: openai/{FAILING_UPSTREAM}\n    api_base: {base}/v1\n    api_key: sk-mock-openai\n    num_retries: 0\n"
    );
    let named = 5 + GROUP_UPSTREAMS.len() + 1;
    // The named deployments above, then fillers up to DEPLOYMENTS.
    for i in 0..DEPLOYMENTS - named {
        let _ = write!(
            config,
            "- model_name: bench-model-{i}\n  litellm_params:\n    model: openai/bench-upstream-{i}\n    api_base: {base}/v1\n    api_key: sk-mock-openai-{i}\n"
        );
    }
    // Both routing groups fall back to `gpt-mock` (only `gpt-fallback` ever needs to).
    let _ = write!(
        config,
        "router_settings:\n  fallbacks: [{{{GROUP_MODEL}: [gpt-mock]}}, {{{FALLBACK_MODEL}: [gpt-mock]}}]\n"
    );
    let _ = write!(config, "general_settings:\n  master_key: {MASTER_KEY}\n");
    config
}

fn envoy_command(bootstrap: &Path) -> Command {
    let mut command = Command::new("taskset");
    command
        // Where the native floor's lib<name>.so is (only bench/envoy-native-floor.yaml loads it).
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", binary(""))
        .args(["-c", ENVOY_CPU])
        .arg(envoy_binary())
        .arg("-c")
        .arg(bootstrap)
        .args(["--concurrency", "1", "--use-dynamic-base-id", "--log-level"])
        // BENCH_ENVOY_LOG=info shows the filter's own log (snapshots, linear memory).
        .arg(std::env::var("BENCH_ENVOY_LOG").unwrap_or_else(|_| "warn".to_string()));
    command
}

async fn envoy_ready(admin_port: u16) -> bool {
    matches!(
        load::call(local(admin_port), "GET", "/ready", &[], Bytes::new()).await,
        Ok((200, _))
    )
}

async fn models_listed(port: u16, key: &str) -> bool {
    let auth = format!("Bearer {key}");
    match load::call(
        local(port),
        "GET",
        "/v1/models",
        &[("authorization", auth.as_str())],
        Bytes::new(),
    )
    .await
    {
        Ok((200, body)) => memchr::memmem::find(&body, b"\"gpt-mock\"").is_some(),
        _ => false,
    }
}

/// Requests per routing path and scenario in [`check_routing`]: with three deployments
/// chosen at random, all twelve land on one with probability 3 / 3^12.
const ROUTING_CHECK_REQUESTS: u64 = 12;

/// The mock's requests per upstream model since `DELETE /_mock/calls`.
async fn mock_calls(mock_port: u16) -> Result<BTreeMap<String, u64>> {
    let (status, body) =
        load::call(local(mock_port), "GET", "/_mock/calls", &[], Bytes::new()).await?;
    if status != 200 {
        bail!("GET /_mock/calls: HTTP {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}

/// The stat of the attempts cluster that counts retries Envoy refused because its circuit
/// breaker's `max_retries` (concurrent retries) was reached: each is a relayed request
/// answered with its failed attempt instead of the next attempt.
const RETRY_OVERFLOW_STAT: &str = "cluster.tollgate_attempts.upstream_rq_retry_overflow";

/// [`RETRY_OVERFLOW_STAT`] of the Envoy whose admin port is `admin`; `None` when it cannot
/// be read.
async fn retry_overflows(admin: u16) -> Option<u64> {
    let (status, body) = load::call(
        local(admin),
        "GET",
        "/stats?filter=upstream_rq_retry_overflow",
        &[],
        Bytes::new(),
    )
    .await
    .ok()?;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body).lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == RETRY_OVERFLOW_STAT)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Checks, from the mock's request counts, that the routing paths take the attempts their
/// labels say: a `gpt-group` request reaches exactly one of the group's upstream models
/// (several of them over the requests), a `gpt-fallback` request the failing model once and
/// then `gpt-mock`'s, and nothing else.
async fn check_routing(stack: &Stack) -> Result<()> {
    let n = ROUTING_CHECK_REQUESTS;
    for scenario in [ONE_K, ONE_K_STREAM] {
        for path in [
            Route::TollgateGroupOpenAi,
            Route::NativeGroupOpenAi,
            Route::TollgateFallbackOpenAi,
            Route::NativeFallbackOpenAi,
        ] {
            let what = || format!("routing check: {} ({})", path.label(), scenario.label());
            load::call(
                local(stack.mock_port),
                "DELETE",
                "/_mock/calls",
                &[],
                Bytes::new(),
            )
            .await?;
            let spec = path.spec(stack, scenario, MASTER_KEY)?;
            let mut sender = load::connect(spec.addr).await?;
            for _ in 0..n {
                load::send_one(&mut sender, &spec, Instant::now())
                    .await
                    .with_context(what)?;
            }
            let calls = mock_calls(stack.mock_port).await?;
            let fine = if matches!(path, Route::TollgateGroupOpenAi | Route::NativeGroupOpenAi) {
                let used = GROUP_UPSTREAMS
                    .iter()
                    .filter(|upstream| calls.contains_key(**upstream))
                    .count();
                calls
                    .keys()
                    .all(|model| GROUP_UPSTREAMS.contains(&model.as_str()))
                    && calls.values().sum::<u64>() == n
                    && used >= 2
            } else {
                calls
                    == BTreeMap::from([
                        (FAILING_UPSTREAM.to_string(), n),
                        ("mock-gpt-4o".to_string(), n),
                    ])
            };
            if !fine {
                bail!("{}: {n} requests reached the mock as {calls:?}", what());
            }
        }
    }
    Ok(())
}

impl Stack {
    /// The Envoy a path goes through (none for the direct paths).
    fn envoy_pid(&self, path: Route) -> Option<u32> {
        match path {
            Route::DirectOpenAi
            | Route::DirectAnthropic
            | Route::DirectGemini
            | Route::DirectBedrock => None,
            Route::BareOpenAi | Route::BareAnthropic | Route::BareGemini | Route::BareBedrock => {
                Some(self.bare_envoy.pid())
            }
            Route::DfpOpenAi => Some(self.dfp_envoy.pid()),
            Route::FloorNoopOpenAi => Some(self.floor_noop.envoy.pid()),
            Route::FloorBodyRoutingOpenAi => Some(self.floor_body_routing.envoy.pid()),
            Route::ExtraFloor(i) => self.extra_floors.get(i).map(|(_, floor)| floor.envoy.pid()),
            Route::TollgateOpenAi
            | Route::TollgateAnthropic
            | Route::TollgateGemini
            | Route::TollgateBedrock
            | Route::TollgateLimitedOpenAi
            | Route::TollgateGroupOpenAi
            | Route::TollgateFallbackOpenAi => Some(self.tollgate_envoy.pid()),
            Route::NativeOpenAi
            | Route::NativeAnthropic
            | Route::NativeGemini
            | Route::NativeBedrock
            | Route::NativeLimitedOpenAi
            | Route::NativeGroupOpenAi
            | Route::NativeFallbackOpenAi => Some(self.native_envoy.pid()),
        }
    }

    async fn start(dir: &Path) -> Result<Stack> {
        // The mock: one tokio thread, on the load generator's CPU (inherited affinity).
        let mock_port = free_port()?;
        let mut mock_cmd = Command::new(binary("tollgate-mock"));
        mock_cmd
            .args(["--port", &mock_port.to_string(), "--threads", "1"])
            // Gemini's key and Bedrock's AWS key are checked (SigV4 verified per request).
            .args(["--gemini-key", GEMINI_KEY])
            .args(["--aws-access-key-id", AWS_ACCESS_KEY_ID])
            .args(["--aws-secret-access-key", AWS_SECRET_ACCESS_KEY]);
        let mock = Proc::start("tollgate-mock", mock_cmd, &dir.join("mock.log"))?;
        wait_until("the mock", Duration::from_secs(20), || async {
            matches!(
                load::call(local(mock_port), "GET", "/_mock/health", &[], Bytes::new()).await,
                Ok((200, _))
            )
        })
        .await?;
        // The fallback paths' deployment fails at once, every time; no other upstream model
        // has a fault.
        let fault = format!(r#"{{"model":"{FAILING_UPSTREAM}","fault":{{"status":429}}}}"#);
        match load::call(
            local(mock_port),
            "POST",
            "/_mock/faults",
            &[("content-type", "application/json")],
            Bytes::from(fault),
        )
        .await?
        {
            (200, _) => {}
            (status, body) => bail!(
                "POST /_mock/faults: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        }

        // The control plane, also on the load generator's CPU.
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, bench_config(mock_port))?;
        let grpc_port = free_port()?;
        let mut cp_cmd = Command::new(binary("tollgate"));
        cp_cmd
            .arg("serve")
            // The bench config holds provider keys, which serve stores only encrypted.
            .env("LITELLM_SALT_KEY", "tollgate-bench-salt-key")
            .env_remove("TOLLGATE_SALT_KEY")
            .arg("--config")
            .arg(&config_path)
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
            .arg("--database-url")
            .arg(format!(
                "sqlite://{}?mode=rwc",
                dir.join("tollgate.db").display()
            ))
            .current_dir(dir);
        let control_plane = Proc::start("tollgate serve", cp_cmd, &dir.join("control-plane.log"))?;
        wait_until("the control plane", Duration::from_secs(60), || async {
            tokio::net::TcpStream::connect(local(grpc_port))
                .await
                .is_ok()
        })
        .await
        .with_context(|| {
            std::fs::read_to_string(dir.join("control-plane.log")).unwrap_or_default()
        })?;

        // Envoy + filter, and Envoy + native module, from `tollgate envoy-config`.
        let (tollgate, tollgate_yaml) =
            BenchEnvoy::tollgate(dir, "tollgate", grpc_port, Some(&config_path), false)?;
        let (tollgate_port, tollgate_admin, tollgate_envoy) =
            (tollgate.port, tollgate.admin, tollgate.envoy);
        let (native, _) = BenchEnvoy::tollgate(dir, "native", grpc_port, Some(&config_path), true)?;
        let (native_port, native_admin, native_envoy) = (native.port, native.admin, native.envoy);
        let buffer_limit = tollgate_yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix("per_connection_buffer_limit_bytes:"))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| {
                anyhow!("no per_connection_buffer_limit_bytes in the Tollgate bootstrap")
            })?;

        let mock_port_text = mock_port.to_string();
        let bare = BenchEnvoy::start(
            dir,
            "envoy-bare",
            "bare",
            &[
                ("{{MOCK_PORT}}", &mock_port_text),
                ("{{BUFFER_LIMIT_BYTES}}", &buffer_limit),
            ],
        )?;
        let (bare_port, bare_admin, bare_envoy) = (bare.port, bare.admin, bare.envoy);
        // Envoy with the dynamic forward proxy but no filter.
        let dfp = BenchEnvoy::start(
            dir,
            "envoy-dfp",
            "dfp",
            &[("{{BUFFER_LIMIT_BYTES}}", &buffer_limit)],
        )?;
        let (dfp_port, dfp_admin, dfp_envoy) = (dfp.port, dfp.admin, dfp.envoy);

        let floor_noop = BenchEnvoy::floor(dir, "noop", mock_port, &buffer_limit)?;
        let floor_body_routing = BenchEnvoy::floor(dir, "body-routing", mock_port, &buffer_limit)?;

        let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        for (mode, admin) in [
            ("noop", floor_noop.admin),
            ("body-routing", floor_body_routing.admin),
        ] {
            wait_until("floor-filter Envoy", Duration::from_secs(60), || {
                envoy_ready(admin)
            })
            .await
            .with_context(|| log(&format!("envoy-floor-{mode}.log")))?;
        }
        wait_until("bare Envoy", Duration::from_secs(60), || {
            envoy_ready(bare_admin)
        })
        .await
        .with_context(|| log("envoy-bare.log"))?;
        wait_until("DFP Envoy", Duration::from_secs(60), || {
            envoy_ready(dfp_admin)
        })
        .await
        .with_context(|| log("envoy-dfp.log"))?;
        wait_until("Tollgate Envoy", Duration::from_secs(60), || {
            envoy_ready(tollgate_admin)
        })
        .await
        .with_context(|| log("envoy-tollgate.log"))?;
        wait_until("the first snapshot", Duration::from_secs(60), || {
            models_listed(tollgate_port, MASTER_KEY)
        })
        .await
        .with_context(|| log("envoy-tollgate.log"))?;
        wait_until("Tollgate native Envoy", Duration::from_secs(60), || {
            envoy_ready(native_admin)
        })
        .await
        .with_context(|| log("envoy-native.log"))?;
        wait_until(
            "the native module's first snapshot",
            Duration::from_secs(60),
            || models_listed(native_port, MASTER_KEY),
        )
        .await
        .with_context(|| log("envoy-native.log"))?;
        // The limited paths' key, through the gateway's management routes.
        let limited = RequestSpec {
            addr: local(tollgate_port),
            host: local(tollgate_port).to_string(),
            path: "/key/generate".to_string(),
            headers: vec![("authorization".to_string(), format!("Bearer {MASTER_KEY}"))],
            body: Bytes::from_static(LIMITED_KEY_FIELDS.as_bytes()),
            stream: false,
        };
        let mut sender = load::connect(local(tollgate_port)).await?;
        let limited_key = key_request(&mut sender, &limited)
            .await
            .context("the limited paths' key")?;
        for port in [tollgate_port, native_port] {
            wait_until("the limited key", Duration::from_secs(60), || {
                let key = limited_key.clone();
                async move { models_listed(port, &key).await }
            })
            .await?;
        }
        Ok(Stack {
            limited_key,
            mock_port,
            bare_port,
            dfp_port,
            tollgate_port,
            bare_envoy,
            dfp_envoy,
            floor_noop,
            floor_body_routing,
            extra_floors: Vec::new(),
            buffer_limit,
            tollgate_envoy,
            native_port,
            native_envoy,
            tollgate_admin,
            native_admin,
            _control_plane: control_plane,
            _mock: mock,
        })
    }
}

/// Envoy's bootstrap for the filter, from `tollgate envoy-config` (with `config`, the
/// settings of that LiteLLM config file; with `native`, the native module instead of Wasm).
fn tollgate_envoy_config(
    port: u16,
    admin: u16,
    (grpc, http): (u16, Option<u16>),
    node_id: &str,
    config: Option<&Path>,
    native: bool,
) -> Result<String> {
    let mut command = Command::new(binary("tollgate"));
    command
        .arg("envoy-config")
        .args(["--port", &port.to_string()])
        .args(["--admin-port", &admin.to_string()])
        .args(["--grpc-port", &grpc.to_string()])
        .args(["--host", "127.0.0.1"])
        .args(["--node-id", node_id]);
    if let Some(http) = http {
        command.args(["--http-port", &http.to_string()]);
    }
    if native {
        command.arg("--native");
    } else {
        command.arg("--wasm").arg(wasm_path());
    }
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let rendered = command.output()?;
    if !rendered.status.success() {
        bail!(
            "tollgate envoy-config failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
    }
    Ok(String::from_utf8(rendered.stdout)?)
}

/// VmRSS of an Envoy with the filter whose control plane never answers (no snapshot).
async fn filter_without_snapshot_rss(dir: &Path) -> Result<u64> {
    let (BenchEnvoy { admin, envoy, .. }, _) =
        BenchEnvoy::tollgate(dir, "no-snapshot", free_port()?, None, false)?;
    wait_until("Envoy without snapshot", Duration::from_secs(60), || {
        envoy_ready(admin)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(vm_rss_kb(envoy.pid()).unwrap_or(0))
}

// ---------------------------------------------------------------- targets (the paths measured)

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    DirectOpenAi,
    BareOpenAi,
    DfpOpenAi,
    FloorNoopOpenAi,
    FloorBodyRoutingOpenAi,
    TollgateOpenAi,
    DirectAnthropic,
    BareAnthropic,
    TollgateAnthropic,
    NativeOpenAi,
    NativeAnthropic,
    /// Gemini's `generateContent` / `streamGenerateContent?alt=sse`, key checked.
    DirectGemini,
    BareGemini,
    TollgateGemini,
    NativeGemini,
    /// Bedrock's `converse` / `converse-stream` (AWS event stream), SigV4 verified.
    DirectBedrock,
    BareBedrock,
    TollgateBedrock,
    NativeBedrock,
    /// `gpt-priced` (priced) with a key that has a budget and rpm and tpm limits.
    TollgateLimitedOpenAi,
    NativeLimitedOpenAi,
    /// `gpt-group` (three deployments and a fallback): relayed through the attempts route and
    /// listener, where the filter translates it for the deployment it chose; no failure.
    TollgateGroupOpenAi,
    NativeGroupOpenAi,
    /// `gpt-fallback`: its one deployment answers 429 at once, then one fallback to
    /// `gpt-mock`, both attempts through the attempts listener.
    TollgateFallbackOpenAi,
    NativeFallbackOpenAi,
    /// `BENCH_ONLY=throughput` with `BENCH_FLOOR_STEPS`: the n-th extra floor-filter Envoy.
    ExtraFloor(usize),
}

// The routing paths come last: the interleaved throughput rounds run the other paths in the
// order they always had.
const PATHS: [Route; 25] = [
    Route::DirectOpenAi,
    Route::BareOpenAi,
    Route::DfpOpenAi,
    Route::FloorNoopOpenAi,
    Route::FloorBodyRoutingOpenAi,
    Route::TollgateOpenAi,
    Route::DirectAnthropic,
    Route::BareAnthropic,
    Route::TollgateAnthropic,
    Route::NativeOpenAi,
    Route::NativeAnthropic,
    Route::DirectGemini,
    Route::BareGemini,
    Route::TollgateGemini,
    Route::NativeGemini,
    Route::DirectBedrock,
    Route::BareBedrock,
    Route::TollgateBedrock,
    Route::NativeBedrock,
    Route::TollgateLimitedOpenAi,
    Route::NativeLimitedOpenAi,
    Route::TollgateGroupOpenAi,
    Route::NativeGroupOpenAi,
    Route::TollgateFallbackOpenAi,
    Route::NativeFallbackOpenAi,
];

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::DirectOpenAi => "mock directly (OpenAI API)",
            Route::BareOpenAi => "bare Envoy -> mock (OpenAI API)",
            Route::DfpOpenAi => "Envoy + dynamic forward proxy, no filter (OpenAI API)",
            Route::FloorNoopOpenAi => "Envoy + empty Wasm filter (OpenAI API)",
            Route::FloorBodyRoutingOpenAi => {
                "Envoy + Wasm filter doing only body-routing host calls (OpenAI API)"
            }
            Route::TollgateOpenAi => "Tollgate `gpt-mock` (OpenAI pass-through)",
            Route::DirectAnthropic => "mock directly (Anthropic API)",
            Route::BareAnthropic => "bare Envoy -> mock (Anthropic API)",
            Route::TollgateAnthropic => "Tollgate `claude-mock` (OpenAI -> Anthropic)",
            Route::NativeOpenAi => "Tollgate native module `gpt-mock` (OpenAI pass-through)",
            Route::NativeAnthropic => "Tollgate native module `claude-mock` (OpenAI -> Anthropic)",
            Route::DirectGemini => "mock directly (Gemini API)",
            Route::BareGemini => "bare Envoy -> mock (Gemini API)",
            Route::TollgateGemini => "Tollgate `gemini-mock` (OpenAI -> Gemini)",
            Route::NativeGemini => "Tollgate native module `gemini-mock` (OpenAI -> Gemini)",
            Route::DirectBedrock => "mock directly (Bedrock Converse, SigV4)",
            Route::BareBedrock => "bare Envoy -> mock (Bedrock Converse, SigV4)",
            Route::TollgateBedrock => "Tollgate `bedrock-mock` (OpenAI -> Bedrock Converse, SigV4)",
            Route::NativeBedrock => {
                "Tollgate native module `bedrock-mock` (OpenAI -> Bedrock Converse, SigV4)"
            }
            Route::TollgateLimitedOpenAi => {
                "Tollgate `gpt-priced`, key with budget + rpm + tpm (OpenAI pass-through)"
            }
            Route::NativeLimitedOpenAi => {
                "Tollgate native module `gpt-priced`, key with budget + rpm + tpm (OpenAI pass-through)"
            }
            Route::TollgateGroupOpenAi => {
                "Tollgate `gpt-group`, 3 deployments + fallback (relayed through the attempts listener)"
            }
            Route::NativeGroupOpenAi => {
                "Tollgate native module `gpt-group`, 3 deployments + fallback (relayed through the attempts listener)"
            }
            Route::TollgateFallbackOpenAi => {
                "Tollgate `gpt-fallback`, 429 then one fallback to `gpt-mock` (attempts listener)"
            }
            Route::NativeFallbackOpenAi => {
                "Tollgate native module `gpt-fallback`, 429 then one fallback to `gpt-mock` (attempts listener)"
            }
            Route::ExtraFloor(_) => "Envoy + Wasm filter doing some host calls (OpenAI API)",
        }
    }

    fn is_bare(self) -> bool {
        matches!(
            self,
            Route::BareOpenAi | Route::BareAnthropic | Route::BareGemini | Route::BareBedrock
        )
    }

    /// The paths straight to the mock, no Envoy.
    fn is_direct(self) -> bool {
        matches!(
            self,
            Route::DirectOpenAi
                | Route::DirectAnthropic
                | Route::DirectGemini
                | Route::DirectBedrock
        )
    }

    /// Paths that only split Tollgate's cost into parts (throughput runs only).
    fn is_breakdown(self) -> bool {
        matches!(
            self,
            Route::DfpOpenAi
                | Route::FloorNoopOpenAi
                | Route::FloorBodyRoutingOpenAi
                | Route::ExtraFloor(_)
        )
    }

    /// The paths relayed through the attempts route and listener.
    fn is_routing(self) -> bool {
        matches!(
            self,
            Route::TollgateGroupOpenAi
                | Route::NativeGroupOpenAi
                | Route::TollgateFallbackOpenAi
                | Route::NativeFallbackOpenAi
        )
    }

    /// What a routing path's cost is read against: `gpt-group`'s, the same build's
    /// `gpt-mock` (straight to the provider); `gpt-fallback`'s, the same build's `gpt-group`
    /// (relayed, one attempt), so the difference is one failed attempt and its fallback.
    fn routing_reference(self) -> Option<Route> {
        match self {
            Route::TollgateGroupOpenAi => Some(Route::TollgateOpenAi),
            Route::NativeGroupOpenAi => Some(Route::NativeOpenAi),
            Route::TollgateFallbackOpenAi => Some(Route::TollgateGroupOpenAi),
            Route::NativeFallbackOpenAi => Some(Route::NativeGroupOpenAi),
            _ => None,
        }
    }

    /// The bare-Envoy and direct paths that carry the same upstream request.
    fn baselines(self) -> (Route, Route) {
        match self {
            Route::TollgateOpenAi
            | Route::NativeOpenAi
            | Route::TollgateLimitedOpenAi
            | Route::NativeLimitedOpenAi
            | Route::TollgateGroupOpenAi
            | Route::NativeGroupOpenAi
            | Route::TollgateFallbackOpenAi
            | Route::NativeFallbackOpenAi
            | Route::BareOpenAi
            | Route::DfpOpenAi
            | Route::FloorNoopOpenAi
            | Route::FloorBodyRoutingOpenAi
            | Route::ExtraFloor(_)
            | Route::DirectOpenAi => (Route::DirectOpenAi, Route::BareOpenAi),
            Route::DirectGemini
            | Route::BareGemini
            | Route::TollgateGemini
            | Route::NativeGemini => (Route::DirectGemini, Route::BareGemini),
            Route::DirectBedrock
            | Route::BareBedrock
            | Route::TollgateBedrock
            | Route::NativeBedrock => (Route::DirectBedrock, Route::BareBedrock),
            Route::DirectAnthropic
            | Route::BareAnthropic
            | Route::TollgateAnthropic
            | Route::NativeAnthropic => (Route::DirectAnthropic, Route::BareAnthropic),
        }
    }

    fn spec(self, stack: &Stack, scenario: Scenario, key: &str) -> Result<RequestSpec> {
        let stream = scenario.stream;
        let openai_headers = vec![(
            "authorization".to_string(),
            "Bearer sk-mock-openai".to_string(),
        )];
        let anthropic_headers = vec![
            ("x-api-key".to_string(), "sk-mock-anthropic".to_string()),
            ("anthropic-version".to_string(), "2023-06-01".to_string()),
        ];
        let gateway_headers = vec![("authorization".to_string(), format!("Bearer {key}"))];
        let (port, path, headers, body) = match self {
            Route::DirectOpenAi
            | Route::BareOpenAi
            | Route::DfpOpenAi
            | Route::FloorNoopOpenAi
            | Route::FloorBodyRoutingOpenAi
            | Route::ExtraFloor(_) => (
                match self {
                    Route::BareOpenAi => stack.bare_port,
                    Route::DfpOpenAi => stack.dfp_port,
                    Route::FloorNoopOpenAi => stack.floor_noop.port,
                    Route::FloorBodyRoutingOpenAi => stack.floor_body_routing.port,
                    Route::ExtraFloor(i) => stack
                        .extra_floors
                        .get(i)
                        .map_or(stack.bare_port, |(_, floor)| floor.port),
                    _ => stack.mock_port,
                },
                "/v1/chat/completions".to_string(),
                openai_headers,
                chat_body(Api::OpenAi, "mock-gpt-4o", scenario),
            ),
            Route::DirectAnthropic | Route::BareAnthropic => (
                if self.is_bare() {
                    stack.bare_port
                } else {
                    stack.mock_port
                },
                "/v1/messages".to_string(),
                anthropic_headers,
                chat_body(Api::Anthropic, "claude-mock-sonnet", scenario),
            ),
            Route::TollgateOpenAi => (
                stack.tollgate_port,
                "/v1/chat/completions".to_string(),
                gateway_headers,
                chat_body(Api::OpenAi, "gpt-mock", scenario),
            ),
            Route::TollgateAnthropic => (
                stack.tollgate_port,
                "/v1/chat/completions".to_string(),
                gateway_headers,
                chat_body(Api::OpenAi, "claude-mock", scenario),
            ),
            Route::NativeOpenAi => (
                stack.native_port,
                "/v1/chat/completions".to_string(),
                gateway_headers,
                chat_body(Api::OpenAi, "gpt-mock", scenario),
            ),
            Route::NativeAnthropic => (
                stack.native_port,
                "/v1/chat/completions".to_string(),
                gateway_headers,
                chat_body(Api::OpenAi, "claude-mock", scenario),
            ),
            Route::DirectGemini | Route::BareGemini | Route::DirectBedrock | Route::BareBedrock => {
                let port = if self.is_bare() {
                    stack.bare_port
                } else {
                    stack.mock_port
                };
                let upstream = if matches!(self, Route::DirectGemini | Route::BareGemini) {
                    Upstream::Gemini
                } else {
                    Upstream::Bedrock
                };
                let request = upstream_request(upstream, local(port), scenario)?;
                (port, request.path, request.headers, request.body)
            }
            Route::TollgateGemini | Route::NativeGemini => (
                if self == Route::TollgateGemini {
                    stack.tollgate_port
                } else {
                    stack.native_port
                },
                "/v1/chat/completions".to_string(),
                gateway_headers,
                chat_body(Api::OpenAi, "gemini-mock", scenario),
            ),
            Route::TollgateBedrock | Route::NativeBedrock => (
                if self == Route::TollgateBedrock {
                    stack.tollgate_port
                } else {
                    stack.native_port
                },
                "/v1/chat/completions".to_string(),
                gateway_headers,
                chat_body(Api::OpenAi, "bedrock-mock", scenario),
            ),
            Route::TollgateLimitedOpenAi | Route::NativeLimitedOpenAi => (
                if self == Route::TollgateLimitedOpenAi {
                    stack.tollgate_port
                } else {
                    stack.native_port
                },
                "/v1/chat/completions".to_string(),
                vec![(
                    "authorization".to_string(),
                    format!("Bearer {}", stack.limited_key),
                )],
                chat_body(Api::OpenAi, "gpt-priced", scenario),
            ),
            Route::TollgateGroupOpenAi
            | Route::NativeGroupOpenAi
            | Route::TollgateFallbackOpenAi
            | Route::NativeFallbackOpenAi => (
                if matches!(
                    self,
                    Route::TollgateGroupOpenAi | Route::TollgateFallbackOpenAi
                ) {
                    stack.tollgate_port
                } else {
                    stack.native_port
                },
                "/v1/chat/completions".to_string(),
                gateway_headers,
                chat_body(
                    Api::OpenAi,
                    if matches!(self, Route::TollgateGroupOpenAi | Route::NativeGroupOpenAi) {
                        GROUP_MODEL
                    } else {
                        FALLBACK_MODEL
                    },
                    scenario,
                ),
            ),
        };
        Ok(RequestSpec {
            addr: local(port),
            // The dynamic-forward-proxy Envoy routes by Host: the mock's address.
            host: if self == Route::DfpOpenAi {
                local(stack.mock_port).to_string()
            } else {
                local(port).to_string()
            },
            path,
            headers,
            body,
            stream,
        })
    }
}

// ---------------------------------------------------------------- measurements

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Scenario {
    size: usize,
    stream: bool,
    /// A paced stream: `PACED_CHUNKS` chunks, `mock:delay_ms=1` before each.
    paced: bool,
}

const PACED_CHUNKS: usize = 20;
const ONE_K: Scenario = Scenario {
    size: 1024,
    stream: false,
    paced: false,
};
const ONE_K_STREAM: Scenario = Scenario {
    size: 1024,
    stream: true,
    paced: false,
};
const ONE_K_PACED: Scenario = Scenario {
    size: 1024,
    stream: true,
    paced: true,
};

impl Scenario {
    fn label(self) -> String {
        let size = if self.size >= 1024 * 100 {
            "~100 KB".to_string()
        } else {
            format!("~{} KB", self.size / 1024)
        };
        if self.paced {
            format!("{size} request, paced stream ({PACED_CHUNKS} chunks, 1 ms apart)")
        } else if self.stream {
            format!("{size} request, stream of {STREAM_CHUNKS} chunks (sent at once)")
        } else {
            format!("{size} request, buffered answer")
        }
    }
}

/// Resource use of one Envoy during a closed-loop run.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    max_rss_kb: u64,
    envoy_cpu_s: f64,
    cpu0_busy: f64,
    cpu1_busy: f64,
}

impl Usage {
    /// Adds another round of the same path.
    fn merge(&mut self, other: Usage, rounds_before: f64) {
        self.max_rss_kb = self.max_rss_kb.max(other.max_rss_kb);
        self.envoy_cpu_s += other.envoy_cpu_s;
        let average = |a: f64, b: f64| (a * rounds_before + b) / (rounds_before + 1.0);
        self.cpu0_busy = average(self.cpu0_busy, other.cpu0_busy);
        self.cpu1_busy = average(self.cpu1_busy, other.cpu1_busy);
    }
}

/// Closed-loop throughput of several paths, interleaved: `rounds` rounds, each running every
/// path for `duration / rounds`. The machines this runs on are shared and their speed drifts
/// by tens of percent within a minute; interleaving puts every path through the same drift,
/// and the ratio to `baseline` is taken per round (the median of the rounds is reported).
struct Interleaved {
    results: BTreeMap<Route, (RunResult, Usage)>,
    /// Per path, the median over rounds of (this path's req/s / baseline's req/s).
    ratio: BTreeMap<Route, f64>,
}

#[allow(clippy::too_many_arguments)]
async fn interleaved_throughput(
    stack: &Stack,
    scenario: Scenario,
    paths: &[Route],
    baseline_of: fn(Route) -> Route,
    rounds: u32,
    duration: Duration,
    ticks_per_s: f64,
    perf_dir: Option<PathBuf>,
) -> Result<Interleaved> {
    let rounds = rounds.max(1);
    let per_round = duration / rounds;
    let warmup = Duration::from_millis(500);
    let mut results: BTreeMap<Route, (RunResult, Usage)> = BTreeMap::new();
    let mut ratios: BTreeMap<Route, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        let mut this_round = BTreeMap::new();
        for &path in paths {
            let spec = path.spec(stack, scenario, MASTER_KEY)?;
            let perf_out = perf_dir.as_ref().map(|d| {
                d.join(format!(
                    "perf.{}.{path:?}.round{round}.data",
                    if scenario.stream {
                        "stream"
                    } else {
                        "buffered"
                    },
                ))
            });
            let (run, usage) = closed_loop_with_usage(
                &spec,
                stack.envoy_pid(path),
                warmup,
                per_round,
                ticks_per_s,
                perf_out,
            )
            .await?;
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                let slowest = run.total_us.last().copied().unwrap_or(0.0) / 1000.0;
                eprintln!(
                    "    round {round} {path:?}: {:.0} req/s, p99 {:.3} ms, slowest {slowest:.3} ms",
                    run.rps(),
                    percentile(&run.total_us, 0.99) / 1000.0,
                );
            }
            this_round.insert(path, run.rps());
            match results.get_mut(&path) {
                Some((all, all_usage)) => {
                    all.merge(run);
                    all_usage.merge(usage, f64::from(round));
                }
                None => {
                    results.insert(path, (run, usage));
                }
            }
        }
        for &path in paths {
            let base = this_round.get(&baseline_of(path)).copied();
            if let (Some(rps), Some(base)) = (this_round.get(&path), base) {
                ratios.entry(path).or_default().push(rps / base);
            }
        }
    }
    let ratio = ratios
        .into_iter()
        .map(|(path, mut values)| {
            values.sort_by(f64::total_cmp);
            (path, percentile(&values, 0.5))
        })
        .collect();
    Ok(Interleaved { results, ratio })
}

async fn closed_loop_with_usage(
    spec: &RequestSpec,
    envoy_pid: Option<u32>,
    warmup: Duration,
    duration: Duration,
    ticks_per_s: f64,
    perf_out: Option<PathBuf>,
) -> Result<(RunResult, Usage)> {
    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = envoy_pid.map(|pid| {
        let stop = Arc::clone(&stop);
        let max_rss = Arc::clone(&max_rss);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = vm_rss_kb(pid) {
                    max_rss.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    // CPU counters over the measured window only.
    let window = tokio::spawn({
        async move {
            tokio::time::sleep(warmup).await;
            // BENCH_PERF_DIR: a perf profile of this Envoy over the measured window.
            let perf = match (perf_out, envoy_pid) {
                (Some(out), Some(pid)) => Command::new("perf")
                    .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
                    .arg(out)
                    .args(["--", "sleep", &format!("{:.3}", duration.as_secs_f64())])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok(),
                _ => None,
            };
            let before = (
                envoy_pid.and_then(cpu_ticks),
                cpu_jiffies(ENVOY_CPU),
                cpu_jiffies(LOAD_CPU),
            );
            tokio::time::sleep(duration).await;
            let after = (
                envoy_pid.and_then(cpu_ticks),
                cpu_jiffies(ENVOY_CPU),
                cpu_jiffies(LOAD_CPU),
            );
            if let Some(mut perf) = perf {
                let _ = perf.wait();
            }
            (before, after)
        }
    });
    let result = load::closed_loop(spec, THROUGHPUT_CONNECTIONS, warmup, duration).await?;
    stop.store(true, Ordering::Relaxed);
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }
    let (before, after) = window.await?;
    let busy = |b: Option<(u64, u64)>, a: Option<(u64, u64)>| match (b, a) {
        (Some((b1, t1)), Some((b2, t2))) if t2 > t1 => (b2 - b1) as f64 / (t2 - t1) as f64,
        _ => f64::NAN,
    };
    let usage = Usage {
        max_rss_kb: max_rss.load(Ordering::Relaxed),
        envoy_cpu_s: match (before.0, after.0) {
            (Some(b), Some(a)) => (a - b) as f64 / ticks_per_s,
            _ => f64::NAN,
        },
        cpu0_busy: busy(before.1, after.1),
        cpu1_busy: busy(before.2, after.2),
    };
    Ok((result, usage))
}

struct KeyOutcome {
    created: usize,
    note: String,
    last_key: Option<String>,
    elapsed: Duration,
}

/// Creates virtual keys with LiteLLM's `POST /key/generate` (master key) through the
/// gateway port, until `total` exist or `budget` runs out.
/// The last key `generate_keys` created (the master key if none), once the snapshot holding
/// it has reached the filter: the snapshot has arrived when the key is accepted.
async fn key_in_snapshot(port: u16, created: &KeyOutcome) -> String {
    let key = created
        .last_key
        .clone()
        .unwrap_or_else(|| MASTER_KEY.to_string());
    let _ = wait_until("the key snapshot", Duration::from_secs(60), || {
        let key = key.clone();
        async move { models_listed(port, &key).await }
    })
    .await;
    key
}

async fn generate_keys(port: u16, already: usize, total: usize, budget: Duration) -> KeyOutcome {
    let start = Instant::now();
    let created = Arc::new(AtomicU64::new(already as u64));
    let next = Arc::new(AtomicU64::new(already as u64));
    let auth = format!("Bearer {MASTER_KEY}");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (created, next, auth) = (Arc::clone(&created), Arc::clone(&next), auth.clone());
        tasks.push(tokio::spawn(async move {
            let mut last: Option<String> = None;
            let mut error: Option<String> = None;
            let Ok(mut sender) = load::connect(local(port)).await else {
                return (last, Some("cannot connect".to_string()));
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i as usize >= total || start.elapsed() > budget {
                    break;
                }
                let body =
                    format!(r#"{{"key_alias":"bench-key-{i}","metadata":{{"bench":true}}}}"#);
                let spec = RequestSpec {
                    addr: local(port),
                    host: local(port).to_string(),
                    path: "/key/generate".to_string(),
                    headers: vec![("authorization".to_string(), auth.clone())],
                    body: Bytes::from(body),
                    stream: false,
                };
                match key_request(&mut sender, &spec).await {
                    Ok(key) => {
                        created.fetch_add(1, Ordering::Relaxed);
                        last = Some(key);
                    }
                    Err(e) => {
                        error = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
            (last, error)
        }));
    }
    let mut last_key = None;
    let mut note = String::new();
    for task in tasks {
        if let Ok((last, error)) = task.await {
            if last.is_some() {
                last_key = last;
            }
            if let (Some(error), true) = (error, note.is_empty()) {
                note = error;
            }
        }
    }
    let created = created.load(Ordering::Relaxed) as usize;
    if created < total && note.is_empty() {
        note = format!("stopped after {:.0} s", budget.as_secs_f64());
    }
    KeyOutcome {
        created,
        note,
        last_key,
        elapsed: start.elapsed(),
    }
}

async fn key_request(sender: &mut load::Sender, spec: &RequestSpec) -> Result<String> {
    use http_body_util::{BodyExt, Full};
    sender.ready().await?;
    let mut builder = hyper::Request::post(spec.path.as_str())
        .header("host", spec.host.as_str())
        .header("content-type", "application/json");
    for (name, value) in &spec.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let response = sender
        .send_request(builder.body(Full::new(spec.body.clone()))?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "POST /key/generate: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    value["key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("POST /key/generate: no \"key\" in {value}"))
}

// ---------------------------------------------------------------- callgrind

/// `8,022,000 (12.17%)  /long/path/read.rs:serde_json::read::f [obj]` ->
/// `8,022,000 (12.17%)  serde_json::read::f  (read.rs)`.
fn short_annotate_line(line: &str) -> String {
    let Some((counts, rest)) = line.split_once(")  ") else {
        return line.to_string();
    };
    let rest = rest.trim();
    let rest = match rest.rfind(" [") {
        Some(at) if rest.ends_with(']') => &rest[..at],
        _ => rest,
    };
    let (file, function) = rest.split_once(':').unwrap_or(("", rest));
    let file = file.rsplit('/').next().unwrap_or(file);
    let mut function: String = function.chars().take(120).collect();
    if function.len() < rest.len() - file.len() - 1 && function.chars().count() == 120 {
        function.push_str("...");
    }
    format!("{counts})  {function}  ({file})")
}

struct Callgrind {
    provider: &'static str,
    mode: &'static str,
    ir_per_request: f64,
    top: Vec<String>,
}

fn run_callgrind(dir: &Path) -> Result<Vec<Callgrind>> {
    let driver = std::env::var_os("TOLLGATE_BENCH_DRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/bench-callgrind/release/translate_path"));
    if !driver.exists() {
        bail!("{} is missing (bench/run.sh builds it)", driver.display());
    }
    let mut results = Vec::new();
    for (provider, mode, n) in [
        ("openai", "buffered", 2000usize),
        ("anthropic", "buffered", 2000),
        ("gemini", "buffered", 2000),
        ("bedrock", "buffered", 2000),
        ("openai", "stream", 200),
        ("anthropic", "stream", 200),
        ("gemini", "stream", 200),
        ("bedrock", "stream", 200),
        // A key with a budget (and a global one): budgets checked, cost booked.
        ("openai", "buffered+budget", 2000),
        ("openai", "stream+budget", 200),
    ] {
        let out = dir.join(format!("callgrind.{provider}.{mode}.out"));
        let status = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg("--collect-atstart=no")
            .arg("--toggle-collect=*run_requests*")
            .arg(&driver)
            .args([provider, mode, &n.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running valgrind")?;
        if !status.success() {
            bail!("valgrind failed for {provider} {mode}");
        }
        let text = std::fs::read_to_string(&out)?;
        let total: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow!("no totals in {}", out.display()))?;
        let annotated = command_output(
            "callgrind_annotate",
            &[
                "--inclusive=no",
                "--threshold=100",
                &out.display().to_string(),
            ],
        );
        let top: Vec<String> = annotated
            .lines()
            .skip_while(|l| !l.contains("file:function"))
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("--"))
            .take(10)
            .map(short_annotate_line)
            .collect();
        results.push(Callgrind {
            provider,
            mode,
            ir_per_request: total / n as f64,
            top,
        });
    }
    Ok(results)
}

// ---------------------------------------------------------------- main

fn main() -> Result<()> {
    // The load generator, the mock and the control plane share CPU 1 (children inherit it);
    // each Envoy is started with `taskset -c 0`.
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", LOAD_CPU, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pinned {
        eprintln!("warning: could not pin the load generator to CPU {LOAD_CPU}");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

#[derive(Default)]
struct Results {
    latency: BTreeMap<(Scenario, Route), RunResult>,
    throughput: BTreeMap<(Scenario, Route), (RunResult, Usage)>,
    /// Median over interleaved rounds of req/s relative to bare Envoy.
    throughput_ratio: BTreeMap<(Scenario, Route), f64>,
    /// [`RETRY_OVERFLOW_STAT`] of the Wasm filter's and the native module's Envoys after the
    /// latency and throughput runs.
    retry_overflows: [Option<u64>; 2],
    rounds: u32,
    bare_idle_kb: u64,
    /// Envoy with the empty floor filter (bench/floor-filter, `noop`), idle.
    floor_noop_idle_kb: u64,
    /// Idle RSS with the empty native (dynamic-module) filter; 0 when it could not run.
    native_floor_idle_kb: u64,
    tollgate_idle_kb: u64,
    keys_small: Option<KeyOutcome>,
    keys_large: Option<KeyOutcome>,
    tollgate_many_keys_idle_kb: u64,
    filter_no_snapshot_kb: u64,
    tollgate_many_keys_load: Option<(RunResult, Usage)>,
    /// The native module's Envoy: idle with the small and the large key set, and under load
    /// with the large one.
    native_idle_kb: u64,
    native_many_keys_idle_kb: u64,
    native_many_keys_load: Option<(RunResult, Usage)>,
    /// Memory with 100,000 keys and the time a one-key change takes (see `scale`).
    scale: Option<scale::Scale>,
    scale_error: Option<String>,
    callgrind: Vec<Callgrind>,
    callgrind_error: Option<String>,
    /// Where each profiled path's Envoy CPU goes, by binary (perf).
    profile: Vec<Profiled>,
    /// Why there is no profile.
    profile_error: Option<String>,
}

/// One path's Envoy CPU per request, split by the binary perf sampled it in.
struct Profiled {
    path: Route,
    cpu_per_request_us: f64,
    /// (binary, share of samples), largest first.
    shares: Vec<(String, f64)>,
}

/// The paths whose Envoy CPU the profile splits: the baselines, the Wasm filter and the
/// native module (Bedrock too: the translation that signs every request).
const PROFILED: [Route; 6] = [
    Route::BareOpenAi,
    Route::DfpOpenAi,
    Route::TollgateOpenAi,
    Route::NativeOpenAi,
    Route::NativeAnthropic,
    Route::NativeBedrock,
];

/// Runs each of [`PROFILED`] once more under `perf record` (1 KB buffered) and splits its
/// Envoy CPU per request by binary: Envoy itself, the kernel, libc, the native module.
async fn profile_paths(
    stack: &Stack,
    dir: &Path,
    duration: Duration,
    ticks_per_s: f64,
) -> Result<Vec<Profiled>, String> {
    let probe = Command::new("perf")
        .args(["record", "-o"])
        .arg(dir.join("perf.probe.data"))
        .args(["--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|status| status.success()) {
        return Err("`perf record` is not available on this machine".to_string());
    }
    let mut profiled = Vec::new();
    for path in PROFILED {
        let spec = path
            .spec(stack, ONE_K, MASTER_KEY)
            .map_err(|error| format!("{error:#}"))?;
        let data = dir.join(format!("perf.profile.{path:?}.data"));
        let (run, usage) = closed_loop_with_usage(
            &spec,
            stack.envoy_pid(path),
            Duration::from_millis(500),
            duration,
            ticks_per_s,
            Some(data.clone()),
        )
        .await
        .map_err(|error| format!("{error:#}"))?;
        let report = Command::new("perf")
            .args([
                "report",
                "--no-children",
                "--sort",
                "dso",
                "-g",
                "none",
                "--stdio",
                "-i",
            ])
            .arg(&data)
            .output()
            .map_err(|error| format!("perf report: {error}"))?;
        let shares = dso_shares(&String::from_utf8_lossy(&report.stdout));
        if shares.is_empty() {
            return Err(format!("perf recorded no samples for {}", path.label()));
        }
        profiled.push(Profiled {
            path,
            cpu_per_request_us: usage.envoy_cpu_s / run.completed.max(1) as f64 * 1e6,
            shares,
        });
    }
    Ok(profiled)
}

/// The `  64.72%  envoy` lines of `perf report --sort dso`, as (binary, share).
fn dso_shares(report: &str) -> Vec<(String, f64)> {
    report
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let (percent, dso) = line.trim().split_once('%')?;
            let share = percent.trim().parse::<f64>().ok()? / 100.0;
            Some((dso.trim().to_string(), share))
        })
        .collect()
}

async fn run() -> Result<()> {
    let started = Instant::now();
    let rate = env_u64("BENCH_RATE", 500) as f64;
    let lat_secs = Duration::from_secs(env_u64("BENCH_LATENCY_SECONDS", 4));
    let tp_secs = Duration::from_secs(env_u64("BENCH_SECONDS", 8));
    let keys_wanted = env_u64("BENCH_KEYS", 10_000) as usize;
    let scale_keys = env_u64("BENCH_SCALE_KEYS", 100_000).max(1) as usize;
    let warmup = Duration::from_secs(1);
    let ticks_per_s: f64 = command_output("getconf", &["CLK_TCK"])
        .parse()
        .unwrap_or(100.0);
    let out_path = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("BENCHMARKS.md"));

    let dir = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut results = Results::default();
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("throughput") => return quick_throughput(&dir, tp_secs, ticks_per_s).await,
        Ok("memory") => return quick_memory(&dir, keys_wanted).await,
        Ok("scale") => return quick_scale(&dir, scale_keys).await,
        Ok("latency") => return quick_latency(&dir, rate, lat_secs).await,
        _ => {}
    }

    eprintln!("==> callgrind on the translate path");
    match run_callgrind(&dir) {
        Ok(c) => results.callgrind = c,
        Err(e) => results.callgrind_error = Some(format!("{e:#}")),
    }

    eprintln!(
        "==> starting mock, control plane ({DEPLOYMENTS} deployments), Envoy + filter, bare Envoy"
    );
    let stack = Stack::start(&dir).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    results.bare_idle_kb = vm_rss_kb(stack.bare_envoy.pid()).unwrap_or(0);
    results.floor_noop_idle_kb = vm_rss_kb(stack.floor_noop.envoy.pid()).unwrap_or(0);
    eprintln!("==> Envoy + empty native filter (dynamic module)");
    results.native_floor_idle_kb = match native_floor_rss(&dir, &stack).await {
        Ok(kb) => kb,
        Err(error) => {
            eprintln!("    native floor failed: {error:#}");
            0
        }
    };

    eprintln!("==> Envoy + filter with no control plane (memory of the Wasm runtime alone)");
    results.filter_no_snapshot_kb = filter_without_snapshot_rss(&dir).await.unwrap_or(0);

    eprintln!("==> 10 virtual keys (POST /key/generate)");
    let small = generate_keys(stack.tollgate_port, 0, 10, Duration::from_secs(30)).await;
    let keys_api = small.created > 0;
    results.keys_small = Some(small);
    tokio::time::sleep(Duration::from_secs(2)).await;
    results.tollgate_idle_kb = vm_rss_kb(stack.tollgate_envoy.pid()).unwrap_or(0);
    results.native_idle_kb = vm_rss_kb(stack.native_envoy.pid()).unwrap_or(0);

    // Check every path once before measuring.
    for scenario in [ONE_K, ONE_K_STREAM, ONE_K_PACED] {
        for path in PATHS {
            let spec = path.spec(&stack, scenario, MASTER_KEY)?;
            let mut sender = load::connect(spec.addr).await?;
            load::send_one(&mut sender, &spec, Instant::now())
                .await
                .with_context(|| {
                    format!("check request: {} ({})", path.label(), scenario.label())
                })?;
        }
    }
    check_routing(&stack).await?;

    let latency_scenarios = [
        ONE_K,
        Scenario {
            size: 8 * 1024,
            stream: false,
            paced: false,
        },
        Scenario {
            size: 100 * 1024,
            stream: false,
            paced: false,
        },
        ONE_K_STREAM,
        ONE_K_PACED,
    ];
    for scenario in latency_scenarios {
        // The dynamic-forward-proxy Envoy is only there to split the CPU cost.
        for path in PATHS.into_iter().filter(|p| !p.is_breakdown()) {
            eprintln!(
                "==> latency at {rate} req/s: {} / {}",
                scenario.label(),
                path.label()
            );
            let spec = path.spec(&stack, scenario, MASTER_KEY)?;
            // Paced streams last ~25 ms: more connections keep the rate without queueing.
            let connections = if scenario.paced {
                64
            } else {
                LATENCY_CONNECTIONS
            };
            let result = load::fixed_rate(&spec, rate, warmup, lat_secs, connections).await?;
            if let Some(error) = &result.first_error {
                eprintln!("    {} errors, first: {error}", result.errors);
            }
            results.latency.insert((scenario, path), result);
        }
    }

    let rounds = u32::try_from(env_u64("BENCH_ROUNDS", 4)).unwrap_or(4);
    results.rounds = rounds;
    let perf_dir = std::env::var_os("BENCH_PERF_DIR").map(PathBuf::from);
    for scenario in [ONE_K, ONE_K_STREAM] {
        eprintln!(
            "==> throughput, {THROUGHPUT_CONNECTIONS} connections, {rounds} interleaved rounds: {}",
            scenario.label()
        );
        let measured = interleaved_throughput(
            &stack,
            scenario,
            &PATHS,
            |path| path.baselines().1,
            rounds,
            tp_secs,
            ticks_per_s,
            perf_dir.clone(),
        )
        .await?;
        for (path, (run, usage)) in measured.results {
            if let Some(error) = &run.first_error {
                eprintln!(
                    "    {}: {} errors, first: {error}",
                    path.label(),
                    run.errors
                );
            }
            eprintln!("    {:<70} {:>7.0} req/s", path.label(), run.rps());
            results.throughput.insert((scenario, path), (run, usage));
        }
        for (path, ratio) in measured.ratio {
            results.throughput_ratio.insert((scenario, path), ratio);
        }
    }

    results.retry_overflows = [
        retry_overflows(stack.tollgate_admin).await,
        retry_overflows(stack.native_admin).await,
    ];
    eprintln!(
        "    {RETRY_OVERFLOW_STAT} (Wasm filter, native module): {:?}",
        results.retry_overflows
    );

    eprintln!("==> perf profile of the 1 KB buffered paths");
    match profile_paths(&stack, &dir, tp_secs / 2, ticks_per_s).await {
        Ok(profile) => results.profile = profile,
        Err(why) => {
            eprintln!("    not profiled: {why}");
            results.profile_error = Some(why);
        }
    }

    if keys_api {
        eprintln!("==> {keys_wanted} virtual keys (POST /key/generate)");
        let large = generate_keys(
            stack.tollgate_port,
            10,
            keys_wanted,
            Duration::from_secs(300),
        )
        .await;
        eprintln!(
            "    {} keys in {:.1} s {}",
            large.created,
            large.elapsed.as_secs_f64(),
            large.note
        );
        let key = key_in_snapshot(stack.tollgate_port, &large).await;
        key_in_snapshot(stack.native_port, &large).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        results.tollgate_many_keys_idle_kb = vm_rss_kb(stack.tollgate_envoy.pid()).unwrap_or(0);
        results.native_many_keys_idle_kb = vm_rss_kb(stack.native_envoy.pid()).unwrap_or(0);
        for (path, envoy) in [
            (Route::TollgateOpenAi, &stack.tollgate_envoy),
            (Route::NativeOpenAi, &stack.native_envoy),
        ] {
            eprintln!(
                "==> throughput with {} keys: {}",
                large.created,
                path.label()
            );
            let spec = path.spec(&stack, ONE_K, &key)?;
            let measured = closed_loop_with_usage(
                &spec,
                Some(envoy.pid()),
                warmup,
                tp_secs,
                ticks_per_s,
                None,
            )
            .await?;
            if path == Route::NativeOpenAi {
                results.native_many_keys_load = Some(measured);
            } else {
                results.tollgate_many_keys_load = Some(measured);
            }
        }
        results.keys_large = Some(large);
    }

    eprintln!("==> {scale_keys} virtual keys in the first snapshot, then one-key changes");
    match scale::measure(&dir, stack.mock_port, scale_keys).await {
        Ok(measured) => results.scale = Some(measured),
        Err(error) => {
            eprintln!("    not measured: {error:#}");
            results.scale_error = Some(format!("{error:#}"));
        }
    }

    let report = render(
        &results,
        rate,
        lat_secs,
        tp_secs,
        keys_wanted,
        started.elapsed(),
    );
    // The spend bench (`make bench-spend`) keeps its own section of the file: carry it over.
    let spend_section = std::fs::read_to_string(&out_path)
        .ok()
        .and_then(|old| {
            old.find(SPEND_SECTION_START)
                .map(|start| old[start..].to_string())
        })
        .unwrap_or_default();
    let report = if spend_section.is_empty() {
        report
    } else {
        format!("{}\n\n{spend_section}", report.trim_end())
    };
    std::fs::write(&out_path, report)?;
    eprintln!(
        "==> wrote {} in {:.0} s",
        out_path.display(),
        started.elapsed().as_secs_f64()
    );
    drop(stack);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `BENCH_ONLY=memory`: the idle memory rows (bare Envoy, the empty floor filter, Tollgate
/// with no snapshot, 10 keys and `keys_wanted` keys), printed, with the filter's own log of
/// its linear memory. The stack's directory is kept for its logs.
async fn quick_memory(dir: &Path, keys_wanted: usize) -> Result<()> {
    let stack = Stack::start(dir).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mb = |kb: u64| kb as f64 / 1024.0;
    let bare = vm_rss_kb(stack.bare_envoy.pid()).unwrap_or(0);
    println!("bare Envoy                          {:>7.1} MB", mb(bare));
    let floor = vm_rss_kb(stack.floor_noop.envoy.pid()).unwrap_or(0);
    println!("empty floor filter                  {:>7.1} MB", mb(floor));
    let native = native_floor_rss(dir, &stack).await.unwrap_or(0);
    println!("empty native filter                 {:>7.1} MB", mb(native));
    let none = filter_without_snapshot_rss(dir).await.unwrap_or(0);
    println!("Tollgate, no snapshot               {:>7.1} MB", mb(none));
    for (from, count) in [(0, 10), (10, keys_wanted)] {
        let created =
            generate_keys(stack.tollgate_port, from, count, Duration::from_secs(300)).await;
        key_in_snapshot(stack.tollgate_port, &created).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = vm_rss_kb(stack.tollgate_envoy.pid()).unwrap_or(0);
        println!(
            "Tollgate, {:>5} keys                {:>7.1} MB ({:+.1} MB over bare)",
            from + created.created,
            mb(rss),
            mb(rss) - mb(bare)
        );
    }
    let log = std::fs::read_to_string(dir.join("envoy-tollgate.log")).unwrap_or_default();
    for line in log
        .lines()
        .filter(|line| line.contains("installed snapshot"))
    {
        println!("{line}");
    }
    println!("logs: {}", dir.display());
    drop(stack);
    Ok(())
}

/// `BENCH_ONLY=scale`: the snapshot-scale rows (see `scale`), printed, beside an idle bare
/// Envoy. The directory is kept for the logs.
async fn quick_scale(dir: &Path, keys: usize) -> Result<()> {
    // Nothing reaches the mock here: the config only needs its address.
    let mock_port = free_port()?;
    let rendered = tollgate_envoy_config(0, 0, (0, None), "bench-render", None, false)?;
    let buffer_limit = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("per_connection_buffer_limit_bytes:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| anyhow!("no per_connection_buffer_limit_bytes in the Tollgate bootstrap"))?;
    let bare = BenchEnvoy::start(
        dir,
        "envoy-bare",
        "bare",
        &[
            ("{{MOCK_PORT}}", &mock_port.to_string()),
            ("{{BUFFER_LIMIT_BYTES}}", &buffer_limit),
        ],
    )?;
    wait_until("bare Envoy", Duration::from_secs(60), || {
        envoy_ready(bare.admin)
    })
    .await?;
    let measured = scale::measure(dir, mock_port, keys).await?;
    let bare_kb = vm_rss_kb(bare.envoy.pid()).unwrap_or(0);
    println!(
        "bare Envoy, idle                                   {:>7.1} MB",
        mb_f(bare_kb)
    );
    for (index, build) in scale::BUILDS.iter().enumerate() {
        let (median, max) = scale::median_and_max_ms(&measured.propagation[index]);
        let [snapshots, deltas, resyncs] = measured.counters[index];
        println!(
            "{build:<14} {keys} keys: first snapshot served after {:.1} s; idle {:.1} MB \
             ({:+.1} MB over bare), {:.1} MB after the changes; a one-key change refused \
             {median:.1} ms median, {max:.1} ms max after the request ({} changes: {:?} ms); \
             counters: {snapshots} full snapshots, {deltas} deltas, {resyncs} resyncs",
            measured.first_snapshot[index].as_secs_f64(),
            mb_f(measured.idle_kb[index]),
            mb_f(measured.idle_kb[index]) - mb_f(bare_kb),
            mb_f(measured.after_changes_kb[index]),
            measured.propagation[index].len(),
            measured.propagation[index]
                .iter()
                .map(|t| (t.as_secs_f64() * 1e4).round() / 10.0)
                .collect::<Vec<f64>>(),
        );
    }
    let (median, max) = scale::median_and_max_ms(&measured.api_answer);
    println!(
        "the management API answered in {median:.1} ms median, {max:.1} ms max ({:?} ms)",
        measured
            .api_answer
            .iter()
            .map(|t| (t.as_secs_f64() * 1e4).round() / 10.0)
            .collect::<Vec<f64>>()
    );
    println!("logs: {}", dir.join("scale").display());
    Ok(())
}

fn mb_f(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// What a `BENCH_ONLY=throughput` path's ratio is taken against: bare Envoy carrying the
/// Gemini or Bedrock request for those translations, bare Envoy on the OpenAI request for
/// the rest (Anthropic included: quick mode runs no bare Anthropic path).
fn quick_baseline(path: Route) -> Route {
    match path.baselines().1 {
        bare @ (Route::BareGemini | Route::BareBedrock) => bare,
        _ => Route::BareOpenAi,
    }
}

/// `BENCH_PATHS=BareOpenAi,NativeOpenAi,...`: the paths of [`PATHS`] named, with bare
/// Envoy on the OpenAI request (the base) and each named path's `baseline`, in `PATHS`'s
/// order; `None` without the variable.
fn chosen_paths(baseline: fn(Route) -> Route) -> Option<Vec<Route>> {
    let wanted = std::env::var("BENCH_PATHS").ok()?;
    let named = |path: Route| {
        wanted
            .split(',')
            .any(|name| name.trim() == format!("{path:?}"))
    };
    let chosen: Vec<Route> = PATHS.into_iter().filter(|path| named(*path)).collect();
    Some(
        PATHS
            .into_iter()
            .filter(|path| {
                *path == Route::BareOpenAi
                    || named(*path)
                    || chosen.iter().any(|c| baseline(*c) == *path)
            })
            .collect(),
    )
}

/// Prints [`RETRY_OVERFLOW_STAT`] of both Tollgate Envoys (quick modes).
async fn print_retry_overflows(stack: &Stack) {
    println!(
        "{RETRY_OVERFLOW_STAT}: Wasm filter {:?}, native module {:?}",
        retry_overflows(stack.tollgate_admin).await,
        retry_overflows(stack.native_admin).await
    );
}

/// `BENCH_ONLY=latency`: the 1 KB latency runs (buffered, then the 200-chunk stream;
/// `BENCH_STREAM=0`: buffered only) of the paths `BENCH_PATHS` names (with their direct
/// and bare-Envoy baselines), or of every latency path, printed as `make bench` measures
/// them; BENCHMARKS.md is left alone.
async fn quick_latency(dir: &Path, rate: f64, duration: Duration) -> Result<()> {
    let stack = Stack::start(dir).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paths: Vec<Route> = chosen_paths(|path| path.baselines().1)
        .map(|chosen| {
            // The direct baselines, and what a routing path is read against.
            let more: Vec<Route> = chosen
                .iter()
                .flat_map(|path| [Some(path.baselines().0), path.routing_reference()])
                .flatten()
                .collect();
            PATHS
                .into_iter()
                .filter(|path| chosen.contains(path) || more.contains(path))
                .collect()
        })
        .unwrap_or_else(|| PATHS.to_vec())
        .into_iter()
        .filter(|path| !path.is_breakdown())
        .collect();
    if paths.iter().any(|path| path.is_routing()) {
        check_routing(&stack).await?;
    }
    let scenarios = if env_u64("BENCH_STREAM", 1) == 0 {
        vec![ONE_K]
    } else {
        vec![ONE_K, ONE_K_STREAM]
    };
    for scenario in scenarios {
        let mut measured = BTreeMap::new();
        for &path in &paths {
            let spec = path.spec(&stack, scenario, MASTER_KEY)?;
            let result = load::fixed_rate(
                &spec,
                rate,
                Duration::from_secs(1),
                duration,
                LATENCY_CONNECTIONS,
            )
            .await?;
            measured.insert(path, result);
        }
        let p50 = |path: Route| {
            measured.get(&path).map_or(f64::NAN, |result| {
                percentile(
                    if scenario.stream {
                        &result.ttft_us
                    } else {
                        &result.total_us
                    },
                    0.5,
                )
            })
        };
        for (path, result) in &measured {
            let samples = if scenario.stream {
                &result.ttft_us
            } else {
                &result.total_us
            };
            let (_, bare) = path.baselines();
            let reference = path
                .routing_reference()
                .filter(|reference| measured.contains_key(reference))
                .map_or(String::new(), |reference| {
                    format!(
                        ", {} ms vs {}",
                        signed_ms(p50(*path) - p50(reference)),
                        reference.label()
                    )
                });
            println!(
                "{:<52} {:<100} {} p50/p90/p99 {} ms, {} ms vs bare Envoy{reference}, {} errors",
                scenario.label(),
                path.label(),
                if scenario.stream { "TTFT" } else { "    " },
                p50_p90_p99_ms(samples).replace(" | ", " / "),
                signed_ms(p50(*path) - p50(bare)),
                result.errors,
            );
            if let Some(error) = &result.first_error {
                eprintln!("    first error: {error}");
            }
        }
    }
    print_retry_overflows(&stack).await;
    drop(stack);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// `BENCH_ONLY=throughput`: the 1 KB throughput runs of bare Envoy, the floor filters and
/// Tollgate (OpenAI, Anthropic, Gemini and Bedrock), interleaved, printed. `BENCH_FLOOR_STEPS` adds floor-filter Envoys, one per
/// `;`-separated list of steps (see bench/floor-filter); the list `native` is the empty
/// native filter (bench/native-floor).
async fn quick_throughput(dir: &Path, duration: Duration, ticks_per_s: f64) -> Result<()> {
    let mut stack = Stack::start(dir).await?;
    let extra = std::env::var("BENCH_FLOOR_STEPS").unwrap_or_default();
    for steps in extra.split(';').filter(|s| !s.is_empty()) {
        // `native` is the empty native filter (bench/native-floor), not a Wasm floor.
        let floor = if steps == "native" {
            BenchEnvoy::native_floor(dir, stack.mock_port, &stack.buffer_limit)?
        } else {
            BenchEnvoy::floor(dir, steps, stack.mock_port, &stack.buffer_limit)?
        };
        wait_until("floor-filter Envoy", Duration::from_secs(60), || {
            envoy_ready(floor.admin)
        })
        .await?;
        stack.extra_floors.push((steps.to_string(), floor));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut paths = vec![
        Route::BareOpenAi,
        Route::DfpOpenAi,
        Route::FloorNoopOpenAi,
        Route::FloorBodyRoutingOpenAi,
        Route::TollgateOpenAi,
        Route::TollgateAnthropic,
        Route::NativeOpenAi,
        Route::NativeAnthropic,
        Route::BareGemini,
        Route::TollgateGemini,
        Route::NativeGemini,
        Route::BareBedrock,
        Route::TollgateBedrock,
        Route::NativeBedrock,
    ];
    paths.extend((0..stack.extra_floors.len()).map(Route::ExtraFloor));
    // BENCH_PATHS=BareOpenAi,NativeOpenAi,...: only these, from every path of `make bench`
    // (bare Envoy always, as the base, and the bare Envoy of a Gemini or Bedrock path named).
    if let Some(chosen) = chosen_paths(quick_baseline) {
        paths.retain(|path| matches!(path, Route::ExtraFloor(_)));
        paths.splice(0..0, chosen);
    }
    if paths.iter().any(|path| path.is_routing()) {
        check_routing(&stack).await?;
    }
    let rounds = u32::try_from(env_u64("BENCH_ROUNDS", 4)).unwrap_or(4);
    let perf_dir = std::env::var_os("BENCH_PERF_DIR").map(PathBuf::from);
    // BENCH_STREAM=0: buffered answers only.
    let scenarios = if env_u64("BENCH_STREAM", 1) == 0 {
        vec![ONE_K]
    } else {
        vec![ONE_K, ONE_K_STREAM]
    };
    for scenario in scenarios {
        let measured = interleaved_throughput(
            &stack,
            scenario,
            &paths,
            quick_baseline,
            rounds,
            duration,
            ticks_per_s,
            perf_dir.clone(),
        )
        .await?;
        for (path, (run, usage)) in &measured.results {
            let label = match path {
                Route::ExtraFloor(i) => stack
                    .extra_floors
                    .get(*i)
                    .map_or(String::new(), |(steps, _)| format!("floor: {steps}")),
                _ => path.label().to_string(),
            };
            println!(
                "{:<52} {:<60} {:>7.0} req/s {:>5.0}% {:>6.1} us Envoy CPU/request  {} errors",
                scenario.label(),
                label,
                run.rps(),
                measured.ratio.get(path).copied().unwrap_or(f64::NAN) * 100.0,
                usage.envoy_cpu_s * 1e6 / run.completed.max(1) as f64,
                run.errors,
            );
            if let Some(error) = &run.first_error {
                eprintln!("    first error: {error}");
            }
        }
    }
    print_retry_overflows(&stack).await;
    drop(stack);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

// ---------------------------------------------------------------- BENCHMARKS.md

/// Where the section `make bench-spend` writes (to the end of the file) begins.
const SPEND_SECTION_START: &str = "<!-- spend-bench: written by make bench-spend -->";

/// The section on a one-key change among 100,000 keys.
fn render_scale(s: &mut String, r: &Results) {
    let Some(scale) = &r.scale else {
        let _ = writeln!(
            s,
            "## One key changed among many\n\nNot measured: {}\n",
            r.scale_error.as_deref().unwrap_or("skipped")
        );
        return;
    };
    let _ = writeln!(
        s,
        "## One key changed among {keys} keys\n\n\
         A control plane of its own starts with {keys} virtual keys (put straight into its SQLite \
         database) and {DEPLOYMENTS} deployments; one Envoy per build (`--concurrency 1`) gets them \
         all in its first snapshot. After one change that is not timed (the first write after \
         the bulk insert checkpoints SQLite's write-ahead log), one key at a time is blocked with \
         `POST /key/block` (through the Wasm filter's Envoy): the time is from sending the request \
         until `GET /v1/models` with that key is refused {refusals} times in a row on new \
         connections (polled every 1 ms, both Envoys at once). The control plane reads only the keys \
         changed since the version it serves and sends each stream a delta; the filter's counters \
         show what each Envoy received.\n",
        keys = scale.keys,
        refusals = scale::REFUSALS_IN_A_ROW
    );
    let _ = writeln!(
        s,
        "| build | first snapshot served after | one-key change, request sent → key refused: median / max ({} changes) | idle MB before / after the changes | full snapshots / deltas / resyncs received |\n|---|---|---|---|---|",
        scale.propagation[0].len()
    );
    for (index, build) in scale::BUILDS.iter().enumerate() {
        let (median, max) = scale::median_and_max_ms(&scale.propagation[index]);
        let [snapshots, deltas, resyncs] = scale.counters[index];
        let _ = writeln!(
            s,
            "| {build} | {:.1} s | {median:.1} / {max:.1} ms | {} / {} | {snapshots} / {deltas} / {resyncs} |",
            scale.first_snapshot[index].as_secs_f64(),
            mb(scale.idle_kb[index]),
            mb(scale.after_changes_kb[index]),
        );
    }
    let (answer_median, answer_max) = scale::median_and_max_ms(&scale.api_answer);
    let _ = writeln!(
        s,
        "\nThe management API answered in {answer_median:.1} ms median, {answer_max:.1} ms max: the \
         change is committed by then, and its delta is often already on the way. The Wasm filter \
         counts one full snapshot per VM (the worker's and the main thread's, which keeps it as \
         bytes); the native module holds one for all workers.\n"
    );
}

fn ms(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else {
        format!("{:.3}", us / 1000.0)
    }
}

fn signed_ms(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else {
        format!("{:+.3}", us / 1000.0)
    }
}

/// `p50 | p90 | p99` of sorted microsecond samples, in milliseconds, as three table cells.
fn p50_p90_p99_ms(sorted_us: &[f64]) -> String {
    [0.5, 0.9, 0.99]
        .map(|p| ms(percentile(sorted_us, p)))
        .join(" | ")
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "**pass**"
    } else {
        "**FAIL**"
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    let envoy = command_output(&envoy_binary().display().to_string(), &["--version"]);
    let envoy = envoy
        .split_once("version:")
        .map_or(envoy.clone(), |(_, v)| v.trim().to_string());
    let commit = command_output(
        "git",
        &[
            "-C",
            &root().display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !command_output(
        "git",
        &[
            "-C",
            &root().display().to_string(),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_empty();
    let mut s = String::new();
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| date (UTC) | {} |",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M"])
    );
    let _ = writeln!(
        s,
        "| CPUs (nproc) | {} |",
        command_output("nproc", &["--all"])
    );
    let _ = writeln!(s, "| CPU | {cpu} |");
    let _ = writeln!(s, "| memory | {mem} |");
    let _ = writeln!(s, "| kernel | {} |", command_output("uname", &["-r"]));
    let _ = writeln!(s, "| Envoy | {envoy} |");
    let _ = writeln!(s, "| rustc | {} |", command_output("rustc", &["--version"]));
    let _ = writeln!(
        s,
        "| git commit | {commit}{} |",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "| valgrind | {} |",
        command_output("valgrind", &["--version"])
    );
    s
}

/// The routing section: `gpt-mock` (straight to the provider), `gpt-group` (relayed, one
/// attempt) and `gpt-fallback` (relayed, a 429 then one fallback) side by side, per build.
fn render_routing(s: &mut String, r: &Results) {
    let p50 = |scenario: Scenario, path: Route| {
        r.latency.get(&(scenario, path)).map_or(f64::NAN, |res| {
            percentile(
                if scenario.stream {
                    &res.ttft_us
                } else {
                    &res.total_us
                },
                0.5,
            )
        })
    };
    let rps = |scenario: Scenario, path: Route| {
        r.throughput
            .get(&(scenario, path))
            .map(|(res, _)| format!("{:.0}", res.rps()))
    };
    let _ = writeln!(
        s,
        "### Routing: a group of three deployments, and one fallback (from the tables above)\n\n\
         `{GROUP_MODEL}` has three deployments (upstream models {}, all on the mock's OpenAI API; \
         simple-shuffle) and a fallback to `gpt-mock`, so the filter relays each request through \
         Envoy's attempts route to the internal `tollgate_attempts` listener, where it translates \
         it for the deployment it chose; none fails. `{FALLBACK_MODEL}` has one deployment \
         (`{FAILING_UPSTREAM}`, with `num_retries: 0`), which the mock answers 429 at once (a \
         `/_mock/faults` rule on that upstream model alone), and a fallback to `gpt-mock`: every \
         request makes two attempts, the 429 and the fallback (the bench checks it on the mock's \
         request counts before measuring). `gpt-mock` (one deployment, no fallback) goes straight \
         to the provider. *relay adds* = `{GROUP_MODEL}`'s p50 minus `gpt-mock`'s; *one fallback \
         adds* = `{FALLBACK_MODEL}`'s p50 minus `{GROUP_MODEL}`'s. Streams: time to first token. \
         Latency at the rate of the latency tables, req/s at {THROUGHPUT_CONNECTIONS} connections.\n",
        GROUP_UPSTREAMS
            .iter()
            .map(|upstream| format!("`{upstream}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "| request | build | `gpt-mock` p50 | `{GROUP_MODEL}` p50 | relay adds | `{FALLBACK_MODEL}` p50 | one fallback adds | req/s `gpt-mock` / `{GROUP_MODEL}` / `{FALLBACK_MODEL}` | `{FALLBACK_MODEL}` errors, latency / throughput run |\n|---|---|---|---|---|---|---|---|---|"
    );
    let builds = [
        (
            "Wasm filter",
            Route::TollgateOpenAi,
            Route::TollgateGroupOpenAi,
            Route::TollgateFallbackOpenAi,
        ),
        (
            "native module",
            Route::NativeOpenAi,
            Route::NativeGroupOpenAi,
            Route::NativeFallbackOpenAi,
        ),
    ];
    let mut scenarios: Vec<Scenario> = r
        .latency
        .keys()
        .filter(|(_, path)| path.is_routing())
        .map(|(scenario, _)| *scenario)
        .collect();
    scenarios.dedup();
    for scenario in scenarios {
        for (build, single, group, fallback) in builds {
            let throughput = match (
                rps(scenario, single),
                rps(scenario, group),
                rps(scenario, fallback),
            ) {
                (Some(a), Some(b), Some(c)) => format!("{a} / {b} / {c}"),
                _ => "-".to_string(),
            };
            let errors = format!(
                "{} / {}",
                r.latency
                    .get(&(scenario, fallback))
                    .map_or("-".to_string(), |res| res.errors.to_string()),
                r.throughput
                    .get(&(scenario, fallback))
                    .map_or("-".to_string(), |(res, _)| res.errors.to_string()),
            );
            let _ = writeln!(
                s,
                "| {} | {build} | {} | {} | {} | {} | {} | {throughput} | {errors} |",
                scenario.label(),
                ms(p50(scenario, single)),
                ms(p50(scenario, group)),
                signed_ms(p50(scenario, group) - p50(scenario, single)),
                ms(p50(scenario, fallback)),
                signed_ms(p50(scenario, fallback) - p50(scenario, group)),
            );
        }
    }
    let added = |scenario: Scenario, build: usize| {
        builds
            .get(build)
            .map_or(f64::NAN, |(_, _, group, fallback)| {
                p50(scenario, *fallback) - p50(scenario, *group)
            })
    };
    let _ = writeln!(
        s,
        "\nOne fallback adds {} ms (Wasm filter) and {} ms (native module) to the p50 of a 1 KB \
         request with a buffered answer, and {} / {} ms to the time to first token of a 1 KB \
         stream.\n",
        signed_ms(added(ONE_K, 0)),
        signed_ms(added(ONE_K, 1)),
        signed_ms(added(ONE_K_STREAM, 0)),
        signed_ms(added(ONE_K_STREAM, 1)),
    );
    let overflows = |count: Option<u64>| count.map_or("not read".to_string(), |n| n.to_string());
    let _ = writeln!(
        s,
        "A `{FALLBACK_MODEL}` error is its deployment's 429 reaching the client instead of the \
         fallback. Envoy's `{RETRY_OVERFLOW_STAT}` (retries refused because the attempts \
         cluster's circuit breaker allows only so many at once, `max_retries`, 3 unless the \
         bootstrap sets it) was {} (Wasm filter) and {} (native module) after the latency and \
         throughput runs.\n",
        overflows(r.retry_overflows[0]),
        overflows(r.retry_overflows[1]),
    );
}

/// The "by binary" table: each profiled path's Envoy CPU per request split by where perf
/// sampled it.
fn render_profile(s: &mut String, profiled: &[Profiled], error: Option<&str>) {
    let _ = writeln!(s, "### Where the CPU goes, by binary (perf)\n");
    if let Some(why) = error {
        let _ = writeln!(s, "Not profiled: {why}.\n");
        return;
    }
    let _ = writeln!(
        s,
        "Each path ran once more, alone, under `perf record` (1 KB buffered); its Envoy CPU per \
         request is split by the share of samples in each binary. Envoy's binary is stripped, so \
         its part cannot be split further; the native module's part is Tollgate's own code (core \
         logic and glue), and what the module asks of Envoy (headers, bodies, stats, the route) is \
         counted in Envoy's and the kernel's parts.\n"
    );
    let columns = [
        "envoy",
        "[kernel.kallsyms]",
        "libc.so.6",
        "libtollgate_native.so",
    ];
    let _ = writeln!(
        s,
        "| path | Envoy CPU/request | Envoy binary | kernel | libc | native module | other |\n|---|---|---|---|---|---|---|"
    );
    for p in profiled {
        let share = |dso: &str| {
            p.shares
                .iter()
                .filter(|(name, _)| name == dso)
                .map(|(_, share)| share)
                .sum::<f64>()
        };
        let other: f64 = p
            .shares
            .iter()
            .filter(|(name, _)| !columns.contains(&name.as_str()))
            .map(|(_, share)| share)
            .sum();
        let us = |share: f64| {
            if share > 0.0 {
                format!("{:.1} us", share * p.cpu_per_request_us)
            } else {
                "-".to_string()
            }
        };
        let _ = writeln!(
            s,
            "| {} | {:.1} us | {} | {} | {} | {} | {} |",
            p.path.label(),
            p.cpu_per_request_us,
            us(share(columns[0])),
            us(share(columns[1])),
            us(share(columns[2])),
            us(share(columns[3])),
            us(other)
        );
    }
    let _ = writeln!(s);
}

fn render(
    r: &Results,
    rate: f64,
    lat_secs: Duration,
    tp_secs: Duration,
    keys_wanted: usize,
    took: Duration,
) -> String {
    let mut s = String::new();
    let one_k = ONE_K;
    let one_k_stream = ONE_K_STREAM;
    let one_k_paced = ONE_K_PACED;
    let lat = |scenario: Scenario, path: Route, ttft: bool, p: f64| {
        r.latency.get(&(scenario, path)).map_or(f64::NAN, |res| {
            percentile(if ttft { &res.ttft_us } else { &res.total_us }, p)
        })
    };
    let rps = |scenario: Scenario, path: Route| {
        r.throughput
            .get(&(scenario, path))
            .map_or(f64::NAN, |(res, _)| res.rps())
    };

    // The median of the per-round ratios (see `interleaved_throughput`).
    let throughput_ratio = |scenario: Scenario, path: Route, base: Route| {
        r.throughput_ratio
            .get(&(scenario, path))
            .copied()
            .unwrap_or_else(|| rps(scenario, path) / rps(scenario, base))
    };

    let _ = writeln!(s, "# Tollgate benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `make bench` ({:.0} s); do not edit by hand: rerun it. What Tollgate costs on \
         top of Envoy, measured side by side in one run against the bundled mock provider.\n",
        took.as_secs_f64()
    );
    let _ = writeln!(s, "## Machine and versions\n\n{}", machine());

    // Targets.
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(
        s,
        "| target | path | measured | limit | result |\n|---|---|---|---|---|"
    );
    for (path, base, name) in [
        (
            Route::TollgateOpenAi,
            Route::BareOpenAi,
            "OpenAI pass-through, Wasm filter",
        ),
        (
            Route::TollgateAnthropic,
            Route::BareAnthropic,
            "Anthropic translation, Wasm filter",
        ),
        (
            Route::NativeOpenAi,
            Route::BareOpenAi,
            "OpenAI pass-through, native module",
        ),
        (
            Route::NativeAnthropic,
            Route::BareAnthropic,
            "Anthropic translation, native module",
        ),
        (
            Route::TollgateGemini,
            Route::BareGemini,
            "Gemini translation, Wasm filter",
        ),
        (
            Route::NativeGemini,
            Route::BareGemini,
            "Gemini translation, native module",
        ),
        (
            Route::TollgateBedrock,
            Route::BareBedrock,
            "Bedrock translation (SigV4, event stream), Wasm filter",
        ),
        (
            Route::NativeBedrock,
            Route::BareBedrock,
            "Bedrock translation (SigV4, event stream), native module",
        ),
        (
            Route::TollgateLimitedOpenAi,
            Route::BareOpenAi,
            "OpenAI pass-through, priced, key with budget + rpm + tpm, Wasm filter",
        ),
        (
            Route::NativeLimitedOpenAi,
            Route::BareOpenAi,
            "OpenAI pass-through, priced, key with budget + rpm + tpm, native module",
        ),
    ] {
        for (scenario, what) in [
            (one_k, "throughput, 1 KB buffered"),
            (one_k_stream, "throughput, 1 KB stream"),
        ] {
            let ratio = throughput_ratio(scenario, path, base);
            let _ = writeln!(
                s,
                "| {what}, vs bare Envoy | {name} | {:.0}% ({:.0} vs {:.0} req/s) | >= 80% | {} |",
                ratio * 100.0,
                rps(scenario, path),
                rps(scenario, base),
                verdict(ratio >= 0.8)
            );
        }
        let added = lat(one_k, path, false, 0.5) - lat(one_k, base, false, 0.5);
        let _ = writeln!(
            s,
            "| added p50 latency, 1 KB buffered, vs bare Envoy | {name} | {} ms | <= 0.300 ms | {} |",
            signed_ms(added),
            verdict(added <= 300.0)
        );
        let added = lat(one_k_stream, path, true, 0.5) - lat(one_k_stream, base, true, 0.5);
        let _ = writeln!(
            s,
            "| added p50 time to first token, 1 KB stream of {STREAM_CHUNKS} chunks sent at once, vs bare Envoy | {name} | {} ms | <= 0.300 ms | {} |",
            signed_ms(added),
            verdict(added <= 300.0)
        );
        let added = lat(one_k_paced, path, true, 0.5) - lat(one_k_paced, base, true, 0.5);
        let _ = writeln!(
            s,
            "| (for information) added p50 time to first token, paced stream, vs bare Envoy | {name} | {} ms | - | see the note |",
            signed_ms(added),
        );
    }
    let bare_load = [one_k, one_k_stream]
        .iter()
        .flat_map(|sc| [Route::BareOpenAi, Route::BareAnthropic].map(|p| (*sc, p)))
        .filter_map(|k| r.throughput.get(&k).map(|(_, u)| u.max_rss_kb))
        .max()
        .unwrap_or(0);
    match (&r.keys_large, &r.tollgate_many_keys_load) {
        (Some(keys), Some(_)) => {
            let complete = keys.created >= keys_wanted;
            for (name, load) in [
                (
                    "OpenAI pass-through, Wasm filter",
                    &r.tollgate_many_keys_load,
                ),
                (
                    "OpenAI pass-through, native module",
                    &r.native_many_keys_load,
                ),
            ] {
                let Some((_, usage)) = load else { continue };
                let over = usage.max_rss_kb.saturating_sub(bare_load);
                let _ = writeln!(
                    s,
                    "| Envoy memory over bare Envoy, under load, {} keys + {DEPLOYMENTS} deployments | {name} | +{} MB ({} vs {} MB) | <= 40 MB | {} |",
                    keys.created,
                    mb(over),
                    mb(usage.max_rss_kb),
                    mb(bare_load),
                    if complete || over > 40 * 1024 { verdict(over <= 40 * 1024) } else { "**pending**: fewer keys than asked" }
                );
            }
        }
        _ => {
            let note = r
                .keys_small
                .as_ref()
                .map_or(String::new(), |k| k.note.clone());
            let tollgate_load = [one_k, one_k_stream]
                .iter()
                .flat_map(|sc| [Route::TollgateOpenAi, Route::TollgateAnthropic].map(|p| (*sc, p)))
                .filter_map(|k| r.throughput.get(&k).map(|(_, u)| u.max_rss_kb))
                .max()
                .unwrap_or(0);
            let _ = writeln!(
                s,
                "| Envoy memory over bare Envoy, under load, {keys_wanted} keys + {DEPLOYMENTS} deployments | OpenAI pass-through | not measured: the key API answered `{}`; with 0 virtual keys + {DEPLOYMENTS} deployments: +{} MB | <= 40 MB | **pending** |",
                note.replace('|', "/").chars().take(160).collect::<String>(),
                mb(tollgate_load.saturating_sub(bare_load))
            );
        }
    }
    let _ = writeln!(
        s,
        "\nTime to first token is judged on the {STREAM_CHUNKS}-chunk stream the mock sends at once: \
         Envoy reads it in one piece, so the first content byte reaches the client only after the \
         filter has translated that whole read; it is an upper bound of what a token-by-token stream \
         sees. The paced stream (the mock waits 1 ms before each event) is closer to a real provider, \
         but the mock's 1 ms timer adds ~1 ms of jitter, more than the 0.3 ms being judged.\n"
    );

    // Set-up.
    let _ = writeln!(s, "## Set-up\n");
    let _ = writeln!(
        s,
        "- **Pinning.** Each Envoy runs with `--concurrency 1` under `taskset -c {ENVOY_CPU}`. The load \
         generator (`tollgate-bench`, one tokio thread), the mock provider (`tollgate-mock --threads 1`) \
         and the control plane share CPU {LOAD_CPU}. The mock-direct rows use the same CPU {LOAD_CPU} for \
         generator and mock, so their throughput is what CPU {LOAD_CPU} can drive: when it is well above \
         an Envoy row, the mock and generator were not that row's bottleneck (the CPU columns show it).\n\
         - **Paths.** *mock directly*; *bare Envoy* (`bench/envoy-bare.yaml`: the listener settings of \
         `envoy/tollgate.yaml.tmpl`, HTTP connection manager with only the router, static cluster to the \
         mock); *Tollgate* (Envoy from `tollgate envoy-config` with the filter, `tollgate serve` as control \
         plane; snapshot with {DEPLOYMENTS} deployments and the master key); *Tollgate native module* (Envoy \
         from `tollgate envoy-config --native`: the same filter logic as an Envoy dynamic module, \
         `libtollgate_native.so`, on the same control plane). `gpt-mock` is the OpenAI-compatible \
         pass-through (model name rewritten, key injected); `claude-mock` is translated to Anthropic Messages \
         and back. Its baselines send the equivalent Anthropic request straight to the mock's `/v1/messages` \
         (direct and through bare Envoy), so both sides make the mock do the same work. `gemini-mock` is \
         translated to Gemini's `generateContent` (`streamGenerateContent?alt=sse` for a stream; the mock \
         checks the key) and `bedrock-mock` to Bedrock's Converse (`converse-stream`, answered in AWS event \
         stream frames), every request signed with SigV4, which the mock verifies. Their baselines send \
         what the filter sends (tollgate-core plans it in the load generator for the address it goes to; \
         Bedrock's signed once per run, the mock verifying it on every request).\n\
         - **Routing paths.** `{GROUP_MODEL}` (three deployments and a fallback: every request \
         relayed through the attempts route and listener, none failing) and `{FALLBACK_MODEL}` \
         (its one deployment answers 429, then one fallback to `gpt-mock`), both builds; see \
         *Routing* under Throughput. The upstream model the mock fails (`{FAILING_UPSTREAM}`) is \
         `{FALLBACK_MODEL}`'s alone, so its 429 rule reaches no other path. The snapshot's \
         {DEPLOYMENTS} deployments include theirs.\n\
         - **Requests.** A chat request with a system and a user message padded to ~1 KB, ~8 KB or ~100 KB; \
         the answer is fixed by a mock directive (`mock:chunks=30` buffered, `mock:chunks={STREAM_CHUNKS}` \
         streamed), so it does not grow with the prompt. Clients authenticate with the master key.\n\
         - **Load generator.** `bench/src/load.rs`: hyper HTTP/1.1 keep-alive connections. Latency: \
         {rate:.0} req/s for {} s after a 1 s warm-up, on {LATENCY_CONNECTIONS} connections (64 for the paced stream), wrk2-style \
         (a request that waits for a busy connection is timed from its scheduled send time). Time to first \
         token = arrival of the first response bytes holding non-empty content (`\"content\":\"x` or \
         `\"text\":\"x`). Throughput: {THROUGHPUT_CONNECTIONS} connections in a closed loop, in {} \
         interleaved rounds: each round runs every path for {:.1} s after a 0.5 s warm-up. This machine is \
         shared and its speed drifts by tens of percent within a minute, so the paths take turns and \
         *vs bare Envoy* is the median of the per-round ratios; req/s and CPU are over all rounds. \
         Every response is checked (2xx, streams complete).\n\
         - **Memory.** VmRSS of the Envoy process from `/proc/<pid>/status`, idle (after start-up and the \
         snapshot) and the maximum sampled every 200 ms under load.\n",
        lat_secs.as_secs(),
        r.rounds,
        tp_secs.as_secs_f64() / f64::from(r.rounds.max(1))
    );

    // Latency.
    let _ = writeln!(s, "## Latency at {rate:.0} req/s\n");
    let _ = writeln!(
        s,
        "Milliseconds. *added* = this path's p50 minus the baseline's p50 (same upstream request).\n"
    );
    let scenarios: Vec<Scenario> = {
        let mut v: Vec<Scenario> = r.latency.keys().map(|(s, _)| *s).collect();
        v.dedup();
        v
    };
    for scenario in scenarios {
        let _ = writeln!(s, "### {}\n", scenario.label());
        if scenario.stream {
            let _ = writeln!(
                s,
                "| path | TTFT p50 | TTFT p90 | TTFT p99 | total p50 | total p90 | total p99 | TTFT added vs direct | TTFT added vs bare Envoy | total added vs bare Envoy | errors |\n|---|---|---|---|---|---|---|---|---|---|---|"
            );
        } else {
            let _ = writeln!(
                s,
                "| path | p50 | p90 | p99 | added vs direct | added vs bare Envoy | errors |\n|---|---|---|---|---|---|---|"
            );
        }
        for path in PATHS {
            let Some(res) = r.latency.get(&(scenario, path)) else {
                continue;
            };
            let (direct, bare) = path.baselines();
            let added = |base: Route, ttft: bool| {
                if base == path {
                    "".to_string()
                } else {
                    signed_ms(lat(scenario, path, ttft, 0.5) - lat(scenario, base, ttft, 0.5))
                }
            };
            if scenario.stream {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    path.label(),
                    p50_p90_p99_ms(&res.ttft_us),
                    p50_p90_p99_ms(&res.total_us),
                    added(direct, true),
                    added(bare, true),
                    added(bare, false),
                    res.errors
                );
            } else {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    path.label(),
                    p50_p90_p99_ms(&res.total_us),
                    added(direct, false),
                    added(bare, false),
                    res.errors
                );
            }
        }
        let _ = writeln!(s);
    }

    // Throughput.
    let _ = writeln!(s, "## Throughput, {THROUGHPUT_CONNECTIONS} connections\n");
    let _ = writeln!(
        s,
        "*Envoy CPU/request* = the Envoy process's user + system CPU time over the measured window \
         divided by the requests completed; *CPU {ENVOY_CPU}* / *CPU {LOAD_CPU}* = how busy each core was \
         (Envoy's core, and the generator + mock core).\n"
    );
    let _ = writeln!(
        s,
        "| request | path | req/s | vs bare Envoy | p50 ms | p99 ms | Envoy CPU/request | CPU {ENVOY_CPU} busy | CPU {LOAD_CPU} busy | Envoy max RSS MB | errors |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for ((scenario, path), (res, usage)) in &r.throughput {
        let (_, bare) = path.baselines();
        let ratio = if *path == bare || path.is_direct() {
            String::new()
        } else {
            format!("{:.0}%", throughput_ratio(*scenario, *path, bare) * 100.0)
        };
        let per_request = if usage.envoy_cpu_s.is_nan() || res.completed == 0 {
            "-".to_string()
        } else {
            format!("{:.1} us", usage.envoy_cpu_s / res.completed as f64 * 1e6)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {:.0}% | {:.0}% | {} | {} |",
            scenario.label(),
            path.label(),
            res.rps(),
            ratio,
            ms(percentile(&res.total_us, 0.5)),
            ms(percentile(&res.total_us, 0.99)),
            per_request,
            usage.cpu0_busy * 100.0,
            usage.cpu1_busy * 100.0,
            if usage.max_rss_kb > 0 {
                mb(usage.max_rss_kb)
            } else {
                "-".into()
            },
            res.errors
        );
    }
    let _ = writeln!(s);
    render_routing(&mut s, r);

    // Where the CPU goes.
    let cpu_per_request = |scenario: Scenario, path: Route| {
        r.throughput
            .get(&(scenario, path))
            .map_or(f64::NAN, |(res, usage)| {
                usage.envoy_cpu_s / res.completed.max(1) as f64 * 1e6
            })
    };
    let _ = writeln!(
        s,
        "### Where Tollgate's Envoy CPU goes (1 KB requests, from the table above)\n"
    );
    let _ = writeln!(
        s,
        "| request | bare Envoy | + dynamic forward proxy (Tollgate's upstream set-up, no filter) | + empty Wasm filter | + body-routing host calls, no logic | + Wasm filter, OpenAI pass-through | + Wasm filter, Anthropic translation | + native module, OpenAI pass-through | + native module, Anthropic translation |\n|---|---|---|---|---|---|---|---|---|"
    );
    for scenario in [one_k, one_k_stream] {
        let bare = cpu_per_request(scenario, Route::BareOpenAi);
        let dfp = cpu_per_request(scenario, Route::DfpOpenAi);
        let noop = cpu_per_request(scenario, Route::FloorNoopOpenAi);
        let body_routing = cpu_per_request(scenario, Route::FloorBodyRoutingOpenAi);
        let openai = cpu_per_request(scenario, Route::TollgateOpenAi);
        // The Anthropic paths carry another request and answer: their filter share is over
        // bare Envoy on the equivalent Anthropic request, plus the forward proxy's cost.
        let anthropic_base = cpu_per_request(scenario, Route::BareAnthropic) + (dfp - bare);
        let anthropic = cpu_per_request(scenario, Route::TollgateAnthropic) - anthropic_base + dfp;
        let native_openai = cpu_per_request(scenario, Route::NativeOpenAi);
        let native_anthropic =
            cpu_per_request(scenario, Route::NativeAnthropic) - anthropic_base + dfp;
        let _ = writeln!(
            s,
            "| {} | {:.1} us | {:+.1} us | {:+.1} us | {:+.1} us | {:+.1} us | {:+.1} us | {:+.1} us | {:+.1} us |",
            scenario.label(),
            bare,
            dfp - bare,
            noop - bare,
            body_routing - bare,
            openai - dfp,
            anthropic - dfp,
            native_openai - dfp,
            native_anthropic - dfp
        );
    }
    let _ = writeln!(
        s,
        "\nThe filter columns are over the forward-proxy column; for the Anthropic translation, over \
         bare Envoy carrying the equivalent Anthropic request plus the forward proxy's cost. \
         The filter's share includes the Wasm runtime (V8), every proxy-wasm host call (headers, \
         bodies, metrics) and the core logic; the callgrind section below measures the core logic alone. \
         The floor columns are bench/floor-filter, loaded the same way as Tollgate's filter but with no \
         logic: *empty* returns Continue from every callback; *body-routing host calls* reads the request \
         headers, holds them until the body is complete, reads the body, sets `:path`, `:authority`, \
         `content-length` and a routing header, writes the body back, reads the response status and \
         holds and reads the response body: the least any filter that routes on the request body (the \
         model name is in it) must do through proxy-wasm.\n"
    );
    // The floor, against the 80% target.
    for scenario in [one_k, one_k_stream] {
        let ratio = |path: Route| throughput_ratio(scenario, path, Route::BareOpenAi) * 100.0;
        let _ = writeln!(
            s,
            "- {}: the empty Wasm filter runs at {:.0}% of bare Envoy's throughput and the \
             body-routing floor at {:.0}%; Tollgate's Wasm filter at {:.0}% (OpenAI), {:.0}% \
             (Anthropic), {:.0}% (Gemini) and {:.0}% (Bedrock); its native module at {:.0}% \
             (OpenAI), {:.0}% (Anthropic), {:.0}% (Gemini) and {:.0}% (Bedrock), each \
             translation against bare Envoy carrying the provider's own request.",
            scenario.label(),
            ratio(Route::FloorNoopOpenAi),
            ratio(Route::FloorBodyRoutingOpenAi),
            ratio(Route::TollgateOpenAi),
            throughput_ratio(scenario, Route::TollgateAnthropic, Route::BareAnthropic) * 100.0,
            throughput_ratio(scenario, Route::TollgateGemini, Route::BareGemini) * 100.0,
            throughput_ratio(scenario, Route::TollgateBedrock, Route::BareBedrock) * 100.0,
            ratio(Route::NativeOpenAi),
            throughput_ratio(scenario, Route::NativeAnthropic, Route::BareAnthropic) * 100.0,
            throughput_ratio(scenario, Route::NativeGemini, Route::BareGemini) * 100.0,
            throughput_ratio(scenario, Route::NativeBedrock, Route::BareBedrock) * 100.0,
        );
    }
    let _ = writeln!(s);
    // The translations side by side: each over bare Envoy carrying that provider's request.
    let _ = writeln!(
        s,
        "### The translations side by side (1 KB requests, from the table above)\n\n\
         Each translation's Envoy CPU per request over bare Envoy carrying the provider's own \
         request (what the filter sends it), less the forward proxy's cost, as for Anthropic \
         above. Bedrock's includes the SigV4 signature of every request (the body's SHA-256 and \
         the HMAC chain) and reading the answer's AWS event stream frames (each CRC32-checked).\n"
    );
    let _ = writeln!(
        s,
        "| request | translation | bare Envoy, provider's request | + Wasm filter | + native module | throughput vs bare Envoy, Wasm / native |\n|---|---|---|---|---|---|"
    );
    for scenario in [one_k, one_k_stream] {
        let dfp_cost = cpu_per_request(scenario, Route::DfpOpenAi)
            - cpu_per_request(scenario, Route::BareOpenAi);
        for (name, bare, wasm, native) in [
            (
                "OpenAI -> Anthropic",
                Route::BareAnthropic,
                Route::TollgateAnthropic,
                Route::NativeAnthropic,
            ),
            (
                "OpenAI -> Gemini",
                Route::BareGemini,
                Route::TollgateGemini,
                Route::NativeGemini,
            ),
            (
                "OpenAI -> Bedrock Converse",
                Route::BareBedrock,
                Route::TollgateBedrock,
                Route::NativeBedrock,
            ),
        ] {
            let base = cpu_per_request(scenario, bare);
            let _ = writeln!(
                s,
                "| {} | {name} | {base:.1} us | {:+.1} us | {:+.1} us | {:.0}% / {:.0}% |",
                scenario.label(),
                cpu_per_request(scenario, wasm) - base - dfp_cost,
                cpu_per_request(scenario, native) - base - dfp_cost,
                throughput_ratio(scenario, wasm, bare) * 100.0,
                throughput_ratio(scenario, native, bare) * 100.0,
            );
        }
    }
    let _ = writeln!(s);
    render_profile(&mut s, &r.profile, r.profile_error.as_deref());

    // Memory.
    let _ = writeln!(s, "## Memory (Envoy VmRSS)\n");
    let _ = writeln!(
        s,
        "At `--concurrency 1` Envoy runs the Wasm filter in two VMs: one on the main thread, which \
         never serves a request and keeps the snapshot as the bytes it came in, and the worker's, \
         which decodes it. The native module holds one decoded snapshot for all workers. Every \
         Envoy here, bare included, releases tcmalloc's free heap each second \
         (`memory_allocator_manager`).\n"
    );
    let _ = writeln!(
        s,
        "| Envoy | snapshot | idle MB | under load MB (max) |\n|---|---|---|---|"
    );
    let _ = writeln!(
        s,
        "| bare | - | {} | {} |",
        mb(r.bare_idle_kb),
        mb(bare_load)
    );
    let _ = writeln!(
        s,
        "| with the empty floor filter (bench/floor-filter, a ~120 KB module) | - | {} | - |",
        mb(r.floor_noop_idle_kb)
    );
    let _ = writeln!(
        s,
        "| with the empty native filter (bench/native-floor, an Envoy dynamic module: no Wasm runtime) | - | {} | - |",
        if r.native_floor_idle_kb == 0 {
            "did not run (see the bench log)".to_string()
        } else {
            mb(r.native_floor_idle_kb).to_string()
        }
    );
    let _ = writeln!(
        s,
        "| with filter, control plane unreachable | none (the Wasm runtime and module alone) | {} | - |",
        mb(r.filter_no_snapshot_kb)
    );
    let tollgate_load = [one_k, one_k_stream]
        .iter()
        .flat_map(|sc| [Route::TollgateOpenAi, Route::TollgateAnthropic].map(|p| (*sc, p)))
        .filter_map(|k| r.throughput.get(&k).map(|(_, u)| u.max_rss_kb))
        .max()
        .unwrap_or(0);
    let native_load = [one_k, one_k_stream]
        .iter()
        .flat_map(|sc| [Route::NativeOpenAi, Route::NativeAnthropic].map(|p| (*sc, p)))
        .filter_map(|k| r.throughput.get(&k).map(|(_, u)| u.max_rss_kb))
        .max()
        .unwrap_or(0);
    let small_keys = r.keys_small.as_ref().map_or(0, |k| k.created);
    let _ = writeln!(
        s,
        "| with filter | {DEPLOYMENTS} deployments, {small_keys} virtual keys | {} | {} |",
        mb(r.tollgate_idle_kb),
        mb(tollgate_load)
    );
    let _ = writeln!(
        s,
        "| with the native module | {DEPLOYMENTS} deployments, {small_keys} virtual keys | {} | {} |",
        mb(r.native_idle_kb),
        mb(native_load)
    );
    match (&r.keys_large, &r.tollgate_many_keys_load) {
        (Some(keys), Some((_, usage))) => {
            let _ = writeln!(
                s,
                "| with filter | {DEPLOYMENTS} deployments, {} virtual keys | {} | {} |",
                keys.created,
                mb(r.tollgate_many_keys_idle_kb),
                mb(usage.max_rss_kb)
            );
            if let Some((_, native)) = &r.native_many_keys_load {
                let _ = writeln!(
                    s,
                    "| with the native module | {DEPLOYMENTS} deployments, {} virtual keys | {} | {} |",
                    keys.created,
                    mb(r.native_many_keys_idle_kb),
                    mb(native.max_rss_kb)
                );
            }
            let _ = writeln!(
                s,
                "\n{} keys were created with `POST /key/generate` in {:.1} s{}.",
                keys.created,
                keys.elapsed.as_secs_f64(),
                if keys.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", keys.note)
                }
            );
        }
        _ => {
            let note = r
                .keys_small
                .as_ref()
                .map_or(String::new(), |k| k.note.clone());
            let _ = writeln!(
                s,
                "| with filter | {DEPLOYMENTS} deployments, {keys_wanted} virtual keys | pending | pending |\n\n\
                 Virtual keys are created with LiteLLM's `POST /key/generate` (master key) on the gateway \
                 port; this run could not: `{}`.",
                note.replace('`', "'").chars().take(300).collect::<String>()
            );
        }
    }
    if let Some(scale) = &r.scale {
        for (index, build) in scale::BUILDS.iter().enumerate() {
            let _ = writeln!(
                s,
                "| with the {build} | {DEPLOYMENTS} deployments, {} virtual keys (all in its first snapshot) | {} (+{} over bare) | - |",
                scale.keys,
                mb(scale.idle_kb[index]),
                mb(scale.idle_kb[index].saturating_sub(r.bare_idle_kb)),
            );
        }
    }
    let _ = writeln!(s);
    render_scale(&mut s, r);

    // Callgrind.
    let _ = writeln!(s, "## Filter CPU per request (callgrind)\n");
    let _ = writeln!(
        s,
        "`bench/src/bin/translate_path.rs` runs the core translate path natively (no Envoy, no Wasm): \
         `plan_chat_request` on the ~1 KB request with {DEPLOYMENTS} deployments in the state, \
         `ResponseHandler::on_headers`, then `on_complete_body` on the mock's answer or the mock's \
         {STREAM_CHUNKS}-chunk stream through `on_stream_chunk` one SSE event per call (Bedrock: one AWS \
         event stream frame per call), plus the upstream header map and the usage record the glue builds \
         per request. Bedrock's plan includes its SigV4 signature. Only the request loop is counted \
         (`--toggle-collect`). Instructions are stable on a noisy machine; they do not include the Wasm \
         runtime (V8) or the proxy-wasm host calls, which the *Envoy CPU/request* column above includes.\n"
    );
    if let Some(error) = &r.callgrind_error {
        let _ = writeln!(s, "Not measured: {error}\n");
    }
    if !r.callgrind.is_empty() {
        let _ = writeln!(s, "| path | answer | instructions (Ir) per request | per stream chunk |\n|---|---|---|---|");
        for c in &r.callgrind {
            let per_chunk = if c.mode == "stream" {
                format!("{:.0}", c.ir_per_request / STREAM_CHUNKS as f64)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} |",
                c.provider, c.mode, c.ir_per_request, per_chunk
            );
        }
        let _ = writeln!(s);
        for c in &r.callgrind {
            let _ = writeln!(s, "Top functions (self), {} {}:\n\n```", c.provider, c.mode);
            for line in &c.top {
                let _ = writeln!(s, "{line}");
            }
            let _ = writeln!(s, "```\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_config_keeps_its_deployment_count_and_adds_the_routing_groups() {
        let config = bench_config(9);
        assert_eq!(config.matches("- model_name: ").count(), DEPLOYMENTS);
        assert_eq!(config.matches("- model_name: gpt-group\n").count(), 3);
        for upstream in ["mock-group-1", "mock-group-2", "mock-group-3"] {
            assert_eq!(
                config
                    .matches(&format!("    model: openai/{upstream}\n"))
                    .count(),
                1
            );
        }
        assert_eq!(
            config
                .matches(
                    "- model_name: gpt-fallback\n  litellm_params:\n    model: openai/mock-fallback-429\n    \
                     api_base: http://127.0.0.1:9/v1\n    api_key: sk-mock-openai\n    num_retries: 0\n"
                )
                .count(),
            1
        );
        // The failing upstream model is named by no other deployment.
        assert_eq!(config.matches("mock-fallback-429").count(), 1);
        assert!(config.ends_with(
            "router_settings:\n  fallbacks: [{gpt-group: [gpt-mock]}, {gpt-fallback: [gpt-mock]}]\n\
             general_settings:\n  master_key: sk-bench-master\n"
        ));
    }

    fn measured(p50_us: f64, completed: u64, errors: u64) -> RunResult {
        RunResult {
            completed,
            errors,
            first_error: None,
            measured: Duration::from_secs(1),
            total_us: vec![p50_us],
            ttft_us: vec![p50_us],
        }
    }

    #[test]
    fn the_routing_section_reads_the_relay_against_gpt_mock_and_the_fallback_against_the_group() {
        let mut r = Results::default();
        for (scenario, shift) in [(ONE_K, 0.0), (ONE_K_STREAM, 100.0)] {
            for (path, p50, rps, errors) in [
                (Route::TollgateOpenAi, 400.0, 9000, 0),
                (Route::TollgateGroupOpenAi, 550.0, 4400, 0),
                (Route::TollgateFallbackOpenAi, 950.0, 2300, 4),
                (Route::NativeOpenAi, 350.0, 8800, 0),
                (Route::NativeGroupOpenAi, 450.0, 4800, 0),
                (Route::NativeFallbackOpenAi, 800.0, 2700, 0),
            ] {
                r.latency
                    .insert((scenario, path), measured(p50 + shift, 2000, errors));
                r.throughput.insert(
                    (scenario, path),
                    (measured(0.0, rps, errors * 10), Usage::default()),
                );
            }
        }
        r.retry_overflows = [Some(44), None];
        let mut s = String::new();
        render_routing(&mut s, &r);
        let rows: Vec<&str> = s.lines().filter(|line| line.starts_with("| ~")).collect();
        assert_eq!(
            rows,
            [
                "| ~1 KB request, buffered answer | Wasm filter | 0.400 | 0.550 | +0.150 | 0.950 | +0.400 | 9000 / 4400 / 2300 | 4 / 40 |",
                "| ~1 KB request, buffered answer | native module | 0.350 | 0.450 | +0.100 | 0.800 | +0.350 | 8800 / 4800 / 2700 | 0 / 0 |",
                "| ~1 KB request, stream of 200 chunks (sent at once) | Wasm filter | 0.500 | 0.650 | +0.150 | 1.050 | +0.400 | 9000 / 4400 / 2300 | 4 / 40 |",
                "| ~1 KB request, stream of 200 chunks (sent at once) | native module | 0.450 | 0.550 | +0.100 | 0.900 | +0.350 | 8800 / 4800 / 2700 | 0 / 0 |",
            ]
        );
        assert!(s.contains(
            "One fallback adds +0.400 ms (Wasm filter) and +0.350 ms (native module) to the p50 \
             of a 1 KB request with a buffered answer, and +0.400 / +0.350 ms to the time to \
             first token of a 1 KB stream."
        ));
        assert!(s.contains("was 44 (Wasm filter) and not read (native module)"));
    }
}
