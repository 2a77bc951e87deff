//! Outcomes: what applying an op (or answering a query) returns.
//!
//! Outcomes are replicated results: every node computes the same outcome for the same
//! op, and the node that proposed the op hands it to the caller. Denials are outcomes,
//! not errors: "no slot free" is a normal, successful decision.

use serde::{Deserialize, Serialize};

use crate::command::{AdminLimits, AllowEntry, Mode, Policy, Settings};
use crate::descriptor_table::DescriptorDecision;
use crate::error::CoreError;
use crate::state::AuditRecord;

/// One op's result.
pub type Reply = Result<Outcome, CoreError>;

/// Result of a successfully validated op or query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Granted(Grant),
    Denied(Denial),
    Released {
        released: bool,
    },
    Renewed {
        lease_id: String,
        expires_at_ms: u64,
    },
    Expired {
        leases: u32,
        rate_keys: u32,
    },
    LimitSet {
        key: String,
        limit: u32,
    },
    LimitDeleted {
        deleted: bool,
    },
    Rate(RateDecision),
    PolicyPut {
        name: String,
    },
    PolicyDeleted {
        deleted: bool,
    },
    TierPut {
        name: String,
    },
    TierDeleted {
        deleted: bool,
    },
    /// `changed` is false when the same configuration was already installed.
    Configured {
        changed: bool,
    },
    Noop,
    // Query answers.
    Usage(Usage),
    Limit(LimitInfo),
    Limits {
        limits: Vec<LimitInfo>,
        truncated: bool,
    },
    Policies(PoliciesView),
    Lease(Option<LeaseInfo>),
    /// The decision of an Envoy descriptor request ([`crate::Op::Descriptors`]).
    Descriptors(DescriptorDecision),
    // Appended, like new ops: an older node never receives these unless the
    // features that produce them are in use (see docs/upgrading.md).
    /// Answer to [`crate::Op::SetPolicyMode`].
    PolicyModeSet {
        name: String,
        mode: Mode,
    },
    /// A grant that a shadow-mode concurrency policy would have denied: the lease was
    /// taken (so `used` may exceed `limit` on those keys).
    GrantedShadow {
        grant: Grant,
        shadow_denied: Vec<ShadowDenial>,
    },
    /// An allowed rate check that a shadow-mode rate policy would have denied.
    /// `decision.allowed` is true; the shadow-denied results keep their own verdict
    /// (`allowed: false`) and were not charged, as an enforced denial is not.
    RateShadow {
        decision: RateDecision,
        shadow_denied: Vec<ShadowDenial>,
    },
    /// Answer to [`crate::Query::PolicyModes`]: policies in shadow mode, sorted.
    PolicyModes {
        shadow: Vec<String>,
    },
    /// Answer to [`crate::Op::CounterIncr`] and [`crate::Query::Counter`].
    Counter(CounterInfo),
    /// Answer to [`crate::Op::CounterClear`]: whether a live counter was removed.
    CounterCleared {
        cleared: bool,
    },
    /// Answer to [`crate::Op::Allow`] and [`crate::Op::Disallow`]: false when the
    /// entry was already there (or already absent).
    AllowlistChanged {
        changed: bool,
    },
    /// Answer to [`crate::Query::Allowlist`]: every entry, sorted, and the bound.
    Allowlist {
        entries: Vec<AllowEntry>,
        max: u32,
    },
    /// A rate check some of whose checks were allowlisted: those are `allowed` and
    /// were not charged; the others were decided as usual. Used only when
    /// `allowlisted` is not empty, so answers without allowlists keep their layout.
    RateAllowlisted {
        decision: RateDecision,
        shadow_denied: Vec<ShadowDenial>,
        allowlisted: Vec<Allowlisted>,
    },
    /// An Envoy descriptor decision with allowlisted descriptors (OK, not charged).
    DescriptorsAllowlisted {
        decision: DescriptorDecision,
        allowlisted: Vec<Allowlisted>,
    },
    /// Answer to [`crate::Op::SetAdminLimits`].
    AdminLimitsSet(AdminLimits),
    /// Answer to [`crate::Query::Audit`]: matching records, oldest first;
    /// `truncated` when more matched than `max`; `capacity` is the ring's size.
    Audit {
        records: Vec<AuditRecord>,
        truncated: bool,
        capacity: u32,
    },
    /// Answer to [`crate::Op::AcquireWait`] when the acquire was not granted at
    /// once: it waits in the queue of every one of its keys.
    Queued(Queued),
    /// Answer to [`crate::Op::LeaveQueue`]. `left`: it was waiting and now is not
    /// (`position` is where it stood). `grant`: it had been granted from the queue
    /// and the lease is live (the caller keeps it). Both false/None when the lease
    /// id is unknown (never queued, or its grant already ended).
    LeftQueue {
        left: bool,
        position: Option<u32>,
        grant: Option<Grant>,
    },
    /// Answer to [`crate::Query::Queue`].
    Queue(QueueView),
    /// An Envoy descriptor decision that shadow-mode limits took part in, some of
    /// which would have denied (`shadow_denied`, each with the descriptor's bucket key
    /// and limit name): their descriptors are reported OK and were not charged. Used
    /// only when `shadow_denied` is not empty.
    DescriptorsShadow {
        decision: DescriptorDecision,
        shadow_denied: Vec<ShadowDenial>,
        allowlisted: Vec<Allowlisted>,
    },
}

