//! What each budgeted scope has spent, as one filter (a Wasm VM, or the native module)
//! knows it without asking anyone: the spend the control plane pushed (`SpendUpdate`) plus
//! what this filter charged since that the pushed spend does not count yet.
//!
//! A charge stops being this filter's own once the control plane has stored it and has
//! pushed a spend that counts it. The control plane acknowledges each stored usage batch
//! with its ledger sequence, and stamps each spend update with the sequence read before
//! the spend was: an acknowledged batch is counted in every update whose sequence is at
//! least its own. A batch is therefore never counted twice for long (at most until the
//! next update), and never left out.

use std::collections::{HashMap, VecDeque};

use crate::proto::{self, BudgetScope};

/// The scopes spend is kept per, as indexes of the per-scope maps.
const SCOPES: [BudgetScope; 6] = [
    BudgetScope::Key,
    BudgetScope::User,
    BudgetScope::Team,
    BudgetScope::EndUser,
    BudgetScope::Global,
    BudgetScope::KeyModel,
];

fn scope_index(scope: BudgetScope) -> Option<usize> {
    SCOPES.iter().position(|known| *known == scope)
}

/// Charges of some usage records, added up per scope: `(scope index, id, US dollars)`.
pub type Charges = Vec<(usize, String, f64)>;

/// The charges of one usage record: its cost against each scope it is charged to.
pub fn charges_of(record: &proto::UsageRecord) -> Charges {
    let Some(cost) = record.cost.filter(|cost| *cost > 0.0 && cost.is_finite()) else {
        return Charges::new();
    };
    let mut charges = Charges::with_capacity(6);
    let mut charge = |scope: BudgetScope, id: String| {
        if let Some(index) = scope_index(scope) {
            charges.push((index, id, cost));
        }
    };
    if !record.key_hash.is_empty() {
        charge(BudgetScope::Key, record.key_hash.clone());
        if !record.model_name.is_empty() {
            charge(
                BudgetScope::KeyModel,
                key_model_id(&record.key_hash, &record.model_name),
            );
        }
    }
    if !record.user_id.is_empty() {
        charge(BudgetScope::User, record.user_id.clone());
    }
    if !record.team_id.is_empty() {
        charge(BudgetScope::Team, record.team_id.clone());
    }
    if !record.end_user.is_empty() {
        charge(BudgetScope::EndUser, record.end_user.clone());
    }
    charge(BudgetScope::Global, String::new());
    charges
}

/// The id of a key's budget for one model (scope `KEY_MODEL`).
pub fn key_model_id(key_hash: &str, model: &str) -> String {
    [key_hash, "/", model].concat()
}

