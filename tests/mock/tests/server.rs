//! Directives, introspection, routing and the binary.
// Helpers outside #[test] fns may unwrap too: a failing test should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn oa(text: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

fn an(text: &str, stream: bool) -> Value {
    json!({"model": "claude", "max_tokens": 1024, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn status_directive_openai() {
    let base = start_default().await;
    let resp = openai(&base, &oa("please mock:status=429", false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].is_string());
    assert!(v["error"].get("param").is_some_and(Value::is_null));

    for (status, kind) in [
        (500, "server_error"),
        (503, "server_error"),
        (400, "invalid_request_error"),
        (401, "invalid_request_error"),
    ] {
        let resp = openai(&base, &oa(&format!("mock:status={status}"), true)).await;
        assert_eq!(resp.status(), status);
        assert!(resp.headers().get("retry-after").is_none());
        assert_eq!(
            resp.headers()["content-type"],
            "application/json",
            "errors are JSON even for stream requests"
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], kind, "{status}");
    }
}

#[tokio::test]
async fn status_directive_anthropic() {
    let base = start_default().await;
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ] {
        let resp = anthropic(
            &base,
            &an(&format!("mock:status={status}"), status % 2 == 1),
        )
        .await;
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers().get("retry-after").is_some(), status == 429);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind, "{status}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn chunks_directive() {
    let base = start_default().await;
    let expected: String = (0..200)
        .map(|i| format!("chunk{i}"))
        .collect::<Vec<_>>()
        .join(" ");

    let body = openai(&base, &oa("mock:chunks=200", true))
        .await
        .text()
        .await
        .unwrap();
    let chunks = openai_chunks(&body);
    let (text, n) = openai_content(&chunks);
    assert_eq!(n, 200);
    assert_eq!(text, expected);
    assert_eq!(openai_events(&body).last().unwrap(), "[DONE]");

    let body = anthropic(&base, &an("mock:chunks=200", true))
        .await
        .text()
        .await
        .unwrap();
    let events = anthropic_events(&body);
    let (text, n) = anthropic_text(&events);
    assert_eq!(n, 200);
    assert_eq!(text, expected);
    assert_eq!(events[events.len() - 2].1["usage"]["output_tokens"], 200);

    let v: Value = openai(&base, &oa("mock:chunks=3", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "chunk0 chunk1 chunk2"
    );
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn delay_directive() {
    let base = start_default().await;
    let t = Instant::now();
    let resp = openai(&base, &oa("mock:delay_ms=150", false)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );

    // 5 content chunks + role + finish + [DONE] = 8 events, 30 ms before each.
    let t = Instant::now();
    let resp = openai(&base, &oa("mock:chunks=5 mock:delay_ms=30", true)).await;
    let headers_after = t.elapsed();
    let body = resp.text().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(8 * 30),
        "{:?}",
        t.elapsed()
    );
    assert!(
        headers_after < Duration::from_millis(8 * 30),
        "headers come before the paced body"
    );
    assert_eq!(openai_content(&openai_chunks(&body)).1, 5);

    let t = Instant::now();
    let body = anthropic(&base, &an("mock:chunks=2 mock:delay_ms=20", true))
        .await
        .text()
        .await
        .unwrap();
    // message_start, block start, ping, 2 deltas, block stop, message_delta, message_stop
    assert!(
        t.elapsed() >= Duration::from_millis(8 * 20),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(anthropic_events(&body).len(), 8);
}

#[tokio::test]
async fn stream_error_directive() {
    let base = start_default().await;
    let body = openai(&base, &oa("mock:stream_error and more words", true))
        .await
        .text()
        .await
        .unwrap();
    let events = openai_events(&body);
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "a broken stream has no [DONE]"
    );
    assert_eq!(events.len(), 3, "{body}");
    let first: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], "echo:");
    let err: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(err["error"]["type"], "server_error");
    assert!(err["error"]["message"].is_string());

    let body = anthropic(&base, &an("mock:stream_error and more", true))
        .await
        .text()
        .await
        .unwrap();
    let events = anthropic_events(&body);
    assert_eq!(
        names(&events),
        vec![
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(
        events[4].1,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
}

#[tokio::test]
async fn raw_error_directive() {
    let base = start_default().await;
    for resp in [
        openai(&base, &oa("mock:raw_error", false)).await,
        anthropic(&base, &an("mock:raw_error", true)).await,
    ] {
        assert_eq!(resp.status(), 500);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = resp.text().await.unwrap();
        assert_eq!(text, "upstream exploded");
        assert!(serde_json::from_str::<Value>(&text).is_err());
    }
}

#[tokio::test]
async fn introspection_records_requests() {
    let base = start_default().await;
    let c = client();
    openai(&base, &oa("first", false)).await;
    let cleared: Value = c
        .delete(format!("{base}/_mock/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["cleared"], 1);

    c.post(format!("{base}/v1/chat/completions?x=1"))
        .header("X-Test-Header", "abc")
        .bearer_auth("sk-123")
        .json(&oa("recorded", false))
        .send()
        .await
        .unwrap();
    c.post(format!("{base}/v1/messages"))
        .body("not json")
        .send()
        .await
        .unwrap();
    // Not a provider endpoint: not recorded.
    c.get(format!("{base}/_mock/health")).send().await.unwrap();

    let recs: Value = c
        .get(format!("{base}/_mock/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recs = recs.as_array().unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["method"], "POST");
    assert_eq!(recs[0]["path"], "/v1/chat/completions?x=1");
    assert_eq!(recs[0]["headers"]["x-test-header"], "abc");
    assert_eq!(recs[0]["headers"]["authorization"], "Bearer sk-123");
    assert_eq!(recs[0]["body"]["messages"][0]["content"], "recorded");
    assert!(recs[0]["raw_body"].as_str().unwrap().contains("recorded"));
    assert_eq!(recs[1]["path"], "/v1/messages");
    assert!(recs[1]["body"].is_null());
    assert_eq!(recs[1]["raw_body"], "not json");
}

#[tokio::test]
async fn introspection_is_bounded() {
    let base = start_default().await;
    for i in 0..205 {
        openai(&base, &oa(&format!("req{i}"), false)).await;
    }
    let recs: Value = client()
        .get(format!("{base}/_mock/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recs = recs.as_array().unwrap();
    assert_eq!(recs.len(), 200);
    assert_eq!(recs[0]["body"]["messages"][0]["content"], "req5");
    assert_eq!(recs[199]["body"]["messages"][0]["content"], "req204");
}

#[tokio::test]
async fn health_404_and_method() {
    let base = start_default().await;
    let c = client();
    let health = c.get(format!("{base}/_mock/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    let nf = c.get(format!("{base}/v1/nope")).send().await.unwrap();
    assert_eq!(nf.status(), 404);
    let v: Value = nf.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("/v1/nope"));

    let get = c
        .get(format!("{base}/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    let get = c.get(format!("{base}/v1/messages")).send().await.unwrap();
    assert_eq!(get.status(), 405);
    let v: Value = get.json().await.unwrap();
    assert_eq!(v["type"], "error");
}

#[tokio::test]
async fn keep_alive_and_concurrency() {
    let base = start_default().await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let c = c.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..20 {
                let text = format!("w{i} n{j}");
                let v: Value = c
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&oa(&text, false))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(
                    v["choices"][0]["message"]["content"],
                    format!("echo: {text}")
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[cfg(unix)]
#[test]
fn binary_prints_address_and_exits_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-mock"))
        .args(["--port", "0", "--anthropic-key", "k1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("tollgate-mock listening on http://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"));
    let port: u16 = addr.parse().unwrap();
    assert_ne!(port, 0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let base = format!("http://127.0.0.1:{port}");
        let health = client()
            .get(format!("{base}/_mock/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.text().await.unwrap(), "ok");
        let resp = anthropic(&base, &an("x", false)).await;
        assert_eq!(resp.status(), 401, "--anthropic-key is enforced");
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "clean exit on SIGTERM: {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "mock did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
