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

/// Starts node-0, node-1 and node-2 in zones a, b and c with `args`, and waits until each
/// sees all three.
fn start_one_per_zone(cluster: &mut Cluster, args: &[&str]) {
    for zone in ["a", "b", "c"] {
        cluster.add_node(zone, args).expect("node starts");
    }
    cluster.wait_for_view(&[0, 1, 2], &["node-0", "node-1", "node-2"]);
}

#[test]
fn each_primary_node_snapshots_its_shards_and_a_restore_comes_back_green() {
    let mut cluster = Cluster::start(BIN, &[]).expect("cluster root");
    // One directory shared by every node, as an NFS mount would be.
    let repos = cluster.root.path().join("shared-repos");
    std::fs::create_dir_all(&repos).expect("repos");
    let repos = repos.display().to_string();
    start_one_per_zone(&mut cluster, &["--path-repo", &repos]);
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
    let restored = cluster.nodes[2].post(
        "/_snapshot/shared/snap-1/_restore?wait_for_completion=true",
        &json!({}),
    );
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    assert_eq!(restored.body["snapshot"]["shards"]["successful"], 3);
    wait_for_green(first);
    // _cat/recovery on any node lists the shard each primary's node restored.
    let restored_rows: Vec<serde_json::Value> = first
        .get("/_cat/recovery?format=json")
        .body
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|row| row["index"] == "logs" && row["type"] == "snapshot")
        .collect();
    assert_eq!(restored_rows.len(), 3, "{restored_rows:?}");
    let restoring_nodes: std::collections::BTreeSet<_> = restored_rows
        .iter()
        .map(|row| row["target_node"].to_string())
        .collect();
    assert!(
        restoring_nodes.len() >= 2,
        "rows come from every restoring node: {restored_rows:?}"
    );
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

#[test]
fn one_node_at_a_time_writes_to_a_repository_and_a_writer_that_lost_it_stops() {
    use shoal_tests::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
    let mut cluster = Cluster::start(BIN, &[]).expect("cluster root");
    let server = S3Server::start(
        env!("CARGO_BIN_EXE_s3-server"),
        &cluster.root.path().join("s3"),
    )
    .expect("the S3 server starts");
    server.create_bucket("snapshots").expect("bucket");
    let secrets = cluster.root.path().join("secure.toml");
    std::fs::write(
        &secrets,
        format!(
            "[s3.client.default]\naccess_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\n"
        ),
    )
    .expect("secure settings");
    let secrets = secrets.display().to_string();
    start_one_per_zone(&mut cluster, &["--secure-settings", &secrets]);
    Cluster::wait_for_voters(&cluster.nodes[0], 3);
    let registered = cluster.nodes[0].put(
        "/_snapshot/s3",
        &json!({"type": "s3", "settings": {"bucket": "snapshots", "endpoint": server.endpoint()}}),
    );
    assert_eq!(registered.status, 200, "{:?}", registered.body);
    let created = cluster.nodes[0].put(
        "/logs",
        &json!({"settings": {"number_of_shards": 2, "number_of_replicas": 1}}),
    );
    assert_eq!(created.status, 200, "{:?}", created.body);
    wait_for_green(&cluster.nodes[0]);
    index_docs(&cluster.nodes[0], "logs", 0, 200);

    // Node 1 starts a snapshot that hangs on the paused server, holding the repository.
    server.pause();
    let (writer, other) = (&cluster.nodes[1], &cluster.nodes[2]);
    let accepted = writer.put("/_snapshot/s3/first", &json!({"indices": "logs"}));
    assert_eq!(accepted.body["accepted"], true, "{:?}", accepted.body);
    wait_for(Duration::from_secs(30), "the first snapshot to run", || {
        let running = writer.get("/_snapshot/s3/_status");
        (running.body["snapshots"][0]["snapshot"] == "first").then_some(())
    });
    // Another node can neither snapshot into it nor delete from it meanwhile.
    for refused in [
        other.put(
            "/_snapshot/s3/second?wait_for_completion=true",
            &json!({"indices": "logs"}),
        ),
        other.put("/_snapshot/s3/in-background", &json!({"indices": "logs"})),
        other.delete("/_snapshot/s3/first"),
    ] {
        assert_eq!(refused.status, 503, "{:?}", refused.body);
        assert_eq!(
            refused.body["error"]["type"],
            "concurrent_snapshot_execution_exception"
        );
        let reason = refused.body["error"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("snapshot [first]"),
            "the refusal names the writer: {reason}"
        );
    }
    let in_use = other.delete("/_snapshot/s3");
    assert_ne!(
        in_use.status, 200,
        "a repository in use is not unregistered: {:?}",
        in_use.body
    );
    assert_eq!(other.get("/_snapshot/s3").status, 200);

    // The writer hangs (SIGSTOP) holding the repository: the master finds it gone and ends its
    // lease, and another node's snapshot goes through once the server answers again.
    cluster.nodes[1].pause();
    server.resume();
    let other = &cluster.nodes[2];
    // Until the hung node's primaries fail over, a snapshot may still ask it for its shard and
    // end PARTIAL; each attempt takes a new name.
    let mut attempt = 0;
    let second = wait_for(Duration::from_secs(120), "another node's snapshot", || {
        let health = other.get("/_cluster/health?wait_for_status=yellow&timeout=5s");
        if health.body["status"] == "red" || health.body["initializing_shards"] != 0 {
            return None;
        }
        attempt += 1;
        let name = format!("second-{attempt}");
        let taken = other.put(
            &format!("/_snapshot/s3/{name}?wait_for_completion=true"),
            &json!({"indices": "logs"}),
        );
        (taken.status == 200 && taken.body["snapshot"]["state"] == "SUCCESS").then_some(name)
    });
    assert_eq!(
        count(other, "logs"),
        200,
        "the index lost nothing with the writer"
    );

    // Woken up, the old writer finds its lease gone and stops before writing its manifest.
    cluster.nodes[1].resume();
    let writer = &cluster.nodes[1];
    let failed = wait_for(
        Duration::from_secs(120),
        "the old writer to give up",
        || {
            let listed = writer.get("/_snapshot/s3/first").body;
            let snapshot = listed["snapshots"][0].clone();
            (snapshot["state"] == "FAILED").then_some(snapshot)
        },
    );
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("lease"), "{failed}");
    let listed = other.get("/_snapshot/s3/_all").body;
    let names: Vec<&str> = listed["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|snapshot| snapshot["snapshot"].as_str())
        .collect();
    assert!(names.contains(&second.as_str()), "{listed}");
    assert!(
        !names.contains(&"first"),
        "the old writer wrote no manifest: {listed}"
    );
}
