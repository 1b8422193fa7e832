//! One shard copy: a tantivy index, its translog, sequence numbers and versions.
//!
//! The write path reads top to bottom in [`Shard::apply`]: resolve the current version, check
//! concurrency conditions, parse against the mapping, assign `_seq_no` in the primary term,
//! log, index, then (outside the lock) make the log durable. "Refresh" is a tantivy commit plus
//! a reader reload; until then, realtime GETs are served from the live version map.

pub mod checkpoint;
pub mod schema;
pub mod time_stats;
pub mod translog;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tantivy::directory::MmapDirectory;
use tantivy::schema::{IndexRecordOption, Value as _};
use tantivy::{
    DocAddress, DocSet, Index, IndexReader, ReloadPolicy, Searcher, TERMINATED, TantivyDocument,
    Term,
};
use tokio::sync::watch;

use self::schema::{DocMeta, ShardSchema};
use self::translog::{LogPosition, OpKind, OpRecord, Translog, TranslogOp, TranslogSync};
use self::writer::ShardWriter;
use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::mapping::document::parse_document;

/// Memory tantivy may buffer per shard before flushing a segment.
const INDEXING_BUFFER_BYTES: usize = 64 << 20;
/// Translog bytes a copy keeps past its commits by default, so that a copy that was away can
/// catch up by operations instead of files (`index.translog.retention.size`).
pub const TRANSLOG_RETENTION_BYTES: u64 = 512 << 20;

/// Which shard copy this is: index name and shard number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardId {
    pub index: String,
    pub shard: u32,
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}][{}]", self.index, self.shard)
    }
}

/// When the translog is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Before every write request is acknowledged.
    Request,
    /// In the background, every `sync_interval`.
    Async,
}

/// Gives a shard the index's current mapping and lets it grow the mapping dynamically.
pub trait MappingSource: Send + Sync {
    fn current(&self) -> Arc<Mapping>;
    /// Merges `grown` into the index mapping (persisting it) and returns the result.
    fn grow(&self, grown: &Mapping) -> Result<Arc<Mapping>>;
}

/// One requested write, as the coordinator hands it to the owning shard.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// `auto_id`: the id was generated for this request, so no earlier version can exist and
    /// the version lookup is skipped (Elasticsearch's append-only optimisation).
    Index {
        id: String,
        source: Value,
        raw: Option<Vec<u8>>,
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
        doc: Option<Value>,
        upsert: Option<Value>,
        doc_as_upsert: bool,
        condition: Condition,
    },
}

impl WriteOp {
    pub fn id(&self) -> &str {
        match self {
            WriteOp::Index { id, .. } | WriteOp::Delete { id, .. } | WriteOp::Update { id, .. } => {
                id
            }
        }
    }
}

/// Optimistic concurrency control: `if_seq_no` + `if_primary_term`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Condition {
    pub if_seq_no: Option<i64>,
    pub if_primary_term: Option<u64>,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Created,
    Updated,
    Deleted,
    NotFound,
    Noop,
}

impl WriteResult {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteResult::Created => "created",
            WriteResult::Updated => "updated",
            WriteResult::Deleted => "deleted",
            WriteResult::NotFound => "not_found",
            WriteResult::Noop => "noop",
        }
    }
}

/// The outcome of one successful write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub id: String,
    pub result: WriteResult,
    pub seq_no: i64,
    pub primary_term: u64,
    pub version: i64,
    /// The document after an update (for `_source` in update responses).
    pub source: Option<Arc<Vec<u8>>>,
    /// The copies of the shard the write reached before it was acknowledged.
    pub copies: CopiesWritten,
}

/// How many copies of its shard a write reached (`_shards` in a write's reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopiesWritten {
    /// The primary and every replica that took the write.
    pub successful: u32,
    /// Replicas that missed it and were removed from the in-sync set.
    pub failed: u32,
}

impl CopiesWritten {
    /// A write the primary has applied, before it is replicated.
    pub const PRIMARY: CopiesWritten = CopiesWritten {
        successful: 1,
        failed: 0,
    };
}

/// A stored document as GET returns it.
#[derive(Debug, Clone)]
pub struct StoredDoc {
    pub id: String,
    pub seq_no: i64,
    pub primary_term: u64,
    pub version: i64,
    pub source: Arc<Vec<u8>>,
}

/// The latest state of a document written since the last refresh.
#[derive(Debug, Clone)]
struct LiveVersion {
    seq_no: i64,
    primary_term: u64,
    version: i64,
    /// `None` for a delete tombstone.
    source: Option<Arc<Vec<u8>>>,
}

/// What the tantivy commit records about the translog (its payload).
#[derive(Debug, Serialize, Deserialize, Default)]
struct CommitPayload {
    /// Every operation up to this `_seq_no` is in the commit.
    local_checkpoint: i64,
    /// Operations above the local checkpoint that are in the commit too: a replica may have
    /// applied later batches before an earlier one arrived.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    processed_above: Vec<i64>,
    /// The translog generation to replay from.
    translog_generation: u64,
    /// The global checkpoint this copy knew at the commit.
    #[serde(default = "no_checkpoint")]
    global_checkpoint: i64,
}

fn no_checkpoint() -> i64 {
    -1
}

/// Counters exposed by `_nodes/stats` and `_cat`.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub index_total: AtomicU64,
    pub index_failed: AtomicU64,
    pub delete_total: AtomicU64,
    pub get_total: AtomicU64,
    pub query_total: AtomicU64,
    pub query_time_micros: AtomicU64,
    pub refresh_total: AtomicU64,
    pub flush_total: AtomicU64,
}

/// A copy's translog history, staged for a returning copy.
#[derive(Debug, Clone)]
pub struct StagedHistory {
    /// Translog generation files and their sizes.
    pub files: Vec<(String, u64)>,
    /// The highest `_seq_no` assigned when staged: every later operation goes to the copy.
    pub up_to: i64,
    pub global_checkpoint: i64,
}

/// The files of one commit, staged for a recovering copy or a snapshot.
#[derive(Debug, Clone)]
pub struct StagedCommit {
    /// tantivy's `meta.json` of the commit (segments and the commit payload).
    pub meta_json: String,
    /// Segment file names, relative to the shard's index directory.
    pub files: Vec<String>,
}

/// A copy this primary replicates to: its allocation id and the node holding it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReplicaTarget {
    pub allocation_id: String,
    pub node_id: String,
}

