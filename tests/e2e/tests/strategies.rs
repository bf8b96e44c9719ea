#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The routing strategies end to end, through a real Envoy (2 workers, both filter builds),
//! the control plane and the mock: latency-based routing (with `lowest_latency_buffer`),
//! least-busy, usage-based routing (v2, with per-deployment rpm / tpm caps), cost-based
//! routing, and the rpm cap and `model_group_alias` forms under simple-shuffle.
//!
//! The router's view of the deployments (the routing book) is one per Wasm worker and one
//! shared by all workers in the native module. Where a count must be exact, the requests go
//! over one kept-alive connection, which Envoy serves on one worker, so both builds see the
//! same history; where they go over new connections, the assertions hold for one book or two.
//! Every deployment `<id>` sends the upstream model `mock-<id>`, which the mock counts
//! (`/_mock/calls`): those counts are checked against the `x-litellm-model-id` of the answers.
//! The strategy is a setting of the whole router, so each test starts its own gateway; they
//! take turns (a lock), since the latency and least-busy tests measure time.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::{read_body, FilterBuild, Gateway, Mock, ProviderEnv, MOCK_OPENAI_KEY};

const MASTER_KEY: &str = "sk-master-strategies";

/// One test at a time: each starts a gateway, and the latency-based and least-busy tests
/// must not share two cores with other gateways' work.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The upstream model of deployment `id`: what the mock counts it by.
fn upstream(id: &str) -> String {
    format!("mock-{id}")
}

/// One OpenAI deployment of group `group` on the mock, with more `litellm_params` lines
/// (`params`) and `model_info` lines (`info`), each indented for its mapping.
fn deployment(mock: &Mock, group: &str, id: &str, params: &[&str], info: &[&str]) -> String {
    let mut text = format!(
        "- model_name: {group}\n\
         \x20 litellm_params:\n\
         \x20   model: openai/{model}\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n",
        model = upstream(id),
        url = mock.url
    );
    for line in params {
        text += &format!("    {line}\n");
    }
    text += &format!("  model_info:\n    id: {id}\n");
    for line in info {
        text += &format!("    {line}\n");
    }
    text
}

/// A config of `deployments`, the `router_settings` lines `router` (and `extra` top-level
/// text) and the master key.
fn config(deployments: &[String], router: &[&str], extra: &str) -> String {
    let mut text = String::from("model_list:\n");
    for deployment in deployments {
        text += deployment;
    }
    if !router.is_empty() {
        text += "router_settings:\n";
        for line in router {
            text += &format!("  {line}\n");
        }
    }
    text + extra + &format!("general_settings:\n  master_key: {MASTER_KEY}\n")
}

/// The mock and a gateway with `config`, its directory kept while they run.
fn start(mock_and_config: impl FnOnce(&Mock) -> String) -> (tempfile::TempDir, ProviderEnv) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &mock_and_config(&mock)).unwrap();
    // Every key the test relies on is read: the file loads without a warning.
    let checked = std::process::Command::new(tollgate_e2e::binary("tollgate").unwrap())
        .args(["check-config", "--config"])
        .arg(dir.path().join("config.yaml"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout).into_owned()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(
        checked.status.success() && report.contains(", 0 warnings"),
        "{report}"
    );
    (dir, ProviderEnv::new(mock, gateway, MASTER_KEY))
}

/// A chat request for `model` with one user message.
fn body(model: &str, content: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
    })
}

/// The tokens the gateway estimates for `body` before sending it (a token per four bytes):
/// what a deployment's tpm headroom is checked with.
fn estimate(body: &Value) -> u64 {
    serde_json::to_vec(body).unwrap().len().div_ceil(4) as u64
}

/// One client connection: a client that keeps one connection alive and uses it for every
/// request in turn, so that Envoy serves them all on one worker.
struct Conn {
    http: reqwest::blocking::Client,
    url: String,
}

/// What an answer says about its routing, and its body.
#[derive(Debug)]
struct Answer {
    status: u16,
    model_id: String,
    retries: Option<String>,
    cost: Option<f64>,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }

    /// Prompt plus completion tokens of a non-stream answer: what the routing book counts.
    fn tokens(&self) -> u64 {
        let usage = &self.json()["usage"];
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    }
}

impl Conn {
    fn new(env: &ProviderEnv) -> Conn {
        Conn {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(1)
                .build()
                .unwrap(),
            url: env.gateway.url.clone(),
        }
    }

