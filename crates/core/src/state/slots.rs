//! Slots: the per-key index of live leases, and the only code that inserts or
//! removes a lease (so the indexes, the owner counts, the digest sums and an open
//! cut's undo log always move together).
//!
//! Each key keeps an ordered set of `(expires_at, token)` for its leases, so the
//! number of slots in use is the set's size once the dead ones at its front are
//! purged, and the soonest expiries (the honest retry hint for a denial) are the
//! first elements. Dead leases are purged from a key before every decision on it (as
//! the seed's `ZREMRANGEBYSCORE` did), so they stop counting the moment they die; the
//! leader's periodic [`crate::Op::Expire`] purges the rest from a global expiry index
//! so memory does not grow with leases nobody touches again.

use std::collections::BTreeSet;

use crate::outcome::SlotUsage;

use super::digest::entry_hash;
use super::leases::Lease;
use super::State;

/// The live leases on one key, `(expires_at_ms, token)` in order.
///
/// Most keys are held by one lease at a time (a job's own key), and a one-element
/// `BTreeSet` costs a whole B-tree leaf (about 190 bytes); such a key keeps its one
/// entry inline instead, and turns into a set when a second lease joins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlotSet {
    One((u64, u64)),
    Many(BTreeSet<(u64, u64)>),
}

impl SlotSet {
    pub(super) fn insert(&mut self, entry: (u64, u64)) {
        match self {
            SlotSet::One(x) if *x == entry => {}
            SlotSet::One(x) => *self = SlotSet::Many(BTreeSet::from([*x, entry])),
            SlotSet::Many(set) => {
                set.insert(entry);
            }
        }
    }

    /// Remove `entry`; true when the set is then empty (the caller drops the key).
    pub(super) fn remove(&mut self, entry: &(u64, u64)) -> bool {
        match self {
            SlotSet::One(x) => x == entry,
            SlotSet::Many(set) => {
                set.remove(entry);
                match (set.len(), set.first()) {
                    (0, _) => true,
                    (1, Some(&last)) => {
                        *self = SlotSet::One(last);
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    pub(super) fn first(&self) -> Option<(u64, u64)> {
        match self {
            SlotSet::One(x) => Some(*x),
            SlotSet::Many(set) => set.first().copied(),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            SlotSet::One(_) => 1,
            SlotSet::Many(set) => set.len(),
        }
    }

    /// The entries at or after `from`, in order.
    pub(super) fn range_from(&self, from: (u64, u64)) -> impl Iterator<Item = (u64, u64)> + '_ {
        let (one, many) = match self {
            SlotSet::One(x) => (Some(*x).filter(|x| *x >= from), None),
            SlotSet::Many(set) => (None, Some(set.range(from..).copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl State {
    /// Remove a lease and every index entry pointing at it.
    pub(super) fn remove_lease(&mut self, token: u64) -> Option<Lease> {
        let lease = self.leases.remove(&token)?;
        if let Some(u) = &mut self.undo {
            u.lease(token, Some(&lease));
        }
        self.lease_sum = self.lease_sum.wrapping_sub(entry_hash(&(token, &lease)));
        self.lease_ids.remove(&*lease.lease_id);
        for k in lease.keys.iter() {
            if let Some(set) = self.slots.get_mut(&**k) {
                if set.remove(&(lease.expires_at_ms, token)) {
                    self.slots.remove(&**k);
                }
            }
        }
        self.expiry.remove(&(lease.expires_at_ms, token));
        // Its slots are free: waiters on those keys are looked at (`queue.rs`).
        self.queue.note_freed(lease.keys.iter().map(|k| &**k));
        if let Some(n) = self.owners.get_mut(&*lease.owner) {
            *n -= 1;
            if *n == 0 {
                self.owners.remove(&*lease.owner);
            }
        }
        Some(lease)
    }

    /// Index a lease and store it.
    pub(super) fn insert_lease(&mut self, token: u64, mut lease: Lease) {
        self.lease_ids.insert(lease.lease_id.clone(), token);
        self.intern_and_slot(token, &mut lease);
        self.expiry.insert((lease.expires_at_ms, token));
        self.lease_sum = self.lease_sum.wrapping_add(entry_hash(&(token, &lease)));
        if let Some(u) = &mut self.undo {
            u.lease(token, self.leases.get(&token));
        }
        self.leases.insert(token, lease);
    }

    /// Interns a lease's keys and owner (each becomes the allocation its `slots` or
    /// `owners` entry already uses, so the text is held once) and enters it in the
    /// per-key sets and the owner counts.
    pub(super) fn intern_and_slot(&mut self, token: u64, lease: &mut Lease) {
        if let Some((shared, _)) = self.owners.get_key_value(&*lease.owner) {
            lease.owner = shared.clone();
        }
        *self.owners.entry(lease.owner.clone()).or_insert(0) += 1;
        let entry = (lease.expires_at_ms, token);
        for k in lease.keys.iter_mut() {
            if let Some((shared, _)) = self.slots.get_key_value(&**k) {
                *k = shared.clone();
            }
            match self.slots.get_mut(&**k) {
                Some(set) => set.insert(entry),
                None => {
                    self.slots.insert(k.clone(), SlotSet::One(entry));
                }
            }
        }
    }

    /// Purge the dead leases at the front of a key's set.
    pub(super) fn purge_key(&mut self, key: &str) {
        while let Some((exp, token)) = self.slots.get(key).and_then(SlotSet::first) {
            if exp > self.now_ms {
                break;
            }
            if self.remove_lease(token).is_none() {
                // An index entry whose lease is gone (only a corrupted state could hold
                // one) would make this loop spin forever under the write lock: drop it.
                if let Some(set) = self.slots.get_mut(key) {
                    if set.remove(&(exp, token)) {
                        self.slots.remove(key);
                    }
                }
            }
        }
    }

    /// Live slots in use on `key` (read-only: filters instead of purging).
    pub(super) fn used(&self, key: &str) -> u32 {
        let n = self.slots.get(key).map_or(0, |s| {
            s.range_from((self.now_ms.saturating_add(1), 0)).count()
        });
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    pub(super) fn slot_usage(&self, key: &str) -> SlotUsage {
        SlotUsage {
            key: key.to_string(),
            used: self.used(key),
            limit: self.resolve_limit(key).0,
        }
    }

    /// Purge up to `max` dead leases, soonest expiry first; returns how many.
    pub(super) fn purge_dead_leases(&mut self, max: u32) -> u32 {
        let mut leases = 0u32;
        while leases < max {
            match self.expiry.first() {
                Some(&(exp, token)) if exp <= self.now_ms => {
                    self.remove_lease(token);
                    leases += 1;
                }
                _ => break,
            }
        }
        leases
    }
}
