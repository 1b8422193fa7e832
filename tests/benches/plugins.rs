//! Plugin benchmark: the cost of one pruning decision through the host, instantiation with the
//! pooling allocator, and a 1-day range search over 30 daily indices with pruning vs the same
//! query against only the matching index vs no pruning — all measured in one run.
//!
//! `cargo bench -p shoal-tests --bench plugins` (`SHOAL_BENCH_DOCS_PER_DAY`, default 5000;
//! `SHOAL_BENCH_DECISIONS`, default 100000).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal::plugins::PluginHost;
use shoal::plugins::pruning::{PruneCandidate, PruneQuery, ShardTimeStats, select_shards};
use shoal_tests::Node;

const DAY_MS: i64 = 86_400_000;
const JAN_1_2024: i64 = 1_704_067_200_000;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Searches each of `paths` in turn, `runs` times over, so that drift in the machine's load
/// falls on every path alike; returns `(p50, p99, last answer)` per path.
fn timed_searches(
    node: &Node,
    paths: &[&str],
    body: &[u8],
    runs: usize,
) -> Vec<(Duration, Duration, Value)> {
    let mut samples = vec![Vec::with_capacity(runs); paths.len()];
    let mut last = vec![Value::Null; paths.len()];
    for _ in 0..runs {
        for (at, path) in paths.iter().enumerate() {
            let started = Instant::now();
            let (status, bytes) = node.raw_bytes("POST", path, body.to_vec(), "application/json");
            samples[at].push(started.elapsed());
            assert_eq!(status, 200);
            last[at] = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        }
    }
    samples
        .iter_mut()
        .zip(last)
        .map(|(samples, last)| (percentile(samples, 0.5), percentile(samples, 0.99), last))
        .collect()
}

