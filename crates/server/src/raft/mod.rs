//! The Raft node: what the HTTP API's [`Backend`](crate::backend::Backend) is in
//! production.
//!
//! One [`Node`] per process owns the openraft `Raft` handle, the state machine (for
//! reads), the write [`Batcher`], the peer client and a few background tasks. Its job
//! is routing and waiting; every decision is made by `quorate_core::State::apply` on
//! the replicated log. The node is split by job, one file each:
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | lifecycle: start, shutdown, fatal errors; who leads |
//! | [`batcher`] | the leader's write pipeline: many ops, few log entries |
//! | [`forwarder`] | a follower's forwarding pipeline: many writes, few peer requests |
//! | [`clock`] | cluster time: applied time + the leader's monotonic clock |
//! | `routing.rs` | leader-or-forward, retries, and the `Backend` entry points |
//! | `leader.rs` | leader-side writes and linearizable reads |
//! | `membership.rs` | adding and removing nodes |
//! | `status.rs` | cluster view, readiness, probe answers, sampled gauges |
//! | `tasks.rs` | bootstrap, housekeeping, configuration push, peer clock offsets |
//! | [`rejoin`] | a node that starts empty proves it is not a voter that lost its data |
//!
//! Nothing here knows HTTP: the API and the peer endpoints (`http::`) call in, and the
//! node calls out only through `peer::` (the wire contract and the pooled client).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorage;
use openraft::{Raft, ServerState};
use quorate_proto::ClockOffset;
use quorate_store::{LogStore, StateMachineStore, Storage, TypeConfig};
use tokio::task::JoinHandle;
use tokio::time::timeout_at;

use crate::config::ClusterConfig;
use crate::error::ServerError;
use crate::peer::raft_network::Network;
use crate::peer::PeerClient;
use crate::telemetry::Metrics;
use crate::waiters::Waiters;

pub mod batcher;
pub mod clock;
pub mod forwarder;
mod leader;
mod membership;
#[cfg(feature = "planted-bugs")]
mod planted;
pub mod rejoin;
mod routing;
mod status;
mod tasks;

