#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Spend survives restarts: under steady load on two Envoys the control plane is killed and
//! started again on the same database, then one Envoy is restarted (its clients move to the
//! other while it stops, as a rolling restart does). Afterwards every answered request has
//! exactly one usage record and the key's stored spend is exactly the answers' cost: nothing
//! lost, nothing counted twice. SQLite, and PostgreSQL with `TOLLGATE_E2E_DB=postgres`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::{
    client, eventually, free_port, port_open, test_database, ControlPlane, Envoy, Mock,
    MOCK_OPENAI_KEY,
};

const MASTER_KEY: &str = "sk-master-restarts";
/// USD per token: powers of two, so that sums are exact whatever the order of addition.
const INPUT: f64 = 0.0009765625; // 2^-10
const OUTPUT: f64 = 0.001953125; // 2^-9
const CLIENTS: usize = 4;

fn config(mock: &Mock) -> String {
    format!(
        "model_list:\n\
         - model_name: gpt-mock\n\
         \x20 litellm_params:\n\
         \x20   model: openai/mock-gpt-4o\n\
         \x20   api_base: {url}/v1\n\
         \x20   api_key: {MOCK_OPENAI_KEY}\n\
         \x20   input_cost_per_token: {INPUT}\n\
         \x20   output_cost_per_token: {OUTPUT}\n\
         general_settings:\n\
         \x20 master_key: {MASTER_KEY}\n",
        url = mock.url
    )
}

fn stored_records(database_url: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = tollgate::store::Store::connect(database_url).await.unwrap();
        let count = store.usage_count().await.unwrap();
        store.close().await;
        count
    })
}

fn key_spend(url: &str, key: &str) -> Option<f64> {
    let response = client()
        .get(format!("{url}/key/info"))
        .query(&[("key", key)])
        .bearer_auth(MASTER_KEY)
        .send()
        .ok()?;
    let info: Value = response.json().ok()?;
    info["info"]["spend"].as_f64()
}

/// Sends a chat request. Every request the gateway answers, refusals included, has a usage
/// record: `answers` counts them.
fn chat(url: &str, key: &str, content: &str, answers: &AtomicU64) -> Result<Value, String> {
    let response = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-mock", "messages": [{"role": "user", "content": content}]}))
        .send()
        .map_err(|error| error.to_string())?;
    answers.fetch_add(1, Ordering::SeqCst);
    let status = response.status().as_u16();
    let body: Value = response.json().map_err(|error| error.to_string())?;
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// Waits until every worker of the Envoy at `url` knows `key` (six answers in a row, each
/// on a new connection); the probes count as answers and their cost as spent.
fn wait_for_key(url: &str, key: &str, answers: &AtomicU64, spent: &Mutex) {
    let start = Instant::now();
    let mut answered_in_a_row = 0;
    while answered_in_a_row < 6 {
        match chat(url, key, "probe", answers) {
            Ok(body) => {
                spent.add(cost(&body));
                answered_in_a_row += 1;
            }
            Err(_) => {
                answered_in_a_row = 0;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "key never arrived"
        );
    }
}

/// The cost of an answer at the test's prices (exact in binary floating point).
fn cost(body: &Value) -> f64 {
    let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap() as f64;
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap() as f64;
    prompt * INPUT + completion * OUTPUT
}

/// A sum of costs the client threads add to.
#[derive(Default)]
struct Mutex(std::sync::Mutex<f64>);

impl Mutex {
    fn add(&self, amount: f64) {
        *self.0.lock().unwrap() += amount;
    }
    fn get(&self) -> f64 {
        *self.0.lock().unwrap()
    }
}

#[test]
fn restarts_mid_load_lose_no_record_and_count_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config(&mock)).unwrap();
    let (database, _pg) = test_database(dir.path()).unwrap();
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let mut control_plane =
        ControlPlane::start_with_http(dir.path(), &config_path, grpc, http, &database).unwrap();
    let first = Envoy::start_with_http(dir.path(), "envoy-a", grpc, Some(http)).unwrap();
    let second = Envoy::start_with_http(dir.path(), "envoy-b", grpc, Some(http)).unwrap();
    let generated: Value = client()
        .post(format!("{}/key/generate", first.url))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"key_alias": "restarts"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let key = generated["key"].as_str().unwrap().to_string();
    // Requests the gateway answered (each has a record), and those it served (200).
    let answers = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let spent = Arc::new(Mutex::default());
    wait_for_key(&first.url, &key, &answers, &spent);
    wait_for_key(&second.url, &key, &answers, &spent);

    // Steady load: clients alternate between the Envoys; while one is being restarted
    // they all use the other.
    let urls = Arc::new(RwLock::new((first.url.clone(), Some(second.url.clone()))));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|number| {
            let (urls, stop, answers, answered, spent, failures, key) = (
                urls.clone(),
                stop.clone(),
                answers.clone(),
                answered.clone(),
                spent.clone(),
                failures.clone(),
                key.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let url = {
                        let urls = urls.read().unwrap();
                        match &urls.1 {
                            Some(second) if (n + number as u64) % 2 == 0 => second.clone(),
                            _ => urls.0.clone(),
                        }
                    };
                    match chat(
                        &url,
                        &key,
                        &format!("client {number} request {n}"),
                        &answers,
                    ) {
                        Ok(body) => {
                            answered.fetch_add(1, Ordering::SeqCst);
                            spent.add(cost(&body));
                        }
                        Err(error) => failures.lock().unwrap().push(error),
                    }
                }
            })
        })
        .collect();
    let answered_by = |at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while answered.load(Ordering::SeqCst) < at_least && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let now = answered.load(Ordering::SeqCst);
        assert!(
            now >= at_least,
            "the gateway stopped serving ({now} < {at_least})"
        );
        now
    };

    // The control plane dies mid-load and comes back on the same database and ports.
    let before = answered_by(100);
    control_plane.process.signal("KILL");
    control_plane.process.wait_exit(Duration::from_secs(10));
    assert!(!port_open(grpc));
    let during = answered_by(before + 100);
    let _control_plane =
        ControlPlane::start_with_http(dir.path(), &config_path, grpc, http, &database).unwrap();
    let after = answered_by(during + 100);

    // A rolling restart of the second Envoy: its clients move to the first, it stops once
    // its answered requests' records are sent (a usage tick), and a new one takes its place.
    urls.write().unwrap().1 = None;
    std::thread::sleep(Duration::from_millis(700));
    drop(second);
    let replacement = Envoy::start_with_http(dir.path(), "envoy-b2", grpc, Some(http)).unwrap();
    wait_for_key(&replacement.url, &key, &answers, &spent);
    urls.write().unwrap().1 = Some(replacement.url.clone());
    answered_by(after + 200);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let answers = answers.load(Ordering::SeqCst);
    let spent = spent.get();

    // Exactly one record per answered request, and exactly their cost in the key's spend.
    assert!(
        eventually(Duration::from_secs(30), || stored_records(&database)
            >= answers),
        "stored {} of {answers} records",
        stored_records(&database)
    );
    assert!(
        eventually(Duration::from_secs(30), || key_spend(&first.url, &key)
            == Some(spent)),
        "key spend {:?}, answered requests cost {spent}",
        key_spend(&first.url, &key)
    );
    // ... and still exactly that after more usage ticks and spend pushes.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stored_records(&database), answers);
    assert_eq!(key_spend(&first.url, &key), Some(spent));
    println!(
        "{answers} answers ({} served) across a control-plane kill and an Envoy restart: {answers} records, spend {spent}",
        answered.load(Ordering::SeqCst)
    );
}
