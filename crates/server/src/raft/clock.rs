//! Cluster time: the clock every decision is made by, which no node's wall clock bends.
//!
//! The state machine never reads a clock: each log entry carries `time_ms` and
//! `apply` keeps `now = max(now, time_ms)`. What matters is how the leader picks
//! `time_ms`. Stamping the leader's wall clock (the first release) let one wrong clock
//! break the limits: a leader ten minutes fast expired every live lease and refilled
//! every rate bucket the moment it was elected; a slow one froze expiry.
//!
//! So the leader stamps **the last applied cluster time plus the time that has
//! passed since, measured by its monotonic clock**:
//! - When a node starts leading a term, it takes an *anchor*: the cluster time of the
//!   last entry it has applied, and the monotonic instant of that moment.
//! - Every entry it proposes in that term is stamped `anchor + elapsed`, never less
//!   than the previous stamp and never more than [`MAX_STEP_MS`] past it. That bound
//!   is **per entry**, not per second: it smooths a single jump of the monotonic
//!   clock (a VM resumed after a long pause) over several entries instead of one, but
//!   it does not slow a clock that runs fast. What keeps cluster time honest is that
//!   only the leader's *monotonic* clock moves it, and only from the applied time; a
//!   healthy leader writes a housekeeping entry every second, so the bound never binds
//!   in normal operation.
//! - A term's first stamp waits until the leader has applied everything committed
//!   before the term (the batcher's catch-up, `batcher.rs`), so the anchor is the
//!   cluster's time, not the 0 of a state that has not re-applied its log yet.
//!
//! Consequences, all on the safe side:
//! - A leader change never jumps time forward: the new leader continues from the
//!   applied time. Time does not advance during the election gap itself, so leases
//!   live their full TTL and expire at most about one election timeout late; rate
//!   buckets refill at the configured rate, never faster.
//! - **After a whole-cluster outage**, cluster time resumes where it stopped: a lease
//!   granted before the outage keeps the rest of its TTL afterwards (it expires late
//!   by the outage's length, never early). Its holder may have died meanwhile; an
//!   operator can release it, or wait out its TTL.
//! - Cluster time starts at the first leader's wall clock (the *epoch*, taken once,
//!   when the caught-up state has never been stamped: no command in the log at all), so `*_at_ms` values read like Unix
//!   milliseconds; from then on they drift behind wall time by the election gaps and
//!   outages the cluster has been through. Callers must treat them as cluster time,
//!   and use durations (`ttl_ms`, `retry_after_ms`) for their own timers.
//!
//! Wall clocks are still measured — every node reports its offset against its peers
//! (`raft/tasks.rs`) — but only so operators see a misconfigured host; nothing decides
//! by them.

use std::sync::Mutex;
use std::time::Instant;

/// The most one entry may move cluster time forward (milliseconds); a bound per
/// entry, not a rate (see the module docs).
pub const MAX_STEP_MS: u64 = 5_000;

/// Where this leader's cluster time comes from in its current term.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    term: u64,
    cluster_ms: u64,
    at: Instant,
    /// The last time stamped in this term.
    last_ms: u64,
}

/// The leader's source of `time_ms` for new entries (and for leader reads).
#[derive(Debug, Default)]
pub struct ClusterClock {
    anchor: Mutex<Option<Anchor>>,
}

