//! Rate limits: requests per minute, tokens per minute and requests in flight, of keys, of
//! a key on one model, of users, teams, deployments and the whole gateway.
//!
//! The control plane is the authority on every counter (its database is shared by its
//! replicas): it leases each filter a part of a window's quota and never leases more in a
//! window than the limit, so a limit holds across any number of Envoys and is not multiplied
//! by them. A filter admits requests from what it holds ([`QuotaBook`]) without asking anyone,
//! and asks for more (a [`proto::QuotaAsk`] on its sync stream) before it runs out. A request
//! waits for the authority only when the filter holds nothing for it: the first request of a
//! window on a counter, or the last requests before a limit, where leases shrink to one.
//!
//! When the authority does not answer within [`AUTHORITY_WAIT_MS`] (or the stream is down),
//! the filter decides alone for the rest of the window, counting its own requests against
//! the whole limit: traffic goes on, and each limit may then be exceeded by as many times as
//! there are filters, for that window only.

use std::collections::HashMap;

use crate::auth::Caller;
use crate::proto::{self, BudgetScope, LimitKind};
use crate::snapshot::Deployment;
use crate::spend::key_model_id;
use crate::State;

/// Length of an rpm / tpm window: one minute of unix time, so that every filter and the
/// control plane agree on the window a request falls in.
pub const WINDOW_MS: u64 = 60_000;
/// How long a request waits for a lease before the filter decides alone.
pub const AUTHORITY_WAIT_MS: u64 = 1_000;
/// How long a filter refuses on a parallel limit the authority had no slot for, before it
/// asks again (slots free up as other filters' requests end; the authority does not say when).
const PARALLEL_EXHAUSTED_MS: u64 = 100;
/// A counter not used for this long is forgotten (memory stays bounded by the keys in use).
const FORGET_AFTER_MS: u64 = 3 * WINDOW_MS;

/// The rate limits of one scope. `None` is no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Requests in flight.
    pub parallel: Option<u64>,
}

impl Limits {
    /// The limits the control plane sent; `None` when it set none.
    pub fn of(limits: Option<&proto::RateLimits>) -> Option<Limits> {
        let limits = limits?;
        let built = Limits {
            rpm: limits.rpm,
            tpm: limits.tpm,
            parallel: limits.max_parallel_requests,
        };
        (built != Limits::default()).then_some(built)
    }
}

/// Rate limits of the scopes the snapshot's settings carry (keys and deployments carry
/// their own).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeLimits {
    /// `general_settings` rpm_limit / tpm_limit / global_max_parallel_requests.
    pub global: Option<Limits>,
    /// By user id.
    pub users: HashMap<String, Limits>,
    /// By team id.
    pub teams: HashMap<String, Limits>,
}

impl ScopeLimits {
    /// Builds them from `Settings.rate_limits`; entries of scopes settings do not carry are
    /// reported in `problems`.
    pub fn from_proto(entries: Vec<proto::ScopedRateLimits>, problems: &mut Vec<String>) -> Self {
        let mut built = ScopeLimits::default();
        for (index, entry) in entries.into_iter().enumerate() {
            let Some(limits) = Limits::of(entry.limits.as_ref()) else {
                continue;
            };
            match BudgetScope::try_from(entry.scope) {
                Ok(BudgetScope::Global) => built.global = Some(limits),
                Ok(BudgetScope::User) => {
                    built.users.insert(entry.id, limits);
                }
                Ok(BudgetScope::Team) => {
                    built.teams.insert(entry.id, limits);
                }
                _ => problems.push(format!(
                    "settings.rate_limits[{index}]: scope {} is not one settings carry",
                    entry.scope
                )),
            }
        }
        built
    }
}

/// One rate-limit counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterId {
    /// Whose.
    pub scope: BudgetScope,
    /// Key hash, user id, team id, `<key hash>/<model>`, deployment id, or empty (global).
    pub id: String,
    /// What it counts.
    pub kind: LimitKind,
}

/// What a request takes from one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The counter.
    pub counter: CounterId,
    /// Its limit.
    pub limit: u64,
    /// 1 request or slot, or the tokens the request is estimated at.
    pub amount: u64,
}

/// The tokens a request is estimated at before it is sent: a token per four bytes of the
/// request body (the usual rule of thumb, and an overestimate for JSON). The estimate is
/// corrected from the usage the provider reports once the answer is in.
pub fn estimate_tokens(body_size: usize) -> u64 {
    u64::try_from(body_size).unwrap_or(u64::MAX).div_ceil(4)
}

