//! The cluster state that a quorum of master-eligible nodes agrees on, and the commands that
//! change it. Applying a command is a pure function of the state, so every node that applies
//! the same committed log reaches the same state.
//!
//! It holds the cluster's identity and settings, the indices (settings and mappings at
//! creation), the routing table with each shard's in-sync copies and primary term, snapshot
//! repositories and lifecycle policies.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::allocation::{self, IndexRouting};
use crate::index::IndexSettings;
use crate::snapshot::slm::{SlmPolicy, SlmRun, SlmStats};

/// Settings `PUT /_cluster/settings` accepts. Others are refused, as Elasticsearch refuses
/// settings it does not know, so a typo never silently does nothing.
pub const KNOWN_CLUSTER_SETTINGS: &[&str] = &[
    "cluster.routing.allocation.awareness.attributes",
    "cluster.routing.allocation.awareness.force.zone.values",
    "cluster.routing.allocation.exclude._name",
    "cluster.routing.allocation.exclude._id",
    "cluster.routing.allocation.exclude.zone",
    "cluster.routing.allocation.enable",
    "cluster.routing.allocation.node_concurrent_recoveries",
    "cluster.routing.rebalance.enable",
    "cluster.max_shards_per_node",
    "indices.recovery.max_bytes_per_sec",
    crate::plugins::roles::CLUSTER_PRUNING,
];

/// A node's claim to write to a repository, for one operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryLease {
    pub node_id: String,
    /// The holder's gossip generation: a lease outlives no restart of its node.
    pub generation: u64,
    /// What the holder does, as people read it (`snapshot [nightly-1]`).
    pub operation: String,
    pub since_millis: i64,
}

/// A registered snapshot repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryMeta {
    /// The repository plugin that stores its blobs (`type` in the API).
    pub plugin: String,
    pub settings: BTreeMap<String, Value>,
    /// Registered by a cluster that only reads it (another cluster writes it).
    pub readonly: bool,
}

/// An index as the cluster knows it: identity, settings and the mapping it was created with
/// (each copy grows its own mapping dynamically from the documents it indexes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMetadata {
    pub uuid: String,
    pub creation_date: i64,
    pub settings: IndexSettings,
    pub mappings: Value,
}

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterState {
    /// Grows by one with every applied command.
    pub version: u64,
    /// Fixed when the cluster is bootstrapped.
    pub cluster_uuid: Option<String>,
    /// `PUT /_cluster/settings` `persistent` values, by dotted key.
    pub persistent_settings: BTreeMap<String, Value>,
    /// `transient` values: replicated like persistent ones, reset by a full-cluster restart in
    /// Elasticsearch; here they survive it (noted in the API docs).
    pub transient_settings: BTreeMap<String, Value>,
    /// Snapshot repositories by name.
    pub repositories: BTreeMap<String, RepositoryMeta>,
    /// Which node writes to a repository now (a snapshot, a deletion, a cleanup), by
    /// repository: one writer at a time cluster-wide, so that no deletion collects the blobs
    /// of a snapshot another node is taking.
    pub repository_leases: BTreeMap<String, RepositoryLease>,
    /// Snapshot lifecycle policies by id, and what their runs did.
    pub slm_policies: BTreeMap<String, SlmPolicy>,
    pub slm_stats: BTreeMap<String, SlmStats>,
    /// Indices by name.
    pub indices: BTreeMap<String, IndexMetadata>,
    /// Where every copy of every shard lives, which copies are in sync, and primary terms.
    pub routing: BTreeMap<String, IndexRouting>,
    /// Shards (by index) whose copies lost with a departed node are not rebuilt yet because
    /// they wait for it (`index.unassigned.node_left.delayed_timeout`), as the master last
    /// saw them: health reports their missing copies as delayed.
    pub delayed_shards: BTreeMap<String, BTreeSet<u32>>,
}

