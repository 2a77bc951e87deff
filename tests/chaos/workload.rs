//! The clients of a chaos run: many concurrent workers (tokio tasks sharing one
//! keep-alive `reqwest` client) calling random nodes, each operation recorded in the
//! [`Recorder`] with its invoke and return time and outcome.
//!
//! - *Lease workers* acquire a key of limit 1 or 3, sometimes together with the
//!   `global` key shared by all, hold the lease briefly, sometimes renew it or read
//!   their own key back, and release it — or abandon it (a crashed holder) so that it
//!   expires. An acquire with an unknown outcome is retried with the same lease_id, as
//!   real clients should (a live lease_id returns the original grant); one that stays
//!   unknown is released on a best-effort basis.
//!   About a third of the acquires *wait* (`wait_ms` 0.3-2 s) in the keys' FIFO
//!   queue instead of being denied at once.
//! - *Readers* read random keys linearizably (`GET /v1/slots/{key}`): leases and
//!   queue, which is how the checker sees who was waiting when.
//! - *Rate workers* make inline rate checks; two workers share each key.
//!
//! Which node each request goes to is random among the current members (including
//! ones that are down: real clients do not know either). Every other worker sends its
//! decisions (acquires, releases, renewals, rate checks) as frames on a decision
//! stream (`POST /v1/stream`) to that node instead of HTTP requests, so streams are
//! checked under the same faults; any failure on a stream is an unknown outcome, and
//! the stream is dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use quorate_proto::stream::{self as wire, StreamOp, LEN_BYTES, STREAM_PROTOCOL};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::checker::RateModel;
use crate::faults::Rng;
use crate::history::{Call, Micros, Op, Outcome, Recorder};

/// Current members' API addresses, shared with the fault injector (which replaces
/// nodes).
#[derive(Clone, Debug, Default)]
pub struct Targets(Arc<RwLock<BTreeMap<u64, String>>>);

impl Targets {
    pub fn set(&self, id: u64, api_addr: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, api_addr.to_string());
    }

    pub fn remove(&self, id: u64) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    fn pick(&self, rng: &mut Rng) -> (u64, String) {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let i = rng.below(map.len() as u64) as usize;
        let (id, addr) = map.iter().nth(i).expect("at least one member");
        (*id, addr.clone())
    }
}

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub seed: u64,
    /// Prefix of every lease_id (unique per run).
    pub run: String,
    pub lease_workers: usize,
    pub readers: usize,
    /// Workers per rate key.
    pub rate_workers_per_key: usize,
    /// Keys a lease worker picks from (each with its limit).
    pub keys: Vec<String>,
    /// The key shared by everyone, taken together with another in some acquires.
    pub global: String,
    pub rate_keys: BTreeMap<String, RateModel>,
    pub ttl_ms: u64,
    /// Client-side timeout of one request (beyond it: unknown).
    pub timeout: Duration,
}

/// Running workers; [`Workload::stop`] ends them after their current operation.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    pub fn spawn(cfg: WorkloadConfig, targets: Targets, rec: Recorder) -> Workload {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(cfg.timeout)
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .build()
            .expect("http client");
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = Arc::new(cfg);
        let mut tasks = Vec::new();
        let mut process = 0;
        let mut next = |kind: u64| {
            process += 1;
            Client {
                process,
                rng: Rng::new(cfg.seed ^ (kind << 32) ^ process as u64),
                http: http.clone(),
                targets: targets.clone(),
                rec: rec.clone(),
                cfg: cfg.clone(),
                stop: stop.clone(),
                streams: process % 2 == 0,
                stream: None,
            }
        };
        for _ in 0..cfg.lease_workers {
            tasks.push(tokio::spawn(next(1).lease_loop()));
        }
        for _ in 0..cfg.readers {
            tasks.push(tokio::spawn(next(2).read_loop()));
        }
        for key in cfg.rate_keys.keys() {
            for _ in 0..cfg.rate_workers_per_key {
                tasks.push(tokio::spawn(next(3).rate_loop(key.clone())));
            }
        }
        Workload { stop, tasks }
    }

    /// Ask every worker to stop and wait for them (each finishes its current
    /// operation, bounded by the client timeout).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Client {
    process: usize,
    rng: Rng,
    http: reqwest::Client,
    targets: Targets,
    rec: Recorder,
    cfg: Arc<WorkloadConfig>,
    stop: Arc<AtomicBool>,
    /// This worker sends its decisions on decision streams.
    streams: bool,
    /// Its open stream and the node it goes to.
    stream: Option<(u64, TcpStream)>,
}

