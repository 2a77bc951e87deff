//! The peer-facing HTTP endpoint, served on `raft_addr` (never on the API port).
//!
//! Two groups of routes, both for peers only:
//! - **Raft RPC** — `POST /raft/append`, `/raft/vote`, `/raft/snapshot`: openraft's
//!   messages, handed straight to the local `Raft`. `GET /raft/probe` tells the
//!   bootstrapping node whether this node is fresh (see `node.rs`).
//! - **Forwarding** — `POST /forward/write`, `/forward/read`, `/forward/add_member`,
//!   `/forward/remove_member`: a follower that received a client request sends it to
//!   the leader here; the leader decides it as if it had received it itself (writes go
//!   through its batcher) and answers `Result<_, ForwardError>`.
//!
//! Bodies are bincode with a size limit ([`encode`] / [`decode`]), not JSON: the log
//! entries inside an append can be large, and both ends are the same binary. Bodies
//! that do not decode get 400, never a panic. The probe answers JSON so that an
//! operator can `curl` it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bincode::Options;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use quorate_core::{Op, Query};
use quorate_proto::AddMemberRequest;
use quorate_store::TypeConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::node::Node;

/// Route paths, shared by the client side (`network.rs`, `node.rs`).
pub mod paths {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    pub const PROBE: &str = "/raft/probe";
    pub const FORWARD_WRITE: &str = "/forward/write";
    pub const FORWARD_READ: &str = "/forward/read";
    pub const FORWARD_ADD_MEMBER: &str = "/forward/add_member";
    pub const FORWARD_REMOVE_MEMBER: &str = "/forward/remove_member";
}

/// Request header carrying how long the caller will wait (milliseconds).
pub const TIMEOUT_HEADER: &str = "x-quorate-timeout-ms";

/// Largest body either side encodes or accepts: an append of `max_payload_entries`
/// full batches, or a snapshot chunk, fits with room to spare.
pub const MAX_RPC_BYTES: u64 = 64 << 20;

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_RPC_BYTES)
}

/// Encode a peer message.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    codec().serialize(value)
}

/// Decode a peer message; trailing bytes and bodies over the limit are errors.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    codec().deserialize(bytes)
}

/// Why the leader did not decide a forwarded request (or a local attempt failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardError {
    /// The receiver is not the leader (it names the leader it knows). Nothing was
    /// proposed: the caller may retry with the new leader.
    NotLeader { leader: Option<u64> },
    /// The leader could not be reached at all; nothing was delivered. Retry is safe.
    Unreachable(String),
    /// No decision within the deadline, or the cluster is unavailable. A write may or
    /// may not have been applied: the caller must not retry it on its own.
    Unavailable(String),
    /// A membership change was refused.
    Membership(String),
}

/// What `GET /raft/probe` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResponse {
    pub node_id: u64,
    pub cluster_id: String,
    /// True while this node has never been part of a cluster (no vote, no log).
    pub fresh: bool,
}

/// The router served on `raft_addr`.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(paths::APPEND, post(append))
        .route(paths::VOTE, post(vote))
        .route(paths::SNAPSHOT, post(snapshot))
        .route(paths::PROBE, get(probe))
        .route(paths::FORWARD_WRITE, post(forward_write))
        .route(paths::FORWARD_READ, post(forward_read))
        .route(paths::FORWARD_ADD_MEMBER, post(forward_add_member))
        .route(paths::FORWARD_REMOVE_MEMBER, post(forward_remove_member))
        .layer(DefaultBodyLimit::max(MAX_RPC_BYTES as usize))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            authenticate_peer,
        ))
        .with_state(node)
}

/// Refuse peer requests from another cluster, or without the cluster secret when one
/// is configured; count and log each refusal with the caller's address. Runs before
/// any body is decoded, so a forged append never reaches openraft.
async fn authenticate_peer(
    State(node): State<Arc<Node>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match node.peer_auth().check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(reason) => {
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.to_string())
                .unwrap_or_else(|| "unknown".into());
            node.metrics().inc(
                "quorate_peer_rejected_total",
                "Peer (Raft/forwarding) requests refused, by reason.",
                &[("reason", reason)],
            );
            tracing::warn!(%peer, reason, path = %req.uri().path(), "refused peer request");
            let status = if reason == "wrong_cluster" {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            };
            (status, format!("peer request refused: {reason}")).into_response()
        }
    }
}

/// A bincode response body.
fn reply<T: Serialize>(value: &T) -> Response {
    match encode(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode peer response");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}")).into_response()
        }
    }
}

/// Decode a request body or answer 400.
#[allow(clippy::result_large_err)]
fn body<T: DeserializeOwned>(bytes: &Bytes, what: &str) -> Result<T, Response> {
    decode(bytes).map_err(|e| {
        tracing::warn!(error = %e, len = bytes.len(), "undecodable {what} body");
        (StatusCode::BAD_REQUEST, format!("bad {what} body: {e}")).into_response()
    })
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

async fn append(State(node): State<Arc<Node>>, bytes: Bytes) -> Response {
    let req: AppendEntriesRequest<TypeConfig> = match body(&bytes, "append") {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&node.raft().append_entries(req).await)
}

async fn vote(State(node): State<Arc<Node>>, bytes: Bytes) -> Response {
    let req: VoteRequest<u64> = match body(&bytes, "vote") {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&node.raft().vote(req).await)
}

async fn snapshot(State(node): State<Arc<Node>>, bytes: Bytes) -> Response {
    let req: InstallSnapshotRequest<TypeConfig> = match body(&bytes, "snapshot") {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&node.raft().install_snapshot(req).await)
}

async fn probe(State(node): State<Arc<Node>>) -> Json<ProbeResponse> {
    Json(node.probe().await)
}

async fn forward_write(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let op: Op = match body(&bytes, "write") {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let deadline = deadline(&node, &headers);
    reply(&node.leader_write(op, deadline).await)
}

async fn forward_read(State(node): State<Arc<Node>>, headers: HeaderMap, bytes: Bytes) -> Response {
    let q: Query = match body(&bytes, "read") {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let deadline = deadline(&node, &headers);
    reply(&node.leader_read(q, deadline).await)
}

async fn forward_add_member(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let req: AddMemberRequest = match body(&bytes, "add_member") {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let deadline = deadline(&node, &headers);
    reply(&node.leader_add_member(req, deadline).await)
}

async fn forward_remove_member(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let id: u64 = match body(&bytes, "remove_member") {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let deadline = deadline(&node, &headers);
    reply(&node.leader_remove_member(id, deadline).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_and_rejects_garbage() {
        let op = Op::Release {
            lease_id: "l-1".into(),
        };
        let bytes = encode(&op).unwrap();
        assert_eq!(decode::<Op>(&bytes).unwrap(), op);

        // Trailing bytes, truncation and random input are errors, not panics.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<Op>(&longer).is_err());
        assert!(decode::<Op>(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode::<Op>(&[0xff; 16]).is_err());
        // A length prefix claiming a huge string must not allocate it.
        let mut huge = vec![1u8]; // variant 1 = Release
        huge.push(0xfd); // varint u64 marker
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Op>(&huge).is_err());
    }

    #[test]
    fn forward_errors_round_trip() {
        let r: Result<quorate_core::Reply, ForwardError> =
            Err(ForwardError::NotLeader { leader: Some(3) });
        let bytes = encode(&r).unwrap();
        assert_eq!(
            decode::<Result<quorate_core::Reply, ForwardError>>(&bytes).unwrap(),
            r
        );
    }
}
