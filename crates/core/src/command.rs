//! Commands: what the Raft log carries.
//!
//! A [`Command`] is one log entry: the leader's wall-clock time and a batch of [`Op`]s
//! that arrived while the previous entry was being written. Batching is how many client
//! requests share one disk flush (openraft 0.9 flushes every entry separately). The
//! state machine applies the ops in order and returns one reply per op.
//!
//! Everything a decision depends on travels inside the command: time, lease ids, TTLs,
//! inline rate limits. Nothing is read from a clock, a random source or the node's own
//! configuration at apply time; that is what makes every replica agree.

use serde::{Deserialize, Serialize};

use crate::descriptor_table::{DescriptorConfig, DescriptorRequest};

/// One replicated log entry's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Unix milliseconds, stamped by the leader that proposed the entry. The state
    /// machine keeps `now = max(now, time_ms)`, so time never runs backwards even when a
    /// new leader's clock is behind the old one's.
    pub time_ms: u64,
    pub ops: Vec<Op>,
}

impl Command {
    pub fn new(time_ms: u64, ops: Vec<Op>) -> Self {
        Self { time_ms, ops }
    }

    /// A command with a single op.
    pub fn single(time_ms: u64, op: Op) -> Self {
        Self::new(time_ms, vec![op])
    }
}

