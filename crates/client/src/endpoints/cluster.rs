//! The cluster: its view from any node or one given node, readiness, membership,
//! and a node's sampled activity.
//!
//! [`Client::cluster_at`] and [`Client::ready_at`] ask one node and never fail over:
//! a status display must show each node as it is, including down. Membership
//! changes need an admin token.

use std::time::Duration;

use quorate_proto::{self as proto, routes::RouteId};

use crate::error::{self, Error};
use crate::transport::Request;
use crate::Client;

impl Client {
    /// The cluster as seen by whichever node answers.
    pub async fn cluster(&self) -> Result<proto::ClusterResponse, Error> {
        self.call(Request::new(RouteId::Cluster)).await
    }

    /// The cluster as seen by one specific node (no failover), for status displays.
    pub async fn cluster_at(&self, node_url: &str) -> Result<proto::ClusterResponse, Error> {
        let req = Request::new(RouteId::Cluster);
        let a = self
            .inner
            .transport
            .exchange_at(node_url, &req, None)
            .await?;
        error::success(&a)
    }

    /// The answering node's own sampled activity (grants, denials, 503s, latency,
    /// busiest rate keys): what the status page's charts draw.
    pub async fn stats(&self) -> Result<proto::StatsResponse, Error> {
        self.call(Request::new(RouteId::Stats)).await
    }

    /// `GET /readyz` on one specific node: does it know a leader and has it caught up?
    pub async fn ready_at(&self, node_url: &str) -> bool {
        let req = Request::new(RouteId::Readyz);
        let timeout = Some(Duration::from_secs(1));
        matches!(
            self.inner.transport.exchange_at(node_url, &req, timeout).await,
            Ok(a) if a.status.is_success()
        )
    }

    pub async fn add_member(
        &self,
        req: &proto::AddMemberRequest,
    ) -> Result<proto::MembersResponse, Error> {
        self.call(Request::new(RouteId::AddMember).json(req)?).await
    }

    pub async fn remove_member(&self, id: u64) -> Result<proto::MembersResponse, Error> {
        self.call_on(RouteId::RemoveMember, &id.to_string()).await
    }
}
