//! The load generator: HTTP/1.1 keep-alive connections (hyper), fixed-rate runs with
//! coordinated-omission correction (wrk2-style) and closed-loop runs at fixed concurrency.
//! Streaming responses are read frame by frame to time the first content chunk.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One kind of request sent to one place.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub addr: SocketAddr,
    /// The Host header.
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub stream: bool,
}

/// Timings of one request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub total: Duration,
    pub ttft: Option<Duration>,
}

/// What a run measured.
#[derive(Debug, Default, Clone)]
pub struct RunResult {
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub measured: Duration,
    /// Microseconds, sorted.
    pub total_us: Vec<f64>,
    /// Microseconds, sorted (streams only).
    pub ttft_us: Vec<f64>,
}

impl RunResult {
    pub fn rps(&self) -> f64 {
        self.completed as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    /// Adds another run of the same path (one round of an interleaved measurement).
    pub fn merge(&mut self, other: RunResult) {
        self.completed += other.completed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.measured += other.measured;
        self.total_us.extend(other.total_us);
        self.total_us.sort_by(f64::total_cmp);
        self.ttft_us.extend(other.ttft_us);
        self.ttft_us.sort_by(f64::total_cmp);
    }
}

/// Percentile `p` (0..1) of sorted values; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

pub type Sender = SendRequest<Full<Bytes>>;

pub async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// What the last event of a complete stream holds: OpenAI's `[DONE]` (what the gateway
/// sends for every provider), Anthropic's `message_stop`, Gemini's `finishReason` (only its
/// last event has one) and, for Bedrock's event stream, the `metadata` event's
/// `:event-type` header as framed (string type 7, value length 8).
const STREAM_ENDS: [&[u8]; 4] = [
    b"[DONE]",
    b"message_stop",
    b"\"finishReason\"",
    b":event-type\x07\x00\x08metadata",
];
/// How many bytes at the end of a stream are searched for [`STREAM_ENDS`]: Gemini's last
/// event holds its finish reason about 200 bytes before its end.
const STREAM_END_WINDOW: usize = 512;

/// Position just after `"content":"` or `"text":"` followed by a non-empty string.
fn has_content(bytes: &[u8]) -> bool {
    for needle in [&b"\"content\":\""[..], &b"\"text\":\""[..]] {
        for at in memchr::memmem::find_iter(bytes, needle) {
            if let Some(&next) = bytes.get(at + needle.len()) {
                if next != b'"' {
                    return true;
                }
            }
        }
    }
    false
}

/// Sends one request on `sender` and reads the whole answer. `start` is when the request
/// counts as issued.
pub async fn send_one(sender: &mut Sender, spec: &RequestSpec, start: Instant) -> Result<Sample> {
    sender.ready().await?;
    let mut builder = Request::post(spec.path.as_str())
        .header("host", spec.host.as_str())
        .header("content-type", "application/json");
    for (name, value) in &spec.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = builder.body(Full::new(spec.body.clone()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut ttft = None;
    let mut kept: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if spec.stream || !status.is_success() {
            let from = kept.len().saturating_sub(16);
            kept.extend_from_slice(&data);
            if spec.stream && ttft.is_none() && has_content(&kept[from..]) {
                ttft = Some(start.elapsed());
            }
        }
    }
    let total = start.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&kept[..kept.len().min(400)]).into_owned();
        bail!("HTTP {status}: {text}");
    }
    if spec.stream {
        let tail = &kept[kept.len().saturating_sub(STREAM_END_WINDOW)..];
        let ended = STREAM_ENDS
            .iter()
            .any(|end| memchr::memmem::find(tail, end).is_some());
        if !ended || ttft.is_none() {
            let text =
                String::from_utf8_lossy(&kept[kept.len().saturating_sub(400)..]).into_owned();
            bail!(
                "stream incomplete (content seen: {}): ...{text}",
                ttft.is_some()
            );
        }
    }
    Ok(Sample { total, ttft })
}

