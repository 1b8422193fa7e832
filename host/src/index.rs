//! An index: its settings, mapping and shards, persisted as metadata beside the shard data,
//! and the routing of document ids to shards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::durable::write_atomically;
use crate::error::{Error, Result, illegal};
use crate::mapping::Mapping;
use crate::routing::shard_for_routing;
use crate::shard::{Durability, MappingSource, Shard, ShardId};
use crate::shard_lock::ShardLocks;
use crate::units::{format_time_value, parse_time_value};

/// Index settings Shoal understands; anything else is refused rather than silently ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct IndexSettings {
    pub number_of_shards: u32,
    pub number_of_replicas: u32,
    /// `None` disables periodic refresh (`-1`).
    pub refresh_interval: Option<Duration>,
    pub translog_durability: Durability,
    pub translog_sync_interval: Duration,
    /// Translog bytes kept past the commits as history for copies that catch up by operations
    /// (`index.translog.retention.size`, Elasticsearch 6's setting).
    pub translog_retention_size: u64,
    /// The field time-series pruning reads (`index.time_series.timestamp_field`).
    pub timestamp_field: String,
    pub max_result_window: usize,
    /// The pruning plugin searches of this index consult (`index.plugins.pruning`): a plugin,
    /// `none` to search every shard, or unset (`None`) to follow the cluster (`plugins::roles`).
    pub pruning_plugin: Option<String>,
    /// How long a replica lost with its node waits for the node before it is rebuilt elsewhere
    /// (`index.unassigned.node_left.delayed_timeout`).
    pub node_left_delayed_timeout: Duration,
}

impl Default for IndexSettings {
    fn default() -> Self {
        IndexSettings {
            number_of_shards: 1,
            number_of_replicas: 1,
            refresh_interval: Some(Duration::from_secs(1)),
            translog_durability: Durability::Request,
            translog_sync_interval: Duration::from_secs(5),
            translog_retention_size: crate::shard::TRANSLOG_RETENTION_BYTES,
            timestamp_field: "@timestamp".to_string(),
            max_result_window: 10_000,
            pruning_plugin: None,
            node_left_delayed_timeout: Duration::from_secs(60),
        }
    }
}

/// Flattens `{"index": {"number_of_shards": 1}}`, `{"index.number_of_shards": 1}` and
/// `{"number_of_shards": 1}` alike into `number_of_shards -> value`.
fn flatten_settings(value: &Value) -> Result<BTreeMap<String, Value>> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, child, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.clone());
            }
        }
    }
    if !value.is_object() {
        return Err(illegal(format!("settings must be an object, got {value}")));
    }
    let mut flat = BTreeMap::new();
    walk("", value, &mut flat);
    Ok(flat
        .into_iter()
        .map(|(key, value)| {
            (
                key.strip_prefix("index.").unwrap_or(&key).to_string(),
                value,
            )
        })
        .collect())
}

fn setting_string(key: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        Value::Bool(flag) => Ok(flag.to_string()),
        _ => Err(illegal(format!(
            "failed to parse value [{value}] for setting [index.{key}]"
        ))),
    }
}

fn setting_u32(key: &str, value: &Value, min: u32) -> Result<u32> {
    let text = setting_string(key, value)?;
    let number: u32 = text.parse().map_err(|_| {
        illegal(format!(
            "Failed to parse value [{text}] for setting [index.{key}]"
        ))
    })?;
    if number < min {
        return Err(illegal(format!(
            "Failed to parse value [{number}] for setting [index.{key}] must be >= {min}"
        )));
    }
    Ok(number)
}

const STATIC_SETTINGS: [&str; 1] = ["number_of_shards"];

