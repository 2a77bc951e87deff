//! The peer wire contract: paths, headers, codec and message types between nodes.
//!
//! This is the bottom of the server: it imports nothing that serves or sends these
//! messages, so the client side (`peer::client`, `peer::raft_network`, the Raft node's
//! forwarding) and the serving side (`http::peer`) both depend on it and never on each
//! other — the shape of toydb's `raft/message.rs`.
//!
//! Two groups of routes, both served on `raft_addr` (never on the API port):
//! - **Raft RPC** — `POST /raft/append`, `/raft/vote`, `/raft/snapshot`: openraft's
//!   messages. `GET /raft/probe` tells a bootstrapping node whether this node is fresh.
//! - **Forwarding** — `POST /forward/write`, `/forward/read`, `/forward/add_member`,
//!   `/forward/remove_member`: a follower sends a client's request to the leader, which
//!   answers `Result<_, NodeError>` ([`crate::backend::NodeError`]).
//!   `POST /forward/writes` carries many writes in one request ([`ForwardWrites`], at
//!   most [`MAX_FORWARD_OPS`]): the leader decides each as if it had come alone and
//!   answers [`ForwardAnswers`] (`E` = `NodeError`), one `Result` per op in request order. Each op still
//!   carries its own caller (`Op::As`), checked per op. A leader that predates the
//!   route answers 404; the sender then falls back to `/forward/write` per op.
//!
//! Bodies are bincode with a size limit ([`encode`] / [`decode`]), not JSON: the log
//! entries inside an append can be large, and both ends are the same binary. The
//! probe answers JSON so that an operator can `curl` it.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Route paths of the peer port.
pub mod paths {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    pub const PROBE: &str = "/raft/probe";
    pub const FORWARD_WRITE: &str = "/forward/write";
    pub const FORWARD_READ: &str = "/forward/read";
    pub const FORWARD_ADD_MEMBER: &str = "/forward/add_member";
    pub const FORWARD_REMOVE_MEMBER: &str = "/forward/remove_member";
    pub const FORWARD_WRITES: &str = "/forward/writes";
}

/// Body of `POST /forward/writes`: forwarded writes, each with its caller.
pub type ForwardWrites = Vec<quorate_core::Op>;

/// Answer of `POST /forward/writes`: one result per op, in request order. `E` is the
/// node layer's error (`backend::NodeError`), named by the users of this type so that
/// the wire contract stays below the layers that send and serve it.
pub type ForwardAnswers<E> = Vec<Result<quorate_core::Reply, E>>;

/// Most writes one `POST /forward/writes` may carry (a larger request is refused with
/// 400 before any op is decided).
pub const MAX_FORWARD_OPS: usize = 4096;

/// Request header carrying how long the caller will wait (milliseconds).
pub const TIMEOUT_HEADER: &str = "x-quorate-timeout-ms";

/// Header carrying the cluster id on peer requests.
pub const CLUSTER_HEADER: &str = "x-quorate-cluster";

/// Header carrying a peer request's signature when a cluster secret is configured:
/// `v1 ts=<unix ms> nonce=<32 hex> mac=<64 hex>` (see `security::signing`).
pub const AUTH_HEADER: &str = "x-quorate-auth";

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

/// What `GET /raft/probe` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResponse {
    pub node_id: u64,
    pub cluster_id: String,
    /// True while this node has never been part of a cluster (no vote, no log).
    pub fresh: bool,
    /// The answering node's wall clock (Unix ms) when it answered, for measuring clock
    /// offsets between nodes (0 from nodes that predate the field).
    #[serde(default)]
    pub wall_clock_ms: u64,
    /// Voters in the answering node's membership (empty while fresh).
    #[serde(default)]
    pub voters: Vec<u64>,
    /// The answering node's committed index, if anything is committed.
    #[serde(default)]
    pub committed: Option<u64>,
    /// The leader the answering node knows.
    #[serde(default)]
    pub leader_id: Option<u64>,
    /// Nodes the replicated state records as having acknowledged log entries (a
    /// fresh node listed here lost its data; see `raft/rejoin.rs`).
    #[serde(default)]
    pub seen: Vec<u64>,
    /// The answering node's own state, for the cluster view of its peers
    /// (`/v1/cluster`'s `nodes`; absent from nodes that predate it).
    #[serde(default)]
    pub status: Option<ProbeStatus>,
}

/// What a node reports about itself in a probe answer, beyond what bootstrap and
/// rejoin need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub term: u64,
    pub applied: Option<u64>,
    pub state_digest: String,
    /// Knows a leader and has applied everything it knows to be committed.
    pub ready: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NodeError;
    use quorate_core::Op;

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
    fn node_errors_round_trip() {
        let r: Result<quorate_core::Reply, NodeError> =
            Err(NodeError::NotLeader { leader: Some(3) });
        let bytes = encode(&r).unwrap();
        assert_eq!(
            decode::<Result<quorate_core::Reply, NodeError>>(&bytes).unwrap(),
            r
        );
    }
}
