//! Tollgate's data-path logic: everything the Envoy filter decides, as plain Rust.
//!
//! This crate never depends on proxy-wasm or Envoy. Two glues move bytes between Envoy and
//! the functions here: the proxy-wasm filter (`tollgate-filter`) and the native dynamic
//! module (`tollgate-native`), both through [`exchange::Exchange`]; everything here is
//! tested natively.
// A panic kills a worker's VM (Wasm) or Envoy itself (native): no index or slice that can be
// out of bounds outside tests; `get` and friends make each bound explicit.
#![deny(clippy::indexing_slicing, clippy::string_slice)]
#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::string_slice))]

pub mod auth;
pub mod aws;
pub mod budget;
pub mod channel;
pub mod completions;
pub mod defaults;
pub mod error;
pub mod exchange;
pub mod gateway;
pub mod metrics;
pub mod ndjson;
pub mod openai_types;
pub mod pricing;
pub mod proto;
pub mod providers;
pub mod ratelimit;
pub mod redact;
pub mod request;
pub mod routing;
pub mod snapshot;
pub mod spend;
pub mod sse;
pub mod usage;

pub use error::GatewayError;
pub use gateway::{ControlPlaneTls, Endpoint, PluginConfig, RequestPlan};
pub use providers::ResponseHandler;
pub use snapshot::State;
pub use usage::Usage;
