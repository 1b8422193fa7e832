//! `_bulk`: NDJSON actions, grouped per shard so each shard logs and fsyncs a bulk once; each
//! item succeeds or fails on its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::documents::{apply_refresh, index_for_write, shards_header, write_timeout};
use super::{Reply, Request};
use crate::error::{Error, Result, illegal};
use crate::ids::new_document_id;
use crate::index::IndexService;
use crate::replication::writes;
use crate::shard::{Condition, WriteOp, WriteOutcome, WriteResult};

/// An item's outcome, with the index it was written to.
type ItemResult = Result<(Arc<IndexService>, WriteOutcome)>;
/// One shard's share of a bulk request: (position in the request, op), in order.
type ShardBatch = (Arc<IndexService>, u32, Vec<(usize, WriteOp)>);
/// Shards of one index to refresh, with the highest `_seq_no` written to each.
type RefreshGroup = (Arc<IndexService>, Vec<(u32, i64)>);

/// One parsed bulk item.
struct Item {
    action: &'static str,
    index: String,
    /// The op to run, or the error that stops this item before it reaches a shard.
    op: std::result::Result<(WriteOp, Option<String>), Error>,
}

fn action_name(name: &str) -> Option<&'static str> {
    match name {
        "index" => Some("index"),
        "create" => Some("create"),
        "update" => Some("update"),
        "delete" => Some("delete"),
        _ => None,
    }
}

fn meta_str(meta: &Map<String, Value>, key: &str) -> Option<String> {
    match meta.get(key) {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    }
}

/// Parses the NDJSON body; a malformed action line fails the whole request, as in ES.
fn parse_items(body: &[u8], default_index: Option<&str>) -> Result<Vec<Item>> {
    let mut lines = body
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace));
    let mut items = Vec::new();
    while let Some(line) = lines.next() {
        let action: Value = serde_json::from_slice(line).map_err(|err| {
            Error::IllegalArgument(format!(
                "Malformed action/metadata line [{}], expected START_OBJECT: {err}",
                items.len() + 1
            ))
        })?;
        let object = action.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
            illegal(format!(
                "Malformed action/metadata line [{}], expected a single action",
                items.len() + 1
            ))
        })?;
        let (name, meta) = object
            .iter()
            .next()
            .ok_or_else(|| illegal("empty bulk action"))?;
        let action = action_name(name).ok_or_else(|| illegal(format!("Malformed action/metadata line [{}], expected one of [create, delete, index, update] but found [{name}]", items.len() + 1)))?;
        let meta = meta.as_object().cloned().unwrap_or_default();
        let index = meta_str(&meta, "_index")
            .or_else(|| default_index.map(str::to_string))
            .ok_or_else(|| illegal("Validation Failed: 1: index is missing;"))?;
        let id = meta_str(&meta, "_id");
        let routing = meta_str(&meta, "routing");
        let condition = Condition {
            if_seq_no: meta.get("if_seq_no").and_then(Value::as_i64),
            if_primary_term: meta.get("if_primary_term").and_then(Value::as_u64),
        };
        let source_line = if action == "delete" {
            None
        } else {
            Some(lines.next().ok_or_else(|| illegal(format!("The bulk request must be terminated by a newline; [{action}] is missing its source")))?)
        };
        let source = source_line.map(|line| {
            serde_json::from_slice::<Value>(line)
                .map_err(|err| Error::MapperParsing(format!("failed to parse: {err}")))
                .map(|value| (value, line.to_vec()))
        });
        let op = match (action, source) {
            ("delete", _) => match id {
                Some(id) => Ok(WriteOp::Delete { id, condition }),
                None => Err(illegal("Validation Failed: 1: id is missing;")),
            },
            (_, Some(Err(err))) => Err(err),
            ("update", Some(Ok((body, _)))) => match id {
                None => Err(illegal("Validation Failed: 1: id is missing;")),
                Some(id) => Ok(WriteOp::Update {
                    id,
                    doc: body.get("doc").cloned(),
                    upsert: body.get("upsert").cloned(),
                    doc_as_upsert: body
                        .get("doc_as_upsert")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    condition,
                }),
            },
            (action, Some(Ok((source, raw)))) => {
                if source.is_object() {
                    let auto_id = id.is_none();
                    let create = action == "create" || auto_id;
                    Ok(WriteOp::Index {
                        id: id.unwrap_or_else(new_document_id),
                        source,
                        raw: Some(raw),
                        create,
                        auto_id,
                        condition,
                    })
                } else {
                    Err(Error::MapperParsing(
                        "failed to parse, document is empty".into(),
                    ))
                }
            }
            _ => Err(illegal("bulk item is missing its source")),
        };
        items.push(Item {
            action,
            index,
            op: op.map(|op| (op, routing)),
        });
    }
    Ok(items)
}

/// One bulk item's outcome, serialized as `{action: {...}}` straight to bytes: building a JSON
/// tree per item was a visible share of bulk time.
struct RenderedItem<'a> {
    action: &'static str,
    index: &'a str,
    id: &'a str,
    result: ItemResult,
}

impl Serialize for RenderedItem<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.action, &ItemBody(self))?;
        map.end()
    }
}

struct ItemBody<'b, 'a>(&'b RenderedItem<'a>);

