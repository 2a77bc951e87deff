//! Allowlists: keys and addresses exempt from rate limits, managed at run time.
//!
//! An entry ([`AllowEntry`]) is a pattern and a scope. The pattern is a key glob
//! (`user:admin-*`: `*` is any run of characters, everything else matches itself) or
//! an IPv4/IPv6 address or CIDR (`203.0.113.9`, `10.0.0.0/8`, `2001:db8::/32`). The
//! scope is one named policy, or every check (global).
//!
//! ## Which checks an entry matches
//! - A rate check of key `K` against policy `P` (or an inline limit, which has no
//!   policy) is allowlisted when a global entry or an entry of `P` matches: a key glob
//!   that matches `K` whole, or a CIDR that contains `K`'s address.
//! - `K`'s address: the longest suffix of `K` that is the whole key or follows a `:`
//!   and parses as an IPv4 or IPv6 address (`http:ip:203.0.113.9` → 203.0.113.9,
//!   `ip:2001:db8::1` → 2001:db8::1, `user:42` → none). An IPv4-mapped IPv6 address
//!   (`::ffff:10.0.0.1`) counts as its IPv4 address.
//! - An Envoy descriptor's scope is its limit's name (the policy it refers to, or the
//!   table limit's name); its key glob is matched against the descriptor's bucket
//!   key, and its CIDRs against every entry value that is an address
//!   (`remote_address=203.0.113.9`).
//!
//! An allowlisted check is allowed and charges nothing; the rest of the request is
//! decided as usual (all or nothing among them). The answer lists each allowlisted
//! key and the entry that matched. Slot acquires are never allowlisted: a slot guards
//! a resource of fixed capacity, and a caller exempt from it would over-admit that
//! resource for everyone else (rate limits ration a flow; an exempt flow harms no
//! one's slot). Entries are bounded by [`AdminLimits::max_allowlist`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::command::{AdminLimits, AllowEntry, AllowPattern, MAX_ADMIN_BOUND};
use crate::error::CoreError;
use crate::outcome::{Allowlisted, Outcome, Reply};
use crate::validate;

use super::State;

/// A parsed CIDR: the network's address bits (IPv4 in the low 32) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpNet {
    v6: bool,
    bits: u128,
    prefix: u8,
}

impl IpNet {
    /// Parse `addr` or `addr/prefix`; host bits beyond the prefix are cleared.
    pub(crate) fn parse(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
        let (v6, bits, max) = match addr {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32u8),
            IpAddr::V6(a) => (true, u128::from(a), 128u8),
        };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("prefix length {p:?} is not in 0..={max}")),
            },
        };
        Ok(IpNet {
            v6,
            bits: bits & Self::mask(v6, prefix),
            prefix,
        })
    }

    fn mask(v6: bool, prefix: u8) -> u128 {
        let width = if v6 { 128 } else { 32 };
        let all = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        match u32::from(width - prefix) {
            128 => 0,
            host => all & !((1u128 << host) - 1),
        }
    }

    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        let (v6, bits) = match addr.to_canonical() {
            IpAddr::V4(a) => (false, u128::from(u32::from(a))),
            IpAddr::V6(a) => (true, u128::from(a)),
        };
        v6 == self.v6 && bits & Self::mask(self.v6, self.prefix) == self.bits
    }

    /// `network/prefix`, the form entries are stored in.
    pub(crate) fn canonical(&self) -> String {
        let addr = if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.bits))
        } else {
            // The low 32 bits hold the IPv4 network (see `parse`).
            IpAddr::V4(Ipv4Addr::from(u32::try_from(self.bits).unwrap_or(0)))
        };
        format!("{addr}/{}", self.prefix)
    }
}

/// The address a key ends with (see the module docs), if any.
pub fn key_addr(key: &str) -> Option<IpAddr> {
    std::iter::once(0)
        .chain(key.match_indices(':').map(|(i, _)| i + 1))
        .find_map(|i| key[i..].parse::<IpAddr>().ok())
        .map(|a| a.to_canonical())
}

