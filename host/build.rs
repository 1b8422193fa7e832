//! Builds the plugins workspace (`plugins/`) as `wasm32-wasip2` components into
//! `target/plugins`, and copies the ones Shoal ships into `OUT_DIR` so the node embeds them and
//! a fresh node has them with no extra step. The test plugins stay in `target/plugins` for the
//! end-to-end tests. Installs the `wasm32-wasip2` target with rustup when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

const SHIPPED: &[&str] = &["time-series-pruning", "fs-repository", "s3-repository"];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ lives in the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for watched in [
        "wit/plugin.wit",
        "plugin-sdk/src/lib.rs",
        "plugin-sdk/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    ensure_target();
    let plugins_dir = root.join("plugins");
    println!("cargo:rerun-if-changed={}", plugins_dir.display());
    for entry in walk(&plugins_dir) {
        println!("cargo:rerun-if-changed={}", entry.display());
    }
    let built = build_plugins(&root, &plugins_dir);
    for name in SHIPPED {
        let wasm = built.join(format!("{}.wasm", name.replace('-', "_")));
        std::fs::copy(&wasm, out_dir.join(format!("{name}.wasm"))).expect("copy the built plugin");
    }
}

/// Every source file under `dir` (cargo's directory watch is not recursive for changes in files).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The outer build's flags and target are for the host, not for wasm.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        command.env_remove(var);
    }
    command
}

/// Builds every plugin; returns the directory holding the `.wasm` components.
fn build_plugins(root: &Path, plugins_dir: &Path) -> PathBuf {
    let target_dir = root.join("target").join("plugins");
    let status = cargo()
        .args([
            "build",
            "--release",
            "--workspace",
            "--target",
            TARGET,
            "--manifest-path",
        ])
        .arg(plugins_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .unwrap_or_else(|err| panic!("running cargo to build the plugins: {err}"));
    assert!(status.success(), "building the plugins for {TARGET} failed");
    target_dir.join(TARGET).join("release")
}

fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output();
    let installed = libdir
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        .is_some_and(|dir| dir.exists());
    if installed {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "the {TARGET} target is missing and `rustup target add {TARGET}` failed"
    );
}
