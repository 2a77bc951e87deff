//! The follower's forwarding pipeline: many forwarded writes, few peer requests.
//!
//! Two thirds of the writes a three-node cluster receives arrive at a follower, and
//! each used to cost the follower and the leader one HTTP request of their own
//! (signing, a pooled connection's turn, a handler, a reply). Here they are queued
//! and one loop turns the queue into requests to the leader — a frame on a peer
//! stream ([`PeerTransport`]), or `POST /forward/writes` to a leader without
//! streams — the way the leader's [`Batcher`](super::batcher) turns ops into log
//! entries:
//!
//! 1. wait for a free in-flight slot (at most `max_in_flight` requests at once);
//! 2. take the first queued write, then whatever else is already queued for the same
//!    leader, up to `max_ops` (writes that arrived while earlier requests were in
//!    flight share the next one; a write for another leader waits for the next round);
//! 3. drop writes whose caller already gave up, send the rest in one request that
//!    waits as long as its most patient caller, and hand each caller the answer at
//!    its own position.
//!
//! **Each caller's rules are unchanged.** Every op keeps its own caller (`Op::As`,
//! checked by the leader per op), the request is signed like any peer request (or
//! travels on a stream opened by one), and each caller waits no longer than its own
//! deadline. A failure of the request as a whole reaches exactly the callers it
//! carried, typed by what it says about delivery: [`NodeError::Unreachable`] (not
//! delivered — no connection, no stream, a frame not written whole — so certainly
//! not applied, and the router may retry elsewhere), else [`NodeError::Unavailable`]
//! (outcome unknown, never retried). Per-op answers (`NotLeader`, `Refused`, a reply) pass through
//! unchanged, so `routing.rs` applies the same retry rules as for a lone forward.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use quorate_core::{Op, Reply};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout_at;

use super::tokio_deadline;
use crate::backend::NodeError;
use crate::peer::protocol::{
    self, paths, ForwardAnswers, ForwardWrites, StreamAnswer, StreamRequest, MAX_FORWARD_OPS,
};
use crate::peer::{ExchangeError, PeerClient, PeerError, PeerStream};
use crate::telemetry::Metrics;

/// One answer per op of a request, or why the request as a whole failed.
pub type BatchResult = Result<ForwardAnswers<NodeError>, NodeError>;

/// How forwarded writes reach the leader. A trait so that tests can count requests
/// and fail some of them without a cluster.
pub trait Transport: Send + Sync + 'static {
    /// Send `ops` to `leader` (at `addr`) in one request, giving up after `timeout`.
    fn send(
        &self,
        leader: u64,
        addr: String,
        ops: ForwardWrites,
        timeout: Duration,
    ) -> BoxFuture<'static, BatchResult>;
}

/// The production [`Transport`]: forwarded writes on peer streams to the leader
/// (`peer::stream`, a `Writes` frame each), or `POST /forward/writes` through the
/// pooled, signing peer client to a leader that does not serve streams.
///
/// Streams are kept per leader, idle ones at most [`MAX_IDLE_STREAMS`] (one per
/// request in flight is all the forwarding loop needs). Each request takes one out
/// and puts it back after a whole answer. What a failure says about delivery is kept
/// exact, as for a request: a stream that could not be opened, or a frame that could
/// not be written whole, delivered nothing ([`NodeError::Unreachable`]); a frame
/// written without a whole answer back may have been decided
/// ([`NodeError::Unavailable`]), and is never retried. So that a stream the leader
/// closed meanwhile (it restarted, or closed an idle stream) is not what turns a
/// write's outcome unknown, an idle stream is checked before use and dropped if
/// closed.
#[derive(Debug, Clone)]
pub struct PeerTransport {
    peers: PeerClient,
    idle: Arc<Mutex<BTreeMap<u64, Vec<PeerStream>>>>,
    /// Leaders that answered a stream upgrade 404, and until when they get requests.
    no_stream_until: Arc<Mutex<BTreeMap<u64, Instant>>>,
}

/// Most idle streams kept per leader.
pub const MAX_IDLE_STREAMS: usize = 8;