/// Adds `more` into `into`, one entry per scope and id.
pub fn merge_charges(into: &mut Charges, more: Charges) {
    for (scope, id, amount) in more {
        match into
            .iter_mut()
            .find(|(known_scope, known_id, _)| *known_scope == scope && *known_id == id)
        {
            Some(entry) => entry.2 += amount,
            None => into.push((scope, id, amount)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Pushed {
    spend: f64,
    reset_at_unix_ms: u64,
}

/// Charges of batches the control plane stored, waiting for a spend update that counts them.
#[derive(Debug)]
struct Stored {
    /// The stream they were acknowledged on.
    stream: u64,
    ledger_seq: u64,
    charges: Charges,
}

/// Spend per scope: pushed by the control plane, plus this filter's own charges it does not
/// count yet. See the module documentation.
#[derive(Debug, Default)]
pub struct SpendBook {
    pushed: [HashMap<String, Pushed>; 6],
    local: [HashMap<String, f64>; 6],
    stored: VecDeque<Stored>,
    /// Number of the current stream to the control plane (ledger sequences are per
    /// control-plane replica, so they only compare on one stream).
    stream: u64,
}

impl SpendBook {
    /// Stored batches kept waiting for a spend update at most; past it the oldest are taken
    /// as counted (a control plane that sends no spend updates must not grow the filter).
    pub const MAX_STORED_BATCHES: usize = 1024;

    /// What `scope`/`id` has spent in its current window, at `now_unix_ms`.
    pub fn spend(&self, scope: BudgetScope, id: &str, now_unix_ms: u64) -> f64 {
        let Some(index) = scope_index(scope) else {
            return 0.0;
        };
        let pushed = self
            .pushed
            .get(index)
            .and_then(|map| map.get(id))
            // Past its reset the window's spend is 0 until the control plane says more.
            .filter(|pushed| pushed.reset_at_unix_ms == 0 || now_unix_ms < pushed.reset_at_unix_ms)
            .map_or(0.0, |pushed| pushed.spend);
        let local = self
            .local
            .get(index)
            .and_then(|map| map.get(id))
            .copied()
            .unwrap_or(0.0);
        pushed + local
    }

    /// This filter charged `charges` (a record was queued).
    pub fn charge(&mut self, charges: &Charges) {
        for (scope, id, amount) in charges {
            if let Some(map) = self.local.get_mut(*scope) {
                *map.entry(id.clone()).or_insert(0.0) += amount;
            }
        }
    }

    /// `charges` no longer count as this filter's own: the control plane counts them, or
    /// they were dropped and never will be.
    pub fn release(&mut self, charges: &Charges) {
        for (scope, id, amount) in charges {
            if let Some(map) = self.local.get_mut(*scope) {
                if let Some(local) = map.get_mut(id.as_str()) {
                    *local -= amount;
                    // What subtraction leaves of a sum of the same numbers is rounding.
                    if *local <= 1e-12 {
                        map.remove(id.as_str());
                    }
                }
            }
        }
    }

    /// The control plane stored batches whose charges are `charges`, at `ledger_seq`.
    pub fn stored(&mut self, charges: Charges, ledger_seq: u64) {
        if charges.is_empty() {
            return;
        }
        if ledger_seq == 0 {
            // A control plane that keeps no ledger sequence sends no spend updates either:
            // nothing will ever count these for the filter.
            self.release(&charges);
            return;
        }
        self.stored.push_back(Stored {
            stream: self.stream,
            ledger_seq,
            charges,
        });
        while self.stored.len() > Self::MAX_STORED_BATCHES {
            if let Some(oldest) = self.stored.pop_front() {
                self.release(&oldest.charges);
            }
        }
    }

    /// The stream ended: the next one may reach another control-plane replica.
    pub fn stream_lost(&mut self) {
        self.stream = self.stream.wrapping_add(1);
    }

    /// Applies a spend update received on the current stream.
    pub fn apply(&mut self, update: &proto::SpendUpdate) {
        if update.full {
            for map in &mut self.pushed {
                map.clear();
            }
        }
        for spend in &update.spend {
            let Some(index) = proto::BudgetScope::try_from(spend.scope)
                .ok()
                .and_then(scope_index)
            else {
                continue;
            };
            if let Some(map) = self.pushed.get_mut(index) {
                let amount = if spend.spend.is_finite() {
                    spend.spend
                } else {
                    0.0
                };
                map.insert(
                    spend.id.clone(),
                    Pushed {
                        spend: amount,
                        reset_at_unix_ms: spend.reset_at_unix_ms,
                    },
                );
            }
        }
        // Batches stored before this stream began were stored before this update was read
        // (the filter saw their acknowledgement before it opened this stream); batches of
        // this stream count when their sequence is at most the update's.
        let stream = self.stream;
        let mut counted = Vec::new();
        self.stored.retain_mut(|stored| {
            let is_counted = stored.stream != stream || stored.ledger_seq <= update.ledger_seq;
            if is_counted {
                counted.push(std::mem::take(&mut stored.charges));
            }
            !is_counted
        });
        for charges in &counted {
            self.release(charges);
        }
    }

    /// Charges waiting for a spend update that counts them (for tests and stats).
    pub fn stored_batches(&self) -> usize {
        self.stored.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, user: &str, cost: Option<f64>) -> proto::UsageRecord {
        proto::UsageRecord {
            key_hash: key.into(),
            user_id: user.into(),
            model_name: "gpt".into(),
            cost,
            ..Default::default()
        }
    }

    fn update(
        full: bool,
        ledger_seq: u64,
        spend: &[(BudgetScope, &str, f64)],
    ) -> proto::SpendUpdate {
        proto::SpendUpdate {
            full,
            ledger_seq,
            spend: spend
                .iter()
                .map(|(scope, id, spend)| proto::Spend {
                    scope: *scope as i32,
                    id: (*id).into(),
                    spend: *spend,
                    reset_at_unix_ms: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn a_record_is_charged_to_each_of_its_scopes() {
        let charges = charges_of(&proto::UsageRecord {
            team_id: "t".into(),
            end_user: "e".into(),
            ..record("k", "u", Some(0.5))
        });
        let scopes: Vec<(BudgetScope, &str, f64)> = charges
            .iter()
            .map(|(scope, id, amount)| (SCOPES[*scope], id.as_str(), *amount))
            .collect();
        assert_eq!(
            scopes,
            vec![
                (BudgetScope::Key, "k", 0.5),
                (BudgetScope::KeyModel, "k/gpt", 0.5),
                (BudgetScope::User, "u", 0.5),
                (BudgetScope::Team, "t", 0.5),
                (BudgetScope::EndUser, "e", 0.5),
                (BudgetScope::Global, "", 0.5),
            ]
        );
        assert!(charges_of(&record("k", "u", None)).is_empty());
        assert!(charges_of(&record("k", "u", Some(0.0))).is_empty());
    }

    #[test]
    fn own_charges_count_until_an_update_counts_them_and_never_twice() {
        let mut book = SpendBook::default();
        book.apply(&update(true, 0, &[(BudgetScope::Key, "k", 1.0)]));
        let charges = charges_of(&record("k", "", Some(0.25)));
        book.charge(&charges);
        assert_eq!(book.spend(BudgetScope::Key, "k", 0), 1.25);
        // Stored at sequence 7; an update read before it (6) does not count it yet.
        book.stored(charges, 7);
        book.apply(&update(false, 6, &[(BudgetScope::Key, "k", 1.0)]));
        assert_eq!(book.spend(BudgetScope::Key, "k", 0), 1.25);
        // The update at 7 counts it: the pushed spend has it, the filter no longer adds it.
        book.apply(&update(false, 7, &[(BudgetScope::Key, "k", 1.25)]));
        assert_eq!(book.spend(BudgetScope::Key, "k", 0), 1.25);
        assert_eq!(book.stored_batches(), 0);
        assert_eq!(book.spend(BudgetScope::Global, "", 0), 0.0);
    }

    #[test]
    fn a_new_stream_counts_every_batch_stored_before_it() {
        let mut book = SpendBook::default();
        let charges = charges_of(&record("k", "", Some(2.0)));
        book.charge(&charges);
        book.stored(charges, 900);
        book.stream_lost();
        // Another replica, whose sequence is lower: still counts the earlier batch.
        book.apply(&update(true, 3, &[(BudgetScope::Key, "k", 2.0)]));
        assert_eq!(book.spend(BudgetScope::Key, "k", 0), 2.0);
        assert_eq!(book.stored_batches(), 0);
    }

    #[test]
    fn a_full_update_forgets_scopes_it_leaves_out_and_a_reset_window_is_zero() {
        let mut book = SpendBook::default();
        book.apply(&update(true, 1, &[(BudgetScope::User, "u", 3.0)]));
        book.apply(&update(true, 2, &[(BudgetScope::Team, "t", 1.0)]));
        assert_eq!(book.spend(BudgetScope::User, "u", 0), 0.0);
        book.apply(&proto::SpendUpdate {
            full: false,
            ledger_seq: 3,
            spend: vec![proto::Spend {
                scope: BudgetScope::Team as i32,
                id: "t".into(),
                spend: 5.0,
                reset_at_unix_ms: 1_000,
            }],
        });
        assert_eq!(book.spend(BudgetScope::Team, "t", 999), 5.0);
        assert_eq!(book.spend(BudgetScope::Team, "t", 1_000), 0.0);
    }

    #[test]
    fn without_ledger_sequences_or_past_the_bound_charges_are_let_go() {
        let mut book = SpendBook::default();
        let charges = charges_of(&record("k", "", Some(1.0)));
        book.charge(&charges);
        book.stored(charges, 0);
        assert_eq!(book.spend(BudgetScope::Key, "k", 0), 0.0);
        for seq in 1..=SpendBook::MAX_STORED_BATCHES as u64 + 1 {
            let charges = charges_of(&record("k", "", Some(1.0)));
            book.charge(&charges);
            book.stored(charges, seq);
        }
        assert_eq!(book.stored_batches(), SpendBook::MAX_STORED_BATCHES);
        assert_eq!(
            book.spend(BudgetScope::Key, "k", 0),
            SpendBook::MAX_STORED_BATCHES as f64
        );
    }

    #[test]
    fn charges_of_a_batch_add_up_per_scope() {
        let mut total = Charges::new();
        merge_charges(&mut total, charges_of(&record("k", "", Some(1.0))));
        merge_charges(&mut total, charges_of(&record("k", "", Some(0.5))));
        merge_charges(&mut total, charges_of(&record("j", "", Some(0.25))));
        let key_k = total
            .iter()
            .find(|(scope, id, _)| SCOPES[*scope] == BudgetScope::Key && id == "k");
        assert_eq!(key_k.map(|entry| entry.2), Some(1.5));
        let global = total
            .iter()
            .find(|(scope, _, _)| SCOPES[*scope] == BudgetScope::Global);
        assert_eq!(global.map(|entry| entry.2), Some(1.75));
    }
}
