//! Seeded power-loss tests on the simulated disk (`quorate_store::vfs::SimFs`).
//!
//! Each seed runs a random workload against one store — appends of 1–4 entries,
//! truncations (a new leader overwriting; half of them as one append below the end,
//! which cuts and writes in one batch), apply + snapshot builds, purges up to the
//! snapshot, votes — each awaited as openraft awaits it. The disk loses power after a
//! random number of file operations: every write not yet fsync'd is kept, dropped or
//! torn at 512-byte sectors, every unsynced create/remove/rename kept or not
//! (`SimFs::restart`). Sometimes power is lost again during the recovery itself. Then
//! the store is reopened and checked:
//!
//! - it opens (a torn tail is never refused);
//! - every append whose callback said durable is there, intact, with its term, unless
//!   purged or truncated by a truncation that was acknowledged;
//! - every entry present is one that was written at that index (never one an
//!   acknowledged truncation removed), and the log is contiguous;
//! - the purge point, the vote and the snapshot never go back behind what was
//!   acknowledged.
//!
//! Odd seeds count load as a node does and have none, so every append is synced on
//! the appending thread; even seeds leave it to the flusher thread (`flusher.rs`).
//!
//! On a third of the seeds the reopened log is then damaged in a record that a later
//! write's stamped sync length covers (durable, not torn): the store must refuse to
//! open, never cut the log.
//!
//! sled holds the vote, the committed id and `last_purged`; it does not go through the
//! simulated disk, so it never loses power here (its own recovery restores a prefix
//! of its writes; a vote is acknowledged only after a sled flush).
//!
//! `QUORATE_CRASH_SEED=<n>` replays one seed; `QUORATE_CRASH_SEEDS=<n>` sets how many
//! run (default [`SEEDS`]).

#[path = "../src/bin/store_crash_child/workload.rs"]
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder, Vote};
use quorate_store::vfs::{SimFs, SimRng};
use quorate_store::{open_with, Storage, StoreError};

use workload::{entry, log_id};

/// Seeds per `cargo test` run.
const SEEDS: u64 = 1000;
/// Workload steps per seed at most (a crash usually comes first).
const STEPS: u64 = 60;

/// What the workload was told, and so what the disk must show after the crash.
#[derive(Default, Debug)]
struct Model {
    /// index -> term of an acknowledged append not since put in doubt.
    required: BTreeMap<u64, u64>,
    /// index -> terms that may be found there.
    allowed: BTreeMap<u64, BTreeSet<u64>>,
    next: u64,
    term: u64,
    applied: u64,
    snapshot: u64,
    purged: u64,
    vote: u64,
}

fn is_power_loss(e: &dyn std::fmt::Display) -> bool {
    e.to_string().contains("simulated power loss")
}