/// A response as the workload sees it: status and JSON body, or why there was none.
type Response = Result<(StatusCode, Value), String>;

impl Client {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    async fn pause(&mut self, min_ms: u64, max_ms: u64) {
        let ms = min_ms + self.rng.below(max_ms - min_ms + 1);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Send one request to a random member and record it.
    async fn run(&mut self, call: Call) -> Outcome {
        let (node, addr) = self.targets.pick(&mut self.rng);
        let base = format!("http://{addr}");
        let req = match &call {
            Call::Acquire {
                lease_id,
                keys,
                ttl_ms,
                wait_ms,
            } => self
                .http
                .post(format!("{base}/v1/slots/acquire"))
                // A waiting request is held open up to its wait, and then decided.
                .timeout(self.cfg.timeout + Duration::from_millis(*wait_ms))
                .json(&json!({
                    "keys": keys, "lease_id": lease_id, "ttl_ms": ttl_ms,
                    "holder": format!("p{}", self.process), "wait_ms": wait_ms,
                })),
            Call::Release { lease_id } => self
                .http
                .post(format!("{base}/v1/slots/release"))
                .json(&json!({ "lease_id": lease_id })),
            Call::Renew { lease_id, ttl_ms } => self
                .http
                .post(format!("{base}/v1/slots/renew"))
                .json(&json!({ "lease_id": lease_id, "ttl_ms": ttl_ms })),
            Call::Read { key } => self.http.get(format!("{base}/v1/slots/{key}")),
            Call::Rate { key } => {
                let m = self.cfg.rate_keys[key];
                self.http
                    .post(format!("{base}/v1/rate/check"))
                    .json(&json!({
                        "key": key, "limit": m.limit, "period_ms": m.period_ms, "burst": m.burst
                    }))
            }
        };
        let invoke = self.rec.now();
        let streamed = match &call {
            _ if !self.streams => None,
            Call::Acquire { wait_ms, .. } => Some((
                StreamOp::Acquire,
                self.cfg.timeout + Duration::from_millis(*wait_ms),
            )),
            Call::Release { .. } => Some((StreamOp::Release, self.cfg.timeout)),
            Call::Renew { .. } => Some((StreamOp::Renew, self.cfg.timeout)),
            Call::Rate { .. } => Some((StreamOp::RateCheck, self.cfg.timeout)),
            Call::Read { .. } => None,
        };
        if let Some((op, timeout)) = streamed {
            let body = req
                .build()
                .ok()
                .and_then(|r| r.body().and_then(|b| b.as_bytes()).map(<[u8]>::to_vec))
                .unwrap_or_default();
            let resp =
                match tokio::time::timeout(timeout, self.on_stream(node, &addr, op, &body)).await {
                    Ok(r) => r,
                    Err(_) => Err("client timeout (stream)".to_string()),
                };
            if resp.is_err() {
                // An answer may still come on it: never reuse a stream after a failure.
                self.stream = None;
            }
            return self.record(call, node, invoke, resp, true);
        }
        let resp: Response = match req.send().await {
            Ok(r) => {
                let status = r.status();
                match r.json::<Value>().await {
                    Ok(v) => Ok((status, v)),
                    Err(e) => Err(format!("{status}, body lost: {e}")),
                }
            }
            Err(e) => Err(if e.is_timeout() {
                "client timeout".to_string()
            } else if e.is_connect() {
                "connection refused".to_string()
            } else {
                format!("transport: {e}")
            }),
        };
        self.record(call, node, invoke, resp, false)
    }

