//! The Raft log as append-only segment files, outside sled.
//!
//! ## Why not a sled tree
//!
//! Until this module existed every log entry was a sled insert, and every
//! acknowledgement a `Db::flush()`. sled 0.34.7 hands each flush's buffer write to its
//! IO thread pool through a condvar with `notify_all`, so every fsync woke seven
//! threads; the leader's profile under the 64-client benchmark showed sled at 26 % of
//! its CPU, and every node at 14–17 % (docs/benchmarks.md, issue 14). A Raft log needs
//! none of sled's machinery: it is written at the end, cut at the end (truncate),
//! dropped at the front (purge) and read mostly at the end (replication).
//!
//! ## Layout
//!
//! `<data dir>/raftlog/<first index, 20 digits>.log`, one file per segment: a header,
//! then a sequence of records, each `length | crc | index | synced | header crc |
//! payload` (byte layout and the older v2 layout in `record.rs`), where the payload is
//! the bincode `Entry<TypeConfig>` (the codec of `codec.rs`). The next append starts a
//! new segment once the last one holds [`SEGMENT_BYTES`], so a purge deletes whole
//! files instead of rewriting one.
//!
//! The last segment is zero-filled [`PREALLOC_BYTES`] at a time ahead of its records
//! (`SegmentFile::preallocate`: an `fdatasync` that finds the file's size unchanged
//! writes no inode), and only the last: a segment is cut back to its records, durably,
//! before the next is created, and a clean stop cuts the last one too.
//!
//! ## Who writes what, and when it is durable
//!
//! [`RaftLog::append`] reserves the records' place (segment, offset) under the lock,
//! keeps their bytes in memory, and queues a write for the flusher (`flusher.rs`);
//! the entries are readable at once. On a quiet node the appending thread then runs
//! the queue itself, otherwise the flusher thread does. The flusher writes with `pwrite`
//! at the reserved offsets and `fdatasync`s before it fires the callbacks queued
//! behind the write: an entry is acknowledged to openraft only once it is on disk.
//! Truncation and segment removal are queued the same way, so every change to the
//! files happens in the order openraft made it. The flusher syncs a segment before it
//! writes the next one, so a later segment with records implies that every earlier one
//! is complete.
//!
//! ## Reads
//!
//! Entries are read back from memory while their bytes are cached (the most recent
//! [`CACHE_BYTES`], which is what replication asks for, and always everything the
//! flusher has not written yet), else with `pread` at their recorded offset. An entry
//! whose bytes left the cache was written by then, and the index only ever points at
//! the record appended for that index: a truncation removes the index entries it cuts,
//! and a re-appended index gets a new record.
//!
//! ## Recovery ([`RaftLog::open`])
//!
//! Each segment is first `fdatasync`'d, its cached pages dropped
//! (`posix_fadvise(DONTNEED)`), and then read: a previous process whose fsync failed
//! may have left pages the kernel marked clean although the disk never got them, and
//! recovery must classify what the disk holds, not what the page cache remembers.
//! (O_DIRECT would say the same, but needs aligned buffers and is refused by tmpfs.)
//!
//! Every record is checked (header crc, length, payload crc, index = expected
//! index). Zeros from a record boundary to the end of the last segment are its
//! zero-filled tail, kept for later records; at the end of any other segment they
//! are lost records, refused. Trailing segments that keep no record (created just before a crash, or
//! holding only a torn first write) are removed first; then a bad record is
//!
//! - **damage, refused** if it is in any but the last segment (the flusher synced a
//!   segment completely before it created the next), if it is intact but carries
//!   another index (a lost record), or, in a v3 segment, if it starts below the
//!   `synced` length stamped in any intact record of that segment: those bytes were
//!   durable before a later write was made, so no crash can have torn them. A damaged
//!   length field does not hide the records after it: they are found by trying every
//!   offset (`record::max_synced_from`).
//! - **a torn tail, cut with a warning** otherwise: it lies beyond every byte the
//!   segment is known to have synced, so nothing from there on was acknowledged, even
//!   if intact records follow it (a multi-page write can persist out of order).
//!
//! What cannot be told apart: damage to the very last batch a segment synced, when
//! the crash came before any later write could stamp a larger `synced`, looks like a
//! torn write and is cut. v2 segments (no `synced`) keep the older rule: a bad record
//! is a torn tail only in the last segment and only if no intact record follows it
//! at the offset its length field names. Indexes inside a segment are contiguous; a
//! gap between segments is read back as a gap (see [`RaftLog::append`]), so a
//! segment file deleted by hand from the middle of the log is not detected.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::Entry;

use crate::codec::{decode, encode};
use crate::flusher::{Done, Flusher, Job, SegmentFile};
use crate::record::{self, Version, MISPLACED};
use crate::vfs::{OpenHow, VFile, Vfs};
use crate::{StoreError, TypeConfig};

/// Directory of the segment files inside the data directory.
pub(crate) const LOG_DIR: &str = "raftlog";
/// Left in the log directory by a flusher that stopped cleanly (every write synced,
/// none failed), and removed by the next `open` before it changes anything: with it,
/// recovery knows no write can have been torn.
pub(crate) const CLEAN_FILE: &str = "clean";
/// A segment is closed once it holds this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;
/// How far ahead of its records the last segment is zero-filled (see
/// `SegmentFile::preallocate`): one size change, and one inode write, per MiB of log
/// instead of per flush.
pub(crate) const PREALLOC_BYTES: u64 = 1 << 20;
/// Encoded entries kept in memory for replication reads.
const CACHE_BYTES: usize = 8 << 20;
/// Largest gap between consecutive indexes that `append` and `open` accept (gaps are
/// for openraft's conformance suite; openraft itself never leaves one): a damaged
/// segment name must not make `open` allocate a slot per missing index.
const MAX_GAP: u64 = 1 << 16;

