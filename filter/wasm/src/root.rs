//! Per-VM root context: the control-plane stream, the current snapshot, usage batching and
//! the metric-id cache.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, MetricType};
use tollgate_core::channel::{self, FilterToken};
use tollgate_core::exchange::Outcome;
use tollgate_core::proto::{self, filter_message};
use tollgate_core::ratelimit::QuotaBook;
use tollgate_core::snapshot::{Applied, Deployment, Kept, KeptUpdates, UpdateKind};
use tollgate_core::usage::{RecordIds, TokenCounts, UsageQueue};
use tollgate_core::{metrics, PluginConfig, State};

use crate::host;
use crate::http::HttpExchange;

/// How often the root context wakes up to flush usage and check the stream.
const TICK: Duration = Duration::from_millis(250);
/// Longest wait between reconnect attempts while the control plane is away.
const MAX_RECONNECT_DELAY_MS: u64 = 5_000;
/// gRPC status of a stream the control plane refused for its filter token.
const GRPC_UNAUTHENTICATED: u32 = 16;

/// What the root context shares with the HTTP contexts of its VM.
pub struct VmShared {
    /// Newest snapshot; `None` until the first arrives (or, in a VM that has not served a
    /// request yet, until it does).
    pub state: Option<Arc<State>>,
    /// Whether this VM has served a request. Envoy also runs a VM on its main thread, which
    /// never does: until a VM serves, it keeps the newest snapshot and the deltas after it
    /// as the bytes they came in ([`Self::kept`]), a fraction of the decoded state's size.
    serving: bool,
    /// The control-plane messages kept while the VM is not serving.
    kept: KeptUpdates,
    /// A delta did not apply (or a message did not decode): the stream must be dropped and
    /// reopened, which brings a full snapshot.
    needs_snapshot: bool,
    /// Static plugin configuration.
    pub config: PluginConfig,
    usage: UsageQueue,
    /// Ids of this VM's usage records.
    pub record_ids: RecordIds,
    metric_ids: HashMap<String, u32>,
    /// Metric ids per deployment id, so a request formats no stat name.
    deployment_metrics: HashMap<String, DeploymentMetrics>,
    /// Counter increments not yet handed to the host, by metric id. Adding them up here and
    /// flushing on the tick turns three host calls per request into a few per tick.
    pending_counts: HashMap<u32, u64>,
    /// This VM's rate-limit leases.
    pub quota: QuotaBook,
    /// Requests waiting for a lease: their context ids and exchanges.
    quota_waiters: Vec<(u32, Weak<RefCell<HttpExchange>>)>,
    /// The root context's id and its stream, so that a request's context can send the
    /// asks it made on the root's stream at once.
    root_context_id: u32,
    stream: Option<u32>,
}

/// The metric ids of one deployment (defined on its first request in this VM).
struct DeploymentMetrics {
    stat_model: String,
    stat_provider: String,
    requests_by_status: Vec<(u16, Option<u32>)>,
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    usage_missing: Option<u32>,
    upstream_latency: Option<u32>,
    time_to_first_byte: Option<u32>,
}

impl DeploymentMetrics {
    fn define(deployment: &Deployment) -> Self {
        let (model, provider) = (&deployment.stat_model, &deployment.stat_provider);
        let counter = |name: String| host::define_metric(MetricType::Counter, &name);
        let histogram = |name: String| host::define_metric(MetricType::Histogram, &name);
        DeploymentMetrics {
            stat_model: model.clone(),
            stat_provider: provider.clone(),
            requests_by_status: Vec::new(),
            prompt_tokens: counter(metrics::prompt_tokens_counter(model, provider)),
            completion_tokens: counter(metrics::completion_tokens_counter(model, provider)),
            usage_missing: counter(metrics::usage_missing_counter(model, provider)),
            upstream_latency: histogram(metrics::upstream_latency_histogram(model, provider)),
            time_to_first_byte: histogram(metrics::time_to_first_byte_histogram(model, provider)),
        }
    }
}

