//! The one thread that makes writes durable (group commit).
//!
//! Every change to the log files and every durability request goes over one channel
//! to one dedicated OS thread, as a [`Job`]. The thread:
//!
//! 1. blocks until at least one job is queued, then takes every job queued by then;
//! 2. carries them out in order: creates segment files (syncing the segment written
//!    so far first, and the new file's header before any record goes in), writes
//!    records at their reserved offsets (`pwrite`, after stamping each with the
//!    segment's durable length: see `record.rs`; zeros first where the file is too
//!    short, 1 MiB ahead: `SegmentFile::preallocate`), cuts files (and syncs the cut at
//!    once, so a cut-off tail cannot reappear under later records), removes files,
//!    syncs the directory right after a file was created or removed (so a crash cannot
//!    resurrect or lose one out of order), and syncs a segment before it writes to
//!    another (so a later segment with data implies every earlier one is complete);
//! 3. `fdatasync`s the segment it wrote last, and calls sled's blocking `Db::flush()`
//!    only when a job asked for it (votes, snapshots, `last_purged`: rare);
//! 4. fires the batch's callbacks, in submission order;
//! 5. at a clean stop (the channel closed, nothing failed), cuts the zeros written ahead
//!    of the last segment's records, so a cleanly stopped log ends at its last record.
//!
//! While one batch runs, new jobs pile up and share the next fsync: a burst of appends
//! costs one fsync, not one each. Because appends, votes, truncations and snapshot
//! writes all go through the same FIFO queue, their acknowledgements come back in the
//! order the writes were made, which is what openraft requires ("all write-IO must be
//! serialized").
//!
//! **The first failure poisons the flusher for good.** After a failed write or fsync
//! the page cache may hold bytes the disk does not (the "fsyncgate" lesson: Linux
//! marks the pages clean and reports the error once), so retrying, or carrying on
//! with later batches, could acknowledge data that is not there. From the first
//! error on, the thread does no more I/O: every callback of that batch and of every
//! later job gets the error, and [`Flusher::health`] says so. A full disk (ENOSPC) is
//! reported as [`Health::NoSpace`], anything else as [`Health::Failed`]; both stop
//! this store instance, and only reopening the directory (which drops whatever was
//! written but never acknowledged) brings the log back. See docs/storage.md.
//!
//! sled 0.34.7's `flush_async` deadlocks when called concurrently (sled #1308), so
//! sled is only ever flushed here, by one thread.
//!
//! It is a std thread rather than a tokio task so that it does not belong to any one
//! runtime: the openraft test suite opens and drops stores across many short-lived
//! runtimes, and a blocking fsync must not occupy an async worker anyway.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use crate::record::{self, Version};
use crate::vfs::{OpenHow, VFile, Vfs};
use crate::StoreError;

/// A segment file. A new segment's file is created by the flusher, in order with
/// the removals queued before it (a truncation can remove a segment whose name the
/// next append reuses), so the handle is set once the flusher got there.
pub(crate) struct SegmentFile {
    pub(crate) path: PathBuf,
    pub(crate) file: OnceLock<Box<dyn VFile>>,
    /// Record layout (a new segment is always v3).
    pub(crate) version: Version,
    /// Every byte before this offset is durable (fdatasync'd). Stamped into each
    /// record the flusher writes. Only the flusher (and `open`) change it.
    pub(crate) synced: AtomicU64,
    /// End of the bytes written so far, durable or not.
    pub(crate) written: AtomicU64,
    /// End of the file: the records, then zeros written ahead of the next ones
    /// ([`SegmentFile::preallocate`]). Only the flusher (and `open`) change it.
    pub(crate) allocated: AtomicU64,
}

impl SegmentFile {
    /// A segment whose first `len` bytes are durable; `file` is set if it exists.
    pub(crate) fn new(
        path: PathBuf,
        file: Option<Box<dyn VFile>>,
        version: Version,
        len: u64,
    ) -> Self {
        let once = OnceLock::new();
        if let Some(f) = file {
            let _ = once.set(f);
        }
        SegmentFile {
            path,
            file: once,
            version,
            synced: AtomicU64::new(len),
            written: AtomicU64::new(len),
            allocated: AtomicU64::new(len),
        }
    }

    /// Makes the file reach at least `end` by writing zeros from its current end up
    /// to `end` rounded up to a multiple of `chunk` (nothing if it is long enough).
    ///
    /// Why: `fdatasync` after an append that grows the file must also write the
    /// inode (its size changed), a second synchronous disk write on every flush
    /// (ext4 without a journal syncs the inode's buffer; with one, it commits the
    /// journal). Records written over zeros that are already on disk leave the size
    /// alone, so their `fdatasync` writes only the data. The zeros are real writes,
    /// not `fallocate`: an allocated-but-unwritten extent changes state on its first
    /// write, which is again metadata to sync. They become durable with the first
    /// record's sync; recovery reads an all-zero tail as free space (`raft_log.rs`).
    fn preallocate(&self, end: u64, chunk: u64) -> io::Result<()> {
        let allocated = self.allocated.load(Ordering::Relaxed);
        if end <= allocated || chunk == 0 {
            return Ok(());
        }
        let target = end.div_ceil(chunk) * chunk;
        let zeros = vec![0u8; usize::try_from(target - allocated).map_err(io::Error::other)?];
        self.get()?.write_all_at(&zeros, allocated)?;
        self.allocated.store(target, Ordering::Relaxed);
        Ok(())
    }