    fn record(
        &mut self,
        call: Call,
        node: u64,
        invoke: Micros,
        resp: Response,
        streamed: bool,
    ) -> Outcome {
        let ret = self.rec.now();
        let outcome = classify(&call, resp);
        self.rec.push(Op {
            process: self.process,
            node,
            invoke,
            ret,
            call,
            outcome: outcome.clone(),
            streamed,
        });
        outcome
    }

    /// One decision on this worker's stream to `node` (opened first if it has none
    /// to that node): the route's status and JSON body.
    async fn on_stream(&mut self, node: u64, addr: &str, op: StreamOp, body: &[u8]) -> Response {
        if self.stream.as_ref().map(|(n, _)| *n) != Some(node) {
            self.stream = Some((node, open_stream(addr).await?));
        }
        let Some((_, io)) = self.stream.as_mut() else {
            return Err("no stream".to_string());
        };
        let mut frame = Vec::with_capacity(body.len() + 16);
        wire::put_request(&mut frame, 1, op, body);
        io.write_all(&frame)
            .await
            .map_err(|e| format!("stream write: {e}"))?;
        let mut prefix = [0u8; LEN_BYTES];
        io.read_exact(&mut prefix)
            .await
            .map_err(|e| format!("stream read: {e}"))?;
        let mut payload = vec![0u8; wire::payload_len(prefix)];
        io.read_exact(&mut payload)
            .await
            .map_err(|e| format!("stream read: {e}"))?;
        let a = wire::answer(&payload).map_err(|e| e.to_string())?;
        if a.id != 1 {
            return Err(format!("stream answer under id {} ({})", a.id, a.status));
        }
        let status = StatusCode::from_u16(a.status).map_err(|e| e.to_string())?;
        let value = serde_json::from_slice(a.body).map_err(|e| format!("{status}, body: {e}"))?;
        Ok((status, value))
    }

    async fn lease_loop(mut self) {
        let mut n = 0u64;
        while !self.stopping() {
            n += 1;
            let lease_id = format!("{}-p{}-{n}", self.cfg.run, self.process);
            let key = self.cfg.keys[self.rng.below(self.cfg.keys.len() as u64) as usize].clone();
            let keys = if self.rng.chance(30) {
                vec![key, self.cfg.global.clone()]
            } else {
                vec![key]
            };
            let wait_ms = if self.rng.chance(33) {
                300 + self.rng.below(1700)
            } else {
                0
            };
            let acquire = Call::Acquire {
                lease_id: lease_id.clone(),
                keys: keys.clone(),
                ttl_ms: self.cfg.ttl_ms,
                wait_ms,
            };
            let mut granted = false;
            let mut unknown = false;
            for attempt in 0..4 {
                if attempt > 0 {
                    self.pause(50, 250).await;
                }
                match self.run(acquire.clone()).await {
                    Outcome::Granted { .. } => {
                        granted = true;
                        break;
                    }
                    Outcome::Unknown(_) => unknown = true,
                    _ => break,
                }
                if self.stopping() {
                    break;
                }
            }
            if !granted {
                if unknown {
                    // It may have been granted after all: give the slot back.
                    self.release(&lease_id).await;
                } else {
                    self.pause(5, 40).await;
                }
                continue;
            }
            self.pause(5, 120).await;
            if self.rng.chance(30) {
                let renew = Call::Renew {
                    lease_id: lease_id.clone(),
                    ttl_ms: self.cfg.ttl_ms,
                };
                for _ in 0..2 {
                    if !matches!(self.run(renew.clone()).await, Outcome::Unknown(_)) {
                        break;
                    }
                }
                self.pause(5, 60).await;
            }
            if self.rng.chance(20) {
                self.run(Call::Read {
                    key: keys[0].clone(),
                })
                .await;
            }
            if self.rng.chance(4) {
                continue; // abandoned: the lease expires
            }
            self.release(&lease_id).await;
        }
    }

