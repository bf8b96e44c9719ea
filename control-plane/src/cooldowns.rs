//! Deployment cooldowns judged across every filter (LiteLLM's `allowed_fails`,
//! `allowed_fails_policy`, `cooldown_time`, `disable_cooldowns`).
//!
//! Each filter (each Wasm VM, each Envoy) cools a deployment down from the failures it saw
//! itself; none sees the failures of the others. The control plane receives every filter's
//! usage records, so it counts the failures of all of them here and pushes the deployments
//! cooling down to every stream ([`proto::DeploymentCooldowns`], see
//! [`crate::sync::SyncHub::deployment_cooldowns`]).
//!
//! Semantics, per record newly stored (a record resent after a lost acknowledgement is
//! not stored again, so it is not counted again):
//! - Only records that went upstream (`answered_by_gateway == false`) with a deployment and
//!   a status of 0 or >= 400 count, in the class of their status ([`failure_class`]);
//!   other 4xx (bad requests) are the request's fault and never count.
//! - A record's time is its end, `started_unix_ms + duration_ms`, but never later than the
//!   control plane's clock when it is judged (a filter's clock ahead cannot push a cooldown
//!   further into the future than `cooldown_time` from now). Failures are counted per
//!   deployment and class in the wall-clock minute (Unix ms / 60 000) of that time, as the
//!   filters count theirs; a record of the minute before the newest one seen for its
//!   deployment still counts in that minute (batches of several filters interleave), an
//!   older one is ignored.
//! - When a class's count in a minute goes over its allowed fails, the deployment cools
//!   down until that record's time + `cooldown_time`, and all its counts start again from
//!   zero: records that ended before the one that tipped it no longer count. A cooldown is
//!   only ever extended by a later one, never shortened. One that is already over (a
//!   backlog delivered late) is not pushed.
//! - Nothing cools down while cooldowns are disabled, and a deployment that is the only
//!   one of its model group never does (the filter would ignore it).
//! - Expired cooldowns drop out of the set whenever it changes: the set holds at most one
//!   entry per deployment, and a new stream is sent only those still running.
//!
//! Each control-plane replica judges from the records it receives itself: with several
//! replicas on one database, a filter's failures count on the replica its stream goes to,
//! and the replicas do not share counts or cooldowns (a deployment failing through two
//! replicas may take up to twice its allowed fails before one of them cools it down).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::config::RouterConfig;
use crate::proto;

/// Milliseconds in the minute failures are counted in.
pub const MINUTE_MS: u64 = 60_000;

/// The class of a failure: the catalogue's table, the one the filter judges its own
/// cooldowns (and retries) by.
pub use tollgate_catalogue::ErrorClass;
use tollgate_catalogue::PolicyClass;

/// The class of `record`'s failure when it counts toward a cooldown: `None` for a success,
/// an answer of the gateway itself, a record without deployment, and a failure that is the
/// request's fault rather than the deployment's (bad request: any other 4xx; see
/// [`ErrorClass::is_deployment_fault`]).
///
/// The filter's class of the failure (`error_class`: from the status and the provider's
/// error code) decides when the record carries one; a record without it (an older filter)
/// is judged by its status alone.
pub fn failure_class(record: &proto::UsageRecord) -> Option<ErrorClass> {
    if record.answered_by_gateway || record.deployment_id.is_empty() {
        return None;
    }
    // The filter's own judgement (status and the provider's error code) when the record
    // carries it; else the status alone (beyond u16: no HTTP status, a server error as for
    // the filter, >= 600).
    let status = u16::try_from(record.status).unwrap_or(u16::MAX);
    ErrorClass::from_name(&record.error_class)
        .or_else(|| ErrorClass::of(status, None))
        .filter(|class| class.is_deployment_fault())
}

/// Failures of `class` a deployment may have in a minute: the class's own
/// `allowed_fails_policy` entry, else `allowed_fails` (404 has no entry of its own).
fn allowed(class: ErrorClass, policy: &proto::CooldownPolicy) -> u32 {
    let own = class.allowed_fails_policy().and_then(|entry| match entry {
        PolicyClass::Timeout => policy.timeout,
        PolicyClass::RateLimit => policy.rate_limit,
        PolicyClass::InternalServer => policy.server_error,
        PolicyClass::Authentication => policy.authentication,
        PolicyClass::BadRequest => policy.bad_request,
        PolicyClass::ContentPolicyViolation => policy.content_policy,
    });
    own.unwrap_or(policy.allowed_fails)
}

/// What cooldowns are judged by, from the served snapshot: its cooldown policy and which
/// deployments share their model group with another.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CooldownRules {
    policy: proto::CooldownPolicy,
    /// Ids of the deployments whose model group has more than one deployment.
    grouped: HashSet<String>,
}

