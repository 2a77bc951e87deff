//! The HTTP layer's one error type, and the only place that shapes error bodies.
//!
//! Every non-2xx response of the public API is `{"error": code, "message": text}`
//! (429s for denied decisions add the decision's fields and are built by their
//! handlers). [`ApiError`] carries the status, the stable code from
//! `quorate_proto::codes`, a message and an optional `Retry-After`; its
//! `IntoResponse` writes them. Errors from below convert with `From`: the core's
//! validation errors, the node's [`NodeError`], and axum's extractor rejections (via
//! `http::extract`), so no handler formats an error body by hand.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use quorate_core::{CoreError, Outcome};
use quorate_proto::{self as proto, codes};

use crate::backend::NodeError;

/// `Retry-After` of a `state_full` answer: long enough that a flood of refused
/// creations does not become a flood of retries, short enough for a lease to end.
const STATE_FULL_RETRY_MS: u64 = 5000;

/// An error answer of the public API.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_ms: Option<u64>,
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, message)
    }

    /// 503 `unavailable` with a `Retry-After` of one second: no decision was made, or
    /// its outcome is unknown. Never a grant.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after_ms: Some(1000),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, message)
        }
    }

    /// An outcome that cannot answer this request: a bug, reported as such.
    pub fn unexpected(outcome: &Outcome) -> Self {
        tracing::error!(?outcome, "unexpected outcome for request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            "unexpected outcome (bug)",
        )
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            CoreError::Invalid { .. } => (StatusCode::BAD_REQUEST, codes::INVALID_REQUEST),
            CoreError::LeaseConflict { .. } => (StatusCode::CONFLICT, codes::LEASE_CONFLICT),
            CoreError::LeaseNotFound { .. } => (StatusCode::NOT_FOUND, codes::LEASE_NOT_FOUND),
            CoreError::PolicyNotFound { .. } | CoreError::TierNotFound { .. } => {
                (StatusCode::NOT_FOUND, codes::POLICY_NOT_FOUND)
            }
            CoreError::Forbidden { .. } => (StatusCode::FORBIDDEN, codes::FORBIDDEN),
            // Room returns as leases expire and buckets refill: worth a retry later,
            // so a 503 with Retry-After, like an unavailable cluster.
            CoreError::StateFull { .. } => {
                return Self {
                    retry_after_ms: Some(STATE_FULL_RETRY_MS),
                    ..Self::new(StatusCode::SERVICE_UNAVAILABLE, codes::STATE_FULL, message)
                }
            }
            CoreError::CorruptSnapshot(_) => (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL),
        };
        Self::new(status, code, message)
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Refused(_) => Self::invalid(e.to_string()),
            NodeError::Forbidden(_) => {
                Self::new(StatusCode::FORBIDDEN, codes::FORBIDDEN, e.to_string())
            }
            // Not-leader and unreachable only escape the node's router at its deadline;
            // to a caller all three mean "no decision, try again".
            NodeError::Unavailable(_) | NodeError::NotLeader { .. } | NodeError::Unreachable(_) => {
                Self::unavailable(e.to_string())
            }
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                "request body too large",
            )
        } else {
            Self::invalid(format!("could not read body: {r}"))
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::invalid(format!("bad path: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::invalid(format!("bad query string: {}", r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = proto::ErrorBody {
            error: self.code.to_string(),
            message: self.message,
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(ms) = self.retry_after_ms {
            set_retry_after(resp.headers_mut(), ms);
        }
        resp
    }
}

/// `Retry-After` in whole seconds, rounded up (never 0 for a non-zero wait).
pub fn set_retry_after(headers: &mut HeaderMap, ms: u64) {
    headers.insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from(ms.div_ceil(1000).max(1)),
    );
}
