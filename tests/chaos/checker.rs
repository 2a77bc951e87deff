//! The chaos checker: decides from a recorded history alone whether the cluster broke
//! its promises. It is *sound* — it never blames a correct system — because it only
//! reasons about what is certain given the recorded outcomes:
//!
//! - **Certainly live.** A lease with an acknowledged grant is certainly live from the
//!   grant's return until the first release *invocation* for its lease_id, or until its
//!   expiry measured conservatively: the FIRST acquire invocation for that lease_id
//!   plus the TTL, minus a clock slack (the leader stamps entries with its wall clock at
//!   or after every invocation; the slack covers millisecond rounding and the distance
//!   between the test's monotonic clock and the wall clock). An acknowledged renew that
//!   returned while the lease was certainly live extends the bound to
//!   renew-invoke + TTL − slack (only when every TTL of the lease is the same; otherwise
//!   a renew may shorten a lease, and every renew that may have been applied caps it).
//!   Unknown outcomes never lengthen an interval.
//! - **No over-admission.** At no instant do more certainly-live leases overlap on a
//!   key than its limit; a linearizable read never lists more leases than the limit.
//! - **No lost acknowledgement.** A lease certainly live over a whole read (or renew)
//!   must be in the read's list (or renewed, not `lease_not_found`). A lease whose
//!   release was acknowledged must not appear in a read invoked afterwards — unless
//!   some acquire attempt for it had an unknown outcome (a delayed duplicate may be
//!   applied later). A read must not list a lease nobody ever asked for.
//! - **Fencing.** One token never names two lease_ids; a grant that returned before
//!   the first acquire invocation for another lease_id has a smaller token.
//! - **Rate limits.** GCRA admits at most `burst + window × limit / period` checks in
//!   any window (plus one for rounding). Allowed checks are decided between invoke and
//!   return, so counting only checks that lie entirely inside a window, and widening the
//!   window by the slack at each end, is a lower bound on what the server admitted.
//! - **FIFO (the wait queue).** A waiting acquire A made in a single attempt, seen in
//!   key K's queue by a read that returned before B's first acquire was invoked, and
//!   seen there again by a read invoked after B's grant returned, waited on K over the
//!   whole of B's request (a waiter that leaves never comes back without a new
//!   attempt). Then no acquire B on K — waiting or not — may have been granted: B
//!   joined after A and A was still waiting (no barging, FIFO).
//! - **Contract.** Responses the contract rules out (500s, 400s for valid requests)
//!   are violations too.
//!
//! The unit tests at the bottom run the checker on small synthetic histories: correct
//! ones pass, each kind of broken one fails, and unknown outcomes cause no false alarm.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::history::{Call, Micros, Op, Outcome};

/// A rate limit as the checks state it inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateModel {
    pub limit: u32,
    pub period_ms: u64,
    pub burst: u32,
}

/// What the checker must know besides the history. Limits must not change during the
/// run.
#[derive(Debug, Clone)]
pub struct Model {
    /// Concurrency limit of every key acquired.
    pub limits: BTreeMap<String, u32>,
    /// Inline rate limit of every key checked.
    pub rates: BTreeMap<String, RateModel>,
    /// Allowance between the test's clock and the leader's clock.
    pub clock_slack: Micros,
}

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.kind, self.detail)
    }
}

/// How much the checker could verify (to show a clean run was not a vacuous one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Leases with a non-empty certainly-live interval.
    pub certain_leases: usize,
    /// (read, lease) pairs where the lease was certainly live over the whole read and
    /// so had to be listed.
    pub presence_checks: usize,
    /// Per key: the most certainly-live leases at one instant (limit in the model).
    pub peak: BTreeMap<String, usize>,
    /// Allowed rate checks examined.
    pub rate_checks: usize,
    /// (waiter, key) pairs seen in a queue by a read, for single-attempt waiters:
    /// what the FIFO rule could look at.
    pub fifo_waiters_seen: usize,
}

/// Violations and what was checked.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub stats: Stats,
}

/// Longest window the rate check looks at.
const RATE_WINDOW_CAP: Micros = 10_000_000;
/// Per key and kind, at most this many violations are listed (the first ones).
const MAX_PER_KEY: usize = 5;

fn ms(t: Micros) -> String {
    format!("{:.1}ms", t as f64 / 1000.0)
}

/// Everything the history says about one lease_id.
#[derive(Debug, Default)]
struct Lease {
    keys: Vec<String>,
    ttl_ms: u64,
    uniform_ttl: bool,
    first_acquire: Micros,
    indefinite_acquire: bool,
    /// Acknowledged grants: (return, token).
    grants: Vec<(Micros, u64)>,
    first_release: Option<Micros>,
    /// Earliest return of a release with a definite answer.
    release_acked: Option<Micros>,
    /// Renews: (invoke, return, ttl, outcome).
    renews: Vec<(Micros, Micros, u64, Outcome)>,
}

