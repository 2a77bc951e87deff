//! Rate buckets: GCRA checks charged all together or not at all, named policies
//! scaled by tiers, and the bounded sweep that drops full buckets (a full bucket
//! carries no information, so dropping it changes no decision).

use crate::command::{RateCheck, RateLimitRef, RateSpec};
use crate::error::CoreError;
use crate::gcra;
use crate::outcome::{Allowlisted, Outcome, RateDecision, RateResult, Reply, ShadowDenial};
use crate::validate;

use super::digest::entry_hash;
use super::State;

impl State {
    /// Examine up to `max_rate_keys` buckets from the cursor and drop the full ones;
    /// returns how many were dropped.
    pub(super) fn sweep_rate(&mut self, max_rate_keys: u32) -> u32 {
        let now_ns = gcra::now_ns(self.now_ms);
        let mut scanned = 0u32;
        let mut dead = Vec::new();
        let mut last = None;
        {
            let start = self.rate_cursor.clone();
            let iter: Box<dyn Iterator<Item = (&String, &u128)>> = match &start {
                Some(c) => Box::new(self.rate.range::<String, _>((
                    std::ops::Bound::Excluded(c),
                    std::ops::Bound::Unbounded,
                ))),
                None => Box::new(self.rate.iter()),
            };
            for (k, tat) in iter {
                if scanned >= max_rate_keys {
                    break;
                }
                scanned += 1;
                if *tat <= now_ns {
                    dead.push(k.clone());
                }
                last = Some(k.clone());
            }
        }
        // Reaching the end (fewer than the budget left) wraps the cursor around; a
        // zero budget (leases-only housekeeping) leaves it where it was.
        if max_rate_keys > 0 {
            self.rate_cursor = if scanned < max_rate_keys { None } else { last };
        }
        let rate_keys = u32::try_from(dead.len()).unwrap_or(u32::MAX);
        for k in dead {
            if let Some(u) = &mut self.undo {
                u.rate(&k, self.rate.get(&k).copied());
            }
            if let Some(tat) = self.rate.remove(&k) {
                self.rate_sum = self.rate_sum.wrapping_sub(entry_hash(&(&k, tat)));
            }
        }
        rate_keys
    }

    /// The effective spec of a check: named policy scaled by tier, or inline.
    pub(super) fn resolve_rate(&self, r: &RateLimitRef) -> Result<RateSpec, CoreError> {
        match r {
            RateLimitRef::Inline(spec) => {
                validate::rate_spec(spec, &self.settings)?;
                Ok(*spec)
            }
            RateLimitRef::Policy { name, tier } => {
                let spec = *self
                    .rate_policies
                    .get(name)
                    .ok_or_else(|| CoreError::PolicyNotFound { name: name.clone() })?;
                let Some(tier) = tier else {
                    return Ok(spec);
                };
                let m = *self
                    .tiers
                    .get(tier)
                    .ok_or_else(|| CoreError::TierNotFound { name: tier.clone() })?;
                let scale = |v: u32| -> u32 {
                    let scaled = u64::from(v) * u64::from(m) / 1000;
                    u32::try_from(scaled.clamp(1, u64::from(self.settings.max_limit)))
                        .unwrap_or(u32::MAX)
                };
                Ok(RateSpec {
                    limit: scale(spec.limit),
                    period_ms: spec.period_ms,
                    burst: scale(spec.burst),
                })
            }
        }
    }

    /// A rate bucket's stored TAT (`None`: full), for deciding without charging.
    pub(crate) fn rate_bucket(&self, key: &str) -> Option<u128> {
        self.rate.get(key).copied()
    }

    pub(crate) fn rate_check(&mut self, checks: &[RateCheck]) -> Reply {
        self.rate_check_with(checks, true)
    }

