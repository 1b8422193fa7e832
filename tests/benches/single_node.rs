//! Single-node benchmark: bulk ingest and search latency through Shoal's REST API versus raw
//! tantivy indexing and searching the same documents in-process, measured in one run.
//!
//! `cargo bench -p shoal-tests --bench single_node` (documents: `SHOAL_BENCH_DOCS`, default
//! 200000; search iterations: `SHOAL_BENCH_SEARCHES`, default 300; only the queries whose name
//! contains `SHOAL_BENCH_QUERY`, for profiling one).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_tests::http_logs;
use shoal_tests::{Node, dir_size, env_usize};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{FAST, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT};
use tantivy::{Index, TantivyDocument, Term};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// A blocking HTTP/1.1 client on one keep-alive connection, for timing requests: reqwest's
/// blocking client hands every request to a runtime thread and back, which on a two-core
/// machine adds more to a sub-millisecond search than the server spends on it.
struct LeanClient {
    stream: std::io::BufReader<std::net::TcpStream>,
    host: String,
}

impl LeanClient {
    fn connect(base_url: &str) -> LeanClient {
        let host = base_url.trim_start_matches("http://").to_string();
        let stream = std::net::TcpStream::connect(&host).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        LeanClient {
            stream: std::io::BufReader::new(stream),
            host,
        }
    }

    /// Sends one request and reads the whole response: status and body.
    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use std::io::{BufRead, Read, Write};
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.stream.get_mut().write_all(&request).expect("send");
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status code");
        let mut length = None;
        loop {
            line.clear();
            self.stream.read_line(&mut line).expect("header");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let mut reply = vec![0; length.expect("responses carry a content-length")];
        self.stream.read_exact(&mut reply).expect("body");
        (status, reply)
    }
}

struct Raw {
    index: Index,
    timestamp: tantivy::schema::Field,
    request: tantivy::schema::Field,
    status: tantivy::schema::Field,
    source: tantivy::schema::Field,
}

/// Raw tantivy with a typed schema, one indexing thread and the same buffer as a Shoal shard,
/// storing `_source` as Shoal does.
fn raw_ingest(lines: &[Vec<u8>], dir: &Path) -> (Raw, Duration) {
    let mut builder = Schema::builder();
    let timestamp = builder.add_i64_field("@timestamp", INDEXED | FAST);
    let clientip = builder.add_text_field("clientip", STRING | FAST);
    let request = builder.add_text_field("request", TEXT);
    let status = builder.add_u64_field("status", INDEXED | FAST);
    let size = builder.add_u64_field("size", FAST);
    let source = builder.add_bytes_field("_source", STORED);
    let index = Index::create_in_dir(dir, builder.build()).expect("raw index");
    let started = Instant::now();
    let mut writer = index
        .writer_with_num_threads::<TantivyDocument>(1, 64 << 20)
        .expect("writer");
    for line in lines {
        let value: Value = serde_json::from_slice(line).expect("json");
        let mut doc = TantivyDocument::new();
        doc.add_i64(timestamp, value["@timestamp"].as_i64().unwrap_or(0));
        doc.add_text(clientip, value["clientip"].as_str().unwrap_or(""));
        doc.add_text(request, value["request"].as_str().unwrap_or(""));
        doc.add_u64(status, value["status"].as_u64().unwrap_or(0));
        doc.add_u64(size, value["size"].as_u64().unwrap_or(0));
        doc.add_bytes(source, line);
        writer.add_document(doc).expect("add");
    }
    writer.commit().expect("commit");
    let elapsed = started.elapsed();
    writer.wait_merging_threads().expect("merge");
    (
        Raw {
            index,
            timestamp,
            request,
            status,
            source,
        },
        elapsed,
    )
}

