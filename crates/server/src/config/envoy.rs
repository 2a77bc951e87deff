//! `[envoy]`: the descriptor table of the Envoy rate limit service (`grpc::ratelimit`).
//!
//! In the spirit of envoyproxy/ratelimit's YAML, in `cluster.toml`:
//!
//! ```toml
//! [[envoy.domains]]
//! domain = "edge"
//!
//! [[envoy.domains.descriptors]]
//! key = "remote_address"                      # any value: one bucket per address
//! rate_limit = { requests_per_unit = 60, unit = "minute", burst = 20 }
//!
//! [[envoy.domains.descriptors]]
//! key = "user_id"
//! policy = "user"                             # a named rate policy of [[policies]]
//! ```
//!
//! A descriptor entry has a `key`, an optional `value` (exact, or a prefix ending in
//! `*`; absent: any value), and at most one of `rate_limit` (with an optional `name`
//! shown to Envoy and in headers), `policy` or `unlimited = true`, and/or nested
//! `descriptors` matching the next entry. An entry with a `rate_limit` may say
//! `shadow_mode = true` (envoyproxy/ratelimit's name): the limit is decided and
//! counted but never denies, and Envoy is told which limits would have denied (see
//! `quorate_core::descriptors`); an entry with `policy` follows that policy's `mode`.
//! The table is **replicated** like
//! `[[policies]]`: [`EnvoySection::core_config`] becomes an
//! `Op::ConfigureDescriptors` that the leader proposes whenever the state holds
//! another digest; matching and deciding happen in `quorate_core::descriptors`.
//! [`EnvoySection::check`] runs the core's own validation at startup, so a bad entry
//! stops the node with its path (`envoy.domains[0].descriptors[1].rate_limit`).

use quorate_core::descriptors::{
    DescriptorConfig, DescriptorNode, Domain, ModedDescriptorConfig, NodeLimit, Unit,
};
use quorate_core::{Op, Policy, Settings};
use serde::{Deserialize, Serialize};

/// `[envoy]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvoySection {
    pub domains: Vec<DomainConfig>,
}

/// One `[[envoy.domains]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<DescriptorEntry>,
}

/// One descriptor entry (nested through `descriptors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorEntry {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlimited: bool,
    /// The entry's `rate_limit` runs in shadow mode: decided and counted, never
    /// denying. Only with `rate_limit` (a `policy` follows the policy's mode).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow_mode: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<DescriptorEntry>,
}

/// `rate_limit = { requests_per_unit, unit, burst?, name? }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_unit: u32,
    pub unit: UnitConfig,
    /// Defaults to `requests_per_unit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Shown as `current_limit.name` and as the policy name of the RateLimit headers;
    /// defaults to the entry's keys joined with `.` (`tenant.user_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Envoy's units, lower case (`month` and `year` exceed quorate's longest period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitConfig {
    Second,
    Minute,
    Hour,
    Day,
    Week,
}

impl From<UnitConfig> for Unit {
    fn from(u: UnitConfig) -> Unit {
        match u {
            UnitConfig::Second => Unit::Second,
            UnitConfig::Minute => Unit::Minute,
            UnitConfig::Hour => Unit::Hour,
            UnitConfig::Day => Unit::Day,
            UnitConfig::Week => Unit::Week,
        }
    }
}

/// A default limit name from the keys on the way to an entry (name charset only).
fn default_name(keys: &[&str]) -> String {
    let joined = keys.join(".");
    let mut name: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(quorate_core::validate::MAX_NAME_LEN);
    name
}

