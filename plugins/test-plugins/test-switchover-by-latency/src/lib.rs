//! Judges nodes by how recently they were heard from and how often they fail, and ranks a
//! shard's copies healthy first, then by latency; asks for a hedged request after the best
//! copy's p99.

use shoal_plugin_sdk::switchover::{NodeHealth, NodeState, PluginError, Routing, SwitchoverPlugin};

const ISOLATED_AFTER_MS: u64 = 1_000;
const DEGRADED_ERROR_RATE: f64 = 0.1;

fn state(node: &NodeHealth) -> NodeState {
    if node.last_seen_ms > ISOLATED_AFTER_MS {
        NodeState::Isolated
    } else if node.error_rate.is_nan() || node.error_rate > DEGRADED_ERROR_RATE {
        // An unknown error rate is not healthy.
        NodeState::Degraded
    } else {
        NodeState::Healthy
    }
}

fn rank(state: NodeState) -> u8 {
    match state {
        NodeState::Healthy => 0,
        NodeState::Degraded => 1,
        NodeState::Isolated => 2,
    }
}

struct ByLatency;

impl SwitchoverPlugin for ByLatency {
    fn judge(nodes: Vec<NodeHealth>) -> Result<Vec<NodeState>, PluginError> {
        Ok(nodes.iter().map(state).collect())
    }

    fn rank_copies(_shard: String, copies: Vec<NodeHealth>) -> Result<Routing, PluginError> {
        let mut order: Vec<u32> = (0..copies.len() as u32)
            .filter(|&i| state(&copies[i as usize]) != NodeState::Isolated)
            .collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&copies[a as usize], &copies[b as usize]);
            rank(state(a))
                .cmp(&rank(state(b)))
                .then(a.ewma_latency_ms.total_cmp(&b.ewma_latency_ms))
        });
        let hedge_after_ms = order
            .first()
            .map(|&best| copies[best as usize].p99_latency_ms)
            .filter(|p99| p99.is_finite() && *p99 >= 0.0)
            .map(|p99| p99.ceil().min(10_000.0) as u32);
        Ok(Routing {
            order,
            hedge_after_ms,
        })
    }
}

shoal_plugin_sdk::export_switchover_plugin!(ByLatency);
