//! The top layer: everything that speaks HTTP.
//!
//! - [`api`]: the public JSON API on `api_addr`, one file per resource, routed from
//!   the route table in `quorate_proto::routes`;
//! - [`ui`]: the status page's static files (`/ui`), served on the API port from
//!   the same route table;
//! - [`peer`]: the peer protocol on `raft_addr` (Raft RPC and forwarding), served
//!   over the Raft node;
//! - [`error`] and [`extract`]: the API's one error type and the extractors whose
//!   rejections are that error;
//! - [`server`]: the accept loop both ports run on (connection caps, header
//!   deadlines, TLS, graceful stop).
//!
//! Nothing below this layer imports it: the Raft node and the peer client know
//! nothing of axum routes.

pub mod api;
pub mod error;
pub mod extract;
pub mod peer;
pub mod server;
pub mod ui;
