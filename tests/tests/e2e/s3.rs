//! Snapshots to a real S3-compatible server (s3s-fs checking SigV4 signatures, in its own
//! process) through the shipped `s3-repository` plugin: round trip, incremental and multipart
//! uploads, credentials kept out of the cluster state, wrong credentials, an endpoint that is
//! down, and the server dying in the middle of a snapshot.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use shoal_tests::s3::S3Server;
use shoal_tests::{Node, wait_for};

use crate::BIN;
use crate::snapshots::{count, index_docs, search_fingerprint, snapshot, uploaded_bytes};

const S3_BIN: &str = env!("CARGO_BIN_EXE_s3-server");
const BUCKET: &str = "shoal-snapshots";

fn server(dir: &Path) -> S3Server {
    let server = S3Server::start(S3_BIN, &dir.join("s3")).expect("the S3 server starts");
    server.create_bucket(BUCKET).expect("bucket");
    server
}

fn node_with_credentials(dir: &Path, envs: &[(&str, &str)]) -> Node {
    Node::start_with_env(BIN, &dir.join("data"), &[], envs).expect("node starts")
}

fn register(node: &Node, name: &str, settings: Value) -> shoal_tests::Reply {
    node.put(
        &format!("/_snapshot/{name}"),
        &json!({"type": "s3", "settings": settings}),
    )
}

/// Documents of about a kilobyte of incompressible text each, so that `count` of them make a
/// segment file larger than one multipart part.
fn index_bulky_docs(node: &Node, index: &str, count: u32) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for batch in (0..count).collect::<Vec<_>>().chunks(2000) {
        let mut lines = Vec::new();
        for &i in batch {
            let text: String = (0..1000)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
                .collect();
            lines.push(json!({"index": {"_index": index, "_id": i.to_string()}}));
            lines.push(json!({"n": i, "tag": format!("t{}", i % 5), "text": text}));
        }
        let reply = node.bulk("/_bulk", &lines);
        assert_eq!(reply.body["errors"], false, "{:?}", reply.body);
    }
    assert_eq!(
        node.post(&format!("/{index}/_refresh"), &json!({})).status,
        200
    );
}

