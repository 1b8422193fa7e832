//! Index administration through the cluster state: creating, deleting, re-setting and mapping
//! an index is a committed change that every node then applies, never a local edit; and the
//! maintenance (`_refresh`, `_flush`, `_forcemerge`) every copy runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::master::{allocation_settings, data_nodes};
use super::wire::{CopyOperation, DataRequest, DataResponse};
use crate::api::blocking;
use crate::cluster::allocation::{self, IndexRouting, ShardRouting};
use crate::cluster::consensus::ProposeError;
use crate::cluster::state::{IndexMetadata, StateCommand};
use crate::error::{Error, Result};
use crate::ids::new_uuid;
use crate::index::{IndexService, parse_create_body, validate_index_name};
use crate::mapping::Mapping;
use crate::node::NodeState;
use crate::plugins::{PluginKind, roles};
use crate::shard::Shard;

/// How long index creation waits for its primaries to start (`shards_acknowledged`).
const WAIT_FOR_PRIMARIES: Duration = Duration::from_secs(30);

async fn commit(node: &NodeState, command: StateCommand, timeout: Duration) -> Result<()> {
    node.cluster
        .consensus
        .propose(command, timeout)
        .await
        .map(|_| ())
        .map_err(|err| match err {
            ProposeError::Rejected(reason) => Error::IllegalArgument(reason),
            other => Error::MasterNotDiscovered(other.to_string()),
        })
}

/// The index as laid out on this node, laying it out from the cluster state if this node has
/// not applied it yet.
pub fn index(node: &NodeState, name: &str) -> Result<Arc<IndexService>> {
    match node.indices.get(name) {
        Ok(index) => Ok(index),
        Err(Error::IndexNotFound(_)) => {
            let state = node.cluster.consensus.state();
            let meta = state
                .indices
                .get(name)
                .ok_or_else(|| Error::IndexNotFound(name.to_string()))?;
            node.indices.ensure(name, meta, state.version)
        }
        Err(err) => Err(err),
    }
}

/// Creates an index from a `PUT /{index}` body; returns whether its primaries started in time.
pub async fn create_index(
    node: &Arc<NodeState>,
    name: &str,
    body: &Value,
    master_timeout: Duration,
) -> Result<bool> {
    validate_index_name(name)?;
    let (settings, mapping) = parse_create_body(body)?;
    check_pruning_plugin(node, &settings.pruning_plugin)?;
    let state = node.cluster.consensus.state();
    if let Some(existing) = state.indices.get(name) {
        return Err(Error::IndexAlreadyExists {
            name: name.to_string(),
            uuid: existing.uuid.clone(),
        });
    }
    let routing = place_new_index(
        node,
        name,
        settings.number_of_replicas,
        settings.number_of_shards as usize,
    );
    let meta = IndexMetadata {
        uuid: new_uuid(),
        creation_date: chrono::Utc::now().timestamp_millis(),
        settings,
        mappings: mapping.to_json(),
    };
    let command = StateCommand::CreateIndex {
        name: name.to_string(),
        meta: meta.clone(),
        routing,
    };
    match node
        .cluster
        .consensus
        .propose(command, master_timeout)
        .await
    {
        Ok(_) => {}
        Err(ProposeError::Rejected(_)) => {
            let state = node.cluster.consensus.state();
            return Err(Error::IndexAlreadyExists {
                name: name.to_string(),
                uuid: state
                    .indices
                    .get(name)
                    .map(|m| m.uuid.clone())
                    .unwrap_or_default(),
            });
        }
        Err(other) => return Err(Error::MasterNotDiscovered(other.to_string())),
    }
    tracing::info!(index = name, uuid = %meta.uuid, "created index");
    let version = node.cluster.consensus.state().version;
    node.indices.ensure(name, &meta, version)?;
    Ok(wait_for_primaries(node, name).await)
}

/// Where a new index's copies go: allocated on the live data nodes as the master would.
pub fn place_new_index(node: &NodeState, name: &str, replicas: u32, shards: usize) -> IndexRouting {
    let fresh = BTreeMap::from([(
        name.to_string(),
        IndexRouting {
            replicas,
            shards: vec![ShardRouting::default(); shards],
        },
    )]);
    let state = node.cluster.consensus.state();
    let mut decided = allocation::allocate(
        &fresh,
        &data_nodes(node),
        &allocation_settings(&state),
        &Default::default(),
        new_uuid,
    );
    decided.routing.remove(name).unwrap_or_default()
}

/// Waits (up to 30 s) until every primary of `name` is started; returns whether they are.
pub async fn wait_for_primaries(node: &NodeState, name: &str) -> bool {
    let mut states = node.cluster.consensus.watch();
    let started = tokio::time::timeout(
        WAIT_FOR_PRIMARIES,
        states.wait_for(|state| {
            state.routing.get(name).is_some_and(|routing| {
                routing
                    .shards
                    .iter()
                    .all(|shard| shard.primary().is_some_and(|p| p.started))
            })
        }),
    )
    .await;
    matches!(started, Ok(Ok(_)))
}

