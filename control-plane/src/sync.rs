//! The filter protocol: snapshot building and the `tollgate.v1.FilterSync` service (the
//! hub every filter stream shares, and the streams themselves). The server that composes
//! it with the management API is [`crate::server`].
//!
//! The hub keeps the state it serves ([`Served`]) and announces each new version in a
//! `watch` channel: every stream sends a full snapshot at once and, after it, one delta per
//! change onto the version it last sent (a stream that fell behind gets one delta composed
//! over the versions it missed, or a full snapshot when the history no longer reaches back).
//! A change is read from the store as what changed since the served version, not as every
//! key again. The registry of open streams is a `watch` channel too, so readiness checks and
//! tests can wait for a change instead of polling.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::RouterConfig;
use crate::cooldowns::{self, CooldownJudge, CooldownRules};
use crate::delta::{CatchUp, Served, Teams};
use crate::limits;
use crate::pricing::{self, PriceCatalog, PricedDeployment};
use crate::proto::filter_sync_server::{FilterSync, FilterSyncServer};
use crate::proto::{self, control_message, filter_message};
use crate::quota::{self, QuotaAuthority};
use crate::spend_push::{run_spend_publisher, SpendView};
use crate::store::{
    now_unix_ms, KeyRow, ScopeBudget, ScopeRateLimits, StateSnapshot, Store, StoreError,
    StoredDeployment, SETTING_COST_PER_TOKEN, SETTING_MASTER_KEY_SHA256, SETTING_MAX_BUDGET,
    SETTING_MAX_END_USER_BUDGET, SETTING_MAX_REQUEST_BODY_BYTES, SETTING_MAX_RESPONSE_BODY_BYTES,
    SETTING_ROUTER, SETTING_SOFT_BUDGET,
};

/// How often the stored version is compared with the published one, as a safety net for
/// missed notifications (and the only cross-process signal on SQLite).
pub const VERSION_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Attempts at storing one usage batch before it is given up (and logged as lost).
const USAGE_INSERT_ATTEMPTS: u32 = 3;

/// Usage batches a stream queues for its storing task; the stream waits only when this
/// many are queued.
const USAGE_QUEUE: usize = 16;

/// Quota requests a stream answers at once: one, so that they are answered in the order
/// the filter sent them (quota it gives back must be back before its next ask is granted,
/// or that ask can be refused for quota the same filter just released). The stream reads
/// on when it is answered, a statement later.
const QUOTA_IN_FLIGHT: usize = 1;

/// How long an ending stream waits for its usage and quota tasks before it abandons them.
const STREAM_DRAIN: Duration = Duration::from_secs(5);

/// `general_settings.cost_per_token` as stored; a stored value that does not parse (which
/// only a hand edit of the database makes) prices nothing and is logged.
fn stored_cost_per_token(settings: &BTreeMap<String, String>) -> BTreeMap<String, f64> {
    let Some(text) = settings.get(SETTING_COST_PER_TOKEN) else {
        return BTreeMap::new();
    };
    serde_json::from_str(text).unwrap_or_else(|error| {
        tracing::warn!(%error, "stored {SETTING_COST_PER_TOKEN} is invalid; ignored");
        BTreeMap::new()
    })
}

/// The stored `router_settings` (LiteLLM's defaults when none are stored), as the filters
/// get them: every field explicit. A stored value that does not parse (which only a hand
/// edit of the database makes) gives the defaults and is logged.
fn stored_router(settings: &BTreeMap<String, String>) -> proto::RouterSettings {
    let router = match settings.get(SETTING_ROUTER) {
        None => RouterConfig::default(),
        Some(text) => serde_json::from_str(text).unwrap_or_else(|error| {
            tracing::warn!(%error, "stored {SETTING_ROUTER} is invalid; LiteLLM's defaults used");
            RouterConfig::default()
        }),
    };
    router.to_proto()
}

/// The budgets the snapshot's settings carry: the users' and teams' in `scoped`, the
/// gateway's (`general_settings.max_budget` / `soft_budget`) and the one of every end user
/// without a budget of its own (`litellm_settings.max_end_user_budget`, id "").
fn settings_budgets(
    settings: &BTreeMap<String, String>,
    scoped: &[ScopeBudget],
) -> Vec<proto::Budget> {
    let amount = |key: &str| {
        settings
            .get(key)
            .and_then(|value| value.parse::<f64>().ok())
    };
    let mut budgets = Vec::with_capacity(scoped.len() + 2);
    let (max_budget, soft_budget) = (amount(SETTING_MAX_BUDGET), amount(SETTING_SOFT_BUDGET));
    if max_budget.is_some() || soft_budget.is_some() {
        budgets.push(proto::Budget {
            scope: proto::BudgetScope::Global as i32,
            id: String::new(),
            max_budget,
            soft_budget,
        });
    }
    if let Some(max_budget) = amount(SETTING_MAX_END_USER_BUDGET) {
        budgets.push(proto::Budget {
            scope: proto::BudgetScope::EndUser as i32,
            id: String::new(),
            max_budget: Some(max_budget),
            soft_budget: None,
        });
    }
    for budget in scoped {
        let scope = match budget.scope {
            "user" => proto::BudgetScope::User,
            "end_user" => proto::BudgetScope::EndUser,
            _ => proto::BudgetScope::Team,
        };
        budgets.push(proto::Budget {
            scope: scope as i32,
            id: budget.id.clone(),
            max_budget: budget.max_budget,
            soft_budget: budget.soft_budget,
        });
    }
    budgets
}

