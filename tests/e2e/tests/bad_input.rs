#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Bad input gets an OpenAI-shaped error with the right status, and the workers' VMs survive.

use serde_json::{json, Value};
use tollgate_e2e::{client, mock_config, Gateway, Mock};

const MASTER_KEY: &str = "sk-master-bad-input";

fn assert_openai_error(status: u16, text: &str, expected_status: u16, case: &str) -> Value {
    assert_eq!(status, expected_status, "{case}: {text}");
    let body: Value =
        serde_json::from_str(text).unwrap_or_else(|_| panic!("{case}: not JSON: {text}"));
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{case}: {text}"));
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: {text}"
    );
    assert!(error["type"].is_string(), "{case}: {text}");
    assert!(
        error.contains_key("param") && error.contains_key("code"),
        "{case}: {text}"
    );
    body
}

fn send_raw(
    url: &str,
    key: Option<&str>,
    body: impl Into<reqwest::blocking::Body>,
) -> (u16, String) {
    let mut request = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.body(body).send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn valid_request_works(url: &str) {
    let body =
        json!({"model": "gpt-mock", "messages": [{"role": "user", "content": "still alive"}]});
    let (status, text) = send_raw(url, Some(MASTER_KEY), body.to_string());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("echo: still alive"));
}

#[test]
fn bad_input_is_refused_and_vms_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let config = format!(
        "{}  max_request_size_mb: 1\n",
        mock_config(&mock, Some(MASTER_KEY))
    );
    let gateway = Gateway::start(dir.path(), &config).unwrap();
    let url = gateway.url.as_str();
    let valid =
        json!({"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}]}).to_string();

    // Keys.
    let (status, text) = send_raw(url, None, valid.clone());
    assert_openai_error(status, &text, 401, "no key");
    let (status, text) = send_raw(url, Some("sk-wrong"), valid.clone());
    let body = assert_openai_error(status, &text, 401, "wrong key");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let response = client().get(format!("{url}/v1/models")).send().unwrap();
    assert_eq!(response.status(), 401, "models list needs the key too");

    // Bodies.
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("invalid JSON", "{\"model\": ".into(), 400, None),
        ("not an object", "[1, 2, 3]".into(), 400, None),
        ("empty body", String::new(), 400, None),
        ("missing model", json!({"messages": [{"role": "user", "content": "x"}]}).to_string(), 400, Some("model")),
        ("unknown model", json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}).to_string(), 404, Some("model")),
        ("model not a string", json!({"model": 42, "messages": [{"role": "user", "content": "x"}]}).to_string(), 400, Some("model")),
        ("messages not a list", json!({"model": "gpt-mock", "messages": "hello"}).to_string(), 400, Some("messages")),
        ("messages missing", json!({"model": "gpt-mock"}).to_string(), 400, Some("messages")),
        ("bad role", json!({"model": "gpt-mock", "messages": [{"role": "wizard", "content": "x"}]}).to_string(), 400, Some("messages[0].role")),
        ("stream not a bool", json!({"model": "gpt-mock", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}).to_string(), 400, Some("stream")),
        ("temperature not a number", json!({"model": "claude-mock", "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}).to_string(), 400, Some("temperature")),
        ("max_tokens negative", json!({"model": "claude-mock", "max_tokens": -5, "messages": [{"role": "user", "content": "x"}]}).to_string(), 400, Some("max_tokens")),
    ];
    for (case, body, expected, param) in cases {
        let (status, text) = send_raw(url, Some(MASTER_KEY), body);
        let error = assert_openai_error(status, &text, expected, case);
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], param, "{case}: {text}");
        }
        valid_request_works(url);
    }

    // Over the configured limit (1 MB): announced by content-length, and streamed in chunks.
    let big = format!(
        "{{\"model\":\"gpt-mock\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "a".repeat(2 * 1024 * 1024)
    );
    let (status, text) = send_raw(url, Some(MASTER_KEY), big.clone());
    let body = assert_openai_error(status, &text, 413, "body over limit");
    assert_eq!(body["error"]["code"], "request_too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(64 * 1024)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let streamed = reqwest::blocking::Body::new(ChunkReader {
        chunks: chunks.into_iter(),
        current: Vec::new(),
        at: 0,
    });
    let (status, text) = send_raw(url, Some(MASTER_KEY), streamed);
    assert_openai_error(status, &text, 413, "chunked body over limit");
    valid_request_works(url);

    // Wrong method on a known endpoint.
    let response = client()
        .get(format!("{url}/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    assert_openai_error(
        status,
        &response.text().unwrap(),
        405,
        "GET chat completions",
    );

    // Unknown path: Envoy's catch-all answers in the same shape.
    let response = client()
        .post(format!("{url}/v1/nope"))
        .bearer_auth(MASTER_KEY)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    assert_openai_error(status, &response.text().unwrap(), 404, "unknown path");

    // A client cannot pick the upstream cluster itself.
    let response = client()
        .get(format!("{url}/_mock/requests"))
        .header("x-tollgate-upstream", "http")
        .header("host", mock.url.trim_start_matches("http://"))
        .send()
        .unwrap();
    assert_eq!(
        response.status(),
        404,
        "routing header from a client must be ignored"
    );

    // Both workers (and so both VMs) still serve after all of that.
    for _ in 0..20 {
        valid_request_works(url);
    }
    let failures = gateway.filter_failures();
    assert!(failures.is_empty(), "filter code failed: {failures:?}");
}

#[test]
fn a_buffered_answer_over_the_response_limit_is_a_502_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    // 0.004 MB = 4,194 bytes: a 2,000-word answer (about 20 KB) is over it, a short one is not.
    let config = format!(
        "{}  max_response_size_mb: 0.004\n",
        mock_config(&mock, Some(MASTER_KEY))
    );
    let gateway = Gateway::start(dir.path(), &config).unwrap();
    let url = gateway.url.as_str();
    for model in ["gpt-mock", "claude-mock"] {
        let body =
            json!({"model": model, "messages": [{"role": "user", "content": "mock:chunks=2000"}]});
        let (status, text) = send_raw(url, Some(MASTER_KEY), body.to_string());
        let error = assert_openai_error(status, &text, 502, model);
        assert_eq!(
            error["error"]["code"], "upstream_response_too_large",
            "{text}"
        );
        assert_eq!(error["error"]["type"], "api_error", "{text}");
    }
    // A short answer still passes, and so does a long one that streams (events are bounded
    // one by one, not the whole stream).
    valid_request_works(url);
    let stream = json!({"model": "gpt-mock", "stream": true, "messages": [{"role": "user", "content": "mock:chunks=2000"}]});
    let (status, text) = send_raw(url, Some(MASTER_KEY), stream.to_string());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("chunk1999"), "the whole stream arrived");
    // Counted (counters reach Envoy at the filter's next tick).
    let counted = |gateway: &Gateway| {
        gateway.prometheus().is_ok_and(|text| {
            text.lines()
                .any(|line| line.contains("tollgate_responses_too_large") && line.ends_with(" 2"))
        })
    };
    assert!(
        tollgate_e2e::eventually(std::time::Duration::from_secs(5), || counted(&gateway)),
        "{}",
        gateway.prometheus().unwrap()
    );
}

/// A body without content-length, sent in chunks.
struct ChunkReader {
    chunks: std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>,
    current: Vec<u8>,
    at: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.current.len() {
            match self.chunks.next() {
                Some(chunk) => {
                    self.current = chunk?;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
