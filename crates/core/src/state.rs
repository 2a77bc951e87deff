//! The limiter state machine.
//!
//! [`State`] holds every live lease, every per-key override, the policies and tiers,
//! and one GCRA timestamp per active rate bucket. [`State::apply`] is the only way to
//! change it; [`State::query`] answers reads without changing it.
//!
//! ## Leases and slots
//! A lease holds one slot on each of its keys until it is released or `now` reaches
//! its `expires_at_ms`. Each key keeps an ordered set of `(expires_at, token)` for its
//! leases, so the number of slots in use is the set's size once the dead ones at its
//! front are purged, and the soonest expiries (the honest retry hint for a denial) are
//! the first elements. Dead leases are purged from a key before every decision on it
//! (as the seed's `ZREMRANGEBYSCORE` did), so they stop counting the moment they die;
//! the leader's periodic [`Op::Expire`] purges the rest from a global expiry index so
//! memory does not grow with leases nobody touches again.
//!
//! The fencing token of a grant is a counter in the state: strictly increasing across
//! all grants, identical on every replica.
//!
//! ## What is persisted
//! A snapshot holds only the primary data (settings, policies, overrides, leases by
//! token, rate buckets, counters); the per-key sets, the lease-id map and the expiry
//! index are derived and rebuilt on restore. All maps are `BTreeMap`, so the snapshot
//! of a given state is always the same bytes and its digest can be compared across
//! nodes.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::{
    Acquire, Caller, Command, Configuration, Op, Policy, Query, RateCheck, RateLimitRef, RateSpec,
    Settings,
};
use crate::descriptor_table::DescriptorTables;
use crate::error::CoreError;
use crate::gcra;
use crate::outcome::{
    Denial, Grant, LeaseInfo, LimitInfo, LimitSource, Outcome, PoliciesView, RateDecision,
    RateResult, Reply, SlotUsage, Usage,
};
use crate::validate;

/// Snapshot format version; bumped when the layout changes. Version 2 added the
/// state caps to the settings, the owner to every lease and the seen nodes; version 1 snapshots
/// still restore (see [`v1`]). Version 3 appends the Envoy descriptor tables after
/// the version 2 fields (a trailing section, so a version 2 snapshot is a version 3
/// one without it and restores with empty tables).
pub(crate) const SNAPSHOT_VERSION: u32 = 3;

/// Dead leases an acquire at a cap may purge to make room (bounded, so one op's
/// work stays bounded however much garbage has piled up).
const ROOM_SWEEP_LEASES: u32 = 64;
/// Rate buckets a check at the cap may examine for full (droppable) ones.
const ROOM_SWEEP_RATE_KEYS: u32 = 256;

/// One live lease.
///
/// Compact in memory, identical on the wire: the lease id is one allocation shared
/// with the `lease_ids` index, each key is the same allocation as the key of its
/// per-key set in `slots` (interned by [`State::insert_lease`]), and the other strings
/// are boxed without spare capacity. `Arc<str>`, `Box<str>` and `Box<[_]>` serialize
/// exactly as `String` and `Vec<String>` do, so snapshots and digests are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    lease_id: Arc<str>,
    holder: Box<str>,
    keys: Box<[Arc<str>]>,
    expires_at_ms: u64,
    /// The caller that acquired it; only it (or an admin) may release or renew it.
    /// Interned: every lease of one caller shares one allocation (`State::owners`).
    owner: Arc<str>,
}

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
    fn insert(&mut self, entry: (u64, u64)) {
        match self {
            SlotSet::One(x) if *x == entry => {}
            SlotSet::One(x) => *self = SlotSet::Many(BTreeSet::from([*x, entry])),
            SlotSet::Many(set) => {
                set.insert(entry);
            }
        }
    }

    /// Remove `entry`; true when the set is then empty (the caller drops the key).
    fn remove(&mut self, entry: &(u64, u64)) -> bool {
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

    fn first(&self) -> Option<(u64, u64)> {
        match self {
            SlotSet::One(x) => Some(*x),
            SlotSet::Many(set) => set.first().copied(),
        }
    }

    fn len(&self) -> usize {
        match self {
            SlotSet::One(_) => 1,
            SlotSet::Many(set) => set.len(),
        }
    }

    /// The entries at or after `from`, in order.
    fn range_from(&self, from: (u64, u64)) -> impl Iterator<Item = (u64, u64)> + '_ {
        let (one, many) = match self {
            SlotSet::One(x) => (Some(*x).filter(|x| *x >= from), None),
            SlotSet::Many(set) => (None, Some(set.range(from..).copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// The values of changed entries as of an open snapshot cut (`cut.rs`): the first
/// change to a lease or bucket after the cut records its value before the change
/// (`None`: it did not exist). Lives here, with the maps it shadows.
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

/// A concurrency policy in match order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConcurrencyPolicy {
    name: String,
    pattern: String,
    limit: u32,
}

impl ConcurrencyPolicy {
    fn matches(&self, key: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => self.pattern == key,
        }
    }
}

/// Counts of what the state holds (for metrics and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub leases: usize,
    pub slot_keys: usize,
    pub rate_keys: usize,
    pub overrides: usize,
    pub policies: usize,
    pub last_token: u64,
}

/// The replicated limiter state. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct State {
    // --- primary data (in snapshots) ---
    pub(crate) now_ms: u64,
    /// Last fencing token handed out; the next grant gets `last_token + 1`.
    pub(crate) last_token: u64,
    pub(crate) settings: Settings,
    /// `source_digest` of the last installed [`Configuration`].
    pub(crate) config_digest: Option<u64>,
    pub(crate) overrides: BTreeMap<String, u32>,
    pub(crate) concurrency: Vec<ConcurrencyPolicy>,
    pub(crate) rate_policies: BTreeMap<String, RateSpec>,
    pub(crate) tiers: BTreeMap<String, u32>,
    pub(crate) leases: BTreeMap<u64, Lease>,
    /// GCRA theoretical arrival time per bucket, ns.
    pub(crate) rate: BTreeMap<String, u128>,
    /// Where the next `Expire` resumes its scan of rate buckets.
    pub(crate) rate_cursor: Option<String>,
    /// Nodes the leader has seen acknowledge log entries (`Op::MarkSeen`).
    pub(crate) seen: BTreeSet<u64>,
    /// Envoy descriptor tables (`descriptors.rs`); the snapshot's trailing section.
    pub(crate) descriptors: DescriptorTables,
    // --- derived (rebuilt on restore) ---
    /// Wrapping sums of per-entry hashes of `leases`, `rate` and `overrides`, kept up
    /// to date on every insert and removal, so [`State::digest`] costs the same at a
    /// million leases as at ten (see `digest`).
    lease_sum: u64,
    rate_sum: u64,
    override_sum: u64,
    /// The undo log of an open snapshot cut (`cut.rs`), and the last cut's number.
    pub(crate) undo: Option<UndoLog>,
    cut_seq: u64,
    /// Lease id → token; the key is the lease's own `lease_id` allocation.
    lease_ids: BTreeMap<Arc<str>, u64>,
    /// Per key: (expires_at_ms, token) of its live leases. The key is shared by every
    /// lease on it (`Lease::keys`), so a key's text is stored once however many
    /// leases hold it.
    slots: BTreeMap<Arc<str>, SlotSet>,
    expiry: BTreeSet<(u64, u64)>,
    /// Lease owners and how many live leases each has: there are few callers and
    /// many leases, so each lease's `owner` is this map's allocation (at a million
    /// leases, 32 MB less than a string per lease).
    owners: BTreeMap<Arc<str>, u64>,
}