/// The counters a request for `model` by `caller`, sent to `deployment`, counts against, in
/// the order a refusal reports them (the narrowest scope first). Empty, without allocating,
/// when nothing is limited.
pub fn needs_of(
    state: &State,
    caller: &Caller,
    model: &str,
    deployment: &Deployment,
    estimated_tokens: u64,
) -> Vec<Need> {
    let mut needs = Vec::new();
    let mut add = |scope: BudgetScope, id: &dyn Fn() -> String, limits: &Limits| {
        let mut push = |kind: LimitKind, limit: Option<u64>, amount: u64| {
            if let Some(limit) = limit {
                needs.push(Need {
                    counter: CounterId {
                        scope,
                        id: id(),
                        kind,
                    },
                    limit,
                    amount,
                });
            }
        };
        push(LimitKind::Requests, limits.rpm, 1);
        push(LimitKind::Tokens, limits.tpm, estimated_tokens);
        push(LimitKind::Parallel, limits.parallel, 1);
    };
    if let Some(key) = &caller.key {
        if let Some(limits) = &key.limits {
            add(BudgetScope::Key, &|| caller.key_hash.clone(), limits);
        }
        if let Some((_, limits)) = key.model_limits.iter().find(|(name, _)| name == model) {
            add(
                BudgetScope::KeyModel,
                &|| key_model_id(&caller.key_hash, model),
                limits,
            );
        }
        let scopes = &state.rate_limits;
        if let Some(limits) = scopes.users.get(&key.user_id) {
            add(BudgetScope::User, &|| key.user_id.clone(), limits);
        }
        if let Some(limits) = scopes.teams.get(&key.team_id) {
            add(BudgetScope::Team, &|| key.team_id.clone(), limits);
        }
    }
    if let Some(limits) = &deployment.limits {
        add(BudgetScope::Deployment, &|| deployment.id.clone(), limits);
    }
    if let Some(limits) = &state.rate_limits.global {
        add(BudgetScope::Global, &String::new, limits);
    }
    needs
}

/// The `x-ratelimit-*` figures of a request: of its tightest requests counter and of its
/// tightest tokens counter (the one with the least left).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// Limit and what is left of it, requests.
    pub requests: Option<(u64, u64)>,
    /// Limit and what is left of it, tokens.
    pub tokens: Option<(u64, u64)>,
    /// Milliseconds until the window ends.
    pub reset_ms: u64,
    /// Start of the window the request counted in (unix ms).
    pub window_start_ms: u64,
}

impl RateHeaders {
    /// The response headers, OpenAI's names (which the official SDKs read) plus the window
    /// the request counted in.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        let reset = format!("{}s", self.reset_ms.div_ceil(1000));
        if let Some((limit, remaining)) = self.requests {
            headers.push(("x-ratelimit-limit-requests", limit.to_string()));
            headers.push(("x-ratelimit-remaining-requests", remaining.to_string()));
            headers.push(("x-ratelimit-reset-requests", reset.clone()));
        }
        if let Some((limit, remaining)) = self.tokens {
            headers.push(("x-ratelimit-limit-tokens", limit.to_string()));
            headers.push(("x-ratelimit-remaining-tokens", remaining.to_string()));
            headers.push(("x-ratelimit-reset-tokens", reset));
        }
        if self.requests.is_some() || self.tokens.is_some() {
            headers.push((
                "x-tollgate-ratelimit-window",
                self.window_start_ms.to_string(),
            ));
        }
        headers
    }
}

/// Why a request is refused: the counter that has nothing left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRefusal {
    /// The counter.
    pub counter: CounterId,
    /// Its limit.
    pub limit: u64,
    /// What the request needed of it.
    pub requested: u64,
    /// Milliseconds until it may have room again (`Retry-After`).
    pub retry_after_ms: u64,
    /// The headers of the refusal.
    pub headers: RateHeaders,
}

/// What [`QuotaBook::admit`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Taken from the leases: send it.
    Admitted(RateHeaders),
    /// A lease has been asked for: ask again when the authority answers (or after
    /// [`AUTHORITY_WAIT_MS`]).
    Wait,
    /// A counter is spent for now.
    Refused(Box<RateRefusal>),
}

/// Where a counter stands with the authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Leases can be asked for.
    Open,
    /// A lease was asked for at this time (unix ms), needing this much, in the quota
    /// request with this id (only its answer settles the ask: a release sent meanwhile is
    /// answered with 0, which is no refusal).
    Asking {
        since_ms: u64,
        need: u64,
        request_id: u64,
    },
    /// The authority has nothing left until this time (unix ms).
    Exhausted { until_ms: u64 },
    /// The authority could not be reached: the filter counts alone against the whole limit
    /// until the window ends (parallel counters: until the stream is back).
    Alone,
}

/// What this filter holds of one counter.
#[derive(Debug, Clone)]
struct Counter {
    limit: u64,
    /// Start of the window held (unix ms); 0 for a parallel counter.
    window_start_ms: u64,
    /// Leased for the window (parallel: slots held).
    held: u64,
    /// Taken by requests (parallel: in flight). May pass `held` when tokens were
    /// underestimated: the difference is charged to the window as overrun.
    used: u64,
    /// Overrun not yet reported to the authority.
    overrun: u64,
    /// What the authority had left after its last grant (the limit before any).
    remaining: u64,
    standing: Standing,
    last_used_ms: u64,
}

