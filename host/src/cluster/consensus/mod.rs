//! The quorum that decides the cluster state: openraft among the master-eligible nodes, with
//! every other node following the log as a learner. The Raft leader is the master.
//!
//! Bootstrapping: a master-eligible node started without seeds founds a cluster of one; nodes
//! started with seeds never bootstrap, they wait for the master to add them (master-eligible
//! ones as voters). So two nodes configured to join can never found two clusters.

pub mod network;
pub mod store;
pub mod voting;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::Adaptor;
use openraft::{ChangeMembers, Config, Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::watch;

use super::membership::Membership;
use super::rpc::{RaftRequest, Request, Response, RpcClient};
use super::state::{ClusterState, CommandOutcome, StateCommand};
use crate::config::Role;

openraft::declare_raft_types!(
    /// Raft types of the cluster-state log.
    pub TypeConfig:
        D = StateCommand,
        R = CommandOutcome,
        NodeId = u64,
        Node = RaftPeer,
);

/// How Raft remembers a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftPeer {
    pub node_id: String,
    pub name: String,
    pub transport_addr: SocketAddr,
}

impl Default for RaftPeer {
    fn default() -> Self {
        RaftPeer {
            node_id: String::new(),
            name: String::new(),
            transport_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

/// Raft's numeric id for a node: the first 8 bytes of the SHA-256 of its node id.
pub fn raft_id(node_id: &str) -> u64 {
    let digest = sha2::Sha256::digest(node_id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// Why a cluster-state change did not happen.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    #[error("no master is elected: {0}")]
    NoMaster(String),
    #[error("{0}")]
    Rejected(String),
    #[error("the cluster state change failed: {0}")]
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    #[error("cannot open the cluster-state log in {path}: {source}")]
    Store {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("cannot start Raft: {0}")]
    Start(String),
}

/// How often the master reconciles Raft membership with the gossip view.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(300);
/// How long a proposal keeps trying to reach a master and commit, unless the request says
/// otherwise (`master_timeout`).
pub const DEFAULT_MASTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the local state to catch up with a committed change.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// This node's member of the cluster-state quorum.
pub struct Consensus {
    raft: Raft<TypeConfig>,
    id: u64,
    state: watch::Receiver<Arc<ClusterState>>,
    rpc: RpcClient,
    membership: Membership,
    /// Set once this node has applied everything committed before it started.
    caught_up: std::sync::atomic::AtomicBool,
    foreign_warnings: Throttle,
    /// Nodes found to belong to another cluster: never added to this one (a node id keeps its
    /// cluster; a wiped node comes back under a new id).
    foreign_nodes: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Consensus {
    /// Opens the log in `dir` and starts Raft; founds a one-node cluster when `found` is set
    /// and the log is empty.
    pub async fn start(
        dir: &Path,
        cluster_name: &str,
        membership: Membership,
        rpc: RpcClient,
        found: bool,
    ) -> Result<Arc<Consensus>, ConsensusError> {
        let config = Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            install_snapshot_timeout: 5000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Config::default()
        }
        .validate()
        .map_err(|err| ConsensusError::Config(err.to_string()))?;
        let (store, state) = store::Store::open(dir).map_err(|source| ConsensusError::Store {
            path: dir.to_path_buf(),
            source,
        })?;
        let (log_store, state_machine) = Adaptor::new(store);
        let local = membership.local();
        let id = raft_id(&local.node_id);
        let network = network::RaftNetworkImpl {
            rpc: rpc.clone(),
            membership: membership.clone(),
            state: state.clone(),
        };
        let raft = Raft::new(id, Arc::new(config), network, log_store, state_machine)
            .await
            .map_err(|err| ConsensusError::Start(err.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|err| ConsensusError::Start(err.to_string()))?;
        if found && !initialized {
            let peer = RaftPeer {
                node_id: local.node_id.clone(),
                name: local.name.clone(),
                transport_addr: local.transport_addr,
            };
            raft.initialize(BTreeMap::from([(id, peer)]))
                .await
                .map_err(|err| ConsensusError::Start(err.to_string()))?;
            tracing::info!(node = %local.name, "founded a new cluster");
        }
        let consensus = Arc::new(Consensus {
            raft,
            id,
            state,
            rpc,
            membership,
            caught_up: std::sync::atomic::AtomicBool::new(false),
            foreign_warnings: Throttle::default(),
            foreign_nodes: Default::default(),
        });
        tokio::spawn(reconcile_loop(Arc::downgrade(&consensus)));
        tokio::spawn(catch_up(Arc::downgrade(&consensus)));
        tokio::spawn(log_master_changes(consensus.raft.metrics()));
        tokio::spawn(elect_when_the_master_dies(
            Arc::downgrade(&consensus),
            consensus.membership.subscribe(),
        ));
        Ok(consensus)
    }

    /// Waits until the cluster identity is committed (a founding node's first change), so the
    /// node does not serve requests that need it before it exists.
    pub async fn wait_for_bootstrap(&self, timeout: Duration) -> bool {
        let mut state = self.state.clone();
        matches!(
            tokio::time::timeout(timeout, state.wait_for(|s| s.cluster_uuid.is_some())).await,
            Ok(Ok(_))
        )
    }

    /// Whether this node has applied every change committed before it started. Until then its
    /// routing may be stale (a restarted primary that was replaced meanwhile), so it must not
    /// act as a primary.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A receiver that sees every cluster state this node applies.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    /// The latest cluster state this node has applied.
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    /// The elected master as this node last heard.
    pub fn master(&self) -> Option<RaftPeer> {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
    }

    /// Whether this node is in touch with a quorum: as master, a quorum acknowledged it within
    /// the last few seconds (or it is the only voter); otherwise, it knows a master that gossip
    /// says is alive. A node that is not refuses writes, as Elasticsearch's no-master block does,
    /// so a primary cut off from the cluster acknowledges nothing.
    pub fn quorum_reachable(&self) -> bool {
        const LEASE_MS: u64 = 3_000;
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        let Some(leader) = metrics.current_leader else {
            return false;
        };
        if leader == self.id {
            let voters = metrics.membership_config.membership().voter_ids().count();
            return voters <= 1
                || metrics
                    .millis_since_quorum_ack
                    .is_some_and(|ms| ms < LEASE_MS);
        }
        let Some(peer) = metrics.membership_config.membership().get_node(&leader) else {
            return false;
        };
        self.membership.transport_addr_of(&peer.node_id).is_some()
    }

    /// The master (Raft leader) as this node knows it.
    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// The Raft ids of the voters in the cluster-state quorum, ascending.
    fn voter_ids(&self) -> Vec<u64> {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        let mut voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        voters.sort_unstable();
        voters
    }

    /// Whether this node has a vote in the cluster-state quorum.
    fn is_voter(&self) -> bool {
        self.voter_ids().contains(&self.id)
    }

    /// Whether a node campaigning to replace the dead master `departed` should go on: no
    /// other master is known and this node has not voted for another candidate.
    fn still_campaigning(&self, departed: u64) -> bool {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        let other_leader = metrics.current_leader.is_some_and(|id| id != departed);
        let voted_for = metrics.vote.leader_id().voted_for();
        let voted_for_another = voted_for.is_some_and(|id| id != departed && id != self.id);
        !other_leader && !voted_for_another
    }

    /// Whether `node_id` is in the committed cluster membership (a voter or a learner): the
    /// nodes the master has admitted, which alone may be given shard copies. A node gossip
    /// found is admitted a moment later, once the master has checked it belongs here.
    pub fn is_member(&self, node_id: &str) -> bool {
        let id = raft_id(node_id);
        self.with_members(|members| members.nodes().any(|(member, _)| *member == id))
    }

    /// Reads the Raft membership as this node last applied it.
    fn with_members<T>(&self, read: impl FnOnce(&openraft::Membership<u64, RaftPeer>) -> T) -> T {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        read(metrics.membership_config.membership())
    }

    /// Whether this node, as master, found `node_id` to belong to another cluster.
    fn is_foreign(&self, node_id: &str) -> bool {
        self.foreign_nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(node_id)
    }

    /// The transport addresses the other members of the Raft group last had (as persisted
    /// with the log, so known right after a restart).
    pub fn peer_addresses(&self) -> Vec<SocketAddr> {
        self.with_members(|members| {
            members
                .nodes()
                .filter(|(id, _)| **id != self.id)
                .map(|(_, peer)| peer.transport_addr)
                .collect()
        })
    }

    /// The current Raft term and the voting configuration (node ids).
    pub fn coordination(&self) -> (u64, Vec<String>) {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        let membership = metrics.membership_config.membership();
        let voters = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|peer| peer.node_id.clone()))
            .collect();
        (metrics.current_term, voters)
    }

    /// Commits `command` through the master (forwarding to it when this node is not it) and
    /// waits until this node has applied it.
    pub async fn propose(
        &self,
        command: StateCommand,
        timeout: Duration,
    ) -> Result<CommandOutcome, ProposeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = match tokio::time::timeout(remaining, self.write_here(command.clone()))
                .await
            {
                Err(_) => Err(ProposeError::NoMaster(format!(
                    "the change was not committed within {timeout:?}; a quorum of master-eligible nodes may be unreachable"
                ))),
                Ok(Err(Redirect::To(addr))) => self.forward(addr, &command, remaining).await,
                Ok(Err(Redirect::Unknown(reason))) => Err(ProposeError::NoMaster(reason)),
                Ok(Ok(outcome)) => Ok(outcome),
            };
            match attempt {
                Err(ProposeError::NoMaster(reason)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(reason = %reason, "no master yet; retrying the proposal");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        if let Some(reason) = outcome.rejected {
            return Err(ProposeError::Rejected(reason));
        }
        let mut state = self.state.clone();
        let applied =
            tokio::time::timeout(APPLY_WAIT, state.wait_for(|s| s.version >= outcome.version))
                .await;
        if !matches!(applied, Ok(Ok(_))) {
            tracing::warn!(
                version = outcome.version,
                "committed cluster state not yet applied locally"
            );
        }
        Ok(outcome)
    }

    /// The cluster-state version the master has applied (this node's own, if it is the
    /// master), if the master answers within `timeout`.
    pub async fn master_state_version(&self, timeout: Duration) -> Option<u64> {
        let master = self.master()?;
        if raft_id(&master.node_id) == self.id {
            return Some(self.state().version);
        }
        let address = self.address_of(&master);
        match self
            .rpc
            .call(address, &Request::StateVersion, timeout)
            .await
        {
            Ok(Response::StateVersion(version)) => Some(version),
            _ => None,
        }
    }

    /// A proposal forwarded by another node: commit it if this node is the master.
    pub async fn propose_as_master(
        &self,
        command: StateCommand,
    ) -> Result<CommandOutcome, ProposeError> {
        match tokio::time::timeout(DEFAULT_MASTER_TIMEOUT, self.write_here(command)).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(Redirect::To(addr))) => Err(ProposeError::NoMaster(format!(
                "this node is not the master any more; try {addr}"
            ))),
            Ok(Err(Redirect::Unknown(reason))) => Err(ProposeError::NoMaster(reason)),
            Err(_) => Err(ProposeError::NoMaster(
                "the master could not reach a quorum".into(),
            )),
        }
    }

    async fn write_here(&self, command: StateCommand) -> Result<CommandOutcome, Redirect> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                match forward.leader_node {
                    Some(peer) => Err(Redirect::To(self.address_of(&peer))),
                    None => Err(Redirect::Unknown("no leader is known".into())),
                }
            }
            Err(err) => Err(Redirect::Unknown(err.to_string())),
        }
    }

    async fn forward(
        &self,
        to: SocketAddr,
        command: &StateCommand,
        timeout: Duration,
    ) -> Result<CommandOutcome, ProposeError> {
        match self
            .rpc
            .call(to, &Request::Propose(command.clone()), timeout)
            .await
        {
            Ok(Response::Proposed(result)) => result,
            Ok(_) => Err(ProposeError::Failed(
                "the master answered something else".into(),
            )),
            Err(err) => Err(ProposeError::NoMaster(format!(
                "cannot reach the master at {to}: {err}"
            ))),
        }
    }

    fn address_of(&self, peer: &RaftPeer) -> SocketAddr {
        self.membership
            .transport_addr_of(&peer.node_id)
            .unwrap_or(peer.transport_addr)
    }

    /// Answers a Raft message from a peer, unless it is meant for another node or comes from
    /// another cluster: a node that belonged to one cluster must never vote in, or take the
    /// log of, another that happens to share its certificates and name.
    pub async fn handle(
        &self,
        to: &str,
        cluster_uuid: Option<String>,
        message: RaftRequest,
    ) -> Response {
        let local = self.membership.local();
        let ours = self.state().cluster_uuid.clone();
        if let Some(reason) =
            foreign_message(&local.node_id, ours.as_deref(), to, cluster_uuid.as_deref())
        {
            if self.foreign_warnings.due() {
                tracing::warn!(reason = %reason, "refused a cluster-state message");
            }
            return Response::Failed { reason };
        }
        match message {
            RaftRequest::AppendEntries(request) => {
                Response::RaftAppendEntries(self.raft.append_entries(request).await)
            }
            RaftRequest::Vote(request) => Response::RaftVote(self.raft.vote(request).await),
            RaftRequest::InstallSnapshot(request) => {
                Response::RaftInstallSnapshot(self.raft.install_snapshot(request).await)
            }
        }
    }

    pub async fn shutdown(&self) {
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(error = %err, "raft shutdown");
        }
    }

    /// On the master: bootstraps the cluster identity, adds nodes gossip knows but Raft does
    /// not (as learners), and keeps the voters an odd, zone-spread set of live master-eligible
    /// nodes (`voting`), changed in one joint-consensus step.
    async fn reconcile(&self) {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.id) {
            return;
        }
        if self.state().cluster_uuid.is_none() {
            let command = StateCommand::Bootstrap {
                cluster_uuid: crate::ids::new_uuid(),
            };
            if let Err(err) = self.propose_as_master(command).await {
                tracing::debug!(error = %err, "bootstrap command not committed yet");
            }
            return;
        }
        let config = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = config.voter_ids().collect();
        let live = self.membership.live_nodes();
        let mut candidates = Vec::new();
        for meta in &live {
            let id = raft_id(&meta.node_id);
            if config.get_node(&id).is_none() {
                if !self.same_cluster(meta).await {
                    continue;
                }
                let peer = RaftPeer {
                    node_id: meta.node_id.clone(),
                    name: meta.name.clone(),
                    transport_addr: meta.transport_addr,
                };
                tracing::info!(node = %meta.name, "adding node to the cluster-state quorum as a learner");
                if let Err(err) = self.raft.add_learner(id, peer, false).await {
                    tracing::debug!(node = %meta.name, error = %err, "add learner");
                }
                return;
            }
            if meta.has_role(Role::Master) {
                candidates.push(voting::Candidate {
                    id,
                    zone: meta.zone.clone(),
                });
            }
        }
        let target = voting::target_voters(self.id, &voters, &candidates);
        if target == voters {
            return;
        }
        let names: Vec<&str> = live
            .iter()
            .filter(|meta| target.contains(&raft_id(&meta.node_id)))
            .map(|meta| meta.name.as_str())
            .collect();
        tracing::info!(voters = ?names, "changing the cluster-state voting configuration");
        // Removed voters stay learners: every node applies the cluster state.
        let change = ChangeMembers::ReplaceAllVoters(target);
        if let Err(err) = self.raft.change_membership(change, true).await {
            tracing::debug!(error = %err, "voting configuration not changed yet");
        }
    }
}