impl IndexSettings {
    /// Applies user settings on top of `self`. `creating` allows static settings.
    pub fn apply(&self, body: &Value, creating: bool) -> Result<IndexSettings> {
        let mut settings = self.clone();
        for (key, value) in flatten_settings(body)? {
            if !creating && STATIC_SETTINGS.contains(&key.as_str()) {
                return Err(illegal(format!(
                    "Can't update non dynamic settings [[index.{key}]] for open indices"
                )));
            }
            match key.as_str() {
                "number_of_shards" => {
                    settings.number_of_shards = setting_u32(&key, &value, 1)?;
                    if settings.number_of_shards > 1024 {
                        return Err(illegal(
                            "Failed to parse value for setting [index.number_of_shards] must be <= 1024",
                        ));
                    }
                }
                "number_of_replicas" => settings.number_of_replicas = setting_u32(&key, &value, 0)?,
                "refresh_interval" => {
                    settings.refresh_interval = parse_time_value(&setting_string(&key, &value)?)?
                }
                "translog.durability" => {
                    settings.translog_durability =
                        match setting_string(&key, &value)?.to_ascii_lowercase().as_str() {
                            "request" => Durability::Request,
                            "async" => Durability::Async,
                            other => {
                                return Err(illegal(format!(
                                    "no enum constant for [index.translog.durability]: [{other}]"
                                )));
                            }
                        }
                }
                "translog.sync_interval" => {
                    settings.translog_sync_interval =
                        parse_time_value(&setting_string(&key, &value)?)?
                            .filter(|interval| *interval >= Duration::from_millis(100))
                            .ok_or_else(|| {
                                illegal("[index.translog.sync_interval] must be at least 100ms")
                            })?;
                }
                "translog.retention.size" => {
                    settings.translog_retention_size =
                        crate::units::parse_byte_size(&setting_string(&key, &value)?)?;
                }
                "time_series.timestamp_field" => {
                    settings.timestamp_field = setting_string(&key, &value)?
                }
                "max_result_window" => {
                    settings.max_result_window = setting_u32(&key, &value, 1)? as usize
                }
                "unassigned.node_left.delayed_timeout" => {
                    settings.node_left_delayed_timeout =
                        parse_time_value(&setting_string(&key, &value)?)?.unwrap_or_default();
                }
                "plugins.pruning" => {
                    let name = setting_string(&key, &value)?;
                    settings.pruning_plugin = (!name.is_empty()).then_some(name);
                }
                // Accepted for compatibility with clients that always send them.
                "uuid" | "creation_date" | "provided_name" | "version.created" => {}
                other => {
                    return Err(illegal(format!(
                        "unknown setting [index.{other}] please check that any required plugins are installed, or check the breaking changes documentation for removed settings"
                    )));
                }
            }
        }
        Ok(settings)
    }

    /// Resets one setting (`index.refresh_interval` or `refresh_interval`) to its default, as
    /// a restore's `ignore_index_settings` asks; `number_of_shards` is fixed by the data.
    pub fn reset(&self, key: &str) -> Result<IndexSettings> {
        let defaults = IndexSettings::default();
        let mut settings = self.clone();
        match key.strip_prefix("index.").unwrap_or(key) {
            "number_of_replicas" => settings.number_of_replicas = defaults.number_of_replicas,
            "refresh_interval" => settings.refresh_interval = defaults.refresh_interval,
            "translog.durability" => settings.translog_durability = defaults.translog_durability,
            "translog.sync_interval" => {
                settings.translog_sync_interval = defaults.translog_sync_interval
            }
            "translog.retention.size" => {
                settings.translog_retention_size = defaults.translog_retention_size
            }
            "time_series.timestamp_field" => settings.timestamp_field = defaults.timestamp_field,
            "max_result_window" => settings.max_result_window = defaults.max_result_window,
            "unassigned.node_left.delayed_timeout" => {
                settings.node_left_delayed_timeout = defaults.node_left_delayed_timeout
            }
            "plugins.pruning" => settings.pruning_plugin = defaults.pruning_plugin,
            "number_of_shards" => {
                return Err(illegal(
                    "cannot remove setting [index.number_of_shards] on restore",
                ));
            }
            other => {
                return Err(illegal(format!(
                    "unknown setting [index.{other}] in ignore_index_settings"
                )));
            }
        }
        Ok(settings)
    }

