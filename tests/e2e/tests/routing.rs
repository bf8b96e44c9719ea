#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Routing end to end: real Envoy (2 workers) + filter + control plane + the mock, which
//! fails chosen deployments on command (`/_mock/faults`, by upstream model) and counts the
//! requests each received (`/_mock/calls`). A model group with a failing deployment serves
//! every request from the other one; a group that fails falls back to another provider's
//! group, streams included; a deployment sent alone is retried there by Envoy; every attempt
//! has its usage record.

use serde_json::{json, Value};
use tollgate_e2e::{
    read_body, sse_data, Gateway, Mock, ProviderEnv, MOCK_ANTHROPIC_KEY, MOCK_COHERE_KEY,
    MOCK_OPENAI_KEY,
};

const MASTER_KEY: &str = "sk-master-routing";

/// `gpt`: two OpenAI deployments (upstream models mock-a and mock-b); `claude`: one
/// Anthropic deployment, the fallback of `gpt-fb` (one OpenAI deployment, mock-fb);
/// `solo`: one OpenAI deployment (mock-solo) without fallbacks.
fn config(mock: &Mock) -> String {
    format!(
        "model_list:\n\
         - model_name: gpt\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-a\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         \x20 model_info:\n\
         \x20   id: gpt-a\n\
         - model_name: gpt\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-b\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         \x20 model_info:\n\
         \x20   id: gpt-b\n\
         - model_name: gpt-fb\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-fb\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         \x20 model_info:\n\
         \x20   id: gpt-fb-1\n\
         - model_name: claude\n\
         \x20 litellm_params:\n\
         \x20   model: anthropic/claude-mock-sonnet\n\
         \x20   api_base: {url}\n\
         \x20   api_key: {MOCK_ANTHROPIC_KEY}\n\
         \x20 model_info:\n\
         \x20   id: claude-1\n\
         - model_name: solo\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-solo\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         \x20 model_info:\n\
         \x20   id: solo-1\n\
         router_settings:\n\
         \x20 fallbacks: [{{gpt-fb: [claude]}}]\n\
         general_settings:\n\
         \x20 master_key: {MASTER_KEY}\n",
        url = mock.url
    )
}

fn env() -> (tempfile::TempDir, ProviderEnv) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &config(&mock)).unwrap();
    (dir, ProviderEnv::new(mock, gateway, MASTER_KEY))
}

fn request(model: &str, user: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "user": user,
        "stream": stream,
        "messages": [{"role": "user", "content": "say hello to the router"}],
    })
}

/// Status, the routing headers and the body of one chat request.
fn send(env: &ProviderEnv, body: &Value) -> (u16, Headers, String) {
    post_json(env, "/v1/chat/completions", body)
}

#[derive(Debug, PartialEq)]
struct Headers {
    model_id: Option<String>,
    retries: Option<String>,
    fallbacks: Option<String>,
    retry_mark: Option<String>,
}

fn headers(model_id: &str, retries: u32, fallbacks: u32) -> Headers {
    Headers {
        model_id: Some(model_id.into()),
        retries: Some(retries.to_string()),
        fallbacks: Some(fallbacks.to_string()),
        retry_mark: None,
    }
}

