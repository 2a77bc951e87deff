//! Rate checks. A limited request is an answer, not an error: the server says 429
//! with the decision's fields, and [`Client::check_rates`] returns it as `Ok` with
//! `allowed: false`. With [`crate::FailurePolicy::Open`] an unreachable cluster
//! yields an allowed decision (zero limit and remaining) whose message says why.

use quorate_proto::{self as proto, routes::RouteId};
use reqwest::StatusCode;

use crate::error::{self, Error};
use crate::transport::Request;
use crate::Client;

impl Client {
    /// Check (and charge, if allowed) one request against a named policy.
    pub async fn check_rate(
        &self,
        key: &str,
        policy: &str,
        tier: Option<&str>,
    ) -> Result<proto::RateCheckResponse, Error> {
        self.check_rates(&proto::RateCheckRequest {
            key: Some(key.into()),
            policy: Some(policy.into()),
            tier: tier.map(str::to_string),
            ..Default::default()
        })
        .await
    }

    /// Any rate check request (inline limits, cost, several checks). A denial is an
    /// `Ok` with `allowed: false`, not an error.
    pub async fn check_rates(
        &self,
        req: &proto::RateCheckRequest,
    ) -> Result<proto::RateCheckResponse, Error> {
        let req = Request::new(RouteId::RateCheck).json(req)?;
        match self.inner.transport.exchange(&req).await {
            Ok(a) if a.status.is_success() || a.status == StatusCode::TOO_MANY_REQUESTS => {
                error::decode(&a.body)
            }
            Ok(a) => Err(error::from_answer(&a)),
            Err(Error::Unavailable(why)) if self.fails_open() => {
                tracing::warn!(%why, "quorate unreachable; failing open (rate check allowed)");
                Ok(proto::RateCheckResponse {
                    allowed: true,
                    error: None,
                    message: Some(format!("allowed by fail-open policy: {why}")),
                    limit: 0,
                    remaining: 0,
                    reset_after_ms: 0,
                    retry_after_ms: 0,
                    results: vec![],
                    shadow_denied: vec![],
                    allowlisted: false,
                })
            }
            Err(e) => Err(e),
        }
    }
}
