//! # quorate-client: call a quorate cluster from Rust
//!
//! The client talks to any node over HTTP using only the [`quorate_proto`] wire types
//! (it never depends on openraft). It is built so services stop hand-rolling the parts
//! that went wrong in the seeds this project came from:
//!
//! - **Slots are released on every path.** [`Client::acquire`] returns a
//!   [`SlotGuard`]; dropping it (normal return, `?`, panic) releases the lease, and
//!   while it is held it renews itself in the background at a third of the TTL.
//! - **Retries never double-book.** The lease id is chosen before the first attempt
//!   and reused by every retry, so a response lost to a timeout cannot take a second
//!   slot: the cluster answers a retry with the original grant.
//! - **Leader first, any node will do.** Every answer names the current leader
//!   (`x-quorate-leader`); the client sends the next call there, saving the hop a
//!   follower would forward it over, and follows the hint when it changes. When
//!   the hinted node fails it tries the configured nodes in turn, remembers the one
//!   that answered, and backs off on 503 or connection errors until its deadline.
//! - **Decisions can share one connection.** With
//!   [`ClientConfig::decision_stream`](ClientConfig::decision_stream()) on, acquires
//!   (waiting ones too), releases, renewals and rate checks travel as frames on one
//!   multiplexed decision stream (`POST /v1/stream`, `quorate-api/1`) per client,
//!   shared by every task using it, instead of one HTTP request each: the node pays
//!   the per-request HTTP cost once per connection. The stream goes to the node the
//!   call would go to (leader hint first), is opened on first use and reopened when
//!   it breaks. Answers, errors, retries, the deadline and the failure policy are
//!   exactly those of HTTP: a decision whose frame never left is sent over HTTP
//!   instead, one whose answer was lost with the stream is retried on the next node
//!   with the same lease id, as after a lost HTTP response. `https://` nodes (the
//!   stream is plain TCP) and nodes that refuse the upgrade (releases before it) get
//!   HTTP requests; a refusal is remembered for 30 s. Stream answers carry no
//!   leader hint, so while the stream is used the client asks its node for the
//!   hint in the background now and then, and the stream follows the leader. Off
//!   by default.
//! - **Failure policy is the caller's choice.** [`FailurePolicy::Closed`] (default)
//!   denies when the cluster is unreachable; [`FailurePolicy::Open`] allows, logs a
//!   warning and counts it ([`Client::fail_open_count`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), quorate_client::Error> {
//! use std::time::Duration;
//! use quorate_client::{Client, ClientConfig};
//!
//! let client = Client::new(ClientConfig::new(["http://127.0.0.1:7101", "http://127.0.0.1:7102"]))?;
//! // At most N runs per org and M in total, in one atomic step:
//! let guard = client.acquire(&["org:acme", "global"], Duration::from_secs(60)).await?;
//! println!("running with fencing token {:?}", guard.fencing_token());
//! // ... do the work; the guard renews itself meanwhile ...
//! guard.release().await?; // or just drop it
//!
//! let rate = client.check_rate("user:42", "user", None).await?;
//! if !rate.allowed {
//!     println!("retry in {} ms", rate.retry_after_ms);
//! }
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! `config` holds the settings ([`ClientConfig`]), `error` the one [`Error`] type and
//! the mapping of API error bodies onto it, `request` a call's description and the
//! only URL builder (from the route table in [`quorate_proto::routes`]), `transport`
//! the node failover loop,
//! `endpoints` one typed method per API call (slots, limits and policies, rate,
//! cluster), `guard` the self-renewing [`SlotGuard`], and `stream` the decision
//! stream the transport sends decisions on when it is turned on.

mod config;
mod endpoints;
mod error;
mod guard;
mod request;
mod stream;
mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use config::{ClientConfig, FailurePolicy};
pub use error::Error;
pub use guard::SlotGuard;

struct Inner {
    transport: transport::Transport,
    cfg: ClientConfig,
    fail_open: AtomicU64,
}

/// A handle to a cluster. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.inner.cfg.nodes)
            .finish()
    }
}

impl Client {
    /// Check `cfg` (at least one node, every node an `http://` or `https://` URL, a
    /// readable CA certificate) and build the connection pool.
    pub fn new(cfg: ClientConfig) -> Result<Self, Error> {
        let transport = transport::Transport::new(&cfg)?;
        Ok(Self {
            inner: Arc::new(Inner {
                transport,
                cfg,
                fail_open: AtomicU64::new(0),
            }),
        })
    }

    /// The leader's API base URL as the cluster last named it (the
    /// `x-quorate-leader` header of any answer), which calls are sent to first; `None`
    /// before the first answer or after the hinted node failed.
    pub fn leader_hint(&self) -> Option<String> {
        self.inner
            .transport
            .leader_hint()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
    }

    /// How many times the fail-open policy allowed something the cluster did not.
    pub fn fail_open_count(&self) -> u64 {
        self.inner.fail_open.load(Ordering::Relaxed)
    }

    /// True when an unreachable cluster should be answered by allowing; counts it.
    /// Callers log the warning themselves (they know what was allowed).
    fn fails_open(&self) -> bool {
        let open = self.inner.cfg.failure_policy == FailurePolicy::Open;
        if open {
            self.inner.fail_open.fetch_add(1, Ordering::Relaxed);
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn config_is_checked() {
        assert!(Client::new(ClientConfig::new(Vec::<String>::new())).is_err());
        assert!(Client::new(ClientConfig::new(["127.0.0.1:7101"])).is_err());
        assert!(Client::new(ClientConfig::new(["http://127.0.0.1:7101/"])).is_ok());
    }

    #[tokio::test]
    async fn unreachable_cluster_fails_closed_by_default_and_open_on_request() {
        // Port 9 (discard) on loopback: nothing listens, connections are refused fast.
        let mut cfg = ClientConfig::new(["http://127.0.0.1:9"]);
        cfg.deadline = Duration::from_millis(200);
        let closed = Client::new(cfg.clone()).unwrap();
        let err = closed
            .acquire(&["k"], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
        assert!(matches!(
            closed.check_rate("k", "p", None).await,
            Err(Error::Unavailable(_))
        ));

        cfg.failure_policy = FailurePolicy::Open;
        let open = Client::new(cfg).unwrap();
        let g = open.acquire(&["k"], Duration::from_secs(5)).await.unwrap();
        assert!(g.is_degraded());
        assert_eq!(g.fencing_token(), None);
        assert!(open.check_rate("k", "p", None).await.unwrap().allowed);
        assert_eq!(open.fail_open_count(), 2);
    }
}
