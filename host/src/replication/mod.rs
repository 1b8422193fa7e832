//! Shard copies across nodes. The routing table in the cluster state says which node holds
//! which copy; this layer makes it so and keeps the copies identical:
//! - [`applier`]: opens, promotes, recovers and removes this node's copies as the committed
//!   routing changes;
//! - [`master`]: on the elected master, turns membership into allocation decisions;
//! - [`writes`]: forwards writes to the primary, which replicates each batch to its in-sync
//!   copies before acknowledging (or has the master fail a copy that cannot take it);
//! - [`recovery`]: a new copy copies the primary's files, then receives every later operation;
//! - [`progress`]: the recoveries (and restores) a node runs, in flight and done;
//! - [`reads`]: GET, refresh and search over whichever node holds each shard;
//! - [`wire`] and [`server`]: the messages and how a node answers them.

pub mod admin;
pub mod applier;
mod down_check;
pub mod master;
pub mod progress;
pub mod reads;
pub mod recovery;
pub mod server;
pub mod wire;
pub mod writes;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::allocation::{ShardCopy, ShardRouting};
use crate::cluster::state::ClusterState;
use crate::error::{Error, Result};
use crate::node::NodeState;
use crate::shard::translog::TranslogOp;
use wire::{DataRequest, DataResponse};

pub use progress::{Recoveries, RecoveryKind};

/// How long a coordinator keeps retrying a request whose shard has no usable copy (a primary
/// failing over, a copy starting): Elasticsearch's default `timeout` of one minute.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(60);

/// How long one shard-level request to a peer may take.
pub const SHARD_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A replicated batch with the primary term it was sent in.
type TermBatch = (u64, Vec<TranslogOp>);

/// What this node is doing with its copy of a shard.
#[derive(Debug)]
enum CopyStatus {
    /// Copying files from the primary; replicated operations wait in `buffer`.
    Recovering {
        allocation_id: String,
        buffer: Vec<TermBatch>,
    },
    /// Open and serving as `allocation_id`.
    Active { allocation_id: String },
}

/// This node's copies by `(index, shard)`.
#[derive(Debug, Default)]
pub struct LocalCopies {
    copies: Mutex<HashMap<(String, u32), CopyStatus>>,
    /// Shards with a recovery task running here: one at a time, as both would work in the
    /// shard's one directory.
    recovering: Arc<Mutex<HashSet<(String, u32)>>>,
}

/// A shard's recovery slot on this node, given back when the task ends (however it ends).
pub struct RecoverySlot {
    running: Arc<Mutex<HashSet<(String, u32)>>>,
    key: (String, u32),
}

impl Drop for RecoverySlot {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Where a replicated batch goes on this node.
pub enum ReplicaSlot {
    /// The copy is open: apply the operations.
    Apply,
    /// The copy is recovering: the batch was buffered.
    Buffered,
}

impl LocalCopies {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), CopyStatus>> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The allocation id of the active copy of a shard, if this node has one.
    pub fn active(&self, index: &str, shard: u32) -> Option<String> {
        match self.lock().get(&(index.to_string(), shard)) {
            Some(CopyStatus::Active { allocation_id }) => Some(allocation_id.clone()),
            _ => None,
        }
    }

    pub fn is_recovering(&self, index: &str, shard: u32, allocation_id: &str) -> bool {
        matches!(
            self.lock().get(&(index.to_string(), shard)),
            Some(CopyStatus::Recovering { allocation_id: a, .. }) if a == allocation_id
        )
    }

    fn set_active(&self, index: &str, shard: u32, allocation_id: &str) {
        self.lock().insert(
            (index.to_string(), shard),
            CopyStatus::Active {
                allocation_id: allocation_id.to_string(),
            },
        );
    }

