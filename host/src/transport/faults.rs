//! A fault filter for partition tests: traffic to and from blocked peers is dropped at the
//! transport, in both directions, as a cut network link would. Empty in production; only the
//! test-only admin route (cargo feature `fault-injection`) fills it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::RwLock;

#[derive(Debug, Default)]
pub struct FaultFilter {
    blocked: RwLock<HashSet<SocketAddr>>,
}

impl FaultFilter {
    pub fn blocks(&self, peer: SocketAddr) -> bool {
        let blocked = self
            .blocked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !blocked.is_empty() && blocked.contains(&peer)
    }

    /// Replaces the set of blocked peers (empty heals every link).
    pub fn set_blocked(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        let mut blocked = self
            .blocked
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *blocked = peers.into_iter().collect();
    }

    pub fn blocked(&self) -> Vec<SocketAddr> {
        let blocked = self
            .blocked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        blocked.iter().copied().collect()
    }
}
