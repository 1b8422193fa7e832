//! Typed node-to-node RPC over the transport's streams: MessagePack with named fields (so
//! fields can be added without breaking older peers) inside a version envelope that is checked
//! before anything else is read.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::consensus::{Consensus, ProposeError, TypeConfig};
use super::membership::Membership;
use super::node_meta::NodeMeta;
use super::state::{CommandOutcome, StateCommand};
use crate::replication::wire::{DataRequest, DataResponse};
use crate::transport::{BoxFuture, RpcHandler, Transport, TransportError};

/// Bump on an incompatible change to the RPC messages.
pub const RPC_WIRE_VERSION: u16 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    version: u16,
    body: T,
}

/// What one node asks of another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// The peer's current metadata.
    NodeInfo,
    /// A message of the cluster-state quorum, addressed to one node of one cluster: a node
    /// refuses messages meant for another node (an address reused) or cluster.
    Raft {
        to: String,
        cluster_uuid: Option<String>,
        message: RaftRequest,
    },
    /// The uuid of the cluster the peer belongs to, once it has joined one.
    ClusterIdentity,
    /// A cluster-state change for the master to commit.
    Propose(StateCommand),
    /// A shard-level request of the data plane.
    Data(DataRequest),
    /// The version of the cluster state the peer (the master) has applied: a node that
    /// cannot find something a request names asks it before answering "missing".
    StateVersion,
}

/// Raft's own messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    NodeInfo(NodeMeta),
    ClusterIdentity(Option<String>),
    RaftAppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    RaftVote(Result<VoteResponse<u64>, RaftError<u64>>),
    RaftInstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Proposed(Result<CommandOutcome, ProposeError>),
    Data(DataResponse),
    /// The peer could not serve the request.
    Failed {
        reason: String,
    },
    /// Answers [`Request::StateVersion`]; last, so that older variants keep their place.
    StateVersion(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("peer speaks RPC wire version {0}, this node {RPC_WIRE_VERSION}")]
    Version(u16),
    #[error("malformed RPC message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("cannot encode RPC message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("peer failed the request: {0}")]
    Remote(String),
    #[error("peer answered {0} to a different request")]
    Unexpected(&'static str),
}

pub fn encode<T: Serialize>(body: &T) -> Result<Bytes, RpcError> {
    let envelope = Envelope {
        version: RPC_WIRE_VERSION,
        body,
    };
    Ok(Bytes::from(rmp_serde::to_vec_named(&envelope)?))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RpcError> {
    // The version is read on its own first, so a future body shape is reported as a version
    // mismatch rather than as garbage.
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u16,
    }
    let VersionOnly { version } = rmp_serde::from_slice(bytes)?;
    if version != RPC_WIRE_VERSION {
        return Err(RpcError::Version(version));
    }
    let envelope: Envelope<T> = rmp_serde::from_slice(bytes)?;
    Ok(envelope.body)
}

/// Sends typed requests to peers.
#[derive(Clone)]
pub struct RpcClient {
    transport: Transport,
}

impl RpcClient {
    pub fn new(transport: Transport) -> RpcClient {
        RpcClient { transport }
    }

    pub async fn call(
        &self,
        to: SocketAddr,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        let bytes = self
            .transport
            .request(to, encode(request)?, timeout)
            .await?;
        match decode(&bytes)? {
            Response::Failed { reason } => Err(RpcError::Remote(reason)),
            response => Ok(response),
        }
    }

    /// Sends a data-plane request.
    pub async fn data(
        &self,
        to: SocketAddr,
        request: DataRequest,
        timeout: Duration,
    ) -> Result<DataResponse, RpcError> {
        match self.call(to, &Request::Data(request), timeout).await? {
            Response::Data(response) => Ok(response),
            _ => Err(RpcError::Unexpected("something else")),
        }
    }

    pub async fn node_info(&self, to: SocketAddr, timeout: Duration) -> Result<NodeMeta, RpcError> {
        match self.call(to, &Request::NodeInfo, timeout).await? {
            Response::NodeInfo(meta) => Ok(meta),
            _ => Err(RpcError::Unexpected("something else")),
        }
    }
}

/// Serves the data plane's requests (set once the node's shards are open).
pub trait DataHandler: Send + Sync {
    fn handle(&self, request: DataRequest) -> BoxFuture<'_, DataResponse>;
}

/// Serves requests from peers with this node's state.
pub struct RpcServer {
    membership: Membership,
    /// Set once Raft has started (it needs the transport, which needs this server).
    consensus: OnceLock<Arc<Consensus>>,
    data: OnceLock<Arc<dyn DataHandler>>,
}

impl RpcServer {
    pub fn new(membership: Membership) -> RpcServer {
        RpcServer {
            membership,
            consensus: OnceLock::new(),
            data: OnceLock::new(),
        }
    }

    pub fn set_consensus(&self, consensus: Arc<Consensus>) {
        let _ = self.consensus.set(consensus);
    }

    pub fn set_data_handler(&self, handler: Arc<dyn DataHandler>) {
        let _ = self.data.set(handler);
    }

    async fn answer(&self, request: Request) -> Response {
        if let Request::Data(request) = request {
            return match self.data.get() {
                Some(handler) => Response::Data(handler.handle(request).await),
                None => Response::Failed {
                    reason: "the node is still opening its shards".into(),
                },
            };
        }
        let consensus = self.consensus.get();
        match (request, consensus) {
            (Request::NodeInfo, _) => Response::NodeInfo(self.membership.local()),
            (
                Request::Raft {
                    to,
                    cluster_uuid,
                    message,
                },
                Some(consensus),
            ) => consensus.handle(&to, cluster_uuid, message).await,
            (Request::ClusterIdentity, Some(consensus)) => {
                Response::ClusterIdentity(consensus.state().cluster_uuid.clone())
            }
            (Request::Propose(command), Some(consensus)) => {
                Response::Proposed(consensus.propose_as_master(command).await)
            }
            (Request::StateVersion, Some(consensus)) => {
                Response::StateVersion(consensus.state().version)
            }
            (Request::Data(_), _) => Response::Failed {
                reason: "unreachable: data requests are answered above".into(),
            },
            (_, None) => Response::Failed {
                reason: "the node is still starting".into(),
            },
        }
    }
}

impl RpcHandler for RpcServer {
    fn handle(&self, from: SocketAddr, request: Bytes) -> BoxFuture<'_, Bytes> {
        Box::pin(async move {
            let response = match decode::<Request>(&request) {
                Ok(request) => self.answer(request).await,
                Err(err) => {
                    tracing::warn!(peer = %from, error = %err, "refused an RPC request");
                    Response::Failed {
                        reason: err.to_string(),
                    }
                }
            };
            encode(&response).unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_foreign_versions_are_named() {
        let bytes = encode(&Request::NodeInfo).expect("encode");
        assert!(matches!(decode::<Request>(&bytes), Ok(Request::NodeInfo)));

        let future = rmp_serde::to_vec_named(&Envelope {
            version: 99,
            body: "something new",
        })
        .expect("encode");
        assert!(matches!(
            decode::<Request>(&future),
            Err(RpcError::Version(99))
        ));
        assert!(matches!(
            decode::<Request>(b"\x00garbage"),
            Err(RpcError::Decode(_))
        ));
    }
}
