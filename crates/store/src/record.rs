//! The byte layout of a log segment (`raft_log.rs`), in its two versions.
//!
//! A **v3 segment** (format 3, every segment this version creates) starts with a
//! 16-byte header, `SEGMENT_MAGIC ‖ u64 LE first index`, made durable before any
//! record is written, then holds records
//!
//! ```text
//! u32 LE payload length | u32 LE crc32(index ‖ payload) | u64 LE index
//!   | u64 LE synced | u32 LE crc32(the 24 header bytes before) | payload
//! ```
//!
//! `synced` is the segment's durable length when the flusher wrote the record: every
//! byte before it had been `fdatasync`'d. The flusher stamps it (and the header crc)
//! into the bytes just before its `pwrite` (`stamp`), so it is exact, costs no extra
//! fsync, and is itself protected by the header crc. Recovery uses it to tell a torn
//! write from damage without guessing by position: a bad record that starts below the
//! largest `synced` of any intact record in the segment was durable before a later
//! write, so it is damage and the store is refused; one at or beyond it lies past
//! everything this segment is known to have synced, which is all a crash can tear.
//!
//! A **v2 segment** (format 2, written by earlier versions and by the format-1
//! migration) has no header and 16-byte records without `synced` or header crc. v2
//! segments are read as they are; appends never go to one (the next append after
//! open starts a v3 segment), so they only shrink away through purges.

/// Magic at the start of a v3 segment.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"qrlog03\n";
/// Size of a v3 segment's header.
pub(crate) const SEGMENT_HEADER: u64 = 16;
/// Record header of a v3 segment.
pub(crate) const HEADER: usize = 28;
/// Record header of a v2 segment.
pub(crate) const HEADER_V2: usize = 16;
/// How [`parse`] starts its error for an intact record with the wrong index.
pub(crate) const MISPLACED: &str = "misplaced record";

/// Which record layout a segment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V2,
    V3,
}

impl Version {
    pub(crate) fn header(self) -> usize {
        match self {
            Version::V2 => HEADER_V2,
            Version::V3 => HEADER,
        }
    }

    /// Offset of the first record.
    pub(crate) fn start(self) -> u64 {
        match self {
            Version::V2 => 0,
            Version::V3 => SEGMENT_HEADER,
        }
    }
}

/// The header of a v3 segment whose first index is `first`.
pub(crate) fn segment_header(first: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEGMENT_HEADER as usize);
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&first.to_le_bytes());
    out
}

/// The version of a segment whose file starts with `bytes`: v3 if the magic is there
/// (or a prefix of it: a header torn by a crash during the segment's creation), else v2.
pub(crate) fn version_of(bytes: &[u8]) -> Version {
    let n = bytes.len().min(SEGMENT_MAGIC.len());
    if bytes[..n] == SEGMENT_MAGIC[..n] {
        Version::V3
    } else {
        Version::V2
    }
}

fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Appends one v3 record for `index` to `out`, with `synced` and the header crc left
/// zero for [`stamp`]. The caller has checked that the payload fits a u32 length.
pub(crate) fn put(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("checked by the caller");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc(index, payload).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&[0u8; 12]);
    out.extend_from_slice(payload);
}

