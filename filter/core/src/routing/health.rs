//! `GET /health` and `/health/readiness`: what the filter knows of its deployments' health
//! (from the requests it sent them), in LiteLLM's shape.

use serde::Serialize;

use super::RoutingBook;
use crate::State;

/// The filter's version, reported by the health endpoints.
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Serialize)]
struct Endpoint<'a> {
    model: &'a str,
    model_id: &'a str,
    api_base: String,
    status: &'static str,
    latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<EndpointError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cooldown_until_unix_ms: Option<u64>,
}

#[derive(Serialize)]
struct EndpointError {
    status: u16,
    class: &'static str,
    message: String,
    at_unix_ms: u64,
}

#[derive(Serialize)]
struct Report<'a> {
    status: &'static str,
    healthy_endpoints: Vec<Endpoint<'a>>,
    unhealthy_endpoints: Vec<Endpoint<'a>>,
    healthy_count: usize,
    unhealthy_count: usize,
    version: &'static str,
    uptime: String,
    snapshot_version: u64,
}

/// `3d 2h 15m 30s`, leaving out the leading units that are 0 (the seed's `2h 15m 30s`).
fn uptime(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, hours, minutes, seconds) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {seconds}s"),
        (0, _, _) => format!("{hours}h {minutes}m {seconds}s"),
        _ => format!("{days}d {hours}h {minutes}m {seconds}s"),
    }
}

/// The `/health` answer: every usable deployment of the snapshot, healthy or not. A
/// deployment is unhealthy while it cools down, or when its last attempt failed on
/// something that is the deployment's fault (not the request's) and none succeeded since;
/// one the filter has not sent anything yet counts as healthy (it has not failed).
pub fn health_json(state: &State, book: &RoutingBook, now_ms: u64, started_ms: u64) -> Vec<u8> {
    let mut healthy = Vec::new();
    let mut unhealthy = Vec::new();
    for deployment in state.deployments() {
        let mut health = book.health(&deployment.id, now_ms);
        // The control plane's cooldown counts too (the later of the two).
        if let Some(until) = state.pushed_cooldowns().until(&deployment.id, now_ms) {
            health.cooldown_until_ms =
                Some(health.cooldown_until_ms.map_or(until, |own| own.max(until)));
        }
        let failing = health.last_error.as_ref().is_some_and(|error| {
            error.class.is_deployment_fault()
                && health
                    .last_success_ms
                    .is_none_or(|success| success < error.at_ms)
        });
        let sick = health.cooldown_until_ms.is_some() || failing;
        let entry = Endpoint {
            model: &deployment.model_name,
            model_id: &deployment.id,
            api_base: deployment.api_base.clone(),
            status: if sick { "unhealthy" } else { "healthy" },
            latency_ms: health.last_latency_ms,
            error: None,
            cooldown_until_unix_ms: health.cooldown_until_ms,
        };
        if sick {
            // The control plane's failed health check, unless this filter saw a later error.
            let check = state
                .pushed_cooldowns()
                .failed_check(&deployment.id, now_ms)
                .filter(|check| {
                    health
                        .last_error
                        .as_ref()
                        .is_none_or(|error| error.at_ms < check.checked_ms)
                });
            let error = match check {
                Some(check) => Some(EndpointError {
                    status: check.status,
                    class: "health_check",
                    message: check.message.clone(),
                    at_unix_ms: check.checked_ms,
                }),
                None => health.last_error.map(|error| EndpointError {
                    status: error.status,
                    class: error.class.name(),
                    message: error.message,
                    at_unix_ms: error.at_ms,
                }),
            };
            unhealthy.push((entry, error));
        } else {
            healthy.push(entry);
        }
    }
    let unhealthy: Vec<Endpoint<'_>> = unhealthy
        .into_iter()
        .map(|(entry, error)| Endpoint { error, ..entry })
        .collect();
    let report = Report {
        status: if unhealthy.is_empty() {
            "healthy"
        } else {
            "unhealthy"
        },
        healthy_count: healthy.len(),
        unhealthy_count: unhealthy.len(),
        healthy_endpoints: healthy,
        unhealthy_endpoints: unhealthy,
        version: VERSION,
        uptime: uptime(now_ms.saturating_sub(started_ms)),
        snapshot_version: state.version,
    };
    serde_json::to_vec(&report).unwrap_or_else(|_| br#"{"status":"unhealthy"}"#.to_vec())
}

/// The `/health/readiness` answer: ready once the filter holds a snapshot (`version`),
/// whatever the control plane's database does meanwhile (the filter serves from what it
/// holds).
pub fn readiness_json(version: Option<u64>) -> Vec<u8> {
    let body = match version {
        Some(version) => serde_json::json!({
            "status": "healthy",
            "snapshot_version": version,
            "version": VERSION,
        }),
        None => serde_json::json!({
            "status": "unhealthy",
            "reason": "the gateway has no configuration from its control plane yet",
            "version": VERSION,
        }),
    };
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_like_the_seeds() {
        assert_eq!(uptime(8_130_000), "2h 15m 30s");
        assert_eq!(uptime(59_999), "59s");
        assert_eq!(uptime(61_000), "1m 1s");
        assert_eq!(uptime(90_061_000), "1d 1h 1m 1s");
    }
}
