//! A node that starts with an empty data directory proves it is not a wiped voter
//! before it speaks Raft.
//!
//! Raft's safety rests on every voter remembering its vote. A voter whose data
//! directory was lost and that rejoins under its old id has forgotten whom it voted
//! for, and could vote twice in one term (two leaders); with openraft 0.9 it also
//! crashed (`try to get log at index 0`) once the leader had compacted its log. So a
//! node whose store is fresh starts with its Raft port *gated*: probes are answered,
//! but append, vote and snapshot RPCs get 503 until [`decide`] says it may take part.
//! It asks its peers (`GET /raft/probe`) and:
//!
//! - **refuses to start** when the replicated state records this node as having
//!   acknowledged log entries (the leader proposes `Op::MarkSeen` for every follower
//!   it sees acknowledge, within a housekeeping interval): it lost its data. The
//!   message gives the replace procedure (remove it through another node, start it
//!   empty, add it back);
//! - **opens** when no peer knows a committed cluster (a new cluster is forming), or
//!   the cluster does not count this node as a voter (a replacement waiting to be
//!   added, or a learner), or the leader does not record it as seen (a voter that
//!   starts late into a cluster formed without it);
//! - otherwise keeps asking (peers unreachable, no leader yet), logging as it waits.
//!
//! What this cannot see: a voter wiped within a housekeeping interval of its first
//! acknowledgement, before the leader recorded it. Replacing a node through the
//! membership API is the procedure that is safe in every case.

use std::time::{Duration, Instant};

use crate::peer::protocol::ProbeResponse;

use super::Node;

/// Whether this node may take part in Raft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Still asking its peers.
    Checking,
    /// Raft RPCs are served.
    Open,
    /// This node lost its data; the message says what to do. The node stops.
    Refused(String),
}

/// What a fresh node concludes from its peers' probe answers so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Open(&'static str),
    /// The state, as node `told_by` has applied it, records this node as holding data.
    Refuse {
        told_by: u64,
    },
    Wait,
}

/// The rule of the module docs, over the answers of the peers that answered.
pub fn decide(me: u64, peers: usize, answers: &[ProbeResponse]) -> Verdict {
    let committed: Vec<&ProbeResponse> = answers.iter().filter(|a| a.committed.is_some()).collect();
    if committed.is_empty() {
        return if answers.len() == peers {
            Verdict::Open("no peer knows a committed cluster: a new cluster is forming")
        } else {
            Verdict::Wait
        };
    }
    let voter = committed.iter().filter(|a| a.voters.contains(&me)).count();
    if voter == 0 {
        // Removed (the replace procedure) or never added: it joins as a new node.
        return Verdict::Open("the cluster does not count this node as a voter");
    }
    if voter < committed.len() {
        return Verdict::Wait; // a membership change is still spreading
    }
    if let Some(a) = committed.iter().find(|a| a.seen.contains(&me)) {
        return Verdict::Refuse { told_by: a.node_id };
    }
    // A voter that never acknowledged anything (it starts late into a cluster formed
    // without it). Only the leader's answer is current enough to say so: a lagging
    // follower may not have applied the record yet.
    if committed.iter().any(|a| a.leader_id == Some(a.node_id)) {
        Verdict::Open("this node is a voter that has never acknowledged an entry")
    } else {
        Verdict::Wait
    }
}

/// How often a fresh node asks its peers.
const ASK_EVERY: Duration = Duration::from_millis(200);