/// Does `glob` (`*` = any run of characters) match all of `text`?
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let (g, t) = (glob.as_bytes(), text.as_bytes());
    let (mut gi, mut ti) = (0, 0);
    // The last `*` seen and the text position it is currently made to cover up to:
    // on a mismatch, let that star swallow one more byte and retry (linear for one
    // star, O(n·m) at worst; both sides are at most 256 bytes).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && g[gi] == b'*' {
            star = Some((gi, ti));
            gi += 1;
        } else if gi < g.len() && g[gi] == t[ti] {
            gi += 1;
            ti += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == b'*')
}

/// An entry's pattern, parsed once when the entry is added or restored.
#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    Key(String),
    Net(IpNet),
}

impl Matcher {
    fn of(p: &AllowPattern) -> Matcher {
        match p {
            AllowPattern::Key(g) => Matcher::Key(g.clone()),
            // Stored entries were validated on the way in; a restored snapshot is
            // checked by `rebuild_allow_index`.
            AllowPattern::Ip(t) => IpNet::parse(t)
                .map(Matcher::Net)
                .unwrap_or(Matcher::Key(String::new())),
        }
    }

    fn matches(&self, key: &str, addrs: &[IpAddr]) -> bool {
        match self {
            Matcher::Key(g) => !g.is_empty() && glob_matches(g, key),
            Matcher::Net(n) => addrs.iter().any(|a| n.contains(*a)),
        }
    }
}

/// Validate an entry and put its pattern in canonical form.
pub fn canonical_entry(e: &AllowEntry) -> Result<AllowEntry, CoreError> {
    if let Some(p) = &e.policy {
        validate::name("policy", p)?;
    }
    let pattern = match &e.pattern {
        AllowPattern::Key(g) => {
            // A glob is a key in which `*` may appear anywhere.
            validate::key("key", &g.replace('*', "a"))?;
            AllowPattern::Key(g.clone())
        }
        AllowPattern::Ip(t) => {
            validate::check_len("ip", t, 64)?;
            let net = IpNet::parse(t)
                .map_err(|why| CoreError::invalid("ip", format!("bad CIDR {t:?}: {why}")))?;
            AllowPattern::Ip(net.canonical())
        }
    };
    Ok(AllowEntry {
        policy: e.policy.clone(),
        pattern,
    })
}

impl State {
    /// The allowlist, sorted (global entries first, then by policy).
    pub fn allowlist(&self) -> impl Iterator<Item = &AllowEntry> {
        self.allow.iter()
    }

    /// True when the allowlist holds any entry (the fast path skips matching).
    pub(crate) fn has_allowlist(&self) -> bool {
        !self.allow_index.is_empty()
    }

    /// The bounds of the admin records.
    pub fn admin_limits(&self) -> AdminLimits {
        self.admin_limits
    }

    /// Re-parse every entry (after a change or a restore). Entries are few (bounded)
    /// and changes rare, so the index is rebuilt whole.
    pub(super) fn rebuild_allow_index(&mut self) -> Result<(), CoreError> {
        let mut index = Vec::with_capacity(self.allow.len());
        for e in &self.allow {
            if canonical_entry(e).as_ref() != Ok(e) {
                return Err(CoreError::CorruptSnapshot(format!(
                    "allowlist entry {e:?} is not in canonical form"
                )));
            }
            index.push((e.clone(), Matcher::of(&e.pattern)));
        }
        self.allow_index = index;
        Ok(())
    }

