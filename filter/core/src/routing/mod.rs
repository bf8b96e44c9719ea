//! Routing among the deployments of a model group and across groups (LiteLLM's
//! `router_settings`): which deployment serves a request ([`choose`]), and, when an attempt
//! fails, whether and where the request is tried again ([`attempts::RoutePlan`]).
//!
//! The decisions are made from what this filter saw itself ([`RoutingBook`]: requests in
//! flight, latencies, this minute's usage, failures and cooldowns), never from a network
//! round-trip.

pub mod attempts;
mod book;
mod health;

use std::collections::HashMap;
use std::sync::Arc;

pub use book::{AttemptReport, DeploymentHealth, LastError, RoutingBook};
pub use health::{health_json, readiness_json};

use crate::proto;
use crate::snapshot::Deployment;

/// The most attempts one request makes (the first included), whatever the configuration
/// says: a misconfigured retry count must not turn one request into hundreds.
pub const MAX_ATTEMPTS: u32 = 10;

/// LiteLLM Router's defaults, used when the snapshot carries no router settings (the
/// control plane sends them explicitly otherwise).
const DEFAULT_NUM_RETRIES: u32 = 2;
const DEFAULT_ALLOWED_FAILS: u32 = 3;
const DEFAULT_COOLDOWN_MS: u64 = 5_000;

/// How a deployment is picked among the available ones of its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// At random, weighted by `weight`, else `rpm`, else `tpm`.
    #[default]
    SimpleShuffle,
    /// The fewest requests in flight.
    LeastBusy,
    /// The lowest recent latency (time to first byte for streams).
    LatencyBased,
    /// The fewest tokens this minute, among those with rpm / tpm headroom.
    UsageBased,
    /// The cheapest per token.
    CostBased,
}

/// What went wrong with an attempt: the catalogue's table, shared with the control plane
/// (which judges cooldowns across filters by it).
pub use tollgate_catalogue::ErrorClass;
use tollgate_catalogue::PolicyClass;

/// A count per error class, with a default for the classes not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PerClass([u32; ErrorClass::COUNT]);

impl PerClass {
    fn get(&self, class: ErrorClass) -> u32 {
        self.0.get(class.index()).copied().unwrap_or(0)
    }

    fn set(&mut self, class: ErrorClass, value: u32) {
        if let Some(slot) = self.0.get_mut(class.index()) {
            *slot = value;
        }
    }
}

/// LiteLLM's `routing_strategy_args.ttl` default: latencies count for an hour.
const DEFAULT_LATENCY_TTL_MS: u64 = 3_600_000;

/// `router_settings`, as the filter uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// routing_strategy.
    pub strategy: Strategy,
    /// routing_strategy_args.lowest_latency_buffer.
    pub lowest_latency_buffer: f64,
    /// routing_strategy_args.ttl: how long a measured latency counts, in milliseconds.
    pub latency_ttl_ms: u64,
    /// model_group_alias: alias -> the groups it stands for (their union), and whether it is
    /// listed in /v1/models.
    aliases: HashMap<String, (Vec<String>, bool)>,
    fallbacks: HashMap<String, Vec<String>>,
    context_window_fallbacks: HashMap<String, Vec<String>>,
    content_policy_fallbacks: HashMap<String, Vec<String>>,
    default_fallbacks: Vec<String>,
    /// Retries per class (num_retries for the classes retry_policy leaves out; 0 for
    /// authentication, bad requests and content policy unless set).
    retries: PerClass,
    /// Whether cooldowns are off (disable_cooldowns).
    pub cooldowns_disabled: bool,
    /// Failures per minute allowed per class before a cooldown.
    allowed_fails: PerClass,
    /// cooldown_time.
    pub cooldown_ms: u64,
    /// timeout, per attempt; 0: none.
    pub timeout_ms: u64,
    /// stream_timeout (time to the response's start); 0: [`Self::timeout_ms`].
    pub stream_timeout_ms: u64,
    /// enable_tag_filtering.
    pub tag_filtering: bool,
    /// Wait before a retry on the same deployment; 0: Envoy's default backoff.
    pub retry_base_delay_ms: u64,
    /// Longest such wait.
    pub retry_max_delay_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig::from_proto(None)
    }
}

