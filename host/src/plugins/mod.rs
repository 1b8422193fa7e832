//! The WebAssembly plugin host: one shared engine, plugins compiled once and instantiated from
//! a pool, every call bounded by an epoch deadline and a memory cap. A trap, deadline or limit
//! fails only that call: the instance is thrown away (a trapped instance is unusable), the
//! failure is counted and logged with the plugin's name, and the caller falls back.
//!
//! Policy call sites live beside their mechanism ([`pruning`] for time-series pruning).

pub mod bindings;
pub mod check;
pub mod checksum;
pub mod grants;
pub mod http_grant;
pub mod isolation;
mod latency;
pub mod metrics;
pub mod pruning;
pub mod repository;
pub mod roles;
mod state;
pub mod switchover;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
    Trap,
};

use self::bindings::pruning::{PruningPlugin, PruningPluginPre};
use self::bindings::query_isolation::{QueryIsolationPlugin, QueryIsolationPluginPre};
use self::bindings::repository::{RepositoryPlugin, RepositoryPluginPre};
use self::bindings::switchover::{SwitchoverPlugin, SwitchoverPluginPre};
use self::grants::Grants;
use self::state::PluginState;

/// How often the engine's epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// The least time an instantiation may take, whatever the plugin's call deadline.
const INSTANTIATION_DEADLINE: Duration = Duration::from_secs(1);
/// Idle instances kept per plugin for reuse.
const MAX_IDLE_INSTANCES: usize = 4;

/// `duration` in epoch ticks, at least one.
fn ticks(duration: Duration) -> u64 {
    (duration.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}

/// The plugins Shoal ships, built from `plugins/` by `host/build.rs` and embedded.
pub const SHIPPED: &[(&str, &str, &[u8])] = &[
    (
        "time-series-pruning",
        "1.0.0",
        include_bytes!(concat!(env!("OUT_DIR"), "/time-series-pruning.wasm")),
    ),
    (
        "fs-repository",
        "1.1.0",
        include_bytes!(concat!(env!("OUT_DIR"), "/fs-repository.wasm")),
    ),
    (
        "s3-repository",
        "1.1.0",
        include_bytes!(concat!(env!("OUT_DIR"), "/s3-repository.wasm")),
    ),
];

/// Which policy a plugin implements (its WIT world).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    Pruning,
    QueryIsolation,
    Switchover,
    Repository,
}

impl PluginKind {
    /// Parses the kind as users write it (`pruning`, `query-isolation`, ...).
    pub fn parse(text: &str) -> Option<PluginKind> {
        match text {
            "pruning" => Some(PluginKind::Pruning),
            "query-isolation" => Some(PluginKind::QueryIsolation),
            "switchover" => Some(PluginKind::Switchover),
            "repository" => Some(PluginKind::Repository),
            _ => None,
        }
    }

    /// Default per-call deadline: policies sit on the request path, repositories move bytes.
    pub fn default_deadline(self) -> Duration {
        match self {
            PluginKind::Repository => Duration::from_secs(30),
            _ => Duration::from_millis(10),
        }
    }
}

/// Why a plugin call failed; every variant names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin [{plugin}] exceeded its {deadline_ms} ms deadline")]
    Deadline { plugin: String, deadline_ms: u128 },
    #[error("plugin [{plugin}] ran out of fuel ({fuel} units per call)")]
    OutOfFuel { plugin: String, fuel: u64 },
    #[error("plugin [{plugin}] trapped: {reason}")]
    Trap { plugin: String, reason: String },
    #[error("plugin [{plugin}] returned an error: {reason}")]
    Returned { plugin: String, reason: String },
    #[error("plugin [{plugin}] is not a {expected:?} plugin; it was not installed")]
    WrongKind {
        plugin: String,
        expected: PluginKind,
    },
    #[error("plugin [{plugin}] is disabled")]
    Disabled { plugin: String },
    #[error("plugin [{plugin}] could not be loaded: {reason}")]
    Load { plugin: String, reason: String },
    #[error("plugin [{plugin}] is not installed")]
    NotInstalled { plugin: String },
    #[error("plugin runtime: {0}")]
    Runtime(String),
}

