//! Extractors whose rejection is the API's error.
//!
//! axum's own `Json`, `Path` and `Query` reject with their own plain-text bodies;
//! these wrappers reject with [`ApiError`], so a malformed body, path or query string
//! gets the same JSON error shape as everything else without any handler taking a
//! `Result<Extractor, Rejection>` and converting it by hand.
//!
//! [`Json`] does not require a JSON content type (curl users forget it); unknown
//! fields, wrong types and syntax errors are 400 with serde's explanation.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use quorate_core::Caller;
use quorate_proto::codes;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// A JSON body, or the 400 every route answers for one that does not parse (also
/// used for the bodies of decision-stream frames).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// Path parameters.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(v))
    }
}

/// The caller the access check authenticated (token name and role, as the core's
/// [`Caller`]), recorded in the request's extensions by `http::api::authorize`.
/// Handlers put it into the ops they submit, so the state machine — on every
/// replica, after any forwarding — decides with the identity this node checked.
#[derive(Debug, Clone)]
pub struct Authed(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Absent only on a route the access check let through as open: no handler of
        // such a route takes a caller, so refuse rather than guess an identity.
        // Taken, not cloned: a handler takes the caller once (no copy of its name).
        parts
            .extensions
            .remove::<Caller>()
            .map(Authed)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    codes::UNAUTHORIZED,
                    "this request has no authenticated caller",
                )
            })
    }
}

/// Query-string parameters.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(v))
    }
}
