//! Control-plane messages kept as bytes by a VM that serves nothing yet (Envoy's main-thread
//! Wasm VM never does): the newest full snapshot and the deltas after it, a fraction of the
//! decoded state's size, and the newest provider tokens. Only their versions are read until
//! the VM serves.

use std::sync::Arc;

use prost::Message;

use super::{
    for_each_length_delimited_field, Applied, SnapshotDecodeError, State, UpdateError, UpdateKind,
    CONTROL_MESSAGE_COOLDOWNS_TAG, CONTROL_MESSAGE_DELTA_TAG, CONTROL_MESSAGE_PROVIDER_TOKENS_TAG,
    CONTROL_MESSAGE_SNAPSHOT_TAG,
};

/// Deltas are kept until they add up to this many bytes or half the snapshot's size,
/// whichever is more; past that a fresh full snapshot costs less than keeping them.
const MIN_KEPT_DELTA_BYTES: usize = 64 * 1024;

/// The newest full snapshot as received and the deltas received after it, in order.
#[derive(Debug, Default)]
pub struct KeptUpdates {
    snapshot: Option<Vec<u8>>,
    deltas: Vec<Vec<u8>>,
    delta_bytes: usize,
    /// The version the kept messages add up to; 0 with none.
    version: u64,
    /// The newest provider tokens message: applied after the others, as a serving VM
    /// holds tokens across snapshots.
    tokens: Option<Vec<u8>>,
    /// The newest pushed cooldowns message, applied last as well.
    cooldowns: Option<Vec<u8>>,
}

/// What [`KeptUpdates::keep`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Kept: the VM now holds `version`.
    Held {
        /// Whether the message was a full snapshot or a delta.
        kind: UpdateKind,
        /// The version the kept messages now add up to.
        version: u64,
    },
    /// The message carries no snapshot or delta (provider tokens are kept all the same).
    NoUpdate,
    /// A delta onto another version than the one kept, or more deltas than they are worth:
    /// everything kept was let go, and the VM needs a full snapshot.
    NeedsSnapshot,
}

/// The versions of a control-plane message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Snapshot { version: u64 },
    Delta { base_version: u64, version: u64 },
    Tokens,
    Cooldowns,
}

/// `Snapshot` with only its version (prost skips the rest without allocating).
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct SnapshotHead {
    #[prost(uint64, tag = "1")]
    version: u64,
}

/// `SnapshotDelta` with only its versions.
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct DeltaHead {
    #[prost(uint64, tag = "1")]
    base_version: u64,
    #[prost(uint64, tag = "2")]
    version: u64,
}

impl Head {
    fn read(message: &[u8]) -> Result<Option<Head>, SnapshotDecodeError> {
        let mut update = None;
        for_each_length_delimited_field(message, |tag, payload| {
            if tag == CONTROL_MESSAGE_SNAPSHOT_TAG
                || tag == CONTROL_MESSAGE_DELTA_TAG
                || tag == CONTROL_MESSAGE_PROVIDER_TOKENS_TAG
                || tag == CONTROL_MESSAGE_COOLDOWNS_TAG
            {
                update = Some((tag, payload));
            }
            Ok(())
        })?;
        Ok(match update {
            None => None,
            Some((CONTROL_MESSAGE_PROVIDER_TOKENS_TAG, _)) => Some(Head::Tokens),
            Some((CONTROL_MESSAGE_COOLDOWNS_TAG, _)) => Some(Head::Cooldowns),
            Some((CONTROL_MESSAGE_DELTA_TAG, payload)) => {
                let head = DeltaHead::decode(payload)?;
                Some(Head::Delta {
                    base_version: head.base_version,
                    version: head.version,
                })
            }
            Some((_, payload)) => Some(Head::Snapshot {
                version: SnapshotHead::decode(payload)?.version,
            }),
        })
    }
}

