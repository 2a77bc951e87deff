//! Shadow policies on a real three-node cluster: a `mode = "shadow"` policy in
//! `cluster.toml` reaches every node through the log (`Op::ConfigureModes`), a request
//! it alone would deny is granted through any node with `shadow_denied` in the answer,
//! switching it to `enforce` through another node is one replicated change that the
//! next request obeys, and the replicas' digests agree throughout. An `[envoy]` rate
//! limit with `shadow_mode = true` does the same over Envoy's gRPC: over its limit the
//! answer is OK with `x-quorate-shadow-denied`, counted in
//! `quorate_shadow_denials_total`, while an enforced limit of the same table denies.

mod common;

use std::time::Instant;

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{envoy_header, hourly_envoy_domain, should_rate_limit, Cluster, Options, DEADLINE};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
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

/// Domain `edge`: `remote_address` 2/hour in shadow mode, `user_id` 1/hour enforced
/// (hourly: no refill while the test runs).
fn shadow_envoy(c: &mut ClusterConfig) {
    c.envoy = hourly_envoy_domain(
        "edge",
        &[
            ("remote_address", 2, "per_ip", true),
            ("user_id", 1, "per_user", false),
        ],
    );
}

/// One `ShouldRateLimit` of one descriptor `key=value` through node `id`; `None`
/// while the node has no table for `edge` yet (INVALID_ARGUMENT).
async fn envoy(c: &Cluster, id: u64, key: &str, value: &str) -> Option<RateLimitResponse> {
    match should_rate_limit(c, id, "edge", &[(key, value)]).await {
        Ok(r) => Some(r),
        Err(s) if s.code() == tonic::Code::InvalidArgument => None,
        Err(s) => panic!("ShouldRateLimit: {s}"),
    }
}

fn shadow_header(r: &RateLimitResponse) -> Option<String> {
    envoy_header(r, "x-quorate-shadow-denied")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_envoy_limits_answer_ok_say_so_and_enforced_ones_still_deny() {
    let mut o = Options::new(3);
    o.grpc = true;
    o.config_edit = Some(shadow_envoy);
    let mut c = Cluster::start_with(o).await;
    let leader = c.leader_id().await;
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();

    // The table reaches the follower through the log (the moded op).
    let deadline = Instant::now() + DEADLINE;
    let first = loop {
        if let Some(r) = envoy(&c, follower, "remote_address", "203.0.113.9").await {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the table never reached node {follower}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(first.overall_code, Code::Ok as i32);
    assert_eq!(shadow_header(&first), None);
    let second = envoy(&c, follower, "remote_address", "203.0.113.9")
        .await
        .unwrap();
    assert_eq!(second.overall_code, Code::Ok as i32);
    assert_eq!(shadow_header(&second), None);

    // Over the shadow limit: OK all the same, named, and counted where it was asked.
    let before = common::metric_sum(
        &c.metrics(follower).await,
        "quorate_shadow_denials_total{policy=\"per_ip\"}",
    );
    let third = envoy(&c, follower, "remote_address", "203.0.113.9")
        .await
        .unwrap();
    assert_eq!(third.overall_code, Code::Ok as i32, "{third:?}");
    assert_eq!(third.statuses[0].code, Code::Ok as i32, "{third:?}");
    assert_eq!(shadow_header(&third).as_deref(), Some("per_ip"));
    let after = common::metric_sum(
        &c.metrics(follower).await,
        "quorate_shadow_denials_total{policy=\"per_ip\"}",
    );
    assert_eq!(after - before, 1.0);

    // The enforced limit of the same table denies its second request.
    let u1 = envoy(&c, follower, "user_id", "7").await.unwrap();
    assert_eq!(u1.overall_code, Code::Ok as i32);
    let u2 = envoy(&c, leader, "user_id", "7").await.unwrap();
    assert_eq!(u2.overall_code, Code::OverLimit as i32, "{u2:?}");
    assert_eq!(shadow_header(&u2), None);

    let (_, digest) = c.wait_converged().await;
    assert!(!digest.is_empty());
}
