//! `_cat` APIs: aligned text tables (`v` for headers, `h` to pick columns) or JSON with
//! `format=json`.

use serde_json::{Map, Value};

use super::cluster::{status_of, summary};
use super::{Reply, Request, blocking, ok};
use crate::error::{Error, Result};
use crate::units::format_byte_size;

pub(super) fn help() -> Result<Reply> {
    Ok(Reply::Text(200, "=^.^=\n/_cat/health\n/_cat/indices\n/_cat/indices/{index}\n/_cat/shards\n/_cat/shards/{index}\n/_cat/nodes\n/_cat/master\n/_cat/count\n/_cat/allocation\n/_cat/recovery\n/_cat/snapshots/{repository}\n".to_string()))
}

type Table = (Vec<&'static str>, Vec<Vec<String>>);

pub(super) async fn cat(request: &Request, what: &str, target: Option<&str>) -> Result<Reply> {
    let node = request.node.clone();
    let target = target.map(str::to_string);
    let what_owned = what.to_string();
    let bytes_raw = request.param("bytes").is_some();
    // Counted over every shard, wherever its copies are.
    let cluster_count = match what {
        "count" => Some(count_all(request, target.as_deref()).await?),
        _ => None,
    };
    let recoveries = match what {
        "recovery" => Some(super::recovery::cat_rows(request, target.as_deref()).await),
        _ => None,
    };
    let mut index_counts = std::collections::HashMap::new();
    if what == "indices" {
        for index in request
            .node
            .indices
            .resolve(target.as_deref().unwrap_or("_all"), false)?
        {
            let count = count_all(request, Some(index.name())).await?;
            index_counts.insert(index.name().to_string(), count);
        }
    }
    let (headers, rows): Table = blocking(move || match what_owned.as_str() {
        "health" => health_table(&node),
        "indices" => indices_table(&node, target.as_deref(), bytes_raw, &index_counts),
        "shards" => shards_table(&node, target.as_deref(), bytes_raw),
        "nodes" => Ok(nodes_table(&node)),
        "master" => Ok(master_table(&node)),
        "allocation" => Ok(super::allocation::cat_rows(&node)),
        "recovery" => Ok(recoveries.unwrap_or_default()),
        "count" => Ok(count_table(cluster_count.unwrap_or_default())),
        "snapshots" => {
            let repository = target.as_deref().ok_or_else(|| {
                Error::IllegalArgument(
                    "a repository is required: /_cat/snapshots/{repository}".into(),
                )
            })?;
            Ok((
                vec![
                    "id",
                    "status",
                    "start_epoch",
                    "end_epoch",
                    "duration",
                    "indices",
                    "successful_shards",
                    "failed_shards",
                    "total_shards",
                ],
                super::snapshot::cat_rows(&node, repository)?,
            ))
        }
        other => Err(Error::NoHandler {
            uri: format!("/_cat/{other}"),
            method: "GET".into(),
        }),
    })
    .await?;
    render(request, headers, rows)
}

fn render(request: &Request, headers: Vec<&'static str>, rows: Vec<Vec<String>>) -> Result<Reply> {
    let selected: Vec<usize> = match request.param("h") {
        Some(list) => list
            .split(',')
            .filter_map(|name| headers.iter().position(|h| *h == name.trim()))
            .collect(),
        None => (0..headers.len()).collect(),
    };
    if request.param("format") == Some("json") {
        let rows: Vec<Value> = rows
            .iter()
            .map(|row| {
                Value::Object(
                    selected
                        .iter()
                        .map(|&i| (headers[i].to_string(), Value::String(row[i].clone())))
                        .collect::<Map<_, _>>(),
                )
            })
            .collect();
        return ok(Value::Array(rows));
    }
    let mut table: Vec<Vec<&str>> = Vec::new();
    if request.flag("v") {
        table.push(selected.iter().map(|&i| headers[i]).collect());
    }
    for row in &rows {
        table.push(selected.iter().map(|&i| row[i].as_str()).collect());
    }
    let widths: Vec<usize> = (0..selected.len())
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        text.push_str(line.join(" ").trim_end());
        text.push('\n');
    }
    Ok(Reply::Text(200, text))
}

