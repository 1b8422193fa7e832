//! Raft's messages between master-eligible nodes, carried as typed RPC over the transport.
//! A peer is dialled at the transport address gossip currently reports for it, falling back
//! to the address recorded in the Raft membership.

use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};

use std::sync::Arc;

use tokio::sync::watch;

use super::{RaftPeer, TypeConfig};
use crate::cluster::membership::Membership;
use crate::cluster::rpc::{RaftRequest, Request, Response, RpcClient, RpcError};
use crate::cluster::state::ClusterState;

/// Creates a link per Raft peer.
#[derive(Clone)]
pub struct RaftNetworkImpl {
    pub rpc: RpcClient,
    pub membership: Membership,
    /// This node's cluster state, for the cluster uuid every message carries.
    pub state: watch::Receiver<Arc<ClusterState>>,
}

impl RaftNetworkFactory<TypeConfig> for RaftNetworkImpl {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &RaftPeer) -> PeerLink {
        PeerLink {
            target,
            peer: node.clone(),
            rpc: self.rpc.clone(),
            membership: self.membership.clone(),
            state: self.state.clone(),
        }
    }
}

/// Sends Raft messages to one peer.
pub struct PeerLink {
    target: u64,
    peer: RaftPeer,
    rpc: RpcClient,
    membership: Membership,
    state: watch::Receiver<Arc<ClusterState>>,
}

type Failure<E = openraft::error::Infallible> = RPCError<u64, RaftPeer, RaftError<u64, E>>;

impl PeerLink {
    fn address(&self) -> SocketAddr {
        self.membership
            .transport_addr_of(&self.peer.node_id)
            .unwrap_or(self.peer.transport_addr)
    }

    async fn send<E: std::error::Error>(
        &self,
        message: RaftRequest,
        option: &RPCOption,
    ) -> Result<Response, RPCError<u64, RaftPeer, RaftError<u64, E>>> {
        let timeout = option.hard_ttl().max(Duration::from_millis(50));
        let request = Request::Raft {
            to: self.peer.node_id.clone(),
            cluster_uuid: self.state.borrow().cluster_uuid.clone(),
            message,
        };
        self.rpc
            .call(self.address(), &request, timeout)
            .await
            .map_err(|err| match err {
                RpcError::Transport(err) => RPCError::Unreachable(Unreachable::new(&err)),
                other => RPCError::Network(NetworkError::new(&other)),
            })
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<u64, RaftPeer, RaftError<u64, E>> {
        let err = RpcError::Unexpected("a different Raft response");
        RPCError::Network(NetworkError::new(&err))
    }

    fn remote<E: std::error::Error>(
        &self,
        err: RaftError<u64, E>,
    ) -> RPCError<u64, RaftPeer, RaftError<u64, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.peer.clone(),
            err,
        ))
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, Failure> {
        match self
            .send(RaftRequest::AppendEntries(request), &option)
            .await?
        {
            Response::RaftAppendEntries(Ok(response)) => Ok(response),
            Response::RaftAppendEntries(Err(err)) => Err(self.remote(err)),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, Failure<InstallSnapshotError>> {
        match self
            .send(RaftRequest::InstallSnapshot(request), &option)
            .await?
        {
            Response::RaftInstallSnapshot(Ok(response)) => Ok(response),
            Response::RaftInstallSnapshot(Err(err)) => Err(self.remote(err)),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        request: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, Failure> {
        match self.send(RaftRequest::Vote(request), &option).await? {
            Response::RaftVote(Ok(response)) => Ok(response),
            Response::RaftVote(Err(err)) => Err(self.remote(err)),
            _ => Err(self.unexpected()),
        }
    }
}
