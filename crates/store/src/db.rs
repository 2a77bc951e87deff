//! The on-disk layout: the Raft log's segment files in `<data dir>/raftlog`
//! (`raft_log.rs`), one `sled::Db` per process (in `<data dir>/sled`) with two trees,
//! and the helpers that read and write them.
//!
//! | tree       | key                         | value                                   |
//! |------------|-----------------------------|-----------------------------------------|
//! | `meta`     | `format`                    | [`FORMAT`] marker, written at creation  |
//! |            | `vote`                      | bincode `Vote<u64>`                     |
//! |            | `committed`                 | bincode `LogId<u64>` (absent = none)    |
//! |            | `last_purged`               | bincode `LogId<u64>`                    |
//! | `snapshot` | `meta`, `data`              | only in stores written before snapshots |
//! |            |                             | got their own file; read, then removed  |
//!
//! The snapshot is the file `<data dir>/snapshot` (`snapshot_file.rs`). One `Db` for
//! the small records because sled is built around one `Db` per process: a single
//! `flush()` covers them together, and sled's recovery
//! restores a *prefix* of the writes made to it.
//!
//! Format 1 (`quorate-store/1`) kept the log in a sled tree `logs` (big-endian index
//! keys). `open` moves such a log into segment files once. Format 2 segments have no
//! stamped sync lengths (`record.rs`); they are read as they are. Either way `open`
//! then marks the store format 3, which binaries that only know an older format
//! refuse to open instead of misreading the log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode};
use crate::flusher::Flusher;
use crate::raft_log::{RaftLog, LOG_DIR};
use crate::StoreError;

/// Written into `meta/format` when a store is created; checked at every open so that
/// a directory that is not (or no longer) a quorate store is refused instead of being
/// silently treated as empty.
pub(crate) const FORMAT: &[u8] = b"quorate-store/3";
/// Log segments without a header or stamped sync lengths (`record.rs`); still read
/// as they are, so `open` only raises the marker (in `migrate.rs`).
pub(crate) const FORMAT_V2: &[u8] = b"quorate-store/2";
/// The format before the log left sled; `open` migrates it.
pub(crate) const FORMAT_V1: &[u8] = b"quorate-store/1";

pub(crate) const KEY_FORMAT: &[u8] = b"format";
pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const KEY_SNAP_META: &[u8] = b"meta";
pub(crate) const KEY_SNAP_DATA: &[u8] = b"data";

/// Everything the log store and the state machine share. Dropped when the last
/// `LogStore`/`StateMachineStore` clone goes; dropping the flusher joins its thread,
/// after which sled releases the directory lock.
pub(crate) struct Shared {
    pub(crate) flusher: Flusher,
    pub(crate) dir: PathBuf,
    pub(crate) log: RaftLog,
    pub(crate) db: sled::Db,
    pub(crate) meta: sled::Tree,
    pub(crate) snap: sled::Tree,
    /// The last log id openraft purged, durable or not yet (`log_store.rs`: a purge
    /// is made durable only as far as the durable snapshot covers it).
    pub(crate) purge_requested: std::sync::Mutex<Option<openraft::LogId<u64>>>,
    /// One purge (or purge completion after a snapshot) at a time, so the durable
    /// `last_purged` never moves backwards.
    pub(crate) purge_lock: tokio::sync::Mutex<()>,
    /// The committed id openraft gave last, and when one was last written to sled
    /// (`log_store.rs`: it is written at most every [`COMMITTED_EVERY`]).
    pub(crate) committed: std::sync::Mutex<CommittedHint>,
}

/// How often, at most, the committed id (a hint: see `log_store.rs`) goes to sled.
/// openraft saves it on every commit, several times per log entry on a busy node, and
/// each sled insert cost a follower 3–4 % of its CPU in the 64-client benchmark.
pub(crate) const COMMITTED_EVERY: Duration = Duration::from_millis(100);

/// See [`Shared::committed`].
#[derive(Debug, Default)]
pub(crate) struct CommittedHint {
    /// The latest committed id, whether or not it reached sled yet.
    pub(crate) latest: Option<openraft::LogId<u64>>,
    /// `latest` is newer than what sled holds.
    pub(crate) unwritten: bool,
    /// When a committed id was last written to sled (`None`: not yet in this process).
    pub(crate) written_at: Option<Instant>,
}

