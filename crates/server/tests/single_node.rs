//! A one-node cluster in-process: the `Node` backend, its batcher and the peer-facing
//! router, without spawning processes (those are `tests/cluster.rs` at the root).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use quorate_core::{Acquire, Caller, Op, Outcome, Query, Reply};
use quorate_server::backend::{Backend, NodeError};
use quorate_server::config::{NonZeroMillis, PolicyConfig};
use quorate_server::http::peer;
use quorate_server::peer::protocol::{self, ProbeResponse, CLUSTER_HEADER};
use quorate_server::peer::PeerClient;
use quorate_server::raft::Node;
use quorate_server::telemetry::Metrics;
use quorate_server::ClusterConfig;
use tower::ServiceExt;

/// The deadline of a call made now (the API gives each request one of these).
fn soon() -> Instant {
    Instant::now() + Duration::from_secs(3)
}

/// One fast node with `org:*` limited to 2 (a typed value, not a template).
fn config(dir: &Path) -> ClusterConfig {
    let mut c =
        ClusterConfig::single_node("single", "127.0.0.1:1", "127.0.0.1:2", &dir.join("data"));
    c.server.request_timeout_ms = NonZeroMillis::new(3000).expect("positive");
    c.server.expire_interval_ms = NonZeroMillis::new(100).expect("positive");
    c.policies = vec![PolicyConfig::Concurrency {
        name: "orgs".into(),
        pattern: "org:*".into(),
        limit: 2,
        mode: Default::default(),
    }];
    c
}

