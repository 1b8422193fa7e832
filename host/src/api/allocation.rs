//! Allocation routes: `POST /_cluster/reroute` (move and cancel), `GET
//! /_cluster/allocation/explain`, and the rows of `_cat/allocation`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Reply, Request, ok};
use crate::cluster::allocation::{self, IndexRouting, ShardRouting};
use crate::cluster::state::{ClusterState, StateCommand};
use crate::error::{Error, Result, illegal};
use crate::node::NodeState;
use crate::replication::master::{self, data_nodes};

/// Resolves a node given by name or id to its id.
fn node_id(node: &NodeState, name_or_id: &str) -> Result<String> {
    data_nodes(node)
        .into_iter()
        .find(|n| n.name == name_or_id || n.node_id == name_or_id)
        .map(|n| n.node_id)
        .ok_or_else(|| illegal(format!("unknown data node [{name_or_id}]")))
}

fn text<'a>(command: &'a Value, key: &str) -> Result<&'a str> {
    command
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| illegal(format!("[{key}] is required")))
}

fn shard_mut<'a>(
    routing: &'a mut BTreeMap<String, IndexRouting>,
    command: &Value,
) -> Result<&'a mut ShardRouting> {
    let index = text(command, "index")?;
    let number = command
        .get("shard")
        .and_then(Value::as_u64)
        .ok_or_else(|| illegal("[shard] is required"))?;
    routing
        .get_mut(index)
        .ok_or_else(|| Error::IndexNotFound(index.to_string()))?
        .shards
        .get_mut(number as usize)
        .ok_or_else(|| illegal(format!("[{index}] has no shard [{number}]")))
}

/// Applies reroute `commands` to a copy of the routing.
fn reroute_routing(
    node: &NodeState,
    state: &ClusterState,
    commands: &[Value],
) -> Result<BTreeMap<String, IndexRouting>> {
    let mut routing = state.routing.clone();
    for entry in commands {
        let (kind, command) = entry
            .as_object()
            .and_then(|object| object.iter().next())
            .ok_or_else(|| illegal(format!("malformed reroute command {entry}")))?;
        match kind.as_str() {
            "move" => {
                let from = node_id(node, text(command, "from_node")?)?;
                let to = node_id(node, text(command, "to_node")?)?;
                let shard = shard_mut(&mut routing, command)?;
                if shard.copies.iter().any(|copy| copy.node_id == to) {
                    return Err(illegal(
                        "the target node already holds a copy of this shard",
                    ));
                }
                let source = shard
                    .copies
                    .iter()
                    .find(|copy| copy.node_id == from && copy.started)
                    .map(|copy| copy.allocation_id.clone())
                    .ok_or_else(|| {
                        illegal("the source node holds no started copy of this shard")
                    })?;
                shard.copies.push(master::relocation(&to, source));
            }
            "cancel" => {
                let on = node_id(node, text(command, "node")?)?;
                let allow_primary = command
                    .get("allow_primary")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let shard = shard_mut(&mut routing, command)?;
                let copy = shard
                    .copies
                    .iter()
                    .find(|copy| copy.node_id == on)
                    .ok_or_else(|| illegal("the node holds no copy of this shard"))?;
                if copy.primary && !allow_primary {
                    return Err(illegal(
                        "cancelling a primary needs [allow_primary]: its replicas take over",
                    ));
                }
                let allocation_id = copy.allocation_id.clone();
                allocation::fail_copy(shard, &allocation_id);
            }
            other => return Err(illegal(format!("unknown reroute command [{other}]"))),
        }
    }
    Ok(routing)
}

