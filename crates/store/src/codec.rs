//! The one bincode configuration of everything the store writes (log entries, vote,
//! ids, snapshot meta): varint integers, strict decoding.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::StoreError;

/// bincode with varint integers (entries are mostly small numbers and strings) and
/// strict decoding: trailing garbage is an error, not ignored.
fn codec() -> impl Options {
    bincode::DefaultOptions::new().reject_trailing_bytes()
}

pub(crate) fn encode<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    codec()
        .serialize(value)
        .map_err(|source| StoreError::Codec { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    codec()
        .deserialize(bytes)
        .map_err(|source| StoreError::Codec { what, source })
}
