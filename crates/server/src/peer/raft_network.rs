//! openraft's `RaftNetwork` over the node's [`PeerClient`].
//!
//! One [`PeerConnection`] per target, all sharing the node's pooled client. Each RPC
//! is encoded with the peer codec, POSTed with openraft's per-RPC TTL, and decoded.
//! Errors are mapped so that openraft reacts the way the failure deserves:
//! - could not connect → [`Unreachable`]: openraft backs off (our `backoff`)
//!   instead of hammering a dead node every heartbeat;
//! - no answer within the TTL → [`RPCError::Timeout`];
//! - the peer answered with a Raft error → [`RPCError::RemoteError`] (e.g. a higher vote);
//! - anything else (reset connection, undecodable body, 4xx/5xx) → [`NetworkError`].

use std::error::Error as StdError;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use quorate_store::{NodeInfo, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::client::{PeerClient, PeerError};
use super::protocol::{self, paths};

/// openraft's connection factory: one [`PeerConnection`] per target, all sharing the
/// node's [`PeerClient`].
#[derive(Clone, Debug)]
pub struct Network {
    id: u64,
    client: PeerClient,
}

impl Network {
    pub fn new(id: u64, client: PeerClient) -> Self {
        Self { id, client }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerConnection {
        PeerConnection {
            id: self.id,
            target,
            node: node.clone(),
            client: self.client.clone(),
        }
    }
}

/// Raft RPCs from this node to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    id: u64,
    target: u64,
    node: NodeInfo,
    client: PeerClient,
}

type RpcResult<T, E> = Result<T, RPCError<u64, NodeInfo, RaftError<u64, E>>>;

fn network_error<E: StdError>(msg: impl ToString) -> RPCError<u64, NodeInfo, E> {
    RPCError::Network(NetworkError::from(AnyError::error(msg)))
}

impl PeerConnection {
    /// One RPC: encode, POST, decode `Result<Resp, RaftError<E>>`, map errors.
    async fn rpc<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: StdError + DeserializeOwned,
    {
        let body = protocol::encode(req).map_err(|e| network_error(format!("encode: {e}")))?;
        let ttl = option.hard_ttl();
        let bytes = self
            .client
            .post(self.target, &self.node.raft_addr, path, body, ttl)
            .await
            .map_err(|e| match e {
                PeerError::Connect(_) => RPCError::Unreachable(Unreachable::new(&e)),
                PeerError::Timeout => RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout: ttl,
                }),
                // The peer is up but shutting down or overloaded: back off.
                PeerError::Status(503, _) => RPCError::Unreachable(Unreachable::new(&e)),
                PeerError::Status(..) | PeerError::Transport(_) => {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let res: Result<Resp, RaftError<u64, E>> = protocol::decode(&bytes)
            .map_err(|e| network_error(format!("decode {action} response: {e}")))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    #[tracing::instrument(level = "trace", skip_all, fields(target = self.target))]
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.rpc(RPCTypes::AppendEntries, paths::APPEND, &req, &option)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target))]
    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.rpc(RPCTypes::InstallSnapshot, paths::SNAPSHOT, &req, &option)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target))]
    async fn vote(
        &mut self,
        req: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.rpc(RPCTypes::Vote, paths::VOTE, &req, &option).await
    }

    /// After an [`Unreachable`] error: 100 ms, doubling to 1 s, reset by the next
    /// success. Short enough that a restarted peer is caught up within a second,
    /// long enough that a dead one does not fill the log.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            (0..).map(|i: u32| {
                Duration::from_millis(100u64 << i.min(4)).min(Duration::from_secs(1))
            }),
        )
    }
}
