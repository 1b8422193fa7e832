//! SHA-256 of shard files remembered by file identity, so a snapshot does not read again the
//! files an earlier snapshot already hashed.
//!
//! Segment files are written once and never changed; a file with the device, inode, size and
//! modification time of one hashed before holds the same bytes (git's index trusts the same
//! facts). The change time is left out on purpose: staging a commit hard-links its files, which
//! moves it every time.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::Result;

/// How many files a node remembers; past it the memory starts over (each entry is ~100 bytes).
const MAX_REMEMBERED: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileIdentity {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.len(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// The node's memory of file hashes.
#[derive(Default)]
pub struct FileHashes {
    known: Mutex<HashMap<FileIdentity, String>>,
}

impl FileHashes {
    /// The lowercase hex SHA-256 and the length of the file at `path`.
    pub fn sha256(&self, path: &Path) -> Result<(String, u64)> {
        let mut file = std::fs::File::open(path)?;
        let identity = FileIdentity::of(&file.metadata()?);
        if let Some(known) = self.known().get(&identity) {
            return Ok((known.clone(), identity.size));
        }
        let (sha256, size) = hash(&mut file)?;
        // A file that changed while it was read is hashed again next time.
        if size == identity.size && FileIdentity::of(&file.metadata()?) == identity {
            let mut known = self.known();
            if known.len() >= MAX_REMEMBERED {
                known.clear();
            }
            known.insert(identity, sha256.clone());
        }
        Ok((sha256, size))
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<FileIdentity, String>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn hash(file: &mut std::fs::File) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((crate::plugins::hex(&hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        crate::plugins::hex(&Sha256::digest(bytes))
    }

    #[test]
    fn hashes_files_and_remembers_them_until_they_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment.idx");
        std::fs::write(&path, b"first contents").expect("write");
        let hashes = FileHashes::default();

        let first = hashes.sha256(&path).expect("hash");
        assert_eq!(first, (sha256_hex(b"first contents"), 14));
        assert_eq!(hashes.known().len(), 1);
        // A hard link is the same file: it is not read again.
        let link = dir.path().join("staged.idx");
        std::fs::hard_link(&path, &link).expect("link");
        assert_eq!(hashes.sha256(&link).expect("hash"), first);
        assert_eq!(hashes.known().len(), 1);

        // Rewritten in place with other bytes: a new size, so a new identity and a new hash.
        std::fs::write(&path, b"other, longer contents").expect("rewrite");
        assert_eq!(
            hashes.sha256(&path).expect("hash"),
            (sha256_hex(b"other, longer contents"), 22)
        );
        assert_eq!(hashes.known().len(), 2);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            FileHashes::default()
                .sha256(&dir.path().join("gone"))
                .is_err()
        );
    }
}
