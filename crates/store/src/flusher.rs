//! The one thread that makes writes durable (group commit).
//!
//! sled 0.34.7's `flush_async` deadlocks when called concurrently (sled issue #1308,
//! fixed on sled's main branch but never released), so the store never uses it.
//! Instead every durability request — "fire this callback once everything written so
//! far is on disk" — goes over a channel to one dedicated OS thread, which:
//!
//! 1. blocks until at least one request is queued,
//! 2. takes every request queued by then,
//! 3. calls the blocking `Db::flush()` (write the IO buffers, fsync) **once**,
//! 4. fires all the callbacks, in submission order.
//!
//! A request is always submitted *after* its data was inserted into sled, and one
//! `flush()` persists every write made before it started, so each callback's data is
//! durable when it fires. While one fsync runs, new requests pile up and share the
//! next one: a burst of appends (several openraft appends in flight, or the leader's
//! batches) costs one fsync, not one each.
//!
//! Because appends, votes, truncations and snapshot writes all go through the same
//! FIFO queue, their acknowledgements come back in the order the writes were made,
//! which is what openraft requires ("all write-IO must be serialized").
//!
//! It is a std thread rather than a tokio task so that it does not belong to any one
//! runtime: the openraft test suite opens and drops stores across many short-lived
//! runtimes, and a blocking fsync must not occupy an async worker anyway.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use crate::StoreError;

/// A durability callback: called with `Ok(())` once the data written before it was
/// submitted is on disk, or with the flush error.
pub(crate) type Done = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// Counters of the flusher, for metrics and the benchmark.
#[derive(Debug, Default)]
struct Counters {
    flushes: AtomicU64,
    callbacks: AtomicU64,
}

/// What [`crate::LogStore::flush_stats`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// `Db::flush()` calls made by the flusher thread (each one an fsync).
    pub flushes: u64,
    /// Durability callbacks fired; `callbacks / flushes` is the group-commit factor.
    pub callbacks: u64,
}

pub(crate) struct Flusher {
    /// `None` only while dropping: taking it closes the channel, which ends the thread.
    tx: Option<mpsc::Sender<Done>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    path: PathBuf,
}

impl Flusher {
    pub(crate) fn start(db: sled::Db, path: PathBuf) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Done>();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("quorate-flusher".into())
            .spawn(move || run(db, rx, thread_counters))
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            counters,
            path,
        })
    }

    /// Queues `done` to be fired after the next flush. Never blocks.
    pub(crate) fn submit(&self, done: Done) {
        let Some(tx) = &self.tx else {
            done(Err(io::Error::other("flusher stopped")));
            return;
        };
        if let Err(mpsc::SendError(done)) = tx.send(done) {
            done(Err(io::Error::other("flusher thread has stopped")));
        }
    }

    /// Waits until everything written so far is durable.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |res| {
            // The waiter may have been cancelled; nothing to do then.
            let _ = tx.send(res);
        }));
        let res = rx.await.map_err(|_| StoreError::FlusherStopped)?;
        res.map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    pub(crate) fn stats(&self) -> FlushStats {
        FlushStats {
            flushes: self.counters.flushes.load(Ordering::Relaxed),
            callbacks: self.counters.callbacks.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish the requests already queued and
        // exit. Joining it matters: the thread holds a `sled::Db`, and sled keeps an
        // exclusive file lock until the last handle is gone, so a store reopened in
        // the same process right after a drop would otherwise fail to lock.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn run(db: sled::Db, rx: mpsc::Receiver<Done>, counters: Arc<Counters>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let res = db.flush();
        counters.flushes.fetch_add(1, Ordering::Relaxed);
        counters
            .callbacks
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match res {
            Ok(_) => {
                for done in batch {
                    done(Ok(()));
                }
            }
            Err(e) => {
                // No retry here: the writes stay in sled's buffers and the next flush
                // retries them, but these callers are told the truth now. openraft
                // treats a failed log flush as fatal and stops the node.
                tracing::error!(error = %e, waiters = batch.len(), "sled flush failed");
                let msg = e.to_string();
                for done in batch {
                    done(Err(io::Error::other(msg.clone())));
                }
            }
        }
    }
}