    /// Settings as `GET /{index}/_settings` shows them (values as strings, like Elasticsearch).
    pub fn to_json(&self, meta: &IndexMeta) -> Value {
        json!({
            "index": {
                "number_of_shards": self.number_of_shards.to_string(),
                "number_of_replicas": self.number_of_replicas.to_string(),
                "refresh_interval": format_time_value(self.refresh_interval),
                "translog": {
                    "durability": match self.translog_durability { Durability::Request => "request", Durability::Async => "async" },
                    "sync_interval": format_time_value(Some(self.translog_sync_interval)),
                    "retention": { "size": format!("{}b", self.translog_retention_size) },
                },
                "time_series": { "timestamp_field": self.timestamp_field },
                "max_result_window": self.max_result_window.to_string(),
                // Unset means "as the cluster says", which `GET /_cluster/settings` shows.
                "plugins": match &self.pruning_plugin {
                    Some(name) => json!({ "pruning": name }),
                    None => json!({}),
                },
                "unassigned": { "node_left": { "delayed_timeout": format_time_value(Some(self.node_left_delayed_timeout)) } },
                "uuid": meta.uuid,
                "creation_date": meta.creation_date.to_string(),
                "provided_name": meta.name,
                "version": { "created": crate::VERSION },
            }
        })
    }
}

/// The persisted form of an index's metadata.
#[derive(Debug, Serialize, Deserialize)]
struct PersistedIndex {
    format: u32,
    name: String,
    uuid: String,
    creation_date: i64,
    settings: IndexSettings,
    mappings: Value,
}

/// Index metadata shared by the index's shards; implements [`MappingSource`].
pub struct IndexMeta {
    pub name: String,
    pub uuid: String,
    pub creation_date: i64,
    dir: PathBuf,
    /// Shared, so that a search reads an index's settings without copying them.
    settings: RwLock<Arc<IndexSettings>>,
    mapping: RwLock<Arc<Mapping>>,
    /// Serializes read-modify-persist of settings and mapping.
    persist_lock: Mutex<()>,
    /// The cluster-state version whose settings were adopted last: the applier and an API
    /// call can adopt concurrently, and an older state must not undo a newer change.
    adopted_version: Mutex<u64>,
}

impl IndexMeta {
    pub fn settings(&self) -> Arc<IndexSettings> {
        self.settings.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The persisted metadata (settings, mappings, primary terms) as JSON, for snapshots.
    pub fn persisted_json(&self) -> Result<Value> {
        let bytes = std::fs::read(self.dir.join(INDEX_METADATA))?;
        serde_json::from_slice(&bytes).map_err(|err| {
            Error::Internal(format!(
                "index metadata of [{}] is unreadable: {err}",
                self.name
            ))
        })
    }

    pub fn number_of_replicas(&self) -> u32 {
        self.settings
            .read()
            .map(|s| s.number_of_replicas)
            .unwrap_or_default()
    }

    pub fn mapping(&self) -> Arc<Mapping> {
        self.mapping.read().map(|m| m.clone()).unwrap_or_default()
    }

    fn persist(&self, settings: &IndexSettings, mapping: &Mapping) -> Result<()> {
        let persisted = PersistedIndex {
            format: 1,
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            creation_date: self.creation_date,
            settings: settings.clone(),
            mappings: mapping.to_json(),
        };
        let bytes = serde_json::to_vec_pretty(&persisted)
            .map_err(|err| Error::Internal(err.to_string()))?;
        Ok(write_atomically(&self.dir.join(INDEX_METADATA), &bytes)?)
    }

    /// Takes the cluster's settings and mapping for this index where they differ from the local
    /// ones (a settings update or explicit mapping committed through the master).
    pub fn adopt_cluster_metadata(
        &self,
        meta: &crate::cluster::state::IndexMetadata,
        version: u64,
    ) -> Result<()> {
        let mut adopted = self
            .adopted_version
            .lock()
            .map_err(|_| Error::Internal("metadata version lock poisoned".into()))?;
        if version >= *adopted && *self.settings() != meta.settings {
            let _guard = self
                .persist_lock
                .lock()
                .map_err(|_| Error::Internal("metadata lock poisoned".into()))?;
            self.persist(&meta.settings, &self.mapping())?;
            if let Ok(mut settings) = self.settings.write() {
                *settings = Arc::new(meta.settings.clone());
            }
        }
        *adopted = (*adopted).max(version);
        drop(adopted);
        // Mappings only grow, so an older one merges in harmlessly.
        let cluster_mapping = Mapping::parse(&meta.mappings)?;
        if self.mapping().merge(&cluster_mapping)? != *self.mapping() {
            self.grow(&cluster_mapping)?;
        }
        Ok(())
    }
}

impl MappingSource for IndexMeta {
    fn current(&self) -> Arc<Mapping> {
        self.mapping()
    }

