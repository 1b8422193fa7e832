//! `_search` and `_count` routes.

use serde_json::Value;

use std::collections::HashMap;

use super::{Reply, Request, ok};
use crate::error::Result;
use crate::replication::reads;
use crate::search::SearchRequest;

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
    // This node's shards are searched on this worker thread (`block_in_place` hands the
    // worker's other tasks to another thread, far cheaper than a blocking-pool hop per request);
    // other nodes' shards in parallel.
    let input = reads::SearchInput {
        body: &body,
        params: &request.params,
        expression,
    };
    let response = reads::search(&request.node, &indices, input, &search_request).await?;
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
    // A count is a search for no hits with an exact total.
    let body = serde_json::json!({ "query": query, "size": 0, "track_total_hits": true });
    let search_request = SearchRequest::parse(&body, &HashMap::new())?;
    let input = reads::SearchInput {
        body: &body,
        params: &request.params,
        expression,
    };
    let response = reads::search(&request.node, &indices, input, &search_request).await?;
    let count = response.hits.total.map_or(0, |total| total.value);
    ok(serde_json::json!({ "count": count, "_shards": response.shards }))
}
