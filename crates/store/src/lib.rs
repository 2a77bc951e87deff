//! # quorate-store: openraft 0.9 storage on files and sled, wrapping quorate-core
//!
//! [`open`] gives a node its [`Storage`]: a [`LogStore`] (Raft log, vote, committed
//! index) and a [`StateMachineStore`] (the limiter state, applied through
//! `quorate_core::State::apply`, plus snapshots). The log is a set of checksummed
//! segment files (`raft_log.rs`), the snapshot one checksummed file
//! (`snapshot_file.rs`), and the small records (vote, committed and purged ids,
//! format marker) live in **one** `sled::Db` per process (layout in `db.rs`). All
//! business logic stays in core; this crate only orders, persists and replays.
//!
//! ## Durability
//!
//! - An append is acknowledged to openraft only after an `fdatasync` of its segment
//!   covered it. One flusher thread (`flusher.rs`) does every log write and every
//!   flush, so a burst of appends shares one fsync (group commit) and sled's
//!   deadlocking concurrent `flush_async` (sled #1308) is never used.
//! - Votes, truncations and snapshots wait for a flush before returning.
//! - The state machine itself is in memory; see below for why and how it survives a
//!   crash. `tests/crash.rs` SIGKILLs a writer process at random points and checks that
//!   every acknowledged entry and vote survives and that the recovered state equals a
//!   fresh replay of the log. `tests/power_loss.rs` goes further on a simulated disk
//!   (`vfs.rs`): power lost at a random file operation drops or tears every write not
//!   yet fsync'd; `tests/disk_faults.rs` fails fsyncs and writes (EIO, ENOSPC).
//! - The first failed write or fsync stops the store for good ([`LogStore::health`]);
//!   see docs/storage.md for the on-disk format, the fsync rules and the fault model.
//!
//! ## Where the core state lives: memory + snapshots (measured)
//!
//! Two designs were measured with `cargo bench -p quorate-store` (benches/store.rs,
//! 2-core VM, release build; entries are `Command`s of 16 `Acquire` ops):
//!
//! ```text
//! durable appends (ack after fsync)    appends/s    fsyncs/s   entries per fsync
//!   1 writer                           2.3k-4.8k    = appends        1.0
//!   16 writers                         3.1k-7.0k    0.7k-1.4k        4.4-5.1
//!   64 writers                         5.8k-9.1k    0.4k-0.7k        7.9-15.4
//!
//! apply (workload mix, 16 ops/entry)   entries/s    ops/s
//!   memory + snapshots                 42k-66k      0.67M-1.06M
//!   sled-resident (emulated)           1.8k-2.8k    29k-45k        (15-36x slower)
//!
//! restart, 1M keys (1M leases)         time
//!   memory + snapshots                 1.9-3.1 s open (read 81 MB snapshot + restore)
//!                                      + 0.6-1.0 s replay of a 10k-entry committed tail
//!   sled-resident (emulated)           0.4-0.6 s sled open (1.5-2.7 s to touch every record)
//!
//! snapshot of 1M leases: 81 MB; serialized whole under the read lock, apply stalled
//! 0.27-0.67 s (cloning the State instead: 1.7-7.7 s). Now a copy-on-write cut
//! written 4096 entries per lock: longest hold 1.7-2.2 ms at 1M leases or buckets
//! (`cargo bench -p quorate-core --bench apply`); whole build_snapshot incl. write +
//! fsync: 1.1-2.0 s. On disk: 214-296 MB
//! (memory + snapshots, incl. not-yet-reclaimed log) vs 438-509 MB (sled-resident).
//! ```
//!
//! Ranges are over three runs on a shared, loaded VM (other builds running), so
//! treat them as orders of magnitude. The "sled-resident" design is emulated in the
//! benchmark: core decides, then every record the ops touched (lease, slot, limit)
//! plus last-applied goes into a sled tree in one batch per entry, reading the lease
//! record back on release — a lower bound on what a real sled-backed core would do.
//!
//! **Chosen: in memory + snapshots.** The sled-resident variant pays for every op in
//! sled writes on the apply path (and quorate-core would have to be rewritten against
//! a key-value interface, since its `State` is plain `BTreeMap`s), to buy a faster
//! restart; with memory + snapshots a restart is "load snapshot, replay the log after
//! it", which stays in seconds even at 1M keys, and apply is a pure function call.
//! Consistency after a crash comes from one rule: last-applied id, last membership
//! and core state are only ever persisted together, in one snapshot file replaced
//! atomically (write, fsync, rename); the committed index is persisted (`save_committed`), so openraft
//! re-applies exactly the committed entries after that snapshot at startup.
//!
//! ## Modules
//!
//! `log_store` ([`LogStore`]) over `raft_log` (the segment files), `state_machine`
//! ([`StateMachineStore`]) over `snapshot` (snapshot bytes) and `snapshot_file` (where
//! they are kept), both over `purge` (openraft's purges, durable only as far as the
//! durable snapshot), `db` (layout, sled, opening), `migrate` (older formats), `flusher`
//! (the one writer: group commit, file jobs), `record` (segment byte layout), `vfs`
//! (the file-operation seam and the simulated disk), `codec` (bincode options),
//! `error` ([`StoreError`]). Dependencies run one way: `vfs`, `record`, `flusher` and
//! `codec` at the bottom.

