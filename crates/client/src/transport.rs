//! One HTTP exchange with the cluster: URL building, node failover and backoff.
//!
//! Every call of the client goes through here, described by a [`Request`]: a row of
//! the route table ([`quorate_proto::routes`]), its path parameters, query pairs and
//! an optional JSON body. [`url`] is the only place a URL is built: it pushes the
//! route's segments into a [`Url`], which percent-encodes each parameter as exactly
//! one segment (a key `a/b?c` is `a%2Fb%3Fc`, never two segments or a query). The
//! url crate cannot express a segment that is exactly `.` or `..` (it drops them);
//! such keys address the route without the parameter and the server answers with an
//! error, as before the route table.
//!
//! [`Transport::exchange`] sends to the leader first: every answer names the
//! current leader's API base URL in the `x-quorate-leader` header, the transport
//! remembers it, and the next call goes there (any node would decide it, by
//! forwarding to the leader; going straight there saves that hop). When the hint
//! changes the transport follows it; when the hinted node fails (no connection, or
//! 503) the hint is dropped and the nodes are tried in turn, starting with the one
//! that answered last, until one answers with anything but 503 (a 503 means "this
//! node cannot decide now": no leader, no quorum, draining) — its answer usually
//! names the new leader. After every node failed once it backs off (doubling up to
//! 1 s) and goes round again until the call's deadline. Errors other than 503 are
//! answers, not failures: they are returned at once, since another node would say
//! the same. [`Transport::exchange_at`] asks one given node once, for status
//! displays that must not fail over.
//!
//! A hint is followed only if it is an `http(s)://host[:port]` base URL, and an
//! `http://` hint only when no configured node is `https://`: the bearer token goes
//! wherever the hint points, so a hint may never downgrade the transport.
//!
//! The bearer token goes to every route that needs one; [`Access::Open`] routes
//! (probes) get none, so a probe works whatever the token.
//!
//! With the decision stream on (`ClientConfig::decision_stream`), an attempt of a
//! decision (acquire, release, renew, rate check) goes to the chosen node as a frame
//! on the client's stream (`stream.rs`) rather than as an HTTP request; nothing else
//! in the loop changes. An attempt the stream did not send (an `https://` node, a
//! refused upgrade, a stream that broke before the frame left) becomes the HTTP
//! request it would have been, to the same node; one the stream sent and got no
//! answer to is a failed attempt, exactly like an HTTP request whose response was
//! lost, and the loop goes on to the next node with the same body.
//!
//! Stream answers carry no leader hint (the upgrade's answer is a stream's only
//! one), so a leader change that does not break the stream — its node was a
//! follower chosen in a failover, or was the leader and lost the role — would go
//! unnoticed and every decision would take a follower's extra hop. While decisions
//! go on a stream the transport therefore asks the stream's node for the hint now
//! and then, in the background (`GET /healthz`, whose answer names the leader like
//! every answer): every [`OFF_LEADER_RECHECK`] while the node is not the hinted
//! leader, every [`LEADER_RECHECK`] while it is. The next decision then follows the
//! hint and the stream moves with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_proto::routes::{self, Access, RouteId};
use quorate_proto::LEADER_HEADER;
use reqwest::{StatusCode, Url};

use crate::config::ClientConfig;
use crate::error::{Answer, Error};
pub(crate) use crate::request::{url, Request};
use crate::stream::{self, Miss, Streams};

/// How often a stream's node is asked for the leader hint while it is not the
/// hinted leader: soon after a failover left the stream on a follower.
pub(crate) const OFF_LEADER_RECHECK: Duration = Duration::from_secs(1);

/// How often the hinted leader serving the stream is asked whether it still is.
pub(crate) const LEADER_RECHECK: Duration = Duration::from_secs(10);

/// The route table's method as reqwest's.
pub(crate) fn method(m: routes::Method) -> reqwest::Method {
    match m {
        routes::Method::Get => reqwest::Method::GET,
        routes::Method::Post => reqwest::Method::POST,
        routes::Method::Put => reqwest::Method::PUT,
        routes::Method::Delete => reqwest::Method::DELETE,
    }
}

/// Parse a node base URL; only `http://` and `https://` are accepted.
pub(crate) fn parse_node(node: &str) -> Result<Url, Error> {
    if !(node.starts_with("http://") || node.starts_with("https://")) {
        return Err(Error::Config(format!(
            "node address {node} must start with http:// or https://"
        )));
    }
    Url::parse(node).map_err(|e| Error::Config(format!("node address {node}: {e}")))
}

