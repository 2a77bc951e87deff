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
//! 3. stamp the entry with the leader's wall clock (`Command::time_ms`; the state
//!    machine never reads a clock) and hand it to openraft (`client_write_ff`, in queue
//!    order, so entries are appended in the order ops were taken);
//! 4. when the entry is applied, give each caller the reply at its own index.
//!
//! A caller only ever hears "applied, here is your reply" or an error: never success
//! for an entry that was not committed. `NotLeader` means the entry was rejected or
//! truncated (never applied), so the caller may retry elsewhere; `Unavailable` means
//! the outcome is unknown. Ops whose caller has already given up (timed out) are
//! dropped before they are proposed.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::ClientWriteError;
use openraft::Raft;
use quorate_core::{Command, Op, Reply};
use quorate_store::TypeConfig;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::backend::NodeError;
use crate::telemetry::Metrics;

struct Pending {
    op: Op,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Reply, NodeError>>,
}

/// Handle to the batching loop. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

/// Unix milliseconds of the leader's clock (0 if the clock is before 1970).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Batcher {
    /// Start the loop. It ends when every [`Batcher`] handle is dropped, or when the
    /// returned task is aborted.
    pub fn spawn(
        raft: Raft<TypeConfig>,
        max_ops: usize,
        max_in_flight: usize,
        metrics: Arc<Metrics>,
    ) -> (Batcher, JoinHandle<()>) {
        let max_ops = max_ops.max(1);
        let max_in_flight = max_in_flight.max(1);
        // Room for a few full batches; beyond that, submitters wait (backpressure,
        // bounded by their request timeout).
        let (tx, rx) = mpsc::channel(max_ops * (max_in_flight + 2));
        let task = tokio::spawn(run(raft, rx, max_ops, max_in_flight, metrics));
        (Batcher { tx }, task)
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
}

async fn run(
    raft: Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Pending>,
    max_ops: usize,
    max_in_flight: usize,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    loop {
        // Wait for a slot before taking ops, so ops keep accumulating meanwhile.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_ops.min(64));
        batch.push(first);
        while batch.len() < max_ops {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // Callers that gave up already got "unavailable"; do not propose their ops.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }

        let time_ms = wall_clock_ms();
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
        let n = ops.len();
        metrics.batches.inc();
        metrics.batched_ops.inc_by(n as u64);
        tracing::trace!(ops = n, time_ms, "proposing batch");

        match raft.client_write_ff(Command { time_ms, ops }).await {
            Err(fatal) => {
                let msg = format!("raft stopped: {fatal}");
                for w in waiters {
                    let _ = w.reply.send(Err(NodeError::Unavailable(msg.clone())));
                }
            }
            Ok(applied) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let result = applied.await;
                    drop(permit);
                    deliver(result, waiters, &metrics);
                });
            }
        }
    }
}

struct Waiter {
    enqueued: Instant,
    reply: oneshot::Sender<Result<Reply, NodeError>>,
}

type Applied = Result<
    Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        ClientWriteError<u64, quorate_store::NodeInfo>,
    >,
    oneshot::error::RecvError,
>;

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
        Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
            for w in waiters {
                let _ = w.reply.send(Err(NodeError::NotLeader {
                    leader: f.leader_id,
                }));
            }
        }
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