impl CooldownRules {
    /// The rules of a snapshot with `router` settings (`None`: LiteLLM's defaults, as the
    /// filter takes them then) and `deployments`.
    pub fn new(
        router: Option<&proto::RouterSettings>,
        deployments: &[proto::Deployment],
    ) -> CooldownRules {
        let policy = match router {
            Some(router) => router.cooldown.unwrap_or_default(),
            None => RouterConfig::default()
                .to_proto()
                .cooldown
                .unwrap_or_default(),
        };
        let mut group_sizes: HashMap<&str, usize> = HashMap::new();
        for deployment in deployments {
            *group_sizes
                .entry(deployment.model_name.as_str())
                .or_default() += 1;
        }
        let grouped = deployments
            .iter()
            .filter(|deployment| {
                group_sizes
                    .get(deployment.model_name.as_str())
                    .is_some_and(|size| *size > 1)
            })
            .map(|deployment| deployment.id.clone())
            .collect();
        CooldownRules { policy, grouped }
    }

    /// Whether `deployment_id` may cool down at all.
    fn can_cool_down(&self, deployment_id: &str) -> bool {
        !self.policy.disabled && self.grouped.contains(deployment_id)
    }
}

/// One deployment's failure counts in one minute.
#[derive(Debug, Clone, Copy, Default)]
struct MinuteFails {
    /// Unix ms / [`MINUTE_MS`].
    minute: u64,
    fails: [u32; ErrorClass::COUNT],
}

impl MinuteFails {
    fn empty(minute: u64) -> MinuteFails {
        MinuteFails {
            minute,
            fails: [0; ErrorClass::COUNT],
        }
    }
}

/// One deployment's failure counts: the newest minute seen and the one before it.
#[derive(Debug, Clone)]
struct DeploymentFails {
    newest: MinuteFails,
    previous: MinuteFails,
    /// Records that ended before this (the failure that tipped the last cooldown) no longer
    /// count.
    counted_since_ms: u64,
}

impl DeploymentFails {
    fn new(minute: u64) -> DeploymentFails {
        DeploymentFails {
            newest: MinuteFails::empty(minute),
            previous: MinuteFails::empty(minute.saturating_sub(1)),
            counted_since_ms: 0,
        }
    }

    /// The counts of `minute`, moving on to it when it is newer than the newest; `None`
    /// for a minute older than the one before the newest.
    fn minute(&mut self, minute: u64) -> Option<&mut [u32; ErrorClass::COUNT]> {
        if minute > self.newest.minute {
            self.previous = if minute == self.newest.minute + 1 {
                self.newest
            } else {
                MinuteFails::empty(minute - 1)
            };
            self.newest = MinuteFails::empty(minute);
        }
        if minute == self.newest.minute {
            Some(&mut self.newest.fails)
        } else if minute == self.previous.minute {
            Some(&mut self.previous.fails)
        } else {
            None
        }
    }

    /// Starts counting again after the failure that ended at `tipped_at_ms`.
    fn reset(&mut self, tipped_at_ms: u64) {
        self.newest.fails = [0; ErrorClass::COUNT];
        self.previous.fails = [0; ErrorClass::COUNT];
        self.counted_since_ms = tipped_at_ms;
    }
}

/// A cooldown that started (or was extended) from the records just judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CooldownStarted {
    /// The deployment cooling down.
    pub deployment_id: String,
    /// The class whose failures took it over its allowed fails.
    pub class: ErrorClass,
    /// That class's failures in the minute, the one that tipped it included.
    pub fails: u32,
    /// Unix milliseconds it comes back at.
    pub until_unix_ms: u64,
}

/// Failure counts and cooldowns of every deployment, from the usage records of every
/// filter this control plane receives (see the module documentation for the semantics).
#[derive(Debug, Clone, Default)]
pub struct CooldownTracker {
    fails: HashMap<String, DeploymentFails>,
    /// Deployment id → Unix ms its cooldown ends at.
    cooling: BTreeMap<String, u64>,
    /// Deployment id → its failed background health check, out until the next one passes.
    failed_checks: BTreeMap<String, FailedCheck>,
}

/// A background health check that failed (see [`crate::health_checks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCheck {
    /// Unix ms until which the deployment is out (past the next check).
    pub until_unix_ms: u64,
    /// The probe's HTTP status; 0 when it got no answer.
    pub status: u32,
    /// Its error message.
    pub message: String,
    /// When it ran, Unix ms.
    pub checked_unix_ms: u64,
}

impl CooldownTracker {
    /// A tracker that has seen no failure.
    pub fn new() -> CooldownTracker {
        CooldownTracker::default()
    }

