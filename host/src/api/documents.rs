//! Single-document routes: index, create, get, delete, update, and `_mget`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Reply, Request, ok};
use crate::error::{Error, Result, illegal, parsing};
use crate::ids::new_document_id;
use crate::index::IndexService;
use crate::replication::wire::CopyOperation;
use crate::replication::{admin, reads, writes};
use crate::search::source_filter::SourceFilter;
use crate::shard::{Condition, WriteOp, WriteOutcome, WriteResult};

/// The index to write to, created on first use as Elasticsearch's `auto_create_index` does.
pub(super) async fn index_for_write(request: &Request, name: &str) -> Result<Arc<IndexService>> {
    match admin::index(&request.node, name) {
        Err(Error::IndexNotFound(_)) => {
            match admin::create_index(
                &request.node,
                name,
                &Value::Null,
                crate::cluster::consensus::DEFAULT_MASTER_TIMEOUT,
            )
            .await
            {
                Ok(_) | Err(Error::IndexAlreadyExists { .. }) => admin::index(&request.node, name),
                Err(err) => Err(err),
            }
        }
        other => other,
    }
}

/// How long a write waits for an unavailable primary (`timeout`, default one minute).
pub(super) fn write_timeout(request: &Request) -> Result<std::time::Duration> {
    Ok(match request.param("timeout") {
        Some(text) => crate::units::parse_time_value(text)?.unwrap_or_default(),
        None => crate::replication::UNAVAILABLE_RETRY,
    })
}

pub(super) fn condition(request: &Request) -> Result<Condition> {
    let if_primary_term = request.param_i64("if_primary_term")?;
    if if_primary_term.is_some_and(|term| term < 0) {
        return Err(illegal("if_primary_term must be non-negative"));
    }
    Ok(Condition {
        if_seq_no: request.param_i64("if_seq_no")?,
        if_primary_term: if_primary_term.map(|t| t as u64),
    })
}

/// `_shards` of a write's reply: the copies the index should have, and those the write reached
/// (none for a no-op, as Elasticsearch).
pub(super) fn shards_header(index: &IndexService, outcome: &WriteOutcome) -> Value {
    if outcome.result == WriteResult::Noop {
        return json!({ "total": 0, "successful": 0, "failed": 0 });
    }
    let replicas = index.meta.number_of_replicas();
    json!({
        "total": 1 + replicas,
        "successful": outcome.copies.successful,
        "failed": outcome.copies.failed,
    })
}

pub(super) fn outcome_json(index: &IndexService, outcome: &WriteOutcome) -> Value {
    json!({
        "_index": index.name(),
        "_id": outcome.id,
        "_version": outcome.version,
        "result": outcome.result.as_str(),
        "_shards": shards_header(index, outcome),
        "_seq_no": outcome.seq_no,
        "_primary_term": outcome.primary_term,
    })
}

/// Honours `refresh=true|wait_for` after a write to shards of `index` (`(shard, seq_no)`).
pub(super) async fn apply_refresh(
    request: &Request,
    index: &Arc<IndexService>,
    shards: Vec<(u32, i64)>,
) -> Result<bool> {
    match request.param("refresh") {
        None | Some("false") => Ok(false),
        Some("" | "true") => {
            admin::on_every_copy(
                &request.node,
                std::slice::from_ref(index),
                CopyOperation::Refresh,
            )
            .await?;
            Ok(true)
        }
        Some("wait_for") => {
            let local: Vec<_> = shards
                .iter()
                .filter_map(|(number, seq_no)| {
                    reads::local_copy(&request.node, index, *number).map(|shard| (shard, *seq_no))
                })
                .collect();
            if index.meta.settings().refresh_interval.is_none() || local.len() < shards.len() {
                // Copies elsewhere (or no periodic refresh): refresh them now instead.
                admin::on_every_copy(
                    &request.node,
                    std::slice::from_ref(index),
                    CopyOperation::Refresh,
                )
                .await?;
                return Ok(false);
            }
            for (shard, seq_no) in local {
                shard.wait_for_refresh(seq_no).await;
            }
            Ok(false)
        }
        Some(other) => Err(illegal(format!("unknown value for refresh: [{other}]"))),
    }
}

async fn write_one(
    request: &Request,
    index: Arc<IndexService>,
    op: WriteOp,
    routing: Option<String>,
) -> Result<WriteOutcome> {
    let number = index.shard_number_for(op.id(), routing.as_deref());
    let timeout = write_timeout(request)?;
    let mut outcomes =
        writes::write(&request.node, index.name(), number, vec![op], timeout).await?;
    let outcome = outcomes
        .pop()
        .ok_or_else(|| Error::Internal("write produced no result".into()))??;
    apply_refresh(request, &index, vec![(number, outcome.seq_no)]).await?;
    Ok(outcome)
}