/// Appends one v2 record (the format-1 migration writes v2 segments).
pub(crate) fn put_v2(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("checked by the caller");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc(index, payload).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Writes `synced` and the header crc into every v3 record of `bytes` (whole records,
/// as [`put`] made them). Called by the flusher right before it writes them.
pub(crate) fn stamp(bytes: &mut [u8], synced: u64) {
    let mut off = 0;
    while off + HEADER <= bytes.len() {
        let len = u32_at(bytes, off) as usize;
        bytes[off + 16..off + 24].copy_from_slice(&synced.to_le_bytes());
        let hcrc = crc32fast::hash(&bytes[off..off + 24]);
        bytes[off + 24..off + 28].copy_from_slice(&hcrc.to_le_bytes());
        off += HEADER + len;
    }
}

/// An intact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) len: u32,
    pub(crate) index: u64,
    /// v3: the segment's durable length when this record was written; v2: 0.
    pub(crate) synced: u64,
}

/// Parses the record at `off` without checking its index.
pub(crate) fn parse_any(bytes: &[u8], off: usize, v: Version) -> Result<Record, String> {
    let h = v.header();
    let Some(header) = bytes.get(off..off.saturating_add(h)) else {
        let left = bytes.len().saturating_sub(off);
        return Err(format!("{left} bytes left, a header needs {h}"));
    };
    let synced = match v {
        Version::V2 => 0,
        Version::V3 => {
            if crc32fast::hash(&header[..24]) != u32_at(header, 24) {
                return Err("header checksum mismatch".into());
            }
            u64_at(header, 16)
        }
    };
    let len = u32_at(header, 0);
    let sum = u32_at(header, 4);
    let index = u64_at(header, 8);
    let start = off + h;
    let Some(payload) = bytes.get(start..start.saturating_add(len as usize)) else {
        return Err(format!(
            "record of {len} bytes runs past the end of the file"
        ));
    };
    if crc(index, payload) != sum {
        return Err("checksum mismatch".into());
    }
    Ok(Record { len, index, synced })
}

/// Parses the record at `off`: Ok if it is intact and holds `index`.
pub(crate) fn parse(bytes: &[u8], off: usize, index: u64, v: Version) -> Result<Record, String> {
    let r = parse_any(bytes, off, v)?;
    if r.index != index {
        // An intact record in the wrong place: never what a torn write leaves.
        return Err(format!(
            "{MISPLACED}: the record says index {}, expected {index}",
            r.index
        ));
    }
    Ok(r)
}

/// The largest `synced` of the intact v3 records at or after `from` (0 if none),
/// found by trying every offset: after a damaged length field the records that follow
/// cannot be reached by walking. A candidate must pass both crcs and claim a `synced`
/// no larger than its own offset, so garbage is not taken for a record.
pub(crate) fn max_synced_from(bytes: &[u8], from: usize) -> u64 {
    let mut best = 0;
    let mut off = from;
    while off + HEADER <= bytes.len() {
        match parse_any(bytes, off, Version::V3) {
            Ok(r) if r.synced <= off as u64 => {
                best = best.max(r.synced);
                off += HEADER + r.len as usize;
            }
            _ => off += 1,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_then_parse_and_resync() {
        let mut buf = Vec::new();
        put(&mut buf, 5, b"hello");
        put(&mut buf, 6, b"world!");
        stamp(&mut buf, 99);
        let r = parse(&buf, 0, 5, Version::V3).unwrap();
        assert_eq!((r.len, r.synced), (5, 99));
        let second = HEADER + 5;
        assert_eq!(parse(&buf, second, 6, Version::V3).unwrap().synced, 99);
        assert!(parse(&buf, second, 7, Version::V3)
            .unwrap_err()
            .starts_with(MISPLACED));
        // Unstamped records fail the header crc.
        let mut raw = Vec::new();
        put(&mut raw, 5, b"hello");
        assert!(parse(&raw, 0, 5, Version::V3).is_err());
        // A damaged length: walking stops, the resync still finds the next record.
        // (99 > its offset: not accepted as a plausible synced length.)
        let mut damaged = Vec::new();
        put(&mut damaged, 5, b"hello");
        stamp(&mut damaged, 0);
        let at = damaged.len();
        put(&mut damaged, 6, b"world!");
        stamp(&mut damaged[at..], at as u64);
        damaged[0] ^= 0x7;
        assert!(parse(&damaged, 0, 5, Version::V3).is_err());
        assert_eq!(max_synced_from(&damaged, 1), at as u64);
        assert_eq!(version_of(b"qrlo"), Version::V3);
        assert_eq!(version_of(b""), Version::V3);
        assert_eq!(version_of(&damaged), Version::V2);
    }
}