fn plugin_counter(node: &Node, name: &str) -> u64 {
    node.get("/_plugins/s3-repository").body["metrics"]["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn s3_snapshots_round_trip_incrementally_with_multipart_uploads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let node = node_with_credentials(dir.path(), &S3Server::credentials_env());

    // Credentials never go into the repository's settings (the cluster state).
    let refused = register(
        &node,
        "leaky",
        json!({"bucket": BUCKET, "endpoint": server.endpoint(), "secret_key": "x"}),
    );
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    let reason = refused.body["error"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("secure settings") && reason.contains("SHOAL_S3_CLIENT_"),
        "{reason}"
    );
    assert_eq!(node.get("/_snapshot/leaky").status, 404);

    let settings = json!({"bucket": BUCKET, "endpoint": server.endpoint(),
                          "base_path": "cluster-a", "buffer_size": "5mb"});
    let registered = register(&node, "s3", settings);
    assert_eq!(registered.status, 200, "{:?}", registered.body);
    let described = node.get("/_snapshot/s3");
    assert_eq!(described.body["s3"]["type"], "s3-repository");
    for visible in [
        described.body.to_string(),
        node.get("/_cluster/state").body.to_string(),
    ] {
        assert!(
            !visible.contains(shoal_tests::s3::SECRET_KEY)
                && !visible.contains(shoal_tests::s3::ACCESS_KEY),
            "credentials leaked: {visible}"
        );
    }

    let created = node.put(
        "/bulky",
        &json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}}),
    );
    assert_eq!(created.status, 200, "{:?}", created.body);
    index_bulky_docs(&node, "bulky", 9000);
    index_docs(&node, "small", 0, 200);
    // One segment, so one file is larger than a part whatever the refreshes cut.
    let merged = node.post("/bulky/_forcemerge?max_num_segments=1", &json!({}));
    assert_eq!(merged.status, 200, "{:?}", merged.body);
    assert_eq!(node.post("/bulky,small/_flush", &json!({})).status, 200);
    let bulky_before = search_fingerprint(&node, "bulky");
    let small_before = search_fingerprint(&node, "small");

    let first = snapshot(&node, "s3", "snap-1", json!({"indices": "bulky,small"}));
    assert_eq!(first["state"], "SUCCESS", "{first:?}");
    assert!(uploaded_bytes(&first) > 5 << 20, "{first:?}");
    assert!(
        plugin_counter(&node, "multipart_uploads") >= 1,
        "a segment file above buffer_size goes up in parts"
    );
    assert!(
        server
            .object_path(BUCKET, "cluster-a/snapshots/snap-1.json")
            .is_file(),
        "objects live under base_path in the bucket"
    );

    let unchanged = snapshot(&node, "s3", "snap-2", json!({"indices": "bulky,small"}));
    assert_eq!(unchanged["state"], "SUCCESS");
    assert_eq!(uploaded_bytes(&unchanged), 0, "{unchanged:?}");

    // Restore both after deleting them: identical documents, hits and aggregations.
    assert_eq!(node.delete("/bulky,small").status, 200);
    let restored = node.post(
        "/_snapshot/s3/snap-1/_restore?wait_for_completion=true",
        &json!({}),
    );
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    assert_eq!(count(&node, "bulky"), 9000);
    assert_eq!(count(&node, "small"), 200);
    assert_eq!(search_fingerprint(&node, "bulky"), bulky_before);
    assert_eq!(search_fingerprint(&node, "small"), small_before);

    // Deleting the first snapshot keeps the second whole; one index restores under a new name,
    // its progress visible while the server answers slowly.
    assert_eq!(node.delete("/_snapshot/s3/snap-1").status, 200);
    server.slow_reads();
    let rename =
        json!({"indices": "bulky", "rename_pattern": "(.+)", "rename_replacement": "copy-$1"});
    let accepted = node.post("/_snapshot/s3/snap-2/_restore", &rename);
    assert_eq!(
        accepted.body,
        json!({"accepted": true}),
        "{:?}",
        accepted.body
    );
    let in_flight = wait_for(Duration::from_secs(60), "the restore in flight", || {
        node.get("/_cat/recovery?format=json&active_only=true")
            .body
            .as_array()
            .and_then(|rows| {
                rows.iter()
                    .find(|row| row["index"] == "copy-bulky")
                    .cloned()
            })
    });
    let json = node.get("/copy-*/_recovery?active_only=true").body;
    // A second restore into a name being restored is refused at once.
    let twice = node.post("/_snapshot/s3/snap-2/_restore", &rename);
    server.fast_reads();
    assert_eq!(twice.status, 500, "{:?}", twice.body);
    let reason = twice.body["error"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("being restored"), "{reason}");
    assert_eq!(in_flight["type"], "snapshot", "{in_flight}");
    assert_eq!(in_flight["stage"], "index", "{in_flight}");
    assert_eq!(in_flight["repository"], "s3", "{in_flight}");
    assert_eq!(in_flight["snapshot"], "snap-2", "{in_flight}");
    let number = |row: &Value, key: &str| row[key].as_str().and_then(|n| n.parse::<u64>().ok());
    let total = number(&in_flight, "bytes").unwrap_or_default();
    assert!(total > 5 << 20, "the whole shard is planned: {in_flight}");
    assert!(
        number(&in_flight, "bytes_recovered") < Some(total),
        "not all copied yet: {in_flight}"
    );
    let shard = &json["copy-bulky"]["shards"][0];
    assert_eq!(shard["stage"], "INDEX", "{json}");
    assert_eq!(shard["type"], "SNAPSHOT", "{json}");
    assert_eq!(shard["source"]["snapshot"], "snap-2", "{json}");
    assert_eq!(shard["index"]["size"]["total_in_bytes"], total, "{json}");
    let done = wait_for(Duration::from_secs(60), "the restore to finish", || {
        let rows = node.get("/_cat/recovery/copy-bulky?format=json").body;
        Some(rows[0].clone()).filter(|row| row["stage"] == "done")
    });
    let done = &done;
    assert_eq!(done["stage"], "done", "{done}");
    assert_eq!(number(done, "bytes_recovered"), Some(total), "{done}");
    assert_eq!(done["files_recovered"], done["files"], "{done}");
    assert_eq!(done["bytes_percent"], "100.0%", "{done}");
    assert_eq!(
        node.get("/_cat/recovery?format=json&active_only=true").body,
        json!([]),
        "nothing left in flight"
    );
    // The index is registered once every shard is down.
    wait_for(Duration::from_secs(60), "the restored index", || {
        (count(&node, "copy-bulky") == 9000).then_some(())
    });
    assert_eq!(search_fingerprint(&node, "copy-bulky"), bulky_before);
    let listed = node.get("/_cat/snapshots/s3?format=json");
    assert_eq!(
        listed.body.as_array().map(Vec::len),
        Some(1),
        "{:?}",
        listed.body
    );
}

