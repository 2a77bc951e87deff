//! The node's background tasks.
//!
//! - *Bootstrap*: a brand-new cluster forms exactly once. Only the node with the lowest
//!   id, and only if its store is fresh, initializes Raft with every node of the file,
//!   after every peer has answered `/raft/probe` with "fresh". If any peer already has
//!   data, nobody initializes: this node is a replacement and must be added through the
//!   membership API (or it is an existing member the leader will catch up).
//! - *Housekeeping*: every `expire_interval_ms` the leader proposes `Op::Expire`, which
//!   advances cluster time and purges dead leases and idle rate buckets even when no
//!   client writes.
//! - *Configuration*: whenever this node becomes leader for a new term, it compares the
//!   replicated policies digest with `cluster.toml`'s and proposes `Op::Configure` if
//!   they differ.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InitializeError, RaftError};
use openraft::ServerState;
use quorate_core::{Op, Outcome};
use quorate_store::NodeInfo;
use tokio::time::sleep;

use super::Node;
use crate::backend::NodeError;
use crate::config::NodeConfig;
use crate::peer::protocol::{paths, ProbeResponse};

/// Housekeeping op proposed by the leader every `expire_interval_ms`.
const EXPIRE_OP: Op = Op::Expire {
    max_leases: 10_000,
    max_rate_keys: 10_000,
};

/// How often the bootstrapping node polls its peers.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

impl Node {
    /// Forms a fresh cluster (lowest-id node only; see the module docs).
    pub(super) async fn bootstrap(self: Arc<Self>) {
        if !self.every_peer_is_fresh().await {
            return;
        }
        let members: BTreeMap<u64, NodeInfo> = self
            .config
            .nodes
            .iter()
            .map(|n| {
                (
                    n.id,
                    NodeInfo {
                        api_addr: n.api_addr.clone(),
                        raft_addr: n.raft_addr.clone(),
                    },
                )
            })
            .collect();
        tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "bootstrap: initializing the cluster");
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!("bootstrap: cluster initialized"),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::info!(reason = %e, "bootstrap: already initialized")
            }
            Err(e) => tracing::error!(error = %e, "bootstrap: initialize failed"),
        }
    }

    /// Probe every peer of the file until each has answered "fresh, same cluster,
    /// expected id" (true), or one answers that it is not (false: do not bootstrap).
    async fn every_peer_is_fresh(&self) -> bool {
        let peers: Vec<_> = self
            .config
            .nodes
            .iter()
            .filter(|n| n.id != self.id)
            .cloned()
            .collect();
        let mut waiting: BTreeSet<u64> = peers.iter().map(|n| n.id).collect();
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let pending: Vec<&NodeConfig> =
                peers.iter().filter(|p| waiting.contains(&p.id)).collect();
            for peer in pending {
                match self.probe_peer(peer).await {
                    Err(e) => tracing::debug!(peer = peer.id, error = %e, "probe failed"),
                    Ok(p) if p.cluster_id != self.config.cluster_id || p.node_id != peer.id => {
                        tracing::error!(
                            peer = peer.id,
                            addr = %peer.raft_addr,
                            answered_id = p.node_id,
                            answered_cluster = %p.cluster_id,
                            "peer belongs to another cluster or has another id; not bootstrapping"
                        );
                        return false;
                    }
                    Ok(p) if !p.fresh => {
                        tracing::warn!(
                            peer = peer.id,
                            "peer already has cluster data; not bootstrapping (this node \
                             rejoins through the existing cluster, or must be added via \
                             POST /v1/members)"
                        );
                        return false;
                    }
                    Ok(_) => {
                        waiting.remove(&peer.id);
                    }
                }
            }
            if waiting.is_empty() {
                return true;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                tracing::info!(
                    waiting = ?waiting,
                    waited_s = started.elapsed().as_secs(),
                    "bootstrap: waiting for peers to answer"
                );
            }
            sleep(PROBE_INTERVAL).await;
        }
    }

    /// One `GET /raft/probe` to `peer`.
    async fn probe_peer(&self, peer: &NodeConfig) -> Result<ProbeResponse, String> {
        let body = self
            .peers
            .get(
                peer.id,
                &peer.raft_addr,
                paths::PROBE,
                Duration::from_secs(1),
            )
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    /// Every `expire_interval_ms`: refresh cached Raft numbers and, on the leader,
    /// propose housekeeping.
    pub(super) async fn housekeeping_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.server.expire_interval_ms.get());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = self.committed_index().await;
            if !self.is_leader() {
                continue;
            }
            let deadline = Instant::now() + self.request_timeout();
            match self.leader_write(EXPIRE_OP, deadline).await {
                Ok(Ok(Outcome::Expired { leases, rate_keys })) => {
                    if leases > 0 || rate_keys > 0 {
                        tracing::debug!(leases, rate_keys, "expired");
                    }
                    self.metrics.expired_leases.inc_by(u64::from(leases));
                }
                Ok(other) => tracing::warn!(reply = ?other, "unexpected reply to expire"),
                Err(e) => tracing::debug!(error = ?e, "expire not applied"),
            }
        }
    }

    /// On every new leadership term: make the replicated policies match the file.
    pub(super) async fn leader_loop(self: Arc<Self>) {
        let mut rx = self.raft.metrics();
        let mut done_term = None;
        loop {
            let term = {
                let m = rx.borrow_and_update();
                (m.state == ServerState::Leader && m.current_leader == Some(self.id))
                    .then_some(m.current_term)
            };
            if let Some(term) = term.filter(|t| done_term != Some(*t)) {
                match self.push_config().await {
                    Ok(()) => done_term = Some(term),
                    Err(e) => {
                        tracing::warn!(term, error = %e, "configuration push failed; retrying");
                        sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    pub(super) async fn push_config(&self) -> Result<(), NodeError> {
        let want = self.config.source_digest();
        let deadline = Instant::now() + self.request_timeout();
        match self.read_barrier(deadline).await {
            Ok(()) => {}
            Err(NodeError::NotLeader { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        let have = self.sm.read(|s| s.policies_digest());
        if have == Some(want) {
            tracing::debug!(
                digest = want,
                "replicated configuration matches cluster.toml"
            );
            return Ok(());
        }
        tracing::info!(have = ?have, want, "proposing configuration from cluster.toml");
        let op = Op::Configure(Box::new(self.config.core_configuration()));
        match self.leader_write(op, deadline).await {
            Ok(Ok(Outcome::Configured { changed })) => {
                tracing::info!(changed, digest = want, "configuration applied");
                Ok(())
            }
            Ok(Ok(other)) => {
                tracing::warn!(reply = ?other, "unexpected reply to configure");
                Ok(())
            }
            Ok(Err(e)) => {
                // Validated at startup with the same rules, so this is a bug; retrying
                // the same op cannot help.
                tracing::error!(error = %e, "state machine rejected cluster.toml's configuration");
                Ok(())
            }
            Err(NodeError::NotLeader { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
