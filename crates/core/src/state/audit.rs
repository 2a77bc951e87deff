//! The audit trail: who changed what, when, at which log index, from what to what.
//!
//! Every admin op that changes something — a limit override, a policy, a tier, a
//! policy's mode, an allowlist entry, the configuration or descriptor table from
//! `cluster.toml`, the admin bounds, the seen-node set (membership) — appends one
//! [`AuditRecord`] to a ring in the replicated state: the caller (the token's name,
//! `open` for an API caller of a cluster without tokens, `system` for the cluster's
//! own ops), cluster time, the log index of the entry that carried the op, a key
//! naming what changed (`limit:org:acme`, `policy:api`, `mode:api`, `tier:gold`,
//! `allowlist:global:ip:10.0.0.0/8`, `config`, `descriptors`, `admin_limits`,
//! `seen`) and its value before and after, as text (`None`: absent). An op that
//! changes nothing (the same value again, a rejected op) records nothing.
//!
//! The ring keeps the last [`AdminLimits::audit_entries`] records (the oldest is
//! dropped) and is a snapshot section, so it survives restarts and is the same on
//! every replica. The log index is an input like time: the store hands it to
//! [`State::apply_at`] (the entry's index); [`State::apply`] uses index 0.
//!
//! [`AdminLimits::audit_entries`]: crate::command::AdminLimits::audit_entries

use serde::{Deserialize, Serialize};

use crate::command::{AllowPattern, Caller, Command, Op, Policy};
use crate::outcome::Reply;

use super::allowlist::canonical_entry;
use super::digest::entry_hash;
use super::State;

/// One admin change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Index of the log entry that carried the op (ops of one entry share it).
    pub index: u64,
    /// Cluster time of that entry, Unix ms.
    pub time_ms: u64,
    /// The token's name, `open` (no tokens configured) or `system` (the cluster's own).
    pub caller: String,
    /// The op's kind (`set_limit`, `allow`, `configure`, ...).
    pub op: String,
    /// What changed (see the module docs).
    pub key: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Caller name of an op without an `Op::As` wrapper.
pub const SYSTEM_CALLER: &str = "system";
/// Caller name of an API caller of a cluster without tokens.
pub const OPEN_CALLER: &str = "open";

fn policy_text(p: &Policy) -> String {
    match p {
        Policy::Concurrency { pattern, limit } => format!("concurrency {pattern} {limit}"),
        Policy::Rate(r) => format!("rate {}/{}ms burst {}", r.limit, r.period_ms, r.burst),
    }
}

impl State {
    /// Apply one log entry carried at log index `index` (the audit trail records it).
    pub fn apply_at(&mut self, index: u64, cmd: &Command) -> Vec<Reply> {
        self.log_index = index;
        self.apply(cmd)
    }

    /// The audit ring, oldest first.
    pub fn audit(&self) -> impl DoubleEndedIterator<Item = &AuditRecord> {
        self.audit.iter()
    }

    /// What an admin op would change, and its current value; `None` for ops that are
    /// not admin changes (decisions, housekeeping) or name nothing valid.
    fn audit_subject(&self, op: &Op) -> Option<(String, Option<String>)> {
        Some(match op {
            Op::SetLimit { key, .. } | Op::DeleteLimit { key } => (
                format!("limit:{key}"),
                self.overrides.get(key).map(u32::to_string),
            ),
            Op::PutPolicy { name, .. } | Op::DeletePolicy { name } => (
                format!("policy:{name}"),
                self.policy_named(name).map(|p| policy_text(&p)),
            ),
            Op::PutTier { name, .. } | Op::DeleteTier { name } => (
                format!("tier:{name}"),
                self.tiers.get(name).map(u32::to_string),
            ),
            Op::SetPolicyMode { name, .. } => (
                format!("mode:{name}"),
                self.policy_named(name).map(|_| {
                    if self.shadow.contains(name) {
                        "shadow".to_string()
                    } else {
                        "enforce".to_string()
                    }
                }),
            ),
            Op::Allow(e) | Op::Disallow(e) => {
                let e = canonical_entry(e).ok()?;
                let scope = e
                    .policy
                    .as_ref()
                    .map_or_else(|| "global".to_string(), |p| format!("policy={p}"));
                let pattern = match &e.pattern {
                    AllowPattern::Key(g) => format!("key:{g}"),
                    AllowPattern::Ip(n) => format!("ip:{n}"),
                };
                let present = self.allow.contains(&e).then(|| "allowed".to_string());
                (format!("allowlist:{scope}:{pattern}"), present)
            }
            Op::Configure(_) | Op::ConfigureModes(_) => (
                "config".to_string(),
                self.config_digest.map(|d| format!("{d:016x}")),
            ),
            Op::ConfigureDescriptors(_) | Op::ConfigureDescriptorModes(_) => (
                "descriptors".to_string(),
                self.descriptors.digest.map(|d| format!("{d:016x}")),
            ),
            Op::SetAdminLimits(_) => (
                "admin_limits".to_string(),
                Some(format!(
                    "max_allowlist={} audit_entries={}",
                    self.admin_limits.max_allowlist, self.admin_limits.audit_entries
                )),
            ),
            Op::MarkSeen { .. } | Op::ForgetSeen { .. } => {
                let seen: Vec<String> = self.seen.iter().map(u64::to_string).collect();
                (
                    "seen".to_string(),
                    (!seen.is_empty()).then(|| seen.join(",")),
                )
            }
            _ => return None,
        })
    }

    /// Apply a top-level op, recording it in the audit ring if it changed something.
    pub(super) fn apply_audited(&mut self, op: &Op) -> Reply {
        let (caller, inner) = match op {
            Op::As { caller, op } => (Some(caller), &**op),
            op => (None, op),
        };
        let Some((key, before)) = self.audit_subject(inner) else {
            return self.apply_as(&Caller::system(), op);
        };
        let outcome = self.apply_as(&Caller::system(), op)?;
        let after = self.audit_subject(inner).and_then(|(_, v)| v);
        if after != before {
            let caller = match caller {
                None => SYSTEM_CALLER.to_string(),
                Some(c) if c.name.is_empty() => OPEN_CALLER.to_string(),
                Some(c) => c.name.clone(),
            };
            let record = AuditRecord {
                index: self.log_index,
                time_ms: self.now_ms,
                caller,
                op: inner.kind().to_string(),
                key,
                before,
                after,
            };
            self.audit_sum = self.audit_sum.wrapping_add(entry_hash(&record));
            self.audit.push_back(record);
            self.trim_audit();
        }
        Ok(outcome)
    }

    /// Drop the oldest records beyond the ring's size.
    pub(super) fn trim_audit(&mut self) {
        let max = self.admin_limits.audit_entries as usize;
        while self.audit.len() > max {
            if let Some(r) = self.audit.pop_front() {
                self.audit_sum = self.audit_sum.wrapping_sub(entry_hash(&r));
            }
        }
    }
}
