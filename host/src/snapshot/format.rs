//! What a snapshot repository holds. Shard files are stored once, content-addressed as
//! `blobs/{sha256}`, so a snapshot uploads only files no earlier snapshot stored; each snapshot
//! is one manifest, `snapshots/{name}.json`, written after all its blobs, so a snapshot is
//! visible only once complete.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const BLOB_PREFIX: &str = "blobs/";
pub const MANIFEST_PREFIX: &str = "snapshots/";
/// Bump when the manifest changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

pub fn blob_name(sha256: &str) -> String {
    format!("{BLOB_PREFIX}{sha256}")
}

pub fn manifest_name(snapshot: &str) -> String {
    format!("{MANIFEST_PREFIX}{snapshot}.json")
}

/// How a snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SnapshotState {
    InProgress,
    Success,
    Partial,
    Failed,
}

/// One segment file of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// One shard at the snapshot's point in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSnapshot {
    /// tantivy's `meta.json` of the snapshotted commit.
    pub commit_meta: String,
    pub files: Vec<FileRef>,
}

/// One index: its metadata (settings, mappings, primary terms) and shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSnapshot {
    pub meta: Value,
    /// `None` for a shard that failed in a partial snapshot.
    pub shards: Vec<Option<ShardSnapshot>>,
}

/// Files and bytes, total and newly uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStats {
    pub total_files: u64,
    pub total_bytes: u64,
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
}

impl TransferStats {
    /// Adds what another shard's upload took.
    pub fn absorb(&mut self, other: TransferStats) {
        self.total_files += other.total_files;
        self.total_bytes += other.total_bytes;
        self.uploaded_files += other.uploaded_files;
        self.uploaded_bytes += other.uploaded_bytes;
    }
}

/// A snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format: u32,
    pub snapshot: String,
    pub uuid: String,
    pub state: SnapshotState,
    pub indices: BTreeMap<String, IndexSnapshot>,
    pub failures: Vec<String>,
    pub metadata: Value,
    pub start_time_in_millis: i64,
    pub end_time_in_millis: i64,
    pub stats: TransferStats,
    /// The cluster's global state at the snapshot, when `include_global_state` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_state: Option<GlobalState>,
}

/// What a snapshot keeps of the cluster besides indices (Elasticsearch's global state):
/// persistent cluster settings and snapshot lifecycle policies. Repositories are not part of
/// it: a restore must not repoint the repository it reads from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalState {
    pub persistent_settings: BTreeMap<String, Value>,
    pub slm_policies: BTreeMap<String, crate::snapshot::slm::SlmPolicy>,
}

impl SnapshotManifest {
    /// Every blob this snapshot needs.
    pub fn referenced_blobs(&self) -> BTreeSet<String> {
        self.indices
            .values()
            .flat_map(|index| index.shards.iter().flatten())
            .flat_map(|shard| shard.files.iter().map(|file| blob_name(&file.sha256)))
            .collect()
    }

    pub fn shard_counts(&self) -> (usize, usize) {
        let total = self.indices.values().map(|index| index.shards.len()).sum();
        let failed = self
            .indices
            .values()
            .flat_map(|index| index.shards.iter())
            .filter(|shard| shard.is_none())
            .count();
        (total, failed)
    }

    /// The snapshot as `_status` shows it: every shard's stage, files and bytes.
    pub fn status_json(&self, repository: &str) -> Value {
        let (total, failed) = self.shard_counts();
        let indices: serde_json::Map<String, Value> = self
            .indices
            .iter()
            .map(|(name, index)| {
                let shards: serde_json::Map<String, Value> = index
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(number, shard)| {
                        let status = match shard {
                            Some(shard) => serde_json::json!({
                                "stage": "DONE",
                                "stats": {
                                    "total": {
                                        "file_count": shard.files.len(),
                                        "size_in_bytes": shard.files.iter().map(|f| f.size).sum::<u64>(),
                                    },
                                },
                            }),
                            None => serde_json::json!({ "stage": "FAILURE" }),
                        };
                        (number.to_string(), status)
                    })
                    .collect();
                (name.clone(), serde_json::json!({ "shards": shards }))
            })
            .collect();
        serde_json::json!({
            "snapshot": self.snapshot,
            "repository": repository,
            "uuid": self.uuid,
            "state": self.state,
            "shards_stats": { "done": total - failed, "failed": failed, "total": total },
            "stats": {
                "incremental": { "file_count": self.stats.uploaded_files, "size_in_bytes": self.stats.uploaded_bytes },
                "total": { "file_count": self.stats.total_files, "size_in_bytes": self.stats.total_bytes },
                "start_time_in_millis": self.start_time_in_millis,
                "time_in_millis": self.end_time_in_millis - self.start_time_in_millis,
            },
            "indices": indices,
        })
    }

    /// The snapshot as `GET /_snapshot/{repo}/{snapshot}` shows it.
    pub fn to_json(&self, repository: &str) -> Value {
        let (total, failed) = self.shard_counts();
        serde_json::json!({
            "snapshot": self.snapshot,
            "uuid": self.uuid,
            "repository": repository,
            "indices": self.indices.keys().collect::<Vec<_>>(),
            "state": self.state,
            "failures": self.failures,
            "metadata": self.metadata,
            "include_global_state": self.global_state.is_some(),
            "start_time_in_millis": self.start_time_in_millis,
            "end_time_in_millis": self.end_time_in_millis,
            "duration_in_millis": self.end_time_in_millis - self.start_time_in_millis,
            "shards": { "total": total, "failed": failed, "successful": total - failed },
            "stats": {
                "total": { "file_count": self.stats.total_files, "size_in_bytes": self.stats.total_bytes },
                "incremental": { "file_count": self.stats.uploaded_files, "size_in_bytes": self.stats.uploaded_bytes },
            },
        })
    }
}
