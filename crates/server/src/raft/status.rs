//! What a node says about itself: cluster view, readiness, probe answers, gauges.
//!
//! All of it is local (not linearizable) and cheap: it reads openraft's metrics
//! channel and the state machine's applied index and digest. The rows about peers in
//! the cluster view are their own answers to the probe this node sends each of them
//! every few seconds (the clock watch in `tasks.rs`), kept with their age: reading
//! the view never waits for a peer, and a peer that stopped answering shows as
//! unreachable from the next probe on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use quorate_proto::{ClusterResponse, NodeStatus};
use tokio::time::timeout;

use super::batcher::wall_clock_ms;
use super::membership::members_of;
use super::{Node, NONE};
use crate::backend::NodeError;
use crate::peer::protocol::{ProbeResponse, ProbeStatus};

/// What this node last heard from a peer (`status.rs`'s part of the clock watch).
#[derive(Debug, Clone)]
pub(super) struct PeerSeen {
    /// When the last probe ended.
    at: Instant,
    /// Its answer; `None` when that probe failed.
    answer: Option<ProbeResponse>,
    /// The last comparison of digests at an equal applied index: (index, equal).
    agreement: Option<(u64, bool)>,
}

impl Node {
    /// The current leader's API base URL as clients reach it, if a leader is known
    /// (the `x-quorate-leader` header of every API response).
    pub fn leader_api(&self) -> Option<Arc<str>> {
        self.api_url_of(self.current_leader()?)
    }

    /// Node `id`'s API base URL: from the file (its `advertise_api`, else its
    /// `api_addr`), else — a node added at runtime — from the replicated membership's
    /// `api_addr` (the address `POST /v1/members` was given).
    fn api_url_of(&self, id: u64) -> Option<Arc<str>> {
        if let Some(url) = self.api_urls.get(&id) {
            return Some(url.clone());
        }
        let scheme = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let m = self.raft.metrics();
        let m = m.borrow();
        let node = m.membership_config.membership().get_node(&id)?;
        Some(Arc::from(format!("{scheme}://{}", node.api_addr)))
    }

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

    /// Whether the applied state holds a configuration (any `cluster.toml`'s
    /// policies): see [`ready_from`].
    fn configured(&self) -> bool {
        self.sm.read(|s| s.policies_digest().is_some())
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
        let own = NodeStatus {
            id: self.id,
            reachable: true,
            role: role_name(m.state).into(),
            term: m.current_term,
            leader_id: m.current_leader,
            committed_index,
            applied_index,
            state_digest: state_digest.clone(),
            ready: ready_from(
                m.current_leader,
                m.running_state.is_ok(),
                applied_index,
                committed_index,
                self.configured(),
            ),
            clock_offset_ms: Some(0),
            age_ms: 0,
            digest_agrees: Some(true),
            digest_compared_at: applied_index,
        };
        let members = members_of(m.membership_config.membership());
        let nodes = members
            .iter()
            .map(|p| {
                if p.id == self.id {
                    own.clone()
                } else {
                    self.peer_status(p.id)
                }
            })
            .collect();
        Ok(ClusterResponse {
            node_id: self.id,
            leader_id: m.current_leader,
            leader_api: m
                .current_leader
                .and_then(|l| self.api_url_of(l))
                .map(|u| u.to_string()),
            term: m.current_term,
            members,
            last_log_index: m.last_log_index,
            committed_index,
            applied_index,
            state_digest,
            clock_offsets: self.clock_offsets(),
            nodes,
        })
    }

    /// Remember a peer's probe answer (`None`: the probe failed). When the peer had
    /// applied exactly as far as this node did just before the probe (`before`) or
    /// does just after it, the two digests describe the same log prefix, and are
    /// compared: only then does equality mean anything. (Under load a follower is
    /// often an entry or two behind; it usually matches one of the two moments.)
    pub(super) fn record_probe(
        &self,
        peer: u64,
        answer: Option<&ProbeResponse>,
        before: (Option<u64>, String),
    ) {
        let after = self.applied_and_digest();
        let mut seen = self.peer_seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(peer).or_insert_with(|| PeerSeen {
            at: Instant::now(),
            answer: None,
            agreement: None,
        });
        entry.at = Instant::now();
        entry.answer = answer.cloned();
        let theirs = answer.and_then(|a| a.status.as_ref());
        if let Some(verdict) = compare_digests(theirs, [after, before]) {
            entry.agreement = Some(verdict);
        }
    }

    /// A peer's row of the cluster view, from its last probe answer.
    fn peer_status(&self, id: u64) -> NodeStatus {
        let seen = self.peer_seen.lock().unwrap_or_else(|e| e.into_inner());
        let (age, answer, agreement) = match seen.get(&id) {
            Some(p) => (p.at.elapsed(), p.answer.as_ref(), p.agreement),
            None => (Duration::ZERO, None, None),
        };
        let status = answer.and_then(|a| a.status.as_ref());
        let offset = self
            .lock_offsets()
            .get(&id)
            .map(|o| o.offset_ms)
            .filter(|_| answer.is_some());
        NodeStatus {
            id,
            reachable: answer.is_some(),
            role: status.map_or("unknown", |s| s.role.as_str()).into(),
            term: status.map_or(0, |s| s.term),
            leader_id: answer.and_then(|a| a.leader_id),
            committed_index: answer.and_then(|a| a.committed),
            applied_index: status.and_then(|s| s.applied),
            state_digest: status.map(|s| s.state_digest.clone()).unwrap_or_default(),
            ready: status.is_some_and(|s| s.ready),
            clock_offset_ms: offset,
            age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            digest_agrees: agreement.map(|(_, same)| same),
            digest_compared_at: agreement.map(|(index, _)| index),
        }
    }

