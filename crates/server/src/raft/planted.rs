//! A deliberately planted bug, to prove that the chaos suite's checker can fail
//! (`tests/chaos.rs`, test `planted_bug_is_caught`).
//!
//! With `QUORATE_PLANTED_BUG=follower-local-grant`, a follower answers acquires from a
//! clone of its own state machine instead of forwarding them through Raft: grants that
//! no other replica knows about, so limits are exceeded and acknowledged leases go
//! missing. Compiled only with the `planted-bugs` cargo feature, which only the chaos
//! test build enables (`scripts/chaos.sh`, `.ci/run`); a normal build has no such code
//! path, and the variable is reported and ignored.

use quorate_core::{Command, Op, Reply};

use super::batcher::wall_clock_ms;
use super::Node;

/// The variable that enables a planted bug.
pub const ENV: &str = "QUORATE_PLANTED_BUG";
/// Its one recognised value.
pub const FOLLOWER_LOCAL_GRANT: &str = "follower-local-grant";

fn requested() -> Option<String> {
    std::env::var(ENV).ok().filter(|v| !v.is_empty())
}

/// True when this debug build runs with the follower-local-grant bug enabled.
#[cfg(debug_assertions)]
pub fn follower_local_grant() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| requested().as_deref() == Some(FOLLOWER_LOCAL_GRANT))
}

/// Log loudly at startup if the variable is set.
pub fn announce() {
    let Some(value) = requested() else {
        return;
    };
    if !cfg!(debug_assertions) {
        tracing::error!("{ENV}={value:?} ignored: planted bugs exist in debug builds only");
    } else if value == FOLLOWER_LOCAL_GRANT {
        tracing::warn!(
            "{ENV}={value}: followers grant acquires WITHOUT Raft (deliberate bug for \
             the chaos suite; never use outside tests)"
        );
    } else {
        tracing::error!("{ENV}={value:?} is not a known planted bug; ignored");
    }
}

impl Node {
    /// The planted bug (see [`planted`]): on a follower, decide an acquire on a private
    /// copy of the local state and answer without Raft. `None` = behave correctly.
    #[cfg(debug_assertions)]
    pub(super) fn planted_follower_local_grant(&self, op: &Op) -> Option<Reply> {
        if !matches!(op.inner(), Op::Acquire(_)) || !follower_local_grant() || self.is_leader() {
            return None;
        }
        let mut copy = self.sm.read(|s| s.clone());
        let cmd = Command {
            time_ms: wall_clock_ms(),
            ops: vec![op.clone()],
        };
        copy.apply(&cmd).pop()
    }
}
