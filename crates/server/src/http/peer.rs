//! The peer port: serves the protocol of `peer::protocol` on `raft_addr`.
//!
//! Raft RPCs are handed straight to the local `Raft`; forwarded client requests are
//! decided by the node as if it had received them itself (writes go through its
//! batcher) and answered with `Result<_, NodeError>`. Every request is first checked
//! by [`authenticate_peer`] — cluster id and, with a cluster secret, the request's
//! HMAC signature, its freshness and its nonce (`security::signing`) — before any
//! body is decoded, so a forged or replayed append never reaches openraft. Under
//! `[tls]` the listener also requires a client certificate from the cluster CA
//! (`security::tls`), checked in the handshake before any of this; that certificate
//! must name one node (subjectAltName `quorate://node/<id>`), and a Raft RPC is
//! refused (`wrong_node`) unless its sender — the leader or candidate id in its vote —
//! is that node: one node's key cannot speak for another. Bodies that do not
//! decode get 400, never a panic. Raft RPCs to a node that started empty wait (503)
//! until it has shown it is not a voter that lost its data (`raft/rejoin.rs`).
//!
//! `POST /raft/stream` passes the same check, then upgrades the connection to a
//! peer stream (`peer::protocol`'s frames), served by [`serve_stream`] until the
//! sender closes it or the node stops: each frame gets the checks its request would
//! get above (an append: the gate, the certificate's node; forwarded writes: each
//! op's caller), answered in a frame.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use quorate_core::{Op, Query};
use quorate_proto::AddMemberRequest;
use quorate_store::TypeConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::NodeError;
use crate::http::server::ClientCertificate;
use crate::peer::protocol::{
    decode, encode, paths, read_frame, write_frame, ForwardAnswers, ForwardWrites, ProbeResponse,
    StreamAnswer, StreamRequest, MAX_FORWARD_OPS, MAX_RPC_BYTES, STREAM_PROTOCOL, TIMEOUT_HEADER,
};
use crate::raft::Node;
use crate::security::{PeerAuth, PeerRefusal};

/// What the peer handlers reach.
#[derive(Clone, Debug)]
struct PeerState {
    node: Arc<Node>,
    auth: Arc<PeerAuth>,
    /// Under `[tls]`: every request must come with a client certificate naming a node.
    node_certificates: bool,
}

/// The node the caller's client certificate names (set by [`authenticate_peer`]
/// under `[tls]`), and the caller's address for the refusal log.
#[derive(Clone, Debug)]
struct CertifiedNode {
    id: u64,
    peer: String,
}

/// The router served on `raft_addr`. With `node_certificates` (the listener does
/// mutual TLS), each request must carry a client certificate naming a node, and a
/// Raft RPC must come from that node.
pub fn router(node: Arc<Node>, auth: PeerAuth, node_certificates: bool) -> Router {
    let state = PeerState {
        node,
        auth: Arc::new(auth),
        node_certificates,
    };
    Router::new()
        .route(paths::APPEND, post(append))
        .route(paths::STREAM, post(stream))
        .route(paths::VOTE, post(vote))
        .route(paths::SNAPSHOT, post(snapshot))
        .route(paths::PROBE, get(probe))
        .route(paths::FORWARD_WRITE, post(forward_write))
        .route(paths::FORWARD_WRITES, post(forward_writes))
        .route(paths::FORWARD_READ, post(forward_read))
        .route(paths::FORWARD_ADD_MEMBER, post(forward_add_member))
        .route(paths::FORWARD_REMOVE_MEMBER, post(forward_remove_member))
        .layer(DefaultBodyLimit::max(MAX_RPC_BYTES as usize))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate_peer,
        ))
        .with_state(state)
}