#[test]
fn routing_end_to_end() {
    let (_dir, env) = env();
    let mock = &env.mock;

    // A reference answer, for the usage every served request must report.
    let (status, reference, body) = send(&env, &request("solo", "routing-reference", false));
    assert_eq!(status, 200, "{body}");
    assert_eq!(reference, headers("solo-1", 0, 0));
    let reference_usage = serde_json::from_str::<Value>(&body).unwrap()["usage"].clone();
    assert!(
        reference_usage["prompt_tokens"].as_u64().is_some(),
        "{body}"
    );

    // One deployment of `gpt` answers 500: every request is served by the other.
    mock.set_fault("mock-a", json!({"status": 500}), None)
        .unwrap();
    mock.reset_calls().unwrap();
    let mut retried = 0;
    for _ in 0..10 {
        let (status, got, body) = send(&env, &request("gpt", "routing-group", false));
        assert_eq!(status, 200, "{body}");
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["usage"], reference_usage);
        assert_eq!(got.model_id.as_deref(), Some("gpt-b"));
        assert_eq!(got.fallbacks.as_deref(), Some("0"));
        assert_eq!(got.retry_mark, None);
        retried += got.retries.unwrap().parse::<u64>().unwrap();
    }
    let calls = mock.calls().unwrap();
    assert_eq!(calls.get("mock-b"), Some(&10));
    // Each request that went to mock-a first was retried once, on mock-b.
    assert_eq!(calls.get("mock-a").copied().unwrap_or(0), retried);
    let rows = env.logs("routing-group", 10 + retried as usize);
    let failed: Vec<&Value> = rows
        .iter()
        .filter(|row| row["status"] == "failure")
        .collect();
    assert_eq!(failed.len() as u64, retried);
    assert!(
        failed.iter().all(|row| row["model_id"] == "gpt-a"),
        "{failed:?}"
    );

    // /health: the failing deployment is unhealthy, with its last error; the others are not.
    let health = |key: Option<&str>| {
        let mut request = tollgate_e2e::client().get(format!("{}/health", env.gateway.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str::<Value>(&read_body(response).unwrap()).unwrap(),
        )
    };
    assert_eq!(health(None).0, 401);
    // Each Wasm worker reports what it saw itself (the native module one view for all): a
    // new connection may land on either worker, so ask until one that saw mock-a fail
    // answers (with 10 requests over 2 workers, both nearly always did).
    let seen_failing = |report: &Value| {
        report["unhealthy_endpoints"]
            .as_array()
            .is_some_and(|list| list.iter().any(|endpoint| endpoint["model_id"] == "gpt-a"))
    };
    let mut answer = health(Some(MASTER_KEY));
    for _ in 0..40 {
        if retried == 0 || seen_failing(&answer.1) {
            break;
        }
        answer = health(Some(MASTER_KEY));
    }
    let (status, report) = answer;
    assert_eq!(status, 200, "{report}");
    let ids = |list: &str| -> Vec<String> {
        let mut ids: Vec<String> = report[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|endpoint| endpoint["model_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    if retried > 0 {
        assert_eq!(report["status"], "unhealthy");
        assert_eq!(ids("unhealthy_endpoints"), ["gpt-a"], "{report}");
        let sick = &report["unhealthy_endpoints"][0];
        assert_eq!(sick["model"], "gpt");
        assert_eq!(sick["error"]["status"], 500, "{report}");
        assert_eq!(sick["error"]["class"], "server_error");
        assert_eq!(
            ids("healthy_endpoints"),
            ["claude-1", "gpt-b", "gpt-fb-1", "solo-1"]
        );
    }
    assert_eq!(
        report["healthy_endpoints"].as_array().unwrap().len()
            + report["unhealthy_endpoints"].as_array().unwrap().len(),
        5
    );
    assert!(
        report["uptime"].as_str().unwrap().ends_with('s'),
        "{report}"
    );
    let probe = |path: &str| {
        let response = tollgate_e2e::client()
            .get(format!("{}{path}", env.gateway.url))
            .send()
            .unwrap();
        (response.status().as_u16(), read_body(response).unwrap())
    };
    assert_eq!(
        probe("/health/liveliness"),
        (200, "\"I'm alive!\"".to_string())
    );
    let (status, ready) = probe("/health/readiness");
    assert_eq!(status, 200, "{ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["status"], "healthy");
    assert!(ready["snapshot_version"].as_u64().unwrap() >= 1, "{ready}");

    // The same as a stream: one well-formed stream from mock-b.
    mock.reset_calls().unwrap();
    for _ in 0..4 {
        let (status, got, body) = send(&env, &request("gpt", "routing-group-stream", true));
        assert_eq!(status, 200, "{body}");
        assert_eq!(got.model_id.as_deref(), Some("gpt-b"));
        let data = sse_data(&body);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
        // The client did not ask for usage: the attempts' usage chunk is not passed on.
        assert!(
            data.iter().all(|event| !event.contains("\"usage\":{")),
            "{data:?}"
        );
    }
    assert_eq!(mock.calls().unwrap().get("mock-b"), Some(&4));
    mock.clear_faults().unwrap();

    // `gpt-fb` answers 429: the request falls back to Anthropic, translated for it.
    mock.set_fault("mock-fb", json!({"status": 429}), None)
        .unwrap();
    mock.reset_calls().unwrap();
    let (status, got, body) = send(&env, &request("gpt-fb", "routing-fallback", false));
    assert_eq!(status, 200, "{body}");
    // num_retries 2 on gpt-fb's only deployment, then the fallback.
    assert_eq!(got, headers("claude-1", 2, 1));
    let value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["object"], "chat.completion");
    // The model that answered, as Anthropic names it (what a request to `claude` shows).
    assert_eq!(value["model"], "claude-mock-sonnet");
    let calls = mock.calls().unwrap();
    assert_eq!(calls.get("mock-fb"), Some(&3));
    assert_eq!(calls.get("claude-mock-sonnet"), Some(&1));
    let rows = env.logs("routing-fallback", 4);
    assert_eq!(
        row_statuses(&rows),
        [
            ("claude-1".to_string(), "success".to_string()),
            ("gpt-fb-1".to_string(), "failure".to_string()),
            ("gpt-fb-1".to_string(), "failure".to_string()),
            ("gpt-fb-1".to_string(), "failure".to_string()),
        ]
    );

    // Streamed, with usage asked for: Anthropic's stream as OpenAI chunks, usage last.
    mock.reset_calls().unwrap();
    let mut streamed = request("gpt-fb", "routing-fallback-stream", true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, got, body) = send(&env, &streamed);
    assert_eq!(status, 200, "{body}");
    assert_eq!(got, headers("claude-1", 2, 1));
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let usage_chunk: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(
        usage_chunk["usage"]["completion_tokens"].as_u64().is_some(),
        "{data:?}"
    );
    assert_eq!(mock.calls().unwrap().get("claude-mock-sonnet"), Some(&1));
    mock.clear_faults().unwrap();

    // Every attempt failing: the client gets the last one's error, OpenAI-shaped, unmarked.
    mock.set_fault("mock-fb", json!({"status": 503}), None)
        .unwrap();
    mock.set_fault("claude-mock-sonnet", json!({"status": 500}), None)
        .unwrap();
    let (status, got, body) = send(&env, &request("gpt-fb", "routing-all-fail", false));
    assert_eq!(status, 500, "{body}");
    assert_eq!(got.retry_mark, None);
    assert_eq!(got.fallbacks.as_deref(), Some("1"));
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(error["error"]["message"].as_str().is_some(), "{body}");
    mock.clear_faults().unwrap();

    // A deployment without other deployments or fallbacks goes straight to its provider;
    // Envoy retries it there (num_retries 2).
    mock.set_fault("mock-solo", json!({"status": 503}), Some(1))
        .unwrap();
    mock.reset_calls().unwrap();
    let (status, got, body) = send(&env, &request("solo", "routing-solo", false));
    assert_eq!(status, 200, "{body}");
    assert_eq!(got, headers("solo-1", 1, 0));
    assert_eq!(mock.calls().unwrap().get("mock-solo"), Some(&2));

    // The request's own fallbacks and num_retries (LiteLLM's per-request parameters) replace
    // the router's, and never reach the provider.
    let mut own = request("solo", "routing-own", false);
    own["fallbacks"] = json!(["claude"]);
    own["num_retries"] = json!(0);
    let (status, got, body) = send(&env, &own);
    assert_eq!(status, 200, "{body}");
    assert_eq!(got, headers("solo-1", 0, 0));
    let upstream = env.upstream();
    assert_eq!(upstream["body"]["model"], "mock-solo", "{upstream}");
    assert!(upstream["body"].get("fallbacks").is_none(), "{upstream}");
    assert!(upstream["body"].get("num_retries").is_none(), "{upstream}");
    mock.set_fault("mock-solo", json!({"status": 500}), None)
        .unwrap();
    mock.reset_calls().unwrap();
    let (status, got, body) = send(&env, &own);
    assert_eq!(status, 200, "{body}");
    assert_eq!(got, headers("claude-1", 0, 1));
    assert_eq!(mock.calls_for("mock-solo").unwrap(), 1);
    mock.clear_faults().unwrap();

    // A client error is neither retried nor sent elsewhere.
    mock.set_fault("mock-fb", json!({"status": 400}), None)
        .unwrap();
    mock.reset_calls().unwrap();
    let (status, got, _) = send(&env, &request("gpt-fb", "routing-bad", false));
    assert_eq!(status, 400);
    assert_eq!(got.fallbacks.as_deref(), Some("0"));
    assert_eq!(mock.calls().unwrap().get("mock-fb"), Some(&1));
    assert_eq!(mock.calls().unwrap().get("claude-mock-sonnet"), None);

    assert!(env.gateway.filter_failures().is_empty());
}

/// One OpenAI deployment of group `name` on the mock (upstream model `upstream`, id `id`),
/// with more `litellm_params` lines (`extra`, each indented for that mapping).
fn openai_deployment(mock: &Mock, name: &str, upstream: &str, id: &str, extra: &str) -> String {
    format!(
        "- model_name: {name}\n\
         \x20 litellm_params:\n\
         \x20   model: openai/{upstream}\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         {extra}\
         \x20 model_info:\n\
         \x20   id: {id}\n",
        url = mock.url
    )
}

/// The `claude` group: one Anthropic deployment (`claude-1`) on the mock.
fn claude_deployment(mock: &Mock) -> String {
    format!(
        "- model_name: claude\n\
         \x20 litellm_params:\n\
         \x20   model: anthropic/claude-mock-sonnet\n\
         \x20   api_base: {url}\n\
         \x20   api_key: {MOCK_ANTHROPIC_KEY}\n\
         \x20 model_info:\n\
         \x20   id: claude-1\n",
        url = mock.url
    )
}

/// Deployments for the failure kinds, tiers, tags, aliases and weights.
fn paths_config(mock: &Mock) -> String {
    let openai = |name: &str, upstream: &str, id: &str, extra: &str| {
        openai_deployment(mock, name, upstream, id, extra)
    };
    let mut list = String::from("model_list:\n");
    list += &openai("slow", "mock-slow", "slow-1", "\x20   timeout: 1\n");
    list += &openai("flaky", "mock-reset", "flaky-1", "");
    list += &openai("short", "mock-short", "short-1", "");
    list += &openai("long", "mock-long", "long-1", "");
    list += &openai("picky", "mock-picky", "picky-1", "");
    list += &openai("tiered", "mock-t1", "t1", "\x20   order: 1\n");
    list += &openai("tiered", "mock-t2", "t2", "\x20   order: 2\n");
    list += &openai("tagged", "mock-eu", "eu-1", "\x20   tags: [eu]\n");
    list += &openai(
        "tagged",
        "mock-default",
        "default-1",
        "\x20   tags: [default]\n",
    );
    list += &openai("shared", "mock-s1", "s1", "\x20   order: 1\n");
    list += &openai("shared", "mock-s2", "s2", "\x20   order: 2\n");
    list += &openai("weighted", "mock-w3", "w3", "\x20   weight: 3\n");
    list += &openai("weighted", "mock-w1", "w1", "\x20   weight: 1\n");
    list += &claude_deployment(mock);
    list + "router_settings:\n\
           \x20 num_retries: 1\n\
           \x20 allowed_fails: 1\n\
           \x20 cooldown_time: 2\n\
           \x20 enable_tag_filtering: true\n\
           \x20 model_group_alias: {smart: tiered}\n\
           \x20 fallbacks: [{slow: [claude]}, {flaky: [claude]}]\n\
           \x20 context_window_fallbacks: [{short: [long]}]\n\
           \x20 content_policy_fallbacks: [{picky: [claude]}]\n\
           general_settings:\n"
        + &format!("\x20 master_key: {MASTER_KEY}\n")
}

#[test]
fn routing_paths_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &paths_config(&mock)).unwrap();
    let env = ProviderEnv::new(mock, gateway, MASTER_KEY);
    let mock = &env.mock;
    let ok = |model: &str| {
        let (status, got, body) = send(&env, &request(model, "routing-paths", false));
        assert_eq!(status, 200, "{model}: {body}");
        got
    };

    // A deployment slower than its timeout (1 s): timed out, retried once, then the fallback.
    mock.set_fault("mock-slow", json!({"delay_ms": 3000}), None)
        .unwrap();
    assert_eq!(ok("slow"), headers("claude-1", 1, 1));
    assert_eq!(mock.calls_for("mock-slow").unwrap(), 2);

    // A deployment that closes the connection without answering: the same.
    mock.set_fault("mock-reset", json!({"reset": true}), None)
        .unwrap();
    assert_eq!(ok("flaky"), headers("claude-1", 1, 1));
    assert_eq!(mock.calls_for("mock-reset").unwrap(), 2);

    // Too long for the model's context window: not retried, the context-window fallback.
    mock.set_fault("mock-short", json!({"context_length": true}), None)
        .unwrap();
    assert_eq!(ok("short"), headers("long-1", 0, 1));
    assert_eq!(mock.calls_for("mock-short").unwrap(), 1);

    // Refused for its content: the content-policy fallback.
    mock.set_fault("mock-picky", json!({"content_filter": true}), None)
        .unwrap();
    assert_eq!(ok("picky"), headers("claude-1", 0, 1));
    assert_eq!(mock.calls_for("mock-picky").unwrap(), 1);

    // Order tiers: t1 first; failing, the request moves to t2 in the group; after more than
    // allowed_fails (1) failures t1 cools down (2 s) and t2 serves at once.
    mock.set_fault("mock-t1", json!({"status": 500}), None)
        .unwrap();
    let mut retries = 0;
    for _ in 0..10 {
        let got = ok("smart");
        assert_eq!(got.model_id.as_deref(), Some("t2"));
        retries += got.retries.unwrap().parse::<u64>().unwrap();
    }
    let t1_calls = mock.calls_for("mock-t1").unwrap();
    assert_eq!(t1_calls, retries);
    // Two failures cool t1 down where they were seen: once for the native module (one view),
    // at most once per Wasm worker (two).
    assert!((2..=4).contains(&t1_calls), "{t1_calls}");
    mock.clear_faults().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    assert_eq!(ok("tiered"), headers("t1", 0, 0));

    // Tags: a tagged request goes to its deployment, an unmatched one to the default.
    for (tags, expected) in [(json!(["eu"]), "eu-1"), (json!(["us"]), "default-1")] {
        let mut body = request("tagged", "routing-tags", false);
        body["metadata"] = json!({"tags": tags});
        let (status, got, text) = send(&env, &body);
        assert_eq!(status, 200, "{text}");
        assert_eq!(got.model_id.as_deref(), Some(expected));
    }

    // Weights 3 : 1 over 100 requests: w3 takes 75 on average; [60, 90] is 3.5 standard
    // deviations either side.
    mock.reset_calls().unwrap();
    for _ in 0..100 {
        ok("weighted");
    }
    let (w3, w1) = (
        mock.calls_for("mock-w3").unwrap(),
        mock.calls_for("mock-w1").unwrap(),
    );
    assert_eq!(w3 + w1, 100);
    assert!((60..=90).contains(&w3), "w3 {w3}, w1 {w1}");

    // Cooldowns reach every worker and every Envoy through the control plane: two failures of
    // s1 on one connection (one worker) cool it down there, and the control plane, which
    // counts every filter's failures, pushes the cooldown to all; then requests on new
    // connections (either worker) never reach s1 while it lasts (2 s).
    mock.set_fault("mock-s1", json!({"status": 500}), None)
        .unwrap();
    let one_connection = tollgate_e2e::client();
    for _ in 0..2 {
        let response = one_connection
            .post(format!("{}/v1/chat/completions", env.gateway.url))
            .bearer_auth(MASTER_KEY)
            .json(&request("shared", "routing-shared", false))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-litellm-model-id"], "s2");
        read_body(response).unwrap();
    }
    assert_eq!(mock.calls_for("mock-s1").unwrap(), 2);
    // Usage goes to the control plane every 250 ms; its push follows at once.
    std::thread::sleep(std::time::Duration::from_millis(800));
    mock.reset_calls().unwrap();
    for _ in 0..20 {
        assert_eq!(ok("shared"), headers("s2", 0, 0));
    }
    assert_eq!(mock.calls_for("mock-s1").unwrap(), 0);
    mock.clear_faults().unwrap();

    assert!(env.gateway.filter_failures().is_empty());
}

