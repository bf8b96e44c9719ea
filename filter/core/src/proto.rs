//! Generated prost types of `api/proto/tollgate/v1/sync.proto`.
#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/tollgate.v1.rs"));

/// The head of a [`ControlMessage`]: the snapshot's version and nothing else. Decoding it
/// skips the keys and deployments without allocating, so a VM can acknowledge a snapshot it
/// keeps as bytes without paying for its decoded form.
#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct ControlMessageHead {
    /// `ControlMessage.kind.snapshot` (the oneof's only member, tag 1).
    #[prost(message, optional, tag = "1")]
    pub snapshot: ::core::option::Option<SnapshotHead>,
}

/// The version of a [`Snapshot`].
#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct SnapshotHead {
    /// `Snapshot.version`.
    #[prost(uint64, tag = "1")]
    pub version: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use prost::Message;

    use super::*;

    #[test]
    fn the_head_reads_the_version_of_a_full_message() {
        let full = ControlMessage {
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
        let head = ControlMessageHead::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(head.snapshot.map(|snapshot| snapshot.version), Some(42));
        let empty =
            ControlMessageHead::decode(ControlMessage::default().encode_to_vec().as_slice());
        assert_eq!(empty.unwrap().snapshot, None);
    }
}
