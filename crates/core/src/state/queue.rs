//! The wait queue: acquires that wait for a slot, in a FIFO per key, granted by the
//! core as slots free.
//!
//! The contract:
//! - **Joining.** [`Op::AcquireWait`] is decided like [`Op::Acquire`] (same
//!   validation, ownership, caps and shadow rules). With room on every key and no
//!   earlier waiter on any of its enforced keys it is granted at once. Otherwise it
//!   joins the queue of *each* of its keys, with a sequence number (arrival order)
//!   and the deadline `now + wait_ms` (cluster time), and is answered
//!   [`Outcome::Queued`] with its place on every key. `wait_ms == 0` is exactly
//!   `Acquire`: a denial, no waiting. `wait_ms` is at most `max_ttl_ms` (the server
//!   bounds it far lower, by its own `[limits]` maximum).
//! - **No barging.** A new acquire, waiting or not, is denied (or queued) while any
//!   waiter is queued on one of its enforced keys, even if that key has room: a
//!   multi-key waiter holds its place on a key whose other keys are still full.
//!   Keys whose limit comes from a shadow-mode policy never block, so nobody waits
//!   on them and their queues order nobody.
//! - **Granting** is decided here whenever slots may have freed: after a lease is
//!   removed (release, per-key purge, [`Op::Expire`]), after a limit changes
//!   (override, policy, configuration, policy mode: these recheck every waiter),
//!   and after a waiter leaves (the one behind may now be first). The rule, applied
//!   until nothing qualifies: the earliest waiter (by sequence) that is first on each
//!   of its enforced keys, whose keys all have room and for whom the caps leave
//!   room, gets a lease on all its keys at once — TTL counted from the granting
//!   command's time, a new fencing token, its owner the caller that queued it. Only
//!   the queues of keys that changed are looked at (a global recheck only for
//!   configuration-wide changes). Grants made this way are collected for
//!   [`State::take_queue_grants`], so the node serving the waiting request can answer
//!   it; they are not snapshotted.
//! - **Deadlines.** Every apply, while anyone waits, first removes the waiters whose
//!   deadline is `<= now` (their leaving may grant the ones behind) and purges every
//!   dead lease (amortized: each lease is purged once), so slots freed by a TTL go to
//!   the waiters at the first apply after it, and nothing later in the same apply
//!   frees a queued key's slot by accident.
//! - **Idempotent by lease id.** A retry for a waiting lease id (same caller, same
//!   keys) keeps its place and moves its deadline to `now + wait_ms` of the retry; a
//!   retry for a live lease returns the grant with `reused: true`; another caller's
//!   id is refused ([`CoreError::Forbidden`]); the same id on other keys is a
//!   [`CoreError::LeaseConflict`]. A plain `Acquire` of a waiting id is denied and
//!   leaves the waiter as it is.
//! - **Leaving.** [`Op::LeaveQueue`] removes a waiter and answers its best (smallest)
//!   position over its keys; if the id is instead a live lease (it was granted
//!   meanwhile) it answers that grant (`reused: true`) and the caller keeps it; else
//!   nothing. Another caller's waiter or lease is refused unless the caller is admin.
//! - **Bounded.** A waiter counts as a lease against `max_leases` (it will become
//!   one): queuing, and any new lease, is refused with [`CoreError::StateFull`] when
//!   `leases + waiters >= max_leases`; a waiter on keys that would exceed
//!   `max_slot_keys` is refused the same way. A waiter whose grant a cap still
//!   blocks (caps lowered meanwhile) keeps waiting.
//! - **Replicated.** Waiters are primary data (the `queue` snapshot section, written
//!   whole, also by a chunked cut at its start); the per-key FIFOs, the id and
//!   deadline indexes and the digest sum are derived and rebuilt on restore. The
//!   sequence number of a new waiter is one more than the last waiter's (0 for an
//!   empty queue), so it is a function of the snapshotted data.
//!
//! [`Op::AcquireWait`]: crate::Op::AcquireWait
//! [`Op::Acquire`]: crate::Op::Acquire
//! [`Op::Expire`]: crate::Op::Expire
//! [`Op::LeaveQueue`]: crate::Op::LeaveQueue

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Acquire, Caller, Op};
use crate::error::CoreError;
use crate::outcome::{
    Denial, Grant, Outcome, QueuePosition, QueueView, Queued, Reply, ShadowDenial, SlotUsage,
    WaiterInfo,
};
use crate::validate;

