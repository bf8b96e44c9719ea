#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Spend end to end, through a real Envoy (both filter builds) and the control plane (SQLite
//! and PostgreSQL): every answer is priced from the deployment's prices (the header and the
//! key's spend say exactly what the price table gives), a key's budget stops its traffic at
//! the right request with a 400 `budget_exceeded`, and a budget window resets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::{
    client, free_port, read_body, sse_data, test_database, ControlPlane, Envoy, Gateway, Mock,
    MOCK_ANTHROPIC_KEY, MOCK_OPENAI_KEY,
};

const MASTER_KEY: &str = "sk-master-spend";
/// USD per token of the priced mock models: powers of two, so that every sum of costs is
/// exact in binary floating point whatever order the filters and databases add them in (the
/// tests compare spend exactly).
const GPT_INPUT: f64 = 0.0009765625; // 2^-10
const GPT_OUTPUT: f64 = 0.001953125; // 2^-9
const CLAUDE_INPUT: f64 = 0.00390625; // 2^-8
const CLAUDE_OUTPUT: f64 = 0.0078125; // 2^-7

fn config(mock: &Mock) -> String {
    format!(
        "model_list:\n\
         - model_name: gpt-mock\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-gpt-4o\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         \x20   input_cost_per_token: {GPT_INPUT}\n\
         \x20   output_cost_per_token: {GPT_OUTPUT}\n\
         - model_name: claude-mock\n\
         \x20 litellm_params:\n\
         \x20   model: anthropic/claude-mock-sonnet\n\
         \x20   api_base: {url}\n\
         \x20   api_key: {MOCK_ANTHROPIC_KEY}\n\
         \x20   input_cost_per_token: {CLAUDE_INPUT}\n\
         \x20   output_cost_per_token: {CLAUDE_OUTPUT}\n\
         general_settings:\n\
         \x20 master_key: {MASTER_KEY}\n",
        url = mock.url
    )
}

fn management(url: &str, path: &str, body: &Value) -> Value {
    let response = client()
        .post(format!("{url}{path}"))
        .bearer_auth(MASTER_KEY)
        .json(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn key_spend(url: &str, key: &str) -> f64 {
    let response = client()
        .get(format!("{url}/key/info"))
        .query(&[("key", key)])
        .bearer_auth(MASTER_KEY)
        .send()
        .unwrap();
    let info: Value = response.json().unwrap();
    info["info"]["spend"]
        .as_f64()
        .unwrap_or_else(|| panic!("no spend in {info}"))
}

/// Waits until the key's stored spend is `expected` (exactly), then long enough for the
/// spend to be pushed to every filter (the push runs every 100 ms).
fn wait_for_spend(url: &str, key: &str, expected: f64) {
    let start = Instant::now();
    loop {
        let spend = key_spend(url, key);
        if spend == expected {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "spend {spend}, expected {expected}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(400));
}

/// Waits until every worker of the Envoys at `urls` knows `key` (a new key reaches the
/// filters in tens of milliseconds; each try opens a new connection, so both workers answer).
fn wait_for_key(urls: &[&str], key: &str) {
    let start = Instant::now();
    while urls
        .iter()
        .any(|url| (0..4).any(|_| chat(url, key, "no-such-model").status != 404))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "key never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Answer {
    status: u16,
    cost_header: Option<String>,
    body: Value,
}

fn chat(url: &str, key: &str, model: &str) -> Answer {
    let response = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "count my words please"}]}))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let cost_header = response
        .headers()
        .get("x-litellm-response-cost")
        .map(|value| value.to_str().unwrap().to_string());
    let body = response.json().unwrap();
    Answer {
        status,
        cost_header,
        body,
    }
}

/// What the price table says an answer with `usage` costs (the filter's formula: input
/// tokens at the input price plus output tokens at the output price).
fn priced(usage: &Value, input: f64, output: f64) -> f64 {
    let prompt = usage["prompt_tokens"].as_u64().unwrap() as f64;
    let completion = usage["completion_tokens"].as_u64().unwrap() as f64;
    0.0 + prompt * input + completion * output
}

