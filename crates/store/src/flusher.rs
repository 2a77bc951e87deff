//! The executor that makes writes durable (group commit), and its thread.
//!
//! Every change to the log files and every durability request is queued, in order, as
//! a [`Job`]. One executor at a time (a lock) takes every job queued so far and:
//!
//! 1. carries them out in order: creates segment files (syncing the segment written
//!    so far first, and the new file's header before any record goes in), writes
//!    records at their reserved offsets (`pwrite`, after stamping each with the
//!    segment's durable length: see `record.rs`; zeros first where the file is too
//!    short, 1 MiB ahead: `SegmentFile::preallocate`), cuts files (and syncs the cut at
//!    once, so a cut-off tail cannot reappear under later records), removes files,
//!    syncs the directory right after a file was created or removed (so a crash cannot
//!    resurrect or lose one out of order), and syncs a segment before it writes to
//!    another (so a later segment with data implies every earlier one is complete);
//! 2. `fdatasync`s the segment it wrote last, and calls sled's blocking `Db::flush()`
//!    only when a job asked for it (votes, snapshots, `last_purged`: rare);
//! 3. tells the node's metrics what the batch cost ([`SyncReport`]: how long it took
//!    to reach the disk, how many writes it made durable), then fires the batch's
//!    callbacks, in submission order;
//!
//! and at a clean stop (the queue closed, nothing failed) the thread cuts the zeros
//! written ahead of the last segment's records, so a cleanly stopped log ends at its
//! last record.
//!
//! **Who runs a batch.** Usually the flusher thread, a dedicated OS thread woken for
//! the jobs. But an append made while the node is quiet (at most one client operation
//! in progress, [`Load`]) is synced on the appending thread itself, if no batch is
//! running: that thread (openraft's core, which awaits the sync before it does
//! anything else) would only sleep meanwhile, and the two wake-ups of the hand-off —
//! the flusher thread's, then the caller's — cost more than the write on a quiet
//! node (issue 22: at one client, 0.58–0.69 → 0.51 ms p50 and 500–635 → 425 µs of CPU
//! per decision; at 64 clients syncing on the runtime thread lost 10–15 % of
//! throughput, because that thread then stops serving requests while it waits, hence
//! the load rule). Either way the same executor, under the same lock, runs the jobs in
//! queue order: the order of writes, syncs and callbacks does not depend on the thread.
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
//! The flusher is a std thread rather than a tokio task so that it does not belong to
//! any one runtime: the openraft test suite opens and drops stores across many
//! short-lived runtimes. A sync on the appending thread does block that runtime
//! thread for one `fdatasync`, which is why it happens only on a quiet node.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
#[derive(Default)]
struct Counters {
    flushes: AtomicU64,
    callbacks: AtomicU64,
    /// Told about every batch that reached the disk ([`SyncReport`]).
    hook: OnceLock<SyncHook>,
}

/// What one batch of writes cost, for the node's metrics
/// ([`crate::LogStore::on_sync`]). On the leader and on a follower, every decision
/// waits for one of these, so its time is the disk's share of a decision's latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// From the batch's first write to the end of its sync (`fdatasync`, and sled's
    /// flush when a vote or snapshot asked for one).
    pub elapsed: Duration,
    /// The writes it made durable: the callbacks it fired (appends, votes, flushes).
    pub acknowledged: usize,
}

/// Called by whichever thread ran the batch, before the batch's callbacks (so a
/// write's report is in by the time it is acknowledged): keep it short (a histogram
/// update), every acknowledgement waits for it.
pub type SyncHook = Arc<dyn Fn(SyncReport) + Send + Sync>;

/// What [`crate::LogStore::flush_stats`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Batches that ended in an fsync (of a log segment, sled, or both).
    pub flushes: u64,
    /// Durability callbacks fired; `callbacks / flushes` is the group-commit factor.
    pub callbacks: u64,
}

pub(crate) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    health: Arc<Mutex<Health>>,
    path: PathBuf,
    /// How many client operations the node is working on: `run_here` syncs on the
    /// caller's thread only while that is at most one.
    load: Load,
    /// Whether anyone counts `load` (`Flusher::load` was called): a store used
    /// directly (tests, the crash child, the store benchmark) keeps many appends in
    /// flight uncounted, and those share the flusher thread's fsyncs.
    counted: std::sync::atomic::AtomicBool,
}

