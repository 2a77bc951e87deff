//! The leader's write pipeline: many client ops, few log entries.
//!
//! Every Raft log entry costs a disk flush on a quorum of nodes, so one entry per
//! client request would cap throughput at the fsync rate. Instead ops are queued here,
//! and one loop turns the queue into entries:
//!
//! 1. wait for a free in-flight slot (at most `max_in_flight` entries are being
//!    replicated at once);
//! 2. take the first queued op, then whatever else is already queued, up to
//!    `max_ops`: requests that arrived while earlier entries were in flight share the
//!    next one;
//! 3. stamp the entry with cluster time ([`ClusterClock`]: the applied time plus the
//!    leader's monotonic clock, never its wall clock) and hand it to openraft
//!    (`client_write_ff`, in queue order, so entries are appended in the order ops
//!    were taken);
//! 4. when the entry is applied, give each caller the reply at its own index.
//!
//! **Nothing is stamped before the leader has caught up.** The applied cluster time is
//! only the anchor of a term's clock once the state machine holds everything committed
//! before the term: so before its first stamp in a term the loop waits until the state
//! machine has applied the last log index the node had when it first saw itself
//! leading (its term's first entry for an elected leader; the log it had on disk for
//! one openraft restored into its old term). A restarted node's applied time is 0
//! until it re-applies its log, and stamping then would take a wall clock as the
//! epoch and expire every lease of before the outage at once (issue 21: a leader ten
//! minutes fast granted a held slot again 2 s after a whole-cluster restart). While it
//! waits, writes queue (and time out as 503 if no quorum commits the term's entry);
//! [`Batcher::cluster_time`] answers `None`, so reads use the applied time.
//!
//! A caller only ever hears "applied, here is your reply" or an error: never success
//! for an entry that was not committed. `NotLeader` means the entry was never
//! proposed or was truncated (never applied), so the caller may retry elsewhere;
//! `Unavailable` means the outcome is unknown. Ops whose caller has already given up
//! (timed out) are dropped before they are proposed.
//!
//! **Abandoned proposals give their slot back.** openraft 0.9 answers a proposal when
//! its entry is applied or truncated — but not when the node, cut off while the entry
//! was in flight, is later brought up to date by a snapshot that covers the entry's
//! index: that answer never comes (`RaftCore::client_resp_channels` keeps the
//! responder forever). Waiting for it would keep the in-flight slot forever, and after
//! `max_in_flight` such entries a re-elected leader would answer 503 to every write.
//! So an entry's slot comes back when it is applied, when the term it was proposed in
//! ends, or after the abandon timeout, whichever is first; its callers then hear
//! `Unavailable` (it may still be applied by the new leader: retry with the same
//! lease id is safe).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use openraft::{Raft, ServerState};
use quorate_core::{Command, Op, Reply};
use quorate_store::{NodeInfo, StateMachineStore, TypeConfig};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::clock::ClusterClock;
use crate::backend::NodeError;
use crate::telemetry::Metrics;

/// What openraft answers about one proposed entry.
pub type WriteOutcome = Result<ClientWriteResponse<TypeConfig>, ClientWriteError<u64, NodeInfo>>;

/// What the batcher needs from Raft. A trait so that tests can hold answers back
/// (the abandoned-proposal case above) without a cluster.
pub trait Proposer: Send + Sync + 'static {
    /// Hand an entry to Raft; the receiver resolves with its outcome (or never).
    fn propose(
        &self,
        cmd: Command,
    ) -> BoxFuture<'_, Result<oneshot::Receiver<WriteOutcome>, String>>;
    /// The term this node leads in, if it leads.
    fn leading_term(&self) -> Option<u64>;
    /// Resolves once this node no longer leads in `term`.
    fn term_ended(&self, term: u64) -> BoxFuture<'static, ()>;
    /// Cluster time of the last applied entry.
    fn applied_ms(&self) -> u64;
    /// Resolves `true` once the state machine has applied everything this node's log
    /// held when it first saw itself leading `term` (and, after a restart, the log it
    /// had on disk), or `false` if it no longer leads `term`. Called once per term,
    /// before the term's first stamp.
    fn catch_up(&self, term: u64) -> BoxFuture<'static, bool>;
}