/// Resource limits of one plugin, and what its callers do when a call fails.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct PluginLimits {
    pub memory_bytes: usize,
    pub deadline: Duration,
    /// Wasm work allowed per call, counted in fuel units (about one per instruction): a bound
    /// that, unlike the deadline, does not depend on how busy the machine is. `None`: unmetered.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Fail-closed: a failed call fails the request instead of falling back to the built-in
    /// behaviour (fail-open, the default for policies).
    #[serde(default)]
    pub fail_closed: bool,
}

impl PluginLimits {
    /// 64 MiB of memory, the kind's default deadline; repositories fail closed, policies open.
    pub fn default_for(kind: PluginKind) -> PluginLimits {
        PluginLimits {
            memory_bytes: 64 << 20,
            deadline: kind.default_deadline(),
            fuel: None,
            fail_closed: kind == PluginKind::Repository,
        }
    }
}

/// Everything `install` needs to know about a plugin version.
pub struct InstallRequest<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub bytes: &'a [u8],
    pub shipped: bool,
    /// Refuse the component unless it is of this kind.
    pub expected: Option<PluginKind>,
    /// Changes to the plugin's limits (a new plugin starts from [`PluginLimits::default_for`]).
    pub limits: LimitsOverride,
}

/// Limits given at upload; unset fields keep their current (or default) value.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitsOverride {
    pub memory_bytes: Option<usize>,
    pub deadline: Option<Duration>,
    /// `Some(None)` removes a fuel limit.
    pub fuel: Option<Option<u64>>,
    pub fail_closed: Option<bool>,
}

impl LimitsOverride {
    fn apply(self, base: PluginLimits) -> PluginLimits {
        PluginLimits {
            memory_bytes: self.memory_bytes.unwrap_or(base.memory_bytes),
            deadline: self.deadline.unwrap_or(base.deadline),
            fuel: self.fuel.unwrap_or(base.fuel),
            fail_closed: self.fail_closed.unwrap_or(base.fail_closed),
        }
    }
}

impl From<PluginLimits> for LimitsOverride {
    fn from(limits: PluginLimits) -> LimitsOverride {
        LimitsOverride {
            memory_bytes: Some(limits.memory_bytes),
            deadline: Some(limits.deadline),
            fuel: Some(limits.fuel),
            fail_closed: Some(limits.fail_closed),
        }
    }
}

/// A pre-linked component of a known kind.
enum KindPre {
    /// `reads_context`: the component imports `pruning-context`, so the search's strings must
    /// be at hand during its calls; the others are spared copying them.
    Pruning {
        pre: PruningPluginPre<PluginState>,
        reads_context: bool,
    },
    QueryIsolation(QueryIsolationPluginPre<PluginState>),
    Switchover(SwitchoverPluginPre<PluginState>),
    Repository(RepositoryPluginPre<PluginState>),
}

/// A live instance with its store.
pub(crate) struct Instance {
    store: Store<PluginState>,
    exports: InstanceExports,
    /// Fuel each call starts with, when the plugin is metered.
    fuel: Option<u64>,
}

pub(crate) enum InstanceExports {
    Pruning {
        exports: PruningPlugin,
        reads_context: bool,
    },
    QueryIsolation(QueryIsolationPlugin),
    Switchover(SwitchoverPlugin),
    Repository(RepositoryPlugin),
}

/// One compiled version of a plugin; calls in flight keep it alive across a hot replace.
struct Loaded {
    version: String,
    sha256: String,
    /// Compiled for the fuel-metered engine with this much fuel per call.
    fuel: Option<u64>,
    pre: KindPre,
    idle: Mutex<Vec<Instance>>,
}

/// Call statistics shown by `GET /_plugins`.
#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    errors: AtomicU64,
    traps: AtomicU64,
    deadlines: AtomicU64,
    out_of_fuel: AtomicU64,
    latency: latency::LatencyWindow,
}

