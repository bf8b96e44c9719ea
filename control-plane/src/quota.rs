//! The control plane as the quota authority: answers each filter's `QuotaRequest` with a
//! `QuotaGrant` (one lease per ask, in order), by the rule and with the atomicity of
//! [`crate::store`]'s quota counters, and keeps the parallel-request slots of live streams
//! alive and those of ended streams freed.
//!
//! Each stream is one holder of PARALLEL slots, named `"<replica id>/<stream id>"`: the
//! replica id is 16 random hex digits drawn when the process starts, so two control planes
//! on one database never share a holder. A holder's rows expire [`HOLDER_TTL`] after they
//! were last refreshed; every [`MAINTENANCE_INTERVAL`] this replica refreshes the holders of
//! its open streams, and a stream that ends frees its slots at once, so only a crashed
//! replica's slots wait for the expiry.
//!
//! Windows are accepted only near the authority's clock (from the one that ended
//! [`WINDOW_SKEW_MS`] ago to the one starting that far ahead), and pruned only once they
//! ended [`WINDOW_RETENTION_MS`] ago: a window is never granted again after its counter was
//! deleted, as long as the replicas' clocks are within a minute of each other.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::{self, BudgetScope, LimitKind};
use crate::store::{
    now_unix_ms, QuotaCounter, QuotaKind, QuotaLease, QuotaWant, Store, StoreError,
};
use crate::sync::SyncHub;

/// Length of a REQUESTS / TOKENS window.
pub const WINDOW_MS: u64 = 60_000;
/// How far from the authority's clock an asked window may be: it may have ended this long
/// ago, or start this far ahead (a filter's clock, a request in flight at the minute).
pub const WINDOW_SKEW_MS: u64 = 60_000;
/// Windows that ended longer ago than this are pruned (more than [`WINDOW_SKEW_MS`], so a
/// pruned window is never asked for again).
pub const WINDOW_RETENTION_MS: u64 = 120_000;
/// How long a holder's slots count without a refresh.
pub const HOLDER_TTL: Duration = Duration::from_secs(30);
/// How often the holders of open streams are refreshed.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);
/// Pruning runs once per this many maintenance rounds (every minute).
const PRUNE_EVERY: u64 = 6;
/// Rows deleted per pruning statement.
const PRUNE_BATCH: u64 = 1_000;
/// Attempts at one ask before the request is left unanswered.
const ASK_ATTEMPTS: u32 = 3;
/// Attempts at freeing an ended stream's slots.
const RELEASE_ATTEMPTS: u32 = 3;

/// The quota state of one control-plane process.
#[derive(Debug)]
pub struct QuotaAuthority {
    replica: String,
    /// Streams that asked for PARALLEL slots (so may hold some): refreshed while open,
    /// released when they end.
    holding: std::sync::Mutex<BTreeSet<u64>>,
}

impl Default for QuotaAuthority {
    fn default() -> Self {
        Self::new()
    }
}

/// A bad ask: why it is answered with nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadAsk {
    /// The scope is unspecified or unknown.
    #[error("asks[].scope is unspecified or unknown")]
    Scope,
    /// The kind is unspecified or unknown.
    #[error("asks[].kind is unspecified or unknown")]
    Kind,
    /// `need` is 0 (and the ask releases no PARALLEL slots).
    #[error("asks[].need is 0")]
    Need,
    /// A REQUESTS / TOKENS window that does not start at a minute.
    #[error("asks[].window_start_unix_ms is not a multiple of 60000")]
    Unaligned,
    /// A REQUESTS / TOKENS window too far from the authority's clock.
    #[error("asks[].window_start_unix_ms is too far from the control plane's clock")]
    OutOfRange,
    /// A PARALLEL ask with a window.
    #[error("asks[].window_start_unix_ms must be 0 for LIMIT_KIND_PARALLEL")]
    ParallelWindow,
}

/// The `quota_counters.scope` name of a protocol scope.
pub fn scope_name(scope: BudgetScope) -> Option<&'static str> {
    Some(match scope {
        BudgetScope::Unspecified => return None,
        BudgetScope::Key => "key",
        BudgetScope::User => "user",
        BudgetScope::Team => "team",
        BudgetScope::EndUser => "end_user",
        BudgetScope::Global => "global",
        BudgetScope::KeyModel => "key_model",
        BudgetScope::Deployment => "deployment",
    })
}