/// The production [`Proposer`]: openraft plus the state machine it applies to.
#[derive(Clone)]
pub struct RaftProposer {
    pub raft: Raft<TypeConfig>,
    pub sm: StateMachineStore,
    /// Index of the last log entry on disk when the process started (see
    /// `Node::startup_log_index`).
    pub startup_log_index: Option<u64>,
}

impl Proposer for RaftProposer {
    fn propose(
        &self,
        cmd: Command,
    ) -> BoxFuture<'_, Result<oneshot::Receiver<WriteOutcome>, String>> {
        Box::pin(async move {
            self.raft
                .client_write_ff(cmd)
                .await
                .map_err(|fatal| format!("raft stopped: {fatal}"))
        })
    }

    fn leading_term(&self) -> Option<u64> {
        // The same source as `term_ended`, so the two always agree on the term.
        let m = self.raft.server_metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader).then_some(m.vote.leader_id().get_term())
    }

    fn term_ended(&self, term: u64) -> BoxFuture<'static, ()> {
        // One of these waits per in-flight entry: the server metrics change only with
        // the vote, role, leader or membership, not after every append and apply as
        // `raft.metrics()` does, so an entry's task is not woken several times while
        // it is replicated.
        let mut rx = self.raft.server_metrics();
        Box::pin(async move {
            loop {
                {
                    let m = rx.borrow_and_update();
                    if m.state != ServerState::Leader || m.vote.leader_id().get_term() != term {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return; // Raft stopped: the term is over for us.
                }
            }
        })
    }

    fn applied_ms(&self) -> u64 {
        self.sm.read(|s| s.now_ms())
    }

    fn catch_up(&self, term: u64) -> BoxFuture<'static, bool> {
        let server = self.raft.server_metrics();
        let mut data = self.raft.data_metrics();
        let sm = self.sm.clone();
        let startup = self.startup_log_index;
        // The role from the server metrics (as `leading_term` saw it), the log from the
        // data metrics: openraft sends the data metrics first in the same report, so
        // once the server metrics show this term's leadership the data metrics
        // already count the elected leader's blank entry in `last_log`.
        let leads = move || {
            let m = server.borrow();
            m.state == ServerState::Leader && m.vote.leader_id().get_term() == term
        };
        Box::pin(async move {
            if !leads() {
                return false;
            }
            let want = data
                .borrow_and_update()
                .last_log
                .map(|l| l.index)
                .max(startup);
            loop {
                if sm.last_applied().map(|l| l.index) >= want {
                    return true;
                }
                if data.changed().await.is_err() {
                    return false; // Raft stopped.
                }
                if !leads() {
                    return false;
                }
            }
        })
    }
}

struct Pending {
    op: Op,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Reply, NodeError>>,
}

/// Handle to the batching loop. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
    clock: Arc<ClusterClock>,
    proposer: Arc<dyn Proposer>,
    /// The term whose catch-up is done (0: none yet); see the module docs.
    caught_up: Arc<AtomicU64>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

/// Unix milliseconds of this node's wall clock (0 if the clock is before 1970). Only
/// for the cluster's epoch and for measuring clock offsets, never for decisions.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most ops in one entry.
    pub max_ops: usize,
    /// Most entries in flight at once.
    pub max_in_flight: usize,
    /// How long an unanswered entry may hold its in-flight slot.
    pub abandon_after: Duration,
}