/// Refuse peer requests from another cluster, and (with a cluster secret) requests
/// whose signature is missing, wrong, stale or replayed; count and log each refusal
/// with the caller's address. Runs before any handler, so nothing unauthenticated
/// reaches openraft or the node. To check a signature the body is buffered here (at
/// most [`MAX_RPC_BYTES`], the same limit the handlers apply) and handed on.
async fn authenticate_peer(
    State(st): State<PeerState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    let path = parts.uri.path().to_string();
    let refuse = |refusal: PeerRefusal| refused(&st.node, &peer, &path, refusal);
    // The cluster id first: another cluster's traffic is refused without reading it.
    if let Err(r) = st.auth.check_cluster(&parts.headers) {
        return refuse(r);
    }
    if st.node_certificates {
        // The handshake proved the CA signed it; which node it speaks for is ours to
        // check. A CA-signed certificate that names no node speaks for none.
        let named = parts
            .extensions
            .get::<ClientCertificate>()
            .map(|c| crate::security::tls::node_of(&c.0));
        match named {
            Some(Ok(id)) => {
                parts.extensions.insert(CertifiedNode {
                    id,
                    peer: peer.clone(),
                });
            }
            Some(Err(why)) => {
                tracing::warn!(%peer, %why, "client certificate names no node");
                return refuse(PeerRefusal::NoNodeName);
            }
            None => return refuse(PeerRefusal::NoNodeName),
        }
    }
    if !st.auth.signs() {
        return next
            .run(axum::extract::Request::from_parts(parts, body))
            .await;
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_RPC_BYTES) {
        return refuse(PeerRefusal::TooLarge);
    }
    let limit = usize::try_from(MAX_RPC_BYTES).unwrap_or(usize::MAX);
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read peer request body");
            return refuse(PeerRefusal::BadBody);
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    if let Err(r) = st
        .auth
        .check(parts.method.as_str(), path, &parts.headers, &bytes)
    {
        return refuse(r);
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// Count and log a refused peer request from `peer`, and answer it.
fn refused(node: &Node, peer: &str, path: &str, refusal: PeerRefusal) -> Response {
    let reason = refusal.reason();
    node.metrics().peer_rejected(reason);
    tracing::warn!(%peer, reason, %path, "refused peer request: {refusal}");
    let status = match refusal {
        PeerRefusal::WrongCluster | PeerRefusal::WrongNode => StatusCode::FORBIDDEN,
        PeerRefusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        PeerRefusal::BadBody => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNAUTHORIZED,
    };
    (status, format!("peer request refused: {reason}")).into_response()
}

/// A `Req` body, or why it does not decode (answered 400 by [`bad_body`]).
fn decode_body<Req: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<Req, String> {
    decode(bytes).map_err(|e| {
        tracing::warn!(error = %e, len = bytes.len(), "undecodable {what} body");
        format!("bad {what} body: {e}")
    })
}

fn bad_body(why: String) -> Response {
    (StatusCode::BAD_REQUEST, why).into_response()
}

/// Decode a `Req` body (400 if it does not decode), run `f`, answer its result in
/// bincode.
async fn rpc<Req, Resp, F, Fut>(bytes: Bytes, what: &'static str, f: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    match decode_body(&bytes, what) {
        Ok(req) => answer(f(req).await).await,
        Err(why) => bad_body(why),
    }
}

/// `resp` in bincode (500 if it cannot be encoded).
async fn answer<Resp: Serialize>(resp: Resp) -> Response {
    match encode(&resp) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode peer response");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}")).into_response()
        }
    }
}

