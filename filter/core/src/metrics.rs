//! Stat names. The filter emits `tollgate.<stat>.<tag>.<value>...`; the `stats_tags` in the
//! Envoy bootstrap turn each `<tag>.<value>` pair into a Prometheus label, so the names here
//! and the regexes there must agree (a test renders both).

/// Model label for requests refused before a model was resolved (keeps client-chosen
/// strings out of stat names, which would let anyone grow Envoy's stat table).
pub const NO_MODEL: &str = "none";
/// Provider label for answers the gateway gave itself.
pub const GATEWAY_PROVIDER: &str = "gateway";

/// Base names of the filter's stats. The proxy-wasm filter appends `.<tag>.<value>` pairs (the
/// functions below); the native module defines each once with labels (`model`, `provider`,
/// `status`) that Envoy turns into tags itself.
pub const REQUESTS: &str = "tollgate.requests";
/// See [`REQUESTS`].
pub const PROMPT_TOKENS: &str = "tollgate.prompt_tokens";
/// See [`REQUESTS`].
pub const COMPLETION_TOKENS: &str = "tollgate.completion_tokens";
/// See [`REQUESTS`].
pub const USAGE_MISSING: &str = "tollgate.usage_missing";
/// See [`REQUESTS`].
pub const UPSTREAM_LATENCY_MS: &str = "tollgate.upstream_latency_ms";
/// See [`REQUESTS`].
pub const TIME_TO_FIRST_TOKEN_MS: &str = "tollgate.time_to_first_token_ms";
/// Counter without tags: buffered provider answers over `max_response_body_bytes`, refused
/// with a 502 instead of being held in memory.
pub const RESPONSES_TOO_LARGE: &str = "tollgate.responses_too_large";
/// Counter without tags: usage records dropped while the control plane was away.
pub const USAGE_RECORDS_DROPPED: &str = "tollgate.usage_records_dropped";
/// Counter without tags: full snapshots taken from the control plane (by each Wasm VM: a VM
/// that serves nothing yet keeps them as bytes).
pub const SNAPSHOTS_INSTALLED: &str = "tollgate.snapshots_installed";
/// Counter without tags: snapshot deltas taken (see [`SNAPSHOTS_INSTALLED`]).
pub const SNAPSHOT_DELTAS_INSTALLED: &str = "tollgate.snapshot_deltas_installed";
/// Counter without tags: control-plane streams dropped to get a full snapshot, because a
/// delta did not apply onto the version held or a message did not decode.
pub const SNAPSHOT_RESYNCS: &str = "tollgate.snapshot_resyncs";

/// Replaces every byte a stat segment cannot hold (`.` separates segments) with `_`.
pub fn sanitize_stat_segment(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".to_string()
    } else {
        cleaned
    }
}

/// Counter: one per finished request.
pub fn requests_counter(model: &str, provider: &str, status: u16) -> String {
    format!("{REQUESTS}.model.{model}.provider.{provider}.status.{status}")
}

/// Counter: prompt tokens reported by providers.
pub fn prompt_tokens_counter(model: &str, provider: &str) -> String {
    format!("{PROMPT_TOKENS}.model.{model}.provider.{provider}")
}

/// Counter: completion tokens reported by providers.
pub fn completion_tokens_counter(model: &str, provider: &str) -> String {
    format!("{COMPLETION_TOKENS}.model.{model}.provider.{provider}")
}

/// Counter: responses whose provider reported no usage (so spend is unknown, not 0).
pub fn usage_missing_counter(model: &str, provider: &str) -> String {
    format!("{USAGE_MISSING}.model.{model}.provider.{provider}")
}

/// Histogram: milliseconds from sending upstream to the last response byte.
pub fn upstream_latency_histogram(model: &str, provider: &str) -> String {
    format!("{UPSTREAM_LATENCY_MS}.model.{model}.provider.{provider}")
}

/// Histogram: milliseconds from sending upstream to the first response body byte.
pub fn time_to_first_byte_histogram(model: &str, provider: &str) -> String {
    format!("{TIME_TO_FIRST_TOKEN_MS}.model.{model}.provider.{provider}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_hold_no_dots() {
        assert_eq!(sanitize_stat_segment("gpt-3.5-turbo"), "gpt-3_5-turbo");
        assert_eq!(sanitize_stat_segment("org/model:v1"), "org_model_v1");
        assert_eq!(sanitize_stat_segment(""), "_");
        assert_eq!(
            requests_counter("m", "openai", 200),
            "tollgate.requests.model.m.provider.openai.status.200"
        );
    }
}
