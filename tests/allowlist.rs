//! Allowlists on a real three-node cluster, over HTTP, Envoy's gRPC and the CLI:
//! `[limits] max_allowlist` reaches every node through the log (`Op::SetAdminLimits`),
//! entries added through one follower exempt rate checks through another (answered
//! `allowlisted`, with the header, uncharged) and Envoy descriptors from an IPv6 CIDR
//! (the response carries the header), the bound and a bad CIDR are 400s naming them,
//! `quorate allowlist` lists and removes, the removal is obeyed at once everywhere,
//! and the replicas' digests agree throughout.

mod common;

use std::process::Output;
use std::time::Instant;

use common::{envoy_header, hourly_envoy_domain, should_rate_limit, Cluster, Options, DEADLINE};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use quorate_server::ClusterConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Domain `edge`: 2/hour per `remote_address` (hourly: no refill while the test
/// runs); at most two allowlist entries.
fn edit(c: &mut ClusterConfig) {
    c.envoy = hourly_envoy_domain("edge", &[("remote_address", 2, "per_ip", false)]);
    c.limits.max_allowlist = 2;
}

/// One `ShouldRateLimit` of `remote_address=address` through node `id`.
async fn envoy(c: &Cluster, id: u64, address: &str) -> RateLimitResponse {
    should_rate_limit(c, id, "edge", &[("remote_address", address)])
        .await
        .expect("ShouldRateLimit")
}

fn allowlisted_header(r: &RateLimitResponse) -> Option<String> {
    envoy_header(r, "x-quorate-allowlisted")
}

fn cli(c: &Cluster, args: &[&str]) -> Output {
    let nodes: Vec<String> = c.ids().iter().map(|id| c.api_url(*id)).collect();
    std::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .arg("--node")
        .arg(nodes.join(","))
        .output()
        .expect("run quorate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlists_exempt_http_and_envoy_checks_on_every_node() {
    let mut o = Options::new(3);
    o.grpc = true;
    o.config_edit = Some(edit);
    let mut c = Cluster::start_with(o).await;
    let leader = c.leader_id().await;
    let f: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();

    // The file's bound reaches every node through the log.
    for id in c.ids() {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (s, v) = c.get(id, "/v1/allowlist").await;
            if s == StatusCode::OK && v["max"] == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} never showed max 2: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    // Validation and the bound, through a follower.
    let (s, v) = c
        .post(f[0], "/v1/allowlist", json!({"ip": "2001:db8::/129"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("2001:db8::/129"),
        "{v}"
    );
    let (s, v) = c
        .post(f[0], "/v1/allowlist", json!({"ip": "2001:db8:0:1::/32"}))
        .await;
    assert_eq!(
        (s, v["entry"]["ip"].clone()),
        (StatusCode::OK, json!("2001:db8::/32")),
        "{v}"
    );
    let (s, v) = c
        .post(
            f[0],
            "/v1/allowlist",
            json!({"policy": "worker", "key": "user:admin-*"}),
        )
        .await;
    assert_eq!(
        (s, v["changed"].clone()),
        (StatusCode::OK, json!(true)),
        "{v}"
    );
    let (s, v) = c.post(f[0], "/v1/allowlist", json!({"key": "vip:*"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("max_allowlist (2)"),
        "{v}"
    );

    // HTTP through the other follower: `worker` has a burst of 10; an allowlisted
    // key passes twelve times, uncharged, with the header.
    for i in 0..12 {
        let resp = c
            .http
            .post(c.url(f[1], "/v1/rate/check"))
            .json(&json!({"key": "user:admin-7", "policy": "worker"}))
            .send()
            .await
            .expect("rate check");
        assert_eq!(resp.status(), StatusCode::OK, "check {i}");
        assert_eq!(resp.headers()["x-quorate-allowlisted"], "user:admin-7");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            (v["allowlisted"].clone(), v["remaining"].clone()),
            (json!(true), json!(10)),
            "{v}"
        );
    }

    // Envoy through a follower: 2/hour per address, yet an address inside the /32
    // passes four times with the header; one outside is over its limit at the third.
    for i in 0..4 {
        let r = envoy(&c, f[0], "2001:db8::5").await;
        assert_eq!(r.overall_code, Code::Ok as i32, "request {i}");
        assert!(allowlisted_header(&r).is_some(), "request {i}: {r:?}");
    }
    for i in 0..3 {
        let r = envoy(&c, f[1], "2001:db9::5").await;
        assert_eq!(r.overall_code == Code::Ok as i32, i < 2, "request {i}");
        assert_eq!(allowlisted_header(&r), None);
    }
    let metrics = c.metrics(f[0]).await;
    assert!(
        metrics.contains(r#"quorate_allowlisted_total{policy="per_ip"} 4"#),
        "{metrics}"
    );

    // The CLI: remove by another form of the same network, then list.
    let o = cli(&c, &["allowlist", "remove", "--ip", "2001:db8::1/32"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(out, "removed: global ip 2001:db8::/32\n");
    let o = cli(&c, &["allowlist", "list", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        v,
        json!({"entries": [{"policy": "worker", "key": "user:admin-*"}], "max": 2})
    );
    let o = cli(
        &c,
        &["allowlist", "add", "--ip", "10.0.0.0/8", "--key", "x"],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "both --ip and --key is a usage error"
    );

    // Obeyed at once: the address's bucket was never charged (two pass), then the limit.
    for i in 0..3 {
        let r = envoy(&c, f[1], "2001:db8::5").await;
        assert_eq!(r.overall_code == Code::Ok as i32, i < 2, "request {i}");
    }

    // Every replica holds the same state (the digest covers the allowlist section).
    c.wait_converged().await;
    for id in c.ids() {
        let (_, v) = c.get(id, "/v1/allowlist").await;
        assert_eq!(
            v["entries"].as_array().map(Vec::len),
            Some(1),
            "node {id}: {v}"
        );
    }
}