impl VmShared {
    /// Marks the VM as serving, building the state from the messages it kept as bytes until
    /// now.
    pub fn start_serving(&mut self, vm_id: &str) {
        if self.serving {
            return;
        }
        self.serving = true;
        let (state, applied, error) = std::mem::take(&mut self.kept).into_state();
        self.state = state;
        self.forget_removed_deployments();
        for done in &applied {
            self.log_applied(done, vm_id);
        }
        if let Some(error) = error {
            log::error!("tollgate: vm {vm_id}: {error}; getting a full snapshot");
            self.needs_snapshot = true;
        }
    }

    /// Metric ids of deployments the state no longer has would otherwise stay for the VM's
    /// life: a control plane that churns deployments must not grow it.
    fn forget_removed_deployments(&mut self) {
        if let Some(state) = &self.state {
            forget_removed_deployments(&mut self.deployment_metrics, state);
        }
    }

    /// The snapshot version this VM holds (decoded or kept); 0 for none.
    fn held_version(&self) -> u64 {
        if self.serving {
            self.state.as_ref().map_or(0, |state| state.version)
        } else {
            self.kept.version()
        }
    }

    /// Takes a control-plane message: applies its snapshot or delta in a serving VM, keeps
    /// its bytes in one that is not. Returns the version now held when the message changed
    /// it. A full snapshot replaces the old state only after the old one is let go, and its
    /// keys are never decoded all at once: a VM's linear memory only grows, so this
    /// function's peak is what the VM keeps. A delta changes the state in place when no
    /// request holds it.
    fn take_update(&mut self, message: Vec<u8>, vm_id: &str) -> Option<u64> {
        if !self.serving {
            return match self.kept.keep(message) {
                Ok(Kept::Held { kind, version }) => {
                    self.count_update(kind);
                    Some(version)
                }
                Ok(Kept::NoUpdate) => None,
                Ok(Kept::NeedsSnapshot) => {
                    log::info!("tollgate: vm {vm_id}: the kept deltas do not add up; getting a full snapshot");
                    self.needs_snapshot = true;
                    None
                }
                Err(error) => {
                    log::error!("tollgate: vm {vm_id}: undecodable control-plane message: {error}; getting a full snapshot");
                    self.needs_snapshot = true;
                    None
                }
            };
        }
        match State::update(&mut self.state, &message) {
            // Tokens leave the version as it is: nothing to acknowledge.
            Ok(Some(applied)) if applied.kind.leaves_version() => {
                for problem in &applied.problems {
                    log::warn!("tollgate: vm {vm_id}: {problem}");
                }
                self.log_applied(&applied, vm_id);
                None
            }
            Ok(Some(applied)) => {
                drop(message);
                self.forget_removed_deployments();
                self.log_applied(&applied, vm_id);
                self.count_update(applied.kind);
                Some(applied.version)
            }
            Ok(None) => None,
            Err(error) => {
                log::warn!("tollgate: vm {vm_id}: {error}; getting a full snapshot");
                self.needs_snapshot = true;
                None
            }
        }
    }

    fn count_update(&mut self, kind: UpdateKind) {
        let name = match kind {
            UpdateKind::Snapshot => metrics::SNAPSHOTS_INSTALLED,
            UpdateKind::Delta => metrics::SNAPSHOT_DELTAS_INSTALLED,
            UpdateKind::Tokens | UpdateKind::Cooldowns => return,
        };
        self.count(name, 1);
    }

