//! The crate's one error type, [`StoreError`], and its conversion into openraft's
//! [`StorageError`].
//!
//! Errors that can happen while *opening* a data directory always carry the path,
//! because the operator has to act on them (wrong directory, damaged disk, two
//! processes on one directory). Errors at run time are converted into openraft's
//! `StorageError`, which makes openraft stop the node: a store that failed to write
//! must not keep voting or acknowledging.

use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

/// Everything that can go wrong in quorate-store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled could not open the directory: permissions, a lock held by another process,
    /// or damaged files.
    #[error("cannot open data dir {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// The directory opened, but its content is not a consistent quorate store.
    #[error("data dir {} is corrupt or not a quorate store: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    /// A filesystem operation on the data directory failed.
    #[error("data dir {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A sled read or write failed at run time.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A value could not be encoded or decoded with bincode.
    #[error("cannot encode or decode {what}: {source}")]
    Codec {
        what: &'static str,
        #[source]
        source: bincode::Error,
    },
    /// Bytes that should hold a snapshot or log entry are not well formed.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// quorate-core refused snapshot bytes.
    #[error("core rejected snapshot: {0}")]
    Core(#[from] quorate_core::CoreError),
    /// An earlier log write or fsync failed; this store instance accepts no more
    /// writes (see `flusher.rs`). Reopening the directory is the only way back.
    #[error("the store accepts no more writes after an earlier failure: {0:?}")]
    Stopped(crate::Health),
    /// The flusher thread is gone (the store is shutting down or the thread died).
    #[error("the store's flusher thread has stopped")]
    FlusherStopped,
    /// A blocking helper task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl StoreError {
    pub(crate) fn corrupt(path: &std::path::Path, what: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    /// Wraps this error for openraft, naming what was being done to what.
    pub(crate) fn into_storage(
        self,
        subject: ErrorSubject<u64>,
        verb: ErrorVerb,
    ) -> StorageError<u64> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// Declares one shorthand for [`StoreError::into_storage`] per (subject, verb) pair
/// used at the trait boundary, so each call site reads `.map_err(logs_write)`.
macro_rules! storage_error_shorthands {
    ($($name:ident => $subject:expr, $verb:ident;)*) => {
        $(
            pub(crate) fn $name(e: StoreError) -> StorageError<u64> {
                e.into_storage($subject, ErrorVerb::$verb)
            }
        )*
    };
}

storage_error_shorthands! {
    logs_read => ErrorSubject::Logs, Read;
    logs_write => ErrorSubject::Logs, Write;
    logs_delete => ErrorSubject::Logs, Delete;
    vote_read => ErrorSubject::Vote, Read;
    vote_write => ErrorSubject::Vote, Write;
    store_read => ErrorSubject::Store, Read;
    store_write => ErrorSubject::Store, Write;
    sm_write => ErrorSubject::StateMachine, Write;
    snapshot_read => ErrorSubject::Snapshot(None), Read;
    snapshot_write => ErrorSubject::Snapshot(None), Write;
}
