//! `/v1/counters/{key}`: replicated counters with an expiry, the fixed windows of the
//! Python `limits` storage (`quorate.contrib.limits`, used by slowapi and
//! Flask-Limiter).
//!
//! `POST .../incr` is one Raft write (`Op::CounterIncr`): it adds to a live counter or
//! starts a new one whose expiry is in cluster time, and answers the value after the
//! increment — so "admit while the value is at most the limit" is exact across every
//! process that shares the cluster. `GET` is a linearizable read (the same barrier as
//! every other read); `DELETE` removes the counter. The key is one path segment,
//! percent-encoded by the caller (a `/` in the key is `%2F`), and follows the rate-key
//! rules, which the core enforces (400 otherwise).
//!
//! An increment whose answer was lost (a 503 after the deadline) may have been
//! applied: a retry then counts twice. For a limiter that errs towards denying, never
//! towards admitting more than the limit.

use axum::extract::State;
use axum::Json as JsonResponse;
use quorate_core::{self as core, Op, Outcome, Query as CoreQuery};
use quorate_proto as proto;

use super::ApiState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Authed, Json, Path};

fn counter_to_wire(c: core::CounterInfo) -> proto::CounterResponse {
    proto::CounterResponse {
        key: c.key,
        value: c.value,
        expires_at_ms: c.expires_at_ms,
        ttl_ms: c.ttl_ms,
    }
}

pub(super) async fn counter_incr(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Path(key): Path<String>,
    Json(req): Json<proto::CounterIncrRequest>,
) -> ApiResult<JsonResponse<proto::CounterResponse>> {
    let op = Op::CounterIncr {
        key,
        amount: req.amount.unwrap_or(1),
        expiry_ms: req.expiry_ms,
    };
    match st.write(&caller, op).await? {
        Outcome::Counter(c) => Ok(JsonResponse(counter_to_wire(c))),
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn get_counter(
    State(st): State<ApiState>,
    Path(key): Path<String>,
) -> ApiResult<JsonResponse<proto::CounterResponse>> {
    match st.read(CoreQuery::Counter { key }).await? {
        Outcome::Counter(c) => Ok(JsonResponse(counter_to_wire(c))),
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn clear_counter(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Path(key): Path<String>,
) -> ApiResult<JsonResponse<proto::DeleteResponse>> {
    match st.write(&caller, Op::CounterClear { key }).await? {
        Outcome::CounterCleared { cleared } => {
            Ok(JsonResponse(proto::DeleteResponse { deleted: cleared }))
        }
        other => Err(ApiError::unexpected(&other)),
    }
}
