//! [`SlotGuard`]: a held lease that renews itself and is released on every path.
//!
//! A background task renews the lease every third of its TTL. The guard keeps its
//! own idea of when the lease ends: the instant the last successful renewal (or the
//! acquire) was *sent*, plus the TTL. Counting from the send, not the answer, errs on
//! the early side: the cluster cannot have started the lease before the request left.
//! When that deadline passes without a successful renewal — the cluster answered
//! `lease_not_found`, or it could not be reached at all — the guard reports the lease
//! lost ([`SlotGuard::is_lost`]) and stops renewing: another holder may now have the
//! slot, so the holder should stop, and the fencing token lets downstream systems
//! reject it anyway. Lost is final: a renewal that completes after the deadline does
//! not revive the guard.
//!
//! Dropping the guard aborts the renewer and releases the lease in the background;
//! [`SlotGuard::release`] does it in the foreground. A guard handed out by the
//! fail-open policy holds no lease: it never renews, never releases, is never lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_proto as proto;
use tokio::time::Instant;

use crate::{Client, Error};

/// When the lease ends as far as this holder knows, and whether it is gone.
#[derive(Debug)]
struct LeaseClock {
    lost: AtomicBool,
    /// Send time of the last successful acquire/renew + TTL. Only moves forward,
    /// and only while it has not passed.
    deadline: Mutex<Instant>,
}

impl LeaseClock {
    fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || Instant::now() >= self.deadline()
    }

    /// A renewal sent at `sent` succeeded; extend unless the lease is already lost.
    fn renewed(&self, sent: Instant, ttl: Duration) -> bool {
        let mut d = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        if self.lost.load(Ordering::SeqCst) || Instant::now() >= *d {
            return false;
        }
        *d = (*d).max(sent + ttl);
        true
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }
}