/// What a valid ask asks for.
struct Checked {
    scope: &'static str,
    kind: QuotaKind,
}

/// Checks one ask against the authority's clock `now_ms`.
pub fn check_ask(ask: &proto::QuotaAsk, now_ms: u64) -> Result<(), BadAsk> {
    checked(ask, now_ms).map(|_| ())
}

fn checked(ask: &proto::QuotaAsk, now_ms: u64) -> Result<Checked, BadAsk> {
    let scope = BudgetScope::try_from(ask.scope)
        .ok()
        .and_then(scope_name)
        .ok_or(BadAsk::Scope)?;
    let kind = match LimitKind::try_from(ask.kind) {
        Ok(LimitKind::Requests) => QuotaKind::Requests,
        Ok(LimitKind::Tokens) => QuotaKind::Tokens,
        Ok(LimitKind::Parallel) => QuotaKind::Parallel,
        Ok(LimitKind::Unspecified) | Err(_) => return Err(BadAsk::Kind),
    };
    // An ask may only give quota back (need 0, release > 0).
    if ask.need == 0 && ask.release == 0 {
        return Err(BadAsk::Need);
    }
    let start = ask.window_start_unix_ms;
    if kind == QuotaKind::Parallel {
        if start != 0 {
            return Err(BadAsk::ParallelWindow);
        }
    } else {
        if start == 0 || !start.is_multiple_of(WINDOW_MS) {
            return Err(BadAsk::Unaligned);
        }
        let ended = start.saturating_add(WINDOW_MS);
        if ended.saturating_add(WINDOW_SKEW_MS) < now_ms
            || start > now_ms.saturating_add(WINDOW_SKEW_MS)
        {
            return Err(BadAsk::OutOfRange);
        }
    }
    Ok(Checked { scope, kind })
}

fn lease_of(ask: &proto::QuotaAsk, lease: QuotaLease) -> proto::QuotaLease {
    proto::QuotaLease {
        scope: ask.scope,
        id: ask.id.clone(),
        kind: ask.kind,
        window_start_unix_ms: ask.window_start_unix_ms,
        granted: lease.granted,
        remaining: lease.remaining,
    }
}

fn random_replica_id() -> String {
    let mut bytes = [0u8; 8];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => hex::encode(bytes),
        Err(error) => {
            // Unique enough on one machine; replicas on several machines have randomness.
            tracing::warn!(%error, "no randomness for the replica id; using time and pid");
            format!(
                "{:010x}{:06x}",
                now_unix_ms(),
                std::process::id() & 0xff_ffff
            )
        }
    }
}

impl QuotaAuthority {
    /// A new authority with a fresh random replica id.
    pub fn new() -> QuotaAuthority {
        QuotaAuthority {
            replica: random_replica_id(),
            holding: std::sync::Mutex::new(BTreeSet::new()),
        }
    }

    /// This process's replica id (16 hex digits).
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// The holder id of stream `stream`: `"<replica id>/<stream id>"`.
    pub fn holder(&self, stream: u64) -> String {
        format!("{}/{stream}", self.replica)
    }