/// Builds a snapshot from stored deployments, settings and the budgets and rate limits of
/// users and teams, each deployment priced from `prices` and the stored `cost_per_token`
/// (see [`pricing::resolve`]).
pub fn build_snapshot(
    version: u64,
    deployments: &[StoredDeployment],
    settings: &BTreeMap<String, String>,
    budgets: &[ScopeBudget],
    rate_limits: &[ScopeRateLimits],
    prices: &PriceCatalog,
) -> proto::Snapshot {
    let cost_per_token = stored_cost_per_token(settings);
    let number = |key: &str| {
        settings
            .get(key)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    proto::Snapshot {
        keys: Vec::new(),
        version,
        settings: Some(proto::Settings {
            master_key_sha256: settings
                .get(SETTING_MASTER_KEY_SHA256)
                .cloned()
                .unwrap_or_default(),
            max_request_body_bytes: number(SETTING_MAX_REQUEST_BODY_BYTES),
            max_response_body_bytes: number(SETTING_MAX_RESPONSE_BODY_BYTES),
            budgets: settings_budgets(settings, budgets),
            rate_limits: limits::settings_rate_limits(settings, rate_limits),
            router: Some(stored_router(settings)),
        }),
        deployments: deployments
            .iter()
            .map(|stored| {
                let record = &stored.record;
                proto::Deployment {
                    id: record.id.clone(),
                    model_name: record.model_name.clone(),
                    provider: crate::config::wire_to_proto(record.kind) as i32,
                    provider_name: record.provider_name.clone(),
                    upstream_model: record.upstream_model.clone(),
                    api_base: record.api_base.clone(),
                    api_key: record.api_key.clone().unwrap_or_default(),
                    default_max_tokens: record.default_max_tokens.unwrap_or(0),
                    api_version: record.api_version.clone().unwrap_or_default(),
                    pricing: pricing::resolve(
                        &PricedDeployment::of(record),
                        &cost_per_token,
                        prices,
                    ),
                    limits: record.limits.to_proto(),
                    provider_settings: crate::provider_settings::to_proto(record),
                    default_params_json: if record.default_params.is_empty() {
                        String::new()
                    } else {
                        serde_json::Value::Object(record.default_params.clone()).to_string()
                    },
                    weight: record.routing.weight.unwrap_or(0.0),
                    order: record.routing.order.unwrap_or(0),
                    tags: record.routing.tags.clone(),
                    timeout_ms: record.routing.timeout_ms.unwrap_or(0),
                    stream_timeout_ms: record.routing.stream_timeout_ms.unwrap_or(0),
                    num_retries: record.routing.num_retries,
                }
            })
            .collect(),
    }
}

/// The filter's view of the keys: a key without models inherits its team's; a blocked
/// team blocks its keys; a key without `max_parallel_requests` gets `default_parallel`
/// (`general_settings.max_parallel_requests`, see [`limits::default_key_parallel`]).
pub fn snapshot_keys(
    keys: &[KeyRow],
    teams: &BTreeMap<String, (Vec<String>, bool)>,
    default_parallel: Option<u64>,
) -> Vec<proto::VirtualKey> {
    keys.iter()
        .map(|key| {
            let team = key.team_id.as_ref().and_then(|id| teams.get(id));
            let models = if key.models.is_empty() {
                team.map(|(models, _)| models.clone()).unwrap_or_default()
            } else {
                key.models.clone()
            };
            proto::VirtualKey {
                key_sha256: key.token.clone(),
                key_alias: key.key_alias.clone().unwrap_or_default(),
                user_id: key.user_id.clone().unwrap_or_default(),
                team_id: key.team_id.clone().unwrap_or_default(),
                models,
                blocked: key.blocked || team.is_some_and(|(_, blocked)| *blocked),
                expires_unix_ms: key
                    .expires_ms
                    .map_or(0, |ms| u64::try_from(ms).unwrap_or(0).max(1)),
                max_budget: key.budget.max_budget,
                soft_budget: key.budget.soft_budget,
                model_max_budget: key
                    .model_max_budget
                    .iter()
                    .map(|(model, amount)| (model.clone(), *amount))
                    .collect(),
                limits: limits::key_limits(key.limits, default_parallel),
                model_limits: limits::model_limits(&key.model_rpm_limit, &key.model_tpm_limit),
            }
        })
        .collect()
}

/// A snapshot of a consistent read of the store, priced from `prices`.
pub fn snapshot_of_state(state: &StateSnapshot, prices: &PriceCatalog) -> proto::Snapshot {
    let mut snapshot = build_snapshot(
        state.version,
        &state.deployments,
        &state.settings,
        &state.budgets,
        &state.rate_limits,
        prices,
    );
    snapshot.keys = snapshot_keys(
        &state.keys,
        &state.teams,
        limits::default_key_parallel(&state.settings),
    );
    snapshot
}

/// Reads the store and builds the snapshot of its current state, with the stored version,
/// priced from the built-in table alone.
pub async fn load_snapshot(store: &Store) -> Result<proto::Snapshot, StoreError> {
    load_snapshot_priced(store, &PriceCatalog::default()).await
}

/// [`load_snapshot`] priced from `prices`.
pub async fn load_snapshot_priced(
    store: &Store,
    prices: &PriceCatalog,
) -> Result<proto::Snapshot, StoreError> {
    Ok(snapshot_of_state(&store.state_snapshot().await?, prices))
}

/// What the control plane knows about one open filter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Per-process stream number.
    pub id: u64,
    /// Remote address (Envoy's side of the connection).
    pub peer: Option<SocketAddr>,
    /// Whether the filter has said Hello on this stream.
    pub hello: bool,
    /// Envoy node id from the Hello.
    pub node_id: String,
    /// VM (root context) id from the Hello.
    pub vm_id: String,
    /// Filter build version from the Hello.
    pub filter_version: String,
    /// Newest snapshot version the filter reported holding: from its Hello, then from its
    /// acknowledgements (filters that do not send acks keep the Hello value).
    pub acked_version: u64,
    /// Whether the filter has sent a `SnapshotAck` on this stream (so it can be waited for).
    pub sends_acks: bool,
    /// When the Hello arrived.
    pub hello_at: Option<Instant>,
    /// Newest snapshot version sent on this stream.
    pub sent_version: u64,
    /// Full snapshots sent on this stream (the first, and any after a fall too far behind).
    pub snapshots_sent: u64,
    /// Deltas sent on this stream.
    pub deltas_sent: u64,
    /// Usage records received and processed on this stream (new or resent).
    pub usage_records: u64,
    /// Unix milliseconds of the stream's start.
    pub opened_unix_ms: u64,
}

