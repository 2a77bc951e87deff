//! With `[tls]`, a three-node cluster forms over mutual TLS (votes, appends and
//! forwarding all travel over https, each node presenting its certificate and
//! verifying its peer's against the cluster CA, every request also signed with the
//! cluster secret) and serves its API over server-only TLS: a client trusting the CA
//! is served without a certificate, plain HTTP and clients that do not trust the CA
//! are not. On the Raft port, a caller without a client certificate, or with one from
//! another CA, is refused in the handshake and counted. Certificates come from
//! `scripts/make_test_ca.sh` (openssl).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use quorate_server::config::{NodeConfig, NonZeroMillis};
use quorate_server::ClusterConfig;

fn dir_path(root: &Path, sub: &str, file: &str) -> std::path::PathBuf {
    root.join(sub).join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_forms_and_serves_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::make_test_ca(&dir.path().join("tls"));
    // A second, unrelated CA: its certificates must not open the Raft port.
    support::make_test_ca(&dir.path().join("foreign"));

    let mut listeners = Vec::new();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let bound = support::bind().await;
        nodes.push(NodeConfig {
            id,
            api_addr: bound.api_addr,
            raft_addr: bound.raft_addr,
            grpc_addr: None,
        });
        listeners.push((id, bound.listeners));
    }
    let mut config = ClusterConfig::single_node("tls", "-", "-", &dir.path().join("data"));
    config.nodes = nodes;
    config.raft.election_timeout_min_ms = NonZeroMillis::new(300).expect("positive");
    config.raft.election_timeout_max_ms = NonZeroMillis::new(600).expect("positive");
    config.tls = Some(support::test_ca_tls());
    config.auth.cluster_secret = Some("tls-cluster-secret-0123456789".into());
    let raft_urls: Vec<String> = config
        .nodes
        .iter()
        .map(|n| format!("https://{}", n.raft_addr))
        .collect();
    let urls: Vec<String> = config
        .nodes
        .iter()
        .map(|n| format!("https://{}", n.api_addr))
        .collect();
    let running: Vec<_> = listeners
        .into_iter()
        .map(|(id, l)| support::serve(config.clone(), id, l))
        .collect();

    let ca = std::fs::read(dir.path().join("tls/ca.pem")).expect("ca");
    let dir_root = dir.path().to_path_buf();
    let trusted = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    // Ready on every node = a leader was elected over TLS peer traffic.
    let deadline = Instant::now() + Duration::from_secs(30);
    for u in &urls {
        support::wait_ready(&trusted, u, deadline).await;
    }
    // Writes through every node (followers forward to the leader over TLS).
    for (i, u) in urls.iter().enumerate() {
        let r = trusted
            .post(format!("{u}/v1/slots/acquire"))
            .body(format!(r#"{{"keys":["org:tls"],"lease_id":"t{i}"}}"#))
            .send()
            .await
            .expect("acquire over TLS");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let http_url = urls[0].replacen("https://", "http://", 1);
    let r = plain.get(format!("{http_url}/healthz")).send().await;
    assert!(
        r.is_err() || !r.is_ok_and(|r| r.status().is_success()),
        "plain HTTP must not be served"
    );
    // A client that does not trust the cluster CA is refused by its own TLS check.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    assert!(untrusting
        .get(format!("{}/healthz", urls[0]))
        .send()
        .await
        .is_err());

    // The Raft port: a client that trusts the CA but has no certificate does not get
    // through the handshake (before this change it reached HTTP and got a status).
    let probe = |client: reqwest::Client| {
        let url = format!("{}/raft/probe", raft_urls[0]);
        async move { client.get(url).send().await }
    };
    let r = probe(trusted.clone()).await;
    assert!(r.is_err(), "no client certificate: {r:?}");
    // Nor does one presenting a certificate from another CA.
    let identity = |dir: &str| {
        let mut pem = std::fs::read(dir_path(&dir_root, dir, "node.key")).expect("key");
        pem.push(b'\n');
        pem.extend(std::fs::read(dir_path(&dir_root, dir, "node.pem")).expect("cert"));
        reqwest::Identity::from_pem(&pem).expect("identity")
    };
    let with_identity = |id: reqwest::Identity| {
        reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
            .identity(id)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
    };
    let r = probe(with_identity(identity("foreign"))).await;
    assert!(r.is_err(), "foreign client certificate: {r:?}");
    // The cluster's own certificate gets through TLS, and then still needs the
    // cluster id and a signature.
    let r = probe(with_identity(identity("tls")))
        .await
        .expect("a node certificate passes the handshake");
    assert_eq!(r.status(), 401);
    // The API port does not ask clients for certificates (served above), and the
    // refused handshakes were counted on node 1.
    let metrics = trusted
        .get(format!("{}/metrics", urls[0]))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("quorate_peer_rejected_total{reason=\"tls_handshake\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("quorate_peer_rejected_total{reason=\"missing_cluster\"} 1"),
        "{metrics}"
    );

    support::stop_all(running).await;
}

/// TLS is not built for the gRPC listener yet: a node asked to serve Envoy's rate
/// limit service beside `[tls]` refuses to start rather than serve it in clear text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_listener_beside_tls_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::make_test_ca(&dir.path().join("tls"));
    let mut bound = support::bind().await;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut config = ClusterConfig::single_node(
        "tls",
        &bound.api_addr,
        &bound.raft_addr,
        &dir.path().join("data"),
    );
    config.nodes[0].grpc_addr = Some(grpc.local_addr().expect("addr").to_string());
    config.tls = Some(support::test_ca_tls());
    bound.listeners.grpc = Some(grpc);
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        quorate_server::run::serve_on(config, 1, bound.listeners, std::future::pending()),
    )
    .await
    .expect("a refused configuration must fail at once, not serve");
    let e = result.expect_err("must refuse to start").to_string();
    assert!(e.contains("grpc_addr is not served over TLS"), "{e}");
}
