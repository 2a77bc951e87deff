//! The public HTTP contract, exercised handler by handler against a [`LocalBackend`]
//! (one in-memory state machine, test-controlled clock): status codes, body shapes,
//! headers and the error contract (`{"error", "message"}`, never a 500). The same
//! contract against a real three-node cluster is tested in the workspace `tests/`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use axum::extract::connect_info::MockConnectInfo;
use quorate_core::{Configuration, Op, Policy, RateSpec, Settings};
use quorate_server::http::api::stream::Streams;
use quorate_server::http::api::{router, ApiConfig, ApiState};
use quorate_server::local::LocalBackend;
use quorate_server::security::{ApiAuth, Role, Secret};
use quorate_server::stats::Stats;
use quorate_server::telemetry::Metrics;
use std::net::SocketAddr;

struct App {
    router: Router,
    backend: Arc<LocalBackend>,
}

fn app() -> App {
    app_with_auth(ApiAuth::default(), [127, 0, 0, 1])
}

/// An app whose callers appear to come from `peer_ip`, with the given token rules.
fn app_with_auth(auth: ApiAuth, peer_ip: [u8; 4]) -> App {
    app_with(auth, peer_ip, Duration::from_secs(2))
}

/// [`app_with_auth`] with a given request timeout.
fn app_with(auth: ApiAuth, peer_ip: [u8; 4], request_timeout: Duration) -> App {
    let backend = Arc::new(LocalBackend::new(1_000_000));
    let cfg = Configuration {
        source_digest: 1,
        settings: Settings {
            default_limit: 10,
            max_ttl_ms: 3_600_000,
            ..Settings::default()
        },
        policies: vec![
            (
                "orgs".into(),
                Policy::Concurrency {
                    pattern: "org:*".into(),
                    limit: 2,
                },
            ),
            (
                "global".into(),
                Policy::Concurrency {
                    pattern: "global".into(),
                    limit: 3,
                },
            ),
            (
                "user".into(),
                Policy::Rate(RateSpec {
                    limit: 60,
                    period_ms: 60_000,
                    burst: 2,
                }),
            ),
        ],
        tiers: vec![("superuser".into(), 10_000)],
    };
    backend.apply(Op::Configure(Box::new(cfg))).unwrap();
    let metrics = Arc::new(Metrics::new());
    let state = ApiState {
        backend: backend.clone(),
        metrics: metrics.clone(),
        stats: Arc::new(Stats::new(1, metrics, Duration::from_secs(5), 10)),
        config: Arc::new(ApiConfig {
            auth,
            node_id: 1,
            default_ttl_ms: 30_000,
            max_body_bytes: 64 * 1024,
            request_timeout,
            max_wait_ms: 5_000,
        }),
        streams: Streams::new(64, tokio::sync::watch::channel(false).1),
    };
    App {
        router: router(state).layer(MockConnectInfo(SocketAddr::from((peer_ip, 40000)))),
        backend,
    }
}

async fn call_raw(
    app: &App,
    method: Method,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    call_as(app, None, method, uri, body).await
}

async fn call_as(
    app: &App,
    token: Option<&str>,
    method: Method,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, bytes.to_vec())
}

async fn call(
    app: &App,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let (s, h, b) = call_raw(app, method, uri, body.map(|v| v.to_string())).await;
    let v =
        serde_json::from_slice(&b).unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&b)}));
    (s, h, v)
}

/// `call` on `POST uri` with a JSON body.
async fn post(app: &App, uri: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
    call(app, Method::POST, uri, Some(body)).await
}

/// `call` on `PUT uri` with a JSON body.
async fn put(app: &App, uri: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
    call(app, Method::PUT, uri, Some(body)).await
}

/// `call` on `GET uri`.
async fn get(app: &App, uri: &str) -> (StatusCode, HeaderMap, Value) {
    call(app, Method::GET, uri, None).await
}

/// `call` on `DELETE uri`.
async fn delete(app: &App, uri: &str) -> (StatusCode, HeaderMap, Value) {
    call(app, Method::DELETE, uri, None).await
}

/// A refusal: the status, and an error body with the code.
fn assert_refused(s: StatusCode, v: &Value, status: StatusCode, code: &str) {
    assert_eq!(s, status, "body: {v}");
    assert_error(v, code);
}

/// Every error body has exactly the documented shape.
fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["error"], code, "body: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {v}"
    );
}

#[tokio::test]
async fn acquire_grants_then_denies_with_retry_after() {
    let app = app();
    let (s, _, v) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["org:acme", "global"], "lease_id": "a", "ttl_ms": 5000, "holder": "w1"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["granted"], true);
    assert_eq!(v["lease_id"], "a");
    assert_eq!(v["expires_at_ms"], 1_005_000);
    assert_eq!(
        v["slots"],
        json!([{"key":"org:acme","used":1,"limit":2},{"key":"global","used":1,"limit":3}])
    );
    let t1 = v["fencing_token"].as_u64().unwrap();

    let (s, _, v) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["org:acme", "global"], "lease_id": "b", "ttl_ms": 9000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["fencing_token"].as_u64().unwrap() > t1);

    // org:acme is full (2/2): denied, naming the blocker, with an honest hint: the
    // earliest lease on it expires in 5 s.
    let third = json!({"keys": ["org:acme", "global"], "lease_id": "c"});
    let (s, h, v) = post(&app, "/v1/slots/acquire", third.clone()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["granted"], false);
    assert_error(&v, "limit_exceeded");
    assert_eq!(v["blocked_by"], json!(["org:acme"]));
    assert_eq!(v["retry_after_ms"], 5000);
    assert_eq!(h["retry-after"], "5");

    // After the first lease expires the slot is free again, without any release.
    app.backend.advance(5000);
    let (s, _, v) = post(&app, "/v1/slots/acquire", third).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn global_key_caps_all_orgs() {
    let app = app();
    for (i, org) in ["org:a", "org:b", "org:c"].iter().enumerate() {
        let (s, _, _) = post(
            &app,
            "/v1/slots/acquire",
            json!({"keys": [org, "global"], "lease_id": format!("l{i}")}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, _, v) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["org:d", "global"], "lease_id": "l4"}),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["blocked_by"], json!(["global"]));
    // Nothing was taken on org:d by the denied request.
    let (_, _, v) = get(&app, "/v1/slots/org:d").await;
    assert_eq!(v["used"], 0);
}

#[tokio::test]
async fn lease_id_is_idempotent_and_conflicts_are_409() {
    let app = app();
    let body = json!({"keys": ["org:x"], "lease_id": "retry-me"});
    let (_, _, v1) = post(&app, "/v1/slots/acquire", body.clone()).await;
    let (s, _, v2) = post(&app, "/v1/slots/acquire", body).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v1["fencing_token"], v2["fencing_token"]);
    let (_, _, u) = get(&app, "/v1/slots/org:x").await;
    assert_eq!(u["used"], 1, "a retry must not take a second slot");

    let (s, _, v) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["org:y"], "lease_id": "retry-me"}),
    )
    .await;
    assert_refused(s, &v, StatusCode::CONFLICT, "lease_conflict");
}