    /// Whether this node is ready (`/readyz`): it knows a leader, Raft runs, and it
    /// has applied everything committed when asked, within [`READY_CATCH_UP`].
    ///
    /// The committed index is read first and the applied index after. Read the other
    /// way round, an entry committed between the two reads made a busy leader look
    /// behind, and `/readyz` answered 503 under write load (found by the API fuzzer):
    /// applying trails committing by an entry or two on any busy node, which is not
    /// what "not caught up" is meant to catch.
    pub(super) async fn is_ready(&self) -> bool {
        let (leader, running) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.running_state.is_ok())
        };
        if leader.is_none() || !running {
            return false;
        }
        let Ok(committed) = self.committed_index().await else {
            return false;
        };
        let applied = self.sm.last_applied().map(|l| l.index);
        if !self.configured() {
            return false;
        }
        if ready_from(leader, running, applied, committed, true) {
            return true;
        }
        let Some(c) = committed else {
            return false;
        };
        self.raft
            .wait(Some(READY_CATCH_UP))
            .applied_index_at_least(Some(c), "readiness")
            .await
            .is_ok()
    }

    /// What `GET /raft/probe` answers.
    pub async fn probe(&self) -> ProbeResponse {
        let initialized = self.raft.is_initialized().await.unwrap_or(true);
        let committed = self.committed_index().await.ok().flatten();
        let (voters, leader_id, role, term, running) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let voters = m.membership_config.membership().voter_ids().collect();
            let role = role_name(m.state);
            (
                voters,
                m.current_leader,
                role,
                m.current_term,
                m.running_state.is_ok(),
            )
        };
        let seen = self.sm.read(|s| s.seen().iter().copied().collect());
        let (applied, state_digest) = self.applied_and_digest();
        let status = ProbeStatus {
            role: role.into(),
            term,
            applied,
            state_digest,
            ready: ready_from(leader_id, running, applied, committed, self.configured()),
        };
        ProbeResponse {
            node_id: self.id,
            cluster_id: self.config.cluster_id.clone(),
            fresh: !initialized,
            wall_clock_ms: wall_clock_ms(),
            voters,
            committed,
            leader_id,
            seen,
            status: Some(status),
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
            // Counters count against the same cap as rate buckets (core `counters.rs`).
            (
                "rate_keys",
                stats.rate_keys + stats.counters,
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

/// How long `/readyz` waits for the entries committed when it was asked to be
/// applied: a node that applies them this fast is caught up.
const READY_CATCH_UP: Duration = Duration::from_millis(500);

/// A node is ready when it knows a leader, Raft runs, it has applied everything it
/// knows to be committed, and its state holds a configuration (the policies of a
/// `cluster.toml`, which the first leader writes once it has a quorum). Nothing
/// committed yet (e.g. a wiped node that has just heard a heartbeat) is not caught
/// up, so not ready; nor is a new cluster before its policies are in: a decision
/// naming one would be a 404 `policy_not_found` there.
fn ready_from(
    leader: Option<u64>,
    running: bool,
    applied: Option<u64>,
    committed: Option<u64>,
    configured: bool,
) -> bool {
    leader.is_some()
        && running
        && configured
        && committed.is_some_and(|c| applied.is_some_and(|a| a >= c))
}

/// The peer's digest against ours at the first of `ours` (applied index, digest)
/// taken at the same applied index as the peer's: `(index, equal)`, or `None` when
/// no moment matches (digests of different prefixes say nothing).
fn compare_digests(
    theirs: Option<&ProbeStatus>,
    ours: [(Option<u64>, String); 2],
) -> Option<(u64, bool)> {
    let t = theirs?;
    let index = t.applied?;
    ours.into_iter()
        .find(|(applied, _)| *applied == Some(index))
        .map(|(_, digest)| (index, digest == t.state_digest))
}

/// The wire name of a Raft role.
fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_a_leader_everything_committed_applied_and_a_configuration() {
        assert!(ready_from(Some(1), true, Some(5), Some(5), true));
        assert!(!ready_from(Some(1), true, Some(4), Some(5), true), "behind");
        assert!(!ready_from(None, true, Some(5), Some(5), true), "no leader");
        assert!(
            !ready_from(Some(1), false, Some(5), Some(5), true),
            "raft stopped"
        );
        assert!(
            !ready_from(Some(1), true, None, None, true),
            "nothing committed"
        );
        assert!(
            !ready_from(Some(1), true, Some(5), Some(5), false),
            "no configuration applied yet"
        );
    }

    #[test]
    fn digests_are_compared_only_at_an_equal_applied_index() {
        let peer = |applied: Option<u64>, digest: &str| ProbeStatus {
            role: "follower".into(),
            term: 1,
            applied,
            state_digest: digest.into(),
            ready: true,
        };
        let ours = || [(Some(12), "d12".to_string()), (Some(11), "d11".to_string())];
        assert_eq!(
            compare_digests(Some(&peer(Some(12), "d12")), ours()),
            Some((12, true))
        );
        assert_eq!(
            compare_digests(Some(&peer(Some(11), "d11")), ours()),
            Some((11, true)),
            "before"
        );
        assert_eq!(
            compare_digests(Some(&peer(Some(11), "xx")), ours()),
            Some((11, false)),
            "diverged"
        );
        assert_eq!(
            compare_digests(Some(&peer(Some(10), "d10")), ours()),
            None,
            "behind both"
        );
        assert_eq!(compare_digests(Some(&peer(None, "")), ours()), None);
        assert_eq!(
            compare_digests(None, ours()),
            None,
            "probe failed or old peer"
        );
    }
}
