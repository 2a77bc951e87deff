//! The audit trail on a real three-node cluster with tokens: admin changes made
//! through different nodes by a named admin token are listed by every node with the
//! caller, cluster time, log index and values before and after; a client token may
//! not read the trail; the `quorate audit` command shows it; and the whole trail
//! survives a full-cluster restart (every node killed and started again, with
//! snapshots taken every few entries, so it comes back through the snapshot section
//! and the log).

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Options, DEADLINE};
use quorate_server::security::auth::{Role, TokenSpec};
use quorate_server::ClusterConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-0123456789";
const CLIENT: &str = "client-token-0123456789";

fn tokens(c: &mut ClusterConfig) {
    let token = |name: &str, role, secret: &str| TokenSpec {
        name: name.into(),
        role,
        token: Some(secret.into()),
        token_file: None,
        token_env: None,
    };
    c.auth.tokens = vec![
        token("ops", Role::Admin, ADMIN),
        token("app", Role::Client, CLIENT),
    ];
}

/// The trail's (caller, op, key, before, after) rows under `prefix`, from node `id`.
async fn trail(c: &Cluster, id: u64, prefix: &str) -> (StatusCode, Value) {
    c.get(id, &format!("/v1/audit?key={prefix}")).await
}

fn rows(v: &Value) -> Vec<(String, String, String, Value, Value)> {
    v["records"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    (
                        r["caller"].as_str().unwrap_or_default().to_string(),
                        r["op"].as_str().unwrap_or_default().to_string(),
                        r["key"].as_str().unwrap_or_default().to_string(),
                        r["before"].clone(),
                        r["after"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_replicated_and_survives_a_full_restart() {
    let mut o = Options::new(3);
    o.config_edit = Some(tokens);
    o.bearer = Some(ADMIN.into());
    o.env = vec![
        ("QUORATE_RAFT_SNAPSHOT_LOGS_SINCE_LAST".into(), "5".into()),
        (
            "QUORATE_RAFT_MAX_IN_SNAPSHOT_LOG_TO_KEEP".into(),
            "2".into(),
        ),
    ];
    let mut c = Cluster::start_with(o).await;
    let leader = c.leader_id().await;
    let ids = c.ids();
    let f: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();

    // Admin changes through three different nodes.
    let (s, v) = c
        .put(f[0], "/v1/limits/org:acme", json!({"limit": 5}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = c
        .put(f[1], "/v1/limits/org:acme", json!({"limit": 500}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = c
        .put(leader, "/v1/policies/user/mode", json!({"mode": "shadow"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = c
        .post(f[0], "/v1/allowlist", json!({"ip": "10.0.0.0/8"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = c
        .put(f[1], "/v1/tiers/gold", json!({"multiplier": 3}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Decisions are not changes; a dozen of them move the log past a few snapshots.
    for i in 0..12 {
        let body = json!({"keys": ["org:acme"], "lease_id": format!("l{i}")});
        let (s, v) = c.post(leader, "/v1/slots/acquire", body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    let expected = vec![
        (
            "ops".to_string(),
            "set_limit".to_string(),
            "limit:org:acme".to_string(),
            Value::Null,
            json!("5"),
        ),
        (
            "ops".into(),
            "set_limit".into(),
            "limit:org:acme".into(),
            json!("5"),
            json!("500"),
        ),
        (
            "ops".into(),
            "set_policy_mode".into(),
            "mode:user".into(),
            json!("enforce"),
            json!("shadow"),
        ),
        (
            "ops".into(),
            "allow".into(),
            "allowlist:global:ip:10.0.0.0/8".into(),
            Value::Null,
            json!("allowed"),
        ),
        (
            "ops".into(),
            "put_tier".into(),
            "tier:gold".into(),
            Value::Null,
            json!("3000"),
        ),
    ];
    let admin_keys = ["limit:", "mode:", "allowlist:", "tier:"];
    let listed = |v: &Value| -> Vec<_> {
        rows(v)
            .into_iter()
            .filter(|r| admin_keys.iter().any(|k| r.2.starts_with(k)))
            .collect()
    };
    // Every node lists the same changes, in log order (indices never decrease).
    let mut first: Option<Value> = None;
    for id in &ids {
        let (s, v) = trail(&c, *id, "").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(listed(&v), expected, "node {id}: {v}");
        match &first {
            None => first = Some(v),
            Some(f) => assert_eq!(&v, f, "node {id} differs"),
        }
    }
    let before_restart = first.unwrap();
    let indices: Vec<u64> = before_restart["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    // Log order: ops the leader batched into one entry share its index.
    assert!(indices.windows(2).all(|w| w[0] <= w[1]), "{indices:?}");

    // Filters: by key prefix, and after an index.
    let (_, v) = trail(&c, f[0], "limit:org:").await;
    assert_eq!(rows(&v).len(), 2, "{v}");
    let second = v["records"][0]["index"].as_u64().unwrap();
    let (_, v) = c
        .get(f[1], &format!("/v1/audit?key=limit:&since={second}"))
        .await;
    assert_eq!(rows(&v), expected[1..2].to_vec(), "{v}");

    // A client token may not read the trail.
    let resp = c
        .http
        .get(c.url(f[0], "/v1/audit"))
        .bearer_auth(CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // The CLI.
    let nodes: Vec<String> = ids.iter().map(|id| c.api_url(*id)).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args([
            "audit", "--key", "tier:", "--json", "--token", ADMIN, "--node",
        ])
        .arg(nodes.join(","))
        .output()
        .expect("run quorate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows(&v), expected[4..].to_vec(), "{v}");

    // Full-cluster restart: every node killed, then started again.
    for id in &ids {
        c.kill(*id);
    }
    for id in &ids {
        c.spawn(*id);
    }
    c.wait_all_ready().await;
    for id in &ids {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (s, v) = trail(&c, *id, "").await;
            if s == StatusCode::OK && listed(&v) == expected {
                assert_eq!(v["records"], before_restart["records"], "node {id}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} lost its audit trail after the restart: {s} {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // And it keeps recording after the restart.
    let (s, v) = c.delete(f[0], "/v1/limits/org:acme").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = trail(&c, f[1], "limit:").await;
    let rs = rows(&v);
    assert_eq!(
        rs.last(),
        Some(&(
            "ops".into(),
            "delete_limit".into(),
            "limit:org:acme".into(),
            json!("500"),
            Value::Null
        )),
        "{v}"
    );
}
