//! The Shoal plugin SDK: write a Shoal plugin as one trait impl and one macro call.
//!
//! Shoal calls plugins through the versioned WIT package in `wit/` (`shoal:plugin@1.1.0`).
//! This crate generates the guest side of each plugin world and re-exports it under plain
//! names: implement the kind's trait, export your type, build for `wasm32-wasip2`.
//!
//! | kind | trait | export macro |
//! |---|---|---|
//! | pruning | [`pruning::PruningPlugin`] | [`export_pruning_plugin!`] |
//! | query isolation | [`query_isolation::QueryIsolationPlugin`] | [`export_query_isolation_plugin!`] |
//! | switchover | [`switchover::SwitchoverPlugin`] | [`export_switchover_plugin!`] |
//! | repository | [`repository::RepositoryPlugin`] | [`export_repository_plugin!`] |
//!
//! # A complete pruning plugin
//!
//! ```no_run
//! use shoal_plugin_sdk::pruning::{PluginError, PruneRequest, PruningPlugin};
//!
//! struct KeepEverything;
//!
//! impl PruningPlugin for KeepEverything {
//!     fn select_shards(request: PruneRequest) -> Result<Vec<u32>, PluginError> {
//!         shoal_plugin_sdk::log::info("keeping every shard");
//!         Ok((0..request.shards.len() as u32).collect())
//!     }
//! }
//!
//! shoal_plugin_sdk::export_pruning_plugin!(KeepEverything);
//! ```
//!
//! `Cargo.toml` needs `crate-type = ["cdylib"]`; `cargo build --release --target wasm32-wasip2`
//! then writes a component to `target/wasm32-wasip2/release/<name>.wasm`, and
//! `GET /_plugins/{name}` shows it once installed. A plugin granted a directory writes large
//! files fastest with [`files::ChunkedFile`]. `plugins/time-series-pruning` is a complete,
//! shipped example.

#![allow(missing_docs, clippy::all)]

pub use pruning::export_pruning_plugin;
pub use query_isolation::export_query_isolation_plugin;
pub use repository::export_repository_plugin;
pub use switchover::export_switchover_plugin;

/// Pruning plugins: choose the shards a search visits.
pub mod pruning {
    wit_bindgen::generate!({
        world: "pruning-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_pruning_plugin",
        default_bindings_module: "shoal_plugin_sdk::pruning",
    });
    pub use self::exports::shoal::plugin::pruning::{
        Guest as PruningPlugin, PruneRequest, ShardTable,
    };
    pub use self::shoal::plugin::pruning_context::{index_name, index_pattern, timestamp_field};
    pub use self::shoal::plugin::types::{LogLevel, PluginError, TimeRange};

    /// One shard of a [`ShardTable`], as a plain struct.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Shard {
        /// Position of its index: [`index_name`] gives the name.
        pub index: u32,
        pub shard: u32,
        pub doc_count: u64,
        /// `(min, max)` timestamps in epoch ms; `None` when the shard has none.
        pub timestamps: Option<(i64, i64)>,
    }

    impl ShardTable {
        /// Number of shards in the table.
        pub fn len(&self) -> usize {
            self.shard.len()
        }

        pub fn is_empty(&self) -> bool {
            self.shard.is_empty()
        }

        /// The shards, row by row.
        pub fn iter(&self) -> impl Iterator<Item = Shard> + '_ {
            (0..self.len()).map(move |i| {
                let (min, max) = (self.min_timestamp[i], self.max_timestamp[i]);
                Shard {
                    index: self.index[i],
                    shard: self.shard[i],
                    doc_count: self.doc_count[i],
                    timestamps: (min <= max).then_some((min, max)),
                }
            })
        }
    }
}