/// The caller's deadline (from [`TIMEOUT_HEADER`]), capped by our own request timeout.
fn deadline(node: &Node, headers: &HeaderMap) -> Instant {
    let ours = node.request_timeout();
    let theirs = headers
        .get(TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(ours);
    Instant::now() + theirs.min(ours)
}

/// A Raft RPC: refused (503) while this node may not take part in Raft yet
/// ([`Node::raft_gate`]), else decoded; under `[tls]` refused (`wrong_node`) unless
/// its `sender` is the node the client certificate names; then handed to `f`.
async fn raft_rpc<Req, Resp, F, Fut>(
    st: PeerState,
    certified: Option<Extension<CertifiedNode>>,
    bytes: Bytes,
    what: &'static str,
    sender: fn(&Req) -> Option<u64>,
    f: F,
) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Arc<Node>, Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    let node = st.node;
    if let Err(why) = node.raft_gate() {
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    }
    let req = match decode_body::<Req>(&bytes, what) {
        Ok(r) => r,
        Err(why) => return bad_body(why),
    };
    if st.node_certificates {
        // `authenticate_peer` set it, or refused the request.
        let Some(Extension(cert)) = certified else {
            return refused(&node, "unknown", what, PeerRefusal::NoNodeName);
        };
        if let Err(refusal) = sender_is_certified(&cert, sender(&req), what) {
            return refused(&node, &cert.peer, what, refusal);
        }
    }
    answer(f(node, req).await).await
}

/// Under `[tls]`: a Raft message's sender (the leader or candidate id in its vote)
/// must be the node the client certificate names; otherwise `wrong_node`, logged with
/// both ids.
fn sender_is_certified(
    cert: &CertifiedNode,
    claimed: Option<u64>,
    what: &str,
) -> Result<(), PeerRefusal> {
    if claimed == Some(cert.id) {
        return Ok(());
    }
    tracing::warn!(
        peer = %cert.peer,
        certificate_names = cert.id,
        claimed = ?claimed,
        "a Raft {what} claims another node than the client certificate names"
    );
    Err(PeerRefusal::WrongNode)
}

async fn append(
    State(st): State<PeerState>,
    certified: Option<Extension<CertifiedNode>>,
    bytes: Bytes,
) -> Response {
    raft_rpc(
        st,
        certified,
        bytes,
        "append",
        |req: &AppendEntriesRequest<TypeConfig>| req.vote.leader_id().voted_for(),
        |node, req| async move { node.raft().append_entries(req).await },
    )
    .await
}

/// Upgrade an authenticated request (see [`authenticate_peer`]) to a peer stream
/// served by [`serve_stream`]. The upgrade happens once the 101 answer is sent; the
/// stream's task is the node's, stopped with it.
async fn stream(
    State(st): State<PeerState>,
    certified: Option<Extension<CertifiedNode>>,
    mut req: axum::extract::Request,
) -> Response {
    let asks = req.headers().get(header::UPGRADE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(STREAM_PROTOCOL.as_bytes())
    });
    if !asks {
        return (
            StatusCode::BAD_REQUEST,
            format!("{} needs `Upgrade: {STREAM_PROTOCOL}`", paths::STREAM),
        )
            .into_response();
    }
    let certified = certified.map(|Extension(c)| c);
    if st.node_certificates && certified.is_none() {
        // `authenticate_peer` set it, or refused the request.
        return refused(&st.node, "unknown", "stream", PeerRefusal::NoNodeName);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let node = st.node.clone();
    let task = tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => serve_stream(node, certified, hyper_util::rt::TokioIo::new(io)).await,
            Err(e) => tracing::debug!(error = %e, "peer stream upgrade failed"),
        }
    });
    st.node.track_task(task);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, STREAM_PROTOCOL)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// How long a served stream may go without a frame before it is closed. A leader
