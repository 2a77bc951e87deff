//! The seam between the public HTTP API and whatever decides.
//!
//! The API handlers (`api.rs`) only ever talk to a [`Backend`]: submit a state-changing
//! [`Op`] (replicated through Raft, batched, forwarded to the leader when needed) or ask
//! a linearizable [`Query`]. The real implementation is the Raft node (`node.rs`); tests
//! of the HTTP layer use [`crate::local::LocalBackend`], a single in-memory state
//! machine, so every handler can be exercised without a cluster.

use futures::future::BoxFuture;
use quorate_core::{Op, Query, Reply};
use quorate_proto::{AddMemberRequest, ClusterResponse, MembersResponse};

/// Why a backend could not decide. Never "granted": when in doubt, this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No leader, no quorum, or the request timed out: 503 with Retry-After. The op may
    /// or may not have been applied (a retry with the same lease_id is safe).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A membership change was refused (unknown node, would lose quorum, ...): 400.
    #[error("membership change refused: {0}")]
    Membership(String),
}

/// What the HTTP API needs from a node.
pub trait Backend: Send + Sync + 'static {
    /// Replicate `op` through the log and return its outcome once applied.
    fn write(&self, op: Op) -> BoxFuture<'_, Result<Reply, NodeError>>;
    /// Answer `query` from state that reflects every write acknowledged before the call
    /// (linearizable read).
    fn read(&self, query: Query) -> BoxFuture<'_, Result<Reply, NodeError>>;
    /// This node's view of the cluster (local, not linearizable).
    fn cluster(&self) -> BoxFuture<'_, Result<ClusterResponse, NodeError>>;
    /// Add a node as learner and, unless `learner_only`, promote it to voter.
    fn add_member(
        &self,
        req: AddMemberRequest,
    ) -> BoxFuture<'_, Result<MembersResponse, NodeError>>;
    /// Remove a node from the voters and learners.
    fn remove_member(&self, id: u64) -> BoxFuture<'_, Result<MembersResponse, NodeError>>;
    /// True when this node knows a leader and has applied everything committed that it
    /// knows of (`/readyz`).
    fn ready(&self) -> BoxFuture<'_, bool>;
    /// Extra Prometheus text appended to `/metrics` (Raft gauges, sled size).
    fn metrics_text(&self) -> String;
}