    /// Counts the failures among `records` (each given once: newly stored ones) under
    /// `rules` at `now_ms` (the control plane's clock). Returns the cooldowns that started
    /// or were extended, in the order of the records that tipped them: the set to push
    /// changed when it is not empty (expired cooldowns are dropped from it then).
    pub fn observe<'r>(
        &mut self,
        records: impl IntoIterator<Item = &'r proto::UsageRecord>,
        rules: &CooldownRules,
        now_ms: u64,
    ) -> Vec<CooldownStarted> {
        let mut started = Vec::new();
        let mut counted = false;
        for record in records {
            let Some(class) = failure_class(record) else {
                continue;
            };
            if !rules.can_cool_down(&record.deployment_id) {
                continue;
            }
            let ended_ms = record
                .started_unix_ms
                .saturating_add(record.duration_ms)
                .min(now_ms);
            let minute = ended_ms / MINUTE_MS;
            let deployment = match self.fails.get_mut(&record.deployment_id) {
                Some(deployment) => deployment,
                None => self
                    .fails
                    .entry(record.deployment_id.clone())
                    .or_insert_with(|| DeploymentFails::new(minute)),
            };
            if ended_ms < deployment.counted_since_ms {
                continue;
            }
            let Some(fails) = deployment
                .minute(minute)
                .and_then(|fails| fails.get_mut(class.index()))
            else {
                continue;
            };
            counted = true;
            *fails = fails.saturating_add(1);
            let count = *fails;
            if count <= allowed(class, &rules.policy) {
                continue;
            }
            deployment.reset(ended_ms);
            let until_unix_ms = ended_ms.saturating_add(rules.policy.cooldown_ms);
            if until_unix_ms <= now_ms {
                continue;
            }
            let held = self
                .cooling
                .entry(record.deployment_id.clone())
                .or_insert(0);
            if until_unix_ms > *held {
                *held = until_unix_ms;
                started.push(CooldownStarted {
                    deployment_id: record.deployment_id.clone(),
                    class,
                    fails: count,
                    until_unix_ms,
                });
            }
        }
        if !started.is_empty() {
            self.cooling.retain(|_, until| *until > now_ms);
        }
        if counted {
            // Counts of a minute before the previous one can no longer be added to: this
            // keeps the map to the deployments that failed lately.
            let current_minute = now_ms / MINUTE_MS;
            self.fails
                .retain(|_, deployment| deployment.newest.minute + 1 >= current_minute);
        }
        started
    }

    /// The results of one round of background health checks: each failed deployment in
    /// `failed` is out until its check's end, and a deployment whose check passed is back
    /// (its failure-count cooldown, if any, stays). Returns whether the set to push changed.
    pub fn set_checks(&mut self, failed: BTreeMap<String, FailedCheck>) -> bool {
        let changed = self.failed_checks != failed;
        self.failed_checks = failed;
        changed
    }

    /// Every cooldown held (expired ones included until the set next changes), by
    /// deployment id.
    pub fn cooldowns(&self) -> proto::DeploymentCooldowns {
        let failures = self
            .cooling
            .iter()
            .filter(|(deployment_id, _)| !self.failed_checks.contains_key(*deployment_id))
            .map(|(deployment_id, until_unix_ms)| proto::DeploymentCooldown {
                deployment_id: deployment_id.clone(),
                until_unix_ms: *until_unix_ms,
                ..Default::default()
            });
        // A failed check and a cooldown of the same deployment: one entry, the later end.
        let checks =
            self.failed_checks
                .iter()
                .map(|(deployment_id, check)| proto::DeploymentCooldown {
                    deployment_id: deployment_id.clone(),
                    until_unix_ms: self
                        .cooling
                        .get(deployment_id)
                        .map_or(check.until_unix_ms, |until| {
                            (*until).max(check.until_unix_ms)
                        }),
                    check_status: check.status,
                    check_message: check.message.clone(),
                    checked_unix_ms: check.checked_unix_ms,
                });
        proto::DeploymentCooldowns {
            cooldowns: failures.chain(checks).collect(),
        }
    }
}

/// The cooldowns of `set` still running at `now_ms`.
pub fn running_at(set: &proto::DeploymentCooldowns, now_ms: u64) -> proto::DeploymentCooldowns {
    proto::DeploymentCooldowns {
        cooldowns: set
            .cooldowns
            .iter()
            .filter(|cooldown| cooldown.until_unix_ms > now_ms)
            .cloned()
            .collect(),
    }
}

/// A [`CooldownTracker`] with the rules of the served version it last judged under, so
/// that the rules are rebuilt only when a new version is served.
#[derive(Debug, Default)]
pub struct CooldownJudge {
    tracker: CooldownTracker,
    /// The served version `rules` were built from.
    rules_version: Option<u64>,
    rules: CooldownRules,
}

impl CooldownJudge {
    /// A judge that has seen nothing.
    pub fn new() -> CooldownJudge {
        CooldownJudge::default()
    }

    /// Whether the rules held are those of served `version`.
    pub fn rules_of(&self, version: u64) -> bool {
        self.rules_version == Some(version)
    }

    /// Judges from now on by `rules`, those of served `version`.
    pub fn set_rules(&mut self, version: u64, rules: CooldownRules) {
        self.rules_version = Some(version);
        self.rules = rules;
    }

