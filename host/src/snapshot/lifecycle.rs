//! Runs snapshot lifecycle policies: the scheduler on the master, `_execute`, and retention.
//! Outcomes are recorded in the cluster state, so stats and the last run survive restarts and
//! a new master knows what the old one did.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::format::SnapshotState;
use super::slm::{SlmRun, Taken, is_due, parse_schedule, retention_victims, snapshot_name};
use super::{CreateRequest, manifests, open, registered};
use crate::cluster::consensus::DEFAULT_MASTER_TIMEOUT;
use crate::cluster::state::StateCommand;
use crate::error::{Error, Result};
use crate::node::NodeState;

const SCHEDULER_TICK: Duration = Duration::from_secs(1);

async fn record(node: &NodeState, command: StateCommand) {
    if let Err(err) = node
        .cluster
        .consensus
        .propose(command, DEFAULT_MASTER_TIMEOUT)
        .await
    {
        tracing::warn!(error = %err, "could not record a lifecycle policy run");
    }
}

/// Runs policy `id` now: takes its snapshot, records the run, applies its retention.
/// Returns the snapshot's name.
pub async fn execute(node: Arc<NodeState>, id: &str) -> Result<String> {
    let state = node.cluster.consensus.state();
    let policy = state.slm_policies.get(id).cloned().ok_or_else(|| {
        Error::ResourceNotFound(format!("snapshot lifecycle policy [{id}] missing"))
    })?;
    let now = chrono::Utc::now().timestamp_millis();
    let suffix = crate::ids::new_uuid()
        .to_lowercase()
        .replace(['_', '-'], "");
    let name = snapshot_name(&policy.name, now, &suffix[..8.min(suffix.len())])
        .map_err(Error::IllegalArgument)?;
    let config = &policy.config;
    let indices = super::index_expression(config.get("indices")).map_err(Error::IllegalArgument)?;
    let mut metadata = config.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["policy"] = json!(id);
    let request = CreateRequest {
        repository: policy.repository.clone(),
        snapshot: name.clone(),
        indices,
        partial: config
            .get("partial")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        metadata,
        include_global_state: config
            .get("include_global_state")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    };
    let worker = node.clone();
    let outcome = tokio::task::spawn_blocking(move || super::create(&worker, &request))
        .await
        .map_err(|err| Error::Internal(format!("snapshot task failed: {err}")))?;
    let failure = match &outcome {
        Ok(manifest) if manifest.state == SnapshotState::Success => None,
        Ok(manifest) => Some(format!(
            "snapshot ended {:?}: {}",
            manifest.state,
            manifest.failures.join("; ")
        )),
        Err(err) => Some(err.to_string()),
    };
    let run = SlmRun {
        snapshot_name: Some(name.clone()),
        time_millis: now,
        failure: failure.clone(),
    };
    tracing::info!(policy = id, snapshot = %name, failure = ?failure, "lifecycle policy ran");
    record(
        &node,
        StateCommand::RecordSlmRun {
            id: id.to_string(),
            run: Some(run),
            deleted: 0,
        },
    )
    .await;
    if let Err(err) = retention(node.clone(), Some(id)).await {
        tracing::warn!(policy = id, error = %err, "retention failed");
    }
    outcome.map(|_| name)
}

/// Deletes the snapshots each policy's retention no longer keeps (only the policy's own
/// successful snapshots count). Returns how many were deleted.
pub async fn retention(node: Arc<NodeState>, only: Option<&str>) -> Result<u64> {
    let state = node.cluster.consensus.state();
    let mut total = 0;
    for (id, policy) in &state.slm_policies {
        if only.is_some_and(|only| only != id) {
            continue;
        }
        let Some(retention) = policy.retention.clone() else {
            continue;
        };
        let worker = node.clone();
        let (policy_id, repository) = (id.clone(), policy.repository.clone());
        let deleted = tokio::task::spawn_blocking(move || -> Result<u64> {
            let meta = registered(&worker, &repository)?;
            let mut session = open(&worker, &repository, &meta)?;
            let taken: Vec<Taken> = manifests(&mut session, &repository)?
                .into_values()
                .filter(|m| m.state == SnapshotState::Success && m.metadata["policy"] == json!(policy_id))
                .map(|m| Taken {
                    name: m.snapshot,
                    start_millis: m.start_time_in_millis,
                })
                .collect();
            drop(session);
            let now = chrono::Utc::now().timestamp_millis();
            let victims = retention_victims(taken, &retention, now).map_err(Error::IllegalArgument)?;
            if !victims.is_empty() {
                super::delete(&worker, &repository, &victims)?;
            }
            for victim in &victims {
                tracing::info!(policy = %policy_id, snapshot = %victim, "retention deleted snapshot");
            }
            Ok(victims.len() as u64)
        })
        .await
        .map_err(|err| Error::Internal(format!("retention task failed: {err}")))??;
        if deleted > 0 {
            record(
                &node,
                StateCommand::RecordSlmRun {
                    id: id.clone(),
                    run: None,
                    deleted,
                },
            )
            .await;
        }
        total += deleted;
    }
    Ok(total)
}

/// On the master, runs every policy whose schedule came due since its last run (or since it
/// was defined). Runs on every node; only the master acts.
pub async fn scheduler(node: Arc<NodeState>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(SCHEDULER_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let local = node.cluster.membership.local().node_id;
        if node.cluster.consensus.master().map(|peer| peer.node_id) != Some(local) {
            continue;
        }
        let state = node.cluster.consensus.state();
        let now = chrono::Utc::now().timestamp_millis();
        for (id, policy) in &state.slm_policies {
            let Ok(schedule) = parse_schedule(&policy.schedule) else {
                continue;
            };
            let since = state
                .slm_stats
                .get(id)
                .and_then(|stats| stats.last_run_millis())
                .unwrap_or(policy.modified_date_millis)
                .max(policy.modified_date_millis);
            if is_due(&schedule, since, now)
                && let Err(err) = execute(node.clone(), id).await
            {
                tracing::warn!(policy = %id, error = %err, "scheduled snapshot failed");
            }
        }
    }
}