/// A change to the cluster state, proposed to the master and committed by the quorum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StateCommand {
    /// Changes nothing: a node commits one after it starts, so that once it returns the node
    /// has applied every change committed before (it acts on no stale routing).
    Barrier,
    /// Written once, by the node that bootstraps the cluster.
    Bootstrap {
        cluster_uuid: String,
    },
    /// Sets (or, for `null`, removes) cluster settings.
    PutSettings {
        persistent: BTreeMap<String, Value>,
        transient: BTreeMap<String, Value>,
    },
    /// Registers (or replaces) a snapshot repository.
    PutRepository {
        name: String,
        repository: RepositoryMeta,
    },
    DeleteRepository {
        name: String,
    },
    /// Replaces the set of shards whose lost copies wait for their node.
    SetDelayedShards {
        shards: BTreeMap<String, BTreeSet<u32>>,
    },
    /// Claims `repository` for one writing operation; refused while another lease holds it.
    AcquireRepository {
        repository: String,
        lease: RepositoryLease,
    },
    /// Changes nothing, and is refused unless that node life still holds the repository: a
    /// writer commits it before an irreversible write, so that one whose lease the master
    /// ended (it was paused or cut off) stops instead of writing beside the next holder.
    ConfirmRepository {
        repository: String,
        node_id: String,
        generation: u64,
    },
    /// Ends a lease, if the repository is still held by that node life.
    ReleaseRepository {
        repository: String,
        node_id: String,
        generation: u64,
    },
    PutSlmPolicy {
        id: String,
        policy: SlmPolicy,
    },
    DeleteSlmPolicy {
        id: String,
    },
    /// A policy ran (`run`) and/or its retention deleted `deleted` snapshots.
    RecordSlmRun {
        id: String,
        run: Option<SlmRun>,
        deleted: u64,
    },
    /// Creates an index with its first routing (primaries placed by the proposer).
    CreateIndex {
        name: String,
        meta: IndexMetadata,
        routing: IndexRouting,
    },
    DeleteIndex {
        name: String,
    },
    /// Replaces an index's explicit mapping (merged by the proposer).
    PutMapping {
        name: String,
        mappings: Value,
    },
    /// Replaces an index's dynamic settings (replica count, refresh, ...).
    UpdateIndexSettings {
        name: String,
        settings: IndexSettings,
    },
    /// The master's allocation decision, computed from state `based_on`: applied only if no
    /// other change landed since, so a decision never overwrites a copy's progress.
    Reroute {
        based_on: u64,
        routing: BTreeMap<String, IndexRouting>,
    },
    /// A copy finished recovering: it serves reads and joins the in-sync set.
    ShardStarted {
        index: String,
        shard: usize,
        allocation_id: String,
    },
    /// A node still holds an in-sync copy of a shard that has no primary: it becomes the
    /// primary again (new term).
    ShardFound {
        index: String,
        shard: usize,
        allocation_id: String,
        node_id: String,
    },
    /// A copy failed (a replica missed a write, a recovery broke): it leaves the routing and
    /// the in-sync set. Sent by the primary of `primary_term`; a stale primary is refused.
    ShardFailed {
        index: String,
        shard: usize,
        allocation_id: String,
        primary_term: u64,
        reason: String,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandOutcome {
    /// The state version after the command.
    pub version: u64,
    /// Set when the command was valid when proposed but no longer applies (e.g. a second
    /// bootstrap); the state is unchanged then.
    pub rejected: Option<String>,
}

impl ClusterState {
    pub fn apply(&mut self, command: &StateCommand) -> CommandOutcome {
        match command {
            StateCommand::Barrier => {}
            StateCommand::Bootstrap { cluster_uuid } => {
                if let Some(existing) = &self.cluster_uuid {
                    return self.reject(format!("cluster already bootstrapped as [{existing}]"));
                }
                self.cluster_uuid = Some(cluster_uuid.clone());
            }
            StateCommand::PutSettings {
                persistent,
                transient,
            } => {
                merge_settings(&mut self.persistent_settings, persistent);
                merge_settings(&mut self.transient_settings, transient);
            }
            StateCommand::PutRepository { name, repository } => {
                self.repositories.insert(name.clone(), repository.clone());
            }
            StateCommand::DeleteRepository { name } => {
                if let Some(lease) = self.repository_leases.get(name) {
                    return self.reject(format!(
                        "[{name}] is in use: {} is running on node [{}]",
                        lease.operation, lease.node_id
                    ));
                }
                if self.repositories.remove(name).is_none() {
                    return self.reject(format!("[{name}] missing"));
                }
            }
            StateCommand::SetDelayedShards { shards } => {
                self.delayed_shards.clone_from(shards);
            }
            StateCommand::AcquireRepository { repository, lease } => {
                if !self.repositories.contains_key(repository) {
                    return self.reject(format!("[{repository}] missing"));
                }
                if let Some(held) = self.repository_leases.get(repository) {
                    return self.reject(format!(
                        "{} is already running in this repository on node [{}]",
                        held.operation, held.node_id
                    ));
                }
                self.repository_leases
                    .insert(repository.clone(), lease.clone());
            }
            StateCommand::ConfirmRepository {
                repository,
                node_id,
                generation,
            } => {
                let held = self.repository_leases.get(repository);
                if !held
                    .is_some_and(|held| held.node_id == *node_id && held.generation == *generation)
                {
                    return self.reject(format!(
                        "this node's lease on [{repository}] has ended ({})",
                        held.map_or("nobody holds it now".to_string(), |held| format!(
                            "{} holds it on node [{}]",
                            held.operation, held.node_id
                        ))
                    ));
                }
            }
            StateCommand::ReleaseRepository {
                repository,
                node_id,
                generation,
            } => {
                if self
                    .repository_leases
                    .get(repository)
                    .is_some_and(|held| held.node_id == *node_id && held.generation == *generation)
                {
                    self.repository_leases.remove(repository);
                }
            }
            StateCommand::PutSlmPolicy { id, policy } => {
                self.slm_policies.insert(id.clone(), policy.clone());
            }
            StateCommand::DeleteSlmPolicy { id } => {
                if self.slm_policies.remove(id).is_none() {
                    return self.reject(format!("snapshot lifecycle policy [{id}] missing"));
                }
                self.slm_stats.remove(id);
            }
            StateCommand::RecordSlmRun { id, run, deleted } => {
                if !self.slm_policies.contains_key(id) {
                    return self.reject(format!("snapshot lifecycle policy [{id}] missing"));
                }
                let stats = self.slm_stats.entry(id.clone()).or_default();
                stats.snapshots_deleted += deleted;
                if let Some(run) = run {
                    if run.failure.is_some() {
                        stats.snapshots_failed += 1;
                        stats.last_failure = Some(run.clone());
                    } else {
                        stats.snapshots_taken += 1;
                        stats.last_success = Some(run.clone());
                    }
                }
            }
            StateCommand::CreateIndex {
                name,
                meta,
                routing,
            } => {
                if let Some(existing) = self.indices.get(name) {
                    return self.reject(format!("index [{name}/{}] already exists", existing.uuid));
                }
                self.indices.insert(name.clone(), meta.clone());
                self.routing.insert(name.clone(), routing.clone());
            }
            StateCommand::DeleteIndex { name } => {
                if self.indices.remove(name).is_none() {
                    return self.reject(format!("no such index [{name}]"));
                }
                self.routing.remove(name);
                self.delayed_shards.remove(name);
            }
            StateCommand::PutMapping { name, mappings } => {
                let Some(meta) = self.indices.get_mut(name) else {
                    return self.reject(format!("no such index [{name}]"));
                };
                meta.mappings = mappings.clone();
            }
            StateCommand::UpdateIndexSettings { name, settings } => {
                let Some(meta) = self.indices.get_mut(name) else {
                    return self.reject(format!("no such index [{name}]"));
                };
                meta.settings = settings.clone();
                if let Some(routing) = self.routing.get_mut(name) {
                    routing.replicas = settings.number_of_replicas;
                }
            }
            StateCommand::Reroute { based_on, routing } => {
                if *based_on != self.version {
                    return self.reject(format!(
                        "allocation computed on state {based_on}, now {}",
                        self.version
                    ));
                }
                for (name, index) in routing {
                    if self.routing.contains_key(name) {
                        self.routing.insert(name.clone(), index.clone());
                    }
                }
            }
            StateCommand::ShardStarted {
                index,
                shard,
                allocation_id,
            } => {
                let started = self.shard_routing_mut(index, *shard).and_then(|routing| {
                    let copy = routing
                        .copies
                        .iter_mut()
                        .find(|copy| copy.allocation_id == *allocation_id)?;
                    copy.started = true;
                    routing.in_sync.insert(allocation_id.clone());
                    Some(())
                });
                if started.is_none() {
                    return self.reject(format!(
                        "copy [{allocation_id}] of [{index}][{shard}] is no longer allocated"
                    ));
                }
            }
            StateCommand::ShardFound {
                index,
                shard,
                allocation_id,
                node_id,
            } => {
                let found = self
                    .shard_routing_mut(index, *shard)
                    .is_some_and(|routing| {
                        allocation::reinstate_primary(routing, allocation_id, node_id)
                    });
                if !found {
                    return self.reject(format!(
                        "[{index}][{shard}] has a primary or [{allocation_id}] is not in sync"
                    ));
                }
            }
            StateCommand::ShardFailed {
                index,
                shard,
                allocation_id,
                primary_term,
                ..
            } => {
                let failed = match self.shard_routing_mut(index, *shard) {
                    None => Err(format!("no shard [{index}][{shard}]")),
                    Some(routing) if *primary_term < routing.primary_term => Err(format!(
                        "primary term {primary_term} is stale, the shard is in term {}",
                        routing.primary_term
                    )),
                    Some(routing) => {
                        if allocation::fail_copy(routing, allocation_id) {
                            Ok(())
                        } else {
                            Err(format!("copy [{allocation_id}] is no longer allocated"))
                        }
                    }
                };
                if let Err(reason) = failed {
                    return self.reject(reason);
                }
            }
        }
        self.version += 1;
        CommandOutcome {
            version: self.version,
            rejected: None,
        }
    }

    fn shard_routing_mut(
        &mut self,
        index: &str,
        shard: usize,
    ) -> Option<&mut allocation::ShardRouting> {
        self.routing.get_mut(index)?.shards.get_mut(shard)
    }

    fn reject(&self, reason: String) -> CommandOutcome {
        CommandOutcome {
            version: self.version,
            rejected: Some(reason),
        }
    }

    /// A setting's effective value: transient over persistent.
    pub fn setting(&self, key: &str) -> Option<&Value> {
        self.transient_settings
            .get(key)
            .or_else(|| self.persistent_settings.get(key))
    }
}

fn merge_settings(target: &mut BTreeMap<String, Value>, changes: &BTreeMap<String, Value>) {
    for (key, value) in changes {
        if value.is_null() {
            target.remove(key);
        } else {
            target.insert(key.clone(), value.clone());
        }
    }
}

/// Flattens `{"cluster": {"routing": {...}}}` and `{"cluster.routing...": ...}` alike into
/// dotted keys, refusing unknown settings by name.
pub fn flatten_settings(section: &Value) -> Result<BTreeMap<String, Value>, String> {
    let mut flat = BTreeMap::new();
    match section {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                flatten_into(key, value, &mut flat);
            }
        }
        other => return Err(format!("settings must be an object, got {other}")),
    }
    for key in flat.keys() {
        if !KNOWN_CLUSTER_SETTINGS.contains(&key.as_str()) {
            return Err(format!("setting [{key}], not recognized"));
        }
    }
    Ok(flat)
}

