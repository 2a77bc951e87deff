//! Membership changes, on the leader, one at a time.
//!
//! Adding a node makes it a learner (waiting until it has caught up), then a voter.
//! Removing refuses the leader itself: openraft 0.9 would keep proposing as a leader
//! outside the config and trip its own assertion (found by the API fuzz run). Changes
//! are serialized by `Node::membership_lock`, because openraft 0.9 rejects overlapping
//! changes at best.

use std::collections::BTreeSet;
use std::time::Instant;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use quorate_core::Op;
use quorate_proto::{AddMemberRequest, Member, MembersResponse};
use quorate_store::NodeInfo;
use tokio::time::timeout_at;

use super::{tokio_deadline, Node};
use crate::backend::NodeError;

impl Node {
    /// Membership changes are made by the leader only; a follower answers
    /// `NotLeader` with its hint, so the caller can forward or retry there.
    fn ensure_leader(&self) -> Result<(), NodeError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(NodeError::NotLeader {
                leader: self.current_leader(),
            })
        }
    }

    /// Add a learner (waiting until it has caught up), then promote it to voter.
    pub async fn leader_add_member(
        &self,
        req: AddMemberRequest,
        deadline: Instant,
    ) -> Result<MembersResponse, NodeError> {
        self.ensure_leader()?;
        let _one_at_a_time = self.membership_lock.lock().await;
        if req.id == 0 {
            return Err(NodeError::Refused("node id 0 is reserved".into()));
        }
        if req.api_addr == req.raft_addr {
            return Err(NodeError::Refused(
                "api_addr and raft_addr must differ".into(),
            ));
        }
        // The startup rule for peer links (`security/links.rs`) holds for nodes added
        // at run time too: a member whose Raft address leaves the host needs [tls].
        let auth = &self.config.auth;
        let signs = auth.cluster_secret.is_some()
            || auth.cluster_secret_file.is_some()
            || auth.cluster_secret_env.is_some();
        crate::security::links::require_protected_peer_links(
            [(format!("node {} raft_addr", req.id), req.raft_addr.as_str())],
            signs,
            self.config.tls.is_some(),
        )
        .map_err(NodeError::Refused)?;
        let node = NodeInfo {
            api_addr: req.api_addr.clone(),
            raft_addr: req.raft_addr.clone(),
        };
        tracing::info!(id = req.id, api = %req.api_addr, raft = %req.raft_addr, "adding learner");
        let add = self.raft.add_learner(req.id, node, true);
        let mut resp = match timeout_at(tokio_deadline(deadline), add).await {
            Err(_) => {
                return Err(NodeError::Unavailable(
                    "learner did not catch up in time".into(),
                ))
            }
            Ok(r) => r.map_err(membership_error)?,
        };
        if !req.learner_only {
            tracing::info!(id = req.id, "promoting learner to voter");
            let change = self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])), false);
            resp = match timeout_at(tokio_deadline(deadline), change).await {
                Err(_) => {
                    return Err(NodeError::Unavailable(
                        "membership change not committed in time".into(),
                    ))
                }
                Ok(r) => r.map_err(membership_error)?,
            };
        }
        Ok(self.members_after(resp.membership.as_ref()))
    }

    /// Remove a voter or learner.
    pub async fn leader_remove_member(
        &self,
        id: u64,
        deadline: Instant,
    ) -> Result<MembersResponse, NodeError> {
        self.ensure_leader()?;
        // A leader removing itself leaves openraft 0.9 proposing membership entries
        // as a leader that is no longer in the config, which trips its internal
        // leader-only assertion and stops Raft on this node (found by the API fuzz
        // run). Step the leader down first: stop it, let another node win, and remove
        // it through the new leader.
        if id == self.id {
            return Err(NodeError::Refused(format!(
                "node {id} is the current leader and cannot remove itself; stop it so \
                 another node takes over, then remove it through the new leader"
            )));
        }
        let _one_at_a_time = self.membership_lock.lock().await;
        let (is_voter, is_node) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            (
                membership.voter_ids().any(|v| v == id),
                membership.get_node(&id).is_some(),
            )
        };
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if is_node {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(NodeError::Refused(format!("node {id} is not a member")));
        };
        tracing::info!(id, voter = is_voter, "removing member");
        match timeout_at(
            tokio_deadline(deadline),
            self.raft.change_membership(change, false),
        )
        .await
        {
            Err(_) => Err(NodeError::Unavailable(
                "membership change not committed in time".into(),
            )),
            Ok(r) => {
                let resp = r.map_err(membership_error)?;
                // A removed node may come back empty as a new member (the replace
                // procedure): forget that it held data, so its rejoin check lets it
                // in (`rejoin.rs`). Before answering, so the operator's next step
                // (starting it) sees the record gone.
                let forget = Op::ForgetSeen { nodes: vec![id] };
                match self.leader_write(forget, deadline).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "state machine refused ForgetSeen"),
                    Err(e) => return Err(e),
                }
                Ok(self.members_after(resp.membership.as_ref()))
            }
        }
    }

    /// Members after a change: the committed config the change returned, else this
    /// node's latest view.
    pub(super) fn members_after(
        &self,
        changed: Option<&openraft::Membership<u64, NodeInfo>>,
    ) -> MembersResponse {
        let members = match changed {
            Some(m) => members_of(m),
            None => members_of(self.raft.metrics().borrow().membership_config.membership()),
        };
        MembersResponse { members }
    }
}

fn membership_error(e: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            NodeError::Refused(e.to_string())
        }
        RaftError::Fatal(f) => NodeError::Unavailable(format!("raft: {f}")),
    }
}

pub(super) fn members_of(m: &openraft::Membership<u64, NodeInfo>) -> Vec<Member> {
    let voters: BTreeSet<u64> = m.voter_ids().collect();
    m.nodes()
        .map(|(id, n)| Member {
            id: *id,
            api_addr: n.api_addr.clone(),
            raft_addr: n.raft_addr.clone(),
            voter: voters.contains(id),
        })
        .collect()
}
