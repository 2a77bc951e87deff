//! [`SlotGuard`]: a held lease that renews itself and is released on every path.
//!
//! A background task renews the lease every third of its TTL; dropping the guard
//! aborts it and releases the lease in the background, [`SlotGuard::release`] does it
//! in the foreground. A guard handed out by the fail-open policy holds no lease: it
//! never renews, never releases, is never lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorate_proto as proto;

use crate::{Client, Error};

/// A held lease. Renews itself in the background at a third of the TTL; releases on
/// drop. If a renewal finds the lease gone (it expired while the holder was stalled),
/// [`SlotGuard::is_lost`] turns true: the holder should stop, since another may now
/// hold the slot — and the fencing token lets downstream systems reject it anyway.
#[derive(Debug)]
pub struct SlotGuard {
    client: Client,
    lease_id: String,
    grant: Option<proto::AcquireGranted>,
    lost: Arc<AtomicBool>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl SlotGuard {
    pub(crate) fn start(client: Client, grant: proto::AcquireGranted, ttl: Duration) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let client = client.clone();
            let lease_id = grant.lease_id.clone();
            let lost = lost.clone();
            let every = (ttl / 3).max(Duration::from_millis(10));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    match client.renew(&lease_id, ttl).await {
                        Ok(_) => {}
                        Err(Error::LeaseNotFound(_)) => {
                            tracing::warn!(%lease_id, "lease lost: it expired before it could be renewed");
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        // Transient: the next tick tries again while the TTL lasts.
                        Err(e) => tracing::warn!(%lease_id, error = %e, "lease renewal failed"),
                    }
                }
            })
        };
        Self {
            client,
            lease_id: grant.lease_id.clone(),
            grant: Some(grant),
            lost,
            renewer: Some(renewer),
            released: false,
        }
    }

    pub(crate) fn degraded(client: Client, lease_id: &str) -> Self {
        Self {
            client,
            lease_id: lease_id.to_string(),
            grant: None,
            lost: Arc::new(AtomicBool::new(false)),
            renewer: None,
            released: true,
        }
    }

    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }

    /// The grant's fencing token; `None` for a fail-open guard that holds no lease.
    pub fn fencing_token(&self) -> Option<u64> {
        self.grant.as_ref().map(|g| g.fencing_token)
    }

    /// The grant as the cluster returned it (`None` when failing open).
    pub fn grant(&self) -> Option<&proto::AcquireGranted> {
        self.grant.as_ref()
    }

    /// True when the guard was handed out by the fail-open policy without a lease.
    pub fn is_degraded(&self) -> bool {
        self.grant.is_none()
    }

    /// True once a renewal found the lease gone.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Release now and wait for the answer (dropping releases in the background).
    pub async fn release(mut self) -> Result<bool, Error> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.released = true;
        if self.grant.is_none() {
            return Ok(false);
        }
        self.client.release(&self.lease_id).await
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if self.released {
            return;
        }
        // Release in the background; if there is no runtime left (process exit), the
        // lease simply expires after its TTL.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                let client = self.client.clone();
                let lease_id = std::mem::take(&mut self.lease_id);
                h.spawn(async move {
                    if let Err(e) = client.release(&lease_id).await {
                        tracing::warn!(%lease_id, error = %e, "release on drop failed; the lease will expire");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(lease_id = %self.lease_id, "guard dropped outside a runtime; lease will expire")
            }
        }
    }
}
