//! Breaks the switchover contract the way a careless policy would: it forgets the last node
//! when judging, and ranks a copy that does not exist.

use shoal_plugin_sdk::switchover::{NodeHealth, NodeState, PluginError, Routing, SwitchoverPlugin};

struct Broken;

impl SwitchoverPlugin for Broken {
    fn judge(nodes: Vec<NodeHealth>) -> Result<Vec<NodeState>, PluginError> {
        Ok(nodes.iter().skip(1).map(|_| NodeState::Healthy).collect())
    }

    fn rank_copies(_shard: String, copies: Vec<NodeHealth>) -> Result<Routing, PluginError> {
        Ok(Routing {
            order: (0..=copies.len() as u32).collect(),
            hedge_after_ms: None,
        })
    }
}

shoal_plugin_sdk::export_switchover_plugin!(Broken);
