//! [`StateMachineStore`]: openraft's `RaftStateMachine` and snapshot builder around
//! an in-memory `quorate_core::State`.
//!
//! The core state, the last applied log id and the last membership live together in
//! one [`Applied`] value behind one lock, so a reader, a snapshot and a restart always
//! see the three from the same point in the log. Applying does no I/O: it is
//! `State::apply` plus bookkeeping. Durability comes from the log (the entries are on
//! disk before they can be committed) and from snapshots, which persist all three at
//! once; after a crash, [`crate::open`] loads the last snapshot and openraft re-applies
//! the committed entries after it (see `save_committed` in `log_store.rs`).
//!
//! Snapshots are built as a copy-on-write cut of the state (`quorate_core::cut`): the
//! write lock is held only to open and close the cut, and the read lock one chunk of
//! [`CUT_CHUNK`] entries at a time in between, so applies interleave with serializing
//! instead of waiting for all of it (a whole-state serialization under one lock took
//! 0.2-0.35 s at 1M leases). The cut's bytes are exactly those of the state when it was
//! opened, and its header (last applied, membership) is taken at the same moment.
//!
//! **Streamed:** a snapshot is never whole in memory on its way to disk or to a
//! follower. Each chunk's bytes are taken from the cut as soon as they are written
//! and appended to `snapshot.tmp` (outside the lock), which becomes the snapshot file
//! once the meta is added and it is fsync'd and renamed (`snapshot_file::Writer`).
//! openraft gets a [`SnapshotData`] reading that file in chunks, and a follower
//! receives chunks into `snapshot.recv`. Only when the disk is full (or, defensively,
//! when a newer snapshot is already on disk) is a snapshot built in memory and handed
//! back unpersisted, as before. Installing restores the state reading the received
//! file as it goes (`State::restore_from`), then copies the file into the snapshot
//! file in chunks; readers keep the old state until the new one is swapped in.
//!
//! **Queue grants:** after each applied entry the grants the core's waiting queue
//! made in it (`State::take_queue_grants`) go to the [`GrantSink`] the node set with
//! [`StateMachineStore::on_queue_grants`], outside the lock. Every node applies every
//! entry, so the node holding a waiting request open learns of its grant from its own
//! apply, whoever leads. Entries a snapshot install skips hand over no grants: a
//! waiter that misses one learns of it when it leaves the queue (`Op::LeaveQueue`
//! answers with the grant).

use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use quorate_core::{Grant, State};

use crate::codec::decode;
use crate::db::{Shared, KEY_SNAP_DATA, KEY_SNAP_META};
use crate::error::{sm_write, snapshot_read, snapshot_write};
use crate::flusher::is_no_space;
use crate::snapshot::{encode_prefix, read_header, Header};
use crate::snapshot_data::SnapshotData;
use crate::snapshot_file::{self, SnapMeta};
use crate::{NodeInfo, Response, StoreError, TypeConfig};

/// What has been applied: core state plus openraft's bookkeeping, always updated
/// together under one lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    pub(crate) state: State,
    pub(crate) last_applied: Option<LogId<u64>>,
    pub(crate) last_membership: StoredMembership<u64, NodeInfo>,
}

/// Where the grants the core's queue makes go, entry by entry (see the module doc).
/// Called on openraft's apply task: it must not block (hand the grants over and
/// return).
pub type GrantSink = Arc<dyn Fn(Vec<Grant>) + Send + Sync>;

