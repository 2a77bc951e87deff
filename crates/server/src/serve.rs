//! Running a node: open the store, start Raft, serve both ports, stop cleanly.
//!
//! In the style of mini-redis's `server::run(listener, shutdown)`: the caller decides
//! when to stop by handing in a future ([`shutdown_signal`] in the binary, anything in
//! tests), and [`serve_on`] takes already-bound listeners so the binding is separate
//! from the serving.
//!
//! Shutdown, in order:
//! 1. both listeners stop accepting; open connections finish their in-flight request
//!    (hyper's graceful shutdown) for at most `server.drain_timeout_ms`, after which
//!    the rest are dropped;
//! 2. background tasks stop and `Raft::shutdown` stops the Raft core;
//! 3. the store is flushed (every acknowledged append is already durable; this covers
//!    the committed index and anything else still buffered by sled).
//!
//! A fatal Raft error (the store failed) also stops the node, with an error, so the
//! process exits non-zero instead of answering 503 forever.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState};
use crate::config::ClusterConfig;
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::raft_rpc;

/// The two listeners of a node.
#[derive(Debug)]
pub struct Listeners {
    /// Public HTTP API (`api_addr`).
    pub api: TcpListener,
    /// Raft RPC and forwarding (`raft_addr`).
    pub raft: TcpListener,
}

impl Listeners {
    /// Bind node `node_id`'s `api_addr` and `raft_addr` from `config`.
    pub async fn bind(config: &ClusterConfig, node_id: u64) -> Result<Self, ServerError> {
        let me = config.node(node_id)?;
        Ok(Self {
            api: bind(&me.api_addr, "api").await?,
            raft: bind(&me.raft_addr, "raft").await?,
        })
    }
}

async fn bind(addr: &str, what: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            what,
            source,
        })
}

/// Run node `node_id` of `config` until `shutdown` resolves.
pub async fn serve(
    config: ClusterConfig,
    node_id: u64,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    config.node(node_id)?;
    let listeners = Listeners::bind(&config, node_id).await?;
    serve_on(config, node_id, listeners, shutdown).await
}

/// Like [`serve`], on listeners the caller bound.
pub async fn serve_on(
    config: ClusterConfig,
    node_id: u64,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let dir = config.node_data_dir(node_id);
    std::fs::create_dir_all(&dir).map_err(|e| ServerError::Storage {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    let storage = quorate_store::open(&dir).map_err(|e| ServerError::Storage {
        path: dir.clone(),
        message: e.to_string(),
    })?;

    let config = Arc::new(config);
    let (api_auth, peer_auth) = config.auth()?;
    let tls = config.tls()?.map(|t| t.acceptor);
    if api_auth.is_open() {
        tracing::warn!(
            "no [auth] tokens configured: the API serves loopback callers only; \
             configure tokens to serve other hosts"
        );
    }
    if peer_auth.secret.is_none() {
        tracing::warn!(
            "no auth.cluster_secret configured: peers are checked by cluster id only; \
             anyone who can reach the Raft port can talk Raft to this node"
        );
    }
    let node = Node::start(config.clone(), node_id, storage).await?;
    let mut api_config = config.api_config(node_id);
    api_config.auth = api_auth;
    let api_router = api::router(ApiState {
        backend: node.clone(),
        metrics: Arc::new(Metrics::new()),
        config: api_config,
    });
    let rpc_router = raft_rpc::router(node.clone());

    let api_addr = local_addr(&listeners.api);
    let raft_addr = local_addr(&listeners.raft);
    tracing::info!(
        node = node_id,
        cluster = %config.cluster_id,
        api = %api_addr,
        raft = %raft_addr,
        data = %dir.display(),
        "serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut api_task = spawn_server(
        listeners.api,
        api_router,
        stop_rx.clone(),
        ConnLimits::from_config(&config),
        tls.clone(),
    );
    let mut rpc_task = spawn_server(
        listeners.raft,
        rpc_router,
        stop_rx,
        ConnLimits::from_config(&config),
        tls,
    );

    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested"),
        fatal = node.fatal() => {
            tracing::error!(error = %fatal, "raft stopped with a fatal error");
            result = Err(ServerError::Raft(fatal));
        }
        r = &mut api_task => {
            result = Err(server_failed(r, api_addr.clone(), "api"));
        }
        r = &mut rpc_task => {
            result = Err(server_failed(r, raft_addr.clone(), "raft"));
        }
    }

    // 1. Stop accepting; let in-flight requests finish, within the drain timeout.
    let _ = stop_tx.send(true);
    let drain = Duration::from_millis(config.server.drain_timeout_ms);
    let drained = tokio::time::timeout(drain, async {
        if !api_task.is_finished() {
            let _ = (&mut api_task).await;
        }
        if !rpc_task.is_finished() {
            let _ = (&mut rpc_task).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "requests still in flight after the drain timeout; dropping them"
        );
        api_task.abort();
        rpc_task.abort();
    }

    // 2. and 3. Stop Raft and flush the store.
    node.shutdown().await;
    result
}

fn local_addr(l: &TcpListener) -> String {
    l.local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Per-listener connection limits (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl ConnLimits {
    pub fn from_config(config: &ClusterConfig) -> Self {
        Self {
            max_connections: config.server.max_connections,
            header_read_timeout: Duration::from_millis(config.server.header_read_timeout_ms),
        }
    }
}

/// Serve `router` on `listener` until `stop` turns true, then finish in-flight
/// connections (the caller bounds how long that may take).
///
/// A hand-written accept loop rather than `axum::serve`, for two protections that
/// `axum::serve` does not offer: a cap on open connections (beyond it a connection is
/// closed at once, so a flood cannot exhaust file descriptors or memory) and a
/// deadline for the request headers (a slowloris client that trickles headers is
/// disconnected). Each connection gets the peer address as `ConnectInfo`, which the
/// API's loopback-only mode and the peer-refusal logs rely on.
fn spawn_server(
    listener: TcpListener,
    router: axum::Router,
    stop: watch::Receiver<bool>,
    limits: ConnLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
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
                    Some(acceptor) => {
                        // The handshake gets the same deadline as the headers.
                        match tokio::time::timeout(
                            limits.header_read_timeout,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(tls_stream)) => {
                                serve_connection(tls_stream, svc, limits, stop, peer).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
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
        .serve_connection(TokioIo::new(io), svc);
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

fn server_failed(
    r: Result<std::io::Result<()>, tokio::task::JoinError>,
    addr: String,
    what: &'static str,
) -> ServerError {
    let source = match r {
        Ok(Ok(())) => std::io::Error::other("stopped unexpectedly"),
        Ok(Err(e)) => e,
        Err(e) => std::io::Error::other(e.to_string()),
    };
    tracing::error!(%addr, what, error = %source, "server failed");
    ServerError::Serve { addr, what, source }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
