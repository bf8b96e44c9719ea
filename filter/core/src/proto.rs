//! Generated prost types of `api/proto/tollgate/v1/sync.proto`.
#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/tollgate.v1.rs"));
