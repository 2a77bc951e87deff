//! Peer authentication on a real node's Raft port (`serve_on` on loopback, with a
//! cluster secret): forged peer requests (unsigned, signed with a wrong secret, for
//! another cluster, altered, stale) and a replayed captured request are refused,
//! counted in `quorate_peer_rejected_total` and never applied; and a node whose peer
//! links leave the host refuses to start unless they are protected.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use quorate_core::{Acquire, Caller, Op, Outcome, Reply};
use quorate_server::backend::NodeError;
use quorate_server::config::NodeConfig;
use quorate_server::peer::protocol::{self, paths, AUTH_HEADER, CLUSTER_HEADER, TIMEOUT_HEADER};
use quorate_server::run::serve_on;
use quorate_server::security::signing::{wall_clock_ms, SIGNATURE_WINDOW};
use quorate_server::security::{PeerAuth, Secret};
use quorate_server::ClusterConfig;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;

const CLUSTER: &str = "peer-auth";
const SECRET: &str = "cluster-secret-for-tests-0123";

/// A forwarded acquire, as a follower sends it: carrying the caller its API
/// authenticated (the leader refuses forwarded ops without one).
fn acquire(key: &str, lease_id: &str) -> Vec<u8> {
    let op = Op::Acquire(Acquire {
        keys: vec![key.to_string()],
        lease_id: lease_id.to_string(),
        holder: "test".to_string(),
        ttl_ms: 60_000,
    });
    let caller = Caller {
        name: "svc".into(),
        admin: false,
    };
    protocol::encode(&op.by(caller)).expect("encode")
}

struct Peer {
    http: reqwest::Client,
    raft: String,
    api: String,
}

impl Peer {
    /// POST `body` to the node's `/forward/write` with exactly `headers`.
    async fn write(&self, headers: HeaderMap, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let r = self
            .http
            .post(format!("http://{}{}", self.raft, paths::FORWARD_WRITE))
            .headers(headers)
            .header(TIMEOUT_HEADER, "3000")
            .body(body)
            .send()
            .await
            .expect("send");
        (r.status(), r.bytes().await.expect("body").to_vec())
    }

    async fn api_get(&self, path: &str) -> String {
        self.http
            .get(format!("http://{}{path}", self.api))
            .send()
            .await
            .expect("api")
            .text()
            .await
            .expect("text")
    }
}

/// Headers of a request to `/forward/write` signed by `auth` (cluster id + signature).
fn signed(auth: &PeerAuth, body: &[u8]) -> HeaderMap {
    let mut h = auth.outgoing_headers();
    let sig = auth
        .sign("POST", paths::FORWARD_WRITE, body)
        .expect("nonce")
        .expect("a secret is configured");
    h.insert(AUTH_HEADER, sig);
    h
}