/// One segment of the log.
struct Segment {
    first: u64,
    file: Arc<SegmentFile>,
    /// Bytes reserved so far: the offset of the next record.
    end: u64,
    /// The index the next record in this segment must have: records in a segment are
    /// contiguous, so an append after a purge past the end starts a new segment.
    next: u64,
}

/// One live log entry: where its record is, and its payload while cached.
struct Slot {
    segment: Arc<SegmentFile>,
    offset: u64,
    len: u32,
    /// Appends are numbered; the flusher reports the highest number it has written.
    seq: u64,
    cached: Option<Arc<[u8]>>,
}

struct Inner {
    segments: VecDeque<Segment>,
    /// Index of `slots[0]`.
    first: u64,
    /// One per index from `first` on; `None` is a gap (see [`RaftLog::append`]). The
    /// first and last are never gaps.
    slots: VecDeque<Option<Slot>>,
    cached_bytes: usize,
    /// Slots before this position hold no cached bytes.
    evicted: usize,
    next_seq: u64,
    /// [`SEGMENT_BYTES`], [`PREALLOC_BYTES`] and [`CACHE_BYTES`]; tests lower them.
    segment_bytes: u64,
    prealloc_bytes: u64,
    cache_bytes: usize,
}

/// The log files of one store. Shared by the log store and its readers.
pub(crate) struct RaftLog {
    dir: PathBuf,
    /// The files' operations (real, or simulated in tests).
    vfs: Arc<dyn Vfs>,
    inner: Mutex<Inner>,
    /// Highest append number whose bytes the flusher has written.
    written_seq: Arc<AtomicU64>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

/// Writes a new v2 segment file at `path` holding `records` (index, payload) and
/// syncs it. Used by the migration from format 1, before the log is opened.
pub(crate) fn write_records<'a>(
    path: &Path,
    records: impl Iterator<Item = (u64, &'a [u8])>,
) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    for (index, payload) in records {
        check_len(payload.len())?;
        record::put_v2(&mut buf, index, payload);
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))?;
    FileExt::write_all_at(&file, &buf, 0).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn check_len(len: usize) -> Result<(), StoreError> {
    match u32::try_from(len) {
        Ok(_) => Ok(()),
        Err(_) => Err(StoreError::Malformed {
            what: "log entry",
            reason: format!("{len} bytes do not fit a record"),
        }),
    }
}

/// What scanning one segment found.
struct Scanned {
    version: Version,
    /// (offset, payload length) per record, from the segment's first index on.
    records: Vec<(u64, u32)>,
    /// Offset of the first bad record, and why, if any.
    bad_at: Option<(u64, String)>,
    /// v2: whether the bad record is intact but misplaced, or an intact record follows
    /// it: damage in place, not a torn tail. v3: only the misplaced case.
    intact_after_bad: bool,
    /// v3: the largest `synced` stamped in an intact record of the segment.
    synced: u64,
    /// v3: where the records end and only zeros follow, to the end of the file: the
    /// space the flusher wrote ahead of the next records, not a bad record.
    zero_from: Option<u64>,
}

fn scan(bytes: &[u8], first: u64) -> Scanned {
    let version = record::version_of(bytes);
    let mut out = Scanned {
        version,
        records: Vec::new(),
        bad_at: None,
        intact_after_bad: false,
        synced: 0,
        zero_from: None,
    };
    let h = version.header();
    let mut off = version.start() as usize;
    if version == Version::V3 {
        let header = record::segment_header(first);
        if bytes.len() < header.len() || bytes[..header.len()] != header[..] {
            // A torn header (possible only before any record was written: the header
            // is synced first), or one naming another index.
            let why = format!(
                "segment header {:?} is not {header:?}",
                &bytes[..bytes.len().min(16)]
            );
            out.bad_at = Some((0, why));
            out.synced = record::max_synced_from(bytes, 0);
            return out;
        }
    }
    while off < bytes.len() {
        let index = first + out.records.len() as u64;
        match record::parse(bytes, off, index, version) {
            Ok(r) => {
                out.records.push((off as u64, r.len));
                out.synced = out.synced.max(r.synced);
                off += h + r.len as usize;
            }
            Err(_) if version == Version::V3 && bytes[off..].iter().all(|&b| b == 0) => {
                // No record is all zeros (its header crc would fail), and a torn write
                // leaves at least one of its bytes: this is preallocated space.
                out.zero_from = Some(off as u64);
                break;
            }
            Err(why) => {
                out.intact_after_bad = why.starts_with(MISPLACED);
                match version {
                    Version::V3 => {
                        out.synced = out.synced.max(record::max_synced_from(bytes, off + 1));
                    }
                    Version::V2 => {
                        // A torn tail ends the file; an intact next record means the
                        // bad one was damaged in place.
                        let declared = bytes
                            .get(off..off + 4)
                            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
                        out.intact_after_bad |= declared.is_some_and(|len| {
                            record::parse(bytes, off.saturating_add(h + len), index + 1, version)
                                .is_ok()
                        });
                    }
                }
                out.bad_at = Some((off as u64, why));
                break;
            }
        }
    }
    out
}

