//! `quorate-bench envoy`: latency of Envoy's `ShouldRateLimit` (gRPC) beside the same
//! decision through `POST /v1/rate/check` (HTTP), on one running cluster.
//!
//! Envoy gives the rate limit service 20 ms by default; this measures whether quorate
//! answers within that under load. Both sides get the same closed loop: `clients`
//! concurrent callers, each sending its next request when the last one is answered,
//! `requests` in all, spread over `keys` distinct descriptor values (one
//! `remote_address` each) so most requests are allowed and every one is a
//! replicated write. gRPC calls go to `--grpc` (one HTTP/2 connection per client, as
//! Envoy keeps a few long-lived connections); HTTP calls to `--http` with an inline
//! limit of the same size (`--limit` per hour). Point both at the leader to measure
//! the service, or at a follower to include forwarding.
//!
//! The domain must be configured with a `remote_address` descriptor (see
//! `scripts/bench_envoy.sh`, which writes such a cluster and runs this).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use tokio::sync::Mutex;

use crate::stats::Histogram;

#[derive(Debug, Clone, clap::Args)]
pub struct EnvoyArgs {
    /// gRPC address of a node (`host:port`).
    #[arg(long)]
    pub grpc: String,
    /// HTTP API address of a node (`host:port`).
    #[arg(long)]
    pub http: String,
    /// The descriptor domain configured on the cluster.
    #[arg(long, default_value = "bench")]
    pub domain: String,
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub clients: Vec<usize>,
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Limit per hour of the HTTP checks (match the domain's `remote_address` limit).
    #[arg(long, default_value_t = 1_000_000)]
    pub limit: u32,
}

/// One measured cell.
#[derive(Debug)]
pub struct Cell {
    pub protocol: &'static str,
    pub clients: usize,
    pub ok: usize,
    pub over_limit: usize,
    pub errors: usize,
    pub secs: f64,
    pub hist: Histogram,
}

impl Cell {
    /// A markdown row: protocol, clients, ops/s, p50, p99, p99.9, max, ok/over/errors.
    pub fn row(&mut self) -> String {
        let n = self.ok + self.over_limit + self.errors;
        format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {}/{}/{} |",
            self.protocol,
            self.clients,
            n as f64 / self.secs,
            self.hist.quantile_ms(0.5),
            self.hist.quantile_ms(0.99),
            self.hist.quantile_ms(0.999),
            self.hist.quantile_ms(1.0),
            self.ok,
            self.over_limit,
            self.errors
        )
    }
}

/// How one call was answered.
enum Answer {
    Ok,
    OverLimit,
    Error,
}

#[derive(Default)]
struct Tally {
    ok: usize,
    over: usize,
    errors: usize,
    hist: Histogram,
}

/// The closed loop both protocols share: one task per worker state in `workers`, each
/// taking the next request number and calling `call(worker, i)` until `requests` are
/// taken; the worker state (a connection) is handed back with each answer.
async fn closed_loop<W, F, Fut>(
    protocol: &'static str,
    workers: Vec<W>,
    requests: usize,
    call: F,
) -> anyhow::Result<Cell>
where
    W: Send + 'static,
    F: Fn(W, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (W, Answer)> + Send,
{
    let clients = workers.len();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in workers {
        let (next, tally, call) = (next.clone(), tally.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Tally::default();
            let mut worker = worker;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let t = Instant::now();
                let (w, answer) = call(worker, i).await;
                worker = w;
                mine.hist.record(t.elapsed());
                match answer {
                    Answer::Ok => mine.ok += 1,
                    Answer::OverLimit => mine.over += 1,
                    Answer::Error => mine.errors += 1,
                }
            }
            let mut t = tally.lock().await;
            t.ok += mine.ok;
            t.over += mine.over;
            t.errors += mine.errors;
            t.hist.merge(mine.hist);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let t = std::mem::take(&mut *tally.lock().await);
    Ok(Cell {
        protocol,
        clients,
        ok: t.ok,
        over_limit: t.over,
        errors: t.errors,
        secs,
        hist: t.hist,
    })
}

/// The `remote_address` value of request `i` (the same buckets on both protocols).
fn address(a: &EnvoyArgs, i: usize) -> String {
    format!("10.0.{}.{}", (i % a.keys) / 256, i % 256)
}

async fn grpc_cell(a: &EnvoyArgs, clients: usize) -> anyhow::Result<Cell> {
    let mut workers = Vec::with_capacity(clients);
    for _ in 0..clients {
        let rl = RateLimitServiceClient::connect(format!("http://{}", a.grpc))
            .await
            .context("connect to the gRPC listener")?;
        workers.push(rl);
    }
    let a = a.clone();
    closed_loop(
        "gRPC ShouldRateLimit",
        workers,
        a.requests,
        move |mut rl, i| {
            let req = RateLimitRequest {
                domain: a.domain.clone(),
                descriptors: vec![RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "remote_address".into(),
                        value: address(&a, i),
                    }],
                    ..RateLimitDescriptor::default()
                }],
                hits_addend: 1,
            };
            async move {
                let answer = match rl.should_rate_limit(req).await {
                    Ok(r) if r.get_ref().overall_code == Code::Ok as i32 => Answer::Ok,
                    Ok(_) => Answer::OverLimit,
                    Err(_) => Answer::Error,
                };
                (rl, answer)
            }
        },
    )
    .await
}

async fn http_cell(a: &EnvoyArgs, clients: usize) -> anyhow::Result<Cell> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("http://{}/v1/rate/check", a.http);
    let a = a.clone();
    let workers = vec![(); clients];
    closed_loop("HTTP /v1/rate/check", workers, a.requests, move |(), i| {
        let body = serde_json::json!({
            "key": format!("bench:ip:{}", address(&a, i)),
            "limit": a.limit,
            "period_ms": 3_600_000,
        });
        let sent = http.post(&url).json(&body).send();
        async move {
            let answer = match sent.await.map(|r| r.status().as_u16()) {
                Ok(200) => Answer::Ok,
                Ok(429) => Answer::OverLimit,
                _ => Answer::Error,
            };
            ((), answer)
        }
    })
    .await
}

/// The leader installs the `[envoy]` table shortly after the cluster is ready: poll
/// (a descriptor value outside the measured ones) until the domain is known.
async fn wait_for_domain(a: &EnvoyArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rl = RateLimitServiceClient::connect(format!("http://{}", a.grpc)).await?;
    loop {
        let req = RateLimitRequest {
            domain: a.domain.clone(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "remote_address".into(),
                    value: "probe".into(),
                }],
                ..RateLimitDescriptor::default()
            }],
            hits_addend: 1,
        };
        match rl.should_rate_limit(req).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => anyhow::bail!("domain never served: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Run every client count on both protocols (HTTP first, then gRPC) and return the
/// markdown table.
pub async fn compare(a: &EnvoyArgs) -> anyhow::Result<String> {
    wait_for_domain(a).await?;
    let mut out = String::from(
        "| protocol | clients | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | ok/over/errors |\n|---|---|---|---|---|---|---|---|\n",
    );
    for &clients in &a.clients {
        for mut cell in [http_cell(a, clients).await?, grpc_cell(a, clients).await?] {
            let row = cell.row();
            println!("{row}");
            out.push_str(&row);
            out.push('\n');
        }
    }
    Ok(out)
}
