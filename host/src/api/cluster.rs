//! Node and cluster routes: `GET /`, `_cluster/health`, `_nodes`, `_nodes/stats`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Reply, Request, blocking, ok};
use std::collections::BTreeMap;

use crate::cluster::NodeMeta;
use crate::cluster::allocation::Health;
use crate::cluster::consensus::ProposeError;
use crate::cluster::state::{StateCommand, flatten_settings};
use crate::config::Role;
use crate::error::Error;
use crate::error::{Result, illegal};
use crate::node::NodeState;
use crate::plugins::{PluginKind, roles};
use crate::units::parse_time_value;

pub(super) fn root(request: &Request) -> Result<Reply> {
    let node = &request.node;
    // The cluster's, committed when it was founded; `_na_` until this node has joined one.
    let cluster_uuid = node.cluster.consensus.state().cluster_uuid.clone();
    ok(json!({
        "name": node.config.node_name,
        "cluster_name": node.config.cluster_name,
        "cluster_uuid": cluster_uuid.unwrap_or_else(|| "_na_".into()),
        "version": {
            "number": crate::VERSION,
            "distribution": "shoal",
            "build_flavor": "default",
            "lucene_version": "tantivy-0.26",
            "minimum_wire_compatibility_version": crate::VERSION,
            "minimum_index_compatibility_version": crate::VERSION,
        },
        "tagline": "You Know, for Search",
    }))
}

/// Shard counts as health reports them, from the routing table.
#[derive(Debug, Default)]
pub(super) struct ShardSummary {
    pub active_primaries: u64,
    pub active: u64,
    pub initializing: u64,
    pub unassigned: u64,
    pub unassigned_primaries: u64,
    /// Unassigned copies that wait for their departed node to come back.
    pub delayed_unassigned: u64,
    /// red: a primary is not active; yellow: a replica is not; green: every copy is.
    pub worst: Option<Health>,
}

impl ShardSummary {
    pub fn active_percent(&self) -> f64 {
        let total = self.active + self.initializing + self.unassigned;
        if total == 0 {
            100.0
        } else {
            self.active as f64 * 100.0 / total as f64
        }
    }
}

pub(super) fn summary(node: &NodeState, expression: Option<&str>) -> Result<ShardSummary> {
    let indices = match expression {
        Some(expression) => node.indices.resolve(expression, false)?,
        None => node.indices.all(),
    };
    let state = node.cluster.consensus.state();
    let mut summary = ShardSummary::default();
    for index in &indices {
        let Some(routing) = state.routing.get(index.name()) else {
            continue;
        };
        let delayed = state.delayed_shards.get(index.name());
        for (number, shard) in routing.shards.iter().enumerate() {
            let health = shard.health(routing.replicas);
            summary.worst = summary.worst.max(Some(health));
            let started = shard.copies.iter().filter(|copy| copy.started).count() as u64;
            let copies = shard.copies.len() as u64;
            let wanted = u64::from(routing.replicas) + 1;
            summary.active += started;
            summary.initializing += copies - started;
            summary.unassigned += wanted.saturating_sub(copies);
            if delayed.is_some_and(|numbers| numbers.contains(&(number as u32))) {
                summary.delayed_unassigned += wanted.saturating_sub(copies);
            }
            match shard.primary() {
                Some(primary) if primary.started => summary.active_primaries += 1,
                Some(_) => {}
                None => summary.unassigned_primaries += 1,
            }
        }
    }
    Ok(summary)
}

pub(super) fn status_of(summary: &ShardSummary) -> &'static str {
    match summary.worst {
        None | Some(Health::Green) => "green",
        Some(Health::Yellow) => "yellow",
        Some(Health::Red) => "red",
    }
}

fn status_rank(status: &str) -> u8 {
    match status {
        "green" => 0,
        "yellow" => 1,
        _ => 2,
    }
}