/// The core form of `entries`; the names of their shadow-mode rate limits are
/// added to `shadow`.
fn to_nodes(
    path: &str,
    keys: &mut Vec<String>,
    entries: &[DescriptorEntry],
    shadow: &mut Vec<String>,
) -> Result<Vec<DescriptorNode>, String> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let here = format!("{path}.descriptors[{i}]");
        if e.shadow_mode && e.rate_limit.is_none() {
            return Err(format!(
                "{here}: shadow_mode needs a rate_limit (an entry with a policy follows \
                 the policy's mode: set mode = \"shadow\" on the policy)"
            ));
        }
        keys.push(e.key.clone());
        let limit = match (&e.rate_limit, &e.policy, e.unlimited) {
            (None, None, false) => None,
            (Some(r), None, false) => Some(NodeLimit::Rate {
                name: r.name.clone().unwrap_or_else(|| {
                    default_name(&keys.iter().map(String::as_str).collect::<Vec<_>>())
                }),
                requests_per_unit: r.requests_per_unit,
                unit: r.unit.into(),
                burst: r.burst.unwrap_or(r.requests_per_unit),
            }),
            (None, Some(p), false) => Some(NodeLimit::Policy { name: p.clone() }),
            (None, None, true) => Some(NodeLimit::Unlimited),
            _ => {
                return Err(format!(
                    "{here}: give at most one of rate_limit, policy and unlimited"
                ))
            }
        };
        if let (true, Some(NodeLimit::Rate { name, .. })) = (e.shadow_mode, &limit) {
            if !shadow.contains(name) {
                shadow.push(name.clone());
            }
        }
        let descriptors = to_nodes(&here, keys, &e.descriptors, shadow)?;
        keys.pop();
        out.push(DescriptorNode {
            key: e.key.clone(),
            value: e.value.clone(),
            limit,
            descriptors,
        });
    }
    Ok(out)
}

fn policy_refs<'a>(path: String, nodes: &'a [DescriptorNode], out: &mut Vec<(String, &'a str)>) {
    for (i, n) in nodes.iter().enumerate() {
        let here = format!("{path}.descriptors[{i}]");
        if let Some(NodeLimit::Policy { name }) = &n.limit {
            out.push((format!("{here}.policy"), name));
        }
        policy_refs(here, &n.descriptors, out);
    }
}

impl EnvoySection {
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The core's form of the table, with its digest (which covers the shadow
    /// limits too), and its shadow limits as `(domain, limit name)`.
    pub fn core_tables(&self) -> Result<ModedDescriptorConfig, String> {
        let mut domains = Vec::with_capacity(self.domains.len());
        let mut shadow = Vec::new();
        for (i, d) in self.domains.iter().enumerate() {
            let path = format!("envoy.domains[{i}]");
            let mut names = Vec::new();
            domains.push(Domain {
                name: d.domain.clone(),
                descriptors: to_nodes(&path, &mut Vec::new(), &d.descriptors, &mut names)?,
            });
            shadow.extend(names.into_iter().map(|n| (d.domain.clone(), n)));
        }
        // The digest covers the core form (bincode is the log's own encoding, so it
        // is as stable as the log), behind a version string; the shadow list only
        // when there is one, so a table without shadow limits keeps the digest it
        // had before shadow mode existed (and is not proposed again on upgrade).
        let mut buf = b"quorate-envoy-v1".to_vec();
        buf.extend_from_slice(&bincode::serialize(&domains).map_err(|e| e.to_string())?);
        if !shadow.is_empty() {
            buf.extend_from_slice(b"shadow");
            buf.extend_from_slice(&bincode::serialize(&shadow).map_err(|e| e.to_string())?);
        }
        Ok(ModedDescriptorConfig {
            config: DescriptorConfig {
                source_digest: quorate_core::state::fnv1a(&buf),
                domains,
            },
            shadow,
        })
    }

    /// The core's form of the table, with its digest.
    pub fn core_config(&self) -> Result<DescriptorConfig, String> {
        Ok(self.core_tables()?.config)
    }

    /// The op that installs this table: `Op::ConfigureDescriptors`, or
    /// `Op::ConfigureDescriptorModes` when an entry is in shadow mode (a newer op,
    /// written only by a file that uses the newer feature; see docs/upgrading.md).
    pub fn core_op(&self) -> Result<(u64, Op), String> {
        let t = self.core_tables()?;
        let digest = t.config.source_digest;
        Ok(if t.shadow.is_empty() {
            (digest, Op::ConfigureDescriptors(Box::new(t.config)))
        } else {
            (digest, Op::ConfigureDescriptorModes(Box::new(t)))
        })
    }

