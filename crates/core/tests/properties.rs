//! Property tests of the limiter state machine over random command sequences.
//!
//! The sequences use a small universe (keys `k0..k2` with limits 1-3 plus `global`,
//! six lease ids, three rate buckets), batches of 1-3 ops per command, a leader clock
//! that mostly moves forward but sometimes backwards, and occasional invalid inputs.
//! What they prove:
//!
//! - **model agreement** — every reply equals the one computed by a naive reference
//!   model that keeps a plain `Vec` of leases and recomputes usage, limits, denials,
//!   retry hints and GCRA figures from scratch (it never purges and never indexes), and
//!   after every command every key's usage and every lease agree with it. In particular
//!   a new grant happens only when every key has `used < limit` at that moment (checked
//!   also without the model, through `Query::Usage`, for single-op commands), while a
//!   lowered limit may leave `used > limit`;
//! - **honest hints** — at `now + retry_after_ms` a denied acquire or rate check would
//!   succeed, one millisecond earlier it would not (checked on a clone of the state);
//! - **fencing** — tokens of new grants strictly increase; retries return the original;
//! - **snapshots** — a snapshot taken at a random point restores to the same digest and
//!   the restored copy gives identical replies for the rest of the sequence;
//! - **determinism** — the same sequence applied twice from fresh states gives identical
//!   replies, digests and snapshot bytes;
//! - **totality** — arbitrary ops (any strings, numbers, times, settings, Envoy
//!   descriptor tables and requests, allowlist entries and bounds) and arbitrary
//!   snapshot bytes never panic;
//! - **audit trail** — the ring holds exactly the last N changes a reference model
//!   computes (caller, index, key, before, after), none for a no-op, and survives a
//!   snapshot;
//! - **allowlists** — an allowlisted check is exactly one that an entry in force
//!   matches (a hand-written truth table, IPv4, IPv6 and mapped addresses), and it
//!   charges nothing: the state equals one that never saw the check;
//! - **the wait queue** — over waiting acquires, leaves, releases, expiry and raised
//!   limits from two clients: no key ever holds more live leases than its limit; no
//!   grant (from the queue or at once) passes a waiter that was ahead of it on one of
//!   its keys and is still waiting; a fresh replica and a copy restored from a
//!   chunked cut taken while queue ops applied give the same replies, queue grants
//!   and digests; every queue grant is a live lease of the waiter's owner.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 192, which keeps the whole
//! core test run well under 30 s in debug).

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::Index;
use quorate_core::descriptors::{
    Descriptor, DescriptorConfig, DescriptorNode, DescriptorRequest, Domain, NodeLimit, Unit,
};
use quorate_core::{
    Acquire, AdminLimits, AllowEntry, AllowPattern, Allowlisted, Caller, Command, Configuration,
    CoreError, CounterInfo, Denial, Grant, LeaseInfo, Mode, ModedConfiguration, Op, Outcome,
    Policy, Query, RateCheck, RateDecision, RateLimitRef, RateResult, RateSpec, Reply, Settings,
    SlotUsage, State,
};

const KEYS: [&str; 4] = ["k0", "k1", "k2", "global"];
const LEASE_IDS: [&str; 6] = ["L0", "L1", "L2", "L3", "L4", "L5"];
const RATE_KEYS: [&str; 3] = ["r0", "r1", "global"];

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(192);
    ProptestConfig::with_cases(cases)
}

// ------------------------------------------------------------------------------------
// Generators

fn acquire_keys() -> impl Strategy<Value = Vec<String>> {
    let valid = prop::sample::subsequence(KEYS.to_vec(), 1..=3)
        .prop_shuffle()
        .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
    prop_oneof![
        12 => valid,
        1 => Just(vec![]),
        1 => Just(vec!["k0".to_string(), "k0".to_string()]),
        1 => Just(vec!["bad key".to_string()]),
        1 => Just(vec!["k1".to_string(), String::new()]),
    ]
}

fn lease_id() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => prop::sample::select(LEASE_IDS.to_vec()).prop_map(String::from),
        1 => Just(String::new()),
        1 => Just("bad id".to_string()),
    ]
}

fn ttl() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 1u64..3000,
        4 => prop::sample::select(vec![100u64, 250, 500, 1000, 2000]),
        1 => Just(0u64),
        1 => Just(86_400_001u64),
        1 => Just(86_400_000u64),
    ]
}

