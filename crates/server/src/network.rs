//! Node-to-node HTTP client: openraft's `RaftNetwork` plus forwarding and probes.
//!
//! Every request a node makes to a peer goes through one [`PeerClient`], which wraps
//! one `reqwest::Client`: one connection pool with keep-alive for all peers, so a
//! heartbeat every 100 ms does not cost a TCP handshake, plus a connect timeout so a
//! dead peer is noticed quickly. Each request also carries its own total timeout
//! (openraft's per-RPC TTL, or the caller's remaining deadline).
//!
//! Bodies are bincode (see [`crate::raft_rpc`] for the codec and the endpoints).
//!
//! Every request names its target peer by id; the address comes from the peer's
//! `raft_addr` unless `QUORATE_PEER_ADDRS` overrides it for that id (used by the chaos
//! tests to put a fault-injecting proxy on each directed link; see
//! [`PeerClient::with_peer_addrs`] and `config.rs`).
//!
//! Errors are mapped so that openraft reacts the way the failure deserves:
//! - could not connect → [`Unreachable`]: openraft backs off (our [`RaftNetwork::backoff`])
//!   instead of hammering a dead node every heartbeat;
//! - no answer within the TTL → [`RPCError::Timeout`];
//! - the peer answered with a Raft error → [`RPCError::RemoteError`] (e.g. a higher vote);
//! - anything else (reset connection, undecodable body, 4xx/5xx) → [`NetworkError`].

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use quorate_store::{NodeInfo, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft_rpc::{self, paths, TIMEOUT_HEADER};

/// Why a request to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// No connection could be made: the request was certainly not delivered.
    Connect(String),
    /// No complete answer within the timeout: the request may have been processed.
    Timeout,
    /// The peer answered with a non-2xx status.
    Status(u16, String),
    /// The connection broke, or the body could not be encoded or decoded.
    Transport(String),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Connect(m) => write!(f, "cannot connect: {m}"),
            PeerError::Timeout => f.write_str("timed out"),
            PeerError::Status(s, m) => write!(f, "HTTP {s}: {m}"),
            PeerError::Transport(m) => write!(f, "transport error: {m}"),
        }
    }
}

impl StdError for PeerError {}

/// An error and its sources on one line (reqwest's own message is terse).
fn chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

impl PeerError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            PeerError::Timeout
        } else if e.is_connect() {
            PeerError::Connect(chain(&e))
        } else {
            PeerError::Transport(chain(&e))
        }
    }
}

/// The one HTTP client of a node for talking to its peers. Cheap to clone (clones
/// share the connection pool).
///
/// Every request names the peer it is for, so the one place that turns a peer into an
/// address is here: normally the peer's `raft_addr`, unless `QUORATE_PEER_ADDRS`
/// overrides it (see [`PeerClient::with_peer_addrs`]).
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: reqwest::Client,
    /// Peer id → address used instead of its `raft_addr` (`QUORATE_PEER_ADDRS`).
    peer_addrs: Arc<BTreeMap<u64, String>>,
    /// `https` when `[tls]` is configured (peers are then verified against its CA).
    scheme: &'static str,
}

impl PeerClient {
    /// `headers` go on every request (cluster id and secret, see `auth.rs`).
    /// With `tls_ca` (PEM), peers are called over https and must present a
    /// certificate signed by that CA.
    pub fn new(
        connect_timeout: Duration,
        headers: reqwest::header::HeaderMap,
        tls_ca: Option<&[u8]>,
    ) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder();
        let scheme = match tls_ca {
            Some(pem) => {
                builder = builder
                    .use_rustls_tls()
                    .add_root_certificate(reqwest::Certificate::from_pem(pem)?);
                "https"
            }
            None => "http",
        };
        let http = builder
            .default_headers(headers)
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            // Peers are addressed directly; an HTTP(S)_PROXY in the environment must
            // not capture node-to-node traffic.
            .no_proxy()
            .build()?;
        Ok(Self {
            http,
            peer_addrs: Arc::default(),
            scheme,
        })
    }

    /// Send everything for peer `id` to `peer_addrs[id]` instead of the address the
    /// caller names: Raft RPCs, forwarding and probes alike. This is how the chaos
    /// tests route a node's outgoing peer traffic through a fault-injecting proxy per
    /// directed link (`ClusterConfig::peer_addrs`, from `QUORATE_PEER_ADDRS`).
    pub fn with_peer_addrs(mut self, peer_addrs: BTreeMap<u64, String>) -> Self {
        self.peer_addrs = Arc::new(peer_addrs);
        self
    }

    /// Where requests for peer `id`, normally at `addr`, actually go.
    pub fn addr_of<'a>(&'a self, id: u64, addr: &'a str) -> &'a str {
        self.peer_addrs.get(&id).map_or(addr, String::as_str)
    }

    /// POST `body` to `http://<addr><path>` of peer `peer` (at `addr` unless
    /// overridden) and return the response body. The request carries `timeout` in
    /// [`TIMEOUT_HEADER`] so the peer can stop working on it when the caller has given
    /// up.
    pub async fn post(
        &self,
        peer: u64,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let addr = self.addr_of(peer, addr);
        let req = self
            .http
            .post(format!("{}://{addr}{path}", self.scheme))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(TIMEOUT_HEADER, timeout.as_millis().to_string())
            .timeout(timeout)
            .body(body);
        Self::finish(req).await
    }

    /// GET `http://<addr><path>` of peer `peer` (at `addr` unless overridden).
    pub async fn get(
        &self,
        peer: u64,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let addr = self.addr_of(peer, addr);
        let req = self
            .http
            .get(format!("{}://{addr}{path}", self.scheme))
            .timeout(timeout);
        Self::finish(req).await
    }

    async fn finish(req: reqwest::RequestBuilder) -> Result<Bytes, PeerError> {
        let resp = req.send().await.map_err(PeerError::from_reqwest)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(PeerError::from_reqwest)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(PeerError::Status(status.as_u16(), text));
        }
        Ok(bytes)
    }
}

