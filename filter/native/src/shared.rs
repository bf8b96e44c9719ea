//! What every worker's filters share with the control-plane thread: the newest snapshot, the
//! queue of usage records, the quota book, and the counters not yet handed to Envoy. One
//! [`Shared`] serves every filter configuration of the same bytes (`registry.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tollgate_core::exchange::Outcome;
use tollgate_core::snapshot::{Deployment, UpdateError, UpdateKind};
use tollgate_core::usage::{TokenCounts, UsageQueue};
use tollgate_core::{metrics, proto, PluginConfig, State};

use tollgate_core::ratelimit::{Admission, Need, QuotaBook};

use crate::envoy::{self, Metrics, RequestWakers, Scheduler};

/// The state of one configuration's bytes, shared by every filter configuration Envoy made
/// of them (the gateway listener's and the attempts listener's, and a listener's next one
/// while the last drains).
pub struct Shared {
    /// Static configuration.
    pub config: PluginConfig,
    /// Tells this module instance's stream apart from other Envoys' and configurations'.
    pub instance_id: String,
    state: RwLock<Option<Arc<State>>>,
    usage: Mutex<UsageQueue>,
    stopped: AtomicBool,
    /// Wakes the control-plane thread from its wait between reconnects when it must stop.
    stop_signal: tokio::sync::Notify,
    /// Counter increments not yet handed to Envoy.
    pending: Mutex<PendingCounts>,
    /// Whether [`Self::pending`] holds anything (read without the lock on every tick).
    pending_dirty: AtomicBool,
    /// The schedulers of the live filter configurations, oldest first, by their number. The
    /// newest has Envoy's main thread flush the counters: a stat of a name is one stat,
    /// whichever configuration increments it, and lives while a configuration that looked it
    /// up does, so a replaced listener's (older) configuration takes no count with it.
    flushers: Mutex<Vec<(u64, Scheduler)>>,
    /// The module's rate-limit leases, shared by every worker.
    quota: Mutex<QuotaBook>,
    /// The requests waiting for a lease.
    pub wakers: RequestWakers,
    /// Tells the control-plane thread that the quota book has asks to send.
    pub quota_asks: tokio::sync::Notify,
    /// Counts the grants applied (and waits ended), so that a request that starts waiting
    /// just as a grant comes sees it did (the grant's wake-up went before it was waiting).
    quota_generation: std::sync::atomic::AtomicU64,
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
    snapshots_installed: u64,
    snapshot_deltas_installed: u64,
    snapshot_resyncs: u64,
}

/// What [`Shared::install`] made of a control-plane message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// Every worker now serves this version: acknowledge it.
    Version(u64),
    /// The message carries no snapshot or delta.
    Nothing,
    /// A delta did not apply onto the version held, or the message did not decode: the
    /// stream must be dropped (the next one starts with a full snapshot).
    NeedsSnapshot,
}

struct DeploymentCounts {
    deployment: Arc<Deployment>,
    requests_by_status: Vec<(u16, u64)>,
    tokens: TokenCounts,
}