    pub(super) fn allow(&mut self, e: &AllowEntry) -> Reply {
        let e = canonical_entry(e)?;
        if self.allow.contains(&e) {
            return Ok(Outcome::AllowlistChanged { changed: false });
        }
        let max = self.admin_limits.max_allowlist;
        if self.allow.len() >= max as usize {
            return Err(CoreError::invalid(
                "allowlist",
                format!("full: max_allowlist ({max}) entries reached; remove one first"),
            ));
        }
        self.allow.insert(e.clone());
        self.allow_index.push((e.clone(), Matcher::of(&e.pattern)));
        // Keep the index in the set's order, so the first match is the same entry
        // on every replica and after a restore.
        self.allow_index.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Outcome::AllowlistChanged { changed: true })
    }

    pub(super) fn disallow(&mut self, e: &AllowEntry) -> Reply {
        let e = canonical_entry(e)?;
        let changed = self.allow.remove(&e);
        if changed {
            self.allow_index.retain(|(x, _)| x != &e);
        }
        Ok(Outcome::AllowlistChanged { changed })
    }

    pub(super) fn set_admin_limits(&mut self, l: &AdminLimits) -> Reply {
        for (field, v) in [
            ("max_allowlist", l.max_allowlist),
            ("audit_entries", l.audit_entries),
        ] {
            if v == 0 || v > MAX_ADMIN_BOUND {
                return Err(CoreError::invalid(
                    field,
                    format!("must be in 1..={MAX_ADMIN_BOUND}"),
                ));
            }
        }
        // Lowering the bound keeps the entries already there (none is dropped
        // silently); new ones are refused until the list is below it.
        self.admin_limits = *l;
        self.trim_audit();
        Ok(Outcome::AdminLimitsSet(*l))
    }

    /// The entry that exempts a check of `key` under `policy` (`None`: an inline
    /// limit), with `addrs` the addresses it carries; the first in list order.
    pub(crate) fn allowlisted(
        &self,
        policy: Option<&str>,
        key: &str,
        addrs: &[IpAddr],
    ) -> Option<Allowlisted> {
        self.allow_index
            .iter()
            .find(|(e, m)| {
                (e.policy.is_none() || e.policy.as_deref() == policy) && m.matches(key, addrs)
            })
            .map(|(e, _)| Allowlisted {
                key: key.to_string(),
                entry: e.clone(),
            })
    }

    /// [`State::allowlisted`] for a rate check's key (its address from [`key_addr`]).
    pub(crate) fn allowlisted_key(&self, policy: Option<&str>, key: &str) -> Option<Allowlisted> {
        if self.allow_index.is_empty() {
            return None;
        }
        let addrs: Vec<IpAddr> = key_addr(key).into_iter().collect();
        self.allowlisted(policy, key, &addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_keys() {
        assert!(glob_matches("user:admin-*", "user:admin-7"));
        assert!(glob_matches("user:admin-*", "user:admin-"));
        assert!(!glob_matches("user:admin-*", "user:admins"));
        assert!(glob_matches("*:203.0.113.9", "http:ip:203.0.113.9"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxbyy"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("user", "user:1"));
        assert!(glob_matches("a*a", "aaa"));
    }

    #[test]
    fn key_addresses() {
        let a = |s: &str| key_addr(s).map(|a| a.to_string());
        assert_eq!(a("http:ip:203.0.113.9").as_deref(), Some("203.0.113.9"));
        assert_eq!(a("203.0.113.9").as_deref(), Some("203.0.113.9"));
        assert_eq!(a("ip:2001:db8::1").as_deref(), Some("2001:db8::1"));
        assert_eq!(a("ip:::ffff:10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(a("user:42"), None);
        assert_eq!(a("user:admin"), None);
    }

    #[test]
    fn cidrs_parse_canonically_and_contain() {
        let n = |s: &str| IpNet::parse(s).unwrap();
        assert_eq!(n("10.1.2.3/8").canonical(), "10.0.0.0/8");
        assert_eq!(n("203.0.113.9").canonical(), "203.0.113.9/32");
        assert_eq!(n("2001:db8:ffff::1/32").canonical(), "2001:db8::/32");
        assert_eq!(n("::/0").canonical(), "::/0");
        assert_eq!(n("0.0.0.0/0").canonical(), "0.0.0.0/0");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(n("10.0.0.0/8").contains(ip("10.255.0.1")));
        assert!(!n("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(n("10.0.0.0/8").contains(ip("::ffff:10.0.0.1")));
        assert!(!n("::/0").contains(ip("10.0.0.1")));
        assert!(n("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!n("2001:db8::/32").contains(ip("2001:db9::5")));
        assert!(n("2001:db8::1/128").contains(ip("2001:db8::1")));
        assert!(!n("2001:db8::1/128").contains(ip("2001:db8::2")));
        for bad in [
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
            "",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }
}
