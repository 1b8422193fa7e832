//! Keeps every shard and logs through the host; reports its config in the log.

use shoal_plugin_sdk::pruning::{PluginError, PruneRequest, PruningPlugin};

struct KeepAll;

impl PruningPlugin for KeepAll {
    fn select_shards(request: PruneRequest) -> Result<Vec<u32>, PluginError> {
        shoal_plugin_sdk::host::counter_add("decisions", 1);
        let first_index = if request.index_count > 0 {
            shoal_plugin_sdk::pruning::index_name(0)
        } else {
            String::new()
        };
        shoal_plugin_sdk::log::info(&format!(
            "keeping {} shards of {} indices (first: {first_index}) for {} on {}, config {}",
            request.shards.len(),
            request.index_count,
            shoal_plugin_sdk::pruning::index_pattern(),
            shoal_plugin_sdk::pruning::timestamp_field(),
            shoal_plugin_sdk::host::config()
        ));
        Ok((0..request.shards.len() as u32).collect())
    }
}

shoal_plugin_sdk::export_pruning_plugin!(KeepAll);