/// sends at least a heartbeat every `heartbeat_interval_ms` (100 ms by default) on its
/// append streams, so only a sender that vanished without closing (a host gone, a cut
/// network) is this quiet there; its stream would otherwise be held for good. A
/// follower's idle forwarding streams are closed this way too; it checks an idle
/// stream before using it (`raft::forwarder`), and a broken append stream is reopened.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serve a peer stream: read a frame (an append or forwarded writes), answer it, until
/// the sender closes the stream, a frame is refused, or the connection breaks.
#[tracing::instrument(level = "debug", skip_all, fields(certified = certified.as_ref().map(|c| c.id)))]
async fn serve_stream<S>(node: Arc<Node>, certified: Option<CertifiedNode>, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut io = tokio::io::BufStream::new(io);
    let streams = node.metrics().peer_streams.clone();
    streams.inc();
    // Decremented however the loop ends, including when the node's shutdown aborts it.
    let _open = scopeguard(move || {
        streams.dec();
    });
    loop {
        let bytes = match tokio::time::timeout(STREAM_IDLE_TIMEOUT, read_frame(&mut io)).await {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "peer stream read failed");
                break;
            }
            Err(_) => {
                tracing::debug!("peer stream idle; closing");
                break;
            }
        };
        let (out, close) = match decode_body::<StreamRequest<AppendEntriesRequest<TypeConfig>>>(
            &bytes, "stream",
        ) {
            Err(why) => (encode(&StreamAnswer::<()>::Refused(why)), true),
            Ok(StreamRequest::Append(req)) => {
                let answer = stream_append(&node, certified.as_ref(), req).await;
                let close = matches!(answer, StreamAnswer::Refused(_));
                (encode(&answer), close)
            }
            Ok(StreamRequest::Writes { timeout_ms, ops }) => {
                let answer = stream_writes(&node, timeout_ms, ops).await;
                let close = matches!(answer, StreamAnswer::Refused(_));
                (encode(&answer), close)
            }
        };
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a stream answer");
                break;
            }
        };
        if let Err(e) = write_frame(&mut io, &out).await {
            tracing::debug!(error = %e, "peer stream write failed");
            break;
        }
        if close {
            break;
        }
    }
    tracing::debug!("peer stream closed");
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// One append from a stream, checked as [`append`] checks a request: the gate, and
/// under `[tls]` a sender that is the certificate's node.
async fn stream_append(
    node: &Node,
    certified: Option<&CertifiedNode>,
    req: AppendEntriesRequest<TypeConfig>,
) -> StreamAnswer<Result<openraft::raft::AppendEntriesResponse<u64>, openraft::error::RaftError<u64>>>
{
    if let Err(why) = node.raft_gate() {
        return StreamAnswer::Unavailable(why.to_string());
    }
    if let Some(cert) = certified {
        let claimed = req.vote.leader_id().voted_for();
        if let Err(refusal) = sender_is_certified(cert, claimed, "streamed append") {
            node.metrics().peer_rejected(refusal.reason());
            return StreamAnswer::Refused(format!("peer request refused: {}", refusal.reason()));
        }
    }
    StreamAnswer::Done(node.raft().append_entries(req).await)
}

/// Forwarded writes from a stream, decided as [`forward_writes`] decides a request.
async fn stream_writes(
    node: &Node,
    timeout_ms: u64,
    ops: ForwardWrites,
) -> StreamAnswer<ForwardAnswers<NodeError>> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms).min(node.request_timeout());
    if let Err(msg) = at_most_max_ops(&ops) {
        return StreamAnswer::Refused(msg);
    }
    StreamAnswer::Done(decide_forwarded(node, ops, deadline).await)
}

async fn vote(
    State(st): State<PeerState>,
    certified: Option<Extension<CertifiedNode>>,
    bytes: Bytes,
) -> Response {
    raft_rpc(
        st,
        certified,
        bytes,
        "vote",
        |req: &VoteRequest<u64>| req.vote.leader_id().voted_for(),
        |node, req| async move { node.raft().vote(req).await },
    )
    .await
}

async fn snapshot(
    State(st): State<PeerState>,
    certified: Option<Extension<CertifiedNode>>,
    bytes: Bytes,
) -> Response {
    raft_rpc(
        st,
        certified,
        bytes,
        "snapshot",
        |req: &InstallSnapshotRequest<TypeConfig>| req.vote.leader_id().voted_for(),
        |node, req| async move { node.raft().install_snapshot(req).await },
    )
    .await
}

async fn probe(State(st): State<PeerState>) -> Json<ProbeResponse> {
    Json(st.node.probe().await)
}

