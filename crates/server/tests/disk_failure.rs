//! A disk that fails an fsync (EIO) stops the node's part in Raft for good, visibly
//! (issue 21, item 4). After a failed fsync the page cache may hold data the disk
//! lost ("fsyncgate"), so the node must never write, retry or acknowledge again —
//! but it must not vanish either: it stays up saying it is not ready, answers every
//! decision with 503, and sets `quorate_storage_failed`. Before, the process exited
//! on the error.
//!
//! A real single node (`serve_with_storage` on loopback) whose store runs on the
//! store's simulated disk (`quorate_store::vfs::SimFs`), which fails the next fsync.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_server::run::serve_with_storage;
use quorate_server::ClusterConfig;
use quorate_store::vfs::{Op, SimFs};
use quorate_store::Health;
use serde_json::json;

const EIO: i32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_error_stops_raft_for_good_and_the_node_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bound = support::bind().await;
    let config = ClusterConfig::single_node(
        "eio",
        &bound.api_addr,
        &bound.raft_addr,
        &dir.path().join("data"),
    );
    let data = config.node_data_dir(1);
    std::fs::create_dir_all(&data).expect("data dir");
    let sim = SimFs::new();
    let storage = quorate_store::open_with(&data, Arc::new(sim.clone())).expect("open store");
    let log = storage.log.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_with_storage(
        config,
        1,
        bound.listeners,
        storage,
        async {
            let _ = stopped.await;
        },
    ));
    let base = format!("http://{}", bound.api_addr);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    support::wait_ready(&http, &base, Instant::now() + Duration::from_secs(30)).await;
    let acquire = |lease: &'static str| {
        http.post(format!("{base}/v1/slots/acquire"))
            .json(&json!({"keys": ["eio:k"], "lease_id": lease, "ttl_ms": 60_000}))
            .send()
    };
    let r = acquire("before").await.expect("acquire");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    // The next fsync of the log fails.
    sim.fail_nth(Op::Sync, sim.count(Op::Sync) + 1, EIO);
    let r = acquire("during").await.expect("acquire");
    assert_eq!(
        r.status(),
        503,
        "a write whose fsync failed was answered {}: {:?}",
        r.status(),
        r.text().await
    );

    // Raft stops for good; the process (here, the task) keeps serving.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        if metrics.contains("quorate_storage_failed 1") {
            break;
        }
        assert!(!task.is_finished(), "the node stopped serving after EIO");
        assert!(
            Instant::now() < deadline,
            "quorate_storage_failed never set"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(log.health(), Health::Failed(_)),
        "{:?}",
        log.health()
    );
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        503,
        "a node whose disk failed says it is ready"
    );
    for lease in ["after-1", "after-2"] {
        let r = acquire(lease).await.expect("acquire");
        assert_eq!(r.status(), 503, "{:?}", r.text().await);
    }
    assert!(!task.is_finished(), "the node stopped serving after EIO");

    // It stops when told to, cleanly.
    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("stopped")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
}