/// `patient`: one deployment retried once after a backoff (the seed's retry_policy form,
/// base_delay 1 s); `pair`: two deployments; `lonely`: one, falling back to `claude` by
/// default_fallbacks; streams idle for 3 s are cut.
fn timing_config(mock: &Mock) -> String {
    let openai =
        |name: &str, upstream: &str, id: &str| openai_deployment(mock, name, upstream, id, "");
    String::from("model_list:\n")
        + &openai("patient", "mock-patient", "patient-1")
        + &openai("pair", "mock-p1", "p1")
        + &openai("pair", "mock-p2", "p2")
        + &openai("lonely", "mock-lonely", "lonely-1")
        + &claude_deployment(mock)
        + "router_settings:\n\
           \x20 retry_policy: {max_retries: 1, base_delay: 1, max_delay: 10}\n\
           \x20 default_fallbacks: [claude]\n\
           \x20 disable_cooldowns: true\n\
           \x20 stream_idle_timeout: 3\n\
           general_settings:\n"
        + &format!("\x20 master_key: {MASTER_KEY}\n")
}

/// Reads a streamed body until it ends or breaks: the text received, and whether the
/// connection broke before the end.
fn read_until_cut(mut response: reqwest::blocking::Response) -> (String, bool) {
    use std::io::Read;
    let mut body = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match response.read(&mut buffer) {
            Ok(0) => return (String::from_utf8_lossy(&body).into_owned(), false),
            Ok(read) => body.extend_from_slice(&buffer[..read]),
            Err(_) => return (String::from_utf8_lossy(&body).into_owned(), true),
        }
    }
}