/// A forwarded write must say who asked (`Op::As`: the caller the follower's API
/// authenticated), and that caller's role must allow the op. Checked before anything
/// is proposed, so a follower (or anyone holding the cluster secret) cannot get an
/// admin op into the log by forwarding it with a client's identity, or with none.
/// The core checks the same again when it applies the op, on every replica.
fn forwarded_caller_may(op: &Op) -> Result<(), NodeError> {
    let Op::As { caller, op } = op else {
        return Err(NodeError::Forbidden(format!(
            "a forwarded {} must carry its caller",
            op.kind()
        )));
    };
    if !caller.may(op) {
        return Err(NodeError::Forbidden(format!(
            "{} needs an admin token; the forwarded caller {:?} is a client",
            op.kind(),
            caller.name
        )));
    }
    Ok(())
}

async fn forward_write(State(st): State<PeerState>, h: HeaderMap, bytes: Bytes) -> Response {
    let deadline = deadline(&st.node, &h);
    rpc(bytes, "write", |op: Op| async move {
        if let Err(e) = forwarded_caller_may(&op) {
            tracing::warn!(op = op.kind(), error = %e, "refused forwarded write");
            return Err(e);
        }
        st.node.leader_write(op, deadline).await
    })
    .await
}

/// Many forwarded writes in one request (a follower's `Forwarder`): each is checked
/// and decided exactly as if it had come alone through `/forward/write`, all at once
/// (so they share the next log entries), and answered at its own position.
async fn forward_writes(State(st): State<PeerState>, h: HeaderMap, bytes: Bytes) -> Response {
    let deadline = deadline(&st.node, &h);
    let ops: ForwardWrites = match decode(&bytes) {
        Ok(ops) => ops,
        Err(e) => {
            tracing::warn!(error = %e, len = bytes.len(), "undecodable writes body");
            return (StatusCode::BAD_REQUEST, format!("bad writes body: {e}")).into_response();
        }
    };
    if let Err(msg) = at_most_max_ops(&ops) {
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    let answers = decide_forwarded(&st.node, ops, deadline).await;
    match encode(&answers) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode peer response");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}")).into_response()
        }
    }
}

/// Refuse a batch of more than [`MAX_FORWARD_OPS`] writes before any is decided.
fn at_most_max_ops(ops: &ForwardWrites) -> Result<(), String> {
    if ops.len() <= MAX_FORWARD_OPS {
        return Ok(());
    }
    let msg = format!(
        "{} writes in one request; at most {MAX_FORWARD_OPS}",
        ops.len()
    );
    tracing::warn!("refused forwarded writes: {msg}");
    Err(msg)
}

/// Decide each forwarded write exactly as if it had come alone through
/// `/forward/write`, all at once (so they share the next log entries); one answer
/// per op, in order.
async fn decide_forwarded(
    node: &Node,
    ops: ForwardWrites,
    deadline: Instant,
) -> ForwardAnswers<NodeError> {
    let each = ops.into_iter().map(|op| async move {
        if let Err(e) = forwarded_caller_may(&op) {
            tracing::warn!(op = op.kind(), error = %e, "refused forwarded write");
            return Err(e);
        }
        node.leader_write(op, deadline).await
    });
    futures::future::join_all(each).await
}

async fn forward_read(State(st): State<PeerState>, h: HeaderMap, bytes: Bytes) -> Response {
    let deadline = deadline(&st.node, &h);
    rpc(bytes, "read", |q: Query| st.node.leader_read(q, deadline)).await
}

async fn forward_add_member(State(st): State<PeerState>, h: HeaderMap, bytes: Bytes) -> Response {
    let deadline = deadline(&st.node, &h);
    rpc(bytes, "add_member", |req: AddMemberRequest| {
        st.node.leader_add_member(req, deadline)
    })
    .await
}

async fn forward_remove_member(
    State(st): State<PeerState>,
    h: HeaderMap,
    bytes: Bytes,
) -> Response {
    let deadline = deadline(&st.node, &h);
    rpc(bytes, "remove_member", |id: u64| {
        st.node.leader_remove_member(id, deadline)
    })
    .await
}
