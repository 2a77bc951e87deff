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
//! - **opens** when no peer knows a committed cluster (a new cluster is forming), or
//!   the cluster does not count this node as a voter (a replacement waiting to be
//!   added, or a learner), or the leader says this node has never acknowledged an
//!   entry (it starts late into a cluster formed without it);
//! - **refuses to start** when the cluster counts it as a voter and its leader has seen
//!   it acknowledge entries: it lost its data. The message gives the replace procedure
//!   (remove it through another node, start it empty, add it back);
//! - otherwise keeps asking (peers unreachable, no leader yet), logging as it waits.
//!
//! What this cannot see: a leader that restarted after the wiped node's last
//! acknowledgement has no memory of it, and the node is let in. Replacing a node
//! through the membership API is the procedure that is safe in every case.

use std::time::{Duration, Instant};

use crate::config::NodeConfig;
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
    Refuse { leader: u64 },
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
    if committed.iter().all(|a| !a.voters.contains(&me)) {
        return Verdict::Open("the cluster does not count this node as a voter");
    }
    match answers.iter().find(|a| a.leader_id == Some(a.node_id)) {
        Some(leader) if leader.matched.contains(&me) => Verdict::Refuse {
            leader: leader.node_id,
        },
        Some(_) => Verdict::Open("the leader has never seen this node acknowledge an entry"),
        None => Verdict::Wait,
    }
}

/// How often a fresh node asks its peers.
const ASK_EVERY: Duration = Duration::from_millis(200);

impl Node {
    /// Ask the peers until [`decide`] opens or refuses the gate.
    pub(super) async fn check_rejoin(self: std::sync::Arc<Self>) {
        let peers: Vec<NodeConfig> = self
            .config
            .nodes
            .iter()
            .filter(|n| n.id != self.id)
            .cloned()
            .collect();
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
                Verdict::Refuse { leader } => {
                    let msg = self.refusal(leader);
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

    fn refusal(&self, leader: u64) -> String {
        let id = self.id;
        let dir = self.config.node_data_dir(id);
        let (api, raft) = self
            .config
            .node(id)
            .map(|n| (n.api_addr.clone(), n.raft_addr.clone()))
            .unwrap_or_default();
        format!(
            "node {id} starts with an empty data directory ({}), but the cluster (leader \
             {leader}) counts node {id} as a voter that has acknowledged its log: this node \
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
            matched: vec![],
        }
    }

    fn leader(node: u64, voters: &[u64], matched: &[u64]) -> ProbeResponse {
        ProbeResponse {
            leader_id: Some(node),
            matched: matched.to_vec(),
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
            decide(2, 2, &[leader(1, &[1, 2, 3], &[2, 3]), follower.clone()]),
            Verdict::Refuse { leader: 1 }
        );
        assert!(matches!(
            decide(2, 2, &[leader(1, &[1, 2, 3], &[3]), follower.clone()]),
            Verdict::Open(_)
        ));
        // No leader among the answers yet: keep asking.
        assert_eq!(decide(2, 2, &[follower]), Verdict::Wait);
    }

    #[test]
    fn a_removed_node_may_come_back_empty() {
        assert!(matches!(
            decide(2, 2, &[leader(1, &[1, 3], &[3]), answer(3, Some(9), &[1, 3])]),
            Verdict::Open(_)
        ));
    }
}