    /// `fdatasync`s the file; everything written so far is durable after it.
    fn sync(&self) -> io::Result<()> {
        let written = self.written.load(Ordering::Relaxed);
        self.get()?.sync_data()?;
        self.synced.store(written, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn get(&self) -> std::io::Result<&dyn VFile> {
        self.file.get().map(|f| f.as_ref()).ok_or_else(|| {
            std::io::Error::other(format!("{} was never created", self.path.display()))
        })
    }
}

/// fsyncs a directory, so that files created or removed in it stay so (on the real
/// filesystem: for the one-time setup outside the [`Vfs`]).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A durability callback: called with `Ok(())` once the data written before it was
/// submitted is on disk, or with the error.
pub(crate) type Done = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// One thing for the flusher thread to do, in queue order.
pub(crate) enum Job {
    /// Create (or empty) a new segment file starting at index `first`, write its
    /// header durably, and publish its handle.
    Create { file: Arc<SegmentFile>, first: u64 },
    /// Write `bytes` at `offset`; `seq` is the last append number they hold. If the
    /// file ends before them, zeros are written ahead up to a multiple of `prealloc`
    /// bytes first ([`SegmentFile::preallocate`]).
    Write {
        file: Arc<SegmentFile>,
        offset: u64,
        bytes: Vec<u8>,
        seq: u64,
        prealloc: u64,
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

/// Whether the store can still write. Once not [`Health::Ok`], it stays so for this
/// store instance (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every write so far succeeded.
    Ok,
    /// A write failed with ENOSPC: nothing after it was acknowledged. Reopening the
    /// store once space is freed drops the unacknowledged bytes and goes on.
    NoSpace(String),
    /// A write or fsync failed otherwise (EIO...): the disk may have lost or may lie
    /// about data. The node must stop taking part; an operator checks the disk.
    Failed(String),
}

/// Whether `e` says the disk is full.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
}

/// The same error for another waiter (io::Error is not Clone): same kind, same text.
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
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
    health: Arc<Mutex<Health>>,
    path: PathBuf,
}

impl Flusher {
    /// Starts the thread. `written_seq` is where it publishes the last append number
    /// it has written (see `raft_log.rs`).
    /// `clean_marker` is the file it creates when it stops with every write synced
    /// and none failed.
    pub(crate) fn start(
        db: sled::Db,
        path: PathBuf,
        written_seq: Arc<AtomicU64>,
        clean_marker: PathBuf,
        vfs: Arc<dyn Vfs>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let health = Arc::new(Mutex::new(Health::Ok));
        let thread_health = health.clone();
        let thread = std::thread::Builder::new()
            .name("quorate-flusher".into())
            .spawn(move || {
                let ok = run(&*vfs, db, rx, thread_counters, thread_health, written_seq);
                if ok {
                    mark_clean(&*vfs, &clean_marker);
                }
            })
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            counters,
            health,
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

    pub(crate) fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
    /// The segment written last and not yet synced.
    dirty: Option<Arc<SegmentFile>>,
    sled: bool,
    dones: Vec<Done>,
}

impl Batch {
    /// Syncs the dirty segment unless it is `next`.
    fn sync_other(&mut self, next: Option<&Arc<SegmentFile>>) -> io::Result<()> {
        if let Some(d) = &self.dirty {
            if next.is_some_and(|n| Arc::ptr_eq(n, d)) {
                return Ok(());
            }
            d.sync()?;
            self.dirty = None;
        }
        Ok(())
    }