fn rate_check() -> impl Strategy<Value = RateCheck> {
    (
        prop::sample::select(RATE_KEYS.to_vec()),
        1u32..=5,
        prop_oneof![Just(100u64), Just(1000), Just(1500), 1u64..3000],
        1u32..=5,
        prop_oneof![8 => 1u32..=3, 1 => 0u32..=6],
    )
        .prop_map(|(key, limit, period_ms, burst, cost)| RateCheck {
            key: key.to_string(),
            cost,
            limit: RateLimitRef::Inline(RateSpec {
                limit,
                period_ms,
                burst,
            }),
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (acquire_keys(), lease_id(), ttl(), prop_oneof![
            6 => Just(String::new()), 3 => Just("w1".to_string()), 1 => Just("bad\n".to_string())
        ])
            .prop_map(|(keys, lease_id, ttl_ms, holder)| Op::Acquire(Acquire {
                keys,
                lease_id,
                holder,
                ttl_ms,
            })),
        4 => lease_id().prop_map(|lease_id| Op::Release { lease_id }),
        3 => (lease_id(), ttl()).prop_map(|(lease_id, ttl_ms)| Op::Renew { lease_id, ttl_ms }),
        3 => (0u32..3, 0u32..4).prop_map(|(max_leases, max_rate_keys)| Op::Expire {
            max_leases,
            max_rate_keys,
        }),
        2 => (prop::sample::select(KEYS.to_vec()), 0u32..=4).prop_map(|(k, limit)| Op::SetLimit {
            key: k.to_string(),
            limit,
        }),
        1 => prop::sample::select(KEYS.to_vec()).prop_map(|k| Op::DeleteLimit { key: k.to_string() }),
        5 => prop::collection::vec(rate_check(), 0..=3).prop_map(|checks| Op::RateCheck { checks }),
        1 => Just(Op::Noop),
    ]
}

/// Clock steps: mostly forward, sometimes backwards (a new leader with a slower clock).
fn step() -> impl Strategy<Value = (i64, Vec<Op>)> {
    (
        // Round steps and their neighbours land exactly on expiry and refill instants.
        prop_oneof![
            5 => 0i64..1500,
            3 => prop::sample::select(vec![1i64, 99, 100, 101, 250, 333, 500, 999, 1000, 1001]),
            2 => -1000i64..0,
            1 => Just(0i64),
        ],
        prop_oneof![4 => prop::collection::vec(op(), 1..=1), 1 => prop::collection::vec(op(), 2..=3)],
    )
}

/// A sequence of commands: first the limits of the universe, then random steps.
fn sequence() -> impl Strategy<Value = Vec<Command>> {
    (
        prop::collection::vec(1u32..=3, 3),
        2u32..=4,
        prop::collection::vec(step(), 1..80),
    )
        .prop_map(|(limits, global, steps)| {
            let mut setup: Vec<Op> = limits
                .iter()
                .zip(KEYS)
                .map(|(l, k)| Op::SetLimit {
                    key: k.to_string(),
                    limit: *l,
                })
                .collect();
            setup.push(Op::SetLimit {
                key: "global".into(),
                limit: global,
            });
            let mut t: i64 = 1_000;
            let mut cmds = vec![Command::new(t as u64, setup)];
            for (dt, ops) in steps {
                t = (t + dt).max(0);
                cmds.push(Command::new(t as u64, ops));
            }
            cmds
        })
}

// ------------------------------------------------------------------------------------
// The reference model: recompute everything from a plain list, never purge.

const MAX_TTL: u64 = 86_400_000;
const MAX_RETRY: u64 = 60_000;
const MAX_LIMIT: u32 = 1_000_000;
const MAX_PERIOD: u64 = 7 * 24 * 3600 * 1000;
const DEFAULT_LIMIT: u32 = 10;
const NS: u128 = 1_000_000;

#[derive(Debug, Clone)]
struct MLease {
    id: String,
    holder: String,
    keys: Vec<String>,
    exp: u64,
    token: u64,
}

#[derive(Debug, Clone, Default)]
struct Model {
    now: u64,
    last_token: u64,
    leases: Vec<MLease>,
    overrides: BTreeMap<String, u32>,
    /// GCRA TAT per bucket in ns, never purged (a full bucket must decide like none).
    tat: BTreeMap<String, u128>,
}

#[derive(Debug)]
enum Expect {
    Exact(Reply),
    /// Some `CoreError::Invalid` (the message is the core's business).
    Invalid,
    /// Some `Outcome::Expired` with at most this many leases purged.
    Expired(u32),
}

fn valid_str(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/@+=".contains(&b))
}

fn ceil_ms(ns: u128) -> u64 {
    u64::try_from(ns.div_ceil(NS)).unwrap()
}

impl Model {
    fn live(&self) -> impl Iterator<Item = &MLease> {
        self.leases.iter().filter(move |l| l.exp > self.now)
    }

    fn live_id(&self, id: &str) -> Option<&MLease> {
        self.live().find(|l| l.id == id)
    }

    fn limit(&self, key: &str) -> u32 {
        self.overrides.get(key).copied().unwrap_or(DEFAULT_LIMIT)
    }

    fn used(&self, key: &str) -> u32 {
        self.live()
            .filter(|l| l.keys.iter().any(|k| k == key))
            .count() as u32
    }

    fn slot(&self, key: &str) -> SlotUsage {
        SlotUsage {
            key: key.to_string(),
            used: self.used(key),
            limit: self.limit(key),
        }
    }

    fn info(l: &MLease) -> LeaseInfo {
        LeaseInfo {
            lease_id: l.id.clone(),
            holder: l.holder.clone(),
            owner: String::new(),
            fencing_token: l.token,
            expires_at_ms: l.exp,
            keys: l.keys.clone(),
        }
    }

    fn apply(&mut self, cmd: &Command) -> Vec<Expect> {
        self.now = self.now.max(cmd.time_ms);
        cmd.ops.iter().map(|op| self.apply_op(op)).collect()
    }

    fn apply_op(&mut self, op: &Op) -> Expect {
        match op {
            Op::Acquire(a) => self.acquire(a),
            Op::Release { lease_id } => {
                let before = self.leases.len();
                let now = self.now;
                self.leases.retain(|l| !(l.id == *lease_id && l.exp > now));
                Expect::Exact(Ok(Outcome::Released {
                    released: self.leases.len() != before,
                }))
            }
            Op::Renew { lease_id, ttl_ms } => {
                if !valid_str(lease_id, 128) || *ttl_ms == 0 || *ttl_ms > MAX_TTL {
                    return Expect::Invalid;
                }
                let now = self.now;
                match self
                    .leases
                    .iter_mut()
                    .find(|l| l.id == *lease_id && l.exp > now)
                {
                    Some(l) => {
                        l.exp = now + ttl_ms;
                        Expect::Exact(Ok(Outcome::Renewed {
                            lease_id: lease_id.clone(),
                            expires_at_ms: l.exp,
                        }))
                    }
                    None => Expect::Exact(Err(CoreError::LeaseNotFound {
                        lease_id: lease_id.clone(),
                    })),
                }
            }
            Op::Expire { max_leases, .. } => Expect::Expired(*max_leases),
            Op::SetLimit { key, limit } => {
                if !valid_str(key, 256) || *limit == 0 || *limit > MAX_LIMIT {
                    return Expect::Invalid;
                }
                self.overrides.insert(key.clone(), *limit);
                Expect::Exact(Ok(Outcome::LimitSet {
                    key: key.clone(),
                    limit: *limit,
                }))
            }
            Op::DeleteLimit { key } => {
                if !valid_str(key, 256) {
                    return Expect::Invalid;
                }
                Expect::Exact(Ok(Outcome::LimitDeleted {
                    deleted: self.overrides.remove(key).is_some(),
                }))
            }
            Op::RateCheck { checks } => self.rate(checks),
            Op::Noop => Expect::Exact(Ok(Outcome::Noop)),
            other => panic!("model does not generate {other:?}"),
        }
    }

    fn acquire(&mut self, a: &Acquire) -> Expect {
        let distinct = a
            .keys
            .iter()
            .enumerate()
            .all(|(i, k)| !a.keys[..i].contains(k));
        if a.keys.is_empty()
            || a.keys.len() > 8
            || !a.keys.iter().all(|k| valid_str(k, 256))
            || !distinct
            || !valid_str(&a.lease_id, 128)
            || a.holder.chars().any(char::is_control)
            || a.ttl_ms == 0
            || a.ttl_ms > MAX_TTL
        {
            return Expect::Invalid;
        }
        if let Some(l) = self.live_id(&a.lease_id) {
            let (mut held, mut req) = (l.keys.clone(), a.keys.clone());
            held.sort();
            req.sort();
            if held != req {
                return Expect::Exact(Err(CoreError::LeaseConflict {
                    lease_id: a.lease_id.clone(),
                    held: l.keys.clone(),
                    requested: a.keys.clone(),
                }));
            }
            return Expect::Exact(Ok(Outcome::Granted(Grant {
                lease_id: a.lease_id.clone(),
                fencing_token: l.token,
                expires_at_ms: l.exp,
                slots: a.keys.iter().map(|k| self.slot(k)).collect(),
                reused: true,
            })));
        }
        let slots: Vec<SlotUsage> = a.keys.iter().map(|k| self.slot(k)).collect();
        let blocked: Vec<&SlotUsage> = slots.iter().filter(|s| s.used >= s.limit).collect();
        if !blocked.is_empty() {
            // A slot frees on a key once (used - limit + 1) of its leases have expired.
            let retry = blocked
                .iter()
                .map(|s| {
                    let mut exps: Vec<u64> = self
                        .live()
                        .filter(|l| l.keys.contains(&s.key))
                        .map(|l| l.exp)
                        .collect();
                    exps.sort_unstable();
                    exps[(s.used - s.limit) as usize] - self.now
                })
                .max()
                .unwrap();
            return Expect::Exact(Ok(Outcome::Denied(Denial {
                blocked_by: blocked.iter().map(|s| s.key.clone()).collect(),
                slots,
                retry_after_ms: retry.clamp(1, MAX_RETRY),
            })));
        }
        self.last_token += 1;
        let lease = MLease {
            id: a.lease_id.clone(),
            holder: a.holder.clone(),
            keys: a.keys.clone(),
            exp: self.now + a.ttl_ms,
            token: self.last_token,
        };
        let exp = lease.exp;
        self.leases.push(lease);
        Expect::Exact(Ok(Outcome::Granted(Grant {
            lease_id: a.lease_id.clone(),
            fencing_token: self.last_token,
            expires_at_ms: exp,
            slots: a.keys.iter().map(|k| self.slot(k)).collect(),
            reused: false,
        })))
    }

    fn rate(&mut self, checks: &[RateCheck]) -> Expect {
        if checks.is_empty() || checks.len() > 16 {
            return Expect::Invalid;
        }
        let mut specs = Vec::new();
        for (i, c) in checks.iter().enumerate() {
            let RateLimitRef::Inline(s) = c.limit else {
                panic!("model only generates inline checks")
            };
            let spec_ok = (1..=MAX_LIMIT).contains(&s.limit)
                && (1..=MAX_LIMIT).contains(&s.burst)
                && (1..=MAX_PERIOD).contains(&s.period_ms);
            if !valid_str(&c.key, 256)
                || checks[..i].iter().any(|o| o.key == c.key)
                || !spec_ok
                || c.cost == 0
                || c.cost > s.burst
            {
                return Expect::Invalid;
            }
            specs.push(s);
        }
        let now = u128::from(self.now) * NS;
        // (allowed, new_tat, base, T, horizon) per check.
        let d: Vec<_> = checks
            .iter()
            .zip(&specs)
            .map(|(c, s)| {
                let t = (u128::from(s.period_ms) * NS / u128::from(s.limit)).max(1);
                let horizon = now + t * u128::from(s.burst);
                let base = self.tat.get(&c.key).copied().unwrap_or(0).max(now);
                let new = base + u128::from(c.cost) * t;
                (new <= horizon, new, base, t, horizon)
            })
            .collect();
        let all = d.iter().all(|x| x.0);
        let mut results = Vec::new();
        for ((c, s), &(ok, new, base, t, horizon)) in checks.iter().zip(&specs).zip(&d) {
            let (remaining, reset, retry) = if ok && all {
                self.tat.insert(c.key.clone(), new);
                ((horizon - new) / t, ceil_ms(new - now), 0)
            } else if ok {
                ((horizon - base) / t, ceil_ms(base - now), 0)
            } else {
                (
                    horizon.saturating_sub(base) / t,
                    ceil_ms(base - now),
                    ceil_ms(new - horizon).max(1),
                )
            };
            results.push(RateResult {
                key: c.key.clone(),
                allowed: ok,
                limit: s.limit,
                period_ms: s.period_ms,
                burst: s.burst,
                remaining: u32::try_from(remaining).unwrap(),
                reset_after_ms: reset,
                retry_after_ms: retry,
            });
        }
        Expect::Exact(Ok(Outcome::Rate(RateDecision {
            allowed: all,
            results,
        })))
    }
}

fn check_expect(expect: &Expect, got: &Reply) -> Result<(), TestCaseError> {
    match expect {
        Expect::Exact(r) => prop_assert_eq!(got, r),
        Expect::Invalid => prop_assert!(
            matches!(got, Err(CoreError::Invalid { .. })),
            "expected Invalid, got {:?}",
            got
        ),
        Expect::Expired(max) => prop_assert!(
            matches!(got, Ok(Outcome::Expired { leases, .. }) if leases <= max),
            "expected Expired with at most {} leases, got {:?}",
            max,
            got
        ),
    }
    Ok(())
}

/// Compare every key's usage and every lease with the model.
fn check_state(state: &State, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(state.now_ms(), model.now);
    prop_assert_eq!(state.stats().last_token, model.last_token);
    for k in KEYS {
        let Ok(Outcome::Usage(u)) = state.query(&Query::Usage { key: k.into() }, 0) else {
            return Err(TestCaseError::fail("usage query failed"));
        };
        let mut live: Vec<LeaseInfo> = model
            .live()
            .filter(|l| l.keys.iter().any(|x| x == k))
            .map(Model::info)
            .collect();
        live.sort_by_key(|l| l.fencing_token);
        prop_assert_eq!(u.used, model.used(k), "used of {}", k);
        prop_assert_eq!(u.limit, model.limit(k), "limit of {}", k);
        prop_assert_eq!(&u.leases, &live, "leases of {}", k);
    }
    // Every rate bucket decides like the model's (which never purges): probe each with
    // a fixed check on throwaway copies.
    for k in RATE_KEYS {
        let probe = Op::RateCheck {
            checks: vec![RateCheck {
                key: k.into(),
                cost: 1,
                limit: RateLimitRef::Inline(RateSpec {
                    limit: 5,
                    period_ms: 1000,
                    burst: 5,
                }),
            }],
        };
        let (mut s, mut m) = (state.clone(), model.clone());
        let cmd = Command::single(0, probe);
        let got = s.apply(&cmd).remove(0);
        check_expect(&m.apply(&cmd)[0], &got)?;
    }
    for id in LEASE_IDS {
        let got = state.query(
            &Query::Lease {
                lease_id: id.into(),
            },
            0,
        );
        let want = Ok(Outcome::Lease(model.live_id(id).map(Model::info)));
        prop_assert_eq!(got, want, "lease {}", id);
    }
    Ok(())
}

/// The retry hint of a denial is exact: at `now + retry` the same op succeeds (if the
/// hint was not capped), one millisecond earlier it does not.
fn check_hints(state: &State, op: &Op, reply: &Reply) -> Result<(), TestCaseError> {
    let at = |dt: u64, op: Op| {
        let mut s = state.clone();
        s.apply(&Command::single(state.now_ms() + dt, op)).remove(0)
    };
    match (op, reply) {
        (Op::Acquire(a), Ok(Outcome::Denied(d))) if d.retry_after_ms < MAX_RETRY => {
            let later = at(d.retry_after_ms, op.clone());
            prop_assert!(
                matches!(later, Ok(Outcome::Granted(_))),
                "acquire {:?} denied with retry {} but still {:?}",
                a.keys,
                d.retry_after_ms,
                later
            );
            if d.retry_after_ms > 1 {
                let earlier = at(d.retry_after_ms - 1, op.clone());
                prop_assert!(
                    matches!(earlier, Ok(Outcome::Denied(_))),
                    "retry hint {} not tight: {:?}",
                    d.retry_after_ms,
                    earlier
                );
            }
        }
        (Op::RateCheck { checks }, Ok(Outcome::Rate(dec))) => {
            for (c, r) in checks.iter().zip(&dec.results) {
                if r.allowed {
                    continue;
                }
                let single = || Op::RateCheck {
                    checks: vec![c.clone()],
                };
                let later = at(r.retry_after_ms, single());
                prop_assert!(
                    matches!(&later, Ok(Outcome::Rate(x)) if x.allowed),
                    "rate {} retry {} but {:?}",
                    c.key,
                    r.retry_after_ms,
                    later
                );
                if r.retry_after_ms > 1 {
                    let earlier = at(r.retry_after_ms - 1, single());
                    prop_assert!(
                        matches!(&earlier, Ok(Outcome::Rate(x)) if !x.allowed),
                        "rate retry {} not tight: {:?}",
                        r.retry_after_ms,
                        earlier
                    );
                }
            }
        }
        _ => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// (a) + (d): every reply and every key's usage match the naive model; grants only
    /// when used < limit; hints are exact; new tokens strictly increase.
    #[test]
    fn agrees_with_reference_model(cmds in sequence()) {
        let mut state = State::new();
        let mut model = Model::default();
        let mut last_token = 0u64;
        for cmd in &cmds {
            // Model-free over-admission check for single-op acquires: read usage first,
            // at the time the command will be applied.
            let before: Option<Vec<(u32, u32)>> = match cmd.ops.as_slice() {
                [Op::Acquire(a)] if a.keys.iter().all(|k| KEYS.contains(&k.as_str())) => Some(
                    a.keys
                        .iter()
                        .map(|k| match state.query(&Query::Usage { key: k.clone() }, cmd.time_ms) {
                            Ok(Outcome::Usage(u)) => (u.used, u.limit),
                            other => panic!("{other:?}"),
                        })
                        .collect(),
                ),
                _ => None,
            };
            let pre = state.clone();
            let replies = state.apply(cmd);
            let expects = model.apply(cmd);
            prop_assert_eq!(replies.len(), cmd.ops.len());
            for (i, (r, e)) in replies.iter().zip(&expects).enumerate() {
                check_expect(e, r).map_err(|err| {
                    TestCaseError::fail(format!("op {i} of {cmd:?}: {err}"))
                })?;
                if let Ok(Outcome::Granted(g)) = r {
                    if g.reused {
                        prop_assert!(g.fencing_token <= last_token);
                    } else {
                        prop_assert!(g.fencing_token > last_token, "token went backwards");
                        last_token = g.fencing_token;
                        if let Some(before) = &before {
                            for (used, limit) in before {
                                prop_assert!(used < limit, "granted at {}/{}", used, limit);
                            }
                        }
                    }
                }
            }
            if cmd.ops.len() == 1 {
                let mut p = pre;
                p.apply(&Command::new(cmd.time_ms, vec![]));
                check_hints(&p, &cmd.ops[0], &replies[0])?;
            }
            check_state(&state, &model)?;
        }
    }

    /// (b): snapshot at a random point, restore, and the copy behaves identically.
    #[test]
    fn snapshot_restore_mid_sequence(cmds in sequence(), split in any::<Index>()) {
        let split = split.index(cmds.len());
        let mut state = State::new();
        for c in &cmds[..split] {
            state.apply(c);
        }
        let bytes = state.snapshot();
        let mut restored = State::restore(&bytes).unwrap();
        prop_assert_eq!(restored.digest(), state.digest());
        prop_assert_eq!(restored.snapshot(), bytes);
        prop_assert_eq!(restored.stats(), state.stats());
        for c in &cmds[split..] {
            prop_assert_eq!(restored.apply(c), state.apply(c));
            prop_assert_eq!(restored.digest(), state.digest());
        }
    }

    /// (c): the same sequence from two fresh states: same replies, digests and bytes.
    #[test]
    fn replay_is_deterministic(cmds in sequence()) {
        let (mut a, mut b) = (State::new(), State::new());
        for c in &cmds {
            prop_assert_eq!(a.apply(c), b.apply(c));
            prop_assert_eq!(a.digest(), b.digest());
        }
        prop_assert_eq!(a.snapshot(), b.snapshot());
    }

    /// (e): arbitrary ops — any strings, numbers, times, settings — never panic, always
    /// get one reply each, and a rejected op changes nothing but time.
    #[test]
    fn arbitrary_ops_never_panic(
        cmds in prop::collection::vec(wild_command(), 1..40),
        envoy in any::<bool>(),
    ) {
        let mut state = State::new();
        if envoy {
            // Half the runs start with a valid descriptor table, so that wild
            // descriptor requests are decided and charged, not only refused.
            let table = Op::ConfigureDescriptors(Box::new(sane_descriptor_config(0)));
            state.apply(&Command::single(0, table));
        }
        for c in &cmds {
            let before = state.clone();
            let replies = state.apply(c);
            prop_assert_eq!(replies.len(), c.ops.len());
            if c.ops.len() == 1 && replies[0].is_err() {
                // Compare after purging everything dead on both sides: a rejected op may
                // have purged a dead lease it looked at, which changes no decision.
                let purge = Command::single(c.time_ms, Op::Expire {
                    max_leases: u32::MAX,
                    max_rate_keys: u32::MAX,
                });
                let (mut b, mut s) = (before, state.clone());
                b.apply(&purge);
                s.apply(&purge);
                prop_assert_eq!(b.digest(), s.digest(), "rejected op changed state: {:?}", c);
            }
            for q in wild_queries(c) {
                let _ = state.query(&q, c.time_ms);
            }
        }
        let restored = State::restore(&state.snapshot()).unwrap();
        prop_assert_eq!(restored.digest(), state.digest());
    }

    /// (e): restore never panics on garbage or on a corrupted snapshot.
    #[test]
    fn restore_never_panics(
        cmds in sequence(),
        garbage in prop::collection::vec(any::<u8>(), 0..200),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
        cut in any::<Index>(),
    ) {
        let _ = State::restore(&garbage);
        let mut state = State::new();
        for c in &cmds {
            state.apply(c);
        }
        let bytes = state.snapshot();
        let mut bad = bytes.clone();
        for (i, v) in &flips {
            let i = i.index(bad.len());
            bad[i] ^= v | 1;
        }
        if let Ok(mut s) = State::restore(&bad) {
            // Whatever it accepted must be usable.
            let _ = s.digest();
            s.apply(&Command::single(s.now_ms() + 1, Op::Expire { max_leases: 100, max_rate_keys: 100 }));
        }
        let _ = State::restore(&bytes[..cut.index(bytes.len())]);
    }
}

// ------------------------------------------------------------------------------------
// Callers and caps

const CALLERS: [(&str, bool); 3] = [("alice", false), ("bob", false), ("ops", true)];
const CAP_LEASES: u64 = 3;
const CAP_SLOT_KEYS: u64 = 4;
const CAP_RATE_KEYS: u64 = 2;

/// Ops of the small universe, each from one of three callers (two clients and an
/// admin) or from the system (unwrapped), over a wider key set than the caps allow.
fn owned_op() -> impl Strategy<Value = Op> {
    let keys = prop::sample::subsequence(vec!["k0", "k1", "k2", "k3", "k4", "k5"], 1..=3)
        .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
    let check = (
        prop::sample::select(vec!["r0", "r1", "r2", "r3"]),
        1u64..2000,
    )
        .prop_map(|(key, period_ms)| RateCheck {
            key: key.to_string(),
            cost: 1,
            limit: RateLimitRef::Inline(RateSpec {
                limit: 2,
                period_ms,
                burst: 2,
            }),
        });
    let bare = prop_oneof![
        6 => (keys, lease_id(), 1u64..3000).prop_map(|(keys, lease_id, ttl_ms)| {
            Op::Acquire(Acquire { keys, lease_id, holder: String::new(), ttl_ms })
        }),
        3 => lease_id().prop_map(|lease_id| Op::Release { lease_id }),
        2 => (lease_id(), 1u64..3000).prop_map(|(lease_id, ttl_ms)| Op::Renew { lease_id, ttl_ms }),
        3 => prop::collection::vec(check, 1..=2).prop_map(|mut checks| {
            checks.dedup_by(|a, b| a.key == b.key);
            Op::RateCheck { checks }
        }),
        1 => (prop::sample::select(vec!["k0", "k1"]), 1u32..3)
            .prop_map(|(k, limit)| Op::SetLimit { key: k.to_string(), limit }),
        1 => (0u32..3, 0u32..3).prop_map(|(max_leases, max_rate_keys)| Op::Expire { max_leases, max_rate_keys }),
    ];
    (
        bare,
        prop::option::of(prop::sample::select(CALLERS.to_vec())),
    )
        .prop_map(|(op, who)| match who {
            Some((name, admin)) => op.by(Caller {
                name: name.into(),
                admin,
            }),
            None => op,
        })
}

fn owned_sequence() -> impl Strategy<Value = Vec<Command>> {
    prop::collection::vec((0u64..800, prop::collection::vec(owned_op(), 1..=3)), 1..60).prop_map(
        |steps| {
            let caps = Settings {
                max_leases: CAP_LEASES,
                max_slot_keys: CAP_SLOT_KEYS,
                max_rate_keys: CAP_RATE_KEYS,
                ..Settings::default()
            };
            let configure = Op::Configure(Box::new(Configuration {
                source_digest: 1,
                settings: caps,
                policies: Vec::new(),
                tiers: Vec::new(),
            }));
            let mut t = 1_000;
            let mut cmds = vec![Command::single(t, configure)];
            for (dt, ops) in steps {
                t += dt;
                cmds.push(Command::new(t, ops));
            }
            cmds
        },
    )
}

/// The owner of `lease_id` if it is live at `now`.
fn owner_of(state: &State, lease_id: &str, now: u64) -> Option<String> {
    match state.query(
        &Query::Lease {
            lease_id: lease_id.into(),
        },
        now,
    ) {
        Ok(Outcome::Lease(Some(l))) => Some(l.owner),
        _ => None,
    }
}

proptest! {
    #![proptest_config(config())]

    /// Replicas agree on every decision about callers and caps: a replica that applies
    /// the log from the start and one restored from a snapshot at a random point give
    /// the same replies and digests. And the decisions are right: the caps are never
    /// exceeded, a client never releases or renews a lease it does not own, a refused
    /// op is refused with the error naming why, and a client never does an admin op.
    #[test]
    fn replicas_agree_on_callers_and_caps(cmds in owned_sequence(), split in any::<Index>()) {
        let split = split.index(cmds.len());
        let mut a = State::new();
        let mut b = State::new();
        for (i, cmd) in cmds.iter().enumerate() {
            if i == split {
                b = State::restore(&a.snapshot()).unwrap();
            }
            let pre = a.clone();
            let replies = a.apply(cmd);
            if i >= split {
                prop_assert_eq!(&b.apply(cmd), &replies);
                prop_assert_eq!(b.digest(), a.digest());
            }
            let st = a.stats();
            prop_assert!(st.leases as u64 <= CAP_LEASES, "{:?}", st);
            prop_assert!(st.slot_keys as u64 <= CAP_SLOT_KEYS, "{:?}", st);
            prop_assert!(st.rate_keys as u64 <= CAP_RATE_KEYS, "{:?}", st);
            for (op, reply) in cmd.ops.iter().zip(&replies) {
                let Op::As { caller, op } = op else { continue };
                if caller.admin {
                    prop_assert!(!matches!(reply, Err(CoreError::Forbidden { .. })), "{:?}", reply);
                    continue;
                }
                if op.needs_admin() {
                    prop_assert!(matches!(reply, Err(CoreError::Forbidden { .. })), "{:?}", reply);
                    continue;
                }
                // Batches of several ops change ownership mid-command: check singles.
                if cmd.ops.len() != 1 {
                    continue;
                }
                let lease_id = match &**op {
                    Op::Acquire(acq) => &acq.lease_id,
                    Op::Release { lease_id } | Op::Renew { lease_id, .. } => lease_id,
                    _ => continue,
                };
                let before = owner_of(&pre, lease_id, cmd.time_ms);
                let mine = Some(caller.name.as_str());
                match (&**op, reply) {
                    // Touching a live lease: only its owner's own.
                    (Op::Release { .. }, Ok(Outcome::Released { released: true }))
                    | (Op::Renew { .. }, Ok(_)) => prop_assert_eq!(before.as_deref(), mine),
                    (Op::Acquire(_), Ok(Outcome::Granted(g))) if g.reused => {
                        prop_assert_eq!(before.as_deref(), mine)
                    }
                    // A new lease belongs to its caller.
                    (Op::Acquire(_), Ok(Outcome::Granted(_))) => {
                        let after = owner_of(&a, lease_id, cmd.time_ms);
                        prop_assert_eq!(after.as_deref(), mine)
                    }
                    // Refused only when it is someone else's live lease.
                    (_, Err(CoreError::Forbidden { .. })) => {
                        prop_assert!(before.is_some_and(|o| o != caller.name), "refused its own lease")
                    }
                    _ => {}
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------
// Wild inputs for the totality test

fn wild_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["k0", "global", "org:*", "*", "L0", "api", "gold"])
            .prop_map(String::from),
        2 => "[a-z:*]{0,6}",
        2 => any::<String>(),
        1 => Just("x".repeat(257)),
        1 => Just(String::new()),
    ]
}

fn wild_u64() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..5000, 1 => any::<u64>(), 1 => Just(u64::MAX), 1 => Just(0)]
}

fn wild_u32() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..20, 1 => any::<u32>(), 1 => Just(u32::MAX), 1 => Just(1_000_000)]
}

