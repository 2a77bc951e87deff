//! The Rust client's decision stream (`ClientConfig::decision_stream`) against a real
//! three-node cluster: decisions on a stream come out exactly as over HTTP, a crowd of
//! tasks shares one stream (the node's `quorate_api_streams` gauge and its `STREAM`
//! request counts say so) without ever exceeding a limit, and the client keeps
//! deciding, still on one stream, after the node its stream points at is killed and
//! restarted.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, eventually, Cluster};
use quorate_client::{Client, Error};
use quorate_proto as proto;

/// The decision routes, as their frames and requests are labelled in the metrics.
const DECISIONS: [&str; 4] = [
    "/v1/slots/acquire",
    "/v1/slots/release",
    "/v1/slots/renew",
    "/v1/rate/check",
];

/// Sum of `quorate_http_requests_total` series of the decision routes with `method`.
fn decisions_counted(metrics: &str, method: &str) -> f64 {
    let method = format!("method=\"{method}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("quorate_http_requests_total{") && l.contains(&method))
        .filter(|l| {
            DECISIONS
                .iter()
                .any(|r| l.contains(&format!("route=\"{r}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Per node: (open decision streams, decision frames, decision HTTP requests).
async fn stream_counts(c: &Cluster, ids: &[u64]) -> Vec<(f64, f64, f64)> {
    let mut out = Vec::new();
    for id in ids {
        let m = c.metrics(*id).await;
        out.push((
            common::metric_sum(&m, "quorate_api_streams "),
            decisions_counted(&m, "STREAM"),
            decisions_counted(&m, "POST"),
        ));
    }
    out
}

/// Wait until `node` serves the client's one decision stream and no other of the
/// `running` nodes serves one, sending a decision per round so the client follows
/// the leader hint (a stream is opened to the node a call goes to, and replaces the
/// previous one).
async fn wait_for_one_stream_on(c: &Cluster, client: &Client, node: u64, running: &[u64]) {
    eventually(&format!("one decision stream, on node {node}"), || async {
        client
            .check_rate("user:warmup", "user", None)
            .await
            .expect("rate check");
        let counts = stream_counts(c, running).await;
        running
            .iter()
            .zip(&counts)
            .all(|(id, (streams, _, _))| *streams == if *id == node { 1.0 } else { 0.0 })
    })
    .await;
}

/// An inline rate check: `limit` requests per hour on `key` (no refill while the
/// test runs).
fn hourly(key: &str, limit: u32) -> proto::RateCheckRequest {
    proto::RateCheckRequest {
        key: Some(key.into()),
        limit: Some(limit),
        period_ms: Some(3_600_000),
        ..Default::default()
    }
}

/// One run of every decision against `key` (limit 2) and rate key `rate`,
/// described in words (ids and tokens left out, they differ between runs).
async fn decide_everything(client: &Client, key: &str, rate: &str) -> Vec<String> {
    let ttl = Duration::from_secs(60);
    let mut out = Vec::new();
    let first = client.acquire(&[key], ttl).await.expect("first acquire");
    let second = client.acquire(&[key], ttl).await.expect("second acquire");
    out.push(format!(
        "granted twice, tokens rising: {}",
        first.fencing_token() < second.fencing_token()
    ));
    match client.acquire(&[key], ttl).await {
        Err(Error::LimitExceeded {
            blocked_by,
            retry_after_ms,
            slots,
            ..
        }) => out.push(format!(
            "denied by {blocked_by:?}, retry later: {}, usage {:?}",
            retry_after_ms > 0,
            slots.iter().map(|s| (s.used, s.limit)).collect::<Vec<_>>()
        )),
        other => out.push(format!("third acquire: {other:?}")),
    }
    // A waiting acquire that times out in the queue is a denial with its place.
    match client
        .acquire_wait(&[key], ttl, Duration::from_millis(300))
        .await
    {
        Err(Error::LimitExceeded { queue_position, .. }) => {
            out.push(format!("wait ended ungranted at {queue_position:?}"))
        }
        other => out.push(format!("waiting acquire: {other:?}")),
    }
    let renewed = client.renew(first.lease_id(), ttl).await.expect("renew");
    out.push(format!("renewed: {}", renewed.lease_id == first.lease_id()));
    let lease = first.lease_id().to_string();
    out.push(format!("released: {:?}", first.release().await));
    out.push(format!(
        "released again: {:?}",
        client.release(&lease).await
    ));
    match client.renew(&lease, ttl).await {
        Err(Error::LeaseNotFound(_)) => out.push("renew after release: lease not found".into()),
        other => out.push(format!("renew after release: {other:?}")),
    }
    let third = client.acquire(&[key], ttl).await;
    out.push(format!("acquire after release: {}", third.is_ok()));
    out.push(format!("released: {:?}", second.release().await));
    out.push(format!(
        "released: {:?}",
        third.expect("acquire").release().await
    ));
    for i in 0..4 {
        let r = client
            .check_rates(&hourly(rate, 3))
            .await
            .expect("rate check");
        out.push(format!(
            "rate check {i}: allowed {}, remaining {}, retry later: {}",
            r.allowed,
            r.remaining,
            r.retry_after_ms > 0
        ));
    }
    out
}

/// Acquires `key` once and, if granted, holds it across a yield and releases it:
/// `held` is counted up after the grant and down before the release, so it never
/// exceeds what the cluster holds, and `most` keeps its peak. `Ok(released)`, or the
/// acquire's error (a denial is `Error::LimitExceeded`).
async fn hold_once(
    client: &Client,
    key: &str,
    held: &AtomicUsize,
    most: &AtomicUsize,
) -> Result<bool, Error> {
    let guard = client.acquire(&[key], Duration::from_secs(30)).await?;
    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
    most.fetch_max(now, Ordering::SeqCst);
    // Let other tasks run while the slot is held.
    tokio::task::yield_now().await;
    held.fetch_sub(1, Ordering::SeqCst);
    Ok(guard.release().await.expect("release"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_on_a_stream_are_the_decisions_over_http() {
    let mut c = Cluster::start(3).await;
    let ids = c.ids();
    let leader = c.leader_id().await;
    let http = client(&c, "stream-test", false);
    let streamed = client(&c, "stream-test", true);
    for key in ["org:parity-http", "org:parity-stream"] {
        http.set_limit(key, 2).await.expect("set limit");
    }

    let over_http = decide_everything(&http, "org:parity-http", "rate:parity-http").await;
    let expected = [
        "granted twice, tokens rising: true",
        "denied by [\"org:parity-http\"], retry later: true, usage [(2, 2)]",
        "wait ended ungranted at Some(1)",
        "renewed: true",
        "released: Ok(true)",
        "released again: Ok(false)",
        "renew after release: lease not found",
        "acquire after release: true",
        "released: Ok(true)",
        "released: Ok(true)",
        "rate check 0: allowed true, remaining 2, retry later: false",
        "rate check 1: allowed true, remaining 1, retry later: false",
        "rate check 2: allowed true, remaining 0, retry later: false",
        "rate check 3: allowed false, remaining 0, retry later: true",
    ];
    assert_eq!(over_http, expected, "the HTTP baseline");

    let before = stream_counts(&c, &ids).await;
    let over_stream = decide_everything(&streamed, "org:parity-stream", "rate:parity-stream").await;
    let after = stream_counts(&c, &ids).await;
    let expected_stream: Vec<String> = expected
        .iter()
        .map(|l| l.replace("parity-http", "parity-stream"))
        .collect();
    assert_eq!(
        over_stream, expected_stream,
        "the same decisions on a stream"
    );

    // Every one of those 15 decisions (11 on slots, 4 rate checks) was a frame,
    // none an HTTP request.
    let frames: f64 = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).sum();
    let posts: f64 = after.iter().zip(&before).map(|(a, b)| a.2 - b.2).sum();
    assert_eq!(
        frames, 15.0,
        "decision frames: before {before:?}, after {after:?}"
    );
    assert_eq!(
        posts, 0.0,
        "decision HTTP requests: {before:?} -> {after:?}"
    );
    // The upgrade's answer named the leader; the stream now lives there.
    assert_eq!(streamed.leader_hint(), Some(c.api_url(leader)));
    wait_for_one_stream_on(&c, &streamed, leader, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_stream_and_never_exceed_the_limit() {
    const LIMIT: usize = 3;
    const TASKS: usize = 32;
    const ROUNDS: usize = 5;
    let mut c = Cluster::start(3).await;
    let ids = c.ids();
    let leader = c.leader_id().await;
    let client = client(&c, "stream-test", true);
    client
        .set_limit("org:crowd", LIMIT as u32)
        .await
        .expect("set limit");
    wait_for_one_stream_on(&c, &client, leader, &ids).await;
    let before = stream_counts(&c, &ids).await;

    let held = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (client, held, most) = (client.clone(), held.clone(), most.clone());
            tokio::spawn(async move {
                let (mut granted, mut denied) = (0usize, 0usize);
                for r in 0..ROUNDS {
                    match hold_once(&client, "org:crowd", &held, &most).await {
                        Ok(true) => granted += 1,
                        Err(Error::LimitExceeded { blocked_by, .. }) => {
                            assert_eq!(blocked_by, ["org:crowd"]);
                            denied += 1;
                        }
                        Ok(false) => panic!("task {t} round {r}: a granted lease was gone"),
                        Err(e) => panic!("task {t} round {r}: {e}"),
                    }
                    let rate = client
                        .check_rate(&format!("user:crowd-{t}"), "user", None)
                        .await
                        .expect("rate check");
                    assert!(rate.allowed, "{rate:?}");
                }
                (granted, denied)
            })
        })
        .collect();
    let (mut granted, mut denied) = (0, 0);
    for t in tasks {
        let (g, d) = t.await.expect("task");
        granted += g;
        denied += d;
    }
    let after = stream_counts(&c, &ids).await;

    let most = most.load(Ordering::SeqCst);
    assert!(most <= LIMIT, "{most} slots held at once, limit {LIMIT}");
    assert!(
        granted > 0 && denied > 0,
        "granted {granted}, denied {denied}"
    );
    assert_eq!(granted + denied, TASKS * ROUNDS);
    // All of it went as frames on the leader's one stream: each grant is an acquire
    // and a release, each denial an acquire, plus a rate check per round.
    let sent = (2 * granted + denied + TASKS * ROUNDS) as f64;
    for (i, id) in ids.iter().enumerate() {
        let (streams, frames, posts) = (
            after[i].0,
            after[i].1 - before[i].1,
            after[i].2 - before[i].2,
        );
        if *id == leader {
            assert_eq!((streams, frames), (1.0, sent), "leader {id}: {after:?}");
        } else {
            assert_eq!((streams, frames), (0.0, 0.0), "node {id}: {after:?}");
        }
        assert_eq!(
            posts, 0.0,
            "node {id} got decision HTTP requests: {after:?}"
        );
    }
    assert_eq!(client.slots("org:crowd").await.expect("usage").used, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_deciding_when_its_streams_node_is_killed_and_restarted() {
    const LIMIT: usize = 2;
    let mut c = Cluster::start(3).await;
    let leader = c.leader_id().await;
    let client = client(&c, "stream-test", true);
    client
        .set_limit("org:survivor", LIMIT as u32)
        .await
        .expect("set limit");
    wait_for_one_stream_on(&c, &client, leader, &c.ids()).await;
    let held_before = client
        .acquire(&["org:survivor"], Duration::from_secs(60))
        .await
        .expect("acquire before the kill");

    // Tasks keep deciding on the stream while its node dies: each call either
    // decides (a grant or a denial) or the test fails; none may see the crash.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(1));
    let most = Arc::new(AtomicUsize::new(1));
    let decided = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (client, stop, held, most, decided) = (
                client.clone(),
                stop.clone(),
                held.clone(),
                most.clone(),
                decided.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match hold_once(&client, "org:survivor", &held, &most).await {
                        // A release retried across the kill may find its lease gone.
                        Ok(_) | Err(Error::LimitExceeded { .. }) => {}
                        Err(e) => panic!("task {t}: {e}"),
                    }
                    client
                        .check_rate(&format!("user:survivor-{t}"), "user", None)
                        .await
                        .expect("rate check");
                    decided.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let decided_by = |n: usize| {
        let decided = decided.clone();
        move || {
            let decided = decided.clone();
            async move { decided.load(Ordering::SeqCst) >= n }
        }
    };
    eventually("decisions before the kill", decided_by(20)).await;

    c.kill(leader);
    let new_leader = c.leader_id().await;
    assert_ne!(new_leader, leader);
    let at_kill = decided.load(Ordering::SeqCst);
    eventually("decisions after the kill", decided_by(at_kill + 20)).await;
    // The client reopened its stream, and it ended up on the new leader (the hint
    // is learnt again even if the failover first put the stream on a follower).
    let survivors = c.running();
    wait_for_one_stream_on(&c, &client, new_leader, &survivors).await;

    c.restart(leader).await;
    let at_restart = decided.load(Ordering::SeqCst);
    let before = stream_counts(&c, &[new_leader]).await;
    eventually("decisions after the restart", decided_by(at_restart + 20)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("a deciding task failed");
    }
    let after = stream_counts(&c, &[new_leader]).await;
    assert!(
        after[0].1 >= before[0].1 + 40.0,
        "the decisions after the restart went on the new leader's stream: {before:?} -> {after:?}"
    );
    let most = most.load(Ordering::SeqCst);
    assert!(most <= LIMIT, "{most} slots held at once, limit {LIMIT}");

    // The lease taken before the kill survived it, and is released through the
    // stream to the new leader; nothing else is left held.
    let usage = client.slots("org:survivor").await.expect("usage");
    assert_eq!(usage.used, 1, "{usage:?}");
    assert_eq!(usage.leases[0].lease_id, held_before.lease_id());
    assert!(held_before.release().await.expect("release"));
    assert_eq!(client.slots("org:survivor").await.expect("usage").used, 0);
}
