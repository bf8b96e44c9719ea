//! The state the hub serves filters, kept between versions so that a change is sent as a
//! delta: the keys that changed, not all of them.
//!
//! Each new version is recorded as a [`Step`] (what changed from the version before). A
//! stream that was last sent version `v` gets one delta composed over the steps since `v`,
//! built once per published version and shared by every stream at `v`; a stream further
//! behind than the history reaches gets a full snapshot.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::pricing::PriceCatalog;
use crate::proto::{self, control_message};
use crate::store::StateChanges;
use crate::sync::{build_snapshot, snapshot_keys};

/// Versions kept in the history at most.
const MAX_STEPS: usize = 64;
/// Key changes kept in the history at most, when the keys are fewer than this: past the
/// number of keys, a full snapshot is no larger than the delta.
const MIN_KEY_CHANGES_KEPT: usize = 4096;

/// Teams by id: their models and blocked flag (what keys inherit from them).
pub type Teams = BTreeMap<String, (Vec<String>, bool)>;

/// What a stream needs to catch up with the served version.
#[derive(Clone)]
pub enum CatchUp {
    /// It has the served version.
    UpToDate,
    /// One delta onto the version it was sent (shared by the streams at that version),
    /// leading to `version`.
    Delta {
        /// The `ControlMessage` holding the delta.
        message: Arc<proto::ControlMessage>,
        /// The served version.
        version: u64,
    },
    /// A full snapshot: its version is older than the history reaches (boxed: it is far
    /// larger than the other variants).
    Full(Box<proto::Snapshot>),
}

/// What changed from the version before (its deployments hold provider keys: no `Debug`).
struct Step {
    base_version: u64,
    settings_before: proto::Settings,
    deployments_before: Arc<Vec<proto::Deployment>>,
    /// Keys added or changed, whole.
    keys: Vec<proto::VirtualKey>,
    /// Hashes of the keys removed.
    removed_keys: Vec<String>,
}

impl Step {
    fn key_changes(&self) -> usize {
        self.keys.len() + self.removed_keys.len()
    }
}

/// The served state and its recent history.
pub struct Served {
    version: u64,
    settings: proto::Settings,
    deployments: Arc<Vec<proto::Deployment>>,
    /// Keys by hash (the order of a full snapshot).
    keys: BTreeMap<String, proto::VirtualKey>,
    /// The teams the keys were built with; `None` when unknown (a snapshot built elsewhere):
    /// then only a full read can follow.
    teams: Option<Teams>,
    /// Oldest first; each step's base version is the version of the one before.
    history: VecDeque<Step>,
    /// Deltas onto older versions, by base version, built once per served version.
    deltas: HashMap<u64, Arc<proto::ControlMessage>>,
}

/// What a budget alert says about its scope, from the served state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetOwner {
    /// The budget, US dollars per window.
    pub max_budget: Option<f64>,
    /// The alert threshold.
    pub soft_budget: Option<f64>,
    /// For a key (and a key x model): its hash, alias, user and team.
    pub token: Option<String>,
    /// The key's alias.
    pub key_alias: Option<String>,
    /// The key's user, or the user whose budget it is.
    pub user_id: Option<String>,
    /// The key's team, or the team whose budget it is.
    pub team_id: Option<String>,
    /// The end user whose budget it is.
    pub customer_id: Option<String>,
}

