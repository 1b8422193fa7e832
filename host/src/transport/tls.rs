//! Mutual TLS for the transport: both ends present a certificate signed by the cluster CA and
//! verify the other's. There is no switch to skip verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::certs::CertPair;

/// Where a node finds its CA, certificate and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub node: CertPair,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("invalid TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC cannot use this TLS config: {0}")]
    Quic(String),
}

/// quinn server and client configs built from the same CA and node certificate.
pub struct QuicConfigs {
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
}

/// Idle connections are closed after this long; keep-alives at a third of it keep cached
/// connections to live peers open.
const MAX_IDLE: Duration = Duration::from_secs(6);

/// Builds the QUIC configs; `alpn` names the cluster, so nodes of two clusters sharing a CA
/// still cannot talk to each other.
pub fn quic_configs(files: &TlsFiles, alpn: &[u8]) -> Result<QuicConfigs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(&files.ca_cert)? {
        roots.add(cert)?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs(&files.node.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.node.key).map_err(|err| TlsError::Pem {
        path: files.node.key.clone(),
        reason: err.to_string(),
    })?;

    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()?;
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server_tls.alpn_protocols = vec![alpn.to_vec()];

    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client_tls.alpn_protocols = vec![alpn.to_vec()];

    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|err| TlsError::Quic(err.to_string()))?;
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
        .map_err(|err| TlsError::Quic(err.to_string()))?;

    let transport = Arc::new(transport_config());
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok(QuicConfigs { server, client })
}

fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    if let Ok(idle) = quinn::IdleTimeout::try_from(MAX_IDLE) {
        config.max_idle_timeout(Some(idle));
    }
    config.keep_alive_interval(Some(MAX_IDLE / 3));
    config.max_concurrent_bidi_streams(256u32.into());
    config
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| TlsError::Pem {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}
