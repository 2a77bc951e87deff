//! A deterministic workload shared by the crash child, the crash test, the store
//! tests and the store benchmark: the command at log index `i` is a pure function of
//! `i`, so a verifier can replay "the log" from scratch even after the store purged
//! it. Also what every one of those drivers needs around it: a seeded PRNG and
//! openraft's startup recovery ([`recover`]), kept here so the crash child and the
//! tests that check it recover the same way.

#![allow(dead_code)] // each including crate uses a different subset

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
use quorate_core::{Acquire, Command, Op};
use quorate_store::{LogStore, StateMachineStore, TypeConfig};

/// The drivers' error type: any error, printable by the child and by anyhow.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tiny deterministic PRNG (splitmix64): no dependency for a test driver.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Ops per entry: the size of a realistic leader batch.
pub const OPS_PER_ENTRY: u64 = 16;

/// The command stored at log index `index`: mostly acquires over a small key pool (so
/// limits are hit and denials happen), releases of earlier leases, a periodic expire
/// and limit change.
pub fn command(index: u64) -> Command {
    let time_ms = 1_700_000_000_000 + index * 7;
    let mut ops = Vec::with_capacity(OPS_PER_ENTRY as usize);
    for j in 0..OPS_PER_ENTRY {
        let n = index * OPS_PER_ENTRY + j;
        let op = match n % 8 {
            0..=4 => Op::Acquire(Acquire {
                keys: vec![format!("org:{}", n % 97), format!("user:{}", n % 1013)],
                lease_id: format!("lease-{n}"),
                holder: format!("worker-{}", n % 13),
                ttl_ms: 2_000 + (n % 5) * 1_000,
            }),
            5 | 6 => Op::Release {
                lease_id: format!("lease-{}", n.saturating_sub(40)),
            },
            _ if n % 64 == 7 => Op::Expire {
                max_leases: 64,
                max_rate_keys: 64,
            },
            _ => Op::SetLimit {
                key: format!("org:{}", n % 97),
                limit: 5 + (n % 7) as u32,
            },
        };
        ops.push(op);
    }
    Command { time_ms, ops }
}

pub fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// The normal entry at `index`, written in `term`.
pub fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(command(index)),
    }
}

/// `State` after applying `command(1..=upto)` to a fresh state, each at its log index
/// (as the store applies them: the audit trail records the index).
pub fn replay(upto: u64) -> quorate_core::State {
    let mut state = quorate_core::State::new();
    for i in 1..=upto {
        state.apply_at(i, &command(i));
    }
    state
}

/// What openraft does at startup: re-apply the committed entries after the snapshot.
/// Returns the id the state machine must have applied afterwards (the later of the
/// committed id and the snapshot's); fails if the log lacks a committed entry.
pub async fn recover(
    log: &mut LogStore,
    sm: &mut StateMachineStore,
) -> Result<Option<LogId<u64>>, BoxError> {
    let committed = log.read_committed().await?;
    let (applied, _) = sm.applied_state().await?;
    if let Some(c) = committed {
        let start = applied.map_or(1, |a| a.index + 1);
        if start <= c.index {
            let tail = log.try_get_log_entries(start..=c.index).await?;
            if tail.len() as u64 != c.index + 1 - start {
                return Err(format!("committed entries {start}..={} missing", c.index).into());
            }
            sm.apply(tail).await?;
        }
    }
    Ok(committed.max(applied))
}
