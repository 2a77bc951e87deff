//! Envoy rate limit descriptors, resolved and decided inside the state machine.
//!
//! Envoy's external rate limit service (`envoy.service.ratelimit.v3`) asks "may this
//! request pass?" with a *domain* and a list of *descriptors*, each an ordered list of
//! `(key, value)` entries (`[("remote_address", "203.0.113.9")]`,
//! `[("tenant", "acme"), ("user_id", "42")]`). This module turns such a request into
//! one all-or-none GCRA decision over quorate's ordinary rate buckets.
//!
//! ## The table
//! [`DescriptorConfig`] is the operator's table (from `cluster.toml`, in the spirit of
//! envoyproxy/ratelimit's YAML): per domain, a tree of [`DescriptorNode`]s, each
//! matching one entry by key and optionally by value (exact, or a prefix ending in
//! `*`), carrying a limit and/or children. It is **replicated**: the leader proposes
//! [`crate::Op::ConfigureDescriptors`] and every replica installs the same table, so a
//! change of table is ordered with the checks like any other op.
//!
//! ## Matching (as envoyproxy/ratelimit does)
//! A descriptor's entries are matched in order, one tree level per entry: at each
//! level the child with the same key and the same value wins, then one whose value is
//! a `prefix*` of it, then one with the key and no value (any value). If some entry
//! matches nothing, or the last matched node has no limit, the descriptor is not
//! limited: its status is OK with no `current_limit` and it charges nothing. A
//! descriptor carrying a `limit` override is limited by the override whatever the
//! table says (the domain must still be configured).
//!
//! ## Keys
//! Each distinct descriptor is its own bucket, named from the domain and *all* its
//! entries as sent (so `user_id` with no configured value gives one bucket per user):
//! `envoy:<domain>/<key>=<value>/<key>=<value>`, every part escaped so that only
//! `A-Z a-z 0-9 . _ -` stay as they are and any other byte becomes `+XX` (hex). A key
//! longer than quorate's 256-byte limit becomes `envoy:<domain>/h=<32 hex>`, a 128-bit
//! hash of the escaped form. These are ordinary rate keys: `/v1/rate/check` on the
//! same key charges the same bucket.
//!
//! ## The decision
//! - Cost: the request's `hits_addend` (0 means 1, as protobuf cannot tell 0 from
//!   unset and Envoy sends 0), replaced by a descriptor's own `hits_addend` when it has
//!   one. A descriptor's explicit `hits_addend` of 0 is a *peek*: it charges nothing
//!   and is OVER_LIMIT only if a request of cost 1 would be denied now.
//! - Descriptors that resolve to the same bucket are charged once with their summed
//!   cost (and report the same status).
//! - Everything is decided before anything is charged: if any limited descriptor is
//!   over its limit the whole request is OVER_LIMIT and **no** bucket is charged
//!   (envoyproxy/ratelimit charges the others; here a denied request costs nothing).
//!   Otherwise every bucket is charged through the ordinary rate check, so state caps,
//!   snapshots and digests treat these buckets like any other.
//! - A descriptor an allowlist entry matches (`state/allowlist.rs`: scoped by its
//!   limit's name, matched by bucket key or by an entry value that is an address in
//!   the entry's CIDR) is OK and charges nothing, whatever its bucket holds; the
//!   decision then comes as [`Outcome::DescriptorsAllowlisted`].
//! - A limit in shadow mode (a table limit named by
//!   [`crate::Op::ConfigureDescriptorModes`], or a `policy` reference to a policy in
//!   shadow mode) is decided like any other but never denies: a request that only
//!   shadow limits would deny is OK, its other buckets and the shadow buckets that
//!   passed are charged, and the shadow buckets that would have denied are not (as an
//!   enforced denial charges nothing); their descriptors report OK and the decision
//!   comes as [`Outcome::DescriptorsShadow`] naming them. A request an enforced limit
//!   denies is denied as before (and charges nothing). A request-supplied override
//!   always enforces.
//! - An unknown domain is refused ([`CoreError::Invalid`], field `domain`), as
//!   envoyproxy/ratelimit refuses it: Envoy then applies its `failure_mode_deny`.

use std::net::IpAddr;

use crate::command::{RateCheck, RateLimitRef, RateSpec, Settings};
use crate::error::CoreError;
use crate::gcra;
use crate::outcome::{Allowlisted, Outcome, RateResult, Reply, ShadowDenial};
use crate::state::{fnv1a, State};
use crate::validate;

// The table, request and decision types live in `descriptor_table` (data only, so
// that `command` and `outcome` can name them); they are part of this module's API.
pub use crate::descriptor_table::*;

// A request's descriptors become one rate-check op's checks.
const _: () = assert!(MAX_DESCRIPTORS == validate::MAX_CHECKS);

// --------------------------------------------------------------------------------
// Configuration

/// Envoy's keys and values are free text (any printable character), so only the
/// shared length rule and a control-character check apply.
fn check_text(field: &str, s: &str, max: usize) -> Result<(), CoreError> {
    validate::check_len(field, s, max)?;
    if s.chars().any(char::is_control) {
        return Err(CoreError::invalid(field, "contains control characters"));
    }
    Ok(())
}