/// A per-class table from the policy's entries: each class takes the entry `policy_of` names
/// when `given` has it, else `default` for the classes retried by default (rate limits,
/// timeouts, server errors) and `quiet_default` for the others.
fn per_class(
    default: u32,
    quiet_default: u32,
    policy_of: fn(ErrorClass) -> Option<PolicyClass>,
    given: impl Fn(PolicyClass) -> Option<u32>,
) -> PerClass {
    let mut table = PerClass([default; ErrorClass::COUNT]);
    for class in ErrorClass::ALL {
        let fallback = match class {
            ErrorClass::RateLimit | ErrorClass::Timeout | ErrorClass::ServerError => default,
            _ => quiet_default,
        };
        table.set(class, policy_of(class).and_then(&given).unwrap_or(fallback));
    }
    table
}

/// `{model: [fallbacks]}` entries as a map (a model named twice keeps its first list).
fn fallback_map(entries: Vec<proto::Fallbacks>) -> HashMap<String, Vec<String>> {
    let mut map = HashMap::with_capacity(entries.len());
    for entry in entries {
        map.entry(entry.model).or_insert(entry.fallbacks);
    }
    map
}

impl RouterConfig {
    /// The settings the control plane sent; `None`: LiteLLM's defaults.
    pub fn from_proto(settings: Option<proto::RouterSettings>) -> Self {
        let explicit = settings.is_some();
        let settings = settings.unwrap_or_default();
        let retry = settings.retries.unwrap_or_default();
        let num_retries = if explicit {
            retry.num_retries
        } else {
            DEFAULT_NUM_RETRIES
        };
        let cooldown = settings.cooldown.unwrap_or_default();
        let allowed_fails = if explicit {
            cooldown.allowed_fails
        } else {
            DEFAULT_ALLOWED_FAILS
        };
        let mut aliases: HashMap<String, (Vec<String>, bool)> = HashMap::new();
        for alias in settings.aliases {
            let entry = aliases
                .entry(alias.alias)
                .or_insert_with(|| (Vec::new(), true));
            if !entry.0.contains(&alias.model) {
                entry.0.push(alias.model);
            }
            entry.1 &= !alias.hidden;
        }
        let strategy = match proto::RoutingStrategy::try_from(settings.strategy) {
            Ok(proto::RoutingStrategy::LeastBusy) => Strategy::LeastBusy,
            Ok(proto::RoutingStrategy::LatencyBased) => Strategy::LatencyBased,
            Ok(proto::RoutingStrategy::UsageBased) => Strategy::UsageBased,
            Ok(proto::RoutingStrategy::CostBased) => Strategy::CostBased,
            Ok(proto::RoutingStrategy::SimpleShuffle) | Err(_) => Strategy::SimpleShuffle,
        };
        let retry_base_delay_ms = settings.retry_base_delay_ms;
        RouterConfig {
            strategy,
            lowest_latency_buffer: if settings.lowest_latency_buffer.is_finite() {
                settings.lowest_latency_buffer.max(0.0)
            } else {
                0.0
            },
            latency_ttl_ms: match settings.latency_ttl_ms {
                0 => DEFAULT_LATENCY_TTL_MS,
                ttl => ttl,
            },
            aliases,
            fallbacks: fallback_map(settings.fallbacks),
            context_window_fallbacks: fallback_map(settings.context_window_fallbacks),
            content_policy_fallbacks: fallback_map(settings.content_policy_fallbacks),
            default_fallbacks: settings.default_fallbacks,
            retries: per_class(
                num_retries,
                0,
                ErrorClass::retry_policy,
                |policy| match policy {
                    PolicyClass::Timeout => retry.timeout,
                    PolicyClass::RateLimit => retry.rate_limit,
                    PolicyClass::InternalServer => retry.server_error,
                    PolicyClass::Authentication => retry.authentication,
                    PolicyClass::BadRequest => retry.bad_request,
                    PolicyClass::ContentPolicyViolation => retry.content_policy,
                },
            ),
            cooldowns_disabled: cooldown.disabled,
            allowed_fails: per_class(
                allowed_fails,
                allowed_fails,
                ErrorClass::allowed_fails_policy,
                |policy| match policy {
                    PolicyClass::Timeout => cooldown.timeout,
                    PolicyClass::RateLimit => cooldown.rate_limit,
                    PolicyClass::InternalServer => cooldown.server_error,
                    PolicyClass::Authentication => cooldown.authentication,
                    PolicyClass::BadRequest => cooldown.bad_request,
                    PolicyClass::ContentPolicyViolation => cooldown.content_policy,
                },
            ),
            cooldown_ms: if explicit {
                cooldown.cooldown_ms
            } else {
                DEFAULT_COOLDOWN_MS
            },
            timeout_ms: settings.timeout_ms,
            stream_timeout_ms: settings.stream_timeout_ms,
            tag_filtering: settings.tag_filtering,
            retry_base_delay_ms,
            retry_max_delay_ms: match settings.retry_max_delay_ms {
                0 => retry_base_delay_ms.saturating_mul(10),
                max => max.max(retry_base_delay_ms),
            },
        }
    }

