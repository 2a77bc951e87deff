//! Shared by the tests that serve real nodes on loopback (`hardening`, `peer_auth`,
//! `tls`): fresh listeners, a node served in a task until it is told to stop,
//! waiting for `/readyz`, and the throwaway CA of `scripts/make_test_ca.sh`.

// Every test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use quorate_server::run::{serve_on, Listeners};
use quorate_server::security::tls::TlsSection;
use quorate_server::ClusterConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A node's two listeners on fresh loopback ports, and their addresses.
pub struct Bound {
    pub listeners: Listeners,
    pub api_addr: String,
    pub raft_addr: String,
}

pub async fn bind() -> Bound {
    let api = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let raft = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    Bound {
        api_addr: api.local_addr().expect("addr").to_string(),
        raft_addr: raft.local_addr().expect("addr").to_string(),
        listeners: Listeners {
            api,
            raft,
            grpc: None,
        },
    }
}

/// A node served by `serve_on` in its own task until [`Running::stop`].
pub struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// How long a stopped node may take to drain and shut down.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(20);

/// Serve node `id` of `config` on `listeners`.
pub fn serve(config: ClusterConfig, id: u64, listeners: Listeners) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        serve_on(config, id, listeners, shutdown)
            .await
            .expect("serve");
    });
    Running { stop, task }
}

impl Running {
    /// Tell the node to stop and wait until it has.
    pub async fn stop(self) {
        stop_all(vec![self]).await;
    }
}

/// Tell every node to stop first, then wait for each: they shut down together, as a
/// cluster would, instead of one after the other.
pub async fn stop_all(nodes: Vec<Running>) {
    let mut tasks = Vec::new();
    for node in nodes {
        let _ = node.stop.send(());
        tasks.push(node.task);
    }
    for task in tasks {
        tokio::time::timeout(SHUTDOWN_WITHIN, task)
            .await
            .expect("shut down")
            .expect("join");
    }
}

/// Poll `<base_url>/readyz` with `http` until it succeeds; panic after `deadline`.
pub async fn wait_ready(http: &reqwest::Client, base_url: &str, deadline: Instant) {
    loop {
        let ok = http
            .get(format!("{base_url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{base_url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh CA, and a certificate it signed for each of nodes 1 to 3, in `dir`
/// (`ca.pem`, `node-<id>.pem`, `node-<id>.key`); needs openssl.
pub fn make_test_ca(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make_test_ca.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run make_test_ca.sh (needs openssl)");
    assert!(status.success());
}

/// `[tls]` pointing at a [`make_test_ca`] made in `<config dir>/tls`.
pub fn test_ca_tls() -> TlsSection {
    TlsSection {
        cert_file: "tls/node-{id}.pem".into(),
        key_file: "tls/node-{id}.key".into(),
        ca_file: "tls/ca.pem".into(),
    }
}
