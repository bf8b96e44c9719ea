//! Rate limits as the control plane keeps them (LiteLLM's `rpm_limit`, `tpm_limit`,
//! `max_parallel_requests` and their config spellings) and as the filters get them
//! ([`proto::RateLimits`] on keys, key x models and deployments, [`proto::ScopedRateLimits`]
//! in the settings). The filters enforce them; this module only carries them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proto;
use crate::store::{
    SETTING_GLOBAL_MAX_PARALLEL_REQUESTS, SETTING_MAX_PARALLEL_REQUESTS, SETTING_RPM_LIMIT,
    SETTING_TPM_LIMIT, SETTING_USER_RATE_LIMIT,
};

/// The largest limit accepted: limits are stored as signed 64-bit integers.
pub const MAX_LIMIT: u64 = i64::MAX as u64;

/// The rate limits of one scope. `None` is no limit; 0 refuses every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitFields {
    /// Requests per minute (`rpm_limit`, `rpm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute (`tpm_limit`, `tpm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests in flight at once (`max_parallel_requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_requests: Option<u64>,
}

impl RateLimitFields {
    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.max_parallel_requests.is_some()
    }

    /// Each field of `self`, else the one of `fallback` (a user row's own value wins over
    /// `user_rate_limit`'s, field by field).
    pub fn or(self, fallback: RateLimitFields) -> RateLimitFields {
        RateLimitFields {
            rpm: self.rpm.or(fallback.rpm),
            tpm: self.tpm.or(fallback.tpm),
            max_parallel_requests: self
                .max_parallel_requests
                .or(fallback.max_parallel_requests),
        }
    }

    /// The protocol message; `None` when no limit is set, so that an unlimited scope costs
    /// the filter nothing.
    pub fn to_proto(self) -> Option<proto::RateLimits> {
        self.is_set().then_some(proto::RateLimits {
            rpm: self.rpm,
            tpm: self.tpm,
            max_parallel_requests: self.max_parallel_requests,
        })
    }

    /// From the protocol message (gRPC management requests); absent is no limit.
    pub fn from_proto(limits: Option<&proto::RateLimits>) -> RateLimitFields {
        limits.map_or_else(RateLimitFields::default, |limits| RateLimitFields {
            rpm: limits.rpm,
            tpm: limits.tpm,
            max_parallel_requests: limits.max_parallel_requests,
        })
    }

    /// The stored JSON form (`NULL` for none), as deployments keep theirs.
    pub fn to_json_text(self) -> Option<String> {
        // Serializing three optional integers cannot fail; a failure would only drop them.
        self.is_set()
            .then(|| serde_json::to_string(&self).ok())
            .flatten()
    }
}

/// A key's `model_rpm_limit` and `model_tpm_limit` as the filters get them: one
/// [`proto::RateLimits`] per model named in either map, holding only the fields that model
/// has.
pub fn model_limits(
    rpm: &BTreeMap<String, u64>,
    tpm: &BTreeMap<String, u64>,
) -> std::collections::HashMap<String, proto::RateLimits> {
    let mut limits: std::collections::HashMap<String, proto::RateLimits> =
        std::collections::HashMap::with_capacity(rpm.len().max(tpm.len()));
    for (model, value) in rpm {
        limits.entry(model.clone()).or_default().rpm = Some(*value);
    }
    for (model, value) in tpm {
        limits.entry(model.clone()).or_default().tpm = Some(*value);
    }
    limits
}

/// The rate limits of a user or team, as the snapshot's settings carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeRateLimits {
    /// `"user"` or `"team"`.
    pub scope: &'static str,
    /// User or team id.
    pub id: String,
    /// Its limits (at least one set).
    pub limits: RateLimitFields,
}

/// `general_settings.user_rate_limit` as stored: user id -> limits.
pub type UserRateLimits = BTreeMap<String, RateLimitFields>;

/// A stored limit setting; one that does not parse (which only a hand edit of the database
/// makes) is no limit.
fn limit_setting(settings: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    settings
        .get(key)
        .and_then(|value| value.parse::<u64>().ok())
}

/// `general_settings.max_parallel_requests` as stored: the limit of every key without one.
pub fn default_key_parallel(settings: &BTreeMap<String, String>) -> Option<u64> {
    limit_setting(settings, SETTING_MAX_PARALLEL_REQUESTS)
}

/// A key's own limits as the filters get them, its `max_parallel_requests` falling back to
/// `default_parallel` (`general_settings.max_parallel_requests`).
pub fn key_limits(
    own: RateLimitFields,
    default_parallel: Option<u64>,
) -> Option<proto::RateLimits> {
    RateLimitFields {
        max_parallel_requests: own.max_parallel_requests.or(default_parallel),
        ..own
    }
    .to_proto()
}