/// A one-node cluster with the cluster secret, ready; a client for its ports.
async fn start_with_secret(dir: &Path) -> (Peer, support::Running) {
    let bound = support::bind().await;
    let peer = Peer {
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
        api: bound.api_addr,
        raft: bound.raft_addr,
    };
    let mut config = ClusterConfig::single_node(CLUSTER, &peer.api, &peer.raft, &dir.join("data"));
    config.auth.cluster_secret = Some(SECRET.into());
    let node = support::serve(config, 1, bound.listeners);
    // Ready = the node's own signed peer traffic (bootstrap probe) was accepted.
    let deadline = Instant::now() + Duration::from_secs(20);
    support::wait_ready(&peer.http, &format!("http://{}", peer.api), deadline).await;
    (peer, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_peer_requests_are_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (peer, node) = start_with_secret(dir.path()).await;

    let ours = PeerAuth::new(CLUSTER, Some(Secret::new(SECRET)));
    let forged_body = acquire("job:forged", "forged");

    // Knowing the cluster id is not enough.
    let (s, b) = peer
        .write(ours.outgoing_headers(), forged_body.clone())
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert!(String::from_utf8_lossy(&b).contains("missing_auth"));
    // Nor is a signature made with another secret.
    let guessed = PeerAuth::new(CLUSTER, Some(Secret::new("guessed-secret-0123456789")));
    let (s, _) = peer
        .write(signed(&guessed, &forged_body), forged_body.clone())
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A node of another cluster (even one sharing the secret) is refused.
    let other = PeerAuth::new("other-cluster", Some(Secret::new(SECRET)));
    let (s, _) = peer
        .write(signed(&other, &forged_body), forged_body.clone())
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A garbled signature header.
    let mut garbled = ours.outgoing_headers();
    garbled.insert(AUTH_HEADER, HeaderValue::from_static("Bearer x"));
    let (s, _) = peer.write(garbled, forged_body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A real signature on a different body: the MAC covers the body.
    let real = acquire("job:real", "real-1");
    let (s, _) = peer.write(signed(&ours, &real), forged_body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A correctly signed request from well outside the window.
    let window = u64::try_from(SIGNATURE_WINDOW.as_millis()).expect("ms");
    let mut old = ours.outgoing_headers();
    old.insert(
        AUTH_HEADER,
        ours.sign_at(
            "POST",
            paths::FORWARD_WRITE,
            &forged_body,
            wall_clock_ms() - 2 * window,
            [5; 16],
        )
        .expect("secret"),
    );
    let (s, _) = peer.write(old, forged_body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A genuine request is served once; the same bytes captured and sent again are
    // refused.
    let captured = signed(&ours, &real);
    let (s, b) = peer.write(captured.clone(), real.clone()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let reply: Result<Reply, NodeError> = protocol::decode(&b).expect("decode");
    assert!(matches!(reply, Ok(Ok(Outcome::Granted(_)))), "{reply:?}");
    let (s, b) = peer.write(captured, real).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&b).contains("replayed"));

    // Nothing forged was applied.
    let usage = peer.api_get("/v1/slots/job:forged").await;
    assert!(usage.contains(r#""used":0"#), "{usage}");
    let usage = peer.api_get("/v1/slots/job:real").await;
    assert!(usage.contains(r#""used":1"#), "{usage}");

    // Every refusal is counted by reason.
    let metrics = peer.api_get("/metrics").await;
    for reason in [
        "missing_auth",
        "bad_mac",
        "wrong_cluster",
        "malformed_auth",
        "stale",
        "replayed",
    ] {
        let expected = if reason == "bad_mac" { 2 } else { 1 };
        let line = format!("quorate_peer_rejected_total{{reason=\"{reason}\"}} {expected}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }

    node.stop().await;
}

/// `POST /raft/stream` asking for an append stream, with exactly `headers`.
async fn open_stream(peer: &Peer, headers: HeaderMap) -> reqwest::Response {
    peer.http
        .post(format!("http://{}{}", peer.raft, paths::STREAM))
        .headers(headers)
        .header(reqwest::header::CONNECTION, "upgrade")
        .header(reqwest::header::UPGRADE, protocol::STREAM_PROTOCOL)
        .send()
        .await
        .expect("send")
}

/// A peer stream is authenticated like any peer request: unsigned, wrongly signed or
/// replayed upgrades are refused and counted; a signed one is upgraded and answers
/// appends and forwarded writes in frames; a frame that does not decode is refused
/// and ends the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_streams_are_authenticated_once_and_then_answer_frames() {
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
    use openraft::Vote;
    use quorate_server::peer::protocol::{read_frame, write_frame, StreamAnswer, StreamRequest};
    use quorate_store::TypeConfig;

    let dir = tempfile::tempdir().expect("tempdir");
    let (peer, node) = start_with_secret(dir.path()).await;

    let ours = PeerAuth::new(CLUSTER, Some(Secret::new(SECRET)));
    let sign = |auth: &PeerAuth| {
        let mut h = auth.outgoing_headers();
        let sig = auth.sign("POST", paths::STREAM, &[]).expect("nonce");
        h.insert(AUTH_HEADER, sig.expect("a secret is configured"));
        h
    };
    // No signature, or another secret's: refused before any upgrade.
    let r = open_stream(&peer, ours.outgoing_headers()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let guessed = PeerAuth::new(CLUSTER, Some(Secret::new("guessed-secret-0123456789")));
    let r = open_stream(&peer, sign(&guessed)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A signed upgrade gets a stream that answers appends, one frame each.
    let captured = sign(&ours);
    let r = open_stream(&peer, captured.clone()).await;
    assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = r.upgrade().await.expect("upgraded");
    // A stale append (term 0, from a node that is not in the cluster): answered by
    // Raft with its higher vote, and harmless.
    let stale = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(0, 9),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    for _ in 0..2 {
        let frame: StreamRequest<_> = StreamRequest::Append(&stale);
        write_frame(&mut io, &protocol::encode(&frame).expect("encode"))
            .await
            .expect("write");
        let answer = read_frame(&mut io).await.expect("read").expect("a frame");
        let answer: StreamAnswer<
            Result<AppendEntriesResponse<u64>, openraft::error::RaftError<u64>>,
        > = protocol::decode(&answer).expect("decode");
        assert!(
            matches!(
                answer,
                StreamAnswer::Done(Ok(AppendEntriesResponse::HigherVote(_)))
            ),
            "{answer:?}"
        );
    }
    // Forwarded writes on a stream are decided as `/forward/writes` decides them: each
    // op on its own, with its caller's rights (an op naming no caller is refused).
    let ops = vec![
        protocol::decode::<Op>(&acquire("job:streamed", "streamed-1")).expect("op"),
        Op::Release {
            lease_id: "streamed-1".into(),
        },
    ];
    let frame: StreamRequest<(), _> = StreamRequest::Writes {
        timeout_ms: 3000,
        ops: &ops,
    };
    write_frame(&mut io, &protocol::encode(&frame).expect("encode"))
        .await
        .expect("write");
    let answer = read_frame(&mut io).await.expect("read").expect("a frame");
    let answer: StreamAnswer<Vec<Result<Reply, NodeError>>> =
        protocol::decode(&answer).expect("decode");
    let StreamAnswer::Done(answers) = answer else {
        panic!("writes not decided: {answer:?}");
    };
    assert!(
        matches!(answers[0], Ok(Ok(Outcome::Granted(_)))),
        "{answers:?}"
    );
    assert!(
        matches!(answers[1], Err(NodeError::Forbidden(_))),
        "{answers:?}"
    );

    // A frame that is not a stream request is refused, and the stream ends.
    write_frame(&mut io, b"not an append").await.expect("write");
    let answer = read_frame(&mut io).await.expect("read").expect("a frame");
    let answer: StreamAnswer<Result<AppendEntriesResponse<u64>, openraft::error::RaftError<u64>>> =
        protocol::decode(&answer).expect("decode");
    assert!(matches!(answer, StreamAnswer::Refused(_)), "{answer:?}");
    assert_eq!(read_frame(&mut io).await.expect("clean end"), None);

    // The captured upgrade cannot open a second stream.
    let r = open_stream(&peer, captured).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.expect("text").contains("replayed"));

    // A request that does not ask for the upgrade is refused.
    let r = peer
        .http
        .post(format!("http://{}{}", peer.raft, paths::STREAM))
        .headers(sign(&ours))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    node.stop().await;
}

/// Start node 1 of `config` on fresh loopback listeners; the error it stops with.
async fn start_error(config: ClusterConfig) -> String {
    let bound = support::bind().await;
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        serve_on(config, 1, bound.listeners, std::future::pending()),
    )
    .await
    .expect("a refused configuration must fail at once, not serve");
    result.expect_err("must refuse to start").to_string()
}

fn two_nodes(dir: &Path, raft_1: &str, raft_2: &str) -> ClusterConfig {
    let mut c = ClusterConfig::single_node("links", "127.0.0.1:1", raft_1, &dir.join("data"));
    c.nodes.push(NodeConfig {
        id: 2,
        api_addr: "127.0.0.1:3".into(),
        raft_addr: raft_2.into(),
        grpc_addr: None,
        advertise_api: None,
    });
    c
}

#[tokio::test]
async fn non_loopback_peer_links_without_tls_refuse_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");

    // A peer on another host, no peer authentication at all.
    let m = start_error(two_nodes(dir.path(), "127.0.0.1:2", "10.0.0.2:7202")).await;
    assert!(
        m.contains("node 2 raft_addr \"10.0.0.2:7202\" is not a loopback address"),
        "{m}"
    );
    assert!(m.contains("peers are not authenticated"), "{m}");
    assert!(m.contains("configure [tls]"), "{m}");
    assert!(m.contains("client certificate"), "{m}");
    assert!(
        m.contains("auth.cluster_secret_env or auth.cluster_secret_file"),
        "{m}"
    );

    // The node's own raft_addr; host names other than localhost count as remote.
    let m = start_error(two_nodes(dir.path(), "192.0.2.1:7201", "127.0.0.1:2")).await;
    assert!(m.contains("node 1 raft_addr"), "{m}");
    let m = start_error(two_nodes(dir.path(), "127.0.0.1:2", "q2:7202")).await;
    assert!(m.contains("\"q2:7202\" is not a loopback address"), "{m}");

    // A secret without TLS would still send everything in clear text.
    let mut c = two_nodes(dir.path(), "127.0.0.1:2", "10.0.0.2:7202");
    c.auth.cluster_secret = Some(SECRET.into());
    let m = start_error(c).await;
    assert!(m.contains("[tls] is not configured"), "{m}");
    assert!(m.contains("clear text"), "{m}");
    assert!(m.contains("configure [tls]"), "{m}");

    // Loopback (including localhost and ::1) needs neither.
    let c = two_nodes(dir.path(), "localhost:2", "[::1]:7202");
    assert!(c.security(1).is_ok());
}

#[test]
fn non_loopback_peer_links_with_tls_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::make_test_ca(&dir.path().join("tls"));
    let mut c = two_nodes(dir.path(), "10.0.0.1:7201", "10.0.0.2:7202");
    c.tls = Some(support::test_ca_tls());
    let security = c.security(1).expect("mutual TLS protects every peer link");
    assert!(security.tls.is_some());
    assert!(!security.peer.signs());
    c.auth.cluster_secret = Some(SECRET.into());
    assert!(c.security(1).expect("and with a secret").peer.signs());
}

#[test]
fn the_cluster_id_header_is_what_peers_send() {
    // The header names are part of the wire contract other tests and tools rely on.
    let h = PeerAuth::new(CLUSTER, Some(Secret::new(SECRET))).outgoing_headers();
    assert_eq!(
        h.get(CLUSTER_HEADER).map(|v| v.as_bytes()),
        Some(&b"peer-auth"[..])
    );
    assert!(
        h.get(AUTH_HEADER).is_none(),
        "signed per request, never a fixed header"
    );
    assert!(h.iter().all(|(_, v)| !v.as_bytes().starts_with(b"Bearer")));
}
