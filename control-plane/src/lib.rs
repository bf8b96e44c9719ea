//! Tollgate control plane: loads a LiteLLM-format config, keeps it in SQLite or PostgreSQL,
//! pushes snapshots to the Envoy filters over `tollgate.v1.FilterSync` and stores the usage
//! they send back. The `tollgate` binary adds the CLI (`up`, `serve`, `envoy-config`,
//! `check-config`).

pub mod app;
pub mod config;
pub mod envoy;
pub mod proto;
pub mod store;
pub mod sync;
pub mod up;