impl Lease {
    /// The interval in which this lease was certainly live, if any.
    fn certain(&self, slack: Micros) -> Option<(Micros, Micros)> {
        let start = self.grants.iter().map(|g| g.0).min()?;
        let mut expiry = self.first_acquire + self.ttl_ms * 1000;
        let mut renews = self.renews.clone();
        renews.sort_by_key(|r| r.0);
        if self.uniform_ttl {
            for (invoke, ret, ttl, outcome) in &renews {
                // Applied between invoke and return, while the granted lease was still
                // certainly live: its expiry became at least invoke + ttl.
                if *outcome == Outcome::Renewed && *invoke >= start && *ret + slack < expiry {
                    expiry = expiry.max(invoke + ttl * 1000);
                }
            }
        } else {
            for (invoke, _, ttl, outcome) in &renews {
                if *outcome != Outcome::LeaseNotFound {
                    expiry = expiry.min(invoke + ttl * 1000);
                }
            }
        }
        let mut end = expiry.saturating_sub(slack);
        if let Some(r) = self.first_release {
            end = end.min(r);
        }
        (start < end).then_some((start, end))
    }
}

fn leases_of(ops: &[Op]) -> BTreeMap<String, Lease> {
    let mut leases: BTreeMap<String, Lease> = BTreeMap::new();
    for op in ops {
        if let Call::Acquire {
            lease_id,
            keys,
            ttl_ms,
            ..
        } = &op.call
        {
            let l = leases.entry(lease_id.clone()).or_insert_with(|| Lease {
                keys: keys.clone(),
                ttl_ms: *ttl_ms,
                uniform_ttl: true,
                first_acquire: op.invoke,
                ..Lease::default()
            });
            l.first_acquire = l.first_acquire.min(op.invoke);
            l.uniform_ttl &= l.ttl_ms == *ttl_ms;
            l.indefinite_acquire |= op.outcome.is_indefinite();
            if let Outcome::Granted { token } = op.outcome {
                l.grants.push((op.ret, token));
            }
        }
    }
    for op in ops {
        match &op.call {
            Call::Release { lease_id } => {
                if let Some(l) = leases.get_mut(lease_id) {
                    l.first_release = Some(l.first_release.map_or(op.invoke, |r| r.min(op.invoke)));
                    if matches!(op.outcome, Outcome::Released { .. }) {
                        l.release_acked = Some(l.release_acked.map_or(op.ret, |r| r.min(op.ret)));
                    }
                }
            }
            Call::Renew { lease_id, ttl_ms } => {
                if let Some(l) = leases.get_mut(lease_id) {
                    l.uniform_ttl &= l.ttl_ms == *ttl_ms;
                    l.renews
                        .push((op.invoke, op.ret, *ttl_ms, op.outcome.clone()));
                }
            }
            _ => {}
        }
    }
    leases
}

/// Check a history; every violation found (at most a few per key and kind).
pub fn check(ops: &[Op], model: &Model) -> Vec<Violation> {
    check_report(ops, model).violations
}

/// [`check`], plus how much could be checked.
pub fn check_report(ops: &[Op], model: &Model) -> Report {
    let mut out = Vec::new();
    let mut stats = Stats::default();
    let leases = leases_of(ops);
    let slack = model.clock_slack;
    let intervals: BTreeMap<&str, (Micros, Micros)> = leases
        .iter()
        .filter_map(|(id, l)| l.certain(slack).map(|i| (id.as_str(), i)))
        .collect();
    stats.certain_leases = intervals.len();

    check_contract(ops, &mut out);
    check_over_admission(&leases, &intervals, model, &mut out, &mut stats);
    check_reads(ops, &leases, &intervals, model, &mut out, &mut stats);
    check_renews(ops, &intervals, &mut out);
    check_fencing(ops, &leases, &mut out);
    check_rates(ops, model, &mut out, &mut stats);
    check_fifo(ops, &leases, &mut out, &mut stats);
    Report {
        violations: out,
        stats,
    }
}

