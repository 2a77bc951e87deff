//! One-time move of a format-1 store's Raft log from sled's `logs` tree into segment
//! files (`raft_log.rs`).
//!
//! The records are written to `raftlog.migrating/`, fsync'd, and the directory is
//! renamed to `raftlog/` in one step; only then is the sled tree dropped and the
//! format marker raised to the current format. A crash at any point leaves either
//! the old log (and no `raftlog/`, so the move starts over) or a complete `raftlog/`
//! (and the sled copy, which the next open drops). Entries at or below `last_purged`
//! are dead and not moved. A format-2 store only gets the new marker: its v2
//! segments stay readable as they are.

use std::path::Path;

use openraft::Entry;

use crate::codec::decode;
use crate::db::{key_index, FORMAT, KEY_FORMAT};
use crate::flusher::sync_dir;
use crate::raft_log::{segment_name, write_records, LOG_DIR};
use crate::{StoreError, TypeConfig};

const MIGRATING_DIR: &str = "raftlog.migrating";
const OLD_TREE: &str = "logs";

/// Moves the sled log of `db` (if any) into `dir/raftlog` (as v2 segments), then
/// marks the store with the current format. A format-2 store only gets the new
/// marker: its segments are read as they are. Does nothing for a current store.
pub(crate) fn sled_log_to_segments(
    dir: &Path,
    db: &sled::Db,
    meta: &sled::Tree,
    last_purged: Option<u64>,
) -> Result<(), StoreError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io { path: p, source }
    };
    let has_tree = db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == OLD_TREE.as_bytes());
    let current = meta.get(KEY_FORMAT)?;
    if !has_tree && current.as_deref() == Some(FORMAT) {
        return Ok(());
    }
    let log_dir = dir.join(LOG_DIR);
    if !log_dir.exists() {
        let tmp = dir.join(MIGRATING_DIR);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        let logs = db.open_tree(OLD_TREE)?;
        let mut entries = Vec::new();
        for kv in logs.iter().filter(|_| has_tree) {
            let (key, value) = kv?;
            let index = key_index(&key)?;
            if last_purged.is_some_and(|p| index <= p) {
                continue;
            }
            let entry: Entry<TypeConfig> = decode("log entry", &value)?;
            if entry.log_id.index != index {
                return Err(StoreError::Malformed {
                    what: "log entry",
                    reason: format!("stored at index {index} but says {}", entry.log_id),
                });
            }
            entries.push((index, value));
        }
        if let Some((first, _)) = entries.first() {
            let path = tmp.join(segment_name(*first));
            write_records(&path, entries.iter().map(|(i, v)| (*i, v.as_ref())))?;
        }
        sync_dir(&tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &log_dir).map_err(io(&log_dir))?;
        sync_dir(dir).map_err(io(dir))?;
        tracing::info!(entries = entries.len(), path = %log_dir.display(), "moved the Raft log out of sled");
    }
    if has_tree {
        db.drop_tree(OLD_TREE)?;
    }
    meta.insert(KEY_FORMAT, FORMAT)?;
    db.flush()?;
    Ok(())
}
