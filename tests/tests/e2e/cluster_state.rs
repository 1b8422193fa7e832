//! The quorum-committed cluster state with real processes: one master at a time, changes
//! acknowledged only once a quorum holds them, a new master after the old one dies, and a
//! node cut off from the quorum unable to change anything.

use std::time::Duration;

use serde_json::{Value, json};
use shoal_tests::{Cluster, Node, node_names, wait_for};

use crate::BIN;

const ALL: [&str; 3] = ["node-0", "node-1", "node-2"];
const ENABLE: &str = "cluster.routing.allocation.enable";

/// The master's name as `node` reports it, if it knows one.
fn master_of(node: &Node) -> Option<String> {
    let reply = node.get("/_cat/master?format=json");
    reply.body.as_array()?.first()?["node"]
        .as_str()
        .map(str::to_string)
}

/// Waits until every listed node names the same master, and returns its name.
fn agreed_master(cluster: &Cluster, observers: &[usize]) -> String {
    agreed_master_other_than(cluster, observers, None)
}

/// Like [`agreed_master`], for a master other than `previous` (which observers keep naming
/// until their election timeout passes).
fn agreed_master_other_than(
    cluster: &Cluster,
    observers: &[usize],
    previous: Option<&str>,
) -> String {
    wait_for(
        Duration::from_secs(60),
        "the nodes to agree on a master",
        || {
            let masters: Vec<Option<String>> = observers
                .iter()
                .map(|&i| master_of(&cluster.nodes[i]))
                .collect();
            let first = masters.first()?.clone()?;
            let agreed = masters.iter().all(|m| m.as_deref() == Some(first.as_str()));
            (agreed && previous != Some(first.as_str())).then_some(first)
        },
    )
}

/// Waits until node 0 reports all three master-eligible nodes in the voting configuration.
fn wait_for_three_voters(cluster: &Cluster) {
    Cluster::wait_for_voters(&cluster.nodes[0], 3);
}

fn index_of(name: &str) -> usize {
    name.trim_start_matches("node-").parse().expect("node-N")
}

fn flat_setting(node: &Node, section: &str, key: &str) -> Value {
    node.get("/_cluster/settings?flat_settings=true").body[section][key].clone()
}

/// Sets `cluster.routing.allocation.enable` transiently through `node`, which must commit it.
fn set_transient_enable(node: &Node, value: &str, why: &str) {
    let reply = node.put("/_cluster/settings", &json!({"transient": {ENABLE: value}}));
    assert_eq!(reply.status, 200, "{why}: {:?}", reply.body);
}

fn wait_for_setting(node: &Node, section: &str, key: &str, expected: &str) {
    wait_for(
        Duration::from_secs(30),
        &format!("{key} = {expected} on {}", node.base_url),
        || (flat_setting(node, section, key) == json!(expected)).then_some(()),
    );
}

#[test]
fn one_master_commits_changes_and_a_new_one_takes_over_when_it_dies() {
    let mut cluster = Cluster::start(BIN, &["a", "b", "c"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1, 2], &ALL);
    wait_for_three_voters(&cluster);
    let master = agreed_master(&cluster, &[0, 1, 2]);

    // Written through a node that is not the master: forwarded, committed, visible everywhere.
    let follower = (index_of(&master) + 1) % 3;
    let reply = cluster.nodes[follower].put(
        "/_cluster/settings",
        &json!({"persistent": {"cluster": {"routing": {"allocation": {"enable": "primaries"}}}}}),
    );
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["acknowledged"], true);
    assert_eq!(
        reply.body["persistent"]["cluster"]["routing"]["allocation"]["enable"],
        "primaries"
    );
    for node in &cluster.nodes {
        wait_for_setting(node, "persistent", ENABLE, "primaries");
    }

    let old = index_of(&master);
    cluster.nodes[old].kill();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new_master = agreed_master_other_than(&cluster, &survivors, Some(&master));
    // Each survivor's log tells the operator who took over.
    let announced = format!(r#""message":"master changed","master":"{new_master}""#);
    for &survivor in &survivors {
        assert!(
            cluster.nodes[survivor].logs_soon(&announced),
            "node {survivor} logged the new master"
        );
    }
    set_transient_enable(
        &cluster.nodes[survivors[0]],
        "none",
        "two of three voters are a quorum",
    );

    cluster.nodes[old].restart().expect("restart");
    wait_for_setting(&cluster.nodes[old], "transient", ENABLE, "none");
    assert_eq!(
        flat_setting(&cluster.nodes[old], "persistent", ENABLE),
        json!("primaries")
    );
    assert_eq!(
        agreed_master(&cluster, &[0, 1, 2]),
        new_master,
        "a returning node does not depose a working master"
    );
}