/// The FIFO rule of the module doc.
fn check_fifo(
    ops: &[Op],
    leases: &BTreeMap<String, Lease>,
    out: &mut Vec<Violation>,
    stats: &mut Stats,
) {
    // Waiting acquires made in exactly one attempt (a retry after a lost answer may
    // rejoin at the back of the line).
    let mut attempts: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
    for op in ops {
        if let Call::Acquire {
            lease_id, wait_ms, ..
        } = &op.call
        {
            let a = attempts.entry(lease_id.as_str()).or_insert((0, false));
            a.0 += 1;
            a.1 |= *wait_ms > 0;
        }
    }
    // (waiter, key) -> (earliest return of a read listing it, latest invoke of one).
    let mut seen: BTreeMap<(&str, &str), (Micros, Micros)> = BTreeMap::new();
    for op in ops {
        let (Call::Read { key }, Outcome::Leases(_, queue)) = (&op.call, &op.outcome) else {
            continue;
        };
        for w in queue {
            if attempts.get(w.as_str()) != Some(&(1, true)) {
                continue;
            }
            let e = seen
                .entry((w.as_str(), key.as_str()))
                .or_insert((op.ret, op.invoke));
            e.0 = e.0.min(op.ret);
            e.1 = e.1.max(op.invoke);
        }
    }
    stats.fifo_waiters_seen = seen.len();
    let mut found = CappedPerKey::new(out);
    for (&(waiter, key), &(queued_by, still_at)) in &seen {
        for (id, b) in leases {
            let Some(granted_by) = b.grants.iter().map(|g| g.0).min() else {
                continue;
            };
            if id != waiter
                && b.keys.iter().any(|k| k == key)
                && b.first_acquire > queued_by
                && granted_by < still_at
            {
                found.push(
                    "fifo",
                    key,
                    format!(
                        "{id} on {key} asked at {} and was granted by {} while {waiter}, \
                         queued there by {}, still waited at {}",
                        ms(b.first_acquire),
                        ms(granted_by),
                        ms(queued_by),
                        ms(still_at)
                    ),
                );
            }
        }
    }
}

fn check_contract(ops: &[Op], out: &mut Vec<Violation>) {
    let mut n = 0;
    for op in ops {
        if let Outcome::Unexpected(why) = &op.outcome {
            n += 1;
            if n <= MAX_PER_KEY {
                out.push(Violation {
                    kind: "unexpected_response",
                    detail: format!(
                        "{} via node {} at {}: {why}",
                        op.call.kind(),
                        op.node,
                        ms(op.invoke)
                    ),
                });
            }
        }
    }
}

fn check_over_admission(
    leases: &BTreeMap<String, Lease>,
    intervals: &BTreeMap<&str, (Micros, Micros)>,
    model: &Model,
    out: &mut Vec<Violation>,
    stats: &mut Stats,
) {
    // key -> (time, delta, lease): ends sort before starts at the same instant.
    let mut events: BTreeMap<&str, Vec<(Micros, i32, &str)>> = BTreeMap::new();
    for (id, (s, e)) in intervals {
        for k in &leases[*id].keys {
            let ev = events.entry(k.as_str()).or_default();
            ev.push((*s, 1, id));
            ev.push((*e, -1, id));
        }
    }
    for (key, mut ev) in events {
        let Some(&limit) = model.limits.get(key) else {
            out.push(Violation {
                kind: "model",
                detail: format!("no limit known for key {key}"),
            });
            continue;
        };
        ev.sort();
        let mut live: BTreeSet<&str> = BTreeSet::new();
        let mut reported = 0;
        for (t, delta, id) in ev {
            if delta < 0 {
                live.remove(id);
                continue;
            }
            live.insert(id);
            let peak = stats.peak.entry(key.to_string()).or_default();
            *peak = (*peak).max(live.len());
            if live.len() > limit as usize && reported < MAX_PER_KEY {
                reported += 1;
                let who: Vec<String> = live
                    .iter()
                    .map(|l| {
                        let (s, e) = intervals[l];
                        format!("{l} [{}, {})", ms(s), ms(e))
                    })
                    .collect();
                out.push(Violation {
                    kind: "over_admission",
                    detail: format!(
                        "key {key} (limit {limit}) had {} certainly-live leases at {}: {}",
                        live.len(),
                        ms(t),
                        who.join(", ")
                    ),
                });
            }
        }
    }
}

fn check_reads(
    ops: &[Op],
    leases: &BTreeMap<String, Lease>,
    intervals: &BTreeMap<&str, (Micros, Micros)>,
    model: &Model,
    out: &mut Vec<Violation>,
    stats: &mut Stats,
) {
    let certain = CertainByKey::new(leases, intervals);
    let mut report = CappedPerKey::new(out);
    for op in ops {
        let (Call::Read { key }, Outcome::Leases(listed, _)) = (&op.call, &op.outcome) else {
            continue;
        };
        if let Some(&limit) = model.limits.get(key) {
            if listed.len() > limit as usize {
                report.push(
                    "over_admission",
                    key,
                    format!(
                        "read of {key} via node {} at {} listed {} leases, limit {limit}: {listed:?}",
                        op.node,
                        ms(op.invoke),
                        listed.len()
                    ),
                );
            }
        }
        check_read_presence(op, key, listed, &certain, stats, &mut report);
        check_read_listed(op, key, listed, leases, &mut report);
    }
}

