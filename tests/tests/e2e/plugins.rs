//! Plugin lifecycle over REST (upload, hot replace under load, config, enable/disable,
//! remove, persistence) and hostile plugins that must never take the node down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Value, json};
use shoal_tests::{Node, test_plugin};

use crate::fresh_node;
use crate::pruning::{load_daily_indices, search, sorted_ids};

fn upload(node: &Node, name: &str, plugin: &str, query: &str) -> shoal_tests::Reply {
    node.raw(
        "PUT",
        &format!("/_plugins/{name}{query}"),
        Some(test_plugin(plugin)),
        "application/wasm",
    )
}

fn use_plugin(node: &Node, name: &str) {
    let reply = node.put(
        "/logs-*/_settings",
        &json!({"index": {"plugins.pruning": name}}),
    );
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

fn one_day() -> Value {
    json!({"size": 100, "query": {"range": {"@timestamp": {"gte": "2024-01-02T00:00:00Z", "lt": "2024-01-03T00:00:00Z"}}}})
}

#[test]
fn hostile_plugins_fail_only_their_call() {
    let (_dir, node) = fresh_node(&[]);
    load_daily_indices(&node, 4);
    let expected = sorted_ids(&search(&node, one_day()));
    assert_eq!(expected.len(), 40);
    for (name, plugin, counter, limits) in [
        ("looper", "test-loop-forever", "deadlines", "&deadline=20ms"),
        // A generous deadline so that fuel, a bound independent of machine load, stops it.
        (
            "burner",
            "test-loop-forever",
            "out_of_fuel",
            "&fuel=2000000&deadline=5s",
        ),
        // A generous deadline so that the 8 MiB memory cap, not time, stops it.
        (
            "hog",
            "test-alloc-unbounded",
            "traps",
            "&max_memory=8mb&deadline=5s",
        ),
        ("trapper", "test-trap", "traps", ""),
        ("snoop", "test-read-file", "errors", ""),
    ] {
        let uploaded = upload(
            &node,
            name,
            plugin,
            &format!("?version=0.1.0&kind=pruning{limits}"),
        );
        assert_eq!(uploaded.status, 200, "{name}: {:?}", uploaded.body);
        use_plugin(&node, name);
        for _ in 0..3 {
            let answer = search(&node, one_day());
            assert_eq!(
                answer["_shards"]["skipped"], 0,
                "{name}: a failed plugin prunes nothing"
            );
            assert_eq!(
                sorted_ids(&answer),
                expected,
                "{name}: results are unchanged"
            );
        }
        let described = node.get(&format!("/_plugins/{name}")).body;
        assert!(
            described["stats"][counter].as_u64() >= Some(3),
            "{name}: {described}"
        );
        assert_eq!(
            node.get("/").status,
            200,
            "{name}: the node keeps answering"
        );
        assert!(
            node.logs_soon(&format!("plugin [{name}]")),
            "{name}: failures are logged with the plugin's name"
        );
    }
    assert!(
        node.logs_soon("memory"),
        "the memory cap is what stopped the hog"
    );
    let burner = node.get("/_plugins/burner").body;
    assert_eq!(burner["limits"]["fuel"], 2_000_000, "{burner}");
    assert_eq!(
        burner["stats"]["deadlines"], 0,
        "fuel, not the deadline, stopped the loop: {burner}"
    );
    assert!(node.logs_soon("plugin [burner] ran out of fuel (2000000 units per call)"));
    for bad in ["0", "lots", "-5"] {
        let refused = upload(
            &node,
            "burner",
            "test-loop-forever",
            &format!("?kind=pruning&fuel={bad}"),
        );
        assert_eq!(refused.status, 400, "fuel={bad}: {:?}", refused.body);
        assert!(
            refused.body["error"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("[fuel]")),
            "{:?}",
            refused.body
        );
    }
    let unmetered = upload(
        &node,
        "burner",
        "test-keep-all",
        "?version=0.2.0&kind=pruning&fuel=unlimited",
    );
    assert_eq!(unmetered.status, 200, "{:?}", unmetered.body);
    assert_eq!(unmetered.body["plugin"]["limits"]["fuel"], Value::Null);
    use_plugin(&node, "burner");
    let answer = search(&node, one_day());
    assert_eq!(sorted_ids(&answer), expected);
    let replaced = node.get("/_plugins/burner").body;
    assert!(
        replaced["stats"]["calls"].as_u64() > burner["stats"]["calls"].as_u64(),
        "{replaced}"
    );
    assert_eq!(
        replaced["stats"]["out_of_fuel"], burner["stats"]["out_of_fuel"],
        "the replacement runs unmetered and fails no call: {replaced}"
    );
    let snoop = node.get("/_plugins/snoop").body;
    assert_eq!(
        snoop["stats"]["traps"], 0,
        "a denied file read is an error the plugin returns, not a trap"
    );
    assert!(
        node.logs_soon("file access denied"),
        "the plugin saw the denial"
    );
    let looper = node.get("/_plugins/looper").body;
    assert!(
        looper["stats"]["time_p99_micros"]
            .as_f64()
            .is_some_and(|micros| micros > 0.0 && micros < 1_000_000.0),
        "the deadline stops the loop: {looper}"
    );
}

#[test]
fn a_plugin_built_against_the_first_wit_version_still_loads_and_runs() {
    let (_dir, node) = fresh_node(&[]);
    load_daily_indices(&node, 4);
    let expected = sorted_ids(&search(&node, one_day()));
    let uploaded = upload(&node, "veteran", "test-wit-1-0", "?kind=pruning");
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.body);
    assert_eq!(uploaded.body["plugin"]["kind"], "pruning");
    use_plugin(&node, "veteran");
    assert_eq!(sorted_ids(&search(&node, one_day())), expected);
    let veteran = node.get("/_plugins/veteran").body;
    assert!(veteran["stats"]["calls"].as_u64() > Some(0), "{veteran}");
    assert_eq!(veteran["stats"]["errors"], 0, "{veteran}");
    assert_eq!(veteran["stats"]["traps"], 0, "{veteran}");
    assert!(node.logs_soon("built against shoal:plugin@1.0.0, keeping"));
}

