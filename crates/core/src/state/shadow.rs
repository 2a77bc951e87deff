//! Policy modes: which named policies run in shadow mode.
//!
//! A shadow policy is decided and charged exactly as an enforced one, but a request
//! that only shadow policies would deny is allowed: an acquire takes its lease (so a
//! shadow key's `used` may exceed its limit), a rate check is allowed and charges
//! every enforced check and every shadow check that passed (a shadow check that
//! failed is not charged, as an enforced denial is not, so its bucket shows what
//! enforcing would show). The answer names each key and policy that would have
//! denied ([`Outcome::GrantedShadow`], [`Outcome::RateShadow`]). A request that an
//! enforced limit denies is an ordinary denial.
//!
//! The mode belongs to the policy's name: `PutPolicy` keeps it, `DeletePolicy` and a
//! configuration that replaces the policies drop it. Per-key overrides always
//! enforce (an override is an operator's decision about one key, not a rollout).

use crate::command::{Mode, ModedConfiguration, RateLimitRef};
use crate::error::CoreError;
use crate::outcome::{LimitSource, Outcome, Reply};
use crate::validate;

use super::State;

impl State {
    /// Names of the policies in shadow mode, sorted.
    pub fn shadow_policies(&self) -> impl Iterator<Item = &str> {
        self.shadow.iter().map(String::as_str)
    }

    fn has_policy(&self, name: &str) -> bool {
        self.rate_policies.contains_key(name) || self.concurrency.iter().any(|p| p.name == name)
    }

    pub(super) fn set_policy_mode(&mut self, name: &str, mode: Mode) -> Reply {
        validate::name("name", name)?;
        if !self.has_policy(name) {
            return Err(CoreError::PolicyNotFound {
                name: name.to_string(),
            });
        }
        match mode {
            Mode::Shadow => self.shadow.insert(name.to_string()),
            Mode::Enforce => self.shadow.remove(name),
        };
        Ok(Outcome::PolicyModeSet {
            name: name.to_string(),
            mode,
        })
    }

    /// Install a configuration and its shadow policies, all or nothing; an equal
    /// digest changes nothing (like `Configure`).
    pub(super) fn configure_modes(&mut self, c: &ModedConfiguration) -> Reply {
        if self.config_digest == Some(c.config.source_digest) {
            return Ok(Outcome::Configured { changed: false });
        }
        for name in &c.shadow {
            if !c.config.policies.iter().any(|(n, _)| n == name) {
                return Err(CoreError::invalid(
                    "shadow",
                    format!("{name} is not a policy of this configuration"),
                ));
            }
        }
        let out = self.configure(&c.config)?;
        self.shadow = c.shadow.iter().cloned().collect();
        Ok(out)
    }

    /// The shadow policy a key's concurrency limit comes from, if it is one.
    pub(super) fn shadow_limit_policy(&self, source: &LimitSource) -> Option<String> {
        match source {
            LimitSource::Policy(name) if self.shadow.contains(name) => Some(name.clone()),
            _ => None,
        }
    }

    /// The shadow rate policy a check is made against, if it is one.
    pub(super) fn shadow_rate_policy<'a>(&self, r: &'a RateLimitRef) -> Option<&'a str> {
        match r {
            RateLimitRef::Policy { name, .. } if self.shadow.contains(name) => Some(name),
            _ => None,
        }
    }
}