impl Shared {
    /// Shared state for a new configuration; no filter configuration flushes its counters
    /// yet ([`Self::attach_flusher`]).
    pub fn new(config: PluginConfig) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        Shared {
            config,
            instance_id: format!("native-{}-{nanos:x}", std::process::id()),
            state: RwLock::new(None),
            usage: Mutex::new(UsageQueue::default()),
            stopped: AtomicBool::new(false),
            stop_signal: tokio::sync::Notify::new(),
            pending: Mutex::new(PendingCounts::default()),
            pending_dirty: AtomicBool::new(false),
            flushers: Mutex::new(Vec::new()),
            quota: Mutex::new(QuotaBook::new()),
            wakers: RequestWakers::default(),
            quota_asks: tokio::sync::Notify::new(),
            quota_generation: std::sync::atomic::AtomicU64::new(0),
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

    /// Applies a control-plane message (a full snapshot or a delta) for every worker.
    /// Requests in flight finish on the state they started with: a delta changes a copy
    /// that shares every unchanged key and deployment with it.
    pub fn install(&self, message: &[u8]) -> Installed {
        let mut state = self.state();
        let applied = match State::update(&mut state, message) {
            Ok(Some(applied)) => applied,
            Ok(None) => return Installed::Nothing,
            Err(error) => {
                match &error {
                    UpdateError::Decode(_) => {
                        envoy::log_error(&format!("tollgate: {error}; getting a full snapshot"))
                    }
                    UpdateError::Refused(_) => {
                        envoy::log_warn(&format!("tollgate: {error}; getting a full snapshot"))
                    }
                }
                self.pending().snapshot_resyncs += 1;
                return Installed::NeedsSnapshot;
            }
        };
        if applied.kind.leaves_version() {
            for problem in &applied.problems {
                envoy::log_warn(&format!("tollgate: {problem}"));
            }
            *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
            // Tokens leave the version as it is: nothing to acknowledge.
            return Installed::Nothing;
        }
        for problem in &applied.problems {
            envoy::log_warn(&format!(
                "tollgate: snapshot {}: {problem}",
                applied.version
            ));
        }
        let models = state.as_ref().map_or(0, |state| state.model_names().len());
        let (what, keys) = match applied.kind {
            UpdateKind::Snapshot => ("installed snapshot", "keys"),
            UpdateKind::Delta | UpdateKind::Tokens | UpdateKind::Cooldowns => {
                ("applied delta to snapshot", "keys changed")
            }
        };
        envoy::log_info(&format!(
            "tollgate: {} {what} {} ({models} models, {} {keys})",
            self.instance_id, applied.version, applied.keys,
        ));
        let previous = std::mem::replace(
            &mut *self.state.write().unwrap_or_else(PoisonError::into_inner),
            state,
        );
        // The old state is freed here, outside the lock, if no request holds it.
        drop(previous);
        let mut pending = self.pending();
        match applied.kind {
            UpdateKind::Snapshot => pending.snapshots_installed += 1,
            UpdateKind::Delta | UpdateKind::Tokens | UpdateKind::Cooldowns => {
                pending.snapshot_deltas_installed += 1
            }
        }
        Installed::Version(applied.version)
    }

    /// Records how an exchange ended: counters (handed to Envoy at the next flush), the
    /// latency histograms (`stats`: the ids of the filter's own configuration), and the
    /// usage record for the control plane's next batch.
    pub fn record_outcome(&self, filter: envoy::Filter, stats: &Metrics, outcome: Outcome<'_>) {
        match outcome {
            Outcome::Answered { status, record } => {
                {
                    let mut pending = self.pending();
                    *pending.gateway_answers.entry(status).or_insert(0) += 1;
                }
                if let Some(record) = record {
                    self.queue_usage(record);
                }
            }
            Outcome::Relayed(relayed) => {
                if !relayed.quota.is_empty() {
                    let mut quota = self.quota();
                    relayed.settle_quota(&mut quota, envoy::now_ms());
                    if quota.has_asks() {
                        self.quota_asks.notify_one();
                    }
                }
            }
            Outcome::Upstream(upstream) => {
                if !upstream.quota.is_empty() {
                    let mut quota = self.quota();
                    upstream.settle_quota(&mut quota, envoy::now_ms());
                    if quota.has_asks() {
                        self.quota_asks.notify_one();
                    }
                }
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
                stats.record_latency(
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

    /// Asks Envoy's main thread to flush the counters, if any were added and a filter
    /// configuration is there to flush them (any thread).
    pub fn schedule_stats_flush(&self) {
        let flushers = self.flushers();
        if let Some((_, scheduler)) = flushers.last() {
            if self.pending_dirty.swap(false, Ordering::Relaxed) {
                scheduler.commit();
            }
        }
    }

    fn flushers(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Scheduler)>> {
        self.flushers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Filter configuration `id` is live: its scheduler flushes the counters from now on.
    pub fn attach_flusher(&self, id: u64, scheduler: Scheduler) {
        self.flushers().push((id, scheduler));
    }

    /// Filter configuration `id` is being destroyed: its scheduler is deleted, and the next
    /// tick flushes through another one if it was the flusher (an event committed to it is
    /// dropped with the configuration; the counters it was to hand over are still pending).
    pub fn detach_flusher(&self, id: u64) {
        let mut flushers = self.flushers();
        flushers.retain(|(flusher, scheduler)| {
            if *flusher == id {
                scheduler.delete();
            }
            *flusher != id
        });
        drop(flushers);
        self.pending_dirty.store(true, Ordering::Relaxed);
    }

    /// Hands the added-up counters to Envoy (main thread, in the scheduled hook of
    /// `config`, whose stat ids `stats` holds).
    pub fn flush_stats(&self, config: envoy::Config, stats: &Metrics) {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for counts in pending.deployments.values() {
            let (model, provider) = (
                &counts.deployment.stat_model,
                &counts.deployment.stat_provider,
            );
            for (status, count) in &counts.requests_by_status {
                stats.count_requests(config, model, provider, *status, *count);
            }
            stats.count_tokens(config, model, provider, counts.tokens);
        }
        for (status, count) in &pending.gateway_answers {
            stats.count_requests(
                config,
                metrics::NO_MODEL,
                metrics::GATEWAY_PROVIDER,
                *status,
                *count,
            );
        }
        stats.count_usage_dropped(config, pending.usage_records_dropped);
        stats.count_responses_too_large(config, pending.responses_too_large);
        stats.count_snapshot_updates(
            config,
            pending.snapshots_installed,
            pending.snapshot_deltas_installed,
            pending.snapshot_resyncs,
        );
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

    /// What `scope`/`id` has spent in its budget window (the spend book is in the usage
    /// queue: charges leave it as the control plane's pushed spend counts them).
    pub fn spend(&self, scope: proto::BudgetScope, id: &str, now_ms: u64) -> f64 {
        self.usage().spend.spend(scope, id, now_ms)
    }

    /// The quota book (workers admit from it, the control-plane thread applies grants).
    pub fn quota(&self) -> std::sync::MutexGuard<'_, QuotaBook> {
        self.quota.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the authority's grant and wakes the requests waiting for one.
    pub fn apply_grant(&self, grant: &proto::QuotaGrant) {
        self.quota().apply(grant, envoy::now_ms());
        self.quota_woken();
    }

    /// How many times waiting requests were woken.
    pub fn quota_generation(&self) -> u64 {
        self.quota_generation.load(Ordering::Acquire)
    }

    fn quota_woken(&self) {
        self.quota_generation.fetch_add(1, Ordering::AcqRel);
        self.wakers.wake_all();
    }

    /// Whether a stream to the authority is up; a lost one ends the waits (the requests
    /// are then decided here alone).
    pub fn set_quota_connected(&self, connected: bool) {
        self.quota().set_connected(connected);
        if !connected {
            self.quota_woken();
        }
    }

    /// Periodic upkeep of the quota book: waits the authority left too long end.
    pub fn quota_tick(&self) {
        if self.quota().tick(envoy::now_ms()) {
            self.quota_woken();
        }
    }

    /// The queued usage records, for the control-plane thread.
    pub fn usage(&self) -> std::sync::MutexGuard<'_, UsageQueue> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the control-plane thread to end (the last filter configuration of these bytes
    /// is being destroyed, or the thread did not start). It notices within a tick, or at
    /// once when it waits to reconnect.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        // A permit, kept if the thread is not waiting now.
        self.stop_signal.notify_one();
    }

    /// Waits until [`Self::stop`] is called (control-plane thread; one waiter).
    pub async fn stop_requested(&self) {
        if !self.stopped() {
            self.stop_signal.notified().await;
        }
    }

    /// Whether [`Self::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

impl crate::envoy::SpendSource for Shared {
    fn spend(&self, scope: proto::BudgetScope, id: &str, now_ms: u64) -> f64 {
        Shared::spend(self, scope, id, now_ms)
    }

    fn admit(&self, needs: &[Need], now_ms: u64) -> Admission {
        let mut quota = self.quota();
        let admission = quota.admit(needs, now_ms);
        if quota.has_asks() {
            self.quota_asks.notify_one();
        }
        admission
    }
}
