//! Search: every query type, paging and sorting, and aggregations checked against values the
//! test computes from the same generated documents.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use shoal_tests::Node;
use shoal_tests::http_logs::{self, LogDoc};

use crate::fresh_node;

const START: i64 = 1_700_000_000;

fn load(node: &Node, index: &str, docs: &[LogDoc], first_id: usize) {
    let mut lines = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        lines.push(json!({"index": {"_id": (first_id + i).to_string()}}));
        lines.push(doc.to_json());
    }
    let reply = node.bulk(&format!("/{index}/_bulk?refresh=true"), &lines);
    assert_eq!(reply.body["errors"], false, "{:?}", reply.body);
}

fn total(reply: &shoal_tests::Reply) -> u64 {
    reply.body["hits"]["total"]["value"]
        .as_u64()
        .unwrap_or_else(|| panic!("no total in {:?}", reply.body))
}

fn ids(reply: &shoal_tests::Reply) -> Vec<String> {
    reply.body["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn queries_match_what_the_documents_say() {
    let (_dir, node) = fresh_node(&[]);
    let docs = http_logs::generate(7, 600, START);
    node.put(
        "/logs",
        &json!({"settings": {"number_of_shards": 3}, "mappings": http_logs::mapping()}),
    );
    load(&node, "logs", &docs, 0);
    let search = |body: Value| node.post("/logs/_search", &body);
    let count_where =
        |predicate: &dyn Fn(&LogDoc) -> bool| docs.iter().filter(|d| predicate(d)).count() as u64;

    assert_eq!(total(&search(json!({"query": {"match_all": {}}}))), 600);
    assert_eq!(
        search(json!({})).body["_shards"],
        json!({"total": 3, "successful": 3, "skipped": 0, "failed": 0})
    );
    assert_eq!(
        total(&search(json!({"query": {"term": {"status": 404}}}))),
        count_where(&|d| d.status == 404)
    );
    assert_eq!(
        total(&search(json!({"query": {"terms": {"status": [404, 500]}}}))),
        count_where(&|d| d.status == 404 || d.status == 500)
    );
    assert_eq!(
        total(&search(json!({"query": {"match": {"request": "POST"}}}))),
        count_where(&|d| d.request.starts_with("POST"))
    );
    assert_eq!(
        total(&search(
            json!({"query": {"match": {"request": {"query": "images logo", "operator": "and"}}}})
        )),
        count_where(&|d| d.request.contains("/images/logo"))
    );
    assert_eq!(
        total(&search(
            json!({"query": {"match": {"request": {"query": "images logo english", "minimum_should_match": 2}}}})
        )),
        count_where(&|d| d.request.contains("/images/logo"))
    );
    assert_eq!(
        total(&search(
            json!({"query": {"match_phrase": {"request": "english index"}}})
        )),
        count_where(&|d| d.request.contains("/english/index"))
    );
    assert_eq!(
        total(&search(
            json!({"query": {"multi_match": {"query": "tickets", "fields": ["request", "clientip"]}}})
        )),
        count_where(&|d| d.request.contains("tickets"))
    );
    let size_range = search(json!({"query": {"range": {"size": {"gte": 1000, "lt": 5000}}}}));
    assert_eq!(
        total(&size_range),
        count_where(&|d| (1000..5000).contains(&d.size))
    );
    let cutoff = START + 300;
    let date_range = search(json!({"query": {"range": {"@timestamp": {"gt": cutoff * 1000}}}}));
    assert_eq!(total(&date_range), count_where(&|d| d.timestamp > cutoff));
    let iso = chrono_like_iso(cutoff);
    let date_math = search(
        json!({"query": {"range": {"@timestamp": {"gt": format!("{iso}||+0d"), "format": "strict_date_optional_time"}}}}),
    );
    assert_eq!(total(&date_math), count_where(&|d| d.timestamp > cutoff));
    assert_eq!(
        total(&search(
            json!({"query": {"range": {"@timestamp": {"gte": "now-1d/d"}}}})
        )),
        0,
        "all documents are from 2023"
    );
    assert_eq!(
        total(&search(json!({"query": {"exists": {"field": "clientip"}}}))),
        600
    );
    assert_eq!(
        total(&search(json!({"query": {"exists": {"field": "nothing"}}}))),
        0
    );
    assert_eq!(
        ids(&search(
            json!({"query": {"ids": {"values": ["3", "5", "999"]}}, "sort": ["_doc"]})
        ))
        .len(),
        2
    );
    let first_ip = docs[0].clientip.clone();
    let prefix = first_ip.split('.').next().expect("octet").to_string() + ".";
    assert_eq!(
        total(&search(
            json!({"query": {"prefix": {"clientip": prefix.clone()}}})
        )),
        count_where(&|d| d.clientip.starts_with(&prefix))
    );
    assert_eq!(
        total(&search(
            json!({"query": {"wildcard": {"clientip": format!("{prefix}*")}}})
        )),
        count_where(&|d| d.clientip.starts_with(&prefix))
    );
    let boolean = search(json!({"query": {"bool": {
        "must": [{"match": {"request": "GET"}}],
        "filter": [{"range": {"size": {"gte": 100}}}],
        "should": [{"term": {"status": 200}}, {"term": {"status": 206}}],
        "minimum_should_match": 1,
        "must_not": [{"match": {"request": "images"}}],
    }}}));
    assert_eq!(
        total(&boolean),
        count_where(&|d| d.request.starts_with("GET")
            && d.size >= 100
            && (d.status == 200 || d.status == 206)
            && !d.request.contains("images"))
    );
    assert_eq!(
        total(&search(
            json!({"query": {"bool": {"must_not": {"term": {"status": 200}}}}})
        )),
        count_where(&|d| d.status != 200)
    );
    // A filter term matches without scoring: each hit scores what the match alone gives it.
    let filtered = search(json!({"size": 5, "query": {"bool": {
        "must": {"match": {"request": "english"}},
        "filter": {"term": {"status": 200}},
    }}}));
    assert_eq!(
        total(&filtered),
        count_where(&|d| d.request.contains("english") && d.status == 200)
    );
    for hit in filtered.body["hits"]["hits"].as_array().expect("hits") {
        let alone = search(json!({"query": {"bool": {
            "must": {"match": {"request": "english"}},
            "filter": {"ids": {"values": [hit["_id"]]}},
        }}}));
        assert_eq!(
            alone.body["hits"]["hits"][0]["_score"], hit["_score"],
            "{hit}"
        );
    }
    let only_filter = search(json!({"query": {"bool": {"filter": {"term": {"status": 404}}}}}));
    assert_eq!(total(&only_filter), count_where(&|d| d.status == 404));
    assert_eq!(only_filter.body["hits"]["max_score"], 0.0);
    let query_string = search(
        json!({"query": {"query_string": {"query": "status:[400 TO 599] AND request:english"}}}),
    );
    assert_eq!(
        total(&query_string),
        count_where(&|d| (400..=599).contains(&d.status) && d.request.contains("english"))
    );
    let uri_search = node.get("/logs/_search?q=status:304");
    assert_eq!(total(&uri_search), count_where(&|d| d.status == 304));
    assert_eq!(
        node.get("/logs/_count?q=status:304").body["count"],
        count_where(&|d| d.status == 304)
    );

    let unknown = search(json!({"query": {"fuzzy_wuzzy": {}}}));
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.body["error"]["type"], "parsing_exception");
    let malformed = search(json!({"query": {"match": "just a string"}}));
    assert_eq!(malformed.status, 400);
    let bad_key = search(json!({"quary": {}}));
    assert_eq!(bad_key.status, 400);
    let text_agg = search(json!({"aggs": {"x": {"terms": {"field": "request"}}}}));
    assert_eq!(text_agg.status, 400);
    assert_eq!(text_agg.body["error"]["type"], "illegal_argument_exception");
}

