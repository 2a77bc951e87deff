//! Unit tests of the state's internals (index shapes, interning, snapshot versions);
//! behaviour is tested by the golden scripts and the property tests.

use std::sync::Arc;

use super::slots::SlotSet;
use super::State;
use crate::command::{Acquire, Caller, Command, Op, Query, Settings};
use crate::error::CoreError;
use crate::outcome::Outcome;

/// A key's slot set behaves as the `BTreeSet` it replaces: inline with one entry,
/// a set from two, inline again at one, and "empty" exactly when the last goes.
#[test]
fn slot_sets_grow_and_shrink_like_ordered_sets() {
    let mut s = SlotSet::One((20, 2));
    s.insert((20, 2));
    assert_eq!(
        s,
        SlotSet::One((20, 2)),
        "inserting the same entry is a no-op"
    );
    s.insert((10, 1));
    s.insert((30, 3));
    assert!(matches!(s, SlotSet::Many(_)));
    assert_eq!((s.len(), s.first()), (3, Some((10, 1))));
    let from: Vec<_> = s.range_from((20, 0)).collect();
    assert_eq!(from, vec![(20, 2), (30, 3)]);
    assert!(!s.remove(&(10, 1)));
    assert!(
        !s.remove(&(99, 9)),
        "removing an absent entry changes nothing"
    );
    assert!(!s.remove(&(20, 2)));
    assert_eq!(s, SlotSet::One((30, 3)));
    assert_eq!(s.range_from((31, 0)).count(), 0);
    assert_eq!(s.range_from((30, 3)).count(), 1);
    assert!(!s.remove(&(20, 2)));
    assert!(
        s.remove(&(30, 3)),
        "the last entry gone: the key is dropped"
    );
}

/// Every lease of one caller shares one owner allocation, the count follows the
/// live leases, and a restored state interns the same way.
#[test]
fn lease_owners_are_interned_and_counted() {
    let acquire = |id: &str, who: &str| Op::As {
        caller: Caller {
            name: who.into(),
            admin: false,
        },
        op: Box::new(Op::Acquire(Acquire {
            keys: vec![format!("k:{id}")],
            lease_id: id.into(),
            holder: String::new(),
            ttl_ms: 60_000,
        })),
    };
    let release = |id: &str, who: &str| Op::As {
        caller: Caller {
            name: who.into(),
            admin: false,
        },
        op: Box::new(Op::Release {
            lease_id: id.into(),
        }),
    };
    let mut s = State::new();
    let ops = vec![
        acquire("a", "svc"),
        acquire("b", "svc"),
        acquire("c", "cron"),
    ];
    let replies = s.apply(&Command { time_ms: 10, ops });
    assert!(
        replies.iter().all(|r| matches!(r, Ok(Outcome::Granted(_)))),
        "{replies:?}"
    );
    let owner = |s: &State, id: &str| s.leases[&s.lease_ids[id]].owner.clone();
    assert!(Arc::ptr_eq(&owner(&s, "a"), &owner(&s, "b")));
    let counts = |s: &State| -> Vec<(String, u64)> {
        s.owners.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    };
    assert_eq!(counts(&s), [("cron".into(), 1), ("svc".into(), 2)]);

    let restored = State::restore(&s.snapshot()).unwrap();
    assert!(Arc::ptr_eq(&owner(&restored, "a"), &owner(&restored, "b")));
    assert_eq!(counts(&restored), counts(&s));

    let ops = vec![release("a", "svc"), release("c", "cron")];
    s.apply(&Command { time_ms: 20, ops });
    assert_eq!(counts(&s), [("svc".into(), 1)]);
    s.apply(&Command::single(30, release("b", "svc")));
    assert!(s.owners.is_empty());
}

