//! Cluster benchmark (prints figures, asserts nothing about speed):
//! - in the deterministic gossip simulation, for 3, 10 and 50 nodes: time until every node has
//!   declared a crashed or paused node down by SWIM alone (a real crash is also noticed by its
//!   closed port, see `cluster::crash_probe`), and time for a metadata change to reach every
//!   node (LAN latency, with and without 1% loss; virtual time, so the figures are exact per
//!   seed);
//! - on real processes (3 nodes on 127.0.0.1): wall time from `kill -9` / `SIGSTOP` of a node
//!   until both survivors have dropped it from `_cat/nodes`, and from `kill -9` of the master
//!   until a cluster-settings change commits through a new master;
//! - replicated writes (3 nodes, 3 shards × 1 replica): wall time from `kill -9` / `SIGSTOP` of
//!   the node holding the most primaries other than the master, and from `kill -9` of the
//!   master's node, until a bulk touching every shard is fully acknowledged; bulk throughput
//!   with 1 replica against 0 replicas (same documents); then a node restarted after missing a
//!   tenth of those documents: how long its copies took to recover, by operations (replicas)
//!   and by files (replaced primaries).
//!
//! `cargo bench -p shoal-tests --bench cluster` (`SHOAL_BENCH_SEEDS`, default 16;
//! `SHOAL_BENCH_ROUNDS`, real-process rounds, default 3).

use std::time::{Duration, Instant};

use serde_json::json;
use shoal::cluster::simulation::{Network, detection_time, dissemination_time};
use shoal_tests::{Cluster, env_usize, node_names};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-node");

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
    let mut rejoined = Vec::new();
    let mut paused = Vec::new();
    for _ in 0..rounds {
        // Let probes settle on the restarted or resumed node before the next fault.
        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        cluster.nodes[2].kill();
        killed.push(time_until_dropped(&cluster, started));
        let started = Instant::now();
        cluster.nodes[2].restart().expect("restart");
        wait_for_all(&cluster);
        rejoined.push(started.elapsed());

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
        "  restart after kill -9 -> listed by every node: {}",
        summary(rejoined)
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

/// The index in `cluster.nodes` of the elected master.
fn master(node: &shoal_tests::Node) -> usize {
    node.get("/_cat/master?format=json").body[0]["node"]
        .as_str()
        .and_then(|name| name.trim_start_matches("node-").parse::<usize>().ok())
        .expect("a master is elected")
}

/// Kills the master and times how long until a survivor commits a settings change.
fn master_failover(cluster: &mut Cluster, round: usize) -> Duration {
    let master = master(&cluster.nodes[0]);
    let survivor = (master + 1) % 3;
    let body = serde_json::json!({"transient": {"cluster.max_shards_per_node": (1000 + round).to_string()}});
    let started = Instant::now();
    cluster.nodes[master].kill();
    loop {
        let reply = cluster.nodes[survivor].put("/_cluster/settings?master_timeout=100ms", &body);
        if reply.status == 200 {
            break;
        }
    }
    let took = started.elapsed();
    cluster.nodes[master].restart().expect("restart");
    wait_for_all(cluster);
    took
}

fn create_index(node: &shoal_tests::Node, name: &str, replicas: u32) {
    let reply = node.put(
        &format!("/{name}"),
        &json!({"settings": {"number_of_shards": 3, "number_of_replicas": replicas, "refresh_interval": "1s"}}),
    );
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let health = node.get(&format!(
        "/_cluster/health/{name}?wait_for_status=green&timeout=60s"
    ));
    assert_eq!(health.body["status"], "green", "{:?}", health.body);
}

/// NDJSON for `count` documents starting at `first`.
fn bulk_body(first: usize, count: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for i in first..first + count {
        body.extend(
            json!({"index": {"_id": format!("d{i}")}})
                .to_string()
                .into_bytes(),
        );
        body.push(b'\n');
        body.extend(
            json!({"n": i, "text": "replicated write benchmark document", "tag": format!("t{}", i % 17)})
                .to_string()
                .into_bytes(),
        );
        body.push(b'\n');
    }
    body
}

/// The node other than the master holding the most started primaries of `index`.
fn busiest_primary(node: &shoal_tests::Node, index: &str) -> usize {
    let master = master(node);
    let rows = node.get(&format!("/_cat/shards/{index}?format=json")).body;
    let mut counts = [0usize; 3];
    for row in rows.as_array().cloned().unwrap_or_default() {
        if row["prirep"] == "p"
            && let Some(i) = row["node"]
                .as_str()
                .and_then(|n| n.trim_start_matches("node-").parse::<usize>().ok())
        {
            counts[i] += 1;
        }
    }
    (0..3)
        .filter(|&i| i != master)
        .max_by_key(|&i| counts[i])
        .unwrap_or(0)
}

/// How a node is failed.
#[derive(Clone, Copy)]
enum Fault {
    Kill,
    Pause,
}

/// Time from failing node `victim` until a bulk sent right after it (touching every shard) is
/// fully acknowledged: the write waits out the failover inside the cluster. `first_id` keeps
/// each round's documents apart.
fn write_failover(cluster: &mut Cluster, victim: usize, fault: Fault, first_id: usize) -> Duration {
    let survivor = (victim + 1) % 3;
    let body = bulk_body(first_id, 30);
    let started = Instant::now();
    match fault {
        Fault::Kill => cluster.nodes[victim].kill(),
        Fault::Pause => cluster.nodes[victim].pause(),
    }
    loop {
        let reply = cluster.nodes[survivor].raw(
            "POST",
            "/failover/_bulk",
            Some(body.clone()),
            "application/x-ndjson",
        );
        if reply.status == 200 && reply.body["errors"] == false {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "writes never resumed: {:?}",
            reply.body
        );
    }
    let took = started.elapsed();
    match fault {
        Fault::Kill => cluster.nodes[victim].restart().expect("restart"),
        Fault::Pause => cluster.nodes[victim].resume(),
    }
    let health = cluster.nodes[survivor].get("/_cluster/health?wait_for_status=green&timeout=120s");
    assert_eq!(health.body["status"], "green", "{:?}", health.body);
    took
}

/// Documents per second bulk-loading `docs` documents into `index` through all three nodes.
fn load(cluster: &Cluster, index: &str, docs: usize) -> f64 {
    const BATCH: usize = 500;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (worker, node) in cluster.nodes.iter().enumerate() {
            scope.spawn(move || {
                let mut first = worker * BATCH;
                while first < docs {
                    let count = BATCH.min(docs - first);
                    let (status, _) = node.raw_bytes(
                        "POST",
                        &format!("/{index}/_bulk"),
                        bulk_body(first, count),
                        "application/x-ndjson",
                    );
                    assert_eq!(status, 200);
                    first += BATCH * 3;
                }
            });
        }
    });
    docs as f64 / started.elapsed().as_secs_f64()
}

