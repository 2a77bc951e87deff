//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over the node.
//!
//! One call becomes one [`Op::Descriptors`], submitted through the [`Backend`] like
//! any HTTP write — replicated, batched, forwarded by a follower to the leader — and
//! decided by the core against the replicated descriptor table
//! (`quorate_core::descriptors`): every limited descriptor is charged, or none.
//!
//! The contract with Envoy:
//! - `overall_code` OK or OVER_LIMIT; `statuses` in request order, each with
//!   `current_limit` (name, requests_per_unit, unit) when a limit applies,
//!   `limit_remaining` and `duration_until_reset`; `response_headers_to_add` carries
//!   the draft-10 RateLimit fields of the limited descriptors (and `retry-after` when
//!   over the limit), built by `crate::ratelimit_headers` like the HTTP API's.
//! - Shadow mode (`shadow_mode = true` on a `[envoy]` rate limit, or a policy in
//!   shadow mode): a descriptor only a shadow limit would deny is answered OK, and
//!   `x-quorate-shadow-denied` (the HTTP API's header) names those limits; each is
//!   counted in `quorate_shadow_denials_total{policy}` under its limit name.
//! - A decision is never guessed: no quorum or no answer within
//!   `server.request_timeout_ms` is `UNAVAILABLE` (Envoy's `failure_mode_deny` then
//!   decides); bad input `INVALID_ARGUMENT` (an unknown domain included, as
//!   envoyproxy/ratelimit errors on it); a descriptor naming a deleted policy
//!   `FAILED_PRECONDITION`; a state cap `RESOURCE_EXHAUSTED`.
//! - Auth: `authorization: Bearer <token>` metadata, checked by the same
//!   `security::auth` rules as HTTP with the client role; in open mode (no tokens)
//!   loopback callers only, as on HTTP. 401/403 become `UNAUTHENTICATED` /
//!   `PERMISSION_DENIED`.
//! - Observability: a span per call; `quorate_envoy_requests{domain,code}` and
//!   `quorate_envoy_request_seconds{domain}`, where `domain` is one of the node's
//!   configured domains or `other`, so callers cannot grow the label set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit as PbUnit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use quorate_core::descriptors::{
    Descriptor, DescriptorDecision, DescriptorRequest, Unit, MAX_DESCRIPTORS, MAX_ENTRIES,
};
use quorate_core::{Caller, CoreError, Op, Outcome};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::backend::{Backend, NodeError};
use crate::ratelimit_headers::{self, Quota};
use crate::security::{permits, ApiAuth, Denied, Role};
use crate::telemetry::Metrics;

/// The service; cheap to clone into tonic's server.
#[derive(Clone)]
pub struct RateLimitGrpc {
    pub backend: Arc<dyn Backend>,
    pub auth: ApiAuth,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
    /// Metric label values: the node's configured domains (leaked once at startup,
    /// a bounded list), so recording allocates nothing.
    pub domains: Arc<[&'static str]>,
}

impl RateLimitGrpc {
    fn label(&self, domain: &str) -> &'static str {
        self.domains
            .iter()
            .find(|d| **d == domain)
            .copied()
            .unwrap_or("other")
    }

    fn authorize(&self, req: &Request<RateLimitRequest>) -> Result<Caller, Status> {
        let peer: Option<SocketAddr> = req.remote_addr();
        let headers = req.metadata().clone().into_headers();
        let checked = self
            .auth
            .authenticate(&headers, peer)
            .and_then(|caller| permits(&caller, Role::Client).map(|()| caller));
        match checked {
            Ok(caller) => Ok(caller),
            Err(Denied::Unauthorized(why)) => {
                tracing::info!(peer = ?peer, why, "unauthenticated ShouldRateLimit");
                Err(Status::unauthenticated(why))
            }
            Err(Denied::Forbidden) => Err(Status::permission_denied(
                "this token's role may not check rate limits",
            )),
        }
    }

