//! The public HTTP API: JSON over HTTP/1.1 on every node's `api_addr`.
//!
//! One file per resource ([`slots`], [`limits`], [`rate`], [`counters`], [`policies`],
//! [`allowlist`], [`audit`], [`cluster`],
//! [`ops`], and the status page's files in `http::ui`); this file wires them. The routes are not listed here: [`router`] walks
//! `quorate_proto::routes::ROUTES` and asks [`handler`] for each row's handler (an
//! exhaustive `match`, so a row without a handler does not compile). The same table
//! gives every route its [`Access`]; [`authorize`] refuses a matched route the table
//! does not declare (default deny).
//!
//! Handlers are thin translations: parse the request ([`quorate_proto`] types, through
//! the extractors of `http::extract`), turn it into a core [`Op`] or [`Query`], hand it
//! to the [`Backend`] (which replicates or linearizably reads, forwarding to the
//! leader when needed) and map the core's reply back onto the wire. All validation of
//! keys, limits and TTLs happens in the core, so every replica rejects the same
//! inputs; this layer only rejects what cannot be expressed as an op.
//!
//! Error contract: every non-2xx response is `{"error": code, "message": text}` (429s
//! add the decision), shaped in one place (`http::error`). No input reaches a panic or
//! a 500: malformed bodies, paths and queries are 4xx; a cluster that cannot decide in
//! time is 503 with `Retry-After`.
//!
//! Each request is checked once: [`authorize`] works out who the caller is
//! (`ApiAuth::authenticate`, once) and whether the route's declared role permits it
//! (`security::permits`), then records the [`Caller`] for the handlers. Each request
//! gets one deadline, set by the handler when it hands the request to the backend
//! (`ApiState::deadline`); the backend owns it from there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method as HttpMethod, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use quorate_core::{Caller, Op, Outcome, Query};
use quorate_proto::routes::{self, Access, Method, Route, RouteId, ROUTES};
use quorate_proto::{codes, LEADER_HEADER};
use tracing::Instrument;

use super::error::{ApiError, ApiResult};
use crate::backend::Backend;
use crate::security::{permits, ApiAuth, Denied, Role};
use crate::stats::Stats;
use crate::telemetry::Metrics;

pub(crate) mod allowlist;
mod audit;
mod cluster;
mod counters;
mod limits;
mod ops;
pub(crate) mod policies;
mod rate;
mod slots;
pub mod stream;
mod wait;

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
    /// Longest `wait_ms` of a waiting acquire (`limits.max_wait_ms`; 400 above).
    pub max_wait_ms: u64,
}

/// Everything a handler can reach. axum clones it for every extractor and middleware
/// of every request, so it is a few reference counts and nothing that allocates.
#[derive(Clone)]
pub struct ApiState {
    pub backend: Arc<dyn Backend>,
    pub metrics: Arc<Metrics>,
    /// This node's sampled activity (`GET /v1/stats`, the status page's charts).
    pub stats: Arc<Stats>,
    pub config: Arc<ApiConfig>,
    /// The decision streams' cap and stop signal.
    pub streams: stream::Streams,
}

