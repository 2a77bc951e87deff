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
//! - *Queue wakeup*: while anyone waits for a slot, the leader also proposes
//!   `Op::Expire` when a lease on a queued key expires or a waiter's deadline passes
//!   (`State::queue_wakeup_ms`), so a slot freed by a TTL goes to the next waiter
//!   then, not at the next housekeeping tick.
//! - *Seen nodes*: as soon as the leader sees a node acknowledge entries, it records
//!   it in the replicated state (`Op::MarkSeen`), so a node that later starts with an
//!   empty data directory learns it lost its data (`rejoin.rs`).
//! - *Configuration*: whenever this node becomes leader for a new term, it compares the
//!   replicated policies digest with `cluster.toml`'s and proposes `Op::Configure` if
//!   they differ.
//! - *Clock watch*: every few seconds, probe each peer and estimate its wall clock
//!   offset from the probe's answer and round trip (NTP's midpoint estimate). No
//!   decision uses wall clocks (see `clock.rs`), but a host whose clock is off by more
//!   than `server.clock_offset_warn_ms` is misconfigured, and operators hear about it:
//!   a gauge per peer, `/v1/cluster`, and a warning at the first measurement and then
//!   once a minute while it lasts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InitializeError, RaftError};
use openraft::ServerState;
use quorate_core::{Op, Outcome};
use quorate_proto::ClockOffset;
use quorate_store::NodeInfo;
use tokio::time::sleep;

use super::batcher::wall_clock_ms;
use super::Node;
use crate::backend::NodeError;
use crate::config::NodeConfig;
use crate::peer::protocol::{paths, ProbeResponse};

/// Housekeeping op proposed by the leader every `expire_interval_ms`.
const EXPIRE_OP: Op = Op::Expire {
    max_leases: 10_000,
    max_rate_keys: 10_000,
};

/// How often the queue wakeup looks for a waiter to serve by time alone.
const QUEUE_POLL: Duration = Duration::from_millis(50);

/// Shortest sleep of the queue wakeup: a wakeup that is already due (its entry is
/// on its way) must not become a busy loop.
const QUEUE_MIN_WAKE: Duration = Duration::from_millis(10);