    async fn decide(
        &self,
        caller: Caller,
        req: RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        let op = Op::Descriptors(Box::new(to_core(req)?)).by(caller);
        // The call's one deadline; the backend answers Unavailable when it passes.
        let deadline = std::time::Instant::now() + self.request_timeout;
        let reply = self
            .backend
            .write(op, deadline)
            .await
            .map_err(node_status)?;
        let (decision, allowlisted, shadow_denied) = match reply.map_err(core_status)? {
            Outcome::Descriptors(d) => (d, Vec::new(), Vec::new()),
            Outcome::DescriptorsAllowlisted {
                decision,
                allowlisted,
            } => (decision, allowlisted, Vec::new()),
            Outcome::DescriptorsShadow {
                decision,
                shadow_denied,
                allowlisted,
            } => (decision, allowlisted, shadow_denied),
            other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
        };
        let mut response = to_response(&decision);
        if !shadow_denied.is_empty() {
            let mut names: Vec<&str> = Vec::new();
            for n in &shadow_denied {
                if !names.contains(&n.policy.as_str()) {
                    names.push(&n.policy);
                    self.metrics.shadow_denial(&n.policy);
                }
            }
            tracing::debug!(limits = ?names, "allowed in shadow mode");
            response.response_headers_to_add.push(header(
                crate::http::api::policies::SHADOW_DENIED_HEADER,
                names.join(", "),
            ));
        }
        if !allowlisted.is_empty() {
            // Counted under the descriptor's limit name; Envoy passes the header on
            // to the client as the HTTP API sends it.
            for a in &allowlisted {
                let name = decision
                    .statuses
                    .iter()
                    .filter_map(|s| s.limit.as_ref())
                    .find(|l| l.key == a.key)
                    .map_or("", |l| l.name.as_str());
                self.metrics.allowlisted(name);
            }
            let keys: Vec<&str> = allowlisted.iter().map(|a| a.key.as_str()).collect();
            response.response_headers_to_add.push(header(
                crate::http::api::allowlist::ALLOWLISTED_HEADER,
                keys.join(", "),
            ));
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Instant::now();
        let domain = self.label(&request.get_ref().domain);
        let span = tracing::info_span!(
            "grpc",
            method = "ShouldRateLimit",
            domain,
            descriptors = request.get_ref().descriptors.len()
        );
        let result = async {
            let caller = self.authorize(&request)?;
            self.decide(caller, request.into_inner()).await
        }
        .instrument(span.clone())
        .await;
        let code = match &result {
            Ok(r) if r.overall_code == Code::OverLimit as i32 => "over_limit",
            Ok(_) => "ok",
            Err(s) => code_label(s.code()),
        };
        self.metrics
            .envoy_request(domain, code, started.elapsed().as_secs_f64());
        span.in_scope(|| tracing::debug!(code, "answered"));
        result.map(Response::new)
    }
}

fn code_label(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        _ => "internal",
    }
}

fn unit_from_pb(u: i32) -> Result<Unit, Status> {
    match PbUnit::try_from(u) {
        Ok(PbUnit::Second) => Ok(Unit::Second),
        Ok(PbUnit::Minute) => Ok(Unit::Minute),
        Ok(PbUnit::Hour) => Ok(Unit::Hour),
        Ok(PbUnit::Day) => Ok(Unit::Day),
        Ok(PbUnit::Week) => Ok(Unit::Week),
        _ => Err(Status::invalid_argument(
            "limit override unit must be SECOND, MINUTE, HOUR, DAY or WEEK",
        )),
    }
}

fn unit_to_pb(u: Option<Unit>) -> PbUnit {
    match u {
        Some(Unit::Second) => PbUnit::Second,
        Some(Unit::Minute) => PbUnit::Minute,
        Some(Unit::Hour) => PbUnit::Hour,
        Some(Unit::Day) => PbUnit::Day,
        Some(Unit::Week) => PbUnit::Week,
        None => PbUnit::Unknown,
    }
}