    /// A rate check; with `use_allowlist` false the allowlist is not consulted (the
    /// Envoy path has matched it already, with the descriptors' addresses).
    pub(crate) fn rate_check_with(&mut self, checks: &[RateCheck], use_allowlist: bool) -> Reply {
        if checks.is_empty() {
            return Err(CoreError::invalid(
                "checks",
                "at least one check is required",
            ));
        }
        if checks.len() > validate::MAX_CHECKS {
            return Err(CoreError::invalid(
                "checks",
                format!("at most {} checks per request", validate::MAX_CHECKS),
            ));
        }
        let mut specs = Vec::with_capacity(checks.len());
        for (i, c) in checks.iter().enumerate() {
            validate::key("key", &c.key)?;
            if checks[..i].iter().any(|o| o.key == c.key) {
                return Err(CoreError::invalid(
                    "checks",
                    format!("duplicate key {}", c.key),
                ));
            }
            let spec = self.resolve_rate(&c.limit)?;
            if c.cost == 0 || c.cost > spec.burst {
                return Err(CoreError::invalid(
                    "cost",
                    format!("must be in 1..={} (the burst)", spec.burst),
                ));
            }
            specs.push(spec);
        }
        // Allowlisted checks are allowed and charge nothing (`allowlist.rs`); the
        // request is decided by the others.
        let allow: Vec<Option<Allowlisted>> = checks
            .iter()
            .map(|c| {
                let policy = match &c.limit {
                    RateLimitRef::Policy { name, .. } => Some(name.as_str()),
                    RateLimitRef::Inline(_) => None,
                };
                use_allowlist
                    .then(|| self.allowlisted_key(policy, &c.key))
                    .flatten()
            })
            .collect();
        let full = if allow.iter().any(Option::is_some) {
            let charged: Vec<RateCheck> = checks
                .iter()
                .zip(&allow)
                .filter(|(_, a)| a.is_none())
                .map(|(c, _)| c.clone())
                .collect();
            self.rate_room(&charged)
        } else {
            self.rate_room(checks)
        };
        let now_ns = gcra::now_ns(self.now_ms);
        let decisions: Vec<_> = checks
            .iter()
            .zip(&specs)
            .map(|(c, spec)| {
                let p = gcra::Params::new(spec);
                (
                    gcra::decide(self.rate.get(&c.key).copied(), now_ns, &p, c.cost),
                    p,
                )
            })
            .collect();
        // A check of a shadow policy never denies the request (`shadow.rs`).
        let shadow: Vec<Option<&str>> = checks
            .iter()
            .map(|c| self.shadow_rate_policy(&c.limit))
            .collect();
        let allowed = decisions
            .iter()
            .zip(&shadow)
            .zip(&allow)
            .all(|(((d, _), s), a)| d.allowed || s.is_some() || a.is_some());
        // A denial charges (and creates) nothing, so it is answered even at the cap;
        // only a charge that would add buckets beyond it is refused.
        if let (true, Some(e)) = (allowed, full) {
            return Err(e);
        }
        let mut results = Vec::with_capacity(checks.len());
        let mut shadow_denied = Vec::new();
        let mut allowlisted = Vec::new();
        for ((((c, spec), (d, p)), s), a) in checks
            .iter()
            .zip(&specs)
            .zip(&decisions)
            .zip(&shadow)
            .zip(allow)
        {
            if let Some(a) = a {
                // Shown as it stands, uncharged.
                let shown = gcra::peek(self.rate.get(&c.key).copied(), now_ns, p);
                results.push(RateResult {
                    key: c.key.clone(),
                    allowed: true,
                    limit: spec.limit,
                    period_ms: spec.period_ms,
                    burst: spec.burst,
                    remaining: shown.remaining,
                    reset_after_ms: shown.reset_after_ms,
                    retry_after_ms: 0,
                });
                allowlisted.push(a);
                continue;
            }
            if let (true, false, Some(policy)) = (allowed, d.allowed, s) {
                shadow_denied.push(ShadowDenial {
                    key: c.key.clone(),
                    policy: policy.to_string(),
                });
            }
            // All charged or none: when the whole request is denied, the checks that
            // would have passed report their uncharged state. An allowed request
            // charges every check that passed; a shadow check that failed is not
            // charged, as an enforced denial would not be.
            let shown = if allowed && d.allowed {
                if let Some(u) = &mut self.undo {
                    u.rate(&c.key, self.rate.get(&c.key).copied());
                }
                // An existing bucket is updated in place: no copy of its key.
                let old = match self.rate.get_mut(&c.key) {
                    Some(tat) => Some(std::mem::replace(tat, d.new_tat)),
                    None => self.rate.insert(c.key.clone(), d.new_tat),
                };
                if let Some(old) = old {
                    self.rate_sum = self.rate_sum.wrapping_sub(entry_hash(&(&c.key, old)));
                }
                self.rate_sum = self.rate_sum.wrapping_add(entry_hash(&(&c.key, d.new_tat)));
                *d
            } else if d.allowed {
                gcra::peek(self.rate.get(&c.key).copied(), now_ns, p)
            } else {
                *d
            };
            results.push(RateResult {
                key: c.key.clone(),
                allowed: d.allowed,
                limit: spec.limit,
                period_ms: spec.period_ms,
                burst: spec.burst,
                remaining: shown.remaining,
                reset_after_ms: shown.reset_after_ms,
                retry_after_ms: shown.retry_after_ms,
            });
        }
        let decision = RateDecision { allowed, results };
        if !allowlisted.is_empty() {
            Ok(Outcome::RateAllowlisted {
                decision,
                shadow_denied,
                allowlisted,
            })
        } else if shadow_denied.is_empty() {
            Ok(Outcome::Rate(decision))
        } else {
            Ok(Outcome::RateShadow {
                decision,
                shadow_denied,
            })
        }
    }
}
