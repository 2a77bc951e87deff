//! The whole cluster loses power at once, under load (issue 21, item 3).
//!
//! Three nodes built with `--features fault-injection` run their stores on the
//! store's simulated disk (`QUORATE_SIMULATED_DISK=1`). Clients acquire, release and
//! change limits; then every node gets SIGUSR1 at the same moment, which is a power
//! loss: each node's writes that were not yet fsync'd are kept, dropped or torn at
//! random, the files are rewritten to match, and the process dies. SIGKILL would not
//! do: the page cache keeps whatever was written, synced or not.
//!
//! After a restart of all three, every acknowledged acquire still holds its slot,
//! every acknowledged release is still released, and every acknowledged limit change
//! is still in force. Unacknowledged operations may have happened or not.
//!
//! `scripts/test.sh` runs it with a `fault-injection` build; a normal build marks it
//! ignored with the command that runs it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Options};
use reqwest::StatusCode;
use serde_json::json;

/// What the clients were told before the power went out.
#[derive(Default)]
struct Acked {
    /// (key, lease) acquires answered 200 and not released.
    held: Vec<(String, String)>,
    /// keys whose only lease was released with a 200.
    released: Vec<String>,
    /// (key, limit) overrides answered 200.
    limits: Vec<(String, u64)>,
}

async fn client(c: Arc<Cluster>, id: u64, acked: Arc<Mutex<Acked>>, stop: Instant) {
    let node = 1 + id % 3;
    let mut n = 0u64;
    while Instant::now() < stop {
        n += 1;
        let key = format!("pl:{id}:{n}");
        let lease = format!("L{id}-{n}");
        let r = c
            .http
            .post(c.url(node, "/v1/slots/acquire"))
            .json(&json!({"keys": [key], "lease_id": lease, "ttl_ms": 600_000}))
            .send()
            .await;
        let Ok(r) = r else { return }; // the power went out
        if r.status() != StatusCode::OK {
            continue;
        }
        if n.is_multiple_of(3) {
            let r = c
                .http
                .post(c.url(node, "/v1/slots/release"))
                .json(&json!({"lease_id": lease}))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == StatusCode::OK => {
                    acked.lock().unwrap().released.push(key);
                }
                Ok(_) => acked.lock().unwrap().held.push((key, lease)),
                Err(_) => return, // unknown: neither promise was made
            }
        } else {
            acked.lock().unwrap().held.push((key, lease));
        }
        if n.is_multiple_of(5) {
            let lkey = format!("pl:limit:{id}:{n}");
            let limit = 10 + n;
            let r = c
                .http
                .put(c.url(node, &format!("/v1/limits/{lkey}")))
                .json(&json!({"limit": limit}))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status() == StatusCode::OK {
                    acked.lock().unwrap().limits.push((lkey, limit));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs a binary built with --features fault-injection (scripts/test.sh runs it)"
)]
async fn acknowledged_writes_survive_a_whole_cluster_power_loss() {
    let mut options = Options::new(3);
    options
        .env
        .push(("QUORATE_SIMULATED_DISK".into(), "1".into()));
    let c = Cluster::start_with(options).await;
    let (mut cluster, acked) = {
        let c = Arc::new(c);
        let acked = Arc::new(Mutex::new(Acked::default()));
        let load_until = Instant::now() + Duration::from_secs(20);
        let clients: Vec<_> = (0..6)
            .map(|i| tokio::spawn(client(c.clone(), i, acked.clone(), load_until)))
            .collect();
        // Let the load build up, then cut the power to every node at once.
        let deadline = Instant::now() + Duration::from_secs(15);
        while acked.lock().unwrap().held.len() < 150 {
            assert!(Instant::now() < deadline, "the load never got going");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pids: Vec<i32> = c
            .ids()
            .iter()
            .filter_map(|&id| c.pid(id))
            .map(|p| p as i32)
            .collect();
        for pid in &pids {
            let pid = rustix::process::Pid::from_raw(*pid).expect("pid");
            rustix::process::kill_process(pid, rustix::process::Signal::USR1).expect("SIGUSR1");
        }
        for h in clients {
            h.await.expect("client");
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        let c = Arc::into_inner(c).expect("clients are done");
        (c, acked)
    };
    for id in cluster.ids() {
        let status = cluster.wait_exit(id).await;
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(99),
            "node {id} did not lose power as planned\n{}",
            cluster.tail(id, 20)
        );
    }
    println!(
        "power lost after {} acquires held, {} releases and {} limit changes were acknowledged",
        acked.held.len(),
        acked.released.len(),
        acked.limits.len()
    );

    // Power back: every node starts again from what its disk kept.
    for id in cluster.ids() {
        cluster.spawn(id);
    }
    cluster.wait_all_ready().await;
    let leader = cluster.leader_id().await;
    for (key, lease) in &acked.held {
        let (s, b) = cluster.get(leader, &format!("/v1/slots/{key}")).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            b["used"],
            json!(1),
            "acknowledged lease {lease} on {key} was lost in the power loss: {b}"
        );
    }
    for key in &acked.released {
        let (s, b) = cluster.get(leader, &format!("/v1/slots/{key}")).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            b["used"],
            json!(0),
            "acknowledged release on {key} came undone in the power loss: {b}"
        );
    }
    for (key, limit) in &acked.limits {
        let (s, b) = cluster.get(leader, &format!("/v1/limits/{key}")).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            b["limit"],
            json!(limit),
            "acknowledged limit change on {key} was lost in the power loss: {b}"
        );
    }
    let logs: String = cluster.ids().iter().map(|&id| cluster.logs(id)).collect();
    assert!(
        logs.contains("simulated power loss"),
        "no node reports the power loss"
    );
    cluster.wait_converged().await;
}
