//! The server library's one error type.
//!
//! Request-path failures are [`crate::backend::NodeError`]s (they become HTTP statuses).
//! [`ServerError`] is for everything that stops a node from starting or running: a bad
//! `cluster.toml`, a data directory that cannot be opened, a port already in use, a Raft
//! core that died. Every variant names the file, address or node it is about, so the
//! message printed by `quorate serve` is enough to fix the problem.

use std::path::PathBuf;

/// Why a node could not start, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `cluster.toml` could not be read, parsed or validated.
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    /// `--node <id>` names no `[[nodes]]` entry.
    #[error("config {path}: no [[nodes]] entry with id = {id}")]
    UnknownNode { path: PathBuf, id: u64 },
    /// The node's sled directory could not be opened.
    #[error("cannot open store at {path}: {message}")]
    Storage { path: PathBuf, message: String },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The Raft core could not start or stopped with a fatal error.
    #[error("raft: {0}")]
    Raft(String),
    /// The store's disk is full: the node stopped taking part and [`crate::run::serve`]
    /// starts it again once space is freed (`run.rs`).
    #[error("out of disk space: {0}")]
    NoSpace(String),
    /// An HTTP server failed while serving.
    #[error("{what} server on {addr} failed: {source}")]
    Serve {
        addr: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
