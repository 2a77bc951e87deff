//! The limiter state machine.
//!
//! [`State`] holds every live lease, every per-key override, the policies and tiers,
//! the Envoy descriptor tables and one GCRA timestamp per active rate bucket.
//! [`State::apply`] is the only way to change it; [`State::query`] answers reads
//! without changing it.
//!
//! The data is declared here, in one place; the code that acts on it is split by job,
//! one `impl State` block per module (as toydb's `raft/node.rs` keeps one block per
//! role):
//! - `dispatch`: [`State::apply`] — time, the caller's role, one op to its module;
//! - `leases`: acquire, release, renew, housekeeping;
//! - `slots`: the per-key lease index, the only code that adds or removes a lease;
//! - `rate`: GCRA checks and the bucket sweep;
//! - `counters`: integers with an expiry (the `limits` storage's fixed windows);
//! - `policy`: overrides, policies, tiers, configuration, limit resolution;
//! - `caps`: the state caps and lease ownership checks;
//! - `shadow`: policy modes (shadow policies decide and charge, but do not deny);
//! - `allowlist`: keys and addresses exempt from rate limits;
//! - `audit`: the ring of the last admin changes (who, when, index, before/after);
//! - `queue`: acquires waiting for a slot, FIFO per key, granted as slots free;
//! - `queries`: reads at a given time, from a shared borrow;
//! - `digest`: the replica fingerprint, kept up to date incrementally;
//! - `encoding`: snapshot bytes (and older layouts, and the chunked [`cut`]) apart
//!   from the data they encode.
//!
//! Descriptor requests (`crate::descriptors`) are another `impl State` block, beside
//! their table types.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::command::{AdminLimits, AllowEntry, RateSpec, Settings};
use crate::descriptor_table::DescriptorTables;

mod allowlist;
mod audit;
mod caps;
mod counters;
mod digest;
mod dispatch;
pub(crate) mod encoding;
mod leases;
mod policy;
mod queries;
mod queue;
mod rate;
mod shadow;
mod slots;
#[cfg(test)]
mod tests;

pub use allowlist::{canonical_entry, glob_matches, key_addr};
pub use audit::{AuditRecord, OPEN_CALLER, SYSTEM_CALLER};
use counters::Counter;
pub use digest::fnv1a;
pub use encoding::cut;
pub(crate) use encoding::cut::UndoLog;
use leases::Lease;
use policy::ConcurrencyPolicy;
use slots::SlotSet;

/// Counts of what the state holds (for metrics and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub leases: usize,
    pub slot_keys: usize,
    pub rate_keys: usize,
    /// Counters in the map (live, or expired and not yet swept).
    pub counters: usize,
    pub overrides: usize,
    pub policies: usize,
    pub last_token: u64,
    /// Acquires waiting in the queue (`queue.rs`).
    pub waiters: usize,
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
    /// Names of the policies in shadow mode (`shadow.rs`); a version 4 section.
    pub(crate) shadow: BTreeSet<String>,
    /// Counters by key (`counters.rs`); a version 4 section.
    pub(crate) counters: BTreeMap<String, Counter>,
    /// Allowlist entries (`allowlist.rs`); a version 4 section.
    pub(crate) allow: BTreeSet<AllowEntry>,
    /// Bounds of the allowlist and the audit ring; a section when not the defaults.
    pub(crate) admin_limits: AdminLimits,
    /// The last admin changes, oldest first (`audit.rs`); a version 4 section.
    pub(crate) audit: VecDeque<audit::AuditRecord>,
    /// Waiting acquires (`queue.rs`): the waiters are a version 4 section, their
    /// indexes and the grants not yet taken are derived.
    pub(crate) queue: queue::Queue,
    // --- derived (rebuilt on restore) ---
    /// Wrapping sums of per-entry hashes of `leases`, `rate` and `overrides`, kept up
    /// to date on every insert and removal, so [`State::digest`] costs the same at a
    /// million leases as at ten (see `digest`).
    lease_sum: u64,
    rate_sum: u64,
    override_sum: u64,
    /// Wrapping sum of per-counter hashes (like `rate_sum`).
    counter_sum: u64,
    /// (expires_at_ms, key) of every counter: the sweep takes the front.
    counter_expiry: BTreeSet<(u64, String)>,
    /// The undo log of an open snapshot cut (`encoding/cut.rs`), and the last cut's number.
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
    /// Wrapping sum of the audit records' hashes (see `digest`).
    audit_sum: u64,
    /// Log index of the entry being applied (an input, set by [`State::apply_at`]).
    log_index: u64,
    /// `allow` parsed, in the set's order.
    allow_index: Vec<(AllowEntry, allowlist::Matcher)>,
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
            counters: self.counters.len(),
            overrides: self.overrides.len(),
            policies: self.concurrency.len() + self.rate_policies.len(),
            last_token: self.last_token,
            waiters: self.queue.len(),
        }
    }
}
