//! Snapshot lifecycle routes: `/_slm/policy/{id}`, `_execute`, `_execute_retention`, `_slm/stats`.

use serde_json::{Value, json};

use super::{Reply, Request, ok};
use crate::cluster::state::StateCommand;
use crate::error::{Error, Result, illegal};
use crate::snapshot::lifecycle;
use crate::snapshot::slm::{Retention, SlmPolicy, parse_schedule, snapshot_name};

async fn commit(request: &Request, command: StateCommand) -> Result<()> {
    super::cluster::commit(request, command, Error::ResourceNotFound).await
}

/// `PUT /_slm/policy/{id}`: validated (schedule, name, repository) before it is stored.
pub(super) async fn put_policy(request: Request, id: &str) -> Result<Reply> {
    if id.is_empty()
        || id.starts_with('_')
        || id != id.to_lowercase()
        || id.contains([' ', ',', '/', '*'])
    {
        return Err(illegal(format!("invalid policy id [{id}]")));
    }
    let body = request.json()?;
    let text = |key: &str| -> Result<String> {
        body.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| illegal(format!("policy [{id}] is missing [{key}]")))
    };
    let (schedule, name, repository) = (text("schedule")?, text("name")?, text("repository")?);
    parse_schedule(&schedule).map_err(illegal)?;
    let now = chrono::Utc::now().timestamp_millis();
    snapshot_name(&name, now, "x").map_err(illegal)?;
    crate::snapshot::registered(&request.node, &repository)
        .map_err(|_| illegal(format!("no such repository [{repository}]")))?;
    let retention: Option<Retention> = match body.get("retention") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            serde_json::from_value(value.clone())
                .map_err(|err| illegal(format!("invalid retention: {err}")))?,
        ),
    };
    if let Some(Retention {
        expire_after: Some(age),
        ..
    }) = &retention
    {
        crate::units::parse_time_value(age)?;
    }
    let policy = SlmPolicy {
        name,
        schedule,
        repository,
        config: body.get("config").cloned().unwrap_or_else(|| json!({})),
        retention,
        modified_date_millis: now,
    };
    commit(
        &request,
        StateCommand::PutSlmPolicy {
            id: id.to_string(),
            policy,
        },
    )
    .await?;
    ok(json!({ "acknowledged": true }))
}

/// `GET /_slm/policy[/{id}]`.
pub(super) fn get_policies(request: &Request, id: Option<&str>) -> Result<Reply> {
    let state = request.node.cluster.consensus.state();
    let mut out = serde_json::Map::new();
    for (name, policy) in &state.slm_policies {
        if id.is_some_and(|wanted| !wanted.split(',').any(|w| w == name)) {
            continue;
        }
        let stats = state.slm_stats.get(name).cloned().unwrap_or_default();
        let next = parse_schedule(&policy.schedule).ok().and_then(|schedule| {
            schedule
                .upcoming(chrono::Utc)
                .next()
                .map(|at| at.timestamp_millis())
        });
        out.insert(
            name.clone(),
            json!({
                "modified_date_millis": policy.modified_date_millis,
                "policy": {
                    "name": policy.name,
                    "schedule": policy.schedule,
                    "repository": policy.repository,
                    "config": policy.config,
                    "retention": policy.retention,
                },
                "last_success": stats.last_success,
                "last_failure": stats.last_failure,
                "next_execution_millis": next,
                "stats": {
                    "snapshots_taken": stats.snapshots_taken,
                    "snapshots_failed": stats.snapshots_failed,
                    "snapshots_deleted": stats.snapshots_deleted,
                },
            }),
        );
    }
    if let Some(wanted) = id
        && out.is_empty()
    {
        return Err(Error::ResourceNotFound(format!(
            "snapshot lifecycle policy or policies [{wanted}] not found"
        )));
    }
    ok(Value::Object(out))
}

pub(super) async fn delete_policy(request: Request, id: &str) -> Result<Reply> {
    commit(
        &request,
        StateCommand::DeleteSlmPolicy { id: id.to_string() },
    )
    .await?;
    ok(json!({ "acknowledged": true }))
}

/// `POST /_slm/policy/{id}/_execute`: takes the policy's snapshot now (and waits for it).
pub(super) async fn execute(request: Request, id: &str) -> Result<Reply> {
    let name = lifecycle::execute(request.node.clone(), id).await?;
    ok(json!({ "snapshot_name": name }))
}

pub(super) async fn execute_retention(request: Request) -> Result<Reply> {
    let deleted = lifecycle::retention(request.node.clone(), None).await?;
    ok(json!({ "acknowledged": true, "deleted": deleted }))
}

pub(super) fn stats(request: &Request) -> Result<Reply> {
    let state = request.node.cluster.consensus.state();
    let per_policy: Vec<Value> = state
        .slm_stats
        .iter()
        .map(|(id, stats)| {
            json!({
                "policy": id,
                "snapshots_taken": stats.snapshots_taken,
                "snapshots_failed": stats.snapshots_failed,
                "snapshots_deleted": stats.snapshots_deleted,
            })
        })
        .collect();
    let sum = |pick: fn(&crate::snapshot::slm::SlmStats) -> u64| {
        state.slm_stats.values().map(pick).sum::<u64>()
    };
    ok(json!({
        "total_snapshots_taken": sum(|s| s.snapshots_taken),
        "total_snapshots_failed": sum(|s| s.snapshots_failed),
        "total_snapshots_deleted": sum(|s| s.snapshots_deleted),
        "policy_stats": per_policy,
    }))
}
