//! Index administration routes: create, get, exists, delete, mappings, settings, refresh, flush,
//! force merge.

use serde_json::{Map, Value, json};

use super::{Reply, Request, ok};
use crate::error::{Error, Result};
use crate::index::IndexService;
use crate::mapping::Mapping;
use crate::replication::admin;
use crate::replication::wire::CopyOperation;

pub(super) async fn create(request: Request, name: &str) -> Result<Reply> {
    let body = request.json()?;
    let started =
        admin::create_index(&request.node, name, &body, request.master_timeout()?).await?;
    ok(json!({ "acknowledged": true, "shards_acknowledged": started, "index": name }))
}

pub(super) fn get(request: &Request, expression: &str) -> Result<Reply> {
    per_index(request, expression, IndexService::to_json)
}

pub(super) fn exists(request: &Request, expression: &str) -> Result<Reply> {
    match request.node.indices.resolve(expression, false) {
        Ok(found) if !found.is_empty() => Ok(Reply::Empty(200)),
        _ => Ok(Reply::Empty(404)),
    }
}

pub(super) async fn delete(request: Request, expression: &str) -> Result<Reply> {
    let targets = request
        .node
        .indices
        .resolve(expression, request.flag("ignore_unavailable"))?;
    if targets.is_empty() && !expression.contains('*') && expression != "_all" {
        return Err(Error::IndexNotFound(expression.to_string()));
    }
    let names: Vec<String> = targets
        .iter()
        .map(|index| index.name().to_string())
        .collect();
    drop(targets);
    admin::delete_indices(&request.node, &names, request.master_timeout()?).await?;
    ok(json!({ "acknowledged": true }))
}

/// `{index: render(index)}` for every index the expression names.
fn per_index(
    request: &Request,
    expression: &str,
    render: impl Fn(&IndexService) -> Value,
) -> Result<Reply> {
    let mut out = Map::new();
    for index in request
        .node
        .indices
        .resolve(expression, request.flag("ignore_unavailable"))?
    {
        out.insert(index.name().to_string(), render(&index));
    }
    ok(Value::Object(out))
}

pub(super) fn get_mapping(request: &Request, expression: &str) -> Result<Reply> {
    per_index(
        request,
        expression,
        |index| json!({ "mappings": index.meta.mapping().to_json() }),
    )
}

pub(super) async fn put_mapping(request: Request, expression: &str) -> Result<Reply> {
    let body = request.json()?;
    let addition = Mapping::parse(&body)?;
    let targets = request.node.indices.resolve(expression, false)?;
    admin::put_mapping(
        &request.node,
        &targets,
        &addition,
        request.master_timeout()?,
    )
    .await?;
    ok(json!({ "acknowledged": true }))
}

pub(super) fn get_settings(request: &Request, expression: &str) -> Result<Reply> {
    per_index(
        request,
        expression,
        |index| json!({ "settings": index.meta.settings().to_json(&index.meta) }),
    )
}

pub(super) async fn put_settings(request: Request, expression: &str) -> Result<Reply> {
    let body = request.json()?;
    let body = body.get("settings").cloned().unwrap_or(body);
    let targets = request.node.indices.resolve(expression, false)?;
    admin::update_settings(&request.node, &targets, &body, request.master_timeout()?).await?;
    ok(json!({ "acknowledged": true }))
}

/// Refreshes every copy of the targeted indices, on every node.
pub(super) async fn refresh(request: Request, expression: &str) -> Result<Reply> {
    on_every_copy(request, expression, CopyOperation::Refresh).await
}

/// Runs `operation` on every copy of the targeted indices, on every node.
async fn on_every_copy(
    request: Request,
    expression: &str,
    operation: CopyOperation,
) -> Result<Reply> {
    let targets = request
        .node
        .indices
        .resolve(expression, request.flag("ignore_unavailable"))?;
    let (total, successful) = admin::on_every_copy(&request.node, &targets, operation).await?;
    ok(
        json!({ "_shards": { "total": total, "successful": successful, "failed": total - successful } }),
    )
}

pub(super) async fn flush(request: Request, expression: &str) -> Result<Reply> {
    on_every_copy(request, expression, CopyOperation::Flush).await
}

pub(super) async fn force_merge(request: Request, expression: &str) -> Result<Reply> {
    let max_segments = match request.param("max_num_segments") {
        Some(text) => text.parse::<usize>().map_err(|_| {
            crate::error::illegal(format!("failed to parse [max_num_segments] value [{text}]"))
        })?,
        None => 1,
    };
    on_every_copy(
        request,
        expression,
        CopyOperation::ForceMerge { max_segments },
    )
    .await
}
