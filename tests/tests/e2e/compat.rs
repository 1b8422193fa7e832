//! Drives a node with the official `opensearch-py` client, installed into a virtualenv under
//! `target/` by this test's setup (PyPI is one of the registries this project may use).

use std::path::PathBuf;
use std::process::Command;

use crate::fresh_node;

fn python_with_opensearch() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py-compat");
    let python = target.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import opensearchpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let created = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&target)
            .status()
            .expect("python3 runs");
        assert!(created.success(), "creating the virtualenv failed");
        let installed = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "opensearch-py==2.8.0",
            ])
            .status()
            .expect("pip runs");
        assert!(installed.success(), "installing opensearch-py failed");
    }
    python
}

#[test]
fn opensearch_py_client_works() {
    let python = python_with_opensearch();
    let (_dir, node) = fresh_node(&[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compat/opensearch_py.py");
    let output = Command::new(python)
        .arg(script)
        .arg(&node.base_url)
        .output()
        .expect("script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "opensearch-py run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("compat ok"), "{stdout}");
}
