//! Failing and full disks, on the simulated disk (`quorate_store::vfs::SimFs`):
//!
//! - an fsync or write error (EIO) on the log stops the store for good: the append
//!   it belonged to and every later append, vote and flush fail, no later write is
//!   even attempted, and `health()` says `Failed`; reopening keeps every entry that
//!   was acknowledged;
//! - ENOSPC on the log stops the store as `NoSpace`; once space is freed, reopening
//!   drops only the unacknowledged partial bytes and appends go on;
//! - ENOSPC while writing a snapshot keeps the old snapshot (and removes the partial
//!   temporary file); the build still hands its snapshot to openraft, unpersisted, so
//!   openraft 0.9 does not stop the node, and the next build retries.

#[path = "../src/bin/store_crash_child/workload.rs"]
mod workload;

use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder, Vote};
use quorate_store::vfs::{Op, SimFs, SimRng};
use quorate_store::{open_with, Health, Storage, StoreError};
use workload::entry;

const EIO: i32 = 5;

/// `open_with` (which waits out the lock a store dropped a moment ago still holds).
fn reopen(dir: &Path, sim: &SimFs) -> Result<Storage, StoreError> {
    open_with(dir, Arc::new(sim.clone()))
}

/// Appends entries `from..=to` in one call; the callback's result.
async fn append(st: &Storage, from: u64, to: u64) -> Result<std::io::Result<()>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    st.log
        .append_with_callback((from..=to).map(|i| entry(1, i)), move |r| {
            let _ = tx.send(r);
        })?;
    Ok(rx.await?)
}

