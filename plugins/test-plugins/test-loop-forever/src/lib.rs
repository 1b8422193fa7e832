//! Spins forever: only the host's epoch deadline stops it.

use shoal_plugin_sdk::pruning::{PluginError, PruneRequest, PruningPlugin};

struct LoopForever;

impl PruningPlugin for LoopForever {
    fn select_shards(request: PruneRequest) -> Result<Vec<u32>, PluginError> {
        let mut counter: u64 = request.shards.len() as u64;
        loop {
            counter =
                std::hint::black_box(counter.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

shoal_plugin_sdk::export_pruning_plugin!(LoopForever);
