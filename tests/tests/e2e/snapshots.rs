//! Snapshots through the shipped `fs-repository` plugin on a real node: round trip with
//! identical search results, incremental uploads, deletion keeping other snapshots whole,
//! rename and partial restores, registration checks, readonly repositories and corrupted blobs.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use shoal_tests::Node;

use crate::BIN;

fn node_with_path_repo(dir: &Path) -> Node {
    shoal_tests::node_with_path_repo(BIN, dir).expect("node starts")
}

pub(crate) fn index_docs(node: &Node, index: &str, from: u32, to: u32) {
    let mut lines = Vec::new();
    for i in from..to {
        lines.push(json!({"index": {"_index": index, "_id": i.to_string()}}));
        lines.push(json!({"n": i, "tag": format!("t{}", i % 5), "@timestamp": 1_700_000_000_000i64 + i64::from(i) * 1000}));
    }
    let reply = node.bulk("/_bulk?refresh=true", &lines);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["errors"], false, "{:?}", reply.body);
}

pub(crate) fn count(node: &Node, index: &str) -> u64 {
    node.get(&format!("/{index}/_count")).body["count"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Hits (ids in order) and a terms aggregation: what a user would compare after a restore.
pub(crate) fn search_fingerprint(node: &Node, index: &str) -> Value {
    let reply = node.post(
        &format!("/{index}/_search"),
        &json!({"size": 20, "sort": [{"n": "desc"}], "query": {"range": {"n": {"gte": 7}}},
                "aggs": {"tags": {"terms": {"field": "tag.keyword"}}}}),
    );
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        reply.body["_shards"]["failed"], 0,
        "every shard answers: {:?}",
        reply.body
    );
    let ids: Vec<Value> = reply.body["hits"]["hits"]
        .as_array()
        .map(|hits| hits.iter().map(|hit| hit["_id"].clone()).collect())
        .unwrap_or_default();
    json!({"ids": ids, "tags": reply.body["aggregations"]["tags"]["buckets"]})
}

pub(crate) fn snapshot(node: &Node, repo: &str, name: &str, body: Value) -> Value {
    let reply = node.put(
        &format!("/_snapshot/{repo}/{name}?wait_for_completion=true"),
        &body,
    );
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["snapshot"].clone()
}

pub(crate) fn uploaded_bytes(info: &Value) -> u64 {
    info["stats"]["incremental"]["size_in_bytes"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[test]
fn snapshots_are_incremental_and_restore_identical_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = node_with_path_repo(dir.path());
    shoal_tests::register_fs_repository(&node, "backups", "backups");
    assert_eq!(
        node.get("/_snapshot/backups").body["backups"]["type"],
        "fs-repository"
    );

    let created = node.put(
        "/logs",
        &json!({"settings": {"number_of_shards": 2, "number_of_replicas": 0}}),
    );
    assert_eq!(created.status, 200, "{:?}", created.body);
    index_docs(&node, "logs", 0, 300);
    index_docs(&node, "metrics", 0, 50);
    let logs_before = search_fingerprint(&node, "logs");

    let first = snapshot(
        &node,
        "backups",
        "snap-1",
        json!({"indices": "logs,metrics", "metadata": {"taken_by": "test"}}),
    );
    assert_eq!(first["state"], "SUCCESS", "{first:?}");
    assert_eq!(first["shards"]["total"], 3);
    assert_eq!(first["metadata"]["taken_by"], "test");
    assert!(uploaded_bytes(&first) > 0);

    let unchanged = snapshot(&node, "backups", "snap-2", json!({}));
    assert_eq!(
        uploaded_bytes(&unchanged),
        0,
        "nothing changed, nothing uploaded: {unchanged:?}"
    );
    assert!(unchanged["stats"]["total"]["size_in_bytes"].as_u64() > Some(0));

    index_docs(&node, "logs", 300, 400);
    let third = snapshot(&node, "backups", "snap-3", json!({"indices": ["logs"]}));
    let total = third["stats"]["total"]["size_in_bytes"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        uploaded_bytes(&third) > 0 && uploaded_bytes(&third) < total,
        "only new files: {third:?}"
    );

    let status = node.get("/_snapshot/backups/snap-1/_status");
    assert_eq!(status.status, 200, "{:?}", status.body);
    let first_status = &status.body["snapshots"][0];
    assert_eq!(first_status["shards_stats"]["done"], 3);
    assert_eq!(
        first_status["indices"]["logs"]["shards"]["1"]["stage"],
        "DONE"
    );
    assert!(
        first_status["indices"]["logs"]["shards"]["0"]["stats"]["total"]["file_count"].as_u64()
            > Some(0)
    );
    assert_eq!(
        node.get("/_snapshot/backups/_status").body["snapshots"],
        json!([]),
        "nothing running"
    );
    assert_eq!(node.get("/_snapshot/backups/nope/_status").status, 404);

    // Without wait_for_completion the snapshot runs in the background.
    let accepted = node.put("/_snapshot/backups/snap-bg", &json!({"indices": "metrics"}));
    assert_eq!(accepted.body["accepted"], true, "{:?}", accepted.body);
    shoal_tests::wait_for(
        std::time::Duration::from_secs(60),
        "the background snapshot",
        || {
            (node.get("/_snapshot/backups/snap-bg").body["snapshots"][0]["state"] == "SUCCESS")
                .then_some(())
        },
    );
    assert_eq!(node.delete("/_snapshot/backups/snap-bg").status, 200);

    let same_name = node.put(
        "/_snapshot/backups/snap-3?wait_for_completion=true",
        &json!({}),
    );
    assert_eq!(same_name.status, 400);
    assert_eq!(
        same_name.body["error"]["type"],
        "invalid_snapshot_name_exception"
    );

    // Restoring onto an open index is refused; after deleting it, the restore is identical.
    let refused = node.post(
        "/_snapshot/backups/snap-1/_restore",
        &json!({"indices": "logs"}),
    );
    assert_eq!(refused.status, 500, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["type"], "snapshot_restore_exception");
    assert_eq!(node.delete("/logs").status, 200);
    let restored = node.post(
        "/_snapshot/backups/snap-1/_restore",
        &json!({"indices": "logs"}),
    );
    assert_eq!(
        restored.body,
        json!({"accepted": true}),
        "a restore runs in the background by default"
    );
    shoal_tests::wait_for(Duration::from_secs(60), "the background restore", || {
        (count(&node, "logs") == 300).then_some(())
    });
    assert_eq!(search_fingerprint(&node, "logs"), logs_before);
    index_docs(&node, "logs", 1000, 1001);
    assert_eq!(count(&node, "logs"), 301, "a restored index takes writes");

    // Rename restores beside the original; only the chosen index comes back.
    let renamed = node.post(
        "/_snapshot/backups/snap-1/_restore?wait_for_completion=true",
        &json!({"indices": "metrics", "rename_pattern": "(.+)", "rename_replacement": "restored-$1"}),
    );
    assert_eq!(renamed.status, 200, "{:?}", renamed.body);
    assert_eq!(
        renamed.body["snapshot"]["indices"],
        json!(["restored-metrics"])
    );
    assert_eq!(count(&node, "restored-metrics"), 50);
    assert_eq!(count(&node, "metrics"), 50);

    // Deleting the first snapshot keeps the others whole.
    assert_eq!(node.delete("/_snapshot/backups/snap-1").status, 200);
    assert_eq!(node.get("/_snapshot/backups/snap-1").status, 404);
    assert_eq!(node.delete("/logs").status, 200);
    let from_third = node.post(
        "/_snapshot/backups/snap-3/_restore?wait_for_completion=true",
        &json!({"indices": "logs"}),
    );
    assert_eq!(from_third.status, 200, "{:?}", from_third.body);
    assert_eq!(count(&node, "logs"), 400);

    let listed = node.get("/_snapshot/backups/_all");
    let names: Vec<&str> = listed.body["snapshots"]
        .as_array()
        .map(|list| list.iter().filter_map(|s| s["snapshot"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["snap-2", "snap-3"]);
    let cat = node.get("/_cat/snapshots/backups?format=json");
    assert_eq!(cat.body.as_array().map(Vec::len), Some(2), "{:?}", cat.body);
    // Uploads cut short by a crash leave temporary files: `_cleanup` removes those nobody
    // has written for an hour, and leaves a fresh one (an upload may be running) alone.
    let blobs = dir.path().join("repos/backups/blobs");
    let abandoned = blobs.join("ab/cd.1700000000000-1-1.part");
    let fresh = blobs.join("ab/ef.1700000000000-1-2.part");
    std::fs::create_dir_all(blobs.join("ab")).expect("blob dir");
    for temp in [&abandoned, &fresh] {
        std::fs::write(temp, b"half an upload").expect("temp file");
    }
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&abandoned)
        .and_then(|file| file.set_modified(two_hours_ago))
        .expect("age the temp file");
    let cleanup = node.post("/_snapshot/backups/_cleanup", &json!({}));
    assert_eq!(
        cleanup.body["results"]["deleted_blobs"], 0,
        "delete already removed unreferenced blobs"
    );
    assert!(
        !abandoned.exists(),
        "the abandoned upload's file is removed"
    );
    assert!(
        fresh.exists(),
        "a recent temporary file may be a running upload"
    );
    assert_eq!(
        node.get("/_plugins/fs-repository").body["metrics"]["counters"]["abandoned_uploads_removed"],
        1
    );

    // The registration is cluster state: it survives a restart.
    node.restart().expect("restart");
    assert_eq!(node.get("/_snapshot/backups").status, 200);
    assert_eq!(node.get("/_snapshot/backups/snap-3").status, 200);
}

#[test]
fn repositories_are_checked_and_readonly_ones_cannot_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_with_path_repo(dir.path());
    let outside = dir.path().join("not-allowed");
    let refused = node.put(
        "/_snapshot/escape",
        &json!({"type": "fs", "settings": {"location": outside.to_str().expect("utf8")}}),
    );
    assert_eq!(refused.status, 500, "{:?}", refused.body);
    assert!(
        refused.body["error"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("path_repo"),
        "{:?}",
        refused.body
    );
    assert!(!outside.exists(), "nothing is created outside path_repo");
    assert_eq!(node.get("/_snapshot/escape").status, 404);
    let unknown = node.put(
        "/_snapshot/x",
        &json!({"type": "nfs", "settings": {"location": "x"}}),
    );
    assert_eq!(unknown.status, 500);
    assert!(
        unknown.body["error"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("nfs")
    );
    let policy = node.put("/_snapshot/x", &json!({"type": "time-series-pruning"}));
    assert!(
        policy.body["error"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not a repository"),
        "{:?}",
        policy.body
    );
    assert_eq!(
        node.put("/_snapshot/x", &json!({"settings": {}})).status,
        400
    );

    // One cluster writes; a readonly registration of the same place can list and restore only.
    index_docs(&node, "docs", 0, 20);
    shoal_tests::register_fs_repository(&node, "main", "shared");
    snapshot(&node, "main", "s1", json!({"indices": "docs"}));
    let ro = node.put(
        "/_snapshot/mirror",
        &json!({"type": "fs", "settings": {"location": "shared", "readonly": true}}),
    );
    assert_eq!(ro.status, 200, "{:?}", ro.body);
    assert_eq!(
        node.get("/_snapshot/mirror").body["mirror"]["settings"]["readonly"],
        "true"
    );
    let write = node.put("/_snapshot/mirror/s2?wait_for_completion=true", &json!({}));
    assert_eq!(write.status, 500);
    assert!(
        write.body["error"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("readonly")
    );
    assert_eq!(node.delete("/_snapshot/mirror/s1").status, 500);
    let restored = node.post(
        "/_snapshot/mirror/s1/_restore?wait_for_completion=true",
        &json!({"indices": "docs", "rename_pattern": "docs", "rename_replacement": "docs-copy"}),
    );
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    assert_eq!(count(&node, "docs-copy"), 20);
    assert_eq!(
        node.post("/_snapshot/mirror/nope/_restore", &json!({}))
            .status,
        404
    );
    assert_eq!(node.delete("/_snapshot/mirror").status, 200);
    assert_eq!(node.get("/_snapshot/mirror").status, 404);
}

#[test]
fn a_corrupted_blob_is_named_at_restore_and_nothing_is_half_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_with_path_repo(dir.path());
    index_docs(&node, "docs", 0, 100);
    shoal_tests::register_fs_repository(&node, "r", "r");
    snapshot(&node, "r", "s1", json!({}));
    let blobs = dir.path().join("repos/r/blobs");
    let mut corrupted = None;
    for entry in std::fs::read_dir(&blobs).expect("blobs dir") {
        let path = entry.expect("entry").path();
        let mut bytes = std::fs::read(&path).expect("blob");
        if bytes.len() > 16 {
            bytes[8] ^= 0xff;
            std::fs::write(&path, bytes).expect("corrupt");
            corrupted = path.file_name().map(|n| n.to_string_lossy().to_string());
            break;
        }
    }
    let corrupted = corrupted.expect("a blob to corrupt");
    let rename = json!({"rename_pattern": "docs", "rename_replacement": "docs-restored"});
    let reply = node.post("/_snapshot/r/s1/_restore?wait_for_completion=true", &rename);
    assert_eq!(reply.status, 500, "{:?}", reply.body);
    let reason = reply.body["error"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("corrupted") && reason.contains(&corrupted),
        "{reason}"
    );
    assert_eq!(
        node.get("/docs-restored").status,
        404,
        "nothing half-restored"
    );

    let rows = node.get("/_cat/recovery/docs-restored?format=json").body;
    assert_eq!(
        rows[0]["stage"], "failed",
        "the shard's failure is listed: {rows}"
    );

    // In the background (the default) the shard fails the same way, with the same reason.
    let accepted = node.post("/_snapshot/r/s1/_restore", &rename);
    assert_eq!(
        accepted.body,
        json!({"accepted": true}),
        "{:?}",
        accepted.body
    );
    let failed = shoal_tests::wait_for(Duration::from_secs(60), "the failed shard", || {
        let listed = node.get("/docs-restored/_recovery").body;
        let shards = listed["docs-restored"]["shards"].as_array()?.clone();
        let failed: Vec<Value> = shards
            .into_iter()
            .filter(|shard| shard["stage"] == "FAILED")
            .collect();
        (failed.len() == 2).then(|| failed[1].clone())
    });
    let reason = failed["failure"].as_str().unwrap_or_default();
    assert!(
        reason.contains("corrupted") && reason.contains(&corrupted),
        "{failed}"
    );
    assert_eq!(node.get("/docs-restored").status, 404);
    assert_eq!(count(&node, "docs"), 100, "the original index is untouched");
}

#[test]
fn a_repository_that_dies_mid_snapshot_fails_it_cleanly_and_the_next_one_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_with_path_repo(dir.path());
    let uploaded = node.raw(
        "PUT",
        "/_plugins/flaky?kind=repository&version=0.1.0",
        Some(shoal_tests::test_plugin("test-repository-flaky")),
        "application/wasm",
    );
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.body);
    let trap = |on: bool| {
        let reply = node.put("/_plugins/flaky/_config", &json!({"trap_on_chunk": on}));
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    };
    trap(true);
    assert_eq!(
        node.put(
            "/_snapshot/f",
            &json!({"type": "flaky", "settings": {"location": "f"}})
        )
        .status,
        200
    );
    index_docs(&node, "docs", 0, 200);

    let failed = snapshot(&node, "f", "s1", json!({"indices": "docs"}));
    assert_eq!(failed["state"], "FAILED", "{failed:?}");
    let reason = failed["failures"].to_string();
    assert!(
        reason.contains("flaky") && reason.contains("trapped"),
        "the reason names the plugin: {reason}"
    );
    assert_eq!(count(&node, "docs"), 200, "the index is untouched");
    index_docs(&node, "docs", 200, 210);

    let partial = snapshot(
        &node,
        "f",
        "s2",
        json!({"indices": "docs", "partial": true}),
    );
    assert_eq!(partial["state"], "PARTIAL", "{partial:?}");
    let refused = node.post(
        "/_snapshot/f/s2/_restore",
        &json!({"rename_pattern": "docs", "rename_replacement": "docs-partial"}),
    );
    assert_eq!(
        refused.status, 500,
        "a partial snapshot restores only when asked: {:?}",
        refused.body
    );

    trap(false);
    let ok = snapshot(&node, "f", "s3", json!({"indices": "docs"}));
    assert_eq!(ok["state"], "SUCCESS", "{ok:?}");
    let restored = node.post(
        "/_snapshot/f/s3/_restore?wait_for_completion=true",
        &json!({"rename_pattern": "docs", "rename_replacement": "docs-copy"}),
    );
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    assert_eq!(count(&node, "docs-copy"), 210);
    let stats = node.get("/_plugins/flaky").body["stats"].clone();
    assert!(stats["traps"].as_u64() >= Some(1), "{stats:?}");
}

#[test]
fn a_second_cluster_can_only_register_a_repository_readonly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).expect("repos");
    let path_repo = repos.to_str().expect("utf8");
    let first = Node::start(BIN, &dir.path().join("a"), &["--path-repo", path_repo])
        .expect("first cluster");
    let second = Node::start(BIN, &dir.path().join("b"), &["--path-repo", path_repo])
        .expect("second cluster");
    let body = json!({"type": "fs", "settings": {"location": "shared"}});
    assert_eq!(first.put("/_snapshot/shared", &body).status, 200);
    index_docs(&first, "docs", 0, 10);
    snapshot(&first, "shared", "s1", json!({}));

    let refused = second.put("/_snapshot/shared", &body);
    assert_eq!(refused.status, 500, "{:?}", refused.body);
    let reason = refused.body["error"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("another cluster") && reason.contains("readonly"),
        "{reason}"
    );
    let readonly = json!({"type": "fs", "settings": {"location": "shared", "readonly": true}});
    assert_eq!(second.put("/_snapshot/shared", &readonly).status, 200);
    let restored = second.post(
        "/_snapshot/shared/s1/_restore?wait_for_completion=true",
        &json!({}),
    );
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    assert_eq!(count(&second, "docs"), 10);
    // The first cluster keeps writing as before.
    snapshot(&first, "shared", "s2", json!({}));
}

fn index_setting(node: &Node, index: &str, key: &str) -> Value {
    node.get(&format!("/{index}/_settings")).body[index]["settings"]["index"][key].clone()
}

#[test]
fn restores_override_index_settings_and_bring_back_the_global_state_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_with_path_repo(dir.path());
    shoal_tests::register_fs_repository(&node, "r", "r");
    let created = node.put(
        "/logs",
        &json!({"settings": {"number_of_replicas": 0, "refresh_interval": "2s", "max_result_window": 50}}),
    );
    assert_eq!(created.status, 200, "{:?}", created.body);
    index_docs(&node, "logs", 0, 20);
    let awareness = "cluster.routing.allocation.awareness.attributes";
    let set = node.put(
        "/_cluster/settings",
        &json!({"persistent": {awareness: "zone"}}),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    let policy = json!({"schedule": "0 0 1 * * ?", "name": "<nightly-{now/d}>",
                        "repository": "r", "config": {"indices": ["logs"]}});
    assert_eq!(node.put("/_slm/policy/nightly", &policy).status, 200);

    let with_state = snapshot(&node, "r", "with-state", json!({"indices": "logs"}));
    assert_eq!(with_state["include_global_state"], true, "{with_state:?}");
    let without = snapshot(
        &node,
        "r",
        "without-state",
        json!({"indices": "logs", "include_global_state": false}),
    );
    assert_eq!(without["include_global_state"], false);

    // The cluster changes after the snapshot.
    assert_eq!(
        node.put(
            "/_cluster/settings",
            &json!({"persistent": {awareness: null}})
        )
        .status,
        200
    );
    assert_eq!(node.delete("/_slm/policy/nightly").status, 200);

    // Static or unknown settings cannot be changed on restore, and a snapshot without global
    // state cannot give it back: nothing is restored then.
    let shards = node.post(
        "/_snapshot/r/with-state/_restore",
        &json!({"indices": "logs", "rename_pattern": "logs", "rename_replacement": "x",
                "index_settings": {"index.number_of_shards": 3}}),
    );
    assert_eq!(shards.status, 500, "{:?}", shards.body);
    let unknown = node.post(
        "/_snapshot/r/with-state/_restore",
        &json!({"indices": "logs", "rename_pattern": "logs", "rename_replacement": "x",
                "ignore_index_settings": ["index.no_such_setting"]}),
    );
    assert_eq!(unknown.status, 500, "{:?}", unknown.body);
    let no_state = node.post(
        "/_snapshot/r/without-state/_restore",
        &json!({"indices": "logs", "rename_pattern": "logs", "rename_replacement": "x",
                "include_global_state": true}),
    );
    assert_eq!(no_state.status, 500, "{:?}", no_state.body);
    assert_eq!(node.get("/x").status, 404, "nothing was restored");

    // By default a restore leaves the global state alone.
    let plain = node.post(
        "/_snapshot/r/with-state/_restore?wait_for_completion=true",
        &json!({"indices": "logs", "rename_pattern": "logs", "rename_replacement": "plain"}),
    );
    assert_eq!(plain.status, 200, "{:?}", plain.body);
    assert_eq!(node.get("/_slm/policy/nightly").status, 404);
    assert_eq!(index_setting(&node, "plain", "refresh_interval"), "2s");

    let restored = node.post(
        "/_snapshot/r/with-state/_restore?wait_for_completion=true",
        &json!({"indices": "logs", "rename_pattern": "logs", "rename_replacement": "tuned",
                "include_global_state": true,
                "index_settings": {"index": {"refresh_interval": "5s"}},
                "ignore_index_settings": "index.max_result_window"}),
    );
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    assert_eq!(count(&node, "tuned"), 20);
    assert_eq!(index_setting(&node, "tuned", "refresh_interval"), "5s");
    assert_eq!(index_setting(&node, "tuned", "max_result_window"), "10000");
    assert_eq!(index_setting(&node, "tuned", "number_of_replicas"), "0");
    assert_eq!(
        node.get("/_slm/policy/nightly").status,
        200,
        "the policy is back"
    );
    let settings = node.get("/_cluster/settings?flat_settings=true");
    assert_eq!(
        settings.body["persistent"][awareness], "zone",
        "{:?}",
        settings.body
    );
}
