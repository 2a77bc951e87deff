//! A deterministic workload shared by the crash child, the crash test and the store
//! tests: the command at log index `i` is a pure function of `i`, so a verifier can
//! replay "the log" from scratch even after the store purged it.

#![allow(dead_code)] // each including crate uses a different subset

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use quorate_core::{Acquire, Command, Op};
use quorate_store::TypeConfig;

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

/// `State` after applying `command(1..=upto)` to a fresh state.
pub fn replay(upto: u64) -> quorate_core::State {
    let mut state = quorate_core::State::new();
    for i in 1..=upto {
        state.apply(&command(i));
    }
    state
}
