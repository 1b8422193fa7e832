//! Keeps every shard and says so in the log. Built from `wit/plugin.wit`, a frozen copy of
//! `shoal:plugin@1.0.0`: a host of any later 1.x version must link its imports and find its
//! exports by semver, or plugins already in the field stop loading.

wit_bindgen::generate!({
    world: "pruning-plugin",
    path: "wit",
});

use exports::shoal::plugin::pruning::{Guest, PruneRequest};
use shoal::plugin::host;
use shoal::plugin::types::{LogLevel, PluginError};

struct KeepAll;

impl Guest for KeepAll {
    fn select_shards(request: PruneRequest) -> Result<Vec<u32>, PluginError> {
        host::log(
            LogLevel::Info,
            &format!(
                "built against shoal:plugin@1.0.0, keeping {} shards",
                request.shards.shard.len()
            ),
        );
        Ok((0..request.shards.shard.len() as u32).collect())
    }
}

export!(KeepAll);
