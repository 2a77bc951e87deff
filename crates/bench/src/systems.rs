//! The three systems under test, behind one small enum so the load loop is identical
//! for all of them.
//!
//! - **quorate**: `POST /v1/slots/acquire` + `/v1/slots/release`, `POST /v1/rate/check`.
//! - **redis**: one Lua script per operation (`lua/*.lua`), EVALSHA, one request in
//!   flight per connection.
//! - **etcd**: the usual etcd semaphore: holder keys `sem/<key>/<holder>` attached to the
//!   client's session lease, admitted by a txn that compares the `mod_revision` of a
//!   guard key `semguard/<key>` read together with the holder count; retried on conflict
//!   ([`EtcdSem::Guard`]), or the conflict-free "ticket" recipe ([`EtcdSem::Ticket`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quorate_proto as proto;
use serde::Serialize;

use crate::etcd::{self, Compare, DeleteRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use crate::resp;
use crate::stream::StreamConn;
use crate::BenchError;
use quorate_proto::stream::StreamOp;

/// The Lua scripts, embedded.
pub const LUA_ACQUIRE: &str = include_str!("../lua/acquire.lua");
pub const LUA_RELEASE: &str = include_str!("../lua/release.lua");
pub const LUA_GCRA: &str = include_str!("../lua/gcra.lua");

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Quorate,
    Redis,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Quorate => "quorate",
            System::Redis => "redis",
            System::Etcd => "etcd",
        }
    }
}

/// Limits and parameters every system is configured with before a run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Limit of `org:hot` and the default of every other `org:*` key.
    pub org_limit: u32,
    /// Limit of `global`.
    pub global_limit: u32,
    pub ttl_ms: u64,
    pub rate_limit: u32,
    pub rate_period_ms: u64,
    pub rate_burst: u32,
    /// Which etcd semaphore recipe to use.
    pub etcd_sem: EtcdSem,
    /// How quorate clients send decisions.
    pub protocol: Protocol,
}

/// How quorate clients send decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One HTTP/1.1 request per decision (keep-alive).
    Http,
    /// A decision stream (`POST /v1/stream`, `quorate-api/1`): one frame per decision.
    Stream,
}

/// The two etcd semaphore recipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EtcdSem {
    /// Put the holder keys and count the prefixes in one txn; admitted if the counts
    /// (every live holder created up to our revision) are within the limits, else
    /// delete them again. One round trip per grant, no conflicts.
    Ticket,
    /// Read counts and guard-key revisions, then a txn comparing the guards'
    /// `mod_revision` that adds the holder keys and bumps the guards; retried on
    /// conflict. Every acquire serializes on the `global` guard.
    Guard,
}

/// What a successful acquire gives back, enough to release it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub org: String,
    pub lease_id: String,
}

/// The outcome of an acquire attempt.
#[derive(Debug, Clone)]
pub enum Acquired {
    Granted(Grant),
    Denied,
}

impl Acquired {
    /// A grant of `lease_id` on `org` (and `global`).
    fn granted(org: &str, lease_id: &str) -> Self {
        Acquired::Granted(Grant {
            org: org.to_owned(),
            lease_id: lease_id.to_owned(),
        })
    }
}

/// One client's connection to one system.
// One per client, created once: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Conn {
    Quorate(QuorateConn),
    Redis(RedisConn),
    Etcd(EtcdConn),
}

/// Builds the shared HTTP client: HTTP/1.1 keep-alive, no pipelining (hyper never
/// pipelines), Nagle off.
pub fn http_client() -> Result<reqwest::Client, BenchError> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(300))
        .timeout(Duration::from_secs(15))
        .build()?)
}

/// The base URL of a node given as `host:port` or as a URL.
pub fn base_url(target: &str) -> String {
    if target.starts_with("http") {
        target.trim_end_matches('/').to_owned()
    } else {
        format!("http://{target}")
    }
}

impl Conn {
    /// Connects (and warms up: the connection exists when this returns). With
    /// `follow_leader`, a quorate connection follows the leader hint of every answer.
    pub async fn connect(
        system: System,
        http: &reqwest::Client,
        target: &str,
        client_id: usize,
        params: &Params,
        follow_leader: bool,
    ) -> Result<Self, BenchError> {
        match system {
            System::Quorate => {
                let mut c = QuorateConn::new(http.clone(), target, params);
                if follow_leader {
                    c = c.following_the_leader();
                }
                c.warm_up(params.protocol == Protocol::Stream).await?;
                Ok(Conn::Quorate(c))
            }
            System::Redis => Ok(Conn::Redis(RedisConn::connect(target, params).await?)),
            System::Etcd => Ok(Conn::Etcd(
                EtcdConn::connect(http, target, client_id, params).await?,
            )),
        }
    }

