//! Running a node: config → store → Raft → HTTP, and a clean stop.
//!
//! In the style of mini-redis's `server::run(listener, shutdown)`: the caller decides
//! when to stop by handing in a future ([`shutdown_signal`] in the binary, anything in
//! tests), and [`serve_on`] takes already-bound listeners so binding is separate from
//! serving (tests bind port 0).
//!
//! [`serve_on`] is the one place the layers meet: it reads the secrets once
//! (`ClusterConfig::security`), opens the store, builds the peer client and starts the
//! Raft node over it, then serves the public API, the peer port and (with a
//! `grpc_addr`) Envoy's rate limit service with the same metrics registry.
//!
//! Shutdown, in order:
//! 1. both listeners stop accepting; open connections finish their in-flight request
//!    (hyper's graceful shutdown) for at most `server.drain_timeout_ms`, after which
//!    the rest are dropped;
//! 2. background tasks stop and `Raft::shutdown` stops the Raft core;
//! 3. the store is flushed (every acknowledged append is already durable; this covers
//!    the committed index and anything else still buffered by sled).
//!
//! A fatal Raft error stops the node, and what happens next depends on why (the
//! store's [`Health`](quorate_store::Health)):
//! - **the disk is full** (ENOSPC on an append or a flush): the node stops taking part
//!   at once (Raft, listeners), says so, and [`serve`] waits until a probe write of
//!   [`SPACE_PROBE_BYTES`] succeeds in the data directory, then opens the store again
//!   (which drops the unacknowledged bytes of the failed write) and rejoins: a full
//!   disk is common and temporary, and needs no operator to restart anything. While it
//!   waits its ports are closed, so clients and peers move on at once;
//! - **any other write or fsync error** (EIO...): the page cache may hold data the
//!   disk lost, so the node never writes again in this process. It keeps serving what
//!   needs no Raft — `/readyz` is false, every decision is 503, `quorate_storage_failed`
//!   is 1 — until it is stopped, so the failure is seen rather than restarted into;
//! - **anything else** (a node that must not rejoin, a Raft core failure): the node
//!   stops with an error and the process exits non-zero.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::error::ServerError;
use crate::grpc::{spawn_grpc, GrpcTls, RateLimitGrpc};
use crate::http::api::stream::Streams;
use crate::http::api::{self, ApiConfig, ApiState};
use crate::http::peer;
use crate::http::server::{spawn_server, ConnLimits, ServerTls};
use crate::peer::PeerClient;
use crate::raft::Node;
use crate::security::Security;
use crate::stats::Stats;
use crate::telemetry::Metrics;

/// The listeners of a node.
#[derive(Debug)]
pub struct Listeners {
    /// Public HTTP API (`api_addr`).
    pub api: TcpListener,
    /// Raft RPC and forwarding (`raft_addr`).
    pub raft: TcpListener,
    /// Envoy's rate limit service (`grpc_addr`, optional).
    pub grpc: Option<TcpListener>,
}