/// Why a Raft message must be refused, if it must.
fn foreign_message(
    local_node: &str,
    local_cluster: Option<&str>,
    to: &str,
    cluster: Option<&str>,
) -> Option<String> {
    if to != local_node {
        return Some(format!(
            "the message is for node [{to}], this is node [{local_node}]"
        ));
    }
    match (local_cluster, cluster) {
        (Some(ours), Some(theirs)) if ours != theirs => Some(format!(
            "this node belongs to cluster [{ours}], the message comes from cluster [{theirs}]"
        )),
        _ => None,
    }
}

/// Rate-limits a repeated warning (a foreign peer retries many times a second).
#[derive(Default)]
struct Throttle(std::sync::Mutex<Option<std::time::Instant>>);

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    fn due(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= Self::EVERY);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }
}

impl Consensus {
    /// Whether a node gossip found may join this cluster's quorum: it has not joined another
    /// one (a node keeps the cluster it first joined, as Elasticsearch's do).
    async fn same_cluster(&self, meta: &super::NodeMeta) -> bool {
        if self.is_foreign(&meta.node_id) {
            return false;
        }
        let ours = self.state().cluster_uuid.clone();
        let asked = self
            .rpc
            .call(
                meta.transport_addr,
                &Request::ClusterIdentity,
                Duration::from_secs(2),
            )
            .await;
        match asked {
            Ok(Response::ClusterIdentity(Some(theirs))) if Some(&theirs) != ours.as_ref() => {
                tracing::warn!(node = %meta.name, node_cluster = %theirs, cluster = ?ours, "not adding a node that belongs to another cluster; wipe its data directory to have it join this one");
                self.foreign_nodes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(meta.node_id.clone());
                false
            }
            Ok(Response::ClusterIdentity(_)) => true,
            // Not answering yet (starting): asked again on the next round.
            _ => false,
        }
    }
}

