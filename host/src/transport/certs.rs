//! The cluster's certificate authority: `shoal certs ca|node` and `--dev-ca` write PEM files
//! that [`super::tls`] loads. Every node certificate is signed by the one cluster CA; that
//! signature, checked on both ends of every connection, is what admits a node to the cluster.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The DNS name every node certificate carries and every node dials: peers are authenticated by
/// the CA's signature, not by host names, which change with every address a node is given.
pub const TRANSPORT_SERVER_NAME: &str = "shoal-transport";

const CA_VALIDITY_DAYS: u64 = 10 * 365;
const NODE_VALIDITY_DAYS: u64 = 825;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid node name {0:?}: use letters, digits, '-', '_' or '.'")]
    InvalidName(String),
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
}

/// Paths of a PEM certificate and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPair {
    fn in_dir(dir: &Path, stem: &str) -> CertPair {
        CertPair {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }
}

/// Where `shoal certs ca --out DIR` puts the CA.
pub fn ca_files(dir: &Path) -> CertPair {
    CertPair::in_dir(dir, "ca")
}

/// Where `shoal certs node --name NAME --out DIR` puts a node's certificate.
pub fn node_files(dir: &Path, name: &str) -> CertPair {
    CertPair::in_dir(dir, name)
}

/// Creates a new cluster CA in `dir` (`ca.crt`, `ca.key`); refuses to overwrite one.
pub fn create_ca(dir: &Path, cluster_name: &str) -> Result<CertPair, CertError> {
    let files = ca_files(dir);
    refuse_existing(&files)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = distinguished_name(&format!("shoal cluster CA ({cluster_name})"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    write_pair(dir, &files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// Issues a node certificate signed by the CA in `ca_dir`, usable as both TLS server and client.
pub fn create_node_cert(ca_dir: &Path, name: &str, out_dir: &Path) -> Result<CertPair, CertError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(CertError::InvalidName(name.to_string()));
    }
    let ca = ca_files(ca_dir);
    let ca_cert_pem = read(&ca.cert)?;
    let ca_key = KeyPair::from_pem(&read(&ca.key)?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key)?;

    let files = node_files(out_dir, name);
    refuse_existing(&files)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        TRANSPORT_SERVER_NAME.to_string(),
        name.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ])?;
    params.distinguished_name = distinguished_name(name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_VALIDITY_DAYS);
    let cert = params.signed_by(&key, &issuer)?;
    write_pair(out_dir, &files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// `--dev-ca DIR`: creates the CA in `dir` if it is missing and gives this node a certificate
/// from it (reused on restart). Convenient for local clusters, unsafe for production because
/// the CA key sits beside every node.
pub fn ensure_dev_certs(
    dir: &Path,
    node_name: &str,
    cluster_name: &str,
) -> Result<CertPair, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = ca_files(dir);
    if !ca.cert.exists() {
        // Nodes of a local cluster may start together: the first to create the CA wins and the
        // others read it (create_ca refuses to overwrite).
        match create_ca(dir, cluster_name) {
            Ok(_) | Err(CertError::Exists { .. }) => {}
            Err(err) => return Err(err),
        }
        // The key is written before the certificate, so a complete certificate means both are.
        wait_for_file(&ca.cert);
    }
    let node_dir = dir.join("nodes");
    let files = node_files(&node_dir, node_name);
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    create_node_cert(dir, node_name, &node_dir)
}

/// Another process may be between creating `ca.crt` and writing `ca.key`.
fn wait_for_file(path: &Path) {
    for _ in 0..100 {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "shoal");
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, days: u64) {
    use chrono::Datelike;
    let ymd = |date: chrono::NaiveDate| {
        // month() is 1..=12 and day() 1..=31, so the narrowing is lossless.
        rcgen::date_time_ymd(date.year(), date.month() as u8, date.day() as u8)
    };
    let today = chrono::Utc::now().date_naive();
    params.not_before = ymd(today - chrono::Days::new(1));
    params.not_after = ymd(today + chrono::Days::new(days));
}

fn refuse_existing(files: &CertPair) -> Result<(), CertError> {
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(CertError::Exists { path: path.clone() });
        }
    }
    Ok(())
}

fn write_pair(
    dir: &Path,
    files: &CertPair,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    // The key first, readable by the owner only, so a certificate never exists without its key.
    write_new(&files.key, key_pem.as_bytes(), 0o600)?;
    write_new(&files.cert, cert_pem.as_bytes(), 0o644)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io_error = |source| CertError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|err| {
            if err.kind() == std::io::ErrorKind::AlreadyExists {
                CertError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                io_error(err)
            }
        })?;
    file.write_all(bytes).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}
