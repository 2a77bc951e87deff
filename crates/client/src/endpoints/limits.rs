//! Limits and policies: per-key concurrency overrides, and named policies (both
//! concurrency patterns and rate policies). Changes need an admin token; reads a
//! client token. Keys and names are path segments, encoded by the transport.

use quorate_proto::{self as proto, routes::RouteId};

use crate::transport::Request;
use crate::{Client, Error};

impl Client {
    pub async fn set_limit(&self, key: &str, limit: u32) -> Result<proto::PutLimitResponse, Error> {
        let body = proto::PutLimitRequest { limit };
        self.call(Request::new(RouteId::PutLimit).params(&[key]).json(&body)?)
            .await
    }

    pub async fn get_limit(&self, key: &str) -> Result<proto::LimitEntry, Error> {
        self.call_on(RouteId::GetLimit, key).await
    }

    pub async fn delete_limit(&self, key: &str) -> Result<bool, Error> {
        let r: proto::DeleteResponse = self.call_on(RouteId::DeleteLimit, key).await?;
        Ok(r.deleted)
    }

    pub async fn list_limits(
        &self,
        prefix: &str,
        max: Option<u32>,
    ) -> Result<proto::ListLimitsResponse, Error> {
        let max = max.map(|m| m.to_string());
        let mut query = vec![("prefix", prefix)];
        if let Some(m) = &max {
            query.push(("max", m));
        }
        self.call(Request::new(RouteId::ListLimits).query(&query))
            .await
    }

    pub async fn policies(&self) -> Result<proto::PoliciesResponse, Error> {
        self.call(Request::new(RouteId::Policies)).await
    }

    pub async fn put_policy(
        &self,
        name: &str,
        spec: &proto::PolicySpec,
    ) -> Result<proto::PolicyEntry, Error> {
        self.call(
            Request::new(RouteId::PutPolicy)
                .params(&[name])
                .json(spec)?,
        )
        .await
    }

    /// Switch a policy between enforcing and shadow mode.
    pub async fn set_policy_mode(
        &self,
        name: &str,
        mode: proto::PolicyMode,
    ) -> Result<proto::PolicyModeResponse, Error> {
        self.call(
            Request::new(RouteId::PutPolicyMode)
                .params(&[name])
                .json(&proto::PolicyModeRequest { mode })?,
        )
        .await
    }

    pub async fn delete_policy(&self, name: &str) -> Result<bool, Error> {
        let r: proto::DeleteResponse = self.call_on(RouteId::DeletePolicy, name).await?;
        Ok(r.deleted)
    }
}