/// How often the bootstrapping node polls its peers.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// How often every node measures its peers' clocks.
const CLOCK_WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// How often a persisting clock offset is warned about again.
const CLOCK_WARN_EVERY: Duration = Duration::from_secs(60);

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
        let peers = self.file_peers();
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

    /// The other nodes of `cluster.toml`.
    pub(super) fn file_peers(&self) -> Vec<NodeConfig> {
        let others = self.config.nodes.iter().filter(|n| n.id != self.id);
        others.cloned().collect()
    }

    /// One `GET /raft/probe` to `peer`.
    pub(super) async fn probe_peer(&self, peer: &NodeConfig) -> Result<ProbeResponse, String> {
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

    /// The queue wakeup (see the module doc). The delay is measured from the last
    /// applied cluster time, which is at most the cluster's time now, so it wakes at
    /// or after the moment, never before; waits longer than the housekeeping
    /// interval are left to housekeeping. Idle (one read lock) every
    /// [`QUEUE_POLL`] while nobody waits.
    pub(super) async fn queue_wakeup_loop(self: Arc<Self>) {
        let interval = self.config.server.expire_interval_ms.get();
        loop {
            let due = if self.is_leader() {
                self.sm.read(|s| {
                    s.queue_wakeup_ms()
                        .map(|w| Duration::from_millis(w.saturating_sub(s.now_ms())))
                })
            } else {
                None
            };
            match due {
                Some(d) if d < interval => {
                    sleep(d.max(QUEUE_MIN_WAKE)).await;
                    if self.is_leader() {
                        let deadline = Instant::now() + self.request_timeout();
                        if let Err(e) = self.leader_write(EXPIRE_OP, deadline).await {
                            tracing::debug!(error = ?e, "queue wakeup not applied");
                        }
                    }
                }
                _ => sleep(QUEUE_POLL).await,
            }
        }
    }

    /// On every new leadership term: make the replicated policies match the file.
    pub(super) async fn leader_loop(self: Arc<Self>) {
        // Server metrics: they change with the role and term only (not per entry).
        let mut rx = self.raft.server_metrics();
        let mut done_term = None;
        loop {
            let term = {
                let m = rx.borrow_and_update();
                (m.state == ServerState::Leader && m.current_leader == Some(self.id))
                    .then_some(m.vote.leader_id().get_term())
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
            self.push_descriptors(deadline).await?;
            return self.push_admin_limits(deadline).await;
        }
        tracing::info!(have = ?have, want, "proposing configuration from cluster.toml");
        let op = self.config.configure_op();
        match self.leader_write(op, deadline).await {
            Ok(Ok(Outcome::Configured { changed })) => {
                tracing::info!(changed, digest = want, "configuration applied");
                // After the policies: descriptor entries may name them.
                self.push_descriptors(deadline).await?;
                self.push_admin_limits(deadline).await
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

    /// Make the replicated Envoy descriptor table match `[envoy]`. A cluster whose
    /// file has none and whose state has none proposes nothing (so clusters that do
    /// not use Envoy never write the op older versions cannot decode).
    async fn push_descriptors(&self, deadline: Instant) -> Result<(), NodeError> {
        let (digest, op) = match self.config.descriptors_op() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "[envoy] cannot be converted; not proposed");
                return Ok(());
            }
        };
        let have = self.sm.read(|s| s.descriptors_digest());
        if have == Some(digest) || (have.is_none() && self.config.envoy.is_empty()) {
            return Ok(());
        }
        tracing::info!(have = ?have, want = digest, "proposing [envoy] descriptors from cluster.toml");
        match self.leader_write(op, deadline).await {
            Ok(Ok(Outcome::Configured { changed })) => {
                tracing::info!(changed, digest, "descriptor table applied");
                Ok(())
            }
            Ok(other) => {
                // Validated at startup with the same rules: a bug, not retryable.
                tracing::error!(reply = ?other, "state machine rejected the [envoy] table");
                Ok(())
            }
            Err(NodeError::NotLeader { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Make the replicated admin bounds (`max_allowlist`, `audit_entries`) match
    /// `[limits]`. Proposed only when they differ from the state's, so a cluster
    /// whose file keeps the defaults never writes the op older versions cannot decode.
    async fn push_admin_limits(&self, deadline: Instant) -> Result<(), NodeError> {
        let want = self.config.admin_limits();
        let have = self.sm.read(|s| s.admin_limits());
        if have == want {
            return Ok(());
        }
        tracing::info!(
            ?have,
            ?want,
            "proposing [limits] admin bounds from cluster.toml"
        );
        match self.leader_write(Op::SetAdminLimits(want), deadline).await {
            Ok(Ok(Outcome::AdminLimitsSet(l))) => {
                tracing::info!(?l, "admin bounds applied");
                Ok(())
            }
            Ok(other) => {
                // Validated at startup with the same rules: a bug, not retryable.
                tracing::error!(reply = ?other, "state machine rejected the admin bounds");
                Ok(())
            }
            Err(NodeError::NotLeader { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Measure every peer's wall clock offset, forever (see the module docs).
    pub(super) async fn clock_watch_loop(self: Arc<Self>) {
        let warn_ms =
            i64::try_from(self.config.server.clock_offset_warn_ms.ms()).unwrap_or(i64::MAX);
        let mut warned: BTreeMap<u64, Instant> = BTreeMap::new();
        let mut tick = tokio::time::interval(CLOCK_WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for peer in self.peer_nodes() {
                let Some(offset) = self.measure_offset(&peer).await else {
                    continue;
                };
                self.metrics.clock_offset(peer.id, offset.offset_ms);
                let off = offset.offset_ms.abs() > warn_ms;
                let due = warned
                    .get(&peer.id)
                    .is_none_or(|at| at.elapsed() >= CLOCK_WARN_EVERY);
                if off && due {
                    warned.insert(peer.id, Instant::now());
                    tracing::warn!(
                        peer = peer.id,
                        offset_ms = offset.offset_ms,
                        rtt_ms = offset.rtt_ms,
                        threshold_ms = warn_ms,
                        "peer's wall clock differs from this node's; limits are not \
                         affected (cluster time is monotonic), but fix the host's time \
                         sync (NTP)"
                    );
                } else if !off {
                    warned.remove(&peer.id);
                }
                self.lock_offsets().insert(peer.id, offset);
            }
        }
    }

    /// Every other node: the replicated membership, else the file.
    fn peer_nodes(&self) -> Vec<NodeConfig> {
        let from_membership: Vec<NodeConfig> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| NodeConfig {
                id: *id,
                api_addr: n.api_addr.clone(),
                raft_addr: n.raft_addr.clone(),
                grpc_addr: None,
                advertise_api: None,
            })
            .collect();
        let nodes = if from_membership.is_empty() {
            self.config.nodes.clone()
        } else {
            from_membership
        };
        nodes.into_iter().filter(|n| n.id != self.id).collect()
    }

    /// One probe round trip to `peer`: its clock minus ours at the midpoint.
    async fn measure_offset(&self, peer: &NodeConfig) -> Option<ClockOffset> {
        let before = self.applied_and_digest();
        let sent_wall = wall_clock_ms();
        let sent = Instant::now();
        let probe = self.probe_peer(peer).await;
        let rtt = sent.elapsed();
        self.record_probe(peer.id, probe.as_ref().ok(), before);
        let probe = probe.ok()?;
        if probe.wall_clock_ms == 0 {
            return None; // an older node that does not report its clock
        }
        let rtt_ms = u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX);
        let midpoint = i128::from(sent_wall) + i128::from(rtt_ms / 2);
        let offset = i128::from(probe.wall_clock_ms) - midpoint;
        Some(ClockOffset {
            node_id: peer.id,
            offset_ms: i64::try_from(offset).unwrap_or(i64::MAX),
            rtt_ms,
        })
    }

    pub(super) fn lock_offsets(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClockOffset>> {
        // Only inserts happen under this lock; a poisoned map is still consistent.
        self.clock_offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last measured offsets, by peer id.
    pub(super) fn clock_offsets(&self) -> Vec<ClockOffset> {
        self.lock_offsets().values().cloned().collect()
    }

    /// On the leader, as soon as openraft reports a follower's first acknowledgement:
    /// record every node that holds data (itself, and the followers with a matched
    /// log id) and is not recorded yet, so a node that later starts empty knows it
    /// lost its data (`rejoin.rs`). Event-driven rather than on the housekeeping tick,
    /// to keep the window in which a wiped node goes unnoticed as short as a commit.
    pub(super) async fn seen_loop(self: Arc<Self>) {
        // The data metrics carry the replication progress and are only sent when
        // something in them changed (`raft.metrics()` is sent after every batch of
        // Raft work).
        let mut rx = self.raft.data_metrics();
        loop {
            if self.is_leader() {
                self.mark_seen(Instant::now() + self.request_timeout())
                    .await;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    async fn mark_seen(&self, deadline: Instant) {
        let matched: BTreeSet<u64> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let followers = m.replication.iter().flatten();
            followers
                .filter(|(_, l)| l.is_some())
                .map(|(id, _)| *id)
                .chain(std::iter::once(self.id))
                .collect()
        };
        let new: Vec<u64> = self
            .sm
            .read(|s| matched.difference(s.seen()).copied().collect());
        if new.is_empty() {
            return;
        }
        match self
            .leader_write(Op::MarkSeen { nodes: new.clone() }, deadline)
            .await
        {
            Ok(_) => tracing::debug!(nodes = ?new, "recorded nodes that hold data"),
            Err(e) => tracing::debug!(error = %e, "could not record nodes that hold data"),
        }
    }
}
