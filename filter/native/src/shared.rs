//! What every worker's filters share with the control-plane thread: the newest snapshot, the
//! queue of usage records, and the filter's metrics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tollgate_core::exchange::Outcome;
use tollgate_core::{metrics, proto, PluginConfig, State};

use crate::envoy::{self, Metrics};

/// Usage records kept while the control plane is unreachable; past this the oldest are
/// dropped (and counted), so an outage cannot grow Envoy's memory without bound.
const MAX_QUEUED_USAGE: usize = 10_000;
/// Records per message on the stream.
pub const USAGE_BATCH: usize = 500;

/// One filter configuration's shared state.
pub struct Shared {
    /// Static configuration.
    pub config: PluginConfig,
    /// Tells this module instance's stream apart from other Envoys' and configurations'.
    pub instance_id: String,
    state: RwLock<Option<Arc<State>>>,
    usage: Mutex<VecDeque<proto::UsageRecord>>,
    stopped: AtomicBool,
    metrics: Metrics,
}

impl Shared {
    /// Shared state for a new configuration.
    pub fn new(config: PluginConfig, metrics: Metrics) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        Shared {
            config,
            instance_id: format!("native-{}-{nanos:x}", std::process::id()),
            state: RwLock::new(None),
            usage: Mutex::new(VecDeque::new()),
            stopped: AtomicBool::new(false),
            metrics,
        }
    }

    /// The newest snapshot, if one has arrived.
    pub fn state(&self) -> Option<Arc<State>> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Version of the newest snapshot; 0 before the first.
    pub fn state_version(&self) -> u64 {
        self.state().map_or(0, |state| state.version)
    }

    /// Decodes a control-plane message and installs its snapshot for every worker; returns
    /// its version. Requests in flight finish on the state they started with.
    pub fn install(&self, message: &[u8]) -> Option<u64> {
        let checked = match State::check_control_message(message) {
            Ok(checked) => checked?,
            Err(error) => {
                envoy::log_error(&format!(
                    "tollgate: undecodable control-plane message: {error}"
                ));
                return None;
            }
        };
        let keys = checked.key_count();
        let (state, problems) = checked.into_state();
        for problem in &problems {
            envoy::log_warn(&format!("tollgate: snapshot {}: {problem}", state.version));
        }
        envoy::log_info(&format!(
            "tollgate: {} installed snapshot {} ({} models, {keys} keys)",
            self.instance_id,
            state.version,
            state.model_names().len(),
        ));
        let version = state.version;
        let state = Arc::new(state);
        let previous = self
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(state);
        // The old state is freed here, outside the lock, if no request holds it.
        drop(previous);
        Some(version)
    }

    /// Records how an exchange ended: metrics at once, the usage record for the control
    /// plane's next batch.
    pub fn record_outcome(&self, filter: envoy::Filter, outcome: Outcome<'_>) {
        match outcome {
            Outcome::Answered { status } => {
                self.metrics.count_request(
                    filter,
                    metrics::NO_MODEL,
                    metrics::GATEWAY_PROVIDER,
                    status,
                );
            }
            Outcome::Upstream(upstream) => {
                let deployment = &upstream.plan.deployment;
                let (model, provider) = (&deployment.stat_model, &deployment.stat_provider);
                self.metrics
                    .count_request(filter, model, provider, upstream.status);
                if upstream.usage.is_reported() {
                    self.metrics.count_tokens(
                        filter,
                        model,
                        provider,
                        upstream.usage.prompt_tokens.unwrap_or(0),
                        upstream.usage.completion_tokens.unwrap_or(0),
                    );
                } else if (200..300).contains(&upstream.status) {
                    self.metrics.count_usage_missing(filter, model, provider);
                }
                self.metrics.record_latency(
                    filter,
                    model,
                    provider,
                    upstream.upstream_ms,
                    upstream.first_byte_ms,
                );
                self.queue_usage(filter, upstream.record);
            }
        }
    }

    fn queue_usage(&self, filter: envoy::Filter, record: proto::UsageRecord) {
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        if usage.len() >= MAX_QUEUED_USAGE {
            usage.pop_front();
            self.metrics.count_usage_dropped(filter);
        }
        usage.push_back(record);
    }

    /// Takes up to `limit` queued usage records, oldest first.
    pub fn take_usage(&self, limit: usize) -> Vec<proto::UsageRecord> {
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let take = usage.len().min(limit);
        usage.drain(..take).collect()
    }

    /// Puts records the stream refused back at the front of the queue, in order.
    pub fn requeue_usage(&self, records: Vec<proto::UsageRecord>) {
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        for record in records.into_iter().rev() {
            usage.push_front(record);
        }
    }

    /// Asks the control-plane thread to end.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// The control plane's gRPC URL.
    pub fn control_plane_url(&self) -> String {
        self.config.control_plane_url.clone()
    }
}
