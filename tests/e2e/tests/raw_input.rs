#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Bytes no HTTP client library would send, written on a raw socket: header names and values
//! that are not UTF-8, NUL bytes, a 64 KB header, truncated and chunked bodies. None of them
//! may crash or wedge a filter: afterwards every worker still answers, and no Wasm VM failed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use tollgate_e2e::{mock_config, Gateway, Mock};

const MASTER_KEY: &str = "sk-master-raw-input";

/// How many workers the harness runs Envoy with (`--concurrency 2`).
const WORKERS: usize = 2;

fn chat_body(content: &str) -> String {
    format!(r#"{{"model":"gpt-mock","messages":[{{"role":"user","content":"{content}"}}]}}"#)
}

/// Host and port of a `http://127.0.0.1:PORT` URL.
fn address(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// Writes `request` on a new connection (half-closing it when `close_write`), and reads the
/// answer until Envoy closes the connection or 10 s pass. Returns the status (0 when none came)
/// and the body.
fn exchange(url: &str, request: &[u8], close_write: bool) -> (u16, String) {
    // A connect refused under load (a full accept queue) is not what this test is about:
    // retried a few times.
    let mut stream = (0..5)
        .find_map(|attempt| {
            std::thread::sleep(Duration::from_millis(100 * attempt));
            TcpStream::connect(address(url)).ok()
        })
        .expect("the gateway refused five connections");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Envoy may answer (and close) before it has read everything: a write error is fine.
    let _ = stream.write_all(request);
    if close_write {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Like [`exchange`] for a request Envoy answers before reading all of it: when Envoy closes
/// on bytes it has not read, the kernel resets the connection and the client may lose the
/// answer (status 0), so that is tried again, a few times.
fn answered(url: &str, request: &[u8]) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..5 {
        last = exchange(url, request, false);
        if last.0 != 0 {
            break;
        }
    }
    last
}

/// A chat request with `extra` header lines (each ending in CRLF) and `body`.
fn chat_request(extra: &[u8], body: &str) -> Vec<u8> {
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\
         authorization: Bearer {MASTER_KEY}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(extra);
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body.as_bytes());
    request
}

fn error_code(body: &str) -> Value {
    serde_json::from_str::<Value>(body)
        .map(|value| value["error"]["code"].clone())
        .unwrap_or(Value::Null)
}

/// The per-worker connection counts of the gateway's listener, from Envoy's stats.
fn connections_per_worker(gateway: &Gateway) -> Vec<u64> {
    let stats = gateway.stats().unwrap();
    (0..WORKERS)
        .map(|worker| {
            let suffix = format!(".worker_{worker}.downstream_cx_total: ");
            stats
                .lines()
                .filter(|line| line.starts_with("listener.") && line.contains(&suffix))
                .filter(|line| !line.contains("admin"))
                .filter_map(|line| line.rsplit(": ").next()?.parse::<u64>().ok())
                .sum()
        })
        .collect()
}

#[test]
fn raw_socket_input_never_kills_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &mock_config(&mock, Some(MASTER_KEY))).unwrap();
    let url = gateway.url.as_str();
    let valid = chat_body("raw");

    // A header value that is not UTF-8, on a header the filter does not read: passed on
    // (not to the provider: only allowlisted headers go there) and the request is served.
    // Sent on several connections so that every worker sees one.
    for _ in 0..8 {
        let (status, body) = exchange(url, &chat_request(b"x-foo: \xff\xfe\r\n", &valid), false);
        assert_eq!(status, 200, "non-UTF-8 value of an unread header: {body}");
        assert!(body.contains("echo: raw"), "{body}");
    }

    // Non-UTF-8 where the value matters: the key. A clear 400, not a crash and not a 401.
    for _ in 0..4 {
        let mut request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n\
                            connection: close\r\nauthorization: Bearer sk-\xff\xfe\r\n\
                            content-type: application/json\r\n"
            .to_vec();
        // No body: the answer comes at the headers, and Envoy closing on unread body bytes
        // would reset the connection before the client reads the answer.
        request.extend_from_slice(b"content-length: 0\r\n\r\n");
        let (status, body) = answered(url, &request);
        assert_eq!(status, 400, "non-UTF-8 key: {body}");
        assert_eq!(error_code(&body), "invalid_header", "{body}");
    }

    // Header names that are not UTF-8 (or not tokens at all), and NUL bytes: Envoy's codec
    // may refuse them before any filter runs (400); either way the worker lives on.
    let odd_headers: [&[u8]; 4] = [
        b"x-\xff\xfe: value\r\n",
        b"\xc3\x28: value\r\n",
        b"x-nul: a\x00b\r\n",
        b"x-nul\x00name: value\r\n",
    ];
    for header in odd_headers {
        for _ in 0..4 {
            let (status, body) = exchange(url, &chat_request(header, &valid), false);
            assert!(
                status == 200 || status == 400,
                "{:?}: status {status}: {body}",
                String::from_utf8_lossy(header)
            );
        }
    }

    // A 64 KB header: over Envoy's default header limit (60 KiB), refused by Envoy.
    let big_header = format!("x-big: {}\r\n", "a".repeat(64 * 1024));
    for _ in 0..4 {
        let (status, _) = answered(url, &chat_request(big_header.as_bytes(), &valid));
        assert_eq!(status, 431, "64 KB header");
    }

    // A truncated body: content-length promises more than is sent before the client stops
    // sending. Envoy never completes the request; no answer is a 200.
    for _ in 0..4 {
        let mut request = chat_request(b"", &valid);
        request.truncate(request.len() - valid.len() / 2);
        let (status, _) = exchange(url, &request, true);
        assert_ne!(status, 200, "truncated body");
    }

    // A chunked body, in odd-sized chunks, is read whole and served.
    for _ in 0..4 {
        let mut request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\
             authorization: Bearer {MASTER_KEY}\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for chunk in valid.as_bytes().chunks(7) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let (status, body) = exchange(url, &request, false);
        assert_eq!(status, 200, "chunked body: {body}");
        assert!(body.contains("echo: raw"), "{body}");
    }
    // A chunked body cut off in the middle of a chunk.
    for _ in 0..4 {
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\
             authorization: Bearer {MASTER_KEY}\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n40\r\n{{\"model\":"
        );
        let (status, _) = exchange(url, request.as_bytes(), true);
        assert_ne!(status, 200, "truncated chunked body");
    }

    // Then 50 normal requests per worker, each on its own connection, all served, and every
    // worker got some of them.
    let before = connections_per_worker(&gateway);
    for round in 0..50 * WORKERS {
        let body = chat_body(&format!("after {round}"));
        let (status, text) = exchange(url, &chat_request(b"", &body), false);
        assert_eq!(
            status, 200,
            "normal request {round} after the raw input: {text}"
        );
        assert!(text.contains(&format!("echo: after {round}")), "{text}");
    }
    let after = connections_per_worker(&gateway);
    for worker in 0..WORKERS {
        assert!(
            after[worker] > before[worker],
            "worker {worker} got none of the normal requests: {before:?} -> {after:?}"
        );
    }

    // Client headers reach the provider by allowlist only: trace context and content
    // negotiation do; cookies, the client's key, provider-account and forwarding headers,
    // and a non-UTF-8 value on an unread header do not.
    let extra = b"cookie: session=secret\r\nopenai-organization: org-client\r\n\
                  anthropic-beta: client-beta\r\nx-api-key: sk-client\r\n\
                  x-forwarded-for: 10.9.8.7\r\nx-foo: \xff\xfe\r\n\
                  traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
                  accept: application/json\r\n";
    let (status, body) = exchange(url, &chat_request(extra, &chat_body("headers")), false);
    assert_eq!(status, 200, "{body}");
    let upstream = mock.last_request().unwrap();
    let headers = upstream["headers"].as_object().unwrap();
    assert_eq!(
        headers["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(headers["accept"], "application/json");
    assert_eq!(
        headers["authorization"],
        format!("Bearer {}", tollgate_e2e::MOCK_OPENAI_KEY)
    );
    for gone in [
        "cookie",
        "openai-organization",
        "anthropic-beta",
        "x-api-key",
        "x-foo",
    ] {
        assert!(
            !headers.contains_key(gone),
            "{gone} reached the provider: {headers:?}"
        );
    }
    // Envoy itself may add its own x-forwarded-for hop; the client's value never goes.
    assert!(
        !headers
            .get("x-forwarded-for")
            .and_then(Value::as_str)
            .is_some_and(|value| value.contains("10.9.8.7")),
        "{headers:?}"
    );

    // No filter code failed: no trapped Wasm VM call, no panic (Envoy logs both; a VM that
    // trapped would also have failed the requests above with 503).
    let failures = gateway.filter_failures();
    assert!(failures.is_empty(), "filter code failed: {failures:?}");
}
