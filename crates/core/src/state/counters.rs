//! Counters: integers with an expiry in cluster time, the fixed-window primitive of
//! the Python `limits` storage (`quorate.contrib.limits`, used by slowapi and
//! Flask-Limiter).
//!
//! - [`Op::CounterIncr`] adds `amount` to a live counter (its expiry unchanged), or
//!   starts a new one at `amount` expiring at `now + expiry_ms` when the key has no
//!   live counter. `now` is the command's time, so every replica computes the same
//!   expiry; a counter is live while `now < expires_at_ms`.
//! - [`Query::Counter`] reads a counter at the query's time (expired = 0, no expiry).
//! - [`Op::CounterClear`] removes it.
//!
//! Bounds: keys follow the rate-key rules ([`validate::key`]); `expiry_ms` is at most
//! `max_period_ms` (a counter is a window, the longest a rate period may be); and
//! counters count against `max_rate_keys` together with rate buckets (no setting of
//! their own: adding one would change the layout of [`crate::Settings`], which old
//! `Configure` entries in the log are decoded with). An increment that would add a
//! key beyond that cap is refused with [`CoreError::StateFull`], after a bounded
//! sweep of expired counters.
//!
//! Expired counters are dropped by [`Op::Expire`] (oldest first, within the same
//! `max_rate_keys` budget as the bucket sweep) through an expiry index that is
//! derived data, rebuilt on restore. A counter in the map but expired decides exactly
//! like an absent one, so when the sweep runs changes nothing but memory.
//!
//! [`Op::CounterIncr`]: crate::Op::CounterIncr
//! [`Op::CounterClear`]: crate::Op::CounterClear
//! [`Op::Expire`]: crate::Op::Expire
//! [`Query::Counter`]: crate::Query::Counter

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::outcome::{CounterInfo, Outcome, Reply};
use crate::validate;

use super::digest::entry_hash;
use super::State;

/// Expired counters an increment at the cap may drop to make room.
const ROOM_SWEEP_COUNTERS: u32 = 256;

/// One counter (the snapshot's `counters` section holds these by key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counter {
    pub(crate) value: u64,
    pub(crate) expires_at_ms: u64,
}

impl State {
    /// The live counter under `key` at `now_ms`.
    fn live_counter(&self, key: &str, now_ms: u64) -> Option<Counter> {
        self.counters
            .get(key)
            .copied()
            .filter(|c| c.expires_at_ms > now_ms)
    }

    /// `key`'s counter as of `now_ms`.
    pub(super) fn counter_info(&self, key: &str, now_ms: u64) -> CounterInfo {
        let live = self.live_counter(key, now_ms);
        CounterInfo {
            key: key.to_string(),
            value: live.map_or(0, |c| c.value),
            expires_at_ms: live.map(|c| c.expires_at_ms),
            ttl_ms: live.map_or(0, |c| c.expires_at_ms - now_ms),
        }
    }

    pub(super) fn counter_incr(&mut self, key: &str, amount: u32, expiry_ms: u64) -> Reply {
        validate::key("key", key)?;
        if amount == 0 {
            return Err(CoreError::invalid("amount", "must be at least 1"));
        }
        let max = self.settings.max_period_ms;
        if expiry_ms == 0 || expiry_ms > max {
            return Err(CoreError::invalid(
                "expiry_ms",
                format!("must be in 1..={max} (max_period_ms)"),
            ));
        }
        let now = self.now_ms;
        let next = match self.live_counter(key, now) {
            Some(c) => Counter {
                value: c.value.saturating_add(u64::from(amount)),
                ..c
            },
            None => {
                if !self.counters.contains_key(key) {
                    self.counter_room()?;
                }
                Counter {
                    value: u64::from(amount),
                    expires_at_ms: now.saturating_add(expiry_ms),
                }
            }
        };
        self.put_counter(key, next);
        Ok(Outcome::Counter(self.counter_info(key, now)))
    }

    pub(super) fn counter_clear(&mut self, key: &str) -> Reply {
        validate::key("key", key)?;
        let live = self.live_counter(key, self.now_ms).is_some();
        self.remove_counter(key);
        Ok(Outcome::CounterCleared { cleared: live })
    }

    /// Room for one more key under `max_rate_keys` (buckets and counters together),
    /// after a bounded sweep of expired counters and full buckets if at the cap.
    fn counter_room(&mut self) -> Result<(), CoreError> {
        let max = self.settings.max_rate_keys;
        let over = |st: &Self| (st.rate.len() + st.counters.len()) as u64 >= max;
        if over(self) {
            self.sweep_counters(ROOM_SWEEP_COUNTERS);
        }
        if over(self) {
            self.sweep_rate(ROOM_SWEEP_COUNTERS);
        }
        if over(self) {
            return Err(CoreError::StateFull {
                cap: "max_rate_keys".into(),
                limit: max,
                what: "counters on new keys".into(),
            });
        }
        Ok(())
    }

    /// Drop up to `max` expired counters, soonest-expired first; returns how many.
    pub(super) fn sweep_counters(&mut self, max: u32) -> u32 {
        let now = self.now_ms;
        let dead: Vec<String> = self
            .counter_expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(max as usize)
            .map(|(_, k)| k.clone())
            .collect();
        let n = u32::try_from(dead.len()).unwrap_or(u32::MAX);
        for k in dead {
            self.remove_counter(&k);
        }
        n
    }

    /// Insert or replace a counter, keeping the expiry index and digest sum.
    fn put_counter(&mut self, key: &str, c: Counter) {
        self.remove_counter(key);
        self.counter_expiry
            .insert((c.expires_at_ms, key.to_string()));
        self.counter_sum = self.counter_sum.wrapping_add(entry_hash(&(key, c)));
        self.counters.insert(key.to_string(), c);
    }

    fn remove_counter(&mut self, key: &str) {
        if let Some(old) = self.counters.remove(key) {
            self.counter_expiry
                .remove(&(old.expires_at_ms, key.to_string()));
            self.counter_sum = self.counter_sum.wrapping_sub(entry_hash(&(key, old)));
        }
    }

    /// Rebuild the derived counter data (expiry index, digest sum) after a restore.
    pub(super) fn index_counters(&mut self) {
        self.counter_expiry = self
            .counters
            .iter()
            .map(|(k, c)| (c.expires_at_ms, k.clone()))
            .collect();
        self.counter_sum = self.counters.iter().fold(0u64, |acc, (k, c)| {
            acc.wrapping_add(entry_hash(&(k.as_str(), *c)))
        });
    }
}
