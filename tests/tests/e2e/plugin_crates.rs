//! The shipped plugins' own unit tests (S3 settings and SigV4 signatures checked against the
//! examples AWS publishes, ...). The plugins workspace builds for wasm and sits outside this
//! one, so this runs its tests natively with a cargo of its own.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn shipped_plugin_crates_pass_their_unit_tests() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_path_buf();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // This run's flags and target directory belong to the outer workspace.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cargo.env_remove(var);
    }
    let output = cargo
        .current_dir(root.join("plugins"))
        .args(["test", "--lib", "--target-dir"])
        .arg(root.join("target").join("plugins-native"))
        .args([
            "-p",
            "time-series-pruning",
            "-p",
            "fs-repository",
            "-p",
            "s3-repository",
        ])
        .output()
        .expect("cargo runs");
    let report = crate::printed(&output);
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains("reproduces_the_signatures_aws_publishes ... ok"),
        "the SigV4 known-answer test ran: {report}"
    );
}