use super::digest::entry_hash;
use super::State;

/// One queued acquire (the snapshot's `queue` section holds these by sequence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Waiter {
    pub(super) lease_id: String,
    pub(super) holder: String,
    /// In request order (the order of its answer's positions and slots).
    pub(super) keys: Vec<String>,
    /// The caller that queued it; it will own the lease.
    pub(super) owner: String,
    pub(super) ttl_ms: u64,
    pub(super) deadline_ms: u64,
}

/// The waiters and their indexes. `waiters` is the primary data; the rest is derived
/// (rebuilt by [`Queue::rebuild`]) or transient (`dirty`, `grants`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Queue {
    /// Waiters by sequence number: arrival order.
    pub(super) waiters: BTreeMap<u64, Waiter>,
    /// Lease id → sequence.
    ids: BTreeMap<String, u64>,
    /// Per key: the sequence numbers of its waiters (first = next).
    keys: BTreeMap<String, BTreeSet<u64>>,
    /// (deadline_ms, sequence) of every waiter: the tick takes the front.
    deadlines: BTreeSet<(u64, u64)>,
    /// Wrapping sum of per-waiter hashes (the digest's, like the lease sum).
    pub(super) sum: u64,
    /// Queued keys where a slot freed or the first waiter changed since the last
    /// settling, and whether everything must be rechecked (a limit-wide change).
    dirty: BTreeSet<String>,
    all_dirty: bool,
    /// Grants made from the queue since the last [`State::take_queue_grants`].
    grants: Vec<Grant>,
}

impl Queue {
    pub(super) fn len(&self) -> usize {
        self.waiters.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    fn insert(&mut self, seq: u64, w: Waiter) {
        self.ids.insert(w.lease_id.clone(), seq);
        for k in &w.keys {
            self.keys.entry(k.clone()).or_default().insert(seq);
        }
        self.deadlines.insert((w.deadline_ms, seq));
        self.sum = self.sum.wrapping_add(entry_hash(&(seq, &w)));
        self.waiters.insert(seq, w);
    }

    /// Remove a waiter from every index; the keys it was on become dirty (the one
    /// behind it may now be first).
    fn remove(&mut self, seq: u64) -> Option<Waiter> {
        let w = self.waiters.remove(&seq)?;
        self.ids.remove(&w.lease_id);
        for k in &w.keys {
            if let Some(set) = self.keys.get_mut(k) {
                set.remove(&seq);
                if set.is_empty() {
                    self.keys.remove(k);
                } else {
                    self.dirty.insert(k.clone());
                }
            }
        }
        self.deadlines.remove(&(w.deadline_ms, seq));
        self.sum = self.sum.wrapping_sub(entry_hash(&(seq, &w)));
        Some(w)
    }

    /// `(position, length)` of waiter `seq` on `key` (position 1 is next).
    fn place(&self, seq: u64, key: &str) -> (u32, u32) {
        let Some(set) = self.keys.get(key) else {
            return (0, 0);
        };
        let ahead = set.range(..seq).count();
        (
            u32::try_from(ahead + 1).unwrap_or(u32::MAX),
            u32::try_from(set.len()).unwrap_or(u32::MAX),
        )
    }

    /// Note that slots on `keys` freed: those with waiters are rechecked.
    pub(super) fn note_freed<'a>(&mut self, keys: impl Iterator<Item = &'a str>) {
        if self.waiters.is_empty() {
            return;
        }
        for k in keys {
            if self.keys.contains_key(k) {
                self.dirty.insert(k.to_string());
            }
        }
    }

    /// Rebuild every derived index from `waiters` (after a restore); refuses a
    /// waiter that no apply could have queued.
    pub(super) fn rebuild(waiters: BTreeMap<u64, Waiter>) -> Result<Queue, String> {
        let mut q = Queue::default();
        for (seq, w) in waiters {
            validate::acquire_keys(&w.keys).map_err(|e| format!("waiter {seq}: {e}"))?;
            validate::lease_id(&w.lease_id).map_err(|e| format!("waiter {seq}: {e}"))?;
            validate::holder(&w.holder).map_err(|e| format!("waiter {seq}: {e}"))?;
            if q.ids.contains_key(&w.lease_id) {
                return Err(format!("lease id {} waits twice", w.lease_id));
            }
            q.insert(seq, w);
        }
        Ok(q)
    }
}

