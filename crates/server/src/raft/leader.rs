//! What only the leader does: propose writes and serve linearizable reads.
//!
//! **Writes** go into the batcher, and the caller waits for its own reply from the
//! applied entry. **Reads** are linearizable: the leader confirms its leadership with a
//! quorum and waits until its state machine has applied everything committed before
//! (`Raft::ensure_linearizable`), then queries the state. Right after a restart a read
//! also waits until the log the node had on disk is applied: a leader restored into its
//! old term would otherwise read at a stale committed index (a bug the chaos suite
//! found; see `Node::startup_log_index`).
//!
//! These run for local requests and for requests forwarded by followers alike; every
//! entry point answers [`NodeError::NotLeader`] on a follower so the caller can retry.

use std::time::Instant;

use openraft::error::{CheckIsLeaderError, RaftError};
use quorate_core::{Op, Query, Reply};
use tokio::time::timeout_at;

use super::{tokio_deadline, Node};
use crate::backend::NodeError;

impl Node {
    /// Replicate `op` through this node's batcher, if it is the leader.
    pub async fn leader_write(&self, op: Op, deadline: Instant) -> Result<Reply, NodeError> {
        // Counted while it waits: how the log decides where to sync (`Node::load`).
        let _busy = self.load.enter();
        if !self.is_leader() {
            return Err(NodeError::NotLeader {
                leader: self.current_leader(),
            });
        }
        match timeout_at(tokio_deadline(deadline), self.batcher.submit(op)).await {
            Err(_) => Err(NodeError::Unavailable(
                "the write was not committed within the request timeout (no quorum?)".into(),
            )),
            Ok(result) => result,
        }
    }

    /// Linearizable read barrier: confirm leadership with a quorum and wait until
    /// everything committed before now is applied — including, right after a restart,
    /// everything this node had in its log when it started (see `startup_log_index`).
    pub(super) async fn read_barrier(&self, deadline: Instant) -> Result<(), NodeError> {
        if !self.is_leader() {
            return Err(NodeError::NotLeader {
                leader: self.current_leader(),
            });
        }
        match timeout_at(tokio_deadline(deadline), self.raft.ensure_linearizable()).await {
            Err(_) => Err(NodeError::Unavailable(
                "leadership not confirmed by a quorum within the request timeout".into(),
            )),
            Ok(Ok(_)) => self.wait_startup_log_applied(deadline).await,
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(NodeError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(NodeError::Unavailable(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(NodeError::Unavailable(format!("raft: {e}"))),
        }
    }

    /// Wait until the state machine has applied `startup_log_index`. A leader that kept
    /// its term across a restart may have acknowledged writes up to there; they are
    /// committed (or will be, by this leader) but its persisted committed index, and
    /// so openraft's read index, may not cover them yet. A no-op once reached.
    pub(super) async fn wait_startup_log_applied(
        &self,
        deadline: Instant,
    ) -> Result<(), NodeError> {
        let Some(want) = self.startup_log_index else {
            return Ok(());
        };
        let mut rx = self.raft.metrics();
        loop {
            rx.borrow_and_update();
            if self.sm.last_applied().is_some_and(|l| l.index >= want) {
                return Ok(());
            }
            match timeout_at(tokio_deadline(deadline), rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(NodeError::Unavailable(format!(
                        "the log this node had at startup (up to {want}) is not applied yet"
                    )))
                }
            }
        }
    }

    /// Answer `q` linearizably, if this node is the leader.
    pub async fn leader_read(&self, q: Query, deadline: Instant) -> Result<Reply, NodeError> {
        self.read_barrier(deadline).await?;
        // Cluster time as the next entry would be stamped (never a wall clock), so a
        // read sees expiry exactly as the next write will.
        let now = self.batcher.cluster_time().unwrap_or(0);
        Ok(self.sm.read(|s| s.query(&q, now.max(s.now_ms()))))
    }
}
