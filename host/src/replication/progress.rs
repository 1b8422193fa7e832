//! The recoveries a node runs as the target — peer recoveries and snapshot restores — while
//! they copy (files and bytes done of the total) and once done, for `_cat/recovery` and
//! `GET /_recovery` on any node of the cluster.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::wire::{DataRequest, DataResponse};
use crate::node::NodeState;

/// Where a recovered copy's files come from, as `_cat/recovery` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryKind {
    Peer,
    Snapshot,
}

impl RecoveryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryKind::Peer => "peer",
            RecoveryKind::Snapshot => "snapshot",
        }
    }
}

/// One recovery as reported: in flight (`done: false`) or finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    pub index: String,
    pub shard: u32,
    pub kind: RecoveryKind,
    /// The node id copied from (a peer recovery), or `repository/snapshot` (a restore).
    pub source: String,
    /// The node id of the copy being built.
    pub target: String,
    pub done: bool,
    pub start_time_millis: i64,
    pub took_millis: u64,
    pub files_total: u64,
    pub files_recovered: u64,
    pub bytes_total: u64,
    pub bytes_recovered: u64,
    /// Why a finished recovery failed; `None` while in flight and when it succeeded.
    #[serde(default)]
    pub failure: Option<String>,
    /// Operations replayed from the source's translog (a copy catching up by operations).
    #[serde(default)]
    pub translog_ops: u64,
}

impl RecoveryRecord {
    /// The stage as `_cat/recovery` names it (`failed` is Shoal's: Elasticsearch drops the row).
    pub fn stage(&self) -> &'static str {
        match (self.done, &self.failure) {
            (false, _) => "index",
            (true, None) => "done",
            (true, Some(_)) => "failed",
        }
    }
}

/// A recovery in flight; its counters move while it copies.
#[derive(Debug)]
struct Active {
    id: u64,
    index: String,
    shard: u32,
    kind: RecoveryKind,
    source: String,
    started: Instant,
    start_time_millis: i64,
    files_total: u64,
    bytes_total: u64,
    files_recovered: AtomicU64,
    bytes_recovered: AtomicU64,
    translog_ops: AtomicU64,
}

impl Active {
    fn record(&self, target: &str, done: bool, failure: Option<String>) -> RecoveryRecord {
        RecoveryRecord {
            index: self.index.clone(),
            shard: self.shard,
            kind: self.kind,
            source: self.source.clone(),
            target: target.to_string(),
            done,
            start_time_millis: self.start_time_millis,
            took_millis: self.started.elapsed().as_millis() as u64,
            files_total: self.files_total,
            files_recovered: self.files_recovered.load(Ordering::Relaxed),
            bytes_total: self.bytes_total,
            bytes_recovered: self.bytes_recovered.load(Ordering::Relaxed),
            failure,
            translog_ops: self.translog_ops.load(Ordering::Relaxed),
        }
    }
}

/// This node's recoveries: those in flight and the most recent finished ones.
#[derive(Debug, Default)]
pub struct Recoveries {
    node_id: String,
    next_id: AtomicU64,
    active: Mutex<Vec<Arc<Active>>>,
    done: Mutex<VecDeque<RecoveryRecord>>,
}

/// What a recovery is about to copy.
pub struct RecoveryPlan<'a> {
    pub index: &'a str,
    pub shard: u32,
    pub kind: RecoveryKind,
    pub source: &'a str,
    pub files: u64,
    pub bytes: u64,
}

impl Recoveries {
    const KEPT: usize = 256;

    pub fn new(node_id: &str) -> Recoveries {
        Recoveries {
            node_id: node_id.to_string(),
            ..Recoveries::default()
        }
    }

    /// Lists a recovery as in flight until the returned progress is finished (then it is
    /// listed as done), failed (listed with its reason) or dropped (no row: a peer recovery
    /// abandoned because its copy is no longer wanted).
    pub fn begin(&self, plan: RecoveryPlan<'_>) -> RecoveryProgress<'_> {
        let active = Arc::new(Active {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            index: plan.index.to_string(),
            shard: plan.shard,
            kind: plan.kind,
            source: plan.source.to_string(),
            started: Instant::now(),
            start_time_millis: chrono::Utc::now().timestamp_millis(),
            files_total: plan.files,
            bytes_total: plan.bytes,
            files_recovered: AtomicU64::new(0),
            bytes_recovered: AtomicU64::new(0),
            translog_ops: AtomicU64::new(0),
        });
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(active.clone());
        RecoveryProgress {
            recoveries: self,
            active,
        }
    }

    fn end(&self, id: u64) -> Option<Arc<Active>> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let at = active.iter().position(|recovery| recovery.id == id)?;
        Some(active.swap_remove(at))
    }

