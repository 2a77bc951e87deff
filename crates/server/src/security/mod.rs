//! Who may do what: API tokens and roles, the peer secret, TLS material.
//!
//! [`Security`] is everything secret a node needs, resolved once at startup from the
//! `[auth]` and `[tls]` sections (`ClusterConfig::security`): token and secret files
//! and environment variables are read, certificates parsed, and the result handed to
//! the HTTP layer and the peer client. Nothing re-reads them while the node runs.

pub mod auth;
pub mod tls;

pub use auth::{ApiAuth, Denied, PeerAuth, Role, Secret};
pub use tls::Tls;

/// A node's resolved secrets and TLS material.
#[derive(Debug, Clone)]
pub struct Security {
    /// Tokens and roles of the public API (loopback-only when empty).
    pub api: ApiAuth,
    /// Cluster id and secret every peer request carries and is checked for.
    pub peer: PeerAuth,
    /// Certificate, key and CA, when `[tls]` is configured.
    pub tls: Option<Tls>,
}
