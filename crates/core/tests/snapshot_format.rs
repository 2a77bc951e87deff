//! The snapshot format is a contract between versions: bytes written by one release
//! are restored by the next (a follower restarting, a snapshot installed from a
//! leader still on the old version). These tests pin the bytes.
//!
//! `fixtures/snapshot_v3.hex` is the snapshot of [`rich_state`] as written by the
//! version 3 code before the state module was split into `state/`; the current code
//! must restore it to the very state the same ops build today.

use quorate_core::descriptors::{DescriptorConfig, DescriptorNode, Domain, NodeLimit, Unit};
use quorate_core::{
    Acquire, Caller, Command, Configuration, Op, Outcome, Policy, RateCheck, RateLimitRef,
    RateSpec, Settings, State,
};

fn hex_decode(hex: &str) -> Vec<u8> {
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A state touching every part of the snapshot: settings, policies of both kinds,
/// tiers, overrides, leases of two owners on shared and single keys, a dead lease not
/// yet purged, rate buckets (policy, tiered, inline), the rate cursor, seen nodes and
/// a descriptor table.
pub fn rich_state() -> State {
    let mut s = State::new();
    let spec = |limit, burst| RateSpec {
        limit,
        period_ms: 60_000,
        burst,
    };
    let acquire = |keys: &[&str], id: &str, ttl_ms: u64| {
        Op::Acquire(Acquire {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            lease_id: id.into(),
            holder: format!("holder of {id}"),
            ttl_ms,
        })
    };
    let svc = Caller {
        name: "svc".into(),
        admin: false,
    };
    let rate = |key: &str, limit: RateLimitRef| RateCheck {
        key: key.into(),
        cost: 1,
        limit,
    };
    let table = DescriptorConfig {
        source_digest: 11,
        domains: vec![Domain {
            name: "edge".into(),
            descriptors: vec![DescriptorNode {
                key: "remote_address".into(),
                value: None,
                limit: Some(NodeLimit::Rate {
                    name: "per_ip".into(),
                    requests_per_unit: 3,
                    unit: Unit::Minute,
                    burst: 3,
                }),
                descriptors: vec![],
            }],
        }],
    };
    let batches = vec![
        vec![Op::Configure(Box::new(Configuration {
            source_digest: 42,
            settings: Settings {
                default_limit: 4,
                ..Settings::default()
            },
            policies: vec![
                (
                    "orgs".into(),
                    Policy::Concurrency {
                        pattern: "org:*".into(),
                        limit: 2,
                    },
                ),
                ("api".into(), Policy::Rate(spec(30, 10))),
            ],
            tiers: vec![("gold".into(), 2000)],
        }))],
        vec![
            Op::SetLimit {
                key: "org:big".into(),
                limit: 50,
            },
            acquire(&["org:a", "global"], "L1", 60_000),
            acquire(&["org:a"], "L2", 500).by(svc.clone()),
            acquire(&["job:7"], "L3", 120_000).by(svc),
            Op::RateCheck {
                checks: vec![
                    rate(
                        "user:1",
                        RateLimitRef::Policy {
                            name: "api".into(),
                            tier: None,
                        },
                    ),
                    rate(
                        "user:2",
                        RateLimitRef::Policy {
                            name: "api".into(),
                            tier: Some("gold".into()),
                        },
                    ),
                    rate("ip:203.0.113.9", RateLimitRef::Inline(spec(5, 5))),
                ],
            },
            Op::MarkSeen { nodes: vec![1, 2] },
            Op::ConfigureDescriptors(Box::new(table)),
        ],
        // L2 is dead by now but not purged; the sweep moves the rate cursor.
        vec![Op::Expire {
            max_leases: 0,
            max_rate_keys: 2,
        }],
    ];
    for (i, ops) in batches.into_iter().enumerate() {
        let replies = s.apply(&Command::new(1_000 + 1_000 * i as u64, ops));
        assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    }
    s
}

#[test]
fn a_version_3_snapshot_restores_to_the_state_it_was_taken_of() {
    let bytes = hex_decode(include_str!("fixtures/snapshot_v3.hex"));
    assert_eq!(&bytes[..4], &3u32.to_le_bytes());
    let restored = State::restore(&bytes).expect("restore v3");
    // Restored, it writes the very same bytes (it holds no section)...
    assert_eq!(restored.snapshot(), bytes);
    let built = rich_state();
    assert_eq!(restored.stats(), built.stats());
    // ...and the same ops today build that state plus the audit ring of their
    // admin changes (a version 3 snapshot predates the ring, so it restores empty).
    assert_eq!(restored.audit().count(), 0);
    assert_eq!(sections_after_fixture(&built.snapshot(), &bytes), ["audit"]);
    // Nobody waited then: the queue restores empty.
    assert_eq!(restored.stats().waiters, 0);
}

/// `current` is the fixture's bytes with version 4 and trailing sections: their names.
fn sections_after_fixture(current: &[u8], fixture: &[u8]) -> Vec<String> {
    assert_eq!(&current[..4], &4u32.to_le_bytes());
    assert_eq!(
        &current[4..fixture.len()],
        &fixture[4..],
        "the version 3 part differs"
    );
    let sections: Vec<(String, Vec<u8>)> =
        bincode::deserialize(&current[fixture.len()..]).expect("trailing sections");
    sections.into_iter().map(|(name, _)| name).collect()
}

/// The same ops write exactly the fixture's bytes, then the audit section: the
/// version 3 layout is unchanged.
#[test]
fn the_current_format_writes_the_fixture_bytes() {
    let bytes = hex_decode(include_str!("fixtures/snapshot_v3.hex"));
    let built = rich_state();
    assert_eq!(
        built.audit().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["config", "limit:org:big", "seen", "descriptors"]
    );
    assert_eq!(sections_after_fixture(&built.snapshot(), &bytes), ["audit"]);
}

/// Counters are a version 4 section, written only while a counter is held: with
/// counters the snapshot is version 4 and restores them; once they have expired and
/// been swept, the state writes the very bytes and digest of one that never held any
/// (version 3 when no other section is held either; this rich state has an audit
/// trail, so both are version 4 with the same sections).
#[test]
fn counters_are_a_section_only_while_held() {
    let later = rich_state().now_ms() + 1_000;
    let incr = |key: &str| Op::CounterIncr {
        key: key.into(),
        amount: 2,
        expiry_ms: 500,
    };
    let sweep = Op::Expire {
        max_leases: 0,
        max_rate_keys: 1000,
    };
    let mut with = rich_state();
    with.apply(&Command::new(later, vec![incr("LIMITER/a"), incr("b")]));
    let bytes = with.snapshot();
    assert_eq!(&bytes[..4], &4u32.to_le_bytes());
    let restored = State::restore(&bytes).expect("restore v4 with counters");
    assert_eq!(restored.digest(), with.digest());
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.stats().counters, 2);

    let mut without = rich_state();
    without.apply(&Command::single(later, Op::Noop));
    with.apply(&Command::single(later + 500, sweep.clone()));
    without.apply(&Command::single(later + 500, sweep));
    assert_eq!(with.stats().counters, 0);
    assert_eq!(with.snapshot(), without.snapshot());
    assert_eq!(with.digest(), without.digest());
}

