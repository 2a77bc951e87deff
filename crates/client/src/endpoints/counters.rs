//! Counters with an expiry in cluster time (the fixed windows of the Python `limits`
//! storage). A client token may use them. The key is one path segment, encoded by the
//! transport (a `/` in the key is sent as `%2F`).
//!
//! No failure policy applies: an increment that cannot be decided is an error, and
//! one whose answer was lost may have been applied (a retry then counts twice, which
//! can only make a limiter deny sooner).

use quorate_proto::{self as proto, routes::RouteId};

use crate::transport::Request;
use crate::{Client, Error};

impl Client {
    /// Add `amount` to `key`'s counter; a key without a live counter starts at
    /// `amount`, expiring `expiry_ms` after the cluster applies the increment.
    pub async fn counter_incr(
        &self,
        key: &str,
        amount: u32,
        expiry_ms: u64,
    ) -> Result<proto::CounterResponse, Error> {
        let body = proto::CounterIncrRequest {
            amount: Some(amount),
            expiry_ms,
        };
        self.call(
            Request::new(RouteId::CounterIncr)
                .params(&[key])
                .json(&body)?,
        )
        .await
    }

    /// `key`'s counter now (value 0 and no expiry when it has none).
    pub async fn counter(&self, key: &str) -> Result<proto::CounterResponse, Error> {
        self.call_on(RouteId::GetCounter, key).await
    }

    /// Remove `key`'s counter; false when it had no live one.
    pub async fn clear_counter(&self, key: &str) -> Result<bool, Error> {
        let r: proto::DeleteResponse = self.call_on(RouteId::ClearCounter, key).await?;
        Ok(r.deleted)
    }
}
