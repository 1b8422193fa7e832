//! Deterministic simulation of gossip, for tuning and checking [`super::membership`]: N foca
//! instances with the production identity, codec, SWIM parameters and metadata broadcasts,
//! driven by one virtual clock and a seeded random source for latency and loss, with crashes,
//! pauses (a SIGSTOPped process) and partitions. The same seed replays the same history.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, OwnedNotification, Timer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

use super::codec::GossipCodec;
use super::identity::MemberId;
use super::membership::gossip_config;
use super::node_meta::{MetaBroadcasts, NodeMeta};
use crate::config::Role;

/// Network conditions of a simulated cluster.
#[derive(Debug, Clone, Copy)]
pub struct Network {
    /// Probability that a datagram is lost.
    pub loss: f64,
    pub min_latency: Duration,
    pub max_latency: Duration,
}

impl Network {
    /// A LAN: 0.1-1 ms one way, no loss.
    pub fn lan() -> Network {
        Network {
            loss: 0.0,
            min_latency: Duration::from_micros(100),
            max_latency: Duration::from_millis(1),
        }
    }

    pub fn with_loss(self, loss: f64) -> Network {
        Network { loss, ..self }
    }
}

enum Event {
    Deliver {
        to: usize,
        payload: Bytes,
    },
    Timer {
        node: usize,
        timer: Timer<MemberId>,
    },
    /// The membership task's housekeeping tick: a node with no peers re-announces to its seed.
    Housekeeping {
        node: usize,
    },
}

type SimFoca = Foca<MemberId, GossipCodec, StdRng, MetaBroadcasts>;

struct SimNode {
    foca: Option<SimFoca>,
    id: MemberId,
    meta: NodeMeta,
    paused: bool,
    /// Events that reached a paused node, delivered when it resumes.
    held: Vec<Event>,
    /// Addresses this node currently believes alive.
    sees: HashSet<SocketAddr>,
    metas: mpsc::UnboundedReceiver<NodeMeta>,
    /// Newest metadata version received per node id.
    meta_versions: HashMap<String, (u64, u64)>,
}

/// A `MemberDown` a node reported about a peer that was in fact running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FalseDown {
    pub at: Duration,
    pub observer: usize,
    pub about: usize,
}

/// A simulated cluster.
pub struct Simulation {
    now: Duration,
    rng: StdRng,
    seed: u64,
    network: Network,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: HashMap<u64, Event>,
    next_event: u64,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    cut: HashSet<(usize, usize)>,
    false_downs: Vec<FalseDown>,
}

impl Simulation {
    /// `size` nodes that all announce themselves to node 0 at time zero.
    pub fn new(seed: u64, size: usize, network: Network) -> Simulation {
        let mut sim = Simulation {
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            seed,
            network,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            nodes: Vec::with_capacity(size),
            by_addr: HashMap::new(),
            cut: HashSet::new(),
            false_downs: Vec::new(),
        };
        for index in 0..size {
            let addr =
                SocketAddr::from(([10, 0, (index / 250) as u8, (index % 250) as u8 + 1], 9300));
            let id = MemberId {
                node_id: format!("node-{index}"),
                addr,
                generation: 1,
            };
            let meta = NodeMeta {
                node_id: id.node_id.clone(),
                name: id.node_id.clone(),
                zone: Some(format!("zone-{}", index % 3)),
                roles: vec![Role::Master, Role::Data],
                http_addr: SocketAddr::from((addr.ip(), 9200)),
                transport_addr: addr,
                version: crate::VERSION.to_string(),
                generation: 1,
                revision: 0,
            };
            let (tx, metas) = mpsc::unbounded_channel();
            let foca = Foca::with_custom_broadcast(
                id.clone(),
                gossip_config(),
                StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(index as u64)),
                GossipCodec,
                MetaBroadcasts::new(tx),
            );
            sim.by_addr.insert(addr, index);
            sim.nodes.push(SimNode {
                foca: Some(foca),
                id,
                meta,
                paused: false,
                held: Vec::new(),
                sees: HashSet::new(),
                metas,
                meta_versions: HashMap::new(),
            });
        }
        for index in 0..size {
            sim.broadcast_meta(index);
            if index > 0 {
                sim.push(Duration::ZERO, Event::Housekeeping { node: index });
            }
        }
        sim
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Whether node `observer` believes node `about` alive.
    pub fn sees(&self, observer: usize, about: usize) -> bool {
        self.nodes[observer]
            .sees
            .contains(&self.nodes[about].id.addr)
    }