    /// Attempts one slot on `org` and `global`. Also returns how many conflicts were
    /// retried internally (etcd only).
    pub async fn acquire(
        &mut self,
        org: &str,
        lease_id: &str,
    ) -> Result<(Acquired, u32), BenchError> {
        match self {
            Conn::Quorate(c) => c.acquire(org, lease_id).await.map(|a| (a, 0)),
            Conn::Redis(c) => c.acquire(org, lease_id).await.map(|a| (a, 0)),
            Conn::Etcd(c) => c.acquire(org, lease_id).await,
        }
    }

    /// Releases a grant; `Ok(false)` when the system did not know the lease.
    pub async fn release(&mut self, g: &Grant) -> Result<bool, BenchError> {
        match self {
            Conn::Quorate(c) => c.release(g).await,
            Conn::Redis(c) => c.release(g).await,
            Conn::Etcd(c) => c.release(g).await,
        }
    }

    /// One rate check of cost 1; `Ok(true)` if allowed. Returns conflicts retried too.
    pub async fn rate(&mut self, key: &str) -> Result<(bool, u32), BenchError> {
        match self {
            Conn::Quorate(c) => c.rate(key).await.map(|a| (a, 0)),
            Conn::Redis(c) => c.rate(key).await.map(|a| (a, 0)),
            Conn::Etcd(c) => c.rate(key).await,
        }
    }

    /// Cleanup at the end of a run (etcd: revoke the session lease).
    pub async fn close(self) {
        if let Conn::Etcd(c) = self {
            let _ = c.client.lease_revoke(c.lease).await;
        }
    }
}

