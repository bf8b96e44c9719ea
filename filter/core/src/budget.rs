//! Budget enforcement: before a request goes upstream, every budget it would spend from
//! (its key's, the key's for this model, its user's, team's, end user's, the gateway's) is
//! checked against what that scope has spent in its window, as the filter knows it without
//! a network round trip ([`crate::spend::SpendBook`]).

use crate::auth::Caller;
use crate::proto::BudgetScope;
use crate::snapshot::BudgetLimit;
use crate::spend::key_model_id;
use crate::{GatewayError, State};

/// Which scope of a request crossed its soft budget (the first one found), for the
/// response header that warns the client.
pub type SoftBudgetCrossed = Option<&'static str>;

/// Checks the budgets of a request for `model` by `caller` on behalf of `end_user` (empty:
/// none). `spend` says what a scope has spent in its current window. `Err` is the refusal;
/// `Ok` says whether a soft budget was crossed. Scopes without a budget are not looked up.
pub fn check_budgets(
    state: &State,
    caller: &Caller,
    model: &str,
    end_user: &str,
    mut spend: impl FnMut(BudgetScope, &str) -> f64,
) -> Result<SoftBudgetCrossed, GatewayError> {
    let mut soft_crossed: SoftBudgetCrossed = None;
    let mut check = |limit: &BudgetLimit,
                     scope: BudgetScope,
                     id: &str,
                     name: &'static str,
                     describe: &dyn Fn() -> String|
     -> Result<(), GatewayError> {
        let spent = spend(scope, id);
        if let Some(max_budget) = limit.max {
            if spent >= max_budget {
                return Err(GatewayError::BudgetExceeded {
                    scope: describe(),
                    spend: spent,
                    max_budget,
                });
            }
        }
        if limit.soft.is_some_and(|soft| spent >= soft) {
            soft_crossed.get_or_insert(name);
        }
        Ok(())
    };

    if let Some(key) = &caller.key {
        let alias = || {
            if key.alias.is_empty() {
                "this key".to_string()
            } else {
                format!("key {}", key.alias)
            }
        };
        if let Some(limit) = &key.budget {
            check(limit, BudgetScope::Key, &caller.key_hash, "key", &alias)?;
        }
        if let Some((_, amount)) = key.model_budgets.iter().find(|(name, _)| name == model) {
            let limit = BudgetLimit {
                max: Some(*amount),
                soft: None,
            };
            let id = key_model_id(&caller.key_hash, model);
            check(&limit, BudgetScope::KeyModel, &id, "key_model", &|| {
                format!("{} on model {model}", alias())
            })?;
        }
        let budgets = &state.budgets;
        if let Some(limit) = budgets.users.get(&key.user_id) {
            check(limit, BudgetScope::User, &key.user_id, "user", &|| {
                format!("user {}", key.user_id)
            })?;
        }
        if let Some(limit) = budgets.teams.get(&key.team_id) {
            check(limit, BudgetScope::Team, &key.team_id, "team", &|| {
                format!("team {}", key.team_id)
            })?;
        }
    }
    let budgets = &state.budgets;
    if !end_user.is_empty() {
        let limit = budgets
            .end_users
            .get(end_user)
            .or(budgets.every_end_user.as_ref());
        if let Some(limit) = limit {
            check(limit, BudgetScope::EndUser, end_user, "end_user", &|| {
                format!("end user {end_user}")
            })?;
        }
    }
    if let Some(limit) = &budgets.global {
        check(limit, BudgetScope::Global, "", "global", &|| {
            "the gateway".to_string()
        })?;
    }
    Ok(soft_crossed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::snapshot::{Budgets, VirtualKey};

    fn caller(budget: Option<BudgetLimit>, model_budgets: Vec<(String, f64)>) -> Caller {
        Caller {
            key_hash: "ab".repeat(32),
            key: Some(Arc::new(VirtualKey {
                alias: "demo".into(),
                user_id: "u1".into(),
                team_id: "t1".into(),
                models: Vec::new(),
                blocked: false,
                expires_unix_ms: 0,
                budget,
                model_budgets,
                limits: None,
                model_limits: Vec::new(),
            })),
        }
    }

    fn state(budgets: Budgets) -> State {
        let mut state = crate::gateway::tests::state();
        state.budgets = budgets;
        state
    }

    fn limit(max: f64) -> Option<BudgetLimit> {
        Some(BudgetLimit {
            max: Some(max),
            soft: None,
        })
    }

    #[test]
    fn a_key_at_its_budget_is_refused_with_spend_and_budget() {
        let caller = caller(limit(1.0), Vec::new());
        let state = state(Budgets::default());
        let under = check_budgets(&state, &caller, "gpt", "", |_, _| 0.99);
        assert_eq!(under, Ok(None));
        let error = check_budgets(&state, &caller, "gpt", "", |scope, id| {
            assert_eq!((scope, id), (BudgetScope::Key, "ab".repeat(32).as_str()));
            1.0
        })
        .unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.error_type(), "budget_exceeded");
        assert_eq!(
            error.to_string(),
            "Budget has been exceeded! key demo spent 1 USD of its max budget of 1 USD in this budget window."
        );
    }

    #[test]
    fn each_scope_is_checked_under_its_own_id() {
        let budgets = Budgets {
            global: limit(100.0),
            users: HashMap::from([("u1".to_string(), limit(10.0).unwrap())]),
            teams: HashMap::from([("t1".to_string(), limit(20.0).unwrap())]),
            end_users: HashMap::from([("alice".to_string(), limit(5.0).unwrap())]),
            every_end_user: limit(1.0),
        };
        let state = state(budgets);
        let caller = caller(None, vec![("gpt".to_string(), 2.0)]);
        let mut asked = Vec::new();
        let result = check_budgets(&state, &caller, "gpt", "alice", |scope, id| {
            asked.push((scope, id.to_string()));
            0.0
        });
        assert_eq!(result, Ok(None));
        let key = "ab".repeat(32);
        assert_eq!(
            asked,
            vec![
                (BudgetScope::KeyModel, format!("{key}/gpt")),
                (BudgetScope::User, "u1".to_string()),
                (BudgetScope::Team, "t1".to_string()),
                (BudgetScope::EndUser, "alice".to_string()),
                (BudgetScope::Global, String::new()),
            ]
        );
        let refused = |over: BudgetScope| {
            check_budgets(&state, &caller, "gpt", "alice", |scope, _| {
                if scope == over {
                    1000.0
                } else {
                    0.0
                }
            })
            .unwrap_err()
            .to_string()
        };
        assert!(refused(BudgetScope::KeyModel)
            .contains("key demo on model gpt spent 1000 USD of its max budget of 2 USD"));
        assert!(refused(BudgetScope::Team).contains("team t1 spent"));
        assert!(refused(BudgetScope::EndUser).contains("end user alice spent"));
        assert!(refused(BudgetScope::Global).contains("the gateway spent"));
        // Another model has no model budget on this key.
        let other = check_budgets(&state, &caller, "claude", "", |scope, _| {
            assert_ne!(scope, BudgetScope::KeyModel);
            0.0
        });
        assert_eq!(other, Ok(None));
        // An end user without a budget of its own has max_end_user_budget, spent per id.
        let bob = check_budgets(&state, &caller, "claude", "bob", |scope, id| {
            if (scope, id) == (BudgetScope::EndUser, "bob") {
                1.0
            } else {
                0.0
            }
        });
        assert!(bob
            .unwrap_err()
            .to_string()
            .contains("end user bob spent 1 USD of its max budget of 1 USD"));
    }

    #[test]
    fn a_soft_budget_warns_and_does_not_refuse() {
        let caller = caller(
            Some(BudgetLimit {
                max: Some(10.0),
                soft: Some(5.0),
            }),
            Vec::new(),
        );
        let state = state(Budgets::default());
        assert_eq!(
            check_budgets(&state, &caller, "gpt", "", |_, _| 5.0),
            Ok(Some("key"))
        );
        assert_eq!(
            check_budgets(&state, &caller, "gpt", "", |_, _| 4.0),
            Ok(None)
        );
    }

    #[test]
    fn no_budget_looks_nothing_up() {
        let caller = caller(None, Vec::new());
        let state = state(Budgets::default());
        let result = check_budgets(&state, &caller, "gpt", "bob", |_, _| {
            panic!("no scope has a budget")
        });
        assert_eq!(result, Ok(None));
    }
}
