//! Snapshot routes: repositories (`/_snapshot/{repo}`), snapshots (`/_snapshot/{repo}/{name}`),
//! restore, verify and cleanup, shaped like Elasticsearch's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::cluster::commit_within;
use super::{Reply, Request, blocking, ok};
use crate::cluster::state::{RepositoryMeta, StateCommand};
use crate::error::{Error, Result, illegal};
use crate::indices::wildcard_match;
use crate::node::NodeState;
use crate::snapshot::{self, CreateRequest, RestoreRequest};

/// `fs` and `s3` are Elasticsearch's names for the filesystem and S3 repository types.
fn plugin_for_type(kind: &str) -> &str {
    match kind {
        "fs" => "fs-repository",
        "s3" => "s3-repository",
        other => other,
    }
}

/// A boolean body field (`true`, or `"true"` as some clients send), `default` when absent.
fn flag(body: &Value, key: &str, default: bool) -> Result<bool> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(Value::String(text)) if text == "true" || text == "false" => Ok(text == "true"),
        Some(other) => Err(illegal(format!("[{key}] must be a boolean, got {other}"))),
    }
}

async fn commit(request: &Request, command: StateCommand) -> Result<()> {
    super::cluster::commit(request, command, Error::RepositoryMissing).await
}

/// `PUT /_snapshot/{repo}`: verified (unless `verify=false`), then committed to the cluster state.
pub(super) async fn put_repository(request: Request, name: &str) -> Result<Reply> {
    let body = request.json()?;
    let Some(kind) = body.get("type").and_then(Value::as_str) else {
        return Err(illegal(format!("[{name}] repository type is missing")));
    };
    let mut settings: BTreeMap<String, Value> = match body.get("settings") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => map.clone().into_iter().collect(),
        Some(other) => {
            return Err(illegal(format!(
                "[{name}] settings must be an object, got {other}"
            )));
        }
    };
    let plugin = plugin_for_type(kind);
    if let Some(secret) = crate::secure_settings::SECRET_KEYS
        .iter()
        .find(|key| settings.contains_key(**key))
    {
        let namespace = plugin.trim_end_matches("-repository");
        return Err(illegal(format!(
            "[{name}] setting [{secret}] must not be in the repository's settings, which are part of the cluster state; put it in the node's secure settings file under [{namespace}.client.<client>] or in the environment variable {}",
            crate::secure_settings::env_name(namespace, "<client>", secret),
        )));
    }
    let readonly = match settings
        .remove("readonly")
        .or_else(|| body.get("readonly").cloned())
    {
        None => false,
        Some(Value::Bool(flag)) => flag,
        Some(Value::String(text)) if text == "true" || text == "false" => text == "true",
        Some(other) => {
            return Err(illegal(format!(
                "[{name}] readonly must be a boolean, got {other}"
            )));
        }
    };
    let meta = RepositoryMeta {
        plugin: plugin.to_string(),
        settings,
        readonly,
    };
    let verify = request.param("verify") != Some("false");
    let node = request.node.clone();
    let repository = name.to_string();
    let checked = meta.clone();
    blocking(move || {
        let mut session = snapshot::open(&node, &repository, &checked)?;
        if !checked.readonly {
            snapshot::claim_writer(&node, &mut session, &repository)?;
        }
        if !verify {
            return Ok(());
        }
        snapshot::verify(&mut session, &repository, checked.readonly)
    })
    .await?;
    commit(
        &request,
        StateCommand::PutRepository {
            name: name.to_string(),
            repository: meta,
        },
    )
    .await?;
    ok(json!({ "acknowledged": true }))
}

fn describe(meta: &RepositoryMeta) -> Value {
    let mut settings: serde_json::Map<String, Value> = meta.settings.clone().into_iter().collect();
    if meta.readonly {
        settings.insert("readonly".into(), json!("true"));
    }
    json!({ "type": meta.plugin, "settings": settings })
}