pub(super) async fn health(request: &Request, target: Option<&&str>) -> Result<Reply> {
    let wanted = request.param("wait_for_status").map(str::to_string);
    if let Some(wanted) = &wanted
        && !["green", "yellow", "red"].contains(&wanted.as_str())
    {
        return Err(illegal(format!("unknown health status [{wanted}]")));
    }
    let timeout = match request.param("timeout") {
        Some(text) => parse_time_value(text)?.unwrap_or(Duration::ZERO),
        None => Duration::from_secs(30),
    };
    let nodes_wanted = request
        .param("wait_for_nodes")
        .map(nodes_condition)
        .transpose()?;
    let deadline = tokio::time::Instant::now() + timeout;
    let target = target.map(|t| t.to_string());
    loop {
        let summary = summary(&request.node, target.as_deref())?;
        let status = status_of(&summary);
        let live = request.node.cluster.membership.live_nodes();
        let data_nodes = live.iter().filter(|meta| meta.has_role(Role::Data)).count();
        let satisfied = wanted
            .as_deref()
            .is_none_or(|wanted| status_rank(status) <= status_rank(wanted))
            && nodes_wanted
                .as_ref()
                .is_none_or(|accepts| accepts(live.len()));
        let timed_out = !satisfied && tokio::time::Instant::now() >= deadline;
        if satisfied || timed_out {
            let percent = summary.active_percent();
            let body = json!({
                "cluster_name": request.node.config.cluster_name,
                "status": status,
                "timed_out": timed_out,
                "number_of_nodes": live.len(),
                "number_of_data_nodes": data_nodes,
                "active_primary_shards": summary.active_primaries,
                "active_shards": summary.active,
                "relocating_shards": 0,
                "initializing_shards": summary.initializing,
                "unassigned_shards": summary.unassigned,
                "unassigned_primary_shards": summary.unassigned_primaries,
                "delayed_unassigned_shards": summary.delayed_unassigned,
                "number_of_pending_tasks": 0,
                "number_of_in_flight_fetch": 0,
                "task_max_waiting_in_queue_millis": 0,
                "active_shards_percent_as_number": percent,
            });
            return Ok(Reply::Json(if timed_out { 408 } else { 200 }, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node id of the elected master (the Raft leader), if this node knows one.
pub(super) fn elected_master(node: &NodeState) -> Option<String> {
    node.cluster.consensus.master().map(|peer| peer.node_id)
}

/// A live node as `_cluster/state` and `_nodes` describe it.
fn node_json(meta: &NodeMeta) -> Value {
    json!({
        "name": meta.name,
        "transport_address": meta.transport_addr.to_string(),
        "host": meta.http_addr.ip().to_string(),
        "ip": meta.http_addr.ip().to_string(),
        "version": meta.version,
        "roles": role_names(&meta.roles),
        "attributes": { "zone": meta.zone },
        "http": { "publish_address": meta.http_addr.to_string() },
    })
}

/// `GET /_cluster/state`: the committed cluster state and the live nodes, shaped like
/// Elasticsearch's response (the parts Shoal has so far).
pub(super) fn state(request: &Request) -> Result<Reply> {
    let node = &request.node;
    let consensus = &node.cluster.consensus;
    let state = consensus.state();
    let (term, voters) = consensus.coordination();
    let nodes: serde_json::Map<String, Value> = node
        .cluster
        .membership
        .live_nodes()
        .iter()
        .map(|meta| (meta.node_id.clone(), node_json(meta)))
        .collect();
    ok(json!({
        "cluster_name": node.config.cluster_name,
        "cluster_uuid": state.cluster_uuid.clone().unwrap_or_else(|| "_na_".into()),
        "version": state.version,
        "master_node": elected_master(node),
        "nodes": nodes,
        "metadata": {
            "cluster_uuid": state.cluster_uuid.clone().unwrap_or_else(|| "_na_".into()),
            "cluster_coordination": {
                "term": term,
                "last_committed_config": voters,
            },
            "persistent": nest_settings(&state.persistent_settings),
            "transient": nest_settings(&state.transient_settings),
            "indices": state.indices.iter().map(|(name, meta)| (name.clone(), json!({
                "index_uuid": meta.uuid,
                "creation_date": meta.creation_date.to_string(),
                "number_of_shards": meta.settings.number_of_shards,
                "number_of_replicas": meta.settings.number_of_replicas,
                "mappings": meta.mappings,
                "primary_terms": state.routing.get(name).map(|routing| {
                    routing.shards.iter().map(|shard| shard.primary_term).collect::<Vec<_>>()
                }),
                "in_sync_allocations": state.routing.get(name).map(|routing| {
                    routing.shards.iter().enumerate()
                        .map(|(number, shard)| (number.to_string(), json!(shard.in_sync)))
                        .collect::<serde_json::Map<String, Value>>()
                }),
            }))).collect::<serde_json::Map<String, Value>>(),
        },
        "routing_table": {
            "indices": state.routing.iter().map(|(name, routing)| (name.clone(), json!({
                "shards": routing.shards.iter().enumerate().map(|(number, shard)| {
                    (number.to_string(), json!(shard.copies.iter().map(|copy| json!({
                        "state": if copy.started { "STARTED" } else { "INITIALIZING" },
                        "primary": copy.primary,
                        "node": copy.node_id,
                        "shard": number,
                        "index": name,
                        "allocation_id": { "id": copy.allocation_id },
                    })).collect::<Vec<_>>()))
                }).collect::<serde_json::Map<String, Value>>(),
            }))).collect::<serde_json::Map<String, Value>>(),
        },
    }))
}

/// `GET /_cluster/settings` (`flat_settings=true` for dotted keys).
pub(super) fn get_settings(request: &Request) -> Result<Reply> {
    let state = request.node.cluster.consensus.state();
    ok(settings_body(
        &state.persistent_settings,
        &state.transient_settings,
        request.flag("flat_settings"),
    ))
}

/// `PUT /_cluster/settings`: committed through the master before it is acknowledged.
pub(super) async fn put_settings(request: &Request) -> Result<Reply> {
    let body = request.json()?;
    let Some(object) = body.as_object() else {
        return Err(illegal(
            "request body must be an object with [persistent] and/or [transient]",
        ));
    };
    if let Some(unknown) = object
        .keys()
        .find(|key| *key != "persistent" && *key != "transient")
    {
        return Err(illegal(format!(
            "unknown section [{unknown}]; use [persistent] or [transient]"
        )));
    }
    let section =
        |name: &str| flatten_settings(object.get(name).unwrap_or(&Value::Null)).map_err(illegal);
    let persistent = section("persistent")?;
    let transient = section("transient")?;
    for (key, value) in persistent.iter().chain(&transient) {
        check_setting(&request.node, key, value)?;
    }
    let command = StateCommand::PutSettings {
        persistent: persistent.clone(),
        transient: transient.clone(),
    };
    commit(request, command, Error::IllegalArgument).await?;
    let mut reply = settings_body(&persistent, &transient, request.flag("flat_settings"));
    reply["acknowledged"] = json!(true);
    ok(reply)
}

/// Commits a cluster-state change through the master within the request's `master_timeout`
/// (default 30s); a change the state refuses becomes `rejected(reason)`.
pub(super) async fn commit(
    request: &Request,
    command: StateCommand,
    rejected: fn(String) -> Error,
) -> Result<()> {
    commit_within(&request.node, command, request.master_timeout()?, rejected).await
}

/// [`commit`] with the timeout given, for work that outlives its request.
pub(super) async fn commit_within(
    node: &NodeState,
    command: StateCommand,
    timeout: std::time::Duration,
    rejected: fn(String) -> Error,
) -> Result<()> {
    node.cluster
        .consensus
        .propose(command, timeout)
        .await
        .map(|_| ())
        .map_err(|err| match err {
            ProposeError::Rejected(reason) => rejected(reason),
            other => Error::MasterNotDiscovered(other.to_string()),
        })
}

/// Refuses a value a known setting could not use (the keys themselves are checked by
/// `flatten_settings`).
fn check_setting(node: &NodeState, key: &str, value: &Value) -> Result<()> {
    if key == roles::CLUSTER_PRUNING {
        match value {
            // `null` resets it to the shipped plugin.
            Value::Null => {}
            Value::String(name) => {
                roles::check(&node.plugins, PluginKind::Pruning, key, name).map_err(illegal)?
            }
            other => {
                return Err(illegal(format!(
                    "[{key}] must be a plugin name, got {other}"
                )));
            }
        }
    }
    Ok(())
}

fn settings_body(
    persistent: &BTreeMap<String, Value>,
    transient: &BTreeMap<String, Value>,
    flat: bool,
) -> Value {
    if flat {
        json!({ "persistent": persistent, "transient": transient })
    } else {
        json!({ "persistent": nest_settings(persistent), "transient": nest_settings(transient) })
    }
}

/// `{"a.b.c": v}` → `{"a": {"b": {"c": v}}}`, as Elasticsearch renders settings by default.
fn nest_settings(flat: &BTreeMap<String, Value>) -> Value {
    fn insert(target: &mut serde_json::Map<String, Value>, path: &[&str], value: &Value) {
        match path {
            [] => {}
            [last] => {
                target.insert((*last).to_string(), value.clone());
            }
            [first, rest @ ..] => {
                let entry = target
                    .entry((*first).to_string())
                    .or_insert_with(|| json!({}));
                if let Value::Object(inner) = entry {
                    insert(inner, rest, value);
                }
            }
        }
    }
    let mut root = serde_json::Map::new();
    for (key, value) in flat {
        let path: Vec<&str> = key.split('.').collect();
        insert(&mut root, &path, value);
    }
    Value::Object(root)
}

fn role_names(roles: &[Role]) -> Vec<Value> {
    roles
        .iter()
        .map(|role| json!(format!("{role:?}").to_lowercase()))
        .collect()
}

/// `wait_for_nodes`: `N`, `>=N`, `<=N`, `>N`, `<N`, or `ge(N)`, `le(N)`, `gt(N)`, `lt(N)`.
fn nodes_condition(text: &str) -> Result<impl Fn(usize) -> bool + use<>> {
    let text = text.trim();
    let parse = |number: &str| {
        number
            .trim()
            .parse::<usize>()
            .map_err(|_| illegal(format!("cannot parse wait_for_nodes [{text}]")))
    };
    let (op, number) = if let Some(rest) = text.strip_prefix(">=") {
        (">=", parse(rest)?)
    } else if let Some(rest) = text.strip_prefix("<=") {
        ("<=", parse(rest)?)
    } else if let Some(rest) = text.strip_prefix('>') {
        (">", parse(rest)?)
    } else if let Some(rest) = text.strip_prefix('<') {
        ("<", parse(rest)?)
    } else if let Some((name, rest)) = text.split_once('(')
        && let Some(number) = rest.strip_suffix(')')
    {
        let op = match name {
            "ge" => ">=",
            "le" => "<=",
            "gt" => ">",
            "lt" => "<",
            _ => return Err(illegal(format!("cannot parse wait_for_nodes [{text}]"))),
        };
        (op, parse(number)?)
    } else {
        ("==", parse(text)?)
    };
    Ok(move |count: usize| match op {
        ">=" => count >= number,
        "<=" => count <= number,
        ">" => count > number,
        "<" => count < number,
        _ => count == number,
    })
}

pub(super) fn nodes_info(request: &Request) -> Result<Reply> {
    let node = &request.node;
    let live = node.cluster.membership.live_nodes();
    let nodes: serde_json::Map<String, Value> = live
        .iter()
        .map(|meta| (meta.node_id.clone(), node_json(meta)))
        .collect();
    ok(json!({
        "_nodes": { "total": live.len(), "successful": live.len(), "failed": 0 },
        "cluster_name": node.config.cluster_name,
        "nodes": nodes,
    }))
}

pub(super) async fn node_stats(request: &Request) -> Result<Reply> {
    let node = request.node.clone();
    let indices_stats = blocking(move || {
        let mut stats = json!({
            "docs": { "count": 0u64, "deleted": 0u64 },
            "store": { "size_in_bytes": 0u64 },
            "indexing": { "index_total": 0u64, "index_failed": 0u64, "delete_total": 0u64 },
            "get": { "total": 0u64 },
            "search": { "query_total": 0u64, "query_time_in_millis": 0u64 },
            "refresh": { "total": 0u64 },
            "flush": { "total": 0u64 },
            "translog": { "operations": 0u64, "size_in_bytes": 0u64 },
        });
        let add = |stats: &mut Value, section: &str, key: &str, amount: u64| {
            let slot = &mut stats[section][key];
            *slot = json!(slot.as_u64().unwrap_or(0) + amount);
        };
        for index in node.indices.all() {
            add(&mut stats, "docs", "count", index.doc_count());
            add(&mut stats, "docs", "deleted", index.deleted_doc_count());
            for shard in index.local_shards() {
                let counters = &shard.counters;
                add(&mut stats, "store", "size_in_bytes", shard.store_size());
                add(
                    &mut stats,
                    "indexing",
                    "index_total",
                    counters.index_total.load(Ordering::Relaxed),
                );
                add(
                    &mut stats,
                    "indexing",
                    "index_failed",
                    counters.index_failed.load(Ordering::Relaxed),
                );
                add(
                    &mut stats,
                    "indexing",
                    "delete_total",
                    counters.delete_total.load(Ordering::Relaxed),
                );
                add(
                    &mut stats,
                    "get",
                    "total",
                    counters.get_total.load(Ordering::Relaxed),
                );
                add(
                    &mut stats,
                    "search",
                    "query_total",
                    counters.query_total.load(Ordering::Relaxed),
                );
                add(
                    &mut stats,
                    "search",
                    "query_time_in_millis",
                    counters.query_time_micros.load(Ordering::Relaxed) / 1000,
                );
                add(
                    &mut stats,
                    "refresh",
                    "total",
                    counters.refresh_total.load(Ordering::Relaxed),
                );
                add(
                    &mut stats,
                    "flush",
                    "total",
                    counters.flush_total.load(Ordering::Relaxed),
                );
                let (operations, bytes) = shard.translog_stats();
                add(&mut stats, "translog", "operations", operations);
                add(&mut stats, "translog", "size_in_bytes", bytes);
            }
        }
        Ok(stats)
    })
    .await?;
    let node = &request.node;
    ok(json!({
        "_nodes": { "total": 1, "successful": 1, "failed": 0 },
        "cluster_name": node.config.cluster_name,
        "nodes": { node.identity.node_id.clone(): {
            "name": node.config.node_name,
            "host": node.config.http_addr.ip().to_string(),
            "roles": role_names(&node.config.roles),
            "timestamp": chrono::Utc::now().timestamp_millis(),
            "uptime_in_millis": node.started.elapsed().as_millis() as u64,
            "indices": indices_stats,
        }},
    }))
}