impl Scanned {
    /// Where the segment's good bytes end: Err(why) if the bad record is damage
    /// rather than a torn tail. `last`: it is the last segment; `may_be_torn`: it is
    /// the last one and the store did not stop cleanly.
    ///
    /// Zeros to the end of the file are preallocated space, but only in the last
    /// segment: the flusher cuts a segment to its records, durably, before it creates
    /// the next one, so zeros at the end of an earlier one are lost records.
    fn end(&self, len: u64, last: bool, may_be_torn: bool) -> Result<u64, String> {
        if let Some(off) = self.zero_from {
            if !last {
                return Err(format!(
                    "only zeros from byte {off} on, in a segment that was cut to its records before the next was made"
                ));
            }
            return Ok(off);
        }
        let Some((off, why)) = &self.bad_at else {
            return Ok(len);
        };
        if !may_be_torn {
            return Err(format!(
                "{why} (not the last segment, which was synced completely before the next was made)"
            ));
        }
        if self.intact_after_bad {
            return Err(match self.version {
                Version::V2 => format!("{why} (an intact record follows it)"),
                Version::V3 => why.clone(),
            });
        }
        if self.version == Version::V3 && *off < self.synced {
            return Err(format!(
                "{why} (bytes up to {} were synced before a later write: damage, not a torn write)",
                self.synced
            ));
        }
        Ok(*off)
    }

    /// Records that lie before `end`.
    fn kept(&self, end: u64) -> usize {
        self.records.partition_point(|&(off, _)| off < end)
    }
}

/// Opens a segment, makes what it holds durable, drops its cached pages and reads it
/// back from the disk (see "Recovery" in the module docs).
fn read_uncached(vfs: &dyn Vfs, path: &Path) -> Result<(Box<dyn VFile>, Vec<u8>), StoreError> {
    let file = vfs.open(path, OpenHow::ReadWrite).map_err(io_err(path))?;
    let bytes = file.read_all_uncached().map_err(io_err(path))?;
    Ok((file, bytes))
}

impl RaftLog {
    /// Opens `<data dir>/raftlog`, checks every record and drops a torn tail. `last_purged` entries and below are not loaded.
    pub(crate) fn open(
        data_dir: &Path,
        last_purged: Option<u64>,
        vfs: Arc<dyn Vfs>,
    ) -> Result<Self, StoreError> {
        let dir = data_dir.join(LOG_DIR);
        let corrupt = |what: String| StoreError::corrupt(&dir, what);
        if !dir.is_dir() {
            // Created with the store (`db::open_db`) or by the format-1 migration: a
            // store without it has lost its log, and must not start with an empty one.
            return Err(corrupt(format!(
                "{LOG_DIR}/ is missing: the Raft log is gone"
            )));
        }
        let mut firsts = Vec::new();
        let mut clean = false;
        for name in vfs.read_dir(&dir).map_err(io_err(&dir))? {
            let name = name.to_string_lossy();
            if name == CLEAN_FILE {
                clean = true;
                continue;
            }
            let first = name
                .strip_suffix(".log")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| corrupt(format!("unexpected file {name:?} in the log directory")))?;
            firsts.push(first);
        }
        firsts.sort_unstable();
        if clean {
            // Gone (durably) before anything else changes: a crash from here on must
            // not look like a clean stop.
            let marker = dir.join(CLEAN_FILE);
            vfs.remove_file(&marker).map_err(io_err(&marker))?;
            vfs.sync_dir(&dir).map_err(io_err(&dir))?;
        }

