//! Time-series pruning: the host's mechanism (cheap per-shard timestamp bounds) and the call
//! into the pruning plugin that decides which shards a search visits. On any plugin failure
//! the search visits every shard (fail-open): pruning may only ever save work.

pub use crate::shard::time_stats::ShardTimeStats;

use super::bindings::pruning::exports::shoal::plugin::pruning::{PruneRequest, ShardTable};
use super::bindings::types::TimeRange;
use super::{Instance, InstanceExports, Plugin, PluginError, PluginKind};

/// One shard as the pruning plugin sees it.
#[derive(Debug, Clone)]
pub struct PruneCandidate {
    /// Position of the shard's index in the `index_names` given with the candidates.
    pub index: u32,
    pub shard: u32,
    pub stats: ShardTimeStats,
}

/// The request buffers an instance keeps between calls, so that a decision allocates nothing
/// on the host once the instance is warm.
#[derive(Default)]
pub(crate) struct PruneScratch {
    request: Option<PruneRequest>,
    /// What `pruning-context` answers during the call in progress.
    pub(crate) index_pattern: String,
    pub(crate) timestamp_field: String,
    pub(crate) index_names: Vec<String>,
}

fn empty_request() -> PruneRequest {
    PruneRequest {
        query_range: TimeRange {
            min: None,
            max: None,
        },
        index_count: 0,
        shards: ShardTable {
            index: Vec::new(),
            shard: Vec::new(),
            doc_count: Vec::new(),
            min_timestamp: Vec::new(),
            max_timestamp: Vec::new(),
        },
    }
}

/// Overwrites `slot` with `text`, reusing its allocation.
fn copy_into(slot: &mut String, text: &str) {
    slot.clear();
    slot.push_str(text);
}

impl PruneScratch {
    /// Keeps what `pruning-context` answers during the call.
    fn set_context(&mut self, query: PruneQuery<'_>, index_names: &[&str]) {
        copy_into(&mut self.index_pattern, query.index_pattern);
        copy_into(&mut self.timestamp_field, query.timestamp_field);
        self.index_names.truncate(index_names.len());
        for (at, name) in index_names.iter().enumerate() {
            match self.index_names.get_mut(at) {
                Some(slot) => copy_into(slot, name),
                None => self.index_names.push(name.to_string()),
            }
        }
    }
}

/// The search a pruning decision is for.
#[derive(Debug, Clone, Copy)]
pub struct PruneQuery<'a> {
    /// The index expression of the search, as the user wrote it.
    pub index_pattern: &'a str,
    pub timestamp_field: &'a str,
    /// The required time range, inclusive epoch ms.
    pub range: (Option<i64>, Option<i64>),
}

fn fill(
    request: &mut PruneRequest,
    query: PruneQuery<'_>,
    index_count: usize,
    candidates: &[PruneCandidate],
) {
    request.query_range = TimeRange {
        min: query.range.0,
        max: query.range.1,
    };
    request.index_count = index_count as u32;
    // One pass per column: each is a tight loop the compiler vectorizes.
    let table = &mut request.shards;
    fill_column(&mut table.index, candidates, |c| c.index);
    fill_column(&mut table.shard, candidates, |c| c.shard);
    fill_column(&mut table.doc_count, candidates, |c| c.stats.doc_count);
    // A shard without timestamps has min > max, as the WIT says.
    fill_column(&mut table.min_timestamp, candidates, |c| {
        c.stats.bounds().map_or(i64::MAX, |b| b.0)
    });
    fill_column(&mut table.max_timestamp, candidates, |c| {
        c.stats.bounds().map_or(i64::MIN, |b| b.1)
    });
}

fn fill_column<T>(
    column: &mut Vec<T>,
    candidates: &[PruneCandidate],
    value: impl Fn(&PruneCandidate) -> T,
) {
    column.clear();
    column.extend(candidates.iter().map(value));
}

/// Asks `plugin` which of `candidates` (whose indices are named by `index_names`) to search;
/// returns their positions, ascending.
pub fn select_shards(
    plugin: &Plugin,
    query: PruneQuery<'_>,
    index_names: &[&str],
    candidates: &[PruneCandidate],
) -> Result<Vec<u32>, PluginError> {
    plugin.expect_kind(PluginKind::Pruning)?;
    let answer = plugin.call(|instance| {
        let Instance { store, exports, .. } = instance;
        let InstanceExports::Pruning {
            exports,
            reads_context,
        } = exports
        else {
            return Err(wasmtime::Error::msg("instance is not a pruning plugin"));
        };
        let scratch = &mut store.data_mut().prune_scratch;
        let mut request = scratch.request.take().unwrap_or_else(empty_request);
        fill(&mut request, query, index_names.len(), candidates);
        // Strings are kept only for plugins that can ask for them (`pruning-context`).
        if *reads_context {
            scratch.set_context(query, index_names);
        }
        let answer = exports
            .shoal_plugin_pruning()
            .call_select_shards(&mut *store, &request);
        store.data_mut().prune_scratch.request = Some(request);
        answer
    })?;
    let mut selected = answer.map_err(|err| plugin.returned(err))?;
    if let Some(&position) = selected
        .iter()
        .find(|&&position| position as usize >= candidates.len())
    {
        return Err(plugin.answered_wrongly(format!(
            "selected shard position {position} but only {} shards were offered",
            candidates.len()
        )));
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
            index: 0,
            shard,
            stats: ShardTimeStats {
                doc_count: 10,
                min,
                max,
            },
        }
    }

    fn ask(
        plugin: &Plugin,
        range: (Option<i64>, Option<i64>),
        candidates: &[PruneCandidate],
    ) -> Result<Vec<u32>, PluginError> {
        let query = PruneQuery {
            index_pattern: "logs-*",
            timestamp_field: "@timestamp",
            range,
        };
        select_shards(plugin, query, &["logs"], candidates)
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
        let kept = ask(&plugin, (Some(120), Some(160)), &candidates).expect("answer");
        assert_eq!(kept, vec![1, 3]);
        let open_ended = ask(&plugin, (None, Some(100)), &candidates).expect("answer");
        assert_eq!(open_ended, vec![0, 1]);

        let refused = ask(&plugin, (Some(10), Some(5)), &candidates);
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
        let disabled = ask(&plugin, (Some(0), Some(1)), &candidates);
        assert!(matches!(disabled, Err(PluginError::Disabled { .. })));
    }
}