impl Served {
    /// The budget of `scope`/`id` and who it belongs to, when the served state has one.
    pub fn budget_owner(&self, scope: &str, id: &str) -> Option<BudgetOwner> {
        let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_string());
        let settings_budget = |wanted: proto::BudgetScope, id: &str| {
            self.settings
                .budgets
                .iter()
                .find(|budget| budget.scope == wanted as i32 && budget.id == id)
        };
        let from_key =
            |key: &proto::VirtualKey, max_budget: Option<f64>, soft_budget| BudgetOwner {
                max_budget,
                soft_budget,
                token: Some(key.key_sha256.clone()),
                key_alias: non_empty(&key.key_alias),
                user_id: non_empty(&key.user_id),
                team_id: non_empty(&key.team_id),
                customer_id: None,
            };
        match scope {
            "key" => self
                .keys
                .get(id)
                .map(|key| from_key(key, key.max_budget, key.soft_budget)),
            "key_model" => {
                let (hash, model) = id.split_once('/')?;
                let key = self.keys.get(hash)?;
                let max = key.model_max_budget.get(model).copied()?;
                Some(from_key(key, Some(max), None))
            }
            "user" | "team" | "end_user" | "global" => {
                let wanted = match scope {
                    "user" => proto::BudgetScope::User,
                    "team" => proto::BudgetScope::Team,
                    "end_user" => proto::BudgetScope::EndUser,
                    _ => proto::BudgetScope::Global,
                };
                let budget = settings_budget(wanted, id).or_else(|| {
                    (wanted == proto::BudgetScope::EndUser)
                        .then(|| settings_budget(wanted, ""))
                        .flatten()
                })?;
                Some(BudgetOwner {
                    max_budget: budget.max_budget,
                    soft_budget: budget.soft_budget,
                    user_id: (scope == "user").then(|| id.to_string()),
                    team_id: (scope == "team").then(|| id.to_string()),
                    customer_id: (scope == "end_user").then(|| id.to_string()),
                    ..BudgetOwner::default()
                })
            }
            _ => None,
        }
    }

    /// Whether the served state gives `scope`/`id` a budget (so its spend goes to the
    /// filters): scopes as `spend_totals` names them.
    pub fn is_budgeted(&self, scope: &str, id: &str) -> bool {
        let in_settings = |wanted: proto::BudgetScope, id: &str| {
            self.settings
                .budgets
                .iter()
                .any(|budget| budget.scope == wanted as i32 && budget.id == id)
        };
        match scope {
            "key" => self
                .keys
                .get(id)
                .is_some_and(|key| key.max_budget.is_some() || key.soft_budget.is_some()),
            "key_model" => id.split_once('/').is_some_and(|(hash, model)| {
                self.keys
                    .get(hash)
                    .is_some_and(|key| key.model_max_budget.contains_key(model))
            }),
            "user" => in_settings(proto::BudgetScope::User, id),
            "team" => in_settings(proto::BudgetScope::Team, id),
            // An empty id is every end user's budget (max_end_user_budget).
            "end_user" => {
                in_settings(proto::BudgetScope::EndUser, id)
                    || in_settings(proto::BudgetScope::EndUser, "")
            }
            "global" => in_settings(proto::BudgetScope::Global, ""),
            _ => false,
        }
    }

    /// Serves `snapshot`; `teams` are those its keys were built with, when known.
    pub fn new(snapshot: proto::Snapshot, teams: Option<Teams>) -> Served {
        Served {
            version: snapshot.version,
            settings: snapshot.settings.unwrap_or_default(),
            deployments: Arc::new(snapshot.deployments),
            keys: by_hash(snapshot.keys),
            teams,
            history: VecDeque::new(),
            deltas: HashMap::new(),
        }
    }

    /// The served version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of keys served.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Keys added, changed or removed by the newest version.
    pub fn last_key_changes(&self) -> usize {
        self.history.back().map_or(0, Step::key_changes)
    }

    /// Number of deployments served.
    pub fn deployment_count(&self) -> usize {
        self.deployments.len()
    }

    /// The served router settings (`None` for a snapshot built without them).
    pub fn router_settings(&self) -> Option<&proto::RouterSettings> {
        self.settings.router.as_ref()
    }

    /// The served deployments.
    pub fn deployments(&self) -> &[proto::Deployment] {
        &self.deployments
    }

    /// The full snapshot of the served version (keys in hash order).
    pub fn snapshot(&self) -> proto::Snapshot {
        proto::Snapshot {
            version: self.version,
            settings: Some(self.settings.clone()),
            deployments: self.deployments.as_ref().clone(),
            keys: self.keys.values().cloned().collect(),
        }
    }

    /// Moves to `snapshot` (newer than the served version), comparing every key.
    pub fn replace(&mut self, snapshot: proto::Snapshot, teams: Option<Teams>) {
        let keys = by_hash(snapshot.keys);
        let upserted: Vec<proto::VirtualKey> = keys
            .values()
            .filter(|key| self.keys.get(&key.key_sha256) != Some(*key))
            .cloned()
            .collect();
        let removed: Vec<String> = self
            .keys
            .keys()
            .filter(|hash| !keys.contains_key(*hash))
            .cloned()
            .collect();
        self.keys = keys;
        self.advance(
            snapshot.version,
            snapshot.settings.unwrap_or_default(),
            Some(snapshot.deployments),
            (upserted, removed),
            teams,
        );
    }

    /// Moves to the stored version from what changed since the served one; false when the
    /// changes are not enough (removals forgotten, a team changed, teams unknown) and only
    /// a full read will do. Deployments are priced from `prices`.
    pub fn apply_changes(&mut self, changes: StateChanges, prices: &PriceCatalog) -> bool {
        let StateChanges {
            state,
            deployments_changed,
            removed_keys,
            complete,
        } = changes;
        // A changed team changes every key of it: the changes name only written keys.
        let teams_kept = self.teams.as_ref().is_some_and(|served| {
            served
                .iter()
                .all(|(id, team)| state.teams.get(id) == Some(team))
        });
        if !complete || !teams_kept || state.version <= self.version {
            return false;
        }
        let mut upserted = Vec::new();
        let default_parallel = crate::limits::default_key_parallel(&state.settings);
        for key in snapshot_keys(&state.keys, &state.teams, default_parallel) {
            if self.keys.get(&key.key_sha256) != Some(&key) {
                self.keys.insert(key.key_sha256.clone(), key.clone());
                upserted.push(key);
            }
        }
        let mut removed = Vec::new();
        for hash in removed_keys {
            if self.keys.remove(&hash).is_some() {
                removed.push(hash);
            }
        }
        let next = build_snapshot(
            state.version,
            &state.deployments,
            &state.settings,
            &state.budgets,
            &state.rate_limits,
            prices,
        );
        self.advance(
            state.version,
            next.settings.unwrap_or_default(),
            deployments_changed.then_some(next.deployments),
            (upserted, removed),
            Some(state.teams),
        );
        true
    }

    /// Records the step to `version` (the keys are already changed; `deployments` is `None`
    /// when they did not) and builds the delta onto the version before, which every stream
    /// holding it will need.
    fn advance(
        &mut self,
        version: u64,
        settings: proto::Settings,
        deployments: Option<Vec<proto::Deployment>>,
        (keys, removed_keys): (Vec<proto::VirtualKey>, Vec<String>),
        teams: Option<Teams>,
    ) {
        let deployments = match deployments {
            Some(deployments) if *self.deployments != deployments => Arc::new(deployments),
            _ => Arc::clone(&self.deployments),
        };
        let step = Step {
            base_version: self.version,
            settings_before: std::mem::replace(&mut self.settings, settings),
            deployments_before: std::mem::replace(&mut self.deployments, deployments),
            keys,
            removed_keys,
        };
        let base = step.base_version;
        self.version = version;
        self.teams = teams;
        self.history.push_back(step);
        let budget = self.keys.len().max(MIN_KEY_CHANGES_KEPT);
        let mut kept_changes: usize = self.history.iter().map(Step::key_changes).sum();
        while self.history.len() > MAX_STEPS || (kept_changes > budget && self.history.len() > 1) {
            if let Some(oldest) = self.history.pop_front() {
                kept_changes -= oldest.key_changes();
            }
        }
        self.deltas.clear();
        if let Some(delta) = self.compose(base) {
            self.deltas.insert(base, Arc::new(delta));
        }
    }

    /// What a stream last sent version `sent` needs.
    pub fn catch_up(&mut self, sent: u64) -> CatchUp {
        if sent == self.version {
            return CatchUp::UpToDate;
        }
        let version = self.version;
        if let Some(message) = self.deltas.get(&sent) {
            return CatchUp::Delta {
                message: Arc::clone(message),
                version,
            };
        }
        match self.compose(sent) {
            Some(delta) => {
                let message = Arc::new(delta);
                self.deltas.insert(sent, Arc::clone(&message));
                CatchUp::Delta { message, version }
            }
            None => CatchUp::Full(Box::new(self.snapshot())),
        }
    }

    /// The delta from `base` to the served version, if the history reaches `base`.
    fn compose(&self, base: u64) -> Option<proto::ControlMessage> {
        let first = self
            .history
            .iter()
            .position(|step| step.base_version == base)?;
        let steps = self.history.range(first..);
        // Later steps win: a key's last change is its state now.
        let mut keys: BTreeMap<&str, Option<&proto::VirtualKey>> = BTreeMap::new();
        for step in steps {
            for key in &step.keys {
                keys.insert(&key.key_sha256, Some(key));
            }
            for hash in &step.removed_keys {
                keys.insert(hash, None);
            }
        }
        let from = self.history.get(first)?;
        let changed_deployments = diff_deployments(&from.deployments_before, &self.deployments);
        let delta = proto::SnapshotDelta {
            base_version: base,
            version: self.version,
            settings: (from.settings_before != self.settings).then(|| self.settings.clone()),
            deployments: changed_deployments.upserted,
            removed_deployment_ids: changed_deployments.removed,
            deployment_order: changed_deployments.order,
            keys: keys.values().filter_map(|key| key.cloned()).collect(),
            removed_key_sha256: keys
                .iter()
                .filter(|(_, key)| key.is_none())
                .map(|(hash, _)| hash.to_string())
                .collect(),
        };
        Some(proto::ControlMessage {
            kind: Some(control_message::Kind::Delta(delta)),
        })
    }
}