async fn start(dir: &Path) -> Arc<Node> {
    let config = config(dir);
    let data = config.node_data_dir(1);
    std::fs::create_dir_all(&data).expect("data dir");
    let storage = quorate_store::open(&data).expect("open store");
    let security = config.security(1).expect("security");
    let peers = PeerClient::new(
        Duration::from_millis(500),
        security.peer.outgoing_headers(),
        None,
    )
    .expect("peer client");
    let node = Node::start(
        Arc::new(config),
        1,
        storage,
        peers,
        Arc::new(Metrics::new()),
    )
    .await
    .expect("start node");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.ready().await {
        assert!(Instant::now() < deadline, "single node never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node
}

/// A started node and its peer-facing router, as a follower would reach it (right
/// cluster id, no secret configured).
async fn start_with_peer_router(dir: &Path) -> (Arc<Node>, axum::Router) {
    let node = start(dir).await;
    let auth = config(dir).security(1).expect("security").peer;
    let router = peer::router(node.clone(), auth, false);
    (node, router)
}

/// `text` has every one of `lines` (metrics output).
fn assert_has_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
}

/// Node `node`'s metrics as scraped (sampled gauges refreshed first).
fn metrics_text(node: &Node) -> String {
    node.refresh_metrics();
    node.metrics().render()
}

fn acquire(key: &str, lease_id: &str) -> Op {
    Op::Acquire(Acquire {
        keys: vec![key.to_string()],
        lease_id: lease_id.to_string(),
        holder: "test".to_string(),
        ttl_ms: 60_000,
    })
}

/// A client token's identity, as a follower's API would put it into a forwarded op.
fn client(name: &str) -> Caller {
    Caller {
        name: name.into(),
        admin: false,
    }
}

fn granted(reply: &Reply) -> bool {
    matches!(reply, Ok(Outcome::Granted(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_alone_and_serves_writes_reads_and_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;

    let view = node.cluster().await.expect("cluster view");
    assert_eq!(view.leader_id, Some(1));
    assert_eq!(view.members.len(), 1);

    // cluster.toml's policy was proposed by the new leader: org:* is limited to 2.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = node
            .read(
                Query::Limit {
                    key: "org:a".into(),
                },
                soon(),
            )
            .await
            .expect("read");
        if matches!(&r, Ok(Outcome::Limit(l)) if l.limit == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "policy never applied: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(granted(
        &node
            .write(acquire("org:a", "l1"), soon())
            .await
            .expect("write")
    ));
    assert!(granted(
        &node
            .write(acquire("org:a", "l2"), soon())
            .await
            .expect("write")
    ));
    let third = node
        .write(acquire("org:a", "l3"), soon())
        .await
        .expect("write");
    assert!(matches!(third, Ok(Outcome::Denied(_))), "{third:?}");

    let usage = node
        .read(
            Query::Usage {
                key: "org:a".into(),
            },
            soon(),
        )
        .await
        .expect("read");
    match usage {
        Ok(Outcome::Usage(u)) => assert_eq!(u.used, 2),
        other => panic!("unexpected {other:?}"),
    }

    assert_has_lines(
        &metrics_text(&node),
        &[
            "quorate_raft_is_leader 1",
            "quorate_write_seconds_count",
            // Usage against the state caps, sampled from the state machine.
            r#"quorate_state_entries{kind="leases"} 2"#,
            r#"quorate_state_cap{kind="leases"} 1000000"#,
            r#"quorate_state_cap{kind="rate_keys"} 4000000"#,
        ],
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    let text = metrics_text(&node);
    let before = batches(&text);
    let synced_before = metric(&text, "quorate_log_synced_writes_total");

    let n = 300;
    let mut tasks = Vec::new();
    for i in 0..n {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            node.write(acquire(&format!("job:{i}"), &format!("lease-{i}")), soon())
                .await
        }));
    }
    for t in tasks {
        let reply = t.await.expect("join").expect("write");
        assert!(granted(&reply), "{reply:?}");
    }
    let text = metrics_text(&node);
    let proposed = batches(&text) - before;
    // Housekeeping adds a few entries of its own; batching must still make far fewer
    // entries than ops.
    assert!(proposed < n as f64 / 2.0, "{proposed} entries for {n} ops");
    // Every entry was appended, and each append made durable, before it was applied:
    // the disk metrics saw at least as many writes as entries, in fewer syncs.
    let synced = metric(&text, "quorate_log_synced_writes_total") - synced_before;
    let syncs = metric(&text, "quorate_log_sync_seconds_count");
    assert!(
        synced >= proposed,
        "{synced} synced writes for {proposed} entries"
    );
    assert!(syncs >= 1.0 && syncs <= metric(&text, "quorate_log_synced_writes_total"));
    assert!(metric(&text, "quorate_log_sync_seconds_sum") > 0.0);
    node.shutdown().await;
}

/// A leader busy with writes stays ready: entries committed but not yet applied when
/// readiness is asked about are not "behind" (`/readyz` once answered 503 then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_under_write_load_stays_ready() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..16 {
        let (node, stop) = (node.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let lease = format!("lease-{w}-{i}");
                let reply = node
                    .write(acquire(&format!("job:{w}"), &lease), soon())
                    .await
                    .expect("write");
                assert!(granted(&reply), "{reply:?}");
                node.write(Op::Release { lease_id: lease }, soon())
                    .await
                    .expect("write")
                    .expect("released");
                i += 1;
            }
            i
        }));
    }
    let mut not_ready = 0;
    for _ in 0..1000 {
        if !node.ready().await {
            not_ready += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.expect("join");
    }
    assert!(
        written > 100,
        "only {written} acquire/release pairs ran beside the checks"
    );
    assert_eq!(
        not_ready, 0,
        "not ready at {not_ready} of 1000 checks under load"
    );
    node.shutdown().await;
}

fn batches(text: &str) -> f64 {
    metric(text, "quorate_batches_total")
}