fn wild_spec() -> impl Strategy<Value = RateSpec> {
    (wild_u32(), wild_u64(), wild_u32()).prop_map(|(limit, period_ms, burst)| RateSpec {
        limit,
        period_ms,
        burst,
    })
}

fn wild_policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        (wild_string(), wild_u32())
            .prop_map(|(pattern, limit)| Policy::Concurrency { pattern, limit }),
        wild_spec().prop_map(Policy::Rate),
    ]
}

/// Envoy descriptor tables and requests: input from a third-party proxy, so they
/// get the same "any input" treatment as the API's ops. Keys and values come from a
/// small set often enough for requests to match the tables.
fn wild_descriptor_key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["remote_address", "tenant", "user_id", "path"]).prop_map(String::from),
        1 => wild_string(),
    ]
}

fn wild_unit() -> impl Strategy<Value = Unit> {
    prop::sample::select(vec![
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
    ])
}

fn wild_node_limit() -> impl Strategy<Value = NodeLimit> {
    prop_oneof![
        3 => (wild_string(), wild_u32(), wild_unit(), wild_u32()).prop_map(
            |(name, requests_per_unit, unit, burst)| NodeLimit::Rate {
                name,
                requests_per_unit,
                unit,
                burst,
            }
        ),
        1 => wild_string().prop_map(|name| NodeLimit::Policy { name }),
        1 => Just(NodeLimit::Unlimited),
    ]
}

