//! Who is calling: the key a client presents, compared by SHA-256 (keys are never held in
//! clear by the filter).

use sha2::{Digest, Sha256};

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// SHA-256 hex of the key used; empty when no key is required and none was checked.
    pub key_hash: String,
}

/// Checks the presented key against the snapshot.
pub fn authenticate(state: &State, credentials: Credentials<'_>) -> Result<Caller, GatewayError> {
    let Some(master_hash) = state.master_key_sha256 else {
        return Ok(Caller::default());
    };
    let key = credentials
        .presented_key()
        .ok_or(GatewayError::MissingApiKey)?;
    let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    if hash == master_hash {
        Ok(Caller {
            key_hash: hex::encode(hash),
        })
    } else {
        Err(GatewayError::InvalidApiKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn state_with_master_key(key: Option<&str>) -> State {
        let snapshot = proto::Snapshot {
            keys: Vec::new(),
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
            let caller = authenticate(&state, credentials).unwrap();
            assert_eq!(caller.key_hash.len(), 64);
        }
    }

    #[test]
    fn missing_and_wrong_keys() {
        let state = state_with_master_key(Some("sk-master"));
        assert_eq!(
            authenticate(&state, Credentials::default()),
            Err(GatewayError::MissingApiKey)
        );
        assert_eq!(
            authenticate(
                &state,
                Credentials {
                    authorization: Some("Basic sk-master"),
                    ..Default::default()
                }
            ),
            Err(GatewayError::MissingApiKey)
        );
        assert_eq!(
            authenticate(
                &state,
                Credentials {
                    authorization: Some("Bearer sk-wrong"),
                    ..Default::default()
                }
            ),
            Err(GatewayError::InvalidApiKey)
        );
    }

    #[test]
    fn no_master_key_means_open() {
        let state = state_with_master_key(None);
        assert!(authenticate(&state, Credentials::default()).is_ok());
    }
}
