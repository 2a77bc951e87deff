//! [`LogStore`]: openraft's `RaftLogStorage` + `RaftLogReader` on the `logs` and
//! `meta` trees.
//!
//! Durability rules, and why each is enough:
//!
//! - **append**: the entries are inserted in one sled batch (so an append is all or
//!   nothing and immediately readable), then the callback is handed to the
//!   flusher, which fires it after the next `Db::flush()`. openraft
//!   only counts an entry towards a quorum once its callback fired.
//! - **save_vote**: written, then this call waits for a flush. A vote must never be
//!   forgotten, or the node could vote twice in one term.
//! - **save_committed**: written, not flushed. sled recovers a prefix of the writes,
//!   and the committed id is always written after the entries it covers, so a
//!   recovered committed id never points past the recovered log. Losing the latest
//!   one only means re-applying fewer entries at startup; the leader re-sends it.
//! - **truncate**: removes `[index, ∞)` and waits for a flush, so conflicting entries a
//!   new leader overwrote cannot reappear after a crash.
//! - **purge**: writes `last_purged` first, then removes `[0, index]`, no flush.
//!   openraft only purges what a durable snapshot covers, and ignores anything at or
//!   below `last_purged`; if the removals are lost in a crash, [`crate::open`] finishes
//!   them.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};

use crate::db::{
    decode, encode, index_key, key_index, Shared, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE,
};
use crate::error::{
    logs_delete, logs_read, logs_write, store_read, store_write, vote_read, vote_write,
};
use crate::flusher::FlushStats;
use crate::{StoreError, TypeConfig};

/// The Raft log, vote and committed index of one node. Cheap to clone: clones share
/// the same sled trees and flusher.
#[derive(Clone)]
pub struct LogStore {
    pub(crate) shared: Arc<Shared>,
}

impl LogStore {
    /// Appends `entries` and calls `done` once they are durable (or with the error).
    ///
    /// This is what [`RaftLogStorage::append`] does, with a plain closure instead of
    /// openraft's `LogFlushed` (which only openraft can construct); the crash test and
    /// the benchmark use it to keep many appends in flight, as openraft does.
    /// Returns once the entries are readable; on an error nothing was written and
    /// `done` is dropped without being called.
    pub fn append_with_callback<I, F>(&self, entries: I, done: F) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
        F: FnOnce(io::Result<()>) + Send + 'static,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&index_key(entry.log_id.index), encode("log entry", &entry)?);
        }
        self.shared.logs.apply_batch(batch)?;
        self.shared.flusher.submit(Box::new(done));
        Ok(())
    }

    /// Waits until every write made so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.shared.flusher.flush().await
    }

    /// Flush counters: how many fsyncs the flusher made and how many callbacks they
    /// acknowledged (their ratio is the group-commit factor).
    pub fn flush_stats(&self) -> FlushStats {
        self.shared.flusher.stats()
    }

    pub(crate) fn read_range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let lo = match range.start_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&x) => match x.checked_add(1) {
                Some(x) => x,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(&x) => Some(x),
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&x) => Some(x - 1),
            Bound::Unbounded => None,
        };
        let iter = match hi {
            Some(hi) if hi < lo => return Ok(Vec::new()),
            Some(hi) => self.shared.logs.range(index_key(lo)..=index_key(hi)),
            None => self.shared.logs.range(index_key(lo)..),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (key, value) = kv?;
            let entry: Entry<TypeConfig> = decode("log entry", &value)?;
            let index = key_index(&key)?;
            if entry.log_id.index != index {
                return Err(StoreError::Malformed {
                    what: "log entry",
                    reason: format!("stored at index {index} but says {}", entry.log_id),
                });
            }
            out.push(entry);
        }
        Ok(out)
    }

    pub(crate) fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged: Option<LogId<u64>> = self
            .shared
            .get_meta(KEY_LAST_PURGED, "last purged log id")?;
        let last_entry = match self.shared.logs.last()? {
            Some((_, value)) => Some(decode::<Entry<TypeConfig>>("log entry", &value)?.log_id),
            None => None,
        };
        // With every entry purged the last log id is the purged one; entries at or
        // below it can linger after a crash interrupted a purge and do not count.
        let last_log_id = match (last_entry, last_purged) {
            (Some(e), Some(p)) if e.index <= p.index => Some(p),
            (Some(e), _) => Some(e),
            (None, p) => p,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    pub(crate) fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.shared.logs.range(index_key(index)..).keys() {
            batch.remove(key?);
        }
        self.shared.logs.apply_batch(batch)?;
        Ok(())
    }

    pub(crate) fn purge_upto(&self, log_id: LogId<u64>) -> Result<(), StoreError> {
        let current: Option<LogId<u64>> = self
            .shared
            .get_meta(KEY_LAST_PURGED, "last purged log id")?;
        if current.is_some_and(|c| c.index >= log_id.index) {
            // Never move `last_purged` backwards.
            return Ok(());
        }
        // `last_purged` goes first: if a crash keeps only part of this, openraft still
        // ignores everything at or below it.
        self.shared
            .put_meta(KEY_LAST_PURGED, "last purged log id", &log_id)?;
        self.remove_upto(log_id.index)
    }

    /// Removes the entries `[0, index]`.
    pub(crate) fn remove_upto(&self, index: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.shared.logs.range(..=index_key(index)).keys() {
            batch.remove(key?);
        }
        self.shared.logs.apply_batch(batch)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        self.read_range(range).map_err(logs_read)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        self.log_state().map_err(logs_read)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.shared
            .put_meta(KEY_VOTE, "vote", vote)
            .map_err(vote_write)?;
        self.shared.flusher.flush().await.map_err(vote_write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.shared.get_meta(KEY_VOTE, "vote").map_err(vote_read)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let res = match committed {
            Some(c) => self.shared.put_meta(KEY_COMMITTED, "committed log id", &c),
            None => self
                .shared
                .meta
                .remove(KEY_COMMITTED)
                .map(|_| ())
                .map_err(StoreError::from),
        };
        res.map_err(store_write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.shared
            .get_meta(KEY_COMMITTED, "committed log id")
            .map_err(store_read)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_with_callback(entries, move |res| callback.log_io_completed(res))
            .map_err(logs_write)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(%log_id, "truncate logs from");
        self.truncate_from(log_id.index).map_err(logs_delete)?;
        self.shared.flusher.flush().await.map_err(logs_delete)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(%log_id, "purge logs up to");
        self.purge_upto(log_id).map_err(logs_delete)
    }
}