/// Per key, the certainly-live intervals `(start, end, lease id)` sorted by start, and
/// the longest interval of all (bounds how far back one can start and still cover).
struct CertainByKey<'a> {
    by_key: BTreeMap<&'a str, Vec<(Micros, Micros, &'a str)>>,
    longest: Micros,
}

impl<'a> CertainByKey<'a> {
    fn new(
        leases: &'a BTreeMap<String, Lease>,
        intervals: &BTreeMap<&'a str, (Micros, Micros)>,
    ) -> Self {
        let mut by_key: BTreeMap<&str, Vec<(Micros, Micros, &str)>> = BTreeMap::new();
        let mut longest = 0;
        for (id, (s, e)) in intervals {
            longest = longest.max(e - s);
            for k in &leases[*id].keys {
                by_key.entry(k.as_str()).or_default().push((*s, *e, id));
            }
        }
        for v in by_key.values_mut() {
            v.sort();
        }
        CertainByKey { by_key, longest }
    }

    /// The leases certainly live on `key` over the whole of `[invoke, ret]`.
    fn covering(&self, key: &str, invoke: Micros, ret: Micros) -> Vec<(Micros, Micros, &'a str)> {
        let Some(cands) = self.by_key.get(key) else {
            return Vec::new();
        };
        let lo = ret.saturating_sub(self.longest);
        let from = cands.partition_point(|c| c.0 < lo);
        cands[from..]
            .iter()
            .take_while(|(s, _, _)| *s <= invoke)
            .filter(|(_, e, _)| *e >= ret)
            .copied()
            .collect()
    }
}

/// Collects violations, at most [`MAX_PER_KEY`] of each kind per key.
struct CappedPerKey<'o> {
    out: &'o mut Vec<Violation>,
    reported: BTreeMap<(&'static str, String), usize>,
}

impl<'o> CappedPerKey<'o> {
    fn new(out: &'o mut Vec<Violation>) -> Self {
        CappedPerKey {
            out,
            reported: BTreeMap::new(),
        }
    }

    fn push(&mut self, kind: &'static str, key: &str, detail: String) {
        let n = self.reported.entry((kind, key.to_string())).or_default();
        *n += 1;
        if *n <= MAX_PER_KEY {
            self.out.push(Violation { kind, detail });
        }
    }
}

/// Lost acknowledgements: a lease certainly live over the whole read, yet absent.
fn check_read_presence(
    op: &Op,
    key: &str,
    listed: &[(String, u64)],
    certain: &CertainByKey<'_>,
    stats: &mut Stats,
    report: &mut CappedPerKey<'_>,
) {
    let listed_ids: BTreeSet<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    for (s, e, id) in certain.covering(key, op.invoke, op.ret) {
        stats.presence_checks += 1;
        if !listed_ids.contains(id) {
            report.push(
                "lost_ack",
                key,
                format!(
                    "lease {id} certainly live on {key} during [{}, {}) is missing from a \
                     read via node {} over [{}, {}]",
                    ms(s),
                    ms(e),
                    op.node,
                    ms(op.invoke),
                    ms(op.ret)
                ),
            );
        }
    }
}

/// Every listed lease was asked for, on this key, and not released before the read.
fn check_read_listed(
    op: &Op,
    key: &str,
    listed: &[(String, u64)],
    leases: &BTreeMap<String, Lease>,
    report: &mut CappedPerKey<'_>,
) {
    for (id, _) in listed {
        let Some(l) = leases.get(id) else {
            report.push(
                "phantom_lease",
                key,
                format!(
                    "read of {key} via node {} at {} lists {id}, which nobody acquired",
                    op.node,
                    ms(op.invoke)
                ),
            );
            continue;
        };
        if let Some(released) = l.release_acked {
            if !l.indefinite_acquire && op.invoke > released {
                report.push(
                    "resurrected_lease",
                    key,
                    format!(
                        "lease {id}, released (acknowledged at {}), reappears in a \
                         read of {key} via node {} invoked at {}",
                        ms(released),
                        op.node,
                        ms(op.invoke)
                    ),
                );
            }
        }
        if !l.keys.iter().any(|k| k == key) {
            report.push(
                "phantom_lease",
                key,
                format!("read of {key} lists {id}, which holds {:?}", l.keys),
            );
        }
    }
}

