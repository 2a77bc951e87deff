//! The quorate node: public HTTP API, Raft RPC between nodes, forwarding to the leader,
//! batching of concurrent writes into one log entry, configuration and metrics.
//!
//! Layers, from the outside in:
//! - `api`: axum handlers for the public JSON API; they speak [`backend::Backend`].
//! - `node`: the Raft node implementing `Backend` (batcher, forwarding, reads).
//! - `network` / `raft_rpc`: Raft RPC client and server (bincode over HTTP).
//! - `config`: `cluster.toml` plus `QUORATE_*` environment overrides.
//! - `metrics`: Prometheus text registry.

pub mod api;
pub mod backend;
pub mod local;
pub mod metrics;
