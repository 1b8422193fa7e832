//! Peer recovery: how a new copy gets every operation its primary has. The primary flushes,
//! hard-links the files of that commit into a staging directory and, under the same write
//! lock, starts replicating to the new copy; the copy fetches the staged files in chunks,
//! opens them, applies the batches it buffered meanwhile, and asks the master to mark it
//! started and in sync. No operation can fall between the files and the batches.
//!
//! A copy coming back to a node that still holds its files, in the primary term they were
//! built in, catches up by operations instead: it tells the primary its local checkpoint, and
//! when the primary's translog history still holds every operation after it, the primary
//! stages those translog generations (the same hard-link staging) rather than its segments,
//! and the copy applies the operations it missed.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::SHARD_REQUEST_TIMEOUT;
use super::progress::{RecoveryKind, RecoveryPlan};
use super::wire::{DataRequest, DataResponse};
use crate::api::blocking;
use crate::cluster::state::StateCommand;
use crate::durable::write_atomically;
use crate::error::{Error, Result};
use crate::index::{CopyMarker, IndexService};
use crate::node::NodeState;
use crate::shard::translog::{Coverage, read_operations};
use crate::shard::{ReplicaTarget, Shard};

/// Bytes per fetched chunk.
const CHUNK_BYTES: u32 = 1 << 20;

fn staging_dir(index: &IndexService, number: u32, allocation_id: &str) -> std::path::PathBuf {
    index
        .copy_dir(number)
        .join("recovery")
        .join(sanitize(allocation_id))
}

/// Allocation ids and file names come from peers: keep them to one path component.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

fn primary_copy(
    node: &NodeState,
    index: &str,
    number: u32,
) -> Result<(Arc<IndexService>, Arc<Shard>)> {
    let service = node.indices.get(index)?;
    let shard = service
        .shard(number)
        .filter(|shard| shard.is_primary() && node.copies.active(index, number).is_some())
        .ok_or_else(|| {
            Error::ShardNotAvailable(format!("[{index}][{number}] has no primary on this node"))
        })?;
    Ok((service, shard))
}

/// The copy a primary is asked to recover.
pub struct RecoveringCopy {
    pub target: ReplicaTarget,
    /// The cluster-state version in which the copy saw itself allocated.
    pub state_version: u64,
    /// The copy's local checkpoint when it asks to catch up by operations.
    pub history_after: Option<i64>,
}

/// Primary side: stages the operations a returning copy missed, when the history still holds
/// them all, or else a commit; and starts replicating to the copy.
pub async fn start(
    node: &NodeState,
    index: &str,
    number: u32,
    copy: RecoveringCopy,
) -> Result<DataResponse> {
    let (service, shard) = primary_copy(node, index, number)?;
    let staging = staging_dir(&service, number, &copy.target.allocation_id);
    blocking(move || {
        let clear = |staging: &std::path::Path| -> Result<()> {
            if staging.exists() {
                std::fs::remove_dir_all(staging)?;
            }
            Ok(())
        };
        clear(&staging)?;
        if let Some(after) = copy.history_after {
            let history = shard.stage_history_for_recovery(
                &staging,
                copy.target.clone(),
                copy.state_version,
            )?;
            let mut coverage = Coverage::new(after, history.up_to);
            // Only generations holding something the copy lacks are sent.
            let mut needed = Vec::new();
            for (name, size) in history.files {
                let mut holds_missed = false;
                for op in read_operations(&staging.join(&name))? {
                    holds_missed |= coverage.wants(op.seq_no);
                    coverage.note(op.seq_no);
                }
                if holds_missed {
                    needed.push((name, size));
                }
            }
            if coverage.complete() {
                return Ok(DataResponse::RecoveryPlan {
                    meta_json: String::new(),
                    files: needed,
                    history_up_to: Some(history.up_to),
                    global_checkpoint: history.global_checkpoint,
                });
            }
            tracing::info!(shard = %shard.id, after, up_to = history.up_to, "the translog history no longer holds every operation the copy missed; copying files");
            clear(&staging)?;
        }
        let staged = shard.stage_for_recovery(&staging, copy.target, copy.state_version)?;
        let mut files = Vec::with_capacity(staged.files.len());
        for name in staged.files {
            let size = std::fs::metadata(staging.join(&name))?.len();
            files.push((name, size));
        }
        Ok(DataResponse::RecoveryPlan {
            meta_json: staged.meta_json,
            files,
            history_up_to: None,
            global_checkpoint: shard.global_checkpoint(),
        })
    })
    .await
}