    /// [`CooldownTracker::observe`] under the rules held.
    pub fn observe<'r>(
        &mut self,
        records: impl IntoIterator<Item = &'r proto::UsageRecord>,
        now_ms: u64,
    ) -> Vec<CooldownStarted> {
        self.tracker.observe(records, &self.rules, now_ms)
    }

    /// [`CooldownTracker::cooldowns`].
    pub fn cooldowns(&self) -> proto::DeploymentCooldowns {
        self.tracker.cooldowns()
    }

    /// See [`CooldownTracker::set_checks`].
    pub fn set_checks(&mut self, failed: BTreeMap<String, FailedCheck>) -> bool {
        self.tracker.set_checks(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z: a minute boundary.
    const T0: u64 = 1_767_225_600_000;
    const COOLDOWN_MS: u64 = 5_000;

    fn deployment(id: &str, group: &str) -> proto::Deployment {
        proto::Deployment {
            id: id.into(),
            model_name: group.into(),
            ..Default::default()
        }
    }

    /// Groups: "gpt" with deployments a and b, "solo" with s alone.
    fn deployments() -> Vec<proto::Deployment> {
        vec![
            deployment("a", "gpt"),
            deployment("b", "gpt"),
            deployment("s", "solo"),
        ]
    }

    fn rules(policy: proto::CooldownPolicy) -> CooldownRules {
        let router = proto::RouterSettings {
            cooldown: Some(policy),
            ..Default::default()
        };
        CooldownRules::new(Some(&router), &deployments())
    }

    fn allowing(allowed_fails: u32) -> CooldownRules {
        rules(proto::CooldownPolicy {
            allowed_fails,
            cooldown_ms: COOLDOWN_MS,
            ..Default::default()
        })
    }

    /// A record of `deployment` with `status` that started at `started` and took 100 ms.
    fn failed(deployment: &str, status: u32, started: u64) -> proto::UsageRecord {
        proto::UsageRecord {
            id: format!("{deployment}-{status}-{started}"),
            model_name: "gpt".into(),
            deployment_id: deployment.into(),
            status,
            started_unix_ms: started,
            duration_ms: 100,
            ..Default::default()
        }
    }

    fn started(deployment: &str, class: ErrorClass, fails: u32, until: u64) -> CooldownStarted {
        CooldownStarted {
            deployment_id: deployment.into(),
            class,
            fails,
            until_unix_ms: until,
        }
    }

    fn set(entries: &[(&str, u64)]) -> proto::DeploymentCooldowns {
        proto::DeploymentCooldowns {
            cooldowns: entries
                .iter()
                .map(|(id, until)| proto::DeploymentCooldown {
                    deployment_id: (*id).into(),
                    until_unix_ms: *until,
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// Judges one record at a time, as `now` 1 ms after it ended; what each started.
    fn feed(
        tracker: &mut CooldownTracker,
        rules: &CooldownRules,
        records: &[proto::UsageRecord],
    ) -> Vec<Vec<CooldownStarted>> {
        records
            .iter()
            .map(|record| {
                let now = record.started_unix_ms + record.duration_ms + 1;
                tracker.observe([record], rules, now)
            })
            .collect()
    }

    #[test]
    fn the_failure_over_allowed_fails_cools_down_until_its_end_plus_cooldown_time() {
        let rules = allowing(3);
        let mut tracker = CooldownTracker::new();
        let records: Vec<_> = (0..4).map(|n| failed("a", 500, T0 + n * 1_000)).collect();
        let results = feed(&mut tracker, &rules, &records);
        assert_eq!(results[..3], [vec![], vec![], vec![]]);
        // The 4th ended at T0 + 3 000 + 100.
        let until = T0 + 3_100 + COOLDOWN_MS;
        assert_eq!(
            results[3],
            vec![started("a", ErrorClass::ServerError, 4, until)]
        );
        assert_eq!(tracker.cooldowns(), set(&[("a", until)]));
    }

    #[test]
    fn failed_health_checks_join_the_set_with_their_reason_until_a_check_passes() {
        let rules = allowing(3);
        let mut tracker = CooldownTracker::new();
        let records: Vec<_> = (0..4).map(|n| failed("a", 500, T0 + n * 1_000)).collect();
        feed(&mut tracker, &rules, &records);
        let cooled = T0 + 3_100 + COOLDOWN_MS;
        let check = |until_unix_ms| FailedCheck {
            until_unix_ms,
            status: 503,
            message: "overloaded".into(),
            checked_unix_ms: T0,
        };
        // b failed its check; a failed one too, and keeps the later of its two ends.
        let failed = BTreeMap::from([
            ("a".to_string(), check(T0 + 10)),
            ("b".into(), check(T0 + 2_000)),
        ]);
        assert!(tracker.set_checks(failed.clone()));
        assert!(!tracker.set_checks(failed));
        let entry = |id: &str, until| proto::DeploymentCooldown {
            deployment_id: id.into(),
            until_unix_ms: until,
            check_status: 503,
            check_message: "overloaded".into(),
            checked_unix_ms: T0,
        };
        assert_eq!(
            tracker.cooldowns().cooldowns,
            [entry("a", cooled), entry("b", T0 + 2_000)]
        );
        // Every check passed: only the failures' cooldown is left.
        assert!(tracker.set_checks(BTreeMap::new()));
        assert_eq!(tracker.cooldowns(), set(&[("a", cooled)]));
    }

    #[test]
    fn one_batch_counts_like_records_one_by_one() {
        let rules = allowing(3);
        let mut tracker = CooldownTracker::new();
        let records: Vec<_> = (0..5).map(|n| failed("b", 0, T0 + n * 10)).collect();
        let now = T0 + 1_000;
        // The 4th (ended T0 + 130) tips it; the 5th is the first of the next round.
        assert_eq!(
            tracker.observe(&records, &rules, now),
            vec![started(
                "b",
                ErrorClass::ServerError,
                4,
                T0 + 130 + COOLDOWN_MS
            )]
        );
    }

    #[test]
    fn each_class_counts_apart_against_its_own_policy() {
        let rules = rules(proto::CooldownPolicy {
            allowed_fails: 3,
            rate_limit: Some(1),
            timeout: Some(0),
            authentication: Some(5),
            cooldown_ms: COOLDOWN_MS,
            ..Default::default()
        });
        // Rate limits: the 2nd goes over 1.
        let mut tracker = CooldownTracker::new();
        let results = feed(
            &mut tracker,
            &rules,
            &[failed("a", 429, T0), failed("a", 429, T0 + 1_000)],
        );
        assert_eq!(
            results,
            vec![
                vec![],
                vec![started(
                    "a",
                    ErrorClass::RateLimit,
                    2,
                    T0 + 1_100 + COOLDOWN_MS
                )]
            ]
        );
        // Timeouts (408 and 504): the first goes over 0.
        for status in [408, 504] {
            let mut tracker = CooldownTracker::new();
            assert_eq!(
                feed(&mut tracker, &rules, &[failed("a", status, T0)]),
                vec![vec![started(
                    "a",
                    ErrorClass::Timeout,
                    1,
                    T0 + 100 + COOLDOWN_MS
                )]]
            );
        }
        // Authentication (401 and 403 together): 5 allowed, the 6th tips.
        let mut tracker = CooldownTracker::new();
        let records: Vec<_> = (0..6)
            .map(|n| failed("a", if n % 2 == 0 { 401 } else { 403 }, T0 + n * 100))
            .collect();
        let results = feed(&mut tracker, &rules, &records);
        assert!(results[..5].iter().all(Vec::is_empty), "{results:?}");
        assert_eq!(
            results[5],
            vec![started(
                "a",
                ErrorClass::Authentication,
                6,
                T0 + 600 + COOLDOWN_MS
            )]
        );
        // 404 has no entry of its own: allowed_fails (3). Classes do not add up: 3 server
        // errors and 3 not-founds stay within 3 each.
        let mut tracker = CooldownTracker::new();
        let mut records: Vec<_> = (0..3).map(|n| failed("a", 503, T0 + n * 100)).collect();
        records.extend((0..3).map(|n| failed("a", 404, T0 + 1_000 + n * 100)));
        assert!(feed(&mut tracker, &rules, &records)
            .iter()
            .all(Vec::is_empty));
        assert_eq!(
            feed(&mut tracker, &rules, &[failed("a", 404, T0 + 2_000)]),
            vec![vec![started(
                "a",
                ErrorClass::NotFound,
                4,
                T0 + 2_100 + COOLDOWN_MS
            )]]
        );
        // 529 is a server error.
        assert_eq!(
            failure_class(&failed("a", 529, T0)),
            Some(ErrorClass::ServerError)
        );
    }

    #[test]
    fn bad_requests_successes_and_gateway_answers_never_count() {
        let rules = rules(proto::CooldownPolicy {
            allowed_fails: 0,
            bad_request: Some(0),
            cooldown_ms: COOLDOWN_MS,
            ..Default::default()
        });
        let mut tracker = CooldownTracker::new();
        let mut records: Vec<_> = [400, 413, 422, 200, 204, 301]
            .into_iter()
            .map(|status| failed("a", status, T0))
            .collect();
        // A refusal of the gateway itself (budget, rate limit) says nothing of the provider.
        let mut refused = failed("a", 429, T0);
        refused.answered_by_gateway = true;
        records.push(refused);
        // Nor does a record without deployment.
        records.push(failed("", 500, T0));
        assert_eq!(tracker.observe(&records, &rules, T0 + 1_000), vec![]);
        assert_eq!(tracker.cooldowns(), set(&[]));
        assert_eq!(failure_class(&failed("a", 400, T0)), None);
    }

    /// What the filter makes of an attempt that ended with `status` and error `code`: its
    /// class, and whether the deployment cools down when `policy` allows it (in the filter's
    /// own book, from this one attempt).
    fn filter_judges(
        status: u16,
        code: Option<&str>,
        policy: tollgate_core::proto::CooldownPolicy,
    ) -> (Option<ErrorClass>, bool) {
        use tollgate_core::routing::{AttemptReport, RouterConfig, RoutingBook};
        let class = tollgate_core::routing::ErrorClass::of(status, code);
        let config = RouterConfig::from_proto(Some(tollgate_core::proto::RouterSettings {
            cooldown: Some(policy),
            ..Default::default()
        }));
        let mut book = RoutingBook::new();
        book.started("a", T0);
        let report = AttemptReport {
            deployment_id: "a",
            status,
            class,
            latency_ms: 100,
            first_byte_ms: None,
            tokens: None,
            completion_tokens: None,
            message: "",
        };
        book.finished(&report, &config, T0 + 100);
        (class, book.cooling_down("a", T0 + 101))
    }

    /// The usage record the filter writes for that attempt: the status, the status's
    /// OpenAI error type, and the class it judged the failure by.
    fn record_of(status: u16, code: Option<&str>) -> proto::UsageRecord {
        let mut record = failed("a", u32::from(status), T0);
        if status >= 400 {
            record.error_type = tollgate_core::error::error_type_for_status(status).into();
        }
        record.error_class =
            ErrorClass::of(status, code).map_or_else(String::new, |class| class.name().to_string());
        record
    }

    /// What the control plane makes of that record under `policy`: its class, and whether
    /// the deployment cools down.
    fn control_plane_judges(
        status: u16,
        code: Option<&str>,
        policy: proto::CooldownPolicy,
    ) -> (Option<ErrorClass>, Option<ErrorClass>) {
        let record = record_of(status, code);
        let started = CooldownTracker::new().observe([&record], &rules(policy), T0 + 101);
        (
            failure_class(&record),
            started.first().map(|started| started.class),
        )
    }

    #[test]
    fn records_count_as_the_filter_counts_the_attempts_they_are_of() {
        let filter_policy = tollgate_core::proto::CooldownPolicy {
            allowed_fails: 0,
            cooldown_ms: COOLDOWN_MS,
            ..Default::default()
        };
        let policy = proto::CooldownPolicy {
            allowed_fails: 0,
            cooldown_ms: COOLDOWN_MS,
            ..Default::default()
        };
        let statuses: [u16; 25] = [
            0, 1, 99, 101, 200, 204, 301, 304, 400, 401, 403, 404, 408, 409, 413, 422, 429, 499,
            500, 502, 503, 504, 529, 599, 600,
        ];
        // Each status alone, and the codes the gateway's answers carry with the statuses
        // they come with (errors.rs, the translators, OpenAI and Azure passed through).
        let mut pairs: Vec<(u16, Option<&str>)> = statuses.iter().map(|&s| (s, None)).collect();
        pairs.extend([
            (400, Some("context_length_exceeded")),
            (413, Some("context_length_exceeded")),
            (422, Some("context_length_exceeded")),
            (400, Some("content_filter")),
            (400, Some("content_policy_violation")),
            (400, Some("invalid_prompt")),
            (400, Some("invalid_request_error")),
            (401, Some("invalid_api_key")),
            (404, Some("model_not_found")),
            (408, Some("timeout")),
            (504, Some("timeout")),
            (429, Some("rate_limit_exceeded")),
            (529, Some("overloaded")),
            (500, Some("server_error")),
            // A code that makes the request at fault on a status that otherwise is the
            // deployment's: the record carries the filter's class, so neither counts it.
            (500, Some("context_length_exceeded")),
            (429, Some("content_filter")),
        ]);
        for (status, code) in pairs {
            let (filter_class, filter_cooled) = filter_judges(status, code, filter_policy);
            let (class, cooled) = control_plane_judges(status, code, policy);
            let counted = filter_class.filter(|class| class.is_deployment_fault());
            assert_eq!(class, counted, "{status} {code:?}");
            assert_eq!(cooled, counted, "{status} {code:?}");
            assert_eq!(filter_cooled, cooled.is_some(), "{status} {code:?}");
        }
        // A record of an older filter (no class): judged by its status alone.
        let mut old = record_of(500, Some("context_length_exceeded"));
        old.error_class.clear();
        assert_eq!(failure_class(&old), Some(ErrorClass::ServerError));
    }

    #[test]
    fn each_class_takes_the_same_policy_entry_as_in_the_filter() {
        // Every entry 0 but the one under test, which allows one failure: the first failure
        // of a class cools down unless its class takes that entry.
        for status in [0, 401, 403, 404, 408, 429, 500, 503, 504, 529] {
            for entry in 0..6 {
                let given = |at: usize| if at == entry { Some(1) } else { Some(0) };
                let filter_policy = tollgate_core::proto::CooldownPolicy {
                    allowed_fails: 0,
                    timeout: given(0),
                    rate_limit: given(1),
                    server_error: given(2),
                    authentication: given(3),
                    bad_request: given(4),
                    content_policy: given(5),
                    cooldown_ms: COOLDOWN_MS,
                    ..Default::default()
                };
                let policy = proto::CooldownPolicy {
                    allowed_fails: 0,
                    timeout: given(0),
                    rate_limit: given(1),
                    server_error: given(2),
                    authentication: given(3),
                    bad_request: given(4),
                    content_policy: given(5),
                    cooldown_ms: COOLDOWN_MS,
                    ..Default::default()
                };
                let (_, filter_cooled) = filter_judges(status, None, filter_policy);
                let (_, cooled) = control_plane_judges(status, None, policy);
                assert_eq!(filter_cooled, cooled.is_some(), "{status}, entry {entry}");
            }
        }
        // BadRequestErrorAllowedFails does not govern 404 (LiteLLM's NotFoundError is no
        // BadRequestError): allowed_fails does, on both sides.
        let filter_policy = tollgate_core::proto::CooldownPolicy {
            allowed_fails: 0,
            bad_request: Some(5),
            cooldown_ms: COOLDOWN_MS,
            ..Default::default()
        };
        let policy = proto::CooldownPolicy {
            allowed_fails: 0,
            bad_request: Some(5),
            cooldown_ms: COOLDOWN_MS,
            ..Default::default()
        };
        assert!(filter_judges(404, None, filter_policy).1);
        assert_eq!(
            control_plane_judges(404, None, policy).1,
            Some(ErrorClass::NotFound)
        );
    }

    #[test]
    fn nothing_cools_down_while_cooldowns_are_disabled() {
        let rules = rules(proto::CooldownPolicy {
            disabled: true,
            allowed_fails: 0,
            cooldown_ms: COOLDOWN_MS,
            ..Default::default()
        });
        let mut tracker = CooldownTracker::new();
        let records: Vec<_> = (0..10).map(|n| failed("a", 500, T0 + n)).collect();
        assert_eq!(tracker.observe(&records, &rules, T0 + 1_000), vec![]);
        assert_eq!(tracker.cooldowns(), set(&[]));
    }

    #[test]
    fn the_only_deployment_of_its_group_never_cools_down() {
        let rules = allowing(0);
        let mut tracker = CooldownTracker::new();
        let records = [failed("s", 500, T0), failed("unknown", 500, T0)];
        assert_eq!(tracker.observe(&records, &rules, T0 + 1_000), vec![]);
        assert_eq!(tracker.cooldowns(), set(&[]));
        // Its group-mates in "gpt" do.
        assert_eq!(
            tracker
                .observe(&[failed("b", 500, T0)], &rules, T0 + 1_000)
                .len(),
            1
        );
    }

    #[test]
    fn counts_start_again_each_minute() {
        let rules = allowing(3);
        let mut tracker = CooldownTracker::new();
        // Three in the first minute (the last ends at T0 + 59 900), one in the next.
        let records: Vec<_> = [57_000, 58_000, 59_800, 60_000]
            .into_iter()
            .map(|at| failed("a", 500, T0 + at))
            .collect();
        assert!(feed(&mut tracker, &rules, &records)
            .iter()
            .all(Vec::is_empty));
        // Three more in the second minute: that is four there.
        let records: Vec<_> = [61_000, 62_000, 63_000]
            .into_iter()
            .map(|at| failed("a", 500, T0 + at))
            .collect();
        let results = feed(&mut tracker, &rules, &records);
        assert_eq!(
            results,
            vec![
                vec![],
                vec![],
                vec![started(
                    "a",
                    ErrorClass::ServerError,
                    4,
                    T0 + 63_100 + COOLDOWN_MS
                )]
            ]
        );
    }

    #[test]
    fn a_late_record_of_the_previous_minute_counts_there_older_ones_not_at_all() {
        // Two minutes of cooldown, so that one tipped in the previous minute still runs.
        let cooldown_ms = 2 * MINUTE_MS;
        let rules = rules(proto::CooldownPolicy {
            allowed_fails: 1,
            cooldown_ms,
            ..Default::default()
        });
        let mut tracker = CooldownTracker::new();
        let now = T0 + 2 * MINUTE_MS + 30_000;
        // One in the third minute, then late ones: one of the second, two of the first.
        let records = [
            failed("a", 500, T0 + 2 * MINUTE_MS + 1_000),
            failed("a", 500, T0 + MINUTE_MS + 1_000),
            failed("a", 500, T0 + 1_000),
            failed("a", 500, T0 + 2_000),
        ];
        assert_eq!(tracker.observe(&records, &rules, now), vec![]);
        // A second one of the second minute goes over 1 there.
        assert_eq!(
            tracker.observe(&[failed("a", 500, T0 + MINUTE_MS + 29_000)], &rules, now),
            vec![started(
                "a",
                ErrorClass::ServerError,
                2,
                T0 + MINUTE_MS + 29_100 + cooldown_ms
            )]
        );
    }

    #[test]
    fn counts_start_again_after_a_cooldown() {
        let rules = allowing(1);
        let mut tracker = CooldownTracker::new();
        let results = feed(
            &mut tracker,
            &rules,
            &[failed("a", 500, T0), failed("a", 500, T0 + 1_000)],
        );
        let first_until = T0 + 1_100 + COOLDOWN_MS;
        assert_eq!(
            results[1],
            vec![started("a", ErrorClass::ServerError, 2, first_until)]
        );
        // A failure that ended before the one that tipped it (a slower filter's batch)
        // no longer counts; the next one is the first of a new round.
        assert_eq!(
            tracker.observe(&[failed("a", 500, T0 + 500)], &rules, T0 + 2_000),
            vec![]
        );
        assert_eq!(
            feed(&mut tracker, &rules, &[failed("a", 500, T0 + 2_000)]),
            vec![vec![]]
        );
        // The second of the new round extends the cooldown.
        let second_until = T0 + 3_100 + COOLDOWN_MS;
        assert_eq!(
            feed(&mut tracker, &rules, &[failed("a", 500, T0 + 3_000)]),
            vec![vec![started("a", ErrorClass::ServerError, 2, second_until)]]
        );
        assert_eq!(tracker.cooldowns(), set(&[("a", second_until)]));
    }

    #[test]
    fn a_cooldown_already_over_is_not_pushed_and_expired_ones_drop_out() {
        let rules = allowing(0);
        let mut tracker = CooldownTracker::new();
        // A backlog delivered a minute late: it tips, but the cooldown is long over.
        let late = failed("b", 500, T0);
        assert_eq!(tracker.observe([&late], &rules, T0 + MINUTE_MS), vec![]);
        assert_eq!(tracker.cooldowns(), set(&[]));
        // a cools down; b's cooldown after a's ended drops a out of the set.
        let a_until = T0 + MINUTE_MS + 100 + COOLDOWN_MS;
        assert_eq!(
            tracker
                .observe(
                    &[failed("a", 500, T0 + MINUTE_MS)],
                    &rules,
                    T0 + MINUTE_MS + 200
                )
                .len(),
            1
        );
        assert_eq!(tracker.cooldowns(), set(&[("a", a_until)]));
        let later = T0 + MINUTE_MS + 10_000;
        assert_eq!(
            tracker.observe(&[failed("b", 500, later - 200)], &rules, later),
            vec![started(
                "b",
                ErrorClass::ServerError,
                1,
                later - 100 + COOLDOWN_MS
            )]
        );
        assert_eq!(
            tracker.cooldowns(),
            set(&[("b", later - 100 + COOLDOWN_MS)])
        );
        assert_eq!(
            running_at(&tracker.cooldowns(), later - 100 + COOLDOWN_MS),
            set(&[])
        );
    }

    #[test]
    fn a_record_ending_after_now_counts_as_of_now() {
        let rules = allowing(0);
        let mut tracker = CooldownTracker::new();
        // A filter whose clock is an hour ahead.
        let ahead = failed("a", 500, T0 + 3_600_000);
        assert_eq!(
            tracker.observe([&ahead], &rules, T0),
            vec![started("a", ErrorClass::ServerError, 1, T0 + COOLDOWN_MS)]
        );
    }

    #[test]
    fn without_router_settings_litellm_defaults_hold() {
        let rules = CooldownRules::new(None, &deployments());
        let mut tracker = CooldownTracker::new();
        let records: Vec<_> = (0..4).map(|n| failed("a", 500, T0 + n)).collect();
        // allowed_fails 3, cooldown_time 5 s.
        assert_eq!(
            tracker.observe(&records, &rules, T0 + 1_000),
            vec![started("a", ErrorClass::ServerError, 4, T0 + 103 + 5_000)]
        );
    }

    #[test]
    fn the_judge_rebuilds_its_rules_only_for_a_new_version() {
        let mut judge = CooldownJudge::new();
        assert!(!judge.rules_of(7));
        judge.set_rules(7, allowing(0));
        assert!(judge.rules_of(7));
        assert!(!judge.rules_of(8));
        assert_eq!(
            judge.observe(&[failed("a", 500, T0)], T0 + 1_000),
            vec![started(
                "a",
                ErrorClass::ServerError,
                1,
                T0 + 100 + COOLDOWN_MS
            )]
        );
        assert_eq!(judge.cooldowns(), set(&[("a", T0 + 100 + COOLDOWN_MS)]));
    }
}
