//! Snapshots written in chunks while the state keeps applying: a copy-on-write cut.
//!
//! [`State::snapshot`] serializes everything at once, which at a million leases takes
//! a quarter of a second or more — and a caller must hold the state still for that
//! long (the store's read lock, during which apply waits). A *cut* produces the very
//! same bytes without holding the state still:
//!
//! 1. [`State::begin_cut`] records the small fields' bytes and the sizes of the two
//!    big maps (leases, rate buckets) and starts an undo log in the state;
//! 2. from then on, the first change to any lease or bucket records its value *as of
//!    the cut* in that log (`None`: it did not exist);
//! 3. [`State::continue_cut`] appends up to `budget` entries at a time, walking the
//!    live map and the undo log together in key order and writing each key's value as
//!    of the cut (skipping keys created after it, restoring keys deleted after it);
//! 4. [`State::end_cut`] drops the undo log; [`SnapshotCut::into_bytes`] joins the
//!    pieces (outside any lock). A caller that writes the snapshot out as it goes
//!    takes the pieces written so far with [`SnapshotCut::take_written`] between
//!    chunks, so the whole snapshot never sits in memory; `into_bytes` then gives
//!    only what was not taken.
//!
//! Between chunks the state may apply anything; a chunk needs only a shared borrow.
//! The bytes equal what `snapshot()` would have returned at `begin_cut` (bincode
//! encodes a struct as its fields in order and a map as its length then its entries,
//! so writing them piecewise gives the same bytes) — which `cut::tests` checks against
//! random interleavings.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Serialize;

use crate::error::CoreError;
use crate::state::leases::Lease;
use crate::state::State;

/// The values of changed entries as of an open cut: the first change to a lease or
/// bucket after the cut records its value before the change (`None`: it did not
/// exist). It lives in the state (`State::undo`) because every change to the maps it
/// shadows must feed it (`slots.rs`, `rate.rs`).
#[derive(Debug, Clone, Default)]
pub(crate) struct UndoLog {
    pub(crate) id: u64,
    pub(crate) leases: BTreeMap<u64, Option<Lease>>,
    pub(crate) rate: BTreeMap<String, Option<u128>>,
}

impl UndoLog {
    /// Remember `token`'s value as of the cut, if this is its first change since.
    pub(crate) fn lease(&mut self, token: u64, before: Option<&Lease>) {
        self.leases.entry(token).or_insert_with(|| before.cloned());
    }

    /// Remember `key`'s bucket as of the cut, if this is its first change since.
    pub(crate) fn rate(&mut self, key: &str, before: Option<u128>) {
        if !self.rate.contains_key(key) {
            self.rate.insert(key.to_string(), before);
        }
    }
}

#[derive(Debug, Clone)]
enum Phase {
    Leases { after: Option<u64>, written: u64 },
    Rate { after: Option<String>, written: u64 },
    Done,
}

/// A snapshot being written; see the module docs.
#[derive(Debug)]
pub struct SnapshotCut {
    id: u64,
    /// Bytes written so far: one piece per chunk, joined after the cut is closed, so
    /// no chunk ever copies what came before (a growing single buffer would).
    done: Vec<Vec<u8>>,
    out: Vec<u8>,
    lease_count: u64,
    rate_count: u64,
    /// Bytes of the fields after the rate map (cursor, seen nodes, descriptor
    /// tables), as of the cut.
    suffix: Vec<u8>,
    phase: Phase,
}

impl SnapshotCut {
    /// The bytes written so far and not yet taken, in order (possibly none). The
    /// snapshot is everything taken, in order, followed by [`SnapshotCut::into_bytes`].
    pub fn take_written(&mut self) -> Vec<Vec<u8>> {
        let mut pieces = std::mem::take(&mut self.done);
        if !self.out.is_empty() {
            pieces.push(std::mem::take(&mut self.out));
        }
        pieces
    }

