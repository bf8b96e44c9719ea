//! The attempts of one request: retries within its model group, then fallbacks to other
//! groups, each attempt translated for its own deployment.
//!
//! Envoy drives the attempts (see DESIGN.md, "Retries and fallbacks"): the filter on the
//! gateway's listener keeps the client's body and sends the request through the attempts
//! route, whose retry policy retries an answer marked with [`RETRY_HEADER`]; each attempt
//! reaches the filter again on Envoy's internal attempts listener, which looks the request up
//! in the [`AttemptLedger`] by [`ATTEMPT_HEADER`], translates it for the deployment the plan
//! chose and, when it fails, decides whether another attempt follows and where it goes.
//! Both sides run on the same Envoy worker, so they share one ledger.

use std::collections::HashMap;
use std::sync::Arc;

use super::{choose, ChoiceContext, ErrorClass, RouterConfig, RoutingBook, Shuffler, MAX_ATTEMPTS};
use crate::auth::Caller;
use crate::request::RequestRouting;
use crate::snapshot::Deployment;
use crate::usage::RecordIds;
use crate::State;

/// Request header that names a request's ledger entry on its way to the attempts listener.
/// A client's is removed on the gateway's listener; a value that names no open entry is
/// ignored, and entries are named by 128 random bits.
pub const ATTEMPT_HEADER: &str = "x-tollgate-attempt";

/// Response header with which an attempt asks Envoy's retry policy for another attempt.
/// Removed before the client sees the answer.
pub const RETRY_HEADER: &str = "x-tollgate-retry";

/// Response header with which an attempt asks Envoy to wait before the next one, in whole
/// seconds: the attempts route's retry policy reads it as a rate-limit reset header (Envoy
/// then waits between this and 1.5 times this). Removed before the client sees the answer.
pub const RETRY_AFTER_HEADER: &str = "x-tollgate-retry-after";

/// Longest wait [`RoutePlan::backoff_ms`] asks for: the `max_interval` of the attempts
/// route's rate-limited backoff in `envoy/tollgate.yaml.tmpl` (Envoy ignores a longer one).
const MAX_BACKOFF_MS: u64 = 300_000;

/// Largest number of requests in the ledger at once; beyond it the oldest are dropped (their
/// later attempts are then answered with an error instead of growing memory without bound).
const MAX_OPEN_ENTRIES: usize = 65_536;

/// An entry older than this is stale (its request ended without closing it).
const ENTRY_TTL_MS: u64 = 15 * 60 * 1000;

/// Where a request is in its attempts.
#[derive(Debug, Clone)]
pub struct RoutePlan {
    /// The group the client asked for (after aliases): its fallbacks are the ones used.
    requested_group: String,
    /// The group of the current attempt.
    group: String,
    /// The fallback list chosen by the failure that ended the requested group's attempts,
    /// and how far into it the request is.
    fallbacks: Option<(Vec<String>, usize)>,
    /// Retries in the current group so far.
    retries_in_group: u32,
    /// Deployment ids tried, in order.
    tried: Vec<String>,
    /// The deployment of the current (or next) attempt.
    current: Arc<Deployment>,
    /// Retries and fallbacks so far, for the response headers.
    retries: u32,
    fallbacks_used: u32,
    /// Attempts so far on a deployment this request had already tried (they wait the
    /// router's backoff, growing with each).
    repeats: u32,
    /// The request's own fallbacks and retries (LiteLLM's per-request parameters), which
    /// replace the router's.
    overrides: RequestRouting,
}

/// The choice of one attempt's deployment, besides the group: what [`choose`] needs.
pub struct Chooser<'a> {
    /// The snapshot.
    pub state: &'a State,
    /// The routing view.
    pub book: &'a RoutingBook,
    /// Random choices.
    pub shuffler: &'a mut Shuffler,
    /// Milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// The request's tags.
    pub tags: &'a [String],
    /// The request's estimated tokens.
    pub estimated_tokens: u64,
    /// Whether the client asked for a stream.
    pub stream: bool,
}

impl Chooser<'_> {
    fn choose(&mut self, group: &str, tried: &[String]) -> Option<Arc<Deployment>> {
        let deployments = self.state.model(group)?.deployments();
        let context = ChoiceContext {
            now_ms: self.now_ms,
            tags: self.tags,
            tried,
            estimated_tokens: self.estimated_tokens,
            stream: self.stream,
            pushed: Some(self.state.pushed_cooldowns()),
        };
        choose(
            deployments,
            &self.state.router,
            self.book,
            &context,
            self.shuffler,
        )
        .cloned()
    }
}

