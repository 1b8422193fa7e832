//! Recovery views of the whole cluster: `GET /_cat/recovery[/{index}]` rows and
//! `GET [/{index}]/_recovery` JSON, both with `active_only`, listing each node's peer recoveries
//! and snapshot restores while they copy and once done.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{Reply, Request};
use crate::error::Result;
use crate::indices::wildcard_match;
use crate::replication::RecoveryKind;
use crate::replication::progress::{self, RecoveryRecord};

/// Every node's recoveries of indices matching `target`, finished ones unless `active_only`.
async fn listed(request: &Request, target: Option<&str>) -> Vec<RecoveryRecord> {
    let active_only = request.flag("active_only");
    let patterns: Vec<&str> = target
        .filter(|target| *target != "_all")
        .map(|target| target.split(',').map(str::trim).collect())
        .unwrap_or_default();
    progress::cluster_wide(&request.node)
        .await
        .into_iter()
        .filter(|record| !(active_only && record.done))
        .filter(|record| {
            patterns.is_empty()
                || patterns
                    .iter()
                    .any(|pattern| wildcard_match(pattern, &record.index))
        })
        .collect()
}

fn node_names(request: &Request) -> BTreeMap<String, String> {
    request
        .node
        .cluster
        .membership
        .live_nodes()
        .into_iter()
        .map(|meta| (meta.node_id, meta.name))
        .collect()
}

fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return "100.0%".to_string();
    }
    format!("{:.1}%", done as f64 * 100.0 / total as f64)
}

/// `(repository, snapshot)` of a restore's source.
fn snapshot_source(record: &RecoveryRecord) -> Option<(&str, &str)> {
    (record.kind == RecoveryKind::Snapshot)
        .then(|| record.source.split_once('/'))
        .flatten()
}

/// `GET /_cat/recovery[/{index}]`.
pub(super) async fn cat_rows(
    request: &Request,
    target: Option<&str>,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let names = node_names(request);
    let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    let rows = listed(request, target)
        .await
        .into_iter()
        .map(|record| {
            let (repository, snapshot) = snapshot_source(&record).unwrap_or(("n/a", "n/a"));
            vec![
                record.index.clone(),
                record.shard.to_string(),
                format!("{}ms", record.took_millis),
                record.kind.as_str().into(),
                record.stage().into(),
                match record.kind {
                    RecoveryKind::Peer => name(&record.source),
                    RecoveryKind::Snapshot => record.source.clone(),
                },
                name(&record.target),
                repository.to_string(),
                snapshot.to_string(),
                record.files_total.to_string(),
                record.files_recovered.to_string(),
                percent(record.files_recovered, record.files_total),
                record.bytes_total.to_string(),
                record.bytes_recovered.to_string(),
                percent(record.bytes_recovered, record.bytes_total),
                record.translog_ops.to_string(),
            ]
        })
        .collect();
    (
        vec![
            "index",
            "shard",
            "time",
            "type",
            "stage",
            "source_node",
            "target_node",
            "repository",
            "snapshot",
            "files",
            "files_recovered",
            "files_percent",
            "bytes",
            "bytes_recovered",
            "bytes_percent",
            "translog_ops_recovered",
        ],
        rows,
    )
}

/// `GET [/{index}]/_recovery`: per index, the recoveries of its shards, shaped as
/// Elasticsearch's recovery API.
pub(super) async fn recovery(request: Request, target: Option<&str>) -> Result<Reply> {
    let names = node_names(&request);
    let node_json =
        |id: &str| json!({ "id": id, "name": names.get(id).map_or(id, String::as_str) });
    let mut by_index: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in listed(&request, target).await {
        let source = match snapshot_source(&record) {
            Some((repository, snapshot)) => {
                json!({ "repository": repository, "snapshot": snapshot, "index": record.index })
            }
            None => node_json(&record.source),
        };
        let mut shard = json!({
            "id": record.shard,
            "type": record.kind.as_str().to_ascii_uppercase(),
            "stage": record.stage().to_ascii_uppercase(),
            "primary": record.kind == RecoveryKind::Snapshot,
            "start_time_in_millis": record.start_time_millis,
            "total_time_in_millis": record.took_millis,
            "source": source,
            "target": node_json(&record.target),
            "index": {
                "size": {
                    "total_in_bytes": record.bytes_total,
                    "recovered_in_bytes": record.bytes_recovered,
                    "percent": percent(record.bytes_recovered, record.bytes_total),
                },
                "files": {
                    "total": record.files_total,
                    "recovered": record.files_recovered,
                    "percent": percent(record.files_recovered, record.files_total),
                },
            },
            "translog": { "recovered": record.translog_ops, "total": record.translog_ops },
        });
        if let Some(reason) = &record.failure {
            shard["failure"] = json!(reason);
        }
        by_index
            .entry(record.index.clone())
            .or_default()
            .push(shard);
    }
    let body: Map<String, Value> = by_index
        .into_iter()
        .map(|(index, shards)| (index, json!({ "shards": shards })))
        .collect();
    Ok(Reply::Json(200, Value::Object(body)))
}