fn wild_descriptor_node() -> impl Strategy<Value = DescriptorNode> {
    let leaf = (
        wild_descriptor_key(),
        prop::option::of(prop_oneof![
            2 => prop::sample::select(vec!["acme", "beta*", "1.2.3.4"]).prop_map(String::from),
            1 => wild_string(),
        ]),
        prop::option::of(wild_node_limit()),
    )
        .prop_map(|(key, value, limit)| DescriptorNode {
            key,
            value,
            limit,
            descriptors: vec![],
        });
    leaf.prop_recursive(2, 12, 3, |inner| {
        (
            wild_descriptor_key(),
            prop::option::of(wild_string()),
            prop::option::of(wild_node_limit()),
            prop::collection::vec(inner, 0..3),
        )
            .prop_map(|(key, value, limit, descriptors)| DescriptorNode {
                key,
                value,
                limit,
                descriptors,
            })
    })
}

fn wild_domain_name() -> impl Strategy<Value = String> {
    prop_oneof![3 => Just("edge".to_string()), 1 => wild_string()]
}

/// A valid table, so that requests are decided (a wild table is mostly refused):
/// per-IP 3/s; `tenant=acme` → per-user 2/s; `beta*` tenants unlimited; `path` by the
/// `api` policy (absent unless a wild `PutPolicy` created it).
fn sane_descriptor_config(source_digest: u64) -> DescriptorConfig {
    let node = |key: &str, value: Option<&str>, limit: Option<NodeLimit>| DescriptorNode {
        key: key.into(),
        value: value.map(String::from),
        limit,
        descriptors: vec![],
    };
    let rate = |name: &str, n: u32| {
        Some(NodeLimit::Rate {
            name: name.into(),
            requests_per_unit: n,
            unit: Unit::Second,
            burst: n,
        })
    };
    let mut acme = node("tenant", Some("acme"), None);
    acme.descriptors = vec![node("user_id", None, rate("acme_user", 2))];
    let mut beta = node("tenant", Some("beta*"), None);
    beta.descriptors = vec![node("user_id", None, Some(NodeLimit::Unlimited))];
    DescriptorConfig {
        source_digest,
        domains: vec![Domain {
            name: "edge".into(),
            descriptors: vec![
                node("remote_address", None, rate("per_ip", 3)),
                acme,
                beta,
                node("path", None, Some(NodeLimit::Policy { name: "api".into() })),
            ],
        }],
    }
}

