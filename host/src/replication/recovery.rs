//! Peer recovery: how a new copy gets every operation its primary has. The primary flushes,
//! hard-links the files of that commit into a staging directory and, under the same write
//! lock, starts replicating to the new copy; the copy fetches the staged files in chunks,
//! opens them, applies the batches it buffered meanwhile, and asks the master to mark it
//! started and in sync. No operation can fall between the files and the batches.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::SHARD_REQUEST_TIMEOUT;
use super::progress::{RecoveryKind, RecoveryPlan};
use super::wire::{DataRequest, DataResponse};
use crate::api::blocking;
use crate::cluster::state::StateCommand;
use crate::error::{Error, Result};
use crate::index::{CopyMarker, IndexService};
use crate::node::NodeState;
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

/// Primary side: stages a commit for `allocation_id` and starts replicating to it.
pub async fn start(
    node: &NodeState,
    index: &str,
    number: u32,
    allocation_id: String,
    node_id: String,
    state_version: u64,
) -> Result<DataResponse> {
    let (service, shard) = primary_copy(node, index, number)?;
    let staging = staging_dir(&service, number, &allocation_id);
    let target = ReplicaTarget {
        allocation_id,
        node_id,
    };
    blocking(move || {
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        let staged = shard.stage_for_recovery(&staging, target, state_version)?;
        let mut files = Vec::with_capacity(staged.files.len());
        for name in staged.files {
            let size = std::fs::metadata(staging.join(&name))?.len();
            files.push((name, size));
        }
        Ok(DataResponse::RecoveryPlan {
            meta_json: staged.meta_json,
            files,
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
                let _ = blocking(move || service.remove_copy(number)).await;
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
    let service = node.indices.get(index)?;
    {
        let service = service.clone();
        blocking(move || service.remove_copy(number)).await?;
    }
    let ask = |request: DataRequest| super::ask(node, &target.primary_node, request);
    let plan = ask(DataRequest::StartRecovery {
        index: index.to_string(),
        shard: number,
        allocation_id: allocation_id.to_string(),
        node_id: node.identity.node_id.clone(),
        state_version: target.state_version,
    })
    .await?;
    let DataResponse::RecoveryPlan { meta_json, files } = plan else {
        return Err(Error::Internal(
            "the primary answered something else".into(),
        ));
    };
    let index_dir = service.copy_dir(number).join("index");
    tokio::fs::create_dir_all(&index_dir).await?;
    let progress = node.recoveries.begin(RecoveryPlan {
        index,
        shard: number,
        kind: RecoveryKind::Peer,
        source: &target.primary_node,
        files: files.len() as u64,
        bytes: files.iter().map(|(_, size)| size).sum(),
    });
    let mut copied = 0u64;
    for (name, size) in &files {
        if sanitize(name) != *name || name.is_empty() {
            return Err(Error::Internal(format!(
                "primary sent an invalid file name [{name}]"
            )));
        }
        let mut file = tokio::fs::File::create(index_dir.join(name)).await?;
        let mut offset = 0u64;
        while offset < *size {
            let response = ask(DataRequest::FetchChunk {
                index: index.to_string(),
                shard: number,
                allocation_id: allocation_id.to_string(),
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
            progress.copied_bytes(data.len() as u64);
        }
        file.sync_all().await?;
        progress.copied_file();
        copied += offset;
    }
    let mut meta = tokio::fs::File::create(index_dir.join("meta.json")).await?;
    meta.write_all(meta_json.as_bytes()).await?;
    meta.sync_all().await?;
    let shard = {
        let service = service.clone();
        let marker = CopyMarker {
            allocation_id: allocation_id.to_string(),
        };
        blocking(move || {
            service.write_copy_marker(number, &marker)?;
            service.open_copy(number)
        })
        .await?
    };
    shard.set_role(
        false,
        target.primary_term,
        Vec::new(),
        &Default::default(),
        0,
    );
    // Apply what the primary replicated while the files were copied, until nothing is left;
    // the copy turns active atomically with the last drain.
    while let Some(batches) = node.copies.drain_or_activate(index, number, allocation_id) {
        let shard = shard.clone();
        let meta = service.meta.clone();
        let durability = meta.settings().translog_durability;
        blocking(move || {
            for (term, ops) in batches {
                shard.apply_replicated(term, &ops, meta.as_ref(), durability)?;
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
    let _ = ask(DataRequest::FinishRecovery {
        index: index.to_string(),
        shard: number,
        allocation_id: allocation_id.to_string(),
    })
    .await;
    progress.finish();
    Ok(copied)
}