    fn send(&self, body: &Value) -> Answer {
        let response = self
            .http
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(MASTER_KEY)
            .json(body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        let model_id = header("x-litellm-model-id").unwrap_or_default();
        let retries = header("x-litellm-attempted-retries");
        let cost = header("x-litellm-response-cost").map(|cost| cost.parse().unwrap());
        Answer {
            status,
            model_id,
            retries,
            cost,
            text: read_body(response).unwrap(),
        }
    }

    /// A request that must be served: its answer.
    fn ok(&self, model: &str, content: &str) -> Answer {
        let answer = self.send(&body(model, content, false));
        assert_eq!(answer.status, 200, "{model}: {}", answer.text);
        answer
    }

    /// The `/health` report of the worker this connection is on.
    fn health(&self) -> Value {
        let response = self
            .http
            .get(format!("{}/health", self.url))
            .bearer_auth(MASTER_KEY)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        serde_json::from_str(&read_body(response).unwrap()).unwrap()
    }
}

/// How many answers each deployment served.
fn tally<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.to_string()).or_insert(0) += 1;
    }
    counts
}

/// The mock's counts since its last reset are exactly `served` (deployment id -> answers):
/// every request reached the deployment its answer names, and no other.
fn assert_calls(mock: &Mock, served: &BTreeMap<String, u64>) {
    let expected: BTreeMap<String, u64> = served
        .iter()
        .map(|(id, count)| (upstream(id), *count))
        .collect();
    assert_eq!(mock.calls().unwrap(), expected);
}

/// Waits until the current minute has at least `room` seconds left, so that a test's
/// requests fall in one minute (the routing book's rpm / tpm counters and the rate limits'
/// windows are per minute).
fn wait_for_window_with(room: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let left = 60_000 - now % 60_000;
    if left < room * 1000 {
        std::thread::sleep(Duration::from_millis(left + 50));
    }
}

fn is_native() -> bool {
    matches!(FilterBuild::chosen().unwrap(), FilterBuild::Native(_))
}

/// Latency-based routing with `lowest_latency_buffer: 2`: lat-a answers after 100 ms, lat-b
/// after 120 ms, lat-slow after 1500 ms (mock delays). A deployment the book has no latency
/// for counts as 0 ms, so the first three requests on a connection try each deployment once
/// (in some order); after that every request goes to one within 3x (1 + buffer) the fastest
/// average: lat-a or lat-b, at random, never lat-slow. Non-stream latencies are per
/// completion token (2 for these requests), a stream's are to its first byte.
#[test]
fn latency_based_routing_prefers_the_fastest_within_the_buffer() {
    let _serial = serial();
    let (_dir, env) = start(|mock| {
        config(
            &[
                deployment(mock, "lat", "lat-a", &[], &[]),
                deployment(mock, "lat", "lat-b", &[], &[]),
                deployment(mock, "lat", "lat-slow", &[], &[]),
            ],
            &[
                "routing_strategy: latency-based-routing",
                "routing_strategy_args: {lowest_latency_buffer: 2}",
            ],
            "",
        )
    });
    let mock = &env.mock;
    for (id, delay_ms) in [("lat-a", 100), ("lat-b", 120), ("lat-slow", 1500)] {
        mock.set_fault(&upstream(id), json!({"delay_ms": delay_ms}), None)
            .unwrap();
    }
    mock.reset_calls().unwrap();
    let conn = Conn::new(&env);

    // Warm-up: one request to each deployment, the unmeasured ones first.
    let warm_up: Vec<String> = (0..3).map(|_| conn.ok("lat", "hi").model_id).collect();
    let mut sorted = warm_up.clone();
    sorted.sort();
    assert_eq!(sorted, ["lat-a", "lat-b", "lat-slow"], "{warm_up:?}");

    // Then 17 requests: none to lat-slow (750 ms a token against lat-a's 50, beyond 3x);
    // lat-a and lat-b (60 ms a token, within 3x) share them at random, each taking at least
    // one (that one of them takes none has probability 2 / 2^17).
    let after: Vec<String> = (0..17).map(|_| conn.ok("lat", "hi").model_id).collect();
    let counts = tally(after.iter().map(String::as_str));
    assert_eq!(counts.get("lat-slow"), None, "{after:?}");
    assert!(
        counts.get("lat-a").is_some_and(|n| *n >= 1)
            && counts.get("lat-b").is_some_and(|n| *n >= 1),
        "{after:?}"
    );

    // Streams (compared by time to first byte once known): never lat-slow either.
    let mut streamed = Vec::new();
    for _ in 0..4 {
        let answer = conn.send(&body("lat", "hi", true));
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert!(answer.text.contains("data: [DONE]"), "{}", answer.text);
        assert!(
            answer.model_id == "lat-a" || answer.model_id == "lat-b",
            "{answer:?}"
        );
        streamed.push(answer.model_id);
    }
    let served = tally(
        warm_up
            .iter()
            .chain(&after)
            .chain(&streamed)
            .map(String::as_str),
    );
    assert_calls(mock, &served);
    assert_eq!(served.get("lat-slow"), Some(&1));

    // New connections: the native module's one book knows lat-slow already; the Wasm worker
    // that has not measured it yet tries it once at most (in its own warm-up).
    mock.reset_calls().unwrap();
    let fresh: Vec<String> = (0..12)
        .map(|_| Conn::new(&env).ok("lat", "hi").model_id)
        .collect();
    let served = tally(fresh.iter().map(String::as_str));
    assert_calls(mock, &served);
    let slow = served.get("lat-slow").copied().unwrap_or(0);
    let most = if is_native() { 0 } else { 1 };
    assert!(slow <= most, "lat-slow served {slow} of 12: {fresh:?}");
    println!("latency-based: warm-up {warm_up:?}, then {counts:?}; new connections {served:?}");

    assert!(env.gateway.filter_failures().is_empty());
}