    fn grow(&self, grown: &Mapping) -> Result<Arc<Mapping>> {
        let _guard = self
            .persist_lock
            .lock()
            .map_err(|_| Error::Internal("metadata lock poisoned".into()))?;
        let current = self.mapping();
        let merged = current.merge(grown)?;
        if merged == *current {
            return Ok(current);
        }
        self.persist(&self.settings(), &merged)?;
        let merged = Arc::new(merged);
        if let Ok(mut mapping) = self.mapping.write() {
            *mapping = merged.clone();
        }
        Ok(merged)
    }
}

/// A live index on this node: metadata plus the shard copies this node holds (the routing
/// table decides which; copies come and go as the cluster allocates them).
pub struct IndexService {
    pub meta: Arc<IndexMeta>,
    shards: RwLock<BTreeMap<u32, Arc<Shard>>>,
    /// Copies taken out of service and still closing: their directories are not reused yet.
    locks: ShardLocks,
}

/// What a shard copy's directory records about which copy it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CopyMarker {
    pub allocation_id: String,
    /// The primary term the copy was built in. While the shard's term is still this one, every
    /// operation the copy holds came from the current primary, so it can catch up by
    /// operations; 0 (a copy built before Shoal recorded it) never can.
    #[serde(default)]
    pub primary_term: u64,
}

impl CopyMarker {
    /// Whether the copy was built in primary term `term` (and recorded it).
    pub fn built_in_term(&self, term: u64) -> bool {
        self.primary_term != 0 && self.primary_term == term
    }
}

const COPY_MARKER: &str = "_copy.json";
/// The file in an index's directory holding its name, settings and mappings.
pub const INDEX_METADATA: &str = "_meta.json";
/// How long closing a copy waits for searches and writes in flight to let it go.
const SHARD_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

