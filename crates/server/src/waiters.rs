//! The waiting acquires this node holds open, and the grants that end them.
//!
//! A waiting acquire (`wait_ms`) that the core queued is answered when the queue
//! grants it. The queue lives in the replicated state; the grant is made by whichever
//! later entry frees a slot (a release, an expiry sweep, a raised limit), on every
//! node, when that node applies it. The node's state machine hands each applied
//! entry's grants to [`Waiters::deliver`] (`quorate_store::GrantSink`; the in-memory
//! backend does the same after each op), and the request handler that registered
//! the lease id with [`Waiters::register`] is woken with its [`Grant`]. Because every
//! node applies every entry, the node serving the request learns of the grant from
//! its own apply whoever is leader, and across a leader change.
//!
//! The contract with the handler: register *before* writing the `AcquireWait`, so a
//! grant applied at any time after the write cannot be missed (a grant made before
//! the registration can only belong to an earlier attempt with the same lease id,
//! and the core answers that retry with the grant itself). A grant for a lease id
//! nobody here registered (its waiter is served by another node, or gone) is
//! dropped: it is an ordinary lease that its holder uses or lets expire.
//!
//! Entries are keyed by lease id; two requests with the same id (a client's retry
//! racing its own first attempt) are both woken. Dropping a [`Registration`] removes
//! it, so an abandoned request leaves nothing behind. A plain `std::sync::Mutex`:
//! it is held only to insert, remove or take senders, never across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use quorate_core::Grant;
use tokio::sync::oneshot;

type Slot = Vec<(u64, oneshot::Sender<Grant>)>;

/// Lease ids of the waiting requests held open on this node.
#[derive(Debug, Default)]
pub struct Waiters {
    by_lease: Mutex<HashMap<String, Slot>>,
    next_id: AtomicU64,
    /// Registrations held (`quorate_queue_waiters`).
    gauge: Gauge,
}

impl Waiters {
    /// An empty registry that reports its size on `gauge`.
    pub fn new(gauge: Gauge) -> Self {
        Self {
            by_lease: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            gauge,
        }
    }

    /// Wait for `lease_id`'s grant from now on. Dropping the registration ends it.
    pub fn register(self: &Arc<Self>, lease_id: &str) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock()
            .entry(lease_id.to_string())
            .or_default()
            .push((id, tx));
        self.gauge.inc();
        Registration {
            waiters: self.clone(),
            lease_id: lease_id.to_string(),
            id,
            rx,
        }
    }

    /// Wake the requests waiting for these grants (from the apply of one entry).
    pub fn deliver(&self, grants: Vec<Grant>) {
        let mut map = self.lock();
        for g in grants {
            if let Some(slot) = map.remove(&g.lease_id) {
                for (_, tx) in slot {
                    // A receiver that is gone was dropped just now; its
                    // registration's drop finds nothing left to remove.
                    let _ = tx.send(g.clone());
                }
            }
        }
    }

    /// Requests waiting on this node.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.by_lease.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request waiting for its lease's grant. Removed from the registry on drop.
#[derive(Debug)]
pub struct Registration {
    waiters: Arc<Waiters>,
    lease_id: String,
    id: u64,
    rx: oneshot::Receiver<Grant>,
}

impl Registration {
    /// The grant, once this node has applied it. Pending until then (cancel-safe:
    /// use it in a `select!` against the wait's deadline).
    pub async fn granted(&mut self) -> Grant {
        match (&mut self.rx).await {
            Ok(g) => g,
            // The sender lives in the registry until it is used or this
            // registration is dropped, so it cannot be gone while we hold `self`.
            Err(_) => std::future::pending().await,
        }
    }

    /// The grant if it has already been delivered.
    pub fn try_granted(&mut self) -> Option<Grant> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.waiters.gauge.dec();
        let mut map = self.waiters.lock();
        if let Some(slot) = map.get_mut(&self.lease_id) {
            slot.retain(|(id, _)| *id != self.id);
            if slot.is_empty() {
                map.remove(&self.lease_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str) -> Grant {
        Grant {
            lease_id: id.into(),
            fencing_token: 7,
            expires_at_ms: 100,
            slots: Vec::new(),
            reused: false,
        }
    }

    #[tokio::test]
    async fn a_delivered_grant_wakes_every_registration_of_its_lease_only() {
        let w = Arc::new(Waiters::default());
        let mut a1 = w.register("a");
        let mut a2 = w.register("a");
        let mut b = w.register("b");
        assert_eq!(w.len(), 3);
        // Delivered before anyone awaits: kept for the registration.
        w.deliver(vec![grant("a"), grant("nobody")]);
        assert_eq!(a1.granted().await.lease_id, "a");
        assert_eq!(a2.try_granted().map(|g| g.fencing_token), Some(7));
        assert!(b.try_granted().is_none());
        drop((a1, a2));
        assert_eq!(w.len(), 1);
        drop(b);
        assert!(w.is_empty());
        assert_eq!(w.gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_dropped_registration_leaves_nothing_and_a_late_grant_is_ignored() {
        let w = Arc::new(Waiters::default());
        let r = w.register("x");
        drop(r);
        assert!(w.is_empty());
        w.deliver(vec![grant("x")]);
        assert!(w.is_empty());
    }
}
