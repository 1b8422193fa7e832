//! Snapshots in a three-node cluster: every primary's node uploads its own shards to the
//! shared repository, whichever node coordinates; a restore places primaries as for a new
//! index, each downloaded by its own node, and the index comes back green with its replicas.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use shoal_tests::{Cluster, Node, wait_for};

use crate::BIN;
use crate::snapshots::{count, index_docs, search_fingerprint, snapshot};

fn wait_for_green(node: &Node) {
    wait_for(Duration::from_secs(120), "health green", || {
        let health = node.get("/_cluster/health?wait_for_status=green&timeout=5s");
        (health.status == 200 && health.body["status"] == "green").then_some(())
    });
}

fn primary_nodes(node: &Node, index: &str) -> BTreeSet<String> {
    node.get(&format!("/_cat/shards/{index}?format=json"))
        .body
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["prirep"] == "p" && row["state"] == "STARTED")
        .filter_map(|row| row["node"].as_str().map(str::to_string))
        .collect()
}

fn plugin_calls(node: &Node) -> u64 {
    node.get("/_plugins/fs-repository").body["stats"]["calls"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn each_primary_node_snapshots_its_shards_and_a_restore_comes_back_green() {
    let mut cluster = Cluster::start(BIN, &[]).expect("cluster root");
    // One directory shared by every node, as an NFS mount would be.
    let repos = cluster.root.path().join("shared-repos");
    std::fs::create_dir_all(&repos).expect("repos");
    let repos = repos.display().to_string();
    for zone in ["a", "b", "c"] {
        cluster
            .add_node(zone, &["--path-repo", &repos])
            .expect("node starts");
    }
    cluster.wait_for_view(&[0, 1, 2], &["node-0", "node-1", "node-2"]);
    let first = &cluster.nodes[0];
    let created = first.put(
        "/logs",
        &json!({"settings": {"number_of_shards": 3, "number_of_replicas": 1}}),
    );
    assert_eq!(created.status, 200, "{:?}", created.body);
    wait_for_green(first);
    index_docs(first, "logs", 0, 600);
    let before = search_fingerprint(first, "logs");
    let primaries = primary_nodes(first, "logs");
    assert!(primaries.len() >= 2, "primaries spread: {primaries:?}");

    shoal_tests::register_fs_repository(first, "shared", "shared");
    let calls_before: Vec<u64> = cluster.nodes.iter().map(plugin_calls).collect();
    // A node coordinates; the shards come from wherever their primaries are.
    let coordinator = &cluster.nodes[1];
    let taken = snapshot(coordinator, "shared", "snap-1", json!({"indices": "logs"}));
    assert_eq!(taken["state"], "SUCCESS", "{taken:?}");
    assert_eq!(taken["shards"]["successful"], 3, "{taken:?}");
    for (position, node) in cluster.nodes.iter().enumerate() {
        let name = format!("node-{position}");
        if primaries.contains(&name) {
            assert!(
                plugin_calls(node) > calls_before[position],
                "{name} holds a primary and uploads it itself"
            );
        }
    }
    let unchanged = snapshot(
        &cluster.nodes[2],
        "shared",
        "snap-2",
        json!({"indices": "logs"}),
    );
    assert_eq!(unchanged["state"], "SUCCESS", "{unchanged:?}");
    assert_eq!(
        unchanged["stats"]["incremental"]["size_in_bytes"], 0,
        "incremental across nodes: {unchanged:?}"
    );

    assert_eq!(first.delete("/logs").status, 200);
    let restored = cluster.nodes[2].post("/_snapshot/shared/snap-1/_restore", &json!({}));
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    assert_eq!(restored.body["snapshot"]["shards"]["successful"], 3);
    wait_for_green(first);
    // Each primary's node lists the shard it restored in _cat/recovery.
    let restored_rows: Vec<serde_json::Value> = cluster
        .nodes
        .iter()
        .flat_map(|node| {
            node.get("/_cat/recovery?format=json")
                .body
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|row| row["index"] == "logs" && row["type"] == "snapshot")
        .collect();
    assert_eq!(restored_rows.len(), 3, "{restored_rows:?}");
    assert!(
        restored_rows
            .iter()
            .all(|row| row["source_node"] == "shared/snap-1"),
        "{restored_rows:?}"
    );
    let restored_primaries = primary_nodes(first, "logs");
    assert!(
        restored_primaries.len() >= 2,
        "restored primaries are allocated like a new index's, not all on the restoring node: {restored_primaries:?}"
    );
    for node in &cluster.nodes {
        assert_eq!(count(node, "logs"), 600);
        assert_eq!(search_fingerprint(node, "logs"), before);
    }
    index_docs(first, "logs", 600, 610);
    assert_eq!(
        count(&cluster.nodes[1], "logs"),
        610,
        "the restored index takes writes"
    );
}
