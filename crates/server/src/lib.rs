//! The quorate node: public HTTP API, Raft RPC between nodes, forwarding to the leader,
//! batching of concurrent writes into one log entry, configuration and metrics.
//!
//! Layers, from the outside in:
//! - `api`: axum handlers for the public JSON API; they speak [`backend::Backend`].
//! - `serve`: runs a node: store, Raft, both listeners, graceful shutdown.
//! - `node`: the Raft node implementing `Backend` (forwarding, reads, bootstrap,
//!   housekeeping); `batcher`: the leader's write pipeline.
//! - `network` / `raft_rpc`: node-to-node client and server (bincode over HTTP).
//! - `config`: `cluster.toml` plus `QUORATE_*` environment overrides.
//! - `metrics`: Prometheus text registry; `error`: the library's [`ServerError`].

pub mod api;
pub mod auth;
pub mod backend;
pub mod batcher;
pub mod config;
pub mod error;
pub mod local;
pub mod metrics;
pub mod network;
pub mod node;
pub mod raft_rpc;
pub mod serve;
pub mod tls;

pub use config::ClusterConfig;
pub use error::ServerError;