/// `GET /_snapshot` and `GET /_snapshot/{repo}` (comma lists and wildcards).
pub(super) fn get_repositories(request: &Request, pattern: Option<&str>) -> Result<Reply> {
    let state = request.node.cluster.consensus.state();
    let mut out = serde_json::Map::new();
    let patterns: Vec<&str> = pattern.unwrap_or("_all").split(',').collect();
    for wanted in &patterns {
        let all = *wanted == "_all" || *wanted == "*";
        let mut matched = false;
        for (name, meta) in &state.repositories {
            if all || wildcard_match(wanted, name) {
                out.insert(name.clone(), describe(meta));
                matched = true;
            }
        }
        if !matched && !all && !wanted.contains('*') {
            return Err(Error::RepositoryMissing((*wanted).to_string()));
        }
    }
    ok(Value::Object(out))
}

pub(super) async fn delete_repository(request: Request, name: &str) -> Result<Reply> {
    snapshot::registered(&request.node, name)?;
    commit(
        &request,
        StateCommand::DeleteRepository {
            name: name.to_string(),
        },
    )
    .await?;
    ok(json!({ "acknowledged": true }))
}

/// `POST /_snapshot/{repo}/_verify`.
pub(super) async fn verify_repository(request: Request, name: &str) -> Result<Reply> {
    let node = request.node.clone();
    let repository = name.to_string();
    blocking(move || {
        let meta = snapshot::registered(&node, &repository)?;
        let mut session = snapshot::open(&node, &repository, &meta)?;
        snapshot::verify(&mut session, &repository, meta.readonly)?;
        let local = node.cluster.membership.local();
        ok(json!({ "nodes": { local.node_id: { "name": local.name } } }))
    })
    .await
}

/// `POST /_snapshot/{repo}/_cleanup`: removes blobs no snapshot references.
pub(super) async fn cleanup_repository(request: Request, name: &str) -> Result<Reply> {
    let node = request.node.clone();
    let repository = name.to_string();
    blocking(move || {
        let meta = snapshot::writable(&node, &repository, "clean up")?;
        let lease = snapshot::lease::acquire(&node, &repository, "cleanup".into())?;
        let mut session = snapshot::open(&node, &repository, &meta)?;
        let (blobs, bytes) = snapshot::collect_garbage(&mut session, &repository, &lease)?;
        ok(json!({ "results": { "deleted_bytes": bytes, "deleted_blobs": blobs } }))
    })
    .await
}

/// `PUT /_snapshot/{repo}/{snapshot}`; runs in the background unless `wait_for_completion`.
pub(super) async fn create_snapshot(
    request: Request,
    repository: &str,
    name: &str,
) -> Result<Reply> {
    let body = request.json()?;
    let indices = snapshot::index_expression(body.get("indices")).map_err(illegal)?;
    let create = CreateRequest {
        repository: repository.to_string(),
        snapshot: name.to_string(),
        indices,
        partial: flag(&body, "partial", false)?,
        metadata: body.get("metadata").cloned().unwrap_or(Value::Null),
        include_global_state: flag(&body, "include_global_state", true)?,
    };
    let node = request.node.clone();
    let repo = repository.to_string();
    if request.flag("wait_for_completion") {
        let work = move || snapshot::create(&node, &create).map(|manifest| manifest.to_json(&repo));
        let info = blocking(work).await?;
        return ok(json!({ "snapshot": info }));
    }
    // Accepted once everything refusable is checked and the repository claimed
    // (`claim_for`); the snapshot then runs on that worker.
    let (claimed, outcome) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let guard = match snapshot::claim_for(&node, &create) {
            Ok(guard) => guard,
            Err(err) => {
                let _ = claimed.send(Err(err));
                return;
            }
        };
        let _ = claimed.send(Ok(()));
        if let Err(err) = snapshot::create_claimed(&node, &create, guard) {
            tracing::error!(repository = repo, error = %err, "background snapshot failed");
        }
    });
    outcome
        .await
        .map_err(|_| crate::error::Error::Internal("snapshot worker ended early".into()))??;
    ok(json!({ "accepted": true }))
}

/// `GET /_snapshot/{repo}/{snapshot|_all|pattern,...}`.
pub(super) async fn get_snapshots(
    request: Request,
    repository: &str,
    pattern: &str,
) -> Result<Reply> {
    let listed = describe_snapshots(request, repository, pattern, |manifest, repo| {
        manifest.to_json(repo)
    })
    .await?;
    ok(json!({ "snapshots": listed, "total": listed.len(), "remaining": 0 }))
}