/// An installed plugin.
pub struct Plugin {
    pub name: String,
    pub kind: PluginKind,
    pub shipped: bool,
    enabled: AtomicBool,
    limits: RwLock<PluginLimits>,
    config: RwLock<String>,
    current: RwLock<Arc<Loaded>>,
    stats: Stats,
    metrics: Arc<metrics::PluginMetrics>,
}

/// An engine and the imports every plugin may link against.
struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
}

/// The node's plugin runtime.
pub struct PluginHost {
    /// Where plugins without a fuel limit run.
    unmetered: Runtime,
    /// Fuel metering is an engine-wide switch that slows every call, so only plugins given a
    /// fuel limit run here; built on first use and ticked by the same epoch thread.
    metered: Arc<OnceLock<Runtime>>,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    /// Where uploaded plugins and every plugin's state (enabled, config) are kept.
    store_dir: Option<PathBuf>,
    ticker_stop: Arc<AtomicBool>,
}

/// What survives a restart about a plugin.
#[derive(Debug, Serialize, serde::Deserialize)]
struct PersistedPlugin {
    version: String,
    enabled: bool,
    config: String,
    #[serde(default)]
    limits: Option<PluginLimits>,
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn engine(metered: bool) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.consume_fuel(metered);
    // Shoal does not use component-model async; without it a call costs ~0.2 µs instead of ~1 µs.
    config.concurrency_support(false);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(128)
        .total_core_instances(256)
        .total_memories(128)
        .total_tables(128)
        .max_memory_size(256 << 20);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

impl Runtime {
    fn new(metered: bool) -> Result<Runtime, PluginError> {
        let runtime = |err: wasmtime::Error| PluginError::Runtime(format!("{err:#}"));
        let engine = engine(metered).map_err(runtime)?;
        let mut linker: Linker<PluginState> = Linker::new(&engine);
        // Rust std guests import WASI even when they use none of it; the context a plugin gets
        // grants nothing (no files, sockets or environment).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(runtime)?;
        // wasi:http is linked for every plugin; each instance's allow-list decides, and it is
        // empty unless the instance was granted hosts.
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker).map_err(runtime)?;
        PruningPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(runtime)?;
        bindings::repository::shoal::plugin::checksum::add_to_linker::<_, HasSelf<_>>(
            &mut linker,
            |state| state,
        )
        .map_err(runtime)?;
        Ok(Runtime { engine, linker })
    }
}

