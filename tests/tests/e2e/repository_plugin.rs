//! The shipped `fs-repository` plugin (the real `.wasm` built from `plugins/`) through the
//! host's repository call site: the plugin sees only the directory it was granted, blobs appear
//! only when complete and matching their checksum, and a read-only grant cannot write.

use sha2::{Digest, Sha256};
use shoal::plugins::grants::{Grants, grant_repository_dir};
use shoal::plugins::repository::{RepositoryError, RepositorySession};
use shoal::plugins::{PluginHost, PluginKind};

/// A plugin host as a fresh node has it: `fs-repository` is shipped, embedded in the binary.
fn host_with_fs_repository() -> PluginHost {
    let host = PluginHost::new(None).expect("plugin host");
    let plugin = host.get("fs-repository").expect("fs-repository is shipped");
    assert!(plugin.shipped);
    assert_eq!(plugin.kind, PluginKind::Repository);
    host
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn blobs_round_trip_inside_the_granted_directory_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path_repo = vec![dir.path().join("backups")];
    std::fs::create_dir_all(&path_repo[0]).expect("path_repo");
    std::fs::write(dir.path().join("secret.txt"), "not for plugins").expect("secret");
    let granted = grant_repository_dir("nightly", &path_repo, false).expect("grant");
    let host = host_with_fs_repository();
    let plugin = host.get("fs-repository").expect("installed");
    let mut repo = RepositorySession::new(plugin.clone(), Grants::directory(granted.clone()));

    repo.verify()
        .expect("verify writes, reads and deletes a probe");
    repo.put("indices/abc/0/seg_1", b"segment bytes")
        .expect("put");
    assert!(
        granted.host_path.join("indices/abc/0/seg_1").is_file(),
        "the blob is a file under the granted directory"
    );
    assert_eq!(
        repo.get("indices/abc/0/seg_1", 0, None).expect("get"),
        b"segment bytes"
    );
    assert_eq!(
        repo.get("indices/abc/0/seg_1", 8, Some(3))
            .expect("ranged get"),
        b"byt"
    );
    assert!(repo.exists("indices/abc/0/seg_1").expect("exists"));
    assert!(!repo.exists("indices/abc/0/nope").expect("exists"));

    // Larger than two streaming chunks, so the upload spans several calls on one instance.
    let big: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
    repo.put_streamed(
        "indices/abc/0/seg_2",
        big.len() as u64,
        &hex(&big),
        &big[..],
    )
    .expect("streamed put");
    assert_eq!(repo.get("indices/abc/0/seg_2", 0, None).expect("get"), big);

    let names: Vec<(String, u64)> = repo
        .list("indices/abc/")
        .expect("list")
        .into_iter()
        .map(|blob| (blob.name, blob.size))
        .collect();
    assert_eq!(
        names,
        vec![
            ("indices/abc/0/seg_1".to_string(), 13),
            ("indices/abc/0/seg_2".to_string(), big.len() as u64)
        ]
    );
    repo.delete("indices/abc/0/seg_1").expect("delete");
    assert!(!repo.exists("indices/abc/0/seg_1").expect("exists"));

    // Nothing outside the grant is reachable, whatever the name says.
    for name in ["../secret.txt", "/etc/passwd", "a/../../secret.txt", ""] {
        let err = repo.get(name, 0, None).expect_err(name);
        assert!(
            matches!(err, RepositoryError::Invalid { .. }),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains("fs-repository"),
            "errors name the plugin: {err}"
        );
    }
    assert_eq!(plugin.describe()["stats"]["traps"], 0);
}

#[test]
fn a_blob_with_the_wrong_length_or_checksum_never_becomes_visible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path_repo = vec![dir.path().to_path_buf()];
    let granted = grant_repository_dir("repo", &path_repo, false).expect("grant");
    let host = host_with_fs_repository();
    let mut repo = RepositorySession::new(
        host.get("fs-repository").expect("installed"),
        Grants::directory(granted),
    );

    let data = b"twelve bytes";
    let err = repo
        .put_streamed(
            "blob",
            data.len() as u64,
            &hex(b"something else"),
            &data[..],
        )
        .expect_err("checksum mismatch");
    assert!(
        matches!(err, RepositoryError::Invalid { .. }) && err.to_string().contains("SHA-256"),
        "{err}"
    );
    let err = repo
        .put_streamed("blob", 100, &hex(data), &data[..])
        .expect_err("length mismatch");
    assert!(err.to_string().contains("announced"), "{err}");
    assert!(!repo.exists("blob").expect("exists"));
    assert!(
        repo.list("").expect("list").is_empty(),
        "no partial upload is listed"
    );
    let err = repo.get("blob", 0, None).expect_err("absent");
    assert!(matches!(err, RepositoryError::NotFound { .. }), "{err}");
    assert!(!err.is_retryable());
}

#[test]
fn a_read_only_grant_reads_but_cannot_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path_repo = vec![dir.path().to_path_buf()];
    let writable = grant_repository_dir("shared", &path_repo, false).expect("grant");
    let host = host_with_fs_repository();
    let plugin = host.get("fs-repository").expect("installed");
    RepositorySession::new(plugin.clone(), Grants::directory(writable))
        .put("snap-1/meta", b"{}")
        .expect("the writing cluster puts a blob");

    let read_only = grant_repository_dir("shared", &path_repo, true).expect("read-only grant");
    let mut repo = RepositorySession::new(plugin, Grants::directory(read_only));
    assert_eq!(repo.get("snap-1/meta", 0, None).expect("readable"), b"{}");
    let err = repo.put("snap-2/meta", b"{}").expect_err("read-only");
    assert!(
        matches!(
            err,
            RepositoryError::AccessDenied { .. } | RepositoryError::Unavailable { .. }
        ),
        "{err}"
    );
    assert!(!dir.path().join("shared/snap-2/meta").exists());
    assert!(
        repo.delete("snap-1/meta").is_err(),
        "a read-only repository cannot delete"
    );
    assert!(dir.path().join("shared/snap-1/meta").exists());
}

/// Serves `body` to every connection on a fresh 127.0.0.1 port; returns the port.
fn serve_forever(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

#[test]
fn outgoing_http_reaches_granted_hosts_only() {
    let port = serve_forever("hello from the granted host");
    let host = PluginHost::new(None).expect("plugin host");
    let bytes = shoal_tests::test_plugin("test-http-fetch");
    let plugin = host
        .install(shoal::plugins::InstallRequest {
            name: "http-fetch",
            version: "0.1.0",
            bytes: &bytes,
            shipped: false,
            expected: Some(PluginKind::Repository),
            limits: shoal::plugins::LimitsOverride::default(),
        })
        .expect("installs");
    let url = format!("http://127.0.0.1:{port}/blob");

    let mut granted = RepositorySession::new(
        plugin.clone(),
        Grants::http_hosts(vec![format!("127.0.0.1:{port}")]),
    );
    assert_eq!(
        granted.get(&url, 0, None).expect("granted host answers"),
        b"hello from the granted host"
    );

    for grants in [
        Grants::none(),
        Grants::http_hosts(vec![format!("127.0.0.1:{}", port + 1)]),
    ] {
        let mut session = RepositorySession::new(plugin.clone(), grants);
        let err = session.get(&url, 0, None).expect_err("not granted");
        assert!(matches!(err, RepositoryError::AccessDenied { .. }), "{err}");
    }
}
