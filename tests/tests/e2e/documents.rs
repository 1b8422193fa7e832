//! Document APIs: index, create, realtime get, delete, update, concurrency control, refresh
//! semantics, mget, bulk, dynamic and strict mappings.

use serde_json::json;

use crate::fresh_node;

#[test]
fn document_crud_and_realtime_get() {
    let (_dir, node) = fresh_node(&[]);
    node.put("/docs", &json!({"settings": {"refresh_interval": "-1"}}));

    let created = node.put("/docs/_doc/1", &json!({"title": "first", "n": 1}));
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["result"], "created");
    assert_eq!(created.body["_version"], 1);
    assert_eq!(created.body["_seq_no"], 0);
    assert_eq!(created.body["_primary_term"], 1);
    assert_eq!(
        created.body["_shards"],
        json!({"total": 2, "successful": 1, "failed": 0})
    );

    // Realtime GET sees the write although nothing was refreshed; search does not yet.
    let got = node.get("/docs/_doc/1");
    assert_eq!(got.status, 200);
    assert_eq!(got.body["found"], true);
    assert_eq!(got.body["_source"], json!({"title": "first", "n": 1}));
    assert_eq!(got.body["_seq_no"], 0);
    assert_eq!(
        node.post("/docs/_search", &json!({})).body["hits"]["total"]["value"],
        0
    );
    assert_eq!(node.request("HEAD", "/docs/_doc/1", None).status, 200);
    assert_eq!(
        node.get("/docs/_source/1").body,
        json!({"title": "first", "n": 1})
    );
    assert_eq!(
        node.get("/docs/_doc/1?_source_includes=n").body["_source"],
        json!({"n": 1})
    );

    let updated = node.put("/docs/_doc/1", &json!({"title": "second", "n": 2}));
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body["result"], "updated");
    assert_eq!(updated.body["_version"], 2);
    assert_eq!(updated.body["_seq_no"], 1);

    let auto = node.post("/docs/_doc", &json!({"title": "auto"}));
    assert_eq!(auto.status, 201);
    let auto_id = auto.body["_id"].as_str().expect("generated id").to_string();
    assert!(auto_id.len() >= 20);
    assert_eq!(
        node.get(&format!("/docs/_doc/{auto_id}")).body["_source"]["title"],
        "auto"
    );

    let duplicate = node.put("/docs/_create/1", &json!({"title": "dup"}));
    assert_eq!(duplicate.status, 409);
    assert_eq!(
        duplicate.body["error"]["type"],
        "version_conflict_engine_exception"
    );
    let op_type = node.put("/docs/_doc/1?op_type=create", &json!({"title": "dup"}));
    assert_eq!(op_type.status, 409);
    assert_eq!(
        node.get("/docs/_doc/1").body["_source"]["title"],
        "second",
        "a refused write changes nothing"
    );

    let refreshed = node.put("/docs/_doc/r?refresh=true", &json!({"title": "visible"}));
    assert_eq!(refreshed.body["forced_refresh"], true);
    assert_eq!(node.post("/docs/_count", &json!({})).body["count"], 3);

    let deleted = node.delete("/docs/_doc/1");
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.body["result"], "deleted");
    assert_eq!(deleted.body["_version"], 3);
    let gone = node.get("/docs/_doc/1");
    assert_eq!(gone.status, 404);
    assert_eq!(gone.body["found"], false);
    assert_eq!(node.request("HEAD", "/docs/_doc/1", None).status, 404);
    let again = node.delete("/docs/_doc/1");
    assert_eq!(again.status, 404);
    assert_eq!(again.body["result"], "not_found");
    assert_eq!(node.get("/missing-index/_doc/1").status, 404);
    assert_eq!(
        node.get("/missing-index/_doc/1").body["error"]["type"],
        "index_not_found_exception"
    );
}