/// Least-busy: the deployment with fewer requests in flight is chosen. A slow request (the
/// mock holds it 4 s) occupies one deployment; every request chosen meanwhile on the same
/// worker goes to the other one. Two connections on one worker are found with `/health`
/// (each Wasm worker reports what it saw itself: a connection that sees the probe
/// deployment's latency is on the worker that served it).
#[test]
fn least_busy_avoids_the_deployment_with_requests_in_flight() {
    let _serial = serial();
    let (_dir, env) = start(|mock| {
        config(
            &[
                deployment(mock, "busy", "busy-a", &[], &[]),
                deployment(mock, "busy", "busy-b", &[], &[]),
                deployment(mock, "probe", "probe-1", &[], &[]),
            ],
            &["routing_strategy: least-busy"],
            "",
        )
    });
    let mock = &env.mock;
    let slow_conn = Conn::new(&env);
    slow_conn.ok("probe", "which worker");
    let saw_probe = |report: &Value| {
        report["healthy_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|endpoint| {
                endpoint["model_id"] == "probe-1" && endpoint["latency_ms"].as_u64().is_some()
            })
    };
    assert!(saw_probe(&slow_conn.health()));
    // A second connection on the same worker: half of the new connections are, for Wasm
    // (each attempt misses with probability 1/2); every one for the native module.
    let fast_conn = (0..40)
        .map(|_| Conn::new(&env))
        .find(|conn| saw_probe(&conn.health()))
        .expect("a connection on the probe's worker");

    mock.reset_calls().unwrap();
    const HOLD_MS: u64 = 4_000;
    let sent = Instant::now();
    let slow = std::thread::spawn(move || {
        slow_conn.send(&body(
            "busy",
            &format!("mock:delay_ms={HOLD_MS} hold on"),
            false,
        ))
    });
    // Once the mock has it, the slow request is in flight on its deployment.
    assert!(tollgate_e2e::eventually(Duration::from_secs(15), || {
        mock.calls().unwrap().values().sum::<u64>() == 1
    }));
    let mut quick = Vec::new();
    for _ in 0..5 {
        let answer = fast_conn.ok("busy", "quick");
        // Chosen before the slow one can have ended (the mock holds it HOLD_MS from its
        // arrival, after `sent`): only these are asserted, so a slow machine cannot fail
        // the test, only weaken it.
        let during = sent.elapsed() < Duration::from_millis(HOLD_MS);
        quick.push((answer.model_id, during));
    }
    let slow = slow.join().unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text);
    let busy = slow.model_id.as_str();
    assert!(busy == "busy-a" || busy == "busy-b", "{slow:?}");
    let other = if busy == "busy-a" { "busy-b" } else { "busy-a" };
    let during: Vec<&str> = quick
        .iter()
        .filter(|(_, during)| *during)
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        during.iter().all(|id| *id == other),
        "slow on {busy}: {quick:?}"
    );
    if during.len() < quick.len() {
        println!(
            "least-busy: only {} of the quick requests ran while the slow one was held",
            during.len()
        );
    }
    let served = tally(
        quick
            .iter()
            .map(|(id, _)| id.as_str())
            .chain([slow.model_id.as_str()]),
    );
    assert_calls(mock, &served);
    println!("least-busy: slow request on {busy}, the quick ones on {quick:?}");

    assert!(env.gateway.filter_failures().is_empty());
}

