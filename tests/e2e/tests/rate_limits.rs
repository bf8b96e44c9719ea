#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Rate limits end to end, through a real Envoy (both filter builds) and the control plane
//! (SQLite and PostgreSQL) as the quota authority: each limit kind (rpm, tpm,
//! max_parallel_requests; of a key, a key on one model, a user, a team, a deployment and the
//! gateway) refuses at the right count with a 429 that carries `Retry-After` and the
//! `x-ratelimit-*` headers, on one Envoy and across two; and rpm 60 on one key holds per
//! minute window under 16 clients on two Envoys (two workers each) for two minutes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::{
    client, free_port, test_database, ControlPlane, Envoy, Gateway, Mock, MOCK_OPENAI_KEY,
};

const MASTER_KEY: &str = "sk-master-limits";

fn config(mock: &Mock, general: &str) -> String {
    format!(
        "model_list:\n\
         - model_name: gpt-mock\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-gpt-4o\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         - model_name: gpt-other\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-gpt-4o-mini\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         - model_name: gpt-limited\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-gpt-4o\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         \x20   rpm: 2\n\
         general_settings:\n\
         \x20 master_key: {MASTER_KEY}\n{general}",
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

fn new_key(url: &str, fields: Value) -> String {
    let generated = management(url, "/key/generate", &fields);
    generated["key"].as_str().unwrap().to_string()
}

/// One answer: status, the headers the rate limits set, the body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

fn chat_body(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

/// Sends a chat request with `http` (a client keeps its connection, so its requests stay
/// on one Envoy worker; a fresh client lands on either).
fn chat_with(
    http: &reqwest::blocking::Client,
    url: &str,
    key: &str,
    model: &str,
    content: &str,
) -> Answer {
    let response = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(model, content))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| {
            name.as_str().starts_with("x-ratelimit-")
                || name.as_str().starts_with("retry-after")
                || name.as_str().starts_with("x-tollgate-ratelimit")
        })
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
        .collect();
    let body = response.json().unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// Asserts that a request is served (200), saying why when it is not.
fn served(url: &str, key: &str, model: &str) {
    let answer = chat(url, key, model);
    assert_eq!(answer.status, 200, "{}", answer.body);
}

fn chat(url: &str, key: &str, model: &str) -> Answer {
    chat_with(&client(), url, key, model, "hi")
}

/// Waits until every worker of the Envoys at `urls` knows `key`: twelve probes in a row on
/// fresh connections (which land on either worker) find it.
fn wait_for_key(urls: &[&str], key: &str) {
    let start = Instant::now();
    while urls
        .iter()
        .any(|url| (0..12).any(|_| chat(url, key, "no-such-model").status != 404))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "key never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a new minute window has at least `room` seconds left, so that a test's
/// requests fall in one window.
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

/// The refusal of a spent limit: 429, OpenAI-shaped, with its headers.
fn assert_refused(answer: &Answer, scope: &str, what: &str, limit: u64) {
    assert_eq!(answer.status, 429, "{}", answer.body);
    let error = &answer.body["error"];
    assert_eq!(error["type"], "rate_limit_error", "{}", answer.body);
    assert_eq!(error["code"], "rate_limit_exceeded");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "Rate limit reached for {scope} on {what}: limit {limit}, this request needs"
        )),
        "{message}"
    );
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    let retry_after_ms: u64 = answer.header("retry-after-ms").unwrap().parse().unwrap();
    assert_eq!(retry_after, retry_after_ms.div_ceil(1000));
}

/// `requests` answers of `key` (one connection, so one worker): the first `allowed` are
/// served with the requests headers counting down, the rest refused.
fn assert_rpm(url: &str, key: &str, model: &str, allowed: u64, scope: &str) {
    let http = client();
    for number in 1..=allowed {
        let answer = chat_with(&http, url, key, model, "hi");
        assert_eq!(answer.status, 200, "request {number}: {}", answer.body);
        assert_eq!(
            answer.header("x-ratelimit-remaining-requests"),
            Some((allowed - number).to_string().as_str()),
            "request {number}: {:?}",
            answer.headers
        );
        assert_eq!(
            answer.header("x-ratelimit-limit-requests"),
            Some(allowed.to_string().as_str())
        );
    }
    for _ in 0..2 {
        let refused = chat_with(&http, url, key, model, "hi");
        assert_refused(&refused, scope, "requests per minute (rpm)", allowed);
        assert_eq!(refused.header("x-ratelimit-remaining-requests"), Some("0"));
    }
}

