//! openraft's `RaftNetwork` over the node's [`PeerClient`].
//!
//! One [`PeerConnection`] per target, all sharing the node's pooled client. Votes and
//! snapshots are encoded with the peer codec, POSTed with openraft's per-RPC TTL, and
//! decoded. Appends — every entry and every heartbeat, the bulk of peer traffic — go
//! over one append stream per connection instead (`protocol`'s frames): one HTTP
//! upgrade when the stream opens, then a length-prefixed request and answer per append,
//! with no HTTP parsing, routing, headers or per-request signature on either side
//! (issue 22's profile put a follower's HTTP serving at a fifth of its CPU). The stream
//! is authenticated once, by the signed upgrade request and, under `[tls]`, by the
//! connection's certificates; the answers' integrity comes from TLS, as for every other
//! peer answer.
//!
//! A stream is taken out of the connection for each exchange and put back only after a
//! whole answer has been read, so an exchange that fails, times out or is cancelled
//! leaves no stream whose next answer could belong to an older request. An append
//! that fails on a stream that had been used before is sent once more on a fresh one
//! (the peer may simply have restarted; an append is idempotent in Raft). A peer that
//! answers the upgrade with 404 or 405 predates streams: appends to it go through
//! `POST /raft/append` for [`STREAM_RETRY_AFTER`] before the stream is tried again.
//!
//! Errors are mapped so that openraft reacts the way the failure deserves:
//! - could not connect → [`Unreachable`]: openraft backs off (our `backoff`)
//!   instead of hammering a dead node every heartbeat;
//! - no answer within the TTL → [`RPCError::Timeout`];
//! - the peer answered with a Raft error → [`RPCError::RemoteError`] (e.g. a higher vote);
//! - anything else (reset connection, undecodable body, 4xx/5xx) → [`NetworkError`].

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use quorate_store::{NodeInfo, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::client::{PeerClient, PeerError};
use super::protocol::{self, paths, StreamAnswer, StreamRequest};
use super::stream::PeerStream;

/// How long appends to a peer that refused a stream (it predates them) go through
/// `POST /raft/append` before a stream is tried again (it may have been upgraded).
pub const STREAM_RETRY_AFTER: Duration = Duration::from_secs(30);

/// What an append over the stream answers: openraft's answer to the append.
type AppendAnswer = StreamAnswer<Result<AppendEntriesResponse<u64>, RaftError<u64>>>;

/// openraft's connection factory: one [`PeerConnection`] per target, all sharing the
/// node's [`PeerClient`].
#[derive(Clone, Debug)]
pub struct Network {
    id: u64,
    client: PeerClient,
}

impl Network {
    pub fn new(id: u64, client: PeerClient) -> Self {
        Self { id, client }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerConnection {
        PeerConnection {
            id: self.id,
            target,
            node: node.clone(),
            client: self.client.clone(),
            stream: Default::default(),
            no_stream_until: None,
        }
    }
}

/// Raft RPCs from this node to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    id: u64,
    target: u64,
    node: NodeInfo,
    client: PeerClient,
    /// The append stream, between exchanges (taken out during one). In a mutex only
    /// because openraft wants the connection `Sync` and an upgraded connection is not;
    /// it is reached through `&mut self` (`get_mut`), never locked.
    stream: std::sync::Mutex<Option<PeerStream>>,
    /// Until then, appends go through `POST /raft/append`: the peer refused a stream.
    no_stream_until: Option<Instant>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, NodeInfo, RaftError<u64, E>>>;

fn network_error<E: StdError>(msg: impl ToString) -> RPCError<u64, NodeInfo, E> {
    RPCError::Network(NetworkError::from(AnyError::error(msg)))
}

/// How an append over a stream ended, when it did not end with openraft's answer.
enum StreamFailure {
    /// The peer does not serve streams (404/405 to the upgrade).
    NotServed,
    /// Could not get a stream; the mapped error.
    Open(RPCError<u64, NodeInfo, RaftError<u64>>),
    /// The stream broke during the exchange: the append may or may not have arrived.
    Broken(String),
    /// The peer answered, with something other than openraft's answer.
    Answered(RPCError<u64, NodeInfo, RaftError<u64>>),
}

impl PeerConnection {
    /// Map a failed request to the peer to the error openraft should see.
    fn map_peer_error<E: StdError>(
        &self,
        e: PeerError,
        action: RPCTypes,
        ttl: Duration,
    ) -> RPCError<u64, NodeInfo, E> {
        match e {
            PeerError::Connect(_) => RPCError::Unreachable(Unreachable::new(&e)),
            PeerError::Timeout => self.timeout(action, ttl),
            // The peer is up but shutting down or overloaded: back off.
            PeerError::Status(503, _) => RPCError::Unreachable(Unreachable::new(&e)),
            PeerError::Status(..) | PeerError::Transport(_) => {
                RPCError::Network(NetworkError::new(&e))
            }
        }
    }

    fn timeout<E: StdError>(&self, action: RPCTypes, ttl: Duration) -> RPCError<u64, NodeInfo, E> {
        RPCError::Timeout(Timeout {
            action,
            id: self.id,
            target: self.target,
            timeout: ttl,
        })
    }

    /// Put the stream back after a whole exchange.
    fn keep(&mut self, stream: PeerStream) {
        *self
            .stream
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stream);
    }

    /// One append over the stream: the existing one, or a new one. On anything but a
    /// whole answer the stream is dropped (it is out of `self.stream` meanwhile).
    async fn append_on_stream(
        &mut self,
        body: &[u8],
        ttl: Duration,
    ) -> Result<Result<AppendEntriesResponse<u64>, RaftError<u64>>, (StreamFailure, bool)> {
        let slot = self
            .stream
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut stream, reused) = match slot.take() {
            Some(s) => (s, true),
            None => {
                let s = PeerStream::open(&self.client, self.target, &self.node.raft_addr, ttl)
                    .await
                    .map_err(|e| match e {
                        PeerError::Status(404 | 405, _) => (StreamFailure::NotServed, false),
                        e => (
                            StreamFailure::Open(self.map_peer_error(
                                e,
                                RPCTypes::AppendEntries,
                                ttl,
                            )),
                            false,
                        ),
                    })?;
                tracing::debug!(target = self.target, "append stream opened");
                (s, false)
            }
        };
        // Either way the append may or may not have arrived; it is idempotent.
        let bytes = stream
            .exchange(body)
            .await
            .map_err(|e| (StreamFailure::Broken(e.to_string()), reused))?;
        let answer: AppendAnswer = protocol::decode(&bytes).map_err(|e| {
            (
                StreamFailure::Answered(network_error(format!("decode append answer: {e}"))),
                false,
            )
        })?;
        match answer {
            StreamAnswer::Done(r) => {
                self.keep(stream);
                Ok(r)
            }
            StreamAnswer::Unavailable(why) => {
                // Like a 503: the stream stays, openraft backs off.
                self.keep(stream);
                Err((
                    StreamFailure::Answered(RPCError::Unreachable(Unreachable::new(
                        &AnyError::error(why),
                    ))),
                    false,
                ))
            }
            StreamAnswer::Refused(why) => Err((
                StreamFailure::Answered(network_error(format!("append refused: {why}"))),
                false,
            )),
        }
    }

    /// An append: over the stream, falling back to `POST /raft/append` for a peer that
    /// does not serve streams. The whole of it (opening a stream, one retry) within
    /// openraft's TTL.
    async fn append(
        &mut self,
        req: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        if self.no_stream_until.is_some_and(|t| Instant::now() < t) {
            return self
                .rpc(RPCTypes::AppendEntries, paths::APPEND, req, option)
                .await;
        }
        let ttl = option.hard_ttl();
        let frame: StreamRequest<_, &protocol::ForwardWrites> = StreamRequest::Append(req);
        let body = protocol::encode(&frame).map_err(|e| network_error(format!("encode: {e}")))?;
        let exchange = async {
            match self.append_on_stream(&body, ttl).await {
                // A stream that served before may just be stale (the peer restarted):
                // once more on a fresh one.
                Err((StreamFailure::Broken(why), true)) => {
                    tracing::debug!(target = self.target, %why, "append stream broke; reopening");
                    self.append_on_stream(&body, ttl).await.map_err(|(f, _)| f)
                }
                r => r.map_err(|(f, _)| f),
            }
        };
        let outcome = match tokio::time::timeout(ttl, exchange).await {
            Ok(o) => o,
            Err(_) => return Err(self.timeout(RPCTypes::AppendEntries, ttl)),
        };
        match outcome {
            Ok(r) => r.map_err(|e| {
                RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.node.clone(),
                    e,
                ))
            }),
            Err(StreamFailure::NotServed) => {
                tracing::info!(
                    target = self.target,
                    "peer does not serve append streams; using POST {} for {:?}",
                    paths::APPEND,
                    STREAM_RETRY_AFTER
                );
                self.no_stream_until = Some(Instant::now() + STREAM_RETRY_AFTER);
                self.rpc(RPCTypes::AppendEntries, paths::APPEND, req, option)
                    .await
            }
            Err(StreamFailure::Broken(why)) => Err(network_error(why)),
            Err(StreamFailure::Open(e) | StreamFailure::Answered(e)) => Err(e),
        }
    }

    /// One RPC: encode, POST, decode `Result<Resp, RaftError<E>>`, map errors.
    async fn rpc<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: StdError + DeserializeOwned,
    {
        let body = protocol::encode(req).map_err(|e| network_error(format!("encode: {e}")))?;
        let ttl = option.hard_ttl();
        let bytes = self
            .client
            .post(self.target, &self.node.raft_addr, path, body, ttl)
            .await
            .map_err(|e| self.map_peer_error(e, action, ttl))?;
        let res: Result<Resp, RaftError<u64, E>> = protocol::decode(&bytes)
            .map_err(|e| network_error(format!("decode {action} response: {e}")))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    #[tracing::instrument(level = "trace", skip_all, fields(target = self.target))]
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.append(&req, &option).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target))]
    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.rpc(RPCTypes::InstallSnapshot, paths::SNAPSHOT, &req, &option)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target))]
    async fn vote(
        &mut self,
        req: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.rpc(RPCTypes::Vote, paths::VOTE, &req, &option).await
    }

    /// After an [`Unreachable`] error: 100 ms, doubling to 1 s, reset by the next
    /// success. Short enough that a restarted peer is caught up within a second,
    /// long enough that a dead one does not fill the log.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            (0..).map(|i: u32| {
                Duration::from_millis(100u64 << i.min(4)).min(Duration::from_secs(1))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use openraft::Vote;

    use super::*;
    use crate::peer::protocol::{read_frame, write_frame};

    /// What a fake peer saw.
    #[derive(Default)]
    struct Seen {
        /// `POST /raft/stream` requests (answered 404 when streams are off).
        stream_requests: AtomicUsize,
        /// Appends answered on streams.
        frames: AtomicUsize,
        /// `POST /raft/append` requests.
        posts: AtomicUsize,
    }

    /// A peer that answers every append with success: over streams (each closed by
    /// the peer after `frames_per_stream` appends) when `streams`, else only as
    /// requests (404 to the upgrade, as a node that predates streams).
    struct Fake {
        seen: Arc<Seen>,
        streams: bool,
        frames_per_stream: usize,
    }

    type AppendResult = Result<AppendEntriesResponse<u64>, RaftError<u64>>;

    async fn fake_append(State(f): State<Arc<Fake>>, body: Bytes) -> Vec<u8> {
        f.seen.posts.fetch_add(1, Ordering::SeqCst);
        let _: AppendEntriesRequest<TypeConfig> = protocol::decode(&body).expect("an append");
        let answer: AppendResult = Ok(AppendEntriesResponse::Success);
        protocol::encode(&answer).expect("encode")
    }

    async fn fake_stream(State(f): State<Arc<Fake>>, mut req: axum::extract::Request) -> Response {
        f.seen.stream_requests.fetch_add(1, Ordering::SeqCst);
        if !f.streams {
            return StatusCode::NOT_FOUND.into_response();
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = hyper_util::rt::TokioIo::new(on_upgrade.await.expect("upgrade"));
            for _ in 0..f.frames_per_stream {
                let Ok(Some(bytes)) = read_frame(&mut io).await else {
                    return;
                };
                let req: StreamRequest<AppendEntriesRequest<TypeConfig>> =
                    protocol::decode(&bytes).expect("a stream request");
                assert!(matches!(req, StreamRequest::Append(_)), "{req:?}");
                f.seen.frames.fetch_add(1, Ordering::SeqCst);
                let answer: AppendAnswer = StreamAnswer::Done(Ok(AppendEntriesResponse::Success));
                let out = protocol::encode(&answer).expect("encode");
                if write_frame(&mut io, &out).await.is_err() {
                    return;
                }
            }
            // Dropping `io` closes the stream, as a restarted peer would have.
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", protocol::STREAM_PROTOCOL)
            .body(axum::body::Body::empty())
            .expect("response")
    }

    /// Start a fake peer; a connection to it from node 1.
    async fn connect(streams: bool, frames_per_stream: usize) -> (PeerConnection, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let fake = Arc::new(Fake {
            seen: seen.clone(),
            streams,
            frames_per_stream,
        });
        let app = axum::Router::new()
            .route(paths::APPEND, post(fake_append))
            .route(paths::STREAM, post(fake_stream))
            .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client =
            PeerClient::new(Duration::from_secs(2), Default::default(), None).expect("client");
        let node = NodeInfo {
            api_addr: addr.clone(),
            raft_addr: addr,
        };
        let conn = Network::new(1, client).new_client(2, &node).await;
        (conn, seen)
    }

    fn heartbeat() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        }
    }

    async fn append(conn: &mut PeerConnection) {
        let r = conn
            .append_entries(heartbeat(), RPCOption::new(Duration::from_secs(5)))
            .await
            .expect("append answered");
        assert_eq!(r, AppendEntriesResponse::Success);
    }

    #[tokio::test]
    async fn appends_share_one_stream() {
        let (mut conn, seen) = connect(true, usize::MAX).await;
        for _ in 0..5 {
            append(&mut conn).await;
        }
        assert_eq!(seen.stream_requests.load(Ordering::SeqCst), 1);
        assert_eq!(seen.frames.load(Ordering::SeqCst), 5);
        assert_eq!(seen.posts.load(Ordering::SeqCst), 0);
    }

    /// A stream the peer closed (it restarted, say) costs no failed append: the
    /// append is sent again on a fresh stream.
    #[tokio::test]
    async fn a_stream_the_peer_closed_is_reopened_and_the_append_sent_again() {
        let (mut conn, seen) = connect(true, 1).await;
        for _ in 0..3 {
            append(&mut conn).await;
        }
        assert_eq!(seen.stream_requests.load(Ordering::SeqCst), 3);
        assert_eq!(seen.frames.load(Ordering::SeqCst), 3);
        assert_eq!(seen.posts.load(Ordering::SeqCst), 0);
    }

    /// A peer that predates streams gets every append as a request, and is not asked
    /// for a stream again before `STREAM_RETRY_AFTER`.
    #[tokio::test]
    async fn a_peer_without_streams_gets_appends_as_requests() {
        let (mut conn, seen) = connect(false, 0).await;
        for _ in 0..3 {
            append(&mut conn).await;
        }
        assert_eq!(seen.stream_requests.load(Ordering::SeqCst), 1);
        assert_eq!(seen.posts.load(Ordering::SeqCst), 3);
    }
}
