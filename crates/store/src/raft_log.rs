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
//! `<data dir>/raftlog/<first index, 20 digits>.log`, one file per segment. A segment
//! is a sequence of records
//!
//! ```text
//! u32 LE payload length | u32 LE crc32(index ‖ payload) | u64 LE index | payload
//! ```
//!
//! where the payload is the bincode `Entry<TypeConfig>` (the codec of `db.rs`). The
//! next append starts a new segment once the last one holds [`SEGMENT_BYTES`], so a
//! purge deletes whole files instead of rewriting one.
//!
//! ## Who writes what, and when it is durable
//!
//! [`RaftLog::append`] reserves the records' place (segment, offset) under the lock,
//! keeps their bytes in memory, and queues a write for the flusher thread
//! (`flusher.rs`); the entries are readable at once. The flusher writes with `pwrite`
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
//! Every record is checked (length, crc, index = expected index). A bad record in the
//! **last** segment is a write torn by a crash: the segment is cut there, with a
//! warning, since nothing from there on was acknowledged — unless the bad record is
//! intact but carries another index (a lost record), or the record after it is intact:
//! a torn tail produces neither, and the store is refused as corrupt. A bad record in
//! an earlier segment, or segments that overlap, are corruption. Indexes inside a
//! segment are contiguous; a gap between segments is read back as a gap (see
//! [`RaftLog::append`]), so a segment file deleted by hand from the middle of the log
//! is not detected. Empty trailing segments (created just before a crash) are
//! removed.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use openraft::Entry;

use crate::codec::{decode, encode};
use crate::flusher::{sync_dir, Done, Flusher, Job, SegmentFile};
use crate::{StoreError, TypeConfig};

/// Directory of the segment files inside the data directory.
pub(crate) const LOG_DIR: &str = "raftlog";
/// A segment is closed once it holds this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;
/// Encoded entries kept in memory for replication reads.
const CACHE_BYTES: usize = 8 << 20;
const HEADER: usize = 16;
/// Largest gap between consecutive indexes that `append` and `open` accept (gaps are
/// for openraft's conformance suite; openraft itself never leaves one): a damaged
/// segment name must not make `open` allocate a slot per missing index.
const MAX_GAP: u64 = 1 << 16;
/// How [`parse_record`] starts its error for an intact record with the wrong index.
const MISPLACED: &str = "misplaced record";

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
    /// [`SEGMENT_BYTES`] and [`CACHE_BYTES`]; tests lower them.
    segment_bytes: u64,
    cache_bytes: usize,
}