impl Counter {
    fn new(limit: u64, window_start_ms: u64, now_ms: u64) -> Self {
        Counter {
            limit,
            window_start_ms,
            held: 0,
            used: 0,
            overrun: 0,
            remaining: limit,
            standing: Standing::Open,
            last_used_ms: now_ms,
        }
    }

    /// What is left to admit from.
    fn available(&self) -> u64 {
        match self.standing {
            Standing::Alone => self.limit.saturating_sub(self.used),
            _ => self.held.saturating_sub(self.used),
        }
    }

    /// What is left of the limit as far as this filter knows: the authority's remainder
    /// plus its own unused lease.
    fn left(&self) -> u64 {
        match self.standing {
            Standing::Alone => self.limit.saturating_sub(self.used),
            _ => self.remaining.saturating_add(self.available()),
        }
    }

    /// The lease this filter asks for: a twentieth of the limit, at least what is needed.
    fn lease_size(&self, need: u64) -> u64 {
        (self.limit / 20).max(need).max(1)
    }

    /// Whether the authority has plenty left (eight leases of `lease`): only then does this
    /// filter ask ahead or keep spare parallel slots. Near the limit it holds no more than
    /// its requests need, so that no filter sits on quota another filter's request is
    /// refused for.
    fn authority_has_plenty(&self, lease: u64) -> bool {
        self.remaining >= lease.saturating_mul(8)
    }
}

fn window_of(kind: LimitKind, now_ms: u64) -> u64 {
    match kind {
        LimitKind::Parallel => 0,
        _ => now_ms - now_ms % WINDOW_MS,
    }
}

/// The quota a filter holds (one per Wasm VM, one per native module), and the asks it has
/// for the authority.
#[derive(Debug, Default)]
pub struct QuotaBook {
    counters: HashMap<CounterId, Counter, foldhash::fast::RandomState>,
    outbox: Vec<proto::QuotaAsk>,
    next_request_id: u64,
    connected: bool,
    last_forget_ms: u64,
}

impl QuotaBook {
    /// An empty book, with no stream yet.
    pub fn new() -> Self {
        QuotaBook::default()
    }

    /// Takes what `needs` asks for, if every counter has it; else asks the authority, or
    /// refuses when a counter is spent. Nothing is taken unless everything is.
    pub fn admit(&mut self, needs: &[Need], now_ms: u64) -> Admission {
        // First whether a counter refuses, with no ask sent: a refused request must not
        // make this filter hold quota it will not use (another filter's request may need it).
        let mut refused: Option<RateRefusal> = None;
        for need in needs {
            let window = window_of(need.counter.kind, now_ms);
            // Looked up first: the id is cloned only for a counter this book has not seen.
            let counter = match self.counters.get_mut(&need.counter) {
                Some(counter) => counter,
                None => self
                    .counters
                    .entry(need.counter.clone())
                    .or_insert_with(|| Counter::new(need.limit, window, now_ms)),
            };
            roll(counter, window, need.limit, now_ms);
            counter.last_used_ms = now_ms;
            match counter.standing {
                Standing::Exhausted { until_ms } if now_ms >= until_ms => {
                    // A parallel limit's slots may have been freed elsewhere: ask again.
                    counter.standing = Standing::Open;
                }
                Standing::Asking { since_ms, .. }
                    if now_ms.saturating_sub(since_ms) >= AUTHORITY_WAIT_MS =>
                {
                    counter.standing = Standing::Alone;
                }
                Standing::Open if !self.connected => counter.standing = Standing::Alone,
                _ => {}
            }
            if counter.available() >= need.amount || refused.is_some() {
                continue;
            }
            let retry_after_ms = match counter.standing {
                Standing::Exhausted { until_ms } => until_ms.saturating_sub(now_ms).max(1),
                Standing::Alone => retry_after_alone(need.counter.kind, now_ms),
                Standing::Open | Standing::Asking { .. } => continue,
            };
            refused = Some(RateRefusal {
                counter: need.counter.clone(),
                limit: need.limit,
                requested: need.amount,
                retry_after_ms,
                headers: RateHeaders::default(),
            });
        }
        if let Some(mut refusal) = refused {
            refusal.headers = self.headers(needs, now_ms);
            self.give_back_unused(needs, &refusal.counter);
            return Admission::Refused(Box::new(refusal));
        }
        // Then a lease for every counter that has too little (each asked once at a time).
        let mut waiting = false;
        for need in needs {
            let Some(counter) = self.counters.get_mut(&need.counter) else {
                continue;
            };
            let short = need.amount.saturating_sub(counter.available());
            if short == 0 {
                continue;
            }
            waiting = true;
            if counter.standing == Standing::Open {
                let want = counter.lease_size(short);
                let request_id = self.next_request_id.wrapping_add(1);
                self.outbox
                    .push(ask(&need.counter, counter, short, want, request_id, now_ms));
            }
        }
        if waiting {
            return Admission::Wait;
        }
        for need in needs {
            let Some(counter) = self.counters.get_mut(&need.counter) else {
                continue;
            };
            counter.used = counter.used.saturating_add(need.amount);
            // Ask for the next lease before this one runs out, so that requests far from
            // the limit never wait.
            let want = counter.lease_size(need.amount);
            if counter.standing == Standing::Open
                && self.connected
                && counter.available() <= want / 2
                && counter.authority_has_plenty(want)
            {
                let request_id = self.next_request_id.wrapping_add(1);
                self.outbox
                    .push(ask(&need.counter, counter, 1, want, request_id, now_ms));
            }
        }
        Admission::Admitted(self.headers(needs, now_ms))
    }

