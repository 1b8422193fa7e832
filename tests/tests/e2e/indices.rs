//! Index administration, cluster health, cat and stats APIs.

use serde_json::json;

use crate::fresh_node;

#[test]
fn root_health_and_index_lifecycle() {
    let (_dir, node) = fresh_node(&["--node-name", "n1", "--cluster-name", "c1"]);
    let root = node.get("/");
    assert_eq!(root.status, 200);
    assert_eq!(root.body["name"], "n1");
    assert_eq!(root.body["cluster_name"], "c1");
    let uuid = root.body["cluster_uuid"].as_str().unwrap_or_default();
    assert!(!uuid.is_empty() && uuid != "_na_", "{:?}", root.body);
    assert_eq!(
        node.get("/_cluster/state").body["metadata"]["cluster_uuid"],
        uuid,
        "the cluster's uuid, as the cluster state has it"
    );
    assert!(root.body["version"]["number"].is_string());
    assert_eq!(node.request("HEAD", "/", None).status, 200);

    assert_eq!(
        node.get("/_cluster/health").body["status"],
        "green",
        "no indices: green"
    );

    let created = node.put(
        "/logs-2024.01.01",
        &json!({"settings": {"number_of_shards": 3}}),
    );
    assert_eq!(created.status, 200, "{:?}", created.body);
    assert_eq!(created.body["acknowledged"], true);
    // One node: replicas stay unassigned, so health is yellow, exactly as Elasticsearch.
    let health = node.get("/_cluster/health");
    assert_eq!(health.body["status"], "yellow");
    assert_eq!(health.body["active_primary_shards"], 3);
    assert_eq!(health.body["unassigned_shards"], 3);
    assert_eq!(health.body["number_of_nodes"], 1);
    let waited = node.get("/_cluster/health?wait_for_status=green&timeout=200ms");
    assert_eq!(waited.status, 408);
    assert_eq!(waited.body["timed_out"], true);
    assert_eq!(
        node.get("/_cluster/health?wait_for_status=yellow&timeout=1s")
            .status,
        200
    );

    node.put(
        "/logs-2024.01.02",
        &json!({"settings": {"index": {"number_of_replicas": 0}}}),
    );
    node.put("/metrics", &json!({"settings": {"number_of_replicas": 0}}));
    node.put(
        "/logs-2024.01.01/_settings",
        &json!({"index": {"number_of_replicas": 0}}),
    );
    assert_eq!(
        node.get("/_cluster/health").body["status"],
        "green",
        "no replicas wanted: green"
    );

    let got = node.get("/logs-*");
    assert_eq!(got.status, 200);
    let names: Vec<&String> = got.body.as_object().expect("object").keys().collect();
    assert_eq!(names, ["logs-2024.01.01", "logs-2024.01.02"]);
    assert_eq!(
        got.body["logs-2024.01.01"]["settings"]["index"]["number_of_shards"],
        "3"
    );
    let listed = node.get("/metrics,logs-2024.01.02");
    assert_eq!(listed.body.as_object().map(|o| o.len()), Some(2));
    assert_eq!(node.request("HEAD", "/metrics", None).status, 200);
    assert_eq!(node.request("HEAD", "/nope", None).status, 404);

    let missing = node.get("/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["type"], "index_not_found_exception");
    assert_eq!(
        missing.body["error"]["root_cause"][0]["type"],
        "index_not_found_exception"
    );
    assert_eq!(missing.body["status"], 404);

    let again = node.put("/metrics", &json!({}));
    assert_eq!(again.status, 400);
    assert_eq!(
        again.body["error"]["type"],
        "resource_already_exists_exception"
    );
    let bad_name = node.put("/Bad", &json!({}));
    assert_eq!(bad_name.status, 400);
    assert_eq!(
        bad_name.body["error"]["type"],
        "invalid_index_name_exception"
    );
    let bad_setting = node.put("/x", &json!({"settings": {"index.colour": "blue"}}));
    assert_eq!(bad_setting.status, 400);
    assert_eq!(
        bad_setting.body["error"]["type"],
        "illegal_argument_exception"
    );
    assert_eq!(
        node.request("HEAD", "/x", None).status,
        404,
        "a refused create changes nothing"
    );

    assert_eq!(node.delete("/logs-*").status, 200);
    assert_eq!(node.request("HEAD", "/logs-2024.01.01", None).status, 404);
    assert_eq!(node.delete("/nope").status, 404);
    assert_eq!(node.request("HEAD", "/metrics", None).status, 200);
}

#[test]
fn mappings_and_settings() {
    let (_dir, node) = fresh_node(&[]);
    let created = node.put(
        "/books",
        &json!({"mappings": {"properties": {
            "title": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
            "pages": {"type": "integer"},
        }}}),
    );
    assert_eq!(created.status, 200, "{:?}", created.body);
    let added = node.put(
        "/books/_mapping",
        &json!({"properties": {"published": {"type": "date"}}}),
    );
    assert_eq!(added.status, 200);
    let mapping = node.get("/books/_mapping");
    let properties = &mapping.body["books"]["mappings"]["properties"];
    assert_eq!(properties["title"]["fields"]["raw"]["type"], "keyword");
    assert_eq!(properties["published"]["type"], "date");

    let conflict = node.put(
        "/books/_mapping",
        &json!({"properties": {"pages": {"type": "text"}}}),
    );
    assert_eq!(conflict.status, 400);
    assert_eq!(conflict.body["error"]["type"], "illegal_argument_exception");
    assert_eq!(
        node.get("/books/_mapping").body["books"]["mappings"]["properties"]["pages"]["type"],
        "integer"
    );
    let bad_type = node.put(
        "/books/_mapping",
        &json!({"properties": {"x": {"type": "banana"}}}),
    );
    assert_eq!(bad_type.status, 400);
    assert_eq!(bad_type.body["error"]["type"], "mapper_parsing_exception");

    let settings = node.put(
        "/books/_settings",
        &json!({"index": {"refresh_interval": "250ms", "number_of_replicas": 0}}),
    );
    assert_eq!(settings.status, 200);
    let read = node.get("/books/_settings");
    assert_eq!(
        read.body["books"]["settings"]["index"]["refresh_interval"],
        "250ms"
    );
    assert_eq!(
        read.body["books"]["settings"]["index"]["number_of_replicas"],
        "0"
    );
    let static_change = node.put(
        "/books/_settings",
        &json!({"index": {"number_of_shards": 4}}),
    );
    assert_eq!(static_change.status, 400);
    assert_eq!(
        node.get("/books/_settings").body["books"]["settings"]["index"]["number_of_shards"],
        "1"
    );

    assert_eq!(
        node.post("/books/_refresh", &json!({})).body["_shards"]["successful"],
        1
    );
    assert_eq!(
        node.post("/books/_flush", &json!({})).body["_shards"]["successful"],
        1
    );
    assert_eq!(node.post("/nope/_refresh", &json!({})).status, 404);
}

#[test]
fn cat_and_stats() {
    let (_dir, node) = fresh_node(&["--node-name", "cat-node"]);
    node.put(
        "/a",
        &json!({"settings": {"number_of_shards": 2, "number_of_replicas": 0}}),
    );
    node.bulk(
        "/a/_bulk?refresh=true",
        &[
            json!({"index": {"_id": "1"}}),
            json!({"n": 1}),
            json!({"index": {"_id": "2"}}),
            json!({"n": 2}),
        ],
    );
    node.get("/a/_doc/1");
    node.post("/a/_search", &json!({}));

    let text = node.get("/_cat/indices?v");
    let text = text.body.as_str().expect("text").to_string();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        &header[..7],
        [
            "health",
            "status",
            "index",
            "uuid",
            "pri",
            "rep",
            "docs.count"
        ]
    );
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!((row[0], row[2], row[4], row[6]), ("green", "a", "2", "2"));

    let json_rows = node.get("/_cat/indices?format=json");
    assert_eq!(json_rows.body[0]["index"], "a");
    assert_eq!(json_rows.body[0]["docs.count"], "2");
    let shards = node.get("/_cat/shards/a?format=json");
    assert_eq!(shards.body.as_array().map(Vec::len), Some(2));
    assert_eq!(shards.body[0]["prirep"], "p");
    assert_eq!(shards.body[0]["state"], "STARTED");
    assert!(
        node.get("/_cat/health?v")
            .body
            .as_str()
            .is_some_and(|t| t.contains("green"))
    );
    assert_eq!(
        node.get("/_cat/nodes?format=json&h=name").body,
        json!([{"name": "cat-node"}])
    );
    assert_eq!(node.get("/_cat/bogus").status, 404);

    let stats = node.get("/_nodes/stats");
    let (_, node_stats) = stats.body["nodes"]
        .as_object()
        .and_then(|n| n.iter().next())
        .expect("one node");
    let indices = &node_stats["indices"];
    assert_eq!(indices["docs"]["count"], 2);
    assert_eq!(indices["indexing"]["index_total"], 2);
    assert!(
        indices["search"]["query_total"].as_u64() >= Some(2),
        "one query per shard"
    );
    assert_eq!(indices["get"]["total"], 1);
    assert!(indices["store"]["size_in_bytes"].as_u64() > Some(0));
    assert!(indices["translog"]["operations"].as_u64() >= Some(2));
}

