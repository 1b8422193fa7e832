//! Cluster membership with real node processes: nodes find each other through a seed over
//! mutually authenticated QUIC, drop a killed, hung or cut-off node, and take it back.

use std::time::Duration;

use serde_json::{Value, json};
use shoal_tests::{Cluster, Node, node_names, wait_for};

use crate::{BIN, shoal};

const ALL: [&str; 3] = ["node-0", "node-1", "node-2"];
/// Logged by a node whose probes found a peer's transport port closed.
const PROCESS_GONE: &str = "its process is gone";

#[test]
fn three_nodes_join_through_a_seed_and_a_killed_node_goes_down_and_comes_back() {
    let mut cluster = Cluster::start(BIN, &["a", "b", "c"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1, 2], &ALL);

    let health = cluster.nodes[1].get("/_cluster/health?wait_for_nodes=3&timeout=30s");
    assert_eq!(health.status, 200, "{:?}", health.body);
    assert_eq!(health.body["number_of_nodes"], 3);
    assert_eq!(health.body["number_of_data_nodes"], 3);

    let nodes = cluster.nodes[2].get("/_cat/nodes?format=json&h=name,zone,node.role,master");
    let zones: Vec<(String, String)> = nodes
        .body
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            (
                row["name"].as_str().unwrap_or_default().to_string(),
                row["zone"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (name, zone) in [("node-0", "a"), ("node-1", "b"), ("node-2", "c")] {
        assert!(
            zones.contains(&(name.to_string(), zone.to_string())),
            "{zones:?}"
        );
    }
    let info = cluster.nodes[0].get("/_nodes");
    assert_eq!(info.body["_nodes"]["total"], 3, "{:?}", info.body);
    // One cluster, one identity: every node reports the uuid its founder committed.
    let uuids: Vec<Value> = cluster
        .nodes
        .iter()
        .map(|node| {
            wait_for(Duration::from_secs(30), "the cluster uuid", || {
                let uuid = node.get("/").body["cluster_uuid"].clone();
                (uuid.is_string() && uuid != "_na_").then_some(uuid)
            })
        })
        .collect();
    assert!(uuids.iter().all(|uuid| *uuid == uuids[0]), "{uuids:?}");

    cluster.nodes[2].kill();
    cluster.wait_for_view(&[0, 1], &["node-0", "node-1"]);
    // A crashed process is noticed by its closed port, without waiting out SWIM's suspicion.
    assert!(
        cluster.nodes[0].logs_soon(PROCESS_GONE) || cluster.nodes[1].logs_soon(PROCESS_GONE),
        "the survivors saw the killed node's port refuse their probes"
    );
    let health = cluster.nodes[0].get("/_cluster/health");
    assert_eq!(health.body["number_of_nodes"], 2);
    // Waiting for a node count that is not reached times out with 408, as in Elasticsearch.
    let waited = cluster.nodes[0].get("/_cluster/health?wait_for_nodes=3&timeout=300ms");
    assert_eq!(waited.status, 408);
    assert_eq!(waited.body["timed_out"], true);

    cluster.nodes[2].restart().expect("restart");
    cluster.wait_for_view(&[0, 1, 2], &ALL);
}

#[test]
fn a_founding_node_without_seeds_finds_its_peers_after_a_restart_elsewhere() {
    let mut cluster = Cluster::start(BIN, &["a", "b", "c"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1, 2], &ALL);

    // node-0 founded the cluster and has no seeds; back on another port, no peer knows
    // where it is, so it must reach them at the addresses its cluster state recorded.
    cluster.nodes[0].kill();
    cluster.wait_for_view(&[1, 2], &["node-1", "node-2"]);
    let old_transport = cluster.nodes[0].transport_addr.clone();
    cluster.nodes[0]
        .restart_on_a_new_transport_port()
        .expect("restart");
    assert_ne!(cluster.nodes[0].transport_addr, old_transport);
    cluster.wait_for_view(&[0, 1, 2], &ALL);
}

#[test]
fn a_hung_node_is_dropped_and_taken_back_when_it_resumes() {
    let cluster = Cluster::start(BIN, &["a", "b", "c"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1, 2], &ALL);

    cluster.nodes[1].pause();
    cluster.wait_for_view(&[0, 2], &["node-0", "node-2"]);
    cluster.nodes[1].resume();
    cluster.wait_for_view(&[0, 1, 2], &ALL);
    assert!(
        cluster.nodes[1].logs_soon("rejoined under a new generation"),
        "a node declared down renews its identity to rejoin"
    );
    assert!(
        !cluster.nodes[0].log_contains(PROCESS_GONE)
            && !cluster.nodes[2].log_contains(PROCESS_GONE),
        "a hung process still holds its port: only SWIM's suspicion may drop it"
    );
}

#[test]
fn a_cut_off_node_loses_sight_of_the_others_until_the_link_heals() {
    let cluster = Cluster::start(BIN, &["a", "b", "c"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1, 2], &ALL);
    let addr = |i: usize| cluster.nodes[i].transport_addr.clone();
    let cut = |node: &Node, peers: Vec<String>| {
        let reply = node.put("/_test/faults", &json!({ "blocked": peers }));
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    };
    cut(&cluster.nodes[0], vec![addr(1), addr(2)]);
    cut(&cluster.nodes[1], vec![addr(0)]);
    cut(&cluster.nodes[2], vec![addr(0)]);
    cluster.wait_for_view(&[0], &["node-0"]);
    cluster.wait_for_view(&[1, 2], &["node-1", "node-2"]);

    for node in &cluster.nodes {
        cut(node, vec![]);
    }
    cluster.wait_for_view(&[0, 1, 2], &ALL);

    let bad = cluster.nodes[0].put("/_test/faults", &json!({ "blocked": ["not an address"] }));
    assert_eq!(bad.status, 400);
    assert_eq!(
        cluster.nodes[0].get("/_test/faults").body["blocked"],
        json!([])
    );
}

#[test]
fn a_node_whose_certificate_another_ca_signed_cannot_join() {
    let mut cluster = Cluster::start(BIN, &["a", "b"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1], &["node-0", "node-1"]);

    let foreign_ca = cluster.root.path().join("foreign-ca");
    let seed = cluster.nodes[0].transport_addr.clone();
    let data = cluster.root.path().join("intruder");
    let intruder = Node::start(
        BIN,
        &data,
        &[
            "--node-name",
            "intruder",
            "--dev-ca",
            foreign_ca.to_str().expect("utf8"),
            "--seed",
            &seed,
        ],
    )
    .expect("the intruder process starts");
    // The intruder keeps announcing to the seed; every attempt fails the TLS handshake.
    wait_for(
        Duration::from_secs(30),
        "the intruder's handshake to be refused",
        || {
            (intruder.log_contains("dial failed")
                || cluster.nodes[0].log_contains("refused a transport connection"))
            .then_some(())
        },
    );
    assert_eq!(node_names(&intruder), vec!["intruder".to_string()]);
    cluster.wait_for_view(&[0, 1], &["node-0", "node-1"]);
    cluster
        .add_node("c", &[])
        .expect("a properly signed node joins");
    cluster.wait_for_view(&[0, 1, 2], &ALL);
    assert_eq!(node_names(&intruder), vec!["intruder".to_string()]);
}

#[test]
fn certs_cli_issues_certificates_that_form_a_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    let ca_arg = ca.to_str().expect("utf8");
    let (ok, out) = shoal(&["certs", "ca", "--out", ca_arg]);
    assert!(ok, "{out}");
    let (ok, out) = shoal(&["certs", "ca", "--out", ca_arg]);
    assert!(!ok && out.contains("refusing to overwrite"), "{out}");
    for name in ["alpha", "beta"] {
        let (ok, out) = shoal(&[
            "certs", "node", "--ca", ca_arg, "--name", name, "--out", ca_arg,
        ]);
        assert!(ok, "{out}");
    }
    let (ok, out) = shoal(&[
        "certs", "node", "--ca", ca_arg, "--name", "bad/name", "--out", ca_arg,
    ]);
    assert!(!ok && out.contains("invalid node name"), "{out}");

    let file = |name: &str| ca.join(name).display().to_string();
    let tls = |name: &str| {
        vec![
            "--node-name".to_string(),
            name.to_string(),
            "--tls-ca".to_string(),
            file("ca.crt"),
            "--tls-cert".to_string(),
            file(&format!("{name}.crt")),
            "--tls-key".to_string(),
            file(&format!("{name}.key")),
        ]
    };
    let args = tls("alpha");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let alpha = Node::start(BIN, &dir.path().join("alpha"), &args).expect("alpha starts");
    let mut args = tls("beta");
    args.extend(["--seed".to_string(), alpha.transport_addr.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let beta = Node::start(BIN, &dir.path().join("beta"), &args).expect("beta starts");
    for node in [&alpha, &beta] {
        wait_for(
            Duration::from_secs(60),
            "alpha and beta to see each other",
            || (node_names(node) == ["alpha", "beta"]).then_some(()),
        );
    }
}

#[test]
fn joining_without_certificates_or_with_half_of_them_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf8");
    let start = |extra: &[&str]| {
        let mut args = vec![
            "start",
            "--data-dir",
            data,
            "--http-addr",
            "127.0.0.1:0",
            "--transport-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        shoal(&args)
    };
    let (ok, out) = start(&["--seed", "127.0.0.1:1"]);
    assert!(!ok && out.contains("--tls-ca"), "{out}");
    let (ok, out) = start(&["--tls-ca", "/nonexistent/ca.crt"]);
    assert!(!ok && out.contains("must be given together"), "{out}");
}

#[test]
fn wait_for_nodes_rejects_what_it_cannot_parse() {
    let (_dir, node) = crate::fresh_node(&[]);
    let reply = node.get("/_cluster/health?wait_for_nodes=lots");
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["type"], "illegal_argument_exception");
    for accepted in ["1", ">=1", "le(1)", "<2"] {
        let reply = node.get(&format!(
            "/_cluster/health?wait_for_nodes={accepted}&timeout=1s"
        ));
        assert_eq!(reply.status, 200, "{accepted}: {:?}", reply.body);
    }
    let alone: Value = node.get("/_cat/nodes?format=json&h=name,master").body;
    assert_eq!(
        alone[0]["master"], "*",
        "a lone master-eligible node is its own master"
    );
}
