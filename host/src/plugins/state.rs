//! What a plugin instance's store holds: its (empty by default) WASI context, resource table,
//! memory limits, and the host imports every plugin may call.

use std::time::Instant;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{host, types::LogLevel};

/// Per-instance state.
pub struct PluginState {
    pub plugin: String,
    pub config: String,
    pub metrics: std::sync::Arc<super::metrics::PluginMetrics>,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub started: Instant,
    /// The pruning request buffers, reused across calls on this instance.
    pub(crate) prune_scratch: super::pruning::PruneScratch,
    pub http: wasmtime_wasi_http::WasiHttpCtx,
    /// The hosts this instance may reach over `wasi:http` (none unless granted).
    pub http_hosts: super::http_grant::HttpAllowList,
}

impl wasmtime_wasi_http::WasiHttpView for PluginState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            hooks: &mut self.http_hosts,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for PluginState {
    fn log(&mut self, level: LogLevel, message: String) {
        let plugin = self.plugin.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn monotonic_now(&mut self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn wall_clock_now(&mut self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        self.metrics.add(&name, delta);
    }

    fn gauge_set(&mut self, name: String, value: f64) {
        self.metrics.set(&name, value);
    }

    fn config(&mut self) -> String {
        self.config.clone()
    }
}

impl super::bindings::types::Host for PluginState {}

impl super::bindings::pruning::shoal::plugin::pruning_context::Host for PluginState {
    fn index_pattern(&mut self) -> String {
        self.prune_scratch.index_pattern.clone()
    }

    fn timestamp_field(&mut self) -> String {
        self.prune_scratch.timestamp_field.clone()
    }

    fn index_name(&mut self, position: u32) -> String {
        self.prune_scratch
            .index_names
            .get(position as usize)
            .cloned()
            .unwrap_or_default()
    }
}
