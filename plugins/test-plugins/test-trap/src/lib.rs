//! Traps on every call.

use shoal_plugin_sdk::pruning::{PluginError, PruneRequest, PruningPlugin};

struct Trap;

impl PruningPlugin for Trap {
    fn select_shards(request: PruneRequest) -> Result<Vec<u32>, PluginError> {
        if request.shards.len() < usize::MAX {
            core::arch::wasm32::unreachable();
        }
        Ok(Vec::new())
    }
}

shoal_plugin_sdk::export_pruning_plugin!(Trap);