/// The wait queue is a version 4 section, written only while someone waits: a
/// restored copy holds the same waiters (same digest, same bytes) and grants the
/// same lease when a slot frees; the digest covers the queue (a retry that moves a
/// deadline changes it); and once nobody waits, the state writes the very bytes and
/// digest of one that never queued anyone.
#[test]
fn the_queue_is_a_section_only_while_anyone_waits() {
    let later = rich_state().now_ms() + 1_000;
    let on_org_a = |id: &str| Acquire {
        keys: vec!["org:a".into()],
        lease_id: id.into(),
        holder: String::new(),
        ttl_ms: 600_000,
    };
    // org:a's policy allows 2: L1 and L4 fill it, W waits.
    let fill = Op::Acquire(on_org_a("L4"));
    let wait = |wait_ms| Op::AcquireWait {
        acquire: on_org_a("W"),
        wait_ms,
    };
    let mut with = rich_state();
    let replies = with.apply(&Command::new(later, vec![fill.clone(), wait(5_000)]));
    assert!(matches!(replies[1], Ok(Outcome::Queued(_))), "{replies:?}");
    let bytes = with.snapshot();
    let mut restored = State::restore(&bytes).expect("restore v4 with a queue");
    assert_eq!(restored.stats().waiters, 1);
    assert_eq!(restored.digest(), with.digest());
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(&bytes[..4], &4u32.to_le_bytes());

    // The digest covers the waiters: a retry moving W's deadline changes it, on
    // both copies alike.
    let before = with.digest();
    let retry = Command::single(later + 1, wait(6_000));
    assert_eq!(restored.apply(&retry), with.apply(&retry));
    assert_ne!(with.digest(), before);
    assert_eq!(restored.digest(), with.digest());

    // Both grant W the slot L1 frees, with the same token.
    let (mut a, mut b) = (with.clone(), restored.clone());
    let release = Command::single(
        later + 2,
        Op::Release {
            lease_id: "L1".into(),
        },
    );
    assert_eq!(a.apply(&release), b.apply(&release));
    let grants = a.take_queue_grants();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants, b.take_queue_grants());
    assert_eq!(a.digest(), b.digest());

    // W leaves instead: the queue is gone from the bytes.
    let mut without = rich_state();
    without.apply(&Command::new(later, vec![fill]));
    without.apply(&Command::single(later + 1, Op::Noop));
    with.apply(&Command::single(
        later + 2,
        Op::LeaveQueue {
            lease_id: "W".into(),
        },
    ));
    without.apply(&Command::single(later + 2, Op::Noop));
    // The queue's tick purged dead leases while W waited: purge on both sides.
    let purge = Command::single(
        later + 3,
        Op::Expire {
            max_leases: 1000,
            max_rate_keys: 0,
        },
    );
    with.apply(&purge);
    without.apply(&purge);
    assert_eq!(with.stats().waiters, 0);
    assert_eq!(with.snapshot(), without.snapshot());
    assert_eq!(with.digest(), without.digest());
}
