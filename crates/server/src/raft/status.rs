//! What a node says about itself: cluster view, readiness, probe answers, gauges.
//!
//! All of it is local (not linearizable) and cheap: it reads openraft's metrics
//! channel and the state machine's applied index and digest.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use quorate_proto::ClusterResponse;
use tokio::time::timeout;

use super::batcher::wall_clock_ms;
use super::membership::members_of;
use super::{Node, NONE};
use crate::backend::NodeError;
use crate::peer::protocol::ProbeResponse;

impl Node {
    /// The committed index as this node knows it; `Err` if Raft did not answer.
    pub(super) async fn committed_index(&self) -> Result<Option<u64>, NodeError> {
        let q = self
            .raft
            .with_raft_state(|st| st.committed.as_ref().map(|l| l.index));
        match timeout(Duration::from_secs(1), q).await {
            Ok(Ok(c)) => {
                self.committed_cache
                    .store(c.unwrap_or(NONE), Ordering::Relaxed);
                Ok(c)
            }
            _ => Err(NodeError::Unavailable(
                "raft did not report its committed index within 1 s".into(),
            )),
        }
    }

    /// The applied index and the state digest at that index (re-read if an entry was
    /// applied in between).
    pub(super) fn applied_and_digest(&self) -> (Option<u64>, String) {
        let mut applied = self.sm.last_applied();
        let mut digest = self.sm.digest();
        for _ in 0..3 {
            let again = self.sm.last_applied();
            if again == applied {
                break;
            }
            applied = again;
            digest = self.sm.digest();
        }
        (applied.map(|l| l.index), digest)
    }

    pub(super) async fn cluster_view(&self) -> Result<ClusterResponse, NodeError> {
        let committed_index = self.committed_index().await.ok().flatten();
        let (applied_index, state_digest) = self.applied_and_digest();
        let m = self.raft.metrics();
        let m = m.borrow().clone();
        Ok(ClusterResponse {
            node_id: self.id,
            leader_id: m.current_leader,
            term: m.current_term,
            members: members_of(m.membership_config.membership()),
            last_log_index: m.last_log_index,
            committed_index,
            applied_index,
            state_digest,
            clock_offsets: self.clock_offsets(),
        })
    }

    pub(super) async fn is_ready(&self) -> bool {
        let (leader, applied, running) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.current_leader,
                m.last_applied.map(|l| l.index),
                m.running_state.is_ok(),
            )
        };
        if leader.is_none() || !running {
            return false;
        }
        match self.committed_index().await {
            Ok(Some(c)) => applied.is_some_and(|a| a >= c),
            // Knows a leader but has nothing committed yet (e.g. a wiped node that has
            // just heard a heartbeat): not caught up, so not ready.
            Ok(None) => false,
            Err(_) => false,
        }
    }

    /// What `GET /raft/probe` answers.
    pub async fn probe(&self) -> ProbeResponse {
        let initialized = self.raft.is_initialized().await.unwrap_or(true);
        let committed = self.committed_index().await.ok().flatten();
        let (voters, leader_id) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let voters = m.membership_config.membership().voter_ids().collect();
            (voters, m.current_leader)
        };
        let seen = self.sm.read(|s| s.seen().iter().copied().collect());
        ProbeResponse {
            node_id: self.id,
            cluster_id: self.config.cluster_id.clone(),
            fresh: !initialized,
            wall_clock_ms: wall_clock_ms(),
            voters,
            committed,
            leader_id,
            seen,
        }
    }

    /// Set the Raft and storage gauges from openraft's metrics channel (called just
    /// before a scrape).
    pub(super) fn sample_metrics(&self) {
        let (term, last_log, applied, leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.current_term,
                m.last_log_index,
                m.last_applied.map(|l| l.index),
                m.state == ServerState::Leader,
            )
        };
        let committed = match self.committed_cache.load(Ordering::Relaxed) {
            NONE => None,
            c => Some(c),
        };
        // Gauges are i64; indices never approach 2^63.
        let idx = |i: Option<u64>| i.map_or(0, |i| i as i64);
        let g = &self.metrics;
        g.raft_term.set(term as i64);
        g.raft_last_log_index.set(idx(last_log));
        g.raft_committed_index.set(idx(committed));
        g.raft_applied_index.set(idx(applied));
        g.raft_is_leader.set(i64::from(leader));
        g.sled_size_bytes.set(self.sm.size_on_disk() as i64);

        // Counts and caps are map lengths and plain fields: O(1) under the read lock,
        // nothing is serialized.
        let (stats, caps) = self.sm.read(|s| (s.stats(), *s.settings()));
        for (kind, used, cap, setting) in [
            ("leases", stats.leases, caps.max_leases, "max_leases"),
            (
                "slot_keys",
                stats.slot_keys,
                caps.max_slot_keys,
                "max_slot_keys",
            ),
            (
                "rate_keys",
                stats.rate_keys,
                caps.max_rate_keys,
                "max_rate_keys",
            ),
        ] {
            let used = used as u64;
            // Every replica holds the same state; one warning (the leader's) is enough.
            if g.state_usage(kind, used, cap) && leader {
                tracing::warn!(
                    kind,
                    used,
                    cap,
                    "replicated state above 90% of [limits] {setting}: at the cap, new \
                     {kind} are refused with 503 state_full (raise the cap, or find the \
                     caller creating them)"
                );
            }
        }
    }
}
