//! # quorate-client: call a quorate cluster from Rust
//!
//! The client talks to any node over HTTP using only the [`quorate_proto`] wire types
//! (it never depends on openraft). It is built so services stop hand-rolling the parts
//! that went wrong in the seeds this project came from:
//!
//! - **Slots are released on every path.** [`Client::acquire`] returns a
//!   [`SlotGuard`]; dropping it (normal return, `?`, panic) releases the lease, and
//!   while it is held it renews itself in the background at a third of the TTL.
//! - **Retries never double-book.** The lease id is chosen before the first attempt
//!   and reused by every retry, so a response lost to a timeout cannot take a second
//!   slot: the cluster answers a retry with the original grant.
//! - **Any node will do.** The client tries the configured nodes in turn, remembers
//!   the one that answered, and backs off on 503 or connection errors until its
//!   deadline.
//! - **Failure policy is the caller's choice.** [`FailurePolicy::Closed`] (default)
//!   denies when the cluster is unreachable; [`FailurePolicy::Open`] allows, logs a
//!   warning and counts it ([`Client::fail_open_count`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), quorate_client::Error> {
//! use std::time::Duration;
//! use quorate_client::{Client, ClientConfig};
//!
//! let client = Client::new(ClientConfig::new(["http://127.0.0.1:7101", "http://127.0.0.1:7102"]))?;
//! // At most N runs per org and M in total, in one atomic step:
//! let guard = client.acquire(&["org:acme", "global"], Duration::from_secs(60)).await?;
//! println!("running with fencing token {:?}", guard.fencing_token());
//! // ... do the work; the guard renews itself meanwhile ...
//! guard.release().await?; // or just drop it
//!
//! let rate = client.check_rate("user:42", "user", None).await?;
//! if !rate.allowed {
//!     println!("retry in {} ms", rate.retry_after_ms);
//! }
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorate_proto::{self as proto, codes};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What the caller wants when the cluster cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Deny (return [`Error::Unavailable`]). Safe: never admits more than the limit.
    #[default]
    Closed,
    /// Allow (a degraded guard without a lease / an allowed rate decision), with a
    /// warning log and a counter. Only for work where over-admission is cheaper than
    /// refusing.
    Open,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URLs of the nodes, e.g. `http://127.0.0.1:7101`.
    pub nodes: Vec<String>,
    /// Timeout of one HTTP attempt.
    pub request_timeout: Duration,
    /// Total time one call may spend retrying across nodes.
    pub deadline: Duration,
    /// First backoff after every node failed once; doubles up to 1 s.
    pub backoff: Duration,
    pub failure_policy: FailurePolicy,
    /// Bearer token sent with every request, if the cluster requires one.
    pub token: Option<String>,
    /// Holder text recorded with leases (e.g. host and pid).
    pub holder: String,
    /// PEM CA certificate to trust for `https://` nodes (the cluster's `tls.ca_file`).
    pub ca_pem: Option<Vec<u8>>,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        Self {
            nodes: nodes
                .into_iter()
                .map(|n| n.into().trim_end_matches('/').to_string())
                .collect(),
            request_timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(10),
            backoff: Duration::from_millis(50),
            failure_policy: FailurePolicy::Closed,
            token: None,
            holder: format!("pid-{}", std::process::id()),
            ca_pem: None,
        }
    }
}

/// Everything that can go wrong, typed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No node could decide within the deadline (503s, connection errors, timeouts).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// An acquire was denied: a key is at its limit.
    #[error("limit exceeded on {blocked_by:?}; retry in {retry_after_ms} ms")]
    LimitExceeded {
        blocked_by: Vec<String>,
        retry_after_ms: u64,
        slots: Vec<proto::SlotUsage>,
    },
    /// The lease is not live (renew of an expired or released lease).
    #[error("lease not found: {0}")]
    LeaseNotFound(String),
    /// Any other API error (400 invalid_request, 409 lease_conflict, 404, 401/403).
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The client was configured wrongly (no nodes, bad URL).
    #[error("client configuration: {0}")]
    Config(String),
    /// A response could not be decoded.
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl Error {
    /// The API error code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            Error::LimitExceeded { .. } => Some(codes::LIMIT_EXCEEDED),
            Error::LeaseNotFound(_) => Some(codes::LEASE_NOT_FOUND),
            Error::Unavailable(_) => Some(codes::UNAVAILABLE),
            _ => None,
        }
    }
}

