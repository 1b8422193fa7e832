//! Node configuration: embedded defaults, an optional TOML file, `SHOAL_*` environment
//! variables and command-line flags, in increasing order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::telemetry::LogFormat;

/// What a node may do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May be elected master (votes in the cluster-state quorum).
    Master,
    /// Holds shard copies.
    Data,
}

/// A validated node configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub node_name: String,
    pub cluster_name: String,
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub transport_addr: SocketAddr,
    /// Transport addresses of nodes to join (used by the cluster layer).
    pub seeds: Vec<String>,
    pub zone: Option<String>,
    pub roles: Vec<Role>,
    pub log_format: LogFormat,
    /// Largest accepted HTTP body, as a byte size (`http.max_content_length`).
    pub http_max_content_length: String,
    /// The cluster CA certificate (PEM) that signs every node's certificate.
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// A development CA directory, created if missing, that issues this node its certificate.
    pub dev_ca: Option<PathBuf>,
    /// Directories under which filesystem snapshot repositories may live (`path.repo`).
    pub path_repo: Vec<PathBuf>,
    /// A TOML file of repository secrets (see [`crate::secure_settings`]).
    pub secure_settings: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_name: default_node_name(),
            cluster_name: "shoal".to_string(),
            data_dir: PathBuf::from("./data"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9200)),
            transport_addr: SocketAddr::from(([127, 0, 0, 1], 9300)),
            seeds: Vec::new(),
            zone: None,
            roles: vec![Role::Master, Role::Data],
            log_format: LogFormat::Human,
            http_max_content_length: "100mb".to_string(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            dev_ca: None,
            path_repo: Vec::new(),
            secure_settings: None,
        }
    }
}

fn default_node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .unwrap_or_else(|| "shoal-node".to_string())
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl NodeConfig {
    /// Reads a TOML file; absent keys keep their defaults, unknown keys are refused.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks cross-field rules and values that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_name.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "node_name",
                reason: "must not be empty".into(),
            });
        }
        if self.cluster_name.trim().is_empty() || self.cluster_name.contains(':') {
            return Err(ConfigError::Invalid {
                key: "cluster_name",
                reason: "must be non-empty and must not contain ':'".into(),
            });
        }
        if self.roles.is_empty() {
            return Err(ConfigError::Invalid {
                key: "roles",
                reason: "a node needs at least one role".into(),
            });
        }
        if !self
            .node_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::Invalid {
                key: "node_name",
                reason: "use letters, digits, '-', '_' or '.'".into(),
            });
        }
        self.max_content_length()?;
        Ok(())
    }

    /// `http_max_content_length` in bytes.
    pub fn max_content_length(&self) -> Result<usize, ConfigError> {
        crate::units::parse_byte_size(&self.http_max_content_length)
            .map(|bytes| bytes as usize)
            .map_err(|err| ConfigError::Invalid {
                key: "http_max_content_length",
                reason: err.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_override_defaults_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shoal.toml");
        std::fs::write(&path, "node_name = \"n1\"\nzone = \"a\"\n").expect("write");
        let config = NodeConfig::from_file(&path).expect("valid file");
        assert_eq!(config.node_name, "n1");
        assert_eq!(config.zone.as_deref(), Some("a"));
        assert_eq!(config.http_addr.port(), 9200);

        std::fs::write(&path, "node_nmae = \"typo\"\n").expect("write");
        let err = NodeConfig::from_file(&path).expect_err("typo must be refused");
        assert!(err.to_string().contains("node_nmae"), "{err}");
    }

    #[test]
    fn validation_refuses_bad_values() {
        let config = NodeConfig {
            http_max_content_length: "lots".into(),
            ..NodeConfig::default()
        };
        assert!(config.validate().is_err());
        let config = NodeConfig {
            roles: vec![],
            ..NodeConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
