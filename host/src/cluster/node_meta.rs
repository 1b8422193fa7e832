//! What a node tells the cluster about itself (name, zone, roles, addresses, version), spread
//! as foca custom broadcasts. Each update carries `(generation, revision)`: a newer pair
//! replaces an older one everywhere, an older or equal one is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::Role;

use super::identity::MemberId;

/// A node's self-description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub node_id: String,
    pub name: String,
    pub zone: Option<String>,
    pub roles: Vec<Role>,
    pub http_addr: SocketAddr,
    pub transport_addr: SocketAddr,
    /// The Shoal version the node runs.
    pub version: String,
    /// The gossip generation of the node's current life.
    pub generation: u64,
    /// Bumped on every change within one generation.
    pub revision: u64,
}

impl NodeMeta {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether this description belongs to the life of the node that `id` names.
    pub fn describes(&self, id: &MemberId) -> bool {
        self.node_id == id.node_id && self.generation == id.generation
    }

    fn key(&self) -> MetaKey {
        MetaKey {
            node_id: self.node_id.clone(),
            version: (self.generation, self.revision),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }
}

/// Identifies one version of one node's metadata in foca's broadcast backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaKey {
    node_id: String,
    version: (u64, u64),
}

impl foca::Invalidates for MetaKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node_id == other.node_id && self.version >= other.version
    }
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable node metadata broadcast: {0}")]
pub struct MetaDecodeError(#[from] rmp_serde::decode::Error);

/// foca's broadcast handler: keeps the newest version seen per node and passes every new one
/// to the membership task.
pub struct MetaBroadcasts {
    newest: HashMap<String, (u64, u64)>,
    updates: mpsc::UnboundedSender<NodeMeta>,
}

impl MetaBroadcasts {
    pub fn new(updates: mpsc::UnboundedSender<NodeMeta>) -> MetaBroadcasts {
        MetaBroadcasts {
            newest: HashMap::new(),
            updates,
        }
    }
}

impl foca::BroadcastHandler<MemberId> for MetaBroadcasts {
    type Key = MetaKey;
    type Error = MetaDecodeError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&MemberId>,
    ) -> Result<Option<MetaKey>, MetaDecodeError> {
        let meta: NodeMeta = rmp_serde::from_slice(data)?;
        let key = meta.key();
        if self
            .newest
            .get(&meta.node_id)
            .is_some_and(|known| *known >= key.version)
        {
            return Ok(None);
        }
        self.newest.insert(meta.node_id.clone(), key.version);
        // The receiver lives as long as the membership task that owns this handler.
        let _ = self.updates.send(meta);
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::{BroadcastHandler, Invalidates};

    fn meta(generation: u64, revision: u64) -> NodeMeta {
        NodeMeta {
            node_id: "n1".into(),
            name: "one".into(),
            zone: Some("a".into()),
            roles: vec![Role::Master, Role::Data],
            http_addr: ([127, 0, 0, 1], 9200).into(),
            transport_addr: ([127, 0, 0, 1], 9300).into(),
            version: crate::VERSION.into(),
            generation,
            revision,
        }
    }

    #[test]
    fn only_newer_versions_are_kept_and_spread() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut handler = MetaBroadcasts::new(tx);
        let encoded = |m: &NodeMeta| m.encode().expect("encode");
        assert!(
            handler
                .receive_item(&encoded(&meta(5, 1)), None)
                .expect("ok")
                .is_some()
        );
        assert!(
            handler
                .receive_item(&encoded(&meta(5, 1)), None)
                .expect("ok")
                .is_none()
        );
        assert!(
            handler
                .receive_item(&encoded(&meta(4, 9)), None)
                .expect("ok")
                .is_none()
        );
        assert!(
            handler
                .receive_item(&encoded(&meta(5, 2)), None)
                .expect("ok")
                .is_some()
        );
        assert!(
            handler
                .receive_item(&encoded(&meta(6, 0)), None)
                .expect("ok")
                .is_some()
        );
        let received: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| (m.generation, m.revision))
            .collect();
        assert_eq!(received, vec![(5, 1), (5, 2), (6, 0)]);
        assert!(handler.receive_item(b"\xc1garbage", None).is_err());

        assert!(meta(6, 0).key().invalidates(&meta(5, 9).key()));
        assert!(!meta(5, 9).key().invalidates(&meta(6, 0).key()));
        let mut other = meta(9, 9);
        other.node_id = "n2".into();
        assert!(!other.key().invalidates(&meta(1, 1).key()));
    }
}
