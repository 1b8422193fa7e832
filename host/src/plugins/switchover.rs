//! The call site of switchover plugins: how healthy each node is, and which copy of a shard
//! serves a request. Answers are checked before the host routes by them.

pub use super::bindings::switchover::exports::shoal::plugin::switchover::{
    NodeHealth, NodeState, Routing,
};
use super::{Instance, InstanceExports, Plugin, PluginError, PluginKind};

fn exports(
    instance: &mut Instance,
) -> wasmtime::Result<(
    &mut wasmtime::Store<super::state::PluginState>,
    &super::bindings::switchover::SwitchoverPlugin,
)> {
    match instance {
        Instance {
            store,
            exports: InstanceExports::Switchover(exports),
            ..
        } => Ok((store, exports)),
        _ => Err(wasmtime::Error::msg("instance is not a switchover plugin")),
    }
}

/// Judges each of `nodes`; the answer has one state per node, in the same order.
pub fn judge(plugin: &Plugin, nodes: &[NodeHealth]) -> Result<Vec<NodeState>, PluginError> {
    plugin.expect_kind(PluginKind::Switchover)?;
    let answer = plugin.call(|instance| {
        let (store, exports) = exports(instance)?;
        exports.shoal_plugin_switchover().call_judge(store, nodes)
    })?;
    let states = answer.map_err(|err| plugin.returned(err))?;
    if states.len() != nodes.len() {
        return Err(plugin.answered_wrongly(format!(
            "judged {} nodes but was asked about {}",
            states.len(),
            nodes.len()
        )));
    }
    Ok(states)
}

/// Ranks the copies of `shard` held by `copies`: positions in `copies`, best first, each at
/// most once.
pub fn rank_copies(
    plugin: &Plugin,
    shard: &str,
    copies: &[NodeHealth],
) -> Result<Routing, PluginError> {
    plugin.expect_kind(PluginKind::Switchover)?;
    let answer = plugin.call(|instance| {
        let (store, exports) = exports(instance)?;
        exports
            .shoal_plugin_switchover()
            .call_rank_copies(store, shard, copies)
    })?;
    let routing = answer.map_err(|err| plugin.returned(err))?;
    let mut seen = vec![false; copies.len()];
    for &position in &routing.order {
        match seen.get_mut(position as usize) {
            None => {
                return Err(plugin.answered_wrongly(format!(
                    "ranked copy {position} but only {} copies were offered",
                    copies.len()
                )));
            }
            Some(true) => {
                return Err(plugin.answered_wrongly(format!("ranked copy {position} twice")));
            }
            Some(slot) => *slot = true,
        }
    }
    Ok(routing)
}
