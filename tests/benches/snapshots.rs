//! Snapshot benchmark (prints figures, asserts nothing about speed), in one run on one node:
//! snapshot and restore throughput of an http_logs index to the `fs-repository` plugin versus
//! `cp -r` of the same shard files on the same disk, the time and bytes of a second
//! snapshot of the unchanged index, and snapshot and restore throughput to the
//! `s3-repository` plugin on a local S3 server (s3s-fs, on the same disk).
//!
//! `cargo bench -p shoal-tests --bench snapshots` (`SHOAL_BENCH_DOCS`, default 3000000: about 300 MiB of index files;
//! `SHOAL_BENCH_ROUNDS`, default 3).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_tests::s3::S3Server;
use shoal_tests::{Node, dir_size, env_usize, http_logs};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-node");
const S3_BIN: &str = env!("CARGO_BIN_EXE_s3-server");

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

/// The middle duration (sorts `rounds`).
fn median(rounds: &mut [Duration]) -> Duration {
    rounds.sort();
    rounds[rounds.len() / 2]
}

/// "min .. max" of the rounds, so a reader sees how noisy the machine was.
fn spread(rounds: &[Duration]) -> String {
    let min = rounds.iter().min().copied().unwrap_or_default();
    let max = rounds.iter().max().copied().unwrap_or_default();
    format!("{min:.2?} .. {max:.2?}")
}

/// Flushes every dirty page on the machine, so the next measurement starts from the same state.
fn sync() {
    let status = Command::new("sync").status().expect("sync runs");
    assert!(status.success());
}

fn wait_for_green(node: &Node) {
    let health = node.get("/_cluster/health?wait_for_status=green&timeout=60s");
    assert_eq!(health.body["status"], "green", "{:?}", health.body);
}

/// Copies the shard index directories (what a snapshot stores; not the translogs) to a new
/// directory under `scratch`; returns how long `cp -r` took, and how long until the copy was
/// also durable (fsynced file by file: a machine-wide `sync` would also flush whatever else is
/// dirty). The copy is removed again.
fn copy_shard_files(
    indices: &Path,
    index_dirs: &[PathBuf],
    scratch: &Path,
) -> (Duration, Duration) {
    let copy = scratch.join("copy");
    std::fs::create_dir_all(&copy).expect("copy dir");
    sync();
    let started = Instant::now();
    let status = Command::new("cp")
        .current_dir(indices)
        .arg("-r")
        .arg("--parents")
        // Index directories are uuids, which may start with '-'.
        .arg("--")
        .args(index_dirs)
        .arg(&copy)
        .status()
        .expect("cp runs");
    let cp_took = started.elapsed();
    assert!(status.success());
    fsync_tree(&copy);
    let durable_took = started.elapsed();
    std::fs::remove_dir_all(&copy).expect("remove the copy");
    (cp_took, durable_took)
}

fn timed(node: &Node, method: &str, path: &str, body: &Value) -> (Duration, Value) {
    let started = Instant::now();
    let reply = node.request(method, path, Some(body));
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    (took, reply.body)
}

/// Snapshots the `logs` index into `repository`: how long it took and how many bytes it
/// uploaded.
fn snapshot_logs(node: &Node, repository: &str, snapshot: &str) -> (Duration, u64) {
    let (took, reply) = timed(
        node,
        "PUT",
        &format!("/_snapshot/{repository}/{snapshot}?wait_for_completion=true"),
        &json!({"indices": "logs"}),
    );
    let uploaded = reply["snapshot"]["stats"]["incremental"]["size_in_bytes"].as_u64();
    (
        took,
        uploaded.expect("the snapshot reports its uploaded bytes"),
    )
}

/// Deletes `logs` and restores it from snapshot `s1` of `repository`, checking that every
/// document came back; returns how long the restore took.
fn restore_logs(node: &Node, repository: &str, doc_count: usize) -> Duration {
    assert_eq!(node.delete("/logs").status, 200);
    sync();
    let (took, _) = timed(
        node,
        "POST",
        &format!("/_snapshot/{repository}/s1/_restore?wait_for_completion=true"),
        &json!({"indices": "logs"}),
    );
    let count = node.get("/logs/_count").body["count"].as_u64().unwrap_or(0);
    assert_eq!(
        count as usize, doc_count,
        "the restore from [{repository}] is complete"
    );
    took
}

/// The `{index uuid}/{shard}/index` directories under `indices`, relative to it.
fn shard_index_dirs(indices: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for index in std::fs::read_dir(indices).expect("indices").flatten() {
        for shard in std::fs::read_dir(index.path()).expect("shards").flatten() {
            let dir = shard.path().join("index");
            if dir.is_dir() {
                dirs.push(
                    dir.strip_prefix(indices)
                        .expect("under indices")
                        .to_path_buf(),
                );
            }
        }
    }
    dirs
}

/// The files (and their sizes) under `dir`.
fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(listing(&path));
        } else {
            let size = entry.metadata().map_or(0, |meta| meta.len());
            files.push((path, size));
        }
    }
    files.sort();
    files
}

/// Waits (up to two minutes) until no file under `dir` has changed for two seconds: the merges
/// a flush starts would otherwise share the cores with what is measured.
fn wait_until_quiet(dir: &Path) {
    let mut before = listing(dir);
    for _ in 0..60 {
        std::thread::sleep(Duration::from_secs(2));
        let now = listing(dir);
        if now == before {
            return;
        }
        before = now;
    }
}

/// Makes every file and directory under `dir` durable.
fn fsync_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            fsync_tree(&path);
        } else {
            std::fs::File::open(&path)
                .and_then(|file| file.sync_all())
                .expect("fsync file");
        }
    }
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .expect("fsync dir");
}