pub(super) async fn index(
    request: Request,
    name: &str,
    id: Option<&str>,
    create: bool,
) -> Result<Reply> {
    let source = request.json()?;
    if !source.is_object() {
        return Err(Error::MapperParsing(
            "failed to parse, document is empty".into(),
        ));
    }
    let create = create || request.param("op_type") == Some("create") || id.is_none();
    let index = index_for_write(&request, name).await?;
    let auto_id = id.is_none();
    let id = id.map(str::to_string).unwrap_or_else(new_document_id);
    let op = WriteOp::Index {
        id,
        source,
        raw: Some(request.body.to_vec()),
        create,
        auto_id,
        condition: condition(&request)?,
    };
    let routing = request.param("routing").map(str::to_string);
    let outcome = write_one(&request, index.clone(), op, routing).await?;
    let mut body = outcome_json(&index, &outcome);
    if request
        .param("refresh")
        .is_some_and(|r| r.is_empty() || r == "true")
    {
        body["forced_refresh"] = json!(true);
    }
    let status = if outcome.result == WriteResult::Created {
        201
    } else {
        200
    };
    Ok(Reply::Json(status, body))
}

pub(super) async fn delete(request: Request, name: &str, id: &str) -> Result<Reply> {
    let index = admin::index(&request.node, name)?;
    let op = WriteOp::Delete {
        id: id.to_string(),
        condition: condition(&request)?,
    };
    let routing = request.param("routing").map(str::to_string);
    let outcome = write_one(&request, index.clone(), op, routing).await?;
    let status = if outcome.result == WriteResult::NotFound {
        404
    } else {
        200
    };
    Ok(Reply::Json(status, outcome_json(&index, &outcome)))
}

pub(super) async fn update(request: Request, name: &str, id: &str) -> Result<Reply> {
    let body = request.json()?;
    let object = body
        .as_object()
        .ok_or_else(|| parsing("update request body must be an object"))?;
    for key in object.keys() {
        if !["doc", "upsert", "doc_as_upsert", "detect_noop", "_source"].contains(&key.as_str()) {
            return Err(parsing(format!("[UpdateRequest] unknown field [{key}]")));
        }
    }
    let doc = object.get("doc").cloned();
    if doc.as_ref().is_some_and(|d| !d.is_object()) {
        return Err(parsing("[doc] must be an object"));
    }
    if doc.is_none() && object.get("upsert").is_none() {
        return Err(illegal("Validation Failed: 1: script or doc is missing;"));
    }
    let index = index_for_write(&request, name).await?;
    let op = WriteOp::Update {
        id: id.to_string(),
        doc,
        upsert: object.get("upsert").cloned(),
        doc_as_upsert: object
            .get("doc_as_upsert")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        condition: condition(&request)?,
    };
    let routing = request.param("routing").map(str::to_string);
    let outcome = write_one(&request, index.clone(), op, routing).await?;
    let mut response = outcome_json(&index, &outcome);
    let wants_source = object
        .get("_source")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || request.flag("_source");
    if let (true, Some(source)) = (wants_source, &outcome.source) {
        let source: Value =
            serde_json::from_slice(source).map_err(|err| Error::Internal(err.to_string()))?;
        response["get"] = json!({ "found": true, "_source": source });
    }
    let status = if outcome.result == WriteResult::Created {
        201
    } else {
        200
    };
    Ok(Reply::Json(status, response))
}

fn source_filter(request: &Request) -> SourceFilter {
    SourceFilter::from_params(
        request.param("_source"),
        request.param("_source_includes"),
        request.param("_source_excludes"),
    )
    .unwrap_or_else(SourceFilter::all)
}

/// Reads one document from any copy of its shard; `Ok(None)` when it does not exist.
async fn read_doc(
    request: &Request,
    index: Arc<IndexService>,
    id: String,
    routing: Option<String>,
) -> Result<Option<crate::shard::StoredDoc>> {
    let number = index.shard_number_for(&id, routing.as_deref());
    reads::get(&request.node, &index, number, &id).await
}