#[test]
fn optimistic_concurrency_and_updates() {
    let (_dir, node) = fresh_node(&[]);
    let first = node.put(
        "/cc/_doc/1",
        &json!({"count": 1, "user": {"name": "ann", "age": 30}}),
    );
    let seq_no = first.body["_seq_no"].as_i64().expect("seq_no");
    let term = first.body["_primary_term"].as_i64().expect("term");

    let ok = node.put(
        &format!("/cc/_doc/1?if_seq_no={seq_no}&if_primary_term={term}"),
        &json!({"count": 2, "user": {"name": "ann", "age": 30}}),
    );
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let stale = node.put(
        &format!("/cc/_doc/1?if_seq_no={seq_no}&if_primary_term={term}"),
        &json!({"count": 99}),
    );
    assert_eq!(stale.status, 409);
    assert_eq!(
        stale.body["error"]["type"],
        "version_conflict_engine_exception"
    );
    assert_eq!(node.get("/cc/_doc/1").body["_source"]["count"], 2);
    let stale_delete = node.delete(&format!(
        "/cc/_doc/1?if_seq_no={seq_no}&if_primary_term={term}"
    ));
    assert_eq!(stale_delete.status, 409);

    let partial = node.post("/cc/_update/1", &json!({"doc": {"user": {"age": 31}}}));
    assert_eq!(partial.status, 200, "{:?}", partial.body);
    assert_eq!(partial.body["result"], "updated");
    assert_eq!(
        node.get("/cc/_doc/1").body["_source"],
        json!({"count": 2, "user": {"name": "ann", "age": 31}})
    );
    let noop = node.post("/cc/_update/1", &json!({"doc": {"count": 2}}));
    assert_eq!(noop.body["result"], "noop");
    assert_eq!(
        noop.body["_shards"],
        json!({"total": 0, "successful": 0, "failed": 0}),
        "a no-op reaches no copy"
    );

    let missing = node.post("/cc/_update/2", &json!({"doc": {"count": 1}}));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["type"], "document_missing_exception");
    let upsert = node.post(
        "/cc/_update/2",
        &json!({"doc": {"count": 1}, "doc_as_upsert": true}),
    );
    assert_eq!(upsert.status, 201);
    assert_eq!(node.get("/cc/_doc/2").body["_source"], json!({"count": 1}));
    let with_upsert = node.post(
        "/cc/_update/3",
        &json!({"doc": {"count": 5}, "upsert": {"count": 0}}),
    );
    assert_eq!(with_upsert.body["result"], "created");
    assert_eq!(node.get("/cc/_doc/3").body["_source"], json!({"count": 0}));
    let bad = node.post("/cc/_update/1", &json!({"script": "ctx._source.count++"}));
    assert_eq!(bad.status, 400);
}

#[test]
fn refresh_wait_for_makes_writes_searchable() {
    let (_dir, node) = fresh_node(&[]);
    node.put("/w", &json!({"settings": {"refresh_interval": "200ms"}}));
    let written = node.put("/w/_doc/1?refresh=wait_for", &json!({"k": "v"}));
    assert_eq!(written.status, 201);
    assert_eq!(
        node.post(
            "/w/_search",
            &json!({"query": {"term": {"k.keyword": "v"}}})
        )
        .body["hits"]["total"]["value"],
        1
    );
}

