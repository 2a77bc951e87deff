//! Leader-or-forward: every request a node receives is decided by the leader.
//!
//! [`Node::route`] runs the request locally when this node leads, else forwards it to
//! the leader's `/forward/*` endpoint (see `peer::protocol`); writes travel through
//! the [`Forwarder`](super::forwarder), which carries many of them per peer request
//! (`/forward/writes`), each with its own answer. A retry (to a new leader)
//! is only attempted when the request certainly had no effect: the receiver said "not
//! leader" (openraft rejected or truncated the entry) or no connection could be made.
//! Reads are retried on any failure, since they change nothing. Running out of the
//! caller's deadline is [`NodeError::Unavailable`]: a node cut off from the majority
//! can never commit, so it times out and never grants.
//!
//! The deadline comes with the call (set once where the request entered the process,
//! see [`Backend`]); nothing here starts a new one. The retry loop checks it between
//! attempts, and each attempt's one wait — the batcher's answer in `leader_write`,
//! the forwarded answer in the `Forwarder`, a read barrier — ends at it.
//!
//! This file also holds the [`Backend`] implementation: the entry points the HTTP layer
//! calls, each a thin wrapper that routes (reads and membership changes are encoded
//! once for forwarding, writes when their batch is sent).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use quorate_core::{Op, Query, Reply};
use quorate_proto::{AddMemberRequest, ClusterResponse, MembersResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::sleep;

use super::forwarder::delivery_error;
use super::Node;
use crate::backend::{Backend, NodeError};
use crate::peer::protocol::{self, paths};

impl Node {
    /// Run `local` if this node is the leader, else `remote(leader)` (forwarding to
    /// the leader); retry on a new leader while the request certainly had no effect
    /// (`NotLeader`, `Unreachable`) or, for `idempotent` requests, on any failure;
    /// give up at `deadline`.
    pub(super) async fn route<T, L, Fut, R, RFut>(
        &self,
        kind: &'static str,
        deadline: Instant,
        idempotent: bool,
        local: L,
        remote: R,
    ) -> Result<T, NodeError>
    where
        L: Fn() -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
        R: Fn(u64) -> RFut,
        RFut: Future<Output = Result<T, NodeError>>,
    {
        let mut pause = Duration::from_millis(10);
        let mut last = "no leader known".to_string();
        loop {
            if Instant::now() >= deadline {
                return Err(NodeError::Unavailable(format!(
                    "{kind} not decided within the request timeout: {last}"
                )));
            }
            let Some(leader) = self.wait_leader(deadline).await else {
                continue;
            };
            let res = if leader == self.id {
                local().await
            } else {
                remote(leader).await
            };
            match res {
                Ok(v) => return Ok(v),
                Err(NodeError::NotLeader { leader: hint }) => {
                    last = match hint {
                        Some(h) => format!("node {leader} is not the leader (it names node {h})"),
                        None => format!("node {leader} is not the leader"),
                    };
                }
                Err(NodeError::Unreachable(m)) => last = m,
                Err(NodeError::Unavailable(m)) if idempotent => last = m,
                Err(
                    e @ (NodeError::Unavailable(_)
                    | NodeError::Refused(_)
                    | NodeError::Forbidden(_)),
                ) => return Err(e),
            }
            tracing::debug!(kind, leader, reason = %last, "retrying");
            let left = deadline.saturating_duration_since(Instant::now());
            sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Send a request to the leader's forwarding endpoint.
    #[tracing::instrument(level = "debug", skip(self, body, deadline), fields(node = self.id))]
    pub(super) async fn forward<T: DeserializeOwned>(
        &self,
        leader: u64,
        kind: &'static str,
        path: &'static str,
        body: Vec<u8>,
        deadline: Instant,
    ) -> Result<T, NodeError> {
        let Some(addr) = self.raft_addr_of(leader) else {
            return Err(NodeError::Unreachable(format!(
                "no address known for leader {leader}"
            )));
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result = match self.peers.post(leader, &addr, path, body, remaining).await {
            Ok(bytes) => protocol::decode::<Result<T, NodeError>>(&bytes).unwrap_or_else(|e| {
                Err(NodeError::Unavailable(format!(
                    "undecodable answer from leader {leader}: {e}"
                )))
            }),
            Err(e) => Err(delivery_error(leader, &addr, e)),
        };
        self.metrics.forwarded(kind, outcome_label(&result));
        result
    }

    /// Forward a write to the leader through the [`Forwarder`](super::forwarder),
    /// which carries it with others in one peer request.
    async fn forward_write(
        &self,
        leader: u64,
        op: Op,
        deadline: Instant,
    ) -> Result<Reply, NodeError> {
        let Some(addr) = self.raft_addr_of(leader) else {
            return Err(NodeError::Unreachable(format!(
                "no address known for leader {leader}"
            )));
        };
        let _busy = self.load.enter();
        let result = self.forwarder.forward(leader, addr, op, deadline).await;
        self.metrics.forwarded("write", outcome_label(&result));
        result
    }

    #[tracing::instrument(name = "write", skip_all, fields(node = self.id, op = op.kind()))]
    pub(super) async fn write_op(&self, op: Op, deadline: Instant) -> Result<Reply, NodeError> {
        #[cfg(feature = "planted-bugs")]
        if let Some(reply) = self.planted_follower_local_grant(&op) {
            return Ok(reply);
        }
        self.route(
            "write",
            deadline,
            false,
            || self.leader_write(op.clone(), deadline),
            |leader| self.forward_write(leader, op.clone(), deadline),
        )
        .await
    }

    #[tracing::instrument(name = "read", skip_all, fields(node = self.id, query = query_kind(&q)))]
    pub(super) async fn read_query(&self, q: Query, deadline: Instant) -> Result<Reply, NodeError> {
        let _busy = self.load.enter();
        let body = encoded(&q, "query")?;
        let path = paths::FORWARD_READ;
        self.route(
            "read",
            deadline,
            true,
            || self.leader_read(q.clone(), deadline),
            |leader| self.forward(leader, "read", path, body.clone(), deadline),
        )
        .await
    }

    #[tracing::instrument(name = "add_member", skip_all, fields(node = self.id, id = req.id))]
    pub(super) async fn add_member_op(
        &self,
        req: AddMemberRequest,
        deadline: Instant,
    ) -> Result<MembersResponse, NodeError> {
        let path = paths::FORWARD_ADD_MEMBER;
        self.route_membership("add_member", path, &req, deadline, |deadline| {
            self.leader_add_member(req.clone(), deadline)
        })
        .await
    }

    #[tracing::instrument(name = "remove_member", skip_all, fields(node = self.id, id))]
    pub(super) async fn remove_member_op(
        &self,
        id: u64,
        deadline: Instant,
    ) -> Result<MembersResponse, NodeError> {
        let path = paths::FORWARD_REMOVE_MEMBER;
        self.route_membership("remove_member", path, &id, deadline, |deadline| {
            self.leader_remove_member(id, deadline)
        })
        .await
    }

    /// Route a membership change: never retried after a failure that may have had
    /// an effect. Its caller gives it a longer deadline than a decision (a learner
    /// catches up first).
    async fn route_membership<R, L, Fut>(
        &self,
        kind: &'static str,
        path: &'static str,
        req: &R,
        deadline: Instant,
        local: L,
    ) -> Result<MembersResponse, NodeError>
    where
        R: Serialize,
        L: Fn(Instant) -> Fut,
        Fut: Future<Output = Result<MembersResponse, NodeError>>,
    {
        let body = encoded(req, "request")?;
        self.route(
            kind,
            deadline,
            false,
            || local(deadline),
            |leader| self.forward(leader, kind, path, body.clone(), deadline),
        )
        .await
    }
}

/// `value` encoded once for forwarding, whoever ends up deciding it; `noun` names it
/// in the (never expected) error.
fn encoded<T: Serialize>(value: &T, noun: &str) -> Result<Vec<u8>, NodeError> {
    protocol::encode(value)
        .map_err(|e| NodeError::Unavailable(format!("cannot encode {noun}: {e}")))
}

/// The `outcome` label of `quorate_forwarded`.
fn outcome_label<T>(result: &Result<T, NodeError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(NodeError::NotLeader { .. }) => "not_leader",
        Err(NodeError::Unreachable(_)) => "unreachable",
        Err(NodeError::Unavailable(_)) => "unavailable",
        Err(NodeError::Refused(_)) => "refused",
        Err(NodeError::Forbidden(_)) => "forbidden",
    }
}

fn query_kind(q: &Query) -> &'static str {
    match q {
        Query::Usage { .. } => "usage",
        Query::Limit { .. } => "limit",
        Query::Limits { .. } => "limits",
        Query::Policies => "policies",
        Query::Lease { .. } => "lease",
        Query::PolicyModes => "policy_modes",
        Query::Counter { .. } => "counter",
        Query::Allowlist => "allowlist",
        Query::Audit { .. } => "audit",
        Query::Queue { .. } => "queue",
    }
}

impl Backend for Node {
    fn write(&self, op: Op, deadline: Instant) -> BoxFuture<'_, Result<Reply, NodeError>> {
        Box::pin(self.write_op(op, deadline))
    }

    fn read(&self, query: Query, deadline: Instant) -> BoxFuture<'_, Result<Reply, NodeError>> {
        Box::pin(self.read_query(query, deadline))
    }

    fn cluster(&self) -> BoxFuture<'_, Result<ClusterResponse, NodeError>> {
        Box::pin(self.cluster_view())
    }

    fn add_member(
        &self,
        req: AddMemberRequest,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<MembersResponse, NodeError>> {
        Box::pin(self.add_member_op(req, deadline))
    }

    fn remove_member(
        &self,
        id: u64,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<MembersResponse, NodeError>> {
        Box::pin(self.remove_member_op(id, deadline))
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.is_ready())
    }

    fn leader_api(&self) -> Option<Arc<str>> {
        Node::leader_api(self)
    }

    fn refresh_metrics(&self) {
        self.sample_metrics()
    }

    fn waiters(&self) -> &Arc<crate::waiters::Waiters> {
        &self.waiters
    }
}
