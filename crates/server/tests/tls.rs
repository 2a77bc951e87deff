//! With `[tls]`, a three-node cluster forms over mutual TLS (votes, appends and
//! forwarding all travel over https, each node presenting its certificate and
//! verifying its peer's against the cluster CA, every request also signed with the
//! cluster secret) and serves its API over server-only TLS: a client trusting the CA
//! is served without a certificate, plain HTTP and clients that do not trust the CA
//! are not. On the Raft port, a caller without a client certificate, or with one from
//! another CA, is refused in the handshake and counted. Each certificate names its
//! node, and a node's certificate speaks for that node only: a Raft RPC claiming
//! another sender is refused, a peer presenting another node's certificate is not
//! dialed, and a node whose own certificate does not name it does not start.
//! Certificates come from `scripts/make_test_ca.sh` (openssl).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use quorate_server::config::{NodeConfig, NonZeroMillis};
use quorate_server::ClusterConfig;

fn dir_path(root: &Path, sub: &str, file: &str) -> std::path::PathBuf {
    root.join(sub).join(file)
}

/// Node `node`'s key and certificate in `<root>/<sub>`, as a client identity.
fn identity(root: &Path, sub: &str, node: u64) -> reqwest::Identity {
    let mut pem = std::fs::read(dir_path(root, sub, &format!("node-{node}.key"))).expect("key");
    pem.push(b'\n');
    pem.extend(std::fs::read(dir_path(root, sub, &format!("node-{node}.pem"))).expect("cert"));
    reqwest::Identity::from_pem(&pem).expect("identity")
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
    let identity = |dir: &str| identity(&dir_root, dir, 1);
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
                shadow_mode: false,
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

/// Node 2's key, though signed by the cluster CA, cannot speak for node 1: a Raft RPC
/// whose sender is node 1 (a request, or an append on a stream) is refused
/// (`wrong_node`, counted) when the client certificate is node 2's and accepted with
/// node 1's; and a node dialing peer 2 refuses a server presenting node 3's
/// certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_speaks_for_its_node_only() {
    use openraft::raft::VoteRequest;
    use openraft::Vote;
    use quorate_server::peer::protocol::{encode, paths, AUTH_HEADER, CLUSTER_HEADER};
    use quorate_server::peer::PeerClient;
    use quorate_server::security::{PeerAuth, Secret};

    const SECRET: &str = "tls-cluster-secret-0123456789";
    let dir = tempfile::tempdir().expect("tempdir");
    support::make_test_ca(&dir.path().join("tls"));
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
    config.auth.cluster_secret = Some(SECRET.into());
    let raft_3 = config.nodes[2].raft_addr.clone();
    let api_3 = format!("https://{}", config.nodes[2].api_addr);
    let running: Vec<_> = listeners
        .into_iter()
        .map(|(id, l)| support::serve(config.clone(), id, l))
        .collect();
    let ca = std::fs::read(dir.path().join("tls/ca.pem")).expect("ca");
    let trusted = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    support::wait_ready(&trusted, &api_3, Instant::now() + Duration::from_secs(30)).await;

    // A stale vote (term 0) from "node 1": harmless to the cluster, answered 200 when
    // it really comes from node 1.
    let auth = PeerAuth::new("tls", Some(Secret::new(SECRET)));
    let body = encode(&VoteRequest::<u64> {
        vote: Vote::new(0, 1),
        last_log_id: None,
    })
    .expect("encode");
    // A peer client presenting node `node`'s certificate.
    let client_as = |node: u64| {
        reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
            .identity(identity(dir.path(), "tls", node))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
    };
    let send_as = |node: u64| {
        let client = client_as(node);
        let sig = auth
            .sign("POST", paths::VOTE, &body)
            .expect("sign")
            .expect("signed");
        client
            .post(format!("https://{raft_3}{}", paths::VOTE))
            .header(CLUSTER_HEADER, "tls")
            .header(AUTH_HEADER, sig)
            .body(body.clone())
            .send()
    };
    let r = send_as(2)
        .await
        .expect("node 2's certificate passes the handshake");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("text").contains("wrong_node"));
    let r = send_as(1).await.expect("node 1's certificate");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    // The same holds for every append on a stream: opened with node 2's certificate,
    // a stream refuses (and closes after) an append whose leader is node 1; opened
    // with node 1's, it answers it.
    let stream_append_as = |node: u64| {
        use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
        use quorate_server::peer::protocol::{
            decode, read_frame, write_frame, StreamAnswer, StreamRequest, STREAM_PROTOCOL,
        };
        let client = client_as(node);
        let sig = auth
            .sign("POST", paths::STREAM, &[])
            .expect("sign")
            .expect("signed");
        let url = format!("https://{raft_3}{}", paths::STREAM);
        async move {
            let r = client
                .post(url)
                .header(CLUSTER_HEADER, "tls")
                .header(AUTH_HEADER, sig)
                .header(reqwest::header::CONNECTION, "upgrade")
                .header(reqwest::header::UPGRADE, STREAM_PROTOCOL)
                .send()
                .await
                .expect("a CA-signed certificate passes the handshake");
            assert_eq!(r.status(), 101);
            let mut io = r.upgrade().await.expect("upgraded");
            let stale = AppendEntriesRequest::<quorate_store::TypeConfig> {
                vote: Vote::new_committed(0, 1),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            };
            let frame: StreamRequest<_> = StreamRequest::Append(&stale);
            write_frame(&mut io, &encode(&frame).expect("encode"))
                .await
                .expect("write");
            let bytes = read_frame(&mut io).await.expect("read").expect("a frame");
            let answer: StreamAnswer<
                Result<AppendEntriesResponse<u64>, openraft::error::RaftError<u64>>,
            > = decode(&bytes).expect("decode");
            answer
        }
    };
    let answer = stream_append_as(2).await;
    assert!(
        matches!(&answer, quorate_server::peer::protocol::StreamAnswer::Refused(why) if why.contains("wrong_node")),
        "{answer:?}"
    );
    let answer = stream_append_as(1).await;
    assert!(
        matches!(
            answer,
            quorate_server::peer::protocol::StreamAnswer::Done(Ok(_))
        ),
        "{answer:?}"
    );

    // Dialing: node 1's peer client, told that node 2 is at node 3's address, meets
    // node 3's certificate and refuses it; the same address as node 3 is fine.
    let tls_1 = support::test_ca_tls()
        .load(dir.path(), 1)
        .expect("node 1's TLS");
    let peers = PeerClient::for_node(Duration::from_secs(2), &auth, Some(&tls_1)).expect("client");
    let wrong = peers
        .get(2, &raft_3, paths::PROBE, Duration::from_secs(5))
        .await;
    let e = wrong.expect_err("node 3's certificate is not node 2's");
    assert!(format!("{e}").contains("certificate of node 3"), "{e}");
    peers
        .get(3, &raft_3, paths::PROBE, Duration::from_secs(5))
        .await
        .expect("node 3 is node 3");

    let metrics = trusted
        .get(format!("{api_3}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("quorate_peer_rejected_total{reason=\"wrong_node\"} 2"),
        "{metrics}"
    );
    support::stop_all(running).await;
}