impl Batcher {
    /// Start the loop. It ends when every [`Batcher`] handle is dropped, or when the
    /// returned task is aborted.
    pub fn spawn(
        proposer: Arc<dyn Proposer>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> (Batcher, JoinHandle<()>) {
        let limits = Limits {
            max_ops: limits.max_ops.max(1),
            max_in_flight: limits.max_in_flight.max(1),
            ..limits
        };
        // Room for a few full batches; beyond that, submitters wait (backpressure,
        // bounded by their request timeout).
        let (tx, rx) = mpsc::channel(limits.max_ops * (limits.max_in_flight + 2));
        let clock = Arc::new(ClusterClock::new());
        let caught_up = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            proposer.clone(),
            clock.clone(),
            caught_up.clone(),
            rx,
            limits,
            metrics,
        ));
        (
            Batcher {
                tx,
                clock,
                proposer,
                caught_up,
            },
            task,
        )
    }

    /// Queue `op` and wait for its reply. The caller bounds the wait (dropping this
    /// future withdraws the op if it has not been proposed yet).
    pub async fn submit(&self, op: Op) -> Result<Reply, NodeError> {
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            op,
            enqueued: Instant::now(),
            reply,
        };
        if self.tx.send(pending).await.is_err() {
            return Err(NodeError::Unavailable("node is shutting down".into()));
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(NodeError::Unavailable(
                "write pipeline stopped before the entry was applied".into(),
            )),
        }
    }

    /// Cluster time now, as the next entry would be stamped (for leader reads), or
    /// `None` when this node does not lead or has not caught up in its term yet (then
    /// the applied time is all there is to go by).
    pub fn cluster_time(&self) -> Option<u64> {
        let term = self.proposer.leading_term()?;
        if self.caught_up.load(Ordering::Acquire) != term {
            return None;
        }
        let applied = self.proposer.applied_ms();
        Some(
            self.clock
                .peek(term, applied, Instant::now(), wall_clock_ms()),
        )
    }
}

