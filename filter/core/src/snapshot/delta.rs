//! Snapshot deltas: what changed from one version to the next, applied onto the state the
//! filter holds. Only the entries a delta names are decoded; the keys it does not name stay
//! where they are (behind their `Arc`s), so one changed key out of 100,000 costs one key.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::{
    add_key, decode_sha256, for_each_length_delimited_field, DeploymentSlot, SnapshotDecodeError,
    State,
};
use crate::proto;

/// `SnapshotDelta.keys`.
const DELTA_KEYS_TAG: u32 = 7;
/// `SnapshotDelta.removed_key_sha256`.
const DELTA_REMOVED_KEYS_TAG: u32 = 8;

/// A checked delta (see [`State::check_control_message`]): everything but its keys decoded,
/// every key checked to decode.
#[derive(Debug)]
pub struct DeltaMessage<'m> {
    head: DeltaWithoutKeys,
    delta_bytes: &'m [u8],
    key_count: usize,
    removed_key_count: usize,
}

/// `proto::SnapshotDelta` without its keys, which [`DeltaMessage::apply_to`] reads one by one.
#[derive(Clone, PartialEq, prost::Message)]
struct DeltaWithoutKeys {
    #[prost(uint64, tag = "1")]
    base_version: u64,
    #[prost(uint64, tag = "2")]
    version: u64,
    #[prost(message, optional, tag = "3")]
    settings: Option<proto::Settings>,
    #[prost(message, repeated, tag = "4")]
    deployments: Vec<proto::Deployment>,
    #[prost(string, repeated, tag = "5")]
    removed_deployment_ids: Vec<String>,
    #[prost(string, repeated, tag = "6")]
    deployment_order: Vec<String>,
}

impl<'m> DeltaMessage<'m> {
    /// Checks the payload of `ControlMessage.kind.delta`.
    pub(super) fn check(delta_bytes: &'m [u8]) -> Result<Self, SnapshotDecodeError> {
        let (mut key_count, mut removed_key_count) = (0, 0);
        for_each_length_delimited_field(delta_bytes, |tag, payload| {
            match tag {
                DELTA_KEYS_TAG => {
                    proto::VirtualKey::decode(payload)?;
                    key_count += 1;
                }
                DELTA_REMOVED_KEYS_TAG => {
                    removed_key_text(payload)?;
                    removed_key_count += 1;
                }
                _ => {}
            }
            Ok(())
        })?;
        let head = DeltaWithoutKeys::decode(delta_bytes)?;
        if head.version <= head.base_version {
            return Err(SnapshotDecodeError::Malformed(
                "a delta's version is not after its base version",
            ));
        }
        Ok(DeltaMessage {
            head,
            delta_bytes,
            key_count,
            removed_key_count,
        })
    }
}

impl DeltaMessage<'_> {
    /// The version the delta applies onto.
    pub fn base_version(&self) -> u64 {
        self.head.base_version
    }

    /// The version it leads to.
    pub fn version(&self) -> u64 {
        self.head.version
    }

    /// Keys added, changed or removed.
    pub fn key_changes(&self) -> usize {
        self.key_count + self.removed_key_count
    }

    /// Changes `state` (which holds [`Self::base_version`]) into [`Self::version`]; returns
    /// the entries that could not be used. Removed keys go before added ones, so a hash in
    /// both lists ends up present.
    pub(super) fn apply_to(self, state: &mut State) -> Vec<String> {
        let mut problems = Vec::new();
        let DeltaWithoutKeys {
            version,
            settings,
            deployments,
            removed_deployment_ids,
            deployment_order,
            ..
        } = self.head;
        let settings_changed = settings.is_some();
        if let Some(settings) = settings {
            state.set_settings(settings, &mut problems);
        }
        if settings_changed
            || !(deployments.is_empty()
                && removed_deployment_ids.is_empty()
                && deployment_order.is_empty())
        {
            change_deployments(
                &mut state.deployments,
                DeploymentChanges {
                    upserted: deployments,
                    removed: removed_deployment_ids,
                    order: deployment_order,
                },
                &mut problems,
            );
            state.rebuild_models();
        }
        let mut removed = 0;
        let walked = for_each_length_delimited_field(self.delta_bytes, |tag, payload| {
            if tag == DELTA_REMOVED_KEYS_TAG {
                match decode_sha256(removed_key_text(payload)?) {
                    Some(hash) => {
                        state.keys.remove(&hash);
                    }
                    None => problems.push(format!(
                        "delta removed_key_sha256[{removed}]: not a SHA-256 hex digest"
                    )),
                }
                removed += 1;
            }
            Ok(())
        });
        // The check walked the same bytes already: these cannot fail, but are not hidden.
        if let Err(error) = walked {
            problems.push(format!(
                "delta removed_key_sha256[{removed}] and after: {error}"
            ));
        }
        let mut index = 0;
        let walked = for_each_length_delimited_field(self.delta_bytes, |tag, payload| {
            if tag == DELTA_KEYS_TAG {
                add_key(
                    &mut state.keys,
                    ("delta keys", index),
                    proto::VirtualKey::decode(payload)?,
                    &mut problems,
                );
                index += 1;
            }
            Ok(())
        });
        if let Err(error) = walked {
            problems.push(format!("delta keys[{index}] and after: {error}"));
        }
        state.version = version;
        problems
    }
}

