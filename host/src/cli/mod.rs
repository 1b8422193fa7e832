//! The `shoal` command line: parses flags, layers them over the config file and environment,
//! and hands a validated [`NodeConfig`] to [`crate::node::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod certs;
mod plugin;

use crate::config::{NodeConfig, Role};
use crate::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "shoal",
    version,
    about = "A high-availability search node with WebAssembly policy plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node in the foreground until SIGTERM or Ctrl-C.
    Start(Box<StartArgs>),
    /// Create the cluster CA and node certificates for mutual TLS between nodes.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Manage a node's plugins, or check a plugin component offline.
    Plugin {
        /// The node's HTTP address.
        #[arg(
            long,
            env = "SHOAL_URL",
            default_value = "http://127.0.0.1:9200",
            global = true
        )]
        url: String,
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
}

/// Every flag is optional: unset flags fall back to `SHOAL_*` variables, then the config file,
/// then the embedded defaults.
#[derive(Args, Debug, Default)]
struct StartArgs {
    /// TOML config file.
    #[arg(long, env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    /// Where shards, translogs and node state live [default: ./data].
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// REST API listen address [default: 127.0.0.1:9200].
    #[arg(long, env = "SHOAL_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Node-to-node transport address [default: 127.0.0.1:9300].
    #[arg(long, env = "SHOAL_TRANSPORT_ADDR")]
    transport_addr: Option<SocketAddr>,
    #[arg(long, env = "SHOAL_NODE_NAME")]
    node_name: Option<String>,
    #[arg(long, env = "SHOAL_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Transport address of a node to join (repeatable).
    #[arg(long = "seed", env = "SHOAL_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    #[arg(long, env = "SHOAL_ZONE")]
    zone: Option<String>,
    /// Comma-separated roles [default: master,data].
    #[arg(long, env = "SHOAL_ROLES", value_delimiter = ',')]
    roles: Vec<Role>,
    #[arg(long, env = "SHOAL_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Largest accepted request body [default: 100mb].
    #[arg(long, env = "SHOAL_HTTP_MAX_CONTENT_LENGTH")]
    http_max_content_length: Option<String>,
    /// Cluster CA certificate (PEM).
    #[arg(long, env = "SHOAL_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long, env = "SHOAL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "SHOAL_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Development CA directory: created if missing; issues this node a certificate.
    #[arg(long, env = "SHOAL_DEV_CA")]
    dev_ca: Option<PathBuf>,
    /// A directory filesystem repositories may use (repeatable; Elasticsearch's path.repo).
    #[arg(long = "path-repo", env = "SHOAL_PATH_REPO", value_delimiter = ',')]
    path_repo: Vec<PathBuf>,
    /// A TOML file of secrets for repositories (`[s3.client.default] secret_key = ...`).
    #[arg(long = "secure-settings", env = "SHOAL_SECURE_SETTINGS")]
    secure_settings: Option<PathBuf>,
}

impl StartArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        if let Some(value) = self.data_dir {
            config.data_dir = value;
        }
        if let Some(value) = self.http_addr {
            config.http_addr = value;
        }
        if let Some(value) = self.transport_addr {
            config.transport_addr = value;
        }
        if let Some(value) = self.node_name {
            config.node_name = value;
        }
        if let Some(value) = self.cluster_name {
            config.cluster_name = value;
        }
        if !self.seeds.is_empty() {
            config.seeds = self.seeds;
        }
        if let Some(value) = self.zone {
            config.zone = Some(value);
        }
        if !self.roles.is_empty() {
            config.roles = self.roles;
        }
        if let Some(value) = self.log_format {
            config.log_format = value;
        }
        if let Some(value) = self.http_max_content_length {
            config.http_max_content_length = value;
        }
        if self.tls_ca.is_some() {
            config.tls_ca = self.tls_ca;
        }
        if self.tls_cert.is_some() {
            config.tls_cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            config.tls_key = self.tls_key;
        }
        if self.dev_ca.is_some() {
            config.dev_ca = self.dev_ca;
        }
        if !self.path_repo.is_empty() {
            config.path_repo = self.path_repo;
        }
        if self.secure_settings.is_some() {
            config.secure_settings = self.secure_settings;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Entry point shared by the `shoal` binary (and the test harness's copy of it).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => match start(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("shoal: {err:#}");
                tracing::error!(error = %format!("{err:#}"), "node failed");
                ExitCode::FAILURE
            }
        },
        Command::Certs { command } => match certs::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("shoal certs: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Plugin { url, command } => match plugin::run(command, &url) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("shoal plugin: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn start(args: StartArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    telemetry::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shoal-worker")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding the HTTP address {}", config.http_addr))?;
        crate::node::run(config, listener, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
