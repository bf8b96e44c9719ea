//! The spend every filter is pushed (`SpendUpdate`): the spend of each budgeted scope in its
//! current window, read from `spend_totals`, published to every stream of this replica.
//!
//! A filter enforces budgets from this spend plus what it charged itself since; to stop
//! adding a charge of its own exactly when the pushed spend counts it, every stored usage
//! batch is acknowledged with this replica's ledger sequence, and every update carries the
//! sequence read before its spend was (see `tollgate_core::spend` in the filter).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::delta::BudgetOwner;
use crate::proto;
use crate::store::{now_unix_ms, BudgetAlertKind, SpendRow};
use crate::sync::SyncHub;

/// How long a budget alert's POST may take.
const ALERT_TIMEOUT: Duration = Duration::from_secs(5);

/// A budget crossed between two reads: what the webhook is told.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetAlert {
    /// `spend_totals` scope name.
    pub scope: &'static str,
    /// The scope's id.
    pub id: String,
    /// Soft or max budget.
    pub kind: BudgetAlertKind,
    /// Spend of the window now.
    pub spend: f64,
    /// The window's end (unix ms, 0: never): one alert per kind per window.
    pub reset_at: u64,
    /// Whose budget.
    pub owner: BudgetOwner,
}

impl BudgetAlert {
    /// The event in LiteLLM's webhook shape (`soft_budget_crossed` / `budget_crossed`,
    /// `event_group` key, user, team, customer or proxy).
    pub fn payload(&self) -> serde_json::Value {
        let (event, what) = match self.kind {
            BudgetAlertKind::Soft => ("soft_budget_crossed", "Soft Budget Crossed"),
            BudgetAlertKind::Max => ("budget_crossed", "Budget Crossed"),
        };
        let (group, label) = match self.scope {
            "key" | "key_model" => ("key", "Key"),
            "user" => ("user", "User"),
            "team" => ("team", "Team"),
            "end_user" => ("customer", "Customer"),
            _ => ("proxy", "Proxy"),
        };
        serde_json::json!({
            "spend": self.spend,
            "max_budget": self.owner.max_budget,
            "soft_budget": self.owner.soft_budget,
            "token": self.owner.token,
            "customer_id": self.owner.customer_id,
            "user_id": self.owner.user_id,
            "team_id": self.owner.team_id,
            "user_email": null,
            "key_alias": self.owner.key_alias,
            "projected_exceeded_date": null,
            "projected_spend": null,
            "event": event,
            "event_group": group,
            "event_message": format!("{label} Budget: {what}"),
        })
    }
}

/// The `spend_totals` name of a protocol scope.
fn scope_name(scope: i32) -> &'static str {
    match proto::BudgetScope::try_from(scope) {
        Ok(proto::BudgetScope::Key) => "key",
        Ok(proto::BudgetScope::User) => "user",
        Ok(proto::BudgetScope::Team) => "team",
        Ok(proto::BudgetScope::EndUser) => "end_user",
        Ok(proto::BudgetScope::KeyModel) => "key_model",
        _ => "global",
    }
}

/// How often the spend is read and, when it changed, pushed. Budgets overshoot by what the
/// other filters spend in about this long (plus their usage flush): see README.
pub const SPEND_PUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How often ended budget windows are reset.
const WINDOW_CLOCK_INTERVAL: Duration = Duration::from_secs(1);
/// A row is read again for this long after the time it was stamped with: its transaction
/// may commit later than that, and another replica's clock may be behind.
const CHANGE_SLACK_MS: u64 = 5_000;

/// A scope as the filter protocol names it, from the `spend_totals` name.
fn scope_of(name: &str) -> Option<proto::BudgetScope> {
    Some(match name {
        "key" => proto::BudgetScope::Key,
        "user" => proto::BudgetScope::User,
        "team" => proto::BudgetScope::Team,
        "end_user" => proto::BudgetScope::EndUser,
        "global" => proto::BudgetScope::Global,
        "key_model" => proto::BudgetScope::KeyModel,
        _ => return None,
    })
}

/// The protocol's entry for one scope's spend and window end.
fn spend_entry((scope, id): &(i32, String), (spend, reset_at): (f64, u64)) -> proto::Spend {
    proto::Spend {
        scope: *scope,
        id: id.clone(),
        spend,
        reset_at_unix_ms: reset_at,
    }
}

/// The spend of every budgeted scope, as last read, and what changed from the read before.
#[derive(Debug, Default)]
pub struct SpendView {
    /// Increases by one per published view.
    pub generation: u64,
    /// The ledger sequence read before this view's spend was.
    pub ledger_seq: u64,
    /// US dollars and window end (unix ms, 0: never) by (scope, id).
    totals: HashMap<(i32, String), (f64, u64)>,
    /// The entries that differ from the view before (removed scopes as 0).
    changed: Vec<proto::Spend>,
}