impl State {
    /// The grants made from the queue since the last call, in grant order. Derived
    /// and transient: not in snapshots, empty after a restore. The store calls it
    /// after each applied entry so the serving node can answer its waiting requests.
    pub fn take_queue_grants(&mut self) -> Vec<Grant> {
        std::mem::take(&mut self.queue.grants)
    }

    /// The earliest cluster time at which a waiter could be granted or must leave by
    /// time alone (a lease on a queued key expires, or a deadline passes), if anyone
    /// waits: a node that wants waiters served promptly proposes an entry (a `Noop`
    /// or an `Expire`) then. Costs one lookup per queued key.
    pub fn queue_wakeup_ms(&self) -> Option<u64> {
        let deadline = self.queue.deadlines.first().map(|(d, _)| *d);
        let expiry = self
            .queue
            .keys
            .keys()
            .filter_map(|k| self.slots.get(k.as_str()).and_then(|s| s.first()))
            .map(|(exp, _)| exp)
            .min();
        deadline.into_iter().chain(expiry).min()
    }

    /// Start of every apply (time already advanced): waiters past their deadline
    /// leave, dead leases go, and the freed slots are granted.
    pub(super) fn queue_tick(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        while let Some(&(deadline, seq)) = self.queue.deadlines.first() {
            if deadline > self.now_ms {
                break;
            }
            self.queue.remove(seq);
        }
        if !self.queue.is_empty() {
            self.purge_dead_leases(u32::MAX);
        }
        self.settle_queue();
    }

    /// After each top-level op: the limit changes it made mark keys to recheck, then
    /// the queue is settled.
    pub(super) fn queue_after(&mut self, op: &Op) {
        if self.queue.is_empty() {
            self.queue.dirty.clear();
            self.queue.all_dirty = false;
            return;
        }
        match op.inner() {
            Op::SetLimit { key, .. } | Op::DeleteLimit { key }
                if self.queue.keys.contains_key(key) =>
            {
                self.queue.dirty.insert(key.clone());
            }
            Op::PutPolicy { .. }
            | Op::DeletePolicy { .. }
            | Op::Configure(_)
            | Op::ConfigureModes(_)
            | Op::SetPolicyMode { .. } => self.queue.all_dirty = true,
            _ => {}
        }
        self.settle_queue();
    }

    /// Grant every waiter that qualifies, earliest first, until none does (see the
    /// module docs). Candidates are the first waiters of the dirty keys (or every
    /// waiter after a configuration-wide change); a grant makes the next waiter of
    /// each of its keys a candidate. Candidates are taken in sequence order: when one
    /// is examined, every earlier candidate is final, and a grant only takes room and
    /// uncovers later waiters, so no earlier waiter becomes eligible by it.
    pub(super) fn settle_queue(&mut self) {
        loop {
            let all = std::mem::take(&mut self.queue.all_dirty);
            let dirty = std::mem::take(&mut self.queue.dirty);
            if self.queue.is_empty() || (!all && dirty.is_empty()) {
                return;
            }
            let mut candidates: BTreeSet<u64> = if all {
                self.queue.waiters.keys().copied().collect()
            } else {
                dirty
                    .iter()
                    .filter_map(|k| self.queue.keys.get(k)?.first().copied())
                    .collect()
            };
            let mut uncovered = BTreeSet::new();
            while let Some(seq) = candidates.pop_first() {
                if let Some(keys) = self.try_grant_waiter(seq) {
                    candidates.extend(
                        keys.iter()
                            .filter_map(|k| self.queue.keys.get(k)?.first().copied()),
                    );
                    uncovered.extend(keys);
                }
            }
            // The keys a grant uncovered were followed through its candidates;
            // anything else marked meanwhile goes round again.
            self.queue.dirty.retain(|k| !uncovered.contains(k));
        }
    }

    /// Grant waiter `seq` if it qualifies now; returns its keys if granted.
    fn try_grant_waiter(&mut self, seq: u64) -> Option<Vec<String>> {
        let w = self.queue.waiters.get(&seq)?.clone();
        let (slots, _) = self.fifo_slots(&w.keys, Some(seq)).ok()?;
        self.room_for_lease(&w.keys, true).ok()?;
        self.queue.remove(seq);
        let grant = self.take_lease(&w.lease_id, &w.holder, &w.keys, w.ttl_ms, &w.owner, slots);
        self.queue.grants.push(grant);
        Some(w.keys)
    }

