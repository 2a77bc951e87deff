//! Shadow policies on a real three-node cluster: a `mode = "shadow"` policy in
//! `cluster.toml` reaches every node through the log (`Op::ConfigureModes`), a request
//! it alone would deny is granted through any node with `shadow_denied` in the answer,
//! switching it to `enforce` through another node is one replicated change that the
//! next request obeys, and the replicas' digests agree throughout.

mod common;

use std::time::Instant;

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{Cluster, Options, DEADLINE};
use quorate_proto::PolicyMode;
use quorate_server::config::{ClusterConfig, PolicyConfig};

/// `org:*` at most one at a time, in shadow mode.
fn shadow_orgs(c: &mut ClusterConfig) {
    c.policies.retain(|p| p.name() != "orgs");
    c.policies.insert(
        0,
        PolicyConfig::Concurrency {
            name: "orgs".into(),
            pattern: "org:*".into(),
            limit: 1,
            mode: PolicyMode::Shadow,
        },
    );
}

/// Node `id`'s view of the `orgs` policy's mode, once the configuration is installed.
async fn orgs_mode(c: &Cluster, id: u64) -> Option<Value> {
    let (s, v) = c.get(id, "/v1/policies").await;
    if s != StatusCode::OK {
        return None;
    }
    v["policies"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "orgs" && p["limit"] == 1)
        .map(|p| p["mode"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_policy_from_the_file_allows_says_so_and_switches_everywhere() {
    let mut o = Options::new(3);
    o.config_edit = Some(shadow_orgs);
    let mut c = Cluster::start_with(o).await;
    let leader = c.leader_id().await;
    let followers: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();

    // The leader proposes the file's configuration; every node then shows the mode.
    for id in c.ids() {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if orgs_mode(&c, id).await == Some(json!("shadow")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} never showed orgs in shadow mode"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    // Through a follower: the second lease on org:a is over the shadow limit and is
    // granted all the same, saying which policy would have denied it.
    let acquire = |id: &str| json!({"keys": ["org:a"], "lease_id": id});
    let (s, v) = c
        .post(followers[0], "/v1/slots/acquire", acquire("s1"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.get("shadow_denied").is_none(), "{v}");
    let (s, v) = c
        .post(followers[0], "/v1/slots/acquire", acquire("s2"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["shadow_denied"],
        json!([{"key": "org:a", "policy": "orgs"}])
    );
    assert_eq!(v["slots"][0]["used"], 2);

    // Switched to enforce through the other follower: one change, obeyed at once
    // through the first one.
    let (s, v) = c
        .put(
            followers[1],
            "/v1/policies/orgs/mode",
            json!({"mode": "enforce"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = c
        .post(followers[0], "/v1/slots/acquire", acquire("s3"))
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["blocked_by"], json!(["org:a"]));

    // Every replica holds the same state (the digest covers the modes).
    let (_, digest) = c.wait_converged().await;
    assert!(!digest.is_empty());
    for id in c.ids() {
        assert_eq!(orgs_mode(&c, id).await, Some(json!("enforce")), "node {id}");
    }
}
