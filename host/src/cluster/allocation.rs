//! Shard allocation as pure functions: given the routing table, the live data nodes and the
//! allocation settings, decide which copies fail over, which are assigned where, and which
//! should move. The master applies the result through the cluster-state log; nothing here
//! touches the network or the disk, so every rule is unit-tested alone.
//!
//! Rules, as Elasticsearch applies them:
//! - no two copies of a shard on one node;
//! - a primary on a departed node is replaced by an in-sync replica under a new primary term;
//!   a copy that is not in sync is never promoted (the shard goes red instead);
//! - awareness (`awareness.attributes: zone`): copies of a shard spread over zones;
//! - forced awareness (`awareness.force.zone.values`): no zone takes more than its share of a
//!   shard's copies, so losing a zone leaves replicas unassigned rather than crowding the rest;
//! - exclusions (`exclude._name`, `exclude._id`, `exclude.zone`) take nodes out of placement and
//!   move their copies away;
//! - among allowed nodes, the one with the fewest copies wins (ties by node id, for determinism);
//! - replicas of a departed node wait `index.unassigned.node_left.delayed_timeout` before being
//!   re-created elsewhere (the caller passes which shards are still within their delay).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// A node as allocation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataNode {
    pub node_id: String,
    pub name: String,
    pub zone: Option<String>,
}

/// Which new allocations `cluster.routing.allocation.enable` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EnableAllocation {
    #[default]
    All,
    Primaries,
    NewPrimaries,
    None,
}

/// The allocation settings, read from the cluster settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocationSettings {
    pub zone_awareness: bool,
    /// Forced awareness zone values; empty when not forced.
    pub forced_zones: Vec<String>,
    pub exclude_names: BTreeSet<String>,
    pub exclude_ids: BTreeSet<String>,
    pub exclude_zones: BTreeSet<String>,
    pub enable: EnableAllocation,
    pub rebalance: Rebalance,
}

/// Which copies `cluster.routing.rebalance.enable` lets balancing move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rebalance {
    #[default]
    All,
    Primaries,
    Replicas,
    None,
}

