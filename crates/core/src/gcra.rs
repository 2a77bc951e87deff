//! GCRA, the generic cell rate algorithm: a token bucket without a timer.
//!
//! A bucket is one number, the *theoretical arrival time* (TAT): the instant at which
//! the bucket would be full again if nothing else arrived. With emission interval
//! `T = period / limit` and tolerance `τ = T × burst`, a request of cost `c` at time
//! `now` is allowed iff `max(TAT, now) + c·T ≤ now + τ`, and then
//! `TAT ← max(TAT, now) + c·T`. Everything a caller wants to know follows exactly from
//! the state:
//! - `remaining = ⌊(now + τ − TAT) / T⌋` (after the charge),
//! - `reset_after = TAT − now` (until the bucket is full again),
//! - `retry_after = max(TAT, now) + c·T − τ − now` (for a denied request).
//!
//! A bucket whose TAT is at or before `now` is full: it carries no information and can
//! be deleted, which is how idle keys are purged without changing any decision.
//!
//! Arithmetic is in integer nanoseconds held in `u128`, so `T` keeps sub-millisecond
//! precision (1,000,000 per second is representable) and nothing overflows; results
//! are rounded *up* to whole milliseconds so a client that waits `retry_after_ms` is
//! never told to wait again.

use crate::command::RateSpec;

const NS_PER_MS: u128 = 1_000_000;

/// A bucket's parameters, derived from a [`RateSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Emission interval T in ns (at least 1).
    pub emission_ns: u128,
    /// Tolerance τ = T × burst in ns.
    pub tolerance_ns: u128,
}

impl Params {
    pub fn new(spec: &RateSpec) -> Self {
        let limit = u128::from(spec.limit.max(1));
        let emission_ns = (u128::from(spec.period_ms) * NS_PER_MS / limit).max(1);
        Self {
            emission_ns,
            tolerance_ns: emission_ns * u128::from(spec.burst.max(1)),
        }
    }
}

/// One check's decision. `new_tat` is what the bucket becomes if the check is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub new_tat: u128,
    pub remaining: u32,
    pub reset_after_ms: u64,
    pub retry_after_ms: u64,
}

fn ceil_ms(ns: u128) -> u64 {
    u64::try_from(ns.div_ceil(NS_PER_MS)).unwrap_or(u64::MAX)
}

fn clamp_u32(v: u128) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Milliseconds to the nanosecond clock of the buckets.
pub fn now_ns(now_ms: u64) -> u128 {
    u128::from(now_ms) * NS_PER_MS
}

/// Decide a check of `cost` against a bucket whose stored TAT is `tat` (None = full).
pub fn decide(tat: Option<u128>, now_ns: u128, p: &Params, cost: u32) -> Decision {
    let tat = tat.unwrap_or(now_ns).max(now_ns);
    let new_tat = tat + u128::from(cost) * p.emission_ns;
    let horizon = now_ns + p.tolerance_ns;
    if new_tat <= horizon {
        Decision {
            allowed: true,
            new_tat,
            remaining: clamp_u32((horizon - new_tat) / p.emission_ns),
            reset_after_ms: ceil_ms(new_tat - now_ns),
            retry_after_ms: 0,
        }
    } else {
        Decision {
            allowed: false,
            new_tat,
            // `tat` may lie beyond the horizon when the bucket was charged under a
            // larger tolerance (one key checked with different specs).
            remaining: clamp_u32(horizon.saturating_sub(tat) / p.emission_ns),
            reset_after_ms: ceil_ms(tat - now_ns),
            retry_after_ms: ceil_ms(new_tat - horizon).max(1),
        }
    }
}

/// The decision as it stands without charging (used to report the checks of a
/// multi-check that was denied as a whole).
pub fn peek(tat: Option<u128>, now_ns: u128, p: &Params) -> Decision {
    let tat = tat.unwrap_or(now_ns).max(now_ns);
    let horizon = now_ns + p.tolerance_ns;
    Decision {
        allowed: true,
        new_tat: tat,
        remaining: clamp_u32(horizon.saturating_sub(tat) / p.emission_ns),
        reset_after_ms: ceil_ms(tat - now_ns),
        retry_after_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limit: u32, period_ms: u64, burst: u32) -> Params {
        Params::new(&RateSpec {
            limit,
            period_ms,
            burst,
        })
    }

    #[test]
    fn full_bucket_allows_a_burst_then_one_per_interval() {
        let p = spec(60, 60_000, 10); // one per second, bucket of 10
        let mut tat = None;
        let now = now_ns(1_000_000);
        for i in 0..10 {
            let d = decide(tat, now, &p, 1);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            tat = Some(d.new_tat);
        }
        let d = decide(tat, now, &p, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 1000);
        assert_eq!(d.reset_after_ms, 10_000);
        assert_eq!(d.remaining, 0);
        // 999 ms later: still denied, 1 ms to go.
        let d = decide(tat, now + now_ns(999), &p, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 1);
        // Exactly one interval later: allowed again.
        let d = decide(tat, now + now_ns(1000), &p, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn cost_counts_as_several_requests() {
        let p = spec(10, 1000, 10);
        let d = decide(None, 0, &p, 4);
        assert!(d.allowed);
        assert_eq!(d.remaining, 6);
        let d2 = decide(Some(d.new_tat), 0, &p, 7);
        assert!(!d2.allowed);
        assert_eq!(d2.remaining, 6);
        assert_eq!(d2.retry_after_ms, 100);
    }

    #[test]
    fn sub_millisecond_rates_do_not_divide_by_zero() {
        let p = spec(1_000_000, 1, 1_000_000);
        assert_eq!(p.emission_ns, 1);
        let d = decide(None, 5, &p, 1_000_000);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }
}