/// Regression: an index entry whose lease is missing (seen once on a data dir left
/// by a mutation-testing build that repeated tokens) made `purge_key` spin forever
/// under the state machine's write lock. It must be dropped instead.
#[test]
fn an_orphaned_index_entry_is_dropped_not_spun_on() {
    let mut s = State::new();
    s.slots.insert("k".into(), SlotSet::One((5, 99)));
    s.expiry.insert((5, 99));
    let replies = s.apply(&Command::single(
        10,
        Op::Acquire(Acquire {
            keys: vec!["k".into()],
            lease_id: "a".into(),
            holder: String::new(),
            ttl_ms: 1000,
        }),
    ));
    assert!(matches!(replies[0], Ok(Outcome::Granted(_))), "{replies:?}");
    assert_eq!(s.slots["k"].len(), 1, "only the new lease is indexed");
}

/// A snapshot written by the version before caps and owners (bytes produced by
/// that code, checked in) restores: same leases, limits, policies and buckets,
/// default caps, system-owned leases — and it re-snapshots in the new format.
#[test]
fn a_version_1_snapshot_restores_with_defaults() {
    let hex = include_str!("../../tests/fixtures/snapshot_v1.hex").trim();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(&bytes[..4], &1u32.to_le_bytes());
    let mut s = State::restore(&bytes).unwrap();
    assert_eq!(s.settings().default_limit, 5);
    assert_eq!(s.settings().max_leases, Settings::default().max_leases);
    assert_eq!(
        s.settings().max_rate_keys,
        Settings::default().max_rate_keys
    );
    assert_eq!(s.policies_digest(), Some(7));
    let st = s.stats();
    assert_eq!((st.leases, st.slot_keys, st.rate_keys), (2, 3, 1));
    assert_eq!((st.overrides, st.policies, st.last_token), (1, 1, 2));
    let usage = s
        .query(
            &Query::Usage {
                key: "org:a".into(),
            },
            2000,
        )
        .unwrap();
    let Outcome::Usage(u) = usage else {
        panic!("{usage:?}")
    };
    assert_eq!((u.used, u.limit), (1, 3));
    assert_eq!(u.leases[0].lease_id, "L1");
    assert_eq!(u.leases[0].owner, "");
    // A lease from before ownership is the system's: a client may not take it
    // over, an admin (or open mode) may.
    let client = Caller {
        name: "svc".into(),
        admin: false,
    };
    let release = |c: Caller| {
        Op::Release {
            lease_id: "L2".into(),
        }
        .by(c)
    };
    let r = s.apply(&Command::single(2001, release(client)));
    assert!(matches!(r[0], Err(CoreError::Forbidden { .. })), "{r:?}");
    let again = State::restore(&s.snapshot()).unwrap();
    assert_eq!(again.digest(), s.digest());
    let r = s.apply(&Command::single(2002, release(Caller::system())));
    assert_eq!(r[0], Ok(Outcome::Released { released: true }));
}

#[test]
fn unknown_snapshot_versions_are_refused() {
    let mut bytes = State::new().snapshot();
    bytes[..4].copy_from_slice(&5u32.to_le_bytes());
    assert!(matches!(
        State::restore(&bytes),
        Err(CoreError::CorruptSnapshot(m)) if m.contains("version 5")
    ));
    assert!(State::restore(&[2, 0]).is_err());
}

/// An op carries at most one caller: a wrapped wrapper could otherwise let the
/// outer (say, a forwarding node's system identity) vouch for the inner.
#[test]
fn nested_callers_are_refused() {
    let mut s = State::new();
    let op = Op::SetLimit {
        key: "k".into(),
        limit: 3,
    }
    .by(Caller {
        name: "svc".into(),
        admin: false,
    })
    .by(Caller::system());
    let r = s.apply(&Command::single(1, op));
    assert!(
        matches!(&r[0], Err(CoreError::Invalid { field, .. }) if field == "op"),
        "{r:?}"
    );
    assert_eq!(s.stats().overrides, 0);
}

mod seen {
    use super::*;