impl AllocationSettings {
    /// Reads the `cluster.routing.allocation.*` settings (comma lists as Elasticsearch takes
    /// them); unknown enable values fall back to `all`, as they are refused on input.
    pub fn from_settings(lookup: impl Fn(&str) -> Option<String>) -> AllocationSettings {
        let list = |key: &str| -> BTreeSet<String> {
            lookup(key)
                .map(|value| {
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let awareness = list("cluster.routing.allocation.awareness.attributes");
        let enable = match lookup("cluster.routing.allocation.enable").as_deref() {
            Some("primaries") => EnableAllocation::Primaries,
            Some("new_primaries") => EnableAllocation::NewPrimaries,
            Some("none") => EnableAllocation::None,
            _ => EnableAllocation::All,
        };
        AllocationSettings {
            zone_awareness: awareness.contains("zone"),
            forced_zones: list("cluster.routing.allocation.awareness.force.zone.values")
                .into_iter()
                .collect(),
            exclude_names: list("cluster.routing.allocation.exclude._name"),
            exclude_ids: list("cluster.routing.allocation.exclude._id"),
            exclude_zones: list("cluster.routing.allocation.exclude.zone"),
            enable,
            rebalance: match lookup("cluster.routing.rebalance.enable").as_deref() {
                Some("primaries") => Rebalance::Primaries,
                Some("replicas") => Rebalance::Replicas,
                Some("none") => Rebalance::None,
                _ => Rebalance::All,
            },
        }
    }

    pub fn excludes(&self, node: &DataNode) -> bool {
        self.exclude_names.contains(&node.name)
            || self.exclude_ids.contains(&node.node_id)
            || node
                .zone
                .as_ref()
                .is_some_and(|zone| self.exclude_zones.contains(zone))
    }
}

/// One copy of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCopy {
    pub node_id: String,
    pub primary: bool,
    /// Started copies serve reads; initializing ones are recovering.
    pub started: bool,
    /// A stable id for this copy, recorded in the shard's in-sync set.
    pub allocation_id: String,
    /// A relocating copy names the copy it replaces, dropped once this one has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

#[cfg(test)]
impl ShardCopy {
    /// A copy for tests; its allocation id is `{node_id}-{primary}`.
    pub(crate) fn on(node_id: &str, primary: bool, started: bool) -> ShardCopy {
        ShardCopy {
            node_id: node_id.into(),
            primary,
            started,
            allocation_id: format!("{node_id}-{primary}"),
            replaces: None,
        }
    }
}

/// Routing of one shard: its copies, in-sync set and primary term.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShardRouting {
    pub copies: Vec<ShardCopy>,
    /// Allocation ids of the copies known to hold every acknowledged write.
    pub in_sync: BTreeSet<String>,
    pub primary_term: u64,
}

impl ShardRouting {
    pub fn primary(&self) -> Option<&ShardCopy> {
        self.copies.iter().find(|copy| copy.primary)
    }

    /// red: no primary; yellow: missing replicas; green: every copy started.
    pub fn health(&self, replicas: u32) -> Health {
        match self.primary() {
            None => Health::Red,
            Some(primary) if !primary.started => Health::Red,
            Some(_) => {
                let started = self.copies.iter().filter(|copy| copy.started).count();
                if started > replicas as usize {
                    Health::Green
                } else {
                    Health::Yellow
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Health {
    Green,
    Yellow,
    Red,
}

/// Routing of one index.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IndexRouting {
    pub replicas: u32,
    pub shards: Vec<ShardRouting>,
}

/// A proposed relocation: start a copy on `to`, then drop the one on `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub index: String,
    pub shard: usize,
    pub from: String,
    pub to: String,
}

/// What one allocation round decided.
#[derive(Debug, Default)]
pub struct Allocation {
    pub routing: BTreeMap<String, IndexRouting>,
    /// Copies that should move off excluded nodes.
    pub moves: Vec<Move>,
    /// Human-readable reasons for copies left unassigned, for allocation/explain.
    pub unassigned: Vec<(String, usize, String)>,
}

/// Removes copies on nodes that are gone and promotes an in-sync replica wherever a primary
/// was lost (new primary term). Shards with no in-sync copy left lose their primary: red.
pub fn fail_departed(routing: &mut BTreeMap<String, IndexRouting>, live: &[DataNode]) {
    let live_ids: BTreeSet<&str> = live.iter().map(|node| node.node_id.as_str()).collect();
    for index in routing.values_mut() {
        for shard in &mut index.shards {
            let departed: Vec<String> = shard
                .copies
                .iter()
                .filter(|copy| !live_ids.contains(copy.node_id.as_str()))
                .map(|copy| copy.allocation_id.clone())
                .collect();
            for allocation_id in departed {
                remove_copy(shard, &allocation_id);
            }
        }
    }
}

/// Makes a returning in-sync copy the primary of a shard that has none (a new term, so
/// anything the copy's old primary term still sends is fenced off). Other copies are dropped:
/// they were not in sync. Returns false when the shard has a primary or the copy is not in sync.
pub fn reinstate_primary(shard: &mut ShardRouting, allocation_id: &str, node_id: &str) -> bool {
    if shard.primary().is_some() || !shard.in_sync.contains(allocation_id) {
        return false;
    }
    shard.primary_term += 1;
    shard.copies = vec![ShardCopy {
        node_id: node_id.to_string(),
        primary: true,
        started: false,
        allocation_id: allocation_id.to_string(),
        replaces: None,
    }];
    true
}

/// Removes one failed copy from a shard and from its in-sync set; returns false when the copy
/// is not allocated any more.
pub fn fail_copy(shard: &mut ShardRouting, allocation_id: &str) -> bool {
    remove_copy(shard, allocation_id)
}

/// Removes a copy; a lost primary is replaced by a started in-sync replica under a new term.
/// While the shard keeps a primary, the removed copy leaves the in-sync set too (the primary
/// acknowledges writes without it from now on). When no primary is left, the set is kept, so
/// the shard turns red rather than restarting empty, and a returning in-sync copy can be made
/// primary again.
fn remove_copy(shard: &mut ShardRouting, allocation_id: &str) -> bool {
    let Some(position) = shard
        .copies
        .iter()
        .position(|copy| copy.allocation_id == allocation_id)
    else {
        return false;
    };
    let removed = shard.copies.remove(position);
    if removed.primary {
        promote_replica(shard);
    }
    if shard.primary().is_some() {
        shard.in_sync.remove(allocation_id);
    }
    true
}

/// Makes a started in-sync replica the primary in a new term. The other copies are dropped
/// and recovered afresh from it: they may hold operations of the old term that the new primary
/// never saw, and a file copy is the one resync that cannot diverge.
fn promote_replica(shard: &mut ShardRouting) {
    let in_sync = &shard.in_sync;
    let Some(position) = shard
        .copies
        .iter()
        .position(|copy| copy.started && in_sync.contains(&copy.allocation_id))
    else {
        return;
    };
    let mut promoted = shard.copies.swap_remove(position);
    promoted.primary = true;
    shard.primary_term += 1;
    shard.in_sync = BTreeSet::from([promoted.allocation_id.clone()]);
    shard.copies = vec![promoted];
}

/// What departed nodes hold back or steer (`replication::master::Departures` keeps it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Waiting {
    /// Shards whose lost replica waits for its departed node (within its delayed timeout).
    pub delayed: BTreeSet<(String, usize)>,
    /// Shards whose departed node came back: a new replica goes there first, where the copy
    /// it kept on disk can catch up by operations.
    pub returned: BTreeMap<(String, usize), String>,
}

/// Assigns missing primaries of new shards and missing replicas, and proposes moves off
/// excluded nodes. `delayed` lists `(index, shard)` whose lost replicas are still within
/// their delayed timeout; `new_id` makes allocation ids.
pub fn allocate(
    routing: &BTreeMap<String, IndexRouting>,
    nodes: &[DataNode],
    settings: &AllocationSettings,
    waiting: &Waiting,
    mut new_id: impl FnMut() -> String,
) -> Allocation {
    let mut result = Allocation {
        routing: routing.clone(),
        ..Allocation::default()
    };
    let mut load: HashMap<String, usize> =
        nodes.iter().map(|node| (node.node_id.clone(), 0)).collect();
    for index in routing.values() {
        for shard in &index.shards {
            for copy in &shard.copies {
                *load.entry(copy.node_id.clone()).or_default() += 1;
            }
        }
    }
    let by_id: HashMap<&str, &DataNode> = nodes
        .iter()
        .map(|node| (node.node_id.as_str(), node))
        .collect();
    for (name, index) in result.routing.iter_mut() {
        for (number, shard) in index.shards.iter_mut().enumerate() {
            let wanted = index.replicas as usize + 1;
            // A shard that never had copies is new; one that lost them all keeps no primary,
            // because an empty primary would silently drop acknowledged writes.
            let is_new = shard.copies.is_empty() && shard.in_sync.is_empty();
            if shard.primary().is_none() && !is_new {
                result.unassigned.push((
                    name.clone(),
                    number,
                    "no in-sync copy of this shard is on a live node".into(),
                ));
                continue;
            }
            while shard.copies.len() < wanted {
                let assigning_primary = shard.primary().is_none();
                let allowed = match settings.enable {
                    EnableAllocation::All => true,
                    EnableAllocation::Primaries => assigning_primary,
                    EnableAllocation::NewPrimaries => assigning_primary && is_new,
                    EnableAllocation::None => false,
                };
                if !allowed {
                    result.unassigned.push((
                        name.clone(),
                        number,
                        format!(
                            "allocation is disabled by cluster.routing.allocation.enable ({:?})",
                            settings.enable
                        ),
                    ));
                    break;
                }
                let key = (name.clone(), number);
                if !assigning_primary && waiting.delayed.contains(&key) {
                    result.unassigned.push((
                        name.clone(),
                        number,
                        "waiting for the departed node (index.unassigned.node_left.delayed_timeout)".into(),
                    ));
                    break;
                }
                let preferred = waiting
                    .returned
                    .get(&key)
                    .filter(|_| !assigning_primary)
                    .map(String::as_str);
                match pick_node(shard, wanted, nodes, &by_id, settings, &load, preferred) {
                    Ok(node_id) => {
                        *load.entry(node_id.clone()).or_default() += 1;
                        let allocation_id = new_id();
                        if assigning_primary {
                            shard.primary_term = shard.primary_term.max(1);
                            shard.in_sync.insert(allocation_id.clone());
                        }
                        shard.copies.push(ShardCopy {
                            node_id,
                            primary: assigning_primary,
                            started: false,
                            allocation_id,
                            replaces: None,
                        });
                    }
                    Err(reason) => {
                        result.unassigned.push((name.clone(), number, reason));
                        break;
                    }
                }
            }
            for copy in &shard.copies {
                let excluded = by_id
                    .get(copy.node_id.as_str())
                    .is_some_and(|node| settings.excludes(node));
                if !excluded {
                    continue;
                }
                if let Ok(to) = pick_node(shard, wanted + 1, nodes, &by_id, settings, &load, None) {
                    result.moves.push(Move {
                        index: name.clone(),
                        shard: number,
                        from: copy.node_id.clone(),
                        to,
                    });
                }
            }
        }
    }
    result
}

/// The best node for one more copy of `shard`, or why there is none. Among allowed nodes,
/// awareness comes first, then `preferred` (a returning node), then the lightest load.
fn pick_node(
    shard: &ShardRouting,
    total_copies: usize,
    nodes: &[DataNode],
    by_id: &HashMap<&str, &DataNode>,
    settings: &AllocationSettings,
    load: &HashMap<String, usize>,
    preferred: Option<&str>,
) -> Result<String, String> {
    let holders: BTreeSet<&str> = shard
        .copies
        .iter()
        .map(|copy| copy.node_id.as_str())
        .collect();
    let mut per_zone: HashMap<Option<&str>, usize> = HashMap::new();
    for copy in &shard.copies {
        if let Some(node) = by_id.get(copy.node_id.as_str()) {
            *per_zone.entry(node.zone.as_deref()).or_default() += 1;
        }
    }
    let zone_limit = (!settings.forced_zones.is_empty())
        .then(|| total_copies.div_ceil(settings.forced_zones.len()));
    let mut best: Option<(&DataNode, (usize, bool, usize))> = None;
    let mut reasons = BTreeSet::new();
    for node in nodes {
        if holders.contains(node.node_id.as_str()) {
            reasons.insert("a copy of this shard is already on every other node");
            continue;
        }
        if settings.excludes(node) {
            reasons
                .insert("the remaining nodes are excluded by cluster.routing.allocation.exclude");
            continue;
        }
        let in_zone = per_zone.get(&node.zone.as_deref()).copied().unwrap_or(0);
        if let Some(limit) = zone_limit
            && in_zone + 1 > limit
        {
            reasons.insert(
                "forced awareness: the node's zone already holds its share of this shard's copies",
            );
            continue;
        }
        // Awareness prefers zones with fewer copies of this shard, then the least loaded node.
        let zone_rank = if settings.zone_awareness { in_zone } else { 0 };
        let elsewhere = preferred != Some(node.node_id.as_str());
        let rank = (
            zone_rank,
            elsewhere,
            load.get(&node.node_id).copied().unwrap_or(0),
        );
        let better = match &best {
            None => true,
            Some((current, current_rank)) => {
                rank < *current_rank || (rank == *current_rank && node.node_id < current.node_id)
            }
        };
        if better {
            best = Some((node, rank));
        }
    }
    match best {
        Some((node, _)) => Ok(node.node_id.clone()),
        None if nodes.is_empty() => Err("there are no data nodes".into()),
        None => Err(reasons.into_iter().collect::<Vec<_>>().join("; ")),
    }
}

/// Awareness rebalancing: a settled shard with two copies in one zone while an allowed node
/// sits in a zone holding none of its copies moves one copy there (a replica when it can).
/// This is what brings copies back to a zone restored after maintenance.
pub fn awareness_moves(
    routing: &BTreeMap<String, IndexRouting>,
    nodes: &[DataNode],
    settings: &AllocationSettings,
) -> Vec<Move> {
    if !settings.zone_awareness {
        return Vec::new();
    }
    let by_id: HashMap<&str, &DataNode> = nodes
        .iter()
        .map(|node| (node.node_id.as_str(), node))
        .collect();
    let mut load: HashMap<&str, usize> = HashMap::new();
    for index in routing.values() {
        for shard in &index.shards {
            for copy in &shard.copies {
                *load.entry(copy.node_id.as_str()).or_default() += 1;
            }
        }
    }
    let mut moves = Vec::new();
    for (name, index) in routing {
        for (number, shard) in index.shards.iter().enumerate() {
            if shard.copies.iter().any(|copy| !copy.started)
                || shard.copies.len() > index.replicas as usize + 1
            {
                continue;
            }
            let zone_of = |node_id: &str| by_id.get(node_id).and_then(|n| n.zone.clone());
            let mut per_zone: BTreeMap<Option<String>, Vec<&ShardCopy>> = BTreeMap::new();
            for copy in &shard.copies {
                per_zone
                    .entry(zone_of(&copy.node_id))
                    .or_default()
                    .push(copy);
            }
            let Some(crowded) = per_zone.values().find(|copies| copies.len() > 1) else {
                continue;
            };
            let target = nodes
                .iter()
                .filter(|node| !settings.excludes(node))
                .filter(|node| !per_zone.contains_key(&node.zone))
                .min_by_key(|node| {
                    (
                        load.get(node.node_id.as_str()).copied().unwrap_or(0),
                        &node.node_id,
                    )
                });
            let Some(target) = target else { continue };
            let source = crowded
                .iter()
                .find(|copy| !copy.primary)
                .or_else(|| crowded.first())
                .map(|copy| copy.node_id.clone());
            if let Some(from) = source {
                moves.push(Move {
                    index: name.clone(),
                    shard: number,
                    from,
                    to: target.node_id.clone(),
                });
            }
        }
    }
    moves
}

/// Balancing when nodes join: with every copy settled, one copy moves from the node holding
/// the most copies to the one holding the fewest, when they differ by two or more (a replica
/// when it can; never onto a node that holds the shard, never against zone awareness).
pub fn balance_moves(
    routing: &BTreeMap<String, IndexRouting>,
    nodes: &[DataNode],
    settings: &AllocationSettings,
) -> Vec<Move> {
    let eligible: Vec<&DataNode> = nodes.iter().filter(|n| !settings.excludes(n)).collect();
    let settled = routing
        .values()
        .flat_map(|index| index.shards.iter())
        .all(|shard| shard.copies.iter().all(|copy| copy.started));
    if !settled || eligible.len() < 2 || settings.rebalance == Rebalance::None {
        return Vec::new();
    }
    let mut load: HashMap<&str, usize> = eligible.iter().map(|n| (n.node_id.as_str(), 0)).collect();
    for copy in routing
        .values()
        .flat_map(|index| index.shards.iter())
        .flat_map(|shard| shard.copies.iter())
    {
        if let Some(count) = load.get_mut(copy.node_id.as_str()) {
            *count += 1;
        }
    }
    let by_load = |a: &&&DataNode, b: &&&DataNode| {
        load[a.node_id.as_str()]
            .cmp(&load[b.node_id.as_str()])
            .then_with(|| a.node_id.cmp(&b.node_id))
    };
    let (Some(busiest), Some(idlest)) = (
        eligible.iter().max_by(by_load),
        eligible.iter().min_by(by_load),
    ) else {
        return Vec::new();
    };
    if load[busiest.node_id.as_str()] < load[idlest.node_id.as_str()] + 2 {
        return Vec::new();
    }
    let zone_of = |id: &str| {
        nodes
            .iter()
            .find(|n| n.node_id == id)
            .and_then(|n| n.zone.clone())
    };
    let mut candidates: Vec<(bool, String, usize)> = Vec::new();
    for (name, index) in routing {
        for (number, shard) in index.shards.iter().enumerate() {
            if shard
                .copies
                .iter()
                .any(|copy| copy.node_id == idlest.node_id)
            {
                continue;
            }
            let Some(copy) = shard.copies.iter().find(|c| c.node_id == busiest.node_id) else {
                continue;
            };
            let allowed = match settings.rebalance {
                Rebalance::Primaries => copy.primary,
                Rebalance::Replicas => !copy.primary,
                _ => true,
            };
            // Awareness: the target zone must hold no other copy of this shard.
            let zone_ok = !settings.zone_awareness
                || shard
                    .copies
                    .iter()
                    .filter(|c| c.node_id != copy.node_id)
                    .all(|c| zone_of(&c.node_id) != idlest.zone);
            if allowed && zone_ok {
                candidates.push((copy.primary, name.clone(), number));
            }
        }
    }
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .map(|(_, index, shard)| {
            vec![Move {
                index,
                shard,
                from: busiest.node_id.clone(),
                to: idlest.node_id.clone(),
            }]
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, zone: &str) -> DataNode {
        DataNode {
            node_id: id.into(),
            name: format!("name-{id}"),
            zone: Some(zone.into()),
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut next = 0;
        move || {
            next += 1;
            format!("alloc-{next}")
        }
    }

    fn new_index(shards: usize, replicas: u32) -> BTreeMap<String, IndexRouting> {
        BTreeMap::from([(
            "logs".to_string(),
            IndexRouting {
                replicas,
                shards: vec![ShardRouting::default(); shards],
            },
        )])
    }

    fn start_all(routing: &mut BTreeMap<String, IndexRouting>) {
        for index in routing.values_mut() {
            for shard in &mut index.shards {
                for copy in &mut shard.copies {
                    copy.started = true;
                    shard.in_sync.insert(copy.allocation_id.clone());
                }
            }
        }
    }

    /// A new index allocated with default settings, every copy started and in sync.
    fn started_index(
        nodes: &[DataNode],
        shards: usize,
        replicas: u32,
    ) -> BTreeMap<String, IndexRouting> {
        let mut routing = allocate(
            &new_index(shards, replicas),
            nodes,
            &AllocationSettings::default(),
            &Waiting::default(),
            ids(),
        )
        .routing;
        start_all(&mut routing);
        routing
    }

    /// `nodes` without the one whose id is `gone`.
    fn without(nodes: &[DataNode], gone: &str) -> Vec<DataNode> {
        nodes
            .iter()
            .filter(|n| n.node_id != gone)
            .cloned()
            .collect()
    }

    fn zones_of(shard: &ShardRouting, nodes: &[DataNode]) -> Vec<String> {
        let mut zones: Vec<String> = shard
            .copies
            .iter()
            .filter_map(|copy| nodes.iter().find(|n| n.node_id == copy.node_id))
            .filter_map(|n| n.zone.clone())
            .collect();
        zones.sort();
        zones
    }

    #[test]
    fn copies_spread_over_nodes_and_never_share_one() {
        let nodes = [node("a", "z1"), node("b", "z1"), node("c", "z2")];
        let result = allocate(
            &new_index(3, 1),
            &nodes,
            &AllocationSettings::default(),
            &Waiting::default(),
            ids(),
        );
        let shards = &result.routing["logs"].shards;
        let mut load: HashMap<&str, usize> = HashMap::new();
        for shard in shards {
            assert_eq!(shard.copies.len(), 2);
            assert_ne!(shard.copies[0].node_id, shard.copies[1].node_id);
            assert_eq!(shard.copies.iter().filter(|c| c.primary).count(), 1);
            assert_eq!(shard.primary_term, 1);
            for copy in &shard.copies {
                *load.entry(copy.node_id.as_str()).or_default() += 1;
            }
        }
        assert_eq!(
            load.values().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([2]),
            "6 copies over 3 nodes: {load:?}"
        );
        assert!(result.unassigned.is_empty());
    }

    #[test]
    fn one_node_leaves_replicas_unassigned_with_a_reason() {
        let nodes = [node("a", "z1")];
        let result = allocate(
            &new_index(2, 1),
            &nodes,
            &AllocationSettings::default(),
            &Waiting::default(),
            ids(),
        );
        for shard in &result.routing["logs"].shards {
            assert_eq!(shard.copies.len(), 1);
            assert!(shard.copies[0].primary);
        }
        assert_eq!(result.unassigned.len(), 2);
        assert!(
            result.unassigned[0]
                .2
                .contains("already on every other node"),
            "{:?}",
            result.unassigned
        );
    }

    #[test]
    fn zone_awareness_puts_copies_in_different_zones() {
        let nodes = [
            node("a", "z1"),
            node("b", "z1"),
            node("c", "z2"),
            node("d", "z2"),
        ];
        let settings = AllocationSettings {
            zone_awareness: true,
            ..AllocationSettings::default()
        };
        let result = allocate(
            &new_index(4, 1),
            &nodes,
            &settings,
            &Waiting::default(),
            ids(),
        );
        for shard in &result.routing["logs"].shards {
            assert_eq!(zones_of(shard, &nodes), vec!["z1", "z2"]);
        }
    }

    #[test]
    fn forced_awareness_leaves_replicas_unassigned_when_a_zone_is_lost() {
        let all = [
            node("a", "z1"),
            node("b", "z1"),
            node("c", "z2"),
            node("d", "z2"),
        ];
        let settings = AllocationSettings {
            zone_awareness: true,
            forced_zones: vec!["z1".into(), "z2".into()],
            ..AllocationSettings::default()
        };
        let mut routing = allocate(
            &new_index(2, 1),
            &all,
            &settings,
            &Waiting::default(),
            ids(),
        )
        .routing;
        start_all(&mut routing);

        let survivors = [node("a", "z1"), node("b", "z1")];
        fail_departed(&mut routing, &survivors);
        let result = allocate(&routing, &survivors, &settings, &Waiting::default(), ids());
        for shard in &result.routing["logs"].shards {
            assert_eq!(shard.copies.len(), 1, "zone z1 takes no second copy");
            assert!(
                shard.copies[0].primary,
                "the surviving copy is (or became) primary"
            );
            assert_eq!(zones_of(shard, &survivors), vec!["z1"]);
        }
        assert!(
            result
                .unassigned
                .iter()
                .all(|(_, _, why)| why.contains("forced awareness")),
            "{:?}",
            result.unassigned
        );

        // Without forcing, the surviving zone takes the replicas.
        let unforced = AllocationSettings {
            forced_zones: vec![],
            ..settings
        };
        let result = allocate(&routing, &survivors, &unforced, &Waiting::default(), ids());
        assert!(
            result.routing["logs"]
                .shards
                .iter()
                .all(|s| s.copies.len() == 2)
        );
    }

    #[test]
    fn a_lost_primary_is_replaced_by_an_in_sync_replica_under_a_new_term() {
        let nodes = [node("a", "z1"), node("b", "z2")];
        let mut routing = started_index(&nodes, 1, 1);
        let primary_node = routing["logs"].shards[0]
            .primary()
            .map(|p| p.node_id.clone())
            .expect("primary");
        let survivor = without(&nodes, &primary_node);
        fail_departed(&mut routing, &survivor);
        let shard = &routing["logs"].shards[0];
        let primary = shard.primary().expect("promoted");
        assert_eq!(primary.node_id, survivor[0].node_id);
        assert_eq!(shard.primary_term, 2);
    }

    #[test]
    fn a_stale_copy_is_never_promoted() {
        let nodes = [node("a", "z1"), node("b", "z2")];
        let mut routing = started_index(&nodes, 1, 1);
        let shard = &mut routing.get_mut("logs").expect("index").shards[0];
        let replica_id = shard
            .copies
            .iter()
            .find(|c| !c.primary)
            .map(|c| c.allocation_id.clone())
            .expect("replica");
        // The replica missed writes: the master took it out of the in-sync set.
        shard.in_sync.remove(&replica_id);
        let primary_node = shard.primary().map(|p| p.node_id.clone()).expect("primary");
        let survivor = without(&nodes, &primary_node);
        fail_departed(&mut routing, &survivor);
        let shard = &routing["logs"].shards[0];
        assert!(
            shard.primary().is_none(),
            "the stale replica stays a replica"
        );
        assert_eq!(shard.health(1), Health::Red);
        let result = allocate(
            &routing,
            &survivor,
            &AllocationSettings::default(),
            &Waiting::default(),
            ids(),
        );
        assert!(
            result.routing["logs"].shards[0].primary().is_none(),
            "no empty primary replaces lost data"
        );
        assert!(
            result.unassigned[0].2.contains("no in-sync copy"),
            "{:?}",
            result.unassigned
        );
    }

    #[test]
    fn a_new_replica_goes_to_the_node_that_came_back_with_its_copy() {
        let (a, b, c) = (node("a", "z1"), node("b", "z2"), node("c", "z3"));
        let mut routing = started_index(&[a.clone(), c.clone()], 1, 1);
        fail_departed(&mut routing, std::slice::from_ref(&a));
        let all = [a, b, c];
        let replica_on = |waiting: &Waiting| {
            let result = allocate(
                &routing,
                &all,
                &AllocationSettings::default(),
                waiting,
                ids(),
            );
            result.routing["logs"].shards[0]
                .copies
                .iter()
                .find(|copy| !copy.primary)
                .map(|copy| copy.node_id.clone())
        };
        assert_eq!(replica_on(&Waiting::default()).as_deref(), Some("b"));
        let returned = Waiting {
            returned: BTreeMap::from([(("logs".to_string(), 0), "c".to_string())]),
            ..Waiting::default()
        };
        assert_eq!(replica_on(&returned).as_deref(), Some("c"));
    }

    #[test]
    fn delayed_replicas_wait_and_allocation_enable_is_honoured() {
        let nodes = [node("a", "z1"), node("b", "z2"), node("c", "z3")];
        let mut routing = started_index(&nodes, 1, 1);
        let replica_node = routing["logs"].shards[0]
            .copies
            .iter()
            .find(|c| !c.primary)
            .map(|c| c.node_id.clone())
            .expect("replica");
        let live = without(&nodes, &replica_node);
        fail_departed(&mut routing, &live);
        let delayed = Waiting {
            delayed: BTreeSet::from([("logs".to_string(), 0)]),
            ..Waiting::default()
        };
        let waiting = allocate(
            &routing,
            &live,
            &AllocationSettings::default(),
            &delayed,
            ids(),
        );
        assert_eq!(waiting.routing["logs"].shards[0].copies.len(), 1);
        assert!(waiting.unassigned[0].2.contains("delayed_timeout"));
        let after_delay = allocate(
            &routing,
            &live,
            &AllocationSettings::default(),
            &Waiting::default(),
            ids(),
        );
        assert_eq!(after_delay.routing["logs"].shards[0].copies.len(), 2);

        let primaries_only = AllocationSettings {
            enable: EnableAllocation::Primaries,
            ..AllocationSettings::default()
        };
        let result = allocate(
            &new_index(1, 1),
            &nodes,
            &primaries_only,
            &Waiting::default(),
            ids(),
        );
        assert_eq!(result.routing["logs"].shards[0].copies.len(), 1);
        let none = AllocationSettings {
            enable: EnableAllocation::None,
            ..AllocationSettings::default()
        };
        let result = allocate(&new_index(1, 1), &nodes, &none, &Waiting::default(), ids());
        assert!(result.routing["logs"].shards[0].copies.is_empty());
    }

    #[test]
    fn excluded_nodes_get_nothing_new_and_their_copies_are_moved() {
        let nodes = [node("a", "z1"), node("b", "z2"), node("c", "z3")];
        let routing = started_index(&nodes, 3, 1);
        let settings = AllocationSettings::from_settings(|key| {
            (key == "cluster.routing.allocation.exclude.zone").then(|| "z3".to_string())
        });
        let result = allocate(&routing, &nodes, &settings, &Waiting::default(), ids());
        let on_c = routing["logs"]
            .shards
            .iter()
            .flat_map(|s| &s.copies)
            .filter(|c| c.node_id == "c")
            .count();
        assert_eq!(result.moves.len(), on_c);
        assert!(result.moves.iter().all(|m| m.from == "c" && m.to != "c"));

        let fresh = allocate(
            &new_index(3, 1),
            &nodes,
            &settings,
            &Waiting::default(),
            ids(),
        );
        assert!(
            fresh.routing["logs"]
                .shards
                .iter()
                .flat_map(|s| &s.copies)
                .all(|c| c.node_id != "c")
        );
    }

    #[test]
    fn settings_are_read_from_cluster_settings() {
        let settings = AllocationSettings::from_settings(|key| match key {
            "cluster.routing.allocation.awareness.attributes" => Some("zone".into()),
            "cluster.routing.allocation.awareness.force.zone.values" => Some("z1, z2".into()),
            "cluster.routing.allocation.exclude._name" => Some("n1,n2".into()),
            "cluster.routing.allocation.enable" => Some("new_primaries".into()),
            _ => None,
        });
        assert!(settings.zone_awareness);
        assert_eq!(settings.forced_zones, vec!["z1", "z2"]);
        assert_eq!(settings.exclude_names.len(), 2);
        assert_eq!(settings.enable, EnableAllocation::NewPrimaries);
    }

    #[test]
    fn awareness_moves_a_crowded_copy_to_a_zone_without_one() {
        let nodes = [node("a1", "a"), node("a2", "a"), node("b1", "b")];
        let mut routing = new_index(1, 1);
        let shard = &mut routing.get_mut("logs").expect("index").shards[0];
        for (id, primary) in [("a1", true), ("a2", false)] {
            shard.copies.push(ShardCopy {
                node_id: id.into(),
                primary,
                started: true,
                allocation_id: format!("c-{id}"),
                replaces: None,
            });
            shard.in_sync.insert(format!("c-{id}"));
        }
        let aware = AllocationSettings {
            zone_awareness: true,
            ..AllocationSettings::default()
        };
        let moves = awareness_moves(&routing, &nodes, &aware);
        assert_eq!(
            moves,
            vec![Move {
                index: "logs".into(),
                shard: 0,
                from: "a2".into(),
                to: "b1".into(),
            }],
            "the replica moves, the primary stays"
        );
        assert!(awareness_moves(&routing, &nodes, &AllocationSettings::default()).is_empty());
        let mut excluded = aware.clone();
        excluded.exclude_zones.insert("b".into());
        assert!(awareness_moves(&routing, &nodes, &excluded).is_empty());
    }

    #[test]
    fn a_departed_replica_leaves_the_in_sync_set_but_a_lost_last_copy_can_return() {
        let nodes = [node("n1", "a"), node("n2", "b")];
        let mut routing = started_index(&nodes, 1, 1);
        let shard = routing["logs"].shards[0].clone();
        let replica = shard
            .copies
            .iter()
            .find(|c| !c.primary)
            .expect("replica")
            .clone();
        let primary = shard.primary().expect("primary").clone();

        // The replica's node leaves: the primary goes on without it, so it is no longer in sync.
        let only_primary: Vec<DataNode> = nodes
            .iter()
            .filter(|n| n.node_id == primary.node_id)
            .cloned()
            .collect();
        fail_departed(&mut routing, &only_primary);
        let shard = &mut routing.get_mut("logs").expect("index").shards[0];
        assert!(!shard.in_sync.contains(&replica.allocation_id));
        assert!(
            !reinstate_primary(shard, &replica.allocation_id, &replica.node_id),
            "a shard with a primary takes no returning copy"
        );

        // Then the primary's node leaves too: red, and its copy stays in sync.
        fail_departed(&mut routing, &[]);
        let shard = &mut routing.get_mut("logs").expect("index").shards[0];
        assert!(shard.primary().is_none());
        assert!(shard.in_sync.contains(&primary.allocation_id));
        assert!(
            !reinstate_primary(shard, &replica.allocation_id, &replica.node_id),
            "stale"
        );
        let term = shard.primary_term;
        assert!(reinstate_primary(
            shard,
            &primary.allocation_id,
            &primary.node_id
        ));
        assert_eq!(shard.primary_term, term + 1);
        assert_eq!(
            shard.primary().map(|p| p.node_id.as_str()),
            Some(primary.node_id.as_str())
        );
    }

    #[test]
    fn a_joining_node_takes_copies_until_loads_differ_by_at_most_one() {
        let two = [node("n1", "a"), node("n2", "b")];
        let mut routing = started_index(&two, 4, 1);
        let three = [node("n1", "a"), node("n2", "b"), node("n3", "c")];
        let settings = AllocationSettings::default();
        let mut rounds = 0;
        loop {
            let moves = balance_moves(&routing, &three, &settings);
            let Some(planned) = moves.first() else { break };
            assert!(
                !routing[&planned.index].shards[planned.shard]
                    .copies
                    .iter()
                    .any(|c| c.node_id == planned.to)
            );
            let shard = &mut routing.get_mut(&planned.index).expect("index").shards[planned.shard];
            let copy = shard
                .copies
                .iter_mut()
                .find(|c| c.node_id == planned.from)
                .expect("source");
            copy.node_id = planned.to.clone();
            rounds += 1;
            assert!(rounds < 10, "balancing converges");
        }
        let mut load: BTreeMap<&str, usize> = BTreeMap::new();
        for copy in routing
            .values()
            .flat_map(|i| i.shards.iter())
            .flat_map(|s| s.copies.iter())
        {
            *load.entry(copy.node_id.as_str()).or_default() += 1;
        }
        let (min, max) = (load.values().min().copied(), load.values().max().copied());
        assert_eq!((min, max), (Some(2), Some(3)), "{load:?}");
        let off = AllocationSettings {
            rebalance: Rebalance::None,
            ..AllocationSettings::default()
        };
        let fresh = started_index(&two, 4, 1);
        assert!(balance_moves(&fresh, &three, &off).is_empty());
    }
}