    /// Release, retrying unknown outcomes a few times (release is idempotent).
    async fn release(&mut self, lease_id: &str) {
        for attempt in 0..3 {
            if attempt > 0 {
                self.pause(50, 250).await;
            }
            let call = Call::Release {
                lease_id: lease_id.to_string(),
            };
            if !matches!(self.run(call).await, Outcome::Unknown(_)) {
                return;
            }
        }
    }

    async fn read_loop(mut self) {
        let mut keys = self.cfg.keys.clone();
        keys.push(self.cfg.global.clone());
        while !self.stopping() {
            let key = keys[self.rng.below(keys.len() as u64) as usize].clone();
            self.run(Call::Read { key }).await;
            self.pause(10, 60).await;
        }
    }

    async fn rate_loop(mut self, key: String) {
        while !self.stopping() {
            self.run(Call::Rate { key: key.clone() }).await;
            self.pause(5, 40).await;
        }
    }
}

/// Map a response onto the history's outcomes.
/// A decision stream to `addr`: the upgrade sent and its 101 read.
async fn open_stream(addr: &str) -> Result<TcpStream, String> {
    let mut io = TcpStream::connect(addr)
        .await
        .map_err(|_| "connection refused".to_string())?;
    let _ = io.set_nodelay(true);
    let req = format!(
        "POST /v1/stream HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: {STREAM_PROTOCOL}\r\ncontent-length: 0\r\n\r\n"
    );
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("stream upgrade: {e}"))?;
    // Byte by byte, so nothing after the head (the first answer) is read here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            return Err("stream upgrade: head too long".to_string());
        }
        let mut b = [0u8; 1];
        io.read_exact(&mut b)
            .await
            .map_err(|e| format!("stream upgrade: {e}"))?;
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    match head.split_whitespace().nth(1) {
        Some("101") => Ok(io),
        other => Err(format!("stream upgrade refused: {other:?}")),
    }
}

fn classify(call: &Call, resp: Response) -> Outcome {
    let (status, body) = match resp {
        Ok(r) => r,
        Err(why) => return Outcome::Unknown(why),
    };
    let code = body["error"].as_str().unwrap_or("");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return Outcome::Unknown(format!("503 {code}"));
    }
    let unexpected = || Outcome::Unexpected(format!("{status} {body}"));
    match call {
        Call::Acquire { .. } => match status {
            StatusCode::OK => match body["fencing_token"].as_u64() {
                Some(token) if body["granted"] == json!(true) => Outcome::Granted { token },
                _ => unexpected(),
            },
            StatusCode::TOO_MANY_REQUESTS if code == "limit_exceeded" => Outcome::Denied,
            _ => unexpected(),
        },
        Call::Release { .. } => match (status, body["released"].as_bool()) {
            (StatusCode::OK, Some(released)) => Outcome::Released { released },
            _ => unexpected(),
        },
        Call::Renew { .. } => match status {
            StatusCode::OK => Outcome::Renewed,
            StatusCode::NOT_FOUND if code == "lease_not_found" => Outcome::LeaseNotFound,
            _ => unexpected(),
        },
        Call::Read { .. } => match (
            status,
            body["leases"].as_array(),
            body["queue"]["waiters"].as_array(),
        ) {
            (StatusCode::OK, Some(leases), Some(waiters)) => Outcome::Leases(
                leases
                    .iter()
                    .map(|l| {
                        (
                            l["lease_id"].as_str().unwrap_or("?").to_string(),
                            l["fencing_token"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect(),
                waiters
                    .iter()
                    .map(|w| w["lease_id"].as_str().unwrap_or("?").to_string())
                    .collect(),
            ),
            _ => unexpected(),
        },
        Call::Rate { .. } => match status {
            StatusCode::OK if body["allowed"] == json!(true) => Outcome::Allowed,
            StatusCode::TOO_MANY_REQUESTS if code == "rate_limited" => Outcome::Denied,
            _ => unexpected(),
        },
    }
}
