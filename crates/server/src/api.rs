//! The public HTTP API: JSON over HTTP/1.1 on every node's `api_addr`.
//!
//! Handlers are thin translations: parse and default the request ([`quorate_proto`]
//! types), turn it into a core [`Op`] or [`Query`], hand it to the [`Backend`] (which
//! replicates or linearizably reads, forwarding to the leader when needed), and map
//! the core's [`Reply`] back onto the wire. All validation of keys, limits and TTLs
//! happens in the core, so every replica rejects the same inputs; this layer only
//! rejects what cannot be expressed as an op (malformed JSON, unknown fields, mixing
//! inline and named rate limits).
//!
//! Error contract: every non-2xx response is `{"error": code, "message": text}`
//! (429s add the decision), produced in exactly one place, [`ApiError`]'s
//! `IntoResponse`. No input reaches a panic or a 500: malformed bodies, paths and
//! queries are 4xx; a cluster that cannot decide in time is 503 with `Retry-After`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query as QueryParams, Request, State,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tracing::Instrument;

use quorate_core::{self as core, CoreError, Op, Outcome, Query};
use quorate_proto::{self as proto, codes};

use crate::auth::{self, ApiAuth, Denied};
use crate::backend::{Backend, NodeError};
use crate::metrics::Metrics;

/// Settings the HTTP layer needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Who may call what (tokens and roles; loopback-only when empty).
    pub auth: ApiAuth,
    pub node_id: u64,
    /// TTL of an acquire or renew that names none.
    pub default_ttl_ms: u64,
    /// Largest accepted request body (413 above).
    pub max_body_bytes: usize,
    /// How long a request may wait for the cluster before answering 503.
    pub request_timeout: Duration,
}

/// Everything a handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub backend: Arc<dyn Backend>,
    pub metrics: Arc<Metrics>,
    pub config: ApiConfig,
}

/// Most rows one `GET /v1/limits` returns unless `max` says otherwise.
const DEFAULT_LIST_MAX: u32 = 1000;
/// Hard cap on `max` for `GET /v1/limits`.
const LIST_MAX_CAP: u32 = 10_000;

/// The public router (`/v1/...`, `/healthz`, `/readyz`, `/metrics`).
pub fn router(state: ApiState) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/slots/acquire", post(acquire))
        .route("/v1/slots/release", post(release))
        .route("/v1/slots/renew", post(renew))
        .route("/v1/slots/{key}", get(slots))
        .route("/v1/limits", get(list_limits))
        .route(
            "/v1/limits/{key}",
            put(put_limit).get(get_limit).delete(delete_limit),
        )
        .route("/v1/rate/check", post(rate_check))
        .route("/v1/policies", get(policies))
        .route("/v1/policies/{name}", put(put_policy).delete(delete_policy))
        .route("/v1/tiers/{name}", put(put_tier).delete(delete_tier))
        .route("/v1/cluster", get(cluster))
        .route("/v1/members", post(add_member))
        .route("/v1/members/{id}", delete(remove_member))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------
// Errors

/// The one error type of the HTTP layer; its `IntoResponse` is the only place that
/// shapes error bodies.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_ms: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, message)
    }

    /// An outcome that cannot answer this request: a bug, reported as such.
    fn unexpected(outcome: &Outcome) -> Self {
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
        match e {
            CoreError::Invalid { .. } => Self::invalid(message),
            CoreError::LeaseConflict { .. } => {
                Self::new(StatusCode::CONFLICT, codes::LEASE_CONFLICT, message)
            }
            CoreError::LeaseNotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, codes::LEASE_NOT_FOUND, message)
            }
            CoreError::PolicyNotFound { .. } | CoreError::TierNotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, codes::POLICY_NOT_FOUND, message)
            }
            CoreError::CorruptSnapshot(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL, message)
            }
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Unavailable(_) => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: codes::UNAVAILABLE,
                message: e.to_string(),
                retry_after_ms: Some(1000),
            },
            NodeError::Membership(_) => Self::invalid(e.to_string()),
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

type ApiResult<T> = Result<T, ApiError>;

/// `Retry-After` in whole seconds, rounded up (never 0 for a non-zero wait).
fn set_retry_after(headers: &mut HeaderMap, ms: u64) {
    headers.insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from(ms.div_ceil(1000).max(1)),
    );
}

/// Parse a JSON body. Content type is not required (curl users forget it); unknown
/// fields, wrong types and syntax errors are 400 with serde's explanation.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

// ---------------------------------------------------------------------------------------
// Backend calls

