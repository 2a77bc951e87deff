//! The decision stream (`POST /v1/stream`, `quorate_proto::stream`) against a real
//! single-node server on loopback: the upgrade is authenticated like any request,
//! frames get exactly the answers their HTTP routes give (caller, role and limits
//! included), requests pipeline, bad frames are refused without harming the node, and
//! streams are capped and closed on shutdown.

mod support;

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::{Duration, Instant};

use quorate_proto::stream::{self as wire, StreamOp, LEN_BYTES, STREAM_PROTOCOL};
use quorate_server::config::{Millis, PolicyConfig};
use quorate_server::security::auth::TokenSpec;
use quorate_server::security::Role;
use quorate_server::ClusterConfig;
use serde_json::{json, Value};
use support::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP: &str = "app-token-0123456789";
const OTHER: &str = "other-token-0123456789";

fn token(name: &str, role: Role, secret: &str) -> TokenSpec {
    TokenSpec {
        name: name.into(),
        role,
        token: Some(secret.into()),
        token_file: None,
        token_env: None,
    }
}

/// One node, two client tokens, `org:*` limited to 2, at most `max_connections`
/// connections (and so streams).
async fn start(dir: &Path, max_connections: usize) -> (String, Running) {
    let bound = support::bind().await;
    let mut config = ClusterConfig::single_node(
        "streams",
        &bound.api_addr,
        &bound.raft_addr,
        &dir.join("data"),
    );
    config.server.max_connections = NonZeroUsize::new(max_connections).expect("positive");
    config.server.drain_timeout_ms = Millis::new(5000);
    config.auth.tokens = vec![
        token("app", Role::Client, APP),
        token("other", Role::Client, OTHER),
    ];
    config.policies = vec![PolicyConfig::Concurrency {
        name: "orgs".into(),
        pattern: "org:*".into(),
        limit: 2,
        mode: Default::default(),
    }];
    let base = format!("http://{}", bound.api_addr);
    let node = support::serve(config, 1, bound.listeners);
    let http = reqwest::Client::new();
    support::wait_ready(&http, &base, Instant::now() + Duration::from_secs(20)).await;
    (bound.api_addr, node)
}

/// The head of the answer to an upgrade request: status and header lines.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    /// Bytes after the head (a JSON error body, or early frames).
    rest: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `POST /v1/stream` with the given extra header lines; reads the answer's head.
async fn upgrade(addr: &str, extra: &str) -> (TcpStream, Head) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("POST /v1/stream HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("head in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = buf[end + 4..].to_vec();
    (
        s,
        Head {
            status,
            headers,
            rest,
        },
    )
}

/// An open stream as `secret`'s caller.
async fn open(addr: &str, secret: &str) -> TcpStream {
    let (s, head) = upgrade(
        addr,
        &format!("connection: upgrade\r\nupgrade: {STREAM_PROTOCOL}\r\nauthorization: Bearer {secret}\r\n"),
    )
    .await;
    assert_eq!(head.status, 101, "upgrade refused: {:?}", head.headers);
    s
}

async fn send(s: &mut TcpStream, id: u64, op: StreamOp, body: &Value) {
    let mut out = Vec::new();
    wire::put_request(&mut out, id, op, body.to_string().as_bytes());
    s.write_all(&out).await.expect("write frame");
}

/// The next answer: id, status and JSON body.
async fn answer(s: &mut TcpStream) -> (u64, u16, Value) {
    let mut prefix = [0u8; LEN_BYTES];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut prefix))
        .await
        .expect("answer in time")
        .expect("answer");
    let mut payload = vec![0u8; wire::payload_len(prefix)];
    s.read_exact(&mut payload).await.expect("payload");
    let a = wire::answer(&payload).expect("answer frame");
    let body = serde_json::from_slice(a.body).expect("JSON body");
    (a.id, a.status, body)
}

/// Reads until the node closes the stream; panics if it does not within 10 s.
async fn closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("stream closed in time")
        .expect("read to end");
}

async fn call(s: &mut TcpStream, id: u64, op: StreamOp, body: Value) -> (u16, Value) {
    send(s, id, op, &body).await;
    let (got, status, body) = answer(s).await;
    assert_eq!(got, id, "answer for another request");
    (status, body)
}