fn validate_limit(path: &str, limit: &NodeLimit, settings: &Settings) -> Result<(), CoreError> {
    match limit {
        NodeLimit::Rate {
            name,
            requests_per_unit,
            unit,
            burst,
        } => {
            validate::name(&format!("{path}.rate_limit.name"), name)?;
            let spec = RateSpec {
                limit: *requests_per_unit,
                period_ms: unit.period_ms(),
                burst: *burst,
            };
            validate::rate_spec(&spec, settings).map_err(|e| match e {
                CoreError::Invalid { field, reason } => {
                    CoreError::invalid(format!("{path}.rate_limit ({field})"), reason)
                }
                other => other,
            })
        }
        NodeLimit::Policy { name } => validate::name(&format!("{path}.policy"), name),
        NodeLimit::Unlimited => Ok(()),
    }
}

fn validate_nodes(
    path: &str,
    nodes: &[DescriptorNode],
    depth: usize,
    count: &mut usize,
    settings: &Settings,
) -> Result<(), CoreError> {
    if depth > MAX_ENTRIES {
        return Err(CoreError::invalid(
            path,
            format!("deeper than {MAX_ENTRIES} levels"),
        ));
    }
    for (i, n) in nodes.iter().enumerate() {
        let here = format!("{path}.descriptors[{i}]");
        *count += 1;
        if *count > MAX_NODES {
            return Err(CoreError::invalid(
                here,
                format!("more than {MAX_NODES} descriptors in all"),
            ));
        }
        check_text(&format!("{here}.key"), &n.key, MAX_ENTRY_LEN)?;
        if let Some(v) = &n.value {
            check_text(&format!("{here}.value"), v, MAX_ENTRY_LEN)?;
        }
        if nodes[..i]
            .iter()
            .any(|o| o.key == n.key && o.value == n.value)
        {
            return Err(CoreError::invalid(
                here,
                format!(
                    "duplicate of an earlier entry (key {:?}, same value)",
                    n.key
                ),
            ));
        }
        if let Some(l) = &n.limit {
            validate_limit(&here, l, settings)?;
        }
        if n.limit.is_none() && n.descriptors.is_empty() {
            return Err(CoreError::invalid(
                here,
                "has neither a limit (rate_limit, policy or unlimited) nor nested descriptors",
            ));
        }
        validate_nodes(&here, &n.descriptors, depth + 1, count, settings)?;
    }
    Ok(())
}

/// Check a whole table against `settings`; errors name the offending entry's path
/// (`envoy.domains[0].descriptors[1].rate_limit`). Used by the server at startup (with
/// the file's settings) and by every replica before installing a table.
pub fn validate_config(c: &DescriptorConfig, settings: &Settings) -> Result<(), CoreError> {
    let mut count = 0;
    for (i, d) in c.domains.iter().enumerate() {
        let path = format!("envoy.domains[{i}]");
        check_text(&format!("{path}.domain"), &d.name, validate::MAX_NAME_LEN)?;
        if c.domains[..i].iter().any(|o| o.name == d.name) {
            return Err(CoreError::invalid(
                format!("{path}.domain"),
                format!("domain {:?} appears twice", d.name),
            ));
        }
        validate_nodes(&path, &d.descriptors, 1, &mut count, settings)?;
    }
    Ok(())
}

// --------------------------------------------------------------------------------
// Keys

fn escape_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
}

/// The bucket key of a descriptor (see the module docs).
pub fn descriptor_key(domain: &str, entries: &[(String, String)]) -> String {
    let mut k = String::from("envoy:");
    escape_into(&mut k, domain);
    let head = k.len();
    for (key, value) in entries {
        k.push('/');
        escape_into(&mut k, key);
        k.push('=');
        escape_into(&mut k, value);
    }
    if k.len() <= validate::MAX_KEY_LEN {
        return k;
    }
    // Two independent 64-bit FNV-1a hashes (the second over the reversed bytes):
    // 128 bits, so distinct descriptors share a bucket only by astronomic chance.
    let tail = &k.as_bytes()[head..];
    let rev: Vec<u8> = tail.iter().rev().copied().collect();
    let mut short = k[..head.min(validate::MAX_KEY_LEN - 35)].to_string();
    short.push_str(&format!("/h={:016x}{:016x}", fnv1a(tail), fnv1a(&rev)));
    short
}

// --------------------------------------------------------------------------------
// Matching

fn value_matches(pattern: &Option<String>, value: &str) -> u8 {
    match pattern {
        Some(p) if p == value => 3,
        Some(p) => match p.strip_suffix('*') {
            Some(prefix) if value.starts_with(prefix) => 2,
            _ => 0,
        },
        None => 1,
    }
}

/// The configured limit of `entries` in a domain's tree, if any.
/// True when some node of `nodes` (at any depth) has a rate limit named `name`.
fn names_rate_limit(nodes: &[DescriptorNode], name: &str) -> bool {
    nodes.iter().any(|n| {
        matches!(&n.limit, Some(NodeLimit::Rate { name: m, .. }) if m == name)
            || names_rate_limit(&n.descriptors, name)
    })
}

