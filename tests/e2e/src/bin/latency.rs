//! Measures what the gateway adds to a request: the same chat request sent N times to the
//! mock directly and through Envoy + filter, one at a time over keep-alive connections.
//!
//! `cargo run -p tollgate-e2e --release --bin latency -- [requests]` (needs the binaries and
//! the filter built, as for the end-to-end tests). The F8 benchmark is the full version.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tollgate_e2e::{mock_config, Gateway, Mock, MOCK_OPENAI_KEY};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn measure(
    client: &reqwest::blocking::Client,
    url: &str,
    key: &str,
    model: &str,
    requests: usize,
) -> Result<Vec<Duration>> {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "measure me ".repeat(60)}]}).to_string();
    let mut times = Vec::with_capacity(requests);
    for round in 0..requests + 50 {
        let start = Instant::now();
        let response = client
            .post(url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()?;
        let status = response.status();
        let _ = response.bytes()?;
        anyhow::ensure!(status.is_success(), "{url}: {status}");
        if round >= 50 {
            times.push(start.elapsed());
        }
    }
    times.sort();
    Ok(times)
}

fn main() -> Result<()> {
    let requests: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir()?;
    let mock = Mock::start(dir.path())?;
    let gateway = Gateway::start(dir.path(), &mock_config(&mock, Some("sk-latency")))?;
    let client = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let direct = measure(
        &client,
        &format!("{}/v1/chat/completions", mock.url),
        MOCK_OPENAI_KEY,
        "mock-gpt-4o",
        requests,
    )?;
    let through = measure(
        &client,
        &format!("{}/v1/chat/completions", gateway.url),
        "sk-latency",
        "gpt-mock",
        requests,
    )?;
    let anthropic = measure(
        &client,
        &format!("{}/v1/chat/completions", gateway.url),
        "sk-latency",
        "claude-mock",
        requests,
    )?;
    println!("requests per path: {requests} (~1 KB chat request, sequential, keep-alive)");
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "path", "p50 us", "p90 us", "p99 us"
    );
    for (name, times) in [
        ("direct to mock", &direct),
        ("gateway -> openai mock", &through),
        ("gateway -> anthropic mock", &anthropic),
    ] {
        println!(
            "{:<34} {:>9.0} {:>9.0} {:>9.0}",
            name,
            percentile(times, 0.5),
            percentile(times, 0.9),
            percentile(times, 0.99)
        );
    }
    println!(
        "added at the median: openai {:.0} us, anthropic {:.0} us",
        percentile(&through, 0.5) - percentile(&direct, 0.5),
        percentile(&anthropic, 0.5) - percentile(&direct, 0.5)
    );
    Ok(())
}