impl Serialize for ItemBody<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let item = self.0;
        match &item.result {
            Ok((index, outcome)) => {
                let status: u16 = match outcome.result {
                    WriteResult::Created => 201,
                    WriteResult::NotFound => 404,
                    _ => 200,
                };
                let mut map = serializer.serialize_map(Some(8))?;
                map.serialize_entry("_index", index.name())?;
                map.serialize_entry("_id", &outcome.id)?;
                map.serialize_entry("_version", &outcome.version)?;
                map.serialize_entry("result", outcome.result.as_str())?;
                map.serialize_entry("_shards", &shards_header(index, outcome))?;
                map.serialize_entry("_seq_no", &outcome.seq_no)?;
                map.serialize_entry("_primary_term", &outcome.primary_term)?;
                map.serialize_entry("status", &status)?;
                map.end()
            }
            Err(err) => {
                let mut map = serializer.serialize_map(Some(4))?;
                map.serialize_entry("_index", item.index)?;
                map.serialize_entry("_id", item.id)?;
                map.serialize_entry("status", &err.status())?;
                map.serialize_entry("error", &err.to_es_cause())?;
                map.end()
            }
        }
    }
}

#[derive(serde::Serialize)]
struct BulkResponse<'a> {
    took: u64,
    errors: bool,
    items: Vec<RenderedItem<'a>>,
}

pub(super) async fn bulk(request: Request, default_index: Option<&str>) -> Result<Reply> {
    let started = Instant::now();
    let items = parse_items(&request.body, default_index)?;
    let count = items.len();
    let mut results: Vec<Option<ItemResult>> = (0..count).map(|_| None).collect();
    let mut ids: Vec<String> = Vec::with_capacity(count);
    let mut actions = Vec::with_capacity(count);
    let mut index_names = Vec::with_capacity(count);
    // Group per shard, keeping each shard's items in request order.
    let mut groups: BTreeMap<(String, u32), ShardBatch> = BTreeMap::new();
    for (position, item) in items.into_iter().enumerate() {
        actions.push(item.action);
        index_names.push(item.index.clone());
        match item.op {
            Err(err) => {
                ids.push(String::new());
                results[position] = Some(Err(err));
            }
            Ok((op, routing)) => {
                ids.push(op.id().to_string());
                match index_for_write(&request, &item.index).await {
                    Err(err) => results[position] = Some(Err(err)),
                    Ok(index) => {
                        let number = index.shard_number_for(op.id(), routing.as_deref());
                        let key = (index.meta.uuid.clone(), number);
                        groups
                            .entry(key)
                            .or_insert_with(|| (index.clone(), number, Vec::new()))
                            .2
                            .push((position, op));
                    }
                }
            }
        }
    }
    let timeout = write_timeout(&request)?;
    // Every shard's batch goes to its primary at once; each shard's items stay in order.
    let mut batches = tokio::task::JoinSet::new();
    for (index, number, ops) in groups.into_values() {
        let (positions, ops): (Vec<usize>, Vec<WriteOp>) = ops.into_iter().unzip();
        let node = request.node.clone();
        batches.spawn(async move {
            let outcomes = writes::write(&node, index.name(), number, ops, timeout).await;
            (index, number, positions, outcomes)
        });
    }
    let mut refresh_targets: Vec<(Arc<IndexService>, u32, i64)> = Vec::new();
    while let Some(joined) = batches.join_next().await {
        let (index, number, positions, outcomes) =
            joined.map_err(|err| Error::Internal(format!("bulk shard task failed: {err}")))?;
        match outcomes {
            Ok(outcomes) => {
                let mut max_seq_no = -1;
                for (position, outcome) in positions.into_iter().zip(outcomes) {
                    if let Ok(outcome) = &outcome {
                        max_seq_no = max_seq_no.max(outcome.seq_no);
                    }
                    results[position] = Some(outcome.map(|o| (index.clone(), o)));
                }
                refresh_targets.push((index, number, max_seq_no));
            }
            Err(err) => {
                let wire = crate::error::WireError::from(&err);
                for position in positions {
                    results[position] = Some(Err(wire.clone().into()));
                }
            }
        }
    }
    let mut by_index: BTreeMap<String, RefreshGroup> = BTreeMap::new();
    for (index, number, seq_no) in refresh_targets {
        by_index
            .entry(index.meta.uuid.clone())
            .or_insert_with(|| (index.clone(), Vec::new()))
            .1
            .push((number, seq_no));
    }
    for (index, shards) in by_index.into_values() {
        apply_refresh(&request, &index, shards).await?;
    }
    let mut errors = false;
    let mut rendered = Vec::with_capacity(count);
    for (position, result) in results.into_iter().enumerate() {
        let result =
            result.unwrap_or_else(|| Err(Error::Internal("bulk item was not executed".into())));
        errors |= result.is_err();
        rendered.push(RenderedItem {
            action: actions[position],
            index: &index_names[position],
            id: &ids[position],
            result,
        });
    }
    let response = BulkResponse {
        took: started.elapsed().as_millis() as u64,
        errors,
        items: rendered,
    };
    let bytes = serde_json::to_vec(&response).map_err(|err| Error::Internal(err.to_string()))?;
    Ok(Reply::Raw(200, bytes))
}
