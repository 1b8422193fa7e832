//! Snapshots and restores through repository plugins.
//!
//! A snapshot flushes each shard and hard-links the files of that commit into a staging
//! directory (the point in time; writes go on), uploads the files the repository does not hold
//! yet under their SHA-256, and writes the manifest last. Restore downloads a shard's files,
//! checks every one against its SHA-256, lays the index out under a new uuid and only then
//! registers it. Deleting a snapshot removes its manifest, then every blob no remaining
//! snapshot references.
//!
//! The node receiving the request coordinates (what to snapshot, the manifest); each shard is
//! staged and uploaded by the node holding its started primary, asked over the data plane
//! when that is another node ([`snapshot_shard_here`]).

pub mod file_hashes;
pub mod format;
pub mod lease;
pub mod lifecycle;
pub mod slm;
mod workers;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cluster::state::RepositoryMeta;
use crate::error::{Error, Result};
use crate::ids::new_uuid;
use crate::indices::wildcard_match;
use crate::node::NodeState;
use crate::plugins::grants::{Grants, grant_repository_dir};
use crate::plugins::repository::{CHUNK_BYTES, RepositoryError, RepositorySession};
use crate::plugins::{PluginKind, hex};
use crate::replication::progress::{RecoveryKind, RecoveryPlan, RecoveryProgress};
use format::{
    BLOB_PREFIX, FORMAT_VERSION, FileRef, IndexSnapshot, MANIFEST_PREFIX, ShardSnapshot,
    SnapshotManifest, SnapshotState, TransferStats, blob_name, manifest_name,
};

/// What this node is doing to repositories: which it writes to (one snapshot, deletion or
/// cleanup at a time each, see [`lease`]) and the progress of running snapshots.
#[derive(Default)]
pub struct SnapshotActivity {
    writers: lease::LocalWriters,
    running: Mutex<BTreeMap<(String, String), Progress>>,
    /// Snapshots that failed before their manifest reached the repository (it was
    /// unreachable, say), as `GET /_snapshot` shows them, so the failure and its reason stay
    /// visible; the newest [`MAX_FAILED_KEPT`] are kept, in memory only.
    failed: Mutex<BTreeMap<(String, String), (i64, Value)>>,
    /// Index names restores running from this node will create.
    restoring: std::sync::Arc<Mutex<BTreeSet<String>>>,
    /// Hashes of the shard files snapshots read here, so the next snapshot skips them.
    file_hashes: file_hashes::FileHashes,
}

/// Failed snapshots without a manifest remembered per node.
const MAX_FAILED_KEPT: usize = 100;

/// A running snapshot's progress.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub start_time_in_millis: i64,
    pub indices: Vec<String>,
    pub shards_total: usize,
    pub shards_done: usize,
    pub shards_failed: usize,
    pub stats: TransferStats,
}

impl SnapshotActivity {
    /// Reserves `names` for one restore; refused with the first name another restore holds.
    fn reserve_restore(
        &self,
        names: Vec<String>,
    ) -> std::result::Result<RestoreReservation, String> {
        let mut restoring = self.restoring.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(busy) = names.iter().find(|name| restoring.contains(*name)) {
            return Err(busy.clone());
        }
        restoring.extend(names.iter().cloned());
        Ok(RestoreReservation {
            restoring: self.restoring.clone(),
            names,
        })
    }

    /// The snapshots running in `repository`, by name.
    pub fn running(&self, repository: &str) -> Vec<(String, Progress)> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .iter()
            .filter(|((repo, _), _)| repo == repository)
            .map(|((_, name), progress)| (name.clone(), progress.clone()))
            .collect()
    }

    fn update(&self, repository: &str, snapshot: &str, change: impl FnOnce(&mut Progress)) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        change(
            running
                .entry((repository.to_string(), snapshot.to_string()))
                .or_default(),
        );
    }

    /// Ends a running snapshot; one that failed without a manifest is remembered as FAILED.
    fn finish(&self, repository: &str, snapshot: &str, failure: Option<&Error>) {
        let key = (repository.to_string(), snapshot.to_string());
        let progress = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.remove(&key)
        };
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.remove(&key);
        let (Some(err), Some(progress)) = (failure, progress) else {
            return;
        };
        let mut described = progress.to_json(repository, snapshot);
        let end = chrono::Utc::now().timestamp_millis();
        described["state"] = serde_json::json!(SnapshotState::Failed);
        described["reason"] = Value::String(err.to_string());
        described["end_time_in_millis"] = end.into();
        failed.insert(key, (end, described));
        if failed.len() > MAX_FAILED_KEPT
            && let Some(oldest) = failed
                .iter()
                .min_by_key(|(_, (end, _))| *end)
                .map(|(key, _)| key.clone())
        {
            failed.remove(&oldest);
        }
    }

    /// Snapshots of `repository` that failed without leaving a manifest, by name.
    pub fn failed(&self, repository: &str) -> Vec<(String, Value)> {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .iter()
            .filter(|((repo, _), _)| repo == repository)
            .map(|((_, name), (_, described))| (name.clone(), described.clone()))
            .collect()
    }
}

impl Progress {
    /// The running snapshot as `GET /_snapshot` and `_status` show it.
    pub fn to_json(&self, repository: &str, snapshot: &str) -> Value {
        let now = chrono::Utc::now().timestamp_millis();
        serde_json::json!({
            "snapshot": snapshot,
            "repository": repository,
            "indices": self.indices,
            "state": SnapshotState::InProgress,
            "start_time_in_millis": self.start_time_in_millis,
            "duration_in_millis": now - self.start_time_in_millis,
            "shards": {
                "total": self.shards_total,
                "done": self.shards_done,
                "failed": self.shards_failed,
            },
            "stats": {
                "incremental": { "file_count": self.stats.uploaded_files, "size_in_bytes": self.stats.uploaded_bytes },
                "processed": { "file_count": self.stats.total_files, "size_in_bytes": self.stats.total_bytes },
            },
        })
    }
}

