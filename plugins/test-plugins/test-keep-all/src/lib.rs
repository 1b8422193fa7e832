//! Keeps every shard and logs through the host; reports its config in the log.

use shoal_plugin_sdk::pruning::{PluginError, PruneRequest, PruningPlugin};

struct KeepAll;

impl PruningPlugin for KeepAll {
    fn select_shards(request: PruneRequest) -> Result<Vec<u32>, PluginError> {
        shoal_plugin_sdk::host::counter_add("decisions", 1);
        shoal_plugin_sdk::log::debug(&format!("keeping {} shards, config {}", request.shards.len(), shoal_plugin_sdk::host::config()));
        Ok((0..request.shards.len() as u32).collect())
    }
}

shoal_plugin_sdk::export_pruning_plugin!(KeepAll);
