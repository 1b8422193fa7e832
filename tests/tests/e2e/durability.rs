//! Durability: `kill -9` at a random moment loses no acknowledged write; a torn translog tail
//! is cut and reported; SIGTERM flushes and exits 0.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use shoal_tests::Node;
use shoal_tests::http_logs::Rng;

use crate::fresh_node;

fn translog_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(translog_files(&path));
        } else if path.extension().is_some_and(|e| e == "tlog") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Streams bulk writes until the node dies; returns every acknowledged (id, seq_no).
fn stream_writes(base_url: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<(String, i64)>>>) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut batch = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut body = String::new();
        for i in 0..25 {
            body.push_str(&format!("{{\"index\":{{\"_id\":\"b{batch}-{i}\"}}}}\n{{\"batch\":{batch},\"i\":{i},\"text\":\"payload {batch} {i}\"}}\n"));
        }
        batch += 1;
        let Ok(response) = client
            .post(format!("{base_url}/crash/_bulk"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
        else {
            return;
        };
        let Ok(reply) = response.json::<serde_json::Value>() else {
            return;
        };
        for item in reply["items"].as_array().into_iter().flatten() {
            let result = &item["index"];
            if (result["status"].as_u64() == Some(201) || result["status"].as_u64() == Some(200))
                && let (Some(id), Some(seq_no)) =
                    (result["_id"].as_str(), result["_seq_no"].as_i64())
            {
                acked.lock().expect("lock").push((id.to_string(), seq_no));
            }
        }
    }
}

fn crash_and_check(seed: u64) {
    let (_dir, mut node) = fresh_node(&[]);
    node.put(
        "/crash",
        &json!({"settings": {"number_of_shards": 2, "refresh_interval": "300ms"}}),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (url, stop, acked) = (node.base_url.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || stream_writes(url, stop, acked))
    };
    let mut rng = Rng::new(seed);
    std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
    node.kill();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    node.restart().expect("restart after kill -9");
    let acked = acked.lock().expect("lock").clone();
    assert!(
        !acked.is_empty(),
        "seed {seed}: the writer got no acknowledgement before the kill"
    );
    for chunk in acked.chunks(200) {
        let docs: Vec<_> = chunk
            .iter()
            .map(|(id, _)| json!({"_index": "crash", "_id": id}))
            .collect();
        let reply = node.post("/_mget", &json!({ "docs": docs }));
        for ((id, seq_no), doc) in chunk
            .iter()
            .zip(reply.body["docs"].as_array().expect("docs"))
        {
            assert_eq!(
                doc["found"], true,
                "seed {seed}: acknowledged document {id} was lost"
            );
            assert_eq!(
                doc["_seq_no"].as_i64(),
                Some(*seq_no),
                "seed {seed}: {id} has another seq_no"
            );
        }
    }
    // New writes continue after recovery without reusing sequence numbers.
    let after = node.put("/crash/_doc/after-restart", &json!({"ok": true}));
    assert_eq!(after.status, 201);
    let max_acked = acked.iter().map(|(_, s)| *s).max().unwrap_or(-1);
    let _ = max_acked; // per-shard sequences: checked through the GETs above.
    node.post("/crash/_refresh", &json!({}));
    let count = node.post("/crash/_count", &json!({})).body["count"]
        .as_u64()
        .expect("count");
    assert!(
        count > acked.len() as u64,
        "seed {seed}: {count} documents, {} acknowledged",
        acked.len()
    );
}

#[test]
fn kill_minus_nine_loses_no_acknowledged_write() {
    for seed in [1, 2, 3] {
        crash_and_check(seed);
    }
}

#[test]
fn torn_translog_tail_is_cut_and_reported() {
    let (dir, mut node) = fresh_node(&[]);
    node.put("/t", &json!({"settings": {"refresh_interval": "-1"}}));
    for i in 0..20 {
        assert_eq!(
            node.put(&format!("/t/_doc/{i}"), &json!({"i": i})).status,
            201
        );
    }
    node.kill();
    let files = translog_files(dir.path());
    let last = files.last().expect("a translog file");
    let mut bytes = std::fs::read(last).expect("read translog");
    // Half a frame: a length that promises more bytes than exist, as a torn write leaves.
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5]);
    std::fs::write(last, &bytes).expect("write translog");
    node.restart().expect("node starts despite the torn tail");
    assert!(
        node.logs_soon("translog tail is torn or corrupt"),
        "the cut is reported in the log"
    );
    for i in 0..20 {
        assert_eq!(
            node.get(&format!("/t/_doc/{i}")).body["found"],
            true,
            "doc {i}"
        );
    }
    node.post("/t/_refresh", &json!({}));
    assert_eq!(node.post("/t/_count", &json!({})).body["count"], 20);

    // A flipped byte inside the last frame: that frame fails its checksum and is cut too.
    assert_eq!(node.put("/t/_doc/extra", &json!({"i": 99})).status, 201);
    node.kill();
    let files = translog_files(dir.path());
    let last = files.last().expect("a translog file");
    let mut bytes = std::fs::read(last).expect("read translog");
    let len = bytes.len();
    bytes[len - 2] ^= 0x5a;
    std::fs::write(last, &bytes).expect("write translog");
    node.restart().expect("node starts despite a corrupt frame");
    assert_eq!(node.get("/t/_doc/19").body["found"], true);
    assert_eq!(
        node.get("/t/_doc/extra").body["found"],
        false,
        "the corrupt frame is never replayed as data"
    );
}

#[test]
fn sigterm_flushes_and_exits_cleanly() {
    let (_dir, mut node) = fresh_node(&[]);
    node.put("/s", &json!({"settings": {"refresh_interval": "-1"}}));
    node.put("/s/_doc/1", &json!({"v": 1}));
    assert_eq!(node.terminate().expect("terminate"), Some(0));
    node.restart().expect("restart");
    assert_eq!(node.get("/s/_doc/1").body["_source"], json!({"v": 1}));
    assert!(
        !node.log_contains("recovered shard from translog"),
        "a clean shutdown leaves nothing to replay"
    );
    let stats = node.get("/_nodes/stats");
    let translog_ops = stats.body["nodes"]
        .as_object()
        .and_then(|n| n.values().next())
        .map(|n| n["indices"]["translog"]["operations"].clone());
    assert_eq!(translog_ops, Some(json!(0)));
}

#[test]
fn a_second_node_cannot_share_a_data_directory() {
    let (dir, _node) = fresh_node(&[]);
    let second = Node::start(crate::BIN, &dir.path().join("data"), &[]);
    assert!(second.is_err(), "the data directory is locked");
}
