//! `quorate-bench`: the comparative benchmark of quorate against Redis + Lua and etcd
//! (issue #7). See `docs/benchmarks.md` and `scripts/bench.sh`.
//!
//! - [`run`]: the load loop shared by every system (same request count, one request in
//!   flight per client connection, keep-alive).
//! - [`systems`]: how each system implements acquire/release/rate check.
//! - [`resp`] / [`etcd`]: tiny Redis (RESP) and etcd (v3 JSON gateway) clients.
//! - [`fill`]: builds large quorate state (rate keys, live leases) for the size and
//!   recovery measurements.
//! - [`report`]: turns result lines into the markdown report.
//! - [`envoy`]: Envoy `ShouldRateLimit` (gRPC) latency beside `/v1/rate/check`.

pub mod envoy;
pub mod etcd;
pub mod fill;
pub mod report;
pub mod resp;
pub mod run;
pub mod stats;
pub mod stream;
pub mod systems;

/// Errors of the load generator's clients.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("status {0}: {1}")]
    Status(u16, String),
    #[error(transparent)]
    Redis(#[from] resp::RespError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl BenchError {
    /// A short category for error tallies.
    pub fn kind(&self) -> String {
        match self {
            BenchError::Http(e) if e.is_timeout() => "http timeout".into(),
            BenchError::Http(e) if e.is_connect() => "http connect".into(),
            BenchError::Http(_) => "http other".into(),
            BenchError::Status(s, code) => format!("{s} {code}"),
            BenchError::Redis(e) => format!(
                "redis: {}",
                e.to_string().chars().take(60).collect::<String>()
            ),
            BenchError::Protocol(m) => m.chars().take(60).collect(),
            BenchError::Io(e) => format!("io {:?}", e.kind()),
        }
    }
}