    fn log_applied(&self, applied: &Applied, vm_id: &str) {
        for problem in &applied.problems {
            log::warn!("tollgate: snapshot {}: {problem}", applied.version);
        }
        let models = self
            .state
            .as_ref()
            .map_or(0, |state| state.model_names().len());
        match applied.kind {
            UpdateKind::Snapshot => log::info!(
                "tollgate: vm {vm_id} installed snapshot {} ({models} models, {} keys; linear memory {} KiB)",
                applied.version,
                applied.keys,
                linear_memory_kib()
            ),
            UpdateKind::Delta => log::info!(
                "tollgate: vm {vm_id} applied delta to snapshot {} ({models} models, {} keys changed; linear memory {} KiB)",
                applied.version,
                applied.keys,
                linear_memory_kib()
            ),
            UpdateKind::Tokens => log::debug!(
                "tollgate: vm {vm_id} holds {} provider access tokens",
                applied.keys
            ),
            UpdateKind::Cooldowns => log::info!(
                "tollgate: vm {vm_id}: the control plane cools down {} deployments",
                applied.keys
            ),
        }
    }

    /// What `scope`/`id` has spent in its budget window, as this VM knows it.
    pub fn spend(&self, scope: proto::BudgetScope, id: &str, now_ms: u64) -> f64 {
        self.usage.spend.spend(scope, id, now_ms)
    }

    /// Sends the asks of the quota book on the stream. `from` is the context making the call
    /// when it is a request's, not the root's: the stream is the root's, so the host calls
    /// act on the root while sending.
    pub fn send_quota_asks(&mut self, from: Option<u32>) {
        if !self.quota.has_asks() {
            return;
        }
        let Some(token) = self.stream else {
            self.quota.set_connected(false);
            return;
        };
        let Some(request) = self.quota.take_request() else {
            return;
        };
        if let Some(_request_context) = from {
            host::set_effective_context(self.root_context_id);
        }
        let sent = host::send_stream_message(token, &proto::quota_message(request));
        if let Some(request_context) = from {
            host::set_effective_context(request_context);
        }
        if !sent {
            self.quota.set_connected(false);
        }
    }

    /// Remembers a request that waits for a lease.
    pub fn wait_for_quota(&mut self, context_id: u32, exchange: &Rc<RefCell<HttpExchange>>) {
        self.quota_waiters
            .push((context_id, Rc::downgrade(exchange)));
    }

    /// Records how an exchange ended: metrics, and for an upstream request its usage record.
    pub fn record_outcome(&mut self, outcome: Outcome<'_>) {
        match outcome {
            Outcome::Answered { status, record } => {
                self.count_gateway_answer(status);
                if let Some(record) = record {
                    self.queue_usage(record);
                }
            }
            Outcome::Relayed(relayed) => relayed.settle_quota(&mut self.quota, host::now_ms()),
            Outcome::Upstream(upstream) => {
                upstream.settle_quota(&mut self.quota, host::now_ms());
                if upstream.response_too_large {
                    self.count(metrics::RESPONSES_TOO_LARGE, 1);
                }
                self.record_upstream(
                    &upstream.plan.deployment,
                    upstream.status,
                    upstream.token_counts(),
                    upstream.upstream_ms,
                    upstream.first_byte_ms,
                );
                self.queue_usage(upstream.record);
            }
        }
    }

    /// Records one finished upstream request: counters (added up until the next tick) and
    /// latency histograms.
    fn record_upstream(
        &mut self,
        deployment: &Deployment,
        status: u16,
        tokens: TokenCounts,
        upstream_ms: u64,
        first_byte_ms: Option<u64>,
    ) {
        let Some(ids) = self.deployment_metrics(deployment) else {
            return;
        };
        let requests = match ids.requests_by_status.iter().find(|(s, _)| *s == status) {
            Some((_, id)) => *id,
            None => {
                let id = host::define_metric(
                    MetricType::Counter,
                    &metrics::requests_counter(&ids.stat_model, &ids.stat_provider, status),
                );
                ids.requests_by_status.push((status, id));
                id
            }
        };
        let (prompt_tokens, completion_tokens, usage_missing) =
            (ids.prompt_tokens, ids.completion_tokens, ids.usage_missing);
        let (upstream_latency, time_to_first_byte) = (ids.upstream_latency, ids.time_to_first_byte);
        self.add_count(requests, 1);
        self.add_count(prompt_tokens, tokens.prompt);
        self.add_count(completion_tokens, tokens.completion);
        self.add_count(usage_missing, tokens.usage_missing);
        if let Some(id) = upstream_latency {
            host::record_metric(id, upstream_ms);
        }
        if let (Some(id), Some(value)) = (time_to_first_byte, first_byte_ms) {
            host::record_metric(id, value);
        }
    }

