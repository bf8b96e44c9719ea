//! Generated types, client and server of `api/proto/tollgate/v1/sync.proto`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/tollgate.v1.rs"));

/// Encoded `FileDescriptorSet` of the protocol, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tollgate_descriptor.bin"));