#[test]
fn backoff_cut_streams_and_idle_streams_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &timing_config(&mock)).unwrap();
    let env = ProviderEnv::new(mock, gateway, MASTER_KEY);
    let mock = &env.mock;
    let attempts_counter = |name: &str| {
        tollgate_e2e::counter(
            &env.gateway.admin_url,
            &format!("cluster.tollgate_attempts.{name}"),
        )
        .unwrap()
    };

    // A retry on the deployment that just failed waits the backoff (1 s, Envoy adding up to
    // half again), through the attempts route's rate-limited backoff.
    mock.set_fault("mock-patient", json!({"status": 500}), Some(1))
        .unwrap();
    let started = std::time::Instant::now();
    let (status, got, body) = send(&env, &request("patient", "routing-timing", false));
    let waited = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(got, headers("patient-1", 1, 0));
    assert_eq!(mock.calls_for("mock-patient").unwrap(), 2);
    assert!(waited >= std::time::Duration::from_secs(1), "{waited:?}");
    assert_eq!(attempts_counter("upstream_rq_retry_backoff_ratelimited"), 1);

    // A retry on the group's other deployment goes at once: the first attempts that fail on
    // p1 move to p2 without the backoff.
    mock.reset_calls().unwrap();
    mock.set_fault("mock-p1", json!({"status": 500}), None)
        .unwrap();
    for _ in 0..8 {
        let (status, got, body) = send(&env, &request("pair", "routing-timing", false));
        assert_eq!(status, 200, "{body}");
        assert_eq!(got.model_id.as_deref(), Some("p2"));
    }
    let retried = mock.calls_for("mock-p1").unwrap();
    assert_eq!(mock.calls_for("mock-p2").unwrap(), 8);
    assert_eq!(attempts_counter("upstream_rq_retry"), 1 + retried);
    assert_eq!(attempts_counter("upstream_rq_retry_backoff_ratelimited"), 1);
    mock.clear_faults().unwrap();

    // A group without fallbacks of its own that fails: retried once (after the backoff),
    // then default_fallbacks.
    mock.set_fault("mock-lonely", json!({"status": 500}), None)
        .unwrap();
    let (status, got, body) = send(&env, &request("lonely", "routing-timing", false));
    assert_eq!(status, 200, "{body}");
    assert_eq!(got, headers("claude-1", 1, 1));
    assert_eq!(mock.calls_for("mock-lonely").unwrap(), 2);
    mock.clear_faults().unwrap();

    // A stream whose connection breaks after its first chunk is not tried again anywhere:
    // the client has part of one answer, then the break, never a second answer after it.
    mock.reset_calls().unwrap();
    for upstream in ["mock-p1", "mock-p2"] {
        mock.set_fault(
            upstream,
            json!({"stream_cut_after_first_chunk": true}),
            None,
        )
        .unwrap();
    }
    let response = env.post(&request("pair", "routing-timing", true));
    assert_eq!(response.status(), 200);
    let (text, cut) = read_until_cut(response);
    assert!(cut, "{text}");
    // What the provider sent before the break: the role chunk and the first piece of text,
    // both of one answer.
    let chunks: Vec<Value> = sse_data(&text)
        .iter()
        .map(|chunk| serde_json::from_str(chunk).unwrap())
        .collect();
    assert_eq!(chunks.len(), 2, "{text}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "echo:");
    assert_eq!(chunks[0]["id"], chunks[1]["id"]);
    let calls = mock.calls().unwrap();
    assert_eq!(
        calls.get("mock-p1").unwrap_or(&0) + calls.get("mock-p2").unwrap_or(&0),
        1,
        "{calls:?}"
    );
    mock.clear_faults().unwrap();

    // A stream that goes quiet for longer than stream_idle_timeout (3 s) is cut by Envoy;
    // the provider would have waited 60 s before each event.
    let started = std::time::Instant::now();
    let response = env.post(&json!({
        "model": "patient", "user": "routing-timing", "stream": true,
        "messages": [{"role": "user", "content": "wait mock:delay_ms=60000"}],
    }));
    assert_eq!(response.status(), 200);
    let (text, cut) = read_until_cut(response);
    let waited = started.elapsed();
    assert!(cut, "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(waited >= std::time::Duration::from_secs(3), "{waited:?}");
    assert!(waited < std::time::Duration::from_secs(50), "{waited:?}");

    assert!(env.gateway.filter_failures().is_empty());
}

#[test]
fn background_health_checks_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    // hc1 fails from the start: the control plane's first round of checks (at once, then
    // every second) finds it before any client does.
    mock.set_fault("mock-hc1", json!({"status": 500}), None)
        .unwrap();
    let deployment =
        |upstream: &str, id: &str| openai_deployment(&mock, "checked", upstream, id, "");
    let config = String::from("model_list:\n")
        + &deployment("mock-hc1", "hc1")
        + &deployment("mock-hc2", "hc2")
        + "general_settings:\n\
           \x20 background_health_checks: true\n\
           \x20 health_check_interval: 1\n"
        + &format!("\x20 master_key: {MASTER_KEY}\n");
    let gateway = Gateway::start(dir.path(), &config).unwrap();
    let log = gateway.log();
    assert!(
        !log.contains("general_settings.background_health_checks")
            && !log.contains("general_settings.health_check_interval"),
        "the keys load without a warning: {log}"
    );
    let env = ProviderEnv::new(mock, gateway, MASTER_KEY);
    let mock = &env.mock;
    let health = || {
        let response = tollgate_e2e::client()
            .get(format!("{}/health", env.gateway.url))
            .bearer_auth(MASTER_KEY)
            .send()
            .unwrap();
        serde_json::from_str::<Value>(&read_body(response).unwrap()).unwrap()
    };
    // Every worker holds the control plane's verdict (it is pushed to all streams).
    let unhealthy_hc1 = |report: &Value| {
        report["unhealthy_endpoints"]
            .as_array()
            .is_some_and(|list| list.iter().any(|endpoint| endpoint["model_id"] == "hc1"))
    };
    assert!(
        tollgate_e2e::eventually(std::time::Duration::from_secs(15), || unhealthy_hc1(
            &health()
        )),
        "{}\n{}",
        health(),
        env.gateway.log()
    );
    for _ in 0..4 {
        let report = health();
        assert_eq!(report["status"], "unhealthy", "{report}");
        let sick = &report["unhealthy_endpoints"][0];
        assert_eq!(sick["model_id"], "hc1", "{report}");
        assert_eq!(sick["error"]["class"], "health_check", "{report}");
        assert_eq!(sick["error"]["status"], 500, "{report}");
        assert_eq!(
            sick["error"]["message"],
            "The server had an error while processing your request. Sorry about that! (mock:status=500)"
        );
        assert_eq!(report["healthy_endpoints"][0]["model_id"], "hc2");
    }

    // Clients never meet hc1: every request goes to hc2 first (no retry), on any worker.
    for _ in 0..20 {
        let (status, got, body) = send(&env, &request("checked", "routing-checks", false));
        assert_eq!(status, 200, "{body}");
        assert_eq!(got, headers("hc2", 0, 0));
    }

    // hc1 recovers: the next round's pass brings it back, and requests reach it again.
    mock.clear_faults().unwrap();
    assert!(tollgate_e2e::eventually(
        std::time::Duration::from_secs(15),
        || !unhealthy_hc1(&health())
    ));
    let mut served_by_hc1 = 0;
    for _ in 0..20 {
        let (status, got, body) = send(&env, &request("checked", "routing-checks", false));
        assert_eq!(status, 200, "{body}");
        if got.model_id.as_deref() == Some("hc1") {
            served_by_hc1 += 1;
        }
    }
    // Even odds over 20 requests: none at all would be a 1 in 2^20 chance.
    assert!(served_by_hc1 > 0);
    assert!(env.gateway.filter_failures().is_empty());
}

