//! The one thread that makes writes durable (group commit).
//!
//! Every change to the log files and every durability request goes over one channel
//! to one dedicated OS thread, as a [`Job`]. The thread:
//!
//! 1. blocks until at least one job is queued, then takes every job queued by then;
//! 2. carries them out in order: creates segment files, writes records at their
//!    reserved offsets (`pwrite`), cuts and removes files, syncs the directory right
//!    after a file was created or removed (so a crash cannot resurrect or lose one out
//!    of order), and syncs a segment before it writes to another (so a later segment
//!    with data implies every earlier one is complete);
//! 3. `fdatasync`s the segment it wrote last, and calls sled's blocking `Db::flush()`
//!    only when a job asked for it (votes, snapshots, `last_purged`: rare);
//! 4. fires the batch's callbacks, in submission order.
//!
//! While one batch runs, new jobs pile up and share the next fsync: a burst of appends
//! costs one fsync, not one each. Because appends, votes, truncations and snapshot
//! writes all go through the same FIFO queue, their acknowledgements come back in the
//! order the writes were made, which is what openraft requires ("all write-IO must be
//! serialized").
//!
//! sled 0.34.7's `flush_async` deadlocks when called concurrently (sled #1308), so
//! sled is only ever flushed here, by one thread.
//!
//! It is a std thread rather than a tokio task so that it does not belong to any one
//! runtime: the openraft test suite opens and drops stores across many short-lived
//! runtimes, and a blocking fsync must not occupy an async worker anyway.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;

use crate::StoreError;

/// A segment file. A new segment's file is created by the flusher, in order with
/// the removals queued before it (a truncation can remove a segment whose name the
/// next append reuses), so the handle is set once the flusher got there.
pub(crate) struct SegmentFile {
    pub(crate) path: PathBuf,
    pub(crate) file: OnceLock<File>,
}

impl SegmentFile {
    pub(crate) fn get(&self) -> std::io::Result<&File> {
        self.file.get().ok_or_else(|| {
            std::io::Error::other(format!("{} was never created", self.path.display()))
        })
    }
}

/// fsyncs a directory, so that files created or removed in it stay so.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A durability callback: called with `Ok(())` once the data written before it was
/// submitted is on disk, or with the error.
pub(crate) type Done = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// One thing for the flusher thread to do, in queue order.
pub(crate) enum Job {
    /// Create (or empty) a new segment file and publish its handle.
    Create(Arc<SegmentFile>),
    /// Write `bytes` at `offset`; `seq` is the last append number they hold.
    Write {
        file: Arc<SegmentFile>,
        offset: u64,
        bytes: Vec<u8>,
        seq: u64,
    },
    /// Cut a segment to `len` bytes.
    SetLen { file: Arc<SegmentFile>, len: u64 },
    /// Remove a segment file.
    Remove(PathBuf),
    /// fsync a directory now.
    SyncDir(PathBuf),
    /// Fire once everything queued before is durable in the log files.
    Done(Done),
    /// Fire once everything queued before, and everything written to sled so far, is
    /// durable.
    DoneSled(Done),
}

/// Counters of the flusher, for metrics and the benchmark.
#[derive(Debug, Default)]
struct Counters {
    flushes: AtomicU64,
    callbacks: AtomicU64,
}

/// What [`crate::LogStore::flush_stats`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Batches that ended in an fsync (of a log segment, sled, or both).
    pub flushes: u64,
    /// Durability callbacks fired; `callbacks / flushes` is the group-commit factor.
    pub callbacks: u64,
}

pub(crate) struct Flusher {
    /// `None` only while dropping: taking it closes the channel, which ends the thread.
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    path: PathBuf,
}