/// How long writes to a leader that refused a stream (it predates them) go as
/// requests before a stream is tried again.
pub const STREAM_RETRY_AFTER: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only inserts and removes happen under these locks; poisoning cannot corrupt them.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PeerTransport {
    pub fn new(peers: PeerClient) -> Self {
        Self {
            peers,
            idle: Arc::default(),
            no_stream_until: Arc::default(),
        }
    }

    /// An idle stream to `leader` that the leader has not closed, if any.
    fn take_idle(&self, leader: u64) -> Option<PeerStream> {
        let mut idle = lock(&self.idle);
        let streams = idle.get_mut(&leader)?;
        while let Some(mut s) = streams.pop() {
            if !s.is_stale() {
                return Some(s);
            }
        }
        None
    }

    /// Idle streams to `leader` the leader has not closed (closed ones are dropped).
    #[cfg(test)]
    fn live_idle(&self, leader: u64) -> usize {
        let mut idle = lock(&self.idle);
        let streams = idle.entry(leader).or_default();
        streams.retain_mut(|s| !s.is_stale());
        streams.len()
    }

    fn put_idle(&self, leader: u64, stream: PeerStream) {
        let mut idle = lock(&self.idle);
        let streams = idle.entry(leader).or_default();
        if streams.len() < MAX_IDLE_STREAMS {
            streams.push(stream);
        }
    }

    /// `ops` in one frame on a stream to `leader`; `None` if the leader does not serve
    /// streams (nothing was sent).
    async fn send_on_stream(
        &self,
        leader: u64,
        addr: &str,
        ops: &ForwardWrites,
        timeout: Duration,
    ) -> Option<BatchResult> {
        let unreachable =
            |why: String| NodeError::Unreachable(format!("leader {leader} at {addr}: {why}"));
        let unavailable =
            |why: String| NodeError::Unavailable(format!("leader {leader} at {addr}: {why}"));
        let request: StreamRequest<(), &ForwardWrites> = StreamRequest::Writes {
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            ops,
        };
        let frame = match protocol::encode(&request) {
            Ok(f) => f,
            Err(e) => return Some(Err(unreachable(format!("cannot encode writes: {e}")))),
        };
        let mut stream = match self.take_idle(leader) {
            Some(s) => s,
            // Opening carries no write: whatever goes wrong, nothing was decided.
            None => match PeerStream::open(&self.peers, leader, addr, timeout).await {
                Ok(s) => s,
                Err(PeerError::Status(404 | 405, _)) => return None,
                Err(e) => return Some(Err(unreachable(format!("cannot open a stream: {e}")))),
            },
        };
        let bytes = match stream.exchange(&frame).await {
            Ok(b) => b,
            Err(e @ ExchangeError::NotSent(_)) => return Some(Err(unreachable(e.to_string()))),
            Err(e @ ExchangeError::NoAnswer(_)) => return Some(Err(unavailable(e.to_string()))),
        };
        let answer: StreamAnswer<ForwardAnswers<NodeError>> = match protocol::decode(&bytes) {
            Ok(a) => a,
            Err(e) => return Some(Err(unavailable(format!("undecodable answer: {e}")))),
        };
        Some(match answer {
            StreamAnswer::Done(answers) => {
                self.put_idle(leader, stream);
                Ok(answers)
            }
            // Refused before any op was decided, as a 4xx/5xx to a request is.
            StreamAnswer::Unavailable(why) | StreamAnswer::Refused(why) => {
                Err(unavailable(format!("refused the writes: {why}")))
            }
        })
    }

    /// `ops` through `POST /forward/writes` (or one by one to a leader that predates
    /// that route).
    async fn send_as_request(
        &self,
        leader: u64,
        addr: &str,
        ops: ForwardWrites,
        timeout: Duration,
    ) -> BatchResult {
        let body = protocol::encode(&ops)
            .map_err(|e| NodeError::Unreachable(format!("cannot encode writes: {e}")))?;
        let sent = self
            .peers
            .post(leader, addr, paths::FORWARD_WRITES, body, timeout)
            .await;
        match sent {
            Ok(bytes) => protocol::decode::<ForwardAnswers<NodeError>>(&bytes).map_err(|e| {
                NodeError::Unavailable(format!("undecodable answer from leader {leader}: {e}"))
            }),
            // A leader that predates `/forward/writes` (a rolling upgrade): the
            // route is unknown, so nothing was decided; send the ops one by one.
            Err(PeerError::Status(404, _)) => {
                Ok(one_by_one(&self.peers, leader, addr, ops, timeout).await)
            }
            Err(e) => Err(delivery_error(leader, addr, e)),
        }
    }
}

