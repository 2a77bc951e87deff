//! `/v1/rate/check`: GCRA rate checks, one or several charged all-or-none.
//!
//! A check names a policy (and tier) or gives an inline limit; the core charges every
//! check or none. The answer carries the IETF `RateLimit-Policy` / `RateLimit` headers
//! for every check and the `X-RateLimit-*` trio of the most restrictive one, and a
//! denial is a 429 with `Retry-After`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json as JsonResponse;
use quorate_core::{self as core, Op, Outcome};
use quorate_proto::{self as proto, codes};

use super::ApiState;
use crate::http::error::{set_retry_after, ApiError, ApiResult};
use crate::http::extract::{Authed, Json};

/// One wire check → core check. Named policy XOR inline limit; burst defaults to limit.
fn rate_check_to_core(c: proto::RateCheck) -> ApiResult<core::RateCheck> {
    let limit = match (c.policy, c.limit, c.period_ms) {
        (Some(name), None, None) if c.burst.is_none() => {
            core::RateLimitRef::Policy { name, tier: c.tier }
        }
        (Some(_), _, _) => {
            return Err(ApiError::invalid(
                "give either policy (and tier) or limit/period_ms/burst, not both",
            ))
        }
        (None, Some(limit), Some(period_ms)) => {
            if c.tier.is_some() {
                return Err(ApiError::invalid("tier applies only to a named policy"));
            }
            core::RateLimitRef::Inline(core::RateSpec {
                limit,
                period_ms,
                burst: c.burst.unwrap_or(limit),
            })
        }
        (None, _, _) => {
            return Err(ApiError::invalid(
                "a check needs policy, or both limit and period_ms",
            ))
        }
    };
    Ok(core::RateCheck {
        key: c.key,
        cost: c.cost.unwrap_or(1),
        limit,
    })
}

fn rate_request_to_core(r: proto::RateCheckRequest) -> ApiResult<Vec<core::RateCheck>> {
    let single = proto::RateCheck {
        key: r.key.clone().unwrap_or_default(),
        policy: r.policy,
        tier: r.tier,
        cost: r.cost,
        limit: r.limit,
        period_ms: r.period_ms,
        burst: r.burst,
    };
    match (r.checks, r.key) {
        (Some(checks), None) if single == proto::RateCheck::default() => {
            checks.into_iter().map(rate_check_to_core).collect()
        }
        (Some(_), _) => Err(ApiError::invalid(
            "give either checks or a single check's fields, not both",
        )),
        (None, Some(_)) => Ok(vec![rate_check_to_core(single)?]),
        (None, None) => Err(ApiError::invalid("key (or checks) is required")),
    }
}

/// Structured-field string item (RFC 8941): quotes and backslashes escaped.
fn sf_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// IETF httpapi `RateLimit-Policy` / `RateLimit` headers (draft-ietf-httpapi-
/// ratelimit-headers), one list member per check, named by the check's key, plus the
/// `X-RateLimit-*` trio of the most restrictive check for older clients.
fn rate_headers(headers: &mut HeaderMap, results: &[core::RateResult], top: &core::RateResult) {
    // One list member per check: the check's key, then `params`.
    let list = |params: fn(&core::RateResult) -> String| {
        results
            .iter()
            .map(|r| format!("{};{}", sf_string(&r.key), params(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let policy = list(|r| {
        let window = r.period_ms.div_ceil(1000).max(1);
        format!("q={};w={window};burst={}", r.limit, r.burst)
    });
    let state = list(|r| format!("r={};t={}", r.remaining, r.reset_after_ms.div_ceil(1000)));
    let mut put = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("ratelimit-policy", policy);
    put("ratelimit", state);
    put("x-ratelimit-limit", top.limit.to_string());
    put("x-ratelimit-remaining", top.remaining.to_string());
    put(
        "x-ratelimit-reset",
        top.reset_after_ms.div_ceil(1000).to_string(),
    );
}

pub(super) async fn rate_check(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Json(req): Json<proto::RateCheckRequest>,
) -> ApiResult<Response> {
    let checks = rate_request_to_core(req)?;
    let decision = match st.write(&caller, Op::RateCheck { checks }).await? {
        Outcome::Rate(d) => d,
        other => return Err(ApiError::unexpected(&other)),
    };
    // The most restrictive result speaks for the request: the denied check with the
    // longest wait, or (all allowed) the one with the fewest requests left.
    let top = if decision.allowed {
        decision.results.iter().min_by_key(|r| r.remaining)
    } else {
        decision
            .results
            .iter()
            .filter(|r| !r.allowed)
            .max_by_key(|r| r.retry_after_ms)
    };
    let Some(top) = top.cloned() else {
        return Err(ApiError::unexpected(&Outcome::Rate(decision)));
    };
    st.stats.rate_checked(
        decision
            .results
            .iter()
            .map(|r| (r.key.as_str(), r.allowed, r.limit, r.remaining)),
    );
    st.metrics.decision(
        "rate",
        if decision.allowed {
            "allowed"
        } else {
            "limited"
        },
    );
    let body = proto::RateCheckResponse {
        allowed: decision.allowed,
        error: (!decision.allowed).then(|| codes::RATE_LIMITED.to_string()),
        message: (!decision.allowed).then(|| format!("rate limit exceeded on {}", top.key)),
        limit: top.limit,
        remaining: if decision.allowed { top.remaining } else { 0 },
        reset_after_ms: top.reset_after_ms,
        retry_after_ms: top.retry_after_ms,
        results: decision
            .results
            .iter()
            .map(|r| proto::RateResult {
                key: r.key.clone(),
                allowed: r.allowed,
                limit: r.limit,
                period_ms: r.period_ms,
                burst: r.burst,
                remaining: r.remaining,
                reset_after_ms: r.reset_after_ms,
                retry_after_ms: r.retry_after_ms,
            })
            .collect(),
    };
    let status = if decision.allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut resp = (status, JsonResponse(body)).into_response();
    rate_headers(resp.headers_mut(), &decision.results, &top);
    if !decision.allowed {
        set_retry_after(resp.headers_mut(), top.retry_after_ms);
    }
    Ok(resp)
}