fn check_renews(
    ops: &[Op],
    intervals: &BTreeMap<&str, (Micros, Micros)>,
    out: &mut Vec<Violation>,
) {
    let mut n = 0;
    for op in ops {
        let (Call::Renew { lease_id, .. }, Outcome::LeaseNotFound) = (&op.call, &op.outcome) else {
            continue;
        };
        if let Some((s, e)) = intervals.get(lease_id.as_str()) {
            if *s <= op.invoke && op.ret <= *e {
                n += 1;
                if n <= MAX_PER_KEY * 4 {
                    out.push(Violation {
                        kind: "lost_ack",
                        detail: format!(
                            "renew of {lease_id} via node {} over [{}, {}] answered \
                             lease_not_found, but it was certainly live during [{}, {})",
                            op.node,
                            ms(op.invoke),
                            ms(op.ret),
                            ms(*s),
                            ms(*e)
                        ),
                    });
                }
            }
        }
    }
}

fn check_fencing(ops: &[Op], leases: &BTreeMap<String, Lease>, out: &mut Vec<Violation>) {
    // One token, one lease_id (grants and reads both reveal the pairing).
    let mut owner: BTreeMap<u64, &str> = BTreeMap::new();
    let mut reused = 0;
    let mut pairs: Vec<(u64, &str, &Op)> = Vec::new();
    for op in ops {
        match (&op.call, &op.outcome) {
            (Call::Acquire { lease_id, .. }, Outcome::Granted { token }) => {
                pairs.push((*token, lease_id, op))
            }
            (Call::Read { .. }, Outcome::Leases(listed, _)) => {
                for (id, token) in listed {
                    pairs.push((*token, id, op));
                }
            }
            _ => {}
        }
    }
    for (token, id, op) in pairs {
        let prev = *owner.entry(token).or_insert(id);
        if prev != id {
            reused += 1;
            if reused <= MAX_PER_KEY {
                out.push(Violation {
                    kind: "fencing_token_reused",
                    detail: format!(
                        "token {token} names both {prev} and {id} (seen via node {} at {})",
                        op.node,
                        ms(op.invoke)
                    ),
                });
            }
        }
    }

    // Real-time order: a grant that returned before another lease_id's first acquire
    // invocation must have a smaller token.
    let mut grants: Vec<(Micros, u64, &str)> = Vec::new();
    for op in ops {
        if let (Call::Acquire { lease_id, .. }, Outcome::Granted { token }) =
            (&op.call, &op.outcome)
        {
            grants.push((op.ret, *token, lease_id));
        }
    }
    grants.sort();
    let mut prefix_max: Vec<(u64, &str, Micros)> = Vec::with_capacity(grants.len());
    for (ret, token, id) in &grants {
        let best = match prefix_max.last() {
            Some(&(t, i, r)) if t >= *token => (t, i, r),
            _ => (*token, *id, *ret),
        };
        prefix_max.push(best);
    }
    let mut n = 0;
    for (_, token, id) in &grants {
        let first = leases[*id].first_acquire;
        let before = grants.partition_point(|g| g.0 < first);
        if before == 0 {
            continue;
        }
        let (max_token, max_id, max_ret) = prefix_max[before - 1];
        if max_token >= *token {
            n += 1;
            if n <= MAX_PER_KEY {
                out.push(Violation {
                    kind: "fencing_order",
                    detail: format!(
                        "{max_id} got token {max_token} (returned at {}) before {id} was first \
                         requested (at {}), yet {id} got the smaller token {token}",
                        ms(max_ret),
                        ms(first)
                    ),
                });
            }
        }
    }
}