impl Transport for PeerTransport {
    fn send(
        &self,
        leader: u64,
        addr: String,
        ops: ForwardWrites,
        timeout: Duration,
    ) -> BoxFuture<'static, BatchResult> {
        let this = self.clone();
        Box::pin(async move {
            let refused = lock(&this.no_stream_until)
                .get(&leader)
                .is_some_and(|t| Instant::now() < *t);
            if !refused {
                let on_stream = tokio::time::timeout(
                    timeout,
                    this.send_on_stream(leader, &addr, &ops, timeout),
                )
                .await;
                match on_stream {
                    Ok(Some(result)) => return result,
                    Ok(None) => {
                        tracing::info!(
                            leader,
                            "leader does not serve streams; forwarding with POST {} for {:?}",
                            paths::FORWARD_WRITES,
                            STREAM_RETRY_AFTER
                        );
                        lock(&this.no_stream_until)
                            .insert(leader, Instant::now() + STREAM_RETRY_AFTER);
                    }
                    Err(_) => {
                        return Err(NodeError::Unavailable(format!(
                            "leader {leader} did not answer within the request timeout"
                        )))
                    }
                }
            }
            this.send_as_request(leader, &addr, ops, timeout).await
        })
    }
}

/// What a failed peer request says about its ops: a connect error means not
/// delivered (retry is safe), anything else leaves the outcome unknown.
pub fn delivery_error(leader: u64, addr: &str, e: PeerError) -> NodeError {
    match e {
        PeerError::Connect(_) => NodeError::Unreachable(format!("leader {leader} at {addr}: {e}")),
        PeerError::Timeout => NodeError::Unavailable(format!(
            "leader {leader} did not answer within the request timeout"
        )),
        e => NodeError::Unavailable(format!("leader {leader} at {addr}: {e}")),
    }
}

/// `ops` through `/forward/write`, one request each, concurrently.
async fn one_by_one(
    peers: &PeerClient,
    leader: u64,
    addr: &str,
    ops: ForwardWrites,
    timeout: Duration,
) -> ForwardAnswers<NodeError> {
    let each = ops.into_iter().map(|op| async move {
        let body = protocol::encode(&op)
            .map_err(|e| NodeError::Unreachable(format!("cannot encode write: {e}")))?;
        match peers
            .post(leader, addr, paths::FORWARD_WRITE, body, timeout)
            .await
        {
            Ok(bytes) => protocol::decode::<Result<Reply, NodeError>>(&bytes).unwrap_or_else(|e| {
                Err(NodeError::Unavailable(format!(
                    "undecodable answer from leader {leader}: {e}"
                )))
            }),
            Err(e) => Err(delivery_error(leader, addr, e)),
        }
    });
    futures::future::join_all(each).await
}

/// Forwarding limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most writes in one request.
    pub max_ops: usize,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
}

struct Pending {
    leader: u64,
    addr: String,
    op: Op,
    deadline: Instant,
    reply: oneshot::Sender<Result<Reply, NodeError>>,
}

/// Handle to the forwarding loop. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forwarder")
    }
}

impl Forwarder {
    /// Start the loop. It ends when every [`Forwarder`] handle is dropped, or when the
    /// returned task is aborted.
    pub fn spawn(
        transport: Arc<dyn Transport>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> (Forwarder, JoinHandle<()>) {
        let limits = Limits {
            max_ops: limits.max_ops.clamp(1, MAX_FORWARD_OPS),
            max_in_flight: limits.max_in_flight.max(1),
        };
        let (tx, rx) = mpsc::channel(limits.max_ops * (limits.max_in_flight + 2));
        let task = tokio::spawn(run(transport, rx, limits, metrics));
        (Forwarder { tx }, task)
    }

    /// Forward `op` to `leader` (at `addr`) and wait, until `deadline` at most, for
    /// its own answer.
    pub async fn forward(
        &self,
        leader: u64,
        addr: String,
        op: Op,
        deadline: Instant,
    ) -> Result<Reply, NodeError> {
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            leader,
            addr,
            op,
            deadline,
            reply,
        };
        let waited = timeout_at(tokio_deadline(deadline), async {
            if self.tx.send(pending).await.is_err() {
                // Never sent: safe to retry (the router will find the node stopping).
                return Err(NodeError::Unreachable("node is shutting down".into()));
            }
            rx.await.unwrap_or_else(|_| {
                Err(NodeError::Unavailable(
                    "forwarding stopped before the leader answered".into(),
                ))
            })
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(NodeError::Unavailable(format!(
                "leader {leader} did not answer within the request timeout"
            )))
        })
    }
}