async fn run(
    proposer: Arc<dyn Proposer>,
    clock: Arc<ClusterClock>,
    caught_up: Arc<AtomicU64>,
    mut rx: mpsc::Receiver<Pending>,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    loop {
        // Wait for a slot before taking ops, so ops keep accumulating meanwhile.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(limits.max_ops.min(64));
        batch.push(first);
        while batch.len() < limits.max_ops {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(term) = proposer.leading_term() else {
            // Never proposed: the callers may retry on the leader.
            for p in batch {
                let _ = p.reply.send(Err(NodeError::NotLeader { leader: None }));
            }
            continue;
        };
        if caught_up.load(Ordering::Acquire) != term {
            // The term's first stamp: only once everything committed before the term
            // is applied, so the applied time is the cluster's (module docs).
            let done = tokio::select! {
                done = proposer.catch_up(term) => done,
                _ = proposer.term_ended(term) => false,
            };
            if !done {
                for p in batch {
                    let _ = p.reply.send(Err(NodeError::NotLeader { leader: None }));
                }
                continue;
            }
            caught_up.store(term, Ordering::Release);
            tracing::debug!(term, "caught up: stamping from the applied cluster time");
        }
        // Callers that gave up already got "unavailable"; do not propose their ops.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (ops, waiters): (Vec<Op>, Vec<Waiter>) = batch
            .into_iter()
            .map(|p| {
                (
                    p.op,
                    Waiter {
                        enqueued: p.enqueued,
                        reply: p.reply,
                    },
                )
            })
            .unzip();
        let time_ms = clock.stamp(term, proposer.applied_ms(), Instant::now(), wall_clock_ms());
        let n = ops.len();
        metrics.batches.inc();
        metrics.batched_ops.inc_by(n as u64);
        tracing::trace!(ops = n, time_ms, term, "proposing batch");

        match proposer.propose(Command { time_ms, ops }).await {
            Err(msg) => answer_all(waiters, Err(NodeError::Unavailable(msg))),
            Ok(applied) => {
                let ended = proposer.term_ended(term);
                tokio::spawn(await_outcome(
                    applied,
                    ended,
                    permit,
                    waiters,
                    limits.abandon_after,
                    metrics.clone(),
                ));
            }
        }
    }
}

/// Wait for an entry's outcome — or for its term to end, or the abandon timeout —
/// then give its in-flight slot back and answer its callers.
async fn await_outcome(
    applied: oneshot::Receiver<WriteOutcome>,
    term_ended: BoxFuture<'static, ()>,
    permit: OwnedSemaphorePermit,
    waiters: Vec<Waiter>,
    abandon_after: Duration,
    metrics: Arc<Metrics>,
) {
    let outcome = tokio::select! {
        // An answer that is ready wins over a term change noticed at the same time.
        biased;
        r = applied => Ok(r),
        _ = term_ended => Err("this node's leadership term ended before the entry was applied"),
        _ = tokio::time::sleep(abandon_after) => Err("the entry was not applied within the abandon timeout"),
    };
    drop(permit);
    match outcome {
        Ok(result) => deliver(result, waiters, &metrics),
        Err(why) => {
            metrics.batches_abandoned.inc();
            tracing::debug!(why, "abandoned an in-flight entry; its slot is free again");
            answer_all(
                waiters,
                Err(NodeError::Unavailable(format!(
                    "{why}; it may still be applied (retry with the same lease id is safe)"
                ))),
            );
        }
    }
}

fn answer_all(waiters: Vec<Waiter>, r: Result<Reply, NodeError>) {
    for w in waiters {
        let _ = w.reply.send(r.clone());
    }
}

struct Waiter {
    enqueued: Instant,
    reply: oneshot::Sender<Result<Reply, NodeError>>,
}

type Applied = Result<WriteOutcome, oneshot::error::RecvError>;

fn deliver(result: Applied, waiters: Vec<Waiter>, metrics: &Metrics) {
    match result {
        Ok(Ok(resp)) => {
            let replies = resp.data.0;
            if replies.len() != waiters.len() {
                // Cannot happen: apply returns one reply per op. If it did, no caller
                // may be handed someone else's reply.
                tracing::error!(
                    replies = replies.len(),
                    ops = waiters.len(),
                    log_id = %resp.log_id,
                    "reply count does not match op count"
                );
            }
            let mut replies = replies.into_iter();
            for w in waiters {
                let r = match replies.next() {
                    Some(reply) => Ok(reply),
                    None => Err(NodeError::Unavailable(
                        "entry applied without a reply".into(),
                    )),
                };
                metrics.write_seconds.observe(elapsed(w.enqueued));
                let _ = w.reply.send(r);
            }
        }
        Ok(Err(ClientWriteError::ForwardToLeader(f))) => answer_all(
            waiters,
            Err(NodeError::NotLeader {
                leader: f.leader_id,
            }),
        ),
        Ok(Err(ClientWriteError::ChangeMembershipError(e))) => {
            // Only membership entries can fail this way; ours are normal entries.
            let msg = format!("unexpected membership error: {e}");
            for w in waiters {
                let _ = w.reply.send(Err(NodeError::Unavailable(msg.clone())));
            }
        }
        Err(_) => {
            // openraft dropped the responder: shutdown, or leadership lost with the
            // entry's fate unknown to this node.
            for w in waiters {
                let _ = w.reply.send(Err(NodeError::Unavailable(
                    "raft dropped the write before reporting its outcome".into(),
                )));
            }
        }
    }
}

fn elapsed(since: Instant) -> f64 {
    let d: Duration = since.elapsed();
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use openraft::{CommittedLeaderId, LogId};
    use quorate_core::Outcome;
    use quorate_store::Response;
    use tokio::sync::watch;

    /// A Raft stand-in whose answers the test hands out (or withholds).
    struct Fake {
        term: watch::Sender<Option<u64>>,
        proposed: Mutex<Vec<(Command, oneshot::Sender<WriteOutcome>)>>,
        /// Cluster time of the applied state.
        applied_ms: AtomicU64,
        /// The last term whose catch-up has completed (what the state machine has
        /// applied, as far as the batcher can tell).
        caught_up: watch::Sender<u64>,
    }

    impl Fake {
        fn new() -> Arc<Self> {
            let f = Self::lagging();
            f.caught_up.send_replace(u64::MAX);
            f
        }

        /// A leader whose state machine has not re-applied its log yet: catch-up
        /// completes only when the test says so.
        fn lagging() -> Arc<Self> {
            Arc::new(Self {
                term: watch::channel(Some(1)).0,
                proposed: Mutex::new(Vec::new()),
                applied_ms: AtomicU64::new(1_000),
                caught_up: watch::channel(0).0,
            })
        }

        fn count(&self) -> usize {
            self.proposed.lock().unwrap().len()
        }

        /// Answer the `i`-th proposal as applied, one `Noop` reply per op.
        fn apply(&self, i: usize) {
            let mut p = self.proposed.lock().unwrap();
            let (cmd, tx) = &mut p[i];
            let replies = cmd.ops.iter().map(|_| Ok(Outcome::Noop)).collect();
            let (dead, _) = oneshot::channel();
            let tx = std::mem::replace(tx, dead);
            let _ = tx.send(Ok(ClientWriteResponse {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
                data: Response(replies),
                membership: None,
            }));
        }
    }

    impl Proposer for Fake {
        fn propose(
            &self,
            cmd: Command,
        ) -> BoxFuture<'_, Result<oneshot::Receiver<WriteOutcome>, String>> {
            let (tx, rx) = oneshot::channel();
            self.proposed.lock().unwrap().push((cmd, tx));
            Box::pin(async { Ok(rx) })
        }

        fn leading_term(&self) -> Option<u64> {
            *self.term.borrow()
        }

        fn term_ended(&self, term: u64) -> BoxFuture<'static, ()> {
            let mut rx = self.term.subscribe();
            Box::pin(async move {
                let _ = rx.wait_for(|t| *t != Some(term)).await;
            })
        }

        fn applied_ms(&self) -> u64 {
            self.applied_ms.load(Ordering::SeqCst)
        }

        fn catch_up(&self, term: u64) -> BoxFuture<'static, bool> {
            let mut rx = self.caught_up.subscribe();
            Box::pin(async move { rx.wait_for(|t| *t >= term).await.is_ok() })
        }
    }

    /// A submit's answer, or a test failure after 5 s (never a hang).
    async fn within(h: JoinHandle<Result<Reply, NodeError>>) -> Result<Reply, NodeError> {
        tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("no answer within 5 s: the write is stuck")
            .expect("join")
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The scenario of the module docs: entries proposed by a leader that is then cut
    /// off are never answered by openraft. Their in-flight slots must come back when
    /// the term ends, so the re-elected node's writes succeed (before this, every
    /// write waited for a slot that never came back and answered 503).
    #[tokio::test]
    async fn abandoned_entries_give_their_slots_back_when_the_term_ends() {
        let fake = Fake::new();
        let limits = Limits {
            max_ops: 1,
            max_in_flight: 2,
            abandon_after: Duration::from_secs(3600),
        };
        let (batcher, _task) = Batcher::spawn(fake.clone(), limits, Arc::new(Metrics::new()));
        let op = || Op::Release {
            lease_id: "l".into(),
        };
        let stuck: Vec<_> = (0..2)
            .map(|_| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(op()).await })
            })
            .collect();
        eventually("two proposals", || fake.count() == 2).await;
        // Both slots are taken by entries openraft will never answer.
        let b = batcher.clone();
        let third = tokio::spawn(async move { b.submit(op()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.count(), 2, "a third entry must wait for a slot");

        // Leadership moves on (this node is re-elected in a later term).
        fake.term.send_replace(Some(3));
        for s in stuck {
            let r = within(s).await;
            assert!(matches!(r, Err(NodeError::Unavailable(_))), "{r:?}");
        }
        eventually("the third entry to be proposed", || fake.count() == 3).await;
        fake.apply(2);
        assert_eq!(within(third).await, Ok(Ok(Outcome::Noop)));
    }

    #[tokio::test]
    async fn unanswered_entries_give_their_slots_back_after_the_abandon_timeout() {
        let fake = Fake::new();
        let limits = Limits {
            max_ops: 1,
            max_in_flight: 1,
            abandon_after: Duration::from_millis(100),
        };
        let (batcher, _task) = Batcher::spawn(fake.clone(), limits, Arc::new(Metrics::new()));
        let b = batcher.clone();
        let first = within(tokio::spawn(async move { b.submit(Op::Noop).await })).await;
        assert!(matches!(first, Err(NodeError::Unavailable(_))), "{first:?}");
        let b = batcher.clone();
        let second = tokio::spawn(async move { b.submit(Op::Noop).await });
        eventually("the second entry to be proposed", || fake.count() == 2).await;
        fake.apply(1);
        assert_eq!(within(second).await, Ok(Ok(Outcome::Noop)));
    }

    #[tokio::test]
    async fn a_follower_never_proposes_and_answers_not_leader() {
        let fake = Fake::new();
        fake.term.send_replace(None);
        let limits = Limits {
            max_ops: 4,
            max_in_flight: 1,
            abandon_after: Duration::from_secs(1),
        };
        let (batcher, _task) = Batcher::spawn(fake.clone(), limits, Arc::new(Metrics::new()));
        let r = batcher.submit(Op::Noop).await;
        assert_eq!(r, Err(NodeError::NotLeader { leader: None }));
        assert_eq!(fake.count(), 0);
        assert_eq!(batcher.cluster_time(), None);
    }

    /// Issue 21's over-admission: after a whole-cluster restart the new leader's
    /// applied time is 0 until it re-applies its log. Stamping then took the leader's
    /// (fast) wall clock as the epoch and expired every lease of before the outage.
    /// The first stamp of a term must wait until the state has caught up, and then
    /// continue from the applied time.
    #[tokio::test]
    async fn no_entry_is_stamped_before_the_leader_has_applied_its_log() {
        let fake = Fake::lagging();
        fake.applied_ms.store(0, Ordering::SeqCst); // nothing re-applied yet
        let limits = Limits {
            max_ops: 4,
            max_in_flight: 1,
            abandon_after: Duration::from_secs(3600),
        };
        let (batcher, _task) = Batcher::spawn(fake.clone(), limits, Arc::new(Metrics::new()));
        let b = batcher.clone();
        let write = tokio::spawn(async move { b.submit(Op::Noop).await });
        // Reads see no leader clock either while the log is being re-applied.
        tokio::task::yield_now().await;
        assert_eq!(batcher.cluster_time(), None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.count(), 0, "an entry was stamped before catch-up");

        // The log is re-applied: cluster time stood at 123_456 before the outage.
        fake.applied_ms.store(123_456, Ordering::SeqCst);
        fake.caught_up.send_replace(1);
        eventually("the entry to be proposed", || fake.count() == 1).await;
        let stamped = fake.proposed.lock().unwrap()[0].0.time_ms;
        assert!(
            (123_456..123_456 + 1_000).contains(&stamped),
            "stamped {stamped}: not continued from the applied cluster time"
        );
        fake.apply(0);
        assert_eq!(within(write).await, Ok(Ok(Outcome::Noop)));
        assert!(batcher.cluster_time().is_some());
    }

    #[tokio::test]
    async fn a_term_that_ends_before_catch_up_proposes_nothing() {
        let fake = Fake::lagging();
        let limits = Limits {
            max_ops: 4,
            max_in_flight: 1,
            abandon_after: Duration::from_secs(3600),
        };
        let (batcher, _task) = Batcher::spawn(fake.clone(), limits, Arc::new(Metrics::new()));
        let b = batcher.clone();
        let write = tokio::spawn(async move { b.submit(Op::Noop).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        fake.term.send_replace(None);
        assert_eq!(
            within(write).await,
            Err(NodeError::NotLeader { leader: None })
        );
        assert_eq!(fake.count(), 0);
    }
}
