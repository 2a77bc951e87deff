//! Store benchmark: `cargo bench -p quorate-store` (a plain binary, not a timed test).
//!
//! Measures, on a fresh temporary directory each:
//! 1. durable appends/s and fsyncs/s with 1, 16 and 64 concurrent writers (each entry
//!    a `Command` of 16 `Acquire` ops), i.e. how well the flusher's group commit works;
//! 2. apply throughput of the two state designs: core state in memory (what the store
//!    does) versus core state mirrored into a sled tree record by record (emulated:
//!    core apply plus one sled batch per entry with the records the ops touched);
//! 3. restart time with 1M keys of state for both designs: memory + snapshot (open =
//!    load and restore the snapshot, then replay a 10k-entry committed tail) versus
//!    sled-resident (open = sled recovery of the state tree).
//!
//! Set `QUORATE_BENCH_KEYS` to change the 1M, `QUORATE_BENCH_SECS` the append window.

#[path = "../src/bin/store_crash_child/workload.rs"]
mod workload;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use quorate_core::{Acquire, Command, Op};
use quorate_store::{open, TypeConfig};
use workload::{log_id, BoxError};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An entry of 16 acquires on distinct keys `k:<n>` (1 key per lease, 24h TTL).
fn acquire_entry(index: u64, first_key: u64) -> Entry<TypeConfig> {
    let ops = (0..16)
        .map(|j| {
            let n = first_key + j;
            Op::Acquire(Acquire {
                keys: vec![format!("k:{n:08}")],
                lease_id: format!("lease-{n:08}"),
                holder: format!("worker-{}", n % 64),
                ttl_ms: 23 * 3600 * 1000,
            })
        })
        .collect();
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Command {
            time_ms: 1_700_000_000_000,
            ops,
        }),
    }
}

async fn append_wait(
    log: &quorate_store::LogStore,
    entries: Vec<Entry<TypeConfig>>,
) -> Result<(), BoxError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    log.append_with_callback(entries, move |r| {
        let _ = tx.send(r);
    })?;
    rx.await??;
    Ok(())
}

async fn bench_appends(writers: u64, secs: u64) -> Result<(f64, f64, f64), BoxError> {
    let dir = tempfile::tempdir()?;
    let st = open(dir.path())?;
    let next = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let before = st.log.flush_stats();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (log, next, stop, done) = (st.log.clone(), next.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                append_wait(&log, vec![acquire_entry(i, i * 16)]).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), BoxError>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = st.log.flush_stats();
    let appends = done.load(Ordering::Relaxed) as f64;
    let flushes = (after.flushes - before.flushes) as f64;
    Ok((
        appends / elapsed,
        flushes / elapsed,
        appends / flushes.max(1.0),
    ))
}

/// The sled-resident alternative, emulated: after core decides, every record an op
/// touched is written to a `state` tree, with last_applied, in one batch per entry.
struct SledState {
    tree: sled::Tree,
}