fn repo_error(repository: &str) -> impl Fn(RepositoryError) -> Error + '_ {
    move |err| Error::Repository {
        repository: repository.to_string(),
        reason: err.to_string(),
    }
}

/// Opens a session on a registered repository, with its directory granted.
pub fn open(node: &NodeState, name: &str, meta: &RepositoryMeta) -> Result<RepositorySession> {
    let plugin = node
        .plugins
        .get(&meta.plugin)
        .ok_or_else(|| Error::Repository {
            repository: name.to_string(),
            reason: format!(
                "repository type [{}] is not an installed plugin",
                meta.plugin
            ),
        })?;
    if plugin.kind != PluginKind::Repository {
        return Err(Error::Repository {
            repository: name.to_string(),
            reason: format!(
                "plugin [{}] is a {:?} plugin, not a repository",
                meta.plugin, plugin.kind
            ),
        });
    }
    let mut grants = Grants::none();
    match meta.settings.get("location") {
        Some(Value::String(location)) => {
            let dir = grant_repository_dir(location, &node.config.path_repo, meta.readonly)
                .map_err(|err| Error::Repository {
                    repository: name.to_string(),
                    reason: err.to_string(),
                })?;
            grants.directory = Some(dir);
        }
        Some(other) => {
            return Err(Error::IllegalArgument(format!(
                "[{name}] location must be a string, got {other}"
            )));
        }
        None => {}
    }
    // A network repository reaches exactly the host of its endpoint, and its bucket's virtual
    // host there (`bucket.endpoint`, as AWS S3 addresses newer buckets).
    if let Some(endpoint) = meta.settings.get("endpoint") {
        let authority = endpoint
            .as_str()
            .map(|url| url.split_once("://").map_or(url, |(_, rest)| rest))
            .map(|rest| rest.split('/').next().unwrap_or_default())
            .filter(|authority| !authority.is_empty())
            .ok_or_else(|| {
                Error::IllegalArgument(format!("[{name}] endpoint must be a URL, got {endpoint}"))
            })?;
        grants.http_hosts.push(authority.to_string());
        if let Some(bucket) = meta
            .settings
            .get("bucket")
            .and_then(Value::as_str)
            .filter(|b| {
                b.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            })
        {
            grants.http_hosts.push(format!("{bucket}.{authority}"));
        }
    }
    let settings = plugin_settings(node, name, meta, &plugin.config())?;
    Ok(RepositorySession::new(plugin, grants).with_settings(settings))
}

/// What the repository's plugin instance reads as its config: the plugin's own config, the
/// repository's settings over it, and the node's secure settings of the repository's client
/// (`<namespace>.client.<client>.*`, the namespace being the plugin's name without
/// `-repository`) over both.
fn plugin_settings(
    node: &NodeState,
    name: &str,
    meta: &RepositoryMeta,
    plugin_config: &str,
) -> Result<String> {
    let mut merged = match serde_json::from_str::<Value>(plugin_config) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    merged.extend(meta.settings.clone());
    let client = match meta.settings.get("client") {
        None => "default",
        Some(Value::String(client)) => client.as_str(),
        Some(other) => {
            return Err(Error::IllegalArgument(format!(
                "[{name}] client must be a string, got {other}"
            )));
        }
    };
    let namespace = meta
        .plugin
        .strip_suffix("-repository")
        .unwrap_or(&meta.plugin);
    let secrets = crate::secure_settings::client_settings(&node.config, namespace, client)
        .map_err(|err| Error::Repository {
            repository: name.to_string(),
            reason: err.to_string(),
        })?;
    merged.extend(
        secrets
            .into_iter()
            .map(|(key, value)| (key, Value::String(value))),
    );
    Ok(Value::Object(merged).to_string())
}

/// Looks a repository up and refuses a readonly one: `action` says what was refused.
pub fn writable(node: &NodeState, name: &str, action: &str) -> Result<RepositoryMeta> {
    let meta = registered(node, name)?;
    if meta.readonly {
        return Err(Error::Repository {
            repository: name.to_string(),
            reason: format!("cannot {action} a readonly repository"),
        });
    }
    Ok(meta)
}

/// Looks a repository up in the cluster state.
pub fn registered(node: &NodeState, name: &str) -> Result<RepositoryMeta> {
    node.cluster
        .consensus
        .state()
        .repositories
        .get(name)
        .cloned()
        .ok_or_else(|| Error::RepositoryMissing(name.to_string()))
}

/// The blob naming the one cluster that writes a repository.
pub const WRITER_BLOB: &str = "cluster-writer.json";

