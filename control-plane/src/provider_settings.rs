//! What a deployment carries beyond `api_base` and `api_key`, typed per provider (the
//! catalogue's [`tollgate_catalogue::Settings`] says which kind a provider takes): AWS
//! Bedrock's region and credentials, Vertex AI's project, location and service account.
//!
//! Stored in two columns of `deployments`: `provider_settings`, the plain part as JSON
//! (`{"bedrock":{"region":"us-east-1"}}`), and `provider_secret`, the credentials as JSON
//! sealed with the credential key like `api_key`. Azure's `api_version` stays in the
//! `api_version` column LiteLLM's flat `litellm_params` gives it (Anthropic's is there too).

use serde::{Deserialize, Serialize};
use tollgate_catalogue::Settings;

use crate::proto::{self, deployment::ProviderSettings as ProtoSettings};
use crate::store::DeploymentRecord;

/// The `provider_settings` a filter gets for `record`. A Vertex deployment gets no access
/// token here: [`crate::google_auth`] mints them and the sync stream sends them apart (the
/// service account's key never leaves the control plane).
pub fn to_proto(record: &DeploymentRecord) -> Option<ProtoSettings> {
    let kind = tollgate_catalogue::find(&record.provider_name).map(|provider| provider.settings);
    match (&record.provider_settings, kind) {
        (ProviderSettings::Bedrock(bedrock), _) => {
            Some(ProtoSettings::Bedrock(proto::BedrockSettings {
                region: bedrock.region.clone(),
                credentials: Some(proto::AwsCredentials {
                    access_key_id: bedrock.credentials.access_key_id.clone(),
                    secret_access_key: bedrock.credentials.secret_access_key.clone(),
                    session_token: bedrock
                        .credentials
                        .session_token
                        .clone()
                        .unwrap_or_default(),
                }),
            }))
        }
        (ProviderSettings::Vertex(vertex), _) => {
            Some(ProtoSettings::Vertex(proto::VertexSettings {
                project: vertex.project.clone(),
                location: vertex.location.clone(),
            }))
        }
        (ProviderSettings::None, Some(Settings::Azure)) => {
            Some(ProtoSettings::Azure(proto::AzureSettings {
                api_version: record.api_version.clone().unwrap_or_default(),
            }))
        }
        (ProviderSettings::None, _) => None,
    }
}

/// The typed settings of one deployment.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum ProviderSettings {
    /// The provider takes none (or only `api_version`, kept apart).
    #[default]
    None,
    /// AWS Bedrock.
    Bedrock(BedrockSettings),
    /// Google Vertex AI.
    Vertex(VertexSettings),
}

/// AWS Bedrock: the filter signs each request with SigV4 for `region`.
#[derive(Clone, PartialEq, Eq)]
pub struct BedrockSettings {
    /// `aws_region_name` ("us-east-1").
    pub region: String,
    /// The access key requests are signed with.
    pub credentials: AwsCredentials,
}

/// An AWS access key, with the session token of temporary credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsCredentials {
    /// `aws_access_key_id`.
    pub access_key_id: String,
    /// `aws_secret_access_key`.
    pub secret_access_key: String,
    /// `aws_session_token`, for temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

/// Google Vertex AI: the control plane exchanges the service account's key for access
/// tokens, so the key never leaves it.
#[derive(Clone, PartialEq, Eq)]
pub struct VertexSettings {
    /// `vertex_project`.
    pub project: String,
    /// `vertex_location` ("us-central1").
    pub location: String,
    /// `vertex_credentials`: the service account key file's JSON.
    pub service_account_json: String,
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderSettings::None => f.write_str("None"),
            ProviderSettings::Bedrock(bedrock) => f
                .debug_struct("Bedrock")
                .field("region", &bedrock.region)
                .field("access_key_id", &bedrock.credentials.access_key_id)
                .field("secret_access_key", &"<redacted>")
                .field(
                    "session_token",
                    &bedrock
                        .credentials
                        .session_token
                        .as_ref()
                        .map(|_| "<redacted>"),
                )
                .finish(),
            ProviderSettings::Vertex(vertex) => f
                .debug_struct("Vertex")
                .field("project", &vertex.project)
                .field("location", &vertex.location)
                .field("service_account_json", &"<redacted>")
                .finish(),
        }
    }
}

/// The `provider_settings` column.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum StoredSettings {
    Bedrock { region: String },
    Vertex { project: String, location: String },
}

/// The `provider_secret` column, before sealing.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum StoredSecret {
    Aws(AwsCredentials),
    ServiceAccount(String),
}

/// A stored pair of columns that does not make settings.
#[derive(Debug, thiserror::Error)]
pub enum StoredSettingsError {
    /// A column is not what this version writes.
    #[error("{column}: {message}")]
    Unreadable {
        /// `provider_settings` or `provider_secret`.
        column: &'static str,
        /// What is wrong (never the secret's text).
        message: String,
    },
    /// Settings without their secret or the other way round, or of two providers.
    #[error("provider_settings and provider_secret do not match")]
    Mismatched,
}

impl ProviderSettings {
    /// The endpoint of a deployment that gives no `api_base`, when it is in the settings'
    /// region: Bedrock's runtime endpoint, Vertex AI's regional endpoint.
    pub fn default_api_base(&self) -> Option<String> {
        match self {
            ProviderSettings::None => None,
            ProviderSettings::Bedrock(bedrock) => Some(format!(
                "https://bedrock-runtime.{}.amazonaws.com",
                bedrock.region
            )),
            ProviderSettings::Vertex(vertex) if vertex.location == "global" => {
                Some("https://aiplatform.googleapis.com".into())
            }
            ProviderSettings::Vertex(vertex) => Some(format!(
                "https://{}-aiplatform.googleapis.com",
                vertex.location
            )),
        }
    }