/// The snapshot format: primary data only. One field list for both directions:
/// borrowed from the state when written, owned when read (a `Cow` encodes exactly as
/// the value it holds, so the bytes are those of the plain fields).
#[derive(Serialize, Deserialize)]
struct Snapshot<'a> {
    version: u32,
    now_ms: u64,
    last_token: u64,
    settings: Settings,
    config_digest: Option<u64>,
    overrides: Cow<'a, BTreeMap<String, u32>>,
    concurrency: Cow<'a, [ConcurrencyPolicy]>,
    rate_policies: Cow<'a, BTreeMap<String, RateSpec>>,
    tiers: Cow<'a, BTreeMap<String, u32>>,
    leases: Cow<'a, BTreeMap<u64, Lease>>,
    #[serde(deserialize_with = "bulk_map")]
    rate: Cow<'a, BTreeMap<String, u128>>,
    rate_cursor: Cow<'a, Option<String>>,
    seen: Cow<'a, BTreeSet<u64>>,
}

/// Decodes a map the way a snapshot holds it (sorted, no duplicate keys) into a
/// `BTreeMap` with full nodes. serde's own map decoding inserts entry by entry, and a
/// B-tree grown by inserts in key order keeps its nodes about half full: at a million
/// rate keys a restored node held 90 B per key instead of 54, and the half-full map
/// lived beside the rebuilt one until restore finished. Collecting the pairs first and
/// building the tree from the sorted run (`FromIterator`) avoids both. Same bytes: a
/// map and a sequence of pairs encode alike in bincode; this only changes the reader.
fn bulk_map<'de, 'a, D, K, V>(d: D) -> Result<Cow<'a, BTreeMap<K, V>>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct Pairs<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for Pairs<K, V> {
        type Value = Vec<(K, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            // The size hint comes from the input: cap it, the Vec grows if needed.
            let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(pair) = map.next_entry()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    let pairs = d.deserialize_map(Pairs(std::marker::PhantomData))?;
    Ok(Cow::Owned(pairs.into_iter().collect()))
}

/// FNV-1a over an entry's bincode bytes: the per-entry hash of [`State::digest`].
fn entry_hash<T: Serialize + ?Sized>(value: &T) -> u64 {
    // Serializing plain data into a Vec cannot fail.
    fnv1a(&bincode::serialize(value).unwrap_or_default())
}

