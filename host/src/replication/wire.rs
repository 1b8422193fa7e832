//! The node-to-node messages of the data plane: forwarded writes, replicated operations,
//! recoveries, reads and refreshes. Payloads that are JSON to begin with travel as JSON text,
//! so MessagePack never has to guess at their shape.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result, WireError};
use crate::shard::translog::TranslogOp;
use crate::shard::{Condition, CopiesWritten, StoredDoc, WriteOp, WriteOutcome, WriteResult};

/// What one node asks another about shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DataRequest {
    /// Writes for the primary of a shard, which this node is expected to hold.
    PrimaryWrite {
        index: String,
        shard: u32,
        ops: Vec<WireWriteOp>,
    },
    /// Operations the primary of `primary_term` assigned, for the copy `allocation_id`.
    Replicate {
        index: String,
        shard: u32,
        allocation_id: String,
        primary_term: u64,
        ops: Vec<TranslogOp>,
        /// The primary's global checkpoint when it sent the batch.
        global_checkpoint: i64,
        /// The highest seq_no of an update or delete the primary had applied: an index
        /// operation above it needs no lookup on the replica.
        max_seq_no_of_updates: i64,
    },
    /// A recovering copy asks its primary to stage a commit and start replicating to it.
    StartRecovery {
        index: String,
        shard: u32,
        allocation_id: String,
        node_id: String,
        /// The cluster-state version in which the copy saw itself allocated.
        state_version: u64,
        /// A returning copy's local checkpoint, when it asks to catch up by operations.
        history_after: Option<i64>,
    },
    /// A piece of a staged file.
    FetchChunk {
        index: String,
        shard: u32,
        allocation_id: String,
        file: String,
        offset: u64,
        len: u32,
    },
    /// The copy has its files: the primary drops the staging.
    FinishRecovery {
        index: String,
        shard: u32,
        allocation_id: String,
    },
    /// Realtime GETs on the copy this node holds.
    Get {
        index: String,
        shard: u32,
        ids: Vec<String>,
    },
    /// Runs `operation` on this node's active copies of `index`.
    OnCopies {
        index: String,
        operation: CopyOperation,
    },
    /// Runs the query-and-fetch phase of a search on this node's copies.
    Search {
        /// `(index, shard numbers)` to search here.
        targets: Vec<(String, Vec<u32>)>,
        /// The search body and URL parameters, as the coordinator received them.
        body: String,
        params: Vec<(String, String)>,
        expression: String,
    },
    /// Snapshots this node's primary of a shard into a repository (for the coordinator of a
    /// snapshot running on another node).
    SnapshotShard {
        repository: String,
        index: String,
        shard: u32,
    },
    /// Downloads a shard of a snapshot as this node's copy of a restored index (for the
    /// coordinator of a restore); answered `Done` once every file is verified on disk.
    /// JSON of a [`crate::snapshot::ShardRestore`].
    RestoreShard(String),
    /// The recoveries this node runs or ran as the target.
    Recoveries,
}

/// Maintenance that `_refresh`, `_flush` and `_forcemerge` run on every started copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyOperation {
    Refresh,
    Flush,
    ForceMerge { max_segments: usize },
}

impl CopyOperation {
    pub fn run(self, copy: &crate::shard::Shard) -> Result<()> {
        match self {
            CopyOperation::Refresh => copy.refresh(),
            CopyOperation::Flush => copy.flush(),
            CopyOperation::ForceMerge { max_segments } => copy.force_merge(max_segments).map(drop),
        }
    }
}