/// The public router (`/v1/...`, `/healthz`, `/readyz`, `/metrics`), built from the
/// route table.
pub fn router(state: ApiState) -> Router {
    let body_limit = state.config.max_body_bytes;
    ROUTES
        .iter()
        .fold(Router::new(), |r, route| {
            r.route(route.path, handler(route))
        })
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The handler of one row, served on the row's method (so the table, not the
/// handler, decides the method).
fn handler(route: &Route) -> MethodRouter<ApiState> {
    let f = match route.method {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
        Method::Delete => MethodFilter::DELETE,
    };
    match route.id {
        RouteId::Acquire => on(f, slots::acquire),
        RouteId::Release => on(f, slots::release),
        RouteId::Renew => on(f, slots::renew),
        RouteId::Slots => on(f, slots::slots),
        RouteId::ListLimits => on(f, limits::list_limits),
        RouteId::PutLimit => on(f, limits::put_limit),
        RouteId::GetLimit => on(f, limits::get_limit),
        RouteId::DeleteLimit => on(f, limits::delete_limit),
        RouteId::RateCheck => on(f, rate::rate_check),
        RouteId::CounterIncr => on(f, counters::counter_incr),
        RouteId::GetCounter => on(f, counters::get_counter),
        RouteId::ClearCounter => on(f, counters::clear_counter),
        RouteId::Policies => on(f, policies::policies),
        RouteId::PutPolicy => on(f, policies::put_policy),
        RouteId::DeletePolicy => on(f, policies::delete_policy),
        RouteId::PutPolicyMode => on(f, policies::put_policy_mode),
        RouteId::PutTier => on(f, policies::put_tier),
        RouteId::DeleteTier => on(f, policies::delete_tier),
        RouteId::Allowlist => on(f, allowlist::allowlist),
        RouteId::Allow => on(f, allowlist::allow),
        RouteId::Disallow => on(f, allowlist::disallow),
        RouteId::Audit => on(f, audit::audit),
        RouteId::Cluster => on(f, cluster::cluster),
        RouteId::AddMember => on(f, cluster::add_member),
        RouteId::RemoveMember => on(f, cluster::remove_member),
        RouteId::Healthz => on(f, ops::healthz),
        RouteId::Readyz => on(f, ops::readyz),
        RouteId::Metrics => on(f, ops::metrics),
        RouteId::OpenApi => on(f, ops::openapi),
        RouteId::Stats => on(f, cluster::stats),
        RouteId::Ui => on(f, super::ui::page),
        RouteId::UiAsset => on(f, super::ui::asset),
        RouteId::Stream => on(f, stream::stream),
    }
}

impl ApiState {
    /// The deadline of a request that arrives now: `factor` request timeouts. The
    /// one place the API sets it; the backend owns it from there (it answers
    /// `Unavailable`, a 503, when it passes: a write may or may not have been
    /// applied, and retrying with the same lease_id is safe).
    fn deadline(&self, factor: u32) -> Instant {
        Instant::now() + self.config.request_timeout * factor
    }

    /// Replicate an op on behalf of `caller` (who travels inside it, so the core
    /// judges role and lease ownership on every replica); the core's own error
    /// (invalid input, unknown lease, forbidden, state full) is the caller's answer.
    async fn write(&self, caller: &Caller, op: Op) -> ApiResult<Outcome> {
        let op = op.by(caller.clone());
        Ok(self.backend.write(op, self.deadline(1)).await??)
    }

    /// Answer a query linearizably.
    async fn read(&self, q: Query) -> ApiResult<Outcome> {
        Ok(self.backend.read(q, self.deadline(1)).await??)
    }
}

/// The static name of a request's method, for the route table and metric labels.
fn method_of(m: &HttpMethod) -> Option<Method> {
    match *m {
        HttpMethod::GET => Some(Method::Get),
        HttpMethod::POST => Some(Method::Post),
        HttpMethod::PUT => Some(Method::Put),
        HttpMethod::DELETE => Some(Method::Delete),
        _ => None,
    }
}

/// The access a request needs, from the route table.
///
/// - a matched route in the table: its declared access;
/// - a matched path whose method is not in the table (405) or no match at all (404):
///   a client token, so nothing about the cluster leaks to anonymous callers;
/// - a matched route the table does not declare: refused. Every route the router
///   serves comes from the table, so this only fires if someone adds a route by hand —
///   which is exactly the mistake default deny exists for.
fn access_for(method: &HttpMethod, matched: Option<&str>) -> Option<Access> {
    let Some(pattern) = matched else {
        return Some(Access::Client);
    };
    if let Some(route) = method_of(method).and_then(|m| routes::find(m, pattern)) {
        return Some(route.access);
    }
    ROUTES
        .iter()
        .any(|r| r.path == pattern)
        .then_some(Access::Client)
}

/// Check the caller's token (or, with no tokens configured, that it is on loopback)
/// against the access the route table declares. Runs inside `observe`, so refusals
/// are counted like any other response. The token itself is never logged.
async fn authorize(
    State(st): State<ApiState>,
    connect: Result<ConnectInfo<SocketAddr>, axum::extract::rejection::ExtensionRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    // A clone of the matched path is a reference count (no allocation per request).
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let needed = match access_for(req.method(), matched.as_ref().map(MatchedPath::as_str)) {
        Some(Access::Open) => return next.run(req).await,
        Some(Access::Client) => Role::Client,
        Some(Access::Admin) => Role::Admin,
        None => {
            tracing::error!(%route, "route without a declared access refused (default deny)");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                "this route declares no access rule and is refused",
            )
            .into_response();
        }
    };
    // No connect info (a server started without it) means "unknown peer": refused
    // in loopback-only mode, never assumed local. Identity first (once per request),
    // then the route's permission over it.
    let peer = connect.ok().map(|c| c.0);
    let checked = st
        .config
        .auth
        .authenticate(req.headers(), peer)
        .and_then(|caller| permits(&caller, needed).map(|()| caller));
    match checked {
        Ok(caller) => {
            // Handlers read it back with `http::extract::Authed` and put it into ops.
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(Denied::Unauthorized(why)) => {
            tracing::info!(peer = ?peer, %route, why, "unauthorized request");
            ApiError::new(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, why).into_response()
        }
        Err(Denied::Forbidden) => {
            tracing::info!(peer = ?peer, %route, "forbidden: token role too weak");
            ApiError::new(
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                "this token's role may not do this (admin required)",
            )
            .into_response()
        }
    }
}

/// Per-request span, structured completion log, the leader hint
/// (`x-quorate-leader`), and request metrics by route and status. Labels are the route table's static pattern and method names (never the
/// raw path), so recording allocates nothing and cardinality stays bounded whatever
/// callers send.
async fn observe(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    let route: &'static str = matched
        .and_then(|p| ROUTES.iter().find(|r| r.path == p))
        .map_or("unmatched", |r| r.path);
    let method = method_of(req.method()).map_or("OTHER", Method::as_str);
    let span = tracing::info_span!("request", method, route, node = st.config.node_id);
    let start = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    // The leader hint, on every answer (refusals and errors included): a client that
    // follows it sends its next request straight to the leader.
    if let Some(v) = st
        .backend
        .leader_api()
        .and_then(|url| HeaderValue::from_str(&url).ok())
    {
        resp.headers_mut().insert(LEADER_HEADER, v);
    }
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
    st.metrics
        .http_request(route, method, status.as_u16(), secs);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_comes_from_the_table_and_defaults_to_deny() {
        let a = |m: HttpMethod, p: &str| access_for(&m, Some(p));
        assert_eq!(a(HttpMethod::GET, "/healthz"), Some(Access::Open));
        assert_eq!(
            a(HttpMethod::POST, "/v1/slots/acquire"),
            Some(Access::Client)
        );
        assert_eq!(a(HttpMethod::GET, "/v1/limits/{key}"), Some(Access::Client));
        assert_eq!(a(HttpMethod::PUT, "/v1/limits/{key}"), Some(Access::Admin));
        assert_eq!(
            a(HttpMethod::DELETE, "/v1/members/{id}"),
            Some(Access::Admin)
        );
        // A known path with another method (405) and no match (404): client.
        assert_eq!(
            a(HttpMethod::PATCH, "/v1/limits/{key}"),
            Some(Access::Client)
        );
        assert_eq!(access_for(&HttpMethod::GET, None), Some(Access::Client));
        // A route served but not declared: refused.
        assert_eq!(a(HttpMethod::GET, "/v1/admin/secret"), None);
    }
}
