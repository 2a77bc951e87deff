//! The current Raft snapshot as one file, `<data dir>/snapshot`.
//!
//! ```text
//! snapshot bytes | bincode SnapshotMeta | u64 LE meta length | u32 LE crc32 of all before
//! ```
//!
//! It used to be one sled value. sled copies such a value into its IO buffers and page
//! cache and keeps old versions until its segment cleaner runs: at a million leases a
//! node's sled directory held 490–640 MB for one 81 MB snapshot, and its cache a copy
//! of the snapshot in memory. A file costs one sequential write.
//!
//! **Written as it is built** ([`Writer`]): the snapshot bytes are appended piece by
//! piece, the crc computed as they pass, so a snapshot is never whole in memory; the
//! meta and trailer close it. **Read for sending** ([`open_data`]): the file is
//! checked (crc, read in [`CHECK_CHUNK`] pieces) and handed out as an open file of
//! the snapshot bytes, read chunk by chunk by whoever sends it.
//!
//! **Atomic replacement:** written to `snapshot.tmp`, fsync'd, renamed over
//! `snapshot`, then the directory is fsync'd; a crash leaves the old file or the new
//! one, never a mix. **Checked on read:** the crc covers everything, so a damaged file
//! is refused (`Malformed`), not restored. The meta sits at the end so that reading
//! the file yields the snapshot bytes in place, without a copy, and the meta alone can
//! be read from the tail.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::SnapshotMeta;

use crate::codec::{decode, encode};
use crate::vfs::{OpenHow, VFile, Vfs};
use crate::{NodeInfo, StoreError};

pub(crate) type SnapMeta = SnapshotMeta<u64, NodeInfo>;

pub(crate) const SNAPSHOT_FILE: &str = "snapshot";
const TMP_FILE: &str = "snapshot.tmp";
/// Where a follower receives a snapshot from its leader, chunk by chunk.
pub(crate) const RECV_FILE: &str = "snapshot.recv";
/// Bytes read at a time when checking a snapshot file's crc.
const CHECK_CHUNK: usize = 1 << 20;
/// Meta length and crc.
const TRAILER: usize = 12;

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(reason: impl Into<String>) -> StoreError {
    StoreError::Malformed {
        what: "snapshot file",
        reason: reason.into(),
    }
}

/// Replaces the snapshot in `dir` with `meta` and `data`, durably. On any error
/// (ENOSPC included) the old snapshot is left in place and the temporary file is
/// removed (best effort). (The store writes through [`Writer`].)
#[cfg(test)]
pub(crate) fn write(
    vfs: &dyn Vfs,
    dir: &Path,
    meta: &SnapMeta,
    data: &[u8],
) -> Result<(), StoreError> {
    let mut w = Writer::create(vfs, dir)?;
    w.append(vfs, data)?;
    w.finish(vfs, meta)
}

/// A snapshot file being written: snapshot bytes appended as they come, then
/// [`Writer::finish`] adds meta and trailer and replaces the snapshot durably. Any
/// error removes the temporary file (best effort) and leaves the old snapshot.
pub(crate) struct Writer {
    file: Box<dyn VFile>,
    tmp: PathBuf,
    dir: PathBuf,
    at: u64,
    crc: crc32fast::Hasher,
}

