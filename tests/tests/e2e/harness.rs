//! The harness itself: a node that dies without the test asking fails the test.

use shoal_tests::Node;

use crate::BIN;

#[test]
fn a_node_that_died_on_its_own_fails_the_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::start(BIN, &dir.path().join("node"), &[]).expect("node starts");
    let pid = node.pid().expect("running").to_string();
    // Ended behind the harness's back, as a crash would: by a signal the node does not
    // handle, whose default is to terminate.
    let ended = std::process::Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .expect("kill runs");
    assert!(ended.success());
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.kill()));
    let message = stopped
        .expect_err("stopping a node that already died must fail the test")
        .downcast::<String>()
        .map(|message| *message)
        .unwrap_or_default();
    assert!(message.contains("exited on its own"), "{message}");
    assert!(message.contains("signal: 10"), "{message}");
}