impl PluginHost {
    /// Starts the engine and its epoch ticker, loads the shipped plugins, then the uploaded
    /// ones and every plugin's saved state from `store_dir` (none: nothing persists).
    pub fn new(store_dir: Option<PathBuf>) -> Result<PluginHost, PluginError> {
        let unmetered = Runtime::new(false)?;
        let metered: Arc<OnceLock<Runtime>> = Arc::default();
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticking_engine = unmetered.engine.clone();
        let ticking_metered = metered.clone();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking_engine.increment_epoch();
                    if let Some(metered) = ticking_metered.get() {
                        metered.engine.increment_epoch();
                    }
                }
            })
            .map_err(|err| PluginError::Runtime(format!("starting the epoch ticker: {err}")))?;
        let host = PluginHost {
            unmetered,
            metered,
            plugins: RwLock::new(BTreeMap::new()),
            store_dir,
            ticker_stop,
        };
        for (name, version, bytes) in SHIPPED {
            host.install(InstallRequest {
                name,
                version,
                bytes,
                shipped: true,
                expected: None,
                limits: LimitsOverride::default(),
            })?;
        }
        host.load_persisted();
        Ok(host)
    }

    fn plugin_dir(&self, name: &str) -> Option<PathBuf> {
        self.store_dir.as_ref().map(|dir| dir.join(name))
    }

    /// Loads uploaded plugins and saved states; a plugin that no longer loads is logged and
    /// skipped, never fatal.
    fn load_persisted(&self) {
        let Some(dir) = &self.store_dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let path = entry.path();
            let Ok(bytes) = std::fs::read(path.join("plugin.json")) else {
                continue;
            };
            let Ok(saved) = serde_json::from_slice::<PersistedPlugin>(&bytes) else {
                tracing::warn!(plugin = name, "unreadable plugin state; ignoring it");
                continue;
            };
            if let Ok(wasm) = std::fs::read(path.join("plugin.wasm"))
                && let Err(err) = self.install(InstallRequest {
                    name: &name,
                    version: &saved.version,
                    bytes: &wasm,
                    shipped: false,
                    expected: None,
                    limits: saved.limits.map(LimitsOverride::from).unwrap_or_default(),
                })
            {
                tracing::error!(plugin = name, error = %err, "stored plugin no longer loads; skipping it");
                continue;
            }
            if let Some(plugin) = self.get(&name) {
                plugin.set_enabled(saved.enabled);
                if let Ok(mut config) = plugin.config.write() {
                    *config = saved.config;
                }
            }
        }
    }

    fn persist(&self, plugin: &Plugin, wasm: Option<&[u8]>) -> Result<(), PluginError> {
        let Some(dir) = self.plugin_dir(&plugin.name) else {
            return Ok(());
        };
        let io = |err: std::io::Error| {
            PluginError::Runtime(format!("saving plugin [{}]: {err}", plugin.name))
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        if let Some(wasm) = wasm {
            crate::durable::write_atomically(&dir.join("plugin.wasm"), wasm)
                .map_err(|err| PluginError::Runtime(err.to_string()))?;
        }
        let saved = PersistedPlugin {
            version: plugin.loaded().version.clone(),
            enabled: plugin.enabled(),
            config: plugin.config(),
            limits: Some(plugin.limits()),
        };
        let bytes = serde_json::to_vec_pretty(&saved)
            .map_err(|err| PluginError::Runtime(err.to_string()))?;
        crate::durable::write_atomically(&dir.join("plugin.json"), &bytes)
            .map_err(|err| PluginError::Runtime(err.to_string()))
    }

    /// Installs an uploaded plugin, or hot-replaces one of the same name and kind: calls in
    /// flight finish on the old version, the next calls use the new one.
    pub fn upload(&self, request: InstallRequest<'_>) -> Result<Arc<Plugin>, PluginError> {
        let name = request.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(PluginError::Load {
                plugin: name.to_string(),
                reason: "plugin names are 1-64 characters of [a-z0-9_-]".into(),
            });
        }
        if let Some(existing) = self.get(name)
            && existing.shipped
        {
            return Err(PluginError::Load {
                plugin: name.to_string(),
                reason: "a shipped plugin cannot be replaced; upload under another name".into(),
            });
        }
        let bytes = request.bytes;
        let plugin = self.install(InstallRequest {
            shipped: false,
            ..request
        })?;
        self.persist(&plugin, Some(bytes))?;
        Ok(plugin)
    }

    /// Enables or disables a plugin (and remembers it).
    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<Arc<Plugin>, PluginError> {
        let plugin = self.get(name).ok_or_else(|| PluginError::NotInstalled {
            plugin: name.to_string(),
        })?;
        plugin.set_enabled(enabled);
        self.persist(&plugin, None)?;
        Ok(plugin)
    }

    /// Replaces a plugin's JSON config; instances created from now on see it.
    pub fn set_config(&self, name: &str, config: String) -> Result<Arc<Plugin>, PluginError> {
        let plugin = self.get(name).ok_or_else(|| PluginError::NotInstalled {
            plugin: name.to_string(),
        })?;
        if let Ok(mut current) = plugin.config.write() {
            *current = config;
        }
        // Pooled instances were built with the old config.
        if let Ok(mut idle) = plugin.loaded().idle.lock() {
            idle.clear();
        }
        self.persist(&plugin, None)?;
        Ok(plugin)
    }

    /// Removes an uploaded plugin. Shipped plugins can only be disabled.
    pub fn remove(&self, name: &str) -> Result<(), PluginError> {
        let plugin = self.get(name).ok_or_else(|| PluginError::NotInstalled {
            plugin: name.to_string(),
        })?;
        if plugin.shipped {
            return Err(PluginError::Load {
                plugin: name.to_string(),
                reason: "a shipped plugin cannot be removed; disable it instead".into(),
            });
        }
        self.plugins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(dir) = self.plugin_dir(name) {
            std::fs::remove_dir_all(&dir)
                .map_err(|err| PluginError::Runtime(format!("removing plugin [{name}]: {err}")))?;
        }
        tracing::info!(plugin = name, "plugin removed");
        Ok(())
    }

    /// Compiles and installs (or hot-replaces) a plugin; its kind is read from its exports.
    pub fn install(&self, request: InstallRequest<'_>) -> Result<Arc<Plugin>, PluginError> {
        let InstallRequest {
            name,
            version,
            bytes,
            shipped,
            expected,
            limits,
        } = request;
        let load_error = |reason: String| PluginError::Load {
            plugin: name.to_string(),
            reason,
        };
        let started = Instant::now();
        let sha256 = hex(&Sha256::digest(bytes));
        let existing_fuel = self.get(name).and_then(|existing| existing.limits().fuel);
        let fuel = limits.fuel.unwrap_or(existing_fuel);
        let runtime = self.runtime(fuel.is_some())?;
        let (component, cached) = self
            .compile(runtime, &sha256, bytes)
            .map_err(|err| load_error(format!("{err:#}")))?;
        let (kind, pre) = classify(runtime, &component).map_err(load_error)?;
        if expected.is_some_and(|expected| expected != kind) {
            return Err(PluginError::WrongKind {
                plugin: name.to_string(),
                expected: expected.unwrap_or(kind),
            });
        }
        if let Some(existing) = self.get(name).filter(|existing| existing.kind != kind) {
            return Err(load_error(format!(
                "it is a {:?} plugin; a replacement must be a {:?} plugin too",
                kind, existing.kind
            )));
        }
        let loaded = Arc::new(Loaded {
            version: version.to_string(),
            sha256,
            fuel,
            pre,
            idle: Mutex::new(Vec::new()),
        });
        let mut plugins = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        let plugin = match plugins.get(name) {
            Some(existing) if existing.kind == kind => {
                // Hot replace: calls in flight finish on the old version they hold.
                let current = existing.limits();
                *existing.limits.write().unwrap_or_else(|p| p.into_inner()) = limits.apply(current);
                *existing.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
                existing.clone()
            }
            _ => {
                let plugin = Arc::new(Plugin {
                    name: name.to_string(),
                    kind,
                    shipped,
                    enabled: AtomicBool::new(true),
                    limits: RwLock::new(limits.apply(PluginLimits::default_for(kind))),
                    config: RwLock::new("{}".to_string()),
                    current: RwLock::new(loaded),
                    stats: Stats::default(),
                    metrics: Arc::default(),
                });
                plugins.insert(name.to_string(), plugin.clone());
                plugin
            }
        };
        tracing::info!(plugin = name, version, kind = ?kind, cached, load_ms = started.elapsed().as_millis() as u64, "plugin installed");
        Ok(plugin)
    }

    /// Compiles a component, or loads the machine code compiled for it earlier: the cache is
    /// keyed by the source's sha256 and the engine's compatibility hash, so a restart (or the
    /// same plugin under another name) does not recompile.
    fn compile(
        &self,
        runtime: &Runtime,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, bool)> {
        let engine = &runtime.engine;
        let Some(cache_dir) = self.store_dir.as_ref().map(|dir| dir.join(".cache")) else {
            return Ok((Component::new(engine, bytes)?, false));
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        // Fuel metering changes the machine code, and with it this hash.
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let path = cache_dir.join(format!(
            "{sha256}-{:016x}.cwasm",
            std::hash::Hasher::finish(&hasher)
        ));
        if path.exists() {
            match load_precompiled(engine, &path) {
                Ok(component) => return Ok((component, true)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "ignoring unusable compiled plugin")
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        let saved = std::fs::create_dir_all(&cache_dir)
            .map_err(|err| err.to_string())
            .and_then(|()| component.serialize().map_err(|err| err.to_string()))
            .and_then(|code| {
                crate::durable::write_atomically(&path, &code).map_err(|err| err.to_string())
            });
        if let Err(err) = saved {
            tracing::warn!(path = %path.display(), error = err, "could not cache compiled plugin");
        }
        Ok((component, false))
    }

    /// The engine a plugin runs on: the metered one (built now if needed) when it has fuel.
    fn runtime(&self, metered: bool) -> Result<&Runtime, PluginError> {
        if !metered {
            return Ok(&self.unmetered);
        }
        if let Some(runtime) = self.metered.get() {
            return Ok(runtime);
        }
        let runtime = Runtime::new(true)?;
        Ok(self.metered.get_or_init(|| runtime))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Reads a component's kind from its exports and pre-links it for that world.
fn classify(runtime: &Runtime, component: &Component) -> Result<(PluginKind, KindPre), String> {
    let instance_pre = runtime
        .linker
        .instantiate_pre(component)
        .map_err(|err| format!("imports cannot be satisfied: {err:#}"))?;
    if let Ok(pre) = PruningPluginPre::new(instance_pre.clone()) {
        let reads_context = component
            .component_type()
            .imports(&runtime.engine)
            .any(|(name, _)| name.starts_with("shoal:plugin/pruning-context@"));
        return Ok((PluginKind::Pruning, KindPre::Pruning { pre, reads_context }));
    }
    if let Ok(pre) = QueryIsolationPluginPre::new(instance_pre.clone()) {
        return Ok((PluginKind::QueryIsolation, KindPre::QueryIsolation(pre)));
    }
    if let Ok(pre) = SwitchoverPluginPre::new(instance_pre.clone()) {
        return Ok((PluginKind::Switchover, KindPre::Switchover(pre)));
    }
    if let Ok(pre) = RepositoryPluginPre::new(instance_pre) {
        return Ok((PluginKind::Repository, KindPre::Repository(pre)));
    }
    Err("the component exports none of the shoal:plugin@1 worlds (pruning, query-isolation, switchover, repository)".into())
}

/// Loads machine code this host compiled and wrote into its own data directory.
#[allow(unsafe_code)]
fn load_precompiled(engine: &Engine, path: &std::path::Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that deserialized code come from a trusted `serialize`. The
    // file was written by `PluginHost::compile` under the node's data directory, named after
    // the source's sha256 and this engine's compatibility hash; whoever can write there can
    // already replace the node's data and binary.
    unsafe { Component::deserialize_file(engine, path) }
}

/// Lowercase hex, as digests are written everywhere Shoal shows or stores them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Plugin {
    pub fn limits(&self) -> PluginLimits {
        *self.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The plugin's JSON config (`PUT /_plugins/{name}/_config`).
    pub fn config(&self) -> String {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|_| "{}".to_string())
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `config` replaces the plugin's own config for this instance (a repository session hands
    /// its instance the repository's settings).
    fn instantiate(
        &self,
        loaded: &Loaded,
        grants: &Grants,
        config: Option<&str>,
    ) -> Result<Instance, PluginError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits().memory_bytes)
            .instances(8)
            .trap_on_grow_failure(true)
            .build();
        let state = PluginState {
            plugin: self.name.clone(),
            config: match config {
                Some(config) => config.to_string(),
                None => self.config(),
            },
            metrics: self.metrics.clone(),
            wasi: grants.wasi_context().map_err(|err| PluginError::Load {
                plugin: self.name.clone(),
                reason: format!("cannot grant its capabilities: {err}"),
            })?,
            table: wasmtime::component::ResourceTable::new(),
            limits,
            started: Instant::now(),
            prune_scratch: Default::default(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hosts: http_grant::HttpAllowList {
                plugin: self.name.clone(),
                hosts: grants.http_hosts.clone(),
            },
        };
        let engine = match &loaded.pre {
            KindPre::Pruning { pre, .. } => pre.engine().clone(),
            KindPre::QueryIsolation(pre) => pre.engine().clone(),
            KindPre::Switchover(pre) => pre.engine().clone(),
            KindPre::Repository(pre) => pre.engine().clone(),
        };
        let mut store = Store::new(&engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        // Instantiation runs guest start code too, so it is bounded; but its wall clock also
        // counts the host's own setup, which a busy machine can stretch past a policy's
        // few-millisecond call deadline.
        store.set_epoch_deadline(self.deadline_ticks().max(ticks(INSTANTIATION_DEADLINE)));
        if let Some(fuel) = loaded.fuel {
            store
                .set_fuel(fuel)
                .map_err(|err| PluginError::Runtime(format!("{err:#}")))?;
        }
        let load_error = |err: wasmtime::Error| PluginError::Load {
            plugin: self.name.clone(),
            reason: format!("{err:#}"),
        };
        let exports = match &loaded.pre {
            KindPre::Pruning { pre, reads_context } => InstanceExports::Pruning {
                exports: pre.instantiate(&mut store).map_err(load_error)?,
                reads_context: *reads_context,
            },
            KindPre::QueryIsolation(pre) => {
                InstanceExports::QueryIsolation(pre.instantiate(&mut store).map_err(load_error)?)
            }
            KindPre::Switchover(pre) => {
                InstanceExports::Switchover(pre.instantiate(&mut store).map_err(load_error)?)
            }
            KindPre::Repository(pre) => {
                InstanceExports::Repository(pre.instantiate(&mut store).map_err(load_error)?)
            }
        };
        Ok(Instance {
            store,
            exports,
            fuel: loaded.fuel,
        })
    }

    /// Instantiates one instance ahead of the first call (kept if the pool has room).
    pub fn prewarm(&self) -> Result<(), PluginError> {
        let loaded = self.loaded();
        let instance = self.instantiate(&loaded, &Grants::none(), None)?;
        if let Ok(mut idle) = loaded.idle.lock()
            && idle.len() < MAX_IDLE_INSTANCES
        {
            idle.push(instance);
        }
        Ok(())
    }

    fn deadline_ticks(&self) -> u64 {
        ticks(self.limits().deadline)
    }

    /// Runs `call` on a pooled instance under the plugin's deadline and memory cap. A failed
    /// call's instance is dropped, never reused.
    pub(crate) fn call<R>(
        &self,
        call: impl FnOnce(&mut Instance) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if !self.enabled() {
            return Err(PluginError::Disabled {
                plugin: self.name.clone(),
            });
        }
        let loaded = self.loaded();
        let pooled = loaded.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut instance = match pooled {
            Some(instance) => instance,
            None => self
                .instantiate(&loaded, &Grants::none(), None)
                .inspect_err(|_| {
                    self.stats.calls.fetch_add(1, Ordering::Relaxed);
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                })?,
        };
        let value = self.run_on(&mut instance, call)?;
        if let Ok(mut idle) = loaded.idle.lock()
            && idle.len() < MAX_IDLE_INSTANCES
        {
            idle.push(instance);
        }
        Ok(value)
    }

    /// Instantiates the current version with `grants`, for callers that keep one instance
    /// across calls (a streamed repository upload spans several).
    pub(crate) fn instantiate_granted(
        &self,
        grants: &Grants,
        config: Option<&str>,
    ) -> Result<Instance, PluginError> {
        if !self.enabled() {
            return Err(PluginError::Disabled {
                plugin: self.name.clone(),
            });
        }
        self.instantiate(&self.loaded(), grants, config)
    }

    /// Runs one call on `instance` under the deadline, counting and classifying failures. After
    /// an error the instance must not be used again.
    pub(crate) fn run_on<R>(
        &self,
        instance: &mut Instance,
        call: impl FnOnce(&mut Instance) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let started = Instant::now();
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        instance.store.set_epoch_deadline(self.deadline_ticks());
        if let Some(fuel) = instance.fuel {
            // Refilled per call: the limit bounds one call's work, not the instance's lifetime.
            instance
                .store
                .set_fuel(fuel)
                .map_err(|err| PluginError::Runtime(format!("{err:#}")))?;
        }
        let outcome = call(instance);
        self.stats.latency.record(started.elapsed());
        match outcome {
            Ok(value) => Ok(value),
            Err(err) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                let error = match err.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => {
                        self.stats.deadlines.fetch_add(1, Ordering::Relaxed);
                        PluginError::Deadline {
                            plugin: self.name.clone(),
                            deadline_ms: self.limits().deadline.as_millis(),
                        }
                    }
                    Some(Trap::OutOfFuel) => {
                        self.stats.out_of_fuel.fetch_add(1, Ordering::Relaxed);
                        PluginError::OutOfFuel {
                            plugin: self.name.clone(),
                            fuel: instance.fuel.unwrap_or_default(),
                        }
                    }
                    trap => {
                        self.stats.traps.fetch_add(1, Ordering::Relaxed);
                        // The trap itself says what happened; the wasm backtrace is noise here.
                        let reason = match trap {
                            Some(trap) => trap.to_string(),
                            None => format!("{err:#}")
                                .lines()
                                .last()
                                .unwrap_or_default()
                                .trim()
                                .to_string(),
                        };
                        PluginError::Trap {
                            plugin: self.name.clone(),
                            reason,
                        }
                    }
                };
                tracing::warn!(plugin = self.name.as_str(), error = %error, "plugin call failed; instance discarded");
                Err(error)
            }
        }
    }

    /// Counts an error the plugin itself returned.
    pub(crate) fn count_returned_error(&self) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Fails unless this plugin serves `kind`.
    pub(crate) fn expect_kind(&self, kind: PluginKind) -> Result<(), PluginError> {
        if self.kind == kind {
            Ok(())
        } else {
            Err(PluginError::WrongKind {
                plugin: self.name.clone(),
                expected: kind,
            })
        }
    }

    /// An error a policy plugin returned itself, counted.
    pub(crate) fn returned(&self, error: bindings::types::PluginError) -> PluginError {
        use bindings::types::PluginError as Returned;
        self.answered_wrongly(match error {
            Returned::InvalidInput(reason) => format!("invalid input: {reason}"),
            Returned::Unavailable(reason) => format!("unavailable: {reason}"),
            Returned::Internal(reason) => reason,
        })
    }

    /// An answer the host cannot act on (or an error the plugin returned), counted as an error.
    pub(crate) fn answered_wrongly(&self, reason: impl Into<String>) -> PluginError {
        self.count_returned_error();
        PluginError::Returned {
            plugin: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// What `GET /_plugins` shows.
    pub fn describe(&self) -> serde_json::Value {
        let loaded = self.loaded();
        let (p50, p99) = self.stats.latency.percentiles_micros();
        serde_json::json!({
            "name": self.name,
            "kind": self.kind,
            "version": loaded.version,
            "sha256": loaded.sha256,
            "state": if self.enabled() { "enabled" } else { "disabled" },
            "shipped": self.shipped,
            "limits": {
                "memory_bytes": self.limits().memory_bytes,
                "deadline_ms": self.limits().deadline.as_millis() as u64,
                "fuel": self.limits().fuel,
                "on_failure": if self.limits().fail_closed { "closed" } else { "open" },
            },
            "config": serde_json::from_str::<serde_json::Value>(&self.config()).unwrap_or_default(),
            "metrics": self.metrics.to_json(),
            "stats": {
                "calls": self.stats.calls.load(Ordering::Relaxed),
                "errors": self.stats.errors.load(Ordering::Relaxed),
                "traps": self.stats.traps.load(Ordering::Relaxed),
                "deadlines": self.stats.deadlines.load(Ordering::Relaxed),
                "out_of_fuel": self.stats.out_of_fuel.load(Ordering::Relaxed),
                "time_p50_micros": p50,
                "time_p99_micros": p99,
            },
        })
    }
}
