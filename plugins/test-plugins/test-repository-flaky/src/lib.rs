//! The filesystem repository, except that streamed chunks trap while the plugin's config is
//! `{"trap_on_chunk": true}`: a repository that dies in the middle of a snapshot.

#[path = "../../../fs-repository/src/store.rs"]
mod store;

use shoal_plugin_sdk::host;
use shoal_plugin_sdk::repository::{BlobMeta, RepositoryError, RepositoryPlugin};
use store::FsRepository;

fn trapping() -> bool {
    let config: String = host::config()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    config.contains("\"trap_on_chunk\":true")
}

struct Flaky;

impl RepositoryPlugin for Flaky {
    fn put_start(
        name: String,
        expected_length: u64,
        sha256_hex: String,
    ) -> Result<u64, RepositoryError> {
        FsRepository::put_start(name, expected_length, sha256_hex)
    }

    fn put_chunk(upload: u64, data: Vec<u8>) -> Result<(), RepositoryError> {
        if trapping() {
            core::arch::wasm32::unreachable();
        }
        FsRepository::put_chunk(upload, data)
    }

    fn put_finish(upload: u64) -> Result<(), RepositoryError> {
        FsRepository::put_finish(upload)
    }

    fn put(name: String, data: Vec<u8>, sha256_hex: String) -> Result<(), RepositoryError> {
        FsRepository::put(name, data, sha256_hex)
    }

    fn get(name: String, offset: u64, length: Option<u64>) -> Result<Vec<u8>, RepositoryError> {
        FsRepository::get(name, offset, length)
    }

    fn exists(name: String) -> Result<bool, RepositoryError> {
        FsRepository::exists(name)
    }

    fn list_blobs(prefix: String) -> Result<Vec<BlobMeta>, RepositoryError> {
        FsRepository::list_blobs(prefix)
    }

    fn delete(name: String) -> Result<(), RepositoryError> {
        FsRepository::delete(name)
    }

    fn verify() -> Result<(), RepositoryError> {
        FsRepository::verify()
    }
}

shoal_plugin_sdk::export_repository_plugin!(Flaky);