/// A state-changing operation. Reads are [`crate::Query`]s and never enter the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Take one slot on every key, or none (all-or-nothing). Denied while anyone
    /// waits in the queue of one of its keys (no barging: `state/queue.rs`).
    Acquire(Acquire),
    /// Give a lease's slots back. Idempotent.
    Release { lease_id: String },
    /// Extend a live lease to `now + ttl_ms`.
    Renew { lease_id: String, ttl_ms: u64 },
    /// Housekeeping proposed periodically by the leader: purge up to `max_leases` dead
    /// leases and examine up to `max_rate_keys` rate buckets, dropping those that are
    /// full again (they carry no information), and drop up to `max_rate_keys` expired
    /// counters (counted with the buckets in the reply). Also advances time.
    Expire { max_leases: u32, max_rate_keys: u32 },
    /// Set a per-key concurrency limit override.
    SetLimit { key: String, limit: u32 },
    /// Remove a per-key override (the key falls back to policy or default).
    DeleteLimit { key: String },
    /// One or more rate checks, charged all together or not at all.
    RateCheck { checks: Vec<RateCheck> },
    /// Create or replace a named policy.
    PutPolicy { name: String, policy: Policy },
    /// Delete a named policy.
    DeletePolicy { name: String },
    /// Create or replace a tier multiplier, in thousandths (2000 = ×2).
    PutTier { name: String, multiplier_milli: u32 },
    /// Delete a tier.
    DeleteTier { name: String },
    /// Replace settings, policies and tiers wholesale with what the operator's
    /// `cluster.toml` says, unless the state already holds a configuration with the same
    /// `source_digest` (so a restart does not undo runtime policy changes; editing the
    /// file does).
    Configure(Box<Configuration>),
    /// Does nothing but advance time (used to commit a leader's first entry).
    Noop,
    /// `op` submitted on behalf of an API caller. The core checks the caller's role
    /// against the op ([`Op::needs_admin`]) and, for lease ops, that the caller owns the
    /// lease; the caller's name becomes the owner of a lease it acquires. Because the
    /// identity travels inside the op, every replica makes the same decision and a
    /// forwarded op carries the role the receiving node authenticated.
    ///
    /// An op without this wrapper is the system's own (housekeeping, configuration,
    /// entries written before ownership existed): it acts as owner `""` with admin
    /// rights, exactly as every op did before. It is appended as the last variant so
    /// that log entries written by earlier versions still decode.
    As { caller: Caller, op: Box<Op> },
    /// The leader's record that these nodes have acknowledged log entries (so hold
    /// data). A node that later starts with an empty data directory while the state
    /// lists it has lost its data and must not rejoin as the same voter (see the
    /// server's `raft/rejoin.rs`). System-only; idempotent.
    MarkSeen { nodes: Vec<u64> },
    /// Forget that these nodes held data: they were removed from the cluster, and may
    /// come back empty as new members (the replace procedure). System-only.
    ForgetSeen { nodes: Vec<u64> },
    /// Replace the Envoy descriptor tables with the operator's (`[envoy]` in
    /// `cluster.toml`), unless the same `source_digest` is installed; see
    /// [`crate::descriptors`]. Appended after the older variants so their log entries
    /// still decode.
    ConfigureDescriptors(Box<DescriptorConfig>),
    /// One Envoy `ShouldRateLimit` call: resolve its descriptors against the
    /// replicated tables and charge every limited one or none ([`crate::descriptors`]).
    Descriptors(Box<DescriptorRequest>),
    /// Switch a named policy between enforcing and shadow mode ([`Mode`]). The mode
    /// belongs to the policy: replacing the policy keeps it, deleting it drops it.
    /// Appended after the older variants, like every new op: an older node cannot
    /// decode it, so it is written only once every node runs this version.
    SetPolicyMode { name: String, mode: Mode },
    /// [`Op::Configure`] with the policies the operator's file puts in shadow mode.
    /// The server sends it instead of `Configure` only when the file names a shadow
    /// policy, so a cluster that uses no shadow policy keeps writing `Configure`.
    ConfigureModes(Box<ModedConfiguration>),
    /// Add `amount` to the counter `key`, creating it with value `amount` and expiry
    /// `now + expiry_ms` (cluster time: the command's) if it is absent or expired; a
    /// live counter keeps its expiry. The fixed-window counter of the Python `limits`
    /// storage (`state/counters.rs`). Appended after the older variants.
    CounterIncr {
        key: String,
        amount: u32,
        expiry_ms: u64,
    },
    /// Remove the counter `key` (live or expired). Idempotent.
    CounterClear { key: String },
    /// Add an allowlist entry ([`AllowEntry`]): checks it matches are allowed without
    /// being charged (`state/allowlist.rs`). Idempotent; bounded by
    /// [`AdminLimits::max_allowlist`].
    Allow(AllowEntry),
    /// Remove an allowlist entry. Idempotent.
    Disallow(AllowEntry),
    /// Replace the bounds of the admin records ([`AdminLimits`]), from `[limits]` in
    /// `cluster.toml`. An op of its own, not fields of [`Settings`], so that older
    /// `Configure` entries still decode; the server proposes it only when the file's
    /// values differ from the state's.
    SetAdminLimits(AdminLimits),
    /// [`Op::Acquire`] that waits: with no room (or with earlier waiters on any of its
    /// keys: no barging) the acquire joins a FIFO queue on each of its keys until
    /// `now + wait_ms` (cluster time), and is granted by a later apply when slots
    /// free (`state/queue.rs`). With room and nobody waiting it is granted at once,
    /// exactly as `Acquire`. Idempotent by `lease_id`: a retry keeps the waiter's
    /// place (and moves its deadline to the retry's), or returns its grant.
    /// Appended after the older variants.
    AcquireWait { acquire: Acquire, wait_ms: u64 },
    /// Take `lease_id` out of the queues (its waiter's deadline passed on the
    /// serving node, or its client went away). Settles the race with a grant: the
    /// answer says whether it was still waiting or was granted meanwhile. Idempotent.
    LeaveQueue { lease_id: String },
}