/// State shared by all streams: the served state, the version channel, the stream registry
/// and the store usage goes to.
pub struct SyncHub {
    store: Store,
    /// The price tables every snapshot is priced from (loaded at startup).
    prices: Arc<PriceCatalog>,
    served: std::sync::Mutex<Served>,
    /// The served version; streams wait on it for changes.
    versions: watch::Sender<u64>,
    /// One refresh at a time (each reads what changed since the served version).
    refreshing: tokio::sync::Mutex<()>,
    streams: watch::Sender<BTreeMap<u64, StreamInfo>>,
    next_stream_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    /// A change was committed since the last rebuild started.
    rebuild_pending: AtomicBool,
    /// A rebuild task is running (at most one at a time).
    rebuild_running: AtomicBool,
    /// Counts stored usage batches: each acknowledgement carries the count after its batch
    /// (see [`crate::spend_push`]).
    ledger_seq: AtomicU64,
    /// The spend every stream is pushed; streams wait on it for changes.
    spend: watch::Sender<Arc<SpendView>>,
    /// Where budget alerts are POSTed (`general_settings.alerting: [webhook]`, `WEBHOOK_URL`).
    alert_webhook: std::sync::OnceLock<String>,
    /// The quota authority's state (replica id, streams holding parallel slots).
    quota: QuotaAuthority,
    /// This replica's provider access tokens (Vertex AI's), sent apart from snapshots;
    /// streams wait on it for changes.
    tokens: watch::Sender<Arc<proto::ProviderTokens>>,
    /// Counts the failures of the usage records this replica stores (see
    /// [`crate::cooldowns`]); held while publishing to `cooldowns`, so sets go out in the
    /// order they were judged.
    cooldown_judge: std::sync::Mutex<CooldownJudge>,
    /// The deployments cooling down as this replica judges them; streams wait on it for
    /// changes.
    cooldowns: watch::Sender<Arc<proto::DeploymentCooldowns>>,
}

/// Ticks of one of the hub's periodic tasks; see [`SyncHub::ticker`].
pub struct Ticker {
    interval: tokio::time::Interval,
    shutdown: watch::Receiver<bool>,
}

impl Ticker {
    /// Waits for the next tick: `false` once the hub shuts down (the task then ends).
    pub async fn tick(&mut self) -> bool {
        loop {
            tokio::select! {
                _ = self.interval.tick() => return true,
                changed = self.shutdown.changed() => {
                    // The signal starts marked changed: only `true` (or a dropped hub) stops.
                    if changed.is_err() || *self.shutdown.borrow_and_update() {
                        return false;
                    }
                }
            }
        }
    }
}

impl SyncHub {
    /// A hub serving the store's current state as its first snapshot, priced from the
    /// built-in table alone.
    pub async fn start(store: Store) -> Result<Arc<SyncHub>, StoreError> {
        Self::start_priced(store, Arc::new(PriceCatalog::default())).await
    }

    /// A hub serving the store's current state, every snapshot priced from `prices`.
    pub async fn start_priced(
        store: Store,
        prices: Arc<PriceCatalog>,
    ) -> Result<Arc<SyncHub>, StoreError> {
        let state = store.state_snapshot().await?;
        let snapshot = snapshot_of_state(&state, &prices);
        Ok(Self::serving(
            store,
            prices,
            Served::new(snapshot, Some(state.teams)),
        ))
    }

    /// A hub serving `snapshot` (tests, and callers that built the snapshot themselves);
    /// later snapshots are priced from the built-in table.
    pub fn with_snapshot(store: Store, snapshot: proto::Snapshot) -> Arc<SyncHub> {
        Self::serving(
            store,
            Arc::new(PriceCatalog::default()),
            Served::new(snapshot, None),
        )
    }