impl SpendView {
    /// The budgets `next` crossed since this view: a threshold above the spend here and at
    /// most the spend there. A scope this view did not have (a first read, a new budget) is
    /// not compared: what it crossed before was not seen crossing.
    pub fn crossed(
        &self,
        next: &SpendView,
        owner: impl Fn(&str, &str) -> Option<BudgetOwner>,
    ) -> Vec<BudgetAlert> {
        let mut alerts = Vec::new();
        for entry in &next.changed {
            let key = (entry.scope, entry.id.clone());
            let Some((before, _)) = self.totals.get(&key) else {
                continue;
            };
            let scope = scope_name(entry.scope);
            let Some(owner) = owner(scope, &entry.id) else {
                continue;
            };
            for (kind, threshold) in [
                (BudgetAlertKind::Soft, owner.soft_budget),
                (BudgetAlertKind::Max, owner.max_budget),
            ] {
                if threshold.is_some_and(|limit| *before < limit && limit <= entry.spend) {
                    alerts.push(BudgetAlert {
                        scope,
                        id: entry.id.clone(),
                        kind,
                        spend: entry.spend,
                        reset_at: entry.reset_at_unix_ms,
                        owner: owner.clone(),
                    });
                }
            }
        }
        alerts
    }

    /// Every budgeted scope's spend.
    pub fn full_update(&self) -> proto::SpendUpdate {
        let mut spend: Vec<proto::Spend> = self
            .totals
            .iter()
            .map(|(entry, value)| spend_entry(entry, *value))
            .collect();
        spend.sort_by(|a, b| (a.scope, &a.id).cmp(&(b.scope, &b.id)));
        proto::SpendUpdate {
            full: true,
            spend,
            ledger_seq: self.ledger_seq,
        }
    }

    /// What a stream that was last sent `sent_generation` needs: the changes when it has the
    /// view before this one, else everything.
    pub fn update_after(&self, sent_generation: u64) -> proto::SpendUpdate {
        if sent_generation.saturating_add(1) == self.generation {
            proto::SpendUpdate {
                full: false,
                spend: self.changed.clone(),
                ledger_seq: self.ledger_seq,
            }
        } else {
            self.full_update()
        }
    }

    /// The next view: `rows` read (all budgeted rows when `full`, else the changed ones),
    /// `budgeted` says which scopes filters need.
    fn next(
        &self,
        rows: Vec<SpendRow>,
        full: bool,
        ledger_seq: u64,
        budgeted: impl Fn(&str, &str) -> bool,
    ) -> SpendView {
        let mut totals = if full {
            HashMap::with_capacity(self.totals.len())
        } else {
            self.totals.clone()
        };
        for row in rows {
            let Some(scope) = scope_of(&row.scope) else {
                continue;
            };
            if !budgeted(&row.scope, &row.scope_id) {
                continue;
            }
            let reset_at = u64::try_from(row.reset_at).unwrap_or(0);
            totals.insert((scope as i32, row.scope_id), (row.spend, reset_at));
        }
        let mut changed: Vec<proto::Spend> = totals
            .iter()
            .filter(|(entry, value)| self.totals.get(*entry) != Some(*value))
            .map(|(entry, value)| spend_entry(entry, *value))
            .collect();
        // A scope no longer budgeted is sent at 0 once, so no filter keeps its old spend.
        for entry in self.totals.keys() {
            if !totals.contains_key(entry) {
                changed.push(spend_entry(entry, (0.0, 0)));
            }
        }
        changed.sort_by(|a, b| (a.scope, &a.id).cmp(&(b.scope, &b.id)));
        SpendView {
            generation: self.generation.wrapping_add(1),
            ledger_seq,
            totals,
            changed,
        }
    }
}

