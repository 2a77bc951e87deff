//! Leases: acquire (all keys or none), idempotent retry by lease id, release, renew
//! and the leader's housekeeping.
//!
//! A lease holds one slot on each of its keys until it is released or `now` reaches
//! its `expires_at_ms`. The fencing token of a grant is a counter in the state:
//! strictly increasing across all grants, identical on every replica.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::{Acquire, Caller};
use crate::error::CoreError;
use crate::outcome::{Denial, Grant, Outcome, Reply, ShadowDenial, SlotUsage};
use crate::validate;

use super::slots::SlotSet;
use super::State;

/// One live lease.
///
/// Compact in memory, identical on the wire: the lease id is one allocation shared
/// with the `lease_ids` index, each key is the same allocation as the key of its
/// per-key set in `slots` (interned by [`State::insert_lease`]), and the other strings
/// are boxed without spare capacity. `Arc<str>`, `Box<str>` and `Box<[_]>` serialize
/// exactly as `String` and `Vec<String>` do, so snapshots and digests are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub(super) lease_id: Arc<str>,
    pub(super) holder: Box<str>,
    pub(super) keys: Box<[Arc<str>]>,
    pub(super) expires_at_ms: u64,
    /// The caller that acquired it; only it (or an admin) may release or renew it.
    /// Interned: every lease of one caller shares one allocation (`State::owners`).
    pub(super) owner: Arc<str>,
}

impl State {
    /// The live lease with this id, purging it first if it is dead.
    pub(super) fn live_token(&mut self, lease_id: &str) -> Option<u64> {
        let token = *self.lease_ids.get(lease_id)?;
        let exp = self.leases.get(&token).map(|l| l.expires_at_ms)?;
        if exp <= self.now_ms {
            self.remove_lease(token);
            return None;
        }
        Some(token)
    }

    /// [`crate::Op::Acquire`]: a waiting acquire that does not wait (`queue.rs`
    /// decides both, so a plain acquire respects the queue too: no barging).
    pub(super) fn acquire(&mut self, a: &Acquire, caller: &Caller) -> Reply {
        self.acquire_or_wait(a, 0, caller)
    }

    /// Create a lease on `keys` for `owner` (the caller has checked room, caps and
    /// ownership) with a new fencing token; `slots` is the keys' usage before it.
    pub(super) fn take_lease(
        &mut self,
        lease_id: &str,
        holder: &str,
        keys: &[String],
        ttl_ms: u64,
        owner: &str,
        mut slots: Vec<SlotUsage>,
    ) -> Grant {
        self.last_token += 1;
        let token = self.last_token;
        let expires_at_ms = self.now_ms.saturating_add(ttl_ms);
        self.insert_lease(
            token,
            Lease {
                lease_id: lease_id.into(),
                holder: holder.into(),
                keys: keys.iter().map(|k| Arc::from(k.as_str())).collect(),
                expires_at_ms,
                owner: owner.into(),
            },
        );
        for s in &mut slots {
            s.used += 1;
        }
        Grant {
            lease_id: lease_id.to_string(),
            fencing_token: token,
            expires_at_ms,
            slots,
            reused: false,
        }
    }

    /// The original grant of the live lease `token`, asked for again by `a`; a
    /// conflict if `a` names other keys than the lease holds.
    pub(super) fn regrant(&self, token: u64, a: &Acquire) -> Reply {
        let lease = &self.leases[&token];
        let mut held: Vec<&str> = lease.keys.iter().map(|k| &**k).collect();
        let mut requested: Vec<&str> = a.keys.iter().map(String::as_str).collect();
        held.sort_unstable();
        requested.sort_unstable();
        if held != requested {
            return Err(CoreError::LeaseConflict {
                lease_id: a.lease_id.clone(),
                held: lease.keys.iter().map(|k| k.to_string()).collect(),
                requested: a.keys.clone(),
            });
        }
        Ok(Outcome::Granted(Grant {
            lease_id: a.lease_id.clone(),
            fencing_token: token,
            expires_at_ms: lease.expires_at_ms,
            slots: a.keys.iter().map(|k| self.slot_usage(k)).collect(),
            reused: true,
        }))
    }