fn wild_descriptor_op() -> impl Strategy<Value = Op> {
    let sane =
        (0u64..3).prop_map(|d| Op::ConfigureDescriptors(Box::new(sane_descriptor_config(d))));
    let config = (
        wild_u64(),
        prop::collection::vec(
            (
                wild_domain_name(),
                prop::collection::vec(wild_descriptor_node(), 0..4),
            )
                .prop_map(|(name, descriptors)| Domain { name, descriptors }),
            0..3,
        ),
    )
        .prop_map(|(source_digest, domains)| {
            Op::ConfigureDescriptors(Box::new(DescriptorConfig {
                source_digest,
                domains,
            }))
        });
    let descriptor = (
        prop::collection::vec(
            (
                wild_descriptor_key(),
                prop_oneof![
                    4 => prop::sample::select(vec!["acme", "beta1", "1.2.3.4", "/a"]).prop_map(String::from),
                    1 => wild_string(),
                ],
            ),
            1..4,
        ),
        prop::option::of((wild_u32(), wild_unit())),
        prop::option::of(wild_u64()),
    )
        .prop_map(|(entries, limit, hits_addend)| Descriptor {
            entries,
            limit,
            hits_addend,
        });
    let request = (
        wild_domain_name(),
        prop::collection::vec(descriptor, 0..5),
        wild_u32(),
    )
        .prop_map(|(domain, descriptors, hits_addend)| {
            Op::Descriptors(Box::new(DescriptorRequest {
                domain,
                descriptors,
                hits_addend,
            }))
        });
    prop_oneof![1 => config, 1 => sane, 4 => request]
}

fn wild_op() -> impl Strategy<Value = Op> {
    let check = (
        wild_string(),
        wild_u32(),
        prop_oneof![
            (wild_string(), prop::option::of(wild_string()))
                .prop_map(|(name, tier)| RateLimitRef::Policy { name, tier }),
            wild_spec().prop_map(RateLimitRef::Inline),
        ],
    )
        .prop_map(|(key, cost, limit)| RateCheck { key, cost, limit });
    let settings = (
        (wild_u32(), wild_u32(), wild_u64(), wild_u64(), wild_u64()),
        (wild_u64(), wild_u64(), wild_u64()),
    )
        .prop_map(
            |(
                (default_limit, max_limit, max_ttl_ms, max_retry_after_ms, max_period_ms),
                (max_leases, max_slot_keys, max_rate_keys),
            )| Settings {
                default_limit,
                max_limit,
                max_ttl_ms,
                max_retry_after_ms,
                max_period_ms,
                max_leases,
                max_slot_keys,
                max_rate_keys,
            },
        );
    let bare = prop_oneof![
        (
            prop::collection::vec(wild_string(), 0..10),
            wild_string(),
            wild_string(),
            wild_u64()
        )
            .prop_map(|(keys, lease_id, holder, ttl_ms)| Op::Acquire(Acquire {
                keys,
                lease_id,
                holder,
                ttl_ms
            })),
        wild_string().prop_map(|lease_id| Op::Release { lease_id }),
        (wild_string(), wild_u64()).prop_map(|(lease_id, ttl_ms)| Op::Renew { lease_id, ttl_ms }),
        (wild_u32(), wild_u32()).prop_map(|(max_leases, max_rate_keys)| Op::Expire {
            max_leases,
            max_rate_keys
        }),
        (wild_string(), wild_u32()).prop_map(|(key, limit)| Op::SetLimit { key, limit }),
        wild_string().prop_map(|key| Op::DeleteLimit { key }),
        prop::collection::vec(check, 0..18).prop_map(|checks| Op::RateCheck { checks }),
        (wild_string(), wild_policy()).prop_map(|(name, policy)| Op::PutPolicy { name, policy }),
        wild_string().prop_map(|name| Op::DeletePolicy { name }),
        (wild_string(), wild_u32()).prop_map(|(name, multiplier_milli)| Op::PutTier {
            name,
            multiplier_milli
        }),
        wild_string().prop_map(|name| Op::DeleteTier { name }),
        (wild_string(), any::<bool>()).prop_map(|(name, shadow)| Op::SetPolicyMode {
            name,
            mode: if shadow { Mode::Shadow } else { Mode::Enforce },
        }),
        (
            wild_u64(),
            prop::collection::vec((wild_string(), wild_policy()), 0..4),
            prop::collection::vec(wild_string(), 0..3)
        )
            .prop_map(
                |(source_digest, policies, shadow)| Op::ConfigureModes(Box::new(
                    ModedConfiguration {
                        config: Configuration {
                            source_digest,
                            settings: Settings::default(),
                            policies,
                            tiers: vec![],
                        },
                        shadow,
                    }
                ))
            ),
        (
            wild_u64(),
            settings,
            prop::collection::vec((wild_string(), wild_policy()), 0..4),
            prop::collection::vec((wild_string(), wild_u32()), 0..3)
        )
            .prop_map(|(source_digest, settings, policies, tiers)| Op::Configure(
                Box::new(Configuration {
                    source_digest,
                    settings,
                    policies,
                    tiers
                })
            )),
        Just(Op::Noop),
        wild_descriptor_op(),
        (wild_string(), wild_u32(), wild_u64()).prop_map(|(key, amount, expiry_ms)| {
            Op::CounterIncr {
                key,
                amount,
                expiry_ms,
            }
        }),
        wild_string().prop_map(|key| Op::CounterClear { key }),
        wild_allow_op(),
        (
            prop::collection::vec(wild_string(), 0..10),
            wild_string(),
            wild_string(),
            wild_u64(),
            wild_u64(),
        )
            .prop_map(
                |(keys, lease_id, holder, ttl_ms, wait_ms)| Op::AcquireWait {
                    acquire: Acquire {
                        keys,
                        lease_id,
                        holder,
                        ttl_ms,
                    },
                    wait_ms,
                }
            ),
        wild_string().prop_map(|lease_id| Op::LeaveQueue { lease_id }),
    ];
    // Any op may come from any caller, wrapped once or (invalidly) twice.
    (
        bare,
        prop::option::of((wild_string(), any::<bool>())),
        any::<bool>(),
    )
        .prop_map(|(op, caller, twice)| match caller {
            None => op,
            Some((name, admin)) => {
                let op = op.by(Caller { name, admin });
                if twice {
                    op.by(Caller::system())
                } else {
                    op
                }
            }
        })
}

/// Allowlist ops: entries from a few meaningful patterns (and any string), the
/// admin bounds (any numbers).
fn wild_allow_op() -> impl Strategy<Value = Op> {
    let pattern = prop_oneof![
        (prop_oneof![
            3 => prop::sample::select(vec!["user:admin-*", "*", "ip:*", "a*b*"]).prop_map(String::from),
            1 => wild_string(),
        ])
        .prop_map(AllowPattern::Key),
        (prop_oneof![
            3 => prop::sample::select(vec![
                "10.0.0.0/8", "10.1.2.3", "2001:db8::/32", "::/0", "0.0.0.0/0", "::ffff:10.0.0.0/104",
                "10.0.0.0/33", "2001:db8::/129", "1.2.3", "10.0.0.0/-1",
            ]).prop_map(String::from),
            1 => wild_string(),
        ])
        .prop_map(AllowPattern::Ip),
    ];
    let entry = (prop::option::of(wild_string()), pattern, 0u8..5)
        .prop_map(|(policy, pattern, verb)| (verb, AllowEntry { policy, pattern }));
    prop_oneof![
        5 => entry.prop_map(|(verb, e)| if verb < 3 { Op::Allow(e) } else { Op::Disallow(e) }),
        1 => (wild_u32(), wild_u32()).prop_map(|(max_allowlist, audit_entries)| {
            Op::SetAdminLimits(AdminLimits { max_allowlist, audit_entries })
        }),
    ]
}

fn wild_command() -> impl Strategy<Value = Command> {
    (wild_u64(), prop::collection::vec(wild_op(), 0..4)).prop_map(|(t, ops)| Command::new(t, ops))
}

