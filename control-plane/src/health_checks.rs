//! Background health checks (`general_settings.background_health_checks`,
//! `health_check_interval`): every interval the control plane sends each deployment of the
//! served snapshot a one-token chat request ("ping", `max_tokens: 1`), translated and signed
//! for its provider by the filter's own planner (`tollgate-core`), straight to the provider,
//! never through a gateway's request path. A deployment whose probe fails (no answer, or an
//! error status) is pushed to every filter as a cooldown carrying the probe's status and
//! message, until the next round's probe passes: routing avoids it like any cooling
//! deployment (a group's last one is still used rather than none), and `GET /health` shows it
//! unhealthy with the probe's error.
//!
//! Each control-plane replica probes on its own. Chat only: a deployment that serves only
//! embeddings or completions is probed with chat too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::cooldowns::FailedCheck;
use crate::sync::SyncHub;

/// Longest a probe waits for its answer (less when the interval is shorter).
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest error message kept from a failed probe.
const MAX_MESSAGE_CHARS: usize = 300;

/// Starts the checks: a first round at once, then one every `interval`.
pub fn spawn(hub: Arc<SyncHub>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tracing::info!(
        interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        "background health checks: every deployment probed each interval"
    );
    tokio::spawn(async move {
        let timeout = interval.min(MAX_PROBE_TIMEOUT);
        let client = match reqwest::Client::builder().timeout(timeout).build() {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "background health checks: no HTTP client, not run");
                return;
            }
        };
        let mut ticker = hub.ticker(interval);
        while ticker.tick().await {
            let failed = round(&hub, &client, interval + timeout).await;
            if !failed.is_empty() {
                tracing::warn!(
                    deployments = ?failed.keys().collect::<Vec<_>>(),
                    "background health checks failed"
                );
            }
            hub.set_health_checks(failed);
        }
    })
}

/// One round: every deployment probed at once; the failed ones, out for `out_for`.
async fn round(
    hub: &SyncHub,
    client: &reqwest::Client,
    out_for: Duration,
) -> BTreeMap<String, FailedCheck> {
    let Some(state) = core_state(hub) else {
        return BTreeMap::new();
    };
    let mut probes = tokio::task::JoinSet::new();
    for deployment in state.deployments() {
        let request = plan_probe(&state, deployment);
        let client = client.clone();
        let id = deployment.id.clone();
        probes.spawn(async move {
            let outcome = match request {
                Ok(request) => probe(&client, request).await,
                Err(message) => Err((0, message)),
            };
            (id, outcome)
        });
    }
    let mut failed = BTreeMap::new();
    while let Some(joined) = probes.join_next().await {
        let Ok((id, outcome)) = joined else {
            continue;
        };
        if let Err((status, message)) = outcome {
            let checked_unix_ms = crate::store::now_unix_ms();
            let out_ms = u64::try_from(out_for.as_millis()).unwrap_or(u64::MAX);
            failed.insert(
                id,
                FailedCheck {
                    until_unix_ms: checked_unix_ms.saturating_add(out_ms),
                    status,
                    message,
                    checked_unix_ms,
                },
            );
        }
    }
    failed
}

/// The served snapshot (without its keys) as the filter's state, with the provider tokens
/// the control plane holds (Vertex deployments are signed with them).
fn core_state(hub: &SyncHub) -> Option<Arc<tollgate_core::State>> {
    let served = hub.current();
    let snapshot = crate::proto::Snapshot {
        version: served.version,
        settings: served.settings.clone(),
        deployments: served.deployments.clone(),
        keys: Vec::new(),
    };
    // Both sides are generated from the same .proto: the bytes carry over.
    let snapshot =
        tollgate_core::proto::Snapshot::decode(snapshot.encode_to_vec().as_slice()).ok()?;
    let tokens = tollgate_core::proto::ProviderTokens::decode(
        hub.provider_tokens().encode_to_vec().as_slice(),
    )
    .ok()?;
    let (state, _problems) = tollgate_core::State::from_snapshot(snapshot);
    let mut current = Some(Arc::new(state));
    // Tokens only replace the state's own; they cannot be refused.
    let _ = tollgate_core::State::apply(
        &mut current,
        tollgate_core::snapshot::ControlUpdate::Tokens(tokens),
    );
    current
}

/// A probe, ready to send.
struct ProbeRequest {
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// The probe of `deployment`, planned as the filter plans a client's request for it.
fn plan_probe(
    state: &tollgate_core::State,
    deployment: &Arc<tollgate_core::snapshot::Deployment>,
) -> Result<ProbeRequest, String> {
    let body = serde_json::json!({
        "model": deployment.model_name,
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 1,
    })
    .to_string();
    let summary = tollgate_core::request::summarize_chat_request(body.as_bytes())
        .map_err(|error| error.to_string())?;
    let context = tollgate_core::providers::TranslateContext {
        now_unix: crate::store::now_unix_ms() / 1000,
    };
    let plan = tollgate_core::gateway::plan_chat_request_to(
        state,
        Arc::clone(deployment),
        summary,
        body.as_bytes(),
        &context,
    )
    .map_err(|error| error.to_string())?;
    Ok(ProbeRequest {
        url: format!("{}://{}{}", plan.route_value, plan.authority, plan.path),
        headers: plan.headers,
        body: plan.body,
    })
}

/// Sends a probe: `Ok` for a 2xx answer, else its status (0: none) and error message.
async fn probe(client: &reqwest::Client, request: ProbeRequest) -> Result<(), (u32, String)> {
    let mut builder = client
        .post(&request.url)
        .header("content-type", "application/json");
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    let response = builder
        .body(request.body)
        .send()
        .await
        .map_err(|error| (0, without_url(&error)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err((u32::from(status.as_u16()), error_message(&text)))
}

/// A transport error's description without the request's URL (a Gemini key travels in it).
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    format!("health check request {kind}")
}

/// The `error.message` of a provider's JSON error (OpenAI's, Anthropic's and most others'
/// shape), else the start of the body.
fn error_message(body: &str) -> String {
    let parsed: Option<String> = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            value
                .pointer("/error/message")
                .or_else(|| value.pointer("/message"))
                .and_then(|message| message.as_str().map(str::to_string))
        });
    let message = parsed.unwrap_or_else(|| body.to_string());
    message.chars().take(MAX_MESSAGE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_the_json_error_else_the_body_start() {
        assert_eq!(
            error_message(r#"{"error":{"message":"Rate limit reached","type":"x"}}"#),
            "Rate limit reached"
        );
        assert_eq!(error_message(r#"{"message":"Bad gateway"}"#), "Bad gateway");
        assert_eq!(error_message("upstream down"), "upstream down");
        assert_eq!(error_message(&"x".repeat(1000)).len(), MAX_MESSAGE_CHARS);
    }
}