/// Claims the repository for this cluster, or refuses when another cluster writes it: two
/// writers would each delete blobs the other's snapshots need.
pub fn claim_writer(
    node: &NodeState,
    session: &mut RepositorySession,
    repository: &str,
) -> Result<()> {
    let state = node.cluster.consensus.state();
    let Some(uuid) = state.cluster_uuid.clone() else {
        return Err(Error::MasterNotDiscovered(
            "the cluster is not bootstrapped yet, so it cannot claim a repository".into(),
        ));
    };
    if session
        .exists(WRITER_BLOB)
        .map_err(repo_error(repository))?
    {
        let bytes = session
            .get(WRITER_BLOB, 0, None)
            .map_err(repo_error(repository))?;
        let writer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if writer["cluster_uuid"] == Value::String(uuid.clone()) {
            return Ok(());
        }
        return Err(Error::Repository {
            repository: repository.to_string(),
            reason: format!(
                "the repository is written by another cluster ([{}], uuid [{}]); register it with readonly: true to read it",
                writer["cluster_name"].as_str().unwrap_or("unknown"),
                writer["cluster_uuid"].as_str().unwrap_or("unknown"),
            ),
        });
    }
    let claim =
        serde_json::json!({ "cluster_uuid": uuid, "cluster_name": node.config.cluster_name });
    session
        .put(WRITER_BLOB, claim.to_string().as_bytes())
        .map_err(repo_error(repository))
}

/// Checks a repository works: a writable one writes, reads and deletes a test blob; a
/// readonly one lists its snapshots.
pub fn verify(session: &mut RepositorySession, repository: &str, readonly: bool) -> Result<()> {
    let outcome = if readonly {
        session.list(MANIFEST_PREFIX).map(|_| ())
    } else {
        session.verify()
    };
    outcome.map_err(|err| Error::Repository {
        repository: repository.to_string(),
        reason: format!("verification failed: {err}"),
    })
}

/// Every snapshot manifest in the repository, by name.
pub fn manifests(
    session: &mut RepositorySession,
    repository: &str,
) -> Result<BTreeMap<String, SnapshotManifest>> {
    let mut manifests = BTreeMap::new();
    for blob in session
        .list(MANIFEST_PREFIX)
        .map_err(repo_error(repository))?
    {
        let bytes = session
            .get(&blob.name, 0, None)
            .map_err(repo_error(repository))?;
        let manifest: SnapshotManifest =
            serde_json::from_slice(&bytes).map_err(|err| Error::Repository {
                repository: repository.to_string(),
                reason: format!("snapshot manifest [{}] is unreadable: {err}", blob.name),
            })?;
        manifests.insert(manifest.snapshot.clone(), manifest);
    }
    Ok(manifests)
}

/// `indices` as snapshot, restore and policy bodies give it: a comma string or a list;
/// absent means every index.
pub fn index_expression(value: Option<&Value>) -> std::result::Result<String, String> {
    match value {
        None | Some(Value::Null) => Ok("_all".to_string()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(list)) => Ok(list
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(",")),
        Some(other) => Err(format!("indices must be a string or a list, got {other}")),
    }
}

/// What `PUT /_snapshot/{repo}/{snapshot}` asks for.
pub struct CreateRequest {
    pub repository: String,
    pub snapshot: String,
    pub indices: String,
    pub partial: bool,
    pub metadata: Value,
    /// Keep the cluster's persistent settings and lifecycle policies too (default true).
    pub include_global_state: bool,
}

/// Takes a snapshot (blocking). Shard failures end it `PARTIAL` when `partial` is set, else
/// `FAILED`; either way the manifest records the reasons and the indices are untouched.
pub fn create(node: &NodeState, request: &CreateRequest) -> Result<SnapshotManifest> {
    let guard = claim_for(node, request)?;
    create_claimed(node, request, guard)
}

/// Checks what a snapshot can check before it starts and claims its repository (blocking).
pub fn claim_for<'a>(
    node: &'a NodeState,
    request: &CreateRequest,
) -> Result<lease::RepositoryGuard<'a>> {
    let repository = request.repository.as_str();
    writable(node, repository, "create a snapshot in")?;
    validate_snapshot_name(repository, &request.snapshot)?;
    node.indices.resolve(&request.indices, false)?;
    lease::acquire(node, repository, format!("snapshot [{}]", request.snapshot))
}

/// Takes a snapshot whose repository [`claim_for`] claimed (blocking); the claim ends with it.
pub fn create_claimed(
    node: &NodeState,
    request: &CreateRequest,
    claim: lease::RepositoryGuard<'_>,
) -> Result<SnapshotManifest> {
    let repository = request.repository.as_str();
    let meta = writable(node, repository, "create a snapshot in")?;
    let indices = node.indices.resolve(&request.indices, false)?;
    // Visible as running from here on, even while the repository is slow to answer.
    let start = chrono::Utc::now().timestamp_millis();
    let activity = &node.snapshot_activity;
    activity.update(repository, &request.snapshot, |progress| {
        progress.start_time_in_millis = start;
        progress.indices = indices
            .iter()
            .map(|index| index.name().to_string())
            .collect();
        progress.shards_total = indices
            .iter()
            .map(|index| index.number_of_shards() as usize)
            .sum();
    });
    let outcome = open(node, repository, &meta).and_then(|mut session| {
        claim_writer(node, &mut session, repository)?;
        if session
            .exists(&manifest_name(&request.snapshot))
            .map_err(repo_error(repository))?
        {
            return Err(Error::InvalidSnapshotName {
                repository: repository.to_string(),
                snapshot: request.snapshot.clone(),
                reason: "a snapshot with the same name already exists".into(),
            });
        }
        take_snapshot(node, request, &meta, &mut session, &indices, start, &claim)
    });
    let failure = outcome
        .as_ref()
        .err()
        .filter(|err| !matches!(err, Error::InvalidSnapshotName { .. }));
    activity.finish(repository, &request.snapshot, failure);
    outcome
}

