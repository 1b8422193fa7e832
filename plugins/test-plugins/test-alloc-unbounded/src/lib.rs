//! Allocates until something stops it: the host's memory cap must.

use shoal_plugin_sdk::pruning::{PluginError, PruneRequest, PruningPlugin};

struct AllocUnbounded;

impl PruningPlugin for AllocUnbounded {
    fn select_shards(_request: PruneRequest) -> Result<Vec<u32>, PluginError> {
        // Big zeroed chunks reach any cap in a few fast steps (fresh pages need no memset).
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; 16 << 20];
            chunk[0] = 1;
            hoard.push(chunk);
            std::hint::black_box(&hoard);
        }
    }
}

shoal_plugin_sdk::export_pruning_plugin!(AllocUnbounded);
