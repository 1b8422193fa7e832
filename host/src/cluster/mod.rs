//! The cluster layer. Gossip decides who is alive ([`membership`], foca SWIM over the QUIC
//! [`crate::transport`]); node metadata travels as versioned broadcasts ([`node_meta`]);
//! peers talk typed RPC ([`rpc`]). The quorum-replicated cluster state builds on these.

pub mod allocation;
pub mod codec;
pub mod consensus;
pub mod crash_probe;
pub mod identity;
pub mod membership;
pub mod node_meta;
pub mod rpc;
pub mod simulation;
pub mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{NodeConfig, Role};
use crate::transport::certs::{self, CertPair};
use crate::transport::tls::{self, TlsFiles};
use crate::transport::{Transport, TransportError};
use consensus::{Consensus, ConsensusError};

pub use membership::{Membership, MembershipEvent};
pub use node_meta::NodeMeta;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("TLS settings: {0}")]
    TlsSettings(String),
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error("cannot persist the {what} in {path}: {source}")]
    NodeState {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The running cluster services of one node.
pub struct Cluster {
    pub transport: Transport,
    pub membership: Membership,
    pub consensus: Arc<Consensus>,
    pub rpc: rpc::RpcClient,
    pub rpc_server: Arc<rpc::RpcServer>,
}

impl Cluster {
    /// Binds the transport, joins the cluster through the configured seeds and starts this
    /// node's member of the cluster-state quorum.
    pub async fn start(
        config: &NodeConfig,
        node_id: &str,
        http_addr: SocketAddr,
    ) -> Result<Cluster, ClusterError> {
        let state_dir = config.data_dir.join("_state");
        let tls_files = resolve_tls(config, &state_dir)?;
        let alpn = format!("shoal/1/{}", config.cluster_name);
        let configs = tls::quic_configs(&tls_files, alpn.as_bytes())?;
        let endpoint_config =
            crate::transport::reset_key::endpoint_config(&state_dir).map_err(|source| {
                ClusterError::NodeState {
                    what: "transport reset key",
                    path: state_dir.clone(),
                    source,
                }
            })?;
        let (transport, datagrams) =
            Transport::bind(config.transport_addr, configs, endpoint_config)?;
        let generation =
            identity::next_generation(&state_dir).map_err(|source| ClusterError::NodeState {
                what: "gossip generation",
                path: state_dir.clone(),
                source,
            })?;
        let local = NodeMeta {
            node_id: node_id.to_string(),
            name: config.node_name.clone(),
            zone: config.zone.clone(),
            roles: config.roles.clone(),
            http_addr,
            transport_addr: transport.local_addr(),
            version: crate::VERSION.to_string(),
            generation,
            revision: 0,
        };
        let membership =
            Membership::start(transport.clone(), datagrams, local, config.seeds.clone());
        let server = Arc::new(rpc::RpcServer::new(membership.clone()));
        transport.set_rpc_handler(server.clone());
        let found = config.seeds.is_empty() && config.roles.contains(&Role::Master);
        let consensus = Consensus::start(
            &state_dir.join("raft"),
            &config.cluster_name,
            membership.clone(),
            rpc::RpcClient::new(transport.clone()),
            found,
        )
        .await?;
        server.set_consensus(consensus.clone());
        let peers = Arc::downgrade(&consensus);
        membership.announce_also_to(Arc::new(move || {
            peers
                .upgrade()
                .map(|consensus| consensus.peer_addresses())
                .unwrap_or_default()
        }));
        if found && !consensus.wait_for_bootstrap(Duration::from_secs(10)).await {
            tracing::warn!("the founding node has not committed the cluster identity yet");
        }
        Ok(Cluster {
            rpc: rpc::RpcClient::new(transport.clone()),
            transport,
            membership,
            consensus,
            rpc_server: server,
        })
    }

    /// Says goodbye to the cluster, then closes every connection.
    pub async fn shutdown(&self) {
        self.consensus.shutdown().await;
        self.membership.leave().await;
        // Give the leave notice a moment on the wire before the endpoint closes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.transport.close();
    }
}

/// Picks the node's certificates: explicit files, or a development CA (`--dev-ca`, or a CA
/// private to this node when nothing is configured and there are no seeds to join).
fn resolve_tls(config: &NodeConfig, state_dir: &Path) -> Result<TlsFiles, ClusterError> {
    let explicit = (&config.tls_ca, &config.tls_cert, &config.tls_key);
    match (explicit, &config.dev_ca) {
        ((Some(ca), Some(cert), Some(key)), None) => Ok(TlsFiles {
            ca_cert: ca.clone(),
            node: CertPair {
                cert: cert.clone(),
                key: key.clone(),
            },
        }),
        ((None, None, None), Some(dir)) => {
            tracing::warn!(dev_ca = %dir.display(), "using a development CA: every node that can read its key can join; use --tls-ca/--tls-cert/--tls-key in production");
            dev_ca_files(dir, config)
        }
        ((None, None, None), None) if config.seeds.is_empty() => {
            let dir = state_dir.join("dev-ca");
            tracing::warn!(dev_ca = %dir.display(), "no TLS configured: using a CA private to this node, so no other node can join it; give --dev-ca DIR (shared by local nodes) or --tls-ca/--tls-cert/--tls-key to form a cluster");
            dev_ca_files(&dir, config)
        }
        ((None, None, None), None) => Err(ClusterError::TlsSettings(
            "joining seeds needs the cluster's certificates: set --tls-ca, --tls-cert and --tls-key (or --dev-ca DIR for a local cluster)".into(),
        )),
        (_, Some(_)) => Err(ClusterError::TlsSettings(
            "--dev-ca cannot be combined with --tls-ca/--tls-cert/--tls-key".into(),
        )),
        (_, None) => Err(ClusterError::TlsSettings(
            "--tls-ca, --tls-cert and --tls-key must be given together".into(),
        )),
    }
}

fn dev_ca_files(dir: &Path, config: &NodeConfig) -> Result<TlsFiles, ClusterError> {
    let node = certs::ensure_dev_certs(dir, &config.node_name, &config.cluster_name)?;
    Ok(TlsFiles {
        ca_cert: certs::ca_files(dir).cert,
        node,
    })
}
