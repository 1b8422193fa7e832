//! Notices within a tenth of a second that a peer's process is gone, where SWIM alone needs
//! its full suspicion time.
//!
//! A crashed process (`kill -9`, OOM killer, panic) leaves its machine running, and that
//! machine answers a datagram sent to the closed port with an ICMP "port unreachable", which
//! Linux reports to a *connected* UDP socket as `ECONNREFUSED`. So every node keeps one tiny
//! connected socket per live peer and sends its transport port a one-byte datagram every
//! [`PROBE_INTERVAL`] (QUIC drops it as a malformed packet). A refusal means no process
//! listens there any more: nothing alive can cause it, so it needs no confirmation. A hung
//! process (SIGSTOP, a stalled disk) or a lost machine still refuses nothing; those are left
//! to SWIM's probes and suspicion, as are networks that filter ICMP.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use super::identity::MemberId;

/// How often each live peer's port is checked.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// One connected socket per peer identity: a socket is never reused for a later life of the
/// same address, so a refusal left over from the previous life cannot condemn the next one.
#[derive(Default)]
pub struct CrashProbe {
    sockets: HashMap<MemberId, UdpSocket>,
}

impl CrashProbe {
    /// Reports the peers whose port refused a probe sent in an earlier round, then probes
    /// every peer in `alive` again. Peers no longer alive are forgotten.
    pub fn round<'a>(&mut self, alive: impl IntoIterator<Item = &'a MemberId>) -> Vec<MemberId> {
        let mut sockets = HashMap::with_capacity(self.sockets.len());
        let mut refused = Vec::new();
        for id in alive {
            let socket = match self.sockets.remove(id) {
                Some(socket) => socket,
                None => match connect(id.addr) {
                    Ok(socket) => socket,
                    Err(err) => {
                        tracing::debug!(peer = %id.addr, error = %err, "cannot open a crash probe");
                        continue;
                    }
                },
            };
            let pending_refusal = matches!(socket.take_error(), Ok(Some(err)) if err.kind() == ErrorKind::ConnectionRefused);
            let refused_now = || matches!(socket.send(&[0]), Err(err) if err.kind() == ErrorKind::ConnectionRefused);
            if pending_refusal || refused_now() {
                refused.push(id.clone());
            } else {
                sockets.insert(id.clone(), socket);
            }
        }
        self.sockets = sockets;
        refused
    }
}

/// Asks once, now, whether `peer`'s port refuses datagrams (three tries within ~150 ms): for a
/// node that learned of a death from gossip before its own probe saw it.
pub async fn port_refuses(peer: SocketAddr) -> bool {
    let Ok(socket) = connect(peer).and_then(tokio::net::UdpSocket::from_std) else {
        return false;
    };
    let mut buffer = [0u8; 1];
    for _ in 0..3 {
        if let Err(err) = socket.send(&[0]).await {
            return err.kind() == ErrorKind::ConnectionRefused;
        }
        match tokio::time::timeout(Duration::from_millis(50), socket.recv(&mut buffer)).await {
            Ok(Err(err)) if err.kind() == ErrorKind::ConnectionRefused => return true,
            _ => {}
        }
    }
    false
}

fn connect(peer: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(peer)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(addr: SocketAddr, generation: u64) -> MemberId {
        MemberId {
            node_id: format!("n-{}", addr.port()),
            addr,
            generation,
        }
    }

    /// Runs probe rounds until one reports something or `rounds` pass.
    fn rounds_until_refused(
        probe: &mut CrashProbe,
        peers: &[MemberId],
        rounds: usize,
    ) -> Vec<MemberId> {
        for _ in 0..rounds {
            let refused = probe.round(peers);
            if !refused.is_empty() {
                return refused;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Vec::new()
    }

    #[test]
    fn a_closed_port_is_reported_and_a_listening_one_is_not() {
        let listening = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let closed = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let alive = id(listening.local_addr().expect("addr"), 1);
        let dead = id(closed.local_addr().expect("addr"), 1);
        drop(closed);
        let mut probe = CrashProbe::default();
        let peers = [alive.clone(), dead.clone()];
        assert_eq!(rounds_until_refused(&mut probe, &peers, 50), vec![dead]);
        assert!(
            rounds_until_refused(&mut probe, &[alive], 5).is_empty(),
            "a port with a process behind it is never reported"
        );
    }

    #[tokio::test]
    async fn a_one_shot_check_tells_a_closed_port_from_a_listening_one() {
        let listening = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let closed = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let closed_addr = closed.local_addr().expect("addr");
        drop(closed);
        assert!(port_refuses(closed_addr).await);
        assert!(!port_refuses(listening.local_addr().expect("addr")).await);
    }

    #[test]
    fn a_new_life_on_the_same_address_does_not_inherit_a_refusal() {
        let first = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = first.local_addr().expect("addr");
        drop(first);
        let mut probe = CrashProbe::default();
        let old_life = id(addr, 1);
        // Probe the dead port once, so a refusal is pending on the old life's socket.
        probe.round([&old_life]);
        std::thread::sleep(Duration::from_millis(50));
        let _second = UdpSocket::bind(addr).expect("rebind the same port");
        let new_life = id(addr, 2);
        assert!(
            rounds_until_refused(&mut probe, &[new_life], 5).is_empty(),
            "the restarted process is alive"
        );
    }
}
