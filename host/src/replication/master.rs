//! The master's allocation loop: whenever membership or the cluster state changes, the elected
//! master fails the copies of departed nodes (promoting in-sync replicas), assigns missing
//! copies, and moves copies off excluded nodes, committing the result as one `Reroute`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use super::down_check::{ASK_TIMEOUT, DownChecks};
use crate::cluster::allocation::{
    self, AllocationSettings, DataNode, IndexRouting, Move, ShardCopy, Waiting,
};
use crate::cluster::crash_probe::port_refuses;
use crate::cluster::node_meta::NodeMeta;
use crate::cluster::state::{ClusterState, StateCommand};
use crate::config::Role;
use crate::ids::new_uuid;
use crate::node::NodeState;

const TICK: Duration = Duration::from_millis(250);

/// A node this master has never seen alive is given this long to show up (after a full
/// restart gossip needs a moment) before its copies are failed.
const UNSEEN_GRACE: Duration = Duration::from_secs(10);

/// The live nodes that hold data, as allocation sees them: admitted to the cluster (so never
/// one of another cluster that gossip happened to find), whichever node places the copies.
pub fn data_nodes(node: &NodeState) -> Vec<DataNode> {
    let consensus = &node.cluster.consensus;
    node.cluster
        .membership
        .live_nodes()
        .into_iter()
        .filter(|meta| meta.has_role(Role::Data) && consensus.is_member(&meta.node_id))
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
    let mut departures = Departures::default();
    let mut down_checks = DownChecks::default();
    let (answers_tx, mut answers) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
    loop {
        tokio::select! {
            _ = states.changed() => {}
            _ = events.recv() => {}
            Some((node_id, answered)) = answers.recv() => {
                down_checks.record(&node_id, answered, Instant::now());
            }
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        let nodes = data_nodes(&node);
        seen.extend(nodes.iter().map(|n| n.node_id.clone()));
        // Every node keeps the last life it saw of each node, to ask it should it become master.
        let live = node.cluster.membership.live_nodes();
        down_checks.update(&live, None::<&str>, |_| false, Instant::now());
        let is_master = node
            .cluster
            .consensus
            .master()
            .is_some_and(|master| master.node_id == node.identity.node_id);
        if !is_master {
            continue;
        }
        let state = node.cluster.consensus.state();
        let in_grace = started.elapsed() < UNSEEN_GRACE;
        crate::snapshot::lease::release_stale(&node, &state, |id| in_grace && !seen.contains(id))
            .await;
        if state.cluster_uuid.is_none() || state.routing.is_empty() {
            continue;
        }
        ask_lost_holders(&node, &state, &live, &mut down_checks, &answers_tx);
        let waiting = departures.waiting(&state, &nodes);
        publish_delayed(&node, &state, &waiting.delayed).await;
        let now = Instant::now();
        let Some(routing) = decide(&state, &nodes, &waiting, |id| {
            (in_grace && !seen.contains(id)) || down_checks.vouches_for(id, now)
        }) else {
            continue;
        };
        let command = StateCommand::Reroute {
            based_on: state.version,
            routing,
        };
        propose_decision(&node, command, "reroute").await;
    }
}

/// Asks each node that holds a copy but that gossip lost whether it is still there (see
/// [`DownChecks`]); the answers come back on `answers`.
fn ask_lost_holders(
    node: &Arc<NodeState>,
    state: &ClusterState,
    live: &[NodeMeta],
    checks: &mut DownChecks,
    answers: &tokio::sync::mpsc::UnboundedSender<(String, bool)>,
) {
    let membership = &node.cluster.membership;
    let holders = state
        .routing
        .values()
        .flat_map(|index| &index.shards)
        .flat_map(|shard| &shard.copies)
        .map(|copy| copy.node_id.as_str());
    let crashed = |meta: &_| membership.crashed(meta);
    let to_ask = checks.update(live, holders, crashed, Instant::now());
    for lost in to_ask {
        let rpc = node.cluster.rpc.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            // A dead process's port refuses at once, where the question would wait it out.
            let answered = tokio::select! {
                answer = rpc.node_info(lost.transport_addr, ASK_TIMEOUT) => {
                    answer.is_ok_and(|meta| meta.node_id == lost.node_id)
                }
                true = port_refuses(lost.transport_addr) => false,
            };
            tracing::info!(node = %lost.name, node_id = %lost.node_id, answered, "gossip lost a node holding copies; asked it directly");
            let _ = answers.send((lost.node_id, answered));
        });
    }
}

