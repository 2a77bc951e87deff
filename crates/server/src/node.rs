//! The Raft node: what the HTTP API's [`Backend`] is in production.
//!
//! One [`Node`] per process owns the openraft `Raft` handle, a clone of the state
//! machine (for reads), the write [`Batcher`], the peer HTTP client and a few
//! background tasks. Its job is routing and waiting; every decision is made by
//! `quorate_core::State::apply` on the replicated log.
//!
//! **Writes.** On the leader an op goes into the batcher and the caller waits for its
//! own reply from the applied entry. On a follower the op is forwarded to the leader's
//! `/forward/write`, where it enters the leader's batcher. A retry (to a new leader) is
//! only attempted when the op was certainly not applied: the receiver said "not
//! leader" (openraft rejected or truncated the entry) or no connection could be made.
//! Any other failure, and running out of `request_timeout`, is
//! [`NodeError::Unavailable`]: a node cut off from the majority can never commit, so it
//! times out and never grants.
//!
//! **Reads** are linearizable: the leader confirms its leadership with a quorum and
//! waits until its state machine has applied everything committed before
//! (`Raft::ensure_linearizable`), then queries the state; followers forward. Reads are
//! retried freely within the deadline since they change nothing. Right after a restart
//! a read also waits until the log the node had on disk is applied: a leader restored
//! into its old term would otherwise read at a stale committed index (a bug the chaos
//! suite found; see `startup_log_index`).
//!
//! **Background tasks.**
//! - *Bootstrap*: a brand-new cluster forms exactly once. Only the node with the lowest
//!   id, and only if its store is fresh, initializes Raft with every node of the file,
//!   after every peer has answered `/raft/probe` with "fresh". If any peer already has
//!   data, nobody initializes: this node is a replacement and must be added through
//!   the membership API (or it is an existing member the leader will catch up).
//! - *Housekeeping*: every `expire_interval_ms` the leader proposes `Op::Expire`, which
//!   advances cluster time and purges dead leases and idle rate buckets even when no
//!   client writes.
//! - *Configuration*: whenever this node becomes leader for a new term, it compares the
//!   replicated policies digest with `cluster.toml`'s and proposes `Op::Configure` if
//!   they differ.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{ChangeMembers, Raft, ServerState};
use quorate_core::{Op, Outcome, Query, Reply};
use quorate_proto::{AddMemberRequest, ClusterResponse, Member, MembersResponse};
use quorate_store::{LogStore, NodeInfo, StateMachineStore, Storage, TypeConfig};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, timeout_at};

use crate::auth::PeerAuth;
use crate::backend::{Backend, NodeError};
use crate::batcher::{wall_clock_ms, BatchError, Batcher};
use crate::config::ClusterConfig;
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::network::{Network, PeerClient, PeerError};
use crate::raft_rpc::{self, paths, ForwardError, ProbeResponse};

/// Housekeeping op proposed by the leader every `expire_interval_ms`.
const EXPIRE_OP: Op = Op::Expire {
    max_leases: 10_000,
    max_rate_keys: 10_000,
};

/// Membership changes may take longer than a normal request (a learner catches up).
const MEMBERSHIP_TIMEOUT_FACTOR: u32 = 6;

/// How often the bootstrapping node polls its peers.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Sentinel for "no index" in the cached committed index.
const NONE: u64 = u64::MAX;

fn tokio_deadline(deadline: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(deadline)
}