/// The value of an unlabelled sample in a `/metrics` text (0 if absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_router_decodes_strictly_and_forwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, router) = start_with_peer_router(dir.path()).await;

    for path in [
        "/raft/append",
        "/raft/vote",
        "/raft/snapshot",
        "/forward/write",
        "/forward/writes",
        "/forward/read",
    ] {
        let resp = router
            .clone()
            .oneshot(
                Request::post(path)
                    .header(CLUSTER_HEADER, "single")
                    .body(Body::from(vec![0xffu8; 33]))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
    }

    let resp = router
        .clone()
        .oneshot(
            Request::get("/raft/probe")
                .header(CLUSTER_HEADER, "single")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    let probe: ProbeResponse = serde_json::from_slice(&body).expect("probe json");
    assert_eq!(probe.node_id, 1);
    assert_eq!(probe.cluster_id, "single");
    assert!(!probe.fresh);

    let reply = forward(&router, &acquire("job:fwd", "fwd-1").by(client("svc"))).await;
    assert!(matches!(reply, Ok(ref r) if granted(r)), "{reply:?}");

    // Another cluster's node, or a caller without the cluster id, is refused before
    // anything is decoded, and the refusal is counted.
    for cluster in [Some("other-cluster"), None] {
        let mut req = Request::post("/forward/write").header(protocol::TIMEOUT_HEADER, "2000");
        if let Some(c) = cluster {
            req = req.header(CLUSTER_HEADER, c);
        }
        let op = protocol::encode(&acquire("job:fwd", "forged")).expect("encode");
        let resp = router
            .clone()
            .oneshot(req.body(Body::from(op)).expect("request"))
            .await
            .expect("response");
        assert!(
            resp.status().is_client_error(),
            "{cluster:?}: {}",
            resp.status()
        );
    }
    // The forwarded acquire belongs to the caller the follower named.
    let lease = node
        .read(
            Query::Lease {
                lease_id: "fwd-1".into(),
            },
            soon(),
        )
        .await
        .expect("read");
    assert!(
        matches!(&lease, Ok(Outcome::Lease(Some(l))) if l.owner == "svc"),
        "{lease:?}"
    );

    assert_has_lines(
        &metrics_text(&node),
        &[
            r#"quorate_peer_rejected_total{reason="wrong_cluster"} 1"#,
            r#"quorate_peer_rejected_total{reason="missing_cluster"} 1"#,
        ],
    );
    node.shutdown().await;
}

/// Post `op` to the leader's `/forward/write` as a peer would (right cluster id, no
/// secret configured) and decode the answer.
async fn forward(router: &axum::Router, op: &Op) -> Result<Reply, NodeError> {
    let resp = router
        .clone()
        .oneshot(
            Request::post("/forward/write")
                .header(CLUSTER_HEADER, "single")
                .header(protocol::TIMEOUT_HEADER, "2000")
                .body(Body::from(protocol::encode(op).expect("encode")))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    protocol::decode(&body).expect("decode")
}

/// A follower's batch (`/forward/writes`) is decided op by op, as if each had come
/// alone: every answer at its op's position, the role check per op (a forged admin op
/// or a bare op is refused without affecting its neighbours), and a batch over the
/// limit is refused whole before anything is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_batches_are_checked_and_answered_per_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, router) = start_with_peer_router(dir.path()).await;
    let post = |body: Vec<u8>| {
        router.clone().oneshot(
            Request::post("/forward/writes")
                .header(CLUSTER_HEADER, "single")
                .header(protocol::TIMEOUT_HEADER, "2000")
                .body(Body::from(body))
                .expect("request"),
        )
    };
    let batch: protocol::ForwardWrites = vec![
        acquire("org:batch", "b-1").by(client("svc")),
        Op::SetLimit {
            key: "org:batch".into(),
            limit: 999,
        }
        .by(client("svc")),
        Op::Release {
            lease_id: "b-1".into(),
        },
        acquire("org:batch", "b-2").by(client("other")),
        acquire("org:batch", "b-3").by(client("svc")),
    ];
    let resp = post(protocol::encode(&batch).expect("encode"))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    let answers: protocol::ForwardAnswers<NodeError> = protocol::decode(&body).expect("decode");
    assert_eq!(answers.len(), batch.len(), "{answers:?}");
    assert!(matches!(&answers[0], Ok(r) if granted(r)), "{answers:?}");
    assert!(matches!(&answers[1], Err(NodeError::Forbidden(m)) if m.contains("admin")));
    assert!(matches!(&answers[2], Err(NodeError::Forbidden(m)) if m.contains("caller")));
    // org:* is limited to 2: of the two other acquires exactly one is granted.
    let grants = answers[3..]
        .iter()
        .filter(|a| matches!(a, Ok(r) if granted(r)))
        .count();
    assert_eq!(grants, 1, "{answers:?}");
    // The grants belong to the callers each op named.
    let owner = |id: &'static str| {
        let node = node.clone();
        async move {
            match node
                .read(
                    Query::Lease {
                        lease_id: id.into(),
                    },
                    soon(),
                )
                .await
            {
                Ok(Ok(Outcome::Lease(Some(l)))) => Some(l.owner),
                _ => None,
            }
        }
    };
    assert_eq!(owner("b-1").await.as_deref(), Some("svc"));
    let (b2, b3) = (owner("b-2").await, owner("b-3").await);
    assert!(
        matches!(
            (b2.as_deref(), b3.as_deref()),
            (Some("other"), None) | (None, Some("svc"))
        ),
        "{b2:?} {b3:?}"
    );

    let too_many: protocol::ForwardWrites =
        vec![Op::Noop.by(client("svc")); protocol::MAX_FORWARD_OPS + 1];
    let resp = post(protocol::encode(&too_many).expect("encode"))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    node.shutdown().await;
}