pub(crate) fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Malformed {
        what: "log key",
        reason: format!("expected 8 bytes, found {}", key.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl Shared {
    /// Writes the latest committed id to sled if it was held back (called before
    /// every sled flush, so a flushed store has it).
    pub(crate) fn write_committed(&self) -> Result<(), StoreError> {
        let mut hint = self
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !hint.unwritten {
            return Ok(());
        }
        match hint.latest {
            Some(c) => self.put_meta(KEY_COMMITTED, "committed log id", &c)?,
            None => {
                self.meta.remove(KEY_COMMITTED)?;
            }
        }
        hint.unwritten = false;
        hint.written_at = Some(Instant::now());
        Ok(())
    }

    /// The meta of the snapshot on disk: the snapshot file's, else (a store written
    /// before snapshots left sled) the `snapshot` tree's.
    pub(crate) fn durable_snapshot_meta(
        &self,
    ) -> Result<Option<openraft::SnapshotMeta<u64, crate::NodeInfo>>, StoreError> {
        if let Some(meta) = crate::snapshot_file::read_meta(&**self.log.vfs(), &self.dir)? {
            return Ok(Some(meta));
        }
        match self.snap.get(KEY_SNAP_META)? {
            Some(b) => Ok(Some(decode("snapshot meta", &b)?)),
            None => Ok(None),
        }
    }

    /// What openraft has purged, as it sees the log.
    pub(crate) fn purge_requested(&self) -> Option<openraft::LogId<u64>> {
        *self
            .purge_requested
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match self.meta.get(key)? {
            Some(bytes) => Ok(Some(decode(what, &bytes)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn put_meta<T: Serialize>(
        &self,
        key: &[u8],
        what: &'static str,
        value: &T,
    ) -> Result<(), StoreError> {
        self.meta.insert(key, encode(what, value)?)?;
        Ok(())
    }
}

/// Name of the sled directory inside the data directory.
pub(crate) const SLED_DIR: &str = "sled";
/// Where a new store is prepared before being renamed to [`SLED_DIR`].
const CREATING_DIR: &str = "sled.creating";

/// sled's page cache. sled now holds only a few small records (the log and the
/// snapshot have their own files), so its default (1 GiB) or even the 64 MiB it had
/// while it held the log would only keep dead pages resident.
const SLED_CACHE_BYTES: u64 = 4 << 20;

/// How long [`open_db`] waits for sled's directory lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens `config`, polling while sled's directory lock is still held.
///
/// A dropped `sled::Db` keeps its exclusive file lock until sled's IO threads let go
/// of their handles, which can be a moment after the drop: a store reopened in the
/// same process (the server's in-process restart after a full disk, every test that
/// reopens a directory) failed "could not acquire lock" about one run in ten. sled
/// offers no event for the release, so this polls, for at most [`LOCK_WAIT`]; a lock
/// held longer (another process on the same directory) is the error it was.
fn open_sled_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Opens (or creates) the sled database under `dir` and checks the format marker.
///
/// The database lives in `dir/sled`. A new one is built in `dir/sled.creating`,
/// marked, flushed and only then renamed into place (the empty `dir/raftlog` is made
/// just before), so a crash during the very first
/// start leaves either nothing or a complete empty store — never a half-created
/// directory that later opens would have to second-guess. Consequently, any
/// `dir/sled` without the marker is damaged (sled recovered nothing), and a `dir`
/// with other content but no `sled` is not a quorate data directory: both are refused
/// rather than started empty, because a node that forgets its vote and log breaks Raft.
pub(crate) fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let open_err = |source| StoreError::Open {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let db_dir = dir.join(SLED_DIR);
    if !db_dir.exists() {
        let tmp = dir.join(CREATING_DIR);
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            // An empty log directory is what a crash during a first start leaves.
            let empty_log = name == LOG_DIR
                && std::fs::read_dir(dir.join(LOG_DIR))
                    .map_err(io)?
                    .next()
                    .is_none();
            if name != CREATING_DIR && !empty_log {
                return Err(StoreError::corrupt(
                    dir,
                    format!(
                        "directory holds {name:?} but no quorate store ({SLED_DIR}/ is missing); \
                         refusing to start empty"
                    ),
                ));
            }
        }
        if tmp.exists() {
            // Left by a crash during a first start: it never held anything.
            std::fs::remove_dir_all(&tmp).map_err(io)?;
        }
        {
            let db = sled::Config::new().path(&tmp).open().map_err(open_err)?;
            db.open_tree("meta")
                .and_then(|meta| meta.insert(KEY_FORMAT, FORMAT))
                .and_then(|_| db.flush())
                .map_err(open_err)?;
        }
        // The log directory first: `sled/` existing means the store is complete.
        let log_dir = dir.join(LOG_DIR);
        if !log_dir.exists() {
            std::fs::create_dir(&log_dir).map_err(io)?;
        }
        std::fs::rename(&tmp, &db_dir).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }

    // No background flush thread: the flusher flushes sled whenever a write must be
    // durable (vote, purge, snapshot), and the one record written without a flush,
    // the committed id, is a hint (see `log_store.rs`). sled's thread would wake its
    // IO pool every 500 ms and, holding the database, keep its file lock for a moment
    // after the store is dropped.
    let db = open_sled_waiting_for_lock(
        &sled::Config::new()
            .path(&db_dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(None),
    )
    .map_err(open_err)?;
    let meta = db.open_tree("meta").map_err(open_err)?;
    match meta.get(KEY_FORMAT).map_err(open_err)? {
        Some(v) if [FORMAT, FORMAT_V2, FORMAT_V1].contains(&v.as_ref()) => Ok(db),
        Some(v) => Err(StoreError::corrupt(
            dir,
            format!(
                "unknown format marker {:?} (expected {:?})",
                String::from_utf8_lossy(&v),
                String::from_utf8_lossy(FORMAT)
            ),
        )),
        None => Err(StoreError::corrupt(
            dir,
            format!("{SLED_DIR}/ holds no format marker: the database is damaged or not quorate's"),
        )),
    }
}
