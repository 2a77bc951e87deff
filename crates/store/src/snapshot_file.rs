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
//! **Atomic replacement:** written to `snapshot.tmp`, fsync'd, renamed over
//! `snapshot`, then the directory is fsync'd; a crash leaves the old file or the new
//! one, never a mix. **Checked on read:** the crc covers everything, so a damaged file
//! is refused (`Malformed`), not restored. The meta sits at the end so that reading
//! the file yields the snapshot bytes in place, without a copy, and the meta alone can
//! be read from the tail.

use std::path::Path;

use openraft::SnapshotMeta;

use crate::codec::{decode, encode};
use crate::vfs::{OpenHow, Vfs};
use crate::{NodeInfo, StoreError};

pub(crate) type SnapMeta = SnapshotMeta<u64, NodeInfo>;

pub(crate) const SNAPSHOT_FILE: &str = "snapshot";
const TMP_FILE: &str = "snapshot.tmp";
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
/// removed (best effort).
pub(crate) fn write(
    vfs: &dyn Vfs,
    dir: &Path,
    meta: &SnapMeta,
    data: &[u8],
) -> Result<(), StoreError> {
    let tmp = dir.join(TMP_FILE);
    let meta_bytes = encode("snapshot meta", meta)?;
    let mut crc = crc32fast::Hasher::new();
    let len = (meta_bytes.len() as u64).to_le_bytes();
    crc.update(data);
    crc.update(&meta_bytes);
    crc.update(&len);
    let written = vfs.open(&tmp, OpenHow::CreateTruncate).and_then(|file| {
        let mut at = 0u64;
        for part in [data, &meta_bytes, &len, &crc.finalize().to_le_bytes()] {
            file.write_all_at(part, at)?;
            at += part.len() as u64;
        }
        file.sync_data()
    });
    if let Err(e) = written {
        // The old snapshot is untouched; a full disk gets its space back.
        let _ = vfs.remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    let path = dir.join(SNAPSHOT_FILE);
    vfs.rename(&tmp, &path).map_err(io(&path))?;
    vfs.sync_dir(dir).map_err(io(dir))
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

/// The snapshot in `dir`: meta and snapshot bytes, checked. `None` if there is none.
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

/// Only the meta of the snapshot in `dir` (read from the file's tail; not checked
/// against the crc, which needs the whole file: `read` does that).
pub(crate) fn read_meta(vfs: &dyn Vfs, dir: &Path) -> Result<Option<SnapMeta>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let file = match vfs.open(&path, OpenHow::ReadWrite) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let size = file.size().map_err(io(&path))?;
    if size < TRAILER as u64 {
        return Err(malformed(format!("{size} bytes")));
    }
    let mut trailer = [0u8; TRAILER];
    file.read_exact_at(&mut trailer, size - TRAILER as u64)
        .map_err(io(&path))?;
    let (start, meta_len) = meta_span(size, &trailer)?;
    let mut meta = vec![0u8; meta_len];
    file.read_exact_at(&mut meta, start).map_err(io(&path))?;
    Ok(Some(decode("snapshot meta", &meta)?))
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
}