/// FNV-1a, 64 bit: a stable, dependency-free digest for comparing replicas (not a
/// cryptographic hash; nobody is adversarial about their own snapshot).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl State {
    /// An empty state with default [`Settings`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Cluster time as of the last applied command.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The number of the next snapshot cut (distinguishes a stale cut from this one).
    pub(crate) fn next_cut_id(&mut self) -> u64 {
        self.cut_seq += 1;
        self.cut_seq
    }

    /// Nodes recorded as having acknowledged log entries ([`Op::MarkSeen`]).
    pub fn seen(&self) -> &BTreeSet<u64> {
        &self.seen
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `source_digest` of the configuration last installed by [`Op::Configure`].
    pub fn policies_digest(&self) -> Option<u64> {
        self.config_digest
    }

    pub fn stats(&self) -> Stats {
        Stats {
            leases: self.leases.len(),
            slot_keys: self.slots.len(),
            rate_keys: self.rate.len(),
            overrides: self.overrides.len(),
            policies: self.concurrency.len() + self.rate_policies.len(),
            last_token: self.last_token,
        }
    }

    /// Apply one log entry: advance time, then apply each op in order. Returns one
    /// reply per op. Never panics; a rejected op changes nothing but time.
    pub fn apply(&mut self, cmd: &Command) -> Vec<Reply> {
        self.now_ms = self.now_ms.max(cmd.time_ms);
        cmd.ops.iter().map(|op| self.apply_op(op)).collect()
    }

    fn apply_op(&mut self, op: &Op) -> Reply {
        self.apply_as(&Caller::system(), op)
    }

    /// Apply `op` on behalf of `caller` (the system for unwrapped ops).
    fn apply_as(&mut self, caller: &Caller, op: &Op) -> Reply {
        match op {
            Op::As { caller, op } => {
                if matches!(**op, Op::As { .. }) {
                    return Err(CoreError::invalid("op", "an op has at most one caller"));
                }
                if op.needs_admin() && !caller.admin {
                    return Err(CoreError::Forbidden {
                        reason: format!(
                            "{} needs an admin token; {:?} is a client",
                            op.kind(),
                            caller.name
                        ),
                    });
                }
                self.apply_as(caller, op)
            }
            Op::Acquire(a) => self.acquire(a, caller),
            Op::Release { lease_id } => Ok(Outcome::Released {
                released: self.release(lease_id, caller)?,
            }),
            Op::Renew { lease_id, ttl_ms } => self.renew(lease_id, *ttl_ms, caller),
            Op::Expire {
                max_leases,
                max_rate_keys,
            } => Ok(self.expire(*max_leases, *max_rate_keys)),
            Op::SetLimit { key, limit } => self.set_limit(key, *limit),
            Op::DeleteLimit { key } => self.delete_limit(key),
            Op::RateCheck { checks } => self.rate_check(checks),
            Op::PutPolicy { name, policy } => {
                validate::name("name", name)?;
                self.validate_policy(policy)?;
                self.put_policy(name, policy);
                Ok(Outcome::PolicyPut { name: name.clone() })
            }
            Op::DeletePolicy { name } => {
                validate::name("name", name)?;
                let before = self.concurrency.len();
                self.concurrency.retain(|p| &p.name != name);
                let removed = self.rate_policies.remove(name).is_some();
                Ok(Outcome::PolicyDeleted {
                    deleted: removed || self.concurrency.len() != before,
                })
            }
            Op::PutTier {
                name,
                multiplier_milli,
            } => {
                validate::name("name", name)?;
                validate::multiplier(*multiplier_milli)?;
                self.tiers.insert(name.clone(), *multiplier_milli);
                Ok(Outcome::TierPut { name: name.clone() })
            }
            Op::DeleteTier { name } => {
                validate::name("name", name)?;
                Ok(Outcome::TierDeleted {
                    deleted: self.tiers.remove(name).is_some(),
                })
            }
            Op::Configure(c) => self.configure(c),
            Op::Noop => Ok(Outcome::Noop),
            Op::MarkSeen { nodes } => {
                self.seen.extend(nodes.iter().copied());
                Ok(Outcome::Noop)
            }
            Op::ForgetSeen { nodes } => {
                nodes.iter().for_each(|n| {
                    self.seen.remove(n);
                });
                Ok(Outcome::Noop)
            }
            Op::ConfigureDescriptors(c) => self.configure_descriptors(c),
            Op::Descriptors(r) => self.descriptors(r),
        }
    }

    fn set_limit(&mut self, key: &str, limit: u32) -> Reply {
        validate::key("key", key)?;
        validate::limit("limit", limit, &self.settings)?;
        if let Some(old) = self.overrides.insert(key.to_string(), limit) {
            self.override_sum = self.override_sum.wrapping_sub(entry_hash(&(key, old)));
        }
        self.override_sum = self.override_sum.wrapping_add(entry_hash(&(key, limit)));
        Ok(Outcome::LimitSet {
            key: key.to_string(),
            limit,
        })
    }

    fn delete_limit(&mut self, key: &str) -> Reply {
        validate::key("key", key)?;
        let old = self.overrides.remove(key);
        if let Some(old) = old {
            self.override_sum = self.override_sum.wrapping_sub(entry_hash(&(key, old)));
        }
        Ok(Outcome::LimitDeleted {
            deleted: old.is_some(),
        })
    }

    // ----------------------------------------------------------------------------
    // Limits and policies

    /// A key's effective concurrency limit and where it comes from.
    fn resolve_limit(&self, key: &str) -> (u32, LimitSource) {
        if let Some(l) = self.overrides.get(key) {
            return (*l, LimitSource::Override);
        }
        if let Some(p) = self.concurrency.iter().find(|p| p.matches(key)) {
            return (p.limit, LimitSource::Policy(p.name.clone()));
        }
        (self.settings.default_limit, LimitSource::Default)
    }

    fn validate_policy(&self, policy: &Policy) -> Result<(), CoreError> {
        self.validate_policy_with(policy, &self.settings)
    }

    fn validate_policy_with(&self, policy: &Policy, s: &Settings) -> Result<(), CoreError> {
        match policy {
            Policy::Concurrency { pattern, limit } => {
                validate::pattern(pattern)?;
                validate::limit("limit", *limit, s)
            }
            Policy::Rate(spec) => validate::rate_spec(spec, s),
        }
    }

    /// Insert or replace a named policy. One namespace for both kinds: a name moves
    /// to the new kind. A replaced concurrency policy keeps its match position.
    fn put_policy(&mut self, name: &str, policy: &Policy) {
        match policy {
            Policy::Concurrency { pattern, limit } => {
                self.rate_policies.remove(name);
                let p = ConcurrencyPolicy {
                    name: name.to_string(),
                    pattern: pattern.clone(),
                    limit: *limit,
                };
                match self.concurrency.iter_mut().find(|p| p.name == name) {
                    Some(slot) => *slot = p,
                    None => self.concurrency.push(p),
                }
            }
            Policy::Rate(spec) => {
                self.concurrency.retain(|p| p.name != name);
                self.rate_policies.insert(name.to_string(), *spec);
            }
        }
    }

    fn configure(&mut self, c: &Configuration) -> Reply {
        if self.config_digest == Some(c.source_digest) {
            return Ok(Outcome::Configured { changed: false });
        }
        // Validate everything before touching anything: all or nothing.
        validate::settings(&c.settings)?;
        for (name, policy) in &c.policies {
            validate::name("policy name", name)?;
            self.validate_policy_with(policy, &c.settings)?;
        }
        for (name, m) in &c.tiers {
            validate::name("tier name", name)?;
            validate::multiplier(*m)?;
        }
        self.settings = c.settings;
        self.concurrency.clear();
        self.rate_policies.clear();
        for (name, policy) in &c.policies {
            self.put_policy(name, policy);
        }
        self.tiers = c.tiers.iter().cloned().collect();
        self.config_digest = Some(c.source_digest);
        Ok(Outcome::Configured { changed: true })
    }

    // ----------------------------------------------------------------------------
    // Leases

    /// Remove a lease and every index entry pointing at it.
    fn remove_lease(&mut self, token: u64) -> Option<Lease> {
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
        if let Some(n) = self.owners.get_mut(&*lease.owner) {
            *n -= 1;
            if *n == 0 {
                self.owners.remove(&*lease.owner);
            }
        }
        Some(lease)
    }

    /// Index a lease and store it.
    fn insert_lease(&mut self, token: u64, mut lease: Lease) {
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
    fn intern_and_slot(&mut self, token: u64, lease: &mut Lease) {
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
    fn purge_key(&mut self, key: &str) {
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
    fn used(&self, key: &str) -> u32 {
        let n = self.slots.get(key).map_or(0, |s| {
            s.range_from((self.now_ms.saturating_add(1), 0)).count()
        });
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn slot_usage(&self, key: &str) -> SlotUsage {
        SlotUsage {
            key: key.to_string(),
            used: self.used(key),
            limit: self.resolve_limit(key).0,
        }
    }

    /// The live lease with this id, purging it first if it is dead.
    fn live_token(&mut self, lease_id: &str) -> Option<u64> {
        let token = *self.lease_ids.get(lease_id)?;
        let exp = self.leases.get(&token).map(|l| l.expires_at_ms)?;
        if exp <= self.now_ms {
            self.remove_lease(token);
            return None;
        }
        Some(token)
    }

    /// Refuse a lease op by `caller` on the lease `token` unless the caller owns it
    /// (or is admin).
    fn check_owner(&self, token: u64, caller: &Caller) -> Result<(), CoreError> {
        match self.leases.get(&token) {
            Some(l) if !caller.may_use(&l.owner) => Err(CoreError::Forbidden {
                reason: format!("lease {} belongs to another caller", l.lease_id),
            }),
            _ => Ok(()),
        }
    }

    /// Room for one more lease on `keys`: under `max_leases`, and `keys` adding no
    /// more slot keys than `max_slot_keys` allows. At a cap, first purge a bounded
    /// number of dead leases (they would be purged anyway, and may be all that fills
    /// the state).
    fn room_for_lease(&mut self, keys: &[String]) -> Result<(), CoreError> {
        let over = |st: &Self| {
            let new_keys = keys
                .iter()
                .filter(|k| !st.slots.contains_key(k.as_str()))
                .count();
            let s = &st.settings;
            if st.leases.len() as u64 >= s.max_leases {
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

    fn acquire(&mut self, a: &Acquire, caller: &Caller) -> Reply {
        validate::acquire_keys(&a.keys)?;
        validate::lease_id(&a.lease_id)?;
        validate::holder(&a.holder)?;
        validate::ttl(a.ttl_ms, &self.settings)?;

        // Idempotent retry: the same live lease_id on the same key set returns the
        // original grant (no second slot, same token, same expiry).
        if let Some(token) = self.live_token(&a.lease_id) {
            self.check_owner(token, caller)?;
            return self.regrant(token, a);
        }
        let mut slots = match self.free_slots(&a.keys) {
            Ok(slots) => slots,
            Err(denial) => return Ok(Outcome::Denied(denial)),
        };
        // A denial creates nothing, so the caps are checked only for a grant.
        self.room_for_lease(&a.keys)?;

        self.last_token += 1;
        let token = self.last_token;
        let expires_at_ms = self.now_ms.saturating_add(a.ttl_ms);
        self.insert_lease(
            token,
            Lease {
                lease_id: a.lease_id.as_str().into(),
                holder: a.holder.as_str().into(),
                keys: a.keys.iter().map(|k| Arc::from(k.as_str())).collect(),
                expires_at_ms,
                owner: caller.name.as_str().into(),
            },
        );
        for s in &mut slots {
            s.used += 1;
        }
        Ok(Outcome::Granted(Grant {
            lease_id: a.lease_id.clone(),
            fencing_token: token,
            expires_at_ms,
            slots,
            reused: false,
        }))
    }

    /// The original grant of the live lease `token`, asked for again by `a`; a
    /// conflict if `a` names other keys than the lease holds.
    fn regrant(&self, token: u64, a: &Acquire) -> Reply {
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
    /// grant, or the denial if any key is at its limit (all keys or none).
    fn free_slots(&mut self, keys: &[String]) -> Result<Vec<SlotUsage>, Denial> {
        let mut slots = Vec::with_capacity(keys.len());
        let mut blocked_by = Vec::new();
        let mut retry_after_ms = 0u64;
        for k in keys {
            self.purge_key(k);
            let (limit, _) = self.resolve_limit(k);
            let set = self.slots.get(k.as_str());
            let used = set.map_or(0, SlotSet::len);
            if used >= limit as usize {
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
            return Ok(slots);
        }
        Err(Denial {
            blocked_by,
            slots,
            retry_after_ms: retry_after_ms.clamp(1, self.settings.max_retry_after_ms),
        })
    }

    /// Release is idempotent: unknown, expired or already released → false. Another
    /// caller's live lease is refused (unless the caller is admin).
    fn release(&mut self, lease_id: &str, caller: &Caller) -> Result<bool, CoreError> {
        match self.live_token(lease_id) {
            Some(token) => {
                self.check_owner(token, caller)?;
                Ok(self.remove_lease(token).is_some())
            }
            None => Ok(false),
        }
    }

    fn renew(&mut self, lease_id: &str, ttl_ms: u64, caller: &Caller) -> Reply {
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
    /// scan up to `max_rate_keys` buckets from the cursor, dropping full ones.
    fn expire(&mut self, max_leases: u32, max_rate_keys: u32) -> Outcome {
        let leases = self.purge_dead_leases(max_leases);
        let rate_keys = self.sweep_rate(max_rate_keys);
        Outcome::Expired { leases, rate_keys }
    }

    /// Purge up to `max` dead leases, soonest expiry first; returns how many.
    fn purge_dead_leases(&mut self, max: u32) -> u32 {
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

    /// Examine up to `max_rate_keys` buckets from the cursor and drop the full ones;
    /// returns how many were dropped.
    fn sweep_rate(&mut self, max_rate_keys: u32) -> u32 {
        let now_ns = gcra::now_ns(self.now_ms);
        let mut scanned = 0u32;
        let mut dead = Vec::new();
        let mut last = None;
        {
            let start = self.rate_cursor.clone();
            let iter: Box<dyn Iterator<Item = (&String, &u128)>> = match &start {
                Some(c) => Box::new(self.rate.range::<String, _>((
                    std::ops::Bound::Excluded(c),
                    std::ops::Bound::Unbounded,
                ))),
                None => Box::new(self.rate.iter()),
            };
            for (k, tat) in iter {
                if scanned >= max_rate_keys {
                    break;
                }
                scanned += 1;
                if *tat <= now_ns {
                    dead.push(k.clone());
                }
                last = Some(k.clone());
            }
        }
        // Reaching the end (fewer than the budget left) wraps the cursor around; a
        // zero budget (leases-only housekeeping) leaves it where it was.
        if max_rate_keys > 0 {
            self.rate_cursor = if scanned < max_rate_keys { None } else { last };
        }
        let rate_keys = u32::try_from(dead.len()).unwrap_or(u32::MAX);
        for k in dead {
            if let Some(u) = &mut self.undo {
                u.rate(&k, self.rate.get(&k).copied());
            }
            if let Some(tat) = self.rate.remove(&k) {
                self.rate_sum = self.rate_sum.wrapping_sub(entry_hash(&(&k, tat)));
            }
        }
        rate_keys
    }

    /// Whether `checks` would push the bucket count over `max_rate_keys` (after a
    /// bounded sweep for full buckets, which carry no information). Checked before
    /// deciding: a swept bucket decides exactly like an absent one.
    fn rate_room(&mut self, checks: &[RateCheck]) -> Option<CoreError> {
        let new = |st: &Self| {
            checks
                .iter()
                .filter(|c| !st.rate.contains_key(&c.key))
                .count()
        };
        let max = self.settings.max_rate_keys;
        let over = |st: &Self| {
            let n = new(st);
            n > 0 && (st.rate.len() + n) as u64 > max
        };
        if over(self) {
            self.sweep_rate(ROOM_SWEEP_RATE_KEYS);
        }
        over(self).then(|| CoreError::StateFull {
            cap: "max_rate_keys".into(),
            limit: max,
            what: "rate checks on new keys".into(),
        })
    }

    // ----------------------------------------------------------------------------
    // Rate limits

    /// The effective spec of a check: named policy scaled by tier, or inline.
    fn resolve_rate(&self, r: &RateLimitRef) -> Result<RateSpec, CoreError> {
        match r {
            RateLimitRef::Inline(spec) => {
                validate::rate_spec(spec, &self.settings)?;
                Ok(*spec)
            }
            RateLimitRef::Policy { name, tier } => {
                let spec = *self
                    .rate_policies
                    .get(name)
                    .ok_or_else(|| CoreError::PolicyNotFound { name: name.clone() })?;
                let Some(tier) = tier else {
                    return Ok(spec);
                };
                let m = *self
                    .tiers
                    .get(tier)
                    .ok_or_else(|| CoreError::TierNotFound { name: tier.clone() })?;
                let scale = |v: u32| -> u32 {
                    let scaled = u64::from(v) * u64::from(m) / 1000;
                    u32::try_from(scaled.clamp(1, u64::from(self.settings.max_limit)))
                        .unwrap_or(u32::MAX)
                };
                Ok(RateSpec {
                    limit: scale(spec.limit),
                    period_ms: spec.period_ms,
                    burst: scale(spec.burst),
                })
            }
        }
    }

    /// A rate bucket's stored TAT (`None`: full), for deciding without charging.
    pub(crate) fn rate_bucket(&self, key: &str) -> Option<u128> {
        self.rate.get(key).copied()
    }

    pub(crate) fn rate_check(&mut self, checks: &[RateCheck]) -> Reply {
        if checks.is_empty() {
            return Err(CoreError::invalid(
                "checks",
                "at least one check is required",
            ));
        }
        if checks.len() > validate::MAX_CHECKS {
            return Err(CoreError::invalid(
                "checks",
                format!("at most {} checks per request", validate::MAX_CHECKS),
            ));
        }
        let mut specs = Vec::with_capacity(checks.len());
        for (i, c) in checks.iter().enumerate() {
            validate::key("key", &c.key)?;
            if checks[..i].iter().any(|o| o.key == c.key) {
                return Err(CoreError::invalid(
                    "checks",
                    format!("duplicate key {}", c.key),
                ));
            }
            let spec = self.resolve_rate(&c.limit)?;
            if c.cost == 0 || c.cost > spec.burst {
                return Err(CoreError::invalid(
                    "cost",
                    format!("must be in 1..={} (the burst)", spec.burst),
                ));
            }
            specs.push(spec);
        }

        let full = self.rate_room(checks);
        let now_ns = gcra::now_ns(self.now_ms);
        let decisions: Vec<_> = checks
            .iter()
            .zip(&specs)
            .map(|(c, spec)| {
                let p = gcra::Params::new(spec);
                (
                    gcra::decide(self.rate.get(&c.key).copied(), now_ns, &p, c.cost),
                    p,
                )
            })
            .collect();
        let allowed = decisions.iter().all(|(d, _)| d.allowed);
        // A denial charges (and creates) nothing, so it is answered even at the cap;
        // only a charge that would add buckets beyond it is refused.
        if let (true, Some(e)) = (allowed, full) {
            return Err(e);
        }
        let mut results = Vec::with_capacity(checks.len());
        for ((c, spec), (d, p)) in checks.iter().zip(&specs).zip(&decisions) {
            // All charged or none: when the whole request is denied, the checks that
            // would have passed report their uncharged state.
            let shown = if allowed {
                if let Some(u) = &mut self.undo {
                    u.rate(&c.key, self.rate.get(&c.key).copied());
                }
                // An existing bucket is updated in place: no copy of its key.
                let old = match self.rate.get_mut(&c.key) {
                    Some(tat) => Some(std::mem::replace(tat, d.new_tat)),
                    None => self.rate.insert(c.key.clone(), d.new_tat),
                };
                if let Some(old) = old {
                    self.rate_sum = self.rate_sum.wrapping_sub(entry_hash(&(&c.key, old)));
                }
                self.rate_sum = self.rate_sum.wrapping_add(entry_hash(&(&c.key, d.new_tat)));
                *d
            } else if d.allowed {
                gcra::peek(self.rate.get(&c.key).copied(), now_ns, p)
            } else {
                *d
            };
            results.push(RateResult {
                key: c.key.clone(),
                allowed: d.allowed,
                limit: spec.limit,
                period_ms: spec.period_ms,
                burst: spec.burst,
                remaining: shown.remaining,
                reset_after_ms: shown.reset_after_ms,
                retry_after_ms: shown.retry_after_ms,
            });
        }
        Ok(Outcome::Rate(RateDecision { allowed, results }))
    }

    // ----------------------------------------------------------------------------
    // Queries

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

    fn lease_info(&self, token: u64, lease: &Lease) -> LeaseInfo {
        LeaseInfo {
            lease_id: lease.lease_id.to_string(),
            holder: lease.holder.to_string(),
            owner: lease.owner.to_string(),
            fencing_token: token,
            expires_at_ms: lease.expires_at_ms,
            keys: lease.keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    // ----------------------------------------------------------------------------
    // Snapshots

    /// Serialize the primary data. Deterministic: equal states give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let s = Snapshot {
            version: SNAPSHOT_VERSION,
            now_ms: self.now_ms,
            last_token: self.last_token,
            settings: self.settings,
            config_digest: self.config_digest,
            overrides: Cow::Borrowed(&self.overrides),
            concurrency: Cow::Borrowed(&self.concurrency[..]),
            rate_policies: Cow::Borrowed(&self.rate_policies),
            tiers: Cow::Borrowed(&self.tiers),
            leases: Cow::Borrowed(&self.leases),
            rate: Cow::Borrowed(&self.rate),
            rate_cursor: Cow::Borrowed(&self.rate_cursor),
            seen: Cow::Borrowed(&self.seen),
        };
        // Serializing plain owned data into a Vec cannot fail.
        let mut bytes = bincode::serialize(&s).unwrap_or_default();
        bytes.extend_from_slice(&bincode::serialize(&self.descriptors).unwrap_or_default());
        bytes
    }

    /// Rebuild a state from [`State::snapshot`] bytes (this version's or an earlier
    /// one's), checking its invariants.
    pub fn restore(bytes: &[u8]) -> Result<State, CoreError> {
        use bincode::Options;
        let decode = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(bytes.len() as u64 + 1024);
        let corrupt = |e: bincode::Error| CoreError::CorruptSnapshot(e.to_string());
        // The version is the first field: a fixed-width little-endian u32.
        let version = match bytes.get(..4) {
            Some(v) => u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            None => {
                return Err(CoreError::CorruptSnapshot(
                    "shorter than its version".into(),
                ))
            }
        };
        let mut rest = bytes;
        let mut descriptors = DescriptorTables::default();
        let s: Snapshot = match version {
            2 | SNAPSHOT_VERSION => {
                let s = decode.deserialize_from(&mut rest).map_err(corrupt)?;
                if version == SNAPSHOT_VERSION {
                    descriptors = decode.deserialize_from(&mut rest).map_err(corrupt)?;
                }
                s
            }
            1 => decode
                .deserialize::<v1::Snapshot>(bytes)
                .map_err(corrupt)?
                .upgrade(),
            v => {
                return Err(CoreError::CorruptSnapshot(format!(
                    "unsupported snapshot version {v}"
                )))
            }
        };
        let mut state = State {
            now_ms: s.now_ms,
            last_token: s.last_token,
            settings: s.settings,
            config_digest: s.config_digest,
            overrides: s.overrides.into_owned(),
            concurrency: s.concurrency.into_owned(),
            rate_policies: s.rate_policies.into_owned(),
            tiers: s.tiers.into_owned(),
            leases: BTreeMap::new(),
            rate: s.rate.into_owned(),
            rate_cursor: s.rate_cursor.into_owned(),
            seen: s.seen.into_owned(),
            descriptors,
            lease_sum: 0,
            rate_sum: 0,
            override_sum: 0,
            undo: None,
            cut_seq: 0,
            lease_ids: BTreeMap::new(),
            slots: BTreeMap::new(),
            expiry: BTreeSet::new(),
            owners: BTreeMap::new(),
        };
        state.rate_sum = state.rate.iter().fold(0u64, |acc, (k, tat)| {
            acc.wrapping_add(entry_hash(&(k, *tat)))
        });
        state.override_sum = state
            .overrides
            .iter()
            .fold(0u64, |acc, (k, l)| acc.wrapping_add(entry_hash(&(k, *l))));
        // The lease maps are built from sorted runs, not by inserting one entry at a
        // time: a B-tree grown by inserts in key order (tokens, expiry times) keeps its
        // nodes about half full, while one built from a sorted run fills them, which
        // at a million leases is about 100 MB less (`benches/apply.rs`).
        let leases = s.leases.into_owned();
        let mut built = Vec::with_capacity(leases.len());
        let mut ids = Vec::with_capacity(leases.len());
        let mut expiry = Vec::with_capacity(leases.len());
        for (token, mut lease) in leases {
            if token == 0 || token > state.last_token {
                return Err(CoreError::CorruptSnapshot(format!(
                    "lease token {token} outside 1..={}",
                    state.last_token
                )));
            }
            state.intern_and_slot(token, &mut lease);
            state.lease_sum = state.lease_sum.wrapping_add(entry_hash(&(token, &lease)));
            ids.push((lease.lease_id.clone(), token));
            expiry.push((lease.expires_at_ms, token));
            built.push((token, lease));
        }
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(CoreError::CorruptSnapshot(format!(
                "lease id {} appears twice",
                pair[0].0
            )));
        }
        expiry.sort_unstable();
        state.lease_ids = ids.into_iter().collect();
        state.expiry = expiry.into_iter().collect();
        state.leases = built.into_iter().collect();
        Ok(state)
    }

    /// Hex digest of the state: equal on replicas with equal state.
    ///
    /// The large maps (leases, rate buckets, overrides) enter through sums of
    /// per-entry hashes maintained on every change — a multiset hash, independent of
    /// order and updated in O(1) — and everything else (settings, policies, tiers,
    /// time, counters, cursor, seen nodes) is hashed whole here, being small. So a
    /// `/v1/cluster` poll costs microseconds under the state's read lock instead of
    /// serializing a million leases (0.3–0.7 s, blocking apply). A restored state
    /// recomputes the sums from its contents, so a replica that applied the log and
    /// one restored from a snapshot agree only if every change kept its sum right —
    /// which the golden scripts' `roundtrip` and the property tests check.
    pub fn digest(&self) -> String {
        #[derive(Serialize)]
        struct Small<'a> {
            version: u32,
            now_ms: u64,
            last_token: u64,
            settings: &'a Settings,
            config_digest: Option<u64>,
            concurrency: &'a [ConcurrencyPolicy],
            rate_policies: &'a BTreeMap<String, RateSpec>,
            tiers: &'a BTreeMap<String, u32>,
            rate_cursor: &'a Option<String>,
            seen: &'a BTreeSet<u64>,
            descriptors: &'a DescriptorTables,
            sums: [u64; 3],
            lens: [u64; 3],
        }
        let small = Small {
            version: SNAPSHOT_VERSION,
            now_ms: self.now_ms,
            last_token: self.last_token,
            settings: &self.settings,
            config_digest: self.config_digest,
            concurrency: &self.concurrency,
            rate_policies: &self.rate_policies,
            tiers: &self.tiers,
            rate_cursor: &self.rate_cursor,
            seen: &self.seen,
            descriptors: &self.descriptors,
            sums: [self.lease_sum, self.rate_sum, self.override_sum],
            lens: [
                self.leases.len() as u64,
                self.rate.len() as u64,
                self.overrides.len() as u64,
            ],
        };
        format!("{:016x}", entry_hash(&small))
    }
}

/// The version 1 snapshot layout (before state caps and lease owners), decoded only
/// to upgrade: its settings get the default caps and its leases the system owner
/// `""` (they were acquired before ownership existed, so nobody is locked out).
mod v1 {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::{ConcurrencyPolicy, RateSpec};

    #[derive(Deserialize)]
    struct Settings {
        default_limit: u32,
        max_limit: u32,
        max_ttl_ms: u64,
        max_retry_after_ms: u64,
        max_period_ms: u64,
    }

    #[derive(Deserialize)]
    struct Lease {
        lease_id: String,
        holder: String,
        keys: Vec<String>,
        expires_at_ms: u64,
    }

    #[derive(Deserialize)]
    pub(super) struct Snapshot {
        version: u32,
        now_ms: u64,
        last_token: u64,
        settings: Settings,
        config_digest: Option<u64>,
        overrides: BTreeMap<String, u32>,
        concurrency: Vec<ConcurrencyPolicy>,
        rate_policies: BTreeMap<String, RateSpec>,
        tiers: BTreeMap<String, u32>,
        leases: BTreeMap<u64, Lease>,
        rate: BTreeMap<String, u128>,
        rate_cursor: Option<String>,
    }

    impl Snapshot {
        pub(super) fn upgrade(self) -> super::Snapshot<'static> {
            let s = self.settings;
            let leases = self
                .leases
                .into_iter()
                .map(|(token, l)| {
                    let lease = super::Lease {
                        lease_id: l.lease_id.into(),
                        holder: l.holder.into(),
                        keys: l.keys.into_iter().map(std::sync::Arc::from).collect(),
                        expires_at_ms: l.expires_at_ms,
                        owner: std::sync::Arc::from(""),
                    };
                    (token, lease)
                })
                .collect();
            super::Snapshot {
                version: self.version,
                now_ms: self.now_ms,
                last_token: self.last_token,
                settings: super::Settings {
                    default_limit: s.default_limit,
                    max_limit: s.max_limit,
                    max_ttl_ms: s.max_ttl_ms,
                    max_retry_after_ms: s.max_retry_after_ms,
                    max_period_ms: s.max_period_ms,
                    ..super::Settings::default()
                },
                config_digest: self.config_digest,
                overrides: Cow::Owned(self.overrides),
                concurrency: Cow::Owned(self.concurrency),
                rate_policies: Cow::Owned(self.rate_policies),
                tiers: Cow::Owned(self.tiers),
                leases: Cow::Owned(leases),
                rate: Cow::Owned(self.rate),
                rate_cursor: Cow::Owned(self.rate_cursor),
                // Filled by the leader within a housekeeping interval of the upgrade.
                seen: Cow::Owned(std::collections::BTreeSet::new()),
            }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Acquire;

    /// A key's slot set behaves as the `BTreeSet` it replaces: inline with one entry,
    /// a set from two, inline again at one, and "empty" exactly when the last goes.
    #[test]
    fn slot_sets_grow_and_shrink_like_ordered_sets() {
        let mut s = SlotSet::One((20, 2));
        s.insert((20, 2));
        assert_eq!(
            s,
            SlotSet::One((20, 2)),
            "inserting the same entry is a no-op"
        );
        s.insert((10, 1));
        s.insert((30, 3));
        assert!(matches!(s, SlotSet::Many(_)));
        assert_eq!((s.len(), s.first()), (3, Some((10, 1))));
        let from: Vec<_> = s.range_from((20, 0)).collect();
        assert_eq!(from, vec![(20, 2), (30, 3)]);
        assert!(!s.remove(&(10, 1)));
        assert!(
            !s.remove(&(99, 9)),
            "removing an absent entry changes nothing"
        );
        assert!(!s.remove(&(20, 2)));
        assert_eq!(s, SlotSet::One((30, 3)));
        assert_eq!(s.range_from((31, 0)).count(), 0);
        assert_eq!(s.range_from((30, 3)).count(), 1);
        assert!(!s.remove(&(20, 2)));
        assert!(
            s.remove(&(30, 3)),
            "the last entry gone: the key is dropped"
        );
    }

    /// Every lease of one caller shares one owner allocation, the count follows the
    /// live leases, and a restored state interns the same way.
    #[test]
    fn lease_owners_are_interned_and_counted() {
        let acquire = |id: &str, who: &str| Op::As {
            caller: Caller {
                name: who.into(),
                admin: false,
            },
            op: Box::new(Op::Acquire(Acquire {
                keys: vec![format!("k:{id}")],
                lease_id: id.into(),
                holder: String::new(),
                ttl_ms: 60_000,
            })),
        };
        let release = |id: &str, who: &str| Op::As {
            caller: Caller {
                name: who.into(),
                admin: false,
            },
            op: Box::new(Op::Release {
                lease_id: id.into(),
            }),
        };
        let mut s = State::new();
        let ops = vec![
            acquire("a", "svc"),
            acquire("b", "svc"),
            acquire("c", "cron"),
        ];
        let replies = s.apply(&Command { time_ms: 10, ops });
        assert!(
            replies.iter().all(|r| matches!(r, Ok(Outcome::Granted(_)))),
            "{replies:?}"
        );
        let owner = |s: &State, id: &str| s.leases[&s.lease_ids[id]].owner.clone();
        assert!(Arc::ptr_eq(&owner(&s, "a"), &owner(&s, "b")));
        let counts = |s: &State| -> Vec<(String, u64)> {
            s.owners.iter().map(|(k, n)| (k.to_string(), *n)).collect()
        };
        assert_eq!(counts(&s), [("cron".into(), 1), ("svc".into(), 2)]);

        let restored = State::restore(&s.snapshot()).unwrap();
        assert!(Arc::ptr_eq(&owner(&restored, "a"), &owner(&restored, "b")));
        assert_eq!(counts(&restored), counts(&s));

        let ops = vec![release("a", "svc"), release("c", "cron")];
        s.apply(&Command { time_ms: 20, ops });
        assert_eq!(counts(&s), [("svc".into(), 1)]);
        s.apply(&Command::single(30, release("b", "svc")));
        assert!(s.owners.is_empty());
    }

    /// Regression: an index entry whose lease is missing (seen once on a data dir left
    /// by a mutation-testing build that repeated tokens) made `purge_key` spin forever
    /// under the state machine's write lock. It must be dropped instead.
    #[test]
    fn an_orphaned_index_entry_is_dropped_not_spun_on() {
        let mut s = State::new();
        s.slots.insert("k".into(), SlotSet::One((5, 99)));
        s.expiry.insert((5, 99));
        let replies = s.apply(&Command::single(
            10,
            Op::Acquire(Acquire {
                keys: vec!["k".into()],
                lease_id: "a".into(),
                holder: String::new(),
                ttl_ms: 1000,
            }),
        ));
        assert!(matches!(replies[0], Ok(Outcome::Granted(_))), "{replies:?}");
        assert_eq!(s.slots["k"].len(), 1, "only the new lease is indexed");
    }

    /// A snapshot written by the version before caps and owners (bytes produced by
    /// that code, checked in) restores: same leases, limits, policies and buckets,
    /// default caps, system-owned leases — and it re-snapshots in the new format.
    #[test]
    fn a_version_1_snapshot_restores_with_defaults() {
        let hex = include_str!("../tests/fixtures/snapshot_v1.hex").trim();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(&bytes[..4], &1u32.to_le_bytes());
        let mut s = State::restore(&bytes).unwrap();
        assert_eq!(s.settings().default_limit, 5);
        assert_eq!(s.settings().max_leases, Settings::default().max_leases);
        assert_eq!(
            s.settings().max_rate_keys,
            Settings::default().max_rate_keys
        );
        assert_eq!(s.policies_digest(), Some(7));
        let st = s.stats();
        assert_eq!((st.leases, st.slot_keys, st.rate_keys), (2, 3, 1));
        assert_eq!((st.overrides, st.policies, st.last_token), (1, 1, 2));
        let usage = s
            .query(
                &Query::Usage {
                    key: "org:a".into(),
                },
                2000,
            )
            .unwrap();
        let Outcome::Usage(u) = usage else {
            panic!("{usage:?}")
        };
        assert_eq!((u.used, u.limit), (1, 3));
        assert_eq!(u.leases[0].lease_id, "L1");
        assert_eq!(u.leases[0].owner, "");
        // A lease from before ownership is the system's: a client may not take it
        // over, an admin (or open mode) may.
        let client = Caller {
            name: "svc".into(),
            admin: false,
        };
        let release = |c: Caller| {
            Op::Release {
                lease_id: "L2".into(),
            }
            .by(c)
        };
        let r = s.apply(&Command::single(2001, release(client)));
        assert!(matches!(r[0], Err(CoreError::Forbidden { .. })), "{r:?}");
        let again = State::restore(&s.snapshot()).unwrap();
        assert_eq!(again.digest(), s.digest());
        let r = s.apply(&Command::single(2002, release(Caller::system())));
        assert_eq!(r[0], Ok(Outcome::Released { released: true }));
    }

    #[test]
    fn unknown_snapshot_versions_are_refused() {
        let mut bytes = State::new().snapshot();
        bytes[..4].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(
            State::restore(&bytes),
            Err(CoreError::CorruptSnapshot(m)) if m.contains("version 4")
        ));
        assert!(State::restore(&[2, 0]).is_err());
    }

    /// An op carries at most one caller: a wrapped wrapper could otherwise let the
    /// outer (say, a forwarding node's system identity) vouch for the inner.
    #[test]
    fn nested_callers_are_refused() {
        let mut s = State::new();
        let op = Op::SetLimit {
            key: "k".into(),
            limit: 3,
        }
        .by(Caller {
            name: "svc".into(),
            admin: false,
        })
        .by(Caller::system());
        let r = s.apply(&Command::single(1, op));
        assert!(
            matches!(&r[0], Err(CoreError::Invalid { field, .. }) if field == "op"),
            "{r:?}"
        );
        assert_eq!(s.stats().overrides, 0);
    }
}

#[cfg(test)]
mod seen_tests {
    use super::*;
    use crate::command::{Caller, Command};

    #[test]
    fn mark_seen_is_recorded_kept_in_snapshots_and_system_only() {
        let mut s = State::new();
        let r = s.apply(&Command::single(5, Op::MarkSeen { nodes: vec![1, 3] }));
        assert_eq!(r, vec![Ok(Outcome::Noop)]);
        assert_eq!(s.seen().iter().copied().collect::<Vec<_>>(), vec![1, 3]);
        let back = State::restore(&s.snapshot()).unwrap();
        assert_eq!(back.seen(), s.seen());
        assert_eq!(back.digest(), s.digest());
        let client = Caller {
            name: "svc".into(),
            admin: false,
        };
        let r = s.apply(&Command::single(
            6,
            Op::As {
                caller: client,
                op: Box::new(Op::MarkSeen { nodes: vec![2] }),
            },
        ));
        assert!(r[0].is_err(), "{r:?}");
        assert!(!s.seen().contains(&2));
        s.apply(&Command::single(7, Op::ForgetSeen { nodes: vec![1] }));
        assert_eq!(s.seen().iter().copied().collect::<Vec<_>>(), vec![3]);
    }

    /// The incremental digest follows every change and agrees with a restored copy.
    #[test]
    fn the_digest_tracks_every_change_and_survives_restore() {
        let mut s = State::new();
        let mut seen_digests = std::collections::BTreeSet::new();
        let ops = [
            Op::SetLimit {
                key: "k".into(),
                limit: 3,
            },
            Op::Acquire(crate::command::Acquire {
                keys: vec!["k".into()],
                lease_id: "a".into(),
                holder: String::new(),
                ttl_ms: 1000,
            }),
            Op::Renew {
                lease_id: "a".into(),
                ttl_ms: 5000,
            },
            Op::RateCheck {
                checks: vec![crate::command::RateCheck {
                    key: "r".into(),
                    cost: 1,
                    limit: crate::command::RateLimitRef::Inline(crate::command::RateSpec {
                        limit: 5,
                        period_ms: 1000,
                        burst: 5,
                    }),
                }],
            },
            Op::Release {
                lease_id: "a".into(),
            },
            Op::DeleteLimit { key: "k".into() },
        ];
        assert!(seen_digests.insert(s.digest()));
        for (i, op) in ops.into_iter().enumerate() {
            s.apply(&Command::single(10 + i as u64, op));
            assert!(
                seen_digests.insert(s.digest()),
                "step {i} left the digest unchanged"
            );
            let back = State::restore(&s.snapshot()).unwrap();
            assert_eq!(back.digest(), s.digest(), "step {i}");
        }
    }
}
