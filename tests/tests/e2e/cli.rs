//! The `shoal plugin` command line: the offline conformance kit and managing a live node.

use shoal_tests::plugin_path;

use crate::{fresh_node, shoal};

#[test]
fn plugin_check_passes_shipped_plugins_and_fails_broken_ones() {
    let shipped = plugin_path("time-series-pruning");
    let repository = plugin_path("fs-repository");
    let (ok, report) = shoal(&["plugin", "check", repository.to_str().expect("utf8 path")]);
    assert!(ok, "{report}");
    assert!(
        report.contains("kind:    Repository")
            && report.contains("PASS  a streamed blob over several chunks")
            && report.contains("result: PASS (9 checks)"),
        "{report}"
    );

    let (ok, report) = shoal(&["plugin", "check", shipped.to_str().expect("utf8 path")]);
    assert!(ok, "{report}");
    assert!(
        report.contains("kind:    Pruning") && report.contains("result: PASS"),
        "{report}"
    );
    assert!(!report.contains("FAIL"), "{report}");

    // Every kind has its contract: the test policies pass theirs.
    for (plugin, kind, checks) in [
        ("test-isolation-by-cost", "QueryIsolation", 7),
        ("test-switchover-by-latency", "Switchover", 8),
    ] {
        let (ok, report) = shoal(&["plugin", "check", &plugin_path(plugin).to_string_lossy()]);
        assert!(ok, "{report}");
        assert!(
            report.contains(&format!("kind:    {kind}"))
                && report.contains(&format!("result: PASS ({checks} checks)")),
            "{report}"
        );
    }
    let (ok, report) = shoal(&[
        "plugin",
        "check",
        &plugin_path("test-switchover-broken").to_string_lossy(),
    ]);
    assert!(
        !ok,
        "a policy whose answers break the contract fails the check"
    );
    assert!(
        report.contains("FAIL  judges every node it is asked about, in order: plugin [test_switchover_broken] returned an error: judged 2 nodes but was asked about 3")
            && report.contains("ranked copy 3 but only 3 copies were offered")
            && report.contains("result: FAIL (8 failed)"),
        "the report names each broken promise: {report}"
    );

    let (ok, report) = shoal(&[
        "plugin",
        "check",
        plugin_path("test-trap").to_str().expect("utf8 path"),
    ]);
    assert!(!ok, "a trapping plugin fails the check");
    assert!(
        report.contains("FAIL") && report.contains("unreachable"),
        "the report says why: {report}"
    );

    let (ok, report) = shoal(&[
        "plugin",
        "check",
        plugin_path("test-loop-forever")
            .to_str()
            .expect("utf8 path"),
    ]);
    assert!(!ok);
    assert!(report.contains("exceeded its 10 ms deadline"), "{report}");
    assert!(
        report.contains("reran 2 time(s) after a call missed its deadline"),
        "a deadline missed on every attempt is the plugin's, not a busy machine's: {report}"
    );

    let junk = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(junk.path(), b"definitely not wasm").expect("write");
    let (ok, report) = shoal(&["plugin", "check", junk.path().to_str().expect("utf8 path")]);
    assert!(!ok);
    assert!(report.contains("could not be loaded"), "{report}");

    let (ok, report) = shoal(&["plugin", "check", "/no/such/file.wasm"]);
    assert!(!ok);
    assert!(report.contains("reading /no/such/file.wasm"), "{report}");
}

#[test]
fn plugin_commands_manage_a_running_node() {
    let (_dir, node) = fresh_node(&[]);
    let url = node.base_url.as_str();
    let keep = plugin_path("test-keep-all");
    let (ok, out) = shoal(&[
        "plugin",
        "install",
        "keep",
        keep.to_str().expect("utf8 path"),
        "--version",
        "1.2.3",
        "--kind",
        "pruning",
        "--url",
        url,
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("installed keep: pruning plugin, version 1.2.3"),
        "{out}"
    );
    let (ok, out) = shoal(&["plugin", "list", "--url", url]);
    assert!(ok, "{out}");
    assert!(
        out.contains("keep") && out.contains("time-series-pruning") && out.contains("1.2.3"),
        "{out}"
    );
    let (ok, out) = shoal(&["plugin", "disable", "keep", "--url", url]);
    assert!(ok, "{out}");
    assert_eq!(node.get("/_plugins/keep").body["state"], "disabled");
    let (ok, _) = shoal(&["plugin", "enable", "keep", "--url", url]);
    assert!(ok);
    assert_eq!(node.get("/_plugins/keep").body["state"], "enabled");
    let (ok, out) = shoal(&[
        "plugin",
        "install",
        "bad",
        keep.to_str().expect("utf8 path"),
        "--kind",
        "repository",
        "--url",
        url,
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("400") && out.contains("plugin [bad]"), "{out}");
    let (ok, out) = shoal(&["plugin", "remove", "keep", "--url", url]);
    assert!(ok, "{out}");
    assert_eq!(node.get("/_plugins/keep").status, 404);
    let (ok, out) = shoal(&["plugin", "remove", "time-series-pruning", "--url", url]);
    assert!(!ok, "{out}");
    let (ok, out) = shoal(&["plugin", "list", "--url", "http://127.0.0.1:9"]);
    assert!(!ok);
    assert!(out.contains("cannot reach the node"), "{out}");
}