impl IndexService {
    /// Takes the cluster's settings and mapping ([`IndexMeta::adopt_cluster_metadata`]) and
    /// hands the open copies the settings they hold themselves.
    pub fn adopt_cluster_metadata(
        &self,
        meta: &crate::cluster::state::IndexMetadata,
        version: u64,
    ) -> Result<()> {
        self.meta.adopt_cluster_metadata(meta, version)?;
        let retention = self.meta.settings().translog_retention_size;
        for shard in self.local_shards() {
            shard.set_translog_retention(retention);
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Lays out a new index under `dir` (metadata only; copies are opened as allocated).
    pub fn create(
        dir: &Path,
        name: &str,
        creation_date: i64,
        settings: IndexSettings,
        mapping: Mapping,
    ) -> Result<IndexService> {
        crate::durable::create_dir(dir)?;
        let uuid = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let meta = IndexMeta {
            name: name.to_string(),
            uuid,
            creation_date,
            dir: dir.to_path_buf(),
            settings: RwLock::new(Arc::new(settings.clone())),
            mapping: RwLock::new(Arc::new(mapping.clone())),
            persist_lock: Mutex::new(()),
            adopted_version: Mutex::new(0),
        };
        meta.persist(&settings, &mapping)?;
        Ok(IndexService {
            meta: Arc::new(meta),
            shards: RwLock::new(BTreeMap::new()),
            locks: ShardLocks::default(),
        })
    }

    /// Opens an index persisted under `dir` with every shard copy found there.
    pub fn open(dir: &Path) -> Result<IndexService> {
        let bytes = std::fs::read(dir.join(INDEX_METADATA))?;
        let persisted: PersistedIndex = serde_json::from_slice(&bytes).map_err(|err| {
            Error::Internal(format!(
                "index metadata in {} is unreadable: {err}",
                dir.display()
            ))
        })?;
        let mapping = Mapping::parse(&persisted.mappings)?;
        let meta = IndexMeta {
            name: persisted.name,
            uuid: persisted.uuid,
            creation_date: persisted.creation_date,
            dir: dir.to_path_buf(),
            settings: RwLock::new(Arc::new(persisted.settings)),
            mapping: RwLock::new(Arc::new(mapping)),
            persist_lock: Mutex::new(()),
            adopted_version: Mutex::new(0),
        };
        let index = IndexService {
            meta: Arc::new(meta),
            shards: RwLock::new(BTreeMap::new()),
            locks: ShardLocks::default(),
        };
        for number in 0..index.number_of_shards() {
            if index.copy_dir(number).join("index").exists() {
                index.open_copy(number)?;
            }
        }
        Ok(index)
    }

    pub fn number_of_shards(&self) -> u32 {
        self.meta.settings().number_of_shards
    }

    /// Where copy `number` keeps its files.
    pub fn copy_dir(&self, number: u32) -> PathBuf {
        self.meta.dir.join(number.to_string())
    }

    /// Opens (or creates empty) the copy of shard `number` on disk. Refused while an earlier
    /// copy of the shard is still closing: its writer may still touch the directory.
    pub fn open_copy(&self, number: u32) -> Result<Arc<Shard>> {
        if let Some(open) = self.shard(number) {
            return Ok(open);
        }
        if self.locks.is_locked(number) {
            return Err(Error::ShardNotAvailable(format!(
                "[{}][{number}] is still closing",
                self.meta.name
            )));
        }
        let id = ShardId {
            index: self.meta.name.clone(),
            shard: number,
        };
        let shard = Arc::new(Shard::open(
            id,
            &self.copy_dir(number),
            1,
            self.meta.as_ref(),
        )?);
        shard.set_translog_retention(self.meta.settings().translog_retention_size);
        self.shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number, shard.clone());
        Ok(shard)
    }

    /// Whether a copy of shard `number` is still closing (see [`ShardLocks`]).
    pub fn is_closing(&self, number: u32) -> bool {
        self.locks.is_locked(number)
    }

    /// Takes copy `number` out of service at once and closes it in the background once every
    /// holder has let it go, then deletes its files if `delete_files`. Until then the shard
    /// stays locked: [`IndexService::open_copy`] refuses it.
    pub fn close_copy_in_background(&self, number: u32, delete_files: bool) {
        let copy = self
            .shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&number);
        if copy.is_none() && !delete_files {
            return;
        }
        let dir = self.copy_dir(number);
        let label = format!("[{}][{number}]", self.meta.name);
        let then = move || {
            if delete_files {
                remove_dir_logged(&dir);
            }
        };
        self.locks
            .close_in_background(label, vec![number], copy.into_iter().collect(), then);
    }

    /// Closes copy `number`, leaving its files, and waits until every holder of the copy
    /// (searches, writes and recoveries in flight) has let it go and its writer has stopped,
    /// so that the directory can be reused or deleted. Fails if that takes too long; the copy
    /// then closes when its last holder drops it, and the shard stays locked until it does.
    pub fn close_copy(&self, number: u32) -> Result<()> {
        self.close_copy_within(number, SHARD_LOCK_TIMEOUT)
    }

    fn close_copy_within(&self, number: u32, limit: Duration) -> Result<()> {
        self.close_copy_in_background(number, false);
        if self.locks.wait_unlocked(number, limit) {
            Ok(())
        } else {
            Err(Error::ShardNotAvailable(format!(
                "[{}][{number}] is still in use after {limit:?}; it closes when released",
                self.meta.name
            )))
        }
    }

