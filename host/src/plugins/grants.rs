//! Capabilities granted to a plugin instance. A plugin gets nothing ambient: no files, sockets,
//! environment or inherited stdio. Two grants exist: one preopened directory (a filesystem
//! repository's location), which must lie inside a directory the operator listed in
//! `path_repo` (Elasticsearch's `path.repo`) and is read-only for a read-only repository; and
//! a list of hosts reachable over `wasi:http` (an S3 repository's endpoint).

use std::path::{Component, Path, PathBuf};

use wasmtime_wasi::{FsPerms, WasiCtx};

/// Where a granted directory appears inside the plugin.
pub const GUEST_REPOSITORY_DIR: &str = "/repo";

/// The capabilities of one plugin instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub directory: Option<GrantedDir>,
    /// Hosts (`host` or `host:port`) reachable over `wasi:http`.
    pub http_hosts: Vec<String>,
}

/// A host directory preopened at [`GUEST_REPOSITORY_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantedDir {
    pub host_path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(
        "location [{location}] is not inside any path listed in path_repo ({allowed}); add its parent to path_repo to allow it"
    )]
    OutsidePathRepo { location: String, allowed: String },
    #[error("no path_repo is configured, so no filesystem location can be granted")]
    NoPathRepo,
    #[error("location [{0}] must not contain '..'")]
    ParentComponent(String),
    #[error("cannot prepare location [{location}]: {source}")]
    Io {
        location: String,
        source: std::io::Error,
    },
}

impl Grants {
    /// Nothing at all: what policy plugins get.
    pub fn none() -> Grants {
        Grants::default()
    }

    pub fn directory(dir: GrantedDir) -> Grants {
        Grants {
            directory: Some(dir),
            ..Grants::default()
        }
    }

    pub fn http_hosts(hosts: Vec<String>) -> Grants {
        Grants {
            http_hosts: hosts,
            ..Grants::default()
        }
    }

    pub(crate) fn wasi_context(&self) -> wasmtime::Result<WasiCtx> {
        let mut builder = WasiCtx::builder();
        // Plugins are called on blocking threads already: doing a file write in place saves
        // a hand-off to tokio's blocking pool and back for every 4 KiB a plugin writes.
        builder.allow_blocking_current_thread(true);
        if let Some(dir) = &self.directory {
            let perms = if dir.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            builder.preopened_dir(&dir.host_path, GUEST_REPOSITORY_DIR, perms)?;
        }
        Ok(builder.build())
    }
}

/// Resolves a repository `location` against `path_repo` (a relative location is taken
/// relative to the first entry, as Elasticsearch does), creates it if missing (unless
/// read-only), and refuses anything outside `path_repo`, following symlinks.
pub fn grant_repository_dir(
    location: &str,
    path_repo: &[PathBuf],
    read_only: bool,
) -> Result<GrantedDir, GrantError> {
    let Some(first) = path_repo.first() else {
        return Err(GrantError::NoPathRepo);
    };
    let requested = Path::new(location);
    if requested
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(GrantError::ParentComponent(location.to_string()));
    }
    let path = if requested.is_absolute() {
        requested.to_path_buf()
    } else {
        first.join(requested)
    };
    let io = |source| GrantError::Io {
        location: location.to_string(),
        source,
    };
    let outside = || GrantError::OutsidePathRepo {
        location: location.to_string(),
        allowed: path_repo
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    // A lexical check first, so nothing is created outside path_repo.
    if !path_repo.iter().any(|root| path.starts_with(root)) {
        return Err(outside());
    }
    if !read_only {
        std::fs::create_dir_all(&path).map_err(io)?;
    }
    // Then the real check, after symlinks are resolved.
    let real = path.canonicalize().map_err(io)?;
    let inside = path_repo
        .iter()
        .filter_map(|root| root.canonicalize().ok())
        .any(|root| real.starts_with(root));
    if !inside {
        return Err(outside());
    }
    Ok(GrantedDir {
        host_path: real,
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_must_stay_inside_path_repo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo_root = dir.path().join("backups");
        std::fs::create_dir_all(&repo_root).expect("root");
        let roots = vec![repo_root.clone()];

        let granted = grant_repository_dir("nightly", &roots, false).expect("relative location");
        assert!(granted.host_path.ends_with("backups/nightly"));
        assert!(granted.host_path.is_dir(), "created on grant");
        let absolute = repo_root.join("weekly");
        let absolute = grant_repository_dir(absolute.to_str().expect("utf8"), &roots, false)
            .expect("absolute inside");
        assert!(absolute.host_path.is_dir());

        let outside = dir.path().join("elsewhere");
        let err = grant_repository_dir(outside.to_str().expect("utf8"), &roots, false)
            .expect_err("outside");
        assert!(matches!(err, GrantError::OutsidePathRepo { .. }), "{err}");
        assert!(!outside.exists(), "nothing is created outside path_repo");
        assert!(matches!(
            grant_repository_dir("../escape", &roots, false),
            Err(GrantError::ParentComponent(_))
        ));
        assert!(matches!(
            grant_repository_dir("x", &[], false),
            Err(GrantError::NoPathRepo)
        ));

        std::fs::create_dir_all(&outside).expect("outside dir");
        std::os::unix::fs::symlink(&outside, repo_root.join("sneaky")).expect("symlink");
        assert!(matches!(
            grant_repository_dir("sneaky", &roots, false),
            Err(GrantError::OutsidePathRepo { .. })
        ));
        assert!(matches!(
            grant_repository_dir("missing-readonly", &roots, true),
            Err(GrantError::Io { .. })
        ));
    }
}