    /// The snapshot's bytes (those not taken by [`SnapshotCut::take_written`]), joined (call after [`State::end_cut`], outside any lock).
    pub fn into_bytes(self) -> Vec<u8> {
        let len =
            self.done.iter().map(Vec::len).sum::<usize>() + self.out.len() + self.suffix.len();
        let mut bytes = Vec::with_capacity(len);
        for piece in &self.done {
            bytes.extend_from_slice(piece);
        }
        bytes.extend_from_slice(&self.out);
        bytes.extend_from_slice(&self.suffix);
        bytes
    }
}

fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serializing plain data into a Vec cannot fail.
    out.extend_from_slice(&bincode::serialize(value).unwrap_or_default());
}

fn broken(why: &str) -> CoreError {
    CoreError::CorruptSnapshot(format!("snapshot cut: {why}"))
}

impl State {
    /// Start a cut at the current state (cost: the small fields only).
    pub fn begin_cut(&mut self) -> SnapshotCut {
        let id = self.next_cut_id();
        let mut out = Vec::with_capacity(1 << 20);
        // The fields of `Snapshot`, in its order, up to the leases.
        let sections = self.sections();
        put(&mut out, &self.snapshot_version(&sections));
        put(&mut out, &self.now_ms);
        put(&mut out, &self.last_token);
        put(&mut out, &self.settings);
        put(&mut out, &self.config_digest);
        put(&mut out, &self.overrides);
        put(&mut out, &self.concurrency[..]);
        put(&mut out, &self.rate_policies);
        put(&mut out, &self.tiers);
        let lease_count = self.leases.len() as u64;
        let rate_count = self.rate.len() as u64;
        put(&mut out, &lease_count);
        let mut suffix = Vec::new();
        put(&mut suffix, &self.rate_cursor);
        put(&mut suffix, &self.seen);
        put(&mut suffix, &self.descriptors);
        if !sections.is_empty() {
            put(&mut suffix, &sections);
        }
        self.undo = Some(UndoLog {
            id,
            ..UndoLog::default()
        });
        SnapshotCut {
            id,
            done: Vec::new(),
            out,
            lease_count,
            rate_count,
            suffix,
            phase: Phase::Leases {
                after: None,
                written: 0,
            },
        }
    }

    /// Append up to `budget` more entries; `Ok(true)` once everything is written.
    pub fn continue_cut(&self, cut: &mut SnapshotCut, budget: usize) -> Result<bool, CoreError> {
        let undo = match &self.undo {
            Some(u) if u.id == cut.id => u,
            _ => return Err(broken("the state was replaced or the cut ended")),
        };
        if !cut.out.is_empty() {
            cut.done.push(std::mem::take(&mut cut.out));
        }
        cut.out = Vec::with_capacity(budget.saturating_mul(96).min(1 << 22));
        let mut left = budget.max(1);
        while left > 0 {
            match &mut cut.phase {
                Phase::Leases { after, written } => {
                    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
                    let live = self.leases.range((from, Bound::Unbounded));
                    let changed = undo.leases.range((from, Bound::Unbounded));
                    let (last, n, done) = merge(live, changed, left, &mut cut.out);
                    *written += n;
                    left = left.saturating_sub(n.max(1) as usize);
                    if done {
                        if *written != cut.lease_count {
                            return Err(broken("lease count differs from the cut's"));
                        }
                        put(&mut cut.out, &cut.rate_count);
                        cut.phase = Phase::Rate {
                            after: None,
                            written: 0,
                        };
                    } else {
                        *after = last.or(*after);
                    }
                }
                Phase::Rate { after, written } => {
                    let from = after
                        .as_ref()
                        .map_or(Bound::Unbounded, |k| Bound::Excluded(k.clone()));
                    let live = self.rate.range((from.clone(), Bound::Unbounded));
                    let changed = undo.rate.range((from, Bound::Unbounded));
                    let (last, n, done) = merge(live, changed, left, &mut cut.out);
                    *written += n;
                    left = left.saturating_sub(n.max(1) as usize);
                    if done {
                        if *written != cut.rate_count {
                            return Err(broken("bucket count differs from the cut's"));
                        }
                        cut.phase = Phase::Done;
                    } else if last.is_some() {
                        *after = last;
                    }
                }
                Phase::Done => return Ok(true),
            }
        }
        Ok(matches!(cut.phase, Phase::Done))
    }

