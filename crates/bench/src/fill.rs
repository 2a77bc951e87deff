//! Builds large quorate state for the memory / snapshot / restart / catch-up
//! measurements: `rate_keys` live rate buckets (16 checks per request, each bucket
//! stays non-idle for `period_ms`) and `leases` live single-key leases spread over
//! `fill:*` keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quorate_proto as proto;
use serde::Serialize;

use crate::systems::{self, QuorateConn};
use crate::BenchError;

/// Checks per rate request while filling (the API's maximum).
const CHECKS_PER_REQUEST: u64 = 16;

#[derive(Debug, Clone)]
pub struct FillSpec {
    pub targets: Vec<String>,
    pub clients: usize,
    pub rate_keys: u64,
    pub leases: u64,
    /// Leases are spread over this many `fill:N` keys.
    pub lease_keys: u64,
    pub ttl_ms: u64,
    pub rate_period_ms: u64,
    /// Prefix of every key and lease id (lets repeated fills add, not overwrite).
    pub tag: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FillResult {
    pub rate_keys: u64,
    pub leases: u64,
    pub errors: u64,
    pub denied: u64,
    pub elapsed_s: f64,
}

pub async fn fill(spec: FillSpec) -> Result<FillResult, BenchError> {
    let http = systems::http_client()?;
    // Room for every lease on its fill key.
    let per_key =
        u32::try_from(spec.leases.div_ceil(spec.lease_keys.max(1)) + 1).unwrap_or(u32::MAX);
    let base = systems::base_url(&spec.targets[0]);
    systems::put_concurrency_policy(&http, &base, "bench-fill", "fill:*", per_key).await?;

    let t0 = Instant::now();
    let next = Arc::new(Next::default());
    let spec = Arc::new(spec);
    let mut handles = Vec::new();
    for i in 0..spec.clients.max(1) {
        let (spec, http, next) = (spec.clone(), http.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let target = &spec.targets[i % spec.targets.len()];
            let mut out = FillResult::default();
            fill_rate_keys(&spec, &http, target, &next.rate, &mut out).await;
            fill_leases(&spec, http, target, &next.lease, &mut out).await;
            out
        }));
    }
    let mut res = FillResult::default();
    for h in handles {
        let out = h.await.map_err(|e| BenchError::Protocol(e.to_string()))?;
        res.rate_keys += out.rate_keys;
        res.leases += out.leases;
        res.errors += out.errors;
        res.denied += out.denied;
    }
    res.elapsed_s = t0.elapsed().as_secs_f64();
    Ok(res)
}

/// The next rate key and the next lease to create, shared by all clients: each takes
/// the next unclaimed ones until both run out.
#[derive(Debug, Default)]
struct Next {
    rate: AtomicU64,
    lease: AtomicU64,
}

/// Creates rate buckets, `CHECKS_PER_REQUEST` per request, until all are claimed.
async fn fill_rate_keys(
    spec: &FillSpec,
    http: &reqwest::Client,
    target: &str,
    next: &AtomicU64,
    out: &mut FillResult,
) {
    let base = systems::base_url(target);
    loop {
        let start = next.fetch_add(CHECKS_PER_REQUEST, Ordering::Relaxed);
        if start >= spec.rate_keys {
            break;
        }
        let end = (start + CHECKS_PER_REQUEST).min(spec.rate_keys);
        let checks = (start..end)
            .map(|k| proto::RateCheck {
                key: format!("{}:user:{k}", spec.tag),
                limit: Some(1),
                period_ms: Some(spec.rate_period_ms),
                ..Default::default()
            })
            .collect();
        let req = proto::RateCheckRequest {
            checks: Some(checks),
            ..Default::default()
        };
        match http
            .post(format!("{base}/v1/rate/check"))
            .json(&req)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                out.rate_keys += end - start;
            }
            Ok(r) if r.status().as_u16() == 429 => {
                let _ = r.bytes().await;
                out.denied += 1;
            }
            _ => out.errors += 1,
        }
    }
}

/// Acquires single-key leases on the `fill:*` keys until all are claimed.
async fn fill_leases(
    spec: &FillSpec,
    http: reqwest::Client,
    target: &str,
    next: &AtomicU64,
    out: &mut FillResult,
) {
    let params = systems::Params {
        org_limit: 0,
        global_limit: 0,
        ttl_ms: spec.ttl_ms,
        rate_limit: 1,
        rate_period_ms: spec.rate_period_ms,
        rate_burst: 1,
        etcd_sem: systems::EtcdSem::Ticket,
        protocol: systems::Protocol::Http,
    };
    let mut conn = QuorateConn::new(http, target, &params);
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= spec.leases {
            break;
        }
        let key = format!("fill:{}", n % spec.lease_keys.max(1));
        let lease = format!("{}-lease-{n}", spec.tag);
        match conn.acquire_keys(&[key.as_str()], &lease).await {
            Ok(true) => out.leases += 1,
            Ok(false) => out.denied += 1,
            Err(_) => out.errors += 1,
        }
    }
}
