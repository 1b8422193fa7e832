//! The filesystem repository's implementation, kept apart from the export so test plugins
//! can compile it into themselves (`#[path]`) and wrap it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Component, Path, PathBuf};

use shoal_plugin_sdk::files::ChunkedFile;
use shoal_plugin_sdk::host;
use shoal_plugin_sdk::repository::{BlobMeta, RepositoryError, RepositoryPlugin, Sha256};

const ROOT: &str = "/repo";
const PART_SUFFIX: &str = ".part";
/// A temporary file untouched this long belongs to an upload that will never finish (a live
/// upload writes a chunk every few milliseconds): listings remove it.
const ABANDONED_AFTER_MS: i64 = 60 * 60 * 1000;

struct Upload {
    name: String,
    temp: PathBuf,
    file: ChunkedFile,
    expected_length: u64,
    expected_sha256: String,
    written: u64,
    hasher: Sha256,
}

thread_local! {
    static UPLOADS: RefCell<HashMap<u64, Upload>> = RefCell::new(HashMap::new());
    static NEXT_UPLOAD: RefCell<u64> = const { RefCell::new(1) };
}

fn io(context: &str, err: std::io::Error) -> RepositoryError {
    let message = format!("{context}: {err}");
    match err.kind() {
        std::io::ErrorKind::NotFound => RepositoryError::NotFound(message),
        std::io::ErrorKind::PermissionDenied => RepositoryError::AccessDenied(message),
        _ => RepositoryError::Unavailable(message),
    }
}

/// Blob names are relative paths of plain components: nothing may escape the repository.
fn blob_path(name: &str) -> Result<PathBuf, RepositoryError> {
    let relative = Path::new(name);
    let plain = !name.is_empty()
        && !name.ends_with(PART_SUFFIX)
        && relative
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
    if !plain {
        return Err(RepositoryError::Invalid(format!(
            "invalid blob name [{name}]"
        )));
    }
    Ok(Path::new(ROOT).join(relative))
}

/// A name no other upload uses, even one of another instance (the host runs several at once
/// and may send the same blob twice): upload ids count per instance, so the clocks make the
/// difference.
fn temp_path(path: &Path, upload: u64) -> PathBuf {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(
        ".{}-{}-{upload}{PART_SUFFIX}",
        host::wall_clock_now(),
        host::monotonic_now()
    ));
    PathBuf::from(temp)
}

/// Makes a directory's entries (a renamed blob, a new subdirectory) survive power loss.
fn sync_dir(dir: &Path) -> Result<(), RepositoryError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| io(&format!("syncing directory {}", dir.display()), err))
}

/// Creates the blob's directory if needed; a new one is made durable in its own parent, so
/// the blobs published in it are reachable after a power loss.
fn create_parent(path: &Path) -> Result<(), RepositoryError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    if parent.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(parent).map_err(|err| io("creating directory", err))?;
    let mut created = parent;
    while let Some(above) = created.parent() {
        sync_dir(above)?;
        if above == Path::new(ROOT) {
            break;
        }
        created = above;
    }
    Ok(())
}

fn start(
    name: String,
    expected_length: u64,
    expected_sha256: String,
) -> Result<u64, RepositoryError> {
    let path = blob_path(&name)?;
    create_parent(&path)?;
    let id = NEXT_UPLOAD.with(|next| {
        let mut next = next.borrow_mut();
        let id = *next;
        *next += 1;
        id
    });
    let temp = temp_path(&path, id);
    let file =
        ChunkedFile::create(&temp.to_string_lossy()).map_err(|err| io("creating blob", err))?;
    UPLOADS.with(|uploads| {
        uploads.borrow_mut().insert(
            id,
            Upload {
                name,
                temp,
                file,
                expected_length,
                expected_sha256: expected_sha256.to_ascii_lowercase(),
                written: 0,
                hasher: Sha256::new(),
            },
        )
    });
    Ok(id)
}

fn chunk(upload: u64, data: &[u8]) -> Result<(), RepositoryError> {
    UPLOADS.with(|uploads| {
        let mut uploads = uploads.borrow_mut();
        let Some(state) = uploads.get_mut(&upload) else {
            return Err(RepositoryError::Invalid(format!(
                "no upload [{upload}] in progress"
            )));
        };
        state.written += data.len() as u64;
        if state.written > state.expected_length {
            return Err(RepositoryError::Invalid(format!(
                "blob [{}] is longer than the announced {} bytes",
                state.name, state.expected_length
            )));
        }
        state.hasher.update(data);
        state
            .file
            .write_all(data)
            .map_err(|err| io("writing blob", err))
    })
}