/// The HTTP side of a [`crate::Client`]: connection pool, nodes, failover state.
pub(crate) struct Transport {
    http: reqwest::Client,
    nodes: Vec<Url>,
    token: Option<String>,
    deadline: Duration,
    backoff: Duration,
    /// Index of the node that answered last; tried first next time.
    preferred: AtomicUsize,
    /// The leader the cluster last named (`x-quorate-leader`); tried before the
    /// nodes. Held only to read or replace it, never across an await. Shared with
    /// the background leader checks of the decision stream.
    leader: Arc<Mutex<Option<Url>>>,
    /// Hints must be `https://` (some configured node is).
    https_only: bool,
    /// An attempt's timeout unless the call sets its own (a stream attempt's too).
    request_timeout: Duration,
    /// The decision stream, when the configuration turns it on.
    streams: Option<Streams>,
}

/// The leader base URL a hint names, if it is one this transport may follow.
pub(crate) fn parse_hint(value: &[u8], https_only: bool) -> Option<Url> {
    let s = std::str::from_utf8(value).ok()?.trim_end_matches('/');
    if https_only && !s.starts_with("https://") {
        return None;
    }
    let url = parse_node(s).ok()?;
    let bare = url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
        && url.host_str().is_some();
    bare.then_some(url)
}

/// Replace the leader hint with the one `value` names, if it may be followed.
fn follow_hint(leader: &Mutex<Option<Url>>, https_only: bool, value: Option<&[u8]>) {
    let Some(url) = value.and_then(|v| parse_hint(v, https_only)) else {
        return;
    };
    let mut leader = leader.lock().unwrap_or_else(|e| e.into_inner());
    if leader.as_ref() != Some(&url) {
        tracing::debug!(leader = %url, "following the cluster's leader hint");
        *leader = Some(url);
    }
}