/// Appends `n` entries at `from` (at most `m.next`: below it, an overwrite in one call,
/// as openraft's conformance suite does; the store cuts and writes in one batch).
async fn append(st: &Storage, m: &mut Model, from: u64, n: u64) -> Result<bool> {
    m.required.retain(|&i, _| i < from);
    let entries: Vec<_> = (from..from + n).map(|i| entry(m.term, i)).collect();
    for i in from..from + n {
        m.allowed.entry(i).or_default().insert(m.term);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    match st.log.append_with_callback(entries, move |r| {
        let _ = tx.send(r);
    }) {
        Ok(()) => {}
        // Stopped by an earlier failure nobody waited for (a purge's file removals).
        Err(e @ StoreError::Stopped(_)) if is_power_loss(&e) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    m.next = from + n;
    match rx.await? {
        Ok(()) => {
            // The overwritten tail is gone for good.
            let term = m.term;
            m.allowed
                .retain(|&i, _| i < from || (from..from + n).contains(&i));
            for i in from..from + n {
                m.required.insert(i, term);
                m.allowed.insert(i, BTreeSet::from([term]));
            }
            Ok(true)
        }
        Err(e) if is_power_loss(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Runs steps until the power goes; false once it did.
async fn step(st: &mut Storage, m: &mut Model, rng: &mut SimRng) -> Result<bool> {
    let last = m.next - 1;
    let ok = |r: Result<(), openraft::StorageError<u64>>| match r {
        Ok(()) => Ok(true),
        Err(e) if is_power_loss(&e) => Ok(false),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    match rng.below(100) {
        0..=54 => append(st, m, m.next, 1 + rng.below(4)).await,
        55..=64 if last > m.applied.max(m.purged) => {
            // A new leader overwrites from `t` on.
            let t = m.applied.max(m.purged) + 1 + rng.below(last - m.applied.max(m.purged));
            if rng.below(2) == 0 {
                m.term += 1;
                return append(st, m, t, 1 + rng.below(3)).await;
            }
            m.required.retain(|&i, _| i < t);
            let res = st.log.truncate(log_id(m.term, t)).await;
            m.next = t;
            m.term += 1;
            if ok(res)? {
                m.allowed.retain(|&i, _| i < t);
                Ok(true)
            } else {
                Ok(false)
            }
        }
        65..=74 if last > m.applied => {
            // Commit and apply up to `x`, then snapshot.
            let x = m.applied + 1 + rng.below(last - m.applied);
            let entries = st.log.try_get_log_entries(m.applied + 1..=x).await?;
            ensure!(
                entries.len() as u64 == x - m.applied,
                "entries to apply missing"
            );
            st.sm.apply(entries).await?;
            m.applied = x;
            match st.sm.get_snapshot_builder().await.build_snapshot().await {
                Ok(s) => {
                    ensure!(s.meta.last_log_id.map(|l| l.index) == Some(x));
                    m.snapshot = x;
                    Ok(true)
                }
                Err(e) if is_power_loss(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        75..=84 if m.snapshot > m.purged => {
            let p = m.purged + 1 + rng.below(m.snapshot - m.purged);
            let term = m.required.get(&p).copied().unwrap_or(m.term);
            let res = st.log.purge(log_id(term, p)).await;
            if ok(res)? {
                m.purged = p;
                Ok(true)
            } else {
                Ok(false)
            }
        }
        _ => {
            let v = m.vote.max(m.term) + rng.below(2);
            if ok(st.log.save_vote(&Vote::new(v, 1)).await)? {
                m.vote = v;
                Ok(true)
            } else {
                Ok(false)
            }
        }
    }
}

/// Checks a reopened store against the model.
async fn check(st: &mut Storage, m: &Model) -> Result<()> {
    let state = st.log.get_log_state().await?;
    let purged = state.last_purged_log_id.map_or(0, |l| l.index);
    ensure!(
        purged >= m.purged,
        "purge point went back: {purged} < {}",
        m.purged
    );
    let entries = st.log.try_get_log_entries(..).await?;
    for (expect, e) in (purged + 1..).zip(entries.iter()) {
        let i = e.log_id.index;
        ensure!(
            i == expect,
            "log not contiguous after {purged}: found {i}, expected {expect}"
        );
        let term = e.log_id.leader_id.term;
        ensure!(
            m.allowed.get(&i).is_some_and(|t| t.contains(&term)),
            "entry {i} of term {term} was never written there, or an acknowledged \
             truncation removed it"
        );
        ensure!(
            e.payload == entry(term, i).payload,
            "entry {i} has the wrong payload"
        );
    }
    let present: BTreeMap<u64, u64> = entries
        .iter()
        .map(|e| (e.log_id.index, e.log_id.leader_id.term))
        .collect();
    for (&i, &t) in m.required.range(purged + 1..) {
        ensure!(
            present.get(&i) == Some(&t),
            "acknowledged entry {i} (term {t}) lost: found {:?}",
            present.get(&i)
        );
    }
    let vote = st.log.read_vote().await?.map_or(0, |v| v.leader_id.term);
    ensure!(vote >= m.vote, "vote went back: {vote} < {}", m.vote);
    let applied = st.sm.last_applied().map_or(0, |l| l.index);
    ensure!(
        applied >= m.snapshot,
        "snapshot went back: restored {applied} < acknowledged {}",
        m.snapshot
    );
    Ok(())
}

/// (offset, length, synced) of the intact records of a format-3 segment.
fn records(bytes: &[u8]) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut off = 16;
    while off + 28 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let synced = u64::from_le_bytes(bytes[off + 16..off + 24].try_into().unwrap());
        if off + 28 + len > bytes.len() {
            break;
        }
        out.push((off, 28 + len, synced));
        off += 28 + len;
    }
    out
}

/// Damages a durable record (one a later record's stamped sync length covers), as if
/// the disk rotted it after a crash; returns false if the log holds none.
fn damage_durable_record(dir: &Path, rng: &mut SimRng) -> Result<bool> {
    let log = dir.join("raftlog");
    let _ = std::fs::remove_file(log.join("clean")); // a crash, not a clean stop
    let mut candidates = Vec::new();
    for e in std::fs::read_dir(&log)? {
        let path = e?.path();
        let bytes = std::fs::read(&path)?;
        if !bytes.starts_with(b"qrlog03\n") {
            continue;
        }
        let recs = records(&bytes);
        let synced = recs.iter().map(|r| r.2).max().unwrap_or(0);
        for &(off, len, _) in recs.iter().filter(|r| (r.0 as u64) < synced) {
            candidates.push((path.clone(), off, len));
        }
    }
    if candidates.is_empty() {
        return Ok(false);
    }
    let (path, off, len) = &candidates[rng.below(candidates.len() as u64) as usize];
    let mut bytes = std::fs::read(path)?;
    let at = off + rng.below(*len as u64) as usize;
    bytes[at] ^= 1 << rng.below(8);
    std::fs::write(path, &bytes)?;
    Ok(true)
}

/// `open_with` (which waits out the lock a store dropped a moment ago still holds).
fn reopen(dir: &Path, sim: &SimFs) -> Result<Storage, StoreError> {
    open_with(dir, Arc::new(sim.clone()))
}

async fn run_seed(seed: u64) -> Result<&'static str> {
    let mut rng = SimRng(seed);
    let base = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let dir = tempfile::Builder::new()
        .prefix("quorate-power-")
        .tempdir_in(base)?;
    let sim = SimFs::new();
    let mut m = Model {
        next: 1,
        term: 1,
        ..Model::default()
    };
    {
        let mut st = reopen(dir.path(), &sim)?;
        st.log.set_limits_for_tests(
            400 + rng.below(2000),
            rng.below(2) as usize * 4096,
            // No zero-fill, a fill smaller than a segment, or one that outgrows it.
            [0, 256, 4096][rng.below(3) as usize],
        );
        // Odd seeds count load, as a node does: with nothing counted in progress the
        // store is quiet, and every append is synced on the appending thread instead
        // of the flusher thread (`flusher.rs`). Both paths must keep every
        // acknowledged write.
        if seed % 2 == 1 {
            let _ = st.log.load();
        }
        sim.crash_after(1 + rng.below(250));
        for _ in 0..STEPS {
            if !step(&mut st, &mut m, &mut rng).await? {
                break;
            }
        }
        sim.crash();
    }
    sim.restart(&mut rng)?;
    if rng.below(4) == 0 {
        // Power lost again during recovery.
        sim.crash_after(1 + rng.below(8));
        match reopen(dir.path(), &sim) {
            Ok(st) => drop(st),
            Err(e) if is_power_loss(&e) => {}
            Err(e) => bail!("first reopen: {e}"),
        }
        sim.crash();
        sim.restart(&mut rng)?;
    }
    let mut st = reopen(dir.path(), &sim).context("reopen after the crash")?;
    check(&mut st, &m).await?;
    drop(st);
    if rng.below(3) == 0 && damage_durable_record(dir.path(), &mut rng)? {
        match reopen(dir.path(), &SimFs::new()) {
            Err(StoreError::Corrupt { .. }) => return Ok("damage refused"),
            Err(e) => bail!("damage: expected Corrupt, got {e}"),
            Ok(_) => bail!("a damaged durable record was accepted"),
        }
    }
    Ok("ok")
}

/// Runs `seeds` on one thread with its own runtime; the number of damaged stores
/// refused, or the first failure.
fn run_seeds(seeds: &[u64]) -> Result<usize> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut refused = 0;
    for &seed in seeds {
        match rt.block_on(run_seed(seed)) {
            Ok("damage refused") => refused += 1,
            Ok(_) => {}
            Err(e) => bail!("seed {seed} failed (QUORATE_CRASH_SEED={seed} to replay): {e:#}"),
        }
    }
    Ok(refused)
}

#[test]
fn power_loss_anywhere_keeps_every_acknowledged_write() -> Result<()> {
    let seeds: Vec<u64> = match std::env::var("QUORATE_CRASH_SEED") {
        Ok(s) => vec![s.parse().context("QUORATE_CRASH_SEED")?],
        Err(_) => {
            let n = std::env::var("QUORATE_CRASH_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(SEEDS);
            (0..n).collect()
        }
    };
    let started = Instant::now();
    // Two threads (the CI machine has two cores); each seed is independent.
    let halves: Vec<Vec<u64>> = (0..2)
        .map(|k| seeds.iter().copied().skip(k).step_by(2).collect())
        .collect();
    let results: Vec<Result<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = halves.iter().map(|h| s.spawn(|| run_seeds(h))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))
            })
            .collect()
    });
    let mut refused = 0;
    for r in results {
        refused += r?;
    }
    eprintln!(
        "{} seeds in {:?}; {refused} damaged stores refused",
        seeds.len(),
        started.elapsed()
    );
    ensure!(
        seeds.len() < 10 || refused > 0,
        "no seed damaged a durable record"
    );
    Ok(())
}