    /// The groups an alias stands for; `None` when `name` is no alias.
    pub fn alias(&self, name: &str) -> Option<&[String]> {
        self.aliases.get(name).map(|(groups, _)| groups.as_slice())
    }

    /// Every alias, with the groups it stands for.
    pub fn aliases(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.aliases
            .iter()
            .map(|(alias, (groups, _))| (alias.as_str(), groups.as_slice()))
    }

    /// Whether `alias` is listed in /v1/models (not hidden).
    pub fn listed(&self, alias: &str) -> bool {
        self.aliases.get(alias).is_some_and(|(_, listed)| *listed)
    }

    /// Retries within the group for a failure of `class` on `deployment` (its own
    /// num_retries replaces the router's for the classes retried by default).
    pub fn retries_for(&self, class: ErrorClass, deployment: &Deployment) -> u32 {
        let configured = self.retries.get(class);
        match (deployment.routing.num_retries, class) {
            (Some(own), ErrorClass::RateLimit | ErrorClass::Timeout | ErrorClass::ServerError) => {
                own
            }
            _ => configured,
        }
        .min(MAX_ATTEMPTS - 1)
    }

    /// The most retries any failure that is retried by default may get on `deployment`.
    pub fn max_default_retries(&self, deployment: &Deployment) -> u32 {
        [
            ErrorClass::RateLimit,
            ErrorClass::Timeout,
            ErrorClass::ServerError,
        ]
        .into_iter()
        .map(|class| self.retries_for(class, deployment))
        .max()
        .unwrap_or(0)
    }

    /// Failures of `class` per minute allowed before a cooldown.
    pub fn allowed_fails(&self, class: ErrorClass) -> u32 {
        self.allowed_fails.get(class)
    }

    /// The groups `group` falls back to after a failure of `class`, in order.
    pub fn fallbacks_for(&self, class: ErrorClass, group: &str) -> &[String] {
        let own = match class {
            ErrorClass::ContextWindow => self.context_window_fallbacks.get(group),
            ErrorClass::ContentPolicy => self.content_policy_fallbacks.get(group),
            // The request itself is wrong: another model will not make it right.
            ErrorClass::BadRequest => return &[],
            _ => self.fallbacks.get(group),
        };
        match (own, class) {
            (Some(own), _) => own,
            (None, ErrorClass::ContextWindow | ErrorClass::ContentPolicy) => &[],
            (None, _) => &self.default_fallbacks,
        }
    }