fn size(bytes: u64, raw: bool) -> String {
    if raw {
        bytes.to_string()
    } else {
        format_byte_size(bytes)
    }
}

fn health_table(node: &crate::node::NodeState) -> Result<Table> {
    let summary = summary(node, None)?;
    let now = chrono::Utc::now();
    let percent = summary.active_percent();
    let live = node.cluster.membership.live_nodes();
    let data = live
        .iter()
        .filter(|meta| meta.has_role(crate::config::Role::Data))
        .count();
    Ok((
        vec![
            "epoch",
            "timestamp",
            "cluster",
            "status",
            "node.total",
            "node.data",
            "shards",
            "pri",
            "relo",
            "init",
            "unassign",
            "pending_tasks",
            "active_shards_percent",
        ],
        vec![vec![
            now.timestamp().to_string(),
            now.format("%H:%M:%S").to_string(),
            node.config.cluster_name.clone(),
            status_of(&summary).to_string(),
            live.len().to_string(),
            data.to_string(),
            summary.active.to_string(),
            summary.active_primaries.to_string(),
            "0".into(),
            summary.initializing.to_string(),
            summary.unassigned.to_string(),
            "0".into(),
            format!("{percent:.1}%"),
        ]],
    ))
}

/// `docs.count` comes from a search over every shard (`counts`); sizes are this node's copies.
fn indices_table(
    node: &crate::node::NodeState,
    target: Option<&str>,
    raw: bool,
    counts: &std::collections::HashMap<String, u64>,
) -> Result<Table> {
    let indices = node.indices.resolve(target.unwrap_or("_all"), false)?;
    let rows = indices
        .iter()
        .map(|index| {
            let settings = index.meta.settings();
            let store = index.store_size();
            let health = super::cluster::summary(node, Some(index.name()))
                .map(|summary| status_of(&summary))
                .unwrap_or("red");
            vec![
                health.to_string(),
                "open".to_string(),
                index.name().to_string(),
                index.meta.uuid.clone(),
                settings.number_of_shards.to_string(),
                settings.number_of_replicas.to_string(),
                counts.get(index.name()).copied().unwrap_or(0).to_string(),
                index.deleted_doc_count().to_string(),
                size(store, raw),
                size(store, raw),
            ]
        })
        .collect();
    Ok((
        vec![
            "health",
            "status",
            "index",
            "uuid",
            "pri",
            "rep",
            "docs.count",
            "docs.deleted",
            "store.size",
            "pri.store.size",
        ],
        rows,
    ))
}