fn main() {
    let doc_count = env_usize("SHOAL_BENCH_DOCS", 3_000_000);
    let rounds = env_usize("SHOAL_BENCH_ROUNDS", 3).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).expect("repos");
    let repos = repos.display().to_string();
    let mut node = Node::start_with_env(
        BIN,
        &data,
        &["--path-repo", &repos],
        &S3Server::credentials_env(),
    )
    .expect("node starts");
    let created = node.put(
        "/logs",
        &json!({"settings": {"number_of_shards": 2, "number_of_replicas": 0, "refresh_interval": "-1"}, "mappings": http_logs::mapping()}),
    );
    assert_eq!(created.status, 200, "{:?}", created.body);
    let docs = http_logs::generate(7, doc_count, 1_700_000_000);
    for batch in docs.chunks(5000) {
        let mut body = Vec::new();
        for doc in batch {
            body.extend_from_slice(b"{\"index\":{}}\n");
            body.extend(serde_json::to_vec(&doc.to_json()).unwrap_or_default());
            body.push(b'\n');
        }
        let (status, _) = node.raw_bytes("POST", "/logs/_bulk", body, "application/x-ndjson");
        assert_eq!(status, 200);
    }
    assert_eq!(node.post("/logs/_flush", &json!({})).status, 200);

    let indices = data.join("indices");
    wait_until_quiet(&indices);
    let index_dirs = shard_index_dirs(&indices);
    let index_bytes: u64 = index_dirs.iter().map(|d| dir_size(&indices.join(d))).sum();

    // The disk and the page cache are shared with other work, so each contender runs several
    // rounds, interleaved (a disturbance hits both alike), each after a `sync` (so no round pays
    // for dirty pages another left), and the medians are compared.
    let mut cp_rounds = Vec::new();
    let mut durable_cp_rounds = Vec::new();
    let mut snapshot_rounds = Vec::new();
    let mut uploaded = 0;
    for round in 0..rounds {
        let (cp_took, durable_cp_took) = copy_shard_files(&indices, &index_dirs, dir.path());
        cp_rounds.push(cp_took);
        durable_cp_rounds.push(durable_cp_took);

        // A node that has not hashed the files yet (hashes are remembered in memory), into a
        // new repository: the first snapshot an operator takes.
        let before_restart = listing(&indices);
        node.restart().expect("node restarts");
        wait_for_green(&node);
        wait_until_quiet(&indices);
        if listing(&indices) != before_restart {
            println!(
                "  (round {round}: the restarted node changed its index files before the snapshot)"
            );
        }
        let repository = format!("r{round}");
        shoal_tests::register_fs_repository(&node, &repository, &repository);
        sync();
        let (took, bytes) = snapshot_logs(&node, &repository, "s1");
        snapshot_rounds.push(took);
        uploaded = bytes;
    }
    let (again_took, again_bytes) = snapshot_logs(&node, "r0", "s2");

    let mut restore_rounds: Vec<Duration> = (0..rounds)
        .map(|round| restore_logs(&node, &format!("r{round}"), doc_count))
        .collect();

    let server = S3Server::start(S3_BIN, &dir.path().join("s3")).expect("S3 server starts");
    server.create_bucket("bench").expect("bucket");
    let registered = node.put(
        "/_snapshot/s3",
        &json!({"type": "s3", "settings": {"bucket": "bench", "endpoint": server.endpoint()}}),
    );
    assert_eq!(registered.status, 200, "{:?}", registered.body);
    let (s3_snap_took, s3_uploaded) = snapshot_logs(&node, "s3", "s1");
    let s3_restore_took = restore_logs(&node, "s3", doc_count);

    let cp = mb_per_s(index_bytes, median(&mut cp_rounds));
    let durable_cp = mb_per_s(index_bytes, median(&mut durable_cp_rounds));
    let snap = mb_per_s(uploaded, median(&mut snapshot_rounds));
    let restore = mb_per_s(uploaded, median(&mut restore_rounds));
    println!(
        "snapshot benchmark: {doc_count} http_logs docs, 2 shards, index files {:.1} MiB on disk, median of {rounds} rounds",
        index_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  cp -r of the shard files:   {cp:>8.1} MiB/s ({})",
        spread(&cp_rounds)
    );
    println!(
        "  cp -r, then fsync:          {durable_cp:>8.1} MiB/s ({})",
        spread(&durable_cp_rounds)
    );
    println!(
        "  snapshot to fs-repository:  {snap:>8.1} MiB/s ({}, {:.1} MiB uploaded)  = {:.2}x cp -r, {:.2}x cp -r + fsync",
        spread(&snapshot_rounds),
        uploaded as f64 / (1 << 20) as f64,
        snap / cp,
        snap / durable_cp
    );
    println!(
        "  restore from fs-repository: {restore:>8.1} MiB/s ({})  = {:.2}x cp -r, {:.2}x cp -r + fsync",
        spread(&restore_rounds),
        restore / cp,
        restore / durable_cp
    );
    println!("  second snapshot, unchanged: {again_took:?}, {again_bytes} bytes uploaded");
    let s3_snap = mb_per_s(s3_uploaded, s3_snap_took);
    let s3_restore = mb_per_s(s3_uploaded, s3_restore_took);
    println!(
        "  snapshot to s3-repository:  {s3_snap:>8.1} MiB/s ({s3_snap_took:?})  = {:.2}x cp -r",
        s3_snap / cp
    );
    println!(
        "  restore from s3-repository: {s3_restore:>8.1} MiB/s ({s3_restore_took:?})  = {:.2}x cp -r",
        s3_restore / cp
    );
}
