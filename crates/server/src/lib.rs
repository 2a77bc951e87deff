//! The quorate node: public HTTP API, Raft RPC between nodes, forwarding to the
//! leader, batching of concurrent writes into one log entry, configuration, metrics.
//!
//! Layers, bottom to top; each imports only those below it:
//!
//! | module | job |
//! |---|---|
//! | [`peer::protocol`] | the peer wire contract: paths, headers, codec, probe |
//! | [`waiters`] | waiting acquires held open on this node, woken by applied queue grants |
//! | [`backend`] | the seam the API calls: `Backend` and the node layer's `NodeError` |
//! | [`peer`] | the pooled peer client and openraft's network over it |
//! | [`raft`] | the Raft node, split by job (lifecycle, batcher, routing, leader, membership, status, tasks) |
//! | [`http`] | the public API (one file per resource) and the peer port, on one accept loop |
//! | [`grpc`] | Envoy's rate limit service (gRPC) on `grpc_addr`, over the same `Backend` |
//! | [`run`] | wires config → store → raft → http; graceful shutdown |
//!
//! Beside them, used from any layer: [`config`] (`cluster.toml` + `QUORATE_*`
//! environment, typed), [`security`] (tokens, roles, peer secret, TLS — read once),
//! [`telemetry`] (one Prometheus registry of typed families), [`ratelimit_headers`]
//! (the RateLimit header fields HTTP and gRPC share), [`error`] (why a node
//! could not start or run), and [`local`] (an in-memory `Backend` for HTTP tests).
//! `docs/architecture.md` draws the path of one request through them.

pub mod backend;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod local;
pub mod peer;
pub mod raft;
pub mod ratelimit_headers;
pub mod run;
pub mod security;
pub mod stats;
pub mod telemetry;
pub mod waiters;

pub use config::ClusterConfig;
pub use error::ServerError;
