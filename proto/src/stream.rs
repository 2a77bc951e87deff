//! The decision stream: the API's decisions, pipelined over one upgraded connection.
//!
//! Every decision over plain HTTP/1.1 is a request of its own: headers parsed and
//! written, a route matched, a token checked, a span and a metric per request. For a
//! service making thousands of decisions a second that machinery, not the decision,
//! is most of what a node spends serving it. A decision stream pays it once:
//!
//! 1. The client sends `POST /v1/stream` with `Connection: Upgrade` and
//!    `Upgrade: quorate-api/1` ([`STREAM_PROTOCOL`]) and its bearer token, like any
//!    other request. The node authenticates it once (a `client` token suffices) and
//!    answers `101 Switching Protocols`, with the leader hint header on it.
//! 2. From then on both sides exchange frames. A frame is a 4-byte big-endian length
//!    (of what follows) and a payload:
//!    - a request: an 8-byte id chosen by the client, one byte naming the decision
//!      ([`StreamOp`]), then the JSON body the HTTP route takes;
//!    - an answer: the request's id, the 2-byte HTTP status the route would have
//!      answered, then the JSON body it would have answered (the same types, the
//!      same error shapes: a 429's body carries `retry_after_ms`, so nothing the
//!      route says in headers is lost but the leader hint, given once in step 1).
//! 3. A client may send many requests before reading; answers come back as decisions
//!    complete, not necessarily in request order, each with its request's id. The
//!    node reads no further while [`MAX_IN_FLIGHT`] requests of a stream are open.
//!
//! A frame the node cannot take (shorter than an id and an op, or longer than the
//! node's `max_body_bytes`) is answered with id 0 and a 400 or 413, and the stream is
//! closed. An unknown op byte gets a 400 for its id and the stream goes on. The node
//! closes a stream that carried no frame for a while (clients reopen it), and on
//! shutdown stops reading, answers what it has read and closes.
//!
//! This module is the byte layout only (no I/O), so the server, the Rust client and
//! the bench share one definition; the Python client mirrors it.

use crate::routes::RouteId;

/// The `Upgrade` token of a decision stream.
pub const STREAM_PROTOCOL: &str = "quorate-api/1";

/// Bytes of a frame's length prefix.
pub const LEN_BYTES: usize = 4;

/// Bytes before a request's JSON body: id and op.
pub const REQUEST_HEAD: usize = 9;

/// Bytes before an answer's JSON body: id and status.
pub const ANSWER_HEAD: usize = 10;

/// Requests of one stream the node works on at once; it reads no further frames until
/// one of them is answered (TCP then pushes back on the client).
pub const MAX_IN_FLIGHT: usize = 256;

/// The decisions a stream carries: the API's client-role `POST` routes whose path has
/// no parameter. Reads, admin changes and counters stay HTTP requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamOp {
    /// `POST /v1/slots/acquire` (a waiting acquire too).
    Acquire = 1,
    /// `POST /v1/slots/release`.
    Release = 2,
    /// `POST /v1/slots/renew`.
    Renew = 3,
    /// `POST /v1/rate/check`.
    RateCheck = 4,
}

impl StreamOp {
    /// Every op, in byte order.
    pub const ALL: [StreamOp; 4] = [
        StreamOp::Acquire,
        StreamOp::Release,
        StreamOp::Renew,
        StreamOp::RateCheck,
    ];

    /// The op a request's byte names, if any.
    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as u8 == b)
    }

    /// The HTTP route whose body, answer and access this op shares.
    pub fn route(self) -> RouteId {
        match self {
            StreamOp::Acquire => RouteId::Acquire,
            StreamOp::Release => RouteId::Release,
            StreamOp::Renew => RouteId::Renew,
            StreamOp::RateCheck => RouteId::RateCheck,
        }
    }
}

/// A payload too short for its fixed head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortFrame {
    pub len: usize,
    pub needed: usize,
}

impl std::fmt::Display for ShortFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a frame of {} bytes is shorter than its {}-byte head",
            self.len, self.needed
        )
    }
}