    /// Recoveries in flight, then finished ones, oldest first.
    pub fn list(&self) -> Vec<RecoveryRecord> {
        let mut listed: Vec<RecoveryRecord> = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|active| active.record(&self.node_id, false, None))
            .collect();
        listed.sort_by_key(|record| record.start_time_millis);
        listed.extend(
            self.done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        listed
    }
}

/// A running recovery's handle: counts what it copied.
pub struct RecoveryProgress<'a> {
    recoveries: &'a Recoveries,
    active: Arc<Active>,
}

impl RecoveryProgress<'_> {
    pub fn copied_bytes(&self, bytes: u64) {
        self.active
            .bytes_recovered
            .fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn copied_file(&self) {
        self.active.files_recovered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn replayed_operations(&self, operations: u64) {
        self.active
            .translog_ops
            .fetch_add(operations, Ordering::Relaxed);
    }

    /// The copy is complete: listed as done from now on.
    pub fn finish(self) {
        self.end_with(None);
    }

    /// The copy failed: listed with `reason` from now on.
    pub fn fail(self, reason: String) {
        self.end_with(Some(reason));
    }

    fn end_with(self, failure: Option<String>) {
        let record = self.active.record(&self.recoveries.node_id, true, failure);
        let mut done = self
            .recoveries
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if done.len() == Recoveries::KEPT {
            done.pop_front();
        }
        done.push_back(record);
        // Drop takes it off the in-flight list.
    }
}

impl Drop for RecoveryProgress<'_> {
    fn drop(&mut self) {
        self.recoveries.end(self.active.id);
    }
}

/// How long a node may take to list its recoveries before the listing goes on without it.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// Every live node's recoveries, this node's first; a node that cannot answer is left out.
pub async fn cluster_wide(node: &Arc<NodeState>) -> Vec<RecoveryRecord> {
    let mut listed = node.recoveries.list();
    let mut asked = JoinSet::new();
    for peer in node.cluster.membership.live_nodes() {
        if peer.node_id == node.identity.node_id {
            continue;
        }
        let node = node.clone();
        asked.spawn(async move {
            let answer =
                super::ask_within(&node, &peer.node_id, DataRequest::Recoveries, LIST_TIMEOUT)
                    .await;
            (peer.node_id, answer)
        });
    }
    while let Some(joined) = asked.join_next().await {
        match joined {
            Ok((_, Ok(DataResponse::Recoveries(records)))) => listed.extend(records),
            Ok((peer, Ok(_))) => {
                tracing::debug!(node = %peer, "a node answered its recoveries with something else")
            }
            Ok((peer, Err(err))) => {
                tracing::debug!(node = %peer, error = %err, "a node could not list its recoveries")
            }
            Err(err) => tracing::debug!(error = %err, "listing a node's recoveries failed"),
        }
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(index: &str) -> RecoveryPlan<'_> {
        RecoveryPlan {
            index,
            shard: 0,
            kind: RecoveryKind::Snapshot,
            source: "repo/snap",
            files: 2,
            bytes: 100,
        }
    }

    #[test]
    fn a_recovery_is_listed_while_it_copies_and_once_done() {
        let recoveries = Recoveries::new("node-a");
        let progress = recoveries.begin(plan("logs"));
        progress.copied_bytes(60);
        progress.copied_file();
        let listed = recoveries.list();
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].done);
        assert_eq!(
            (listed[0].files_recovered, listed[0].bytes_recovered),
            (1, 60)
        );
        assert_eq!(listed[0].target, "node-a");
        progress.copied_bytes(40);
        progress.copied_file();
        progress.finish();
        let listed = recoveries.list();
        assert_eq!(listed.len(), 1, "no longer in flight, now done");
        assert!(listed[0].done);
        assert_eq!(
            (listed[0].files_recovered, listed[0].bytes_recovered),
            (2, 100)
        );
    }

    #[test]
    fn a_failed_recovery_leaves_no_row() {
        let recoveries = Recoveries::new("node-a");
        let kept = recoveries.begin(plan("kept"));
        drop(recoveries.begin(plan("failed")));
        let listed = recoveries.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].index, "kept");
        kept.finish();
        assert!(recoveries.list().iter().all(|record| record.done));
    }
}
