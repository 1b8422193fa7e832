//! `_search` and `_count` routes.

use serde_json::Value;

use super::{Reply, Request, blocking, ok};
use crate::error::Result;
use crate::search::{self, SearchRequest};

fn targets(
    request: &Request,
    expression: &str,
) -> Result<Vec<std::sync::Arc<crate::index::IndexService>>> {
    let ignore_unavailable = request.flag("ignore_unavailable");
    request.node.indices.resolve(expression, ignore_unavailable)
}

pub(super) async fn search(request: Request, expression: &str) -> Result<Reply> {
    let indices = targets(&request, expression)?;
    let body = request.json()?;
    let search_request = SearchRequest::parse(&body, &request.params)?;
    let node = request.node.clone();
    let expression = expression.to_string();
    // The search runs on this worker thread: `block_in_place` hands the worker's other tasks to
    // another thread, which costs far less than waking a blocking-pool thread per request.
    let response = tokio::task::block_in_place(move || {
        let scope = search::SearchScope {
            indices: &indices,
            expression: &expression,
            plugins: Some(&node.plugins),
        };
        search::execute(&scope, &search_request)
    })?;
    let bytes = serde_json::to_vec(&response)
        .map_err(|err| crate::error::Error::Internal(err.to_string()))?;
    Ok(Reply::Raw(200, bytes))
}

pub(super) async fn count(request: Request, expression: &str) -> Result<Reply> {
    let indices = targets(&request, expression)?;
    let body = request.json()?;
    let mut query = body.get("query").cloned().unwrap_or(Value::Null);
    if let Some(q) = request.param("q") {
        query = serde_json::json!({"query_string": {"query": q}});
    }
    let response = blocking(move || search::count(&indices, &query)).await?;
    ok(response)
}
