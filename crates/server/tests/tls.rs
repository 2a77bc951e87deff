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
            advertise_api: None,
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

/// With `[tls]`, Envoy's rate limit service is served over TLS too (server-only, ALPN
/// h2): a client trusting the CA gets decisions; a plain HTTP/2 client gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_listener_serves_over_tls() {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use quorate_server::config::envoy::{
        DescriptorEntry, DomainConfig, EnvoySection, RateLimitConfig, UnitConfig,
    };

    let dir = tempfile::tempdir().expect("tempdir");
    support::make_test_ca(&dir.path().join("tls"));
    let mut bound = support::bind().await;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc_addr = grpc.local_addr().expect("addr");
    let mut config = ClusterConfig::single_node(
        "tls",
        &bound.api_addr,
        &bound.raft_addr,
        &dir.path().join("data"),
    );
    config.nodes[0].grpc_addr = Some(grpc_addr.to_string());
    config.tls = Some(support::test_ca_tls());
    config.envoy = EnvoySection {
        domains: vec![DomainConfig {
            domain: "edge".into(),
            descriptors: vec![DescriptorEntry {
                key: "remote_address".into(),
                value: None,
                rate_limit: Some(RateLimitConfig {
                    requests_per_unit: 5,
                    unit: UnitConfig::Minute,
                    burst: None,
                    name: None,
                }),
                policy: None,
                unlimited: false,
                descriptors: vec![],
            }],
        }],
    };
    bound.listeners.grpc = Some(grpc);
    let node = support::serve(config, 1, bound.listeners);

    // A gRPC channel over rustls trusting the test CA, ALPN h2.
    let ca = std::fs::read(dir.path().join("tls/ca.pem")).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(c.expect("pem")).expect("ca");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .expect("uri")
        .connect_with_connector_lazy(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(grpc_addr).await?;
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
                    .expect("name")
                    .to_owned();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }));
    let mut rl = RateLimitServiceClient::new(channel);
    let req = RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "remote_address".into(),
                value: "10.1.2.3".into(),
            }],
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 1,
    };
    // The leader installs the [envoy] table once elected: poll until it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        match rl.should_rate_limit(req.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(e) => assert!(Instant::now() < deadline, "no answer over TLS: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer.statuses[0].limit_remaining, 4, "{answer:?}");

    // Plain HTTP/2 on the TLS port gets no answer.
    let mut plain = RateLimitServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .expect("uri")
            .timeout(Duration::from_secs(3))
            .connect_lazy(),
    );
    assert!(plain.should_rate_limit(req).await.is_err());
    node.stop().await;
}
