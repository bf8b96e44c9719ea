//! Tollgate's proxy-wasm filter: thin glue that moves bytes between Envoy and
//! `tollgate-core`, where every decision is made.
//!
//! Each Envoy worker runs its own VM. Each VM's root context holds one gRPC stream to the
//! control plane, keeps the newest snapshot as an immutable [`tollgate_core::State`] shared
//! with that VM's HTTP contexts, and sends usage records back in batches.
// A panic kills a worker's VM (Wasm) or Envoy itself (native): no index or slice that can be
// out of bounds outside tests; `get` and friends make each bound explicit.
#![deny(clippy::indexing_slicing, clippy::string_slice)]
#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::string_slice))]

mod header_map;
mod host;
mod http;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::TollgateRoot::new(context_id)));
}}
