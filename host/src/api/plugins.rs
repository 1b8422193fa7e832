//! Plugin routes: list, inspect, upload (install or hot-replace), configure, enable, disable,
//! remove.

use serde_json::{Map, Value, json};

use super::{Reply, Request, ok};
use crate::error::{Error, Result};
use crate::plugins::{InstallRequest, LimitsOverride, PluginError, PluginKind};
use crate::units::{parse_byte_size, parse_time_value};

impl From<PluginError> for Error {
    fn from(err: PluginError) -> Error {
        match err {
            PluginError::NotInstalled { .. } => Error::ResourceNotFound(err.to_string()),
            PluginError::Load { .. } | PluginError::WrongKind { .. } => {
                Error::IllegalArgument(err.to_string())
            }
            _ => Error::Internal(err.to_string()),
        }
    }
}

pub(super) fn list(request: &Request) -> Result<Reply> {
    let plugins: Map<String, Value> = request
        .node
        .plugins
        .all()
        .iter()
        .map(|plugin| (plugin.name.clone(), plugin.describe()))
        .collect();
    ok(json!({ "plugins": plugins }))
}

pub(super) fn get(request: &Request, name: &str) -> Result<Reply> {
    let plugin = request
        .node
        .plugins
        .get(name)
        .ok_or_else(|| PluginError::NotInstalled {
            plugin: name.to_string(),
        })?;
    ok(plugin.describe())
}

/// `PUT /_plugins/{name}?version=V` with the component's bytes as the body.
pub(super) async fn upload(request: Request, name: &str) -> Result<Reply> {
    if request.body.is_empty() {
        return Err(Error::IllegalArgument(format!(
            "plugin [{name}]: the request body must be the .wasm component"
        )));
    }
    let version = request.param("version").unwrap_or("0.0.0").to_string();
    let expected = match request.param("kind") {
        None => None,
        Some(text) => Some(PluginKind::parse(text).ok_or_else(|| {
            Error::IllegalArgument(format!("unknown plugin kind [{text}]: expected pruning, query-isolation, switchover or repository"))
        })?),
    };
    let limits = parse_limits(&request)?;
    let node = request.node.clone();
    let owned = name.to_string();
    let bytes = request.body.clone();
    let plugin = super::blocking(move || {
        let install = InstallRequest {
            name: &owned,
            version: &version,
            bytes: &bytes,
            shipped: false,
            expected,
            limits,
        };
        node.plugins.upload(install).map_err(Error::from)
    })
    .await?;
    ok(json!({ "acknowledged": true, "plugin": plugin.describe() }))
}

pub(super) fn set_enabled(request: &Request, name: &str, enabled: bool) -> Result<Reply> {
    let plugin = request.node.plugins.set_enabled(name, enabled)?;
    tracing::info!(plugin = name, enabled, "plugin state changed");
    ok(json!({ "acknowledged": true, "plugin": plugin.describe() }))
}

/// `PUT /_plugins/{name}/_config` with any JSON object.
pub(super) fn set_config(request: &Request, name: &str) -> Result<Reply> {
    let config = request.json()?;
    if !config.is_object() {
        return Err(Error::Parsing(format!(
            "plugin [{name}]: the config must be a JSON object"
        )));
    }
    let plugin = request.node.plugins.set_config(name, config.to_string())?;
    ok(json!({ "acknowledged": true, "plugin": plugin.describe() }))
}

pub(super) fn remove(request: &Request, name: &str) -> Result<Reply> {
    request.node.plugins.remove(name)?;
    ok(json!({ "acknowledged": true }))
}

/// `max_memory` (`16mb`), `deadline` (`50ms`), `fuel` (units per call, or `unlimited`) and
/// `on_failure` (`open`/`closed`) upload parameters; unset ones keep the plugin's current (or
/// default) limits.
fn parse_limits(request: &Request) -> Result<LimitsOverride> {
    let memory_bytes = request
        .param("max_memory")
        .map(parse_byte_size)
        .transpose()?
        .map(|bytes| bytes as usize);
    let deadline = match request.param("deadline") {
        None => None,
        Some(text) => Some(
            parse_time_value(text)?
                .filter(|deadline| !deadline.is_zero())
                .ok_or_else(|| {
                    Error::IllegalArgument("a plugin deadline must be positive".into())
                })?,
        ),
    };
    let fuel = match request.param("fuel") {
        None => None,
        Some("unlimited") => Some(None),
        Some(text) => Some(Some(
            text.parse::<u64>()
                .ok()
                .filter(|fuel| *fuel > 0)
                .ok_or_else(|| {
                    Error::IllegalArgument(format!(
                        "[fuel] must be a positive number of units or [unlimited], got [{text}]"
                    ))
                })?,
        )),
    };
    let fail_closed = match request.param("on_failure") {
        None => None,
        Some("open") => Some(false),
        Some("closed") => Some(true),
        Some(other) => {
            return Err(Error::IllegalArgument(format!(
                "[on_failure] must be open or closed, got [{other}]"
            )));
        }
    };
    Ok(LimitsOverride {
        memory_bytes,
        deadline,
        fuel,
        fail_closed,
    })
}