impl Op {
    /// True when only an admin caller may submit this op: everything that changes
    /// limits, policies, tiers or settings (and the leader's own housekeeping).
    /// Acquire, release, renew, rate checks and counters are what a client may do.
    pub fn needs_admin(&self) -> bool {
        match self {
            Op::Acquire(_)
            | Op::Release { .. }
            | Op::Renew { .. }
            | Op::RateCheck { .. }
            | Op::Descriptors(_)
            | Op::CounterIncr { .. }
            | Op::CounterClear { .. }
            | Op::AcquireWait { .. }
            | Op::LeaveQueue { .. } => false,
            Op::Expire { .. }
            | Op::SetLimit { .. }
            | Op::DeleteLimit { .. }
            | Op::PutPolicy { .. }
            | Op::DeletePolicy { .. }
            | Op::PutTier { .. }
            | Op::DeleteTier { .. }
            | Op::Configure(_)
            | Op::MarkSeen { .. }
            | Op::ForgetSeen { .. }
            | Op::ConfigureDescriptors(_)
            | Op::SetPolicyMode { .. }
            | Op::ConfigureModes(_)
            | Op::Allow(_)
            | Op::Disallow(_)
            | Op::SetAdminLimits(_)
            | Op::Noop => true,
            Op::As { op, .. } => op.needs_admin(),
        }
    }

    /// A short stable name of the op's kind (`"set_limit"`), for messages and labels.
    pub fn kind(&self) -> &'static str {
        match self.inner() {
            Op::Acquire(_) => "acquire",
            Op::Release { .. } => "release",
            Op::Renew { .. } => "renew",
            Op::Expire { .. } => "expire",
            Op::SetLimit { .. } => "set_limit",
            Op::DeleteLimit { .. } => "delete_limit",
            Op::RateCheck { .. } => "rate_check",
            Op::PutPolicy { .. } => "put_policy",
            Op::DeletePolicy { .. } => "delete_policy",
            Op::PutTier { .. } => "put_tier",
            Op::DeleteTier { .. } => "delete_tier",
            Op::Configure(_) => "configure",
            Op::Noop => "noop",
            Op::As { .. } => "as",
            Op::MarkSeen { .. } => "mark_seen",
            Op::ForgetSeen { .. } => "forget_seen",
            Op::ConfigureDescriptors(_) => "configure_descriptors",
            Op::Descriptors(_) => "descriptors",
            Op::SetPolicyMode { .. } => "set_policy_mode",
            Op::ConfigureModes(_) => "configure_modes",
            Op::CounterIncr { .. } => "counter_incr",
            Op::CounterClear { .. } => "counter_clear",
            Op::Allow(_) => "allow",
            Op::Disallow(_) => "disallow",
            Op::SetAdminLimits(_) => "set_admin_limits",
            Op::AcquireWait { .. } => "acquire_wait",
            Op::LeaveQueue { .. } => "leave_queue",
        }
    }

    /// The op itself, without its [`Op::As`] wrapper (for labels and routing).
    pub fn inner(&self) -> &Op {
        match self {
            Op::As { op, .. } => op.inner(),
            op => op,
        }
    }

    /// `self` on behalf of `caller`.
    pub fn by(self, caller: Caller) -> Op {
        Op::As {
            caller,
            op: Box::new(self),
        }
    }
}

/// Who submitted an op: the API token's name and whether its role is admin. In open
/// mode (no tokens configured) every caller is `Caller::system()`: name `""`, admin.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Caller {
    pub name: String,
    pub admin: bool,
}

impl Caller {
    /// The identity of ops without an [`Op::As`] wrapper, and of every caller in open
    /// mode: the empty owner, with admin rights.
    pub fn system() -> Self {
        Self {
            name: String::new(),
            admin: true,
        }
    }

    /// May this caller submit `op`? Admin ops need an admin; everything else any
    /// caller may ask. The one statement of the rule: the leader checks it before
    /// proposing a forwarded op, the state machine again when it applies one.
    pub fn may(&self, op: &Op) -> bool {
        self.admin || !op.needs_admin()
    }

    /// May this caller touch a lease owned by `owner`?
    pub fn may_use(&self, owner: &str) -> bool {
        self.admin || self.name == owner
    }
}

