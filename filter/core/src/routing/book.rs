//! What the filter saw of each deployment: requests in flight, latencies, this minute's
//! usage, failures and cooldowns. The routing strategies read it; every attempt's end
//! writes it.

use std::collections::HashMap;

use super::{ErrorClass, RouterConfig};
use crate::snapshot::Deployment;

/// Weight of the newest sample in the latency averages: recent enough to follow a
/// provider that slows down, smooth enough that one slow answer does not flip the choice.
const LATENCY_SMOOTHING: f64 = 0.3;

/// Longest error message kept for the health report.
const MAX_ERROR_MESSAGE: usize = 200;

/// How one attempt ended, for the book.
#[derive(Debug, Clone, Copy)]
pub struct AttemptReport<'a> {
    /// The deployment it went to.
    pub deployment_id: &'a str,
    /// The status the gateway got (0: no answer).
    pub status: u16,
    /// Its error class; `None` for a success.
    pub class: Option<ErrorClass>,
    /// Milliseconds from sending to the end.
    pub latency_ms: u64,
    /// Milliseconds to a stream's first byte.
    pub first_byte_ms: Option<u64>,
    /// Prompt plus completion tokens, when reported.
    pub tokens: Option<u64>,
    /// Completion tokens, when reported (latency per output token).
    pub completion_tokens: Option<u64>,
    /// What the provider said, for the health report (errors only).
    pub message: &'a str,
}

/// The last error of a deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct LastError {
    /// Status.
    pub status: u16,
    /// Class.
    pub class: ErrorClass,
    /// The provider's message, cut short.
    pub message: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

/// One deployment's health, as the book knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentHealth {
    /// Cooling down until then (Unix milliseconds); `None`: not cooling down.
    pub cooldown_until_ms: Option<u64>,
    /// The latency of its last answer.
    pub last_latency_ms: Option<u64>,
    /// Its last error, if any.
    pub last_error: Option<LastError>,
    /// When it last answered well (Unix milliseconds).
    pub last_success_ms: Option<u64>,
    /// Attempts that succeeded / failed since the filter started.
    pub successes: u64,
    /// See [`Self::successes`].
    pub failures: u64,
}

#[derive(Debug, Clone, Default)]
struct Live {
    in_flight: u32,
    /// Average milliseconds per completion token (per answer when tokens are unknown).
    latency_ms: Option<f64>,
    /// Average milliseconds to a stream's first byte.
    first_byte_ms: Option<f64>,
    /// The minute (Unix ms / 60 000) the counters below are for.
    minute: u64,
    minute_requests: u64,
    minute_tokens: u64,
    /// Failures per class this minute.
    fails: [u32; ErrorClass::COUNT],
    cooldown_until_ms: u64,
    last_latency_ms: Option<u64>,
    last_error: Option<LastError>,
    last_success_ms: Option<u64>,
    successes: u64,
    failures: u64,
}

impl Live {
    /// Starts a new minute's counters when `now_ms` is in a later one.
    fn roll(&mut self, now_ms: u64) {
        let minute = now_ms / 60_000;
        if minute != self.minute {
            self.minute = minute;
            self.minute_requests = 0;
            self.minute_tokens = 0;
            self.fails = [0; ErrorClass::COUNT];
        }
    }
}

/// The routing view of every deployment this filter sent requests to.
#[derive(Debug, Default, Clone)]
pub struct RoutingBook {
    deployments: HashMap<String, Live>,
}

fn smooth(average: Option<f64>, sample: f64) -> f64 {
    match average {
        Some(average) => average + LATENCY_SMOOTHING * (sample - average),
        None => sample,
    }
}

impl RoutingBook {
    /// An empty book.
    pub fn new() -> Self {
        RoutingBook::default()
    }

    /// The record of `id` (made on its first use: a known id costs no allocation), its
    /// counters rolled over to `now_ms`'s minute.
    fn live(&mut self, id: &str, now_ms: u64) -> Option<&mut Live> {
        if !self.deployments.contains_key(id) {
            self.deployments.insert(id.to_string(), Live::default());
        }
        let live = self.deployments.get_mut(id)?;
        live.roll(now_ms);
        Some(live)
    }

    /// An attempt was sent to `id`.
    pub fn started(&mut self, id: &str, now_ms: u64) {
        let Some(live) = self.live(id, now_ms) else {
            return;
        };
        live.in_flight = live.in_flight.saturating_add(1);
        live.minute_requests = live.minute_requests.saturating_add(1);
    }