/// Primary side: one chunk of a staged file.
pub async fn chunk(
    node: &NodeState,
    index: &str,
    number: u32,
    allocation_id: &str,
    file: &str,
    offset: u64,
    len: u32,
) -> Result<DataResponse> {
    let service = node.indices.get(index)?;
    if sanitize(file) != file || file.is_empty() {
        return Err(Error::IllegalArgument(format!(
            "invalid recovery file name [{file}]"
        )));
    }
    let path = staging_dir(&service, number, allocation_id).join(file);
    let len = len.min(CHUNK_BYTES * 4) as usize;
    blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut handle = std::fs::File::open(&path)?;
        handle.seek(SeekFrom::Start(offset))?;
        let mut data = Vec::with_capacity(len);
        handle.take(len as u64).read_to_end(&mut data)?;
        Ok(DataResponse::Chunk { data })
    })
    .await
}

/// Primary side: the copy has everything; drop the staging.
pub async fn finish(
    node: &NodeState,
    index: &str,
    number: u32,
    allocation_id: &str,
) -> Result<DataResponse> {
    let service = node.indices.get(index)?;
    let staging = staging_dir(&service, number, allocation_id);
    blocking(move || {
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        Ok(DataResponse::Done)
    })
    .await
}

/// What a recovering copy is and where it recovers from.
#[derive(Debug, Clone)]
pub struct RecoveryTarget {
    pub index: String,
    pub shard: u32,
    pub allocation_id: String,
    pub primary_node: String,
    pub primary_term: u64,
    /// The cluster-state version in which this copy saw itself allocated.
    pub state_version: u64,
}

/// Copy side: recovers a copy from its primary, then reports it started. The caller has
/// registered the copy as recovering. On failure the partial copy is removed.
pub async fn recover(node: Arc<NodeState>, target: &RecoveryTarget) -> Result<()> {
    let (index, number, allocation_id) = (&target.index, target.shard, &target.allocation_id);
    let started = std::time::Instant::now();
    // A node just back may learn of the primary's node from the cluster state before gossip
    // has found it; give gossip a moment rather than failing the copy at once.
    let gossip_deadline = started + std::time::Duration::from_secs(5);
    while super::node_address(&node, &target.primary_node).is_none()
        && std::time::Instant::now() < gossip_deadline
        && node.copies.is_recovering(index, number, allocation_id)
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let result = copy_from_primary(&node, target).await;
    match &result {
        Ok(bytes) => {
            tracing::info!(index, shard = number, copy = %allocation_id, bytes, took_ms = started.elapsed().as_millis() as u64, "recovered shard copy from its primary");
            let command = StateCommand::ShardStarted {
                index: index.clone(),
                shard: number as usize,
                allocation_id: allocation_id.clone(),
            };
            if let Err(err) = node
                .cluster
                .consensus
                .propose(command, SHARD_REQUEST_TIMEOUT)
                .await
            {
                tracing::warn!(index, shard = number, error = %err, "could not report the recovered copy started");
            }
        }
        Err(err) => {
            tracing::warn!(index, shard = number, copy = %allocation_id, error = %err, "recovery failed");
            node.copies.forget(index, number);
            if let Ok(service) = node.indices.get(index) {
                // A copy of this term stays for the next attempt to catch up by operations
                // (operations it applied came from the primary); a partial file copy goes.
                let reusable = service
                    .copy_marker(number)
                    .is_some_and(|marker| marker.built_in_term(target.primary_term));
                service.close_copy_in_background(number, !reusable);
            }
        }
    }
    result.map(|_| ())
}

