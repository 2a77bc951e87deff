//! The record of a chaos run: every client operation with its invoke and return times,
//! taken from one monotonic clock (a shared [`Instant`] base), and what came back.
//!
//! Outcomes are classified the way the checker needs them:
//! - a *definite* outcome (granted, denied, released, not found, a read's lease list)
//!   means the operation was decided by the replicated state machine at some instant
//!   between its invoke and its return;
//! - [`Outcome::Unknown`] (timeout, connection error, `503`) means it may or may not
//!   have taken effect, at any time after its invoke — a `503` only says the node could
//!   not decide in time, not that nothing was applied;
//! - [`Outcome::Unexpected`] is an answer the contract rules out for these requests
//!   (a `500`, a `400` for a valid request): reported as a violation, and treated like
//!   unknown everywhere else.
//!
//! Faults are recorded alongside, on the same clock, for the summary.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Microseconds since the run's [`Recorder`] was created.
pub type Micros = u64;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `wait_ms` > 0: a waiting acquire (it may be held open in the keys' queue).
    Acquire {
        lease_id: String,
        keys: Vec<String>,
        ttl_ms: u64,
        wait_ms: u64,
    },
    Release {
        lease_id: String,
    },
    Renew {
        lease_id: String,
        ttl_ms: u64,
    },
    /// `GET /v1/slots/{key}` (linearizable).
    Read {
        key: String,
    },
    /// `POST /v1/rate/check`, inline limit.
    Rate {
        key: String,
    },
}

impl Call {
    pub fn kind(&self) -> &'static str {
        match self {
            Call::Acquire { .. } => "acquire",
            Call::Release { .. } => "release",
            Call::Renew { .. } => "renew",
            Call::Read { .. } => "read",
            Call::Rate { .. } => "rate",
        }
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acquire: 200 with this fencing token.
    Granted { token: u64 },
    /// Acquire: 429 `limit_exceeded`; rate check: 429 `rate_limited`.
    Denied,
    /// Release: 200.
    Released { released: bool },
    /// Renew: 200.
    Renewed,
    /// Renew: 404 `lease_not_found`.
    LeaseNotFound,
    /// Read: 200 with these live leases `(lease_id, fencing_token)`, and the
    /// lease ids waiting in the key's queue, first first.
    Leases(Vec<(String, u64)>, Vec<String>),
    /// Rate check: 200.
    Allowed,
    /// Timeout, connection error or 503: may or may not have happened.
    Unknown(String),
    /// A status the contract rules out here (reason attached).
    Unexpected(String),
}

impl Outcome {
    /// True when the operation may or may not have taken effect.
    pub fn is_indefinite(&self) -> bool {
        matches!(self, Outcome::Unknown(_) | Outcome::Unexpected(_))
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Granted { .. } => "granted",
            Outcome::Denied => "denied",
            Outcome::Released { released: true } => "released",
            Outcome::Released { released: false } => "absent",
            Outcome::Renewed => "renewed",
            Outcome::LeaseNotFound => "not_found",
            Outcome::Leases(..) => "ok",
            Outcome::Allowed => "allowed",
            Outcome::Unknown(_) => "unknown",
            Outcome::Unexpected(_) => "unexpected",
        }
    }
}

/// One completed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The client worker that issued it (operations of one worker never overlap).
    pub process: usize,
    /// The node it was sent to.
    pub node: u64,
    pub invoke: Micros,
    pub ret: Micros,
    pub call: Call,
    pub outcome: Outcome,
    /// Sent as a frame on a decision stream, not as an HTTP request.
    pub streamed: bool,
}

/// One injected fault, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    pub kind: &'static str,
    /// Human-readable target ("leader 2", "2->3", ...).
    pub target: String,
    pub injected: Micros,
    pub healed: Micros,
    /// When the cluster had a leader every member agreed on again (None: never).
    pub stable: Option<Micros>,
}

/// The shared clock and log of a run. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    base: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
    faults: Arc<Mutex<Vec<FaultRecord>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            ops: Arc::default(),
            faults: Arc::default(),
        }
    }

    /// Now, on the run's clock.
    pub fn now(&self) -> Micros {
        self.base.elapsed().as_micros() as Micros
    }

    pub fn push(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    pub fn fault(&self, f: FaultRecord) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn faults(&self) -> Vec<FaultRecord> {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