#[tokio::test]
async fn missing_lease_id_is_generated() {
    let app = app();
    let (s, _, v) = post(&app, "/v1/slots/acquire", json!({"keys": ["k"]})).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v["lease_id"].as_str().is_some_and(|id| id.len() >= 32),
        "{v}"
    );
    assert_eq!(
        v["expires_at_ms"],
        1_000_000 + 30_000,
        "default TTL applies"
    );
}

#[tokio::test]
async fn release_renew_and_usage() {
    let app = app();
    post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["org:acme"], "lease_id": "l1", "holder": "worker-7", "ttl_ms": 1000}),
    )
    .await;
    let (s, _, v) = get(&app, "/v1/slots/org:acme").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["used"], 1);
    assert_eq!(v["limit"], 2);
    assert_eq!(v["leases"][0]["lease_id"], "l1");
    assert_eq!(v["leases"][0]["holder"], "worker-7");

    let (s, _, v) = post(
        &app,
        "/v1/slots/renew",
        json!({"lease_id": "l1", "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"lease_id": "l1", "expires_at_ms": 1_060_000}));
    app.backend.advance(2000);
    let (_, _, v) = get(&app, "/v1/slots/org:acme").await;
    assert_eq!(v["used"], 1, "renewed lease outlives its first TTL");

    let (s, _, v) = post(&app, "/v1/slots/release", json!({"lease_id": "l1"})).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"released": true})));
    let (s, _, v) = post(&app, "/v1/slots/release", json!({"lease_id": "l1"})).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"released": false})));
    let (s, _, v) = post(&app, "/v1/slots/renew", json!({"lease_id": "l1"})).await;
    assert_refused(s, &v, StatusCode::NOT_FOUND, "lease_not_found");
}

