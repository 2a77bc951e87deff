//! `quorate status`: every node's own view of the cluster, side by side.
//!
//! Each node is asked directly (no failover): the point is to see disagreement — two
//! leaders, a lagging applied index, a node down — so one node's answer must not
//! stand in for another's. The command succeeds if any node answered (exit 4 if
//! none), and shows the members as the first answering node sees them.
//!
//! The JSON form is one object per node: `{"node", "ready", "cluster"}` or, for a
//! node that did not answer, `{"node", "ready": false, "error"}`; keys are sorted
//! (it is built as a `serde_json::Value`, as it always was).

use quorate_client::Client;
use quorate_proto as proto;
use serde::{Serialize, Serializer};

use super::members::members_table;
use super::render::{done, opt, table, Outcome, Render};
use super::ExitCode;

/// One node's answer.
struct NodeView {
    url: String,
    cluster: Result<proto::ClusterResponse, String>,
    ready: bool,
}

struct Status(Vec<NodeView>);

pub async fn run(client: &Client, urls: &[String]) -> Outcome {
    let mut views = Vec::new();
    for u in urls {
        let ready = client.ready_at(u).await;
        views.push(NodeView {
            url: u.clone(),
            cluster: client.cluster_at(u).await.map_err(|e| e.to_string()),
            ready,
        });
    }
    done(Status(views))
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let out: Vec<_> = self
            .0
            .iter()
            .map(|v| match &v.cluster {
                Ok(c) => serde_json::json!({"node": v.url, "ready": v.ready, "cluster": c}),
                Err(e) => serde_json::json!({"node": v.url, "ready": false, "error": e}),
            })
            .collect();
        out.serialize(s)
    }
}

impl Render for Status {
    fn table(&self) -> String {
        let mut out = table(
            &[
                "ID",
                "NODE",
                "ROLE",
                "LEADER",
                "TERM",
                "COMMITTED",
                "APPLIED",
                "HEALTH",
                "DIGEST",
            ],
            self.0.iter().map(row).collect(),
        );
        if let Some(Ok(c)) = self.0.iter().map(|v| &v.cluster).find(|r| r.is_ok()) {
            out.push('\n');
            out.push_str(&members_table(&c.members));
        }
        out
    }

    fn exit_code(&self) -> ExitCode {
        if self.0.iter().any(|v| v.cluster.is_ok()) {
            0
        } else {
            4
        }
    }
}

fn row(v: &NodeView) -> Vec<String> {
    match &v.cluster {
        Ok(c) => vec![
            c.node_id.to_string(),
            v.url.clone(),
            if c.leader_id == Some(c.node_id) {
                "leader".into()
            } else {
                "follower".into()
            },
            opt(c.leader_id),
            c.term.to_string(),
            opt(c.committed_index),
            opt(c.applied_index),
            if v.ready {
                "ready".into()
            } else {
                "not ready".into()
            },
            c.state_digest.clone(),
        ],
        Err(e) => {
            let short: String = e.chars().take(60).collect();
            let mut r = vec!["?".into(), v.url.clone(), "down".into()];
            r.extend(["-"; 4].map(String::from));
            r.push(format!("unreachable ({short})"));
            r.push("-".into());
            r
        }
    }
}