/// The text of one `removed_key_sha256` entry.
fn removed_key_text(payload: &[u8]) -> Result<&str, SnapshotDecodeError> {
    std::str::from_utf8(payload)
        .map_err(|_| SnapshotDecodeError::Malformed("a removed key hash is not UTF-8"))
}

/// The deployment part of a delta.
struct DeploymentChanges {
    upserted: Vec<proto::Deployment>,
    removed: Vec<String>,
    order: Vec<String>,
}

/// Removes, replaces in place and appends deployments, then puts them in the delta's order
/// when it gives one.
fn change_deployments(
    slots: &mut Vec<DeploymentSlot>,
    changes: DeploymentChanges,
    problems: &mut Vec<String>,
) {
    if !changes.removed.is_empty() {
        let removed: HashSet<&str> = changes.removed.iter().map(String::as_str).collect();
        slots.retain(|slot| !removed.contains(slot.id()));
    }
    let mut positions: HashMap<String, usize> = slots
        .iter()
        .enumerate()
        .map(|(at, slot)| (slot.id().to_string(), at))
        .collect();
    for (index, deployment) in changes.upserted.into_iter().enumerate() {
        let slot =
            DeploymentSlot::build(deployment, &format!("delta deployments[{index}]"), problems);
        match positions.get(slot.id()).and_then(|&at| slots.get_mut(at)) {
            Some(existing) => *existing = slot,
            None => {
                positions.insert(slot.id().to_string(), slots.len());
                slots.push(slot);
            }
        }
    }
    if changes.order.is_empty() {
        return;
    }
    let mut by_id: HashMap<String, DeploymentSlot> = slots
        .drain(..)
        .map(|slot| (slot.id().to_string(), slot))
        .collect();
    for id in &changes.order {
        match by_id.remove(id) {
            Some(slot) => slots.push(slot),
            None => problems.push(format!("delta deployment_order: no deployment {id:?}")),
        }
    }
    if !by_id.is_empty() {
        problems.push(format!(
            "delta deployment_order leaves out {} deployments; they are dropped",
            by_id.len()
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message;

    use super::super::tests::deployment;
    use super::super::{Applied, DeltaRefused, State, UpdateError, UpdateKind};
    use crate::proto::{self, control_message};

    /// A key whose hash is `[i; 32]`.
    fn key(i: u8, alias: &str, blocked: bool) -> proto::VirtualKey {
        proto::VirtualKey {
            key_sha256: hex::encode([i; 32]),
            key_alias: alias.into(),
            models: vec!["gpt".into()],
            blocked,
            ..Default::default()
        }
    }

    /// A deployment with its own id.
    fn deployment_with_id(id: &str, model_name: &str, api_base: &str) -> proto::Deployment {
        proto::Deployment {
            id: id.into(),
            ..deployment(model_name, proto::ProviderKind::Openai, api_base)
        }
    }

    fn snapshot_message(snapshot: proto::Snapshot) -> Vec<u8> {
        proto::ControlMessage {
            kind: Some(control_message::Kind::Snapshot(snapshot)),
        }
        .encode_to_vec()
    }

    fn delta_message(delta: proto::SnapshotDelta) -> Vec<u8> {
        proto::ControlMessage {
            kind: Some(control_message::Kind::Delta(delta)),
        }
        .encode_to_vec()
    }

    /// Everything a state serves, in a comparable form.
    #[derive(Debug, PartialEq)]
    struct Served {
        version: u64,
        master_key_sha256: Option<[u8; 32]>,
        limits: (u64, u64),
        models_json: String,
        /// Per model: the deployment ids and upstream models, in round-robin order.
        groups: Vec<(String, Vec<(String, String)>)>,
        /// Every key, by hash.
        keys: Vec<([u8; 32], String, bool)>,
        deployment_slots: Vec<String>,
    }

    fn served(state: &State) -> Served {
        let mut keys: Vec<([u8; 32], String, bool)> = state
            .keys
            .iter()
            .map(|(hash, key)| (*hash, key.alias.clone(), key.blocked))
            .collect();
        keys.sort();
        Served {
            version: state.version,
            master_key_sha256: state.master_key_sha256,
            limits: (state.max_request_body_bytes, state.max_response_body_bytes),
            models_json: String::from_utf8(state.models_json().to_vec()).unwrap(),
            groups: state
                .model_names()
                .iter()
                .map(|name| {
                    let group = state.model(name).unwrap();
                    let members = group
                        .deployments()
                        .iter()
                        .map(|d| (d.id.clone(), d.upstream_model.clone()))
                        .collect();
                    (name.clone(), members)
                })
                .collect(),
            keys,
            deployment_slots: state
                .deployments
                .iter()
                .map(|slot| slot.id().to_string())
                .collect(),
        }
    }

    fn base_snapshot() -> proto::Snapshot {
        proto::Snapshot {
            version: 10,
            settings: Some(proto::Settings {
                budgets: Vec::new(),
                rate_limits: Vec::new(),
                master_key_sha256: hex::encode([9; 32]),
                max_request_body_bytes: 100,
                max_response_body_bytes: 200,
                router: None,
            }),
            deployments: vec![
                deployment_with_id("a", "gpt", "http://127.0.0.1:1/v1"),
                deployment_with_id("b", "claude", "http://127.0.0.1:2/v1"),
                deployment_with_id("c", "gpt", "http://127.0.0.1:3/v1"),
            ],
            keys: (0u8..50)
                .map(|i| key(i, &format!("key-{i}"), false))
                .collect(),
        }
    }

    fn installed(snapshot: proto::Snapshot) -> Option<Arc<State>> {
        let mut current = None;
        State::update(&mut current, &snapshot_message(snapshot)).unwrap();
        current
    }

    /// Applies `delta` onto the state of `base` and checks that the result serves exactly
    /// what the full snapshot `expected` does.
    fn assert_delta_gives(
        base: proto::Snapshot,
        delta: proto::SnapshotDelta,
        expected: proto::Snapshot,
    ) {
        let mut current = installed(base);
        let applied = State::update(&mut current, &delta_message(delta))
            .unwrap()
            .unwrap();
        assert_eq!(applied.kind, UpdateKind::Delta);
        assert_eq!(applied.problems, Vec::<String>::new());
        let (full, problems) = State::from_snapshot(expected);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(served(current.as_deref().unwrap()), served(&full));
    }

    #[test]
    fn a_delta_adds_changes_and_removes_keys_onto_a_copy_sharing_the_others() {
        let mut current = installed(base_snapshot());
        // A request in flight holds the base state: the delta must not change it.
        let in_flight = current.clone().unwrap();
        let delta = proto::SnapshotDelta {
            base_version: 10,
            version: 11,
            keys: vec![key(3, "key-3", true), key(60, "key-60", false)],
            removed_key_sha256: vec![hex::encode([4; 32])],
            ..Default::default()
        };
        let applied = State::update(&mut current, &delta_message(delta))
            .unwrap()
            .unwrap();
        assert_eq!(
            applied,
            Applied {
                kind: UpdateKind::Delta,
                version: 11,
                keys: 3,
                problems: Vec::new(),
            }
        );
        let state = current.unwrap();
        assert_eq!(state.version, 11);
        assert_eq!(state.key_count(), 50);
        assert!(state.key(&[3; 32]).unwrap().blocked);
        assert_eq!(state.key(&[60; 32]).unwrap().alias, "key-60");
        assert!(state.key(&[4; 32]).is_none());
        // The state in flight is still the base one.
        assert_eq!(in_flight.version, 10);
        assert!(!in_flight.key(&[3; 32]).unwrap().blocked);
        assert!(in_flight.key(&[4; 32]).is_some());
        assert!(in_flight.key(&[60; 32]).is_none());
        // Keys and deployments the delta did not touch are shared, not copied.
        assert!(Arc::ptr_eq(
            state.key(&[5; 32]).unwrap(),
            in_flight.key(&[5; 32]).unwrap()
        ));
        assert!(Arc::ptr_eq(
            &state.model("gpt").unwrap().deployments()[0],
            &in_flight.model("gpt").unwrap().deployments()[0]
        ));

        // The same as the full snapshot of the new set.
        let mut expected = base_snapshot();
        expected.version = 11;
        expected
            .keys
            .retain(|k| k.key_sha256 != hex::encode([4; 32]));
        expected.keys[3] = key(3, "key-3", true);
        expected.keys.push(key(60, "key-60", false));
        let (full, _) = State::from_snapshot(expected);
        assert_eq!(served(&state), served(&full));
    }

    #[test]
    fn a_delta_changes_a_state_nothing_else_holds_in_place() {
        let mut current = installed(base_snapshot());
        let before = Arc::as_ptr(current.as_ref().unwrap());
        let delta = proto::SnapshotDelta {
            base_version: 10,
            version: 12,
            keys: vec![key(1, "renamed", false)],
            ..Default::default()
        };
        State::update(&mut current, &delta_message(delta)).unwrap();
        let state = current.unwrap();
        assert_eq!(Arc::as_ptr(&state), before, "the state was copied");
        assert_eq!(state.key(&[1; 32]).unwrap().alias, "renamed");
        assert_eq!(state.version, 12);
    }

    #[test]
    fn a_delta_onto_another_version_or_onto_nothing_is_refused_and_changes_nothing() {
        let delta = delta_message(proto::SnapshotDelta {
            base_version: 9,
            version: 11,
            removed_key_sha256: vec![hex::encode([1; 32])],
            ..Default::default()
        });
        let mut current = installed(base_snapshot());
        let error = State::update(&mut current, &delta).unwrap_err();
        assert!(
            matches!(
                error,
                UpdateError::Refused(DeltaRefused {
                    held: Some(10),
                    base_version: 9
                })
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "a delta onto snapshot 9 cannot apply onto snapshot 10"
        );
        let state = current.unwrap();
        assert_eq!((state.version, state.key_count()), (10, 50));
        assert!(state.key(&[1; 32]).is_some());

        let mut nothing = None;
        let error = State::update(&mut nothing, &delta).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a delta onto snapshot 9 cannot apply onto no snapshot"
        );
        assert!(nothing.is_none());
    }

    #[test]
    fn a_broken_delta_is_refused_whole() {
        let delta = proto::SnapshotDelta {
            base_version: 10,
            version: 11,
            keys: vec![key(1, "x", true)],
            removed_key_sha256: vec![hex::encode([2; 32])],
            ..Default::default()
        };
        let message = delta_message(delta.clone());
        for cut in 1..message.len() {
            let mut current = installed(base_snapshot());
            assert!(
                State::update(&mut current, &message[..cut]).is_err(),
                "cut at {cut}"
            );
            assert_eq!(current.unwrap().key_count(), 50);
        }
        // A version that does not move forward.
        let backwards = delta_message(proto::SnapshotDelta {
            version: 10,
            ..delta.clone()
        });
        let mut current = installed(base_snapshot());
        assert!(matches!(
            State::update(&mut current, &backwards),
            Err(UpdateError::Decode(_))
        ));
        // A removed hash that is not UTF-8: the framing is fine, the content is not.
        let mut bad_text = message.clone();
        let at = bad_text.len() - 1;
        bad_text[at] = 0xff;
        let mut current = installed(base_snapshot());
        assert!(matches!(
            State::update(&mut current, &bad_text),
            Err(UpdateError::Decode(_))
        ));
        let state = current.unwrap();
        assert!(state.key(&[2; 32]).is_some());
        assert!(!state.key(&[1; 32]).unwrap().blocked);
    }

    #[test]
    fn bad_entries_of_a_delta_are_reported_and_the_rest_applies() {
        let mut current = installed(base_snapshot());
        let delta = proto::SnapshotDelta {
            base_version: 10,
            version: 11,
            keys: vec![
                proto::VirtualKey {
                    key_sha256: "not-hex".into(),
                    ..Default::default()
                },
                key(70, "good", false),
            ],
            removed_key_sha256: vec!["zz".into(), hex::encode([0; 32])],
            deployments: vec![deployment_with_id("d", "gpt", "ftp://nope")],
            ..Default::default()
        };
        let applied = State::update(&mut current, &delta_message(delta))
            .unwrap()
            .unwrap();
        assert_eq!(
            applied.problems,
            vec![
                "delta deployments[0]: gpt: api_base \"ftp://nope\" is not an http(s) URL",
                "delta removed_key_sha256[0]: not a SHA-256 hex digest",
                "delta keys[0]: key_sha256 is not a SHA-256 hex digest",
            ]
        );
        let state = current.unwrap();
        assert!(state.key(&[70; 32]).is_some());
        assert!(state.key(&[0; 32]).is_none());
        assert_eq!(state.model("gpt").unwrap().deployments().len(), 2);
    }

    #[test]
    fn settings_change_only_when_a_delta_carries_them() {
        let mut current = installed(base_snapshot());
        let keys_only = proto::SnapshotDelta {
            base_version: 10,
            version: 11,
            keys: vec![key(1, "x", false)],
            ..Default::default()
        };
        State::update(&mut current, &delta_message(keys_only)).unwrap();
        let state = current.clone().unwrap();
        assert_eq!(state.master_key_sha256, Some([9; 32]));
        assert_eq!(
            (state.max_request_body_bytes, state.max_response_body_bytes),
            (100, 200)
        );
        let settings = proto::SnapshotDelta {
            base_version: 11,
            version: 12,
            settings: Some(proto::Settings {
                budgets: Vec::new(),
                rate_limits: Vec::new(),
                master_key_sha256: String::new(),
                max_request_body_bytes: 5,
                max_response_body_bytes: 0,
                router: None,
            }),
            ..Default::default()
        };
        State::update(&mut current, &delta_message(settings)).unwrap();
        let state = current.unwrap();
        assert_eq!(state.master_key_sha256, None);
        assert_eq!(
            (state.max_request_body_bytes, state.max_response_body_bytes),
            (5, super::super::DEFAULT_MAX_RESPONSE_BODY_BYTES)
        );
    }

    #[test]
    fn deployments_added_changed_and_removed_give_the_full_snapshots_order() {
        // a removed, b changed in place, d added at the end: [b', c, d].
        let changed_b = proto::Deployment {
            upstream_model: "claude-2".into(),
            ..deployment_with_id("b", "claude", "http://127.0.0.1:2/v1")
        };
        let d = deployment_with_id("d", "gpt", "http://127.0.0.1:4/v1");
        let c = deployment_with_id("c", "gpt", "http://127.0.0.1:3/v1");
        let delta = proto::SnapshotDelta {
            base_version: 10,
            version: 11,
            deployments: vec![changed_b.clone(), d.clone()],
            removed_deployment_ids: vec!["a".into()],
            ..Default::default()
        };
        let expected = proto::Snapshot {
            version: 11,
            deployments: vec![changed_b.clone(), c.clone(), d.clone()],
            ..base_snapshot()
        };
        assert_delta_gives(base_snapshot(), delta.clone(), expected);

        // The same with an order that appending cannot give: [d, b', c].
        let reordered = proto::SnapshotDelta {
            deployment_order: vec!["d".into(), "b".into(), "c".into()],
            ..delta
        };
        let expected = proto::Snapshot {
            version: 11,
            deployments: vec![d, changed_b, c],
            ..base_snapshot()
        };
        assert_delta_gives(base_snapshot(), reordered, expected);
    }

    #[test]
    fn a_deployment_the_filter_could_not_use_keeps_its_place() {
        let base = proto::Snapshot {
            deployments: vec![
                deployment_with_id("x", "gpt", "not a url"),
                deployment_with_id("y", "gpt", "http://127.0.0.1:2/v1"),
            ],
            ..base_snapshot()
        };
        let fixed = deployment_with_id("x", "gpt", "http://127.0.0.1:1/v1");
        let delta = proto::SnapshotDelta {
            base_version: 10,
            version: 11,
            deployments: vec![fixed.clone()],
            ..Default::default()
        };
        let expected = proto::Snapshot {
            version: 11,
            deployments: vec![
                fixed,
                deployment_with_id("y", "gpt", "http://127.0.0.1:2/v1"),
            ],
            ..base_snapshot()
        };
        assert_delta_gives(base, delta, expected);
    }

    #[test]
    fn deltas_apply_one_after_another() {
        let mut current = installed(base_snapshot());
        for version in 11..=20u64 {
            let i = u8::try_from(version).unwrap();
            let delta = proto::SnapshotDelta {
                base_version: version - 1,
                version,
                keys: vec![key(i + 100, "new", false)],
                removed_key_sha256: vec![hex::encode([i - 11; 32])],
                ..Default::default()
            };
            State::update(&mut current, &delta_message(delta)).unwrap();
        }
        let state = current.unwrap();
        assert_eq!(state.version, 20);
        assert_eq!(state.key_count(), 50);
        assert!((0u8..10).all(|i| state.key(&[i; 32]).is_none()));
        assert!((111u8..=120).all(|i| state.key(&[i; 32]).is_some()));
    }
}
