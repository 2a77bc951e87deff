//! The status page (`/ui`) in a real headless Chromium against a real three-node
//! cluster.
//!
//! [`status_page_in_headless_chromium`] loads the page from the leader and checks,
//! by polling the DOM with deadlines (never a fixed sleep), that it shows three
//! members with exactly one leader, the fullest concurrency keys with their usage,
//! a key's usage rising after an acquire made through the API, the busiest rate keys
//! with their denials and the activity charts, and a killed follower as down — all
//! without a single browser console error (a CSP violation, a failed script, a
//! failed request would each be one). Screenshots go to `target/ui-artifacts/`
//! (`docs/ui.png` is one of them).
//!
//! The browser is Debian's `chromium` + `chromium-driver`, driven over W3C WebDriver
//! (`tests/ui/webdriver.rs`). Missing binaries fail the test with the install
//! command; `QUORATE_SKIP_BROWSER=1` skips it explicitly.

mod common;

#[path = "ui/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{hourly_envoy_domain, should_rate_limit, Cluster, Options, DEADLINE};
use quorate_server::security::auth::TokenSpec;
use quorate_server::security::Role;
use quorate_server::ClusterConfig;
use webdriver::Browser;

/// How long the page may take to show a change (it polls every 2 s; peers are
/// probed every 5 s).
const SHOWS_WITHIN: Duration = Duration::from_secs(30);

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("ui-artifacts")
}

/// `[[node, role], ...]` of the members table.
const MEMBERS: &str = "return [...document.querySelectorAll('#members tr[data-node]')]\
    .map(r => [Number(r.dataset.node), r.dataset.role]);";