#[test]
fn answers_are_priced_and_a_budget_stops_the_key_then_resets() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &config(&mock)).unwrap();
    let url = &gateway.url;

    // One priced answer: the header and the stored spend are the price table's exactly.
    let probe = management(url, "/key/generate", &json!({"key_alias": "probe"}));
    let probe_key = probe["key"].as_str().unwrap().to_string();
    wait_for_key(&[url], &probe_key);
    let first = chat(url, &probe_key, "gpt-mock");
    assert_eq!(first.status, 200, "{}", first.body);
    let cost = priced(&first.body["usage"], GPT_INPUT, GPT_OUTPUT);
    let header: f64 = first.cost_header.expect("no cost header").parse().unwrap();
    assert_eq!(header, cost);
    wait_for_spend(url, &probe_key, cost);
    let claude = chat(url, &probe_key, "claude-mock");
    assert_eq!(claude.status, 200, "{}", claude.body);
    let claude_cost = priced(&claude.body["usage"], CLAUDE_INPUT, CLAUDE_OUTPUT);
    assert_eq!(
        claude.cost_header.unwrap().parse::<f64>().unwrap(),
        claude_cost
    );
    wait_for_spend(url, &probe_key, cost + claude_cost);

    // A stream with include_usage carries its cost in the final usage chunk, exactly the
    // price table's (OpenAI pass-through and Anthropic translation alike).
    let mut streamed = cost + claude_cost;
    for (model, input, output) in [
        ("gpt-mock", GPT_INPUT, GPT_OUTPUT),
        ("claude-mock", CLAUDE_INPUT, CLAUDE_OUTPUT),
    ] {
        let response = client()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&probe_key)
            .json(&json!({"model": model, "stream": true,
                          "stream_options": {"include_usage": true},
                          "messages": [{"role": "user", "content": "count my words please"}]}))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let body = read_body(response).unwrap();
        let usage_chunk: Value = sse_data(&body)
            .iter()
            .filter(|data| *data != "[DONE]")
            .map(|data| serde_json::from_str::<Value>(data).unwrap())
            .find(|chunk| chunk["usage"].is_object())
            .unwrap_or_else(|| panic!("no usage chunk in {body}"));
        let usage = &usage_chunk["usage"];
        let expected = priced(usage, input, output);
        assert_eq!(usage["cost"].as_f64(), Some(expected), "{model}: {usage}");
        streamed += expected;
        wait_for_spend(url, &probe_key, streamed);
    }

    // A key whose budget is 2.5 answers: the third is allowed (spend 2 before it), the
    // fourth is refused with the spend and the budget in the message.
    let budget = 2.5 * cost;
    let limited = management(
        url,
        "/key/generate",
        &json!({"key_alias": "limited", "max_budget": budget}),
    );
    let key = limited["key"].as_str().unwrap().to_string();
    wait_for_key(&[url], &key);
    let mut spent = 0.0;
    for request in 1..=3 {
        let answer = chat(url, &key, "gpt-mock");
        assert_eq!(answer.status, 200, "request {request}: {}", answer.body);
        spent += cost;
        wait_for_spend(url, &key, spent);
    }
    let refused = chat(url, &key, "gpt-mock");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["error"]["type"], "budget_exceeded");
    assert_eq!(
        refused.body["error"]["message"],
        format!(
            "Budget has been exceeded! key limited spent {spent} USD of its max budget of {budget} USD in this budget window."
        )
    );
    assert_eq!(refused.cost_header, None);
    // The refusal is not charged, and nothing of the budget is left.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(key_spend(url, &key), spent);
    let info: Value = client()
        .get(format!("{url}/key/info"))
        .query(&[("key", key.as_str())])
        .bearer_auth(MASTER_KEY)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["info"]["remaining_budget"], json!(0.0));
    assert_eq!(info["info"]["max_budget"], json!(budget));

    // A budget with a 2 s window: refused once spent, served again after the reset.
    let windowed = management(
        url,
        "/key/generate",
        &json!({"key_alias": "windowed", "max_budget": 1.5 * cost, "budget_duration": "2s"}),
    );
    let key = windowed["key"].as_str().unwrap().to_string();
    wait_for_key(&[url], &key);
    // Requests may straddle a window's end; what matters is that a spent window refuses
    // and the next one serves.
    let start = Instant::now();
    let mut refused_once = false;
    let mut served_after_refusal = false;
    while start.elapsed() < Duration::from_secs(20) && !served_after_refusal {
        let answer = chat(url, &key, "gpt-mock");
        match answer.status {
            200 if refused_once => served_after_refusal = true,
            200 => {}
            400 => {
                assert_eq!(answer.body["error"]["type"], "budget_exceeded");
                refused_once = true;
            }
            other => panic!("status {other}: {}", answer.body),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(refused_once, "the windowed budget never refused");
    assert!(served_after_refusal, "the window never reset");
    assert!(
        gateway.filter_failures().is_empty(),
        "{:?}",
        gateway.filter_failures()
    );
}

/// Concurrent clients of the two-Envoy test.
const CLIENTS: usize = 16;
/// The two-Envoy test's budget, in answers.
const BUDGET_ANSWERS: f64 = 40.0;

/// 16 clients on two Envoys (two workers each) spend one key's budget together: the budget
/// stops them all (every request after the spend is pushed is refused), the stored spend
/// is exactly the admitted answers' (nothing lost or charged twice across VMs, Envoys and
/// acknowledgements), and the overshoot (answers admitted past the budget) is printed.
#[test]
fn a_budget_holds_across_two_envoys_and_sixteen_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config(&mock)).unwrap();
    let (database, _pg) = test_database(dir.path()).unwrap();
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let _control_plane =
        ControlPlane::start_with_http(dir.path(), &config_path, grpc, http, &database).unwrap();
    let first = Envoy::start_with_http(dir.path(), "envoy-a", grpc, Some(http)).unwrap();
    let second = Envoy::start_with_http(dir.path(), "envoy-b", grpc, Some(http)).unwrap();
    let url = first.url.clone();
    // The price of one answer, from a probe key.
    let probe = management(&url, "/key/generate", &json!({"key_alias": "probe"}));
    let probe_key = probe["key"].as_str().unwrap().to_string();
    wait_for_key(&[&first.url, &second.url], &probe_key);
    let answer = chat(&url, &probe_key, "gpt-mock");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let cost = priced(&answer.body["usage"], GPT_INPUT, GPT_OUTPUT);

    let budget = BUDGET_ANSWERS * cost;
    let generated = management(
        &url,
        "/key/generate",
        &json!({"key_alias": "shared", "max_budget": budget}),
    );
    let key = generated["key"].as_str().unwrap().to_string();
    // Both Envoys' workers know the key before the load starts.
    wait_for_key(&[&first.url, &second.url], &key);

    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let urls = [first.url.clone(), second.url.clone()];
    let clients: Vec<_> = (0..CLIENTS)
        .map(|number| {
            let (admitted, refused, stop) = (admitted.clone(), refused.clone(), stop.clone());
            let (url, key) = (urls[number % 2].clone(), key.clone());
            std::thread::spawn(move || {
                // Each client stops after a run of refusals: the budget holds for it.
                let mut refusals_in_a_row = 0;
                while !stop.load(Ordering::Relaxed) && refusals_in_a_row < 20 {
                    let answer = chat(&url, &key, "gpt-mock");
                    match answer.status {
                        200 => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            refusals_in_a_row = 0;
                        }
                        400 => {
                            assert_eq!(answer.body["error"]["type"], "budget_exceeded");
                            refused.fetch_add(1, Ordering::Relaxed);
                            refusals_in_a_row += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        other => panic!("status {other}: {}", answer.body),
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while clients.iter().any(|client| !client.is_finished()) {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            panic!("the budget did not stop the clients within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for client in clients {
        client.join().unwrap();
    }
    let admitted = admitted.load(Ordering::Relaxed);
    let overshoot = admitted as f64 - BUDGET_ANSWERS;
    println!(
        "budget of {BUDGET_ANSWERS} answers, {CLIENTS} clients on 2 Envoys x 2 workers: {admitted} admitted (overshoot {overshoot}), {} refused",
        refused.load(Ordering::Relaxed)
    );
    assert!(
        admitted as f64 >= BUDGET_ANSWERS,
        "refused before the budget was spent"
    );
    // Every admitted answer is charged once: the key's stored spend is exactly theirs.
    wait_for_spend(&url, &key, (0..admitted).fold(0.0, |spent, _| spent + cost));
    // And once the spend is pushed, the key is refused on both Envoys, every worker.
    for envoy in [&first.url, &second.url] {
        for _ in 0..4 {
            assert_eq!(chat(envoy, &key, "gpt-mock").status, 400);
        }
    }
}
