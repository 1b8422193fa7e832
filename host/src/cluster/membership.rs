//! Membership: the one task that owns foca. It feeds foca gossip datagrams and due timers,
//! sends what foca asks to send, and turns foca's notifications plus node metadata into the
//! live node list and a stream of Up / Updated / Down events.
//!
//! A node is in the list when gossip says its current identity is alive *and* this node holds
//! the metadata of that same life (by broadcast, or fetched over RPC when the node comes up).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification, Timer};
use rand::rngs::StdRng;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::codec::GossipCodec;
use super::crash_probe::{self, CrashProbe};
use super::identity::MemberId;
use super::node_meta::{MetaBroadcasts, NodeMeta};
use super::rpc::RpcClient;
use crate::transport::{Datagram, Transport};

/// How often a node with no peers re-announces itself to its seeds, and re-fetches metadata
/// it is missing.
pub(crate) const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
const META_FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// SWIM parameters, tuned so a silent node is declared down within about 2 s on a LAN while
/// 1% packet loss raises no false alarm (both checked by `cluster::simulation`'s tests).
///
/// A probe round is 500 ms: a direct ping gets 200 ms, then 3 indirect pings the rest of the
/// round; a member that fails both is suspected, and declared down 1 s later unless it refutes.
/// Periodic gossip every 200 ms spreads suspicions (and refutations) quickly.
pub fn gossip_config() -> foca::Config {
    let mut config = foca::Config::new_lan(std::num::NonZeroU32::MIN);
    config.probe_period = Duration::from_millis(300);
    config.probe_rtt = Duration::from_millis(100);
    config.num_indirect_probes = NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN);
    config.max_transmissions = NonZeroU8::new(8).unwrap_or(NonZeroU8::MIN);
    config.suspect_to_down_after = Duration::from_millis(800);
    config.remove_down_after = Some(Duration::from_secs(24 * 3600));
    // Leaves room for IPv6 + UDP + QUIC short-header overhead under a 1280-byte path MTU.
    config.max_packet_size = NonZeroUsize::new(1178).unwrap_or(NonZeroUsize::MIN);
    config.notify_down_members = true;
    config.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::MIN,
    });
    // How fast the two sides of a healed partition find each other again.
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(2),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    config.periodic_gossip = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(200),
        num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
    });
    config
}

/// A change in the live node list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    Up(NodeMeta),
    Updated(NodeMeta),
    Down(NodeMeta),
}

enum Command {
    MetaFetched(NodeMeta),
    FetchFailed(MemberId),
    Leave(oneshot::Sender<()>),
}

struct Shared {
    live: RwLock<BTreeMap<String, NodeMeta>>,
    /// The lives (node id, generation) this node's crash probe found gone.
    crashed: RwLock<HashSet<(String, u64)>>,
    local: RwLock<NodeMeta>,
    events: broadcast::Sender<MembershipEvent>,
    /// Where the cluster's other nodes were last known to listen (the cluster state's own
    /// record), announced to like seeds while this node has no peers.
    known_peers: RwLock<Option<PeerSource>>,
}

/// Lists transport addresses of nodes this one knew to be in its cluster.
pub type PeerSource = Arc<dyn Fn() -> Vec<std::net::SocketAddr> + Send + Sync>;

/// Handle on the membership task. Cheap to clone.
#[derive(Clone)]
pub struct Membership {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

impl Membership {
    /// Starts gossip on `transport`, joining through `seeds` (transport addresses).
    pub fn start(
        transport: Transport,
        datagrams: mpsc::Receiver<Datagram>,
        local: NodeMeta,
        seeds: Vec<String>,
    ) -> Membership {
        let (events, _) = broadcast::channel(256);
        let mut live = BTreeMap::new();
        live.insert(local.node_id.clone(), local.clone());
        let shared = Arc::new(Shared {
            live: RwLock::new(live),
            crashed: RwLock::default(),
            local: RwLock::new(local.clone()),
            events,
            known_peers: RwLock::default(),
        });
        let (commands, command_rx) = mpsc::channel(64);
        let (meta_tx, meta_rx) = mpsc::unbounded_channel();
        let identity = MemberId {
            node_id: local.node_id.clone(),
            addr: local.transport_addr,
            generation: local.generation,
        };
        let mut foca = Foca::with_custom_broadcast(
            identity,
            gossip_config(),
            rand::make_rng::<StdRng>(),
            GossipCodec,
            MetaBroadcasts::new(meta_tx),
        );
        broadcast_meta(&mut foca, &local);
        let task = MembershipTask {
            foca,
            runtime: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            pending_timers: HashMap::new(),
            next_timer: 0,
            rpc: RpcClient::new(transport.clone()),
            transport,
            shared: shared.clone(),
            alive: HashMap::new(),
            metas: HashMap::new(),
            fetching: HashSet::new(),
            seeds,
            crash_probe: CrashProbe::default(),
            commands: commands.clone(),
            leaving: false,
            view_changed: false,
        };
        tokio::spawn(task.run(datagrams, command_rx, meta_rx));
        Membership { shared, commands }
    }

