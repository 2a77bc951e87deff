//! The core's one error type.
//!
//! Every variant is deterministic: the same op on the same state yields the same error
//! on every replica, so errors are replicated results just like outcomes (toydb's
//! `Error::is_deterministic` idea, made total: the core has no non-deterministic
//! failures at all because it performs no I/O).

use serde::{Deserialize, Serialize};

/// Why an op or query was rejected. Rejected ops change nothing except time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CoreError {
    /// The op is malformed: bad key, limit, ttl, cost, duplicate or too many keys.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A live lease_id was reused for a different key set.
    #[error("lease {lease_id} is live on keys {held:?}, not {requested:?}")]
    LeaseConflict {
        lease_id: String,
        held: Vec<String>,
        requested: Vec<String>,
    },
    /// Renew of a lease that is not live.
    #[error("lease {lease_id} not found (expired, released or never granted)")]
    LeaseNotFound { lease_id: String },
    /// A rate check named a policy that does not exist or is not a rate policy.
    #[error("no rate policy named {name}")]
    PolicyNotFound { name: String },
    /// A rate check named a tier that does not exist.
    #[error("no tier named {name}")]
    TierNotFound { name: String },
    /// Snapshot bytes could not be decoded.
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),
    /// The op would create a new lease, slot key or rate bucket, and the state already
    /// holds `limit` of them (`cap` names the setting). Nothing was created; existing
    /// leases and buckets keep working, and room returns as leases end and buckets
    /// refill.
    #[error("state full: {cap} ({limit}) reached; {what} are refused until some expire")]
    StateFull {
        cap: String,
        limit: u64,
        what: String,
    },
    /// The caller may not do this: its role is too weak for the op, or the lease
    /// belongs to another caller.
    #[error("forbidden: {reason}")]
    Forbidden { reason: String },
}

impl CoreError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
