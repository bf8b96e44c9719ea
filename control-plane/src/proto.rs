//! Generated types, client and server of `api/proto/tollgate/v1/sync.proto`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/tollgate.v1.rs"));

/// Encoded `FileDescriptorSet` of the protocol, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tollgate_descriptor.bin"));

/// What a `Debug` of a secret field shows: whether it is set, never its value.
fn redacted(value: &str) -> &'static str {
    if value.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("id", &self.id)
            .field("model_name", &self.model_name)
            .field("provider", &self.provider)
            .field("provider_name", &self.provider_name)
            .field("upstream_model", &self.upstream_model)
            .field("api_base", &self.api_base)
            .field("api_key", &redacted(&self.api_key))
            .field("default_max_tokens", &self.default_max_tokens)
            .field("api_version", &self.api_version)
            .field("pricing", &self.pricing)
            .field("provider_settings", &self.provider_settings)
            .field("default_params_json", &self.default_params_json)
            .field("weight", &self.weight)
            .field("order", &self.order)
            .field("tags", &self.tags)
            .field("timeout_ms", &self.timeout_ms)
            .field("stream_timeout_ms", &self.stream_timeout_ms)
            .field("num_retries", &self.num_retries)
            .finish()
    }
}

impl std::fmt::Debug for deployment::ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key id names the key (AWS logs it too); the secret and the token are secrets.
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .finish()
    }
}

impl std::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderToken")
            .field("deployment_id", &self.deployment_id)
            .field("access_token", &redacted(&self.access_token))
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish()
    }
}

impl std::fmt::Debug for CreateModelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateModelRequest")
            .field("model_name", &self.model_name)
            .field("model", &self.model)
            .field("api_base", &self.api_base)
            .field("api_key", &redacted(&self.api_key))
            .field("api_version", &self.api_version)
            .field("max_tokens", &self.max_tokens)
            .field("id", &self.id)
            .field("model_info_json", &self.model_info_json)
            .field("pricing", &self.pricing)
            .finish()
    }
}

impl std::fmt::Debug for UpdateModelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateModelRequest")
            .field("id", &self.id)
            .field("model_name", &self.model_name)
            .field("model", &self.model)
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_deref().map(redacted))
            .field("api_version", &self.api_version)
            .field("max_tokens", &self.max_tokens)
            .field("model_info_json", &self.model_info_json)
            .field("pricing", &self.pricing)
            .finish()
    }
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key", &redacted(&self.key))
            .field("info", &self.info)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_has_no_secret() {
        let deployment = Deployment {
            id: "d".into(),
            api_key: "sk-provider-secret".into(),
            ..Default::default()
        };
        let create = CreateModelRequest {
            api_key: "sk-provider-secret".into(),
            ..Default::default()
        };
        let update = UpdateModelRequest {
            api_key: Some("sk-provider-secret".into()),
            ..Default::default()
        };
        let generated = GeneratedKey {
            key: "sk-virtual-secret".into(),
            info: None,
        };
        let snapshot = Snapshot {
            deployments: vec![deployment.clone()],
            ..Default::default()
        };
        for debug in [
            format!("{deployment:?}"),
            format!("{create:?}"),
            format!("{update:?}"),
            format!("{generated:?}"),
            format!("{snapshot:?}"),
        ] {
            assert!(!debug.contains("secret"), "{debug}");
            assert!(debug.contains("<redacted>"), "{debug}");
        }
        assert!(format!("{:?}", Deployment::default()).contains("api_key: \"\""));
    }
}