/// The body of [`create`], once the repository is claimed and progress is registered.
fn take_snapshot(
    node: &NodeState,
    request: &CreateRequest,
    meta: &RepositoryMeta,
    session: &mut RepositorySession,
    indices: &[std::sync::Arc<crate::index::IndexService>],
    start: i64,
    claim: &lease::RepositoryGuard<'_>,
) -> Result<SnapshotManifest> {
    let repository = request.repository.as_str();
    let known = Mutex::new(known_blobs(session, repository)?);
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|err| Error::Internal(format!("no runtime to reach other nodes: {err}")))?;
    let jobs: Vec<(usize, u32)> = indices
        .iter()
        .enumerate()
        .flat_map(|(position, index)| (0..index.number_of_shards()).map(move |n| (position, n)))
        .collect();
    let stats = Mutex::new(TransferStats::default());
    let runs = workers::on_threads(
        &jobs,
        workers::shard_workers(),
        || (),
        |(), &(position, number)| {
            let outcome = snapshot_shard(
                node,
                &runtime,
                repository,
                meta,
                &indices[position],
                number,
                &known,
            );
            let total = {
                let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
                if let Ok(upload) = &outcome {
                    stats.absorb(upload.stats);
                }
                *stats
            };
            node.snapshot_activity
                .update(repository, &request.snapshot, |progress| {
                    progress.shards_done += 1;
                    progress.shards_failed += usize::from(outcome.is_err());
                    progress.stats = total;
                });
            outcome
        },
    );
    let mut outcomes: BTreeMap<(usize, u32), Result<ShardUpload>> =
        jobs.iter().copied().zip(runs).collect();
    let stats = stats.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut failures = Vec::new();
    let mut snapshots = BTreeMap::new();
    for (position, index) in indices.iter().enumerate() {
        let mut shards = Vec::with_capacity(index.number_of_shards() as usize);
        for number in 0..index.number_of_shards() {
            match outcomes.remove(&(position, number)) {
                Some(Ok(upload)) => shards.push(Some(upload.snapshot)),
                Some(Err(err)) => {
                    tracing::warn!(index = index.name(), shard = number, error = %err, "shard snapshot failed");
                    failures.push(format!("[{}][{number}] {err}", index.name()));
                    shards.push(None);
                }
                None => shards.push(None),
            }
        }
        snapshots.insert(
            index.name().to_string(),
            IndexSnapshot {
                meta: index.meta.persisted_json()?,
                shards,
            },
        );
    }
    let state = match (failures.is_empty(), request.partial) {
        (true, _) => SnapshotState::Success,
        (false, true) => SnapshotState::Partial,
        (false, false) => SnapshotState::Failed,
    };
    let manifest = SnapshotManifest {
        format: FORMAT_VERSION,
        snapshot: request.snapshot.clone(),
        uuid: new_uuid(),
        state,
        indices: snapshots,
        failures,
        metadata: request.metadata.clone(),
        start_time_in_millis: start,
        end_time_in_millis: chrono::Utc::now().timestamp_millis(),
        stats,
        global_state: request.include_global_state.then(|| {
            let state = node.cluster.consensus.state();
            format::GlobalState {
                persistent_settings: state.persistent_settings.clone(),
                slm_policies: state.slm_policies.clone(),
            }
        }),
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|err| Error::Internal(err.to_string()))?;
    // The blobs it names may have been deleted by a later holder if this node lost its lease.
    claim.confirm()?;
    session
        .put(&manifest_name(&request.snapshot), &bytes)
        .map_err(repo_error(repository))?;
    tracing::info!(repository, snapshot = %request.snapshot, state = ?manifest.state, uploaded_bytes = stats.uploaded_bytes, total_bytes = stats.total_bytes, "snapshot finished");
    Ok(manifest)
}

/// Blobs the repository holds, shared by the workers of one snapshot.
type KnownBlobs = Mutex<HashSet<String>>;

/// How long a coordinator waits for another node to snapshot one shard.
const REMOTE_SHARD_SNAPSHOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// What snapshotting one shard produced: its files and what uploading them took.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ShardUpload {
    pub snapshot: ShardSnapshot,
    pub stats: TransferStats,
}

/// The blobs the repository holds already (content-addressed, so never uploaded twice).
fn known_blobs(session: &mut RepositorySession, repository: &str) -> Result<HashSet<String>> {
    Ok(session
        .list(BLOB_PREFIX)
        .map_err(repo_error(repository))?
        .into_iter()
        .map(|blob| blob.name)
        .collect())
}

/// Snapshots one shard on the node holding its started primary: here, or on that node
/// through the data plane (each node uploads its own primaries, with its own credentials).
fn snapshot_shard(
    node: &NodeState,
    runtime: &tokio::runtime::Handle,
    repository: &str,
    meta: &RepositoryMeta,
    index: &crate::index::IndexService,
    number: u32,
    known: &KnownBlobs,
) -> Result<ShardUpload> {
    use crate::replication::wire::{DataRequest, DataResponse};
    let primary_node = {
        let state = node.cluster.consensus.state();
        crate::replication::started_primary(&state, index.name(), number)?
            .node_id
            .clone()
    };
    if primary_node == node.identity.node_id {
        return upload_local_primary(node, repository, meta, index, number, known);
    }
    let request = DataRequest::SnapshotShard {
        repository: repository.to_string(),
        index: index.name().to_string(),
        shard: number,
    };
    let answer = runtime.block_on(crate::replication::ask_within(
        node,
        &primary_node,
        request,
        REMOTE_SHARD_SNAPSHOT_TIMEOUT,
    ))?;
    let DataResponse::ShardSnapshotted(text) = answer else {
        return Err(Error::Internal(
            "unexpected answer to a shard snapshot request".into(),
        ));
    };
    let upload: ShardUpload = serde_json::from_str(&text)
        .map_err(|err| Error::Internal(format!("shard snapshot answer: {err}")))?;
    known.lock().unwrap_or_else(|p| p.into_inner()).extend(
        upload
            .snapshot
            .files
            .iter()
            .map(|file| blob_name(&file.sha256)),
    );
    Ok(upload)
}