fn flatten_into(prefix: &str, value: &Value, flat: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                flatten_into(&format!("{prefix}.{key}"), inner, flat);
            }
        }
        // Elasticsearch stores setting values as strings; lists stay lists.
        Value::Number(_) | Value::Bool(_) => {
            flat.insert(prefix.to_string(), Value::String(value.to_string()));
        }
        _ => {
            flat.insert(prefix.to_string(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_apply_in_order_and_bump_the_version() {
        let mut state = ClusterState::default();
        let outcome = state.apply(&StateCommand::Bootstrap {
            cluster_uuid: "u1".into(),
        });
        assert_eq!(outcome.version, 1);
        let again = state.apply(&StateCommand::Bootstrap {
            cluster_uuid: "u2".into(),
        });
        assert!(again.rejected.is_some());
        assert_eq!(state.cluster_uuid.as_deref(), Some("u1"));
        assert_eq!(state.version, 1, "a rejected command changes nothing");

        let set = flatten_settings(
            &json!({"cluster": {"routing": {"allocation": {"enable": "primaries"}}}}),
        )
        .expect("known setting");
        state.apply(&StateCommand::PutSettings {
            persistent: set,
            transient: BTreeMap::new(),
        });
        assert_eq!(
            state.setting("cluster.routing.allocation.enable"),
            Some(&json!("primaries"))
        );
        let transient = flatten_settings(&json!({"cluster.routing.allocation.enable": "none"}))
            .expect("flat key");
        state.apply(&StateCommand::PutSettings {
            persistent: BTreeMap::new(),
            transient,
        });
        assert_eq!(
            state.setting("cluster.routing.allocation.enable"),
            Some(&json!("none"))
        );
        let clear = flatten_settings(&json!({"cluster.routing.allocation.enable": null}))
            .expect("null clears");
        state.apply(&StateCommand::PutSettings {
            persistent: BTreeMap::new(),
            transient: clear,
        });
        assert_eq!(
            state.setting("cluster.routing.allocation.enable"),
            Some(&json!("primaries"))
        );
        assert_eq!(state.version, 4);
    }

    #[test]
    fn unknown_settings_and_non_objects_are_refused() {
        let err = flatten_settings(&json!({"cluster.routing.allocation.enabel": "all"}))
            .expect_err("typo");
        assert!(err.contains("cluster.routing.allocation.enabel"), "{err}");
        assert!(flatten_settings(&json!("all")).is_err());
        let numbers = flatten_settings(&json!({"cluster.max_shards_per_node": 5})).expect("number");
        assert_eq!(numbers["cluster.max_shards_per_node"], json!("5"));
    }
}