    /// Adds to a counter; the host sees the sum at the next tick.
    fn add_count(&mut self, id: Option<u32>, value: u64) {
        if let (Some(id), true) = (id, value > 0) {
            *self.pending_counts.entry(id).or_insert(0) += value;
        }
    }

    /// Counts an answer the gateway gave itself (refused or local).
    fn count_gateway_answer(&mut self, status: u16) {
        let name = metrics::requests_counter(metrics::NO_MODEL, metrics::GATEWAY_PROVIDER, status);
        self.count(&name, 1);
    }

    /// The deployment's metric ids, defined on first use and again when its stat names
    /// change (a new snapshot renamed it). Looked up by `&str`: no allocation per request.
    fn deployment_metrics(&mut self, deployment: &Deployment) -> Option<&mut DeploymentMetrics> {
        let current = self
            .deployment_metrics
            .get(&deployment.id)
            .is_some_and(|ids| {
                ids.stat_model == deployment.stat_model
                    && ids.stat_provider == deployment.stat_provider
            });
        if !current {
            self.deployment_metrics
                .insert(deployment.id.clone(), DeploymentMetrics::define(deployment));
        }
        self.deployment_metrics.get_mut(&deployment.id)
    }

    /// Hands the counter increments added up since the last tick to the host.
    fn flush_counts(&mut self) {
        for (id, value) in self.pending_counts.drain() {
            host::increment_metric(id, value);
        }
    }

    /// Queues a usage record for the control plane.
    fn queue_usage(&mut self, record: proto::UsageRecord) {
        let dropped = self.usage.push(record);
        self.count(
            metrics::USAGE_RECORDS_DROPPED,
            u64::try_from(dropped).unwrap_or(u64::MAX),
        );
    }

    fn metric(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.metric_ids.get(name) {
            return Some(*id);
        }
        let id = host::define_metric(kind, name)?;
        self.metric_ids.insert(name.to_string(), id);
        Some(id)
    }

    /// Adds to a counter, defining it on first use; the host sees the sum at the next tick.
    pub fn count(&mut self, name: &str, value: u64) {
        if value == 0 {
            return;
        }
        let id = self.metric(MetricType::Counter, name);
        self.add_count(id, value);
    }
}

/// The root context of one VM.
pub struct TollgateRoot {
    context_id: u32,
    /// Tells this VM's stream apart from its siblings' (every VM's root context id is 1).
    vm_id: String,
    shared: Rc<RefCell<VmShared>>,
    stream: Option<u32>,
    /// Whether the stream has delivered a message since it was opened (a stream the host
    /// opens and the server refuses closes without one).
    stream_healthy: bool,
    /// Earliest time of the next reconnect attempt, and the current backoff.
    next_attempt_ms: u64,
    backoff_ms: u64,
    /// What the stream presents to the control plane, read from the VM's environment.
    filter_token: Option<FilterToken>,
    /// The gRPC status of the last refused stream that was logged, so that a refusal that
    /// repeats at every retry (a wrong token, a bad certificate) is logged once.
    logged_refusal: Option<u32>,
}

impl TollgateRoot {
    /// A root context before configuration.
    pub fn new(context_id: u32) -> Self {
        TollgateRoot {
            context_id,
            vm_id: String::new(),
            shared: Rc::new(RefCell::new(VmShared {
                state: None,
                serving: false,
                kept: KeptUpdates::default(),
                needs_snapshot: false,
                config: PluginConfig::default(),
                usage: UsageQueue::default(),
                record_ids: RecordIds::new(random_seed()),
                metric_ids: HashMap::new(),
                deployment_metrics: HashMap::new(),
                pending_counts: HashMap::new(),
                quota: QuotaBook::new(),
                quota_waiters: Vec::new(),
                root_context_id: context_id,
                stream: None,
            })),
            stream: None,
            stream_healthy: false,
            next_attempt_ms: 0,
            backoff_ms: 0,
            filter_token: None,
            logged_refusal: None,
        }
    }

