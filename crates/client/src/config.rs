//! Client settings and the failure policy.
//!
//! [`ClientConfig`] is plain data: the node list, the time budget of one call, the
//! credentials and what to do when the cluster cannot be reached. It is checked when
//! a [`crate::Client`] is built (every node must be an `http://` or `https://` URL),
//! not when it is constructed, so callers may fill its public fields freely.
//!
//! The time budget has two levels on purpose: `request_timeout` bounds one HTTP
//! attempt against one node, `deadline` bounds the whole call across retries and
//! nodes. A call therefore never hangs on a dead node, and a leader election shorter
//! than the deadline is invisible to the caller.
//!
//! `decision_stream` is off by default: it changes how decisions travel (one
//! upgraded connection per client instead of one HTTP request each, see
//! `stream.rs`), not what they decide, and nodes older than the stream refuse it, so
//! it is the caller's choice to turn on.

use std::time::Duration;

/// What the caller wants when the cluster cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Deny (return [`crate::Error::Unavailable`]). Safe: never admits more than the limit.
    #[default]
    Closed,
    /// Allow (a degraded guard without a lease / an allowed rate decision), with a
    /// warning log and a counter. Only for work where over-admission is cheaper than
    /// refusing.
    Open,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URLs of the nodes, e.g. `http://127.0.0.1:7101`.
    pub nodes: Vec<String>,
    /// Timeout of one HTTP attempt.
    pub request_timeout: Duration,
    /// Total time one call may spend retrying across nodes.
    pub deadline: Duration,
    /// First backoff after every node failed once; doubles up to 1 s.
    pub backoff: Duration,
    pub failure_policy: FailurePolicy,
    /// Bearer token sent with every request, if the cluster requires one.
    pub token: Option<String>,
    /// Holder text recorded with leases (e.g. host and pid).
    pub holder: String,
    /// PEM CA certificate to trust for `https://` nodes (the cluster's `tls.ca_file`).
    pub ca_pem: Option<Vec<u8>>,
    /// Send decisions (acquire, waiting acquire, release, renew, rate check) over
    /// one multiplexed decision stream (`POST /v1/stream`) to `http://` nodes
    /// instead of one HTTP request each. `https://` nodes, and nodes that refuse
    /// the upgrade, keep getting HTTP requests. Off by default.
    pub decision_stream: bool,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        Self {
            nodes: nodes
                .into_iter()
                .map(|n| n.into().trim_end_matches('/').to_string())
                .collect(),
            request_timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(10),
            backoff: Duration::from_millis(50),
            failure_policy: FailurePolicy::Closed,
            token: None,
            holder: format!("pid-{}", std::process::id()),
            ca_pem: None,
            decision_stream: false,
        }
    }

    /// Turn the decision stream on or off (the `decision_stream` field; the crate
    /// docs say what it changes).
    pub fn decision_stream(mut self, on: bool) -> Self {
        self.decision_stream = on;
        self
    }
}