fn acquire(key: &str, lease: &str) -> Value {
    json!({"keys": [key], "lease_id": lease, "ttl_ms": 60_000})
}

async fn metrics(addr: &str) -> String {
    reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .bearer_auth(APP)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_decided_as_their_routes_decide_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, node) = start(dir.path(), 64).await;

    // The upgrade is a client request like any other: no token, no stream.
    let (_, head) = upgrade(
        &addr,
        &format!("connection: upgrade\r\nupgrade: {STREAM_PROTOCOL}\r\n"),
    )
    .await;
    assert_eq!(head.status, 401);
    // A token but no upgrade asked for: a clear 400, not a hang.
    let (_, head) = upgrade(&addr, &format!("authorization: Bearer {APP}\r\n")).await;
    assert_eq!(head.status, 400);
    assert!(String::from_utf8_lossy(&head.rest).contains("invalid_request"));

    let (_, head) = upgrade(
        &addr,
        &format!(
            "connection: upgrade\r\nupgrade: {STREAM_PROTOCOL}\r\nauthorization: Bearer {APP}\r\n"
        ),
    )
    .await;
    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some(STREAM_PROTOCOL));
    assert_eq!(
        head.header(quorate_proto::LEADER_HEADER),
        Some(format!("http://{addr}").as_str()),
        "the upgrade names the leader"
    );

    let mut app = open(&addr, APP).await;
    // Three acquires sent before any answer is read: the limit (2) holds, and every
    // request is answered under its own id.
    for (id, lease) in [(1, "a1"), (2, "a2"), (3, "a3")] {
        send(&mut app, id, StreamOp::Acquire, &acquire("org:pipe", lease)).await;
    }
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(answer(&mut app).await);
    }
    answers.sort_by_key(|a| a.0);
    assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 2, 3]);
    let granted: Vec<_> = answers.iter().filter(|a| a.1 == 200).collect();
    let denied: Vec<_> = answers.iter().filter(|a| a.1 == 429).collect();
    assert_eq!((granted.len(), denied.len()), (2, 1), "{answers:?}");
    assert_eq!(granted[0].2["granted"], true);
    assert_eq!(denied[0].2["error"], "limit_exceeded");
    assert!(denied[0].2["retry_after_ms"]
        .as_u64()
        .is_some_and(|ms| ms > 0));
    let held = granted[0].2["lease_id"]
        .as_str()
        .expect("lease id")
        .to_owned();

    // Lease ownership travels with the stream's caller: another token may not release.
    let mut other = open(&addr, OTHER).await;
    let (status, body) = call(&mut other, 7, StreamOp::Release, json!({"lease_id": held})).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, body) = call(&mut app, 4, StreamOp::Release, json!({"lease_id": held})).await;
    assert_eq!((status, body["released"].as_bool()), (200, Some(true)));
    let (status, body) = call(
        &mut app,
        5,
        StreamOp::Renew,
        json!({"lease_id": held, "ttl_ms": 1000}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("lease_not_found"))
    );

    // Rate checks: burst 1, so the second is limited.
    let check = json!({"key": "user:s", "limit": 1, "period_ms": 60_000, "burst": 1});
    let (status, body) = call(&mut app, 6, StreamOp::RateCheck, check.clone()).await;
    assert_eq!((status, body["allowed"].as_bool()), (200, Some(true)));
    // No headers on a stream: the body has what the RateLimit fields would say.
    assert_eq!(
        (body["limit"].as_u64(), body["remaining"].as_u64()),
        (Some(1), Some(0))
    );
    let (status, body) = call(&mut app, 8, StreamOp::RateCheck, check).await;
    assert_eq!((status, body["allowed"].as_bool()), (429, Some(false)));
    assert!(
        body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{body}"
    );

    // Bad requests get their route's 400 under their own id, and the stream goes on.
    let mut out = Vec::new();
    wire::put_request(&mut out, 9, StreamOp::Acquire, b"{not json");
    app.write_all(&out).await.expect("write");
    let (id, status, body) = answer(&mut app).await;
    assert_eq!(
        (id, status, body["error"].as_str()),
        (9, 400, Some("invalid_request"))
    );
    let mut out = Vec::new();
    wire::put_request(&mut out, 10, StreamOp::Acquire, b"{}");
    out[LEN_BYTES + 8] = 99; // an op no release knows
    app.write_all(&out).await.expect("write");
    let (id, status, body) = answer(&mut app).await;
    assert_eq!(
        (id, status, body["error"].as_str()),
        (10, 400, Some("invalid_request"))
    );
    let (status, _) = call(&mut app, 11, StreamOp::Acquire, acquire("org:other", "b1")).await;
    assert_eq!(status, 200);

    // Counted like requests, by route, method STREAM and status; streams by gauge.
    let text = metrics(&addr).await;
    assert!(text.contains("quorate_api_streams 2"), "{text}");
    let granted_line = "quorate_http_requests_total{route=\"/v1/slots/acquire\",method=\"STREAM\",status=\"200\"} 3";
    assert!(text.contains(granted_line), "{text}");

    // A frame above the body limit is refused under id 0 and ends the stream; so does
    // a frame too short for its head. The node serves on.
    app.write_all(&(10u32 << 20).to_be_bytes())
        .await
        .expect("write");
    let (id, status, body) = answer(&mut app).await;
    assert_eq!(
        (id, status, body["error"].as_str()),
        (0, 413, Some("payload_too_large"))
    );
    closed(&mut app).await;
    other
        .write_all(&[0, 0, 0, 3, 1, 2, 3])
        .await
        .expect("write");
    let (id, status, _) = answer(&mut other).await;
    assert_eq!((id, status), (0, 400));
    closed(&mut other).await;
    let mut again = open(&addr, APP).await;
    let (status, _) = call(&mut again, 1, StreamOp::Acquire, acquire("org:after", "c1")).await;
    assert_eq!(status, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_capped_and_closed_when_the_node_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, node) = start(dir.path(), 2).await;
    let mut first = open(&addr, APP).await;
    let mut second = open(&addr, APP).await;
    // Upgraded connections leave the listener's count, so only the streams' own cap
    // stops a third: a 503 with a reason, not a silent close.
    let (_, head) = upgrade(
        &addr,
        &format!(
            "connection: upgrade\r\nupgrade: {STREAM_PROTOCOL}\r\nauthorization: Bearer {APP}\r\n"
        ),
    )
    .await;
    assert_eq!(
        head.status,
        503,
        "{:?}",
        String::from_utf8_lossy(&head.rest)
    );
    assert!(String::from_utf8_lossy(&head.rest).contains("decision streams"));
    let (status, _) = call(&mut first, 1, StreamOp::Acquire, acquire("org:x", "x1")).await;
    assert_eq!(status, 200);
    // Stopping the node closes its streams, and the stop does not wait for clients
    // that keep theirs open.
    let stopped = tokio::spawn(node.stop());
    closed(&mut first).await;
    closed(&mut second).await;
    tokio::time::timeout(Duration::from_secs(20), stopped)
        .await
        .expect("node stopped in time")
        .expect("join");
}

