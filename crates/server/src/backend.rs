//! The seam between the HTTP layer and whatever decides: [`Backend`] and its one error.
//!
//! The API handlers (`http::api`) only ever talk to a [`Backend`]: submit a
//! state-changing [`Op`] (replicated through Raft, batched, forwarded to the leader
//! when needed) or ask a linearizable [`Query`]. The real implementation is the Raft
//! node (`raft::Node`); tests of the HTTP layer use [`crate::local::LocalBackend`], a
//! single in-memory state machine, so every handler can be exercised without a
//! cluster.
//!
//! [`NodeError`] is the node layer's only error: the batcher, the leader-side
//! handlers, forwarding and the backend all speak it, and it crosses the wire as the
//! answer to a forwarded request (bincode, see `peer::protocol`). Its variants say
//! what a caller may do next, which is all that matters for safety: retry only when
//! nothing can have been applied.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use quorate_core::{Op, Query, Reply};
use quorate_proto::{AddMemberRequest, ClusterResponse, MembersResponse};
use serde::{Deserialize, Serialize};

use crate::waiters::Waiters;

/// Why a node could not decide. Never "granted": when in doubt, one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NodeError {
    /// The receiver is not the leader (it names the leader it knows). Nothing was
    /// proposed: the caller may retry with the new leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// The leader could not be reached at all; nothing was delivered. Retry is safe.
    #[error("leader unreachable: {0}")]
    Unreachable(String),
    /// No decision within the deadline, or the cluster is unavailable: 503. A write
    /// may or may not have been applied; only a retry with the same lease id is safe.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A membership change was refused (unknown node, would lose quorum, ...): 400.
    #[error("membership change refused: {0}")]
    Refused(String),
    /// A forwarded op was refused before it was proposed: it carries no caller, or its
    /// caller's role may not do it (a follower must never vouch for more than it
    /// checked): 403. Nothing was applied.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

/// What the HTTP API needs from a node.
///
/// Every call that waits for the cluster takes the caller's `deadline`, computed once
/// where the request entered the process (the API handler, the gRPC service, the
/// peer endpoint from the forwarding node's header). The backend owns it from there:
/// it routes, forwards and waits until then and answers [`NodeError::Unavailable`]
/// when it passes; no layer above re-arms a timeout of its own, and none below
/// starts a new one.
pub trait Backend: Send + Sync + 'static {
    /// Replicate `op` through the log and return its outcome once applied.
    fn write(&self, op: Op, deadline: Instant) -> BoxFuture<'_, Result<Reply, NodeError>>;
    /// Answer `query` from state that reflects every write acknowledged before the call
    /// (linearizable read).
    fn read(&self, query: Query, deadline: Instant) -> BoxFuture<'_, Result<Reply, NodeError>>;
    /// This node's view of the cluster (local, not linearizable).
    fn cluster(&self) -> BoxFuture<'_, Result<ClusterResponse, NodeError>>;
    /// Add a node as learner and, unless `learner_only`, promote it to voter.
    fn add_member(
        &self,
        req: AddMemberRequest,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<MembersResponse, NodeError>>;
    /// Remove a node from the voters and learners.
    fn remove_member(
        &self,
        id: u64,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<MembersResponse, NodeError>>;
    /// True when this node knows a leader and has applied everything committed that it
    /// knows of (`/readyz`).
    fn ready(&self) -> BoxFuture<'_, bool>;
    /// The current leader's API base URL as clients reach it, when a leader is known:
    /// the `x-quorate-leader` header of every API response. Local and cheap (it is
    /// called for every response).
    fn leader_api(&self) -> Option<Arc<str>>;
    /// The waiting acquires this node holds open, woken by the grants of the
    /// entries it applies (see `waiters.rs`).
    fn waiters(&self) -> &Arc<Waiters>;
    /// Bring sampled gauges (Raft indices, sled size) up to date before `/metrics`
    /// is rendered from the shared registry.
    fn refresh_metrics(&self) {}
}