async fn run(
    transport: Arc<dyn Transport>,
    mut rx: mpsc::Receiver<Pending>,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    // A write for another leader than the batch being built waits here for the next.
    let mut carry: Option<Pending> = None;
    loop {
        // Wait for a slot before taking writes, so writes keep accumulating meanwhile.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < limits.max_ops {
            match rx.try_recv() {
                Ok(p) if p.leader == batch[0].leader => batch.push(p),
                Ok(p) => {
                    carry = Some(p);
                    break;
                }
                Err(_) => break,
            }
        }
        // Callers that gave up already heard "unavailable"; do not send their ops.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics.forward_batches.inc();
        metrics.forward_batched_ops.inc_by(batch.len() as u64);
        tokio::spawn(send_batch(transport.clone(), batch, permit));
    }
}

/// Send one request and hand each caller its answer; the slot is free afterwards.
async fn send_batch(
    transport: Arc<dyn Transport>,
    batch: Vec<Pending>,
    permit: OwnedSemaphorePermit,
) {
    let (leader, addr) = (batch[0].leader, batch[0].addr.clone());
    // The request may take as long as its most patient caller waits.
    let latest = batch
        .iter()
        .map(|p| p.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let timeout = latest.saturating_duration_since(Instant::now());
    let mut ops = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        ops.push(p.op);
        replies.push(p.reply);
    }
    let n = ops.len();
    tracing::trace!(leader, ops = n, "forwarding writes");
    let result = transport.send(leader, addr, ops, timeout).await;
    drop(permit);
    match result {
        Ok(answers) if answers.len() == n => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Ok(answers) => {
            // Cannot happen with a leader of this version. The ops may have been
            // applied, so no caller may be told "not applied" nor given another's.
            tracing::error!(
                ops = n,
                answers = answers.len(),
                "answer count does not match op count"
            );
            let e = NodeError::Unavailable(format!(
                "leader {leader} answered {} results for {n} writes",
                answers.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use quorate_core::{Caller, CoreError};

    /// A leader stand-in: records every request, answers each op with a reply that
    /// names the op (so a caller handed another's answer shows), fails the requests
    /// the test marks, and holds every request until the test opens the gate (so the
    /// test decides what queues up behind the first request).
    struct Fake {
        requests: Mutex<Vec<Vec<Op>>>,
        /// The leader each request was sent to.
        leaders: Mutex<Vec<u64>>,
        /// Request numbers (0-based, in send order) to fail, and how.
        fail: Mutex<Vec<(usize, NodeError)>>,
        gate: tokio::sync::Semaphore,
    }

    impl Fake {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                requests: Mutex::new(Vec::new()),
                leaders: Mutex::new(Vec::new()),
                fail: Mutex::new(Vec::new()),
                gate: tokio::sync::Semaphore::new(0),
            })
        }

        fn sent(&self) -> Vec<Vec<Op>> {
            self.requests.lock().unwrap().clone()
        }
    }

    struct FakeTransport(Arc<Fake>);

    impl Transport for FakeTransport {
        fn send(
            &self,
            leader: u64,
            _addr: String,
            ops: ForwardWrites,
            _timeout: Duration,
        ) -> BoxFuture<'static, BatchResult> {
            let fake = self.0.clone();
            Box::pin(async move {
                fake.leaders.lock().unwrap().push(leader);
                let i = {
                    let mut r = fake.requests.lock().unwrap();
                    r.push(ops.clone());
                    r.len() - 1
                };
                fake.gate.acquire().await.unwrap().forget();
                let failure = fake
                    .fail
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(n, _)| *n == i)
                    .cloned();
                match failure {
                    Some((_, e)) => Err(e),
                    None => Ok(ops.iter().map(echo).collect()),
                }
            })
        }
    }

    fn lease_of(op: &Op) -> String {
        match op {
            Op::As { op, .. } => lease_of(op),
            Op::Release { lease_id } => lease_id.clone(),
            _ => String::new(),
        }
    }

    /// The fake leader's answer to `op`: "lease not found", naming the op's lease.
    fn echo(op: &Op) -> Result<Reply, NodeError> {
        Ok(Err(CoreError::LeaseNotFound {
            lease_id: lease_of(op),
        }))
    }

    fn op(i: usize) -> Op {
        Op::As {
            caller: Caller {
                name: format!("client-{i}"),
                admin: false,
            },
            op: Box::new(Op::Release {
                lease_id: format!("lease-{i}"),
            }),
        }
    }

    fn spawn(fake: &Arc<Fake>, max_ops: usize, max_in_flight: usize) -> Forwarder {
        let limits = Limits {
            max_ops,
            max_in_flight,
        };
        let transport = Arc::new(FakeTransport(fake.clone()));
        Forwarder::spawn(transport, limits, Arc::new(Metrics::new())).0
    }

    fn caller(f: &Forwarder, i: usize, wait: Duration) -> JoinHandle<Result<Reply, NodeError>> {
        let f = f.clone();
        tokio::spawn(async move {
            f.forward(1, "leader:1".into(), op(i), Instant::now() + wait)
                .await
        })
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Writes waiting in the forwarder's queue (taken by no request yet).
    fn queued(f: &Forwarder) -> usize {
        f.tx.max_capacity() - f.tx.capacity()
    }

    type Waiter = JoinHandle<Result<Reply, NodeError>>;

    /// Caller 0's request in flight (held at the fake's gate), then callers 1..=n
    /// queued behind it; returns them all once every one of them is queued.
    async fn one_in_flight_then_queued(
        f: &Forwarder,
        fake: &Fake,
        n: usize,
    ) -> (Waiter, Vec<Waiter>) {
        let first = caller(f, 0, Duration::from_secs(10));
        eventually("the first request", || fake.sent().len() == 1).await;
        let rest: Vec<_> = (1..=n)
            .map(|i| caller(f, i, Duration::from_secs(10)))
            .collect();
        eventually("the writes behind it queued", || queued(f) == n).await;
        (first, rest)
    }

    async fn answer(h: JoinHandle<Result<Reply, NodeError>>) -> Result<Reply, NodeError> {
        tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("no answer within 5 s")
            .expect("join")
    }

    /// 150 concurrent callers while one request is in flight: they share a few
    /// requests (not 150), every op is sent exactly once, and each caller gets the
    /// answer to its own op.
    #[tokio::test]
    async fn many_callers_share_few_requests_and_each_gets_its_own_answer() {
        let fake = Fake::new();
        let f = spawn(&fake, 64, 1);
        // Everyone is queued behind the one in-flight request before it is answered.
        let (first, rest) = one_in_flight_then_queued(&f, &fake, 150).await;
        fake.gate.add_permits(1000);
        assert_eq!(answer(first).await, echo(&op(0)));
        for (i, h) in (1..=150).zip(rest) {
            assert_eq!(answer(h).await, echo(&op(i)), "caller {i}");
        }
        let sent = fake.sent();
        // 1 + ceil(150 / 64) = 4 requests.
        assert_eq!(
            sent.len(),
            4,
            "{:?}",
            sent.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(sent.iter().all(|r| r.len() <= 64));
        let mut leases: Vec<String> = sent.iter().flatten().map(lease_of).collect();
        leases.sort();
        leases.dedup();
        assert_eq!(leases.len(), 151, "every op sent once");
        assert_eq!(
            sent.iter().map(Vec::len).sum::<usize>(),
            151,
            "and only once"
        );
    }

    /// A failed request fails exactly the callers it carried, with its own error;
    /// the callers of the next request are answered normally.
    #[tokio::test]
    async fn a_failed_request_fails_exactly_its_callers() {
        let fake = Fake::new();
        fake.fail
            .lock()
            .unwrap()
            .push((1, NodeError::Unreachable("connection refused".into())));
        let f = spawn(&fake, 3, 1);
        let (first, rest) = one_in_flight_then_queued(&f, &fake, 5).await;
        fake.gate.add_permits(100);
        assert_eq!(answer(first).await, echo(&op(0)));
        let answers: Vec<_> = futures::future::join_all(rest.into_iter().map(answer)).await;
        let sent = fake.sent();
        assert_eq!(sent.len(), 3, "requests of 1, 3 and 2 ops");
        let failed: Vec<String> = sent[1].iter().map(lease_of).collect();
        for (i, a) in (1..=5).zip(answers) {
            if failed.contains(&format!("lease-{i}")) {
                assert_eq!(
                    a,
                    Err(NodeError::Unreachable("connection refused".into())),
                    "caller {i}"
                );
            } else {
                assert_eq!(a, echo(&op(i)), "caller {i}");
            }
        }
        assert_eq!(failed.len(), 3);
    }

    /// A caller's wait ends at its own deadline even while the leader has not
    /// answered (outcome unknown: `Unavailable`, never retried by the router), and an
    /// op whose caller already left is not sent at all.
    #[tokio::test]
    async fn callers_wait_no_longer_than_their_deadline() {
        let fake = Fake::new();
        let f = spawn(&fake, 8, 1);
        let first = caller(&f, 0, Duration::from_millis(100));
        eventually("the first request", || fake.sent().len() == 1).await;
        let late = caller(&f, 1, Duration::from_millis(50));
        let r = answer(first).await;
        assert!(matches!(r, Err(NodeError::Unavailable(_))), "{r:?}");
        let r = answer(late).await;
        assert!(matches!(r, Err(NodeError::Unavailable(_))), "{r:?}");
        // The slot comes back when the first request is answered; the op of the
        // caller who gave up is then dropped instead of sent.
        fake.gate.add_permits(10);
        let next = caller(&f, 2, Duration::from_secs(10));
        assert_eq!(answer(next).await, echo(&op(2)));
        let sent: Vec<Vec<String>> = fake
            .sent()
            .iter()
            .map(|r| r.iter().map(lease_of).collect())
            .collect();
        assert_eq!(
            sent,
            vec![vec!["lease-0".to_string()], vec!["lease-2".to_string()]]
        );
    }

    /// A leader that predates `/forward/writes` answers 404; the ops then go one by
    /// one through `/forward/write`, each answer still at its own position.
    #[tokio::test]
    async fn a_leader_without_the_batch_route_gets_the_ops_one_by_one() {
        use axum::routing::post;
        let old_leader = axum::Router::new().route(
            paths::FORWARD_WRITE,
            post(|body: axum::body::Bytes| async move {
                let op: Op = protocol::decode(&body).expect("a single op");
                protocol::encode(&echo(&op)).expect("encode")
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move { axum::serve(listener, old_leader).await });
        let peers = PeerClient::new(Duration::from_secs(1), Default::default(), None).unwrap();
        let ops: Vec<Op> = (0..5).map(op).collect();
        let answers = PeerTransport::new(peers)
            .send(1, addr, ops.clone(), Duration::from_secs(5))
            .await
            .expect("answers");
        assert_eq!(answers, ops.iter().map(echo).collect::<Vec<_>>());
        server.abort();
    }

    /// A leader that serves streams: answers each `Writes` frame with one echo per op,
    /// closing a stream after `frames_per_stream` frames. Counts stream opens, frames
    /// and streams closed; its address.
    async fn stream_leader(frames_per_stream: usize) -> (String, Arc<[AtomicUsize; 3]>) {
        use crate::peer::protocol::{read_frame, write_frame, STREAM_PROTOCOL};
        use axum::response::IntoResponse;
        use axum::routing::post;
        let seen: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
        let counts = seen.clone();
        let leader = axum::Router::new().route(
            paths::STREAM,
            post(move |mut req: axum::extract::Request| {
                let seen = seen.clone();
                async move {
                    seen[0].fetch_add(1, Ordering::SeqCst);
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io =
                            hyper_util::rt::TokioIo::new(on_upgrade.await.expect("upgrade"));
                        for _ in 0..frames_per_stream {
                            let Ok(Some(bytes)) = read_frame(&mut io).await else {
                                break;
                            };
                            let req: StreamRequest<(), ForwardWrites> =
                                protocol::decode(&bytes).expect("a stream request");
                            let StreamRequest::Writes { ops, .. } = req else {
                                panic!("not writes")
                            };
                            seen[1].fetch_add(1, Ordering::SeqCst);
                            let answer: StreamAnswer<ForwardAnswers<NodeError>> =
                                StreamAnswer::Done(ops.iter().map(echo).collect());
                            let out = protocol::encode(&answer).expect("encode");
                            write_frame(&mut io, &out).await.expect("write");
                        }
                        drop(io);
                        seen[2].fetch_add(1, Ordering::SeqCst);
                    });
                    axum::response::Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", STREAM_PROTOCOL)
                        .body(axum::body::Body::empty())
                        .expect("response")
                        .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, leader).await });
        (addr, counts)
    }

    /// Batches to a leader that serves streams share one stream, one frame each, and
    /// every op gets its own answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_share_one_stream_to_the_leader() {
        let (addr, seen) = stream_leader(usize::MAX).await;
        let peers = PeerClient::new(Duration::from_secs(1), Default::default(), None).unwrap();
        let t = PeerTransport::new(peers);
        for round in 0..3 {
            let ops: Vec<Op> = (round * 4..round * 4 + 4).map(op).collect();
            let answers = t
                .send(1, addr.clone(), ops.clone(), Duration::from_secs(5))
                .await
                .expect("answers");
            assert_eq!(answers, ops.iter().map(echo).collect::<Vec<_>>());
        }
        assert_eq!(seen[0].load(Ordering::SeqCst), 1, "streams opened");
        assert_eq!(seen[1].load(Ordering::SeqCst), 3, "frames");
    }

    /// A stream the leader closed while it was idle is dropped, not used: the next
    /// batch opens a new one and is answered (a closed stream would have left its
    /// writes' outcome unknown).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_the_leader_closed_is_not_used() {
        let (addr, seen) = stream_leader(1).await;
        let peers = PeerClient::new(Duration::from_secs(1), Default::default(), None).unwrap();
        let t = PeerTransport::new(peers);
        for round in 0..3 {
            let answers = t
                .send(1, addr.clone(), vec![op(round)], Duration::from_secs(5))
                .await
                .expect("answers");
            assert_eq!(answers, vec![echo(&op(round))]);
            eventually("the leader to close the stream", || {
                seen[2].load(Ordering::SeqCst) == round + 1
            })
            .await;
            eventually("the closed stream to be seen", || t.live_idle(1) == 0).await;
        }
        assert_eq!(seen[0].load(Ordering::SeqCst), 3, "streams opened");
    }

    /// Writes for different leaders never share a request: while one request is in
    /// flight, writes for leaders 1 and 2 queue up interleaved; every request then
    /// carries the writes of the one leader it is sent to, and every write is sent.
    #[tokio::test]
    async fn writes_for_different_leaders_go_in_different_requests() {
        let fake = Fake::new();
        let f = spawn(&fake, 8, 1);
        let leader_of = |i: usize| 1 + (i % 2) as u64;
        let send = |i: usize| {
            let f = f.clone();
            let d = Instant::now() + Duration::from_secs(10);
            tokio::spawn(async move { f.forward(leader_of(i), "a".into(), op(i), d).await })
        };
        let first = send(0);
        eventually("the first request", || fake.sent().len() == 1).await;
        let rest: Vec<_> = (1..=8).map(send).collect();
        eventually("8 queued writes", || queued(&f) == 8).await;
        fake.gate.add_permits(100);
        assert_eq!(answer(first).await, echo(&op(0)));
        for (i, h) in (1..=8).zip(rest) {
            assert_eq!(answer(h).await, echo(&op(i)), "caller {i}");
        }
        let sent = fake.sent();
        let leaders = fake.leaders.lock().unwrap().clone();
        assert_eq!(sent.iter().map(Vec::len).sum::<usize>(), 9);
        for (ops, leader) in sent.iter().zip(&leaders) {
            for o in ops {
                let i: usize = lease_of(o)["lease-".len()..].parse().unwrap();
                assert_eq!(
                    leader_of(i),
                    *leader,
                    "{} went to leader {leader}",
                    lease_of(o)
                );
            }
        }
    }
}
