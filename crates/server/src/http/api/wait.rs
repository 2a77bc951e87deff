//! A waiting acquire (`wait_ms` > 0): the request is held open until the queue
//! grants it or its wait ends.
//!
//! 1. The lease id is registered with this node's [`crate::waiters::Waiters`]
//!    *before* anything is written, so a grant applied at any later moment wakes
//!    this request (whichever node leads, and across a leader change: every node
//!    applies every entry).
//! 2. `Op::AcquireWait` goes through the normal write path under the request
//!    deadline. Granted at once: 200, as a plain acquire. Queued: wait.
//! 3. The grant arrives: 200 with `waited_ms`.
//! 4. The wait ends (`wait_ms` after the request arrived, by this node's monotonic
//!    clock): `Op::LeaveQueue` settles the race with a grant. Granted meanwhile:
//!    200. Still waiting (now removed) or already gone: 429 `limit_exceeded` with the
//!    place it had (`queue_position`). LeaveQueue not written (no quorum): 503,
//!    never a grant; the core drops the waiter at its own deadline.
//! 5. The client goes away (axum drops the handler's future): the [`Leave`] guard
//!    spawns a best-effort `LeaveQueue`. A grant that got there first is an
//!    ordinary lease nobody holds: it expires by its TTL, so no slot leaks.
//!
//! The core's deadline for the waiter is the leader's `now + wait_ms` at the time
//! the op applies, which is after this node's own deadline (the op is written
//! after the request arrived), so it is the node that ends a wait while it lives;
//! the core's deadline only cleans up after a node or client that vanished.
//!
//! A retry with the same lease id (the client's node died) writes the same
//! `AcquireWait`: the core keeps the waiter's place, or answers with its grant.

use std::time::{Duration, Instant};

use axum::response::Response;
use quorate_core::{self as core, Caller, Op, Outcome};
use tracing::Instrument;

use super::slots::{denied, granted};
use super::ApiState;
use crate::http::error::{ApiError, ApiResult};

/// Retry-After of a waiting acquire whose wait ended ungranted: its keys are
/// still busy, and a retry that waits again joins the back of the queue, so there
/// is no lease expiry to point at; one second keeps retries from spinning.
const WAIT_TIMEOUT_RETRY_MS: u64 = 1000;

/// Serve a waiting acquire (see the module doc).
pub(super) async fn acquire(
    st: ApiState,
    caller: Caller,
    acquire: core::Acquire,
    wait_ms: u64,
) -> ApiResult<Response> {
    let started = Instant::now();
    let wait_end = started + Duration::from_millis(wait_ms);
    let lease_id = acquire.lease_id.clone();
    let span = tracing::info_span!("wait", lease_id = %lease_id, wait_ms);
    async move {
        let mut registration = st.backend.waiters().register(&lease_id);
        let mut leave = Leave {
            st: Some((st.clone(), caller.clone())),
            lease_id: lease_id.clone(),
            started,
        };
        let keys = acquire.keys.clone();
        let queued = match st
            .write(&caller, Op::AcquireWait { acquire, wait_ms })
            .await
        {
            Ok(Outcome::Granted(g)) => {
                leave.disarm();
                return Ok(granted(&st, g, Vec::new(), 0));
            }
            Ok(Outcome::GrantedShadow {
                grant,
                shadow_denied,
            }) => {
                leave.disarm();
                return Ok(granted(&st, grant, shadow_denied, 0));
            }
            Ok(Outcome::Queued(q)) => q,
            Ok(other) => {
                leave.disarm();
                return Err(ApiError::unexpected(&other));
            }
            // Refused (invalid, forbidden, state full): nothing queued. A 503 keeps
            // the guard armed: the op may have been applied, so leave the queue.
            Err(e) => {
                if e.status != axum::http::StatusCode::SERVICE_UNAVAILABLE {
                    leave.disarm();
                }
                return Err(e);
            }
        };
        st.metrics.decision("acquire", "queued");
        let position = furthest(&queued.positions);
        tracing::debug!(position, deadline_ms = queued.deadline_ms, "queued");

        tokio::select! {
            g = registration.granted() => {
                leave.disarm();
                let waited = started.elapsed();
                st.metrics.queue_wait("granted", waited.as_secs_f64());
                return Ok(granted(&st, g, Vec::new(), millis(waited).max(1)));
            }
            () = tokio::time::sleep_until(wait_end.into()) => {}
        }

        // The wait is over: leave the queue, unless a grant got there first.
        leave.disarm();
        let left = st
            .write(
                &caller,
                Op::LeaveQueue {
                    lease_id: lease_id.clone(),
                },
            )
            .await;
        let waited = started.elapsed();
        match left {
            Ok(Outcome::LeftQueue { grant: Some(g), .. }) => {
                st.metrics.queue_wait("granted", waited.as_secs_f64());
                Ok(granted(&st, g, Vec::new(), millis(waited).max(1)))
            }
            Ok(Outcome::LeftQueue {
                position: left_at, ..
            }) => {
                // Delivered between the deadline and the LeaveQueue's apply, and
                // released or expired since: still a grant this request never
                // answered. Vanishingly rare; answered as a timeout all the same
                // (the lease is not live).
                st.metrics.queue_wait("timeout", waited.as_secs_f64());
                tracing::debug!(position = ?left_at, "wait ended ungranted");
                let d = core::Denial {
                    blocked_by: keys,
                    slots: queued.slots,
                    retry_after_ms: WAIT_TIMEOUT_RETRY_MS,
                };
                Ok(denied(&st, d, Some(left_at.unwrap_or(position))))
            }
            Ok(other) => Err(ApiError::unexpected(&other)),
            Err(e) => {
                st.metrics.queue_wait("gone", waited.as_secs_f64());
                Err(e)
            }
        }
    }
    .instrument(span)
    .await
}

/// The place that matters for an all-or-nothing waiter: its furthest-back key.
fn furthest(positions: &[core::QueuePosition]) -> u32 {
    positions.iter().map(|p| p.position).max().unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Leaves the queue if the request is dropped while its waiter may be queued (the
/// client went away, or the write's outcome is unknown). Best effort: spawned, its
/// own deadline, its failure only logged.
struct Leave {
    st: Option<(ApiState, Caller)>,
    lease_id: String,
    started: Instant,
}

impl Leave {
    fn disarm(&mut self) {
        self.st = None;
    }
}

impl Drop for Leave {
    fn drop(&mut self) {
        let Some((st, caller)) = self.st.take() else {
            return;
        };
        st.metrics
            .queue_wait("gone", self.started.elapsed().as_secs_f64());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lease_id = std::mem::take(&mut self.lease_id);
        rt.spawn(async move {
            let op = Op::LeaveQueue {
                lease_id: lease_id.clone(),
            };
            match st.write(&caller, op).await {
                Ok(Outcome::LeftQueue { left, grant, .. }) => tracing::debug!(
                    %lease_id,
                    left,
                    granted = grant.is_some(),
                    "waiter gone: left the queue"
                ),
                Ok(other) => tracing::warn!(%lease_id, ?other, "unexpected answer to LeaveQueue"),
                Err(e) => tracing::info!(
                    %lease_id,
                    error = %e,
                    "waiter gone; could not leave the queue (the core's deadline will)"
                ),
            }
        });
    }
}
