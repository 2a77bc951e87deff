//! The tools people touch, against a real three-node cluster: the Rust client's guard
//! (renews while held, releases on drop, survives a leader kill while held) and every
//! operator command of the `quorate` CLI, with its output and exit codes.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{client, eventually, Cluster};
use quorate_client::{Client, Error};
use serde_json::Value;

async fn used(client: &Client, key: &str) -> u32 {
    client.slots(key).await.map(|s| s.used).unwrap_or(u32::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_renews_while_held_and_releases_on_drop() {
    let c = Cluster::start(3).await;
    let client = client(&c, "client-test", false);
    let ttl = Duration::from_millis(1200);
    let guard = client
        .acquire(&["org:guard", "global"], ttl)
        .await
        .expect("acquire");
    assert!(guard.fencing_token().is_some());
    // Holding for three TTLs is the point of this test: time must pass for a lease
    // without renewals to expire.
    tokio::time::sleep(ttl * 3).await;
    assert!(!guard.is_lost());
    let s = client.slots("org:guard").await.expect("usage");
    assert_eq!(s.used, 1, "the renewed lease outlived its TTL: {s:?}");
    assert_eq!(s.leases[0].lease_id, guard.lease_id());

    drop(guard);
    eventually("drop releases the slot", || async {
        used(&client, "org:guard").await == 0
    })
    .await;

    // Early return with `?` releases too.
    async fn fails_after_acquire(client: &Client) -> Result<(), Error> {
        let _g = client
            .acquire(&["org:guard"], Duration::from_secs(60))
            .await?;
        Err(Error::Config("setup failed before the work began".into()))
    }
    assert!(fails_after_acquire(&client).await.is_err());
    eventually("early return releases the slot", || async {
        used(&client, "org:guard").await == 0
    })
    .await;

    // Explicit release reports what happened.
    let g = client
        .acquire(&["org:guard"], Duration::from_secs(60))
        .await
        .expect("acquire");
    assert!(g.release().await.expect("release"), "the lease was live");
    assert_eq!(used(&client, "org:guard").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_is_typed_and_a_held_guard_survives_a_leader_kill() {
    let mut c = Cluster::start(3).await;
    let client = client(&c, "client-test", false);
    client.set_limit("org:one", 1).await.expect("set limit");
    let ttl = Duration::from_millis(2000);
    let guard = client.acquire(&["org:one"], ttl).await.expect("acquire");
    match client.acquire(&["org:one"], ttl).await {
        Err(Error::LimitExceeded {
            blocked_by,
            retry_after_ms,
            ..
        }) => {
            assert_eq!(blocked_by, vec!["org:one".to_string()]);
            assert!(
                retry_after_ms > 0 && retry_after_ms <= 2000,
                "{retry_after_ms}"
            );
        }
        other => panic!("expected a denial, got {other:?}"),
    }

    let leader = c.leader_id().await;
    c.kill(leader);
    let new_leader = c.leader_id().await;
    assert_ne!(new_leader, leader);
    // Past the TTL: only renewals through the new leader keep the lease alive.
    tokio::time::sleep(ttl * 2).await;
    assert!(
        !guard.is_lost(),
        "renewals must fail over to the new leader"
    );
    let s = client.slots("org:one").await.expect("usage after failover");
    assert_eq!(s.used, 1, "{s:?}");
    assert_eq!(
        s.leases[0].fencing_token,
        guard.fencing_token().unwrap_or_default()
    );
    drop(guard);
    eventually("release after failover", || async {
        used(&client, "org:one").await == 0
    })
    .await;
}

/// Rate checks each node has served itself (its own API, whatever it then did).
async fn rate_checks_served(c: &Cluster, ids: &[u64]) -> Vec<f64> {
    let mut out = Vec::new();
    for id in ids {
        out.push(common::metric_sum(
            &c.metrics(*id).await,
            r#"quorate_http_requests_total{route="/v1/rate/check""#,
        ));
    }
    out
}

/// The Rust client sends decisions to the leader the cluster names in
/// `x-quorate-leader`, and when the leader is killed it fails over to any node and
/// then follows the new hint: the new leader serves every later decision itself,
/// the surviving follower none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sends_to_the_leader_and_follows_the_hint_after_a_leader_kill() {
    let mut c = Cluster::start(3).await;
    let client = client(&c, "client-test", false);
    let leader = c.leader_id().await;
    // The first answer (from whichever node is tried first) names the leader.
    client
        .check_rate("user:hint", "user", None)
        .await
        .expect("rate check");
    assert_eq!(client.leader_hint(), Some(c.api_url(leader)));
    let ids = c.ids();
    let before = rate_checks_served(&c, &ids).await;
    for _ in 0..5 {
        client
            .check_rate("user:hint", "user", None)
            .await
            .expect("rate check");
    }
    let after = rate_checks_served(&c, &ids).await;
    for (i, id) in ids.iter().enumerate() {
        let want = if *id == leader { 5.0 } else { 0.0 };
        assert_eq!(after[i] - before[i], want, "node {id} (leader {leader})");
    }

    c.kill(leader);
    // The hinted node is gone: the client falls back to the others, whose answers
    // name the new leader once one is elected.
    client
        .check_rate("user:hint", "user", None)
        .await
        .expect("rate check after the leader was killed");
    let new_leader = c.leader_id().await;
    assert_ne!(new_leader, leader);
    eventually("the client follows the new leader hint", || async {
        client.check_rate("user:hint", "user", None).await.is_ok()
            && client.leader_hint() == Some(c.api_url(new_leader))
    })
    .await;
    let running = c.running();
    let before = rate_checks_served(&c, &running).await;
    for _ in 0..5 {
        client
            .check_rate("user:hint", "user", None)
            .await
            .expect("rate check");
    }
    let after = rate_checks_served(&c, &running).await;
    for (i, id) in running.iter().enumerate() {
        let want = if *id == new_leader { 5.0 } else { 0.0 };
        assert_eq!(
            after[i] - before[i],
            want,
            "node {id} (new leader {new_leader})"
        );
    }
}

/// Run the CLI against the cluster's nodes.
fn cli(c: &Cluster, args: &[&str]) -> Output {
    let nodes: Vec<String> = c.ids().iter().map(|id| c.api_url(*id)).collect();
    std::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .arg("--node")
        .arg(nodes.join(","))
        .output()
        .expect("run quorate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(c: &Cluster, args: &[&str]) -> String {
    let o = cli(c, args);
    assert!(
        o.status.success(),
        "quorate {args:?}: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_command_end_to_end() {
    // One cluster for all commands (starting it is the slow part). The steps share its
    // state, so their order matters: the limits listing counts the `org:` keys set so
    // far, before the denial step adds `org:full`.
    let c = Cluster::start(3).await;
    cli_status(&c);
    cli_limits_acquire_release(&c);
    cli_denied_acquire(&c);
    cli_rate_check(&c);
    cli_policies(&c);
    cli_errors(&c);
    client_counters(&c).await;
}

/// The Rust client's counter calls against the real cluster: a key with `/` is one
/// segment, increments add within a window, a read and a clear see them.
async fn client_counters(c: &Cluster) {
    let client = client(c, "client-test", false);
    let key = "LIMITER/ip/1.2.3.4/5/1/minute";
    let first = client.counter_incr(key, 1, 60_000).await.expect("incr");
    assert_eq!((first.key.as_str(), first.value), (key, 1));
    let second = client.counter_incr(key, 2, 60_000).await.expect("incr");
    assert_eq!(second.value, 3);
    assert_eq!(
        second.expires_at_ms, first.expires_at_ms,
        "a live window keeps its expiry"
    );
    let read = client.counter(key).await.expect("get");
    assert_eq!((read.value, read.expires_at_ms), (3, first.expires_at_ms));
    assert!(client.clear_counter(key).await.expect("clear"));
    assert_eq!(client.counter(key).await.expect("get").value, 0);
    let bad = client.counter_incr("a b", 1, 1000).await;
    assert!(bad.is_err(), "an invalid key is refused: {bad:?}");
}

/// status: one row per node, exactly one leader.
fn cli_status(c: &Cluster) {
    let out = ok(c, &["status"]);
    let role = |r: &str| {
        out.lines()
            .filter(|l| l.split_whitespace().nth(2) == Some(r))
            .count()
    };
    assert_eq!((role("leader"), role("follower")), (1, 2), "{out}");
    let json: Value = serde_json::from_str(&ok(c, &["status", "--json"])).expect("status json");
    assert_eq!(json.as_array().map(Vec::len), Some(3));
}

/// limits: set, get, list with usage, delete; acquire / slots show / release.
fn cli_limits_acquire_release(c: &Cluster) {
    let out = ok(c, &["limits", "set", "org:acme", "7"]);
    assert!(out.contains("limit of org:acme set to 7"), "{out}");
    let out = ok(c, &["limits", "get", "org:acme"]);
    assert!(
        out.contains("org:acme") && out.contains(" 7 ") && out.contains("override"),
        "{out}"
    );
    let out = ok(c, &["limits", "get", "org:other"]);
    assert!(out.contains("policy:orgs"), "{out}");
    ok(c, &["limits", "set", "org:beta", "3"]);

    // acquire / slots show / release.
    let out = ok(
        c,
        &[
            "acquire",
            "org:acme",
            "global",
            "--ttl-ms",
            "60000",
            "--lease-id",
            "cli-1",
            "--holder",
            "ops-shell",
        ],
    );
    assert!(out.contains("granted lease cli-1"), "{out}");
    let out = ok(c, &["slots", "show", "org:acme"]);
    assert!(
        out.contains("1/7 slots in use") && out.contains("cli-1") && out.contains("ops-shell"),
        "{out}"
    );
    let out = ok(c, &["limits", "list", "--prefix", "org:", "--with-usage"]);
    assert!(out.contains("USED"), "{out}");
    let acme = out
        .lines()
        .find(|l| l.starts_with("org:acme"))
        .unwrap_or_default();
    assert!(
        acme.split_whitespace().collect::<Vec<_>>() == ["org:acme", "7", "override", "1"],
        "{out}"
    );
    assert!(out.contains("org:beta"), "{out}");
    let listed: Value =
        serde_json::from_str(&ok(c, &["limits", "list", "--prefix", "org:", "--json"]))
            .expect("json");
    assert_eq!(
        listed["limits"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    let out = ok(c, &["release", "cli-1"]);
    assert!(out.contains("released cli-1"), "{out}");
    let out = ok(c, &["release", "cli-1"]);
    assert!(out.contains("was not live"), "{out}");
    let out = ok(c, &["limits", "delete", "org:beta"]);
    assert!(out.contains("deleted"), "{out}");
}

/// A denied acquire exits 3.
fn cli_denied_acquire(c: &Cluster) {
    ok(c, &["limits", "set", "org:full", "1"]);
    ok(c, &["acquire", "org:full", "--lease-id", "f1"]);
    let o = cli(c, &["acquire", "org:full", "--lease-id", "f2"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("limit exceeded"), "{}", stderr(&o));
}

/// rate check: allowed (0), then limited (3).
fn cli_rate_check(c: &Cluster) {
    let once_a_minute = [
        "rate",
        "check",
        "ip:203.0.113.9",
        "--limit",
        "1",
        "--period-ms",
        "60000",
    ];
    let out = ok(c, &once_a_minute);
    assert!(out.starts_with("allowed"), "{out}");
    let o = cli(c, &once_a_minute);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stdout(&o).starts_with("rate limited") && stdout(&o).contains("retry in"),
        "{}",
        stdout(&o)
    );
    let out = ok(
        c,
        &["rate", "check", "user:1", "--policy", "user", "--json"],
    );
    let v: Value = serde_json::from_str(&out).expect("rate json");
    assert_eq!(v["allowed"], true);
}

/// policies list / set / delete.
fn cli_policies(c: &Cluster) {
    let out = ok(
        c,
        &[
            "policies",
            "set",
            "batch",
            "--kind",
            "rate",
            "--limit",
            "10",
            "--period-ms",
            "1000",
        ],
    );
    assert!(out.contains("policy batch set"), "{out}");
    let out = ok(c, &["policies", "list"]);
    assert!(
        out.contains("batch") && out.contains("orgs") && out.contains("concurrency"),
        "{out}"
    );
    let out = ok(c, &["policies", "delete", "batch"]);
    assert!(out.contains("deleted"), "{out}");
}

/// Errors: invalid limit (1), unknown member (1), unreachable cluster (4), usage (2).
fn cli_errors(c: &Cluster) {
    let o = cli(c, &["limits", "set", "org:acme", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid_request") && stderr(&o).contains("limit"),
        "{}",
        stderr(&o)
    );
    let o = cli(c, &["members", "remove", "99"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a member"), "{}", stderr(&o));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args([
            "limits",
            "get",
            "k",
            "--node",
            "http://127.0.0.1:9",
            "--timeout-ms",
            "300",
        ])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("unavailable"), "{}", stderr(&o));
    let o = cli(c, &["limits", "set", "org:acme", "not-a-number"]);
    assert_eq!(o.status.code(), Some(2));
}