impl Writer {
    /// Start `snapshot.tmp` in `dir` (emptied if a crashed build left one).
    pub(crate) fn create(vfs: &dyn Vfs, dir: &Path) -> Result<Self, StoreError> {
        let tmp = dir.join(TMP_FILE);
        let file = vfs.open(&tmp, OpenHow::CreateTruncate).map_err(io(&tmp))?;
        Ok(Writer {
            file,
            tmp,
            dir: dir.to_path_buf(),
            at: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Snapshot bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.at
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, self.at)?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    fn fail(self, vfs: &dyn Vfs, e: std::io::Error) -> StoreError {
        // The old snapshot is untouched; a full disk gets its space back.
        let _ = vfs.remove_file(&self.tmp);
        io(&self.tmp)(e)
    }

    /// Append snapshot bytes. On error the writer is consumed by the caller's
    /// [`Writer::abort`] (or dropped: the tmp file is then removed at the next
    /// [`Writer::create`]).
    pub(crate) fn append(&mut self, vfs: &dyn Vfs, bytes: &[u8]) -> Result<(), StoreError> {
        self.crc.update(bytes);
        self.put(bytes).map_err(|e| {
            let _ = vfs.remove_file(&self.tmp);
            io(&self.tmp)(e)
        })
    }

    /// Give up: remove the temporary file (best effort).
    pub(crate) fn abort(self, vfs: &dyn Vfs) {
        let _ = vfs.remove_file(&self.tmp);
    }

    /// Add `meta` and the trailer, fsync, rename over `snapshot`, fsync the
    /// directory: the snapshot counts only after all of it.
    pub(crate) fn finish(mut self, vfs: &dyn Vfs, meta: &SnapMeta) -> Result<(), StoreError> {
        let meta_bytes = encode("snapshot meta", meta)?;
        let len = (meta_bytes.len() as u64).to_le_bytes();
        self.crc.update(&meta_bytes);
        self.crc.update(&len);
        let crc = self.crc.clone().finalize().to_le_bytes();
        let written = self
            .put(&meta_bytes)
            .and_then(|()| self.put(&len))
            .and_then(|()| self.put(&crc))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            return Err(self.fail(vfs, e));
        }
        let path = self.dir.join(SNAPSHOT_FILE);
        vfs.rename(&self.tmp, &path).map_err(io(&path))?;
        vfs.sync_dir(&self.dir).map_err(io(&self.dir))
    }
}

/// The meta length and where the meta starts, from the trailer of a file of `size`
/// bytes.
fn meta_span(size: u64, trailer: &[u8]) -> Result<(u64, usize), StoreError> {
    let meta_len = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    match size.checked_sub(TRAILER as u64 + meta_len) {
        Some(start) => Ok((start, meta_len as usize)),
        None => Err(malformed(format!(
            "{size} bytes cannot hold a {meta_len}-byte meta"
        ))),
    }
}

/// The snapshot in `dir`: meta and snapshot bytes, checked, in memory (tests; the
/// store reads it streamed: [`open_data`]). `None` if there is none.
#[cfg(test)]
pub(crate) fn read(vfs: &dyn Vfs, dir: &Path) -> Result<Option<(SnapMeta, Vec<u8>)>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let mut bytes = match vfs.read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    if bytes.len() < TRAILER {
        return Err(malformed(format!("{} bytes", bytes.len())));
    }
    let body = bytes.len() - 4;
    let stored = u32::from_le_bytes(bytes[body..].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..body]) != stored {
        return Err(malformed("checksum mismatch"));
    }
    let (start, meta_len) = meta_span(bytes.len() as u64, &bytes[body - 8..body])?;
    let start = start as usize;
    let meta: SnapMeta = decode("snapshot meta", &bytes[start..start + meta_len])?;
    bytes.truncate(start);
    Ok(Some((meta, bytes)))
}

/// A snapshot file open for reading: its meta, the file, and the length of the
/// snapshot bytes at its start.
pub(crate) type OpenSnapshot = (SnapMeta, Arc<dyn VFile>, u64);

/// The snapshot in `dir` as its meta and an open file whose first `len` bytes are the
/// snapshot bytes, after checking the crc of the whole file (read [`CHECK_CHUNK`] at
/// a time, so it is never whole in memory). `None` if there is none.
pub(crate) fn open_data(vfs: &dyn Vfs, dir: &Path) -> Result<Option<OpenSnapshot>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let Some((file, size)) = open_existing(vfs, &path)? else {
        return Ok(None);
    };
    let body = size - 4;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHECK_CHUNK];
    let mut at = 0u64;
    while at < body {
        let n = usize::try_from(body - at).map_or(CHECK_CHUNK, |left| left.min(CHECK_CHUNK));
        file.read_exact_at(&mut buf[..n], at).map_err(io(&path))?;
        crc.update(&buf[..n]);
        at += n as u64;
    }
    let (meta, start, stored) = read_tail(file.as_ref(), size, &path)?;
    if crc.finalize() != stored {
        return Err(malformed("checksum mismatch"));
    }
    Ok(Some((meta, Arc::from(file), start)))
}

/// The snapshot file in `dir`, open for reading (just written by this process, so
/// not checked again: see [`open_data`]).
pub(crate) fn open_current(vfs: &dyn Vfs, dir: &Path) -> Result<Arc<dyn VFile>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    Ok(Arc::from(
        vfs.open(&path, OpenHow::ReadWrite).map_err(io(&path))?,
    ))
}

/// Only the meta of the snapshot in `dir` (read from the file's tail; not checked
/// against the crc, which needs the whole file: `read` does that).
pub(crate) fn read_meta(vfs: &dyn Vfs, dir: &Path) -> Result<Option<SnapMeta>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let Some((file, size)) = open_existing(vfs, &path)? else {
        return Ok(None);
    };
    Ok(Some(read_tail(file.as_ref(), size, &path)?.0))
}