/// The API base URL of the quorate leader, as `target`'s `/v1/cluster` names it
/// (`leader_api`); waits up to 10 s for a leader to be known.
pub async fn quorate_leader(http: &reqwest::Client, target: &str) -> Result<String, BenchError> {
    let url = format!("{}/v1/cluster", base_url(target));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = check_status(http.get(&url).send().await?).await?;
        let c: proto::ClusterResponse = resp.json().await?;
        if let Some(api) = c.leader_api {
            return Ok(api.trim_end_matches('/').to_owned());
        }
        if std::time::Instant::now() > deadline {
            return Err(BenchError::Protocol(format!("{target} knows no leader")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The quorate leader's node id, as `target`'s `/v1/cluster` names it.
pub async fn quorate_leader_id(http: &reqwest::Client, target: &str) -> Option<u64> {
    let url = format!("{}/v1/cluster", base_url(target));
    let resp = http.get(&url).send().await.ok()?;
    resp.json::<proto::ClusterResponse>().await.ok()?.leader_id
}

/// Sets the limits of `org:hot` and `global` (and the `org:*` default where the system
/// needs it stored). Idempotent.
pub async fn setup(
    system: System,
    http: &reqwest::Client,
    target: &str,
    params: &Params,
) -> Result<(), BenchError> {
    match system {
        System::Quorate => {
            let base = base_url(target);
            for (key, limit) in [
                ("org:hot", params.org_limit),
                ("global", params.global_limit),
            ] {
                let resp = http
                    .put(format!("{base}/v1/limits/{key}"))
                    .json(&proto::PutLimitRequest { limit })
                    .send()
                    .await?;
                check_status(resp).await?;
            }
            // Every other org:* key: a concurrency policy (the generated cluster.toml has
            // the same one; this makes the run independent of that file).
            put_concurrency_policy(http, &base, "bench-orgs", "org:*", params.org_limit).await
        }
        System::Redis => {
            let mut c = resp::Conn::connect(target).await?;
            c.cmd(&[
                b"HSET",
                b"limits",
                b"slots:org:hot",
                params.org_limit.to_string().as_bytes(),
                b"slots:global",
                params.global_limit.to_string().as_bytes(),
            ])
            .await?;
            Ok(())
        }
        System::Etcd => {
            let c = etcd::Client::new(http.clone(), &base_url(target));
            c.put("semlimit/org:hot", params.org_limit.to_string().as_bytes())
                .await?;
            c.put(
                "semlimit/global",
                params.global_limit.to_string().as_bytes(),
            )
            .await?;
            Ok(())
        }
    }
}

/// Puts (creates or replaces) the quorate concurrency policy `name`.
pub(crate) async fn put_concurrency_policy(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    pattern: &str,
    limit: u32,
) -> Result<(), BenchError> {
    let resp = http
        .put(format!("{base}/v1/policies/{name}"))
        .json(&proto::PolicySpec::Concurrency {
            pattern: pattern.into(),
            limit,
        })
        .send()
        .await?;
    check_status(resp).await?;
    Ok(())
}

async fn check_status(resp: reqwest::Response) -> Result<reqwest::Response, BenchError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    Err(BenchError::Status(status.as_u16(), error_code(&body)))
}

/// The `error` field of an error body, or the start of the body.
fn error_code(body: &str) -> String {
    serde_json::from_str::<proto::ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| body.chars().take(80).collect())
}

// ---------------------------------------------------------------------------------------
// quorate

#[derive(Debug)]
pub struct QuorateConn {
    http: reqwest::Client,
    base: String,
    ttl_ms: u64,
    rate: Params,
    /// Leader-direct clients move to whatever node `x-quorate-leader` names.
    follow_leader: bool,
    /// Decisions go over a decision stream (`--protocol stream`), opened by `warm_up`.
    stream: Option<StreamConn>,
}

impl QuorateConn {
    pub fn new(http: reqwest::Client, target: &str, params: &Params) -> Self {
        Self {
            http,
            base: base_url(target),
            ttl_ms: params.ttl_ms,
            rate: params.clone(),
            follow_leader: false,
            stream: None,
        }
    }

    /// This connection follows the leader hint of every answer (leader-direct).
    pub fn following_the_leader(mut self) -> Self {
        self.follow_leader = true;
        self
    }

    /// Moves a leader-direct connection to the leader `hint` names, if that changed
    /// (a leader election during the run). Returns whether it moved.
    fn follow(&mut self, hint: Option<&str>) -> bool {
        let Some(h) = hint.filter(|h| self.follow_leader && *h != self.base) else {
            return false;
        };
        tracing::info!(from = %self.base, to = h, "following the leader hint");
        self.base = h.trim_end_matches('/').to_owned();
        true
    }

    /// One decision: over the stream if there is one, else a JSON POST to `op`'s
    /// route on this node. Any status is returned, with the body.
    async fn call<T: Serialize>(
        &mut self,
        op: StreamOp,
        body: &T,
    ) -> Result<(u16, Vec<u8>), BenchError> {
        if let Some(s) = self.stream.as_mut() {
            let json = serde_json::to_vec(body).map_err(|e| BenchError::Protocol(e.to_string()))?;
            let (status, body) = s.call(op, &json).await?;
            return Ok((status, body.to_vec()));
        }
        let resp = self
            .http
            .post(format!("{}{}", self.base, op.route().route().path))
            .json(body)
            .send()
            .await?;
        let hint = resp
            .headers()
            .get(proto::LEADER_HEADER)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        self.follow(hint.as_deref());
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.to_vec()))
    }

    async fn warm_up(&mut self, stream: bool) -> Result<(), BenchError> {
        if stream {
            let (mut s, hint) = StreamConn::open(&self.base).await?;
            if self.follow(hint.as_deref()) {
                s = StreamConn::open(&self.base).await?.0;
            }
            self.stream = Some(s);
            return Ok(());
        }
        let resp = self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await?;
        check_status(resp).await?;
        Ok(())
    }

    pub async fn acquire(&mut self, org: &str, lease_id: &str) -> Result<Acquired, BenchError> {
        self.acquire_keys(&[org, "global"], lease_id)
            .await
            .map(|granted| {
                if granted {
                    Acquired::granted(org, lease_id)
                } else {
                    Acquired::Denied
                }
            })
    }

    /// Acquire on arbitrary keys; `Ok(false)` on 429.
    pub async fn acquire_keys(
        &mut self,
        keys: &[&str],
        lease_id: &str,
    ) -> Result<bool, BenchError> {
        let req = proto::AcquireRequest {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            lease_id: Some(lease_id.to_owned()),
            ttl_ms: Some(self.ttl_ms),
            holder: None,
            wait_ms: None,
        };
        match self.call(StreamOp::Acquire, &req).await? {
            (200, body) => {
                let g: proto::AcquireGranted = parse(&body)?;
                if !g.granted || g.lease_id != lease_id {
                    return Err(BenchError::Protocol(
                        "acquire: unexpected grant body".into(),
                    ));
                }
                Ok(true)
            }
            (429, _) => Ok(false),
            (status, body) => Err(status_error(status, &body)),
        }
    }

    pub async fn release(&mut self, g: &Grant) -> Result<bool, BenchError> {
        let req = proto::ReleaseRequest {
            lease_id: g.lease_id.clone(),
        };
        match self.call(StreamOp::Release, &req).await? {
            (200, body) => Ok(parse::<proto::ReleaseResponse>(&body)?.released),
            (status, body) => Err(status_error(status, &body)),
        }
    }

    pub async fn rate(&mut self, key: &str) -> Result<bool, BenchError> {
        let req = proto::RateCheckRequest {
            key: Some(key.to_owned()),
            limit: Some(self.rate.rate_limit),
            period_ms: Some(self.rate.rate_period_ms),
            burst: Some(self.rate.rate_burst),
            ..Default::default()
        };
        match self.call(StreamOp::RateCheck, &req).await? {
            (200 | 429, body) => Ok(parse::<proto::RateCheckResponse>(&body)?.allowed),
            (status, body) => Err(status_error(status, &body)),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BenchError> {
    serde_json::from_slice(body).map_err(|e| BenchError::Protocol(format!("bad answer body: {e}")))
}

fn status_error(status: u16, body: &[u8]) -> BenchError {
    BenchError::Status(status, error_code(&String::from_utf8_lossy(body)))
}

// ---------------------------------------------------------------------------------------
// Redis + Lua

#[derive(Debug)]
pub struct RedisConn {
    conn: resp::Conn,
    sha_acquire: String,
    sha_release: String,
    sha_gcra: String,
    ttl_ms: String,
    org_limit: String,
    rate_args: [String; 4],
}

impl RedisConn {
    async fn connect(target: &str, p: &Params) -> Result<Self, BenchError> {
        let addr = target.trim_start_matches("redis://");
        let mut conn = resp::Conn::connect(addr).await?;
        let sha_acquire = conn.script_load(LUA_ACQUIRE).await?;
        let sha_release = conn.script_load(LUA_RELEASE).await?;
        let sha_gcra = conn.script_load(LUA_GCRA).await?;
        Ok(Self {
            conn,
            sha_acquire,
            sha_release,
            sha_gcra,
            ttl_ms: p.ttl_ms.to_string(),
            org_limit: p.org_limit.to_string(),
            rate_args: [
                p.rate_limit.to_string(),
                p.rate_period_ms.to_string(),
                p.rate_burst.to_string(),
                "1".to_owned(),
            ],
        })
    }

    async fn acquire(&mut self, org: &str, lease_id: &str) -> Result<Acquired, BenchError> {
        let zorg = format!("slots:{org}");
        let v = self
            .conn
            .evalsha(
                &self.sha_acquire,
                &[&zorg, "slots:global", "limits"],
                &[lease_id, &self.ttl_ms, &self.org_limit],
            )
            .await?;
        let granted = v
            .as_array()
            .and_then(|a| a.first())
            .and_then(resp::Value::as_int)
            .ok_or_else(|| BenchError::Protocol(format!("acquire reply {v:?}")))?;
        Ok(if granted == 1 {
            Acquired::granted(org, lease_id)
        } else {
            Acquired::Denied
        })
    }

    async fn release(&mut self, g: &Grant) -> Result<bool, BenchError> {
        let zorg = format!("slots:{}", g.org);
        let v = self
            .conn
            .evalsha(&self.sha_release, &[&zorg, "slots:global"], &[&g.lease_id])
            .await?;
        Ok(v.as_int().unwrap_or(0) > 0)
    }

    async fn rate(&mut self, key: &str) -> Result<bool, BenchError> {
        let k = format!("rate:{key}");
        let args: Vec<&str> = self.rate_args.iter().map(String::as_str).collect();
        let v = self.conn.evalsha(&self.sha_gcra, &[&k], &args).await?;
        let allowed = v
            .as_array()
            .and_then(|a| a.first())
            .and_then(resp::Value::as_int)
            .ok_or_else(|| BenchError::Protocol(format!("gcra reply {v:?}")))?;
        Ok(allowed == 1)
    }
}

// ---------------------------------------------------------------------------------------
// etcd

/// Give up an acquire after this many lost compare races (reported as an error).
const ETCD_MAX_CONFLICTS: u32 = 10_000;

#[derive(Debug)]
pub struct EtcdConn {
    client: etcd::Client,
    /// The client's session lease: every holder key is attached to it, so a crashed
    /// client's slots free themselves after its TTL.
    lease: i64,
    org_limit: u32,
    rate: Params,
    sem: EtcdSem,
}

/// Snapshot of one acquire decision's inputs, read at a single revision.
#[derive(Debug, Clone, Copy)]
struct SemState {
    count_org: i64,
    count_global: i64,
    guard_org: i64,
    guard_global: i64,
    limit_org: i64,
    limit_global: i64,
}

/// The limit stored in the value read by op `i` of `r`, or `default` if none is stored.
fn stored_limit(r: &etcd::TxnResponse, i: usize, default: i64) -> Result<i64, BenchError> {
    match r.range(i).value()? {
        None => Ok(default),
        Some(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BenchError::Protocol("bad limit value".into())),
    }
}

fn now_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

impl EtcdConn {
    async fn connect(
        http: &reqwest::Client,
        target: &str,
        _client_id: usize,
        p: &Params,
    ) -> Result<Self, BenchError> {
        let client = etcd::Client::new(http.clone(), &base_url(target));
        // Long enough for any run; revoked at the end (which also drops leftovers).
        let lease = client.lease_grant(900).await?;
        Ok(Self {
            client,
            lease,
            org_limit: p.org_limit,
            rate: p.clone(),
            sem: p.etcd_sem,
        })
    }

    /// The six reads every decision needs, as txn ops (one revision).
    fn read_ops(org: &str) -> Vec<RequestOp> {
        vec![
            RequestOp::Range(RangeRequest::count_prefix(&format!("sem/{org}/"))),
            RequestOp::Range(RangeRequest::count_prefix("sem/global/")),
            RequestOp::Range(RangeRequest::key(&format!("semguard/{org}"))),
            RequestOp::Range(RangeRequest::key("semguard/global")),
            RequestOp::Range(RangeRequest::key(&format!("semlimit/{org}"))),
            RequestOp::Range(RangeRequest::key("semlimit/global")),
        ]
    }

    fn parse_state(&self, r: &etcd::TxnResponse) -> Result<SemState, BenchError> {
        Ok(SemState {
            count_org: r.range(0).count,
            count_global: r.range(1).count,
            guard_org: r.range(2).mod_revision(),
            guard_global: r.range(3).mod_revision(),
            limit_org: stored_limit(r, 4, i64::from(self.org_limit))?,
            // No stored global limit means unlimited.
            limit_global: stored_limit(r, 5, i64::MAX)?,
        })
    }

    /// `_attempt` (the per-attempt lease id other systems use) is not used: like
    /// etcd's own `concurrency.Mutex`, the holder key is named after the client's
    /// session lease (`sem/<key>/<lease hex>`), so the key space stays bounded by the
    /// number of clients instead of growing with every attempt.
    async fn acquire(&mut self, org: &str, _attempt: &str) -> Result<(Acquired, u32), BenchError> {
        let holder = format!("{:x}", self.lease);
        let holder = holder.as_str();
        match self.sem {
            EtcdSem::Guard => self.acquire_guard(org, holder).await,
            EtcdSem::Ticket => self.acquire_ticket(org, holder).await.map(|a| (a, 0)),
        }
    }

    /// Ticket semaphore: one txn puts both holder keys and counts both prefixes at the
    /// revision of those puts. Every live holder created before us is counted, so if
    /// both counts are within the limits we are admitted; otherwise we delete our keys
    /// (denied). Never conflicts; a denial costs a second write.
    async fn acquire_ticket(&mut self, org: &str, holder: &str) -> Result<Acquired, BenchError> {
        let org_key = format!("sem/{org}/{holder}");
        let global_key = format!("sem/global/{holder}");
        let r = self
            .client
            .txn(&TxnRequest {
                compare: vec![],
                success: vec![
                    RequestOp::Put(PutRequest::new(&org_key, b"", Some(self.lease))),
                    RequestOp::Put(PutRequest::new(&global_key, b"", Some(self.lease))),
                    RequestOp::Range(RangeRequest::count_prefix(&format!("sem/{org}/"))),
                    RequestOp::Range(RangeRequest::count_prefix("sem/global/")),
                    RequestOp::Range(RangeRequest::key(&format!("semlimit/{org}"))),
                    RequestOp::Range(RangeRequest::key("semlimit/global")),
                ],
                failure: vec![],
            })
            .await?;
        let admitted = r.range(2).count <= stored_limit(&r, 4, i64::from(self.org_limit))?
            && r.range(3).count <= stored_limit(&r, 5, i64::MAX)?;
        if admitted {
            return Ok(Acquired::granted(org, holder));
        }
        self.client
            .txn(&TxnRequest {
                compare: vec![],
                success: vec![
                    RequestOp::Delete(DeleteRequest::key(&org_key)),
                    RequestOp::Delete(DeleteRequest::key(&global_key)),
                ],
                failure: vec![],
            })
            .await?;
        Ok(Acquired::Denied)
    }

    /// Guard semaphore (see the module docs): read counts + guard revisions, then a
    /// compare-and-swap txn on the guards, retried on conflict.
    async fn acquire_guard(
        &mut self,
        org: &str,
        holder: &str,
    ) -> Result<(Acquired, u32), BenchError> {
        let reads = Self::read_ops(org);
        let first = self
            .client
            .txn(&TxnRequest {
                compare: vec![],
                success: reads.clone(),
                failure: vec![],
            })
            .await?;
        let mut st = self.parse_state(&first)?;
        let mut conflicts = 0u32;
        loop {
            if st.count_org >= st.limit_org || st.count_global >= st.limit_global {
                return Ok((Acquired::Denied, conflicts));
            }
            // Admit only if no other acquire committed since our read: both guards
            // unchanged. (Releases only lower the counts, so they need no guard bump.)
            let txn = TxnRequest {
                compare: vec![
                    Compare::mod_eq(&format!("semguard/{org}"), st.guard_org),
                    Compare::mod_eq("semguard/global", st.guard_global),
                ],
                success: vec![
                    RequestOp::Put(PutRequest::new(
                        &format!("sem/{org}/{holder}"),
                        b"",
                        Some(self.lease),
                    )),
                    RequestOp::Put(PutRequest::new(
                        &format!("sem/global/{holder}"),
                        b"",
                        Some(self.lease),
                    )),
                    RequestOp::Put(PutRequest::new(
                        &format!("semguard/{org}"),
                        holder.as_bytes(),
                        None,
                    )),
                    RequestOp::Put(PutRequest::new("semguard/global", holder.as_bytes(), None)),
                ],
                // On conflict, read the fresh state in the same round trip.
                failure: reads.clone(),
            };
            let r = self.client.txn(&txn).await?;
            if r.succeeded {
                return Ok((Acquired::granted(org, holder), conflicts));
            }
            conflicts += 1;
            if conflicts >= ETCD_MAX_CONFLICTS {
                return Err(BenchError::Protocol(
                    "etcd acquire: too many conflicts".into(),
                ));
            }
            st = self.parse_state(&r)?;
        }
    }

    async fn release(&mut self, g: &Grant) -> Result<bool, BenchError> {
        let r = self
            .client
            .txn(&TxnRequest {
                compare: vec![],
                success: vec![
                    RequestOp::Delete(DeleteRequest::key(&format!("sem/{}/{}", g.org, g.lease_id))),
                    RequestOp::Delete(DeleteRequest::key(&format!("sem/global/{}", g.lease_id))),
                ],
                failure: vec![],
            })
            .await?;
        Ok(r.succeeded)
    }

    /// GCRA by compare-and-swap on the bucket key's mod_revision (client clock).
    async fn rate(&mut self, key: &str) -> Result<(bool, u32), BenchError> {
        let k = format!("rate/{key}");
        let interval = self.rate.rate_period_ms as f64 / f64::from(self.rate.rate_limit);
        let tolerance = interval * f64::from(self.rate.rate_burst);
        let mut cur = self.client.range(&RangeRequest::key(&k)).await?;
        let mut conflicts = 0u32;
        loop {
            let now = now_ms_f64();
            let tat = cur
                .value()?
                .and_then(|v| {
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                })
                .unwrap_or(now)
                .max(now);
            let new_tat = tat + interval;
            if now < new_tat - tolerance {
                return Ok((false, conflicts));
            }
            let r = self
                .client
                .txn(&TxnRequest {
                    compare: vec![Compare::mod_eq(&k, cur.mod_revision())],
                    success: vec![RequestOp::Put(PutRequest::new(
                        &k,
                        format!("{new_tat:.3}").as_bytes(),
                        None,
                    ))],
                    failure: vec![RequestOp::Range(RangeRequest::key(&k))],
                })
                .await?;
            if r.succeeded {
                return Ok((true, conflicts));
            }
            conflicts += 1;
            if conflicts >= ETCD_MAX_CONFLICTS {
                return Err(BenchError::Protocol("etcd rate: too many conflicts".into()));
            }
            cur = r.range(0);
        }
    }
}