impl SledState {
    fn apply(
        &self,
        state: &mut quorate_core::State,
        e: &Entry<TypeConfig>,
    ) -> Result<(), BoxError> {
        let mut batch = sled::Batch::default();
        if let EntryPayload::Normal(cmd) = &e.payload {
            let replies = state.apply(cmd);
            for (op, reply) in cmd.ops.iter().zip(&replies) {
                match op {
                    Op::Acquire(a) if reply.is_ok() => {
                        let rec =
                            bincode::serialize(&(&a.keys, &a.holder, cmd.time_ms + a.ttl_ms))?;
                        batch.insert(format!("lease/{}", a.lease_id).as_bytes(), rec);
                        for k in &a.keys {
                            batch.insert(format!("slot/{k}/{}", a.lease_id).as_bytes(), &[1u8][..]);
                        }
                    }
                    Op::Release { lease_id } => {
                        // Finding the slots to delete needs the lease record: a read.
                        if let Some(rec) = self.tree.get(format!("lease/{lease_id}"))? {
                            let (keys, _, _): (Vec<String>, String, u64) =
                                bincode::deserialize(&rec)?;
                            for k in keys {
                                batch.remove(format!("slot/{k}/{lease_id}").as_bytes());
                            }
                            batch.remove(format!("lease/{lease_id}").as_bytes());
                        }
                    }
                    Op::SetLimit { key, limit } => {
                        batch.insert(format!("limit/{key}").as_bytes(), &limit.to_le_bytes()[..]);
                    }
                    _ => {}
                }
            }
        }
        batch.insert(&b"last_applied"[..], bincode::serialize(&e.log_id)?);
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`. Without it we are being run by `cargo test
    // --all-targets` in a debug build, where 1M keys would take many minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("store benchmark: skipped (run `cargo bench -p quorate-store`)");
        return Ok(());
    }
    let secs = env_u64("QUORATE_BENCH_SECS", 3);
    let keys = env_u64("QUORATE_BENCH_KEYS", 1_000_000);
    let sample = acquire_entry(1, 0);
    let entry_bytes = bincode::serialize(&sample)?.len();
    println!(
        "quorate-store benchmark ({} cpus)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("entry = Command of 16 Acquire ops, {entry_bytes} bytes as stored\n");
    appends_table(secs).await?;
    apply_table().await?;
    restart_table(keys).await
}

/// 1. Durable appends with 1, 16 and 64 writers.
async fn appends_table(secs: u64) -> Result<(), BoxError> {
    println!("1. durable appends (ack after fsync; one flusher, group commit), {secs}s each");
    println!("| writers | appends/s | fsyncs/s | entries per fsync |");
    println!("|--------:|----------:|---------:|------------------:|");
    for writers in [1, 16, 64] {
        let (a, f, per) = bench_appends(writers, secs).await?;
        println!("| {writers:>7} | {a:>9.0} | {f:>8.0} | {per:>17.1} |");
    }
    Ok(())
}

/// 2. Apply throughput of the workload mix, in memory versus sled-resident.
async fn apply_table() -> Result<(), BoxError> {
    println!(
        "\n2. apply throughput (workload mix: 10 acquire, 4 release, set-limit/expire per entry)"
    );
    let n = 20_000u64;
    let entries: Vec<_> = (1..=n).map(|i| workload::entry(1, i)).collect();
    let ops = n * workload::OPS_PER_ENTRY;
    let dir = tempfile::tempdir()?;
    let mut st = open(dir.path())?;
    let chunks: Vec<Vec<_>> = entries.chunks(64).map(|c| c.to_vec()).collect();
    let t = Instant::now();
    for chunk in chunks {
        st.sm.apply(chunk).await?;
    }
    let mem = t.elapsed();

    let db = sled::open(dir.path().join("emulated"))?;
    let sled_state = SledState {
        tree: db.open_tree("state")?,
    };
    let mut state = quorate_core::State::new();
    let t = Instant::now();
    for e in &entries {
        sled_state.apply(&mut state, e)?;
    }
    let resident = t.elapsed();
    println!("| design                   | entries/s | ops/s     |");
    println!("|--------------------------|----------:|----------:|");
    for (name, d) in [
        ("memory + snapshots", mem),
        ("sled-resident (emulated)", resident),
    ] {
        let s = d.as_secs_f64();
        println!(
            "| {name:<24} | {:>9.0} | {:>9.0} |",
            n as f64 / s,
            ops as f64 / s
        );
    }
    Ok(())
}

/// 3. Restart with `keys` keys of state, for both designs.
async fn restart_table(keys: u64) -> Result<(), BoxError> {
    println!(
        "\n3. restart with {keys} keys of state ({} leases on distinct keys)",
        keys
    );
    let big_entries = keys / 16;
    let tail = 10_000u64;
    let dir = tempfile::tempdir()?;
    let built = build_big_store(dir.path(), big_entries, tail).await?;
    let t = Instant::now();
    let mut st = open(dir.path())?;
    let open_time = t.elapsed();
    let t = Instant::now();
    let committed = st.log.read_committed().await?.ok_or("no committed id")?;
    let applied = st.sm.last_applied().map_or(0, |l| l.index);
    let tail_entries = st
        .log
        .try_get_log_entries(applied + 1..=committed.index)
        .await?;
    let replayed = tail_entries.len();
    st.sm.apply(tail_entries).await?;
    let replay_time = t.elapsed();
    drop(st);
    let sled = sled_resident_restart(big_entries)?;

    println!(
        "   snapshot {:.1} MB; apply pause: serialize under read lock {} (a State clone would take {}); \
         whole build_snapshot (serialize + write + fsync) {}",
        built.snapshot_bytes as f64 / 1e6,
        ms(built.serialize_time),
        ms(built.clone_time),
        ms(built.build_time)
    );
    println!("| design                   | restart                                              | on disk  |");
    println!("|--------------------------|------------------------------------------------------|---------:|");
    println!(
        "| memory + snapshots       | {:<52} | {:>5.0} MB |",
        format!(
            "{} open+restore, {} replay of {replayed} entries",
            ms(open_time),
            ms(replay_time)
        ),
        built.disk as f64 / 1e6
    );
    println!(
        "| sled-resident (emulated) | {:<52} | {:>5.0} MB |",
        format!(
            "{} sled open ({} to scan all {} records)",
            ms(sled.open),
            ms(sled.scan),
            sled.records
        ),
        sled.disk as f64 / 1e6
    );
    Ok(())
}

/// What building the big memory + snapshots store measured.
struct BigStore {
    snapshot_bytes: usize,
    serialize_time: Duration,
    clone_time: Duration,
    build_time: Duration,
    disk: u64,
}

/// Fills a store in `dir` with `big_entries` entries of 16 leases, snapshots and purges
/// it, then appends a committed `tail` to be replayed at restart.
async fn build_big_store(dir: &Path, big_entries: u64, tail: u64) -> Result<BigStore, BoxError> {
    let mut st = open(dir)?;
    let t = Instant::now();
    for start in (1..=big_entries).step_by(1000) {
        let end = (start + 999).min(big_entries);
        let batch: Vec<_> = (start..=end)
            .map(|i| acquire_entry(i, (i - 1) * 16))
            .collect();
        append_wait(&st.log, batch.clone()).await?;
        st.log.save_committed(Some(log_id(1, end))).await?;
        st.sm.apply(batch).await?;
    }
    let load_time = t.elapsed();
    let stats = st.sm.read(|s| s.stats());
    println!("   built: {stats:?} in {}", ms(load_time));
    // The two ways to take a consistent copy while apply waits: serialize (what
    // build_snapshot does) or clone the State (rejected).
    let t = Instant::now();
    let bytes = st.sm.read(|s| s.snapshot());
    let serialize_time = t.elapsed();
    drop(bytes);
    let t = Instant::now();
    let copy = st.sm.read(|s| s.clone());
    let clone_time = t.elapsed();
    drop(copy);
    let t = Instant::now();
    let snap = st.sm.get_snapshot_builder().await.build_snapshot().await?;
    let build_time = t.elapsed();
    let snapshot_bytes = usize::try_from(snap.snapshot.len())?;
    st.log.purge(log_id(1, big_entries)).await?;
    // A committed tail after the snapshot, to be replayed at restart.
    for start in (big_entries + 1..=big_entries + tail).step_by(500) {
        let end = (start + 499).min(big_entries + tail);
        let batch: Vec<_> = (start..=end)
            .map(|i| {
                let mut e = workload::entry(1, i - big_entries);
                e.log_id = log_id(1, i);
                e
            })
            .collect();
        append_wait(&st.log, batch.clone()).await?;
        st.log.save_committed(Some(log_id(1, end))).await?;
        st.sm.apply(batch).await?;
    }
    st.log.flush().await?;
    Ok(BigStore {
        snapshot_bytes,
        serialize_time,
        clone_time,
        build_time,
        disk: st.sm.size_on_disk(),
    })
}

/// What restarting the sled-resident design measured.
struct SledRestart {
    disk: u64,
    open: Duration,
    scan: Duration,
    records: usize,
}

/// The sled-resident design with the same keys: its restart is sled's recovery.
fn sled_resident_restart(big_entries: u64) -> Result<SledRestart, BoxError> {
    let sdir = tempfile::tempdir()?;
    let disk = {
        let db = sled::open(sdir.path())?;
        let sled_state = SledState {
            tree: db.open_tree("state")?,
        };
        let mut state = quorate_core::State::new();
        for i in 1..=big_entries {
            sled_state.apply(&mut state, &acquire_entry(i, (i - 1) * 16))?;
        }
        db.flush()?;
        db.size_on_disk()?
    };
    let t = Instant::now();
    let db = sled::open(sdir.path())?;
    let tree = db.open_tree("state")?;
    let _last = tree.get(b"last_applied")?;
    let open = t.elapsed();
    let t = Instant::now();
    let records = tree.iter().keys().count();
    let scan = t.elapsed();
    Ok(SledRestart {
        disk,
        open,
        scan,
        records,
    })
}
