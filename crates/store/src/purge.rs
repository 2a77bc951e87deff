//! openraft's purges, made durable only as far as the durable snapshot covers them.
//!
//! openraft may purge the log past the snapshot this node has on disk: on a
//! follower's snapshot install it hands the install to the state-machine worker and
//! purges at once, and the install then decodes for seconds before it writes the
//! snapshot file. A purge made durable in that window would leave `last_purged` past
//! the durable snapshot, entries nobody has any more, and a node that cannot start.
//! So a purge takes effect for openraft at once (`Shared::purge_requested`: reads and
//! the log state hide the entries) but is made durable only up to the durable
//! snapshot; [`finish_purge`], called after every snapshot write, makes the rest
//! durable once a snapshot covers it. `open` refuses a store whose `last_purged` is
//! past its snapshot.
//!
//! Below `log_store` and `state_machine`, which both call in.

use openraft::LogId;

use crate::db::{Shared, KEY_LAST_PURGED};
use crate::StoreError;

/// openraft's purge of everything up to `log_id`.
pub(crate) async fn purge_upto(s: &Shared, log_id: LogId<u64>) -> Result<(), StoreError> {
    let _serial = s.purge_lock.lock().await;
    {
        let mut requested = s.purge_requested.lock().unwrap_or_else(|e| e.into_inner());
        if requested.is_some_and(|r| r.index >= log_id.index) {
            // Never move `last_purged` backwards.
            return Ok(());
        }
        *requested = Some(log_id);
    }
    let covered = s.durable_snapshot_meta()?.and_then(|m| m.last_log_id);
    let durable = match covered {
        Some(c) if c.index < log_id.index => {
            tracing::debug!(%log_id, snapshot = %c, "purge beyond the durable snapshot; the rest waits for a snapshot that covers it");
            c
        }
        Some(_) => log_id,
        None => {
            tracing::debug!(%log_id, "purge with no durable snapshot; waits for one");
            return Ok(());
        }
    };
    purge_durably(s, durable).await
}

/// After a snapshot ending at `snapshot` is durable: make durable what openraft
/// purged and the snapshot now covers.
pub(crate) async fn finish_purge(s: &Shared, snapshot: LogId<u64>) -> Result<(), StoreError> {
    let _serial = s.purge_lock.lock().await;
    let requested = s.purge_requested();
    match requested {
        Some(r) if r.index <= snapshot.index => purge_durably(s, r).await,
        Some(_) => purge_durably(s, snapshot).await,
        None => Ok(()),
    }
}

/// Make `last_purged = log_id` durable, then drop the files it covers. The caller
/// holds `purge_lock` and guarantees a durable snapshot covers `log_id`.
async fn purge_durably(s: &Shared, log_id: LogId<u64>) -> Result<(), StoreError> {
    let current: Option<LogId<u64>> = s.get_meta(KEY_LAST_PURGED, "last purged log id")?;
    if current.is_some_and(|c| c.index >= log_id.index) {
        return Ok(());
    }
    // `last_purged` is durable before any file goes: after a crash, `open` skips
    // everything at or below it.
    s.put_meta(KEY_LAST_PURGED, "last purged log id", &log_id)?;
    s.flusher.flush().await?;
    s.log.purge(&s.flusher, log_id.index);
    Ok(())
}