    /// Claims the shard's recovery slot for a new task; `None` while an earlier recovery of
    /// the shard still runs here. That one is told it is superseded, so it stops at its next
    /// step instead of finishing a copy nobody wants.
    fn claim_recovery(&self, index: &str, shard: u32) -> Option<RecoverySlot> {
        let key = (index.to_string(), shard);
        let claimed = self
            .recovering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        if !claimed {
            self.forget(index, shard);
            return None;
        }
        Some(RecoverySlot {
            running: self.recovering.clone(),
            key,
        })
    }

    /// Whether a recovery task of the shard runs here (whatever copy it recovers).
    fn recovery_running(&self, index: &str, shard: u32) -> bool {
        self.recovering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(index.to_string(), shard))
    }

    fn start_recovering(&self, index: &str, shard: u32, allocation_id: &str) {
        self.lock().insert(
            (index.to_string(), shard),
            CopyStatus::Recovering {
                allocation_id: allocation_id.to_string(),
                buffer: Vec::new(),
            },
        );
    }

    /// Takes what was buffered, or, when nothing was, makes the copy active (atomically, so no
    /// batch slips between the last drain and activation). Fails when the recovery was
    /// superseded (its copy replaced or dropped here meanwhile).
    fn drain_or_activate(
        &self,
        index: &str,
        shard: u32,
        allocation_id: &str,
    ) -> Result<Option<Vec<TermBatch>>> {
        let mut copies = self.lock();
        let key = (index.to_string(), shard);
        match copies.get_mut(&key) {
            Some(CopyStatus::Recovering {
                allocation_id: a,
                buffer,
            }) if a == allocation_id => {
                if !buffer.is_empty() {
                    return Ok(Some(std::mem::take(buffer)));
                }
            }
            _ => return Err(superseded(index, shard, allocation_id)),
        }
        copies.insert(
            key,
            CopyStatus::Active {
                allocation_id: allocation_id.to_string(),
            },
        );
        Ok(None)
    }

    fn forget(&self, index: &str, shard: u32) {
        self.lock().remove(&(index.to_string(), shard));
    }

    fn forget_index(&self, index: &str) {
        self.lock().retain(|(name, _), _| name != index);
    }

    /// Decides what to do with a replicated batch for `allocation_id`.
    pub fn route_replicated(
        &self,
        index: &str,
        shard: u32,
        allocation_id: &str,
        primary_term: u64,
        ops: &[TranslogOp],
    ) -> Result<ReplicaSlot> {
        match self.lock().get_mut(&(index.to_string(), shard)) {
            Some(CopyStatus::Active { allocation_id: a }) if a == allocation_id => {
                Ok(ReplicaSlot::Apply)
            }
            Some(CopyStatus::Recovering {
                allocation_id: a,
                buffer,
            }) if a == allocation_id => {
                buffer.push((primary_term, ops.to_vec()));
                Ok(ReplicaSlot::Buffered)
            }
            _ => Err(Error::ShardNotAvailable(format!(
                "[{index}][{shard}] copy [{allocation_id}] is not on this node"
            ))),
        }
    }
}

/// Sends a data request to `node_id`, giving up as soon as gossip declares the node gone (a
/// hung peer must not hold a request longer than failure detection takes).
pub async fn ask(node: &NodeState, node_id: &str, request: DataRequest) -> Result<DataResponse> {
    ask_within(node, node_id, request, SHARD_REQUEST_TIMEOUT).await
}

/// [`ask`] for requests that may take longer than a shard request (a shard's snapshot).
pub async fn ask_within(
    node: &NodeState,
    node_id: &str,
    request: DataRequest,
    timeout: Duration,
) -> Result<DataResponse> {
    let addr = node_address(node, node_id).ok_or_else(|| unreachable(node_id, "not live"))?;
    let call = node.cluster.rpc.data(addr, request, timeout);
    tokio::select! {
        answer = call => match answer {
            Ok(DataResponse::Failed(err)) => Err(err.into()),
            Ok(response) => Ok(response),
            Err(err) => Err(unreachable(node_id, err)),
        },
        () = left_cluster(node, node_id) => Err(unreachable(node_id, "the node left the cluster")),
    }
}