    /// After a refusal: the leases this filter holds on the request's other counters, near
    /// their limits, go back to the authority (a request that waited for several counters
    /// and was refused by one holds the others' grants, which another filter's request may
    /// need; far from a limit they stay, for this filter's next requests).
    fn give_back_unused(&mut self, needs: &[Need], refused: &CounterId) {
        if !self.connected {
            return;
        }
        for need in needs {
            if &need.counter == refused {
                continue;
            }
            let Some(counter) = self.counters.get_mut(&need.counter) else {
                continue;
            };
            let unused = counter.available();
            let lease = counter.lease_size(need.amount);
            if unused == 0
                || counter.authority_has_plenty(lease)
                || matches!(counter.standing, Standing::Alone | Standing::Asking { .. })
            {
                continue;
            }
            counter.held -= unused;
            counter.remaining = counter.remaining.saturating_add(unused);
            self.outbox.push(release(&need.counter, counter, unused));
        }
    }

    /// A finished request gives back what it held: its parallel slots, and the difference
    /// between its token estimate and the `tokens` it used (when the provider said).
    pub fn settle(&mut self, needs: &[Need], tokens: Option<u64>, now_ms: u64) {
        for need in needs {
            let Some(counter) = self.counters.get_mut(&need.counter) else {
                continue;
            };
            match need.counter.kind {
                LimitKind::Parallel => {
                    counter.used = counter.used.saturating_sub(need.amount);
                    let surplus = counter.held.saturating_sub(counter.used);
                    // Keep a lease's worth for the next request while the authority has
                    // plenty; give everything back near the limit, so that no slot sits
                    // idle here while another filter refuses for want of one.
                    let lease = counter.lease_size(1);
                    let keep = if counter.authority_has_plenty(lease) {
                        lease
                    } else {
                        0
                    };
                    if matches!(counter.standing, Standing::Exhausted { .. }) {
                        counter.standing = Standing::Open;
                    }
                    if surplus > keep && self.connected && counter.standing != Standing::Alone {
                        let spare = surplus - keep;
                        counter.held -= spare;
                        self.outbox.push(release(&need.counter, counter, spare));
                    }
                }
                LimitKind::Tokens => {
                    let Some(tokens) = tokens else { continue };
                    if counter.window_start_ms != window_of(LimitKind::Tokens, now_ms)
                        && counter.window_start_ms.saturating_add(WINDOW_MS) <= now_ms
                    {
                        // The window it was estimated in is over: nothing to correct.
                        continue;
                    }
                    if tokens >= need.amount {
                        counter.used = counter.used.saturating_add(tokens - need.amount);
                        if counter.standing != Standing::Alone && counter.used > counter.held {
                            counter.overrun =
                                counter.overrun.saturating_add(counter.used - counter.held);
                            counter.held = counter.used;
                        }
                    } else {
                        counter.used = counter.used.saturating_sub(need.amount - tokens);
                        // The estimate was high: near the limit what it held beyond the tokens
                        // used goes back, so that another filter's request may have it.
                        let unused = counter.available();
                        let lease = counter.lease_size(need.amount);
                        if self.connected
                            && unused > 0
                            && !counter.authority_has_plenty(lease)
                            && matches!(
                                counter.standing,
                                Standing::Open | Standing::Exhausted { .. }
                            )
                        {
                            counter.held -= unused;
                            counter.remaining = counter.remaining.saturating_add(unused);
                            counter.standing = Standing::Open;
                            self.outbox.push(release(&need.counter, counter, unused));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Takes the authority's answer.
    pub fn apply(&mut self, grant: &proto::QuotaGrant, now_ms: u64) {
        for lease in &grant.leases {
            let (Ok(scope), Ok(kind)) = (
                BudgetScope::try_from(lease.scope),
                LimitKind::try_from(lease.kind),
            ) else {
                continue;
            };
            let id = CounterId {
                scope,
                id: lease.id.clone(),
                kind,
            };
            let Some(counter) = self.counters.get_mut(&id) else {
                continue;
            };
            if counter.window_start_ms != lease.window_start_unix_ms {
                // A lease for a window that is over.
                continue;
            }
            counter.held = counter.held.saturating_add(lease.granted);
            counter.remaining = lease.remaining;
            if let Standing::Asking {
                need, request_id, ..
            } = counter.standing
            {
                if request_id != grant.request_id {
                    continue;
                }
                counter.standing = if lease.granted < need {
                    let until_ms = match kind {
                        LimitKind::Parallel => now_ms.saturating_add(PARALLEL_EXHAUSTED_MS),
                        _ => counter.window_start_ms.saturating_add(WINDOW_MS),
                    };
                    Standing::Exhausted { until_ms }
                } else {
                    Standing::Open
                };
            }
        }
    }

    /// Whether a stream to the authority is up. A lost stream ends every wait: those
    /// counters are counted alone. A new one starts over (the authority freed the slots of
    /// the old stream).
    pub fn set_connected(&mut self, connected: bool) {
        if self.connected == connected {
            return;
        }
        self.connected = connected;
        self.outbox.clear();
        for counter in self.counters.values_mut() {
            if connected {
                if counter.window_start_ms == 0 {
                    counter.held = 0;
                }
                if counter.standing == Standing::Alone {
                    counter.standing = Standing::Open;
                }
            } else if matches!(counter.standing, Standing::Asking { .. }) {
                counter.standing = Standing::Alone;
            }
        }
    }

    /// Periodic upkeep: waits past [`AUTHORITY_WAIT_MS`] end (their counters are counted
    /// alone), and counters unused for a while are forgotten. Whether a wait ended (the
    /// requests waiting must then be admitted again).
    pub fn tick(&mut self, now_ms: u64) -> bool {
        let mut ended = false;
        for counter in self.counters.values_mut() {
            if let Standing::Asking { since_ms, .. } = counter.standing {
                if now_ms.saturating_sub(since_ms) >= AUTHORITY_WAIT_MS {
                    counter.standing = Standing::Alone;
                    ended = true;
                }
            }
        }
        if now_ms.saturating_sub(self.last_forget_ms) >= WINDOW_MS {
            self.last_forget_ms = now_ms;
            self.counters.retain(|_, counter| {
                counter.used > 0 && counter.window_start_ms == 0
                    || now_ms.saturating_sub(counter.last_used_ms) < FORGET_AFTER_MS
            });
        }
        ended
    }

    /// Whether asks wait to be sent.
    pub fn has_asks(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The asks to send, as one request (`None` when there are none).
    pub fn take_request(&mut self) -> Option<proto::QuotaRequest> {
        if self.outbox.is_empty() {
            return None;
        }
        self.next_request_id = self.next_request_id.wrapping_add(1);
        Some(proto::QuotaRequest {
            request_id: self.next_request_id,
            asks: std::mem::take(&mut self.outbox),
        })
    }

    /// Whether any request waits on the authority.
    pub fn is_waiting(&self) -> bool {
        self.counters
            .values()
            .any(|counter| matches!(counter.standing, Standing::Asking { .. }))
    }

    fn headers(&self, needs: &[Need], now_ms: u64) -> RateHeaders {
        let mut headers = RateHeaders::default();
        let tighter = |slot: &mut Option<(u64, u64)>, limit: u64, left: u64| {
            if slot.is_none_or(|(_, shown)| left < shown) {
                *slot = Some((limit, left));
            }
        };
        for need in needs {
            let Some(counter) = self.counters.get(&need.counter) else {
                continue;
            };
            let left = counter.left().min(counter.limit);
            match need.counter.kind {
                LimitKind::Requests => tighter(&mut headers.requests, counter.limit, left),
                LimitKind::Tokens => tighter(&mut headers.tokens, counter.limit, left),
                _ => continue,
            }
            headers.window_start_ms = counter.window_start_ms;
        }
        let window = now_ms - now_ms % WINDOW_MS;
        headers.reset_ms = WINDOW_MS - (now_ms - window);
        headers
    }
}

/// A new window starts from nothing held; a changed limit is taken as it comes.
fn roll(counter: &mut Counter, window: u64, limit: u64, now_ms: u64) {
    counter.limit = limit;
    if counter.window_start_ms == window {
        return;
    }
    *counter = Counter::new(limit, window, now_ms);
}

/// An ask for a lease on `counter` (carrying its unreported overrun), which then waits for
/// the answer to quota request `request_id`.
fn ask(
    id: &CounterId,
    counter: &mut Counter,
    need: u64,
    want: u64,
    request_id: u64,
    now_ms: u64,
) -> proto::QuotaAsk {
    let ask = proto::QuotaAsk {
        need,
        want: want.max(need),
        overrun: counter.overrun,
        ..release(id, counter, 0)
    };
    counter.overrun = 0;
    counter.standing = Standing::Asking {
        since_ms: now_ms,
        need,
        request_id,
    };
    ask
}

/// An ask that only gives `amount` of `counter` back to the authority.
fn release(id: &CounterId, counter: &Counter, amount: u64) -> proto::QuotaAsk {
    proto::QuotaAsk {
        scope: id.scope as i32,
        id: id.id.clone(),
        kind: id.kind as i32,
        limit: counter.limit,
        window_start_unix_ms: counter.window_start_ms,
        need: 0,
        want: 0,
        overrun: 0,
        release: amount,
    }
}

fn retry_after_alone(kind: LimitKind, now_ms: u64) -> u64 {
    match kind {
        LimitKind::Parallel => 1_000,
        _ => WINDOW_MS - now_ms % WINDOW_MS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000 - 1_800_000_000_000 % WINDOW_MS;

    fn need(kind: LimitKind, limit: u64, amount: u64) -> Need {
        Need {
            counter: CounterId {
                scope: BudgetScope::Key,
                id: "k".into(),
                kind,
            },
            limit,
            amount,
        }
    }

    fn grant(
        request: &proto::QuotaRequest,
        granted: &[u64],
        remaining: &[u64],
    ) -> proto::QuotaGrant {
        proto::QuotaGrant {
            request_id: request.request_id,
            leases: request
                .asks
                .iter()
                .zip(granted.iter().zip(remaining))
                .map(|(ask, (granted, remaining))| proto::QuotaLease {
                    scope: ask.scope,
                    id: ask.id.clone(),
                    kind: ask.kind,
                    window_start_unix_ms: ask.window_start_unix_ms,
                    granted: *granted,
                    remaining: *remaining,
                })
                .collect(),
        }
    }

    fn connected() -> QuotaBook {
        let mut book = QuotaBook::new();
        book.set_connected(true);
        book
    }

    #[test]
    fn the_first_request_waits_for_a_lease_then_is_admitted_from_it() {
        let mut book = connected();
        let rpm = [need(LimitKind::Requests, 60, 1)];
        assert_eq!(book.admit(&rpm, T0), Admission::Wait);
        let request = book.take_request().expect("an ask");
        assert_eq!(request.asks.len(), 1);
        let ask = &request.asks[0];
        assert_eq!((ask.need, ask.want, ask.limit), (1, 3, 60));
        assert_eq!(ask.window_start_unix_ms, T0);
        book.apply(&grant(&request, &[3], &[57]), T0);
        let Admission::Admitted(headers) = book.admit(&rpm, T0 + 1) else {
            panic!("admitted");
        };
        assert_eq!(headers.requests, Some((60, 59)));
        assert_eq!(headers.window_start_ms, T0);
        assert_eq!(headers.reset_ms, WINDOW_MS - 1);
        // Two left of the lease: the next is admitted at once and asks ahead (low water).
        assert!(matches!(book.admit(&rpm, T0 + 2), Admission::Admitted(_)));
        let ahead = book.take_request().expect("an ask ahead");
        assert_eq!((ahead.asks[0].need, ahead.asks[0].want), (1, 3));
        // The third still comes from the lease while the ask is out.
        assert!(matches!(book.admit(&rpm, T0 + 3), Admission::Admitted(_)));
        assert_eq!(book.admit(&rpm, T0 + 4), Admission::Wait);
    }

    #[test]
    fn near_its_limit_a_filter_asks_for_no_more_than_it_needs() {
        let mut book = connected();
        let rpm = [need(LimitKind::Requests, 3, 1)];
        assert_eq!(book.admit(&rpm, T0), Admission::Wait);
        let request = book.take_request().expect("an ask");
        assert_eq!((request.asks[0].need, request.asks[0].want), (1, 1));
        book.apply(&grant(&request, &[1], &[2]), T0);
        assert!(matches!(book.admit(&rpm, T0), Admission::Admitted(_)));
        // Two left at the authority: not plenty, so no lease is held ahead for this filter
        // (another filter's next request may need it).
        assert!(book.take_request().is_none());
    }

    #[test]
    fn an_exhausted_counter_refuses_until_its_window_ends() {
        let mut book = connected();
        let rpm = [need(LimitKind::Requests, 1, 1)];
        assert_eq!(book.admit(&rpm, T0 + 10_000), Admission::Wait);
        let request = book.take_request().expect("ask");
        book.apply(&grant(&request, &[1], &[0]), T0 + 10_000);
        assert!(matches!(
            book.admit(&rpm, T0 + 10_001),
            Admission::Admitted(_)
        ));
        assert!(book.take_request().is_none(), "the authority has none left");
        assert_eq!(book.admit(&rpm, T0 + 10_002), Admission::Wait);
        let request = book.take_request().expect("ask");
        book.apply(&grant(&request, &[0], &[0]), T0 + 10_003);
        let Admission::Refused(refusal) = book.admit(&rpm, T0 + 20_000) else {
            panic!("refused");
        };
        assert_eq!(refusal.retry_after_ms, 40_000);
        assert_eq!(refusal.headers.requests, Some((1, 0)));
        // The next window starts over.
        assert_eq!(book.admit(&rpm, T0 + WINDOW_MS), Admission::Wait);
    }

    #[test]
    fn nothing_is_taken_unless_every_counter_has_it() {
        let mut book = connected();
        let key = need(LimitKind::Requests, 60, 1);
        let mut team = need(LimitKind::Requests, 1, 1);
        team.counter.scope = BudgetScope::Team;
        assert_eq!(
            book.admit(&[key.clone(), team.clone()], T0),
            Admission::Wait
        );
        let request = book.take_request().expect("asks");
        assert_eq!(request.asks.len(), 2);
        book.apply(&grant(&request, &[3, 0], &[57, 0]), T0);
        let Admission::Refused(refusal) = book.admit(&[key.clone(), team], T0) else {
            panic!("refused by the team");
        };
        assert_eq!(refusal.counter.scope, BudgetScope::Team);
        // The key's lease is untouched: three requests on the key alone.
        for _ in 0..3 {
            assert!(matches!(
                book.admit(std::slice::from_ref(&key), T0),
                Admission::Admitted(_)
            ));
        }
    }

    #[test]
    fn a_refused_request_asks_for_nothing() {
        let mut book = connected();
        let mut team = need(LimitKind::Requests, 1, 1);
        team.counter.scope = BudgetScope::Team;
        assert_eq!(book.admit(std::slice::from_ref(&team), T0), Admission::Wait);
        let request = book.take_request().expect("ask");
        book.apply(&grant(&request, &[0], &[0]), T0);
        // The team is spent: the key's counter, new, gets no lease asked for.
        let key = need(LimitKind::Requests, 60, 1);
        assert!(matches!(
            book.admit(&[team, key], T0),
            Admission::Refused(_)
        ));
        assert!(book.take_request().is_none());
    }

    #[test]
    fn a_refused_request_gives_back_the_leases_it_waited_for() {
        let mut book = connected();
        let key = need(LimitKind::Requests, 4, 1);
        let mut user = need(LimitKind::Requests, 2, 1);
        user.counter.scope = BudgetScope::User;
        let both = [key.clone(), user];
        assert_eq!(book.admit(&both, T0), Admission::Wait);
        let request = book.take_request().expect("asks");
        // The key gets its one, the user's limit is spent elsewhere.
        book.apply(&grant(&request, &[1, 0], &[3, 0]), T0);
        assert!(matches!(book.admit(&both, T0), Admission::Refused(_)));
        let release = book.take_request().expect("the key's lease goes back");
        assert_eq!(release.asks.len(), 1);
        let ask = &release.asks[0];
        assert_eq!(
            (ask.scope, ask.need, ask.release, ask.window_start_unix_ms),
            (BudgetScope::Key as i32, 0, 1, T0)
        );
    }

    #[test]
    fn tokens_are_corrected_from_usage_and_overrun_is_reported() {
        let mut book = connected();
        let tpm = [need(LimitKind::Tokens, 100, 10)];
        assert_eq!(book.admit(&tpm, T0), Admission::Wait);
        let request = book.take_request().expect("ask");
        assert_eq!((request.asks[0].need, request.asks[0].want), (10, 10));
        book.apply(&grant(&request, &[10], &[90]), T0);
        assert!(matches!(book.admit(&tpm, T0), Admission::Admitted(_)));
        let ahead = book.take_request().expect("an ask ahead");
        book.apply(&grant(&ahead, &[10], &[80]), T0);
        // It used 25 of the 20 held: 5 beyond the leases, reported with the next ask.
        book.settle(&tpm, Some(25), T0 + 5);
        assert_eq!(book.admit(&tpm, T0 + 6), Admission::Wait);
        let request = book.take_request().expect("ask");
        assert_eq!((request.asks[0].need, request.asks[0].overrun), (10, 5));
        // An answer smaller than its estimate gives the difference back.
        book.apply(&grant(&request, &[10], &[70]), T0 + 6);
        assert!(matches!(book.admit(&tpm, T0 + 7), Admission::Admitted(_)));
        // Near the limit (70 left is under eight leases of 10), the 6 it did not use go back
        // to the authority at once, for any filter's next request.
        book.settle(&tpm, Some(4), T0 + 8);
        let release = book.take_request().expect("a release");
        assert_eq!(
            (
                release.asks[0].need,
                release.asks[0].release,
                release.asks[0].kind
            ),
            (0, 6, LimitKind::Tokens as i32)
        );
        assert_eq!(book.admit(&tpm, T0 + 9), Admission::Wait);
    }

    #[test]
    fn parallel_slots_are_given_back_when_the_authority_has_none() {
        let mut book = connected();
        let slot = [need(LimitKind::Parallel, 2, 1)];
        assert_eq!(book.admit(&slot, T0), Admission::Wait);
        let request = book.take_request().expect("ask");
        assert_eq!(request.asks[0].window_start_unix_ms, 0);
        book.apply(&grant(&request, &[1], &[0]), T0);
        assert!(matches!(book.admit(&slot, T0), Admission::Admitted(_)));
        book.settle(&slot, None, T0 + 1);
        let release = book.take_request().expect("a release");
        assert_eq!((release.asks[0].release, release.asks[0].need), (1, 0));
    }

    #[test]
    fn a_spent_parallel_limit_is_asked_again_after_a_moment() {
        let mut book = connected();
        let slot = [need(LimitKind::Parallel, 1, 1)];
        assert_eq!(book.admit(&slot, T0), Admission::Wait);
        let request = book.take_request().expect("ask");
        book.apply(&grant(&request, &[0], &[0]), T0);
        let Admission::Refused(refusal) = book.admit(&slot, T0 + 1) else {
            panic!("refused");
        };
        assert_eq!(refusal.retry_after_ms, PARALLEL_EXHAUSTED_MS - 1);
        assert_eq!(
            book.admit(&slot, T0 + PARALLEL_EXHAUSTED_MS),
            Admission::Wait
        );
        assert!(book.take_request().is_some());
    }

    #[test]
    fn only_the_answer_to_its_ask_settles_a_counter() {
        let mut book = connected();
        let slot = [need(LimitKind::Parallel, 100, 1)];
        assert_eq!(book.admit(&slot, T0), Admission::Wait);
        let first = book.take_request().expect("ask");
        book.apply(&grant(&first, &[8], &[92]), T0);
        assert!(matches!(book.admit(&slot, T0), Admission::Admitted(_)));
        // Done: what is over a lease (5) goes back.
        book.settle(&slot, None, T0);
        let release = book.take_request().expect("a release");
        assert_eq!((release.asks[0].need, release.asks[0].release), (0, 3));
        // Three requests in flight: at two left the filter asks ahead.
        for _ in 0..3 {
            assert!(matches!(book.admit(&slot, T0), Admission::Admitted(_)));
        }
        let ahead = book.take_request().expect("an ask ahead");
        assert_eq!(ahead.asks[0].need, 1);
        // The release's answer (nothing granted) comes first: it is no refusal.
        book.apply(&grant(&release, &[0], &[95]), T0);
        for _ in 0..2 {
            assert!(matches!(book.admit(&slot, T0), Admission::Admitted(_)));
        }
        assert_eq!(book.admit(&slot, T0), Admission::Wait, "waits, not refused");
        book.apply(&grant(&ahead, &[5], &[90]), T0);
        assert!(matches!(book.admit(&slot, T0), Admission::Admitted(_)));
    }

    #[test]
    fn without_an_authority_a_filter_counts_alone_against_the_whole_limit() {
        let mut book = QuotaBook::new();
        let rpm = [need(LimitKind::Requests, 2, 1)];
        assert!(matches!(book.admit(&rpm, T0), Admission::Admitted(_)));
        assert!(matches!(book.admit(&rpm, T0), Admission::Admitted(_)));
        assert!(matches!(book.admit(&rpm, T0), Admission::Refused(_)));
        assert!(book.take_request().is_none());
    }

    #[test]
    fn a_wait_ends_after_the_authority_is_silent_too_long() {
        let mut book = connected();
        let rpm = [need(LimitKind::Requests, 5, 1)];
        assert_eq!(book.admit(&rpm, T0), Admission::Wait);
        assert!(book.is_waiting());
        assert!(!book.tick(T0 + AUTHORITY_WAIT_MS - 1));
        assert!(book.tick(T0 + AUTHORITY_WAIT_MS));
        assert!(matches!(
            book.admit(&rpm, T0 + AUTHORITY_WAIT_MS),
            Admission::Admitted(_)
        ));
    }

    #[test]
    fn a_lease_for_a_window_that_is_over_is_ignored() {
        let mut book = connected();
        let rpm = [need(LimitKind::Requests, 60, 1)];
        assert_eq!(book.admit(&rpm, T0 + WINDOW_MS - 1), Admission::Wait);
        let request = book.take_request().expect("ask");
        assert_eq!(book.admit(&rpm, T0 + WINDOW_MS), Admission::Wait);
        book.apply(&grant(&request, &[3], &[57]), T0 + WINDOW_MS);
        assert_eq!(book.admit(&rpm, T0 + WINDOW_MS), Admission::Wait);
    }

    #[test]
    fn the_estimate_is_a_token_per_four_bytes() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
        assert_eq!(estimate_tokens(9), 3);
    }
}
