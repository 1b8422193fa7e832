//! File-system steps that survive a power loss, not only a crash of the process: atomic
//! writes, directory syncs, and directories created durably in their parents.
//!
//! A file's data is durable once the file is fsynced; its name only once its directory is.
//! Elasticsearch fsyncs directories for the same reason.

use std::io::Write;
use std::path::Path;

/// Makes the entries of `dir` (files renamed or created in it, subdirectories) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and whatever parents it lacks, each made durable in its own parent, so that
/// files later synced inside it stay reachable after a power loss.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new(""));
    create_dir(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        // Created meanwhile by another thread, which syncs its parent itself.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Writes a file so that a crash leaves either the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_parents_and_keeps_existing_ones() {
        let root = tempfile::tempdir().expect("tempdir");
        let deep = root.path().join("a/b/c");
        create_dir(&deep).expect("created");
        assert!(deep.is_dir());
        std::fs::write(deep.join("kept"), b"x").expect("file");
        create_dir(&deep).expect("existing is fine");
        assert!(deep.join("kept").exists());
        let blocked = root.path().join("a/b/c/kept/d");
        assert!(create_dir(&blocked).is_err(), "a file in the way fails");
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("state.json");
        write_atomically(&path, b"first").expect("first");
        write_atomically(&path, b"second").expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        assert!(!path.with_extension("tmp").exists());
    }
}
