//! The one error type the node's library code returns, and how each variant maps onto an
//! Elasticsearch error type and HTTP status.

use serde_json::{Value, json};

/// Result alias used across the host crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while serving a request or running a shard.
///
/// Variants carry what a user needs to fix their request; `es_type` and `status` give the
/// Elasticsearch-compatible rendering so clients that branch on `error.type` keep working.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such index [{0}]")]
    IndexNotFound(String),
    #[error("index [{name}/{uuid}] already exists")]
    IndexAlreadyExists { name: String, uuid: String },
    #[error("Invalid index name [{name}], {reason}")]
    InvalidIndexName { name: String, reason: String },
    #[error("{0}")]
    Parsing(String),
    #[error("{0}")]
    MapperParsing(String),
    #[error(
        "mapping set to strict, dynamic introduction of [{field}] within [_doc] is not allowed"
    )]
    StrictDynamicMapping { field: String },
    #[error("{0}")]
    IllegalArgument(String),
    #[error("[{id}]: version conflict, {reason}")]
    VersionConflict {
        index: String,
        id: String,
        reason: String,
    },
    #[error("[{id}]: document missing")]
    DocumentMissing { index: String, id: String },
    #[error("request body is larger than the limit of [{limit}] bytes")]
    ContentTooLong { limit: usize },
    #[error("no handler found for uri [{uri}] and method [{method}]")]
    NoHandler { uri: String, method: String },
    #[error("{0}")]
    SearchPhase(String),
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    PluginFailed(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("translog of shard [{shard}] is corrupted: {reason}")]
    TranslogCorrupted { shard: String, reason: String },
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    MasterNotDiscovered(String),
    #[error("[{0}] missing")]
    RepositoryMissing(String),
    #[error("[{repository}:{snapshot}] is missing")]
    SnapshotMissing {
        repository: String,
        snapshot: String,
    },
    #[error("[{repository}:{snapshot}] {reason}")]
    InvalidSnapshotName {
        repository: String,
        snapshot: String,
        reason: String,
    },
    #[error("[{repository}] {reason}")]
    Repository { repository: String, reason: String },
    #[error("[{repository}:{snapshot}] {reason}")]
    SnapshotRestore {
        repository: String,
        snapshot: String,
        reason: String,
    },
    #[error("[{repository}] {reason}")]
    ConcurrentSnapshot { repository: String, reason: String },
    /// No copy of a shard can take the request right now (no started primary, a primary that
    /// moved); the coordinator retries until its timeout.
    #[error("{0}")]
    ShardNotAvailable(String),
    /// A replica refused operations from a primary that has since been replaced.
    #[error("{shard} refused operations of primary term {term}: the shard is in term {current}")]
    StalePrimaryTerm {
        shard: String,
        term: u64,
        current: u64,
    },
    /// An error another node answered with, kept as that node rendered it.
    #[error("{}", cause.get("reason").and_then(Value::as_str).unwrap_or("remote failure"))]
    Remote { status: u16, cause: Value },
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("index engine error: {0}")]
    Engine(#[from] tantivy::TantivyError),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The Elasticsearch `error.type` string for this error.
    pub fn es_type(&self) -> &str {
        match self {
            Error::ShardNotAvailable(_) => "unavailable_shards_exception",
            Error::StalePrimaryTerm { .. } => "stale_primary_term_exception",
            Error::Remote { cause, .. } => cause
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("exception"),
            Error::IndexNotFound(_) => "index_not_found_exception",
            Error::IndexAlreadyExists { .. } => "resource_already_exists_exception",
            Error::InvalidIndexName { .. } => "invalid_index_name_exception",
            Error::Parsing(_) => "parsing_exception",
            Error::MapperParsing(_) => "mapper_parsing_exception",
            Error::StrictDynamicMapping { .. } => "strict_dynamic_mapping_exception",
            Error::IllegalArgument(_) => "illegal_argument_exception",
            Error::VersionConflict { .. } => "version_conflict_engine_exception",
            Error::DocumentMissing { .. } => "document_missing_exception",
            Error::ContentTooLong { .. } => "content_too_long_exception",
            Error::NoHandler { .. } => "no_handler_found_exception",
            Error::SearchPhase(_) => "search_phase_execution_exception",
            Error::ResourceNotFound(_) => "resource_not_found_exception",
            Error::PluginFailed(_) => "plugin_failure_exception",
            Error::Timeout(_) => "timeout_exception",
            Error::TranslogCorrupted { .. } => "translog_corrupted_exception",
            Error::ShuttingDown => "node_closed_exception",
            Error::MasterNotDiscovered(_) => "master_not_discovered_exception",
            Error::RepositoryMissing(_) => "repository_missing_exception",
            Error::SnapshotMissing { .. } => "snapshot_missing_exception",
            Error::InvalidSnapshotName { .. } => "invalid_snapshot_name_exception",
            Error::Repository { .. } => "repository_exception",
            Error::SnapshotRestore { .. } => "snapshot_restore_exception",
            Error::ConcurrentSnapshot { .. } => "concurrent_snapshot_execution_exception",
            Error::Io(_) | Error::Engine(_) | Error::Internal(_) => "exception",
        }
    }

    /// The HTTP status Elasticsearch answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            Error::ShardNotAvailable(_) => 503,
            Error::StalePrimaryTerm { .. } => 409,
            Error::Remote { status, .. } => *status,
            Error::IndexNotFound(_)
            | Error::DocumentMissing { .. }
            | Error::NoHandler { .. }
            | Error::ResourceNotFound(_)
            | Error::RepositoryMissing(_)
            | Error::SnapshotMissing { .. } => 404,
            Error::IndexAlreadyExists { .. }
            | Error::InvalidIndexName { .. }
            | Error::Parsing(_)
            | Error::MapperParsing(_)
            | Error::StrictDynamicMapping { .. }
            | Error::IllegalArgument(_)
            | Error::SearchPhase(_)
            | Error::InvalidSnapshotName { .. } => 400,
            Error::VersionConflict { .. } => 409,
            Error::ContentTooLong { .. } => 413,
            Error::Timeout(_) => 408,
            Error::ShuttingDown
            | Error::PluginFailed(_)
            | Error::MasterNotDiscovered(_)
            | Error::ConcurrentSnapshot { .. } => 503,
            Error::Repository { .. } | Error::SnapshotRestore { .. } => 500,
            Error::TranslogCorrupted { .. }
            | Error::Io(_)
            | Error::Engine(_)
            | Error::Internal(_) => 500,
        }
    }

    /// The `error` object (without the outer `status`), as it appears in bulk item results too.
    pub fn to_es_cause(&self) -> Value {
        if let Error::Remote { cause, .. } = self {
            return cause.clone();
        }
        let mut cause = json!({ "type": self.es_type(), "reason": self.to_string() });
        match self {
            Error::IndexNotFound(index) => {
                cause["index"] = json!(index);
                cause["resource.type"] = json!("index_or_alias");
                cause["resource.id"] = json!(index);
            }
            Error::IndexAlreadyExists { name, uuid } => {
                cause["index"] = json!(name);
                cause["index_uuid"] = json!(uuid);
            }
            Error::VersionConflict { index, .. } | Error::DocumentMissing { index, .. } => {
                cause["index"] = json!(index);
            }
            _ => {}
        }
        cause
    }

    /// The full Elasticsearch error body: `{"error": {...,"root_cause":[...]}, "status": N}`.
    pub fn to_es_body(&self) -> Value {
        let cause = self.to_es_cause();
        let mut error = cause.clone();
        error["root_cause"] = json!([cause]);
        json!({ "error": error, "status": self.status() })
    }
}

/// An error as it crosses the wire between nodes: its status and Elasticsearch cause.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WireError {
    pub status: u16,
    /// The cause object as JSON text.
    pub cause: String,
}

impl From<&Error> for WireError {
    fn from(err: &Error) -> WireError {
        WireError {
            status: err.status(),
            cause: err.to_es_cause().to_string(),
        }
    }
}

impl From<WireError> for Error {
    fn from(wire: WireError) -> Error {
        let cause = serde_json::from_str(&wire.cause)
            .unwrap_or_else(|_| json!({"type": "exception", "reason": wire.cause}));
        Error::Remote {
            status: wire.status,
            cause,
        }
    }
}

/// Shorthand for a 400 `illegal_argument_exception`.
pub fn illegal(reason: impl Into<String>) -> Error {
    Error::IllegalArgument(reason.into())
}

/// Shorthand for a 400 `parsing_exception`.
pub fn parsing(reason: impl Into<String>) -> Error {
    Error::Parsing(reason.into())
}