/// Shoal's storage model in-process (schema, mapping, document conversion) with no HTTP and no
/// translog: separates the cost of the JSON-field schema from the cost of the request path.
fn shoal_storage_ingest(lines: &[Vec<u8>], dir: &Path) -> Duration {
    use shoal::mapping::Mapping;
    use shoal::mapping::document::parse_document;
    use shoal::shard::schema::{DocMeta, ShardSchema, register_tokenizers};
    let schema = ShardSchema::build();
    let index = Index::create_in_dir(dir, schema.schema.clone()).expect("index");
    register_tokenizers(&index);
    let mapping = Mapping::parse(&http_logs::mapping()).expect("mapping");
    let started = Instant::now();
    let mut writer = index
        .writer_with_num_threads::<TantivyDocument>(1, 64 << 20)
        .expect("writer");
    for (seq_no, line) in lines.iter().enumerate() {
        let value: Value = serde_json::from_slice(line).expect("json");
        let parsed = parse_document(&mapping, &value).expect("parse");
        let meta = DocMeta {
            seq_no: seq_no as i64,
            version: 1,
            primary_term: 1,
        };
        writer
            .add_document(schema.document(&seq_no.to_string(), line, meta, parsed))
            .expect("add");
    }
    writer.commit().expect("commit");
    started.elapsed()
}

