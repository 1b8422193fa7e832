//! The WebAssembly plugin host: one shared engine, plugins compiled once and instantiated from
//! a pool, every call bounded by an epoch deadline and a memory cap. A trap, deadline or limit
//! fails only that call: the instance is thrown away (a trapped instance is unusable), the
//! failure is counted and logged with the plugin's name, and the caller falls back.
//!
//! Policy call sites live beside their mechanism ([`pruning`] for time-series pruning).

pub mod bindings;
pub mod pruning;
mod state;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
    Trap,
};
use wasmtime_wasi::WasiCtx;

use self::bindings::pruning::{PruningPlugin, PruningPluginPre};
use self::bindings::query_isolation::QueryIsolationPluginPre;
use self::bindings::repository::RepositoryPluginPre;
use self::bindings::switchover::SwitchoverPluginPre;
use self::state::PluginState;

/// How often the engine's epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Idle instances kept per plugin for reuse.
const MAX_IDLE_INSTANCES: usize = 4;

/// The plugins Shoal ships, built from `plugins/` by `host/build.rs` and embedded.
pub const SHIPPED: &[(&str, &str, &[u8])] = &[(
    "time-series-pruning",
    "1.0.0",
    include_bytes!(concat!(env!("OUT_DIR"), "/time-series-pruning.wasm")),
)];

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
    #[error("plugin [{plugin}] trapped: {reason}")]
    Trap { plugin: String, reason: String },
    #[error("plugin [{plugin}] returned an error: {reason}")]
    Returned { plugin: String, reason: String },
    #[error("plugin [{plugin}] is not a {expected:?} plugin")]
    WrongKind {
        plugin: String,
        expected: PluginKind,
    },
    #[error("plugin [{plugin}] is disabled")]
    Disabled { plugin: String },
    #[error("plugin [{plugin}] could not be loaded: {reason}")]
    Load { plugin: String, reason: String },
    #[error("the plugin runtime could not start: {0}")]
    Runtime(String),
}

/// Resource limits of one plugin.
#[derive(Debug, Clone, Copy)]
pub struct PluginLimits {
    pub memory_bytes: usize,
    pub deadline: Duration,
}

/// A pre-linked component of a known kind.
enum KindPre {
    Pruning(PruningPluginPre<PluginState>),
    QueryIsolation(QueryIsolationPluginPre<PluginState>),
    Switchover(SwitchoverPluginPre<PluginState>),
    Repository(RepositoryPluginPre<PluginState>),
}

/// A live instance with its store.
pub(crate) struct Instance {
    store: Store<PluginState>,
    exports: InstanceExports,
}

pub(crate) enum InstanceExports {
    Pruning(PruningPlugin),
    Other,
}

/// One compiled version of a plugin; calls in flight keep it alive across a hot replace.
struct Loaded {
    version: String,
    sha256: String,
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
    recent_micros: Mutex<VecDeque<u64>>,
}

/// An installed plugin.
pub struct Plugin {
    pub name: String,
    pub kind: PluginKind,
    pub shipped: bool,
    enabled: AtomicBool,
    limits: PluginLimits,
    config: RwLock<String>,
    current: RwLock<Arc<Loaded>>,
    stats: Stats,
}

/// The node's plugin runtime.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<PluginState>,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
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