fn descriptor(d: RateLimitDescriptor) -> Result<Descriptor, Status> {
    if d.is_negative_hits {
        return Err(Status::invalid_argument(
            "is_negative_hits (refunds) is not supported",
        ));
    }
    if d.entries.len() > MAX_ENTRIES {
        return Err(Status::invalid_argument(format!(
            "a descriptor has at most {MAX_ENTRIES} entries"
        )));
    }
    let limit = match d.limit {
        Some(l) => Some((l.requests_per_unit, unit_from_pb(l.unit)?)),
        None => None,
    };
    Ok(Descriptor {
        entries: d.entries.into_iter().map(|e| (e.key, e.value)).collect(),
        limit,
        hits_addend: d.hits_addend.map(|v| v.value),
    })
}

/// The wire request → the core's (shape checks here give early, clear errors; the
/// core checks everything again on every replica).
fn to_core(r: RateLimitRequest) -> Result<DescriptorRequest, Status> {
    if r.descriptors.len() > MAX_DESCRIPTORS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_DESCRIPTORS} descriptors per request"
        )));
    }
    Ok(DescriptorRequest {
        domain: r.domain,
        descriptors: r
            .descriptors
            .into_iter()
            .map(descriptor)
            .collect::<Result<_, _>>()?,
        hits_addend: r.hits_addend,
    })
}

fn duration(ms: u64) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_string(),
        value,
        ..HeaderValue::default()
    }
}

fn to_response(d: &DescriptorDecision) -> RateLimitResponse {
    let statuses = d
        .statuses
        .iter()
        .map(|s| DescriptorStatus {
            code: if s.over_limit {
                Code::OverLimit
            } else {
                Code::Ok
            } as i32,
            current_limit: s.limit.as_ref().map(|l| RateLimit {
                name: l.name.clone(),
                requests_per_unit: l.requests_per_unit,
                unit: unit_to_pb(l.unit) as i32,
            }),
            limit_remaining: s.remaining,
            duration_until_reset: s.limit.as_ref().map(|_| duration(s.reset_after_ms)),
            quota: None,
        })
        .collect();
    RateLimitResponse {
        overall_code: if d.ok { Code::Ok } else { Code::OverLimit } as i32,
        statuses,
        response_headers_to_add: headers(d),
        ..RateLimitResponse::default()
    }
}

/// The RateLimit fields of the limited descriptors; the trio and `retry-after` speak
/// for the most restrictive (over the limit: the longest wait; else: fewest left).
fn headers(d: &DescriptorDecision) -> Vec<HeaderValue> {
    let limited: Vec<_> = d
        .statuses
        .iter()
        .filter_map(|s| s.limit.as_ref().map(|l| (s, l)))
        .collect();
    let quotas: Vec<Quota<'_>> = limited
        .iter()
        .map(|(s, l)| Quota {
            policy: &l.name,
            key: &l.key,
            limit: l.requests_per_unit,
            period_ms: l.period_ms,
            burst: l.burst,
            remaining: s.remaining,
            reset_after_ms: s.reset_after_ms,
        })
        .collect();
    let top = if d.ok {
        quotas.iter().min_by_key(|q| q.remaining)
    } else {
        limited
            .iter()
            .zip(&quotas)
            .filter(|((s, _), _)| s.over_limit)
            .max_by_key(|((s, _), _)| s.retry_after_ms)
            .map(|(_, q)| q)
    };
    let Some(top) = top else {
        return Vec::new();
    };
    let mut out: Vec<_> = ratelimit_headers::fields(&quotas, top)
        .into_iter()
        .map(|(k, v)| header(k, v))
        .collect();
    if !d.ok {
        let wait = limited
            .iter()
            .map(|(s, _)| s.retry_after_ms)
            .max()
            .unwrap_or(0);
        out.push(header(
            "retry-after",
            wait.div_ceil(1000).max(1).to_string(),
        ));
    }
    out
}

fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::Unavailable(m) | NodeError::Unreachable(m) => Status::unavailable(m),
        // Routing retries another leader; one escaping means no leader to ask.
        NodeError::NotLeader { .. } => Status::unavailable("no leader"),
        NodeError::Forbidden(m) => Status::permission_denied(m),
        NodeError::Refused(m) => Status::failed_precondition(m),
    }
}

fn core_status(e: CoreError) -> Status {
    match e {
        CoreError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        CoreError::PolicyNotFound { .. } | CoreError::TierNotFound { .. } => {
            Status::failed_precondition(e.to_string())
        }
        CoreError::StateFull { .. } => Status::resource_exhausted(e.to_string()),
        CoreError::Forbidden { .. } => Status::permission_denied(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    use quorate_core::descriptors::{AppliedLimit, DescriptorStatus};

    fn desc() -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: vec![Entry {
                key: "k".into(),
                value: "v".into(),
            }],
            ..RateLimitDescriptor::default()
        }
    }

    fn req(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "d".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    #[test]
    fn what_is_not_supported_is_refused_up_front() {
        let mut neg = desc();
        neg.is_negative_hits = true;
        let mut month = desc();
        month.limit = Some(RateLimitOverride {
            requests_per_unit: 1,
            unit: PbUnit::Month as i32,
        });
        for (r, why) in [
            (req(vec![neg]), "is_negative_hits"),
            (req(vec![month]), "unit"),
            (req(vec![desc(); MAX_DESCRIPTORS + 1]), "at most"),
        ] {
            let e = to_core(r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(why), "{e:?}");
        }
        let mut hour = desc();
        hour.limit = Some(RateLimitOverride {
            requests_per_unit: 5,
            unit: PbUnit::Hour as i32,
        });
        let c = to_core(req(vec![hour])).unwrap();
        assert_eq!(c.descriptors[0].limit, Some((5, Unit::Hour)));
        assert_eq!(c.descriptors[0].hits_addend, None);
    }

    #[test]
    fn a_denial_carries_statuses_headers_and_retry_after() {
        let limited = |over: bool, remaining: u32, retry: u64| DescriptorStatus {
            over_limit: over,
            limit: Some(AppliedLimit {
                name: "per_ip".into(),
                key: "envoy:edge/remote_address=10.0.0.1".into(),
                requests_per_unit: 60,
                unit: Some(Unit::Minute),
                period_ms: 60_000,
                burst: 20,
            }),
            remaining,
            reset_after_ms: 1500,
            retry_after_ms: retry,
        };
        let unlimited = DescriptorStatus {
            over_limit: false,
            limit: None,
            remaining: 0,
            reset_after_ms: 0,
            retry_after_ms: 0,
        };
        let r = to_response(&DescriptorDecision {
            ok: false,
            statuses: vec![limited(true, 0, 2500), unlimited],
        });
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        let s = &r.statuses;
        assert_eq!(s[0].code, Code::OverLimit as i32);
        let l = s[0].current_limit.as_ref().unwrap();
        assert_eq!((l.requests_per_unit, l.unit), (60, PbUnit::Minute as i32));
        assert_eq!(s[0].duration_until_reset, Some(duration(1500)));
        assert_eq!(s[1].code, Code::Ok as i32);
        assert!(s[1].current_limit.is_none() && s[1].duration_until_reset.is_none());
        let h = |k: &str| {
            r.response_headers_to_add
                .iter()
                .find(|h| h.key == k)
                .map(|h| h.value.clone())
        };
        assert_eq!(h("retry-after").as_deref(), Some("3"));
        assert_eq!(h("x-ratelimit-remaining").as_deref(), Some("0"));
        assert!(h("ratelimit")
            .unwrap()
            .starts_with("\"per_ip\";r=0;t=2;pk=:"));
        // Nothing limited: no headers at all.
        let r = to_response(&DescriptorDecision {
            ok: true,
            statuses: vec![DescriptorStatus {
                over_limit: false,
                limit: None,
                remaining: 0,
                reset_after_ms: 0,
                retry_after_ms: 0,
            }],
        });
        assert!(r.response_headers_to_add.is_empty());
    }
}