    #[test]
    fn mark_seen_is_recorded_kept_in_snapshots_and_system_only() {
        let mut s = State::new();
        let r = s.apply(&Command::single(5, Op::MarkSeen { nodes: vec![1, 3] }));
        assert_eq!(r, vec![Ok(Outcome::Noop)]);
        assert_eq!(s.seen().iter().copied().collect::<Vec<_>>(), vec![1, 3]);
        let back = State::restore(&s.snapshot()).unwrap();
        assert_eq!(back.seen(), s.seen());
        assert_eq!(back.digest(), s.digest());
        let client = Caller {
            name: "svc".into(),
            admin: false,
        };
        let r = s.apply(&Command::single(
            6,
            Op::As {
                caller: client,
                op: Box::new(Op::MarkSeen { nodes: vec![2] }),
            },
        ));
        assert!(r[0].is_err(), "{r:?}");
        assert!(!s.seen().contains(&2));
        s.apply(&Command::single(7, Op::ForgetSeen { nodes: vec![1] }));
        assert_eq!(s.seen().iter().copied().collect::<Vec<_>>(), vec![3]);
    }

    /// The incremental digest follows every change and agrees with a restored copy.
    #[test]
    fn the_digest_tracks_every_change_and_survives_restore() {
        let mut s = State::new();
        let mut seen_digests = std::collections::BTreeSet::new();
        let ops = [
            Op::SetLimit {
                key: "k".into(),
                limit: 3,
            },
            Op::Acquire(crate::command::Acquire {
                keys: vec!["k".into()],
                lease_id: "a".into(),
                holder: String::new(),
                ttl_ms: 1000,
            }),
            Op::Renew {
                lease_id: "a".into(),
                ttl_ms: 5000,
            },
            Op::RateCheck {
                checks: vec![crate::command::RateCheck {
                    key: "r".into(),
                    cost: 1,
                    limit: crate::command::RateLimitRef::Inline(crate::command::RateSpec {
                        limit: 5,
                        period_ms: 1000,
                        burst: 5,
                    }),
                }],
            },
            Op::Release {
                lease_id: "a".into(),
            },
            Op::DeleteLimit { key: "k".into() },
        ];
        assert!(seen_digests.insert(s.digest()));
        for (i, op) in ops.into_iter().enumerate() {
            s.apply(&Command::single(10 + i as u64, op));
            assert!(
                seen_digests.insert(s.digest()),
                "step {i} left the digest unchanged"
            );
            let back = State::restore(&s.snapshot()).unwrap();
            assert_eq!(back.digest(), s.digest(), "step {i}");
        }
    }
}

mod sections {
    use super::*;
    use crate::command::{Mode, Policy, RateSpec};

    fn with_shadow() -> State {
        let mut s = State::new();
        let r = s.apply(&Command::new(
            5,
            vec![
                Op::PutPolicy {
                    name: "api".into(),
                    policy: Policy::Rate(RateSpec {
                        limit: 1,
                        period_ms: 1000,
                        burst: 1,
                    }),
                },
                Op::SetPolicyMode {
                    name: "api".into(),
                    mode: Mode::Shadow,
                },
            ],
        ));
        assert!(r.iter().all(Result::is_ok), "{r:?}");
        s
    }

    /// Without sections a snapshot is the version 3 layout (older nodes restore it);
    /// with one it is version 4, restores with the section, and the chunked cut
    /// writes the same bytes. Admin changes always leave one (the audit ring).
    #[test]
    fn a_section_makes_the_snapshot_version_4_and_the_cut_agrees() {
        assert_eq!(&State::new().snapshot()[..4], &3u32.to_le_bytes());
        let mut s = with_shadow();
        let bytes = s.snapshot();
        assert_eq!(&bytes[..4], &4u32.to_le_bytes());
        let back = State::restore(&bytes).unwrap();
        assert_eq!(back.shadow_policies().collect::<Vec<_>>(), ["api"]);
        assert_eq!(back.digest(), s.digest());
        let mut cut = s.begin_cut();
        while !s.continue_cut(&mut cut, 1).unwrap() {}
        assert_eq!(s.end_cut(cut).unwrap().into_bytes(), bytes);
        // Back to enforcing: the shadow section is gone, but the audit ring now
        // holds the admin changes (`audit.rs`), so the snapshot stays version 4.
        s.apply(&Command::single(
            6,
            Op::SetPolicyMode {
                name: "api".into(),
                mode: Mode::Enforce,
            },
        ));
        assert!(s.shadow_policies().next().is_none());
        assert_eq!(s.audit().count(), 3, "put_policy, shadow, enforce");
        assert_eq!(&s.snapshot()[..4], &4u32.to_le_bytes());
        // Decisions alone add no section: still the version 3 layout.
        let mut plain = State::new();
        let r = plain.apply(&Command::single(
            6,
            Op::RateCheck {
                checks: vec![crate::command::RateCheck {
                    key: "k".into(),
                    cost: 1,
                    limit: crate::command::RateLimitRef::Inline(RateSpec {
                        limit: 1,
                        period_ms: 1000,
                        burst: 1,
                    }),
                }],
            },
        ));
        assert!(r[0].is_ok(), "{r:?}");
        assert_eq!(&plain.snapshot()[..4], &3u32.to_le_bytes());
    }

