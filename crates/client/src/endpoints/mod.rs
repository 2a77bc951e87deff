//! The typed API calls, one file per area of the API: `slots` (acquire, release,
//! renew, usage), `limits` (per-key limits and named policies), `rate` (rate checks),
//! `counters` (counters with an expiry), `allowlist` (keys and addresses exempt from rate
//! limits) and `cluster` (cluster view, readiness, membership).
//!
//! Each call is a thin, typed wrapper: it names its row of the route table, fills
//! the path parameters and body from its arguments and decodes the answer with
//! [`Client::call`]. Failover, URL encoding and error mapping live in `transport`
//! and `error`, so a call here cannot get them subtly different from its neighbours.
//! The two calls with a failure policy (acquire, rate check) apply it here, on top
//! of the transport's [`crate::Error::Unavailable`].

mod allowlist;
mod cluster;
mod counters;
mod limits;
mod rate;
mod slots;

use quorate_proto::routes::RouteId;
use serde::de::DeserializeOwned;

use crate::error::{self, Error};
use crate::transport::Request;
use crate::Client;

impl Client {
    /// Send `req` with failover and decode a 2xx answer as `T` (else a typed error).
    pub(crate) async fn call<T: DeserializeOwned>(&self, req: Request<'_>) -> Result<T, Error> {
        let a = self.inner.transport.exchange(&req).await?;
        error::success(&a)
    }

    /// [`Client::call`] with a longer budget and a body built per attempt: each
    /// attempt may take `attempt` (a waiting acquire is held open by the server),
    /// the call `total` across nodes.
    pub(crate) async fn call_long<T: DeserializeOwned>(
        &self,
        req: Request<'_>,
        attempt: std::time::Duration,
        total: std::time::Duration,
        rebody: &(dyn Fn() -> Vec<u8> + Send + Sync),
    ) -> Result<T, Error> {
        let a = self
            .inner
            .transport
            .exchange_with(&req, Some(attempt), total, Some(rebody))
            .await?;
        error::success(&a)
    }

    /// [`Client::call`] for a route whose only parameter is one path segment.
    async fn call_on<T: DeserializeOwned>(&self, route: RouteId, param: &str) -> Result<T, Error> {
        self.call(Request::new(route).params(&[param])).await
    }
}
