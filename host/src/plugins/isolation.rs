//! The call site of query-isolation plugins: which pool a query runs in, whether a running
//! query may go on, and what it cost. Answers are checked before the host acts on them.

pub use super::bindings::query_isolation::exports::shoal::plugin::query_isolation::{
    Admission, Completion, Progress, QueryProfile, Verdict,
};
use super::{Instance, InstanceExports, Plugin, PluginError, PluginKind};

/// Longest pool name a plugin may answer; pools are named by operators, not generated.
pub const MAX_POOL_NAME: usize = 64;

fn exports(
    instance: &mut Instance,
) -> wasmtime::Result<(
    &mut wasmtime::Store<super::state::PluginState>,
    &super::bindings::query_isolation::QueryIsolationPlugin,
)> {
    match instance {
        Instance {
            store,
            exports: InstanceExports::QueryIsolation(exports),
            ..
        } => Ok((store, exports)),
        _ => Err(wasmtime::Error::msg(
            "instance is not a query-isolation plugin",
        )),
    }
}

/// Asks which pool `query` runs in, or whether it is refused.
pub fn classify(plugin: &Plugin, query: &QueryProfile) -> Result<Admission, PluginError> {
    plugin.expect_kind(PluginKind::QueryIsolation)?;
    let answer = plugin.call(|instance| {
        let (store, exports) = exports(instance)?;
        exports
            .shoal_plugin_query_isolation()
            .call_classify(store, query)
    })?;
    let admission = answer.map_err(|err| plugin.returned(err))?;
    match &admission {
        Admission::Pool(name) if !valid_pool_name(name) => Err(plugin.answered_wrongly(format!(
            "pool names are 1 to {MAX_POOL_NAME} of a-z, 0-9, '-' and '_'; got [{}]",
            name.chars().take(MAX_POOL_NAME + 1).collect::<String>()
        ))),
        Admission::Reject(reason) if reason.trim().is_empty() => {
            Err(plugin.answered_wrongly("a rejection must say why: the client is shown the reason"))
        }
        _ => Ok(admission),
    }
}

fn valid_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_POOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Asks whether the query with `fingerprint` may go on.
pub fn on_progress(
    plugin: &Plugin,
    fingerprint: &str,
    progress: Progress,
) -> Result<Verdict, PluginError> {
    plugin.expect_kind(PluginKind::QueryIsolation)?;
    plugin.call(|instance| {
        let (store, exports) = exports(instance)?;
        exports
            .shoal_plugin_query_isolation()
            .call_on_progress(store, fingerprint, progress)
    })
}

/// Tells the plugin what a finished query cost.
pub fn on_complete(plugin: &Plugin, stats: &Completion) -> Result<(), PluginError> {
    plugin.expect_kind(PluginKind::QueryIsolation)?;
    plugin.call(|instance| {
        let (store, exports) = exports(instance)?;
        exports
            .shoal_plugin_query_isolation()
            .call_on_complete(store, stats)
    })
}
