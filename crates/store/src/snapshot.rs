//! Snapshot bytes: what is stored in the `snapshot` tree and streamed to followers.
//!
//! ```text
//! b"QSNP" | version: u8 = 1 | header_len: u32 LE | header (bincode) | core bytes
//! header = { last_applied: Option<LogId>, last_membership: StoredMembership }
//! core bytes = quorate_core::State::snapshot()
//! ```
//!
//! The header makes a snapshot self-describing: a follower installing it checks that
//! it agrees with the `SnapshotMeta` openraft sent alongside, and a restarting node
//! takes last-applied, membership and core state from one blob, so the three can
//! never come from different points in the log. The core bytes are appended raw rather
//! than bincode-wrapped to avoid another copy and a per-byte encode of what can be
//! hundreds of megabytes.

use openraft::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::{NodeInfo, StoreError};

const MAGIC: &[u8; 4] = b"QSNP";
const VERSION: u8 = 1;
const PREFIX_LEN: usize = 4 + 1 + 4;

/// The part of a snapshot that is openraft's, not core's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) last_applied: Option<LogId<u64>>,
    pub(crate) last_membership: StoredMembership<u64, NodeInfo>,
}

/// The bytes before the core bytes: magic, version, header length and header. A
/// snapshot written as it is built is this, then the core bytes as they come.
pub(crate) fn encode_prefix(header: &Header) -> Result<Vec<u8>, StoreError> {
    let h = encode("snapshot header", header)?;
    let h_len = u32::try_from(h.len()).map_err(|_| StoreError::Malformed {
        what: "snapshot header",
        reason: format!("{} bytes is too long", h.len()),
    })?;
    let mut out = Vec::with_capacity(PREFIX_LEN + h.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&h_len.to_le_bytes());
    out.extend_from_slice(&h);
    Ok(out)
}

/// Frames `core` (from `State::snapshot`) with its header (snapshots are written
/// streamed: [`encode_prefix`], then the core bytes as they come).
#[cfg(test)]
pub(crate) fn encode_snapshot(header: &Header, core: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut out = encode_prefix(header)?;
    out.reserve_exact(core.len());
    out.extend_from_slice(core);
    Ok(out)
}

/// Reads the prefix and header from the start of `reader`, leaving it at the core
/// bytes; returns the header and the prefix's length.
pub(crate) fn read_header(reader: &mut impl std::io::Read) -> Result<(Header, u64), StoreError> {
    let malformed = |reason: String| StoreError::Malformed {
        what: "snapshot",
        reason,
    };
    let mut prefix = [0u8; PREFIX_LEN];
    reader
        .read_exact(&mut prefix)
        .map_err(|e| malformed(format!("cannot read its prefix: {e}")))?;
    if &prefix[..4] != MAGIC {
        return Err(malformed("no QSNP magic prefix".into()));
    }
    if prefix[4] != VERSION {
        return Err(malformed(format!("unsupported version {}", prefix[4])));
    }
    let h_len = u32::from_le_bytes(prefix[5..9].try_into().expect("4 bytes"));
    // A header is a log id and a membership: far below this; a larger length is
    // damage, not a reason to allocate.
    if h_len > 1 << 20 {
        return Err(malformed(format!("header length {h_len}")));
    }
    let mut h = vec![0u8; h_len as usize];
    reader
        .read_exact(&mut h)
        .map_err(|e| malformed(format!("cannot read its {h_len}-byte header: {e}")))?;
    let header = decode("snapshot header", &h)?;
    Ok((header, (PREFIX_LEN as u64) + u64::from(h_len)))
}

/// Splits snapshot bytes into header and core bytes, without copying the latter
/// (the store reads them streamed: [`read_header`]).
#[cfg(test)]
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<(Header, &[u8]), StoreError> {
    let malformed = |reason: String| StoreError::Malformed {
        what: "snapshot",
        reason,
    };
    if bytes.len() < PREFIX_LEN || &bytes[..4] != MAGIC {
        return Err(malformed(format!(
            "{} bytes without the QSNP magic prefix",
            bytes.len()
        )));
    }
    if bytes[4] != VERSION {
        return Err(malformed(format!("unsupported version {}", bytes[4])));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[5..9]);
    let h_len = u32::from_le_bytes(len) as usize;
    let rest = &bytes[PREFIX_LEN..];
    if rest.len() < h_len {
        return Err(malformed(format!(
            "header length {h_len} exceeds the {} bytes left",
            rest.len()
        )));
    }
    let header = decode("snapshot header", &rest[..h_len])?;
    Ok((header, &rest[h_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let header = Header {
            last_applied: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 42)),
            last_membership: StoredMembership::default(),
        };
        let bytes = encode_snapshot(&header, b"core-bytes").unwrap();
        let (h, core) = decode_snapshot(&bytes).unwrap();
        assert_eq!(h, header);
        assert_eq!(core, b"core-bytes");

        assert!(decode_snapshot(b"").is_err());
        assert!(decode_snapshot(b"QSNP\x02\0\0\0\0").is_err());
        let mut truncated = bytes.clone();
        truncated.truncate(PREFIX_LEN + 2);
        assert!(decode_snapshot(&truncated).is_err());

        // Read from a stream: the same header, the reader left at the core bytes.
        let mut r = &bytes[..];
        let (h, prefix) = read_header(&mut r).unwrap();
        assert_eq!((h, r), (header, &b"core-bytes"[..]));
        assert_eq!(prefix as usize, bytes.len() - 10);
        assert!(read_header(&mut &truncated[..]).is_err());
        assert!(read_header(&mut &b"QSNP\x01\xff\xff\xff\xff"[..]).is_err());
    }
}