    fn running(&self, index: usize) -> bool {
        self.nodes[index].foca.is_some() && !self.nodes[index].paused
    }

    /// Every running node sees every other running node, and no stopped one.
    pub fn converged(&self) -> bool {
        (0..self.size()).filter(|&a| self.running(a)).all(|a| {
            (0..self.size())
                .filter(|&b| b != a)
                .all(|b| self.sees(a, b) == self.running(b))
        })
    }

    /// `MemberDown` reports about nodes that were running at the time.
    pub fn false_downs(&self) -> &[FalseDown] {
        &self.false_downs
    }

    /// The process dies: no more sends, timers or receives.
    pub fn crash(&mut self, index: usize) {
        self.nodes[index].foca = None;
    }

    /// SIGSTOP: everything addressed to the node waits until [`Simulation::resume`].
    pub fn pause(&mut self, index: usize) {
        self.nodes[index].paused = true;
    }

    /// SIGCONT: held timers and datagrams arrive at once, late.
    pub fn resume(&mut self, index: usize) {
        self.nodes[index].paused = false;
        let held = std::mem::take(&mut self.nodes[index].held);
        for event in held {
            self.push(Duration::ZERO, event);
        }
    }

    /// Cuts every link between the two groups.
    pub fn partition(&mut self, left: &[usize], right: &[usize]) {
        for &a in left {
            for &b in right {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Node `index` changes its metadata (a new revision) and starts spreading it.
    pub fn update_meta(&mut self, index: usize) -> (u64, u64) {
        let meta = &mut self.nodes[index].meta;
        meta.revision += 1;
        let version = (meta.generation, meta.revision);
        self.broadcast_meta(index);
        version
    }

    /// Whether every running node other than `index` has received its metadata `version`.
    pub fn meta_known_everywhere(&mut self, index: usize, version: (u64, u64)) -> bool {
        let node_id = self.nodes[index].id.node_id.clone();
        let running: Vec<usize> = (0..self.size())
            .filter(|&other| other != index && self.running(other))
            .collect();
        running.into_iter().all(|other| {
            let node = &mut self.nodes[other];
            while let Ok(meta) = node.metas.try_recv() {
                let entry = node.meta_versions.entry(meta.node_id.clone()).or_default();
                *entry = (*entry).max((meta.generation, meta.revision));
            }
            node.meta_versions
                .get(&node_id)
                .is_some_and(|v| *v >= version)
        })
    }

    /// Advances virtual time by `span`.
    pub fn run_for(&mut self, span: Duration) {
        let until = self.now + span;
        while self.step_before(until) {}
        self.now = until;
    }

    /// Runs until `done` holds (checked after every event) or `limit` passes; returns how long
    /// it took.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut Simulation) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let until = start + limit;
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            if !self.step_before(until) {
                self.now = until;
                return done(self).then(|| self.now - start);
            }
        }
    }

    fn step_before(&mut self, until: Duration) -> bool {
        let Some(Reverse((at, seq))) = self.queue.peek().copied() else {
            return false;
        };
        if at > until {
            return false;
        }
        self.queue.pop();
        self.now = at;
        if let Some(event) = self.events.remove(&seq) {
            self.dispatch(event);
        }
        true
    }

    fn dispatch(&mut self, event: Event) {
        let index = match &event {
            Event::Deliver { to, .. } => *to,
            Event::Timer { node, .. } | Event::Housekeeping { node } => *node,
        };
        if self.nodes[index].foca.is_none() {
            return;
        }
        if self.nodes[index].paused {
            self.nodes[index].held.push(event);
            return;
        }
        match event {
            Event::Deliver { payload, .. } => {
                self.with_foca(index, |foca, rt| foca.handle_data(&payload, rt));
            }
            Event::Timer { timer, .. } => {
                self.with_foca(index, |foca, rt| foca.handle_timer(timer, rt));
            }
            Event::Housekeeping { node } => {
                let seed_addr = self.nodes[0].id.addr;
                self.with_foca(node, |foca, rt| {
                    if foca.num_members() == 0 {
                        foca.announce(MemberId::seed(seed_addr), rt)
                    } else {
                        Ok(())
                    }
                });
                self.push(
                    super::membership::ANNOUNCE_INTERVAL,
                    Event::Housekeeping { node },
                );
            }
        }
    }

    fn broadcast_meta(&mut self, index: usize) {
        let Ok(bytes) = self.nodes[index].meta.encode() else {
            return;
        };
        if let Some(foca) = self.nodes[index].foca.as_mut() {
            // A rejected broadcast shows up as a dissemination that never completes.
            let _ = foca.add_broadcast(&bytes);
        }
    }

    fn with_foca(
        &mut self,
        index: usize,
        call: impl FnOnce(&mut SimFoca, &mut AccumulatingRuntime<MemberId>) -> Result<(), foca::Error>,
    ) {
        let mut runtime = AccumulatingRuntime::new();
        let Some(foca) = self.nodes[index].foca.as_mut() else {
            return;
        };
        // Errors are what junk or stale packets cause; foca stays consistent, as in production.
        let _ = call(foca, &mut runtime);
        while let Some((to, payload)) = runtime.to_send() {
            let Some(&target) = self.by_addr.get(&to.addr) else {
                continue;
            };
            if self.cut.contains(&(index, target)) || self.rng.random_bool(self.network.loss) {
                continue;
            }
            let latency = self
                .rng
                .random_range(self.network.min_latency..=self.network.max_latency);
            self.push(
                latency,
                Event::Deliver {
                    to: target,
                    payload,
                },
            );
        }
        while let Some((after, timer)) = runtime.to_schedule() {
            self.push(after, Event::Timer { node: index, timer });
        }
        while let Some(notification) = runtime.to_notify() {
            self.observe(index, notification);
        }
    }

    fn observe(&mut self, observer: usize, notification: OwnedNotification<MemberId>) {
        match notification {
            OwnedNotification::MemberUp(id) => {
                self.nodes[observer].sees.insert(id.addr);
            }
            OwnedNotification::Rename(_, id) => {
                self.nodes[observer].sees.insert(id.addr);
            }
            OwnedNotification::MemberDown(id) => {
                self.nodes[observer].sees.remove(&id.addr);
                if let Some(&about) = self.by_addr.get(&id.addr)
                    && self.running(about)
                    && !self.cut.contains(&(observer, about))
                {
                    self.false_downs.push(FalseDown {
                        at: self.now,
                        observer,
                        about,
                    });
                }
            }
            OwnedNotification::Rejoin(id) => self.nodes[observer].id = id,
            OwnedNotification::Active | OwnedNotification::Idle | OwnedNotification::Defunct => {}
        }
    }

    fn push(&mut self, after: Duration, event: Event) {
        let seq = self.next_event;
        self.next_event += 1;
        self.queue.push(Reverse((self.now + after, seq)));
        self.events.insert(seq, event);
    }
}

/// Time from a node going silent until every running node has declared it down.
pub fn detection_time(
    seed: u64,
    size: usize,
    network: Network,
    pause_instead_of_crash: bool,
) -> Option<Duration> {
    let mut sim = Simulation::new(seed, size, network);
    sim.run_until(Duration::from_secs(30), |sim| sim.converged())?;
    sim.run_for(Duration::from_secs(2));
    let victim = size - 1;
    if pause_instead_of_crash {
        sim.pause(victim);
    } else {
        sim.crash(victim);
    }
    sim.run_until(Duration::from_secs(30), |sim| {
        (0..victim).all(|observer| !sim.sees(observer, victim))
    })
}

/// Time for one node's metadata change to reach every other node.
pub fn dissemination_time(seed: u64, size: usize, network: Network) -> Option<Duration> {
    let mut sim = Simulation::new(seed, size, network);
    sim.run_until(Duration::from_secs(60), |sim| sim.converged())?;
    sim.run_for(Duration::from_secs(5));
    let version = sim.update_meta(0);
    sim.run_until(Duration::from_secs(60), |sim| {
        sim.meta_known_everywhere(0, version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> impl Iterator<Item = u64> {
        let base = std::env::var("SHOAL_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        base..base + 8
    }

    #[test]
    #[ignore = "prints figures for tuning"]
    fn print_detection_times() {
        for size in [3, 5, 10, 50] {
            let times: Vec<_> = seeds()
                .filter_map(|seed| detection_time(seed, size, Network::lan(), false))
                .map(|t| t.as_millis())
                .collect();
            println!("{size} nodes: detection ms {times:?}");
        }
    }

    #[test]
    fn a_cluster_forms_through_one_seed() {
        for seed in seeds() {
            let mut sim = Simulation::new(seed, 7, Network::lan());
            let took = sim.run_until(Duration::from_secs(10), |sim| sim.converged());
            assert!(
                took.is_some(),
                "seed {seed}: 7 nodes did not converge in 10 s"
            );
        }
    }

    #[test]
    fn a_silent_node_is_declared_down_within_two_seconds() {
        for seed in seeds() {
            for pause in [false, true] {
                let took = detection_time(seed, 5, Network::lan(), pause)
                    .unwrap_or_else(|| panic!("seed {seed}: never detected"));
                assert!(
                    took <= Duration::from_millis(2000),
                    "seed {seed} (pause={pause}): detection took {took:?} of virtual time"
                );
            }
        }
    }

    #[test]
    fn one_percent_loss_raises_no_false_alarm() {
        for seed in seeds() {
            let mut sim = Simulation::new(seed, 10, Network::lan().with_loss(0.01));
            assert!(
                sim.run_until(Duration::from_secs(30), |sim| sim.converged())
                    .is_some()
            );
            sim.run_for(Duration::from_secs(600));
            assert_eq!(
                sim.false_downs(),
                &[],
                "seed {seed}: live nodes declared down"
            );
            assert!(sim.converged(), "seed {seed}");
        }
    }

    #[test]
    fn a_paused_node_rejoins_after_it_resumes() {
        for seed in seeds() {
            let mut sim = Simulation::new(seed, 5, Network::lan());
            assert!(
                sim.run_until(Duration::from_secs(10), |sim| sim.converged())
                    .is_some()
            );
            sim.pause(4);
            sim.run_for(Duration::from_secs(5));
            assert!(!sim.sees(0, 4), "seed {seed}: paused node still seen");
            sim.resume(4);
            let back = sim.run_until(Duration::from_secs(10), |sim| sim.converged());
            assert!(back.is_some(), "seed {seed}: resumed node did not rejoin");
        }
    }

    #[test]
    fn both_sides_of_a_partition_see_each_other_again_after_healing() {
        for seed in seeds() {
            let mut sim = Simulation::new(seed, 5, Network::lan());
            assert!(
                sim.run_until(Duration::from_secs(10), |sim| sim.converged())
                    .is_some()
            );
            sim.partition(&[0, 1, 2], &[3, 4]);
            sim.run_for(Duration::from_secs(5));
            assert!(
                !sim.sees(0, 3) && !sim.sees(3, 0),
                "seed {seed}: partition not noticed"
            );
            assert!(
                sim.sees(3, 4) && sim.sees(0, 2),
                "seed {seed}: a side fell apart"
            );
            assert_eq!(
                sim.false_downs(),
                &[],
                "seed {seed}: a node lost sight of its own side"
            );
            // After healing, news that the other side was declared down reaches each node, which
            // then rejoins under a new generation: a brief, expected flap.
            sim.heal();
            let healed = sim.run_until(Duration::from_secs(15), |sim| sim.converged());
            assert!(healed.is_some(), "seed {seed}: partition did not heal");
        }
    }

    #[test]
    fn metadata_changes_reach_every_node() {
        for seed in seeds() {
            let took = dissemination_time(seed, 10, Network::lan().with_loss(0.01));
            assert!(
                took.is_some(),
                "seed {seed}: metadata never reached everyone"
            );
        }
    }

    #[test]
    fn the_same_seed_replays_the_same_history() {
        let run = |seed| {
            let mut sim = Simulation::new(seed, 6, Network::lan().with_loss(0.05));
            sim.run_for(Duration::from_secs(3));
            sim.crash(5);
            sim.run_for(Duration::from_secs(3));
            (0..6)
                .map(|a| (0..6).filter(|&b| sim.sees(a, b)).count())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
    }
}