#[test]
fn unknown_routes_and_oversized_bodies_are_refused() {
    let (_dir, node) = fresh_node(&["--http-max-content-length", "1kb"]);
    let unknown = node.get("/_nope/what/is/this");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body["error"]["type"], "no_handler_found_exception");
    node.put("/small", &json!({}));
    let big = json!({"text": "x".repeat(4096)});
    let refused = node.put("/small/_doc/1", &big);
    assert_eq!(refused.status, 413);
    assert_eq!(refused.body["error"]["type"], "content_too_long_exception");
    assert_eq!(node.get("/small/_doc/1").status, 404, "nothing was stored");
    let broken = node.raw(
        "PUT",
        "/small/_doc/2",
        Some(b"{not json".to_vec()),
        "application/json",
    );
    assert_eq!(broken.status, 400);
    assert_eq!(broken.body["error"]["type"], "parsing_exception");
}

#[test]
fn config_file_environment_and_flags_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("shoal.toml");
    std::fs::write(
        &config,
        "node_name = \"from-file\"\ncluster_name = \"file-cluster\"\nzone = \"zone-a\"\n",
    )
    .expect("write config");
    let config_arg = config.to_string_lossy().to_string();
    let node = shoal_tests::Node::start_with_env(
        crate::BIN,
        &dir.path().join("data"),
        &["--config", &config_arg, "--node-name", "from-flag"],
        &[("SHOAL_CLUSTER_NAME", "env-cluster")],
    )
    .expect("node starts");
    let root = node.get("/");
    assert_eq!(root.body["name"], "from-flag", "flags win over the file");
    assert_eq!(
        root.body["cluster_name"], "env-cluster",
        "the environment wins over the file"
    );
    assert_eq!(
        node.get("/_cat/nodes?format=json&h=zone").body,
        json!([{"zone": "zone-a"}])
    );

    std::fs::write(&config, "node_nmae = \"typo\"\n").expect("write config");
    let refused = shoal_tests::Node::start(
        crate::BIN,
        &dir.path().join("data2"),
        &["--config", &config_arg],
    );
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("node_nmae"),
        "an unknown key is refused by name: {message}"
    );
}