fn configured<'a>(
    tree: &'a [DescriptorNode],
    entries: &[(String, String)],
) -> Option<&'a NodeLimit> {
    let mut level = tree;
    let mut node = None;
    for (key, value) in entries {
        let best = level
            .iter()
            .filter(|n| &n.key == key)
            .map(|n| (value_matches(&n.value, value), n))
            .filter(|(score, _)| *score > 0)
            .max_by_key(|(score, _)| *score)?;
        node = Some(best.1);
        level = &best.1.descriptors;
    }
    node?.limit.as_ref()
}

fn check_request(r: &DescriptorRequest) -> Result<(), CoreError> {
    check_text("domain", &r.domain, MAX_ENTRY_LEN)?;
    if r.descriptors.is_empty() {
        return Err(CoreError::invalid(
            "descriptors",
            "at least one is required",
        ));
    }
    if r.descriptors.len() > MAX_DESCRIPTORS {
        return Err(CoreError::invalid(
            "descriptors",
            format!("at most {MAX_DESCRIPTORS} per request"),
        ));
    }
    for d in &r.descriptors {
        if d.entries.is_empty() || d.entries.len() > MAX_ENTRIES {
            return Err(CoreError::invalid(
                "descriptors.entries",
                format!("each descriptor needs 1..={MAX_ENTRIES} entries"),
            ));
        }
        for (k, v) in &d.entries {
            check_text("descriptors.entries.key", k, MAX_ENTRY_LEN)?;
            // An empty value is legitimate (a header that is present but empty).
            if !v.is_empty() {
                check_text("descriptors.entries.value", v, MAX_ENTRY_LEN)?;
            }
        }
    }
    Ok(())
}

/// A limited descriptor, before deciding.
struct Limited {
    applied: AppliedLimit,
    spec: RateSpec,
    cost: u32,
    /// Its limit runs in shadow mode (see the module docs).
    shadow: bool,
}

impl State {
    /// `source_digest` of the installed descriptor table, if any.
    pub fn descriptors_digest(&self) -> Option<u64> {
        self.descriptors.digest
    }

    /// Install a descriptor table and its shadow limits (all or nothing), unless its
    /// digest is installed. Every `(domain, name)` in `shadow` must name a rate limit
    /// of the table (a policy reference follows its policy's mode).
    pub(crate) fn configure_descriptors(
        &mut self,
        c: &DescriptorConfig,
        shadow: &[(String, String)],
    ) -> Reply {
        if self.descriptors.digest == Some(c.source_digest) {
            return Ok(Outcome::Configured { changed: false });
        }
        validate_config(c, &self.settings)?;
        for (domain, name) in shadow {
            let found = c
                .domains
                .iter()
                .filter(|d| &d.name == domain)
                .any(|d| names_rate_limit(&d.descriptors, name));
            if !found {
                return Err(CoreError::invalid(
                    "shadow",
                    format!("{domain}/{name} is not a rate_limit of the descriptor table"),
                ));
            }
        }
        self.descriptor_shadow = shadow.iter().cloned().collect();
        self.descriptors = DescriptorTables {
            digest: Some(c.source_digest),
            domains: c
                .domains
                .iter()
                .map(|d| (d.name.clone(), d.descriptors.clone()))
                .collect(),
        };
        Ok(Outcome::Configured { changed: true })
    }

    fn limit_of(
        &self,
        domain: &str,
        tree: &[DescriptorNode],
        d: &Descriptor,
        request_cost: u32,
    ) -> Result<Option<Limited>, CoreError> {
        let key = || descriptor_key(domain, &d.entries);
        let (name, spec, shadow) = match (d.limit, configured(tree, &d.entries)) {
            (Some((rpu, unit)), _) => {
                let spec = RateSpec {
                    limit: rpu,
                    period_ms: unit.period_ms(),
                    burst: rpu,
                };
                validate::rate_spec(&spec, &self.settings)?;
                ("override".to_string(), spec, false)
            }
            (None, None | Some(NodeLimit::Unlimited)) => return Ok(None),
            (
                None,
                Some(NodeLimit::Rate {
                    name,
                    requests_per_unit,
                    unit,
                    burst,
                }),
            ) => (
                name.clone(),
                RateSpec {
                    limit: *requests_per_unit,
                    period_ms: unit.period_ms(),
                    burst: *burst,
                },
                self.descriptor_shadow
                    .contains(&(domain.to_string(), name.clone())),
            ),
            (None, Some(NodeLimit::Policy { name })) => {
                let spec = *self
                    .rate_policies
                    .get(name)
                    .ok_or_else(|| CoreError::PolicyNotFound { name: name.clone() })?;
                (name.clone(), spec, self.shadow.contains(name))
            }
        };
        let cost = match d.hits_addend {
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
            None => request_cost,
        };
        Ok(Some(Limited {
            applied: AppliedLimit {
                name,
                key: key(),
                requests_per_unit: spec.limit,
                unit: Unit::of_period(spec.period_ms),
                period_ms: spec.period_ms,
                burst: spec.burst,
            },
            spec,
            cost,
            shadow,
        }))
    }

