//! Provider access tokens: the short-lived bearer tokens the control plane mints for
//! deployments whose provider authenticates that way (Vertex AI's OAuth tokens), pushed in
//! `ControlMessage.provider_tokens` apart from snapshots (see `sync.proto`).

use std::collections::HashMap;

use crate::proto;

/// The access tokens of a filter, by deployment id. Replaced whole by each
/// `ProviderTokens` message, kept across snapshots.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AccessTokens {
    by_deployment: HashMap<String, AccessToken>,
}

#[derive(Clone, PartialEq, Eq)]
struct AccessToken {
    token: String,
    expires_unix_ms: u64,
}

/// Why a deployment has no usable access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenUnavailable {
    /// The control plane sent none for it (yet: it mints them when it loads the deployment).
    #[error("the control plane has sent no access token for this deployment yet")]
    Missing,
    /// The one it sent has expired (the control plane could not refresh it in time).
    #[error("the access token the control plane sent for this deployment has expired")]
    Expired,
}

impl AccessTokens {
    /// The tokens of one message. A token without a deployment id or a value is left out.
    pub fn from_proto(tokens: proto::ProviderTokens) -> AccessTokens {
        let by_deployment = tokens
            .tokens
            .into_iter()
            .filter(|token| !token.deployment_id.is_empty() && !token.access_token.is_empty())
            .map(|token| {
                (
                    token.deployment_id,
                    AccessToken {
                        token: token.access_token,
                        expires_unix_ms: token.expires_unix_ms,
                    },
                )
            })
            .collect();
        AccessTokens { by_deployment }
    }

    /// The token to send for `deployment_id` at `now_unix_ms`.
    pub fn get(&self, deployment_id: &str, now_unix_ms: u64) -> Result<&str, TokenUnavailable> {
        let token = self
            .by_deployment
            .get(deployment_id)
            .ok_or(TokenUnavailable::Missing)?;
        if token.expires_unix_ms != 0 && now_unix_ms >= token.expires_unix_ms {
            return Err(TokenUnavailable::Expired);
        }
        Ok(&token.token)
    }

    /// Number of deployments with a token.
    pub fn len(&self) -> usize {
        self.by_deployment.len()
    }

    /// Whether no deployment has a token.
    pub fn is_empty(&self) -> bool {
        self.by_deployment.is_empty()
    }
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokens are secrets: only which deployments have one.
        let mut ids: Vec<&str> = self.by_deployment.keys().map(String::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("AccessTokens")
            .field("deployments", &ids)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, value: &str, expires: u64) -> proto::ProviderToken {
        proto::ProviderToken {
            deployment_id: id.into(),
            access_token: value.into(),
            expires_unix_ms: expires,
        }
    }

    #[test]
    fn tokens_are_found_until_they_expire() {
        let tokens = AccessTokens::from_proto(proto::ProviderTokens {
            tokens: vec![
                token("vertex-1", "ya29.one", 2_000),
                token("vertex-2", "ya29.two", 0),
                token("", "ya29.nobody", 5_000),
                token("vertex-3", "", 5_000),
            ],
        });
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.get("vertex-1", 1_999), Ok("ya29.one"));
        assert_eq!(
            tokens.get("vertex-1", 2_000),
            Err(TokenUnavailable::Expired)
        );
        // 0: the control plane did not say when it expires.
        assert_eq!(tokens.get("vertex-2", u64::MAX), Ok("ya29.two"));
        assert_eq!(tokens.get("vertex-3", 0), Err(TokenUnavailable::Missing));
        assert_eq!(tokens.get("other", 0), Err(TokenUnavailable::Missing));
    }

    #[test]
    fn debug_shows_deployments_not_tokens() {
        let tokens = AccessTokens::from_proto(proto::ProviderTokens {
            tokens: vec![
                token("b", "ya29.secret-b", 1),
                token("a", "ya29.secret-a", 1),
            ],
        });
        let shown = format!("{tokens:?}");
        assert_eq!(shown, r#"AccessTokens { deployments: ["a", "b"] }"#);
    }
}
