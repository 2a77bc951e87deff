//! Talking to other nodes: the wire contract at the bottom, the client over it.
//!
//! - [`protocol`]: paths, headers, codec and message types — imports nothing that
//!   sends or serves them.
//! - [`client`]: the one pooled HTTP client a node uses for every peer request.
//! - [`stream`]: an upgraded connection carrying request and answer frames, opened
//!   through that client.
//! - [`raft_network`]: openraft's `RaftNetwork` over that client (appends on streams).
//!
//! The serving side of the protocol is `http::peer`, on top; the Raft node's
//! forwarding (`raft::routing`) uses the client. Neither is imported from here.

pub mod client;
pub mod protocol;
pub mod raft_network;
pub mod stream;

pub use client::{PeerClient, PeerError};
pub use stream::{ExchangeError, PeerStream};
