//! Sends queries expected to visit many documents to the `slow` pool, refuses new work on a
//! saturated node, and cancels queries that run too long or hold too much memory.

use shoal_plugin_sdk::query_isolation::{
    Admission, Completion, PluginError, Progress, QueryIsolationPlugin, QueryProfile, Verdict,
};

/// Documents a query may be expected to visit and still count as light.
const SLOW_ABOVE_DOCS: f64 = 1e6;
const MAX_ELAPSED_MS: u64 = 30_000;
const MAX_MEMORY_BYTES: u64 = 1 << 30;

struct ByCost;

impl QueryIsolationPlugin for ByCost {
    fn classify(query: QueryProfile) -> Result<Admission, PluginError> {
        // An unknown (NaN) load or cost is treated as the worst case.
        if query.node_load.is_nan() || query.node_load > 2.0 {
            return Ok(Admission::Reject(format!(
                "node overloaded (load {:.2})",
                query.node_load
            )));
        }
        let pool = if query.estimated_cost.is_nan() || query.estimated_cost > SLOW_ABOVE_DOCS {
            "slow"
        } else {
            "fast"
        };
        Ok(Admission::Pool(pool.into()))
    }

    fn on_progress(_fingerprint: String, progress: Progress) -> Verdict {
        if progress.elapsed_ms > MAX_ELAPSED_MS || progress.memory_bytes > MAX_MEMORY_BYTES {
            Verdict::Cancel
        } else {
            Verdict::Proceed
        }
    }

    fn on_complete(stats: Completion) {
        shoal_plugin_sdk::host::counter_add("completed", 1);
        if stats.failed {
            shoal_plugin_sdk::host::counter_add("failed", 1);
        }
    }
}

shoal_plugin_sdk::export_query_isolation_plugin!(ByCost);
