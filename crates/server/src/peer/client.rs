//! The node-to-node HTTP client: one pooled client for Raft RPC, forwarding and probes.
//!
//! Every request a node makes to a peer goes through one [`PeerClient`], which wraps
//! one `reqwest::Client`: one connection pool with keep-alive for all peers, so a
//! heartbeat every 100 ms does not cost a TCP handshake, plus a connect timeout so a
//! dead peer is noticed quickly. Each request also carries its own total timeout
//! (openraft's per-RPC TTL, or the caller's remaining deadline).
//!
//! Bodies are bincode (see [`super::protocol`] for the codec and the endpoints).
//!
//! Authentication rides on every request: the cluster id header, and with a cluster
//! secret an HMAC signature of the request ([`PeerAuth::sign`], one fresh nonce per
//! request, so a retry is a new request and never looks like a replay). Under `[tls]`
//! the client calls https, trusts only the cluster CA, presents the node's own
//! certificate (the Raft port requires it: mutual TLS) and accepts a peer only if its
//! certificate names that peer (`security::tls`). That check needs to know which peer
//! a connection is for, so under `[tls]` there is one pooled `reqwest::Client` per
//! peer, made on first use. See [`PeerClient::for_node`].
//!
//! Every request names its target peer by id; the address comes from the peer's
//! `raft_addr` unless `QUORATE_PEER_ADDRS` overrides it for that id (used by the chaos
//! tests to put a fault-injecting proxy on each directed link; see
//! [`PeerClient::with_peer_addrs`] and `config.rs`).
//!
//! Failures are typed ([`PeerError`]) by what they say about delivery: a connect
//! error means the request was certainly not delivered, a timeout means it may have
//! been processed. `raft_network` and the forwarding code map them from there.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;

use super::protocol::{AUTH_HEADER, STREAM_PROTOCOL, TIMEOUT_HEADER};
use crate::security::{PeerAuth, Tls};

/// Why a request to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made: the request was certainly not delivered.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No complete answer within the timeout: the request may have been processed.
    #[error("timed out")]
    Timeout,
    /// The peer answered with a non-2xx status.
    #[error("HTTP {0}: {1}")]
    Status(u16, String),
    /// The connection broke, or the body could not be encoded or decoded.
    #[error("transport error: {0}")]
    Transport(String),
}

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
    /// Under `[tls]` with this node's identity: one client per peer, each accepting
    /// only that peer's certificate (built on first use from `tls`).
    per_peer: Option<Arc<PerPeer>>,
    /// Peer id → address used instead of its `raft_addr` (`QUORATE_PEER_ADDRS`).
    peer_addrs: Arc<BTreeMap<u64, String>>,
    /// `https` when `[tls]` is configured (peers are then verified against its CA).
    scheme: &'static str,
    /// Signs each request when it holds a cluster secret.
    auth: Option<Arc<PeerAuth>>,
}

/// What builds, and caches, the per-peer clients of a node under `[tls]`.
#[derive(Debug)]
struct PerPeer {
    tls: Tls,
    connect_timeout: Duration,
    headers: reqwest::header::HeaderMap,
    clients: Mutex<BTreeMap<u64, reqwest::Client>>,
}

impl PerPeer {
    fn client(&self, peer: u64) -> Result<reqwest::Client, PeerError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&peer) {
            return Ok(c.clone());
        }
        let config = self
            .tls
            .peer_client_config(peer)
            .map_err(PeerError::Connect)?;
        let client = PeerClient::configure(
            reqwest::Client::builder().use_preconfigured_tls(config),
            self.connect_timeout,
            self.headers.clone(),
        )
        .build()
        .map_err(|e| PeerError::Connect(chain(&e)))?;
        clients.insert(peer, client.clone());
        Ok(client)
    }
}

impl PeerClient {
    /// A node's peer client: the cluster id on every request, each request signed
    /// when `auth` holds a secret, and under `tls` https trusting only the cluster
    /// CA, presenting this node's certificate.
    pub fn for_node(
        connect_timeout: Duration,
        auth: &PeerAuth,
        tls: Option<&Tls>,
    ) -> Result<Self, reqwest::Error> {
        let headers = auth.outgoing_headers();
        let mut client = Self::new(
            connect_timeout,
            headers.clone(),
            tls.map(|t| t.ca_pem.as_slice()),
        )?;
        client.per_peer = tls.map(|t| {
            Arc::new(PerPeer {
                tls: t.clone(),
                connect_timeout,
                headers,
                clients: Mutex::default(),
            })
        });
        client.auth = auth.signs().then(|| Arc::new(auth.clone()));
        Ok(client)
    }