/// A running quorate node. Create with [`Node::start`], stop with [`Node::shutdown`].
pub struct Node {
    id: u64,
    config: Arc<ClusterConfig>,
    raft: Raft<TypeConfig>,
    sm: StateMachineStore,
    log: LogStore,
    peers: PeerClient,
    batcher: Batcher,
    /// Node-level series (Raft gauges, forwards, batches, write latency), rendered by
    /// [`Backend::metrics_text`] after the API's own registry.
    metrics: Arc<Metrics>,
    /// Last committed index seen by the housekeeping tick (for the sync metrics path).
    committed_cache: AtomicU64,
    /// Index of the last log entry on disk when this process started. A node that
    /// was leader when it crashed restarts as leader of the *same* term (openraft 0.9
    /// restores leadership from a committed vote, without a new blank entry) and with
    /// the committed index it last persisted, which may lag entries it had already
    /// acknowledged; openraft's read index is then that stale committed index. So
    /// reads also wait until this index is applied (see [`Node::read_barrier`]).
    startup_log_index: Option<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Cluster id and secret that incoming peer requests must carry.
    peer_auth: PeerAuth,
    /// One membership change at a time: openraft 0.9 rejects overlapping changes at
    /// best, and a change proposed while a previous one is still taking effect is
    /// where its leader-only assertions live.
    membership_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Start Raft on `storage` and the node's background tasks.
    pub async fn start(
        config: Arc<ClusterConfig>,
        id: u64,
        storage: Storage,
    ) -> Result<Arc<Node>, ServerError> {
        config.node(id)?;
        let fresh = storage.is_fresh();
        let Storage { mut log, sm } = storage;
        let startup_log_index = log
            .get_log_state()
            .await
            .map_err(|e| ServerError::Raft(format!("cannot read the log state: {e}")))?
            .last_log_id
            .map(|l| l.index);
        let raft_config = Arc::new(config.raft_config()?);
        let (_, peer_auth) = config.auth()?;
        let tls = config.tls()?;
        let peers = PeerClient::new(
            Duration::from_millis(config.raft.connect_timeout_ms),
            peer_auth.outgoing_headers(),
            tls.as_ref().map(|t| t.ca_pem.as_slice()),
        )
        .map_err(|e| ServerError::Raft(format!("cannot build the peer HTTP client: {e}")))?
        .with_peer_addrs(config.peer_addrs.clone());
        if !config.peer_addrs.is_empty() {
            tracing::warn!(overrides = ?config.peer_addrs, "QUORATE_PEER_ADDRS: peer traffic is redirected (testing only)");
        }
        planted::announce();
        let network = Network::new(id, peers.clone());
        let raft = Raft::new(id, raft_config, network, log.clone(), sm.clone())
            .await
            .map_err(|e| ServerError::Raft(format!("cannot start: {e}")))?;
        let metrics = Arc::new(Metrics::new());
        let (batcher, batcher_task) = Batcher::spawn(
            raft.clone(),
            config.server.batch_max_ops,
            config.server.batch_max_in_flight,
            metrics.clone(),
        );
        let node = Arc::new(Node {
            id,
            config,
            raft,
            sm,
            log,
            peers,
            batcher,
            metrics,
            committed_cache: AtomicU64::new(NONE),
            startup_log_index,
            tasks: Mutex::new(vec![batcher_task]),
            peer_auth,
            membership_lock: tokio::sync::Mutex::new(()),
        });
        tracing::info!(node = id, fresh, "raft started");

        let mut tasks = vec![
            tokio::spawn(node.clone().housekeeping_loop()),
            tokio::spawn(node.clone().leader_loop()),
        ];
        if fresh && node.is_bootstrapper() {
            tasks.push(tokio::spawn(node.clone().bootstrap()));
        }
        node.lock_tasks().extend(tasks);
        Ok(node)
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        // Only pushes and drains happen under this lock; poisoning cannot corrupt it.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stop background tasks, shut Raft down and flush the store.
    pub async fn shutdown(&self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.log.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        tracing::info!(node = self.id, "node stopped");
    }

    /// Resolves with a message if the Raft core stops with a fatal error (storage
    /// failure), so the process can exit instead of serving 503s forever.
    pub async fn fatal(&self) -> String {
        let mut rx = self.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow_and_update().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "raft core stopped".into();
            }
        }
    }

    /// What incoming peer requests must carry (checked by `raft_rpc`).
    pub fn peer_auth(&self) -> &PeerAuth {
        &self.peer_auth
    }

    /// The node's own metrics registry (Raft, batching, peer refusals).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout()
    }

    fn is_bootstrapper(&self) -> bool {
        self.config.nodes.iter().map(|n| n.id).min() == Some(self.id)
    }

    fn current_leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// A node's Raft address: from the replicated membership, else from the file.
    fn raft_addr_of(&self, id: u64) -> Option<String> {
        let from_membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.raft_addr.clone());
        from_membership.or_else(|| {
            self.config
                .nodes
                .iter()
                .find(|n| n.id == id)
                .map(|n| n.raft_addr.clone())
        })
    }

    /// Wait (until `deadline`) for some leader to be known.
    async fn wait_leader(&self, deadline: Instant) -> Option<u64> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Some(l);
            }
            match timeout_at(tokio_deadline(deadline), rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    // -----------------------------------------------------------------------------
    // Routing

    /// Run `local` if this node is the leader, else forward `body` to the leader's
    /// `path`; retry on a new leader while the request certainly had no effect
    /// (`NotLeader`, `Unreachable`) or, for `idempotent` requests, on any failure;
    /// give up at `deadline`.
    async fn route<T, L, Fut>(
        &self,
        kind: &'static str,
        path: &'static str,
        body: Vec<u8>,
        deadline: Instant,
        idempotent: bool,
        local: L,
    ) -> Result<T, NodeError>
    where
        T: DeserializeOwned,
        L: Fn() -> Fut,
        Fut: Future<Output = Result<T, ForwardError>>,
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
                self.forward(leader, kind, path, body.clone(), deadline)
                    .await
            };
            match res {
                Ok(v) => return Ok(v),
                Err(ForwardError::NotLeader { leader: hint }) => {
                    last = match hint {
                        Some(h) => format!("node {leader} is not the leader (it names node {h})"),
                        None => format!("node {leader} is not the leader"),
                    };
                }
                Err(ForwardError::Unreachable(m)) => last = m,
                Err(ForwardError::Unavailable(m)) if idempotent => last = m,
                Err(ForwardError::Unavailable(m)) => return Err(NodeError::Unavailable(m)),
                Err(ForwardError::Membership(m)) => return Err(NodeError::Membership(m)),
            }
            tracing::debug!(kind, leader, reason = %last, "retrying");
            let left = deadline.saturating_duration_since(Instant::now());
            sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Send a request to the leader's forwarding endpoint.
    #[tracing::instrument(level = "debug", skip(self, body, deadline), fields(node = self.id))]
    async fn forward<T: DeserializeOwned>(
        &self,
        leader: u64,
        kind: &'static str,
        path: &'static str,
        body: Vec<u8>,
        deadline: Instant,
    ) -> Result<T, ForwardError> {
        let Some(addr) = self.raft_addr_of(leader) else {
            return Err(ForwardError::Unreachable(format!(
                "no address known for leader {leader}"
            )));
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result = match self.peers.post(leader, &addr, path, body, remaining).await {
            Ok(bytes) => raft_rpc::decode::<Result<T, ForwardError>>(&bytes).unwrap_or_else(|e| {
                Err(ForwardError::Unavailable(format!(
                    "undecodable answer from leader {leader}: {e}"
                )))
            }),
            Err(e @ PeerError::Connect(_)) => Err(ForwardError::Unreachable(format!(
                "leader {leader} at {addr}: {e}"
            ))),
            Err(PeerError::Timeout) => Err(ForwardError::Unavailable(format!(
                "leader {leader} did not answer within the request timeout"
            ))),
            Err(e) => Err(ForwardError::Unavailable(format!(
                "leader {leader} at {addr}: {e}"
            ))),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ForwardError::NotLeader { .. }) => "not_leader",
            Err(ForwardError::Unreachable(_)) => "unreachable",
            Err(ForwardError::Unavailable(_)) => "unavailable",
            Err(ForwardError::Membership(_)) => "refused",
        };
        self.metrics.inc(
            "quorate_forwarded_total",
            "Requests this node forwarded to the leader, by kind and outcome.",
            &[("kind", kind), ("outcome", outcome)],
        );
        result
    }

    // -----------------------------------------------------------------------------
    // Leader-side handling (local requests and forwarded ones)

    /// Replicate `op` through this node's batcher, if it is the leader.
    pub async fn leader_write(&self, op: Op, deadline: Instant) -> Result<Reply, ForwardError> {
        if !self.is_leader() {
            return Err(ForwardError::NotLeader {
                leader: self.current_leader(),
            });
        }
        match timeout_at(tokio_deadline(deadline), self.batcher.submit(op)).await {
            Err(_) => Err(ForwardError::Unavailable(
                "the write was not committed within the request timeout (no quorum?)".into(),
            )),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(BatchError::NotLeader { leader })) => Err(ForwardError::NotLeader { leader }),
            Ok(Err(BatchError::Unavailable(m))) => Err(ForwardError::Unavailable(m)),
        }
    }

    /// Linearizable read barrier: confirm leadership with a quorum and wait until
    /// everything committed before now is applied — including, right after a restart,
    /// everything this node had in its log when it started (see `startup_log_index`).
    async fn read_barrier(&self, deadline: Instant) -> Result<(), ForwardError> {
        if !self.is_leader() {
            return Err(ForwardError::NotLeader {
                leader: self.current_leader(),
            });
        }
        match timeout_at(tokio_deadline(deadline), self.raft.ensure_linearizable()).await {
            Err(_) => Err(ForwardError::Unavailable(
                "leadership not confirmed by a quorum within the request timeout".into(),
            )),
            Ok(Ok(_)) => self.wait_startup_log_applied(deadline).await,
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ForwardError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(ForwardError::Unavailable(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(ForwardError::Unavailable(format!("raft: {e}"))),
        }
    }

    /// Wait until the state machine has applied `startup_log_index`. A leader that kept
    /// its term across a restart may have acknowledged writes up to there; they are
    /// committed (or will be, by this leader) but its persisted committed index, and
    /// so openraft's read index, may not cover them yet. A no-op once reached.
    async fn wait_startup_log_applied(&self, deadline: Instant) -> Result<(), ForwardError> {
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
                    return Err(ForwardError::Unavailable(format!(
                        "the log this node had at startup (up to {want}) is not applied yet"
                    )))
                }
            }
        }
    }

    /// Answer `q` linearizably, if this node is the leader.
    pub async fn leader_read(&self, q: Query, deadline: Instant) -> Result<Reply, ForwardError> {
        self.read_barrier(deadline).await?;
        let now = wall_clock_ms();
        Ok(self.sm.read(|s| s.query(&q, now.max(s.now_ms()))))
    }

    /// Add a learner (waiting until it has caught up), then promote it to voter.
    pub async fn leader_add_member(
        &self,
        req: AddMemberRequest,
        deadline: Instant,
    ) -> Result<MembersResponse, ForwardError> {
        if !self.is_leader() {
            return Err(ForwardError::NotLeader {
                leader: self.current_leader(),
            });
        }
        let _one_at_a_time = self.membership_lock.lock().await;
        if req.id == 0 {
            return Err(ForwardError::Membership("node id 0 is reserved".into()));
        }
        if req.api_addr == req.raft_addr {
            return Err(ForwardError::Membership(
                "api_addr and raft_addr must differ".into(),
            ));
        }
        let node = NodeInfo {
            api_addr: req.api_addr.clone(),
            raft_addr: req.raft_addr.clone(),
        };
        tracing::info!(id = req.id, api = %req.api_addr, raft = %req.raft_addr, "adding learner");
        let add = self.raft.add_learner(req.id, node, true);
        let mut resp = match timeout_at(tokio_deadline(deadline), add).await {
            Err(_) => {
                return Err(ForwardError::Unavailable(
                    "learner did not catch up in time".into(),
                ))
            }
            Ok(r) => r.map_err(membership_error)?,
        };
        if !req.learner_only {
            tracing::info!(id = req.id, "promoting learner to voter");
            let change = self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])), false);
            resp = match timeout_at(tokio_deadline(deadline), change).await {
                Err(_) => {
                    return Err(ForwardError::Unavailable(
                        "membership change not committed in time".into(),
                    ))
                }
                Ok(r) => r.map_err(membership_error)?,
            };
        }
        Ok(self.members_after(resp.membership.as_ref()))
    }

    /// Remove a voter or learner.
    pub async fn leader_remove_member(
        &self,
        id: u64,
        deadline: Instant,
    ) -> Result<MembersResponse, ForwardError> {
        if !self.is_leader() {
            return Err(ForwardError::NotLeader {
                leader: self.current_leader(),
            });
        }
        // A leader removing itself leaves openraft 0.9 proposing membership entries
        // as a leader that is no longer in the config, which trips its internal
        // leader-only assertion and stops Raft on this node (found by the API fuzz
        // run). Step the leader down first: stop it, let another node win, and remove
        // it through the new leader.
        if id == self.id {
            return Err(ForwardError::Membership(format!(
                "node {id} is the current leader and cannot remove itself; stop it so \
                 another node takes over, then remove it through the new leader"
            )));
        }
        let _one_at_a_time = self.membership_lock.lock().await;
        let (is_voter, is_node) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            (
                membership.voter_ids().any(|v| v == id),
                membership.get_node(&id).is_some(),
            )
        };
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if is_node {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(ForwardError::Membership(format!(
                "node {id} is not a member"
            )));
        };
        tracing::info!(id, voter = is_voter, "removing member");
        match timeout_at(
            tokio_deadline(deadline),
            self.raft.change_membership(change, false),
        )
        .await
        {
            Err(_) => Err(ForwardError::Unavailable(
                "membership change not committed in time".into(),
            )),
            Ok(r) => {
                let resp = r.map_err(membership_error)?;
                Ok(self.members_after(resp.membership.as_ref()))
            }
        }
    }

    /// Members after a change: the committed config the change returned, else this
    /// node's latest view.
    fn members_after(
        &self,
        changed: Option<&openraft::Membership<u64, NodeInfo>>,
    ) -> MembersResponse {
        let members = match changed {
            Some(m) => members_of(m),
            None => members_of(self.raft.metrics().borrow().membership_config.membership()),
        };
        MembersResponse { members }
    }

    // -----------------------------------------------------------------------------
    // Backend entry points

    #[tracing::instrument(name = "write", skip_all, fields(node = self.id, op = op_kind(&op)))]
    async fn write_op(&self, op: Op) -> Result<Reply, NodeError> {
        #[cfg(debug_assertions)]
        if let Some(reply) = self.planted_follower_local_grant(&op) {
            return Ok(reply);
        }
        let deadline = Instant::now() + self.request_timeout();
        let body = raft_rpc::encode(&op)
            .map_err(|e| NodeError::Unavailable(format!("cannot encode op: {e}")))?;
        self.route("write", paths::FORWARD_WRITE, body, deadline, false, || {
            self.leader_write(op.clone(), deadline)
        })
        .await
    }

    /// The planted bug (see [`planted`]): on a follower, decide an acquire on a private
    /// copy of the local state and answer without Raft. `None` = behave correctly.
    #[cfg(debug_assertions)]
    fn planted_follower_local_grant(&self, op: &Op) -> Option<Reply> {
        if !matches!(op, Op::Acquire(_)) || !planted::follower_local_grant() || self.is_leader() {
            return None;
        }
        let mut copy = self.sm.read(|s| s.clone());
        let cmd = quorate_core::Command {
            time_ms: wall_clock_ms(),
            ops: vec![op.clone()],
        };
        copy.apply(&cmd).pop()
    }

    #[tracing::instrument(name = "read", skip_all, fields(node = self.id, query = query_kind(&q)))]
    async fn read_query(&self, q: Query) -> Result<Reply, NodeError> {
        let deadline = Instant::now() + self.request_timeout();
        let body = raft_rpc::encode(&q)
            .map_err(|e| NodeError::Unavailable(format!("cannot encode query: {e}")))?;
        self.route("read", paths::FORWARD_READ, body, deadline, true, || {
            self.leader_read(q.clone(), deadline)
        })
        .await
    }

    #[tracing::instrument(name = "add_member", skip_all, fields(node = self.id, id = req.id))]
    async fn add_member_op(&self, req: AddMemberRequest) -> Result<MembersResponse, NodeError> {
        let deadline = Instant::now() + self.request_timeout() * MEMBERSHIP_TIMEOUT_FACTOR;
        let body = raft_rpc::encode(&req)
            .map_err(|e| NodeError::Unavailable(format!("cannot encode request: {e}")))?;
        self.route(
            "add_member",
            paths::FORWARD_ADD_MEMBER,
            body,
            deadline,
            false,
            || self.leader_add_member(req.clone(), deadline),
        )
        .await
    }

    #[tracing::instrument(name = "remove_member", skip_all, fields(node = self.id, id))]
    async fn remove_member_op(&self, id: u64) -> Result<MembersResponse, NodeError> {
        let deadline = Instant::now() + self.request_timeout() * MEMBERSHIP_TIMEOUT_FACTOR;
        let body = raft_rpc::encode(&id)
            .map_err(|e| NodeError::Unavailable(format!("cannot encode request: {e}")))?;
        self.route(
            "remove_member",
            paths::FORWARD_REMOVE_MEMBER,
            body,
            deadline,
            false,
            || self.leader_remove_member(id, deadline),
        )
        .await
    }

    /// The committed index as this node knows it; `Err` if Raft did not answer.
    async fn committed_index(&self) -> Result<Option<u64>, ()> {
        let q = self
            .raft
            .with_raft_state(|st| st.committed.as_ref().map(|l| l.index));
        match timeout(Duration::from_secs(1), q).await {
            Ok(Ok(c)) => {
                self.committed_cache
                    .store(c.unwrap_or(NONE), Ordering::Relaxed);
                Ok(c)
            }
            _ => Err(()),
        }
    }

    /// The applied index and the state digest at that index (re-read if an entry was
    /// applied in between).
    fn applied_and_digest(&self) -> (Option<u64>, String) {
        let mut applied = self.sm.last_applied();
        let mut digest = self.sm.digest();
        for _ in 0..3 {
            let again = self.sm.last_applied();
            if again == applied {
                break;
            }
            applied = again;
            digest = self.sm.digest();
        }
        (applied.map(|l| l.index), digest)
    }

    async fn cluster_view(&self) -> Result<ClusterResponse, NodeError> {
        let committed_index = self.committed_index().await.ok().flatten();
        let (applied_index, state_digest) = self.applied_and_digest();
        let m = self.raft.metrics();
        let m = m.borrow().clone();
        Ok(ClusterResponse {
            node_id: self.id,
            leader_id: m.current_leader,
            term: m.current_term,
            members: members_of(m.membership_config.membership()),
            last_log_index: m.last_log_index,
            committed_index,
            applied_index,
            state_digest,
        })
    }

    async fn is_ready(&self) -> bool {
        let (leader, applied, running) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.current_leader,
                m.last_applied.map(|l| l.index),
                m.running_state.is_ok(),
            )
        };
        if leader.is_none() || !running {
            return false;
        }
        match self.committed_index().await {
            Ok(Some(c)) => applied.is_some_and(|a| a >= c),
            // Knows a leader but has nothing committed yet (e.g. a wiped node that has
            // just heard a heartbeat): not caught up, so not ready.
            Ok(None) => false,
            Err(()) => false,
        }
    }

    /// What `GET /raft/probe` answers.
    pub async fn probe(&self) -> ProbeResponse {
        let initialized = self.raft.is_initialized().await.unwrap_or(true);
        ProbeResponse {
            node_id: self.id,
            cluster_id: self.config.cluster_id.clone(),
            fresh: !initialized,
        }
    }

    fn render_metrics(&self) -> String {
        let (term, last_log, applied, leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.current_term,
                m.last_log_index,
                m.last_applied.map(|l| l.index),
                m.state == ServerState::Leader,
            )
        };
        let committed = match self.committed_cache.load(Ordering::Relaxed) {
            NONE => None,
            c => Some(c),
        };
        let g = &self.metrics;
        let idx = |i: Option<u64>| i.map_or(0.0, |i| i as f64);
        g.set_gauge("quorate_raft_term", "Current Raft term.", &[], term as f64);
        g.set_gauge(
            "quorate_raft_last_log_index",
            "Index of the last entry in this node's log.",
            &[],
            idx(last_log),
        );
        g.set_gauge(
            "quorate_raft_committed_index",
            "Highest index this node knows to be committed (refreshed every expire interval).",
            &[],
            idx(committed),
        );
        g.set_gauge(
            "quorate_raft_applied_index",
            "Index of the last entry applied to the state machine.",
            &[],
            idx(applied),
        );
        g.set_gauge(
            "quorate_raft_is_leader",
            "1 if this node is the leader.",
            &[],
            if leader { 1.0 } else { 0.0 },
        );
        g.set_gauge(
            "quorate_sled_size_bytes",
            "Bytes sled uses on disk.",
            &[],
            self.sm.size_on_disk() as f64,
        );
        g.render()
    }

    // -----------------------------------------------------------------------------
    // Background tasks

    /// Forms a fresh cluster (lowest-id node only; see the module docs).
    async fn bootstrap(self: Arc<Self>) {
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
        let probe_timeout = Duration::from_secs(1);
        while !waiting.is_empty() {
            for peer in &peers {
                if !waiting.contains(&peer.id) {
                    continue;
                }
                let answer = self
                    .peers
                    .get(peer.id, &peer.raft_addr, paths::PROBE, probe_timeout)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        serde_json::from_slice::<ProbeResponse>(&b).map_err(|e| e.to_string())
                    });
                match answer {
                    Err(e) => tracing::debug!(peer = peer.id, error = %e, "probe failed"),
                    Ok(p) if p.cluster_id != self.config.cluster_id || p.node_id != peer.id => {
                        tracing::error!(
                            peer = peer.id,
                            addr = %peer.raft_addr,
                            answered_id = p.node_id,
                            answered_cluster = %p.cluster_id,
                            "peer belongs to another cluster or has another id; not bootstrapping"
                        );
                        return;
                    }
                    Ok(p) if !p.fresh => {
                        tracing::warn!(
                            peer = peer.id,
                            "peer already has cluster data; not bootstrapping (this node \
                             rejoins through the existing cluster, or must be added via \
                             POST /v1/members)"
                        );
                        return;
                    }
                    Ok(_) => {
                        waiting.remove(&peer.id);
                    }
                }
            }
            if waiting.is_empty() {
                break;
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

    /// Every `expire_interval_ms`: refresh cached Raft numbers and, on the leader,
    /// propose housekeeping.
    async fn housekeeping_loop(self: Arc<Self>) {
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.config.server.expire_interval_ms));
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
                    self.metrics.inc_by(
                        "quorate_expired_leases_total",
                        "Dead leases purged by housekeeping (leader's count).",
                        &[],
                        u64::from(leases),
                    );
                }
                Ok(other) => tracing::warn!(reply = ?other, "unexpected reply to expire"),
                Err(e) => tracing::debug!(error = ?e, "expire not applied"),
            }
        }
    }

    /// On every new leadership term: make the replicated policies match the file.
    async fn leader_loop(self: Arc<Self>) {
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

    async fn push_config(&self) -> Result<(), String> {
        let want = self.config.source_digest();
        let deadline = Instant::now() + self.request_timeout();
        match self.read_barrier(deadline).await {
            Ok(()) => {}
            Err(ForwardError::NotLeader { .. }) => return Ok(()),
            Err(e) => return Err(format!("{e:?}")),
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
            Err(ForwardError::NotLeader { .. }) => Ok(()),
            Err(e) => Err(format!("{e:?}")),
        }
    }
}

