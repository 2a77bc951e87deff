//! `/v1/policies` and `/v1/tiers`: named concurrency and rate policies, tier
//! multipliers, and each policy's mode (enforce or shadow). Changes go through the
//! log like every decision, so every replica applies the same policy from the same
//! index on.
//!
//! A shadow-mode policy never denies: a request only it would deny is allowed, and
//! the answer says so ([`shadow_denied`] fills the `shadow_denied` field and the
//! `x-quorate-shadow-denied` header, and counts `quorate_shadow_denials_total`).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::Json as JsonResponse;
use quorate_core::{self as core, Op, Outcome, Query};
use quorate_proto as proto;

use super::ApiState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Authed, Json, Path};

/// Response header naming the shadow-mode policies that would have denied a request.
pub const SHADOW_DENIED_HEADER: &str = "x-quorate-shadow-denied";

/// The wire form of a shadow decision's notes: sets the header (each policy once, in
/// order of appearance), counts one shadow denial per policy and returns the field.
pub(super) fn shadow_denied(
    st: &ApiState,
    headers: &mut HeaderMap,
    notes: Vec<core::ShadowDenial>,
) -> Vec<proto::ShadowDenial> {
    let mut policies: Vec<&str> = Vec::new();
    for n in &notes {
        if !policies.contains(&n.policy.as_str()) {
            policies.push(&n.policy);
        }
    }
    for p in &policies {
        st.metrics.shadow_denial(p);
    }
    if let Ok(v) = HeaderValue::from_str(&policies.join(", ")) {
        headers.insert(SHADOW_DENIED_HEADER, v);
    }
    tracing::debug!(policies = ?policies, "allowed in shadow mode");
    notes
        .into_iter()
        .map(|n| proto::ShadowDenial {
            key: n.key,
            policy: n.policy,
        })
        .collect()
}

fn mode_to_wire(shadow: bool) -> proto::PolicyMode {
    if shadow {
        proto::PolicyMode::Shadow
    } else {
        proto::PolicyMode::Enforce
    }
}

/// Names of the policies in shadow mode.
async fn shadow_policies(st: &ApiState) -> ApiResult<Vec<String>> {
    match st.read(Query::PolicyModes).await? {
        Outcome::PolicyModes { shadow } => Ok(shadow),
        other => Err(ApiError::unexpected(&other)),
    }
}

fn policy_to_wire(name: String, p: core::Policy, shadow: &[String]) -> proto::PolicyEntry {
    let mode = mode_to_wire(shadow.contains(&name));
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
    proto::PolicyEntry { name, spec, mode }
}

pub(super) async fn policies(
    State(st): State<ApiState>,
) -> ApiResult<JsonResponse<proto::PoliciesResponse>> {
    let view = st.read(Query::Policies).await?;
    let shadow = shadow_policies(&st).await?;
    match view {
        Outcome::Policies(v) => Ok(JsonResponse(proto::PoliciesResponse {
            default_limit: v.settings.default_limit,
            policies: v
                .policies
                .into_iter()
                .map(|(n, p)| policy_to_wire(n, p, &shadow))
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
        // Replacing a policy keeps its mode: read it back for the answer.
        Outcome::PolicyPut { name } => {
            let shadow = shadow_policies(&st).await?;
            Ok(JsonResponse(policy_to_wire(name, policy, &shadow)))
        }
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn put_policy_mode(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    Json(req): Json<proto::PolicyModeRequest>,
) -> ApiResult<JsonResponse<proto::PolicyModeResponse>> {
    let mode = match req.mode {
        proto::PolicyMode::Enforce => core::Mode::Enforce,
        proto::PolicyMode::Shadow => core::Mode::Shadow,
    };
    match st.write(&caller, Op::SetPolicyMode { name, mode }).await? {
        Outcome::PolicyModeSet { name, mode } => {
            tracing::info!(policy = %name, ?mode, "policy mode set");
            Ok(JsonResponse(proto::PolicyModeResponse {
                name,
                mode: mode_to_wire(mode == core::Mode::Shadow),
            }))
        }
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
