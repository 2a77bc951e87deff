//! The gRPC listener: Envoy's external rate limit service on a node's `grpc_addr`.
//!
//! A layer beside `http`: it sits above the Raft node and talks to it only through
//! the [`crate::backend::Backend`] seam, so followers forward exactly as the HTTP API
//! does. [`spawn_grpc`] serves [`ratelimit::RateLimitGrpc`] (the only service) on a
//! listener the caller bound, until the stop signal that also stops the HTTP
//! listeners; in-flight calls then finish (tonic's graceful shutdown, bounded by the
//! node's drain timeout in `run.rs`).
//!
//! Plain HTTP/2 (h2c), as Envoy's `grpc_service` clusters speak by default. With
//! `[tls]` configured a node refuses to start with a `grpc_addr` (see `run.rs`):
//! TLS on this listener is not built yet, and a limiter must not be silently
//! reachable in clear text beside TLS listeners.

use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

pub mod ratelimit;

pub use ratelimit::RateLimitGrpc;

/// Largest accepted request message (Envoy's are a few hundred bytes).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Serve `svc` on `listener` until `stop` turns true.
pub fn spawn_grpc(
    listener: TcpListener,
    svc: RateLimitGrpc,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<std::io::Result<()>> {
    // A call never runs longer than the node lets a decision take, plus slack for
    // the answer to travel; the service itself answers UNAVAILABLE at the timeout.
    let timeout = svc.request_timeout + Duration::from_secs(1);
    let service = RateLimitServiceServer::new(svc).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        Server::builder()
            .timeout(timeout)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .map_err(std::io::Error::other)
    })
}