/// Versions and counts only: deployments hold provider keys.
impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("version", &self.version)
            .field("deployments", &self.deployments.len())
            .field("keys", &self.keys.len())
            .field("history", &self.history.len())
            .finish_non_exhaustive()
    }
}

/// The kind and version only: snapshots and deltas hold provider keys.
impl std::fmt::Debug for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatchUp::UpToDate => f.write_str("UpToDate"),
            CatchUp::Delta { version, .. } => write!(f, "Delta {{ version: {version} }}"),
            CatchUp::Full(snapshot) => write!(f, "Full {{ version: {} }}", snapshot.version),
        }
    }
}

fn by_hash(keys: Vec<proto::VirtualKey>) -> BTreeMap<String, proto::VirtualKey> {
    keys.into_iter()
        .map(|key| (key.key_sha256.clone(), key))
        .collect()
}

/// The deployment fields of a delta.
#[derive(Default)]
struct DeploymentDiff {
    upserted: Vec<proto::Deployment>,
    removed: Vec<String>,
    order: Vec<String>,
}

/// What turns `before` into `after`: the deployments added or changed, the ids removed,
/// and the full order when replacing in place and appending the new ones does not give it
/// (the rule the filter applies).
fn diff_deployments(before: &[proto::Deployment], after: &[proto::Deployment]) -> DeploymentDiff {
    if before == after {
        return DeploymentDiff::default();
    }
    let old: HashMap<&str, &proto::Deployment> =
        before.iter().map(|d| (d.id.as_str(), d)).collect();
    let new_ids: HashSet<&str> = after.iter().map(|d| d.id.as_str()).collect();
    let upserted: Vec<proto::Deployment> = after
        .iter()
        .filter(|d| old.get(d.id.as_str()) != Some(d))
        .cloned()
        .collect();
    let removed: Vec<String> = before
        .iter()
        .filter(|d| !new_ids.contains(d.id.as_str()))
        .map(|d| d.id.clone())
        .collect();
    let applied: Vec<&str> = before
        .iter()
        .map(|d| d.id.as_str())
        .filter(|id| new_ids.contains(id))
        .chain(
            after
                .iter()
                .map(|d| d.id.as_str())
                .filter(|id| !old.contains_key(id)),
        )
        .collect();
    let wanted: Vec<&str> = after.iter().map(|d| d.id.as_str()).collect();
    let order = if applied == wanted {
        Vec::new()
    } else {
        wanted.into_iter().map(str::to_string).collect()
    };
    DeploymentDiff {
        upserted,
        removed,
        order,
    }
}
