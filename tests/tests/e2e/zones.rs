//! Zones with real processes: two data zones of two nodes each plus a master-only tiebreaker in
//! a third zone, as Elasticsearch advises (a quorum survives the loss of any one zone). Copies
//! spread over the zones; a zone is drained and restored through the API while writes go on
//! without one failing; a whole data zone is lost and every shard stays searchable and
//! writable; forced awareness then leaves replicas unassigned instead of crowding one zone.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use shoal_tests::history::{self, Writer};
use shoal_tests::{Cluster, Node, wait_for};

use crate::BIN;

const INDEX: &str = "zoned";

/// node name → zone, as the cluster reports it.
fn zones(node: &Node) -> BTreeMap<String, String> {
    let nodes = node.get("/_nodes").body["nodes"].clone();
    nodes
        .as_object()
        .map(|nodes| {
            nodes
                .values()
                .filter_map(|n| {
                    Some((
                        n["name"].as_str()?.to_string(),
                        n["attributes"]["zone"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// For each shard, the zones of its started copies.
fn copy_zones(node: &Node, zone_of: &BTreeMap<String, String>) -> BTreeMap<String, Vec<String>> {
    let rows = node.get(&format!("/_cat/shards/{INDEX}?format=json")).body;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows.as_array().cloned().unwrap_or_default() {
        if row["state"] != "STARTED" {
            continue;
        }
        let shard = row["shard"].as_str().unwrap_or_default().to_string();
        let zone = zone_of
            .get(row["node"].as_str().unwrap_or_default())
            .cloned()
            .unwrap_or_default();
        out.entry(shard).or_default().push(zone);
    }
    for zones in out.values_mut() {
        zones.sort();
    }
    out
}

fn health(node: &Node) -> Value {
    node.get("/_cluster/health").body
}

fn set_cluster(node: &Node, settings: Value) {
    let reply = node.put("/_cluster/settings", &json!({ "persistent": settings }));
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

#[test]
fn a_zone_is_drained_restored_and_lost_without_losing_a_shard() {
    let mut cluster = Cluster::start(BIN, &["a", "a", "b", "b"]).expect("cluster starts");
    cluster.wait_for_view(&[0, 1, 2, 3], &["node-0", "node-1", "node-2", "node-3"]);
    // Four master-eligible nodes vote as three: a fourth voter would add no tolerance.
    Cluster::wait_for_voters(&cluster.nodes[0], 3);
    cluster
        .add_node("c", &["--roles", "master"])
        .expect("tiebreaker starts");
    let all = ["node-0", "node-1", "node-2", "node-3", "node-4"];
    cluster.wait_for_view(&[0, 1, 2, 3, 4], &all);
    let tiebreaker = &cluster.nodes.remove(4);
    // With the tiebreaker's zone, five voters spread 2-2-1: losing zone b keeps three of five.
    Cluster::wait_for_voters(tiebreaker, 5);
    set_cluster(
        tiebreaker,
        json!({"cluster.routing.allocation.awareness.attributes": "zone"}),
    );
    let created = tiebreaker.put(
        &format!("/{INDEX}"),
        &json!({"settings": {"number_of_shards": 2, "number_of_replicas": 1}}),
    );
    assert_eq!(created.status, 200, "{:?}", created.body);
    let spread = |node: &Node| {
        let zone_of = zones(node);
        let by_shard = copy_zones(node, &zone_of);
        (by_shard.len() == 2
            && by_shard
                .values()
                .all(|zones| zones == &vec!["a".to_string(), "b".to_string()]))
        .then_some(())
    };
    wait_for(Duration::from_secs(60), "copies in both zones", || {
        spread(tiebreaker)
    });
    assert_eq!(health(tiebreaker)["status"], "green");
    let no_data_on_tiebreaker = zones(tiebreaker);
    assert!(
        !copy_zones(tiebreaker, &no_data_on_tiebreaker)
            .values()
            .flatten()
            .any(|zone| zone == "c"),
        "a master-only node holds no copies"
    );

    // Drain zone a for maintenance with writes going on through zone b and the tiebreaker.
    let writer = Writer::start(
        vec![
            cluster.nodes[2].base_url.clone(),
            cluster.nodes[3].base_url.clone(),
            tiebreaker.base_url.clone(),
        ],
        INDEX,
        20,
    );
    set_cluster(
        tiebreaker,
        json!({"cluster.routing.allocation.exclude.zone": "a"}),
    );
    wait_for(Duration::from_secs(90), "zone a drained", || {
        let zone_of = zones(tiebreaker);
        let by_shard = copy_zones(tiebreaker, &zone_of);
        let drained = by_shard.len() == 2
            && by_shard
                .values()
                .all(|zones| zones == &vec!["b".to_string(), "b".to_string()]);
        (drained && health(tiebreaker)["status"] == "green").then_some(())
    });
    // Bring it back: awareness moves one copy of each shard home again.
    set_cluster(
        tiebreaker,
        json!({"cluster.routing.allocation.exclude.zone": null}),
    );
    wait_for(Duration::from_secs(90), "zone a restored", || {
        spread(tiebreaker).filter(|()| health(tiebreaker)["status"] == "green")
    });
    let during_maintenance = writer.history();
    assert_eq!(
        during_maintenance.failed_items, 0,
        "no write failed while the zone was drained and restored"
    );

    // Forced awareness, then lose zone b entirely: every shard still has a copy in zone a, and
    // the replicas stay unassigned rather than crowd zone a.
    set_cluster(
        tiebreaker,
        json!({"cluster.routing.allocation.awareness.force.zone.values": "a,b"}),
    );
    cluster.nodes[2].kill();
    cluster.nodes[3].kill();
    writer.avoid(&cluster.nodes[2].base_url);
    writer.avoid(&cluster.nodes[3].base_url);
    let lost_at = std::time::Instant::now();
    writer.wait_for_clean_bulk_after(lost_at, Duration::from_secs(60));
    wait_for(
        Duration::from_secs(60),
        "replicas unassigned, not crowded",
        || {
            let h = health(tiebreaker);
            let zone_of = zones(tiebreaker);
            let by_shard = copy_zones(tiebreaker, &zone_of);
            let alone_in_a = by_shard.len() == 2
                && by_shard
                    .values()
                    .all(|zones| zones == &vec!["a".to_string()]);
            (h["status"] == "yellow" && h["unassigned_shards"] == 2 && alone_in_a).then_some(())
        },
    );
    let history = writer.finish();
    history::check(tiebreaker, INDEX, &history).expect("every acknowledged write survives");
    let searched = tiebreaker.get(&format!("/{INDEX}/_search?size=0"));
    assert_eq!(searched.body["_shards"]["failed"], 0, "{:?}", searched.body);
}