/// What the primary must send to its replicas after a batch: the operations it logged, in the
/// term it logged them, and the copies that must receive them (fixed under the write lock, so
/// a copy added by a recovery sees every operation either in its files or in a batch).
#[derive(Debug, Clone, Default)]
pub struct ReplicationBatch {
    pub primary_term: u64,
    pub ops: Vec<TranslogOp>,
    /// The primary's [`WriteState::max_seq_no_of_updates`] after the batch.
    pub max_seq_no_of_updates: i64,
    pub targets: Vec<ReplicaTarget>,
}

/// What a primary's batch did: per-op outcomes, what to replicate, and what to fsync.
#[derive(Debug)]
pub struct AppliedBatch {
    pub outcomes: Vec<Result<WriteOutcome>>,
    pub replication: ReplicationBatch,
    /// The translog position to make durable before acknowledging, if any.
    pub sync: Option<LogPosition>,
}

/// A shard copy: the primary (which assigns sequence numbers) or a replica (which applies the
/// primary's operations).
pub struct Shard {
    pub id: ShardId,
    pub schema: ShardSchema,
    index: Index,
    reader: IndexReader,
    state: Mutex<WriteState>,
    sync: Arc<TranslogSync>,
    refreshed_seq_no: watch::Sender<i64>,
    needs_refresh: AtomicBool,
    /// `index.translog.retention.size`, applied at the next roll.
    translog_retention: AtomicU64,
    pub counters: ShardCounters,
    /// Timestamp bounds for pruning, recomputed only after a refresh.
    pub time_stats: time_stats::TimeStatsCache,
    path: PathBuf,
}

struct WriteState {
    writer: ShardWriter,
    translog: Translog,
    max_seq_no: i64,
    local_checkpoint: checkpoint::LocalCheckpoint,
    /// Every operation at or below it is on every in-sync copy: computed by a primary from
    /// its replicas' reports, learned by a replica from its primary.
    global_checkpoint: i64,
    /// On a primary: the local checkpoints of its in-sync replicas.
    copy_checkpoints: checkpoint::CopyCheckpoints,
    primary_term: u64,
    live: HashMap<String, LiveVersion>,
    /// Operations logged by the batch being applied, for its replicas.
    pending_ops: Vec<TranslogOp>,
    /// Set after an I/O failure mid-write: the copy refuses writes until restarted.
    failure: Option<String>,
    /// The highest `_seq_no` of an operation that replaced or deleted a document: kept by a
    /// primary, learned by a replica from its primary's batches, and never below what this
    /// copy held when it opened, replayed or was promoted. An index operation above it cannot
    /// meet a newer version of its document on a replica (that version would be an update,
    /// counted here), so replicas skip the segment lookup for it, as Elasticsearch does.
    max_seq_no_of_updates: i64,
    /// Only a primary assigns sequence numbers; a replica takes them from its primary.
    primary: bool,
    /// The copies a primary replicates to.
    targets: Vec<ReplicaTarget>,
    /// Targets a recovery added, with the cluster-state version the recovering copy had seen:
    /// a routing older than that cannot know the copy yet and must not drop it.
    recovery_targets: HashMap<String, u64>,
}

impl WriteState {
    /// Counts operation `seq_no` as processed by this copy.
    fn processed(&mut self, seq_no: i64) {
        self.max_seq_no = self.max_seq_no.max(seq_no);
        self.local_checkpoint.processed(seq_no);
    }

    fn advance_global_checkpoint(&mut self) {
        let global = self.copy_checkpoints.global(self.local_checkpoint.get());
        self.global_checkpoint = self.global_checkpoint.max(global);
    }
}

/// `_seq_no` bookkeeping of one copy, as `_cat/shards` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqNoStats {
    pub max_seq_no: i64,
    pub local_checkpoint: i64,
    pub global_checkpoint: i64,
}

/// The current version of a document, whether live or committed.
struct Current {
    seq_no: i64,
    primary_term: u64,
    version: i64,
    source: Option<Arc<Vec<u8>>>,
}

impl Shard {
    /// Opens (or creates) the shard under `path`, replaying the translog past the last commit.
    pub fn open(
        id: ShardId,
        path: &Path,
        primary_term: u64,
        mappings: &dyn MappingSource,
    ) -> Result<Shard> {
        let index_dir = path.join("index");
        crate::durable::create_dir(&index_dir)?;
        let schema = ShardSchema::build();
        let directory = MmapDirectory::open(&index_dir)
            .map_err(|err| Error::Internal(format!("opening {}: {err}", index_dir.display())))?;
        let index = Index::open_or_create(directory, schema.schema.clone())?;
        schema::register_tokenizers(&index);
        let payload: CommitPayload = index
            .load_metas()?
            .payload
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(CommitPayload {
                local_checkpoint: -1,
                processed_above: Vec::new(),
                translog_generation: 1,
                global_checkpoint: -1,
            });
        let committed = checkpoint::LocalCheckpoint::restored(
            payload.local_checkpoint,
            &payload.processed_above,
        );
        let committed_max = payload
            .processed_above
            .last()
            .copied()
            .unwrap_or(payload.local_checkpoint);
        let shard_name = id.to_string();
        let (translog, report) = Translog::open(
            &path.join("translog"),
            payload.translog_generation,
            &shard_name,
        )?;
        let writer = index.writer_with_num_threads(1, INDEXING_BUFFER_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let sync = translog.sync_handle();
        let (refreshed_seq_no, _) = watch::channel(committed_max);
        let shard = Shard {
            id,
            schema,
            index,
            reader,
            state: Mutex::new(WriteState {
                writer: ShardWriter::new(writer),
                translog,
                max_seq_no: committed_max,
                local_checkpoint: committed.clone(),
                global_checkpoint: payload.global_checkpoint.min(payload.local_checkpoint),
                copy_checkpoints: Default::default(),
                primary_term,
                live: HashMap::new(),
                pending_ops: Vec::new(),
                failure: None,
                max_seq_no_of_updates: committed_max,
                primary: false,
                targets: Vec::new(),
                recovery_targets: HashMap::new(),
            }),
            sync,
            refreshed_seq_no,
            needs_refresh: AtomicBool::new(false),
            translog_retention: AtomicU64::new(TRANSLOG_RETENTION_BYTES),
            counters: ShardCounters::default(),
            time_stats: time_stats::TimeStatsCache::default(),
            path: path.to_path_buf(),
        };
        let replayed = shard.replay(report.operations, &committed, mappings)?;
        if replayed > 0 || report.truncated_bytes > 0 {
            tracing::info!(shard = %shard.id, replayed, truncated_bytes = report.truncated_bytes, "recovered shard from translog");
            shard.refresh()?;
        }
        Ok(shard)
    }

    fn lock(&self) -> Result<MutexGuard<'_, WriteState>> {
        self.state
            .lock()
            .map_err(|_| Error::Internal(format!("shard {} write lock poisoned", self.id)))
    }