#[tokio::test]
async fn limits_override_policy_default() {
    let app = app();
    let (_, _, v) = get(&app, "/v1/limits/org:acme").await;
    assert_eq!(
        v,
        json!({"key": "org:acme", "limit": 2, "source": "policy", "policy": "orgs", "used": 0})
    );
    let (_, _, v) = get(&app, "/v1/limits/other").await;
    assert_eq!(v["source"], "default");
    assert_eq!(v["limit"], 10);

    let (s, _, v) = put(&app, "/v1/limits/org:acme", json!({"limit": 7})).await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"key": "org:acme", "limit": 7}))
    );
    let (_, _, v) = get(&app, "/v1/limits/org:acme").await;
    assert_eq!(v["source"], "override");
    assert_eq!(v["limit"], 7);

    put(&app, "/v1/limits/org:beta", json!({"limit": 3})).await;
    put(&app, "/v1/limits/zzz", json!({"limit": 3})).await;
    let (s, _, v) = get(&app, "/v1/limits?prefix=org:").await;
    assert_eq!(s, StatusCode::OK);
    let keys: Vec<_> = v["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].clone())
        .collect();
    assert_eq!(keys, vec![json!("org:acme"), json!("org:beta")]);

    let (_, _, v) = delete(&app, "/v1/limits/org:acme").await;
    assert_eq!(v, json!({"deleted": true}));
    let (_, _, v) = delete(&app, "/v1/limits/org:acme").await;
    assert_eq!(v, json!({"deleted": false}));

    for bad in [
        json!({"limit": 0}),
        json!({"limit": -1}),
        json!({"limit": "x"}),
        json!({}),
    ] {
        let (s, _, v) = put(&app, "/v1/limits/k", bad).await;
        assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn rate_checks_single_inline_multi_and_headers() {
    let app = app();
    // Named policy: 60/min with a burst of 2.
    let req = json!({"key": "user:42", "policy": "user"});
    let (s, h, v) = post(&app, "/v1/rate/check", req.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["remaining"], 1);
    assert_eq!(v["retry_after_ms"], 0);
    // draft-10: items named by policy, the key only as a hashed partition key,
    // vendor parameters prefixed.
    let pk = quorate_server::ratelimit_headers::partition_key("user:42");
    assert_eq!(
        h["ratelimit-policy"],
        format!("\"user\";q=60;w=60;pk={pk};quorate-burst=2").as_str()
    );
    assert_eq!(h["ratelimit"], format!("\"user\";r=1;t=1;pk={pk}").as_str());
    assert!(!h["ratelimit-policy"].to_str().unwrap().contains("user:42"));
    post(&app, "/v1/rate/check", req.clone()).await;
    let (s, h, v) = post(&app, "/v1/rate/check", req).await;
    assert_refused(s, &v, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(v["retry_after_ms"], 1000);
    assert_eq!(h["retry-after"], "1");

    // A tier multiplies the policy.
    let (_, _, v) = post(
        &app,
        "/v1/rate/check",
        json!({"key": "user:7", "policy": "user", "tier": "superuser"}),
    )
    .await;
    assert_eq!(v["limit"], 600);

    // Inline, with burst defaulting to limit.
    let (s, _, v) = post(
        &app,
        "/v1/rate/check",
        json!({"key": "ip:203.0.113.9", "limit": 5, "period_ms": 1000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["remaining"], 4);

    // Multi-check: all charged or none. user:42 is exhausted, so ip:198.51.100.1 must
    // not be charged either.
    let (s, _, v) = post(&app, "/v1/rate/check", json!({"checks": [ {"key": "ip:198.51.100.1", "limit": 1, "period_ms": 60000}, {"key": "user:42", "policy": "user"}]})).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["results"][0]["allowed"], true);
    assert_eq!(v["results"][1]["allowed"], false);
    let (s, _, _) = post(
        &app,
        "/v1/rate/check",
        json!({"key": "ip:198.51.100.1", "limit": 1, "period_ms": 60000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "the denied multi-check charged nothing");

    for bad in [
        json!({"key": "k", "policy": "user", "limit": 5, "period_ms": 1000}),
        json!({"key": "k", "limit": 5}),
        json!({"key": "k", "limit": 5, "period_ms": 1000, "tier": "superuser"}),
        json!({"key": "k", "policy": "user", "cost": 3}),
        json!({"key": "k", "policy": "user", "cost": 0}),
        json!({"checks": []}),
        json!({"checks": [{"key": "a", "policy": "user"}], "key": "b"}),
        json!({}),
    ] {
        let (s, _, v) = post(&app, "/v1/rate/check", bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {v}");
        assert_error(&v, "invalid_request");
    }
    let (s, _, v) = post(
        &app,
        "/v1/rate/check",
        json!({"key": "k", "policy": "nope"}),
    )
    .await;
    assert_refused(s, &v, StatusCode::NOT_FOUND, "policy_not_found");
}

/// Counters (the `limits` storage's fixed windows): increment with an expiry in
/// cluster time, read, clear; a key with `/` travels as one percent-encoded segment;
/// bad input is a 400 JSON error; no quorum is a 503 that counted nothing.
#[tokio::test]
async fn counters_count_expire_and_clear() {
    let app = app();
    let uri = "/v1/counters/LIMITER%2Fip%2F1.2.3.4%2F10%2F1%2Fminute";
    let (s, _, v) = post(&app, &format!("{uri}/incr"), json!({"expiry_ms": 60_000})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"key": "LIMITER/ip/1.2.3.4/10/1/minute", "value": 1,
               "expires_at_ms": 1_060_000, "ttl_ms": 60_000})
    );
    app.backend.advance(1_000);
    let (_, _, v) = post(
        &app,
        &format!("{uri}/incr"),
        json!({"expiry_ms": 5, "amount": 4}),
    )
    .await;
    // A live counter keeps its expiry whatever expiry_ms the later hit names.
    assert_eq!(
        (v["value"].clone(), v["ttl_ms"].clone()),
        (json!(5), json!(59_000))
    );
    let (s, _, v) = get(&app, uri).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["value"].clone(), v["expires_at_ms"].clone()),
        (json!(5), json!(1_060_000))
    );

    // At its expiry it reads 0 with no expiry; the next hit starts a new window.
    app.backend.advance(59_000);
    let (_, _, v) = get(&app, uri).await;
    assert_eq!(
        v,
        json!({"key": "LIMITER/ip/1.2.3.4/10/1/minute", "value": 0,
                         "expires_at_ms": null, "ttl_ms": 0})
    );
    let (_, _, v) = post(&app, &format!("{uri}/incr"), json!({"expiry_ms": 1000})).await;
    assert_eq!(
        (v["value"].clone(), v["ttl_ms"].clone()),
        (json!(1), json!(1000))
    );

    let (s, _, v) = delete(&app, uri).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"deleted": true})));
    let (_, _, v) = delete(&app, uri).await;
    assert_eq!(v, json!({"deleted": false}));
    let (_, _, v) = get(&app, uri).await;
    assert_eq!(v["value"], 0);

    for (path, body) in [
        ("/v1/counters/a%20b/incr", json!({"expiry_ms": 1000})),
        ("/v1/counters/k/incr", json!({"expiry_ms": 0})),
        (
            "/v1/counters/k/incr",
            json!({"expiry_ms": 1000, "amount": 0}),
        ),
        ("/v1/counters/k/incr", json!({"expiry_ms": -1})),
        ("/v1/counters/k/incr", json!({})),
        (
            "/v1/counters/k/incr",
            json!({"expiry_ms": 1000, "ttl_ms": 5}),
        ),
    ] {
        let (s, _, v) = post(&app, path, body.clone()).await;
        assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let long = format!("/v1/counters/{}", "x".repeat(257));
    let (s, _, v) = get(&app, &long).await;
    assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, _, v) = delete(&app, "/v1/counters/%C3%A9").await;
    assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");

    app.backend.set_available(false);
    let (s, h, v) = post(&app, "/v1/counters/k/incr", json!({"expiry_ms": 1000})).await;
    assert_refused(s, &v, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(h.contains_key("retry-after"));
    let (s, _, v) = get(&app, "/v1/counters/k").await;
    assert_refused(s, &v, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    app.backend.set_available(true);
    let (_, _, v) = get(&app, "/v1/counters/k").await;
    assert_eq!(v["value"], 0, "the refused increment counted nothing");
}

#[tokio::test]
async fn policies_and_tiers_change_at_runtime() {
    let app = app();
    let (s, _, v) = put(
        &app,
        "/v1/policies/worker",
        json!({"kind": "rate", "limit": 30, "period_ms": 60000, "burst": 5}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = put(
        &app,
        "/v1/policies/orgs",
        json!({"kind": "concurrency", "pattern": "org:*", "limit": 4}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, _, v) = get(&app, "/v1/limits/org:new").await;
    assert_eq!(
        v["limit"], 4,
        "the changed policy applies at once, nothing cached"
    );
    let (s, _, v) = put(&app, "/v1/tiers/authenticated", json!({"multiplier": 2.0})).await;
    assert_eq!(
        (s, v),
        (
            StatusCode::OK,
            json!({"name": "authenticated", "multiplier": 2.0})
        )
    );
    let (_, _, v) = get(&app, "/v1/policies").await;
    let names: Vec<_> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(
        names,
        vec![
            json!("orgs"),
            json!("global"),
            json!("user"),
            json!("worker")
        ]
    );
    assert_eq!(v["tiers"].as_array().unwrap().len(), 2);
    let (_, _, v) = delete(&app, "/v1/policies/worker").await;
    assert_eq!(v, json!({"deleted": true}));
    let (s, _, _) = put(&app, "/v1/tiers/x", json!({"multiplier": 0})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = put(&app, "/v1/policies/p", json!({"kind": "other"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// Shadow mode over HTTP: a policy switched to shadow still decides and charges,
/// but what it alone would deny is answered 200 with `shadow_denied` and the
/// `x-quorate-shadow-denied` header, counted per policy in the metrics and the
/// stats; switching back to enforce is one call, and the next request is denied.
#[tokio::test]
async fn shadow_policies_allow_say_so_count_and_switch_back() {
    let app = app();
    let (s, _, v) = put(&app, "/v1/policies/orgs/mode", json!({"mode": "shadow"})).await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"name": "orgs", "mode": "shadow"}))
    );
    let (_, _, v) = get(&app, "/v1/policies").await;
    let modes: Vec<_> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].clone(), p["mode"].clone()))
        .collect();
    assert_eq!(
        modes,
        vec![
            (json!("orgs"), json!("shadow")),
            (json!("global"), json!("enforce")),
            (json!("user"), json!("enforce"))
        ]
    );
    // org:* allows 2 at once; the third is granted in shadow mode, and says so.
    for id in ["a1", "a2"] {
        let (s, h, v) = post(
            &app,
            "/v1/slots/acquire",
            json!({"keys": ["org:a"], "lease_id": id}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(v.get("shadow_denied").is_none(), "{v}");
        assert!(h.get("x-quorate-shadow-denied").is_none());
    }
    let (s, h, v) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["org:a"], "lease_id": "a3"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["shadow_denied"],
        json!([{"key": "org:a", "policy": "orgs"}])
    );
    assert_eq!(v["slots"], json!([{"key": "org:a", "used": 3, "limit": 2}]));
    assert_eq!(h["x-quorate-shadow-denied"], "orgs");
    // An enforced policy beside it still denies: 429, nothing taken.
    let (s, _, v) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["org:a", "global"], "lease_id": "g1"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // (org:a is still over its shadow limit: said again, counted again.)
    assert_eq!(v["shadow_denied"][0]["policy"], "orgs", "{v}");
    for id in ["g2", "g3"] {
        post(
            &app,
            "/v1/slots/acquire",
            json!({"keys": ["global"], "lease_id": id}),
        )
        .await;
    }
    let (s, h, v) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["org:a", "global"], "lease_id": "g4"}),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["blocked_by"], json!(["global"]));
    assert!(h.get("x-quorate-shadow-denied").is_none());

    // Rate: `user` has a burst of 2; the third check is allowed in shadow mode, not
    // charged, and its own result keeps the verdict.
    put(&app, "/v1/policies/user/mode", json!({"mode": "shadow"})).await;
    let check = json!({"key": "user:1", "policy": "user"});
    for _ in 0..2 {
        let (s, h, v) = post(&app, "/v1/rate/check", check.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(h.get("x-quorate-shadow-denied").is_none());
    }
    let (s, h, v) = post(&app, "/v1/rate/check", check.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["retry_after_ms"], 0, "{v}");
    assert_eq!(v["results"][0]["allowed"], false, "{v}");
    assert_eq!(
        v["shadow_denied"],
        json!([{"key": "user:1", "policy": "user"}])
    );
    assert_eq!(h["x-quorate-shadow-denied"], "user");
    assert!(h.get("retry-after").is_none());

    // Counted per policy: metrics and the status page's stats.
    let (_, _, b) = call_raw(&app, Method::GET, "/metrics", None).await;
    let text = String::from_utf8(b).unwrap();
    for line in [
        r#"quorate_shadow_denials_total{policy="orgs"} 2"#,
        r#"quorate_shadow_denials_total{policy="user"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from {text}");
    }
    let (_, _, v) = get(&app, "/v1/stats").await;
    assert_eq!(
        v["shadow_denials"],
        json!([{"policy": "orgs", "count": 2}, {"policy": "user", "count": 1}])
    );

    // Back to enforce: one call, and the same requests are refused.
    let (s, _, v) = put(&app, "/v1/policies/user/mode", json!({"mode": "enforce"})).await;
    assert_eq!((s, v["mode"].clone()), (StatusCode::OK, json!("enforce")));
    let (s, _, v) = post(&app, "/v1/rate/check", check).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    put(&app, "/v1/policies/orgs/mode", json!({"mode": "enforce"})).await;
    let (s, _, _) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["org:a"], "lease_id": "a4"}),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // Replacing a policy keeps its mode, and the answer says which.
    put(&app, "/v1/policies/orgs/mode", json!({"mode": "shadow"})).await;
    let (s, _, v) = put(
        &app,
        "/v1/policies/orgs",
        json!({"kind": "concurrency", "pattern": "org:*", "limit": 5}),
    )
    .await;
    assert_eq!(
        (s, v["mode"].clone()),
        (StatusCode::OK, json!("shadow")),
        "{v}"
    );

    // Bad input: unknown policy 404, unknown mode 400, both JSON errors.
    let (s, _, v) = put(&app, "/v1/policies/nope/mode", json!({"mode": "shadow"})).await;
    assert_refused(s, &v, StatusCode::NOT_FOUND, "policy_not_found");
    let (s, _, v) = put(&app, "/v1/policies/orgs/mode", json!({"mode": "loud"})).await;
    assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn bad_input_is_a_4xx_json_error_never_a_500() {
    let app = app();
    // Most bad input is a 400 `invalid_request`; most of that is a bad acquire body.
    let acquire = |body: &str| (Method::POST, "/v1/slots/acquire", Some(body.to_string()));
    let invalid: Vec<(Method, &str, Option<String>)> = vec![
        acquire("{not json"),
        acquire(r#"{"keys":["a"],"ttl":5}"#),
        acquire(r#"{"keys":[]}"#),
        acquire(r#"{"keys":["a","a"]}"#),
        acquire(r#"{"keys":["1","2","3","4","5","6","7","8","9"]}"#),
        acquire(r#"{"keys":["has space"]}"#),
        acquire(&format!(r#"{{"keys":["{}"]}}"#, "k".repeat(257))),
        acquire(r#"{"keys":["a"],"ttl_ms":0}"#),
        acquire(r#"{"keys":["a"],"ttl_ms":99999999999}"#),
        acquire(r#"{"keys":["a"],"ttl_ms":-5}"#),
        (Method::POST, "/v1/slots/acquire", None),
        (
            Method::POST,
            "/v1/slots/release",
            Some(r#"{"lease_id":""}"#.into()),
        ),
        (Method::GET, "/v1/slots/bad%20key", None),
        (Method::GET, "/v1/limits?max=0", None),
        (Method::GET, "/v1/limits?bogus=1", None),
        (Method::DELETE, "/v1/members/notanumber", None),
    ];
    let too_large = format!(r#"{{"keys":["a"],"holder":"{}"}}"#, "x".repeat(70_000));
    let cases = invalid
        .into_iter()
        .map(|(m, uri, body)| (m, uri, body, StatusCode::BAD_REQUEST, "invalid_request"))
        .chain([
            (
                Method::GET,
                "/v1/nope",
                None,
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                Method::DELETE,
                "/v1/slots/acquire",
                None,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                Method::POST,
                "/v1/slots/acquire",
                Some(too_large),
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
            ),
        ]);
    for (method, uri, body, status, code) in cases {
        let (s, _, b) = call_raw(&app, method.clone(), uri, body).await;
        let v: Value = serde_json::from_slice(&b).unwrap_or_else(|_| {
            panic!(
                "{method} {uri}: body not JSON: {}",
                String::from_utf8_lossy(&b)
            )
        });
        assert_eq!(s, status, "{method} {uri}: {v}");
        assert_error(&v, code);
    }
}

#[tokio::test]
async fn no_quorum_means_503_never_granted() {
    let app = app();
    app.backend.set_available(false);
    let (s, h, v) = post(&app, "/v1/slots/acquire", json!({"keys": ["a"]})).await;
    assert_refused(s, &v, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(h.contains_key("retry-after"));
    assert!(v.get("granted").is_none());
    let (s, _, _) = get(&app, "/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _, _) = get(&app, "/healthz").await;
    assert_eq!(s, StatusCode::OK, "the process still serves");
    app.backend.set_available(true);
    let (s, _, _) = post(&app, "/v1/slots/acquire", json!({"keys": ["a"]})).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_requests_and_decisions() {
    let app = app();
    post(&app, "/v1/slots/acquire", json!({"keys": ["m"]})).await;
    get(&app, "/v1/nope").await;
    let (s, h, b) = call_raw(&app, Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    // OpenMetrics text (what Prometheus asks for first), ending in `# EOF`.
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(b).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains(
            r#"quorate_http_requests_total{route="/v1/slots/acquire",method="POST",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    assert!(
        text.contains(r#"quorate_decisions_total{kind="acquire",outcome="granted"} 1"#),
        "{text}"
    );
}

/// The request's deadline is set once, by the API, and the backend answers by it: a
/// request timeout of zero means every deadline has passed when the backend sees it,
/// so decisions are 503 (never granted) while requests that wait for nothing are not.
#[tokio::test]
async fn the_api_deadline_reaches_the_backend() {
    let expired = app_with(ApiAuth::default(), [127, 0, 0, 1], Duration::ZERO);
    let (s, h, v) = post(&expired, "/v1/slots/acquire", json!({"keys": ["a"]})).await;
    assert_refused(s, &v, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(h.contains_key("retry-after"));
    let (s, _, v) = get(&expired, "/v1/slots/a").await;
    assert_refused(s, &v, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let (s, _, _) = get(&expired, "/v1/cluster").await;
    assert_eq!(s, StatusCode::OK);
    // With a timeout, the same acquire is decided.
    let (s, _, _) = post(&app(), "/v1/slots/acquire", json!({"keys": ["a"]})).await;
    assert_eq!(s, StatusCode::OK);
}

/// Every answer names the leader's API base URL once one is known — successes,
/// decisions, refusals and unknown routes alike — and `/v1/cluster` says the same in
/// `leader_api`; with no leader known there is no header and `leader_api` is null.
#[tokio::test]
async fn every_answer_names_the_leader() {
    let app = app_with_auth(token_rules(), [192, 0, 2, 10]);
    let (_, h, b) = call_as(&app, Some(CLIENT), Method::GET, "/v1/cluster", None).await;
    assert!(!h.contains_key("x-quorate-leader"), "{h:?}");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["leader_api"], Value::Null);

    app.backend.set_leader_api(Some("http://127.0.0.1:7102"));
    let acquire = || Some(r#"{"keys":["org:a"]}"#.to_string());
    let cases = [
        (
            Some(CLIENT),
            Method::GET,
            "/v1/cluster",
            None,
            StatusCode::OK,
        ),
        (
            Some(CLIENT),
            Method::POST,
            "/v1/slots/acquire",
            acquire(),
            StatusCode::OK,
        ),
        (
            None,
            Method::POST,
            "/v1/slots/acquire",
            acquire(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some(CLIENT),
            Method::PUT,
            "/v1/limits/org:a",
            Some(r#"{"limit":1}"#.to_string()),
            StatusCode::FORBIDDEN,
        ),
        (
            Some(CLIENT),
            Method::GET,
            "/v1/nope",
            None,
            StatusCode::NOT_FOUND,
        ),
        (None, Method::GET, "/healthz", None, StatusCode::OK),
    ];
    for (token, method, uri, body, status) in cases {
        let (s, h, _) = call_as(&app, token, method, uri, body).await;
        assert_eq!(s, status, "{uri}");
        assert_eq!(
            h.get("x-quorate-leader").and_then(|v| v.to_str().ok()),
            Some("http://127.0.0.1:7102"),
            "{uri}: {h:?}"
        );
    }
    let (_, _, b) = call_as(&app, Some(CLIENT), Method::GET, "/v1/cluster", None).await;
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["leader_api"], "http://127.0.0.1:7102");
}

const CLIENT: &str = "client-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

fn token_rules() -> ApiAuth {
    ApiAuth::with_tokens(vec![
        ("svc".into(), Role::Client, Secret::new(CLIENT)),
        ("ops".into(), Role::Admin, Secret::new(ADMIN)),
    ])
}

#[tokio::test]
async fn tokens_and_roles_401_403() {
    // Callers from another host, tokens configured.
    let app = app_with_auth(token_rules(), [192, 0, 2, 10]);
    let acquire = Some(r#"{"keys":["org:a"]}"#.to_string());
    let set_limit = |token| {
        let body = Some(r#"{"limit":100}"#.to_string());
        call_as(&app, Some(token), Method::PUT, "/v1/limits/org:a", body)
    };

    for (token, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("wrong-token-0123456789"), StatusCode::UNAUTHORIZED),
        (Some(CLIENT), StatusCode::OK),
    ] {
        let (s, _, b) = call_as(
            &app,
            token,
            Method::POST,
            "/v1/slots/acquire",
            acquire.clone(),
        )
        .await;
        assert_eq!(s, status, "{token:?}");
        if s == StatusCode::UNAUTHORIZED {
            assert_error(&serde_json::from_slice(&b).unwrap(), "unauthorized");
        }
    }
    let (s, _, _) = call_as(&app, Some(CLIENT), Method::GET, "/v1/limits/org:a", None).await;
    assert_eq!(s, StatusCode::OK, "clients may read limits");

    // A client token cannot raise its own limits.
    let (s, _, b) = set_limit(CLIENT).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_error(&serde_json::from_slice(&b).unwrap(), "forbidden");
    let (_, _, b) = call_as(&app, Some(CLIENT), Method::GET, "/v1/limits/org:a", None).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["limit"],
        2,
        "the refused change did not happen"
    );
    for (m, uri, body) in [
        (
            Method::PUT,
            "/v1/policies/p",
            Some(r#"{"kind":"concurrency","pattern":"org:*","limit":99}"#.to_string()),
        ),
        (Method::DELETE, "/v1/policies/orgs", None),
        (
            Method::PUT,
            "/v1/tiers/x",
            Some(r#"{"multiplier":100}"#.to_string()),
        ),
        (
            Method::POST,
            "/v1/members",
            Some(r#"{"id":9,"api_addr":"a:1","raft_addr":"a:2"}"#.to_string()),
        ),
        (Method::DELETE, "/v1/members/2", None),
        (Method::DELETE, "/v1/limits/org:a", None),
    ] {
        let (s, _, _) = call_as(&app, Some(CLIENT), m.clone(), uri, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {uri}");
    }
    let (s, _, _) = set_limit(ADMIN).await;
    assert_eq!(s, StatusCode::OK);

    // Probes stay open; metrics need a token.
    let (s, _, _) = call_as(&app, None, Method::GET, "/healthz", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call_as(&app, None, Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, b) = call_as(&app, Some(CLIENT), Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(b).unwrap();
    assert!(
        text.contains(r#"status="401""#) && text.contains(r#"status="403""#),
        "{text}"
    );
    assert!(
        !text.contains(CLIENT) && !text.contains(ADMIN),
        "metrics never echo tokens"
    );
}

#[tokio::test]
async fn without_tokens_only_loopback_is_served() {
    for (peer_ip, status) in [
        ([192, 0, 2, 10], StatusCode::UNAUTHORIZED),
        ([127, 0, 0, 1], StatusCode::OK),
    ] {
        let app = app_with_auth(ApiAuth::default(), peer_ip);
        let (s, _, v) = post(&app, "/v1/slots/acquire", json!({"keys": ["a"]})).await;
        assert_eq!(s, status, "{peer_ip:?}: {v}");
        if s == StatusCode::UNAUTHORIZED {
            assert_error(&v, "unauthorized");
        }
    }
}

/// Open mode is for local callers: a loopback connection that carries a proxy's
/// headers is a remote user behind a local reverse proxy, and gets neither admin nor
/// client routes.
#[tokio::test]
async fn without_tokens_proxied_loopback_requests_are_refused() {
    let local = app_with_auth(ApiAuth::default(), [127, 0, 0, 1]);
    let send = |proxy_header: Option<(&'static str, &'static str)>| {
        let mut req = Request::builder()
            .method(Method::PUT)
            .uri("/v1/limits/org:p")
            .header("content-type", "application/json");
        if let Some((name, value)) = proxy_header {
            req = req.header(name, value);
        }
        let req = req.body(Body::from(r#"{"limit":100}"#)).unwrap();
        let router = local.router.clone();
        async move {
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, body)
        }
    };
    for header in [
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7;proto=https"),
        ("x-real-ip", "203.0.113.7"),
    ] {
        let (s, b) = send(Some(header)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{header:?}");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_error(&v, "unauthorized");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(message.contains("proxy"), "{message}");
        assert!(message.contains("tokens"), "{message}");
    }
    // The refused change did not happen; the same request without a proxy header is
    // served (admin route, open mode).
    let (s, _, b) = call_as(&local, None, Method::GET, "/v1/limits/org:p", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["limit"], 2);
    let (s, _) = send(None).await;
    assert_eq!(s, StatusCode::OK);
    // Probes stay open to everyone, proxied or not.
    let req = Request::get("/healthz")
        .header("x-forwarded-for", "203.0.113.7")
        .body(Body::empty())
        .unwrap();
    let resp = local.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn serves_its_openapi_document_without_a_token() {
    let app = app_with_auth(token_rules(), [192, 0, 2, 10]);
    let (s, h, b) = call_as(&app, None, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(v["paths"]["/v1/rate/check"]["post"].is_object());
}

/// The status page's files are open (they carry no data) with a self-only CSP,
/// revalidation and correct types; the data it reads needs a token like any read.
#[tokio::test]
async fn status_page_is_open_and_its_data_is_not() {
    let app = app_with_auth(token_rules(), [192, 0, 2, 10]);
    for (path, ty) in [
        ("/ui", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let (s, h, b) = call_as(&app, None, Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert_eq!(h["content-type"], ty, "{path}");
        assert!(!b.is_empty(), "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        // Unchanged: a 304 with no body.
        let req = Request::builder()
            .uri(path)
            .header("if-none-match", h["etag"].clone())
            .body(Body::empty())
            .unwrap();
        let again = app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    let (s, _, b) = call(&app, Method::GET, "/ui/secrets.txt", None).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    // Only GET is open; another method is answered like any unknown method.
    let (s, _, b) = call_json(&app, CLIENT, Method::POST, "/ui", Some(json!({}))).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{b}");

    // The page's data: 401 without a token (the page then asks for one), 200 with
    // a client token, and the rate checks this node answered are its busiest keys.
    let (s, _, b) = call(&app, Method::GET, "/v1/stats", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    for _ in 0..3 {
        let check = json!({"key": "ip:198.51.100.1", "limit": 20, "period_ms": 60000, "burst": 2});
        call_json(&app, CLIENT, Method::POST, "/v1/rate/check", Some(check)).await;
    }
    let (s, _, b) = call_json(&app, CLIENT, Method::GET, "/v1/stats", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["interval_ms"], 5000);
    assert_eq!(b["samples"], json!([]), "no interval has passed");
    let top = &b["busiest_rate_keys"][0];
    assert_eq!(top["key"], "ip:198.51.100.1", "{b}");
    assert_eq!(
        (top["checks"].as_u64(), top["limited"].as_u64()),
        (Some(3), Some(1))
    );
    // The status page scales the key's bar by the bucket (2), not the rate (20).
    assert_eq!(
        (
            top["limit"].as_u64(),
            top["burst"].as_u64(),
            top["remaining"].as_u64()
        ),
        (Some(20), Some(2), Some(0))
    );
}

/// `call_as` with a JSON body, answering status, headers and the JSON body.
async fn call_json(
    app: &App,
    token: &str,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let (s, h, b) = call_as(app, Some(token), method, uri, body.map(|v| v.to_string())).await;
    let v = serde_json::from_slice(&b).unwrap_or_else(|_| panic!("not JSON: {b:?}"));
    (s, h, v)
}

/// At a state cap, an op that would create a new lease, slot key or rate bucket is a
/// 503 `state_full` naming the cap, with `Retry-After`; what already exists keeps
/// working (retry, renew, release, checks on known buckets), and nothing is granted.
#[tokio::test]
async fn state_caps_answer_503_state_full_and_keep_existing_entries() {
    let app = app();
    let caps = Configuration {
        source_digest: 2,
        settings: Settings {
            max_leases: 2,
            max_slot_keys: 2,
            max_rate_keys: 1,
            ..Settings::default()
        },
        policies: Vec::new(),
        tiers: Vec::new(),
    };
    app.backend.apply(Op::Configure(Box::new(caps))).unwrap();
    let acquire = |key: &str, id: &str| json!({"keys": [key], "lease_id": id, "ttl_ms": 60000});
    for (key, id) in [("a", "l1"), ("b", "l2")] {
        let (s, _, v) = post(&app, "/v1/slots/acquire", acquire(key, id)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // The flood stops at the cap: a new lease (on a new key or a known one) is refused.
    for (key, id) in [("c", "l3"), ("a", "l4")] {
        let (s, h, v) = post(&app, "/v1/slots/acquire", acquire(key, id)).await;
        assert_refused(s, &v, StatusCode::SERVICE_UNAVAILABLE, "state_full");
        assert_eq!(
            v.as_object().unwrap().len(),
            2,
            "exactly error and message: {v}"
        );
        let m = v["message"].as_str().unwrap();
        assert!(m.contains("max_leases (2)"), "{m}");
        assert_eq!(h["retry-after"], "5");
    }
    // Known leases keep working.
    let (s, _, v) = post(&app, "/v1/slots/acquire", acquire("a", "l1")).await;
    assert_eq!((s, v["lease_id"].clone()), (StatusCode::OK, json!("l1")));
    let renew = json!({"lease_id": "l2", "ttl_ms": 90000});
    let (s, _, _) = post(&app, "/v1/slots/renew", renew).await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, v) = get(&app, "/v1/slots/b").await;
    assert_eq!(v["leases"][0]["lease_id"], "l2");
    // The slot-key cap names itself; a release makes room.
    let (s, _, v) = post(&app, "/v1/slots/release", json!({"lease_id": "l1"})).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"released": true})));
    let two_new = json!({"keys": ["x", "y"], "lease_id": "l5"});
    let (s, _, v) = post(&app, "/v1/slots/acquire", two_new).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("max_slot_keys (2)"),
        "{v}"
    );
    let (s, _, _) = post(&app, "/v1/slots/acquire", acquire("x", "l5")).await;
    assert_eq!(s, StatusCode::OK);

    // Rate buckets: one known key is served (allowed, then limited); a new one is 503.
    let check = |key: &str| json!({"key": key, "limit": 1, "period_ms": 60000});
    let (s, _, _) = post(&app, "/v1/rate/check", check("r1")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, h, v) = post(&app, "/v1/rate/check", check("r2")).await;
    assert_refused(s, &v, StatusCode::SERVICE_UNAVAILABLE, "state_full");
    assert!(
        v["message"].as_str().unwrap().contains("max_rate_keys (1)"),
        "{v}"
    );
    assert!(h.contains_key("retry-after"));
    let (s, _, v) = post(&app, "/v1/rate/check", check("r1")).await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "a known bucket keeps its answer: {v}"
    );
    assert_eq!(v["error"], "rate_limited");
}

const OTHER_CLIENT: &str = "other-client-token-0123456789";

/// A lease belongs to the token that acquired it: another client token may not
/// release, renew or re-acquire it (403 `forbidden`), and sees it in listings without
/// its id; the owner and admins see and may do everything.
#[tokio::test]
async fn leases_belong_to_their_token() {
    let rules = ApiAuth::with_tokens(vec![
        ("svc".into(), Role::Client, Secret::new(CLIENT)),
        ("svc2".into(), Role::Client, Secret::new(OTHER_CLIENT)),
        ("ops".into(), Role::Admin, Secret::new(ADMIN)),
    ]);
    let app = app_with_auth(rules, [192, 0, 2, 10]);
    let body = json!({"keys": ["org:own"], "lease_id": "mine", "holder": "w1", "ttl_ms": 60000});
    let (s, _, v) = call_json(
        &app,
        CLIENT,
        Method::POST,
        "/v1/slots/acquire",
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Another client: every lease op on it is refused with the JSON error shape.
    for (uri, b) in [
        ("/v1/slots/release", json!({"lease_id": "mine"})),
        (
            "/v1/slots/renew",
            json!({"lease_id": "mine", "ttl_ms": 5000}),
        ),
        ("/v1/slots/acquire", body.clone()),
    ] {
        let (s, _, v) = call_json(&app, OTHER_CLIENT, Method::POST, uri, Some(b)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{uri}: {v}");
        assert_error(&v, "forbidden");
        assert!(
            v["message"].as_str().unwrap().contains("another caller"),
            "{v}"
        );
    }
    // It lists the lease (it occupies a slot) without the id that would release it.
    let (s, _, v) = call_json(&app, OTHER_CLIENT, Method::GET, "/v1/slots/org:own", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["used"], 1);
    let lease = v["leases"][0].as_object().unwrap();
    assert!(!lease.contains_key("lease_id"), "{v}");
    assert_eq!(lease["holder"], "w1");
    // The owner and an admin see the id: the owner's JSON is unchanged.
    for token in [CLIENT, ADMIN] {
        let (_, _, v) = call_json(&app, token, Method::GET, "/v1/slots/org:own", None).await;
        assert_eq!(v["leases"][0]["lease_id"], "mine", "{v}");
    }
    // The owner may renew and retry; an admin may release anyone's lease.
    let renew = json!({"lease_id": "mine", "ttl_ms": 5000});
    let (s, _, _) = call_json(&app, CLIENT, Method::POST, "/v1/slots/renew", Some(renew)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, v) = call_json(&app, CLIENT, Method::POST, "/v1/slots/acquire", Some(body)).await;
    assert_eq!((s, v["lease_id"].clone()), (StatusCode::OK, json!("mine")));
    // A waiter is listed the same way: its id would let another caller take its
    // place (LeaveQueue) or its grant.
    let (s, _, v) = call_json(
        &app,
        ADMIN,
        Method::PUT,
        "/v1/limits/org:own",
        Some(json!({"limit": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let waiting = {
        let app = App {
            router: app.router.clone(),
            backend: app.backend.clone(),
        };
        let wait = json!({"keys": ["org:own"], "lease_id": "queued", "wait_ms": 5000});
        tokio::spawn(async move {
            call_json(&app, CLIENT, Method::POST, "/v1/slots/acquire", Some(wait)).await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, v) = call_json(&app, OTHER_CLIENT, Method::GET, "/v1/slots/org:own", None).await;
        if v["queue"]["length"] == 1 {
            let waiter = v["queue"]["waiters"][0].as_object().unwrap();
            assert!(!waiter.contains_key("lease_id"), "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never queued: {v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, _, v) = call_json(&app, CLIENT, Method::GET, "/v1/slots/org:own", None).await;
    assert_eq!(v["queue"]["waiters"][0]["lease_id"], "queued", "{v}");

    let release = json!({"lease_id": "mine"});
    let (s, _, v) = call_json(
        &app,
        ADMIN,
        Method::POST,
        "/v1/slots/release",
        Some(release),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"released": true})));
    // The freed slot goes to the waiter.
    let (s, _, v) = waiting.await.unwrap();
    assert_eq!(
        (s, v["lease_id"].clone()),
        (StatusCode::OK, json!("queued"))
    );
}

/// Allowlists over HTTP: entries are added, listed in canonical form and removed
/// (DELETE with the entry in the query string); a bad CIDR is a 400 naming it, an
/// entry beyond the bound a 400 naming the bound; an allowlisted check is 200 with
/// `allowlisted`, the `x-quorate-allowlisted` header, no charge, and is counted per
/// policy in the metrics and the stats.
#[tokio::test]
async fn allowlist_entries_exempt_rate_checks_say_so_and_are_validated() {
    let app = app();
    let (s, _, v) = post(&app, "/v1/allowlist", json!({"ip": "10.0.0.0/33"})).await;
    assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        v["message"].as_str().unwrap().contains("\"10.0.0.0/33\""),
        "{v}"
    );
    let (s, _, v) = post(&app, "/v1/allowlist", json!({"key": "a", "ip": "10.0.0.1"})).await;
    assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, _, v) = post(
        &app,
        "/v1/allowlist",
        json!({"policy": "user", "key": "u:admin-*"}),
    )
    .await;
    assert_eq!(
        (s, v),
        (
            StatusCode::OK,
            json!({"entry": {"policy": "user", "key": "u:admin-*"}, "changed": true})
        )
    );
    let (s, _, v) = post(&app, "/v1/allowlist", json!({"ip": "2001:db8:ffff::1/32"})).await;
    assert_eq!(
        (s, v),
        (
            StatusCode::OK,
            json!({"entry": {"ip": "2001:db8::/32"}, "changed": true})
        )
    );
    let (s, _, v) = get(&app, "/v1/allowlist").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"entries": [{"ip": "2001:db8::/32"}, {"policy": "user", "key": "u:admin-*"}], "max": 1000})
    );

    // `user` has a burst of 2: an allowlisted key passes five times, uncharged.
    for _ in 0..5 {
        let (s, h, v) = post(
            &app,
            "/v1/rate/check",
            json!({"key": "u:admin-1", "policy": "user"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["allowlisted"], true, "{v}");
        assert_eq!(v["results"][0]["allowlisted"], true, "{v}");
        assert_eq!(v["results"][0]["remaining"], 2, "{v}");
        assert_eq!(h[ALLOWLISTED], "u:admin-1");
    }
    // An IPv6 client inside the global /32, under an inline limit.
    let (s, h, v) = post(
        &app,
        "/v1/rate/check",
        json!({"key": "ip:2001:db8::9", "limit": 1, "period_ms": 1000}),
    )
    .await;
    assert_eq!((s, v["allowlisted"].clone()), (StatusCode::OK, json!(true)));
    assert_eq!(h[ALLOWLISTED], "ip:2001:db8::9");
    // Not allowlisted: no field, no header, charged as usual.
    let (s, h, v) = post(
        &app,
        "/v1/rate/check",
        json!({"key": "u:bob", "policy": "user"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.get("allowlisted").is_none(), "{v}");
    assert!(v["results"][0].get("allowlisted").is_none(), "{v}");
    assert!(h.get(ALLOWLISTED).is_none());

    let (_, _, b) = call_raw(&app, Method::GET, "/metrics", None).await;
    let text = String::from_utf8(b).unwrap();
    for line in [
        r#"quorate_allowlisted_total{policy="user"} 5"#,
        r#"quorate_allowlisted_total{policy="inline"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from {text}");
    }
    let (_, _, v) = get(&app, "/v1/stats").await;
    assert_eq!(
        v["allowlisted"],
        json!([{"policy": "inline", "count": 1}, {"policy": "user", "count": 5}])
    );

    // Removal by any form of the same network; twice is a no-op.
    let (s, _, v) = delete(&app, "/v1/allowlist?ip=2001:db8::1/32").await;
    assert_eq!(
        (s, v["changed"].clone()),
        (StatusCode::OK, json!(true)),
        "{v}"
    );
    let (s, _, v) = delete(&app, "/v1/allowlist?ip=2001:db8::/32").await;
    assert_eq!(
        (s, v["changed"].clone()),
        (StatusCode::OK, json!(false)),
        "{v}"
    );
    let (s, _, v) = delete(&app, "/v1/allowlist?ip=2001:db8::/32&color=red").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _, v) = post(
        &app,
        "/v1/rate/check",
        json!({"key": "ip:2001:db8::9", "limit": 1, "period_ms": 1000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.get("allowlisted").is_none(), "{v}");

    // The bound (lowered through the op the server sends from `[limits]`).
    app.backend
        .apply(Op::SetAdminLimits(quorate_core::AdminLimits {
            max_allowlist: 1,
            audit_entries: 10,
        }))
        .unwrap();
    let (s, _, v) = post(&app, "/v1/allowlist", json!({"key": "vip:*"})).await;
    assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        v["message"].as_str().unwrap().contains("max_allowlist (1)"),
        "{v}"
    );
}

const ALLOWLISTED: &str = "x-quorate-allowlisted";

/// `GET /v1/audit`: admin changes with caller (`open` without tokens), index order and
/// before/after; filtered by key prefix and `since`; a bad `max` is a 400.
#[tokio::test]
async fn audit_lists_admin_changes_with_before_and_after() {
    let app = app();
    put(&app, "/v1/limits/org:a", json!({"limit": 3})).await;
    put(&app, "/v1/limits/org:a", json!({"limit": 4})).await;
    put(&app, "/v1/limits/org:a", json!({"limit": 4})).await; // no change: no record
    post(&app, "/v1/allowlist", json!({"key": "vip:*"})).await;
    let (s, _, v) = get(&app, "/v1/audit?key=limit:").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rs = v["records"].as_array().unwrap();
    assert_eq!(rs.len(), 2, "{v}");
    assert_eq!(
        (
            &rs[1]["caller"],
            &rs[1]["op"],
            &rs[1]["key"],
            &rs[1]["before"],
            &rs[1]["after"]
        ),
        (
            &json!("open"),
            &json!("set_limit"),
            &json!("limit:org:a"),
            &json!("3"),
            &json!("4")
        )
    );
    assert!(rs[0].get("before").is_none(), "{v}");
    assert_eq!(v["capacity"], 1000);
    let (_, _, all) = get(&app, "/v1/audit").await;
    // The configuration installed at startup is the system's own change.
    assert_eq!(all["records"][0]["caller"], "system", "{all}");
    assert_eq!(all["records"][0]["key"], "config", "{all}");
    let last = all["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["key"], "allowlist:global:key:vip:*", "{all}");
    let since = rs[1]["index"].as_u64().unwrap();
    let (_, _, v) = get(&app, &format!("/v1/audit?since={since}")).await;
    assert_eq!(v["records"], json!([last]), "{v}");
    let (s, _, v) = get(&app, "/v1/audit?max=0").await;
    assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    // The schema says int64 (schemathesis sent 2^63 and got a 200).
    let (s, _, v) = get(&app, "/v1/audit?since=9223372036854775808").await;
    assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, _, v) = get(&app, "/v1/audit?color=red").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

/// Poll `GET /v1/slots/{key}` until its queue has `len` waiters (deadline 5 s).
async fn wait_queue_len(app: &App, key: &str, len: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, _, v) = get(app, &format!("/v1/slots/{key}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["queue"]["length"] == len {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue of {key} never reached {len}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A waiting acquire, served in a task of its own (as a connection would be).
fn spawn_wait(
    app: &App,
    key: &str,
    lease_id: &str,
    wait_ms: u64,
) -> tokio::task::JoinHandle<(StatusCode, HeaderMap, Value)> {
    let router = app.router.clone();
    let backend = app.backend.clone();
    let body = json!({"keys": [key], "lease_id": lease_id, "wait_ms": wait_ms});
    tokio::spawn(async move {
        let app = App { router, backend };
        post(&app, "/v1/slots/acquire", body).await
    })
}

#[tokio::test]
async fn a_waiting_acquire_queues_and_is_granted_when_a_slot_frees() {
    let app = app();
    let (s, _, _) = put(&app, "/v1/limits/w:k", json!({"limit": 1})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, held) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["w:k"], "wait_ms": 1000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{held}");
    // Granted at once: the old body, no waited_ms.
    assert!(held.get("waited_ms").is_none(), "{held}");
    let waiter = spawn_wait(&app, "w:k", "w1", 5000);
    let v = wait_queue_len(&app, "w:k", 1).await;
    assert_eq!(v["queue"]["waiters"][0]["lease_id"], "w1", "{v}");
    assert_eq!(v["queue"]["waiters"][0]["position"], 1, "{v}");
    assert_eq!(v["used"], 1);
    let (s, _, v) = post(
        &app,
        "/v1/slots/release",
        json!({"lease_id": held["lease_id"]}),
    )
    .await;
    assert_eq!((s, &v["released"]), (StatusCode::OK, &json!(true)));
    let (s, _, v) = waiter.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["lease_id"], "w1");
    assert!(v["waited_ms"].as_u64().is_some_and(|w| w >= 1), "{v}");
    assert!(v["fencing_token"].as_u64() > held["fencing_token"].as_u64());
    let v = wait_queue_len(&app, "w:k", 0).await;
    assert_eq!(v["leases"][0]["lease_id"], "w1", "{v}");
}

#[tokio::test]
async fn a_wait_that_ends_is_a_429_with_its_place_and_a_wait_over_the_maximum_is_a_400() {
    let app = app();
    put(&app, "/v1/limits/w:t", json!({"limit": 1})).await;
    let (s, _, _) = post(&app, "/v1/slots/acquire", json!({"keys": ["w:t"]})).await;
    assert_eq!(s, StatusCode::OK);
    let first = spawn_wait(&app, "w:t", "first", 5000);
    wait_queue_len(&app, "w:t", 1).await;
    let (s, h, v) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["w:t"], "lease_id": "second", "wait_ms": 300}),
    )
    .await;
    assert_refused(s, &v, StatusCode::TOO_MANY_REQUESTS, "limit_exceeded");
    assert_eq!(v["queue_position"], 2, "{v}");
    assert_eq!(v["blocked_by"], json!(["w:t"]));
    assert!(h.get("retry-after").is_some());
    // It left the queue; the first waiter still waits, first.
    let v = wait_queue_len(&app, "w:t", 1).await;
    assert_eq!(v["queue"]["waiters"][0]["lease_id"], "first", "{v}");
    // A plain acquire does not overtake the waiter, and says nothing of a queue.
    let (s, _, v) = post(&app, "/v1/slots/acquire", json!({"keys": ["w:t"]})).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(v.get("queue_position").is_none(), "{v}");
    // Above limits.max_wait_ms (5000 here): 400 naming the maximum, nothing queued.
    let (s, _, v) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["w:t"], "wait_ms": 5001}),
    )
    .await;
    assert_refused(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(v["message"].as_str().unwrap().contains("5000"), "{v}");
    wait_queue_len(&app, "w:t", 1).await;
    first.abort();
}

#[tokio::test]
async fn a_waiter_whose_client_goes_away_leaves_the_queue_and_takes_no_slot() {
    let app = app();
    put(&app, "/v1/limits/w:d", json!({"limit": 1})).await;
    let (_, _, held) = post(&app, "/v1/slots/acquire", json!({"keys": ["w:d"]})).await;
    let gone = spawn_wait(&app, "w:d", "gone", 5000);
    wait_queue_len(&app, "w:d", 1).await;
    // The connection drops: axum drops the handler's future.
    gone.abort();
    wait_queue_len(&app, "w:d", 0).await;
    post(
        &app,
        "/v1/slots/release",
        json!({"lease_id": held["lease_id"]}),
    )
    .await;
    // The freed slot goes to the next caller, not to the waiter that left.
    let (s, _, v) = post(
        &app,
        "/v1/slots/acquire",
        json!({"keys": ["w:d"], "lease_id": "next"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, _, v) = get(&app, "/v1/slots/w:d").await;
    assert_eq!(v["leases"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["leases"][0]["lease_id"], "next", "{v}");
}