/// A waiter's place: one entry per requested key, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub lease_id: String,
    /// Cluster time at which the waiter leaves the queue ungranted.
    pub deadline_ms: u64,
    pub positions: Vec<QueuePosition>,
    /// Occupancy of every requested key, in request order.
    pub slots: Vec<SlotUsage>,
}

/// Where a waiter stands on one key: `position` 1 is next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePosition {
    pub key: String,
    pub position: u32,
    /// Waiters on the key, this one included.
    pub length: u32,
}

/// The waiters on one key, first first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    pub key: String,
    pub waiters: Vec<WaiterInfo>,
}

/// One waiter as shown in a queue listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterInfo {
    pub lease_id: String,
    pub holder: String,
    /// The caller that queued it (`""` for the system / open mode).
    pub owner: String,
    /// 1-based place on this key.
    pub position: u32,
    pub deadline_ms: u64,
    /// Every key the waiter needs (all-or-nothing).
    pub keys: Vec<String>,
}

/// A counter as of the op's (or the query's) time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterInfo {
    pub key: String,
    /// 0 when there is no live counter.
    pub value: u64,
    /// Cluster time (Unix ms) at which the counter expires; `None` when there is no
    /// live counter.
    pub expires_at_ms: Option<u64>,
    /// `expires_at_ms` minus the time of the answer (0 when there is no live
    /// counter): what a client adds to its own clock, so clock skew between client
    /// and cluster does not move the window.
    pub ttl_ms: u64,
}

/// A key an allowlist entry exempted, and the entry (the first that matched).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowlisted {
    pub key: String,
    pub entry: AllowEntry,
}

/// A key a shadow-mode policy would have denied, and that policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowDenial {
    pub key: String,
    pub policy: String,
}

/// A key's occupancy at decision time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotUsage {
    pub key: String,
    pub used: u32,
    pub limit: u32,
}

/// A granted acquire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub lease_id: String,
    pub fencing_token: u64,
    pub expires_at_ms: u64,
    /// Occupancy after the grant, in request key order.
    pub slots: Vec<SlotUsage>,
    /// True when this was a retry of a live lease (nothing new was taken).
    pub reused: bool,
}

/// A denied acquire: nothing was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// Keys that had no free slot, in request order.
    pub blocked_by: Vec<String>,
    /// Occupancy of every requested key, in request order.
    pub slots: Vec<SlotUsage>,
    /// Time until enough leases on every blocking key will have expired for a slot to
    /// free up, capped by `Settings::max_retry_after_ms`; at least 1.
    pub retry_after_ms: u64,
}

/// The decision of a (multi-)rate check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateDecision {
    /// True only if every check was allowed (and then all were charged).
    pub allowed: bool,
    pub results: Vec<RateResult>,
}

/// One key's GCRA decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateResult {
    pub key: String,
    pub allowed: bool,
    /// Effective limit per period (after tier multiplier).
    pub limit: u32,
    pub period_ms: u64,
    pub burst: u32,
    /// Cost-1 requests still allowed now (after this check's charge, if charged).
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_after_ms: u64,
    /// 0 if allowed; else the wait until this check alone would be allowed.
    pub retry_after_ms: u64,
}

/// A live lease as shown in usage listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub lease_id: String,
    pub holder: String,
    /// The caller that acquired the lease (`""` for the system / open mode).
    pub owner: String,
    pub fencing_token: u64,
    pub expires_at_ms: u64,
    pub keys: Vec<String>,
}

/// Answer to [`crate::Query::Usage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub key: String,
    pub used: u32,
    pub limit: u32,
    /// Live leases, oldest fencing token first.
    pub leases: Vec<LeaseInfo>,
}

/// Where a key's limit comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitSource {
    Override,
    Policy(String),
    Default,
}

/// A key's effective concurrency limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitInfo {
    pub key: String,
    pub limit: u32,
    pub source: LimitSource,
    pub used: u32,
}

/// Answer to [`crate::Query::Policies`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoliciesView {
    pub settings: Settings,
    /// Concurrency policies in match order, then rate policies by name.
    pub policies: Vec<(String, Policy)>,
    pub tiers: Vec<(String, u32)>,
    pub source_digest: Option<u64>,
}
