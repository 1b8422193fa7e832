//! The key of this node's QUIC stateless resets, kept across restarts. With it, a restarted
//! node answers a peer still talking to its previous life with a reset the peer can verify,
//! so the peer drops that dead connection at once; with a fresh key each start, the peer
//! ignored the reset and its requests waited on the dead connection until the idle timeout
//! (about 6 s in which a restarted node could not fetch its peers' metadata).

use std::path::Path;
use std::sync::Arc;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const KEY_FILE: &str = "transport-reset.key";
const KEY_BYTES: usize = 64;

/// The endpoint configuration with the node's reset key, created in `state_dir` on the first
/// start. The file is secret (whoever holds it can reset the node's connections): mode 0600.
pub fn endpoint_config(state_dir: &Path) -> std::io::Result<quinn::EndpointConfig> {
    let path = state_dir.join(KEY_FILE);
    let key = match std::fs::read(&path) {
        Ok(key) if key.len() == KEY_BYTES => key,
        _ => {
            let mut key = vec![0u8; KEY_BYTES];
            SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| std::io::Error::other("the system random source failed"))?;
            std::fs::create_dir_all(state_dir)?;
            crate::durable::write_atomically(&path, &key)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            key
        }
    };
    Ok(quinn::EndpointConfig::new(Arc::new(hmac::Key::new(
        hmac::HMAC_SHA256,
        &key,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        endpoint_config(dir.path()).expect("first start");
        let path = dir.path().join(KEY_FILE);
        let first = std::fs::read(&path).expect("key written");
        assert_eq!(first.len(), KEY_BYTES);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        endpoint_config(dir.path()).expect("second start");
        assert_eq!(
            std::fs::read(&path).expect("key"),
            first,
            "kept across starts"
        );

        std::fs::write(&path, b"short").expect("damage");
        endpoint_config(dir.path()).expect("a damaged key is replaced");
        assert_eq!(std::fs::read(&path).expect("key").len(), KEY_BYTES);
    }
}
