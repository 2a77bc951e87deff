//! `/v1/policies` and `/v1/tiers`: named concurrency and rate policies, tier
//! multipliers. Changes go through the log like every decision, so every replica
//! applies the same policy from the same index on.

use axum::extract::State;
use axum::Json as JsonResponse;
use quorate_core::{self as core, Op, Outcome, Query};
use quorate_proto as proto;

use super::ApiState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Authed, Json, Path};

fn policy_to_wire(name: String, p: core::Policy) -> proto::PolicyEntry {
    let spec = match p {
        core::Policy::Concurrency { pattern, limit } => {
            proto::PolicySpec::Concurrency { pattern, limit }
        }
        core::Policy::Rate(s) => proto::PolicySpec::Rate {
            limit: s.limit,
            period_ms: s.period_ms,
            burst: Some(s.burst),
        },
    };
    proto::PolicyEntry { name, spec }
}

pub(super) async fn policies(
    State(st): State<ApiState>,
) -> ApiResult<JsonResponse<proto::PoliciesResponse>> {
    match st.read(Query::Policies).await? {
        Outcome::Policies(v) => Ok(JsonResponse(proto::PoliciesResponse {
            default_limit: v.settings.default_limit,
            policies: v
                .policies
                .into_iter()
                .map(|(n, p)| policy_to_wire(n, p))
                .collect(),
            tiers: v
                .tiers
                .into_iter()
                .map(|(name, m)| proto::TierEntry {
                    name,
                    multiplier: f64::from(m) / 1000.0,
                })
                .collect(),
        })),
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn put_policy(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    Json(spec): Json<proto::PolicySpec>,
) -> ApiResult<JsonResponse<proto::PolicyEntry>> {
    let policy = match spec {
        proto::PolicySpec::Concurrency { pattern, limit } => {
            core::Policy::Concurrency { pattern, limit }
        }
        proto::PolicySpec::Rate {
            limit,
            period_ms,
            burst,
        } => core::Policy::Rate(core::RateSpec {
            limit,
            period_ms,
            burst: burst.unwrap_or(limit),
        }),
    };
    match st
        .write(
            &caller,
            Op::PutPolicy {
                name: name.clone(),
                policy: policy.clone(),
            },
        )
        .await?
    {
        Outcome::PolicyPut { name } => Ok(JsonResponse(policy_to_wire(name, policy))),
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn delete_policy(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
) -> ApiResult<JsonResponse<proto::DeleteResponse>> {
    match st.write(&caller, Op::DeletePolicy { name }).await? {
        Outcome::PolicyDeleted { deleted } => Ok(JsonResponse(proto::DeleteResponse { deleted })),
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn put_tier(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    Json(req): Json<proto::PutTierRequest>,
) -> ApiResult<JsonResponse<proto::TierEntry>> {
    let milli = req.multiplier * 1000.0;
    if !milli.is_finite()
        || !(1.0..=f64::from(core::validate::MAX_MULTIPLIER_MILLI)).contains(&milli)
    {
        return Err(ApiError::invalid("multiplier must be in 0.001..=1000"));
    }
    // In range, so the cast cannot truncate.
    let multiplier_milli = milli.round() as u32;
    match st
        .write(
            &caller,
            Op::PutTier {
                name,
                multiplier_milli,
            },
        )
        .await?
    {
        Outcome::TierPut { name } => Ok(JsonResponse(proto::TierEntry {
            name,
            multiplier: f64::from(multiplier_milli) / 1000.0,
        })),
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn delete_tier(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
) -> ApiResult<JsonResponse<proto::DeleteResponse>> {
    match st.write(&caller, Op::DeleteTier { name }).await? {
        Outcome::TierDeleted { deleted } => Ok(JsonResponse(proto::DeleteResponse { deleted })),
        other => Err(ApiError::unexpected(&other)),
    }
}