/// openraft's connection factory: one [`PeerConnection`] per target, all sharing the
/// node's [`PeerClient`].
#[derive(Clone, Debug)]
pub struct Network {
    id: u64,
    client: PeerClient,
}

impl Network {
    pub fn new(id: u64, client: PeerClient) -> Self {
        Self { id, client }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerConnection {
        PeerConnection {
            id: self.id,
            target,
            node: node.clone(),
            client: self.client.clone(),
        }
    }
}

/// Raft RPCs from this node to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    id: u64,
    target: u64,
    node: NodeInfo,
    client: PeerClient,
}

type RpcResult<T, E> = Result<T, RPCError<u64, NodeInfo, RaftError<u64, E>>>;

fn network_error<E: StdError>(msg: impl ToString) -> RPCError<u64, NodeInfo, E> {
    RPCError::Network(NetworkError::from(AnyError::error(msg)))
}

impl PeerConnection {
    /// One RPC: encode, POST, decode `Result<Resp, RaftError<E>>`, map errors.
    async fn rpc<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: StdError + DeserializeOwned,
    {
        let body = raft_rpc::encode(req).map_err(|e| network_error(format!("encode: {e}")))?;
        let ttl = option.hard_ttl();
        let bytes = self
            .client
            .post(self.target, &self.node.raft_addr, path, body, ttl)
            .await
            .map_err(|e| match e {
                PeerError::Connect(_) => RPCError::Unreachable(Unreachable::new(&e)),
                PeerError::Timeout => RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout: ttl,
                }),
                // The peer is up but shutting down or overloaded: back off.
                PeerError::Status(503, _) => RPCError::Unreachable(Unreachable::new(&e)),
                PeerError::Status(..) | PeerError::Transport(_) => {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let res: Result<Resp, RaftError<u64, E>> = raft_rpc::decode(&bytes)
            .map_err(|e| network_error(format!("decode {action} response: {e}")))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    #[tracing::instrument(level = "trace", skip_all, fields(target = self.target))]
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.rpc(RPCTypes::AppendEntries, paths::APPEND, &req, &option)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target))]
    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.rpc(RPCTypes::InstallSnapshot, paths::SNAPSHOT, &req, &option)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target))]
    async fn vote(
        &mut self,
        req: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.rpc(RPCTypes::Vote, paths::VOTE, &req, &option).await
    }

    /// After an [`Unreachable`] error: 100 ms, doubling to 1 s, reset by the next
    /// success. Short enough that a restarted peer is caught up within a second,
    /// long enough that a dead one does not fill the log.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            (0..).map(|i: u32| {
                Duration::from_millis(100u64 << i.min(4)).min(Duration::from_secs(1))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn peer_addrs_override_only_the_named_peers() {
        let client = PeerClient::new(Duration::from_millis(100), Default::default(), None)
            .unwrap()
            .with_peer_addrs(BTreeMap::from([(2, "127.0.0.1:41002".to_string())]));
        assert_eq!(client.addr_of(2, "10.0.0.2:7202"), "127.0.0.1:41002");
        assert_eq!(client.addr_of(3, "10.0.0.3:7203"), "10.0.0.3:7203");
    }

    /// A request for an overridden peer reaches the override address, not the
    /// peer's own (unroutable here) address.
    #[tokio::test]
    async fn requests_for_an_overridden_peer_go_to_the_override() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nproxied")
                .await
                .unwrap();
            head
        });
        let client = PeerClient::new(Duration::from_millis(500), Default::default(), None)
            .unwrap()
            .with_peer_addrs(BTreeMap::from([(7, proxy)]));
        // Port 1 on loopback: nothing listens there, so only the override can answer.
        let body = client
            .get(7, "127.0.0.1:1", paths::PROBE, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(&body[..], b"proxied");
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /raft/probe "), "{head}");
    }
}