/// The answer to a [`DataRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum DataResponse {
    Written(Vec<std::result::Result<WireOutcome, WireError>>),
    Replicated {
        /// The copy's local checkpoint after the batch (-1 while it is still recovering).
        local_checkpoint: i64,
    },
    RecoveryPlan {
        meta_json: String,
        files: Vec<(String, u64)>,
        /// Set when `files` are translog generations holding every operation after the
        /// copy's checkpoint up to this `_seq_no`; segment files otherwise.
        history_up_to: Option<i64>,
        /// The primary's global checkpoint when it staged the plan.
        global_checkpoint: i64,
    },
    Chunk {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Done,
    /// How many copies ran the operation.
    Ran {
        copies: usize,
    },
    Docs(Vec<Option<WireDoc>>),
    /// The shard-level search results ([`crate::search::ShardPhase`]): JSON for the hits
    /// (sources are raw JSON), MessagePack for tantivy's intermediate aggregations (they key
    /// maps by non-string keys, which JSON cannot carry).
    Searched {
        phase: String,
        #[serde(with = "serde_bytes")]
        aggs: Vec<u8>,
    },
    /// JSON of the shard's snapshot and what uploading it took ([`crate::snapshot::ShardUpload`]).
    ShardSnapshotted(String),
    Recoveries(Vec<super::progress::RecoveryRecord>),
    Failed(WireError),
}

impl DataResponse {
    pub fn failed(err: &Error) -> DataResponse {
        DataResponse::Failed(WireError::from(err))
    }

    pub fn searched(mut phase: crate::search::ShardPhase) -> Result<DataResponse> {
        let encode = |err: &dyn std::fmt::Display| Error::Internal(format!("search phase: {err}"));
        let aggs = rmp_serde::to_vec_named(&phase.aggs.take()).map_err(|err| encode(&err))?;
        let phase = serde_json::to_string(&phase).map_err(|err| encode(&err))?;
        Ok(DataResponse::Searched { phase, aggs })
    }

    pub fn into_search_phase(self) -> Result<crate::search::ShardPhase> {
        let DataResponse::Searched { phase, aggs } = self else {
            return Err(Error::Internal("the node answered something else".into()));
        };
        let decode = |err: &dyn std::fmt::Display| {
            Error::Internal(format!("unreadable search phase: {err}"))
        };
        let mut phase: crate::search::ShardPhase =
            serde_json::from_str(&phase).map_err(|err| decode(&err))?;
        phase.aggs = rmp_serde::from_slice(&aggs).map_err(|err| decode(&err))?;
        Ok(phase)
    }
}

/// A write as it is forwarded to the primary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireWriteOp {
    Index {
        id: String,
        #[serde(with = "serde_bytes")]
        source: Vec<u8>,
        create: bool,
        auto_id: bool,
        condition: Condition,
    },
    Delete {
        id: String,
        condition: Condition,
    },
    Update {
        id: String,
        /// JSON text of the partial document and upsert.
        doc: Option<String>,
        upsert: Option<String>,
        doc_as_upsert: bool,
        condition: Condition,
    },
}

fn json_text(value: &Value) -> String {
    value.to_string()
}

fn parse_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|err| Error::Parsing(format!("forwarded document: {err}")))
}

impl WireWriteOp {
    pub fn from_op(op: &WriteOp) -> WireWriteOp {
        match op {
            WriteOp::Index {
                id,
                source,
                raw,
                create,
                auto_id,
                condition,
            } => WireWriteOp::Index {
                id: id.clone(),
                source: raw
                    .clone()
                    .unwrap_or_else(|| json_text(source).into_bytes()),
                create: *create,
                auto_id: *auto_id,
                condition: *condition,
            },
            WriteOp::Delete { id, condition } => WireWriteOp::Delete {
                id: id.clone(),
                condition: *condition,
            },
            WriteOp::Update {
                id,
                doc,
                upsert,
                doc_as_upsert,
                condition,
            } => WireWriteOp::Update {
                id: id.clone(),
                doc: doc.as_ref().map(json_text),
                upsert: upsert.as_ref().map(json_text),
                doc_as_upsert: *doc_as_upsert,
                condition: *condition,
            },
        }
    }