impl Listeners {
    /// Bind node `node_id`'s `api_addr` and `raft_addr` from `config`.
    pub async fn bind(config: &ClusterConfig, node_id: u64) -> Result<Self, ServerError> {
        let me = config.node(node_id)?;
        Ok(Self {
            api: bind(&me.api_addr, "api").await?,
            raft: bind(&me.raft_addr, "raft").await?,
            grpc: match &me.grpc_addr {
                Some(addr) => Some(bind(addr, "grpc").await?),
                None => None,
            },
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
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    loop {
        let listeners = Listeners::bind(&config, node_id).await?;
        match serve_on(config.clone(), node_id, listeners, shutdown.clone()).await {
            Err(ServerError::NoSpace(why)) => {
                let dir = config.node_data_dir(node_id);
                tracing::error!(
                    node = node_id,
                    data = %dir.display(),
                    error = %why,
                    "out of disk space: this node stepped down and stopped taking part; it \
                     rejoins by itself once space is freed"
                );
                tokio::select! {
                    () = shutdown.clone() => return Ok(()),
                    () = wait_for_space(&dir) => {}
                }
                tracing::info!(
                    node = node_id,
                    "disk space is available again: reopening the store and rejoining"
                );
            }
            other => return other,
        }
    }
}

/// What must be writable in the data directory before a node that ran out of space
/// starts again: room for a few full batches and a segment's worth of records.
pub const SPACE_PROBE_BYTES: usize = 4 << 20;

/// Resolves once [`SPACE_PROBE_BYTES`] can be written and synced in `dir` (checked
/// every second).
async fn wait_for_space(dir: &std::path::Path) {
    let probe = dir.join(".space-probe");
    loop {
        let path = probe.clone();
        let ok = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let written = std::fs::File::create(&path).and_then(|mut f| {
                f.write_all(&vec![0u8; SPACE_PROBE_BYTES])?;
                f.sync_all()
            });
            let _ = std::fs::remove_file(&path);
            written.is_ok()
        })
        .await
        .unwrap_or(false);
        if ok {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Like [`serve`], on listeners the caller bound.
pub async fn serve_on(
    config: ClusterConfig,
    node_id: u64,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    config.security(node_id)?;
    let storage = open_store(&config, node_id)?;
    serve_with_storage(config, node_id, listeners, storage, shutdown).await
}

/// Like [`serve_on`], on a store the caller opened (tests open it over a simulated
/// disk, `quorate_store::open_with`, to fail a write or an fsync).
pub async fn serve_with_storage(
    config: ClusterConfig,
    node_id: u64,
    listeners: Listeners,
    storage: quorate_store::Storage,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let config = Arc::new(config);
    let security = config.security(node_id)?;
    warn_about_open_access(&security);
    let metrics = Arc::new(Metrics::new());
    let metrics_for_run = metrics.clone();
    let peers = PeerClient::for_node(
        config.raft.connect_timeout_ms.get(),
        &security.peer,
        security.tls.as_ref(),
    )
    .map_err(|e| ServerError::Raft(format!("cannot build the peer HTTP client: {e}")))?
    .with_peer_addrs(config.peer_addrs.clone());
    if !config.peer_addrs.is_empty() {
        tracing::warn!(overrides = ?config.peer_addrs, "QUORATE_PEER_ADDRS: peer traffic is redirected (testing only)");
    }
    let node = Node::start(config.clone(), node_id, storage, peers, metrics.clone()).await?;

    let stats = Arc::new(Stats::new(
        node_id,
        metrics.clone(),
        config.server.stats_interval_ms.get(),
        stats_capacity(config.server.stats_interval_ms.get()),
    ));
    let sampler = tokio::spawn(stats.clone().run());
    let (stop_tx, stop_rx) = watch::channel(false);
    // Decision streams leave the listener's connection count once upgraded, so they
    // get a cap of their own: the same number.
    let streams = Streams::new(config.server.max_connections.get(), stop_rx.clone());
    let api_router = api::router(ApiState {
        backend: node.clone(),
        metrics: metrics.clone(),
        stats,
        config: Arc::new(ApiConfig {
            auth: security.api.clone(),
            node_id,
            default_ttl_ms: config.limits.default_ttl_ms.ms(),
            max_body_bytes: config.server.max_body_bytes.get(),
            request_timeout: config.request_timeout(),
            max_wait_ms: config.limits.max_wait_ms,
        }),
        streams: streams.clone(),
    });
    let peer_router = peer::router(node.clone(), security.peer.clone(), security.tls.is_some());
    let grpc_service = RateLimitGrpc {
        backend: node.clone(),
        auth: security.api.clone(),
        metrics: metrics.clone(),
        request_timeout: config.request_timeout(),
        // Leaked once per process: the metric label values of the configured domains.
        domains: config
            .envoy
            .domains
            .iter()
            .map(|d| &*Box::leak(d.domain.clone().into_boxed_str()))
            .collect(),
    };
    tracing::info!(
        node = node_id,
        cluster = %config.cluster_id,
        api = %local_addr(&listeners.api),
        raft = %local_addr(&listeners.raft),
        grpc = %listeners.grpc.as_ref().map_or("-".to_string(), local_addr),
        data = %config.node_data_dir(node_id).display(),
        "serving"
    );
    let limits = ConnLimits {
        max_connections: config.server.max_connections.get(),
        header_read_timeout: config.server.header_read_timeout_ms.get(),
    };
    // The API: server-only TLS (clients authenticate with tokens). The Raft port:
    // mutual TLS, and a refused handshake (no or a foreign client certificate) is a
    // refused peer request like any other: counted and logged with the address.
    let api_tls = security
        .tls
        .as_ref()
        .map(|t| ServerTls::new(t.api_acceptor.clone()));
    let raft_tls = security.tls.as_ref().map(|t| ServerTls {
        acceptor: t.peer_acceptor.clone(),
        on_refused: Some(Arc::new(move |peer, why: &str| {
            metrics.peer_rejected("tls_handshake");
            tracing::warn!(%peer, reason = "tls_handshake", why, "refused peer connection");
        })),
    });
    // The gRPC port: server-only TLS like the API (Envoy authenticates with a token).
    let grpc_tls = security.tls.as_ref().map(|t| GrpcTls {
        acceptor: t.grpc_acceptor.clone(),
        handshake_timeout: limits.header_read_timeout,
    });
    let servers = Servers {
        api_addr: local_addr(&listeners.api),
        raft_addr: local_addr(&listeners.raft),
        grpc_addr: listeners.grpc.as_ref().map_or(String::new(), local_addr),
        grpc: listeners
            .grpc
            .map(|l| spawn_grpc(l, grpc_service, grpc_tls, stop_rx.clone())),
        api: spawn_server(listeners.api, api_router, stop_rx.clone(), limits, api_tls),
        raft: spawn_server(listeners.raft, peer_router, stop_rx, limits, raft_tls),
        streams,
    };
    let result = servers
        .run_until(
            shutdown,
            &node,
            &metrics_for_run,
            stop_tx,
            config.server.drain_timeout_ms.get(),
        )
        .await;
    sampler.abort();
    // Stop Raft and flush the store.
    node.shutdown().await;
    result
}

/// Samples covering the status page's window (15 minutes), at most 1000.
fn stats_capacity(interval: std::time::Duration) -> usize {
    const WINDOW_MS: u128 = 15 * 60 * 1000;
    let n = WINDOW_MS / interval.as_millis().max(1);
    usize::try_from(n).unwrap_or(1000).clamp(1, 1000)
}

/// Say at startup what is open. (Configurations that would expose a peer link are
/// refused before this, by `ClusterConfig::security`.)
fn warn_about_open_access(security: &Security) {
    if security.api.is_open() {
        tracing::warn!(
            "no [auth] tokens configured (open mode): EVERY route, admin included \
             (limits, policies, tiers, membership), is served without a token to any \
             process on this host that connects from loopback and did not come through a \
             proxy (requests carrying Forwarded, X-Forwarded-For or X-Real-IP are refused); \
             other hosts are refused. Configure [auth] tokens before putting a proxy in \
             front of it or sharing the host"
        );
    }
    match (security.peer.signs(), security.tls.is_some()) {
        (true, true) => {}
        (false, true) => tracing::info!(
            "peers authenticate by mutual TLS only; set auth.cluster_secret_env or \
             auth.cluster_secret_file to also sign every peer request"
        ),
        (true, false) => tracing::info!(
            "peer requests are signed with the cluster secret; every peer link is \
             loopback, so [tls] is not required"
        ),
        (false, false) => tracing::warn!(
            "no auth.cluster_secret and no [tls]: peers are checked by cluster id only, \
             so any process on this host can talk Raft to this node (allowed only \
             because every peer link is loopback)"
        ),
    }
}

fn open_store(config: &ClusterConfig, node_id: u64) -> Result<quorate_store::Storage, ServerError> {
    let dir = config.node_data_dir(node_id);
    let storage_err = |message: String| ServerError::Storage {
        path: dir.clone(),
        message,
    };
    std::fs::create_dir_all(&dir).map_err(|e| storage_err(e.to_string()))?;
    #[cfg(feature = "fault-injection")]
    if std::env::var_os(SIMULATED_DISK_ENV).is_some_and(|v| v == "1") {
        return open_simulated(&dir).map_err(|e| storage_err(e.to_string()));
    }
    // `open` itself waits out the directory lock a store dropped a moment ago (an
    // in-process restart after a full disk) still holds.
    quorate_store::open(&dir).map_err(|e| storage_err(e.to_string()))
}

/// Set to `1` (in a `fault-injection` build) to run the store on the store's
/// simulated disk, which loses power on SIGUSR1.
#[cfg(feature = "fault-injection")]
pub const SIMULATED_DISK_ENV: &str = "QUORATE_SIMULATED_DISK";

/// The store over `quorate_store::vfs::SimFs`, and a SIGUSR1 handler that cuts the
/// power: every write not yet fsync'd is kept, dropped or torn at random (as a real
/// power loss could leave it), the files are rewritten to match, and the process
/// exits at once (code 99). What an acknowledgement promised must survive that.
#[cfg(feature = "fault-injection")]
fn open_simulated(
    dir: &std::path::Path,
) -> Result<quorate_store::Storage, quorate_store::StoreError> {
    use quorate_store::vfs::{SimFs, SimRng};
    let sim = SimFs::new();
    let storage = quorate_store::open_with(dir, Arc::new(sim.clone()))?;
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    tracing::warn!(
        seed,
        "simulated disk: SIGUSR1 cuts the power (fault-injection build)"
    );
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .map_err(|e| quorate_store::StoreError::Task(e.to_string()))?;
    tokio::spawn(async move {
        usr1.recv().await;
        sim.crash();
        let restored = sim.restart(&mut SimRng(seed));
        tracing::warn!(
            seed,
            ?restored,
            "simulated power loss: unsynced writes dropped or torn"
        );
        std::process::exit(99);
    });
    Ok(storage)
}

/// The running servers of a node.
struct Servers {
    api_addr: String,
    raft_addr: String,
    grpc_addr: String,
    api: JoinHandle<std::io::Result<()>>,
    raft: JoinHandle<std::io::Result<()>>,
    grpc: Option<JoinHandle<std::io::Result<()>>>,
    /// Decision streams: the drain waits for them too.
    streams: Streams,
}

impl Servers {
    /// Serve until `shutdown`, a fatal Raft error or a server failure; then stop
    /// accepting and let in-flight requests finish within `drain`.
    async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
        node: &Node,
        metrics: &Metrics,
        stop: watch::Sender<bool>,
        drain: std::time::Duration,
    ) -> Result<(), ServerError> {
        let mut result = Ok(());
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => tracing::info!("shutdown requested"),
            fatal = node.fatal() => match node.storage_health() {
                quorate_store::Health::NoSpace(why) => {
                    result = Err(ServerError::NoSpace(why));
                }
                quorate_store::Health::Failed(why) => {
                    // Never write again (the page cache may lie), but stay visible.
                    metrics.storage_failed.set(1);
                    tracing::error!(
                        error = %why,
                        raft = %fatal,
                        "the store failed a write or fsync: this node no longer takes part \
                         in Raft (readyz false, decisions 503); check the disk, then replace \
                         the node or restart it"
                    );
                    shutdown.await;
                    tracing::info!("shutdown requested");
                }
                quorate_store::Health::Ok => {
                    tracing::error!(error = %fatal, "raft stopped with a fatal error");
                    result = Err(ServerError::Raft(fatal));
                }
            },
            r = &mut self.api => {
                result = Err(server_failed(r, self.api_addr.clone(), "api"));
            }
            r = &mut self.raft => {
                result = Err(server_failed(r, self.raft_addr.clone(), "raft"));
            }
            r = grpc_done(&mut self.grpc) => {
                result = Err(server_failed(r, self.grpc_addr.clone(), "grpc"));
            }
        }
        let _ = stop.send(true);
        let drained = tokio::time::timeout(drain, async {
            if !self.api.is_finished() {
                let _ = (&mut self.api).await;
            }
            if !self.raft.is_finished() {
                let _ = (&mut self.raft).await;
            }
            if let Some(g) = self.grpc.as_mut().filter(|g| !g.is_finished()) {
                let _ = g.await;
            }
            self.streams.drained().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                drain_ms = drain.as_millis() as u64,
                "requests still in flight after the drain timeout; dropping them"
            );
            self.api.abort();
            self.raft.abort();
            if let Some(g) = &self.grpc {
                g.abort();
            }
        }
        result
    }
}

/// The gRPC server's end, or never when there is none.
async fn grpc_done(
    grpc: &mut Option<JoinHandle<std::io::Result<()>>>,
) -> Result<std::io::Result<()>, tokio::task::JoinError> {
    match grpc {
        Some(g) => g.await,
        None => std::future::pending().await,
    }
}

fn local_addr(l: &TcpListener) -> String {
    l.local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
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