    /// A section this version does not know (written by a newer one) is refused,
    /// not dropped.
    #[test]
    fn an_unknown_section_is_refused() {
        let s = with_shadow();
        let mut bytes = State::new().snapshot();
        bytes[..4].copy_from_slice(&4u32.to_le_bytes());
        let sections = vec![("queue".to_string(), vec![0u8])];
        bytes.extend_from_slice(&bincode::serialize(&sections).unwrap());
        assert!(matches!(
            State::restore(&bytes),
            Err(CoreError::CorruptSnapshot(m)) if m.contains("queue")
        ));
        // A damaged known section is refused too.
        let mut bytes = s.snapshot();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        bytes.push(7);
        assert!(State::restore(&bytes).is_err());
    }
}

/// The queue's grants are the last entry's: taken once, dropped when the next entry
/// applies (a list nobody reads must not grow), never in a restored copy. The
/// wakeup time is the soonest lease expiry or waiter deadline on a queued key.
#[test]
fn queue_grants_are_the_last_entrys_and_the_wakeup_is_the_soonest_event() {
    let on_k = |id: &str, ttl_ms: u64| Acquire {
        keys: vec!["k".into()],
        lease_id: id.into(),
        holder: String::new(),
        ttl_ms,
    };
    let wait = |id: &str, wait_ms: u64| Op::AcquireWait {
        acquire: on_k(id, 500),
        wait_ms,
    };
    let release = |id: &str| Op::Release {
        lease_id: id.into(),
    };
    let mut s = State::new();
    let set = Op::SetLimit {
        key: "k".into(),
        limit: 1,
    };
    s.apply(&Command::new(0, vec![set, Op::Acquire(on_k("A", 1000))]));
    assert_eq!(s.queue_wakeup_ms(), None, "nobody waits");
    s.apply(&Command::single(10, wait("B", 5000)));
    assert_eq!(
        s.queue_wakeup_ms(),
        Some(1000),
        "A expires before B's deadline"
    );

    s.apply(&Command::single(20, release("A")));
    let grants = s.take_queue_grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(
        (grants[0].lease_id.as_str(), grants[0].expires_at_ms),
        ("B", 520)
    );
    assert!(s.take_queue_grants().is_empty(), "taken once");

    s.apply(&Command::single(30, wait("C", 5000)));
    s.apply(&Command::single(31, wait("D", 100)));
    assert_eq!(
        s.queue_wakeup_ms(),
        Some(131),
        "D's deadline before B's expiry"
    );
    s.apply(&Command::single(40, release("B")));
    let restored = State::restore(&s.snapshot()).unwrap();
    assert!(restored.clone().take_queue_grants().is_empty());
    s.apply(&Command::single(50, Op::Noop));
    assert!(
        s.take_queue_grants().is_empty(),
        "C's grant was the previous entry's"
    );
    assert!(
        matches!(
            &s.query(&Query::Lease { lease_id: "C".into() }, 50),
            Ok(Outcome::Lease(Some(l))) if l.expires_at_ms == 540
        ),
        "C holds the slot"
    );
    assert_eq!(s.stats().waiters, 1, "D still waits");
}
