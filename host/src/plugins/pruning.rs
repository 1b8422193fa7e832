//! Time-series pruning: the host's mechanism (cheap per-shard timestamp bounds) and the call
//! into the pruning plugin that decides which shards a search visits. On any plugin failure
//! the search visits every shard (fail-open): pruning may only ever save work.

pub use crate::shard::time_stats::ShardTimeStats;

use super::bindings::pruning::exports::shoal::plugin::pruning::{PruneRequest, ShardTable};
use super::bindings::types::{PluginError as WitError, TimeRange};
use super::{InstanceExports, Plugin, PluginError, PluginKind};

/// One shard as the pruning plugin sees it.
#[derive(Debug, Clone)]
pub struct PruneCandidate {
    pub index: String,
    pub shard: u32,
    pub stats: ShardTimeStats,
}

/// Asks `plugin` which of `candidates` to search; returns their positions.
pub fn select_shards(
    plugin: &Plugin,
    index_pattern: &str,
    timestamp_field: &str,
    range: (Option<i64>, Option<i64>),
    candidates: &[PruneCandidate],
) -> Result<Vec<usize>, PluginError> {
    if plugin.kind != PluginKind::Pruning {
        return Err(PluginError::WrongKind {
            plugin: plugin.name.clone(),
            expected: PluginKind::Pruning,
        });
    }
    // Index names cross only if the plugin asks (`pruning-context.index-name`); the table is
    // columns of numbers, which the canonical ABI copies in bulk.
    let mut names: Vec<String> = Vec::new();
    let mut table = ShardTable {
        index: Vec::with_capacity(candidates.len()),
        shard: Vec::with_capacity(candidates.len()),
        doc_count: Vec::with_capacity(candidates.len()),
        min_timestamp: Vec::with_capacity(candidates.len()),
        max_timestamp: Vec::with_capacity(candidates.len()),
    };
    for candidate in candidates {
        // Shards of one index arrive together; a repeated name elsewhere is merely listed twice.
        if names.last() != Some(&candidate.index) {
            names.push(candidate.index.clone());
        }
        let position = names.len() - 1;
        table.index.push(position as u32);
        table.shard.push(candidate.shard);
        table.doc_count.push(candidate.stats.doc_count);
        let (min, max) = match (candidate.stats.min, candidate.stats.max) {
            (Some(min), Some(max)) => (min, max),
            _ => (i64::MAX, i64::MIN),
        };
        table.min_timestamp.push(min);
        table.max_timestamp.push(max);
    }
    let request = PruneRequest {
        index_pattern: index_pattern.to_string(),
        timestamp_field: timestamp_field.to_string(),
        query_range: TimeRange {
            min: range.0,
            max: range.1,
        },
        index_count: names.len() as u32,
        shards: table,
    };
    let answer = plugin.call(|instance| match &instance.exports {
        InstanceExports::Pruning(exports) => {
            instance.store.data_mut().pruning_indices = names;
            exports
                .shoal_plugin_pruning()
                .call_select_shards(&mut instance.store, &request)
        }
        _ => Err(wasmtime::Error::msg("instance is not a pruning plugin")),
    })?;
    let positions = answer.map_err(|err| {
        plugin.count_returned_error();
        let reason = match err {
            WitError::InvalidInput(reason) => format!("invalid input: {reason}"),
            WitError::Unavailable(reason) => format!("unavailable: {reason}"),
            WitError::Internal(reason) => reason,
        };
        PluginError::Returned {
            plugin: plugin.name.clone(),
            reason,
        }
    })?;
    let mut selected = Vec::with_capacity(positions.len());
    for position in positions {
        let position = position as usize;
        if position >= candidates.len() {
            plugin.count_returned_error();
            return Err(PluginError::Returned {
                plugin: plugin.name.clone(),
                reason: format!(
                    "selected shard position {position} but only {} shards were offered",
                    candidates.len()
                ),
            });
        }
        selected.push(position);
    }
    selected.sort_unstable();
    selected.dedup();
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::PluginHost;

    fn candidate(shard: u32, min: Option<i64>, max: Option<i64>) -> PruneCandidate {
        PruneCandidate {
            index: "logs".into(),
            shard,
            stats: ShardTimeStats {
                doc_count: 10,
                min,
                max,
            },
        }
    }

    #[test]
    fn shipped_plugin_keeps_overlapping_shards_and_reports_errors_by_name() {
        let host = PluginHost::new(None).expect("plugin host starts");
        let plugin = host
            .get("time-series-pruning")
            .expect("shipped plugin is installed");
        assert_eq!(plugin.kind, PluginKind::Pruning);
        let candidates = [
            candidate(0, Some(0), Some(99)),
            candidate(1, Some(100), Some(199)),
            candidate(2, None, None),
            candidate(3, Some(150), Some(300)),
        ];
        let kept = select_shards(
            &plugin,
            "logs-*",
            "@timestamp",
            (Some(120), Some(160)),
            &candidates,
        )
        .expect("answer");
        assert_eq!(kept, vec![1, 3]);
        let open_ended = select_shards(
            &plugin,
            "logs-*",
            "@timestamp",
            (None, Some(100)),
            &candidates,
        )
        .expect("answer");
        assert_eq!(open_ended, vec![0, 1]);

        let refused = select_shards(
            &plugin,
            "logs-*",
            "@timestamp",
            (Some(10), Some(5)),
            &candidates,
        );
        let message = refused
            .expect_err("an empty range is invalid input")
            .to_string();
        assert!(
            message.contains("time-series-pruning") && message.contains("invalid input"),
            "{message}"
        );
        assert_eq!(plugin.describe()["stats"]["errors"], 1);
        assert_eq!(plugin.describe()["stats"]["calls"], 3);

        plugin.set_enabled(false);
        let disabled = select_shards(
            &plugin,
            "logs-*",
            "@timestamp",
            (Some(0), Some(1)),
            &candidates,
        );
        assert!(matches!(disabled, Err(PluginError::Disabled { .. })));
    }
}