impl ApiState {
    /// Replicate an op, bounded by the request timeout (503 on expiry: the op may or
    /// may not have been applied; retrying with the same lease_id is safe).
    async fn write(&self, op: Op) -> ApiResult<Outcome> {
        match tokio::time::timeout(self.config.request_timeout, self.backend.write(op)).await {
            Ok(reply) => Ok(reply??),
            Err(_) => Err(NodeError::Unavailable("request timed out".into()).into()),
        }
    }

    async fn read(&self, q: Query) -> ApiResult<Outcome> {
        match tokio::time::timeout(self.config.request_timeout, self.backend.read(q)).await {
            Ok(reply) => Ok(reply??),
            Err(_) => Err(NodeError::Unavailable("request timed out".into()).into()),
        }
    }

    fn decision(&self, kind: &str, outcome: &str) {
        self.metrics.inc(
            "quorate_decisions_total",
            "Decisions returned to callers, by kind and outcome.",
            &[("kind", kind), ("outcome", outcome)],
        );
    }
}

// ---------------------------------------------------------------------------------------
// Slots

fn slots_to_wire(slots: Vec<core::SlotUsage>) -> Vec<proto::SlotUsage> {
    slots
        .into_iter()
        .map(|s| proto::SlotUsage {
            key: s.key,
            used: s.used,
            limit: s.limit,
        })
        .collect()
}