fn roles(v: &Value) -> Vec<(u64, String)> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r[0].as_u64().unwrap_or(0),
                r[1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn key_used(key: &str) -> String {
    format!(
        "const r = [...document.querySelectorAll('#keys tr[data-key]')]\
         .find(r => r.dataset.key === {key:?}); return r ? Number(r.dataset.used) : null;"
    )
}

/// Several keys at different fullness, denials, and rate checks (some limited), all
/// through `node`, so its charts and busiest keys have something to show.
async fn make_activity(c: &Cluster, node: u64) {
    for (key, limit) in [("org:acme", 4), ("org:globex", 10), ("org:initech", 2)] {
        let (s, b) = c
            .put(
                node,
                &format!("/v1/limits/{key}"),
                json!({ "limit": limit }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let holds = [
        ("org:acme", 2),
        ("org:globex", 3),
        ("org:initech", 2),
        ("org:umbrella", 1),
    ];
    for (key, n) in holds {
        for i in 0..n {
            let body = json!({"keys": [key, "global"], "lease_id": format!("{key}-{i}"), "holder": "worker-7"});
            let (s, b) = c.post(node, "/v1/slots/acquire", body).await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
    }
    // org:initech is full: these are denied.
    for i in 0..3 {
        let body = json!({"keys": ["org:initech"], "lease_id": format!("late-{i}")});
        let (s, b) = c.post(node, "/v1/slots/acquire", body).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    }
    // An allowlisted admin user, checked three times under `user` (not charged).
    let (s, b) = c
        .post(
            node,
            "/v1/allowlist",
            json!({"policy": "user", "key": "user:admin-*"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for _ in 0..3 {
        let body = json!({"key": "user:admin-1", "policy": "user"});
        let (s, b) = c.post(node, "/v1/rate/check", body).await;
        assert_eq!(
            (s, b["allowlisted"].clone()),
            (StatusCode::OK, json!(true)),
            "{b}"
        );
    }
    // An inline rate limit of 30 per minute in bursts of 5, checked 8 times at once:
    // 3 limited.
    for _ in 0..8 {
        let body = json!({"key": "ip:203.0.113.9", "limit": 30, "period_ms": 60000, "burst": 5});
        c.post(node, "/v1/rate/check", body).await;
    }
    for user in ["user:42", "user:7"] {
        for _ in 0..4 {
            let body = json!({"key": user, "policy": "user"});
            let (s, b) = c.post(node, "/v1/rate/check", body).await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
    }
}

/// Envoy domain `edge`: `remote_address` once an hour, in shadow mode, named
/// `edge_per_ip` (no policy has that name: the page lists it as a descriptor limit).
fn shadow_descriptor(c: &mut ClusterConfig) {
    c.envoy = hourly_envoy_domain("edge", &[("remote_address", 1, "edge_per_ip", true)]);
}

/// Two Envoy checks of one address through `node`: the second is over the shadow
/// limit, answered OK and counted as a shadow denial by that node.
async fn shadow_denial_over_grpc(c: &Cluster, node: u64) {
    let deadline = std::time::Instant::now() + DEADLINE;
    // The descriptor table reaches the node through the log: INVALID_ARGUMENT until then.
    loop {
        match should_rate_limit(c, node, "edge", &[("remote_address", "198.51.100.7")]).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                assert!(std::time::Instant::now() < deadline, "no table: {s}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("ShouldRateLimit: {s}"),
        }
    }
    should_rate_limit(c, node, "edge", &[("remote_address", "198.51.100.7")])
        .await
        .expect("the shadow-denied check is answered");
}

/// Steady traffic through `url` until `stop` is set: rate checks (some limited),
/// short-lived slots, and acquires on a full key (denied), so the charts show a live
/// cluster. Uses keys the assertions do not look at.
fn background_load(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let post = |path: &str, body: Value| http.post(format!("{url}{path}")).json(&body).send();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let user = json!({"key": format!("user:{}", i % 5), "policy": "user"});
            let _ = post("/v1/rate/check", user).await;
            if i.is_multiple_of(3) {
                let lease = format!("bg-{i}");
                let slot = json!({"keys": ["org:hooli", "global"], "lease_id": lease});
                let _ = post("/v1/slots/acquire", slot).await;
                let _ = post("/v1/slots/release", json!({ "lease_id": lease })).await;
            }
            if i.is_multiple_of(4) {
                let _ = post("/v1/slots/acquire", json!({"keys": ["org:initech"]})).await;
            }
            if i.is_multiple_of(2) {
                let ip = json!({"key": "ip:198.51.100.7", "limit": 10, "period_ms": 60000});
                let _ = post("/v1/rate/check", ip).await;
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let Ok(browser) = Browser::launch(1440, 1500).await else {
        return; // QUORATE_SKIP_BROWSER=1, reported by launch
    };
    let mut options = Options::new(3);
    // Samples every second, so the charts fill within the test.
    options
        .env
        .push(("QUORATE_SERVER_STATS_INTERVAL_MS".into(), "1000".into()));
    options.grpc = true;
    options.config_edit = Some(shadow_descriptor);
    let mut c = Cluster::start_with(options).await;
    let leader = c.leader_id().await;
    make_activity(&c, leader).await;
    shadow_denial_over_grpc(&c, leader).await;

    browser.goto(&c.url(leader, "/ui")).await;
    let title = browser.eval("return document.title;").await;
    assert_eq!(title, json!("quorate status"));

    // Three members, exactly one leader (the node that served the page), none down.
    let members = browser
        .wait_for(
            "three members with one leader",
            SHOWS_WITHIN,
            MEMBERS,
            |v| {
                let r = roles(v);
                r.len() == 3
                    && r.iter().filter(|(_, role)| role == "leader").count() == 1
                    && r.iter()
                        .all(|(_, role)| role == "leader" || role == "follower")
            },
        )
        .await;
    assert!(
        roles(&members).contains(&(leader, "leader".into())),
        "{members}"
    );
    // Both followers' digests were compared with the leader's at an equal index.
    browser
        .wait_for(
            "both followers' digests agreeing",
            SHOWS_WITHIN,
            "return [...document.querySelectorAll('#members tr[data-role=follower] .tag.ok')]\
             .map(t => t.textContent);",
            |v| v == &json!(["✓ agrees", "✓ agrees"]),
        )
        .await;

    // From here on, steady traffic (so the charts show a live cluster).
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(c.api_url(leader), stop.clone());

    // Keys sorted by fullness: the full org:initech first.
    let first = browser
        .wait_for(
            "the fullest key first",
            SHOWS_WITHIN,
            "const r = document.querySelector('#keys tr[data-key]'); return r && r.dataset.key;",
            |v| v.is_string(),
        )
        .await;
    assert_eq!(first, json!("org:initech"));

    // A waiting acquire on the full key shows in its row's queue column.
    let wait_url = c.url(leader, "/v1/slots/acquire");
    let waiter = tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let body = json!({"keys": ["org:initech"], "lease_id": "ui-waiter", "wait_ms": 30_000});
        let _ = http.post(wait_url).json(&body).send().await;
    });
    browser
        .wait_for(
            "org:initech's waiter in the queue column",
            SHOWS_WITHIN,
            "const c = document.querySelector('#keys td[data-queue-key=\"org:initech\"]');\
             return c ? c.textContent : null;",
            |v| v == &json!("1"),
        )
        .await;
    waiter.abort();

    // A key's usage changes after an acquire through the API.
    let before = browser
        .wait_for(
            "org:acme's usage",
            SHOWS_WITHIN,
            &key_used("org:acme"),
            |v| v == &json!(2),
        )
        .await;
    let (s, b) = c
        .post(
            leader,
            "/v1/slots/acquire",
            json!({"keys": ["org:acme"], "lease_id": "ui-test"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    browser
        .wait_for(
            "org:acme's usage rise by one",
            SHOWS_WITHIN,
            &key_used("org:acme"),
            |v| v.as_u64() == before.as_u64().map(|n| n + 1),
        )
        .await;

    // The busiest rate keys and the charts come from the node's sampled counters.
    browser
        .wait_for(
            "the limited rate key",
            SHOWS_WITHIN,
            "const r = document.querySelector('#rate-keys tr[data-rate-key=\"ip:203.0.113.9\"]');\
             return r ? r.cells[3].textContent : null;",
            |v| {
                v.as_str()
                    .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0))
            },
        )
        .await;
    // Its bar is scaled by the bucket (burst 5), not by the rate (30 per minute).
    let meter = browser
        .eval(
            "const r = document.querySelector('#rate-keys tr[data-rate-key=\"ip:203.0.113.9\"]');\
             const m = r.querySelector('[role=meter]');\
             return [m.getAttribute('aria-valuemax'), r.cells[1].textContent];",
        )
        .await;
    assert_eq!(meter[0], json!("5"), "{meter}");
    assert!(
        meter[1].as_str().is_some_and(|t| t.ends_with(" of 5 left")),
        "{meter}"
    );
    browser
        .wait_for(
            "granted and denied charts drawn",
            SHOWS_WITHIN,
            "return ['chart-granted', 'chart-denied'].every(id => \
             document.querySelector('#' + id + ' polyline'));",
            |v| v == &json!(true),
        )
        .await;
    browser
        .wait_for(
            "ten samples in the charts",
            SHOWS_WITHIN,
            "const p = document.querySelector('#chart-granted polyline');\
             return p ? p.getAttribute('points').split(' ').length : 0;",
            |v| v.as_u64().is_some_and(|n| n >= 10),
        )
        .await;
    // The allowlist panel lists the entry; the policies table counts its checks.
    browser
        .wait_for(
            "the allowlist entry and its count",
            SHOWS_WITHIN,
            "const a = document.querySelector('#allowlist tr[data-allow=\"key:user:admin-*\"]');\
             const p = document.querySelector('#policies tr[data-policy=user]');\
             return a && p ? [a.cells[0].textContent, p.cells[5].textContent] : null;",
            |v| v == &json!(["policy user", "3"]),
        )
        .await;
    // The Envoy descriptor limit in shadow mode has a row of its own with its count.
    browser
        .wait_for(
            "the shadow descriptor limit and its count",
            SHOWS_WITHIN,
            "const r = document.querySelector('#policies tr[data-policy=edge_per_ip]');\
             return r ? [r.dataset.kind, r.cells[3].textContent, r.cells[4].textContent] : null;",
            |v| v == &json!(["envoy", "shadow", "1"]),
        )
        .await;
    // The audit trail panel (open mode: every caller is `open`) shows the changes.
    browser
        .wait_for(
            "the allowlist change in the audit trail",
            SHOWS_WITHIN,
            "const r = document.querySelector('#audit tr[data-audit-key=\"allowlist:policy=user:key:user:admin-*\"]');\
             return r ? [r.cells[2].textContent, r.cells[3].textContent, r.cells[6].textContent] : null;",
            |v| v == &json!(["open", "allow", "allowed"]),
        )
        .await;
    browser.screenshot(&artifacts().join("1-healthy.png")).await;

    // The same numbers through the Rust client: what the charts drew.
    let client =
        quorate_client::Client::new(quorate_client::ClientConfig::new([c.api_url(leader)]))
            .expect("client");
    let stats = client.stats().await.expect("GET /v1/stats");
    assert_eq!((stats.node_id, stats.interval_ms), (leader, 1000));
    assert!(stats.samples.len() >= 10, "{stats:?}");
    assert!(
        stats.samples.iter().map(|s| s.denied).sum::<u64>() >= 3,
        "{stats:?}"
    );
    assert!(
        stats
            .busiest_rate_keys
            .iter()
            .any(|k| k.key == "ip:203.0.113.9" && k.limited > 0),
        "{stats:?}"
    );

    // A killed follower shows as down; the others stay up.
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap_or(2);
    c.kill(follower);
    let members = browser
        .wait_for("the killed node down", SHOWS_WITHIN, MEMBERS, |v| {
            roles(v).contains(&(follower, "down".into()))
        })
        .await;
    let r = roles(&members);
    assert_eq!(
        r.iter().filter(|(_, role)| role == "down").count(),
        1,
        "{members}"
    );
    assert!(r.contains(&(leader, "leader".into())), "{members}");
    let health = browser
        .eval("return document.getElementById('health').textContent;")
        .await;
    assert_eq!(health, json!("1 down"));
    browser
        .screenshot(&artifacts().join("2-node-down.png"))
        .await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("background load");

    // Not one console error over the whole run (CSP violations, script errors and
    // failed requests all land there).
    let errors: Vec<Value> = browser
        .console()
        .await
        .into_iter()
        .filter(|e| e["level"] == json!("SEVERE"))
        .collect();
    assert!(errors.is_empty(), "browser console errors: {errors:#?}");
}

/// With tokens configured, the page asks for one when the API answers 401, refuses
/// a wrong one, and shows the cluster with a client token kept in session storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_asks_for_a_token() {
    const CLIENT: &str = "ui-client-token-0123456789";
    let Ok(browser) = Browser::launch(1280, 900).await else {
        return;
    };
    let mut options = Options::new(1);
    options.tokens = vec![TokenSpec {
        name: "viewer".into(),
        role: Role::Client,
        token: Some(CLIENT.into()),
        token_file: None,
        token_env: None,
    }];
    let c = Cluster::start_with(options).await;
    browser.goto(&c.url(1, "/ui")).await;
    let form_shown = "return !document.getElementById('auth').hidden \
        && document.getElementById('main').hidden;";
    browser
        .wait_for("the token form", SHOWS_WITHIN, form_shown, |v| {
            v == &json!(true)
        })
        .await;

    browser
        .type_into("#token", "not-the-token-0123456789")
        .await;
    browser.click("#auth button[type=submit]").await;
    browser
        .wait_for(
            "the wrong token refused",
            SHOWS_WITHIN,
            "return document.getElementById('auth-error').textContent;",
            |v| v == &json!("That token was refused."),
        )
        .await;

    browser.type_into("#token", CLIENT).await;
    browser.click("#auth button[type=submit]").await;
    browser
        .wait_for("the one member", SHOWS_WITHIN, MEMBERS, |v| {
            roles(v) == [(1, "leader".to_string())]
        })
        .await;
    let stored = browser
        .eval("return sessionStorage.getItem('quorate.token');")
        .await;
    assert_eq!(stored, json!(CLIENT));
    // The audit trail needs an admin token: the panel says so.
    browser
        .wait_for(
            "the audit panel asking for an admin token",
            SHOWS_WITHIN,
            "return document.querySelector('#audit').textContent;",
            |v| v == &json!("the audit trail needs an admin token"),
        )
        .await;
    browser.screenshot(&artifacts().join("3-token.png")).await;

    // The only console errors are the refused requests themselves (the browser
    // logs every 401, and the one 403 of the audit trail with a client token); no
    // script error, no CSP violation.
    let errors: Vec<Value> = browser
        .console()
        .await
        .into_iter()
        .filter(|e| e["level"] == json!("SEVERE"))
        .filter(|e| {
            let m = e["message"].as_str().unwrap_or("");
            !(m.contains("status of 401") || m.contains("/v1/audit") && m.contains("status of 403"))
        })
        .collect();
    assert!(errors.is_empty(), "browser console errors: {errors:#?}");
}