#[test]
fn lifecycle_hot_replace_and_persistence() {
    let (dir, mut node) = fresh_node(&[]);
    load_daily_indices(&node, 4);

    let bad_kind = upload(&node, "keep", "test-keep-all", "?kind=repository");
    assert_eq!(bad_kind.status, 400);
    assert!(
        bad_kind.body["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("plugin [keep]")),
        "{:?}",
        bad_kind.body
    );
    assert_eq!(
        node.get("/_plugins/keep").status,
        404,
        "a refused upload installs nothing"
    );
    let garbage = node.raw(
        "PUT",
        "/_plugins/junk",
        Some(b"not wasm at all".to_vec()),
        "application/wasm",
    );
    assert_eq!(garbage.status, 400);
    assert!(
        garbage.body["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("plugin [junk]"))
    );
    assert_eq!(
        node.raw(
            "PUT",
            "/_plugins/empty",
            Some(Vec::new()),
            "application/wasm"
        )
        .status,
        400
    );
    assert_eq!(
        node.raw(
            "PUT",
            "/_plugins/Bad%20Name",
            Some(test_plugin("test-trap")),
            "application/wasm"
        )
        .status,
        400
    );

    let uploaded = upload(
        &node,
        "keep",
        "test-keep-all",
        "?version=1.0.0&kind=pruning",
    );
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.body);
    assert_eq!(uploaded.body["plugin"]["version"], "1.0.0");
    assert_eq!(uploaded.body["plugin"]["kind"], "pruning");
    use_plugin(&node, "keep");
    assert_eq!(
        search(&node, one_day())["_shards"]["skipped"],
        0,
        "keep-all keeps every shard"
    );
    let configured = node.put("/_plugins/keep/_config", &json!({"threshold": 3}));
    assert_eq!(configured.status, 200);
    assert_eq!(
        node.get("/_plugins/keep").body["config"],
        json!({"threshold": 3})
    );
    search(&node, one_day());
    assert!(
        node.logs_soon(
            r#"keeping 8 shards of 4 indices (first: logs-2024.01.01) for logs-* on @timestamp, config {\"threshold\":3}"#
        ),
        "the plugin reads the search's context and its config through the host"
    );
    assert_eq!(node.put("/_plugins/keep/_config", &json!([1])).status, 400);

    // Hot replace under a running search load: no search fails, and the new version decides.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let searches = Arc::new(AtomicU64::new(0));
    let load = {
        let (url, stop, failures, searches) = (
            node.base_url.clone(),
            stop.clone(),
            failures.clone(),
            searches.clone(),
        );
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = client
                    .post(format!("{url}/logs-*/_search"))
                    .json(&one_day())
                    .send();
                let ok = reply
                    .ok()
                    .filter(|r| r.status().is_success())
                    .and_then(|r| r.json::<Value>().ok())
                    .is_some_and(|b| b["hits"]["total"]["value"] == 40);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                searches.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for round in 0..6 {
        let (plugin, version) = if round % 2 == 0 {
            ("time-series-pruning", "2.0.0")
        } else {
            ("test-keep-all", "1.1.0")
        };
        let replaced = upload(&node, "keep", plugin, &format!("?version={version}"));
        assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    }
    while searches.load(Ordering::Relaxed) < 20 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no search failed during hot replacement"
    );
    let replaced = upload(&node, "keep", "time-series-pruning", "?version=2.0.0");
    assert_eq!(replaced.status, 200);
    assert_eq!(node.get("/_plugins/keep").body["version"], "2.0.0");
    assert_eq!(
        search(&node, one_day())["_shards"]["skipped"],
        6,
        "the new version prunes"
    );
    let wrong_kind_replace = node.raw(
        "PUT",
        "/_plugins/keep",
        Some(test_plugin("test-trap")),
        "application/wasm",
    );
    assert_eq!(
        wrong_kind_replace.status, 200,
        "same kind (pruning) replaces fine"
    );
    upload(&node, "keep", "time-series-pruning", "?version=2.0.0");

    // Enable/disable, remove, and what survives a restart.
    assert_eq!(
        node.post("/_plugins/keep/_disable", &json!({})).body["plugin"]["state"],
        "disabled"
    );
    assert_eq!(
        search(&node, one_day())["_shards"]["skipped"],
        0,
        "a disabled plugin prunes nothing"
    );
    upload(&node, "spare", "test-keep-all", "");
    assert_eq!(node.delete("/_plugins/spare").status, 200);
    assert_eq!(node.get("/_plugins/spare").status, 404);
    assert_eq!(
        node.delete("/_plugins/time-series-pruning").status,
        400,
        "shipped plugins are disabled, not removed"
    );
    assert_eq!(
        node.raw(
            "PUT",
            "/_plugins/time-series-pruning",
            Some(test_plugin("test-trap")),
            "application/wasm"
        )
        .status,
        400
    );

    node.restart().expect("restart");
    assert!(
        node.logs_soon("\"cached\":true"),
        "a restart loads compiled plugins from the cache"
    );
    let cached = std::fs::read_dir(dir.path().join("data/_plugins/.cache"))
        .expect("cache dir")
        .count();
    assert!(
        cached >= 2,
        "the shipped and uploaded plugins are cached, found {cached}"
    );
    let keep = node.get("/_plugins/keep").body;
    assert_eq!(keep["version"], "2.0.0");
    assert_eq!(keep["state"], "disabled");
    assert_eq!(keep["config"], json!({"threshold": 3}));
    assert_eq!(node.get("/_plugins/spare").status, 404);
    node.post("/_plugins/keep/_enable", &json!({}));
    assert_eq!(search(&node, one_day())["_shards"]["skipped"], 6);
}