/// A deliberately planted bug, to prove that the chaos suite's checker can fail
/// (`tests/chaos.rs`, test `planted_bug_is_caught`).
///
/// With `QUORATE_PLANTED_BUG=follower-local-grant`, a follower answers acquires from a
/// clone of its own state machine instead of forwarding them through Raft: grants that
/// no other replica knows about, so limits are exceeded and acknowledged leases go
/// missing. Compiled into debug builds only (`cfg(debug_assertions)`), so a release
/// binary cannot be switched into it; there the variable is reported and ignored.
mod planted {
    /// The variable that enables a planted bug.
    pub const ENV: &str = "QUORATE_PLANTED_BUG";
    /// Its one recognised value.
    pub const FOLLOWER_LOCAL_GRANT: &str = "follower-local-grant";

    fn requested() -> Option<String> {
        std::env::var(ENV).ok().filter(|v| !v.is_empty())
    }

    /// True when this debug build runs with the follower-local-grant bug enabled.
    #[cfg(debug_assertions)]
    pub fn follower_local_grant() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| requested().as_deref() == Some(FOLLOWER_LOCAL_GRANT))
    }

    /// Log loudly at startup if the variable is set.
    pub fn announce() {
        let Some(value) = requested() else {
            return;
        };
        if !cfg!(debug_assertions) {
            tracing::error!("{ENV}={value:?} ignored: planted bugs exist in debug builds only");
        } else if value == FOLLOWER_LOCAL_GRANT {
            tracing::warn!(
                "{ENV}={value}: followers grant acquires WITHOUT Raft (deliberate bug for \
                 the chaos suite; never use outside tests)"
            );
        } else {
            tracing::error!("{ENV}={value:?} is not a known planted bug; ignored");
        }
    }
}