/// `emb`: two OpenAI embedding deployments; `emb-solo`: one, falling back to Cohere's
/// `emb-cohere`; `text`: one OpenAI completions deployment, falling back to `claude`
/// (reached through chat). One retry per group.
fn endpoints_config(mock: &Mock) -> String {
    let openai =
        |name: &str, upstream: &str, id: &str| openai_deployment(mock, name, upstream, id, "");
    String::from("model_list:\n")
        + &openai("emb", "mock-emb-a", "emb-a")
        + &openai("emb", "mock-emb-b", "emb-b")
        + &openai("emb-solo", "mock-emb-solo", "emb-solo-1")
        + &format!(
            "- model_name: emb-cohere\n\
             \x20 litellm_params:\n\
             \x20   model: cohere/embed-v4.0\n\
             \x20   api_base: {url}\n\
             \x20   api_key: {MOCK_COHERE_KEY}\n\
             \x20 model_info:\n\
             \x20   id: cohere-1\n",
            url = mock.url
        )
        + &openai("text", "mock-text", "text-1")
        + &claude_deployment(mock)
        + "router_settings:\n\
           \x20 num_retries: 1\n\
           \x20 disable_cooldowns: true\n\
           \x20 fallbacks: [{emb-solo: [emb-cohere]}, {text: [claude]}]\n\
           general_settings:\n"
        + &format!("\x20 master_key: {MASTER_KEY}\n")
}