    /// Decide one `ShouldRateLimit` call (see the module docs).
    pub(crate) fn descriptors(&mut self, r: &DescriptorRequest) -> Reply {
        check_request(r)?;
        let Some(tree) = self.descriptors.domains.get(&r.domain) else {
            return Err(CoreError::invalid(
                "domain",
                format!(
                    "unknown domain {:?} (not in the descriptor table)",
                    r.domain
                ),
            ));
        };
        let request_cost = r.hits_addend.max(1);
        let mut items = Vec::with_capacity(r.descriptors.len());
        for d in &r.descriptors {
            items.push(self.limit_of(&r.domain, tree, d, request_cost)?);
        }
        // Allowlisted descriptors (`state/allowlist.rs`) pass and charge nothing:
        // scoped by their limit's name, matched by bucket key and by every entry
        // value that is an address.
        let allow: Vec<Option<Allowlisted>> = r
            .descriptors
            .iter()
            .zip(&items)
            .map(|(d, item)| {
                let l = item.as_ref()?;
                if !self.has_allowlist() {
                    return None;
                }
                let addrs: Vec<IpAddr> = d
                    .entries
                    .iter()
                    .filter_map(|(_, v)| v.parse::<IpAddr>().ok())
                    .collect();
                self.allowlisted(Some(&l.applied.name), &l.applied.key, &addrs)
            })
            .collect();
        let limited = || {
            items
                .iter()
                .zip(&allow)
                .filter(|(_, a)| a.is_none())
                .filter_map(|(l, _)| l.as_ref())
        };
        // One check per distinct bucket, with the summed cost of its descriptors
        // (the first descriptor's limit decides, its mode included).
        let mut checks: Vec<(RateCheck, RateSpec, bool)> = Vec::new();
        for l in limited().filter(|l| l.cost > 0) {
            match checks.iter_mut().find(|(c, _, _)| c.key == l.applied.key) {
                Some((c, _, _)) => c.cost = c.cost.saturating_add(l.cost),
                None => checks.push((
                    RateCheck {
                        key: l.applied.key.clone(),
                        cost: l.cost,
                        limit: RateLimitRef::Inline(l.spec),
                    },
                    l.spec,
                    l.shadow,
                )),
            }
        }
        let now_ns = gcra::now_ns(self.now_ms);
        let decide = |st: &State, key: &str, spec: &RateSpec, cost: u32| {
            gcra::decide(st.rate_bucket(key), now_ns, &gcra::Params::new(spec), cost)
        };
        let peek = |st: &State, key: &str, spec: &RateSpec| {
            gcra::peek(st.rate_bucket(key), now_ns, &gcra::Params::new(spec))
        };
        // Buckets of shadow limits that would deny: they deny nothing and are not
        // charged (see the module docs).
        let mut shadow_over: Vec<String> = checks
            .iter()
            .filter(|(c, spec, shadow)| *shadow && !decide(self, &c.key, spec, c.cost).allowed)
            .map(|(c, _, _)| c.key.clone())
            .collect();
        shadow_over.extend(
            limited()
                .filter(|l| l.cost == 0 && l.shadow)
                .filter(|l| !decide(self, &l.applied.key, &l.spec, 1).allowed)
                .map(|l| l.applied.key.clone()),
        );
        let charged_ok = checks
            .iter()
            .filter(|(_, _, shadow)| !shadow)
            .all(|(c, spec, _)| decide(self, &c.key, spec, c.cost).allowed);
        let peeks_ok = limited()
            .filter(|l| l.cost == 0 && !l.shadow)
            .all(|l| decide(self, &l.applied.key, &l.spec, 1).allowed);
        let ok = charged_ok && peeks_ok;
        let mut charged: Vec<RateResult> = Vec::new();
        let just: Vec<RateCheck> = checks
            .iter()
            .filter(|(c, _, _)| !shadow_over.contains(&c.key))
            .map(|(c, _, _)| c.clone())
            .collect();
        if ok && !just.is_empty() {
            match self.rate_check_with(&just, false)? {
                Outcome::Rate(d) if d.allowed => charged = d.results,
                // Decided allowed just above on the same state and time: unreachable,
                // but never report a grant that was not charged.
                _ => return Err(CoreError::invalid("descriptors", "inconsistent decision")),
            }
        }
        let mut shadow_denied: Vec<ShadowDenial> = Vec::new();
        let statuses = items
            .into_iter()
            .zip(&allow)
            .map(|(item, allowed)| {
                let Some(l) = item else {
                    return DescriptorStatus {
                        over_limit: false,
                        limit: None,
                        remaining: 0,
                        reset_after_ms: 0,
                        retry_after_ms: 0,
                    };
                };
                let key = &l.applied.key;
                let shadow_denies = l.shadow && shadow_over.contains(key);
                if shadow_denies {
                    let note = ShadowDenial {
                        key: key.clone(),
                        policy: l.applied.name.clone(),
                    };
                    if !shadow_denied.contains(&note) {
                        shadow_denied.push(note);
                    }
                }
                let (over, remaining, reset, retry) = if allowed.is_some() || shadow_denies {
                    let p = peek(self, key, &l.spec);
                    (false, p.remaining, p.reset_after_ms, 0)
                } else if let Some(c) = charged.iter().find(|c| &c.key == key) {
                    (false, c.remaining, c.reset_after_ms, 0)
                } else {
                    let group = checks
                        .iter()
                        .find(|(c, _, _)| &c.key == key)
                        .map_or(1, |(c, _, _)| c.cost);
                    let d = decide(self, key, &l.spec, group);
                    let p = peek(self, key, &l.spec);
                    if d.allowed {
                        (false, p.remaining, p.reset_after_ms, 0)
                    } else {
                        (true, d.remaining, d.reset_after_ms, d.retry_after_ms)
                    }
                };
                DescriptorStatus {
                    over_limit: over,
                    limit: Some(l.applied),
                    remaining,
                    reset_after_ms: reset,
                    retry_after_ms: retry,
                }
            })
            .collect();
        let decision = DescriptorDecision { ok, statuses };
        let allowlisted: Vec<Allowlisted> = allow.into_iter().flatten().collect();
        if !shadow_denied.is_empty() {
            Ok(Outcome::DescriptorsShadow {
                decision,
                shadow_denied,
                allowlisted,
            })
        } else if allowlisted.is_empty() {
            Ok(Outcome::Descriptors(decision))
        } else {
            Ok(Outcome::DescriptorsAllowlisted {
                decision,
                allowlisted,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Op, Policy};

    fn rate(name: &str, rpu: u32, unit: Unit) -> Option<NodeLimit> {
        Some(NodeLimit::Rate {
            name: name.into(),
            requests_per_unit: rpu,
            unit,
            burst: rpu,
        })
    }

    fn node(key: &str, value: Option<&str>, limit: Option<NodeLimit>) -> DescriptorNode {
        DescriptorNode {
            key: key.into(),
            value: value.map(Into::into),
            limit,
            descriptors: vec![],
        }
    }

    /// `edge`: per-IP 3/min; `tenant=acme` → per-user 2/min (any other tenant: 5/min,
    /// `beta*` tenants unlimited); `path` by the `user` policy.
    fn table() -> DescriptorConfig {
        let mut acme = node("tenant", Some("acme"), None);
        acme.descriptors = vec![node("user_id", None, rate("acme_user", 2, Unit::Minute))];
        let mut any = node("tenant", None, None);
        any.descriptors = vec![node("user_id", None, rate("tenant_user", 5, Unit::Minute))];
        let mut beta = node("tenant", Some("beta*"), None);
        beta.descriptors = vec![node("user_id", None, Some(NodeLimit::Unlimited))];
        DescriptorConfig {
            source_digest: 7,
            domains: vec![Domain {
                name: "edge".into(),
                descriptors: vec![
                    node("remote_address", None, rate("per_ip", 3, Unit::Minute)),
                    acme,
                    any,
                    beta,
                    node(
                        "path",
                        None,
                        Some(NodeLimit::Policy {
                            name: "user".into(),
                        }),
                    ),
                ],
            }],
        }
    }

    fn state() -> State {
        let mut s = State::new();
        let r = s.apply(&Command::new(
            1_000,
            vec![
                Op::PutPolicy {
                    name: "user".into(),
                    policy: Policy::Rate(RateSpec {
                        limit: 1,
                        period_ms: 1_000,
                        burst: 1,
                    }),
                },
                Op::ConfigureDescriptors(Box::new(table())),
            ],
        ));
        assert_eq!(r[1], Ok(Outcome::Configured { changed: true }));
        s
    }

    fn desc(entries: &[(&str, &str)]) -> Descriptor {
        Descriptor {
            entries: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limit: None,
            hits_addend: None,
        }
    }

    fn ask(
        s: &mut State,
        descriptors: Vec<Descriptor>,
        hits: u32,
    ) -> Result<DescriptorDecision, CoreError> {
        let op = Op::Descriptors(Box::new(DescriptorRequest {
            domain: "edge".into(),
            descriptors,
            hits_addend: hits,
        }));
        match s.apply(&Command::single(s.now_ms(), op)).remove(0)? {
            Outcome::Descriptors(d) => Ok(d),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn names(d: &DescriptorDecision) -> Vec<Option<String>> {
        d.statuses
            .iter()
            .map(|s| s.limit.as_ref().map(|l| l.name.clone()))
            .collect()
    }

    /// Install [`table`] with `shadow` limits in shadow mode (digest 8: a new table).
    fn shadow_table(s: &mut State, shadow: &[(&str, &str)]) -> Reply {
        let op = Op::ConfigureDescriptorModes(Box::new(ModedDescriptorConfig {
            config: DescriptorConfig {
                source_digest: 8,
                ..table()
            },
            shadow: shadow
                .iter()
                .map(|(d, n)| (d.to_string(), n.to_string()))
                .collect(),
        }));
        s.apply(&Command::single(s.now_ms(), op)).remove(0)
    }

    fn ask_any(s: &mut State, descriptors: Vec<Descriptor>) -> Reply {
        let op = Op::Descriptors(Box::new(DescriptorRequest {
            domain: "edge".into(),
            descriptors,
            hits_addend: 1,
        }));
        s.apply(&Command::single(s.now_ms(), op)).remove(0)
    }

    /// A shadow limit over its limit answers OK, names itself, and is not charged;
    /// the request's enforced descriptors are still charged. Switching back to
    /// enforce (a plain table) denies at once.
    #[test]
    fn shadow_descriptor_limits_count_but_do_not_deny() {
        let mut s = state();
        assert_eq!(
            shadow_table(&mut s, &[("edge", "per_ip")]),
            Ok(Outcome::Configured { changed: true })
        );
        let ip = || desc(&[("remote_address", "203.0.113.9")]);
        let user = || desc(&[("tenant", "other"), ("user_id", "7")]);
        // per_ip is 3/min: three pass as usual.
        for _ in 0..3 {
            assert!(matches!(
                ask_any(&mut s, vec![ip(), user()]),
                Ok(Outcome::Descriptors(d)) if d.ok
            ));
        }
        // The fourth would be denied by per_ip: OK, named, per_ip not charged,
        // tenant_user charged (5/min: 4 used, 1 left).
        match ask_any(&mut s, vec![ip(), user()]) {
            Ok(Outcome::DescriptorsShadow {
                decision,
                shadow_denied,
                allowlisted,
            }) => {
                assert!(decision.ok);
                assert!(!decision.statuses[0].over_limit);
                assert_eq!(decision.statuses[0].remaining, 0);
                assert_eq!(decision.statuses[1].remaining, 1);
                assert!(allowlisted.is_empty());
                assert_eq!(
                    shadow_denied,
                    vec![ShadowDenial {
                        key: "envoy:edge/remote_address=203.0.113.9".into(),
                        policy: "per_ip".into(),
                    }]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // An enforced limit still denies a request with shadow limits in it, and
        // charges nothing: tenant_user has one left, cost 2 is over.
        let op = Op::Descriptors(Box::new(DescriptorRequest {
            domain: "edge".into(),
            descriptors: vec![ip(), user()],
            hits_addend: 2,
        }));
        match s.apply(&Command::single(s.now_ms(), op)).remove(0) {
            Ok(Outcome::DescriptorsShadow { decision, .. }) => {
                assert!(!decision.ok);
                assert!(!decision.statuses[0].over_limit);
                assert!(decision.statuses[1].over_limit);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            ask_any(&mut s, vec![user()]),
            Ok(Outcome::Descriptors(d)) if d.ok && d.statuses[0].remaining == 0
        ));
        // The snapshot keeps the mode.
        let restored = State::restore(&s.snapshot()).unwrap();
        assert_eq!(restored.descriptor_shadow, s.descriptor_shadow);
        assert_eq!(restored.digest(), s.digest());
        // One replicated change back to enforce: the next check is denied.
        let back = Op::ConfigureDescriptors(Box::new(DescriptorConfig {
            source_digest: 9,
            ..table()
        }));
        assert!(s.apply(&Command::single(s.now_ms(), back))[0].is_ok());
        assert!(s.descriptor_shadow.is_empty());
        assert!(matches!(
            ask_any(&mut s, vec![ip()]),
            Ok(Outcome::Descriptors(d)) if !d.ok && d.statuses[0].over_limit
        ));
    }

    /// A `policy` reference follows its policy's mode; a shadow list naming no
    /// rate limit of the table is refused whole.
    #[test]
    fn policy_references_follow_the_policys_mode_and_bad_names_are_refused() {
        let mut s = state();
        let refused = shadow_table(&mut s, &[("edge", "nope")]);
        assert!(
            matches!(&refused, Err(CoreError::Invalid { field, .. }) if field == "shadow"),
            "{refused:?}"
        );
        assert_eq!(s.descriptors_digest(), Some(7), "nothing installed");
        let path = || desc(&[("path", "/a")]);
        assert!(matches!(ask_any(&mut s, vec![path()]), Ok(Outcome::Descriptors(d)) if d.ok));
        assert!(matches!(ask_any(&mut s, vec![path()]), Ok(Outcome::Descriptors(d)) if !d.ok));
        let mode = Op::SetPolicyMode {
            name: "user".into(),
            mode: crate::command::Mode::Shadow,
        };
        assert!(s.apply(&Command::single(s.now_ms(), mode))[0].is_ok());
        match ask_any(&mut s, vec![path()]) {
            Ok(Outcome::DescriptorsShadow {
                decision,
                shadow_denied,
                ..
            }) => {
                assert!(decision.ok);
                assert_eq!(shadow_denied[0].policy, "user");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// An allowlisted descriptor passes uncharged; the others are decided as usual.
    #[test]
    fn allowlisted_descriptors_pass_uncharged() {
        use crate::command::{AllowEntry, AllowPattern};
        let mut s = state();
        let allow = |policy: Option<&str>, p: AllowPattern| {
            Op::Allow(AllowEntry {
                policy: policy.map(Into::into),
                pattern: p,
            })
        };
        let r = s.apply(&Command::new(
            1_000,
            vec![
                allow(Some("per_ip"), AllowPattern::Ip("2001:db8::/32".into())),
                allow(None, AllowPattern::Key("envoy:edge/tenant=acme/*".into())),
            ],
        ));
        assert!(r.iter().all(Result::is_ok), "{r:?}");
        let ask_all = |s: &mut State, descriptors: Vec<Descriptor>| {
            let op = Op::Descriptors(Box::new(DescriptorRequest {
                domain: "edge".into(),
                descriptors,
                hits_addend: 1,
            }));
            s.apply(&Command::single(s.now_ms(), op)).remove(0)
        };
        // per_ip is 3/min: an IPv6 client inside the /32 passes four times, uncharged.
        for _ in 0..4 {
            let r = ask_all(&mut s, vec![desc(&[("remote_address", "2001:db8::9")])]);
            match r {
                Ok(Outcome::DescriptorsAllowlisted {
                    decision,
                    allowlisted,
                }) => {
                    assert!(decision.ok);
                    assert_eq!(decision.statuses[0].remaining, 3);
                    assert_eq!(allowlisted.len(), 1);
                    assert_eq!(
                        allowlisted[0].entry.pattern,
                        AllowPattern::Ip("2001:db8::/32".into())
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Outside the /32 the limit applies: three pass, the fourth is over.
        for i in 0..4 {
            let d = ask(&mut s, vec![desc(&[("remote_address", "2001:db9::9")])], 1).unwrap();
            assert_eq!(d.ok, i < 3, "request {i}");
        }
        // The key glob exempts acme's users; the per-IP limit in the same request is
        // still charged (a second address, so its bucket is fresh).
        let r = ask_all(
            &mut s,
            vec![
                desc(&[("tenant", "acme"), ("user_id", "1")]),
                desc(&[("remote_address", "203.0.113.9")]),
            ],
        );
        match r {
            Ok(Outcome::DescriptorsAllowlisted {
                decision,
                allowlisted,
            }) => {
                assert!(decision.ok);
                assert_eq!(decision.statuses[0].remaining, 2, "acme user uncharged");
                assert_eq!(decision.statuses[1].remaining, 2, "per-IP charged");
                assert_eq!(allowlisted[0].key, "envoy:edge/tenant=acme/user_id=1");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_most_specific_match_wins_and_unmatched_descriptors_are_not_limited() {
        let mut s = state();
        let d = ask(
            &mut s,
            vec![
                desc(&[("tenant", "acme"), ("user_id", "1")]),
                desc(&[("tenant", "other"), ("user_id", "1")]),
                desc(&[("tenant", "beta7"), ("user_id", "1")]),
                desc(&[("tenant", "acme")]),
                desc(&[("unknown", "x")]),
                desc(&[("remote_address", "203.0.113.9"), ("extra", "x")]),
            ],
            0,
        )
        .unwrap();
        assert!(d.ok);
        assert_eq!(
            names(&d),
            vec![
                Some("acme_user".into()),
                Some("tenant_user".into()),
                None, // unlimited
                None, // the node reached has no limit of its own
                None,
                None, // entries beyond the tree
            ]
        );
        assert_eq!(d.statuses[0].remaining, 1);
        assert_eq!(d.statuses[1].remaining, 4);
        let l = d.statuses[0].limit.as_ref().unwrap();
        assert_eq!(l.key, "envoy:edge/tenant=acme/user_id=1");
        assert_eq!((l.requests_per_unit, l.unit), (2, Some(Unit::Minute)));
    }

    #[test]
    fn a_denied_request_charges_nothing() {
        let mut s = state();
        let ip = || desc(&[("remote_address", "10.0.0.1")]);
        let user = || desc(&[("tenant", "acme"), ("user_id", "9")]);
        // The user's 2/min runs out first; the IP (3/min) keeps one request.
        assert!(ask(&mut s, vec![ip(), user()], 0).unwrap().ok);
        assert!(ask(&mut s, vec![ip(), user()], 0).unwrap().ok);
        let before = s.digest();
        let d = ask(&mut s, vec![ip(), user()], 0).unwrap();
        assert!(!d.ok);
        assert!(!d.statuses[0].over_limit, "the IP alone would pass");
        assert_eq!(d.statuses[0].remaining, 1, "and was not charged");
        assert!(d.statuses[1].over_limit);
        assert!(d.statuses[1].retry_after_ms > 0);
        assert_eq!(s.digest(), before, "a denial changes no bucket");
        // So the IP's last request is still there for a request without the user.
        assert!(ask(&mut s, vec![ip()], 0).unwrap().ok);
        assert!(!ask(&mut s, vec![ip()], 0).unwrap().ok);
    }

    #[test]
    fn hits_addend_is_the_cost_and_zero_per_descriptor_is_a_peek() {
        let mut s = state();
        let ip = || desc(&[("remote_address", "10.0.0.2")]);
        // Request-level 0 means 1 (protobuf cannot tell it from unset).
        assert_eq!(ask(&mut s, vec![ip()], 0).unwrap().statuses[0].remaining, 2);
        assert_eq!(ask(&mut s, vec![ip()], 2).unwrap().statuses[0].remaining, 0);
        let mut peek = ip();
        peek.hits_addend = Some(0);
        let d = ask(&mut s, vec![peek.clone()], 5).unwrap();
        assert!(!d.ok, "a peek at an empty bucket is over the limit");
        // A descriptor's own hits_addend overrides the request's; more than the
        // burst can never pass.
        let mut big = desc(&[("remote_address", "10.0.0.3")]);
        big.hits_addend = Some(4);
        assert!(!ask(&mut s, vec![big], 1).unwrap().ok);
        let mut fits = desc(&[("remote_address", "10.0.0.3")]);
        fits.hits_addend = Some(3);
        assert!(ask(&mut s, vec![fits], 9).unwrap().ok);
        // Two descriptors on one bucket are charged together.
        let d = ask(&mut s, vec![desc(&[("remote_address", "10.0.0.4")]); 2], 1).unwrap();
        assert!(d.ok);
        assert_eq!(d.statuses[0].remaining, 1);
        assert_eq!(d.statuses[1].remaining, 1);
    }

    #[test]
    fn overrides_policies_and_unknown_domains() {
        let mut s = state();
        let mut o = desc(&[("anything", "x")]);
        o.limit = Some((1, Unit::Second));
        let d = ask(&mut s, vec![o.clone()], 1).unwrap();
        assert!(d.ok);
        assert_eq!(names(&d), vec![Some("override".into())]);
        assert!(!ask(&mut s, vec![o], 1).unwrap().ok);
        // A policy reference reads the replicated policy at decision time.
        let p = || desc(&[("path", "/a")]);
        assert!(ask(&mut s, vec![p()], 1).unwrap().ok);
        assert!(!ask(&mut s, vec![p()], 1).unwrap().ok);
        s.apply(&Command::single(
            s.now_ms(),
            Op::DeletePolicy {
                name: "user".into(),
            },
        ));
        assert!(matches!(
            ask(&mut s, vec![p()], 1),
            Err(CoreError::PolicyNotFound { .. })
        ));
        let op = Op::Descriptors(Box::new(DescriptorRequest {
            domain: "nope".into(),
            descriptors: vec![desc(&[("a", "b")])],
            hits_addend: 1,
        }));
        assert!(matches!(
            s.apply(&Command::single(0, op)).remove(0),
            Err(CoreError::Invalid { field, .. }) if field == "domain"
        ));
    }

    #[test]
    fn keys_are_escaped_and_bounded() {
        let k = descriptor_key("edge", &[("ip".into(), "2001:db8::1".into())]);
        assert_eq!(k, "envoy:edge/ip=2001+3Adb8+3A+3A1");
        assert!(validate::key("k", &k).is_ok());
        // `/` and `=` inside values cannot forge another descriptor's key.
        let a = descriptor_key("d", &[("a".into(), "b/c=d".into())]);
        let b = descriptor_key("d", &[("a".into(), "b".into()), ("c".into(), "d".into())]);
        assert_ne!(a, b);
        assert_eq!(
            descriptor_key("d", &[("h".into(), String::new())]),
            "envoy:d/h="
        );
        let long = descriptor_key("d", &[("path".into(), "x".repeat(300))]);
        assert!(long.starts_with("envoy:d/h=") && long.len() == 10 + 32);
        assert!(validate::key("k", &long).is_ok());
    }

    #[test]
    fn tables_are_validated_with_the_path_of_the_bad_entry() {
        let mut t = table();
        t.domains[0].descriptors[1].descriptors[0].limit = rate("acme_user", 0, Unit::Second);
        let e = validate_config(&t, &Settings::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("envoy.domains[0].descriptors[1].descriptors[0].rate_limit"),
            "{e}"
        );
        let mut t = table();
        t.domains[0]
            .descriptors
            .push(node("remote_address", None, None));
        let e = validate_config(&t, &Settings::default()).unwrap_err();
        assert!(
            e.to_string().contains("envoy.domains[0].descriptors[5]"),
            "{e}"
        );
        // A bad table installs nothing.
        let mut s = State::new();
        let r = s.apply(&Command::single(0, Op::ConfigureDescriptors(Box::new(t))));
        assert!(r[0].is_err());
        assert_eq!(s.descriptors, DescriptorTables::default());
    }

    #[test]
    fn tables_survive_snapshots_and_a_version_2_snapshot_restores_without_them() {
        let mut s = state();
        assert!(
            ask(&mut s, vec![desc(&[("remote_address", "1.2.3.4")])], 1)
                .unwrap()
                .ok
        );
        let back = State::restore(&s.snapshot()).unwrap();
        assert_eq!(back.descriptors, s.descriptors);
        assert_eq!(back.digest(), s.digest());
        // The cut writes the same bytes as snapshot().
        let mut cut = s.begin_cut();
        while !s.continue_cut(&mut cut, 1).unwrap() {}
        assert_eq!(s.end_cut(cut).unwrap().into_bytes(), s.snapshot());
        // Version 2 = these bytes without the trailing section, version 2 in front.
        let mut v2 = State::new().snapshot();
        let tail = bincode::serialize(&DescriptorTables::default()).unwrap();
        v2.truncate(v2.len() - tail.len());
        v2[..4].copy_from_slice(&2u32.to_le_bytes());
        let old = State::restore(&v2).unwrap();
        assert_eq!(old.descriptors, DescriptorTables::default());
        // The same digest is not installed twice (a restart keeps runtime state).
        let r = s.apply(&Command::single(
            0,
            Op::ConfigureDescriptors(Box::new(table())),
        ));
        assert_eq!(r[0], Ok(Outcome::Configured { changed: false }));
    }
}
