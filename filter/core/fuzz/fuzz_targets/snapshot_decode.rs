//! Control-plane message decoding: `State::check_control_message`,
//! `SnapshotMessage::into_state` and `proto::acknowledged_batches`.
//!
//! The input is used twice:
//! - as the bytes of a control-plane message: nothing panics, and the check and the state
//!   agree with each other (version, number of keys);
//! - as the source of a structured snapshot and usage acknowledgement (`arbitrary`), encoded
//!   as the control plane does: the check reads back the snapshot's version and key count,
//!   the state built key by key from the message is the state built from the decoded
//!   snapshot at once, and each message is told apart from the other kind.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate_core::snapshot::ControlUpdate;
use tollgate_core::{proto, State};

/// A snapshot as `arbitrary` builds it: fields drawn from small sets where the filter checks
/// them, so that most deployments and keys are usable and the comparisons have content.
#[derive(Arbitrary, Debug)]
struct ArbitrarySnapshot {
    version: u64,
    settings: Option<ArbitrarySettings>,
    deployments: Vec<ArbitraryDeployment>,
    keys: Vec<ArbitraryKey>,
    /// The batches of a usage acknowledgement.
    acknowledged: Vec<u64>,
    /// Provider access tokens: deployment id, token, expiry.
    tokens: Vec<(String, String, u64)>,
}

#[derive(Arbitrary, Debug)]
struct ArbitrarySettings {
    master_key: Digest,
    max_request_body_bytes: u64,
    max_response_body_bytes: u64,
}

/// A SHA-256 hex digest, or any text in its place.
#[derive(Arbitrary, Debug)]
enum Digest {
    Valid([u8; 32]),
    Text(String),
}