#[test]
fn each_limit_kind_refuses_at_the_right_count() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &config(&mock, "")).unwrap();
    let url = &gateway.url;
    wait_for_window_with(30);

    // A key's rpm.
    let key = new_key(url, json!({"key_alias": "rpm3", "rpm_limit": 3}));
    wait_for_key(&[url], &key);
    assert_rpm(url, &key, "gpt-mock", 3, "key rpm3");

    // A key's rpm on one model: the other model is not limited.
    let key = new_key(
        url,
        json!({"key_alias": "per-model", "model_rpm_limit": {"gpt-mock": 2}}),
    );
    wait_for_key(&[url], &key);
    assert_rpm(url, &key, "gpt-mock", 2, "key per-model on model gpt-mock");
    for _ in 0..3 {
        served(url, &key, "gpt-other");
    }

    // A user's rpm covers all of the user's keys; a team's all of the team's.
    management(
        url,
        "/user/new",
        &json!({"user_id": "u-limited", "rpm_limit": 2, "auto_create_key": false}),
    );
    let first = new_key(url, json!({"user_id": "u-limited"}));
    let second = new_key(url, json!({"user_id": "u-limited"}));
    wait_for_key(&[url], &second);
    served(url, &first, "gpt-mock");
    served(url, &second, "gpt-mock");
    assert_refused(
        &chat(url, &first, "gpt-mock"),
        "user u-limited",
        "requests per minute (rpm)",
        2,
    );
    management(
        url,
        "/team/new",
        &json!({"team_id": "t-limited", "rpm_limit": 1}),
    );
    let member = new_key(url, json!({"team_id": "t-limited"}));
    wait_for_key(&[url], &member);
    served(url, &member, "gpt-mock");
    assert_refused(
        &chat(url, &member, "gpt-mock"),
        "team t-limited",
        "requests per minute (rpm)",
        1,
    );

    // A deployment's rpm (litellm_params.rpm) holds for every key.
    let a = new_key(url, json!({}));
    let b = new_key(url, json!({}));
    wait_for_key(&[url], &b);
    served(url, &a, "gpt-limited");
    served(url, &b, "gpt-limited");
    let refused = chat(url, &a, "gpt-limited");
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Rate limit reached for model gpt-limited (deployment "));

    // A key's tpm: checked before each request from its estimate (a token per four bytes
    // of body), corrected after from the usage the provider reports. One connection keeps
    // the requests on one worker and in order, so the count is exact: a request is
    // admitted while the window's tokens plus its estimate fit the limit.
    let tpm = 60;
    let key = new_key(url, json!({"key_alias": "tpm", "tpm_limit": tpm}));
    wait_for_key(&[url], &key);
    let estimate = serde_json::to_vec(&chat_body("gpt-mock", "hi"))
        .unwrap()
        .len()
        .div_ceil(4) as u64;
    let http = client();
    let first = chat_with(&http, url, &key, "gpt-mock", "hi");
    assert_eq!(first.status, 200, "{}", first.body);
    let used = first.body["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(used, 3, "the mock's usage of \"hi\"");
    let allowed = (tpm - estimate) / used + 1;
    for number in 2..=allowed {
        let answer = chat_with(&http, url, &key, "gpt-mock", "hi");
        assert_eq!(
            answer.status, 200,
            "request {number} of {allowed}: {}",
            answer.body
        );
        assert_eq!(answer.header("x-ratelimit-limit-tokens"), Some("60"));
    }
    let refused = chat_with(&http, url, &key, "gpt-mock", "hi");
    assert_refused(&refused, "key tpm", "tokens per minute (tpm)", tpm);
    assert!(refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&format!("this request needs {estimate}.")));

    // A key's max_parallel_requests: two slow requests in flight, the third is refused,
    // and once they are done there is room again.
    let key = new_key(
        url,
        json!({"key_alias": "parallel", "max_parallel_requests": 2}),
    );
    wait_for_key(&[url], &key);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (url, key) = (url.clone(), key.clone());
            std::thread::spawn(move || {
                chat_with(&client(), &url, &key, "gpt-mock", "slow mock:delay_ms=1500").status
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let refused = chat(url, &key, "gpt-mock");
    assert_refused(
        &refused,
        "key parallel",
        "parallel requests (max_parallel_requests)",
        2,
    );
    for request in slow {
        assert_eq!(request.join().unwrap(), 200);
    }
    // A slot is free again once its filter has told the authority: a round trip after the
    // answer went out.
    std::thread::sleep(Duration::from_millis(300));
    served(url, &key, "gpt-mock");

    assert!(
        gateway.filter_failures().is_empty(),
        "{:?}",
        gateway.filter_failures()
    );
}

#[test]
fn the_seed_configs_gateway_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    // The seed's general_settings rate-limiting block, with numbers a test can reach.
    let general = "\x20 rpm_limit: 4\n\
                   \x20 tpm_limit: 100000\n\
                   \x20 max_parallel_requests: 10\n\
                   \x20 user_rate_limit:\n\
                   \x20   \"user-1\": {\"tpm\": 5000, \"rpm\": 2}\n";
    let gateway = Gateway::start(dir.path(), &config(&mock, general)).unwrap();
    let url = &gateway.url;
    wait_for_window_with(20);
    management(
        url,
        "/user/new",
        &json!({"user_id": "user-1", "auto_create_key": false}),
    );
    let user_key = new_key(url, json!({"user_id": "user-1"}));
    let other = new_key(url, json!({}));
    wait_for_key(&[url], &other);
    // user_rate_limit: user-1 has 2 a minute.
    served(url, &user_key, "gpt-mock");
    served(url, &user_key, "gpt-mock");
    assert_refused(
        &chat(url, &user_key, "gpt-mock"),
        "user user-1",
        "requests per minute (rpm)",
        2,
    );
    // The refused request asked for the gateway's counter with the user's, was granted its
    // slot, and gives it back once refused; on a loaded machine that release can reach the
    // authority after the next request's ask from another worker, which is then refused
    // one early (a known race of the lease protocol, see #13's note). Let it land first.
    std::thread::sleep(Duration::from_millis(500));
    // rpm_limit: the gateway as a whole has 4 (user-1's 2 count).
    served(url, &other, "gpt-mock");
    served(url, &other, "gpt-mock");
    assert_refused(
        &chat(url, &other, "gpt-mock"),
        "the gateway",
        "requests per minute (rpm)",
        4,
    );
}

/// Keys with small limits, requests spread over two Envoys and both workers of each (a
/// fresh connection per request): the authority's count is the only one, so each limit
/// refuses at exactly its count.
#[test]
fn limits_hold_across_two_envoys() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config(&mock, "")).unwrap();
    let (database, _pg) = test_database(dir.path()).unwrap();
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let _control_plane =
        ControlPlane::start_with_http(dir.path(), &config_path, grpc, http, &database).unwrap();
    let first = Envoy::start_with_http(dir.path(), "envoy-a", grpc, Some(http)).unwrap();
    let second = Envoy::start_with_http(dir.path(), "envoy-b", grpc, Some(http)).unwrap();
    let urls = [first.url.as_str(), second.url.as_str()];
    wait_for_window_with(30);

    let key = new_key(urls[0], json!({"key_alias": "shared", "rpm_limit": 5}));
    wait_for_key(&urls, &key);
    let statuses: Vec<u16> = (0..10)
        .map(|number| chat(urls[number % 2], &key, "gpt-mock").status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);

    // The deployment's rpm 2 across both Envoys.
    let key = new_key(urls[0], json!({}));
    wait_for_key(&urls, &key);
    let statuses: Vec<u16> = (0..4)
        .map(|number| chat(urls[number % 2], &key, "gpt-limited").status)
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429]);

    // tpm across Envoys: each filter gives back what its estimate held beyond the tokens
    // used (near the limit), so the count is the one filter's: a request is admitted while
    // the window's tokens plus its estimate fit. A pause between requests lets each give-back
    // (a round trip) land first.
    let tpm = 60;
    let key = new_key(urls[0], json!({"tpm_limit": tpm}));
    wait_for_key(&urls, &key);
    let estimate = serde_json::to_vec(&chat_body("gpt-mock", "hi"))
        .unwrap()
        .len()
        .div_ceil(4) as u64;
    let allowed = (tpm - estimate) / 3 + 1;
    let statuses: Vec<u16> = (0..allowed + 2)
        .map(|number| {
            std::thread::sleep(Duration::from_millis(100));
            chat(urls[number as usize % 2], &key, "gpt-mock").status
        })
        .collect();
    let mut expected = vec![200; allowed as usize];
    expected.extend([429, 429]);
    assert_eq!(
        statuses, expected,
        "{allowed} allowed at tpm {tpm}, estimate {estimate}"
    );

    // Parallel slots across Envoys: one slow request on each, a third is refused anywhere.
    let key = new_key(urls[0], json!({"max_parallel_requests": 2}));
    wait_for_key(&urls, &key);
    let slow: Vec<_> = urls
        .iter()
        .map(|url| {
            let (url, key) = (url.to_string(), key.clone());
            std::thread::spawn(move || {
                chat_with(&client(), &url, &key, "gpt-mock", "slow mock:delay_ms=1500").status
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    for url in urls {
        assert_eq!(chat(url, &key, "gpt-mock").status, 429);
    }
    for request in slow {
        assert_eq!(request.join().unwrap(), 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    for url in urls {
        served(url, &key, "gpt-mock");
    }
}

/// How long the accuracy test runs (the two minutes; shorter only by hand).
fn accuracy_seconds() -> u64 {
    std::env::var("TOLLGATE_RPM_TEST_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(120)
}

/// rpm 60 on one key, 16 clients on two Envoys with two workers each, for two minutes: every
/// whole minute window admits exactly 60 (the partial windows at both ends at most 60).
/// Each admitted answer names its window (`x-tollgate-ratelimit-window`).
#[test]
fn rpm_60_holds_per_window_under_sixteen_clients_on_two_envoys() {
    const LIMIT: u64 = 60;
    const CLIENTS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config(&mock, "")).unwrap();
    let (database, _pg) = test_database(dir.path()).unwrap();
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let _control_plane =
        ControlPlane::start_with_http(dir.path(), &config_path, grpc, http, &database).unwrap();
    let first = Envoy::start_with_http(dir.path(), "envoy-a", grpc, Some(http)).unwrap();
    let second = Envoy::start_with_http(dir.path(), "envoy-b", grpc, Some(http)).unwrap();
    let key = new_key(
        &first.url,
        json!({"key_alias": "accuracy", "rpm_limit": LIMIT}),
    );
    wait_for_key(&[&first.url, &second.url], &key);

    let admitted: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let started_ms = now_ms();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|number| {
            let (admitted, refused, stop) = (admitted.clone(), refused.clone(), stop.clone());
            let url = [&first.url, &second.url][number % 2].clone();
            let key = key.clone();
            std::thread::spawn(move || {
                // Every other client opens a connection per request, so all four workers
                // see traffic; the others keep theirs.
                let kept = client();
                while !stop.load(Ordering::Relaxed) {
                    let http = if number % 4 < 2 {
                        kept.clone()
                    } else {
                        client()
                    };
                    let answer = chat_with(&http, &url, &key, "gpt-mock", "hi");
                    match answer.status {
                        200 => {
                            let window: u64 = answer
                                .header("x-tollgate-ratelimit-window")
                                .expect("an admitted answer names its window")
                                .parse()
                                .unwrap();
                            *admitted.lock().unwrap().entry(window).or_insert(0) += 1;
                        }
                        429 => {
                            *refused.lock().unwrap() += 1;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        other => panic!("status {other}: {}", answer.body),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(accuracy_seconds()));
    stop.store(true, Ordering::Relaxed);
    let ended_ms = now_ms();
    for client in clients {
        client.join().unwrap();
    }
    let admitted = admitted.lock().unwrap().clone();
    println!(
        "rpm {LIMIT}, {CLIENTS} clients on 2 Envoys x 2 workers for {} s: admitted per window {admitted:?}, {} refused",
        accuracy_seconds(),
        refused.lock().unwrap()
    );
    let mut whole_windows = 0;
    for (window, count) in &admitted {
        let whole = *window >= started_ms && window + 60_000 <= ended_ms;
        if whole {
            whole_windows += 1;
            assert_eq!(*count, LIMIT, "window {window}: {admitted:?}");
        } else {
            assert!(*count <= LIMIT, "window {window}: {admitted:?}");
        }
    }
    if accuracy_seconds() >= 120 {
        assert!(whole_windows >= 1, "no whole window in {admitted:?}");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