/// A snapshot file and its size in bytes.
type SizedFile = (Box<dyn VFile>, u64);

/// The snapshot file at `path` and its size, if it exists and is long enough to hold
/// a trailer.
fn open_existing(vfs: &dyn Vfs, path: &Path) -> Result<Option<SizedFile>, StoreError> {
    let file = match vfs.open(path, OpenHow::ReadWrite) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let size = file.size().map_err(io(path))?;
    if size < TRAILER as u64 {
        return Err(malformed(format!("{size} bytes")));
    }
    Ok(Some((file, size)))
}

/// The meta, where it starts (= the length of the snapshot bytes) and the crc the
/// trailer stores, read from the file's tail (the crc is not checked here).
fn read_tail(file: &dyn VFile, size: u64, path: &Path) -> Result<(SnapMeta, u64, u32), StoreError> {
    let mut trailer = [0u8; TRAILER];
    file.read_exact_at(&mut trailer, size - TRAILER as u64)
        .map_err(io(path))?;
    let stored = u32::from_le_bytes(trailer[8..].try_into().expect("4 bytes"));
    let (start, meta_len) = meta_span(size, &trailer)?;
    let mut meta = vec![0u8; meta_len];
    file.read_exact_at(&mut meta, start).map_err(io(path))?;
    Ok((decode("snapshot meta", &meta)?, start, stored))
}

/// Bytes of the snapshot file in `dir` (0 if there is none).
pub(crate) fn size(vfs: &dyn Vfs, dir: &Path) -> u64 {
    vfs.open(&dir.join(SNAPSHOT_FILE), OpenHow::ReadWrite)
        .and_then(|f| f.size())
        .unwrap_or(0)
}

pub(crate) fn exists(vfs: &dyn Vfs, dir: &Path) -> bool {
    vfs.open(&dir.join(SNAPSHOT_FILE), OpenHow::ReadWrite)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::RealFs;

    fn meta(index: u64) -> SnapMeta {
        SnapMeta {
            last_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(2, 1),
                index,
            )),
            last_membership: Default::default(),
            snapshot_id: format!("s-{index}"),
        }
    }

    #[test]
    fn round_trip_replace_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&RealFs, dir.path()).unwrap().is_none());
        assert!(read_meta(&RealFs, dir.path()).unwrap().is_none());
        write(&RealFs, dir.path(), &meta(7), b"first").unwrap();
        write(&RealFs, dir.path(), &meta(9), b"second snapshot").unwrap();
        let (m, data) = read(&RealFs, dir.path()).unwrap().unwrap();
        assert_eq!((m, data.as_slice()), (meta(9), &b"second snapshot"[..]));
        assert_eq!(read_meta(&RealFs, dir.path()).unwrap(), Some(meta(9)));
        assert!(!dir.path().join(TMP_FILE).exists());

        // Any flipped byte is caught by the crc.
        let path = dir.path().join(SNAPSHOT_FILE);
        let good = std::fs::read(&path).unwrap();
        for at in [0, 3, good.len() - 13, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(read(&RealFs, dir.path()), Err(StoreError::Malformed { .. })),
                "byte {at}"
            );
        }
        std::fs::write(&path, &good[..5]).unwrap();
        assert!(read(&RealFs, dir.path()).is_err());
    }

    /// Written in pieces = written whole; `open_data` checks the crc and hands out
    /// exactly the snapshot bytes.
    #[test]
    fn written_in_pieces_and_opened_for_sending() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(&RealFs, dir.path()).unwrap();
        for piece in [&b"snap"[..], b"", b"shot ", b"bytes"] {
            w.append(&RealFs, piece).unwrap();
        }
        assert_eq!(w.len(), 14);
        w.finish(&RealFs, &meta(4)).unwrap();
        let (m, data) = read(&RealFs, dir.path()).unwrap().unwrap();
        assert_eq!((m, data.as_slice()), (meta(4), &b"snapshot bytes"[..]));
        let (m, file, len) = open_data(&RealFs, dir.path()).unwrap().unwrap();
        assert_eq!((m, len), (meta(4), 14));
        let mut got = vec![0u8; 14];
        file.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, b"snapshot bytes");

        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bad = std::fs::read(&path).unwrap();
        bad[2] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            open_data(&RealFs, dir.path()),
            Err(StoreError::Malformed { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(open_data(&RealFs, dir.path()).unwrap().is_none());
    }
}