/// How many client operations a node is working on right now, as the server counts
/// them ([`Load::enter`] per operation). The log syncs an append on the appending
/// thread (no hand-off to the flusher thread and back) only while this is at most one:
/// then that thread has nothing else to do while it waits for the disk. Under load
/// the flusher thread syncs, and the appending thread goes on serving requests.
#[derive(Clone, Debug, Default)]
pub struct Load(Arc<AtomicU64>);

impl Load {
    /// Counts one operation until the guard is dropped.
    pub fn enter(&self) -> LoadGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        LoadGuard(self.0.clone())
    }

    /// Operations in progress.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One operation counted by [`Load::enter`].
#[derive(Debug)]
pub struct LoadGuard(Arc<AtomicU64>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The queue, and the one executor that carries jobs out (whoever holds its lock).
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    exec: Mutex<Exec>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// The thread has work to look for.
    signaled: bool,
    /// No more jobs: the thread finishes what is queued and stops.
    closed: bool,
}

impl Shared {
    fn take(&self) -> Vec<Job> {
        std::mem::take(&mut self.queue.lock().unwrap_or_else(|p| p.into_inner()).jobs)
    }
    fn signal(&self) {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.raise(q);
    }

    /// Sets the thread's flag and wakes it, unless the flag is already up: then a
    /// wake-up is on its way (or the thread is running and looks at the flag before it
    /// waits again), and a second `notify_one` would only cost a futex syscall. Under
    /// load every append asks twice (`submit_for_here`, then `run_here`).
    fn raise(&self, mut q: std::sync::MutexGuard<'_, Queue>) {
        if q.signaled {
            return;
        }
        q.signaled = true;
        drop(q);
        self.wake.notify_one();
    }
    /// Carries out every queued job, batch after batch, until none is left.
    fn drain(&self, ex: &mut Exec) {
        loop {
            let jobs = self.take();
            if jobs.is_empty() {
                return;
            }
            ex.batch(jobs);
        }
    }
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
        let counters = Arc::new(Counters::default());
        let health = Arc::new(Mutex::new(Health::Ok));
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            exec: Mutex::new(Exec {
                vfs: vfs.clone(),
                db,
                counters: counters.clone(),
                health: health.clone(),
                written_seq,
                poisoned: None,
                tail: None,
            }),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("quorate-flusher".into())
            .spawn(move || {
                if run(&thread_shared) {
                    mark_clean(&*vfs, &clean_marker);
                }
            })
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Flusher {
            shared,
            thread: Some(thread),
            counters,
            health,
            path,
            load: Load::default(),
            counted: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Queues `jobs` in order. Never blocks on I/O. Callers that reserve file offsets
    /// call this under the lock they reserved them with, so queue order is offset order.
    pub(crate) fn submit_all(&self, jobs: Vec<Job>) {
        self.enqueue(jobs, true);
    }

    /// Like `submit_all`, for a caller that calls `run_here` right after (outside its
    /// locks): the flusher thread is not woken if the caller may do the work itself.
    pub(crate) fn submit_for_here(&self, jobs: Vec<Job>) {
        self.enqueue(jobs, !self.quiet());
    }

    /// At most one operation in progress: the appending thread has nothing better to
    /// do than wait for the disk.
    fn quiet(&self) -> bool {
        self.counted.load(Ordering::Relaxed) && self.load.get() <= 1
    }

    /// The counter `run_here` consults (see [`Load`]). Asking for it is the promise
    /// to count: from then on a quiet store syncs appends on the appending thread.
    pub(crate) fn load(&self) -> &Load {
        self.counted.store(true, Ordering::Relaxed);
        &self.load
    }

    fn enqueue(&self, jobs: Vec<Job>, signal: bool) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.closed {
            drop(q);
            for job in jobs {
                if let Job::Done(done) | Job::DoneSled(done) = job {
                    done(Err(io::Error::other("the flusher thread has stopped")));
                }
            }
            return;
        }
        q.jobs.extend(jobs);
        if signal {
            self.shared.raise(q);
        }
    }