impl PluginHost {
    /// Starts the engine and its epoch ticker, and loads the shipped plugins.
    pub fn new() -> Result<PluginHost, PluginError> {
        let runtime = |err: wasmtime::Error| PluginError::Runtime(format!("{err:#}"));
        let engine = engine().map_err(runtime)?;
        let mut linker: Linker<PluginState> = Linker::new(&engine);
        // Rust std guests import WASI even when they use none of it; the context a plugin gets
        // grants nothing (no files, sockets or environment).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(runtime)?;
        PruningPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(runtime)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticking_engine = engine.clone();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking_engine.increment_epoch();
                }
            })
            .map_err(|err| PluginError::Runtime(format!("starting the epoch ticker: {err}")))?;
        let host = PluginHost {
            engine,
            linker,
            plugins: RwLock::new(BTreeMap::new()),
            ticker_stop,
        };
        for (name, version, bytes) in SHIPPED {
            host.install(name, version, bytes, true)?;
        }
        Ok(host)
    }

    /// Compiles and installs (or hot-replaces) a plugin; its kind is read from its exports.
    pub fn install(
        &self,
        name: &str,
        version: &str,
        bytes: &[u8],
        shipped: bool,
    ) -> Result<Arc<Plugin>, PluginError> {
        let load_error = |reason: String| PluginError::Load {
            plugin: name.to_string(),
            reason,
        };
        let started = Instant::now();
        let component =
            Component::new(&self.engine, bytes).map_err(|err| load_error(format!("{err:#}")))?;
        let (kind, pre) = self.classify(&component).map_err(load_error)?;
        let sha256 = hex(&Sha256::digest(bytes));
        let loaded = Arc::new(Loaded {
            version: version.to_string(),
            sha256,
            pre,
            idle: Mutex::new(Vec::new()),
        });
        let mut plugins = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        let plugin = match plugins.get(name) {
            Some(existing) if existing.kind == kind => {
                // Hot replace: calls in flight finish on the old version they hold.
                *existing.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
                existing.clone()
            }
            _ => {
                let plugin = Arc::new(Plugin {
                    name: name.to_string(),
                    kind,
                    shipped,
                    enabled: AtomicBool::new(true),
                    limits: PluginLimits {
                        memory_bytes: 64 << 20,
                        deadline: kind.default_deadline(),
                    },
                    config: RwLock::new("{}".to_string()),
                    current: RwLock::new(loaded),
                    stats: Stats::default(),
                });
                plugins.insert(name.to_string(), plugin.clone());
                plugin
            }
        };
        tracing::info!(plugin = name, version, kind = ?kind, compile_ms = started.elapsed().as_millis() as u64, "plugin installed");
        Ok(plugin)
    }

    fn classify(&self, component: &Component) -> Result<(PluginKind, KindPre), String> {
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|err| format!("imports cannot be satisfied: {err:#}"))?;
        if let Ok(pre) = PruningPluginPre::new(instance_pre.clone()) {
            return Ok((PluginKind::Pruning, KindPre::Pruning(pre)));
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Plugin {
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
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

    fn instantiate(&self, loaded: &Loaded) -> Result<Instance, PluginError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(8)
            .trap_on_grow_failure(true)
            .build();
        let state = PluginState {
            plugin: self.name.clone(),
            config: self.config.read().map(|c| c.clone()).unwrap_or_default(),
            wasi: WasiCtx::builder().build(),
            table: wasmtime::component::ResourceTable::new(),
            limits,
            started: Instant::now(),
        };
        let engine = match &loaded.pre {
            KindPre::Pruning(pre) => pre.engine().clone(),
            KindPre::QueryIsolation(pre) => pre.engine().clone(),
            KindPre::Switchover(pre) => pre.engine().clone(),
            KindPre::Repository(pre) => pre.engine().clone(),
        };
        let mut store = Store::new(&engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        // Instantiation runs guest start code too: bound it like a call.
        store.set_epoch_deadline(self.deadline_ticks());
        let load_error = |err: wasmtime::Error| PluginError::Load {
            plugin: self.name.clone(),
            reason: format!("{err:#}"),
        };
        let exports = match &loaded.pre {
            KindPre::Pruning(pre) => {
                InstanceExports::Pruning(pre.instantiate(&mut store).map_err(load_error)?)
            }
            KindPre::QueryIsolation(pre) => pre
                .instantiate(&mut store)
                .map(|_| InstanceExports::Other)
                .map_err(load_error)?,
            KindPre::Switchover(pre) => pre
                .instantiate(&mut store)
                .map(|_| InstanceExports::Other)
                .map_err(load_error)?,
            KindPre::Repository(pre) => pre
                .instantiate(&mut store)
                .map(|_| InstanceExports::Other)
                .map_err(load_error)?,
        };
        Ok(Instance { store, exports })
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.deadline.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
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
        let started = Instant::now();
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let pooled = loaded.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut instance = match pooled {
            Some(instance) => instance,
            None => self.instantiate(&loaded).inspect_err(|_| {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            })?,
        };
        instance.store.set_epoch_deadline(self.deadline_ticks());
        let outcome = call(&mut instance);
        self.record_latency(started.elapsed());
        match outcome {
            Ok(value) => {
                if let Ok(mut idle) = loaded.idle.lock()
                    && idle.len() < MAX_IDLE_INSTANCES
                {
                    idle.push(instance);
                }
                Ok(value)
            }
            Err(err) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                let error = match err.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => {
                        self.stats.deadlines.fetch_add(1, Ordering::Relaxed);
                        PluginError::Deadline {
                            plugin: self.name.clone(),
                            deadline_ms: self.limits.deadline.as_millis(),
                        }
                    }
                    _ => {
                        self.stats.traps.fetch_add(1, Ordering::Relaxed);
                        PluginError::Trap {
                            plugin: self.name.clone(),
                            reason: format!("{err:#}"),
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

    fn record_latency(&self, elapsed: Duration) {
        if let Ok(mut recent) = self.stats.recent_micros.lock() {
            if recent.len() == 1024 {
                recent.pop_front();
            }
            recent.push_back(elapsed.as_micros() as u64);
        }
    }

    /// What `GET /_plugins` shows.
    pub fn describe(&self) -> serde_json::Value {
        let loaded = self.loaded();
        let (p50, p99) = self
            .stats
            .recent_micros
            .lock()
            .map(|recent| {
                let mut sorted: Vec<u64> = recent.iter().copied().collect();
                sorted.sort_unstable();
                let at = |q: f64| {
                    sorted
                        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
                        .copied()
                        .unwrap_or(0)
                };
                (at(0.5), at(0.99))
            })
            .unwrap_or_default();
        serde_json::json!({
            "name": self.name,
            "kind": self.kind,
            "version": loaded.version,
            "sha256": loaded.sha256,
            "state": if self.enabled() { "enabled" } else { "disabled" },
            "shipped": self.shipped,
            "limits": { "memory_bytes": self.limits.memory_bytes, "deadline_ms": self.limits.deadline.as_millis() as u64 },
            "stats": {
                "calls": self.stats.calls.load(Ordering::Relaxed),
                "errors": self.stats.errors.load(Ordering::Relaxed),
                "traps": self.stats.traps.load(Ordering::Relaxed),
                "deadlines": self.stats.deadlines.load(Ordering::Relaxed),
                "time_p50_micros": p50,
                "time_p99_micros": p99,
            },
        })
    }
}
