//! Who is calling: the key a client presents, compared by SHA-256 (keys are never held in
//! clear by the filter).

use sha2::{Digest, Sha256};

use std::sync::Arc;

use crate::snapshot::VirtualKey;
use crate::{GatewayError, State};

/// The credential headers a client may use (OpenAI SDKs send `Authorization: Bearer`,
/// Anthropic-style clients `x-api-key`, Azure-style clients `api-key`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// `authorization` header.
    pub authorization: Option<&'a str>,
    /// `x-api-key` header.
    pub x_api_key: Option<&'a str>,
    /// `api-key` header.
    pub api_key: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// The presented key, whichever header carries it.
    pub fn presented_key(&self) -> Option<&'a str> {
        let bearer = self.authorization.and_then(|value| {
            let value = value.trim();
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        [bearer, self.x_api_key, self.api_key]
            .into_iter()
            .flatten()
            .map(str::trim)
            .find(|key| !key.is_empty())
    }
}

/// The caller, once authenticated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Caller {
    /// SHA-256 hex of the key used; empty when no key is required and none was checked.
    pub key_hash: String,
    /// The virtual key used; `None` for the master key or when no key is required.
    pub key: Option<Arc<VirtualKey>>,
}

impl Caller {
    /// Whether this caller may use `model`.
    pub fn check_model(&self, model: &str) -> Result<(), GatewayError> {
        match &self.key {
            Some(key) if !key.allows_model(model) => {
                Err(GatewayError::ModelNotAllowed(model.to_string()))
            }
            _ => Ok(()),
        }
    }
}

/// Checks the presented key against the snapshot: the master key, or a virtual key that is
/// neither blocked nor expired at `now_unix_ms`. Without a master key the gateway is open,
/// as LiteLLM is.
pub fn authenticate(
    state: &State,
    credentials: Credentials<'_>,
    now_unix_ms: u64,
) -> Result<Caller, GatewayError> {
    let Some(master_hash) = state.master_key_sha256 else {
        return Ok(Caller::default());
    };
    let key = credentials
        .presented_key()
        .ok_or(GatewayError::MissingApiKey)?;
    let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    if hash == master_hash {
        return Ok(Caller {
            key_hash: hex::encode(hash),
            key: None,
        });
    }
    let virtual_key = state.key(&hash).ok_or(GatewayError::InvalidApiKey)?;
    if virtual_key.blocked {
        return Err(GatewayError::KeyBlocked);
    }
    if virtual_key.expires_unix_ms != 0 && now_unix_ms >= virtual_key.expires_unix_ms {
        return Err(GatewayError::KeyExpired);
    }
    Ok(Caller {
        key_hash: hex::encode(hash),
        key: Some(virtual_key.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn state_with_master_key(key: Option<&str>) -> State {
        state_with_keys(key, Vec::new())
    }

    fn state_with_keys(key: Option<&str>, keys: Vec<proto::VirtualKey>) -> State {
        let snapshot = proto::Snapshot {
            keys,
            version: 1,
            settings: Some(proto::Settings {
                master_key_sha256: key
                    .map(|k| hex::encode(Sha256::digest(k)))
                    .unwrap_or_default(),
                ..Default::default()
            }),
            deployments: vec![],
        };
        State::from_snapshot(snapshot).0
    }

    #[test]
    fn master_key_in_any_header() {
        let state = state_with_master_key(Some("sk-master"));
        for credentials in [
            Credentials {
                authorization: Some("Bearer sk-master"),
                ..Default::default()
            },
            Credentials {
                authorization: Some("bearer  sk-master "),
                ..Default::default()
            },
            Credentials {
                x_api_key: Some("sk-master"),
                ..Default::default()
            },
            Credentials {
                api_key: Some("sk-master"),
                ..Default::default()
            },
        ] {
            let caller = authenticate(&state, credentials, 0).unwrap();
            assert_eq!(caller.key_hash.len(), 64);
        }
    }

    #[test]
    fn missing_and_wrong_keys() {
        let state = state_with_master_key(Some("sk-master"));
        assert_eq!(
            authenticate(&state, Credentials::default(), 0),
            Err(GatewayError::MissingApiKey)
        );
        assert_eq!(
            authenticate(
                &state,
                Credentials {
                    authorization: Some("Basic sk-master"),
                    ..Default::default()
                },
                0
            ),
            Err(GatewayError::MissingApiKey)
        );
        assert_eq!(
            authenticate(
                &state,
                Credentials {
                    authorization: Some("Bearer sk-wrong"),
                    ..Default::default()
                },
                0
            ),
            Err(GatewayError::InvalidApiKey)
        );
    }

    #[test]
    fn no_master_key_means_open() {
        let state = state_with_master_key(None);
        assert!(authenticate(&state, Credentials::default(), 0).is_ok());
    }

    fn virtual_key(clear: &str, models: &[&str], blocked: bool, expires: u64) -> proto::VirtualKey {
        proto::VirtualKey {
            max_budget: None,
            soft_budget: None,
            model_max_budget: Default::default(),
            limits: None,
            model_limits: Default::default(),
            key_sha256: hex::encode(Sha256::digest(clear)),
            key_alias: format!("alias-{clear}"),
            user_id: "u1".into(),
            team_id: String::new(),
            models: models.iter().map(|m| m.to_string()).collect(),
            blocked,
            expires_unix_ms: expires,
        }
    }

    fn bearer(key: &str) -> Credentials<'_> {
        Credentials {
            authorization: Some(key),
            ..Default::default()
        }
    }

    #[test]
    fn virtual_keys() {
        let state = state_with_keys(
            Some("sk-master"),
            vec![
                virtual_key("sk-good", &[], false, 0),
                virtual_key("sk-limited", &["gpt"], false, 0),
                virtual_key("sk-blocked", &[], true, 0),
                virtual_key("sk-expiring", &[], false, 1_000),
            ],
        );
        let caller = authenticate(&state, bearer("Bearer sk-good"), 5).unwrap();
        assert_eq!(caller.key.as_ref().unwrap().alias, "alias-sk-good");
        assert_eq!(caller.check_model("anything"), Ok(()));

        let limited = authenticate(&state, bearer("Bearer sk-limited"), 5).unwrap();
        assert_eq!(limited.check_model("gpt"), Ok(()));
        assert_eq!(
            limited.check_model("claude"),
            Err(GatewayError::ModelNotAllowed("claude".into()))
        );
        let models: serde_json::Value =
            serde_json::from_slice(&state.models_json_for(limited.key.as_ref().unwrap())).unwrap();
        assert_eq!(
            models["data"],
            serde_json::json!([]),
            "no model named gpt in this state"
        );

        assert_eq!(
            authenticate(&state, bearer("Bearer sk-blocked"), 5),
            Err(GatewayError::KeyBlocked)
        );
        assert!(authenticate(&state, bearer("Bearer sk-expiring"), 999).is_ok());
        assert_eq!(
            authenticate(&state, bearer("Bearer sk-expiring"), 1_000),
            Err(GatewayError::KeyExpired)
        );
        let master = authenticate(&state, bearer("Bearer sk-master"), 5).unwrap();
        assert!(master.key.is_none());
        assert_eq!(master.check_model("claude"), Ok(()));
    }
}