/// `GET /_snapshot/{repo}/{snapshot}/_status` (or `/_snapshot/{repo}/_status`: the running
/// ones): per-shard stages, files and bytes.
pub(super) async fn snapshot_status(
    request: Request,
    repository: &str,
    pattern: Option<&str>,
) -> Result<Reply> {
    let listed = match pattern {
        Some(pattern) => {
            describe_snapshots(request, repository, pattern, |manifest, repo| {
                manifest.status_json(repo)
            })
            .await?
        }
        None => {
            snapshot::registered(&request.node, repository)?;
            request
                .node
                .snapshot_activity
                .running(repository)
                .iter()
                .map(|(name, progress)| progress.to_json(repository, name))
                .collect()
        }
    };
    ok(json!({ "snapshots": listed }))
}

/// The snapshots of `repository` matching `pattern`, finished ones rendered by `render`,
/// running ones by their progress; a concrete name that matches nothing is a 404.
async fn describe_snapshots(
    request: Request,
    repository: &str,
    pattern: &str,
    render: fn(&snapshot::format::SnapshotManifest, &str) -> Value,
) -> Result<Vec<Value>> {
    let node = request.node.clone();
    let repo = repository.to_string();
    let pattern = pattern.to_string();
    blocking(move || {
        let meta = snapshot::registered(&node, &repo)?;
        let mut session = snapshot::open(&node, &repo, &meta)?;
        let mut entries: BTreeMap<String, Value> = snapshot::manifests(&mut session, &repo)?
            .iter()
            .map(|(name, manifest)| (name.clone(), render(manifest, &repo)))
            .collect();
        for (name, described) in node.snapshot_activity.failed(&repo) {
            entries.entry(name).or_insert(described);
        }
        for (name, progress) in node.snapshot_activity.running(&repo) {
            let described = progress.to_json(&repo, &name);
            entries.insert(name, described);
        }
        let mut listed = Vec::new();
        for wanted in pattern.split(',') {
            let all = wanted == "_all" || wanted == "*";
            let before = listed.len();
            for (name, entry) in &entries {
                if all || wildcard_match(wanted, name) {
                    listed.push(entry.clone());
                }
            }
            if listed.len() == before && !all && !wanted.contains('*') {
                return Err(Error::SnapshotMissing {
                    repository: repo.clone(),
                    snapshot: wanted.to_string(),
                });
            }
        }
        Ok(listed)
    })
    .await
}

pub(super) async fn delete_snapshot(
    request: Request,
    repository: &str,
    name: &str,
) -> Result<Reply> {
    let node = request.node.clone();
    let (repo, snap) = (repository.to_string(), name.to_string());
    blocking(move || {
        snapshot::delete(&node, &repo, &[snap])?;
        ok(json!({ "acknowledged": true }))
    })
    .await
}