        let mut inner = Inner {
            segments: VecDeque::new(),
            first: 0,
            slots: VecDeque::new(),
            cached_bytes: 0,
            evicted: 0,
            next_seq: 1,
            segment_bytes: SEGMENT_BYTES,
            prealloc_bytes: PREALLOC_BYTES,
            cache_bytes: CACHE_BYTES,
        };
        let mut segs = Vec::with_capacity(firsts.len());
        for first in firsts {
            let path = dir.join(segment_name(first));
            let (file, bytes) = read_uncached(&*vfs, &path)?;
            let scanned = scan(&bytes, first);
            segs.push((first, path, file, bytes.len() as u64, scanned));
        }
        // Trailing segments that keep no record go first (created just before a
        // crash, or holding only a torn first write), so that the segment before
        // them is classified as the last one.
        let refuse = |first: u64, path: &Path, scanned: &Scanned, why: String| {
            let index = first + scanned.records.len() as u64;
            let off = scanned
                .bad_at
                .as_ref()
                .map(|b| b.0)
                .or(scanned.zero_from)
                .unwrap_or(0);
            corrupt(format!(
                "{}: bad record for index {index} at byte {off}: {why}",
                path.display()
            ))
        };
        while let Some((first, path, _, len, scanned)) = segs.last() {
            let end = scanned
                .end(*len, true, !clean)
                .map_err(|why| refuse(*first, path, scanned, why))?;
            if scanned.kept(end) > 0 {
                break;
            }
            let (_, path, file, ..) = segs.pop().expect("checked");
            tracing::warn!(path = %path.display(), "removing a log segment that holds no complete record");
            drop(file);
            vfs.remove_file(&path).map_err(io_err(&path))?;
            vfs.sync_dir(&dir).map_err(io_err(&dir))?;
        }
        let n = segs.len();
        for (i, (first, path, file, len, scanned)) in segs.into_iter().enumerate() {
            // After a clean stop nothing can be torn: every bad record is damage.
            let last_segment = i + 1 == n;
            let end = scanned
                .end(len, last_segment, last_segment && !clean)
                .map_err(|why| refuse(first, &path, &scanned, why))?;
            let kept = scanned.kept(end);
            // The zeros after the last segment's records stay: appends go over them.
            let preallocated = scanned.zero_from == Some(end);
            if end < len && !preallocated {
                let index = first + kept as u64;
                tracing::warn!(
                    path = %path.display(), index, offset = end,
                    reason = %scanned.bad_at.as_ref().map_or("", |b| b.1.as_str()),
                    dropped_bytes = len - end,
                    "dropping the torn tail of the log (beyond the last sync: never acknowledged)"
                );
                file.set_len(end)
                    .and_then(|_| file.sync_data())
                    .map_err(io_err(&path))?;
            }
            let expected = inner.first + inner.slots.len() as u64;
            if !inner.slots.is_empty() && first < expected {
                return Err(corrupt(format!(
                    "segment {} starts at index {first}, inside the previous one (up to {})",
                    path.display(),
                    expected - 1
                )));
            }
            let file = Arc::new(SegmentFile::new(
                path.clone(),
                Some(file),
                scanned.version,
                end,
            ));
            if preallocated {
                file.allocated.store(len, Ordering::Relaxed);
            }
            for (k, &(off, rec_len)) in scanned.records[..kept].iter().enumerate() {
                let index = first + k as u64;
                if last_purged.is_some_and(|p| index <= p) {
                    continue;
                }
                if inner.slots.is_empty() {
                    inner.first = index;
                }
                // A gap between segments is what an append past the end left.
                let next = inner.first + inner.slots.len() as u64;
                if index - next > MAX_GAP {
                    return Err(corrupt(format!(
                        "{} starts {} indexes after the previous segment ends",
                        path.display(),
                        index - next
                    )));
                }
                for _ in next..index {
                    inner.slots.push_back(None);
                }
                inner.slots.push_back(Some(Slot {
                    segment: file.clone(),
                    offset: off,
                    len: rec_len,
                    seq: 0,
                    cached: None,
                }));
            }
            let next = first + kept as u64;
            inner.segments.push_back(Segment {
                first,
                file,
                end,
                next,
            });
        }
        inner.evicted = inner.slots.len();
        Ok(RaftLog {
            dir,
            vfs,
            inner: Mutex::new(inner),
            written_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Lowers the segment size, the cache and the zero-fill (tests: many segments,
    /// file reads, growing files).
    pub(crate) fn set_limits(&self, segment_bytes: u64, cache_bytes: usize, prealloc_bytes: u64) {
        let mut inner = self.lock();
        inner.segment_bytes = segment_bytes;
        inner.prealloc_bytes = prealloc_bytes;
        inner.cache_bytes = cache_bytes;
    }

    pub(crate) fn vfs(&self) -> &Arc<dyn Vfs> {
        &self.vfs
    }

    pub(crate) fn written_seq(&self) -> Arc<AtomicU64> {
        self.written_seq.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data; the files are the truth.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// First and last index present, if any.
    pub(crate) fn bounds(&self) -> Option<(u64, u64)> {
        let inner = self.lock();
        match inner.slots.len() as u64 {
            0 => None,
            n => Some((inner.first, inner.first + n - 1)),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().slots.is_empty()
    }

    /// Appends `entries` and queues their write, then `done` to fire once they are
    /// durable.
    ///
    /// openraft appends right after the last entry (or after a purge, at any index).
    /// Its storage conformance suite also treats the log as a map: an index at or
    /// below the last one replaces it (and, in a log, everything after it), and an
    /// index past the end leaves a gap that reads skip. Both are served, in memory
    /// and on disk; a gap starts a new segment, so `open` reads it back the same way.
    pub(crate) fn append<I>(
        &self,
        flusher: &Flusher,
        entries: I,
        done: Done,
    ) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        // Everything that can fail happens before anything is reserved, so an error
        // leaves the log as it was (`record::put` below cannot fail after this check).
        let prepared = entries
            .into_iter()
            .map(|entry| {
                let payload = encode("log entry", &entry)?;
                check_len(payload.len())?;
                Ok((entry.log_id.index, Arc::<[u8]>::from(payload)))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut inner = self.lock();
        let mut next = (!inner.slots.is_empty()).then(|| inner.first + inner.slots.len() as u64);
        for &(index, _) in &prepared {
            if let Some(n) = next.filter(|&n| index > n && index - n > MAX_GAP) {
                return Err(StoreError::Malformed {
                    what: "log append",
                    reason: format!(
                        "index {index} leaves a gap of {} after the last entry",
                        index - n
                    ),
                });
            }
            next = Some(index + 1);
        }
        let mut jobs = Vec::new();
        let mut buf = Vec::new();
        let mut buf_file: Option<(Arc<SegmentFile>, u64)> = None;
        for (index, payload) in prepared {
            let next = inner.first + inner.slots.len() as u64;
            let overwrite = !inner.slots.is_empty() && index < next;
            let rotate = inner.segments.back().is_none_or(|s| {
                s.end >= inner.segment_bytes || s.next != index || s.file.version != Version::V3
            });
            if overwrite || rotate {
                if let Some((file, offset)) = buf_file.take() {
                    let seq = inner.next_seq - 1;
                    let bytes = std::mem::take(&mut buf);
                    jobs.push(Job::Write {
                        file,
                        offset,
                        bytes,
                        seq,
                        prealloc: inner.prealloc_bytes,
                    });
                }
            }
            if overwrite {
                self.cut(&mut inner, index, &mut jobs);
            }
            let rotate = inner.segments.back().is_none_or(|s| {
                s.end >= inner.segment_bytes || s.next != index || s.file.version != Version::V3
            });
            if rotate {
                // The segment being closed loses the zeros written ahead of its
                // records, durably, before the next one exists: recovery may then read
                // zeros at the end of any but the last segment as lost records.
                if let Some(prev) = inner
                    .segments
                    .back()
                    .filter(|s| s.file.version == Version::V3)
                {
                    jobs.push(Job::SetLen {
                        file: prev.file.clone(),
                        len: prev.end,
                    });
                }
                let file = Arc::new(SegmentFile::new(
                    self.dir.join(segment_name(index)),
                    None,
                    Version::V3,
                    0,
                ));
                inner.segments.push_back(Segment {
                    first: index,
                    file: file.clone(),
                    end: record::SEGMENT_HEADER,
                    next: index,
                });
                jobs.push(Job::Create {
                    file: file.clone(),
                    first: index,
                });
                jobs.push(Job::SyncDir(self.dir.clone()));
            }
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let segment = inner.segments.back_mut().expect("a segment exists");
            let offset = segment.end;
            segment.end += (record::HEADER + payload.len()) as u64;
            segment.next = index + 1;
            let file = segment.file.clone();
            if buf_file.is_none() {
                buf_file = Some((file.clone(), offset));
            }
            record::put(&mut buf, index, &payload);
            if inner.slots.is_empty() {
                inner.first = index;
                inner.evicted = 0;
            }
            let next = inner.first + inner.slots.len() as u64;
            for _ in next..index {
                inner.slots.push_back(None);
            }
            inner.cached_bytes += payload.len();
            inner.slots.push_back(Some(Slot {
                segment: file,
                offset,
                len: payload.len() as u32,
                seq,
                cached: Some(payload),
            }));
        }
        if let Some((file, offset)) = buf_file {
            let seq = inner.next_seq - 1;
            jobs.push(Job::Write {
                file,
                offset,
                bytes: buf,
                seq,
                prealloc: inner.prealloc_bytes,
            });
        }
        self.evict(&mut inner);
        jobs.push(Job::Done(done));
        // Under the lock: queue order must be reservation order.
        flusher.submit_for_here(jobs);
        Ok(())
    }

    /// Drops cached payloads, oldest first, that the flusher has written, until the
    /// cache is within its budget.
    fn evict(&self, inner: &mut Inner) {
        let written = self.written_seq.load(Ordering::Acquire);
        while inner.cached_bytes > inner.cache_bytes && inner.evicted < inner.slots.len() {
            let at = inner.evicted;
            if let Some(slot) = &mut inner.slots[at] {
                if slot.seq > written {
                    break;
                }
                if let Some(bytes) = slot.cached.take() {
                    inner.cached_bytes -= bytes.len();
                }
            }
            inner.evicted += 1;
        }
    }

    /// Entries `[lo, hi]` that are present.
    pub(crate) fn read(&self, lo: u64, hi: u64) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        enum Src {
            Mem(Arc<[u8]>),
            File(Arc<SegmentFile>, u64, u32),
        }
        let sources: Vec<(u64, Src)> = {
            let inner = self.lock();
            let n = inner.slots.len() as u64;
            if n == 0 {
                return Ok(Vec::new());
            }
            let lo = lo.max(inner.first);
            let hi = hi.min(inner.first + n - 1);
            if hi < lo {
                return Ok(Vec::new());
            }
            (lo..=hi)
                .filter_map(|index| {
                    let slot = inner.slots[(index - inner.first) as usize].as_ref()?;
                    let src = match &slot.cached {
                        Some(bytes) => Src::Mem(bytes.clone()),
                        None => Src::File(slot.segment.clone(), slot.offset, slot.len),
                    };
                    Some((index, src))
                })
                .collect()
        };
        let mut out = Vec::with_capacity(sources.len());
        for (index, src) in sources {
            let bytes: Arc<[u8]> = match src {
                Src::Mem(bytes) => bytes,
                Src::File(file, offset, len) => {
                    let h = file.version.header();
                    let mut bytes = vec![0u8; h + len as usize];
                    file.get()
                        .and_then(|f| f.read_exact_at(&mut bytes, offset))
                        .map_err(io_err(&file.path))?;
                    record::parse(&bytes, 0, index, file.version).map_err(|reason| {
                        StoreError::Malformed {
                            what: "log record",
                            reason: format!("index {index}: {reason}"),
                        }
                    })?;
                    bytes[h..].into()
                }
            };
            let entry: Entry<TypeConfig> = decode("log entry", &bytes)?;
            if entry.log_id.index != index {
                return Err(StoreError::Malformed {
                    what: "log entry",
                    reason: format!("stored at index {index} but says {}", entry.log_id),
                });
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Removes `[index, ∞)`; `done` fires once the files say so durably.
    pub(crate) fn truncate(&self, flusher: &Flusher, index: u64, done: Done) {
        let mut inner = self.lock();
        let mut jobs = Vec::new();
        self.cut(&mut inner, index, &mut jobs);
        jobs.push(Job::Done(done));
        flusher.submit_all(jobs);
    }

    /// Forgets `[index, ∞)` in memory and queues the file changes that do the same.
    fn cut(&self, inner: &mut Inner, index: u64, jobs: &mut Vec<Job>) {
        let keep = index
            .saturating_sub(inner.first)
            .min(inner.slots.len() as u64) as usize;
        let cut_at = inner
            .slots
            .get(keep)
            .and_then(|s| s.as_ref())
            .map(|s| (s.segment.clone(), s.offset));
        let freed: usize = inner
            .slots
            .drain(keep..)
            .flatten()
            .filter_map(|slot| slot.cached.map(|b| b.len()))
            .sum();
        inner.cached_bytes -= freed;
        while inner.slots.back().is_some_and(|s| s.is_none()) {
            inner.slots.pop_back();
        }
        inner.evicted = inner.evicted.min(inner.slots.len());
        // Segments starting at or after `index` go entirely, newest first, so a crash
        // part-way leaves a contiguous prefix; the one holding `index` is cut.
        let mut removed = false;
        while inner.segments.back().is_some_and(|s| s.first >= index) {
            let s = inner.segments.pop_back().expect("checked");
            jobs.push(Job::Remove(s.file.path.clone()));
            removed = true;
        }
        if removed {
            jobs.push(Job::SyncDir(self.dir.clone()));
        }
        if let (Some((file, offset)), Some(last)) = (cut_at, inner.segments.back_mut()) {
            if Arc::ptr_eq(&file, &last.file) && offset < last.end {
                last.end = offset;
                last.next = index;
                jobs.push(Job::SetLen { file, len: offset });
            }
        }
    }

    /// Forgets `[0, index]` and removes the segments that hold nothing else. The
    /// caller has made `last_purged` durable first, so a crash part-way leaves
    /// entries that `open` skips.
    pub(crate) fn purge(&self, flusher: &Flusher, index: u64) {
        let mut inner = self.lock();
        let drop_n = (index + 1)
            .saturating_sub(inner.first)
            .min(inner.slots.len() as u64) as usize;
        let freed: usize = inner
            .slots
            .drain(..drop_n)
            .flatten()
            .filter_map(|slot| slot.cached.map(|b| b.len()))
            .sum();
        inner.cached_bytes -= freed;
        inner.first = inner.first.max(index + 1);
        inner.evicted = inner.evicted.saturating_sub(drop_n);
        while inner.slots.front().is_some_and(|s| s.is_none()) {
            inner.slots.pop_front();
            inner.first += 1;
            inner.evicted = inner.evicted.saturating_sub(1);
        }
        let mut jobs = Vec::new();
        // A segment is dead when the next one starts at or below index + 1; the last
        // segment always stays (it receives the next appends).
        while inner.segments.len() > 1 && inner.segments[1].first <= index + 1 {
            let s = inner.segments.pop_front().expect("checked");
            jobs.push(Job::Remove(s.file.path.clone()));
        }
        if !jobs.is_empty() {
            jobs.push(Job::SyncDir(self.dir.clone()));
            flusher.submit_all(jobs);
        }
    }

    /// Bytes of the segment files (reserved, so it includes writes still queued).
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.lock().segments.iter().map(|s| s.end).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use openraft::storage::RaftLogStorage;
    use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    async fn append(log: &crate::LogStore, entries: Vec<Entry<TypeConfig>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        log.append_with_callback(entries, move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
        rx.await.unwrap().unwrap();
    }

    fn segments(dir: &Path) -> Vec<OsString> {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(LOG_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".log"))
            .collect();
        names.sort();
        names
    }

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    /// Many small segments: rotation, reads from the files (no cache), a truncation
    /// that removes whole segments and cuts one, a purge that removes the dead ones,
    /// and all of it as `open` reads it back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_rotate_truncate_purge_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::open(dir.path()).unwrap();
        let mut log = st.log.clone();
        {
            let mut inner = log.shared.log.lock();
            inner.segment_bytes = 200;
            inner.prealloc_bytes = 200;
            inner.cache_bytes = 0;
        }
        for i in 1..=60 {
            append(&log, vec![entry(1, i)]).await;
        }
        let before = segments(dir.path()).len();
        assert!(before >= 5, "{before} segments");
        let all = log.try_get_log_entries(1..=60).await.unwrap();
        assert_eq!(indexes(&all), (1..=60).map(|i| (1, i)).collect::<Vec<_>>());

        // A new leader overwrote 25..: everything from 25 on goes, then term 2 follows.
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 25))
            .await
            .unwrap();
        append(&log, (25..=40).map(|i| entry(2, i)).collect()).await;
        let expect: Vec<_> = (1..=24)
            .map(|i| (1, i))
            .chain((25..=40).map(|i| (2, i)))
            .collect();
        assert_eq!(indexes(&log.try_get_log_entries(..).await.unwrap()), expect);

        // openraft purges what a durable snapshot covers: take one at 30 first.
        let upto_30 = log.try_get_log_entries(..=30).await.unwrap();
        st.sm.apply_entries(upto_30).unwrap();
        st.sm.build().await.unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(2, 1), 30))
            .await
            .unwrap();
        // Removals are queued, not awaited by `purge`; a flush comes after them.
        log.flush().await.unwrap();
        let left = segments(dir.path());
        assert!(left.len() < before, "{left:?}");
        assert!(
            left.iter()
                .all(|n| n.to_string_lossy().as_ref() >= "00000000000000000026.log"),
            "a segment holding only purged entries is still there: {left:?}"
        );
        assert_eq!(
            indexes(&log.try_get_log_entries(..).await.unwrap()),
            (31..=40).map(|i| (2, i)).collect::<Vec<_>>()
        );
        drop((st, log));

        let st = crate::open(dir.path()).unwrap();
        let mut log = st.log.clone();
        assert_eq!(
            indexes(&log.try_get_log_entries(..).await.unwrap()),
            (31..=40).map(|i| (2, i)).collect::<Vec<_>>()
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(40));
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(30));
    }

    /// A huge gap (a damaged index, or a damaged segment name) is refused, not filled
    /// with a slot per missing index; a refused append leaves the log as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn huge_gaps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::open(dir.path()).unwrap();
        let mut log = st.log.clone();
        append(&log, vec![entry(1, 1), entry(1, 2)]).await;
        let far = 4 + MAX_GAP + 1;
        let refused = log.append_with_callback(vec![entry(1, 3), entry(1, far)], |_| {});
        assert!(
            matches!(refused, Err(StoreError::Malformed { .. })),
            "{refused:?}"
        );
        assert_eq!(
            indexes(&log.try_get_log_entries(..).await.unwrap()),
            vec![(1, 1), (1, 2)]
        );
        append(&log, vec![entry(1, 3)]).await;
        log.flush().await.unwrap();
        drop((st, log));

        // A segment whose name puts it far past the log.
        let forged = dir.path().join(LOG_DIR).join(segment_name(far));
        write_records(&forged, std::iter::once((far, &b"x"[..]))).unwrap();
        match crate::open(dir.path()) {
            Err(StoreError::Corrupt { what, .. }) => {
                assert!(what.contains("indexes after"), "{what}")
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
        }
    }

    /// Appends 1..=n one call (one batch, one fsync) at a time, then `batch` in one
    /// call; returns the store's directory, each index's record offset and the
    /// segment path.
    async fn written(n: u64, batch: &[u64]) -> (tempfile::TempDir, Vec<u64>, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::open(dir.path()).unwrap();
        for i in 1..=n {
            append(&st.log, vec![entry(1, i)]).await;
        }
        if !batch.is_empty() {
            append(&st.log, batch.iter().map(|&i| entry(1, i)).collect()).await;
        }
        let (offsets, path) = {
            let inner = st.log.shared.log.lock();
            let offsets = inner
                .slots
                .iter()
                .map(|s| s.as_ref().unwrap().offset)
                .collect();
            (offsets, inner.segments[0].file.path.clone())
        };
        drop(st);
        (dir, offsets, path)
    }

    /// What a crash leaves: no clean-stop marker (a no-op for versions without one).
    fn unclean(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(LOG_DIR).join(CLEAN_FILE));
    }

    fn damage(path: &Path, at: u64, mask: u8) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at as usize] ^= mask;
        std::fs::write(path, &bytes).unwrap();
    }

    fn last_index(dir: &Path) -> Result<Option<u64>, StoreError> {
        let st = crate::open(dir)?;
        Ok(st.log.shared.log.bounds().map(|b| b.1))
    }

    /// Issue 21, case (a): one unsynced write of several records torn in the middle
    /// (record 12 damaged, 13..15 intact, all beyond the last sync) is a torn tail:
    /// the store opens and drops 12.. (never acknowledged). Format 2 refused the
    /// store because an intact record followed the bad one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_torn_in_the_middle_beyond_the_sync_point_is_dropped() {
        let (dir, offsets, path) = written(10, &[11, 12, 13, 14, 15]).await;
        unclean(dir.path());
        // A byte inside record 12's payload (the batch 11..=15 shares one sync).
        damage(&path, offsets[12] - 2, 0x5a);
        assert_eq!(last_index(dir.path()).unwrap(), Some(11));
        // Appending goes on from there.
        let st = crate::open(dir.path()).unwrap();
        append(&st.log, vec![entry(2, 12)]).await;
        assert_eq!(st.log.shared.log.bounds(), Some((1, 12)));
    }

    /// Issue 21, case (b): a damaged length field of an acknowledged record that later
    /// writes followed is damage: refused, never cut. Format 2 missed the records
    /// after it and cut the log at 7 with a warning.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_length_of_a_synced_record_is_refused() {
        for (mask, what) in [(0x01u8, "one bit"), (0x80, "huge")] {
            let (dir, offsets, path) = written(20, &[]).await;
            unclean(dir.path());
            damage(&path, offsets[6] + if mask == 0x80 { 3 } else { 0 }, mask);
            match last_index(dir.path()) {
                Err(StoreError::Corrupt { what: msg, .. }) => {
                    assert!(
                        msg.contains("index 7") && msg.contains("synced"),
                        "{what}: {msg}"
                    )
                }
                other => panic!("{what}: expected Corrupt, got {other:?}"),
            }
        }
    }

    /// After a clean stop nothing is torn: even damage to the last write is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_clean_stop_any_bad_record_is_refused() {
        let (dir, offsets, path) = written(10, &[11, 12, 13, 14, 15]).await;
        damage(&path, offsets[14] + 30, 0x5a);
        assert!(matches!(
            last_index(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Issue 21, case (c): a crash at segment rotation leaves the next segment empty
    /// (or with a torn header) and, from a version that did not sync before rotating,
    /// a torn tail in the segment before it. The empty segment goes first, then the
    /// torn tail is classified in what is now the last segment: the store opens.
    /// Format 2 refused it ("bad record" in a segment that is not the last).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_at_rotation_leaves_an_openable_store() {
        for next in [&b""[..], &b"qrlog0"[..]] {
            let (dir, _, path) = written(5, &[]).await;
            unclean(dir.path());
            // Half a record of garbage after record 5, and the next segment created.
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            std::io::Write::write_all(&mut f, &[0x33; 21]).unwrap();
            std::fs::write(dir.path().join(LOG_DIR).join(segment_name(6)), next).unwrap();
            assert_eq!(last_index(dir.path()).unwrap(), Some(5), "{next:?}");
            assert_eq!(segments(dir.path()).len(), 1);
        }
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    /// The last segment is zero-filled a chunk ahead of its records, so an append's
    /// fdatasync finds the file's size unchanged (no inode write); a clean stop cuts
    /// the zeros again, and the reopened log fills ahead anew.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_go_over_zeros_written_ahead_and_a_clean_stop_cuts_them() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::open(dir.path()).unwrap();
        append(&st.log, vec![entry(1, 1)]).await;
        let path = st.log.shared.log.lock().segments[0].file.path.clone();
        assert_eq!(file_len(&path), PREALLOC_BYTES);
        for i in 2..=50 {
            append(&st.log, vec![entry(1, i)]).await;
            assert_eq!(file_len(&path), PREALLOC_BYTES, "after {i}");
        }
        let end = st.log.shared.log.lock().segments[0].end;
        drop(st);
        assert_eq!(
            file_len(&path),
            end,
            "a clean stop ends the file at its records"
        );

        let st = crate::open(dir.path()).unwrap();
        assert_eq!(st.log.shared.log.bounds(), Some((1, 50)));
        append(&st.log, vec![entry(1, 51)]).await;
        assert_eq!(file_len(&path), PREALLOC_BYTES);
    }

    /// After a crash the last segment ends in zeros written ahead: free space, not a
    /// torn tail. Nothing is cut or warned about, and the next record goes right
    /// after the last one, over the zeros.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_leaves_zeros_that_the_log_writes_over() {
        let (dir, _, path) = written(10, &[]).await;
        let end = file_len(&path);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, &vec![0u8; 100_000]).unwrap();
        drop(f);
        unclean(dir.path());

        let st = crate::open(dir.path()).unwrap();
        assert_eq!(st.log.shared.log.bounds(), Some((1, 10)));
        assert_eq!(file_len(&path), end + 100_000, "the zeros are kept");
        append(&st.log, vec![entry(2, 11)]).await;
        let at = st.log.shared.log.lock().slots[10].as_ref().unwrap().offset;
        assert_eq!(at, end, "record 11 follows record 10");
        assert_eq!(file_len(&path), end + 100_000);
        drop(st);
        let st = crate::open(dir.path()).unwrap();
        assert_eq!(st.log.shared.log.bounds(), Some((1, 11)));
    }

    /// A segment is cut to its records before the next one is created, so zeros at
    /// the end of any but the last segment are records the disk lost: refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zeros_at_the_end_of_an_earlier_segment_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::open(dir.path()).unwrap();
        st.log.set_limits_for_tests(200, 0, 4096);
        for i in 1..=20 {
            append(&st.log, vec![entry(1, i)]).await;
        }
        let files: Vec<(PathBuf, u64)> = {
            let inner = st.log.shared.log.lock();
            inner
                .segments
                .iter()
                .map(|s| (s.file.path.clone(), s.end))
                .collect()
        };
        assert!(files.len() >= 3, "{files:?}");
        // While the store runs: closed segments end at their records, the last one
        // is filled ahead.
        let (last, closed) = files.split_last().unwrap();
        for (path, end) in closed {
            assert_eq!(file_len(path), *end, "{}", path.display());
        }
        assert_eq!(file_len(&last.0), 4096);
        drop(st);

        let mut f = OpenOptions::new().append(true).open(&closed[0].0).unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 64]).unwrap();
        drop(f);
        unclean(dir.path());
        match last_index(dir.path()) {
            Err(StoreError::Corrupt { what, .. }) => assert!(what.contains("only zeros"), "{what}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    /// The record format of format 3 keeps format-2 segments readable: a store whose
    /// log is a v2 segment opens, and appends go to a new v3 segment.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_format_2_segment_is_read_and_appends_go_to_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::open(dir.path()).unwrap());
        unclean(dir.path());
        let payloads: Vec<Vec<u8>> = (1..=4)
            .map(|i| encode("e", &entry(1, i)).unwrap())
            .collect();
        write_records(
            &dir.path().join(LOG_DIR).join(segment_name(1)),
            payloads
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u64 + 1, &p[..])),
        )
        .unwrap();
        let st = crate::open(dir.path()).unwrap();
        append(&st.log, vec![entry(1, 5)]).await;
        drop(st);
        let st = crate::open(dir.path()).unwrap();
        let mut log = st.log.clone();
        assert_eq!(
            indexes(&log.try_get_log_entries(..).await.unwrap()),
            (1..=5).map(|i| (1, i)).collect::<Vec<_>>()
        );
        assert_eq!(segments(dir.path()).len(), 2);
    }
}