#[test]
fn s3_refuses_wrong_credentials_and_reports_an_endpoint_that_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let wrong = [
        (
            "SHOAL_S3_CLIENT_DEFAULT_ACCESS_KEY",
            shoal_tests::s3::ACCESS_KEY,
        ),
        ("SHOAL_S3_CLIENT_DEFAULT_SECRET_KEY", "not-the-secret"),
    ];
    let node = node_with_credentials(dir.path(), &wrong);
    let refused = register(
        &node,
        "s3",
        json!({"bucket": BUCKET, "endpoint": server.endpoint()}),
    );
    assert_ne!(refused.status, 200, "{:?}", refused.body);
    let reason = refused.body["error"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("[s3-repository]") && reason.contains("access denied"),
        "the signature is checked and the plugin named: {reason}"
    );
    assert_eq!(node.get("/_snapshot/s3").status, 404, "nothing registered");

    // A missing bucket and an endpoint nobody listens on are clear errors too.
    let missing = register(
        &node,
        "nobucket",
        json!({"bucket": "no-such-bucket", "endpoint": server.endpoint()}),
    );
    assert_ne!(missing.status, 200);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let dead_endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let down = register(
        &node,
        "down",
        json!({"bucket": BUCKET, "endpoint": dead_endpoint, "max_retries": 1}),
    );
    let reason = down.body["error"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("unavailable") && reason.contains("after 2 attempts"),
        "{reason}"
    );
    let invalid = register(
        &node,
        "bad",
        json!({"bucket": BUCKET, "endpoint": "ftp://x"}),
    );
    assert_eq!(invalid.status, 500, "{:?}", invalid.body);
    assert!(
        invalid.body["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("endpoint")),
        "{:?}",
        invalid.body
    );
}

#[test]
fn an_s3_server_dying_mid_snapshot_fails_it_cleanly_and_the_next_one_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = server(dir.path());
    let node = node_with_credentials(dir.path(), &S3Server::credentials_env());
    let registered = register(
        &node,
        "s3",
        json!({"bucket": BUCKET, "endpoint": server.endpoint(), "max_retries": 1}),
    );
    assert_eq!(registered.status, 200, "{:?}", registered.body);
    index_docs(&node, "logs", 0, 500);
    let before = search_fingerprint(&node, "logs");

    // The server hangs with the snapshot's requests in flight, then dies.
    server.pause();
    let accepted = node.put("/_snapshot/s3/doomed", &json!({"indices": "logs"}));
    assert_eq!(accepted.body["accepted"], true, "{:?}", accepted.body);
    shoal_tests::wait_for(Duration::from_secs(30), "the snapshot to run", || {
        let running = node.get("/_snapshot/s3/_status");
        (running.body["snapshots"][0]["snapshot"] == "doomed").then_some(())
    });
    server.kill();
    shoal_tests::wait_for(Duration::from_secs(60), "the snapshot to end", || {
        let running = node.get("/_snapshot/s3/_status");
        (running.status == 200 && running.body["snapshots"] == json!([])).then_some(())
    });

    // The index is untouched and takes writes; the failure and its reason stay visible.
    assert_eq!(count(&node, "logs"), 500);
    assert_eq!(search_fingerprint(&node, "logs"), before);
    index_docs(&node, "logs", 500, 510);
    server.restart().expect("the S3 server restarts");
    let doomed = node.get("/_snapshot/s3/doomed");
    assert_eq!(doomed.status, 200, "{:?}", doomed.body);
    let failed = &doomed.body["snapshots"][0];
    assert_eq!(failed["state"], "FAILED", "{failed:?}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("[s3-repository]") && reason.contains("unavailable"),
        "{reason}"
    );

    let next = snapshot(&node, "s3", "after", json!({"indices": "logs"}));
    assert_eq!(next["state"], "SUCCESS", "{next:?}");
    assert_eq!(node.delete("/logs").status, 200);
    let restored = node.post(
        "/_snapshot/s3/after/_restore?wait_for_completion=true",
        &json!({}),
    );
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    assert_eq!(count(&node, "logs"), 510);
}