/// A held lease. Renews itself in the background at a third of the TTL; releases on
/// drop. If the lease's deadline (last successful renewal or the grant, plus TTL)
/// passes without a successful renewal, or a renewal finds the lease gone,
/// [`SlotGuard::is_lost`] turns true: the holder should stop, since another may now
/// hold the slot — and the fencing token lets downstream systems reject it anyway.
#[derive(Debug)]
pub struct SlotGuard {
    client: Client,
    lease_id: String,
    grant: Option<proto::AcquireGranted>,
    /// `None` for a degraded guard (no lease, nothing to lose).
    clock: Option<Arc<LeaseClock>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl SlotGuard {
    /// Hold `grant`, whose acquire was sent at `sent` with `ttl`.
    pub(crate) fn start(
        client: Client,
        grant: proto::AcquireGranted,
        ttl: Duration,
        sent: Instant,
    ) -> Self {
        let clock = Arc::new(LeaseClock {
            lost: AtomicBool::new(false),
            deadline: Mutex::new(sent + ttl),
        });
        let renewer = tokio::spawn(renew_until_lost(
            client.clone(),
            grant.lease_id.clone(),
            ttl,
            clock.clone(),
        ));
        Self {
            client,
            lease_id: grant.lease_id.clone(),
            grant: Some(grant),
            clock: Some(clock),
            renewer: Some(renewer),
            released: false,
        }
    }

    pub(crate) fn degraded(client: Client, lease_id: &str) -> Self {
        Self {
            client,
            lease_id: lease_id.to_string(),
            grant: None,
            clock: None,
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

    /// True once the lease may have ended: a renewal found it gone, or its deadline
    /// passed without a successful renewal. Final once true.
    pub fn is_lost(&self) -> bool {
        self.clock.as_ref().is_some_and(|c| c.is_lost())
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

/// The renewer task: renew every `ttl / 3` until the lease is lost (or the task is
/// aborted by release/drop). A renewal that has not succeeded by the deadline is
/// abandoned, since its success could no longer be trusted to mean anything.
async fn renew_until_lost(client: Client, lease_id: String, ttl: Duration, clock: Arc<LeaseClock>) {
    let every = (ttl / 3).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(clock.deadline()) => {}
        }
        let deadline = clock.deadline();
        if Instant::now() >= deadline {
            tracing::warn!(%lease_id, "lease lost: no successful renewal before it expired");
            clock.lose();
            return;
        }
        let sent = Instant::now();
        let outcome = tokio::time::timeout_at(deadline, client.renew(&lease_id, ttl)).await;
        match outcome {
            Ok(Ok(_)) => {
                if !clock.renewed(sent, ttl) {
                    clock.lose();
                    return;
                }
            }
            Ok(Err(Error::LeaseNotFound(_))) => {
                tracing::warn!(%lease_id, "lease lost: it expired before it could be renewed");
                clock.lose();
                return;
            }
            // Transient: the next tick tries again while the deadline lasts.
            Ok(Err(e)) => tracing::warn!(%lease_id, error = %e, "lease renewal failed"),
            // The deadline passed mid-renewal; the top of the loop reports it.
            Err(_) => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A fake node: grants every acquire, answers 503 ("no quorum") to every renew
    /// and 200 to releases. Returns its base URL.
    async fn node_that_cannot_renew() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // Requests here are small: one read holds the request line.
                    let mut buf = vec![0u8; 8192];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let (status, body) = if head.starts_with("POST /v1/slots/acquire ") {
                        let grant = proto::AcquireGranted {
                            granted: true,
                            lease_id: "l1".into(),
                            fencing_token: 7,
                            expires_at_ms: 0,
                            slots: vec![],
                            shadow_denied: vec![],
                            waited_ms: 0,
                        };
                        ("200 OK", serde_json::to_string(&grant).unwrap())
                    } else if head.starts_with("POST /v1/slots/release ") {
                        ("200 OK", r#"{"released":true}"#.to_string())
                    } else {
                        (
                            "503 Service Unavailable",
                            r#"{"error":"unavailable","message":"no quorum"}"#.to_string(),
                        )
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn guard_is_lost_when_its_deadline_passes_without_a_renewal() {
        let mut cfg = ClientConfig::new([node_that_cannot_renew().await]);
        // Each renewal gives up quickly; the guard keeps trying until its deadline.
        cfg.deadline = Duration::from_millis(100);
        let client = Client::new(cfg).unwrap();
        let ttl = Duration::from_millis(600);
        let guard = client.acquire_with_id(&["k"], ttl, "l1").await.unwrap();
        assert_eq!(guard.fencing_token(), Some(7));
        // The lease is held until its deadline (well over a scheduler hiccup away).
        assert!(!guard.is_lost());
        // Every renewal gets 503: the lease runs out at acquire + ttl. Poll for that
        // event with a generous deadline instead of sleeping for a guessed time.
        let give_up = Instant::now() + Duration::from_secs(10);
        while !guard.is_lost() {
            assert!(
                Instant::now() < give_up,
                "the guard never noticed its lease ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The renewer stopped and recorded it (not only the clock's arithmetic).
        let clock = guard.clock.clone().unwrap();
        let give_up = Instant::now() + Duration::from_secs(10);
        while !clock.lost.load(Ordering::SeqCst) {
            assert!(Instant::now() < give_up, "the renewer did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(guard.is_lost(), "lost is final");
        assert!(guard.release().await.unwrap());
    }

    #[test]
    fn a_renewal_after_the_deadline_does_not_revive_the_lease() {
        let now = Instant::now();
        let clock = LeaseClock {
            lost: AtomicBool::new(false),
            deadline: Mutex::new(now + Duration::from_secs(60)),
        };
        assert!(clock.renewed(now, Duration::from_secs(120)));
        assert!(clock.deadline() >= now + Duration::from_secs(120));
        assert!(!clock.is_lost());
        clock.lose();
        assert!(!clock.renewed(now, Duration::from_secs(600)));
        assert!(clock.is_lost());
    }
}
