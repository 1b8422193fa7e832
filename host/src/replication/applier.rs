//! Makes this node's shard copies match the committed routing: lays out every index the
//! cluster has, opens the copies allocated here (empty for a new primary, from disk when the
//! copy on disk is the allocated one, by peer recovery otherwise), gives each its role and term,
//! and removes copies and indices the cluster no longer has here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::recovery::{self, RecoveryTarget};
use crate::api::blocking;
use crate::cluster::allocation::{ShardCopy, ShardRouting};
use crate::cluster::state::{ClusterState, StateCommand};
use crate::error::Result;
use crate::index::{CopyMarker, IndexService};
use crate::mapping::Mapping;
use crate::node::NodeState;
use crate::shard::ReplicaTarget;

/// Re-checks even without a state change, so a failed step is retried.
const RECHECK: Duration = Duration::from_secs(1);

/// Runs until `stop` flips, applying every new cluster state.
pub async fn run(node: Arc<NodeState>, mut stop: watch::Receiver<bool>) {
    let mut states = node.cluster.consensus.watch();
    let mut applier = Applier {
        node,
        reported: HashMap::new(),
        version: 0,
    };
    loop {
        let state = states.borrow_and_update().clone();
        if state.cluster_uuid.is_some()
            && let Err(err) = applier.apply(&state).await
        {
            tracing::warn!(version = state.version, error = %err, "applying the cluster state failed; retrying");
        }
        tokio::select! {
            _ = states.changed() => {}
            _ = tokio::time::sleep(RECHECK) => {}
            _ = stop.changed() => return,
        }
    }
}

struct Applier {
    node: Arc<NodeState>,
    /// Proposals made, by what they are about (a copy started, `mapping:` an index's mapping,
    /// `offer:` a lost copy offered), and when: re-proposed if the state has not caught up.
    reported: HashMap<String, Instant>,
    /// The version of the state being applied.
    version: u64,
}

impl Applier {
    async fn apply(&mut self, state: &ClusterState) -> Result<()> {
        self.version = state.version;
        if self.node.indices.metadata_version() != state.version {
            self.apply_metadata(state).await?;
            self.node.indices.metadata_applied(state.version);
        }
        for (name, routing) in &state.routing {
            let Ok(index) = self.node.indices.get(name) else {
                continue;
            };
            for (number, shard) in routing.shards.iter().enumerate() {
                if let Err(err) = self.apply_shard(&index, number as u32, shard).await {
                    tracing::warn!(index = name, shard = number, error = %err, "could not apply the routing of a shard");
                }
            }
            self.publish_grown_mapping(state, &index, routing);
        }
        Ok(())
    }

    /// Fields a primary here mapped dynamically are committed to the index's cluster mapping,
    /// so every node (holding a copy or not) describes the index alike.
    fn publish_grown_mapping(
        &mut self,
        state: &ClusterState,
        index: &IndexService,
        routing: &crate::cluster::allocation::IndexRouting,
    ) {
        let local = &self.node.identity.node_id;
        let holds_primary = routing
            .shards
            .iter()
            .filter_map(|shard| shard.primary())
            .any(|primary| &primary.node_id == local && primary.started);
        let Some(meta) = state.indices.get(index.name()) else {
            return;
        };
        if !holds_primary {
            return;
        }
        let mine = index.meta.mapping();
        let merged = match Mapping::parse(&meta.mappings).and_then(|m| m.merge(&mine)) {
            Ok(merged) => merged.to_json(),
            Err(err) => {
                tracing::warn!(index = index.name(), error = %err, "a dynamically mapped field conflicts with the cluster mapping");
                return;
            }
        };
        let key = format!("mapping:{}", index.name());
        let due = self
            .reported
            .get(&key)
            .is_none_or(|at| at.elapsed() > Duration::from_secs(2));
        if merged != meta.mappings && due {
            self.reported.insert(key, Instant::now());
            self.propose(StateCommand::PutMapping {
                name: index.name().to_string(),
                mappings: merged,
            });
        }
    }

    /// Lays out the cluster's indices (and their settings and mappings) and removes the ones it
    /// no longer has.
    async fn apply_metadata(&mut self, state: &ClusterState) -> Result<()> {
        for (name, meta) in &state.indices {
            let node = self.node.clone();
            let (name, meta, version) = (name.clone(), meta.clone(), state.version);
            blocking(move || node.indices.ensure(&name, &meta, version).map(|_| ())).await?;
        }
        for index in self.node.indices.all() {
            let known = state
                .indices
                .get(index.name())
                .is_some_and(|meta| meta.uuid == index.meta.uuid);
            if !known {
                let name = index.name().to_string();
                tracing::info!(index = name, "removing an index the cluster no longer has");
                self.node.copies.forget_index(&name);
                let node = self.node.clone();
                blocking(move || node.indices.delete(&name)).await?;
            }
        }
        Ok(())
    }