/// A node refuses to start with a certificate that names another node, or none (as
/// certificates were issued before node names were required).
#[test]
fn a_node_certificate_must_name_its_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    support::make_test_ca(&tls);
    let section = support::test_ca_tls();
    assert_eq!(section.load(dir.path(), 2).expect("node 2").node_id, 2);
    // Node 2's files used by node 1.
    let mut swapped = section.clone();
    swapped.cert_file = "tls/node-2.pem".into();
    swapped.key_file = "tls/node-2.key".into();
    let e = swapped
        .load(dir.path(), 1)
        .expect_err("another node's certificate");
    assert!(e.contains("names node 2"), "{e}");
    assert!(e.contains("this is node 1"), "{e}");

    // A CA-signed certificate without the node name.
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&tls)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=old",
        "-keyout",
        "old.key",
        "-out",
        "old.csr",
    ]);
    std::fs::write(
        tls.join("old.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "old.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "old.pem",
        "-extfile",
        "old.ext",
    ]);
    let mut old = section;
    old.cert_file = "tls/old.pem".into();
    old.key_file = "tls/old.key".into();
    let e = old.load(dir.path(), 1).expect_err("no node name");
    assert!(e.contains("quorate://node/1"), "{e}");
    assert!(e.contains("no subjectAltName URI"), "{e}");
}
