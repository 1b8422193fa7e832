//! Per-shard timestamp bounds for time-series pruning, read from the timestamp field's fast
//! column and cached per searcher generation, so a search pays for them once per refresh.

use std::sync::Mutex;

use tantivy::columnar::{ColumnType, MonotonicallyMappableToU64};
use tantivy::{DateTime, Searcher};

/// Timestamp bounds and size of one shard, read from its fast column's segment metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardTimeStats {
    pub doc_count: u64,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

impl ShardTimeStats {
    /// `(min, max)`, or `None` when the shard holds no timestamp.
    pub fn bounds(&self) -> Option<(i64, i64)> {
        self.min.zip(self.max)
    }
}

/// Reads min/max of `column` (a date or integer column) over every segment of `searcher`.
/// Deleted documents may widen the bounds, which only makes pruning more conservative.
fn compute(searcher: &Searcher, column: &str) -> ShardTimeStats {
    let mut stats = ShardTimeStats {
        doc_count: searcher.num_docs(),
        ..ShardTimeStats::default()
    };
    for segment in searcher.segment_readers() {
        let Ok(Some((values, column_type))) = segment.fast_fields().u64_lenient(column) else {
            continue;
        };
        if values.values.num_vals() == 0 {
            continue;
        }
        let to_millis = |raw: u64| match column_type {
            ColumnType::DateTime => Some(DateTime::from_u64(raw).into_timestamp_millis()),
            ColumnType::I64 => Some(i64::from_u64(raw)),
            ColumnType::U64 => i64::try_from(raw).ok(),
            ColumnType::F64 => Some(f64::from_u64(raw) as i64),
            _ => None,
        };
        let (Some(min), Some(max)) = (to_millis(values.min_value()), to_millis(values.max_value()))
        else {
            continue;
        };
        stats.min = Some(stats.min.map_or(min, |m| m.min(min)));
        stats.max = Some(stats.max.map_or(max, |m| m.max(max)));
    }
    stats
}

/// The last bounds computed for a shard, valid while its searcher generation is unchanged.
#[derive(Default)]
pub struct TimeStatsCache {
    last: Mutex<Option<(u64, String, ShardTimeStats)>>,
}

impl TimeStatsCache {
    /// Bounds of `column` as `searcher` sees them.
    pub fn get(&self, searcher: &Searcher, column: &str) -> ShardTimeStats {
        let generation = searcher.generation().generation_id();
        if let Ok(last) = self.last.lock()
            && let Some((cached_generation, cached_column, stats)) = last.as_ref()
            && *cached_generation == generation
            && cached_column == column
        {
            return *stats;
        }
        let stats = compute(searcher, column);
        if let Ok(mut last) = self.last.lock() {
            *last = Some((generation, column.to_string(), stats));
        }
        stats
    }
}