fn finish(upload: u64) -> Result<(), RepositoryError> {
    let Some(state) = UPLOADS.with(|uploads| uploads.borrow_mut().remove(&upload)) else {
        return Err(RepositoryError::Invalid(format!(
            "no upload [{upload}] in progress"
        )));
    };
    let Upload {
        name,
        temp,
        file,
        expected_length,
        expected_sha256,
        written,
        hasher,
    } = state;
    let discard = |err: RepositoryError| {
        let _ = fs::remove_file(&temp);
        Err(err)
    };
    if written != expected_length {
        return discard(RepositoryError::Invalid(format!(
            "blob [{name}] has {written} bytes, {expected_length} were announced"
        )));
    }
    let actual = hasher.hex_digest();
    if actual != expected_sha256 {
        return discard(RepositoryError::Invalid(format!(
            "blob [{name}] has SHA-256 {actual}, {expected_sha256} was announced"
        )));
    }
    if let Err(err) = file.sync_all() {
        return discard(io("syncing blob", err));
    }
    drop(file);
    let path = blob_path(&name)?;
    fs::rename(&temp, &path).map_err(|err| io("publishing blob", err))?;
    // The rename is durable only once its directory is: a snapshot's manifest (written last)
    // must never outlive, after a power loss, the blobs it names.
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Removes the temporary file of an upload cut short (a crash, a killed node) once it has not
/// been written for [`ABANDONED_AFTER_MS`]. Best effort: a read-only repository keeps it.
fn remove_if_abandoned(path: &Path, metadata: &fs::Metadata) {
    let Some(modified_ms) = metadata
        .modified()
        .ok()
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|since| since.as_millis() as i64)
    else {
        return;
    };
    if host::wall_clock_now() - modified_ms < ABANDONED_AFTER_MS {
        return;
    }
    if fs::remove_file(path).is_ok() {
        host::counter_add("abandoned_uploads_removed", 1);
        shoal_plugin_sdk::log::info(&format!(
            "removed the temporary file of an abandoned upload: {}",
            path.display()
        ));
    }
}

fn list(prefix: &str) -> Result<Vec<BlobMeta>, RepositoryError> {
    fn walk(
        dir: &Path,
        root: &Path,
        prefix: &str,
        out: &mut Vec<BlobMeta>,
    ) -> Result<(), RepositoryError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(io("listing blobs", err)),
        };
        for entry in entries {
            // Uploads go on during a listing: a temporary file renamed into place (or a
            // directory removed) since the directory was read is simply not listed.
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io("listing blobs", err)),
            };
            let path = entry.path();
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io("reading blob metadata", err)),
            };
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let name = relative.to_string_lossy().to_string();
            if metadata.is_dir() {
                // Only descend where names under this directory can still match the prefix.
                if prefix.starts_with(&name) || name.starts_with(prefix) {
                    walk(&path, root, prefix, out)?;
                }
            } else if name.ends_with(PART_SUFFIX) {
                remove_if_abandoned(&path, &metadata);
            } else if name.starts_with(prefix) {
                out.push(BlobMeta {
                    name,
                    size: metadata.len(),
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(Path::new(ROOT), Path::new(ROOT), prefix, &mut out)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The filesystem repository; public so that test plugins can wrap it.
pub struct FsRepository;

impl RepositoryPlugin for FsRepository {
    fn put_start(
        name: String,
        expected_length: u64,
        sha256_hex: String,
    ) -> Result<u64, RepositoryError> {
        start(name, expected_length, sha256_hex)
    }

    fn put_chunk(upload: u64, data: Vec<u8>) -> Result<(), RepositoryError> {
        chunk(upload, &data)
    }

    fn put_finish(upload: u64) -> Result<(), RepositoryError> {
        finish(upload)
    }

    fn put(name: String, data: Vec<u8>, sha256_hex: String) -> Result<(), RepositoryError> {
        let upload = start(name, data.len() as u64, sha256_hex)?;
        if let Err(err) = chunk(upload, &data) {
            if let Some(state) = UPLOADS.with(|uploads| uploads.borrow_mut().remove(&upload)) {
                let _ = fs::remove_file(&state.temp);
            }
            return Err(err);
        }
        finish(upload)
    }

    fn get(name: String, offset: u64, length: Option<u64>) -> Result<Vec<u8>, RepositoryError> {
        let path = blob_path(&name)?;
        ChunkedFile::open(&path.to_string_lossy())
            .map_err(|err| io(&format!("reading blob [{name}]"), err))?
            .read(offset, length)
            .map_err(|err| io("reading blob", err))
    }

    fn exists(name: String) -> Result<bool, RepositoryError> {
        let path = blob_path(&name)?;
        match fs::metadata(&path) {
            Ok(metadata) => Ok(metadata.is_file()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(io("checking blob", err)),
        }
    }

    fn list_blobs(prefix: String) -> Result<Vec<BlobMeta>, RepositoryError> {
        list(&prefix)
    }

    fn delete(name: String) -> Result<(), RepositoryError> {
        let path = blob_path(&name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io("deleting blob", err)),
        }
    }

    fn verify() -> Result<(), RepositoryError> {
        shoal_plugin_sdk::repository::verify_by_round_trip::<Self>()
    }
}