    /// Whether `group` has a fallback of any kind.
    pub fn has_fallbacks(&self, group: &str) -> bool {
        !self.default_fallbacks.is_empty()
            || [
                &self.fallbacks,
                &self.context_window_fallbacks,
                &self.content_policy_fallbacks,
            ]
            .into_iter()
            .any(|map| map.get(group).is_some_and(|list| !list.is_empty()))
    }

    /// The timeout of one attempt on `deployment`: its own, else the router's; the stream
    /// timeout (to the response's start) for streams when one is set. 0: none.
    pub fn attempt_timeout_ms(&self, deployment: &Deployment, stream: bool) -> u64 {
        let routing = &deployment.routing;
        let timeout = if routing.timeout_ms > 0 {
            routing.timeout_ms
        } else {
            self.timeout_ms
        };
        if !stream {
            return timeout;
        }
        [routing.stream_timeout_ms, self.stream_timeout_ms, timeout]
            .into_iter()
            .find(|ms| *ms > 0)
            .unwrap_or(0)
    }
}

/// The deployments the control plane cooled down, judged from every filter's failures
/// (`ControlMessage.cooldowns`), by id: Unix milliseconds until which each is out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushedCooldowns(HashMap<String, (u64, Option<FailedCheck>)>);

/// A background health check of the control plane's that failed: why a pushed cooldown is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCheck {
    /// The probe's HTTP status; 0 when it got no answer.
    pub status: u16,
    /// Its error message.
    pub message: String,
    /// When it ran, Unix ms.
    pub checked_ms: u64,
}

impl PushedCooldowns {
    /// The set the control plane sent.
    pub fn from_proto(message: proto::DeploymentCooldowns) -> Self {
        PushedCooldowns(
            message
                .cooldowns
                .into_iter()
                .map(|cooldown| {
                    let check = (cooldown.checked_unix_ms > 0).then(|| FailedCheck {
                        status: u16::try_from(cooldown.check_status).unwrap_or(0),
                        message: cooldown.check_message,
                        checked_ms: cooldown.checked_unix_ms,
                    });
                    (cooldown.deployment_id, (cooldown.until_unix_ms, check))
                })
                .collect(),
        )
    }

    /// Until when `id` cools down, if it still does at `now_ms`.
    pub fn until(&self, id: &str, now_ms: u64) -> Option<u64> {
        self.0
            .get(id)
            .map(|(until, _)| *until)
            .filter(|until| *until > now_ms)
    }

    /// The failed health check that keeps `id` out, if one does at `now_ms`.
    pub fn failed_check(&self, id: &str, now_ms: u64) -> Option<&FailedCheck> {
        self.0
            .get(id)
            .filter(|(until, _)| *until > now_ms)
            .and_then(|(_, check)| check.as_ref())
    }

    /// Deployments in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a deployment's `litellm_params` say about routing it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentRouting {
    /// weight; 0: not given.
    pub weight: f64,
    /// order tier (1 first); 0: not given, after the ordered ones.
    pub order: u32,
    /// tags.
    pub tags: Vec<String>,
    /// timeout; 0: the router's.
    pub timeout_ms: u64,
    /// stream_timeout; 0: the router's.
    pub stream_timeout_ms: u64,
    /// num_retries; `None`: the router's.
    pub num_retries: Option<u32>,
}

impl DeploymentRouting {
    /// The routing fields of a snapshot's deployment.
    pub fn of(deployment: &proto::Deployment) -> Self {
        DeploymentRouting {
            weight: if deployment.weight.is_finite() && deployment.weight > 0.0 {
                deployment.weight
            } else {
                0.0
            },
            order: deployment.order,
            tags: deployment.tags.clone(),
            timeout_ms: deployment.timeout_ms,
            stream_timeout_ms: deployment.stream_timeout_ms,
            num_retries: deployment.num_retries,
        }
    }
}