struct Inner {
    http: reqwest::Client,
    cfg: ClientConfig,
    /// Index of the node that answered last; tried first next time.
    preferred: AtomicUsize,
    fail_open: AtomicU64,
}

/// A handle to a cluster. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.inner.cfg.nodes)
            .finish()
    }
}

/// One HTTP exchange's result that reached a node.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Self, Error> {
        if cfg.nodes.is_empty() {
            return Err(Error::Config(
                "at least one node address is required".into(),
            ));
        }
        for n in &cfg.nodes {
            if !(n.starts_with("http://") || n.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "node address {n} must start with http:// or https://"
                )));
            }
        }
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &cfg.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem)
                .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
            builder = builder.use_rustls_tls().add_root_certificate(ca);
        }
        let http = builder
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(1)))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                cfg,
                preferred: AtomicUsize::new(0),
                fail_open: AtomicU64::new(0),
            }),
        })
    }

    /// How many times the fail-open policy allowed something the cluster did not.
    pub fn fail_open_count(&self) -> u64 {
        self.inner.fail_open.load(Ordering::Relaxed)
    }

    /// Send one request, trying nodes in turn until one answers with something other
    /// than 503, or the deadline passes.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Error> {
        let cfg = &self.inner.cfg;
        let n = cfg.nodes.len();
        let deadline = tokio::time::Instant::now() + cfg.deadline;
        let mut backoff = cfg.backoff;
        let mut last_err;
        let mut attempt = 0usize;
        loop {
            let idx = (self.inner.preferred.load(Ordering::Relaxed) + attempt) % n;
            let url = format!("{}{}", cfg.nodes[idx], path);
            let mut req = self.inner.http.request(method.clone(), &url);
            if let Some(t) = &cfg.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.clone());
            }
            match req.send().await {
                Ok(resp) if resp.status() != StatusCode::SERVICE_UNAVAILABLE => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(b) => {
                            self.inner.preferred.store(idx, Ordering::Relaxed);
                            return Ok(Answer {
                                status,
                                body: b.to_vec(),
                            });
                        }
                        Err(e) => last_err = format!("{url}: reading body: {e}"),
                    }
                }
                Ok(resp) => {
                    let text = resp.text().await.unwrap_or_default();
                    last_err = format!("{url}: 503 {text}");
                }
                Err(e) => last_err = format!("{url}: {e}"),
            }
            tracing::debug!(error = %last_err, "quorate node did not decide; trying the next");
            attempt += 1;
            if attempt.is_multiple_of(n) {
                // Every node failed once: back off before the next round.
                let now = tokio::time::Instant::now();
                if now + backoff >= deadline {
                    return Err(Error::Unavailable(last_err));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            } else if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(last_err));
            }
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| Error::Decode(e.to_string()))?),
            None => None,
        };
        let a = self.exchange(method, path, body).await?;
        if a.status.is_success() {
            return serde_json::from_slice(&a.body).map_err(|e| Error::Decode(e.to_string()));
        }
        Err(api_error(&a))
    }

    // ------------------------------------------------------------------------------
    // Slots

    /// Acquire one slot on every key (all or nothing) and hold it with a guard that
    /// renews itself and releases on drop. A denial is [`Error::LimitExceeded`].
    pub async fn acquire(&self, keys: &[&str], ttl: Duration) -> Result<SlotGuard, Error> {
        let lease_id = uuid::Uuid::new_v4().to_string();
        self.acquire_with_id(keys, ttl, &lease_id).await
    }

    /// [`Client::acquire`] with a caller-chosen lease id (e.g. an execution id), so a
    /// retry from another process after a crash is still idempotent.
    pub async fn acquire_with_id(
        &self,
        keys: &[&str],
        ttl: Duration,
        lease_id: &str,
    ) -> Result<SlotGuard, Error> {
        let req = proto::AcquireRequest {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            lease_id: Some(lease_id.to_string()),
            ttl_ms: Some(ttl.as_millis().try_into().unwrap_or(u64::MAX)),
            holder: Some(self.inner.cfg.holder.clone()),
        };
        match self.acquire_raw(&req).await {
            Ok(g) => Ok(SlotGuard::start(self.clone(), g, ttl)),
            Err(Error::Unavailable(why))
                if self.inner.cfg.failure_policy == FailurePolicy::Open =>
            {
                self.inner.fail_open.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%why, ?keys, "quorate unreachable; failing open (no lease held)");
                Ok(SlotGuard::degraded(self.clone(), lease_id))
            }
            Err(e) => Err(e),
        }
    }

    /// The raw acquire call: no guard, no failure policy.
    pub async fn acquire_raw(
        &self,
        req: &proto::AcquireRequest,
    ) -> Result<proto::AcquireGranted, Error> {
        self.call(Method::POST, "/v1/slots/acquire", Some(req))
            .await
    }

    /// Release a lease; `false` if it was not live. Idempotent.
    pub async fn release(&self, lease_id: &str) -> Result<bool, Error> {
        let r: proto::ReleaseResponse = self
            .call(
                Method::POST,
                "/v1/slots/release",
                Some(&proto::ReleaseRequest {
                    lease_id: lease_id.into(),
                }),
            )
            .await?;
        Ok(r.released)
    }

    /// Extend a live lease to now + `ttl`.
    pub async fn renew(
        &self,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<proto::RenewResponse, Error> {
        let req = proto::RenewRequest {
            lease_id: lease_id.into(),
            ttl_ms: Some(ttl.as_millis().try_into().unwrap_or(u64::MAX)),
        };
        self.call(Method::POST, "/v1/slots/renew", Some(&req)).await
    }

    /// A key's usage and live leases (linearizable).
    pub async fn slots(&self, key: &str) -> Result<proto::SlotsResponse, Error> {
        self.call::<(), _>(Method::GET, &format!("/v1/slots/{}", path_seg(key)), None)
            .await
    }

    // ------------------------------------------------------------------------------
    // Limits and policies

    pub async fn set_limit(&self, key: &str, limit: u32) -> Result<proto::PutLimitResponse, Error> {
        self.call(
            Method::PUT,
            &format!("/v1/limits/{}", path_seg(key)),
            Some(&proto::PutLimitRequest { limit }),
        )
        .await
    }

    pub async fn get_limit(&self, key: &str) -> Result<proto::LimitEntry, Error> {
        self.call::<(), _>(Method::GET, &format!("/v1/limits/{}", path_seg(key)), None)
            .await
    }

    pub async fn delete_limit(&self, key: &str) -> Result<bool, Error> {
        let r: proto::DeleteResponse = self
            .call::<(), _>(
                Method::DELETE,
                &format!("/v1/limits/{}", path_seg(key)),
                None,
            )
            .await?;
        Ok(r.deleted)
    }

    pub async fn list_limits(
        &self,
        prefix: &str,
        max: Option<u32>,
    ) -> Result<proto::ListLimitsResponse, Error> {
        let mut path = format!("/v1/limits?prefix={}", query_value(prefix));
        if let Some(m) = max {
            path.push_str(&format!("&max={m}"));
        }
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn policies(&self) -> Result<proto::PoliciesResponse, Error> {
        self.call::<(), _>(Method::GET, "/v1/policies", None).await
    }

    pub async fn put_policy(
        &self,
        name: &str,
        spec: &proto::PolicySpec,
    ) -> Result<proto::PolicyEntry, Error> {
        self.call(
            Method::PUT,
            &format!("/v1/policies/{}", path_seg(name)),
            Some(spec),
        )
        .await
    }

    pub async fn delete_policy(&self, name: &str) -> Result<bool, Error> {
        let r: proto::DeleteResponse = self
            .call::<(), _>(
                Method::DELETE,
                &format!("/v1/policies/{}", path_seg(name)),
                None,
            )
            .await?;
        Ok(r.deleted)
    }

    // ------------------------------------------------------------------------------
    // Rate limits

    /// Check (and charge, if allowed) one request against a named policy.
    pub async fn check_rate(
        &self,
        key: &str,
        policy: &str,
        tier: Option<&str>,
    ) -> Result<proto::RateCheckResponse, Error> {
        self.check_rates(&proto::RateCheckRequest {
            key: Some(key.into()),
            policy: Some(policy.into()),
            tier: tier.map(str::to_string),
            ..Default::default()
        })
        .await
    }

    /// Any rate check request (inline limits, cost, several checks). A denial is an
    /// `Ok` with `allowed: false`, not an error.
    pub async fn check_rates(
        &self,
        req: &proto::RateCheckRequest,
    ) -> Result<proto::RateCheckResponse, Error> {
        let body = serde_json::to_vec(req).map_err(|e| Error::Decode(e.to_string()))?;
        match self
            .exchange(Method::POST, "/v1/rate/check", Some(body))
            .await
        {
            Ok(a) if a.status.is_success() || a.status == StatusCode::TOO_MANY_REQUESTS => {
                serde_json::from_slice(&a.body).map_err(|e| Error::Decode(e.to_string()))
            }
            Ok(a) => Err(api_error(&a)),
            Err(Error::Unavailable(why))
                if self.inner.cfg.failure_policy == FailurePolicy::Open =>
            {
                self.inner.fail_open.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%why, "quorate unreachable; failing open (rate check allowed)");
                Ok(proto::RateCheckResponse {
                    allowed: true,
                    error: None,
                    message: Some(format!("allowed by fail-open policy: {why}")),
                    limit: 0,
                    remaining: 0,
                    reset_after_ms: 0,
                    retry_after_ms: 0,
                    results: vec![],
                })
            }
            Err(e) => Err(e),
        }
    }

    // ------------------------------------------------------------------------------
    // Cluster

    /// The cluster as seen by whichever node answers.
    pub async fn cluster(&self) -> Result<proto::ClusterResponse, Error> {
        self.call::<(), _>(Method::GET, "/v1/cluster", None).await
    }

    /// The cluster as seen by one specific node (no failover), for status displays.
    pub async fn cluster_at(&self, node_url: &str) -> Result<proto::ClusterResponse, Error> {
        let url = format!("{}/v1/cluster", node_url.trim_end_matches('/'));
        let mut req = self.inner.http.get(&url);
        if let Some(t) = &self.inner.cfg.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("{url}: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?
            .to_vec();
        let a = Answer { status, body };
        if status.is_success() {
            serde_json::from_slice(&a.body).map_err(|e| Error::Decode(e.to_string()))
        } else {
            Err(api_error(&a))
        }
    }

    /// `GET /readyz` on one specific node: does it know a leader and has it caught up?
    pub async fn ready_at(&self, node_url: &str) -> bool {
        let url = format!("{}/readyz", node_url.trim_end_matches('/'));
        matches!(
            self.inner.http.get(&url).timeout(Duration::from_secs(1)).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    pub async fn add_member(
        &self,
        req: &proto::AddMemberRequest,
    ) -> Result<proto::MembersResponse, Error> {
        self.call(Method::POST, "/v1/members", Some(req)).await
    }

    pub async fn remove_member(&self, id: u64) -> Result<proto::MembersResponse, Error> {
        self.call::<(), _>(Method::DELETE, &format!("/v1/members/{id}"), None)
            .await
    }
}

/// Map a non-2xx answer to a typed error.
fn api_error(a: &Answer) -> Error {
    let status = a.status.as_u16();
    if a.status == StatusCode::TOO_MANY_REQUESTS {
        if let Ok(d) = serde_json::from_slice::<proto::AcquireDenied>(&a.body) {
            return Error::LimitExceeded {
                blocked_by: d.blocked_by,
                retry_after_ms: d.retry_after_ms,
                slots: d.slots,
            };
        }
    }
    match serde_json::from_slice::<proto::ErrorBody>(&a.body) {
        Ok(e) if e.error == codes::LEASE_NOT_FOUND => Error::LeaseNotFound(e.message),
        Ok(e) => Error::Api {
            status,
            code: e.error,
            message: e.message,
        },
        Err(_) => Error::Api {
            status,
            code: "unknown".into(),
            message: String::from_utf8_lossy(&a.body).chars().take(200).collect(),
        },
    }
}

/// Percent-encode a path segment (keys are restricted to URL-safe characters by the
/// server, but a caller may pass anything and deserves a 400, not a wrong route).
fn path_seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'+' | b'=')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_value(s: &str) -> String {
    path_seg(s)
}

// ----------------------------------------------------------------------------------
// The guard

/// A held lease. Renews itself in the background at a third of the TTL; releases on
/// drop. If a renewal finds the lease gone (it expired while the holder was stalled),
/// [`SlotGuard::is_lost`] turns true: the holder should stop, since another may now
/// hold the slot — and the fencing token lets downstream systems reject it anyway.
#[derive(Debug)]
pub struct SlotGuard {
    client: Client,
    lease_id: String,
    grant: Option<proto::AcquireGranted>,
    lost: Arc<AtomicBool>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl SlotGuard {
    fn start(client: Client, grant: proto::AcquireGranted, ttl: Duration) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let client = client.clone();
            let lease_id = grant.lease_id.clone();
            let lost = lost.clone();
            let every = (ttl / 3).max(Duration::from_millis(10));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    match client.renew(&lease_id, ttl).await {
                        Ok(_) => {}
                        Err(Error::LeaseNotFound(_)) => {
                            tracing::warn!(%lease_id, "lease lost: it expired before it could be renewed");
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        // Transient: the next tick tries again while the TTL lasts.
                        Err(e) => tracing::warn!(%lease_id, error = %e, "lease renewal failed"),
                    }
                }
            })
        };
        Self {
            client,
            lease_id: grant.lease_id.clone(),
            grant: Some(grant),
            lost,
            renewer: Some(renewer),
            released: false,
        }
    }

    fn degraded(client: Client, lease_id: &str) -> Self {
        Self {
            client,
            lease_id: lease_id.to_string(),
            grant: None,
            lost: Arc::new(AtomicBool::new(false)),
            renewer: None,
            released: true,
        }
    }

    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }

    /// The grant's fencing token; `None` for a fail-open guard that holds no lease.
    pub fn fencing_token(&self) -> Option<u64> {
        self.grant.as_ref().map(|g| g.fencing_token)
    }

    /// The grant as the cluster returned it (`None` when failing open).
    pub fn grant(&self) -> Option<&proto::AcquireGranted> {
        self.grant.as_ref()
    }

    /// True when the guard was handed out by the fail-open policy without a lease.
    pub fn is_degraded(&self) -> bool {
        self.grant.is_none()
    }

    /// True once a renewal found the lease gone.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Release now and wait for the answer (dropping releases in the background).
    pub async fn release(mut self) -> Result<bool, Error> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.released = true;
        if self.grant.is_none() {
            return Ok(false);
        }
        self.client.release(&self.lease_id).await
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if self.released {
            return;
        }
        // Release in the background; if there is no runtime left (process exit), the
        // lease simply expires after its TTL.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                let client = self.client.clone();
                let lease_id = std::mem::take(&mut self.lease_id);
                h.spawn(async move {
                    if let Err(e) = client.release(&lease_id).await {
                        tracing::warn!(%lease_id, error = %e, "release on drop failed; the lease will expire");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(lease_id = %self.lease_id, "guard dropped outside a runtime; lease will expire")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_seg("org:acme"), "org:acme");
        assert_eq!(path_seg("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn config_is_checked() {
        assert!(Client::new(ClientConfig::new(Vec::<String>::new())).is_err());
        assert!(Client::new(ClientConfig::new(["127.0.0.1:7101"])).is_err());
        assert!(Client::new(ClientConfig::new(["http://127.0.0.1:7101/"])).is_ok());
    }

    #[tokio::test]
    async fn unreachable_cluster_fails_closed_by_default_and_open_on_request() {
        // Port 9 (discard) on loopback: nothing listens, connections are refused fast.
        let mut cfg = ClientConfig::new(["http://127.0.0.1:9"]);
        cfg.deadline = Duration::from_millis(200);
        let closed = Client::new(cfg.clone()).unwrap();
        let err = closed
            .acquire(&["k"], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
        assert!(matches!(
            closed.check_rate("k", "p", None).await,
            Err(Error::Unavailable(_))
        ));

        cfg.failure_policy = FailurePolicy::Open;
        let open = Client::new(cfg).unwrap();
        let g = open.acquire(&["k"], Duration::from_secs(5)).await.unwrap();
        assert!(g.is_degraded());
        assert_eq!(g.fencing_token(), None);
        assert!(open.check_rate("k", "p", None).await.unwrap().allowed);
        assert_eq!(open.fail_open_count(), 2);
    }
}
