//! Generated prost types of `api/proto/tollgate/v1/sync.proto`.
#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/tollgate.v1.rs"));

/// The usage acknowledgement of a [`ControlMessage`] and nothing else: decoding a snapshot
/// message with it skips the snapshot without allocating.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ControlMessageUsageAck {
    /// `ControlMessage.kind.usage_ack` (tag 3).
    #[prost(message, optional, tag = "3")]
    pub usage_ack: ::core::option::Option<UsageAck>,
}

/// The spend update of a [`ControlMessage`] and nothing else.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ControlMessageSpend {
    /// `ControlMessage.kind.spend` (tag 4).
    #[prost(message, optional, tag = "4")]
    pub spend: ::core::option::Option<SpendUpdate>,
}

/// The quota grant of a [`ControlMessage`] and nothing else.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ControlMessageQuota {
    /// `ControlMessage.kind.quota` (tag 5).
    #[prost(message, optional, tag = "5")]
    pub quota: ::core::option::Option<QuotaGrant>,
}

/// The quota grant of a control-plane message, when it is one.
pub fn quota_grant(message: &[u8]) -> Option<QuotaGrant> {
    use prost::Message;
    ControlMessageQuota::decode(message).ok()?.quota
}

/// A filter message carrying `request`.
pub fn quota_message(request: QuotaRequest) -> Vec<u8> {
    use prost::Message;
    FilterMessage {
        kind: Some(filter_message::Kind::Quota(request)),
    }
    .encode_to_vec()
}

/// The usage acknowledgement of a control-plane message, when it is one.
pub fn acknowledged_batches(message: &[u8]) -> Option<UsageAck> {
    use prost::Message;
    ControlMessageUsageAck::decode(message).ok()?.usage_ack
}

/// The spend update of a control-plane message, when it is one.
pub fn spend_update(message: &[u8]) -> Option<SpendUpdate> {
    use prost::Message;
    ControlMessageSpend::decode(message).ok()?.spend
}

impl core::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Deployment")
            .field("id", &self.id)
            .field("model_name", &self.model_name)
            .field("provider", &self.provider)
            .field("provider_name", &self.provider_name)
            .field("upstream_model", &self.upstream_model)
            .field("api_base", &self.api_base)
            .field("api_key", &crate::redact::secret(&self.api_key))
            .field("default_max_tokens", &self.default_max_tokens)
            .field("api_version", &self.api_version)
            .field("provider_settings", &self.provider_settings)
            .field("default_params_json", &self.default_params_json)
            .finish()
    }
}

impl core::fmt::Debug for deployment::ProviderSettings {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Each message's own Debug hides its secrets.
        match self {
            deployment::ProviderSettings::Azure(azure) => {
                f.debug_tuple("Azure").field(azure).finish()
            }
            deployment::ProviderSettings::Bedrock(bedrock) => {
                f.debug_tuple("Bedrock").field(bedrock).finish()
            }
            deployment::ProviderSettings::Vertex(vertex) => {
                f.debug_tuple("Vertex").field(vertex).finish()
            }
        }
    }
}

impl core::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The key id names the key (AWS logs it too); the secret and the token are secrets.
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &crate::redact::secret(&self.secret_access_key),
            )
            .field("session_token", &crate::redact::secret(&self.session_token))
            .finish()
    }
}

impl core::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ProviderToken")
            .field("deployment_id", &self.deployment_id)
            .field("access_token", &crate::redact::secret(&self.access_token))
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use prost::Message;

    use super::*;

    #[test]
    fn a_usage_ack_is_told_apart_from_a_snapshot_and_a_delta() {
        let snapshot = ControlMessage {
            kind: Some(control_message::Kind::Snapshot(Snapshot {
                version: 42,
                deployments: vec![Deployment {
                    id: "d".into(),
                    ..Default::default()
                }],
                keys: vec![VirtualKey {
                    key_sha256: "ab".repeat(32),
                    models: vec!["m".into()],
                    ..Default::default()
                }],
                ..Default::default()
            })),
        };
        assert_eq!(acknowledged_batches(&snapshot.encode_to_vec()), None);
        let delta = ControlMessage {
            kind: Some(control_message::Kind::Delta(SnapshotDelta {
                base_version: 42,
                version: 43,
                removed_key_sha256: vec!["ab".repeat(32)],
                ..Default::default()
            })),
        };
        assert_eq!(acknowledged_batches(&delta.encode_to_vec()), None);
        let ack = ControlMessage {
            kind: Some(control_message::Kind::UsageAck(UsageAck {
                batch_ids: vec![3, 4],
                ledger_seq: 0,
            })),
        };
        let bytes = ack.encode_to_vec();
        assert_eq!(
            acknowledged_batches(&bytes).map(|ack| ack.batch_ids),
            Some(vec![3, 4])
        );
        assert_eq!(spend_update(&bytes), None);
        assert!(crate::State::check_control_message(&bytes)
            .unwrap()
            .is_none());
    }
}