    /// Re-applies the logged operations the commit lacks, in the order they were applied
    /// (each was the newest of its document then, so the result is the same).
    fn replay(
        &self,
        operations: Vec<TranslogOp>,
        committed: &checkpoint::LocalCheckpoint,
        mappings: &dyn MappingSource,
    ) -> Result<usize> {
        let mut state = self.lock()?;
        let mut replayed = 0;
        for op in operations {
            state.processed(op.seq_no);
            if committed.contains(op.seq_no) {
                continue;
            }
            let id_term = Term::from_field_text(self.schema.id, &op.id);
            state.writer.delete_term(id_term);
            if op.kind == OpKind::Index {
                let document = self.logged_document(&op, mappings)?;
                state.writer.add_document(document)?;
            }
            replayed += 1;
        }
        state.max_seq_no_of_updates = state.max_seq_no_of_updates.max(state.max_seq_no);
        Ok(replayed)
    }

    /// Applies a batch of writes in order on the primary; each op succeeds or fails on its own.
    /// Returns the outcomes, what the replicas must now receive, and (under `request`
    /// durability) the log position to fsync before acknowledging, so the caller can fsync
    /// while the replicas work.
    pub fn apply(
        &self,
        ops: Vec<WriteOp>,
        mappings: &dyn MappingSource,
        durability: Durability,
    ) -> Result<AppliedBatch> {
        let (outcomes, position, batch) = {
            let mut state = self.lock()?;
            if let Some(failure) = &state.failure {
                return Err(Error::Internal(format!(
                    "shard {} is failed: {failure}",
                    self.id
                )));
            }
            if !state.primary {
                return Err(Error::ShardNotAvailable(format!(
                    "{} is not the primary copy on this node",
                    self.id
                )));
            }
            let first_new = state.max_seq_no + 1;
            let mut outcomes = Vec::with_capacity(ops.len());
            for op in ops {
                let outcome = self.apply_one(&mut state, op, mappings);
                if let Err(Error::Io(err)) = &outcome {
                    state.failure = Some(err.to_string());
                }
                outcomes.push(outcome);
            }
            // Once per batch, not per operation: replicas hear of it with the next batch.
            state.advance_global_checkpoint();
            let mut batch = ReplicationBatch {
                primary_term: state.primary_term,
                ops: Vec::new(),
                max_seq_no_of_updates: state.max_seq_no_of_updates,
                targets: state.targets.clone(),
            };
            if !batch.targets.is_empty() {
                batch.ops = state.pending_ops.drain(..).collect();
            }
            state.pending_ops.clear();
            debug_assert!(batch.ops.iter().all(|op| op.seq_no >= first_new));
            let position = match state.translog.flush_buffer() {
                Ok(position) => position,
                Err(err) => {
                    state.failure = Some(err.to_string());
                    return Err(err);
                }
            };
            (outcomes, position, batch)
        };
        self.needs_refresh.store(true, Ordering::Release);
        let sync = (durability == Durability::Request && outcomes.iter().any(|o| o.is_ok()))
            .then_some(position);
        Ok(AppliedBatch {
            outcomes,
            replication: batch,
            sync,
        })
    }

    /// Fsyncs the translog up to `position` (concurrent callers share one fsync).
    pub fn sync_to(&self, position: LogPosition) -> Result<()> {
        self.sync.sync_to(position)
    }

    /// Applies operations the primary of `primary_term` assigned. Operations from an older
    /// primary are refused (fencing); a newer term is adopted. An operation older than what
    /// this copy holds for the same document is skipped, so batches may arrive in any order.
    /// Returns this copy's local checkpoint.
    /// `updates_up_to` is the primary's max seq_no of updates sent with a live batch; `None`
    /// (replayed history, buffered operations) looks every document up.
    pub fn apply_replicated(
        &self,
        primary_term: u64,
        ops: &[TranslogOp],
        updates_up_to: Option<i64>,
        mappings: &dyn MappingSource,
        durability: Durability,
    ) -> Result<i64> {
        let (position, local_checkpoint) = {
            let mut state = self.lock()?;
            if let Some(failure) = &state.failure {
                return Err(Error::Internal(format!(
                    "shard {} is failed: {failure}",
                    self.id
                )));
            }
            if primary_term < state.primary_term {
                return Err(Error::StalePrimaryTerm {
                    shard: self.id.to_string(),
                    term: primary_term,
                    current: state.primary_term,
                });
            }
            if state.primary && primary_term == state.primary_term {
                return Err(Error::ShardNotAvailable(format!(
                    "{} is a primary in term {primary_term} and takes no replicated operations",
                    self.id
                )));
            }
            state.primary_term = primary_term;
            if let Some(updates_up_to) = updates_up_to {
                state.max_seq_no_of_updates = state.max_seq_no_of_updates.max(updates_up_to);
            }
            for op in ops {
                let may_be_stale = updates_up_to.is_none()
                    || op.kind == OpKind::Delete
                    || op.seq_no <= state.max_seq_no_of_updates;
                if let Err(err) = self.apply_replicated_one(&mut state, op, may_be_stale, mappings)
                {
                    if matches!(err, Error::Io(_)) {
                        state.failure = Some(err.to_string());
                    }
                    return Err(err);
                }
            }
            if updates_up_to.is_none() {
                state.max_seq_no_of_updates = state.max_seq_no_of_updates.max(state.max_seq_no);
            }
            (state.translog.flush_buffer()?, state.local_checkpoint.get())
        };
        self.needs_refresh.store(true, Ordering::Release);
        if durability == Durability::Request {
            self.sync.sync_to(position)?;
        }
        Ok(local_checkpoint)
    }