#[test]
fn force_merge_leaves_one_segment_and_every_document() {
    let (_dir, node) = fresh_node(&[]);
    node.put(
        "/fm",
        &json!({"settings": {"number_of_replicas": 0, "refresh_interval": "-1"}}),
    );
    for batch in 0..4 {
        let lines: Vec<_> = (0..10)
            .flat_map(|i| {
                [
                    json!({"index": {"_id": format!("{batch}-{i}")}}),
                    json!({"batch": batch, "i": i}),
                ]
            })
            .collect();
        node.bulk("/fm/_bulk?refresh=true", &lines);
    }
    let segments = |node: &shoal_tests::Node| -> u64 {
        let shards = node.get("/_cat/shards/fm?format=json");
        shards.body[0]["segments.count"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no segments.count in {:?}", shards.body))
    };
    assert!(segments(&node) >= 2, "each refresh wrote a segment");
    let merged = node.post("/fm/_forcemerge?max_num_segments=1", &json!({}));
    assert_eq!(merged.status, 200, "{:?}", merged.body);
    assert_eq!(segments(&node), 1);
    assert_eq!(node.post("/fm/_count", &json!({})).body["count"], 40);
    assert_eq!(
        node.post("/fm/_forcemerge?max_num_segments=lots", &json!({}))
            .status,
        400
    );
}
