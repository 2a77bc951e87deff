//! Queries: reads answered from a shared borrow, at a time that may be later than
//! the state's own. They filter dead leases by time instead of purging them, so they
//! never change the state and need only the read lock.

use std::collections::BTreeSet;
use std::ops::Bound;

use crate::command::{Policy, Query};
use crate::outcome::{LeaseInfo, LimitInfo, Outcome, PoliciesView, Reply, Usage};
use crate::validate;

use super::leases::Lease;
use super::State;

impl State {
    /// Answer a read at time `now_ms` (the later of this and the state's own time).
    /// Never changes the state.
    pub fn query(&self, q: &Query, now_ms: u64) -> Reply {
        // Reads filter by time instead of purging, so they work on a shared borrow.
        TimeView {
            state: self,
            now_ms: now_ms.max(self.now_ms),
        }
        .query(q)
    }

    pub(super) fn lease_info(&self, token: u64, lease: &Lease) -> LeaseInfo {
        LeaseInfo {
            lease_id: lease.lease_id.to_string(),
            holder: lease.holder.to_string(),
            owner: lease.owner.to_string(),
            fencing_token: token,
            expires_at_ms: lease.expires_at_ms,
            keys: lease.keys.iter().map(|k| k.to_string()).collect(),
        }
    }
}

/// A read-only view of the state at a (possibly later) time.
struct TimeView<'a> {
    state: &'a State,
    now_ms: u64,
}

impl TimeView<'_> {
    fn live<'b>(&'b self, key: &str) -> impl Iterator<Item = u64> + 'b {
        let from = (self.now_ms.saturating_add(1), 0);
        self.state
            .slots
            .get(key)
            .into_iter()
            .flat_map(move |s| s.range_from(from).map(|(_, t)| t))
    }

    fn used(&self, key: &str) -> u32 {
        u32::try_from(self.live(key).count()).unwrap_or(u32::MAX)
    }

    fn limit_info(&self, key: &str) -> LimitInfo {
        let (limit, source) = self.state.resolve_limit(key);
        LimitInfo {
            key: key.to_string(),
            limit,
            source,
            used: self.used(key),
        }
    }

    /// Keys under `prefix` with an override or a live slot, at most `max` of them.
    fn limits(&self, prefix: &str, max: usize) -> Outcome {
        let st = self.state;
        let in_prefix = |k: &&str| k.starts_with(prefix);
        let from = (Bound::Included(prefix), Bound::Unbounded);
        // Both sources are sorted, so the first `max + 1` keys of their union are
        // among the first `max + 1` of each: stop there instead of walking every key
        // under the prefix (a million, for an empty prefix) under the read lock.
        let mut keys: BTreeSet<&str> = st
            .overrides
            .range::<str, _>(from)
            .map(|(k, _)| k.as_str())
            .take_while(in_prefix)
            .take(max.saturating_add(1))
            .collect();
        keys.extend(
            st.slots
                .range::<str, _>(from)
                .map(|(k, _)| &**k)
                .take_while(in_prefix)
                .filter(|k| self.used(k) > 0)
                .take(max.saturating_add(1)),
        );
        let truncated = keys.len() > max;
        let limits = keys
            .into_iter()
            .take(max)
            .map(|k| self.limit_info(k))
            .collect();
        Outcome::Limits { limits, truncated }
    }

    /// Settings, every policy (concurrency ones in match order, then rate ones) and
    /// the tiers.
    fn policies(&self) -> PoliciesView {
        let st = self.state;
        let mut policies: Vec<(String, Policy)> = st
            .concurrency
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    Policy::Concurrency {
                        pattern: p.pattern.clone(),
                        limit: p.limit,
                    },
                )
            })
            .collect();
        policies.extend(
            st.rate_policies
                .iter()
                .map(|(n, s)| (n.clone(), Policy::Rate(*s))),
        );
        PoliciesView {
            settings: st.settings,
            policies,
            tiers: st.tiers.iter().map(|(n, m)| (n.clone(), *m)).collect(),
            source_digest: st.config_digest,
        }
    }

    fn query(&self, q: &Query) -> Reply {
        let st = self.state;
        match q {
            Query::Usage { key } => {
                validate::key("key", key)?;
                let mut leases: Vec<_> = self
                    .live(key)
                    .filter_map(|t| st.leases.get(&t).map(|l| st.lease_info(t, l)))
                    .collect();
                leases.sort_by_key(|l| l.fencing_token);
                Ok(Outcome::Usage(Usage {
                    key: key.clone(),
                    used: u32::try_from(leases.len()).unwrap_or(u32::MAX),
                    limit: st.resolve_limit(key).0,
                    leases,
                }))
            }
            Query::Limit { key } => {
                validate::key("key", key)?;
                Ok(Outcome::Limit(self.limit_info(key)))
            }
            Query::Limits { prefix, max } => {
                if !prefix.is_empty() {
                    validate::key("prefix", prefix)?;
                }
                Ok(self.limits(prefix, *max as usize))
            }
            Query::Policies => Ok(Outcome::Policies(self.policies())),
            Query::Lease { lease_id } => {
                validate::lease_id(lease_id)?;
                let info = st.lease_ids.get(lease_id.as_str()).and_then(|t| {
                    st.leases
                        .get(t)
                        .filter(|l| l.expires_at_ms > self.now_ms)
                        .map(|l| st.lease_info(*t, l))
                });
                Ok(Outcome::Lease(info))
            }
            Query::PolicyModes => Ok(Outcome::PolicyModes {
                shadow: st.shadow.iter().cloned().collect(),
            }),
            Query::Counter { key } => {
                validate::key("key", key)?;
                Ok(Outcome::Counter(st.counter_info(key, self.now_ms)))
            }
            Query::Allowlist => Ok(Outcome::Allowlist {
                entries: st.allow.iter().cloned().collect(),
                max: st.admin_limits.max_allowlist,
            }),
            Query::Audit { since, prefix, max } => {
                let mut matching = st
                    .audit
                    .iter()
                    .filter(|r| r.index > *since && r.key.starts_with(prefix.as_str()));
                let records: Vec<_> = matching.by_ref().take(*max as usize).cloned().collect();
                Ok(Outcome::Audit {
                    records,
                    truncated: matching.next().is_some(),
                    capacity: st.admin_limits.audit_entries,
                })
            }
            Query::Queue { key } => {
                validate::key("key", key)?;
                Ok(Outcome::Queue(st.queue_view(key, self.now_ms)))
            }
        }
    }
}
