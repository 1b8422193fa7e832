//! How a node answers the data-plane requests of its peers.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::wire::{DataRequest, DataResponse, WireOutcome};
use super::{ReplicaSlot, reads, recovery, writes};
use crate::api::blocking;
use crate::cluster::rpc::DataHandler;
use crate::error::{Error, Result, WireError};
use crate::node::NodeState;
use crate::search::SearchRequest;
use crate::shard::ReplicaTarget;
use crate::transport::BoxFuture;

/// Serves data requests with the node's shards (weakly held: the node owns the server).
pub struct DataServer {
    pub node: Weak<NodeState>,
}

impl DataHandler for DataServer {
    fn handle(&self, request: DataRequest) -> BoxFuture<'_, DataResponse> {
        Box::pin(async move {
            let Some(node) = self.node.upgrade() else {
                return DataResponse::failed(&Error::ShuttingDown);
            };
            match answer(&node, request).await {
                Ok(response) => response,
                Err(err) => DataResponse::failed(&err),
            }
        })
    }
}

async fn answer(node: &Arc<NodeState>, request: DataRequest) -> Result<DataResponse> {
    match request {
        DataRequest::PrimaryWrite { index, shard, ops } => {
            let ops = ops
                .into_iter()
                .map(|op| op.into_op())
                .collect::<Result<Vec<_>>>()?;
            let outcomes = writes::write_on_primary(node, &index, shard, ops).await?;
            Ok(DataResponse::Written(
                outcomes
                    .iter()
                    .map(|outcome| match outcome {
                        Ok(outcome) => Ok(WireOutcome::from(outcome)),
                        Err(err) => Err(WireError::from(err)),
                    })
                    .collect(),
            ))
        }
        DataRequest::Replicate {
            index,
            shard,
            allocation_id,
            primary_term,
            ops,
            global_checkpoint,
            max_seq_no_of_updates,
        } => {
            match node
                .copies
                .route_replicated(&index, shard, &allocation_id, primary_term, &ops)?
            {
                ReplicaSlot::Buffered => Ok(DataResponse::Replicated {
                    local_checkpoint: -1,
                }),
                ReplicaSlot::Apply => {
                    let service = node.indices.get(&index)?;
                    let copy = service.shard(shard).ok_or_else(|| {
                        Error::ShardNotAvailable(format!("[{index}][{shard}] is not open here"))
                    })?;
                    let meta = service.meta.clone();
                    let durability = meta.settings().translog_durability;
                    let local_checkpoint = blocking(move || {
                        let applied = copy.apply_replicated(
                            primary_term,
                            &ops,
                            Some(max_seq_no_of_updates),
                            meta.as_ref(),
                            durability,
                        )?;
                        copy.learn_global_checkpoint(global_checkpoint);
                        Ok(applied)
                    })
                    .await?;
                    Ok(DataResponse::Replicated { local_checkpoint })
                }
            }
        }
        DataRequest::StartRecovery {
            index,
            shard,
            allocation_id,
            node_id,
            state_version,
            history_after,
        } => {
            let target = ReplicaTarget {
                allocation_id,
                node_id,
            };
            let copy = recovery::RecoveringCopy {
                target,
                state_version,
                history_after,
            };
            recovery::start(node, &index, shard, copy).await
        }
        DataRequest::FetchChunk {
            index,
            shard,
            allocation_id,
            file,
            offset,
            len,
        } => recovery::chunk(node, &index, shard, &allocation_id, &file, offset, len).await,
        DataRequest::FinishRecovery {
            index,
            shard,
            allocation_id,
        } => recovery::finish(node, &index, shard, &allocation_id).await,
        DataRequest::Get { index, shard, ids } => {
            let service = node.indices.get(&index)?;
            let copy = reads::local_copy(node, &service, shard).ok_or_else(|| {
                Error::ShardNotAvailable(format!("[{index}][{shard}] is not open here"))
            })?;
            let docs = blocking(move || {
                ids.iter()
                    .map(|id| copy.get(id))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
            Ok(DataResponse::Docs(
                docs.iter()
                    .map(|doc| doc.as_ref().map(Into::into))
                    .collect(),
            ))
        }
        DataRequest::OnCopies { index, operation } => {
            let service = node.indices.get(&index)?;
            let copies: Vec<_> = service
                .local_shards()
                .into_iter()
                .filter(|copy| node.copies.active(&index, copy.id.shard).is_some())
                .collect();
            let count = copies.len();
            blocking(move || copies.iter().try_for_each(|copy| operation.run(copy))).await?;
            Ok(DataResponse::Ran { copies: count })
        }
        DataRequest::Search {
            targets,
            body,
            params,
            expression,
        } => {
            let body: serde_json::Value = serde_json::from_str(&body)
                .map_err(|err| Error::Parsing(format!("forwarded search body: {err}")))?;
            let params: HashMap<String, String> = params.into_iter().collect();
            let request = SearchRequest::parse(&body, &params)?;
            let mut indices = Vec::with_capacity(targets.len());
            let mut group = Vec::new();
            for (position, (name, mut numbers)) in targets.into_iter().enumerate() {
                indices.push(node.indices.get(&name)?);
                numbers.sort_unstable();
                numbers.dedup();
                group.extend(numbers.into_iter().map(|number| (position, number)));
            }
            let phase = reads::search_here(node, &indices, &expression, &request, &group)?;
            DataResponse::searched(phase)
        }
        DataRequest::SnapshotShard {
            repository,
            index,
            shard,
        } => {
            let worker = node.clone();
            let upload = blocking(move || {
                crate::snapshot::snapshot_shard_here(&worker, &repository, &index, shard)
            })
            .await?;
            let text = serde_json::to_string(&upload)
                .map_err(|err| Error::Internal(format!("shard snapshot: {err}")))?;
            Ok(DataResponse::ShardSnapshotted(text))
        }
        DataRequest::RestoreShard(job) => {
            let job: crate::snapshot::ShardRestore = serde_json::from_str(&job)
                .map_err(|err| Error::Parsing(format!("shard restore: {err}")))?;
            let worker = node.clone();
            blocking(move || crate::snapshot::restore_shard_here(&worker, &job)).await?;
            Ok(DataResponse::Done)
        }
        DataRequest::Recoveries => Ok(DataResponse::Recoveries(node.recoveries.list())),
    }
}
