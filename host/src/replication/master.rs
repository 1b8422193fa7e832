//! The master's allocation loop: whenever membership or the cluster state changes, the elected
//! master fails the copies of departed nodes (promoting in-sync replicas), assigns missing
//! copies, and moves copies off excluded nodes, committing the result as one `Reroute`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::cluster::allocation::{
    self, AllocationSettings, DataNode, IndexRouting, Move, ShardCopy,
};
use crate::cluster::state::{ClusterState, StateCommand};
use crate::config::Role;
use crate::ids::new_uuid;
use crate::node::NodeState;

const TICK: Duration = Duration::from_millis(250);

/// A node this master has never seen alive is given this long to show up (after a full
/// restart gossip needs a moment) before its copies are failed.
const UNSEEN_GRACE: Duration = Duration::from_secs(10);

/// The live nodes that hold data, as allocation sees them.
pub fn data_nodes(node: &NodeState) -> Vec<DataNode> {
    node.cluster
        .membership
        .live_nodes()
        .into_iter()
        .filter(|meta| meta.has_role(Role::Data))
        .map(|meta| DataNode {
            node_id: meta.node_id,
            name: meta.name,
            zone: meta.zone,
        })
        .collect()
}

/// The allocation settings in effect.
pub fn allocation_settings(state: &ClusterState) -> AllocationSettings {
    AllocationSettings::from_settings(|key| {
        state.setting(key).map(|value| match value {
            Value::String(text) => text.clone(),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        })
    })
}

/// Runs on every node; acts while this node is the elected master.
pub async fn run(node: Arc<NodeState>, mut stop: watch::Receiver<bool>) {
    let started = Instant::now();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut states = node.cluster.consensus.watch();
    let mut events = node.cluster.membership.subscribe();
    loop {
        tokio::select! {
            _ = states.changed() => {}
            _ = events.recv() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        let nodes = data_nodes(&node);
        seen.extend(nodes.iter().map(|n| n.node_id.clone()));
        let is_master = node
            .cluster
            .consensus
            .master()
            .is_some_and(|master| master.node_id == node.identity.node_id);
        if !is_master {
            continue;
        }
        let state = node.cluster.consensus.state();
        if state.cluster_uuid.is_none() || state.routing.is_empty() {
            continue;
        }
        let in_grace = started.elapsed() < UNSEEN_GRACE;
        let Some(routing) = decide(&state, &nodes, |id| in_grace && !seen.contains(id)) else {
            continue;
        };
        let command = StateCommand::Reroute {
            based_on: state.version,
            routing,
        };
        if let Err(err) = node
            .cluster
            .consensus
            .propose(command, Duration::from_secs(5))
            .await
        {
            tracing::debug!(error = %err, "reroute not committed; recomputing");
        }
    }
}

/// One allocation round; `None` when nothing changes. `awaited(node_id)` says a missing node
/// should be waited for rather than failed.
pub fn decide(
    state: &ClusterState,
    live: &[DataNode],
    awaited: impl Fn(&str) -> bool,
) -> Option<BTreeMap<String, IndexRouting>> {
    let mut routing = state.routing.clone();
    // Nodes still awaited count as live for failing, but get nothing new.
    let mut present = live.to_vec();
    for index in routing.values() {
        for shard in &index.shards {
            for copy in &shard.copies {
                if awaited(&copy.node_id) && !present.iter().any(|n| n.node_id == copy.node_id) {
                    present.push(DataNode {
                        node_id: copy.node_id.clone(),
                        name: String::new(),
                        zone: None,
                    });
                }
            }
        }
    }
    allocation::fail_departed(&mut routing, &present);
    let settings = allocation_settings(state);
    let decided = allocation::allocate(&routing, live, &settings, &BTreeSet::new(), new_uuid);
    let mut routing = decided.routing;
    let mut moves = decided.moves;
    if moves.is_empty() {
        moves = allocation::awareness_moves(&routing, live, &settings);
    }
    apply_moves(&mut routing, &moves);
    trim_surplus(&mut routing, live, &settings);
    (routing != state.routing).then_some(routing)
}

/// Relocates copies (off excluded nodes, or to a zone without one): first a new copy on the
/// target; once it has started, [`trim_surplus`] drops the copy it replaces.
fn apply_moves(routing: &mut BTreeMap<String, IndexRouting>, moves: &[Move]) {
    for planned in moves {
        let Some(index) = routing.get_mut(&planned.index) else {
            continue;
        };
        let wanted = index.replicas as usize + 1;
        let Some(shard) = index.shards.get_mut(planned.shard) else {
            continue;
        };
        let source = shard
            .copies
            .iter()
            .find(|copy| copy.node_id == planned.from)
            .map(|copy| copy.allocation_id.clone());
        let settled = shard.copies.iter().all(|copy| copy.started);
        if let Some(source) = source
            && settled
            && shard.copies.len() <= wanted
        {
            shard.copies.push(relocation(&planned.to, source));
        }
    }
}

/// A new copy on `node_id` that replaces the copy `source` once it has started.
pub fn relocation(node_id: &str, source: String) -> ShardCopy {
    ShardCopy {
        node_id: node_id.to_string(),
        primary: false,
        started: false,
        allocation_id: new_uuid(),
        replaces: Some(source),
    }
}

/// A settled shard with more copies than it wants (a relocation's new copy has started) drops
/// one: the copy a relocation replaces, else a copy on an excluded node (a primary there hands
/// over to an in-sync replica), else a replica from its most crowded zone.
fn trim_surplus(
    routing: &mut BTreeMap<String, IndexRouting>,
    live: &[DataNode],
    settings: &AllocationSettings,
) {
    let node = |node_id: &str| live.iter().find(|node| node.node_id == node_id);
    let zone_of = |node_id: &str| node(node_id).and_then(|node| node.zone.clone());
    let excluded = |node_id: &str| node(node_id).is_some_and(|node| settings.excludes(node));
    for index in routing.values_mut() {
        let wanted = index.replicas as usize + 1;
        for shard in &mut index.shards {
            if shard.copies.len() <= wanted || shard.copies.iter().any(|copy| !copy.started) {
                continue;
            }
            let mut per_zone: BTreeMap<Option<String>, usize> = BTreeMap::new();
            for copy in &shard.copies {
                *per_zone.entry(zone_of(&copy.node_id)).or_default() += 1;
            }
            let crowding =
                |copy: &&ShardCopy| per_zone.get(&zone_of(&copy.node_id)).copied().unwrap_or(0);
            let replaced = shard
                .copies
                .iter()
                .filter_map(|copy| copy.replaces.as_ref())
                .find(|source| shard.copies.iter().any(|c| &c.allocation_id == *source))
                .cloned();
            let victim = replaced.or_else(|| {
                shard
                    .copies
                    .iter()
                    .filter(|copy| excluded(&copy.node_id))
                    .min_by_key(|copy| copy.primary)
                    .or_else(|| {
                        shard
                            .copies
                            .iter()
                            .filter(|copy| !copy.primary)
                            .max_by_key(crowding)
                    })
                    .map(|copy| copy.allocation_id.clone())
            });
            if let Some(allocation_id) = victim {
                allocation::fail_copy(shard, &allocation_id);
                for copy in &mut shard.copies {
                    copy.replaces = None;
                }
            }
        }
    }
}