    /// A client that sends `headers` on every request and signs nothing. With
    /// `tls_ca` (PEM), peers are called over https and must present a certificate
    /// signed by that CA; this client presents none (a Raft port under `[tls]`
    /// refuses it: use [`PeerClient::for_node`]).
    pub fn new(
        connect_timeout: Duration,
        headers: reqwest::header::HeaderMap,
        tls_ca: Option<&[u8]>,
    ) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder();
        let scheme = match tls_ca {
            Some(ca) => {
                builder = builder
                    .use_rustls_tls()
                    .add_root_certificate(reqwest::Certificate::from_pem(ca)?);
                "https"
            }
            None => "http",
        };
        let http = Self::configure(builder, connect_timeout, headers).build()?;
        Ok(Self {
            http,
            per_peer: None,
            peer_addrs: Arc::default(),
            scheme,
            auth: None,
        })
    }

    /// The settings every peer client shares: headers, timeouts, pooling, no proxy.
    fn configure(
        builder: reqwest::ClientBuilder,
        connect_timeout: Duration,
        headers: reqwest::header::HeaderMap,
    ) -> reqwest::ClientBuilder {
        builder
            .default_headers(headers)
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            // Peers are addressed directly; an HTTP(S)_PROXY in the environment must
            // not capture node-to-node traffic.
            .no_proxy()
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
        let req = self
            .request(reqwest::Method::POST, peer, addr, path, timeout)?
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(TIMEOUT_HEADER, timeout.as_millis().to_string());
        let req = self.sign(req, "POST", path, &body)?.body(body);
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
        let req = self.request(reqwest::Method::GET, peer, addr, path, timeout)?;
        let req = self.sign(req, "GET", path, &[])?;
        Self::finish(req).await
    }

    /// Open an append stream to peer `peer` (at `addr` unless overridden): `POST
    /// <path>` asking to upgrade to [`STREAM_PROTOCOL`], signed and sent like every
    /// other request (same TLS client, same overrides), within `timeout`. A node that
    /// does not serve streams answers `Status(404, ..)`; see `protocol` for what the
    /// upgraded connection carries.
    pub async fn open_stream(
        &self,
        peer: u64,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<reqwest::Upgraded, PeerError> {
        let req = self
            .request(reqwest::Method::POST, peer, addr, path, timeout)?
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, STREAM_PROTOCOL);
        let req = self.sign(req, "POST", path, &[])?;
        let resp = req.send().await.map_err(PeerError::from_reqwest)?;
        let status = resp.status();
        if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let bytes = resp.bytes().await.map_err(PeerError::from_reqwest)?;
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(PeerError::Status(status.as_u16(), text));
        }
        resp.upgrade()
            .await
            .map_err(|e| PeerError::Transport(chain(&e)))
    }

    /// A request to `<scheme>://<addr><path>` of peer `peer` (at `addr` unless
    /// overridden), given up after `timeout`. Under `[tls]` it goes through the
    /// client that accepts only `peer`'s certificate.
    fn request(
        &self,
        method: reqwest::Method,
        peer: u64,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder, PeerError> {
        let addr = self.addr_of(peer, addr);
        let http = match &self.per_peer {
            Some(p) => p.client(peer)?,
            None => self.http.clone(),
        };
        Ok(http
            .request(method, format!("{}://{addr}{path}", self.scheme))
            .timeout(timeout))
    }

    /// Add the signature header when this client signs. `path` must be exactly the
    /// path the request goes to: the receiver verifies the MAC over its own URI.
    fn sign(
        &self,
        req: reqwest::RequestBuilder,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<reqwest::RequestBuilder, PeerError> {
        let Some(auth) = &self.auth else {
            return Ok(req);
        };
        match auth.sign(method, path, body) {
            Ok(Some(v)) => Ok(req.header(AUTH_HEADER, v)),
            Ok(None) => Ok(req),
            // Never send unsigned: the peer would refuse it anyway. Not delivered.
            Err(e) => Err(PeerError::Connect(e.to_string())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::protocol::paths;
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