async fn indexes(st: &mut Storage) -> Result<Vec<u64>> {
    Ok(st
        .log
        .try_get_log_entries(..)
        .await?
        .iter()
        .map(|e| e.log_id.index)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_on_the_log_stops_the_store_for_good() -> Result<()> {
    // `quiet`: the store counts load (as a node does) and has none, so appends are
    // synced on the appending thread rather than the flusher thread (`flusher.rs`).
    for (op, quiet) in [Op::Sync, Op::Write]
        .into_iter()
        .flat_map(|op| [(op, false), (op, true)])
    {
        let dir = tempfile::tempdir()?;
        let sim = SimFs::new();
        let mut st = reopen(dir.path(), &sim)?;
        if quiet {
            let _ = st.log.load();
        }
        append(&st, 1, 3).await??;
        ensure!(st.log.health() == Health::Ok);

        let n = sim.count(op) + 1;
        sim.fail_nth(op, n, EIO);
        let failed = append(&st, 4, 5).await?;
        ensure!(
            sim.count(op) == n,
            "{op:?}: {} done, failed the {n}th",
            sim.count(op)
        );
        ensure!(
            failed.is_err(),
            "{op:?}: the append the error hit was acknowledged"
        );
        ensure!(
            matches!(st.log.health(), Health::Failed(_)),
            "{op:?}: {:?}",
            st.log.health()
        );
        // Nothing later succeeds, and nothing later is even tried: the page cache may
        // hold what the disk does not.
        let (writes, syncs) = (sim.count(Op::Write), sim.count(Op::Sync));
        ensure!(
            matches!(
                st.log.append_with_callback([entry(1, 6)], |_| {}),
                Err(StoreError::Stopped(Health::Failed(_)))
            ),
            "{op:?}: a later append was accepted"
        );
        ensure!(
            st.log.try_get_log_entries(6..=6).await?.is_empty(),
            "{op:?}: a refused entry became readable"
        );
        ensure!(st.log.save_vote(&Vote::new(2, 1)).await.is_err());
        ensure!(st.log.flush().await.is_err());
        ensure!(
            (sim.count(Op::Write), sim.count(Op::Sync)) == (writes, syncs),
            "{op:?}: the flusher kept writing after the error"
        );
        drop(st);

        // The acknowledged entries survive a power loss and a reopen; what the
        // failed batch wrote may or may not be there.
        sim.restart(&mut SimRng(7))?;
        let mut st = reopen(dir.path(), &sim)?;
        let found = indexes(&mut st).await?;
        ensure!(
            found.starts_with(&[1, 2, 3]) && found.len() <= 5,
            "{op:?}: {found:?}"
        );
        ensure!(st.log.health() == Health::Ok);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_appends_until_reopened_then_only_unacknowledged_bytes_go() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let sim = SimFs::new();
    let st = reopen(dir.path(), &sim)?;
    // The log zero-fills 4 KiB ahead of its records, so the disk fills up when the
    // next 4 KiB are claimed, not in the middle of a record.
    st.log.set_limits_for_tests(1 << 20, 1 << 20, 4096);
    append(&st, 1, 10).await??;
    // Room for a little more than one more entry, less than the next 4 KiB.
    sim.set_space(Some(sim.used() + 1500));
    let mut acked = 10;
    let err = loop {
        match append(&st, acked + 1, acked + 1).await? {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
        ensure!(acked < 100, "the space budget was never hit");
    };
    ensure!(
        err.raw_os_error() == Some(28) || err.kind() == std::io::ErrorKind::StorageFull,
        "{err:?}"
    );
    ensure!(
        matches!(st.log.health(), Health::NoSpace(_)),
        "{:?}",
        st.log.health()
    );
    // Still stopped after space is freed: only a reopen brings the log back.
    sim.set_space(None);
    ensure!(matches!(
        st.log.append_with_callback([entry(1, acked + 1)], |_| {}),
        Err(StoreError::Stopped(Health::NoSpace(_)))
    ));
    drop(st);
    let log_bytes = || -> Result<u64> {
        let mut n = 0;
        for e in std::fs::read_dir(dir.path().join("raftlog"))? {
            n += e?.metadata()?.len();
        }
        Ok(n)
    };
    let before = log_bytes()?;

    // Whatever the refused zero-fill got onto the disk is free space to the reopened
    // log, not a torn record: kept as it is, neither cut nor grown.
    let mut st = reopen(dir.path(), &sim).context("reopen after ENOSPC")?;
    let after = log_bytes()?;
    ensure!(after == before, "{before} -> {after} bytes");
    let found = indexes(&mut st).await?;
    ensure!(
        found == (1..=acked).collect::<Vec<_>>(),
        "acknowledged 1..={acked}, found {found:?}"
    );
    append(&st, acked + 1, acked + 3).await??;
    drop(st);
    let mut st = reopen(dir.path(), &sim)?;
    ensure!(indexes(&mut st).await? == (1..=acked + 3).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_while_writing_a_snapshot_keeps_the_old_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sim = SimFs::new();
    let mut st = reopen(dir.path(), &sim)?;
    append(&st, 1, 40).await??;
    let entries = st.log.try_get_log_entries(1..=20).await?;
    st.sm.apply(entries).await?;
    let first = st.sm.get_snapshot_builder().await.build_snapshot().await?;
    let entries = st.log.try_get_log_entries(21..=40).await?;
    st.sm.apply(entries).await?;

    sim.set_space(Some(sim.used() + 100));
    // Handed back (openraft 0.9 stops a node whose build fails) but not persisted.
    let unpersisted = st.sm.get_snapshot_builder().await.build_snapshot().await?;
    ensure!(unpersisted.meta.last_log_id.map(|l| l.index) == Some(40));
    ensure!(
        !dir.path().join("snapshot.tmp").exists(),
        "the partial snapshot was left behind"
    );
    // The log is untouched by a snapshot's failure.
    ensure!(st.log.health() == Health::Ok);
    let current = st.sm.get_current_snapshot().await?.context("no snapshot")?;
    ensure!(current.meta == first.meta, "{:?}", current.meta);

    // Space freed: the next build succeeds.
    sim.set_space(None);
    let second = st.sm.get_snapshot_builder().await.build_snapshot().await?;
    ensure!(second.meta.last_log_id.map(|l| l.index) == Some(40));
    drop(st);
    let st = reopen(dir.path(), &sim)?;
    ensure!(st.sm.last_applied().map(|l| l.index) == Some(40));
    Ok(())
}
