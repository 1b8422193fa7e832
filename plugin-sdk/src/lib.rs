//! The Shoal plugin SDK: write a Shoal plugin as one trait impl and one macro call.
//!
//! Shoal calls plugins through the versioned WIT package in `wit/` (`shoal:plugin@1.0.0`).
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
//! `GET /_plugins/{name}` shows it once installed. `plugins/time-series-pruning` is a complete,
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
        Guest as PruningPlugin, PruneRequest, ShardStats,
    };
    pub use self::shoal::plugin::types::{LogLevel, PluginError, TimeRange};
}

/// Query-isolation plugins: admit queries into pools and cancel runaways.
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

/// Repository plugins: blob stores for snapshots.
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
}

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