#[test]
fn dynamic_and_strict_mappings() {
    let (_dir, node) = fresh_node(&[]);
    node.put("/dyn/_doc/1", &json!({"s": "Some Text", "l": 5, "f": 1.5, "b": true, "d": "2024-05-06T07:08:09Z", "o": {"inner": "x"}}));
    let properties = node.get("/dyn/_mapping").body["dyn"]["mappings"]["properties"].clone();
    assert_eq!(properties["s"]["type"], "text");
    assert_eq!(properties["s"]["fields"]["keyword"]["type"], "keyword");
    assert_eq!(properties["l"]["type"], "long");
    assert_eq!(properties["f"]["type"], "float");
    assert_eq!(properties["b"]["type"], "boolean");
    assert_eq!(properties["d"]["type"], "date");
    assert_eq!(properties["o"]["properties"]["inner"]["type"], "text");
    let wrong = node.put("/dyn/_doc/2", &json!({"l": "not a number"}));
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.body["error"]["type"], "mapper_parsing_exception");
    assert_eq!(node.get("/dyn/_doc/2").status, 404);

    node.put(
        "/strict",
        &json!({"mappings": {"dynamic": "strict", "properties": {"a": {"type": "keyword"}}}}),
    );
    assert_eq!(node.put("/strict/_doc/1", &json!({"a": "x"})).status, 201);
    let refused = node.put("/strict/_doc/2", &json!({"a": "x", "b": 1}));
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.body["error"]["type"],
        "strict_dynamic_mapping_exception"
    );
    assert!(
        node.get("/strict/_mapping").body["strict"]["mappings"]["properties"]
            .get("b")
            .is_none()
    );
}

#[test]
fn bulk_items_fail_alone_and_mget_reads_many() {
    let (_dir, node) = fresh_node(&[]);
    node.put(
        "/b",
        &json!({"mappings": {"properties": {"n": {"type": "integer"}}}}),
    );
    let reply = node.raw(
        "POST",
        "/_bulk?refresh=true",
        Some(
            concat!(
                "{\"index\":{\"_index\":\"b\",\"_id\":\"1\"}}\n{\"n\":1}\n",
                "{\"create\":{\"_index\":\"b\",\"_id\":\"1\"}}\n{\"n\":2}\n",
                "{\"index\":{\"_index\":\"b\",\"_id\":\"2\"}}\n{\"n\":\"two\"}\n",
                "{\"index\":{\"_index\":\"b\",\"_id\":\"3\"}}\n{broken json\n",
                "{\"update\":{\"_index\":\"b\",\"_id\":\"1\"}}\n{\"doc\":{\"n\":10}}\n",
                "{\"delete\":{\"_index\":\"b\",\"_id\":\"9\"}}\n",
                "{\"index\":{\"_index\":\"other\",\"_id\":\"x\"}}\n{\"n\":1}\n",
            )
            .as_bytes()
            .to_vec(),
        ),
        "application/x-ndjson",
    );
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["errors"], true);
    let statuses: Vec<i64> = reply.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            item.as_object()
                .and_then(|o| o.values().next())
                .and_then(|v| v["status"].as_i64())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(statuses, [201, 409, 400, 400, 200, 404, 201]);
    assert_eq!(
        reply.body["items"][1]["create"]["error"]["type"],
        "version_conflict_engine_exception"
    );
    assert_eq!(node.get("/b/_doc/1").body["_source"]["n"], 10);
    assert_eq!(node.get("/b/_doc/2").status, 404);
    assert_eq!(
        node.get("/other/_doc/x").status,
        200,
        "bulk creates missing indices"
    );

    let malformed = node.raw(
        "POST",
        "/_bulk",
        Some(b"{\"explode\":{}}\n{}\n".to_vec()),
        "application/x-ndjson",
    );
    assert_eq!(malformed.status, 400);
    assert_eq!(
        malformed.body["error"]["type"],
        "illegal_argument_exception"
    );

    let many = node.post("/_mget", &json!({"docs": [{"_index": "b", "_id": "1"}, {"_index": "b", "_id": "404"}, {"_index": "nope", "_id": "1"}]}));
    assert_eq!(many.body["docs"][0]["found"], true);
    assert_eq!(many.body["docs"][0]["_source"]["n"], 10);
    assert_eq!(many.body["docs"][1]["found"], false);
    assert_eq!(
        many.body["docs"][2]["error"]["type"],
        "index_not_found_exception"
    );
    let by_ids = node.post("/b/_mget", &json!({"ids": ["1"]}));
    assert_eq!(by_ids.body["docs"][0]["_id"], "1");
}
