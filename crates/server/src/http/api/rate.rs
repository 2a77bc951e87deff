//! `/v1/rate/check`: GCRA rate checks, one or several charged all-or-none.
//!
//! A check names a policy (and tier) or gives an inline limit; the core charges every
//! check or none. The answer carries the draft-10 `RateLimit-Policy` / `RateLimit`
//! headers for every check (named by policy, keys only as hashed partition keys; see
//! `crate::ratelimit_headers`) and the `X-RateLimit-*` trio of the most restrictive
//! one, and a denial is a 429 with `Retry-After`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json as JsonResponse;
use quorate_core::{self as core, Caller, Op, Outcome};
use quorate_proto::{self as proto, codes};

use super::ApiState;
use crate::http::error::{set_retry_after, ApiError, ApiResult};
use crate::http::extract::{Authed, Json};
use crate::ratelimit_headers;

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

/// The RateLimit header fields (`crate::ratelimit_headers`: draft-10 items named by
/// policy, `inline` for an inline limit, with a hashed partition key) plus the
/// `X-RateLimit-*` trio of the most restrictive check.
fn rate_headers(
    headers: &mut HeaderMap,
    names: &[String],
    results: &[core::RateResult],
    top: &core::RateResult,
) {
    let quotas: Vec<_> = names.iter().zip(results).map(as_quota).collect();
    let top_name = names
        .iter()
        .zip(results)
        .find(|(_, r)| r.key == top.key)
        .map_or(String::new(), |(n, _)| n.clone());
    let top = as_quota((&top_name, top));
    for (name, value) in ratelimit_headers::fields(&quotas, &top) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}

fn as_quota<'a>((name, r): (&'a String, &'a core::RateResult)) -> ratelimit_headers::Quota<'a> {
    ratelimit_headers::Quota {
        policy: name,
        key: &r.key,
        limit: r.limit,
        period_ms: r.period_ms,
        burst: r.burst,
        remaining: r.remaining,
        reset_after_ms: r.reset_after_ms,
    }
}

/// The policy name each check's headers carry.
fn policy_name(c: &core::RateCheck) -> String {
    match &c.limit {
        core::RateLimitRef::Policy { name, .. } => name.clone(),
        core::RateLimitRef::Inline(_) => "inline".to_string(),
    }
}

pub(super) async fn rate_check(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Json(req): Json<proto::RateCheckRequest>,
) -> ApiResult<Response> {
    check(st, caller, req, Headers::Send).await
}

/// Whether an answer carries the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Headers {
    /// HTTP: `RateLimit-Policy`, `RateLimit`, `X-RateLimit-*`, `Retry-After` and the
    /// shadow and allowlist notes.
    Send,
    /// A decision stream's answer is the status and body only; the body carries
    /// the same figures, so the rate-limit headers (a SHA-256 per check) are not built.
    Skip,
}

/// Decide a rate check for `caller` and shape its answer.
pub(super) async fn check(
    st: ApiState,
    caller: Caller,
    req: proto::RateCheckRequest,
    headers: Headers,
) -> ApiResult<Response> {
    let checks = rate_request_to_core(req)?;
    let names: Vec<String> = checks.iter().map(policy_name).collect();
    let (decision, notes, allowed) = match st.write(&caller, Op::RateCheck { checks }).await? {
        Outcome::Rate(d) => (d, Vec::new(), Vec::new()),
        Outcome::RateShadow {
            decision,
            shadow_denied,
        } => (decision, shadow_denied, Vec::new()),
        Outcome::RateAllowlisted {
            decision,
            shadow_denied,
            allowlisted,
        } => (decision, shadow_denied, allowlisted),
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
    st.stats.rate_checked(&decision.results);
    st.metrics.decision(
        "rate",
        if decision.allowed {
            "allowed"
        } else {
            "limited"
        },
    );
    let mut shadow_headers = HeaderMap::new();
    let shadow_denied = if notes.is_empty() {
        Vec::new()
    } else {
        super::policies::shadow_denied(&st, &mut shadow_headers, notes)
    };
    if !allowed.is_empty() {
        let policy_of = |key: &str| {
            decision
                .results
                .iter()
                .zip(&names)
                .find(|(r, _)| r.key == key)
                .map_or_else(String::new, |(_, n)| n.clone())
        };
        super::allowlist::allowlisted(&st, &mut shadow_headers, &allowed, policy_of);
    }
    let is_allowlisted = |key: &str| allowed.iter().any(|a| a.key == key);
    let body = proto::RateCheckResponse {
        allowed: decision.allowed,
        error: (!decision.allowed).then(|| codes::RATE_LIMITED.to_string()),
        message: (!decision.allowed).then(|| format!("rate limit exceeded on {}", top.key)),
        limit: top.limit,
        remaining: if decision.allowed { top.remaining } else { 0 },
        reset_after_ms: top.reset_after_ms,
        // An allowed request has nothing to wait for, even when a shadow check
        // (the most restrictive result then) would have had.
        retry_after_ms: if decision.allowed {
            0
        } else {
            top.retry_after_ms
        },
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
                allowlisted: is_allowlisted(&r.key),
            })
            .collect(),
        shadow_denied,
        allowlisted: !allowed.is_empty(),
    };
    let status = if decision.allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut resp = (status, JsonResponse(body)).into_response();
    if headers == Headers::Skip {
        return Ok(resp);
    }
    // The rate-limit fields, Retry-After and Content-Length: room for all at once.
    resp.headers_mut().reserve(8);
    rate_headers(resp.headers_mut(), &names, &decision.results, &top);
    if !decision.allowed {
        set_retry_after(resp.headers_mut(), top.retry_after_ms);
    }
    resp.headers_mut().extend(shadow_headers);
    Ok(resp)
}