enum Redirect {
    To(SocketAddr),
    Unknown(String),
}

async fn reconcile_loop(consensus: std::sync::Weak<Consensus>) {
    let mut ticker = tokio::time::interval(RECONCILE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(consensus) = consensus.upgrade() else {
            return;
        };
        consensus.reconcile().await;
    }
}

/// How long each surviving voter waits for the one ranked before it to win an election.
const CAMPAIGN_STAGGER: Duration = Duration::from_millis(150);
/// Rounds of staggered campaigns before the survivors leave it to the election timer.
const CAMPAIGN_ROUNDS: u32 = 3;

/// Starts an election as soon as this node's crash probe finds the master's process gone
/// (about 150 ms, see `cluster::crash_probe`), instead of waiting for the election timer
/// (500–1000 ms after the last heartbeat, on top of the voters' 1 s leader lease).
///
/// Every surviving voter first campaigns once at once. That campaign cannot win (the others
/// still hold the dead master's lease), but it gives up this node's own lease, so that it can
/// vote for others. Then the survivors campaign again one at a time in the order of their
/// Raft ids, each `CAMPAIGN_STAGGER` after the previous: simultaneous candidates would split
/// the vote, which with three survivors of five voters elects no one. A node that sees a
/// master, or a vote for another candidate, stops. Raft's safety does not depend on when
/// elections start; only a certainly dead master is replaced early, so a paused or cut-off
/// master (which may still lead) is left to the timer.
async fn elect_when_the_master_dies(
    consensus: std::sync::Weak<Consensus>,
    mut events: tokio::sync::broadcast::Receiver<super::MembershipEvent>,
) {
    loop {
        let departed = match events.recv().await {
            Ok(super::MembershipEvent::Down(meta)) => meta,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(consensus) = consensus.upgrade() else {
            return;
        };
        let departed_id = raft_id(&departed.node_id);
        if consensus.leader() != Some(departed_id) || !consensus.is_voter() {
            continue;
        }
        let gone = consensus.membership.crashed(&departed)
            || super::crash_probe::port_refuses(departed.transport_addr).await;
        if !gone {
            continue;
        }
        tracing::info!(master = %departed.name, "the master's process is gone; starting an election");
        campaign_in_turn(&consensus, departed_id).await;
    }
}

/// This node's campaigns after the master `departed` died (see `elect_when_the_master_dies`).
async fn campaign_in_turn(consensus: &Consensus, departed: u64) {
    let live: BTreeSet<u64> = consensus
        .membership
        .live_nodes()
        .iter()
        .map(|meta| raft_id(&meta.node_id))
        .collect();
    let survivors: Vec<u64> = consensus
        .voter_ids()
        .into_iter()
        .filter(|id| *id != departed && live.contains(id))
        .collect();
    let Some(rank) = survivors.iter().position(|id| *id == consensus.id) else {
        return;
    };
    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
    let rounds_apart = CAMPAIGN_STAGGER.saturating_mul(u32::try_from(survivors.len()).unwrap_or(1));
    // The first campaign, at once, only gives up this node's lease.
    let mut pause = Duration::ZERO;
    for round in 0..=CAMPAIGN_ROUNDS {
        tokio::time::sleep(pause).await;
        if !consensus.still_campaigning(departed) {
            return;
        }
        if let Err(err) = consensus.raft.trigger().elect().await {
            tracing::debug!(error = %err, "cannot start an election");
            return;
        }
        pause = if round == 0 {
            CAMPAIGN_STAGGER / 2 + CAMPAIGN_STAGGER.saturating_mul(rank)
        } else {
            rounds_apart
        };
    }
}

/// Logs each change of master as this node learns it (Elasticsearch's "master node changed"),
/// so an operator can follow elections from any node's log.
async fn log_master_changes(mut metrics: watch::Receiver<openraft::RaftMetrics<u64, RaftPeer>>) {
    let mut known = None;
    while metrics.changed().await.is_ok() {
        let (leader, term, name) = {
            let metrics = metrics.borrow();
            let leader = metrics.current_leader;
            let name = leader
                .and_then(|id| {
                    metrics
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .cloned()
                })
                .map(|peer| peer.name);
            (leader, metrics.current_term, name)
        };
        if leader == known {
            continue;
        }
        known = leader;
        match (leader, name) {
            (Some(_), Some(name)) => tracing::info!(master = %name, term, "master changed"),
            (Some(raft_id), None) => {
                tracing::info!(master_raft_id = raft_id, term, "master changed")
            }
            (None, _) => tracing::info!(term, "no master known"),
        }
    }
}

/// Commits a barrier through the master and waits until this node has applied it, then marks
/// the node caught up. Retries until the cluster answers.
async fn catch_up(consensus: std::sync::Weak<Consensus>) {
    loop {
        let Some(consensus) = consensus.upgrade() else {
            return;
        };
        if let Ok(outcome) = consensus
            .propose(StateCommand::Barrier, Duration::from_secs(10))
            .await
            && consensus.state().version >= outcome.version
        {
            consensus
                .caught_up
                .store(true, std::sync::atomic::Ordering::Release);
            tracing::debug!(
                version = outcome.version,
                "caught up with the cluster state"
            );
            return;
        }
        drop(consensus);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_for_another_node_or_cluster_are_refused() {
        assert_eq!(foreign_message("n1", Some("c1"), "n1", Some("c1")), None);
        assert_eq!(
            foreign_message("n1", None, "n1", Some("c1")),
            None,
            "a node joining its first cluster takes its log"
        );
        assert_eq!(
            foreign_message("n1", Some("c1"), "n1", None),
            None,
            "a founder that has not committed its uuid yet"
        );
        let other_cluster = foreign_message("n1", Some("c1"), "n1", Some("c2"));
        assert!(
            other_cluster.is_some_and(|reason| reason.contains("[c1]") && reason.contains("[c2]"))
        );
        let other_node = foreign_message("n1", Some("c1"), "n9", Some("c1"));
        assert!(other_node.is_some_and(|reason| reason.contains("[n9]")));
    }

    #[test]
    fn raft_ids_are_stable_and_distinct() {
        assert_eq!(raft_id("abc"), raft_id("abc"));
        assert_ne!(raft_id("abc"), raft_id("abd"));
    }
}
