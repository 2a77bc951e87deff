//! Limits and policies: per-key overrides, named policies, tiers and the operator's
//! configuration, and how a key's concurrency limit is resolved from them
//! (override, then the first matching concurrency policy, then the default).

use serde::{Deserialize, Serialize};

use crate::command::{Configuration, Policy, Settings};
use crate::error::CoreError;
use crate::outcome::{LimitSource, Outcome, Reply};
use crate::validate;

use super::digest::entry_hash;
use super::State;

/// A concurrency policy in match order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConcurrencyPolicy {
    pub(super) name: String,
    pub(super) pattern: String,
    pub(super) limit: u32,
}

impl ConcurrencyPolicy {
    pub(super) fn matches(&self, key: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => self.pattern == key,
        }
    }
}

impl State {
    pub(super) fn set_limit(&mut self, key: &str, limit: u32) -> Reply {
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

    pub(super) fn delete_limit(&mut self, key: &str) -> Reply {
        validate::key("key", key)?;
        let old = self.overrides.remove(key);
        if let Some(old) = old {
            self.override_sum = self.override_sum.wrapping_sub(entry_hash(&(key, old)));
        }
        Ok(Outcome::LimitDeleted {
            deleted: old.is_some(),
        })
    }

    /// The policy named `name`, if any (for the audit trail's before/after).
    pub(super) fn policy_named(&self, name: &str) -> Option<Policy> {
        if let Some(p) = self.concurrency.iter().find(|p| p.name == name) {
            return Some(Policy::Concurrency {
                pattern: p.pattern.clone(),
                limit: p.limit,
            });
        }
        self.rate_policies.get(name).map(|s| Policy::Rate(*s))
    }

    /// A key's effective concurrency limit and where it comes from.
    pub(super) fn resolve_limit(&self, key: &str) -> (u32, LimitSource) {
        if let Some(l) = self.overrides.get(key) {
            return (*l, LimitSource::Override);
        }
        if let Some(p) = self.concurrency.iter().find(|p| p.matches(key)) {
            return (p.limit, LimitSource::Policy(p.name.clone()));
        }
        (self.settings.default_limit, LimitSource::Default)
    }

    pub(super) fn validate_policy(&self, policy: &Policy) -> Result<(), CoreError> {
        self.validate_policy_with(policy, &self.settings)
    }

    pub(super) fn validate_policy_with(
        &self,
        policy: &Policy,
        s: &Settings,
    ) -> Result<(), CoreError> {
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
    pub(super) fn put_policy(&mut self, name: &str, policy: &Policy) {
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

    pub(super) fn configure(&mut self, c: &Configuration) -> Reply {
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
        // The file replaces every policy, and a plain `Configure` names no shadow
        // policy: all enforce (`Op::ConfigureModes` then sets its own).
        self.shadow.clear();
        Ok(Outcome::Configured { changed: true })
    }
}
