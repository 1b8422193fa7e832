//! End-to-end tests: each starts a real node process and drives it over HTTP.

mod cli;
mod cluster_snapshots;
mod cluster_state;
mod compat;
mod documents;
mod durability;
mod harness;
mod indices;
mod membership;
mod plugin_crates;
mod plugins;
mod pruning;
mod replication;
mod repository_plugin;
mod s3;
mod search;
mod slm;
mod snapshots;
mod zones;

use shoal_tests::Node;

pub const BIN: &str = env!("CARGO_BIN_EXE_shoal-node");

/// Runs the node binary with `args` (a CLI command); returns success and stdout+stderr.
pub fn shoal(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs");
    (output.status.success(), printed(&output))
}

/// What a finished process printed: stdout, then stderr.
pub fn printed(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A fresh node in its own temporary data directory (kept alive by the returned guard).
pub fn fresh_node(extra_args: &[&str]) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(BIN, &dir.path().join("data"), extra_args).expect("node starts");
    (dir, node)
}