fn main() {
    let docs_per_day: i64 = std::env::var("SHOAL_BENCH_DOCS_PER_DAY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);

    // 1. One pruning decision over 30 shards, through the host (instance pooled, as in search).
    let host = PluginHost::new(None).expect("plugin host");
    let plugin = host.get("time-series-pruning").expect("shipped plugin");
    let names: Vec<String> = (1..=30)
        .map(|day| format!("logs-2024.01.{day:02}"))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let candidates: Vec<PruneCandidate> = (0..30)
        .map(|day| PruneCandidate {
            index: day as u32,
            shard: 0,
            stats: ShardTimeStats {
                doc_count: 1000,
                min: Some(JAN_1_2024 + day * DAY_MS),
                max: Some(JAN_1_2024 + (day + 1) * DAY_MS - 1),
            },
        })
        .collect();
    let range = (
        Some(JAN_1_2024 + 14 * DAY_MS),
        Some(JAN_1_2024 + 15 * DAY_MS - 1),
    );
    let query = PruneQuery {
        index_pattern: "logs-*",
        timestamp_field: "@timestamp",
        range,
    };
    for _ in 0..1000 {
        select_shards(&plugin, query, &names, &candidates).expect("decision");
    }
    let calls: usize = std::env::var("SHOAL_BENCH_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // Timed in batches, so that the two clock reads around a sample (tens of ns, measured
    // below) are not counted as part of a decision that itself takes about a microsecond.
    const BATCH: usize = 100;
    let mut batches = Vec::with_capacity(calls / BATCH);
    for _ in 0..calls / BATCH {
        let started = Instant::now();
        for _ in 0..BATCH {
            let kept = select_shards(&plugin, query, &names, &candidates).expect("decision");
            assert_eq!(kept, vec![14]);
        }
        batches.push(started.elapsed() / BATCH as u32);
    }
    let mut clock_reads = Vec::with_capacity(calls / BATCH);
    for _ in 0..calls / BATCH {
        let started = Instant::now();
        clock_reads.push(started.elapsed());
    }
    println!("== pruning decision over 30 shards ({calls} calls through the host) ==");
    println!(
        "per call, mean of batches of {BATCH}: p50 {:.2} µs, p99 {:.2} µs (goal <= 1 µs)",
        micros(percentile(&mut batches, 0.5)),
        micros(percentile(&mut batches, 0.99))
    );
    println!(
        "(one clock-read pair around a single call would add {:.3} µs)",
        micros(percentile(&mut clock_reads, 0.5))
    );

    // 2. Instantiation with the pooling allocator.
    let mut instantiations = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let started = Instant::now();
        plugin.prewarm().expect("instantiate");
        instantiations.push(started.elapsed());
    }
    println!("\n== instantiation (pooling allocator, 2000 instances) ==");
    println!(
        "p50 {:.1} µs, p99 {:.1} µs",
        micros(percentile(&mut instantiations, 0.5)),
        micros(percentile(&mut instantiations, 0.99))
    );

    // 3. A 1-day range over 30 daily indices: pruned vs the matching index alone vs unpruned.
    let scratch = tempfile::tempdir().expect("tempdir");
    let node = Node::start(
        env!("CARGO_BIN_EXE_shoal-node"),
        &scratch.path().join("data"),
        &[],
    )
    .expect("node");
    for day in 0..30 {
        let index = format!("logs-2024.01.{:02}", day + 1);
        let created = node.put(
            &format!("/{index}"),
            &json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1"},
                    "mappings": {"properties": {"@timestamp": {"type": "date"}, "status": {"type": "integer"}, "message": {"type": "text"}}}}),
        );
        assert_eq!(created.status, 200, "{:?}", created.body);
        let mut body = Vec::new();
        for i in 0..docs_per_day {
            let line = json!({"@timestamp": JAN_1_2024 + day * DAY_MS + i * (DAY_MS / docs_per_day), "status": 200 + (i % 5) * 100, "message": format!("request {i} on day {day}")});
            body.extend_from_slice(b"{\"index\":{}}\n");
            body.extend(serde_json::to_vec(&line).expect("json"));
            body.push(b'\n');
        }
        let (status, _) = node.raw_bytes(
            "POST",
            &format!("/{index}/_bulk"),
            body,
            "application/x-ndjson",
        );
        assert_eq!(status, 200);
    }
    node.post("/_refresh", &json!({}));
    node.post("/_forcemerge?max_num_segments=1", &json!({}));
    let query = json!({"size": 10, "query": {"bool": {"filter": {"range": {"@timestamp": {"gte": "2024-01-15T00:00:00Z", "lt": "2024-01-16T00:00:00Z"}}}}},
                       "aggs": {"statuses": {"terms": {"field": "status"}}}});
    let body = serde_json::to_vec(&query).expect("json");
    let runs = 300;
    let paths = ["/logs-*/_search", "/logs-2024.01.15/_search"];
    timed_searches(&node, &paths, &body, 50);
    let mut timed = timed_searches(&node, &paths, &body, runs).into_iter();
    let (Some((pruned_p50, pruned_p99, pruned)), Some((single_p50, single_p99, single))) =
        (timed.next(), timed.next())
    else {
        unreachable!("one result per path");
    };
    assert_eq!(pruned["_shards"]["skipped"], 29);
    assert_eq!(pruned["hits"]["total"], single["hits"]["total"]);
    node.post("/_plugins/time-series-pruning/_disable", &json!({}));
    let Some((unpruned_p50, unpruned_p99, unpruned)) =
        timed_searches(&node, &paths[..1], &body, runs).pop()
    else {
        unreachable!("one result per path");
    };
    assert_eq!(unpruned["_shards"]["skipped"], 0);
    assert_eq!(unpruned["hits"]["total"], single["hits"]["total"]);
    println!(
        "\n== 1-day range + terms agg over 30 daily indices ({docs_per_day} docs/day), {runs} runs =="
    );
    println!(
        "pruned (logs-*)         p50 {:>8.3} ms p99 {:>8.3} ms",
        pruned_p50.as_secs_f64() * 1e3,
        pruned_p99.as_secs_f64() * 1e3
    );
    println!(
        "matching index only     p50 {:>8.3} ms p99 {:>8.3} ms",
        single_p50.as_secs_f64() * 1e3,
        single_p99.as_secs_f64() * 1e3
    );
    println!(
        "unpruned (logs-*)       p50 {:>8.3} ms p99 {:>8.3} ms",
        unpruned_p50.as_secs_f64() * 1e3,
        unpruned_p99.as_secs_f64() * 1e3
    );
    println!(
        "pruned / matching-only: {:.2}x (goal <= 1.2x); unpruned / pruned: {:.2}x",
        pruned_p50.as_secs_f64() / single_p50.as_secs_f64(),
        unpruned_p50.as_secs_f64() / pruned_p50.as_secs_f64()
    );
}
