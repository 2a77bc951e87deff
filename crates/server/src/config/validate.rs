//! Checks across the whole configuration, run once after parsing.
//!
//! Types already refuse what a single value cannot be (a zero timeout, a negative
//! count); this checks what values mean together (unique ids and addresses, timing
//! that nests) and runs the state machine's own `quorate_core::validate` rules over
//! the replicated part, so a file the core would reject stops the node at startup.

use std::collections::BTreeSet;

use quorate_core::{validate, Policy};

use super::ClusterConfig;

/// Check everything that can be checked without touching the network or disk.
/// Positivity of durations and counts is already enforced by their types (`units`).
pub fn cluster(c: &ClusterConfig) -> Result<(), String> {
    if c.cluster_id.trim().is_empty() {
        return Err("cluster_id must not be empty".into());
    }
    if c.nodes.is_empty() {
        return Err("at least one [[nodes]] entry is required".into());
    }
    let mut ids = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for n in &c.nodes {
        if n.id == 0 {
            return Err("node id 0 is reserved; ids start at 1".into());
        }
        if !ids.insert(n.id) {
            return Err(format!("duplicate node id {}", n.id));
        }
        let grpc = n.grpc_addr.iter().map(|a| ("grpc_addr", a));
        for (what, addr) in [("api_addr", &n.api_addr), ("raft_addr", &n.raft_addr)]
            .into_iter()
            .chain(grpc)
        {
            check_addr(addr).map_err(|m| format!("node {} {what} {addr:?}: {m}", n.id))?;
            if !addrs.insert(addr.as_str()) {
                return Err(format!(
                    "node {} {what} {addr:?} is used twice (every api_addr, raft_addr and grpc_addr must be distinct)",
                    n.id
                ));
            }
        }
        if let Some(url) = &n.advertise_api {
            check_base_url(url).map_err(|m| format!("node {} advertise_api {url:?}: {m}", n.id))?;
        }
    }

    timing(c)?;
    replicated(c)
}

/// Raft and server timing must nest: heartbeats well inside election timeouts, and a
/// request timeout longer than a heartbeat.
fn timing(c: &ClusterConfig) -> Result<(), String> {
    let r = &c.raft;
    let (hb, min, max) = (
        r.heartbeat_interval_ms.ms(),
        r.election_timeout_min_ms.ms(),
        r.election_timeout_max_ms.ms(),
    );
    if min <= hb {
        return Err(format!(
            "raft.election_timeout_min_ms ({min}) must exceed raft.heartbeat_interval_ms ({hb})"
        ));
    }
    if max <= min {
        return Err(format!(
            "raft.election_timeout_max_ms ({max}) must exceed raft.election_timeout_min_ms ({min})"
        ));
    }
    let request = c.server.request_timeout_ms.ms();
    if request <= hb {
        return Err(format!(
            "server.request_timeout_ms ({request}) must exceed raft.heartbeat_interval_ms ({hb})"
        ));
    }
    Ok(())
}

/// The replicated settings, policies and tiers, by the state machine's own rules.
fn replicated(c: &ClusterConfig) -> Result<(), String> {
    let settings = c.settings();
    validate::settings(&settings).map_err(|e| format!("[limits]: {e}"))?;
    let max = quorate_core::command::MAX_ADMIN_BOUND;
    for (name, v) in [
        ("max_allowlist", c.limits.max_allowlist),
        ("audit_entries", c.limits.audit_entries),
    ] {
        if v == 0 || v > max {
            return Err(format!("limits.{name} ({v}) must be in 1..={max}"));
        }
    }
    if c.limits.default_ttl_ms.ms() > c.limits.max_ttl_ms {
        return Err(format!(
            "limits.default_ttl_ms ({}) must be in 1..=limits.max_ttl_ms ({})",
            c.limits.default_ttl_ms.ms(),
            c.limits.max_ttl_ms
        ));
    }

    // An hour: a wait is a connection held open on this node, and the core moves a
    // waiter's deadline only by a retry, so longer waits are better polled.
    const MAX_WAIT_CEILING_MS: u64 = 3_600_000;
    if c.limits.max_wait_ms > MAX_WAIT_CEILING_MS {
        return Err(format!(
            "limits.max_wait_ms ({}) must be in 0..={MAX_WAIT_CEILING_MS}",
            c.limits.max_wait_ms
        ));
    }

    let mut names = BTreeSet::new();
    for p in &c.policies {
        let name = p.name();
        validate::name("name", name).map_err(|e| format!("policy {name:?}: {e}"))?;
        if !names.insert(name) {
            return Err(format!("duplicate policy name {name:?}"));
        }
        match p.to_policy() {
            Policy::Concurrency { pattern, limit } => {
                validate::pattern(&pattern).map_err(|e| format!("policy {name:?}: {e}"))?;
                validate::limit("limit", limit, &settings)
                    .map_err(|e| format!("policy {name:?}: {e}"))?;
            }
            Policy::Rate(spec) => {
                validate::rate_spec(&spec, &settings)
                    .map_err(|e| format!("policy {name:?}: {e}"))?;
            }
        }
    }
    for (name, m) in &c.tiers {
        validate::name("name", name).map_err(|e| format!("tier {name:?}: {e}"))?;
        let milli = m
            .milli()
            .ok_or_else(|| format!("tier {name:?}: multiplier must be a positive number"))?;
        validate::multiplier(milli).map_err(|e| format!("tier {name:?}: {e}"))?;
    }
    c.envoy.check(&settings, &c.policies())
}

/// `host:port` with a non-zero port (host names are allowed: containers).
/// An advertised API base URL: `http://` or `https://`, a host, nothing after the
/// authority (no path, query, fragment or credentials). Clients put it in requests
/// as given and send their bearer token there, so it must say exactly where.
pub fn check_base_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("must start with http:// or https://".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    match parsed.host_str() {
        Some(h) if !h.is_empty() => {}
        _ => return Err("missing host".into()),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must be scheme://host[:port] only (no path, query or fragment)".into());
    }
    Ok(())
}

pub fn check_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_string())?;
    if host.is_empty() {
        return Err("missing host".into());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be in 1..=65535".into()),
        Ok(_) => Ok(()),
    }
}