impl Transport {
    pub fn new(cfg: &ClientConfig) -> Result<Self, Error> {
        if cfg.nodes.is_empty() {
            return Err(Error::Config(
                "at least one node address is required".into(),
            ));
        }
        let nodes = cfg
            .nodes
            .iter()
            .map(|n| parse_node(n))
            .collect::<Result<Vec<_>, _>>()?;
        let connect_timeout = cfg.request_timeout.min(Duration::from_secs(1));
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &cfg.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem)
                .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
            builder = builder.use_rustls_tls().add_root_certificate(ca);
        }
        let http = builder
            .timeout(cfg.request_timeout)
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        let https_only = nodes.iter().any(|u| u.scheme() == "https");
        let streams = cfg
            .decision_stream
            .then(|| Streams::new(cfg.token.clone(), connect_timeout));
        Ok(Self {
            http,
            nodes,
            token: cfg.token.clone(),
            deadline: cfg.deadline,
            backoff: cfg.backoff,
            preferred: AtomicUsize::new(0),
            leader: Arc::new(Mutex::new(None)),
            https_only,
            request_timeout: cfg.request_timeout,
            streams,
        })
    }

    /// The leader the cluster last named, if any.
    pub fn leader_hint(&self) -> Option<Url> {
        self.leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Follow a hint from an answer (no header: keep what we have).
    fn follow(&self, value: Option<&[u8]>) {
        follow_hint(&self.leader, self.https_only, value);
    }

    /// Drop the hint `failed` (the hinted node did not decide), unless another
    /// answer replaced it meanwhile.
    fn forget(&self, failed: &Url) {
        let mut leader = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        if leader.as_ref() == Some(failed) {
            *leader = None;
        }
    }

    /// Send one request: to the hinted leader first, then trying nodes in turn until
    /// one answers with something other than 503, or the deadline passes
    /// ([`Error::Unavailable`] with the last failure). Each hint is tried at most
    /// once per call, so a hinted node that keeps failing cannot hold the call.
    pub async fn exchange(&self, req: &Request<'_>) -> Result<Answer, Error> {
        self.exchange_with(req, None, self.deadline, None).await
    }

    /// [`Transport::exchange`] with a per-attempt `timeout` (instead of the
    /// configured request timeout), a whole-call budget `total`, and optionally a
    /// body built afresh for every attempt (a waiting acquire sends the wait that
    /// is left).
    pub async fn exchange_with(
        &self,
        req: &Request<'_>,
        timeout: Option<Duration>,
        total: Duration,
        rebody: Option<&(dyn Fn() -> Vec<u8> + Send + Sync)>,
    ) -> Result<Answer, Error> {
        let n = self.nodes.len();
        let deadline = tokio::time::Instant::now() + total;
        let mut backoff = self.backoff;
        let mut attempt = 0usize;
        let mut hints_tried: Vec<Url> = Vec::new();
        loop {
            let hint = self.leader_hint().filter(|h| !hints_tried.contains(h));
            let (base, idx) = match &hint {
                Some(h) => (h, None),
                None => {
                    let idx = (self.preferred.load(Ordering::Relaxed) + attempt) % n;
                    (&self.nodes[idx], Some(idx))
                }
            };
            let url = url(base, req)?;
            let fresh;
            let attempt_req = match rebody {
                Some(f) => {
                    fresh = Request {
                        body: Some(f()),
                        ..req.clone()
                    };
                    &fresh
                }
                None => req,
            };
            let last_err = match self.attempt(base, url.clone(), attempt_req, timeout).await {
                Ok(a) if a.status != StatusCode::SERVICE_UNAVAILABLE => {
                    if let Some(idx) = idx {
                        self.preferred.store(idx, Ordering::Relaxed);
                    }
                    return Ok(a);
                }
                Ok(a) => format!("{url}: 503 {}", String::from_utf8_lossy(&a.body)),
                Err(e) => e,
            };
            tracing::debug!(error = %last_err, "quorate node did not decide; trying the next");
            if let Some(h) = hint {
                self.forget(&h);
                hints_tried.push(h);
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Unavailable(last_err));
                }
                continue;
            }
            attempt += 1;
            if attempt.is_multiple_of(n) {
                // Every node failed once: back off before the next round.
                let now = tokio::time::Instant::now();
                if now + backoff >= deadline {
                    return Err(Error::Unavailable(last_err));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                // A new round may try a hint again (the leader may be back).
                hints_tried.clear();
            } else if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(last_err));
            }
        }
    }

    /// Send one request to one given node, once (no failover, no retry); any status
    /// is an answer. `timeout` overrides the per-attempt timeout.
    pub async fn exchange_at(
        &self,
        node: &str,
        req: &Request<'_>,
        timeout: Option<Duration>,
    ) -> Result<Answer, Error> {
        let url = url(&parse_node(node.trim_end_matches('/'))?, req)?;
        self.send(url, req, timeout)
            .await
            .map_err(Error::Unavailable)
    }

    /// One attempt of [`Transport::exchange_with`] on `base`: over the decision
    /// stream when it may carry the request, else (or when the stream did not send
    /// it) as an HTTP request to `url`. A call with a `timeout` of its own is one the
    /// node holds open (a waiting acquire).
    async fn attempt(
        &self,
        base: &Url,
        url: Url,
        req: &Request<'_>,
        timeout: Option<Duration>,
    ) -> Result<Answer, String> {
        if let (Some(streams), Some(op)) = (&self.streams, stream::op_for(req.route)) {
            let body = req.body.as_deref().unwrap_or_default();
            let limit = timeout.unwrap_or(self.request_timeout);
            let follow = |hint: &[u8]| self.follow(Some(hint));
            match streams
                .call(base, op, body, timeout.is_some(), limit, &follow)
                .await
            {
                Ok(a) => {
                    self.recheck_leader(streams, base);
                    return Ok(a);
                }
                // Not sent: the HTTP request below cannot decide it a second time.
                Err(Miss::Fallback(why)) => {
                    tracing::debug!(%why, "decision not sent on a stream; sending it over HTTP")
                }
                Err(Miss::Failed(why)) => return Err(why),
            }
        }
        self.send(url, req, timeout).await
    }

    /// When due, ask the stream's node `base` for the leader hint in the background
    /// (see the module docs); a failed check changes nothing.
    fn recheck_leader(&self, streams: &Streams, base: &Url) {
        let on_leader = self.leader_hint().as_ref() == Some(base);
        let every = if on_leader {
            LEADER_RECHECK
        } else {
            OFF_LEADER_RECHECK
        };
        if !streams.recheck_due(every) {
            return;
        }
        let Ok(probe) = url(base, &Request::new(RouteId::Healthz)) else {
            return;
        };
        let (http, leader, https_only) = (self.http.clone(), self.leader.clone(), self.https_only);
        tokio::spawn(async move {
            if let Ok(resp) = http.get(probe).send().await {
                let hint = resp.headers().get(LEADER_HEADER).map(|v| v.as_bytes());
                follow_hint(&leader, https_only, hint);
            }
        });
    }

    /// One HTTP attempt; `Err` describes why no answer arrived (with the URL).
    async fn send(
        &self,
        url: Url,
        req: &Request<'_>,
        timeout: Option<Duration>,
    ) -> Result<Answer, String> {
        let route = req.route.route();
        let mut builder = self.http.request(method(route.method), url.clone());
        if let (Some(t), false) = (&self.token, route.access == Access::Open) {
            builder = builder.bearer_auth(t);
        }
        if let Some(b) = &req.body {
            builder = builder
                .header("content-type", "application/json")
                .body(b.clone());
        }
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        let resp = builder.send().await.map_err(|e| format!("{url}: {e}"))?;
        self.follow(resp.headers().get(LEADER_HEADER).map(|v| v.as_bytes()));
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("{url}: reading body: {e}"))?;
        Ok(Answer {
            status,
            body: body.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(base: &str, route: RouteId, params: &[&str], query: &[(&str, &str)]) -> String {
        let req = Request::new(route).params(params).query(query);
        url(&parse_node(base).unwrap(), &req).unwrap().to_string()
    }

    #[test]
    fn path_segments_are_encoded() {
        let b = "http://127.0.0.1:7101";
        assert_eq!(
            built(b, RouteId::Slots, &["org:acme"], &[]),
            "http://127.0.0.1:7101/v1/slots/org:acme"
        );
        assert_eq!(
            built(b, RouteId::GetLimit, &["a b/c"], &[]),
            "http://127.0.0.1:7101/v1/limits/a%20b%2Fc"
        );
        assert_eq!(
            built(b, RouteId::CounterIncr, &["LIMITER/x/1/minute"], &[]),
            "http://127.0.0.1:7101/v1/counters/LIMITER%2Fx%2F1%2Fminute/incr"
        );
    }

    #[test]
    fn a_hostile_key_is_one_segment() {
        let key = "a b/c%d?e#f";
        let u = built("http://h:1/", RouteId::Slots, &[key], &[]);
        assert_eq!(u, "http://h:1/v1/slots/a%20b%2Fc%25d%3Fe%23f");
        let parsed = Url::parse(&u).unwrap();
        assert_eq!(parsed.query(), None);
        assert_eq!(parsed.fragment(), None);
        let segs: Vec<_> = parsed.path_segments().unwrap().collect();
        assert_eq!(segs.len(), 3, "{segs:?}");
        // A base with a path prefix keeps it.
        assert_eq!(
            built("http://h:1/prefix", RouteId::Cluster, &[], &[]),
            "http://h:1/prefix/v1/cluster"
        );
    }

    #[test]
    fn query_values_are_encoded_and_parameters_counted() {
        let u = built(
            "http://h:1",
            RouteId::ListLimits,
            &[],
            &[("prefix", "org:a&b=c d"), ("max", "5")],
        );
        let parsed = Url::parse(&u).unwrap();
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            [
                ("prefix".to_string(), "org:a&b=c d".to_string()),
                ("max".to_string(), "5".to_string())
            ]
        );
        let req = Request::new(RouteId::Slots);
        assert!(matches!(
            url(&parse_node("http://h:1").unwrap(), &req),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn only_bare_base_urls_are_followed_and_never_downgraded() {
        let hint = |v: &str, https_only| parse_hint(v.as_bytes(), https_only).map(String::from);
        assert_eq!(
            hint("http://127.0.0.1:7102", false).as_deref(),
            Some("http://127.0.0.1:7102/")
        );
        assert_eq!(
            hint("https://q2.example:8443/", true).as_deref(),
            Some("https://q2.example:8443/")
        );
        // An https client never follows an http hint.
        assert_eq!(hint("http://127.0.0.1:7102", true), None);
        for bad in [
            "127.0.0.1:7102",
            "ftp://h:1",
            "http://h:1/path",
            "http://h:1/?q=1",
            "http://user:pw@h:1",
            "",
        ] {
            assert_eq!(hint(bad, false), None, "{bad}");
        }
        assert_eq!(parse_hint(b"http://h:1\xff", false), None);
    }

    #[test]
    fn methods_map_one_to_one() {
        assert_eq!(method(routes::Method::Get), reqwest::Method::GET);
        assert_eq!(method(routes::Method::Post), reqwest::Method::POST);
        assert_eq!(method(routes::Method::Put), reqwest::Method::PUT);
        assert_eq!(method(routes::Method::Delete), reqwest::Method::DELETE);
        for r in routes::ROUTES {
            assert_eq!(method(r.method).as_str(), r.method.as_str());
        }
    }
}
