//! Tries to read a file it was never granted and reports what happened as its error.

use shoal_plugin_sdk::pruning::{PluginError, PruneRequest, PruningPlugin};

struct ReadFile;

impl PruningPlugin for ReadFile {
    fn select_shards(_request: PruneRequest) -> Result<Vec<u32>, PluginError> {
        match std::fs::read("/etc/passwd") {
            Ok(bytes) => Err(PluginError::Internal(format!(
                "read {} bytes it should not see",
                bytes.len()
            ))),
            Err(err) => Err(PluginError::Unavailable(format!(
                "file access denied: {err}"
            ))),
        }
    }
}

shoal_plugin_sdk::export_pruning_plugin!(ReadFile);