impl RoutePlan {
    /// The plan of a request for `group`, with its first deployment chosen; `None` when the
    /// group has no deployment the request may use.
    pub fn start(
        group: &str,
        overrides: &RequestRouting,
        chooser: &mut Chooser<'_>,
    ) -> Option<RoutePlan> {
        let first = chooser.choose(group, &[])?;
        Some(RoutePlan {
            requested_group: group.to_string(),
            group: group.to_string(),
            fallbacks: None,
            retries_in_group: 0,
            tried: vec![first.id.clone()],
            current: first,
            retries: 0,
            fallbacks_used: 0,
            repeats: 0,
            overrides: RequestRouting {
                spans: Vec::new(),
                ..overrides.clone()
            },
        })
    }

    /// Retries for a failure of `class` on the current deployment: the request's own
    /// num_retries for the classes retried by default, else the router's.
    fn retries_for(&self, class: ErrorClass, config: &RouterConfig) -> u32 {
        match (self.overrides.num_retries, class) {
            (Some(own), ErrorClass::RateLimit | ErrorClass::Timeout | ErrorClass::ServerError) => {
                own.min(MAX_ATTEMPTS - 1)
            }
            _ => config.retries_for(class, &self.current),
        }
    }

    /// The fallback list for a failure of `class`: the request's own, else the router's.
    fn fallbacks_for(&self, class: ErrorClass, config: &RouterConfig) -> Vec<String> {
        let own = match class {
            ErrorClass::ContextWindow => &self.overrides.context_window_fallbacks,
            ErrorClass::ContentPolicy => &self.overrides.content_policy_fallbacks,
            ErrorClass::BadRequest => return Vec::new(),
            _ => &self.overrides.fallbacks,
        };
        match own {
            Some(own) => own.clone(),
            None => config.fallbacks_for(class, &self.requested_group).to_vec(),
        }
    }

    /// The request's own num_retries, when it gives one (for a request sent straight to its
    /// deployment, which Envoy retries).
    pub fn own_retries(&self) -> Option<u32> {
        self.overrides
            .num_retries
            .map(|own| own.min(MAX_ATTEMPTS - 1))
    }

    /// The deployment of the current attempt.
    pub fn current(&self) -> &Arc<Deployment> {
        &self.current
    }

    /// Retries so far (within groups).
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Fallbacks so far (to other groups).
    pub fn fallbacks(&self) -> u32 {
        self.fallbacks_used
    }

    /// Attempts so far, the current one included.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.tried.len()).unwrap_or(u32::MAX)
    }

    /// How long Envoy should wait before the attempt [`Self::next`] just chose: nothing
    /// when it goes to a deployment not tried yet (LiteLLM retries another deployment at
    /// once); else the router's backoff, doubling with each such repeat up to its longest.
    pub fn backoff_ms(&self, config: &RouterConfig) -> u64 {
        if self.repeats == 0 || config.retry_base_delay_ms == 0 {
            return 0;
        }
        let doublings = self.repeats.saturating_sub(1).min(32);
        config
            .retry_base_delay_ms
            .saturating_mul(1u64 << doublings)
            .min(config.retry_max_delay_ms)
            .min(MAX_BACKOFF_MS)
    }

    /// Whether this request could ever go to more than one deployment or wait between its
    /// attempts: a group with several deployments, fallbacks, or retries with a backoff
    /// (which only the attempts route applies). A request that cannot is sent straight to
    /// its deployment, where Envoy retries it.
    pub fn may_try_another(&self, state: &State) -> bool {
        let config = &state.router;
        let own = &self.overrides;
        state
            .model(&self.group)
            .is_some_and(|group| group.deployments().len() > 1)
            || config.has_fallbacks(&self.requested_group)
            || (config.retry_base_delay_ms > 0
                && self
                    .own_retries()
                    .unwrap_or_else(|| config.max_default_retries(&self.current))
                    > 0)
            || [
                &own.fallbacks,
                &own.context_window_fallbacks,
                &own.content_policy_fallbacks,
            ]
            .into_iter()
            .any(|list| list.as_ref().is_some_and(|list| !list.is_empty()))
    }

    /// The current attempt failed with `class`: chooses the next attempt's deployment and
    /// makes it current, or says there is none. A retry stays in the group (on a deployment
    /// not tried yet when there is one) while the class's retries last; then the request
    /// falls back to the groups the class's fallback list names, in order, each with
    /// retries of its own.
    pub fn next(
        &mut self,
        class: ErrorClass,
        chooser: &mut Chooser<'_>,
    ) -> Option<Arc<Deployment>> {
        if self.attempts() >= MAX_ATTEMPTS {
            return None;
        }
        let config: &RouterConfig = &chooser.state.router;
        if self.retries_in_group < self.retries_for(class, config) {
            if let Some(next) = chooser.choose(&self.group, &self.tried) {
                self.retries_in_group += 1;
                self.retries += 1;
                return Some(self.advance(next));
            }
        }
        if self.fallbacks.is_none() {
            self.fallbacks = Some((self.fallbacks_for(class, config), 0));
        }
        let (list, position) = self.fallbacks.as_mut()?;
        while let Some(group) = list.get(*position).cloned() {
            *position += 1;
            if group == self.group {
                continue;
            }
            if let Some(next) = chooser.choose(&group, &self.tried) {
                self.group = group;
                self.retries_in_group = 0;
                self.fallbacks_used += 1;
                return Some(self.advance(next));
            }
        }
        None
    }

    /// The current deployment cannot take the request before it is sent (its own rpm / tpm
    /// cap is reached): another deployment of the group not tried yet takes its place,
    /// without counting as a retry; `None` when there is none.
    pub fn instead(&mut self, chooser: &mut Chooser<'_>) -> Option<Arc<Deployment>> {
        let next = chooser
            .choose(&self.group, &self.tried)
            .filter(|next| !self.tried.contains(&next.id))?;
        self.tried.push(next.id.clone());
        self.current = Arc::clone(&next);
        Some(next)
    }

    fn advance(&mut self, next: Arc<Deployment>) -> Arc<Deployment> {
        if self.tried.contains(&next.id) {
            self.repeats = self.repeats.saturating_add(1);
        }
        self.tried.push(next.id.clone());
        self.current = Arc::clone(&next);
        next
    }
}

