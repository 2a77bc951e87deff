//! Who may do what: API tokens and roles, peer authentication, TLS material.
//!
//! [`Security`] is everything secret a node needs, resolved once at startup from the
//! `[auth]` and `[tls]` sections (`ClusterConfig::security`): token and secret files
//! and environment variables are read, certificates parsed, the peer links checked
//! ([`links`]), and the result handed to the HTTP layer and the peer client. Nothing
//! re-reads them while the node runs.
//!
//! - [`auth`]: API tokens and roles, open mode, the peer rules ([`PeerAuth`]).
//! - [`signing`]: HMAC signatures of peer requests, freshness, replay store.
//! - [`links`]: which peer links may run without TLS (loopback only).
//! - [`tls`]: server TLS for the API, mutual TLS for the Raft port and peer client.
//!
//! `docs/security.md` is the threat model: who can reach what, and what stops them.

pub mod auth;
pub mod links;
pub mod signing;
pub mod tls;

pub use auth::{permits, ApiAuth, Denied, PeerAuth, Role, Secret};
pub use signing::PeerRefusal;
pub use tls::Tls;

/// A node's resolved secrets and TLS material.
#[derive(Debug, Clone)]
pub struct Security {
    /// Tokens and roles of the public API (open mode when empty).
    pub api: ApiAuth,
    /// Cluster id and secret every peer request carries / is signed with.
    pub peer: PeerAuth,
    /// Certificate, key and CA, when `[tls]` is configured.
    pub tls: Option<Tls>,
}
