//! `/v1/limits`: per-key concurrency limit overrides, and listings with usage.
//!
//! `GET /v1/limits/{key}` shows the effective limit and where it comes from
//! (override, policy, default); the listing covers overrides and keys in use under a
//! prefix, at most `max` rows (default 1000, cap 10,000) with a `truncated` flag.

use axum::extract::State;
use axum::Json as JsonResponse;
use quorate_core::{self as core, Op, Outcome, Query as CoreQuery};
use quorate_proto as proto;
use serde::Deserialize;

use super::ApiState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Authed, Json, Path, Query};

/// Most rows one `GET /v1/limits` returns unless `max` says otherwise.
const DEFAULT_LIST_MAX: u32 = 1000;
/// Hard cap on `max` for `GET /v1/limits`.
const LIST_MAX_CAP: u32 = 10_000;

fn limit_to_wire(l: core::LimitInfo) -> proto::LimitEntry {
    let (source, policy) = match l.source {
        core::LimitSource::Override => (proto::LimitSource::Override, None),
        core::LimitSource::Policy(p) => (proto::LimitSource::Policy, Some(p)),
        core::LimitSource::Default => (proto::LimitSource::Default, None),
    };
    proto::LimitEntry {
        key: l.key,
        limit: l.limit,
        source,
        policy,
        used: l.used,
    }
}

pub(super) async fn put_limit(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Path(key): Path<String>,
    Json(req): Json<proto::PutLimitRequest>,
) -> ApiResult<JsonResponse<proto::PutLimitResponse>> {
    match st
        .write(
            &caller,
            Op::SetLimit {
                key,
                limit: req.limit,
            },
        )
        .await?
    {
        Outcome::LimitSet { key, limit } => {
            Ok(JsonResponse(proto::PutLimitResponse { key, limit }))
        }
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn get_limit(
    State(st): State<ApiState>,
    Path(key): Path<String>,
) -> ApiResult<JsonResponse<proto::LimitEntry>> {
    match st.read(CoreQuery::Limit { key }).await? {
        Outcome::Limit(l) => Ok(JsonResponse(limit_to_wire(l))),
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn delete_limit(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Path(key): Path<String>,
) -> ApiResult<JsonResponse<proto::DeleteResponse>> {
    match st.write(&caller, Op::DeleteLimit { key }).await? {
        Outcome::LimitDeleted { deleted } => Ok(JsonResponse(proto::DeleteResponse { deleted })),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// Query string of `GET /v1/limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    #[serde(default)]
    prefix: String,
    max: Option<u32>,
}

pub(super) async fn list_limits(
    State(st): State<ApiState>,
    Query(p): Query<ListParams>,
) -> ApiResult<JsonResponse<proto::ListLimitsResponse>> {
    let max = p.max.unwrap_or(DEFAULT_LIST_MAX);
    if max == 0 || max > LIST_MAX_CAP {
        return Err(ApiError::invalid(format!(
            "max must be in 1..={LIST_MAX_CAP}"
        )));
    }
    match st
        .read(CoreQuery::Limits {
            prefix: p.prefix,
            max,
        })
        .await?
    {
        Outcome::Limits { limits, truncated } => Ok(JsonResponse(proto::ListLimitsResponse {
            limits: limits.into_iter().map(limit_to_wire).collect(),
            truncated,
        })),
        other => Err(ApiError::unexpected(&other)),
    }
}