    fn base_delay_ms(&self) -> u64 {
        self.shared.borrow().config.reconnect_ms.max(50)
    }

    fn connect(&mut self) {
        let now = host::now_ms();
        if now < self.next_attempt_ms {
            return;
        }
        // Exponential backoff, reset once a stream delivers a message.
        self.backoff_ms = if self.backoff_ms == 0 {
            self.base_delay_ms()
        } else {
            (self.backoff_ms * 2).min(MAX_RECONNECT_DELAY_MS)
        };
        self.next_attempt_ms = now + self.backoff_ms;
        let (cluster, hello) = {
            let shared = self.shared.borrow();
            let hello = proto::FilterMessage {
                kind: Some(filter_message::Kind::Hello(proto::Hello {
                    node_id: shared.config.node_id.clone(),
                    vm_id: self.vm_id.clone(),
                    snapshot_version: shared.held_version(),
                    filter_version: env!("CARGO_PKG_VERSION").to_string(),
                })),
            };
            (
                shared.config.control_plane_cluster.clone(),
                hello.encode_to_vec(),
            )
        };
        let Some(token) = host::open_stream(&cluster, self.filter_token.as_ref()) else {
            return;
        };
        if host::send_stream_message(token, &hello) {
            self.stream = Some(token);
            self.stream_healthy = false;
            let mut shared = self.shared.borrow_mut();
            // Batches the last stream sent but the control plane did not acknowledge go
            // again on this one.
            shared.usage.stream_lost();
            shared.stream = Some(token);
            shared.quota.set_connected(true);
        }
    }

    /// Sends what the usage queue has for the stream: unacknowledged batches after a
    /// reconnect, then new ones.
    fn flush_usage(&mut self) {
        let Some(token) = self.stream else { return };
        let mut shared = self.shared.borrow_mut();
        while let Some(message) = shared.usage.next_message() {
            if !host::send_stream_message(token, message) {
                shared.usage.stream_lost();
                shared.stream = None;
                shared.quota.set_connected(false);
                self.stream = None;
                drop(shared);
                self.wake_quota_waiters();
                return;
            }
        }
    }

    /// Takes a control-plane message and acknowledges the version it leads to; drops the
    /// stream when the VM needs a full snapshot instead (the next stream starts with one).
    fn receive(&mut self, message: Vec<u8>) {
        if let Some(ack) = proto::acknowledged_batches(&message) {
            self.shared
                .borrow_mut()
                .usage
                .acknowledge(&ack.batch_ids, ack.ledger_seq);
            // Batches wait for room in flight (UsageQueue::MAX_IN_FLIGHT): there is some.
            self.flush_usage();
            return;
        }
        if let Some(update) = proto::spend_update(&message) {
            self.shared.borrow_mut().usage.spend.apply(&update);
            return;
        }
        if let Some(grant) = proto::quota_grant(&message) {
            self.shared.borrow_mut().quota.apply(&grant, host::now_ms());
            self.wake_quota_waiters();
            return;
        }
        let version = self.shared.borrow_mut().take_update(message, &self.vm_id);
        if let (Some(version), Some(token)) = (version, self.stream) {
            // A message that changed the state proves the stream works: reset the backoff.
            self.backoff_ms = 0;
            self.next_attempt_ms = 0;
            let ack = proto::FilterMessage {
                kind: Some(filter_message::Kind::Ack(proto::SnapshotAck { version })),
            };
            host::send_stream_message(token, &ack.encode_to_vec());
        }
        self.resync_if_needed();
    }

