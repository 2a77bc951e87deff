//! Caps and ownership: what an op must pass before it may add to the state.
//!
//! Leases, slot keys and rate buckets (with counters, which count against the same
//! `max_rate_keys`) are capped by [`crate::Settings`]; an op that
//! would create one more gets [`CoreError::StateFull`] (after a bounded sweep of
//! garbage that would be purged anyway), so no caller can grow every replica's memory
//! without limit. A lease op by a client on another caller's lease is refused.

use crate::command::{Caller, RateCheck};
use crate::error::CoreError;

use super::State;

/// Dead leases an acquire at a cap may purge to make room (bounded, so one op's
/// work stays bounded however much garbage has piled up).
const ROOM_SWEEP_LEASES: u32 = 64;
/// Rate buckets a check at the cap may examine for full (droppable) ones.
const ROOM_SWEEP_RATE_KEYS: u32 = 256;

impl State {
    /// Refuse a lease op by `caller` on the lease `token` unless the caller owns it
    /// (or is admin).
    pub(super) fn check_owner(&self, token: u64, caller: &Caller) -> Result<(), CoreError> {
        match self.leases.get(&token) {
            Some(l) if !caller.may_use(&l.owner) => Err(CoreError::Forbidden {
                reason: format!("lease {} belongs to another caller", l.lease_id),
            }),
            _ => Ok(()),
        }
    }

    /// Room for one more lease (or waiter) on `keys`: leases and waiters together
    /// under `max_leases` (a waiter will become a lease; `from_queue` when a waiter
    /// becomes one, so the count does not grow), and `keys` adding no more slot keys
    /// than `max_slot_keys` allows. At a cap, first purge a bounded number of dead
    /// leases (they would be purged anyway, and may be all that fills the state).
    pub(super) fn room_for_lease(
        &mut self,
        keys: &[String],
        from_queue: bool,
    ) -> Result<(), CoreError> {
        let over = |st: &Self| {
            let new_keys = keys
                .iter()
                .filter(|k| !st.slots.contains_key(k.as_str()))
                .count();
            let s = &st.settings;
            let held = (st.leases.len() + st.queue.len()).saturating_sub(usize::from(from_queue));
            if held as u64 >= s.max_leases {
                Some(("max_leases", s.max_leases, "new leases"))
            } else if (st.slots.len() + new_keys) as u64 > s.max_slot_keys {
                Some(("max_slot_keys", s.max_slot_keys, "leases on new keys"))
            } else {
                None
            }
        };
        if over(self).is_some() {
            self.purge_dead_leases(ROOM_SWEEP_LEASES);
        }
        match over(self) {
            Some((cap, limit, what)) => Err(CoreError::StateFull {
                cap: cap.into(),
                limit,
                what: what.into(),
            }),
            None => Ok(()),
        }
    }

    /// Whether `checks` would push the bucket count over `max_rate_keys` (after a
    /// bounded sweep for full buckets, which carry no information). Checked before
    /// deciding: a swept bucket decides exactly like an absent one.
    pub(super) fn rate_room(&mut self, checks: &[RateCheck]) -> Option<CoreError> {
        let new = |st: &Self| {
            checks
                .iter()
                .filter(|c| !st.rate.contains_key(&c.key))
                .count()
        };
        let max = self.settings.max_rate_keys;
        let over = |st: &Self| {
            let n = new(st);
            // Counters count against the same cap (`counters.rs`).
            n > 0 && (st.rate.len() + st.counters.len() + n) as u64 > max
        };
        if over(self) {
            self.sweep_rate(ROOM_SWEEP_RATE_KEYS);
        }
        if over(self) {
            self.sweep_counters(ROOM_SWEEP_RATE_KEYS);
        }
        over(self).then(|| CoreError::StateFull {
            cap: "max_rate_keys".into(),
            limit: max,
            what: "rate checks on new keys".into(),
        })
    }
}