/// Status, routing headers and JSON body of a POST to `path`.
fn post_json(env: &ProviderEnv, path: &str, body: &Value) -> (u16, Headers, String) {
    let response = tollgate_e2e::client()
        .post(format!("{}{path}", env.gateway.url))
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
    let headers = Headers {
        model_id: header("x-litellm-model-id"),
        retries: header("x-litellm-attempted-retries"),
        fallbacks: header("x-litellm-attempted-fallbacks"),
        retry_mark: header("x-tollgate-retry"),
    };
    (status, headers, read_body(response).unwrap())
}

/// The (deployment id, status) of each spend-log row, sorted.
fn row_statuses(rows: &[Value]) -> Vec<(String, String)> {
    let mut statuses: Vec<(String, String)> = rows
        .iter()
        .map(|row| {
            (
                row["model_id"].as_str().unwrap().to_string(),
                row["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    statuses.sort();
    statuses
}

/// Embeddings and text completions are retried on another deployment of their group and
/// fall back to another provider's group, as chat requests are; each attempt is translated
/// for its own provider and has its usage record.
#[test]
fn embeddings_and_completions_fail_over_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &endpoints_config(&mock)).unwrap();
    let env = ProviderEnv::new(mock, gateway, MASTER_KEY);
    let mock = &env.mock;
    let embed = |model: &str, user: &str| json!({"model": model, "user": user, "input": ["hello router", "fail over now"]});
    let own = |pair: (&str, &str)| (pair.0.to_string(), pair.1.to_string());

    // One of `emb`'s two deployments answers 500: every request is served by the other
    // (retried there when the failing one was picked first), its vectors and usage intact.
    mock.set_fault("mock-emb-a", json!({"status": 500}), None)
        .unwrap();
    let mut retries = 0;
    for _ in 0..6 {
        let (status, got, body) = post_json(&env, "/v1/embeddings", &embed("emb", "emb-group"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(got.model_id.as_deref(), Some("emb-b"));
        assert_eq!(got.fallbacks.as_deref(), Some("0"));
        assert_eq!(got.retry_mark, None);
        retries += got.retries.unwrap().parse::<u64>().unwrap();
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["object"], "list");
        assert_eq!(value["data"].as_array().unwrap().len(), 2, "{body}");
        // A token per word: 2 + 3.
        assert_eq!(value["usage"]["prompt_tokens"], 5, "{body}");
    }
    assert_eq!(mock.calls_for("mock-emb-a").unwrap(), retries);
    assert_eq!(mock.calls_for("mock-emb-b").unwrap(), 6);
    let rows = env.logs("emb-group", 6 + retries as usize);
    let failures = row_statuses(&rows)
        .into_iter()
        .filter(|row| row == &own(("emb-a", "failure")))
        .count();
    assert_eq!(failures as u64, retries);
    mock.clear_faults().unwrap();

    // `emb-solo` answers 429: retried once, then Cohere's group answers, translated back.
    mock.set_fault("mock-emb-solo", json!({"status": 429}), None)
        .unwrap();
    mock.reset_calls().unwrap();
    let (status, got, body) = post_json(&env, "/v1/embeddings", &embed("emb-solo", "emb-fallback"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(got, headers("cohere-1", 1, 1));
    let value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["object"], "list");
    assert_eq!(value["data"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(value["data"][1]["index"], 1, "{body}");
    assert_eq!(value["usage"]["prompt_tokens"], 5, "{body}");
    assert_eq!(mock.calls_for("mock-emb-solo").unwrap(), 2);
    assert_eq!(mock.calls_for("embed-v4.0").unwrap(), 1);
    assert_eq!(
        row_statuses(&env.logs("emb-fallback", 3)),
        [
            own(("cohere-1", "success")),
            own(("emb-solo-1", "failure")),
            own(("emb-solo-1", "failure")),
        ]
    );
    mock.clear_faults().unwrap();

    // The request's own fallbacks and num_retries replace the router's, and never reach
    // the provider.
    let mut own_routing = embed("emb-solo", "emb-own");
    own_routing["fallbacks"] = json!(["emb"]);
    own_routing["num_retries"] = json!(0);
    let (status, got, body) = post_json(&env, "/v1/embeddings", &own_routing);
    assert_eq!(status, 200, "{body}");
    assert_eq!(got, headers("emb-solo-1", 0, 0));
    let upstream = env.upstream();
    assert_eq!(upstream["body"]["model"], "mock-emb-solo", "{upstream}");
    assert!(upstream["body"].get("fallbacks").is_none(), "{upstream}");
    assert!(upstream["body"].get("num_retries").is_none(), "{upstream}");
    mock.set_fault("mock-emb-solo", json!({"status": 503}), None)
        .unwrap();
    mock.reset_calls().unwrap();
    let (status, got, body) = post_json(&env, "/v1/embeddings", &own_routing);
    assert_eq!(status, 200, "{body}");
    let model_id = got.model_id.clone().unwrap();
    assert!(["emb-a", "emb-b"].contains(&model_id.as_str()), "{got:?}");
    assert_eq!(got, headers(&model_id, 0, 1));
    assert_eq!(mock.calls_for("mock-emb-solo").unwrap(), 1);
    mock.clear_faults().unwrap();

    // `text` answers 500: retried once, then Anthropic answers the prompt through chat, as
    // a text completion; streamed too, with and without the usage chunk.
    mock.set_fault("mock-text", json!({"status": 500}), None)
        .unwrap();
    mock.reset_calls().unwrap();
    let complete =
        |user: &str| json!({"model": "text", "user": user, "prompt": "say hello to the router"});
    let (status, got, body) = post_json(&env, "/v1/completions", &complete("text-fallback"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(got, headers("claude-1", 1, 1));
    let value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["object"], "text_completion", "{body}");
    assert_eq!(value["choices"][0]["text"], "echo: say hello to the router");
    // The mock counts a token per word: 5 in, 6 out.
    assert_eq!(value["usage"]["prompt_tokens"], 5, "{body}");
    assert_eq!(value["usage"]["completion_tokens"], 6, "{body}");
    assert_eq!(mock.calls_for("mock-text").unwrap(), 2);
    assert_eq!(mock.calls_for("claude-mock-sonnet").unwrap(), 1);
    assert_eq!(
        row_statuses(&env.logs("text-fallback", 3)),
        [
            own(("claude-1", "success")),
            own(("text-1", "failure")),
            own(("text-1", "failure")),
        ]
    );

    // The request's own: no retry, straight to its own fallback.
    mock.reset_calls().unwrap();
    let mut own_routing = complete("text-own");
    own_routing["fallbacks"] = json!(["claude"]);
    own_routing["num_retries"] = json!(0);
    let (status, got, body) = post_json(&env, "/v1/completions", &own_routing);
    assert_eq!(status, 200, "{body}");
    assert_eq!(got, headers("claude-1", 0, 1));
    assert_eq!(mock.calls_for("mock-text").unwrap(), 1);
    let upstream = env.upstream();
    assert!(upstream["body"].get("fallbacks").is_none(), "{upstream}");

    for include_usage in [false, true] {
        let mut streamed = complete("text-fallback-stream");
        streamed["stream"] = json!(true);
        if include_usage {
            streamed["stream_options"] = json!({"include_usage": true});
        }
        let (status, got, body) = post_json(&env, "/v1/completions", &streamed);
        assert_eq!(status, 200, "{body}");
        assert_eq!(got, headers("claude-1", 1, 1));
        let data = sse_data(&body);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
        let events: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|event| serde_json::from_str(event).unwrap())
            .collect();
        assert!(
            events
                .iter()
                .all(|event| event["object"] == "text_completion"),
            "{data:?}"
        );
        let text: String = events
            .iter()
            .filter_map(|event| event["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, "echo: say hello to the router", "{data:?}");
        let usage: Vec<&Value> = events
            .iter()
            .filter(|event| event["usage"].is_object())
            .map(|event| &event["usage"])
            .collect();
        if include_usage {
            assert_eq!(usage.len(), 1, "{data:?}");
            assert_eq!(usage[0]["prompt_tokens"], 5, "{data:?}");
            assert_eq!(usage[0]["completion_tokens"], 6, "{data:?}");
        } else {
            // Attempts always send the usage chunk; the client did not ask for it.
            assert!(usage.is_empty(), "{data:?}");
        }
    }
    assert_eq!(
        row_statuses(&env.logs("text-fallback-stream", 6))
            .iter()
            .filter(|row| row.1 == "success")
            .count(),
        2
    );
    mock.clear_faults().unwrap();

    assert!(env.gateway.filter_failures().is_empty());
}
