//! Cluster benchmark (prints figures, asserts nothing about speed):
//! - in the deterministic gossip simulation, for 3, 10 and 50 nodes: time until every node has
//!   declared a crashed or paused node down, and time for a metadata change to reach every node
//!   (LAN latency, with and without 1% loss; virtual time, so the figures are exact per seed);
//! - on real processes (3 nodes on 127.0.0.1): wall time from `kill -9` / `SIGSTOP` of a node
//!   until both survivors have dropped it from `_cat/nodes`, and from `kill -9` of the master
//!   until a cluster-settings change commits through a new master.
//!
//! `cargo bench -p shoal-tests --bench cluster` (`SHOAL_BENCH_SEEDS`, default 16;
//! `SHOAL_BENCH_ROUNDS`, real-process rounds, default 3).

use std::time::{Duration, Instant};

use shoal::cluster::simulation::{Network, detection_time, dissemination_time};
use shoal_tests::{Cluster, node_names};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-node");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn summary(mut samples: Vec<Duration>) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:>6.0} ms  max {:>6.0} ms  (n={})",
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

fn simulation(seeds: u64) {
    println!("gossip simulation (virtual time, {seeds} seeds per row)");
    for (label, network) in [
        ("lan", Network::lan()),
        ("lan 1% loss", Network::lan().with_loss(0.01)),
    ] {
        for size in [3, 10, 50] {
            let crash: Vec<_> = (0..seeds)
                .filter_map(|seed| detection_time(seed, size, network, false))
                .collect();
            let pause: Vec<_> = (0..seeds)
                .filter_map(|seed| detection_time(seed, size, network, true))
                .collect();
            let spread: Vec<_> = (0..seeds)
                .filter_map(|seed| dissemination_time(seed, size, network))
                .collect();
            println!(
                "  {label:<12} {size:>2} nodes  crash detected: {}",
                summary(crash)
            );
            println!(
                "  {label:<12} {size:>2} nodes  pause detected: {}",
                summary(pause)
            );
            println!(
                "  {label:<12} {size:>2} nodes  metadata spread: {}",
                summary(spread)
            );
        }
    }
}

/// Wall time until nodes 0 and 1 both list only themselves and each other.
fn time_until_dropped(cluster: &Cluster, started: Instant) -> Duration {
    let expected = ["node-0".to_string(), "node-1".to_string()];
    loop {
        if (0..2).all(|i| node_names(&cluster.nodes[i]) == expected) {
            return started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(60) {
            panic!("the stopped node was never dropped");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for_all(cluster: &Cluster) {
    cluster.wait_for_view(&[0, 1, 2], &["node-0", "node-1", "node-2"]);
}

fn real_processes(rounds: usize) {
    let mut cluster = Cluster::start(BIN, &["a", "b", "c"]).expect("cluster starts");
    wait_for_all(&cluster);
    let mut killed = Vec::new();
    let mut paused = Vec::new();
    for _ in 0..rounds {
        // Let probes settle on the restarted or resumed node before the next fault.
        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        cluster.nodes[2].kill();
        killed.push(time_until_dropped(&cluster, started));
        cluster.nodes[2].restart().expect("restart");
        wait_for_all(&cluster);

        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        cluster.nodes[2].pause();
        paused.push(time_until_dropped(&cluster, started));
        cluster.nodes[2].resume();
        wait_for_all(&cluster);
    }
    let mut failovers = Vec::new();
    for round in 0..rounds {
        std::thread::sleep(Duration::from_secs(2));
        failovers.push(master_failover(&mut cluster, round));
    }
    println!("real processes, 3 nodes on 127.0.0.1 ({rounds} rounds)");
    println!(
        "  kill -9 -> dropped by both survivors: {}",
        summary(killed)
    );
    println!(
        "  SIGSTOP -> dropped by both survivors: {}",
        summary(paused)
    );
    println!(
        "  kill -9 of the master -> next cluster-state change committed: {}",
        summary(failovers)
    );
}

/// Kills the master and times how long until a survivor commits a settings change.
fn master_failover(cluster: &mut Cluster, round: usize) -> Duration {
    let master = cluster.nodes[0].get("/_cat/master?format=json").body[0]["node"]
        .as_str()
        .and_then(|name| name.trim_start_matches("node-").parse::<usize>().ok())
        .expect("a master is elected");
    let survivor = (master + 1) % 3;
    let body = serde_json::json!({"transient": {"cluster.max_shards_per_node": (1000 + round).to_string()}});
    let started = Instant::now();
    cluster.nodes[master].kill();
    loop {
        let reply = cluster.nodes[survivor].put("/_cluster/settings?master_timeout=1s", &body);
        if reply.status == 200 {
            break;
        }
    }
    let took = started.elapsed();
    cluster.nodes[master].restart().expect("restart");
    wait_for_all(cluster);
    took
}

fn main() {
    simulation(env_usize("SHOAL_BENCH_SEEDS", 16) as u64);
    real_processes(env_usize("SHOAL_BENCH_ROUNDS", 3));
}
