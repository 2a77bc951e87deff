//! The accept loop: HTTP/1.1 on a listener, with connection caps and graceful stop.
//!
//! A hand-written loop rather than `axum::serve`, for two protections `axum::serve`
//! does not offer: a cap on open connections (beyond it a connection is closed at
//! once, so a flood cannot exhaust file descriptors or memory) and a deadline for the
//! request headers or the TLS handshake (a slowloris client is disconnected). Each
//! connection gets the peer address as `ConnectInfo`, which the API's loopback-only
//! mode and the peer-refusal logs rely on.
//!
//! Stopping is mini-redis's shape: [`spawn_server`] watches a `watch` flag; when it
//! turns true the loop stops accepting, every connection finishes its in-flight
//! request and closes, and the task ends once every connection has (the caller bounds
//! that wait with its drain timeout).
//!
//! TLS is per listener ([`ServerTls`]): the API and the Raft port use different
//! acceptors (server-only TLS vs. mutual TLS), and the Raft port wants to hear about
//! refused handshakes (a peer without a valid client certificate) to count them.
//! When the caller presented a certificate, every request of the connection carries
//! its leaf as a [`ClientCertificate`] extension (the peer port checks which node it
//! names).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The leaf certificate (DER) the caller presented in the TLS handshake, as a
/// request extension on every request of that connection.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Arc<rustls::pki_types::CertificateDer<'static>>);

/// A handshake that failed on a listener: the caller's address and why.
pub type HandshakeRefused = Arc<dyn Fn(std::net::SocketAddr, &str) + Send + Sync>;

/// TLS of one listener.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Called when a handshake fails or times out (the connection is then closed
    /// without reading any HTTP). `None`: log at debug level only.
    pub on_refused: Option<HandshakeRefused>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("on_refused", &self.on_refused.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// TLS with `acceptor`, failed handshakes logged at debug level only.
    pub fn new(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        Self {
            acceptor,
            on_refused: None,
        }
    }

    fn refused(&self, peer: std::net::SocketAddr, why: &str) {
        match &self.on_refused {
            Some(f) => f(peer, why),
            None => tracing::debug!(%peer, why, "TLS handshake failed"),
        }
    }
}

/// Per-listener connection limits (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serve `router` on `listener` until `stop` turns true, then finish in-flight
/// connections (the caller bounds how long that may take).
pub fn spawn_server(
    listener: TcpListener,
    router: axum::Router,
    stop: watch::Receiver<bool>,
    limits: ConnLimits,
    tls: Option<ServerTls>,
) -> JoinHandle<std::io::Result<()>> {
    use tower::Service;

    tokio::spawn(async move {
        let max = limits.max_connections;
        let open = Arc::new(tokio::sync::Semaphore::new(max));
        let mut make = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let mut stop_accepting = stop.clone();
        loop {
            let (stream, peer) = tokio::select! {
                // The watch guard must not live across the select (it is not Send).
                _ = async { let _ = stop_accepting.wait_for(|s| *s).await; } => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max, "connection limit reached; closing");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let Ok(svc) = make.call(peer).await;
            let stop = stop.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_connection(stream, svc, limits, stop, peer).await,
                    Some(tls) => {
                        // The handshake gets the same deadline as the headers.
                        match tokio::time::timeout(
                            limits.header_read_timeout,
                            tls.acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(tls_stream)) => {
                                let cert = tls_stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| ClientCertificate(Arc::new(c.clone().into_owned())));
                                let svc = tower::util::MapRequest::new(
                                    svc,
                                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                                        if let Some(c) = &cert {
                                            req.extensions_mut().insert(c.clone());
                                        }
                                        req
                                    },
                                );
                                serve_connection(tls_stream, svc, limits, stop, peer).await
                            }
                            Ok(Err(e)) => tls.refused(peer, &e.to_string()),
                            Err(_) => tls.refused(peer, "handshake timed out"),
                        }
                    }
                }
                drop(permit);
            });
        }
        drop(listener);
        // Every connection holds a permit until it ends: having them all back means
        // every in-flight request has finished (the caller bounds the wait).
        let _ = open
            .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
            .await;
        Ok(())
    })
}

/// Serve HTTP/1.1 on one connection until it ends; on shutdown, finish the request in
/// flight and close.
async fn serve_connection<I, S>(
    io: I,
    svc: S,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let svc = TowerToHyperService::new(svc);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        // The peer port's streams (`http::peer`) take their connection over.
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