fn found_json(index: &str, doc: &crate::shard::StoredDoc, filter: &SourceFilter) -> Result<Value> {
    let mut out = json!({
        "_index": index, "_id": doc.id, "_version": doc.version,
        "_seq_no": doc.seq_no, "_primary_term": doc.primary_term, "found": true,
    });
    let source: Value =
        serde_json::from_slice(&doc.source).map_err(|err| Error::Internal(err.to_string()))?;
    if let Some(filtered) = filter.apply(source) {
        out["_source"] = filtered;
    }
    Ok(out)
}

pub(super) async fn get(request: Request, name: &str, id: &str) -> Result<Reply> {
    let index = admin::index(&request.node, name)?;
    let routing = request.param("routing").map(str::to_string);
    match read_doc(&request, index, id.to_string(), routing).await? {
        Some(doc) => ok(found_json(name, &doc, &source_filter(&request))?),
        None => Ok(Reply::Json(
            404,
            json!({ "_index": name, "_id": id, "found": false }),
        )),
    }
}

pub(super) async fn get_source(request: Request, name: &str, id: &str) -> Result<Reply> {
    let index = admin::index(&request.node, name)?;
    let routing = request.param("routing").map(str::to_string);
    match read_doc(&request, index, id.to_string(), routing).await? {
        Some(doc) => {
            let source: Value = serde_json::from_slice(&doc.source)
                .map_err(|err| Error::Internal(err.to_string()))?;
            ok(source_filter(&request).apply(source).unwrap_or(Value::Null))
        }
        None => Err(Error::DocumentMissing {
            index: name.to_string(),
            id: id.to_string(),
        }),
    }
}

pub(super) async fn mget(request: Request, default_index: Option<&str>) -> Result<Reply> {
    let body = request.json()?;
    let mut wanted: Vec<(String, String, Option<String>, Option<SourceFilter>)> = Vec::new();
    if let Some(docs) = body.get("docs").and_then(Value::as_array) {
        for doc in docs {
            let index = doc
                .get("_index")
                .and_then(Value::as_str)
                .or(default_index)
                .ok_or_else(|| illegal("[_index] is missing for a doc in _mget"))?;
            let id = match doc.get("_id") {
                Some(Value::String(id)) => id.clone(),
                Some(Value::Number(id)) => id.to_string(),
                _ => return Err(illegal("[_id] is missing for a doc in _mget")),
            };
            let routing = doc
                .get("routing")
                .and_then(Value::as_str)
                .map(str::to_string);
            let filter = doc.get("_source").map(SourceFilter::parse).transpose()?;
            wanted.push((index.to_string(), id, routing, filter));
        }
    } else if let Some(ids) = body.get("ids").and_then(Value::as_array) {
        let index =
            default_index.ok_or_else(|| illegal("_mget with [ids] needs an index in the path"))?;
        for id in ids {
            let id = id
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| id.to_string());
            wanted.push((index.to_string(), id, None, None));
        }
    } else {
        return Err(parsing("_mget needs [docs] or [ids]"));
    }
    let default_filter = source_filter(&request);
    // One request per shard, all shards at once.
    let mut groups: BTreeMap<(String, u32), (Arc<IndexService>, Vec<usize>)> = BTreeMap::new();
    let mut docs: Vec<Value> = vec![Value::Null; wanted.len()];
    for (position, (index_name, id, routing, _)) in wanted.iter().enumerate() {
        match admin::index(&request.node, index_name) {
            Err(err) => {
                docs[position] =
                    json!({ "_index": index_name, "_id": id, "error": err.to_es_cause() });
            }
            Ok(index) => {
                let number = index.shard_number_for(id, routing.as_deref());
                groups
                    .entry((index_name.clone(), number))
                    .or_insert_with(|| (index, Vec::new()))
                    .1
                    .push(position);
            }
        }
    }
    let mut fetches = tokio::task::JoinSet::new();
    for ((_, number), (index, positions)) in groups {
        let ids: Vec<String> = positions.iter().map(|&p| wanted[p].1.clone()).collect();
        let node = request.node.clone();
        fetches.spawn(async move {
            let found = reads::get_many(&node, &index, number, ids).await;
            (positions, found)
        });
    }
    while let Some(joined) = fetches.join_next().await {
        let (positions, found) =
            joined.map_err(|err| Error::Internal(format!("mget task failed: {err}")))?;
        let found = found?;
        for (position, doc) in positions.into_iter().zip(found) {
            let (index_name, id, _, filter) = &wanted[position];
            let filter = filter.clone().unwrap_or_else(|| default_filter.clone());
            docs[position] = match doc {
                Some(doc) => found_json(index_name, &doc, &filter)?,
                None => json!({ "_index": index_name, "_id": id, "found": false }),
            };
        }
    }
    ok(json!({ "docs": docs }))
}