/// The routing book as usage-based routing reads it, kept by the test from the answers:
/// tokens and requests this minute per deployment, and each deployment's caps.
struct UsageBook {
    caps: BTreeMap<&'static str, (Option<u64>, Option<u64>)>,
    tokens: BTreeMap<String, u64>,
    requests: BTreeMap<String, u64>,
}

impl UsageBook {
    /// Deployments with their (rpm, tpm).
    fn new(caps: &[(&'static str, Option<u64>, Option<u64>)]) -> Self {
        UsageBook {
            caps: caps
                .iter()
                .map(|(id, rpm, tpm)| (*id, (*rpm, *tpm)))
                .collect(),
            tokens: BTreeMap::new(),
            requests: BTreeMap::new(),
        }
    }

    /// The deployments usage-based routing may choose for a request of `estimated` tokens:
    /// those with the fewest tokens among the ones with rpm and tpm headroom.
    fn choices(&self, estimated: u64) -> Vec<&'static str> {
        let tokens = |id: &str| self.tokens.get(id).copied().unwrap_or(0);
        let requests = |id: &str| self.requests.get(id).copied().unwrap_or(0);
        let open: Vec<&'static str> = self
            .caps
            .iter()
            .filter(|(id, (rpm, tpm))| {
                rpm.is_none_or(|rpm| requests(id) < rpm)
                    && tpm.is_none_or(|tpm| tokens(id) + estimated <= tpm)
            })
            .map(|(id, _)| *id)
            .collect();
        let fewest = open.iter().map(|id| tokens(id)).min().unwrap();
        open.into_iter().filter(|id| tokens(id) == fewest).collect()
    }

    /// Sends `body` on `conn`, checks that the deployment it went to is one the strategy may
    /// choose, and books its tokens; returns that deployment.
    fn send(&mut self, conn: &Conn, body: &Value) -> String {
        let choices = self.choices(estimate(body));
        let answer = conn.send(body);
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert!(
            choices.contains(&answer.model_id.as_str()),
            "went to {}, expected one of {choices:?}; tokens {:?}, requests {:?}",
            answer.model_id,
            self.tokens,
            self.requests
        );
        *self.tokens.entry(answer.model_id.clone()).or_insert(0) += answer.tokens();
        *self.requests.entry(answer.model_id.clone()).or_insert(0) += 1;
        answer.model_id
    }
}

/// Usage-based routing (v2): the deployment with the fewest tokens this minute, among those
/// with rpm / tpm headroom. On one connection every choice is checked against the book the
/// test keeps from the answers' usage (the mock's usage: prompt words, and the reply "echo:
/// <prompt>", prompt words + 1); ties are free.
#[test]
fn usage_based_routing_takes_the_least_used_deployment_with_headroom() {
    let _serial = serial();
    let (_dir, env) = start(|mock| {
        config(
            &[
                deployment(mock, "usage", "use-a", &[], &[]),
                deployment(mock, "usage", "use-b", &[], &[]),
                deployment(mock, "capped", "cap-2", &["rpm: 2"], &[]),
                deployment(mock, "capped", "cap-free", &[], &[]),
                deployment(mock, "tpm", "tpm-60", &["tpm: 60"], &[]),
                deployment(mock, "tpm", "tpm-free", &[], &[]),
            ],
            &["routing_strategy: usage-based-routing-v2"],
            "",
        )
    });
    let mock = &env.mock;
    let conn = Conn::new(&env);
    wait_for_window_with(15);
    mock.reset_calls().unwrap();
    let mut served = Vec::new();

    // One request of 81 tokens (40 words + the 41 of its echo) to one deployment (a tie:
    // either), then requests of 11 tokens (5 + 6): the other deployment takes the next 8
    // (at 77 tokens it has fewer than 81; at 88 it has more), the first the 9th (81 < 88),
    // the other the 10th (92 > 88).
    let mut book = UsageBook::new(&[("use-a", None, None), ("use-b", None, None)]);
    let big = vec!["word"; 40].join(" ");
    let first = book.send(&conn, &body("usage", &big, false));
    let second = if first == "use-a" { "use-b" } else { "use-a" };
    let mut sequence = Vec::new();
    for _ in 0..10 {
        sequence.push(book.send(&conn, &body("usage", "five words in this prompt", false)));
    }
    let mut expected = vec![second.to_string(); 8];
    expected.push(first.clone());
    expected.push(second.to_string());
    assert_eq!(sequence, expected, "after the big request on {first}");
    assert_eq!(book.tokens[&first], 81 + 11);
    assert_eq!(book.tokens[second], 9 * 11);
    served.push(first);
    served.extend(sequence);

    // rpm 2 on cap-2: it takes two of the first four requests (the two deployments take
    // turns, ties at random) and none after; cap-free takes the other six.
    let mut book = UsageBook::new(&[("cap-2", Some(2), None), ("cap-free", None, None)]);
    let capped: Vec<String> = (0..8)
        .map(|_| book.send(&conn, &body("capped", "five words in this prompt", false)))
        .collect();
    let counts = tally(capped.iter().map(String::as_str));
    assert_eq!(counts.get("cap-2"), Some(&2), "{capped:?}");
    assert_eq!(counts.get("cap-free"), Some(&6), "{capped:?}");
    assert!(capped[4..].iter().all(|id| id == "cap-free"), "{capped:?}");
    served.extend(capped);

    // tpm 60 on tpm-60: a request goes there only while its tokens this minute plus the
    // request's estimate (a token per four bytes of its 97-byte body: 25) fit in 60. At 11
    // tokens a request, the 4th fits (33 + 25 = 58), a 5th would not (44 + 25 = 69): of 10
    // requests, the deployments taking turns, tpm-60 takes 4 and tpm-free 6.
    let request = body("tpm", "five words in this prompt", false);
    assert_eq!(estimate(&request), 25);
    let mut book = UsageBook::new(&[("tpm-60", None, Some(60)), ("tpm-free", None, None)]);
    let tpm: Vec<String> = (0..10).map(|_| book.send(&conn, &request)).collect();
    let counts = tally(tpm.iter().map(String::as_str));
    assert_eq!(counts.get("tpm-60"), Some(&4), "{tpm:?}");
    assert_eq!(counts.get("tpm-free"), Some(&6), "{tpm:?}");
    served.extend(tpm);

    assert_calls(mock, &tally(served.iter().map(String::as_str)));
    assert!(env.gateway.filter_failures().is_empty());
}

/// Cost-based routing: the cheapest deployment by input + output price per token, the
/// prices from `litellm_params` or `model_info`; an unpriced one comes last. When the
/// cheapest fails, the request is retried on the next cheapest. Prices are powers of two, so
/// the cost header is exact.
#[test]
fn cost_based_routing_takes_the_cheapest_deployment() {
    const CHEAP_IN: f64 = 1.0 / 1_048_576.0; // 2^-20
    const CHEAP_OUT: f64 = 1.0 / 524_288.0; // 2^-19
    let _serial = serial();
    let (_dir, env) = start(|mock| {
        config(
            &[
                // Input 2^-24 (the lowest), output 2^-12: the dearest of the priced ones.
                deployment(
                    mock,
                    "priced",
                    "cost-lopsided",
                    &[],
                    &[
                        "input_cost_per_token: 0.000000059604644775390625",
                        "output_cost_per_token: 0.000244140625",
                    ],
                ),
                deployment(mock, "priced", "cost-unpriced", &[], &[]),
                // 2^-16 each way.
                deployment(
                    mock,
                    "priced",
                    "cost-dear",
                    &[],
                    &[
                        "input_cost_per_token: 0.0000152587890625",
                        "output_cost_per_token: 0.0000152587890625",
                    ],
                ),
                deployment(
                    mock,
                    "priced",
                    "cost-cheap",
                    &[
                        &format!("input_cost_per_token: {CHEAP_IN}"),
                        &format!("output_cost_per_token: {CHEAP_OUT}"),
                    ],
                    &[],
                ),
                deployment(
                    mock,
                    "tiered",
                    "tier-cheap",
                    &["order: 2", &format!("input_cost_per_token: {CHEAP_IN}")],
                    &[],
                ),
                deployment(
                    mock,
                    "tiered",
                    "tier-dear",
                    &["order: 1", "input_cost_per_token: 0.0000152587890625"],
                    &[],
                ),
            ],
            &[
                "routing_strategy: cost-based-routing",
                "num_retries: 3",
                "allowed_fails: 10",
            ],
            "",
        )
    });
    let mock = &env.mock;
    mock.reset_calls().unwrap();

    // Every request, on any connection (worker), goes to cost-cheap, priced at its prices.
    let mut served = Vec::new();
    for _ in 0..10 {
        let answer = Conn::new(&env).ok("priced", "what does this cost");
        assert_eq!(answer.model_id, "cost-cheap", "{answer:?}");
        assert_eq!(answer.retries.as_deref(), Some("0"));
        let usage = &answer.json()["usage"];
        let expected = usage["prompt_tokens"].as_u64().unwrap() as f64 * CHEAP_IN
            + usage["completion_tokens"].as_u64().unwrap() as f64 * CHEAP_OUT;
        assert_eq!(answer.cost, Some(expected), "{answer:?}");
        served.push(answer.model_id);
    }
    assert_calls(mock, &tally(served.iter().map(String::as_str)));

    // The cheaper ones failing once each (500): the request is retried in price order,
    // ending at the first that answers.
    let conn = Conn::new(&env);
    let order = ["cost-cheap", "cost-dear", "cost-lopsided", "cost-unpriced"];
    for failing in 1..order.len() {
        mock.reset_calls().unwrap();
        for id in &order[..failing] {
            mock.set_fault(&upstream(id), json!({"status": 500}), Some(1))
                .unwrap();
        }
        let answer = conn.ok("priced", "what does this cost");
        assert_eq!(answer.model_id, order[failing], "{answer:?}");
        assert_eq!(answer.retries, Some(failing.to_string()));
        assert_calls(mock, &tally(order[..=failing].iter().copied()));
    }
    mock.clear_faults().unwrap();
    // Failures below allowed_fails cool nothing down: cost-cheap serves again.
    assert_eq!(
        conn.ok("priced", "what does this cost").model_id,
        "cost-cheap"
    );

    // `order` tiers come before the strategy: the dear deployment of tier 1 serves while
    // it is available, the cheap one of tier 2 does not.
    mock.reset_calls().unwrap();
    let tiered: Vec<String> = (0..4)
        .map(|_| conn.ok("tiered", "what does this cost").model_id)
        .collect();
    assert_eq!(tiered, ["tier-dear"; 4]);
    assert_calls(mock, &tally(tiered.iter().map(String::as_str)));

    assert!(env.gateway.filter_failures().is_empty());
}

/// Simple-shuffle (the default) with a deployment at its rpm cap, and `model_group_alias`
/// in LiteLLM's forms (`alias: group`, `alias: {model: group, hidden: true}`), the seed's list
/// form (`alias: [group, ...]`, the union of the groups) and the top-level key.
#[test]
fn shuffle_respects_rpm_caps_and_aliases_route_to_their_groups() {
    let _serial = serial();
    let (_dir, env) = start(|mock| {
        config(
            &[
                deployment(mock, "gpt-4o", "al-4o", &[], &[]),
                deployment(mock, "gpt-4-turbo", "al-turbo", &[], &[]),
                deployment(mock, "shuffled", "shuf-rpm2", &["rpm: 2", "weight: 1"], &[]),
                deployment(mock, "shuffled", "shuf-free", &["weight: 1"], &[]),
                deployment(mock, "tiered-cap", "tc1", &["order: 1"], &[]),
                deployment(mock, "tiered-cap", "tc2", &["order: 2", "rpm: 1"], &[]),
                deployment(mock, "tiered-cap", "tc3", &["order: 3"], &[]),
            ],
            &[
                "disable_cooldowns: true",
                "model_group_alias:",
                "  gpt-4: gpt-4o",
                "  gpt-4-hidden: {model: gpt-4o, hidden: true}",
                "  gpt-4-group: [gpt-4o, gpt-4-turbo]",
            ],
            "model_group_alias: {turbo: gpt-4-turbo}\n",
        )
    });
    let mock = &env.mock;

    // /v1/models lists the groups and the aliases, but not the hidden one.
    let response = tollgate_e2e::client()
        .get(format!("{}/v1/models", env.gateway.url))
        .bearer_auth(MASTER_KEY)
        .send()
        .unwrap();
    let models: Value = serde_json::from_str(&read_body(response).unwrap()).unwrap();
    let mut listed: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "gpt-4",
            "gpt-4-group",
            "gpt-4-turbo",
            "gpt-4o",
            "shuffled",
            "tiered-cap",
            "turbo"
        ]
    );

    // Each alias of one group goes to that group's deployment, the hidden one too.
    let conn = Conn::new(&env);
    mock.reset_calls().unwrap();
    let mut served = Vec::new();
    for (alias, id) in [
        ("gpt-4", "al-4o"),
        ("gpt-4-hidden", "al-4o"),
        ("turbo", "al-turbo"),
    ] {
        for _ in 0..2 {
            let answer = conn.ok(alias, "which group");
            assert_eq!(answer.model_id, id, "{alias}");
            assert_eq!(env.upstream()["body"]["model"], upstream(id).as_str());
            served.push(answer.model_id);
        }
    }
    assert_calls(mock, &tally(served.iter().map(String::as_str)));

    // The list form: the union of both groups' deployments, shuffled evenly. Of 40
    // requests each takes 20 on average (standard deviation 3.2); at least 8 is 3.8
    // standard deviations below.
    mock.reset_calls().unwrap();
    let union: Vec<String> = (0..40)
        .map(|_| conn.ok("gpt-4-group", "either").model_id)
        .collect();
    let counts = tally(union.iter().map(String::as_str));
    assert_calls(mock, &counts);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["al-4o", "al-turbo"]);
    assert!(counts.values().all(|n| *n >= 8), "{counts:?}");

    // rpm 2 on shuf-rpm2, equal weights: it takes 2 of 20 requests on one connection, never
    // more (the book skips it at its cap). Fewer than 2 would take all 20 but at most one
    // landing there: probability 21 / 2^20.
    wait_for_window_with(15);
    mock.reset_calls().unwrap();
    let shuffled: Vec<String> = (0..20)
        .map(|_| conn.ok("shuffled", "share").model_id)
        .collect();
    let counts = tally(shuffled.iter().map(String::as_str));
    assert_calls(mock, &counts);
    assert_eq!(counts.get("shuf-rpm2"), Some(&2), "{shuffled:?}");
    assert_eq!(counts.get("shuf-free"), Some(&18), "{shuffled:?}");

    // New connections (either worker), in the same minute: shuf-rpm2 gets no request past
    // its cap on any worker (the deployment's rpm is also a rate limit, counted by the
    // control plane for every filter), and shuf-free serves all 10. A Wasm worker that did
    // not see the cap reached may still choose shuf-rpm2; the rate limit's refusal then
    // sends the request to shuf-free instead (not counted as a retry), and the worker's book
    // learns the cap.
    mock.reset_calls().unwrap();
    for _ in 0..10 {
        let answer = Conn::new(&env).send(&body("shuffled", "share", false));
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.model_id, "shuf-free", "{answer:?}");
        assert_eq!(answer.retries.as_deref(), Some("0"), "{answer:?}");
    }
    assert_calls(mock, &BTreeMap::from([("shuf-free".to_string(), 10)]));

    // A retry that lands on a deployment at its own rpm cap: tc1 (first tier) always fails;
    // its retry goes to tc2 (rpm 1) once, then, on any worker, to tc3: a worker that did
    // not see tc2's request still picks it, the rate limit refuses that attempt before it
    // is sent, and the plan takes tc3 instead (not another retry).
    wait_for_window_with(15);
    mock.set_fault(&upstream("tc1"), json!({"status": 500}), None)
        .unwrap();
    mock.reset_calls().unwrap();
    let first = Conn::new(&env).send(&body("tiered-cap", "cap", false));
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        (first.model_id.as_str(), first.retries.as_deref()),
        ("tc2", Some("1"))
    );
    for _ in 0..6 {
        let answer = Conn::new(&env).send(&body("tiered-cap", "cap", false));
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            (answer.model_id.as_str(), answer.retries.as_deref()),
            ("tc3", Some("1"))
        );
    }
    let calls = mock.calls().unwrap();
    assert_eq!(calls.get(&upstream("tc1")), Some(&7), "{calls:?}");
    assert_eq!(calls.get(&upstream("tc2")), Some(&1), "{calls:?}");
    assert_eq!(calls.get(&upstream("tc3")), Some(&6), "{calls:?}");
    mock.clear_faults().unwrap();

    assert!(env.gateway.filter_failures().is_empty());
}