    /// Live nodes, this one included, ordered by node id.
    pub fn live_nodes(&self) -> Vec<NodeMeta> {
        read(&self.shared.live).values().cloned().collect()
    }

    /// The transport address of a live node (no copy of the whole view: this is on the
    /// write path).
    pub fn transport_addr_of(&self, node_id: &str) -> Option<std::net::SocketAddr> {
        read(&self.shared.live)
            .get(node_id)
            .map(|meta| meta.transport_addr)
    }

    /// Whether this node's crash probe found this life of `node` gone (its port refused):
    /// certainly dead, unlike a node gossip merely stopped hearing from.
    pub fn crashed(&self, node: &NodeMeta) -> bool {
        read(&self.shared.crashed).contains(&(node.node_id.clone(), node.generation))
    }

    pub fn local(&self) -> NodeMeta {
        read(&self.shared.local).clone()
    }

    /// Adds the nodes `source` lists to those a node with no peers announces itself to: a
    /// node restarted without seeds (the one that founded the cluster, say) finds its peers
    /// at once instead of waiting for one of them to try it.
    pub fn announce_also_to(&self, source: PeerSource) {
        *self
            .shared
            .known_peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(source);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.shared.events.subscribe()
    }

    /// Tells the cluster this node is leaving, so peers mark it down at once.
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct MembershipTask {
    foca: Foca<MemberId, GossipCodec, StdRng, MetaBroadcasts>,
    runtime: AccumulatingRuntime<MemberId>,
    /// Due times of foca's timers, earliest first; ties keep submission order, which foca
    /// needs (an out-of-order probe timer confuses its probe cycle).
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    pending_timers: HashMap<u64, Timer<MemberId>>,
    next_timer: u64,
    transport: Transport,
    rpc: RpcClient,
    shared: Arc<Shared>,
    /// Identities gossip says are alive, by transport address.
    alive: HashMap<SocketAddr, MemberId>,
    /// Newest metadata per node id.
    metas: HashMap<String, NodeMeta>,
    fetching: HashSet<MemberId>,
    seeds: Vec<String>,
    crash_probe: CrashProbe,
    commands: mpsc::Sender<Command>,
    leaving: bool,
    /// Set when liveness or metadata changed since the view was last published.
    view_changed: bool,
}

impl MembershipTask {
    async fn run(
        mut self,
        mut datagrams: mpsc::Receiver<Datagram>,
        mut commands: mpsc::Receiver<Command>,
        mut meta_updates: mpsc::UnboundedReceiver<NodeMeta>,
    ) {
        let mut announce = tokio::time::interval(ANNOUNCE_INTERVAL);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut crash_probe = tokio::time::interval(crash_probe::PROBE_INTERVAL);
        crash_probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                Some(datagram) = datagrams.recv() => {
                    if let Err(err) = self.foca.handle_data(&datagram.payload, &mut self.runtime) {
                        tracing::debug!(peer = %datagram.from, error = %err, "gossip packet ignored");
                    }
                }
                () = sleep_until(next_timer), if next_timer.is_some() => self.fire_due_timers(),
                Some(meta) = meta_updates.recv() => self.learn_meta(meta),
                Some(command) = commands.recv() => match command {
                    Command::MetaFetched(meta) => {
                        self.fetching.retain(|id| id.node_id != meta.node_id);
                        self.learn_meta(meta);
                    }
                    Command::FetchFailed(id) => { self.fetching.remove(&id); }
                    Command::Leave(done) => {
                        self.leaving = true;
                        if let Err(err) = self.foca.leave_cluster(&mut self.runtime) {
                            tracing::debug!(error = %err, "leaving the cluster");
                        }
                        self.drain_runtime();
                        let _ = done.send(());
                        return;
                    }
                },
                _ = announce.tick() => self.housekeeping().await,
                _ = crash_probe.tick() => self.declare_crashed_peers_down(),
            }
            self.drain_runtime();
            // Most packets are probes that change nothing; the view is rebuilt only when
            // liveness or metadata changed.
            if std::mem::take(&mut self.view_changed) {
                self.publish_view();
            }
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, seq))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(timer) = self.pending_timers.remove(&seq)
                && let Err(err) = self.foca.handle_timer(timer, &mut self.runtime)
            {
                tracing::debug!(error = %err, "gossip timer");
            }
        }
    }

    /// Declares down at once the peers whose process is gone (see [`crash_probe`]); foca
    /// spreads the news like any other down member.
    fn declare_crashed_peers_down(&mut self) {
        // A test partition (the transport's fault filter) would stop the ICMP answer too.
        let faults = self.transport.faults();
        let reachable = self.alive.values().filter(|id| !faults.blocks(id.addr));
        for id in self.crash_probe.round(reachable) {
            tracing::warn!(peer = %id.addr, node_id = %id.node_id, "the peer's transport port refuses datagrams: its process is gone; declaring it down");
            self.shared
                .crashed
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((id.node_id.clone(), id.generation));
            if let Err(err) =
                self.foca
                    .apply_many(std::iter::once(Member::down(id)), true, &mut self.runtime)
            {
                tracing::debug!(error = %err, "cannot declare a crashed peer down");
            }
        }
    }

    /// Re-announces to seeds while alone and retries metadata fetches that failed.
    async fn housekeeping(&mut self) {
        if self.foca.num_members() == 0 {
            let mut targets = BTreeSet::new();
            for seed in &self.seeds {
                match tokio::net::lookup_host(seed.as_str()).await {
                    Ok(addrs) => targets.extend(addrs),
                    Err(err) => tracing::warn!(seed = %seed, error = %err, "cannot resolve seed"),
                }
            }
            let known_peers = read(&self.shared.known_peers).clone();
            targets.extend(known_peers.map(|list| list()).unwrap_or_default());
            targets.remove(&self.transport.local_addr());
            for addr in targets {
                if let Err(err) = self.foca.announce(MemberId::seed(addr), &mut self.runtime) {
                    tracing::debug!(peer = %addr, error = %err, "announce failed");
                }
            }
        }
        let missing: Vec<MemberId> = self
            .alive
            .values()
            .filter(|id| !self.metas.get(&id.node_id).is_some_and(|m| m.describes(id)))
            .cloned()
            .collect();
        for id in missing {
            self.fetch_meta(id);
        }
    }

    fn drain_runtime(&mut self) {
        loop {
            let mut progressed = false;
            while let Some((to, payload)) = self.runtime.to_send() {
                progressed = true;
                self.transport.send_datagram(to.addr, payload);
            }
            while let Some((after, timer)) = self.runtime.to_schedule() {
                progressed = true;
                let seq = self.next_timer;
                self.next_timer += 1;
                self.timers.push(Reverse((Instant::now() + after, seq)));
                self.pending_timers.insert(seq, timer);
            }
            while let Some(notification) = self.runtime.to_notify() {
                progressed = true;
                self.on_notification(notification);
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_notification(&mut self, notification: OwnedNotification<MemberId>) {
        self.view_changed |= matches!(
            notification,
            OwnedNotification::MemberUp(_)
                | OwnedNotification::MemberDown(_)
                | OwnedNotification::Rename(..)
                | OwnedNotification::Rejoin(_)
        );
        match notification {
            OwnedNotification::MemberUp(id) => {
                self.alive.insert(id.addr, id.clone());
                self.fetch_meta(id);
            }
            OwnedNotification::MemberDown(id) => {
                if self.alive.get(&id.addr) == Some(&id) {
                    self.alive.remove(&id.addr);
                    // A process restarted at the address must get a new connection, not
                    // requests stuck on the old one until its idle timeout; a peer declared
                    // down while alive just dials again.
                    self.transport.drop_connection(id.addr);
                }
            }
            OwnedNotification::Rename(old, new) => {
                if self.alive.remove(&old.addr).is_some() {
                    self.alive.insert(new.addr, new.clone());
                    self.fetch_meta(new);
                }
            }
            OwnedNotification::Rejoin(new_identity) => {
                tracing::warn!(
                    generation = new_identity.generation,
                    "peers declared this node down; rejoined under a new generation"
                );
                let meta = {
                    let mut local = self
                        .shared
                        .local
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    local.generation = new_identity.generation;
                    local.revision = 0;
                    local.clone()
                };
                broadcast_meta(&mut self.foca, &meta);
            }
            OwnedNotification::Active => tracing::info!("gossip: in contact with the cluster"),
            OwnedNotification::Idle => tracing::info!("gossip: no live peers"),
            OwnedNotification::Defunct if self.leaving => {
                tracing::info!("gossip: left the cluster")
            }
            OwnedNotification::Defunct => {
                tracing::error!("gossip: declared down and unable to rejoin")
            }
        }
    }

    fn learn_meta(&mut self, meta: NodeMeta) {
        let newer = self.metas.get(&meta.node_id).is_none_or(|known| {
            (known.generation, known.revision) < (meta.generation, meta.revision)
        });
        if newer && meta.node_id != read(&self.shared.local).node_id {
            self.metas.insert(meta.node_id.clone(), meta);
            self.view_changed = true;
        }
    }

    fn fetch_meta(&mut self, id: MemberId) {
        if self
            .metas
            .get(&id.node_id)
            .is_some_and(|m| m.describes(&id))
            || !self.fetching.insert(id.clone())
        {
            return;
        }
        let rpc = self.rpc.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let command = match rpc.node_info(id.addr, META_FETCH_TIMEOUT).await {
                Ok(meta) if meta.node_id == id.node_id => Command::MetaFetched(meta),
                Ok(meta) => {
                    tracing::warn!(peer = %id.addr, expected = %id.node_id, got = %meta.node_id, "peer answered with another node's identity");
                    Command::FetchFailed(id)
                }
                Err(err) => {
                    tracing::debug!(peer = %id.addr, error = %err, "cannot fetch node metadata");
                    Command::FetchFailed(id)
                }
            };
            let _ = commands.send(command).await;
        });
    }

    /// Recomputes the live list and emits the differences as events.
    fn publish_view(&mut self) {
        let local = read(&self.shared.local).clone();
        let mut next = BTreeMap::new();
        for id in self.alive.values() {
            if let Some(meta) = self.metas.get(&id.node_id)
                && meta.describes(id)
            {
                next.insert(meta.node_id.clone(), meta.clone());
            }
        }
        next.insert(local.node_id.clone(), local);
        let mut live = self
            .shared
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *live == next {
            return;
        }
        let mut events = Vec::new();
        for (node_id, before) in live.iter() {
            match next.get(node_id) {
                None => events.push(MembershipEvent::Down(before.clone())),
                Some(after) if after.generation != before.generation => {
                    events.push(MembershipEvent::Down(before.clone()));
                    events.push(MembershipEvent::Up(after.clone()));
                }
                Some(after) if after != before => {
                    events.push(MembershipEvent::Updated(after.clone()))
                }
                Some(_) => {}
            }
        }
        for (node_id, after) in &next {
            if !live.contains_key(node_id) {
                events.push(MembershipEvent::Up(after.clone()));
            }
        }
        *live = next;
        drop(live);
        for event in events {
            match &event {
                MembershipEvent::Up(meta) => {
                    tracing::info!(node = %meta.name, node_id = %meta.node_id, zone = ?meta.zone, transport = %meta.transport_addr, "node up")
                }
                MembershipEvent::Down(meta) => {
                    tracing::info!(node = %meta.name, node_id = %meta.node_id, "node down")
                }
                MembershipEvent::Updated(meta) => {
                    tracing::debug!(node = %meta.name, "node metadata updated")
                }
            }
            let _ = self.shared.events.send(event);
        }
    }
}

/// Starts spreading `meta` (a newer version replaces older ones in every node's backlog).
fn broadcast_meta(foca: &mut Foca<MemberId, GossipCodec, StdRng, MetaBroadcasts>, meta: &NodeMeta) {
    match meta.encode() {
        Ok(bytes) => {
            if let Err(err) = foca.add_broadcast(&bytes) {
                tracing::error!(error = %err, "node metadata does not fit in a gossip packet");
            }
        }
        Err(err) => tracing::error!(error = %err, "cannot encode node metadata"),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