    fn run(&mut self, vfs: &dyn Vfs, job: Job, written_seq: &AtomicU64) -> io::Result<()> {
        match job {
            Job::Done(done) => self.dones.push(done),
            Job::DoneSled(done) => {
                self.sled = true;
                self.dones.push(done);
            }
            Job::Create { file, first } => {
                // The segment written so far is complete before the next one exists:
                // recovery may then treat a bad record in any but the last segment
                // as damage, never as a torn tail.
                self.sync_other(None)?;
                let f = vfs.open(&file.path, OpenHow::CreateTruncate)?;
                // The header is durable before any record goes in, so a segment with
                // records always has one.
                let header = record::segment_header(first);
                f.write_all_at(&header, 0)?;
                f.sync_data()?;
                file.written.store(header.len() as u64, Ordering::Relaxed);
                file.synced.store(header.len() as u64, Ordering::Relaxed);
                file.allocated.store(header.len() as u64, Ordering::Relaxed);
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
                mut bytes,
                seq,
                prealloc,
            } => {
                self.sync_other(Some(&file))?;
                if file.version == Version::V3 {
                    record::stamp(&mut bytes, file.synced.load(Ordering::Relaxed));
                    file.preallocate(offset + bytes.len() as u64, prealloc)?;
                }
                file.get()?.write_all_at(&bytes, offset)?;
                file.written
                    .fetch_max(offset + bytes.len() as u64, Ordering::Relaxed);
                self.dirty = Some(file);
                written_seq.fetch_max(seq, Ordering::Release);
            }
            Job::SetLen { file, len } => {
                self.sync_other(Some(&file))?;
                file.get()?.set_len(len)?;
                // Synced at once: records written after the cut are stamped with a
                // durable length that must not cover the cut-off bytes, and those
                // bytes must not come back under them after a crash.
                file.written.store(len, Ordering::Relaxed);
                file.allocated.store(len, Ordering::Relaxed);
                file.sync()?;
                self.dirty = None;
            }
            Job::Remove(path) => match vfs.remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Job::SyncDir(dir) => {
                self.sync_other(None)?;
                vfs.sync_dir(&dir)?;
            }
        }
        Ok(())
    }

    /// The rest of a batch after `run` succeeded for every job.
    fn finish(&mut self, db: &sled::Db) -> io::Result<()> {
        self.sync_other(None)?;
        if self.sled {
            db.flush().map_err(|e| match e {
                sled::Error::Io(e) => e,
                e => io::Error::other(e.to_string()),
            })?;
        }
        Ok(())
    }
}

/// Leaves the clean-stop marker (see `raft_log.rs`). Best effort: without it the
/// next open only treats a bad record at the end as possibly torn.
fn mark_clean(vfs: &dyn Vfs, marker: &Path) {
    let res = vfs
        .open(marker, OpenHow::CreateTruncate)
        .and_then(|f| f.sync_data())
        .and_then(|_| marker.parent().map_or(Ok(()), |d| vfs.sync_dir(d)));
    if let Err(e) = res {
        tracing::warn!(error = %e, path = %marker.display(), "cannot leave the clean-stop marker");
    }
}

/// Runs batches until the channel closes; true if no write or flush ever failed.
fn run(
    vfs: &dyn Vfs,
    db: sled::Db,
    rx: mpsc::Receiver<Job>,
    counters: Arc<Counters>,
    health: Arc<Mutex<Health>>,
    written_seq: Arc<AtomicU64>,
) -> bool {
    // The first error, kept for good (see the module docs).
    let mut poisoned: Option<io::Error> = None;
    // The segment written last: its preallocated zeros are cut at a clean stop.
    let mut tail: Option<Arc<SegmentFile>> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = Batch::default();
        for job in std::iter::once(first).chain(rx.try_iter()) {
            if poisoned.is_some() {
                if let Job::Done(done) | Job::DoneSled(done) = job {
                    batch.dones.push(done);
                }
                continue;
            }
            if let Job::Write { file, .. } = &job {
                tail = Some(file.clone());
            }
            if let Err(e) = batch.run(vfs, job, &written_seq) {
                poisoned = Some(e);
            }
        }
        if poisoned.is_none() {
            if let Err(e) = batch.finish(&db) {
                poisoned = Some(e);
            }
            counters.flushes.fetch_add(1, Ordering::Relaxed);
        }
        counters
            .callbacks
            .fetch_add(batch.dones.len() as u64, Ordering::Relaxed);
        match &poisoned {
            None => {
                for done in batch.dones {
                    done(Ok(()));
                }
            }
            Some(e) => {
                let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
                if *h == Health::Ok {
                    // No retry: the page cache may lie after a failed write or fsync.
                    // openraft stops the node on the StorageError these callers get.
                    let no_space = is_no_space(e);
                    tracing::error!(
                        error = %e, no_space, waiters = batch.dones.len(),
                        "log write or flush failed; this store accepts no more writes"
                    );
                    *h = if no_space {
                        Health::NoSpace(e.to_string())
                    } else {
                        Health::Failed(e.to_string())
                    };
                }
                drop(h);
                for done in batch.dones {
                    done(Err(copy_error(e)));
                }
            }
        }
    }
    if poisoned.is_some() {
        return false;
    }
    // A cleanly stopped log ends at its last record, as before preallocation: a
    // version that does not know the zeros (a downgrade) reads it as it always did.
    match tail.map_or(Ok(()), |file| trim(&file)) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot cut the log's preallocated tail at stop");
            false
        }
    }
}

/// Cuts the zeros written ahead of a segment's records, durably.
fn trim(file: &SegmentFile) -> io::Result<()> {
    let written = file.written.load(Ordering::Relaxed);
    if file.allocated.load(Ordering::Relaxed) <= written {
        return Ok(());
    }
    file.get()?.set_len(written)?;
    file.sync()?;
    file.allocated.store(written, Ordering::Relaxed);
    Ok(())
}
