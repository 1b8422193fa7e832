//! One writer per repository: a node takes its own lock, then a lease committed in the
//! cluster state, before it snapshots into, deletes from or cleans up a repository; a second
//! writer anywhere in the cluster is refused. The master ends the leases of nodes that left or
//! restarted, so a crash never keeps a repository locked. Before each irreversible write (a
//! manifest, blob deletions) the holder confirms through the quorum that its lease still
//! stands: a node paused or cut off long enough to lose it stops instead of writing beside
//! the next holder (what remains is the moment between a confirmation and the write after it).

use std::time::Instant;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::consensus::{Consensus, ProposeError};
use crate::cluster::state::{ClusterState, RepositoryLease, StateCommand};
use crate::error::{Error, Result};
use crate::node::NodeState;

/// How long taking or ending a lease may wait for the master.
const LEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node keeps trying to end its own lease before leaving it to the master.
const RELEASE_ATTEMPTS: u32 = 30;
/// How often a long run of deletions confirms the lease again; well below the time the
/// master needs to find a node gone and end its lease.
const CONFIRM_EVERY: Duration = Duration::from_millis(500);

/// The repositories this node writes to now.
#[derive(Default)]
pub struct LocalWriters(Mutex<HashSet<String>>);

/// Held while this node writes to a repository; dropping it ends the lease.
pub struct RepositoryGuard<'a> {
    node: &'a NodeState,
    repository: String,
    generation: u64,
    leased: bool,
    confirmed: Mutex<Option<Instant>>,
}

/// Claims `repository` for `operation` (blocking: call from a worker thread, not the async
/// runtime). Fails with 503 `concurrent_snapshot_execution_exception` naming who writes.
pub fn acquire<'a>(
    node: &'a NodeState,
    repository: &str,
    operation: String,
) -> Result<RepositoryGuard<'a>> {
    let busy = |reason: String| Error::ConcurrentSnapshot {
        repository: repository.to_string(),
        reason,
    };
    if !node
        .snapshot_activity
        .writers
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(repository.to_string())
    {
        return Err(busy(
            "a snapshot, deletion or cleanup is already running in this repository on this node"
                .into(),
        ));
    }
    let local = node.cluster.membership.local();
    let mut guard = RepositoryGuard {
        node,
        repository: repository.to_string(),
        generation: local.generation,
        leased: false,
        confirmed: Mutex::new(None),
    };
    let command = StateCommand::AcquireRepository {
        repository: repository.to_string(),
        lease: RepositoryLease {
            node_id: local.node_id,
            generation: local.generation,
            operation,
            since_millis: chrono::Utc::now().timestamp_millis(),
        },
    };
    let proposed = tokio::runtime::Handle::current()
        .block_on(node.cluster.consensus.propose(command, LEASE_TIMEOUT));
    match proposed {
        Ok(_) => {
            guard.leased = true;
            Ok(guard)
        }
        Err(ProposeError::Rejected(reason)) => Err(busy(reason)),
        Err(other) => Err(Error::MasterNotDiscovered(other.to_string())),
    }
}

impl RepositoryGuard<'_> {
    /// Fails unless this node still holds the repository, as the quorum says now (blocking).
    pub fn confirm(&self) -> Result<()> {
        let ended = |reason: String| Error::ConcurrentSnapshot {
            repository: self.repository.clone(),
            reason: format!("{reason}; stopping before writing to the repository"),
        };
        // A node declared dead comes back under a new generation: its lease was ended.
        if self.node.cluster.membership.local().generation != self.generation {
            return Err(ended(
                "this node was out of the cluster and rejoined, so its lease has ended".into(),
            ));
        }
        let command = StateCommand::ConfirmRepository {
            repository: self.repository.clone(),
            node_id: self.node.identity.node_id.clone(),
            generation: self.generation,
        };
        let proposed = tokio::runtime::Handle::current()
            .block_on(self.node.cluster.consensus.propose(command, LEASE_TIMEOUT));
        match proposed {
            Ok(_) => {
                *self.confirmed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                Ok(())
            }
            Err(ProposeError::Rejected(reason)) => Err(ended(reason)),
            Err(other) => Err(ended(format!("the lease could not be confirmed ({other})"))),
        }
    }

    /// [`confirm`](Self::confirm), unless it was done within [`CONFIRM_EVERY`].
    pub fn confirm_if_due(&self) -> Result<()> {
        let last = *self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        match last {
            Some(at) if at.elapsed() < CONFIRM_EVERY => Ok(()),
            _ => self.confirm(),
        }
    }
}

impl Drop for RepositoryGuard<'_> {
    fn drop(&mut self) {
        self.node
            .snapshot_activity
            .writers
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.repository);
        if !self.leased {
            return;
        }
        let command = StateCommand::ReleaseRepository {
            repository: self.repository.clone(),
            node_id: self.node.identity.node_id.clone(),
            generation: self.generation,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Released before the operation answers, so that the next one (a snapshot right after
        // a snapshot) finds the repository free; retried in the background if the master is
        // unreachable now.
        let consensus = self.node.cluster.consensus.clone();
        let released = runtime.block_on(consensus.propose(command.clone(), LEASE_TIMEOUT));
        if let Err(err) = released
            && !matches!(err, ProposeError::Rejected(_))
        {
            tracing::debug!(error = %err, "repository lease not released yet; retrying");
            runtime.spawn(release(consensus, command));
        }
    }
}

/// Ends a lease, retrying while the master is unreachable.
async fn release(consensus: Arc<Consensus>, command: StateCommand) {
    for _ in 0..RELEASE_ATTEMPTS {
        match consensus.propose(command.clone(), LEASE_TIMEOUT).await {
            Ok(_) | Err(ProposeError::Rejected(_)) => return,
            Err(err) => {
                tracing::debug!(error = %err, "repository lease not released yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::warn!(
        "gave up releasing a repository lease; the master ends it if this node restarts or leaves"
    );
}

/// On the master: ends the leases of node lives that are over (the node left, or came back
/// under a new generation). `awaited(node_id)` says a node this master has not seen yet may
/// still show up (it just started): its lease is left alone.
pub async fn release_stale(node: &NodeState, state: &ClusterState, awaited: impl Fn(&str) -> bool) {
    if state.repository_leases.is_empty() {
        return;
    }
    let live = node.cluster.membership.live_nodes();
    for (repository, lease) in &state.repository_leases {
        let holder_lives = live
            .iter()
            .any(|meta| meta.node_id == lease.node_id && meta.generation == lease.generation);
        if holder_lives || awaited(&lease.node_id) {
            continue;
        }
        tracing::info!(repository, node = %lease.node_id, operation = %lease.operation, "ending the repository lease of a node that is gone");
        let command = StateCommand::ReleaseRepository {
            repository: repository.clone(),
            node_id: lease.node_id.clone(),
            generation: lease.generation,
        };
        if let Err(err) = node.cluster.consensus.propose(command, LEASE_TIMEOUT).await {
            tracing::debug!(repository, error = %err, "stale repository lease not released yet");
        }
    }
}
