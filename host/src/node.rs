//! Node wiring: opens the data directory, loads indices, serves the REST API, refreshes and
//! syncs shards in the background, and shuts down cleanly (flush, then return).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::durable::write_atomically;
use crate::error::{Error, Result};
use crate::ids::new_uuid;
use crate::indices::Indices;
use crate::plugins::PluginHost;
use crate::shard::Durability;

/// Identity that survives restarts, stored in `data/_state/node.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: String,
}

/// Everything request handlers share.
pub struct NodeState {
    pub config: NodeConfig,
    pub identity: NodeIdentity,
    pub indices: Indices,
    pub plugins: PluginHost,
    pub cluster: Cluster,
    /// Repositories being written by this node.
    pub snapshot_activity: crate::snapshot::SnapshotActivity,
    /// What this node does with each of its shard copies.
    pub copies: crate::replication::LocalCopies,
    /// Recoveries (peer and restore) this node runs or ran as the target.
    pub recoveries: crate::replication::Recoveries,
    pub started: Instant,
    /// Held for the node's lifetime: a second node on the same data directory is refused.
    _data_lock: std::fs::File,
}

fn load_identity(data_dir: &std::path::Path) -> Result<NodeIdentity> {
    let state_dir = data_dir.join("_state");
    std::fs::create_dir_all(&state_dir)?;
    let path = state_dir.join("node.json");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(identity) = serde_json::from_slice(&bytes)
    {
        return Ok(identity);
    }
    let identity = NodeIdentity {
        node_id: new_uuid(),
    };
    let bytes =
        serde_json::to_vec_pretty(&identity).map_err(|err| Error::Internal(err.to_string()))?;
    write_atomically(&path, &bytes)?;
    Ok(identity)
}

fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("node.lock"))?;
    file.try_lock().map_err(|_| {
        Error::Internal(format!(
            "data directory {} is in use by another shoal node",
            data_dir.display()
        ))
    })?;
    Ok(file)
}

/// The data directory, locked for this process, and the node's persistent identity.
pub struct DataDir {
    lock: std::fs::File,
    pub identity: NodeIdentity,
}

impl DataDir {
    /// Locks the data directory and reads (or creates) the node identity (blocking).
    pub fn open(data_dir: &std::path::Path) -> Result<DataDir> {
        let lock = lock_data_dir(data_dir)?;
        let identity = load_identity(data_dir)?;
        Ok(DataDir { lock, identity })
    }
}

impl NodeState {
    /// Recovers every index and starts the plugin host (blocking).
    pub fn open(config: NodeConfig, data_dir: DataDir, cluster: Cluster) -> Result<NodeState> {
        let DataDir {
            lock: data_lock,
            identity,
        } = data_dir;
        let indices = Indices::load(&config.data_dir)?;
        let recoveries = crate::replication::Recoveries::new(&identity.node_id);
        let plugins = PluginHost::new(Some(config.data_dir.join("_plugins")))
            .map_err(|err| Error::Internal(format!("starting the plugin host: {err}")))?;
        Ok(NodeState {
            config,
            identity,
            indices,
            plugins,
            cluster,
            snapshot_activity: crate::snapshot::SnapshotActivity::default(),
            copies: crate::replication::LocalCopies::default(),
            recoveries,
            started: Instant::now(),
            _data_lock: data_lock,
        })
    }

    /// Flushes every shard so the next start replays nothing.
    pub fn flush_all(&self) {
        for index in self.indices.all() {
            for shard in index.local_shards() {
                if let Err(err) = shard.flush() {
                    tracing::error!(shard = %shard.id, error = %err, "flush at shutdown failed");
                }
            }
        }
    }
}

/// Runs the node until `shutdown` resolves, serving HTTP on `listener`.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max_body = config.max_content_length()?;
    let node_name = config.node_name.clone();
    let http_addr = listener.local_addr()?;
    let dir = config.data_dir.clone();
    let data_dir = tokio::task::spawn_blocking(move || DataDir::open(&dir)).await??;
    let cluster = Cluster::start(&config, &data_dir.identity.node_id, http_addr).await?;
    let transport_addr = cluster.transport.local_addr();
    let state = Arc::new(
        tokio::task::spawn_blocking(move || NodeState::open(config, data_dir, cluster)).await??,
    );
    state
        .cluster
        .rpc_server
        .set_data_handler(Arc::new(crate::replication::server::DataServer {
            node: Arc::downgrade(&state),
        }));
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = tokio::spawn(refresh_loop(state.clone(), stop_rx.clone()));
    let applier = tokio::spawn(crate::replication::applier::run(
        state.clone(),
        stop_rx.clone(),
    ));
    let allocator = tokio::spawn(crate::replication::master::run(
        state.clone(),
        stop_rx.clone(),
    ));
    let lifecycle = tokio::spawn(crate::snapshot::lifecycle::scheduler(
        state.clone(),
        stop_rx,
    ));
    let app = crate::api::router(state.clone(), max_body);
    tracing::info!(node = node_name, http = %http_addr, transport = %transport_addr, data_dir = %state.config.data_dir.display(), "node started");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("http server stopped; leaving the cluster and flushing shards");
    state.cluster.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = background.await;
    let _ = applier.await;
    let _ = allocator.await;
    let _ = lifecycle.await;
    let flushing = state.clone();
    tokio::task::spawn_blocking(move || flushing.flush_all()).await?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Refreshes shards every `refresh_interval` and syncs `async`-durability translogs.
async fn refresh_loop(state: Arc<NodeState>, mut stop: watch::Receiver<bool>) {
    let mut last_refresh: HashMap<(String, u32), Instant> = HashMap::new();
    let mut last_sync: HashMap<(String, u32), Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let due = {
            let now = Instant::now();
            let mut due = Vec::new();
            for index in state.indices.all() {
                let settings = index.meta.settings();
                for shard in index.local_shards() {
                    let key = (index.meta.uuid.clone(), shard.id.shard);
                    let refresh_due = settings.refresh_interval.is_some_and(|interval| {
                        last_refresh
                            .get(&key)
                            .is_none_or(|at| now.duration_since(*at) >= interval)
                    });
                    let sync_due = settings.translog_durability == Durability::Async
                        && last_sync.get(&key).is_none_or(|at| {
                            now.duration_since(*at) >= settings.translog_sync_interval
                        });
                    if refresh_due {
                        last_refresh.insert(key.clone(), now);
                    }
                    if sync_due {
                        last_sync.insert(key, now);
                    }
                    if refresh_due || sync_due {
                        due.push((shard.clone(), refresh_due, sync_due));
                    }
                }
            }
            due
        };
        if due.is_empty() {
            continue;
        }
        let result = tokio::task::spawn_blocking(move || {
            for (shard, refresh, sync) in due {
                if refresh && let Err(err) = shard.refresh_if_needed() {
                    tracing::error!(shard = %shard.id, error = %err, "scheduled refresh failed");
                }
                if sync && let Err(err) = shard.sync_translog() {
                    tracing::error!(shard = %shard.id, error = %err, "translog sync failed");
                }
            }
        })
        .await;
        if let Err(err) = result {
            tracing::error!(error = %err, "refresh task panicked");
        }
    }
}