async fn copy_from_primary(node: &Arc<NodeState>, target: &RecoveryTarget) -> Result<u64> {
    let (index, number, allocation_id) = (
        target.index.as_str(),
        target.shard,
        target.allocation_id.as_str(),
    );
    if !node.copies.is_recovering(index, number, allocation_id) {
        return Err(super::superseded(index, number, allocation_id));
    }
    let service = node.indices.get(index)?;
    let reused = {
        let service = service.clone();
        let term = target.primary_term;
        blocking(move || reusable_copy(&service, number, term)).await?
    };
    let history_after = reused
        .as_ref()
        .map(|shard| shard.seq_no_stats().local_checkpoint);
    let fetcher = Fetcher { node, target };
    let plan = fetcher
        .ask(DataRequest::StartRecovery {
            index: index.to_string(),
            shard: number,
            allocation_id: allocation_id.to_string(),
            node_id: node.identity.node_id.clone(),
            state_version: target.state_version,
            history_after,
        })
        .await?;
    let DataResponse::RecoveryPlan {
        meta_json,
        files,
        history_up_to,
        global_checkpoint,
    } = plan
    else {
        return Err(Error::Internal(
            "the primary answered something else".into(),
        ));
    };
    for (name, _) in &files {
        if sanitize(name) != *name || name.is_empty() {
            return Err(Error::Internal(format!(
                "primary sent an invalid file name [{name}]"
            )));
        }
    }
    let become_replica = |shard: &Shard| {
        shard.set_role(
            false,
            target.primary_term,
            Vec::new(),
            &Default::default(),
            0,
        )
    };
    let marker = CopyMarker {
        allocation_id: allocation_id.to_string(),
        primary_term: target.primary_term,
    };
    let (shard, copied, progress) = match (reused.zip(history_after), history_up_to) {
        (Some((shard, after)), Some(up_to)) => {
            let progress = node.recoveries.begin(RecoveryPlan {
                index,
                shard: number,
                kind: RecoveryKind::Peer,
                source: &target.primary_node,
                files: 0,
                bytes: 0,
            });
            let history_dir = service.copy_dir(number).join("history");
            let copied = fetcher.fetch_all(&files, &history_dir, None).await?;
            become_replica(&shard);
            let replayed = {
                let shard = shard.clone();
                let service = service.clone();
                let names: Vec<String> = files.iter().map(|(name, _)| name.clone()).collect();
                let term = target.primary_term;
                blocking(move || {
                    let replayed = replay_history(
                        &shard,
                        &history_dir,
                        &names,
                        after,
                        up_to,
                        term,
                        service.meta.as_ref(),
                    );
                    std::fs::remove_dir_all(&history_dir)?;
                    let replayed = replayed?;
                    service.write_copy_marker(number, &marker)?;
                    Ok(replayed)
                })
                .await?
            };
            progress.replayed_operations(replayed);
            shard.learn_global_checkpoint(global_checkpoint);
            tracing::info!(
                index,
                shard = number,
                after,
                up_to,
                replayed,
                "caught up by operations from the primary's history"
            );
            (shard, copied, progress)
        }
        (reused, _) => {
            if reused.is_some() {
                drop(reused);
                let service = service.clone();
                blocking(move || service.remove_copy(number)).await?;
            }
            let index_dir = service.copy_dir(number).join("index");
            let progress = node.recoveries.begin(RecoveryPlan {
                index,
                shard: number,
                kind: RecoveryKind::Peer,
                source: &target.primary_node,
                files: files.len() as u64,
                bytes: files.iter().map(|(_, size)| size).sum(),
            });
            let copied = fetcher
                .fetch_all(&files, &index_dir, Some(&progress))
                .await?;
            let service = service.clone();
            let shard = blocking(move || {
                // The commit goes last, with the directory naming every copied file, so a
                // commit that survives a power loss has its files too.
                write_atomically(&index_dir.join("meta.json"), meta_json.as_bytes())?;
                service.write_copy_marker(number, &marker)?;
                service.open_copy(number)
            })
            .await?;
            become_replica(&shard);
            (shard, copied, progress)
        }
    };
    // Apply what the primary replicated while the files were copied, until nothing is left;
    // the copy turns active atomically with the last drain.
    while let Some(batches) = node
        .copies
        .drain_or_activate(index, number, allocation_id)?
    {
        let shard = shard.clone();
        let meta = service.meta.clone();
        let durability = meta.settings().translog_durability;
        blocking(move || {
            for (term, ops) in batches {
                shard.apply_replicated(term, &ops, None, meta.as_ref(), durability)?;
            }
            Ok(())
        })
        .await?;
    }
    // Searchable before it is reported started, as a started copy takes searches at once.
    {
        let shard = shard.clone();
        blocking(move || shard.refresh()).await?;
    }
    let _ = fetcher
        .ask(DataRequest::FinishRecovery {
            index: index.to_string(),
            shard: number,
            allocation_id: allocation_id.to_string(),
        })
        .await;
    progress.finish();
    Ok(copied)
}

