//! Snapshot lifecycle policies on a real node: a policy on a short schedule takes snapshots by
//! itself, named with date math, and its retention deletes the ones it no longer keeps.

use std::time::Duration;

use serde_json::{Value, json};
use shoal_tests::{Node, wait_for};

use crate::BIN;

fn policy_snapshots(node: &Node, repo: &str, policy: &str) -> Vec<String> {
    let reply = node.get(&format!("/_snapshot/{repo}/_all"));
    reply.body["snapshots"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|s| s["metadata"]["policy"] == json!(policy))
                .filter_map(|s| s["snapshot"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_scheduled_policy_snapshots_by_itself_and_retention_deletes_the_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = shoal_tests::node_with_path_repo(BIN, dir.path()).expect("node starts");
    shoal_tests::register_fs_repository(&node, "r", "r");
    let indexed = node.put("/docs/_doc/1?refresh=true", &json!({"n": 1}));
    assert_eq!(indexed.status, 201, "{:?}", indexed.body);

    let policy = json!({
        "schedule": "*/2 * * * * ?",
        "name": "<often-{now/d}>",
        "repository": "r",
        "config": {"indices": ["docs"]},
        "retention": {"max_count": 2}
    });
    let reply = node.put("/_slm/policy/often", &policy);
    assert_eq!(reply.status, 200, "{:?}", reply.body);

    // Retention runs after each recorded run, so the deletion is counted a moment later.
    wait_for(
        Duration::from_secs(90),
        "three scheduled runs and a retention deletion",
        || {
            let reply = node.get("/_slm/policy/often");
            let stats = &reply.body["often"]["stats"];
            (stats["snapshots_taken"].as_u64() >= Some(3)
                && stats["snapshots_deleted"].as_u64() >= Some(1))
            .then_some(())
        },
    );
    let kept = wait_for(Duration::from_secs(30), "retention to settle", || {
        let kept = policy_snapshots(&node, "r", "often");
        (kept.len() <= 2 && !kept.is_empty()).then_some(kept)
    });
    let today = chrono_like_today(&node);
    assert!(
        kept.iter()
            .all(|name| name.starts_with(&format!("often-{today}-"))),
        "{kept:?} vs {today}"
    );

    let executed = node.post("/_slm/policy/often/_execute", &json!({}));
    assert_eq!(executed.status, 200, "{:?}", executed.body);
    let name = executed.body["snapshot_name"]
        .as_str()
        .expect("name")
        .to_string();
    assert_eq!(
        node.get(&format!("/_snapshot/r/{name}")).body["snapshots"][0]["state"],
        "SUCCESS"
    );
    let totals = node.get("/_slm/stats");
    assert!(
        totals.body["total_snapshots_taken"].as_u64() >= Some(4),
        "{:?}",
        totals.body
    );

    // Policies live in the cluster state: they survive a restart.
    assert_eq!(node.delete("/_slm/policy/often").status, 200);
    let nightly =
        json!({"schedule": "0 30 1 * * ?", "name": "<nightly-{now/d}>", "repository": "r"});
    assert_eq!(node.put("/_slm/policy/nightly", &nightly).status, 200);
    node.restart().expect("restart");
    let listed = node.get("/_slm/policy");
    assert!(
        listed.body.get("nightly").is_some() && listed.body.get("often").is_none(),
        "{:?}",
        listed.body
    );
    assert!(
        listed.body["nightly"]["next_execution_millis"]
            .as_i64()
            .is_some()
    );
}

/// Today's date as Elasticsearch date math `{now/d}` renders it, from the node's own clock
/// (the `Date` header of its answer would need parsing; `_cat/health`'s epoch is simpler).
fn chrono_like_today(node: &Node) -> String {
    let reply = node.get("/_cat/health?format=json");
    let epoch: i64 = reply.body[0]["epoch"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("epoch");
    let days = epoch.div_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date dependency in the tests.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}.{month:02}.{day:02}")
}

#[test]
fn policies_are_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = shoal_tests::node_with_path_repo(BIN, dir.path()).expect("node starts");
    shoal_tests::register_fs_repository(&node, "r", "r");
    let base = json!({"schedule": "0 30 1 * * ?", "name": "<n-{now/d}>", "repository": "r"});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        node.put("/_slm/policy/p", &body)
    };
    assert_eq!(with("schedule", json!("whenever")).status, 400);
    assert_eq!(with("repository", json!("missing")).status, 400);
    assert_eq!(with("name", json!("<n-{now-1d}>")).status, 400);
    assert_eq!(with("retention", json!({"max_cnt": 2})).status, 400);
    assert_eq!(
        with("retention", json!({"expire_after": "soon"})).status,
        400
    );
    assert_eq!(node.put("/_slm/policy/_bad", &base).status, 400);
    assert_eq!(node.get("/_slm/policy/p").status, 404, "nothing was stored");
    assert_eq!(node.post("/_slm/policy/p/_execute", &json!({})).status, 404);
    assert_eq!(node.delete("/_slm/policy/p").status, 404);
}