    /// Does the queue make `key` wait for someone who came before `before` (anyone,
    /// if `None`)? Only while the key's limit is enforced.
    fn queue_ahead(&self, key: &str, before: Option<u64>) -> Option<u64> {
        let set = self.queue.keys.get(key)?;
        let first = *set.first()?;
        if before.is_some_and(|b| first >= b) {
            return None;
        }
        if self
            .shadow_limit_policy(&self.resolve_limit(key).1)
            .is_some()
        {
            return None;
        }
        // The soonest deadline among those ahead: when the line moves by time alone.
        set.range(..before.unwrap_or(u64::MAX))
            .filter_map(|s| self.queue.waiters.get(s))
            .map(|w| w.deadline_ms)
            .min()
    }

    /// [`State::free_slots`] with the queue's order on top: also denied on every
    /// enforced key where someone before `before` waits. A key blocked only by the
    /// queue hints the soonest deadline among those ahead of the asker.
    pub(super) fn fifo_slots(
        &mut self,
        keys: &[String],
        before: Option<u64>,
    ) -> Result<(Vec<SlotUsage>, Vec<ShadowDenial>), Denial> {
        let free = self.free_slots(keys);
        if self.queue.is_empty() {
            return free;
        }
        let queued: Vec<(&String, u64)> = keys
            .iter()
            .filter_map(|k| self.queue_ahead(k, before).map(|d| (k, d)))
            .collect();
        if queued.is_empty() {
            return free;
        }
        let (slots, blocked, retry) = match free {
            Ok((slots, _)) => (slots, Vec::new(), 0),
            Err(d) => (d.slots, d.blocked_by, d.retry_after_ms),
        };
        let mut retry_after_ms = retry;
        for (_, deadline) in &queued {
            retry_after_ms = retry_after_ms.max(deadline.saturating_sub(self.now_ms));
        }
        let blocked_by = keys
            .iter()
            .filter(|k| blocked.contains(k) || queued.iter().any(|(q, _)| q == k))
            .cloned()
            .collect();
        Err(Denial {
            blocked_by,
            slots,
            retry_after_ms: retry_after_ms.clamp(1, self.settings.max_retry_after_ms.max(1)),
        })
    }

    /// Room for one more waiter on `keys`: it counts as a lease (see the caps).
    fn room_for_waiter(&mut self, keys: &[String]) -> Result<(), CoreError> {
        self.room_for_lease(keys, false)
    }

    /// [`Op::Acquire`] (`wait_ms == 0`) and [`Op::AcquireWait`]; see the module docs.
    ///
    /// [`Op::Acquire`]: crate::Op::Acquire
    /// [`Op::AcquireWait`]: crate::Op::AcquireWait
    pub(super) fn acquire_or_wait(&mut self, a: &Acquire, wait_ms: u64, caller: &Caller) -> Reply {
        validate::acquire_keys(&a.keys)?;
        validate::lease_id(&a.lease_id)?;
        validate::holder(&a.holder)?;
        validate::ttl(a.ttl_ms, &self.settings)?;
        if wait_ms > self.settings.max_ttl_ms {
            return Err(CoreError::invalid(
                "wait_ms",
                format!("must be at most {} (max_ttl_ms)", self.settings.max_ttl_ms),
            ));
        }

        // Idempotent retry: the same live lease_id on the same key set returns the
        // original grant (no second slot, same token, same expiry).
        if let Some(token) = self.live_token(&a.lease_id) {
            self.check_owner(token, caller)?;
            return self.regrant(token, a);
        }
        // A retry of a waiter: the same caller's, on the same keys.
        let waiting = self.queue.ids.get(&a.lease_id).copied();
        if let Some(seq) = waiting {
            let w = &self.queue.waiters[&seq];
            if !caller.may_use(&w.owner) {
                return Err(CoreError::Forbidden {
                    reason: format!("lease {} belongs to another caller", a.lease_id),
                });
            }
            if !same_keys(&w.keys, &a.keys) {
                return Err(CoreError::LeaseConflict {
                    lease_id: a.lease_id.clone(),
                    held: w.keys.clone(),
                    requested: a.keys.clone(),
                });
            }
        }
        match self.fifo_slots(&a.keys, waiting) {
            Ok((slots, shadow_denied)) => {
                // A denial creates nothing, so the caps are checked only for a grant.
                self.room_for_lease(&a.keys, waiting.is_some())?;
                let (holder, ttl_ms, owner) = match waiting.and_then(|s| self.queue.remove(s)) {
                    // A waiter that qualifies (only if a cap held it back) is granted
                    // as queued: its own holder, TTL and owner.
                    Some(w) => (w.holder, w.ttl_ms, w.owner),
                    None => (a.holder.clone(), a.ttl_ms, caller.name.clone()),
                };
                let grant = self.take_lease(&a.lease_id, &holder, &a.keys, ttl_ms, &owner, slots);
                if shadow_denied.is_empty() {
                    Ok(Outcome::Granted(grant))
                } else {
                    Ok(Outcome::GrantedShadow {
                        grant,
                        shadow_denied,
                    })
                }
            }
            Err(denial) if wait_ms == 0 => Ok(Outcome::Denied(denial)),
            Err(denial) => {
                let deadline_ms = self.now_ms.saturating_add(wait_ms);
                let seq = match waiting {
                    Some(seq) => {
                        // Keeps its place; the deadline is the retry's.
                        if let Some(mut w) = self.queue.remove(seq) {
                            w.deadline_ms = deadline_ms;
                            self.queue.insert(seq, w);
                        }
                        seq
                    }
                    None => {
                        self.room_for_waiter(&a.keys)?;
                        let seq = self
                            .queue
                            .waiters
                            .last_key_value()
                            .map_or(0, |(s, _)| s + 1);
                        self.queue.insert(
                            seq,
                            Waiter {
                                lease_id: a.lease_id.clone(),
                                holder: a.holder.clone(),
                                keys: a.keys.clone(),
                                owner: caller.name.clone(),
                                ttl_ms: a.ttl_ms,
                                deadline_ms,
                            },
                        );
                        seq
                    }
                };
                // Re-inserting marked nothing new: no first waiter changed.
                Ok(Outcome::Queued(Queued {
                    lease_id: a.lease_id.clone(),
                    deadline_ms,
                    positions: a
                        .keys
                        .iter()
                        .map(|k| {
                            let (position, length) = self.queue.place(seq, k);
                            QueuePosition {
                                key: k.clone(),
                                position,
                                length,
                            }
                        })
                        .collect(),
                    slots: denial.slots,
                }))
            }
        }
    }