    /// Takes every copy out of service; once all are closed (in the background), runs `then`.
    pub fn close_all_copies_in_background(&self, then: impl FnOnce() + Send + 'static) {
        let copies = std::mem::take(&mut *self.shards.write().unwrap_or_else(|p| p.into_inner()));
        let (numbers, copies): (Vec<u32>, Vec<Arc<Shard>>) = copies.into_iter().unzip();
        self.locks
            .close_in_background(self.meta.name.clone(), numbers, copies, then);
    }

    /// Closes copy `number` (see [`IndexService::close_copy`]) and deletes its files.
    pub fn remove_copy(&self, number: u32) -> Result<()> {
        self.close_copy(number)?;
        let dir = self.copy_dir(number);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(())
    }

    /// Which allocation the copy on disk belongs to, if recorded.
    pub fn copy_marker(&self, number: u32) -> Option<CopyMarker> {
        let bytes = std::fs::read(self.copy_dir(number).join(COPY_MARKER)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write_copy_marker(&self, number: u32, marker: &CopyMarker) -> Result<()> {
        let dir = self.copy_dir(number);
        crate::durable::create_dir(&dir)?;
        let bytes = serde_json::to_vec(marker).map_err(|err| Error::Internal(err.to_string()))?;
        Ok(write_atomically(&dir.join(COPY_MARKER), &bytes)?)
    }

    /// The open copy of shard `number`, if this node holds one.
    pub fn shard(&self, number: u32) -> Option<Arc<Shard>> {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&number)
            .cloned()
    }

    /// Every shard copy open on this node.
    pub fn local_shards(&self) -> Vec<Arc<Shard>> {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The shard number a document id (or explicit routing value) belongs to.
    pub fn shard_number_for(&self, id: &str, routing: Option<&str>) -> u32 {
        shard_for_routing(routing.unwrap_or(id), self.number_of_shards())
    }

    /// Index description for `GET /{index}`.
    pub fn to_json(&self) -> Value {
        json!({
            "aliases": {},
            "mappings": self.meta.mapping().to_json(),
            "settings": self.meta.settings().to_json(&self.meta),
        })
    }

    pub fn doc_count(&self) -> u64 {
        self.local_shards()
            .iter()
            .map(|s| s.searcher().num_docs())
            .sum()
    }

    pub fn deleted_doc_count(&self) -> u64 {
        self.local_shards()
            .iter()
            .map(|s| {
                s.searcher()
                    .segment_readers()
                    .iter()
                    .map(|r| u64::from(r.num_deleted_docs()))
                    .sum::<u64>()
            })
            .sum()
    }

    pub fn store_size(&self) -> u64 {
        self.local_shards().iter().map(|s| s.store_size()).sum()
    }
}

/// Deletes a closed copy's or index's directory, logging (not failing) on error: nobody waits.
pub fn remove_dir_logged(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::warn!(path = %dir.display(), error = %err, "could not delete a closed copy's files")
        }
    }
}

