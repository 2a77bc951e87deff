//! [`LogStore`]: openraft's `RaftLogStorage` + `RaftLogReader` on the segment files
//! of `raft_log.rs` (entries) and sled's `meta` tree (vote, committed, last purged).
//!
//! Durability rules, and why each is enough:
//!
//! - **append**: the records are reserved and readable at once; the flusher writes
//!   and fsyncs them, then fires the callback. openraft only counts an entry towards
//!   a quorum once its callback fired.
//! - **save_vote**: written to sled, then this call waits for a sled flush. A vote
//!   must never be forgotten, or the node could vote twice in one term.
//! - **save_committed**: kept in memory, and written to sled (not flushed) at most
//!   every 100 ms (`COMMITTED_EVERY`): openraft saves it on every commit, and a sled
//!   insert each time cost a follower 3–4 % of its CPU. It is a hint: sled may persist
//!   it before the log files hold the entries it covers (they are separate files), so
//!   `open` clamps a recovered committed id to what the log and snapshot hold, and a
//!   stale one (the latest 100 ms not written, or not flushed) only means re-applying
//!   fewer entries at startup; the leader re-sends it. `read_committed` answers the
//!   latest id given in this process. An entry this node acknowledged was fsync'd
//!   first, so the clamp never drops an entry the cluster counted on this node for.
//! - **truncate**: removes `[index, ∞)` and waits until the files say so durably, so
//!   conflicting entries a new leader overwrote cannot reappear after a crash.
//! - **purge**: takes effect at once for openraft (reads and the log state no longer
//!   show the entries), but is made durable only **up to the durable snapshot**: the
//!   rest waits until a snapshot that covers it is on disk (`finish_purge`, called
//!   after every snapshot write). openraft does not guarantee that order: on a
//!   follower's snapshot install it sends the install to the state-machine worker and
//!   purges the log at once, and the install then spends seconds decoding before it
//!   writes the snapshot file. A crash in that window used to leave `last_purged`
//!   past the snapshot, entries nobody has any more, and a node that could not start
//!   (issue 21). The durable part makes `last_purged` durable first, then removes the
//!   segment files that hold nothing newer; if a crash interrupts the removal,
//!   [`crate::open`] skips the entries at or below `last_purged` and finishes it.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};

use crate::db::{Shared, COMMITTED_EVERY, KEY_COMMITTED, KEY_VOTE};
use crate::error::{
    logs_delete, logs_read, logs_write, store_read, store_write, vote_read, vote_write,
};
#[cfg(doc)]
use crate::flusher::SyncReport;
use crate::flusher::{FlushStats, Health, Load, SyncHook};
use crate::{StoreError, TypeConfig};

