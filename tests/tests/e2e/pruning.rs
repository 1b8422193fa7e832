//! Time-series pruning through the shipped `time-series-pruning` plugin: shards outside a
//! query's time range are skipped and reported, and results are identical without pruning.

use serde_json::{Value, json};
use shoal_tests::Node;

use crate::fresh_node;

const DAY_MS: i64 = 86_400_000;
const JAN_1_2024: i64 = 1_704_067_200_000;

pub(crate) fn load_daily_indices(node: &Node, days: i64) {
    for day in 0..days {
        let index = format!("logs-2024.01.{:02}", day + 1);
        let created = node.put(
            &format!("/{index}"),
            &json!({
                "settings": {"number_of_shards": 2, "number_of_replicas": 0},
                "mappings": {"properties": {"@timestamp": {"type": "date"}}},
            }),
        );
        assert_eq!(created.status, 200, "{:?}", created.body);
        let mut lines = Vec::new();
        for i in 0..40 {
            let timestamp = JAN_1_2024 + day * DAY_MS + i * (DAY_MS / 40);
            lines.push(json!({"index": {"_id": format!("{day}-{i}")}}));
            lines.push(json!({"@timestamp": timestamp, "status": 200 + (i % 3) * 100, "day": day}));
        }
        let reply = node.bulk(&format!("/{index}/_bulk?refresh=true"), &lines);
        assert_eq!(reply.body["errors"], false);
    }
}