mod codec;
mod db;
mod error;
mod flusher;
mod log_store;
mod migrate;
mod purge;
mod raft_log;
mod record;
mod snapshot;
mod snapshot_data;
mod snapshot_file;
mod state_machine;
pub mod vfs;

use std::path::Path;
use std::sync::Arc;

use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};

use crate::codec::decode;
use crate::db::{open_db, Shared, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE};
use crate::raft_log::RaftLog;
use crate::state_machine::{restore_snapshot, Applied};

pub use crate::error::StoreError;
pub use crate::flusher::{FlushStats, Health, Load, LoadGuard, SyncHook, SyncReport};
pub use crate::log_store::LogStore;
pub use crate::snapshot_data::SnapshotData;
pub use crate::state_machine::{GrantSink, StateMachineStore};

/// How to reach a node: its client API and its Raft RPC address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub api_addr: String,
    pub raft_addr: String,
}

/// What applying one log entry returned: one reply per op of the entry; empty for
/// blank and membership entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response(pub Vec<quorate_core::Reply>);

openraft::declare_raft_types!(
    /// quorate's openraft type configuration.
    pub TypeConfig:
        D = quorate_core::Command,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node's storage, as handed to `openraft::Raft::new`.
pub struct Storage {
    pub log: LogStore,
    pub sm: StateMachineStore,
}

impl Storage {
    /// True iff this node has never taken part in a cluster: no vote, no log entry
    /// (present or purged), no committed index, no snapshot and nothing applied. Only
    /// such a node may bootstrap (initialize) a cluster.
    pub fn is_fresh(&self) -> bool {
        let s = &self.log.shared;
        let empty = |tree: &sled::Tree, key: &[u8]| matches!(tree.get(key), Ok(None));
        empty(&s.meta, KEY_VOTE)
            && empty(&s.meta, KEY_COMMITTED)
            && empty(&s.meta, KEY_LAST_PURGED)
            && empty(&s.snap, db::KEY_SNAP_META)
            && !snapshot_file::exists(&**s.log.vfs(), &s.dir)
            && s.log.is_empty()
            && self.sm.last_applied().is_none()
    }
}

/// Opens (creating if needed) the store in `dir`.
///
/// Everything persisted is decoded and checked here, before openraft sees it: the
/// format marker, vote, committed and purged ids, the snapshot (restored into core
/// state) and the log (contiguous indexes, entries that decode). A directory that is
/// not a quorate store, or is damaged, yields [`StoreError::Corrupt`] or
/// [`StoreError::Open`] naming the path — never an empty store.
pub fn open(dir: &Path) -> Result<Storage, StoreError> {
    open_with(dir, Arc::new(vfs::RealFs))
}

/// [`open`] with the log and snapshot files behind `vfs` (tests pass a
/// [`vfs::SimFs`] to lose power, tear writes and fail operations).
pub fn open_with(dir: &Path, vfs: Arc<dyn vfs::Vfs>) -> Result<Storage, StoreError> {
    let shared = open_shared(dir, vfs)?;
    let corrupt = |what: &str, e: StoreError| StoreError::corrupt(dir, format!("{what}: {e}"));

    let vote: Option<Vote<u64>> = shared
        .get_meta(KEY_VOTE, "vote")
        .map_err(|e| corrupt("vote", e))?;
    let mut committed: Option<LogId<u64>> = shared
        .get_meta(KEY_COMMITTED, "committed log id")
        .map_err(|e| corrupt("committed log id", e))?;
    let last_purged: Option<LogId<u64>> = shared
        .get_meta(KEY_LAST_PURGED, "last purged log id")
        .map_err(|e| corrupt("last purged log id", e))?;

    let applied = match StateMachineStore::load_snapshot(&shared)
        .map_err(|e| corrupt("snapshot", e))?
    {
        Some((meta, data)) => restore_snapshot(&meta, &data).map_err(|e| corrupt("snapshot", e))?,
        None => Applied::default(),
    };

    let log = LogStore {
        shared: shared.clone(),
    };
    // Finish a purge a crash interrupted: entries at or below last_purged are dead
    // (`RaftLog::open` did not load them); this removes their files.
    if let Some(p) = last_purged {
        shared.log.purge(&shared.flusher, p.index);
    }
    let (first, last) = match shared.log.bounds() {
        Some((first, last)) => (Some(first), Some(last)),
        None => (None, None),
    };
    // The ends must decode (every record's checksum was verified when opening).
    for end in [first, last].into_iter().flatten() {
        log.read_range(end..=end).map_err(|e| corrupt("log", e))?;
    }
    check_ids_agree(first, last_purged, &applied).map_err(|what| StoreError::corrupt(dir, what))?;
    if committed.is_some() && clamp_committed(committed, last, last_purged, &applied).is_none() {
        // openraft reads the committed id back through `read_committed`.
        committed = None;
        shared
            .meta
            .remove(KEY_COMMITTED)
            .and_then(|_| shared.db.flush())
            .map_err(|e| corrupt("committed log id", e.into()))?;
    }

    tracing::info!(
        path = %dir.display(),
        ?vote,
        ?committed,
        ?last_purged,
        log_first = ?first,
        log_last = ?last,
        last_applied = ?applied.last_applied,
        "opened store"
    );
    let sm = StateMachineStore::new(shared, applied);
    Ok(Storage { log, sm })
}

/// Opens the sled db and its trees, moves a format-1 log out of sled, opens the log
/// files (checking every record) and starts the flusher thread.
fn open_shared(dir: &Path, vfs: Arc<dyn vfs::Vfs>) -> Result<Arc<Shared>, StoreError> {
    let db = open_db(dir)?;
    let open_tree = |name: &str| {
        db.open_tree(name).map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        })
    };
    let meta = open_tree("meta")?;
    let snap = open_tree("snapshot")?;
    let corrupt = |what: &str, e: StoreError| StoreError::corrupt(dir, format!("{what}: {e}"));
    let last_purged: Option<LogId<u64>> = match meta.get(KEY_LAST_PURGED)? {
        Some(b) => {
            Some(decode("last purged log id", &b).map_err(|e| corrupt("last purged log id", e))?)
        }
        None => None,
    };
    let purged_index = last_purged.map(|p| p.index);
    migrate::sled_log_to_segments(dir, &db, &meta, purged_index)
        .map_err(|e| corrupt("moving the log out of sled", e))?;
    let log = RaftLog::open(dir, purged_index, vfs.clone())?;
    let flusher = flusher::Flusher::start(
        db.clone(),
        dir.to_path_buf(),
        log.written_seq(),
        dir.join(raft_log::LOG_DIR).join(raft_log::CLEAN_FILE),
        vfs,
    )?;
    Ok(Arc::new(Shared {
        flusher,
        dir: dir.to_path_buf(),
        log,
        db,
        meta,
        snap,
        purge_requested: std::sync::Mutex::new(last_purged),
        purge_lock: tokio::sync::Mutex::new(()),
        committed: std::sync::Mutex::default(),
    }))
}