/// Checks an index name against Elasticsearch's rules.
pub fn validate_index_name(name: &str) -> Result<()> {
    let invalid = |reason: &str| {
        Err(Error::InvalidIndexName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name != name.to_lowercase() {
        return invalid("must be lowercase");
    }
    if name.starts_with(['_', '-', '+']) {
        return invalid("must not start with '_', '-', or '+'");
    }
    if name == "." || name == ".." {
        return invalid("must not be '.' or '..'");
    }
    if name.len() > 255 {
        return invalid("index name is too long, (must be <= 255 bytes)");
    }
    if let Some(bad) = name.chars().find(|c| "\\/*?\"<>| ,#:".contains(*c)) {
        return invalid(&format!(
            "must not contain the following characters [{bad}]"
        ));
    }
    Ok(())
}

/// Splits a create-index body into settings and mapping.
pub fn parse_create_body(body: &Value) -> Result<(IndexSettings, Mapping)> {
    let empty = Map::new();
    let object = match body {
        Value::Null => &empty,
        Value::Object(object) => object,
        other => {
            return Err(crate::error::parsing(format!(
                "request body must be an object, got {other}"
            )));
        }
    };
    let mut settings = IndexSettings::default();
    let mut mapping = Mapping::default();
    for (key, value) in object {
        match key.as_str() {
            "settings" => settings = settings.apply(value, true)?,
            "mappings" => mapping = Mapping::parse(value)?,
            "aliases" if value.as_object().is_some_and(|a| a.is_empty()) => {}
            other => {
                return Err(crate::error::parsing(format!(
                    "unknown key [{other}] for create index"
                )));
            }
        }
    }
    Ok((settings, mapping))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_accept_all_spellings_and_refuse_unknown() {
        let base = IndexSettings::default();
        let nested = base
            .apply(
                &json!({"index": {"number_of_shards": 3, "refresh_interval": "250ms"}}),
                true,
            )
            .expect("valid");
        assert_eq!(nested.number_of_shards, 3);
        assert_eq!(nested.refresh_interval, Some(Duration::from_millis(250)));
        let dotted = base
            .apply(&json!({"index.number_of_replicas": "0"}), true)
            .expect("valid");
        assert_eq!(dotted.number_of_replicas, 0);
        assert!(base.apply(&json!({"index.bogus": 1}), true).is_err());
        assert!(base.apply(&json!({"number_of_shards": 0}), true).is_err());
        assert!(
            base.apply(&json!({"number_of_shards": 2}), false).is_err(),
            "static after creation"
        );
    }

    fn index_with_one_open_copy(dir: &Path) -> (IndexService, Arc<Shard>) {
        let index = IndexService::create(
            &dir.join("uuid"),
            "locked",
            0,
            IndexSettings::default(),
            Mapping::default(),
        )
        .expect("index");
        let copy = index.open_copy(0).expect("copy opens");
        (index, copy)
    }

    #[test]
    fn closing_a_copy_waits_for_its_last_holder_before_its_files_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (index, held) = index_with_one_open_copy(dir.path());
        let (released_tx, released_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            released_tx.send(()).expect("send");
            drop(held);
        });
        index.remove_copy(0).expect("removed once released");
        assert!(
            released_rx.try_recv().is_ok(),
            "the files went only after the holder let go"
        );
        assert!(!index.copy_dir(0).exists());
        holder.join().expect("holder");
    }

    #[test]
    fn a_copy_held_too_long_is_not_deleted_under_its_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (index, held) = index_with_one_open_copy(dir.path());
        let closed = index.close_copy_within(0, Duration::from_millis(50));
        assert!(
            matches!(closed, Err(Error::ShardNotAvailable(_))),
            "{closed:?}"
        );
        assert!(index.copy_dir(0).exists());
        assert!(index.shard(0).is_none(), "closed to new users at once");
        let reopened = index.open_copy(0);
        assert!(
            matches!(reopened, Err(Error::ShardNotAvailable(_))),
            "a new copy waits for the old one: {:?}",
            reopened.map(|_| ())
        );
        drop(held);
        index
            .close_copy(0)
            .expect("the held copy closes once released");
        let reopened = index.open_copy(0).expect("reopens once released");
        drop(reopened);
        index.remove_copy(0).expect("removed");
    }

    #[test]
    fn a_copy_removed_in_the_background_keeps_its_shard_locked_until_its_files_are_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (index, held) = index_with_one_open_copy(dir.path());
        index.close_copy_in_background(0, true);
        assert!(index.shard(0).is_none(), "out of service at once");
        assert!(index.is_closing(0));
        assert!(index.open_copy(0).is_err(), "locked while held");
        std::thread::sleep(Duration::from_millis(50));
        assert!(index.copy_dir(0).exists(), "files stay under their holder");
        drop(held);
        assert!(index.locks.wait_unlocked(0, Duration::from_secs(10)));
        assert!(!index.copy_dir(0).exists(), "files gone once released");
        let fresh = index.open_copy(0).expect("a new copy opens");
        assert_eq!(fresh.max_seq_no(), -1, "and starts empty");
    }

    #[test]
    fn index_names_follow_elasticsearch_rules() {
        assert!(validate_index_name("logs-2024.01.01").is_ok());
        for bad in ["Logs", "_x", "a b", "a*", "..", ""] {
            assert!(validate_index_name(bad).is_err(), "{bad}");
        }
    }
}