/// Arguments of [`Op::Acquire`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquire {
    /// 1..=8 distinct keys, e.g. `["org:acme", "global"]`.
    pub keys: Vec<String>,
    /// Idempotency key: a retry with the same live lease_id returns the first grant.
    pub lease_id: String,
    /// Free text shown in usage listings.
    pub holder: String,
    pub ttl_ms: u64,
}

/// One rate check inside [`Op::RateCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCheck {
    /// The bucket. One key is one bucket whatever limit is used to check it, so scope
    /// your keys (`ws:msg:user:42`, `http:ip:203.0.113.9`).
    pub key: String,
    pub cost: u32,
    pub limit: RateLimitRef,
}

/// Where a rate check's limit comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimitRef {
    /// A named rate policy, optionally scaled by a tier.
    Policy { name: String, tier: Option<String> },
    /// Limit given in the request itself.
    Inline(RateSpec),
}

/// `limit` requests per `period_ms`, with a bucket of `burst` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSpec {
    pub limit: u32,
    pub period_ms: u64,
    pub burst: u32,
}

/// A named policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    /// Concurrency limit for keys matching `pattern`: an exact key, or a prefix ending
    /// in `*` (`org:*`), or `*` alone. Concurrency policies are matched in the order
    /// they were first created; the first match wins.
    Concurrency { pattern: String, limit: u32 },
    /// A rate limit referenced by name from rate checks.
    Rate(RateSpec),
}

/// Cluster-wide settings that decisions depend on. Replicated, so every node decides
/// with the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Concurrency limit of a key with no override and no matching policy.
    pub default_limit: u32,
    /// Largest limit an override, policy or rate spec may set.
    pub max_limit: u32,
    /// Largest lease TTL an acquire or renew may ask for.
    pub max_ttl_ms: u64,
    /// Cap on the retry hint of a denied acquire.
    pub max_retry_after_ms: u64,
    /// Longest rate period a policy or inline check may use.
    pub max_period_ms: u64,
    /// Most leases the state holds (live, or dead and not yet purged). An acquire that
    /// would create one more is refused with [`crate::CoreError::StateFull`].
    pub max_leases: u64,
    /// Most distinct keys with leases on them.
    pub max_slot_keys: u64,
    /// Most rate buckets (keys whose bucket is not full) and counters
    /// ([`Op::CounterIncr`]) together.
    pub max_rate_keys: u64,
}

/// Default state caps, sized for about 1 GiB of replicated state per node with
/// typical shapes. Measured (allocator bytes, this code): a lease on one short key
/// with a uuid lease id costs ≈ 730 B (lease, id index, expiry index, slot entry),
/// each further key ≈ 340 B; a rate bucket on a short key ≈ 93 B. So 1M one-key
/// leases ≈ 730 MB plus 4M buckets ≈ 370 MB. The worst shapes the validation allows
/// (8 keys of 256 B, 128-B ids, 256-B holders, 256-B rate keys) cost ≈ 3.2 KB per
/// lease on known keys, ≈ 360 B per slot key and ≈ 335 B per bucket: ≈ 5 GB at these
/// caps. Nodes with less memory should lower them in `cluster.toml` `[limits]`.
/// Building a snapshot briefly holds a serialized copy as well.
pub const DEFAULT_MAX_LEASES: u64 = 1_000_000;
/// See [`DEFAULT_MAX_LEASES`].
pub const DEFAULT_MAX_SLOT_KEYS: u64 = 1_000_000;
/// See [`DEFAULT_MAX_LEASES`].
pub const DEFAULT_MAX_RATE_KEYS: u64 = 4_000_000;

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_limit: 10,
            max_limit: 1_000_000,
            max_ttl_ms: 24 * 3600 * 1000,
            max_retry_after_ms: 60_000,
            max_period_ms: 7 * 24 * 3600 * 1000,
            max_leases: DEFAULT_MAX_LEASES,
            max_slot_keys: DEFAULT_MAX_SLOT_KEYS,
            max_rate_keys: DEFAULT_MAX_RATE_KEYS,
        }
    }
}

