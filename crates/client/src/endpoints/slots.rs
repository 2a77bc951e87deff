//! Slots: acquire (with or without a guard), release, renew, and a key's usage.
//!
//! The lease id is chosen before the first attempt and the same request body is
//! resent by every retry of the transport, so a retry after a lost response gets the
//! original grant back instead of a second slot. [`Client::acquire_with_id`] is where
//! the failure policy applies to slots: with [`crate::FailurePolicy::Open`] an unreachable
//! cluster yields a degraded guard that holds no lease.
//!
//! [`Client::acquire_wait`] waits in the keys' FIFO queue: one attempt is held open
//! by the server for up to the wait, and a failover to another node keeps the lease
//! id (so the waiter keeps its place) and asks only for the wait that is left.

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
            wait_ms: None,
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

    /// [`Client::acquire`] that waits up to `wait` for a slot in the keys' FIFO
    /// queue instead of being denied at once (the server's `limits.max_wait_ms`
    /// bounds it: 400 above). A wait that ends ungranted is
    /// [`Error::LimitExceeded`] with the `queue_position` it had.
    ///
    /// One lease id for the whole wait: when the serving node fails (connection
    /// error, timeout, 503) the call is sent again to another node with the same
    /// id and the wait that is left, and the cluster keeps the waiter's place (or
    /// answers with its grant). Each attempt may take the wait plus the request
    /// timeout; the whole call the wait plus the configured deadline.
    pub async fn acquire_wait(
        &self,
        keys: &[&str],
        ttl: Duration,
        wait: Duration,
    ) -> Result<SlotGuard, Error> {
        let lease_id = uuid::Uuid::new_v4().to_string();
        let req = proto::AcquireRequest {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            lease_id: Some(lease_id.clone()),
            ttl_ms: Some(ttl_ms(ttl)),
            holder: Some(self.inner.cfg.holder.clone()),
            wait_ms: Some(ttl_ms(wait)),
        };
        let sent = tokio::time::Instant::now();
        let r = self.acquire_raw_wait(&req, wait).await;
        match r {
            // Granted at once (soon after `sent`, when the lease started at the
            // earliest): counted from `sent`, as a plain acquire.
            Ok(g) if g.waited_ms == 0 && sent.elapsed() < ttl / 3 => {
                Ok(SlotGuard::start(self.clone(), g, ttl, sent))
            }
            // Granted from the queue (or an earlier attempt's grant, after a
            // failover): it started at some moment this side cannot pin down, so
            // renew it now; the guard's deadline then counts from the renew's send,
            // as for every renew.
            Ok(mut g) => {
                let renewed_at = tokio::time::Instant::now();
                let r = self.renew(&g.lease_id, ttl).await?;
                g.expires_at_ms = r.expires_at_ms;
                Ok(SlotGuard::start(self.clone(), g, ttl, renewed_at))
            }
            Err(Error::Unavailable(why)) if self.fails_open() => {
                tracing::warn!(%why, ?keys, "quorate unreachable; failing open (no lease held)");
                Ok(SlotGuard::degraded(self.clone(), &lease_id))
            }
            Err(e) => Err(e),
        }
    }

    /// [`Client::acquire_raw`] of a waiting acquire (`req.wait_ms`): the budget of
    /// the call grows by `wait`, and a failover keeps the lease id and asks for the
    /// wait that is left. No guard, no failure policy.
    pub async fn acquire_raw_wait(
        &self,
        req: &proto::AcquireRequest,
        wait: Duration,
    ) -> Result<proto::AcquireGranted, Error> {
        let started = tokio::time::Instant::now();
        let mut req = req.clone();
        // A retry must carry the id the first attempt was queued under.
        req.lease_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
        let body_req = req.clone();
        let rebody = move || {
            let mut r = body_req.clone();
            r.wait_ms = Some(ttl_ms(wait.saturating_sub(started.elapsed())).max(1));
            serde_json::to_vec(&r).unwrap_or_default()
        };
        self.call_long(
            Request::new(RouteId::Acquire).json(&req)?,
            wait + self.inner.cfg.request_timeout,
            wait + self.inner.cfg.deadline,
            &rebody,
        )
        .await
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