fn check_rates(ops: &[Op], model: &Model, out: &mut Vec<Violation>, stats: &mut Stats) {
    let mut allowed: BTreeMap<&str, Vec<(Micros, Micros)>> = BTreeMap::new();
    for op in ops {
        if let (Call::Rate { key }, Outcome::Allowed) = (&op.call, &op.outcome) {
            allowed.entry(key).or_default().push((op.invoke, op.ret));
        }
    }
    for (key, mut checks) in allowed {
        let Some(spec) = model.rates.get(key) else {
            out.push(Violation {
                kind: "model",
                detail: format!("no rate limit known for key {key}"),
            });
            continue;
        };
        checks.sort();
        stats.rate_checks += checks.len();
        // The first violation per key is enough to show it.
        'key: for (i, (start, _)) in checks.iter().enumerate() {
            // Checks invoked at or after `start` (and not too long after), by return.
            let mut rets: Vec<Micros> = checks[i..]
                .iter()
                .take_while(|c| c.0 <= start + RATE_WINDOW_CAP)
                .map(|c| c.1)
                .collect();
            rets.sort_unstable();
            for (m, end) in rets.iter().enumerate() {
                let count = m as u64 + 1;
                let window = end - start + 2 * model.clock_slack;
                let bound = u64::from(spec.burst)
                    + window * u64::from(spec.limit) / (spec.period_ms * 1000)
                    + 1;
                if count > bound {
                    out.push(Violation {
                        kind: "rate_exceeded",
                        detail: format!(
                            "key {key} ({} per {} ms, burst {}): {count} checks allowed within \
                             [{}, {}], at most {bound} possible",
                            spec.limit,
                            spec.period_ms,
                            spec.burst,
                            ms(*start),
                            ms(*end)
                        ),
                    });
                    break 'key;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 1000;

    fn model() -> Model {
        Model {
            limits: BTreeMap::from([
                ("one".to_string(), 1),
                ("two".to_string(), 2),
                ("global".to_string(), 2),
            ]),
            rates: BTreeMap::from([(
                "r".to_string(),
                RateModel {
                    limit: 10,
                    period_ms: 1000,
                    burst: 2,
                },
            )]),
            clock_slack: 5_000,
        }
    }

    /// An op over [invoke_ms, ret_ms].
    fn op(process: usize, invoke_ms: u64, ret_ms: u64, call: Call, outcome: Outcome) -> Op {
        Op {
            process,
            node: 1,
            invoke: invoke_ms * 1000,
            ret: ret_ms * 1000,
            call,
            outcome,
            streamed: false,
        }
    }

    fn acquire(id: &str, keys: &[&str]) -> Call {
        Call::Acquire {
            lease_id: id.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            ttl_ms: TTL,
            wait_ms: 0,
        }
    }

    fn release(id: &str) -> Call {
        Call::Release {
            lease_id: id.into(),
        }
    }

    fn renew(id: &str) -> Call {
        Call::Renew {
            lease_id: id.into(),
            ttl_ms: TTL,
        }
    }

    fn read(key: &str) -> Call {
        Call::Read { key: key.into() }
    }

    fn listed(ls: &[(&str, u64)]) -> Outcome {
        Outcome::Leases(
            ls.iter().map(|(i, t)| (i.to_string(), *t)).collect(),
            Vec::new(),
        )
    }

    fn waiting(id: &str, keys: &[&str]) -> Call {
        Call::Acquire {
            lease_id: id.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            ttl_ms: TTL,
            wait_ms: 5_000,
        }
    }

    fn queued(ls: &[(&str, u64)], waiters: &[&str]) -> Outcome {
        Outcome::Leases(
            ls.iter().map(|(i, t)| (i.to_string(), *t)).collect(),
            waiters.iter().map(|w| w.to_string()).collect(),
        )
    }

    fn rate(key: &str) -> Call {
        Call::Rate { key: key.into() }
    }

    fn released() -> Outcome {
        Outcome::Released { released: true }
    }

    fn granted(token: u64) -> Outcome {
        Outcome::Granted { token }
    }

    fn unknown() -> Outcome {
        Outcome::Unknown("timeout".into())
    }

    fn kinds(ops: &[Op]) -> Vec<&'static str> {
        check(ops, &model()).iter().map(|v| v.kind).collect()
    }

    #[test]
    fn a_correct_history_passes() {
        let ops = vec![
            op(0, 0, 10, acquire("a", &["one", "global"]), granted(1)),
            op(1, 5, 12, acquire("b", &["one"]), Outcome::Denied),
            op(2, 20, 25, read("one"), listed(&[("a", 1)])),
            op(0, 30, 35, renew("a"), Outcome::Renewed),
            op(0, 40, 45, release("a"), released()),
            op(1, 50, 60, acquire("b", &["one"]), granted(2)),
            op(2, 70, 75, read("one"), listed(&[("b", 2)])),
            op(3, 0, 1, rate("r"), Outcome::Allowed),
            op(3, 2, 3, rate("r"), Outcome::Allowed),
            op(3, 4, 5, rate("r"), Outcome::Denied),
            op(3, 200, 201, rate("r"), Outcome::Allowed),
        ];
        assert_eq!(check(&ops, &model()), vec![]);
    }

    #[test]
    fn a_later_acquire_granted_while_an_earlier_waiter_still_waits_breaks_fifo() {
        // w waits on "one" (held by a): seen queued at 20, and still at 60.
        let base = vec![
            op(0, 0, 10, acquire("a", &["one"]), granted(1)),
            op(1, 12, 200, waiting("w", &["one"]), granted(3)),
            op(2, 15, 20, read("one"), queued(&[("a", 1)], &["w"])),
            op(0, 30, 35, release("a"), released()),
        ];
        // Correct: w is granted first, then b (after w released).
        let mut ok = base.clone();
        ok.push(op(2, 60, 65, read("one"), queued(&[("w", 3)], &[])));
        ok.push(op(1, 210, 215, release("w"), released()));
        ok.push(op(3, 220, 230, acquire("b", &["one"]), granted(4)));
        assert_eq!(check(&ops_sorted(ok), &model()), vec![]);
        // Broken: b (asked after w was queued) is granted while w still waits.
        let mut bad = base.clone();
        bad.push(op(3, 40, 50, waiting("b", &["one"]), granted(2)));
        bad.push(op(2, 55, 58, read("one"), queued(&[("b", 2)], &["w"])));
        assert!(kinds(&ops_sorted(bad.clone())).contains(&"fifo"), "{bad:?}");
        // A plain acquire barging in is the same violation.
        let mut barge = base.clone();
        barge.push(op(3, 40, 50, acquire("b", &["one"]), granted(2)));
        barge.push(op(2, 55, 58, read("one"), queued(&[("b", 2)], &["w"])));
        assert!(kinds(&ops_sorted(barge)).contains(&"fifo"));
        // Not provable: b asked before w was certainly queued (the read returned at
        // 20, b was invoked at 18), or w retried (it may have rejoined at the back).
        let mut early = base.clone();
        early.push(op(3, 18, 50, waiting("b", &["one"]), granted(2)));
        early.push(op(2, 55, 58, read("one"), queued(&[("b", 2)], &["w"])));
        assert!(!kinds(&ops_sorted(early)).contains(&"fifo"));
        let mut retried = bad;
        retried.push(op(1, 11, 12, waiting("w", &["one"]), unknown()));
        assert!(!kinds(&ops_sorted(retried)).contains(&"fifo"));
    }

    fn ops_sorted(mut ops: Vec<Op>) -> Vec<Op> {
        ops.sort_by_key(|o| o.invoke);
        ops
    }

    #[test]
    fn overlapping_grants_beyond_the_limit_are_over_admission() {
        let ops = vec![
            op(0, 0, 10, acquire("a", &["one"]), granted(1)),
            op(1, 5, 15, acquire("b", &["one"]), granted(2)),
        ];
        assert_eq!(kinds(&ops), vec!["over_admission"]);
        // Within the limit on "two", but both also take "global" (limit 2) with a third.
        let ops = vec![
            op(0, 0, 10, acquire("a", &["two", "global"]), granted(1)),
            op(1, 0, 10, acquire("b", &["two"]), granted(2)),
            op(2, 0, 10, acquire("c", &["one", "global"]), granted(3)),
            op(3, 0, 10, acquire("d", &["global"]), granted(4)),
        ];
        assert_eq!(kinds(&ops), vec!["over_admission"]);
        // A read listing more leases than the limit is over-admission on its own.
        let ops = vec![op(0, 0, 10, read("one"), listed(&[("x", 1), ("y", 2)]))];
        assert!(kinds(&ops).contains(&"over_admission"));
    }

    #[test]
    fn a_missing_acknowledged_lease_is_a_lost_ack() {
        let ops = vec![
            op(0, 0, 10, acquire("a", &["one"]), granted(1)),
            op(1, 20, 30, read("one"), listed(&[])),
        ];
        assert_eq!(kinds(&ops), vec!["lost_ack"]);
        let ops = vec![
            op(0, 0, 10, acquire("a", &["one"]), granted(1)),
            op(0, 20, 30, renew("a"), Outcome::LeaseNotFound),
        ];
        assert_eq!(kinds(&ops), vec!["lost_ack"]);
    }

    #[test]
    fn a_released_lease_must_not_come_back() {
        let ops = vec![
            op(0, 0, 10, acquire("a", &["one"]), granted(1)),
            op(0, 20, 30, release("a"), released()),
            op(1, 40, 50, read("one"), listed(&[("a", 1)])),
        ];
        assert_eq!(kinds(&ops), vec!["resurrected_lease"]);
        let ops = vec![op(1, 40, 50, read("one"), listed(&[("zz", 9)]))];
        assert_eq!(kinds(&ops), vec!["phantom_lease"]);
    }

    #[test]
    fn unknown_outcomes_cause_no_false_alarm() {
        let ops = vec![
            // An acquire that timed out was applied after all (a "ghost"), and a read
            // shows it.
            op(0, 0, 3000, acquire("ghost", &["one"]), unknown()),
            op(2, 20, 30, read("one"), listed(&[("ghost", 1)])),
            // The ghost's owner gives up and releases; the release is acknowledged, but
            // the unknown attempt may be applied later still, so a reappearance is fine.
            op(0, 3000, 3010, release("ghost"), released()),
            op(2, 3020, 3030, read("one"), listed(&[("ghost", 1)])),
            // A release with an unknown outcome may have happened: absence is fine.
            op(1, 3100, 3110, acquire("b", &["one"]), granted(2)),
            op(1, 3140, 6000, release("b"), unknown()),
            op(2, 6050, 6060, read("one"), listed(&[])),
            // A retried acquire: first attempt unknown, second returns the original
            // grant. Its certain life starts at the acknowledged return and its expiry
            // counts from the FIRST attempt.
            op(3, 4000, 7000, acquire("c", &["two"]), unknown()),
            op(3, 7000, 7010, acquire("c", &["two"]), granted(5)),
            // ... so by 4000 + TTL it may be gone without being released.
            op(2, 7020, 7030, read("two"), listed(&[])),
            // A renew with an unknown outcome extends nothing and proves nothing.
            op(4, 8000, 8010, acquire("d", &["two"]), granted(6)),
            op(4, 8500, 11000, renew("d"), unknown()),
            op(2, 9100, 9110, read("two"), listed(&[])),
            // A read that times out says nothing.
            op(2, 8100, 11100, read("two"), unknown()),
        ];
        assert_eq!(check(&ops, &model()), vec![]);
    }

    #[test]
    fn expiry_frees_a_slot_and_renewals_extend_the_lease() {
        // Abandoned, expired, slot granted again: no over-admission.
        let ops = vec![
            op(0, 0, 10, acquire("a", &["one"]), granted(1)),
            op(1, 1100, 1110, acquire("b", &["one"]), granted(2)),
            op(2, 1200, 1210, read("one"), listed(&[("b", 2)])),
        ];
        assert_eq!(check(&ops, &model()), vec![]);
        // An acknowledged renew extends the certain life: absence after the original
        // expiry but before the renewed one is a lost acknowledgement.
        let ops = vec![
            op(0, 0, 10, acquire("a", &["one"]), granted(1)),
            op(0, 800, 810, renew("a"), Outcome::Renewed),
            op(2, 1200, 1210, read("one"), listed(&[])),
        ];
        assert_eq!(kinds(&ops), vec!["lost_ack"]);
        // A renew that returned after the lease may already have expired proves
        // nothing about continuity.
        let ops = vec![
            op(0, 0, 10, acquire("a", &["one"]), granted(1)),
            op(0, 800, 1000, renew("a"), Outcome::Renewed),
            op(2, 1200, 1210, read("one"), listed(&[])),
        ];
        assert_eq!(check(&ops, &model()), vec![]);
    }

    #[test]
    fn fencing_tokens_are_unique_and_ordered() {
        let ops = vec![
            op(0, 0, 10, acquire("a", &["two"]), granted(5)),
            op(1, 20, 30, acquire("b", &["two"]), granted(4)),
        ];
        assert_eq!(kinds(&ops), vec!["fencing_order"]);
        let ops = vec![
            op(0, 0, 10, acquire("a", &["two"]), granted(5)),
            op(1, 0, 10, acquire("b", &["two"]), granted(5)),
        ];
        assert_eq!(kinds(&ops), vec!["fencing_token_reused"]);
        // Concurrent grants may be ordered either way; a retry of an earlier attempt
        // (first invoked before the other grant returned) may carry a smaller token.
        let ops = vec![
            op(0, 0, 10, acquire("a", &["two"]), granted(5)),
            op(1, 5, 15, acquire("b", &["two"]), granted(4)),
            op(2, 0, 3000, acquire("c", &["global"]), unknown()),
            op(2, 3000, 3010, acquire("c", &["global"]), granted(3)),
        ];
        assert_eq!(check(&ops, &model()), vec![]);
    }

    #[test]
    fn too_many_allowed_rate_checks_are_caught() {
        // 10 per second, burst 2: five allowed within 20 ms is impossible.
        let ops: Vec<Op> = (0..5)
            .map(|i| op(0, i * 4, i * 4 + 2, rate("r"), Outcome::Allowed))
            .collect();
        assert_eq!(kinds(&ops), vec!["rate_exceeded"]);
        // The same five spread over a second are fine; unknown ones are not counted.
        let mut ops: Vec<Op> = (0..5)
            .map(|i| op(0, i * 250, i * 250 + 2, rate("r"), Outcome::Allowed))
            .collect();
        ops.extend((0..5).map(|i| op(1, i, i + 1, rate("r"), unknown())));
        assert_eq!(check(&ops, &model()), vec![]);
    }

    #[test]
    fn contract_breaches_are_reported() {
        let ops = vec![op(
            0,
            0,
            10,
            acquire("a", &["one"]),
            Outcome::Unexpected("500 internal".into()),
        )];
        assert_eq!(kinds(&ops), vec!["unexpected_response"]);
    }
}
