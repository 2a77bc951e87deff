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
//! - **Streams** — `POST /raft/stream` with `Upgrade: quorate-raft/1`: the request is
//!   authenticated like any other (cluster id, signature, client certificate),
//!   answered `101 Switching Protocols`, and the connection then carries
//!   [`StreamRequest`] frames (see [Frames](#frames)) instead of one HTTP request
//!   each: a leader's appends to a follower, a follower's forwarded writes to the
//!   leader. A node that predates the route answers 404, and the sender goes back to
//!   `POST /raft/append` or `/forward/writes`.
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
//!
//! # Frames
//!
//! On a stream each message is a frame: a 4-byte big-endian length, then that
//! many bytes of bincode ([`write_frame`] / [`read_frame`]; at most [`MAX_RPC_BYTES`],
//! a longer length closes the stream before anything is allocated). The sender writes
//! one [`StreamRequest`] frame and waits for its [`StreamAnswer`] frame before the
//! next: one request in flight per stream (all openraft 0.9 asks of a replication
//! stream; forwarding keeps several streams for several requests), so an answer is
//! always the answer to the last request. A sender that gives up on an answer
//! (timeout, cancellation) drops the stream rather than risk reading a late answer as
//! the next one's (`peer::stream`).

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
    pub const STREAM: &str = "/raft/stream";
}

/// The `Upgrade` token of a peer stream (see [Frames](#frames)).
pub const STREAM_PROTOCOL: &str = "quorate-raft/1";

/// A request frame on a peer stream. Generic so that senders can encode borrowed
/// parts (`StreamRequest<&A, &ForwardWrites>`) and receivers decode owned ones; the
/// bytes are the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRequest<A, W = ForwardWrites> {
    /// An openraft append, from a leader (answered `StreamAnswer<Result<
    /// AppendEntriesResponse, RaftError>>`).
    Append(A),
    /// Forwarded writes, from a follower to the leader, decided as `POST
    /// /forward/writes` decides them (answered `StreamAnswer<ForwardAnswers<E>>`).
    Writes {
        /// How long the sender waits for the answers (milliseconds).
        timeout_ms: u64,
        ops: W,
    },
}

/// The answer frame to one request on a peer stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamAnswer<T> {
    /// The request was handed to Raft; this is what Raft answered.
    Done(T),
    /// This node does not take part in Raft yet (it started empty and is checking with
    /// its peers, or refused to rejoin): what `POST /raft/append` answers with 503.
    Unavailable(String),
    /// The request was refused, e.g. its sender is not the node the stream's client
    /// certificate names. The stream is closed after this answer.
    Refused(String),
}

/// Write one frame: `payload`'s length (4 bytes, big-endian) then `payload`, in one
/// write, and flush.
pub async fn write_frame<W>(w: &mut W, payload: &[u8]) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| u64::from(n) <= MAX_RPC_BYTES)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Read one frame's payload. `Ok(None)` when the stream ended cleanly before a frame
/// began; a length over [`MAX_RPC_BYTES`] or a stream that ends inside a frame is an
/// error.
pub async fn read_frame<R>(r: &mut R) -> std::io::Result<Option<Vec<u8>>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    // The first byte apart: a clean end of stream is only allowed here.
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..]).await?;
    let len = u32::from_be_bytes(len);
    if u64::from(len) > MAX_RPC_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    Ok(Some(payload))
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

    #[tokio::test]
    async fn frames_round_trip_and_refuse_oversized_lengths() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"one").await.unwrap();
        write_frame(&mut a, b"").await.unwrap();
        assert_eq!(
            read_frame(&mut b).await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(read_frame(&mut b).await.unwrap().as_deref(), Some(&b""[..]));

        // A length over the limit is refused before anything is allocated.
        use tokio::io::AsyncWriteExt;
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

        // A clean end before a frame is `None`; an end inside one is an error.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap();
        drop(a);
        assert!(read_frame(&mut b).await.is_err());
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert_eq!(read_frame(&mut b).await.unwrap(), None);
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