/// Deletes indices by name.
pub async fn delete_indices(node: &NodeState, names: &[String], timeout: Duration) -> Result<()> {
    for name in names {
        commit(
            node,
            StateCommand::DeleteIndex { name: name.clone() },
            timeout,
        )
        .await
        .or_else(|err| match err {
            // Deleted meanwhile by another request: the outcome the caller wanted.
            Error::IllegalArgument(_) => Ok(()),
            other => Err(other),
        })?;
        match node.indices.delete(name) {
            Ok(()) | Err(Error::IndexNotFound(_)) => {}
            Err(err) => return Err(err),
        }
        node.copies.forget_index(name);
    }
    Ok(())
}

/// Refuses an `index.plugins.pruning` naming no pruning plugin of this node.
fn check_pruning_plugin(node: &NodeState, choice: &Option<String>) -> Result<()> {
    match choice {
        Some(name) => roles::check(
            &node.plugins,
            PluginKind::Pruning,
            "index.plugins.pruning",
            name,
        )
        .map_err(Error::IllegalArgument),
        None => Ok(()),
    }
}

/// Updates dynamic settings of `indices` (validated against each first, so a bad value for one
/// changes none).
pub async fn update_settings(
    node: &NodeState,
    indices: &[Arc<IndexService>],
    body: &Value,
    timeout: Duration,
) -> Result<()> {
    let mut updated = Vec::with_capacity(indices.len());
    for index in indices {
        let current = index.meta.settings();
        let settings = current.apply(body, false)?;
        if settings.pruning_plugin != current.pruning_plugin {
            check_pruning_plugin(node, &settings.pruning_plugin)?;
        }
        updated.push(settings);
    }
    for (index, settings) in indices.iter().zip(updated) {
        commit(
            node,
            StateCommand::UpdateIndexSettings {
                name: index.name().to_string(),
                settings,
            },
            timeout,
        )
        .await?;
        adopt(node, index)?;
    }
    Ok(())
}

/// Merges an explicit mapping into `indices` (checked against each first).
pub async fn put_mapping(
    node: &NodeState,
    indices: &[Arc<IndexService>],
    addition: &Mapping,
    timeout: Duration,
) -> Result<()> {
    let state = node.cluster.consensus.state();
    let mut merged = Vec::with_capacity(indices.len());
    for index in indices {
        index.meta.mapping().merge(addition)?;
        let cluster_mapping = state
            .indices
            .get(index.name())
            .map(|meta| Mapping::parse(&meta.mappings))
            .transpose()?
            .unwrap_or_default();
        merged.push(cluster_mapping.merge(addition)?);
    }
    for (index, mapping) in indices.iter().zip(merged) {
        commit(
            node,
            StateCommand::PutMapping {
                name: index.name().to_string(),
                mappings: mapping.to_json(),
            },
            timeout,
        )
        .await?;
        adopt(node, index)?;
    }
    Ok(())
}

/// Applies the committed metadata of `index` here now, so this request's response reflects it.
fn adopt(node: &NodeState, index: &IndexService) -> Result<()> {
    let state = node.cluster.consensus.state();
    match state.indices.get(index.name()) {
        Some(meta) => index.adopt_cluster_metadata(meta, state.version),
        None => Ok(()),
    }
}

/// Runs `operation` on every started copy of `indices`, on every node that holds one, as
/// Elasticsearch's broadcast `_refresh`, `_flush` and `_forcemerge` do; returns (total,
/// successful) copies.
pub async fn on_every_copy(
    node: &Arc<NodeState>,
    indices: &[Arc<IndexService>],
    operation: CopyOperation,
) -> Result<(usize, usize)> {
    let state = node.cluster.consensus.state();
    let mut total = 0;
    let mut successful = 0;
    let mut remote: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for index in indices {
        let Some(routing) = state.routing.get(index.name()) else {
            continue;
        };
        for shard in &routing.shards {
            for copy in shard.copies.iter().filter(|copy| copy.started) {
                total += 1;
                if copy.node_id != node.identity.node_id {
                    let names = remote.entry(copy.node_id.clone()).or_default();
                    if !names.contains(&index.name().to_string()) {
                        names.push(index.name().to_string());
                    }
                }
            }
        }
    }
    let local: Vec<Arc<Shard>> = indices
        .iter()
        .flat_map(|index| {
            index
                .local_shards()
                .into_iter()
                .filter(|shard| node.copies.active(index.name(), shard.id.shard).is_some())
        })
        .collect();
    successful += local.len();
    blocking(move || local.iter().try_for_each(|shard| operation.run(shard))).await?;
    // A force merge rewrites whole shards.
    let timeout = match operation {
        CopyOperation::ForceMerge { .. } => Duration::from_secs(3600),
        CopyOperation::Refresh | CopyOperation::Flush => super::SHARD_REQUEST_TIMEOUT,
    };
    for (node_id, names) in remote {
        for name in names {
            let request = DataRequest::OnCopies {
                index: name,
                operation,
            };
            if let Ok(DataResponse::Ran { copies }) =
                super::ask_within(node, &node_id, request, timeout).await
            {
                successful += copies;
            }
        }
    }
    Ok((total, successful.min(total)))
}
