//! Crash-test child: drives a store the way openraft does, reporting on stdout what
//! the store has acknowledged, until the parent SIGKILLs it.
//!
//! Usage: `store_crash_child <data dir> <seed>`
//!
//! Output lines (each printed only after the fact it states is true):
//! - `ready <next index>` — opened and recovered (snapshot + committed replay);
//! - `vote-saving <term>` / `vote <term>` — before / after `save_vote` returned;
//! - `durable <index>` — the append callback for `index` fired (entry is on disk);
//! - `snapshot <index>` — a snapshot up to `index` was built and persisted;
//! - `purged <index>` — logs up to `index` were purged.
//!
//! Appends are pipelined (up to 8 in flight, like openraft's), so acknowledgements
//! arrive from the flusher thread in groups.

mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder, Vote};
use quorate_store::{LogStore, StateMachineStore};
use workload::{BoxError, Rng};

fn say(line: String) {
    // stdout is line-buffered; flushing explicitly keeps the promise "printed after the
    // fact" even if that ever changes.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(seed)) = (args.next(), args.next()) else {
        eprintln!("usage: store_crash_child <data dir> <seed>");
        return ExitCode::from(2);
    };
    let seed: u64 = seed.parse().unwrap_or(1);
    match run(PathBuf::from(dir), seed).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store_crash_child: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(dir: PathBuf, seed: u64) -> Result<(), BoxError> {
    let mut rng = Rng(seed);
    let storage = quorate_store::open(&dir)?;
    let (mut log, mut sm) = (storage.log, storage.sm);
    workload::recover(&mut log, &mut sm).await?;
    let mut next = log
        .get_log_state()
        .await?
        .last_log_id
        .map_or(1, |l| l.index + 1);
    // Every run starts a new term, as a restarted node would after an election.
    let mut term = log.read_vote().await?.map_or(1, |v| v.leader_id.term + 1);
    save_vote(&mut log, term).await?;
    say(format!("ready {next}"));

    let mut last_snapshot = sm.last_applied().map_or(0, |l| l.index);
    loop {
        let last = append_batch(&mut log, term, next, 1 + rng.below(8)).await?;
        log.save_committed(Some(workload::log_id(term, last)))
            .await?;
        // Apply everything after the last applied entry: after a restart that includes
        // entries that were durable but not yet committed when the last run died.
        let applied = sm.last_applied().map_or(0, |l| l.index);
        let entries = log.try_get_log_entries(applied + 1..=last).await?;
        sm.apply(entries).await?;
        next = last + 1;

        if rng.below(50) == 0 {
            term += 1;
            save_vote(&mut log, term).await?;
            // Write nothing for a moment: a kill now finds the vote durable only if
            // save_vote itself flushed (a later append's flush would otherwise hide a
            // missing one).
            tokio::time::sleep(std::time::Duration::from_millis(10 + rng.below(30))).await;
        }
        if last >= last_snapshot + 150 {
            last_snapshot = snapshot_and_purge(&mut log, &mut sm).await?;
        }
    }
}

/// Appends entries `next..next + in_flight` pipelined, as openraft does, and waits
/// until every append callback reported success. Returns the last index appended.
async fn append_batch(
    log: &mut LogStore,
    term: u64,
    next: u64,
    in_flight: u64,
) -> Result<u64, BoxError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for index in next..next + in_flight {
        let tx = tx.clone();
        log.append_with_callback([workload::entry(term, index)], move |res| {
            if res.is_ok() {
                say(format!("durable {index}"));
            }
            let _ = tx.send((index, res.is_ok()));
        })?;
    }
    drop(tx);
    let mut acked = 0;
    while let Some((index, ok)) = rx.recv().await {
        if !ok {
            return Err(format!("append {index} failed").into());
        }
        acked += 1;
    }
    if acked != in_flight {
        return Err("lost an append callback".into());
    }
    Ok(next + in_flight - 1)
}

/// Builds a snapshot of everything applied, then purges the log up to 30 entries
/// before it (keeping a few, as openraft does). Returns the snapshot's last index.
async fn snapshot_and_purge(
    log: &mut LogStore,
    sm: &mut StateMachineStore,
) -> Result<u64, BoxError> {
    let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
    let index = snap.meta.last_log_id.map_or(0, |l| l.index);
    say(format!("snapshot {index}"));
    if index > 30 {
        let upto = index - 30;
        let upto_id = log
            .try_get_log_entries(upto..=upto)
            .await?
            .first()
            .map(|e| e.log_id)
            .ok_or("purge point missing")?;
        log.purge(upto_id).await?;
        say(format!("purged {upto}"));
    }
    Ok(index)
}

async fn save_vote(log: &mut LogStore, term: u64) -> Result<(), BoxError> {
    say(format!("vote-saving {term}"));
    log.save_vote(&Vote::new_committed(term, 1)).await?;
    say(format!("vote {term}"));
    Ok(())
}
