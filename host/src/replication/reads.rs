//! Reads across nodes: a realtime GET goes to a copy of the document's shard (this node's when
//! it has one); a search asks one started copy of every shard, spreading the load over the
//! copies, retries a shard on another copy when its node fails, and reports the shards that no
//! copy could answer in `_shards.failures` (partial results, as Elasticsearch does by default).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::wire::{DataRequest, DataResponse};
use super::{UNAVAILABLE_RETRY, ask, shard_routing, with_retries};
use crate::api::blocking;
use crate::cluster::allocation::ShardRouting;
use crate::error::{Error, Result};
use crate::index::IndexService;
use crate::node::NodeState;
use crate::plugins::roles;
use crate::search::{self, SearchRequest, SearchResponse, SearchScope, ShardPhase};
use crate::shard::{Shard, StoredDoc};

/// Rotates the copy each search asks, so every copy takes its share.
static NEXT_COPY: AtomicUsize = AtomicUsize::new(0);

/// This node's active copy of a shard.
pub fn local_copy(node: &NodeState, index: &IndexService, number: u32) -> Option<Arc<Shard>> {
    node.copies.active(index.name(), number)?;
    index.shard(number)
}

/// Realtime GET of `id` from shard `number`.
pub async fn get(
    node: &Arc<NodeState>,
    index: &Arc<IndexService>,
    number: u32,
    id: &str,
) -> Result<Option<StoredDoc>> {
    let mut docs = get_many(node, index, number, vec![id.to_string()]).await?;
    Ok(docs.pop().flatten())
}

/// Realtime GETs of `ids` from shard `number`, in one round trip when the copy is elsewhere.
pub async fn get_many(
    node: &Arc<NodeState>,
    index: &Arc<IndexService>,
    number: u32,
    ids: Vec<String>,
) -> Result<Vec<Option<StoredDoc>>> {
    with_retries(UNAVAILABLE_RETRY, || {
        let ids = ids.clone();
        async move {
            if let Some(shard) = local_copy(node, index, number) {
                return blocking(move || ids.iter().map(|id| shard.get(id)).collect()).await;
            }
            let state = node.cluster.consensus.state();
            let routing = shard_routing(&state, index.name(), number)?;
            let copy = pick_copy(routing, &node.identity.node_id, None, &[])
                .ok_or_else(|| {
                    Error::ShardNotAvailable(format!(
                        "[{}][{number}] has no active copy",
                        index.name()
                    ))
                })?
                .to_string();
            let request = DataRequest::Get {
                index: index.name().to_string(),
                shard: number,
                ids,
            };
            match ask(node, &copy, request).await? {
                DataResponse::Docs(docs) => Ok(docs
                    .into_iter()
                    .map(|doc| doc.map(StoredDoc::from))
                    .collect()),
                _ => Err(Error::Internal("the copy answered something else".into())),
            }
        }
    })
    .await
}

/// The node whose copy of a shard should answer: honours `preference` (`_primary`, `_local`),
/// otherwise rotates over the started copies. `avoid` lists nodes that already failed.
fn pick_copy<'a>(
    routing: &'a ShardRouting,
    local: &str,
    preference: Option<&str>,
    avoid: &[&str],
) -> Option<&'a str> {
    // Searches over many shards call this per shard: count and pick without collecting.
    let started = || {
        routing
            .copies
            .iter()
            .filter(|copy| copy.started && !avoid.contains(&copy.node_id.as_str()))
    };
    if preference == Some("_primary") {
        return started()
            .find(|copy| copy.primary)
            .map(|copy| copy.node_id.as_str());
    }
    if preference == Some("_local")
        && let Some(copy) = started().find(|copy| copy.node_id == local)
    {
        return Some(copy.node_id.as_str());
    }
    let count = started().count();
    if count == 0 {
        return None;
    }
    let turn = NEXT_COPY.fetch_add(1, Ordering::Relaxed);
    started()
        .nth(turn % count)
        .map(|copy| copy.node_id.as_str())
}

/// The shards one node is asked to search: `(position in the search's indices, shard number)`,
/// ordered by position.
pub type ShardsPerIndex = Vec<(usize, u32)>;

/// A search body as the coordinator received it, for nodes that run a phase.
pub struct SearchInput<'a> {
    pub body: &'a Value,
    pub params: &'a HashMap<String, String>,
    pub expression: &'a str,
}

