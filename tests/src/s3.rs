//! A real S3-compatible server for tests and benchmarks: the `s3-server` binary of this
//! package (s3s-fs, checking SigV4 signatures) in its own process, which a test can pause,
//! kill and start again on the same port and directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "SHOALTESTACCESSKEY";
/// The secret key the server checks signatures against.
pub const SECRET_KEY: &str = "shoal-test-secret-key-0123456789";

pub struct S3Server {
    binary: PathBuf,
    root: PathBuf,
    /// `127.0.0.1:PORT`, kept across restarts.
    pub addr: String,
    child: Option<Child>,
}

impl S3Server {
    /// Starts the server (given as `env!("CARGO_BIN_EXE_s3-server")`) storing buckets under
    /// `root`, on a free port.
    pub fn start(binary: &str, root: &Path) -> anyhow::Result<S3Server> {
        std::fs::create_dir_all(root)?;
        let mut server = S3Server {
            binary: PathBuf::from(binary),
            root: root.to_path_buf(),
            addr: "127.0.0.1:0".to_string(),
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(&self.binary)
            .args([
                &self.addr,
                &self.root.display().to_string(),
                ACCESS_KEY,
                SECRET_KEY,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => self.addr = addr,
            Err(_) => {
                let _ = child.kill();
                bail!("the S3 server did not start on {}", self.addr);
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket (a directory under the server's root).
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.root.join(bucket))?;
        Ok(())
    }

    /// Where the server keeps object `key` of `bucket`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// The environment that gives a node this server's credentials as the secure settings
    /// of S3 client `default`.
    pub fn credentials_env() -> [(&'static str, &'static str); 2] {
        [
            ("SHOAL_S3_CLIENT_DEFAULT_ACCESS_KEY", ACCESS_KEY),
            ("SHOAL_S3_CLIENT_DEFAULT_SECRET_KEY", SECRET_KEY),
        ]
    }

    /// SIGSTOP: connections are accepted by the kernel but never answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: answers again, starting with what waited.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGUSR1: every ranged read waits a moment before it is answered.
    pub fn slow_reads(&self) {
        self.signal("-USR1");
    }

    /// SIGUSR2: reads are answered at once again.
    pub fn fast_reads(&self) {
        self.signal("-USR2");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// SIGKILL: the server is gone; connections are refused.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