/// Snapshots this node's primary of `[index][shard]` into `repository`, for a coordinator
/// on another node.
pub fn snapshot_shard_here(
    node: &NodeState,
    repository: &str,
    index: &str,
    shard: u32,
) -> Result<ShardUpload> {
    let meta = writable(node, repository, "create a snapshot in")?;
    let known = Mutex::new(known_blobs(
        &mut open(node, repository, &meta)?,
        repository,
    )?);
    let service = node.indices.get(index)?;
    upload_local_primary(node, repository, &meta, &service, shard, &known)
}

/// Stages the commit of this node's primary of a shard (the point in time; writes go on) and
/// uploads the files the repository lacks.
fn upload_local_primary(
    node: &NodeState,
    repository: &str,
    meta: &RepositoryMeta,
    index: &crate::index::IndexService,
    number: u32,
    known: &KnownBlobs,
) -> Result<ShardUpload> {
    let shard = index
        .shard(number)
        .filter(|shard| shard.is_primary() && node.copies.active(index.name(), number).is_some())
        .ok_or_else(|| {
            Error::ShardNotAvailable(format!(
                "the primary of [{}][{number}] is not on this node",
                index.name()
            ))
        })?;
    let staging = node
        .config
        .data_dir
        .join("_snapshots")
        .join(new_uuid())
        .join(&index.meta.uuid)
        .join(number.to_string());
    let mut stats = TransferStats::default();
    let outcome = shard.stage_commit(&staging).and_then(|staged| {
        upload_shard(node, repository, meta, &staging, staged, known, &mut stats)
    });
    if let Some(root) = staging.parent().and_then(Path::parent)
        && let Err(err) = std::fs::remove_dir_all(root)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %root.display(), error = %err, "could not remove snapshot staging files");
    }
    outcome.map(|snapshot| ShardUpload { snapshot, stats })
}

/// Hashes a shard's staged files and uploads those the repository lacks.
fn upload_shard(
    node: &NodeState,
    repository: &str,
    meta: &RepositoryMeta,
    staging: &Path,
    staged: crate::shard::StagedCommit,
    known: &KnownBlobs,
    stats: &mut TransferStats,
) -> Result<ShardSnapshot> {
    let hashes = &node.snapshot_activity.file_hashes;
    let outcomes = workers::on_threads(
        &staged.files,
        workers::FILE_WORKERS_PER_SHARD,
        || workers::LazySession::new(node, repository, meta),
        |session, name| upload_file(session, repository, staging, name, hashes, known),
    );
    let mut files = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        let (file, uploaded) = outcome?;
        stats.total_files += 1;
        stats.total_bytes += file.size;
        if uploaded {
            stats.uploaded_files += 1;
            stats.uploaded_bytes += file.size;
        }
        files.push(file);
    }
    Ok(ShardSnapshot {
        commit_meta: staged.meta_json,
        files,
    })
}

/// Hashes one staged file and uploads it unless the repository holds it; says whether it
/// was uploaded.
fn upload_file(
    session: &mut workers::LazySession<'_>,
    repository: &str,
    staging: &Path,
    name: &str,
    hashes: &file_hashes::FileHashes,
    known: &KnownBlobs,
) -> Result<(FileRef, bool)> {
    let path = staging.join(name);
    let (sha256, size) = hashes.sha256(&path)?;
    let blob = blob_name(&sha256);
    let missing = !known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&blob);
    // Two workers may upload one blob at once (the same file in two shards): harmless, as a
    // blob's name is its content.
    if missing {
        let file = std::fs::File::open(&path)?;
        session
            .get()?
            .put_streamed(&blob, size, &sha256, std::io::BufReader::new(file))
            .map_err(repo_error(repository))?;
        known.lock().unwrap_or_else(|p| p.into_inner()).insert(blob);
    }
    let file = FileRef {
        name: name.to_string(),
        sha256,
        size,
    };
    Ok((file, missing))
}

fn validate_snapshot_name(repository: &str, snapshot: &str) -> Result<()> {
    let invalid = snapshot.is_empty()
        || snapshot.starts_with('_')
        || snapshot != snapshot.to_lowercase()
        || snapshot.chars().any(|c| {
            matches!(
                c,
                '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#'
            )
        });
    if invalid {
        return Err(Error::InvalidSnapshotName {
            repository: repository.to_string(),
            snapshot: snapshot.to_string(),
            reason: "must be lowercase, must not start with '_' and must not contain \\ / * ? \" < > | , # or spaces".into(),
        });
    }
    Ok(())
}

/// Deletes snapshots, then (once) the blobs no remaining snapshot needs (blocking). Every
/// name must exist; nothing is deleted otherwise.
pub fn delete(node: &NodeState, repository: &str, snapshots: &[String]) -> Result<()> {
    let meta = writable(node, repository, "delete snapshots from")?;
    let guard = lease::acquire(
        node,
        repository,
        format!("deletion of [{}]", snapshots.join(",")),
    )?;
    let mut session = open(node, repository, &meta)?;
    for snapshot in snapshots {
        if !session
            .exists(&manifest_name(snapshot))
            .map_err(repo_error(repository))?
        {
            return Err(Error::SnapshotMissing {
                repository: repository.to_string(),
                snapshot: snapshot.clone(),
            });
        }
    }
    // Manifests go first: from then on the snapshots are gone, whatever happens next.
    guard.confirm()?;
    for snapshot in snapshots {
        session
            .delete(&manifest_name(snapshot))
            .map_err(repo_error(repository))?;
    }
    collect_garbage(&mut session, repository, &guard)?;
    Ok(())
}