/// The log files of one store. Shared by the log store and its readers.
pub(crate) struct RaftLog {
    dir: PathBuf,
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

fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends one record for `index` to `out`.
fn put_record(out: &mut Vec<u8>, index: u64, payload: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(payload.len()).map_err(|_| StoreError::Malformed {
        what: "log entry",
        reason: format!("{} bytes do not fit a record", payload.len()),
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc(index, payload).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Writes a new segment file at `path` holding `records` (index, payload) and syncs
/// it. Used by the migration from format 1, before the log is opened.
pub(crate) fn write_records<'a>(
    path: &Path,
    records: impl Iterator<Item = (u64, &'a [u8])>,
) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    for (index, payload) in records {
        put_record(&mut buf, index, payload)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all_at(&buf, 0).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// What scanning one segment found.
struct Scanned {
    /// (offset, payload length) per record, from the segment's first index on.
    records: Vec<(u64, u32)>,
    /// Offset of the first bad record, if any.
    bad_at: Option<(u64, String)>,
    /// Whether the bad record is intact but misplaced, or an intact record follows it:
    /// damage in place, not a torn tail.
    intact_after_bad: bool,
}

/// Parses one record at `off`: Ok(payload length) if it is intact and has `index`.
fn parse_record(bytes: &[u8], off: usize, index: u64) -> Result<u32, String> {
    let Some(header) = bytes.get(off..off.saturating_add(HEADER)) else {
        let left = bytes.len().saturating_sub(off);
        return Err(format!("{left} bytes left, a header needs {HEADER}"));
    };
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    let len = word(0);
    let sum = word(4);
    let at = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let start = off + HEADER;
    let Some(payload) = bytes.get(start..start.saturating_add(len as usize)) else {
        return Err(format!(
            "record of {len} bytes runs past the end of the file"
        ));
    };
    if crc(at, payload) != sum {
        return Err("checksum mismatch".into());
    }
    if at != index {
        // An intact record in the wrong place: never what a torn write leaves.
        return Err(format!(
            "{MISPLACED}: the record says index {at}, expected {index}"
        ));
    }
    Ok(len)
}

fn scan(bytes: &[u8], first: u64) -> Scanned {
    let mut records = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        let index = first + records.len() as u64;
        match parse_record(bytes, off, index) {
            Ok(len) => {
                records.push((off as u64, len));
                off += HEADER + len as usize;
            }
            Err(why) => {
                // A torn tail ends the file; an intact next record means the bad one
                // was damaged in place.
                let declared = bytes
                    .get(off..off + 4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
                let intact_after_bad = why.starts_with(MISPLACED)
                    || declared.is_some_and(|len| {
                        parse_record(bytes, off.saturating_add(HEADER + len), index + 1).is_ok()
                    });
                return Scanned {
                    records,
                    bad_at: Some((off as u64, why)),
                    intact_after_bad,
                };
            }
        }
    }
    Scanned {
        records,
        bad_at: None,
        intact_after_bad: false,
    }
}

fn open_segment(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

impl RaftLog {
    /// Opens `<data dir>/raftlog`, checks every record and drops a torn tail. `last_purged` entries and below are not loaded.
    pub(crate) fn open(data_dir: &Path, last_purged: Option<u64>) -> Result<Self, StoreError> {
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
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let name = entry.map_err(io_err(&dir))?.file_name();
            let name = name.to_string_lossy();
            let first = name
                .strip_suffix(".log")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| corrupt(format!("unexpected file {name:?} in the log directory")))?;
            firsts.push(first);
        }
        firsts.sort_unstable();

        let mut inner = Inner {
            segments: VecDeque::new(),
            first: 0,
            slots: VecDeque::new(),
            cached_bytes: 0,
            evicted: 0,
            next_seq: 1,
            segment_bytes: SEGMENT_BYTES,
            cache_bytes: CACHE_BYTES,
        };
        let n = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = dir.join(segment_name(first));
            let last_segment = i + 1 == n;
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let scanned = scan(&bytes, first);
            let mut end = bytes.len() as u64;
            if let Some((off, why)) = &scanned.bad_at {
                let index = first + scanned.records.len() as u64;
                if !last_segment || scanned.intact_after_bad {
                    return Err(corrupt(format!(
                        "{}: bad record for index {index} at byte {off}: {why}",
                        path.display()
                    )));
                }
                tracing::warn!(
                    path = %path.display(), index, offset = off, reason = %why,
                    dropped_bytes = bytes.len() as u64 - off,
                    "dropping the torn tail of the log (never acknowledged)"
                );
                end = *off;
            }
            let file = open_segment(&path)?;
            if end < bytes.len() as u64 {
                file.set_len(end).map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
            }
            if scanned.records.is_empty() && last_segment {
                // Created just before a crash, never written.
                drop(file);
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                sync_dir(&dir).map_err(io_err(&dir))?;
                continue;
            }
            let expected = inner.first + inner.slots.len() as u64;
            if !inner.slots.is_empty() && first < expected {
                return Err(corrupt(format!(
                    "segment {} starts at index {first}, inside the previous one (up to {})",
                    path.display(),
                    expected - 1
                )));
            }
            let file = Arc::new(SegmentFile {
                path: path.clone(),
                file: OnceLock::from(file),
            });
            for (k, &(off, len)) in scanned.records.iter().enumerate() {
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
                    len,
                    seq: 0,
                    cached: None,
                }));
            }
            let next = first + scanned.records.len() as u64;
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
            inner: Mutex::new(inner),
            written_seq: Arc::new(AtomicU64::new(0)),
        })
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
        // leaves the log as it was (`put_record` below cannot fail after this check).
        let prepared = entries
            .into_iter()
            .map(|entry| {
                let payload = encode("log entry", &entry)?;
                if u32::try_from(payload.len()).is_err() {
                    return Err(StoreError::Malformed {
                        what: "log entry",
                        reason: format!("{} bytes do not fit a record", payload.len()),
                    });
                }
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
            let rotate = inner
                .segments
                .back()
                .is_none_or(|s| s.end >= inner.segment_bytes || s.next != index);
            if overwrite || rotate {
                if let Some((file, offset)) = buf_file.take() {
                    let seq = inner.next_seq - 1;
                    let bytes = std::mem::take(&mut buf);
                    jobs.push(Job::Write {
                        file,
                        offset,
                        bytes,
                        seq,
                    });
                }
            }
            if overwrite {
                self.cut(&mut inner, index, &mut jobs);
            }
            let rotate = inner
                .segments
                .back()
                .is_none_or(|s| s.end >= inner.segment_bytes || s.next != index);
            if rotate {
                let file = Arc::new(SegmentFile {
                    path: self.dir.join(segment_name(index)),
                    file: OnceLock::new(),
                });
                inner.segments.push_back(Segment {
                    first: index,
                    file: file.clone(),
                    end: 0,
                    next: index,
                });
                jobs.push(Job::Create(file));
                jobs.push(Job::SyncDir(self.dir.clone()));
            }
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let segment = inner.segments.back_mut().expect("a segment exists");
            let offset = segment.end;
            segment.end += (HEADER + payload.len()) as u64;
            segment.next = index + 1;
            let file = segment.file.clone();
            if buf_file.is_none() {
                buf_file = Some((file.clone(), offset));
            }
            put_record(&mut buf, index, &payload)?;
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
            });
        }
        self.evict(&mut inner);
        jobs.push(Job::Done(done));
        // Under the lock: queue order must be reservation order.
        flusher.submit_all(jobs);
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
                    let mut record = vec![0u8; HEADER + len as usize];
                    file.get()
                        .and_then(|f| f.read_exact_at(&mut record, offset))
                        .map_err(io_err(&file.path))?;
                    parse_record(&record, 0, index).map_err(|reason| StoreError::Malformed {
                        what: "log record",
                        reason: format!("index {index}: {reason}"),
                    })?;
                    record[HEADER..].into()
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
}
