//! Dispatch: one log entry in, one reply per op out.
//!
//! [`State::apply`] advances time, then hands each op to the module that owns its
//! job. [`Op::As`] carries the caller: its role is checked here, once, before the op
//! runs, and the caller travels on to the lease ops that check ownership. The small
//! admin ops (policies, tiers, seen nodes) are answered inline; everything else is a
//! call into `leases`, `rate`, `counters`, `policy`, `queue` or `descriptors`. Every
//! top-level op passes through `audit`, which records the admin ops that changed
//! something. While anyone waits in the queue, each entry starts with the queue's
//! tick (deadlines, dead leases) and each op ends with the queue settled (the slots
//! it freed granted to waiters), so the next op sees the line as it now stands.

use crate::command::{Caller, Command, Op};
use crate::error::CoreError;
use crate::outcome::{Outcome, Reply};
use crate::validate;

use super::State;

impl State {
    /// Apply one log entry: advance time, then apply each op in order. Returns one
    /// reply per op. Never panics; a rejected op changes nothing but time.
    pub fn apply(&mut self, cmd: &Command) -> Vec<Reply> {
        self.now_ms = self.now_ms.max(cmd.time_ms);
        self.queue_tick();
        cmd.ops.iter().map(|op| self.apply_op(op)).collect()
    }

    fn apply_op(&mut self, op: &Op) -> Reply {
        // Admin changes are recorded in the audit ring (`audit.rs`).
        let reply = self.apply_audited(op);
        self.queue_after(op);
        reply
    }

    /// Apply `op` on behalf of `caller` (the system for unwrapped ops).
    pub(super) fn apply_as(&mut self, caller: &Caller, op: &Op) -> Reply {
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
                self.shadow.remove(name);
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
            Op::SetPolicyMode { name, mode } => self.set_policy_mode(name, *mode),
            Op::ConfigureModes(c) => self.configure_modes(c),
            Op::CounterIncr {
                key,
                amount,
                expiry_ms,
            } => self.counter_incr(key, *amount, *expiry_ms),
            Op::CounterClear { key } => self.counter_clear(key),
            Op::Allow(e) => self.allow(e),
            Op::Disallow(e) => self.disallow(e),
            Op::SetAdminLimits(l) => self.set_admin_limits(l),
            Op::AcquireWait { acquire, wait_ms } => self.acquire_or_wait(acquire, *wait_ms, caller),
            Op::LeaveQueue { lease_id } => self.leave_queue(lease_id, caller),
        }
    }
}