impl KeptUpdates {
    /// Keeps a control-plane message. A snapshot replaces everything kept; a delta is kept
    /// after the others when it applies onto the version they add up to.
    pub fn keep(&mut self, message: Vec<u8>) -> Result<Kept, SnapshotDecodeError> {
        match Head::read(&message)? {
            None => Ok(Kept::NoUpdate),
            Some(Head::Tokens) => {
                self.tokens = Some(message);
                Ok(Kept::NoUpdate)
            }
            Some(Head::Cooldowns) => {
                self.cooldowns = Some(message);
                Ok(Kept::NoUpdate)
            }
            Some(Head::Snapshot { version }) => {
                self.deltas = Vec::new();
                self.delta_bytes = 0;
                self.snapshot = Some(message);
                self.version = version;
                Ok(Kept::Held {
                    kind: UpdateKind::Snapshot,
                    version,
                })
            }
            Some(Head::Delta {
                base_version,
                version,
            }) => {
                let snapshot_bytes = self.snapshot.as_ref().map_or(0, Vec::len);
                let budget = (snapshot_bytes / 2).max(MIN_KEPT_DELTA_BYTES);
                let delta_bytes = self.delta_bytes.saturating_add(message.len());
                if snapshot_bytes == 0
                    || base_version != self.version
                    || version <= base_version
                    || delta_bytes > budget
                {
                    // The next stream sends the tokens again after its snapshot.
                    *self = KeptUpdates::default();
                    return Ok(Kept::NeedsSnapshot);
                }
                self.deltas.push(message);
                self.delta_bytes = delta_bytes;
                self.version = version;
                Ok(Kept::Held {
                    kind: UpdateKind::Delta,
                    version,
                })
            }
        }
    }