    pub fn into_op(self) -> Result<WriteOp> {
        Ok(match self {
            WireWriteOp::Index {
                id,
                source,
                create,
                auto_id,
                condition,
            } => WriteOp::Index {
                id,
                source: serde_json::from_slice(&source)
                    .map_err(|err| Error::Parsing(format!("forwarded document: {err}")))?,
                raw: Some(source),
                create,
                auto_id,
                condition,
            },
            WireWriteOp::Delete { id, condition } => WriteOp::Delete { id, condition },
            WireWriteOp::Update {
                id,
                doc,
                upsert,
                doc_as_upsert,
                condition,
            } => WriteOp::Update {
                id,
                doc: doc.as_deref().map(parse_json).transpose()?,
                upsert: upsert.as_deref().map(parse_json).transpose()?,
                doc_as_upsert,
                condition,
            },
        })
    }
}

/// A write's outcome as the primary reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireOutcome {
    pub id: String,
    pub result: String,
    pub seq_no: i64,
    pub primary_term: u64,
    pub version: i64,
    #[serde(with = "serde_bytes")]
    pub source: Option<Vec<u8>>,
    /// Absent from nodes that predate it: they did not count.
    #[serde(default = "primary_only")]
    pub copies: CopiesWritten,
}

fn primary_only() -> CopiesWritten {
    CopiesWritten::PRIMARY
}

impl From<&WriteOutcome> for WireOutcome {
    fn from(o: &WriteOutcome) -> Self {
        WireOutcome {
            id: o.id.clone(),
            result: o.result.as_str().to_string(),
            seq_no: o.seq_no,
            primary_term: o.primary_term,
            version: o.version,
            source: o.source.as_ref().map(|s| s.to_vec()),
            copies: o.copies,
        }
    }
}

impl From<WireOutcome> for WriteOutcome {
    fn from(o: WireOutcome) -> Self {
        let result = match o.result.as_str() {
            "created" => WriteResult::Created,
            "updated" => WriteResult::Updated,
            "deleted" => WriteResult::Deleted,
            "not_found" => WriteResult::NotFound,
            _ => WriteResult::Noop,
        };
        WriteOutcome {
            id: o.id,
            result,
            seq_no: o.seq_no,
            primary_term: o.primary_term,
            version: o.version,
            source: o.source.map(Arc::new),
            copies: o.copies,
        }
    }
}

/// A document as a remote GET returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireDoc {
    pub id: String,
    pub seq_no: i64,
    pub primary_term: u64,
    pub version: i64,
    #[serde(with = "serde_bytes")]
    pub source: Vec<u8>,
}

impl From<&StoredDoc> for WireDoc {
    fn from(d: &StoredDoc) -> Self {
        WireDoc {
            id: d.id.clone(),
            seq_no: d.seq_no,
            primary_term: d.primary_term,
            version: d.version,
            source: d.source.to_vec(),
        }
    }
}

impl From<WireDoc> for StoredDoc {
    fn from(d: WireDoc) -> Self {
        StoredDoc {
            id: d.id,
            seq_no: d.seq_no,
            primary_term: d.primary_term,
            version: d.version,
            source: Arc::new(d.source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rpc::{decode, encode};

    #[test]
    fn an_outcome_from_a_node_that_did_not_count_copies_counts_the_primary() {
        #[derive(Serialize)]
        struct OutcomeBeforeCopies {
            id: String,
            result: String,
            seq_no: i64,
            primary_term: u64,
            version: i64,
            source: Option<()>,
        }
        let old = OutcomeBeforeCopies {
            id: "1".into(),
            result: "created".into(),
            seq_no: 4,
            primary_term: 2,
            version: 1,
            source: None,
        };
        let decoded: WireOutcome = decode(&encode(&old).expect("encodes")).expect("decodes");
        assert_eq!(decoded.copies, CopiesWritten::PRIMARY);
        assert_eq!(WriteOutcome::from(decoded).seq_no, 4);
    }
}
