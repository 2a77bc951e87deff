//! # quorate-core: the limiter as a pure state machine
//!
//! Everything quorate promises — never more grants than a key's limit, an exact
//! Retry-After, limits that are never stale — is decided here, in
//! [`State::apply`]. Every node of the cluster applies the same Raft log, in the same
//! order, to its own copy of [`State`]; because `apply` is a pure, deterministic
//! function of (state, command), the copies agree by construction and almost all
//! behaviour can be tested without a network.
//!
//! The contract:
//! - **No hidden inputs.** Time arrives inside each [`Command`] (stamped by the leader);
//!   lease ids, TTLs and limits arrive inside each [`Op`]. There is no clock, no random
//!   source, no I/O and no hash-map iteration order anywhere in this crate (all maps
//!   are `BTreeMap`), so snapshots are byte-for-byte reproducible.
//! - **Time never runs backwards**: `now = max(now, command.time_ms)`.
//! - **Total**: every input gets an [`Outcome`] or a deterministic [`CoreError`]; no
//!   input panics. A rejected op changes nothing (except time).
//! - **Bounded**: leases (with the waiting acquires, which will become leases), slot
//!   keys and rate buckets are capped by [`Settings`] (`max_leases`, `max_slot_keys`,
//!   `max_rate_keys`); an op that would create one more gets [`CoreError::StateFull`],
//!   so no caller can grow every replica's memory without limit.
//! - **Callers are inside ops**: [`Op::As`] carries the caller's name and role; the
//!   core refuses ops the role may not do and lease ops on another caller's lease.
//! - **Reads are separate**: [`Query`] answers never enter the log; the server asks
//!   them after a linearizable read barrier.
//!
//! Modules: [`command`] (what the log carries), [`outcome`] (what apply returns),
//! [`state`] (the machine: one file per job, snapshot bytes in `state/encoding`, the
//! chunked snapshot writer re-exported as [`cut`]), [`gcra`] (rate arithmetic),
//! [`validate`] (input rules),
//! [`descriptors`] (Envoy rate limit descriptors), [`error`].

pub mod command;
mod descriptor_table;
pub mod descriptors;
pub mod error;
pub mod gcra;
pub mod outcome;
pub mod state;
pub mod validate;

pub use state::cut;

pub use command::{
    Acquire, AdminLimits, AllowEntry, AllowPattern, Caller, Command, Configuration, Mode,
    ModedConfiguration, Op, Policy, Query, RateCheck, RateLimitRef, RateSpec, Settings,
};
pub use cut::SnapshotCut;
pub use error::CoreError;
pub use outcome::{
    Allowlisted, CounterInfo, Denial, Grant, LeaseInfo, LimitInfo, LimitSource, Outcome,
    PoliciesView, QueuePosition, QueueView, Queued, RateDecision, RateResult, Reply, ShadowDenial,
    SlotUsage, Usage, WaiterInfo,
};
pub use state::{glob_matches, key_addr, AuditRecord, State, Stats};