impl Node {
    /// Ask the peers until [`decide`] opens or refuses the gate.
    pub(super) async fn check_rejoin(self: std::sync::Arc<Self>) {
        let peers = self.file_peers();
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let mut answers = Vec::new();
            for peer in &peers {
                match self.probe_peer(peer).await {
                    Ok(a) if a.cluster_id == self.config.cluster_id && a.node_id == peer.id => {
                        answers.push(a)
                    }
                    Ok(_) | Err(_) => {}
                }
            }
            match decide(self.id, peers.len(), &answers) {
                Verdict::Open(why) => {
                    tracing::info!(why, "fresh node: taking part in Raft");
                    self.gate.send_replace(Gate::Open);
                    return;
                }
                Verdict::Refuse { told_by } => {
                    let msg = self.refusal(told_by);
                    tracing::error!("{msg}");
                    self.gate.send_replace(Gate::Refused(msg));
                    return;
                }
                Verdict::Wait => {}
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                tracing::info!(
                    answered = answers.len(),
                    peers = peers.len(),
                    waited_s = started.elapsed().as_secs(),
                    "fresh node: waiting for peers (or a leader) to tell whether it lost its data"
                );
            }
            tokio::time::sleep(ASK_EVERY).await;
        }
    }

    fn refusal(&self, told_by: u64) -> String {
        let id = self.id;
        let dir = self.config.node_data_dir(id);
        let (api, raft) = self
            .config
            .node(id)
            .map(|n| (n.api_addr.clone(), n.raft_addr.clone()))
            .unwrap_or_default();
        format!(
            "node {id} starts with an empty data directory ({}), but the cluster (as node \
             {told_by} knows it) records node {id} as having acknowledged its log: this node \
             lost its data, and a voter that forgot its vote must not rejoin under its old \
             id. Replace it: run `quorate members remove {id}` against another node, start \
             this node again (its data directory stays empty), then run `quorate members \
             add --id {id} --api-addr {api} --raft-addr {raft}`. Or restore the data \
             directory from a copy.",
            dir.display()
        )
    }

    /// `Ok` while Raft RPCs may be served; the reason to refuse them otherwise.
    pub fn raft_gate(&self) -> Result<(), &'static str> {
        match *self.gate.borrow() {
            Gate::Open => Ok(()),
            Gate::Checking => Err("this node started empty and is checking with its peers"),
            Gate::Refused(_) => Err("this node lost its data and refuses to rejoin"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(node: u64, committed: Option<u64>, voters: &[u64]) -> ProbeResponse {
        ProbeResponse {
            node_id: node,
            cluster_id: "c".into(),
            fresh: committed.is_none() && voters.is_empty(),
            wall_clock_ms: 1,
            voters: voters.to_vec(),
            committed,
            leader_id: None,
            seen: vec![],
            status: None,
        }
    }

    fn leader(node: u64, voters: &[u64], seen: &[u64]) -> ProbeResponse {
        ProbeResponse {
            leader_id: Some(node),
            seen: seen.to_vec(),
            ..answer(node, Some(10), voters)
        }
    }

    #[test]
    fn a_forming_cluster_opens_once_every_peer_answered() {
        assert_eq!(decide(2, 2, &[answer(1, None, &[1, 2, 3])]), Verdict::Wait);
        assert!(matches!(
            decide(2, 2, &[answer(1, None, &[1, 2, 3]), answer(3, None, &[])]),
            Verdict::Open(_)
        ));
    }

    #[test]
    fn a_wiped_voter_is_refused_and_a_late_joiner_is_not() {
        let follower = answer(3, Some(10), &[1, 2, 3]);
        assert_eq!(
            decide(2, 2, &[leader(1, &[1, 2, 3], &[1, 2, 3]), follower.clone()]),
            Verdict::Refuse { told_by: 1 }
        );
        // Any peer that has applied the record is enough, leader or not.
        let lagging_leader = leader(1, &[1, 2, 3], &[1, 3]);
        let knows = ProbeResponse {
            seen: vec![1, 2, 3],
            ..follower.clone()
        };
        assert_eq!(
            decide(2, 2, &[lagging_leader, knows]),
            Verdict::Refuse { told_by: 3 }
        );
        assert!(matches!(
            decide(2, 2, &[leader(1, &[1, 2, 3], &[1, 3]), follower.clone()]),
            Verdict::Open(_)
        ));
        // No leader among the answers yet: keep asking.
        assert_eq!(decide(2, 2, &[follower]), Verdict::Wait);
    }

    #[test]
    fn a_removed_node_may_come_back_empty() {
        // Still recorded as having held data, but no longer a voter: it was removed
        // (the replace procedure) and joins as a new node.
        assert!(matches!(
            decide(
                2,
                2,
                &[leader(1, &[1, 3], &[1, 2, 3]), answer(3, Some(9), &[1, 3])]
            ),
            Verdict::Open(_)
        ));
        // While the removal is still spreading, wait.
        assert_eq!(
            decide(
                2,
                2,
                &[
                    leader(1, &[1, 3], &[1, 2, 3]),
                    answer(3, Some(9), &[1, 2, 3])
                ]
            ),
            Verdict::Wait
        );
    }
}
