//! The waiting acquire on real three-node clusters (issue 23): FIFO grants to
//! waiters spread over every node, kept through a leader SIGKILL; a waiter whose
//! client goes away leaks no slot; a wait that ends is a 429 with its place; the
//! Rust client's `acquire_wait` and the CLI's `acquire --wait`.
//!
//! Each waiter is its own HTTP client on its own connection to one node. Waiters
//! are enqueued in a known order (each is seen in `GET /v1/slots/{key}`'s queue
//! before the next starts), and slots are freed one at a time, each grant awaited
//! before the next release, so the order grants arrive in is the order they were
//! made in. Run with `-- --test-threads=1`.

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::{eventually_within, Cluster};
use quorate_client::{Client, ClientConfig, Error};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(30);

/// `GET /v1/slots/{key}` on the first running node that answers 200.
async fn slots(c: &mut Cluster, key: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        for id in c.running() {
            let (s, v) = c.get(id, &format!("/v1/slots/{key}")).await;
            if s == StatusCode::OK {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no node answered for {key}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST path` on running nodes in turn until one decides (not 503, no
/// connection error): through an election.
async fn post_decided(c: &mut Cluster, path: &str, body: Value) -> (StatusCode, Value) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        for id in c.running() {
            let (s, v) = c.post(id, path, body.clone()).await;
            if s != StatusCode::SERVICE_UNAVAILABLE && !v.is_null() {
                return (s, v);
            }
        }
        assert!(Instant::now() < deadline, "nobody decided {path} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a waiter saw: its index, final status and body, and the nodes it asked.
type Done = (usize, StatusCode, Value, usize);

/// One waiter: its own client, first on `urls[0]`; on a connection error (its
/// node died) it asks the next node with the same lease id and the wait that is
/// left, as a client should.
fn spawn_waiter(
    i: usize,
    key: &str,
    urls: Vec<String>,
    wait: Duration,
    done: mpsc::UnboundedSender<Done>,
) {
    let key = key.to_string();
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(wait + Duration::from_secs(10))
            .build()
            .expect("client");
        let start = Instant::now();
        let mut node = 0;
        loop {
            let left = wait.saturating_sub(start.elapsed()).as_millis().max(1) as u64;
            let body = json!({
                "keys": [key], "lease_id": format!("w{i:02}"), "ttl_ms": 60_000,
                "holder": format!("waiter-{i}"), "wait_ms": left,
            });
            let url = format!("{}/v1/slots/acquire", urls[node % urls.len()]);
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status() != StatusCode::SERVICE_UNAVAILABLE => {
                    let status = r.status();
                    let v = r.json().await.unwrap_or(Value::Null);
                    let _ = done.send((i, status, v, node + 1));
                    return;
                }
                _ if start.elapsed() > wait => {
                    let _ = done.send((i, StatusCode::SERVICE_UNAVAILABLE, Value::Null, node + 1));
                    return;
                }
                _ => {
                    node += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

async fn next_done(rx: &mut mpsc::UnboundedReceiver<Done>, c: &Cluster) -> Done {
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Some(d)) => d,
        _ => panic!("no waiter answered in time\n{}", c.tails(30)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_waiters_over_three_nodes_are_granted_in_fifo_order_through_a_leader_kill() {
    let mut c = Cluster::start(3).await;
    let key = "q:fifo";
    let (s, _) = post_decided(&mut c, "/v1/slots/acquire", json!({"keys": ["warmup"]})).await;
    assert_eq!(s, StatusCode::OK);
    let leader = c.leader_id().await;
    let (s, v) = c
        .put(leader, &format!("/v1/limits/{key}"), json!({"limit": 2}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut holders: VecDeque<String> = VecDeque::new();
    for h in ["h0", "h1"] {
        let (s, v) = c
            .post(
                leader,
                "/v1/slots/acquire",
                json!({"keys": [key], "lease_id": h, "ttl_ms": 60_000}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        holders.push_back(h.to_string());
    }

    // 20 waiters, waiter i served by node ids[i % 3], each queued before the next.
    let ids = c.ids();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut served_by = Vec::new();
    for i in 0..20 {
        let first = ids[i % ids.len()];
        served_by.push(first);
        let urls: Vec<String> = (0..ids.len())
            .map(|k| c.api_url(ids[(i + k) % ids.len()]))
            .collect();
        spawn_waiter(i, key, urls, Duration::from_secs(55), tx.clone());
        let want = i as u64 + 1;
        let deadline = Instant::now() + DEADLINE;
        while slots(&mut c, key).await["queue"]["length"] != want {
            assert!(Instant::now() < deadline, "waiter {i} never queued");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let v = slots(&mut c, key).await;
    let order: Vec<&str> = v["queue"]["waiters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["lease_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("w{i:02}")).collect();
    assert_eq!(order, expected, "queue order");

    let mut last_token = 0u64;
    let mut reconnected = 0;
    let mut killed = None;
    for k in 0..20 {
        if k == 8 {
            // Mid-way: SIGKILL the leader. Waiters it served reconnect elsewhere
            // with their lease id; the others keep waiting where they are.
            let l = c.leader_id().await;
            c.kill(l);
            killed = Some(l);
        }
        let h = holders.pop_front().expect("a holder");
        let (s, v) = post_decided(&mut c, "/v1/slots/release", json!({"lease_id": h})).await;
        assert_eq!(s, StatusCode::OK, "release {h}: {v}");
        let (i, status, body, asked) = next_done(&mut rx, &c).await;
        if asked > 1 {
            reconnected += 1;
        }
        assert_eq!(status, StatusCode::OK, "waiter {i}: {body}");
        assert_eq!(i, k, "grant {k} went to waiter {i} (FIFO broken): {body}");
        let token = body["fencing_token"].as_u64().expect("token");
        assert!(token > last_token, "fencing tokens must grow: {body}");
        last_token = token;
        holders.push_back(body["lease_id"].as_str().unwrap().to_string());
        let v = slots(&mut c, key).await;
        let live = v["leases"].as_array().map_or(0, Vec::len);
        assert!(live <= 2, "over-admission: {v}");
    }
    let killed = killed.unwrap();
    assert!(
        served_by[8..].contains(&killed),
        "some waiter after the kill was served by the killed node"
    );
    assert!(
        reconnected > 0,
        "no waiter had to move to another node: the kill tested nothing"
    );
    assert!(rx.try_recv().is_err(), "no further answers");
    let v = slots(&mut c, key).await;
    assert_eq!(v["queue"]["length"], 0, "{v}");
    assert_eq!(v["used"], 2, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_waiter_leaks_no_slot_and_a_wait_that_ends_is_a_429_with_its_place() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader_id().await;
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let key = "q:gone";
    c.put(leader, &format!("/v1/limits/{key}"), json!({"limit": 1}))
        .await;
    let (s, held) = c
        .post(leader, "/v1/slots/acquire", json!({"keys": [key]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{held}");

    // A waiter on a follower whose client goes away (its request is dropped).
    let url = c.url(follower, "/v1/slots/acquire");
    let gone = tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let _ = http
            .post(url)
            .json(&json!({"keys": [key], "lease_id": "gone", "wait_ms": 30_000}))
            .send()
            .await;
    });
    eventually_within("the waiter is queued", DEADLINE, || {
        let c = &c;
        async move { c.get(leader, &format!("/v1/slots/{key}")).await.1["queue"]["length"] == 1 }
    })
    .await;
    gone.abort();
    eventually_within("the gone waiter left the queue", DEADLINE, || {
        let c = &c;
        async move { c.get(leader, &format!("/v1/slots/{key}")).await.1["queue"]["length"] == 0 }
    })
    .await;
    eventually_within("the follower holds no waiter", DEADLINE, || {
        let c = &c;
        async move { common::metric_sum(&c.metrics(follower).await, "quorate_queue_waiters") == 0.0 }
    })
    .await;
    let (s, _) = c
        .post(
            leader,
            "/v1/slots/release",
            json!({"lease_id": held["lease_id"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = c
        .post(
            leader,
            "/v1/slots/acquire",
            json!({"keys": [key], "lease_id": "next"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the slot went to the gone waiter: {v}");

    // Now held by "next": a waiter whose wait ends gets a 429 with its place.
    let (s, v) = c
        .post(
            follower,
            "/v1/slots/acquire",
            json!({"keys": [key], "wait_ms": 400}),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"], "limit_exceeded");
    assert_eq!(v["queue_position"], 1, "{v}");
    let (_, v) = c.get(leader, &format!("/v1/slots/{key}")).await;
    assert_eq!(v["queue"]["length"], 0, "{v}");
    // Above limits.max_wait_ms (60000 by default): 400 naming it.
    let (s, v) = c
        .post(
            follower,
            "/v1/slots/acquire",
            json!({"keys": [key], "wait_ms": 60_001}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("60000"), "{v}");
}

fn client(c: &Cluster) -> Client {
    let mut cfg = ClientConfig::new(c.ids().iter().map(|id| c.api_url(*id)));
    cfg.deadline = Duration::from_secs(15);
    Client::new(cfg).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_and_the_cli_wait_for_a_slot() {
    let c = Cluster::start(3).await;
    let client = client(&c);
    let key = "q:client";
    client.set_limit(key, 1).await.expect("set limit");
    let ttl = Duration::from_secs(30);
    let first = client.acquire(&[key], ttl).await.expect("acquire");

    // acquire_wait: queued, then granted when the guard is released.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .acquire_wait(&[key], ttl, Duration::from_secs(20))
                .await
        })
    };
    eventually_within("the client's waiter is queued", DEADLINE, || {
        let client = client.clone();
        async move { client.slots(key).await.is_ok_and(|s| s.queue.length == 1) }
    })
    .await;
    first.release().await.expect("release");
    let second = waiting.await.unwrap().expect("granted after waiting");
    let grant = second.grant().expect("a real grant").clone();
    assert!(grant.waited_ms >= 1, "{grant:?}");

    // A wait that ends: LimitExceeded with the place it had.
    match client
        .acquire_wait(&[key], ttl, Duration::from_millis(300))
        .await
    {
        Err(Error::LimitExceeded { queue_position, .. }) => assert_eq!(queue_position, Some(1)),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }

    // The CLI: --wait 300ms ends with exit 3, --wait 20s is granted on release.
    let nodes: Vec<String> = c.ids().iter().map(|id| c.api_url(*id)).collect();
    let cli = |wait: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
            .args(["acquire", key, "--wait", wait, "--node", &nodes.join(",")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run quorate")
    };
    let out = cli("300ms").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let child = cli("20s");
    eventually_within("the CLI's waiter is queued", DEADLINE, || {
        let client = client.clone();
        async move { client.slots(key).await.is_ok_and(|s| s.queue.length == 1) }
    })
    .await;
    second.release().await.expect("release");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("granted lease") && text.contains("after waiting"),
        "{text}"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["acquire", key, "--wait", "soon", "--node", &nodes[0]])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

/// A slot freed by a lease's TTL goes to the waiter when the lease expires, not at
/// the next housekeeping tick (the leader's queue wakeup): housekeeping is 5 s here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_freed_by_expiry_goes_to_the_waiter_without_waiting_for_housekeeping() {
    let mut options = common::Options::new(3);
    options.expire_interval_ms = 5000;
    let mut c = Cluster::start_with(options).await;
    let leader = c.leader_id().await;
    let key = "q:ttl";
    c.put(leader, &format!("/v1/limits/{key}"), json!({"limit": 1}))
        .await;
    let (s, v) = c
        .post(
            leader,
            "/v1/slots/acquire",
            json!({"keys": [key], "ttl_ms": 400}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let asked = Instant::now();
    let (s, v) = c
        .post(
            leader,
            "/v1/slots/acquire",
            json!({"keys": [key], "wait_ms": 10_000}),
        )
        .await;
    let took = asked.elapsed();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["waited_ms"].as_u64().is_some_and(|w| w >= 1), "{v}");
    assert!(
        took < Duration::from_millis(2500),
        "granted after {took:?}: the expiry waited for housekeeping"
    );
}
