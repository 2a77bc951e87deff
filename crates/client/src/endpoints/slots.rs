//! Slots: acquire (with or without a guard), release, renew, and a key's usage.
//!
//! The lease id is chosen before the first attempt and the same request body is
//! resent by every retry of the transport, so a retry after a lost response gets the
//! original grant back instead of a second slot. [`Client::acquire_with_id`] is where
//! the failure policy applies to slots: with [`crate::FailurePolicy::Open`] an unreachable
//! cluster yields a degraded guard that holds no lease.

use std::time::Duration;

use quorate_proto::{self as proto, routes::RouteId};

use crate::transport::Request;
use crate::{Client, Error, SlotGuard};

/// A TTL as the wire's milliseconds, saturating.
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    ttl.as_millis().try_into().unwrap_or(u64::MAX)
}

impl Client {
    /// Acquire one slot on every key (all or nothing) and hold it with a guard that
    /// renews itself and releases on drop. A denial is [`Error::LimitExceeded`].
    pub async fn acquire(&self, keys: &[&str], ttl: Duration) -> Result<SlotGuard, Error> {
        let lease_id = uuid::Uuid::new_v4().to_string();
        self.acquire_with_id(keys, ttl, &lease_id).await
    }

    /// [`Client::acquire`] with a caller-chosen lease id (e.g. an execution id), so a
    /// retry from another process after a crash is still idempotent.
    pub async fn acquire_with_id(
        &self,
        keys: &[&str],
        ttl: Duration,
        lease_id: &str,
    ) -> Result<SlotGuard, Error> {
        let req = proto::AcquireRequest {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            lease_id: Some(lease_id.to_string()),
            ttl_ms: Some(ttl_ms(ttl)),
            holder: Some(self.inner.cfg.holder.clone()),
        };
        // The lease cannot outlive sent + ttl: the guard's own deadline starts here.
        let sent = tokio::time::Instant::now();
        match self.acquire_raw(&req).await {
            Ok(g) => Ok(SlotGuard::start(self.clone(), g, ttl, sent)),
            Err(Error::Unavailable(why)) if self.fails_open() => {
                tracing::warn!(%why, ?keys, "quorate unreachable; failing open (no lease held)");
                Ok(SlotGuard::degraded(self.clone(), lease_id))
            }
            Err(e) => Err(e),
        }
    }

    /// The raw acquire call: no guard, no failure policy.
    pub async fn acquire_raw(
        &self,
        req: &proto::AcquireRequest,
    ) -> Result<proto::AcquireGranted, Error> {
        self.call(Request::new(RouteId::Acquire).json(req)?).await
    }

    /// Release a lease; `false` if it was not live. Idempotent.
    pub async fn release(&self, lease_id: &str) -> Result<bool, Error> {
        let body = proto::ReleaseRequest {
            lease_id: lease_id.into(),
        };
        let r: proto::ReleaseResponse = self
            .call(Request::new(RouteId::Release).json(&body)?)
            .await?;
        Ok(r.released)
    }

    /// Extend a live lease to now + `ttl`.
    pub async fn renew(
        &self,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<proto::RenewResponse, Error> {
        let body = proto::RenewRequest {
            lease_id: lease_id.into(),
            ttl_ms: Some(ttl_ms(ttl)),
        };
        self.call(Request::new(RouteId::Renew).json(&body)?).await
    }

    /// A key's usage and live leases (linearizable).
    pub async fn slots(&self, key: &str) -> Result<proto::SlotsResponse, Error> {
        self.call_on(RouteId::Slots, key).await
    }
}
