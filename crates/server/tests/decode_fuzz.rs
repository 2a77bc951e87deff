//! Malformed bytes never panic a node: every type a peer can send over Raft RPC (and
//! every log entry, which travels inside appends and is stored with the same serde
//! impls) is decoded from arbitrary bytes and from corrupted valid encodings, and the
//! only acceptable outcomes are an error or a value that re-encodes.
//!
//! This is the proptest stand-in for a cargo-fuzz target (which needs a nightly
//! toolchain CI does not have); the HTTP side of the same property is tested by
//! `scripts/fuzz_api.sh` and by `single_node.rs` (garbage bodies get 400).

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{Entry, EntryPayload, LogId, Vote};
use proptest::prelude::*;
use quorate_core::{Acquire, Command, Op, Query, RateCheck, RateLimitRef, RateSpec, Reply};
use quorate_server::backend::NodeError;
use quorate_server::peer::protocol::{decode, encode};
use quorate_store::TypeConfig;

fn sample_append() -> AppendEntriesRequest<TypeConfig> {
    let cmd = Command::new(
        1_795_000_000_000,
        vec![
            Op::Acquire(Acquire {
                keys: vec!["org:acme".into(), "global".into()],
                lease_id: "exec-42".into(),
                holder: "worker-7".into(),
                ttl_ms: 60_000,
            }),
            Op::RateCheck {
                checks: vec![RateCheck {
                    key: "ip:203.0.113.9".into(),
                    cost: 1,
                    limit: RateLimitRef::Inline(RateSpec {
                        limit: 60,
                        period_ms: 60_000,
                        burst: 10,
                    }),
                }],
            },
            Op::Release {
                lease_id: "exec-41".into(),
            },
        ],
    );
    AppendEntriesRequest {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 41)),
        entries: vec![
            Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
                payload: EntryPayload::Normal(cmd),
            },
            Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), 43),
                payload: EntryPayload::Blank,
            },
        ],
        leader_commit: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 41)),
    }
}

/// Decode `bytes` as every peer-facing type; none may panic.
fn decode_all(bytes: &[u8]) {
    if let Ok(v) = decode::<AppendEntriesRequest<TypeConfig>>(bytes) {
        assert!(encode(&v).is_ok());
    }
    let _ = decode::<VoteRequest<u64>>(bytes);
    let _ = decode::<InstallSnapshotRequest<TypeConfig>>(bytes);
    if let Ok(e) = decode::<Entry<TypeConfig>>(bytes) {
        assert!(encode(&e).is_ok());
    }
    let _ = decode::<Command>(bytes);
    let _ = decode::<Op>(bytes);
    let _ = decode::<Query>(bytes);
    let _ = decode::<Result<Reply, NodeError>>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn corrupted_appends_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = encode(&sample_append()).expect("encode");
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        decode_all(&bytes);
    }
}

#[test]
fn huge_length_prefixes_are_refused_not_allocated() {
    // A vector claiming u64::MAX elements must be an error (size limit), not an
    // allocation attempt that aborts the process.
    let mut bytes = vec![0xffu8; 8];
    bytes.extend_from_slice(&[0u8; 16]);
    decode_all(&bytes);
    assert!(decode::<Vec<u64>>(&bytes).is_err());
    assert!(decode::<String>(&bytes).is_err());
}

#[test]
fn valid_encodings_round_trip() {
    let req = sample_append();
    let bytes = encode(&req).expect("encode");
    let back: AppendEntriesRequest<TypeConfig> = decode(&bytes).expect("decode");
    assert_eq!(format!("{back:?}"), format!("{req:?}"));
}