    async fn apply_shard(
        &mut self,
        index: &Arc<IndexService>,
        number: u32,
        routing: &ShardRouting,
    ) -> Result<()> {
        let name = index.name().to_string();
        let local = &self.node.identity.node_id;
        let Some(copy) = routing.copies.iter().find(|copy| &copy.node_id == local) else {
            if self.offer_lost_copy(index, number, routing) {
                return Ok(());
            }
            self.drop_copy(index, number, routing);
            return Ok(());
        };
        if self
            .node
            .copies
            .is_recovering(&name, number, &copy.allocation_id)
        {
            return Ok(());
        }
        if self.node.copies.active(&name, number).as_deref() != Some(&copy.allocation_id) {
            if index.is_closing(number) {
                // An earlier copy still closes in this directory; a later pass opens this one.
                return Ok(());
            }
            let on_disk = index
                .copy_marker(number)
                .is_some_and(|marker| marker.allocation_id == copy.allocation_id);
            if on_disk {
                let service = index.clone();
                blocking(move || service.open_copy(number)).await?;
                self.node
                    .copies
                    .set_active(&name, number, &copy.allocation_id);
            } else if copy.primary && !copy.started {
                self.create_empty(index, number, copy, routing.primary_term)
                    .await?;
            } else if !copy.primary && !copy.started {
                self.start_recovery(index, number, copy, routing);
                return Ok(());
            } else {
                // A started copy this node does not have (its files were lost): fail it so
                // the master allocates a fresh one.
                tracing::warn!(
                    index = name,
                    shard = number,
                    "an allocated copy is missing from disk"
                );
                self.propose(StateCommand::ShardFailed {
                    index: name,
                    shard: number as usize,
                    allocation_id: copy.allocation_id.clone(),
                    primary_term: routing.primary_term,
                    reason: "copy missing on its node".into(),
                });
                return Ok(());
            }
        }
        let Some(shard) = index.shard(number) else {
            return Ok(());
        };
        let started: Vec<ReplicaTarget> = routing
            .copies
            .iter()
            .filter(|c| !c.primary && c.started)
            .map(target)
            .collect();
        let recovering: BTreeSet<String> = routing
            .copies
            .iter()
            .filter(|c| !c.primary && !c.started)
            .map(|c| c.allocation_id.clone())
            .collect();
        shard.set_role(
            copy.primary,
            routing.primary_term,
            started,
            &recovering,
            self.version,
        );
        let due = self
            .reported
            .get(&copy.allocation_id)
            .is_none_or(|at| at.elapsed() > Duration::from_secs(5));
        if copy.primary && !copy.started && due {
            self.reported
                .insert(copy.allocation_id.clone(), Instant::now());
            self.propose(StateCommand::ShardStarted {
                index: name,
                shard: number as usize,
                allocation_id: copy.allocation_id.clone(),
            });
        }
        Ok(())
    }

    async fn create_empty(
        &mut self,
        index: &Arc<IndexService>,
        number: u32,
        copy: &ShardCopy,
        primary_term: u64,
    ) -> Result<()> {
        let service = index.clone();
        let marker = CopyMarker {
            allocation_id: copy.allocation_id.clone(),
            primary_term,
        };
        blocking(move || {
            service.remove_copy(number)?;
            service.write_copy_marker(number, &marker)?;
            service.open_copy(number).map(|_| ())
        })
        .await?;
        self.node
            .copies
            .set_active(index.name(), number, &copy.allocation_id);
        tracing::info!(index = index.name(), shard = number, copy = %copy.allocation_id, "created a new primary");
        Ok(())
    }

