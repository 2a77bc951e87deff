//! Typed values of `cluster.toml`: durations in milliseconds, checked when parsed.
//!
//! The file keeps its `*_ms` integer keys (operators know them, and environment
//! overrides are plain numbers), but code never sees a bare `u64` of milliseconds:
//! each becomes a [`Millis`] (any duration) or a [`NonZeroMillis`] (one that must be
//! positive, such as a timeout or an interval), so a zero heartbeat is a parse error
//! naming the key, not a busy loop at run time. Counts that must be positive use the
//! standard `NonZeroUsize`/`NonZeroU64` the same way.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration written as whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "u64", into = "u64")]
pub struct Millis(u64);

impl Millis {
    pub const fn new(ms: u64) -> Self {
        Self(ms)
    }

    pub const fn ms(self) -> u64 {
        self.0
    }

    pub const fn get(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl From<u64> for Millis {
    fn from(ms: u64) -> Self {
        Self(ms)
    }
}

impl From<Millis> for u64 {
    fn from(m: Millis) -> u64 {
        m.0
    }
}

/// A positive duration written as whole milliseconds (0 is refused at parse time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct NonZeroMillis(u64);

impl NonZeroMillis {
    /// `ms` must be positive; `None` otherwise.
    pub const fn new(ms: u64) -> Option<Self> {
        if ms == 0 {
            None
        } else {
            Some(Self(ms))
        }
    }

    pub const fn ms(self) -> u64 {
        self.0
    }

    pub const fn get(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

/// Why a [`NonZeroMillis`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be at least 1 (milliseconds)")]
pub struct ZeroMillis;

impl TryFrom<u64> for NonZeroMillis {
    type Error = ZeroMillis;

    fn try_from(ms: u64) -> Result<Self, ZeroMillis> {
        Self::new(ms).ok_or(ZeroMillis)
    }
}

impl From<NonZeroMillis> for u64 {
    fn from(m: NonZeroMillis) -> u64 {
        m.0
    }
}

/// `NonZeroMillis::new` for constants known to be positive.
pub(crate) const fn nz_ms(ms: u64) -> NonZeroMillis {
    match NonZeroMillis::new(ms) {
        Some(m) => m,
        None => panic!("zero duration constant"),
    }
}