/// `general_settings.user_rate_limit` as stored (a bad one, which only a hand edit of the
/// database makes, is logged and ignored).
fn stored_user_rate_limits(settings: &BTreeMap<String, String>) -> UserRateLimits {
    let Some(text) = settings.get(SETTING_USER_RATE_LIMIT) else {
        return UserRateLimits::new();
    };
    serde_json::from_str(text).unwrap_or_else(|error| {
        tracing::warn!(%error, "stored {SETTING_USER_RATE_LIMIT} is invalid; ignored");
        UserRateLimits::new()
    })
}

/// The rate limits the snapshot's settings carry: the gateway's (scope GLOBAL, id "":
/// `general_settings` `rpm_limit`, `tpm_limit`, `global_max_parallel_requests`) when any is
/// set, then every user's (its own fields, else those of `user_rate_limit`), then every
/// team's; a scope without any limit is left out.
pub fn settings_rate_limits(
    settings: &BTreeMap<String, String>,
    scoped: &[ScopeRateLimits],
) -> Vec<proto::ScopedRateLimits> {
    let mut entries = Vec::new();
    let global = RateLimitFields {
        rpm: limit_setting(settings, SETTING_RPM_LIMIT),
        tpm: limit_setting(settings, SETTING_TPM_LIMIT),
        max_parallel_requests: limit_setting(settings, SETTING_GLOBAL_MAX_PARALLEL_REQUESTS),
    };
    if let Some(limits) = global.to_proto() {
        entries.push(proto::ScopedRateLimits {
            scope: proto::BudgetScope::Global as i32,
            id: String::new(),
            limits: Some(limits),
        });
    }
    let mut users = stored_user_rate_limits(settings);
    for entry in scoped.iter().filter(|entry| entry.scope == "user") {
        let fallback = users.get(&entry.id).copied().unwrap_or_default();
        users.insert(entry.id.clone(), entry.limits.or(fallback));
    }
    let teams = scoped.iter().filter(|entry| entry.scope == "team");
    for (scope, id, limits) in users
        .into_iter()
        .map(|(id, limits)| (proto::BudgetScope::User, id, limits))
        .chain(teams.map(|entry| (proto::BudgetScope::Team, entry.id.clone(), entry.limits)))
    {
        if let Some(limits) = limits.to_proto() {
            entries.push(proto::ScopedRateLimits {
                scope: scope as i32,
                id,
                limits: Some(limits),
            });
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_limits_are_no_message() {
        assert_eq!(RateLimitFields::default().to_proto(), None);
        assert_eq!(RateLimitFields::default().to_json_text(), None);
        let limits = RateLimitFields {
            rpm: Some(0),
            tpm: None,
            max_parallel_requests: Some(3),
        };
        assert_eq!(
            limits.to_proto(),
            Some(proto::RateLimits {
                rpm: Some(0),
                tpm: None,
                max_parallel_requests: Some(3)
            })
        );
        assert_eq!(
            limits.to_json_text().as_deref(),
            Some(r#"{"rpm":0,"max_parallel_requests":3}"#)
        );
    }

    #[test]
    fn own_fields_win_over_the_fallback() {
        let own = RateLimitFields {
            rpm: Some(5),
            ..RateLimitFields::default()
        };
        let fallback = RateLimitFields {
            rpm: Some(50),
            tpm: Some(5000),
            max_parallel_requests: None,
        };
        assert_eq!(
            own.or(fallback),
            RateLimitFields {
                rpm: Some(5),
                tpm: Some(5000),
                max_parallel_requests: None
            }
        );
    }

    #[test]
    fn a_model_in_one_map_gets_one_field() {
        let rpm = BTreeMap::from([("a".to_string(), 10), ("b".to_string(), 20)]);
        let tpm = BTreeMap::from([("b".to_string(), 200), ("c".to_string(), 300)]);
        let limits = model_limits(&rpm, &tpm);
        assert_eq!(limits.len(), 3);
        assert_eq!(
            limits.get("a"),
            Some(&proto::RateLimits {
                rpm: Some(10),
                tpm: None,
                max_parallel_requests: None
            })
        );
        assert_eq!(
            limits.get("b"),
            Some(&proto::RateLimits {
                rpm: Some(20),
                tpm: Some(200),
                max_parallel_requests: None
            })
        );
        assert_eq!(
            limits.get("c"),
            Some(&proto::RateLimits {
                rpm: None,
                tpm: Some(300),
                max_parallel_requests: None
            })
        );
    }
}