/// A forwarded op carries the role the receiving node checked, and the leader refuses
/// ops that role may not do: a forged forward of an admin op (`SetLimit`) with a
/// client's identity — or with none — is refused before it is proposed, and the
/// limit stays what it was. The same op from an admin caller goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_ops_are_refused_beyond_their_callers_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, router) = start_with_peer_router(dir.path()).await;
    let set_limit = || Op::SetLimit {
        key: "org:forged".into(),
        limit: 999,
    };
    let limit = || async {
        match node
            .read(
                Query::Limit {
                    key: "org:forged".into(),
                },
                soon(),
            )
            .await
        {
            Ok(Ok(Outcome::Limit(l))) => l.limit,
            other => panic!("{other:?}"),
        }
    };
    let before = limit().await;
    assert_ne!(before, 999);

    let forged = forward(&router, &set_limit().by(client("svc"))).await;
    assert!(
        matches!(&forged, Err(NodeError::Forbidden(m)) if m.contains("set_limit") && m.contains("admin")),
        "{forged:?}"
    );
    let bare = forward(&router, &set_limit()).await;
    assert!(
        matches!(&bare, Err(NodeError::Forbidden(m)) if m.contains("caller")),
        "{bare:?}"
    );
    // A client op without its caller would act as the system (admin, owner ""):
    // refused as well.
    let bare_release = forward(
        &router,
        &Op::Release {
            lease_id: "x".into(),
        },
    )
    .await;
    assert!(
        matches!(bare_release, Err(NodeError::Forbidden(_))),
        "{bare_release:?}"
    );
    assert_eq!(limit().await, before, "a refused forward changed the limit");

    let admin = Caller {
        name: "ops".into(),
        admin: true,
    };
    let ok = forward(&router, &set_limit().by(admin)).await;
    assert!(
        matches!(ok, Ok(Ok(Outcome::LimitSet { limit: 999, .. }))),
        "{ok:?}"
    );
    assert_eq!(limit().await, 999);

    // A client's own lease op is forwarded, and judged by ownership in the core.
    let mine = forward(&router, &acquire("job:own", "own-1").by(client("svc"))).await;
    assert!(matches!(mine, Ok(ref r) if granted(r)), "{mine:?}");
    let theirs = forward(
        &router,
        &Op::Release {
            lease_id: "own-1".into(),
        }
        .by(client("other")),
    )
    .await;
    assert!(
        matches!(theirs, Ok(Err(quorate_core::CoreError::Forbidden { .. }))),
        "{theirs:?}"
    );
    node.shutdown().await;
}

/// Issue 21: `POST /v1/members` bypassed the startup rule for peer links. A node
/// added at run time with a Raft address off the host, in a cluster without [tls],
/// would have had its votes and entries travel unauthenticated and in clear text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_member_with_an_unprotected_non_loopback_raft_addr_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    let req = quorate_proto::AddMemberRequest {
        id: 2,
        api_addr: "node2.invalid:7102".into(),
        // A name that never resolves (RFC 6761): no traffic leaves the host even if
        // the check were missing; as a host name it counts as non-loopback.
        raft_addr: "node2.invalid:7202".into(),
        learner_only: true,
    };
    match node
        .add_member(req, Instant::now() + Duration::from_secs(5))
        .await
    {
        Err(NodeError::Refused(msg)) => {
            assert!(
                msg.contains("node2.invalid:7202") && msg.contains("[tls]"),
                "{msg}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let view = node.cluster().await.expect("cluster view");
    assert_eq!(view.members.len(), 1, "the member was added anyway");
}