    /// Purges the dead leases of every key, then reports each key's usage before a
    /// grant (and the full keys whose limit is a shadow policy's, which do not
    /// block), or the denial if any key is at an enforced limit (all keys or none).
    pub(super) fn free_slots(
        &mut self,
        keys: &[String],
    ) -> Result<(Vec<SlotUsage>, Vec<ShadowDenial>), Denial> {
        let mut slots = Vec::with_capacity(keys.len());
        let mut blocked_by = Vec::new();
        let mut shadow_denied = Vec::new();
        let mut retry_after_ms = 0u64;
        for k in keys {
            self.purge_key(k);
            let (limit, source) = self.resolve_limit(k);
            let set = self.slots.get(k.as_str());
            let used = set.map_or(0, SlotSet::len);
            if used >= limit as usize {
                if let Some(policy) = self.shadow_limit_policy(&source) {
                    shadow_denied.push(ShadowDenial {
                        key: k.clone(),
                        policy,
                    });
                    slots.push(SlotUsage {
                        key: k.clone(),
                        used: u32::try_from(used).unwrap_or(u32::MAX),
                        limit,
                    });
                    continue;
                }
                blocked_by.push(k.clone());
                // A slot frees when (used - limit + 1) leases have expired: the
                // expiry of the (used - limit + 1)-th earliest lease.
                let need = used - limit as usize;
                let wait = set
                    .and_then(|s| s.range_from((0, 0)).nth(need))
                    .map_or(1, |(exp, _)| exp - self.now_ms);
                retry_after_ms = retry_after_ms.max(wait);
            }
            slots.push(SlotUsage {
                key: k.clone(),
                used: u32::try_from(used).unwrap_or(u32::MAX),
                limit,
            });
        }
        if blocked_by.is_empty() {
            return Ok((slots, shadow_denied));
        }
        Err(Denial {
            blocked_by,
            slots,
            retry_after_ms: retry_after_ms.clamp(1, self.settings.max_retry_after_ms),
        })
    }

    /// Release is idempotent: unknown, expired or already released → false. Another
    /// caller's live lease is refused (unless the caller is admin).
    pub(super) fn release(&mut self, lease_id: &str, caller: &Caller) -> Result<bool, CoreError> {
        match self.live_token(lease_id) {
            Some(token) => {
                self.check_owner(token, caller)?;
                Ok(self.remove_lease(token).is_some())
            }
            None => Ok(false),
        }
    }

    pub(super) fn renew(&mut self, lease_id: &str, ttl_ms: u64, caller: &Caller) -> Reply {
        validate::lease_id(lease_id)?;
        validate::ttl(ttl_ms, &self.settings)?;
        let Some(token) = self.live_token(lease_id) else {
            return Err(CoreError::LeaseNotFound {
                lease_id: lease_id.to_string(),
            });
        };
        self.check_owner(token, caller)?;
        let Some(mut lease) = self.remove_lease(token) else {
            return Err(CoreError::LeaseNotFound {
                lease_id: lease_id.to_string(),
            });
        };
        lease.expires_at_ms = self.now_ms.saturating_add(ttl_ms);
        let expires_at_ms = lease.expires_at_ms;
        self.insert_lease(token, lease);
        Ok(Outcome::Renewed {
            lease_id: lease_id.to_string(),
            expires_at_ms,
        })
    }

    /// Bounded housekeeping: purge up to `max_leases` dead leases (soonest first) and
    /// scan up to `max_rate_keys` buckets from the cursor, dropping full ones; then
    /// drop up to `max_rate_keys` expired counters.
    pub(super) fn expire(&mut self, max_leases: u32, max_rate_keys: u32) -> Outcome {
        let leases = self.purge_dead_leases(max_leases);
        // Expired counters share the bucket budget and the count (both are keys
        // under `max_rate_keys`).
        let rate_keys = self
            .sweep_rate(max_rate_keys)
            .saturating_add(self.sweep_counters(max_rate_keys));
        Outcome::Expired { leases, rate_keys }
    }
}