/// `POST /_cluster/reroute`.
pub(super) async fn reroute(request: &Request) -> Result<Reply> {
    let body = request.json()?;
    let commands = body
        .get("commands")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // The routing may change between reading and committing; recompute on a conflict.
    for _ in 0..10 {
        let state = request.node.cluster.consensus.state();
        let routing = reroute_routing(&request.node, &state, &commands)?;
        let command = StateCommand::Reroute {
            based_on: state.version,
            routing,
        };
        match super::cluster::commit(request, command, Error::IllegalArgument).await {
            Ok(()) => return ok(json!({ "acknowledged": true })),
            Err(Error::IllegalArgument(_)) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(Error::MasterNotDiscovered(
        "the routing kept changing; retry the reroute".into(),
    ))
}

/// `GET /_cluster/allocation/explain`: why a shard copy is where it is, or unassigned.
pub(super) fn explain(request: &Request) -> Result<Reply> {
    let body = request.json()?;
    let node = &request.node;
    let state = node.cluster.consensus.state();
    let nodes = data_nodes(node);
    let settings = master::allocation_settings(&state);
    let trial = allocation::allocate(
        &state.routing,
        &nodes,
        &settings,
        &Default::default(),
        || "trial".to_string(),
    );
    let name_of = |id: &str| {
        nodes
            .iter()
            .find(|n| n.node_id == id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let (index, number, primary) = match body.get("index").and_then(Value::as_str) {
        Some(index) => (
            index.to_string(),
            body.get("shard").and_then(Value::as_u64).unwrap_or(0) as usize,
            body.get("primary")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        ),
        None => {
            let (index, number, _) = trial.unassigned.first().cloned().ok_or_else(|| {
                illegal("unable to find any unassigned shards to explain [ClusterAllocationExplainRequest[useAnyUnassignedShard=true]]")
            })?;
            let primary = state
                .routing
                .get(&index)
                .and_then(|r| r.shards.get(number))
                .is_some_and(|shard| shard.primary().is_none());
            (index, number, primary)
        }
    };
    let routing = state
        .routing
        .get(&index)
        .ok_or_else(|| Error::IndexNotFound(index.clone()))?;
    let shard = routing
        .shards
        .get(number)
        .ok_or_else(|| illegal(format!("[{index}] has no shard [{number}]")))?;
    let replicas_assigned = shard.copies.iter().filter(|copy| !copy.primary).count();
    let missing = if primary {
        shard.primary().is_none()
    } else {
        replicas_assigned < routing.replicas as usize
    };
    let on_node = body.get("current_node").and_then(Value::as_str);
    let assigned = shard.copies.iter().find(|copy| {
        copy.primary == primary
            && on_node.is_none_or(|n| n == copy.node_id || n == name_of(&copy.node_id))
    });
    let assigned = if missing && on_node.is_none() {
        None
    } else {
        assigned
    };
    let reasons: Vec<&String> = trial
        .unassigned
        .iter()
        .filter(|(i, n, _)| *i == index && *n == number)
        .map(|(_, _, reason)| reason)
        .collect();
    let mut out = json!({ "index": index, "shard": number, "primary": primary });
    match assigned {
        Some(copy) => {
            let excluded = nodes
                .iter()
                .find(|n| n.node_id == copy.node_id)
                .is_some_and(|n| settings.excludes(n));
            out["current_state"] = json!(if copy.started {
                "started"
            } else {
                "initializing"
            });
            out["current_node"] = json!({ "id": copy.node_id, "name": name_of(&copy.node_id) });
            out["can_remain_on_current_node"] = json!(if excluded { "no" } else { "yes" });
            out["allocation_id"] = json!(copy.allocation_id);
        }
        None => {
            out["current_state"] = json!("unassigned");
            out["can_allocate"] = json!(if reasons.is_empty() { "yes" } else { "no" });
            out["allocate_explanation"] = json!(match reasons.first() {
                Some(reason) => format!("cannot allocate because {reason}"),
                None => "the shard can be allocated and will be shortly".to_string(),
            });
            out["in_sync_allocation_ids"] = json!(shard.in_sync);
        }
    }
    ok(out)
}

/// `_cat/allocation`: copies per node, and the unassigned ones.
pub(super) fn cat_rows(node: &NodeState) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let state = node.cluster.consensus.state();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut unassigned = 0;
    for routing in state.routing.values() {
        for shard in &routing.shards {
            for copy in &shard.copies {
                *per_node.entry(copy.node_id.clone()).or_default() += 1;
            }
            unassigned += (routing.replicas as usize + 1).saturating_sub(shard.copies.len());
        }
    }
    let mut rows: Vec<Vec<String>> = node
        .cluster
        .membership
        .live_nodes()
        .into_iter()
        .filter(|meta| meta.has_role(crate::config::Role::Data))
        .map(|meta| {
            vec![
                per_node
                    .get(&meta.node_id)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
                meta.http_addr.ip().to_string(),
                meta.http_addr.ip().to_string(),
                meta.name.clone(),
                meta.zone.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if unassigned > 0 {
        rows.push(vec![
            unassigned.to_string(),
            String::new(),
            String::new(),
            "UNASSIGNED".into(),
            String::new(),
        ]);
    }
    (vec!["shards", "host", "ip", "node", "zone"], rows)
}