/// Runs a search over every shard of `indices`, wherever their copies are.
pub async fn search(
    node: &Arc<NodeState>,
    indices: &[Arc<IndexService>],
    input: SearchInput<'_>,
    request: &SearchRequest,
) -> Result<SearchResponse> {
    let started = Instant::now();
    let state = node.cluster.consensus.state();
    let local = node.identity.node_id.as_str();
    let preference = input.params.get("preference").map(String::as_str);
    let mut plan: BTreeMap<&str, ShardsPerIndex> = BTreeMap::new();
    let mut failures = Vec::new();
    for (position, index) in indices.iter().enumerate() {
        let Some(routing) = state.routing.get(index.name()) else {
            continue;
        };
        for (number, shard) in routing.shards.iter().enumerate() {
            match pick_copy(shard, local, preference, &[]) {
                Some(node_id) => {
                    plan.entry(node_id)
                        .or_default()
                        .push((position, number as u32));
                }
                None => failures.push(shard_failure(
                    index.name(),
                    number as u32,
                    "no active copy of this shard",
                )),
            }
        }
    }
    let local_group = plan.remove(local);
    let mut remote = JoinSet::new();
    // Only phases on other nodes need the request as text.
    let wire_input = || -> (String, Vec<(String, String)>) {
        let params = input.params.iter();
        let params = params.map(|(k, v)| (k.clone(), v.clone())).collect();
        (input.body.to_string(), params)
    };
    if !plan.is_empty() {
        let (body_text, params) = wire_input();
        for (node_id, group) in plan {
            let node = node.clone();
            let node_id = node_id.to_string();
            let request = search_request(indices, &group, &body_text, &params, input.expression);
            remote.spawn(async move {
                let answer = ask(&node, &node_id, request)
                    .await
                    .and_then(DataResponse::into_search_phase);
                (node_id, group, answer)
            });
        }
    }
    let mut phases = Vec::new();
    if let Some(group) = local_group {
        phases.push(search_here(
            node,
            indices,
            input.expression,
            request,
            &group,
        )?);
    }
    let mut retry: Vec<(String, ShardsPerIndex)> = Vec::new();
    while let Some(joined) = remote.join_next().await {
        let (node_id, group, answer) =
            joined.map_err(|err| Error::Internal(format!("search task failed: {err}")))?;
        match answer {
            Ok(phase) => phases.push(phase),
            // The request itself is wrong: every copy would say so.
            Err(err) if err.status() == 400 => return Err(err),
            Err(err) => {
                tracing::debug!(node = %node_id, error = %err, "a node failed its search phase; retrying its shards elsewhere");
                retry.push((node_id, group));
            }
        }
    }
    for (failed_node, group) in retry {
        for (position, number) in group {
            let index = indices[position].name();
            let Some(routing) = state
                .routing
                .get(index)
                .and_then(|r| r.shards.get(number as usize))
            else {
                continue;
            };
            let single = [(position, number)];
            let answer = match pick_copy(routing, local, None, &[failed_node.as_str()]) {
                None => Err(Error::ShardNotAvailable("no other active copy".into())),
                Some(other) if other == local => {
                    search_here(node, indices, input.expression, request, &single)
                }
                Some(other) => {
                    let (body_text, params) = wire_input();
                    let request =
                        search_request(indices, &single, &body_text, &params, input.expression);
                    ask(node, other, request)
                        .await
                        .and_then(DataResponse::into_search_phase)
                }
            };
            match answer {
                Ok(phase) => phases.push(phase),
                Err(err) => failures.push(shard_failure(index, number, &err.to_string())),
            }
        }
    }
    search::merge(request, phases, failures, started)
}

fn search_request(
    indices: &[Arc<IndexService>],
    group: &[(usize, u32)],
    body: &str,
    params: &[(String, String)],
    expression: &str,
) -> DataRequest {
    let mut targets: Vec<(String, Vec<u32>)> = Vec::new();
    for &(position, number) in group {
        let name = indices[position].name();
        match targets.last_mut() {
            Some((last, numbers)) if last == name => numbers.push(number),
            _ => targets.push((name.to_string(), vec![number])),
        }
    }
    DataRequest::Search {
        targets,
        body: body.to_string(),
        params: params.to_vec(),
        expression: expression.to_string(),
    }
}

/// Runs the phase on this node's copies (on this worker thread: see `api::search`).
pub fn search_here(
    node: &NodeState,
    indices: &[Arc<IndexService>],
    expression: &str,
    request: &SearchRequest,
    group: &[(usize, u32)],
) -> Result<ShardPhase> {
    let state = node.cluster.consensus.state();
    let cluster_pruning = state
        .setting(roles::CLUSTER_PRUNING)
        .and_then(Value::as_str);
    tokio::task::block_in_place(|| {
        let scope = SearchScope {
            indices,
            expression,
            plugins: Some(&node.plugins),
            cluster_pruning,
            shards: Some(group),
        };
        search::execute_local(&scope, request)
    })
}

fn shard_failure(index: &str, shard: u32, reason: &str) -> Value {
    json!({
        "shard": shard,
        "index": index,
        "reason": { "type": "no_shard_available_action_exception", "reason": reason },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::allocation::ShardCopy;

    fn routing(copies: Vec<ShardCopy>) -> ShardRouting {
        ShardRouting {
            copies,
            in_sync: Default::default(),
            primary_term: 1,
        }
    }

    #[test]
    fn searches_spread_over_started_copies_and_honour_preferences() {
        let shard = routing(vec![
            ShardCopy::on("a", true, true),
            ShardCopy::on("b", false, true),
            ShardCopy::on("c", false, false),
        ]);
        let picked: std::collections::BTreeSet<_> = (0..10)
            .filter_map(|_| pick_copy(&shard, "b", None, &[]))
            .collect();
        assert_eq!(
            picked,
            ["a", "b"].into(),
            "both started copies serve, the recovering one never"
        );
        assert_eq!(pick_copy(&shard, "b", Some("_primary"), &[]), Some("a"));
        assert_eq!(pick_copy(&shard, "b", Some("_local"), &[]), Some("b"));
        for _ in 0..4 {
            assert_eq!(pick_copy(&shard, "b", None, &["a"]), Some("b"));
        }
        assert_eq!(pick_copy(&shard, "b", None, &["a", "b"]), None);
        let recovering = routing(vec![ShardCopy::on("c", true, false)]);
        assert_eq!(pick_copy(&recovering, "c", Some("_local"), &[]), None);
    }
}