/// Queries built from the strings of a command.
fn wild_queries(c: &Command) -> Vec<Query> {
    let mut qs = vec![
        Query::Policies,
        Query::Allowlist,
        Query::Audit {
            since: 0,
            prefix: String::new(),
            max: u32::MAX,
        },
        Query::Limits {
            prefix: String::new(),
            max: u32::MAX,
        },
    ];
    for op in &c.ops {
        match op.inner() {
            Op::Acquire(a) | Op::AcquireWait { acquire: a, .. } => {
                for k in &a.keys {
                    qs.push(Query::Queue { key: k.clone() });
                }
                qs.push(Query::Lease {
                    lease_id: a.lease_id.clone(),
                });
                for k in &a.keys {
                    qs.push(Query::Usage { key: k.clone() });
                    qs.push(Query::Limit { key: k.clone() });
                    qs.push(Query::Limits {
                        prefix: k.clone(),
                        max: 2,
                    });
                }
            }
            Op::SetLimit { key, .. } | Op::DeleteLimit { key } => {
                qs.push(Query::Usage { key: key.clone() })
            }
            Op::CounterIncr { key, .. } | Op::CounterClear { key } => {
                qs.push(Query::Counter { key: key.clone() })
            }
            _ => {}
        }
    }
    qs
}

// ------------------------------------------------------------------------------------
// Counters

