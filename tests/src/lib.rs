//! Test harness: starts real `shoal` processes on 127.0.0.1 with their own data directories,
//! talks HTTP to them, and kills, stops or restarts them.
//!
//! Integration tests pass the node binary as `env!("CARGO_BIN_EXE_shoal-node")`: that binary
//! is built from the same entry point as `host`'s `shoal` (`shoal::cli::main`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub mod history;
pub mod http_logs;
pub mod s3;

/// A benchmark knob read from the environment (`SHOAL_BENCH_DOCS=...`), `default` when unset
/// or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where `host/build.rs` left a plugin built from `plugins/` for `wasm32-wasip2`,
/// e.g. `plugin_path("test-trap")`.
pub fn plugin_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

/// The bytes of a plugin built from `plugins/`.
pub fn test_plugin(name: &str) -> Vec<u8> {
    let path = plugin_path(name);
    std::fs::read(&path)
        .unwrap_or_else(|err| panic!("plugin {} was not built: {err}", path.display()))
}

/// Bytes under `path`, recursively.
pub fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A node with its data in `root/data` and `root/repos` (created) as its only `--path-repo`.
pub fn node_with_path_repo(binary: &str, root: &Path) -> anyhow::Result<Node> {
    let repos = root.join("repos");
    std::fs::create_dir_all(&repos)?;
    let repos = repos.to_str().context("the path is not UTF-8")?.to_string();
    Node::start(binary, &root.join("data"), &["--path-repo", &repos])
}

/// Registers the shipped filesystem repository `name` at `location` (under the node's
/// `path_repo`), asserting that the node accepts it.
pub fn register_fs_repository(node: &Node, name: &str, location: &str) {
    let body = serde_json::json!({"type": "fs", "settings": {"location": location}});
    let reply = node.put(&format!("/_snapshot/{name}"), &body);
    assert_eq!(reply.status, 200, "registering [{name}]: {:?}", reply.body);
}

/// A running (or stopped) node process.
pub struct Node {
    binary: PathBuf,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    pub base_url: String,
    /// The transport address the node bound; a restart binds the same one, as a real node
    /// keeps its configured address.
    pub transport_addr: String,
    /// Everything the node logged to stderr, for assertions on log lines.
    pub log: Arc<Mutex<Vec<String>>>,
    client: reqwest::blocking::Client,
}