use batcher::Batcher;
use forwarder::Forwarder;

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
    /// Carries writes this node forwards to the leader, many per peer request.
    forwarder: Forwarder,
    /// The process's one registry (shared with the HTTP layer).
    metrics: Arc<Metrics>,
    /// Last committed index seen by the housekeeping tick (for the sync metrics path).
    committed_cache: AtomicU64,
    /// Index of the last log entry on disk when this process started. A node that
    /// was leader when it crashed restarts as leader of the *same* term (openraft 0.9
    /// restores leadership from a committed vote, without a new blank entry) and with
    /// the committed index it last persisted, which may lag entries it had already
    /// acknowledged; openraft's read index is then that stale committed index. So
    /// reads also wait until this index is applied (see `leader.rs`).
    startup_log_index: Option<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// One membership change at a time: openraft 0.9 rejects overlapping changes at
    /// best, and a change proposed while a previous one is still taking effect is
    /// where its leader-only assertions live.
    membership_lock: tokio::sync::Mutex<()>,
    /// Last measured wall clock offset of each peer (`tasks.rs`), for `/v1/cluster`.
    clock_offsets: Mutex<BTreeMap<u64, ClockOffset>>,
    /// Each peer's last probe answer, for `/v1/cluster`'s `nodes` (`status.rs`).
    peer_seen: Mutex<BTreeMap<u64, status::PeerSeen>>,
    /// Whether Raft RPCs are served yet: a node that starts empty must first show it
    /// is not a voter that lost its data (`rejoin.rs`).
    gate: tokio::sync::watch::Sender<rejoin::Gate>,
    /// Each file node's API base URL as clients reach it (`NodeConfig::api_url`),
    /// built once: the leader hint every API response carries (`status.rs`).
    api_urls: BTreeMap<u64, Arc<str>>,
    /// Waiting acquires held open here, fed by the state machine's queue grants.
    waiters: Arc<Waiters>,
    /// Client operations in progress on this node (writes it leads or forwards,
    /// reads), counted for the log: while at most one is, an append is synced on
    /// the runtime thread instead of being handed to the flusher thread and back
    /// (`quorate_store::Load`, `flusher.rs`).
    load: quorate_store::Load,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Start Raft on `storage` with `peers` as the way out, and the node's background
    /// tasks. `metrics` is the process's registry.
    pub async fn start(
        config: Arc<ClusterConfig>,
        id: u64,
        storage: Storage,
        peers: PeerClient,
        metrics: Arc<Metrics>,
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
        #[cfg(feature = "planted-bugs")]
        planted::announce();
        // Before Raft starts applying: every applied entry's queue grants reach the
        // requests waiting here, whichever node leads.
        let waiters = Arc::new(Waiters::new(metrics.queue_waiters.clone()));
        let sink = waiters.clone();
        if sm
            .on_queue_grants(Arc::new(move |grants| sink.deliver(grants)))
            .is_err()
        {
            return Err(ServerError::Raft(
                "the state machine already feeds another node's waiters".into(),
            ));
        }
        let m = metrics.clone();
        let disk_metrics: quorate_store::SyncHook = Arc::new(move |r| {
            m.log_sync_seconds.observe(r.elapsed.as_secs_f64());
            m.log_synced_writes.inc_by(r.acknowledged as u64);
        });
        if log.on_sync(disk_metrics).is_err() {
            return Err(ServerError::Raft(
                "the log already reports to another node's metrics".into(),
            ));
        }
        let network = Network::new(id, peers.clone());
        let raft = Raft::new(id, raft_config, network, log.clone(), sm.clone())
            .await
            .map_err(|e| ServerError::Raft(format!("cannot start: {e}")))?;
        let proposer = Arc::new(batcher::RaftProposer {
            raft: raft.clone(),
            sm: sm.clone(),
            startup_log_index,
        });
        let (batcher, batcher_task) = Batcher::spawn(
            proposer,
            batcher::Limits {
                max_ops: config.server.batch_max_ops.get(),
                max_in_flight: config.server.batch_max_in_flight.get(),
                // Every caller of an entry has given up by then (their deadline is
                // the request timeout), so nobody waits for it any more.
                abandon_after: config.request_timeout(),
            },
            metrics.clone(),
        );
        let (forwarder, forwarder_task) = Forwarder::spawn(
            Arc::new(forwarder::PeerTransport::new(peers.clone())),
            forwarder::Limits {
                max_ops: config.server.batch_max_ops.get(),
                max_in_flight: config.server.forward_max_in_flight.get(),
            },
            metrics.clone(),
        );
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let api_urls = config
            .nodes
            .iter()
            .map(|n| (n.id, Arc::from(n.api_url(scheme))))
            .collect();
        // Asking the log for its counter is what lets it sync on a quiet node's own
        // thread; an uncounted one keeps every sync on the flusher thread.
        let load = if config.server.sync_when_quiet {
            log.load()
        } else {
            quorate_store::Load::default()
        };
        let node = Arc::new(Node {
            id,
            load,
            api_urls,
            waiters,
            config,
            raft,
            sm,
            log,
            peers,
            batcher,
            forwarder,
            metrics,
            committed_cache: AtomicU64::new(NONE),
            startup_log_index,
            tasks: Mutex::new(vec![batcher_task, forwarder_task]),
            membership_lock: tokio::sync::Mutex::new(()),
            clock_offsets: Mutex::new(BTreeMap::new()),
            peer_seen: Mutex::new(BTreeMap::new()),
            gate: tokio::sync::watch::Sender::new(if fresh {
                rejoin::Gate::Checking
            } else {
                rejoin::Gate::Open
            }),
        });
        tracing::info!(node = id, fresh, "raft started");

        let mut tasks = vec![
            tokio::spawn(node.clone().housekeeping_loop()),
            tokio::spawn(node.clone().queue_wakeup_loop()),
            tokio::spawn(node.clone().leader_loop()),
            tokio::spawn(node.clone().clock_watch_loop()),
            tokio::spawn(node.clone().seen_loop()),
        ];
        if fresh {
            tasks.push(tokio::spawn(node.clone().check_rejoin()));
        }
        if fresh && node.is_bootstrapper() {
            tasks.push(tokio::spawn(node.clone().bootstrap()));
        }
        node.lock_tasks().extend(tasks);
        Ok(node)
    }

    /// The process's metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(super) fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        // Only pushes and drains happen under this lock; poisoning cannot corrupt it.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `task` with the node's background tasks, stopped by [`Node::shutdown`]
    /// (e.g. a peer's append stream). Finished ones are dropped here, so a node whose
    /// peers reconnect often does not collect them.
    pub fn track_task(&self, task: JoinHandle<()>) {
        let mut tasks = self.lock_tasks();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
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
    /// failure) or the node refuses to rejoin (it lost its data), so the process can
    /// exit instead of serving 503s forever.
    pub async fn fatal(&self) -> String {
        // Not `raft.metrics()`: that channel is sent to after every batch of Raft work
        // (several times per entry), and this future runs on the main thread, so each
        // send would cost a cross-thread wakeup (issue 22's profile). The server
        // metrics change only with the vote, role, leader or membership, and their
        // sender is dropped when the Raft core stops — which is when `running_state`
        // holds the fatal error (set just before the core exits).
        let mut rx = self.raft.server_metrics();
        let mut gate = self.gate.subscribe();
        loop {
            if let Err(e) = &self.raft.metrics().borrow().running_state {
                return e.to_string();
            }
            if let rejoin::Gate::Refused(msg) = &*gate.borrow_and_update() {
                return msg.clone();
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return match &self.raft.metrics().borrow().running_state {
                        Err(e) => e.to_string(),
                        Ok(()) => "raft core stopped".into(),
                    };
                },
                _ = gate.changed() => {}
            }
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the store can still write (`quorate_store::Health`): after a failed
    /// write or fsync it never can again in this process.
    pub fn storage_health(&self) -> quorate_store::Health {
        self.log.health()
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout()
    }

    pub(super) fn is_bootstrapper(&self) -> bool {
        self.config.nodes.iter().map(|n| n.id).min() == Some(self.id)
    }

    // Role and leader come from the server metrics, like every wait on a role change
    // (`leader_loop`, `term_ended`, `wait_leader`): openraft sends them before the
    // all-metrics channel in the same report, so a task woken by a role change that
    // then asked `raft.metrics()` could still read the old role (a fresh leader's
    // configuration push answered itself "not leader" and never retried the term).
    pub(super) fn current_leader(&self) -> Option<u64> {
        self.raft.server_metrics().borrow().current_leader
    }

    pub(super) fn is_leader(&self) -> bool {
        let m = self.raft.server_metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// A node's Raft address: from the replicated membership, else from the file.
    pub(super) fn raft_addr_of(&self, id: u64) -> Option<String> {
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
    pub(super) async fn wait_leader(&self, deadline: Instant) -> Option<u64> {
        let mut rx = self.raft.server_metrics();
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
}