impl ClusterClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// The time to stamp on the next entry proposed in `term`. `applied_ms` is the
    /// state machine's cluster time, `now` the monotonic clock, `wall_ms` the wall
    /// clock (used only to set the epoch of a state that was never stamped).
    pub fn stamp(&self, term: u64, applied_ms: u64, now: Instant, wall_ms: u64) -> u64 {
        let mut guard = self.lock();
        let anchor = Self::anchor_for(&mut guard, term, applied_ms, now, wall_ms);
        let t = Self::reading(anchor, applied_ms, now);
        anchor.last_ms = t;
        t
    }

    /// What [`stamp`](Self::stamp) would return now, without recording it (reads).
    pub fn peek(&self, term: u64, applied_ms: u64, now: Instant, wall_ms: u64) -> u64 {
        let mut guard = self.lock();
        let anchor = Self::anchor_for(&mut guard, term, applied_ms, now, wall_ms);
        Self::reading(anchor, applied_ms, now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Anchor>> {
        // Every update is a plain assignment; a poisoned lock still holds a valid value.
        self.anchor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The anchor of `term`, taken now if this is the term's first reading.
    fn anchor_for(
        slot: &mut Option<Anchor>,
        term: u64,
        applied_ms: u64,
        now: Instant,
        wall_ms: u64,
    ) -> &mut Anchor {
        if slot.map(|a| a.term) != Some(term) {
            // Never stamped: this is the cluster's first leader; its wall clock sets
            // the epoch once. Otherwise continue from the applied cluster time.
            let cluster_ms = if applied_ms == 0 { wall_ms } else { applied_ms };
            *slot = Some(Anchor {
                term,
                cluster_ms,
                at: now,
                last_ms: cluster_ms,
            });
        }
        slot.as_mut().expect("anchor was just set")
    }

    /// `anchor + elapsed`, not below the last stamp or the applied time, and at most
    /// [`MAX_STEP_MS`] past the later of them.
    fn reading(a: &Anchor, applied_ms: u64, now: Instant) -> u64 {
        let elapsed =
            u64::try_from(now.saturating_duration_since(a.at).as_millis()).unwrap_or(u64::MAX);
        let floor = a.last_ms.max(applied_ms);
        a.cluster_ms
            .saturating_add(elapsed)
            .clamp(floor, floor.saturating_add(MAX_STEP_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WALL_FAST: u64 = 1_800_000_000_000; // whatever a skewed wall clock says

    #[test]
    fn time_follows_the_monotonic_clock_from_the_applied_time() {
        let c = ClusterClock::new();
        let t0 = Instant::now();
        // Term 3 starts with the state at cluster time 1_000_000; the wall clock is
        // far ahead and must not matter.
        assert_eq!(c.stamp(3, 1_000_000, t0, WALL_FAST), 1_000_000);
        let t1 = t0 + Duration::from_millis(1_500);
        assert_eq!(c.stamp(3, 1_000_000, t1, WALL_FAST), 1_001_500);
        // Peek does not record.
        let t2 = t0 + Duration::from_millis(2_000);
        assert_eq!(c.peek(3, 1_001_500, t2, 0), 1_002_000);
        assert_eq!(c.stamp(3, 1_001_500, t2, 0), 1_002_000);
    }

    #[test]
    fn a_new_term_continues_from_the_applied_time_without_jumping() {
        let c = ClusterClock::new();
        let t0 = Instant::now();
        c.stamp(3, 50_000, t0, WALL_FAST);
        c.stamp(3, 50_000, t0 + Duration::from_millis(900), WALL_FAST);
        // Elected again in term 5 ten seconds later: the gap is not counted.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(c.stamp(5, 50_900, t1, WALL_FAST), 50_900);
        assert_eq!(
            c.stamp(5, 50_900, t1 + Duration::from_millis(100), WALL_FAST),
            51_000
        );
    }

    #[test]
    fn one_entry_moves_time_at_most_max_step() {
        let c = ClusterClock::new();
        let t0 = Instant::now();
        c.stamp(1, 10_000, t0, 0);
        let late = t0 + Duration::from_secs(3600);
        assert_eq!(c.stamp(1, 10_000, late, 0), 10_000 + MAX_STEP_MS);
        assert_eq!(c.stamp(1, 10_000, late, 0), 10_000 + 2 * MAX_STEP_MS);
    }

    #[test]
    fn time_never_runs_backwards() {
        let c = ClusterClock::new();
        let t0 = Instant::now();
        // The applied time is ahead of the anchor (entries of a previous leader were
        // applied after this term's anchor was taken): never stamp below it.
        c.stamp(2, 7_000, t0, 0);
        assert_eq!(c.stamp(2, 9_000, t0 + Duration::from_millis(10), 0), 9_000);
        assert_eq!(c.stamp(2, 9_000, t0 + Duration::from_millis(20), 0), 9_000);
    }

    #[test]
    fn a_never_stamped_state_takes_the_epoch_from_the_wall_clock_once() {
        let c = ClusterClock::new();
        let t0 = Instant::now();
        assert_eq!(c.stamp(1, 0, t0, 1_700_000_000_000), 1_700_000_000_000);
        // Same term: the wall clock is not read again.
        assert_eq!(
            c.stamp(1, 0, t0 + Duration::from_millis(5), 9),
            1_700_000_000_005
        );
    }
}