    /// Lets every request waiting for a lease try again: each is admitted (and resumed),
    /// refused, or waits on. Then sends what they asked for.
    fn wake_quota_waiters(&mut self) {
        let waiters = std::mem::take(&mut self.shared.borrow_mut().quota_waiters);
        if waiters.is_empty() {
            return;
        }
        let mut still = Vec::new();
        for (context_id, exchange) in waiters {
            // A request whose client left is gone: nothing to resume.
            let Some(exchange) = exchange.upgrade() else {
                continue;
            };
            host::set_effective_context(context_id);
            let mut http = exchange.borrow_mut();
            if http.on_quota(context_id) {
                host::resume_request();
            }
            if http.awaits_quota() {
                still.push((context_id, Rc::downgrade(&exchange)));
            }
        }
        host::set_effective_context(self.context_id);
        let mut shared = self.shared.borrow_mut();
        still.append(&mut shared.quota_waiters);
        shared.quota_waiters = still;
        shared.send_quota_asks(None);
    }

    /// Drops the stream when the VM needs a full snapshot; `on_tick` opens the next one.
    fn resync_if_needed(&mut self) {
        let mut shared = self.shared.borrow_mut();
        if !shared.needs_snapshot {
            return;
        }
        shared.needs_snapshot = false;
        shared.count(metrics::SNAPSHOT_RESYNCS, 1);
        drop(shared);
        if let Some(token) = self.stream.take() {
            host::cancel_stream(token);
        }
        self.stream_healthy = false;
    }
}

/// Random bits for the usage-record ids (WASI `random_get`); a VM whose host gives none
/// still numbers its records, from the clock.
/// The VM's routing state (routing book, attempts ledger), shared by every root context of
/// the VM: the gateway's listener and the attempts listener may run the filter with
/// separate root contexts, and an attempt must find the entry its relaying side opened.
/// A VM runs on one thread, so the lock is never contended.
pub fn vm_routing() -> Arc<std::sync::Mutex<tollgate_core::routing::attempts::Routing>> {
    static ROUTING: std::sync::OnceLock<
        Arc<std::sync::Mutex<tollgate_core::routing::attempts::Routing>>,
    > = std::sync::OnceLock::new();
    Arc::clone(ROUTING.get_or_init(|| {
        Arc::new(std::sync::Mutex::new(
            tollgate_core::routing::attempts::Routing::new(random_seed(), host::now_ms()),
        ))
    }))
}

fn random_seed() -> u128 {
    let mut seed = [0u8; 16];
    if let Err(error) = getrandom::getrandom(&mut seed) {
        log::warn!("tollgate: no random seed for usage ids ({error}); using the clock");
        return host::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
    }
    u128::from_le_bytes(seed)
}

/// Drops the entries of deployments `state` no longer has (by deployment id).
fn forget_removed_deployments<T>(per_deployment: &mut HashMap<String, T>, state: &State) {
    if per_deployment.is_empty() {
        return;
    }
    let current: std::collections::HashSet<&str> = state.deployment_ids().collect();
    per_deployment.retain(|id, _| current.contains(id.as_str()));
}

/// The filter token from the environment variable the configuration names (Envoy passes it
/// into the VM when `vm_config.environment_variables.host_env_keys` lists it). A missing or
/// unusable token is logged, not fatal: the stream then goes without one, and a control
/// plane that requires a token refuses it (and says so in its log).
fn read_filter_token(config: &PluginConfig) -> Option<FilterToken> {
    if config.control_plane_tls.is_some() {
        log::warn!(
            "tollgate: control_plane_tls is for the native module and is ignored here: the Wasm \
             filter's stream gets TLS from the transport socket of cluster {}",
            config.control_plane_cluster
        );
    }
    let variable = &config.control_plane_token_env;
    match channel::filter_token(variable, |name| std::env::var(name).ok()) {
        Ok(Some(token)) => Some(token),
        Ok(None) => {
            log::info!(
                "tollgate: no filter token in {variable} (list it in vm_config.environment_variables.host_env_keys); \
                 connecting to the control plane without one"
            );
            None
        }
        Err(error) => {
            log::error!("tollgate: {error}; connecting to the control plane without a token");
            None
        }
    }
}