/// Resolves once gossip no longer lists `node_id` as live.
async fn left_cluster(node: &NodeState, node_id: &str) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if node_address(node, node_id).is_none() {
            return;
        }
    }
}

/// The transport address of a live node.
pub fn node_address(node: &NodeState, node_id: &str) -> Option<SocketAddr> {
    node.cluster.membership.transport_addr_of(node_id)
}

/// The routing of one shard in `state`.
pub fn shard_routing<'a>(
    state: &'a ClusterState,
    index: &str,
    shard: u32,
) -> Result<&'a ShardRouting> {
    state
        .routing
        .get(index)
        .ok_or_else(|| Error::IndexNotFound(index.to_string()))?
        .shards
        .get(shard as usize)
        .ok_or_else(|| Error::ShardNotAvailable(format!("[{index}][{shard}] does not exist")))
}

/// The started primary of a shard, or why there is none.
pub fn started_primary<'a>(
    state: &'a ClusterState,
    index: &str,
    shard: u32,
) -> Result<&'a ShardCopy> {
    shard_routing(state, index, shard)?
        .primary()
        .filter(|copy| copy.started)
        .ok_or_else(|| {
            Error::ShardNotAvailable(format!("primary shard [{index}][{shard}] is not active"))
        })
}

/// Retries `attempt` while it fails with an error that a routing change may cure, until
/// `patience` has passed.
pub async fn with_retries<T, F, Fut>(patience: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(25);
    loop {
        match attempt().await {
            Err(err) if is_retryable(&err) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %err, "shard unavailable; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Errors that a routing change (failover, a copy starting) may cure.
fn is_retryable(err: &Error) -> bool {
    match err {
        Error::ShardNotAvailable(_) | Error::StalePrimaryTerm { .. } => true,
        Error::Remote { .. } => matches!(
            err.es_type(),
            "unavailable_shards_exception"
                | "stale_primary_term_exception"
                | "node_not_connected_exception"
        ),
        _ => false,
    }
}

/// A recovery whose copy was replaced or dropped on this node while it ran.
fn superseded(index: &str, shard: u32, allocation_id: &str) -> Error {
    Error::ShardNotAvailable(format!(
        "[{index}][{shard}] copy [{allocation_id}] was superseded on this node"
    ))
}

/// A failed call to a peer, as a retryable error.
pub fn unreachable(node_id: &str, reason: impl std::fmt::Display) -> Error {
    Error::Remote {
        status: 503,
        cause: serde_json::json!({
            "type": "node_not_connected_exception",
            "reason": format!("node [{node_id}] is not reachable: {reason}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_recovery_per_shard_runs_and_a_superseded_one_cannot_activate_its_copy() {
        let copies = LocalCopies::default();
        let first = copies.claim_recovery("logs", 0).expect("a free slot");
        copies.start_recovering("logs", 0, "old");
        assert!(copies.recovery_running("logs", 0));
        assert!(
            copies.claim_recovery("logs", 1).is_some(),
            "other shards recover meanwhile"
        );

        assert!(
            copies.claim_recovery("logs", 0).is_none(),
            "a second recovery of the shard waits for the first"
        );
        assert!(!copies.is_recovering("logs", 0, "old"), "the first is told");
        assert!(copies.drain_or_activate("logs", 0, "old").is_err());
        assert_eq!(copies.active("logs", 0), None);

        drop(first);
        assert!(
            !copies.recovery_running("logs", 0),
            "the slot is given back"
        );
        let _second = copies.claim_recovery("logs", 0).expect("free again");
        copies.start_recovering("logs", 0, "new");
        assert!(matches!(
            copies.route_replicated("logs", 0, "new", 1, &[]),
            Ok(ReplicaSlot::Buffered)
        ));
        let drained = copies.drain_or_activate("logs", 0, "new").expect("current");
        assert_eq!(drained.map(|batches| batches.len()), Some(1));
        assert!(matches!(
            copies.drain_or_activate("logs", 0, "new"),
            Ok(None)
        ));
        assert_eq!(copies.active("logs", 0).as_deref(), Some("new"));
    }
}