#[test]
fn five_voters_elect_a_new_master_when_the_master_and_another_voter_die_together() {
    // Three survivors of five: the smallest quorum, so every one of them must vote for the
    // same candidate (the case where simultaneous candidates split the vote).
    let mut cluster = Cluster::start(BIN, &["a", "a", "b", "b", "c"]).expect("cluster starts");
    let names = ["node-0", "node-1", "node-2", "node-3", "node-4"];
    cluster.wait_for_view(&[0, 1, 2, 3, 4], &names);
    Cluster::wait_for_voters(&cluster.nodes[0], 5);
    let master = agreed_master(&cluster, &[0, 1, 2, 3, 4]);
    let old = index_of(&master);
    let also_lost = (old + 1) % 5;
    cluster.nodes[old].kill();
    cluster.nodes[also_lost].kill();
    let survivors: Vec<usize> = (0..5).filter(|&i| i != old && i != also_lost).collect();
    let new_master = agreed_master_other_than(&cluster, &survivors, Some(&master));
    assert_ne!(new_master, names[also_lost], "a dead node cannot be master");
    // The crash was seen (the master's port refused), so the survivors did not wait for the
    // election timer.
    let campaigned = format!(
        r#""message":"the master's process is gone; starting an election","master":"{master}""#
    );
    assert!(
        survivors
            .iter()
            .any(|&i| cluster.nodes[i].log_contains(&campaigned)),
        "a survivor campaigned at once"
    );
    set_transient_enable(
        &cluster.nodes[survivors[0]],
        "primaries",
        "three of five voters are a quorum",
    );
    for &survivor in &survivors {
        wait_for_setting(&cluster.nodes[survivor], "transient", ENABLE, "primaries");
    }
}

#[test]
fn an_index_one_node_acknowledged_is_found_at_once_through_every_other() {
    let cluster = Cluster::start(BIN, &["a", "b", "c"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1, 2], &ALL);
    wait_for_three_voters(&cluster);
    // Each acknowledgement means a quorum holds the change, not that every node applied it
    // yet: a node that does not find the index asks the master before answering 404.
    for round in 0..30 {
        let creator = round % 3;
        let name = format!("seen-{round}");
        let created = cluster.nodes[creator].put(
            &format!("/{name}"),
            &json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}}),
        );
        assert_eq!(created.status, 200, "{:?}", created.body);
        for other in (0..3).filter(|&i| i != creator) {
            let found = cluster.nodes[other].get(&format!("/{name}/_count"));
            assert_eq!(
                found.status, 200,
                "node {other} finds [{name}] node {creator} created: {:?}",
                found.body
            );
        }
    }
    let missing = cluster.nodes[1].get("/never-created/_count");
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    assert_eq!(missing.body["error"]["type"], "index_not_found_exception");
}

#[test]
fn a_node_cut_off_from_the_quorum_cannot_change_the_cluster_state() {
    let cluster = Cluster::start(BIN, &["a", "b", "c"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1, 2], &ALL);
    wait_for_three_voters(&cluster);
    let master = index_of(&agreed_master(&cluster, &[0, 1, 2]));
    let others: Vec<usize> = (0..3).filter(|&i| i != master).collect();
    let addr = |i: usize| cluster.nodes[i].transport_addr.clone();
    let cut = |node: usize, peers: Vec<String>| {
        let reply = cluster.nodes[node].put("/_test/faults", &json!({ "blocked": peers }));
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    };
    cut(master, others.iter().map(|&i| addr(i)).collect());
    for &i in &others {
        cut(i, vec![addr(master)]);
    }

    // The isolated old master cannot commit: the change is refused, never half-applied.
    let refused = cluster.nodes[master].put(
        "/_cluster/settings?master_timeout=2s",
        &json!({"persistent": {ENABLE: "none"}}),
    );
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(
        refused.body["error"]["type"],
        "master_not_discovered_exception"
    );

    // The majority elects a master among themselves and keeps working.
    let old_name = format!("node-{master}");
    let majority_master = agreed_master_other_than(&cluster, &others, Some(&old_name));
    let accepted = cluster.nodes[others[0]].put(
        "/_cluster/settings",
        &json!({"persistent": {ENABLE: "new_primaries"}}),
    );
    assert_eq!(accepted.status, 200, "{:?}", accepted.body);

    for i in 0..3 {
        cut(i, vec![]);
    }
    // After healing, the old master follows the majority's history, not its own attempt.
    wait_for_setting(
        &cluster.nodes[master],
        "persistent",
        ENABLE,
        "new_primaries",
    );
    assert_eq!(agreed_master(&cluster, &[0, 1, 2]), majority_master);
}