fn shards_table(node: &crate::node::NodeState, target: Option<&str>, raw: bool) -> Result<Table> {
    let indices = node.indices.resolve(target.unwrap_or("_all"), false)?;
    let state = node.cluster.consensus.state();
    let members: std::collections::HashMap<String, crate::cluster::NodeMeta> = node
        .cluster
        .membership
        .live_nodes()
        .into_iter()
        .map(|meta| (meta.node_id.clone(), meta))
        .collect();
    let mut rows = Vec::new();
    for index in &indices {
        let Some(routing) = state.routing.get(index.name()) else {
            continue;
        };
        for (number, shard) in routing.shards.iter().enumerate() {
            let mut listed = 0;
            for copy in &shard.copies {
                listed += 1;
                let member = members.get(&copy.node_id);
                // Document counts and sizes are known for this node's copies.
                let local = (copy.node_id == node.identity.node_id)
                    .then(|| index.shard(number as u32))
                    .flatten();
                let seq_no = local.as_ref().map(|s| s.seq_no_stats());
                rows.push(vec![
                    index.name().to_string(),
                    number.to_string(),
                    if copy.primary { "p" } else { "r" }.into(),
                    if copy.started {
                        "STARTED"
                    } else {
                        "INITIALIZING"
                    }
                    .into(),
                    local
                        .as_ref()
                        .map(|s| s.searcher().num_docs().to_string())
                        .unwrap_or_default(),
                    local
                        .as_ref()
                        .map(|s| size(s.store_size(), raw))
                        .unwrap_or_default(),
                    member
                        .map(|m| m.http_addr.ip().to_string())
                        .unwrap_or_default(),
                    member.map(|m| m.name.clone()).unwrap_or_default(),
                    local
                        .as_ref()
                        .map(|s| s.segment_count().to_string())
                        .unwrap_or_default(),
                    seq_no.map(|s| s.max_seq_no.to_string()).unwrap_or_default(),
                    seq_no
                        .map(|s| s.local_checkpoint.to_string())
                        .unwrap_or_default(),
                    seq_no
                        .map(|s| s.global_checkpoint.to_string())
                        .unwrap_or_default(),
                ]);
            }
            let missing = if shard.primary().is_some() { 0 } else { 1 };
            for position in 0..(routing.replicas as usize + 1).saturating_sub(listed) {
                let primary = position < missing;
                rows.push(vec![
                    index.name().to_string(),
                    number.to_string(),
                    if primary { "p" } else { "r" }.into(),
                    "UNASSIGNED".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
        }
    }
    Ok((
        vec![
            "index",
            "shard",
            "prirep",
            "state",
            "docs",
            "store",
            "ip",
            "node",
            "segments.count",
            "seq_no.max",
            "seq_no.local_checkpoint",
            "seq_no.global_checkpoint",
        ],
        rows,
    ))
}

fn nodes_table(node: &crate::node::NodeState) -> Table {
    let live = node.cluster.membership.live_nodes();
    let master = super::cluster::elected_master(node);
    let rows = live
        .iter()
        .map(|meta| {
            let roles: String = meta
                .roles
                .iter()
                .map(|role| match role {
                    crate::config::Role::Master => 'm',
                    crate::config::Role::Data => 'd',
                })
                .collect();
            vec![
                meta.http_addr.ip().to_string(),
                roles,
                if master.as_ref() == Some(&meta.node_id) {
                    "*"
                } else {
                    "-"
                }
                .into(),
                meta.name.clone(),
                meta.zone.clone().unwrap_or_default(),
                meta.node_id.clone(),
                meta.http_addr.to_string(),
                meta.transport_addr.to_string(),
                meta.version.clone(),
            ]
        })
        .collect();
    (
        vec![
            "ip",
            "node.role",
            "master",
            "name",
            "zone",
            "id",
            "http_address",
            "transport_address",
            "version",
        ],
        rows,
    )
}

fn master_table(node: &crate::node::NodeState) -> Table {
    let master = node.cluster.consensus.master();
    let live = node.cluster.membership.live_nodes();
    let rows = master
        .map(|peer| {
            let http = live
                .iter()
                .find(|meta| meta.node_id == peer.node_id)
                .map(|meta| meta.http_addr.ip().to_string())
                .unwrap_or_else(|| peer.transport_addr.ip().to_string());
            vec![vec![peer.node_id, http.clone(), http, peer.name]]
        })
        .unwrap_or_default();
    (vec!["id", "host", "ip", "node"], rows)
}

async fn count_all(request: &Request, target: Option<&str>) -> Result<u64> {
    let indices = request
        .node
        .indices
        .resolve(target.unwrap_or("_all"), false)?;
    let body = serde_json::json!({ "size": 0, "track_total_hits": true });
    let search = crate::search::SearchRequest::parse(&body, &Default::default())?;
    let input = crate::replication::reads::SearchInput {
        body: &body,
        params: &Default::default(),
        expression: target.unwrap_or("_all"),
    };
    let response =
        crate::replication::reads::search(&request.node, &indices, input, &search).await?;
    Ok(response.hits.total.map_or(0, |total| total.value))
}

fn count_table(count: u64) -> Table {
    let now = chrono::Utc::now();
    (
        vec!["epoch", "timestamp", "count"],
        vec![vec![
            now.timestamp().to_string(),
            now.format("%H:%M:%S").to_string(),
            count.to_string(),
        ]],
    )
}