fn membership_error(e: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ForwardError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ForwardError::Membership(e.to_string())
        }
        RaftError::Fatal(f) => ForwardError::Unavailable(format!("raft: {f}")),
    }
}

fn members_of(m: &openraft::Membership<u64, NodeInfo>) -> Vec<Member> {
    let voters: BTreeSet<u64> = m.voter_ids().collect();
    m.nodes()
        .map(|(id, n)| Member {
            id: *id,
            api_addr: n.api_addr.clone(),
            raft_addr: n.raft_addr.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Acquire(_) => "acquire",
        Op::Release { .. } => "release",
        Op::Renew { .. } => "renew",
        Op::Expire { .. } => "expire",
        Op::SetLimit { .. } => "set_limit",
        Op::DeleteLimit { .. } => "delete_limit",
        Op::RateCheck { .. } => "rate_check",
        Op::PutPolicy { .. } => "put_policy",
        Op::DeletePolicy { .. } => "delete_policy",
        Op::PutTier { .. } => "put_tier",
        Op::DeleteTier { .. } => "delete_tier",
        Op::Configure(_) => "configure",
        Op::Noop => "noop",
    }
}

fn query_kind(q: &Query) -> &'static str {
    match q {
        Query::Usage { .. } => "usage",
        Query::Limit { .. } => "limit",
        Query::Limits { .. } => "limits",
        Query::Policies => "policies",
        Query::Lease { .. } => "lease",
    }
}

impl Backend for Node {
    fn write(&self, op: Op) -> BoxFuture<'_, Result<Reply, NodeError>> {
        Box::pin(self.write_op(op))
    }

    fn read(&self, query: Query) -> BoxFuture<'_, Result<Reply, NodeError>> {
        Box::pin(self.read_query(query))
    }

    fn cluster(&self) -> BoxFuture<'_, Result<ClusterResponse, NodeError>> {
        Box::pin(self.cluster_view())
    }

    fn add_member(
        &self,
        req: AddMemberRequest,
    ) -> BoxFuture<'_, Result<MembersResponse, NodeError>> {
        Box::pin(self.add_member_op(req))
    }

    fn remove_member(&self, id: u64) -> BoxFuture<'_, Result<MembersResponse, NodeError>> {
        Box::pin(self.remove_member_op(id))
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.is_ready())
    }

    fn metrics_text(&self) -> String {
        self.render_metrics()
    }
}