/// Size of this VM's linear memory (it never shrinks: the high-water mark of the heap).
fn linear_memory_kib() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size::<0>() * 64
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

impl Context for TollgateRoot {
    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        if self.stream != Some(token_id) {
            return;
        }
        if !self.stream_healthy {
            log::info!("tollgate: vm {} connected to the control plane", self.vm_id);
            self.stream_healthy = true;
            self.logged_refusal = None;
        }
        if let Some(message) = host::grpc_message(message_size) {
            self.receive(message);
        }
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if self.stream == Some(token_id) {
            // Log the loss of a working stream once, not every failed retry during an outage.
            if self.stream_healthy {
                log::warn!(
                    "tollgate: vm {} lost the control-plane stream (grpc status {status_code}); serving the last snapshot and reconnecting",
                    self.vm_id
                );
            } else if self.logged_refusal != Some(status_code) {
                self.logged_refusal = Some(status_code);
                let hint = if status_code == GRPC_UNAUTHENTICATED {
                    format!(
                        ": the control plane refused this filter's token; check {}",
                        self.shared.borrow().config.control_plane_token_env
                    )
                } else {
                    String::new()
                };
                log::warn!(
                    "tollgate: vm {} cannot open the control-plane stream (grpc status {status_code}){hint}; retrying",
                    self.vm_id
                );
            } else {
                log::debug!("tollgate: control-plane stream refused (grpc status {status_code})");
            }
            self.stream = None;
            self.stream_healthy = false;
            let mut shared = self.shared.borrow_mut();
            shared.stream = None;
            shared.quota.set_connected(false);
            drop(shared);
            self.wake_quota_waiters();
        }
    }
}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = match PluginConfig::parse(&host::plugin_configuration()) {
            Ok(config) => config,
            Err(error) => {
                log::error!("tollgate: {error}");
                return false;
            }
        };
        self.vm_id = format!(
            "{}-{:x}",
            self.context_id,
            host::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        self.filter_token = read_filter_token(&config);
        self.shared.borrow_mut().config = config;
        host::set_tick_period(TICK);
        self.connect();
        true
    }

    fn on_tick(&mut self) {
        // A VM that started serving may have found its kept deltas broken.
        self.resync_if_needed();
        self.shared.borrow_mut().flush_counts();
        if self.stream.is_none() {
            self.connect();
        }
        self.flush_usage();
        // Requests the authority left waiting too long are decided here alone.
        if self.shared.borrow_mut().quota.tick(host::now_ms()) {
            self.wake_quota_waiters();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.shared.borrow_mut().start_serving(&self.vm_id);
        Some(Box::new(crate::http::TollgateHttp::new(
            self.shared.clone(),
            context_id,
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(ids: &[&str]) -> State {
        let snapshot = proto::Snapshot {
            version: 1,
            deployments: ids
                .iter()
                .map(|id| proto::Deployment {
                    id: id.to_string(),
                    model_name: format!("model-{id}"),
                    provider: proto::ProviderKind::Openai as i32,
                    provider_name: "openai".into(),
                    upstream_model: "m".into(),
                    api_base: "http://127.0.0.1:9/v1".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        State::from_snapshot(snapshot).0
    }

    #[test]
    fn per_deployment_state_goes_with_its_deployment() {
        let mut per_deployment: HashMap<String, u32> = [
            ("a".to_string(), 1),
            ("b".to_string(), 2),
            ("c".to_string(), 3),
        ]
        .into();
        forget_removed_deployments(&mut per_deployment, &state_with(&["a", "c", "d"]));
        let mut kept: Vec<_> = per_deployment.into_iter().collect();
        kept.sort();
        assert_eq!(kept, [("a".to_string(), 1), ("c".to_string(), 3)]);
    }
}