    fn serving(store: Store, prices: Arc<PriceCatalog>, served: Served) -> Arc<SyncHub> {
        let hub = Arc::new(SyncHub {
            store,
            prices,
            versions: watch::Sender::new(served.version()),
            served: std::sync::Mutex::new(served),
            refreshing: tokio::sync::Mutex::new(()),
            streams: watch::Sender::new(BTreeMap::new()),
            next_stream_id: AtomicU64::new(1),
            shutdown: watch::Sender::new(false),
            rebuild_pending: AtomicBool::new(false),
            rebuild_running: AtomicBool::new(false),
            ledger_seq: AtomicU64::new(0),
            spend: watch::Sender::new(Arc::new(SpendView::default())),
            alert_webhook: std::sync::OnceLock::new(),
            quota: QuotaAuthority::new(),
            tokens: watch::Sender::new(Arc::new(proto::ProviderTokens::default())),
            cooldown_judge: std::sync::Mutex::new(CooldownJudge::new()),
            cooldowns: watch::Sender::new(Arc::new(proto::DeploymentCooldowns::default())),
        });
        // Every hub pushes spend; outside a runtime (never in the service) there is no
        // stream to push it to either.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run_spend_publisher(hub.clone()));
            runtime.spawn(quota::run_maintenance(hub.clone()));
            runtime.spawn(crate::google_auth::run_token_refresher(hub.clone()));
        }
        hub
    }

    /// Sends budget alerts to `url` from now on (once: a later call is ignored).
    pub fn set_alert_webhook(&self, url: String) {
        let _ = self.alert_webhook.set(url);
    }

    /// Where budget alerts go, if anywhere.
    pub fn alert_webhook(&self) -> Option<&str> {
        self.alert_webhook.get().map(String::as_str)
    }

    /// The quota authority of this process.
    pub fn quota(&self) -> &QuotaAuthority {
        &self.quota
    }

    /// This replica's ledger sequence (see [`crate::spend_push`]).
    pub fn ledger_seq(&self) -> &AtomicU64 {
        &self.ledger_seq
    }

    /// The spend view streams are sent.
    pub fn spend_view(&self) -> Arc<SpendView> {
        self.spend.borrow().clone()
    }

    /// Sends `view` to every stream.
    pub fn publish_spend(&self, view: SpendView) {
        self.spend.send_replace(Arc::new(view));
    }

    /// Runs `read` on the served state.
    pub fn with_served<T>(&self, read: impl FnOnce(&Served) -> T) -> T {
        read(&self.served())
    }

    /// Sends `tokens` to every stream (and to every new one after its snapshot), unless
    /// they are the ones held.
    pub fn publish_tokens(&self, tokens: proto::ProviderTokens) {
        self.tokens.send_if_modified(|held| {
            if **held == tokens {
                return false;
            }
            *held = Arc::new(tokens);
            true
        });
    }

    /// The provider tokens streams are sent.
    pub fn provider_tokens(&self) -> Arc<proto::ProviderTokens> {
        self.tokens.borrow().clone()
    }

    /// The deployments cooling down as this replica judged them from the usage records it
    /// stored (see [`crate::cooldowns`]): the set streams were last sent, expired cooldowns
    /// included until it next changes. Replicas do not share it: each judges from the
    /// records its own streams deliver.
    pub fn deployment_cooldowns(&self) -> Arc<proto::DeploymentCooldowns> {
        self.cooldowns.borrow().clone()
    }

    /// The failed deployments of a round of background health checks (see
    /// [`crate::health_checks`]): they are out until their next check passes, and every
    /// stream is sent the new set when it changed.
    pub fn set_health_checks(
        &self,
        failed: std::collections::BTreeMap<String, crate::cooldowns::FailedCheck>,
    ) {
        let mut judge = self
            .cooldown_judge
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if judge.set_checks(failed) {
            self.cooldowns.send_replace(Arc::new(judge.cooldowns()));
        }
    }

    /// Counts the failures among `records` at `positions` (those just stored: a record
    /// resent is not among them) and, when a deployment starts cooling down, sends the
    /// new set to every stream.
    fn judge_cooldowns(&self, records: &[proto::UsageRecord], positions: &[usize]) {
        let mut failing = positions
            .iter()
            .filter_map(|position| records.get(*position))
            .filter(|record| cooldowns::failure_class(record).is_some())
            .peekable();
        if failing.peek().is_none() {
            return;
        }
        let mut judge = self
            .cooldown_judge
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.with_served(|served| {
            if !judge.rules_of(served.version()) {
                let rules = CooldownRules::new(served.router_settings(), served.deployments());
                judge.set_rules(served.version(), rules);
            }
        });
        let started = judge.observe(failing, now_unix_ms());
        if started.is_empty() {
            return;
        }
        for cooldown in &started {
            tracing::info!(
                deployment = %cooldown.deployment_id,
                class = cooldown.class.name(),
                fails = cooldown.fails,
                until_unix_ms = cooldown.until_unix_ms,
                "deployment cooling down (failures of every filter)"
            );
        }
        self.cooldowns.send_replace(Arc::new(judge.cooldowns()));
    }

    /// Changes whenever a new version is served.
    pub fn subscribe_versions(&self) -> watch::Receiver<u64> {
        self.versions.subscribe()
    }

    /// Changes to true when the hub shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        let mut signal = self.shutdown.subscribe();
        signal.mark_changed();
        signal
    }

    /// A tick every `period` (the first at once; a late tick delays the next ones) until
    /// the hub shuts down: the loop of the hub's periodic tasks.
    pub fn ticker(&self, period: Duration) -> Ticker {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker {
            interval,
            shutdown: self.shutdown_signal(),
        }
    }

    /// Asks for a rebuild after a committed change, without waiting for it. Rebuilding reads
    /// every deployment and key, so a burst of changes (a script creating thousands of keys)
    /// must not rebuild once per change: requests that arrive while a rebuild runs are
    /// served by one more rebuild after it.
    pub fn request_refresh(self: &Arc<Self>) {
        self.rebuild_pending.store(true, Ordering::SeqCst);
        if self.rebuild_running.swap(true, Ordering::SeqCst) {
            return;
        }
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                hub.rebuild_pending.store(false, Ordering::SeqCst);
                hub.refresh_logged().await;
                if hub.rebuild_pending.load(Ordering::SeqCst) {
                    continue;
                }
                hub.rebuild_running.store(false, Ordering::SeqCst);
                // A request may have landed between the check and the store above.
                if !hub.rebuild_pending.load(Ordering::SeqCst)
                    || hub.rebuild_running.swap(true, Ordering::SeqCst)
                {
                    break;
                }
            }
        });
    }

    /// The store usage is written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The price tables snapshots are priced from.
    pub fn prices(&self) -> &PriceCatalog {
        &self.prices
    }

    /// The full snapshot of the served version (built on each call: tests and logs).
    pub fn current(&self) -> Arc<proto::Snapshot> {
        Arc::new(self.served().snapshot())
    }

    /// The served version.
    pub fn current_version(&self) -> u64 {
        *self.versions.borrow()
    }

    fn served(&self) -> std::sync::MutexGuard<'_, Served> {
        self.served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What a stream last sent version `sent` needs to catch up.
    fn catch_up(&self, sent: u64) -> CatchUp {
        self.served().catch_up(sent)
    }

    /// Serves `snapshot` unless the served version is as new; true if it did. Replicas
    /// and concurrent rebuilds may produce snapshots out of order: the newest wins.
    pub fn publish_if_newer(&self, snapshot: proto::Snapshot) -> bool {
        self.publish_full(snapshot, None)
    }

    /// [`Self::publish_if_newer`] with the teams the snapshot's keys were built from, when
    /// known (a later refresh can then read only what changed).
    fn publish_full(&self, snapshot: proto::Snapshot, teams: Option<Teams>) -> bool {
        let version = snapshot.version;
        {
            let mut served = self.served();
            if version <= served.version() {
                return false;
            }
            served.replace(snapshot, teams);
            self.log_published(&served, "full read");
        }
        self.versions.send_replace(version);
        true
    }

    fn log_published(&self, served: &Served, read: &'static str) {
        tracing::info!(
            version = served.version(),
            deployments = served.deployment_count(),
            keys = served.key_count(),
            keys_changed = served.last_key_changes(),
            read,
            "publishing snapshot"
        );
    }

    /// Reads what changed in the store since the served version and serves the result if
    /// it is newer; returns the stored version. A read of every key is needed only when the
    /// changes are not enough (see [`Served::apply_changes`]).
    pub async fn refresh(&self) -> Result<u64, StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let served_version = self.current_version();
        let changes = self.store.state_changes_since(served_version).await?;
        let stored = changes.state.version;
        if stored <= served_version {
            return Ok(stored);
        }
        let applied = {
            let mut served = self.served();
            let applied = served.apply_changes(changes, &self.prices);
            if applied {
                self.log_published(&served, "changes");
            }
            applied
        };
        if applied {
            self.versions.send_replace(stored);
        } else {
            let state = self.store.state_snapshot().await?;
            let snapshot = snapshot_of_state(&state, &self.prices);
            self.publish_full(snapshot, Some(state.teams));
        }
        Ok(stored)
    }

    /// Hands out a new version, rebuilds the snapshot from the store and publishes it.
    pub async fn republish(&self) -> Result<u64, StoreError> {
        self.store.next_snapshot_version(now_unix_ms()).await?;
        self.refresh().await
    }

    /// Keeps this replica's snapshot up to date with changes committed by others: PostgreSQL
    /// LISTEN on [`crate::store::CHANGES_CHANNEL`] (reconnecting with backoff and rebuilding
    /// once per (re)connection, since notifications sent meanwhile are lost), plus a poll of
    /// the stored version every [`VERSION_POLL_INTERVAL`]. Ends with [`SyncHub::close_streams`].
    ///
    /// SQLite has no notifications: run one control plane per SQLite file (the poll would
    /// pick up another process's writes within the interval, but that is not a supported
    /// setup). Several replicas need PostgreSQL.
    pub fn spawn_change_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move { hub.watch_changes().await })
    }

    async fn watch_changes(&self) {
        let mut shutdown = self.shutdown.subscribe();
        let mut backoff = Duration::from_millis(100);
        let mut poll = tokio::time::interval(VERSION_POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listener = None;
        let mut listening = self.store.backend() == crate::store::Backend::Postgres;
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            if listening && listener.is_none() {
                match self.store.change_listener().await {
                    Ok(Some(connected)) => {
                        tracing::debug!("listening for changes of other replicas");
                        listener = Some(connected);
                        backoff = Duration::from_millis(100);
                        self.refresh_logged().await;
                    }
                    Ok(None) => listening = false,
                    Err(error) => {
                        tracing::warn!(%error, "cannot LISTEN for changes; retrying");
                    }
                }
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow_and_update() {
                        return;
                    }
                }
                _ = poll.tick() => {
                    match self.store.stored_version().await {
                        Ok(stored) if stored > self.current_version() => self.refresh_logged().await,
                        Ok(_) => {}
                        Err(error) => tracing::debug!(%error, "version poll failed"),
                    }
                }
                received = async {
                    match listener.as_mut() {
                        Some(listener) => listener.try_recv().await,
                        None => std::future::pending().await,
                    }
                } => match received {
                    Ok(Some(notification)) => {
                        let newer = notification
                            .payload()
                            .parse::<u64>()
                            .map_or(true, |version| version > self.current_version());
                        if newer {
                            self.refresh_logged().await;
                        }
                    }
                    // The connection was lost (sqlx reconnects on the next call): anything
                    // sent meanwhile is gone, so rebuild once.
                    Ok(None) => {
                        tracing::warn!("change listener lost its connection; reconnecting");
                        self.refresh_logged().await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "change listener failed; reconnecting");
                        listener = None;
                    }
                },
            }
            if listening && listener.is_none() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    async fn refresh_logged(&self) {
        if let Err(error) = self.refresh().await {
            tracing::warn!(%error, "rebuilding the snapshot failed");
        }
    }

    /// Open streams, by id.
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.streams.borrow().values().cloned().collect()
    }

    /// Open streams whose filter has said Hello: the readiness count.
    pub fn connected_streams(&self) -> usize {
        self.streams
            .borrow()
            .values()
            .filter(|stream| stream.hello)
            .count()
    }

    /// Streams whose filter holds the current snapshot: it acknowledged it, or, for a filter
    /// that has not sent acknowledgements, the snapshot was sent and its Hello is at least
    /// `grace` old (the snapshot goes out before the Hello is even read, so by then it has
    /// long been installed). Readiness counts these rather than Hellos, so that no request
    /// reaches a VM that is still without configuration.
    pub fn streams_holding_current(&self, grace: Duration) -> usize {
        let current = self.current_version();
        self.streams
            .borrow()
            .values()
            .filter(|stream| {
                if stream.sends_acks {
                    stream.acked_version >= current
                } else {
                    stream.sent_version >= current
                        && stream.hello_at.is_some_and(|at| at.elapsed() >= grace)
                }
            })
            .count()
    }

    /// Waits until `predicate` holds for the open streams, or `timeout` passes; returns
    /// whether it held.
    pub async fn wait_for_streams(
        &self,
        timeout: Duration,
        predicate: impl Fn(&[StreamInfo]) -> bool,
    ) -> bool {
        let mut receiver = self.streams.subscribe();
        let wait = receiver.wait_for(|streams| {
            let list: Vec<StreamInfo> = streams.values().cloned().collect();
            predicate(&list)
        });
        let held = matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)));
        held
    }

    /// Ends every open stream and refuses new ones, so a graceful server shutdown does not
    /// wait forever on long-lived streams. Filters reconnect to the next control plane.
    pub fn close_streams(&self) {
        self.shutdown.send_replace(true);
    }

    /// The tonic service for this hub. A full snapshot of 100,000 keys is about 15 MB:
    /// tonic's limit on what it sends is none (set here so it does not hang on a default),
    /// its limit on what it receives (4 MiB) only ever meets usage batches. The filters'
    /// clients take messages of that size: the native module raises tonic's 4 MiB, and
    /// Envoy's gRPC client (the Wasm filter's stream) has no limit unless a GrpcService sets
    /// `max_receive_message_length`.
    pub fn service(self: &Arc<Self>) -> FilterSyncServer<SyncService> {
        FilterSyncServer::new(SyncService { hub: self.clone() })
            .max_encoding_message_size(usize::MAX)
    }

    fn register(&self, peer: Option<SocketAddr>) -> u64 {
        let id = self.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let info = StreamInfo {
            id,
            peer,
            hello: false,
            node_id: String::new(),
            vm_id: String::new(),
            filter_version: String::new(),
            acked_version: 0,
            sends_acks: false,
            hello_at: None,
            sent_version: 0,
            snapshots_sent: 0,
            deltas_sent: 0,
            usage_records: 0,
            opened_unix_ms: now_unix_ms(),
        };
        self.streams.send_modify(|streams| {
            streams.insert(id, info);
        });
        id
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut StreamInfo)) {
        self.streams.send_modify(|streams| {
            if let Some(info) = streams.get_mut(&id) {
                change(info);
            }
        });
    }

    fn unregister(&self, id: u64) {
        let mut removed = None;
        self.streams
            .send_modify(|streams| removed = streams.remove(&id));
        if let Some(info) = removed {
            tracing::info!(
                stream = id,
                node = %info.node_id,
                vm = %info.vm_id,
                open = self.streams.borrow().len(),
                "filter stream closed"
            );
        }
    }

    /// Stores a usage batch (each record once by id); returns the ledger sequence it was
    /// stored at, or `None` when it could not be stored, so it is not acknowledged and the
    /// filter keeps it for the next stream.
    async fn store_usage(&self, stream: u64, records: &[proto::UsageRecord]) -> Option<u64> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.store.insert_usage_new(records).await {
                Ok(inserted) => {
                    tracing::debug!(
                        stream,
                        received = records.len(),
                        inserted = inserted.len(),
                        "usage batch stored"
                    );
                    // After the commit: a spend read that starts after this sees the batch.
                    let ledger_seq = self.ledger_seq.fetch_add(1, Ordering::SeqCst) + 1;
                    self.judge_cooldowns(records, &inserted);
                    return Some(ledger_seq);
                }
                Err(error) if attempt < USAGE_INSERT_ATTEMPTS => {
                    tracing::warn!(stream, attempt, %error, "storing usage failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(error) => {
                    tracing::error!(
                        stream,
                        records = records.len(),
                        %error,
                        "storing usage failed; closing the stream so the filter sends the batch again"
                    );
                    return None;
                }
            }
        }
    }
}