/// The Raft log, vote and committed index of one node. Cheap to clone: clones share
/// the same files, sled trees and flusher.
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
    /// `done` is dropped without being called. After a failed write or fsync
    /// ([`Self::health`] not `Ok`) every append is refused here
    /// ([`StoreError::Stopped`]), so the entries never become readable either.
    pub fn append_with_callback<I, F>(&self, entries: I, done: F) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
        F: FnOnce(io::Result<()>) + Send + 'static,
    {
        let health = self.health();
        if health != Health::Ok {
            return Err(StoreError::Stopped(health));
        }
        self.shared
            .log
            .append(&self.shared.flusher, entries, Box::new(done))?;
        self.shared.flusher.run_here();
        Ok(())
    }

    /// Waits until every write made so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.shared.write_committed()?;
        self.shared.flusher.flush().await
    }

    /// Whether this store can still write. After the first failed write or fsync it
    /// is [`Health::NoSpace`] or [`Health::Failed`] for good: every later append,
    /// vote and flush fails (see `flusher.rs`), and only reopening the directory
    /// brings the store back.
    pub fn health(&self) -> Health {
        self.shared.flusher.health()
    }

    /// Test knob: closes segments after `segment_bytes`, caches `cache_bytes` of
    /// entries and zero-fills `prealloc_bytes` ahead of the records (0: never), so a
    /// small test rotates segments, reads entries back from files and grows its files
    /// either way.
    #[doc(hidden)]
    pub fn set_limits_for_tests(
        &self,
        segment_bytes: u64,
        cache_bytes: usize,
        prealloc_bytes: u64,
    ) {
        self.shared
            .log
            .set_limits(segment_bytes, cache_bytes, prealloc_bytes);
    }

    /// Flush counters: how many fsyncs the flusher made and how many callbacks they
    /// acknowledged (their ratio is the group-commit factor).
    pub fn flush_stats(&self) -> FlushStats {
        self.shared.flusher.stats()
    }

    /// Sets the hook told how long each batch of writes took to reach the disk and
    /// how many writes it made durable ([`SyncReport`]): the node's metrics. Only
    /// once per store; a second hook is handed back.
    pub fn on_sync(&self, hook: SyncHook) -> Result<(), SyncHook> {
        self.shared.flusher.on_sync(hook)
    }

    /// The node's count of client operations in progress, which decides whether an
    /// append is synced on the appending thread (see `flusher.rs`, [`Load`]). The
    /// server enters it once per operation. Until this is called the store never
    /// syncs on the appending thread (uncounted callers keep many appends in flight,
    /// which share the flusher thread's fsyncs).
    pub fn load(&self) -> Load {
        self.shared.flusher.load().clone()
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
        // Entries openraft purged are gone for it, even where their removal waits for
        // a snapshot (see the module docs).
        let lo = match self.shared.purge_requested() {
            Some(p) => lo.max(p.index.saturating_add(1)),
            None => lo,
        };
        let hi = match range.end_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&x) => x - 1,
            Bound::Unbounded => u64::MAX,
        };
        self.shared.log.read(lo, hi)
    }

    pub(crate) fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        // What openraft purged, durable or not yet (never behind the durable id).
        let last_purged = self.shared.purge_requested();
        let last_entry = match self.shared.log.bounds() {
            Some((_, last)) => self.read_range(last..=last)?.pop().map(|e| e.log_id),
            None => None,
        };
        // With every entry purged the last log id is the purged one.
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

    /// Waits for a durability callback queued by the log.
    async fn wait(&self, queue: impl FnOnce(crate::flusher::Done)) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        queue(Box::new(move |res| {
            let _ = tx.send(res);
        }));
        let res = rx.await.map_err(|_| StoreError::FlusherStopped)?;
        res.map_err(|source| StoreError::Io {
            path: self.shared.dir.clone(),
            source,
        })
    }

    pub(crate) async fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let s = &self.shared;
        self.wait(|done| s.log.truncate(&s.flusher, index, done))
            .await
    }

    /// openraft's purge: effective at once, durable up to the durable snapshot
    /// (`purge.rs`).
    pub(crate) async fn purge_upto(&self, log_id: LogId<u64>) -> Result<(), StoreError> {
        crate::purge::purge_upto(&self.shared, log_id).await
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
        self.shared.write_committed().map_err(vote_write)?;
        self.shared.flusher.flush().await.map_err(vote_write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.shared.get_meta(KEY_VOTE, "vote").map_err(vote_read)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let mut hint = self
            .shared
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hint.latest = committed;
        hint.unwritten = true;
        // `None` (a reset) is written at once, like the first id in a process.
        let recent = hint
            .written_at
            .is_some_and(|at| at.elapsed() < COMMITTED_EVERY);
        drop(hint);
        if committed.is_some() && recent {
            return Ok(());
        }
        self.shared.write_committed().map_err(store_write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        let hint = self
            .shared
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if hint.written_at.is_some() {
            return Ok(hint.latest);
        }
        drop(hint);
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
        self.truncate_from(log_id.index).await.map_err(logs_delete)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(%log_id, "purge logs up to");
        self.purge_upto(log_id).await.map_err(logs_delete)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorage;
    use openraft::{CommittedLeaderId, LogId};

    use crate::db::KEY_COMMITTED;

    fn id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// Commits in quick succession reach sled at most every `COMMITTED_EVERY`; the
    /// store still answers the latest, and a flush writes it.
    #[tokio::test]
    async fn committed_ids_reach_sled_at_most_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::open(dir.path()).unwrap();
        let in_sled = |st: &crate::Storage| -> Option<LogId<u64>> {
            st.log
                .shared
                .get_meta(KEY_COMMITTED, "committed log id")
                .unwrap()
        };
        let mut log = st.log.clone();
        log.save_committed(Some(id(10))).await.unwrap();
        assert_eq!(in_sled(&st), Some(id(10)), "the first one is written");
        log.save_committed(Some(id(20))).await.unwrap();
        assert_eq!(in_sled(&st), Some(id(10)), "the next, right after, waits");
        assert_eq!(log.read_committed().await.unwrap(), Some(id(20)));
        st.log.flush().await.unwrap();
        assert_eq!(in_sled(&st), Some(id(20)), "a flush writes it");
    }

    fn blank(index: u64) -> openraft::Entry<crate::TypeConfig> {
        openraft::Entry {
            log_id: id(index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    /// Appends `index`; answers which thread acknowledged it, once it has.
    fn append_on(
        st: &crate::Storage,
        index: u64,
    ) -> std::sync::mpsc::Receiver<(Option<String>, std::io::Result<()>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        st.log
            .append_with_callback(vec![blank(index)], move |res| {
                let thread = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((thread, res));
            })
            .unwrap();
        rx
    }

    /// On a quiet node (at most one operation in progress) an append is synced by
    /// the appending thread: acknowledged before `append_with_callback` returns, with
    /// no hand-off to the flusher thread. With two or more in progress the flusher
    /// thread syncs it, and the appending thread is free at once.
    #[tokio::test]
    async fn a_quiet_node_syncs_on_the_appending_thread_a_busy_one_on_the_flusher() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::open(dir.path()).unwrap();
        let load = st.log.load();
        let here = std::thread::current().name().map(str::to_owned);

        let first = load.enter();
        let (thread, res) = append_on(&st, 1)
            .try_recv()
            .expect("acknowledged before append returned");
        res.unwrap();
        assert_eq!(thread, here, "synced on the appending thread");

        let second = load.enter();
        let (thread, res) = append_on(&st, 2).recv().unwrap();
        res.unwrap();
        assert_eq!(thread.as_deref(), Some("quorate-flusher"));

        drop((first, second));
        assert_eq!(load.get(), 0);
        append_on(&st, 3).try_recv().unwrap().1.unwrap();
        let reopened = {
            drop(st);
            crate::open(dir.path()).unwrap()
        };
        let mut log = reopened.log.clone();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(id(3)), "every append is on disk");
    }
}
