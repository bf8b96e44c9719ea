//! What every worker's filters share with the control-plane thread: the newest snapshot, the
//! queue of usage records, and the filter's metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tollgate_core::exchange::Outcome;
use tollgate_core::snapshot::Deployment;
use tollgate_core::usage::{TokenCounts, UsageQueue};
use tollgate_core::{metrics, proto, PluginConfig, State};

use crate::envoy::{self, Metrics, Scheduler};

/// One filter configuration's shared state.
pub struct Shared {
    /// Static configuration.
    pub config: PluginConfig,
    /// Tells this module instance's stream apart from other Envoys' and configurations'.
    pub instance_id: String,
    state: RwLock<Option<Arc<State>>>,
    usage: Mutex<UsageQueue>,
    stopped: AtomicBool,
    metrics: Metrics,
    /// Counter increments not yet handed to Envoy.
    pending: Mutex<PendingCounts>,
    /// Whether [`Self::pending`] holds anything (read without the lock on every tick).
    pending_dirty: AtomicBool,
    scheduler: Scheduler,
}

/// Counter increments added up between flushes.
#[derive(Default)]
struct PendingCounts {
    /// By deployment (its `Arc`'s address; the `Arc` is kept, so the address stays unique).
    deployments: HashMap<usize, DeploymentCounts>,
    /// Answers the gateway gave itself, by status.
    gateway_answers: BTreeMap<u16, u64>,
    usage_records_dropped: u64,
    responses_too_large: u64,
}

struct DeploymentCounts {
    deployment: Arc<Deployment>,
    requests_by_status: Vec<(u16, u64)>,
    tokens: TokenCounts,
}

impl Shared {
    /// Shared state for a new configuration.
    pub fn new(config: PluginConfig, metrics: Metrics, scheduler: Scheduler) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        Shared {
            config,
            instance_id: format!("native-{}-{nanos:x}", std::process::id()),
            state: RwLock::new(None),
            usage: Mutex::new(UsageQueue::default()),
            stopped: AtomicBool::new(false),
            metrics,
            pending: Mutex::new(PendingCounts::default()),
            pending_dirty: AtomicBool::new(false),
            scheduler,
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

    /// Records how an exchange ended: counters (handed to Envoy at the next flush), the
    /// latency histograms, and the usage record for the control plane's next batch.
    pub fn record_outcome(&self, filter: envoy::Filter, outcome: Outcome<'_>) {
        match outcome {
            Outcome::Answered { status } => {
                let mut pending = self.pending();
                *pending.gateway_answers.entry(status).or_insert(0) += 1;
            }
            Outcome::Upstream(upstream) => {
                let deployment = &upstream.plan.deployment;
                {
                    let mut pending = self.pending();
                    if upstream.response_too_large {
                        pending.responses_too_large += 1;
                    }
                    let counts = pending
                        .deployments
                        .entry(Arc::as_ptr(deployment) as usize)
                        .or_insert_with(|| DeploymentCounts {
                            deployment: deployment.clone(),
                            requests_by_status: Vec::new(),
                            tokens: TokenCounts::default(),
                        });
                    match counts
                        .requests_by_status
                        .iter_mut()
                        .find(|(status, _)| *status == upstream.status)
                    {
                        Some((_, count)) => *count += 1,
                        None => counts.requests_by_status.push((upstream.status, 1)),
                    }
                    counts.tokens.add(upstream.token_counts());
                }
                self.metrics.record_latency(
                    filter,
                    &deployment.stat_model,
                    &deployment.stat_provider,
                    upstream.upstream_ms,
                    upstream.first_byte_ms,
                );
                self.queue_usage(upstream.record);
            }
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, PendingCounts> {
        self.pending_dirty.store(true, Ordering::Relaxed);
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks Envoy's main thread to flush the counters, if any were added (any thread).
    pub fn schedule_stats_flush(&self) {
        if self.pending_dirty.swap(false, Ordering::Relaxed) {
            self.scheduler.commit();
        }
    }

    /// Hands the added-up counters to Envoy (main thread, in the scheduled hook).
    pub fn flush_stats(&self, config: envoy::Config) {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for counts in pending.deployments.values() {
            let (model, provider) = (
                &counts.deployment.stat_model,
                &counts.deployment.stat_provider,
            );
            for (status, count) in &counts.requests_by_status {
                self.metrics
                    .count_requests(config, model, provider, *status, *count);
            }
            self.metrics
                .count_tokens(config, model, provider, counts.tokens);
        }
        for (status, count) in &pending.gateway_answers {
            self.metrics.count_requests(
                config,
                metrics::NO_MODEL,
                metrics::GATEWAY_PROVIDER,
                *status,
                *count,
            );
        }
        self.metrics
            .count_usage_dropped(config, pending.usage_records_dropped);
        self.metrics
            .count_responses_too_large(config, pending.responses_too_large);
    }

    fn queue_usage(&self, record: proto::UsageRecord) {
        let dropped = self
            .usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
        if dropped > 0 {
            self.pending().usage_records_dropped += u64::try_from(dropped).unwrap_or(u64::MAX);
        }
    }

    /// The queued usage records, for the control-plane thread.
    pub fn usage(&self) -> std::sync::MutexGuard<'_, UsageQueue> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the control-plane thread to end, and lets the scheduler go (the configuration
    /// is being destroyed).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.scheduler.delete();
    }

    /// Whether [`Self::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}