    /// The version the kept messages add up to; 0 with none.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Builds the state from the kept messages, each one's bytes let go as soon as it is
    /// applied. Returns what each message did; on an error the state is the one the
    /// messages before it built, and the VM needs a full snapshot.
    pub fn into_state(self) -> (Option<Arc<State>>, Vec<Applied>, Option<UpdateError>) {
        let mut state = None;
        let mut applied = Vec::new();
        let messages = self.snapshot.into_iter().chain(self.deltas);
        for message in messages.chain(self.tokens).chain(self.cooldowns) {
            match State::update(&mut state, &message) {
                Ok(Some(done)) => applied.push(done),
                Ok(None) => {}
                Err(error) => return (state, applied, Some(error)),
            }
        }
        (state, applied, None)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::{self, control_message};

    fn snapshot(version: u64, keys: u32) -> Vec<u8> {
        proto::ControlMessage {
            kind: Some(control_message::Kind::Snapshot(proto::Snapshot {
                version,
                keys: (0..keys)
                    .map(|i| {
                        let mut hash = [0; 32];
                        hash[..4].copy_from_slice(&i.to_be_bytes());
                        proto::VirtualKey {
                            key_sha256: hex::encode(hash),
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    fn held(kind: UpdateKind, version: u64) -> Kept {
        Kept::Held { kind, version }
    }

    fn delta(base_version: u64, version: u64, add: u8) -> Vec<u8> {
        proto::ControlMessage {
            kind: Some(control_message::Kind::Delta(proto::SnapshotDelta {
                base_version,
                version,
                keys: vec![proto::VirtualKey {
                    key_sha256: hex::encode([add; 32]),
                    key_alias: format!("added-{add}"),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_snapshot_and_the_deltas_after_it_build_the_state_they_add_up_to() {
        let mut kept = KeptUpdates::default();
        assert_eq!(
            kept.keep(snapshot(5, 3)).unwrap(),
            held(UpdateKind::Snapshot, 5)
        );
        assert_eq!(
            kept.keep(delta(5, 6, 200)).unwrap(),
            held(UpdateKind::Delta, 6)
        );
        assert_eq!(
            kept.keep(delta(6, 9, 201)).unwrap(),
            held(UpdateKind::Delta, 9)
        );
        assert_eq!(
            kept.keep(proto::ControlMessage::default().encode_to_vec())
                .unwrap(),
            Kept::NoUpdate
        );
        assert_eq!(kept.version(), 9);
        let (state, applied, error) = kept.into_state();
        assert!(error.is_none(), "{error:?}");
        let kinds: Vec<(UpdateKind, u64, usize)> = applied
            .iter()
            .map(|done| (done.kind, done.version, done.keys))
            .collect();
        assert_eq!(
            kinds,
            [
                (UpdateKind::Snapshot, 5, 3),
                (UpdateKind::Delta, 6, 1),
                (UpdateKind::Delta, 9, 1)
            ]
        );
        let state = state.unwrap();
        assert_eq!((state.version, state.key_count()), (9, 5));
        assert_eq!(state.key(&[201; 32]).unwrap().alias, "added-201");
    }

    fn tokens(value: &str) -> Vec<u8> {
        proto::ControlMessage {
            kind: Some(control_message::Kind::ProviderTokens(
                proto::ProviderTokens {
                    tokens: vec![proto::ProviderToken {
                        deployment_id: "vertex".into(),
                        access_token: value.into(),
                        expires_unix_ms: 10_000,
                    }],
                },
            )),
        }
        .encode_to_vec()
    }

    #[test]
    fn the_newest_tokens_are_kept_and_applied_after_the_snapshot_and_deltas() {
        let mut kept = KeptUpdates::default();
        // Tokens before the snapshot and after it: the newest counts, whatever the order.
        assert_eq!(kept.keep(tokens("ya29.old")).unwrap(), Kept::NoUpdate);
        kept.keep(snapshot(5, 3)).unwrap();
        assert_eq!(kept.keep(tokens("ya29.new")).unwrap(), Kept::NoUpdate);
        kept.keep(delta(5, 6, 200)).unwrap();
        assert_eq!(kept.version(), 6);
        let (state, applied, error) = kept.into_state();
        assert!(error.is_none(), "{error:?}");
        let kinds: Vec<(UpdateKind, u64, usize)> = applied
            .iter()
            .map(|done| (done.kind, done.version, done.keys))
            .collect();
        assert_eq!(
            kinds,
            [
                (UpdateKind::Snapshot, 5, 3),
                (UpdateKind::Delta, 6, 1),
                (UpdateKind::Tokens, 6, 1)
            ]
        );
        let state = state.unwrap();
        assert_eq!(state.access_token("vertex", 9_999), Ok("ya29.new"));
    }

    #[test]
    fn a_new_snapshot_replaces_what_was_kept() {
        let mut kept = KeptUpdates::default();
        kept.keep(snapshot(5, 3)).unwrap();
        kept.keep(delta(5, 6, 200)).unwrap();
        assert_eq!(
            kept.keep(snapshot(7, 1)).unwrap(),
            held(UpdateKind::Snapshot, 7)
        );
        let (state, applied, _) = kept.into_state();
        assert_eq!(applied.len(), 1);
        let state = state.unwrap();
        assert_eq!((state.version, state.key_count()), (7, 1));
    }

    #[test]
    fn a_delta_onto_another_version_or_onto_nothing_lets_everything_go() {
        let mut kept = KeptUpdates::default();
        assert_eq!(kept.keep(delta(0, 1, 1)).unwrap(), Kept::NeedsSnapshot);
        kept.keep(snapshot(5, 3)).unwrap();
        assert_eq!(kept.keep(delta(4, 6, 1)).unwrap(), Kept::NeedsSnapshot);
        assert_eq!(kept.version(), 0);
        let (state, applied, error) = kept.into_state();
        assert!(state.is_none() && applied.is_empty() && error.is_none());
        // A broken message changes nothing.
        let mut kept = KeptUpdates::default();
        kept.keep(snapshot(5, 3)).unwrap();
        let message = delta(5, 6, 1);
        assert!(kept.keep(message[..message.len() / 2].to_vec()).is_err());
        assert_eq!(kept.version(), 5);
    }

    #[test]
    fn deltas_are_kept_up_to_half_the_snapshot_or_the_minimum() {
        // Versions of one varint length, so every delta below has the same size.
        const FIRST: u64 = 1 << 40;
        let one = delta(FIRST, FIRST + 1, 9).len();
        for (keys, budget) in [
            // A small snapshot: the minimum decides.
            (2, MIN_KEPT_DELTA_BYTES),
            // A large one: half its size.
            (4000, snapshot(FIRST, 4000).len() / 2),
        ] {
            assert!(budget >= MIN_KEPT_DELTA_BYTES);
            let mut kept = KeptUpdates::default();
            kept.keep(snapshot(FIRST, keys)).unwrap();
            let fit = u64::try_from(budget / one).unwrap();
            for version in FIRST..FIRST + fit {
                assert_eq!(
                    kept.keep(delta(version, version + 1, 9)).unwrap(),
                    held(UpdateKind::Delta, version + 1)
                );
            }
            let next = FIRST + fit;
            assert_eq!(
                kept.keep(delta(next, next + 1, 9)).unwrap(),
                Kept::NeedsSnapshot,
                "{keys} keys"
            );
            assert_eq!(kept.version(), 0);
        }
    }

    #[test]
    fn a_kept_delta_that_does_not_decode_stops_the_state_before_it() {
        let mut kept = KeptUpdates::default();
        kept.keep(snapshot(5, 3)).unwrap();
        // Versions read fine, a key does not: invalid UTF-8 in its alias.
        let mut broken = delta(5, 6, 7);
        let at = broken.len() - 1;
        broken[at] = 0xff;
        assert_eq!(kept.keep(broken).unwrap(), held(UpdateKind::Delta, 6));
        let (state, applied, error) = kept.into_state();
        assert!(matches!(error, Some(UpdateError::Decode(_))), "{error:?}");
        assert_eq!(applied.len(), 1);
        assert_eq!(state.unwrap().version, 5);
    }
}
