//! What a hostile client can make a node hold is bounded: a client that trickles its
//! headers (slowloris) is disconnected after `header_read_timeout_ms`, and connections
//! beyond `max_connections` are closed at once, while well-behaved requests are still
//! served. Runs a real single-node server (`serve_on`) on loopback.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use std::num::NonZeroUsize;

use quorate_server::config::{Millis, NonZeroMillis};
use quorate_server::ClusterConfig;
use support::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(dir: &Path) -> (String, Running) {
    let bound = support::bind().await;
    let mut config =
        ClusterConfig::single_node("hard", &bound.api_addr, &bound.raft_addr, &dir.join("data"));
    config.server.max_connections = NonZeroUsize::new(3).expect("positive");
    config.server.header_read_timeout_ms = NonZeroMillis::new(300).expect("positive");
    config.server.drain_timeout_ms = Millis::new(1000);
    (bound.api_addr, support::serve(config, 1, bound.listeners))
}

async fn healthz(addr: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Wait until the peer closes `s` (read returns 0 or an error); returns how long it took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue, // e.g. a 408 response before the close
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_connections_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, node) = start(dir.path()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(&addr).await != Some(200) {
        assert!(Instant::now() < deadline, "node never served /healthz");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Slowloris: half a request line, then nothing. Cut off after ~300 ms.
    let mut slow = TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let took = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(
        took.is_some(),
        "a client trickling headers kept its connection"
    );

    // Three idle connections fill the cap (each is cut after the header timeout, so
    // open them and probe at once); a fourth is closed immediately.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    let took = closed_within(&mut extra, Duration::from_secs(5))
        .await
        .expect("over-cap connection closed");
    assert!(
        took < Duration::from_millis(250),
        "closed by the cap, not the header timeout: {took:?}"
    );
    drop(held);
    // Once they are gone, normal service resumes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while healthz(&addr).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "service did not resume after the flood"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    node.stop().await;
}
