//! The data of Envoy descriptors: the operator's table, a request, a decision.
//!
//! Plain serde types and limits, with no behaviour beyond unit conversion, so that
//! `command` (the ops that carry a table or a request) and `outcome` (the reply that
//! carries a decision) can name them without depending on the decision logic, which
//! lives in [`crate::descriptors`] (matching, keys, validation, the all-or-none
//! decision) and re-exports everything here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most descriptors in one request (as many as checks in one rate-check op).
pub const MAX_DESCRIPTORS: usize = 16;
/// Most entries in one descriptor, and most levels of a configured tree.
pub const MAX_ENTRIES: usize = 8;
/// Longest entry key or value, and longest domain name, in bytes.
pub const MAX_ENTRY_LEN: usize = 256;
/// Most nodes in a whole descriptor table (bounds what one configure op installs).
pub const MAX_NODES: usize = 10_000;

/// Time unit of a limit, as Envoy names them (`SECOND` .. `WEEK`; Envoy's `MONTH` and
/// `YEAR` are longer than any period quorate allows, so they are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
}

impl Unit {
    pub fn period_ms(self) -> u64 {
        match self {
            Unit::Second => 1_000,
            Unit::Minute => 60_000,
            Unit::Hour => 3_600_000,
            Unit::Day => 86_400_000,
            Unit::Week => 7 * 86_400_000,
        }
    }

    /// The unit whose length is exactly `period_ms`, if any.
    pub fn of_period(period_ms: u64) -> Option<Unit> {
        [
            Unit::Second,
            Unit::Minute,
            Unit::Hour,
            Unit::Day,
            Unit::Week,
        ]
        .into_iter()
        .find(|u| u.period_ms() == period_ms)
    }
}

/// What limits the descriptors that end at a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeLimit {
    /// `requests_per_unit` per `unit`, bursts of `burst`; `name` shows in statuses
    /// and headers.
    Rate {
        name: String,
        requests_per_unit: u32,
        unit: Unit,
        burst: u32,
    },
    /// A named rate policy of the replicated state (looked up at decision time, so
    /// changing the policy through the API changes these limits too).
    Policy { name: String },
    /// Matched, but never limited (envoyproxy/ratelimit's `unlimited: true`).
    Unlimited,
}

/// One node of a domain's descriptor tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorNode {
    pub key: String,
    /// `None`: any value; `Some("v")`: exactly `v`; `Some("pre*")`: values starting
    /// with `pre`.
    pub value: Option<String>,
    pub limit: Option<NodeLimit>,
    pub descriptors: Vec<DescriptorNode>,
}

/// One domain's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    pub descriptors: Vec<DescriptorNode>,
}

/// What [`crate::Op::ConfigureDescriptors`] installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorConfig {
    /// Identifies the operator's table; an equal digest is not re-installed.
    pub source_digest: u64,
    pub domains: Vec<Domain>,
}

/// What [`crate::Op::ConfigureDescriptorModes`] installs: a table and the limits of
/// it that run in shadow mode (envoyproxy/ratelimit's `shadow_mode`).
///
/// A type of its own beside [`DescriptorConfig`] (not a field of [`NodeLimit`]) so
/// that older `ConfigureDescriptors` entries and snapshot tables keep their layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModedDescriptorConfig {
    /// Its `source_digest` covers the shadow list too, so switching a limit between
    /// shadow and enforce is a new table to install.
    pub config: DescriptorConfig,
    /// `(domain, limit name)` of every [`NodeLimit::Rate`] in shadow mode. A
    /// [`NodeLimit::Policy`] follows its policy's own mode instead.
    pub shadow: Vec<(String, String)>,
}

/// The installed tables (part of the replicated state and of snapshots).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorTables {
    pub digest: Option<u64>,
    pub domains: BTreeMap<String, Vec<DescriptorNode>>,
}

/// One descriptor of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// `(key, value)` in request order.
    pub entries: Vec<(String, String)>,
    /// Envoy's `RateLimitOverride`: `requests_per_unit` per `unit`.
    pub limit: Option<(u32, Unit)>,
    /// The descriptor's own `hits_addend` (0 = peek), overriding the request's.
    pub hits_addend: Option<u64>,
}

/// Arguments of [`crate::Op::Descriptors`]: one `ShouldRateLimit` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorRequest {
    pub domain: String,
    pub descriptors: Vec<Descriptor>,
    /// The request-level cost; 0 means 1.
    pub hits_addend: u32,
}

/// The limit a descriptor was checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLimit {
    /// The configured limit's name, the policy's name, or `"override"`.
    pub name: String,
    /// The derived bucket key (see the module docs).
    pub key: String,
    pub requests_per_unit: u32,
    /// `None` when a referenced policy's period is not a whole Envoy unit.
    pub unit: Option<Unit>,
    pub period_ms: u64,
    pub burst: u32,
}

/// One descriptor's status, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorStatus {
    pub over_limit: bool,
    /// `None`: no limit applies (no match, or `unlimited`).
    pub limit: Option<AppliedLimit>,
    /// Cost-1 requests still allowed (after this request's charge, if charged).
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_after_ms: u64,
    /// 0 unless over the limit; then the wait until this descriptor alone would pass.
    pub retry_after_ms: u64,
}

/// The decision of a [`DescriptorRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorDecision {
    /// True when no descriptor is over its limit (and then every one was charged).
    pub ok: bool,
    pub statuses: Vec<DescriptorStatus>,
}