/// Query-isolation plugins: admit queries into pools and cancel runaways.
///
/// ```no_run
/// use shoal_plugin_sdk::query_isolation::*;
///
/// /// Sends expensive queries to the `slow` pool and cancels any that run past 30 s.
/// struct ByCost;
///
/// impl QueryIsolationPlugin for ByCost {
///     fn classify(query: QueryProfile) -> Result<Admission, PluginError> {
///         if query.node_load > 2.0 {
///             return Ok(Admission::Reject("node overloaded".into()));
///         }
///         let pool = if query.estimated_cost > 1e6 { "slow" } else { "fast" };
///         Ok(Admission::Pool(pool.into()))
///     }
///     fn on_progress(_fingerprint: String, progress: Progress) -> Verdict {
///         if progress.elapsed_ms > 30_000 { Verdict::Cancel } else { Verdict::Proceed }
///     }
///     fn on_complete(_stats: Completion) {}
/// }
///
/// shoal_plugin_sdk::export_query_isolation_plugin!(ByCost);
/// ```
pub mod query_isolation {
    wit_bindgen::generate!({
        world: "query-isolation-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_query_isolation_plugin",
        default_bindings_module: "shoal_plugin_sdk::query_isolation",
    });
    pub use self::exports::shoal::plugin::query_isolation::{
        Admission, Completion, Guest as QueryIsolationPlugin, Progress, QueryProfile, Verdict,
    };
    pub use self::shoal::plugin::types::PluginError;
}

/// Switchover plugins: rank shard copies and judge node health.
///
/// ```no_run
/// use shoal_plugin_sdk::switchover::*;
///
/// /// Avoids nodes not heard from for a second; prefers the lowest latency.
/// struct Fastest;
///
/// impl SwitchoverPlugin for Fastest {
///     fn judge(nodes: Vec<NodeHealth>) -> Result<Vec<NodeState>, PluginError> {
///         Ok(nodes
///             .iter()
///             .map(|n| if n.last_seen_ms > 1000 { NodeState::Isolated } else if n.error_rate > 0.1 { NodeState::Degraded } else { NodeState::Healthy })
///             .collect())
///     }
///     fn rank_copies(_shard: String, copies: Vec<NodeHealth>) -> Result<Routing, PluginError> {
///         let mut order: Vec<u32> = (0..copies.len() as u32).filter(|&i| copies[i as usize].last_seen_ms <= 1000).collect();
///         order.sort_by(|&a, &b| copies[a as usize].ewma_latency_ms.total_cmp(&copies[b as usize].ewma_latency_ms));
///         Ok(Routing { order, hedge_after_ms: Some(50) })
///     }
/// }
///
/// shoal_plugin_sdk::export_switchover_plugin!(Fastest);
/// ```
pub mod switchover {
    wit_bindgen::generate!({
        world: "switchover-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_switchover_plugin",
        default_bindings_module: "shoal_plugin_sdk::switchover",
    });
    pub use self::exports::shoal::plugin::switchover::{
        Guest as SwitchoverPlugin, NodeHealth, NodeState, Routing,
    };
    pub use self::shoal::plugin::types::PluginError;
}

