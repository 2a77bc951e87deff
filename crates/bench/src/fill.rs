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

#[derive(Debug, Clone, Serialize)]
pub struct FillResult {
    pub rate_keys: u64,
    pub leases: u64,
    pub errors: u64,
    pub denied: u64,
    pub elapsed_s: f64,
}

pub async fn fill(spec: FillSpec) -> Result<FillResult, BenchError> {
    let http = systems::http_client()?;
    let base = &spec.targets[0];
    let base = if base.starts_with("http") {
        base.clone()
    } else {
        format!("http://{base}")
    };
    // Room for every lease on its fill key.
    let per_key =
        u32::try_from(spec.leases.div_ceil(spec.lease_keys.max(1)) + 1).unwrap_or(u32::MAX);
    let resp = http
        .put(format!("{base}/v1/policies/bench-fill"))
        .json(&proto::PolicySpec::Concurrency {
            pattern: "fill:*".into(),
            limit: per_key,
        })
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(BenchError::Status(
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        ));
    }

    let t0 = Instant::now();
    let rate_next = Arc::new(AtomicU64::new(0));
    let lease_next = Arc::new(AtomicU64::new(0));
    let spec = Arc::new(spec);
    let mut handles = Vec::new();
    for i in 0..spec.clients.max(1) {
        let spec = spec.clone();
        let http = http.clone();
        let rate_next = rate_next.clone();
        let lease_next = lease_next.clone();
        handles.push(tokio::spawn(async move {
            let target = &spec.targets[i % spec.targets.len()];
            let base = if target.starts_with("http") {
                target.clone()
            } else {
                format!("http://{target}")
            };
            let (mut ok_rate, mut ok_lease, mut errors, mut denied) = (0u64, 0u64, 0u64, 0u64);
            loop {
                let start = rate_next.fetch_add(CHECKS_PER_REQUEST, Ordering::Relaxed);
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
                        ok_rate += end - start;
                    }
                    Ok(r) if r.status().as_u16() == 429 => {
                        let _ = r.bytes().await;
                        denied += 1;
                    }
                    _ => errors += 1,
                }
            }
            let params = systems::Params {
                org_limit: 0,
                global_limit: 0,
                ttl_ms: spec.ttl_ms,
                rate_limit: 1,
                rate_period_ms: spec.rate_period_ms,
                rate_burst: 1,
                etcd_sem: systems::EtcdSem::Ticket,
            };
            let conn = QuorateConn::new(http.clone(), target, &params);
            loop {
                let n = lease_next.fetch_add(1, Ordering::Relaxed);
                if n >= spec.leases {
                    break;
                }
                let key = format!("fill:{}", n % spec.lease_keys.max(1));
                let lease = format!("{}-lease-{n}", spec.tag);
                match conn.acquire_keys(&[key.as_str()], &lease).await {
                    Ok(true) => ok_lease += 1,
                    Ok(false) => denied += 1,
                    Err(_) => errors += 1,
                }
            }
            (ok_rate, ok_lease, errors, denied)
        }));
    }
    let mut res = FillResult {
        rate_keys: 0,
        leases: 0,
        errors: 0,
        denied: 0,
        elapsed_s: 0.0,
    };
    for h in handles {
        let (r, l, e, d) = h.await.map_err(|e| BenchError::Protocol(e.to_string()))?;
        res.rate_keys += r;
        res.leases += l;
        res.errors += e;
        res.denied += d;
    }
    res.elapsed_s = t0.elapsed().as_secs_f64();
    Ok(res)
}