#[test]
fn settings_are_validated_and_survive_a_full_cluster_restart() {
    let mut cluster = Cluster::start(BIN, &["a", "b", "c"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1, 2], &ALL);
    wait_for_three_voters(&cluster);
    agreed_master(&cluster, &[0, 1, 2]);
    let node = &cluster.nodes[1];

    let typo = node.put(
        "/_cluster/settings",
        &json!({"persistent": {"cluster.routing.allocation.enabel": "all"}}),
    );
    assert_eq!(typo.status, 400);
    assert!(
        typo.body["error"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("enabel"),
        "{:?}",
        typo.body
    );
    let section = node.put("/_cluster/settings", &json!({"permanent": {ENABLE: "all"}}));
    assert_eq!(section.status, 400);
    let not_object = node.put("/_cluster/settings", &json!(["x"]));
    assert_eq!(not_object.status, 400);
    let version_before = node.get("/_cluster/state").body["version"].clone();

    let reply = node.put(
        "/_cluster/settings",
        &json!({"persistent": {"cluster.max_shards_per_node": 500}}),
    );
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let version_after = node.get("/_cluster/state").body["version"].clone();
    assert_eq!(
        version_after.as_u64(),
        version_before.as_u64().map(|v| v + 1),
        "refused changes did not bump the version"
    );

    for node in &mut cluster.nodes {
        node.kill();
    }
    for node in &mut cluster.nodes {
        node.restart().expect("restart");
    }
    agreed_master(&cluster, &[0, 1, 2]);
    for node in &cluster.nodes {
        wait_for_setting(node, "persistent", "cluster.max_shards_per_node", "500");
    }
}

/// The uuid of the cluster `node` belongs to, once it has one.
fn cluster_uuid(node: &Node) -> String {
    wait_for(Duration::from_secs(30), "a cluster uuid", || {
        let uuid = node.get("/").body["cluster_uuid"].clone();
        uuid.as_str()
            .filter(|uuid| *uuid != "_na_")
            .map(str::to_string)
    })
}

#[test]
fn a_node_of_another_cluster_cannot_join_even_with_the_same_certificates_and_name() {
    let cluster = Cluster::start(BIN, &["a", "b"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1], &ALL[..2]);
    let ours = cluster_uuid(&cluster.nodes[0]);

    // A node that founded its own cluster from the same development CA and cluster name...
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("stray");
    let ca = cluster.dev_ca().display().to_string();
    let mut stray = Node::start(BIN, &data, &["--node-name", "stray", "--dev-ca", &ca])
        .expect("the stray node starts");
    let theirs = cluster_uuid(&stray);
    assert_ne!(theirs, ours);
    stray.kill();
    // ...is later pointed at this cluster.
    let seed = cluster.nodes[0].transport_addr.clone();
    let stray = Node::start(
        BIN,
        &data,
        &["--node-name", "stray", "--dev-ca", &ca, "--seed", &seed],
    )
    .expect("the stray node restarts");
    wait_for(
        Duration::from_secs(30),
        "gossip to see the stray node",
        || {
            node_names(&cluster.nodes[0])
                .contains(&"stray".to_string())
                .then_some(())
        },
    );
    wait_for(
        Duration::from_secs(30),
        "the master to refuse the node",
        || {
            cluster
                .nodes
                .iter()
                .any(|node| node.log_contains("belongs to another cluster"))
                .then_some(())
        },
    );
    // It keeps its own cluster, takes no part in this one's quorum, and gets no shards.
    assert_eq!(cluster_uuid(&stray), theirs);
    let state = cluster.nodes[1].get("/_cluster/state").body;
    assert_eq!(state["metadata"]["cluster_uuid"], ours.as_str());
    let stray_id = stray.get("/_nodes").body["nodes"]
        .as_object()
        .and_then(|nodes| {
            nodes
                .iter()
                .find(|(_, info)| info["name"] == "stray")
                .map(|(id, _)| id.clone())
        })
        .expect("the stray node's id");
    let voters = state["metadata"]["cluster_coordination"]["last_committed_config"].clone();
    assert!(
        !voters.to_string().contains(&stray_id),
        "{voters} holds no foreign node"
    );
    // Whichever node places a new index's copies, only admitted nodes get them.
    for (creator, index) in cluster.nodes.iter().zip(["spread-0", "spread-1"]) {
        let created = creator.put(
            &format!("/{index}"),
            &json!({"settings": {"number_of_shards": 6, "number_of_replicas": 0}}),
        );
        assert_eq!(created.status, 200, "{:?}", created.body);
        let rows = creator
            .get(&format!("/_cat/shards/{index}?format=json"))
            .body;
        let holders: Vec<Value> = rows
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| row["node"].clone())
            .collect();
        assert_eq!(holders.len(), 6, "{rows}");
        assert!(
            holders
                .iter()
                .all(|name| name == "node-0" || name == "node-1"),
            "{rows}"
        );
    }
}