impl Flusher {
    /// Starts the thread. `written_seq` is where it publishes the last append number
    /// it has written (see `raft_log.rs`).
    pub(crate) fn start(
        db: sled::Db,
        path: PathBuf,
        written_seq: Arc<AtomicU64>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("quorate-flusher".into())
            .spawn(move || run(db, rx, thread_counters, written_seq))
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

    /// Queues `jobs` in order. Never blocks. Callers that reserve file offsets call
    /// this under the lock they reserved them with, so queue order is offset order.
    pub(crate) fn submit_all(&self, jobs: Vec<Job>) {
        for job in jobs {
            let failed = match &self.tx {
                Some(tx) => tx.send(job).err().map(|mpsc::SendError(job)| job),
                None => Some(job),
            };
            if let Some(Job::Done(done) | Job::DoneSled(done)) = failed {
                done(Err(io::Error::other("the flusher thread has stopped")));
            }
        }
    }

    /// Waits until everything written so far (log files and sled) is durable.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit_all(vec![Job::DoneSled(Box::new(move |res| {
            // The waiter may have been cancelled; nothing to do then.
            let _ = tx.send(res);
        }))]);
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
        // Closing the channel lets the thread finish the jobs already queued and exit.
        // Joining it matters: the thread holds a `sled::Db`, and sled keeps an
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

/// One batch in progress.
#[derive(Default)]
struct Batch {
    /// The segment written or cut last and not yet synced.
    dirty: Option<Arc<SegmentFile>>,
    sled: bool,
    dones: Vec<Done>,
    /// The first error; every later job of the batch is skipped and every callback
    /// of the batch gets it.
    error: Option<io::Error>,
}

impl Batch {
    /// Syncs the dirty segment unless it is `next`.
    fn sync_other(&mut self, next: Option<&Arc<SegmentFile>>) -> io::Result<()> {
        if let Some(d) = &self.dirty {
            if next.is_some_and(|n| Arc::ptr_eq(n, d)) {
                return Ok(());
            }
            d.get()?.sync_data()?;
            self.dirty = None;
        }
        Ok(())
    }

    fn run(&mut self, job: Job, written_seq: &AtomicU64) -> io::Result<()> {
        match job {
            Job::Done(done) => self.dones.push(done),
            Job::DoneSled(done) => {
                self.sled = true;
                self.dones.push(done);
            }
            Job::Create(file) => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&file.path)?;
                if file.file.set(f).is_err() {
                    return Err(io::Error::other(format!(
                        "{} created twice",
                        file.path.display()
                    )));
                }
            }
            Job::Write {
                file,
                offset,
                bytes,
                seq,
            } => {
                self.sync_other(Some(&file))?;
                file.get()?.write_all_at(&bytes, offset)?;
                self.dirty = Some(file);
                written_seq.fetch_max(seq, Ordering::Release);
            }
            Job::SetLen { file, len } => {
                self.sync_other(Some(&file))?;
                file.get()?.set_len(len)?;
                self.dirty = Some(file);
            }
            Job::Remove(path) => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Job::SyncDir(dir) => {
                self.sync_other(None)?;
                sync_dir(&dir)?;
            }
        }
        Ok(())
    }
}

fn run(
    db: sled::Db,
    rx: mpsc::Receiver<Job>,
    counters: Arc<Counters>,
    written_seq: Arc<AtomicU64>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = Batch::default();
        for job in std::iter::once(first).chain(rx.try_iter()) {
            if batch.error.is_some() {
                if let Job::Done(done) | Job::DoneSled(done) = job {
                    batch.dones.push(done);
                }
                continue;
            }
            if let Err(e) = batch.run(job, &written_seq) {
                batch.error = Some(e);
            }
        }
        if batch.error.is_none() {
            if let Err(e) = batch.sync_other(None) {
                batch.error = Some(e);
            }
        }
        if batch.error.is_none() && batch.sled {
            if let Err(e) = db.flush() {
                batch.error = Some(io::Error::other(e.to_string()));
            }
        }
        counters.flushes.fetch_add(1, Ordering::Relaxed);
        counters
            .callbacks
            .fetch_add(batch.dones.len() as u64, Ordering::Relaxed);
        match batch.error {
            None => {
                for done in batch.dones {
                    done(Ok(()));
                }
            }
            Some(e) => {
                // No retry: openraft treats a failed log write as fatal and stops the
                // node, and these callers are told the truth now.
                tracing::error!(error = %e, waiters = batch.dones.len(), "log write or flush failed");
                let msg = e.to_string();
                for done in batch.dones {
                    done(Err(io::Error::other(msg.clone())));
                }
            }
        }
    }
}