    /// Startup validation: the core's rules (with the file's settings) and that every
    /// `policy` names a rate policy of the file.
    pub fn check(&self, settings: &Settings, policies: &[(String, Policy)]) -> Result<(), String> {
        let c = self.core_config()?;
        quorate_core::descriptors::validate_config(&c, settings).map_err(|e| e.to_string())?;
        let mut refs = Vec::new();
        for (i, d) in c.domains.iter().enumerate() {
            policy_refs(format!("envoy.domains[{i}]"), &d.descriptors, &mut refs);
        }
        for (path, name) in refs {
            if !policies
                .iter()
                .any(|(n, p)| n == name && matches!(p, Policy::Rate(_)))
            {
                return Err(format!(
                    "{path}: no rate policy named {name:?} in [[policies]]"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EnvoySection, String> {
        #[derive(Deserialize)]
        struct File {
            envoy: EnvoySection,
        }
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let rate = Policy::Rate(quorate_core::RateSpec {
            limit: 300,
            period_ms: 60_000,
            burst: 300,
        });
        f.envoy
            .check(&Settings::default(), &[("user".into(), rate)])?;
        Ok(f.envoy)
    }

    const GOOD: &str = r#"
[[envoy.domains]]
domain = "edge"
[[envoy.domains.descriptors]]
key = "remote_address"
rate_limit = { requests_per_unit = 60, unit = "minute", burst = 20 }
[[envoy.domains.descriptors]]
key = "tenant"
value = "acme"
  [[envoy.domains.descriptors.descriptors]]
  key = "user_id"
  policy = "user"
"#;

    #[test]
    fn a_typical_table_parses_into_the_core_form() {
        let e = parse(GOOD).unwrap();
        let c = e.core_config().unwrap();
        let d = &c.domains[0].descriptors;
        assert_eq!(
            d[0].limit,
            Some(NodeLimit::Rate {
                name: "remote_address".into(),
                requests_per_unit: 60,
                unit: Unit::Minute,
                burst: 20
            })
        );
        assert_eq!(
            d[1].descriptors[0].limit,
            Some(NodeLimit::Policy {
                name: "user".into()
            })
        );
        // The digest follows the content.
        let mut other = e.clone();
        other.domains[0].descriptors[0].value = Some("x".into());
        assert_ne!(c.source_digest, other.core_config().unwrap().source_digest);
        assert_eq!(c.source_digest, e.core_config().unwrap().source_digest);
    }

    /// `shadow_mode` on a rate limit makes the op the moded one, naming the limit;
    /// the digest changes with the mode, and a table without shadow limits keeps
    /// the plain op and its old digest.
    #[test]
    fn shadow_mode_entries_make_the_moded_op() {
        let plain = parse(GOOD).unwrap();
        let (plain_digest, op) = plain.core_op().unwrap();
        assert!(matches!(op, Op::ConfigureDescriptors(_)));
        assert_eq!(plain_digest, plain.core_config().unwrap().source_digest);
        let text = GOOD.replacen("burst = 20 }", "burst = 20 }\nshadow_mode = true", 1);
        let moded = parse(&text).unwrap();
        let (digest, op) = moded.core_op().unwrap();
        assert_ne!(digest, plain_digest);
        match op {
            Op::ConfigureDescriptorModes(m) => {
                assert_eq!(m.shadow, vec![("edge".into(), "remote_address".into())]);
                assert_eq!(m.config.domains, plain.core_config().unwrap().domains);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_offending_entry() {
        for (edit, want) in [
            (
                ("unit = \"minute\"", "unit = \"month\""),
                "unknown variant `month`",
            ),
            (
                ("requests_per_unit = 60", "requests_per_unit = 0"),
                "envoy.domains[0].descriptors[0].rate_limit",
            ),
            (
                ("policy = \"user\"", "policy = \"nope\""),
                "envoy.domains[0].descriptors[1].descriptors[0].policy: no rate policy named \"nope\"",
            ),
            (
                ("policy = \"user\"", "policy = \"user\"\nunlimited = true"),
                "envoy.domains[0].descriptors[1].descriptors[0]: give at most one",
            ),
            (
                ("value = \"acme\"", "value = \"acme\"\nshadow_mode = true"),
                "envoy.domains[0].descriptors[1]: shadow_mode needs a rate_limit",
            ),
            (
                ("policy = \"user\"", "policy = \"user\"\nshadow_mode = true"),
                "envoy.domains[0].descriptors[1].descriptors[0]: shadow_mode needs a rate_limit",
            ),
            (
                ("  policy = \"user\"\n", ""),
                "envoy.domains[0].descriptors[1].descriptors[0]",
            ),
        ] {
            let text = GOOD.replacen(edit.0, edit.1, 1);
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{edit:?}: {e}");
        }
    }
}