/// The replicated state machine of one node. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct StateMachineStore {
    pub(crate) shared: Arc<Shared>,
    pub(crate) applied: Arc<RwLock<Applied>>,
    /// Set once, by the node, before Raft starts applying.
    grant_sink: Arc<OnceLock<GrantSink>>,
    /// Serializes writers of the snapshot file (a build finishing late must not
    /// overwrite a newer installed snapshot). Held across awaits, hence tokio's.
    pub(crate) snapshot_lock: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachineStore {
    pub(crate) fn new(shared: Arc<Shared>, applied: Applied) -> Self {
        StateMachineStore {
            shared,
            applied: Arc::new(RwLock::new(applied)),
            snapshot_lock: Arc::new(tokio::sync::Mutex::new(())),
            grant_sink: Arc::new(OnceLock::new()),
        }
    }

    /// Hand the grants the queue makes from now on to `sink` (once per store: a
    /// second sink is refused and returned). Set it before Raft starts, so that no
    /// applied entry's grants are dropped.
    pub fn on_queue_grants(&self, sink: GrantSink) -> Result<(), GrantSink> {
        self.grant_sink.set(sink)
    }

    /// Runs `f` on the current core state under a read lock. Keep `f` short: apply
    /// waits while it runs. The state is at least as new as [`Self::last_applied`]
    /// was before the call, which is what a linearizable read after openraft's read
    /// barrier (`ensure_linearizable`) needs.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.read_guard().state)
    }

    /// The id of the last entry applied to the core state.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.read_guard().last_applied
    }

    /// `State::digest` of the current core state (serializes the whole state: for
    /// tests and diagnostics, not for a hot path).
    pub fn digest(&self) -> String {
        self.read(|s| s.digest())
    }

    /// Bytes the store uses on disk (log segments, snapshot file and sled), for
    /// metrics. sled's part is 0 if sled cannot tell.
    pub fn size_on_disk(&self) -> u64 {
        let sled = match self.shared.db.size_on_disk() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read sled size on disk");
                0
            }
        };
        let vfs = &**self.shared.log.vfs();
        sled + self.shared.log.size_on_disk() + snapshot_file::size(vfs, &self.shared.dir)
    }

    fn read_guard(&self) -> RwLockReadGuard<'_, Applied> {
        // A poisoned lock means core panicked inside apply (which its contract rules
        // out). apply reports that as a storage error, which stops openraft; readers
        // still get the last state rather than a panic of their own.
        self.applied.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_guard(&self) -> Result<RwLockWriteGuard<'_, Applied>, StoreError> {
        self.applied.write().map_err(|_| StoreError::Malformed {
            what: "state machine",
            reason: "a previous apply panicked; the in-memory state cannot be trusted".into(),
        })
    }

    /// Applies entries: `State::apply` for normal entries, bookkeeping only for blank
    /// and membership entries. One [`Response`] per entry.
    pub(crate) fn apply_entries<I>(&self, entries: I) -> Result<Vec<Response>, StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        let entries = entries.into_iter();
        let mut out = Vec::with_capacity(entries.size_hint().0);
        for entry in entries {
            // One lock per entry, not per batch: a long batch must not starve readers.
            let mut g = self.write_guard()?;
            g.last_applied = Some(entry.log_id);
            let mut grants = Vec::new();
            let reply = match entry.payload {
                EntryPayload::Blank => Response::default(),
                // The entry's index travels into the core as an input, like the
                // leader's time inside the command (the audit trail records it).
                EntryPayload::Normal(cmd) => {
                    let r = Response(g.state.apply_at(entry.log_id.index, &cmd));
                    // Taken whether or not a sink listens, so they never pile up.
                    grants = g.state.take_queue_grants();
                    r
                }
                EntryPayload::Membership(m) => {
                    g.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::default()
                }
            };
            drop(g);
            if !grants.is_empty() {
                if let Some(sink) = self.grant_sink.get() {
                    sink(grants);
                }
            }
            out.push(reply);
        }
        Ok(out)
    }

    /// The persisted snapshot, if any: the snapshot file (checked by its crc, and
    /// read from as it is used, not loaded), else (a store written before snapshots
    /// left sled) the copy in the `snapshot` tree, in memory.
    pub(crate) fn load_snapshot(
        shared: &Shared,
    ) -> Result<Option<(SnapMeta, SnapshotData)>, StoreError> {
        if let Some((meta, file, len)) = snapshot_file::open_data(&**shared.log.vfs(), &shared.dir)?
        {
            return Ok(Some((meta, SnapshotData::file(file, len))));
        }
        let Some(meta) = shared.snap.get(KEY_SNAP_META)? else {
            return Ok(None);
        };
        let meta: SnapMeta = decode("snapshot meta", &meta)?;
        let data = shared
            .snap
            .get(KEY_SNAP_DATA)?
            .ok_or_else(|| StoreError::Malformed {
                what: "snapshot",
                reason: "meta present but data missing".into(),
            })?;
        Ok(Some((meta, SnapshotData::from_bytes(data.to_vec()))))
    }

    pub(crate) async fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        // One build or install at a time: an install replaces the state, which would
        // end an open cut (the cut notices and fails, but there is no need to race).
        let _serial = self.snapshot_lock.lock().await;
        let applied = self.applied.clone();
        let shared = self.shared.clone();
        let streamed = tokio::task::spawn_blocking(move || build_to_file(&applied, &shared))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        let (meta, data, persisted) = match streamed {
            Some((meta, data)) => (meta, data, true),
            None => {
                // A full disk (or a newer snapshot on disk): built in memory and handed
                // back unpersisted. The previous snapshot file stays. openraft 0.9
                // stops the node on a failed build, and a later build retries; the
                // purges it asks for meanwhile wait for a durable snapshot that covers
                // them (`log_store.rs`).
                let applied = self.applied.clone();
                let shared = self.shared.clone();
                let (meta, bytes) = tokio::task::spawn_blocking(move || {
                    let mut bytes = Vec::new();
                    let header = cut_snapshot(&applied, |piece| {
                        bytes.extend_from_slice(piece);
                        Ok(())
                    })?;
                    Ok::<_, StoreError>((snapshot_meta(&shared, header)?, bytes))
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))??;
                (meta, SnapshotData::from_bytes(bytes), false)
            }
        };
        if persisted {
            // Durable before openraft hears of it: it purges logs up to this snapshot.
            self.shared.flusher.flush().await?;
            if let Some(last) = meta.last_log_id {
                crate::purge::finish_purge(&self.shared, last).await?;
            }
        }
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), persisted, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }

    pub(crate) fn load_snapshot_meta(shared: &Shared) -> Result<Option<SnapMeta>, StoreError> {
        shared.durable_snapshot_meta()
    }

    pub(crate) async fn install(
        &self,
        meta: &SnapMeta,
        data: SnapshotData,
    ) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let meta_owned = meta.clone();
        let _serial = self.snapshot_lock.lock().await;
        let applied = self.applied.clone();
        tokio::task::spawn_blocking(move || {
            let dir = &shared.dir;
            let read = |e: std::io::Error| StoreError::Io {
                path: dir.join(snapshot_file::RECV_FILE),
                source: e,
            };
            // Restored first, streaming from the received file: a snapshot that
            // disagrees with its meta, or does not decode, is refused with the old
            // state and the old snapshot file in place (persisting it first would
            // leave a node that cannot start).
            let restored = restore_snapshot(&meta_owned, &data)?;
            // Persist first, swap in memory second: a crash in between restarts from
            // the new snapshot, which is what the leader wanted us to have. Copied from
            // the received file in chunks, so no second copy of the bytes is made.
            let vfs = &**shared.log.vfs();
            let mut w = snapshot_file::Writer::create(vfs, dir)?;
            let mut failed = None;
            let copied = data.for_each_chunk(WRITE_CHUNK, |c| {
                w.append(vfs, c).map_err(|e| {
                    failed = Some(e);
                    std::io::Error::other("snapshot write failed")
                })
            });
            if let Err(e) = copied {
                w.abort(vfs);
                return Err(failed.unwrap_or_else(|| read(e)));
            }
            w.finish(vfs, &meta_owned)?;
            Self::drop_sled_snapshot(&shared)?;
            drop(data);
            let _ = vfs.remove_file(&dir.join(snapshot_file::RECV_FILE));
            // Readers kept the old state while the new one was built; it is dropped
            // at the swap.
            *applied.write().map_err(|_| poisoned())? = restored;
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        self.shared.flusher.flush().await?;
        // openraft purged the log up to this snapshot when it sent us the install;
        // only now may that purge be made durable (`log_store.rs`).
        if let Some(last) = meta.last_log_id {
            crate::purge::finish_purge(&self.shared, last).await?;
        }
        tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    /// Drops a copy of the snapshot an older version kept in sled (the file wins if
    /// that removal is lost).
    fn drop_sled_snapshot(shared: &Shared) -> Result<(), StoreError> {
        if shared.snap.contains_key(KEY_SNAP_META)? {
            let mut batch = sled::Batch::default();
            batch.remove(KEY_SNAP_META);
            batch.remove(KEY_SNAP_DATA);
            shared.snap.apply_batch(batch)?;
        }
        Ok(())
    }
}

/// Bytes copied at a time from a received snapshot into the snapshot file.
const WRITE_CHUNK: usize = 1 << 20;

fn poisoned() -> StoreError {
    StoreError::Malformed {
        what: "state machine",
        reason: "a previous apply panicked; the in-memory state cannot be trusted".into(),
    }
}

/// The meta of a snapshot with `header`: a fresh snapshot id naming its last log id.
fn snapshot_meta(shared: &Shared, header: Header) -> Result<SnapMeta, StoreError> {
    let Header {
        last_applied,
        last_membership,
    } = header;
    let id = shared.db.generate_id()?;
    let snapshot_id = match last_applied {
        Some(l) => format!(
            "{}-{}-{}-{id}",
            l.leader_id.term, l.leader_id.node_id, l.index
        ),
        None => format!("none-{id}"),
    };
    Ok(SnapshotMeta {
        last_log_id: last_applied,
        last_membership,
        snapshot_id,
    })
}

/// Builds a snapshot straight into the snapshot file (see the module docs) and
/// returns its meta and a handle reading it. `None` when it was not persisted: the
/// disk is full (the previous snapshot stays), or a snapshot at least as new is
/// already on disk (a build must not replace a newer install). Runs on a blocking
/// thread, under the snapshot lock.
fn build_to_file(
    applied: &RwLock<Applied>,
    shared: &Shared,
) -> Result<Option<(SnapMeta, SnapshotData)>, StoreError> {
    let vfs = &**shared.log.vfs();
    let dir = &shared.dir;
    let no_space =
        |e: &StoreError| matches!(e, StoreError::Io { source, .. } if is_no_space(source));
    let mut w = match snapshot_file::Writer::create(vfs, dir) {
        Ok(w) => w,
        Err(e) if no_space(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let header = match cut_snapshot(applied, |piece| w.append(vfs, piece)) {
        Ok(h) => h,
        Err(e) => {
            w.abort(vfs);
            if no_space(&e) {
                tracing::warn!(error = %e, "disk full: snapshot not persisted; the previous one stays");
                return Ok(None);
            }
            return Err(e);
        }
    };
    let meta = snapshot_meta(shared, header)?;
    let newer = match StateMachineStore::load_snapshot_meta(shared)? {
        Some(c) => c.last_log_id <= meta.last_log_id,
        None => true,
    };
    if !newer {
        w.abort(vfs);
        return Ok(None);
    }
    let len = w.len();
    match w.finish(vfs, &meta) {
        Ok(()) => {}
        Err(e) if no_space(&e) => {
            tracing::warn!(error = %e, "disk full: snapshot not persisted; the previous one stays");
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    StateMachineStore::drop_sled_snapshot(shared)?;
    let file = snapshot_file::open_current(vfs, dir)?;
    Ok(Some((meta, SnapshotData::file(file, len))))
}

/// Entries written per chunk of a snapshot cut: each chunk holds the read lock for
/// about a millisecond (bincode of a few thousand leases), so apply never waits long.
const CUT_CHUNK: usize = 4096;

/// Writes the state's snapshot bytes (prefix, then the cut's pieces as they are
/// written) to `sink`, outside the lock, in chunks under the read lock (see `build`),
/// and returns their header. Runs on a blocking thread. On error the cut is
/// abandoned.
fn cut_snapshot(
    applied: &RwLock<Applied>,
    mut sink: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<Header, StoreError> {
    let (mut cut, header) = {
        let mut g = applied.write().map_err(|_| poisoned())?;
        let header = Header {
            last_applied: g.last_applied,
            last_membership: g.last_membership.clone(),
        };
        (g.state.begin_cut(), header)
    };
    let abandon = |e: StoreError| {
        if let Ok(mut g) = applied.write() {
            g.state.abandon_cut();
        }
        e
    };
    let mut run = || -> Result<(), StoreError> {
        sink(&encode_prefix(&header)?)?;
        loop {
            let step = {
                let g = applied.read().map_err(|_| poisoned())?;
                g.state.continue_cut(&mut cut, CUT_CHUNK)
            };
            for piece in cut.take_written() {
                sink(&piece)?;
            }
            match step {
                Ok(true) => return Ok(()),
                Ok(false) => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        }
    };
    run().map_err(abandon)?;
    let cut = {
        let mut g = applied.write().map_err(|_| poisoned())?;
        g.state.end_cut(cut)?
    };
    sink(&cut.into_bytes())?;
    Ok(header)
}

/// Refuses a snapshot whose header disagrees with the meta it came with.
fn check_header(meta: &SnapMeta, header: &Header) -> Result<(), StoreError> {
    if header.last_applied != meta.last_log_id || header.last_membership != meta.last_membership {
        return Err(StoreError::Malformed {
            what: "snapshot",
            reason: format!(
                "data is for {:?} / {:?} but meta says {:?} / {:?}",
                header.last_applied, header.last_membership, meta.last_log_id, meta.last_membership
            ),
        });
    }
    Ok(())
}

/// Restores an [`Applied`] from a snapshot, reading it as it goes (never whole in
/// memory), after checking its header against `meta`.
pub(crate) fn restore_snapshot(
    meta: &SnapMeta,
    data: &SnapshotData,
) -> Result<Applied, StoreError> {
    let mut reader = std::io::BufReader::with_capacity(WRITE_CHUNK, data.reader());
    let (header, prefix) = read_header(&mut reader)?;
    check_header(meta, &header)?;
    let core_len = data.len().saturating_sub(prefix);
    Ok(Applied {
        state: State::restore_from(reader, core_len)?,
        last_applied: header.last_applied,
        last_membership: header.last_membership,
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        self.build().await.map_err(snapshot_write)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, NodeInfo>), StorageError<u64>> {
        let g = self.read_guard();
        Ok((g.last_applied, g.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries).map_err(sm_write)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<u64>> {
        // The chunks go to `snapshot.recv` (emptied if an earlier receive was cut
        // short); `install` copies it into the snapshot file.
        let vfs = &**self.shared.log.vfs();
        let path = self.shared.dir.join(snapshot_file::RECV_FILE);
        let file = vfs
            .open(&path, crate::vfs::OpenHow::CreateTruncate)
            .map_err(|source| snapshot_write(StoreError::Io { path, source }))?;
        Ok(Box::new(SnapshotData::file(Arc::from(file), 0)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<u64>> {
        self.install(meta, *snapshot).await.map_err(snapshot_write)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let loaded = Self::load_snapshot(&self.shared).map_err(snapshot_read)?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}