struct Collector {
    samples: Vec<Sample>,
    errors: u64,
    first_error: Option<String>,
}

impl Collector {
    fn new() -> Self {
        Collector {
            samples: Vec::new(),
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, error: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{error:#}"));
        }
    }

    fn merge(parts: Vec<Collector>, measured: Duration) -> RunResult {
        let mut result = RunResult {
            measured,
            ..RunResult::default()
        };
        for part in parts {
            result.errors += part.errors;
            if result.first_error.is_none() {
                result.first_error = part.first_error;
            }
            for sample in part.samples {
                result.completed += 1;
                result.total_us.push(sample.total.as_secs_f64() * 1e6);
                if let Some(ttft) = sample.ttft {
                    result.ttft_us.push(ttft.as_secs_f64() * 1e6);
                }
            }
        }
        result.total_us.sort_by(f64::total_cmp);
        result.ttft_us.sort_by(f64::total_cmp);
        result
    }
}

impl Collector {
    /// Sends one request on `sender` and keeps its sample if `counts(finished_at)` says so;
    /// after an error, reconnects. `false` when the connection cannot be made again.
    async fn send(
        &mut self,
        sender: &mut Sender,
        spec: &RequestSpec,
        start: Instant,
        counts: impl FnOnce(Instant) -> bool,
    ) -> bool {
        match send_one(sender, spec, start).await {
            Ok(sample) => {
                if counts(Instant::now()) {
                    self.samples.push(sample);
                }
                true
            }
            Err(error) => {
                self.error(&error);
                match connect(spec.addr).await {
                    Ok(new) => {
                        *sender = new;
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    }

    /// Waits for the connections' tasks and merges what they measured.
    async fn join(
        tasks: Vec<tokio::task::JoinHandle<Collector>>,
        duration: Duration,
    ) -> Result<RunResult> {
        let mut parts = Vec::new();
        for task in tasks {
            parts.push(task.await.map_err(|e| anyhow!("load task: {e}"))?);
        }
        Ok(Collector::merge(parts, duration))
    }
}

/// `rate` requests per second for `warmup` + `duration` on `connections` connections;
/// only requests issued after the warm-up count. A request's latency is measured from its
/// scheduled time when its connection was still busy then (the server made it wait:
/// coordinated omission corrected, as wrk2), otherwise from when it was actually sent (so
/// the 1 ms resolution of the timer is not counted against the server).
pub async fn fixed_rate(
    spec: &RequestSpec,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    connections: usize,
) -> Result<RunResult> {
    let total = (rate * (warmup + duration).as_secs_f64()).round() as u64;
    let warm = (rate * warmup.as_secs_f64()).round() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let spec = spec.clone();
        let next = Arc::clone(&next);
        let mut sender = connect(spec.addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut collector = Collector::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let intended = t0 + Duration::from_secs_f64(i as f64 / rate);
                let late = Instant::now() > intended;
                if !late {
                    tokio::time::sleep_until(intended.into()).await;
                }
                let start = if late { intended } else { Instant::now() };
                let counts = |_: Instant| i >= warm;
                if !collector.send(&mut sender, &spec, start, counts).await {
                    break;
                }
            }
            collector
        }));
    }
    Collector::join(tasks, duration).await
}

/// As many requests as `connections` connections can do for `warmup` + `duration`; requests
/// completed inside the measured window count.
pub async fn closed_loop(
    spec: &RequestSpec,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<RunResult> {
    let begin = Instant::now() + warmup;
    let end = begin + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let spec = spec.clone();
        let mut sender = connect(spec.addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut collector = Collector::new();
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let counts = |done: Instant| start >= begin && done <= end;
                if !collector.send(&mut sender, &spec, start, counts).await {
                    break;
                }
            }
            collector
        }));
    }
    Collector::join(tasks, duration).await
}

/// One request, for set-up calls (readiness, key generation). Returns status and body.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(u16, Bytes)> {
    let mut sender = connect(addr).await?;
    sender.ready().await?;
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = sender.send_request(builder.body(Full::new(body))?).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}