/// Removes blobs no snapshot references; returns how many and their bytes. Stops if the
/// lease ends: a later holder may be writing a snapshot that needs them.
pub fn collect_garbage(
    session: &mut RepositorySession,
    repository: &str,
    lease: &lease::RepositoryGuard<'_>,
) -> Result<(u64, u64)> {
    let referenced: BTreeSet<String> = manifests(session, repository)?
        .values()
        .flat_map(SnapshotManifest::referenced_blobs)
        .collect();
    let mut removed = (0, 0);
    for blob in session.list(BLOB_PREFIX).map_err(repo_error(repository))? {
        if !referenced.contains(&blob.name) {
            lease.confirm_if_due()?;
            session.delete(&blob.name).map_err(repo_error(repository))?;
            removed.0 += 1;
            removed.1 += blob.size;
        }
    }
    Ok(removed)
}

/// What `POST /_snapshot/{repo}/{snapshot}/_restore` asks for.
pub struct RestoreRequest {
    pub repository: String,
    pub snapshot: String,
    pub indices: String,
    pub rename_pattern: Option<String>,
    pub rename_replacement: Option<String>,
    pub partial: bool,
    /// Settings applied over the snapshot's (`number_of_shards` cannot change).
    pub index_settings: Value,
    /// Settings reset to their defaults.
    pub ignore_index_settings: Vec<String>,
    /// Restore the snapshot's persistent settings and lifecycle policies too (default false).
    pub include_global_state: bool,
}

/// What a restore brings back: indices laid out on their primaries' nodes, and the global
/// state if asked; the caller commits both, then drops the reservation of the names.
pub struct Restored {
    pub indices: Vec<RestoredIndex>,
    pub global_state: Option<format::GlobalState>,
    pub reservation: RestoreReservation,
}

/// A restore checked against its snapshot and the cluster ([`plan_restore`]): everything a
/// restore can refuse has been refused, and its target names are reserved on this node.
pub struct RestorePlan {
    meta: RepositoryMeta,
    manifest: SnapshotManifest,
    /// (snapshotted name, target name, settings) of each chosen index.
    chosen: Vec<(String, String, crate::index::IndexSettings)>,
    reservation: RestoreReservation,
}

/// The target names of a restore in flight on this node: a second restore into one of them is
/// refused at once rather than failing after its download.
pub struct RestoreReservation {
    restoring: std::sync::Arc<Mutex<BTreeSet<String>>>,
    names: Vec<String>,
}

impl Drop for RestoreReservation {
    fn drop(&mut self) {
        let mut restoring = self.restoring.lock().unwrap_or_else(|p| p.into_inner());
        for name in &self.names {
            restoring.remove(name);
        }
    }
}

/// An index a restore laid out on this node, ready to be committed to the cluster state with
/// its primaries here.
pub struct RestoredIndex {
    pub name: String,
    pub meta: crate::cluster::state::IndexMetadata,
    pub routing: crate::cluster::allocation::IndexRouting,
}

fn restore_error(request: &RestoreRequest, reason: String) -> Error {
    Error::SnapshotRestore {
        repository: request.repository.clone(),
        snapshot: request.snapshot.clone(),
        reason,
    }
}

/// Checks a restore against its snapshot and the cluster state and reserves its target names
/// (blocking: reads the manifest).
pub fn plan_restore(node: &NodeState, request: &RestoreRequest) -> Result<RestorePlan> {
    let repository = request.repository.as_str();
    let restore_error = |reason: String| restore_error(request, reason);
    let meta = registered(node, repository)?;
    let mut session = open(node, repository, &meta)?;
    let name = manifest_name(&request.snapshot);
    if !session.exists(&name).map_err(repo_error(repository))? {
        return Err(Error::SnapshotMissing {
            repository: repository.to_string(),
            snapshot: request.snapshot.clone(),
        });
    }
    let bytes = session
        .get(&name, 0, None)
        .map_err(repo_error(repository))?;
    let manifest: SnapshotManifest = serde_json::from_slice(&bytes)
        .map_err(|err| restore_error(format!("unreadable manifest: {err}")))?;
    if request.include_global_state && manifest.global_state.is_none() {
        return Err(restore_error(
            "the snapshot was taken without include_global_state, so there is no global state to restore".into(),
        ));
    }
    let patterns: Vec<&str> = request
        .indices
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let mut chosen = Vec::new();
    for (index_name, index) in &manifest.indices {
        let selected = patterns.iter().any(|pattern| {
            *pattern == "_all" || *pattern == "*" || wildcard_match(pattern, index_name)
        });
        if !selected {
            continue;
        }
        if index.shards.iter().any(Option::is_none) && !request.partial {
            return Err(restore_error(format!(
                "index [{index_name}] was only partially snapshotted; set partial to restore it anyway"
            )));
        }
        let target = rename(
            index_name,
            request.rename_pattern.as_deref(),
            request.rename_replacement.as_deref(),
        )?;
        crate::index::validate_index_name(&target)?;
        if node.cluster.consensus.state().indices.contains_key(&target) {
            return Err(restore_error(format!(
                "cannot restore index [{target}] because an open index with same name already exists in the cluster"
            )));
        }
        let settings = restored_settings(index, request)
            .map_err(|err| restore_error(format!("index [{index_name}]: {err}")))?;
        chosen.push((index_name.clone(), target, settings));
    }
    for pattern in &patterns {
        let concrete = !pattern.contains('*') && *pattern != "_all";
        if concrete && !manifest.indices.contains_key(*pattern) {
            return Err(restore_error(format!(
                "index [{pattern}] is not in the snapshot"
            )));
        }
    }
    let reservation = node
        .snapshot_activity
        .reserve_restore(chosen.iter().map(|(_, target, _)| target.clone()).collect())
        .map_err(|busy| {
            restore_error(format!(
                "cannot restore index [{busy}] because it is being restored"
            ))
        })?;
    Ok(RestorePlan {
        meta,
        manifest,
        chosen,
        reservation,
    })
}

