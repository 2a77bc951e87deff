//! Envoy's rate limit service (`envoy.service.ratelimit.v3`) on a real three-node
//! cluster, driven through the generated client Envoy's own proto defines
//! (`envoy-types`): allow, over-limit, all-or-none across descriptors, hits_addend,
//! unknown domain and descriptors, forwarding through followers, auth, metrics — and a
//! leader killed during traffic without a single grant beyond the limit.
//!
//! Limits are per hour so that GCRA's continuous refill adds nothing measurable while
//! a test runs (one request per 12 minutes at 5/hour).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{metric_sum, Cluster, Options, DEADLINE};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use quorate_server::config::envoy::{
    DescriptorEntry, DomainConfig, EnvoySection, RateLimitConfig, UnitConfig,
};
use quorate_server::security::auth::{Role, TokenSpec};
use quorate_server::ClusterConfig;
use tonic::transport::Channel;

const ADMIN: &str = "admin-token-0123456789";
const CLIENT: &str = "client-token-0123456789";

fn entry(key: &str, value: Option<&str>) -> DescriptorEntry {
    DescriptorEntry {
        key: key.into(),
        value: value.map(Into::into),
        rate_limit: None,
        policy: None,
        unlimited: false,
        shadow_mode: false,
        descriptors: vec![],
    }
}

fn per_hour(name: &str, n: u32) -> Option<RateLimitConfig> {
    Some(RateLimitConfig {
        requests_per_unit: n,
        unit: UnitConfig::Hour,
        burst: None,
        name: Some(name.into()),
    })
}

/// Domain `edge`: 5/hour per `remote_address`, 2/hour per `user_id`, 3/hour per user
/// of tenant `acme`, `path` unlimited; `hot` 40/hour (the failover test's key).
/// Tokens: an admin (the test's HTTP client) and a client (the gRPC calls).
fn envoy_cluster(c: &mut ClusterConfig) {
    let mut ip = entry("remote_address", None);
    ip.rate_limit = per_hour("per_ip", 5);
    let mut user = entry("user_id", None);
    user.rate_limit = per_hour("per_user", 2);
    let mut acme_user = entry("user_id", None);
    acme_user.rate_limit = per_hour("acme_user", 3);
    let mut acme = entry("tenant", Some("acme"));
    acme.descriptors = vec![acme_user];
    let mut path = entry("path", None);
    path.unlimited = true;
    let mut hot = entry("hot", None);
    hot.rate_limit = per_hour("hot", 40);
    c.envoy = EnvoySection {
        domains: vec![DomainConfig {
            domain: "edge".into(),
            descriptors: vec![ip, user, acme, path, hot],
        }],
    };
    let token = |name: &str, role, secret: &str| TokenSpec {
        name: name.into(),
        role,
        token: Some(secret.into()),
        token_file: None,
        token_env: None,
    };
    c.auth.tokens = vec![
        token("ops", Role::Admin, ADMIN),
        token("envoy", Role::Client, CLIENT),
    ];
}

async fn start() -> Cluster {
    let mut o = Options::new(3);
    o.grpc = true;
    o.config_edit = Some(envoy_cluster);
    o.bearer = Some(ADMIN.into());
    Cluster::start_with(o).await
}

async fn client(c: &Cluster, id: u64) -> RateLimitServiceClient<Channel> {
    let addr = c.nodes[&id].grpc_addr.clone().expect("grpc_addr");
    RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the gRPC listener")
}

fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: hits,
    }
}

async fn call_as(
    rl: &mut RateLimitServiceClient<Channel>,
    token: Option<&str>,
    req: RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    let mut r = tonic::Request::new(req);
    if let Some(t) = token {
        let v = format!("Bearer {t}").parse().expect("metadata value");
        r.metadata_mut().insert("authorization", v);
    }
    rl.should_rate_limit(r)
        .await
        .map(tonic::Response::into_inner)
}

async fn call(
    rl: &mut RateLimitServiceClient<Channel>,
    req: RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    call_as(rl, Some(CLIENT), req).await
}

fn ok(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::Ok as i32
}

