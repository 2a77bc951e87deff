//! The gRPC listener: Envoy's external rate limit service on a node's `grpc_addr`.
//!
//! A layer beside `http`: it sits above the Raft node and talks to it only through
//! the [`crate::backend::Backend`] seam, so followers forward exactly as the HTTP API
//! does. [`spawn_grpc`] serves [`ratelimit::RateLimitGrpc`] (the only service) on a
//! listener the caller bound, until the stop signal that also stops the HTTP
//! listeners; in-flight calls then finish (tonic's graceful shutdown, bounded by the
//! node's drain timeout in `run.rs`).
//!
//! Without `[tls]`: plain HTTP/2 (h2c), as Envoy's `grpc_service` clusters speak by
//! default. With `[tls]`: server-only TLS with the node's certificate and ALPN `h2`
//! (Envoy: a `transport_socket` with the cluster CA as `validation_context`); the
//! handshake must finish within `server.header_read_timeout_ms`, and a failed one
//! closes that connection only.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tonic::transport::Server;

pub mod ratelimit;

pub use ratelimit::RateLimitGrpc;

/// Largest accepted request message (Envoy's are a few hundred bytes).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// TLS for the listener: the acceptor and how long a handshake may take.
#[derive(Clone)]
pub struct GrpcTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcTls")
    }
}

/// Serve `svc` on `listener` (TLS when `tls` is given) until `stop` turns true.
pub fn spawn_grpc(
    listener: TcpListener,
    svc: RateLimitGrpc,
    tls: Option<GrpcTls>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<std::io::Result<()>> {
    // A call never runs longer than the node lets a decision take, plus slack for
    // the answer to travel; the service itself answers UNAVAILABLE at the timeout.
    let timeout = svc.request_timeout + Duration::from_secs(1);
    let service = RateLimitServiceServer::new(svc).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let router = Server::builder().timeout(timeout).add_service(service);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::spawn(async move {
        let served = match tls {
            None => {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, stopped).await
            }
            Some(tls) => {
                let incoming = tls_incoming(listener, tls);
                router.serve_with_incoming_shutdown(incoming, stopped).await
            }
        };
        served.map_err(std::io::Error::other)
    })
}

/// Accept and handshake in a task of their own (a slow or failed handshake holds up
/// no other connection); finished connections flow to the server through a channel.
fn tls_incoming(
    listener: TcpListener,
    tls: GrpcTls,
) -> impl futures::Stream<Item = std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
    tokio::spawn(async move {
        loop {
            // The server dropped the stream (it stopped): stop accepting, free the port.
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "grpc accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (tls, sender) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let local = tcp.local_addr().ok();
                let handshake =
                    tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(tcp));
                match handshake.await {
                    Ok(Ok(inner)) => {
                        let _ = sender
                            .send(TlsConn {
                                inner,
                                local,
                                remote: Some(remote),
                            })
                            .await;
                    }
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "grpc TLS handshake failed"),
                    Err(_) => tracing::info!(%remote, "grpc TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) },
    )
}

/// A TLS connection as tonic's server takes it: tonic reads the peer address of its
/// own TLS types only (behind features not enabled here), so this carries it.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
}

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.local,
            remote_addr: self.remote,
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