/// Lays a planned restore's indices out on their primaries' nodes (blocking); the caller
/// commits them.
pub fn restore(node: &NodeState, request: &RestoreRequest, plan: RestorePlan) -> Result<Restored> {
    let RestorePlan {
        meta,
        manifest,
        chosen,
        reservation,
    } = plan;
    let mut restored = Vec::new();
    for (source, target, settings) in chosen {
        let uuid = new_uuid();
        let index = manifest.indices.get(&source).ok_or_else(|| {
            Error::Internal(format!("planned index [{source}] left the manifest"))
        })?;
        let restored_index = restore_index(node, &meta, request, &target, &uuid, index, settings)
            .map_err(|err| {
                restore_error(
                    request,
                    format!("restoring [{source}] as [{target}]: {err}"),
                )
            })
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(node.indices.index_dir(&uuid));
            })?;
        tracing::info!(repository = %request.repository, snapshot = %request.snapshot, index = %source, target = %target, "restored index");
        restored.push(restored_index);
    }
    Ok(Restored {
        indices: restored,
        global_state: manifest
            .global_state
            .filter(|_| request.include_global_state),
        reservation,
    })
}

/// The snapshot's index settings with `ignore_index_settings` reset and `index_settings`
/// applied over them; `number_of_shards` cannot change (the shards are the data).
fn restored_settings(
    index: &IndexSnapshot,
    request: &RestoreRequest,
) -> Result<crate::index::IndexSettings> {
    let mut settings: crate::index::IndexSettings =
        serde_json::from_value(index.meta.get("settings").cloned().unwrap_or_default())
            .map_err(|err| Error::Internal(format!("snapshot index settings: {err}")))?;
    for key in &request.ignore_index_settings {
        settings = settings.reset(key)?;
    }
    if !request.index_settings.is_null() {
        settings = settings.apply(&request.index_settings, false)?;
    }
    Ok(settings)
}

/// Places the index's primaries as a new index's would be, has each primary's node download
/// its shard ([`restore_shard_here`]), and describes the index for the cluster state: the
/// primaries open from disk there, and the master then allocates replicas that recover from
/// them. A shard missing from a partial snapshot gets an empty primary.
fn restore_index(
    node: &NodeState,
    meta: &RepositoryMeta,
    request: &RestoreRequest,
    target: &str,
    uuid: &str,
    index: &IndexSnapshot,
    settings: crate::index::IndexSettings,
) -> Result<RestoredIndex> {
    let repository = request.repository.as_str();
    let mut routing = crate::replication::admin::place_new_index(
        node,
        target,
        settings.number_of_replicas,
        index.shards.len(),
    );
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|err| Error::Internal(format!("no runtime to reach other nodes: {err}")))?;
    let mut jobs = Vec::new();
    for (number, (shard_routing, shard)) in routing.shards.iter_mut().zip(&index.shards).enumerate()
    {
        shard_routing.copies.retain(|copy| copy.primary);
        let Some(primary) = shard_routing.copies.first() else {
            return Err(Error::ShardNotAvailable(format!(
                "no data node can hold shard [{number}]"
            )));
        };
        // A shard a partial snapshot lacks gets an empty primary, as a new index would.
        if let Some(shard) = shard {
            shard_routing.in_sync = [primary.allocation_id.clone()].into();
            let job = ShardRestore {
                repository: repository.to_string(),
                snapshot: request.snapshot.clone(),
                index: target.to_string(),
                index_uuid: uuid.to_string(),
                shard: number as u32,
                allocation_id: primary.allocation_id.clone(),
                files: shard.clone(),
            };
            jobs.push((primary.node_id.clone(), job));
        }
    }
    // Each primary's node downloads its shard; the shards go in parallel.
    let runs = workers::on_threads(
        &jobs,
        workers::shard_workers(),
        || (),
        |(), (holder, job)| {
            if *holder == node.identity.node_id {
                return restore_shard(node, meta, job);
            }
            let request = crate::replication::wire::DataRequest::RestoreShard(
                serde_json::to_string(job).map_err(|err| Error::Internal(err.to_string()))?,
            );
            runtime
                .block_on(crate::replication::ask_within(
                    node,
                    holder,
                    request,
                    REMOTE_SHARD_SNAPSHOT_TIMEOUT,
                ))
                .map(drop)
        },
    );
    runs.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(RestoredIndex {
        name: target.to_string(),
        meta: crate::cluster::state::IndexMetadata {
            uuid: uuid.to_string(),
            creation_date: index
                .meta
                .get("creation_date")
                .and_then(Value::as_i64)
                .unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
            mappings: index.meta.get("mappings").cloned().unwrap_or_default(),
            settings,
        },
        routing,
    })
}

