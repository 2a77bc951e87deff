//! `quorate members add|remove`: change the cluster's membership (admin token).
//!
//! Both answer with the membership after the change, printed as the same members
//! table that `quorate status` shows under its node table ([`members_table`]).

use clap::Subcommand;
use quorate_client::Client;
use quorate_proto as proto;

use super::render::{done, table, Outcome, Render};

#[derive(Debug, Subcommand)]
pub enum MembersCmd {
    /// Add a node as learner, then promote it to voter (unless --learner-only).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        api_addr: String,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        learner_only: bool,
    },
    /// Remove a node from the cluster.
    Remove { id: u64 },
}

pub async fn run(client: &Client, cmd: MembersCmd) -> Outcome {
    let r = match cmd {
        MembersCmd::Add {
            id,
            api_addr,
            raft_addr,
            learner_only,
        } => {
            let req = proto::AddMemberRequest {
                id,
                api_addr,
                raft_addr,
                learner_only,
            };
            client.add_member(&req).await?
        }
        MembersCmd::Remove { id } => client.remove_member(id).await?,
    };
    done(r)
}

impl Render for proto::MembersResponse {
    fn table(&self) -> String {
        members_table(&self.members)
    }
}

/// One row per member: id, addresses, voter or learner.
pub fn members_table(members: &[proto::Member]) -> String {
    table(
        &["MEMBER", "API", "RAFT", "VOTER"],
        members
            .iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.api_addr.clone(),
                    m.raft_addr.clone(),
                    m.voter.to_string(),
                ]
            })
            .collect(),
    )
}