    /// An attempt ended. A failure that takes its class over `config`'s allowed fails this
    /// minute cools the deployment down for `config.cooldown_ms`; client errors (bad
    /// request, context window, content policy) say nothing about the deployment and do not
    /// count.
    pub fn finished(&mut self, report: &AttemptReport<'_>, config: &RouterConfig, now_ms: u64) {
        let Some(live) = self.live(report.deployment_id, now_ms) else {
            return;
        };
        live.in_flight = live.in_flight.saturating_sub(1);
        if let Some(tokens) = report.tokens {
            live.minute_tokens = live.minute_tokens.saturating_add(tokens);
        }
        let Some(class) = report.class else {
            if live
                .last_success_ms
                .is_some_and(|last| now_ms.saturating_sub(last) > config.latency_ttl_ms)
            {
                // Forgotten averages start again from this sample.
                live.latency_ms = None;
                live.first_byte_ms = None;
            }
            live.successes = live.successes.saturating_add(1);
            live.last_latency_ms = Some(report.latency_ms);
            live.last_success_ms = Some(now_ms);
            let per_token = match report.completion_tokens {
                Some(tokens) if tokens > 0 => report.latency_ms as f64 / tokens as f64,
                _ => report.latency_ms as f64,
            };
            live.latency_ms = Some(smooth(live.latency_ms, per_token));
            if let Some(first_byte) = report.first_byte_ms {
                live.first_byte_ms = Some(smooth(live.first_byte_ms, first_byte as f64));
            }
            return;
        };
        live.failures = live.failures.saturating_add(1);
        live.last_error = Some(LastError {
            status: report.status,
            class,
            message: cut(report.message, MAX_ERROR_MESSAGE),
            at_ms: now_ms,
        });
        if !class.is_deployment_fault() {
            return;
        }
        let Some(fails) = live.fails.get_mut(class.index()) else {
            return;
        };
        *fails = fails.saturating_add(1);
        if *fails > config.allowed_fails(class) && !config.cooldowns_disabled {
            live.cooldown_until_ms = now_ms.saturating_add(config.cooldown_ms);
            // A deployment back from its cooldown starts with a clean minute.
            live.fails = [0; ErrorClass::COUNT];
        }
    }

    /// Whether `id` is cooling down at `now_ms` (it comes back by itself after).
    pub fn cooling_down(&self, id: &str, now_ms: u64) -> bool {
        self.deployments
            .get(id)
            .is_some_and(|live| live.cooldown_until_ms > now_ms)
    }

    /// Whether `deployment` can take one more request of `estimated_tokens` this minute
    /// within its rpm / tpm (as far as this filter has seen).
    pub fn has_headroom(
        &self,
        deployment: &Deployment,
        now_ms: u64,
        estimated_tokens: u64,
    ) -> bool {
        let Some(limits) = deployment.limits else {
            return true;
        };
        let Some(live) = self.deployments.get(&deployment.id) else {
            return true;
        };
        if live.minute != now_ms / 60_000 {
            return true;
        }
        let rpm_ok = limits.rpm.is_none_or(|rpm| live.minute_requests < rpm);
        let tpm_ok = limits
            .tpm
            .is_none_or(|tpm| live.minute_tokens.saturating_add(estimated_tokens) <= tpm);
        rpm_ok && tpm_ok
    }

    /// The rate-limit authority refused `deployment` a request for its own rpm (`tokens`
    /// false) or tpm cap, counted over every filter: this filter counts it as full for the
    /// rest of the minute, so its choices stop picking it.
    pub fn reached_cap(&mut self, deployment: &Deployment, tokens: bool, now_ms: u64) {
        let Some(limits) = deployment.limits else {
            return;
        };
        let Some(live) = self.live(&deployment.id, now_ms) else {
            return;
        };
        match (tokens, limits.rpm, limits.tpm) {
            (false, Some(rpm), _) => live.minute_requests = live.minute_requests.max(rpm),
            (true, _, Some(tpm)) => live.minute_tokens = live.minute_tokens.max(tpm),
            _ => {}
        }
    }

    /// Requests in flight on `id`.
    pub fn in_flight(&self, id: &str) -> u32 {
        self.deployments.get(id).map_or(0, |live| live.in_flight)
    }

    /// The average latency of `id`: to the first byte for streams (when known), else per
    /// completion token; `None` before its first success, and once its last success is
    /// more than `ttl_ms` before `now_ms` (routing_strategy_args.ttl: a deployment left out
    /// for being slow is tried again after it, as in LiteLLM).
    pub fn latency_ms(&self, id: &str, stream: bool, now_ms: u64, ttl_ms: u64) -> Option<f64> {
        let live = self.deployments.get(id)?;
        if live
            .last_success_ms
            .is_none_or(|last| now_ms.saturating_sub(last) > ttl_ms)
        {
            return None;
        }
        if stream {
            live.first_byte_ms.or(live.latency_ms)
        } else {
            live.latency_ms
        }
    }

    /// Tokens `id` used this minute.
    pub fn minute_tokens(&self, id: &str, now_ms: u64) -> u64 {
        self.deployments
            .get(id)
            .filter(|live| live.minute == now_ms / 60_000)
            .map_or(0, |live| live.minute_tokens)
    }

    /// The health of `id` at `now_ms`.
    pub fn health(&self, id: &str, now_ms: u64) -> DeploymentHealth {
        match self.deployments.get(id) {
            None => DeploymentHealth {
                cooldown_until_ms: None,
                last_latency_ms: None,
                last_error: None,
                last_success_ms: None,
                successes: 0,
                failures: 0,
            },
            Some(live) => DeploymentHealth {
                cooldown_until_ms: (live.cooldown_until_ms > now_ms)
                    .then_some(live.cooldown_until_ms),
                last_latency_ms: live.last_latency_ms,
                last_error: live.last_error.clone(),
                last_success_ms: live.last_success_ms,
                successes: live.successes,
                failures: live.failures,
            },
        }
    }

    /// Forgets the deployments `keep` says are gone (after a snapshot removed them).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.deployments.retain(|id, _| keep(id));
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_string()
}