/// One step of a counter session: a clock step, then an op on one of three keys.
#[derive(Debug, Clone)]
enum CounterStep {
    Incr(&'static str, u32, u64),
    Clear(&'static str),
    Expire(u32),
}

fn counter_steps() -> impl Strategy<Value = Vec<(u64, CounterStep)>> {
    let key = prop::sample::select(vec!["c0", "c1", "LIMITER/a/b"]);
    let step = prop_oneof![
        6 => (key.clone(), 1u32..4, 1u64..600).prop_map(|(k, a, e)| CounterStep::Incr(k, a, e)),
        1 => key.prop_map(CounterStep::Clear),
        1 => (0u32..3).prop_map(CounterStep::Expire),
    ];
    prop::collection::vec((prop_oneof![3 => 0u64..200, 1 => Just(0u64)], step), 1..80)
}

/// The naive model of one counter: (value, expires_at_ms), live while now < expiry.
fn model_counter(m: &BTreeMap<&str, (u64, u64)>, key: &str, now: u64) -> (u64, Option<u64>) {
    match m.get(key) {
        Some(&(v, e)) if e > now => (v, Some(e)),
        _ => (0, None),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Counters: every increment and read equals a naive model (a live counter adds,
    /// an absent or expired one restarts at `amount` with expiry `now + expiry_ms`),
    /// the expire sweep never changes a read, a replica restored from a snapshot at
    /// a random step answers everything after it identically, and both end with the
    /// same digest as a replica that applied the whole log.
    #[test]
    fn counters_match_the_model_and_replicas_agree(steps in counter_steps(), at in any::<Index>()) {
        let mut state = State::new();
        let mut model: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let mut restored: Option<State> = None;
        let mut log = Vec::new();
        let cut = at.index(steps.len());
        let mut now = 1_000u64;
        for (i, (dt, step)) in steps.iter().enumerate() {
            if i == cut {
                restored = Some(State::restore(&state.snapshot()).unwrap());
            }
            now += dt;
            let op = match *step {
                CounterStep::Incr(key, amount, expiry_ms) => Op::CounterIncr { key: key.into(), amount, expiry_ms },
                CounterStep::Clear(key) => Op::CounterClear { key: key.into() },
                CounterStep::Expire(n) => Op::Expire { max_leases: 0, max_rate_keys: n },
            };
            let cmd = Command::single(now, op);
            let reply = state.apply(&cmd);
            if let Some(r) = restored.as_mut() {
                prop_assert_eq!(&r.apply(&cmd), &reply);
            }
            log.push(cmd);
            match *step {
                CounterStep::Incr(key, amount, expiry_ms) => {
                    let next = match model_counter(&model, key, now) {
                        (v, Some(e)) => (v + u64::from(amount), e),
                        (_, None) => (u64::from(amount), now + expiry_ms),
                    };
                    model.insert(key, next);
                    let want = Outcome::Counter(CounterInfo {
                        key: key.into(),
                        value: next.0,
                        expires_at_ms: Some(next.1),
                        ttl_ms: next.1 - now,
                    });
                    prop_assert_eq!(&reply[0], &Ok(want));
                }
                CounterStep::Clear(key) => {
                    let live = model_counter(&model, key, now).1.is_some();
                    model.remove(key);
                    prop_assert_eq!(&reply[0], &Ok(Outcome::CounterCleared { cleared: live }));
                }
                CounterStep::Expire(_) => {}
            }
            for key in ["c0", "c1", "LIMITER/a/b"] {
                let (value, expires_at_ms) = model_counter(&model, key, now);
                let got = state.query(&Query::Counter { key: key.into() }, now);
                let want = Outcome::Counter(CounterInfo {
                    key: key.into(),
                    value,
                    expires_at_ms,
                    ttl_ms: expires_at_ms.map_or(0, |e| e - now),
                });
                prop_assert_eq!(got, Ok(want));
            }
        }
        let mut replay = State::new();
        for c in &log {
            replay.apply(c);
        }
        prop_assert_eq!(replay.digest(), state.digest());
        prop_assert_eq!(replay.snapshot(), state.snapshot());
        if let Some(r) = restored {
            prop_assert_eq!(r.digest(), state.digest());
        }
        let again = State::restore(&state.snapshot()).unwrap();
        prop_assert_eq!(again.digest(), state.digest());
    }
}

// ------------------------------------------------------------------------------------
// Shadow mode

/// Rate checks against the policy `api` (and sometimes an inline limit beside it):
/// (clock step, key, cost, with an inline check).
fn shadow_steps() -> impl Strategy<Value = Vec<(u64, &'static str, u32, bool)>> {
    prop::collection::vec(
        (
            prop_oneof![3 => 0u64..400, 1 => Just(0u64)],
            prop::sample::select(vec!["u0", "u1"]),
            1u32..=3,
            prop::bool::weighted(0.2),
        ),
        1..80,
    )
}

proptest! {
    #![proptest_config(config())]

    /// A shadow rate policy decides and charges exactly like the same policy
    /// enforced: replayed against two states that differ only in the policy's mode,
    /// every check gets the same per-key result, the enforced state denies exactly
    /// when the shadow state allows with a note naming the policy and the key, and
    /// the shadow state never denies because of the policy. Both states also survive
    /// a snapshot round trip with their modes.
    #[test]
    fn a_shadow_policy_charges_like_an_enforced_one(steps in shadow_steps()) {
        let spec = RateSpec { limit: 10, period_ms: 1000, burst: 3 };
        let setup = |mode| Command::new(0, vec![
            Op::PutPolicy { name: "api".into(), policy: Policy::Rate(spec) },
            Op::SetPolicyMode { name: "api".into(), mode },
        ]);
        let (mut enforced, mut shadow) = (State::new(), State::new());
        enforced.apply(&setup(Mode::Enforce));
        shadow.apply(&setup(Mode::Shadow));
        let mut t = 0;
        // Inline checks the shadow state charged and the enforced one did not (the
        // request went through there; enforcing would have stopped it).
        let mut extra_ip = 0u32;
        for (i, (dt, key, cost, inline)) in steps.into_iter().enumerate() {
            t += dt;
            let mut checks = vec![RateCheck {
                key: key.into(),
                cost,
                limit: RateLimitRef::Policy { name: "api".into(), tier: None },
            }];
            if inline {
                // Generous and a fresh bucket each time: never denies, so the
                // request's fate is the policy's.
                checks.push(RateCheck {
                    key: format!("ip{i}"),
                    cost: 1,
                    limit: RateLimitRef::Inline(RateSpec { limit: 1000, period_ms: 1000, burst: 1000 }),
                });
            }
            let cmd = Command::single(t, Op::RateCheck { checks });
            let e = enforced.apply(&cmd).remove(0);
            let s = shadow.apply(&cmd).remove(0);
            match (&e, &s) {
                (Ok(Outcome::Rate(e)), Ok(Outcome::Rate(s))) => {
                    prop_assert!(e.allowed && s.allowed);
                    prop_assert_eq!(&e.results, &s.results);
                }
                (Ok(Outcome::Rate(e)), Ok(Outcome::RateShadow { decision, shadow_denied })) => {
                    prop_assert!(!e.allowed && decision.allowed);
                    prop_assert_eq!(&e.results[..1], &decision.results[..1]);
                    prop_assert_eq!(shadow_denied.len(), 1);
                    prop_assert_eq!(shadow_denied[0].key.as_str(), key);
                    prop_assert_eq!(shadow_denied[0].policy.as_str(), "api");
                    extra_ip += u32::from(inline);
                }
                other => prop_assert!(false, "unexpected pair {:?}", other),
            }
        }
        // Same buckets: the enforced state's snapshot, with api made shadow (and the
        // inline charges it never made), is the shadow state's.
        let back = State::restore(&shadow.snapshot()).unwrap();
        prop_assert_eq!(back.digest(), shadow.digest());
        if extra_ip > 0 {
            return Ok(());
        }
        let mut e2 = State::restore(&enforced.snapshot()).unwrap();
        let mut s2 = back;
        e2.apply(&Command::single(t, Op::SetPolicyMode { name: "api".into(), mode: Mode::Shadow }));
        // The two audit rings differ (the mode was switched at another time): bring
        // both down to one identical record, so the digests compare the rest.
        let same_last = Command::new(t, vec![
            Op::SetAdminLimits(AdminLimits { max_allowlist: 1000, audit_entries: 1 }),
            Op::SetLimit { key: "audit-marker".into(), limit: 1 },
        ]);
        e2.apply(&same_last);
        s2.apply(&same_last);
        prop_assert_eq!(e2.audit().collect::<Vec<_>>(), s2.audit().collect::<Vec<_>>());
        prop_assert_eq!(e2.digest(), s2.digest());
    }
}

/// The allowlist property's universe: entries, and keys with the truth of "entry i
/// matches key j" written out by hand (not computed by the code under test).
const ALLOW_ENTRIES: [(Option<&str>, bool, &str); 4] = [
    (None, false, "user:admin-*"),
    (Some("api"), true, "10.0.0.0/8"),
    (None, true, "2001:db8::/32"),
    (Some("login"), false, "*:11.0.0.1"),
];
const ALLOW_KEYS: [(&str, [bool; 4]); 8] = [
    ("user:admin-1", [true, false, false, false]),
    ("user:bob", [false, false, false, false]),
    ("ip:10.1.2.3", [false, true, false, false]),
    ("ip:11.0.0.1", [false, false, false, true]),
    ("ip:2001:db8::7", [false, false, true, false]),
    ("ip:2001:db9::7", [false, false, false, false]),
    ("ip:::ffff:10.0.0.9", [false, true, false, false]),
    ("10.200.0.1", [false, true, false, false]),
];

fn allow_entry(i: usize) -> AllowEntry {
    let (policy, ip, p) = ALLOW_ENTRIES[i];
    AllowEntry {
        policy: policy.map(String::from),
        pattern: if ip {
            AllowPattern::Ip(p.into())
        } else {
            AllowPattern::Key(p.into())
        },
    }
}

/// One step: add (0) or remove (1) an entry, or check (2) a key under a policy.
fn allow_steps() -> impl Strategy<Value = Vec<(u64, u8, usize, usize, bool)>> {
    prop::collection::vec(
        (0u64..300, 0u8..3, 0usize..8, 0usize..4, any::<bool>()),
        1..60,
    )
}

proptest! {
    #![proptest_config(config())]

    /// Allowlisted checks are exactly those an entry in force matches (scope and
    /// pattern), and they charge nothing: a second state that receives a no-op
    /// instead of every allowlisted check ends every step with the same digest.
    /// Both survive a snapshot round trip.
    #[test]
    fn allowlisted_checks_match_the_truth_table_and_charge_nothing(steps in allow_steps()) {
        let spec = RateSpec { limit: 2, period_ms: 1000, burst: 2 };
        let setup = Command::new(0, vec![
            Op::PutPolicy { name: "api".into(), policy: Policy::Rate(spec) },
            Op::PutPolicy { name: "login".into(), policy: Policy::Rate(spec) },
        ]);
        let (mut with, mut without) = (State::new(), State::new());
        with.apply(&setup);
        without.apply(&setup);
        let mut on = [false; 4];
        let mut t = 0;
        for (dt, what, k, e, api) in steps {
            t += dt;
            let op = match what {
                0 => Op::Allow(allow_entry(e)),
                1 => Op::Disallow(allow_entry(e)),
                _ => Op::RateCheck { checks: vec![RateCheck {
                    key: ALLOW_KEYS[k].0.into(),
                    cost: 1,
                    limit: RateLimitRef::Policy {
                        name: if api { "api" } else { "login" }.into(),
                        tier: None,
                    },
                }] },
            };
            let cmd = Command::single(t, op);
            let reply = with.apply(&cmd).remove(0);
            let policy = if api { "api" } else { "login" };
            let expect = (0..4).find(|&i| {
                on[i] && ALLOW_KEYS[k].1[i]
                    && ALLOW_ENTRIES[i].0.is_none_or(|p| p == policy)
            });
            match (what, &reply) {
                (0, Ok(Outcome::AllowlistChanged { changed })) => {
                    prop_assert_eq!(*changed, !on[e]);
                    on[e] = true;
                    without.apply(&cmd);
                }
                (1, Ok(Outcome::AllowlistChanged { changed })) => {
                    prop_assert_eq!(*changed, on[e]);
                    on[e] = false;
                    without.apply(&cmd);
                }
                (2, Ok(Outcome::RateAllowlisted { decision, allowlisted, shadow_denied })) => {
                    let i = expect.ok_or_else(|| TestCaseError::fail(format!(
                        "{} under {policy} allowlisted by {allowlisted:?}, no entry in force matches",
                        ALLOW_KEYS[k].0
                    )))?;
                    prop_assert!(decision.allowed && shadow_denied.is_empty());
                    prop_assert_eq!(allowlisted, &vec![Allowlisted {
                        key: ALLOW_KEYS[k].0.into(),
                        entry: with.allowlist().find(|x| **x == canonical(i)).cloned()
                            .ok_or_else(|| TestCaseError::fail("entry not listed"))?,
                    }]);
                    without.apply(&Command::single(t, Op::Noop));
                }
                (2, Ok(Outcome::Rate(_))) => {
                    prop_assert_eq!(expect, None, "{} under {} not allowlisted", ALLOW_KEYS[k].0, policy);
                    without.apply(&cmd);
                }
                (_, r) => prop_assert!(false, "unexpected reply {:?}", r),
            }
            prop_assert_eq!(with.digest(), without.digest());
        }
        let restored = State::restore(&with.snapshot()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(restored.digest(), with.digest());
        prop_assert_eq!(restored.allowlist().collect::<Vec<_>>(), with.allowlist().collect::<Vec<_>>());
    }
}

/// Entry `i` in the canonical form the state stores (`10.0.0.0/8` stays, a key
/// glob is unchanged, `2001:db8::/32` stays).
fn canonical(i: usize) -> AllowEntry {
    quorate_core::state::canonical_entry(&allow_entry(i)).unwrap_or_else(|_| allow_entry(i))
}

/// One audit step: a caller (None: the system), a key, set (Some) or delete its override.
type AuditStep = (Option<&'static str>, usize, Option<u32>);
/// An expected audit record: index, caller, key, before, after.
type Expected = (u64, String, String, Option<String>, Option<String>);

fn audit_steps() -> impl Strategy<Value = (u32, Vec<AuditStep>)> {
    (
        1u32..6,
        prop::collection::vec(
            (
                prop::sample::select(vec![None, Some("ops"), Some("")]),
                0usize..3,
                prop::option::of(1u32..4),
            ),
            1..40,
        ),
    )
}

proptest! {
    #![proptest_config(config())]

    /// The audit ring holds exactly the last `ring` changes that a plain model of
    /// the overrides computes — caller (`system`, a token's name, `open`), log index,
    /// key and the value before and after — and nothing for an op that changed
    /// nothing; a restored copy holds the same ring and digest.
    #[test]
    fn the_audit_ring_keeps_the_last_changes_with_before_and_after((ring, steps) in audit_steps()) {
        let mut s = State::new();
        s.apply_at(1, &Command::single(0, Op::SetAdminLimits(AdminLimits {
            max_allowlist: 10,
            audit_entries: ring,
        })));
        let mut model: BTreeMap<usize, u32> = BTreeMap::new();
        let mut expect: Vec<Expected> = vec![(
            1,
            "system".into(),
            "admin_limits".into(),
            Some("max_allowlist=1000 audit_entries=1000".into()),
            Some(format!("max_allowlist=10 audit_entries={ring}")),
        )];
        for (i, (caller, k, value)) in steps.into_iter().enumerate() {
            let index = i as u64 + 2;
            let key = format!("k{k}");
            let op = match value {
                Some(limit) => Op::SetLimit { key: key.clone(), limit },
                None => Op::DeleteLimit { key: key.clone() },
            };
            let op = match caller {
                Some(name) => op.by(Caller { name: name.into(), admin: true }),
                None => op,
            };
            let r = s.apply_at(index, &Command::single(index * 10, op)).remove(0);
            prop_assert!(r.is_ok(), "{:?}", r);
            let before = model.get(&k).map(u32::to_string);
            match value {
                Some(v) => { model.insert(k, v); }
                None => { model.remove(&k); }
            }
            let after = model.get(&k).map(u32::to_string);
            if before != after {
                let who = match caller { None => "system", Some("") => "open", Some(n) => n };
                expect.push((index, who.into(), format!("limit:{key}"), before, after));
            }
        }
        let keep = expect.len().saturating_sub(ring as usize);
        let got: Vec<_> = s
            .audit()
            .map(|r| (r.index, r.caller.clone(), r.key.clone(), r.before.clone(), r.after.clone()))
            .collect();
        prop_assert_eq!(&got, &expect[keep..].to_vec());
        prop_assert!(s.audit().all(|r| r.time_ms == r.index * 10 || r.index == 1));
        let restored = State::restore(&s.snapshot()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(restored.digest(), s.digest());
        prop_assert_eq!(restored.audit().collect::<Vec<_>>(), s.audit().collect::<Vec<_>>());
    }
}

// ------------------------------------------------------------------------------------
// The wait queue

const Q_KEYS: [&str; 3] = ["q0", "q1", "q2"];
const Q_IDS: [&str; 8] = ["W0", "W1", "W2", "W3", "W4", "W5", "W6", "W7"];
const Q_CALLERS: [&str; 2] = ["alice", "bob"];

/// Queue ops over three keys (limits 1, 1, 2 unless raised) and eight lease ids,
/// from two clients or the system: waiting acquires dominate, with releases,
/// leaves, plain acquires, renewals, housekeeping and raised limits (an override
/// removed: the default, 10) to free slots in every way the core knows.
fn queue_op() -> impl Strategy<Value = Op> {
    let keys = prop::sample::subsequence(Q_KEYS.to_vec(), 1..=2)
        .prop_shuffle()
        .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
    let id = prop::sample::select(Q_IDS.to_vec()).prop_map(String::from);
    let acquire = (keys, id.clone(), 1u64..2000).prop_map(|(keys, lease_id, ttl_ms)| Acquire {
        keys,
        lease_id,
        holder: String::new(),
        ttl_ms,
    });
    let bare = prop_oneof![
        8 => (acquire.clone(), prop_oneof![1 => Just(0u64), 6 => 1u64..3000])
            .prop_map(|(acquire, wait_ms)| Op::AcquireWait { acquire, wait_ms }),
        2 => acquire.prop_map(Op::Acquire),
        4 => id.clone().prop_map(|lease_id| Op::Release { lease_id }),
        3 => id.clone().prop_map(|lease_id| Op::LeaveQueue { lease_id }),
        1 => (id, 1u64..2000).prop_map(|(lease_id, ttl_ms)| Op::Renew { lease_id, ttl_ms }),
        1 => (0u32..3).prop_map(|max_leases| Op::Expire { max_leases, max_rate_keys: 0 }),
        1 => prop::sample::select(Q_KEYS.to_vec()).prop_map(|k| Op::DeleteLimit { key: k.into() }),
        1 => Just(Op::Noop),
    ];
    (
        bare,
        prop::option::of(prop::sample::select(Q_CALLERS.to_vec())),
    )
        .prop_map(|(op, who)| match who {
            Some(name) => op.by(Caller {
                name: name.into(),
                admin: false,
            }),
            None => op,
        })
}

fn queue_sequence() -> impl Strategy<Value = Vec<Command>> {
    let step = (
        prop_oneof![4 => 0u64..400, 1 => Just(0u64), 1 => 400u64..2500],
        prop_oneof![4 => prop::collection::vec(queue_op(), 1..=1), 1 => prop::collection::vec(queue_op(), 2..=3)],
    );
    prop::collection::vec(step, 1..70).prop_map(|steps| {
        let mut t = 1_000;
        let limits = [("q0", 1), ("q1", 1), ("q2", 2)];
        let mut cmds = vec![Command::new(
            t,
            limits
                .iter()
                .map(|(k, l)| Op::SetLimit {
                    key: k.to_string(),
                    limit: *l,
                })
                .collect(),
        )];
        for (dt, ops) in steps {
            t += dt;
            cmds.push(Command::new(t, ops));
        }
        cmds
    })
}

/// The waiters on each key, first first, as the state answers at `now`.
fn queues(state: &State, now: u64) -> BTreeMap<&'static str, Vec<String>> {
    Q_KEYS
        .iter()
        .map(
            |k| match state.query(&Query::Queue { key: k.to_string() }, now) {
                Ok(Outcome::Queue(v)) => (*k, v.waiters.into_iter().map(|w| w.lease_id).collect()),
                other => panic!("{other:?}"),
            },
        )
        .collect()
}

/// The grants an entry made: those answered to its ops (new, not reused) and those
/// the queue made, as (lease id, keys).
fn new_grants(replies: &[Reply], queue: &[Grant]) -> Vec<(String, Vec<String>)> {
    let answered = replies.iter().filter_map(|r| match r {
        Ok(Outcome::Granted(g)) | Ok(Outcome::GrantedShadow { grant: g, .. }) if !g.reused => {
            Some(g)
        }
        _ => None,
    });
    answered
        .chain(queue)
        .map(|g| {
            (
                g.lease_id.clone(),
                g.slots.iter().map(|s| s.key.clone()).collect(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    /// The queue's invariants over random sessions (see the module docs): limits
    /// hold, grants respect FIFO order, queue grants are live leases of the owner
    /// that queued them, and replicas — one applying from the start, one restored
    /// from a chunked cut that stayed open while queue ops applied — agree on every
    /// reply, every queue grant and every digest.
    #[test]
    fn the_queue_is_fair_bounded_and_replicated(cmds in queue_sequence(), at in any::<Index>(), budget in 1usize..4) {
        let cut_at = at.index(cmds.len());
        let mut a = State::new();
        let mut replica = State::new();
        let mut cut = None;
        let mut restored: Option<State> = None;
        // Each applied entry's replies and queue grants, to replay into the copy.
        let mut history: Vec<(Vec<Reply>, Vec<Grant>)> = Vec::new();
        let mut owners: BTreeMap<String, String> = BTreeMap::new();
        for (i, cmd) in cmds.iter().enumerate() {
            if i == cut_at {
                let want = a.snapshot();
                cut = Some((a.begin_cut(), want, i));
            }
            let before = queues(&a, cmd.time_ms);
            let replies = a.apply(cmd);
            let grants = a.take_queue_grants();
            prop_assert_eq!(&replica.apply(cmd), &replies, "replica replies, entry {}", i);
            prop_assert_eq!(&replica.take_queue_grants(), &grants, "replica grants, entry {}", i);
            prop_assert_eq!(replica.digest(), a.digest());
            if let Some(r) = restored.as_mut() {
                prop_assert_eq!(&r.apply(cmd), &replies, "restored replies, entry {}", i);
                prop_assert_eq!(&r.take_queue_grants(), &grants);
                prop_assert_eq!(r.digest(), a.digest());
            }
            history.push((replies.clone(), grants.clone()));

            // Who queued each waiter (the caller of the op first answered `Queued`
            // for it; a retry keeps the owner): the lease the queue grants it must be
            // theirs. Only ids still waiting at the entry's time keep their owner.
            owners.retain(|id, _| before.values().any(|q| q.contains(id)));
            for (op, reply) in cmd.ops.iter().zip(&replies) {
                let who = match op {
                    Op::As { caller, .. } => caller.name.clone(),
                    _ => String::new(),
                };
                match (op.inner(), reply) {
                    (_, Ok(Outcome::Queued(q))) => {
                        owners.entry(q.lease_id.clone()).or_insert(who);
                    }
                    // Gone from the queue (or its grant released): the id is free again.
                    (Op::LeaveQueue { lease_id }, Ok(Outcome::LeftQueue { left: true, .. }))
                    | (Op::Release { lease_id }, Ok(Outcome::Released { released: true })) => {
                        owners.remove(lease_id);
                    }
                    _ => {}
                }
            }
            for g in &grants {
                let live = match a.query(&Query::Lease { lease_id: g.lease_id.clone() }, cmd.time_ms) {
                    Ok(Outcome::Lease(l)) => l,
                    other => panic!("{other:?}"),
                };
                // The lease may already be released by a later op of the same entry.
                if let Some(l) = live.filter(|l| l.fencing_token == g.fencing_token) {
                    prop_assert_eq!(
                        Some(&l.owner), owners.get(&g.lease_id),
                        "queue grant of {} to another owner", g.lease_id
                    );
                }
            }

            // Limits: no key ever holds more live leases than its limit (limits here
            // are only ever raised).
            for k in Q_KEYS {
                match a.query(&Query::Usage { key: k.into() }, cmd.time_ms) {
                    Ok(Outcome::Usage(u)) => prop_assert!(u.used <= u.limit, "{:?}", u),
                    other => panic!("{other:?}"),
                }
            }

            // FIFO: a grant never passes a waiter that was ahead of it on one of its
            // keys and is still waiting after the entry. Single-op entries only: in a
            // batch a waiter could leave and queue again (at the back) under its id.
            if cmd.ops.len() == 1 {
                let after = queues(&a, cmd.time_ms);
                for (id, keys) in new_grants(&replies, &grants) {
                    for k in &keys {
                        let Some(pre) = before.get(k.as_str()) else { continue };
                        let mine = pre.iter().position(|w| *w == id).unwrap_or(pre.len());
                        for earlier in &pre[..mine] {
                            prop_assert!(
                                !after[k.as_str()].contains(earlier),
                                "{} granted on {} past {}, still waiting (entry {}: {:?})",
                                id, k, earlier, i, cmd
                            );
                        }
                    }
                }
            }

            // The cut: a chunk per entry; once written it is the snapshot at its start,
            // and a copy restored from it, given the entries since, is this state.
            if let Some((mut c, want, from)) = cut.take() {
                if a.continue_cut(&mut c, budget).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    let bytes = a.end_cut(c).map_err(|e| TestCaseError::fail(e.to_string()))?.into_bytes();
                    prop_assert_eq!(&bytes, &want, "the cut differs from the snapshot at its start");
                    let mut r = State::restore(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for (j, c) in cmds[from..=i].iter().enumerate() {
                        let (replies, grants) = &history[from + j];
                        prop_assert_eq!(&r.apply(c), replies, "replayed replies, entry {}", from + j);
                        prop_assert_eq!(&r.take_queue_grants(), grants);
                    }
                    prop_assert_eq!(r.digest(), a.digest());
                    prop_assert_eq!(r.stats(), a.stats());
                    restored = Some(r);
                } else {
                    cut = Some((c, want, from));
                }
            }
        }
        let copy = State::restore(&a.snapshot()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(copy.digest(), a.digest());
        prop_assert_eq!(copy.snapshot(), a.snapshot());
    }
}
