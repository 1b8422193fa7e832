//! Builds the plugins Shoal ships (`plugins/*`) as `wasm32-wasip2` components and leaves them
//! in `OUT_DIR`, so the node embeds them and a fresh node has them with no extra step.
//! Installs the `wasm32-wasip2` target with rustup when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

const SHIPPED: &[&str] = &["time-series-pruning"];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ lives in the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for watched in ["wit", "plugin-sdk/src", "plugin-sdk/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    ensure_target();
    for name in SHIPPED {
        let plugin_dir = root.join("plugins").join(name);
        println!(
            "cargo:rerun-if-changed={}",
            plugin_dir.join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            plugin_dir.join("Cargo.toml").display()
        );
        let wasm = build_plugin(&root, &plugin_dir, name);
        std::fs::copy(&wasm, out_dir.join(format!("{name}.wasm"))).expect("copy the built plugin");
    }
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

fn build_plugin(root: &Path, plugin_dir: &Path, name: &str) -> PathBuf {
    let target_dir = root.join("target").join("plugins");
    let status = cargo()
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(plugin_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .unwrap_or_else(|err| panic!("running cargo to build plugin {name}: {err}"));
    assert!(
        status.success(),
        "building plugin {name} for {TARGET} failed"
    );
    target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")))
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