fn chrono_like_iso(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rem = seconds.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm) to avoid a chrono dependency here.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn paging_sorting_and_source_filtering() {
    let (_dir, node) = fresh_node(&[]);
    let docs = http_logs::generate(11, 300, START);
    node.put(
        "/p",
        &json!({"settings": {"number_of_shards": 2}, "mappings": http_logs::mapping()}),
    );
    load(&node, "p", &docs, 0);
    let mut expected: Vec<(u64, usize)> =
        docs.iter().enumerate().map(|(i, d)| (d.size, i)).collect();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.to_string().cmp(&b.1.to_string())));

    let page = node.post(
        "/p/_search",
        &json!({"sort": [{"size": "desc"}], "from": 5, "size": 5, "_source": ["size"]}),
    );
    let sizes: Vec<u64> = page.body["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["_source"]["size"].as_u64().unwrap_or(0))
        .collect();
    let wanted: Vec<u64> = expected[5..10].iter().map(|e| e.0).collect();
    assert_eq!(sizes, wanted);
    let hit = &page.body["hits"]["hits"][0];
    assert_eq!(
        hit["_source"].as_object().map(|o| o.len()),
        Some(1),
        "only the included field"
    );
    assert_eq!(hit["sort"][0], hit["_source"]["size"]);
    assert!(hit["_score"].is_null());

    // search_after walks the whole index in pages with no duplicates and no gaps.
    let mut seen = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let mut body = json!({"sort": [{"@timestamp": "asc"}, {"clientip": "desc"}], "size": 70, "_source": false});
        if let Some(after) = &after {
            body["search_after"] = after.clone();
        }
        let reply = node.post("/p/_search", &body);
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let hits = reply.body["hits"]["hits"].as_array().expect("hits").clone();
        if hits.is_empty() {
            break;
        }
        assert!(hits[0].get("_source").is_none());
        after = Some(hits.last().expect("last")["sort"].clone());
        seen.extend(
            hits.iter()
                .map(|h| h["_id"].as_str().unwrap_or_default().to_string()),
        );
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), 300, "no duplicates");
    assert_eq!(unique.len(), 300, "no gaps");

    let tracked = node.post("/p/_search", &json!({"track_total_hits": 100, "size": 0}));
    assert_eq!(
        tracked.body["hits"]["total"],
        json!({"value": 100, "relation": "gte"})
    );
    let untracked = node.post("/p/_search", &json!({"track_total_hits": false}));
    assert!(untracked.body["hits"].get("total").is_none());
    let excluded = node.post(
        "/p/_search",
        &json!({"size": 1, "_source": {"excludes": ["request", "clientip"]}}),
    );
    assert!(
        excluded.body["hits"]["hits"][0]["_source"]
            .get("request")
            .is_none()
    );
    assert!(
        excluded.body["hits"]["hits"][0]["_source"]
            .get("status")
            .is_some()
    );
    let too_deep = node.post("/p/_search", &json!({"from": 9999, "size": 10}));
    assert_eq!(too_deep.status, 400);
    let versions = node.post(
        "/p/_search",
        &json!({"size": 1, "seq_no_primary_term": true, "version": true}),
    );
    assert!(versions.body["hits"]["hits"][0]["_seq_no"].is_i64());
    assert_eq!(versions.body["hits"]["hits"][0]["_version"], 1);
}

