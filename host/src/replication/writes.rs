//! The write path across nodes. Any node coordinates: it sends each shard's batch to the node
//! holding the started primary. The primary assigns sequence numbers in its term, logs the
//! batch, and sends it to every copy it replicates to; it acknowledges only when each copy has
//! persisted the batch or the master has removed the copy from the in-sync set. A primary that
//! cannot get a failed copy removed (it lost the quorum) or that a copy fences off (a newer
//! primary exists) acknowledges nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::wire::{DataRequest, DataResponse, WireWriteOp};
use super::{ask, shard_routing, started_primary, with_retries};
use crate::api::blocking;
use crate::cluster::state::StateCommand;
use crate::error::{Error, Result};
use crate::node::NodeState;
use crate::shard::translog::TranslogOp;
use crate::shard::{CopiesWritten, ReplicaTarget, ReplicationBatch, WriteOp, WriteOutcome};

/// How long a primary waits for the master to remove a copy that missed a write.
const FAIL_COPY_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-operation outcomes of one shard batch.
pub type Outcomes = Vec<Result<WriteOutcome>>;

/// Executes `ops` on shard `shard` of `index` wherever its primary is, retrying while the shard
/// has no usable primary (a failover in progress).
pub async fn write(
    node: &Arc<NodeState>,
    index: &str,
    shard: u32,
    ops: Vec<WriteOp>,
    timeout: Duration,
) -> Result<Outcomes> {
    with_retries(timeout, || {
        let node = node.clone();
        let ops = ops.clone();
        let index = index.to_string();
        async move {
            let state = node.cluster.consensus.state();
            let primary = started_primary(&state, &index, shard)?.node_id.clone();
            if primary == node.identity.node_id {
                write_on_primary(&node, &index, shard, ops).await
            } else {
                forward(&node, &primary, &index, shard, ops).await
            }
        }
    })
    .await
}

async fn forward(
    node: &Arc<NodeState>,
    primary: &str,
    index: &str,
    shard: u32,
    ops: Vec<WriteOp>,
) -> Result<Outcomes> {
    let request = DataRequest::PrimaryWrite {
        index: index.to_string(),
        shard,
        ops: ops.iter().map(WireWriteOp::from_op).collect(),
    };
    match ask(node, primary, request).await? {
        DataResponse::Written(outcomes) => Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.map(WriteOutcome::from).map_err(Error::from))
            .collect()),
        _ => Err(Error::Internal(
            "the primary answered something else".into(),
        )),
    }
}

/// Applies `ops` on this node's primary copy and replicates them.
pub async fn write_on_primary(
    node: &Arc<NodeState>,
    index_name: &str,
    number: u32,
    ops: Vec<WriteOp>,
) -> Result<Outcomes> {
    let index = node.indices.get(index_name)?;
    let shard = index
        .shard(number)
        .filter(|_| node.copies.active(index_name, number).is_some())
        .ok_or_else(|| {
            Error::ShardNotAvailable(format!(
                "[{index_name}][{number}] has no active copy on this node"
            ))
        })?;
    // The committed routing must still name this node's copy as the started primary: a copy
    // replaced while its node was down or behind must not take writes on its own.
    let state = node.cluster.consensus.state();
    let still_primary = node.cluster.consensus.caught_up()
        && started_primary(&state, index_name, number).is_ok_and(|primary| {
            primary.node_id == node.identity.node_id
                && node.copies.active(index_name, number).as_deref()
                    == Some(primary.allocation_id.as_str())
        });
    if !still_primary {
        return Err(Error::ShardNotAvailable(format!(
            "[{index_name}][{number}] the copy on this node is not the current primary"
        )));
    }
    if !node.cluster.consensus.quorum_reachable() {
        return Err(Error::ShardNotAvailable(format!(
            "[{index_name}][{number}] this node cannot reach a quorum of master-eligible nodes (no master block)"
        )));
    }
    let meta = index.meta.clone();
    let durability = meta.settings().translog_durability;
    let writer = shard.clone();
    let applied = blocking(move || writer.apply(ops, meta.as_ref(), durability)).await?;
    // The primary's fsync runs while the replicas apply and fsync theirs.
    let syncing = applied.sync.map(|position| {
        let shard = shard.clone();
        tokio::task::spawn_blocking(move || shard.sync_to(position))
    });
    let replicated = replicate(node, index_name, number, &shard, applied.replication).await;
    if let Some(syncing) = syncing {
        syncing
            .await
            .map_err(|err| Error::Internal(format!("translog sync task failed: {err}")))??;
    }
    let copies = replicated?;
    let mut outcomes = applied.outcomes;
    for outcome in outcomes.iter_mut().flatten() {
        outcome.copies = copies;
    }
    Ok(outcomes)
}