    /// [`Op::LeaveQueue`]; see the module docs.
    ///
    /// [`Op::LeaveQueue`]: crate::Op::LeaveQueue
    pub(super) fn leave_queue(&mut self, lease_id: &str, caller: &Caller) -> Reply {
        validate::lease_id(lease_id)?;
        if let Some(&seq) = self.queue.ids.get(lease_id) {
            let w = &self.queue.waiters[&seq];
            if !caller.may_use(&w.owner) {
                return Err(CoreError::Forbidden {
                    reason: format!("lease {lease_id} belongs to another caller"),
                });
            }
            let position = w.keys.iter().map(|k| self.queue.place(seq, k).0).min();
            self.queue.remove(seq);
            return Ok(Outcome::LeftQueue {
                left: true,
                position,
                grant: None,
            });
        }
        if let Some(token) = self.live_token(lease_id) {
            self.check_owner(token, caller)?;
            let lease = &self.leases[&token];
            let grant = Grant {
                lease_id: lease_id.to_string(),
                fencing_token: token,
                expires_at_ms: lease.expires_at_ms,
                slots: lease.keys.iter().map(|k| self.slot_usage(k)).collect(),
                reused: true,
            };
            return Ok(Outcome::LeftQueue {
                left: false,
                position: None,
                grant: Some(grant),
            });
        }
        Ok(Outcome::LeftQueue {
            left: false,
            position: None,
            grant: None,
        })
    }

    /// The waiters on `key` at `now_ms`, first first; those past their deadline are
    /// left out (a query never changes the state).
    pub(super) fn queue_view(&self, key: &str, now_ms: u64) -> QueueView {
        let waiters = self
            .queue
            .keys
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|s| self.queue.waiters.get(s))
            .filter(|w| w.deadline_ms > now_ms)
            .enumerate()
            .map(|(i, w)| WaiterInfo {
                lease_id: w.lease_id.clone(),
                holder: w.holder.clone(),
                owner: w.owner.clone(),
                position: u32::try_from(i + 1).unwrap_or(u32::MAX),
                deadline_ms: w.deadline_ms,
                keys: w.keys.clone(),
            })
            .collect();
        QueueView {
            key: key.to_string(),
            waiters,
        }
    }
}

/// Equal as sets (the order of an acquire's keys is only the order of its answer).
fn same_keys(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}
