//! Time-series pruning, shipped with Shoal and on by default: a shard is searched only if its
//! timestamp range overlaps the query's. A shard with no timestamps cannot match a required
//! range on the timestamp field and is skipped too.

use shoal_plugin_sdk::pruning::{PluginError, PruneRequest, PruningPlugin};
use shoal_plugin_sdk::time::overlaps;

struct TimeSeriesPruning;

impl PruningPlugin for TimeSeriesPruning {
    fn select_shards(request: PruneRequest) -> Result<Vec<u32>, PluginError> {
        let range = &request.query_range;
        if let (Some(min), Some(max)) = (range.min, range.max)
            && min > max
        {
            return Err(PluginError::InvalidInput(format!(
                "empty time range: {min} > {max}"
            )));
        }
        let keep = request
            .shards
            .iter()
            .enumerate()
            .filter(|(_, shard)| {
                shard
                    .timestamps
                    .is_some_and(|(min, max)| overlaps(range, min, max))
            })
            .map(|(position, _)| position as u32)
            .collect();
        Ok(keep)
    }
}

shoal_plugin_sdk::export_pruning_plugin!(TimeSeriesPruning);