fn main() {
    let doc_count = env_usize("SHOAL_BENCH_DOCS", 200_000);
    let searches = env_usize("SHOAL_BENCH_SEARCHES", 300);
    let start_seconds = 1_700_000_000;
    let docs = http_logs::generate(42, doc_count, start_seconds);
    let lines: Vec<Vec<u8>> = docs
        .iter()
        .map(|d| serde_json::to_vec(&d.to_json()).expect("json"))
        .collect();
    let raw_json_bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let scratch = tempfile::tempdir().expect("tempdir");
    println!(
        "single-node benchmark: {doc_count} http_logs documents, {:.1} MB raw JSON",
        raw_json_bytes as f64 / 1e6
    );

    // Raw tantivy baseline.
    let raw_dir = scratch.path().join("raw");
    std::fs::create_dir_all(&raw_dir).expect("mkdir");
    let (raw, raw_elapsed) = raw_ingest(&lines, &raw_dir);
    let raw_rate = doc_count as f64 / raw_elapsed.as_secs_f64();

    let storage_dir = scratch.path().join("storage");
    std::fs::create_dir_all(&storage_dir).expect("mkdir");
    let storage_elapsed = shoal_storage_ingest(&lines, &storage_dir);
    let storage_rate = doc_count as f64 / storage_elapsed.as_secs_f64();

    // Shoal over REST: 1 shard, no replicas, fsync per bulk (durability=request, the default).
    let node = Node::start(
        env!("CARGO_BIN_EXE_shoal-node"),
        &scratch.path().join("shoal"),
        &[],
    )
    .expect("node");
    let refresh_interval =
        std::env::var("SHOAL_BENCH_REFRESH").unwrap_or_else(|_| "1s".to_string());
    let created = node.put(
        "/logs",
        &json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": refresh_interval}, "mappings": http_logs::mapping()}),
    );
    assert_eq!(created.status, 200, "{:?}", created.body);
    let bodies: Vec<Vec<u8>> = lines
        .chunks(5000)
        .map(|chunk| {
            let mut body = Vec::new();
            for line in chunk {
                body.extend_from_slice(b"{\"index\":{}}\n");
                body.extend_from_slice(line);
                body.push(b'\n');
            }
            body
        })
        .collect();
    // Several bulk clients keep the node's pipeline (request parsing, then tantivy's indexing
    // thread) busy, as Elasticsearch's Rally does (8 clients by default).
    let clients = env_usize("SHOAL_BENCH_CLIENTS", 2).max(1);
    let queue = std::sync::Mutex::new(bodies);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| {
                loop {
                    let Some(body) = queue.lock().expect("queue").pop() else {
                        break;
                    };
                    let (status, reply) =
                        node.raw_bytes("POST", "/logs/_bulk", body, "application/x-ndjson");
                    // `errors` is the second key of a bulk response: checking it needs no parse.
                    let head = String::from_utf8_lossy(&reply[..reply.len().min(64)]).to_string();
                    assert!(
                        status == 200 && head.contains("\"errors\":false"),
                        "bulk failed: {status} {head}"
                    );
                }
            });
        }
    });
    node.post("/logs/_refresh", &json!({}));
    let shoal_elapsed = started.elapsed();
    let shoal_rate = doc_count as f64 / shoal_elapsed.as_secs_f64();
    node.post("/logs/_flush", &json!({}));
    // As Rally's http_logs track does before its queries; raw tantivy's single commit already
    // left its merges to finish (`wait_merging_threads`).
    let merge_started = Instant::now();
    let merged = node.post("/logs/_forcemerge?max_num_segments=1", &json!({}));
    assert_eq!(merged.status, 200, "{:?}", merged.body);
    let merge_elapsed = merge_started.elapsed();
    let shoal_size: u64 = node.get("/_cat/indices/logs?format=json&bytes=b").body[0]["store.size"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let raw_size = dir_size(&raw_dir);

    println!("\n== ingest (bulk of 5000, {clients} clients, 1 shard, fsync per bulk) ==");
    println!(
        "raw tantivy : {raw_rate:>10.0} docs/s ({:.2} s)",
        raw_elapsed.as_secs_f64()
    );
    println!(
        "shoal schema, in-process, no HTTP/translog: {storage_rate:>10.0} docs/s ({:.2} s)",
        storage_elapsed.as_secs_f64()
    );
    println!(
        "shoal REST  : {shoal_rate:>10.0} docs/s ({:.2} s)",
        shoal_elapsed.as_secs_f64()
    );
    println!(
        "ratio shoal/raw ingest: {:.2}x (goal >= 0.8x)",
        shoal_rate / raw_rate
    );
    println!(
        "shoal _forcemerge to 1 segment after ingest: {:.2} s",
        merge_elapsed.as_secs_f64()
    );
    println!("\n== index size ==");
    println!(
        "raw JSON {:.1} MB | shoal {:.1} MB ({:.0}% of raw) | raw tantivy {:.1} MB ({:.0}%)",
        raw_json_bytes as f64 / 1e6,
        shoal_size as f64 / 1e6,
        shoal_size as f64 * 100.0 / raw_json_bytes as f64,
        raw_size as f64 / 1e6,
        raw_size as f64 * 100.0 / raw_json_bytes as f64
    );

    // Search: the same queries both ways, top 10 with their stored source plus an exact count.
    let window_start = (start_seconds + 3600) * 1000;
    let window_end = (start_seconds + 7200) * 1000;
    let reader = raw.index.reader().expect("reader");
    let searcher = reader.searcher();
    let raw_queries: Vec<(&str, Box<dyn Query>, Value)> = vec![
        (
            "term status=404",
            Box::new(TermQuery::new(
                Term::from_field_u64(raw.status, 404),
                IndexRecordOption::Basic,
            )),
            json!({"query": {"term": {"status": 404}}}),
        ),
        (
            "match request=english",
            Box::new(TermQuery::new(
                Term::from_field_text(raw.request, "english"),
                IndexRecordOption::WithFreqs,
            )),
            json!({"query": {"match": {"request": "english"}}}),
        ),
        (
            "range @timestamp 1h",
            Box::new(RangeQuery::new(
                std::ops::Bound::Included(Term::from_field_i64(raw.timestamp, window_start)),
                std::ops::Bound::Excluded(Term::from_field_i64(raw.timestamp, window_end)),
            )),
            json!({"query": {"range": {"@timestamp": {"gte": window_start, "lt": window_end}}}}),
        ),
        (
            "bool match+filter",
            Box::new(BooleanQuery::new(vec![
                (
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_text(raw.request, "images"),
                        IndexRecordOption::WithFreqs,
                    )) as Box<dyn Query>,
                ),
                (
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_u64(raw.status, 200),
                        IndexRecordOption::Basic,
                    )),
                ),
            ])),
            json!({"query": {"bool": {"must": {"match": {"request": "images"}}, "filter": {"term": {"status": 200}}}}}),
        ),
    ];
    let only = std::env::var("SHOAL_BENCH_QUERY").unwrap_or_default();
    let raw_queries: Vec<_> = raw_queries
        .into_iter()
        .filter(|(name, _, _)| name.contains(only.as_str()))
        .collect();
    println!(
        "\n== search latency ({searches} runs each, top 10 + source + exact count, one keep-alive connection) =="
    );
    let mut client = LeanClient::connect(&node.base_url);
    let mut ratio_product = 1.0;
    for (name, query, body) in &raw_queries {
        let expected = searcher.search(query.as_ref(), &Count).expect("count");
        let mut raw_samples = Vec::with_capacity(searches);
        let mut shoal_samples = Vec::with_capacity(searches);
        let mut body = body.clone();
        body["track_total_hits"] = json!(true);
        let body_bytes = serde_json::to_vec(&body).expect("json");
        for _ in 0..searches {
            let started = Instant::now();
            let (top, count) = searcher
                .search(
                    query.as_ref(),
                    &(TopDocs::with_limit(10).order_by_score(), Count),
                )
                .expect("search");
            for (_, address) in &top {
                let doc: TantivyDocument = searcher.doc(*address).expect("doc");
                std::hint::black_box(doc.get_first(raw.source));
            }
            std::hint::black_box(count);
            raw_samples.push(started.elapsed());

            // Timed until the response bytes are in; checking them is the client's business.
            let started = Instant::now();
            let (status, bytes) = client.request("POST", "/logs/_search", &body_bytes);
            shoal_samples.push(started.elapsed());
            let reply: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            assert_eq!(status, 200, "{name}: {reply}");
            assert_eq!(
                reply["hits"]["total"]["value"].as_u64(),
                Some(expected as u64),
                "{name}: hit counts differ"
            );
        }
        let (raw_p50, raw_p99) = (
            percentile(&mut raw_samples, 0.5),
            percentile(&mut raw_samples, 0.99),
        );
        let (shoal_p50, shoal_p99) = (
            percentile(&mut shoal_samples, 0.5),
            percentile(&mut shoal_samples, 0.99),
        );
        let ratio = shoal_p50.as_secs_f64() / raw_p50.as_secs_f64();
        ratio_product *= ratio;
        println!(
            "{name:<22} hits {expected:>7} | raw p50 {:>8.3} ms p99 {:>8.3} ms | shoal p50 {:>8.3} ms p99 {:>8.3} ms | p50 ratio {ratio:.2}x",
            raw_p50.as_secs_f64() * 1e3,
            raw_p99.as_secs_f64() * 1e3,
            shoal_p50.as_secs_f64() * 1e3,
            shoal_p99.as_secs_f64() * 1e3
        );
    }
    let mut lean_floor: Vec<Duration> = (0..searches)
        .map(|_| {
            let started = Instant::now();
            let (status, _) = client.request("GET", "/", &[]);
            assert_eq!(status, 200);
            started.elapsed()
        })
        .collect();
    let mut reqwest_floor: Vec<Duration> = (0..searches)
        .map(|_| {
            let started = Instant::now();
            let (status, _) = node.raw_bytes("GET", "/", Vec::new(), "application/json");
            assert_eq!(status, 200);
            started.elapsed()
        })
        .collect();
    println!(
        "HTTP floor (GET /): p50 {:.3} ms on this client, {:.3} ms through reqwest's blocking client",
        percentile(&mut lean_floor, 0.5).as_secs_f64() * 1e3,
        percentile(&mut reqwest_floor, 0.5).as_secs_f64() * 1e3
    );
    if !raw_queries.is_empty() {
        let geo_mean = ratio_product.powf(1.0 / raw_queries.len() as f64);
        println!("search p50 ratio shoal/raw (geometric mean): {geo_mean:.2}x (goal <= 1.3x)");
    }
}