    /// The two stored columns: the plain JSON and the secret's JSON (to be sealed).
    pub fn to_columns(&self) -> (Option<String>, Option<String>) {
        let (settings, secret) = match self {
            ProviderSettings::None => return (None, None),
            ProviderSettings::Bedrock(bedrock) => (
                StoredSettings::Bedrock {
                    region: bedrock.region.clone(),
                },
                StoredSecret::Aws(bedrock.credentials.clone()),
            ),
            ProviderSettings::Vertex(vertex) => (
                StoredSettings::Vertex {
                    project: vertex.project.clone(),
                    location: vertex.location.clone(),
                },
                StoredSecret::ServiceAccount(vertex.service_account_json.clone()),
            ),
        };
        // Strings and plain structs: serializing cannot fail.
        (
            serde_json::to_string(&settings).ok(),
            serde_json::to_string(&secret).ok(),
        )
    }

    /// The settings of the two stored columns (the secret already opened).
    pub fn from_columns(
        settings: Option<&str>,
        secret: Option<&str>,
    ) -> Result<Self, StoredSettingsError> {
        let (settings, secret) = match (settings, secret) {
            (None, None) => return Ok(ProviderSettings::None),
            (Some(settings), Some(secret)) => (settings, secret),
            _ => return Err(StoredSettingsError::Mismatched),
        };
        let settings: StoredSettings =
            serde_json::from_str(settings).map_err(|error| StoredSettingsError::Unreadable {
                column: "provider_settings",
                message: error.to_string(),
            })?;
        // serde_json's message names a position, never the text it read.
        let secret: StoredSecret =
            serde_json::from_str(secret).map_err(|error| StoredSettingsError::Unreadable {
                column: "provider_secret",
                message: format!("not this version's credentials (at {})", error.column()),
            })?;
        match (settings, secret) {
            (StoredSettings::Bedrock { region }, StoredSecret::Aws(credentials)) => {
                Ok(ProviderSettings::Bedrock(BedrockSettings {
                    region,
                    credentials,
                }))
            }
            (
                StoredSettings::Vertex { project, location },
                StoredSecret::ServiceAccount(service_account_json),
            ) => Ok(ProviderSettings::Vertex(VertexSettings {
                project,
                location,
                service_account_json,
            })),
            _ => Err(StoredSettingsError::Mismatched),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bedrock(session_token: Option<&str>) -> ProviderSettings {
        ProviderSettings::Bedrock(BedrockSettings {
            region: "eu-west-1".into(),
            credentials: AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "aws-secret-value".into(),
                session_token: session_token.map(str::to_string),
            },
        })
    }

    fn vertex() -> ProviderSettings {
        ProviderSettings::Vertex(VertexSettings {
            project: "p-1".into(),
            location: "us-central1".into(),
            service_account_json: r#"{"private_key":"pk-secret-value"}"#.into(),
        })
    }

    #[test]
    fn settings_round_trip_through_their_columns() {
        for settings in [
            ProviderSettings::None,
            bedrock(None),
            bedrock(Some("token-secret-value")),
            vertex(),
        ] {
            let (plain, secret) = settings.to_columns();
            let back = ProviderSettings::from_columns(plain.as_deref(), secret.as_deref());
            assert_eq!(back.unwrap(), settings);
        }
    }

    #[test]
    fn the_plain_column_holds_no_secret() {
        let (plain, secret) = bedrock(Some("token-secret-value")).to_columns();
        assert_eq!(
            plain.as_deref(),
            Some(r#"{"bedrock":{"region":"eu-west-1"}}"#)
        );
        assert_eq!(
            secret.as_deref(),
            Some(
                r#"{"aws":{"access_key_id":"AKIDEXAMPLE","secret_access_key":"aws-secret-value","session_token":"token-secret-value"}}"#
            )
        );
        let (plain, _) = vertex().to_columns();
        assert_eq!(
            plain.as_deref(),
            Some(r#"{"vertex":{"project":"p-1","location":"us-central1"}}"#)
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        for settings in [bedrock(Some("token-secret-value")), vertex()] {
            let debug = format!("{settings:?}");
            assert!(!debug.contains("secret-value"), "{debug}");
            assert!(debug.contains("<redacted>"), "{debug}");
        }
    }

    #[test]
    fn mismatched_or_unreadable_columns_are_errors() {
        let (bedrock_plain, _) = bedrock(None).to_columns();
        let (_, vertex_secret) = vertex().to_columns();
        assert!(matches!(
            ProviderSettings::from_columns(bedrock_plain.as_deref(), vertex_secret.as_deref()),
            Err(StoredSettingsError::Mismatched)
        ));
        assert!(matches!(
            ProviderSettings::from_columns(bedrock_plain.as_deref(), None),
            Err(StoredSettingsError::Mismatched)
        ));
        let error = ProviderSettings::from_columns(
            bedrock_plain.as_deref(),
            Some(r#"{"aws":{"secret_access_key":"leaked-secret-value"}}"#),
        )
        .unwrap_err();
        assert!(!error.to_string().contains("secret-value"), "{error}");
        assert!(
            error.to_string().starts_with("provider_secret: "),
            "{error}"
        );
    }
}