/// The leader proposes the `[envoy]` table after the cluster is ready: poll (with a
/// descriptor that matches nothing, so nothing is charged) until the domain is known.
async fn wait_for_table(rl: &mut RateLimitServiceClient<Channel>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match call(rl, request("edge", vec![desc(&[("nothing", "x")])], 1)).await {
            Ok(r) if ok(&r) => return,
            other => assert!(
                Instant::now() < deadline,
                "the [envoy] table was never installed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_clients_get_all_or_none_decisions_from_any_node() {
    let mut c = start().await;
    let leader = c.leader_id().await;
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    let mut via_leader = client(&c, leader).await;
    let mut via_follower = client(&c, follower).await;
    wait_for_table(&mut via_follower).await;

    // Allow: statuses in request order, with the configured limit; the unlimited
    // and the unmatched descriptor are OK without a limit and charge nothing.
    let r = call(
        &mut via_follower,
        request(
            "edge",
            vec![
                desc(&[("remote_address", "10.0.0.1")]),
                desc(&[("path", "/a")]),
                desc(&[("unknown", "x")]),
            ],
            0,
        ),
    )
    .await
    .unwrap();
    assert!(ok(&r), "{r:?}");
    let s = &r.statuses;
    assert_eq!(s.len(), 3);
    let limit = s[0].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.name.as_str(), limit.requests_per_unit),
        ("per_ip", 5)
    );
    assert_eq!(s[0].limit_remaining, 4);
    assert!(s[0].duration_until_reset.is_some());
    assert!(s[1].current_limit.is_none() && s[2].current_limit.is_none());
    // The draft-10 headers name the policy and hide the address.
    let h: Vec<(String, String)> = r
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    let policy = &h.iter().find(|(k, _)| k == "ratelimit-policy").unwrap().1;
    assert!(policy.starts_with("\"per_ip\";q=5;w=3600;pk=:"), "{policy}");
    assert!(!policy.contains("10.0.0.1"));
    assert!(h
        .iter()
        .any(|(k, v)| k == "x-ratelimit-remaining" && v == "4"));

    // hits_addend: request-level 3 takes 3 of the 4 left; a descriptor's own
    // hits_addend of 0 peeks without charging.
    let ip = || desc(&[("remote_address", "10.0.0.1")]);
    let r = call(&mut via_leader, request("edge", vec![ip()], 3))
        .await
        .unwrap();
    assert!(ok(&r));
    assert_eq!(r.statuses[0].limit_remaining, 1);
    let mut peek = ip();
    peek.hits_addend = Some(UInt64Value { value: 0 });
    for _ in 0..3 {
        let r = call(&mut via_follower, request("edge", vec![peek.clone()], 9))
            .await
            .unwrap();
        assert!(ok(&r));
        assert_eq!(r.statuses[0].limit_remaining, 1, "a peek charges nothing");
    }

    // All or none: the user has 2/hour; with an address that has 1 left the third
    // descriptor set is refused and charges neither bucket.
    let user = || desc(&[("user_id", "u1")]);
    let fresh_ip = || desc(&[("remote_address", "10.0.0.2")]);
    for _ in 0..2 {
        let r = call(
            &mut via_follower,
            request("edge", vec![fresh_ip(), user()], 1),
        )
        .await
        .unwrap();
        assert!(ok(&r), "{r:?}");
    }
    let r = call(
        &mut via_follower,
        request("edge", vec![fresh_ip(), user()], 1),
    )
    .await
    .unwrap();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(
        r.statuses[0].code,
        Code::Ok as i32,
        "the address alone would pass"
    );
    assert_eq!(r.statuses[0].limit_remaining, 3, "and was not charged");
    assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
    assert!(r
        .response_headers_to_add
        .iter()
        .any(|h| h.key == "retry-after"));
    let r = call(&mut via_leader, request("edge", vec![fresh_ip()], 1))
        .await
        .unwrap();
    assert_eq!(
        r.statuses[0].limit_remaining, 2,
        "only the grants were charged"
    );

    // Over limit: the first address's last request, then OVER_LIMIT.
    assert!(ok(&call(&mut via_leader, request("edge", vec![ip()], 1))
        .await
        .unwrap()));
    let r = call(&mut via_follower, request("edge", vec![ip()], 1))
        .await
        .unwrap();
    assert_eq!(r.overall_code, Code::OverLimit as i32);

    // Nested match and a per-request limit override.
    let r = call(
        &mut via_follower,
        request(
            "edge",
            vec![desc(&[("tenant", "acme"), ("user_id", "u1")])],
            1,
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        r.statuses[0].current_limit.as_ref().unwrap().name,
        "acme_user"
    );
    let mut o = desc(&[("anything", "y")]);
    o.limit = Some(
        envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride {
            requests_per_unit: 1,
            unit: 3, // HOUR
        },
    );
    assert!(ok(&call(
        &mut via_leader,
        request("edge", vec![o.clone()], 1)
    )
    .await
    .unwrap()));
    let r = call(&mut via_leader, request("edge", vec![o], 1))
        .await
        .unwrap();
    assert_eq!(r.overall_code, Code::OverLimit as i32);

    // Unknown domain: refused (INVALID_ARGUMENT), as envoyproxy/ratelimit refuses it.
    let e = call(&mut via_follower, request("nope", vec![ip()], 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("unknown domain"), "{e:?}");

    // Auth: no token and a wrong token are unauthenticated; the client token works.
    let probe = || request("edge", vec![desc(&[("nothing", "x")])], 1);
    let e = call_as(&mut via_follower, None, probe()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = call_as(&mut via_follower, Some("wrong-token-0123456789"), probe())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(ok(&call_as(&mut via_follower, Some(CLIENT), probe())
        .await
        .unwrap()));

    // Metrics by configured domain and code; an unknown domain is `other`.
    let m = c.metrics(follower).await;
    assert!(
        metric_sum(
            &m,
            "quorate_envoy_requests_total{domain=\"edge\",code=\"over_limit\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "quorate_envoy_requests_total{domain=\"other\",code=\"invalid_argument\"}"
        ) >= 1.0
    );
    c.wait_converged().await;
}

/// A leader dies while clients hammer one 40/hour key through every node: the grants
/// answered never exceed the limit (a request whose answer was lost may have been
/// charged, which only lowers grants), and the new leader keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_traffic_never_over_admits() {
    let mut c = start().await;
    let leader = c.leader_id().await;
    let mut first = client(&c, leader).await;
    wait_for_table(&mut first).await;
    let granted = Arc::new(AtomicU64::new(0));
    let after_kill = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in c.ids() {
        let addr = c.nodes[&id].grpc_addr.clone().unwrap();
        let (granted, after_kill, killed) = (granted.clone(), after_kill.clone(), killed.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut rl) = RateLimitServiceClient::connect(format!("http://{addr}")).await else {
                return;
            };
            let end = Instant::now() + Duration::from_secs(8);
            while Instant::now() < end {
                let r = call(&mut rl, request("edge", vec![desc(&[("hot", "k")])], 1)).await;
                match r {
                    Ok(r) if ok(&r) => {
                        granted.fetch_add(1, Ordering::SeqCst);
                        if killed.load(Ordering::SeqCst) {
                            after_kill.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    // Over the limit, or no quorum / the node is dead: never a grant.
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Kill the leader once a third of the quota is gone.
    let deadline = Instant::now() + DEADLINE;
    while granted.load(Ordering::SeqCst) < 14 {
        assert!(Instant::now() < deadline, "no traffic was granted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill(leader);
    killed.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let total = granted.load(Ordering::SeqCst);
    eprintln!(
        "{total} grants, {} after the kill",
        after_kill.load(Ordering::SeqCst)
    );
    // 40 per hour refills one request every 90 s.
    let refill = started.elapsed().as_secs() / 90 + 1;
    assert!(total <= 40 + refill, "{total} grants on a 40/hour key");
    assert!(
        after_kill.load(Ordering::SeqCst) > 0,
        "the surviving nodes kept serving after the leader died"
    );
    let survivors: BTreeSet<u64> = c.running().into_iter().collect();
    assert_eq!(survivors.len(), 2);
    c.wait_converged().await;
}