    fn start_recovery(
        &self,
        index: &IndexService,
        number: u32,
        copy: &ShardCopy,
        routing: &ShardRouting,
    ) {
        let Some(primary) = routing.primary().filter(|p| p.started) else {
            return;
        };
        let node = self.node.clone();
        let target = RecoveryTarget {
            index: index.name().to_string(),
            shard: number,
            allocation_id: copy.allocation_id.clone(),
            primary_node: primary.node_id.clone(),
            primary_term: routing.primary_term,
            state_version: self.version,
        };
        // A recovery of an earlier copy of this shard may still run (its copy was replaced
        // meanwhile); a later pass starts this one once it has stopped.
        let Some(slot) = self.node.copies.claim_recovery(&target.index, number) else {
            return;
        };
        // Registered before the task starts, so the next pass does not start a second one.
        self.node
            .copies
            .start_recovering(&target.index, number, &target.allocation_id);
        tokio::spawn(async move {
            let recovered = recovery::recover(node.clone(), &target).await;
            drop(slot);
            if recovered.is_err() {
                // Give the primary a moment before the master allocates the copy again.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let command = StateCommand::ShardFailed {
                    index: target.index,
                    shard: number as usize,
                    allocation_id: target.allocation_id,
                    primary_term: target.primary_term,
                    reason: "recovery failed".into(),
                };
                let _ = node
                    .cluster
                    .consensus
                    .propose(command, super::SHARD_REQUEST_TIMEOUT)
                    .await;
            }
        });
    }

    /// A shard whose every in-sync copy left has no primary; if this node holds one of those
    /// copies on disk (it was hung or cut off, not wiped), it offers it to the master instead
    /// of deleting it. Returns whether the copy is kept.
    fn offer_lost_copy(
        &mut self,
        index: &IndexService,
        number: u32,
        routing: &ShardRouting,
    ) -> bool {
        // A copy closing in the background may be on its way out with its files.
        if routing.primary().is_some() || index.is_closing(number) {
            return false;
        }
        let Some(marker) = index.copy_marker(number) else {
            return false;
        };
        if !routing.in_sync.contains(&marker.allocation_id) {
            return false;
        }
        // Keyed apart from the copy's started report, which must follow an accepted offer at
        // once rather than wait out this one's resend delay.
        let key = format!("offer:{}", marker.allocation_id);
        let due = self
            .reported
            .get(&key)
            .is_none_or(|at| at.elapsed() > Duration::from_secs(5));
        if due {
            tracing::info!(index = index.name(), shard = number, copy = %marker.allocation_id, "offering the in-sync copy on disk to the master");
            self.reported.insert(key, Instant::now());
            self.propose(StateCommand::ShardFound {
                index: index.name().to_string(),
                shard: number as usize,
                allocation_id: marker.allocation_id,
                node_id: self.node.identity.node_id.clone(),
            });
        }
        true
    }

    /// Closes a copy the routing no longer places here and deletes its files, unless they may
    /// still serve: built in the shard's current primary term while the shard misses a copy,
    /// they let this node catch the copy up by operations should it be allocated here again.
    /// The copy leaves service at once and closes in the background, so a long search on it
    /// does not hold up the rest of the cluster state.
    fn drop_copy(&self, index: &Arc<IndexService>, number: u32, routing: &ShardRouting) {
        let name = index.name();
        let open = self.node.copies.active(name, number).is_some() || index.shard(number).is_some();
        if index.is_closing(number) || (!open && !index.copy_dir(number).exists()) {
            return;
        }
        // A recovery still writing into the copy's directory stops at its next step and
        // cleans up after itself; deleting the directory under it only made it fail with
        // missing files. A later pass finishes the drop once the recovery has let go.
        if self.node.copies.recovery_running(name, number) {
            self.node.copies.forget(name, number);
            return;
        }
        let wanted = index.meta.number_of_replicas() as usize + 1;
        let reusable = routing.copies.len() < wanted
            && index
                .copy_marker(number)
                .is_some_and(|marker| marker.built_in_term(routing.primary_term));
        if reusable && !open {
            return;
        }
        let what = if reusable {
            "closing a copy the routing moved away; its files stay for a catch-up by operations"
        } else {
            "removing a copy the routing moved away"
        };
        tracing::info!(index = name, shard = number, "{what}");
        self.node.copies.forget(name, number);
        index.close_copy_in_background(number, !reusable);
    }

    fn propose(&self, command: StateCommand) {
        let node = self.node.clone();
        tokio::spawn(async move {
            if let Err(err) = node
                .cluster
                .consensus
                .propose(command, super::SHARD_REQUEST_TIMEOUT)
                .await
            {
                tracing::warn!(error = %err, "a shard state change was not committed");
            }
        });
    }
}

fn target(copy: &ShardCopy) -> ReplicaTarget {
    ReplicaTarget {
        allocation_id: copy.allocation_id.clone(),
        node_id: copy.node_id.clone(),
    }
}