impl std::error::Error for ShortFrame {}

/// A request as read from a payload: the op byte is returned raw, so that an unknown
/// op can be answered under its request's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFrame<'a> {
    pub id: u64,
    pub op: u8,
    pub body: &'a [u8],
}

/// An answer as read from a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerFrame<'a> {
    pub id: u64,
    pub status: u16,
    pub body: &'a [u8],
}

/// Appends a whole request frame (length prefix included) to `out`.
pub fn put_request(out: &mut Vec<u8>, id: u64, op: StreamOp, body: &[u8]) {
    put_len(out, REQUEST_HEAD + body.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.push(op as u8);
    out.extend_from_slice(body);
}

/// Appends a whole answer frame (length prefix included) to `out`.
pub fn put_answer(out: &mut Vec<u8>, id: u64, status: u16, body: &[u8]) {
    put_len(out, ANSWER_HEAD + body.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(body);
}

/// The payload length a frame's prefix announces.
pub fn payload_len(prefix: [u8; LEN_BYTES]) -> usize {
    u32::from_be_bytes(prefix) as usize
}

/// Reads a request payload (the bytes after the length prefix).
pub fn request(payload: &[u8]) -> Result<RequestFrame<'_>, ShortFrame> {
    let (head, body) = split(payload, REQUEST_HEAD)?;
    Ok(RequestFrame {
        id: id_of(head),
        op: head[8],
        body,
    })
}

/// Reads an answer payload (the bytes after the length prefix).
pub fn answer(payload: &[u8]) -> Result<AnswerFrame<'_>, ShortFrame> {
    let (head, body) = split(payload, ANSWER_HEAD)?;
    Ok(AnswerFrame {
        id: id_of(head),
        status: u16::from_be_bytes([head[8], head[9]]),
        body,
    })
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Callers bound frames far below 4 GiB (the node's body limit); saturate rather
    // than wrap if one ever is not.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
}

fn split(payload: &[u8], needed: usize) -> Result<(&[u8], &[u8]), ShortFrame> {
    if payload.len() < needed {
        return Err(ShortFrame {
            len: payload.len(),
            needed,
        });
    }
    Ok(payload.split_at(needed))
}

fn id_of(head: &[u8]) -> u64 {
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[..8]);
    u64::from_be_bytes(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip() {
        let mut out = Vec::new();
        put_request(&mut out, 7, StreamOp::RateCheck, b"{\"checks\":[]}");
        let len = payload_len(out[..4].try_into().unwrap());
        assert_eq!(len, out.len() - LEN_BYTES);
        let r = request(&out[LEN_BYTES..]).unwrap();
        assert_eq!((r.id, r.op, r.body), (7, 4, &b"{\"checks\":[]}"[..]));
        assert_eq!(StreamOp::from_byte(r.op), Some(StreamOp::RateCheck));

        out.clear();
        put_answer(&mut out, u64::MAX, 429, b"{}");
        let a = answer(&out[LEN_BYTES..]).unwrap();
        assert_eq!((a.id, a.status, a.body), (u64::MAX, 429, &b"{}"[..]));
    }

    #[test]
    fn short_payloads_and_unknown_ops_are_refused() {
        assert_eq!(
            request(&[0; 8]),
            Err(ShortFrame {
                len: 8,
                needed: REQUEST_HEAD
            })
        );
        assert!(answer(&[0; 9]).is_err());
        assert_eq!(StreamOp::from_byte(0), None);
        assert_eq!(StreamOp::from_byte(5), None);
        for op in StreamOp::ALL {
            assert_eq!(StreamOp::from_byte(op as u8), Some(op));
        }
    }

    #[test]
    fn ops_are_client_posts_without_parameters() {
        use crate::routes::{Access, Method};
        for op in StreamOp::ALL {
            let r = op.route().route();
            assert_eq!(
                (r.method, r.access),
                (Method::Post, Access::Client),
                "{r:?}"
            );
            assert_eq!(r.param_count(), 0, "{r:?}");
        }
    }
}
