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
//! Framing, writing and flushing happen on a blocking thread after the cut is closed.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use quorate_core::State;

use crate::codec::decode;
use crate::db::{Shared, KEY_SNAP_DATA, KEY_SNAP_META};
use crate::error::{sm_write, snapshot_read, snapshot_write};
use crate::flusher::is_no_space;
use crate::snapshot::{decode_snapshot, encode_snapshot, Header};
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

/// The replicated state machine of one node. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct StateMachineStore {
    pub(crate) shared: Arc<Shared>,
    pub(crate) applied: Arc<RwLock<Applied>>,
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
        }
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
            let reply = match entry.payload {
                EntryPayload::Blank => Response::default(),
                // The entry's index travels into the core as an input, like the
                // leader's time inside the command (the audit trail records it).
                EntryPayload::Normal(cmd) => Response(g.state.apply_at(entry.log_id.index, &cmd)),
                EntryPayload::Membership(m) => {
                    g.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::default()
                }
            };
            out.push(reply);
        }
        Ok(out)
    }

    /// Reads the persisted snapshot, if any: the snapshot file, else (a store written
    /// before snapshots left sled) the `snapshot` tree.
    pub(crate) fn load_snapshot(
        shared: &Shared,
    ) -> Result<Option<(SnapMeta, Vec<u8>)>, StoreError> {
        if let Some(found) = snapshot_file::read(&**shared.log.vfs(), &shared.dir)? {
            return Ok(Some(found));
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
        Ok(Some((meta, data.to_vec())))
    }

    /// Replaces the snapshot file (meta and data together, durably: see
    /// `snapshot_file.rs`), then drops a copy an older version kept in sled (the file
    /// wins if that removal is lost).
    fn persist_snapshot(shared: &Shared, meta: &SnapMeta, data: &[u8]) -> Result<(), StoreError> {
        snapshot_file::write(&**shared.log.vfs(), &shared.dir, meta, data)?;
        if shared.snap.contains_key(KEY_SNAP_META)? {
            let mut batch = sled::Batch::default();
            batch.remove(KEY_SNAP_META);
            batch.remove(KEY_SNAP_DATA);
            shared.snap.apply_batch(batch)?;
        }
        Ok(())
    }

    pub(crate) async fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        // One build or install at a time: an install replaces the state, which would
        // end an open cut (the cut notices and fails, but there is no need to race).
        let _serial = self.snapshot_lock.lock().await;
        // A copy-on-write cut (`quorate_core::cut`): the write lock only to open and
        // close it, the read lock one chunk at a time in between, so apply interleaves
        // with serialization instead of waiting for all of it. Framing, writing and
        // fsync happen after.
        let applied = self.applied.clone();
        let (core, header) = tokio::task::spawn_blocking(move || cut_snapshot(&applied))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        let shared = self.shared.clone();

        let (meta, data, persisted) = tokio::task::spawn_blocking(move || {
            let data = encode_snapshot(&header, &core)?;
            drop(core);
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
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership,
                snapshot_id,
            };
            // A build that started before an install of a newer snapshot must not
            // replace it; it is still a valid snapshot to hand back to openraft.
            let current = Self::load_snapshot_meta(&shared)?;
            let newer = match current {
                Some(c) => c.last_log_id <= meta.last_log_id,
                None => true,
            };
            if newer {
                match Self::persist_snapshot(&shared, &meta, &data) {
                    Ok(()) => {}
                    // A full disk: the previous snapshot file stays (the partial one is
                    // removed) and this one is handed back unpersisted. openraft 0.9
                    // stops the node on a failed build, and a later build retries;
                    // the purges it asks for meanwhile wait for a durable snapshot
                    // that covers them (`log_store.rs`).
                    Err(StoreError::Io { path, source }) if is_no_space(&source) => {
                        tracing::warn!(
                            path = %path.display(), error = %source,
                            "disk full: snapshot not persisted; the previous one stays"
                        );
                        return Ok((meta, data, false));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, StoreError>((meta, data, newer))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
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
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    pub(crate) fn load_snapshot_meta(shared: &Shared) -> Result<Option<SnapMeta>, StoreError> {
        shared.durable_snapshot_meta()
    }

    pub(crate) async fn install(&self, meta: &SnapMeta, data: Vec<u8>) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let meta_owned = meta.clone();
        let _serial = self.snapshot_lock.lock().await;
        let applied = tokio::task::spawn_blocking(move || {
            let applied = applied_from_snapshot(&meta_owned, &data)?;
            // Persist first, swap in memory second: a crash in between restarts from
            // the new snapshot, which is what the leader wanted us to have.
            Self::persist_snapshot(&shared, &meta_owned, &data)?;
            Ok::<_, StoreError>(applied)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        self.shared.flusher.flush().await?;
        // openraft purged the log up to this snapshot when it sent us the install;
        // only now may that purge be made durable (`log_store.rs`).
        if let Some(last) = meta.last_log_id {
            crate::purge::finish_purge(&self.shared, last).await?;
        }
        *self.write_guard()? = applied;
        tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }
}

/// Entries written per chunk of a snapshot cut: each chunk holds the read lock for
/// about a millisecond (bincode of a few thousand leases), so apply never waits long.
const CUT_CHUNK: usize = 4096;

/// The state's snapshot bytes and header, written in chunks under the read lock (see
/// `build`). Runs on a blocking thread.
fn cut_snapshot(applied: &RwLock<Applied>) -> Result<(Vec<u8>, Header), StoreError> {
    let poisoned = || StoreError::Malformed {
        what: "state machine",
        reason: "a previous apply panicked; the in-memory state cannot be trusted".into(),
    };
    let (mut cut, header) = {
        let mut g = applied.write().map_err(|_| poisoned())?;
        let header = Header {
            last_applied: g.last_applied,
            last_membership: g.last_membership.clone(),
        };
        (g.state.begin_cut(), header)
    };
    loop {
        let step = {
            let g = applied.read().map_err(|_| poisoned())?;
            g.state.continue_cut(&mut cut, CUT_CHUNK)
        };
        match step {
            Ok(true) => break,
            Ok(false) => std::thread::yield_now(),
            Err(e) => {
                if let Ok(mut g) = applied.write() {
                    g.state.abandon_cut();
                }
                return Err(e.into());
            }
        }
    }
    let cut = {
        let mut g = applied.write().map_err(|_| poisoned())?;
        g.state.end_cut(cut)?
    };
    Ok((cut.into_bytes(), header))
}

/// Decodes snapshot bytes into an [`Applied`], checking them against `meta`.
pub(crate) fn applied_from_snapshot(meta: &SnapMeta, data: &[u8]) -> Result<Applied, StoreError> {
    let (header, core) = decode_snapshot(data)?;
    if header.last_applied != meta.last_log_id || header.last_membership != meta.last_membership {
        return Err(StoreError::Malformed {
            what: "snapshot",
            reason: format!(
                "data is for {:?} / {:?} but meta says {:?} / {:?}",
                header.last_applied, header.last_membership, meta.last_log_id, meta.last_membership
            ),
        });
    }
    Ok(Applied {
        state: State::restore(core)?,
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

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        self.install(meta, snapshot.into_inner())
            .await
            .map_err(snapshot_write)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let loaded = Self::load_snapshot(&self.shared).map_err(snapshot_read)?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