/// Reads the spend and publishes it to the hub's streams every [`SPEND_PUSH_INTERVAL`]
/// (when it changed, or the ledger moved on), and resets ended budget windows every
/// [`WINDOW_CLOCK_INTERVAL`]. Ends when the hub shuts down.
pub async fn run_spend_publisher(hub: Arc<SyncHub>) {
    let mut ticker = hub.ticker(SPEND_PUSH_INTERVAL);
    let clock_every = (WINDOW_CLOCK_INTERVAL.as_millis() / SPEND_PUSH_INTERVAL.as_millis()).max(1);
    let mut ticks: u128 = 0;
    // The served version the last full read was made for: budgets may have changed since.
    let mut read_for_version: Option<u64> = None;
    let mut last_read_ms: u64 = 0;
    while ticker.tick().await {
        ticks = ticks.wrapping_add(1);
        let now = now_unix_ms();
        let mut full = read_for_version != Some(hub.current_version());
        if ticks.is_multiple_of(clock_every) {
            match hub.store().reset_budget_windows(now).await {
                Ok(0) => {}
                Ok(reset) => {
                    tracing::info!(reset, "budget windows reset");
                    full = true;
                }
                Err(error) => tracing::warn!(%error, "resetting budget windows failed"),
            }
        }
        let version = hub.current_version();
        // Read before the spend: every batch acknowledged at or below it is in the read.
        let ledger_seq = hub.ledger_seq().load(Ordering::SeqCst);
        let since = if full {
            0
        } else {
            last_read_ms.saturating_sub(CHANGE_SLACK_MS)
        };
        let rows = match hub.store().spend_totals_since(since).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "reading spend failed; retrying");
                continue;
            }
        };
        last_read_ms = now;
        if full {
            read_for_version = Some(version);
        }
        let current = hub.spend_view();
        let (next, alerts) = hub.with_served(|served| {
            let next = current.next(rows, full, ledger_seq, |scope, id| {
                served.is_budgeted(scope, id)
            });
            let alerts = match hub.alert_webhook() {
                Some(_) => current.crossed(&next, |scope, id| served.budget_owner(scope, id)),
                None => Vec::new(),
            };
            (next, alerts)
        });
        if let Some(url) = hub.alert_webhook() {
            for alert in alerts {
                tokio::spawn(send_alert(hub.clone(), url.to_string(), alert));
            }
        }
        if next.changed.is_empty() && next.ledger_seq == current.ledger_seq && !full {
            continue;
        }
        hub.publish_spend(next);
    }
}

/// Sends `alert` to the webhook, unless another replica (or an earlier read) already did for
/// this window. A failed POST is logged, not retried: the alert is about a moment.
async fn send_alert(hub: Arc<SyncHub>, url: String, alert: BudgetAlert) {
    match hub
        .store()
        .claim_budget_alert(alert.scope, &alert.id, alert.kind, alert.reset_at)
        .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            tracing::warn!(%error, "claiming a budget alert failed; not sent");
            return;
        }
    }
    let client = reqwest::Client::new();
    let sent = client
        .post(&url)
        .timeout(ALERT_TIMEOUT)
        .json(&alert.payload())
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => {
            tracing::info!(scope = alert.scope, kind = ?alert.kind, "budget alert sent");
        }
        Ok(response) => {
            tracing::warn!(status = %response.status(), "the alert webhook refused a budget alert");
        }
        // The URL may hold a token: the error is logged without it.
        Err(error) => tracing::warn!(error = %error.without_url(), "budget alert not sent"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scope: &str, id: &str, spend: f64) -> SpendRow {
        SpendRow {
            scope: scope.into(),
            scope_id: id.into(),
            spend,
            reset_at: 0,
        }
    }

    #[test]
    fn views_send_what_changed_and_forget_scopes_no_longer_budgeted() {
        let first = SpendView::default().next(
            vec![
                row("key", "k", 1.0),
                row("user", "u", 2.0),
                row("team", "x", 3.0),
            ],
            true,
            5,
            |scope, _| scope != "team",
        );
        assert_eq!(first.generation, 1);
        let full = first.full_update();
        assert!(full.full);
        assert_eq!(
            full.spend
                .iter()
                .map(|s| (s.id.as_str(), s.spend))
                .collect::<Vec<_>>(),
            vec![("k", 1.0), ("u", 2.0)]
        );
        let second = first.next(vec![row("key", "k", 1.5)], false, 6, |_, _| true);
        let update = second.update_after(1);
        assert!(!update.full);
        assert_eq!(update.ledger_seq, 6);
        assert_eq!(
            update
                .spend
                .iter()
                .map(|s| (s.id.as_str(), s.spend))
                .collect::<Vec<_>>(),
            vec![("k", 1.5)]
        );
        // A stream two views behind gets everything.
        assert!(second.update_after(0).full);
        // The user lost its budget: a full read no longer has it, and it is sent at 0.
        let third = second.next(
            vec![row("key", "k", 1.5), row("user", "u", 2.0)],
            true,
            6,
            |scope, _| scope == "key",
        );
        assert_eq!(
            third
                .update_after(2)
                .spend
                .iter()
                .map(|s| (s.id.as_str(), s.spend))
                .collect::<Vec<_>>(),
            vec![("u", 0.0)]
        );
    }
}