/// Removes a stream from the registry however its task ends.
struct Registration {
    hub: Arc<SyncHub>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

/// The `FilterSync` implementation over a [`SyncHub`].
#[derive(Clone)]
pub struct SyncService {
    hub: Arc<SyncHub>,
}

type ControlStream = ReceiverStream<Result<proto::ControlMessage, Status>>;

#[tonic::async_trait]
impl FilterSync for SyncService {
    type SyncStream = ControlStream;

    async fn sync(
        &self,
        request: Request<Streaming<proto::FilterMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        if *self.hub.shutdown.borrow() {
            return Err(Status::unavailable("control plane is shutting down"));
        }
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        // Registered before the task runs so readiness and tests see the stream at once.
        let id = self.hub.register(peer);
        let (sender, receiver) = mpsc::channel(4);
        let registration = Registration {
            hub: self.hub.clone(),
            id,
        };
        tokio::spawn(run_stream(registration, inbound, sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Sends one control-plane message (a full snapshot or a delta) leading to `version`.
async fn send_update(
    hub: &SyncHub,
    id: u64,
    sender: &mpsc::Sender<Result<proto::ControlMessage, Status>>,
    message: proto::ControlMessage,
    version: u64,
) -> bool {
    let full = matches!(message.kind, Some(control_message::Kind::Snapshot(_)));
    if sender.send(Ok(message)).await.is_err() {
        return false;
    }
    hub.update(id, |info| {
        info.sent_version = version;
        if full {
            info.snapshots_sent += 1;
        } else {
            info.deltas_sent += 1;
        }
    });
    tracing::debug!(
        stream = id,
        version,
        kind = if full { "snapshot" } else { "delta" },
        "update sent"
    );
    true
}

/// Sends a spend update; false when the stream is gone.
async fn send_spend(
    sender: &mpsc::Sender<Result<proto::ControlMessage, Status>>,
    update: proto::SpendUpdate,
) -> bool {
    let message = proto::ControlMessage {
        kind: Some(control_message::Kind::Spend(update)),
    };
    sender.send(Ok(message)).await.is_ok()
}

/// Sends the deployments cooling down; false when the stream is gone.
async fn send_cooldowns(
    sender: &mpsc::Sender<Result<proto::ControlMessage, Status>>,
    cooldowns: &proto::DeploymentCooldowns,
) -> bool {
    let message = proto::ControlMessage {
        kind: Some(control_message::Kind::Cooldowns(cooldowns.clone())),
    };
    sender.send(Ok(message)).await.is_ok()
}

/// Sends the provider tokens; false when the stream is gone.
async fn send_tokens(
    sender: &mpsc::Sender<Result<proto::ControlMessage, Status>>,
    tokens: &proto::ProviderTokens,
) -> bool {
    let message = proto::ControlMessage {
        kind: Some(control_message::Kind::ProviderTokens(tokens.clone())),
    };
    sender.send(Ok(message)).await.is_ok()
}

fn snapshot_message(snapshot: proto::Snapshot) -> (proto::ControlMessage, u64) {
    let version = snapshot.version;
    (
        proto::ControlMessage {
            kind: Some(control_message::Kind::Snapshot(snapshot)),
        },
        version,
    )
}

type ControlSender = mpsc::Sender<Result<proto::ControlMessage, Status>>;

/// What a stream runs beside its loop, so that no database call holds up the messages
/// behind it: the task storing its usage batches (in order) and the task answering its
/// quota requests (in order, one at a time).
struct StreamWork {
    usage: mpsc::Sender<proto::UsageBatch>,
    usage_task: tokio::task::JoinHandle<()>,
    /// The usage task ended (a batch could not be stored): the stream must end.
    usage_ended: bool,
    quota: JoinSet<()>,
}

async fn run_stream(
    registration: Registration,
    mut inbound: Streaming<proto::FilterMessage>,
    sender: ControlSender,
) {
    let hub = registration.hub.clone();
    let id = registration.id;
    let mut versions = hub.versions.subscribe();
    let mut shutdown = hub.shutdown.subscribe();
    // A shutdown that happened before this subscription must still end the stream.
    shutdown.mark_changed();
    // The filter cannot serve anything before its first snapshot: send it before even
    // reading the Hello. A new stream always starts with a full one.
    versions.borrow_and_update();
    let (first, mut sent_version) = snapshot_message(hub.served().snapshot());
    if !send_update(&hub, id, &sender, first, sent_version).await {
        return;
    }
    // Then every budgeted scope's spend, so budgets hold from the first request.
    let mut spend = hub.spend.subscribe();
    let view = spend.borrow_and_update().clone();
    let mut sent_spend = view.generation;
    if !send_spend(&sender, view.full_update()).await {
        return;
    }
    // And the provider tokens, so Vertex AI deployments work from the first request too.
    let mut tokens = hub.tokens.subscribe();
    let held = tokens.borrow_and_update().clone();
    if !held.tokens.is_empty() && !send_tokens(&sender, &held).await {
        return;
    }
    // And the deployments cooling down (those still running), so that a VM that just
    // started does not send requests to them either.
    let mut cooling = hub.cooldowns.subscribe();
    let running = cooldowns::running_at(&cooling.borrow_and_update(), now_unix_ms());
    if !running.cooldowns.is_empty() && !send_cooldowns(&sender, &running).await {
        return;
    }
    let (usage, usage_queue) = mpsc::channel(USAGE_QUEUE);
    let mut work = StreamWork {
        usage,
        usage_task: tokio::spawn(store_usage_batches(
            hub.clone(),
            id,
            usage_queue,
            sender.clone(),
        )),
        usage_ended: false,
        quota: JoinSet::new(),
    };
    loop {
        tokio::select! {
            changed = spend.changed() => {
                if changed.is_err() {
                    break;
                }
                let view = spend.borrow_and_update().clone();
                if !send_spend(&sender, view.update_after(sent_spend)).await {
                    break;
                }
                sent_spend = view.generation;
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow_and_update() {
                    break;
                }
            }
            changed = tokens.changed() => {
                if changed.is_err() {
                    break;
                }
                let held = tokens.borrow_and_update().clone();
                if !send_tokens(&sender, &held).await {
                    break;
                }
            }
            changed = cooling.changed() => {
                if changed.is_err() {
                    break;
                }
                let set = cooling.borrow_and_update().clone();
                if !send_cooldowns(&sender, &set).await {
                    break;
                }
            }
            changed = versions.changed() => {
                if changed.is_err() {
                    break;
                }
                versions.borrow_and_update();
                let (message, version) = match hub.catch_up(sent_version) {
                    CatchUp::UpToDate => continue,
                    CatchUp::Delta { message, version } => (message.as_ref().clone(), version),
                    CatchUp::Full(snapshot) => snapshot_message(*snapshot),
                };
                if !send_update(&hub, id, &sender, message, version).await {
                    break;
                }
                sent_version = version;
            }
            message = inbound.message() => match message {
                Ok(Some(message)) => {
                    if handle_message(&hub, id, message, &sender, &mut work).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(stream = id, %status, "filter stream ended with an error");
                    break;
                }
            },
            _ = &mut work.usage_task => {
                work.usage_ended = true;
                break;
            }
            Some(_) = work.quota.join_next(), if !work.quota.is_empty() => {}
            () = sender.closed() => break,
        }
    }
    // The batches queued are still stored (and acknowledged while the filter listens), the
    // quota requests read are still answered, then the stream's slots are freed: after
    // its last grant, so none is left behind.
    let StreamWork {
        usage,
        mut usage_task,
        usage_ended,
        mut quota,
    } = work;
    drop(usage);
    let drained = tokio::time::timeout(STREAM_DRAIN, async {
        if !usage_ended {
            let _ = (&mut usage_task).await;
        }
        while quota.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            stream = id,
            "stream tasks still running at its end; abandoned"
        );
        usage_task.abort();
        quota.shutdown().await;
    }
    hub.quota.stream_ended(&hub.store, id).await;
    drop(registration);
}

/// Stores a stream's usage batches in the order received and acknowledges each; ends when
/// the stream stops queueing, or when a batch could not be stored (the stream then ends
/// too, so the filter sends the batch again on its next stream).
async fn store_usage_batches(
    hub: Arc<SyncHub>,
    id: u64,
    mut queue: mpsc::Receiver<proto::UsageBatch>,
    sender: ControlSender,
) {
    while let Some(batch) = queue.recv().await {
        let Some(ledger_seq) = hub.store_usage(id, &batch.records).await else {
            return;
        };
        // Counted after storing, so a waiter that sees the count also sees the rows.
        let count = u64::try_from(batch.records.len()).unwrap_or(u64::MAX);
        hub.update(id, |info| info.usage_records += count);
        // Filters of earlier versions send no batch id (0) and expect no acknowledgement.
        if batch.batch_id != 0 {
            let ack = proto::ControlMessage {
                kind: Some(control_message::Kind::UsageAck(proto::UsageAck {
                    batch_ids: vec![batch.batch_id],
                    ledger_seq,
                })),
            };
            if sender.send(Ok(ack)).await.is_err() {
                return;
            }
        }
    }
}

/// Why a stream ends on the control plane's side.
struct StreamBroken;

async fn handle_message(
    hub: &Arc<SyncHub>,
    id: u64,
    message: proto::FilterMessage,
    sender: &ControlSender,
    work: &mut StreamWork,
) -> Result<(), StreamBroken> {
    match message.kind {
        Some(filter_message::Kind::Hello(hello)) => {
            hub.update(id, |info| {
                info.hello = true;
                info.hello_at = Some(Instant::now());
                info.node_id = hello.node_id.clone();
                info.vm_id = hello.vm_id.clone();
                info.filter_version = hello.filter_version.clone();
                info.acked_version = hello.snapshot_version;
            });
            tracing::info!(
                stream = id,
                node = %hello.node_id,
                vm = %hello.vm_id,
                filter_version = %hello.filter_version,
                held_snapshot = hello.snapshot_version,
                connected = hub.connected_streams(),
                "filter connected"
            );
        }
        Some(filter_message::Kind::Usage(batch)) => {
            // Waits only when the queue is full (the database is far behind the filter).
            if work.usage.send(batch).await.is_err() {
                return Err(StreamBroken);
            }
        }
        Some(filter_message::Kind::Ack(ack)) => {
            hub.update(id, |info| {
                info.sends_acks = true;
                info.acked_version = info.acked_version.max(ack.version);
            });
            tracing::debug!(stream = id, version = ack.version, "snapshot acknowledged");
        }
        Some(filter_message::Kind::Quota(request)) => {
            while work.quota.len() >= QUOTA_IN_FLIGHT {
                work.quota.join_next().await;
            }
            let hub = hub.clone();
            let sender = sender.clone();
            work.quota.spawn(async move {
                let Some(grant) = hub.quota.answer(&hub.store, id, &request).await else {
                    return;
                };
                let message = proto::ControlMessage {
                    kind: Some(control_message::Kind::Quota(grant)),
                };
                // A closed stream has no one to tell.
                let _ = sender.send(Ok(message)).await;
            });
        }
        None => tracing::debug!(stream = id, "empty filter message ignored"),
    }
    Ok(())
}