    /// Applies one replicated operation unless this copy holds a newer version of its
    /// document; only a `may_be_stale` operation is looked up in the segments.
    fn apply_replicated_one(
        &self,
        state: &mut WriteState,
        op: &TranslogOp,
        may_be_stale: bool,
        mappings: &dyn MappingSource,
    ) -> Result<()> {
        state.processed(op.seq_no);
        let newest_seq_no = match state.live.get(&op.id) {
            Some(live) => Some(live.seq_no),
            None if may_be_stale => self.current_version(state, &op.id)?.map(|c| c.seq_no),
            None => None,
        };
        if newest_seq_no.is_some_and(|seq_no| seq_no >= op.seq_no) {
            return Ok(());
        }
        let id_term = Term::from_field_text(self.schema.id, &op.id);
        let source = match op.kind {
            OpKind::Index => {
                let document = self.logged_document(op, mappings)?;
                state.translog.append(op.record())?;
                // No version on this copy (none in the live map, none found in the segments,
                // or, above the primary's max seq_no of updates, none possible): an append.
                if newest_seq_no.is_some() {
                    state.writer.delete_term(id_term);
                }
                state.writer.add_document(document)?;
                self.counters.index_total.fetch_add(1, Ordering::Relaxed);
                Some(Arc::new(op.source.clone()))
            }
            OpKind::Delete => {
                state.translog.append(op.record())?;
                state.writer.delete_term(id_term);
                self.counters.delete_total.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        state.live.insert(
            op.id.clone(),
            LiveVersion {
                seq_no: op.seq_no,
                primary_term: op.primary_term,
                version: op.version,
                source,
            },
        );
        Ok(())
    }

    /// The tantivy document of a logged index operation (replayed or replicated), with the
    /// seq_no, version and term it was logged with; grows the mapping as the primary did.
    fn logged_document(
        &self,
        op: &TranslogOp,
        mappings: &dyn MappingSource,
    ) -> Result<TantivyDocument> {
        let source: Value = serde_json::from_slice(&op.source).map_err(|err| {
            Error::Internal(format!(
                "logged op {} of {} has invalid source: {err}",
                op.seq_no, self.id
            ))
        })?;
        let mut parsed = parse_document(&mappings.current(), &source)?;
        if let Some(grown) = parsed.updated_mapping.take() {
            let merged = mappings.grow(&grown)?;
            parsed = parse_document(&merged, &source)?;
        }
        let meta = DocMeta {
            seq_no: op.seq_no,
            version: op.version,
            primary_term: op.primary_term,
        };
        Ok(self.schema.document(&op.id, &op.source, meta, parsed))
    }

    /// Sets this copy's role from the routing table of cluster-state version `version`:
    /// primary or replica and its term. A primary replicates to the `started` copies, plus the
    /// ones a recovery added that this routing lists as `recovering` or is too old to know.
    pub fn set_role(
        &self,
        primary: bool,
        primary_term: u64,
        started: Vec<ReplicaTarget>,
        recovering: &std::collections::BTreeSet<String>,
        version: u64,
    ) {
        let Ok(mut state) = self.lock() else {
            return;
        };
        if primary && !state.primary {
            tracing::info!(shard = %self.id, term = primary_term, "this copy is now the primary");
            let max_seq_no = state.max_seq_no;
            state.local_checkpoint.fill_to(max_seq_no);
            // What it resyncs to the other replicas may include updates it only replayed.
            state.max_seq_no_of_updates = state.max_seq_no_of_updates.max(max_seq_no);
        }
        state.primary = primary;
        state.primary_term = state.primary_term.max(primary_term);
        if !primary {
            state.targets.clear();
            state.recovery_targets.clear();
            state.copy_checkpoints = Default::default();
            return;
        }
        // Only in-sync (started) copies hold the global checkpoint back, not recovering ones.
        state
            .copy_checkpoints
            .track(started.iter().map(|target| target.allocation_id.clone()));
        state.advance_global_checkpoint();
        let is_started = |id: &str| started.iter().any(|s| s.allocation_id == id);
        let recovery_targets = std::mem::take(&mut state.recovery_targets);
        let kept: Vec<ReplicaTarget> = state
            .targets
            .iter()
            .filter(|t| !is_started(&t.allocation_id))
            .filter(|t| {
                recovering.contains(&t.allocation_id)
                    || recovery_targets
                        .get(&t.allocation_id)
                        .is_some_and(|seen| *seen > version)
            })
            .cloned()
            .collect();
        state.recovery_targets = recovery_targets
            .into_iter()
            .filter(|(id, _)| kept.iter().any(|t| &t.allocation_id == id))
            .collect();
        state.targets = started.into_iter().chain(kept).collect();
    }

    /// Stops replicating to a copy (it failed and left the in-sync set).
    pub fn drop_target(&self, allocation_id: &str) {
        if let Ok(mut state) = self.lock() {
            state.targets.retain(|t| t.allocation_id != allocation_id);
            state.copy_checkpoints.forget(allocation_id);
            state.advance_global_checkpoint();
        }
    }

    /// On a primary: an in-sync replica reported its local checkpoint.
    pub fn copy_reported(&self, allocation_id: &str, local_checkpoint: i64) {
        if let Ok(mut state) = self.lock()
            && state.primary
        {
            state
                .copy_checkpoints
                .reported(allocation_id, local_checkpoint);
            state.advance_global_checkpoint();
        }
    }

    /// On a replica: the global checkpoint its primary computed (never above what this copy
    /// holds itself, never backwards).
    pub fn learn_global_checkpoint(&self, global_checkpoint: i64) {
        if let Ok(mut state) = self.lock()
            && !state.primary
        {
            let bounded = global_checkpoint.min(state.local_checkpoint.get());
            state.global_checkpoint = state.global_checkpoint.max(bounded);
        }
    }

    pub fn global_checkpoint(&self) -> i64 {
        self.lock()
            .map(|state| state.global_checkpoint)
            .unwrap_or(-1)
    }

    pub fn seq_no_stats(&self) -> SeqNoStats {
        self.lock()
            .map(|state| SeqNoStats {
                max_seq_no: state.max_seq_no,
                local_checkpoint: state.local_checkpoint.get(),
                global_checkpoint: state.global_checkpoint,
            })
            .unwrap_or(SeqNoStats {
                max_seq_no: -1,
                local_checkpoint: -1,
                global_checkpoint: -1,
            })
    }

    pub fn is_primary(&self) -> bool {
        self.lock().map(|state| state.primary).unwrap_or(false)
    }

    fn apply_one(
        &self,
        state: &mut WriteState,
        op: WriteOp,
        mappings: &dyn MappingSource,
    ) -> Result<WriteOutcome> {
        let current = match &op {
            WriteOp::Index { auto_id: true, .. } => None,
            _ => self.current_version(state, op.id())?,
        };
        let live_doc = current.as_ref().filter(|c| c.source.is_some());
        match op {
            WriteOp::Index {
                id,
                source,
                raw,
                create,
                auto_id: _,
                condition,
            } => {
                if create && let Some(existing) = live_doc {
                    return Err(self.conflict(
                        &id,
                        format!(
                            "document already exists (current version [{}])",
                            existing.version
                        ),
                    ));
                }
                self.check_condition(&id, condition, live_doc)?;
                let raw = match raw {
                    Some(raw) => raw,
                    None => serde_json::to_vec(&source)
                        .map_err(|err| Error::Internal(err.to_string()))?,
                };
                let result = if live_doc.is_some() {
                    WriteResult::Updated
                } else {
                    WriteResult::Created
                };
                self.index_document(state, id, source, raw, current.as_ref(), result, mappings)
            }
            WriteOp::Update {
                id,
                doc,
                upsert,
                doc_as_upsert,
                condition,
            } => {
                self.check_condition(&id, condition, live_doc)?;
                let Some(existing) = live_doc else {
                    let initial = match (upsert, doc_as_upsert, doc) {
                        (Some(upsert), _, _) => upsert,
                        (None, true, Some(doc)) => doc,
                        _ => {
                            return Err(Error::DocumentMissing {
                                index: self.id.index.clone(),
                                id,
                            });
                        }
                    };
                    let raw = serde_json::to_vec(&initial)
                        .map_err(|err| Error::Internal(err.to_string()))?;
                    return self.index_document(
                        state,
                        id,
                        initial,
                        raw,
                        current.as_ref(),
                        WriteResult::Created,
                        mappings,
                    );
                };
                let existing_source = existing.source.clone().unwrap_or_default();
                let mut merged: Value =
                    serde_json::from_slice(&existing_source).map_err(|err| {
                        Error::Internal(format!("stored source of [{id}] is not JSON: {err}"))
                    })?;
                let Some(partial) = doc else {
                    return Err(Error::IllegalArgument(
                        "Validation Failed: 1: script or doc is missing;".into(),
                    ));
                };
                let changed = merge_json(&mut merged, &partial);
                if !changed {
                    return Ok(WriteOutcome {
                        id,
                        result: WriteResult::Noop,
                        seq_no: existing.seq_no,
                        primary_term: existing.primary_term,
                        version: existing.version,
                        source: Some(existing_source),
                        copies: CopiesWritten::PRIMARY,
                    });
                }
                let raw =
                    serde_json::to_vec(&merged).map_err(|err| Error::Internal(err.to_string()))?;
                self.index_document(
                    state,
                    id,
                    merged,
                    raw,
                    current.as_ref(),
                    WriteResult::Updated,
                    mappings,
                )
            }
            WriteOp::Delete { id, condition } => {
                self.check_condition(&id, condition, live_doc)?;
                let version = current.as_ref().map_or(1, |c| c.version + 1);
                let result = if live_doc.is_some() {
                    WriteResult::Deleted
                } else {
                    WriteResult::NotFound
                };
                let seq_no = state.max_seq_no + 1;
                state.max_seq_no_of_updates = state.max_seq_no_of_updates.max(seq_no);
                let primary_term = state.primary_term;
                let record = OpRecord {
                    kind: OpKind::Delete,
                    seq_no,
                    primary_term,
                    version,
                    id: &id,
                    source: &[],
                };
                state.translog.append(record)?;
                if !state.targets.is_empty() {
                    state.pending_ops.push(record.to_owned_op());
                }
                state.processed(seq_no);
                state
                    .writer
                    .delete_term(Term::from_field_text(self.schema.id, &id));
                state.live.insert(
                    id.clone(),
                    LiveVersion {
                        seq_no,
                        primary_term,
                        version,
                        source: None,
                    },
                );
                self.counters.delete_total.fetch_add(1, Ordering::Relaxed);
                Ok(WriteOutcome {
                    id,
                    result,
                    seq_no,
                    primary_term,
                    version,
                    source: None,
                    copies: CopiesWritten::PRIMARY,
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn index_document(
        &self,
        state: &mut WriteState,
        id: String,
        source: Value,
        raw: Vec<u8>,
        current: Option<&Current>,
        result: WriteResult,
        mappings: &dyn MappingSource,
    ) -> Result<WriteOutcome> {
        if id.is_empty() || id.len() > 512 {
            return Err(Error::IllegalArgument(format!(
                "id [{id}] is too long or empty, must be between 1 and 512 bytes"
            )));
        }
        let mut parsed = parse_document(&mappings.current(), &source).inspect_err(|_| {
            self.counters.index_failed.fetch_add(1, Ordering::Relaxed);
        })?;
        if let Some(grown) = parsed.updated_mapping.take() {
            let merged = mappings.grow(&grown)?;
            // Another writer may have mapped a field differently in between: parse again
            // against what was actually committed.
            parsed = parse_document(&merged, &source)?;
        }
        let version = current.map_or(1, |c| if c.source.is_some() { c.version + 1 } else { 1 });
        let seq_no = state.max_seq_no + 1;
        if current.is_some() {
            // It replaces a document or a tombstone of one.
            state.max_seq_no_of_updates = state.max_seq_no_of_updates.max(seq_no);
        }
        let primary_term = state.primary_term;
        let meta = DocMeta {
            seq_no,
            version,
            primary_term,
        };
        let document = self.schema.document(&id, &raw, meta, parsed);
        let record = OpRecord {
            kind: OpKind::Index,
            seq_no,
            primary_term,
            version,
            id: &id,
            source: &raw,
        };
        state.translog.append(record)?;
        if !state.targets.is_empty() {
            state.pending_ops.push(record.to_owned_op());
        }
        state.processed(seq_no);
        if current.is_some() {
            // Only a document this copy holds needs deleting: a delete costs tantivy a term
            // lookup in every segment at commit time. New documents (auto-generated ids, and
            // explicit ones the lookup did not find) skip it.
            state
                .writer
                .delete_term(Term::from_field_text(self.schema.id, &id));
        }
        state.writer.add_document(document)?;
        let source = Arc::new(raw);
        state.live.insert(
            id.clone(),
            LiveVersion {
                seq_no,
                primary_term,
                version,
                source: Some(source.clone()),
            },
        );
        self.counters.index_total.fetch_add(1, Ordering::Relaxed);
        Ok(WriteOutcome {
            id,
            result,
            seq_no,
            primary_term,
            version,
            source: Some(source),
            copies: CopiesWritten::PRIMARY,
        })
    }

    fn conflict(&self, id: &str, reason: String) -> Error {
        Error::VersionConflict {
            index: self.id.index.clone(),
            id: id.to_string(),
            reason,
        }
    }

    fn check_condition(
        &self,
        id: &str,
        condition: Condition,
        current: Option<&Current>,
    ) -> Result<()> {
        let (Some(if_seq_no), Some(if_primary_term)) =
            (condition.if_seq_no, condition.if_primary_term)
        else {
            if condition.if_seq_no.is_some() || condition.if_primary_term.is_some() {
                return Err(Error::IllegalArgument(
                    "if_seq_no and if_primary_term must be used together".into(),
                ));
            }
            return Ok(());
        };
        match current {
            Some(doc) if doc.seq_no == if_seq_no && doc.primary_term == if_primary_term => Ok(()),
            Some(doc) => Err(self.conflict(id, format!(
                "required seqNo [{if_seq_no}], primary term [{if_primary_term}]. current document has seqNo [{}] and primary term [{}]",
                doc.seq_no, doc.primary_term
            ))),
            None => Err(self.conflict(id, format!(
                "required seqNo [{if_seq_no}], primary term [{if_primary_term}]. but no document was found"
            ))),
        }
    }

    fn current_version(&self, state: &WriteState, id: &str) -> Result<Option<Current>> {
        if let Some(live) = state.live.get(id) {
            return Ok(Some(Current {
                seq_no: live.seq_no,
                primary_term: live.primary_term,
                version: live.version,
                source: live.source.clone(),
            }));
        }
        Ok(self
            .committed_doc(&self.reader.searcher(), id)?
            .map(|doc| Current {
                seq_no: doc.seq_no,
                primary_term: doc.primary_term,
                version: doc.version,
                source: Some(doc.source),
            }))
    }

    fn committed_doc(&self, searcher: &Searcher, id: &str) -> Result<Option<StoredDoc>> {
        let Some(address) = self.find_id(searcher, id)? else {
            return Ok(None);
        };
        let doc: TantivyDocument = searcher.doc(address)?;
        Ok(Some(self.stored_doc(&doc)))
    }

    /// Where the live document `id` is in `searcher`'s view. Every write to a known id asks
    /// this, so it reads the `_id` postings of each segment directly: a scored term query
    /// would also build BM25 statistics over every segment and a collector per call.
    fn find_id(&self, searcher: &Searcher, id: &str) -> Result<Option<DocAddress>> {
        let term = Term::from_field_text(self.schema.id, id);
        for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
            let postings = segment
                .inverted_index(self.schema.id)?
                .read_postings(&term, IndexRecordOption::Basic)?;
            let Some(mut postings) = postings else {
                continue;
            };
            let mut doc = postings.doc();
            while doc != TERMINATED {
                if !segment.is_deleted(doc) {
                    return Ok(Some(DocAddress::new(ordinal as u32, doc)));
                }
                doc = postings.advance();
            }
        }
        Ok(None)
    }

    /// Reads the stored fields of a tantivy document.
    pub fn stored_doc(&self, doc: &TantivyDocument) -> StoredDoc {
        let text = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let int = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_i64())
                .unwrap_or_default()
        };
        StoredDoc {
            id: text(self.schema.id),
            seq_no: int(self.schema.seq_no),
            version: int(self.schema.version),
            primary_term: doc
                .get_first(self.schema.primary_term)
                .and_then(|v| v.as_u64())
                .unwrap_or_default(),
            source: Arc::new(
                doc.get_first(self.schema.source)
                    .and_then(|v| v.as_bytes())
                    .unwrap_or_default()
                    .to_vec(),
            ),
        }
    }

    /// Realtime GET: sees every acknowledged write, refreshed or not.
    pub fn get(&self, id: &str) -> Result<Option<StoredDoc>> {
        self.counters.get_total.fetch_add(1, Ordering::Relaxed);
        let searcher = {
            let state = self.lock()?;
            if let Some(live) = state.live.get(id) {
                return Ok(live.source.clone().map(|source| StoredDoc {
                    id: id.to_string(),
                    seq_no: live.seq_no,
                    primary_term: live.primary_term,
                    version: live.version,
                    source,
                }));
            }
            // Taken under the lock: a refresh cannot slip in between the map miss and the read.
            self.reader.searcher()
        };
        self.committed_doc(&searcher, id)
    }

    /// The point-in-time view searches run against.
    pub fn searcher(&self) -> Searcher {
        self.reader.searcher()
    }

    pub fn tantivy_index(&self) -> &Index {
        &self.index
    }

    /// Makes every write so far searchable (a tantivy commit plus a reader reload).
    pub fn refresh(&self) -> Result<()> {
        let mut state = self.lock()?;
        self.commit_locked(&mut state)
    }

    /// Refreshes only if something was written since the last refresh.
    pub fn refresh_if_needed(&self) -> Result<bool> {
        if !self.needs_refresh.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.refresh()?;
        Ok(true)
    }

    fn commit_locked(&self, state: &mut WriteState) -> Result<()> {
        self.needs_refresh.store(false, Ordering::Release);
        let payload = CommitPayload {
            local_checkpoint: state.local_checkpoint.get(),
            processed_above: state.local_checkpoint.above(),
            translog_generation: state.translog.generation(),
            global_checkpoint: state.global_checkpoint,
        };
        let payload =
            serde_json::to_string(&payload).map_err(|err| Error::Internal(err.to_string()))?;
        let mut prepared = state.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.reader.reload()?;
        // The commit holds every indexed version; a delete leaves no trace in it, so its
        // tombstone stays while an older operation on the document may still arrive (a batch
        // overtaken by a later one): until the local checkpoint passes it.
        let local_checkpoint = state.local_checkpoint.get();
        state
            .live
            .retain(|_, live| live.source.is_none() && live.seq_no > local_checkpoint);
        self.counters.refresh_total.fetch_add(1, Ordering::Relaxed);
        self.refreshed_seq_no.send_replace(state.max_seq_no);
        Ok(())
    }

    /// Commits and trims the translog: after a flush, start-up replays nothing.
    pub fn flush(&self) -> Result<()> {
        let mut state = self.lock()?;
        state
            .translog
            .roll_and_trim(self.translog_retention.load(Ordering::Relaxed))?;
        self.commit_locked(&mut state)?;
        self.counters.flush_total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Flushes, then hard-links the files of the resulting commit into `staging`: a point-in-time
    /// copy that costs no bytes and survives merges deleting the originals, while writes go on.
    /// Returns the commit's `meta.json` and the staged segment file names.
    pub fn stage_commit(&self, staging: &Path) -> Result<StagedCommit> {
        self.stage_commit_then(staging, None)
    }

    /// Stages a commit for a recovering copy and, under the same lock, starts replicating to
    /// it: every operation is then either in the staged files or sent to the copy.
    pub fn stage_for_recovery(
        &self,
        staging: &Path,
        target: ReplicaTarget,
        state_version: u64,
    ) -> Result<StagedCommit> {
        self.stage_commit_then(staging, Some((target, state_version)))
    }

    /// For a returning copy: hard-links this copy's translog history into `staging` and,
    /// under the same lock, starts replicating to the copy.
    pub fn stage_history_for_recovery(
        &self,
        staging: &Path,
        target: ReplicaTarget,
        state_version: u64,
    ) -> Result<StagedHistory> {
        let mut state = self.lock()?;
        self.add_recovery_target(&mut state, target, state_version)?;
        let files = state.translog.link_generations(staging)?;
        Ok(StagedHistory {
            files,
            up_to: state.max_seq_no,
            global_checkpoint: state.global_checkpoint,
        })
    }

    fn add_recovery_target(
        &self,
        state: &mut WriteState,
        target: ReplicaTarget,
        state_version: u64,
    ) -> Result<()> {
        if !state.primary {
            return Err(Error::ShardNotAvailable(format!(
                "{} is not the primary copy on this node",
                self.id
            )));
        }
        state
            .targets
            .retain(|t| t.allocation_id != target.allocation_id);
        state
            .recovery_targets
            .insert(target.allocation_id.clone(), state_version);
        state.targets.push(target);
        Ok(())
    }

    fn stage_commit_then(
        &self,
        staging: &Path,
        add_target: Option<(ReplicaTarget, u64)>,
    ) -> Result<StagedCommit> {
        let mut state = self.lock()?;
        if let Some((target, state_version)) = add_target {
            self.add_recovery_target(&mut state, target, state_version)?;
        }
        state
            .translog
            .roll_and_trim(self.translog_retention.load(Ordering::Relaxed))?;
        self.commit_locked(&mut state)?;
        let index_dir = self.path.join("index");
        let metas = self.index.load_metas()?;
        let meta_json = std::fs::read_to_string(index_dir.join("meta.json"))?;
        std::fs::create_dir_all(staging)?;
        let mut files = Vec::new();
        for segment in &metas.segments {
            for relative in segment.list_files() {
                let source = index_dir.join(&relative);
                if !source.exists() {
                    continue;
                }
                let name = relative.to_string_lossy().to_string();
                std::fs::hard_link(&source, staging.join(&name))?;
                files.push(name);
            }
        }
        drop(state);
        files.sort();
        Ok(StagedCommit { meta_json, files })
    }

    /// Merges the shard's segments into one when it has more than `max_segments`
    /// (`_forcemerge`); writes to this shard wait meanwhile.
    pub fn force_merge(&self, max_segments: usize) -> Result<usize> {
        let mut state = self.lock()?;
        self.commit_locked(&mut state)?;
        let segments = self.index.searchable_segment_ids()?;
        if segments.len() <= max_segments.max(1) {
            return Ok(segments.len());
        }
        state.writer.merge(&segments).wait()?;
        state.writer.garbage_collect_files().wait()?;
        self.reader.reload()?;
        Ok(self.index.searchable_segment_ids()?.len())
    }

    /// Segments currently searchable.
    pub fn segment_count(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// Fsyncs the translog (for `async` durability, called periodically).
    pub fn sync_translog(&self) -> Result<()> {
        let position = {
            let mut state = self.lock()?;
            state.translog.flush_buffer()?
        };
        self.sync.sync_to(position)
    }

    /// Waits until a refresh has made `seq_no` searchable (`refresh=wait_for`).
    pub async fn wait_for_refresh(&self, seq_no: i64) {
        let mut receiver = self.refreshed_seq_no.subscribe();
        // The sender lives as long as the shard, which the caller holds.
        let _ = receiver.wait_for(|refreshed| *refreshed >= seq_no).await;
    }

    /// The highest `_seq_no` assigned.
    pub fn max_seq_no(&self) -> i64 {
        self.lock().map(|state| state.max_seq_no).unwrap_or(-1)
    }

    pub fn primary_term(&self) -> u64 {
        self.lock()
            .map(|state| state.primary_term)
            .unwrap_or_default()
    }

    /// Sets how many translog bytes the next rolls keep as history.
    pub fn set_translog_retention(&self, bytes: u64) {
        self.translog_retention.store(bytes, Ordering::Relaxed);
    }

    /// Translog operation count and bytes.
    pub fn translog_stats(&self) -> (u64, u64) {
        self.lock()
            .map(|state| (state.translog.operations(), state.translog.size_in_bytes()))
            .unwrap_or_default()
    }

    /// Bytes of this copy's index files (Elasticsearch's `store.size`; the translog, history
    /// included, is reported apart).
    pub fn store_size(&self) -> u64 {
        dir_size(&self.path.join("index"))
    }

    /// Last position handed to the OS (for a final sync at shutdown).
    pub fn log_position(&self) -> Result<LogPosition> {
        let mut state = self.lock()?;
        state.translog.flush_buffer()
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Deep-merges `partial` into `target` as a partial-document update does; returns whether
/// anything changed (so unchanged updates are a `noop`).
pub fn merge_json(target: &mut Value, partial: &Value) -> bool {
    match (target, partial) {
        (Value::Object(target), Value::Object(partial)) => {
            let mut changed = false;
            for (key, value) in partial {
                match target.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        changed |= merge_json(existing, value);
                    }
                    Some(existing) if existing == value => {}
                    _ => {
                        target.insert(key.clone(), value.clone());
                        changed = true;
                    }
                }
            }
            changed
        }
        (target, partial) => {
            let changed = target != partial;
            *target = partial.clone();
            changed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A mapping that grows in memory only.
    struct Dynamic(Mutex<Arc<Mapping>>);

    impl MappingSource for Dynamic {
        fn current(&self) -> Arc<Mapping> {
            self.0.lock().map(|m| m.clone()).unwrap_or_default()
        }

        fn grow(&self, grown: &Mapping) -> Result<Arc<Mapping>> {
            let mut current = self
                .0
                .lock()
                .map_err(|_| Error::Internal("poisoned".into()))?;
            *current = Arc::new(current.merge(grown)?);
            Ok(current.clone())
        }
    }

    fn shard_id() -> ShardId {
        ShardId {
            index: "logs".into(),
            shard: 0,
        }
    }

    /// A mapping that starts empty and grows dynamically.
    fn no_mappings() -> Dynamic {
        Dynamic(Mutex::new(Arc::new(Mapping::default())))
    }

    /// A fresh copy (a replica until told otherwise), its directory and dynamic mappings.
    fn replica_copy() -> (tempfile::TempDir, Dynamic, Shard) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mappings = no_mappings();
        let replica = Shard::open(shard_id(), dir.path(), 1, &mappings).expect("open");
        (dir, mappings, replica)
    }

    fn op(seq_no: i64, id: &str) -> TranslogOp {
        TranslogOp {
            kind: OpKind::Index,
            seq_no,
            primary_term: 1,
            version: 1,
            id: id.to_string(),
            source: format!(r#"{{"n": {seq_no}}}"#).into_bytes(),
        }
    }

    /// Applies one batch from the primary of term 1, which says its updates reach
    /// `updates_up_to`; returns the replica's local checkpoint.
    fn replicate(
        replica: &Shard,
        mappings: &Dynamic,
        ops: &[TranslogOp],
        updates_up_to: i64,
    ) -> i64 {
        replica
            .apply_replicated(1, ops, Some(updates_up_to), mappings, Durability::Request)
            .expect("replicated")
    }

    #[test]
    fn a_delete_overtaking_the_index_it_follows_stays_deleted_across_a_commit() {
        let (_dir, mappings, replica) = replica_copy();
        let delete = TranslogOp {
            kind: OpKind::Delete,
            source: Vec::new(),
            version: 2,
            ..op(1, "a")
        };
        replicate(&replica, &mappings, &[delete], 1);
        replica.refresh().expect("commit");
        let checkpoint = replicate(&replica, &mappings, &[op(0, "a")], -1);
        assert_eq!(checkpoint, 1);
        replica.refresh().expect("refresh");
        assert!(
            replica.get("a").expect("get").is_none(),
            "the older index operation must not bring the document back"
        );
    }

    #[test]
    fn an_update_overtaking_the_create_it_follows_keeps_the_newer_version() {
        let (_dir, mappings, replica) = replica_copy();
        // The primary created `a` (seq 0, no update yet, so its batch says updates reach -1)
        // and then updated it (seq 1): the update's batch arrives first.
        let update = TranslogOp {
            version: 2,
            ..op(1, "a")
        };
        replicate(&replica, &mappings, &[update], 1);
        // After a commit only the segments know the update.
        replica.refresh().expect("commit");
        replicate(&replica, &mappings, &[op(0, "a")], -1);
        replica.refresh().expect("refresh");
        let doc = replica.get("a").expect("get").expect("the document exists");
        assert_eq!(
            (doc.seq_no, doc.version),
            (1, 2),
            "the replica remembers the update's seq_no, so the late create is looked up and dropped"
        );
    }

    fn live_docs(shard: &Shard) -> u64 {
        shard.refresh().expect("refresh");
        shard.searcher().num_docs()
    }

    #[test]
    fn a_primary_replaces_a_document_it_holds_and_appends_new_ones() {
        let (_dir, mappings, primary) = replica_copy();
        primary.set_role(true, 1, Vec::new(), &Default::default(), 0);
        let index = |id: &str, n: i64| WriteOp::Index {
            id: id.to_string(),
            source: json!({ "n": n }),
            raw: None,
            create: false,
            auto_id: false,
            condition: Condition::default(),
        };
        let apply = |op: WriteOp| {
            primary
                .apply(vec![op], &mappings, Durability::Request)
                .expect("applied")
        };
        apply(index("a", 1));
        apply(index("a", 2));
        assert_eq!(
            live_docs(&primary),
            1,
            "replaced while only the live map knew it"
        );
        apply(index("a", 3));
        apply(index("b", 1));
        assert_eq!(
            live_docs(&primary),
            2,
            "replaced once only the segments knew it"
        );
        let doc = primary.get("a").expect("get").expect("a exists");
        assert_eq!(doc.version, 3);
    }

    #[test]
    fn a_replica_replaces_a_document_it_holds_even_above_the_updates_it_was_told_of() {
        let (_dir, mappings, replica) = replica_copy();
        replicate(&replica, &mappings, &[op(0, "a"), op(1, "b")], -1);
        assert_eq!(live_docs(&replica), 2);
        // The update of `a` comes with the primary's max seq_no of updates: looked up, replaced.
        let update = TranslogOp {
            version: 2,
            ..op(2, "a")
        };
        replicate(&replica, &mappings, &[update, op(3, "c")], 2);
        assert_eq!(live_docs(&replica), 3, "a replaced, c appended");
        let doc = replica.get("a").expect("get").expect("a exists");
        assert_eq!((doc.seq_no, doc.version), (2, 2));
    }

    #[test]
    fn a_replica_restarted_after_out_of_order_batches_keeps_every_operation() {
        let (dir, mappings, replica) = replica_copy();
        // The later batch arrives first, a commit happens, then the earlier batch arrives.
        let checkpoint = replicate(&replica, &mappings, &[op(1, "b")], -1);
        assert_eq!(checkpoint, -1, "operation 0 is still missing");
        replica.refresh().expect("commit");
        let checkpoint = replicate(&replica, &mappings, &[op(0, "a")], -1);
        assert_eq!(checkpoint, 1);
        // A crash: the writer goes away without another commit.
        drop(replica);
        let reopened = Shard::open(shard_id(), dir.path(), 1, &mappings).expect("reopen");
        reopened.refresh().expect("refresh");
        for id in ["a", "b"] {
            assert!(
                reopened.get(id).expect("get").is_some(),
                "document [{id}] survived the restart"
            );
        }
        assert_eq!(
            reopened.seq_no_stats(),
            SeqNoStats {
                max_seq_no: 1,
                local_checkpoint: 1,
                global_checkpoint: -1,
            }
        );
    }
}