impl Digest {
    fn hex(&self) -> String {
        match self {
            Digest::Valid(bytes) => bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
            Digest::Text(text) => text.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct ArbitraryDeployment {
    id: String,
    /// An index into `NAMES`, so that deployments share model names.
    model_name: u8,
    provider: i32,
    provider_name: String,
    upstream_model: String,
    api_base: ApiBase,
    api_key: String,
    default_max_tokens: u32,
    api_version: String,
    provider_settings: Option<ArbitraryProviderSettings>,
    /// Any text: the filter must refuse what is not a JSON object, never panic.
    default_params_json: String,
}

/// Typed provider settings, complete or not (a Bedrock deployment without credentials must
/// be refused, never used).
#[derive(Arbitrary, Debug)]
enum ArbitraryProviderSettings {
    Azure(String),
    Bedrock {
        region: String,
        credentials: Option<(String, String, String)>,
    },
    Vertex(String, String),
}

impl ArbitraryProviderSettings {
    fn to_proto(&self) -> proto::deployment::ProviderSettings {
        use proto::deployment::ProviderSettings;
        match self {
            ArbitraryProviderSettings::Azure(api_version) => {
                ProviderSettings::Azure(proto::AzureSettings {
                    api_version: api_version.clone(),
                })
            }
            ArbitraryProviderSettings::Bedrock {
                region,
                credentials,
            } => ProviderSettings::Bedrock(proto::BedrockSettings {
                region: region.clone(),
                credentials: credentials.as_ref().map(|(id, secret, token)| {
                    proto::AwsCredentials {
                        access_key_id: id.clone(),
                        secret_access_key: secret.clone(),
                        session_token: token.clone(),
                    }
                }),
            }),
            ArbitraryProviderSettings::Vertex(project, location) => {
                ProviderSettings::Vertex(proto::VertexSettings {
                    project: project.clone(),
                    location: location.clone(),
                })
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ApiBase {
    Http(String),
    Https(String),
    Any(String),
}

#[derive(Arbitrary, Debug)]
struct ArbitraryKey {
    digest: Digest,
    alias: String,
    user_id: String,
    team_id: String,
    models: Vec<String>,
    blocked: bool,
    expires_unix_ms: u64,
}

const NAMES: [&str; 4] = ["", "gpt", "claude", "model with spaces/and:colons"];

impl ArbitrarySnapshot {
    fn proto(&self) -> proto::Snapshot {
        proto::Snapshot {
            version: self.version,
            settings: self.settings.as_ref().map(|settings| proto::Settings {
                master_key_sha256: settings.master_key.hex(),
                max_request_body_bytes: settings.max_request_body_bytes,
                max_response_body_bytes: settings.max_response_body_bytes,
                budgets: Vec::new(),
                rate_limits: Vec::new(),
                ..Default::default()
            }),
            deployments: self
                .deployments
                .iter()
                .map(|deployment| proto::Deployment {
                    id: deployment.id.clone(),
                    model_name: NAMES[usize::from(deployment.model_name) % NAMES.len()].into(),
                    // Every ProviderKind, unspecified (0) included.
                    provider: deployment.provider % 7,
                    provider_name: deployment.provider_name.clone(),
                    upstream_model: deployment.upstream_model.clone(),
                    api_base: match &deployment.api_base {
                        ApiBase::Http(rest) => format!("http://{rest}"),
                        ApiBase::Https(rest) => format!("https://{rest}"),
                        ApiBase::Any(text) => text.clone(),
                    },
                    api_key: deployment.api_key.clone(),
                    default_max_tokens: deployment.default_max_tokens,
                    api_version: deployment.api_version.clone(),
                    pricing: None,
                    limits: None,
                    provider_settings: deployment
                        .provider_settings
                        .as_ref()
                        .map(ArbitraryProviderSettings::to_proto),
                    default_params_json: deployment.default_params_json.clone(),
                    ..Default::default()
                })
                .collect(),
            keys: self
                .keys
                .iter()
                .map(|key| proto::VirtualKey {
                    key_sha256: key.digest.hex(),
                    key_alias: key.alias.clone(),
                    user_id: key.user_id.clone(),
                    team_id: key.team_id.clone(),
                    models: key.models.clone(),
                    blocked: key.blocked,
                    expires_unix_ms: key.expires_unix_ms,
                    ..Default::default()
                })
                .collect(),
        }
    }
}

/// Everything a state serves, as text, for comparing two states.
fn describe(state: &State) -> String {
    let models: Vec<String> = state
        .model_names()
        .iter()
        .map(|name| {
            format!(
                "{name}: {:?}",
                state.model(name).map(|group| group.deployments())
            )
        })
        .collect();
    format!(
        "version {} master {:?} limits {} {} keys {} models {models:?} json {}",
        state.version,
        state.master_key_sha256,
        state.max_request_body_bytes,
        state.max_response_body_bytes,
        state.key_count(),
        String::from_utf8_lossy(state.models_json()),
    )
}

fn digest_bytes(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(bytes)
}

fuzz_target!(|data: &[u8]| {
    // The bytes as a message.
    let _ = proto::acknowledged_batches(data);
    if let Ok(Some(ControlUpdate::Delta(delta))) = State::check_control_message(data) {
        // A delta applies only onto the version it was made from: never onto nothing.
        let version = delta.version();
        let mut current = None;
        let applied = State::apply(&mut current, ControlUpdate::Delta(delta));
        assert!(applied.is_err(), "delta to {version} applied onto no state");
        assert!(current.is_none());
    }
    if let Ok(Some(ControlUpdate::Tokens(tokens))) = State::check_control_message(data) {
        // Tokens before any snapshot are left, and said so.
        let mut current = None;
        let applied = State::apply(&mut current, ControlUpdate::Tokens(tokens)).unwrap();
        assert_eq!((applied.version, applied.problems.len()), (0, 1));
        assert!(current.is_none());
    }
    if let Ok(Some(ControlUpdate::Snapshot(message))) = State::check_control_message(data) {
        let (version, key_count) = (message.version(), message.key_count());
        let (state, problems) = message.into_state();
        assert_eq!(state.version, version);
        // Each key is served, refused with a problem, or replaced by a later one with its hash.
        let refused = problems
            .iter()
            .filter(|problem| problem.starts_with("keys["))
            .count();
        assert!(
            state.key_count() + refused <= key_count,
            "{} + {refused} keys from {key_count}",
            state.key_count()
        );
        assert_eq!(key_count == 0, state.key_count() + refused == 0);
    }

    // The bytes as a structured snapshot.
    let Ok(arbitrary) = ArbitrarySnapshot::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let snapshot = arbitrary.proto();
    let encoded = proto::ControlMessage {
        kind: Some(proto::control_message::Kind::Snapshot(snapshot.clone())),
    }
    .encode_to_vec();
    assert_eq!(proto::acknowledged_batches(&encoded), None);
    let message = match State::check_control_message(&encoded)
        .unwrap_or_else(|error| panic!("an encoded snapshot is refused: {error}"))
        .expect("the message carries a snapshot")
    {
        ControlUpdate::Snapshot(message) => message,
        ControlUpdate::Delta(_) => panic!("a snapshot decoded as a delta"),
        ControlUpdate::Tokens(_) => panic!("a snapshot decoded as provider tokens"),
        ControlUpdate::Cooldowns(_) => panic!("a snapshot decoded as cooldowns"),
    };
    assert_eq!(message.version(), snapshot.version);
    assert_eq!(message.key_count(), snapshot.keys.len());
    let (streamed, streamed_problems) = message.into_state();
    let (direct, direct_problems) = State::from_snapshot(snapshot.clone());
    assert_eq!(describe(&streamed), describe(&direct));
    assert_eq!(streamed_problems, direct_problems);
    for key in &snapshot.keys {
        if let Some(digest) = digest_bytes(&key.key_sha256) {
            let (streamed, direct) = (streamed.key(&digest), direct.key(&digest));
            assert!(
                streamed.is_some() && streamed == direct,
                "key {}",
                key.key_sha256
            );
        }
    }

    // Tokens onto the state: the version stays, every token with an id and a value is
    // found until it expires (the last one of an id wins), the others are not.
    let tokens = proto::ControlMessage {
        kind: Some(proto::control_message::Kind::ProviderTokens(
            proto::ProviderTokens {
                tokens: arbitrary
                    .tokens
                    .iter()
                    .map(|(id, token, expires)| proto::ProviderToken {
                        deployment_id: id.clone(),
                        access_token: token.clone(),
                        expires_unix_ms: *expires,
                    })
                    .collect(),
            },
        )),
    }
    .encode_to_vec();
    let mut current = Some(std::sync::Arc::new(streamed));
    let applied = State::update(&mut current, &tokens)
        .unwrap_or_else(|error| panic!("encoded tokens are refused: {error}"))
        .expect("the message carries tokens");
    let state = current.expect("a state");
    assert_eq!(applied.version, snapshot.version);
    assert_eq!(state.version, snapshot.version);
    for (id, token, expires) in &arbitrary.tokens {
        let last = arbitrary
            .tokens
            .iter()
            .rev()
            .find(|(other, _, _)| other == id);
        if id.is_empty()
            || token.is_empty()
            || last.map(|(_, t, e)| (t, e)) != Some((token, expires))
        {
            continue;
        }
        let before = expires.saturating_sub(1);
        assert_eq!(state.access_token(id, before).ok(), Some(token.as_str()));
        if *expires != 0 {
            assert!(state.access_token(id, *expires).is_err());
        }
    }

    let ack = proto::ControlMessage {
        kind: Some(proto::control_message::Kind::UsageAck(proto::UsageAck {
            batch_ids: arbitrary.acknowledged.clone(),
            ledger_seq: 0,
        })),
    }
    .encode_to_vec();
    assert_eq!(
        proto::acknowledged_batches(&ack).map(|ack| ack.batch_ids),
        Some(arbitrary.acknowledged)
    );
    assert!(matches!(State::check_control_message(&ack), Ok(None)));
});
