//! Host bindings generated from `wit/` (one module per plugin world; the shared `types` and
//! `host` interfaces are generated once, in `pruning`, and reused by the others).

pub mod pruning {
    wasmtime::component::bindgen!({
        world: "pruning-plugin",
        path: "../wit",
    });
}

pub mod query_isolation {
    wasmtime::component::bindgen!({
        world: "query-isolation-plugin",
        path: "../wit",
        with: {
            "shoal:plugin/types": crate::plugins::bindings::pruning::shoal::plugin::types,
            "shoal:plugin/host": crate::plugins::bindings::pruning::shoal::plugin::host,
        },
    });
}

pub mod switchover {
    wasmtime::component::bindgen!({
        world: "switchover-plugin",
        path: "../wit",
        with: {
            "shoal:plugin/types": crate::plugins::bindings::pruning::shoal::plugin::types,
            "shoal:plugin/host": crate::plugins::bindings::pruning::shoal::plugin::host,
        },
    });
}

pub mod repository {
    wasmtime::component::bindgen!({
        world: "repository-plugin",
        path: "../wit",
        // A bad handle (a plugin bug) traps; the host reports it as the plugin's failure.
        imports: { "shoal:plugin/checksum": trappable },
        with: {
            "shoal:plugin/types": crate::plugins::bindings::pruning::shoal::plugin::types,
            "shoal:plugin/host": crate::plugins::bindings::pruning::shoal::plugin::host,
            "shoal:plugin/checksum.sha256": crate::plugins::checksum::Sha256Hasher,
        },
    });
}

pub use pruning::shoal::plugin::{host, types};