    /// Close the cut (its undo log is dropped); [`SnapshotCut::into_bytes`] then gives
    /// its bytes — those of [`State::snapshot`] at [`State::begin_cut`] — without the
    /// state.
    pub fn end_cut(&mut self, cut: SnapshotCut) -> Result<SnapshotCut, CoreError> {
        if !matches!(cut.phase, Phase::Done) {
            return Err(broken("ended before every entry was written"));
        }
        match &self.undo {
            Some(u) if u.id == cut.id => self.undo = None,
            _ => return Err(broken("the state was replaced or the cut ended")),
        }
        Ok(cut)
    }

    /// Drop an open cut's undo log without finishing it (a failed build).
    pub fn abandon_cut(&mut self) {
        self.undo = None;
    }
}

/// Write up to `budget` entries of the map as of the cut: the live entries from `live`,
/// except where `changed` (the undo log) holds the value as of the cut. Returns the
/// last key visited, the number of entries written and whether both ran out.
fn merge<'a, K, V>(
    live: impl Iterator<Item = (&'a K, &'a V)>,
    changed: impl Iterator<Item = (&'a K, &'a Option<V>)>,
    budget: usize,
    out: &mut Vec<u8>,
) -> (Option<K>, u64, bool)
where
    K: Ord + Clone + Serialize + 'a,
    V: Serialize + 'a,
{
    let mut live = live.peekable();
    let mut changed = changed.peekable();
    let mut last = None;
    let mut written = 0u64;
    loop {
        if written as usize >= budget {
            let done = live.peek().is_none() && changed.peek().is_none();
            return (last, written, done);
        }
        let take_changed = match (live.peek(), changed.peek()) {
            (None, None) => return (last, written, true),
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((lk, _)), Some((ck, _))) => ck <= lk,
        };
        let (key, value): (&K, Option<&V>) = if take_changed {
            let (ck, cv) = changed.next().expect("peeked");
            if live.peek().is_some_and(|(lk, _)| *lk == ck) {
                live.next();
            }
            (ck, cv.as_ref())
        } else {
            let (lk, lv) = live.next().expect("peeked");
            (lk, Some(lv))
        };
        last = Some(key.clone());
        if let Some(v) = value {
            put(out, key);
            put(out, v);
            written += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Acquire, Command, Op, RateCheck, RateLimitRef, RateSpec};

    fn acquire(i: u64, ttl: u64) -> Op {
        Op::Acquire(Acquire {
            keys: vec![format!("k{}", i % 7)],
            lease_id: format!("l{i}"),
            holder: String::new(),
            ttl_ms: ttl,
        })
    }

    fn rate(i: u64) -> Op {
        Op::RateCheck {
            checks: vec![RateCheck {
                key: format!("r{}", i % 11),
                cost: 1,
                limit: RateLimitRef::Inline(RateSpec {
                    limit: 3,
                    period_ms: 1000,
                    burst: 3,
                }),
            }],
        }
    }

    /// A state whose keys hold 2 leases each, so waiting acquires queue.
    fn fresh() -> State {
        let mut s = State::new();
        let limits = (0..7)
            .map(|k| Op::SetLimit {
                key: format!("k{k}"),
                limit: 2,
            })
            .collect();
        s.apply(&Command::new(0, limits));
        s
    }

    /// A deterministic mix of ops from `seed`: grants, renewals, releases, rate checks,
    /// counters, expiry, waiting acquires and leaves (the queue is a section, taken
    /// whole at the cut's start, while its grants change leases during the cut).
    fn ops(seed: u64, n: u64) -> Vec<Op> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 9 {
                    0 | 1 => acquire(x % 40, 500 + x % 3000),
                    2 => Op::Release {
                        lease_id: format!("l{}", x % 40),
                    },
                    3 => rate(x),
                    4 => Op::Expire {
                        max_leases: 5,
                        max_rate_keys: 5,
                    },
                    5 => Op::CounterIncr {
                        key: format!("c{}", x % 5),
                        amount: 1,
                        expiry_ms: 100 + x % 900,
                    },
                    6 => Op::Renew {
                        lease_id: format!("l{}", (x >> 3) % 40),
                        ttl_ms: 2000 + i,
                    },
                    7 => Op::AcquireWait {
                        acquire: Acquire {
                            keys: vec![format!("k{}", x % 7)],
                            lease_id: format!("l{}", x % 40),
                            holder: String::new(),
                            ttl_ms: 500 + x % 3000,
                        },
                        wait_ms: 200 + (x >> 5) % 4000,
                    },
                    _ => Op::LeaveQueue {
                        lease_id: format!("l{}", (x >> 4) % 40),
                    },
                }
            })
            .collect()
    }

    /// Whatever is applied between chunks, the cut's bytes are the snapshot at the cut.
    #[test]
    fn a_cut_equals_the_snapshot_at_its_start_whatever_happens_meanwhile() {
        let mut cuts_with_waiters = 0;
        for seed in 1..40u64 {
            let mut s = fresh();
            let mut t = 1_000;
            for op in ops(seed, 120) {
                t += 37;
                s.apply(&Command::single(t, op));
            }
            let want = s.snapshot();
            cuts_with_waiters += usize::from(s.stats().waiters > 0);
            let mut cut = s.begin_cut();
            let mut during = ops(seed.wrapping_mul(31), 200).into_iter();
            loop {
                for op in during.by_ref().take(7) {
                    t += 53;
                    s.apply(&Command::single(t, op));
                }
                if s.continue_cut(&mut cut, 1 + (seed as usize % 5)).unwrap() {
                    break;
                }
            }
            let got = s.end_cut(cut).unwrap().into_bytes();
            assert_eq!(got, want, "seed {seed}");
            assert_eq!(State::restore(&got).unwrap().snapshot(), want);
            // The live state went on and is intact.
            let after = s.snapshot();
            assert_eq!(State::restore(&after).unwrap().digest(), s.digest());
        }
        assert!(
            cuts_with_waiters > 10,
            "{cuts_with_waiters} cuts had waiters"
        );
    }

    /// Taking the pieces as they are written, then the rest, gives the same bytes.
    #[test]
    fn taken_pieces_and_the_rest_are_the_snapshot() {
        let mut s = fresh();
        let mut t = 1_000;
        for op in ops(7, 300) {
            t += 37;
            s.apply(&Command::single(t, op));
        }
        let want = s.snapshot();
        let mut cut = s.begin_cut();
        let mut got: Vec<u8> = cut.take_written().concat();
        while !s.continue_cut(&mut cut, 3).unwrap() {
            got.extend(cut.take_written().concat());
            s.apply(&Command::single(t + 1, acquire(9, 500)));
        }
        got.extend(cut.take_written().concat());
        got.extend(s.end_cut(cut).unwrap().into_bytes());
        assert_eq!(got, want);
    }

    #[test]
    fn a_cut_of_a_replaced_state_is_refused() {
        let mut s = State::new();
        s.apply(&Command::single(5, acquire(1, 1000)));
        let mut cut = s.begin_cut();
        let mut other = State::restore(&s.snapshot()).unwrap();
        assert!(other.continue_cut(&mut cut, 10).is_err());
        s.abandon_cut();
        assert!(s.continue_cut(&mut cut, 10).is_err());
        assert!(other.end_cut(cut).is_err());
    }
}