    fn holding(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.holding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The grant answering `request` on stream `stream`, or `None` when the database could
    /// not answer (the filter then sees no answer, not an exhausted counter). Bad asks get
    /// a lease of 0 with 0 remaining.
    pub async fn answer(
        &self,
        store: &Store,
        stream: u64,
        request: &proto::QuotaRequest,
    ) -> Option<proto::QuotaGrant> {
        let mut leases = Vec::with_capacity(request.asks.len());
        for ask in &request.asks {
            let lease = match self.answer_ask(store, stream, ask).await {
                Ok(lease) => lease,
                Err(error) => {
                    tracing::warn!(
                        stream,
                        request_id = request.request_id,
                        %error,
                        "quota request left unanswered: the database failed"
                    );
                    return None;
                }
            };
            leases.push(lease_of(ask, lease));
        }
        Some(proto::QuotaGrant {
            request_id: request.request_id,
            leases,
        })
    }

    async fn answer_ask(
        &self,
        store: &Store,
        stream: u64,
        ask: &proto::QuotaAsk,
    ) -> Result<QuotaLease, StoreError> {
        let now = now_unix_ms();
        let valid = match checked(ask, now) {
            Ok(valid) => valid,
            Err(bad) => {
                tracing::debug!(
                    stream,
                    scope = ask.scope,
                    id = %ask.id,
                    kind = ask.kind,
                    window_start_unix_ms = ask.window_start_unix_ms,
                    need = ask.need,
                    reason = %bad,
                    "bad quota ask answered with nothing"
                );
                return Ok(QuotaLease::default());
            }
        };
        let counter = QuotaCounter {
            scope: valid.scope,
            id: &ask.id,
        };
        let want = QuotaWant {
            limit: ask.limit,
            need: ask.need,
            want: ask.want,
            overrun: ask.overrun,
            release: ask.release,
        };
        let holder = (valid.kind == QuotaKind::Parallel).then(|| {
            // Before the database: a stream that ends meanwhile still frees what this adds.
            self.holding().insert(stream);
            self.holder(stream)
        });
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = now_unix_ms();
            let result = match &holder {
                Some(holder) => {
                    let expires = now.saturating_add(ttl_ms());
                    store
                        .grant_quota_parallel(counter, holder, want, now, expires)
                        .await
                }
                None => {
                    store
                        .grant_quota_window(
                            counter,
                            valid.kind,
                            ask.window_start_unix_ms,
                            want,
                            now,
                        )
                        .await
                }
            };
            match result {
                Err(error) if attempt < ASK_ATTEMPTS => {
                    tracing::debug!(stream, attempt, %error, "quota ask failed, retrying");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                result => return result,
            }
        }
    }

    /// Frees the slots stream `stream` holds (it ended).
    pub async fn stream_ended(&self, store: &Store, stream: u64) {
        if !self.holding().remove(&stream) {
            return;
        }
        let holder = self.holder(stream);
        for attempt in 1..=RELEASE_ATTEMPTS {
            match store.release_quota_holder(&holder).await {
                Ok(freed) => {
                    tracing::debug!(stream, freed, "parallel slots of the stream freed");
                    return;
                }
                Err(error) => {
                    tracing::warn!(stream, attempt, %error, "freeing the stream's parallel slots failed");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
        // No longer refreshed: they expire within HOLDER_TTL.
    }

    /// Refreshes the expiry of the holders of this replica's open streams.
    pub async fn refresh_holders(&self, store: &Store, now_ms: u64) -> Result<u64, StoreError> {
        let holders: Vec<String> = self
            .holding()
            .iter()
            .map(|stream| self.holder(*stream))
            .collect();
        if holders.is_empty() {
            return Ok(0);
        }
        store
            .refresh_quota_holders(&holders, now_ms.saturating_add(ttl_ms()))
            .await
    }
}

fn ttl_ms() -> u64 {
    u64::try_from(HOLDER_TTL.as_millis()).unwrap_or(u64::MAX)
}

/// Deletes the windows that ended [`WINDOW_RETENTION_MS`] before `now_ms`, the expired
/// holders and the unused PARALLEL counters; returns the rows deleted.
pub async fn prune(store: &Store, now_ms: u64) -> Result<u64, StoreError> {
    let windows_before = now_ms.saturating_sub(WINDOW_RETENTION_MS + WINDOW_MS);
    store.prune_quota(windows_before, now_ms, PRUNE_BATCH).await
}

/// The hub's quota upkeep until it shuts down: refreshes its streams' holders every
/// [`MAINTENANCE_INTERVAL`] and prunes old counters every minute.
pub async fn run_maintenance(hub: Arc<SyncHub>) {
    let mut ticker = hub.ticker(MAINTENANCE_INTERVAL);
    let mut rounds: u64 = 0;
    while ticker.tick().await {
        let now = now_unix_ms();
        if let Err(error) = hub.quota().refresh_holders(hub.store(), now).await {
            tracing::warn!(%error, "refreshing parallel slots failed");
        }
        if rounds.is_multiple_of(PRUNE_EVERY) {
            match prune(hub.store(), now).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "old quota counters pruned"),
                Err(error) => tracing::warn!(%error, "pruning quota counters failed"),
            }
        }
        rounds = rounds.wrapping_add(1);
    }
}