/// The copy on disk when it can catch up by operations: built in the shard's current primary
/// term (so everything it holds came from the current primary) and readable. Anything else on
/// disk is removed.
fn reusable_copy(
    service: &IndexService,
    number: u32,
    primary_term: u64,
) -> Result<Option<Arc<Shard>>> {
    let reusable = service
        .copy_marker(number)
        .is_some_and(|marker| marker.built_in_term(primary_term));
    if reusable {
        match service.open_copy(number) {
            Ok(shard) => return Ok(Some(shard)),
            Err(err) => {
                tracing::warn!(index = service.name(), shard = number, error = %err, "the copy on disk does not open; recovering from files");
            }
        }
    }
    service.remove_copy(number)?;
    Ok(None)
}

/// Applies the operations of the staged history after `after` up to `up_to`, checking that it
/// holds every one; returns how many it applied.
fn replay_history(
    shard: &Shard,
    dir: &std::path::Path,
    names: &[String],
    after: i64,
    up_to: i64,
    primary_term: u64,
    mappings: &dyn crate::shard::MappingSource,
) -> Result<u64> {
    let mut coverage = Coverage::new(after, up_to);
    let mut replayed = 0u64;
    for name in names {
        let ops: Vec<_> = read_operations(&dir.join(name))?
            .into_iter()
            .filter(|op| coverage.wants(op.seq_no))
            .collect();
        for op in &ops {
            coverage.note(op.seq_no);
        }
        // Each operation lands once whatever the order: a document keeps its newest version.
        shard.apply_replicated(
            primary_term,
            &ops,
            None,
            mappings,
            crate::shard::Durability::Async,
        )?;
        replayed += ops.len() as u64;
    }
    if !coverage.complete() {
        return Err(Error::Internal(format!(
            "the primary's history lacks operations between {after} and {up_to}"
        )));
    }
    shard.sync_translog()?;
    Ok(replayed)
}

/// Asks the primary's node for the recovery's pieces.
struct Fetcher<'a> {
    node: &'a Arc<NodeState>,
    target: &'a RecoveryTarget,
}

impl Fetcher<'_> {
    async fn ask(&self, request: DataRequest) -> Result<DataResponse> {
        super::ask(self.node, &self.target.primary_node, request).await
    }

    /// Fetches the staged `files` into `dir`, fsynced; returns the bytes copied.
    async fn fetch_all(
        &self,
        files: &[(String, u64)],
        dir: &std::path::Path,
        progress: Option<&super::progress::RecoveryProgress<'_>>,
    ) -> Result<u64> {
        tokio::fs::create_dir_all(dir).await?;
        let mut copied = 0u64;
        for (name, size) in files {
            let mut file = tokio::fs::File::create(dir.join(name)).await?;
            let mut offset = 0u64;
            while offset < *size {
                let response = self
                    .ask(DataRequest::FetchChunk {
                        index: self.target.index.clone(),
                        shard: self.target.shard,
                        allocation_id: self.target.allocation_id.clone(),
                        file: name.clone(),
                        offset,
                        len: CHUNK_BYTES,
                    })
                    .await?;
                let DataResponse::Chunk { data } = response else {
                    return Err(Error::Internal(
                        "the primary answered something else".into(),
                    ));
                };
                if data.is_empty() {
                    return Err(Error::Internal(format!("staged file [{name}] ended early")));
                }
                file.write_all(&data).await?;
                offset += data.len() as u64;
                if let Some(progress) = progress {
                    progress.copied_bytes(data.len() as u64);
                }
            }
            file.sync_all().await?;
            if let Some(progress) = progress {
                progress.copied_file();
            }
            copied += offset;
        }
        Ok(copied)
    }
}
