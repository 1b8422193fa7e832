//! A node's identity in gossip: its stable node id, its transport address, and a generation
//! that grows on every start (and on every rejoin after being declared down), so a restarted
//! node always wins over the memory of its previous life.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The foca identity of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub node_id: String,
    pub addr: SocketAddr,
    pub generation: u64,
}

impl MemberId {
    /// The identity used to announce to a seed whose node id is not known yet: foca accepts an
    /// announce addressed to any identity with the receiver's address.
    pub fn seed(addr: SocketAddr) -> MemberId {
        MemberId {
            node_id: String::new(),
            addr,
            generation: 0,
        }
    }
}

impl foca::Identity for MemberId {
    /// Gossip addresses nodes by transport address: a seed is known by nothing else.
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(MemberId {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// The generation for this start: above every earlier one, even if the clock went backwards
/// (persisted), and above the renewals of the last life (wall-clock milliseconds leave room
/// for a thousand rejoins a second).
pub fn next_generation(state_dir: &Path) -> std::io::Result<u64> {
    let path = state_dir.join("generation");
    let previous = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let generation = now.max(previous + 1_000);
    crate::durable::write_atomically(&path, generation.to_string().as_bytes())?;
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn generations_grow_across_starts_and_renewals_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = next_generation(dir.path()).expect("first");
        let second = next_generation(dir.path()).expect("second");
        assert!(second > first);
        std::fs::write(dir.path().join("generation"), (u64::MAX / 2).to_string()).expect("write");
        assert!(next_generation(dir.path()).expect("third") > u64::MAX / 2);

        let id = MemberId {
            node_id: "n".into(),
            addr: "127.0.0.1:1".parse().expect("addr"),
            generation: first,
        };
        let renewed = id.renew().expect("renewable");
        assert!(renewed.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&renewed));
        assert_eq!(renewed.addr(), id.addr());
    }
}