/// Commits a master decision; one that does not commit is recomputed on the next round.
async fn propose_decision(node: &NodeState, command: StateCommand, what: &'static str) {
    if let Err(err) = node
        .cluster
        .consensus
        .propose(command, Duration::from_secs(5))
        .await
    {
        tracing::debug!(decision = what, error = %err, "not committed; recomputing");
    }
}

/// Commits the shards waiting for a departed node when they changed, so that every node's
/// health reports them.
async fn publish_delayed(
    node: &NodeState,
    state: &ClusterState,
    delayed: &BTreeSet<(String, usize)>,
) {
    let mut shards: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (index, number) in delayed {
        shards
            .entry(index.clone())
            .or_default()
            .insert(*number as u32);
    }
    if shards == state.delayed_shards {
        return;
    }
    propose_decision(
        node,
        StateCommand::SetDelayedShards { shards },
        "delayed shards",
    )
    .await;
}

/// When the master saw each shard lose a copy with its node, to delay rebuilding it
/// (`index.unassigned.node_left.delayed_timeout`): a node back from a restart takes its copies
/// again instead of the cluster copying them elsewhere meanwhile.
#[derive(Debug, Default)]
pub struct Departures {
    /// `(index, shard)` → the departed node and when its copy was seen gone.
    lost: HashMap<(String, usize), (String, Instant)>,
    /// `(index, shard)` → the departed node that came back within the delay, and when.
    returned: HashMap<(String, usize), (String, Instant)>,
}

/// How long a returning node stays first choice for a new replica of its shard.
const RETURN_PREFERENCE: Duration = Duration::from_secs(60);

impl Departures {
    /// Records copies on nodes that are gone; returns the shards still within their delay whose
    /// node has not come back, and those whose node came back.
    pub fn waiting(&mut self, state: &ClusterState, live: &[DataNode]) -> Waiting {
        let is_live = |id: &str| live.iter().any(|node| node.node_id == id);
        for (name, routing) in &state.routing {
            for (number, shard) in routing.shards.iter().enumerate() {
                for copy in shard.copies.iter().filter(|copy| !is_live(&copy.node_id)) {
                    self.lost
                        .entry((name.clone(), number))
                        .or_insert_with(|| (copy.node_id.clone(), Instant::now()));
                }
            }
        }
        let returned = &mut self.returned;
        self.lost.retain(|key, (node_id, at)| {
            let timeout = state.indices.get(&key.0).map_or(Duration::ZERO, |meta| {
                meta.settings.node_left_delayed_timeout
            });
            let within = at.elapsed() < timeout;
            if within && is_live(node_id) {
                returned.insert(key.clone(), (node_id.clone(), Instant::now()));
            }
            within && !is_live(node_id)
        });
        self.returned
            .retain(|_, (_, at)| at.elapsed() < RETURN_PREFERENCE);
        Waiting {
            delayed: self.lost.keys().cloned().collect(),
            returned: self
                .returned
                .iter()
                .map(|(key, (node_id, _))| (key.clone(), node_id.clone()))
                .collect(),
        }
    }
}

/// One allocation round; `None` when nothing changes. `awaited(node_id)` says a missing node
/// should be waited for rather than failed.
pub fn decide(
    state: &ClusterState,
    live: &[DataNode],
    waiting: &Waiting,
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
    let decided = allocation::allocate(&routing, live, &settings, waiting, new_uuid);
    let mut routing = decided.routing;
    let mut moves = decided.moves;
    if moves.is_empty() {
        moves = allocation::awareness_moves(&routing, live, &settings);
    }
    if moves.is_empty() {
        moves = allocation::balance_moves(&routing, live, &settings);
    }
    apply_moves(&mut routing, &moves);
    trim_surplus(&mut routing, live, &settings);
    throttle_recoveries(&mut routing, &state.routing, concurrent_recoveries(state));
    (routing != state.routing).then_some(routing)
}