/// Repository plugins: blob stores for snapshots. A filesystem repository is granted exactly
/// one preopened directory, mounted at `/repo`; std's `fs` works inside it and nowhere else.
///
/// ```no_run
/// use shoal_plugin_sdk::repository::*;
///
/// struct Directory;
///
/// fn path(name: &str) -> String {
///     format!("/repo/{name}")
/// }
///
/// fn io(err: std::io::Error) -> RepositoryError {
///     match err.kind() {
///         std::io::ErrorKind::NotFound => RepositoryError::NotFound(err.to_string()),
///         std::io::ErrorKind::PermissionDenied => RepositoryError::AccessDenied(err.to_string()),
///         _ => RepositoryError::Unavailable(err.to_string()),
///     }
/// }
///
/// impl RepositoryPlugin for Directory {
///     fn put_start(_: String, _: u64, _: String) -> Result<u64, RepositoryError> {
///         Err(RepositoryError::Invalid("this example only supports whole-blob puts".into()))
///     }
///     fn put_chunk(_: u64, _: Vec<u8>) -> Result<(), RepositoryError> {
///         Err(RepositoryError::Invalid("no upload in progress".into()))
///     }
///     fn put_finish(_: u64) -> Result<(), RepositoryError> {
///         Err(RepositoryError::Invalid("no upload in progress".into()))
///     }
///     fn put(name: String, data: Vec<u8>, _sha256_hex: String) -> Result<(), RepositoryError> {
///         std::fs::write(path(&name), data).map_err(io)
///     }
///     fn get(name: String, offset: u64, length: Option<u64>) -> Result<Vec<u8>, RepositoryError> {
///         let bytes = std::fs::read(path(&name)).map_err(io)?;
///         let start = (offset as usize).min(bytes.len());
///         let end = length.map_or(bytes.len(), |l| (start + l as usize).min(bytes.len()));
///         Ok(bytes[start..end].to_vec())
///     }
///     fn exists(name: String) -> Result<bool, RepositoryError> {
///         Ok(std::fs::metadata(path(&name)).is_ok())
///     }
///     fn list_blobs(prefix: String) -> Result<Vec<BlobMeta>, RepositoryError> {
///         let mut blobs = Vec::new();
///         for entry in std::fs::read_dir("/repo").map_err(io)? {
///             let entry = entry.map_err(io)?;
///             let name = entry.file_name().to_string_lossy().to_string();
///             if name.starts_with(&prefix) {
///                 blobs.push(BlobMeta { name, size: entry.metadata().map_err(io)?.len() });
///             }
///         }
///         Ok(blobs)
///     }
///     fn delete(name: String) -> Result<(), RepositoryError> {
///         std::fs::remove_file(path(&name)).map_err(io)
///     }
///     fn verify() -> Result<(), RepositoryError> {
///         // Writes, reads back and deletes a probe blob through the methods above.
///         shoal_plugin_sdk::repository::verify_by_round_trip::<Self>()
///     }
/// }
///
/// shoal_plugin_sdk::export_repository_plugin!(Directory);
/// ```
pub mod repository {
    wit_bindgen::generate!({
        world: "repository-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_repository_plugin",
        default_bindings_module: "shoal_plugin_sdk::repository",
    });
    pub use self::exports::shoal::plugin::repository::{
        BlobMeta, Guest as RepositoryPlugin, RepositoryError,
    };
    /// An incremental SHA-256 the host computes at native speed (`shoal:plugin@1.1`): hash
    /// the bytes you store with it to check them against the digest `put` announced, without
    /// paying for SHA-256 in wasm (several times slower than the copy itself).
    ///
    /// ```no_run
    /// let hasher = shoal_plugin_sdk::repository::Sha256::new();
    /// hasher.update(b"shoal repository verification");
    /// assert_eq!(hasher.hex_digest(), shoal_plugin_sdk::repository::PROBE_SHA256);
    /// ```
    pub use self::shoal::plugin::checksum::Sha256;

    /// The blob `verify` writes, reads back and deletes.
    pub const PROBE_NAME: &str = "tests-verify/probe";
    /// The probe's contents.
    pub const PROBE: &[u8] = b"shoal repository verification";
    /// SHA-256 of [`PROBE`], as `put` wants it.
    pub const PROBE_SHA256: &str =
        "7f3f31a5475048b501f311bb2ed298417d4529a68929bb6c6460e3a25c3a6f53";

    /// A `verify` for any repository: writes the probe, reads it back, deletes it.
    pub fn verify_by_round_trip<P: RepositoryPlugin>() -> Result<(), RepositoryError> {
        P::put(PROBE_NAME.into(), PROBE.to_vec(), PROBE_SHA256.into())?;
        let read = P::get(PROBE_NAME.into(), 0, None)?;
        P::delete(PROBE_NAME.into())?;
        if read != PROBE {
            return Err(RepositoryError::Unavailable(
                "the verification blob read back differently".into(),
            ));
        }
        Ok(())
    }
}

pub mod files;

/// Logging through the host (lines are tagged with the plugin's name).
pub mod log {
    use crate::pruning::shoal::plugin::host;
    use crate::pruning::shoal::plugin::types::LogLevel;

    pub fn debug(message: &str) {
        host::log(LogLevel::Debug, message);
    }

    pub fn info(message: &str) {
        host::log(LogLevel::Info, message);
    }

    pub fn warn(message: &str) {
        host::log(LogLevel::Warn, message);
    }

    pub fn error(message: &str) {
        host::log(LogLevel::Error, message);
    }
}

/// The host imports every plugin may use: clocks, metrics and the plugin's JSON config.
pub mod host {
    pub use crate::pruning::shoal::plugin::host::{
        config, counter_add, gauge_set, monotonic_now, wall_clock_now,
    };
}

/// Helpers for time ranges.
pub mod time {
    use crate::pruning::TimeRange;

    /// True when `[min, max]` (a shard's timestamps) may hold a value inside `range`.
    pub fn overlaps(range: &TimeRange, min: i64, max: i64) -> bool {
        range.min.is_none_or(|low| max >= low) && range.max.is_none_or(|high| min <= high)
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    #[test]
    fn the_probe_checksum_matches_the_probe() {
        let digest: String = Sha256::digest(crate::repository::PROBE)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(digest, crate::repository::PROBE_SHA256);
    }
}