/// What the choice of a deployment depends on besides the group.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceContext<'a> {
    /// Milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// The request's tags (metadata.tags and the x-litellm-tags header).
    pub tags: &'a [String],
    /// Deployment ids already tried by this request: chosen only when nothing else is left.
    pub tried: &'a [String],
    /// The request's estimated tokens (usage-based routing's headroom check).
    pub estimated_tokens: u64,
    /// Whether the client asked for a stream (latency-based routing compares time to first
    /// byte then).
    pub stream: bool,
    /// The control plane's cooldowns (from every filter's failures), beside the book's.
    pub pushed: Option<&'a PushedCooldowns>,
}

/// A small, fast generator for the random choices (xorshift64*): routing needs spread, not
/// secrecy.
#[derive(Debug, Clone)]
pub struct Shuffler(u64);

impl Shuffler {
    /// A generator from `seed` (random bits from the host).
    pub fn new(seed: u64) -> Self {
        Shuffler(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        // The top 53 bits make every f64 in [0, 1) with a 2^-53 step equally likely.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index below `len` (0 when `len` is 0).
    fn below(&mut self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        usize::try_from(self.next_u64() % len).unwrap_or(0)
    }
}

/// Picks the deployment of `group` that serves the next attempt: among those not cooling
/// down (a group's only deployment never is), not yet tried by this request, with rpm / tpm
/// headroom, matching the request's tags when tag filtering is on, and in the first `order`
/// tier that has any, the one `config.strategy` prefers. When every deployment was tried
/// or is unavailable, the least bad one is taken again (cooling down, or tried already)
/// rather than failing a request a deployment might still serve; `None` only for an empty
/// group or when tag filtering leaves nothing.
pub fn choose<'g>(
    group: &'g [Arc<Deployment>],
    config: &RouterConfig,
    book: &RoutingBook,
    context: &ChoiceContext<'_>,
    shuffler: &mut Shuffler,
) -> Option<&'g Arc<Deployment>> {
    let tagged: Vec<&'g Arc<Deployment>> = tag_filter(group, config, context.tags);
    if tagged.is_empty() {
        return None;
    }
    let single = tagged.len() == 1;
    let available = |deployment: &Deployment, allow_tried: bool, allow_cooling: bool| {
        (allow_tried || !context.tried.contains(&deployment.id))
            && (allow_cooling
                || single
                || config.cooldowns_disabled
                || !(book.cooling_down(&deployment.id, context.now_ms)
                    || context.pushed.is_some_and(|pushed| {
                        pushed.until(&deployment.id, context.now_ms).is_some()
                    })))
            && book.has_headroom(deployment, context.now_ms, context.estimated_tokens)
    };
    for (allow_tried, allow_cooling) in [(false, false), (true, false), (false, true)] {
        let candidates: Vec<&'g Arc<Deployment>> = tagged
            .iter()
            .copied()
            .filter(|deployment| available(deployment, allow_tried, allow_cooling))
            .collect();
        if let Some(chosen) = pick_in_first_tier(&candidates, config, book, context, shuffler) {
            return Some(chosen);
        }
    }
    // Everything is over its rpm / tpm: the rate limits answer for it, not the router.
    tagged
        .get(shuffler.below(tagged.len()))
        .copied()
        .or_else(|| tagged.first().copied())
}

/// The deployments of `group` a request with `tags` may use: all of them without tag
/// filtering or tags; else those with one of the tags, or failing that those tagged
/// "default".
fn tag_filter<'g>(
    group: &'g [Arc<Deployment>],
    config: &RouterConfig,
    tags: &[String],
) -> Vec<&'g Arc<Deployment>> {
    if !config.tag_filtering || tags.is_empty() {
        return group.iter().collect();
    }
    let matching: Vec<&'g Arc<Deployment>> = group
        .iter()
        .filter(|deployment| deployment.routing.tags.iter().any(|tag| tags.contains(tag)))
        .collect();
    if !matching.is_empty() {
        return matching;
    }
    group
        .iter()
        .filter(|deployment| deployment.routing.tags.iter().any(|tag| tag == "default"))
        .collect()
}