/// Checks that the log's first index and the purged id fit together; returns what
/// does not, for [`StoreError::Corrupt`].
fn check_ids_agree(
    first: Option<u64>,
    last_purged: Option<LogId<u64>>,
    applied: &Applied,
) -> Result<(), String> {
    if let Some(p) = last_purged {
        // Purged entries are only ever the snapshot's (`log_store.rs`); purged past it,
        // the entries between are gone and the state machine would skip them.
        if !matches!(applied.last_applied, Some(a) if a.index >= p.index) {
            return Err(format!(
                "entries up to {} were purged but the snapshot ends at {}: the entries \
                 between are lost (left by a crash during a snapshot install of an older \
                 version); wipe this node's data directory and add it to the cluster again",
                p.index,
                applied
                    .last_applied
                    .map_or_else(|| "none".to_string(), |a| a.index.to_string())
            ));
        }
    }
    if let (Some(first), Some(p)) = (first, last_purged) {
        if first != p.index + 1 {
            return Err(format!(
                "log starts at {first} but entries up to {} were purged",
                p.index
            ));
        }
    }
    if let (Some(first), None, Some(a)) = (first, last_purged, applied.last_applied) {
        if first > a.index + 1 {
            return Err(format!(
                "log starts at {first} but the snapshot ends at {}",
                a.index
            ));
        }
    }
    Ok(())
}

/// The committed id, lowered to what the log and snapshot hold.
///
/// sled (committed id) and the log files are flushed separately, so after a crash the
/// committed id can point past the recovered log. Only entries this node never
/// acknowledged can be missing (an acknowledged one was fsync'd first), and a lower
/// committed id only means re-applying fewer entries at startup; the leader re-sends
/// the rest.
fn clamp_committed(
    committed: Option<LogId<u64>>,
    last: Option<u64>,
    last_purged: Option<LogId<u64>>,
    applied: &Applied,
) -> Option<LogId<u64>> {
    let c = committed?;
    let covered = [
        last,
        last_purged.map(|p| p.index),
        applied.last_applied.map(|a| a.index),
    ]
    .into_iter()
    .flatten()
    .max();
    match covered {
        Some(covered) if covered >= c.index => Some(c),
        _ => {
            tracing::warn!(committed = %c, ?covered, "committed id past the recovered log; lowered");
            None
        }
    }
}