/// Sends a batch to every target; a target that fails is removed through the master before
/// the batch counts as replicated. Returns the copies that took the batch, the primary's
/// included, and those removed.
async fn replicate(
    node: &Arc<NodeState>,
    index: &str,
    number: u32,
    shard: &crate::shard::Shard,
    batch: ReplicationBatch,
) -> Result<CopiesWritten> {
    let mut copies = CopiesWritten::PRIMARY;
    if batch.ops.is_empty() || batch.targets.is_empty() {
        return Ok(copies);
    }
    let ops = Arc::new(batch.ops);
    let global_checkpoint = shard.global_checkpoint();
    let mut sends = JoinSet::new();
    for target in batch.targets {
        let node = node.clone();
        let ops = ops.clone();
        let index = index.to_string();
        sends.spawn(async move {
            let outgoing = Outgoing {
                primary_term: batch.primary_term,
                global_checkpoint,
                max_seq_no_of_updates: batch.max_seq_no_of_updates,
                ops: &ops,
            };
            let result = send_to_copy(&node, &index, number, &target, outgoing).await;
            (target, result)
        });
    }
    let mut fenced = None;
    while let Some(joined) = sends.join_next().await {
        let (target, result) =
            joined.map_err(|err| Error::Internal(format!("replication task failed: {err}")))?;
        let err = match result {
            Ok(local_checkpoint) => {
                shard.copy_reported(&target.allocation_id, local_checkpoint);
                copies.successful += 1;
                continue;
            }
            Err(err) => err,
        };
        if err.es_type() == "stale_primary_term_exception" {
            // A newer primary exists: this one must not acknowledge anything.
            fenced = Some(err);
            continue;
        }
        tracing::warn!(index, shard = number, copy = %target.allocation_id, node = %target.node_id, error = %err, "replica missed a write; failing it");
        fail_copy(node, index, number, &target, batch.primary_term, &err).await?;
        shard.drop_target(&target.allocation_id);
        copies.failed += 1;
    }
    match fenced {
        Some(err) => Err(Error::ShardNotAvailable(format!(
            "[{index}][{number}] this primary was replaced: {err}"
        ))),
        None => Ok(copies),
    }
}

/// One batch as the primary sends it to each copy.
struct Outgoing<'a> {
    primary_term: u64,
    global_checkpoint: i64,
    max_seq_no_of_updates: i64,
    ops: &'a [TranslogOp],
}

/// Sends a batch to one copy; returns the copy's local checkpoint after it.
async fn send_to_copy(
    node: &Arc<NodeState>,
    index: &str,
    number: u32,
    target: &ReplicaTarget,
    outgoing: Outgoing<'_>,
) -> Result<i64> {
    let request = DataRequest::Replicate {
        index: index.to_string(),
        shard: number,
        allocation_id: target.allocation_id.clone(),
        primary_term: outgoing.primary_term,
        ops: outgoing.ops.to_vec(),
        global_checkpoint: outgoing.global_checkpoint,
        max_seq_no_of_updates: outgoing.max_seq_no_of_updates,
    };
    match ask(node, &target.node_id, request).await? {
        DataResponse::Replicated { local_checkpoint } => Ok(local_checkpoint),
        _ => Err(Error::Internal(
            "the replica answered something else".into(),
        )),
    }
}

/// Has the master remove a copy that missed a write. Succeeds when the copy is gone from the
/// routing of this primary's term; fails when this primary is stale or the master unreachable.
async fn fail_copy(
    node: &Arc<NodeState>,
    index: &str,
    number: u32,
    target: &ReplicaTarget,
    primary_term: u64,
    cause: &Error,
) -> Result<()> {
    let command = StateCommand::ShardFailed {
        index: index.to_string(),
        shard: number as usize,
        allocation_id: target.allocation_id.clone(),
        primary_term,
        reason: cause.to_string(),
    };
    let proposed = node
        .cluster
        .consensus
        .propose(command, FAIL_COPY_TIMEOUT)
        .await;
    let state = node.cluster.consensus.state();
    let routing = shard_routing(&state, index, number)?;
    let removed = routing.primary_term == primary_term
        && !routing
            .copies
            .iter()
            .any(|copy| copy.allocation_id == target.allocation_id);
    match proposed {
        _ if removed => Ok(()),
        Ok(_) => Ok(()),
        Err(err) => Err(Error::ShardNotAvailable(format!(
            "[{index}][{number}] a replica missed the write and could not be failed: {err}"
        ))),
    }
}
