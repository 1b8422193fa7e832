//! Plugin routes: list and inspect installed plugins, enable and disable them.

use serde_json::{Map, Value, json};

use super::{Reply, Request, ok};
use crate::error::{Error, Result};

fn plugin_not_found(name: &str) -> Error {
    Error::ResourceNotFound(format!("plugin [{name}] is not installed"))
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
        .ok_or_else(|| plugin_not_found(name))?;
    ok(plugin.describe())
}

pub(super) fn set_enabled(request: &Request, name: &str, enabled: bool) -> Result<Reply> {
    let plugin = request
        .node
        .plugins
        .get(name)
        .ok_or_else(|| plugin_not_found(name))?;
    plugin.set_enabled(enabled);
    tracing::info!(plugin = name, enabled, "plugin state changed");
    ok(json!({ "acknowledged": true, "plugin": plugin.describe() }))
}