/// `GET /v1/slots/{key}` as the app token.
async fn slots(addr: &str, key: &str) -> Value {
    reqwest::Client::new()
        .get(format!("http://{addr}/v1/slots/{key}"))
        .bearer_auth(APP)
        .send()
        .await
        .expect("slots")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_leaves_its_queue_when_its_stream_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, node) = start(dir.path(), 64).await;
    let mut s = open(&addr, APP).await;
    for (id, lease) in [(1, "w1"), (2, "w2")] {
        let (status, _) = call(&mut s, id, StreamOp::Acquire, acquire("org:w", lease)).await;
        assert_eq!(status, 200);
    }
    let mut waiter = open(&addr, APP).await;
    let mut wait = acquire("org:w", "w3");
    wait["wait_ms"] = json!(30_000);
    send(&mut waiter, 1, StreamOp::Acquire, &wait).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while slots(&addr, "org:w").await["queue"]["length"] != 1 {
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client goes away, as an HTTP client that disconnects: its wait ends now,
    // not in 30 s, and a freed slot is not granted to nobody.
    drop(waiter);
    while slots(&addr, "org:w").await["queue"]["length"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the closed stream's waiter stayed queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = call(&mut s, 3, StreamOp::Release, json!({"lease_id": "w1"})).await;
    assert_eq!(status, 200);
    assert_eq!(slots(&addr, "org:w").await["used"], 1);
    node.stop().await;
}
