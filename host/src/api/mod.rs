//! The Elasticsearch-compatible REST API: one dispatcher that matches method and path
//! segments (so the whole route table reads in one place), and the response helpers.

mod allocation;
mod bulk;
mod cat;
mod cluster;
mod documents;
#[cfg(feature = "fault-injection")]
mod faults;
mod indices;
mod plugins;
mod recovery;
mod search;
mod slm;
mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::node::NodeState;

/// Builds the axum application.
pub fn router(state: Arc<NodeState>, max_body: usize) -> axum::Router {
    axum::Router::new()
        .fallback(dispatch)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(AppState {
            node: state,
            max_body,
        })
}

#[derive(Clone)]
struct AppState {
    node: Arc<NodeState>,
    max_body: usize,
}

/// One incoming request, decoded.
#[derive(Clone)]
pub(crate) struct Request {
    pub node: Arc<NodeState>,
    pub method: Method,
    pub params: HashMap<String, String>,
    pub body: Bytes,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// `?flag`, `?flag=true` → true.
    pub fn flag(&self, name: &str) -> bool {
        self.param(name)
            .is_some_and(|v| v.is_empty() || v == "true")
    }

    /// The body as JSON; an empty body is `Null`.
    pub fn json(&self) -> Result<Value> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body)
            .map_err(|err| Error::Parsing(format!("failed to parse request body: {err}")))
    }

    /// How long a cluster-state change may wait for the master (`master_timeout`, default 30s).
    pub fn master_timeout(&self) -> Result<std::time::Duration> {
        Ok(match self.param("master_timeout") {
            Some(text) => crate::units::parse_time_value(text)?
                .unwrap_or(crate::cluster::consensus::DEFAULT_MASTER_TIMEOUT),
            None => crate::cluster::consensus::DEFAULT_MASTER_TIMEOUT,
        })
    }

    pub fn param_i64(&self, name: &str) -> Result<Option<i64>> {
        self.param(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    Error::IllegalArgument(format!(
                        "failed to parse [{name}] value [{v}] as a number"
                    ))
                })
            })
            .transpose()
    }
}

/// A JSON response with `status`.
pub(crate) fn json_response(status: u16, body: &Value, pretty: bool) -> Response {
    let bytes = if pretty {
        serde_json::to_vec_pretty(body)
    } else {
        serde_json::to_vec(body)
    }
    .unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn ok(body: Value) -> Result<Reply> {
    Ok(Reply::Json(200, body))
}

/// What a route returns before rendering.
pub(crate) enum Reply {
    Json(u16, Value),
    Text(u16, String),
    /// Status only, for HEAD.
    Empty(u16),
    /// JSON already serialized.
    Raw(u16, Vec<u8>),
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&segment[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn dispatch(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let params: HashMap<String, String> = Query::try_from_uri(&uri)
        .map(|q: Query<HashMap<String, String>>| q.0)
        .unwrap_or_default();
    let pretty = params.contains_key("pretty");
    let is_head = method == Method::HEAD;
    let reply = match body {
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(Error::ContentTooLong {
                limit: app.max_body,
            })
        }
        Err(rejection) => Err(Error::Parsing(format!(
            "failed to read request body: {rejection}"
        ))),
        Ok(body) => {
            let segments: Vec<String> = uri
                .path()
                .split('/')
                .filter(|s| !s.is_empty())
                .map(percent_decode)
                .collect();
            let request = Request {
                node: app.node.clone(),
                method: method.clone(),
                params,
                body,
            };
            match route(request.clone(), &segments, &uri).await {
                // A failed request changed nothing, so it may run again once this node has
                // caught up with a creation another node acknowledged a moment ago.
                Err(err)
                    if names_something_missing(&err) && caught_up_with_master(&app.node).await =>
                {
                    route(request, &segments, &uri).await
                }
                answer => answer,
            }
        }
    };
    match reply {
        Ok(Reply::Json(status, _)) if is_head => empty(status),
        Ok(Reply::Json(status, body)) => json_response(status, &body, pretty),
        Ok(Reply::Text(status, text)) => {
            let mut response =
                (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), text).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=UTF-8"),
            );
            response
        }
        Ok(Reply::Empty(status)) => empty(status),
        Ok(Reply::Raw(status, _)) if is_head => empty(status),
        Ok(Reply::Raw(status, bytes)) if pretty => {
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            json_response(status, &value, true)
        }
        Ok(Reply::Raw(status, bytes)) => {
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(err) => {
            if err.status() >= 500 {
                tracing::error!(error = %err, method = %method, path = uri.path(), "request failed");
            }
            if is_head {
                empty(err.status())
            } else {
                json_response(err.status(), &err.to_es_body(), pretty)
            }
        }
    }
}

/// How long a node that cannot find what a request names waits to catch up with the master.
const CATCH_UP_ON_MISS: Duration = Duration::from_secs(2);

/// Waits until this node has laid out every index the master knows of; returns whether its
/// view moved on meanwhile. A request naming something this node does not find asks this
/// before answering "missing": another node may have acknowledged creating it a moment ago
/// (Elasticsearch acknowledges a change once every node applied it; here once a quorum holds
/// it, so the others may lag a little).
async fn caught_up_with_master(node: &NodeState) -> bool {
    // The index layout follows the cluster state, so it tells when both moved on.
    let before = node.indices.metadata_version();
    let Some(wanted) = node
        .cluster
        .consensus
        .master_state_version(CATCH_UP_ON_MISS)
        .await
    else {
        return false;
    };
    node.indices
        .wait_for_metadata(wanted, CATCH_UP_ON_MISS)
        .await;
    node.indices.metadata_version() > before
}

/// Whether `err` says an index or repository the request named does not exist (as far as
/// this node's copy of the cluster state knows).
fn names_something_missing(err: &Error) -> bool {
    matches!(err, Error::IndexNotFound(_) | Error::RepositoryMissing(_))
}

fn empty(status: u16) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response
}