    /// Carries out what is queued on this thread, when the node is quiet and no
    /// batch is running; otherwise wakes the flusher thread for it. Called after
    /// `submit_for_here`, outside the caller's locks (callbacks may fire here).
    ///
    /// Whoever holds the executor lock runs every queued job in queue order, so the
    /// order of writes, syncs and callbacks is the flusher thread's, whichever
    /// thread carries them out; only the hand-off (a wake-up of the flusher thread,
    /// and of the caller when its callback fires) is saved.
    pub(crate) fn run_here(&self) {
        if !self.quiet() {
            // `submit_for_here` woke the thread already (or the load rose since:
            // then this wake is the one it missed).
            self.shared.signal();
            return;
        }
        match self.shared.exec.try_lock() {
            Ok(mut ex) => self.shared.drain(&mut ex),
            Err(std::sync::TryLockError::Poisoned(p)) => self.shared.drain(&mut p.into_inner()),
            // The thread is running a batch: it takes ours after it (a signal, so it
            // looks again even if it had already found the queue empty).
            Err(std::sync::TryLockError::WouldBlock) => self.shared.signal(),
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

    /// Sets the hook told about every batch that reached the disk; only once (the
    /// hook given is returned if one was set already).
    pub(crate) fn on_sync(&self, hook: SyncHook) -> Result<(), SyncHook> {
        self.counters.hook.set(hook)
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
        // Closing the queue lets the thread finish the jobs already queued and exit.
        // Joining it matters: the thread holds a `sled::Db`, and sled keeps an
        // exclusive file lock until the last handle is gone, so a store reopened in
        // the same process right after a drop would otherwise fail to lock.
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.closed = true;
            q.signaled = true;
        }
        self.shared.wake.notify_one();
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

/// What carries jobs out, and what it remembers between batches.
struct Exec {
    vfs: Arc<dyn Vfs>,
    db: sled::Db,
    counters: Arc<Counters>,
    health: Arc<Mutex<Health>>,
    written_seq: Arc<AtomicU64>,
    /// The first error, kept for good (see the module docs).
    poisoned: Option<io::Error>,
    /// The segment written last: its preallocated zeros are cut at a clean stop.
    tail: Option<Arc<SegmentFile>>,
}

impl Exec {
    /// One batch: every job in order, one fsync, then the callbacks.
    fn batch(&mut self, jobs: Vec<Job>) {
        let started = Instant::now();
        let mut batch = Batch::default();
        for job in jobs {
            if self.poisoned.is_some() {
                if let Job::Done(done) | Job::DoneSled(done) = job {
                    batch.dones.push(done);
                }
                continue;
            }
            if let Job::Write { file, .. } = &job {
                self.tail = Some(file.clone());
            }
            if let Err(e) = batch.run(&*self.vfs, job, &self.written_seq) {
                self.poisoned = Some(e);
            }
        }
        if self.poisoned.is_none() {
            if let Err(e) = batch.finish(&self.db) {
                self.poisoned = Some(e);
            }
            self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        }
        self.counters
            .callbacks
            .fetch_add(batch.dones.len() as u64, Ordering::Relaxed);
        match &self.poisoned {
            None => {
                if let Some(hook) = self.counters.hook.get() {
                    hook(SyncReport {
                        elapsed: started.elapsed(),
                        acknowledged: batch.dones.len(),
                    });
                }
                for done in batch.dones {
                    done(Ok(()));
                }
            }
            Some(e) => {
                let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
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
}

/// The flusher thread: runs batches until the queue closes; true if no write or
/// flush ever failed.
fn run(shared: &Shared) -> bool {
    loop {
        let closed = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            while !q.signaled {
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            q.signaled = false;
            q.closed
        };
        let mut ex = shared.exec.lock().unwrap_or_else(|p| p.into_inner());
        shared.drain(&mut ex);
        if closed {
            if ex.poisoned.is_some() {
                return false;
            }
            // A cleanly stopped log ends at its last record, as before preallocation:
            // a version that does not know the zeros (a downgrade) reads it as it
            // always did.
            return match ex.tail.take().map_or(Ok(()), |file| trim(&file)) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot cut the log's preallocated tail at stop");
                    false
                }
            };
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