/// One shard of a restore, as the coordinator hands it to the node of the shard's primary.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ShardRestore {
    pub repository: String,
    pub snapshot: String,
    /// The restored index's name and uuid.
    pub index: String,
    pub index_uuid: String,
    pub shard: u32,
    /// The primary copy the files become.
    pub allocation_id: String,
    pub files: ShardSnapshot,
}

/// Restores one shard onto this node, for the coordinator of a restore on another node.
pub fn restore_shard_here(node: &NodeState, job: &ShardRestore) -> Result<()> {
    let meta = registered(node, &job.repository)?;
    restore_shard(node, &meta, job)
}

/// Downloads and verifies a shard as this node's copy of the restored index (nothing is left
/// behind on failure), and lists it in `_cat/recovery`.
fn restore_shard(node: &NodeState, meta: &RepositoryMeta, job: &ShardRestore) -> Result<()> {
    let dir = node
        .indices
        .index_dir(&job.index_uuid)
        .join(job.shard.to_string());
    let progress = node.recoveries.begin(RecoveryPlan {
        index: &job.index,
        shard: job.shard,
        kind: RecoveryKind::Snapshot,
        source: &format!("{}/{}", job.repository, job.snapshot),
        files: job.files.files.len() as u64,
        bytes: job.files.files.iter().map(|file| file.size).sum(),
    });
    let laid_out = lay_out_shard(
        node,
        meta,
        &job.repository,
        &dir,
        &job.files,
        &job.allocation_id,
        &progress,
    );
    match laid_out {
        Ok(()) => {
            progress.finish();
            Ok(())
        }
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir);
            progress.fail(err.to_string());
            Err(err)
        }
    }
}

fn rename(name: &str, pattern: Option<&str>, replacement: Option<&str>) -> Result<String> {
    let (Some(pattern), Some(replacement)) = (pattern, replacement) else {
        return Ok(name.to_string());
    };
    // A literal pattern with one optional `(.+)` group is what people use with Elasticsearch's
    // regex; `$1` in the replacement takes the group.
    if let Some((prefix, suffix)) = pattern.split_once("(.+)") {
        return Ok(
            match name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
            {
                Some(group) if !group.is_empty() => replacement.replace("$1", group),
                _ => name.to_string(),
            },
        );
    }
    Ok(if name.contains(pattern) {
        name.replacen(pattern, replacement, 1)
    } else {
        name.to_string()
    })
}

/// Downloads and verifies a shard's files into `shard_dir`, then marks the directory as copy
/// `allocation_id`; returns the bytes downloaded. The index's own metadata is written when the restored index is committed
/// ([`crate::indices::Indices::ensure`]); a directory left without it by a crash is removed at
/// the next start.
fn lay_out_shard(
    node: &NodeState,
    meta: &RepositoryMeta,
    repository: &str,
    shard_dir: &Path,
    shard: &ShardSnapshot,
    allocation_id: &str,
    progress: &RecoveryProgress<'_>,
) -> Result<()> {
    let index_dir = shard_dir.join("index");
    crate::durable::create_dir(&index_dir)?;
    let downloads = workers::on_threads(
        &shard.files,
        workers::FILE_WORKERS_PER_SHARD,
        || workers::LazySession::new(node, repository, meta),
        |session, file| {
            download_verified(
                session.get()?,
                repository,
                file,
                &index_dir.join(&file.name),
                progress,
            )?;
            progress.copied_file();
            Ok(())
        },
    );
    downloads.into_iter().collect::<Result<Vec<()>>>()?;
    let mut managed = vec!["meta.json".to_string()];
    managed.extend(shard.files.iter().map(|file| file.name.clone()));
    // tantivy's record of the files it owns, so merges can later delete restored files.
    let mut listing =
        serde_json::to_vec(&managed).map_err(|err| Error::Internal(err.to_string()))?;
    listing.push(b'\n');
    crate::durable::write_atomically(&index_dir.join(".managed.json"), &listing)?;
    // Written last and durably, with the directory naming every restored file: a copy whose
    // commit survives a power loss has its files too.
    crate::durable::write_atomically(&index_dir.join("meta.json"), shard.commit_meta.as_bytes())?;
    // A restored copy records no term: it is never caught up by operations.
    let marker = crate::index::CopyMarker {
        allocation_id: allocation_id.to_string(),
        primary_term: 0,
    };
    let bytes = serde_json::to_vec(&marker).map_err(|err| Error::Internal(err.to_string()))?;
    crate::durable::write_atomically(&shard_dir.join("_copy.json"), &bytes)?;
    Ok(())
}

fn download_verified(
    session: &mut RepositorySession,
    repository: &str,
    file: &FileRef,
    path: &Path,
    progress: &RecoveryProgress<'_>,
) -> Result<()> {
    let blob = blob_name(&file.sha256);
    let mut out = std::fs::File::create(path)?;
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    while offset < file.size {
        let length = (file.size - offset).min(CHUNK_BYTES as u64);
        let chunk = session
            .get(&blob, offset, Some(length))
            .map_err(repo_error(repository))?;
        if chunk.is_empty() {
            break;
        }
        hasher.update(&chunk);
        out.write_all(&chunk)?;
        offset += chunk.len() as u64;
        progress.copied_bytes(chunk.len() as u64);
    }
    out.sync_all()?;
    let actual = hex(&hasher.finalize());
    if actual != file.sha256 || offset != file.size {
        return Err(Error::Repository {
            repository: repository.to_string(),
            reason: format!(
                "blob [{blob}] (file [{}]) is corrupted: expected {} bytes with SHA-256 {}, read {offset} bytes with SHA-256 {actual}",
                file.name, file.size, file.sha256
            ),
        });
    }
    Ok(())
}