/// One request's entry in the ledger.
#[derive(Debug, Clone)]
pub struct LedgerEntry {
    /// Its plan.
    pub plan: RoutePlan,
    /// The snapshot it arrived under: every attempt is planned with it (the attempts
    /// listener's filter may hold a newer one, or, in its first moments, none).
    pub state: Arc<State>,
    /// Who sent it (checked on the gateway's listener; attempts are not authenticated
    /// again).
    pub caller: Caller,
    /// The request's estimated tokens.
    pub estimated_tokens: u64,
    /// The request's tags (metadata.tags and the x-litellm-tags header), for tag routing.
    pub tags: Vec<String>,
    /// The x-litellm-tags header's tags, for the attempts' usage records (the header does
    /// not travel to the attempts listener).
    pub header_tags: Vec<String>,
    /// The client's x-request-id, for the same records.
    pub request_id: Option<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// When it was opened.
    pub opened_ms: u64,
}

/// The requests being tried through the attempts route, by key.
#[derive(Debug, Default)]
pub struct AttemptLedger {
    entries: HashMap<String, LedgerEntry>,
}

impl AttemptLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        AttemptLedger::default()
    }

    /// Opens an entry and returns its key (`ids` makes it: 128 random bits).
    pub fn open(&mut self, entry: LedgerEntry, ids: &mut RecordIds) -> String {
        if self.entries.len() >= MAX_OPEN_ENTRIES {
            self.expire(entry.opened_ms);
        }
        if self.entries.len() >= MAX_OPEN_ENTRIES {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.opened_ms)
                .map(|(key, _)| key.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        let key = ids.next_id();
        self.entries.insert(key.clone(), entry);
        key
    }

    /// The entry of `key`.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut LedgerEntry> {
        self.entries.get_mut(key)
    }

    /// The entry of `key`.
    pub fn get(&self, key: &str) -> Option<&LedgerEntry> {
        self.entries.get(key)
    }

    /// Closes the entry of `key` (its request ended).
    pub fn close(&mut self, key: &str) -> Option<LedgerEntry> {
        self.entries.remove(key)
    }

    /// Entries open now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops entries opened more than [`ENTRY_TTL_MS`] before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        self.entries
            .retain(|_, entry| now_ms.saturating_sub(entry.opened_ms) < ENTRY_TTL_MS);
    }
}

/// The routing state a filter keeps across requests: the book, the ledger, and the random
/// choices (one per Wasm VM, one for the whole native module).
#[derive(Debug)]
pub struct Routing {
    /// The routing view of each deployment.
    pub book: RoutingBook,
    /// Requests being tried through the attempts route.
    pub ledger: AttemptLedger,
    /// Random choices.
    pub shuffler: Shuffler,
    /// Ledger keys.
    pub keys: RecordIds,
    /// When the filter started (Unix ms), for the health report's uptime.
    pub started_ms: u64,
}

impl Routing {
    /// The state of a filter that starts at `now_ms`, from random bits `seed`.
    pub fn new(seed: u128, now_ms: u64) -> Self {
        Routing {
            started_ms: now_ms,
            book: RoutingBook::new(),
            ledger: AttemptLedger::new(),
            // Different bits for the two: the keys must not reveal the shuffle.
            shuffler: Shuffler::new(u64::try_from(seed >> 64).unwrap_or(1)),
            keys: RecordIds::new(seed.rotate_left(17) ^ 0x5bd1_e995_5bd1_e995),
        }
    }
}
