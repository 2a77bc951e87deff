//! A single-process [`Backend`] over one in-memory core [`State`], with a clock the
//! test controls.
//!
//! It exists to test the HTTP layer exhaustively without a cluster: every handler,
//! every error mapping, every header. It is *not* replicated and never used by
//! `quorate serve`; a cluster's answers come from `raft::Node`. It can also simulate an
//! unavailable cluster (`set_available(false)`) to test the 503 path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use quorate_core::{Command, Op, Query, Reply, State};
use quorate_proto::{AddMemberRequest, ClusterResponse, Member, MembersResponse};

use crate::backend::{Backend, NodeError};
use crate::waiters::Waiters;

/// In-memory backend for tests. Time is `clock_ms`, advanced by the test.
#[derive(Debug, Default)]
pub struct LocalBackend {
    state: Mutex<State>,
    clock_ms: AtomicU64,
    /// The last "log index": each applied op is one entry, numbered from 1 (the
    /// audit trail records it, as on a real node).
    index: AtomicU64,
    unavailable: AtomicBool,
    /// The leader hint it reports (none by default: "no leader known").
    leader_api: Mutex<Option<Arc<str>>>,
    /// Woken after each op with the grants the queue made in it, as a node is
    /// after each applied entry.
    waiters: Arc<Waiters>,
}

impl LocalBackend {
    /// A backend whose clock starts at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            state: Mutex::new(State::new()),
            clock_ms: AtomicU64::new(start_ms),
            index: AtomicU64::new(0),
            unavailable: AtomicBool::new(false),
            leader_api: Mutex::new(None),
            waiters: Arc::default(),
        }
    }

    /// Report `url` as the leader's API base URL (None: no leader known).
    pub fn set_leader_api(&self, url: Option<&str>) {
        *self.leader_api.lock().unwrap_or_else(|e| e.into_inner()) = url.map(Arc::from);
    }

    /// Move the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.clock_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Simulate losing (false) or regaining (true) the quorum.
    pub fn set_available(&self, available: bool) {
        self.unavailable.store(!available, Ordering::SeqCst);
    }

    /// Apply an op directly (test setup).
    pub fn apply(&self, op: Op) -> Reply {
        let now = self.clock_ms.load(Ordering::SeqCst);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
        let reply = st
            .apply_at(index, &Command::single(now, op))
            .pop()
            .unwrap_or(Ok(quorate_core::Outcome::Noop));
        let grants = st.take_queue_grants();
        drop(st);
        if !grants.is_empty() {
            self.waiters.deliver(grants);
        }
        reply
    }

    /// Like a node: unavailable when quorum is (simulated) lost or the caller's
    /// deadline has already passed.
    fn check(&self, deadline: Instant) -> Result<(), NodeError> {
        if Instant::now() >= deadline {
            return Err(NodeError::Unavailable(
                "not decided within the request timeout".into(),
            ));
        }
        if self.unavailable.load(Ordering::SeqCst) {
            Err(NodeError::Unavailable("simulated loss of quorum".into()))
        } else {
            Ok(())
        }
    }

    fn member() -> Member {
        Member {
            id: 1,
            api_addr: "local".into(),
            raft_addr: "local".into(),
            voter: true,
        }
    }
}

impl Backend for LocalBackend {
    fn write(&self, op: Op, deadline: Instant) -> BoxFuture<'_, Result<Reply, NodeError>> {
        async move {
            self.check(deadline)?;
            Ok(self.apply(op))
        }
        .boxed()
    }

    fn read(&self, query: Query, deadline: Instant) -> BoxFuture<'_, Result<Reply, NodeError>> {
        async move {
            self.check(deadline)?;
            let now = self.clock_ms.load(Ordering::SeqCst);
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            Ok(st.query(&query, now))
        }
        .boxed()
    }

    fn cluster(&self) -> BoxFuture<'_, Result<ClusterResponse, NodeError>> {
        async move {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            Ok(ClusterResponse {
                node_id: 1,
                leader_id: Some(1),
                leader_api: self.leader_api().map(|u| u.to_string()),
                term: 1,
                members: vec![Self::member()],
                last_log_index: None,
                committed_index: None,
                applied_index: None,
                state_digest: st.digest(),
                clock_offsets: Vec::new(),
                nodes: Vec::new(),
            })
        }
        .boxed()
    }

    fn add_member(
        &self,
        _req: AddMemberRequest,
        _deadline: Instant,
    ) -> BoxFuture<'_, Result<MembersResponse, NodeError>> {
        async { Err(NodeError::Refused("a local backend has no cluster".into())) }.boxed()
    }

    fn remove_member(
        &self,
        _id: u64,
        _deadline: Instant,
    ) -> BoxFuture<'_, Result<MembersResponse, NodeError>> {
        async { Err(NodeError::Refused("a local backend has no cluster".into())) }.boxed()
    }

    fn leader_api(&self) -> Option<Arc<str>> {
        self.leader_api
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        async move { !self.unavailable.load(Ordering::SeqCst) }.boxed()
    }

    fn waiters(&self) -> &Arc<Waiters> {
        &self.waiters
    }
}