/// The strategy's pick among the candidates of the first `order` tier (order 1 before 2 ...,
/// deployments without an order last).
fn pick_in_first_tier<'g>(
    candidates: &[&'g Arc<Deployment>],
    config: &RouterConfig,
    book: &RoutingBook,
    context: &ChoiceContext<'_>,
    shuffler: &mut Shuffler,
) -> Option<&'g Arc<Deployment>> {
    let tier_of = |deployment: &Deployment| match deployment.routing.order {
        0 => u32::MAX,
        order => order,
    };
    let first_tier = candidates.iter().map(|d| tier_of(d)).min()?;
    let tier: Vec<&'g Arc<Deployment>> = candidates
        .iter()
        .copied()
        .filter(|deployment| tier_of(deployment) == first_tier)
        .collect();
    match config.strategy {
        Strategy::SimpleShuffle => weighted_shuffle(&tier, shuffler),
        Strategy::LeastBusy => lowest(&tier, shuffler, |d| book.in_flight(&d.id) as f64),
        Strategy::LatencyBased => {
            let latency = |d: &Deployment| {
                book.latency_ms(&d.id, context.stream, context.now_ms, config.latency_ttl_ms)
                    .unwrap_or(0.0)
            };
            let fastest = tier
                .iter()
                .map(|d| latency(d))
                .fold(f64::INFINITY, f64::min);
            let limit = fastest * (1.0 + config.lowest_latency_buffer);
            let near: Vec<&'g Arc<Deployment>> = tier
                .iter()
                .copied()
                .filter(|d| latency(d) <= limit)
                .collect();
            near.get(shuffler.below(near.len())).copied()
        }
        Strategy::UsageBased => lowest(&tier, shuffler, |d| {
            book.minute_tokens(&d.id, context.now_ms) as f64
        }),
        Strategy::CostBased => lowest(&tier, shuffler, |d| {
            d.prices
                .map(|prices| prices.input.unwrap_or(0.0) + prices.output.unwrap_or(0.0))
                // Unpriced: its cost is unknown, so it comes after every priced one.
                .unwrap_or(f64::INFINITY)
        }),
    }
}

/// simple-shuffle: at random, weighted by `weight` when any deployment has one, else by
/// `rpm`, else by `tpm`, else evenly (LiteLLM's order of preference; a deployment without
/// the weight the others have weighs 0).
fn weighted_shuffle<'g>(
    tier: &[&'g Arc<Deployment>],
    shuffler: &mut Shuffler,
) -> Option<&'g Arc<Deployment>> {
    let weights: [fn(&Deployment) -> f64; 3] = [
        |d| d.routing.weight,
        |d| d.limits.and_then(|limits| limits.rpm).unwrap_or(0) as f64,
        |d| d.limits.and_then(|limits| limits.tpm).unwrap_or(0) as f64,
    ];
    for weight in weights {
        let total: f64 = tier.iter().map(|d| weight(d)).sum();
        if total > 0.0 && total.is_finite() {
            let mut point = shuffler.unit() * total;
            for deployment in tier {
                point -= weight(deployment);
                if point < 0.0 {
                    return Some(deployment);
                }
            }
            // Rounding left the point at the very end: the last weighed one.
            return tier.iter().rev().find(|d| weight(d) > 0.0).copied();
        }
    }
    tier.get(shuffler.below(tier.len())).copied()
}

/// The deployment with the lowest `score`, ties broken at random.
fn lowest<'g>(
    tier: &[&'g Arc<Deployment>],
    shuffler: &mut Shuffler,
    score: impl Fn(&Deployment) -> f64,
) -> Option<&'g Arc<Deployment>> {
    let best = tier.iter().map(|d| score(d)).fold(f64::INFINITY, f64::min);
    let tied: Vec<&'g Arc<Deployment>> =
        tier.iter().copied().filter(|d| score(d) <= best).collect();
    tied.get(shuffler.below(tied.len()))
        .copied()
        .or_else(|| tier.first().copied())
}