/// An HTTP answer: status and parsed JSON (or `Value::String` for text bodies).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Node {
    /// Starts a node on a free port with `data_dir`, waiting until it serves HTTP.
    pub fn start(binary: &str, data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<Node> {
        Node::start_with_env(binary, data_dir, extra_args, &[])
    }

    /// Like [`Node::start`], with extra environment variables (`SHOAL_*` settings).
    pub fn start_with_env(
        binary: &str,
        data_dir: &Path,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Node> {
        let client = reqwest::blocking::Client::builder()
            // Longer than a node's own retry of an unavailable shard (1 minute), so that a
            // request the node gives up on comes back with the node's error, not a timeout.
            .timeout(Duration::from_secs(120))
            .build()?;
        // `SHOAL_TEST_NODE_BIN` runs another build of the node, e.g. a copy that a long soak
        // keeps using while the tree is rebuilt.
        let binary = std::env::var_os("SHOAL_TEST_NODE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(binary));
        let mut node = Node {
            binary,
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            base_url: String::new(),
            transport_addr: "127.0.0.1:0".to_string(),
            log: Arc::new(Mutex::new(Vec::new())),
            client,
        };
        node.launch()?;
        Ok(node)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(&self.binary)
            .arg("start")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--http-addr",
                "127.0.0.1:0",
                "--transport-addr",
                &self.transport_addr,
                "--log-format",
                "json",
            ])
            .args(&self.extra_args)
            // The node's own default filter (info, quiet dependencies), whatever the caller's;
            // `SHOAL_TEST_RUST_LOG` sets another, for debugging a failure.
            .env_remove("RUST_LOG")
            .envs(std::env::var("SHOAL_TEST_RUST_LOG").map(|filter| ("RUST_LOG", filter)))
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        // `SHOAL_TEST_LOGS=DIR` also keeps every node's log in DIR, for debugging a failure.
        let mut copy = std::env::var_os("SHOAL_TEST_LOGS").and_then(|dir| {
            let name = self.data_dir.file_name()?.to_string_lossy().to_string();
            std::fs::create_dir_all(&dir).ok()?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new(&dir).join(format!("{name}.log")))
                .ok()
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = copy.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["message"] == "node started"
                {
                    let http = event["http"].as_str().unwrap_or_default().to_string();
                    let transport = event["transport"].as_str().unwrap_or_default().to_string();
                    let _ = address_tx.send((http, transport));
                }
                if let Ok(mut log) = log.lock() {
                    log.push(line);
                }
            }
        });
        let (address, transport) = match address_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addresses) => addresses,
            Err(_) => {
                let _ = child.kill();
                let log = self.log.lock().map(|l| l.join("\n")).unwrap_or_default();
                bail!("node did not start; log:\n{log}");
            }
        };
        self.base_url = format!("http://{address}");
        self.transport_addr = transport;
        self.child = Some(child);
        Ok(())
    }

    /// The process id, while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the process hangs, sockets open, as a node stuck in a long pause would.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// SIGKILL: the process dies with no chance to flush. Fails the test if the process had
    /// already exited on its own: no input, request or peer may crash a node, and a crash
    /// that the cluster survived would otherwise go unnoticed.
    pub fn kill(&mut self) {
        if let Some(status) = self.stop_process() {
            panic!(
                "{} exited on its own ({status}) before the test stopped it",
                self.data_dir.display()
            );
        }
    }

    /// Kills the process; returns how it ended if it had already exited by itself.
    fn stop_process(&mut self) -> Option<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        const SIGKILL: i32 = 9;
        let mut child = self.child.take()?;
        let exited = child.try_wait().ok().flatten();
        let _ = child.kill();
        let status = child.wait().ok();
        // Our SIGKILL ends a running process; any other ending came before it (a process
        // still tearing down is not yet seen as exited).
        exited.or(status.filter(|status| status.signal() != Some(SIGKILL)))
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("node did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again on the same data directory (new port).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }

    /// Starts the process again on the same data directory with a new transport port too,
    /// as a node moved to another host would come back: peers cannot find it where it was.
    pub fn restart_on_a_new_transport_port(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.transport_addr = "127.0.0.1:0".to_string();
        self.launch()
    }

    /// Whether the node logs `needle` within 10 s: its stderr is read by another thread, so a
    /// line written just before an HTTP answer may not be there yet when the answer arrives.
    pub fn logs_soon(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.log_contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log
            .lock()
            .map(|log| log.iter().any(|line| line.contains(needle)))
            .unwrap_or(false)
    }

    /// Sends a request with an optional JSON body.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        self.raw(method, path, bytes, "application/json")
    }

    /// Sends raw bytes and returns the status and the unparsed response body (for load
    /// generators that must not spend the CPU they measure on parsing responses).
    pub fn raw_bytes(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> (u16, Vec<u8>) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let sent = self
            .client
            .request(method, format!("{}{}", self.base_url, path))
            .header("content-type", content_type)
            .body(body)
            .send();
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                (
                    status,
                    response.bytes().map(|b| b.to_vec()).unwrap_or_default(),
                )
            }
            Err(err) => (0, err.to_string().into_bytes()),
        }
    }

    /// Sends raw bytes (NDJSON for `_bulk`).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut builder = self
            .client
            .request(method, format!("{}{}", self.base_url, path));
        if let Some(body) = body {
            builder = builder.header("content-type", content_type).body(body);
        }
        match builder.send() {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                Reply { status, body }
            }
            Err(err) => Reply {
                status: 0,
                body: Value::String(err.to_string()),
            },
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    pub fn put(&self, path: &str, body: &Value) -> Reply {
        self.request("PUT", path, Some(body))
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, None)
    }

    /// `_bulk` with NDJSON lines built from JSON values.
    pub fn bulk(&self, path: &str, lines: &[Value]) -> Reply {
        let mut body = Vec::new();
        for line in lines {
            body.extend(serde_json::to_vec(line).unwrap_or_default());
            body.push(b'\n');
        }
        self.raw("POST", path, Some(body), "application/x-ndjson")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A stopped process cannot act on SIGKILL until it is continued on some systems'
        // tooling; continue it first so nothing is left behind.
        self.resume();
        if let Some(status) = self.stop_process()
            && !std::thread::panicking()
        {
            panic!(
                "{} exited on its own ({status}) during the test",
                self.data_dir.display()
            );
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `limit` with `what`.
/// The limit only bounds a hung test; tests never assert on how long the wait took.
pub fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("gave up after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Several nodes of one cluster, sharing a development CA, each in its own data directory
/// under one temporary root.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub root: tempfile::TempDir,
    binary: String,
}

impl Cluster {
    /// Starts `zones.len()` nodes named `node-0`, `node-1`, ...; node `i` is in zone
    /// `zones[i]`; all but the first join through the first.
    pub fn start(binary: &str, zones: &[&str]) -> anyhow::Result<Cluster> {
        let root = tempfile::tempdir()?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            root,
            binary: binary.to_string(),
        };
        for zone in zones {
            cluster.add_node(zone, &[])?;
        }
        Ok(cluster)
    }

    pub fn dev_ca(&self) -> PathBuf {
        self.root.path().join("dev-ca")
    }

    /// Starts one more node in `zone`, seeded with the first node.
    pub fn add_node(&mut self, zone: &str, extra_args: &[&str]) -> anyhow::Result<&Node> {
        let index = self.nodes.len();
        let name = format!("node-{index}");
        let data_dir = self.root.path().join(&name);
        let dev_ca = self.dev_ca();
        let mut args = vec![
            "--node-name".to_string(),
            name,
            "--zone".to_string(),
            zone.to_string(),
            "--dev-ca".to_string(),
            dev_ca.display().to_string(),
        ];
        if let Some(first) = self.nodes.first() {
            args.push("--seed".to_string());
            args.push(first.transport_addr.clone());
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = Node::start(&self.binary, &data_dir, &args)?;
        self.nodes.push(node);
        Ok(&self.nodes[index])
    }

    /// Waits until `node` reports `count` voters in the committed voting configuration. The
    /// master promotes master-eligible nodes one at a time, and a quorum lost in the middle of
    /// a promotion stays lost: fault tests wait for this before they kill masters.
    pub fn wait_for_voters(node: &Node, count: usize) {
        wait_for(Duration::from_secs(60), &format!("{count} voters"), || {
            let state = node.get("/_cluster/state");
            let voters = state.body["metadata"]["cluster_coordination"]["last_committed_config"]
                .as_array()
                .map(Vec::len);
            (voters == Some(count)).then_some(())
        });
    }

    /// The names of the nodes that node `index` lists in `_cat/nodes`, sorted.
    pub fn seen_by(&self, index: usize) -> Vec<String> {
        node_names(&self.nodes[index])
    }

    /// Waits until every node in `observers` lists exactly `expected` (names).
    pub fn wait_for_view(&self, observers: &[usize], expected: &[&str]) {
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        for &observer in observers {
            wait_for(
                Duration::from_secs(60),
                &format!("node-{observer} to list {expected:?}"),
                || (self.seen_by(observer) == expected).then_some(()),
            );
        }
    }
}

/// The node names a node lists in `_cat/nodes`, sorted (empty if it does not answer).
pub fn node_names(node: &Node) -> Vec<String> {
    let reply = node.get("/_cat/nodes?format=json&h=name");
    let mut names: Vec<String> = reply
        .body
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| row["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