/// `cluster.routing.allocation.node_concurrent_recoveries` (default 2).
fn concurrent_recoveries(state: &ClusterState) -> usize {
    state
        .setting("cluster.routing.allocation.node_concurrent_recoveries")
        .and_then(|value| match value {
            Value::String(text) => text.parse().ok(),
            other => other.as_u64().map(|n| n as usize),
        })
        .unwrap_or(2)
        .max(1)
}

/// Keeps at most `limit` replicas recovering onto each node: new ones beyond that wait for a
/// later round, so a node that returns is not flooded with file copies.
fn throttle_recoveries(
    routing: &mut BTreeMap<String, IndexRouting>,
    before: &BTreeMap<String, IndexRouting>,
    limit: usize,
) {
    let existing: BTreeSet<&str> = before
        .values()
        .flat_map(|index| index.shards.iter())
        .flat_map(|shard| shard.copies.iter())
        .map(|copy| copy.allocation_id.as_str())
        .collect();
    let mut recovering: HashMap<String, usize> = HashMap::new();
    for copy in before
        .values()
        .flat_map(|index| index.shards.iter())
        .flat_map(|shard| shard.copies.iter())
        .filter(|copy| !copy.started && !copy.primary)
    {
        *recovering.entry(copy.node_id.clone()).or_default() += 1;
    }
    for shard in routing
        .values_mut()
        .flat_map(|index| index.shards.iter_mut())
    {
        shard.copies.retain(|copy| {
            if copy.primary || copy.started || existing.contains(copy.allocation_id.as_str()) {
                return true;
            }
            let count = recovering.entry(copy.node_id.clone()).or_default();
            *count += 1;
            *count <= limit
        });
    }
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

/// Settled shards drop copies: the copy a started relocation replaces; else, with more copies
/// than wanted, a copy on an excluded node (a primary there hands over to an in-sync replica),
/// else a replica from its most crowded zone.
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
            if shard.copies.iter().any(|copy| !copy.started) {
                continue;
            }
            let replaced = shard
                .copies
                .iter()
                .filter_map(|copy| copy.replaces.as_ref())
                .find(|source| shard.copies.iter().any(|c| &c.allocation_id == *source))
                .cloned();
            // A relocation ends when its copy has started, even on a shard short of copies
            // (its new copy must not stay as an extra replica, e.g. against forced awareness).
            if let Some(source) = replaced {
                allocation::fail_copy(shard, &source);
                for copy in &mut shard.copies {
                    copy.replaces = None;
                }
                continue;
            }
            if shard.copies.len() <= wanted {
                continue;
            }
            let mut per_zone: BTreeMap<Option<String>, usize> = BTreeMap::new();
            for copy in &shard.copies {
                *per_zone.entry(zone_of(&copy.node_id)).or_default() += 1;
            }
            let crowding =
                |copy: &&ShardCopy| per_zone.get(&zone_of(&copy.node_id)).copied().unwrap_or(0);
            let victim = shard
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
                .map(|copy| copy.allocation_id.clone());
            if let Some(allocation_id) = victim {
                allocation::fail_copy(shard, &allocation_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::allocation::ShardRouting;
    use crate::cluster::state::IndexMetadata;

    fn node(id: &str) -> DataNode {
        DataNode {
            node_id: id.into(),
            name: id.into(),
            zone: None,
        }
    }

    /// One index of `shards` shards, each with a started primary on n1 and replica on n2.
    fn state(shards: usize, delay: Duration) -> ClusterState {
        let mut state = ClusterState::default();
        let mut settings = crate::index::IndexSettings {
            number_of_shards: shards as u32,
            ..Default::default()
        };
        settings.node_left_delayed_timeout = delay;
        state.indices.insert(
            "logs".into(),
            IndexMetadata {
                uuid: "u".into(),
                creation_date: 0,
                settings,
                mappings: Value::Null,
            },
        );
        let shard = ShardRouting {
            copies: vec![
                ShardCopy::on("n1", true, true),
                ShardCopy::on("n2", false, true),
            ],
            in_sync: ["n1-true".to_string(), "n2-false".to_string()].into(),
            primary_term: 1,
        };
        state.routing.insert(
            "logs".into(),
            IndexRouting {
                replicas: 1,
                shards: vec![shard; shards],
            },
        );
        state
    }

    #[test]
    fn a_lost_replica_waits_for_its_node_until_the_delay_ends() {
        let live = [node("n1"), node("n3")];
        let waiting = state(1, Duration::from_secs(60));
        let mut departures = Departures::default();
        let delayed = departures.waiting(&waiting, &live);
        assert_eq!(delayed.delayed, BTreeSet::from([("logs".to_string(), 0)]));
        let routing = decide(&waiting, &live, &delayed, |_| false).expect("the copy is dropped");
        assert_eq!(
            routing["logs"].shards[0].copies.len(),
            1,
            "n3 gets nothing yet"
        );

        let back = [node("n1"), node("n2"), node("n3")];
        let back_again = departures.waiting(&waiting, &back);
        assert!(back_again.delayed.is_empty(), "the node came back");
        assert_eq!(
            back_again.returned,
            BTreeMap::from([(("logs".to_string(), 0), "n2".to_string())]),
            "its replica goes back to it first"
        );

        let immediate = state(1, Duration::ZERO);
        let delayed = Departures::default().waiting(&immediate, &live);
        assert!(delayed.delayed.is_empty());
        let routing = decide(&immediate, &live, &delayed, |_| false).expect("rebuilt");
        let nodes: Vec<&str> = routing["logs"].shards[0]
            .copies
            .iter()
            .map(|c| c.node_id.as_str())
            .collect();
        assert_eq!(nodes, ["n1", "n3"]);
    }

    #[test]
    fn recoveries_onto_one_node_are_throttled() {
        let live = [node("n1"), node("n3")];
        let state = state(5, Duration::ZERO);
        let routing = decide(&state, &live, &Waiting::default(), |_| false).expect("changes");
        let recovering = routing["logs"]
            .shards
            .iter()
            .flat_map(|s| s.copies.iter())
            .filter(|c| c.node_id == "n3" && !c.started)
            .count();
        assert_eq!(recovering, 2, "node_concurrent_recoveries defaults to 2");
    }

    #[test]
    fn a_relocation_on_a_shard_short_of_copies_does_not_leave_an_extra_copy() {
        let zone_a = |id: &str| DataNode {
            node_id: id.into(),
            name: id.into(),
            zone: Some("a".into()),
        };
        let live = [zone_a("n1"), zone_a("n2")];
        let mut state = state(2, Duration::ZERO);
        for shard in &mut state.routing.get_mut("logs").expect("index").shards {
            shard.copies.retain(|c| c.primary);
            shard.in_sync.retain(|id| id == "n1-true");
        }
        state.persistent_settings.insert(
            "cluster.routing.allocation.awareness.attributes".into(),
            Value::String("zone".into()),
        );
        state.persistent_settings.insert(
            "cluster.routing.allocation.awareness.force.zone.values".into(),
            Value::String("a,b".into()),
        );
        // Forced awareness leaves the replicas unassigned; balancing moves one primary to n2.
        let mut routing = decide(&state, &live, &Waiting::default(), |_| false).expect("a move");
        let moving: Vec<&ShardCopy> = routing["logs"]
            .shards
            .iter()
            .flat_map(|s| s.copies.iter())
            .filter(|c| c.replaces.is_some())
            .collect();
        assert_eq!(moving.len(), 1);
        assert_eq!(moving[0].node_id, "n2");
        for copy in routing
            .get_mut("logs")
            .expect("index")
            .shards
            .iter_mut()
            .flat_map(|s| s.copies.iter_mut())
        {
            copy.started = true;
        }
        for shard in &mut routing.get_mut("logs").expect("index").shards {
            let ids: Vec<String> = shard
                .copies
                .iter()
                .map(|c| c.allocation_id.clone())
                .collect();
            shard.in_sync.extend(ids);
        }
        state.routing = routing;
        state.version += 1;
        let settled = decide(&state, &live, &Waiting::default(), |_| false).expect("trimmed");
        for shard in &settled["logs"].shards {
            assert_eq!(shard.copies.len(), 1, "no zone takes two copies: {shard:?}");
            assert!(shard.primary().is_some());
        }
    }
}