async fn acquire(
    State(st): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: proto::AcquireRequest = parse(body)?;
    let op = Op::Acquire(core::Acquire {
        keys: req.keys,
        lease_id: req
            .lease_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        holder: req.holder.unwrap_or_default(),
        ttl_ms: req.ttl_ms.unwrap_or(st.config.default_ttl_ms),
    });
    match st.write(op).await? {
        Outcome::Granted(g) => {
            st.decision("acquire", if g.reused { "reused" } else { "granted" });
            tracing::debug!(lease_id = %g.lease_id, token = g.fencing_token, "granted");
            Ok(Json(proto::AcquireGranted {
                granted: true,
                lease_id: g.lease_id,
                fencing_token: g.fencing_token,
                expires_at_ms: g.expires_at_ms,
                slots: slots_to_wire(g.slots),
            })
            .into_response())
        }
        Outcome::Denied(d) => {
            st.decision("acquire", "denied");
            let message = format!("no free slot on {}", d.blocked_by.join(", "));
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(proto::AcquireDenied {
                    granted: false,
                    error: codes::LIMIT_EXCEEDED.into(),
                    message,
                    blocked_by: d.blocked_by,
                    slots: slots_to_wire(d.slots),
                    retry_after_ms: d.retry_after_ms,
                }),
            )
                .into_response();
            set_retry_after(resp.headers_mut(), d.retry_after_ms);
            Ok(resp)
        }
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn release(
    State(st): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<proto::ReleaseResponse>> {
    let req: proto::ReleaseRequest = parse(body)?;
    core::validate::lease_id(&req.lease_id)?;
    match st
        .write(Op::Release {
            lease_id: req.lease_id,
        })
        .await?
    {
        Outcome::Released { released } => {
            st.decision("release", if released { "released" } else { "absent" });
            Ok(Json(proto::ReleaseResponse { released }))
        }
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn renew(
    State(st): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<proto::RenewResponse>> {
    let req: proto::RenewRequest = parse(body)?;
    let op = Op::Renew {
        lease_id: req.lease_id,
        ttl_ms: req.ttl_ms.unwrap_or(st.config.default_ttl_ms),
    };
    match st.write(op).await {
        Ok(Outcome::Renewed {
            lease_id,
            expires_at_ms,
        }) => {
            st.decision("renew", "renewed");
            Ok(Json(proto::RenewResponse {
                lease_id,
                expires_at_ms,
            }))
        }
        Ok(other) => Err(ApiError::unexpected(&other)),
        Err(e) => {
            if e.code == codes::LEASE_NOT_FOUND {
                st.decision("renew", "not_found");
            }
            Err(e)
        }
    }
}

async fn slots(
    State(st): State<ApiState>,
    key: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<proto::SlotsResponse>> {
    let Path(key) = key?;
    match st.read(Query::Usage { key }).await? {
        Outcome::Usage(u) => Ok(Json(proto::SlotsResponse {
            key: u.key,
            used: u.used,
            limit: u.limit,
            leases: u
                .leases
                .into_iter()
                .map(|l| proto::LeaseInfo {
                    lease_id: l.lease_id,
                    holder: l.holder,
                    fencing_token: l.fencing_token,
                    expires_at_ms: l.expires_at_ms,
                })
                .collect(),
        })),
        other => Err(ApiError::unexpected(&other)),
    }
}

// ---------------------------------------------------------------------------------------
// Limits

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

async fn put_limit(
    State(st): State<ApiState>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<proto::PutLimitResponse>> {
    let Path(key) = key?;
    let req: proto::PutLimitRequest = parse(body)?;
    match st
        .write(Op::SetLimit {
            key,
            limit: req.limit,
        })
        .await?
    {
        Outcome::LimitSet { key, limit } => Ok(Json(proto::PutLimitResponse { key, limit })),
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn get_limit(
    State(st): State<ApiState>,
    key: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<proto::LimitEntry>> {
    let Path(key) = key?;
    match st.read(Query::Limit { key }).await? {
        Outcome::Limit(l) => Ok(Json(limit_to_wire(l))),
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn delete_limit(
    State(st): State<ApiState>,
    key: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<proto::DeleteResponse>> {
    let Path(key) = key?;
    match st.write(Op::DeleteLimit { key }).await? {
        Outcome::LimitDeleted { deleted } => Ok(Json(proto::DeleteResponse { deleted })),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// Query string of `GET /v1/limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    #[serde(default)]
    prefix: String,
    max: Option<u32>,
}

async fn list_limits(
    State(st): State<ApiState>,
    params: Result<QueryParams<ListParams>, QueryRejection>,
) -> ApiResult<Json<proto::ListLimitsResponse>> {
    let QueryParams(p) = params?;
    let max = p.max.unwrap_or(DEFAULT_LIST_MAX);
    if max == 0 || max > LIST_MAX_CAP {
        return Err(ApiError::invalid(format!(
            "max must be in 1..={LIST_MAX_CAP}"
        )));
    }
    match st
        .read(Query::Limits {
            prefix: p.prefix,
            max,
        })
        .await?
    {
        Outcome::Limits { limits, truncated } => Ok(Json(proto::ListLimitsResponse {
            limits: limits.into_iter().map(limit_to_wire).collect(),
            truncated,
        })),
        other => Err(ApiError::unexpected(&other)),
    }
}

// ---------------------------------------------------------------------------------------
// Rate limits

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
    let policy = results
        .iter()
        .map(|r| {
            format!(
                "{};q={};w={};burst={}",
                sf_string(&r.key),
                r.limit,
                r.period_ms.div_ceil(1000).max(1),
                r.burst
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let state = results
        .iter()
        .map(|r| {
            format!(
                "{};r={};t={}",
                sf_string(&r.key),
                r.remaining,
                r.reset_after_ms.div_ceil(1000)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
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

async fn rate_check(
    State(st): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: proto::RateCheckRequest = parse(body)?;
    let checks = rate_request_to_core(req)?;
    let decision = match st.write(Op::RateCheck { checks }).await? {
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
    st.decision(
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
    let mut resp = (status, Json(body)).into_response();
    rate_headers(resp.headers_mut(), &decision.results, &top);
    if !decision.allowed {
        set_retry_after(resp.headers_mut(), top.retry_after_ms);
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// Policies and tiers

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

async fn policies(State(st): State<ApiState>) -> ApiResult<Json<proto::PoliciesResponse>> {
    match st.read(Query::Policies).await? {
        Outcome::Policies(v) => Ok(Json(proto::PoliciesResponse {
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

async fn put_policy(
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<proto::PolicyEntry>> {
    let Path(name) = name?;
    let spec: proto::PolicySpec = parse(body)?;
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
        .write(Op::PutPolicy {
            name: name.clone(),
            policy: policy.clone(),
        })
        .await?
    {
        Outcome::PolicyPut { name } => Ok(Json(policy_to_wire(name, policy))),
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn delete_policy(
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<proto::DeleteResponse>> {
    let Path(name) = name?;
    match st.write(Op::DeletePolicy { name }).await? {
        Outcome::PolicyDeleted { deleted } => Ok(Json(proto::DeleteResponse { deleted })),
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn put_tier(
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<proto::TierEntry>> {
    let Path(name) = name?;
    let req: proto::PutTierRequest = parse(body)?;
    let milli = req.multiplier * 1000.0;
    if !milli.is_finite()
        || !(1.0..=f64::from(core::validate::MAX_MULTIPLIER_MILLI)).contains(&milli)
    {
        return Err(ApiError::invalid("multiplier must be in 0.001..=1000"));
    }
    // In range, so the cast cannot truncate.
    let multiplier_milli = milli.round() as u32;
    match st
        .write(Op::PutTier {
            name,
            multiplier_milli,
        })
        .await?
    {
        Outcome::TierPut { name } => Ok(Json(proto::TierEntry {
            name,
            multiplier: f64::from(multiplier_milli) / 1000.0,
        })),
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn delete_tier(
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<proto::DeleteResponse>> {
    let Path(name) = name?;
    match st.write(Op::DeleteTier { name }).await? {
        Outcome::TierDeleted { deleted } => Ok(Json(proto::DeleteResponse { deleted })),
        other => Err(ApiError::unexpected(&other)),
    }
}

// ---------------------------------------------------------------------------------------
// Cluster and operations

async fn cluster(State(st): State<ApiState>) -> ApiResult<Json<proto::ClusterResponse>> {
    let fut = st.backend.cluster();
    match tokio::time::timeout(st.config.request_timeout, fut).await {
        Ok(r) => Ok(Json(r?)),
        Err(_) => Err(NodeError::Unavailable("request timed out".into()).into()),
    }
}

async fn add_member(
    State(st): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<proto::MembersResponse>> {
    let req: proto::AddMemberRequest = parse(body)?;
    // Catching up a learner can take longer than a normal request.
    let fut = st.backend.add_member(req);
    match tokio::time::timeout(st.config.request_timeout * 6, fut).await {
        Ok(r) => Ok(Json(r?)),
        Err(_) => Err(NodeError::Unavailable("membership change timed out".into()).into()),
    }
}

async fn remove_member(
    State(st): State<ApiState>,
    id: Result<Path<u64>, PathRejection>,
) -> ApiResult<Json<proto::MembersResponse>> {
    let Path(id) = id?;
    let fut = st.backend.remove_member(id);
    match tokio::time::timeout(st.config.request_timeout * 6, fut).await {
        Ok(r) => Ok(Json(r?)),
        Err(_) => Err(NodeError::Unavailable("membership change timed out".into()).into()),
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    node_id: u64,
}

async fn healthz(State(st): State<ApiState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        node_id: st.config.node_id,
    })
}

async fn readyz(State(st): State<ApiState>) -> ApiResult<Json<Health>> {
    if st.backend.ready().await {
        Ok(Json(Health {
            status: "ready",
            node_id: st.config.node_id,
        }))
    } else {
        Err(NodeError::Unavailable("no leader known or not caught up".into()).into())
    }
}

async fn metrics(State(st): State<ApiState>) -> Response {
    let mut text = st.metrics.render();
    text.push_str(&st.backend.metrics_text());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The OpenAPI 3 description of this API (generated from `quorate-proto`).
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        quorate_proto::openapi::openapi_json(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// Check the caller's token (or, with no tokens configured, that it is on loopback)
/// against the role the matched route needs. Runs inside `observe`, so refusals are
/// counted like any other response. The token itself is never logged.
async fn authorize(
    State(st): State<ApiState>,
    connect: Result<ConnectInfo<SocketAddr>, axum::extract::rejection::ExtensionRejection>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str());
    let Some(needed) = auth::required_role(req.method(), route) else {
        return next.run(req).await;
    };
    // No connect info (a server started without it) means "unknown peer": refused
    // in loopback-only mode, never assumed local.
    let peer = connect.ok().map(|c| c.0);
    match st.config.auth.check(req.headers(), peer, needed) {
        Ok(()) => next.run(req).await,
        Err(Denied::Unauthorized(why)) => {
            tracing::info!(peer = ?peer, route, why, "unauthorized request");
            ApiError::new(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, why).into_response()
        }
        Err(Denied::Forbidden) => {
            tracing::info!(peer = ?peer, route, "forbidden: token role too weak");
            ApiError::new(
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                "this token's role may not do this (admin required)",
            )
            .into_response()
        }
    }
}

/// Per-request span, structured completion log, and request metrics by route and
/// status. The route label is the matched pattern (`/v1/slots/{key}`), never the raw
/// path, so label cardinality stays bounded whatever callers send.
async fn observe(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().clone();
    let span = tracing::info_span!("request", %method, route = %route, node = st.config.node_id);
    let start = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let secs = start.elapsed().as_secs_f64();
    let status = resp.status();
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                latency_ms = secs * 1000.0,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                latency_ms = secs * 1000.0,
                "request done"
            );
        }
    });
    let status_s = status.as_u16().to_string();
    st.metrics.inc(
        "quorate_http_requests_total",
        "HTTP requests by route, method and status.",
        &[
            ("route", &route),
            ("method", method.as_str()),
            ("status", &status_s),
        ],
    );
    st.metrics.observe(
        "quorate_http_request_seconds",
        "HTTP request latency by route.",
        &[("route", &route)],
        secs,
    );
    resp
}