/// `POST /_snapshot/{repo}/{snapshot}/_restore`.
pub(super) async fn restore(request: Request, repository: &str, name: &str) -> Result<Reply> {
    let body = request.json()?;
    let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
    let indices = snapshot::index_expression(body.get("indices")).map_err(illegal)?;
    let restore = RestoreRequest {
        repository: repository.to_string(),
        snapshot: name.to_string(),
        indices,
        rename_pattern: text("rename_pattern"),
        rename_replacement: text("rename_replacement"),
        partial: flag(&body, "partial", false)?,
        index_settings: match body.get("index_settings") {
            None | Some(Value::Null) => Value::Null,
            Some(settings @ Value::Object(_)) => settings.clone(),
            Some(other) => {
                return Err(illegal(format!(
                    "[index_settings] must be an object, got {other}"
                )));
            }
        },
        ignore_index_settings: match body.get("ignore_index_settings") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(list)) => list
                .split(',')
                .map(str::trim)
                .filter(|key| !key.is_empty())
                .map(str::to_string)
                .collect(),
            Some(Value::Array(keys)) => keys
                .iter()
                .map(|key| {
                    key.as_str().map(str::to_string).ok_or_else(|| {
                        illegal(format!(
                            "[ignore_index_settings] must list names, got {key}"
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            Some(other) => {
                return Err(illegal(format!(
                    "[ignore_index_settings] must be a list of setting names, got {other}"
                )));
            }
        },
        include_global_state: flag(&body, "include_global_state", false)?,
    };
    let timeout = request.master_timeout()?;
    let node = request.node.clone();
    // Everything a restore can refuse is refused before it is accepted.
    let (restore, plan) = blocking(move || {
        let plan = snapshot::plan_restore(&node, &restore)?;
        Ok((restore, plan))
    })
    .await?;
    let node = request.node.clone();
    if request.flag("wait_for_completion") {
        let summary = run_restore(node, restore, plan, timeout).await?;
        return ok(json!({ "snapshot": summary }));
    }
    // Elasticsearch's default: the shards' progress shows in `_cat/recovery`, a shard that
    // fails there with its reason, the restored index once its primaries are started.
    tokio::spawn(async move {
        let (repository, snapshot) = (restore.repository.clone(), restore.snapshot.clone());
        if let Err(err) = run_restore(node, restore, plan, timeout).await {
            tracing::error!(repository, snapshot, error = %err, "background restore failed");
        }
    });
    ok(json!({ "accepted": true }))
}

/// Lays a planned restore out, commits its indices (and global state if asked) and waits for
/// their primaries; describes the restore as Elasticsearch does.
async fn run_restore(
    node: Arc<NodeState>,
    restore: RestoreRequest,
    plan: snapshot::RestorePlan,
    timeout: Duration,
) -> Result<Value> {
    let snap = restore.snapshot.clone();
    let laying_out = node.clone();
    let laid_out = blocking(move || snapshot::restore(&laying_out, &restore, plan)).await?;
    if let Some(global) = laid_out.global_state {
        let command = StateCommand::PutSettings {
            persistent: global.persistent_settings,
            transient: BTreeMap::new(),
        };
        commit_within(&node, command, timeout, Error::RepositoryMissing).await?;
        for (id, policy) in global.slm_policies {
            let command = StateCommand::PutSlmPolicy { id, policy };
            commit_within(&node, command, timeout, Error::RepositoryMissing).await?;
        }
    }
    let mut restored = Vec::with_capacity(laid_out.indices.len());
    let (mut total, mut from_data) = (0, 0);
    for index in laid_out.indices {
        total += index.routing.shards.len();
        from_data += index
            .routing
            .shards
            .iter()
            .filter(|shard| !shard.in_sync.is_empty())
            .count();
        let command = StateCommand::CreateIndex {
            name: index.name.clone(),
            meta: index.meta.clone(),
            routing: index.routing,
        };
        if let Err(err) = commit_within(&node, command, timeout, Error::IllegalArgument).await {
            let _ = std::fs::remove_dir_all(node.indices.index_dir(&index.meta.uuid));
            return Err(err);
        }
        let version = node.cluster.consensus.state().version;
        node.indices.ensure(&index.name, &index.meta, version)?;
        crate::replication::admin::wait_for_primaries(&node, &index.name).await;
        restored.push(index.name);
    }
    Ok(json!({
        "snapshot": snap,
        "indices": restored,
        // Shards a partial snapshot lacks come back empty: counted as failed, as
        // Elasticsearch does.
        "shards": { "total": total, "failed": total - from_data, "successful": from_data },
    }))
}

/// Rows for `GET /_cat/snapshots/{repo}`.
pub(super) fn cat_rows(
    node: &crate::node::NodeState,
    repository: &str,
) -> Result<Vec<Vec<String>>> {
    let meta = snapshot::registered(node, repository)?;
    let mut session = snapshot::open(node, repository, &meta)?;
    let manifests = snapshot::manifests(&mut session, repository)?;
    Ok(manifests
        .values()
        .map(|manifest| {
            let (total, failed) = manifest.shard_counts();
            vec![
                manifest.snapshot.clone(),
                serde_json::to_value(manifest.state)
                    .ok()
                    .and_then(|state| state.as_str().map(str::to_string))
                    .unwrap_or_default(),
                (manifest.start_time_in_millis / 1000).to_string(),
                (manifest.end_time_in_millis / 1000).to_string(),
                format!(
                    "{}ms",
                    manifest.end_time_in_millis - manifest.start_time_in_millis
                ),
                manifest.indices.len().to_string(),
                (total - failed).to_string(),
                failed.to_string(),
                total.to_string(),
            ]
        })
        .collect())
}
