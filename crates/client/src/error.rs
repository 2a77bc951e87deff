//! The client's one error type, and the mapping of API answers onto it.
//!
//! The server answers every failure with a JSON [`proto::ErrorBody`] whose `error`
//! field is one of the stable [`codes`]; a denied acquire is a 429 with the
//! decision's fields ([`proto::AcquireDenied`]). [`from_answer`] is the only place
//! that turns a non-2xx answer into an [`Error`], so the variants callers match on
//! (`LimitExceeded`, `LeaseNotFound`, `Unavailable`) mean the same thing for every
//! call. A body that is not JSON (a proxy's HTML page, say) still becomes an
//! [`Error::Api`], with code `unknown` and the start of the body as message.

use quorate_proto::{self as proto, codes};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

/// One HTTP exchange's result that reached a node.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

/// Everything that can go wrong, typed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No node could decide within the deadline (503s, connection errors, timeouts).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// An acquire was denied: a key is at its limit. After a waiting acquire
    /// ([`crate::Client::acquire_wait`]) whose wait ended, `queue_position` is the
    /// place it had in the queue (1 = next).
    #[error("limit exceeded on {blocked_by:?}; retry in {retry_after_ms} ms")]
    LimitExceeded {
        blocked_by: Vec<String>,
        retry_after_ms: u64,
        slots: Vec<proto::SlotUsage>,
        queue_position: Option<u32>,
    },
    /// The lease is not live (renew of an expired or released lease).
    #[error("lease not found: {0}")]
    LeaseNotFound(String),
    /// Any other API error (400 invalid_request, 409 lease_conflict, 404, 401/403).
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The client was configured wrongly (no nodes, bad URL).
    #[error("client configuration: {0}")]
    Config(String),
    /// A response could not be decoded.
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl Error {
    /// The API error code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            Error::LimitExceeded { .. } => Some(codes::LIMIT_EXCEEDED),
            Error::LeaseNotFound(_) => Some(codes::LEASE_NOT_FOUND),
            Error::Unavailable(_) => Some(codes::UNAVAILABLE),
            _ => None,
        }
    }
}

/// Decode a JSON body (request or response side) or say why not.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode(e.to_string()))
}

/// A 2xx answer's body as `T`; anything else as the typed error.
pub(crate) fn success<T: DeserializeOwned>(a: &Answer) -> Result<T, Error> {
    if a.status.is_success() {
        decode(&a.body)
    } else {
        Err(from_answer(a))
    }
}

/// Map a non-2xx answer to a typed error.
pub(crate) fn from_answer(a: &Answer) -> Error {
    let status = a.status.as_u16();
    if a.status == StatusCode::TOO_MANY_REQUESTS {
        if let Ok(d) = serde_json::from_slice::<proto::AcquireDenied>(&a.body) {
            return Error::LimitExceeded {
                blocked_by: d.blocked_by,
                retry_after_ms: d.retry_after_ms,
                slots: d.slots,
                queue_position: d.queue_position,
            };
        }
    }
    match serde_json::from_slice::<proto::ErrorBody>(&a.body) {
        Ok(e) if e.error == codes::LEASE_NOT_FOUND => Error::LeaseNotFound(e.message),
        Ok(e) => Error::Api {
            status,
            code: e.error,
            message: e.message,
        },
        Err(_) => Error::Api {
            status,
            code: "unknown".into(),
            message: String::from_utf8_lossy(&a.body).chars().take(200).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn bodies_map_to_typed_errors() {
        let e = from_answer(&answer(
            404,
            r#"{"error":"lease_not_found","message":"no lease x"}"#,
        ));
        assert!(
            matches!(e, Error::LeaseNotFound(ref m) if m == "no lease x"),
            "{e}"
        );
        let e = from_answer(&answer(400, r#"{"error":"invalid_request","message":"m"}"#));
        assert_eq!(e.code(), Some("invalid_request"));
        let e = from_answer(&answer(502, "<html>bad gateway</html>"));
        assert!(
            matches!(e, Error::Api { status: 502, ref code, .. } if code == "unknown"),
            "{e}"
        );
    }
}