/// What [`Op::Configure`] installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// Identifies the operator's file content; equal digests are not re-applied.
    pub source_digest: u64,
    pub settings: Settings,
    /// Policies in match order (for concurrency policies).
    pub policies: Vec<(String, Policy)>,
    /// Tier name → multiplier in thousandths.
    pub tiers: Vec<(String, u32)>,
}

/// How a policy's denials are answered.
///
/// A policy in `Shadow` mode is decided and charged exactly as when enforced, but a
/// request it alone would deny is allowed, and the answer says which policy would
/// have denied it (envoyproxy/ratelimit's `shadow_mode`): the way to roll out a new
/// limit without switching it on blind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// What [`Op::ConfigureModes`] installs: a configuration, and the names of its
/// policies that run in shadow mode (every other policy enforces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModedConfiguration {
    pub config: Configuration,
    pub shadow: Vec<String>,
}

/// Read-only questions, answered from a replica's state after a linearizable read
/// barrier. They never enter the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// A key's used/limit and its live leases.
    Usage { key: String },
    /// A key's effective concurrency limit and where it comes from.
    Limit { key: String },
    /// Overrides and keys in use whose name starts with `prefix`, at most `max` rows.
    Limits { prefix: String, max: u32 },
    /// Settings, policies and tiers.
    Policies,
    /// One lease by id.
    Lease { lease_id: String },
    /// The names of the policies in shadow mode, sorted. A query of its own (not a
    /// field of [`Query::Policies`]) so that the answer to `Policies` keeps the
    /// layout older nodes decode.
    PolicyModes,
    /// A counter's value and expiry ([`Op::CounterIncr`]); an expired or absent
    /// counter reads as 0 with no expiry.
    Counter { key: String },
    /// The allowlist, sorted, and its bound.
    Allowlist,
    /// Audit records with a log index above `since` whose key starts with `prefix`,
    /// oldest first, at most `max`.
    Audit {
        since: u64,
        prefix: String,
        max: u32,
    },
    /// The FIFO queue of waiters on one key ([`Op::AcquireWait`]), first first.
    Queue { key: String },
}

/// One allowlist entry: what it matches, and which policy it exempts from.
///
/// Ordered (policy, then pattern) so the allowlist is a sorted set and its snapshot
/// section the same bytes on every replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllowEntry {
    /// The named policy whose checks the entry exempts, or `None` for every check
    /// (global: every policy, inline limits and Envoy descriptors).
    pub policy: Option<String>,
    pub pattern: AllowPattern,
}

/// What an allowlist entry matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AllowPattern {
    /// A key glob: `*` stands for any run of characters (`user:admin-*`,
    /// `*:203.0.113.9`); every other character matches itself.
    Key(String),
    /// An IPv4 or IPv6 address or CIDR (`203.0.113.9`, `10.0.0.0/8`,
    /// `2001:db8::/32`), matched against the address a key ends with (see
    /// `state/allowlist.rs`). Stored in canonical form: the network address and its
    /// prefix length (`10.0.0.0/8`; `/32` and `/128` for a single address).
    Ip(String),
}

/// Bounds of the admin records, replicated beside (not inside) [`Settings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminLimits {
    /// Most allowlist entries.
    pub max_allowlist: u32,
    /// How many audit records the ring keeps (the oldest are dropped).
    pub audit_entries: u32,
}

/// Default [`AdminLimits::max_allowlist`].
pub const DEFAULT_MAX_ALLOWLIST: u32 = 1_000;
/// Default [`AdminLimits::audit_entries`].
pub const DEFAULT_AUDIT_ENTRIES: u32 = 1_000;
/// Largest value either admin bound may take: both are held whole in every replica
/// and hashed whole into its digest.
pub const MAX_ADMIN_BOUND: u32 = 100_000;

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_allowlist: DEFAULT_MAX_ALLOWLIST,
            audit_entries: DEFAULT_AUDIT_ENTRIES,
        }
    }
}