/// The route table.
async fn route(request: Request, segments: &[String], uri: &Uri) -> Result<Reply> {
    let method = request.method.clone();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    use Method as M;
    match (&method, seg.as_slice()) {
        (&M::GET | &M::HEAD, []) => cluster::root(&request),
        (&M::GET, ["_cluster", "health"]) => cluster::health(&request, None).await,
        (&M::GET, ["_cluster", "health", target]) => cluster::health(&request, Some(target)).await,
        (&M::GET, ["_nodes", "stats"]) | (&M::GET, ["_nodes", "stats", ..]) => {
            cluster::node_stats(&request).await
        }
        (&M::GET, ["_nodes"]) => cluster::nodes_info(&request),
        (&M::GET, ["_cluster", "state"]) => cluster::state(&request),
        (&M::GET, ["_slm", "policy"]) => slm::get_policies(&request, None),
        (&M::GET, ["_slm", "policy", id]) => slm::get_policies(&request, Some(id)),
        (&M::PUT, ["_slm", "policy", id]) => slm::put_policy(request, id).await,
        (&M::DELETE, ["_slm", "policy", id]) => slm::delete_policy(request, id).await,
        (&M::POST | &M::PUT, ["_slm", "policy", id, "_execute"]) => slm::execute(request, id).await,
        (&M::POST, ["_slm", "_execute_retention"]) => slm::execute_retention(request).await,
        (&M::GET, ["_slm", "stats"]) => slm::stats(&request),
        (&M::GET, ["_snapshot"]) => snapshot::get_repositories(&request, None),
        (&M::GET, ["_snapshot", repo]) => snapshot::get_repositories(&request, Some(repo)),
        (&M::PUT | &M::POST, ["_snapshot", repo]) => snapshot::put_repository(request, repo).await,
        (&M::DELETE, ["_snapshot", repo]) => snapshot::delete_repository(request, repo).await,
        (&M::POST, ["_snapshot", repo, "_verify"]) => {
            snapshot::verify_repository(request, repo).await
        }
        (&M::GET, ["_snapshot", repo, "_status"]) => {
            snapshot::snapshot_status(request, repo, None).await
        }
        (&M::GET, ["_snapshot", repo, name, "_status"]) => {
            snapshot::snapshot_status(request, repo, Some(name)).await
        }
        (&M::POST, ["_snapshot", repo, "_cleanup"]) => {
            snapshot::cleanup_repository(request, repo).await
        }
        (&M::PUT | &M::POST, ["_snapshot", repo, name]) => {
            snapshot::create_snapshot(request, repo, name).await
        }
        (&M::GET, ["_snapshot", repo, name]) => snapshot::get_snapshots(request, repo, name).await,
        (&M::DELETE, ["_snapshot", repo, name]) => {
            snapshot::delete_snapshot(request, repo, name).await
        }
        (&M::POST, ["_snapshot", repo, name, "_restore"]) => {
            snapshot::restore(request, repo, name).await
        }
        (&M::GET, ["_cluster", "settings"]) => cluster::get_settings(&request),
        (&M::PUT, ["_cluster", "settings"]) => cluster::put_settings(&request).await,
        #[cfg(feature = "fault-injection")]
        (&M::GET, ["_test", "faults"]) => faults::get(&request),
        #[cfg(feature = "fault-injection")]
        (&M::PUT, ["_test", "faults"]) => faults::set(&request),
        (&M::POST, ["_cluster", "reroute"]) => allocation::reroute(&request).await,
        (&M::GET | &M::POST, ["_cluster", "allocation", "explain"]) => {
            allocation::explain(&request)
        }
        (&M::GET, ["_cat"]) => cat::help(),
        (&M::GET, ["_cat", what]) => cat::cat(&request, what, None).await,
        (&M::GET, ["_cat", what, target]) => cat::cat(&request, what, Some(target)).await,
        (&M::POST | &M::PUT, ["_bulk"]) => bulk::bulk(request, None).await,
        (&M::POST | &M::PUT, [index, "_bulk"]) => bulk::bulk(request, Some(index)).await,
        (&M::GET | &M::POST, ["_mget"]) => documents::mget(request, None).await,
        (&M::GET | &M::POST, [index, "_mget"]) => documents::mget(request, Some(index)).await,
        (&M::GET | &M::POST, ["_search"]) => search::search(request, "_all").await,
        (&M::GET | &M::POST, [index, "_search"]) => search::search(request, index).await,
        (&M::GET | &M::POST, ["_count"]) => search::count(request, "_all").await,
        (&M::GET | &M::POST, [index, "_count"]) => search::count(request, index).await,
        (&M::GET, ["_recovery"]) => recovery::recovery(request, None).await,
        (&M::GET, [index, "_recovery"]) => recovery::recovery(request, Some(index)).await,
        (&M::POST | &M::GET, ["_refresh"]) => indices::refresh(request, "_all").await,
        (&M::POST | &M::GET, [index, "_refresh"]) => indices::refresh(request, index).await,
        (&M::POST | &M::GET, ["_flush"]) => indices::flush(request, "_all").await,
        (&M::POST | &M::GET, [index, "_flush"]) => indices::flush(request, index).await,
        (&M::POST, ["_forcemerge"]) => indices::force_merge(request, "_all").await,
        (&M::POST, [index, "_forcemerge"]) => indices::force_merge(request, index).await,
        (&M::GET, ["_plugins"]) => plugins::list(&request),
        (&M::GET, ["_plugins", name]) => plugins::get(&request, name),
        (&M::PUT, ["_plugins", name]) => plugins::upload(request, name).await,
        (&M::DELETE, ["_plugins", name]) => plugins::remove(&request, name),
        (&M::PUT, ["_plugins", name, "_config"]) => plugins::set_config(&request, name),
        (&M::POST, ["_plugins", name, "_enable"]) => plugins::set_enabled(&request, name, true),
        (&M::POST, ["_plugins", name, "_disable"]) => plugins::set_enabled(&request, name, false),
        (&M::GET, ["_mapping"]) => indices::get_mapping(&request, "_all"),
        (&M::GET, [index, "_mapping"]) => indices::get_mapping(&request, index),
        (&M::PUT | &M::POST, [index, "_mapping"]) => indices::put_mapping(request, index).await,
        (&M::GET, ["_settings"]) => indices::get_settings(&request, "_all"),
        (&M::GET, [index, "_settings"]) => indices::get_settings(&request, index),
        (&M::PUT, [index, "_settings"]) => indices::put_settings(request, index).await,
        (&M::PUT | &M::POST, [index, "_doc", id]) => {
            documents::index(request, index, Some(id), false).await
        }
        (&M::POST, [index, "_doc"]) => documents::index(request, index, None, false).await,
        (&M::PUT | &M::POST, [index, "_create", id]) => {
            documents::index(request, index, Some(id), true).await
        }
        (&M::GET | &M::HEAD, [index, "_doc", id]) => documents::get(request, index, id).await,
        (&M::GET | &M::HEAD, [index, "_source", id]) => {
            documents::get_source(request, index, id).await
        }
        (&M::DELETE, [index, "_doc", id]) => documents::delete(request, index, id).await,
        (&M::POST, [index, "_update", id]) => documents::update(request, index, id).await,
        (&M::PUT, [index]) => indices::create(request, index).await,
        (&M::GET, [index]) if !index.starts_with('_') => indices::get(&request, index),
        (&M::HEAD, [index]) if !index.starts_with('_') => indices::exists(&request, index),
        (&M::DELETE, [index]) if !index.starts_with('_') => indices::delete(request, index).await,
        _ => Err(Error::NoHandler {
            uri: uri.to_string(),
            method: method.to_string(),
        }),
    }
}

/// Runs blocking shard work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Internal(format!("worker task failed: {err}")))?
}
