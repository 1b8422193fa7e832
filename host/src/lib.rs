//! Shoal: a high-availability search node that speaks the Elasticsearch REST API, stores
//! documents in tantivy shards with a translog, and (in later work) clusters over QUIC and
//! delegates policies to WebAssembly plugins.
//!
//! The pieces, from the wire inwards:
//! - [`api`]: REST routes, Elasticsearch-shaped JSON and errors.
//! - [`search`]: query DSL to tantivy queries, fan-out over shards, sort, aggregations.
//! - [`indices`] / [`index`]: the index registry, settings, mappings and document routing.
//! - [`shard`]: one tantivy index per shard with its translog, sequence numbers and versions.
//! - [`mapping`]: field types, dynamic mapping, date parsing.
//! - [`plugins`]: the WebAssembly plugin host (wasmtime) and the policy call sites.
//! - [`replication`]: shard copies across nodes: routing, replication, recovery, fan-out.
//! - [`node`]: wiring, background refresh, graceful shutdown; [`cli`] and [`config`] at the edge.

/// Indexing allocates and frees many small strings and vectors per document; glibc's
/// allocator spent a quarter of a bulk load's CPU on that (perf), mimalloc a fraction of it.
/// Every process linking Shoal, its benchmarks included, uses it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod durable;
pub mod error;
pub mod ids;
pub mod index;
pub mod indices;
pub mod mapping;
pub mod node;
pub mod plugins;
pub mod replication;
pub mod routing;
pub mod search;
pub mod secure_settings;
pub mod shard;
pub mod shard_lock;
pub mod snapshot;
pub mod telemetry;
pub mod transport;
pub mod units;

/// The version Shoal reports in `GET /`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