#[test]
fn aggregations_equal_computed_values() {
    let (_dir, node) = fresh_node(&[]);
    let docs = http_logs::generate(23, 800, START);
    node.put(
        "/a",
        &json!({"settings": {"number_of_shards": 3}, "mappings": http_logs::mapping()}),
    );
    load(&node, "a", &docs, 0);
    let reply = node.post("/a/_search", &json!({"size": 0, "aggs": {
        "statuses": {"terms": {"field": "status", "size": 10}, "aggs": {"bytes": {"sum": {"field": "size"}}}},
        "avg_size": {"avg": {"field": "size"}},
        "min_size": {"min": {"field": "size"}},
        "max_size": {"max": {"field": "size"}},
        "sum_size": {"sum": {"field": "size"}},
        "stats_size": {"stats": {"field": "size"}},
        "count_size": {"value_count": {"field": "size"}},
        "ips": {"cardinality": {"field": "clientip"}},
        "p50": {"percentiles": {"field": "size", "percents": [50]}},
        "by_size": {"range": {"field": "size", "ranges": [{"to": 1000}, {"from": 1000, "to": 10000}, {"from": 10000}]}},
        "hist": {"histogram": {"field": "status", "interval": 100}},
        "per_minute": {"date_histogram": {"field": "@timestamp", "fixed_interval": "1m"}},
    }}));
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let aggs = &reply.body["aggregations"];
    let sizes: Vec<u64> = docs.iter().map(|d| d.size).collect();
    let sum: u64 = sizes.iter().sum();
    assert_eq!(aggs["sum_size"]["value"].as_f64(), Some(sum as f64));
    assert_eq!(
        aggs["min_size"]["value"].as_f64(),
        sizes.iter().min().map(|m| *m as f64)
    );
    assert_eq!(
        aggs["max_size"]["value"].as_f64(),
        sizes.iter().max().map(|m| *m as f64)
    );
    let avg = aggs["avg_size"]["value"].as_f64().expect("avg");
    assert!((avg - sum as f64 / 800.0).abs() < 1e-6);
    assert_eq!(aggs["stats_size"]["count"], 800);
    assert_eq!(aggs["count_size"]["value"].as_f64(), Some(800.0));

    let mut per_status: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for doc in &docs {
        let entry = per_status.entry(doc.status).or_default();
        entry.0 += 1;
        entry.1 += doc.size;
    }
    for bucket in aggs["statuses"]["buckets"].as_array().expect("buckets") {
        let status = bucket["key"].as_u64().expect("key");
        let (count, bytes) = per_status[&status];
        assert_eq!(bucket["doc_count"].as_u64(), Some(count), "status {status}");
        assert_eq!(bucket["bytes"]["value"].as_f64(), Some(bytes as f64));
    }
    assert_eq!(
        aggs["statuses"]["buckets"].as_array().map(Vec::len),
        Some(per_status.len())
    );

    let mut distinct: Vec<&str> = docs.iter().map(|d| d.clientip.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let cardinality = aggs["ips"]["value"].as_f64().expect("cardinality");
    assert!(
        (cardinality - distinct.len() as f64).abs() <= distinct.len() as f64 * 0.02,
        "{cardinality} vs {}",
        distinct.len()
    );

    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    let median = sorted[399] as f64;
    let p50 = aggs["p50"]["values"]["50.0"].as_f64().expect("p50");
    assert!(
        (p50 - median).abs() <= median * 0.05 + 50.0,
        "{p50} vs {median}"
    );

    let range_counts: Vec<u64> = aggs["by_size"]["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["doc_count"].as_u64().unwrap_or(0))
        .collect();
    let expect = [
        sizes.iter().filter(|s| **s < 1000).count() as u64,
        sizes.iter().filter(|s| (1000..10000).contains(*s)).count() as u64,
        sizes.iter().filter(|s| **s >= 10000).count() as u64,
    ];
    assert_eq!(range_counts, expect);
    let hist_total: u64 = aggs["hist"]["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["doc_count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(hist_total, 800);
    let minutes: BTreeMap<i64, u64> = docs.iter().fold(BTreeMap::new(), |mut acc, d| {
        *acc.entry(d.timestamp.div_euclid(60)).or_default() += 1;
        acc
    });
    let buckets = aggs["per_minute"]["buckets"].as_array().expect("buckets");
    let non_empty: Vec<u64> = buckets
        .iter()
        .map(|b| b["doc_count"].as_u64().unwrap_or(0))
        .filter(|c| *c > 0)
        .collect();
    assert_eq!(non_empty, minutes.values().copied().collect::<Vec<_>>());
}

#[test]
fn search_spans_several_indices() {
    let (_dir, node) = fresh_node(&[]);
    for day in 0..3 {
        let docs = http_logs::generate(100 + day, 50, START + day as i64 * 86_400);
        node.put(
            &format!("/logs-{day}"),
            &json!({"mappings": http_logs::mapping()}),
        );
        load(&node, &format!("logs-{day}"), &docs, 0);
    }
    assert_eq!(total(&node.post("/logs-*/_search", &json!({}))), 150);
    assert_eq!(total(&node.post("/logs-0,logs-2/_search", &json!({}))), 100);
    assert_eq!(total(&node.post("/_search", &json!({}))), 150);
    assert_eq!(
        total(&node.post("/logs-*,-logs-1/_search", &json!({}))),
        100
    );
    assert_eq!(node.post("/logs-0,nope/_search", &json!({})).status, 404);
    assert_eq!(
        total(&node.post("/logs-0,nope/_search?ignore_unavailable=true", &json!({}))),
        50
    );
    assert_eq!(total(&node.post("/nothing-*/_search", &json!({}))), 0);
    let hits = node.post("/logs-*/_search", &json!({"size": 150, "_source": false}));
    let indices: std::collections::BTreeSet<String> = hits.body["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["_index"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(indices.len(), 3);
    assert_eq!(
        node.post("/logs-*/_count", &json!({"query": {"match_all": {}}}))
            .body["count"],
        150
    );
}

#[test]
fn exact_numeric_terms_match_as_indexed() {
    let (_dir, node) = fresh_node(&[]);
    node.put("/n", &json!({"mappings": {"properties": {
        "d": {"type": "double"}, "f": {"type": "float"}, "l": {"type": "long"}, "b": {"type": "boolean"}
    }}}));
    let docs = [
        json!({"d": 2.0, "f": 0.1, "l": 9_007_199_254_740_993_i64, "b": true}),
        json!({"d": 2.5, "f": 3, "l": -4, "b": false}),
    ];
    let lines: Vec<Value> = docs
        .iter()
        .enumerate()
        .flat_map(|(i, d)| [json!({"index": {"_id": i.to_string()}}), d.clone()])
        .collect();
    node.bulk("/n/_bulk?refresh=true", &lines);
    let hits =
        |query: Value| ids(&node.post("/n/_search", &json!({"query": query, "sort": ["_doc"]})));
    assert_eq!(
        hits(json!({"term": {"d": 2}})),
        ["0"],
        "an integral double matches its integer form"
    );
    assert_eq!(hits(json!({"term": {"d": 2.5}})), ["1"]);
    assert_eq!(
        hits(json!({"term": {"f": 0.1}})),
        ["0"],
        "float terms are compared at single precision"
    );
    assert_eq!(hits(json!({"term": {"f": "3"}})), ["1"]);
    assert_eq!(
        hits(json!({"term": {"l": 9_007_199_254_740_993_i64}})),
        ["0"],
        "longs beyond 2^53 stay exact"
    );
    assert_eq!(hits(json!({"term": {"l": 4.5}})), Vec::<String>::new());
    assert_eq!(hits(json!({"term": {"b": false}})), ["1"]);
    assert_eq!(hits(json!({"range": {"d": {"gt": 2}}})), ["1"]);
    assert_eq!(
        hits(json!({"terms": {"l": [-4, 9_007_199_254_740_993_i64]}})),
        ["0", "1"]
    );
}
