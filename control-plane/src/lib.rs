//! Tollgate control plane: loads a LiteLLM-format config, keeps it in SQLite or PostgreSQL,
//! pushes snapshots to the Envoy filters over `tollgate.v1.FilterSync` ([`sync`]) and stores
//! the usage they send back. It serves the management API ([`manage`]) as gRPC
//! ([`grpc_api`]) and LiteLLM-compatible HTTP/JSON ([`http_api`]); [`server`] composes the
//! gRPC services on one port. The `tollgate` binary adds the CLI (`up`,
//! `serve`, `envoy-config`, `check-config`, `models`, `keys`, `teams`, `users`).

pub mod app;
pub mod channel;
pub mod client;
pub mod config;
pub mod cooldowns;
pub mod delta;
pub mod envoy;
pub mod google_auth;
pub mod grpc_api;
pub mod health_checks;
pub mod http_api;
pub mod limits;
pub mod manage;
pub mod pricing;
pub mod proto;
pub mod provider_settings;
pub mod quota;
pub mod retention;
pub mod secrets;
pub mod server;
pub mod spend_api;
pub mod spend_push;
pub mod store;
pub mod sync;
pub mod up;