pub(crate) fn search(node: &Node, body: Value) -> Value {
    let reply = node.post("/logs-*/_search", &body);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

pub(crate) fn sorted_ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = body["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["_id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn daily_indices_are_pruned_with_identical_results() {
    let (_dir, node) = fresh_node(&[]);
    load_daily_indices(&node, 10);
    let one_day = json!({
        "size": 100,
        "query": {"bool": {"filter": [{"range": {"@timestamp": {"gte": "2024-01-04T00:00:00Z", "lt": "2024-01-05T00:00:00Z"}}}]}},
        "aggs": {"statuses": {"terms": {"field": "status"}}},
    });
    let pruned = search(&node, one_day.clone());
    assert_eq!(pruned["_shards"]["total"], 20);
    assert_eq!(
        pruned["_shards"]["skipped"], 18,
        "only 2024.01.04's two shards can match"
    );
    assert_eq!(
        pruned["_shards"]["successful"], 20,
        "skipped shards count as successful, as in Elasticsearch"
    );
    assert_eq!(pruned["hits"]["total"]["value"], 40);

    let described = node.get("/_plugins/time-series-pruning");
    assert_eq!(described.status, 200);
    assert_eq!(described.body["kind"], "pruning");
    assert_eq!(described.body["state"], "enabled");
    assert_eq!(described.body["sha256"].as_str().map(str::len), Some(64));
    assert!(described.body["stats"]["calls"].as_u64() >= Some(1));
    assert!(
        node.get("/_plugins").body["plugins"]
            .get("time-series-pruning")
            .is_some()
    );

    // Disabling the plugin restores unpruned searches with the same answer.
    assert_eq!(
        node.post("/_plugins/time-series-pruning/_disable", &json!({}))
            .status,
        200
    );
    let unpruned = search(&node, one_day.clone());
    assert_eq!(unpruned["_shards"]["skipped"], 0);
    assert_eq!(sorted_ids(&unpruned), sorted_ids(&pruned));
    assert_eq!(unpruned["aggregations"], pruned["aggregations"]);
    assert_eq!(
        node.post("/_plugins/time-series-pruning/_enable", &json!({}))
            .status,
        200
    );

    // Per index: `index.plugins.pruning: none` opts an index out.
    let opt_out = node.put(
        "/logs-2024.01.01/_settings",
        &json!({"index": {"plugins.pruning": "none"}}),
    );
    assert_eq!(opt_out.status, 200, "{:?}", opt_out.body);
    let opted_out = search(&node, one_day);
    assert_eq!(
        opted_out["_shards"]["skipped"], 16,
        "the opted-out index is searched"
    );
    assert_eq!(sorted_ids(&opted_out), sorted_ids(&pruned));

    // Date math and open-ended ranges, and a query with no range at all.
    let recent = search(
        &node,
        json!({"size": 0, "query": {"range": {"@timestamp": {"gte": "2024-01-09||/d"}}}}),
    );
    assert_eq!(recent["hits"]["total"]["value"], 80);
    assert_eq!(recent["_shards"]["skipped"], 14);
    let everything = search(
        &node,
        json!({"size": 0, "query": {"term": {"status": 200}}}),
    );
    assert_eq!(everything["_shards"]["skipped"], 0);
    let optional = search(
        &node,
        json!({"size": 0, "query": {"bool": {"should": [{"range": {"@timestamp": {"gte": "2030-01-01"}}}, {"term": {"status": 300}}]}}}),
    );
    assert_eq!(
        optional["_shards"]["skipped"], 0,
        "an optional range never prunes"
    );
    assert!(optional["hits"]["total"]["value"].as_u64() > Some(0));
    let nothing = search(
        &node,
        json!({"size": 0, "query": {"range": {"@timestamp": {"gte": "2030-01-01"}}}}),
    );
    assert_eq!(
        nothing["_shards"]["skipped"], 18,
        "every shard outside the range is skipped (opted-out index aside)"
    );
    assert_eq!(nothing["hits"]["total"]["value"], 0);
    assert_eq!(node.get("/_plugins/nope").status, 404);
}

/// Asserts `reply` is a 400 `illegal_argument_exception` whose reason mentions `needle`.
fn assert_refused(reply: &shoal_tests::Reply, needle: &str) {
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["type"], "illegal_argument_exception");
    let reason = reply.body["error"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(needle), "{reason}");
}

#[test]
fn the_pruning_plugin_is_chosen_cluster_wide_unless_an_index_names_its_own() {
    let (_dir, node) = fresh_node(&[]);
    load_daily_indices(&node, 4);
    let one_day = json!({
        "size": 100,
        "query": {"range": {"@timestamp": {"gte": "2024-01-02", "lt": "2024-01-03"}}},
    });
    let cluster_setting = |value: Value| {
        node.put(
            "/_cluster/settings",
            &json!({"persistent": {"plugins.pruning": value}}),
        )
    };
    let pruned = search(&node, one_day.clone());
    assert_eq!(
        pruned["_shards"]["skipped"], 6,
        "the shipped plugin by default"
    );

    // Cluster-wide off: every index that names no plugin itself is searched whole.
    let off_setting = cluster_setting(json!("none"));
    assert_eq!(off_setting.status, 200, "{:?}", off_setting.body);
    let off = search(&node, one_day.clone());
    assert_eq!(off["_shards"]["skipped"], 0);
    assert_eq!(sorted_ids(&off), sorted_ids(&pruned));
    assert_eq!(
        node.get("/_cluster/settings?flat_settings=true").body["persistent"]["plugins.pruning"],
        "none"
    );

    // An index's own setting wins over the cluster's.
    let own = node.put(
        "/logs-2024.01.01/_settings",
        &json!({"index.plugins.pruning": "time-series-pruning"}),
    );
    assert_eq!(own.status, 200, "{:?}", own.body);
    let mixed = search(&node, one_day.clone());
    assert_eq!(
        mixed["_shards"]["skipped"], 2,
        "only logs-2024.01.01 prunes"
    );
    let settings = |index: &str| node.get(&format!("/{index}/_settings")).body;
    assert_eq!(
        settings("logs-2024.01.01")["logs-2024.01.01"]["settings"]["index"]["plugins"]["pruning"],
        "time-series-pruning"
    );
    assert!(
        settings("logs-2024.01.02")["logs-2024.01.02"]["settings"]["index"]["plugins"]
            .get("pruning")
            .is_none(),
        "an index that names none follows the cluster"
    );

    // Names that cannot serve are refused where they are given, and change nothing.
    assert_refused(&cluster_setting(json!("no-such-plugin")), "not installed");
    assert_refused(
        &cluster_setting(json!("fs-repository")),
        "is a Repository plugin",
    );
    assert_refused(
        &cluster_setting(json!(["time-series-pruning"])),
        "must be a plugin name",
    );
    assert_refused(
        &node.put(
            "/logs-2024.01.03/_settings",
            &json!({"index.plugins.pruning": "no-such-plugin"}),
        ),
        "not installed",
    );
    assert_refused(
        &node.put(
            "/logs-2024.02.01",
            &json!({"settings": {"index.plugins.pruning": "fs-repository"}}),
        ),
        "is a Repository plugin",
    );
    assert_eq!(node.get("/logs-2024.02.01").status, 404);
    assert_eq!(search(&node, one_day.clone())["_shards"]["skipped"], 2);

    // `null` resets the cluster to the shipped plugin.
    assert_eq!(cluster_setting(Value::Null).status, 200);
    assert_eq!(search(&node, one_day)["_shards"]["skipped"], 6);
}