fn replicated_writes(rounds: usize, docs: usize) {
    let mut cluster = Cluster::start(BIN, &["a", "b", "c"]).expect("cluster starts");
    wait_for_all(&cluster);
    create_index(&cluster.nodes[0], "failover", 1);
    let mut killed = Vec::new();
    let mut paused = Vec::new();
    let mut master_killed = Vec::new();
    for round in 0..rounds {
        let first_id = 1_000_000 * (round + 1);
        for (fault, samples, offset) in [
            (Fault::Kill, &mut killed, 0),
            (Fault::Pause, &mut paused, 300_000),
        ] {
            std::thread::sleep(Duration::from_secs(2));
            let victim = busiest_primary(&cluster.nodes[0], "failover");
            samples.push(write_failover(
                &mut cluster,
                victim,
                fault,
                first_id + offset,
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
        let victim = master(&cluster.nodes[0]);
        master_killed.push(write_failover(
            &mut cluster,
            victim,
            Fault::Kill,
            first_id + 600_000,
        ));
    }
    println!("replicated writes, 3 nodes, 3 shards x 1 replica ({rounds} rounds)");
    println!("  failover: fault -> first bulk touching every shard fully acknowledged");
    println!(
        "    kill -9 of the node with the most primaries (not the master): {}  (goal <= 1 s)",
        summary(killed)
    );
    println!(
        "    SIGSTOP of the node with the most primaries (not the master): {}  (goal <= 2 s)",
        summary(paused)
    );
    println!(
        "    kill -9 of the master's node (a Raft election first):         {}",
        summary(master_killed)
    );
    // Fresh indices each round, alternating, so drift on a shared machine hits both alike;
    // the figures printed are medians.
    create_index(&cluster.nodes[0], "warm-up", 0);
    load(&cluster, "warm-up", 2_000);
    let mut zero = Vec::new();
    let mut one = Vec::new();
    for round in 0..THROUGHPUT_ROUNDS {
        let unreplicated = format!("zero-replicas-{round}");
        create_index(&cluster.nodes[0], &unreplicated, 0);
        zero.push(load(&cluster, &unreplicated, docs));
        create_index(&cluster.nodes[0], &format!("one-replica-{round}"), 1);
        one.push(load(&cluster, &format!("one-replica-{round}"), docs));
    }
    let ratios = zero
        .iter()
        .zip(&one)
        .map(|(zero, one)| one / zero)
        .collect();
    println!(
        "  bulk throughput, {docs} docs in bulks of 500 from 3 clients (median of {THROUGHPUT_ROUNDS}):"
    );
    println!("    0 replicas: {:>8.0} docs/s", median(zero));
    println!(
        "    1 replica:  {:>8.0} docs/s   ratio {:.2} (goal >= 0.8)",
        median(one),
        median(ratios)
    );
    let last = format!("one-replica-{}", THROUGHPUT_ROUNDS - 1);
    returning_copies(&mut cluster, &last, docs / 10);
}

/// Alternating rounds of the replicated-throughput comparison.
const THROUGHPUT_ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Restarts a node after `missed` writes went by without it: its replicas (their primary term
/// unchanged) catch up by operations, its replaced primaries are rebuilt from files. Prints
/// each recovery as `_cat/recovery` reports it, so the two ways compare on shards of one size.
fn returning_copies(cluster: &mut Cluster, index: &str, missed: usize) {
    let rows = cluster.nodes[0]
        .get(&format!("/_cat/shards/{index}?format=json"))
        .body;
    let rows = rows.as_array().cloned().unwrap_or_default();
    let holds = |node: usize, prirep: &str| {
        rows.iter()
            .filter(|row| row["node"] == format!("node-{node}").as_str() && row["prirep"] == prirep)
            .count()
    };
    let victim = (0..3)
        .filter(|&node| holds(node, "r") > 0)
        .max_by_key(|&node| holds(node, "p"))
        .unwrap_or(2);
    let survivor = (victim + 1) % 3;
    cluster.nodes[victim].kill();
    let health = cluster.nodes[survivor].get(&format!(
        "/_cluster/health/{index}?wait_for_status=yellow&timeout=60s"
    ));
    assert_eq!(health.status, 200, "{:?}", health.body);
    for first in (0..missed).step_by(500) {
        let (status, _) = cluster.nodes[survivor].raw_bytes(
            "POST",
            &format!("/{index}/_bulk"),
            bulk_body(50_000_000 + first, 500.min(missed - first)),
            "application/x-ndjson",
        );
        assert_eq!(status, 200);
    }
    cluster.nodes[victim].restart().expect("restart");
    let health = cluster.nodes[survivor].get(&format!(
        "/_cluster/health/{index}?wait_for_status=green&timeout=120s"
    ));
    assert_eq!(health.body["status"], "green", "{:?}", health.body);
    let recoveries = cluster.nodes[survivor]
        .get(&format!("/_cat/recovery/{index}?format=json"))
        .body;
    println!("  a node back after missing {missed} docs: its copies' recoveries");
    for row in recoveries.as_array().cloned().unwrap_or_default() {
        if row["target_node"] != format!("node-{victim}").as_str() || row["type"] != "peer" {
            continue;
        }
        let field = |key: &str| row[key].as_str().unwrap_or("?").to_string();
        let how = if field("files") == "0" {
            "by operations"
        } else {
            "by files"
        };
        println!(
            "    shard {} {how:<13}: {:>7}, {} files / {} bytes copied, {} operations replayed",
            field("shard"),
            field("time"),
            field("files"),
            field("bytes"),
            field("translog_ops_recovered"),
        );
    }
}

fn main() {
    simulation(env_usize("SHOAL_BENCH_SEEDS", 16) as u64);
    real_processes(env_usize("SHOAL_BENCH_ROUNDS", 3));
    replicated_writes(
        env_usize("SHOAL_BENCH_ROUNDS", 3),
        env_usize("SHOAL_BENCH_DOCS", 60_000),
    );
}
